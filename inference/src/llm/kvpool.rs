//! A pooled KV cache for accelerators: one tensor per layer holds every sequence's keys (and
//! one its values), so a step writes the new positions of all sequences with one scatter and
//! a decode step attends for all of them with one batched attention. The per-sequence path
//! ([`super::attention::device_seq`]) launches about ten kernels per sequence per layer; this
//! one about fifteen per layer whatever the batch.
//!
//! Layout per layer: `[positions, slots, kv_heads · head_dim]`, position-major, so the first
//! `n` positions of every slot are one contiguous block (gathered for a batch with one
//! `index_select` over slots). A sequence owns a slot while its cache lives; a sequence longer
//! than the pool's positions is an error (the pool is sized by whoever creates it).

use std::sync::{Arc, Mutex, PoisonError};

use candle_core::{DType, Device, Tensor};

use super::LlmError;
use super::attention::Dims;

/// The pool of one model.
#[derive(Debug)]
pub struct KvPool {
    slots: usize,
    positions: usize,
    /// Per layer: keys and values, `[positions · slots, width]`.
    layers: Vec<(Tensor, Tensor)>,
    free: Mutex<Vec<usize>>,
}

/// A sequence's claim on a slot; returned to the pool on drop.
#[derive(Debug)]
pub struct Slot {
    pool: Arc<KvPool>,
    index: usize,
}

impl Slot {
    /// The slot's index.
    pub fn index(&self) -> usize {
        self.index
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.pool
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(self.index);
    }
}

impl KvPool {
    /// A zeroed pool of `slots` sequences of up to `positions` tokens for `layers` layers.
    pub fn new(
        slots: usize,
        positions: usize,
        layers: usize,
        d: Dims,
        dtype: DType,
        device: &Device,
    ) -> Result<Arc<Self>, LlmError> {
        let width = d.kv_heads * d.head_dim;
        let layers = (0..layers)
            .map(|_| {
                let z = || Tensor::zeros((positions * slots, width), dtype, device);
                Ok((z()?, z()?))
            })
            .collect::<Result<Vec<_>, candle_core::Error>>()?;
        Ok(Arc::new(Self {
            slots,
            positions,
            layers,
            free: Mutex::new((0..slots).rev().collect()),
        }))
    }

    /// Claims a free slot, if any.
    pub fn claim(self: &Arc<Self>) -> Option<Slot> {
        let index = self
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()?;
        Some(Slot {
            pool: Arc::clone(self),
            index,
        })
    }

    /// Longest sequence a slot holds.
    pub fn positions(&self) -> usize {
        self.positions
    }

    /// Row indices (`[rows, width]`, u32, each row constant) of the positions written by a
    /// step: token `i` of the step goes to `(position_i, slot_i)`.
    pub fn scatter_index(
        &self,
        targets: &[(usize, usize)],
        width: usize,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut rows = Vec::with_capacity(targets.len() * width);
        for &(pos, slot) in targets {
            if pos >= self.positions {
                candle_core::bail!(
                    "position {pos} beyond the KV pool's {} positions",
                    self.positions
                );
            }
            let row = (pos * self.slots + slot) as u32;
            rows.extend(std::iter::repeat_n(row, width));
        }
        Tensor::from_vec(rows, (targets.len(), width), device)
    }

    /// Writes the step's keys and values (`[rows, width]`) of `layer` at `index`'s rows.
    pub fn write(
        &self,
        layer: usize,
        index: &Tensor,
        k: &Tensor,
        v: &Tensor,
    ) -> candle_core::Result<()> {
        let (kp, vp) = &self.layers[layer];
        kp.scatter_set(index, &k.contiguous()?, 0)?;
        vp.scatter_set(index, &v.contiguous()?, 0)
    }

    /// The first `len` positions of `slots` in `layer`, as `[slots, kv_heads, len, head_dim]`
    /// keys and values.
    pub fn gather(
        &self,
        layer: usize,
        slots: &Tensor,
        len: usize,
        d: Dims,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let (kp, vp) = &self.layers[layer];
        let n = slots.dims1()?;
        let take = |t: &Tensor| -> candle_core::Result<Tensor> {
            t.reshape((self.positions, self.slots, d.kv_heads * d.head_dim))?
                .narrow(0, 0, len)?
                .index_select(slots, 1)?
                .reshape((len, n, d.kv_heads, d.head_dim))?
                .permute((1, 2, 0, 3))?
                .contiguous()
        };
        Ok((take(kp)?, take(vp)?))
    }
}

/// Attention of `q` (`[n, kv_heads, rows, head_dim]`: each KV head's query rows) over `k`/`v`
/// (`[n, kv_heads, len, head_dim]`) with an additive `mask` broadcast to the scores
/// (`[n, kv_heads, rows, len]`); returns `[n, kv_heads, rows, head_dim]`.
pub fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    head_dim: usize,
) -> candle_core::Result<Tensor> {
    let scores = (q.matmul(&k.t()?)? * (1.0 / (head_dim as f64).sqrt()))?;
    let scores = scores.broadcast_add(mask)?;
    candle_nn::ops::softmax_last_dim(&scores)?.matmul(v)
}

/// One sequence of a step, as the pool sees it.
#[derive(Debug, Clone, Copy)]
pub struct StepShape {
    /// Its slot, if it has one (else its own cache serves it).
    pub slot: Option<usize>,
    /// Tokens cached before the step.
    pub past: usize,
    /// New tokens.
    pub len: usize,
}

/// What a step does with the pool, prepared once for all layers.
pub struct PoolStep {
    /// Scatter rows of the pooled tokens.
    index: Tensor,
    /// The step's token rows that are pooled (`None`: all of them).
    pooled_rows: Option<Tensor>,
    /// The batched decode group: token rows, slots, longest cache, mask `[n, 1, 1, len]`.
    decode: Option<(Tensor, Tensor, usize, Tensor)>,
    /// Per sequence: where its output comes from.
    plan: Vec<SeqOut>,
}

/// Where a sequence's attention output comes from.
#[derive(Debug)]
enum SeqOut {
    /// Row `j` of the batched decode output.
    Decode(usize),
    /// Its own attention over its slot: token offset, length, past, slot ids, causal mask.
    Prefill(usize, usize, usize, Tensor, Tensor),
    /// Not pooled: the caller's per-sequence path.
    Own,
}

impl PoolStep {
    /// Prepares a step of `seqs` (in token order) for a model of shape `d`.
    pub fn new(
        pool: &KvPool,
        seqs: &[StepShape],
        d: Dims,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let width = d.kv_heads * d.head_dim;
        let n_rep = d.heads / d.kv_heads;
        let mut targets = Vec::new();
        let mut rows = Vec::new();
        let (mut d_rows, mut d_slots, mut d_past) = (Vec::new(), Vec::new(), Vec::new());
        let mut plan = Vec::with_capacity(seqs.len());
        let mut offset = 0;
        for s in seqs {
            match s.slot {
                Some(slot) => {
                    for t in 0..s.len {
                        targets.push((s.past + t, slot));
                        rows.push((offset + t) as u32);
                    }
                    if s.len == 1 {
                        plan.push(SeqOut::Decode(d_rows.len()));
                        d_rows.push(offset as u32);
                        d_slots.push(slot as u32);
                        d_past.push(s.past);
                    } else {
                        let total = s.past + s.len;
                        let mask: Vec<f32> = (0..n_rep)
                            .flat_map(|_| 0..s.len)
                            .flat_map(|i| {
                                (0..total).map(move |j| {
                                    if j <= s.past + i {
                                        0.0
                                    } else {
                                        f32::NEG_INFINITY
                                    }
                                })
                            })
                            .collect();
                        let mask = Tensor::from_vec(mask, (n_rep * s.len, total), device)?
                            .to_dtype(dtype)?;
                        let slot = Tensor::new(&[slot as u32], device)?;
                        plan.push(SeqOut::Prefill(offset, s.len, s.past, slot, mask));
                    }
                }
                None => plan.push(SeqOut::Own),
            }
            offset += s.len;
        }
        let index = pool.scatter_index(&targets, width, device)?;
        let pooled_rows = if rows.len() == offset {
            None
        } else {
            Some(Tensor::new(rows.as_slice(), device)?)
        };
        let decode = if d_rows.is_empty() {
            None
        } else {
            let len = d_past.iter().max().copied().unwrap_or(0) + 1;
            let mask: Vec<f32> = d_past
                .iter()
                .flat_map(|&p| (0..len).map(move |j| if j <= p { 0.0 } else { f32::NEG_INFINITY }))
                .collect();
            let n = d_rows.len();
            let mask = Tensor::from_vec(mask, (n, 1, 1, len), device)?.to_dtype(dtype)?;
            Some((
                Tensor::new(d_rows.as_slice(), device)?,
                Tensor::new(d_slots.as_slice(), device)?,
                len,
                mask,
            ))
        };
        Ok(Self {
            index,
            pooled_rows,
            decode,
            plan,
        })
    }

    /// Whether every sequence is a pooled decode (its output is the batched output as is).
    fn all_decode(&self) -> bool {
        self.pooled_rows.is_none() && self.plan.iter().all(|p| matches!(p, SeqOut::Decode(_)))
    }

    /// One layer: writes the pooled tokens' `k`/`v` (`[tokens, kv_heads, hd]`) and returns
    /// the attention output (`[tokens, heads · hd]`) of the pooled sequences — all rows at
    /// once when every sequence is a pooled decode, else one entry per sequence (`None` for
    /// the caller's own sequences).
    pub fn layer(
        &self,
        pool: &KvPool,
        layer: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        d: Dims,
    ) -> candle_core::Result<Result<Tensor, Vec<Option<Tensor>>>> {
        let (nh, nkv, hd) = (d.heads, d.kv_heads, d.head_dim);
        let n_rep = nh / nkv;
        let width = nkv * hd;
        let total = k.dims3()?.0;
        let (kw, vw) = (k.reshape((total, width))?, v.reshape((total, width))?);
        let (kw, vw) = match &self.pooled_rows {
            Some(rows) => (kw.index_select(rows, 0)?, vw.index_select(rows, 0)?),
            None => (kw, vw),
        };
        pool.write(layer, &self.index, &kw, &vw)?;
        let decoded = match &self.decode {
            Some((rows, slots, len, mask)) => {
                let n = rows.dims1()?;
                let qd = if self.all_decode() {
                    q.clone()
                } else {
                    q.index_select(rows, 0)?
                };
                let qd = qd.reshape((n, nkv, n_rep, hd))?;
                let (kc, vc) = pool.gather(layer, slots, *len, d)?;
                Some(attend(&qd, &kc, &vc, mask, hd)?.reshape((n, nh * hd))?)
            }
            None => None,
        };
        if self.all_decode()
            && let Some(out) = decoded
        {
            return Ok(Ok(out));
        }
        let mut outs = Vec::with_capacity(self.plan.len());
        for p in &self.plan {
            outs.push(match p {
                SeqOut::Decode(j) => match &decoded {
                    Some(out) => Some(out.narrow(0, *j, 1)?),
                    None => candle_core::bail!("decode row without a decode group"),
                },
                SeqOut::Prefill(offset, len, past, slot, mask) => {
                    let (len, past) = (*len, *past);
                    let qs = q
                        .narrow(0, *offset, len)?
                        .reshape((len, nkv, n_rep, hd))?
                        .permute((1, 2, 0, 3))?
                        .contiguous()?
                        .reshape((1, nkv, n_rep * len, hd))?;
                    let (kc, vc) = pool.gather(layer, slot, past + len, d)?;
                    let out = attend(&qs, &kc, &vc, mask, hd)?
                        .reshape((nkv, n_rep, len, hd))?
                        .permute((2, 0, 1, 3))?
                        .contiguous()?
                        .reshape((len, nh * hd))?;
                    Some(out)
                }
                SeqOut::Own => None,
            });
        }
        Ok(Err(outs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_claimed_and_returned() {
        let d = Dims {
            heads: 2,
            kv_heads: 1,
            head_dim: 4,
        };
        let pool = KvPool::new(2, 8, 1, d, DType::F32, &Device::Cpu).unwrap();
        let a = pool.claim().unwrap();
        let b = pool.claim().unwrap();
        assert_ne!(a.index(), b.index());
        assert!(pool.claim().is_none());
        drop(a);
        assert!(pool.claim().is_some());
    }

    #[test]
    fn written_positions_are_gathered_per_slot() {
        let d = Dims {
            heads: 2,
            kv_heads: 1,
            head_dim: 2,
        };
        let dev = Device::Cpu;
        let pool = KvPool::new(3, 4, 1, d, DType::F32, &dev).unwrap();
        // Slot 2 gets positions 0 and 1, slot 0 position 0.
        let index = pool
            .scatter_index(&[(0, 2), (1, 2), (0, 0)], 2, &dev)
            .unwrap();
        let k = Tensor::new(&[[1f32, 2.], [3., 4.], [5., 6.]], &dev).unwrap();
        let v = (&k * 10.0).unwrap();
        pool.write(0, &index, &k, &v).unwrap();
        let slots = Tensor::new(&[2u32, 0], &dev).unwrap();
        let (kg, vg) = pool.gather(0, &slots, 2, d).unwrap();
        assert_eq!(kg.dims(), &[2, 1, 2, 2]);
        let kg = kg.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(kg, vec![1., 2., 3., 4., 5., 6., 0., 0.]);
        let vg = vg.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(vg[..4], [10., 20., 30., 40.]);
        assert!(pool.scatter_index(&[(4, 0)], 2, &dev).is_err());
    }
}
