//! The response cache (in memory): deterministic requests answered once, replays across
//! stream and plain requests, Cache-Control, coalescing, free hits, per-input embeddings.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::{Gateway, sse_data};

/// An upstream that numbers its answers, so a cached answer is told from a fresh one.
#[derive(Clone, Default)]
struct Upstream {
    calls: Arc<AtomicU64>,
    embedded: Arc<Mutex<Vec<Value>>>,
}

impl Upstream {
    fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }
}

async fn chat(State(up): State<Upstream>, Json(body): Json<Value>) -> Response {
    let n = up.calls.fetch_add(1, Ordering::SeqCst) + 1;
    let prompt = body["messages"][0]["content"]
        .as_str()
        .unwrap_or("")
        .to_string();
    if prompt.contains("slow") {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let finish = if prompt.contains("cut") {
        "length"
    } else {
        "stop"
    };
    let text = format!("answer {n}");
    let usage = json!({"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12});
    if body["stream"] == json!(true) {
        let base = json!({"id": format!("s{n}"), "object": "chat.completion.chunk", "created": 1, "model": body["model"]});
        let mut chunks = Vec::new();
        for (delta, fin) in [
            (
                json!({"role": "assistant", "content": "answer "}),
                Value::Null,
            ),
            (json!({"content": n.to_string()}), Value::Null),
            (json!({}), json!(finish)),
        ] {
            let mut c = base.clone();
            c["choices"] = json!([{"index": 0, "delta": delta, "finish_reason": fin}]);
            chunks.push(c);
        }
        let mut last = base.clone();
        last["choices"] = json!([]);
        last["usage"] = usage;
        chunks.push(last);
        let mut body = String::new();
        for c in chunks {
            body.push_str(&format!("data: {c}\n\n"));
        }
        body.push_str("data: [DONE]\n\n");
        return ([("content-type", "text/event-stream")], body).into_response();
    }
    Json(json!({"id": format!("c{n}"), "object": "chat.completion", "created": 1, "model": body["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
        "usage": usage}))
    .into_response()
}

async fn embeddings(State(up): State<Upstream>, Json(body): Json<Value>) -> Json<Value> {
    up.calls.fetch_add(1, Ordering::SeqCst);
    let inputs: Vec<String> = match &body["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a.iter().map(|v| v.as_str().unwrap().to_string()).collect(),
        other => panic!("unexpected input {other}"),
    };
    up.embedded
        .lock()
        .unwrap()
        .extend(inputs.iter().map(|s| json!(s)));
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(
            |(i, s)| json!({"object": "embedding", "index": i, "embedding": [s.len() as f32, 0.5]}),
        )
        .collect();
    let tokens = inputs.len() * 3;
    Json(
        json!({"object": "list", "data": data, "model": body["model"],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}),
    )
}

async fn start() -> (SocketAddr, Upstream) {
    let up = Upstream::default();
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/embeddings", post(embeddings))
        .with_state(up.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, up)
}

async fn gateway(addr: SocketAddr) -> Gateway {
    gateway_with(addr, "").await
}

async fn gateway_with(addr: SocketAddr, cache: &str) -> Gateway {
    Gateway::start_toml(&format!(
        r#"
[server]
listen = "127.0.0.1:0"

[cache]
{cache}

[admin]
key_env = "TEST_ADMIN_KEY"

[budgets]
default_policy = "table"

[budgets.policies.table]
tokens = 1000

[providers.up]
kind = "openai"
base_url = "http://{addr}/v1"

[[models]]
name = "narrator"
provider = "up"

[[models]]
name = "embed"
provider = "up"
"#
    ))
    .await
}

fn body(text: &str) -> Value {
    json!({"model": "narrator", "temperature": 0, "max_tokens": 20,
        "messages": [{"role": "user", "content": text}]})
}

async fn send(gw: &Gateway, body: &Value, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut rb = gw
        .client
        .post(format!("{}/v1/chat/completions", gw.url))
        .header("x-session-id", "table-1")
        .json(body);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let resp = rb.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp
}

fn x_cache(resp: &reqwest::Response) -> String {
    resp.headers()["x-cache"].to_str().unwrap().to_string()
}

async fn content(resp: reqwest::Response) -> String {
    let v: Value = resp.json().await.unwrap();
    v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The streamed text and whether a usage chunk came.
async fn streamed(resp: reqwest::Response) -> (String, bool) {
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let data = sse_data(resp).await;
    assert_eq!(data.last().unwrap(), "[DONE]");
    let mut text = String::new();
    let mut usage = false;
    for d in &data[..data.len() - 1] {
        let chunk: Value = serde_json::from_str(d).unwrap();
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["model"], "narrator");
        usage |= chunk["usage"].is_object();
        if let Some(t) = chunk["choices"][0]["delta"]["content"].as_str() {
            text.push_str(t);
        }
    }
    (text, usage)
}

fn remaining(resp: &reqwest::Response) -> String {
    resp.headers()["x-aigw-budget-remaining"]
        .to_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn a_deterministic_request_is_answered_once_and_hits_are_free() {
    let (addr, up) = start().await;
    let gw = gateway(addr).await;
    let first = send(&gw, &body("hello"), &[]).await;
    assert_eq!(x_cache(&first), "miss");
    let after_first = remaining(&first);
    assert_eq!(content(first).await, "answer 1");

    // Field order, `user` and `stream_options` do not change the key.
    let same = json!({"max_tokens": 20, "messages": [{"content": "hello", "role": "user"}],
        "temperature": 0.0, "model": "narrator", "user": "someone"});
    let hit = send(&gw, &same, &[]).await;
    assert_eq!(x_cache(&hit), "hit");
    assert_eq!(
        remaining(&hit),
        after_first,
        "a hit spends nothing from the budget"
    );
    assert_eq!(content(hit).await, "answer 1");
    assert_eq!(up.calls(), 1);

    // Another prompt or another parameter is another entry.
    let mut other = body("hello");
    other["max_tokens"] = json!(21);
    assert_eq!(x_cache(&send(&gw, &other, &[]).await), "miss");
    assert_eq!(up.calls(), 2);
}

#[tokio::test]
async fn only_deterministic_or_forced_requests_are_cached() {
    let (addr, up) = start().await;
    let gw = gateway(addr).await;
    let mut warm = body("tell a story");
    warm["temperature"] = json!(0.9);
    for _ in 0..2 {
        assert_eq!(x_cache(&send(&gw, &warm, &[]).await), "bypass");
    }
    assert_eq!(up.calls(), 2);

    let force = [("x-aigw-cache", "force")];
    assert_eq!(x_cache(&send(&gw, &warm, &force).await), "miss");
    let hit = send(&gw, &warm, &force).await;
    assert_eq!(x_cache(&hit), "hit");
    assert_eq!(content(hit).await, "answer 3");

    // A seed makes a request deterministic.
    let mut seeded = warm.clone();
    seeded["seed"] = json!(42);
    assert_eq!(x_cache(&send(&gw, &seeded, &[]).await), "miss");
    assert_eq!(x_cache(&send(&gw, &seeded, &[]).await), "hit");
    assert_eq!(up.calls(), 4);
}

#[tokio::test]
async fn cache_control_skips_the_read_or_the_write() {
    let (addr, up) = start().await;
    let gw = gateway(addr).await;
    // no-store: answered but not kept.
    let resp = send(&gw, &body("a"), &[("cache-control", "no-store")]).await;
    assert_eq!(x_cache(&resp), "miss");
    assert_eq!(x_cache(&send(&gw, &body("a"), &[]).await), "miss");
    assert_eq!(up.calls(), 2);
    // no-cache: the stored entry is not read, the fresh answer replaces it.
    let fresh = send(&gw, &body("a"), &[("cache-control", "no-cache")]).await;
    assert_eq!(x_cache(&fresh), "bypass");
    assert_eq!(content(fresh).await, "answer 3");
    let hit = send(&gw, &body("a"), &[]).await;
    assert_eq!(content(hit).await, "answer 3");
    // x-aigw-cache: off leaves the cache alone.
    assert_eq!(
        x_cache(&send(&gw, &body("a"), &[("x-aigw-cache", "off")]).await),
        "bypass"
    );
    assert_eq!(up.calls(), 4);
}

#[tokio::test]
async fn streams_and_plain_requests_share_entries() {
    let (addr, up) = start().await;
    let gw = gateway(addr).await;
    // A streamed answer is stored, then served to a plain request...
    let mut stream = body("story");
    stream["stream"] = json!(true);
    let resp = send(&gw, &stream, &[]).await;
    assert_eq!(x_cache(&resp), "miss");
    assert_eq!(streamed(resp).await, ("answer 1".into(), false));
    let plain = send(&gw, &body("story"), &[]).await;
    assert_eq!(x_cache(&plain), "hit");
    let v: Value = plain.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], "answer 1");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["total_tokens"], 12);

    // ...and a plain answer is replayed as SSE, with the usage chunk when asked for.
    let resp = send(&gw, &body("legend"), &[]).await;
    assert_eq!(content(resp).await, "answer 2");
    let mut again = body("legend");
    again["stream"] = json!(true);
    again["stream_options"] = json!({"include_usage": true});
    let resp = send(&gw, &again, &[]).await;
    assert_eq!(x_cache(&resp), "hit");
    assert_eq!(streamed(resp).await, ("answer 2".into(), true));
    assert_eq!(up.calls(), 2);
}

#[tokio::test]
async fn truncated_answers_are_not_stored() {
    let (addr, up) = start().await;
    let gw = gateway(addr).await;
    let mut stream = body("cut short");
    stream["stream"] = json!(true);
    for b in [body("cut short"), stream] {
        for _ in 0..2 {
            let resp = send(&gw, &b, &[]).await;
            assert_eq!(x_cache(&resp), "miss");
            let _ = resp.bytes().await;
        }
    }
    assert_eq!(up.calls(), 4);
}

#[tokio::test]
async fn identical_requests_in_flight_are_coalesced() {
    let (addr, up) = start().await;
    let gw = gateway(addr).await;
    let b = body("slow question");
    let answers = futures::future::join_all((0..50).map(|_| async {
        let resp = send(&gw, &b, &[]).await;
        (x_cache(&resp), content(resp).await)
    }))
    .await;
    assert_eq!(up.calls(), 1, "{answers:?}");
    assert!(answers.iter().all(|(_, text)| text == "answer 1"));
    assert_eq!(answers.iter().filter(|(s, _)| s == "hit").count(), 49);

    // Streams too: the followers wait for the leader's stream and replay it.
    let mut stream = body("slow saga");
    stream["stream"] = json!(true);
    let texts = futures::future::join_all((0..20).map(|_| async {
        let resp = send(&gw, &stream, &[]).await;
        streamed(resp).await.0
    }))
    .await;
    assert_eq!(up.calls(), 2);
    assert!(texts.iter().all(|t| t == "answer 2"), "{texts:?}");
}

#[tokio::test]
async fn entries_expire_after_their_ttl() {
    let (addr, up) = start().await;
    let gw = gateway_with(addr, "ttl_secs = 1").await;
    assert_eq!(x_cache(&send(&gw, &body("brief"), &[]).await), "miss");
    assert_eq!(x_cache(&send(&gw, &body("brief"), &[]).await), "hit");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let resp = send(&gw, &body("brief"), &[]).await;
    assert_eq!(x_cache(&resp), "miss");
    assert_eq!(content(resp).await, "answer 2");
    assert_eq!(up.calls(), 2);
}

#[tokio::test]
async fn hits_can_be_charged() {
    let (addr, up) = start().await;
    let gw = gateway_with(addr, "charge_hits = true").await;
    let first = send(&gw, &body("toll"), &[]).await;
    assert_eq!(remaining(&first), "tokens=988");
    let hit = send(&gw, &body("toll"), &[]).await;
    assert_eq!(x_cache(&hit), "hit");
    assert_eq!(remaining(&hit), "tokens=976", "the stored usage is charged");
    assert_eq!(up.calls(), 1);
}

#[tokio::test]
async fn tenants_do_not_share_entries() {
    let (addr, up) = start().await;
    let gw = Gateway::start_toml(&format!(
        r#"
[server]
listen = "127.0.0.1:0"

[[auth.keys]]
name = "a"
key_env = "TEST_CLIENT_KEY"
tenant = "guild-a"

[[auth.keys]]
name = "b"
key_env = "TEST_ADMIN_KEY"
tenant = "guild-b"

[providers.up]
kind = "openai"
base_url = "http://{addr}/v1"

[[models]]
name = "narrator"
provider = "up"
"#
    ))
    .await;
    for (key, expect) in [
        (super::CLIENT_KEY, "miss"),
        (super::CLIENT_KEY, "hit"),
        ("admin-secret", "miss"),
    ] {
        let resp = gw
            .client
            .post(format!("{}/v1/chat/completions", gw.url))
            .bearer_auth(key)
            .json(&body("secret plan"))
            .send()
            .await
            .unwrap();
        assert_eq!(x_cache(&resp), expect);
    }
    assert_eq!(up.calls(), 2);
}

#[tokio::test]
async fn embeddings_are_cached_per_input() {
    let (addr, up) = start().await;
    let gw = gateway(addr).await;
    let embed = |input: Value, format: &'static str| {
        let client = gw.client.clone();
        let url = format!("{}/v1/embeddings", gw.url);
        async move {
            client
                .post(url)
                .header("x-session-id", "table-1")
                .json(&json!({"model": "embed", "input": input, "encoding_format": format}))
                .send()
                .await
                .unwrap()
        }
    };
    let first = embed(json!(["goblin", "dragon"]), "float").await;
    assert_eq!(x_cache(&first), "miss");
    let v: Value = first.json().await.unwrap();
    assert_eq!(v["usage"]["prompt_tokens"], 6);

    let second = embed(json!(["dragon", "wizard", "goblin"]), "float").await;
    assert_eq!(x_cache(&second), "miss");
    let v: Value = second.json().await.unwrap();
    assert_eq!(v["model"], "embed");
    let vectors: Vec<(u64, Value)> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["index"].as_u64().unwrap(), d["embedding"].clone()))
        .collect();
    assert_eq!(
        vectors,
        vec![
            (0, json!([6.0, 0.5])),
            (1, json!([6.0, 0.5])),
            (2, json!([6.0, 0.5]))
        ]
    );
    assert_eq!(v["usage"]["prompt_tokens"], 3, "only the new input is paid");
    assert_eq!(
        *up.embedded.lock().unwrap(),
        vec![json!("goblin"), json!("dragon"), json!("wizard")],
        "the upstream saw each input once"
    );

    // All known: no upstream call; base64 is made from the stored floats.
    let third = embed(json!("wizard"), "base64").await;
    assert_eq!(x_cache(&third), "hit");
    let v: Value = third.json().await.unwrap();
    let expected = aigw_models::openai::encode_f32_base64(&[6.0, 0.5]);
    assert_eq!(v["data"][0]["embedding"], json!(expected));
    assert_eq!(v["usage"]["prompt_tokens"], 0);
    assert_eq!(up.calls(), 2);
}
