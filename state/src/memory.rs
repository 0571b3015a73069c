//! In-process backends: the embedded default, for a single replica. Each is a mutex around
//! plain maps, so every multi-step update is atomic.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::broadcast;

use crate::StateError;
use crate::budget::{Amount, BudgetKey, BudgetLedger, Limits, Reserve, Settled, Snapshot};
use crate::cache::ResponseCache;
use crate::events::{BudgetEvent, EventSink};
use crate::ratelimit::{RateDecision, RateLimit, RateLimiter, gcra};
use crate::transcript::{TranscriptEntry, TranscriptLog};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Debug, Default)]
struct Entry {
    usage: Amount,
    reservations: HashMap<String, (Amount, Instant)>,
    fired: BTreeSet<u8>,
}

impl Entry {
    fn purge(&mut self, now: Instant) {
        self.reservations.retain(|_, (_, until)| *until > now);
    }

    fn reserved(&self) -> Amount {
        self.reservations
            .values()
            .fold(Amount::default(), |sum, (a, _)| sum.plus(*a))
    }
}

#[derive(Debug, Default)]
struct Ledger {
    entries: HashMap<BudgetKey, Entry>,
    sessions: BTreeMap<String, BTreeSet<String>>,
    overrides: HashMap<(String, String), Limits>,
}

/// The budget ledger in memory.
#[derive(Debug, Default)]
pub struct MemoryLedger {
    inner: Mutex<Ledger>,
}

impl MemoryLedger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl BudgetLedger for MemoryLedger {
    async fn reserve(
        &self,
        key: &BudgetKey,
        id: &str,
        amount: Amount,
        limits: &Limits,
        ttl: Duration,
    ) -> Result<Reserve, StateError> {
        let now = Instant::now();
        let mut ledger = lock(&self.inner);
        ledger
            .sessions
            .entry(key.tenant.clone())
            .or_default()
            .insert(key.session.clone());
        let entry = ledger.entries.entry(key.clone()).or_default();
        entry.purge(now);
        let committed = entry.usage.plus(entry.reserved());
        if let Some(dimension) = limits.exceeded(&committed.plus(amount)) {
            return Ok(Reserve::Denied {
                remaining: limits.remaining(&committed),
                dimension,
            });
        }
        entry
            .reservations
            .insert(id.to_string(), (amount, now + ttl));
        Ok(Reserve::Reserved(limits.remaining(&committed.plus(amount))))
    }

    async fn settle(
        &self,
        key: &BudgetKey,
        id: &str,
        actual: Amount,
        limits: &Limits,
        thresholds: &[u8],
    ) -> Result<Settled, StateError> {
        let now = Instant::now();
        let mut ledger = lock(&self.inner);
        let entry = ledger.entries.entry(key.clone()).or_default();
        entry.reservations.remove(id);
        entry.purge(now);
        entry.usage = entry.usage.plus(actual);
        let fired: Vec<u8> = entry.fired.iter().copied().collect();
        let crossed = limits.newly_crossed(&entry.usage, thresholds, &fired);
        entry.fired.extend(crossed.iter().copied());
        Ok(Settled {
            usage: entry.usage,
            remaining: limits.remaining(&entry.usage.plus(entry.reserved())),
            crossed,
        })
    }

    async fn release(&self, key: &BudgetKey, id: &str) -> Result<(), StateError> {
        if let Some(entry) = lock(&self.inner).entries.get_mut(key) {
            entry.reservations.remove(id);
        }
        Ok(())
    }

    async fn snapshot(&self, key: &BudgetKey) -> Result<Snapshot, StateError> {
        let now = Instant::now();
        let mut ledger = lock(&self.inner);
        let Some(entry) = ledger.entries.get_mut(key) else {
            return Ok(Snapshot::default());
        };
        entry.purge(now);
        Ok(Snapshot {
            usage: entry.usage,
            reserved: entry.reserved(),
            reservations: entry.reservations.len() as u64,
            fired: entry.fired.iter().copied().collect(),
        })
    }

    async fn reset(&self, key: &BudgetKey) -> Result<(), StateError> {
        lock(&self.inner).entries.remove(key);
        Ok(())
    }

    async fn sessions(&self, tenant: &str) -> Result<Vec<String>, StateError> {
        Ok(lock(&self.inner)
            .sessions
            .get(tenant)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default())
    }

    async fn limits_override(
        &self,
        tenant: &str,
        session: &str,
    ) -> Result<Option<Limits>, StateError> {
        Ok(lock(&self.inner)
            .overrides
            .get(&(tenant.to_string(), session.to_string()))
            .copied())
    }

    async fn set_limits_override(
        &self,
        tenant: &str,
        session: &str,
        limits: Option<Limits>,
    ) -> Result<(), StateError> {
        let mut ledger = lock(&self.inner);
        let key = (tenant.to_string(), session.to_string());
        match limits {
            Some(l) => {
                ledger
                    .sessions
                    .entry(tenant.to_string())
                    .or_default()
                    .insert(session.to_string());
                ledger.overrides.insert(key, l);
            }
            None => {
                ledger.overrides.remove(&key);
            }
        }
        Ok(())
    }
}

/// GCRA rate limits in memory.
#[derive(Debug)]
pub struct MemoryRateLimiter {
    origin: Instant,
    tats: Mutex<HashMap<String, u128>>,
}

impl Default for MemoryRateLimiter {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            tats: Mutex::new(HashMap::new()),
        }
    }
}

impl MemoryRateLimiter {
    /// No keys seen yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn step(&self, key: &str, limit: RateLimit, cost: u64, force: bool) -> RateDecision {
        let now = self.origin.elapsed().as_nanos();
        let mut tats = lock(&self.tats);
        // Keys back at a full burst carry no state: forget them now and then.
        if tats.len() > 100_000 {
            tats.retain(|_, tat| *tat > now);
        }
        let (decision, store) = gcra(tats.get(key).copied(), now, limit, cost, force);
        if let Some(tat) = store {
            tats.insert(key.to_string(), tat);
        }
        decision
    }
}

#[async_trait]
impl RateLimiter for MemoryRateLimiter {
    async fn acquire(
        &self,
        key: &str,
        limit: RateLimit,
        cost: u64,
    ) -> Result<RateDecision, StateError> {
        Ok(self.step(key, limit, cost, false))
    }

    async fn debit(&self, key: &str, limit: RateLimit, cost: u64) -> Result<(), StateError> {
        self.step(key, limit, cost, true);
        Ok(())
    }
}

/// A bounded in-memory response cache: at most `max_entries`, expired and then oldest
/// entries evicted first.
#[derive(Debug)]
pub struct MemoryCache {
    max_entries: usize,
    entries: Mutex<HashMap<String, (Bytes, Instant, Instant)>>,
}

impl MemoryCache {
    /// A cache of at most `max_entries` entries.
    pub fn new(max_entries: usize) -> Self {
        Self {
            max_entries: max_entries.max(1),
            entries: Mutex::new(HashMap::new()),
        }
    }
}

#[async_trait]
impl ResponseCache for MemoryCache {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, StateError> {
        let now = Instant::now();
        let mut entries = lock(&self.entries);
        match entries.get(key) {
            Some((value, _, expires)) if *expires > now => Ok(Some(value.clone())),
            Some(_) => {
                entries.remove(key);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn put(&self, key: &str, value: Bytes, ttl: Duration) -> Result<(), StateError> {
        let now = Instant::now();
        let mut entries = lock(&self.entries);
        if entries.len() >= self.max_entries && !entries.contains_key(key) {
            entries.retain(|_, (_, _, expires)| *expires > now);
            while entries.len() >= self.max_entries {
                let oldest = entries
                    .iter()
                    .min_by_key(|(_, (_, stored, _))| *stored)
                    .map(|(k, _)| k.clone());
                match oldest {
                    Some(k) => entries.remove(&k),
                    None => break,
                };
            }
        }
        entries.insert(key.to_string(), (value, now, now + ttl));
        Ok(())
    }
}

/// Voice transcripts in memory: each session's newest lines until its time to live passes.
#[derive(Debug, Default)]
pub struct MemoryTranscripts {
    logs: Mutex<HashMap<String, TranscriptBook>>,
}

#[derive(Debug, Default)]
struct TranscriptBook {
    lines: VecDeque<TranscriptEntry>,
    expires: Option<Instant>,
}

impl MemoryTranscripts {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The live log of `session`, created if needed, expiring `ttl` from `now`; expired
    /// logs are dropped first.
    fn book<'a>(
        logs: &'a mut HashMap<String, TranscriptBook>,
        session: &str,
        now: Instant,
        ttl: Duration,
    ) -> &'a mut TranscriptBook {
        logs.retain(|_, b| b.expires.is_some_and(|e| e > now));
        let book = logs.entry(session.to_string()).or_default();
        book.expires = Some(now + ttl);
        book
    }
}

#[async_trait]
impl TranscriptLog for MemoryTranscripts {
    async fn begin(&self, session: &str, ttl: Duration) -> Result<(), StateError> {
        let mut logs = lock(&self.logs);
        Self::book(&mut logs, session, Instant::now(), ttl);
        Ok(())
    }

    async fn append(
        &self,
        session: &str,
        entry: &TranscriptEntry,
        cap: usize,
        ttl: Duration,
    ) -> Result<(), StateError> {
        let mut logs = lock(&self.logs);
        let book = Self::book(&mut logs, session, Instant::now(), ttl);
        book.lines.push_back(entry.clone());
        while book.lines.len() > cap.max(1) {
            book.lines.pop_front();
        }
        Ok(())
    }

    async fn latest(
        &self,
        session: &str,
        limit: usize,
    ) -> Result<Option<Vec<TranscriptEntry>>, StateError> {
        let logs = lock(&self.logs);
        Ok(logs
            .get(session)
            .filter(|b| b.expires.is_some_and(|e| e > Instant::now()))
            .map(|b| {
                let skip = b.lines.len().saturating_sub(limit);
                b.lines.iter().skip(skip).cloned().collect()
            }))
    }
}

/// Events on a broadcast channel; subscribers that fall behind lose the oldest.
#[derive(Debug, Clone)]
pub struct BroadcastSink {
    tx: broadcast::Sender<BudgetEvent>,
}

impl BroadcastSink {
    /// A channel keeping up to `capacity` events per slow subscriber.
    pub fn new(capacity: usize) -> Self {
        Self {
            tx: broadcast::channel(capacity.max(1)).0,
        }
    }

    /// A new subscriber, receiving events published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<BudgetEvent> {
        self.tx.subscribe()
    }
}

#[async_trait]
impl EventSink for BroadcastSink {
    async fn publish(&self, event: &BudgetEvent) -> Result<(), StateError> {
        // No subscriber is not an error: the events are also posted to webhooks.
        let _ = self.tx.send(event.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ledger_conformance() {
        crate::conformance::ledger(&MemoryLedger::new()).await;
    }

    #[tokio::test]
    async fn ledger_is_atomic() {
        crate::conformance::ledger_is_atomic(std::sync::Arc::new(MemoryLedger::new())).await;
    }

    #[tokio::test]
    async fn rate_limiter_conformance() {
        crate::conformance::rate_limiter(&MemoryRateLimiter::new()).await;
    }

    #[tokio::test]
    async fn cache_conformance() {
        crate::conformance::cache(&MemoryCache::new(1000)).await;
    }

    #[tokio::test]
    async fn transcripts_conform() {
        crate::conformance::transcripts(&MemoryTranscripts::new()).await;
    }

    #[tokio::test]
    async fn cache_is_bounded() {
        let cache = MemoryCache::new(2);
        let ttl = Duration::from_secs(60);
        for k in ["a", "b", "c"] {
            cache.put(k, Bytes::from(k), ttl).await.unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert_eq!(cache.get("a").await.unwrap(), None, "oldest evicted");
        assert!(cache.get("c").await.unwrap().is_some());
    }
}
