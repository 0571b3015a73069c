//! A llama-family transformer (llama, mistral, qwen2) whose forward pass runs a ragged batch:
//! every sequence brings its own new tokens (a prompt chunk or one decode token) and its own
//! KV cache. Projections and the MLP run once over all tokens of all sequences, so weights are
//! read once per step however many sequences decode; attention runs per sequence over its
//! own cache.

use candle_core::quantized::QMatMul;
use candle_core::{D, DType, Device, IndexOp, Module, Tensor};
use candle_nn::kv_cache::KvCache;

use super::LlmError;
use super::config::LlamaConfig;

/// Initial KV capacity of a sequence, and the step it grows by.
const KV_CHUNK: usize = 128;

/// A projection: quantized or dense weights, with an optional bias (qwen2's q/k/v).
#[derive(Debug, Clone)]
pub struct Linear {
    weight: QMatMul,
    bias: Option<Tensor>,
}

impl Linear {
    /// A projection from its weight (`[out, in]`) and optional bias (`[out]`).
    pub fn new(weight: QMatMul, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = self.weight.forward(x)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// One transformer block.
#[derive(Debug, Clone)]
pub struct Block {
    /// Pre-attention RMS norm weight.
    pub attn_norm: Tensor,
    /// Query projection.
    pub wq: Linear,
    /// Key projection.
    pub wk: Linear,
    /// Value projection.
    pub wv: Linear,
    /// Output projection.
    pub wo: Linear,
    /// Pre-MLP RMS norm weight.
    pub ffn_norm: Tensor,
    /// MLP gate projection.
    pub w_gate: Linear,
    /// MLP up projection.
    pub w_up: Linear,
    /// MLP down projection.
    pub w_down: Linear,
}

/// The whole model.
#[derive(Debug, Clone)]
pub struct LlamaModel {
    /// Hyper-parameters.
    pub config: LlamaConfig,
    embed: Tensor,
    blocks: Vec<Block>,
    norm: Tensor,
    lm_head: Linear,
    cos: Tensor,
    sin: Tensor,
    device: Device,
}

/// The KV cache of one sequence: one per block, grown in chunks.
#[derive(Debug, Clone)]
pub struct SeqCache {
    layers: Vec<KvCache>,
    len: usize,
}

impl SeqCache {
    /// Tokens already in the cache.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// One sequence's part of a step: its new tokens and its cache.
pub struct StepSeq<'a> {
    /// Tokens to append (a prompt chunk, or the last sampled token).
    pub tokens: &'a [u32],
    /// The sequence's cache, extended by this step.
    pub cache: &'a mut SeqCache,
    /// Whether the logits of the last token are wanted.
    pub want_logits: bool,
}

impl LlamaModel {
    /// Assembles a model from loaded weights.
    pub fn new(
        config: LlamaConfig,
        embed: Tensor,
        blocks: Vec<Block>,
        norm: Tensor,
        lm_head: Linear,
        device: &Device,
    ) -> Result<Self, LlmError> {
        config.validate()?;
        let (cos, sin) = rope_tables(&config, device)?;
        Ok(Self {
            config,
            embed,
            blocks,
            norm,
            lm_head,
            cos,
            sin,
            device: device.clone(),
        })
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// An empty cache for a new sequence.
    pub fn new_cache(&self) -> SeqCache {
        SeqCache {
            layers: (0..self.blocks.len())
                .map(|_| KvCache::new(1, KV_CHUNK))
                .collect(),
            len: 0,
        }
    }

    /// Runs one ragged batch step; returns the logits (`[n, vocab]`, f32) of the last token of
    /// each sequence that asked for them, in order.
    pub fn forward(&self, batch: &mut [StepSeq<'_>]) -> Result<Option<Tensor>, LlmError> {
        Ok(self.forward_inner(batch)?)
    }

    fn forward_inner(&self, batch: &mut [StepSeq<'_>]) -> candle_core::Result<Option<Tensor>> {
        let cfg = &self.config;
        let mut ids = Vec::new();
        let mut positions = Vec::new();
        for seq in batch.iter() {
            ids.extend_from_slice(seq.tokens);
            positions.extend((seq.cache.len..seq.cache.len + seq.tokens.len()).map(|p| p as u32));
        }
        let total = ids.len();
        if total == 0 {
            return Ok(None);
        }
        if let Some(&max) = positions.iter().max()
            && max as usize >= cfg.context_length
        {
            candle_core::bail!(
                "position {max} beyond the context length {}",
                cfg.context_length
            );
        }
        let ids = Tensor::new(ids.as_slice(), &self.device)?;
        let positions = Tensor::new(positions.as_slice(), &self.device)?;
        // Per-token rotation tables, shaped as a batch of one-token sequences.
        let half = cfg.head_dim / 2;
        let cos = self
            .cos
            .index_select(&positions, 0)?
            .reshape((total, 1, half))?;
        let sin = self
            .sin
            .index_select(&positions, 0)?
            .reshape((total, 1, half))?;
        let eps = cfg.rms_norm_eps as f32;
        let (nh, nkv, hd) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
        let n_rep = nh / nkv;
        let scale = 1.0 / (hd as f64).sqrt();

        let mut x = self.embed.index_select(&ids, 0)?;
        for (layer, block) in self.blocks.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &block.attn_norm, eps)?;
            let q = block.wq.forward(&h)?.reshape((total, nh, 1, hd))?;
            let k = block.wk.forward(&h)?.reshape((total, nkv, 1, hd))?;
            let v = block.wv.forward(&h)?;
            let (q, k) = if cfg.rope_interleaved {
                (
                    candle_nn::rotary_emb::rope_i(&q, &cos, &sin)?,
                    candle_nn::rotary_emb::rope_i(&k, &cos, &sin)?,
                )
            } else {
                (
                    candle_nn::rotary_emb::rope(&q, &cos, &sin)?,
                    candle_nn::rotary_emb::rope(&k, &cos, &sin)?,
                )
            };
            let q = q.reshape((total, nh, hd))?;
            let k = k.reshape((total, nkv, hd))?;
            let v = v.reshape((total, nkv, hd))?;

            let mut outs = Vec::with_capacity(batch.len());
            let mut offset = 0;
            for seq in batch.iter_mut() {
                let l = seq.tokens.len();
                let past = seq.cache.len;
                let qi = q.narrow(0, offset, l)?.transpose(0, 1)?.contiguous()?;
                let ki = k.narrow(0, offset, l)?.transpose(0, 1)?.contiguous()?;
                let vi = v.narrow(0, offset, l)?.transpose(0, 1)?.contiguous()?;
                let (kc, vc) = seq.cache.layers[layer].append(&ki, &vi)?;
                let kv_len = past + l;
                // Grouped-query attention without copying K/V: query heads sharing a KV head
                // are stacked as extra rows.
                let qi = qi.reshape((nkv, n_rep * l, hd))?;
                let scores = (qi.matmul(&kc.t()?)? * scale)?;
                let scores = if l > 1 {
                    let mask = causal_mask(l, past, &self.device)?;
                    scores
                        .reshape((nkv, n_rep, l, kv_len))?
                        .broadcast_add(&mask)?
                        .reshape((nkv, n_rep * l, kv_len))?
                } else {
                    scores
                };
                let probs = candle_nn::ops::softmax_last_dim(&scores)?;
                let out = probs.matmul(&vc)?; // [nkv, n_rep*l, hd]
                let out = out
                    .reshape((nh, l, hd))?
                    .transpose(0, 1)?
                    .reshape((l, nh * hd))?;
                outs.push(out);
                offset += l;
            }
            let attn = Tensor::cat(&outs, 0)?;
            x = (x + block.wo.forward(&attn)?)?;

            let h = candle_nn::ops::rms_norm(&x, &block.ffn_norm, eps)?;
            let gate = candle_nn::ops::silu(&block.w_gate.forward(&h)?)?;
            let up = block.w_up.forward(&h)?;
            x = (x + block.w_down.forward(&(gate * up)?)?)?;
        }
        for seq in batch.iter_mut() {
            seq.cache.len += seq.tokens.len();
        }

        let mut last_rows = Vec::new();
        let mut end = 0u32;
        for seq in batch.iter() {
            end += seq.tokens.len() as u32;
            if seq.want_logits {
                last_rows.push(end - 1);
            }
        }
        if last_rows.is_empty() {
            return Ok(None);
        }
        let rows = Tensor::new(last_rows.as_slice(), &self.device)?;
        let h = x.index_select(&rows, 0)?;
        let h = candle_nn::ops::rms_norm(&h, &self.norm, eps)?;
        let logits = self.lm_head.forward(&h)?.to_dtype(DType::F32)?;
        Ok(Some(logits))
    }
}

/// Additive causal mask for `l` new tokens after `past` cached ones: `[l, past + l]`.
fn causal_mask(l: usize, past: usize, device: &Device) -> candle_core::Result<Tensor> {
    let kv_len = past + l;
    let data: Vec<f32> = (0..l)
        .flat_map(|i| {
            (0..kv_len).map(move |j| {
                if j <= past + i {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    Tensor::from_vec(data, (l, kv_len), device)
}

fn rope_tables(cfg: &LlamaConfig, device: &Device) -> Result<(Tensor, Tensor), LlmError> {
    let half = cfg.head_dim / 2;
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| 1.0 / cfg.rope_theta.powf((2 * i) as f32 / cfg.head_dim as f32))
        .collect();
    let n = cfg.context_length;
    let mut cos = Vec::with_capacity(n * half);
    let mut sin = Vec::with_capacity(n * half);
    for p in 0..n {
        for f in &inv_freq {
            let angle = p as f32 * f;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    let cos = Tensor::from_vec(cos, (n, half), device)?;
    let sin = Tensor::from_vec(sin, (n, half), device)?;
    Ok((cos, sin))
}

/// The index of the largest value of each row of `[n, vocab]` logits.
pub fn argmax_rows(logits: &Tensor) -> Result<Vec<u32>, LlmError> {
    Ok(logits.argmax(D::Minus1)?.to_vec1::<u32>()?)
}

/// Copies one row of logits to the host.
pub fn row(logits: &Tensor, i: usize) -> Result<Vec<f32>, LlmError> {
    Ok(logits.i(i)?.to_vec1::<f32>()?)
}
