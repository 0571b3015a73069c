//! A llama-family transformer (llama, mistral, qwen2) whose forward pass runs a ragged batch:
//! every sequence brings its own new tokens (a prompt chunk or one decode token) and its own
//! KV cache. Projections and the MLP run once over all tokens of all sequences, so weights are
//! read once per step however many sequences decode; attention runs per sequence over its
//! own cache.

use candle_core::quantized::QMatMul;
use candle_core::{D, DType, Device, IndexOp, Module, Tensor};

use super::attention::{self, Dims, HostSeq, LayerKv};
use super::kvpool::{KvPool, PoolStep, Slot, StepShape};
use super::packed::PackedMatrix;
use super::q4::Q4Matrix;
use super::vmath;

use super::LlmError;
use super::config::LlamaConfig;

/// A projection: quantized or dense weights, with an optional bias (qwen2's q/k/v).
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
}

/// The weights of a projection.
#[derive(Debug, Clone)]
enum Weight {
    /// Dense or quantized, multiplied by candle.
    Candle(QMatMul),
    /// Q4_1 on the CPU, multiplied by [`super::q4`].
    Q4(std::sync::Arc<Q4Matrix>),
    /// Q8_0 on the CPU as two four-bit matrices whose products add up.
    Q8Split(std::sync::Arc<(Q4Matrix, Q4Matrix)>),
    /// Q4_1 or Q8_0 repacked for the AVX-512 VNNI kernels of [`super::packed`].
    Packed(std::sync::Arc<PackedMatrix>),
}

impl Linear {
    /// A projection from its weight (`[out, in]`) and optional bias (`[out]`).
    pub fn new(weight: QMatMul, bias: Option<Tensor>) -> Self {
        Self {
            weight: Weight::Candle(weight),
            bias,
        }
    }

    /// A Q8_0 projection split into two four-bit halves for this crate's CPU kernel.
    pub fn q8_split(lo: Q4Matrix, hi: Q4Matrix, bias: Option<Tensor>) -> Self {
        Self {
            weight: Weight::Q8Split(std::sync::Arc::new((lo, hi))),
            bias,
        }
    }

    /// A Q4_1 projection run by this crate's CPU kernel.
    pub fn q4(weight: Q4Matrix, bias: Option<Tensor>) -> Self {
        Self {
            weight: Weight::Q4(std::sync::Arc::new(weight)),
            bias,
        }
    }

    /// A Q4_1 or Q8_0 projection run by the AVX-512 VNNI kernels.
    pub fn packed(weight: PackedMatrix, bias: Option<Tensor>) -> Self {
        Self {
            weight: Weight::Packed(std::sync::Arc::new(weight)),
            bias,
        }
    }

    /// The packed matrix, when this projection is one and has no bias.
    fn packed_weight(&self) -> Option<&PackedMatrix> {
        match (&self.weight, &self.bias) {
            (Weight::Packed(w), None) => Some(w),
            _ => None,
        }
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        // The host kernels: `[tokens, cols]` activations in, `[tokens, rows]` out.
        let on_host = |rows: usize, matmul: &dyn Fn(&[f32], usize) -> Vec<f32>| {
            let (tokens, _) = x.dims2()?;
            let host = x.flatten_all()?.to_vec1::<f32>()?;
            Tensor::from_vec(matmul(&host, tokens), (tokens, rows), x.device())
        };
        let y = match &self.weight {
            Weight::Candle(w) => w.forward(x)?,
            Weight::Q4(w) => on_host(w.rows(), &|h, t| w.matmul(h, t))?,
            Weight::Packed(w) => on_host(w.rows(), &|h, t| w.matmul(h, t))?,
            Weight::Q8Split(w) => on_host(w.0.rows(), &|h, t| {
                let mut y = w.0.matmul(h, t);
                for (a, b) in y.iter_mut().zip(w.1.matmul(h, t)) {
                    *a += b;
                }
                y
            })?,
        };
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
    /// The pooled KV cache of an accelerator, when one was set up.
    pool: Option<std::sync::Arc<KvPool>>,
}

/// The KV cache of one sequence: one per block, grown in chunks.
#[derive(Debug, Clone)]
pub struct SeqCache {
    layers: Vec<LayerKv>,
    len: usize,
    /// Its slot in the model's KV pool (then `layers` stay empty).
    slot: Option<std::sync::Arc<Slot>>,
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
        let (cos, sin) = rope_tables(&config, device, embed.dtype())?;
        Ok(Self {
            config,
            embed,
            blocks,
            norm,
            lm_head,
            cos,
            sin,
            device: device.clone(),
            pool: None,
        })
    }

    /// Gives the model a pooled KV cache of `slots` sequences of up to `positions` tokens
    /// (accelerators only): decode steps of pooled sequences then attend in one batched
    /// pass per layer. Sequences created when every slot is taken keep their own caches.
    pub fn with_kv_pool(mut self, slots: usize, positions: usize) -> Result<Self, LlmError> {
        if self.device.is_cpu() {
            return Err(LlmError::Format(
                "the KV pool is for accelerators (the CPU attends on host buffers)".into(),
            ));
        }
        let c = &self.config;
        let dims = Dims {
            heads: c.num_heads,
            kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
        };
        self.pool = Some(KvPool::new(
            slots,
            positions,
            self.blocks.len(),
            dims,
            self.embed.dtype(),
            &self.device,
        )?);
        Ok(self)
    }

    /// Rows of the embedding table: every valid token id is below this.
    pub fn vocab_rows(&self) -> usize {
        self.embed.dims().first().copied().unwrap_or(0)
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// An empty cache for a new sequence (in the KV pool while a slot is free).
    pub fn new_cache(&self) -> SeqCache {
        self.new_cache_for(0)
    }

    /// An empty cache for a sequence of up to `max_len` tokens: in the KV pool when it fits
    /// there and a slot is free, else of its own.
    pub fn new_cache_for(&self, max_len: usize) -> SeqCache {
        let pooled = self
            .pool
            .as_ref()
            .filter(|p| max_len <= p.positions())
            .and_then(|p| p.claim());
        if let Some(slot) = pooled {
            return SeqCache {
                layers: Vec::new(),
                len: 0,
                slot: Some(std::sync::Arc::new(slot)),
            };
        }
        SeqCache {
            layers: (0..self.blocks.len())
                .map(|_| LayerKv::new(&self.device))
                .collect(),
            len: 0,
            slot: None,
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

        let dims = Dims {
            heads: nh,
            kv_heads: nkv,
            head_dim: hd,
        };
        let pool_step = match &self.pool {
            Some(pool) if batch.iter().any(|s| s.cache.slot.is_some()) => {
                let shapes: Vec<StepShape> = batch
                    .iter()
                    .map(|s| StepShape {
                        slot: s.cache.slot.as_ref().map(|slot| slot.index()),
                        past: s.cache.len,
                        len: s.tokens.len(),
                    })
                    .collect();
                Some((
                    pool,
                    PoolStep::new(pool, &shapes, dims, self.embed.dtype(), &self.device)?,
                ))
            }
            _ => None,
        };

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

            let pooled = match &pool_step {
                Some((pool, step)) => Some(step.layer(pool, layer, &q, &k, &v, dims)?),
                None => None,
            };
            let attn = if let Some(Ok(all)) = pooled {
                all
            } else if self.device.is_cpu() {
                let (qh, kh, vh) = (
                    q.flatten_all()?.to_vec1::<f32>()?,
                    k.flatten_all()?.to_vec1::<f32>()?,
                    v.flatten_all()?.to_vec1::<f32>()?,
                );
                let mut seqs: Vec<HostSeq<'_>> = batch
                    .iter_mut()
                    .map(|s| HostSeq {
                        past: s.cache.len,
                        len: s.tokens.len(),
                        kv: &mut s.cache.layers[layer],
                    })
                    .collect();
                let out = attention::host_step(&mut seqs, &qh, &kh, &vh, dims);
                Tensor::from_vec(out, (total, nh * hd), &self.device)?
            } else {
                let mut pooled_outs = match pooled {
                    Some(Err(outs)) => outs,
                    _ => Vec::new(),
                };
                let mut outs = Vec::with_capacity(batch.len());
                let mut offset = 0;
                for (i, seq) in batch.iter_mut().enumerate() {
                    let l = seq.tokens.len();
                    let past = seq.cache.len;
                    if let Some(out) = pooled_outs.get_mut(i).and_then(Option::take) {
                        outs.push(out);
                        offset += l;
                        continue;
                    }
                    let part = |t: &Tensor| t.narrow(0, offset, l)?.transpose(0, 1)?.contiguous();
                    let LayerKv::Device(kv) = &mut seq.cache.layers[layer] else {
                        candle_core::bail!("host cache on a device model");
                    };
                    outs.push(attention::device_seq(
                        kv,
                        &part(&q)?,
                        &part(&k)?,
                        &part(&v)?,
                        past,
                        l,
                        dims,
                    )?);
                    offset += l;
                }
                Tensor::cat(&outs, 0)?
            };
            x = (x + block.wo.forward(&attn)?)?;

            let h = candle_nn::ops::rms_norm(&x, &block.ffn_norm, eps)?;
            let gated = match (block.w_gate.packed_weight(), block.w_up.packed_weight()) {
                // Both projections on the host: the gate in place, without tensor round trips.
                (Some(g), Some(u)) if g.rows() == u.rows() => {
                    let host = h.flatten_all()?.to_vec1::<f32>()?;
                    let mut gate = g.matmul(&host, total);
                    vmath::swiglu(&mut gate, &u.matmul(&host, total));
                    Tensor::from_vec(gate, (total, g.rows()), &self.device)?
                }
                _ => {
                    let gate = candle_nn::ops::silu(&block.w_gate.forward(&h)?)?;
                    (gate * block.w_up.forward(&h)?)?
                }
            };
            x = (x + block.w_down.forward(&gated)?)?;
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

/// Rotation tables in the activations' dtype (the embedding's).
fn rope_tables(
    cfg: &LlamaConfig,
    device: &Device,
    dtype: DType,
) -> Result<(Tensor, Tensor), LlmError> {
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
    let cos = Tensor::from_vec(cos, (n, half), device)?.to_dtype(dtype)?;
    let sin = Tensor::from_vec(sin, (n, half), device)?.to_dtype(dtype)?;
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
