//! Rate limits per key: the generic cell rate algorithm (GCRA).
//!
//! A limit of `per_minute` with a `burst` allows `burst` units at once and then one unit every
//! `60 s / per_minute`. The state is one "theoretical arrival time" per key. `acquire` admits
//! all of `cost` or nothing (requests, estimated tokens); `debit` always records (tokens known
//! only after the call), so a key that spent more than its share waits longer next time.

use std::time::Duration;

use async_trait::async_trait;

use crate::StateError;

/// A limit: units per minute, and how many may come at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained units per minute (> 0).
    pub per_minute: u64,
    /// Units allowed at once (≥ 1).
    pub burst: u64,
}

impl RateLimit {
    /// Time per unit.
    pub fn interval(&self) -> Duration {
        Duration::from_secs(60) / u32::try_from(self.per_minute.max(1)).unwrap_or(u32::MAX)
    }
}

/// The outcome of one check, with what the `x-ratelimit-*` headers report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateDecision {
    /// Whether the units were admitted.
    pub allowed: bool,
    /// The limit per minute.
    pub limit: u64,
    /// Units that could still be taken now.
    pub remaining: u64,
    /// Until the key is back to a full burst.
    pub reset_after: Duration,
    /// When refused: how long until `cost` units would be admitted.
    pub retry_after: Option<Duration>,
}

/// GCRA over shared state.
#[async_trait]
pub trait RateLimiter: Send + Sync + 'static {
    /// Admits `cost` units under `limit` for `key`, or none of them.
    async fn acquire(
        &self,
        key: &str,
        limit: RateLimit,
        cost: u64,
    ) -> Result<RateDecision, StateError>;

    /// Records `cost` units for `key` whether or not they fit.
    async fn debit(&self, key: &str, limit: RateLimit, cost: u64) -> Result<(), StateError>;
}

/// The GCRA step on a stored theoretical arrival time (nanoseconds on any monotonic clock);
/// returns the decision and the new arrival time to store (`None`: leave it).
pub fn gcra(
    tat: Option<u128>,
    now: u128,
    limit: RateLimit,
    cost: u64,
    force: bool,
) -> (RateDecision, Option<u128>) {
    let t = limit.interval().as_nanos().max(1);
    let burst = u128::from(limit.burst.max(1));
    let tat = tat.unwrap_or(now).max(now);
    let new_tat = tat + t * u128::from(cost);
    // The earliest time `new_tat` fits within `burst` intervals of now.
    let allow_at = new_tat.saturating_sub(t * burst);
    let allowed = force || now >= allow_at;
    let stored = if allowed { new_tat } else { tat };
    let remaining = ((now + t * burst).saturating_sub(stored)) / t;
    let decision = RateDecision {
        allowed: now >= allow_at,
        limit: limit.per_minute,
        remaining: u64::try_from(remaining).unwrap_or(u64::MAX),
        reset_after: nanos(stored.saturating_sub(now)),
        retry_after: (now < allow_at).then(|| nanos(allow_at - now)),
    };
    (decision, allowed.then_some(stored))
}

fn nanos(n: u128) -> Duration {
    Duration::from_nanos(u64::try_from(n).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: RateLimit = RateLimit {
        per_minute: 60,
        burst: 3,
    };
    const SEC: u128 = 1_000_000_000;

    #[test]
    fn burst_then_steady_rate() {
        let mut tat = None;
        for i in 0..3 {
            let (d, new) = gcra(tat, 0, LIMIT, 1, false);
            assert!(d.allowed, "burst unit {i}");
            assert_eq!(d.remaining, 2 - i);
            tat = new;
        }
        let (d, new) = gcra(tat, 0, LIMIT, 1, false);
        assert!(!d.allowed);
        assert_eq!(new, None);
        assert_eq!(d.retry_after, Some(Duration::from_secs(1)));
        let (d, _) = gcra(tat, SEC, LIMIT, 1, false);
        assert!(d.allowed, "one unit per second");
    }

    #[test]
    fn all_or_nothing_and_debit() {
        let (d, new) = gcra(None, 0, LIMIT, 4, false);
        assert!(!d.allowed, "more than the burst never fits");
        assert_eq!(new, None);
        let (d, new) = gcra(None, 0, LIMIT, 10, true);
        assert!(!d.allowed);
        let (d, _) = gcra(new, 5 * SEC, LIMIT, 1, false);
        assert!(!d.allowed, "a debit past the burst delays later calls");
        assert_eq!(d.retry_after, Some(Duration::from_secs(3)));
    }
}
