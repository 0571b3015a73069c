//! OpenAI-compatible wire types.
//!
//! Request types keep every field the gateway does not model in an `extra` map
//! (`#[serde(flatten)]`), so clients can use provider-specific parameters and upstreams see
//! them unchanged. Response types do the same for fields the upstream adds.

mod audio;
mod chat;
mod common;
mod completions;
mod embeddings;
mod error;
mod models;

pub use audio::*;
pub use chat::*;
pub use common::*;
pub use completions::*;
pub use embeddings::*;
pub use error::*;
pub use models::*;

/// Fields of a JSON object that a type does not model, kept verbatim.
pub type Extra = serde_json::Map<String, serde_json::Value>;

/// Current UNIX time in seconds, as used in `created` fields.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
