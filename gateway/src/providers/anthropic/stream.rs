//! Anthropic stream events → OpenAI chunks, one chunk per event that carries anything:
//!
//! - `message_start` → the first chunk, `role: "assistant"` and empty content;
//! - `text_delta` (and a `text` block that starts non-empty) → a content chunk;
//! - a `tool_use` block start → a chunk opening tool call `k` (0, 1, … counting tool blocks
//!   only) with its id, `type: "function"`, name and empty arguments — the only chunk of the
//!   call carrying id and name; its `input_json_delta`s → argument fragments of call `k`;
//! - `message_delta` → a chunk with the finish reason and an empty delta;
//! - `message_stop` → a last chunk with no choices and the usage, then the stream ends;
//! - `error` → an `Err` item that ends the stream;
//! - `ping`, `content_block_stop`, thinking and signature deltas and unknown events → nothing.
//!
//! Every chunk carries the message id, model and one `created` time. A stream that ends
//! before `message_stop` ends with a transport error rather than a silently cut answer.

use std::collections::HashMap;
use std::time::Duration;

use aigw_models::openai::{
    ChatCompletionChunk, ChatDelta, ChunkChoice, Extra, FinishReason, FunctionCallDelta, Role,
    ToolCallDelta,
};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::Value;

use super::error::ApiError;
use super::response::{AnthropicUsage, ContentBlock, finish_reason};
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
            Event::ContentBlockStart { .. } | Event::ContentBlockDelta { .. } | Event::Other => {
                Step::Skip
            }
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

#[cfg(test)]
mod tests;
