//! Redis backends: the shared state of several replicas, on one Redis server.
//!
//! [`RedisState::connect`] opens a connection pool; [`RedisState::ledger`],
//! [`RedisState::rate_limiter`], [`RedisState::cache`], [`RedisState::events`] and
//! [`RedisState::transcripts`] hand out the five backends, which share it. Every multi-step
//! update that reads before it writes is one Lua script (`lua/*.lua`, sent by EVALSHA, loaded
//! again after a NOSCRIPT), and every script reads the clock with Redis `TIME`, so replicas
//! whose clocks disagree still agree on expiry and rates; the transcripts' blind writes are
//! one `MULTI`/`EXEC` each.
//! [`RedisState::ping`] is the readiness check.
//!
//! # Keys
//!
//! With the prefix `P` (`ai` by default), every key the backends touch:
//!
//! | key | type | TTL | holds |
//! |-----|------|-----|-------|
//! | `P:budget:{tenant}:{session}:{window}` | hash | day windows 2 days, week windows 8 days after the last settle; `session` none (`reset` deletes it) | settled usage `tokens`, `cost_micros`, `audio_ms`; `fired`: the thresholds fired in this window (`50,85`) |
//! | `P:budget:{tenant}:{session}:{window}:res` | sorted set | until its latest reservation expires | live reservations: id → expiry (Redis clock, Unix ms) |
//! | `P:budget:{tenant}:{session}:{window}:amt` | hash | as `:res` | reservation id → its amount, `"tokens cost_micros audio_ms"` |
//! | `P:sessions:{tenant}` | set | none | the tenant's sessions (for the admin API) |
//! | `P:override:{tenant}:{session}` | hash | none (deleted with the override) | a session's limits `tokens`, `cost_micros`, `audio_ms` (empty: unlimited) |
//! | `P:rl:{key}` | string | until the key is back to a full burst | GCRA theoretical arrival time (Redis clock, Unix µs) |
//! | `P:response:{key}` | string | the TTL given to `put` | a cached response body (the gateway's key is a SHA-256 hex digest) |
//! | `P:transcript:{session}` | list | the TTL given to `begin`/`append`, renewed by each | a voice session's newest lines, each a `TranscriptEntry` as JSON |
//! | `P:transcript:{session}:live` | string | as the list | `1` while the session's log exists (it may have no lines yet) |
//! | `P:events` | stream | none; trimmed to about [`RedisOptions::events_max_len`] entries | budget events, field `event` = a `BudgetEvent` as JSON |
//!
//! Reservations also expire inside their entry: every script that reads `:res` first drops
//! the members whose expiry has passed, so a replica that died between reserve and settle
//! holds budget for at most the reservation's TTL. The key TTLs only make Redis forget
//! entries nobody touches any more.
//!
//! The variable parts (`{tenant}`, `{session}`, `{window}`, `{key}`) are escaped so that no two
//! of them make the same key: `%` becomes `%25`, `:` becomes `%3A`, `{` becomes `%7B` and `}`
//! becomes `%7D` (the braces, so that a name never forms a Redis Cluster hash tag); every other
//! byte is kept, so a SHA-256 hex digest or a plain session name is stored as it is. An escaped
//! part holds no `:`, so a key splits into its parts unambiguously, and the key kinds differ
//! in their literal parts or in how many parts they have. The prefix is taken as it is.
//!
//! Amounts and limits are compared in Lua's double-precision numbers: exact up to 2^53
//! (about nine billion dollars in micros), which the ledger never nears.
//!
//! # Failures
//!
//! Every Redis error — refused connection, dropped connection, timeout — is
//! [`StateError::Unavailable`]; a reply of an unexpected shape is [`StateError::Corrupt`].
//! Each call gives up after [`RedisOptions::timeout`] (500 ms by default): connecting, waiting
//! for a pooled connection, checking it and the command itself all count against it, so a dead
//! or stalled server fails fast instead of hanging the request. A call cut off by the timeout
//! may still have been applied by the server; the ledger's reservations expire, so nothing is
//! held for ever. A connection whose call failed in transport (refused, reset, timed out, cut
//! off by the deadline) leaves the pool instead of returning to it, and a new one is made on
//! demand, so the backends work again by themselves once the server is back; the scripts are
//! loaded again when a restarted server answers `NOSCRIPT`. Healthy connections return to the
//! pool unchecked: a PING before every reuse would double the round trips of every call.

mod cache;
mod events;
mod ledger;
mod ratelimit;
mod transcript;

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use deadpool::managed::{self, Metrics, Object, RecycleResult};
use deadpool_redis::redis::aio::MultiplexedConnection;
use deadpool_redis::redis::{self, AsyncConnectionConfig, ErrorKind, RedisError};
use deadpool_redis::{Manager, Runtime};

pub use cache::RedisCache;
pub use events::RedisEvents;
pub use ledger::RedisLedger;
pub use ratelimit::RedisRateLimiter;
pub use transcript::RedisTranscripts;

use crate::StateError;

/// How to use the Redis server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisOptions {
    /// Put before every key, followed by `:`; `ai` by default.
    pub prefix: String,
    /// Most connections held open; 16 by default.
    pub pool_size: usize,
    /// Longest one call may take, connecting and waiting for a pooled connection included,
    /// before it fails as unavailable; 500 ms by default.
    pub timeout: Duration,
    /// About how many events the stream `P:events` keeps (`XADD … MAXLEN ~`); 10,000 by
    /// default.
    pub events_max_len: u64,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            prefix: "ai".into(),
            pool_size: 16,
            timeout: Duration::from_millis(500),
            events_max_len: 10_000,
        }
    }
}

/// A connection pool to one Redis server and the key prefix; hands out the backends.
///
/// Cloning is cheap: the pool is reference-counted, and every backend holds a clone.
#[derive(Clone)]
pub struct RedisState {
    inner: Arc<Inner>,
}

/// The pool of multiplexed connections.
type Pool = managed::Pool<Connections>;
/// An error of the pool.
type PoolError = managed::PoolError<RedisError>;

/// deadpool-redis's connection factory, recycling without a round trip: connections that
/// failed in transport never come back (see [`RedisState::run`]).
struct Connections(Manager);

impl managed::Manager for Connections {
    type Type = MultiplexedConnection;
    type Error = RedisError;

    async fn create(&self) -> Result<MultiplexedConnection, RedisError> {
        managed::Manager::create(&self.0).await
    }

    async fn recycle(
        &self,
        _: &mut MultiplexedConnection,
        _: &Metrics,
    ) -> RecycleResult<RedisError> {
        Ok(())
    }
}

struct Inner {
    pool: Pool,
    prefix: String,
    timeout: Duration,
    events_max_len: u64,
}

impl std::fmt::Debug for RedisState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisState")
            .field("prefix", &self.inner.prefix)
            .field("timeout", &self.inner.timeout)
            .field("pool", &self.inner.pool.status())
            .finish()
    }
}

impl RedisState {
    /// A pool for the server at `url` (`redis://host:port/db`, `rediss://…`, `unix:///…`)
    /// with key prefix `prefix` and the other options at their defaults. Connections are
    /// made on first use: a server that is down now only fails the calls made while it is.
    pub fn connect(url: &str, prefix: &str) -> Result<Self, StateError> {
        Self::connect_with(
            url,
            RedisOptions {
                prefix: prefix.to_string(),
                ..RedisOptions::default()
            },
        )
    }

    /// A pool for the server at `url` with `options`; see [`RedisState::connect`].
    pub fn connect_with(url: &str, options: RedisOptions) -> Result<Self, StateError> {
        let timeout = options.timeout.max(Duration::from_millis(1));
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let manager = Manager::new_with_config(url, config)
            .map_err(|e| StateError::Unavailable(format!("redis url: {e}")))?;
        let pool = Pool::builder(Connections(manager))
            .max_size(options.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .build()
            .map_err(|e| StateError::Unavailable(format!("redis pool: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                prefix: options.prefix,
                timeout,
                events_max_len: options.events_max_len.max(1),
            }),
        })
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The budget ledger.
    pub fn ledger(&self) -> RedisLedger {
        RedisLedger::new(self.clone())
    }

    /// The rate limiter.
    pub fn rate_limiter(&self) -> RedisRateLimiter {
        RedisRateLimiter::new(self.clone())
    }

    /// The response cache.
    pub fn cache(&self) -> RedisCache {
        RedisCache::new(self.clone())
    }

    /// The voice transcripts.
    pub fn transcripts(&self) -> RedisTranscripts {
        RedisTranscripts::new(self.clone())
    }

    /// The event sink on the stream `P:events`.
    pub fn events(&self) -> RedisEvents {
        RedisEvents::new(self.clone())
    }

    /// Whether the server answers now, within the timeout: one PING on a pooled connection,
    /// cheap enough for every readiness probe.
    pub async fn ping(&self) -> Result<(), StateError> {
        self.run(async |conn| {
            redis::cmd("PING")
                .query_async::<String>(conn)
                .await
                .map(drop)
        })
        .await
    }

    /// Runs `op` on a pooled connection within the timeout, mapping every failure.
    async fn run<T, F>(&self, op: F) -> Result<T, StateError>
    where
        F: AsyncFnOnce(&mut MultiplexedConnection) -> Result<T, RedisError>,
    {
        let work = async {
            let conn = self.inner.pool.get().await.map_err(pool_error)?;
            // Dropped before the call ends (deadline) or after a transport error, the guard
            // takes the connection out of the pool; it goes back only after a clean answer.
            let mut guard = Checkout(Some(conn));
            let Some(conn) = guard.0.as_mut() else {
                unreachable!("the guard holds the connection until here")
            };
            let result = op(conn).await;
            if !matches!(&result, Err(e) if transport_failure(e)) {
                guard.keep();
            }
            result.map_err(redis_error)
        };
        deadline(self.inner.timeout, work).await
    }

    /// `P:{parts…}`, each part escaped.
    fn key(&self, parts: &[&str]) -> String {
        let mut key = self.inner.prefix.clone();
        for part in parts {
            key.push(':');
            key.push_str(&escape(part));
        }
        key
    }
}

/// A pooled connection in use: discarded on drop unless [`Checkout::keep`] was called.
struct Checkout(Option<Object<Connections>>);

impl Checkout {
    /// Lets the connection return to the pool.
    fn keep(&mut self) {
        drop(self.0.take());
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            drop(Object::take(conn));
        }
    }
}

/// Whether an error leaves the connection unusable (rather than being the server's answer).
fn transport_failure(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout()
}

/// `work`, or [`StateError::Unavailable`] once `timeout` has passed.
async fn deadline<T>(
    timeout: Duration,
    work: impl Future<Output = Result<T, StateError>>,
) -> Result<T, StateError> {
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| {
            Err(StateError::Unavailable(format!(
                "redis did not answer within {timeout:?}"
            )))
        })
}

/// A key part with `%`, `:`, `{` and `}` percent-escaped; see the module docs.
pub fn escape(part: &str) -> Cow<'_, str> {
    if !part.contains(['%', ':', '{', '}']) {
        return Cow::Borrowed(part);
    }
    let mut out = String::with_capacity(part.len() + 8);
    for c in part.chars() {
        match c {
            '%' => out.push_str("%25"),
            ':' => out.push_str("%3A"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn redis_error(e: RedisError) -> StateError {
    let corrupt = matches!(e.kind(), ErrorKind::Parse | ErrorKind::UnexpectedReturnType)
        || e.code() == Some("WRONGTYPE");
    if corrupt {
        StateError::Corrupt(format!("redis: {e}"))
    } else {
        StateError::Unavailable(format!("redis: {e}"))
    }
}

fn pool_error(e: PoolError) -> StateError {
    match e {
        PoolError::Backend(e) => redis_error(e),
        e => StateError::Unavailable(format!("redis pool: {e}")),
    }
}

/// A reply that is not what the scripts return: the data under the keys is not this
/// version's.
fn corrupt(what: &str) -> StateError {
    StateError::Corrupt(format!("redis: unexpected {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_keeps_parts_apart() {
        assert_eq!(escape("table-1"), "table-1");
        assert_eq!(escape("a:b"), "a%3Ab");
        assert_eq!(escape("50%:{x}"), "50%25%3A%7Bx%7D");
        assert_ne!(escape("a%3Ab"), escape("a:b"));
        let state = RedisState::connect("redis://127.0.0.1:1", "ai").unwrap();
        assert_eq!(
            state.key(&["budget", "a:b", "c", "session"]),
            "ai:budget:a%3Ab:c:session"
        );
        assert_ne!(
            state.key(&["budget", "a:b", "c"]),
            state.key(&["budget", "a", "b:c"])
        );
    }
}
