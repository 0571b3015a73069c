//! `POST /v1/completions`: the legacy text completion API.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::common::{check_model, check_range, check_sampling};
use super::{Extra, FinishReason, InvalidParam, StopSequences, StreamOptions, Usage};

/// A prompt: text, several texts, token ids, or several token-id lists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Prompt {
    /// One text prompt.
    Text(String),
    /// Several text prompts.
    Texts(Vec<String>),
    /// One prompt as token ids.
    Tokens(Vec<u32>),
    /// Several prompts as token ids.
    TokenLists(Vec<Vec<u32>>),
}

impl Prompt {
    /// How many prompts this is.
    pub fn len(&self) -> usize {
        match self {
            Self::Text(_) | Self::Tokens(_) => 1,
            Self::Texts(v) => v.len(),
            Self::TokenLists(v) => v.len(),
        }
    }

    /// Whether there is no prompt at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A text completion request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CompletionRequest {
    /// Model (alias) to use.
    pub model: String,
    /// The prompt(s).
    pub prompt: Prompt,
    /// Text after the completion (insertion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
    /// Upper bound on generated tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Sampling temperature, 0 to 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Nucleus sampling mass, 0 to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Completions per prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    /// Stream the answer as server-sent events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Options of the stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// Log probabilities of this many most likely tokens, 0 to 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<u32>,
    /// Echo the prompt in the completion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub echo: Option<bool>,
    /// Sequences where generation stops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<StopSequences>,
    /// Penalty on tokens already present, -2 to 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
    /// Penalty proportional to token frequency, -2 to 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f64>,
    /// Generate this many server-side and return the best `n`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_of: Option<u32>,
    /// Bias added to the logits of token ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logit_bias: Option<BTreeMap<String, f64>>,
    /// Seed for best-effort deterministic sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    /// End-user identifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Fields the gateway does not model; passed to the upstream unchanged.
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

impl CompletionRequest {
    /// Whether the client asked for a stream.
    pub fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    /// Whether the client asked for a final usage chunk.
    pub fn wants_stream_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
    }

    /// Checks the semantic rules that the types alone do not enforce.
    pub fn validate(&self) -> Result<(), InvalidParam> {
        check_model(&self.model)?;
        if self.prompt.is_empty() {
            return Err(InvalidParam::new(
                "prompt",
                "Invalid 'prompt': empty array.",
            ));
        }
        check_sampling(
            self.temperature,
            self.top_p,
            self.presence_penalty,
            self.frequency_penalty,
            self.n,
            self.stop.as_ref(),
        )?;
        check_range("logprobs", self.logprobs.map(f64::from), 0.0, 5.0)?;
        if self.stream_options.is_some() && !self.is_stream() {
            return Err(InvalidParam::new(
                "stream_options",
                "'stream_options' is only allowed when 'stream' is true.",
            ));
        }
        Ok(())
    }
}

/// A text completion, also the shape of each stream chunk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CompletionResponse {
    /// Completion id.
    pub id: String,
    /// Always `text_completion`.
    pub object: String,
    /// UNIX seconds.
    pub created: u64,
    /// The model alias that served the request.
    pub model: String,
    /// Generated choices.
    pub choices: Vec<CompletionChoice>,
    /// Token usage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Backend configuration fingerprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_fingerprint: Option<String>,
    /// Fields not modelled here.
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

/// One generated text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CompletionChoice {
    /// The text (a fragment, in a stream).
    pub text: String,
    /// Choice index.
    pub index: u32,
    /// Log probabilities, when requested.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub logprobs: Option<serde_json::Value>,
    /// Why generation stopped.
    #[serde(default)]
    pub finish_reason: Option<FinishReason>,
    /// Fields not modelled here.
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_shapes() {
        for (json, len) in [
            (r#""a""#, 1),
            (r#"["a","b"]"#, 2),
            (r#"[1,2,3]"#, 1),
            (r#"[[1],[2]]"#, 2),
        ] {
            let p: Prompt = serde_json::from_str(json).unwrap();
            assert_eq!(p.len(), len, "{json}");
        }
    }
}
