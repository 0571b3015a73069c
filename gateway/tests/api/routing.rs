//! Routing and fallback against misbehaving upstreams: a chaos run through five deployments
//! (500s, a hang, 429 + Retry-After, a slow first token, one healthy), circuit breakers
//! opening and closing, the aggregated error when everything fails, client errors passed
//! through without retries, health checks steering traffic, and no fallback after a stream
//! has started.
//!
//! The upstreams are one scripted server; the path prefix picks the behaviour
//! (`/{mode}/v1/chat/completions`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use serde_json::{Value, json};

use super::{Gateway, chat_body, expect_error, sse_data};

#[derive(Clone, Default)]
struct Upstreams {
    hits: Arc<Mutex<HashMap<String, usize>>>,
    /// `flaky` answers like `healthy` once set.
    recovered: Arc<AtomicBool>,
}

impl Upstreams {
    fn hits(&self, mode: &str) -> usize {
        self.hits.lock().unwrap().get(mode).copied().unwrap_or(0)
    }
}

struct Chaos {
    addr: SocketAddr,
    upstreams: Upstreams,
}

async fn start_upstreams() -> Chaos {
    let upstreams = Upstreams::default();
    let app = Router::new()
        .route("/{mode}/v1/chat/completions", post(chat))
        .route("/{mode}/v1/models", get(models))
        .with_state(upstreams.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Chaos { addr, upstreams }
}

async fn models(Path(mode): Path<String>) -> Response {
    if mode == "sick" {
        return (StatusCode::SERVICE_UNAVAILABLE, "maintenance").into_response();
    }
    Json(json!({"object": "list", "data": []})).into_response()
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"message": message, "type": "server_error", "param": null, "code": null}})),
    )
        .into_response()
}

fn chunk(delta: Value, finish: Value) -> String {
    let c = json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
    format!("data: {c}\n\n")
}

fn usage_chunk() -> String {
    let c = json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}});
    format!("data: {c}\n\n")
}

fn sse(events: Vec<(Duration, String)>) -> Response {
    let stream = futures::stream::iter(events).then(|(delay, text)| async move {
        tokio::time::sleep(delay).await;
        Ok::<_, std::io::Error>(text)
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap()
}

fn healthy(stream: bool) -> Response {
    if stream {
        let z = Duration::ZERO;
        return sse(vec![
            (
                z,
                chunk(json!({"role": "assistant", "content": ""}), Value::Null),
            ),
            (z, chunk(json!({"content": "Hello"}), Value::Null)),
            (z, chunk(json!({"content": " world"}), Value::Null)),
            (z, chunk(json!({}), json!("stop"))),
            (z, usage_chunk()),
            (z, "data: [DONE]\n\n".into()),
        ]);
    }
    Json(json!({"id": "c1", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello world"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}}))
    .into_response()
}

async fn chat(
    State(up): State<Upstreams>,
    Path(mode): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    *up.hits.lock().unwrap().entry(mode.clone()).or_default() += 1;
    let stream = body["stream"] == true;
    match mode.as_str() {
        "healthy" | "healthy2" | "sick" => healthy(stream),
        "flaky" if up.recovered.load(Ordering::SeqCst) => healthy(stream),
        "flaky" | "always500" => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "database at 10.0.0.3 is down",
        ),
        "hang" => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            healthy(stream)
        }
        "ratelimited" => {
            let mut resp = error(StatusCode::TOO_MANY_REQUESTS, "slow down");
            resp.headers_mut()
                .insert("retry-after", "1".parse().unwrap());
            resp
        }
        "slowfirst" if stream => sse(vec![
            (Duration::from_secs(2), chunk(json!({"content": "late"}), Value::Null)),
            (Duration::ZERO, "data: [DONE]\n\n".into()),
        ]),
        "slowfirst" => {
            tokio::time::sleep(Duration::from_secs(2)).await;
            healthy(false)
        }
        "bad" => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": {"message": "messages[0].content is too long", "type": "invalid_request_error", "param": "messages", "code": null}})),
        )
            .into_response(),
        "midstream" => sse(vec![
            (Duration::ZERO, chunk(json!({"role": "assistant", "content": "partial"}), Value::Null)),
            (
                Duration::from_millis(20),
                "data: {\"error\":{\"message\":\"upstream crashed\",\"type\":\"server_error\"}}\n\n".into(),
            ),
        ]),
        _ => error(StatusCode::NOT_FOUND, "no such mode"),
    }
}

/// A config with one provider per behaviour and the given `[[models]]` tables.
fn config(addr: SocketAddr, models: &str) -> String {
    let mut toml = String::from(
        r#"
[server]
listen = "127.0.0.1:0"
health_check_interval_secs = 3600

[routing]
deadline_secs = 5

[routing.breaker]
consecutive_failures = 3
error_rate = 0.5
min_requests = 10
window_secs = 10
cooldown_secs = 0.5
"#,
    );
    for mode in [
        "healthy",
        "healthy2",
        "flaky",
        "always500",
        "hang",
        "ratelimited",
        "slowfirst",
        "bad",
        "midstream",
        "sick",
    ] {
        toml.push_str(&format!(
            "\n[providers.{mode}]\nkind = \"openai\"\nbase_url = \"http://{addr}/{mode}/v1\"\ntimeout_secs = 10\n"
        ));
    }
    toml.push_str(models);
    toml
}

const CHAOS: &str = r#"
[[models]]
name = "chaos"
[[models.groups]]
deployments = [
  { name = "flaky", provider = "flaky", model = "m" },
  { name = "hang", provider = "hang", model = "m", timeout_secs = 0.3 },
  { name = "ratelimited", provider = "ratelimited", model = "m" },
  { name = "slowfirst", provider = "slowfirst", model = "m", timeout_secs = 0.3, first_token_timeout_secs = 0.2 },
]
[[models.groups]]
deployments = [{ name = "healthy", provider = "healthy", model = "m" }]
"#;

fn metric(text: &str, name: &str, labels: &str) -> f64 {
    let prefix = format!("{name}{{{labels}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// One request through the gateway; checks it succeeded through `healthy` with the full text.
async fn one_request(gw: &Gateway, i: usize) {
    let stream = i.is_multiple_of(2);
    let mut body = chat_body("chaos", "hi");
    body["stream"] = json!(stream);
    let resp = gw.post("/v1/chat/completions", &body).await;
    assert_eq!(resp.status(), 200, "request {i}");
    assert_eq!(resp.headers()["x-aigw-deployment"], "healthy");
    let attempts: usize = resp.headers()["x-aigw-attempts"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=5).contains(&attempts));
    if stream {
        let data = sse_data(resp).await;
        assert_eq!(data.last().unwrap(), "[DONE]", "request {i}: {data:?}");
        let text: String = data[..data.len() - 1]
            .iter()
            .map(|d| {
                let v: Value = serde_json::from_str(d).unwrap();
                assert!(v.get("error").is_none(), "request {i}: {d}");
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        assert_eq!(text, "Hello world");
    } else {
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "Hello world");
        assert_eq!(v["model"], "chaos");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_run_succeeds_through_the_healthy_path_and_breakers_recover() {
    let up = start_upstreams().await;
    let gw = Gateway::start_toml(&config(up.addr, CHAOS)).await;
    let gw = &gw;

    let started = Instant::now();
    futures::stream::iter(0..1000)
        .for_each_concurrent(32, |i| one_request(gw, i))
        .await;
    let took = started.elapsed();

    // Every request was served once by the healthy upstream, and counted once.
    assert_eq!(up.upstreams.hits("healthy"), 1000);
    let metrics = gw.get("/metrics").await.text().await.unwrap();
    let tokens = |dir: &str| {
        metric(
            &metrics,
            "aigw_tokens_total",
            &format!("direction=\"{dir}\",model=\"chaos\""),
        )
    };
    assert_eq!(tokens("in"), 7000.0, "{metrics}");
    assert_eq!(tokens("out"), 2000.0, "{metrics}");
    assert_eq!(
        metric(
            &metrics,
            "aigw_deployment_attempts_total",
            "deployment=\"healthy\",outcome=\"success\""
        ),
        1000.0
    );
    // The failing deployments were tried, then skipped while their circuits were open.
    for name in ["flaky", "hang", "ratelimited", "slowfirst"] {
        let labels = |reason: &str| format!("deployment=\"{name}\",reason=\"{reason}\"");
        let skipped = metric(
            &metrics,
            "aigw_deployment_failures_total",
            &labels("circuit_open"),
        );
        assert!(skipped > 0.0, "{name} never skipped: {metrics}");
        let failed = metric(
            &metrics,
            "aigw_deployment_attempts_total",
            &format!("deployment=\"{name}\",outcome=\"failure\""),
        );
        assert!(
            failed < 500.0,
            "{name} failed {failed} times: the breaker should spare most calls"
        );
    }
    assert!(
        metric(
            &metrics,
            "aigw_deployment_failures_total",
            "deployment=\"hang\",reason=\"timeout\""
        ) > 0.0
    );
    assert!(
        metric(
            &metrics,
            "aigw_deployment_failures_total",
            "deployment=\"ratelimited\",reason=\"status_429\""
        ) > 0.0
    );
    // Hangs and slow first tokens cost their timeouts, not 30 s or 2 s each.
    assert!(took < Duration::from_secs(60), "{took:?}");

    // The flaky upstream recovers: after its cooldown a probe goes through, succeeds, and
    // closes the circuit; it serves traffic again.
    up.upstreams.recovered.store(true, Ordering::SeqCst);
    let mut served_by_flaky = false;
    for _ in 0..100 {
        let resp = gw
            .post("/v1/chat/completions", &chat_body("chaos", "hi"))
            .await;
        assert_eq!(resp.status(), 200);
        if resp.headers()["x-aigw-deployment"] == "flaky" {
            served_by_flaky = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served_by_flaky, "the recovered deployment never served");
    let metrics = gw.get("/metrics").await.text().await.unwrap();
    assert_eq!(
        metric(
            &metrics,
            "aigw_deployment_circuit_state",
            "deployment=\"flaky\""
        ),
        0.0,
        "closed again"
    );
}

#[tokio::test]
async fn when_everything_fails_the_error_lists_the_attempts_within_the_deadline() {
    let up = start_upstreams().await;
    let models = r#"
[[models]]
name = "doomed"
deadline_secs = 1.0
[[models.groups]]
deployments = [{ name = "doomed-500", provider = "always500", model = "m" }]
[[models.groups]]
deployments = [{ name = "doomed-hang", provider = "hang", model = "m" }]
"#;
    let gw = Gateway::start_toml(&config(up.addr, models)).await;
    let gw = &gw;
    let deadline = Duration::from_secs(1);
    let results: Vec<(u16, Value, Duration)> = futures::stream::iter(0..12u32)
        .map(|i| async move {
            let mut body = chat_body("doomed", "hi");
            body["stream"] = json!(i.is_multiple_of(2));
            let t0 = Instant::now();
            let resp = gw.post("/v1/chat/completions", &body).await;
            let status = resp.status().as_u16();
            let err = expect_error(resp, status).await;
            (status, err, t0.elapsed())
        })
        .buffer_unordered(12)
        .collect()
        .await;
    for (status, err, took) in results {
        assert!(
            took < deadline + Duration::from_millis(500),
            "waited {took:?} past the 1 s deadline"
        );
        assert!(matches!(status, 502..=504), "{status} {err}");
        assert_eq!(err["code"], "all_attempts_failed", "{err}");
        let message = err["message"].as_str().unwrap();
        assert!(message.contains("doomed-500"), "{message}");
        assert!(message.contains("doomed-hang"), "{message}");
        assert!(
            !message.contains("10.0.0.3"),
            "upstream body leaked: {message}"
        );
    }
}

#[tokio::test]
async fn client_errors_pass_through_without_fallback() {
    let up = start_upstreams().await;
    let models = r#"
[[models]]
name = "strict"
[[models.groups]]
deployments = [{ name = "bad", provider = "bad", model = "m" }]
[[models.groups]]
deployments = [{ name = "healthy", provider = "healthy", model = "m" }]
"#;
    let gw = Gateway::start_toml(&config(up.addr, models)).await;
    let resp = gw
        .post("/v1/chat/completions", &chat_body("strict", "hi"))
        .await;
    assert_eq!(resp.headers()["x-aigw-attempts"], "1");
    assert_eq!(resp.headers()["x-aigw-deployment"], "bad");
    let err = expect_error(resp, 400).await;
    assert_eq!(err["message"], "messages[0].content is too long");
    assert_eq!(err["param"], "messages");
    assert_eq!(up.upstreams.hits("healthy"), 0, "no fallback on a 400");
}

#[tokio::test]
async fn a_stream_that_breaks_after_its_first_chunk_does_not_fall_back() {
    let up = start_upstreams().await;
    let models = r#"
[[models]]
name = "fragile"
[[models.groups]]
deployments = [{ name = "midstream", provider = "midstream", model = "m" }]
[[models.groups]]
deployments = [{ name = "healthy", provider = "healthy", model = "m" }]
"#;
    let gw = Gateway::start_toml(&config(up.addr, models)).await;
    let mut body = chat_body("fragile", "hi");
    body["stream"] = json!(true);
    let resp = gw.post("/v1/chat/completions", &body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-aigw-deployment"], "midstream");
    let data = sse_data(resp).await;
    let first: Value = serde_json::from_str(&data[0]).unwrap();
    assert_eq!(first["choices"][0]["delta"]["content"], "partial");
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert!(last["error"]["message"].is_string(), "{data:?}");
    assert_eq!(up.upstreams.hits("healthy"), 0);
    // The partial output is still accounted (estimated: one token per chunk).
    let metrics = gw.get("/metrics").await.text().await.unwrap();
    assert_eq!(
        metric(
            &metrics,
            "aigw_tokens_total",
            "direction=\"out\",model=\"fragile\""
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "aigw_deployment_failures_total",
            "deployment=\"midstream\",reason=\"mid_stream\""
        ),
        1.0
    );
}

#[tokio::test]
async fn health_checks_steer_traffic_and_readiness() {
    let up = start_upstreams().await;
    let models = r#"
[[models]]
name = "checked"
[[models.groups]]
deployments = [{ name = "sick", provider = "sick", model = "m" }]
[[models.groups]]
deployments = [{ name = "healthy2", provider = "healthy2", model = "m", health_path = "/models" }]

[[models]]
name = "only-sick"
provider = "sick"
"#;
    let gw = Gateway::start_toml(&config(up.addr, models)).await;
    let mut ready = Value::Null;
    for _ in 0..50 {
        let resp = gw.get("/ready").await;
        ready = resp.json().await.unwrap();
        let sick = &ready["models"]["checked"]["deployments"]["sick"];
        if sick != "unknown" && ready["models"]["checked"]["deployments"]["healthy2"] == "up" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ready["status"], "not_ready", "{ready}");
    assert_eq!(ready["models"]["checked"]["ready"], true, "{ready}");
    assert_eq!(ready["models"]["only-sick"]["ready"], false, "{ready}");
    assert!(
        ready["models"]["checked"]["deployments"]["sick"]
            .as_str()
            .unwrap()
            .starts_with("down"),
        "{ready}"
    );
    // The group order says `sick` first, but its failed probe makes it a last resort.
    let resp = gw
        .post("/v1/chat/completions", &chat_body("checked", "hi"))
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-aigw-deployment"], "healthy2");
    assert_eq!(resp.headers()["x-aigw-attempts"], "1");
    assert_eq!(up.upstreams.hits("sick"), 0);
    // As the last resort it still serves when it is the only deployment.
    let resp = gw
        .post("/v1/chat/completions", &chat_body("only-sick", "hi"))
        .await;
    assert_eq!(resp.status(), 200);
}
