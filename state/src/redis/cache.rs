//! The response cache on Redis: `SET P:response:{key} value PX ttl` and `GET`. The gateway's
//! key is a SHA-256 hex digest, so with the default prefix the keys are
//! `ai:response:{sha256}`.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use deadpool_redis::redis;

use super::RedisState;
use crate::StateError;
use crate::cache::ResponseCache;

/// The response cache on Redis; cheap to clone. Every entry expires with its TTL, and
/// Redis's own eviction policy (`maxmemory`) bounds the total.
#[derive(Debug, Clone)]
pub struct RedisCache {
    state: RedisState,
}

impl RedisCache {
    pub(super) fn new(state: RedisState) -> Self {
        Self { state }
    }

    /// The Redis key holding `key`'s response: `P:response:{key}`.
    pub fn redis_key(&self, key: &str) -> String {
        self.state.key(&["response", key])
    }
}

#[async_trait]
impl ResponseCache for RedisCache {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, StateError> {
        let cmd = redis::cmd("GET").arg(self.redis_key(key)).to_owned();
        let value: Option<Vec<u8>> = self
            .state
            .run(async |conn| cmd.query_async(conn).await)
            .await?;
        Ok(value.map(Bytes::from))
    }

    async fn put(&self, key: &str, value: Bytes, ttl: Duration) -> Result<(), StateError> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let cmd = redis::cmd("SET")
            .arg(self.redis_key(key))
            .arg(value.as_ref())
            .arg("PX")
            .arg(ttl_ms)
            .to_owned();
        self.state
            .run(async |conn| cmd.query_async::<()>(conn).await)
            .await
    }
}
