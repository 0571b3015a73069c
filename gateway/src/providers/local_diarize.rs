//! Speaker diarisation served in-process (the `audio` crate): `POST /v1/audio/diarizations`,
//! our extension, answering in JSON or RTTM; also the speaker labels of `diarized_json`
//! transcriptions ([`diarize`]).
//!
//! Admission and limits follow the transcription provider: at most `workers + queue` requests
//! in hand (else 429), `workers` of them computing at once; the upload is decoded on a
//! blocking thread (400 for bad audio, 413 past `local.max_audio_secs`); the streaming
//! pipeline then runs over the whole file on a blocking thread, checking between chunks
//! whether the client is still there.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use aigw_audio::decode::decode;
use aigw_audio::diarize::{DiarizationConfig, DiarizationModels, SpeakerTurn, StreamingDiarizer};
use aigw_models::openai::{DiarizationResponse, DiarizationSegment};
use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::Semaphore;

use super::local_transcribe::{decode_error, invalid};
use super::{AudioRequest, AudioResponse, AudioTask, CallContext, Provider, ProviderError};

/// Audio handed to the pipeline at a time, between checks for a client that went away.
const CHUNK_SAMPLES: usize = 10 * 16_000;

/// A local diarisation model (segmentation + embedding).
pub struct LocalDiarizationProvider {
    name: String,
    models: Arc<DiarizationModels>,
    admission: Arc<Semaphore>,
    compute: Arc<Semaphore>,
    max_audio_secs: f64,
}

impl LocalDiarizationProvider {
    /// Serves `models` under `name`: as many diarisations computing at once as `compute` has
    /// permits (shared with `diarized_json` transcriptions), at most `max_in_hand` requests
    /// admitted at once, audio up to `max_audio_secs` long.
    pub fn new(
        name: impl Into<String>,
        models: Arc<DiarizationModels>,
        compute: Arc<Semaphore>,
        max_in_hand: usize,
        max_audio_secs: f64,
    ) -> Self {
        Self {
            name: name.into(),
            models,
            admission: Arc::new(Semaphore::new(max_in_hand.max(1))),
            compute,
            max_audio_secs,
        }
    }
}

/// `response_format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Rttm,
}

fn parse_form(req: &AudioRequest) -> Result<(Format, DiarizationConfig), ProviderError> {
    let mut format = Format::Json;
    let mut config = DiarizationConfig::default();
    for (name, value) in &req.fields {
        let value = value.trim();
        let number = |name: &str| {
            value.parse::<f64>().map_err(|_| {
                invalid(
                    name,
                    format!("Invalid '{name}' {value:?}: expected a number."),
                )
            })
        };
        match name.as_str() {
            "response_format" => {
                format = match value {
                    "json" | "" => Format::Json,
                    "rttm" => Format::Rttm,
                    other => {
                        return Err(invalid(
                            "response_format",
                            format!(
                                "Invalid value '{other}' for 'response_format': use json or rttm."
                            ),
                        ));
                    }
                }
            }
            _ if value.is_empty() => {}
            "step_s" => config.step_s = number("step_s")?,
            "latency_s" => config.latency_s = number("latency_s")?,
            "tau_active" => config.tau_active = number("tau_active")?,
            "rho_update" => config.rho_update = number("rho_update")?,
            "delta_new" => config.delta_new = number("delta_new")?,
            "max_speakers" => {
                config.max_speakers = value.parse().map_err(|_| {
                    invalid(
                        "max_speakers",
                        format!("Invalid 'max_speakers' {value:?}: expected a whole number."),
                    )
                })?;
            }
            _ => {}
        }
    }
    validate(&config)?;
    Ok((format, config))
}

/// [`DiarizationConfig::validate`] as a 400 naming the setting.
pub(crate) fn validate(config: &DiarizationConfig) -> Result<(), ProviderError> {
    config.validate().map_err(|message| {
        let param = message.split_whitespace().next().unwrap_or("").to_owned();
        invalid(&param, format!("Invalid diarisation setting: {message}."))
    })
}

/// Sets its flag when dropped: the request's future went away (the client hung up).
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The final turns of `samples` (16 kHz mono), computed on a blocking thread once one of
/// `compute`'s permits is free; stops early if the caller's future is dropped.
pub(crate) async fn diarize(
    models: &Arc<DiarizationModels>,
    compute: &Arc<Semaphore>,
    config: DiarizationConfig,
    samples: Vec<f32>,
) -> Result<Vec<SpeakerTurn>, ProviderError> {
    let _permit = Arc::clone(compute)
        .acquire_owned()
        .await
        .map_err(|e| ProviderError::Engine(e.to_string()))?;
    let cancelled = Arc::new(AtomicBool::new(false));
    let _guard = CancelOnDrop(Arc::clone(&cancelled));
    let models = Arc::clone(models);
    tokio::task::spawn_blocking(move || {
        let mut session = StreamingDiarizer::new(models, config);
        let mut turns = Vec::new();
        for chunk in samples.chunks(CHUNK_SAMPLES) {
            if cancelled.load(Ordering::Relaxed) {
                return Ok(Vec::new());
            }
            turns.extend(session.push(chunk)?.into_iter().filter(|t| t.final_));
        }
        turns.extend(session.finish()?);
        turns.sort_by(|a, b| a.start.total_cmp(&b.start).then(a.end.total_cmp(&b.end)));
        Ok(turns)
    })
    .await
    .map_err(|e| ProviderError::Engine(e.to_string()))?
    .map_err(|e: aigw_audio::diarize::ModelError| ProviderError::Engine(e.to_string()))
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The speakers of `turns` in order of first appearance.
fn speakers(turns: &[SpeakerTurn]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for t in turns {
        if !out.contains(&t.speaker) {
            out.push(t.speaker.clone());
        }
    }
    out
}

/// RTTM's file id: the upload's name without extension, spaces replaced.
fn rttm_uri(file_name: &str) -> String {
    let stem = std::path::Path::new(file_name)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("");
    let uri: String = stem
        .chars()
        .map(|c| if c.is_whitespace() { '_' } else { c })
        .collect();
    if uri.is_empty() { "audio".into() } else { uri }
}

fn render(
    format: Format,
    file_name: &str,
    duration: f64,
    turns: &[SpeakerTurn],
) -> Result<AudioResponse, ProviderError> {
    let (content_type, body) = match format {
        Format::Json => {
            let body = DiarizationResponse {
                duration: round3(duration),
                speakers: speakers(turns),
                segments: turns
                    .iter()
                    .map(|t| DiarizationSegment {
                        speaker: t.speaker.clone(),
                        start: round3(t.start),
                        end: round3(t.end),
                    })
                    .collect(),
            };
            let json =
                serde_json::to_vec(&body).map_err(|e| ProviderError::Engine(e.to_string()))?;
            ("application/json", Bytes::from(json))
        }
        Format::Rttm => {
            let uri = rttm_uri(file_name);
            let text: String = turns
                .iter()
                .map(|t| {
                    format!(
                        "SPEAKER {uri} 1 {:.3} {:.3} <NA> <NA> {} <NA> <NA>\n",
                        t.start,
                        t.end - t.start,
                        t.speaker
                    )
                })
                .collect();
            ("text/plain; charset=utf-8", Bytes::from(text))
        }
    };
    Ok(AudioResponse {
        content_type: content_type.into(),
        body,
        audio_secs: Some(duration),
    })
}

#[async_trait]
impl Provider for LocalDiarizationProvider {
    fn name(&self) -> &str {
        &self.name
    }

    async fn audio(
        &self,
        req: AudioRequest,
        _ctx: &CallContext,
    ) -> Result<AudioResponse, ProviderError> {
        match req.task {
            AudioTask::Diarization => {}
            AudioTask::Transcription => {
                return Err(ProviderError::Unsupported("audio transcriptions"));
            }
            AudioTask::Translation => return Err(ProviderError::Unsupported("audio translations")),
        }
        let (format, config) = parse_form(&req)?;
        let _permit = Arc::clone(&self.admission)
            .try_acquire_owned()
            .map_err(|_| {
                ProviderError::Overloaded(format!(
                    "The diarisation model `{}` is busy; retry shortly.",
                    req.model
                ))
            })?;
        let (bytes, name, limit) = (req.file, req.file_name.clone(), self.max_audio_secs);
        let audio = tokio::task::spawn_blocking(move || decode(bytes, Some(&name), limit))
            .await
            .map_err(|e| ProviderError::Engine(e.to_string()))?
            .map_err(decode_error)?;
        let duration = audio.duration_secs();
        let started = std::time::Instant::now();
        let turns = diarize(&self.models, &self.compute, config, audio.samples).await?;
        tracing::debug!(
            model = %req.model,
            audio_secs = duration,
            turns = turns.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "local diarisation"
        );
        render(format, &req.file_name, duration, &turns)
    }

    async fn health(&self) -> Result<(), ProviderError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
