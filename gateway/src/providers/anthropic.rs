//! Anthropic's Messages API (`POST /v1/messages`) behind the OpenAI chat surface: requests
//! are translated OpenAI → Anthropic, answers and stream events Anthropic → OpenAI, so a
//! client cannot tell which upstream served it.
//!
//! One pooled keep-alive `reqwest` client per provider, sending `x-api-key` and
//! `anthropic-version` on every call. Non-streaming calls are bounded by the call's timeout;
//! streams by the same timeout on the response head and on the silence between events
//! (Anthropic sends `ping` events, so a live stream is never silent for long).
//!
//! What is translated, and how, is documented on the `request` (OpenAI → Anthropic),
//! `response` (answers and errors) and `stream` (events → chunks) modules below. In short:
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

use std::time::Duration;

use aigw_models::openai::{
    ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse, unix_now,
};
use async_trait::async_trait;
use futures::StreamExt;
use http::{HeaderMap, HeaderName, HeaderValue};

use super::openai::map_reqwest;
use super::{CallContext, ChunkStream, Provider, ProviderError};
use crate::config::{ProviderConfig, ProviderKind};

/// Most bytes of an upstream error body read for the error message.
const MAX_ERROR_BODY: usize = 64 * 1024;

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

/// Passes a 2xx response on; turns anything else into [`ProviderError::Status`] carrying
/// Anthropic's error type and message, OpenAI-shaped.
async fn check_status(resp: reqwest::Response) -> Result<reqwest::Response, ProviderError> {
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
    Err(ProviderError::Status {
        status: response::gateway_status(status),
        body: response::error_body(&body),
        retry_after,
    })
}

/// The upstream's `Retry-After`, in seconds (Anthropic sends it on 429 and 529).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(86_400.0)))
}

/// OpenAI chat requests → Anthropic Messages requests.
///
/// - `system` and `developer` messages, wherever they are, become the top-level `system`
///   (their texts joined by blank lines).
/// - `user` content: text parts → `text` blocks; `image_url` parts → `image` blocks, with a
///   `base64` source for `data:<mime>;base64,…` URLs and a `url` source for `http(s)` ones.
/// - `assistant` messages: their text, then one `tool_use` block per tool call, whose
///   `input` is the call's arguments parsed as JSON (empty arguments mean `{}`).
/// - `tool` messages → `tool_result` blocks in a user message.
/// - Consecutive messages of one side are merged into one message (Anthropic requires user
///   and assistant to alternate); empty text is dropped (Anthropic refuses empty blocks).
/// - `tools` → `{name, description, input_schema}` (default `{"type":"object"}`);
///   `tool_choice` `auto` / `none` / `required` / named → `auto` / `none` / `any` / `tool`;
///   `parallel_tool_calls: false` → `disable_parallel_tool_use: true`.
/// - `stop` → `stop_sequences`; `max_completion_tokens`, else `max_tokens`, else the
///   provider's default → `max_tokens`; `temperature` clamped to Anthropic's `[0, 1]`;
///   `top_p` as is; `user` → `metadata.user_id`.
mod request {
    use aigw_models::openai::{
        ChatCompletionRequest, ChatMessage, ContentPart, MessageContent, ResponseFormat, Role,
        Tool, ToolChoice as OpenAiToolChoice,
    };
    use serde::Serialize;
    use serde_json::Value;

    use super::ProviderError;

    /// Request fields the gateway does not model that Anthropic understands.
    const PASSED_THROUGH: &[&str] = &["top_k", "thinking"];

    /// The body of `POST /v1/messages`.
    #[derive(Debug, Serialize)]
    pub(super) struct MessagesRequest {
        model: String,
        max_tokens: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        system: Option<String>,
        messages: Vec<Message>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        stop_sequences: Vec<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        temperature: Option<f64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        top_p: Option<f64>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        tools: Vec<ToolDef>,
        #[serde(skip_serializing_if = "Option::is_none")]
        tool_choice: Option<ToolChoice>,
        #[serde(skip_serializing_if = "Option::is_none")]
        metadata: Option<Metadata>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        stream: bool,
        #[serde(flatten)]
        extra: serde_json::Map<String, Value>,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
    #[serde(rename_all = "lowercase")]
    enum Side {
        User,
        Assistant,
    }

    #[derive(Debug, Serialize)]
    struct Message {
        role: Side,
        content: Vec<Block>,
    }

    #[derive(Debug, Serialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    enum Block {
        Text {
            text: String,
        },
        Image {
            source: ImageSource,
        },
        ToolUse {
            id: String,
            name: String,
            input: Value,
        },
        ToolResult {
            tool_use_id: String,
            #[serde(skip_serializing_if = "Option::is_none")]
            content: Option<ToolResultContent>,
        },
    }

    #[derive(Debug, Serialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    enum ImageSource {
        Base64 { media_type: String, data: String },
        Url { url: String },
    }

    #[derive(Debug, Serialize)]
    #[serde(untagged)]
    enum ToolResultContent {
        Text(String),
        Blocks(Vec<Block>),
    }

    #[derive(Debug, Serialize)]
    struct ToolDef {
        name: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        description: Option<String>,
        input_schema: Value,
    }

    #[derive(Debug, Serialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    enum ToolChoice {
        Auto {
            #[serde(skip_serializing_if = "Option::is_none")]
            disable_parallel_tool_use: Option<bool>,
        },
        Any {
            #[serde(skip_serializing_if = "Option::is_none")]
            disable_parallel_tool_use: Option<bool>,
        },
        Tool {
            name: String,
            #[serde(skip_serializing_if = "Option::is_none")]
            disable_parallel_tool_use: Option<bool>,
        },
        #[serde(rename = "none")]
        NoTool,
    }

    #[derive(Debug, Serialize)]
    struct Metadata {
        user_id: String,
    }

    /// Translates `req`; fails with a 400 naming the parameter Anthropic cannot honour.
    pub(super) fn translate(
        req: ChatCompletionRequest,
        default_max_tokens: u32,
        stream: bool,
    ) -> Result<MessagesRequest, ProviderError> {
        reject_unsupported(&req)?;
        let mut system = Vec::new();
        let mut messages: Vec<Message> = Vec::new();
        for (i, m) in req.messages.into_iter().enumerate() {
            let (side, blocks) = match m.role {
                Role::System | Role::Developer => {
                    let text = m.content.map(|c| c.joined_text()).unwrap_or_default();
                    if !text.is_empty() {
                        system.push(text);
                    }
                    continue;
                }
                Role::User => (Side::User, content_blocks(m.content, i)?),
                Role::Assistant => (Side::Assistant, assistant_blocks(m, i)?),
                Role::Tool => (Side::User, vec![tool_result(m, i)?]),
                Role::Function => {
                    return Err(ProviderError::unsupported_param(
                        &format!("messages[{i}].role"),
                        "The deprecated 'function' role is not supported by this model; \
                         use tool calls and 'tool' messages.",
                    ));
                }
            };
            match messages.last_mut() {
                _ if blocks.is_empty() => {}
                Some(last) if last.role == side => last.content.extend(blocks),
                _ => messages.push(Message {
                    role: side,
                    content: blocks,
                }),
            }
        }
        let tools = tools(req.tools)?;
        let tool_choice = if tools.is_empty() {
            None
        } else {
            tool_choice(req.tool_choice.as_ref(), req.parallel_tool_calls)?
        };
        let extra = req
            .extra
            .into_iter()
            .filter(|(k, _)| PASSED_THROUGH.contains(&k.as_str()))
            .collect();
        Ok(MessagesRequest {
            model: req.model,
            max_tokens: req
                .max_completion_tokens
                .or(req.max_tokens)
                .unwrap_or(default_max_tokens),
            system: (!system.is_empty()).then(|| system.join("\n\n")),
            messages,
            stop_sequences: req.stop.map(|s| s.as_slice().to_vec()).unwrap_or_default(),
            temperature: req.temperature.map(|t| t.clamp(0.0, 1.0)),
            top_p: req.top_p,
            tools,
            tool_choice,
            metadata: req.user.map(|user_id| Metadata { user_id }),
            stream,
            extra,
        })
    }

    /// The parameters Anthropic has no equivalent for.
    fn reject_unsupported(req: &ChatCompletionRequest) -> Result<(), ProviderError> {
        let reject = |param: &str, message: &str| {
            Err(ProviderError::unsupported_param(param, message.to_string()))
        };
        if req.n.is_some_and(|n| n > 1) {
            return reject(
                "n",
                "This model returns one choice per request; 'n' must be 1.",
            );
        }
        if req.logprobs == Some(true) {
            return reject("logprobs", "This model does not return log probabilities.");
        }
        if req.top_logprobs.is_some() {
            return reject(
                "top_logprobs",
                "This model does not return log probabilities.",
            );
        }
        if matches!(
            req.response_format,
            Some(ResponseFormat::JsonObject | ResponseFormat::JsonSchema { .. })
        ) {
            return reject(
                "response_format",
                "This model supports only 'response_format' of type 'text'; \
                 use a tool with the schema instead.",
            );
        }
        for (param, value) in [
            ("presence_penalty", req.presence_penalty),
            ("frequency_penalty", req.frequency_penalty),
        ] {
            if value.is_some_and(|v| v != 0.0) {
                return reject(param, &format!("This model does not support '{param}'."));
            }
        }
        if req.logit_bias.as_ref().is_some_and(|b| !b.is_empty()) {
            return reject("logit_bias", "This model does not support 'logit_bias'.");
        }
        Ok(())
    }

    /// Text and image blocks of a user (or tool, or assistant) message's content.
    fn content_blocks(
        content: Option<MessageContent>,
        i: usize,
    ) -> Result<Vec<Block>, ProviderError> {
        let parts = match content {
            None => return Ok(Vec::new()),
            Some(MessageContent::Text(text)) => return Ok(text_block(text).into_iter().collect()),
            Some(MessageContent::Parts(parts)) => parts,
        };
        let mut blocks = Vec::with_capacity(parts.len());
        for (j, part) in parts.into_iter().enumerate() {
            let param = format!("messages[{i}].content[{j}]");
            match part {
                ContentPart::Text { text } | ContentPart::Refusal { refusal: text } => {
                    blocks.extend(text_block(text));
                }
                ContentPart::ImageUrl { image_url } => {
                    blocks.push(image_block(
                        image_url.url,
                        &format!("{param}.image_url.url"),
                    )?);
                }
                ContentPart::InputAudio { .. } => {
                    return Err(ProviderError::unsupported_param(
                        &param,
                        "This model does not accept audio input.",
                    ));
                }
                ContentPart::Other(value) => {
                    let kind = value
                        .get("type")
                        .and_then(Value::as_str)
                        .unwrap_or("unknown");
                    return Err(ProviderError::unsupported_param(
                        &param,
                        format!("This model does not accept content parts of type '{kind}'."),
                    ));
                }
            }
        }
        Ok(blocks)
    }

    fn text_block(text: String) -> Option<Block> {
        (!text.is_empty()).then_some(Block::Text { text })
    }

    /// An image block from a `data:<mime>;base64,…` or `http(s)://` URL.
    fn image_block(url: String, param: &str) -> Result<Block, ProviderError> {
        let source = if let Some(rest) = url.strip_prefix("data:") {
            let base64 = rest
                .split_once(',')
                .and_then(|(meta, data)| Some((meta.strip_suffix(";base64")?, data)));
            let Some((meta, data)) = base64 else {
                return Err(ProviderError::unsupported_param(
                    param,
                    "Image data URLs must be base64-encoded ('data:<mime>;base64,<data>').",
                ));
            };
            let media_type = meta.split(';').next().unwrap_or(meta).to_string();
            ImageSource::Base64 {
                media_type,
                data: data.to_string(),
            }
        } else if url.starts_with("https://") || url.starts_with("http://") {
            ImageSource::Url { url }
        } else {
            return Err(ProviderError::unsupported_param(
                param,
                "Image URLs must be http(s) URLs or base64 data URLs.",
            ));
        };
        Ok(Block::Image { source })
    }

    /// An assistant turn: its text, then its tool calls as `tool_use` blocks.
    fn assistant_blocks(m: ChatMessage, i: usize) -> Result<Vec<Block>, ProviderError> {
        let mut blocks = match (m.content, m.refusal) {
            (None, Some(refusal)) => text_block(refusal).into_iter().collect(),
            (content, _) => content_blocks(content, i)?,
        };
        for (j, call) in m.tool_calls.into_iter().flatten().enumerate() {
            let args = call.function.arguments.trim();
            let input = if args.is_empty() {
                Value::Object(serde_json::Map::new())
            } else {
                serde_json::from_str::<Value>(args)
                    .ok()
                    .filter(Value::is_object)
                    .ok_or_else(|| ProviderError::Rejected {
                        message: format!(
                            "Invalid 'messages[{i}].tool_calls[{j}].function.arguments': \
                                 expected a JSON object."
                        ),
                        param: Some(format!("messages[{i}].tool_calls[{j}].function.arguments")),
                        code: "invalid_value",
                    })?
            };
            blocks.push(Block::ToolUse {
                id: call.id,
                name: call.function.name,
                input,
            });
        }
        Ok(blocks)
    }

    /// A `tool` message as a `tool_result` block.
    fn tool_result(m: ChatMessage, i: usize) -> Result<Block, ProviderError> {
        let tool_use_id = m.tool_call_id.ok_or_else(|| {
            ProviderError::unsupported_param(
                &format!("messages[{i}].tool_call_id"),
                format!("Missing required parameter: 'messages[{i}].tool_call_id'."),
            )
        })?;
        let content = match m.content {
            Some(MessageContent::Text(text)) => {
                (!text.is_empty()).then_some(ToolResultContent::Text(text))
            }
            parts => {
                let blocks = content_blocks(parts, i)?;
                (!blocks.is_empty()).then_some(ToolResultContent::Blocks(blocks))
            }
        };
        Ok(Block::ToolResult {
            tool_use_id,
            content,
        })
    }

    fn tools(tools: Option<Vec<Tool>>) -> Result<Vec<ToolDef>, ProviderError> {
        let mut out = Vec::new();
        for (i, tool) in tools.into_iter().flatten().enumerate() {
            let Some(function) = tool.function.filter(|_| tool.kind == "function") else {
                return Err(ProviderError::unsupported_param(
                    &format!("tools[{i}].type"),
                    format!(
                        "This model supports only tools of type 'function' with a function \
                         definition (got type '{}').",
                        tool.kind
                    ),
                ));
            };
            let mut input_schema = function
                .parameters
                .unwrap_or_else(|| serde_json::json!({"type": "object"}));
            if let Value::Object(schema) = &mut input_schema {
                schema
                    .entry("type")
                    .or_insert_with(|| Value::String("object".into()));
            }
            out.push(ToolDef {
                name: function.name,
                description: function.description,
                input_schema,
            });
        }
        Ok(out)
    }

    fn tool_choice(
        choice: Option<&OpenAiToolChoice>,
        parallel_tool_calls: Option<bool>,
    ) -> Result<Option<ToolChoice>, ProviderError> {
        let disable_parallel_tool_use = (parallel_tool_calls == Some(false)).then_some(true);
        Ok(match choice {
            None => disable_parallel_tool_use.map(|d| ToolChoice::Auto {
                disable_parallel_tool_use: Some(d),
            }),
            Some(OpenAiToolChoice::Mode(mode)) => Some(match mode.as_str() {
                "auto" => ToolChoice::Auto {
                    disable_parallel_tool_use,
                },
                "required" => ToolChoice::Any {
                    disable_parallel_tool_use,
                },
                "none" => ToolChoice::NoTool,
                other => {
                    return Err(ProviderError::unsupported_param(
                        "tool_choice",
                        format!(
                            "Invalid value for 'tool_choice': '{other}' is not one of none, \
                             auto, required."
                        ),
                    ));
                }
            }),
            Some(OpenAiToolChoice::Named(named)) => Some(ToolChoice::Tool {
                name: named.function.name.clone(),
                disable_parallel_tool_use,
            }),
        })
    }
}

/// Anthropic answers and errors → OpenAI ones.
///
/// Text blocks are concatenated into `message.content`; `tool_use` blocks become
/// `tool_calls` (arguments: the input as a JSON string); other blocks (thinking, server
/// tools) are dropped. `stop_reason` `end_turn` / `stop_sequence` → `stop`, `max_tokens` /
/// `model_context_window_exceeded` → `length`, `tool_use` → `tool_calls`, `refusal` →
/// `content_filter`, anything else verbatim. Prompt tokens count cache writes and reads too;
/// cache reads are also reported as `prompt_tokens_details.cached_tokens`.
///
/// Errors keep Anthropic's `error.type` and `message`. `529 overloaded_error` becomes a 503;
/// error events in a stream get the status Anthropic would have answered with.
mod response {
    use aigw_models::openai::{
        ChatChoice, ChatCompletionResponse, ChatMessage, ErrorResponse, Extra, FinishReason,
        FunctionCall, MessageContent, Role, ToolCall, Usage,
    };
    use http::StatusCode;
    use serde::Deserialize;
    use serde_json::Value;

    /// The body of a successful `POST /v1/messages`.
    #[derive(Debug, Deserialize)]
    pub(super) struct MessagesResponse {
        id: String,
        model: String,
        #[serde(default)]
        content: Vec<ContentBlock>,
        #[serde(default)]
        stop_reason: Option<String>,
        #[serde(default)]
        usage: AnthropicUsage,
    }

    /// A content block of an answer (or the start of one in a stream).
    #[derive(Debug, Deserialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    pub(super) enum ContentBlock {
        Text {
            text: String,
        },
        ToolUse {
            id: String,
            name: String,
            #[serde(default)]
            input: Value,
        },
        #[serde(other)]
        Other,
    }

    /// Anthropic's token counts; any may be absent or null.
    #[derive(Debug, Clone, Default, Deserialize)]
    pub(super) struct AnthropicUsage {
        #[serde(default)]
        input_tokens: Option<u64>,
        #[serde(default)]
        output_tokens: Option<u64>,
        #[serde(default)]
        cache_creation_input_tokens: Option<u64>,
        #[serde(default)]
        cache_read_input_tokens: Option<u64>,
    }

    impl AnthropicUsage {
        /// Takes every count `later` reports (stream counts are cumulative).
        pub(super) fn update(&mut self, later: &Self) {
            let take = |mine: &mut Option<u64>, theirs: Option<u64>| {
                if theirs.is_some() {
                    *mine = theirs;
                }
            };
            take(&mut self.input_tokens, later.input_tokens);
            take(&mut self.output_tokens, later.output_tokens);
            take(
                &mut self.cache_creation_input_tokens,
                later.cache_creation_input_tokens,
            );
            take(
                &mut self.cache_read_input_tokens,
                later.cache_read_input_tokens,
            );
        }

        /// The OpenAI usage: cache writes and reads count as prompt tokens.
        pub(super) fn to_openai(&self) -> Usage {
            let cached = self.cache_read_input_tokens.unwrap_or(0);
            let prompt = self.input_tokens.unwrap_or(0)
                + self.cache_creation_input_tokens.unwrap_or(0)
                + cached;
            let mut usage = Usage::new(prompt, self.output_tokens.unwrap_or(0));
            if cached > 0 {
                usage.prompt_tokens_details = Some(serde_json::json!({"cached_tokens": cached}));
            }
            usage
        }
    }

    /// Anthropic's `stop_reason` as an OpenAI finish reason.
    pub(super) fn finish_reason(stop_reason: &str) -> FinishReason {
        match stop_reason {
            "end_turn" | "stop_sequence" => FinishReason::Stop,
            "max_tokens" | "model_context_window_exceeded" => FinishReason::Length,
            "tool_use" => FinishReason::ToolCalls,
            "refusal" => FinishReason::ContentFilter,
            other => FinishReason::Other(other.to_string()),
        }
    }

    /// The OpenAI completion for an Anthropic message, created at `created`.
    pub(super) fn translate(msg: MessagesResponse, created: u64) -> ChatCompletionResponse {
        let mut text = String::new();
        let mut tool_calls = Vec::new();
        for block in msg.content {
            match block {
                ContentBlock::Text { text: t } => text.push_str(&t),
                ContentBlock::ToolUse { id, name, input } => tool_calls.push(ToolCall {
                    id,
                    kind: "function".into(),
                    function: FunctionCall {
                        name,
                        arguments: input.to_string(),
                    },
                }),
                ContentBlock::Other => {}
            }
        }
        let content =
            (!text.is_empty() || tool_calls.is_empty()).then_some(MessageContent::Text(text));
        let message = ChatMessage {
            content,
            tool_calls: (!tool_calls.is_empty()).then_some(tool_calls),
            ..ChatMessage::text(Role::Assistant, "")
        };
        ChatCompletionResponse {
            id: msg.id,
            object: "chat.completion".into(),
            created,
            model: msg.model,
            choices: vec![ChatChoice {
                index: 0,
                message,
                finish_reason: msg.stop_reason.as_deref().map(finish_reason),
                logprobs: None,
                extra: Extra::new(),
            }],
            usage: Some(msg.usage.to_openai()),
            system_fingerprint: None,
            extra: Extra::new(),
        }
    }

    /// `{"type": "error", "error": {"type", "message"}}`, as a body or a stream event.
    #[derive(Debug, Deserialize)]
    pub(super) struct ErrorEnvelope {
        pub(super) error: ApiError,
    }

    /// Anthropic's error details.
    #[derive(Debug, Deserialize)]
    pub(super) struct ApiError {
        #[serde(rename = "type")]
        kind: String,
        message: String,
    }

    impl ApiError {
        /// The error as the provider error an Anthropic HTTP answer of its type would be.
        pub(super) fn into_provider_error(self) -> super::ProviderError {
            let status = match self.kind.as_str() {
                "invalid_request_error" => StatusCode::BAD_REQUEST,
                "authentication_error" => StatusCode::UNAUTHORIZED,
                "billing_error" => StatusCode::PAYMENT_REQUIRED,
                "permission_error" => StatusCode::FORBIDDEN,
                "not_found_error" => StatusCode::NOT_FOUND,
                "request_too_large" => StatusCode::PAYLOAD_TOO_LARGE,
                "rate_limit_error" => StatusCode::TOO_MANY_REQUESTS,
                "overloaded_error" => StatusCode::SERVICE_UNAVAILABLE,
                "timeout_error" => StatusCode::GATEWAY_TIMEOUT,
                "api_error" => StatusCode::INTERNAL_SERVER_ERROR,
                _ => StatusCode::BAD_GATEWAY,
            };
            super::ProviderError::Status {
                status,
                body: Some(self.into_openai()),
                retry_after: None,
            }
        }

        fn into_openai(self) -> ErrorResponse {
            ErrorResponse::new(self.message, self.kind, None, None)
        }
    }

    /// An error body as an OpenAI error: Anthropic's shape (OpenAI's parses too), else the
    /// start of the text.
    pub(super) fn error_body(body: &[u8]) -> Option<ErrorResponse> {
        if let Ok(envelope) = serde_json::from_slice::<ErrorEnvelope>(body) {
            return Some(envelope.error.into_openai());
        }
        let text = String::from_utf8_lossy(body)
            .trim()
            .chars()
            .take(500)
            .collect::<String>();
        (!text.is_empty()).then(|| ErrorResponse::new(text, "upstream_error", None, None))
    }

    /// Anthropic's non-standard `529 Overloaded` is reported as `503 Service Unavailable`.
    pub(super) fn gateway_status(status: StatusCode) -> StatusCode {
        if status.as_u16() == 529 {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            status
        }
    }
}

/// Anthropic stream events → OpenAI chunks, one chunk per event that carries anything:
///
/// - `message_start` → the first chunk, `role: "assistant"` and empty content;
/// - `text_delta` (and a `text` block that starts non-empty) → a content chunk;
/// - a `tool_use` block start → a chunk opening tool call `k` (0, 1, … counting tool blocks
///   only) with its id, `type: "function"`, name and empty arguments — the only chunk of the
///   call carrying id and name; its `input_json_delta`s → argument fragments of call `k`;
/// - `message_delta` → a chunk with the finish reason and an empty delta;
/// - `message_stop` → a last chunk with no choices and the usage, then the stream ends;
/// - `error` → an `Err` item that ends the stream;
/// - `ping`, `content_block_stop`, thinking and signature deltas and unknown events → nothing.
///
/// Every chunk carries the message id, model and one `created` time. A stream that ends
/// before `message_stop` ends with a transport error rather than a silently cut answer.
mod stream {
    use std::collections::HashMap;
    use std::time::Duration;

    use aigw_models::openai::{
        ChatCompletionChunk, ChatDelta, ChunkChoice, Extra, FinishReason, FunctionCallDelta, Role,
        ToolCallDelta,
    };
    use futures::StreamExt;
    use serde::Deserialize;
    use serde_json::Value;

    use super::response::{AnthropicUsage, ApiError, ContentBlock, finish_reason};
    use super::{ChunkStream, ProviderError, map_reqwest};
    use crate::providers::sse::SseDecoder;

    #[derive(Debug, Deserialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    enum Event {
        MessageStart {
            message: StartMessage,
        },
        ContentBlockStart {
            index: u32,
            content_block: ContentBlock,
        },
        ContentBlockDelta {
            index: u32,
            delta: Delta,
        },
        MessageDelta {
            delta: MessageDelta,
            #[serde(default)]
            usage: AnthropicUsage,
        },
        MessageStop,
        Error {
            error: ApiError,
        },
        /// `ping`, `content_block_stop` and any event type added later.
        #[serde(other)]
        Other,
    }

    #[derive(Debug, Deserialize)]
    struct StartMessage {
        id: String,
        model: String,
        #[serde(default)]
        usage: AnthropicUsage,
    }

    #[derive(Debug, Deserialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    enum Delta {
        #[serde(rename = "text_delta")]
        Text { text: String },
        #[serde(rename = "input_json_delta")]
        InputJson { partial_json: String },
        /// Thinking, signature and citation deltas.
        #[serde(other)]
        Other,
    }

    #[derive(Debug, Deserialize)]
    struct MessageDelta {
        #[serde(default)]
        stop_reason: Option<String>,
    }

    /// What one event turns into.
    #[derive(Debug)]
    pub(super) enum Step {
        /// Nothing to send.
        Skip,
        /// A chunk; more follow.
        Chunk(ChatCompletionChunk),
        /// The last chunk.
        Last(ChatCompletionChunk),
    }

    /// The state carried from event to event.
    #[derive(Debug)]
    pub(super) struct Translator {
        id: String,
        model: String,
        created: u64,
        usage: AnthropicUsage,
        /// Anthropic content block index → OpenAI tool call index.
        tool_calls: HashMap<u32, u32>,
    }

    impl Translator {
        pub(super) fn new(created: u64) -> Self {
            Self {
                id: String::new(),
                model: String::new(),
                created,
                usage: AnthropicUsage::default(),
                tool_calls: HashMap::new(),
            }
        }

        /// Translates the `data` of one event.
        pub(super) fn step(&mut self, data: &str) -> Result<Step, ProviderError> {
            let event: Event = serde_json::from_str(data)
                .map_err(|e| ProviderError::InvalidResponse(format!("bad stream event: {e}")))?;
            Ok(match event {
                Event::MessageStart { message } => {
                    self.id = message.id;
                    self.model = message.model;
                    self.usage.update(&message.usage);
                    Step::Chunk(self.chunk(ChatDelta {
                        role: Some(Role::Assistant),
                        content: Some(String::new()),
                        ..ChatDelta::default()
                    }))
                }
                Event::ContentBlockStart {
                    content_block: ContentBlock::Text { text },
                    ..
                }
                | Event::ContentBlockDelta {
                    delta: Delta::Text { text },
                    ..
                } => {
                    if text.is_empty() {
                        Step::Skip
                    } else {
                        Step::Chunk(self.chunk(ChatDelta {
                            content: Some(text),
                            ..ChatDelta::default()
                        }))
                    }
                }
                Event::ContentBlockStart {
                    index,
                    content_block: ContentBlock::ToolUse { id, name, input },
                } => {
                    let k = u32::try_from(self.tool_calls.len()).unwrap_or(u32::MAX);
                    self.tool_calls.insert(index, k);
                    // The input arrives in `input_json_delta`s; a start that already holds
                    // one (never seen, but legal) is sent whole.
                    let arguments = match input {
                        Value::Object(map) if !map.is_empty() => Value::Object(map).to_string(),
                        _ => String::new(),
                    };
                    Step::Chunk(self.tool_chunk(ToolCallDelta {
                        index: k,
                        id: Some(id),
                        kind: Some("function".into()),
                        function: Some(FunctionCallDelta {
                            name: Some(name),
                            arguments: Some(arguments),
                        }),
                    }))
                }
                Event::ContentBlockDelta {
                    index,
                    delta: Delta::InputJson { partial_json },
                } => match self.tool_calls.get(&index) {
                    Some(&k) if !partial_json.is_empty() => {
                        Step::Chunk(self.tool_chunk(ToolCallDelta {
                            index: k,
                            id: None,
                            kind: None,
                            function: Some(FunctionCallDelta {
                                name: None,
                                arguments: Some(partial_json),
                            }),
                        }))
                    }
                    _ => Step::Skip,
                },
                Event::MessageDelta { delta, usage } => {
                    self.usage.update(&usage);
                    let mut chunk = self.chunk(ChatDelta::default());
                    if let Some(choice) = chunk.choices.first_mut() {
                        choice.finish_reason = delta.stop_reason.as_deref().map(finish_reason);
                    }
                    Step::Chunk(chunk)
                }
                Event::MessageStop => {
                    let mut chunk = self.chunk(ChatDelta::default());
                    chunk.choices.clear();
                    chunk.usage = Some(self.usage.to_openai());
                    Step::Last(chunk)
                }
                Event::Error { error } => return Err(error.into_provider_error()),
                Event::ContentBlockStart { .. }
                | Event::ContentBlockDelta { .. }
                | Event::Other => Step::Skip,
            })
        }

        fn chunk(&self, delta: ChatDelta) -> ChatCompletionChunk {
            ChatCompletionChunk {
                id: self.id.clone(),
                object: "chat.completion.chunk".into(),
                created: self.created,
                model: self.model.clone(),
                choices: vec![ChunkChoice {
                    index: 0,
                    delta,
                    finish_reason: None::<FinishReason>,
                    logprobs: None,
                    extra: Extra::new(),
                }],
                usage: None,
                system_fingerprint: None,
                extra: Extra::new(),
            }
        }

        fn tool_chunk(&self, call: ToolCallDelta) -> ChatCompletionChunk {
            self.chunk(ChatDelta {
                tool_calls: Some(vec![call]),
                ..ChatDelta::default()
            })
        }
    }

    /// The decoding state of one stream.
    struct State<S> {
        bytes: S,
        decoder: SseDecoder,
        translator: Translator,
        /// The byte stream has ended.
        eof: bool,
        /// The last item has been sent.
        done: bool,
    }

    impl<S> State<S> {
        /// Ends the stream with `e`.
        fn fail(
            mut self,
            e: ProviderError,
        ) -> Option<(Result<ChatCompletionChunk, ProviderError>, Self)> {
            self.done = true;
            Some((Err(e), self))
        }
    }

    /// Turns an Anthropic SSE byte stream into OpenAI chunks, ending after `message_stop`.
    pub(super) fn translate(
        bytes: impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send + 'static,
        idle_timeout: Duration,
    ) -> ChunkStream<ChatCompletionChunk> {
        let state = State {
            bytes: Box::pin(bytes),
            decoder: SseDecoder::new(),
            translator: Translator::new(aigw_models::openai::unix_now()),
            eof: false,
            done: false,
        };
        futures::stream::unfold(state, move |mut st| async move {
            loop {
                if st.done {
                    return None;
                }
                let event = match st.decoder.next_event() {
                    Ok(Some(event)) => event,
                    Err(e) => return st.fail(ProviderError::InvalidResponse(e.to_string())),
                    Ok(None) if st.eof => match st.decoder.finish() {
                        Ok(Some(event)) => event,
                        _ => {
                            return st.fail(ProviderError::Transport(
                                "the upstream stream ended before message_stop".into(),
                            ));
                        }
                    },
                    Ok(None) => match tokio::time::timeout(idle_timeout, st.bytes.next()).await {
                        Ok(Some(Ok(b))) => {
                            st.decoder.push(&b);
                            continue;
                        }
                        Ok(None) => {
                            st.eof = true;
                            continue;
                        }
                        Ok(Some(Err(e))) => return st.fail(map_reqwest(e)),
                        Err(_) => return st.fail(ProviderError::Timeout),
                    },
                };
                match st.translator.step(&event.data) {
                    Ok(Step::Skip) => {}
                    Ok(Step::Chunk(chunk)) => return Some((Ok(chunk), st)),
                    Ok(Step::Last(chunk)) => {
                        st.done = true;
                        return Some((Ok(chunk), st));
                    }
                    Err(e) => return st.fail(e),
                }
            }
        })
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use aigw_models::openai::{
        ChatCompletionChunk, ChatCompletionRequest, FinishReason, Role, ToolCallDelta,
    };
    use http::StatusCode;
    use serde_json::{Value, json};

    use super::stream::{Step, Translator};
    use super::{ProviderError, request, response};

    fn openai(body: Value) -> ChatCompletionRequest {
        serde_json::from_value(body).unwrap()
    }

    /// The Anthropic body for an OpenAI body, with a default `max_tokens` of 1024.
    fn translated(body: Value) -> Value {
        serde_json::to_value(request::translate(openai(body), 1024, false).unwrap()).unwrap()
    }

    /// The parameter named by the rejection of an OpenAI body.
    fn rejected(body: Value) -> String {
        match request::translate(openai(body), 1024, false) {
            Err(ProviderError::Rejected { param, .. }) => param.unwrap(),
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    fn user(text: &str) -> Value {
        json!({"role": "user", "content": text})
    }

    #[test]
    fn system_and_developer_messages_become_the_system_prompt() {
        let body = translated(json!({
            "model": "claude-x",
            "messages": [
                {"role": "system", "content": "You are a dungeon master."},
                {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
                user("Describe the room."),
            ]
        }));
        assert_eq!(
            body,
            json!({
                "model": "claude-x",
                "max_tokens": 1024,
                "system": "You are a dungeon master.\n\nBe brief.",
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "Describe the room."}]}
                ]
            })
        );
    }

    #[test]
    fn consecutive_messages_of_one_side_are_merged() {
        let body = translated(json!({
            "model": "m",
            "messages": [
                user("one"),
                {"role": "system", "content": "late instruction"},
                user("two"),
                {"role": "assistant", "content": "three"},
                {"role": "assistant", "content": ""},
                {"role": "assistant", "content": "four"},
                user("five"),
            ]
        }));
        assert_eq!(body["system"], "late instruction");
        assert_eq!(
            body["messages"],
            json!([
                {"role": "user", "content": [
                    {"type": "text", "text": "one"}, {"type": "text", "text": "two"}
                ]},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "three"}, {"type": "text", "text": "four"}
                ]},
                {"role": "user", "content": [{"type": "text", "text": "five"}]},
            ])
        );
    }

    #[test]
    fn images_by_data_url_and_by_http_url() {
        let body = translated(json!({
            "model": "m",
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "Compare these maps."},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/map.jpg"}},
            ]}]
        }));
        assert_eq!(
            body["messages"][0]["content"],
            json!([
                {"type": "text", "text": "Compare these maps."},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/map.jpg"}},
            ])
        );
        for url in ["data:image/png,rawbytes", "ftp://example.com/map.jpg"] {
            let param = rejected(json!({
                "model": "m",
                "messages": [user("hi"), {"role": "user", "content": [
                    {"type": "text", "text": "see"},
                    {"type": "image_url", "image_url": {"url": url}},
                ]}]
            }));
            assert_eq!(param, "messages[1].content[1].image_url.url", "{url}");
        }
    }

    #[test]
    fn tools_and_every_tool_choice() {
        let tools = json!([
            {"type": "function", "function": {
                "name": "roll", "description": "Roll dice.",
                "parameters": {"type": "object", "properties": {"sides": {"type": "integer"}}}
            }},
            {"type": "function", "function": {"name": "shrug"}},
        ]);
        let with = |choice: Value, parallel: Value| {
            let mut req = json!({"model": "m", "messages": [user("roll")], "tools": tools});
            if !choice.is_null() {
                req["tool_choice"] = choice;
            }
            if !parallel.is_null() {
                req["parallel_tool_calls"] = parallel;
            }
            translated(req)
        };
        let body = with(Value::Null, Value::Null);
        assert_eq!(
            body["tools"],
            json!([
                {"name": "roll", "description": "Roll dice.",
                 "input_schema": {"type": "object", "properties": {"sides": {"type": "integer"}}}},
                {"name": "shrug", "input_schema": {"type": "object"}},
            ])
        );
        assert!(body.get("tool_choice").is_none());
        let cases = [
            (json!("auto"), Value::Null, json!({"type": "auto"})),
            (json!("none"), Value::Null, json!({"type": "none"})),
            (json!("required"), Value::Null, json!({"type": "any"})),
            (
                json!({"type": "function", "function": {"name": "roll"}}),
                Value::Null,
                json!({"type": "tool", "name": "roll"}),
            ),
            (
                json!("required"),
                json!(false),
                json!({"type": "any", "disable_parallel_tool_use": true}),
            ),
            (
                Value::Null,
                json!(false),
                json!({"type": "auto", "disable_parallel_tool_use": true}),
            ),
            (json!("auto"), json!(true), json!({"type": "auto"})),
        ];
        for (choice, parallel, expected) in cases {
            let body = with(choice.clone(), parallel.clone());
            assert_eq!(body["tool_choice"], expected, "{choice} {parallel}");
        }
        // Without tools there is nothing to choose from.
        let body =
            translated(json!({"model": "m", "messages": [user("hi")], "tool_choice": "none"}));
        assert!(body.get("tool_choice").is_none() && body.get("tools").is_none());
    }

    #[test]
    fn tool_calls_and_results_round_trip() {
        let body = translated(json!({
            "model": "m",
            "messages": [
                user("Roll a d20 and a d6."),
                {"role": "assistant", "content": "Rolling.", "tool_calls": [
                    {"id": "toolu_1", "type": "function", "function": {"name": "roll", "arguments": "{\"sides\":20}"}},
                    {"id": "toolu_2", "type": "function", "function": {"name": "roll", "arguments": ""}},
                ]},
                {"role": "tool", "tool_call_id": "toolu_1", "content": "17"},
                {"role": "tool", "tool_call_id": "toolu_2", "content": [{"type": "text", "text": "4"}]},
                user("Add them."),
            ]
        }));
        assert_eq!(
            body["messages"],
            json!([
                {"role": "user", "content": [{"type": "text", "text": "Roll a d20 and a d6."}]},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Rolling."},
                    {"type": "tool_use", "id": "toolu_1", "name": "roll", "input": {"sides": 20}},
                    {"type": "tool_use", "id": "toolu_2", "name": "roll", "input": {}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "17"},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": "4"}]},
                    {"type": "text", "text": "Add them."},
                ]},
            ])
        );
    }

    #[test]
    fn tool_call_arguments_must_be_a_json_object() {
        for arguments in ["{\"sides\": 20", "20", "[1]"] {
            let param = rejected(json!({
                "model": "m",
                "messages": [
                    user("roll"),
                    {"role": "assistant", "tool_calls": [
                        {"id": "a", "type": "function", "function": {"name": "roll", "arguments": "{}"}},
                        {"id": "b", "type": "function", "function": {"name": "roll", "arguments": arguments}},
                    ]},
                ]
            }));
            assert_eq!(param, "messages[1].tool_calls[1].function.arguments");
        }
    }

    #[test]
    fn sampling_limits_and_metadata() {
        let body = translated(json!({
            "model": "m",
            "messages": [user("hi")],
            "stop": "THE END",
            "temperature": 1.7,
            "top_p": 0.9,
            "max_tokens": 50,
            "user": "player-7",
            "seed": 42,
            "presence_penalty": 0.0,
            "frequency_penalty": 0,
            "logit_bias": {},
            "n": 1,
            "logprobs": false,
            "response_format": {"type": "text"},
            "metadata": {"table": "3"},
            "stream_options": {"include_usage": true},
            "top_k": 40,
            "reasoning_effort": "low",
        }));
        assert_eq!(
            body,
            json!({
                "model": "m",
                "max_tokens": 50,
                "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                "stop_sequences": ["THE END"],
                "temperature": 1.0,
                "top_p": 0.9,
                "metadata": {"user_id": "player-7"},
                "top_k": 40,
            })
        );
        let body = translated(json!({
            "model": "m", "messages": [user("hi")], "stop": ["A", "B"],
            "max_tokens": 50, "max_completion_tokens": 60, "temperature": 0.3,
        }));
        assert_eq!(body["stop_sequences"], json!(["A", "B"]));
        assert_eq!(body["max_tokens"], 60);
        assert_eq!(body["temperature"], 0.3);
        let streamed = request::translate(
            openai(json!({"model": "m", "messages": [user("hi")]})),
            7,
            true,
        );
        let streamed = serde_json::to_value(streamed.unwrap()).unwrap();
        assert_eq!(streamed["stream"], true);
        assert_eq!(streamed["max_tokens"], 7);
    }

    #[test]
    fn parameters_anthropic_cannot_honour_are_rejected() {
        let cases = [
            (json!({"n": 2}), "n"),
            (json!({"logprobs": true}), "logprobs"),
            (json!({"logprobs": true, "top_logprobs": 2}), "logprobs"),
            (json!({"top_logprobs": 2}), "top_logprobs"),
            (
                json!({"response_format": {"type": "json_object"}}),
                "response_format",
            ),
            (
                json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}),
                "response_format",
            ),
            (json!({"presence_penalty": 0.5}), "presence_penalty"),
            (json!({"frequency_penalty": -1.0}), "frequency_penalty"),
            (json!({"logit_bias": {"50256": -100}}), "logit_bias"),
            (
                json!({"messages": [{"role": "user", "content": [
                    {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
                ]}]}),
                "messages[0].content[0]",
            ),
            (
                json!({"messages": [{"role": "user", "content": [
                    {"type": "text", "text": "read"},
                    {"type": "file", "file": {"file_id": "f1"}}
                ]}]}),
                "messages[0].content[1]",
            ),
            (
                json!({"messages": [user("hi"), {"role": "function", "name": "f", "content": "x"}]}),
                "messages[1].role",
            ),
            (json!({"tools": [{"type": "web_search"}]}), "tools[0].type"),
        ];
        for (overrides, param) in cases {
            let mut body = json!({"model": "m", "messages": [user("hi")]});
            for (k, v) in overrides.as_object().unwrap() {
                body[k] = v.clone();
            }
            assert_eq!(rejected(body), param, "{overrides}");
        }
    }

    fn anthropic_message(content: Value, stop_reason: &str) -> response::MessagesResponse {
        serde_json::from_value(json!({
            "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-x",
            "content": content, "stop_reason": stop_reason, "stop_sequence": null,
            "usage": {"input_tokens": 10, "cache_creation_input_tokens": 3,
                      "cache_read_input_tokens": 5, "output_tokens": 7}
        }))
        .unwrap()
    }

    #[test]
    fn answers_become_chat_completions() {
        let resp = response::translate(
            anthropic_message(
                json!([
                    {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                    {"type": "text", "text": "The door "},
                    {"type": "text", "text": "creaks."},
                ]),
                "end_turn",
            ),
            1_700_000_000,
        );
        assert_eq!(
            serde_json::to_value(&resp).unwrap(),
            json!({
                "id": "msg_01", "object": "chat.completion", "created": 1_700_000_000u64,
                "model": "claude-x",
                "choices": [{"index": 0, "finish_reason": "stop", "logprobs": null,
                             "message": {"role": "assistant", "content": "The door creaks."}}],
                "usage": {"prompt_tokens": 18, "completion_tokens": 7, "total_tokens": 25,
                          "prompt_tokens_details": {"cached_tokens": 5}}
            })
        );
        let resp = response::translate(
            anthropic_message(
                json!([
                    {"type": "tool_use", "id": "toolu_1", "name": "roll", "input": {"sides": 20}},
                    {"type": "tool_use", "id": "toolu_2", "name": "shrug", "input": {}},
                ]),
                "tool_use",
            ),
            1,
        );
        let choice = &resp.choices[0];
        assert_eq!(choice.finish_reason, Some(FinishReason::ToolCalls));
        assert_eq!(choice.message.content, None);
        assert_eq!(
            serde_json::to_value(&choice.message.tool_calls).unwrap(),
            json!([
                {"id": "toolu_1", "type": "function", "function": {"name": "roll", "arguments": "{\"sides\":20}"}},
                {"id": "toolu_2", "type": "function", "function": {"name": "shrug", "arguments": "{}"}},
            ])
        );
    }

    #[test]
    fn stop_reasons_map_to_finish_reasons() {
        for (stop, finish) in [
            ("end_turn", FinishReason::Stop),
            ("stop_sequence", FinishReason::Stop),
            ("max_tokens", FinishReason::Length),
            ("model_context_window_exceeded", FinishReason::Length),
            ("tool_use", FinishReason::ToolCalls),
            ("refusal", FinishReason::ContentFilter),
            ("pause_turn", FinishReason::Other("pause_turn".into())),
        ] {
            assert_eq!(response::finish_reason(stop), finish, "{stop}");
        }
    }

    #[test]
    fn errors_keep_anthropic_type_and_message() {
        let body = br#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: must be positive"},"request_id":"req_1"}"#;
        let e = response::error_body(body).unwrap();
        assert_eq!(e.error.kind, "invalid_request_error");
        assert_eq!(e.error.message, "max_tokens: must be positive");
        let e = response::error_body(b"<html>bad gateway</html>").unwrap();
        assert_eq!(e.error.message, "<html>bad gateway</html>");
        assert!(response::error_body(b"  ").is_none());
        let status = |code| StatusCode::from_u16(code).unwrap();
        assert_eq!(
            response::gateway_status(status(529)),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            response::gateway_status(status(429)),
            StatusCode::TOO_MANY_REQUESTS
        );
    }

    /// Feeds event payloads to a translator; returns the chunks, and the error that ended them.
    fn run_events(events: &[Value]) -> (Vec<ChatCompletionChunk>, Option<ProviderError>, bool) {
        let mut t = Translator::new(99);
        let mut chunks = Vec::new();
        for event in events {
            match t.step(&event.to_string()) {
                Ok(Step::Skip) => {}
                Ok(Step::Chunk(c)) => chunks.push(c),
                Ok(Step::Last(c)) => {
                    chunks.push(c);
                    return (chunks, None, true);
                }
                Err(e) => return (chunks, Some(e), false),
            }
        }
        (chunks, None, false)
    }

    #[test]
    fn stream_events_become_chunks() {
        let (chunks, err, last) = run_events(&[
            json!({"type": "message_start", "message": {"id": "msg_s", "type": "message", "role": "assistant",
                "model": "claude-x", "content": [], "stop_reason": null,
                "usage": {"input_tokens": 12, "cache_read_input_tokens": 2, "output_tokens": 1}}}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "plan"}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "s"}}),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "ping"}),
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Rolling"}}),
            json!({"type": "content_block_stop", "index": 1}),
            json!({"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "toolu_a", "name": "roll", "input": {}}}),
            json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": ""}}),
            json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "{\"sid"}}),
            json!({"type": "content_block_start", "index": 3, "content_block": {"type": "tool_use", "id": "toolu_b", "name": "shrug", "input": {}}}),
            json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "es\":20}"}}),
            json!({"type": "some_future_event", "payload": 1}),
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 30}}),
            // Some hosts (Bedrock) add fields to `message_stop`.
            json!({"type": "message_stop", "amazon-bedrock-invocationMetrics": {"inputTokenCount": 14}}),
        ]);
        assert!(err.is_none() && last);
        assert!(
            chunks
                .iter()
                .all(|c| c.id == "msg_s" && c.created == 99 && c.model == "claude-x")
        );
        assert!(chunks.iter().all(|c| c.object == "chat.completion.chunk"));
        let first = &chunks[0].choices[0].delta;
        assert_eq!(
            (first.role, first.content.as_deref()),
            (Some(Role::Assistant), Some(""))
        );
        assert_eq!(
            chunks[1].choices[0].delta.content.as_deref(),
            Some("Rolling")
        );
        let calls: Vec<ToolCallDelta> = chunks[2..6]
            .iter()
            .map(|c| c.choices[0].delta.tool_calls.clone().unwrap().remove(0))
            .collect();
        assert_eq!(
            serde_json::to_value(&calls).unwrap(),
            json!([
                {"index": 0, "id": "toolu_a", "type": "function", "function": {"name": "roll", "arguments": ""}},
                {"index": 0, "function": {"arguments": "{\"sid"}},
                {"index": 1, "id": "toolu_b", "type": "function", "function": {"name": "shrug", "arguments": ""}},
                {"index": 0, "function": {"arguments": "es\":20}"}},
            ])
        );
        assert_eq!(
            chunks[6].choices[0].finish_reason,
            Some(FinishReason::ToolCalls)
        );
        assert_eq!(chunks[6].choices[0].delta, Default::default());
        let end = &chunks[7];
        assert!(end.choices.is_empty());
        let usage = end.usage.as_ref().unwrap();
        assert_eq!(
            (
                usage.prompt_tokens,
                usage.completion_tokens,
                usage.total_tokens
            ),
            (14, 30, 44)
        );
        assert_eq!(chunks.len(), 8);
    }

    #[test]
    fn stream_error_events_carry_their_status() {
        let start = json!({"type": "message_start", "message": {"id": "m", "model": "c", "usage": {"input_tokens": 1}}});
        for (kind, status) in [
            ("overloaded_error", StatusCode::SERVICE_UNAVAILABLE),
            ("rate_limit_error", StatusCode::TOO_MANY_REQUESTS),
            ("api_error", StatusCode::INTERNAL_SERVER_ERROR),
            ("invalid_request_error", StatusCode::BAD_REQUEST),
            ("authentication_error", StatusCode::UNAUTHORIZED),
            ("permission_error", StatusCode::FORBIDDEN),
            ("not_found_error", StatusCode::NOT_FOUND),
            ("request_too_large", StatusCode::PAYLOAD_TOO_LARGE),
            ("brand_new_error", StatusCode::BAD_GATEWAY),
        ] {
            let (chunks, err, _) = run_events(&[
                start.clone(),
                json!({"type": "error", "error": {"type": kind, "message": "Overloaded"}}),
            ]);
            assert_eq!(chunks.len(), 1);
            match err {
                Some(ProviderError::Status {
                    status: s,
                    body: Some(body),
                    ..
                }) => {
                    assert_eq!(s, status, "{kind}");
                    assert_eq!(
                        (body.error.kind.as_str(), body.error.message.as_str()),
                        (kind, "Overloaded")
                    );
                }
                other => panic!("{kind}: {other:?}"),
            }
        }
        let (_, err, _) = run_events(&[json!({"type": "content_block_delta"})]);
        assert!(matches!(err, Some(ProviderError::InvalidResponse(_))));
    }
}
