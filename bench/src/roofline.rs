//! Memory-bandwidth roofline of single-stream decoding.
//!
//! Decoding one token of one sequence reads every weight of the model once
//! (the matrices of each layer and the output head), and for a small model
//! with a short context the weights dwarf everything else that is read (KV
//! cache, activations). So single-stream decode speed is bounded by
//! `memory bandwidth / bytes of weights`, and the size of the GGUF file is a
//! good stand-in for the bytes of weights (it also holds the token
//! embeddings, of which a step reads one row, but with tied embeddings they
//! are the output head and are read whole anyway).
//!
//! [`measure_bandwidth`] estimates the read bandwidth the engine can get:
//! `threads` threads sum disjoint parts of a large `Vec<u64>` (far larger
//! than any cache); the best of a few passes is kept.

use std::time::Instant;

use serde::Serialize;

/// Size of the buffer read by [`measure_bandwidth`]: 512 MiB.
pub const BANDWIDTH_BUFFER_BYTES: usize = 512 << 20;
/// Passes over the buffer; the fastest counts.
pub const BANDWIDTH_PASSES: usize = 3;

/// A read-bandwidth measurement.
#[derive(Debug, Clone, Serialize)]
pub struct Bandwidth {
    /// Bytes read per pass.
    pub bytes: usize,
    /// Threads reading together.
    pub threads: usize,
    /// GB/s (10⁹ bytes per second) of each pass.
    pub passes_gb_s: Vec<f64>,
    /// The best pass, GB/s.
    pub best_gb_s: f64,
}

/// GB/s (10⁹ bytes per second) of reading `bytes` in `seconds`.
pub fn gb_per_s(bytes: usize, seconds: f64) -> f64 {
    if seconds > 0.0 {
        bytes as f64 / seconds / 1e9
    } else {
        0.0
    }
}

/// Measures read bandwidth: `passes` times, `threads` threads each sum
/// their share of a `bytes`-byte buffer. The buffer is filled with distinct
/// values first (an untouched zeroed allocation would map every page to the
/// same zero page and measure the cache instead).
pub fn measure_bandwidth(bytes: usize, threads: usize, passes: usize) -> Bandwidth {
    let threads = threads.max(1);
    let words = (bytes / 8).max(threads);
    let data: Vec<u64> = (0..words as u64).collect();
    let chunk = words.div_ceil(threads);
    let mut passes_gb_s = Vec::with_capacity(passes);
    for _ in 0..passes.max(1) {
        let start = Instant::now();
        let total = std::thread::scope(|s| {
            let handles: Vec<_> = data
                .chunks(chunk)
                .map(|part| s.spawn(move || part.iter().fold(0u64, |acc, &x| acc.wrapping_add(x))))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(0))
                .fold(0u64, u64::wrapping_add)
        });
        let elapsed = start.elapsed().as_secs_f64();
        std::hint::black_box(total);
        passes_gb_s.push(gb_per_s(words * 8, elapsed));
    }
    let best_gb_s = passes_gb_s.iter().copied().fold(0.0, f64::max);
    Bandwidth {
        bytes: words * 8,
        threads,
        passes_gb_s,
        best_gb_s,
    }
}

/// The roofline of single-stream decoding.
#[derive(Debug, Clone, Serialize)]
pub struct Roofline {
    /// Read bandwidth, GB/s.
    pub bandwidth_gb_s: f64,
    /// Bytes read per decoded token (≈ the GGUF file size).
    pub bytes_per_token: u64,
    /// `bandwidth / bytes_per_token`: the most tokens/s one stream can get.
    pub tok_s: f64,
    /// Measured single-stream decode tokens/s over the roofline.
    pub single_stream_fraction: Option<f64>,
}

impl Roofline {
    /// The roofline for `bandwidth_gb_s` and `bytes_per_token`, and where
    /// `single_stream_tok_s` (if measured) stands against it.
    pub fn new(
        bandwidth_gb_s: f64,
        bytes_per_token: u64,
        single_stream_tok_s: Option<f64>,
    ) -> Self {
        let tok_s = if bytes_per_token > 0 {
            bandwidth_gb_s * 1e9 / bytes_per_token as f64
        } else {
            0.0
        };
        Self {
            bandwidth_gb_s,
            bytes_per_token,
            tok_s,
            single_stream_fraction: single_stream_tok_s
                .filter(|_| tok_s > 0.0)
                .map(|v| v / tok_s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roofline_arithmetic() {
        // 20 GB/s over a 100 MB model: 200 tokens/s at best.
        let r = Roofline::new(20.0, 100_000_000, Some(150.0));
        assert!((r.tok_s - 200.0).abs() < 1e-9);
        assert!((r.single_stream_fraction.unwrap() - 0.75).abs() < 1e-12);
        let r = Roofline::new(20.0, 0, Some(150.0));
        assert_eq!((r.tok_s, r.single_stream_fraction), (0.0, None));
        assert_eq!(Roofline::new(1.0, 1, None).single_stream_fraction, None);
    }

    #[test]
    fn bandwidth_units() {
        assert!((gb_per_s(2_000_000_000, 0.5) - 4.0).abs() < 1e-12);
        assert_eq!(gb_per_s(1, 0.0), 0.0);
    }

    #[test]
    fn measures_a_small_buffer() {
        let b = measure_bandwidth(1 << 20, 2, 2);
        assert_eq!((b.bytes, b.threads, b.passes_gb_s.len()), (1 << 20, 2, 2));
        assert!(b.best_gb_s > 0.0);
        assert_eq!(
            b.best_gb_s,
            b.passes_gb_s.iter().copied().fold(0.0, f64::max)
        );
    }
}
