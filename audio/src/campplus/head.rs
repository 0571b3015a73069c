//! The 2-D convolutional head of CAM++ (FCM): 3×3 convolutions over (frequency, time) maps,
//! done as im2col plus one matrix product, with residual blocks.

use candle_core::{Device, Tensor};

use super::HEAD_CHANNELS;
use super::layers::{Affine, Conv};
use crate::fbank;
use crate::weights::{ModelError, StateDict};

/// Feature maps `(channels, height, width)` in a plain vector, for the 2-D head.
pub(super) struct Plane {
    pub(super) channels: usize,
    pub(super) height: usize,
    pub(super) width: usize,
    pub(super) data: Vec<f32>,
}

impl Plane {
    /// Output rows of a `k × k` convolution with zero padding `k / 2` and stride `stride`
    /// along the height.
    pub(super) fn out_height(&self, kernel: usize, stride: usize) -> usize {
        (self.height + 2 * (kernel / 2) - kernel) / stride + 1
    }

    /// The `(channels × k × k, height' × width)` patch matrix of a `k × k` convolution with
    /// zero padding `k / 2` and stride `stride` along the height.
    #[cfg(test)]
    fn im2col(&self, kernel: usize, stride: usize) -> Vec<f32> {
        self.im2col_rows(kernel, stride, 0..self.out_height(kernel, stride))
    }

    /// The columns of the patch matrix for the output rows `out_rows` only:
    /// `(channels × k × k, out_rows.len() × width)`.
    pub(super) fn im2col_rows(
        &self,
        kernel: usize,
        stride: usize,
        out_rows: std::ops::Range<usize>,
    ) -> Vec<f32> {
        let pad = kernel / 2;
        let (h, w) = (self.height, self.width);
        let out_h = out_rows.len();
        let mut cols = vec![0f32; self.channels * kernel * kernel * out_h * w];
        let mut rows = cols.chunks_exact_mut(out_h * w);
        for c in 0..self.channels {
            let plane = &self.data[c * h * w..(c + 1) * h * w];
            for kh in 0..kernel {
                for kw in 0..kernel {
                    let Some(row) = rows.next() else { return cols };
                    for (oh, out_row) in out_rows.clone().enumerate() {
                        let Some(ih) = (out_row * stride + kh).checked_sub(pad).filter(|&i| i < h)
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
    fn forward(&self, x: &Plane, threads: usize) -> candle_core::Result<Plane> {
        let y = self.conv1.conv2d(x, self.stride, threads)?.relu();
        let y = self.conv2.conv2d(&y, 1, threads)?;
        Ok(match &self.shortcut {
            Some(shortcut) => y.add_relu(&shortcut.conv2d(x, self.stride, threads)?),
            None => y.add_relu(x),
        })
    }
}

/// The 2-D convolutional front (FCM).
#[derive(Debug)]
pub(super) struct Head {
    conv1: Conv,
    blocks: Vec<ResBlock>,
    conv2: Conv,
}

impl Head {
    pub(super) fn load(w: &StateDict) -> Result<Self, ModelError> {
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

    /// `(frames, 80)` features → `(320, frames)`, each convolution on up to `threads` threads.
    pub(super) fn forward(
        &self,
        features: &[f32],
        frames: usize,
        threads: usize,
    ) -> candle_core::Result<Tensor> {
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
        let mut x = self.conv1.conv2d(&x, 1, threads)?.relu();
        for block in &self.blocks {
            x = block.forward(&x, threads)?;
        }
        let x = self.conv2.conv2d(&x, 2, threads)?.relu();
        Tensor::from_vec(x.data, (x.channels * x.height, x.width), &Device::Cpu)
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
