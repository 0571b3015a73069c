//! A whisper model served in-process (the `audio` crate): `/v1/audio/transcriptions` and,
//! for multilingual models, `/v1/audio/translations`, in OpenAI's response formats.
//!
//! A request is admitted only while fewer than `workers + queue` are in hand (else 429, like
//! a full chat engine), so decoded audio never piles up in memory. The upload is decoded and
//! resampled on a blocking thread, then transcribed on the model's own worker pool; a client
//! that hangs up aborts both. What the file or the form gets wrong is a 400 naming the field;
//! audio longer than `local.max_audio_secs` is a 413.

use std::sync::Arc;

use aigw_audio::decode::{DecodeError, decode};
use aigw_audio::whisper::{TranscribeOptions, Transcript, WhisperError, WhisperModel};
use aigw_models::openai::{
    ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse, ErrorResponse,
    TranscriptionResponse, TranscriptionSegment, TranscriptionUsage, TranscriptionVerbose,
    TranscriptionWord,
};
use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::Semaphore;

use super::{
    AudioRequest, AudioResponse, AudioTask, CallContext, ChunkStream, Provider, ProviderError,
};

/// A local speech-to-text model.
pub struct LocalTranscriptionProvider {
    name: String,
    model: Arc<WhisperModel>,
    admission: Arc<Semaphore>,
    max_audio_secs: f64,
}

impl LocalTranscriptionProvider {
    /// Serves `model` under `name`, admitting at most `max_in_hand` requests at once (decoding,
    /// waiting or transcribing) and audio up to `max_audio_secs` long.
    pub fn new(
        name: impl Into<String>,
        model: Arc<WhisperModel>,
        max_in_hand: usize,
        max_audio_secs: f64,
    ) -> Self {
        Self {
            name: name.into(),
            model,
            admission: Arc::new(Semaphore::new(max_in_hand.max(1))),
            max_audio_secs,
        }
    }
}

/// `response_format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Text,
    Srt,
    Vtt,
    VerboseJson,
}

/// The form fields a local model understands; others are ignored, as OpenAI does.
#[derive(Debug)]
struct Form {
    format: Format,
    options: TranscribeOptions,
    segments: bool,
}

fn invalid(param: &str, message: String) -> ProviderError {
    ProviderError::Rejected {
        message,
        param: Some(param.into()),
        code: "invalid_value",
    }
}

fn parse_form(req: &AudioRequest) -> Result<Form, ProviderError> {
    let mut format = Format::Json;
    let mut options = TranscribeOptions {
        translate: req.task == AudioTask::Translation,
        ..TranscribeOptions::default()
    };
    let mut granularities = Vec::new();
    for (name, value) in &req.fields {
        let value = value.trim();
        match name.as_str() {
            "response_format" => {
                format = match value {
                    "json" | "" => Format::Json,
                    "text" => Format::Text,
                    "srt" => Format::Srt,
                    "vtt" => Format::Vtt,
                    "verbose_json" => Format::VerboseJson,
                    "diarized_json" => {
                        return Err(ProviderError::unsupported_param(
                            "response_format",
                            "'diarized_json' needs a diarising model; this one only transcribes.",
                        ));
                    }
                    other => {
                        return Err(invalid(
                            "response_format",
                            format!(
                                "Invalid value '{other}' for 'response_format': use json, text, srt, verbose_json or vtt."
                            ),
                        ));
                    }
                }
            }
            // Translations are always into English: OpenAI takes no language for them.
            "language" if req.task == AudioTask::Transcription && !value.is_empty() => {
                options.language = Some(value.to_ascii_lowercase());
            }
            "prompt" if !value.is_empty() => options.prompt = Some(value.to_owned()),
            "temperature" if !value.is_empty() => {
                options.temperature = value
                    .parse::<f32>()
                    .ok()
                    .filter(|t| (0.0..=1.0).contains(t))
                    .ok_or_else(|| {
                        invalid(
                            "temperature",
                            format!("Invalid 'temperature' {value:?}: a number from 0 to 1."),
                        )
                    })?;
            }
            "timestamp_granularities[]" | "timestamp_granularities" => {
                for g in value.split(',').map(str::trim) {
                    match g {
                        "segment" | "word" => granularities.push(g),
                        other => {
                            return Err(invalid(
                                "timestamp_granularities",
                                format!(
                                    "Invalid timestamp granularity '{other}': use segment or word."
                                ),
                            ));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    if !granularities.is_empty() && format != Format::VerboseJson {
        return Err(invalid(
            "timestamp_granularities",
            "'timestamp_granularities' needs response_format 'verbose_json'.".into(),
        ));
    }
    options.words = granularities.contains(&"word");
    Ok(Form {
        format,
        options,
        segments: granularities.is_empty() || granularities.contains(&"segment"),
    })
}

fn decode_error(e: DecodeError) -> ProviderError {
    match e {
        DecodeError::TooLong { limit_secs } => ProviderError::Status {
            status: http::StatusCode::PAYLOAD_TOO_LARGE,
            body: Some(ErrorResponse::new(
                format!("The audio is longer than this server's limit of {limit_secs} seconds."),
                "invalid_request_error",
                Some("file".into()),
                Some("audio_too_long".into()),
            )),
            retry_after: None,
        },
        DecodeError::Empty
        | DecodeError::Unsupported(_)
        | DecodeError::Corrupt(_)
        | DecodeError::NoAudio => invalid("file", format!("Invalid audio file: {e}.")),
    }
}

fn whisper_error(e: WhisperError) -> ProviderError {
    match e {
        WhisperError::Overloaded { .. } => ProviderError::Overloaded(e.to_string()),
        WhisperError::Unsupported { param, message } => {
            ProviderError::unsupported_param(param, message)
        }
        WhisperError::NoAudio => invalid("file", "The audio file contains no audio.".into()),
        WhisperError::Load { .. }
        | WhisperError::Failed(_)
        | WhisperError::Cancelled
        | WhisperError::Stopped => ProviderError::Engine(e.to_string()),
    }
}

#[async_trait]
impl Provider for LocalTranscriptionProvider {
    fn name(&self) -> &str {
        &self.name
    }

    async fn chat(
        &self,
        _req: ChatCompletionRequest,
        _ctx: &CallContext,
    ) -> Result<ChatCompletionResponse, ProviderError> {
        Err(ProviderError::Unsupported("chat completions"))
    }

    async fn chat_stream(
        &self,
        _req: ChatCompletionRequest,
        _ctx: &CallContext,
    ) -> Result<ChunkStream<ChatCompletionChunk>, ProviderError> {
        Err(ProviderError::Unsupported("chat completions"))
    }

    async fn audio(
        &self,
        req: AudioRequest,
        _ctx: &CallContext,
    ) -> Result<AudioResponse, ProviderError> {
        if req.task == AudioTask::Translation && !self.model.is_multilingual() {
            return Err(ProviderError::Unsupported(
                "audio translations (it is an English-only model)",
            ));
        }
        let form = parse_form(&req)?;
        self.model.check(&form.options).map_err(whisper_error)?;
        let _permit = Arc::clone(&self.admission)
            .try_acquire_owned()
            .map_err(|_| {
                ProviderError::Overloaded(format!(
                    "The transcription model `{}` is busy; retry shortly.",
                    req.model
                ))
            })?;
        let (bytes, name, limit) = (req.file, req.file_name, self.max_audio_secs);
        // Dropping this future (the client hung up) leaves the decode to finish alone, once.
        let audio = tokio::task::spawn_blocking(move || decode(bytes, Some(&name), limit))
            .await
            .map_err(|e| ProviderError::Engine(e.to_string()))?
            .map_err(decode_error)?;
        let transcript = self
            .model
            .transcribe(audio.samples, form.options.clone())
            .await
            .map_err(whisper_error)?;
        tracing::debug!(
            model = %req.model,
            audio_secs = transcript.duration,
            elapsed_ms = transcript.elapsed.as_millis() as u64,
            queued_ms = transcript.queued.as_millis() as u64,
            "local transcription"
        );
        render(&form, req.task, &transcript)
    }

    async fn health(&self) -> Result<(), ProviderError> {
        Ok(())
    }
}

/// The answer in the requested format.
fn render(form: &Form, task: AudioTask, t: &Transcript) -> Result<AudioResponse, ProviderError> {
    let usage = TranscriptionUsage::duration(t.duration.ceil());
    let (content_type, body) = match form.format {
        Format::Json => {
            let mut extra = aigw_models::openai::Extra::new();
            extra.insert(
                "usage".into(),
                serde_json::to_value(&usage).unwrap_or_default(),
            );
            let body = TranscriptionResponse {
                text: t.text.clone(),
                extra,
            };
            ("application/json", to_json(&body)?)
        }
        Format::VerboseJson => {
            let body = TranscriptionVerbose {
                task: match task {
                    AudioTask::Transcription => "transcribe".into(),
                    AudioTask::Translation => "translate".into(),
                },
                language: if task == AudioTask::Translation {
                    "english".into()
                } else {
                    t.language_name.clone()
                },
                duration: round2(t.duration),
                text: t.text.clone(),
                segments: form.segments.then(|| segments(t)),
                words: form.options.words.then(|| words(t)),
                usage: Some(usage),
            };
            ("application/json", to_json(&body)?)
        }
        Format::Text => ("text/plain; charset=utf-8", format!("{}\n", t.text).into()),
        Format::Srt => ("text/plain; charset=utf-8", srt(t).into()),
        Format::Vtt => ("text/plain; charset=utf-8", vtt(t).into()),
    };
    Ok(AudioResponse {
        content_type: content_type.into(),
        body,
        audio_secs: Some(t.duration),
    })
}

fn to_json(value: &impl serde::Serialize) -> Result<Bytes, ProviderError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| ProviderError::Engine(e.to_string()))
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn segments(t: &Transcript) -> Vec<TranscriptionSegment> {
    t.segments
        .iter()
        .map(|s| TranscriptionSegment {
            id: s.id as u32,
            seek: (s.start * 100.0).round() as u32,
            start: round2(s.start),
            end: round2(s.end),
            text: s.text.clone(),
            tokens: s.tokens.clone(),
            temperature: s.temperature,
            avg_logprob: s.avg_logprob,
            compression_ratio: s.compression_ratio,
            no_speech_prob: s.no_speech_prob,
        })
        .collect()
}

fn words(t: &Transcript) -> Vec<TranscriptionWord> {
    t.words
        .iter()
        .map(|w| TranscriptionWord {
            word: w.word.clone(),
            start: round2(w.start),
            end: round2(w.end),
        })
        .collect()
}

/// `HH:MM:SS{sep}mmm`.
fn timestamp(secs: f64, sep: char) -> String {
    let ms = (secs.max(0.0) * 1000.0).round() as u64;
    let (h, m, s, ms) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    format!("{h:02}:{m:02}:{s:02}{sep}{ms:03}")
}

/// SubRip: numbered cues, `,` before the milliseconds, a blank line after each.
fn srt(t: &Transcript) -> String {
    let mut out = String::new();
    for (i, s) in t.segments.iter().enumerate() {
        out.push_str(&format!(
            "{}\n{} --> {}\n{}\n\n",
            i + 1,
            timestamp(s.start, ','),
            timestamp(s.end, ','),
            cue_text(&s.text)
        ));
    }
    out
}

/// WebVTT: the header, then cues with `.` before the milliseconds.
fn vtt(t: &Transcript) -> String {
    let mut out = String::from("WEBVTT\n\n");
    for s in &t.segments {
        out.push_str(&format!(
            "{} --> {}\n{}\n\n",
            timestamp(s.start, '.'),
            timestamp(s.end, '.'),
            cue_text(&s.text)
        ));
    }
    out
}

/// A cue's text: trimmed, and never containing the `-->` that would end it.
fn cue_text(text: &str) -> String {
    text.trim().replace("-->", "->")
}

#[cfg(test)]
mod tests {
    use super::*;
    use aigw_audio::whisper::{Segment, Word};
    use std::time::Duration;

    fn transcript() -> Transcript {
        let seg = |id, start, end, text: &str| Segment {
            id,
            start,
            end,
            text: text.into(),
            tokens: vec![1, 2],
            avg_logprob: -0.25,
            compression_ratio: 1.1,
            no_speech_prob: 0.01,
            temperature: 0.0,
        };
        Transcript {
            text: "Hello there. General Kenobi --> now.".into(),
            language: "en".into(),
            language_name: "english".into(),
            duration: 3723.456,
            segments: vec![
                seg(0, 0.0, 1.5, " Hello there."),
                seg(1, 3722.0, 3723.45, " General Kenobi --> now."),
            ],
            words: vec![Word {
                word: "Hello".into(),
                start: 0.004,
                end: 0.5,
            }],
            queued: Duration::ZERO,
            elapsed: Duration::ZERO,
        }
    }

    fn request(fields: &[(&str, &str)]) -> AudioRequest {
        AudioRequest {
            task: AudioTask::Transcription,
            model: "whisper".into(),
            file_name: "a.wav".into(),
            file_content_type: None,
            file: Bytes::new(),
            fields: fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    fn body(form: &[(&str, &str)]) -> String {
        let form = parse_form(&request(form)).unwrap();
        let resp = render(&form, AudioTask::Transcription, &transcript()).unwrap();
        String::from_utf8(resp.body.to_vec()).unwrap()
    }

    #[test]
    fn subtitles_follow_srt_and_webvtt() {
        assert_eq!(
            body(&[("response_format", "srt")]),
            "1\n00:00:00,000 --> 00:00:01,500\nHello there.\n\n\
             2\n01:02:02,000 --> 01:02:03,450\nGeneral Kenobi -> now.\n\n"
        );
        assert_eq!(
            body(&[("response_format", "vtt")]),
            "WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nHello there.\n\n\
             01:02:02.000 --> 01:02:03.450\nGeneral Kenobi -> now.\n\n"
        );
        assert_eq!(
            body(&[("response_format", "text")]),
            "Hello there. General Kenobi --> now.\n"
        );
    }

    #[test]
    fn json_shapes_are_openai_s() {
        let json: serde_json::Value = serde_json::from_str(&body(&[])).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"text": "Hello there. General Kenobi --> now.",
                               "usage": {"type": "duration", "seconds": 3724.0}})
        );
        let verbose: serde_json::Value =
            serde_json::from_str(&body(&[("response_format", "verbose_json")])).unwrap();
        assert_eq!(verbose["task"], "transcribe");
        assert_eq!(verbose["language"], "english");
        assert_eq!(verbose["duration"], 3723.46);
        assert_eq!(verbose["segments"][1]["seek"], 372_200);
        assert_eq!(verbose["segments"][0]["text"], " Hello there.");
        assert!(verbose.get("words").is_none());
        let both: serde_json::Value = serde_json::from_str(&body(&[
            ("response_format", "verbose_json"),
            ("timestamp_granularities[]", "word"),
            ("timestamp_granularities[]", "segment"),
        ]))
        .unwrap();
        assert_eq!(
            both["words"][0],
            serde_json::json!({"word": "Hello", "start": 0.0, "end": 0.5})
        );
        assert_eq!(both["segments"].as_array().unwrap().len(), 2);
        let words_only: serde_json::Value = serde_json::from_str(&body(&[
            ("response_format", "verbose_json"),
            ("timestamp_granularities[]", "word"),
        ]))
        .unwrap();
        assert!(words_only.get("segments").is_none() && words_only["words"].is_array());
    }

    #[test]
    fn bad_fields_are_named() {
        let param = |fields: &[(&str, &str)]| match parse_form(&request(fields)).unwrap_err() {
            ProviderError::Rejected { param, .. } => param.unwrap(),
            other => panic!("{other:?}"),
        };
        assert_eq!(param(&[("response_format", "xml")]), "response_format");
        assert_eq!(
            param(&[("response_format", "diarized_json")]),
            "response_format"
        );
        assert_eq!(param(&[("temperature", "hot")]), "temperature");
        assert_eq!(param(&[("temperature", "1.5")]), "temperature");
        assert_eq!(
            param(&[("timestamp_granularities[]", "word")]),
            "timestamp_granularities"
        );
        assert_eq!(
            param(&[
                ("response_format", "verbose_json"),
                ("timestamp_granularities[]", "char")
            ]),
            "timestamp_granularities"
        );
        let form = parse_form(&request(&[
            ("language", "EN"),
            ("prompt", "Kenobi"),
            ("temperature", "0.4"),
            ("stream", "false"),
        ]))
        .unwrap();
        assert_eq!(form.options.language.as_deref(), Some("en"));
        assert_eq!(form.options.prompt.as_deref(), Some("Kenobi"));
        assert!((form.options.temperature - 0.4).abs() < 1e-6);
    }

    #[test]
    fn too_long_audio_is_a_413_and_bad_audio_a_400() {
        match decode_error(DecodeError::TooLong { limit_secs: 5.0 }) {
            ProviderError::Status { status, body, .. } => {
                assert_eq!(status, http::StatusCode::PAYLOAD_TOO_LARGE);
                assert_eq!(body.unwrap().error.code.as_deref(), Some("audio_too_long"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decode_error(DecodeError::Corrupt("x".into())),
            ProviderError::Rejected {
                code: "invalid_value",
                ..
            }
        ));
    }
}
