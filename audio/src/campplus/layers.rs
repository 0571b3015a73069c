//! The building blocks of CAM++ after its head: inference-time batch norms, convolutions (with
//! batch norms folded in), the context-aware masked layers of the dense blocks and the
//! transitions between blocks.

use candle_core::{D, Device, Tensor};

use super::head::Plane;
use super::{BN_EPS, BOTTLENECK, CAM_REDUCTION, GROWTH, SEGMENT};
use crate::parallel::{parallel_map, split};
use crate::weights::{ModelError, StateDict};

/// A per-channel `x * scale + shift`: an inference-time batch norm.
#[derive(Debug)]
pub(super) struct Affine {
    scale: Vec<f32>,
    shift: Vec<f32>,
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
        Ok(Self { scale, shift })
    }

    /// `relu(x * scale + shift)` of row-major `(channels, time)` data.
    pub(super) fn apply_relu(&self, x: &[f32]) -> Vec<f32> {
        let steps = x.len() / self.scale.len();
        let mut out = Vec::with_capacity(x.len());
        for ((row, &scale), &shift) in x.chunks_exact(steps).zip(&self.scale).zip(&self.shift) {
            out.extend(row.iter().map(|&v| (v * scale + shift).max(0.0)));
        }
        out
    }
}

/// A convolution kept as its weight `(out, in, kernel…)` plus a bias `(out, 1)`; the weight
/// also as the matrix `(out, in × kernel…)` and the bias as a vector, for [`Conv::product`].
#[derive(Debug)]
pub(super) struct Conv {
    weight: Tensor,
    bias: Tensor,
    matrix: Tensor,
    bias_values: Vec<f32>,
}

impl Conv {
    fn new(weight: Tensor, bias: Vec<f32>) -> candle_core::Result<Self> {
        let out = weight.dim(0)?;
        Ok(Self {
            matrix: weight.reshape((out, ()))?,
            bias: Tensor::from_slice(&bias, (out, 1), &Device::Cpu)?,
            bias_values: bias,
            weight,
        })
    }

    /// A bias-free convolution from the state dict.
    pub(super) fn load(w: &StateDict, prefix: &str, shape: &[usize]) -> Result<Self, ModelError> {
        let weight = w.get(&format!("{prefix}.weight"), shape)?;
        Ok(Self::new(weight, vec![0.0; shape[0]])?)
    }

    /// The convolution followed by `norm`, as one convolution.
    pub(super) fn fold(self, norm: &Affine) -> Result<Self, ModelError> {
        let rank = self.weight.rank();
        let scale = Tensor::from_slice(
            &norm.scale,
            std::iter::once(norm.scale.len())
                .chain(std::iter::repeat_n(1, rank - 1))
                .collect::<Vec<_>>(),
            &Device::Cpu,
        )?;
        let bias = self
            .bias_values
            .iter()
            .zip(norm.scale.iter().zip(&norm.shift))
            .map(|(&b, (&scale, &shift))| b * scale + shift)
            .collect();
        Ok(Self::new(self.weight.broadcast_mul(&scale)?, bias)?)
    }

    /// `W x + b` (then a ReLU when `relu`) for row-major `x` `(in × kernel…, time)` (a
    /// kernel-1 input or a patch matrix): row-major `(out, time)`.
    pub(super) fn product(&self, x: Vec<f32>, relu: bool) -> candle_core::Result<Vec<f32>> {
        let rows = self.matrix.dim(1)?;
        let steps = x.len() / rows;
        let x = Tensor::from_vec(x, (rows, steps), &Device::Cpu)?;
        let mut out: Vec<f32> = self.matrix.matmul(&x)?.flatten_all()?.to_vec1()?;
        for (row, &bias) in out.chunks_exact_mut(steps).zip(&self.bias_values) {
            if relu {
                row.iter_mut().for_each(|v| *v = (*v + bias).max(0.0));
            } else {
                row.iter_mut().for_each(|v| *v += bias);
            }
        }
        Ok(out)
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
    /// height (frequency) and 1 along the width (time), of `(in, height, width)` data. The
    /// output rows are cut into `threads` blocks, each its own patch matrix and product on a
    /// thread of its own.
    pub(super) fn conv2d(
        &self,
        x: &Plane,
        stride: usize,
        threads: usize,
    ) -> candle_core::Result<Plane> {
        let kernel = self.weight.dim(D::Minus1)?;
        let height = x.out_height(kernel, stride);
        let blocks = split(height, threads);
        let outputs = parallel_map(&blocks, threads, |rows| {
            self.product(x.im2col_rows(kernel, stride, rows.clone()), false)
        })?;
        let channels = self.bias_values.len();
        let data = match <[Vec<f32>; 1]>::try_from(outputs) {
            Ok([single]) => single,
            Err(outputs) => {
                let mut data = Vec::with_capacity(channels * height * x.width);
                for c in 0..channels {
                    for (rows, out) in blocks.iter().zip(&outputs) {
                        let len = rows.len() * x.width;
                        data.extend_from_slice(&out[c * len..(c + 1) * len]);
                    }
                }
                data
            }
        };
        Ok(Plane {
            channels,
            height,
            width: x.width,
            data,
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
            Ok(Conv::new(
                w.get(
                    &format!("{prefix}.cam_layer.{name}.weight"),
                    &[out, input, 1],
                )?,
                w.vec(&format!("{prefix}.cam_layer.{name}.bias"), &[out])?,
            )?)
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

    /// Row-major `(channels, time)` → the layer's `(32, time)` new channels.
    pub(super) fn forward(&self, x: &[f32]) -> candle_core::Result<Vec<f32>> {
        let h = self.bottleneck.product(self.norm.apply_relu(x), true)?;
        let steps = h.len() / BOTTLENECK;
        // The mask depends on the time step only through its segment, so it is computed once
        // per segment: sigmoid(W2 relu(W1 (global mean + segment mean) + b1) + b2).
        let segments = steps.div_ceil(SEGMENT);
        let mut context = Vec::with_capacity(BOTTLENECK * segments);
        for row in h.chunks_exact(steps) {
            let global = row.iter().sum::<f32>() / steps as f32;
            context.extend(
                row.chunks(SEGMENT)
                    .map(|segment| global + segment.iter().sum::<f32>() / segment.len() as f32),
            );
        }
        let mask = self.context1.product(context, true)?;
        let mask = self.context2.product(mask, false)?;
        let mut local = self
            .local
            .product(dilated_patches(&h, steps, self.dilation), false)?;
        for (row, mask) in local
            .chunks_exact_mut(steps)
            .zip(mask.chunks_exact(segments))
        {
            for (span, &m) in row.chunks_mut(SEGMENT).zip(mask) {
                let m = 1.0 / (1.0 + (-m).exp());
                span.iter_mut().for_each(|v| *v *= m);
            }
        }
        Ok(local)
    }
}

/// The patch matrix `(channels × 3, time)` of a kernel-3 convolution with dilation and zero
/// padding `dilation`: row `3c + k` holds channel `c` shifted by `(k - 1) × dilation`.
fn dilated_patches(x: &[f32], steps: usize, dilation: usize) -> Vec<f32> {
    let mut cols = vec![0f32; 3 * x.len()];
    let d = dilation.min(steps);
    for (row, cols) in x.chunks_exact(steps).zip(cols.chunks_exact_mut(3 * steps)) {
        let (left, rest) = cols.split_at_mut(steps);
        let (centre, right) = rest.split_at_mut(steps);
        left[d..].copy_from_slice(&row[..steps - d]);
        centre.copy_from_slice(row);
        right[..steps - d].copy_from_slice(&row[d..]);
    }
    cols
}

/// The transition after a dense block: BN-ReLU and a halving kernel-1 convolution.
#[derive(Debug)]
pub(super) struct Transit {
    pub(super) norm: Affine,
    pub(super) linear: Conv,
}

impl Transit {
    /// Row-major `(channels, time)` → `(channels / 2, time)`.
    pub(super) fn forward(&self, x: &[f32]) -> candle_core::Result<Vec<f32>> {
        self.linear.product(self.norm.apply_relu(x), false)
    }
}
