//! Llama-family chat models: loading, the batched transformer, text handling, sampling and
//! the continuous-batching engine.

pub mod attention;
pub mod config;
pub mod engine;
pub mod heap;
pub mod kvpool;
pub mod load;
pub mod model;
pub mod packed;
pub mod q4;
pub mod random;
pub mod sampling;
pub mod text;
pub mod vmath;

/// Why a model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// A file could not be read.
    #[error("{0}")]
    Io(String),
    /// The weights or metadata are not what this engine understands.
    #[error("unsupported or corrupt model: {0}")]
    Format(String),
    /// The chat template failed to render.
    #[error("chat template: {0}")]
    Template(String),
    /// Tokenisation failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A tensor operation failed.
    #[error("tensor: {0}")]
    Tensor(#[from] candle_core::Error),
}
