//! Quantized matmul for CPUs with AVX-512 VNNI, on weights repacked at load time so that one
//! `vpdpbusd` multiplies four values of sixteen rows at once.
//!
//! GGUF stores a matrix row by row, 32 values per block. The kernels of [`super::q4`] dot one
//! row with one activation row at a time, so every block ends in a horizontal sum and every
//! (row, token) pair pays for scale arithmetic; that caps a batched step far below what the
//! multiply units can do. Here rows go in groups of sixteen: for each group and block, one
//! 64-byte line holds the sixteen rows' scales and minimums (f16, as in the file), then come
//! the weights, arranged so that 32-bit lane `r` of a line holds four consecutive values of
//! row `r`. A block of one token is then eight `vpdpbusd`s with the token's activations
//! broadcast four bytes at a time, leaving sixteen rows' integer sums in one register: no
//! horizontal sums, and the scale work (a convert and two FMAs) is shared by sixteen rows.
//! Each group's lines are read once per tile of sixteen tokens, and prefetched ahead of use.
//!
//! Four-bit weights (Q4_1) keep two values per byte (the low nibble of byte `4r + k` in line
//! `p` is value `8p + k` of row `r`, the high nibble value `8p + 4 + k`); eight-bit weights
//! (Q8_0) are stored biased by 128 as unsigned bytes, the bias folded into the block minimum.
//! Both then compute `Σ_b d_w·d_x·Σ q_w·q_x + m_w·d_x·Σ q_x`, as [`super::q4`] does, with
//! activations quantized to eight bits per block the same way.

use rayon::prelude::*;

/// Values per block.
const QK: usize = 32;
/// Rows whose values share one register.
const GROUP: usize = 16;
/// Tokens multiplied per pass over a group's weights: sixteen keep a batched decode step to
/// one pass over memory.
const TILE: usize = 16;

/// One 64-byte, 64-byte-aligned line of packed weights.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u8; 64]);

/// A quantized `[rows, cols]` matrix in the grouped layout.
pub struct PackedMatrix {
    rows: usize,
    cols: usize,
    /// Bits per weight: 4 or 8 (then each block is 1 + 4 or 1 + 8 lines).
    bits: usize,
    lines: Vec<Line>,
}

impl std::fmt::Debug for PackedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedMatrix")
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("bits", &self.bits)
            .finish_non_exhaustive()
    }
}

/// One block of one row: f16 bits of its scale and minimum, and its 32 unsigned values.
type RowBlock = (u16, u16, [u8; QK]);

impl PackedMatrix {
    /// Whether this CPU runs the kernels (the constructors return `None` when not).
    pub fn available() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vnni")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// Repacks raw GGML Q4_1 bytes (f16 scale, f16 minimum, 16 bytes of nibbles per block:
    /// low nibbles values 0..16, high nibbles 16..32) of a `[rows, cols]` matrix.
    pub fn from_q4_1(bytes: &[u8], rows: usize, cols: usize) -> Option<Self> {
        let block = ggml_blocks::<20>(bytes, rows, cols)?;
        Self::build(rows, cols, 4, |r, b| {
            let blk = block(r, b);
            let q = std::array::from_fn(|v| {
                let byte = blk[4 + v % 16];
                if v < 16 { byte & 0x0F } else { byte >> 4 }
            });
            Some((
                u16::from_le_bytes([blk[0], blk[1]]),
                u16::from_le_bytes([blk[2], blk[3]]),
                q,
            ))
        })
    }

    /// Repacks raw GGML Q8_0 bytes (f16 scale, 32 signed bytes per block) of a `[rows, cols]`
    /// matrix: values are biased to `w + 128`, and the block minimum `−128·d` takes the bias
    /// back. `None` also when a scale is too large or too small for `−128·d` to be an exact
    /// f16 (no real weight file has such scales).
    pub fn from_q8_0(bytes: &[u8], rows: usize, cols: usize) -> Option<Self> {
        let block = ggml_blocks::<34>(bytes, rows, cols)?;
        Self::build(rows, cols, 8, |r, b| {
            let blk = block(r, b);
            let d = u16::from_le_bytes([blk[0], blk[1]]);
            let q = std::array::from_fn(|v| (blk[2 + v] as i8 as i16 + 128) as u8);
            Some((d, times_minus_128(d)?, q))
        })
    }

    /// Lays out `rows` rows (padded with zero rows to a whole group) from their blocks.
    fn build(
        rows: usize,
        cols: usize,
        bits: usize,
        block: impl Fn(usize, usize) -> Option<RowBlock>,
    ) -> Option<Self> {
        let blocks = cols / QK;
        let per = 1 + bits;
        let groups = rows.div_ceil(GROUP);
        let mut lines = vec![Line([0; 64]); groups * blocks * per];
        for g in 0..groups {
            for b in 0..blocks {
                let at = (g * blocks + b) * per;
                let lines = &mut lines[at..at + per];
                for i in 0..GROUP.min(rows - g * GROUP) {
                    let (d, m, q) = block(g * GROUP + i, b)?;
                    lines[0].0[2 * i..2 * i + 2].copy_from_slice(&d.to_le_bytes());
                    lines[0].0[32 + 2 * i..32 + 2 * i + 2].copy_from_slice(&m.to_le_bytes());
                    for k in 0..4 {
                        if bits == 4 {
                            for p in 0..4 {
                                lines[1 + p].0[4 * i + k] = q[8 * p + k] | (q[8 * p + 4 + k] << 4);
                            }
                        } else {
                            for p in 0..8 {
                                lines[1 + p].0[4 * i + k] = q[4 * p + k];
                            }
                        }
                    }
                }
            }
        }
        Some(Self {
            rows,
            cols,
            bits,
            lines,
        })
    }

    /// Output width.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input width.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// `x` is `[tokens, cols]`; returns `[tokens, rows]`. Each token's outputs are the same
    /// whatever else is in the batch.
    pub fn matmul(&self, x: &[f32], tokens: usize) -> Vec<f32> {
        Self::matmul_many(&[self], x, tokens)
            .pop()
            .unwrap_or_default()
    }

    /// Several matrices of the same width times the same `[tokens, cols]` activations (a
    /// layer's query, key and value projections; its gate and up projections): the
    /// activations are quantized once and every matrix's groups share one parallel pass, so
    /// small matrices do not each pay for a pass of their own. Returns each matrix's
    /// `[tokens, rows]`, in order.
    pub fn matmul_many(ms: &[&Self], x: &[f32], tokens: usize) -> Vec<Vec<f32>> {
        let Some(cols) = ms.first().map(|m| m.cols) else {
            return Vec::new();
        };
        assert!(ms.iter().all(|m| m.cols == cols), "matrices of one width");
        assert_eq!(x.len(), tokens * cols, "activations of {tokens} tokens");
        let blocks = cols / QK;
        let acts = Acts::quantize(x, blocks);
        // Group-major: every task owns one group of one matrix, for every token.
        let mut by_group: Vec<Vec<f32>> = ms
            .iter()
            .map(|m| vec![0f32; m.rows.div_ceil(GROUP) * tokens * GROUP])
            .collect();
        if tokens > 0 {
            let tasks: Vec<(&Self, usize, &mut [f32])> = ms
                .iter()
                .zip(by_group.iter_mut())
                .flat_map(|(&m, buf)| {
                    buf.chunks_mut(tokens * GROUP)
                        .enumerate()
                        .map(move |(g, out)| (m, g, out))
                })
                .collect();
            tasks
                .into_par_iter()
                .with_min_len(2)
                .for_each(|(m, g, out)| m.group(g, &acts, blocks, out));
        }
        ms.iter()
            .zip(&by_group)
            .map(|(m, by_group)| m.token_major(by_group, tokens))
            .collect()
    }

    /// Group `g`'s outputs for every token of `acts`, `[token][16]`.
    fn group(&self, g: usize, acts: &Acts, blocks: usize, out: &mut [f32]) {
        let per = 1 + self.bits;
        let w = &self.lines[g * blocks * per..];
        for (tile, o) in out.chunks_mut(TILE * GROUP).enumerate() {
            let t0 = tile * TILE;
            let nt = o.len() / GROUP;
            let values = &acts.values[t0 * blocks..(t0 + nt) * blocks];
            let scales = &acts.scales[t0 * blocks..(t0 + nt) * blocks];
            kernel(self.bits, w, values, scales, blocks, o);
        }
    }

    /// Group-major outputs (`[group][token][16]`) as `[token][rows]`; a prompt's many tokens
    /// are spread over the pool.
    fn token_major(&self, by_group: &[f32], tokens: usize) -> Vec<f32> {
        let rows = self.rows;
        let mut out = vec![0f32; tokens * rows];
        if tokens == 0 {
            return out;
        }
        let row = |(t, dst): (usize, &mut [f32])| {
            for (g, chunk) in by_group.chunks_exact(tokens * GROUP).enumerate() {
                let first = g * GROUP;
                let n = GROUP.min(rows - first);
                dst[first..first + n].copy_from_slice(&chunk[t * GROUP..t * GROUP + n]);
            }
        };
        if tokens >= PAR_TOKENS {
            out.par_chunks_mut(rows)
                .enumerate()
                .with_min_len(PAR_TOKENS / 4)
                .for_each(row);
        } else {
            out.chunks_mut(rows).enumerate().for_each(row);
        }
        out
    }
}

/// Tokens from which a step's activation quantizing and output transposing are spread over
/// the pool (a prompt's); a decode step's few tokens take microseconds.
const PAR_TOKENS: usize = 64;

/// Block `b` of row `r` of a GGML `[rows, cols]` matrix of `BLOCK`-byte blocks; `None` when
/// this CPU has no kernels or the bytes are not such a matrix.
fn ggml_blocks<'a, const BLOCK: usize>(
    bytes: &'a [u8],
    rows: usize,
    cols: usize,
) -> Option<impl Fn(usize, usize) -> &'a [u8]> {
    if !PackedMatrix::available()
        || !cols.is_multiple_of(QK)
        || bytes.len() != rows * cols / QK * BLOCK
    {
        return None;
    }
    let blocks = cols / QK;
    Some(move |r: usize, b: usize| &bytes[(r * blocks + b) * BLOCK..][..BLOCK])
}

/// `−128·v` as f16 bits when that is exact and normal (or zero).
fn times_minus_128(v: u16) -> Option<u16> {
    let exp = (v >> 10) & 0x1F;
    match exp {
        0 if v & 0x3FF == 0 => Some(v ^ 0x8000),
        // 2⁷ adds 7 to the exponent, which must stay below the infinity code 31.
        1..=23 => Some((v ^ 0x8000) + (7 << 10)),
        _ => None,
    }
}

/// The activations of a step, quantized to eight bits per block of 32, token-major.
struct Acts {
    /// Per token and block: the scale, and the scale × the sum of the values.
    scales: Vec<[f32; 2]>,
    values: Vec<[i8; QK]>,
}

impl Acts {
    fn quantize(x: &[f32], blocks: usize) -> Self {
        let n = x.len() / QK;
        debug_assert_eq!(n % blocks.max(1), 0);
        let (whole, _) = x.as_chunks::<QK>();
        // The vector quantizer where the kernels run (the only place packed matrices exist),
        // else the portable one it matches: the same activations either way.
        let quantize = block_quantizer();
        let mut scales = vec![[0f32; 2]; n];
        let mut values = vec![[0i8; QK]; n];
        let run = |x: &[[f32; QK]], s: &mut [[f32; 2]], v: &mut [[i8; QK]]| {
            for ((x, s), v) in x.iter().zip(s).zip(v) {
                (*s, *v) = quantize(x);
            }
        };
        let chunk = blocks.max(1) * PAR_TOKENS / 4;
        if n >= blocks * PAR_TOKENS {
            whole
                .par_chunks(chunk)
                .zip(scales.par_chunks_mut(chunk))
                .zip(values.par_chunks_mut(chunk))
                .for_each(|((x, s), v)| run(x, s, v));
        } else {
            run(whole, &mut scales, &mut values);
        }
        Self { scales, values }
    }
}

/// Quantizes one block to eight bits: `[d, d·Σq]` and the values.
type BlockQuantizer = fn(&[f32; QK]) -> ([f32; 2], [i8; QK]);

/// [`super::q4::quantize_block`], in AVX-512 when this CPU has the kernels (rounding the same
/// way, bit for bit).
fn block_quantizer() -> BlockQuantizer {
    #[cfg(target_arch = "x86_64")]
    if PackedMatrix::available() {
        return avx512::quantize_block;
    }
    super::q4::quantize_block
}

/// One group's outputs for up to [`TILE`] tokens: `out[t·16 + r]`. `w` starts at the group's
/// lines and runs on to the matrix's end.
fn kernel(
    bits: usize,
    w: &[Line],
    values: &[[i8; QK]],
    scales: &[[f32; 2]],
    blocks: usize,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! tile {
            ($($n:literal)*) => {
                match (bits, out.len() / GROUP) {
                    $((4, $n) => avx512::group::<$n, 4>(w, values, scales, blocks, out),)*
                    $((8, $n) => avx512::group::<$n, 8>(w, values, scales, blocks, out),)*
                    _ => unreachable!("tiles hold 1 to {TILE} tokens of 4- or 8-bit weights"),
                }
            };
        }
        tile!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16);
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (bits, w, values, scales, blocks, out);
        unreachable!("packed matrices exist only where the kernels run");
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(
    unsafe_code,
    reason = "AVX-512 intrinsics; packed matrices exist only after runtime feature detection"
)]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{GROUP, Line, QK};

    /// How far ahead of the block being multiplied its lines are prefetched, in lines. The
    /// hardware prefetcher alone leaves a batched step waiting on memory: measured at bab17e7
    /// with a throwaway timing loop over random weights of SmolLM2-135M's shapes, with a tile of
    /// sixteen tokens, prefetching cut a model's worth of matmuls from 6.5–8 ms to 4.3 ms
    /// on the 2-core EPYC (and a single token's from 1.9 to 1.5 ms).
    const PREFETCH: usize = 40;

    /// One group's dot products with `NT` tokens, for `BITS`-bit weights. `w` starts at the
    /// group's lines and may run on to the matrix's end (only prefetched).
    pub(super) fn group<const NT: usize, const BITS: usize>(
        w: &[Line],
        values: &[[i8; QK]],
        scales: &[[f32; 2]],
        blocks: usize,
        out: &mut [f32],
    ) {
        assert!(w.len() >= blocks * (1 + BITS), "the group's lines");
        assert!(values.len() >= NT * blocks && scales.len() >= NT * blocks);
        assert!(out.len() >= NT * GROUP);
        // SAFETY: a `PackedMatrix` (the only caller) exists only when `available()`.
        unsafe { group_512::<NT, BITS>(w, values, scales, blocks, out) }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    fn group_512<const NT: usize, const BITS: usize>(
        w: &[Line],
        values: &[[i8; QK]],
        scales: &[[f32; 2]],
        blocks: usize,
        out: &mut [f32],
    ) {
        let low = _mm512_set1_epi8(0x0F);
        let mut acc = [_mm512_setzero_ps(); NT];
        let per = 1 + BITS;
        for b in 0..blocks {
            let lines = &w[b * per..(b + 1) * per];
            // The lines 2.5 KiB ahead (near the group's end, the next group's) are asked for
            // now, so that memory streams while this block multiplies.
            for ahead in w.iter().skip(b * per + PREFETCH).take(per) {
                _mm_prefetch::<_MM_HINT_T0>(ahead.0.as_ptr().cast());
            }
            let sm = lines[0].0.as_ptr();
            // SAFETY (all loads): `Line`s are 64 bytes, 64-byte aligned.
            let (d, m) = unsafe {
                (
                    _mm512_cvtph_ps(_mm256_load_si256(sm.cast())),
                    _mm512_cvtph_ps(_mm256_load_si256(sm.add(32).cast())),
                )
            };
            let mut v = [_mm512_setzero_si512(); 8];
            if BITS == 4 {
                for p in 0..4 {
                    let raw = unsafe { _mm512_load_si512(lines[1 + p].0.as_ptr().cast()) };
                    v[2 * p] = _mm512_and_si512(raw, low);
                    v[2 * p + 1] = _mm512_and_si512(_mm512_srli_epi16(raw, 4), low);
                }
            } else {
                for (vp, line) in v.iter_mut().zip(&lines[1..]) {
                    *vp = unsafe { _mm512_load_si512(line.0.as_ptr().cast()) };
                }
            }
            for (t, a) in acc.iter_mut().enumerate() {
                let k = t * blocks + b;
                // Four activation bytes at a time, as little-endian words.
                let q = &values[k];
                let x: [i32; 8] = std::array::from_fn(|j| {
                    i32::from_le_bytes([
                        q[4 * j] as u8,
                        q[4 * j + 1] as u8,
                        q[4 * j + 2] as u8,
                        q[4 * j + 3] as u8,
                    ])
                });
                let sums = if NT < 4 {
                    // Few tokens: two chains halve the latency of the eight dependent sums.
                    let mut s0 = _mm512_setzero_si512();
                    let mut s1 = _mm512_setzero_si512();
                    for j in 0..4 {
                        s0 = _mm512_dpbusd_epi32(s0, v[2 * j], _mm512_set1_epi32(x[2 * j]));
                        s1 = _mm512_dpbusd_epi32(s1, v[2 * j + 1], _mm512_set1_epi32(x[2 * j + 1]));
                    }
                    _mm512_add_epi32(s0, s1)
                } else {
                    let mut s = _mm512_setzero_si512();
                    for (vj, xj) in v.iter().zip(x) {
                        s = _mm512_dpbusd_epi32(s, *vj, _mm512_set1_epi32(xj));
                    }
                    s
                };
                let [xd, xsum] = scales[k];
                let dd = _mm512_mul_ps(d, _mm512_set1_ps(xd));
                *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), dd, *a);
                *a = _mm512_fmadd_ps(m, _mm512_set1_ps(xsum), *a);
            }
        }
        for (a, o) in acc.iter().zip(out.chunks_exact_mut(GROUP)) {
            // SAFETY: `o` holds 16 floats.
            unsafe { _mm512_storeu_ps(o.as_mut_ptr(), *a) };
        }
    }

    /// [`super::super::q4::quantize_block`] with AVX-512.
    pub(super) fn quantize_block(x: &[f32; QK]) -> ([f32; 2], [i8; QK]) {
        // SAFETY: called only when `available()`; reads the 32 floats of `x`.
        unsafe { quantize_512(x) }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    fn quantize_512(x: &[f32; QK]) -> ([f32; 2], [i8; QK]) {
        // SAFETY: `x` holds 32 floats.
        let (a, b) = unsafe {
            (
                _mm512_loadu_ps(x.as_ptr()),
                _mm512_loadu_ps(x.as_ptr().add(16)),
            )
        };
        let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
        let d = amax / 127.0;
        let inv = _mm512_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
        let sign = _mm512_set1_epi32(i32::MIN);
        let half = _mm512_set1_epi32(0.5f32.to_bits() as i32);
        let round = |v: __m512| {
            let s = _mm512_mul_ps(v, inv);
            // s + copysign(0.5, s), then truncation: rounds half away from zero.
            let h = _mm512_or_si512(_mm512_and_si512(_mm512_castps_si512(s), sign), half);
            _mm512_cvttps_epi32(_mm512_add_ps(s, _mm512_castsi512_ps(h)))
        };
        let (qa, qb) = (round(a), round(b));
        let sum = _mm512_reduce_add_epi32(_mm512_add_epi32(qa, qb));
        let mut q = [0i8; QK];
        // SAFETY: `q` holds 32 bytes.
        unsafe {
            _mm_storeu_si128(q.as_mut_ptr().cast(), _mm512_cvtepi32_epi8(qa));
            _mm_storeu_si128(q.as_mut_ptr().add(16).cast(), _mm512_cvtepi32_epi8(qb));
        }
        ([d, d * sum as f32], q)
    }
}

#[cfg(test)]
mod tests {
    use super::super::q4::{Q4Matrix, f16_to_f32};
    use super::*;

    /// Raw Q4_1 bytes of a `[rows, cols]` matrix with varied scales, minimums and nibbles.
    fn q4_1_bytes(rows: usize, cols: usize) -> Vec<u8> {
        let mut bytes = Vec::new();
        for r in 0..rows {
            for b in 0..cols / QK {
                // f16 bits of small positive scales and minimums of both signs.
                let d: u16 = 0x2000 + ((r * 13 + b * 7) % 700) as u16;
                let m: u16 = (0x2400 + ((r * 5 + b) % 300) as u16) | ((((r + b) % 2) as u16) << 15);
                bytes.extend_from_slice(&d.to_le_bytes());
                bytes.extend_from_slice(&m.to_le_bytes());
                bytes.extend((0..16).map(|j| ((r * 7 + j * 3 + b) % 256) as u8));
            }
        }
        bytes
    }

    fn q8_0_bytes(rows: usize, cols: usize) -> Vec<u8> {
        let mut bytes = Vec::new();
        for r in 0..rows {
            for b in 0..cols / QK {
                let d: u16 = 0x2000 + ((r * 11 + b * 3) % 900) as u16;
                bytes.extend_from_slice(&d.to_le_bytes());
                bytes.extend((0..QK).map(|j| ((r * 31 + b * 7 + j * 13) % 256) as u8));
            }
        }
        bytes
    }

    fn activations(tokens: usize, cols: usize) -> Vec<f32> {
        (0..tokens * cols)
            .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0 + (i % 7) as f32 * 0.01)
            .collect()
    }

    /// The exact product of the dequantized weights with the 8-bit activations, in f64.
    fn reference(dense: &[f64], rows: usize, cols: usize, x: &[f32], tokens: usize) -> Vec<f64> {
        let mut out = vec![0f64; tokens * rows];
        for t in 0..tokens {
            let xq: Vec<f64> = x[t * cols..(t + 1) * cols]
                .chunks_exact(QK)
                .flat_map(|blk| {
                    let (s, q) = block_quantizer()(blk.try_into().unwrap());
                    q.map(|v| f64::from(v) * f64::from(s[0]))
                })
                .collect();
            for r in 0..rows {
                out[t * rows + r] = (0..cols).map(|c| dense[r * cols + c] * xq[c]).sum();
            }
        }
        out
    }

    fn dense_q4_1(bytes: &[u8], rows: usize, cols: usize) -> Vec<f64> {
        let mut dense = Vec::with_capacity(rows * cols);
        for blk in bytes.chunks_exact(20) {
            let d = f64::from(f16_to_f32(u16::from_le_bytes([blk[0], blk[1]])));
            let m = f64::from(f16_to_f32(u16::from_le_bytes([blk[2], blk[3]])));
            dense.extend((0..16).map(|j| d * f64::from(blk[4 + j] & 0x0F) + m));
            dense.extend((0..16).map(|j| d * f64::from(blk[4 + j] >> 4) + m));
        }
        assert_eq!(dense.len(), rows * cols);
        dense
    }

    fn dense_q8_0(bytes: &[u8]) -> Vec<f64> {
        bytes
            .chunks_exact(34)
            .flat_map(|blk| {
                let d = f64::from(f16_to_f32(u16::from_le_bytes([blk[0], blk[1]])));
                blk[2..].iter().map(move |&w| d * f64::from(w as i8))
            })
            .collect()
    }

    fn assert_close(got: &[f32], want: &[f64], what: &str) {
        assert_eq!(got.len(), want.len());
        let scale = want.iter().fold(1f64, |m, v| m.max(v.abs()));
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (f64::from(*g) - w).abs() < 1e-4 * scale,
                "{what}[{i}]: {g} vs {w}"
            );
        }
    }

    #[test]
    fn four_bit_products_match_the_dequantized_matrix_for_every_tile_size() {
        if !PackedMatrix::available() {
            eprintln!("no AVX-512 VNNI here: the packed kernels are not used on this CPU");
            return;
        }
        // 37 rows: two whole groups and a padded one; 33 tokens: two full tiles and a tail.
        let (rows, cols) = (37, 96);
        let bytes = q4_1_bytes(rows, cols);
        let m = PackedMatrix::from_q4_1(&bytes, rows, cols).unwrap();
        let dense = dense_q4_1(&bytes, rows, cols);
        for tokens in [1, 2, 3, 4, 5, 7, 8, 9, 12, 15, 16, 17, 33] {
            let x = activations(tokens, cols);
            let y = m.matmul(&x, tokens);
            assert_close(&y, &reference(&dense, rows, cols, &x, tokens), "q4");
            // Batching changes nothing: each token alone gives the same bits.
            for t in 0..tokens {
                let alone = m.matmul(&x[t * cols..(t + 1) * cols], 1);
                assert_eq!(&y[t * rows..(t + 1) * rows], alone.as_slice(), "token {t}");
            }
        }
    }

    #[test]
    fn eight_bit_products_match_the_dequantized_matrix() {
        if !PackedMatrix::available() {
            return;
        }
        let (rows, cols) = (40, 64);
        let bytes = q8_0_bytes(rows, cols);
        let m = PackedMatrix::from_q8_0(&bytes, rows, cols).unwrap();
        let dense = dense_q8_0(&bytes);
        for tokens in [1, 6, 11] {
            let x = activations(tokens, cols);
            assert_close(
                &m.matmul(&x, tokens),
                &reference(&dense, rows, cols, &x, tokens),
                "q8",
            );
        }
    }

    #[test]
    fn several_matrices_in_one_pass_match_each_alone() {
        if !PackedMatrix::available() {
            return;
        }
        // Mixed bits and padded groups; 70 tokens quantize and transpose in parallel.
        let cols = 64;
        let a = PackedMatrix::from_q4_1(&q4_1_bytes(37, cols), 37, cols).unwrap();
        let b = PackedMatrix::from_q8_0(&q8_0_bytes(16, cols), 16, cols).unwrap();
        let c = PackedMatrix::from_q4_1(&q4_1_bytes(5, cols), 5, cols).unwrap();
        let dense = dense_q4_1(&q4_1_bytes(37, cols), 37, cols);
        for tokens in [0, 1, 16, 70] {
            let x = activations(tokens, cols);
            let all = PackedMatrix::matmul_many(&[&a, &b, &c], &x, tokens);
            assert_eq!(all.len(), 3);
            for (got, m) in all.iter().zip([&a, &b, &c]) {
                assert_eq!(got, &m.matmul(&x, tokens), "{tokens} tokens");
            }
            assert_close(&all[0], &reference(&dense, 37, cols, &x, tokens), "q4");
        }
        assert!(PackedMatrix::matmul_many(&[], &[], 3).is_empty());
    }

    #[test]
    fn agrees_with_the_portable_kernels() {
        if !PackedMatrix::available() {
            return;
        }
        let (rows, cols) = (48, 128);
        let bytes = q4_1_bytes(rows, cols);
        let packed = PackedMatrix::from_q4_1(&bytes, rows, cols).unwrap();
        let blocks = Q4Matrix::from_ggml_bytes(&bytes, rows, cols).unwrap();
        let x = activations(5, cols);
        let (a, b) = (packed.matmul(&x, 5), blocks.matmul(&x, 5));
        let want: Vec<f64> = b.iter().map(|&v| f64::from(v)).collect();
        assert_close(&a, &want, "packed vs q4");
    }

    #[test]
    fn quantization_matches_the_scalar_rounding() {
        let quantize_block = block_quantizer();
        let x: [f32; QK] = std::array::from_fn(|i| (i as f32 - 15.5) * 0.37);
        let (s, q) = quantize_block(&x);
        // The vector and portable quantizers agree bit for bit.
        assert_eq!((s, q), super::super::q4::quantize_block(&x));
        let d = 15.5 * 0.37 / 127.0;
        assert!((s[0] - d).abs() < 1e-7);
        for (v, qi) in x.iter().zip(q) {
            let want = (v / d).round() as i8;
            assert!(
                (i16::from(qi) - i16::from(want)).abs() <= 1,
                "{v}: {qi} vs {want}"
            );
        }
        assert_eq!(q[0], -127);
        assert_eq!(q[31], 127);
        assert_eq!(
            s[1],
            d * q.iter().map(|&v| i32::from(v)).sum::<i32>() as f32
        );
        // All zeros: a zero scale and zero values, never NaN.
        let (s, q) = quantize_block(&[0.0; QK]);
        assert_eq!((s, q), ([0.0, 0.0], [0; QK]));
    }

    #[test]
    fn refuses_bad_shapes_and_unrepresentable_scales() {
        assert!(PackedMatrix::from_q4_1(&[0; 20], 1, 33).is_none());
        assert!(PackedMatrix::from_q4_1(&[0; 19], 1, 32).is_none());
        assert!(PackedMatrix::from_q8_0(&[0; 33], 1, 32).is_none());
        assert_eq!(times_minus_128(0x3C00), Some(0xD800)); // 1.0 → −128.0
        assert_eq!(times_minus_128(0x0000), Some(0x8000));
        assert_eq!(times_minus_128(0x7BFF), None); // 65504 · 128 overflows
        assert_eq!(times_minus_128(0x0001), None); // subnormal
        if PackedMatrix::available() {
            let mut bytes = q8_0_bytes(2, 32);
            bytes[0..2].copy_from_slice(&0x7BFFu16.to_le_bytes());
            assert!(PackedMatrix::from_q8_0(&bytes, 2, 32).is_none());
        }
    }
}
