//! Anthropic through the real server, configured from TOML: a mock Messages API replaying
//! the wire fixtures of `tests/fixtures/anthropic/` (streams sent in 7-byte pieces) beside
//! an OpenAI-compatible mock, both on one scripted server. What the Anthropic mock answers is
//! chosen by the upstream model: `overloaded` → `529 overloaded_error` with `retry-after: 9`,
//! `invalid` → `400 invalid_request_error`, anything else → the tool-use fixture when the
//! request has tools, else the text fixture.
//!
//! Checked: answers and streamed tool calls come back OpenAI-shaped under the alias, a 529
//! falls back to an OpenAI deployment (and its `retry-after` opens the circuit), Anthropic's
//! client errors pass through untouched and unretried, and the openai Python SDK reads it all.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use super::{CLIENT_KEY, Gateway, UPSTREAM_KEY, chat_body, expect_error, sse_data};

const MESSAGE_TEXT: &str = include_str!("../fixtures/anthropic/message_text.json");
const STREAM_TEXT: &str = include_str!("../fixtures/anthropic/stream_text.sse");
const MESSAGE_TOOL_USE: &str = include_str!("../fixtures/anthropic/message_tool_use.json");
const STREAM_TOOL_USE: &str = include_str!("../fixtures/anthropic/stream_tool_use.sse");
const ERROR_OVERLOADED: &str = include_str!("../fixtures/anthropic/error_overloaded.json");
const ERROR_INVALID_REQUEST: &str =
    include_str!("../fixtures/anthropic/error_invalid_request.json");
const MODELS: &str = include_str!("../fixtures/anthropic/models.json");

/// The message of `error_invalid_request.json`.
const INVALID_MESSAGE: &str = "max_tokens: 300000 > 64000, which is the maximum allowed \
                               number of output tokens for claude-sonnet-4-5-20250929";

/// One call the mock received: which API (`anthropic` or `openai`), headers, body.
type Call = (&'static str, HeaderMap, Value);

#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<Call>>>);

impl Seen {
    /// The bodies `api` received, in order.
    fn bodies(&self, api: &str) -> Vec<Value> {
        let calls = self.0.lock().unwrap();
        calls
            .iter()
            .filter(|(a, _, _)| *a == api)
            .map(|(_, _, b)| b.clone())
            .collect()
    }

    /// The headers of the last call to `api`.
    fn last_headers(&self, api: &str) -> HeaderMap {
        let calls = self.0.lock().unwrap();
        let (_, headers, _) = calls.iter().rev().find(|(a, _, _)| *a == api).unwrap();
        headers.clone()
    }
}

async fn start_upstreams() -> (SocketAddr, Seen) {
    let seen = Seen::default();
    let app = Router::new()
        .route("/v1/messages", post(messages))
        .route("/v1/models", get(anthropic_models))
        .route("/openai/v1/chat/completions", post(openai_chat))
        .route(
            "/openai/v1/models",
            get(|| async { Json(json!({"object": "list", "data": []})) }),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen)
}

fn json_reply(status: u16, body: &'static str) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        [("content-type", "application/json")],
        body,
    )
        .into_response()
}

/// An SSE body sent in 7-byte pieces, so events and JSON arrive split at arbitrary points.
fn sse_reply(text: &str) -> Response {
    let pieces: Vec<Result<Bytes, Infallible>> = text
        .as_bytes()
        .chunks(7)
        .map(|p| Ok(Bytes::copy_from_slice(p)))
        .collect();
    (
        [("content-type", "text/event-stream")],
        Body::from_stream(futures::stream::iter(pieces)),
    )
        .into_response()
}

fn unauthorized() -> Response {
    json_reply(
        401,
        r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#,
    )
}

fn has_key(headers: &HeaderMap) -> bool {
    headers.get("x-api-key").and_then(|v| v.to_str().ok()) == Some(UPSTREAM_KEY)
}

async fn messages(
    State(seen): State<Seen>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    seen.0
        .lock()
        .unwrap()
        .push(("anthropic", headers.clone(), body.clone()));
    if !has_key(&headers) {
        return unauthorized();
    }
    let stream = body["stream"] == true;
    let tools = body.get("tools").is_some();
    match (body["model"].as_str().unwrap_or_default(), stream, tools) {
        ("overloaded", _, _) => {
            let mut resp = json_reply(529, ERROR_OVERLOADED);
            resp.headers_mut()
                .insert("retry-after", HeaderValue::from_static("9"));
            resp
        }
        ("invalid", _, _) => json_reply(400, ERROR_INVALID_REQUEST),
        (_, false, false) => json_reply(200, MESSAGE_TEXT),
        (_, false, true) => json_reply(200, MESSAGE_TOOL_USE),
        (_, true, false) => sse_reply(STREAM_TEXT),
        (_, true, true) => sse_reply(STREAM_TOOL_USE),
    }
}

async fn anthropic_models(headers: HeaderMap) -> Response {
    if !has_key(&headers) {
        return unauthorized();
    }
    json_reply(200, MODELS)
}

/// A minimal OpenAI-compatible chat endpoint answering "Backup here." (streamed or not).
async fn openai_chat(
    State(seen): State<Seen>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    seen.0
        .lock()
        .unwrap()
        .push(("openai", headers, body.clone()));
    let model = body["model"].clone();
    let usage = json!({"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12});
    if body["stream"] != true {
        return Json(json!({
            "id": "chatcmpl-backup", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "Backup here."}}],
            "usage": usage,
        }))
        .into_response();
    }
    let chunk = |choices: Value, usage: Value| {
        let c = json!({"id": "chatcmpl-backup", "object": "chat.completion.chunk", "created": 1,
            "model": model, "choices": choices, "usage": usage});
        format!("data: {c}\n\n")
    };
    let text = [
        chunk(
            json!([{"index": 0, "delta": {"role": "assistant", "content": "Backup"}, "finish_reason": null}]),
            Value::Null,
        ),
        chunk(
            json!([{"index": 0, "delta": {"content": " here."}, "finish_reason": null}]),
            Value::Null,
        ),
        chunk(
            json!([{"index": 0, "delta": {}, "finish_reason": "stop"}]),
            Value::Null,
        ),
        chunk(json!([]), usage),
        "data: [DONE]\n\n".to_string(),
    ]
    .concat();
    sse_reply(&text)
}

/// `gm`: Anthropic alone. `gm-fallback`: Anthropic answering 529, then an OpenAI deployment.
/// `gm-strict`: Anthropic answering 400, then the same OpenAI deployment.
fn config(addr: SocketAddr, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
health_check_interval_secs = 3600
{extra}

[providers.claude]
kind = "anthropic"
base_url = "http://{addr}"
api_key_env = "TEST_UPSTREAM_KEY"
headers = {{ "anthropic-beta" = "token-efficient-tools-2025-02-19" }}

[providers.backup]
kind = "openai"
base_url = "http://{addr}/openai/v1"

[[models]]
name = "gm"
provider = "claude"
upstream_model = "claude-sonnet-4-5"

[[models]]
name = "gm-fallback"
[[models.groups]]
deployments = [{{ name = "claude-primary", provider = "claude", model = "overloaded" }}]
[[models.groups]]
deployments = [{{ name = "gpt-backup", provider = "backup", model = "gpt-4o-mini" }}]

[[models]]
name = "gm-strict"
[[models.groups]]
deployments = [{{ name = "claude-strict", provider = "claude", model = "invalid" }}]
[[models.groups]]
deployments = [{{ name = "gpt-strict", provider = "backup", model = "gpt-4o-mini" }}]
"#
    )
}

async fn gateway() -> (Gateway, Seen) {
    let (addr, seen) = start_upstreams().await;
    (Gateway::start_toml(&config(addr, "")).await, seen)
}

fn tool_request(stream_options: Option<Value>) -> Value {
    let mut body = json!({
        "model": "gm",
        "stream": true,
        "messages": [
            {"role": "system", "content": "You are the game master."},
            {"role": "user", "content": "A goblin appears. Roll initiative for Arwen and it."},
        ],
        "tools": [{"type": "function", "function": {
            "name": "roll_dice",
            "description": "Roll dice for a character.",
            "parameters": {"type": "object", "properties": {
                "sides": {"type": "integer"}, "who": {"type": "string"}}}
        }}],
    });
    if let Some(options) = stream_options {
        body["stream_options"] = options;
    }
    body
}

/// The JSON chunks of an SSE answer, after checking it ends with `[DONE]`.
async fn sse_chunks(resp: reqwest::Response) -> Vec<Value> {
    let data = sse_data(resp).await;
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

fn attempts(resp: &reqwest::Response) -> &str {
    resp.headers()["x-aigw-attempts"].to_str().unwrap()
}

fn deployment(resp: &reqwest::Response) -> &str {
    resp.headers()["x-aigw-deployment"].to_str().unwrap()
}

#[tokio::test]
async fn plain_chat_comes_back_openai_shaped_under_the_alias() {
    let (gw, seen) = gateway().await;
    let mut body = chat_body("gm", "Open the tavern door.");
    body["messages"].as_array_mut().unwrap().insert(
        0,
        json!({"role": "system", "content": "You are the game master."}),
    );
    body["max_tokens"] = json!(300);
    let resp = gw.post("/v1/chat/completions", &body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(deployment(&resp), "gm/claude/claude-sonnet-4-5");
    assert_eq!(attempts(&resp), "1");
    let request_id = resp.headers()["x-request-id"].clone();
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "gm");
    assert_eq!(v["id"], "msg_01XFDUDYJgAACzvnptvVoYEL");
    assert_eq!(
        v["choices"],
        json!([{"index": 0, "finish_reason": "stop", "logprobs": null, "message": {
            "role": "assistant",
            "content": "The tavern door creaks open, and the smell of woodsmoke rolls out into the rain."
        }}])
    );
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 31, "completion_tokens": 22, "total_tokens": 53})
    );

    // What Anthropic received: its own request shape, key and headers.
    let bodies = seen.bodies("anthropic");
    assert_eq!(bodies.len(), 1);
    assert_eq!(
        bodies[0],
        json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 300,
            "system": "You are the game master.",
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "Open the tavern door."}
            ]}],
        })
    );
    let headers = seen.last_headers("anthropic");
    assert_eq!(headers["x-api-key"], UPSTREAM_KEY);
    assert_eq!(headers["anthropic-version"], "2023-06-01");
    assert_eq!(
        headers["anthropic-beta"],
        "token-efficient-tools-2025-02-19"
    );
    assert_eq!(headers["x-request-id"], request_id);
    assert!(headers.get("authorization").is_none());
}

#[tokio::test]
async fn streamed_tool_calls_are_keyed_by_index_and_end_with_usage() {
    let (gw, seen) = gateway().await;
    let body = tool_request(Some(json!({"include_usage": true})));
    let resp = gw.post("/v1/chat/completions", &body).await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    assert_eq!(deployment(&resp), "gm/claude/claude-sonnet-4-5");
    assert_eq!(attempts(&resp), "1");
    let chunks = sse_chunks(resp).await;
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk", "{c}");
        assert_eq!(c["model"], "gm", "{c}");
        assert_eq!(c["id"], "msg_014p7gG3wDgGV9EUtLvnow3U", "{c}");
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "Rolling initiative for both of you.");

    // Tool-call fragments, keyed by index; id, type and name only on each call's first.
    let fragments: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array())
        .flatten()
        .collect();
    let mut calls: Vec<(String, String, String)> = Vec::new();
    for f in &fragments {
        let k = usize::try_from(f["index"].as_u64().unwrap()).unwrap();
        let arguments = f["function"]["arguments"].as_str().unwrap_or_default();
        if k == calls.len() {
            assert_eq!(f["type"], "function", "{f}");
            let id = f["id"].as_str().unwrap().to_string();
            let name = f["function"]["name"].as_str().unwrap().to_string();
            calls.push((id, name, arguments.to_string()));
        } else {
            assert!(
                f.get("id").is_none() && f.get("type").is_none(),
                "only the first fragment names the call: {f}"
            );
            assert!(f["function"].get("name").is_none(), "{f}");
            calls[k].2.push_str(arguments);
        }
    }
    assert_eq!(calls.len(), 2, "{fragments:?}");
    let expected = [
        (
            "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
            json!({"sides": 20, "who": "Arwen"}),
        ),
        (
            "toolu_01Gq4ZbQm8Hn3V5rXy2WcP7e",
            json!({"sides": 20, "who": "goblin"}),
        ),
    ];
    for ((id, name, arguments), (want_id, want_args)) in calls.iter().zip(expected) {
        assert_eq!((id.as_str(), name.as_str()), (want_id, "roll_dice"));
        let args: Value = serde_json::from_str(arguments).unwrap();
        assert_eq!(args, want_args);
    }

    let finishes: Vec<&Value> = chunks
        .iter()
        .map(|c| &c["choices"][0]["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finishes, [&json!("tool_calls")]);
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]), "{last}");
    assert_eq!(
        last["usage"],
        json!({"prompt_tokens": 472, "completion_tokens": 89, "total_tokens": 561})
    );
    assert!(
        chunks[..chunks.len() - 1]
            .iter()
            .all(|c| c["usage"].is_null())
    );

    let sent = &seen.bodies("anthropic")[0];
    assert_eq!(sent["stream"], true);
    assert!(sent.get("stream_options").is_none(), "{sent}");
    assert_eq!(
        sent["tools"][0]["input_schema"]["properties"]["who"],
        json!({"type": "string"})
    );

    // Without `include_usage` there is no usage chunk.
    let resp = gw.post("/v1/chat/completions", &tool_request(None)).await;
    let chunks = sse_chunks(resp).await;
    assert!(
        chunks
            .iter()
            .all(|c| c["usage"].is_null() && !c["choices"].as_array().unwrap().is_empty()),
        "{chunks:?}"
    );
}

#[tokio::test]
async fn overloaded_anthropic_falls_back_to_an_openai_deployment() {
    let (gw, seen) = gateway().await;
    let mut body = chat_body("gm-fallback", "Describe the dragon.");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let resp = gw.post("/v1/chat/completions", &body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(deployment(&resp), "gpt-backup");
    assert_eq!(attempts(&resp), "2");
    let chunks = sse_chunks(resp).await;
    assert!(
        chunks.iter().all(|c| c["model"] == "gm-fallback"),
        "{chunks:?}"
    );
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "Backup here.");
    assert_eq!(chunks.last().unwrap()["usage"]["total_tokens"], 12);
    assert_eq!(seen.bodies("anthropic")[0]["model"], "overloaded");
    assert_eq!(seen.bodies("openai")[0]["model"], "gpt-4o-mini");

    // The 529's `retry-after: 9` opened the Anthropic deployment's circuit: the next
    // request goes straight to the backup, without calling Anthropic.
    let resp = gw
        .post(
            "/v1/chat/completions",
            &chat_body("gm-fallback", "And now?"),
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(deployment(&resp), "gpt-backup");
    assert_eq!(attempts(&resp), "1");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["model"], "gm-fallback");
    assert_eq!(v["choices"][0]["message"]["content"], "Backup here.");
    assert_eq!(seen.bodies("anthropic").len(), 1);
    assert_eq!(seen.bodies("openai").len(), 2);

    let metrics = gw.get("/metrics").await.text().await.unwrap();
    for line in [
        "aigw_deployment_failures_total{deployment=\"claude-primary\",reason=\"status_5xx\"} 1",
        "aigw_deployment_failures_total{deployment=\"claude-primary\",reason=\"circuit_open\"} 1",
        "aigw_deployment_attempts_total{deployment=\"gpt-backup\",outcome=\"success\"} 2",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
}

#[tokio::test]
async fn anthropic_client_errors_pass_through_without_fallback() {
    let (gw, seen) = gateway().await;
    for stream in [false, true] {
        let mut body = chat_body("gm-strict", "Roll a d1000000.");
        body["stream"] = json!(stream);
        let resp = gw.post("/v1/chat/completions", &body).await;
        assert_eq!(attempts(&resp), "1", "stream: {stream}");
        assert_eq!(deployment(&resp), "claude-strict");
        let err = expect_error(resp, 400).await;
        assert_eq!(err["message"], INVALID_MESSAGE, "{err}");
        assert_eq!(err["type"], "invalid_request_error", "{err}");
    }
    assert_eq!(seen.bodies("anthropic").len(), 2);
    assert!(seen.bodies("openai").is_empty(), "no fallback on a 400");

    // A parameter Anthropic cannot honour is refused before any upstream call.
    let mut body = chat_body("gm", "Give me three openings.");
    body["n"] = json!(3);
    let resp = gw.post("/v1/chat/completions", &body).await;
    assert_eq!(attempts(&resp), "1");
    let err = expect_error(resp, 400).await;
    assert_eq!(err["param"], "n", "{err}");
    assert_eq!(seen.bodies("anthropic").len(), 2);

    // Where a later deployment can honour it, that one serves the request instead.
    let mut body = chat_body("gm-strict", "Give me three openings.");
    body["n"] = json!(3);
    let resp = gw.post("/v1/chat/completions", &body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(attempts(&resp), "2");
    assert_eq!(deployment(&resp), "gpt-strict");
    assert_eq!(seen.bodies("anthropic").len(), 2, "refused before any call");
    assert_eq!(seen.bodies("openai").len(), 1);
}

/// The openai Python SDK reads Anthropic-backed answers, streamed tool calls and errors.
const SDK_SCRIPT: &str = r#"
import json, os
import openai
from openai import OpenAI

client = OpenAI(base_url=os.environ["AIGW_BASE_URL"], api_key=os.environ["AIGW_API_KEY"], max_retries=0, timeout=20)
user = [{"role": "user", "content": "A goblin appears."}]

r = client.chat.completions.create(model="gm", messages=user)
assert r.model == "gm", r.model
assert r.choices[0].message.content.startswith("The tavern door creaks open"), r
assert r.choices[0].finish_reason == "stop"
assert r.usage.total_tokens == 53, r.usage

tools = [{"type": "function", "function": {"name": "roll_dice", "parameters": {"type": "object"}}}]
calls, finish, usage = {}, None, None
stream = client.chat.completions.create(model="gm", messages=user, tools=tools, stream=True,
                                        stream_options={"include_usage": True})
for chunk in stream:
    assert chunk.model == "gm", chunk
    if chunk.usage:
        usage = chunk.usage
    for choice in chunk.choices:
        finish = choice.finish_reason or finish
        for tc in choice.delta.tool_calls or []:
            call = calls.setdefault(tc.index, {"id": tc.id, "name": tc.function.name, "arguments": ""})
            call["arguments"] += tc.function.arguments or ""
assert finish == "tool_calls", finish
assert [c["name"] for c in calls.values()] == ["roll_dice", "roll_dice"], calls
assert json.loads(calls[0]["arguments"]) == {"sides": 20, "who": "Arwen"}, calls
assert json.loads(calls[1]["arguments"]) == {"sides": 20, "who": "goblin"}, calls
assert usage.prompt_tokens == 472 and usage.completion_tokens == 89, usage

r = client.chat.completions.create(model="gm-fallback", messages=user)
assert r.choices[0].message.content == "Backup here.", r

try:
    client.chat.completions.create(model="gm-strict", messages=user)
    raise AssertionError("expected BadRequestError")
except openai.BadRequestError as e:
    assert e.status_code == 400
    assert e.body["message"].startswith("max_tokens: 300000 > 64000"), e.body
print("anthropic SDK checks passed")
"#;

#[tokio::test]
async fn openai_python_sdk_through_anthropic() {
    let Some(python) = crate::tools::locate("AIGW_TEST_PYTHON") else {
        return;
    };
    let (addr, _) = start_upstreams().await;
    let auth = "\n[[auth.keys]]\nname = \"sdk\"\nkey_env = \"TEST_CLIENT_KEY\"\n";
    let gw = Gateway::start_toml(&config(addr, auth)).await;
    let output = tokio::process::Command::new(PathBuf::from(python))
        .arg("-c")
        .arg(SDK_SCRIPT)
        .env("AIGW_BASE_URL", format!("{}/v1", gw.url))
        .env("AIGW_API_KEY", CLIENT_KEY)
        .output()
        .await
        .expect("run python");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "SDK checks failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("anthropic SDK checks passed"), "{stdout}");
}

#[tokio::test]
async fn health_checks_reach_anthropic_with_the_key() {
    let (gw, _) = gateway().await;
    let mut ready = Value::Null;
    for _ in 0..50 {
        ready = gw.get("/ready").await.json().await.unwrap();
        if ready["models"]["gm"]["deployments"]["gm/claude/claude-sonnet-4-5"] == "up" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        ready["models"]["gm"]["deployments"]["gm/claude/claude-sonnet-4-5"], "up",
        "{ready}"
    );
}
