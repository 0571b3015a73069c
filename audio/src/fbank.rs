//! Kaldi-compatible log-mel filterbank features: the front end CAM++ was trained on.
//!
//! What `compute-fbank-feats` (and torchaudio's `compliance.kaldi.fbank`) compute with their
//! defaults, without dither so that the output is deterministic: 25 ms frames every 10 ms,
//! only frames that fit entirely in the input ("snip edges"); per frame the mean is removed,
//! pre-emphasis 0.97 applied (the first sample against itself), a Povey window
//! (a Hann window to the power 0.85) applied, the frame zero-padded to 512 samples; then the
//! power spectrum, triangular filters equally spaced on Kaldi's mel scale
//! (`1127 ln(1 + f / 700)`) from 20 Hz to the Nyquist frequency, and the natural log, floored
//! at `f32::EPSILON`. The arithmetic is done in f64. CAM++ then wants the features minus
//! their mean over time ([`subtract_mean`]).

use std::f64::consts::PI;

/// Sample rate the features are defined for.
pub const SAMPLE_RATE: usize = 16_000;
/// Samples per frame (25 ms).
pub const FRAME_LENGTH: usize = 400;
/// Samples between frame starts (10 ms).
pub const FRAME_SHIFT: usize = 160;
/// Mel bins CAM++ uses.
pub const NUM_MEL_BINS: usize = 80;

const FFT_SIZE: usize = 512;
const PREEMPHASIS: f64 = 0.97;
const LOW_FREQ: f64 = 20.0;
const POVEY_POWER: f64 = 0.85;

/// Frames for `num_samples` samples (only frames that fit entirely).
pub fn num_frames(num_samples: usize) -> usize {
    if num_samples < FRAME_LENGTH {
        0
    } else {
        (num_samples - FRAME_LENGTH) / FRAME_SHIFT + 1
    }
}

/// Subtracts from each bin its mean over the frames of row-major `(frames, bins)` features.
pub fn subtract_mean(features: &mut [f32], bins: usize) {
    let frames = features.len() / bins.max(1);
    if frames == 0 {
        return;
    }
    let mut mean = vec![0f64; bins];
    for row in features.chunks_exact(bins) {
        for (m, &v) in mean.iter_mut().zip(row) {
            *m += f64::from(v);
        }
    }
    for m in &mut mean {
        *m /= frames as f64;
    }
    for row in features.chunks_exact_mut(bins) {
        for (v, &m) in row.iter_mut().zip(&mean) {
            *v = (f64::from(*v) - m) as f32;
        }
    }
}

/// A filterbank computer for 16 kHz audio; cheap to share, build once.
#[derive(Debug, Clone)]
pub struct Fbank {
    bins: usize,
    window: Vec<f64>,
    /// Per mel bin: the first FFT bin with a non-zero weight, and the weights from there.
    filters: Vec<(usize, Vec<f64>)>,
    fft: RealFft,
}

impl Default for Fbank {
    fn default() -> Self {
        Self::new(NUM_MEL_BINS)
    }
}

impl Fbank {
    /// A computer of `bins` mel bins.
    pub fn new(bins: usize) -> Self {
        let window = (0..FRAME_LENGTH)
            .map(|i| {
                let hann = 0.5 - 0.5 * (2.0 * PI * i as f64 / (FRAME_LENGTH - 1) as f64).cos();
                hann.powf(POVEY_POWER)
            })
            .collect();
        Self {
            bins,
            window,
            filters: mel_filters(bins),
            fft: RealFft::new(FFT_SIZE),
        }
    }

    /// Mel bins per frame.
    pub fn bins(&self) -> usize {
        self.bins
    }

    /// Log-mel energies, row-major `(num_frames(samples.len()), bins)`, of 16 kHz samples
    /// (any scale: Kaldi reads 16-bit integers, torchaudio floats in [-1, 1]).
    pub fn compute(&self, samples: &[f32]) -> Vec<f32> {
        let frames = num_frames(samples.len());
        let mut out = Vec::with_capacity(frames * self.bins);
        let mut frame = vec![0f64; FFT_SIZE];
        let mut power = vec![0f64; FFT_SIZE / 2 + 1];
        let mut scratch = self.fft.scratch();
        for index in 0..frames {
            let start = index * FRAME_SHIFT;
            let input = &samples[start..start + FRAME_LENGTH];
            let mean = input.iter().map(|&s| f64::from(s)).sum::<f64>() / FRAME_LENGTH as f64;
            for (x, &s) in frame.iter_mut().zip(input) {
                *x = f64::from(s) - mean;
            }
            for j in (1..FRAME_LENGTH).rev() {
                frame[j] -= PREEMPHASIS * frame[j - 1];
            }
            frame[0] -= PREEMPHASIS * frame[0];
            for (x, w) in frame.iter_mut().zip(&self.window) {
                *x *= w;
            }
            frame[FRAME_LENGTH..].fill(0.0);
            self.fft.power_spectrum(&frame, &mut power, &mut scratch);
            for (first, weights) in &self.filters {
                let energy: f64 = weights
                    .iter()
                    .zip(&power[*first..])
                    .map(|(w, p)| w * p)
                    .sum();
                out.push(energy.max(f64::from(f32::EPSILON)).ln() as f32);
            }
        }
        out
    }
}

fn mel(hz: f64) -> f64 {
    1127.0 * (1.0 + hz / 700.0).ln()
}

/// Kaldi's triangular mel filters over the FFT bins below Nyquist.
fn mel_filters(bins: usize) -> Vec<(usize, Vec<f64>)> {
    let nyquist = SAMPLE_RATE as f64 / 2.0;
    let bin_width = SAMPLE_RATE as f64 / FFT_SIZE as f64;
    let (low, high) = (mel(LOW_FREQ), mel(nyquist));
    let delta = (high - low) / (bins + 1) as f64;
    (0..bins)
        .map(|b| {
            let left = low + b as f64 * delta;
            let centre = left + delta;
            let right = centre + delta;
            let weights: Vec<(usize, f64)> = (0..FFT_SIZE / 2)
                .filter_map(|k| {
                    let m = mel(bin_width * k as f64);
                    if m <= left || m >= right {
                        None
                    } else if m <= centre {
                        Some((k, (m - left) / (centre - left)))
                    } else {
                        Some((k, (right - m) / (right - centre)))
                    }
                })
                .collect();
            let first = weights.first().map_or(0, |&(k, _)| k);
            (first, weights.into_iter().map(|(_, w)| w).collect())
        })
        .collect()
}

/// A real FFT of a power-of-two size `n`, done as one complex FFT of size `n / 2`.
#[derive(Debug, Clone)]
struct RealFft {
    n: usize,
    /// `e^{-2πik/(n/2)}` for `k < n/4`: the half-size transform's twiddles.
    twiddles: Vec<(f64, f64)>,
    /// `e^{-2πik/n}` for `k <= n/2`: the split step's twiddles.
    split: Vec<(f64, f64)>,
    /// Bit-reversal permutation of `0..n/2`.
    reversed: Vec<usize>,
}

impl RealFft {
    fn new(n: usize) -> Self {
        let half = n / 2;
        let bits = half.trailing_zeros();
        let angle = |k: usize, size: usize| {
            let a = -2.0 * PI * k as f64 / size as f64;
            (a.cos(), a.sin())
        };
        Self {
            n,
            twiddles: (0..half / 2).map(|k| angle(k, half)).collect(),
            split: (0..=half).map(|k| angle(k, n)).collect(),
            reversed: (0..half)
                .map(|i| i.reverse_bits() >> (usize::BITS - bits))
                .collect(),
        }
    }

    fn scratch(&self) -> Vec<(f64, f64)> {
        vec![(0.0, 0.0); self.n / 2]
    }

    /// `|X_k|²` for `k = 0 ..= n/2` of the real sequence `x` (length `n`).
    fn power_spectrum(&self, x: &[f64], power: &mut [f64], z: &mut [(f64, f64)]) {
        let half = self.n / 2;
        // Even samples as real parts, odd ones as imaginary parts, in bit-reversed order.
        for (i, &r) in self.reversed.iter().enumerate() {
            z[r] = (x[2 * i], x[2 * i + 1]);
        }
        let mut size = 2;
        while size <= half {
            let stride = half / size;
            for start in (0..half).step_by(size) {
                for k in 0..size / 2 {
                    let (wr, wi) = self.twiddles[k * stride];
                    let (ar, ai) = z[start + k];
                    let (br, bi) = z[start + k + size / 2];
                    let (tr, ti) = (br * wr - bi * wi, br * wi + bi * wr);
                    z[start + k] = (ar + tr, ai + ti);
                    z[start + k + size / 2] = (ar - tr, ai - ti);
                }
            }
            size *= 2;
        }
        // Split: X_k = E_k + w^k O_k with E_k = (Z_k + conj Z_{h-k}) / 2 and
        // O_k = (Z_k - conj Z_{h-k}) / 2i.
        for k in 0..=half {
            let (zr, zi) = z[k % half];
            let (cr, ci) = {
                let (r, i) = z[(half - k) % half];
                (r, -i)
            };
            let (er, ei) = ((zr + cr) / 2.0, (zi + ci) / 2.0);
            let (dr, di) = ((zr - cr) / 2.0, (zi - ci) / 2.0);
            let (or, oi) = (di, -dr);
            let (wr, wi) = self.split[k];
            let (xr, xi) = (er + or * wr - oi * wi, ei + or * wi + oi * wr);
            power[k] = xr * xr + xi * xi;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_real_fft_matches_a_direct_dft() {
        let fft = RealFft::new(16);
        let x: Vec<f64> = (0..16)
            .map(|i| ((i * 7 % 5) as f64 - 2.0) * 0.3 + i as f64 * 0.01)
            .collect();
        let mut power = vec![0.0; 9];
        fft.power_spectrum(&x, &mut power, &mut fft.scratch());
        for (k, &p) in power.iter().enumerate() {
            let (mut re, mut im) = (0.0, 0.0);
            for (t, &v) in x.iter().enumerate() {
                let a = -2.0 * PI * (k * t) as f64 / 16.0;
                re += v * a.cos();
                im += v * a.sin();
            }
            assert!((p - (re * re + im * im)).abs() < 1e-9, "bin {k}: {p}");
        }
    }

    #[test]
    fn frames_snip_the_edges() {
        assert_eq!(num_frames(399), 0);
        assert_eq!(num_frames(400), 1);
        assert_eq!(num_frames(16_000), 98);
        assert_eq!(num_frames(48_000), 298);
        let fbank = Fbank::default();
        assert_eq!(fbank.compute(&[0.1; 16_000]).len(), 98 * NUM_MEL_BINS);
        assert!(fbank.compute(&[0.0; 100]).is_empty());
    }

    #[test]
    fn silence_is_floored_and_a_tone_lands_in_its_mel_bin() {
        let fbank = Fbank::default();
        let floor = f32::EPSILON.ln();
        assert!(fbank.compute(&[0.0; 800]).iter().all(|&v| v == floor));
        // A 1 kHz tone: the loudest bin is the one whose triangle peaks nearest 1 kHz.
        let tone: Vec<f32> = (0..1600)
            .map(|i| (2.0 * PI * 1000.0 * i as f64 / 16_000.0).sin() as f32)
            .collect();
        let features = fbank.compute(&tone);
        let row = &features[..NUM_MEL_BINS];
        let loudest = (0..NUM_MEL_BINS)
            .max_by(|&a, &b| row[a].total_cmp(&row[b]))
            .unwrap_or(0);
        let delta = (mel(8000.0) - mel(LOW_FREQ)) / (NUM_MEL_BINS + 1) as f64;
        let nearest = ((mel(1000.0) - mel(LOW_FREQ)) / delta).round() as usize - 1;
        assert!(loudest.abs_diff(nearest) <= 1, "{loudest} vs {nearest}");
    }

    #[test]
    fn mean_subtraction_centres_every_bin() {
        let mut features = vec![1.0, 10.0, 3.0, 20.0];
        subtract_mean(&mut features, 2);
        assert_eq!(features, [-1.0, -5.0, 1.0, 5.0]);
    }
}
