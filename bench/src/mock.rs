//! Fast mock OpenAI-compatible upstream on bare hyper with precomputed answers.
//!
//! Every response body is serialised once, at startup, into [`Bytes`]; a
//! request only clones reference-counted handles to them, so the per-request
//! work is what hyper itself needs (parsing, headers, writing). Routes:
//!
//! - `POST /v1/chat/completions`: a fixed `chat.completion` with `usage`, or,
//!   when the body asks for `"stream": true`, a server-sent-event stream of
//!   `chat.completion.chunk` events, a usage chunk and `data: [DONE]`;
//! - `GET /v1/models`: a one-model list;
//! - the same under `/fail` (`/fail/v1/...`), except that chat requests get a 503 JSON error
//!   at once (the failing deployment of the routing benchmark);
//! - anything else: a 404 JSON error.

use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;

/// Model id the mock reports in every answer.
pub const MOCK_MODEL: &str = "mock-model";
/// Completion id the mock reports in every answer.
const COMPLETION_ID: &str = "chatcmpl-aigw-bench-mock";
/// Fixed `created` timestamp, so the bytes never change.
const CREATED: u64 = 1_700_000_000;
/// Pieces of the answer, one per content chunk when streaming.
const PIECES: [&str; 5] = ["Hello", "!", " How can I", " help you", " today?"];
const PROMPT_TOKENS: u64 = 10;
const COMPLETION_TOKENS: u64 = 9;

/// A response body made of precomputed chunks, each sent as one data frame.
///
/// With a single chunk the exact length is announced (`content-length`);
/// with several the body is sent chunked, as a real event stream would be.
#[derive(Debug, Clone)]
pub struct MockBody {
    chunks: Arc<[Bytes]>,
    next: usize,
    remaining: u64,
}

impl MockBody {
    fn new(chunks: Arc<[Bytes]>) -> Self {
        let remaining = chunks.iter().map(|c| c.len() as u64).sum();
        Self {
            chunks,
            next: 0,
            remaining,
        }
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        match this.chunks.get(this.next) {
            Some(chunk) => {
                this.next += 1;
                this.remaining -= chunk.len() as u64;
                Poll::Ready(Some(Ok(Frame::data(chunk.clone()))))
            }
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.next >= self.chunks.len()
    }

    fn size_hint(&self) -> SizeHint {
        if self.chunks.len() <= 1 {
            SizeHint::with_exact(self.remaining)
        } else {
            SizeHint::default()
        }
    }
}

/// All answers of the mock, serialised once.
#[derive(Debug, Clone)]
pub struct Responses {
    completion: Arc<[Bytes]>,
    stream: Arc<[Bytes]>,
    models: Arc<[Bytes]>,
    not_found: Arc<[Bytes]>,
    unavailable: Arc<[Bytes]>,
}

impl Responses {
    /// Serialises every answer.
    pub fn new() -> Self {
        let one =
            |v: serde_json::Value| -> Arc<[Bytes]> { Arc::from([Bytes::from(v.to_string())]) };
        Self {
            completion: one(completion_json()),
            stream: sse_chunks().into(),
            models: one(json!({
                "object": "list",
                "data": [{
                    "id": MOCK_MODEL,
                    "object": "model",
                    "created": CREATED,
                    "owned_by": "aigw-bench",
                }],
            })),
            not_found: one(json!({
                "error": {
                    "message": "not found",
                    "type": "invalid_request_error",
                    "code": "not_found",
                },
            })),
            unavailable: one(json!({
                "error": {
                    "message": "the mock fails every chat request under /fail",
                    "type": "server_error",
                    "code": null,
                },
            })),
        }
    }
}

impl Default for Responses {
    fn default() -> Self {
        Self::new()
    }
}

fn usage_json() -> serde_json::Value {
    json!({
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": COMPLETION_TOKENS,
        "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
    })
}

/// The non-streaming `chat.completion` answer.
pub fn completion_json() -> serde_json::Value {
    json!({
        "id": COMPLETION_ID,
        "object": "chat.completion",
        "created": CREATED,
        "model": MOCK_MODEL,
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": PIECES.concat() },
            "logprobs": null,
            "finish_reason": "stop",
        }],
        "usage": usage_json(),
    })
}

fn chunk_json(choices: serde_json::Value, usage: Option<serde_json::Value>) -> serde_json::Value {
    let mut chunk = json!({
        "id": COMPLETION_ID,
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": MOCK_MODEL,
        "choices": choices,
    });
    if let (Some(usage), Some(map)) = (usage, chunk.as_object_mut()) {
        map.insert("usage".to_owned(), usage);
    }
    chunk
}

/// The event-stream answer, one element per server-sent event: a role
/// chunk, one chunk per content piece, a finish chunk, a usage chunk (empty
/// `choices`) and the `[DONE]` sentinel.
pub fn sse_chunks() -> Vec<Bytes> {
    let delta = |delta: serde_json::Value, finish: Option<&str>| {
        chunk_json(
            json!([{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish }]),
            None,
        )
    };
    let mut events = vec![delta(json!({ "role": "assistant", "content": "" }), None)];
    events.extend(PIECES.iter().map(|p| delta(json!({ "content": p }), None)));
    events.push(delta(json!({}), Some("stop")));
    events.push(chunk_json(json!([]), Some(usage_json())));
    let mut out: Vec<Bytes> = events
        .iter()
        .map(|e| Bytes::from(format!("data: {e}\n\n")))
        .collect();
    out.push(Bytes::from_static(b"data: [DONE]\n\n"));
    out
}

/// Whether a request body asks for streaming (`"stream"`, optional
/// whitespace, `:`, optional whitespace, `true`), without parsing the JSON.
pub fn wants_stream(body: &[u8]) -> bool {
    const KEY: &[u8] = b"\"stream\"";
    let mut rest = body;
    while let Some(pos) = rest.windows(KEY.len()).position(|w| w == KEY) {
        rest = &rest[pos + KEY.len()..];
        let after = rest.trim_ascii_start();
        if let Some(value) = after.strip_prefix(b":") {
            return value.trim_ascii_start().starts_with(b"true");
        }
    }
    false
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    chunks: &Arc<[Bytes]>,
) -> Response<MockBody> {
    let mut resp = Response::new(MockBody::new(Arc::clone(chunks)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

async fn handle(
    responses: Arc<Responses>,
    req: Request<Incoming>,
) -> Result<Response<MockBody>, hyper::Error> {
    // Under `/fail` the same API answers every chat request with a 503 at once: the failing
    // deployment of the routing benchmark.
    let (failing, path) = match req.uri().path().strip_prefix("/fail") {
        Some(rest) => (true, rest),
        None => (false, req.uri().path()),
    };
    let is_chat = path == "/v1/chat/completions";
    if is_chat && req.method() == Method::POST && failing {
        req.into_body().collect().await?;
        return Ok(respond(
            StatusCode::SERVICE_UNAVAILABLE,
            "application/json",
            &responses.unavailable,
        ));
    }
    if is_chat && req.method() == Method::POST {
        let body = req.into_body().collect().await?.to_bytes();
        if wants_stream(&body) {
            let mut resp = respond(StatusCode::OK, "text/event-stream", &responses.stream);
            resp.headers_mut()
                .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            return Ok(resp);
        }
        return Ok(respond(
            StatusCode::OK,
            "application/json",
            &responses.completion,
        ));
    }
    if path == "/v1/models" && req.method() == Method::GET {
        return Ok(respond(
            StatusCode::OK,
            "application/json",
            &responses.models,
        ));
    }
    Ok(respond(
        StatusCode::NOT_FOUND,
        "application/json",
        &responses.not_found,
    ))
}

/// Serves the mock on `listener` until the task is dropped.
///
/// Each accepted connection gets `TCP_NODELAY` and its own task running a
/// keep-alive HTTP/1.1 connection.
pub async fn serve(listener: TcpListener) -> anyhow::Result<()> {
    let responses = Arc::new(Responses::new());
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Typically EMFILE: back off instead of spinning.
                eprintln!("mock-upstream: accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // Best effort: a socket without nodelay still works, only slower.
        let _ = stream.set_nodelay(true);
        let responses = Arc::clone(&responses);
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req| handle(Arc::clone(&responses), req));
            // Connection errors (client resets) are routine under load.
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Runs the mock on `listen` with `threads` runtime threads, printing
/// `listening on ADDR` (the bound address) as the first stdout line.
pub fn run(listen: SocketAddr, threads: usize) -> anyhow::Result<()> {
    let runtime = crate::build_runtime(threads)?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on {addr}")?;
        stdout.flush()?;
        drop(stdout);
        serve(listener).await
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_stream_flag() {
        assert!(wants_stream(br#"{"model":"m","stream":true}"#));
        assert!(wants_stream(br#"{"stream" : true,"model":"m"}"#));
        assert!(!wants_stream(br#"{"model":"m","stream":false}"#));
        assert!(!wants_stream(br#"{"model":"m"}"#));
        assert!(!wants_stream(br#"{"model":"stream","x":"\"stream\""}"#));
        assert!(wants_stream(br#"{"content":"\"stream\"","stream":true}"#));
    }

    #[test]
    fn sse_body_is_well_formed() {
        let chunks = sse_chunks();
        assert!(chunks.len() >= 4);
        let (done, events) = chunks.split_last().unwrap();
        assert_eq!(&done[..], b"data: [DONE]\n\n");
        let mut text = String::new();
        let mut saw_usage = false;
        for event in events {
            let event = std::str::from_utf8(event).unwrap();
            let payload = event.strip_prefix("data: ").unwrap();
            let payload = payload.strip_suffix("\n\n").unwrap();
            assert!(!payload.contains('\n'));
            let v: serde_json::Value = serde_json::from_str(payload).unwrap();
            assert_eq!(v["object"], "chat.completion.chunk");
            assert_eq!(v["model"], MOCK_MODEL);
            if let Some(usage) = v.get("usage") {
                assert_eq!(v["choices"].as_array().unwrap().len(), 0);
                assert_eq!(usage["total_tokens"], PROMPT_TOKENS + COMPLETION_TOKENS);
                saw_usage = true;
            } else if let Some(s) = v["choices"][0]["delta"]["content"].as_str() {
                text.push_str(s);
            }
        }
        assert!(saw_usage);
        // The usage chunk is the last event before [DONE].
        assert!(
            std::str::from_utf8(events.last().unwrap())
                .unwrap()
                .contains("\"usage\"")
        );
        assert_eq!(text, completion_json()["choices"][0]["message"]["content"]);
    }

    #[test]
    fn body_announces_length_only_when_single_chunk() {
        let single = MockBody::new(Arc::from([Bytes::from_static(b"abc")]));
        assert_eq!(single.size_hint().exact(), Some(3));
        let many = MockBody::new(sse_chunks().into());
        assert_eq!(many.size_hint().exact(), None);
    }
}
