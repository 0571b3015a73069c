//! Elementwise functions written so that loops over them vectorise. `f32::exp` is a libm call
//! per element; a decode step needs about a million of them (softmax weights, SiLU gates),
//! which made the scalar calls several percent of a batched CPU step.

/// `e^x` within 2 ulp of `f32::exp` for `x` in [−87.33, 88.37]: `e^x = 2^n · e^r` with `n`
/// the nearest integer to `x / ln 2` and `|r| ≤ ln 2 / 2`, `e^r` from a degree-6 polynomial
/// (Cephes' coefficients). Below that range (where `e^x` leaves the normal floats) it is 0;
/// above it, +∞ included, it saturates at `e^88.37` ≈ 2.4e38 instead of growing to infinity;
/// NaN stays NaN. Branch-free, so loops over it vectorise. Its callers (softmax weights of
/// scores minus their maximum, SiLU gates) never rely on the saturation.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so that `n · LN2_HI` is exact.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5 · 2²³ rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    const LOW: f32 = -87.336_55;
    const HIGH: f32 = 88.376_26;
    let c = x.clamp(LOW, HIGH);
    let shifted = c * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = c - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // 2^n by building the exponent bits; `n` is in −126..=127 after the clamp. `shifted` is
    // 1.5 · 2²³ + n, so its low bits are n + 0x40_0000: integer arithmetic on them, unlike a
    // float-to-int cast (which saturates, and x86 has no vector instruction for that), stays
    // in vector registers.
    let biased = shifted.to_bits().wrapping_sub(ROUND.to_bits() - 127);
    let scale = f32::from_bits(biased << 23);
    let v = y * scale;
    if x < LOW {
        0.0
    } else if x.is_nan() {
        x
    } else {
        v
    }
}

/// `a ← silu(a) · b`, the SwiGLU of a llama MLP: `silu(g) = g / (1 + e^−g)`, in the widest
/// vector instructions this CPU has.
#[allow(
    unsafe_code,
    reason = "instruction-set variants, entered only after runtime feature detection"
)]
pub fn swiglu(a: &mut [f32], b: &[f32]) {
    assert_eq!(a.len(), b.len(), "gate and up widths");
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F.
            return unsafe { swiglu_avx512(a, b) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA.
            return unsafe { swiglu_avx2(a, b) };
        }
    }
    swiglu_loop(a, b);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn swiglu_avx512(a: &mut [f32], b: &[f32]) {
    swiglu_loop(a, b);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn swiglu_avx2(a: &mut [f32], b: &[f32]) {
    swiglu_loop(a, b);
}

#[inline(always)]
fn swiglu_loop(a: &mut [f32], b: &[f32]) {
    for (g, u) in a.iter_mut().zip(b) {
        *g = *g / (1.0 + exp(-*g)) * u;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_libm() {
        let mut worst = 0f64;
        let mut x = -87.33f32;
        while x <= 88.37 {
            let (got, want) = (exp(x), x.exp());
            let ulp = f64::from(want) * f64::from(f32::EPSILON);
            worst = worst.max((f64::from(got) - f64::from(want)).abs() / ulp);
            x += 0.001_37;
        }
        assert!(worst <= 2.0, "worst error {worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(100.0).is_finite() && exp(100.0) > 1e38);
    }

    #[test]
    fn swiglu_matches_the_definition() {
        let mut a: Vec<f32> = (0..100).map(|i| (i as f32 - 50.0) * 0.37).collect();
        let b: Vec<f32> = (0..100).map(|i| (i as f32) * 0.1 - 3.0).collect();
        let want: Vec<f32> = a
            .iter()
            .zip(&b)
            .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
            .collect();
        swiglu(&mut a, &b);
        for (got, want) in a.iter().zip(want) {
            assert!(
                (got - want).abs() <= 1e-6 * want.abs().max(1.0),
                "{got} vs {want}"
            );
        }
    }
}
