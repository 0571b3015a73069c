//! PyanNet's SincNet front end: waveform instance norm, 80 parametrised sinc band-pass filters
//! (251 taps, stride 10) as asteroid-filterbanks' `ParamSincFB` builds them from the learned
//! cut-off frequencies, then three stages of `|x|` or Conv1d, max-pool 3, instance norm and
//! leaky ReLU; 60 channels per output frame.

use candle_core::{D, Device, Tensor};

use super::{
    CONV_CHANNELS, CONV_KERNEL, LEAKY_SLOPE, NORM_EPS, POOL, SAMPLE_RATE, SINC_FILTERS,
    SINC_STRIDE, SINC_TAPS,
};
use crate::parallel::parallel_map;
use crate::weights::{ModelError, StateDict};

const SINC_MIN_LOW_HZ: f64 = 50.0;
const SINC_MIN_BAND_HZ: f64 = 50.0;
/// Filter output frames computed together (a multiple of [`POOL`]): 126 × 384 floats per
/// patch matrix, about 190 KiB.
const CHUNK: usize = 128 * POOL;

/// The SincNet weights.
#[derive(Debug)]
pub(super) struct SincNet {
    wav_norm: (f64, f64),
    filters: Tensor,
    halves: SincHalves,
    convs: [Conv; 2],
    norms: [ChannelAffine; 3],
}

impl SincNet {
    pub(super) fn load(weights: &StateDict) -> Result<Self, ModelError> {
        let scalar =
            |name: &str| -> Result<f64, ModelError> { Ok(f64::from(weights.vec(name, &[1])?[0])) };
        let half = SINC_TAPS / 2;
        let bank = "sincnet.conv1d.0.filterbank";
        let filters = sinc_filters(
            &weights.vec(&format!("{bank}.low_hz_"), &[SINC_FILTERS / 2, 1])?,
            &weights.vec(&format!("{bank}.band_hz_"), &[SINC_FILTERS / 2, 1])?,
            &weights.vec(&format!("{bank}.n_"), &[1, half])?,
            &weights.vec(&format!("{bank}.window_"), &[half])?,
        );
        let conv = |i: usize, c_in: usize| -> Result<Conv, ModelError> {
            let prefix = format!("sincnet.conv1d.{i}");
            Ok(Conv {
                weight: weights.get(
                    &format!("{prefix}.weight"),
                    &[CONV_CHANNELS, c_in, CONV_KERNEL],
                )?,
                bias: weights
                    .get(&format!("{prefix}.bias"), &[CONV_CHANNELS])?
                    .reshape((1, CONV_CHANNELS, 1))?,
            })
        };
        let norm = |i: usize, channels: usize| -> Result<ChannelAffine, ModelError> {
            let prefix = format!("sincnet.norm1d.{i}");
            Ok(ChannelAffine {
                weight: weights
                    .get(&format!("{prefix}.weight"), &[channels])?
                    .reshape((1, channels, 1))?,
                bias: weights
                    .get(&format!("{prefix}.bias"), &[channels])?
                    .reshape((1, channels, 1))?,
            })
        };
        Ok(Self {
            wav_norm: (
                scalar("sincnet.wav_norm1d.weight")?,
                scalar("sincnet.wav_norm1d.bias")?,
            ),
            halves: SincHalves::new(&filters)?,
            filters: Tensor::from_vec(filters, (SINC_FILTERS, 1, SINC_TAPS), &Device::Cpu)?,
            convs: [conv(1, SINC_FILTERS)?, conv(2, CONV_CHANNELS)?],
            norms: [
                norm(0, SINC_FILTERS)?,
                norm(1, CONV_CHANNELS)?,
                norm(2, CONV_CHANNELS)?,
            ],
        })
    }

    /// The filterbank `(80, 1, 251)`.
    pub(super) fn filters(&self) -> &Tensor {
        &self.filters
    }

    /// Row-major `(batch, samples)` waveforms → features `(batch, 60, frames)`; the filters
    /// run on up to `threads` threads.
    pub(super) fn forward(
        &self,
        waveforms: &[f32],
        samples: usize,
        threads: usize,
    ) -> candle_core::Result<Tensor> {
        let first = waveforms
            .chunks_exact(samples)
            .map(|wave| {
                let mut x = self
                    .halves
                    .filter_pooled(&self.normalise_wave(wave), threads)?;
                self.norms[0].norm_activate(&mut x)?;
                Ok(x)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let pooled = first.first().map_or(0, |x| x.len() / SINC_FILTERS);
        let mut x = Tensor::from_vec(
            first.concat(),
            (first.len(), SINC_FILTERS, pooled),
            &Device::Cpu,
        )?;
        for (conv, norm) in self.convs.iter().zip(&self.norms[1..]) {
            let y = x
                .conv1d(&conv.weight, 0, 1, 1, 1)?
                .broadcast_add(&conv.bias)?;
            x = norm.pool_norm_activate(&y)?;
        }
        Ok(x)
    }

    /// The waveform's instance norm: zero mean, unit variance, then the learned affine.
    fn normalise_wave(&self, wave: &[f32]) -> Vec<f32> {
        let n = wave.len() as f64;
        let mean = wave.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = wave
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n;
        let scale = self.wav_norm.0 / (var + NORM_EPS).sqrt();
        let shift = self.wav_norm.1 - mean * scale;
        wave.iter()
            .map(|&v| (f64::from(v) * scale + shift) as f32)
            .collect()
    }
}

/// The SincNet filterbank folded at its centre tap. Cosine filters are symmetric and sine
/// filters antisymmetric, so `Σ_j h_j x_{t+j}` over 251 taps equals a 126-tap product with
/// `x_{t+k} + x_{t+250-k}` (cosine) or a 125-tap product with `x_{t+k} - x_{t+250-k}` (sine):
/// half the multiplications of the plain convolution.
#[derive(Debug)]
struct SincHalves {
    /// Left halves and centre of the cosine filters, `(40, 126)`.
    even: Tensor,
    /// Left halves of the sine filters, `(40, 125)`.
    odd: Tensor,
}

impl SincHalves {
    fn new(filters: &[f32]) -> candle_core::Result<Self> {
        let half = SINC_TAPS / 2;
        let banks = SINC_FILTERS / 2;
        let mut even = Vec::with_capacity(banks * (half + 1));
        let mut odd = Vec::with_capacity(banks * half);
        for (f, taps) in filters.chunks_exact(SINC_TAPS).enumerate() {
            if f < banks {
                even.extend_from_slice(&taps[..=half]);
            } else {
                odd.extend_from_slice(&taps[..half]);
            }
        }
        Ok(Self {
            even: Tensor::from_vec(even, (banks, half + 1), &Device::Cpu)?,
            odd: Tensor::from_vec(odd, (banks, half), &Device::Cpu)?,
        })
    }

    /// The first stage of one normalised waveform up to its norm: the 80 filter outputs
    /// (stride 10, no padding), `|x|`, max-pool 3; row-major `(80, frames / 3)`.
    ///
    /// The filters run over [`CHUNK`] output frames at a time, so the folded patch matrices
    /// stay small enough for the cache instead of spanning the whole window (megabytes); the
    /// chunks are shared out over up to `threads` threads.
    fn filter_pooled(&self, wave: &[f32], threads: usize) -> candle_core::Result<Vec<f32>> {
        let frames = (wave.len() - SINC_TAPS) / SINC_STRIDE + 1;
        let pooled = frames / POOL;
        let chunks: Vec<usize> = (0..pooled * POOL).step_by(CHUNK).collect();
        let filtered = parallel_map(&chunks, threads, |&chunk_start| {
            self.filter(wave, chunk_start, CHUNK.min(pooled * POOL - chunk_start))
        })?;
        let mut out = vec![0f32; SINC_FILTERS * pooled];
        for (&chunk_start, filtered) in chunks.iter().zip(filtered) {
            let len = CHUNK.min(pooled * POOL - chunk_start);
            let column = chunk_start / POOL;
            for (row, out) in filtered.chunks_exact(len).zip(out.chunks_exact_mut(pooled)) {
                for (window, out) in row
                    .chunks_exact(POOL)
                    .zip(&mut out[column..column + len / POOL])
                {
                    *out = window.iter().fold(0f32, |m, v| m.max(v.abs()));
                }
            }
        }
        Ok(out)
    }

    /// The 80 filter outputs, row-major `(80, len)`, of output frames `first..first + len`.
    fn filter(&self, wave: &[f32], first: usize, len: usize) -> candle_core::Result<Vec<f32>> {
        let half = SINC_TAPS / 2;
        // Patch matrices, transposed: row k holds, for every frame, the folded pair k.
        let mut sums = vec![0f32; (half + 1) * len];
        let mut diffs = vec![0f32; half * len];
        for k in 0..half {
            let (sum_row, diff_row) = (
                &mut sums[k * len..(k + 1) * len],
                &mut diffs[k * len..(k + 1) * len],
            );
            for (t, (sum, diff)) in sum_row.iter_mut().zip(diff_row.iter_mut()).enumerate() {
                let start = (first + t) * SINC_STRIDE;
                let (a, b) = (wave[start + k], wave[start + SINC_TAPS - 1 - k]);
                *sum = a + b;
                *diff = a - b;
            }
        }
        for (t, centre) in sums[half * len..].iter_mut().enumerate() {
            *centre = wave[(first + t) * SINC_STRIDE + half];
        }
        let sums = Tensor::from_vec(sums, (half + 1, len), &Device::Cpu)?;
        let diffs = Tensor::from_vec(diffs, (half, len), &Device::Cpu)?;
        let mut out: Vec<f32> = self.even.matmul(&sums)?.flatten_all()?.to_vec1()?;
        out.extend(self.odd.matmul(&diffs)?.flatten_all()?.to_vec1::<f32>()?);
        Ok(out)
    }
}

/// The 80 SincNet filters `(80 × 251)`: 40 cosine (even) then 40 sine (odd) band-pass filters,
/// each normalised by twice its bandwidth, as asteroid-filterbanks' `ParamSincFB` builds them.
/// `n` holds `2π t / sample_rate` for `t = -125 … -1`, `window` the left half of a Hamming
/// window; both are buffers saved with the weights.
fn sinc_filters(low_hz: &[f32], band_hz: &[f32], n: &[f32], window: &[f32]) -> Vec<f32> {
    let nyquist = SAMPLE_RATE as f64 / 2.0;
    let half = n.len();
    let mut cos_filters = Vec::with_capacity(low_hz.len() * SINC_TAPS);
    let mut sin_filters = Vec::with_capacity(low_hz.len() * SINC_TAPS);
    for (&low, &band) in low_hz.iter().zip(band_hz) {
        let low = SINC_MIN_LOW_HZ + f64::from(low).abs();
        let high = (low + SINC_MIN_BAND_HZ + f64::from(band).abs()).clamp(SINC_MIN_LOW_HZ, nyquist);
        let band = high - low;
        let scale = 1.0 / (2.0 * band);
        let left = |f: &dyn Fn(f64, f64) -> f64| -> Vec<f64> {
            (0..half)
                .map(|i| {
                    let t = f64::from(n[i]);
                    f(low * t, high * t) / (t / 2.0) * f64::from(window[i]) * scale
                })
                .collect()
        };
        let even = left(&|lo, hi| hi.sin() - lo.sin());
        let odd = left(&|lo, hi| lo.cos() - hi.cos());
        cos_filters.extend(even.iter().map(|&v| v as f32));
        cos_filters.push((2.0 * band * scale) as f32);
        cos_filters.extend(even.iter().rev().map(|&v| v as f32));
        sin_filters.extend(odd.iter().map(|&v| v as f32));
        sin_filters.push(0.0);
        sin_filters.extend(odd.iter().rev().map(|&v| -v as f32));
    }
    cos_filters.extend(sin_filters);
    cos_filters
}

/// Normalises each (item, channel) row of `(batch, channels, time)` to zero mean and unit
/// (biased) variance, as `InstanceNorm1d` does without running statistics.
fn instance_norm(x: &Tensor) -> candle_core::Result<Tensor> {
    let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
    let variance = centred.sqr()?.mean_keepdim(D::Minus1)?;
    centred.broadcast_div(&(variance + NORM_EPS)?.sqrt()?)
}

/// Max-pool of kernel and stride [`POOL`] over the last axis (a trailing remainder is dropped).
fn max_pool(x: &Tensor) -> candle_core::Result<Tensor> {
    let (batch, channels, len) = x.dims3()?;
    let out = len / POOL;
    x.narrow(2, 0, out * POOL)?
        .reshape((batch, channels, out, POOL))?
        .max(D::Minus1)
}

#[derive(Debug)]
struct Conv {
    weight: Tensor,
    bias: Tensor,
}

/// The learned per-channel scale and shift of an instance norm, shaped `(1, channels, 1)`.
#[derive(Debug)]
struct ChannelAffine {
    weight: Tensor,
    bias: Tensor,
}

impl ChannelAffine {
    /// Instance norm, this affine and leaky ReLU, in place, on row-major `(channels, time)`.
    fn norm_activate(&self, x: &mut [f32]) -> candle_core::Result<()> {
        let weight: Vec<f32> = self.weight.flatten_all()?.to_vec1()?;
        let bias: Vec<f32> = self.bias.flatten_all()?.to_vec1()?;
        let steps = x.len() / weight.len();
        for ((row, &weight), &bias) in x.chunks_exact_mut(steps).zip(&weight).zip(&bias) {
            let mean = row.iter().sum::<f32>() / steps as f32;
            let var = row.iter().map(|&v| (v - mean) * (v - mean)).sum::<f32>() / steps as f32;
            let scale = weight / (var + NORM_EPS as f32).sqrt();
            for v in row.iter_mut() {
                let y = (*v - mean) * scale + bias;
                *v = if y >= 0.0 { y } else { y * LEAKY_SLOPE as f32 };
            }
        }
        Ok(())
    }

    /// SincNet's stage tail: max-pool, instance norm, this affine, leaky ReLU.
    fn pool_norm_activate(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let normed = instance_norm(&max_pool(x)?)?
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)?;
        candle_nn::ops::leaky_relu(&normed, LEAKY_SLOPE)
    }
}
