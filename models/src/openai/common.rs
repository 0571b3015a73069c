//! Pieces shared by several endpoints: usage, stop sequences, finish reasons, validation.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Extra;

/// Token accounting of one request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Usage {
    /// Tokens in the prompt.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Tokens generated.
    #[serde(default)]
    pub completion_tokens: u64,
    /// `prompt_tokens + completion_tokens`.
    #[serde(default)]
    pub total_tokens: u64,
    /// Breakdown of prompt tokens (cached, audio), as the upstream reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub prompt_tokens_details: Option<serde_json::Value>,
    /// Breakdown of completion tokens (reasoning, audio), as the upstream reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub completion_tokens_details: Option<serde_json::Value>,
    /// Fields not modelled here.
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

impl Usage {
    /// Usage with the given counts and a computed total.
    pub fn new(prompt_tokens: u64, completion_tokens: u64) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            ..Self::default()
        }
    }
}

/// Up to four sequences where generation stops.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum StopSequences {
    /// A single stop sequence.
    One(String),
    /// Several stop sequences.
    Many(Vec<String>),
}

impl StopSequences {
    /// The sequences as a list.
    pub fn as_slice(&self) -> &[String] {
        match self {
            Self::One(s) => std::slice::from_ref(s),
            Self::Many(v) => v,
        }
    }
}

/// Options of a streamed response.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StreamOptions {
    /// Send a last chunk with the usage of the whole request and empty `choices`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_usage: Option<bool>,
    /// Fields not modelled here.
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

/// Why a choice stopped generating.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// A natural stop point or a stop sequence.
    Stop,
    /// `max_tokens` or the context length was reached.
    Length,
    /// The model called one or more tools.
    ToolCalls,
    /// Content was omitted by a content filter.
    ContentFilter,
    /// Deprecated: the model called a function.
    FunctionCall,
    /// Any other reason an upstream reports, kept verbatim.
    #[serde(untagged)]
    Other(String),
}

/// A request field that failed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidParam {
    /// Path of the field (`messages[0].content`).
    pub param: String,
    /// What is wrong with it.
    pub message: String,
}

impl InvalidParam {
    /// A validation failure of `param`.
    pub fn new(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            param: param.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for InvalidParam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for InvalidParam {}

/// Checks that an optional number lies in `[lo, hi]`.
pub(crate) fn check_range(
    param: &str,
    value: Option<f64>,
    lo: f64,
    hi: f64,
) -> Result<(), InvalidParam> {
    match value {
        Some(v) if !(lo..=hi).contains(&v) => Err(InvalidParam::new(
            param,
            format!("Invalid value for '{param}': {v} is outside [{lo}, {hi}]."),
        )),
        _ => Ok(()),
    }
}

/// Checks the shared sampling and stop parameters.
pub(crate) fn check_sampling(
    temperature: Option<f64>,
    top_p: Option<f64>,
    presence_penalty: Option<f64>,
    frequency_penalty: Option<f64>,
    n: Option<u32>,
    stop: Option<&StopSequences>,
) -> Result<(), InvalidParam> {
    check_range("temperature", temperature, 0.0, 2.0)?;
    check_range("top_p", top_p, 0.0, 1.0)?;
    check_range("presence_penalty", presence_penalty, -2.0, 2.0)?;
    check_range("frequency_penalty", frequency_penalty, -2.0, 2.0)?;
    if let Some(n) = n
        && !(1..=128).contains(&n)
    {
        return Err(InvalidParam::new(
            "n",
            format!("Invalid value for 'n': {n} is outside [1, 128]."),
        ));
    }
    if let Some(stop) = stop
        && stop.as_slice().len() > 4
    {
        return Err(InvalidParam::new(
            "stop",
            "Invalid value for 'stop': at most 4 stop sequences are allowed.",
        ));
    }
    Ok(())
}

/// Checks that a model name was given.
pub(crate) fn check_model(model: &str) -> Result<(), InvalidParam> {
    if model.trim().is_empty() {
        return Err(InvalidParam::new(
            "model",
            "You must provide a model parameter.",
        ));
    }
    Ok(())
}
