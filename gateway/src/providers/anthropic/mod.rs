//! Anthropic's Messages API (`POST /v1/messages`) behind the OpenAI chat surface: requests
//! are translated OpenAI → Anthropic, answers and stream events Anthropic → OpenAI, so a
//! client cannot tell which upstream served it.
//!
//! One pooled keep-alive `reqwest` client per provider, sending `x-api-key` and
//! `anthropic-version` on every call. Non-streaming calls are bounded by the call's timeout;
//! streams by the same timeout on the response head and on the silence between events
//! (Anthropic sends `ping` events, so a live stream is never silent for long).
//!
//! What is translated, and how, is documented in the submodules: `request` (OpenAI →
//! Anthropic), `response` (answers), `stream` (events → chunks) and `error` (error bodies
//! and statuses). In short:
//!
//! - **Rejected** with a 400 naming the parameter, because Anthropic cannot honour it and
//!   dropping it would silently change what the client gets: `n > 1`, `logprobs`,
//!   `top_logprobs`, `response_format` other than `text`, audio, file and unknown content
//!   parts, image URLs that are neither `https?://` nor base64 `data:`, tools that are not
//!   functions, the deprecated `function` role, tool-call arguments that are not a JSON
//!   object, a non-zero `presence_penalty` or `frequency_penalty`, and a non-empty
//!   `logit_bias`.
//! - **Ignored**: `seed` (best effort by definition, and Anthropic has none), zero penalties
//!   and an empty `logit_bias` (the neutral values some SDKs always send), `metadata`
//!   (Anthropic keeps only a user id, which comes from `user`), message `name`s, image
//!   `detail`, tool `strict`, `stream_options` (usage is always reported at the end of a
//!   stream; the pipeline drops it when the client did not ask), and request fields the
//!   gateway does not model, except Anthropic's own `top_k` and `thinking`, which are passed
//!   through. (Anthropic rejects unknown fields, so passing OpenAI-only extras such as
//!   `reasoning_effort` would turn them into errors.)

mod error;
mod request;
mod response;
mod stream;

use std::time::Duration;

use aigw_models::openai::{
    ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse, unix_now,
};
use async_trait::async_trait;
use http::{HeaderMap, HeaderName, HeaderValue};

use self::error::check_status;
use super::openai::map_reqwest;
use super::{CallContext, ChunkStream, Provider, ProviderError};
use crate::config::{ProviderConfig, ProviderKind};

/// An Anthropic Messages API upstream.
pub struct AnthropicProvider {
    name: String,
    messages_url: String,
    health_url: String,
    timeout: Duration,
    default_max_tokens: u32,
    client: reqwest::Client,
}

impl AnthropicProvider {
    /// Builds the provider and its connection pool; `cfg.kind` must be
    /// [`ProviderKind::Anthropic`].
    pub fn new(cfg: &ProviderConfig) -> Result<Self, ProviderError> {
        let ProviderKind::Anthropic {
            version,
            default_max_tokens,
        } = &cfg.kind
        else {
            return Err(ProviderError::InvalidResponse(format!(
                "provider {} is not an Anthropic provider",
                cfg.name
            )));
        };
        let invalid = |what: &str, e: &dyn std::fmt::Display| {
            ProviderError::InvalidResponse(format!("{what}: {e}"))
        };
        let mut headers = HeaderMap::new();
        for (name, value) in &cfg.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| invalid(&format!("header name {name}"), &e))?;
            let value =
                HeaderValue::from_str(value).map_err(|e| invalid(&format!("header {name}"), &e))?;
            headers.insert(name, value);
        }
        let version =
            HeaderValue::from_str(version).map_err(|e| invalid("anthropic-version", &e))?;
        headers.insert(HeaderName::from_static("anthropic-version"), version);
        if let Some(key) = &cfg.api_key {
            let mut value = HeaderValue::from_str(key).map_err(|_| {
                ProviderError::InvalidResponse("API key is not a valid header value".into())
            })?;
            value.set_sensitive(true);
            headers.insert(HeaderName::from_static("x-api-key"), value);
        }
        // No client-wide read timeout: the per-call limit (which may exceed the provider's)
        // is applied to each request and, for streams, to each wait for the next bytes.
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(cfg.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .user_agent(concat!("aigw/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ProviderError::Connect(e.to_string()))?;
        Ok(Self {
            name: cfg.name.clone(),
            messages_url: format!("{}/v1/messages", cfg.base_url),
            health_url: format!("{}{}", cfg.base_url, cfg.health_path),
            timeout: cfg.timeout,
            default_max_tokens: *default_max_tokens,
            client,
        })
    }

    /// The limit on one call: the deployment's, else the provider's.
    fn timeout(&self, ctx: &CallContext) -> Duration {
        ctx.timeout.unwrap_or(self.timeout)
    }

    /// A `POST /v1/messages` of the translated request, with the call's headers.
    fn post(
        &self,
        req: ChatCompletionRequest,
        stream: bool,
        ctx: &CallContext,
    ) -> Result<reqwest::RequestBuilder, ProviderError> {
        let body = request::translate(req, self.default_max_tokens, stream)?;
        let body =
            serde_json::to_vec(&body).map_err(|e| ProviderError::InvalidResponse(e.to_string()))?;
        let mut rb = self
            .client
            .post(&self.messages_url)
            .header(http::header::CONTENT_TYPE, "application/json");
        if let Some(id) = &ctx.request_id {
            rb = rb.header("x-request-id", id);
        }
        for (name, value) in ctx.headers.iter() {
            rb = rb.header(name, value);
        }
        Ok(rb.body(body))
    }
}

#[async_trait]
impl Provider for AnthropicProvider {
    fn name(&self) -> &str {
        &self.name
    }

    async fn chat(
        &self,
        req: ChatCompletionRequest,
        ctx: &CallContext,
    ) -> Result<ChatCompletionResponse, ProviderError> {
        let resp = self
            .post(req, false, ctx)?
            .timeout(self.timeout(ctx))
            .send()
            .await
            .map_err(map_reqwest)?;
        let resp = check_status(resp).await?;
        let bytes = resp.bytes().await.map_err(map_reqwest)?;
        let message = serde_json::from_slice(&bytes)
            .map_err(|e| ProviderError::InvalidResponse(e.to_string()))?;
        Ok(response::translate(message, unix_now()))
    }

    async fn chat_stream(
        &self,
        req: ChatCompletionRequest,
        ctx: &CallContext,
    ) -> Result<ChunkStream<ChatCompletionChunk>, ProviderError> {
        let send = self
            .post(req, true, ctx)?
            .header(http::header::ACCEPT, "text/event-stream")
            .send();
        let timeout = self.timeout(ctx);
        let resp = tokio::time::timeout(timeout, send)
            .await
            .map_err(|_| ProviderError::Timeout)?
            .map_err(map_reqwest)?;
        let resp = check_status(resp).await?;
        Ok(stream::translate(resp.bytes_stream(), timeout))
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
