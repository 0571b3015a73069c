//! Sentence embeddings with a BERT encoder (all-MiniLM-L6-v2 and models laid out like it):
//! tokenise, run [`candle_transformers::models::bert::BertModel`] in padded batches, mean-pool
//! over the real (unmasked) tokens and L2-normalise, as sentence-transformers does.
//!
//! The model directory holds `config.json`, `tokenizer.json` and `model.safetensors`, and may
//! hold `1_Pooling/config.json` (checked to be mean pooling) and `sentence_bert_config.json`
//! (its `max_seq_length` sets [`EmbeddingModel::max_tokens`]; without it the limit is
//! [`DEFAULT_MAX_TOKENS`], which is what sentence-transformers uses for all-MiniLM-L6-v2).
//!
//! Inputs longer than [`EmbeddingModel::max_tokens`] are **not** truncated: like OpenAI's
//! API, [`EmbeddingModel::embed`] rejects the whole request with [`EmbedError::InputTooLong`].

use std::path::{Path, PathBuf};

use candle_core::{D, DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::Tokenizer;

/// Most inputs run through the encoder together; larger requests are split into chunks.
pub const MAX_BATCH: usize = 32;

/// Token limit (special tokens included) when the directory has no `sentence_bert_config.json`.
pub const DEFAULT_MAX_TOKENS: usize = 256;

/// One input to embed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmbedInput {
    /// Text, tokenised with the model's tokenizer (special tokens added).
    Text(String),
    /// Word-piece ids of the model's own vocabulary. The tokenizer's special tokens (`[CLS]` …
    /// `[SEP]`) are added around them unless the ids already begin and end with them.
    Tokens(Vec<u32>),
}

impl From<&str> for EmbedInput {
    fn from(text: &str) -> Self {
        Self::Text(text.to_owned())
    }
}

impl From<String> for EmbedInput {
    fn from(text: String) -> Self {
        Self::Text(text)
    }
}

impl From<Vec<u32>> for EmbedInput {
    fn from(ids: Vec<u32>) -> Self {
        Self::Tokens(ids)
    }
}

/// The result of [`EmbeddingModel::embed`].
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    /// One unit-norm vector of [`EmbeddingModel::dimensions`] values per input, in input order.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens the encoder saw over all inputs, special tokens included, padding excluded.
    pub prompt_tokens: u64,
}

/// Everything that can go wrong while loading or running an embedding model.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// A required model file does not exist.
    #[error("model file {} not found", path.display())]
    MissingFile {
        /// The file that was looked for.
        path: PathBuf,
    },
    /// A model file exists but could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file being read.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A configuration file is malformed or describes something this engine cannot run.
    #[error("invalid {}: {message}", path.display())]
    InvalidConfig {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The pooling configuration asks for something other than mean pooling.
    #[error("{}: only mean pooling is supported", path.display())]
    UnsupportedPooling {
        /// The pooling configuration file.
        path: PathBuf,
    },
    /// The tokenizer could not be loaded or failed on an input.
    #[error("tokenizer: {0}")]
    Tokenizer(#[from] tokenizers::Error),
    /// An input has more tokens than the model accepts.
    #[error("input {index} has {tokens} tokens, but this model accepts at most {max}")]
    InputTooLong {
        /// Position of the input in the request.
        index: usize,
        /// Its token count, special tokens included.
        tokens: usize,
        /// The model's limit ([`EmbeddingModel::max_tokens`]).
        max: usize,
    },
    /// A token-id input holds an id outside the model's vocabulary.
    #[error("input {index} has token id {id}, outside the vocabulary of {vocab_size}")]
    InvalidTokenId {
        /// Position of the input in the request.
        index: usize,
        /// The offending id.
        id: u32,
        /// Size of the model's vocabulary.
        vocab_size: usize,
    },
    /// The tensor backend failed (loading weights or running the encoder).
    #[error("inference backend: {0}")]
    Backend(#[from] candle_core::Error),
}

impl EmbedError {
    /// A stable, machine-readable name for the error's variant.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::MissingFile { .. } => "missing_file",
            Self::Io { .. } => "io",
            Self::InvalidConfig { .. } => "invalid_config",
            Self::UnsupportedPooling { .. } => "unsupported_pooling",
            Self::Tokenizer(_) => "tokenizer",
            Self::InputTooLong { .. } => "input_too_long",
            Self::InvalidTokenId { .. } => "invalid_token_id",
            Self::Backend(_) => "backend",
        }
    }

    /// Whether the caller's input is at fault (an HTTP 400), not the model or the server.
    pub fn is_input_error(&self) -> bool {
        matches!(
            self,
            Self::InputTooLong { .. } | Self::InvalidTokenId { .. }
        )
    }
}

/// A loaded sentence-embedding model. It is `Send + Sync`: share it in an `Arc` and call
/// [`EmbeddingModel::embed`] from blocking threads.
pub struct EmbeddingModel {
    bert: BertModel,
    tokenizer: Tokenizer,
    device: Device,
    dimensions: usize,
    vocab_size: usize,
    max_tokens: usize,
    pad_id: u32,
    /// Special tokens the tokenizer puts before and after a single sequence.
    prefix: Vec<u32>,
    suffix: Vec<u32>,
}

const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<EmbeddingModel>();
};

impl std::fmt::Debug for EmbeddingModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddingModel")
            .field("device", &self.device)
            .field("dimensions", &self.dimensions)
            .field("vocab_size", &self.vocab_size)
            .field("max_tokens", &self.max_tokens)
            .finish_non_exhaustive()
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, EmbedError> {
    std::fs::read(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => EmbedError::MissingFile {
            path: path.to_owned(),
        },
        _ => EmbedError::Io {
            path: path.to_owned(),
            source,
        },
    })
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, EmbedError> {
    serde_json::from_slice(&read_file(path)?).map_err(|e| EmbedError::InvalidConfig {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// Checks `1_Pooling/config.json` when present: mean pooling only, and the right width.
fn check_pooling(path: &Path, dimensions: usize) -> Result<(), EmbedError> {
    if !path.exists() {
        return Ok(());
    }
    let config: serde_json::Map<String, serde_json::Value> = read_json(path)?;
    let flag = |key: &str| config.get(key).and_then(serde_json::Value::as_bool);
    let others_on = config.iter().any(|(key, value)| {
        key.starts_with("pooling_mode_")
            && key != "pooling_mode_mean_tokens"
            && value.as_bool() == Some(true)
    });
    if flag("pooling_mode_mean_tokens") != Some(true) || others_on {
        return Err(EmbedError::UnsupportedPooling {
            path: path.to_owned(),
        });
    }
    match config
        .get("word_embedding_dimension")
        .and_then(serde_json::Value::as_u64)
    {
        Some(width) if width != dimensions as u64 => Err(EmbedError::InvalidConfig {
            path: path.to_owned(),
            message: format!("word_embedding_dimension {width} != hidden_size {dimensions}"),
        }),
        _ => Ok(()),
    }
}

impl EmbeddingModel {
    /// Loads the model in `dir` onto `device` (weights in f32).
    pub fn load(dir: &Path, device: &Device) -> Result<Self, EmbedError> {
        let config: Config = read_json(&dir.join("config.json"))?;
        let dimensions = config.hidden_size;
        check_pooling(&dir.join("1_Pooling").join("config.json"), dimensions)?;

        let st_config = dir.join("sentence_bert_config.json");
        let max_tokens = if st_config.exists() {
            let value: serde_json::Value = read_json(&st_config)?;
            let max = value
                .get("max_seq_length")
                .and_then(serde_json::Value::as_u64);
            max.and_then(|m| usize::try_from(m).ok())
                .unwrap_or(DEFAULT_MAX_TOKENS)
        } else {
            DEFAULT_MAX_TOKENS
        }
        .min(config.max_position_embeddings);

        let tokenizer_path = dir.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_bytes(read_file(&tokenizer_path)?)?;
        // tokenizer.json files often carry fixed padding/truncation (128 for this model):
        // this engine pads per batch and rejects long inputs itself.
        tokenizer.with_truncation(None)?;
        tokenizer.with_padding(None);

        let probe = tokenizer.encode("a", true)?;
        let (ids, special) = (probe.get_ids(), probe.get_special_tokens_mask());
        let leading = special.iter().take_while(|&&s| s == 1).count();
        let trailing = special.iter().rev().take_while(|&&s| s == 1).count();
        let prefix = ids[..leading].to_vec();
        let suffix = ids[ids.len().saturating_sub(trailing).max(leading)..].to_vec();

        let weights = read_file(&dir.join("model.safetensors"))?;
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, device)?;
        let bert = BertModel::load(vb, &config)?;
        let pad_id = u32::try_from(config.pad_token_id).unwrap_or(0);
        tracing::debug!(dir = %dir.display(), dimensions, max_tokens, "embedding model loaded");
        Ok(Self {
            bert,
            tokenizer,
            device: device.clone(),
            dimensions,
            vocab_size: config.vocab_size,
            max_tokens,
            pad_id,
            prefix,
            suffix,
        })
    }

    /// Width of the vectors (384 for all-MiniLM-L6-v2).
    pub fn dimensions(&self) -> usize {
        self.dimensions
    }

    /// Most tokens one input may have, special tokens included.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// The ids the encoder will see for `input`: special tokens added, limits checked.
    fn input_ids(&self, index: usize, input: &EmbedInput) -> Result<Vec<u32>, EmbedError> {
        let ids = match input {
            EmbedInput::Text(text) => self
                .tokenizer
                .encode(text.as_str(), true)?
                .get_ids()
                .to_vec(),
            EmbedInput::Tokens(ids) => {
                if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
                    let vocab_size = self.vocab_size;
                    return Err(EmbedError::InvalidTokenId {
                        index,
                        id,
                        vocab_size,
                    });
                }
                let wrapped = ids.len() >= self.prefix.len() + self.suffix.len()
                    && ids.starts_with(&self.prefix)
                    && ids.ends_with(&self.suffix);
                if wrapped {
                    ids.clone()
                } else {
                    [&self.prefix[..], ids, &self.suffix[..]].concat()
                }
            }
        };
        if ids.len() > self.max_tokens {
            let (tokens, max) = (ids.len(), self.max_tokens);
            return Err(EmbedError::InputTooLong { index, tokens, max });
        }
        Ok(ids)
    }

    /// Embeds `inputs`, returning one unit-norm vector per input in the same order. All inputs
    /// are checked before any runs, so a too-long input fails the whole call cheaply.
    pub fn embed(&self, inputs: &[EmbedInput]) -> Result<Embeddings, EmbedError> {
        let ids = inputs
            .iter()
            .enumerate()
            .map(|(index, input)| self.input_ids(index, input))
            .collect::<Result<Vec<_>, _>>()?;
        let prompt_tokens = ids.iter().map(|i| i.len() as u64).sum();

        // Longest first, so each chunk pads little.
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(ids[i].len()));
        let mut vectors = vec![Vec::new(); ids.len()];
        for chunk in order.chunks(MAX_BATCH) {
            let batch: Vec<&[u32]> = chunk.iter().map(|&i| ids[i].as_slice()).collect();
            for (&i, vector) in chunk.iter().zip(self.encode_batch(&batch)?) {
                vectors[i] = vector;
            }
        }
        tracing::trace!(inputs = inputs.len(), prompt_tokens, "embedded");
        Ok(Embeddings {
            vectors,
            prompt_tokens,
        })
    }

    /// Runs one padded batch through the encoder; returns pooled, normalised vectors.
    fn encode_batch(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let width = batch.iter().map(|ids| ids.len()).max().unwrap_or(0);
        if width == 0 {
            return Ok(vec![vec![0.0; self.dimensions]; batch.len()]);
        }
        let mut flat_ids = Vec::with_capacity(batch.len() * width);
        let mut flat_mask = Vec::with_capacity(batch.len() * width);
        for ids in batch {
            flat_ids.extend_from_slice(ids);
            flat_ids.resize(flat_ids.len() + width - ids.len(), self.pad_id);
            flat_mask.extend((0..width).map(|t| u32::from(t < ids.len())));
        }
        let shape = (batch.len(), width);
        let input_ids = Tensor::from_vec(flat_ids, shape, &self.device)?;
        let mask = Tensor::from_vec(flat_mask, shape, &self.device)?;
        let type_ids = input_ids.zeros_like()?;

        let hidden = self.bert.forward(&input_ids, &type_ids, Some(&mask))?; // (b, t, h)
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(D::Minus1)?; // (b, t, 1)
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?; // (b, h)
        let counts = mask.sum(1)?.clamp(1e-9f32, f32::MAX)?; // (b, 1)
        let mean = summed.broadcast_div(&counts)?;
        let norms = mean
            .sqr()?
            .sum_keepdim(1)?
            .sqrt()?
            .clamp(1e-12f32, f32::MAX)?;
        Ok(mean.broadcast_div(&norms)?.to_vec2::<f32>()?)
    }
}
