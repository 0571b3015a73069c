//! The bidirectional LSTM stack of PyanNet: input projections by candle, the recurrence in
//! plain Rust (one 512 × 128 matrix-vector product and the gate nonlinearities per step),
//! compiled for the widest SIMD the CPU offers, chosen at run time by `pulp`.

use candle_core::{Device, Tensor};

use super::{GATES, HIDDEN, Linear};
use crate::weights::{ModelError, StateDict};

/// One bidirectional LSTM layer (PyTorch's gate order: input, forget, cell, output).
#[derive(Debug)]
pub(super) struct BiLstm {
    /// Input projections of both directions side by side, `(input, 2 × 4H)`, with both
    /// biases folded in.
    input: Linear,
    /// Recurrent weights per direction in [`Recurrent`]'s blocked layout.
    recurrent: [Recurrent; 2],
}

impl BiLstm {
    pub(super) fn load(
        weights: &StateDict,
        layer: usize,
        input: usize,
    ) -> Result<Self, ModelError> {
        let direction = |suffix: &str| -> Result<(Tensor, Tensor, Recurrent), ModelError> {
            let name = |kind: &str| format!("lstm.{kind}_l{layer}{suffix}");
            Ok((
                weights.get(&name("weight_ih"), &[GATES, input])?,
                (weights.get(&name("bias_ih"), &[GATES])?
                    + weights.get(&name("bias_hh"), &[GATES])?)?,
                Recurrent::new(&weights.vec(&name("weight_hh"), &[GATES, HIDDEN])?),
            ))
        };
        let (forward_ih, forward_bias, forward) = direction("")?;
        let (backward_ih, backward_bias, backward) = direction("_reverse")?;
        Ok(Self {
            input: Linear {
                weight_t: Tensor::cat(&[forward_ih, backward_ih], 0)?
                    .t()?
                    .contiguous()?,
                bias: Tensor::cat(&[forward_bias, backward_bias], 0)?,
            },
            recurrent: [forward, backward],
        })
    }

    /// `(batch, time, input)` → `(batch, time, 2H)`: forward states then backward states.
    /// With `threads` ≥ 2 the input projections are split over the threads by time and the
    /// backward direction runs on a second thread.
    pub(super) fn forward(&self, x: &Tensor, threads: usize) -> Result<Tensor, ModelError> {
        let (batch, steps, _) = x.dims3()?;
        let projected = self.input.forward_rows(x, threads)?;
        let mut out = vec![0f32; batch * steps * 2 * HIDDEN];
        for (projected, out) in projected
            .chunks_exact(steps * 2 * GATES)
            .zip(out.chunks_exact_mut(steps * 2 * HIDDEN))
        {
            let run = |reverse: bool| {
                let mut states = vec![0f32; steps * HIDDEN];
                pulp::Arch::new().dispatch(Run {
                    recurrent: &self.recurrent[usize::from(reverse)],
                    projected,
                    out: &mut states,
                    reverse,
                });
                states
            };
            let (forward, backward) = if threads >= 2 {
                std::thread::scope(|scope| {
                    let backward = scope.spawn(|| run(true));
                    let forward = run(false);
                    let backward = backward
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                    (forward, backward)
                })
            } else {
                (run(false), run(true))
            };
            for ((out, forward), backward) in out
                .chunks_exact_mut(2 * HIDDEN)
                .zip(forward.chunks_exact(HIDDEN))
                .zip(backward.chunks_exact(HIDDEN))
            {
                out[..HIDDEN].copy_from_slice(forward);
                out[HIDDEN..].copy_from_slice(backward);
            }
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
    /// (`time × [forward 4H | backward 4H]`), writing this direction's hidden states into
    /// `out` (`time × H`).
    #[inline(always)]
    fn run(&self, projected: &[f32], out: &mut [f32], reverse: bool) {
        let steps = projected.len() / (2 * GATES);
        let gate_offset = if reverse { GATES } else { 0 };
        let mut hidden = [0f32; HIDDEN];
        let mut cell = [0f32; HIDDEN];
        let mut gates = [0f32; GATES];
        for step in 0..steps {
            let t = if reverse { steps - 1 - step } else { step };
            let start = t * 2 * GATES + gate_offset;
            gates.copy_from_slice(&projected[start..start + GATES]);
            self.add_product(&hidden, &mut gates);
            lstm_cell(&gates, &mut cell, &mut hidden);
            out[t * HIDDEN..(t + 1) * HIDDEN].copy_from_slice(&hidden);
        }
    }

    /// `gates += W_hh h`.
    #[inline(always)]
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

/// One direction's recurrence as a `pulp` operation: `pulp` calls it inside a function
/// compiled for the CPU's widest SIMD (AVX2 + FMA, …) after checking at run time that the CPU
/// has it, so the plain loops of [`Recurrent::run`], all inlined here, are vectorised for it.
struct Run<'a> {
    recurrent: &'a Recurrent,
    projected: &'a [f32],
    out: &'a mut [f32],
    reverse: bool,
}

impl pulp::WithSimd for Run<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        self.recurrent.run(self.projected, self.out, self.reverse);
    }
}

/// The LSTM cell update from the pre-activation gates `[i | f | g | o]`.
#[inline(always)]
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
#[inline(always)]
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

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

#[inline(always)]
fn tanh(x: f32) -> f32 {
    2.0 * sigmoid(2.0 * x) - 1.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_lstm_step_matches_the_equations() {
        // One step, one unit per gate block: with zero state, h = o * tanh(i * g).
        let mut projected = vec![0f32; 2 * GATES];
        projected[0] = 0.5; // input gate of unit 0
        projected[2 * HIDDEN] = 1.0; // cell candidate of unit 0
        projected[3 * HIDDEN] = -0.25; // output gate of unit 0
        let recurrent = Recurrent::new(&vec![0f32; GATES * HIDDEN]);
        let mut out = vec![0f32; HIDDEN];
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
