//! The part of aigw's realtime transcription protocol the bridge speaks: one session
//! update, binary PCM16 frames behind a track header, and the server events that matter.

use serde_json::{Value, json};

use crate::config::BridgeConfig;
use crate::voice::{CHANNELS, SAMPLE_RATE};

/// The session the bridge asks for: Discord's 48 kHz stereo in binary frames with a track
/// header, server voice detection ending an utterance after `silence_ms` of silence.
pub fn session_update(config: &BridgeConfig) -> Value {
    json!({
        "type": "transcription_session.update",
        "session": {
            "input_audio_format": "pcm16",
            "input_audio_transcription": {"model": config.model},
            "turn_detection": {
                "type": "server_vad",
                "silence_duration_ms": config.silence_ms,
            },
            "aigw_input": {"sample_rate": SAMPLE_RATE, "channels": CHANNELS},
            "aigw_binary_track_header": true,
        }
    })
}

/// A binary frame: the track name's length (one byte), the name, then little-endian PCM16.
/// `None` when the name does not fit the header.
pub fn frame(track: &str, pcm: &[i16]) -> Option<Vec<u8>> {
    let name = track.as_bytes();
    let len = u8::try_from(name.len()).ok().filter(|&n| n > 0)?;
    let mut out = Vec::with_capacity(1 + name.len() + pcm.len() * 2);
    out.push(len);
    out.extend_from_slice(name);
    for s in pcm {
        out.extend_from_slice(&s.to_le_bytes());
    }
    Some(out)
}

/// `input_audio_buffer.commit` of `track`.
pub fn commit(track: &str) -> Value {
    json!({"type": "input_audio_buffer.commit", "aigw_track": track})
}

/// A server event, as far as the bridge cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent {
    /// The session was created or updated.
    Session,
    /// `track` started speaking.
    SpeechStarted {
        /// The track.
        track: String,
    },
    /// `track`'s utterance was cut into an item.
    Committed {
        /// The track.
        track: String,
    },
    /// An utterance's final text.
    Completed {
        /// The track.
        track: String,
        /// The text.
        text: String,
    },
    /// An utterance could not be transcribed.
    Failed {
        /// The track.
        track: String,
        /// Why.
        message: String,
    },
    /// The server refused something the bridge sent.
    Error {
        /// The error's code.
        code: String,
        /// Its message.
        message: String,
    },
    /// Anything else (deltas, speaker turns, …).
    Other,
}

impl ServerEvent {
    /// Reads a server event's JSON.
    pub fn parse(v: &Value) -> Self {
        let track = || v["aigw_track"].as_str().unwrap_or_default().to_string();
        let text = |key: &str| v[key].as_str().unwrap_or_default().to_string();
        match v["type"].as_str().unwrap_or_default() {
            "transcription_session.created" | "transcription_session.updated" => Self::Session,
            "input_audio_buffer.speech_started" => Self::SpeechStarted { track: track() },
            "input_audio_buffer.committed" => Self::Committed { track: track() },
            "conversation.item.input_audio_transcription.completed" => Self::Completed {
                track: track(),
                text: text("transcript"),
            },
            "conversation.item.input_audio_transcription.failed" => Self::Failed {
                track: track(),
                message: v["error"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            },
            "error" => Self::Error {
                code: v["error"]["code"].as_str().unwrap_or_default().to_string(),
                message: v["error"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            },
            _ => Self::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_the_track_then_little_endian_pcm() {
        let f = frame("42", &[1, -2, 0x1234]).unwrap();
        assert_eq!(f, [2, b'4', b'2', 1, 0, 0xfe, 0xff, 0x34, 0x12]);
        assert!(frame("", &[1]).is_none());
        assert!(frame(&"x".repeat(256), &[1]).is_none());
        assert_eq!(frame(&"x".repeat(255), &[]).unwrap().len(), 256);
    }

    #[test]
    fn events() {
        let e = |v: Value| ServerEvent::parse(&v);
        assert_eq!(
            e(
                json!({"type": "conversation.item.input_audio_transcription.completed",
                "aigw_track": "7", "transcript": " Hello.", "speaker": "7"})
            ),
            ServerEvent::Completed {
                track: "7".into(),
                text: " Hello.".into()
            }
        );
        assert_eq!(
            e(json!({"type": "input_audio_buffer.speech_started", "aigw_track": "7"})),
            ServerEvent::SpeechStarted { track: "7".into() }
        );
        assert_eq!(
            e(json!({"type": "error", "error": {"code": "x", "message": "y"}})),
            ServerEvent::Error {
                code: "x".into(),
                message: "y".into()
            }
        );
        assert_eq!(
            e(json!({"type": "conversation.item.input_audio_transcription.delta"})),
            ServerEvent::Other
        );
    }
}
