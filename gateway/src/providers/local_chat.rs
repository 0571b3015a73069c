//! A chat model served in-process by the candle engine of the `inference` crate.
//!
//! Requests become token ids through the model's own chat template and tokenizer, each of
//! the `n` choices becomes one engine sequence (seed + index), and engine events become
//! OpenAI responses or stream chunks. Parameters the engine cannot honour (tool calls,
//! structured output, log probabilities) are refused with a 400 naming them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use aigw_inference::llm::engine::{Finish, GenEvent, GenerationRequest, LlmEngine, SubmitError};
use aigw_inference::llm::sampling::SamplingParams;
use aigw_models::openai::{
    ChatChoice, ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse, ChatDelta,
    ChatMessage, ChunkChoice, CompletionChoice, CompletionRequest, CompletionResponse, Extra,
    FinishReason, Prompt, ResponseFormat, Role, ToolChoice, Usage, unix_now,
};
use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::{CallContext, ChunkStream, Provider, ProviderError};

/// A local chat model.
pub struct LocalChatProvider {
    name: String,
    engine: Arc<LlmEngine>,
}

/// One engine sequence's output, gathered.
struct Gathered {
    text: String,
    finish: Finish,
    prompt_tokens: u64,
    completion_tokens: u64,
}

impl LocalChatProvider {
    /// Serves `engine` under `name` (for logs and metrics).
    pub fn new(name: impl Into<String>, engine: Arc<LlmEngine>) -> Self {
        Self {
            name: name.into(),
            engine,
        }
    }

    /// The engine, for load reporting.
    pub fn engine(&self) -> &Arc<LlmEngine> {
        &self.engine
    }

    fn chat_prompt(&self, req: &ChatCompletionRequest) -> Result<Vec<u32>, ProviderError> {
        let tools_wanted = req.tools.as_ref().is_some_and(|t| !t.is_empty())
            && !matches!(&req.tool_choice, Some(ToolChoice::Mode(m)) if m == "none");
        if tools_wanted {
            return Err(ProviderError::unsupported_param(
                "tools",
                "This local model does not support tool calls.",
            ));
        }
        if req.logprobs == Some(true) {
            return Err(ProviderError::unsupported_param(
                "logprobs",
                "This local model does not return log probabilities.",
            ));
        }
        if matches!(&req.response_format, Some(f) if *f != ResponseFormat::Text) {
            return Err(ProviderError::unsupported_param(
                "response_format",
                "This local model does not support structured output.",
            ));
        }
        let text = self
            .engine
            .codec()
            .render_chat(&req.messages, None)
            .map_err(|e| ProviderError::Rejected {
                message: format!("Cannot render the conversation with the model's template: {e}"),
                param: Some("messages".into()),
                code: "invalid_messages",
            })?;
        self.encode(&text)
    }

    fn encode(&self, text: &str) -> Result<Vec<u32>, ProviderError> {
        self.engine
            .codec()
            .encode_prompt(text)
            .map_err(|e| ProviderError::Engine(e.to_string()))
    }

    /// Submits `n` sequences for one prompt; the i-th uses seed + i.
    fn submit(
        &self,
        prompt: &[u32],
        params: &GenParams,
        n: u32,
    ) -> Result<Vec<UnboundedReceiver<GenEvent>>, ProviderError> {
        (0..u64::from(n))
            .map(|i| {
                let mut sampling = params.sampling.clone();
                sampling.seed = sampling.seed.map(|s| s.wrapping_add(i));
                self.engine
                    .submit(GenerationRequest {
                        prompt: prompt.to_vec(),
                        sampling,
                        max_tokens: params.max_tokens,
                        stop: params.stop.clone(),
                    })
                    .map_err(submit_error)
            })
            .collect()
    }
}

/// The generation parameters shared by chat and completions.
struct GenParams {
    sampling: SamplingParams,
    max_tokens: Option<u32>,
    stop: Vec<String>,
}

impl GenParams {
    #[allow(clippy::too_many_arguments)]
    fn new(
        temperature: Option<f64>,
        top_p: Option<f64>,
        seed: Option<i64>,
        presence_penalty: Option<f64>,
        frequency_penalty: Option<f64>,
        logit_bias: Option<&std::collections::BTreeMap<String, f64>>,
        extra: &Extra,
        max_tokens: Option<u32>,
        stop: Option<&aigw_models::openai::StopSequences>,
    ) -> Result<Self, ProviderError> {
        let mut bias = std::collections::HashMap::new();
        for (k, v) in logit_bias.into_iter().flatten() {
            let id: u32 = k.parse().map_err(|_| {
                ProviderError::unsupported_param("logit_bias", format!("'{k}' is not a token id."))
            })?;
            if !(-100.0..=100.0).contains(v) {
                return Err(ProviderError::unsupported_param(
                    "logit_bias",
                    format!("The bias of token {k} must lie in [-100, 100]."),
                ));
            }
            bias.insert(id, *v as f32);
        }
        let repetition_penalty = extra
            .get("repetition_penalty")
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(1.0);
        if !(repetition_penalty > 0.0 && repetition_penalty.is_finite()) {
            return Err(ProviderError::unsupported_param(
                "repetition_penalty",
                "'repetition_penalty' must be a positive number (1 disables it).",
            ));
        }
        let top_k = extra
            .get("top_k")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0) as usize;
        Ok(Self {
            sampling: SamplingParams {
                temperature: temperature.unwrap_or(1.0) as f32,
                top_p: top_p.unwrap_or(1.0) as f32,
                top_k,
                seed: seed.map(|s| s as u64),
                presence_penalty: presence_penalty.unwrap_or(0.0) as f32,
                frequency_penalty: frequency_penalty.unwrap_or(0.0) as f32,
                repetition_penalty: repetition_penalty as f32,
                logit_bias: bias,
                ignore_eos: extra
                    .get("ignore_eos")
                    .and_then(serde_json::Value::as_bool)
                    .unwrap_or(false),
            },
            max_tokens,
            stop: stop.map(|s| s.as_slice().to_vec()).unwrap_or_default(),
        })
    }
}

fn submit_error(e: SubmitError) -> ProviderError {
    match e {
        SubmitError::Overloaded(_) => ProviderError::Overloaded(e.to_string()),
        SubmitError::PromptTooLong { .. } => ProviderError::Rejected {
            message: format!("{e}. Please shorten the conversation."),
            param: Some("messages".into()),
            code: "context_length_exceeded",
        },
        SubmitError::EmptyPrompt => ProviderError::Rejected {
            message: e.to_string(),
            param: Some("prompt".into()),
            code: "empty_prompt",
        },
        SubmitError::InvalidToken { .. } => ProviderError::Rejected {
            message: e.to_string(),
            param: Some("prompt".into()),
            code: "invalid_token",
        },
        SubmitError::Stopped => ProviderError::Engine(e.to_string()),
    }
}

fn finish_reason(f: Finish) -> FinishReason {
    match f {
        Finish::Stop => FinishReason::Stop,
        Finish::Length => FinishReason::Length,
    }
}

/// Reads one sequence to its end.
async fn gather(mut rx: UnboundedReceiver<GenEvent>) -> Result<Gathered, ProviderError> {
    let mut text = String::new();
    while let Some(ev) = rx.recv().await {
        match ev {
            GenEvent::Delta(t) => text.push_str(&t),
            GenEvent::Finished {
                reason,
                prompt_tokens,
                completion_tokens,
            } => {
                return Ok(Gathered {
                    text,
                    finish: reason,
                    prompt_tokens,
                    completion_tokens,
                });
            }
            GenEvent::Failed(e) => return Err(ProviderError::Engine(e)),
        }
    }
    Err(ProviderError::Engine(
        "the engine dropped the sequence".into(),
    ))
}

async fn gather_all(rxs: Vec<UnboundedReceiver<GenEvent>>) -> Result<Vec<Gathered>, ProviderError> {
    futures::future::join_all(rxs.into_iter().map(gather))
        .await
        .into_iter()
        .collect()
}

/// Usage of choices sharing one prompt: the prompt counts once.
fn usage_of(outs: &[Gathered]) -> Usage {
    let prompt = outs.first().map_or(0, |g| g.prompt_tokens);
    Usage::new(prompt, outs.iter().map(|g| g.completion_tokens).sum())
}

/// Merges the event streams of several choices into (choice index, event) pairs.
fn merged(
    rxs: Vec<UnboundedReceiver<GenEvent>>,
) -> impl futures::Stream<Item = (u32, GenEvent)> + Send {
    futures::stream::select_all(rxs.into_iter().enumerate().map(|(i, rx)| {
        UnboundedReceiverStream::new(rx)
            .map(move |ev| (i as u32, ev))
            .boxed()
    }))
}

/// After the merged choices end: an error if some choice never finished (its sequence was
/// dropped by the engine), so the stream cannot end as if it had completed.
fn unfinished<T: Send + 'static>(
    remaining: Arc<AtomicU32>,
) -> impl futures::Stream<Item = Result<T, ProviderError>> + Send {
    // Polled only once the choices' streams have ended.
    futures::stream::once(async move { remaining.load(Ordering::Relaxed) }).filter_map(
        |left| async move {
            (left > 0).then(|| {
                Err(ProviderError::Engine(
                    "the engine dropped the sequence".into(),
                ))
            })
        },
    )
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

#[async_trait]
impl Provider for LocalChatProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn chat_prompt_tokens(&self, messages: &[aigw_models::openai::ChatMessage]) -> Option<u64> {
        let text = self.engine.codec().render_chat(messages, None).ok()?;
        self.text_prompt_tokens(&text)
    }

    fn text_prompt_tokens(&self, text: &str) -> Option<u64> {
        let ids = self.engine.codec().encode_prompt(text).ok()?;
        Some(ids.len() as u64)
    }

    async fn chat(
        &self,
        req: ChatCompletionRequest,
        _ctx: &CallContext,
    ) -> Result<ChatCompletionResponse, ProviderError> {
        let prompt = self.chat_prompt(&req)?;
        let params = chat_params(&req)?;
        let outs = gather_all(self.submit(&prompt, &params, req.n.unwrap_or(1))?).await?;
        let usage = usage_of(&outs);
        Ok(ChatCompletionResponse {
            id: new_id("chatcmpl"),
            object: "chat.completion".into(),
            created: unix_now(),
            model: req.model,
            choices: outs
                .into_iter()
                .enumerate()
                .map(|(i, g)| ChatChoice {
                    index: i as u32,
                    message: ChatMessage::text(Role::Assistant, g.text),
                    finish_reason: Some(finish_reason(g.finish)),
                    logprobs: None,
                    extra: Extra::new(),
                })
                .collect(),
            usage: Some(usage),
            system_fingerprint: Some("aigw-local".into()),
            extra: Extra::new(),
        })
    }

    async fn chat_stream(
        &self,
        req: ChatCompletionRequest,
        _ctx: &CallContext,
    ) -> Result<ChunkStream<ChatCompletionChunk>, ProviderError> {
        let prompt = self.chat_prompt(&req)?;
        let params = chat_params(&req)?;
        let n = req.n.unwrap_or(1);
        let rxs = self.submit(&prompt, &params, n)?;
        let (id, created, model) = (new_id("chatcmpl"), unix_now(), req.model);
        let chunk = move |choices: Vec<ChunkChoice>, usage: Option<Usage>| ChatCompletionChunk {
            id: id.clone(),
            object: "chat.completion.chunk".into(),
            created,
            model: model.clone(),
            choices,
            usage,
            system_fingerprint: Some("aigw-local".into()),
            extra: Extra::new(),
        };
        let choice = |index: u32, delta: ChatDelta, finish: Option<FinishReason>| ChunkChoice {
            index,
            delta,
            finish_reason: finish,
            logprobs: None,
            extra: Extra::new(),
        };
        // Every choice opens with its role, as OpenAI's streams do.
        let opening: Vec<_> = (0..n)
            .map(|i| {
                let delta = ChatDelta {
                    role: Some(Role::Assistant),
                    content: Some(String::new()),
                    ..ChatDelta::default()
                };
                Ok(chunk(vec![choice(i, delta, None)], None))
            })
            .collect();
        let remaining = Arc::new(AtomicU32::new(n));
        let left = remaining.clone();
        let prompt_tokens = prompt.len() as u64;
        let mut completion_total = 0;
        let events = merged(rxs).filter_map(move |(i, ev)| {
            let out = match ev {
                GenEvent::Delta(text) => {
                    let delta = ChatDelta {
                        content: Some(text),
                        ..ChatDelta::default()
                    };
                    vec![Ok(chunk(vec![choice(i, delta, None)], None))]
                }
                GenEvent::Finished {
                    reason,
                    completion_tokens,
                    ..
                } => {
                    completion_total += completion_tokens;
                    let now = remaining.fetch_sub(1, Ordering::Relaxed) - 1;
                    let mut out = vec![Ok(chunk(
                        vec![choice(i, ChatDelta::default(), Some(finish_reason(reason)))],
                        None,
                    ))];
                    if now == 0 {
                        let total = Usage::new(prompt_tokens, completion_total);
                        out.push(Ok(chunk(Vec::new(), Some(total))));
                    }
                    out
                }
                GenEvent::Failed(e) => vec![Err(ProviderError::Engine(e))],
            };
            std::future::ready(Some(futures::stream::iter(out)))
        });
        Ok(futures::stream::iter(opening)
            .chain(events.flatten())
            .chain(unfinished(left))
            .boxed())
    }

    async fn completion(
        &self,
        req: CompletionRequest,
        _ctx: &CallContext,
    ) -> Result<CompletionResponse, ProviderError> {
        let (prompts, params, n) = self.completion_inputs(&req)?;
        let mut choices = Vec::new();
        let mut prompt_tokens = 0;
        let mut completion_tokens = 0;
        for (p, (ids, text)) in prompts.iter().enumerate() {
            let outs = gather_all(self.submit(ids, &params, n)?).await?;
            prompt_tokens += ids.len() as u64;
            for (j, g) in outs.into_iter().enumerate() {
                completion_tokens += g.completion_tokens;
                let body = if req.echo == Some(true) {
                    format!("{text}{}", g.text)
                } else {
                    g.text
                };
                choices.push(CompletionChoice {
                    text: body,
                    index: (p * n as usize + j) as u32,
                    logprobs: None,
                    finish_reason: Some(finish_reason(g.finish)),
                    extra: Extra::new(),
                });
            }
        }
        Ok(CompletionResponse {
            id: new_id("cmpl"),
            object: "text_completion".into(),
            created: unix_now(),
            model: req.model,
            choices,
            usage: Some(Usage::new(prompt_tokens, completion_tokens)),
            system_fingerprint: Some("aigw-local".into()),
            extra: Extra::new(),
        })
    }

    async fn completion_stream(
        &self,
        req: CompletionRequest,
        _ctx: &CallContext,
    ) -> Result<ChunkStream<CompletionResponse>, ProviderError> {
        let (prompts, params, n) = self.completion_inputs(&req)?;
        if prompts.len() != 1 || req.echo == Some(true) {
            return Err(ProviderError::unsupported_param(
                "prompt",
                "Streaming from this local model takes a single prompt without echo.",
            ));
        }
        let (ids, _) = &prompts[0];
        let rxs = self.submit(ids, &params, n)?;
        let (id, created, model) = (new_id("cmpl"), unix_now(), req.model);
        let chunk =
            move |choices: Vec<CompletionChoice>, usage: Option<Usage>| CompletionResponse {
                id: id.clone(),
                object: "text_completion".into(),
                created,
                model: model.clone(),
                choices,
                usage,
                system_fingerprint: Some("aigw-local".into()),
                extra: Extra::new(),
            };
        let choice = |index: u32, text: String, finish: Option<FinishReason>| CompletionChoice {
            text,
            index,
            logprobs: None,
            finish_reason: finish,
            extra: Extra::new(),
        };
        let remaining = Arc::new(AtomicU32::new(n));
        let left = remaining.clone();
        let mut completion_tokens = 0;
        let prompt_tokens = ids.len() as u64;
        let events = merged(rxs).map(move |(i, ev)| {
            let out = match ev {
                GenEvent::Delta(text) => vec![Ok(chunk(vec![choice(i, text, None)], None))],
                GenEvent::Finished {
                    reason,
                    completion_tokens: c,
                    ..
                } => {
                    completion_tokens += c;
                    let now = remaining.fetch_sub(1, Ordering::Relaxed) - 1;
                    let mut out = vec![Ok(chunk(
                        vec![choice(i, String::new(), Some(finish_reason(reason)))],
                        None,
                    ))];
                    if now == 0 {
                        out.push(Ok(chunk(
                            Vec::new(),
                            Some(Usage::new(prompt_tokens, completion_tokens)),
                        )));
                    }
                    out
                }
                GenEvent::Failed(e) => vec![Err(ProviderError::Engine(e))],
            };
            futures::stream::iter(out)
        });
        Ok(events.flatten().chain(unfinished(left)).boxed())
    }

    async fn health(&self) -> Result<(), ProviderError> {
        Ok(())
    }
}

impl LocalChatProvider {
    /// Each prompt as (ids, text), the parameters and `n`.
    #[allow(clippy::type_complexity)]
    fn completion_inputs(
        &self,
        req: &CompletionRequest,
    ) -> Result<(Vec<(Vec<u32>, String)>, GenParams, u32), ProviderError> {
        if req.suffix.is_some() {
            return Err(ProviderError::unsupported_param(
                "suffix",
                "This local model does not support suffix (insertion).",
            ));
        }
        if req.logprobs.is_some() {
            return Err(ProviderError::unsupported_param(
                "logprobs",
                "This local model does not return log probabilities.",
            ));
        }
        let n = req.n.unwrap_or(1);
        if req.best_of.is_some_and(|b| b != n) {
            return Err(ProviderError::unsupported_param(
                "best_of",
                "This local model does not support best_of.",
            ));
        }
        let codec = self.engine.codec();
        let decode = |ids: &[u32]| {
            codec
                .decode(ids)
                .map_err(|e| ProviderError::Engine(e.to_string()))
        };
        let prompts = match &req.prompt {
            Prompt::Text(t) => vec![(self.encode(t)?, t.clone())],
            Prompt::Texts(ts) => ts
                .iter()
                .map(|t| Ok((self.encode(t)?, t.clone())))
                .collect::<Result<_, _>>()?,
            Prompt::Tokens(ids) => vec![(ids.clone(), decode(ids)?)],
            Prompt::TokenLists(lists) => lists
                .iter()
                .map(|ids| Ok((ids.clone(), decode(ids)?)))
                .collect::<Result<_, _>>()?,
        };
        let params = GenParams::new(
            req.temperature,
            req.top_p,
            req.seed,
            req.presence_penalty,
            req.frequency_penalty,
            req.logit_bias.as_ref(),
            &req.extra,
            Some(req.max_tokens.unwrap_or(16)),
            req.stop.as_ref(),
        )?;
        Ok((prompts, params, n))
    }
}

fn chat_params(req: &ChatCompletionRequest) -> Result<GenParams, ProviderError> {
    GenParams::new(
        req.temperature,
        req.top_p,
        req.seed,
        req.presence_penalty,
        req.frequency_penalty,
        req.logit_bias.as_ref(),
        &req.extra,
        req.max_output_tokens(),
        req.stop.as_ref(),
    )
}
