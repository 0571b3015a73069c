//! Attention over each sequence's own KV cache.
//!
//! On the CPU it runs here, in plain loops over host buffers: a decode step attends one query
//! per head over a few hundred cached positions, far too little work to pay for a dozen
//! tensor operations (and their allocations) per sequence per layer. Sequences run in
//! parallel. The host cache holds keys and values as f16 (as llama.cpp's does by default): a
//! batched decode step reads every cached position of every sequence, and at 16 sequences
//! that traffic, not arithmetic, bounds attention. On AVX-512 CPUs a kernel in intrinsics
//! ([`avx512`]) keeps its sums in registers and prefetches the cache ahead of its reads; the
//! portable loops serve other CPUs and head widths. On accelerators the cache stays on the
//! device and attention is two batched matmuls per sequence.

use candle_core::{Device, Tensor};
use candle_nn::kv_cache::KvCache;
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
#[allow(
    unsafe_code,
    reason = "intrinsics, entered only after runtime feature detection"
)]
mod avx512;

/// Initial KV capacity of a sequence on a device, and the step it grows by.
const KV_CHUNK: usize = 128;

/// The largest finite f16: cached keys and values beyond it are saturated.
const F16_MAX: f32 = 65504.0;

/// Positions per block of the host key and value caches.
const KEY_BLOCK: usize = 16;

/// Attention shape.
#[derive(Debug, Clone, Copy)]
pub struct Dims {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Width of a head.
    pub head_dim: usize,
}

/// One layer's cache of one sequence.
#[derive(Debug, Clone)]
pub enum LayerKv {
    /// Host memory.
    Host {
        /// Keys (f16 bits) in blocks of [`KEY_BLOCK`] positions, dimension-major inside a
        /// block: `[block][kv_head][head_dim][position in block]`, so that one query
        /// dimension multiplies a whole vector of positions (no horizontal sums per score).
        k: Vec<u16>,
        /// Values (f16 bits) in the same blocks, position-major inside a block:
        /// `[block][kv_head][position in block][head_dim]`, so that one KV head's values are
        /// read as whole runs of memory.
        v: Vec<u16>,
    },
    /// Device memory, `[kv_head, pos, head_dim]`, grown in chunks.
    Device(KvCache),
}

impl LayerKv {
    /// An empty cache for `device`.
    pub fn new(device: &Device) -> Self {
        if device.is_cpu() {
            Self::Host {
                k: Vec::new(),
                v: Vec::new(),
            }
        } else {
            Self::Device(KvCache::new(1, KV_CHUNK))
        }
    }
}

/// One sequence's share of a host attention step.
pub struct HostSeq<'a> {
    /// Its cache for this layer.
    pub kv: &'a mut LayerKv,
    /// Tokens already cached before this step.
    pub past: usize,
    /// New tokens this step.
    pub len: usize,
}

/// Host attention for every sequence of a step. `q` is `[tokens, heads, head_dim]`, `k`/`v`
/// are `[tokens, kv_heads, head_dim]`, rows ordered by sequence; returns `[tokens, heads *
/// head_dim]`.
pub fn host_step(seqs: &mut [HostSeq<'_>], q: &[f32], k: &[f32], v: &[f32], d: Dims) -> Vec<f32> {
    host_step_in(seqs, q, k, v, d, &attend)
}

/// [`host_step`] with the attention of each sequence done by `attend`.
fn host_step_in(
    seqs: &mut [HostSeq<'_>],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    d: Dims,
    attend: &AttendFn,
) -> Vec<f32> {
    let q_row = d.heads * d.head_dim;
    let kv_row = d.kv_heads * d.head_dim;
    let total: usize = seqs.iter().map(|s| s.len).sum();
    let mut out = vec![0f32; total * q_row];
    // Carve the inputs and the output into per-sequence slices.
    let mut work = Vec::with_capacity(seqs.len());
    let mut rest_out = out.as_mut_slice();
    let mut row = 0;
    for s in seqs.iter_mut() {
        let len = s.len;
        let (mine, rest) = std::mem::take(&mut rest_out).split_at_mut(len * q_row);
        rest_out = rest;
        work.push((
            s,
            &q[row * q_row..(row + len) * q_row],
            &k[row * kv_row..(row + len) * kv_row],
            &v[row * kv_row..(row + len) * kv_row],
            mine,
        ));
        row += len;
    }
    let run = |(s, q, k, v, out): (&mut HostSeq<'_>, &[f32], &[f32], &[f32], &mut [f32])| {
        if let LayerKv::Host { k: kc, v: vc } = &mut *s.kv {
            append_keys(kc, s.past, k, d);
            append_values(vc, s.past, v, d);
            let job = Job {
                q,
                keys: kc,
                values: vc,
                past: s.past,
                len: s.len,
                d,
            };
            attend(&job, out);
        }
    };
    if work.len() > 1 {
        work.into_par_iter().for_each(run);
    } else {
        work.into_iter().for_each(run);
    }
    out
}

/// An implementation of one sequence's attention.
type AttendFn = dyn Fn(&Job<'_>, &mut [f32]) + Sync;

/// One sequence's attention in one layer.
struct Job<'a> {
    /// Queries of the new tokens, `[len][heads][head_dim]`.
    q: &'a [f32],
    /// The blocked key cache, new tokens included.
    keys: &'a [u16],
    /// The value cache, new tokens included.
    values: &'a [u16],
    /// Tokens cached before this step.
    past: usize,
    /// New tokens.
    len: usize,
    d: Dims,
}

/// Causal attention of `len` new queries (at positions `past..past+len`) over the cache, in
/// the widest vector instructions this CPU has: the AVX-512 kernel where it handles the
/// shape, else the portable loops (written to vectorise) compiled for this CPU.
#[allow(
    unsafe_code,
    reason = "instruction-set variants, entered only with a token of runtime feature detection"
)]
fn attend(job: &Job<'_>, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if let Some(w) = widen::Avx512::detect() {
            if avx512::handles(job) {
                // SAFETY: the token proves AVX-512F; the kernel handles this shape.
                return unsafe { avx512::attend(job, out) };
            }
            // SAFETY: the token proves AVX-512F.
            return unsafe { attend_avx512(w, job, out) };
        }
        if let Some(w) = widen::F16c::detect() {
            // SAFETY: the token proves AVX2, FMA and F16C.
            return unsafe { attend_avx2(w, job, out) };
        }
    }
    attend_loops(Portable, job, out);
}

/// Every implementation of [`attend`] this CPU can run, by name: the tests compare each of
/// them, not only the one this CPU dispatches to.
#[cfg(test)]
#[allow(
    unsafe_code,
    reason = "each variant is listed only with its detection token"
)]
fn attend_variants() -> Vec<(&'static str, Box<AttendFn>)> {
    let mut all: Vec<(&'static str, Box<AttendFn>)> = vec![(
        "portable",
        Box::new(|job: &Job<'_>, out: &mut [f32]| attend_loops(Portable, job, out)),
    )];
    #[cfg(target_arch = "x86_64")]
    {
        if let Some(w) = widen::F16c::detect() {
            // SAFETY: the token proves AVX2, FMA and F16C.
            all.push((
                "f16c loops",
                Box::new(move |job: &Job<'_>, out: &mut [f32]| unsafe { attend_avx2(w, job, out) }),
            ));
        }
        if let Some(w) = widen::Avx512::detect() {
            // SAFETY: the token proves AVX-512F.
            all.push((
                "avx512 loops",
                Box::new(move |job: &Job<'_>, out: &mut [f32]| unsafe {
                    attend_avx512(w, job, out)
                }),
            ));
            all.push((
                "avx512 kernel",
                Box::new(|job: &Job<'_>, out: &mut [f32]| {
                    if avx512::handles(job) {
                        // SAFETY: the CPU has AVX-512F; the kernel handles this shape.
                        unsafe { avx512::attend(job, out) }
                    } else {
                        attend(job, out)
                    }
                }),
            ));
        }
    }
    all
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn attend_avx512(w: widen::Avx512, job: &Job<'_>, out: &mut [f32]) {
    attend_loops(w, job, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn attend_avx2(w: widen::F16c, job: &Job<'_>, out: &mut [f32]) {
    attend_loops(w, job, out);
}

/// f16 bits to f32, sixteen at a time, in an instruction set's own conversion. A value of an
/// implementing type is a token: it exists only where the CPU has that instruction set.
trait Widen: Copy {
    fn widen16(self, x: &[u16; KEY_BLOCK]) -> [f32; KEY_BLOCK];

    /// Any length: whole sixteens, then one at a time.
    #[inline(always)]
    fn widen(self, src: &[u16], dst: &mut [f32]) {
        let (whole, tail) = src.as_chunks::<KEY_BLOCK>();
        let (out, out_tail) = dst.as_chunks_mut::<KEY_BLOCK>();
        for (o, x) in out.iter_mut().zip(whole) {
            *o = self.widen16(x);
        }
        for (o, &x) in out_tail.iter_mut().zip(tail) {
            *o = half::f16::from_bits(x).to_f32();
        }
    }
}

/// Conversion without special instructions.
#[derive(Clone, Copy)]
struct Portable;

impl Widen for Portable {
    #[inline(always)]
    fn widen16(self, x: &[u16; KEY_BLOCK]) -> [f32; KEY_BLOCK] {
        x.map(|v| half::f16::from_bits(v).to_f32())
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(
    unsafe_code,
    reason = "conversion intrinsics, inlined only into the variants that enable them"
)]
mod widen {
    use std::arch::x86_64::*;

    use super::{KEY_BLOCK, Widen};

    /// `vcvtph2ps` on 512 bits; made only on a CPU with AVX-512F.
    #[derive(Clone, Copy)]
    pub(super) struct Avx512(());

    impl Avx512 {
        /// The token, when this CPU has AVX-512F.
        pub(super) fn detect() -> Option<Self> {
            is_x86_feature_detected!("avx512f").then_some(Self(()))
        }
    }

    impl Widen for Avx512 {
        #[inline(always)]
        fn widen16(self, x: &[u16; KEY_BLOCK]) -> [f32; KEY_BLOCK] {
            // SAFETY: the token exists only on a CPU with AVX-512F.
            unsafe { widen_512(x) }
        }
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    fn widen_512(x: &[u16; KEY_BLOCK]) -> [f32; KEY_BLOCK] {
        let mut out = [0f32; KEY_BLOCK];
        // SAFETY: both arrays hold sixteen values.
        unsafe {
            let v = _mm512_cvtph_ps(_mm256_loadu_si256(x.as_ptr().cast()));
            _mm512_storeu_ps(out.as_mut_ptr(), v);
        }
        out
    }

    /// `vcvtph2ps` (F16C) on 256 bits, twice; made only on a CPU with AVX2, FMA and F16C
    /// (the instruction sets of the loops it is used in).
    #[derive(Clone, Copy)]
    pub(super) struct F16c(());

    impl F16c {
        /// The token, when this CPU has AVX2, FMA and F16C.
        pub(super) fn detect() -> Option<Self> {
            (is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c"))
            .then_some(Self(()))
        }
    }

    impl Widen for F16c {
        #[inline(always)]
        fn widen16(self, x: &[u16; KEY_BLOCK]) -> [f32; KEY_BLOCK] {
            // SAFETY: the token exists only on a CPU with F16C and AVX.
            unsafe { widen_f16c(x) }
        }
    }

    #[target_feature(enable = "avx,f16c")]
    #[inline]
    fn widen_f16c(x: &[u16; KEY_BLOCK]) -> [f32; KEY_BLOCK] {
        let mut out = [0f32; KEY_BLOCK];
        // SAFETY: both arrays hold sixteen values.
        unsafe {
            let lo = _mm256_cvtph_ps(_mm_loadu_si128(x.as_ptr().cast()));
            let hi = _mm256_cvtph_ps(_mm_loadu_si128(x.as_ptr().add(8).cast()));
            _mm256_storeu_ps(out.as_mut_ptr(), lo);
            _mm256_storeu_ps(out.as_mut_ptr().add(8), hi);
        }
        out
    }
}

/// Appends the keys of new positions `past..` (`[token][kv_head][head_dim]`) to a blocked
/// key cache as f16.
fn append_keys(cache: &mut Vec<u16>, past: usize, keys: &[f32], d: Dims) {
    // Row element j is head j / hd, dimension j % hd: at (head · hd + dim) · 16 + slot.
    append_blocked(cache, past, keys, d, |j, slot| j * KEY_BLOCK + slot);
}

/// Appends the values of new positions `past..` (`[token][kv_head][head_dim]`) to a blocked
/// value cache as f16.
fn append_values(cache: &mut Vec<u16>, past: usize, values: &[f32], d: Dims) {
    let hd = d.head_dim;
    // Row element j is head j / hd, dimension j % hd: at (head · 16 + slot) · hd + dim.
    append_blocked(cache, past, values, d, |j, slot| {
        ((j / hd) * KEY_BLOCK + slot) * hd + j % hd
    });
}

/// Writes each row of new positions into its block at `at(row element, slot in block)`,
/// growing the cache by a zeroed block when a block fills.
#[inline(always)]
fn append_blocked(
    cache: &mut Vec<u16>,
    past: usize,
    rows: &[f32],
    d: Dims,
    at: impl Fn(usize, usize) -> usize,
) {
    let block_len = d.kv_heads * d.head_dim * KEY_BLOCK;
    for (i, row) in rows.chunks_exact(d.kv_heads * d.head_dim).enumerate() {
        let p = past + i;
        let (block, slot) = (p / KEY_BLOCK, p % KEY_BLOCK);
        if cache.len() < (block + 1) * block_len {
            cache.resize((block + 1) * block_len, 0);
        }
        let dst = &mut cache[block * block_len..(block + 1) * block_len];
        for (j, &x) in row.iter().enumerate() {
            // Saturated, not rounded to infinity (which would make the scores NaN).
            dst[at(j, slot)] = half::f16::from_f32(x.clamp(-F16_MAX, F16_MAX)).to_bits();
        }
    }
}

/// The attention loops, inlined into each instruction-set variant above. The query heads that
/// share a KV head go together, so each cached key block and value row is read once for all
/// of them.
#[inline(always)]
fn attend_loops<W: Widen>(cvt: W, job: &Job<'_>, out: &mut [f32]) {
    let &Job {
        q,
        keys: kc,
        values: vc,
        past,
        len,
        d,
    } = job;
    let hd = d.head_dim;
    let n_rep = d.heads / d.kv_heads;
    let kv_row = d.kv_heads * hd;
    let block_len = kv_row * KEY_BLOCK;
    let scale = 1.0 / (hd as f32).sqrt();
    // Scores of the `n_rep` heads of one KV head, `scores[r * span + p]`, whole blocks.
    let span = (past + len).div_ceil(KEY_BLOCK) * KEY_BLOCK;
    let mut scores = vec![0f32; n_rep * span];
    let mut value = vec![0f32; hd];
    let mut key_block = vec![0f32; hd * KEY_BLOCK];
    for t in 0..len {
        let visible = past + t + 1;
        for kvh in 0..d.kv_heads {
            let first = t * d.heads + kvh * n_rep;
            let queries = &q[first * hd..(first + n_rep) * hd];
            for b in 0..visible.div_ceil(KEY_BLOCK) {
                // Widened once for the `n_rep` queries.
                let keys = &kc[b * block_len + kvh * hd * KEY_BLOCK..][..hd * KEY_BLOCK];
                cvt.widen(keys, &mut key_block);
                for (r, qv) in queries.chunks_exact(hd).enumerate() {
                    let dst = &mut scores[r * span + b * KEY_BLOCK..][..KEY_BLOCK];
                    for (s, v) in dst.iter_mut().zip(block_scores(qv, &key_block)) {
                        *s = v * scale;
                    }
                }
            }
            softmax_rows(&mut scores, span, visible);
            let o = &mut out[first * hd..(first + n_rep) * hd];
            o.fill(0.0);
            for p in 0..visible {
                let at = (p / KEY_BLOCK) * block_len + (kvh * KEY_BLOCK + p % KEY_BLOCK) * hd;
                cvt.widen(&vc[at..at + hd], &mut value);
                for (r, or) in o.chunks_exact_mut(hd).enumerate() {
                    let w = scores[r * span + p];
                    for (oi, vi) in or.iter_mut().zip(&value) {
                        *oi += w * vi;
                    }
                }
            }
        }
    }
}

/// Softmax over the first `visible` scores of each row of `span`.
#[inline(always)]
fn softmax_rows(scores: &mut [f32], span: usize, visible: usize) {
    for s in scores.chunks_exact_mut(span) {
        let s = &mut s[..visible];
        let max = lanes_fold(s, f32::NEG_INFINITY, f32::max);
        for v in s.iter_mut() {
            *v = super::vmath::exp(*v - max);
        }
        let sum = lanes_fold(s, 0.0, |a, b| a + b);
        let inv = 1.0 / sum;
        for v in s.iter_mut() {
            *v *= inv;
        }
    }
}

/// `f` over `x` in sixteen independent lanes, then over the lanes: a reduction that
/// vectorises (a sequential fold cannot, its order being fixed). `f` must be associative and
/// commutative up to rounding, with `init` its identity.
#[inline(always)]
fn lanes_fold(x: &[f32], init: f32, f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut lanes = [init; 16];
    let (whole, tail) = x.as_chunks::<16>();
    for c in whole {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l = f(*l, v);
        }
    }
    let head = lanes.into_iter().fold(init, &f);
    tail.iter().fold(head, |a, &v| f(a, v))
}

/// One query's dot products with the [`KEY_BLOCK`] keys of a block (`[head_dim][16]`), four
/// dimensions in independent accumulators so the multiply-adds overlap. Each accumulator is
/// its own sixteen-float array, so it lives in one vector register: with the four in one
/// array of arrays, LLVM kept them on the stack and added one float at a time, which made
/// attention half of a 16-stream decode step (perf profile of the engine bench at bab17e7).
#[inline(always)]
fn block_scores(q: &[f32], keys: &[f32]) -> [f32; KEY_BLOCK] {
    /// `acc += s · k`, sixteen lanes.
    #[inline(always)]
    fn axpy(acc: &mut [f32; KEY_BLOCK], s: f32, k: &[f32; KEY_BLOCK]) {
        for (a, k) in acc.iter_mut().zip(k) {
            *a += s * k;
        }
    }
    let (rows, _) = keys.as_chunks::<KEY_BLOCK>();
    let (q4, q_tail) = q.as_chunks::<4>();
    let (rows4, rows_tail) = rows.as_chunks::<4>();
    let (mut a0, mut a1, mut a2, mut a3) = (
        [0f32; KEY_BLOCK],
        [0f32; KEY_BLOCK],
        [0f32; KEY_BLOCK],
        [0f32; KEY_BLOCK],
    );
    for (qd, kd) in q4.iter().zip(rows4) {
        axpy(&mut a0, qd[0], &kd[0]);
        axpy(&mut a1, qd[1], &kd[1]);
        axpy(&mut a2, qd[2], &kd[2]);
        axpy(&mut a3, qd[3], &kd[3]);
    }
    for (&qd, kd) in q_tail.iter().zip(rows_tail) {
        axpy(&mut a0, qd, kd);
    }
    std::array::from_fn(|j| (a0[j] + a1[j]) + (a2[j] + a3[j]))
}

/// Device attention of one sequence: `q` `[heads, len, hd]`, `k`/`v` `[kv_heads, len, hd]`;
/// returns `[len, heads * hd]`.
pub fn device_seq(
    kv: &mut KvCache,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    past: usize,
    len: usize,
    d: Dims,
) -> candle_core::Result<Tensor> {
    let (nh, nkv, hd) = (d.heads, d.kv_heads, d.head_dim);
    let n_rep = nh / nkv;
    let (kc, vc) = kv.append(k, v)?;
    let kv_len = past + len;
    // Query heads sharing a KV head are stacked as extra rows: no K/V copies.
    let q = q.reshape((nkv, n_rep * len, hd))?;
    let scores = (q.matmul(&kc.t()?)? * (1.0 / (hd as f64).sqrt()))?;
    let scores = if len > 1 {
        let mask: Vec<f32> = (0..len)
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
        let mask = Tensor::from_vec(mask, (len, kv_len), q.device())?.to_dtype(scores.dtype())?;
        scores
            .reshape((nkv, n_rep, len, kv_len))?
            .broadcast_add(&mask)?
            .reshape((nkv, n_rep * len, kv_len))?
    } else {
        scores
    };
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    probs
        .matmul(&vc)?
        .reshape((nh, len, hd))?
        .transpose(0, 1)?
        .reshape((len, nh * hd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_attention_matches_the_tensor_path() {
        // (past, new, heads, kv heads, head width). Within one key block; across blocks with
        // a head width that is not a multiple of the score accumulators; a long prompt then
        // one decode token; SmolLM2's shape; a prompt into an empty cache; query heads per KV
        // head in more than one group of the AVX-512 kernel (5, 8) and two passes of its
        // value loop (width 128); no grouping at all.
        let shapes = [
            (5, 3, 6, 2, 8),
            (20, 15, 6, 2, 6),
            (33, 1, 6, 2, 64),
            (40, 1, 9, 3, 64),
            (0, 20, 9, 3, 64),
            (17, 5, 10, 2, 128),
            (100, 2, 8, 1, 64),
            (31, 2, 4, 4, 64),
        ];
        let variants = attend_variants();
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            assert_eq!(variants.len(), 4, "every variant runs on an AVX-512 CPU");
        }
        for (name, attend) in &variants {
            for (past, len, heads, kv_heads, head_dim) in shapes {
                let d = Dims {
                    heads,
                    kv_heads,
                    head_dim,
                };
                host_matches_tensor(name, attend, past, len, d);
            }
        }
    }

    #[test]
    fn keys_and_values_beyond_f16_saturate_instead_of_poisoning_the_scores() {
        let d = Dims {
            heads: 2,
            kv_heads: 1,
            head_dim: 64,
        };
        for (name, attend) in &attend_variants() {
            let mut kv = LayerKv::new(&Device::Cpu);
            let q = vec![0.01f32; 3 * 2 * 64];
            let mut k = vec![0.5f32; 3 * 64];
            let mut v = vec![1.0f32; 3 * 64];
            k[70] = 1e6;
            v[5] = -1e9;
            let out = host_step_in(
                &mut [HostSeq {
                    kv: &mut kv,
                    past: 0,
                    len: 3,
                }],
                &q,
                &k,
                &v,
                d,
                attend.as_ref(),
            );
            assert!(out.iter().all(|x| x.is_finite()), "{name}: {out:?}");
            // The first position's value 5 is the largest negative f16, at weight 1 for the
            // first token.
            assert_eq!(out[5], -F16_MAX, "{name}");
        }
    }

    fn host_matches_tensor(name: &str, attend: &AttendFn, past: usize, len: usize, d: Dims) {
        let dev = Device::Cpu;
        let rand = |n: usize, seed: u64| -> Vec<f32> {
            (0..n)
                .map(|i| (((i as u64 + 1) * (seed * 2654435761 + 7)) % 1000) as f32 / 500.0 - 1.0)
                .collect()
        };
        let qkv_rows = past + len;
        // The host cache keeps f16: the tensor path gets the same rounded keys and values.
        let f16_exact = |x: Vec<f32>| -> Vec<f32> {
            x.into_iter()
                .map(|v| half::f16::from_f32(v).to_f32())
                .collect()
        };
        let k_all = f16_exact(rand(qkv_rows * d.kv_heads * d.head_dim, 1));
        let v_all = f16_exact(rand(qkv_rows * d.kv_heads * d.head_dim, 2));
        let q_all = rand(qkv_rows * d.heads * d.head_dim, 3);
        // Host: first the past tokens, then the new ones.
        let mut host = LayerKv::new(&dev);
        let split = |x: &[f32], w: usize| (x[..past * w].to_vec(), x[past * w..].to_vec());
        let (k0, k1) = split(&k_all, d.kv_heads * d.head_dim);
        let (v0, v1) = split(&v_all, d.kv_heads * d.head_dim);
        let (q0, q1) = split(&q_all, d.heads * d.head_dim);
        host_step_in(
            &mut [HostSeq {
                kv: &mut host,
                past: 0,
                len: past,
            }],
            &q0,
            &k0,
            &v0,
            d,
            attend,
        );
        let host_out = host_step_in(
            &mut [HostSeq {
                kv: &mut host,
                past,
                len,
            }],
            &q1,
            &k1,
            &v1,
            d,
            attend,
        );
        // Tensor path on the same data.
        let mut cache = KvCache::new(1, 4);
        let to_t = |x: &[f32], n: usize, h: usize| {
            Tensor::from_vec(x.to_vec(), (n, h, d.head_dim), &dev)
                .unwrap()
                .transpose(0, 1)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        if past > 0 {
            device_seq(
                &mut cache,
                &to_t(&q0, past, d.heads),
                &to_t(&k0, past, d.kv_heads),
                &to_t(&v0, past, d.kv_heads),
                0,
                past,
                d,
            )
            .unwrap();
        }
        let dev_out = device_seq(
            &mut cache,
            &to_t(&q1, len, d.heads),
            &to_t(&k1, len, d.kv_heads),
            &to_t(&v1, len, d.kv_heads),
            past,
            len,
            d,
        )
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
        assert_eq!(host_out.len(), dev_out.len());
        for (a, b) in host_out.iter().zip(&dev_out) {
            assert!(
                (a - b).abs() < 1e-5,
                "{name}, past {past} len {len} {d:?}: {a} vs {b}"
            );
        }
    }
}
