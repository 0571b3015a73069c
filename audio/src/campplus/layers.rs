//! The building blocks of CAM++ after its head: inference-time batch norms, convolutions (with
//! batch norms folded in), the context-aware masked layers of the dense blocks and the
//! transitions between blocks.

use candle_core::{D, Device, Tensor};

use super::head::Plane;
use super::{BN_EPS, BOTTLENECK, CAM_REDUCTION, GROWTH, SEGMENT};
use crate::weights::{ModelError, StateDict};

/// A per-channel `x * scale + shift`, shaped `(channels, 1)`: an inference-time batch norm.
#[derive(Debug)]
pub(super) struct Affine {
    scale: Tensor,
    shift: Tensor,
}

impl Affine {
    /// A batch norm with learned weight and bias.
    pub(super) fn batch_norm(
        w: &StateDict,
        prefix: &str,
        channels: usize,
    ) -> Result<Self, ModelError> {
        let weight = w.vec(&format!("{prefix}.weight"), &[channels])?;
        let bias = w.vec(&format!("{prefix}.bias"), &[channels])?;
        Self::from_stats(w, prefix, channels, &weight, &bias)
    }

    /// A batch norm without affine parameters (`affine=False`).
    pub(super) fn plain_batch_norm(
        w: &StateDict,
        prefix: &str,
        channels: usize,
    ) -> Result<Self, ModelError> {
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
    pub(super) fn apply(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.broadcast_mul(&self.scale)?.broadcast_add(&self.shift)
    }
}

/// A convolution kept as its weight `(out, in, kernel…)` plus a bias `(out, 1)`.
#[derive(Debug)]
pub(super) struct Conv {
    weight: Tensor,
    bias: Tensor,
}

impl Conv {
    /// A bias-free convolution from the state dict.
    pub(super) fn load(w: &StateDict, prefix: &str, shape: &[usize]) -> Result<Self, ModelError> {
        let weight = w.get(&format!("{prefix}.weight"), shape)?;
        let bias = Tensor::zeros((shape[0], 1), weight.dtype(), &Device::Cpu)?;
        Ok(Self { weight, bias })
    }

    /// The convolution followed by `norm`, as one convolution.
    pub(super) fn fold(self, norm: &Affine) -> Result<Self, ModelError> {
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
    pub(super) fn matmul(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.matrix()?.matmul(x)?.broadcast_add(&self.bias)
    }

    /// A 1-D convolution of `(in, time)` → `(out, time')`.
    pub(super) fn conv1d(
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
    pub(super) fn conv2d(&self, x: &Plane, stride: usize) -> candle_core::Result<Plane> {
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

/// One layer of a dense block: BN-ReLU, bottleneck, BN-ReLU, context-aware masked conv.
#[derive(Debug)]
pub(super) struct CamLayer {
    norm: Affine,
    bottleneck: Conv,
    local: Conv,
    context1: Conv,
    context2: Conv,
    dilation: usize,
}

impl CamLayer {
    pub(super) fn load(
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
    pub(super) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
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
pub(super) struct Transit {
    pub(super) norm: Affine,
    pub(super) linear: Conv,
}

impl Transit {
    pub(super) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.linear.matmul(&self.norm.apply(x)?.relu()?)
    }
}
