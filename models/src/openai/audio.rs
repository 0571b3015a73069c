//! `POST /v1/audio/transcriptions` and `/v1/audio/translations` (multipart forms), and our
//! extension `POST /v1/audio/diarizations`.

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

/// The `usage` of a transcription billed by audio duration (whisper).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TranscriptionUsage {
    /// Always `duration`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Seconds of input audio.
    pub seconds: f64,
}

impl TranscriptionUsage {
    /// The usage of `seconds` of audio.
    pub fn duration(seconds: f64) -> Self {
        Self {
            kind: "duration".into(),
            seconds,
        }
    }
}

/// One segment of a `verbose_json` transcript.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TranscriptionSegment {
    /// Index of the segment.
    pub id: u32,
    /// Seek offset of the segment (10 ms frames).
    pub seek: u32,
    /// Start time in seconds.
    pub start: f64,
    /// End time in seconds.
    pub end: f64,
    /// Its text.
    pub text: String,
    /// Its text token ids.
    pub tokens: Vec<i32>,
    /// The sampling temperature used.
    pub temperature: f64,
    /// Mean log probability of its tokens (below -1: decoding likely failed).
    pub avg_logprob: f64,
    /// Text length over zlib-compressed length (above 2.4: likely repetitive garbage).
    pub compression_ratio: f64,
    /// Probability that it holds no speech.
    pub no_speech_prob: f64,
}

/// One word of a `verbose_json` transcript (`timestamp_granularities[]=word`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TranscriptionWord {
    /// The word.
    pub word: String,
    /// Start time in seconds.
    pub start: f64,
    /// End time in seconds.
    pub end: f64,
}

/// The `verbose_json` response of a transcription or translation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TranscriptionVerbose {
    /// `transcribe` or `translate`.
    pub task: String,
    /// The language of the audio, in English (`english`).
    pub language: String,
    /// Length of the audio in seconds.
    pub duration: f64,
    /// The whole text.
    pub text: String,
    /// The segments (unless only word timestamps were asked for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segments: Option<Vec<TranscriptionSegment>>,
    /// The words (with `timestamp_granularities[]=word`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub words: Option<Vec<TranscriptionWord>>,
    /// Audio seconds billed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<TranscriptionUsage>,
}

/// A JSON transcription answer: `json` (`text`, `usage`), `verbose_json` or `diarized_json`
/// (documentation schema).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum TranscriptionBody {
    /// `verbose_json`.
    Verbose(TranscriptionVerbose),
    /// `diarized_json`.
    Diarized(TranscriptionDiarized),
    /// `json`.
    Json(TranscriptionResponse),
}

/// The `diarized_json` response of a transcription: the text in segments labelled by speaker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TranscriptionDiarized {
    /// Always `transcribe`.
    pub task: String,
    /// Length of the audio in seconds.
    pub duration: f64,
    /// The whole text.
    pub text: String,
    /// The segments with their speakers.
    pub segments: Vec<TranscriptionDiarizedSegment>,
    /// Audio seconds billed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<TranscriptionUsage>,
}

/// One segment of a `diarized_json` transcript.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TranscriptionDiarizedSegment {
    /// Always `transcript.text.segment`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Its identifier (`seg_0`, `seg_1`, …).
    pub id: String,
    /// Start, seconds.
    pub start: f64,
    /// End, seconds.
    pub end: f64,
    /// Its text.
    pub text: String,
    /// Who said it (`speaker_0`, `speaker_1`, …).
    pub speaker: String,
}

/// The multipart form of a diarisation request (documentation schema). The diarisation
/// settings are optional and default to diart's.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DiarizationForm {
    /// The audio file (wav, mp3, flac, ogg, …).
    #[schema(value_type = String, format = Binary)]
    pub file: Vec<u8>,
    /// Diarisation model (alias); the first one configured when absent.
    #[serde(default)]
    pub model: Option<String>,
    /// `json` (default) or `rttm`.
    #[serde(default)]
    pub response_format: Option<String>,
    /// Seconds between two analysis windows, 0.1–5 (default 0.5).
    #[serde(default)]
    pub step_s: Option<f64>,
    /// Output latency of the streaming pipeline, `step_s`–5 s and at least 0.5 (default 0.5);
    /// longer latencies average more windows.
    #[serde(default)]
    pub latency_s: Option<f64>,
    /// Activity threshold of a speaker, 0–1 (default 0.6).
    #[serde(default)]
    pub tau_active: Option<f64>,
    /// Mean activity over a window from which a speaker's centroid is updated (default 0.3).
    #[serde(default)]
    pub rho_update: Option<f64>,
    /// Cosine distance past which a new speaker starts, 0–2 (default 1.0).
    #[serde(default)]
    pub delta_new: Option<f64>,
    /// Most speakers, 1–100 (default 20).
    #[serde(default)]
    pub max_speakers: Option<u32>,
}

/// The `json` response of a diarisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DiarizationResponse {
    /// Length of the audio in seconds.
    pub duration: f64,
    /// The speakers found, in order of first appearance.
    pub speakers: Vec<String>,
    /// Their turns, ordered by start.
    pub segments: Vec<DiarizationSegment>,
}

/// One speaker turn of a diarisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DiarizationSegment {
    /// `speaker_0`, `speaker_1`, …
    pub speaker: String,
    /// Start, seconds.
    pub start: f64,
    /// End, seconds.
    pub end: f64,
}
