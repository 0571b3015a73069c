//! Per-session budgets with the in-memory ledger: reserve then settle, 429
//! `insufficient_quota` at the ceiling, threshold events once each (to the webhook),
//! downgrades, the admin API, and concurrent requests never overshooting.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::{Gateway, chat_body, expect_error};

const ADMIN: &str = "admin-secret";

#[derive(Clone, Default)]
struct Hooks {
    events: Arc<Mutex<Vec<Value>>>,
}

async fn chat(Json(body): Json<Value>) -> Json<Value> {
    Json(
        json!({"id": "c1", "object": "chat.completion", "created": 1, "model": body["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}}),
    )
}

async fn hook(State(hooks): State<Hooks>, Json(event): Json<Value>) -> &'static str {
    hooks.events.lock().unwrap().push(event);
    "ok"
}

async fn start() -> (SocketAddr, Hooks) {
    let hooks = Hooks::default();
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/hook", post(hook))
        .with_state(hooks.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, hooks)
}

async fn gateway(addr: SocketAddr) -> Gateway {
    gateway_with(addr, "table").await
}

async fn gateway_with(addr: SocketAddr, default_policy: &str) -> Gateway {
    Gateway::start_toml(&format!(
        r#"
[server]
listen = "127.0.0.1:0"

[admin]
key_env = "TEST_ADMIN_KEY"

[budgets]
default_policy = "{default_policy}"
webhook_url = "http://{addr}/hook"

[budgets.policies.table]
tokens = 1000
thresholds = [50, 85, 100]

[budgets.policies.thrifty]
tokens = 1000
downgrade_at = 50
downgrade_to = "cheap"

[providers.up]
kind = "openai"
base_url = "http://{addr}/v1"

[[models]]
name = "narrator"
provider = "up"
upstream_model = "big"

[[models]]
name = "cheap"
provider = "up"
upstream_model = "small"
"#
    ))
    .await
}

async fn ask(gw: &Gateway, session: &str) -> reqwest::Response {
    let mut body = chat_body("narrator", "hi");
    body["max_tokens"] = json!(5);
    gw.client
        .post(format!("{}/v1/chat/completions", gw.url))
        .header("x-session-id", session)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn admin(gw: &Gateway, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
    let mut rb = gw
        .client
        .request(method, format!("{}{path}", gw.url))
        .bearer_auth(ADMIN);
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let resp = rb.send().await.unwrap();
    assert_eq!(resp.status(), 200, "{path}");
    resp.json().await.unwrap()
}

#[tokio::test]
async fn a_session_spends_up_to_its_ceiling_and_events_fire_once() {
    let (addr, hooks) = start().await;
    let gw = gateway(addr).await;
    let mut served = 0;
    let denied = loop {
        let resp = ask(&gw, "table-7").await;
        if resp.status() == 429 {
            break resp;
        }
        assert_eq!(resp.status(), 200);
        assert!(
            resp.headers()["x-aigw-budget-remaining"]
                .to_str()
                .unwrap()
                .starts_with("tokens="),
        );
        served += 1;
        assert!(served < 1000, "never denied");
    };
    assert_eq!(denied.headers()["x-should-retry"], "false");
    let err = expect_error(denied, 429).await;
    assert_eq!(err["code"], "insufficient_quota");
    assert_eq!(err["type"], "insufficient_quota");
    assert!(
        err["message"].as_str().unwrap().contains("remaining"),
        "{err}"
    );

    let budget = admin(
        &gw,
        reqwest::Method::GET,
        "/admin/budgets/default/table-7",
        None,
    )
    .await;
    assert_eq!(budget["usage"]["tokens"], served * 9, "{budget}");
    assert!(budget["usage"]["tokens"].as_u64().unwrap() <= 1000);
    assert_eq!(budget["reserved"]["tokens"], 0, "no reservation left");
    assert_eq!(budget["fired"], json!([50, 85]));

    // The webhook got each threshold once; 85 % is the escalation.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let events = hooks.events.lock().unwrap().clone();
    let seen: Vec<(String, u64)> = events
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_string(),
                e["threshold_pct"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [("threshold".to_string(), 50), ("escalate".to_string(), 85)]
    );
    assert_eq!(events[0]["session"], "table-7");

    // The admin API lists, overrides and resets.
    let list = admin(&gw, reqwest::Method::GET, "/admin/budgets/default", None).await;
    assert_eq!(list["sessions"], json!(["table-7"]));
    let reset = admin(
        &gw,
        reqwest::Method::DELETE,
        "/admin/budgets/default/table-7",
        None,
    )
    .await;
    assert_eq!(reset["usage"]["tokens"], 0);
    assert_eq!(ask(&gw, "table-7").await.status(), 200);
    let set = admin(
        &gw,
        reqwest::Method::PUT,
        "/admin/budgets/default/table-7",
        Some(json!({"tokens": 10})),
    )
    .await;
    assert_eq!(set["overridden"], true);
    assert_eq!(ask(&gw, "table-7").await.status(), 429);
    let resp = gw.get("/admin/budgets/default").await;
    assert_eq!(resp.status(), 401, "the admin API needs its key");
}

#[tokio::test]
async fn concurrent_requests_never_overshoot() {
    let (addr, _) = start().await;
    let gw = gateway(addr).await;
    let gw = &gw;
    let statuses: Vec<u16> = futures::future::join_all(
        (0..120).map(|_| async move { ask(gw, "crowded").await.status().as_u16() }),
    )
    .await;
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    assert!(statuses.contains(&429));
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let budget = admin(
        gw,
        reqwest::Method::GET,
        "/admin/budgets/default/crowded",
        None,
    )
    .await;
    let ok = statuses.iter().filter(|s| **s == 200).count() as u64;
    assert_eq!(budget["usage"]["tokens"], ok * 9);
    assert!(budget["usage"]["tokens"].as_u64().unwrap() <= 1000);
    assert_eq!(budget["reserved"]["tokens"], 0);
}

#[tokio::test]
async fn past_its_threshold_a_session_is_downgraded() {
    let (addr, _) = start().await;
    let gw = gateway_with(addr, "thrifty").await;
    let mut downgraded_after = None;
    for i in 0..200 {
        let resp = ask(&gw, "thrifty-table").await;
        assert_eq!(resp.status(), 200);
        if let Some(from) = resp.headers().get("x-aigw-downgraded-from") {
            assert_eq!(from, "narrator");
            let body: Value = resp.json().await.unwrap();
            assert_eq!(body["model"], "cheap");
            downgraded_after = Some(i);
            break;
        }
    }
    // 9 tokens a request: the 56th request finds 55 × 9 = 495 < 500 spent, the 57th 504.
    assert_eq!(downgraded_after, Some(56));
}
