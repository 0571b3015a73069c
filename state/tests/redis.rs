//! The Redis backends against a real `redis-server`, one per test on a free loopback port:
//! the conformance suite, two replicas sharing one server, reservation expiry, the key
//! layout, the event stream, and a server that dies, stalls and comes back.
//!
//! Without `redis-server` the tests are skipped with a note, unless
//! `AIGW_REQUIRE_TEST_TOOLS=1` (CI), where they fail.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests and their harness: a failing assertion is the output"
)]

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aigw_state::StateError;
use aigw_state::budget::{Amount, BudgetKey, BudgetLedger, Limits, Reserve};
use aigw_state::cache::ResponseCache;
use aigw_state::conformance::{self, unique};
use aigw_state::events::{BudgetEvent, EventKind, EventSink};
use aigw_state::ratelimit::{RateLimit, RateLimiter};
use aigw_state::redis::{RedisOptions, RedisState};
use aigw_state::testing::RedisServer;
use bytes::Bytes;
use deadpool_redis::redis::{self, AsyncCommands};

/// Longest any call may take while the server is down or stalled (the timeout is far
/// shorter; this only catches a hang).
const BOUND: Duration = Duration::from_secs(5);

/// A plain connection for looking at the keys.
async fn raw(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection")
}

/// Starts a server, or returns from the test (skipped) when there is none.
macro_rules! server {
    () => {
        match RedisServer::start() {
            Some(server) => server,
            None => return,
        }
    };
}

fn state(server: &RedisServer) -> RedisState {
    RedisState::connect(&server.url(), "ai").expect("pool")
}

fn tokens(n: u64) -> Amount {
    Amount {
        tokens: n,
        ..Amount::default()
    }
}

fn key(session: &str) -> BudgetKey {
    BudgetKey {
        tenant: unique("tenant"),
        session: session.into(),
        window: "session".into(),
    }
}

#[track_caller]
fn assert_unavailable<T: std::fmt::Debug>(what: &str, r: Result<T, StateError>) {
    assert!(
        matches!(r, Err(StateError::Unavailable(_))),
        "{what}: expected unavailable, got {r:?}"
    );
}

#[tokio::test]
async fn ledger_conformance() {
    let server = server!();
    conformance::ledger(&state(&server).ledger()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_is_atomic() {
    let server = server!();
    conformance::ledger_is_atomic(Arc::new(state(&server).ledger())).await;
}

#[tokio::test]
async fn rate_limiter_conformance() {
    let server = server!();
    conformance::rate_limiter(&state(&server).rate_limiter()).await;
}

#[tokio::test]
async fn cache_conformance() {
    let server = server!();
    conformance::cache(&state(&server).cache()).await;
}

#[tokio::test]
async fn transcripts_conformance() {
    let server = server!();
    conformance::transcripts(&state(&server).transcripts()).await;
}

/// Two replicas (two pools) on one server: concurrent reservations never pass the ceiling,
/// and each threshold fires exactly once when they all settle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_ceiling() {
    let server = server!();
    let replicas = [
        Arc::new(state(&server).ledger()),
        Arc::new(state(&server).ledger()),
    ];
    let key = key("shared");
    let limits = Limits {
        tokens: Some(1000),
        ..Limits::default()
    };
    let reserve: Vec<_> = (0..150)
        .map(|i| {
            let (ledger, key) = (Arc::clone(&replicas[i % 2]), key.clone());
            tokio::spawn(async move {
                let id = format!("r{i}");
                let r = ledger
                    .reserve(&key, &id, tokens(10), &limits, Duration::from_secs(60))
                    .await
                    .unwrap();
                matches!(r, Reserve::Reserved(_)).then_some((i, id))
            })
        })
        .collect();
    let mut admitted = Vec::new();
    for t in reserve {
        admitted.extend(t.await.unwrap());
    }
    assert_eq!(admitted.len(), 100, "exactly the ceiling is reserved");
    let snap = replicas[1].snapshot(&key).await.unwrap();
    assert_eq!((snap.reserved, snap.reservations), (tokens(1000), 100));

    let settle: Vec<_> = admitted
        .into_iter()
        .map(|(i, id)| {
            let (ledger, key) = (Arc::clone(&replicas[(i + 1) % 2]), key.clone());
            tokio::spawn(async move {
                ledger
                    .settle(&key, &id, tokens(10), &limits, &[50, 85, 100])
                    .await
                    .unwrap()
                    .crossed
            })
        })
        .collect();
    let mut crossed = Vec::new();
    for t in settle {
        crossed.extend(t.await.unwrap());
    }
    crossed.sort_unstable();
    assert_eq!(crossed, [50, 85, 100], "each threshold fired once");
    let snap = replicas[0].snapshot(&key).await.unwrap();
    assert_eq!((snap.usage, snap.reservations), (tokens(1000), 0));
    assert_eq!(snap.fired, [50, 85, 100]);
}

/// A reservation that is never settled (its replica died) frees its budget after its TTL,
/// for every replica, and Redis forgets its keys.
#[tokio::test]
async fn reservation_ttl_frees_budget() {
    let server = server!();
    let (dead, alive) = (state(&server).ledger(), state(&server).ledger());
    let key = key("crash");
    let limits = Limits {
        tokens: Some(1000),
        ..Limits::default()
    };
    let ttl = Duration::from_millis(300);
    let r = dead
        .reserve(&key, "lost", tokens(900), &limits, ttl)
        .await
        .unwrap();
    assert!(matches!(r, Reserve::Reserved(_)));
    drop(dead);

    let mut raw = raw(&server).await;
    let res_key = format!("ai:budget:{}:crash:session:res", key.tenant);
    let pttl: i64 = raw.pttl(&res_key).await.unwrap();
    assert!(
        pttl > 0 && pttl <= 300,
        "the reservation keys expire: {pttl}"
    );

    let r = alive
        .reserve(&key, "next", tokens(900), &limits, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(matches!(r, Reserve::Denied { .. }), "still held: {r:?}");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = alive
        .reserve(&key, "next", tokens(900), &limits, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(matches!(r, Reserve::Reserved(_)), "freed: {r:?}");
    let snap = alive.snapshot(&key).await.unwrap();
    assert_eq!((snap.reserved, snap.reservations), (tokens(900), 1));
}

/// Every key the backends write is one documented in the module docs, with its type and TTL.
#[tokio::test]
async fn keys_follow_the_documented_layout() {
    let server = server!();
    let state = RedisState::connect_with(
        &server.url(),
        RedisOptions {
            prefix: "p1".into(),
            ..RedisOptions::default()
        },
    )
    .unwrap();
    let key = BudgetKey {
        tenant: "acme".into(),
        session: "table:1".into(),
        window: "2026-W47".into(),
    };
    let limits = Limits {
        tokens: Some(100),
        ..Limits::default()
    };
    let ledger = state.ledger();
    let ttl = Duration::from_secs(60);
    ledger
        .reserve(&key, "a", tokens(10), &limits, ttl)
        .await
        .unwrap();
    ledger
        .reserve(&key, "b", tokens(10), &limits, ttl)
        .await
        .unwrap();
    ledger
        .settle(&key, "a", tokens(60), &limits, &[50])
        .await
        .unwrap();
    ledger
        .set_limits_override("acme", "table:2", Some(limits))
        .await
        .unwrap();
    let limit = RateLimit {
        per_minute: 60,
        burst: 5,
    };
    state
        .rate_limiter()
        .acquire("key-1:rpm", limit, 1)
        .await
        .unwrap();
    let sha = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    state
        .cache()
        .put(sha, Bytes::from_static(b"{}"), ttl)
        .await
        .unwrap();
    state.events().publish(&event(50)).await.unwrap();

    let mut raw = raw(&server).await;
    let mut keys: Vec<String> = raw.keys("*").await.unwrap();
    keys.sort();
    let expected = [
        ("p1:budget:acme:table%3A1:2026-W47", "hash", true),
        ("p1:budget:acme:table%3A1:2026-W47:amt", "hash", true),
        ("p1:budget:acme:table%3A1:2026-W47:res", "zset", true),
        ("p1:events", "stream", false),
        ("p1:override:acme:table%3A2", "hash", false),
        (&format!("p1:response:{sha}"), "string", true),
        ("p1:rl:key-1%3Arpm", "string", true),
        ("p1:sessions:acme", "set", false),
    ];
    assert_eq!(keys, expected.map(|(k, _, _)| k.to_string()));
    for (k, kind, expires) in expected {
        let t: String = redis::cmd("TYPE")
            .arg(k)
            .query_async(&mut raw)
            .await
            .unwrap();
        assert_eq!(t, kind, "{k}");
        let pttl: i64 = raw.pttl(k).await.unwrap();
        assert_eq!(pttl > 0, expires, "{k}: pttl {pttl}");
    }
    let fired: String = raw
        .hget("p1:budget:acme:table%3A1:2026-W47", "fired")
        .await
        .unwrap();
    assert_eq!(fired, "50");
    let body: Vec<u8> = raw.get(format!("p1:response:{sha}")).await.unwrap();
    assert_eq!(body, b"{}");
}

fn event(threshold_pct: u8) -> BudgetEvent {
    BudgetEvent {
        kind: EventKind::Threshold,
        tenant: "acme".into(),
        session: "table-1".into(),
        window: "session".into(),
        threshold_pct,
        usage: tokens(850),
        limits: Limits {
            tokens: Some(1000),
            ..Limits::default()
        },
        at: 1_790_000_000,
    }
}

/// Published events land on the stream in order, and the stream is trimmed near its cap.
#[tokio::test]
async fn events_reach_the_stream() {
    let server = server!();
    let state = RedisState::connect_with(
        &server.url(),
        RedisOptions {
            events_max_len: 10,
            ..RedisOptions::default()
        },
    )
    .unwrap();
    let events = state.events();
    assert_eq!(events.stream(), "ai:events");
    let sent = [event(50), event(85), event(100)];
    for e in &sent {
        events.publish(e).await.unwrap();
    }
    let mut raw = raw(&server).await;
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg("ai:events")
        .arg("-")
        .arg("+")
        .query_async(&mut raw)
        .await
        .unwrap();
    let got: Vec<BudgetEvent> = entries
        .iter()
        .map(|(_, fields)| {
            assert_eq!(fields.len(), 1);
            assert_eq!(fields[0].0, "event");
            serde_json::from_str(&fields[0].1).unwrap()
        })
        .collect();
    assert_eq!(got, sent);

    for i in 0..500u16 {
        events.publish(&event((i % 100) as u8)).await.unwrap();
    }
    let len: u64 = redis::cmd("XLEN")
        .arg("ai:events")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!((10..500).contains(&len), "trimmed to about the cap: {len}");
}

/// Every kind of call the gateway makes, each failing as unavailable within [`BOUND`].
async fn all_unavailable(state: &RedisState) {
    let key = key("down");
    let limits = Limits::default();
    let limit = RateLimit {
        per_minute: 60,
        burst: 1,
    };
    let started = Instant::now();
    assert_unavailable("ping", state.ping().await);
    assert_unavailable(
        "reserve",
        state
            .ledger()
            .reserve(&key, "x", tokens(1), &limits, BOUND)
            .await,
    );
    assert_unavailable(
        "settle",
        state
            .ledger()
            .settle(&key, "x", tokens(1), &limits, &[50])
            .await,
    );
    assert_unavailable("snapshot", state.ledger().snapshot(&key).await);
    assert_unavailable("acquire", state.rate_limiter().acquire("k", limit, 1).await);
    assert_unavailable("cache get", state.cache().get("k").await);
    assert_unavailable(
        "cache put",
        state
            .cache()
            .put("k", Bytes::from_static(b"x"), BOUND)
            .await,
    );
    assert_unavailable("publish", state.events().publish(&event(50)).await);
    assert!(started.elapsed() < BOUND, "took {:?}", started.elapsed());
}

/// Every kind of call works.
async fn all_work(state: &RedisState) {
    let key = key("up");
    let limits = Limits {
        tokens: Some(100),
        ..Limits::default()
    };
    let limit = RateLimit {
        per_minute: 600,
        burst: 100,
    };
    state.ping().await.unwrap();
    let ledger = state.ledger();
    let r = ledger
        .reserve(&key, "x", tokens(10), &limits, BOUND)
        .await
        .unwrap();
    assert!(matches!(r, Reserve::Reserved(_)));
    let s = ledger
        .settle(&key, "x", tokens(60), &limits, &[50])
        .await
        .unwrap();
    assert_eq!(s.crossed, [50]);
    assert_eq!(ledger.snapshot(&key).await.unwrap().usage, tokens(60));
    let d = state.rate_limiter().acquire(&key.tenant, limit, 1).await;
    assert!(d.unwrap().allowed);
    let cache = state.cache();
    cache
        .put(&key.tenant, Bytes::from_static(b"x"), BOUND)
        .await
        .unwrap();
    assert_eq!(
        cache.get(&key.tenant).await.unwrap().as_deref(),
        Some(&b"x"[..])
    );
    state.events().publish(&event(50)).await.unwrap();
}

/// A dead server fails every call fast; once it is back (empty, without the scripts) the
/// same backends work again.
#[tokio::test]
async fn redis_down_then_back() {
    let mut server = server!();
    let state = state(&server);
    all_work(&state).await;
    server.kill();
    all_unavailable(&state).await;
    server.restart();
    all_work(&state).await;
}

/// A server that accepts connections but never answers (stopped) fails every call after
/// the timeout instead of hanging; once it answers again, calls succeed.
#[tokio::test]
async fn stalled_redis_times_out() {
    let server = server!();
    let state = RedisState::connect_with(
        &server.url(),
        RedisOptions {
            timeout: Duration::from_millis(250),
            ..RedisOptions::default()
        },
    )
    .unwrap();
    all_work(&state).await;
    server.signal("STOP");
    let started = Instant::now();
    assert_unavailable("ping", state.ping().await);
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "a stalled server is noticed by the timeout, {:?}",
        started.elapsed()
    );
    all_unavailable(&state).await;
    server.signal("CONT");
    all_work(&state).await;
}

/// A URL that is not Redis's is refused up front; a server that was never there makes
/// calls unavailable, not hang.
#[tokio::test]
async fn bad_url_and_no_server() {
    assert!(RedisState::connect("http://example.com", "ai").is_err());
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let state = RedisState::connect(&format!("redis://127.0.0.1:{port}/"), "ai").unwrap();
    all_unavailable(&state).await;
}
