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
//! convolution where one precedes them. The 2-D convolutions are done as im2col plus one
//! matrix product (candle's), as candle has no CPU conv2d with a per-axis stride.

use std::path::Path;

use candle_core::{D, Device, Tensor};

use crate::fbank::{self, Fbank};
pub use crate::weights::ModelError;
use crate::weights::StateDict;

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
        })
    }

    /// The embedding of 16 kHz mono samples in [-1, 1]: Kaldi fbank, minus its mean over
    /// time, through the network. Needs at least 0.04 s of audio ([`MIN_FRAMES`] frames).
    pub fn embed_samples(&self, samples: &[f32]) -> Result<Vec<f32>, ModelError> {
        let frames = fbank::num_frames(samples.len());
        let mut features = self.fbank.compute(samples);
        fbank::subtract_mean(&mut features, fbank::NUM_MEL_BINS);
        self.embed_one(&features, frames)
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
            rows.extend(self.embed_one(&features, frames)?);
        }
        Ok(Tensor::from_vec(
            rows,
            (batch, EMBEDDING_DIM),
            &Device::Cpu,
        )?)
    }

    /// One embedding from row-major `(frames, 80)` features.
    fn embed_one(&self, features: &[f32], frames: usize) -> Result<Vec<f32>, ModelError> {
        if frames < MIN_FRAMES {
            return Err(ModelError::Input(format!(
                "CAM++ needs at least {MIN_FRAMES} fbank frames, got {frames}"
            )));
        }
        let x = self.head.forward(features, frames)?;
        let mut x = self.tdnn.conv1d(&x, 2, 2, 1)?.relu()?;
        for (layers, transit) in &self.blocks {
            for layer in layers {
                let y = layer.forward(&x)?;
                x = Tensor::cat(&[&x, &y], 0)?;
            }
            x = transit.forward(&x)?;
        }
        let x = self.out_norm.apply(&x)?.relu()?;
        let mean = x.mean_keepdim(D::Minus1)?;
        let steps = x.dim(D::Minus1)?;
        let std = (x.broadcast_sub(&mean)?.sqr()?.sum_keepdim(D::Minus1)? / (steps - 1) as f64)?
            .sqrt()?;
        let stats = Tensor::cat(&[&mean, &std], 0)?;
        let embedding = self.dense.matmul(&stats)?;
        Ok(embedding.flatten_all()?.to_vec1()?)
    }
}

/// A per-channel `x * scale + shift`, shaped `(channels, 1)`: an inference-time batch norm.
#[derive(Debug)]
struct Affine {
    scale: Tensor,
    shift: Tensor,
}

impl Affine {
    /// A batch norm with learned weight and bias.
    fn batch_norm(w: &StateDict, prefix: &str, channels: usize) -> Result<Self, ModelError> {
        let weight = w.vec(&format!("{prefix}.weight"), &[channels])?;
        let bias = w.vec(&format!("{prefix}.bias"), &[channels])?;
        Self::from_stats(w, prefix, channels, &weight, &bias)
    }

    /// A batch norm without affine parameters (`affine=False`).
    fn plain_batch_norm(w: &StateDict, prefix: &str, channels: usize) -> Result<Self, ModelError> {
        Self::from_stats(
            w,
            prefix,
            channels,
            &vec![1.0; channels],
            &vec![0.0; channels],
        )
    }

    fn from_stats(
        w: &StateDict,
        prefix: &str,
        channels: usize,
        weight: &[f32],
        bias: &[f32],
    ) -> Result<Self, ModelError> {
        let mean = w.vec(&format!("{prefix}.running_mean"), &[channels])?;
        let var = w.vec(&format!("{prefix}.running_var"), &[channels])?;
        let mut scale = Vec::with_capacity(channels);
        let mut shift = Vec::with_capacity(channels);
        for c in 0..channels {
            let s = f64::from(weight[c]) / (f64::from(var[c]) + BN_EPS).sqrt();
            scale.push(s as f32);
            shift.push((f64::from(bias[c]) - f64::from(mean[c]) * s) as f32);
        }
        Ok(Self {
            scale: Tensor::from_vec(scale, (channels, 1), &Device::Cpu)?,
            shift: Tensor::from_vec(shift, (channels, 1), &Device::Cpu)?,
        })
    }

    /// `x * scale + shift` for `(channels, time)`.
    fn apply(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.broadcast_mul(&self.scale)?.broadcast_add(&self.shift)
    }
}

/// A convolution kept as its weight `(out, in, kernel…)` plus a bias `(out, 1)`.
#[derive(Debug)]
struct Conv {
    weight: Tensor,
    bias: Tensor,
}

impl Conv {
    /// A bias-free convolution from the state dict.
    fn load(w: &StateDict, prefix: &str, shape: &[usize]) -> Result<Self, ModelError> {
        let weight = w.get(&format!("{prefix}.weight"), shape)?;
        let bias = Tensor::zeros((shape[0], 1), weight.dtype(), &Device::Cpu)?;
        Ok(Self { weight, bias })
    }

    /// The convolution followed by `norm`, as one convolution.
    fn fold(self, norm: &Affine) -> Result<Self, ModelError> {
        let rank = self.weight.rank();
        let scale = norm.scale.reshape(
            std::iter::once(norm.scale.dim(0)?)
                .chain(std::iter::repeat_n(1, rank - 1))
                .collect::<Vec<_>>(),
        )?;
        Ok(Self {
            weight: self.weight.broadcast_mul(&scale)?,
            bias: norm.apply(&self.bias)?,
        })
    }

    /// The weight as a matrix `(out, in × kernel…)`.
    fn matrix(&self) -> candle_core::Result<Tensor> {
        let out = self.weight.dim(0)?;
        self.weight.reshape((out, ()))
    }

    /// A kernel-1 convolution of `(in, time)`: one matrix product.
    fn matmul(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.matrix()?.matmul(x)?.broadcast_add(&self.bias)
    }

    /// A 1-D convolution of `(in, time)` → `(out, time')`.
    fn conv1d(
        &self,
        x: &Tensor,
        padding: usize,
        stride: usize,
        dilation: usize,
    ) -> candle_core::Result<Tensor> {
        x.unsqueeze(0)?
            .conv1d(&self.weight, padding, stride, dilation, 1)?
            .squeeze(0)?
            .broadcast_add(&self.bias)
    }

    /// A 3×3 (or 1×1) 2-D convolution, padding `kernel / 2`, stride `stride` along the
    /// height (frequency) and 1 along the width (time), of `(in, height, width)` data.
    fn conv2d(&self, x: &Plane, stride: usize) -> candle_core::Result<Plane> {
        let kernel = self.weight.dim(D::Minus1)?;
        let cols = x.im2col(kernel, stride);
        let height = (x.height + 2 * (kernel / 2) - kernel) / stride + 1;
        let cols = Tensor::from_vec(
            cols,
            (x.channels * kernel * kernel, height * x.width),
            &Device::Cpu,
        )?;
        let out = self.matmul(&cols)?;
        Ok(Plane {
            channels: out.dim(0)?,
            height,
            width: x.width,
            data: out.flatten_all()?.to_vec1()?,
        })
    }
}

/// Feature maps `(channels, height, width)` in a plain vector, for the 2-D head.
struct Plane {
    channels: usize,
    height: usize,
    width: usize,
    data: Vec<f32>,
}

impl Plane {
    /// The `(channels × k × k, height' × width)` patch matrix of a `k × k` convolution with
    /// zero padding `k / 2` and stride `stride` along the height.
    fn im2col(&self, kernel: usize, stride: usize) -> Vec<f32> {
        let pad = kernel / 2;
        let (h, w) = (self.height, self.width);
        let out_h = (h + 2 * pad - kernel) / stride + 1;
        let mut cols = vec![0f32; self.channels * kernel * kernel * out_h * w];
        let mut rows = cols.chunks_exact_mut(out_h * w);
        for c in 0..self.channels {
            let plane = &self.data[c * h * w..(c + 1) * h * w];
            for kh in 0..kernel {
                for kw in 0..kernel {
                    let Some(row) = rows.next() else { return cols };
                    for oh in 0..out_h {
                        let Some(ih) = (oh * stride + kh).checked_sub(pad).filter(|&i| i < h)
                        else {
                            continue;
                        };
                        let src = &plane[ih * w..(ih + 1) * w];
                        let dst = &mut row[oh * w..(oh + 1) * w];
                        // Output column t reads input column t + kw - pad.
                        match kw.cmp(&pad) {
                            std::cmp::Ordering::Equal => dst.copy_from_slice(src),
                            std::cmp::Ordering::Less => {
                                let shift = pad - kw;
                                dst[shift..].copy_from_slice(&src[..w - shift]);
                            }
                            std::cmp::Ordering::Greater => {
                                let shift = kw - pad;
                                dst[..w - shift].copy_from_slice(&src[shift..]);
                            }
                        }
                    }
                }
            }
        }
        cols
    }

    fn relu(mut self) -> Self {
        for v in &mut self.data {
            *v = v.max(0.0);
        }
        self
    }

    fn add_relu(mut self, other: &Plane) -> Self {
        for (v, o) in self.data.iter_mut().zip(&other.data) {
            *v = (*v + o).max(0.0);
        }
        self
    }
}

/// A residual block of the head: two 3×3 convolutions and a shortcut.
#[derive(Debug)]
struct ResBlock {
    conv1: Conv,
    conv2: Conv,
    shortcut: Option<Conv>,
    stride: usize,
}

impl ResBlock {
    fn forward(&self, x: &Plane) -> candle_core::Result<Plane> {
        let y = self.conv1.conv2d(x, self.stride)?.relu();
        let y = self.conv2.conv2d(&y, 1)?;
        Ok(match &self.shortcut {
            Some(shortcut) => y.add_relu(&shortcut.conv2d(x, self.stride)?),
            None => y.add_relu(x),
        })
    }
}

/// The 2-D convolutional front (FCM).
#[derive(Debug)]
struct Head {
    conv1: Conv,
    blocks: Vec<ResBlock>,
    conv2: Conv,
}

impl Head {
    fn load(w: &StateDict) -> Result<Self, ModelError> {
        let c = HEAD_CHANNELS;
        let conv_bn = |conv: &str, bn: &str, shape: &[usize]| -> Result<Conv, ModelError> {
            Conv::load(w, &format!("head.{conv}"), shape)?.fold(&Affine::batch_norm(
                w,
                &format!("head.{bn}"),
                shape[0],
            )?)
        };
        let mut blocks = Vec::new();
        for layer in 1..=2 {
            for (index, stride) in [(0, 2), (1, 1)] {
                let p = format!("layer{layer}.{index}");
                blocks.push(ResBlock {
                    conv1: conv_bn(&format!("{p}.conv1"), &format!("{p}.bn1"), &[c, c, 3, 3])?,
                    conv2: conv_bn(&format!("{p}.conv2"), &format!("{p}.bn2"), &[c, c, 3, 3])?,
                    shortcut: if stride == 1 {
                        None
                    } else {
                        Some(conv_bn(
                            &format!("{p}.shortcut.0"),
                            &format!("{p}.shortcut.1"),
                            &[c, c, 1, 1],
                        )?)
                    },
                    stride,
                });
            }
        }
        Ok(Self {
            conv1: conv_bn("conv1", "bn1", &[c, 1, 3, 3])?,
            blocks,
            conv2: conv_bn("conv2", "bn2", &[c, c, 3, 3])?,
        })
    }

    /// `(frames, 80)` features → `(320, frames)`.
    fn forward(&self, features: &[f32], frames: usize) -> candle_core::Result<Tensor> {
        let bins = fbank::NUM_MEL_BINS;
        let mut data = vec![0f32; bins * frames];
        for (t, row) in features.chunks_exact(bins).enumerate() {
            for (f, &v) in row.iter().enumerate() {
                data[f * frames + t] = v;
            }
        }
        let x = Plane {
            channels: 1,
            height: bins,
            width: frames,
            data,
        };
        let mut x = self.conv1.conv2d(&x, 1)?.relu();
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        let x = self.conv2.conv2d(&x, 2)?.relu();
        Tensor::from_vec(x.data, (x.channels * x.height, x.width), &Device::Cpu)
    }
}

/// One layer of a dense block: BN-ReLU, bottleneck, BN-ReLU, context-aware masked conv.
#[derive(Debug)]
struct CamLayer {
    norm: Affine,
    bottleneck: Conv,
    local: Conv,
    context1: Conv,
    context2: Conv,
    dilation: usize,
}

impl CamLayer {
    fn load(
        w: &StateDict,
        prefix: &str,
        channels: usize,
        dilation: usize,
    ) -> Result<Self, ModelError> {
        let reduced = BOTTLENECK / CAM_REDUCTION;
        let with_bias = |name: &str, out: usize, input: usize| -> Result<Conv, ModelError> {
            Ok(Conv {
                weight: w.get(
                    &format!("{prefix}.cam_layer.{name}.weight"),
                    &[out, input, 1],
                )?,
                bias: w
                    .get(&format!("{prefix}.cam_layer.{name}.bias"), &[out])?
                    .reshape((out, 1))?,
            })
        };
        Ok(Self {
            norm: Affine::batch_norm(w, &format!("{prefix}.nonlinear1.batchnorm"), channels)?,
            bottleneck: Conv::load(w, &format!("{prefix}.linear1"), &[BOTTLENECK, channels, 1])?
                .fold(&Affine::batch_norm(
                    w,
                    &format!("{prefix}.nonlinear2.batchnorm"),
                    BOTTLENECK,
                )?)?,
            local: Conv::load(
                w,
                &format!("{prefix}.cam_layer.linear_local"),
                &[GROWTH, BOTTLENECK, 3],
            )?,
            context1: with_bias("linear1", reduced, BOTTLENECK)?,
            context2: with_bias("linear2", GROWTH, reduced)?,
            dilation,
        })
    }

    /// `(channels, time)` → the layer's `(32, time)` new channels.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.norm.apply(x)?.relu()?;
        let h = self.bottleneck.matmul(&h)?.relu()?;
        let local = self.local.conv1d(&h, self.dilation, 1, self.dilation)?;
        // The mask depends on the time step only through its segment, so it is computed once
        // per segment: sigmoid(W2 relu(W1 (global mean + segment mean) + b1) + b2).
        let steps = h.dim(1)?;
        let global = h.mean_keepdim(1)?;
        let segments = steps.div_ceil(SEGMENT);
        let means = (0..segments)
            .map(|s| {
                let len = SEGMENT.min(steps - s * SEGMENT);
                h.narrow(1, s * SEGMENT, len)?.mean_keepdim(1)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let context = Tensor::cat(&means, 1)?.broadcast_add(&global)?;
        let mask = self.context1.matmul(&context)?.relu()?;
        let mask = candle_nn::ops::sigmoid(&self.context2.matmul(&mask)?)?;
        let spans = (0..segments)
            .map(|s| {
                let len = SEGMENT.min(steps - s * SEGMENT);
                mask.narrow(1, s, 1)?.broadcast_as((GROWTH, len))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        local.mul(&Tensor::cat(&spans, 1)?)
    }
}

/// The transition after a dense block: BN-ReLU and a halving kernel-1 convolution.
#[derive(Debug)]
struct Transit {
    norm: Affine,
    linear: Conv,
}

impl Transit {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.linear.matmul(&self.norm.apply(x)?.relu()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn im2col_pads_and_strides_along_the_height_only() {
        // One 3×2 channel: rows [1 2], [3 4], [5 6].
        let x = Plane {
            channels: 1,
            height: 3,
            width: 2,
            data: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        };
        let cols = x.im2col(3, 2);
        // Output height (3 + 2 - 3) / 2 + 1 = 2, rows 0 and 2 of the input as centres.
        assert_eq!(cols.len(), 9 * 2 * 2);
        let row = |kh: usize, kw: usize| &cols[(kh * 3 + kw) * 4..(kh * 3 + kw + 1) * 4];
        // Centre tap: the input at (2·oh, t).
        assert_eq!(row(1, 1), [1.0, 2.0, 5.0, 6.0]);
        // Top-left tap: the input at (2·oh - 1, t - 1), zero outside.
        assert_eq!(row(0, 0), [0.0, 0.0, 0.0, 3.0]);
        // Bottom-right tap: the input at (2·oh + 1, t + 1).
        assert_eq!(row(2, 2), [4.0, 0.0, 0.0, 0.0]);
        // A 1×1 kernel with stride 2 picks every other row.
        assert_eq!(x.im2col(1, 2), [1.0, 2.0, 5.0, 6.0]);
    }
}
