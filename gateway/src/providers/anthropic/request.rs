//! OpenAI chat requests → Anthropic Messages requests.
//!
//! - `system` and `developer` messages, wherever they are, become the top-level `system`
//!   (their texts joined by blank lines).
//! - `user` content: text parts → `text` blocks; `image_url` parts → `image` blocks, with a
//!   `base64` source for `data:<mime>;base64,…` URLs and a `url` source for `http(s)` ones.
//! - `assistant` messages: their text, then one `tool_use` block per tool call, whose
//!   `input` is the call's arguments parsed as JSON (empty arguments mean `{}`).
//! - `tool` messages → `tool_result` blocks in a user message.
//! - Consecutive messages of one side are merged into one message (Anthropic requires user
//!   and assistant to alternate); empty text is dropped (Anthropic refuses empty blocks).
//! - `tools` → `{name, description, input_schema}` (default `{"type":"object"}`);
//!   `tool_choice` `auto` / `none` / `required` / named → `auto` / `none` / `any` / `tool`;
//!   `parallel_tool_calls: false` → `disable_parallel_tool_use: true`.
//! - `stop` → `stop_sequences`; `max_completion_tokens`, else `max_tokens`, else the
//!   provider's default → `max_tokens`; `temperature` clamped to Anthropic's `[0, 1]`;
//!   `top_p` as is; `user` → `metadata.user_id`.

use aigw_models::openai::{
    ChatCompletionRequest, ChatMessage, ContentPart, MessageContent, ResponseFormat, Role, Tool,
    ToolChoice as OpenAiToolChoice,
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
fn content_blocks(content: Option<MessageContent>, i: usize) -> Result<Vec<Block>, ProviderError> {
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

#[cfg(test)]
mod tests;
