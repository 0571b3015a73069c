//! Speaker embeddings: CAM++ (3D-Speaker's `CAMPPlus`, 192 dimensions) in candle.
//!
//! The network, as 3D-Speaker defines it, on 80-bin Kaldi fbank features minus their mean
//! over time ([`crate::fbank`]):
//! - a 2-D convolutional head (FCM): Conv2d(1→32, 3×3) + BN + ReLU, two stages of two residual
//!   blocks (the first of each halving the frequency axis), Conv2d(32→32, 3×3, stride 2 in
//!   frequency) + BN + ReLU, flattened to 320 channels per frame;
//! - a TDNN layer Conv1d(320→128, 5, stride 2) + BN + ReLU (half the frame rate);
//! - three densely connected blocks of 12, 24 and 16 CAM layers (dilation 1, 2, 2), each layer
//!   BN-ReLU, Conv1d(→128, 1), BN-ReLU, then a context-aware masked Conv1d(128→32, 3) whose mask
//!   is computed from the mean over the whole input plus the mean over its 100-frame segment;
//!   its 32 channels are appended to the input; a BN-ReLU-Conv1d(C→C/2, 1) transition after
//!   each block;
//! - BN-ReLU, statistics pooling (mean and unbiased standard deviation over time), then
//!   Conv1d(1024→192, 1) and a non-affine BN: the embedding.
//!
//! Batch norms run with their running statistics and are folded into the adjacent
//! convolution where one precedes them. Layout: [`head`] (the 2-D front, as im2col plus one
//! candle matrix product per convolution, since candle has no CPU conv2d with a per-axis
//! stride), [`layers`] (batch norms, convolutions, CAM layers), this file (loading and the
//! forward pass). After the head the activations are plain row-major `(channels, time)`
//! vectors: candle does the matrix products, the element-wise steps (batch norm + ReLU, bias,
//! the CAM masks, statistics pooling) are single loops, and a dense block appends its layers'
//! channels in place instead of concatenating tensors.

use std::path::Path;

use candle_core::{Device, Tensor};

use crate::fbank::{self, Fbank};
pub use crate::weights::ModelError;
use crate::weights::StateDict;
use head::Head;
use layers::{Affine, CamLayer, Conv, Transit};

mod head;
mod layers;

/// Dimensions of an embedding.
pub const EMBEDDING_DIM: usize = 192;
/// Fewest fbank frames an embedding can be computed from.
pub const MIN_FRAMES: usize = 3;

const MODEL: &str = "CAM++";
const BN_EPS: f64 = 1e-5;
const HEAD_CHANNELS: usize = 32;
const HEAD_OUT: usize = HEAD_CHANNELS * fbank::NUM_MEL_BINS / 8;
const INIT_CHANNELS: usize = 128;
const GROWTH: usize = 32;
const BOTTLENECK: usize = 4 * GROWTH;
const CAM_REDUCTION: usize = 2;
const SEGMENT: usize = 100;
/// (layers, dilation) of the three dense blocks; all use a kernel of 3.
const BLOCKS: [(usize, usize); 3] = [(12, 1), (24, 2), (16, 2)];

/// The CAM++ model with its fbank front end, on the CPU. Immutable after loading, so one
/// instance can serve many threads.
#[derive(Debug)]
pub struct CamPlusPlus {
    fbank: Fbank,
    head: Head,
    tdnn: Conv,
    blocks: Vec<(Vec<CamLayer>, Transit)>,
    out_norm: Affine,
    dense: Conv,
    /// Threads [`embed_samples`](Self::embed_samples) and [`embed`](Self::embed) use.
    threads: usize,
}

impl CamPlusPlus {
    /// Loads 3D-Speaker's state dict (e.g. `campplus_cn_en_common.pt`).
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        Self::from_state_dict(&StateDict::read(MODEL, path, None)?)
    }

    fn from_state_dict(w: &StateDict) -> Result<Self, ModelError> {
        let head = Head::load(w)?;
        let tdnn = Conv::load(w, "xvector.tdnn.linear", &[INIT_CHANNELS, HEAD_OUT, 5])?.fold(
            &Affine::batch_norm(w, "xvector.tdnn.nonlinear.batchnorm", INIT_CHANNELS)?,
        )?;
        let mut channels = INIT_CHANNELS;
        let mut blocks = Vec::new();
        for (b, &(layers, dilation)) in BLOCKS.iter().enumerate() {
            let mut cam = Vec::new();
            for l in 0..layers {
                let prefix = format!("xvector.block{}.tdnnd{}", b + 1, l + 1);
                cam.push(CamLayer::load(w, &prefix, channels, dilation)?);
                channels += GROWTH;
            }
            let prefix = format!("xvector.transit{}", b + 1);
            let transit = Transit {
                norm: Affine::batch_norm(w, &format!("{prefix}.nonlinear.batchnorm"), channels)?,
                linear: Conv::load(w, &format!("{prefix}.linear"), &[channels / 2, channels, 1])?,
            };
            channels /= 2;
            blocks.push((cam, transit));
        }
        let out_norm = Affine::batch_norm(w, "xvector.out_nonlinear.batchnorm", channels)?;
        let dense =
            Conv::load(w, "xvector.dense.linear", &[EMBEDDING_DIM, 2 * channels, 1])?.fold(
                &Affine::plain_batch_norm(w, "xvector.dense.nonlinear.batchnorm", EMBEDDING_DIM)?,
            )?;
        Ok(Self {
            fbank: Fbank::default(),
            head,
            tdnn,
            blocks,
            out_norm,
            dense,
            threads: 1,
        })
    }

    /// Lets [`embed_samples`](Self::embed_samples) and [`embed`](Self::embed) run the head's
    /// convolutions on `threads` threads (the results are the same). One by default.
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    /// The embedding of 16 kHz mono samples in [-1, 1]: Kaldi fbank, minus its mean over
    /// time, through the network. Needs at least 0.04 s of audio ([`MIN_FRAMES`] frames).
    pub fn embed_samples(&self, samples: &[f32]) -> Result<Vec<f32>, ModelError> {
        let frames = fbank::num_frames(samples.len());
        let mut features = self.fbank.compute(samples);
        fbank::subtract_mean(&mut features, fbank::NUM_MEL_BINS);
        self.embed_frames(&features, frames, self.threads)
    }

    /// Embeddings `(batch, 192)` of mean-normalised fbank features `(batch, frames, 80)`.
    pub fn embed(&self, features: &Tensor) -> Result<Tensor, ModelError> {
        let (batch, frames, bins) = features.dims3()?;
        if bins != fbank::NUM_MEL_BINS {
            return Err(ModelError::Input(format!(
                "CAM++ takes {} mel bins, got {bins}",
                fbank::NUM_MEL_BINS
            )));
        }
        let mut rows = Vec::with_capacity(batch * EMBEDDING_DIM);
        for item in 0..batch {
            let features: Vec<f32> = features.get(item)?.flatten_all()?.to_vec1()?;
            rows.extend(self.embed_frames(&features, frames, self.threads)?);
        }
        Ok(Tensor::from_vec(
            rows,
            (batch, EMBEDDING_DIM),
            &Device::Cpu,
        )?)
    }

    /// One embedding from mean-normalised, row-major `(frames, 80)` features; the head's
    /// convolutions (about half the work) run on up to `threads` threads.
    pub(crate) fn embed_frames(
        &self,
        features: &[f32],
        frames: usize,
        threads: usize,
    ) -> Result<Vec<f32>, ModelError> {
        if frames < MIN_FRAMES {
            return Err(ModelError::Input(format!(
                "CAM++ needs at least {MIN_FRAMES} fbank frames, got {frames}"
            )));
        }
        let x = self.head.forward(features, frames, threads)?;
        let x = self.tdnn.conv1d(&x, 2, 2, 1)?.relu()?;
        let steps = x.dim(1)?;
        let mut x: Vec<f32> = x.flatten_all()?.to_vec1()?;
        for (layers, transit) in &self.blocks {
            // Channels are rows, so a layer's new channels are appended in place.
            for layer in layers {
                let y = layer.forward(&x)?;
                x.extend_from_slice(&y);
            }
            x = transit.forward(&x)?;
        }
        let x = self.out_norm.apply_relu(&x);
        let channels = x.len() / steps;
        // Statistics pooling: the mean and the unbiased standard deviation of each channel.
        let mut stats = vec![0f32; 2 * channels];
        for (c, row) in x.chunks_exact(steps).enumerate() {
            let mean = row.iter().sum::<f32>() / steps as f32;
            let var =
                row.iter().map(|&v| (v - mean) * (v - mean)).sum::<f32>() / (steps - 1) as f32;
            stats[c] = mean;
            stats[channels + c] = var.sqrt();
        }
        let embedding = self.dense.product(stats, false)?;
        Ok(embedding)
    }
}
