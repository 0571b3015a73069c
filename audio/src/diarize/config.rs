//! The settings of a diarisation session, with diart's defaults and their valid ranges.

use super::WINDOW_SECONDS;

/// Settings of a diarisation session (diart's names and defaults).
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DiarizationConfig {
    /// Seconds between two windows (0.1–5; default 0.5).
    pub step_s: f64,
    /// Seconds between a frame's time and its output (`step_s`–5, at least 0.5; default 0.5).
    /// Longer latencies average more windows and give steadier turns.
    pub latency_s: f64,
    /// Activity (0–1) from which a speaker counts as active, for the clustering and the
    /// output (default 0.6).
    pub tau_active: f64,
    /// Mean activity over a window (0–1) from which a speaker moves its centroid
    /// (default 0.3).
    pub rho_update: f64,
    /// Cosine distance (0–2) past which a local speaker starts a new speaker (default 1.0).
    pub delta_new: f64,
    /// Most speakers per session (1–100; default 20).
    pub max_speakers: usize,
}

impl Default for DiarizationConfig {
    fn default() -> Self {
        Self {
            step_s: 0.5,
            latency_s: 0.5,
            tau_active: 0.6,
            rho_update: 0.3,
            delta_new: 1.0,
            max_speakers: 20,
        }
    }
}

/// Bounds of the settings.
const STEP: (f64, f64) = (0.1, WINDOW_SECONDS);
const MIN_LATENCY: f64 = 0.5;
const MAX_SPEAKERS: usize = 100;

impl DiarizationConfig {
    /// Checks every setting is in its range; the error names the setting.
    pub fn validate(&self) -> Result<(), String> {
        let within = |name: &str, v: f64, lo: f64, hi: f64| {
            if v.is_finite() && (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(format!("{name} must be between {lo} and {hi}, got {v}"))
            }
        };
        within("step_s", self.step_s, STEP.0, STEP.1)?;
        within(
            "latency_s",
            self.latency_s,
            MIN_LATENCY.max(self.step_s),
            WINDOW_SECONDS,
        )
        .map_err(|e| format!("{e} (latency_s is at least step_s and 0.5)"))?;
        within("tau_active", self.tau_active, 0.0, 1.0)?;
        within("rho_update", self.rho_update, 0.0, 1.0)?;
        within("delta_new", self.delta_new, 0.0, 2.0)?;
        if !(1..=MAX_SPEAKERS).contains(&self.max_speakers) {
            return Err(format!(
                "max_speakers must be between 1 and {MAX_SPEAKERS}, got {}",
                self.max_speakers
            ));
        }
        Ok(())
    }

    /// The settings forced into their ranges (NaN → default).
    pub(crate) fn clamped(&self) -> Self {
        let d = Self::default();
        let clamp = |v: f64, lo: f64, hi: f64, default: f64| {
            if v.is_nan() { default } else { v.clamp(lo, hi) }
        };
        let step_s = clamp(self.step_s, STEP.0, STEP.1, d.step_s);
        Self {
            step_s,
            latency_s: clamp(
                self.latency_s,
                MIN_LATENCY.max(step_s),
                WINDOW_SECONDS,
                step_s.max(MIN_LATENCY),
            ),
            tau_active: clamp(self.tau_active, 0.0, 1.0, d.tau_active),
            rho_update: clamp(self.rho_update, 0.0, 1.0, d.rho_update),
            delta_new: clamp(self.delta_new, 0.0, 2.0, d.delta_new),
            max_speakers: self.max_speakers.clamp(1, MAX_SPEAKERS),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_diarts() {
        let c = DiarizationConfig::default();
        assert_eq!(c.validate(), Ok(()));
        assert_eq!((c.step_s, c.latency_s), (0.5, 0.5));
        assert_eq!(c.clamped(), c);
    }

    #[test]
    fn out_of_range_settings_are_named() {
        let bad = |f: fn(&mut DiarizationConfig)| {
            let mut c = DiarizationConfig::default();
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert!(bad(|c| c.latency_s = 0.2).starts_with("latency_s"));
        assert!(bad(|c| c.latency_s = 5.5).starts_with("latency_s"));
        assert!(
            bad(|c| {
                c.step_s = 1.0;
                c.latency_s = 0.5
            })
            .starts_with("latency_s")
        );
        assert!(bad(|c| c.step_s = 0.0).starts_with("step_s"));
        assert!(bad(|c| c.step_s = f64::NAN).starts_with("step_s"));
        assert!(bad(|c| c.tau_active = 1.5).starts_with("tau_active"));
        assert!(bad(|c| c.rho_update = -0.1).starts_with("rho_update"));
        assert!(bad(|c| c.delta_new = 3.0).starts_with("delta_new"));
        assert!(bad(|c| c.max_speakers = 0).starts_with("max_speakers"));
        let ok = DiarizationConfig {
            step_s: 1.0,
            latency_s: 5.0,
            ..DiarizationConfig::default()
        };
        assert_eq!(ok.validate(), Ok(()));
    }

    #[test]
    fn clamping_and_serde() {
        let c = DiarizationConfig {
            latency_s: 9.0,
            max_speakers: 1000,
            tau_active: f64::NAN,
            ..DiarizationConfig::default()
        }
        .clamped();
        assert_eq!((c.latency_s, c.max_speakers, c.tau_active), (5.0, 100, 0.6));
        let parsed: DiarizationConfig = serde_json::from_str(r#"{"latency_s": 2.0}"#).unwrap();
        assert_eq!(parsed.latency_s, 2.0);
        assert_eq!(parsed.step_s, 0.5);
        assert!(serde_json::from_str::<DiarizationConfig>(r#"{"nope": 1}"#).is_err());
    }
}
