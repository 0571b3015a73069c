//! The wire: OpenAI Realtime transcription-session events in and out, as JSON.
//!
//! Client events are read from `serde_json::Value` so that a bad field is an `error` event
//! naming it rather than a dropped connection. Server events are built here, one function
//! per shape; ids are `event_…` and `item_…` like OpenAI's.

use serde_json::{Value, json};

use super::input::InputFormat;
use super::vad::VadConfig;

/// A client event's failure, sent back as an `error` event.
#[derive(Debug, Clone, PartialEq)]
pub struct EventError {
    /// OpenAI's `code`.
    pub code: &'static str,
    /// What is wrong.
    pub message: String,
    /// The field at fault.
    pub param: Option<String>,
}

impl EventError {
    /// An error with `code`, `message` and `param`.
    pub fn new(code: &'static str, message: impl Into<String>, param: Option<&str>) -> Self {
        Self {
            code,
            message: message.into(),
            param: param.map(str::to_owned),
        }
    }
}

/// A fresh id with `prefix`.
pub fn new_id(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..20]
    )
}

/// The `error` event, OpenAI's shape; `client_event_id` names the event that failed.
pub fn error_event(err: &EventError, client_event_id: Option<&str>) -> Value {
    json!({
        "type": "error",
        "event_id": new_id("event"),
        "error": {
            "type": "invalid_request_error",
            "code": err.code,
            "message": err.message,
            "param": err.param,
            "event_id": client_event_id,
        },
    })
}

/// A server event of `kind` with `fields`, an event id and, for a named track, `aigw_track`.
pub fn event(kind: &str, track: Option<&str>, fields: Value) -> Value {
    let mut v = json!({"type": kind, "event_id": new_id("event")});
    if let (Some(obj), Value::Object(extra)) = (v.as_object_mut(), fields) {
        obj.extend(extra);
        if let Some(track) = track {
            obj.insert("aigw_track".into(), json!(track));
        }
    }
    v
}

/// Diarisation settings as the session holds them (validated when the engine starts).
pub type DiarizationSettings = serde_json::Map<String, Value>;

/// The session's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionConfig {
    /// The session id.
    pub id: String,
    /// The transcription model's alias (`None`: the server's local default).
    pub model: Option<String>,
    /// Spoken language (ISO-639-1).
    pub language: Option<String>,
    /// A prompt for the decoder.
    pub prompt: Option<String>,
    /// `server_vad`, or `None` for manual commits.
    pub vad: Option<VadConfig>,
    /// The incoming audio's format.
    pub input: InputFormat,
    /// Binary frames begin with a track header (`u8` length, then the UTF-8 name).
    pub binary_track_header: bool,
    /// Speaker diarisation, when enabled.
    pub diarization: Option<DiarizationSettings>,
}

impl SessionConfig {
    /// The defaults of a new session: server VAD, 24 kHz mono PCM16.
    pub fn new() -> Self {
        Self {
            id: new_id("sess"),
            model: None,
            language: None,
            prompt: None,
            vad: Some(VadConfig::default()),
            input: InputFormat::default(),
            binary_track_header: false,
            diarization: None,
        }
    }

    /// The session as `…created` and `…updated` show it: both the beta transcription-session
    /// fields and the GA `audio.input` ones, plus the `aigw_` extensions.
    pub fn to_json(&self) -> Value {
        let transcription = json!({
            "model": self.model,
            "language": self.language,
            "prompt": self.prompt,
        });
        let turn_detection = self.vad.map(|v| {
            json!({
                "type": "server_vad",
                "threshold": v.threshold,
                "prefix_padding_ms": v.prefix_padding_ms,
                "silence_duration_ms": v.silence_duration_ms,
            })
        });
        json!({
            "id": self.id,
            "object": "realtime.transcription_session",
            "type": "transcription",
            "input_audio_format": "pcm16",
            "input_audio_transcription": transcription,
            "turn_detection": turn_detection,
            "input_audio_noise_reduction": null,
            "include": null,
            "audio": {"input": {
                "format": {"type": "audio/pcm", "rate": self.input.rate},
                "transcription": transcription,
                "turn_detection": turn_detection,
                "noise_reduction": null,
            }},
            "aigw_input": {"sample_rate": self.input.rate, "channels": self.input.channels},
            "aigw_binary_track_header": self.binary_track_header,
            "aigw_diarization": self.diarization,
        })
    }

    /// Applies the `session` object of `session.update` or `transcription_session.update`;
    /// on error the session is left as it was.
    pub fn update(&mut self, session: &Value) -> Result<(), EventError> {
        let obj = session.as_object().ok_or_else(|| {
            EventError::new(
                "invalid_value",
                "'session' must be an object.",
                Some("session"),
            )
        })?;
        let mut next = self.clone();
        if let Some(format) = obj.get("input_audio_format") {
            match format.as_str() {
                Some("pcm16") => {}
                _ => return Err(unsupported_format("session.input_audio_format")),
            }
        }
        let input = obj.get("audio").and_then(|a| a.get("input"));
        if let Some(format) = input.and_then(|i| i.get("format")).filter(|f| !f.is_null()) {
            let kind = format
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("audio/pcm");
            if kind != "audio/pcm" {
                return Err(unsupported_format("session.audio.input.format.type"));
            }
            if let Some(rate) = format.get("rate") {
                next.input.rate = rate_of(rate, "session.audio.input.format.rate")?;
            }
        }
        let transcription = obj
            .get("input_audio_transcription")
            .or_else(|| input.and_then(|i| i.get("transcription")));
        if let Some(t) = transcription.filter(|t| !t.is_null()) {
            next.model = opt_string(t, "model", "session.input_audio_transcription.model")?;
            next.language =
                opt_string(t, "language", "session.input_audio_transcription.language")?;
            next.prompt = opt_string(t, "prompt", "session.input_audio_transcription.prompt")?;
        }
        let turn = obj
            .get("turn_detection")
            .or_else(|| input.and_then(|i| i.get("turn_detection")));
        if let Some(turn) = turn {
            next.vad = vad_of(turn)?;
        }
        if let Some(ext) = obj.get("aigw_input") {
            if let Some(rate) = ext.get("sample_rate") {
                next.input.rate = rate_of(rate, "session.aigw_input.sample_rate")?;
            }
            if let Some(ch) = ext.get("channels") {
                next.input.channels = match ch.as_u64() {
                    Some(c @ (1 | 2)) => c as u16,
                    _ => {
                        return Err(EventError::new(
                            "invalid_value",
                            "'channels' must be 1 or 2.",
                            Some("session.aigw_input.channels"),
                        ));
                    }
                };
            }
        }
        if let Some(flag) = obj.get("aigw_binary_track_header") {
            next.binary_track_header = flag.as_bool().ok_or_else(|| {
                EventError::new(
                    "invalid_type",
                    "'aigw_binary_track_header' must be a boolean.",
                    Some("session.aigw_binary_track_header"),
                )
            })?;
        }
        if let Some(d) = obj.get("aigw_diarization") {
            next.diarization = match d {
                Value::Null => None,
                Value::Object(m) => {
                    let mut m = m.clone();
                    let enabled = m.remove("enabled").map_or(Some(true), |e| e.as_bool());
                    match enabled {
                        Some(true) => Some(m),
                        Some(false) => None,
                        None => {
                            return Err(EventError::new(
                                "invalid_type",
                                "'enabled' must be a boolean.",
                                Some("session.aigw_diarization.enabled"),
                            ));
                        }
                    }
                }
                _ => {
                    return Err(EventError::new(
                        "invalid_type",
                        "'aigw_diarization' must be an object or null.",
                        Some("session.aigw_diarization"),
                    ));
                }
            };
        }
        *self = next;
        Ok(())
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self::new()
    }
}

fn unsupported_format(param: &str) -> EventError {
    EventError::new(
        "invalid_value",
        "Only PCM16 audio ('pcm16', 'audio/pcm') is supported by this server.",
        Some(param),
    )
}

fn rate_of(v: &Value, param: &str) -> Result<u32, EventError> {
    match v.as_u64() {
        Some(r @ (16_000 | 24_000 | 48_000)) => Ok(r as u32),
        _ => Err(EventError::new(
            "invalid_value",
            "The sample rate must be 16000, 24000 or 48000.",
            Some(param),
        )),
    }
}

fn opt_string(obj: &Value, key: &str, param: &str) -> Result<Option<String>, EventError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.trim().to_owned())),
        Some(_) => Err(EventError::new(
            "invalid_type",
            format!("'{key}' must be a string."),
            Some(param),
        )),
    }
}

fn vad_of(turn: &Value) -> Result<Option<VadConfig>, EventError> {
    let param = "session.turn_detection";
    let Some(obj) = turn.as_object() else {
        return if turn.is_null() {
            Ok(None)
        } else {
            Err(EventError::new(
                "invalid_type",
                "'turn_detection' must be an object or null.",
                Some(param),
            ))
        };
    };
    match obj
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("server_vad")
    {
        // Semantic VAD has no local model: the energy detector stands in for it.
        "server_vad" | "semantic_vad" => {}
        other => {
            return Err(EventError::new(
                "invalid_value",
                format!("Unknown turn detection '{other}': use server_vad or null."),
                Some("session.turn_detection.type"),
            ));
        }
    }
    let mut vad = VadConfig::default();
    if let Some(t) = obj.get("threshold").filter(|t| !t.is_null()) {
        vad.threshold = t
            .as_f64()
            .filter(|t| (0.0..=1.0).contains(t))
            .ok_or_else(|| {
                EventError::new(
                    "invalid_value",
                    "'threshold' must be a number from 0 to 1.",
                    Some("session.turn_detection.threshold"),
                )
            })? as f32;
    }
    let ms = |key: &str, max: u64| -> Result<Option<u32>, EventError> {
        match obj.get(key).filter(|v| !v.is_null()) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .filter(|&n| n <= max)
                .map(|n| Some(n as u32))
                .ok_or_else(|| {
                    EventError::new(
                        "invalid_value",
                        format!("'{key}' must be a whole number of milliseconds up to {max}."),
                        Some(&format!("session.turn_detection.{key}")),
                    )
                }),
        }
    };
    if let Some(p) = ms("prefix_padding_ms", 2_000)? {
        vad.prefix_padding_ms = p;
    }
    if let Some(s) = ms("silence_duration_ms", 10_000)? {
        vad.silence_duration_ms = s.max(20);
    }
    Ok(Some(vad))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beta_and_ga_updates() {
        let mut s = SessionConfig::new();
        s.update(&json!({
            "input_audio_format": "pcm16",
            "input_audio_transcription": {"model": "whisper", "language": "en"},
            "turn_detection": {"type": "server_vad", "threshold": 0.3, "silence_duration_ms": 300},
        }))
        .unwrap();
        assert_eq!(s.model.as_deref(), Some("whisper"));
        assert_eq!(s.vad.unwrap().threshold, 0.3);
        assert_eq!(s.vad.unwrap().silence_duration_ms, 300);
        s.update(&json!({"type": "transcription", "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": 24000},
            "turn_detection": null,
        }}}))
        .unwrap();
        assert_eq!(s.vad, None);
        s.update(&json!({"aigw_input": {"sample_rate": 48000, "channels": 2}}))
            .unwrap();
        assert_eq!(
            s.input,
            InputFormat {
                rate: 48_000,
                channels: 2
            }
        );
        let before = s.clone();
        let err = s
            .update(&json!({"input_audio_format": "g711_ulaw"}))
            .unwrap_err();
        assert_eq!(err.param.as_deref(), Some("session.input_audio_format"));
        let err = s
            .update(&json!({"aigw_input": {"sample_rate": 44100}, "turn_detection": {}}))
            .unwrap_err();
        assert_eq!(err.param.as_deref(), Some("session.aigw_input.sample_rate"));
        assert_eq!(s, before, "a failed update changes nothing");
        let shown = s.to_json();
        assert_eq!(shown["turn_detection"], Value::Null);
        assert_eq!(shown["audio"]["input"]["format"]["rate"], 48_000);
    }

    #[test]
    fn error_event_shape() {
        let e = error_event(&EventError::new("invalid_json", "bad", None), Some("evt_1"));
        assert_eq!(e["type"], "error");
        assert_eq!(e["error"]["type"], "invalid_request_error");
        assert_eq!(e["error"]["code"], "invalid_json");
        assert_eq!(e["error"]["event_id"], "evt_1");
        assert!(e["error"]["param"].is_null());
    }
}
