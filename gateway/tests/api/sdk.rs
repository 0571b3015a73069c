//! Conformance with the real openai Python SDK (`tests/sdk/conformance.py`).
//!
//! The test script (`scripts/test`) installs the SDK into a virtualenv and sets
//! `AIGW_TEST_PYTHON` to its interpreter and `AIGW_REQUIRE_SDK_TESTS=1`, so in CI a missing
//! SDK fails the run instead of skipping it.

use std::path::PathBuf;

use crate::Gateway;

#[tokio::test]
async fn openai_python_sdk_conformance() {
    let python = match std::env::var("AIGW_TEST_PYTHON") {
        Ok(p) => p,
        Err(_) => {
            assert!(
                std::env::var("AIGW_REQUIRE_SDK_TESTS").is_err(),
                "AIGW_REQUIRE_SDK_TESTS is set but AIGW_TEST_PYTHON is not"
            );
            eprintln!(
                "skipping: AIGW_TEST_PYTHON not set (run scripts/test for the SDK conformance test)"
            );
            return;
        }
    };
    let gw = Gateway::start().await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/conformance.py");
    let output = tokio::process::Command::new(python)
        .arg(script)
        .env("AIGW_BASE_URL", format!("{}/v1", gw.url))
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
