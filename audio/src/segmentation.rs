//! Speaker segmentation: pyannote's PyanNet (segmentation-3.0) in candle, and powerset decoding.
//!
//! The network, as pyannote.audio defines it, on 16 kHz mono audio:
//! - instance normalisation of the waveform, then SincNet: 80 band-pass filters of 251 taps at
//!   stride 10 (40 cosine and 40 sine filters built from learned cut-off frequencies), `|x|`,
//!   max-pool 3, instance norm, leaky ReLU; then twice Conv1d(→60, 5), max-pool 3, instance
//!   norm, leaky ReLU;
//! - a 4-layer bidirectional LSTM (128 units each way);
//! - two Linear(→128) with leaky ReLU, a Linear(128→7) classifier and a log-softmax.
//!
//! One output frame every [`FRAME_STEP`] samples (16.875 ms), each seeing [`FRAME_SPAN`]
//! samples: 589 frames for the 10 s windows it was trained on. Its 7 classes are the powerset
//! of 3 local speakers with at most 2 at once ([`POWERSET`]); [`speaker_activity`] turns them
//! into per-speaker activity. The recurrence runs in plain Rust on the CPU (one small
//! matrix-vector product per step); everything else is candle.

use std::path::Path;

use candle_core::{D, DType, Device, Tensor};

pub use crate::weights::ModelError;
use crate::weights::StateDict;

/// Sample rate the model expects.
pub const SAMPLE_RATE: usize = 16_000;
/// Length of the windows the model was trained on: 10 s.
pub const WINDOW_SAMPLES: usize = 10 * SAMPLE_RATE;
/// Samples between the starts of two consecutive output frames.
pub const FRAME_STEP: usize = 270;
/// Samples one output frame sees (its receptive field); frame `i` covers
/// `[i * FRAME_STEP, i * FRAME_STEP + FRAME_SPAN)`.
pub const FRAME_SPAN: usize = 991;
/// Local speakers per window.
pub const LOCAL_SPEAKERS: usize = 3;
/// Output classes: the sets of at most two of the three local speakers.
pub const POWERSET_CLASSES: usize = 7;
/// Which local speakers each powerset class holds, in the model's class order:
/// {}, {0}, {1}, {2}, {0, 1}, {0, 2}, {1, 2}.
pub const POWERSET: [[bool; LOCAL_SPEAKERS]; POWERSET_CLASSES] = [
    [false, false, false],
    [true, false, false],
    [false, true, false],
    [false, false, true],
    [true, true, false],
    [true, false, true],
    [false, true, true],
];

const MODEL: &str = "pyannote segmentation-3.0";
const SINC_FILTERS: usize = 80;
const SINC_TAPS: usize = 251;
const SINC_STRIDE: usize = 10;
const SINC_MIN_LOW_HZ: f64 = 50.0;
const SINC_MIN_BAND_HZ: f64 = 50.0;
const CONV_CHANNELS: usize = 60;
const CONV_KERNEL: usize = 5;
const POOL: usize = 3;
const LSTM_LAYERS: usize = 4;
const HIDDEN: usize = 128;
const GATES: usize = 4 * HIDDEN;
const LINEAR_LAYERS: usize = 2;
const NORM_EPS: f64 = 1e-5;
const LEAKY_SLOPE: f64 = 0.01;

/// Output frames for an input of `num_samples` samples (0 when it is too short).
pub fn num_frames(num_samples: usize) -> usize {
    let Some(after_taps) = num_samples.checked_sub(SINC_TAPS) else {
        return 0;
    };
    let mut len = (after_taps / SINC_STRIDE + 1) / POOL;
    for _ in 0..2 {
        len = len.saturating_sub(CONV_KERNEL - 1) / POOL;
    }
    len
}

/// The time, in seconds from the window's start, at the centre of output frame `frame`.
pub fn frame_center_seconds(frame: usize) -> f64 {
    (frame * FRAME_STEP) as f64 / SAMPLE_RATE as f64
        + (FRAME_SPAN - 1) as f64 / 2.0 / SAMPLE_RATE as f64
}

/// The segmentation model, loaded on the CPU. Immutable after loading, so one instance can
/// serve many threads.
#[derive(Debug)]
pub struct Segmentation {
    wav_norm: (f64, f64),
    sinc: Tensor,
    sinc_halves: SincHalves,
    convs: [Conv; 2],
    norms: [ChannelAffine; 3],
    lstm: Vec<BiLstm>,
    linear: Vec<Linear>,
    classifier: Linear,
}

impl Segmentation {
    /// Loads the Lightning checkpoint (`pytorch_model.bin`, state dict under `state_dict`).
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        Self::from_state_dict(&StateDict::read(MODEL, path, Some("state_dict"))?)
    }

    fn from_state_dict(weights: &StateDict) -> Result<Self, ModelError> {
        let scalar =
            |name: &str| -> Result<f64, ModelError> { Ok(f64::from(weights.vec(name, &[1])?[0])) };
        let wav_norm = (
            scalar("sincnet.wav_norm1d.weight")?,
            scalar("sincnet.wav_norm1d.bias")?,
        );
        let half = SINC_TAPS / 2;
        let filters = sinc_filters(
            &weights.vec(
                "sincnet.conv1d.0.filterbank.low_hz_",
                &[SINC_FILTERS / 2, 1],
            )?,
            &weights.vec(
                "sincnet.conv1d.0.filterbank.band_hz_",
                &[SINC_FILTERS / 2, 1],
            )?,
            &weights.vec("sincnet.conv1d.0.filterbank.n_", &[1, half])?,
            &weights.vec("sincnet.conv1d.0.filterbank.window_", &[half])?,
        );
        let sinc_halves = SincHalves::new(&filters)?;
        let sinc = Tensor::from_vec(filters, (SINC_FILTERS, 1, SINC_TAPS), &Device::Cpu)?;
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
        let lstm = (0..LSTM_LAYERS)
            .map(|layer| {
                let input = if layer == 0 {
                    CONV_CHANNELS
                } else {
                    2 * HIDDEN
                };
                BiLstm::load(weights, layer, input)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let linear = (0..LINEAR_LAYERS)
            .map(|i| {
                let input = if i == 0 { 2 * HIDDEN } else { HIDDEN };
                Linear::load(weights, &format!("linear.{i}"), input, HIDDEN)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            wav_norm,
            sinc,
            sinc_halves,
            convs: [conv(1, SINC_FILTERS)?, conv(2, CONV_CHANNELS)?],
            norms: [
                norm(0, SINC_FILTERS)?,
                norm(1, CONV_CHANNELS)?,
                norm(2, CONV_CHANNELS)?,
            ],
            lstm,
            linear,
            classifier: Linear::load(weights, "classifier", HIDDEN, POWERSET_CLASSES)?,
        })
    }

    /// The SincNet filterbank `(80, 1, 251)` built from the learned cut-off frequencies.
    pub fn sinc_filters(&self) -> &Tensor {
        &self.sinc
    }

    /// Powerset log-probabilities `(frames, 7)` for one mono 16 kHz window.
    pub fn segment(&self, samples: &[f32]) -> Result<Tensor, ModelError> {
        let input = Tensor::from_slice(samples, (1, samples.len()), &Device::Cpu)?;
        Ok(self.forward(&input)?.squeeze(0)?)
    }

    /// Powerset log-probabilities `(batch, frames, 7)` for a batch of equally long windows
    /// `(batch, samples)`.
    pub fn forward(&self, waveforms: &Tensor) -> Result<Tensor, ModelError> {
        let samples = waveforms.dim(1)?;
        if num_frames(samples) == 0 {
            return Err(ModelError::Input(format!(
                "segmentation needs at least {} samples, got {samples}",
                min_samples()
            )));
        }
        let waveforms: Vec<f32> = waveforms.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let filtered = waveforms
            .chunks_exact(samples)
            .map(|wave| self.sinc_halves.filter(&self.normalise_wave(wave)))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let x = Tensor::stack(&filtered, 0)?.abs()?;
        let mut x = self.norms[0].pool_norm_activate(&x)?;
        for (conv, norm) in self.convs.iter().zip(&self.norms[1..]) {
            let y = x
                .conv1d(&conv.weight, 0, 1, 1, 1)?
                .broadcast_add(&conv.bias)?;
            x = norm.pool_norm_activate(&y)?;
        }
        let mut x = x.transpose(1, 2)?.contiguous()?;
        for layer in &self.lstm {
            x = layer.forward(&x)?;
        }
        for linear in &self.linear {
            x = candle_nn::ops::leaky_relu(&linear.forward(&x)?, LEAKY_SLOPE)?;
        }
        Ok(candle_nn::ops::log_softmax(
            &self.classifier.forward(&x)?,
            D::Minus1,
        )?)
    }
}

impl Segmentation {
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

    /// The 80 filter outputs `(80, frames)` of one normalised waveform (stride 10, no padding).
    fn filter(&self, wave: &[f32]) -> candle_core::Result<Tensor> {
        let half = SINC_TAPS / 2;
        let frames = (wave.len() - SINC_TAPS) / SINC_STRIDE + 1;
        // Patch matrices, transposed: row k holds, for every frame, the folded pair k.
        let mut sums = vec![0f32; (half + 1) * frames];
        let mut diffs = vec![0f32; half * frames];
        for k in 0..half {
            let (sum_row, diff_row) = (
                &mut sums[k * frames..(k + 1) * frames],
                &mut diffs[k * frames..(k + 1) * frames],
            );
            for (t, (sum, diff)) in sum_row.iter_mut().zip(diff_row.iter_mut()).enumerate() {
                let (a, b) = (
                    wave[t * SINC_STRIDE + k],
                    wave[t * SINC_STRIDE + SINC_TAPS - 1 - k],
                );
                *sum = a + b;
                *diff = a - b;
            }
        }
        for (t, centre) in sums[half * frames..].iter_mut().enumerate() {
            *centre = wave[t * SINC_STRIDE + half];
        }
        let sums = Tensor::from_vec(sums, (half + 1, frames), &Device::Cpu)?;
        let diffs = Tensor::from_vec(diffs, (half, frames), &Device::Cpu)?;
        Tensor::cat(&[self.even.matmul(&sums)?, self.odd.matmul(&diffs)?], 0)
    }
}

fn min_samples() -> usize {
    (SINC_TAPS..)
        .find(|&n| num_frames(n) > 0)
        .unwrap_or(SINC_TAPS)
}

/// How [`speaker_activity`] reads the powerset probabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoding {
    /// Each frame takes its most likely class: activities are 0 or 1 (pyannote's default).
    Hard,
    /// A speaker's activity is the total probability of the classes holding them.
    Soft,
}

/// Per-speaker activity `(…, frames, 3)` from powerset log-probabilities `(…, frames, 7)`.
pub fn speaker_activity(log_probs: &Tensor, decoding: Decoding) -> Result<Tensor, ModelError> {
    let classes = log_probs.dim(D::Minus1)?;
    if classes != POWERSET_CLASSES {
        return Err(ModelError::Input(format!(
            "expected {POWERSET_CLASSES} powerset classes, got {classes}"
        )));
    }
    let weights = match decoding {
        Decoding::Soft => log_probs.exp()?,
        Decoding::Hard => {
            let best = log_probs.argmax_keepdim(D::Minus1)?;
            let ids = Tensor::arange(0u32, POWERSET_CLASSES as u32, log_probs.device())?;
            best.broadcast_eq(&ids)?.to_dtype(log_probs.dtype())?
        }
    };
    let mapping: Vec<f32> = POWERSET
        .iter()
        .flatten()
        .map(|&member| if member { 1.0 } else { 0.0 })
        .collect();
    let mapping = Tensor::from_vec(mapping, (POWERSET_CLASSES, LOCAL_SPEAKERS), &Device::Cpu)?
        .to_dtype(log_probs.dtype())?
        .to_device(log_probs.device())?;
    Ok(weights.broadcast_matmul(&mapping)?)
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
    /// SincNet's stage tail: max-pool, instance norm, this affine, leaky ReLU.
    fn pool_norm_activate(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let normed = instance_norm(&max_pool(x)?)?
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)?;
        candle_nn::ops::leaky_relu(&normed, LEAKY_SLOPE)
    }
}

/// A dense layer stored transposed, `(input, output)`, for `x @ w`.
#[derive(Debug)]
struct Linear {
    weight_t: Tensor,
    bias: Tensor,
}

impl Linear {
    fn load(
        weights: &StateDict,
        prefix: &str,
        input: usize,
        output: usize,
    ) -> Result<Self, ModelError> {
        Ok(Self {
            weight_t: weights
                .get(&format!("{prefix}.weight"), &[output, input])?
                .t()?
                .contiguous()?,
            bias: weights.get(&format!("{prefix}.bias"), &[output])?,
        })
    }

    /// `x @ w + b` over the last axis of `(batch, time, input)`.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (batch, steps, input) = x.dims3()?;
        x.reshape((batch * steps, input))?
            .matmul(&self.weight_t)?
            .broadcast_add(&self.bias)?
            .reshape((batch, steps, ()))
    }
}

/// One bidirectional LSTM layer (PyTorch's gate order: input, forget, cell, output).
#[derive(Debug)]
struct BiLstm {
    /// Input projections of both directions side by side, `(input, 2 × 4H)`, with both
    /// biases folded in.
    input: Linear,
    /// Recurrent weights per direction in [`Recurrent`]'s blocked layout.
    recurrent: [Recurrent; 2],
}

impl BiLstm {
    fn load(weights: &StateDict, layer: usize, input: usize) -> Result<Self, ModelError> {
        let mut projections = Vec::new();
        let mut biases = Vec::new();
        let mut recurrent = Vec::new();
        for suffix in ["", "_reverse"] {
            let name = |kind: &str| format!("lstm.{kind}_l{layer}{suffix}");
            projections.push(weights.get(&name("weight_ih"), &[GATES, input])?);
            biases.push(
                (weights.get(&name("bias_ih"), &[GATES])?
                    + weights.get(&name("bias_hh"), &[GATES])?)?,
            );
            recurrent.push(Recurrent::new(
                &weights.vec(&name("weight_hh"), &[GATES, HIDDEN])?,
            ));
        }
        let [forward, backward] = <[Recurrent; 2]>::try_from(recurrent)
            .map_err(|_| ModelError::Input("two LSTM directions".into()))?;
        Ok(Self {
            input: Linear {
                weight_t: Tensor::cat(&projections, 0)?.t()?.contiguous()?,
                bias: Tensor::cat(&biases, 0)?,
            },
            recurrent: [forward, backward],
        })
    }

    /// `(batch, time, input)` → `(batch, time, 2H)`: forward states then backward states.
    fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let (batch, steps, _) = x.dims3()?;
        let projected: Vec<f32> = self.input.forward(x)?.flatten_all()?.to_vec1()?;
        let mut out = vec![0f32; batch * steps * 2 * HIDDEN];
        for (projected, out) in projected
            .chunks_exact(steps * 2 * GATES)
            .zip(out.chunks_exact_mut(steps * 2 * HIDDEN))
        {
            self.recurrent[0].run(projected, out, false);
            self.recurrent[1].run(projected, out, true);
        }
        Ok(Tensor::from_vec(
            out,
            (batch, steps, 2 * HIDDEN),
            &Device::Cpu,
        )?)
    }
}

/// Gates computed together in a step of the recurrence; a multiple of the SIMD width, so the
/// accumulators of one block stay in registers.
const LANES: usize = 32;

/// One direction's recurrent weights `W_hh` (4H × H), laid out as `[gate block][k][lane]`: a
/// step reads them front to back, adding `h_k × W[block, k]` into a block of gates.
#[derive(Debug)]
struct Recurrent {
    blocked: Vec<f32>,
}

impl Recurrent {
    fn new(weight_hh: &[f32]) -> Self {
        let mut blocked = vec![0f32; GATES * HIDDEN];
        for (gate, row) in weight_hh.chunks_exact(HIDDEN).enumerate() {
            let (block, lane) = (gate / LANES, gate % LANES);
            for (k, &w) in row.iter().enumerate() {
                blocked[(block * HIDDEN + k) * LANES + lane] = w;
            }
        }
        Self { blocked }
    }

    /// Runs the recurrence over a sequence whose input projections are `projected`
    /// (`time × [forward 4H | backward 4H]`), writing the hidden states into this direction's
    /// half of `out` (`time × [forward H | backward H]`).
    fn run(&self, projected: &[f32], out: &mut [f32], reverse: bool) {
        let steps = projected.len() / (2 * GATES);
        let (gate_offset, out_offset) = if reverse { (GATES, HIDDEN) } else { (0, 0) };
        let mut hidden = [0f32; HIDDEN];
        let mut cell = [0f32; HIDDEN];
        let mut gates = [0f32; GATES];
        for step in 0..steps {
            let t = if reverse { steps - 1 - step } else { step };
            let start = t * 2 * GATES + gate_offset;
            gates.copy_from_slice(&projected[start..start + GATES]);
            self.add_product(&hidden, &mut gates);
            lstm_cell(&gates, &mut cell, &mut hidden);
            let start = t * 2 * HIDDEN + out_offset;
            out[start..start + HIDDEN].copy_from_slice(&hidden);
        }
    }

    /// `gates += W_hh h`.
    fn add_product(&self, hidden: &[f32; HIDDEN], gates: &mut [f32; GATES]) {
        for (block, weights) in gates
            .chunks_exact_mut(LANES)
            .zip(self.blocked.chunks_exact(HIDDEN * LANES))
        {
            let mut acc = [0f32; LANES];
            acc.copy_from_slice(block);
            for (&h, w) in hidden.iter().zip(weights.chunks_exact(LANES)) {
                for (a, &w) in acc.iter_mut().zip(w) {
                    *a += h * w;
                }
            }
            block.copy_from_slice(&acc);
        }
    }
}

/// The LSTM cell update from the pre-activation gates `[i | f | g | o]`.
fn lstm_cell(gates: &[f32; GATES], cell: &mut [f32; HIDDEN], hidden: &mut [f32; HIDDEN]) {
    let (input, rest) = gates.split_at(HIDDEN);
    let (forget, rest) = rest.split_at(HIDDEN);
    let (candidate, output) = rest.split_at(HIDDEN);
    for j in 0..HIDDEN {
        cell[j] = sigmoid(forget[j]) * cell[j] + sigmoid(input[j]) * tanh(candidate[j]);
        hidden[j] = sigmoid(output[j]) * tanh(cell[j]);
    }
}

/// `e^x` to about one ulp for the arguments an LSTM sees, without branches or libm calls, so
/// that loops over it vectorise: `2^n p(r)` with `x = n ln 2 + r`, `|r| <= ln 2 / 2`, and `p`
/// the degree-6 Taylor polynomial (relative error below 2e-7).
fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding and subtracting 1.5 × 2^23 rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2_E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (1.0 / 2.0
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // 2^n as a float: n + 127 in the exponent field (n is within -126..=127 after the clamp).
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

fn tanh(x: f32) -> f32 {
    2.0 * sigmoid(2.0 * x) - 1.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_counts_follow_the_receptive_field() {
        assert_eq!(num_frames(WINDOW_SAMPLES), 589);
        assert_eq!(num_frames(5 * SAMPLE_RATE), 293);
        assert_eq!(num_frames(0), 0);
        assert_eq!(num_frames(SINC_TAPS), 0);
        let min = min_samples();
        assert_eq!(num_frames(min), 1);
        assert_eq!(num_frames(min - 1), 0);
        // The last frame's receptive field ends inside the input.
        for samples in [min, 16_000, 80_000, WINDOW_SAMPLES] {
            let frames = num_frames(samples);
            assert!(
                (frames - 1) * FRAME_STEP + FRAME_SPAN <= samples,
                "{samples}"
            );
        }
        assert!((frame_center_seconds(0) - 0.0309375).abs() < 1e-12);
    }

    #[test]
    fn powerset_decoding_maps_classes_to_speakers() {
        // Frame 0 is most likely silence, frame 1 speakers 0+2, frame 2 speaker 1.
        let probs: [[f32; 7]; 3] = [
            [0.7, 0.1, 0.1, 0.1, 0.0, 0.0, 0.0],
            [0.1, 0.2, 0.0, 0.1, 0.0, 0.6, 0.0],
            [0.0, 0.1, 0.5, 0.0, 0.2, 0.0, 0.2],
        ];
        let flat: Vec<f32> = probs.iter().flatten().map(|p| p.max(1e-12).ln()).collect();
        let log_probs = Tensor::from_vec(flat, (3, 7), &Device::Cpu).unwrap();
        let hard = speaker_activity(&log_probs, Decoding::Hard)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(hard, [[0.0, 0.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]);
        let soft = speaker_activity(&log_probs, Decoding::Soft)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let expected = [[0.1, 0.1, 0.1], [0.8, 0.0, 0.7], [0.3, 0.9, 0.2]];
        for (row, want) in soft.iter().zip(expected) {
            for (got, want) in row.iter().zip(want) {
                assert!((got - want).abs() < 1e-5, "{soft:?}");
            }
        }
        let wrong = Tensor::zeros((2, 5), DType::F32, &Device::Cpu).unwrap();
        assert!(speaker_activity(&wrong, Decoding::Hard).is_err());
    }

    #[test]
    fn an_lstm_step_matches_the_equations() {
        // One step, one unit per gate block: with zero state, h = o * tanh(i * g).
        let mut projected = vec![0f32; 2 * GATES];
        projected[0] = 0.5; // input gate of unit 0
        projected[2 * HIDDEN] = 1.0; // cell candidate of unit 0
        projected[3 * HIDDEN] = -0.25; // output gate of unit 0
        let recurrent = Recurrent::new(&vec![0f32; GATES * HIDDEN]);
        let mut out = vec![0f32; 2 * HIDDEN];
        recurrent.run(&projected, &mut out, false);
        let exact = |x: f32| 1.0 / (1.0 + (-x).exp());
        let expected = exact(-0.25) * (exact(0.5) * 1f32.tanh()).tanh();
        assert!((out[0] - expected).abs() < 1e-6, "{} vs {expected}", out[0]);
        // Units without input see sigmoid(0) * tanh(0) = 0.
        assert!(out[1..].iter().all(|&h| h.abs() < 1e-7));
    }

    #[test]
    fn the_recurrent_product_is_w_hh_times_h() {
        let weights: Vec<f32> = (0..GATES * HIDDEN)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 500.0)
            .collect();
        let hidden: [f32; HIDDEN] = std::array::from_fn(|k| (k as f32 - 60.0) / 70.0);
        let mut gates = [1f32; GATES];
        Recurrent::new(&weights).add_product(&hidden, &mut gates);
        for (g, row) in gates.iter().zip(weights.chunks_exact(HIDDEN)) {
            let expected: f32 = 1.0 + row.iter().zip(&hidden).map(|(w, h)| w * h).sum::<f32>();
            assert!((g - expected).abs() < 1e-4, "{g} vs {expected}");
        }
    }

    #[test]
    fn the_fast_exponential_is_accurate() {
        let mut worst = 0f64;
        for i in -8000..=8000 {
            let x = i as f32 / 100.0;
            let exact = f64::from(x).exp();
            worst = worst.max((f64::from(exp(x)) - exact).abs() / exact);
        }
        assert!(worst < 3e-7, "relative error {worst}");
        assert!((sigmoid(0.0) - 0.5).abs() < 1e-7);
        assert!((tanh(0.3) - 0.3f32.tanh()).abs() < 3e-7);
        assert!(sigmoid(-200.0) < 1e-30);
        assert_eq!(tanh(200.0), 1.0);
    }
}
