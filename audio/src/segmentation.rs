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
//! into per-speaker activity.
//!
//! Layout: [`sincnet`] (the front end), [`lstm`] (the recurrence), this file (loading, the
//! forward pass, powerset decoding).

use std::path::Path;

use candle_core::{D, DType, Device, Tensor};

pub use crate::weights::ModelError;
use crate::weights::StateDict;
use lstm::BiLstm;
use sincnet::SincNet;

mod lstm;
mod sincnet;

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
    sincnet: SincNet,
    lstm: Vec<BiLstm>,
    linear: Vec<Linear>,
    classifier: Linear,
    /// Threads a forward pass may use (the LSTM's two directions side by side from 2).
    threads: usize,
}

impl Segmentation {
    /// Loads the Lightning checkpoint (`pytorch_model.bin`, state dict under `state_dict`).
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        Self::from_state_dict(&StateDict::read(MODEL, path, Some("state_dict"))?)
    }

    fn from_state_dict(weights: &StateDict) -> Result<Self, ModelError> {
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
            sincnet: SincNet::load(weights)?,
            lstm,
            linear,
            classifier: Linear::load(weights, "classifier", HIDDEN, POWERSET_CLASSES)?,
            threads: 1,
        })
    }

    /// Lets a forward pass use `threads` threads: SincNet's filters and the LSTM's input
    /// projections are split by time, each LSTM layer runs its two directions side by side
    /// (the results are the same). One by default.
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    /// The SincNet filterbank `(80, 1, 251)` built from the learned cut-off frequencies.
    pub fn sinc_filters(&self) -> &Tensor {
        self.sincnet.filters()
    }

    /// Powerset log-probabilities `(frames, 7)` for one mono 16 kHz window.
    pub fn segment(&self, samples: &[f32]) -> Result<Tensor, ModelError> {
        self.segment_with(samples, self.threads)
    }

    /// [`segment`](Self::segment) on `threads` threads rather than the model's own setting.
    pub fn segment_with(&self, samples: &[f32], threads: usize) -> Result<Tensor, ModelError> {
        let input = Tensor::from_slice(samples, (1, samples.len()), &Device::Cpu)?;
        Ok(self.forward_with(&input, threads.max(1))?.squeeze(0)?)
    }

    /// Powerset log-probabilities `(batch, frames, 7)` for a batch of equally long windows
    /// `(batch, samples)`.
    pub fn forward(&self, waveforms: &Tensor) -> Result<Tensor, ModelError> {
        self.forward_with(waveforms, self.threads)
    }

    fn forward_with(&self, waveforms: &Tensor, threads: usize) -> Result<Tensor, ModelError> {
        let samples = waveforms.dim(1)?;
        if num_frames(samples) == 0 {
            return Err(ModelError::Input(format!(
                "segmentation needs at least {} samples, got {samples}",
                min_samples()
            )));
        }
        let waveforms: Vec<f32> = waveforms.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let features = self.sincnet.forward(&waveforms, samples, threads)?;
        let mut x = features.transpose(1, 2)?.contiguous()?;
        for layer in &self.lstm {
            x = layer.forward(&x, threads)?;
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

    /// `x @ w + b` over the last axis of `(batch, time, input)`, as a row-major
    /// `(batch × time, output)` vector, the rows cut into `threads` blocks computed side by
    /// side.
    fn forward_rows(&self, x: &Tensor, threads: usize) -> candle_core::Result<Vec<f32>> {
        let (batch, steps, input) = x.dims3()?;
        let rows = x.reshape((batch * steps, input))?;
        let blocks = crate::parallel::split(batch * steps, threads);
        let parts = crate::parallel::parallel_map(&blocks, threads, |block| {
            rows.narrow(0, block.start, block.len())?
                .matmul(&self.weight_t)?
                .broadcast_add(&self.bias)?
                .flatten_all()?
                .to_vec1::<f32>()
        })?;
        Ok(parts.concat())
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
}
