//! Response cache: bodies by key with a time to live.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::StateError;

/// Stored responses by key.
#[async_trait]
pub trait ResponseCache: Send + Sync + 'static {
    /// The live value of `key`, if any.
    async fn get(&self, key: &str) -> Result<Option<Bytes>, StateError>;

    /// Stores `value` under `key` for `ttl`.
    async fn put(&self, key: &str, value: Bytes, ttl: Duration) -> Result<(), StateError>;
}
