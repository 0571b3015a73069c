//! Local inference engines for aigw, built on candle. Engines know nothing about HTTP: they
//! take token ids or texts and answer through channels.
//!
//! Layout:
//! - [`llm`]: llama-family chat models (GGUF or safetensors) — [`llm::model`] the batched
//!   transformer, [`llm::text`] tokenizer + chat template + incremental decoding,
//!   [`llm::sampling`], and [`llm::engine`], the continuous-batching thread.
//! - [`embed`]: BERT sentence embeddings (all-MiniLM-L6-v2): tokenise, encode, mean-pool,
//!   L2-normalise, in batches.

pub mod embed;
pub mod llm;
