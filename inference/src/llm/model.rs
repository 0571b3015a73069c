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

    /// Whether this projection runs on the host ([`Self::host`]), not in candle.
    fn on_host(&self) -> bool {
        !matches!(self.weight, Weight::Candle(_))
    }

    /// `[tokens, cols]` activations times a host projection, bias added: `[tokens, rows]`.
    fn host(&self, x: &[f32], tokens: usize) -> candle_core::Result<Vec<f32>> {
        let mut y = match &self.weight {
            Weight::Candle(_) => candle_core::bail!("a candle projection on the host path"),
            Weight::Q4(w) => w.matmul(x, tokens),
            Weight::Packed(w) => w.matmul(x, tokens),
            Weight::Q8Split(w) => {
                let mut y = w.0.matmul(x, tokens);
                for (a, b) in y.iter_mut().zip(w.1.matmul(x, tokens)) {
                    *a += b;
                }
                y
            }
        };
        self.add_bias(&mut y)?;
        Ok(y)
    }

    /// Adds the bias, if any, to each row of `y`.
    fn add_bias(&self, y: &mut [f32]) -> candle_core::Result<()> {
        if let Some(b) = &self.bias {
            let b = b.to_dtype(DType::F32)?.to_vec1::<f32>()?;
            for row in y.chunks_exact_mut(b.len()) {
                add_assign(row, &b);
            }
        }
        Ok(())
    }

    /// Several host projections of the same activations, as [`Self::host`] each; when all
    /// are packed (and of one width) they share one quantization of the activations and one
    /// parallel pass ([`PackedMatrix::matmul_many`]).
    fn host_many<const N: usize>(
        ls: [&Self; N],
        x: &[f32],
        tokens: usize,
    ) -> candle_core::Result<[Vec<f32>; N]> {
        let packed: Option<Vec<&PackedMatrix>> = ls
            .iter()
            .map(|l| match &l.weight {
                Weight::Packed(w) => Some(&**w),
                _ => None,
            })
            .collect();
        let outs = match packed {
            Some(ms) if ms.windows(2).all(|p| p[0].cols() == p[1].cols()) => {
                let mut outs = PackedMatrix::matmul_many(&ms, x, tokens);
                for (l, y) in ls.iter().zip(&mut outs) {
                    l.add_bias(y)?;
                }
                outs
            }
            _ => ls
                .iter()
                .map(|l| l.host(x, tokens))
                .collect::<candle_core::Result<Vec<_>>>()?,
        };
        outs.try_into()
            .map_err(|_| candle_core::Error::Msg("one output per projection".into()))
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match &self.weight {
            Weight::Candle(w) => {
                let y = w.forward(x)?;
                match &self.bias {
                    Some(b) => y.broadcast_add(b),
                    None => Ok(y),
                }
            }
            _ => {
                let (tokens, _) = x.dims2()?;
                let y = self.host(&x.flatten_all()?.to_vec1::<f32>()?, tokens)?;
                let rows = y.len() / tokens.max(1);
                Tensor::from_vec(y, (tokens, rows), x.device())
            }
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

impl Block {
    /// The MLP's gated activations, `silu(gate(h)) · up(h)`, of host projections.
    fn host_gated(&self, h: &[f32], tokens: usize) -> candle_core::Result<Vec<f32>> {
        let [mut gate, up] = Linear::host_many([&self.w_gate, &self.w_up], h, tokens)?;
        if gate.len() != up.len() {
            candle_core::bail!("gate and up projections of different widths");
        }
        vmath::swiglu(&mut gate, &up);
        Ok(gate)
    }
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
    /// The norms on the host, when the whole step runs there (see [`HostNorms`]).
    host: Option<HostNorms>,
}

/// The RMS norm weights as host vectors, for a model whose every step runs on the host: on
/// the CPU, with f32 activations and every projection in this crate's kernels (GGUF Q4_1 and
/// Q8_0 files). Those steps never build a tensor between the embedding lookup and the
/// logits: the norms, rotations, residual adds and attention are loops over the vectors the
/// kernels take and return. In a 16-sequence decode step, candle's norm, add and rotation
/// ops and the copies around them cost more than the attention did.
#[derive(Debug, Clone)]
struct HostNorms {
    /// Per block: the pre-attention and pre-MLP norm weights.
    blocks: Vec<(Vec<f32>, Vec<f32>)>,
    /// The final norm weight.
    last: Vec<f32>,
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
        let all_host = blocks.iter().all(|b| {
            [&b.wq, &b.wk, &b.wv, &b.wo, &b.w_gate, &b.w_up, &b.w_down]
                .iter()
                .all(|l| l.on_host())
        }) && lm_head.on_host();
        let host = if device.is_cpu() && embed.dtype() == DType::F32 && all_host {
            let vec = |t: &Tensor| t.to_dtype(DType::F32)?.to_vec1::<f32>();
            Some(HostNorms {
                blocks: blocks
                    .iter()
                    .map(|b| Ok((vec(&b.attn_norm)?, vec(&b.ffn_norm)?)))
                    .collect::<candle_core::Result<_>>()?,
                last: vec(&norm)?,
            })
        } else {
            None
        };
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
            host,
        })
    }

    /// Whether steps run on the host end to end (see [`HostNorms`]).
    pub fn runs_on_host(&self) -> bool {
        self.host.is_some()
    }

    /// Makes every step run through candle's tensor ops, as on accelerators (tests compare
    /// the two paths).
    pub fn without_host_path(mut self) -> Self {
        self.host = None;
        self
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
        if let Some(host) = &self.host {
            let x = self
                .embed
                .index_select(&ids, 0)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let rot = Rotation {
                cos: cos.flatten_all()?.to_vec1::<f32>()?,
                sin: sin.flatten_all()?.to_vec1::<f32>()?,
                half,
                interleaved: cfg.rope_interleaved,
            };
            return self.forward_host(host, batch, x, &rot, dims);
        }
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
                let out = attention::host_step(&mut host_seqs(batch, layer), &qh, &kh, &vh, dims);
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
            let gated = if block.w_gate.on_host() && block.w_up.on_host() {
                // Both projections on the host: the gate in place, without tensor round trips.
                let gated = block.host_gated(&h.flatten_all()?.to_vec1::<f32>()?, total)?;
                let width = gated.len() / total;
                Tensor::from_vec(gated, (total, width), &self.device)?
            } else {
                let gate = candle_nn::ops::silu(&block.w_gate.forward(&h)?)?;
                (gate * block.w_up.forward(&h)?)?
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

impl LlamaModel {
    /// [`Self::forward_inner`] on the host: `x` holds the step's embeddings, `[tokens,
    /// hidden]`.
    fn forward_host(
        &self,
        host: &HostNorms,
        batch: &mut [StepSeq<'_>],
        mut x: Vec<f32>,
        rot: &Rotation,
        dims: Dims,
    ) -> candle_core::Result<Option<Tensor>> {
        let eps = self.config.rms_norm_eps as f32;
        let total: usize = batch.iter().map(|s| s.tokens.len()).sum();
        let mut h = vec![0f32; x.len()];
        for ((layer, block), (attn_norm, ffn_norm)) in
            self.blocks.iter().enumerate().zip(&host.blocks)
        {
            rms_norm_rows(&x, attn_norm, eps, &mut h);
            let [mut q, mut k, v] =
                Linear::host_many([&block.wq, &block.wk, &block.wv], &h, total)?;
            rot.apply(&mut q, dims.heads);
            rot.apply(&mut k, dims.kv_heads);
            let attn = attention::host_step(&mut host_seqs(batch, layer), &q, &k, &v, dims);
            add_assign(&mut x, &block.wo.host(&attn, total)?);

            rms_norm_rows(&x, ffn_norm, eps, &mut h);
            let gated = block.host_gated(&h, total)?;
            add_assign(&mut x, &block.w_down.host(&gated, total)?);
        }
        for seq in batch.iter_mut() {
            seq.cache.len += seq.tokens.len();
        }

        let width = host.last.len();
        let mut last = Vec::new();
        let mut end = 0;
        for seq in batch.iter() {
            end += seq.tokens.len();
            if seq.want_logits {
                last.extend_from_slice(&x[(end - 1) * width..end * width]);
            }
        }
        if last.is_empty() {
            return Ok(None);
        }
        let n = last.len() / width;
        let mut normed = vec![0f32; last.len()];
        rms_norm_rows(&last, &host.last, eps, &mut normed);
        let logits = self.lm_head.host(&normed, n)?;
        let vocab = logits.len() / n;
        Ok(Some(Tensor::from_vec(logits, (n, vocab), &self.device)?))
    }
}

/// Each sequence's share of a host attention step in `layer`.
fn host_seqs<'a>(batch: &'a mut [StepSeq<'_>], layer: usize) -> Vec<HostSeq<'a>> {
    batch
        .iter_mut()
        .map(|s| HostSeq {
            past: s.cache.len,
            len: s.tokens.len(),
            kv: &mut s.cache.layers[layer],
        })
        .collect()
}

/// The rotary embedding of one step's tokens.
struct Rotation {
    /// Per token, `half` cosines and sines.
    cos: Vec<f32>,
    sin: Vec<f32>,
    half: usize,
    /// Rotated pairs are adjacent (`2i`, `2i + 1`), not `i` and `i + half`.
    interleaved: bool,
}

impl Rotation {
    /// Rotates each head of each token's row (`[tokens][heads · 2 · half]`) in place.
    fn apply(&self, x: &mut [f32], heads: usize) {
        let (half, hd) = (self.half, 2 * self.half);
        for (t, row) in x.chunks_exact_mut(heads * hd).enumerate() {
            let cos = &self.cos[t * half..(t + 1) * half];
            let sin = &self.sin[t * half..(t + 1) * half];
            for head in row.chunks_exact_mut(hd) {
                if self.interleaved {
                    for ((pair, &c), &s) in head.chunks_exact_mut(2).zip(cos).zip(sin) {
                        let (a, b) = (pair[0], pair[1]);
                        pair[0] = a * c - b * s;
                        pair[1] = a * s + b * c;
                    }
                } else {
                    let (lo, hi) = head.split_at_mut(half);
                    for (((a, b), &c), &s) in lo.iter_mut().zip(hi).zip(cos).zip(sin) {
                        let (x0, x1) = (*a, *b);
                        *a = x0 * c - x1 * s;
                        *b = x1 * c + x0 * s;
                    }
                }
            }
        }
    }
}

/// `a += b`, elementwise.
fn add_assign(a: &mut [f32], b: &[f32]) {
    for (a, b) in a.iter_mut().zip(b) {
        *a += b;
    }
}

/// RMS norm of each row of `x` (rows as wide as `weight`) into `out`: `x / √(mean(x²) + ε) ·
/// weight`. Rows are spread over the pool when there are many (a prompt).
fn rms_norm_rows(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    use rayon::prelude::*;
    let width = weight.len();
    let one = |(x, out): (&[f32], &mut [f32])| {
        // Sixteen lanes of partial sums: a reduction that vectorises.
        let mut lanes = [0f32; 16];
        let (whole, tail) = x.as_chunks::<16>();
        for c in whole {
            for (l, v) in lanes.iter_mut().zip(c) {
                *l += v * v;
            }
        }
        let sum = lanes.iter().sum::<f32>() + tail.iter().map(|v| v * v).sum::<f32>();
        let inv = 1.0 / (sum / width as f32 + eps).sqrt();
        for ((o, v), w) in out.iter_mut().zip(x).zip(weight) {
            *o = v * inv * w;
        }
    };
    /// Rows below which one thread norms them all.
    const PAR_ROWS: usize = 64;
    if x.len() >= PAR_ROWS * width {
        x.par_chunks_exact(width)
            .zip(out.par_chunks_exact_mut(width))
            .with_min_len(PAR_ROWS / 4)
            .for_each(one);
    } else {
        x.chunks_exact(width)
            .zip(out.chunks_exact_mut(width))
            .for_each(one);
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

/// The index of the largest value of each row of `[n, vocab]` logits (the first, on ties).
/// On the CPU the rows are scanned in place, in parallel: candle's argmax of 16 rows of a
/// 49k vocabulary took half a millisecond of a 10 ms decode step, on one thread.
pub fn argmax_rows(logits: &Tensor) -> Result<Vec<u32>, LlmError> {
    use rayon::prelude::*;
    let (_, vocab) = logits.dims2()?;
    let (storage, layout) = logits.storage_and_layout();
    if let (candle_core::Storage::Cpu(candle_core::CpuStorage::F32(all)), Some((from, to))) =
        (&*storage, layout.contiguous_offsets())
        && vocab > 0
    {
        return Ok(all[from..to].par_chunks_exact(vocab).map(argmax).collect());
    }
    drop(storage);
    Ok(logits.argmax(D::Minus1)?.to_vec1::<u32>()?)
}

/// The index of the first largest value of `row` (NaNs never win; 0 when all are NaN).
fn argmax(row: &[f32]) -> u32 {
    // The maximum in sixteen lanes (vectorises), then its first position.
    let mut lanes = [f32::NEG_INFINITY; 16];
    let (whole, tail) = row.as_chunks::<16>();
    for c in whole {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l = l.max(v);
        }
    }
    let max = lanes
        .into_iter()
        .chain(tail.iter().copied())
        .fold(f32::NEG_INFINITY, f32::max);
    row.iter().position(|&v| v == max).unwrap_or(0) as u32
}

/// Copies one row of logits to the host.
pub fn row(logits: &Tensor, i: usize) -> Result<Vec<f32>, LlmError> {
    Ok(logits.i(i)?.to_vec1::<f32>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n as u32)
            .map(|i| ((i.wrapping_mul(2654435761) ^ seed) % 2001) as f32 / 1000.0 - 1.0)
            .collect()
    }

    fn assert_close(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                "{what} [{i}]: {g} vs {w}"
            );
        }
    }

    #[test]
    fn argmax_rows_matches_candle_and_takes_the_first_of_ties() {
        let (rows, vocab) = (5, 1000);
        let mut x = values(rows * vocab, 6);
        // Row 1: a tie of the largest value, the first one wins; row 2: a NaN and -inf.
        x[vocab + 10] = 9.0;
        x[vocab + 700] = 9.0;
        x[2 * vocab + 3] = f32::NAN;
        x[2 * vocab + 4] = f32::NEG_INFINITY;
        x[2 * vocab + 999] = 5.0;
        let t = Tensor::from_vec(x.clone(), (rows, vocab), &Device::Cpu).unwrap();
        let got = argmax_rows(&t).unwrap();
        assert_eq!(got[1], 10);
        assert_eq!(got[2], 999);
        let mut clean = x;
        clean[2 * vocab + 3] = 0.0;
        let want = Tensor::from_vec(clean, (rows, vocab), &Device::Cpu)
            .unwrap()
            .argmax(D::Minus1)
            .unwrap()
            .to_vec1::<u32>()
            .unwrap();
        assert_eq!(got, want);
        // A row of a larger tensor (not at offset 0) and a non-contiguous view.
        let part = t.narrow(0, 1, 2).unwrap();
        assert_eq!(argmax_rows(&part).unwrap(), vec![10, 999]);
        let strided = t.t().unwrap();
        assert_eq!(
            argmax_rows(&strided).unwrap(),
            strided.argmax(D::Minus1).unwrap().to_vec1::<u32>().unwrap()
        );
    }

    /// A `[rows, cols]` Q4_1 projection of varied weights (about ±0.15).
    fn q4_linear(rows: usize, cols: usize, seed: usize, bias: bool) -> Option<Linear> {
        let mut bytes = Vec::new();
        for r in 0..rows {
            for b in 0..cols / 32 {
                let d = half::f16::from_f32(0.02 + 0.001 * ((r + b + seed) % 7) as f32);
                let m = half::f16::from_f32(-0.15);
                bytes.extend_from_slice(&d.to_bits().to_le_bytes());
                bytes.extend_from_slice(&m.to_bits().to_le_bytes());
                bytes.extend((0..16).map(|j| ((r * 31 + j * 17 + b * 7 + seed * 13) % 256) as u8));
            }
        }
        let weight = PackedMatrix::from_q4_1(&bytes, rows, cols)?;
        let bias = bias.then(|| Tensor::from_vec(values(rows, seed as u32), rows, &Device::Cpu));
        Some(Linear::packed(weight, bias.transpose().ok()?))
    }

    #[test]
    fn host_path_with_biases_matches_the_tensor_path_in_both_rotations() {
        if !PackedMatrix::available() {
            eprintln!("no AVX-512 VNNI here: no model runs on the host path");
            return;
        }
        for interleaved in [false, true] {
            let config = LlamaConfig {
                architecture: "qwen2".into(),
                vocab_size: 64,
                hidden_size: 64,
                intermediate_size: 128,
                num_layers: 2,
                num_heads: 4,
                num_kv_heads: 2,
                head_dim: 16,
                rms_norm_eps: 1e-6,
                rope_theta: 10_000.0,
                rope_interleaved: interleaved,
                context_length: 64,
            };
            let dev = Device::Cpu;
            let norm = || Tensor::from_vec(values(64, 9), 64, &dev).unwrap();
            let blocks = (0..2)
                .map(|l| Block {
                    attn_norm: norm(),
                    wq: q4_linear(64, 64, 10 * l + 1, true).unwrap(),
                    wk: q4_linear(32, 64, 10 * l + 2, true).unwrap(),
                    wv: q4_linear(32, 64, 10 * l + 3, true).unwrap(),
                    wo: q4_linear(64, 64, 10 * l + 4, false).unwrap(),
                    ffn_norm: norm(),
                    w_gate: q4_linear(128, 64, 10 * l + 5, false).unwrap(),
                    w_up: q4_linear(128, 64, 10 * l + 6, false).unwrap(),
                    w_down: q4_linear(64, 128, 10 * l + 7, false).unwrap(),
                })
                .collect();
            let embed = Tensor::from_vec(values(64 * 64, 11), (64, 64), &dev).unwrap();
            let lm_head = q4_linear(64, 64, 12, false).unwrap();
            let model = LlamaModel::new(config, embed, blocks, norm(), lm_head, &dev).unwrap();
            assert!(model.runs_on_host());
            let tensor = model.clone().without_host_path();
            let run = |m: &LlamaModel| {
                let (mut a, mut b) = (m.new_cache(), m.new_cache());
                let mut rows = Vec::new();
                for (ta, tb) in [(&[1u32, 5, 9, 33][..], &[7u32][..]), (&[2], &[8, 3])] {
                    let logits = m
                        .forward(&mut [
                            StepSeq {
                                tokens: ta,
                                cache: &mut a,
                                want_logits: true,
                            },
                            StepSeq {
                                tokens: tb,
                                cache: &mut b,
                                want_logits: true,
                            },
                        ])
                        .unwrap()
                        .unwrap();
                    rows.extend(logits.flatten_all().unwrap().to_vec1::<f32>().unwrap());
                }
                rows
            };
            let (host, reference) = (run(&model), run(&tensor));
            assert_eq!(host.len(), 4 * 64);
            let worst = host
                .iter()
                .zip(&reference)
                .map(|(h, t)| (h - t).abs() / t.abs().max(1.0))
                .fold(0f32, f32::max);
            eprintln!("interleaved {interleaved}: worst {worst}");
            assert!(
                worst < 1e-3,
                "interleaved {interleaved}: logits differ by {worst}"
            );
        }
    }

    #[test]
    fn host_rms_norm_matches_candle() {
        // Few rows (one thread) and many (spread over the pool); a width not of sixteens.
        for (rows, width) in [(3, 576), (100, 72), (1, 5)] {
            let x = values(rows * width, 1);
            let w = values(width, 2);
            let mut out = vec![0f32; x.len()];
            rms_norm_rows(&x, &w, 1e-5, &mut out);
            let xt = Tensor::from_vec(x, (rows, width), &Device::Cpu).unwrap();
            let wt = Tensor::from_vec(w, width, &Device::Cpu).unwrap();
            let want = candle_nn::ops::rms_norm(&xt, &wt, 1e-5)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert_close(&out, &want, &format!("rms norm {rows}x{width}"));
        }
    }

    #[test]
    fn host_rotation_matches_candle() {
        let (tokens, heads, half) = (5, 3, 8);
        let x = values(tokens * heads * 2 * half, 3);
        let cos = values(tokens * half, 4);
        let sin = values(tokens * half, 5);
        for interleaved in [false, true] {
            let mut got = x.clone();
            Rotation {
                cos: cos.clone(),
                sin: sin.clone(),
                half,
                interleaved,
            }
            .apply(&mut got, heads);
            // As the tensor step calls it: a batch of one-token sequences.
            let xt =
                Tensor::from_vec(x.clone(), (tokens, heads, 1, 2 * half), &Device::Cpu).unwrap();
            let ct = Tensor::from_vec(cos.clone(), (tokens, 1, half), &Device::Cpu).unwrap();
            let st = Tensor::from_vec(sin.clone(), (tokens, 1, half), &Device::Cpu).unwrap();
            let want = if interleaved {
                candle_nn::rotary_emb::rope_i(&xt, &ct, &st)
            } else {
                candle_nn::rotary_emb::rope(&xt, &ct, &st)
            }
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
            assert_close(&got, &want, &format!("rotation, interleaved {interleaved}"));
        }
    }
}
