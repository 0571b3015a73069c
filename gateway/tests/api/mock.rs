//! A scripted OpenAI-compatible upstream, standing in for a paid provider. What it does is
//! chosen by the upstream model name of each request:
//!
//! - `mock-echo`: answers with the last user message; streams it word by word.
//! - `mock-tools`: answers with a tool call (streamed as fragments).
//! - `mock-400` / `mock-401` / `mock-422` / `mock-429` / `mock-500` / `mock-503`: that error.
//! - `mock-slow`: waits 3 s before answering.
//! - `mock-slowstream`: like `mock-echo`, with 150 ms between stream events.
//! - `mock-midstream-fail`: streams two chunks, then an error event.
//! - `mock-garbage`: answers 200 with a body that is not JSON.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Multipart, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

/// What the mock saw.
#[derive(Default)]
pub struct Seen {
    pub bodies: Vec<Value>,
    pub headers: Vec<HeaderMap>,
    pub forms: Vec<Vec<(String, String)>>,
}

#[derive(Clone, Default)]
pub struct Mock {
    pub seen: Arc<Mutex<Seen>>,
}

pub struct MockServer {
    pub addr: SocketAddr,
    pub mock: Mock,
}

impl MockServer {
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn last_body(&self) -> Value {
        self.mock
            .seen
            .lock()
            .unwrap()
            .bodies
            .last()
            .cloned()
            .unwrap()
    }

    pub fn last_headers(&self) -> HeaderMap {
        self.mock
            .seen
            .lock()
            .unwrap()
            .headers
            .last()
            .cloned()
            .unwrap()
    }
}

pub async fn start() -> MockServer {
    let mock = Mock::default();
    let app = Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/audio/transcriptions", post(audio))
        .route("/v1/audio/translations", post(audio))
        .with_state(mock.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    MockServer { addr, mock }
}

async fn models() -> Json<Value> {
    Json(
        json!({"object": "list", "data": [{"id": "mock-echo", "object": "model", "created": 0, "owned_by": "mock"}]}),
    )
}

fn error(status: u16, message: &str, kind: &str, code: Option<&str>) -> Response {
    let status = StatusCode::from_u16(status).unwrap();
    let mut resp = (
        status,
        Json(json!({"error": {"message": message, "type": kind, "param": null, "code": code}})),
    )
        .into_response();
    if status == StatusCode::TOO_MANY_REQUESTS {
        resp.headers_mut()
            .insert("retry-after", "7".parse().unwrap());
    }
    resp
}

/// Answers for the scripted failure models, if `model` is one.
async fn scripted_failure(model: &str) -> Option<Response> {
    Some(match model {
        "mock-400" => error(
            400,
            "Invalid 'messages': bad shape.",
            "invalid_request_error",
            None,
        ),
        "mock-401" => error(
            401,
            "Incorrect API key provided.",
            "invalid_request_error",
            Some("invalid_api_key"),
        ),
        "mock-422" => error(
            422,
            "Unprocessable tool schema.",
            "invalid_request_error",
            None,
        ),
        "mock-429" => error(
            429,
            "Rate limit reached.",
            "rate_limit_error",
            Some("rate_limit_exceeded"),
        ),
        "mock-500" => error(
            500,
            "internal detail: shard 7 on 10.1.2.3 crashed",
            "server_error",
            None,
        ),
        "mock-503" => error(503, "overloaded", "server_error", None),
        "mock-garbage" => (StatusCode::OK, "<html>not json</html>").into_response(),
        "mock-slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            return None;
        }
        _ => return None,
    })
}

fn record(mock: &Mock, headers: HeaderMap, body: &Value) {
    let mut seen = mock.seen.lock().unwrap();
    seen.bodies.push(body.clone());
    seen.headers.push(headers);
}

fn last_user_text(body: &Value) -> String {
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let last = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .cloned()
        .unwrap_or(Value::Null);
    match &last["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

fn words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

async fn chat(State(mock): State<Mock>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    record(&mock, headers, &body);
    let model = body["model"].as_str().unwrap_or_default().to_string();
    if let Some(resp) = scripted_failure(&model).await {
        return resp;
    }
    let n = body["n"].as_u64().unwrap_or(1);
    let prompt = last_user_text(&body);
    let answer = format!("echo: {prompt}");
    let prompt_tokens = words(&prompt);
    let completion_tokens = words(&answer) * n;
    if body["stream"] == true {
        return stream_chat(&model, n, &answer, prompt_tokens, completion_tokens, &body);
    }
    let choices: Vec<Value> = (0..n)
        .map(|i| {
            let message = if model == "mock-tools" {
                json!({"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_abc", "type": "function", "function": {"name": "roll_dice", "arguments": "{\"sides\":20}"}}
                ]})
            } else {
                json!({"role": "assistant", "content": answer})
            };
            let finish = if model == "mock-tools" { "tool_calls" } else { "stop" };
            json!({"index": i, "message": message, "finish_reason": finish, "logprobs": null})
        })
        .collect();
    Json(json!({
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": choices,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens},
        "system_fingerprint": "fp_mock",
        "service_tier": "default"
    }))
    .into_response()
}

fn chunk(model: &str, choices: Value, usage: Option<Value>) -> String {
    let mut c = json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model, "choices": choices});
    if let Some(u) = usage {
        c["usage"] = u;
    }
    format!("data: {c}\n\n")
}

fn stream_chat(
    model: &str,
    n: u64,
    answer: &str,
    prompt_tokens: u64,
    completion_tokens: u64,
    body: &Value,
) -> Response {
    let mut events = Vec::new();
    for i in 0..n {
        events.push(chunk(model, json!([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]), None));
    }
    if model == "mock-tools" {
        events.push(chunk(model, json!([{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_abc", "type": "function", "function": {"name": "roll_dice", "arguments": ""}}]}, "finish_reason": null}]), None));
        for frag in ["{\"sides\"", ":20}"] {
            events.push(chunk(model, json!([{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": frag}}]}, "finish_reason": null}]), None));
        }
        events.push(chunk(
            model,
            json!([{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]),
            None,
        ));
    } else {
        for (w, word) in answer.split_inclusive(' ').enumerate() {
            for i in 0..n {
                events.push(chunk(
                    model,
                    json!([{"index": i, "delta": {"content": word}, "finish_reason": null}]),
                    None,
                ));
            }
            if model == "mock-midstream-fail" && w == 1 {
                events.push("data: {\"error\":{\"message\":\"upstream exploded\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n".into());
                return sse(events);
            }
        }
        for i in 0..n {
            events.push(chunk(
                model,
                json!([{"index": i, "delta": {}, "finish_reason": "stop"}]),
                None,
            ));
        }
    }
    if body["stream_options"]["include_usage"] == true {
        events.push(chunk(model, json!([]), Some(json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}))));
    }
    events.push("data: [DONE]\n\n".into());
    if model == "mock-slowstream" {
        return sse_paced(events, Duration::from_millis(150));
    }
    sse(events)
}

/// Sends events with a small pause between them, so the stream is really incremental.
fn sse(events: Vec<String>) -> Response {
    sse_paced(events, Duration::from_millis(5))
}

fn sse_paced(events: Vec<String>, pause: Duration) -> Response {
    let stream = futures::stream::iter(events).then(move |e| async move {
        tokio::time::sleep(pause).await;
        Ok::<_, std::convert::Infallible>(e)
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap()
}

use futures::StreamExt as _;

async fn completions(
    State(mock): State<Mock>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    record(&mock, headers, &body);
    let model = body["model"].as_str().unwrap_or_default().to_string();
    if let Some(resp) = scripted_failure(&model).await {
        return resp;
    }
    let prompt = body["prompt"].as_str().unwrap_or_default().to_string();
    let text = format!(" and then {prompt}");
    let usage = json!({"prompt_tokens": words(&prompt), "completion_tokens": words(&text), "total_tokens": words(&prompt) + words(&text)});
    if body["stream"] == true {
        let mut events: Vec<String> = text
            .split_inclusive(' ')
            .map(|w| {
                let c = json!({"id": "cmpl-mock", "object": "text_completion", "created": 1, "model": model, "choices": [{"text": w, "index": 0, "logprobs": null, "finish_reason": null}]});
                format!("data: {c}\n\n")
            })
            .collect();
        if body["stream_options"]["include_usage"] == true {
            let c = json!({"id": "cmpl-mock", "object": "text_completion", "created": 1, "model": model, "choices": [], "usage": usage});
            events.push(format!("data: {c}\n\n"));
        }
        events.push("data: [DONE]\n\n".into());
        return sse(events);
    }
    Json(json!({"id": "cmpl-mock", "object": "text_completion", "created": 1, "model": model,
        "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": "stop"}], "usage": usage}))
    .into_response()
}

/// Deterministic vectors: input i gets [i+1, 0.5, -0.25].
async fn embeddings(
    State(mock): State<Mock>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    record(&mock, headers, &body);
    let model = body["model"].as_str().unwrap_or_default().to_string();
    if let Some(resp) = scripted_failure(&model).await {
        return resp;
    }
    let inputs = match &body["input"] {
        Value::Array(a) => a.len(),
        _ => 1,
    };
    let base64 = body["encoding_format"] == "base64";
    let data: Vec<Value> = (0..inputs)
        .map(|i| {
            let v = [i as f32 + 1.0, 0.5f32, -0.25f32];
            let embedding = if base64 {
                Value::String(aigw_models::openai::encode_f32_base64(&v))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    Json(json!({"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": 3 * inputs, "total_tokens": 3 * inputs}})).into_response()
}

/// Echoes the form: the file size and every text field.
async fn audio(State(mock): State<Mock>, mut form: Multipart) -> Response {
    let mut fields = Vec::new();
    let mut file_len = 0;
    while let Some(field) = form.next_field().await.unwrap() {
        let name = field.name().unwrap_or_default().to_string();
        if name == "file" {
            fields.push((
                "file_name".into(),
                field.file_name().unwrap_or_default().to_string(),
            ));
            file_len = field.bytes().await.unwrap().len();
        } else {
            fields.push((name, field.text().await.unwrap()));
        }
    }
    mock.seen.lock().unwrap().forms.push(fields.clone());
    let format = fields
        .iter()
        .find(|(k, _)| k == "response_format")
        .map(|(_, v)| v.as_str())
        .unwrap_or("json");
    if format == "text" {
        return (
            [("content-type", "text/plain; charset=utf-8")],
            format!("heard {file_len} bytes\n"),
        )
            .into_response();
    }
    Json(json!({"text": format!("heard {file_len} bytes")})).into_response()
}
