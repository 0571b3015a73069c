//! The behaviour every backend must show, as async functions the backends' tests call (the
//! in-memory ones in this crate, the Redis ones against a real `redis-server`). Keys are
//! unique per call, so suites can share one server.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::missing_panics_doc,
    reason = "a test suite: failing assertions are its output"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;

use crate::budget::{Amount, BudgetKey, BudgetLedger, Dimension, Limits, Reserve};
use crate::cache::ResponseCache;
use crate::ratelimit::{RateLimit, RateLimiter};
use crate::transcript::{TranscriptEntry, TranscriptLog};

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A name no other call in this process (or recent run) uses.
pub fn unique(prefix: &str) -> String {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", crate::unix_now())
}

fn tokens(n: u64) -> Amount {
    Amount {
        tokens: n,
        ..Amount::default()
    }
}

/// Reserve, deny, settle, release, thresholds, expiry, reset, sessions, overrides, and
/// atomicity under concurrent reservations.
pub async fn ledger<L: BudgetLedger>(ledger: &L) {
    let tenant = unique("tenant");
    let key = BudgetKey {
        tenant: tenant.clone(),
        session: "table-1".into(),
        window: "session".into(),
    };
    let limits = Limits {
        tokens: Some(1000),
        ..Limits::default()
    };
    let ttl = Duration::from_secs(60);
    let thresholds = [50, 85, 100];

    // Within the ceiling: reserved; beyond it: denied, nothing recorded.
    let r = ledger
        .reserve(&key, "a", tokens(600), &limits, ttl)
        .await
        .unwrap();
    assert_eq!(r, Reserve::Reserved(limits.remaining(&tokens(600))));
    let r = ledger
        .reserve(&key, "b", tokens(500), &limits, ttl)
        .await
        .unwrap();
    assert_eq!(
        r,
        Reserve::Denied {
            remaining: limits.remaining(&tokens(600)),
            dimension: Dimension::Tokens
        }
    );
    let snap = ledger.snapshot(&key).await.unwrap();
    assert_eq!((snap.reserved, snap.reservations), (tokens(600), 1));

    // Settling replaces the reservation by the actual usage and fires thresholds once.
    let s = ledger
        .settle(&key, "a", tokens(520), &limits, &thresholds)
        .await
        .unwrap();
    assert_eq!(s.usage, tokens(520));
    assert_eq!(s.crossed, [50]);
    assert_eq!(s.remaining.tokens, Some(480));
    let r = ledger
        .reserve(&key, "c", tokens(400), &limits, ttl)
        .await
        .unwrap();
    assert!(matches!(r, Reserve::Reserved(_)));
    let s = ledger
        .settle(&key, "c", tokens(400), &limits, &thresholds)
        .await
        .unwrap();
    assert_eq!(s.crossed, [85], "50 fired already");
    let snap = ledger.snapshot(&key).await.unwrap();
    assert_eq!(snap.usage, tokens(920));
    assert_eq!(snap.reservations, 0);
    assert_eq!(snap.fired, [50, 85]);

    // Releasing gives the reservation back without usage.
    ledger
        .reserve(&key, "d", tokens(80), &limits, ttl)
        .await
        .unwrap();
    ledger.release(&key, "d").await.unwrap();
    let snap = ledger.snapshot(&key).await.unwrap();
    assert_eq!((snap.usage, snap.reservations), (tokens(920), 0));
    ledger.release(&key, "never-reserved").await.unwrap();

    // A settle past the ceiling records what was spent, and fires 100 once.
    let s = ledger
        .settle(&key, "gone", tokens(100), &limits, &thresholds)
        .await
        .unwrap();
    assert_eq!(
        (s.usage, s.crossed.as_slice()),
        (tokens(1020), &[100u8][..])
    );
    assert_eq!(s.remaining.tokens, Some(0));

    // Reservations expire.
    let short = BudgetKey {
        session: "table-2".into(),
        ..key.clone()
    };
    ledger
        .reserve(
            &short,
            "e",
            tokens(900),
            &limits,
            Duration::from_millis(150),
        )
        .await
        .unwrap();
    let r = ledger
        .reserve(&short, "f", tokens(900), &limits, ttl)
        .await
        .unwrap();
    assert!(matches!(r, Reserve::Denied { .. }));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ledger.snapshot(&short).await.unwrap().reservations, 0);
    let r = ledger
        .reserve(&short, "f", tokens(900), &limits, ttl)
        .await
        .unwrap();
    assert!(
        matches!(r, Reserve::Reserved(_)),
        "the expired reservation left"
    );

    // Sessions of the tenant; reset; overrides.
    assert_eq!(
        ledger.sessions(&tenant).await.unwrap(),
        ["table-1", "table-2"]
    );
    ledger.reset(&key).await.unwrap();
    assert_eq!(ledger.snapshot(&key).await.unwrap(), Default::default());
    assert_eq!(
        ledger.limits_override(&tenant, "table-1").await.unwrap(),
        None
    );
    let custom = Limits {
        tokens: Some(5),
        cost_micros: Some(7),
        audio_ms: None,
    };
    ledger
        .set_limits_override(&tenant, "table-9", Some(custom))
        .await
        .unwrap();
    assert_eq!(
        ledger.limits_override(&tenant, "table-9").await.unwrap(),
        Some(custom)
    );
    assert!(
        ledger
            .sessions(&tenant)
            .await
            .unwrap()
            .contains(&"table-9".to_string())
    );
    ledger
        .set_limits_override(&tenant, "table-9", None)
        .await
        .unwrap();
    assert_eq!(
        ledger.limits_override(&tenant, "table-9").await.unwrap(),
        None
    );
}

/// Concurrent reservations never admit more than the ceiling.
pub async fn ledger_is_atomic<L: BudgetLedger>(ledger: Arc<L>) {
    let key = BudgetKey {
        tenant: unique("tenant"),
        session: "busy".into(),
        window: "2026-11-22".into(),
    };
    let limits = Limits {
        tokens: Some(200),
        ..Limits::default()
    };
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let (ledger, key) = (Arc::clone(&ledger), key.clone());
            tokio::spawn(async move {
                ledger
                    .reserve(
                        &key,
                        &format!("r{i}"),
                        tokens(10),
                        &limits,
                        Duration::from_secs(60),
                    )
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        if matches!(t.await.unwrap(), Reserve::Reserved(_)) {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 20);
    assert_eq!(ledger.snapshot(&key).await.unwrap().reserved, tokens(200));
}

/// Burst, refusal with a retry time, debit.
pub async fn rate_limiter<R: RateLimiter>(limiter: &R) {
    let key = unique("rpm");
    let limit = RateLimit {
        per_minute: 60,
        burst: 3,
    };
    for i in 0..3 {
        let d = limiter.acquire(&key, limit, 1).await.unwrap();
        assert!(d.allowed, "burst unit {i}");
        assert_eq!(d.limit, 60);
    }
    let d = limiter.acquire(&key, limit, 1).await.unwrap();
    assert!(!d.allowed);
    assert_eq!(d.remaining, 0);
    let retry = d.retry_after.unwrap();
    assert!(
        retry > Duration::from_millis(800) && retry <= Duration::from_secs(1),
        "{retry:?}"
    );

    let key = unique("tpm");
    limiter.debit(&key, limit, 30).await.unwrap();
    let d = limiter.acquire(&key, limit, 1).await.unwrap();
    assert!(!d.allowed, "a debit past the burst makes the key wait");
    assert!(d.retry_after.unwrap() > Duration::from_secs(20));
}

/// Put, get, expiry.
pub async fn cache<C: ResponseCache>(cache: &C) {
    let key = unique("ai:response");
    assert_eq!(cache.get(&key).await.unwrap(), None);
    cache
        .put(
            &key,
            Bytes::from_static(b"{\"ok\":true}"),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert_eq!(
        cache.get(&key).await.unwrap().as_deref(),
        Some(&b"{\"ok\":true}"[..])
    );
    let short = unique("ai:response");
    cache
        .put(&short, Bytes::from_static(b"x"), Duration::from_millis(100))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(cache.get(&short).await.unwrap(), None, "expired");
}

/// Begin, append, cap, limit, expiry.
pub async fn transcripts<T: TranscriptLog>(log: &T) {
    let session = unique("discord:1:2");
    let hour = Duration::from_secs(3600);
    assert_eq!(log.latest(&session, 10).await.unwrap(), None, "never began");
    log.begin(&session, hour).await.unwrap();
    assert_eq!(
        log.latest(&session, 10).await.unwrap(),
        Some(vec![]),
        "began, no lines"
    );
    let line = |i: u64| TranscriptEntry {
        speaker: format!("Speaker {}", i % 2),
        speaker_id: i.is_multiple_of(2).then(|| i.to_string()),
        text: format!("line {i}: ünïcode and \"quotes\""),
        at: 1_700_000_000 + i,
    };
    for i in 0..7 {
        log.append(&session, &line(i), 5, hour).await.unwrap();
    }
    let kept = log.latest(&session, 100).await.unwrap().unwrap();
    assert_eq!(
        kept,
        (2..7).map(line).collect::<Vec<_>>(),
        "the newest 5, oldest first"
    );
    let last = log.latest(&session, 2).await.unwrap().unwrap();
    assert_eq!(last, vec![line(5), line(6)]);
    log.begin(&session, hour).await.unwrap();
    assert_eq!(
        log.latest(&session, 100).await.unwrap().unwrap().len(),
        5,
        "begin keeps lines"
    );

    let other = unique("discord:1:3");
    log.append(&other, &line(9), 5, hour).await.unwrap();
    assert_eq!(
        log.latest(&other, 10).await.unwrap(),
        Some(vec![line(9)]),
        "a first line begins"
    );

    let short = unique("discord:1:4");
    log.append(&short, &line(1), 5, Duration::from_millis(100))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(log.latest(&short, 10).await.unwrap(), None, "expired");
}
