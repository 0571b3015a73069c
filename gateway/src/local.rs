//! Starting the in-process engines of `[local]`: resolve each model's files, load it on the
//! configured device, and wrap it as a provider. Also what `/load` reports about them.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use aigw_audio::diarize::DiarizationModels;
use aigw_audio::whisper::{WhisperConfig, WhisperModel};
use aigw_inference::embed::EmbeddingModel;
use aigw_inference::llm::engine::{EngineConfig, LlmEngine};
use aigw_models::catalog::Catalog;
use aigw_models::store;
use serde::Serialize;
use utoipa::ToSchema;

use crate::config::{DeviceSpec, LocalConfig, LocalKind, LocalModelConfig, LocalSource};
use crate::providers::Provider;
use crate::providers::local_chat::LocalChatProvider;
use crate::providers::local_diarize::LocalDiarizationProvider;
use crate::providers::local_embed::LocalEmbeddingProvider;
use crate::providers::local_transcribe::LocalTranscriptionProvider;

/// A started local model.
pub struct LocalModel {
    /// Its alias.
    pub alias: String,
    /// The provider serving it.
    pub provider: Arc<dyn Provider>,
    /// The chat engine, for load reports (none for embedding models).
    pub engine: Option<Arc<LlmEngine>>,
    /// The speech-to-text model, for load reports.
    pub transcriber: Option<Arc<WhisperModel>>,
    /// The diarisation models (segmentation + speaker embedding), shareable by any number of
    /// streaming sessions ([`aigw_audio::diarize::StreamingDiarizer`]).
    pub diarizer: Option<Arc<DiarizationModels>>,
    /// The limits it runs with.
    pub max_batch: usize,
    /// Most requests waiting before 429s.
    pub max_queue: usize,
    /// Its price (from the catalog; zero for mounted weights).
    pub price: aigw_models::catalog::Price,
}

fn device(spec: DeviceSpec) -> anyhow::Result<candle_core::Device> {
    Ok(match spec {
        DeviceSpec::Cpu => candle_core::Device::Cpu,
        DeviceSpec::Cuda(n) => candle_core::Device::new_cuda(n).map_err(|e| {
            anyhow::anyhow!("cannot use cuda:{n} ({e}); CUDA needs a build with `--features cuda`")
        })?,
    })
}

/// Where a model's weights are: the GGUF file, the model directory, the ggml file, or the
/// segmentation model's file.
fn weights_path(m: &LocalModelConfig, model_dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    source_path(m, &m.source, model_dir)
}

fn source_path(
    m: &LocalModelConfig,
    source: &LocalSource,
    model_dir: &std::path::Path,
) -> anyhow::Result<PathBuf> {
    match source {
        LocalSource::Path(p) => {
            anyhow::ensure!(
                p.exists(),
                "model '{}': {} does not exist",
                m.alias,
                p.display()
            );
            Ok(p.clone())
        }
        LocalSource::Catalog(id) => {
            let entry = Catalog::builtin()
                .get(id)
                .ok_or_else(|| anyhow::anyhow!("model '{}': no catalog entry '{id}'", m.alias))?;
            let resolved = store::resolve(entry, model_dir)?;
            anyhow::ensure!(
                resolved.is_present(),
                "model '{}' ({id}) is not installed in {}: run `aigw models fetch {id}`",
                m.alias,
                model_dir.display()
            );
            Ok(match m.kind {
                LocalKind::Chat | LocalKind::Transcription | LocalKind::Diarization => resolved
                    .main_file()
                    .map(std::path::Path::to_path_buf)
                    .unwrap_or(resolved.dir),
                LocalKind::Embedding => resolved.dir,
            })
        }
    }
}

/// Loads every configured local model (blocking: call before serving).
pub fn start(config: &LocalConfig) -> anyhow::Result<Vec<LocalModel>> {
    if config.models.is_empty() {
        return Ok(Vec::new());
    }
    let device = device(config.device)?;
    let model_dir = config.model_dir.clone().unwrap_or_else(store::model_dir);
    let diarizers = load_diarizers(config, &model_dir)?;
    // The first diarisation model also labels `diarized_json` transcriptions.
    let first_diarizer = diarizers.first().map(|(_, d)| d.clone());
    let mut diarizers = diarizers.into_iter();
    let mut out = Vec::new();
    for m in &config.models {
        let path = weights_path(m, &model_dir)?;
        let t0 = std::time::Instant::now();
        let name = format!("local:{}", m.alias);
        let price = match &m.source {
            LocalSource::Catalog(id) => aigw_models::catalog::lookup(id)
                .map_or(aigw_models::catalog::Price::FREE, |e| e.price),
            LocalSource::Path(_) => aigw_models::catalog::Price::FREE,
        };
        let model = match m.kind {
            LocalKind::Chat => {
                let loaded = aigw_inference::llm::load::load_path(&path, &device)
                    .map_err(|e| anyhow::anyhow!("model '{}': {e}", m.alias))?;
                let engine = Arc::new(LlmEngine::start(
                    loaded,
                    EngineConfig {
                        max_batch: config.max_batch,
                        max_queue: config.max_queue,
                        prefill_chunk: config.prefill_chunk,
                        threads: config.threads,
                    },
                )?);
                LocalModel {
                    alias: m.alias.clone(),
                    provider: Arc::new(LocalChatProvider::new(name, engine.clone())),
                    engine: Some(engine),
                    transcriber: None,
                    diarizer: None,
                    max_batch: config.max_batch,
                    max_queue: config.max_queue,
                    price,
                }
            }
            LocalKind::Embedding => {
                let model = EmbeddingModel::load(&path, &device)
                    .map_err(|e| anyhow::anyhow!("model '{}': {e}", m.alias))?;
                LocalModel {
                    alias: m.alias.clone(),
                    provider: Arc::new(LocalEmbeddingProvider::new(
                        name,
                        Arc::new(model),
                        config.embedding_concurrency,
                    )),
                    engine: None,
                    transcriber: None,
                    diarizer: None,
                    max_batch: aigw_inference::embed::MAX_BATCH,
                    max_queue: config.embedding_concurrency,
                    price,
                }
            }
            LocalKind::Transcription => {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                let whisper = WhisperConfig {
                    workers: config.transcription_workers,
                    threads: match config.transcription_threads {
                        0 => (cores / config.transcription_workers).max(1),
                        n => n,
                    },
                    max_queue: config.transcription_queue,
                };
                let model = Arc::new(
                    WhisperModel::load(&path, whisper)
                        .map_err(|e| anyhow::anyhow!("model '{}': {e}", m.alias))?,
                );
                let mut provider = LocalTranscriptionProvider::new(
                    name,
                    Arc::clone(&model),
                    whisper.workers + whisper.max_queue,
                    config.max_audio_secs,
                );
                if let Some(d) = &first_diarizer {
                    provider =
                        provider.with_diarization(Arc::clone(&d.models), Arc::clone(&d.compute));
                }
                LocalModel {
                    alias: m.alias.clone(),
                    provider: Arc::new(provider),
                    engine: None,
                    transcriber: Some(model),
                    diarizer: None,
                    max_batch: whisper.workers,
                    max_queue: whisper.max_queue,
                    price,
                }
            }
            LocalKind::Diarization => {
                let (_, d) = diarizers
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("model '{}': not loaded", m.alias))?;
                LocalModel {
                    alias: m.alias.clone(),
                    provider: Arc::new(LocalDiarizationProvider::new(
                        name,
                        Arc::clone(&d.models),
                        Arc::clone(&d.compute),
                        config.transcription_workers + config.transcription_queue,
                        config.max_audio_secs,
                    )),
                    engine: None,
                    transcriber: None,
                    diarizer: Some(d.models),
                    max_batch: config.transcription_workers,
                    max_queue: config.transcription_queue,
                    price,
                }
            }
        };
        tracing::info!(model = %m.alias, path = %path.display(), elapsed_ms = t0.elapsed().as_millis() as u64, "local model loaded");
        out.push(model);
    }
    Ok(out)
}

/// Loaded diarisation models and the permits of their whole-file computations.
#[derive(Clone)]
struct Diarizer {
    models: Arc<DiarizationModels>,
    compute: Arc<tokio::sync::Semaphore>,
}

/// Loads the `kind = "diarization"` models, in config order.
fn load_diarizers(
    config: &LocalConfig,
    model_dir: &std::path::Path,
) -> anyhow::Result<Vec<(String, Diarizer)>> {
    config
        .models
        .iter()
        .filter(|m| m.kind == LocalKind::Diarization)
        .map(|m| {
            let segmentation = weights_path(m, model_dir)?;
            let embedding_source = m.embedding.as_ref().ok_or_else(|| {
                anyhow::anyhow!("model '{}': no speaker embedding model", m.alias)
            })?;
            let embedding = source_path(m, embedding_source, model_dir)?;
            let models = DiarizationModels::load(&segmentation, &embedding)
                .map_err(|e| anyhow::anyhow!("model '{}': {e}", m.alias))?;
            Ok((
                m.alias.clone(),
                Diarizer {
                    models: Arc::new(models),
                    compute: Arc::new(tokio::sync::Semaphore::new(
                        config.transcription_workers.max(1),
                    )),
                },
            ))
        })
        .collect()
}

/// The load of one local model, as `/load` reports it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelLoad {
    /// The alias.
    pub model: String,
    /// `chat`, `embedding`, `transcription` or `diarization`.
    pub kind: String,
    /// Requests waiting to join the batch.
    pub queued: usize,
    /// Sequences decoding now.
    pub active: usize,
    /// Most sequences decoded together.
    pub max_batch: usize,
    /// Most requests waiting before 429s.
    pub max_queue: usize,
    /// Tokens generated since start.
    pub generated_tokens: u64,
    /// Prompt tokens processed since start.
    pub prompt_tokens: u64,
}

impl LocalModel {
    /// This model's current load.
    pub fn load(&self) -> ModelLoad {
        if self.diarizer.is_some() {
            return ModelLoad {
                model: self.alias.clone(),
                kind: "diarization".into(),
                queued: 0,
                active: 0,
                max_batch: self.max_batch,
                max_queue: self.max_queue,
                generated_tokens: 0,
                prompt_tokens: 0,
            };
        }
        let (kind, queued, active, generated, prompt) = match (&self.engine, &self.transcriber) {
            (Some(e), _) => {
                let s = e.stats();
                (
                    "chat",
                    s.queued.load(Ordering::Relaxed),
                    s.active.load(Ordering::Relaxed),
                    s.generated_tokens.load(Ordering::Relaxed),
                    s.prompt_tokens.load(Ordering::Relaxed),
                )
            }
            (None, Some(w)) => {
                let s = w.stats();
                (
                    "transcription",
                    s.queued.load(Ordering::Relaxed),
                    s.active.load(Ordering::Relaxed),
                    0,
                    0,
                )
            }
            (None, None) => ("embedding", 0, 0, 0, 0),
        };
        ModelLoad {
            model: self.alias.clone(),
            kind: kind.into(),
            queued,
            active,
            max_batch: self.max_batch,
            max_queue: self.max_queue,
            generated_tokens: generated,
            prompt_tokens: prompt,
        }
    }
}
