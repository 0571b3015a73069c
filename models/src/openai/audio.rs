//! `POST /v1/audio/transcriptions` and `/v1/audio/translations` (multipart forms).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Extra;

/// The multipart form of a transcription or translation request (documentation schema).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TranscriptionForm {
    /// The audio file (wav, mp3, flac, ogg, …).
    #[schema(value_type = String, format = Binary)]
    pub file: Vec<u8>,
    /// Model (alias) to use.
    pub model: String,
    /// ISO-639-1 language of the audio (transcriptions only).
    #[serde(default)]
    pub language: Option<String>,
    /// Text to guide the style or continue a previous segment.
    #[serde(default)]
    pub prompt: Option<String>,
    /// `json`, `text`, `srt`, `verbose_json`, `vtt` or `diarized_json`.
    #[serde(default)]
    pub response_format: Option<String>,
    /// Sampling temperature, 0 to 1.
    #[serde(default)]
    pub temperature: Option<f64>,
    /// `segment` and/or `word` (with `verbose_json`).
    #[serde(default, rename = "timestamp_granularities[]")]
    pub timestamp_granularities: Option<Vec<String>>,
}

/// The `json` response of a transcription: the text, plus whatever the upstream adds
/// (`segments`, `words`, `language`, `duration` in `verbose_json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TranscriptionResponse {
    /// The transcribed (or translated) text.
    pub text: String,
    /// Fields of richer formats (`verbose_json`), kept verbatim.
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}
