//! Shared state of aigw replicas: what must hold across every gateway serving the same
//! sessions. One trait per concern, each with an in-memory backend (the embedded default,
//! one process) and a Redis backend (several replicas):
//!
//! - [`budget::BudgetLedger`]: per-session usage and reservations against ceilings
//!   (reserve before a call, settle or release after), threshold events fired once per window;
//! - [`ratelimit::RateLimiter`]: requests and tokens per minute per key (GCRA);
//! - [`cache::ResponseCache`]: response bodies by key with a TTL;
//! - [`events::EventSink`]: where threshold events go (a broadcast channel, a Redis stream).
//! - [`transcript::TranscriptLog`]: voice sessions' finalised lines, capped and expiring.
//!
//! Layout: the traits and their value types in [`budget`], [`ratelimit`], [`cache`],
//! [`events`]; the in-process backends in [`memory`], the Redis ones in [`redis`] (one file
//! per concern, the Lua scripts in `redis/lua/`); the behaviour every backend must show in
//! [`conformance`]. Every multi-step update is atomic: a mutex here, one Lua script on
//! Redis.

pub mod budget;
pub mod cache;
pub mod conformance;
pub mod events;
pub mod memory;
pub mod ratelimit;
pub mod redis;
pub mod testing;
pub mod transcript;

/// Why shared state could not be read or written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StateError {
    /// The backend is unreachable or failed (Redis down, timeout).
    #[error("shared state unavailable: {0}")]
    Unavailable(String),
    /// The stored data is not what this version expects.
    #[error("shared state is corrupt: {0}")]
    Corrupt(String),
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
