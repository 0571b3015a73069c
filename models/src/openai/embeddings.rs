//! `POST /v1/embeddings`, with float and base64 encodings.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::common::check_model;
use super::{Extra, InvalidParam};

/// Text or tokens to embed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum EmbeddingInput {
    /// One text.
    Text(String),
    /// Several texts.
    Texts(Vec<String>),
    /// One input as token ids.
    Tokens(Vec<u32>),
    /// Several inputs as token ids.
    TokenLists(Vec<Vec<u32>>),
}

impl EmbeddingInput {
    /// How many inputs this is.
    pub fn len(&self) -> usize {
        match self {
            Self::Text(_) | Self::Tokens(_) => 1,
            Self::Texts(v) => v.len(),
            Self::TokenLists(v) => v.len(),
        }
    }

    /// Whether there is nothing to embed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How embedding vectors are encoded in the response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EncodingFormat {
    /// A JSON array of numbers.
    #[default]
    Float,
    /// Base64 of little-endian f32 values.
    Base64,
}

/// An embeddings request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EmbeddingRequest {
    /// Model (alias) to use.
    pub model: String,
    /// What to embed.
    pub input: EmbeddingInput,
    /// `float` (default) or `base64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding_format: Option<EncodingFormat>,
    /// Truncate vectors to this many dimensions, where the model supports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<u32>,
    /// End-user identifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Fields the gateway does not model; passed to the upstream unchanged.
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

impl EmbeddingRequest {
    /// Checks the semantic rules that the types alone do not enforce.
    pub fn validate(&self) -> Result<(), InvalidParam> {
        check_model(&self.model)?;
        if self.input.is_empty() {
            return Err(InvalidParam::new("input", "Invalid 'input': empty array."));
        }
        if let EmbeddingInput::Text(t) = &self.input
            && t.is_empty()
        {
            return Err(InvalidParam::new("input", "Invalid 'input': empty string."));
        }
        if self.dimensions == Some(0) {
            return Err(InvalidParam::new(
                "dimensions",
                "Invalid 'dimensions': must be at least 1.",
            ));
        }
        Ok(())
    }
}

/// An embedding vector in either encoding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum EmbeddingVector {
    /// Numbers.
    Float(Vec<f32>),
    /// Base64 of little-endian f32 values.
    Base64(String),
}

impl EmbeddingVector {
    /// Converts to the requested encoding (a no-op when it already is).
    pub fn into_format(self, format: EncodingFormat) -> Result<Self, base64::DecodeError> {
        Ok(match (self, format) {
            (Self::Float(v), EncodingFormat::Base64) => Self::Base64(encode_f32_base64(&v)),
            (Self::Base64(s), EncodingFormat::Float) => Self::Float(decode_f32_base64(&s)?),
            (same, _) => same,
        })
    }
}

/// Base64 of the little-endian bytes of `values` (OpenAI's `base64` encoding).
pub fn encode_f32_base64(values: &[f32]) -> String {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The inverse of [`encode_f32_base64`]; trailing bytes that do not make a whole f32 are an error.
pub fn decode_f32_base64(text: &str) -> Result<Vec<f32>, base64::DecodeError> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(text)?;
    if bytes.len() % 4 != 0 {
        return Err(base64::DecodeError::InvalidLength(bytes.len()));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// One embedding of the response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Embedding {
    /// Always `embedding`.
    pub object: String,
    /// Position of the input it embeds.
    pub index: u32,
    /// The vector.
    pub embedding: EmbeddingVector,
}

/// Token usage of an embeddings request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EmbeddingUsage {
    /// Tokens in the inputs.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Same as `prompt_tokens`.
    #[serde(default)]
    pub total_tokens: u64,
}

/// The embeddings response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EmbeddingResponse {
    /// Always `list`.
    pub object: String,
    /// One embedding per input, in input order.
    pub data: Vec<Embedding>,
    /// The model alias that served the request.
    pub model: String,
    /// Token usage.
    #[serde(default)]
    pub usage: EmbeddingUsage,
    /// Fields not modelled here.
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip_matches_openai_layout() {
        let v = vec![1.0f32, -0.5, 0.25];
        let b = encode_f32_base64(&v);
        // 1.0f32 little endian is 00 00 80 3f.
        assert!(b.starts_with("AACAP"));
        assert_eq!(decode_f32_base64(&b).unwrap(), v);
        let conv = EmbeddingVector::Float(v.clone())
            .into_format(EncodingFormat::Base64)
            .unwrap();
        assert_eq!(conv, EmbeddingVector::Base64(b));
        assert!(decode_f32_base64("AAA=").is_err());
    }
}
