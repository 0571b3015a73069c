//! The budget ledger on Redis: each update is one Lua script in `lua/` (see the module docs
//! of [`crate::redis`] for the keys).

use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_redis::redis::{self, Script};

use super::{RedisState, corrupt};
use crate::StateError;
use crate::budget::{
    Amount, BudgetKey, BudgetLedger, Dimension, Limits, Reserve, Settled, Snapshot,
};

static RESERVE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/reserve.lua")));
static SETTLE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/settle.lua")));
static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/release.lua")));
static SNAPSHOT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/snapshot.lua")));
static SET_OVERRIDE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/set_override.lua")));

/// The largest amount or limit sent to the scripts: Lua counts in doubles, exact to 2^53.
const MAX_EXACT: u64 = 1 << 53;

/// The longest reservation: about 35 years, well inside the scripts' exact range.
const MAX_TTL_MS: u128 = 1 << 40;

/// The budget ledger on Redis; cheap to clone.
#[derive(Debug, Clone)]
pub struct RedisLedger {
    state: RedisState,
}

/// The keys of one ledger entry.
struct EntryKeys {
    usage: String,
    reservations: String,
    amounts: String,
}

impl RedisLedger {
    pub(super) fn new(state: RedisState) -> Self {
        Self { state }
    }

    fn entry(&self, key: &BudgetKey) -> EntryKeys {
        let usage = self
            .state
            .key(&["budget", &key.tenant, &key.session, &key.window]);
        EntryKeys {
            reservations: format!("{usage}:res"),
            amounts: format!("{usage}:amt"),
            usage,
        }
    }

    fn sessions_key(&self, tenant: &str) -> String {
        self.state.key(&["sessions", tenant])
    }

    fn override_key(&self, tenant: &str, session: &str) -> String {
        self.state.key(&["override", tenant, session])
    }
}

/// How long a window's usage is worth keeping, by its label: a day (`2026-11-22`) for two
/// days, an ISO week (`2026-W47`) for eight; the `session` window (and anything else) until
/// it is reset. Redis then forgets finished windows by itself.
fn retention_ms(window: &str) -> u64 {
    const DAY_MS: u64 = 24 * 3600 * 1000;
    let b = window.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    match b.len() {
        10 if digits(0..4) && b[4] == b'-' && digits(5..7) && b[7] == b'-' && digits(8..10) => {
            2 * DAY_MS
        }
        8 if digits(0..4) && &b[4..6] == b"-W" && digits(6..8) => 8 * DAY_MS,
        _ => 0,
    }
}

fn arg(n: u64) -> u64 {
    n.min(MAX_EXACT)
}

/// The three limits as script arguments, `""` for unlimited.
fn limit_args(limits: &Limits) -> [String; 3] {
    [limits.tokens, limits.cost_micros, limits.audio_ms]
        .map(|l| l.map(|l| arg(l).to_string()).unwrap_or_default())
}

fn amount_of(tokens: u64, cost_micros: u64, audio_ms: u64) -> Amount {
    Amount {
        tokens,
        cost_micros,
        audio_ms,
    }
}

/// `"50,85"` → `[50, 85]`.
fn thresholds(s: &str) -> Result<Vec<u8>, StateError> {
    s.split(',')
        .filter(|t| !t.is_empty())
        .map(|t| t.parse().map_err(|_| corrupt("fired threshold")))
        .collect()
}

#[async_trait]
impl BudgetLedger for RedisLedger {
    async fn reserve(
        &self,
        key: &BudgetKey,
        id: &str,
        amount: Amount,
        limits: &Limits,
        ttl: Duration,
    ) -> Result<Reserve, StateError> {
        let keys = self.entry(key);
        let sessions = self.sessions_key(&key.tenant);
        let ttl_ms = u64::try_from(ttl.as_millis().clamp(1, MAX_TTL_MS)).unwrap_or(1);
        let mut call = RESERVE.prepare_invoke();
        call.key(&keys.usage)
            .key(&keys.reservations)
            .key(&keys.amounts)
            .key(&sessions)
            .arg(id)
            .arg(arg(amount.tokens))
            .arg(arg(amount.cost_micros))
            .arg(arg(amount.audio_ms))
            .arg(ttl_ms)
            .arg(&key.session)
            .arg(&limit_args(limits)[..]);
        let (admitted, dimension, t, c, a): (u8, u8, u64, u64, u64) = self
            .state
            .run(async |conn| call.invoke_async(conn).await)
            .await?;
        let committed = amount_of(t, c, a);
        let remaining = limits.remaining(&committed);
        if admitted == 1 {
            return Ok(Reserve::Reserved(remaining));
        }
        let dimension = match dimension {
            1 => Dimension::Tokens,
            2 => Dimension::Cost,
            3 => Dimension::Audio,
            _ => return Err(corrupt("dimension from reserve")),
        };
        Ok(Reserve::Denied {
            remaining,
            dimension,
        })
    }

    async fn settle(
        &self,
        key: &BudgetKey,
        id: &str,
        actual: Amount,
        limits: &Limits,
        thresholds: &[u8],
    ) -> Result<Settled, StateError> {
        let keys = self.entry(key);
        let mut call = SETTLE.prepare_invoke();
        call.key(&keys.usage)
            .key(&keys.reservations)
            .key(&keys.amounts)
            .arg(id)
            .arg(arg(actual.tokens))
            .arg(arg(actual.cost_micros))
            .arg(arg(actual.audio_ms))
            .arg(&limit_args(limits)[..])
            .arg(retention_ms(&key.window))
            .arg(thresholds.iter().map(|t| u64::from(*t)).collect::<Vec<_>>());
        let (ut, uc, ua, rt, rc, ra, crossed): (u64, u64, u64, u64, u64, u64, Vec<u64>) = self
            .state
            .run(async |conn| call.invoke_async(conn).await)
            .await?;
        let usage = amount_of(ut, uc, ua);
        let reserved = amount_of(rt, rc, ra);
        Ok(Settled {
            usage,
            remaining: limits.remaining(&usage.plus(reserved)),
            crossed: crossed
                .into_iter()
                .map(|t| u8::try_from(t).map_err(|_| corrupt("crossed threshold")))
                .collect::<Result<_, _>>()?,
        })
    }

    async fn release(&self, key: &BudgetKey, id: &str) -> Result<(), StateError> {
        let keys = self.entry(key);
        let mut call = RELEASE.prepare_invoke();
        call.key(&keys.reservations).key(&keys.amounts).arg(id);
        self.state
            .run(async |conn| call.invoke_async::<()>(conn).await)
            .await
    }

    async fn snapshot(&self, key: &BudgetKey) -> Result<Snapshot, StateError> {
        let keys = self.entry(key);
        let mut call = SNAPSHOT.prepare_invoke();
        call.key(&keys.usage)
            .key(&keys.reservations)
            .key(&keys.amounts);
        let (ut, uc, ua, rt, rc, ra, reservations, fired): (
            u64,
            u64,
            u64,
            u64,
            u64,
            u64,
            u64,
            String,
        ) = self
            .state
            .run(async |conn| call.invoke_async(conn).await)
            .await?;
        Ok(Snapshot {
            usage: amount_of(ut, uc, ua),
            reserved: amount_of(rt, rc, ra),
            reservations,
            fired: thresholds(&fired)?,
        })
    }

    async fn reset(&self, key: &BudgetKey) -> Result<(), StateError> {
        let keys = self.entry(key);
        let cmd = redis::cmd("DEL")
            .arg(&keys.usage)
            .arg(&keys.reservations)
            .arg(&keys.amounts)
            .to_owned();
        self.state
            .run(async |conn| cmd.query_async::<()>(conn).await)
            .await
    }

    async fn sessions(&self, tenant: &str) -> Result<Vec<String>, StateError> {
        let cmd = redis::cmd("SMEMBERS")
            .arg(self.sessions_key(tenant))
            .to_owned();
        let mut sessions: Vec<String> = self
            .state
            .run(async |conn| cmd.query_async(conn).await)
            .await?;
        sessions.sort_unstable();
        Ok(sessions)
    }

    async fn limits_override(
        &self,
        tenant: &str,
        session: &str,
    ) -> Result<Option<Limits>, StateError> {
        let cmd = redis::cmd("HMGET")
            .arg(self.override_key(tenant, session))
            .arg(&["tokens", "cost_micros", "audio_ms"][..])
            .to_owned();
        let fields: [Option<String>; 3] = self
            .state
            .run(async |conn| cmd.query_async(conn).await)
            .await?;
        if fields.iter().all(Option::is_none) {
            return Ok(None);
        }
        let [tokens, cost_micros, audio_ms] = fields.map(|f| match f.as_deref() {
            None | Some("") => Ok(None),
            Some(n) => n.parse().map(Some).map_err(|_| corrupt("limits override")),
        });
        Ok(Some(Limits {
            tokens: tokens?,
            cost_micros: cost_micros?,
            audio_ms: audio_ms?,
        }))
    }

    async fn set_limits_override(
        &self,
        tenant: &str,
        session: &str,
        limits: Option<Limits>,
    ) -> Result<(), StateError> {
        let key = self.override_key(tenant, session);
        let Some(limits) = limits else {
            let cmd = redis::cmd("DEL").arg(&key).to_owned();
            return self
                .state
                .run(async |conn| cmd.query_async::<()>(conn).await)
                .await;
        };
        // Stored as given (not clamped): read back exactly; clamped only when compared.
        let [tokens, cost_micros, audio_ms] = [limits.tokens, limits.cost_micros, limits.audio_ms]
            .map(|l| l.map(|l| l.to_string()).unwrap_or_default());
        let mut call = SET_OVERRIDE.prepare_invoke();
        call.key(&key)
            .key(self.sessions_key(tenant))
            .arg(session)
            .arg(tokens)
            .arg(cost_micros)
            .arg(audio_ms);
        self.state
            .run(async |conn| call.invoke_async::<()>(conn).await)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::retention_ms;

    #[test]
    fn finished_windows_are_forgotten() {
        assert_eq!(retention_ms("2026-11-22"), 2 * 86_400_000);
        assert_eq!(retention_ms("2026-W47"), 8 * 86_400_000);
        assert_eq!(retention_ms("session"), 0);
        assert_eq!(retention_ms("2026-1x-22"), 0);
    }
}
