//! Wire types and model metadata shared by every part of aigw.
//!
//! Layout:
//! - [`openai`]: the OpenAI-compatible request and response types (serde + utoipa schemas):
//!   chat completions and their stream chunks, legacy completions, embeddings, the model
//!   list, audio transcription shapes and the error envelope. Unknown request fields are kept
//!   in `extra` maps so they pass through to upstreams unchanged.
//! - [`parse`]: strict JSON decoding that reports the path of the offending field, so the
//!   HTTP layer can answer a 400 naming the `param`.

pub mod openai;
pub mod parse;
