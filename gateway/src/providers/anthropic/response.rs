//! Anthropic answers → OpenAI chat completions.
//!
//! Text blocks are concatenated into `message.content`; `tool_use` blocks become
//! `tool_calls` (arguments: the input as a JSON string); other blocks (thinking, server
//! tools) are dropped. `stop_reason` `end_turn` / `stop_sequence` → `stop`, `max_tokens` /
//! `model_context_window_exceeded` → `length`, `tool_use` → `tool_calls`, `refusal` →
//! `content_filter`, anything else verbatim. Prompt tokens count cache writes and reads too;
//! cache reads are also reported as `prompt_tokens_details.cached_tokens`.

use aigw_models::openai::{
    ChatChoice, ChatCompletionResponse, ChatMessage, Extra, FinishReason, FunctionCall,
    MessageContent, Role, ToolCall, Usage,
};
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
        let prompt =
            self.input_tokens.unwrap_or(0) + self.cache_creation_input_tokens.unwrap_or(0) + cached;
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
    let content = (!text.is_empty() || tool_calls.is_empty()).then_some(MessageContent::Text(text));
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

#[cfg(test)]
mod tests {
    use aigw_models::openai::FinishReason;
    use serde_json::{Value, json};

    use super::{MessagesResponse, finish_reason, translate};

    fn anthropic_message(content: Value, stop_reason: &str) -> MessagesResponse {
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
        let resp = translate(
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
        let resp = translate(
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
            assert_eq!(finish_reason(stop), finish, "{stop}");
        }
    }
}
