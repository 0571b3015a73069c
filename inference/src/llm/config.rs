//! The shape of a llama-family model, read from GGUF metadata or an HF `config.json`.

use candle_core::quantized::gguf_file;
use serde::Deserialize;

use super::LlmError;

/// Architecture hyper-parameters shared by llama, mistral and qwen2.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// `llama`, `mistral` or `qwen2`.
    pub architecture: String,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// Transformer blocks.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than query heads).
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// RMS norm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base frequency.
    pub rope_theta: f32,
    /// Whether RoPE rotates interleaved pairs (GGUF llama layout) or the two halves (HF layout).
    pub rope_interleaved: bool,
    /// Longest sequence the model was trained for.
    pub context_length: usize,
}

fn md<'a>(ct: &'a gguf_file::Content, key: &str) -> Result<&'a gguf_file::Value, LlmError> {
    ct.metadata
        .get(key)
        .ok_or_else(|| LlmError::Format(format!("GGUF metadata has no `{key}`")))
}

fn md_u32(ct: &gguf_file::Content, key: &str) -> Result<usize, LlmError> {
    md(ct, key)?
        .to_u32()
        .map(|v| v as usize)
        .map_err(|e| LlmError::Format(format!("GGUF `{key}`: {e}")))
}

impl LlamaConfig {
    /// Reads the hyper-parameters of a GGUF file.
    pub fn from_gguf(ct: &gguf_file::Content) -> Result<Self, LlmError> {
        let arch = md(ct, "general.architecture")?
            .to_string()
            .map_err(|e| LlmError::Format(e.to_string()))?
            .clone();
        if !matches!(arch.as_str(), "llama" | "mistral" | "qwen2") {
            return Err(LlmError::Format(format!(
                "unsupported GGUF architecture `{arch}` (llama, mistral and qwen2 are)"
            )));
        }
        let key = |k: &str| format!("{arch}.{k}");
        let hidden_size = md_u32(ct, &key("embedding_length"))?;
        let num_heads = md_u32(ct, &key("attention.head_count"))?;
        let vocab_size = match ct.metadata.get("tokenizer.ggml.tokens") {
            Some(v) => v.to_vec().map(Vec::len).unwrap_or(0),
            None => 0,
        };
        Ok(Self {
            vocab_size,
            hidden_size,
            intermediate_size: md_u32(ct, &key("feed_forward_length"))?,
            num_layers: md_u32(ct, &key("block_count"))?,
            num_heads,
            num_kv_heads: md_u32(ct, &key("attention.head_count_kv")).unwrap_or(num_heads),
            head_dim: md_u32(ct, &key("rope.dimension_count")).unwrap_or(hidden_size / num_heads),
            rms_norm_eps: md(ct, &key("attention.layer_norm_rms_epsilon"))?
                .to_f32()
                .map(f64::from)
                .map_err(|e| LlmError::Format(e.to_string()))?,
            rope_theta: md(ct, &key("rope.freq_base"))
                .and_then(|v| v.to_f32().map_err(|e| LlmError::Format(e.to_string())))
                .unwrap_or(10_000.0),
            // llama.cpp's converter permutes q/k of llama-style models to rotate interleaved
            // pairs; qwen2 keeps the halves layout.
            rope_interleaved: arch != "qwen2",
            context_length: md_u32(ct, &key("context_length")).unwrap_or(2048),
            architecture: arch,
        })
    }

    /// Reads the hyper-parameters of an HF `config.json`.
    pub fn from_hf_json(text: &str) -> Result<Self, LlmError> {
        let c: HfConfig = serde_json::from_str(text)
            .map_err(|e| LlmError::Format(format!("config.json: {e}")))?;
        if !matches!(c.model_type.as_str(), "llama" | "mistral" | "qwen2") {
            return Err(LlmError::Format(format!(
                "unsupported model_type `{}` (llama, mistral and qwen2 are)",
                c.model_type
            )));
        }
        let num_kv_heads = c.num_key_value_heads.unwrap_or(c.num_attention_heads);
        Ok(Self {
            architecture: c.model_type,
            vocab_size: c.vocab_size,
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            num_layers: c.num_hidden_layers,
            num_heads: c.num_attention_heads,
            num_kv_heads,
            head_dim: c.head_dim.unwrap_or(c.hidden_size / c.num_attention_heads),
            rms_norm_eps: c.rms_norm_eps,
            rope_theta: c.rope_theta.unwrap_or(10_000.0),
            rope_interleaved: false,
            context_length: c.max_position_embeddings.unwrap_or(2048),
        })
    }

    /// Checks that the shapes fit together.
    pub fn validate(&self) -> Result<(), LlmError> {
        if self.num_heads == 0
            || self.num_kv_heads == 0
            || !self.num_heads.is_multiple_of(self.num_kv_heads)
            || !self.head_dim.is_multiple_of(2)
        {
            return Err(LlmError::Format(format!(
                "inconsistent attention shape: {} heads, {} kv heads, head dim {}",
                self.num_heads, self.num_kv_heads, self.head_dim
            )));
        }
        Ok(())
    }
}

/// The keys of an HF `config.json` that matter here.
#[derive(Debug, Deserialize)]
pub(crate) struct HfConfig {
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub rms_norm_eps: f64,
    pub rope_theta: Option<f32>,
    pub max_position_embeddings: Option<usize>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<serde_json::Value>,
}
