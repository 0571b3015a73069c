//! A CPU matmul for GGML Q4_1 weights (blocks of 32 four-bit values with a scale and a
//! minimum), the format of the default SmolLM2 GGUF.
//!
//! candle has no SIMD kernel for Q4_1, and re-quantizing to a format it has (Q8_0) doubles
//! the bytes read per token, which is what bounds decoding on a CPU. This module keeps the
//! four-bit weights and runs an AVX2 dot product when the CPU has it (scalar otherwise): the
//! activations are quantized to eight bits per block, each weight block contributes
//! `d_w·d_x·Σ q_w·q_x + m_w·s_x`. Rows are split across threads; all tokens of a step are
//! multiplied while a row's blocks are hot, so a batch reads the weights once.

use rayon::prelude::*;

/// Values per block.
const QK: usize = 32;
/// Bytes per GGML Q4_1 block: f16 scale, f16 minimum, 16 bytes of nibbles.
const BLOCK_BYTES: usize = 20;
/// Weight rows per parallel task.
const ROWS_PER_TASK: usize = 32;
/// Tokens sharing one unpacked weight block in a batched step.
const TOKEN_TILE: usize = 8;

/// Q4_1 weights of a `[rows, cols]` matrix, scales widened to f32.
#[derive(Debug, Clone)]
pub struct Q4Matrix {
    rows: usize,
    cols: usize,
    /// Per block: scale and minimum.
    scales: Vec<[f32; 2]>,
    /// Per block: 16 bytes, low nibbles are values 0..16, high nibbles 16..32.
    nibbles: Vec<[u8; 16]>,
}

/// Activations of one token, quantized to eight bits per block.
struct Q8Row {
    /// Per block: scale and scale × sum of the quantized values.
    scales: Vec<[f32; 2]>,
    values: Vec<[i8; 32]>,
}

impl Q4Matrix {
    /// Reads raw GGML Q4_1 bytes of a `[rows, cols]` matrix.
    pub fn from_ggml_bytes(bytes: &[u8], rows: usize, cols: usize) -> Option<Self> {
        if !cols.is_multiple_of(QK) || bytes.len() != rows * cols / QK * BLOCK_BYTES {
            return None;
        }
        let mut scales = Vec::with_capacity(bytes.len() / BLOCK_BYTES);
        let mut nibbles = Vec::with_capacity(bytes.len() / BLOCK_BYTES);
        for b in bytes.chunks_exact(BLOCK_BYTES) {
            let d = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
            let m = f16_to_f32(u16::from_le_bytes([b[2], b[3]]));
            scales.push([d, m]);
            let mut q = [0u8; 16];
            q.copy_from_slice(&b[4..20]);
            nibbles.push(q);
        }
        Some(Self {
            rows,
            cols,
            scales,
            nibbles,
        })
    }

    /// Reads raw GGML Q8_0 bytes (f16 scale, 32 signed bytes per block) of a `[rows, cols]`
    /// matrix as two four-bit matrices whose products add up to the original's: with
    /// `w + 128 = lo + 16·hi`, `w·x = lo·x + (16·hi)·x − 128·x`, and the `−128·x` term is the
    /// low matrix's block minimum. Every value is kept exactly, and the product runs on this
    /// module's kernels in the engine's thread pool.
    pub fn split_q8_0(bytes: &[u8], rows: usize, cols: usize) -> Option<(Self, Self)> {
        const Q8_BLOCK: usize = 34;
        if !cols.is_multiple_of(QK) || bytes.len() != rows * cols / QK * Q8_BLOCK {
            return None;
        }
        let n = bytes.len() / Q8_BLOCK;
        let mut lo = Self {
            rows,
            cols,
            scales: Vec::with_capacity(n),
            nibbles: Vec::with_capacity(n),
        };
        let mut hi = Self {
            rows,
            cols,
            scales: Vec::with_capacity(n),
            nibbles: Vec::with_capacity(n),
        };
        for b in bytes.chunks_exact(Q8_BLOCK) {
            let d = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
            let shifted: Vec<u8> = b[2..34]
                .iter()
                .map(|&w| (w as i8 as i16 + 128) as u8)
                .collect();
            let pack = |f: fn(u8) -> u8| -> [u8; 16] {
                std::array::from_fn(|j| f(shifted[j]) | (f(shifted[j + 16]) << 4))
            };
            lo.scales.push([d, -128.0 * d]);
            lo.nibbles.push(pack(|v| v & 0x0F));
            hi.scales.push([16.0 * d, 0.0]);
            hi.nibbles.push(pack(|v| v >> 4));
        }
        Some((lo, hi))
    }

    /// Output width.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// `x` is `[tokens, cols]`; returns `[tokens, rows]`.
    pub fn matmul(&self, x: &[f32], tokens: usize) -> Vec<f32> {
        let blocks = self.cols / QK;
        let acts: Vec<Q8Row> = x.chunks_exact(self.cols).map(quantize_row).collect();
        let kernel = kernel();
        let batch_kernel = batch_kernel();
        // Row-major by weight row: every task owns whole rows for every token.
        let mut by_row = vec![0f32; self.rows * tokens];
        if tokens > 1 {
            // Several tokens: each weight block is unpacked once for a tile of tokens.
            let refs: Vec<&Q8Row> = acts.iter().collect();
            by_row
                .par_chunks_mut(ROWS_PER_TASK * tokens)
                .enumerate()
                .for_each(|(task, out)| {
                    let first = task * ROWS_PER_TASK;
                    for (i, row_out) in out.chunks_exact_mut(tokens).enumerate() {
                        let start = (first + i) * blocks;
                        let s = &self.scales[start..start + blocks];
                        let q = &self.nibbles[start..start + blocks];
                        for (tile, ys) in
                            refs.chunks(TOKEN_TILE).zip(row_out.chunks_mut(TOKEN_TILE))
                        {
                            batch_kernel(s, q, tile, ys);
                        }
                    }
                });
            let mut out = vec![0f32; self.rows * tokens];
            for r in 0..self.rows {
                for t in 0..tokens {
                    out[t * self.rows + r] = by_row[r * tokens + t];
                }
            }
            return out;
        }
        // One token (decode): four rows at a time share each activation load.
        let act = &acts[0];
        by_row
            .par_chunks_mut(ROWS_PER_TASK)
            .enumerate()
            .for_each(|(task, out)| {
                let first = task * ROWS_PER_TASK;
                let mut i = 0;
                while i < out.len() {
                    let n = (out.len() - i).min(4);
                    let start = (first + i) * blocks;
                    let s = &self.scales[start..start + n * blocks];
                    let q = &self.nibbles[start..start + n * blocks];
                    let ys = kernel(s, q, blocks, act);
                    out[i..i + n].copy_from_slice(&ys[..n]);
                    i += n;
                }
            });
        by_row
    }
}

/// Dot products of up to four consecutive rows (`blocks` blocks each) with one activation row.
type Kernel = fn(&[[f32; 2]], &[[u8; 16]], usize, &Q8Row) -> [f32; 4];

/// Dot products of one row with up to [`TOKEN_TILE`] activation rows, into `out`.
type BatchKernel = fn(&[[f32; 2]], &[[u8; 16]], &[&Q8Row], &mut [f32]);

fn batch_kernel() -> BatchKernel {
    #[cfg(target_arch = "x86_64")]
    if avx512::available() {
        return avx512::dot_tokens;
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        return avx2::dot_tokens;
    }
    dot_tokens_scalar
}

/// The activations of a batched kernel call as a full tile of eight tokens (missing ones
/// repeat the first), so the kernels' token loops have a constant trip count, unroll, and keep
/// their accumulators in registers. Returns the real token count (`None` when zero) and each
/// token's first `blocks` value blocks and scales.
#[allow(clippy::type_complexity)]
fn token_tile<'a>(
    xs: &[&'a Q8Row],
    outputs: usize,
    blocks: usize,
) -> Option<(usize, [&'a [[i8; 32]]; 8], [&'a [[f32; 2]]; 8])> {
    let nt = xs.len().min(outputs).min(TOKEN_TILE);
    if nt == 0 {
        return None;
    }
    let row = |t: usize| xs[if t < nt { t } else { 0 }];
    Some((
        nt,
        std::array::from_fn(|t| &row(t).values[..blocks]),
        std::array::from_fn(|t| &row(t).scales[..blocks]),
    ))
}

fn dot_tokens_scalar(scales: &[[f32; 2]], nibbles: &[[u8; 16]], xs: &[&Q8Row], out: &mut [f32]) {
    for (o, x) in out.iter_mut().zip(xs) {
        *o = dot_scalar(scales, nibbles, x);
    }
}

fn kernel() -> Kernel {
    #[cfg(target_arch = "x86_64")]
    if avx512::available() {
        return avx512::dot4;
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        return avx2::dot4;
    }
    dot4_scalar
}

fn dot4_scalar(scales: &[[f32; 2]], nibbles: &[[u8; 16]], blocks: usize, x: &Q8Row) -> [f32; 4] {
    let mut out = [0f32; 4];
    for (j, o) in out.iter_mut().enumerate().take(scales.len() / blocks) {
        let range = j * blocks..(j + 1) * blocks;
        *o = dot_scalar(&scales[range.clone()], &nibbles[range], x);
    }
    out
}

fn quantize_row(x: &[f32]) -> Q8Row {
    let (blocks, _) = x.as_chunks::<QK>();
    let (scales, values) = blocks.iter().map(quantize_block).unzip();
    Q8Row { scales, values }
}

/// One block of activations to eight bits: `d = max|x| / 127`, values rounded half away from
/// zero; returns `[d, d · Σq]` and the values. The packed kernels' vector quantizer rounds
/// the same way.
pub(super) fn quantize_block(block: &[f32; QK]) -> ([f32; 2], [i8; QK]) {
    let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
    let mut q = [0i8; QK];
    let mut sum = 0i32;
    for (qi, v) in q.iter_mut().zip(block) {
        // Round half away from zero without a libm call; |v·inv| ≤ 127.
        let scaled = v * inv;
        *qi = (scaled + 0.5f32.copysign(scaled)) as i8;
        sum += i32::from(*qi);
    }
    ([d, d * sum as f32], q)
}

fn dot_scalar(scales: &[[f32; 2]], nibbles: &[[u8; 16]], x: &Q8Row) -> f32 {
    let mut total = 0f32;
    for ((ws, wq), (xs, xq)) in scales
        .iter()
        .zip(nibbles)
        .zip(x.scales.iter().zip(&x.values))
    {
        let mut acc = 0i32;
        for j in 0..16 {
            acc += i32::from(wq[j] & 0x0F) * i32::from(xq[j]);
            acc += i32::from(wq[j] >> 4) * i32::from(xq[j + 16]);
        }
        total += ws[0] * xs[0] * acc as f32 + ws[1] * xs[1];
    }
    total
}

/// IEEE half to single precision.
pub(super) fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1F);
    let man = u32::from(h & 0x3FF);
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: normalise the mantissa.
            let mut e = 127 - 15 + 1;
            let mut m = man;
            while m & 0x400 == 0 {
                m <<= 1;
                e -= 1;
            }
            sign | (e << 23) | ((m & 0x3FF) << 13)
        }
        (0x1F, _) => sign | 0x7F80_0000 | (man << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (man << 13),
    };
    f32::from_bits(bits)
}

#[cfg(target_arch = "x86_64")]
#[allow(
    unsafe_code,
    reason = "AVX2 intrinsics; entered only after runtime feature detection"
)]
mod avx2 {
    use std::arch::x86_64::*;

    use super::Q8Row;

    /// Dot products of one row with up to eight activation rows.
    pub(super) fn dot_tokens(
        scales: &[[f32; 2]],
        nibbles: &[[u8; 16]],
        xs: &[&Q8Row],
        out: &mut [f32],
    ) {
        // SAFETY: `batch_kernel()` hands this function out only when the CPU reports AVX2 and FMA.
        unsafe { dot_tokens_avx2(scales, nibbles, xs, out) }
    }

    #[target_feature(enable = "avx2,fma")]
    fn dot_tokens_avx2(scales: &[[f32; 2]], nibbles: &[[u8; 16]], xs: &[&Q8Row], out: &mut [f32]) {
        let n = scales.len().min(nibbles.len());
        let Some((nt, values, xscales)) = super::token_tile(xs, out.len(), n) else {
            return;
        };
        let low = _mm_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); 8];
        let mut mins = [0f32; 8];
        for b in 0..n {
            // SAFETY: reads exactly the 16 bytes of one weight block.
            let wq = unsafe { _mm_loadu_si128(nibbles[b].as_ptr().cast()) };
            let lo = _mm_and_si128(wq, low);
            let hi = _mm_and_si128(_mm_srli_epi16(wq, 4), low);
            let w = _mm256_set_m128i(hi, lo);
            let [wd, wm] = scales[b];
            for t in 0..8 {
                // SAFETY: reads exactly the 32 bytes of one activation block.
                let xq = unsafe { _mm256_loadu_si256(values[t][b].as_ptr().cast()) };
                let sums = _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(w, xq), ones));
                let [xd, xs] = xscales[t][b];
                acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(wd * xd), sums, acc[t]);
                mins[t] += wm * xs;
            }
        }
        for t in 0..nt {
            out[t] = hsum(acc[t]) + mins[t];
        }
    }

    /// The sum of the eight lanes.
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let quad = _mm_add_ps(half, _mm_movehl_ps(half, half));
        _mm_cvtss_f32(_mm_add_ss(quad, _mm_shuffle_ps(quad, quad, 1)))
    }

    /// Dot products of up to four rows with one activation row.
    pub(super) fn dot4(
        scales: &[[f32; 2]],
        nibbles: &[[u8; 16]],
        blocks: usize,
        x: &Q8Row,
    ) -> [f32; 4] {
        // SAFETY: `kernel()` hands this function out only when the CPU reports AVX2 and FMA.
        unsafe { dot4_avx2(scales, nibbles, blocks, x) }
    }

    #[target_feature(enable = "avx2,fma")]
    fn dot4_avx2(scales: &[[f32; 2]], nibbles: &[[u8; 16]], blocks: usize, x: &Q8Row) -> [f32; 4] {
        let rows = (scales.len() / blocks).min(4);
        let n = blocks.min(x.values.len()).min(x.scales.len());
        assert!(scales.len() >= rows * blocks && nibbles.len() >= rows * blocks);
        let low = _mm_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut mins = [0f32; 4];
        for b in 0..n {
            // SAFETY: reads exactly the 32 bytes of one activation block.
            let xq = unsafe { _mm256_loadu_si256(x.values[b].as_ptr().cast()) };
            let [xd, xs] = x.scales[b];
            for r in 0..rows {
                let k = r * blocks + b;
                // SAFETY: reads exactly the 16 bytes of one weight block.
                let wq = unsafe { _mm_loadu_si128(nibbles[k].as_ptr().cast()) };
                let lo = _mm_and_si128(wq, low);
                let hi = _mm_and_si128(_mm_srli_epi16(wq, 4), low);
                let pairs = _mm256_maddubs_epi16(_mm256_set_m128i(hi, lo), xq);
                let sums = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
                acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(scales[k][0] * xd), sums, acc[r]);
                mins[r] += scales[k][1] * xs;
            }
        }
        let mut out = [0f32; 4];
        for r in 0..rows {
            out[r] = hsum(acc[r]) + mins[r];
        }
        out
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(
    unsafe_code,
    reason = "AVX-512 intrinsics; entered only after runtime feature detection"
)]
mod avx512 {
    //! Two blocks per instruction: `vpdpbusd` multiplies 64 unsigned weight nibbles by 64
    //! signed activations and sums each group of four into sixteen 32-bit lanes, eight per
    //! block, replacing AVX2's multiply-add pair.
    use std::arch::x86_64::*;

    use super::Q8Row;

    /// Whether this CPU runs these kernels.
    pub(super) fn available() -> bool {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }

    /// Weights of blocks `b` and `b + 1` as 64 bytes laid out like two activation blocks:
    /// low nibbles are values 0..16 of a block, high nibbles 16..32.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
    fn unpack_pair(pair: &[[u8; 16]]) -> __m512i {
        assert!(pair.len() >= 2, "two blocks");
        // SAFETY: `pair` holds (at least) two blocks, 32 contiguous bytes.
        let q = unsafe { _mm256_loadu_si256(pair.as_ptr().cast()) };
        let low = _mm256_set1_epi8(0x0F);
        let lo = _mm256_and_si256(q, low);
        let hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), low);
        // Lanes [lo_b, lo_b1, hi_b, hi_b1] → [lo_b, hi_b, lo_b1, hi_b1].
        let z = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
        _mm512_shuffle_i64x2(z, z, 0b11_01_10_00)
    }

    /// The scale of block `b` in lanes 0..8 and of block `b + 1` in lanes 8..16.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
    fn pair_scale(s0: f32, s1: f32) -> __m512 {
        _mm512_insertf32x8(_mm512_set1_ps(s0), _mm256_set1_ps(s1), 1)
    }

    /// Dot products of one row with up to eight activation rows.
    pub(super) fn dot_tokens(
        scales: &[[f32; 2]],
        nibbles: &[[u8; 16]],
        xs: &[&Q8Row],
        out: &mut [f32],
    ) {
        // SAFETY: `batch_kernel()` hands this function out only when `available()`.
        unsafe { dot_tokens_512(scales, nibbles, xs, out) }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
    fn dot_tokens_512(scales: &[[f32; 2]], nibbles: &[[u8; 16]], xs: &[&Q8Row], out: &mut [f32]) {
        let n = scales.len().min(nibbles.len());
        let Some((nt, values, xscales)) = super::token_tile(xs, out.len(), n) else {
            return;
        };
        let mut acc = [_mm512_setzero_ps(); 8];
        let mut mins = [0f32; 8];
        let pairs = n / 2;
        for p in 0..pairs {
            let b = 2 * p;
            let w = unpack_pair(&nibbles[b..b + 2]);
            let ([d0, m0], [d1, m1]) = (scales[b], scales[b + 1]);
            for t in 0..8 {
                // SAFETY: two contiguous activation blocks, 64 bytes.
                let xq = unsafe { _mm512_loadu_si512(values[t][b..b + 2].as_ptr().cast()) };
                let sums = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), w, xq));
                let ([xd0, xs0], [xd1, xs1]) = (xscales[t][b], xscales[t][b + 1]);
                acc[t] = _mm512_fmadd_ps(pair_scale(d0 * xd0, d1 * xd1), sums, acc[t]);
                mins[t] += m0 * xs0 + m1 * xs1;
            }
        }
        for t in 0..nt {
            let mut total = _mm512_reduce_add_ps(acc[t]) + mins[t];
            if n % 2 == 1 {
                let b = n - 1;
                total += super::dot_scalar(&scales[b..], &nibbles[b..], &tail(xs[t], b));
            }
            out[t] = total;
        }
    }

    /// The activation blocks from `b` on, for the scalar tail of an odd block count.
    fn tail(x: &Q8Row, b: usize) -> Q8Row {
        Q8Row {
            scales: x.scales[b..].to_vec(),
            values: x.values[b..].to_vec(),
        }
    }

    /// Dot products of up to four rows with one activation row.
    pub(super) fn dot4(
        scales: &[[f32; 2]],
        nibbles: &[[u8; 16]],
        blocks: usize,
        x: &Q8Row,
    ) -> [f32; 4] {
        // SAFETY: `kernel()` hands this function out only when `available()`.
        unsafe { dot4_512(scales, nibbles, blocks, x) }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
    fn dot4_512(scales: &[[f32; 2]], nibbles: &[[u8; 16]], blocks: usize, x: &Q8Row) -> [f32; 4] {
        let rows = (scales.len() / blocks).min(4);
        let n = blocks.min(x.values.len()).min(x.scales.len());
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut mins = [0f32; 4];
        let pairs = n / 2;
        for p in 0..pairs {
            let b = 2 * p;
            // SAFETY: two contiguous activation blocks, 64 bytes.
            let xq = unsafe { _mm512_loadu_si512(x.values[b..b + 2].as_ptr().cast()) };
            let ([xd0, xs0], [xd1, xs1]) = (x.scales[b], x.scales[b + 1]);
            for r in 0..rows {
                let k = r * blocks + b;
                let w = unpack_pair(&nibbles[k..k + 2]);
                let ([d0, m0], [d1, m1]) = (scales[k], scales[k + 1]);
                let sums = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), w, xq));
                acc[r] = _mm512_fmadd_ps(pair_scale(d0 * xd0, d1 * xd1), sums, acc[r]);
                mins[r] += m0 * xs0 + m1 * xs1;
            }
        }
        let mut out = [0f32; 4];
        for r in 0..rows {
            out[r] = _mm512_reduce_add_ps(acc[r]) + mins[r];
            if n % 2 == 1 {
                let b = n - 1;
                let k = r * blocks + b;
                out[r] += super::dot_scalar(&scales[k..k + 1], &nibbles[k..k + 1], &tail(x, b));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(rows: usize, cols: usize) -> (Q4Matrix, Vec<f32>) {
        // Build raw blocks with known scales and nibbles, and the dense matrix they mean.
        let mut bytes = Vec::new();
        let mut dense = vec![0f32; rows * cols];
        for r in 0..rows {
            for b in 0..cols / QK {
                let d = 0.01 + (r * 7 + b) as f32 * 0.001;
                let m = -0.05 + (b % 3) as f32 * 0.02;
                let d16 = half_bits(d);
                let m16 = half_bits(m);
                bytes.extend_from_slice(&d16.to_le_bytes());
                bytes.extend_from_slice(&m16.to_le_bytes());
                let (d, m) = (f16_to_f32(d16), f16_to_f32(m16));
                for j in 0..16 {
                    let lo = ((r + b + j) % 16) as u8;
                    let hi = ((r * 3 + j * 5 + b) % 16) as u8;
                    bytes.push(lo | (hi << 4));
                    dense[r * cols + b * QK + j] = d * f32::from(lo) + m;
                    dense[r * cols + b * QK + j + 16] = d * f32::from(hi) + m;
                }
            }
        }
        (
            Q4Matrix::from_ggml_bytes(&bytes, rows, cols).unwrap(),
            dense,
        )
    }

    /// f32 → f16 bits for test values (normal range, truncating).
    fn half_bits(v: f32) -> u16 {
        let b = v.to_bits();
        let sign = ((b >> 16) & 0x8000) as u16;
        let exp = ((b >> 23) & 0xFF) as i32 - 127 + 15;
        let man = ((b >> 13) & 0x3FF) as u16;
        sign | ((exp as u16) << 10) | man
    }

    #[test]
    fn matches_the_dense_product_for_one_and_many_tokens() {
        let (rows, cols) = (70, 96);
        let (q, dense) = matrix(rows, cols);
        for tokens in [1, 3] {
            let x: Vec<f32> = (0..tokens * cols)
                .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
                .collect();
            let y = q.matmul(&x, tokens);
            // Each token's row equals what that token alone gives: batching changes nothing.
            for t in 0..tokens {
                let alone = q.matmul(&x[t * cols..(t + 1) * cols], 1);
                assert_eq!(&y[t * rows..(t + 1) * rows], alone.as_slice());
            }
            for t in 0..tokens {
                for r in 0..rows {
                    let exact: f32 = (0..cols)
                        .map(|c| dense[r * cols + c] * x[t * cols + c])
                        .sum();
                    let got = y[t * rows + r];
                    assert!(
                        // Eight-bit activations: an error of a few percent at most.
                        (got - exact).abs() < 0.05 * (1.0 + exact.abs()),
                        "t{t} r{r}: {got} vs {exact}"
                    );
                }
            }
        }
    }

    #[test]
    fn simd_and_scalar_kernels_agree() {
        let (q, _) = matrix(4, 64);
        let x = quantize_row(
            &(0..64)
                .map(|i| (i as f32 - 30.0) / 17.0)
                .collect::<Vec<_>>(),
        );
        // Every kernel this CPU can run, not only the one `kernel()` picks.
        let mut row_kernels: Vec<Kernel> = vec![kernel()];
        let mut batch_kernels: Vec<BatchKernel> = vec![batch_kernel()];
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            row_kernels.push(avx2::dot4);
            batch_kernels.push(avx2::dot_tokens);
        }
        let close = |a: f32, b: f32| (a - b).abs() < 1e-4 * (1.0 + b.abs());
        for rows in 1..=4 {
            let s = &q.scales[..rows * 2];
            let n = &q.nibbles[..rows * 2];
            let b = dot4_scalar(s, n, 2, &x);
            for k in &row_kernels {
                let a = k(s, n, 2, &x);
                for r in 0..rows {
                    assert!(close(a[r], b[r]), "{a:?} vs {b:?}");
                }
            }
        }
        let tokens: Vec<Q8Row> = (0..3)
            .map(|t| {
                quantize_row(
                    &(0..64)
                        .map(|i| ((i * (t + 2)) % 19) as f32 / 9.0 - 1.0)
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        let refs: Vec<&Q8Row> = tokens.iter().collect();
        let (s, n) = (&q.scales[..2], &q.nibbles[..2]);
        let mut expected = [0f32; 3];
        dot_tokens_scalar(s, n, &refs, &mut expected);
        for k in &batch_kernels {
            let mut got = [0f32; 3];
            k(s, n, &refs, &mut got);
            for t in 0..3 {
                assert!(close(got[t], expected[t]), "{got:?} vs {expected:?}");
            }
        }
    }

    #[test]
    fn q8_0_split_reproduces_the_q8_product() {
        let (rows, cols) = (6, 64);
        let mut bytes = Vec::new();
        let mut dense = vec![0f32; rows * cols];
        for r in 0..rows {
            for b in 0..cols / QK {
                let d16 = half_bits(0.02 + r as f32 * 0.003);
                bytes.extend_from_slice(&d16.to_le_bytes());
                for j in 0..QK {
                    let w = ((r * 31 + b * 7 + j * 13) % 256) as u8 as i8;
                    bytes.push(w as u8);
                    dense[r * cols + b * QK + j] = f16_to_f32(d16) * f32::from(w);
                }
            }
        }
        let (lo, hi) = Q4Matrix::split_q8_0(&bytes, rows, cols).unwrap();
        let x: Vec<f32> = (0..cols).map(|i| (i as f32 - 20.0) / 40.0).collect();
        let y: Vec<f32> = lo
            .matmul(&x, 1)
            .iter()
            .zip(hi.matmul(&x, 1))
            .map(|(a, b)| a + b)
            .collect();
        // The split is exact: it equals the Q8_0 product with the same 8-bit activations.
        let q = quantize_row(&x);
        for r in 0..rows {
            let exact: f32 = (0..cols / QK)
                .map(|b| {
                    let ints: f32 = (0..QK)
                        .map(|j| dense[r * cols + b * QK + j] * f32::from(q.values[b][j]))
                        .sum();
                    ints * q.scales[b][0]
                })
                .sum();
            assert!(
                (y[r] - exact).abs() < 1e-3 * (1.0 + exact.abs()),
                "r{r}: {} vs {exact}",
                y[r]
            );
        }
    }

    #[test]
    fn f16_conversion() {
        assert_eq!(f16_to_f32(0x3C00), 1.0);
        assert_eq!(f16_to_f32(0xC000), -2.0);
        assert_eq!(f16_to_f32(0x0000), 0.0);
        assert!((f16_to_f32(0x0001) - 5.960_464_5e-8).abs() < 1e-12);
        assert_eq!(f16_to_f32(0x7BFF), 65504.0);
    }
}
