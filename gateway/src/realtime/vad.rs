//! Energy-based voice activity detection with hangover, for `turn_detection: server_vad`.
//!
//! The 16 kHz audio is cut into 20 ms frames; a frame is speech when its RMS level stands
//! `margin` dB above the noise floor (tracked over non-speech frames, never below -70 dBFS).
//! `threshold` (0..1, OpenAI's knob, default 0.5) sets the margin: 3 dB at 0, 33 dB at 1.
//! The first 100 ms only measure the floor (at most -50 dBFS). Speech starts after two speech frames in a row and ends once `silence_duration_ms` of
//! non-speech frames have passed (the hangover); the utterance then runs from
//! `prefix_padding_ms` before the start to the end of the hangover.

/// Samples per second of the audio the detector sees.
pub const RATE: usize = 16_000;
/// Samples per frame (20 ms).
pub const FRAME: usize = RATE / 50;
/// The floor below which nothing counts as noise (digital silence).
const MIN_FLOOR_DB: f32 = -70.0;
/// Speech frames in a row that start speech.
const ONSET_FRAMES: u32 = 2;
/// The first frames only measure the noise floor (100 ms; the prefix padding keeps them).
const WARMUP_FRAMES: u64 = 5;
/// The highest floor the warm-up may measure (louder noise is learnt slowly afterwards).
const WARMUP_CAP_DB: f32 = -50.0;

/// `server_vad` settings, as the session gives them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VadConfig {
    /// Sensitivity, 0..1: higher needs louder speech.
    pub threshold: f32,
    /// Audio kept before the start of speech, in ms.
    pub prefix_padding_ms: u32,
    /// Silence that ends speech, in ms.
    pub silence_duration_ms: u32,
}

impl Default for VadConfig {
    fn default() -> Self {
        Self {
            threshold: 0.5,
            prefix_padding_ms: 300,
            silence_duration_ms: 500,
        }
    }
}

/// What one frame changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VadEvent {
    /// Speech began at this sample (prefix padding included).
    Started {
        /// Sample index of the utterance's start.
        at: u64,
    },
    /// Speech ended at this sample (the end of the hangover).
    Stopped {
        /// Sample index of the utterance's end.
        at: u64,
    },
}

/// The detector's state for one track.
#[derive(Debug, Clone)]
pub struct Vad {
    config: VadConfig,
    floor_db: f32,
    speaking: bool,
    run: u32,
    silent_frames: u32,
    /// Samples seen (whole frames), counted from the track's start.
    position: u64,
    /// Where the detector started (its warm-up runs from there).
    origin: u64,
}

impl Vad {
    /// A detector with `config`.
    pub fn new(config: VadConfig) -> Self {
        Self::starting_at(config, 0)
    }

    /// A detector whose first frame is sample `position` of the track.
    pub fn starting_at(config: VadConfig, position: u64) -> Self {
        Self {
            config,
            floor_db: MIN_FLOOR_DB,
            speaking: false,
            run: 0,
            silent_frames: 0,
            position,
            origin: position,
        }
    }

    /// Whether speech is going on.
    pub fn speaking(&self) -> bool {
        self.speaking
    }

    /// Samples seen so far (whole frames).
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Forgets any speech in progress (a manual commit or clear ended it).
    pub fn reset(&mut self) {
        self.speaking = false;
        self.run = 0;
        self.silent_frames = 0;
    }

    fn margin_db(&self) -> f32 {
        3.0 + 30.0 * self.config.threshold.clamp(0.0, 1.0)
    }

    /// Takes one frame of [`FRAME`] samples; returns what it changed.
    pub fn frame(&mut self, frame: &[f32]) -> Option<VadEvent> {
        let energy = frame.iter().map(|x| x * x).sum::<f32>() / frame.len().max(1) as f32;
        let db = 10.0 * energy.max(1e-12).log10();
        let start = self.position;
        self.position += frame.len() as u64;
        if start - self.origin < WARMUP_FRAMES * FRAME as u64 {
            // Speech from the first frame must not pass for the floor: it is capped.
            let db = db.min(WARMUP_CAP_DB);
            self.floor_db = if start == self.origin {
                db
            } else {
                self.floor_db.min(db)
            }
            .max(MIN_FLOOR_DB);
            return None;
        }
        let voiced = db > self.floor_db.max(MIN_FLOOR_DB) + self.margin_db();
        if !voiced {
            // The floor follows quiet frames down at once and up slowly.
            self.floor_db = if db < self.floor_db {
                db.max(MIN_FLOOR_DB)
            } else {
                self.floor_db + 0.05 * (db - self.floor_db)
            };
        }
        if self.speaking {
            if voiced {
                self.silent_frames = 0;
                return None;
            }
            self.silent_frames += 1;
            let hangover = self.config.silence_duration_ms.div_ceil(20).max(1);
            if self.silent_frames >= hangover {
                self.reset();
                return Some(VadEvent::Stopped { at: self.position });
            }
            return None;
        }
        if !voiced {
            self.run = 0;
            return None;
        }
        self.run += 1;
        if self.run < ONSET_FRAMES {
            return None;
        }
        self.speaking = true;
        self.silent_frames = 0;
        let onset = start + frame.len() as u64 - u64::from(ONSET_FRAMES) * FRAME as u64;
        let padding = u64::from(self.config.prefix_padding_ms) * RATE as u64 / 1000;
        Some(VadEvent::Started {
            at: onset.saturating_sub(padding),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(frames: usize, amp: f32) -> Vec<f32> {
        (0..frames * FRAME)
            .map(|i| amp * (i as f32 * 0.2).sin())
            .collect()
    }

    fn run(vad: &mut Vad, audio: &[f32]) -> Vec<VadEvent> {
        audio.chunks(FRAME).filter_map(|f| vad.frame(f)).collect()
    }

    #[test]
    fn speech_between_silences_starts_and_stops_once() {
        let mut vad = Vad::new(VadConfig::default());
        let mut audio = tone(50, 0.0);
        // Speech with a short 200 ms gap: one utterance, the hangover bridges it.
        audio.extend(tone(30, 0.3));
        audio.extend(tone(10, 0.0));
        audio.extend(tone(30, 0.3));
        audio.extend(tone(50, 0.0));
        let events = run(&mut vad, &audio);
        assert_eq!(events.len(), 2, "{events:?}");
        let VadEvent::Started { at } = events[0] else {
            panic!("{events:?}")
        };
        // 1 s of silence minus 300 ms of padding.
        assert_eq!(at, (50 * FRAME - 300 * 16) as u64);
        let VadEvent::Stopped { at } = events[1] else {
            panic!("{events:?}")
        };
        // The end of speech plus the 500 ms hangover.
        assert_eq!(at, ((120 + 25) * FRAME) as u64);
        assert!(!vad.speaking());
    }

    #[test]
    fn noise_floor_and_threshold() {
        // Steady noise at -40 dBFS is not speech; speech 20 dB above it is.
        let noise: Vec<f32> = (0..100 * FRAME)
            .map(|i| if i % 2 == 0 { 0.01 } else { -0.01 })
            .collect();
        let mut vad = Vad::new(VadConfig::default());
        assert!(run(&mut vad, &noise).is_empty());
        assert!(matches!(
            run(&mut vad, &tone(10, 0.3)).first(),
            Some(VadEvent::Started { .. })
        ));
        // A strict threshold ignores the same speech.
        let mut strict = Vad::new(VadConfig {
            threshold: 1.0,
            ..VadConfig::default()
        });
        run(&mut strict, &noise);
        assert!(run(&mut strict, &tone(10, 0.3)).is_empty());
    }
}
