//! Two gateway replicas on one real `redis-server`: one budget ceiling, one cache; Redis
//! going down makes budget checks fail closed (503) while the cache and rate limits fail
//! open, `/ready` says so, and everything recovers when Redis is back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aigw_state::testing::RedisServer;
use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::{CLIENT_KEY, Gateway, UPSTREAM_KEY, chat_body, expect_error};

const ADMIN: &str = "admin-secret";

async fn chat(State(calls): State<Arc<AtomicU64>>, Json(body): Json<Value>) -> Json<Value> {
    calls.fetch_add(1, Ordering::SeqCst);
    // A little latency, so that concurrent requests overlap in the ledger.
    tokio::time::sleep(Duration::from_millis(5)).await;
    Json(
        json!({"id": "c1", "object": "chat.completion", "created": 1, "model": body["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}}),
    )
}

async fn upstream() -> (SocketAddr, Arc<AtomicU64>) {
    let calls = Arc::new(AtomicU64::new(0));
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route(
            "/v1/models",
            axum::routing::get(|| async { Json(json!({"object": "list", "data": []})) }),
        )
        .with_state(Arc::clone(&calls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, calls)
}

/// A replica: the `budgeted` key pays from a 1,000-token policy, the `free` key has no
/// budget but 1,000 requests a minute.
async fn replica(addr: SocketAddr, redis: &RedisServer) -> Gateway {
    let toml = format!(
        r#"
[server]
listen = "127.0.0.1:0"

[state]
redis_url_env = "TEST_REDIS_URL"
key_prefix = "test"
timeout_ms = 300

[admin]
key_env = "TEST_ADMIN_KEY"

[[auth.keys]]
name = "budgeted"
key_env = "TEST_CLIENT_KEY"
policy = "table"

[[auth.keys]]
name = "free"
key_env = "TEST_UPSTREAM_KEY"
requests_per_minute = 1000

[budgets.policies.table]
tokens = 1000
thresholds = [50, 85, 100]

[providers.up]
kind = "openai"
base_url = "http://{addr}/v1"

[[models]]
name = "narrator"
provider = "up"
"#
    );
    Gateway::start_toml_env(&toml, &[("TEST_REDIS_URL", &redis.url())]).await
}

async fn ask(gw: &Gateway, key: &str, body: &Value) -> reqwest::Response {
    gw.client
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(key)
        .header("x-session-id", "table-9")
        .json(body)
        .send()
        .await
        .unwrap()
}

fn spend() -> Value {
    let mut body = chat_body("narrator", "roll for initiative");
    body["max_tokens"] = json!(5);
    body
}

async fn budget(gw: &Gateway) -> Value {
    let resp = gw
        .client
        .get(format!(
            "{}/admin/budgets/default/table-9?policy=table",
            gw.url
        ))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

macro_rules! redis_server {
    () => {
        match RedisServer::start() {
            Some(server) => server,
            None => return,
        }
    };
}

#[tokio::test]
async fn two_replicas_share_one_ceiling_and_one_cache() {
    let redis = redis_server!();
    let (addr, calls) = upstream().await;
    let (a, b) = (replica(addr, &redis).await, replica(addr, &redis).await);

    // 200 concurrent requests on one session, spread over both replicas, far past the
    // ceiling: each succeeds or gets insufficient_quota.
    let outcomes = futures::future::join_all((0..200).map(|i| {
        let gw = if i % 2 == 0 { &a } else { &b };
        async move {
            let resp = ask(gw, CLIENT_KEY, &spend()).await;
            match resp.status().as_u16() {
                200 => "ok".to_string(),
                429 => {
                    let err = expect_error(resp, 429).await;
                    err["code"].as_str().unwrap_or_default().to_string()
                }
                other => format!("status {other}"),
            }
        }
    }))
    .await;
    let mut ok = outcomes.iter().filter(|o| *o == "ok").count() as u64;
    assert!(
        outcomes
            .iter()
            .all(|o| o == "ok" || o == "insufficient_quota"),
        "{outcomes:?}"
    );
    assert!(ok > 0 && ok < 200, "{ok}");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        ok,
        "only admitted requests went upstream"
    );
    // Reservations in flight made the burst stop early; one at a time, alternating
    // replicas, the session then spends up to its ceiling.
    for i in 0.. {
        let gw = if i % 2 == 0 { &a } else { &b };
        match ask(gw, CLIENT_KEY, &spend()).await.status().as_u16() {
            200 => ok += 1,
            429 => break,
            other => panic!("status {other}"),
        }
    }
    // Settles run after the answers: wait for the ledger to be quiet.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = budget(&a).await;
    while seen["reserved"]["tokens"] != 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        seen = budget(&a).await;
    }
    assert_eq!(seen["usage"]["tokens"], ok * 9, "{seen}");
    assert!(ok * 9 <= 1000, "the shared ceiling held: {ok} requests");
    assert_eq!(seen["reserved"]["tokens"], 0, "no reservation leaked");
    assert!(ok * 9 > 850, "spent to near the ceiling: {ok} requests");
    assert_eq!(seen["fired"], json!([50, 85]), "each threshold fired once");
    assert_eq!(
        budget(&b).await["usage"],
        seen["usage"],
        "both replicas agree"
    );

    // A deterministic answer stored by one replica is a hit on the other.
    let mut det = chat_body("narrator", "describe the tavern");
    det["temperature"] = json!(0);
    let first = ask(&a, UPSTREAM_KEY, &det).await;
    assert_eq!(first.headers()["x-cache"], "miss");
    let second = ask(&b, UPSTREAM_KEY, &det).await;
    assert_eq!(second.status(), 200);
    assert_eq!(second.headers()["x-cache"], "hit");
}

#[tokio::test]
async fn redis_down_fails_budgets_closed_and_the_cache_open_then_recovers() {
    let mut redis = redis_server!();
    let (addr, calls) = upstream().await;
    let gw = replica(addr, &redis).await;
    assert_eq!(ask(&gw, CLIENT_KEY, &spend()).await.status(), 200);
    let ready = gw.get("/ready").await;
    let status = ready.status();
    let body: Value = ready.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["state"],
        json!({"backend": "redis", "reachable": true})
    );

    redis.kill();
    // Budgets fail closed, quickly, and nothing goes upstream.
    let before = calls.load(Ordering::SeqCst);
    let started = Instant::now();
    let resp = ask(&gw, CLIENT_KEY, &spend()).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(resp.headers()["retry-after"], "1");
    let err = expect_error(resp, 503).await;
    assert_eq!(err["code"], "budget_unavailable");
    assert_eq!(calls.load(Ordering::SeqCst), before);

    // Without a budget the request is served: the cache and the rate limit fail open.
    let mut det = chat_body("narrator", "describe the tavern");
    det["temperature"] = json!(0);
    let resp = ask(&gw, UPSTREAM_KEY, &det).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-cache"], "miss");
    assert_eq!(calls.load(Ordering::SeqCst), before + 1);

    let ready = gw.get("/ready").await;
    assert_eq!(ready.status(), 503, "budgets cannot be checked");
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["state"]["reachable"], false, "{body}");
    let metrics = gw.get("/metrics").await.text().await.unwrap();
    for op in ["budget", "cache", "rate_limit"] {
        assert!(
            metrics.contains(&format!("aigw_state_errors_total{{operation=\"{op}\"}}")),
            "{op} failures counted"
        );
    }
    assert!(metrics.contains("aigw_state_up 0"));

    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let resp = ask(&gw, CLIENT_KEY, &spend()).await;
        if resp.status() == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "budgets work again once Redis is back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(gw.get("/ready").await.status(), 200);
}
