//! One connection's state, without I/O: client events in, server events and utterances to
//! transcribe out. Each track (the default one, `None`, and any named by `aigw_track`) has
//! its own converter, voice detector and buffer; its events carry `aigw_track` and its
//! transcripts the track's name as `speaker`.

use std::collections::HashMap;

use base64::Engine as _;
use serde_json::{Value, json};

use super::input::{Converter, TARGET_RATE};
use super::protocol::{EventError, SessionConfig, error_event, event, new_id};
use super::vad::{FRAME, Vad, VadEvent};

/// Most named tracks on one connection.
pub const MAX_TRACKS: usize = 16;
/// Longest utterance: server VAD commits at this length even mid-speech.
pub const MAX_UTTERANCE_SECS: usize = 30;
/// Most audio a track buffers before a manual commit; later appends are refused.
pub const MAX_BUFFER_SECS: usize = 120;
/// Shortest audio a manual commit accepts (OpenAI's 100 ms).
const MIN_COMMIT_MS: u64 = 100;

/// Audio to transcribe: one committed item.
#[derive(Debug)]
pub struct Utterance {
    /// The item's id.
    pub item_id: String,
    /// The track it came from (`None`: the default track).
    pub track: Option<String>,
    /// 16 kHz mono samples.
    pub samples: Vec<f32>,
    /// Where it starts in the track's audio, in seconds.
    pub start: f64,
}

/// What the connection must do.
#[derive(Debug)]
pub enum Action {
    /// Send this event.
    Send(Value),
    /// Transcribe this utterance.
    Transcribe(Utterance),
    /// The default track's new 16 kHz audio, for diarisation.
    Audio {
        /// The samples.
        samples: Vec<f32>,
        /// Where they start in the track, in seconds.
        start: f64,
    },
}

#[derive(Debug)]
struct Track {
    converter: Converter,
    vad: Option<Vad>,
    /// Audio since `buffer_start` (a sample index in the track's 16 kHz stream).
    buffer: Vec<f32>,
    buffer_start: u64,
    /// Samples not yet seen by the VAD (less than a frame).
    unframed: Vec<f32>,
    /// Samples received.
    position: u64,
    /// The item of the speech in progress.
    item_id: Option<String>,
}

impl Track {
    /// Moves what the converter holds into the buffer (the stream is cut here). Only
    /// without a detector, or when replacing it: the detector's position must follow the
    /// track's.
    fn flush_converter(&mut self) {
        let mut tail = self.converter.flush();
        self.position += tail.len() as u64;
        self.buffer.append(&mut tail);
    }
}

/// A session: its settings and tracks.
#[derive(Debug, Default)]
pub struct Session {
    /// The settings.
    pub config: SessionConfig,
    tracks: HashMap<Option<String>, Track>,
    last_item: Option<String>,
}

fn ms(samples: u64) -> u64 {
    samples * 1000 / u64::from(TARGET_RATE)
}

impl Session {
    /// A session with default settings.
    pub fn new() -> Self {
        Self::default()
    }

    fn track(&mut self, name: &Option<String>) -> Result<&mut Track, EventError> {
        if !self.tracks.contains_key(name) && self.tracks.len() > MAX_TRACKS {
            return Err(EventError::new(
                "too_many_tracks",
                format!("A session carries at most {MAX_TRACKS} named tracks."),
                Some("aigw_track"),
            ));
        }
        let (config, input) = (self.config.vad, self.config.input);
        Ok(self.tracks.entry(name.clone()).or_insert_with(|| Track {
            converter: Converter::new(input),
            vad: config.map(Vad::new),
            buffer: Vec::new(),
            buffer_start: 0,
            unframed: Vec::new(),
            position: 0,
            item_id: None,
        }))
    }

    /// Applies a session update; the tracks' formats and detectors follow for audio still
    /// to come (buffered audio is kept).
    pub fn update(&mut self, session: &Value) -> Result<(), EventError> {
        let before = (self.config.input, self.config.vad);
        self.config.update(session)?;
        if before != (self.config.input, self.config.vad) {
            for t in self.tracks.values_mut() {
                // What the old format left half-converted is kept; the detector restarts
                // at the track's current position (its speech in progress is forgotten).
                t.flush_converter();
                t.converter = Converter::new(self.config.input);
                t.unframed.clear();
                t.vad = self.config.vad.map(|v| Vad::starting_at(v, t.position));
                t.item_id = None;
            }
        }
        Ok(())
    }

    /// `input_audio_buffer.append`: PCM16 bytes for `track`.
    pub fn append(&mut self, track: Option<String>, pcm: &[u8]) -> Result<Vec<Action>, EventError> {
        let manual = self.config.vad.is_none();
        let t = self.track(&track)?;
        let samples = t.converter.push(pcm);
        let start = t.position as f64 / f64::from(TARGET_RATE);
        if manual && t.buffer.len() + samples.len() > MAX_BUFFER_SECS * TARGET_RATE as usize {
            return Err(EventError::new(
                "input_audio_buffer_full",
                format!(
                    "The input audio buffer holds at most {MAX_BUFFER_SECS} s: commit or clear it."
                ),
                Some("audio"),
            ));
        }
        let mut actions = Vec::new();
        if track.is_none() && self.config.diarization.is_some() && !samples.is_empty() {
            actions.push(Action::Audio {
                samples: samples.clone(),
                start,
            });
        }
        let t = self.track(&track)?;
        t.position += samples.len() as u64;
        t.buffer.extend_from_slice(&samples);
        if t.vad.is_none() {
            return Ok(actions);
        }
        t.unframed.extend_from_slice(&samples);
        let frames: Vec<Vec<f32>> = t
            .unframed
            .chunks_exact(FRAME)
            .map(<[f32]>::to_vec)
            .collect();
        t.unframed.drain(..frames.len() * FRAME);
        for frame in frames {
            self.frame(&track, &frame, &mut actions)?;
        }
        Ok(actions)
    }

    /// One VAD frame of `track`.
    fn frame(
        &mut self,
        track: &Option<String>,
        frame: &[f32],
        out: &mut Vec<Action>,
    ) -> Result<(), EventError> {
        let name = track.as_deref();
        let padding = u64::from(self.config.vad.map_or(0, |v| v.prefix_padding_ms)) * 16;
        let t = self.track(track)?;
        let Some(vad) = t.vad.as_mut() else {
            return Ok(());
        };
        match vad.frame(frame) {
            Some(VadEvent::Started { at }) => {
                let at = at.max(t.buffer_start);
                t.buffer.drain(..(at - t.buffer_start) as usize);
                t.buffer_start = at;
                let item_id = new_id("item");
                t.item_id = Some(item_id.clone());
                out.push(Action::Send(event(
                    "input_audio_buffer.speech_started",
                    name,
                    json!({"audio_start_ms": ms(at), "item_id": item_id}),
                )));
            }
            Some(VadEvent::Stopped { at }) => {
                let item_id = t.item_id.clone().unwrap_or_else(|| new_id("item"));
                out.push(Action::Send(event(
                    "input_audio_buffer.speech_stopped",
                    name,
                    json!({"audio_end_ms": ms(at), "item_id": item_id}),
                )));
                let upto = at.saturating_sub(t.buffer_start) as usize;
                self.commit_upto(track, upto, item_id, out);
            }
            None => {
                let speaking = vad.speaking();
                if speaking && t.buffer.len() >= MAX_UTTERANCE_SECS * TARGET_RATE as usize {
                    // Too long: commit what there is and go on with a new item.
                    vad.reset();
                    let item_id = t.item_id.clone().unwrap_or_else(|| new_id("item"));
                    let upto = vad.position().saturating_sub(t.buffer_start) as usize;
                    self.commit_upto(track, upto, item_id, out);
                } else if !speaking {
                    // Idle: keep only the padding (and the onset) the next start may need,
                    // counted back from the detector's position (the buffer may already hold
                    // later samples of the same append).
                    let keep = padding + 3 * FRAME as u64;
                    let from = vad.position().saturating_sub(keep).max(t.buffer_start);
                    t.buffer.drain(..(from - t.buffer_start) as usize);
                    t.buffer_start = from;
                }
            }
        }
        Ok(())
    }

    /// Commits `track`'s first `upto` buffered samples as `item_id`.
    fn commit_upto(
        &mut self,
        track: &Option<String>,
        upto: usize,
        item_id: String,
        out: &mut Vec<Action>,
    ) {
        let previous = self.last_item.replace(item_id.clone());
        let Some(t) = self.tracks.get_mut(track) else {
            return;
        };
        let upto = upto.min(t.buffer.len());
        let samples: Vec<f32> = t.buffer.drain(..upto).collect();
        let start = t.buffer_start as f64 / f64::from(TARGET_RATE);
        t.buffer_start += upto as u64;
        t.item_id = None;
        out.push(Action::Send(event(
            "input_audio_buffer.committed",
            track.as_deref(),
            json!({"previous_item_id": previous, "item_id": item_id}),
        )));
        out.push(Action::Transcribe(Utterance {
            item_id,
            track: track.clone(),
            samples,
            start,
        }));
    }

    /// `input_audio_buffer.commit`: everything `track` holds becomes an item.
    pub fn commit(&mut self, track: Option<String>) -> Result<Vec<Action>, EventError> {
        let t = self.track(&track)?;
        if t.vad.is_none() {
            t.flush_converter();
        }
        let speaking = t.vad.as_ref().is_some_and(Vad::speaking);
        let empty = ms(t.buffer.len() as u64) < MIN_COMMIT_MS || (t.vad.is_some() && !speaking);
        if empty {
            return Err(EventError::new(
                "input_audio_buffer_commit_empty",
                format!(
                    "Error committing input audio buffer: buffer too small. Expected at least {MIN_COMMIT_MS}ms of audio."
                ),
                None,
            ));
        }
        if let Some(vad) = t.vad.as_mut() {
            vad.reset();
        }
        let item_id = t.item_id.clone().unwrap_or_else(|| new_id("item"));
        let upto = t.buffer.len();
        let mut out = Vec::new();
        self.commit_upto(&track, upto, item_id, &mut out);
        Ok(out)
    }

    /// `input_audio_buffer.clear`: `track`'s buffered audio is dropped.
    pub fn clear(&mut self, track: Option<String>) -> Result<Vec<Action>, EventError> {
        let t = self.track(&track)?;
        if t.vad.is_none() {
            t.flush_converter();
        }
        t.buffer_start += t.buffer.len() as u64;
        t.buffer.clear();
        t.item_id = None;
        if let Some(vad) = t.vad.as_mut() {
            vad.reset();
        }
        Ok(vec![Action::Send(event(
            "input_audio_buffer.cleared",
            track.as_deref(),
            json!({}),
        ))])
    }

    /// Seconds of audio received on all tracks.
    pub fn audio_secs(&self) -> f64 {
        self.tracks.values().map(|t| t.position as f64).sum::<f64>() / f64::from(TARGET_RATE)
    }
}

/// Decodes the base64 of `input_audio_buffer.append`.
pub fn decode_audio(b64: &str) -> Result<Vec<u8>, EventError> {
    base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| {
            EventError::new(
                "invalid_value",
                format!("Invalid base64 audio: {e}."),
                Some("audio"),
            )
        })
}

/// A client event that failed, as the `error` event to send.
pub fn failed(err: &EventError, client_event_id: Option<&str>) -> Action {
    Action::Send(error_event(err, client_event_id))
}

#[cfg(test)]
mod tests;
