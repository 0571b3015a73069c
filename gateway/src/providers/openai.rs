//! The OpenAI-compatible upstream: OpenAI itself, vLLM, llama.cpp's server, another aigw —
//! and Azure OpenAI, which speaks the same bodies at other URLs.
//!
//! One pooled keep-alive `reqwest` client per provider. Non-streaming calls are bounded by
//! the provider's timeout; streams by the same timeout on the response head and on the
//! silence between chunks, and are re-emitted chunk by chunk as they arrive.
//!
//! Azure differences handled here: the deployment is in the path
//! (`/openai/deployments/{deployment}/chat/completions?api-version=…`), the key goes in an
//! `api-key` header, `retry-after-ms` refines `Retry-After`, and its content filter is made
//! OpenAI-shaped: a filtered completion becomes a 400 with `code: "content_filter"` (a filtered
//! prompt already is one), and in a stream a choice whose `content_filter_results` report
//! `filtered: true` ends with `finish_reason: "content_filter"`. Azure's extra chunks that carry
//! only `prompt_filter_results` are dropped.

use std::time::Duration;

use aigw_models::openai::{
    ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse, CompletionRequest,
    CompletionResponse, EmbeddingRequest, EmbeddingResponse, ErrorResponse, StreamOptions,
};
use async_trait::async_trait;
use futures::StreamExt;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::sse::SseDecoder;
use super::{AudioRequest, AudioResponse, CallContext, ChunkStream, Provider, ProviderError};
use crate::config::ProviderConfig;
use crate::config::ProviderKind;

/// Most bytes of an upstream error body read for the error message.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// An OpenAI-compatible HTTP upstream.
pub struct OpenAiProvider {
    name: String,
    base_url: String,
    health_url: String,
    timeout: Duration,
    client: reqwest::Client,
    dialect: Dialect,
}

/// Where the two OpenAI dialects differ.
#[derive(Debug, Clone)]
enum Dialect {
    /// `{base_url}{path}`, `Authorization: Bearer`.
    OpenAi,
    /// `{base_url}/openai/deployments/{model}{path}?api-version=…`, `api-key`.
    Azure { api_version: String },
}

impl OpenAiProvider {
    /// Builds the provider and its connection pool.
    pub fn new(cfg: &ProviderConfig) -> Result<Self, ProviderError> {
        let mut headers = HeaderMap::new();
        for (name, value) in &cfg.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| ProviderError::InvalidResponse(format!("header name {name}: {e}")))?;
            let value = HeaderValue::from_str(value)
                .map_err(|e| ProviderError::InvalidResponse(format!("header {name}: {e}")))?;
            headers.insert(name, value);
        }
        let dialect = match &cfg.kind {
            ProviderKind::Azure { api_version } => Dialect::Azure {
                api_version: api_version.clone(),
            },
            _ => Dialect::OpenAi,
        };
        if let Some(key) = &cfg.api_key {
            let (name, text) = match dialect {
                Dialect::OpenAi => (http::header::AUTHORIZATION, format!("Bearer {key}")),
                Dialect::Azure { .. } => (HeaderName::from_static("api-key"), key.clone()),
            };
            let mut value = HeaderValue::from_str(&text).map_err(|_| {
                ProviderError::InvalidResponse("API key is not a valid header value".into())
            })?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(cfg.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .user_agent(concat!("aigw/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ProviderError::Connect(e.to_string()))?;
        let mut health_url = format!("{}{}", cfg.base_url, cfg.health_path);
        if let Dialect::Azure { api_version } = &dialect {
            health_url = with_api_version(&health_url, api_version);
        }
        Ok(Self {
            name: cfg.name.clone(),
            base_url: cfg.base_url.clone(),
            health_url,
            timeout: cfg.timeout,
            client,
            dialect,
        })
    }

    /// The URL of an endpoint (`/chat/completions`) for `model`.
    fn url(&self, path: &str, model: &str) -> String {
        match &self.dialect {
            Dialect::OpenAi => format!("{}{path}", self.base_url),
            Dialect::Azure { api_version } => with_api_version(
                &format!(
                    "{}/openai/deployments/{}{path}",
                    self.base_url,
                    path_segment(model)
                ),
                api_version,
            ),
        }
    }

    fn is_azure(&self) -> bool {
        matches!(self.dialect, Dialect::Azure { .. })
    }

    fn post(&self, path: &str, model: &str, ctx: &CallContext) -> reqwest::RequestBuilder {
        let mut rb = self.client.post(self.url(path, model));

        if let Some(id) = &ctx.request_id {
            rb = rb.header("x-request-id", id);
        }
        for (name, value) in ctx.headers.iter() {
            rb = rb.header(name, value);
        }
        rb
    }

    /// The limit on one call: the deployment's, else the provider's.
    fn timeout(&self, ctx: &CallContext) -> Duration {
        ctx.timeout.unwrap_or(self.timeout)
    }

    async fn post_json<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        path: &str,
        model: &str,
        req: &Req,
        ctx: &CallContext,
    ) -> Result<Resp, ProviderError> {
        let body =
            serde_json::to_vec(req).map_err(|e| ProviderError::InvalidResponse(e.to_string()))?;
        let resp = self
            .post(path, model, ctx)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body)
            .timeout(self.timeout(ctx))
            .send()
            .await
            .map_err(map_reqwest)?;
        let resp = check_status(resp).await?;
        let bytes = resp.bytes().await.map_err(map_reqwest)?;
        serde_json::from_slice(&bytes).map_err(|e| ProviderError::InvalidResponse(e.to_string()))
    }

    async fn post_stream<Req: Serialize, Chunk: DeserializeOwned + Send + 'static>(
        &self,
        path: &str,
        model: &str,
        req: &Req,
        ctx: &CallContext,
    ) -> Result<ChunkStream<Chunk>, ProviderError> {
        let body =
            serde_json::to_vec(req).map_err(|e| ProviderError::InvalidResponse(e.to_string()))?;
        let send = self
            .post(path, model, ctx)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "text/event-stream")
            .body(body)
            .send();
        let timeout = self.timeout(ctx);
        let resp = tokio::time::timeout(timeout, send)
            .await
            .map_err(|_| ProviderError::Timeout)?
            .map_err(map_reqwest)?;
        let resp = check_status(resp).await?;
        Ok(decode_sse(resp.bytes_stream(), timeout))
    }
}

/// Turns an SSE byte stream of JSON chunks into decoded chunks, ending at `[DONE]`.
fn decode_sse<Chunk: DeserializeOwned + Send + 'static>(
    bytes: impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send + 'static,
    idle_timeout: Duration,
) -> ChunkStream<Chunk> {
    struct State<S> {
        bytes: S,
        decoder: SseDecoder,
        done: bool,
    }
    let state = State {
        bytes: Box::pin(bytes),
        decoder: SseDecoder::new(),
        done: false,
    };
    futures::stream::unfold(state, move |mut st| async move {
        loop {
            if st.done {
                return None;
            }
            let event = match st.decoder.next_event() {
                Ok(Some(e)) => Some(e),
                Ok(None) => None,
                Err(e) => {
                    st.done = true;
                    return Some((Err(ProviderError::InvalidResponse(e.to_string())), st));
                }
            };
            let event = match event {
                Some(e) => e,
                None => match tokio::time::timeout(idle_timeout, st.bytes.next()).await {
                    Err(_) => {
                        st.done = true;
                        return Some((Err(ProviderError::Timeout), st));
                    }
                    Ok(Some(Ok(b))) => {
                        st.decoder.push(&b);
                        continue;
                    }
                    Ok(Some(Err(e))) => {
                        st.done = true;
                        return Some((Err(map_reqwest(e)), st));
                    }
                    Ok(None) => {
                        st.done = true;
                        match st.decoder.finish() {
                            Ok(Some(e)) if e.data != "[DONE]" => e,
                            _ => return None,
                        }
                    }
                },
            };
            if event.data == "[DONE]" {
                return None;
            }
            return Some((parse_chunk::<Chunk>(&event.data), st));
        }
    })
    .boxed()
}

fn parse_chunk<Chunk: DeserializeOwned>(data: &str) -> Result<Chunk, ProviderError> {
    match serde_json::from_str::<Chunk>(data) {
        Ok(chunk) => Ok(chunk),
        Err(parse_err) => match serde_json::from_str::<ErrorResponse>(data) {
            Ok(body) => Err(ProviderError::Status {
                status: StatusCode::BAD_GATEWAY,
                body: Some(body),
                retry_after: None,
            }),
            Err(_) => Err(ProviderError::InvalidResponse(format!(
                "bad stream chunk: {parse_err}"
            ))),
        },
    }
}

/// Maps a transport error to the provider error the pipeline reasons about.
pub(crate) fn map_reqwest(e: reqwest::Error) -> ProviderError {
    if e.is_timeout() {
        ProviderError::Timeout
    } else if e.is_connect() {
        ProviderError::Connect(e.to_string())
    } else {
        ProviderError::Transport(e.to_string())
    }
}

/// Passes a 2xx response on; turns anything else into [`ProviderError::Status`].
pub(crate) async fn check_status(
    resp: reqwest::Response,
) -> Result<reqwest::Response, ProviderError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let retry_after = retry_after(resp.headers());
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        body.extend_from_slice(&chunk);
        if body.len() >= MAX_ERROR_BODY {
            break;
        }
    }
    let parsed = parse_error_body(&body)
        .map(|mut e| {
            // Azure sends `type: null` on its 400s; clients expect a class.
            if status.is_client_error() && e.error.kind == "upstream_error" {
                e.error.kind = "invalid_request_error".into();
            }
            e
        })
        .or_else(|| {
            let text = String::from_utf8_lossy(&body)
                .trim()
                .chars()
                .take(500)
                .collect::<String>();
            (!text.is_empty()).then(|| ErrorResponse::new(text, "upstream_error", None, None))
        });
    Err(ProviderError::Status {
        status,
        body: parsed,
        retry_after,
    })
}

#[async_trait]
impl Provider for OpenAiProvider {
    fn name(&self) -> &str {
        &self.name
    }

    async fn chat(
        &self,
        mut req: ChatCompletionRequest,
        ctx: &CallContext,
    ) -> Result<ChatCompletionResponse, ProviderError> {
        req.stream = None;
        req.stream_options = None;
        let model = req.model.clone();
        let resp: ChatCompletionResponse = self
            .post_json("/chat/completions", &model, &req, ctx)
            .await?;
        if self.is_azure() {
            azure::check_completion(&resp)?;
        }
        Ok(resp)
    }

    async fn chat_stream(
        &self,
        mut req: ChatCompletionRequest,
        ctx: &CallContext,
    ) -> Result<ChunkStream<ChatCompletionChunk>, ProviderError> {
        req.stream = Some(true);
        req.stream_options
            .get_or_insert_with(StreamOptions::default)
            .include_usage = Some(true);
        let model = req.model.clone();
        let stream = self
            .post_stream("/chat/completions", &model, &req, ctx)
            .await?;
        Ok(if self.is_azure() {
            azure::map_stream(stream)
        } else {
            stream
        })
    }

    async fn completion(
        &self,
        mut req: CompletionRequest,
        ctx: &CallContext,
    ) -> Result<CompletionResponse, ProviderError> {
        req.stream = None;
        req.stream_options = None;
        self.post_json("/completions", &req.model.clone(), &req, ctx)
            .await
    }

    async fn completion_stream(
        &self,
        mut req: CompletionRequest,
        ctx: &CallContext,
    ) -> Result<ChunkStream<CompletionResponse>, ProviderError> {
        req.stream = Some(true);
        req.stream_options
            .get_or_insert_with(StreamOptions::default)
            .include_usage = Some(true);
        self.post_stream("/completions", &req.model.clone(), &req, ctx)
            .await
    }

    async fn embeddings(
        &self,
        req: EmbeddingRequest,
        ctx: &CallContext,
    ) -> Result<EmbeddingResponse, ProviderError> {
        self.post_json("/embeddings", &req.model.clone(), &req, ctx)
            .await
    }

    async fn audio(
        &self,
        req: AudioRequest,
        ctx: &CallContext,
    ) -> Result<AudioResponse, ProviderError> {
        let mut part = reqwest::multipart::Part::stream(req.file).file_name(req.file_name);
        if let Some(ct) = &req.file_content_type {
            part = part
                .mime_str(ct)
                .map_err(|e| ProviderError::InvalidResponse(e.to_string()))?;
        }
        let model = req.model;
        let mut form = reqwest::multipart::Form::new()
            .part("file", part)
            .text("model", model.clone());
        for (name, value) in req.fields {
            form = form.text(name, value);
        }
        let resp = self
            .post(
                &format!("/{}", req.task.path().trim_start_matches('/')),
                &model,
                ctx,
            )
            .multipart(form)
            .timeout(self.timeout(ctx))
            .send()
            .await
            .map_err(map_reqwest)?;
        let resp = check_status(resp).await?;
        let content_type = resp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
            .to_string();
        let body = resp.bytes().await.map_err(map_reqwest)?;
        let audio_secs = audio_seconds(&content_type, &body);
        Ok(AudioResponse {
            content_type,
            body,
            audio_secs,
        })
    }

    async fn health(&self) -> Result<(), ProviderError> {
        self.probe(None).await
    }

    async fn probe(&self, path: Option<&str>) -> Result<(), ProviderError> {
        let url = match (path, &self.dialect) {
            (None, _) => self.health_url.clone(),
            (Some(p), Dialect::OpenAi) => format!("{}{p}", self.base_url),
            (Some(p), Dialect::Azure { api_version }) => {
                with_api_version(&format!("{}{p}", self.base_url), api_version)
            }
        };
        let resp = self
            .client
            .get(&url)
            .timeout(self.timeout.min(Duration::from_secs(10)))
            .send()
            .await
            .map_err(map_reqwest)?;
        check_status(resp).await.map(|_| ())
    }
}

/// The upstream's `Retry-After` (seconds) or `retry-after-ms`, whichever is more precise.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    text("retry-after-ms")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_millis)
        .or_else(|| {
            text("retry-after")
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(|s| Duration::from_secs_f64(s.min(86_400.0)))
        })
}

/// Reads an error body of any of the shapes upstreams use: OpenAI's, Azure's (`type: null`,
/// numeric `code`, `innererror`), Anthropic's (`{"type":"error","error":{"type","message"}}`).
/// Keeps message, type, param and code; drops everything else.
pub(crate) fn parse_error_body(body: &[u8]) -> Option<ErrorResponse> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let error = value.get("error")?;
    let text = |key: &str| match error.get(key) {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let message = match error {
        serde_json::Value::String(s) => s.clone(),
        _ => text("message")?,
    };
    Some(ErrorResponse::new(
        message,
        text("type").unwrap_or_else(|| "upstream_error".into()),
        text("param"),
        text("code"),
    ))
}

/// Appends `api-version` to a URL.
fn with_api_version(url: &str, api_version: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}api-version={}", path_segment(api_version))
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn path_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Azure OpenAI's content filter, made OpenAI-shaped.
mod azure {
    use aigw_models::openai::{ChatCompletionChunk, ChatCompletionResponse, Extra, FinishReason};
    use futures::StreamExt;

    use super::{ChunkStream, ProviderError};

    /// The filter categories that `content_filter_results` marks `filtered: true`.
    fn filtered_categories(extra: &Extra) -> Vec<String> {
        let Some(serde_json::Value::Object(results)) = extra.get("content_filter_results") else {
            return Vec::new();
        };
        results
            .iter()
            .filter(|(_, r)| r.get("filtered").and_then(serde_json::Value::as_bool) == Some(true))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// A completion the filter cut is a 400 with `code: "content_filter"`, not a 200 with a
    /// silently truncated answer.
    pub(super) fn check_completion(resp: &ChatCompletionResponse) -> Result<(), ProviderError> {
        for choice in &resp.choices {
            let categories = filtered_categories(&choice.extra);
            if choice.finish_reason == Some(FinishReason::ContentFilter) || !categories.is_empty() {
                let which = if categories.is_empty() {
                    String::new()
                } else {
                    format!(" (categories: {})", categories.join(", "))
                };
                return Err(ProviderError::Rejected {
                    message: format!(
                        "The response was filtered by Azure OpenAI's content management policy{which}."
                    ),
                    param: None,
                    code: "content_filter",
                });
            }
        }
        Ok(())
    }

    /// Drops chunks that carry only filter annotations, ends a choice the filter stopped
    /// with `finish_reason: "content_filter"`, and drops what Azure sends for a choice after
    /// it finished (so each choice finishes once).
    pub(super) fn map_stream(
        stream: ChunkStream<ChatCompletionChunk>,
    ) -> ChunkStream<ChatCompletionChunk> {
        let mut finished = std::collections::HashSet::new();
        stream
            .filter_map(move |item| {
                std::future::ready(match item {
                    Ok(mut chunk) => {
                        chunk.choices.retain(|c| !finished.contains(&c.index));
                        for choice in &mut chunk.choices {
                            if !filtered_categories(&choice.extra).is_empty() {
                                choice.finish_reason = Some(FinishReason::ContentFilter);
                            }
                            if choice.finish_reason.is_some() {
                                finished.insert(choice.index);
                            }
                        }
                        (!chunk.choices.is_empty() || chunk.usage.is_some()).then_some(Ok(chunk))
                    }
                    Err(e) => Some(Err(e)),
                })
            })
            .boxed()
    }
}

/// The audio seconds a JSON transcription reports: `usage.seconds` (billed by duration),
/// else `duration` (`verbose_json`).
fn audio_seconds(content_type: &str, body: &[u8]) -> Option<f64> {
    if !content_type.starts_with("application/json") {
        return None;
    }
    let json: serde_json::Value = serde_json::from_slice(body).ok()?;
    let usage = &json["usage"];
    if usage["type"] == "duration"
        && let Some(secs) = usage["seconds"].as_f64()
    {
        return Some(secs);
    }
    json["duration"].as_f64()
}
