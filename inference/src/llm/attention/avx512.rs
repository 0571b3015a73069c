//! Host attention in AVX-512 intrinsics, for head widths that are multiples of 64 (those of
//! SmolLM2, Qwen2.5, Llama and Mistral).
//!
//! The portable loops of the parent module leave a decode step's attention bound by
//! instructions, not memory: LLVM keeps the output sums in memory, so every cached value row
//! costs a load and a store per output vector, and every key block is widened into a scratch
//! buffer before it is multiplied. Here the sums of up to [`HEADS`] query heads stay in
//! registers for a whole pass over the cache, keys are widened straight from the cache into
//! the multiply-adds, and the cache a few blocks ahead is prefetched, because at 16
//! sequences the cache no longer fits in the caches and every block comes from memory.

use std::arch::x86_64::*;

use super::{Job, KEY_BLOCK, softmax_rows};

/// Query heads per pass: their key sums (two per head) or value sums (four vectors per head)
/// stay in registers.
const HEADS: usize = 4;

/// Head dimensions per pass of the value loop: four vectors.
const DIMS: usize = 64;

/// How many key blocks (of one KV head) ahead of the one being read are prefetched.
const AHEAD: usize = 2;

/// Whether this kernel handles a job's shape.
pub(super) fn handles(job: &Job<'_>) -> bool {
    job.d.head_dim.is_multiple_of(DIMS)
}

/// Causal attention of the job's new queries over its cache (see [`super::attend`]).
///
/// # Safety
/// The CPU must have AVX-512F, and [`handles`] must hold for the job.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn attend(job: &Job<'_>, out: &mut [f32]) {
    let &Job {
        q,
        keys,
        values,
        past,
        len,
        d,
    } = job;
    let hd = d.head_dim;
    let n_rep = d.heads / d.kv_heads;
    let block_len = d.kv_heads * hd * KEY_BLOCK;
    let span = (past + len).div_ceil(KEY_BLOCK) * KEY_BLOCK;
    let mut scores = vec![0f32; n_rep * span];
    let cache = Cache {
        block_len,
        hd,
        span,
    };
    let head_len = hd * KEY_BLOCK;
    for t in 0..len {
        let visible = past + t + 1;
        // The loops prefetch the blocks AHEAD of the ones they read; the first blocks of each
        // pass are prefetched one pass early (the first head's keys: as early as possible).
        let lead = visible.div_ceil(KEY_BLOCK).min(AHEAD);
        lead_in(keys, head_len, lead, block_len);
        for kvh in 0..d.kv_heads {
            let first = t * d.heads + kvh * n_rep;
            let queries = &q[first * hd..(first + n_rep) * hd];
            let head_keys = &keys[kvh * head_len..];
            let head_values = &values[kvh * head_len..];
            lead_in(head_values, head_len, lead, block_len);
            for r0 in (0..n_rep).step_by(HEADS) {
                let nr = HEADS.min(n_rep - r0);
                let qs = &queries[r0 * hd..(r0 + nr) * hd];
                let sc = &mut scores[r0 * span..(r0 + nr) * span];
                match nr {
                    1 => key_scores::<1>(&cache, qs, head_keys, visible, sc),
                    2 => key_scores::<2>(&cache, qs, head_keys, visible, sc),
                    3 => key_scores::<3>(&cache, qs, head_keys, visible, sc),
                    _ => key_scores::<4>(&cache, qs, head_keys, visible, sc),
                }
            }
            if kvh + 1 < d.kv_heads {
                lead_in(&keys[(kvh + 1) * head_len..], head_len, lead, block_len);
            }
            softmax_rows(&mut scores, span, visible);
            let o = &mut out[first * hd..(first + n_rep) * hd];
            for r0 in (0..n_rep).step_by(HEADS) {
                let nr = HEADS.min(n_rep - r0);
                let w = &scores[r0 * span..(r0 + nr) * span];
                for c0 in (0..hd).step_by(DIMS) {
                    let head_values = &head_values[c0..];
                    let o = &mut o[r0 * hd + c0..];
                    match nr {
                        1 => value_sums::<1>(&cache, w, head_values, visible, o),
                        2 => value_sums::<2>(&cache, w, head_values, visible, o),
                        3 => value_sums::<3>(&cache, w, head_values, visible, o),
                        _ => value_sums::<4>(&cache, w, head_values, visible, o),
                    }
                }
            }
        }
    }
}

/// Strides of the blocked caches and of the score rows.
struct Cache {
    /// Elements of one block of all KV heads.
    block_len: usize,
    /// Head width.
    hd: usize,
    /// Length of one score row (whole blocks).
    span: usize,
}

/// Sixteen f16 values widened to f32.
#[target_feature(enable = "avx512f")]
#[inline]
fn widen(x: &[u16; 16]) -> __m512 {
    // SAFETY: the array holds the 32 bytes loaded.
    _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(x.as_ptr().cast()) })
}

/// Hints that the line at `at` (an element of `x`, or past its end: then nothing happens)
/// will be read soon.
#[target_feature(enable = "avx512f")]
#[inline]
fn prefetch(x: &[u16], at: usize) {
    if let Some(v) = x.get(at) {
        _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(v).cast());
    }
}

/// Prefetches the first `len` elements of each of the first `blocks` blocks of `x`.
#[target_feature(enable = "avx512f")]
#[inline]
fn lead_in(x: &[u16], len: usize, blocks: usize, block_len: usize) {
    for b in 0..blocks {
        // 32 f16 values to a line.
        for at in (0..len).step_by(32) {
            prefetch(x, b * block_len + at);
        }
    }
}

/// Scaled scores of `NR` query heads (`qs`, `[NR][hd]`) against the first `visible` cached
/// keys of one KV head (`keys`: its first block onwards), whole blocks, into `scores`
/// (`[NR][span]`).
#[target_feature(enable = "avx512f")]
#[inline]
fn key_scores<const NR: usize>(
    c: &Cache,
    qs: &[f32],
    keys: &[u16],
    visible: usize,
    scores: &mut [f32],
) {
    let hd = c.hd;
    let scale = _mm512_set1_ps(1.0 / (hd as f32).sqrt());
    let q: [&[f32]; NR] = std::array::from_fn(|r| &qs[r * hd..(r + 1) * hd]);
    for b in 0..visible.div_ceil(KEY_BLOCK) {
        let (rows, _) = keys[b * c.block_len..][..hd * KEY_BLOCK].as_chunks::<KEY_BLOCK>();
        let ahead = (b + AHEAD) * c.block_len;
        // Two sums per head (even and odd dimensions) so the multiply-adds overlap.
        let mut even = [_mm512_setzero_ps(); NR];
        let mut odd = [_mm512_setzero_ps(); NR];
        for (i, pair) in rows.chunks_exact(2).enumerate() {
            // One line (two key rows) of the block AHEAD blocks on per pair.
            prefetch(keys, ahead + 2 * i * KEY_BLOCK);
            let (k0, k1) = (widen(&pair[0]), widen(&pair[1]));
            for r in 0..NR {
                even[r] = _mm512_fmadd_ps(_mm512_set1_ps(q[r][2 * i]), k0, even[r]);
                odd[r] = _mm512_fmadd_ps(_mm512_set1_ps(q[r][2 * i + 1]), k1, odd[r]);
            }
        }
        for r in 0..NR {
            let s = _mm512_mul_ps(_mm512_add_ps(even[r], odd[r]), scale);
            let dst = &mut scores[r * c.span + b * KEY_BLOCK..][..KEY_BLOCK];
            // SAFETY: the slice holds the sixteen floats stored.
            unsafe { _mm512_storeu_ps(dst.as_mut_ptr(), s) };
        }
    }
}

/// Writes the weighted sum of the values of the first `visible` positions of one KV head
/// (`values`: its first block, at the pass's first dimension) to [`DIMS`] dimensions of `NR`
/// output heads (`out`, rows `hd` apart); `w` holds the heads' weights, `[NR][span]`.
#[target_feature(enable = "avx512f")]
#[inline]
fn value_sums<const NR: usize>(
    c: &Cache,
    w: &[f32],
    values: &[u16],
    visible: usize,
    out: &mut [f32],
) {
    let hd = c.hd;
    let at = |p: usize| (p / KEY_BLOCK) * c.block_len + (p % KEY_BLOCK) * hd;
    let mut acc = [[_mm512_setzero_ps(); 4]; NR];
    for p in 0..visible {
        // This pass's two lines of the row AHEAD blocks on.
        let ahead = at(p + AHEAD * KEY_BLOCK);
        prefetch(values, ahead);
        prefetch(values, ahead + 32);
        let (row, _) = values[at(p)..][..DIMS].as_chunks::<16>();
        let v = [
            widen(&row[0]),
            widen(&row[1]),
            widen(&row[2]),
            widen(&row[3]),
        ];
        for r in 0..NR {
            let wr = _mm512_set1_ps(w[r * c.span + p]);
            for (a, v) in acc[r].iter_mut().zip(&v) {
                *a = _mm512_fmadd_ps(wr, *v, *a);
            }
        }
    }
    for (r, sums) in acc.iter().enumerate() {
        let (dst, _) = out[r * hd..][..DIMS].as_chunks_mut::<16>();
        for (d, s) in dst.iter_mut().zip(sums) {
            // SAFETY: the array holds the sixteen floats stored.
            unsafe { _mm512_storeu_ps(d.as_mut_ptr(), *s) };
        }
    }
}
