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

#[tokio::test]
async fn openai_python_sdk_against_local_models() {
    let Some(python) = crate::tools::locate("AIGW_TEST_PYTHON") else {
        return;
    };
    let dir = aigw_models::store::model_dir();
    let present = aigw_models::catalog::Catalog::builtin()
        .defaults()
        .all(|e| aigw_models::store::resolve(e, &dir).is_ok_and(|r| r.is_present()));
    if !present {
        assert!(
            std::env::var("AIGW_REQUIRE_MODELS").is_err(),
            "AIGW_REQUIRE_MODELS is set but the default models are missing"
        );
        eprintln!("skipping: default models missing");
        return;
    }
    let state =
        aigw_gateway::state::AppState::new(aigw_gateway::config::Config::embedded_default())
            .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let server = tokio::spawn(aigw_gateway::server::run(
        listener,
        state,
        std::future::pending(),
    ));
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/conformance.py");
    let output = tokio::process::Command::new(python)
        .arg(script)
        .arg("local")
        .env("AIGW_BASE_URL", url)
        .env("AIGW_API_KEY", "unused")
        .output()
        .await
        .expect("run python");
    server.abort();
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}");
    assert!(
        output.status.success(),
        "SDK conformance (local) failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("all SDK checks passed"), "{stdout}");
}
