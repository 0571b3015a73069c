//! The mel filterbank whisper's front end uses: librosa's `filters.mel` with its defaults
//! (Slaney's mel scale, Slaney area normalisation, `fmin = 0`, `fmax = sr / 2`), computed here
//! rather than shipped as a table.
//!
//! Slaney's scale is linear below 1 kHz (200/3 Hz per mel) and logarithmic above it (27 mels
//! per factor 6.4). `n_mels + 2` points evenly spaced on it bound `n_mels` triangles over the
//! FFT bins `k · sr / n_fft`; each triangle is scaled by `2 / (upper edge − lower edge)` so
//! that all have the same area.

/// Hz per mel below the break.
const F_SP: f64 = 200.0 / 3.0;
/// Where the scale turns logarithmic, in Hz.
const MIN_LOG_HZ: f64 = 1000.0;
/// ... and in mels.
const MIN_LOG_MEL: f64 = MIN_LOG_HZ / F_SP;

fn log_step() -> f64 {
    6.4f64.ln() / 27.0
}

/// Hertz to mels on Slaney's scale.
pub fn hz_to_mel(hz: f64) -> f64 {
    if hz >= MIN_LOG_HZ {
        MIN_LOG_MEL + (hz / MIN_LOG_HZ).ln() / log_step()
    } else {
        hz / F_SP
    }
}

/// Mels to hertz on Slaney's scale.
pub fn mel_to_hz(mel: f64) -> f64 {
    if mel >= MIN_LOG_MEL {
        MIN_LOG_HZ * (log_step() * (mel - MIN_LOG_MEL)).exp()
    } else {
        F_SP * mel
    }
}

/// The filterbank as `n_mels` rows of `n_fft / 2 + 1` weights, row-major.
pub fn slaney_filters(sample_rate: u32, n_fft: usize, n_mels: usize) -> Vec<f32> {
    let bins = n_fft / 2 + 1;
    let sr = f64::from(sample_rate);
    let fft_freqs: Vec<f64> = (0..bins).map(|k| k as f64 * sr / n_fft as f64).collect();
    let (lo, hi) = (hz_to_mel(0.0), hz_to_mel(sr / 2.0));
    let points = n_mels + 2;
    let edges: Vec<f64> = (0..points)
        .map(|i| mel_to_hz(lo + (hi - lo) * i as f64 / (points - 1) as f64))
        .collect();
    let mut weights = vec![0f32; n_mels * bins];
    for m in 0..n_mels {
        let (left, centre, right) = (edges[m], edges[m + 1], edges[m + 2]);
        let norm = 2.0 / (right - left);
        for (k, &f) in fft_freqs.iter().enumerate() {
            let rising = (f - left) / (centre - left);
            let falling = (right - f) / (right - centre);
            let w = rising.min(falling).max(0.0);
            // librosa stores the triangle in f32, then scales it in place.
            weights[m * bins + k] = ((w as f32) as f64 * norm) as f32;
        }
    }
    weights
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scale_is_linear_then_logarithmic_and_inverts() {
        assert!((hz_to_mel(1000.0) - 15.0).abs() < 1e-12);
        assert!((hz_to_mel(500.0) - 7.5).abs() < 1e-12);
        assert!((hz_to_mel(6400.0) - 42.0).abs() < 1e-9);
        for hz in [0.0, 133.0, 999.0, 1000.0, 4321.0, 8000.0] {
            assert!((mel_to_hz(hz_to_mel(hz)) - hz).abs() < 1e-9, "{hz}");
        }
    }

    /// Values from `librosa.filters.mel(sr=16000, n_fft=400, n_mels=80)` (librosa 0.10),
    /// which is whisper's `mel_filters.npz["mel_80"]`.
    #[test]
    fn matches_librosa_for_whisper() {
        let f = slaney_filters(16_000, 400, 80);
        assert_eq!(f.len(), 80 * 201);
        let at = |m: usize, k: usize| f[m * 201 + k];
        for &(m, k, want) in LIBROSA {
            let got = f64::from(at(m, k));
            assert!(
                (got - want).abs() <= 1e-9,
                "filter {m} bin {k}: {got} vs librosa {want}"
            );
        }
        // Every filter has some weight; the DC bin and Nyquist bin have none.
        for m in 0..80 {
            assert!((0..201).any(|k| at(m, k) > 0.0), "filter {m} is empty");
        }
        assert!((0..80).all(|m| at(m, 0) == 0.0 && at(m, 200) == 0.0));
    }

    #[rustfmt::skip]
    const LIBROSA: &[(usize, usize, f64)] = &[
        (0, 1, 0.024_862_595),
        (1, 1, 0.001_990_822),
        (1, 2, 0.022_871_772),
        (2, 3, 0.020_880_951),
        (10, 10, 0.019_908_218),
        (10, 11, 0.004_954_375),
        (25, 24, 0.020_874_01),
        (40, 42, 0.005_411_105),
        (40, 43, 0.014_735_566),
        (60, 90, 0.001_434_534_3),
        (79, 186, 0.000_366_741_67),
        (79, 187, 0.000_833_070_02),
    ];
}
