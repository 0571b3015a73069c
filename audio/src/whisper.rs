//! Speech to text with whisper.cpp (whisper-rs, CPU), on a bounded pool of its own threads.
//!
//! [`WhisperModel::load`] reads a ggml whisper file once and starts `workers` threads, each with
//! its own decoding state (whisper.cpp's buffers), fed by a queue of at most `max_queue` jobs.
//! [`WhisperModel::transcribe`] is async but never blocks the async runtime: it enqueues the
//! samples and awaits the answer; a full queue is [`WhisperError::Overloaded`] at once, and a
//! caller that goes away (a dropped future) aborts its job, queued or running.
//!
//! A [`Transcript`] carries what OpenAI's `verbose_json` needs: segments with their timestamps,
//! token ids, average log probability, compression ratio and no-speech probability; words with
//! timestamps when asked for (whisper.cpp's token timestamps, tokens joined into words at the
//! spaces that begin them); the language and the duration.

mod worker;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use whisper_rs::{WhisperContext, WhisperContextParameters};

use worker::Worker;

/// How a model is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WhisperConfig {
    /// Transcriptions running at once (each with its own state, ~tens of MB for tiny).
    pub workers: usize,
    /// Compute threads per transcription.
    pub threads: usize,
    /// Most transcriptions waiting for a worker; beyond it, [`WhisperError::Overloaded`].
    pub max_queue: usize,
}

impl Default for WhisperConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            workers: 1,
            threads: cores,
            max_queue: 16,
        }
    }
}

/// What to transcribe and how.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TranscribeOptions {
    /// ISO-639-1 code of the spoken language; `None` detects it (English for `.en` models).
    pub language: Option<String>,
    /// Text that conditions the decoder (spellings, style, the previous segment).
    pub prompt: Option<String>,
    /// Sampling temperature; 0 (the default) starts greedy and raises it by 0.2 steps when a
    /// segment fails whisper's log-probability or compression checks.
    pub temperature: f32,
    /// Translate into English instead of transcribing (multilingual models only).
    pub translate: bool,
    /// Also time each word.
    pub words: bool,
}

/// One segment of the transcript (times in seconds).
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    /// Index in the transcript.
    pub id: usize,
    /// Start.
    pub start: f64,
    /// End.
    pub end: f64,
    /// Its text, with whisper's leading space.
    pub text: String,
    /// Its text token ids.
    pub tokens: Vec<i32>,
    /// Mean log probability of its tokens.
    pub avg_logprob: f64,
    /// Its text's length over its zlib-compressed length (repetitive text scores high).
    pub compression_ratio: f64,
    /// Probability that it holds no speech.
    pub no_speech_prob: f64,
    /// The temperature requested.
    pub temperature: f64,
}

/// One word with its timing (seconds).
#[derive(Debug, Clone, PartialEq)]
pub struct Word {
    /// The word, without surrounding spaces.
    pub word: String,
    /// Start.
    pub start: f64,
    /// End.
    pub end: f64,
}

/// The result of one transcription.
#[derive(Debug, Clone, PartialEq)]
pub struct Transcript {
    /// The whole text, trimmed.
    pub text: String,
    /// ISO-639-1 code of the language (detected or given).
    pub language: String,
    /// The language's English name in lower case (`english`), as OpenAI reports it.
    pub language_name: String,
    /// Length of the audio in seconds.
    pub duration: f64,
    /// The segments.
    pub segments: Vec<Segment>,
    /// The words, when asked for.
    pub words: Vec<Word>,
    /// Time spent waiting for a worker.
    pub queued: Duration,
    /// Time spent transcribing.
    pub elapsed: Duration,
}

/// What can go wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WhisperError {
    /// The model file could not be loaded.
    #[error("cannot load the whisper model {path}: {reason}")]
    Load {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// Every worker is busy and the queue is full.
    #[error("the transcription queue is full ({max_queue} waiting); retry later")]
    Overloaded {
        /// The queue's size.
        max_queue: usize,
    },
    /// The model cannot honour a request (a language it does not know, translating with an
    /// English-only model); `param` names the field.
    #[error("{message}")]
    Unsupported {
        /// The request field at fault.
        param: &'static str,
        /// What is wrong.
        message: String,
    },
    /// No samples to transcribe.
    #[error("no audio samples to transcribe")]
    NoAudio,
    /// whisper.cpp failed.
    #[error("whisper failed: {0}")]
    Failed(String),
    /// The job was abandoned by its caller.
    #[error("the transcription was cancelled")]
    Cancelled,
    /// The workers have stopped.
    #[error("the whisper workers have stopped")]
    Stopped,
}

impl WhisperError {
    /// A stable label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Load { .. } => "load",
            Self::Overloaded { .. } => "overloaded",
            Self::Unsupported { .. } => "unsupported",
            Self::NoAudio => "no_audio",
            Self::Failed(_) => "failed",
            Self::Cancelled => "cancelled",
            Self::Stopped => "stopped",
        }
    }
}

/// Load and throughput figures, for `/load` and metrics.
#[derive(Debug, Default)]
pub struct WhisperStats {
    /// Jobs waiting for a worker.
    pub queued: AtomicUsize,
    /// Jobs being transcribed.
    pub active: AtomicUsize,
    /// Audio transcribed, in milliseconds.
    pub audio_ms: AtomicU64,
    /// Transcriptions finished.
    pub completed: AtomicU64,
}

struct Job {
    samples: Vec<f32>,
    options: TranscribeOptions,
    cancelled: Arc<AtomicBool>,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Transcript, WhisperError>>,
}

/// A loaded whisper model and its workers. Dropping it stops the workers once their queue
/// is drained.
pub struct WhisperModel {
    jobs: SyncSender<Job>,
    stats: Arc<WhisperStats>,
    config: WhisperConfig,
    multilingual: bool,
}

impl std::fmt::Debug for WhisperModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhisperModel")
            .field("config", &self.config)
            .field("multilingual", &self.multilingual)
            .finish_non_exhaustive()
    }
}

/// Sends a job's cancellation when its caller drops the future.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl WhisperModel {
    /// Loads the ggml file at `path` (blocking, ~0.1 s for tiny) and starts the workers.
    pub fn load(path: &Path, config: WhisperConfig) -> Result<Self, WhisperError> {
        static LOGGING: Once = Once::new();
        LOGGING.call_once(whisper_rs::install_logging_hooks);
        let load_error = |reason: String| WhisperError::Load {
            path: path.display().to_string(),
            reason,
        };
        let mut params = WhisperContextParameters::default();
        params.use_gpu(false);
        let ctx = WhisperContext::new_with_params(path, params)
            .map_err(|e| load_error(format!("{e} (not a whisper.cpp ggml file?)")))?;
        let multilingual = ctx.is_multilingual();
        let workers = config.workers.max(1);
        let (jobs, rx) = std::sync::mpsc::sync_channel::<Job>(config.max_queue.max(1));
        let rx = Arc::new(Mutex::new(rx));
        let stats = Arc::new(WhisperStats::default());
        let ctx = Arc::new(ctx);
        for i in 0..workers {
            let state = ctx
                .create_state()
                .map_err(|e| load_error(format!("cannot create a decoding state: {e}")))?;
            let worker = Worker {
                ctx: Arc::clone(&ctx),
                state,
                threads: config.threads.max(1),
                stats: Arc::clone(&stats),
            };
            let rx = Arc::clone(&rx);
            std::thread::Builder::new()
                .name(format!("whisper-{i}"))
                .spawn(move || worker.run(&rx))
                .map_err(|e| load_error(format!("cannot start a worker thread: {e}")))?;
        }
        Ok(Self {
            jobs,
            stats,
            config,
            multilingual,
        })
    }

    /// Whether the model knows languages other than English (and can translate).
    pub fn is_multilingual(&self) -> bool {
        self.multilingual
    }

    /// How it is served.
    pub fn config(&self) -> WhisperConfig {
        self.config
    }

    /// Its load and throughput.
    pub fn stats(&self) -> &WhisperStats {
        &self.stats
    }

    /// Checks the options against what this model can do, before any work is queued.
    pub fn check(&self, options: &TranscribeOptions) -> Result<(), WhisperError> {
        if options.translate && !self.multilingual {
            return Err(WhisperError::Unsupported {
                param: "model",
                message: "This model is English-only and cannot translate; use a multilingual \
                          whisper model for translations."
                    .into(),
            });
        }
        if let Some(lang) = &options.language {
            let known = whisper_rs::get_lang_id(lang).is_some();
            if !known {
                return Err(WhisperError::Unsupported {
                    param: "language",
                    message: format!(
                        "Unsupported language '{lang}': give an ISO-639-1 code such as 'en'."
                    ),
                });
            }
            if !self.multilingual && lang != "en" {
                return Err(WhisperError::Unsupported {
                    param: "language",
                    message: format!(
                        "This model is English-only; language '{lang}' is not supported."
                    ),
                });
            }
        }
        if !(0.0..=1.0).contains(&options.temperature) {
            return Err(WhisperError::Unsupported {
                param: "temperature",
                message: "temperature must be between 0 and 1.".into(),
            });
        }
        Ok(())
    }

    /// Transcribes 16 kHz mono `samples` on a worker.
    pub async fn transcribe(
        &self,
        samples: Vec<f32>,
        options: TranscribeOptions,
    ) -> Result<Transcript, WhisperError> {
        self.check(&options)?;
        if samples.is_empty() {
            return Err(WhisperError::NoAudio);
        }
        let cancelled = Arc::new(AtomicBool::new(false));
        let _guard = CancelOnDrop(Arc::clone(&cancelled));
        let (reply, answer) = oneshot::channel();
        let job = Job {
            samples,
            options,
            cancelled,
            enqueued: Instant::now(),
            reply,
        };
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(e) => {
                self.stats.queued.fetch_sub(1, Ordering::Relaxed);
                return Err(match e {
                    TrySendError::Full(_) => WhisperError::Overloaded {
                        max_queue: self.config.max_queue,
                    },
                    TrySendError::Disconnected(_) => WhisperError::Stopped,
                });
            }
        }
        answer.await.unwrap_or(Err(WhisperError::Stopped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_model_file_is_a_load_error() {
        let err = WhisperModel::load(Path::new("/nonexistent/ggml.bin"), WhisperConfig::default())
            .unwrap_err();
        assert_eq!(err.kind(), "load");
        assert!(err.to_string().contains("/nonexistent/ggml.bin"), "{err}");
    }
}
