//! A whisper model served in-process (the `audio` crate): `/v1/audio/transcriptions` and,
//! for multilingual models, `/v1/audio/translations`, in OpenAI's response formats.
//!
//! A request is admitted only while fewer than `workers + queue` are in hand (else 429, like
//! a full chat engine), so decoded audio never piles up in memory. The upload is decoded and
//! resampled on a blocking thread, then transcribed on the model's own worker pool; a client
//! that hangs up aborts both. What the file or the form gets wrong is a 400 naming the field;
//! audio longer than `local.max_audio_secs` is a 413. With a diarisation model configured,
//! `diarized_json` labels each segment with the speaker the diarisation pipeline (run on the
//! same audio, alongside) heard most during it.

use std::sync::Arc;

use aigw_audio::decode::{DecodeError, decode};
use aigw_audio::diarize::{DiarizationConfig, DiarizationModels};
use aigw_audio::whisper::{TranscribeOptions, WhisperError, WhisperModel};
use aigw_models::openai::ErrorResponse;
use async_trait::async_trait;
use tokio::sync::Semaphore;

use super::{AudioRequest, AudioResponse, AudioTask, CallContext, Provider, ProviderError};

mod render;

use render::render;

/// A local speech-to-text model.
pub struct LocalTranscriptionProvider {
    name: String,
    model: Arc<WhisperModel>,
    admission: Arc<Semaphore>,
    max_audio_secs: f64,
    /// The diarisation models and their compute permits, for `diarized_json`.
    diarizer: Option<(Arc<DiarizationModels>, Arc<Semaphore>)>,
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
            diarizer: None,
        }
    }

    /// Also answers `diarized_json`, with `models` (their diarisations taking one of
    /// `compute`'s permits each).
    pub fn with_diarization(
        mut self,
        models: Arc<DiarizationModels>,
        compute: Arc<Semaphore>,
    ) -> Self {
        self.diarizer = Some((models, compute));
        self
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
    DiarizedJson,
}

/// The form fields a local model understands; others are ignored, as OpenAI does.
#[derive(Debug)]
struct Form {
    format: Format,
    options: TranscribeOptions,
    segments: bool,
}

/// A 400 about `param`.
pub(crate) fn invalid(param: &str, message: String) -> ProviderError {
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
                    "diarized_json" if req.task == AudioTask::Transcription => Format::DiarizedJson,
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

/// A decoding failure as the client's error: 413 for too long, else 400.
pub(crate) fn decode_error(e: DecodeError) -> ProviderError {
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

    async fn audio(
        &self,
        req: AudioRequest,
        _ctx: &CallContext,
    ) -> Result<AudioResponse, ProviderError> {
        match req.task {
            AudioTask::Transcription => {}
            AudioTask::Translation if self.model.is_multilingual() => {}
            AudioTask::Translation => {
                return Err(ProviderError::Unsupported(
                    "audio translations (it is an English-only model)",
                ));
            }
            AudioTask::Diarization => return Err(ProviderError::Unsupported("audio diarizations")),
        }
        let form = parse_form(&req)?;
        let diarizer = match (form.format, &self.diarizer) {
            (Format::DiarizedJson, None) => {
                return Err(ProviderError::unsupported_param(
                    "response_format",
                    "'diarized_json' needs a diarisation model configured in [local]; this server has none.",
                ));
            }
            (Format::DiarizedJson, Some(d)) => Some(d),
            _ => None,
        };
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
        let (transcript, turns) = match diarizer {
            None => (
                self.model
                    .transcribe(audio.samples, form.options.clone())
                    .await,
                Ok(Vec::new()),
            ),
            Some((models, compute)) => {
                let samples = audio.samples.clone();
                let diarized = super::local_diarize::diarize(
                    models,
                    compute,
                    DiarizationConfig::default(),
                    samples,
                );
                tokio::join!(
                    self.model.transcribe(audio.samples, form.options.clone()),
                    diarized
                )
            }
        };
        let (transcript, turns) = (transcript.map_err(whisper_error)?, turns?);
        tracing::debug!(
            model = %req.model,
            audio_secs = transcript.duration,
            elapsed_ms = transcript.elapsed.as_millis() as u64,
            queued_ms = transcript.queued.as_millis() as u64,
            "local transcription"
        );
        render(&form, req.task, &transcript, &turns)
    }

    async fn health(&self) -> Result<(), ProviderError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
