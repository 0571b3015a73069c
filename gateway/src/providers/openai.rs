//! The OpenAI-compatible upstream: OpenAI itself, vLLM, llama.cpp's server, another aigw.
//!
//! One pooled keep-alive `reqwest` client per provider. Non-streaming calls are bounded by
//! the provider's timeout; streams by the same timeout on the response head and on the
//! silence between chunks, and are re-emitted chunk by chunk as they arrive.

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

/// Most bytes of an upstream error body read for the error message.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// An OpenAI-compatible HTTP upstream.
pub struct OpenAiProvider {
    name: String,
    base_url: String,
    health_url: String,
    timeout: Duration,
    client: reqwest::Client,
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
        if let Some(key) = &cfg.api_key {
            let mut value = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
                ProviderError::InvalidResponse("API key is not a valid header value".into())
            })?;
            value.set_sensitive(true);
            headers.insert(http::header::AUTHORIZATION, value);
        }
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(cfg.connect_timeout)
            .read_timeout(cfg.timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .user_agent(concat!("aigw/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ProviderError::Connect(e.to_string()))?;
        Ok(Self {
            name: cfg.name.clone(),
            base_url: cfg.base_url.clone(),
            health_url: format!("{}{}", cfg.base_url, cfg.health_path),
            timeout: cfg.timeout,
            client,
        })
    }

    fn post(&self, path: &str, ctx: &CallContext) -> reqwest::RequestBuilder {
        let mut rb = self.client.post(format!("{}{path}", self.base_url));
        if let Some(id) = &ctx.request_id {
            rb = rb.header("x-request-id", id);
        }
        rb
    }

    async fn post_json<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        path: &str,
        req: &Req,
        ctx: &CallContext,
    ) -> Result<Resp, ProviderError> {
        let body =
            serde_json::to_vec(req).map_err(|e| ProviderError::InvalidResponse(e.to_string()))?;
        let resp = self
            .post(path, ctx)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body)
            .timeout(self.timeout)
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
        req: &Req,
        ctx: &CallContext,
    ) -> Result<ChunkStream<Chunk>, ProviderError> {
        let body =
            serde_json::to_vec(req).map_err(|e| ProviderError::InvalidResponse(e.to_string()))?;
        let send = self
            .post(path, ctx)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "text/event-stream")
            .body(body)
            .send();
        let resp = tokio::time::timeout(self.timeout, send)
            .await
            .map_err(|_| ProviderError::Timeout)?
            .map_err(map_reqwest)?;
        let resp = check_status(resp).await?;
        Ok(decode_sse(resp.bytes_stream(), self.timeout))
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
    let retry_after = resp
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        body.extend_from_slice(&chunk);
        if body.len() >= MAX_ERROR_BODY {
            break;
        }
    }
    let parsed = serde_json::from_slice::<ErrorResponse>(&body)
        .ok()
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
        self.post_json("/chat/completions", &req, ctx).await
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
        self.post_stream("/chat/completions", &req, ctx).await
    }

    async fn completion(
        &self,
        mut req: CompletionRequest,
        ctx: &CallContext,
    ) -> Result<CompletionResponse, ProviderError> {
        req.stream = None;
        req.stream_options = None;
        self.post_json("/completions", &req, ctx).await
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
        self.post_stream("/completions", &req, ctx).await
    }

    async fn embeddings(
        &self,
        req: EmbeddingRequest,
        ctx: &CallContext,
    ) -> Result<EmbeddingResponse, ProviderError> {
        self.post_json("/embeddings", &req, ctx).await
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
        let mut form = reqwest::multipart::Form::new()
            .part("file", part)
            .text("model", req.model);
        for (name, value) in req.fields {
            form = form.text(name, value);
        }
        let resp = self
            .post(
                &format!("/{}", req.task.path().trim_start_matches('/')),
                ctx,
            )
            .multipart(form)
            .timeout(self.timeout)
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
        Ok(AudioResponse { content_type, body })
    }

    async fn health(&self) -> Result<(), ProviderError> {
        let resp = self
            .client
            .get(&self.health_url)
            .timeout(self.timeout.min(Duration::from_secs(10)))
            .send()
            .await
            .map_err(map_reqwest)?;
        check_status(resp).await.map(|_| ())
    }
}
