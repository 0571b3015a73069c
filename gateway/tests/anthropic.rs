//! The Anthropic provider against a mock Messages API that records what it receives and
//! replays recorded wire-format fixtures (`tests/fixtures/anthropic/`). What the mock answers
//! is chosen by the request's `model` (and `stream` flag):
//!
//! - `text` / `tool`: a text answer / a text-and-two-tool-calls answer (streamed or not);
//! - `midstream-error`: a stream that breaks off with an `overloaded_error` event;
//! - `truncated`: the text stream cut before `message_stop`;
//! - `overloaded`: `529` with `retry-after: 9`; `invalid`: `400 invalid_request_error`;
//! - `stall`: a stream that starts, then goes silent; `slow`: answers after 3 s.
//!
//! Streams are sent in 7-byte pieces, so events and JSON arrive split at arbitrary points.

#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests"
)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aigw_gateway::config::{ProviderConfig, ProviderKind};
use aigw_gateway::providers::anthropic::AnthropicProvider;
use aigw_gateway::providers::{CallContext, Provider, ProviderError};
use aigw_models::openai::{
    ChatCompletionChunk, ChatCompletionRequest, FinishReason, Role, ToolCallDelta,
};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use serde_json::{Value, json};

const MESSAGE_TEXT: &str = include_str!("fixtures/anthropic/message_text.json");
const MESSAGE_TOOL_USE: &str = include_str!("fixtures/anthropic/message_tool_use.json");
const STREAM_TEXT: &str = include_str!("fixtures/anthropic/stream_text.sse");
const STREAM_TOOL_USE: &str = include_str!("fixtures/anthropic/stream_tool_use.sse");
const STREAM_ERROR: &str = include_str!("fixtures/anthropic/stream_error.sse");
const ERROR_OVERLOADED: &str = include_str!("fixtures/anthropic/error_overloaded.json");
const ERROR_INVALID_REQUEST: &str = include_str!("fixtures/anthropic/error_invalid_request.json");
const MODELS: &str = include_str!("fixtures/anthropic/models.json");

const API_KEY: &str = "sk-ant-test-key";

/// What the mock received: one entry per request.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(HeaderMap, Value)>>>);

impl Seen {
    fn last(&self) -> (HeaderMap, Value) {
        self.0.lock().unwrap().last().cloned().unwrap()
    }
}

async fn start_mock() -> (SocketAddr, Seen) {
    let seen = Seen::default();
    let app = Router::new()
        .route("/v1/messages", post(messages))
        .route("/v1/models", get(models))
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

/// An SSE body sent in 7-byte pieces, then `tail` (a silence) before it ends.
fn sse_reply(text: &str, tail: Duration) -> Response {
    let pieces: Vec<Bytes> = text
        .as_bytes()
        .chunks(7)
        .map(Bytes::copy_from_slice)
        .collect();
    let body = futures::stream::iter(pieces.into_iter().map(Ok::<_, Infallible>)).chain(
        futures::stream::once(async move {
            tokio::time::sleep(tail).await;
            Ok(Bytes::new())
        }),
    );
    (
        [("content-type", "text/event-stream")],
        Body::from_stream(body),
    )
        .into_response()
}

async fn messages(
    State(seen): State<Seen>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    seen.0.lock().unwrap().push((headers.clone(), body.clone()));
    if headers.get("x-api-key").and_then(|v| v.to_str().ok()) != Some(API_KEY) {
        return json_reply(
            401,
            r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#,
        );
    }
    let stream = body["stream"] == json!(true);
    let model = body["model"].as_str().unwrap_or_default();
    match (model, stream) {
        ("text", false) => json_reply(200, MESSAGE_TEXT),
        ("tool", false) => json_reply(200, MESSAGE_TOOL_USE),
        ("text", true) => sse_reply(STREAM_TEXT, Duration::ZERO),
        ("tool", true) => sse_reply(STREAM_TOOL_USE, Duration::ZERO),
        ("midstream-error", true) => sse_reply(STREAM_ERROR, Duration::ZERO),
        ("truncated", true) => {
            let cut = STREAM_TEXT.find("event: message_stop").unwrap();
            sse_reply(&STREAM_TEXT[..cut], Duration::ZERO)
        }
        ("stall", true) => {
            let cut = STREAM_TEXT.find("event: ping").unwrap();
            sse_reply(&STREAM_TEXT[..cut], Duration::from_secs(5))
        }
        ("slow", _) => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            json_reply(200, MESSAGE_TEXT)
        }
        ("overloaded", _) => {
            let mut resp = json_reply(529, ERROR_OVERLOADED);
            resp.headers_mut()
                .insert("retry-after", HeaderValue::from_static("9"));
            resp
        }
        _ => json_reply(400, ERROR_INVALID_REQUEST),
    }
}

async fn models(State(seen): State<Seen>, headers: HeaderMap) -> Response {
    seen.0.lock().unwrap().push((headers.clone(), Value::Null));
    if headers.get("x-api-key").and_then(|v| v.to_str().ok()) != Some(API_KEY) {
        return json_reply(
            401,
            r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#,
        );
    }
    json_reply(200, MODELS)
}

fn config(addr: SocketAddr, api_key: &str) -> ProviderConfig {
    ProviderConfig {
        name: "claude".into(),
        kind: ProviderKind::Anthropic {
            version: "2023-06-01".into(),
            default_max_tokens: 4096,
        },
        base_url: format!("http://{addr}"),
        api_key: Some(api_key.into()),
        timeout: Duration::from_secs(30),
        connect_timeout: Duration::from_secs(5),
        health_path: "/v1/models".into(),
        headers: BTreeMap::from([(
            "anthropic-beta".into(),
            "token-efficient-tools-2025-02-19".into(),
        )]),
    }
}

async fn provider() -> (AnthropicProvider, Seen) {
    let (addr, seen) = start_mock().await;
    (
        AnthropicProvider::new(&config(addr, API_KEY)).unwrap(),
        seen,
    )
}

fn chat(model: &str) -> ChatCompletionRequest {
    serde_json::from_value(json!({
        "model": model,
        "messages": [
            {"role": "system", "content": "You are the game master."},
            {"role": "user", "content": "A goblin appears. Roll initiative for Arwen."}
        ],
        "tools": [{"type": "function", "function": {
            "name": "roll_dice",
            "description": "Roll dice for a character.",
            "parameters": {"type": "object", "properties": {"sides": {"type": "integer"}, "who": {"type": "string"}}}
        }}],
        "temperature": 0.4,
    }))
    .unwrap()
}

fn ctx() -> CallContext {
    let mut headers = http::HeaderMap::new();
    headers.insert("x-deployment", HeaderValue::from_static("eu-1"));
    CallContext {
        request_id: Some("req-aigw-42".into()),
        timeout: None,
        headers: Arc::new(headers),
    }
}

async fn collect(
    p: &AnthropicProvider,
    model: &str,
    ctx: &CallContext,
) -> (Vec<ChatCompletionChunk>, Option<ProviderError>) {
    let mut stream = p.chat_stream(chat(model), ctx).await.unwrap();
    let mut chunks = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(chunk) => chunks.push(chunk),
            Err(e) => {
                assert!(stream.next().await.is_none(), "an error ends the stream");
                return (chunks, Some(e));
            }
        }
    }
    (chunks, None)
}

#[tokio::test]
async fn text_answer_and_the_request_anthropic_receives() {
    let (p, seen) = provider().await;
    assert_eq!(p.name(), "claude");
    let resp = p.chat(chat("text"), &ctx()).await.unwrap();
    assert_eq!(resp.id, "msg_01XFDUDYJgAACzvnptvVoYEL");
    assert_eq!(resp.object, "chat.completion");
    assert_eq!(resp.model, "claude-sonnet-4-5-20250929");
    assert!(resp.created > 1_700_000_000);
    let choice = &resp.choices[0];
    assert_eq!(choice.finish_reason, Some(FinishReason::Stop));
    assert_eq!(choice.message.role, Role::Assistant);
    assert_eq!(
        choice.message.content.as_ref().unwrap().joined_text(),
        "The tavern door creaks open, and the smell of woodsmoke rolls out into the rain."
    );
    let usage = resp.usage.unwrap();
    assert_eq!(
        (
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.total_tokens
        ),
        (31, 22, 53)
    );

    let (headers, body) = seen.last();
    assert_eq!(headers["x-api-key"], API_KEY);
    assert_eq!(headers["anthropic-version"], "2023-06-01");
    assert_eq!(
        headers["anthropic-beta"],
        "token-efficient-tools-2025-02-19"
    );
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["x-request-id"], "req-aigw-42");
    assert_eq!(headers["x-deployment"], "eu-1");
    assert!(headers.get("authorization").is_none());
    assert_eq!(
        body,
        json!({
            "model": "text",
            "max_tokens": 4096,
            "system": "You are the game master.",
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "A goblin appears. Roll initiative for Arwen."}
            ]}],
            "temperature": 0.4,
            "tools": [{
                "name": "roll_dice",
                "description": "Roll dice for a character.",
                "input_schema": {"type": "object", "properties": {"sides": {"type": "integer"}, "who": {"type": "string"}}}
            }]
        })
    );
}

#[tokio::test]
async fn tool_use_answer_becomes_tool_calls() {
    let (p, _) = provider().await;
    let resp = p.chat(chat("tool"), &ctx()).await.unwrap();
    let choice = &resp.choices[0];
    assert_eq!(choice.finish_reason, Some(FinishReason::ToolCalls));
    assert_eq!(
        choice.message.content.as_ref().unwrap().joined_text(),
        "I'll roll for initiative."
    );
    let calls = choice.message.tool_calls.as_ref().unwrap();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].id, "toolu_01A09q90qw90lq917835lq9");
    assert_eq!(calls[0].kind, "function");
    assert_eq!(calls[0].function.name, "roll_dice");
    let args: Value = serde_json::from_str(&calls[0].function.arguments).unwrap();
    assert_eq!(args, json!({"sides": 20, "count": 1, "modifier": 3}));
    assert_eq!(calls[1].function.name, "lookup_monster");
    assert_eq!(calls[1].function.arguments, r#"{"name":"goblin"}"#);
    // Cache reads count as prompt tokens, and are reported as cached.
    let usage = resp.usage.unwrap();
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (1436, 87));
    assert_eq!(
        usage.prompt_tokens_details,
        Some(json!({"cached_tokens": 1024}))
    );
}

#[tokio::test]
async fn streamed_text() {
    let (p, seen) = provider().await;
    let (chunks, err) = collect(&p, "text", &ctx()).await;
    assert!(err.is_none(), "{err:?}");
    let (headers, body) = seen.last();
    assert_eq!(body["stream"], true);
    assert_eq!(headers["accept"], "text/event-stream");
    assert_eq!(headers["x-api-key"], API_KEY);

    let created = chunks[0].created;
    for c in &chunks {
        assert_eq!(c.id, "msg_01TextStream7kQ");
        assert_eq!(c.object, "chat.completion.chunk");
        assert_eq!(c.model, "claude-sonnet-4-5-20250929");
        assert_eq!(c.created, created);
    }
    assert_eq!(chunks.len(), 6, "start, three texts, finish, usage");
    assert_eq!(chunks[0].choices[0].delta.role, Some(Role::Assistant));
    assert_eq!(chunks[0].choices[0].delta.content.as_deref(), Some(""));
    let text: String = chunks[1..4]
        .iter()
        .map(|c| c.choices[0].delta.content.clone().unwrap())
        .collect();
    assert_eq!(text, "The goblin snarls and draws a rusty blade.");
    assert!(
        chunks[..4]
            .iter()
            .all(|c| c.choices[0].finish_reason.is_none())
    );
    assert_eq!(chunks[4].choices[0].finish_reason, Some(FinishReason::Stop));
    assert_eq!(chunks[4].choices[0].delta, Default::default());
    assert!(chunks[5].choices.is_empty());
    let usage = chunks[5].usage.as_ref().unwrap();
    assert_eq!(
        (
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.total_tokens
        ),
        (25, 15, 40)
    );
    assert!(chunks[..5].iter().all(|c| c.usage.is_none()));
}

#[tokio::test]
async fn streamed_tool_calls_are_keyed_by_index() {
    let (p, _) = provider().await;
    let (chunks, err) = collect(&p, "tool", &ctx()).await;
    assert!(err.is_none(), "{err:?}");
    let text: String = chunks
        .iter()
        .filter_map(|c| c.choices.first()?.delta.content.clone())
        .collect();
    assert_eq!(text, "Rolling initiative for both of you.");

    let fragments: Vec<ToolCallDelta> = chunks
        .iter()
        .filter_map(|c| c.choices.first()?.delta.tool_calls.clone())
        .flatten()
        .collect();
    // The empty first `input_json_delta` sends nothing.
    assert_eq!(fragments.len(), 2 + 3 + 2);
    for (k, id) in [
        (0, "toolu_01T1x1fJ34qAmk2tNTrN7Up6"),
        (1, "toolu_01Gq4ZbQm8Hn3V5rXy2WcP7e"),
    ] {
        let of_call: Vec<&ToolCallDelta> = fragments.iter().filter(|f| f.index == k).collect();
        let first = of_call[0];
        assert_eq!(first.id.as_deref(), Some(id));
        assert_eq!(first.kind.as_deref(), Some("function"));
        let function = first.function.as_ref().unwrap();
        assert_eq!(function.name.as_deref(), Some("roll_dice"));
        assert_eq!(function.arguments.as_deref(), Some(""));
        for later in &of_call[1..] {
            assert!(later.id.is_none() && later.kind.is_none());
            assert!(later.function.as_ref().unwrap().name.is_none());
        }
        let arguments: String = of_call
            .iter()
            .map(|f| f.function.as_ref().unwrap().arguments.clone().unwrap())
            .collect();
        let expected = if k == 0 {
            json!({"sides": 20, "who": "Arwen"})
        } else {
            json!({"sides": 20, "who": "goblin"})
        };
        assert_eq!(serde_json::from_str::<Value>(&arguments).unwrap(), expected);
    }
    let finish: Vec<_> = chunks
        .iter()
        .filter_map(|c| c.choices.first()?.finish_reason.clone())
        .collect();
    assert_eq!(finish, [FinishReason::ToolCalls]);
    let last = chunks.last().unwrap();
    assert!(last.choices.is_empty());
    let usage = last.usage.as_ref().unwrap();
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (472, 89));
}

#[tokio::test]
async fn error_event_mid_stream_ends_it_with_a_503() {
    let (p, _) = provider().await;
    let (chunks, err) = collect(&p, "midstream-error", &ctx()).await;
    assert_eq!(chunks.len(), 2, "start and one text chunk");
    assert_eq!(
        chunks[1].choices[0].delta.content.as_deref(),
        Some("The dragon")
    );
    match err {
        Some(ProviderError::Status {
            status,
            body: Some(body),
            ..
        }) => {
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(body.error.kind, "overloaded_error");
            assert_eq!(body.error.message, "Overloaded");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_stream_cut_before_message_stop_is_an_error() {
    let (p, _) = provider().await;
    let (chunks, err) = collect(&p, "truncated", &ctx()).await;
    assert_eq!(
        chunks.last().unwrap().choices[0].finish_reason,
        Some(FinishReason::Stop)
    );
    assert!(matches!(err, Some(ProviderError::Transport(_))), "{err:?}");
}

#[tokio::test]
async fn overloaded_is_a_503_with_retry_after() {
    let (p, _) = provider().await;
    for stream in [false, true] {
        let err = if stream {
            p.chat_stream(chat("overloaded"), &ctx())
                .await
                .err()
                .unwrap()
        } else {
            p.chat(chat("overloaded"), &ctx()).await.unwrap_err()
        };
        match err {
            ProviderError::Status {
                status,
                body: Some(body),
                retry_after,
            } => {
                assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
                assert_eq!(body.error.kind, "overloaded_error");
                assert_eq!(body.error.message, "Overloaded");
                assert_eq!(retry_after, Some(Duration::from_secs(9)));
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn invalid_request_message_reaches_the_client() {
    let (p, _) = provider().await;
    match p.chat(chat("invalid"), &ctx()).await.unwrap_err() {
        ProviderError::Status {
            status,
            body: Some(body),
            retry_after,
        } => {
            assert_eq!(status, StatusCode::BAD_REQUEST);
            assert_eq!(body.error.kind, "invalid_request_error");
            assert!(
                body.error.message.starts_with("max_tokens: 300000 > 64000"),
                "{}",
                body.error.message
            );
            assert_eq!(retry_after, None);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn unsupported_parameters_never_reach_anthropic() {
    let (p, seen) = provider().await;
    let mut req = chat("text");
    req.n = Some(3);
    match p.chat(req, &ctx()).await.unwrap_err() {
        ProviderError::Rejected { param, code, .. } => {
            assert_eq!(param.as_deref(), Some("n"));
            assert_eq!(code, "unsupported_parameter");
        }
        other => panic!("{other:?}"),
    }
    assert!(seen.0.lock().unwrap().is_empty());
}

#[tokio::test]
async fn call_timeout_bounds_answers_and_stream_silence() {
    let (p, _) = provider().await;
    let short = CallContext {
        timeout: Some(Duration::from_millis(300)),
        ..ctx()
    };
    let started = Instant::now();
    let err = p.chat(chat("slow"), &short).await.unwrap_err();
    assert!(matches!(err, ProviderError::Timeout), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2));

    let started = Instant::now();
    let (chunks, err) = collect(&p, "stall", &short).await;
    assert_eq!(chunks.len(), 1, "the message_start chunk");
    assert!(matches!(err, Some(ProviderError::Timeout)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn health_probes_the_models_endpoint_with_the_key() {
    let (addr, seen) = start_mock().await;
    let p = AnthropicProvider::new(&config(addr, API_KEY)).unwrap();
    p.health().await.unwrap();
    let (headers, _) = seen.last();
    assert_eq!(headers["x-api-key"], API_KEY);
    assert_eq!(headers["anthropic-version"], "2023-06-01");

    let wrong = AnthropicProvider::new(&config(addr, "sk-ant-wrong")).unwrap();
    match wrong.health().await.unwrap_err() {
        ProviderError::Status { status, body, .. } => {
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            assert_eq!(body.unwrap().error.kind, "authentication_error");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn only_anthropic_configs_are_accepted() {
    let mut cfg = config("127.0.0.1:9".parse().unwrap(), API_KEY);
    cfg.kind = ProviderKind::OpenAi;
    assert!(AnthropicProvider::new(&cfg).is_err());
}
