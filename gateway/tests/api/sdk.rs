//! Conformance with the real openai Python SDK (`tests/sdk/conformance.py`).
//!
//! `scripts/test` installs the SDK into a virtualenv and sets `AIGW_TEST_PYTHON` to its
//! interpreter (see `tools.rs`).

use std::path::PathBuf;

use crate::{CLIENT_KEY, Gateway};

#[tokio::test]
async fn openai_python_sdk_conformance() {
    let Some(python) = crate::tools::locate("AIGW_TEST_PYTHON") else {
        return;
    };
    let gw =
        Gateway::start_with("\n[[auth.keys]]\nname = \"sdk\"\nkey_env = \"TEST_CLIENT_KEY\"\n")
            .await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/conformance.py");
    let output = tokio::process::Command::new(python)
        .arg(script)
        .env("AIGW_BASE_URL", format!("{}/v1", gw.url))
        .env("AIGW_API_KEY", CLIENT_KEY)
        .output()
        .await
        .expect("run python");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "SDK conformance failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("all SDK checks passed"), "{stdout}");
}
