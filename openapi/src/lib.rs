//! The committed OpenAPI document and its check.
//!
//! Layout:
//! - `openapi.json` (next to this crate's `Cargo.toml`): the committed document, served by
//!   the gateway at `/openapi.json` as generated from the same code.
//! - [`generated`] renders the document from the gateway's handlers and wire types;
//!   [`committed_path`] says where the committed copy lives. The `aigw-openapi` binary
//!   rewrites it (`aigw-openapi write`) or checks it (`aigw-openapi check`), and the crate's
//!   test fails when the two drift apart.

use std::path::PathBuf;

/// The document as the current code generates it.
pub fn generated() -> String {
    aigw_gateway::openapi::spec_json()
}

/// Where the committed document lives.
pub fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("openapi.json")
}
