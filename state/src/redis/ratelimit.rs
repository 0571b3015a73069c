//! GCRA rate limits on Redis: the step of [`crate::ratelimit::gcra`] as one Lua script
//! (`lua/gcra.lua`) on the clock of Redis, in microseconds; one key per limited key
//! (`P:rl:{key}`), expiring when the key is back to a full burst.

use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_redis::redis::Script;

use super::RedisState;
use crate::StateError;
use crate::ratelimit::{RateDecision, RateLimit, RateLimiter};

static GCRA: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/gcra.lua")));

/// The largest cost sent to the script, so that every product stays exact in Lua's doubles.
const MAX_COST: u64 = 1 << 32;

/// GCRA rate limits on Redis; cheap to clone.
#[derive(Debug, Clone)]
pub struct RedisRateLimiter {
    state: RedisState,
}

impl RedisRateLimiter {
    pub(super) fn new(state: RedisState) -> Self {
        Self { state }
    }

    async fn step(
        &self,
        key: &str,
        limit: RateLimit,
        cost: u64,
        force: bool,
    ) -> Result<RateDecision, StateError> {
        let interval = u64::try_from(limit.interval().as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut call = GCRA.prepare_invoke();
        call.key(self.state.key(&["rl", key]))
            .arg(interval)
            .arg(limit.burst.clamp(1, MAX_COST))
            .arg(cost.min(MAX_COST))
            .arg(u8::from(force));
        let (allowed, remaining, reset_after, retry_after): (u8, u64, u64, i64) = self
            .state
            .run(async |conn| call.invoke_async(conn).await)
            .await?;
        Ok(RateDecision {
            allowed: allowed == 1,
            limit: limit.per_minute,
            remaining,
            reset_after: Duration::from_micros(reset_after),
            retry_after: u64::try_from(retry_after).ok().map(Duration::from_micros),
        })
    }
}

#[async_trait]
impl RateLimiter for RedisRateLimiter {
    async fn acquire(
        &self,
        key: &str,
        limit: RateLimit,
        cost: u64,
    ) -> Result<RateDecision, StateError> {
        self.step(key, limit, cost, false).await
    }

    async fn debit(&self, key: &str, limit: RateLimit, cost: u64) -> Result<(), StateError> {
        self.step(key, limit, cost, true).await.map(drop)
    }
}
