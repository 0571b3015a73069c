//! The generation engine: one thread that owns the model and runs continuous batching.
//!
//! Requests are admitted through a bounded queue (full → [`SubmitError::Overloaded`]). Each
//! step, sequences that arrived join the running batch (their prompts are prefilled in chunks
//! so long prompts do not stall decoding), every running sequence advances by one token in one
//! batched forward pass, and finished or abandoned sequences leave. Each request brings its
//! own event channel; a dropped receiver (client gone) cancels the sequence at the next step.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::load::LoadedModel;
use super::model::{LlamaModel, SeqCache, StepSeq, argmax_rows, row};
use super::sampling::{Sampler, SamplingParams};
use super::text::{IncrementalDecoder, StopMatcher, StopOutcome, TextCodec};

/// Longest sequence the pooled KV cache of an accelerator holds (its memory is slots ×
/// positions × layers × 2 × kv width); longer ones get caches of their own.
const MAX_POOLED_POSITIONS: usize = 4096;

/// Limits of the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Most sequences decoding together.
    pub max_batch: usize,
    /// Most requests waiting to join; beyond it submissions are refused.
    pub max_queue: usize,
    /// Most prompt tokens prefilled in one step (across sequences).
    pub prefill_chunk: usize,
    /// Compute threads of the engine (0: one per available core, or `AIGW_ENGINE_THREADS`).
    pub threads: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_batch: 64,
            max_queue: 256,
            prefill_chunk: 512,
            threads: 0,
        }
    }
}

/// One generation.
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    /// Prompt token ids.
    pub prompt: Vec<u32>,
    /// How tokens are picked.
    pub sampling: SamplingParams,
    /// Most tokens to generate; `None` means up to the context length.
    pub max_tokens: Option<u32>,
    /// Stop sequences (not included in the output).
    pub stop: Vec<String>,
}

/// Why a sequence finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// End-of-sequence token or a stop sequence.
    Stop,
    /// `max_tokens` or the context length.
    Length,
}

/// What a sequence reports, in order: deltas, then one `Finished` or `Failed`.
#[derive(Debug, Clone, PartialEq)]
pub enum GenEvent {
    /// New text (whole characters only).
    Delta(String),
    /// Done.
    Finished {
        /// Why.
        reason: Finish,
        /// Prompt tokens.
        prompt_tokens: u64,
        /// Generated tokens (the end-of-sequence token not counted).
        completion_tokens: u64,
    },
    /// The engine failed on this sequence.
    Failed(String),
}

/// Why a request was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The queue is full.
    #[error("the local model is at capacity ({0} requests waiting)")]
    Overloaded(usize),
    /// The prompt leaves no room to generate.
    #[error("the prompt has {tokens} tokens; this model's context is {max} tokens")]
    PromptTooLong {
        /// Prompt tokens.
        tokens: usize,
        /// Context length.
        max: usize,
    },
    /// An empty prompt.
    #[error("the prompt is empty")]
    EmptyPrompt,
    /// A prompt token id outside the vocabulary.
    #[error("token id {id} is outside this model's vocabulary of {vocab} tokens")]
    InvalidToken {
        /// The offending id.
        id: u32,
        /// Vocabulary size.
        vocab: usize,
    },
    /// The engine thread is gone.
    #[error("the local engine has stopped")]
    Stopped,
}

/// Live counters of the engine, readable from any thread.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Requests waiting to join.
    pub queued: AtomicUsize,
    /// Sequences in the running batch.
    pub active: AtomicUsize,
    /// Forward steps run.
    pub steps: AtomicU64,
    /// Sum over steps of the sequences in each step (÷ steps = mean batch size).
    pub batched_sequences: AtomicU64,
    /// Prompt tokens processed.
    pub prompt_tokens: AtomicU64,
    /// Tokens generated.
    pub generated_tokens: AtomicU64,
    /// Sequences dropped because their client went away before they finished.
    pub cancelled: AtomicU64,
}

struct Job {
    req: GenerationRequest,
    events: UnboundedSender<GenEvent>,
}

/// A handle to the engine thread; cheap to share.
pub struct LlmEngine {
    submit: SyncSender<Job>,
    codec: Arc<TextCodec>,
    stats: Arc<EngineStats>,
    context_length: usize,
    vocab_size: usize,
    max_queue: usize,
}

impl LlmEngine {
    /// Starts the engine thread with a loaded model.
    pub fn start(loaded: LoadedModel, config: EngineConfig) -> std::io::Result<Self> {
        super::heap::keep_freed_memory();
        let (tx, rx) = std::sync::mpsc::sync_channel(config.max_queue);
        let codec = Arc::new(loaded.codec);
        let stats = Arc::new(EngineStats::default());
        let context_length = loaded.model.config.context_length;
        let vocab_size = loaded.model.vocab_rows();
        // On an accelerator, sequences share a pooled KV cache (one batched attention per
        // layer for decode steps, instead of a dozen kernels per sequence); those longer than
        // its positions keep caches of their own.
        let model = if loaded.model.device().is_cpu() {
            loaded.model
        } else {
            let positions = context_length.min(MAX_POOLED_POSITIONS);
            loaded
                .model
                .with_kv_pool(config.max_batch, positions)
                .map_err(std::io::Error::other)?
        };
        let worker = Worker {
            model,
            codec: codec.clone(),
            stats: stats.clone(),
            rx,
            active: Vec::new(),
            config: config.clone(),
        };
        // The engine loop runs on a worker of its own thread pool, so the parallel parts of a
        // step (matmul rows, per-sequence attention) start on the current thread and are
        // stolen by the others, instead of handing each operation to another thread.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(engine_threads(config.threads))
            .thread_name(|i| format!("aigw-llm-{i}"))
            .build()
            .map_err(std::io::Error::other)?;
        std::thread::Builder::new()
            .name("aigw-llm".into())
            .spawn(move || pool.install(move || worker.run()))?;
        Ok(Self {
            submit: tx,
            codec,
            stats,
            context_length,
            vocab_size,
            max_queue: config.max_queue,
        })
    }

    /// The model's tokenizer and chat template.
    pub fn codec(&self) -> &TextCodec {
        &self.codec
    }

    /// The model's context length in tokens.
    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// Live counters.
    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// Queues a generation; events arrive on the returned receiver. Dropping the receiver
    /// cancels the generation.
    pub fn submit(
        &self,
        req: GenerationRequest,
    ) -> Result<UnboundedReceiver<GenEvent>, SubmitError> {
        if req.prompt.is_empty() {
            return Err(SubmitError::EmptyPrompt);
        }
        if let Some(&id) = req
            .prompt
            .iter()
            .find(|&&id| id as usize >= self.vocab_size)
        {
            return Err(SubmitError::InvalidToken {
                id,
                vocab: self.vocab_size,
            });
        }
        if req.prompt.len() >= self.context_length {
            return Err(SubmitError::PromptTooLong {
                tokens: req.prompt.len(),
                max: self.context_length,
            });
        }
        let (events, rx) = unbounded_channel();
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        match self.submit.try_send(Job { req, events }) {
            Ok(()) => Ok(rx),
            Err(e) => {
                self.stats.queued.fetch_sub(1, Ordering::Relaxed);
                Err(match e {
                    TrySendError::Full(_) => SubmitError::Overloaded(self.max_queue),
                    TrySendError::Disconnected(_) => SubmitError::Stopped,
                })
            }
        }
    }
}

/// Threads for the engine pool: the configured number, else `AIGW_ENGINE_THREADS`, else one
/// per available core.
fn engine_threads(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    std::env::var("AIGW_ENGINE_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

struct Sequence {
    prompt: Vec<u32>,
    prefilled: usize,
    cache: SeqCache,
    sampler: Sampler,
    decoder: IncrementalDecoder,
    stop: StopMatcher,
    max_tokens: usize,
    generated: usize,
    last_token: u32,
    events: UnboundedSender<GenEvent>,
    done: bool,
}

struct Worker {
    model: LlamaModel,
    codec: Arc<TextCodec>,
    stats: Arc<EngineStats>,
    rx: Receiver<Job>,
    active: Vec<Sequence>,
    config: EngineConfig,
}

impl Worker {
    fn run(mut self) {
        loop {
            if self.active.is_empty() {
                match self.rx.recv() {
                    Ok(job) => self.admit(job),
                    Err(_) => return,
                }
            }
            // Seats of clients that went away are freed before new sequences take them.
            self.drop_gone();
            while self.active.len() < self.config.max_batch {
                match self.rx.try_recv() {
                    Ok(job) => self.admit(job),
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            self.drop_gone();
            self.stats
                .active
                .store(self.active.len(), Ordering::Relaxed);
            if !self.active.is_empty() {
                self.step();
            }
            self.active.retain(|s| !s.done);
            self.stats
                .active
                .store(self.active.len(), Ordering::Relaxed);
        }
    }

    /// Ends the sequences whose client went away (its receiver dropped), counting them: the
    /// only place sequences leave unfinished, always before a step.
    fn drop_gone(&mut self) {
        let before = self.active.len();
        self.active.retain(|s| !s.events.is_closed());
        self.stats
            .cancelled
            .fetch_add((before - self.active.len()) as u64, Ordering::Relaxed);
    }

    fn admit(&mut self, job: Job) {
        self.stats.queued.fetch_sub(1, Ordering::Relaxed);
        let room = self.model.config.context_length - job.req.prompt.len();
        let max_tokens = job.req.max_tokens.map_or(room, |m| (m as usize).min(room));
        self.active.push(Sequence {
            cache: self.model.new_cache_for(job.req.prompt.len() + max_tokens),
            sampler: Sampler::new(job.req.sampling),
            decoder: IncrementalDecoder::default(),
            stop: StopMatcher::new(&job.req.stop),
            prefilled: 0,
            max_tokens,
            generated: 0,
            last_token: 0,
            prompt: job.req.prompt,
            events: job.events,
            done: false,
        });
    }

    fn step(&mut self) {
        // What each sequence feeds this step: a prompt chunk, its last token (an empty
        // range), or nothing when the prefill budget is spent (`None`).
        let mut budget = self.config.prefill_chunk;
        let plan: Vec<Option<std::ops::Range<usize>>> = self
            .active
            .iter()
            .map(|s| {
                if s.prefilled >= s.prompt.len() {
                    return Some(0..0);
                }
                if budget == 0 {
                    return None;
                }
                let end = s.prompt.len().min(s.prefilled + budget);
                budget -= end - s.prefilled;
                Some(s.prefilled..end)
            })
            .collect();
        let mut last = Vec::with_capacity(plan.len());
        let logits = {
            let mut batch = Vec::with_capacity(plan.len());
            for (i, (seq, range)) in self.active.iter_mut().zip(&plan).enumerate() {
                let Some(range) = range else { continue };
                let prefill = !range.is_empty();
                let tokens: &[u32] = if prefill {
                    &seq.prompt[range.clone()]
                } else {
                    std::slice::from_ref(&seq.last_token)
                };
                let want_logits = !prefill || range.end == seq.prompt.len();
                if want_logits {
                    last.push(i);
                }
                batch.push(StepSeq {
                    tokens,
                    cache: &mut seq.cache,
                    want_logits,
                });
            }
            self.stats.steps.fetch_add(1, Ordering::Relaxed);
            self.stats
                .batched_sequences
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            self.model.forward(&mut batch)
        };
        for (s, range) in self.active.iter_mut().zip(&plan) {
            if let Some(range) = range.as_ref().filter(|r| !r.is_empty()) {
                self.stats
                    .prompt_tokens
                    .fetch_add(range.len() as u64, Ordering::Relaxed);
                s.prefilled = range.end;
            }
        }
        let logits = match logits {
            Ok(Some(l)) => l,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(error = %e, "forward pass failed");
                for (s, _) in self
                    .active
                    .iter_mut()
                    .zip(&plan)
                    .filter(|(_, r)| r.is_some())
                {
                    let _ = s.events.send(GenEvent::Failed(e.to_string()));
                    s.done = true;
                }
                return;
            }
        };
        let greedy = match argmax_rows(&logits) {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(error = %e, "reading logits failed");
                for &i in &last {
                    let s = &mut self.active[i];
                    let _ = s.events.send(GenEvent::Failed(e.to_string()));
                    s.done = true;
                }
                return;
            }
        };
        for (r, &i) in last.iter().enumerate() {
            let token = {
                let s = &mut self.active[i];
                if s.sampler.is_plain_greedy() {
                    greedy[r]
                } else {
                    match row(&logits, r) {
                        Ok(mut l) => s.sampler.sample(&mut l, &s.prompt),
                        Err(e) => {
                            let _ = s.events.send(GenEvent::Failed(e.to_string()));
                            s.done = true;
                            continue;
                        }
                    }
                }
            };
            self.stats.generated_tokens.fetch_add(1, Ordering::Relaxed);
            self.advance(i, token);
        }
    }

    /// Applies a sampled token to sequence `i`: emit text, detect its end.
    fn advance(&mut self, i: usize, token: u32) {
        let codec = self.codec.clone();
        let ctx = self.model.config.context_length;
        let s = &mut self.active[i];
        let mut finish = None;
        let eos = codec.is_eos(token) && !s.sampler.ignores_eos();
        if s.max_tokens == 0 {
            // Nothing to generate (a prompt-only request): the prefill was the whole job.
            finish = Some(Finish::Length);
        } else if eos {
            finish = Some(Finish::Stop);
        } else {
            s.generated += 1;
            s.sampler.observe(token);
            s.last_token = token;
            let delta = match s.decoder.push(&codec, token) {
                Ok(d) => d,
                Err(e) => {
                    let _ = s.events.send(GenEvent::Failed(e.to_string()));
                    s.done = true;
                    return;
                }
            };
            match s.stop.push(&delta) {
                StopOutcome::Continue(text) => s.send_text(text),
                StopOutcome::Stopped(text) => {
                    s.send_text(text);
                    finish = Some(Finish::Stop);
                }
            }
            if finish.is_none() && (s.generated >= s.max_tokens || s.cache.len() + 1 >= ctx) {
                finish = Some(Finish::Length);
            }
        }
        if let Some(reason) = finish {
            if reason == Finish::Length || eos {
                let rest = s.stop.flush();
                s.send_text(rest);
            }
            let _ = s.events.send(GenEvent::Finished {
                reason,
                prompt_tokens: s.prompt.len() as u64,
                completion_tokens: s.generated as u64,
            });
            s.done = true;
        }
    }
}

impl Sequence {
    /// Sends text, if any. A send to a client that went away fails; the sequence then
    /// leaves before the next step, counted as cancelled.
    fn send_text(&mut self, text: String) {
        if !text.is_empty() {
            let _ = self.events.send(GenEvent::Delta(text));
        }
    }
}
