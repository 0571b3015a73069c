//! The request flow, top to bottom: validate → route → call deployments until one answers →
//! meter → reply.
//!
//! [`attempt`] walks a route's plan (see [`crate::routing`]): a deployment whose circuit is
//! open or which is at `max_in_flight` is skipped; a connect error, timeout, 408/429/5xx,
//! invalid answer or overloaded engine moves on to the next deployment; a client error
//! (other 4xx, a rejected parameter) is passed through at once, since another deployment
//! would refuse it too. The route's deadline bounds the whole walk. Streams are committed
//! only once their first chunk has arrived (within the deployment's first-token timeout):
//! everything before that can still fall back; nothing after it does.
//! Around it (see `routes::generate`): the rate limits (middleware), the session's budget
//! and downgrade, the response cache, then the reservation this pipeline's answer settles.

use std::sync::Arc;
use std::time::Instant;

use aigw_models::openai::{
    ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse, CompletionRequest,
    CompletionResponse, EmbeddingRequest, EmbeddingResponse, EmbeddingVector, InvalidParam, Prompt,
    Usage,
};
use futures::StreamExt;
use futures::future::BoxFuture;
use serde::Serialize;

use crate::auth::Principal;
use crate::error::{AttemptFailure, FailReason, GatewayError};
use crate::providers::{
    AudioRequest, AudioResponse, CallContext, ChunkStream, Provider, ProviderError,
};
use crate::routing::{Deployment, Route, Served};
use crate::state::AppState;
use crate::streaming::{ChunkMeta, Committed, StreamMeter};
use crate::telemetry::RequestTiming;

/// The per-request facts every step needs.
pub struct RequestCtx<'a> {
    /// Server state.
    pub state: &'a AppState,
    /// Who is calling.
    pub principal: &'a Principal,
    /// Upstream time accounting for the overhead header.
    pub timing: &'a RequestTiming,
    /// Forwarded to providers.
    pub call: CallContext,
    /// When the handler started.
    pub start: Instant,
    /// The route template, as metrics label it.
    pub route: &'static str,
    /// Where the request's tokens are debited (its key's tokens per minute).
    pub tokens: Option<crate::ratelimit::TokenDebit>,
}

/// A finished answer or a committed stream.
pub enum Reply<T, C> {
    /// The whole answer.
    Full(T),
    /// A stream whose first chunk has arrived.
    Stream(Box<Committed<C>>),
}

fn invalid(e: InvalidParam) -> GatewayError {
    GatewayError::bad_request(e.message, Some(e.param))
}

/// What a budget needs to know of a generation request.
pub trait BudgetHint {
    /// The `user` field.
    fn user(&self) -> Option<&str>;
    /// The requested output limit.
    fn max_output(&self) -> Option<u32>;
    /// Choices requested (`n`, times prompts for legacy completions).
    fn choices(&self) -> u32;
    /// The exact prompt tokens, if `provider` can count them.
    fn prompt_tokens(&self, provider: &dyn Provider) -> Option<u64>;
}

impl BudgetHint for ChatCompletionRequest {
    fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }
    fn max_output(&self) -> Option<u32> {
        self.max_output_tokens()
    }
    fn choices(&self) -> u32 {
        self.n.unwrap_or(1).max(1)
    }
    fn prompt_tokens(&self, provider: &dyn Provider) -> Option<u64> {
        provider.chat_prompt_tokens(&self.messages)
    }
}

impl BudgetHint for CompletionRequest {
    fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }
    fn max_output(&self) -> Option<u32> {
        self.max_tokens
    }
    fn choices(&self) -> u32 {
        self.n.unwrap_or(1).max(1) * u32::try_from(self.prompt.len().max(1)).unwrap_or(u32::MAX)
    }
    fn prompt_tokens(&self, provider: &dyn Provider) -> Option<u64> {
        // Every prompt is generated for `n` times; each counts its own prompt.
        let n = u64::from(self.n.unwrap_or(1).max(1));
        let total = match &self.prompt {
            Prompt::Text(t) => provider.text_prompt_tokens(t)?,
            Prompt::Texts(v) => v
                .iter()
                .map(|t| provider.text_prompt_tokens(t))
                .sum::<Option<u64>>()?,
            Prompt::Tokens(t) => t.len() as u64,
            Prompt::TokenLists(v) => v.iter().map(|t| t.len() as u64).sum(),
        };
        Some(total * n)
    }
}

/// A request that generates text (chat or legacy completion): what the pipeline needs to
/// know to run either through the same steps.
pub trait Generation: BudgetHint + Serialize + Sized + Clone + Send + Sync + 'static {
    /// The whole answer.
    type Full: Serialize + Send;
    /// One stream chunk.
    type Chunk: ChunkMeta;

    /// The requested alias.
    fn model(&self) -> &str;
    /// Checks the semantic rules the types do not enforce.
    fn validate(&self) -> Result<(), InvalidParam>;
    /// Points the request at the provider's own model name.
    fn set_model(&mut self, upstream_model: &str);
    /// `None` for a plain request; for a stream, whether the client wants a usage chunk.
    fn stream_usage(&self) -> Option<bool>;
    /// Names the alias in the answer and returns its usage.
    fn relabel<'a>(full: &'a mut Self::Full, alias: &str) -> Option<&'a Usage>;
    /// Calls the provider for the whole answer.
    fn call<'a>(
        provider: &'a dyn Provider,
        req: Self,
        ctx: &'a CallContext,
    ) -> BoxFuture<'a, Result<Self::Full, ProviderError>>;
    /// Calls the provider for a stream.
    fn call_stream<'a>(
        provider: &'a dyn Provider,
        req: Self,
        ctx: &'a CallContext,
    ) -> BoxFuture<'a, Result<ChunkStream<Self::Chunk>, ProviderError>>;
}

/// The two generation requests differ only in their types and the provider methods they call.
macro_rules! generation {
    ($req:ty, $full:ty, $chunk:ty, $call:ident, $call_stream:ident) => {
        impl Generation for $req {
            type Full = $full;
            type Chunk = $chunk;

            fn model(&self) -> &str {
                &self.model
            }
            fn validate(&self) -> Result<(), InvalidParam> {
                <$req>::validate(self)
            }
            fn set_model(&mut self, upstream_model: &str) {
                upstream_model.clone_into(&mut self.model);
            }
            fn stream_usage(&self) -> Option<bool> {
                self.is_stream().then(|| self.wants_stream_usage())
            }
            fn relabel<'a>(full: &'a mut Self::Full, alias: &str) -> Option<&'a Usage> {
                alias.clone_into(&mut full.model);
                full.usage.as_ref()
            }
            fn call<'a>(
                provider: &'a dyn Provider,
                req: Self,
                ctx: &'a CallContext,
            ) -> BoxFuture<'a, Result<Self::Full, ProviderError>> {
                provider.$call(req, ctx)
            }
            fn call_stream<'a>(
                provider: &'a dyn Provider,
                req: Self,
                ctx: &'a CallContext,
            ) -> BoxFuture<'a, Result<ChunkStream<Self::Chunk>, ProviderError>> {
                provider.$call_stream(req, ctx)
            }
        }
    };
}

generation!(
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionChunk,
    chat,
    chat_stream
);
generation!(
    CompletionRequest,
    CompletionResponse,
    CompletionResponse,
    completion,
    completion_stream
);

/// A pipeline result with the routing facts the response headers report.
pub struct Routed<T> {
    /// The answer or the error.
    pub result: Result<T, GatewayError>,
    /// The deployment that answered (successfully or with a client error).
    pub deployment: Option<Arc<str>>,
    /// Deployments called.
    pub attempts: usize,
}

impl<T> Routed<T> {
    /// Transforms the answer, keeping the routing facts.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Routed<U> {
        Routed {
            result: self.result.map(f),
            deployment: self.deployment,
            attempts: self.attempts,
        }
    }

    /// An error before any deployment was called.
    fn early(e: GatewayError) -> Self {
        Self {
            result: Err(e),
            deployment: None,
            attempts: 0,
        }
    }
}

/// A failed walk over a route's deployments.
struct Failed {
    error: GatewayError,
    deployment: Option<Arc<str>>,
    attempts: usize,
}

impl<T> Routed<T> {
    fn from_parts(result: Result<(T, usize, Arc<str>), Failed>) -> Self {
        match result {
            Ok((value, attempts, deployment)) => Self {
                result: Ok(value),
                deployment: Some(deployment),
                attempts,
            },
            Err(f) => Self {
                result: Err(f.error),
                deployment: f.deployment,
                attempts: f.attempts,
            },
        }
    }
}

/// What to do after a deployment failed.
enum Next {
    /// Try the next deployment; this one's circuit counts a failure.
    Retry,
    /// The request itself is at fault: answer with this error.
    PassThrough,
    /// This deployment cannot serve this kind of request; try the next, no circuit change.
    Skip,
}

fn classify(e: &ProviderError) -> Next {
    match e {
        ProviderError::Connect(_)
        | ProviderError::Timeout
        | ProviderError::InvalidResponse(_)
        | ProviderError::Transport(_)
        | ProviderError::Overloaded(_)
        | ProviderError::Engine(_) => Next::Retry,
        ProviderError::Status { status, .. }
            if status.is_server_error() || matches!(status.as_u16(), 408 | 429) =>
        {
            Next::Retry
        }
        // What this deployment cannot do (a parameter Anthropic lacks, a prompt longer than a
        // small local model's context) another may: skip it, without blaming its circuit.
        ProviderError::Rejected { code, .. }
            if matches!(*code, "unsupported_parameter" | "context_length_exceeded") =>
        {
            Next::Skip
        }
        ProviderError::Status { .. } | ProviderError::Rejected { .. } => Next::PassThrough,
        ProviderError::Unsupported(_) => Next::Skip,
    }
}

/// Calls the route's deployments in plan order until one answers; see the module docs.
async fn attempt<T, F, Fut>(
    ctx: &RequestCtx<'_>,
    route: &Route,
    mut call: F,
) -> Result<(T, Served), Failed>
where
    F: FnMut(Arc<Deployment>, CallContext) -> Fut,
    Fut: Future<Output = Result<T, ProviderError>>,
{
    let metrics = ctx.state.metrics();
    let deadline = ctx.start + route.deadline;
    let mut failures: Vec<AttemptFailure> = Vec::new();
    let mut attempts = 0;
    let skip = |d: &Deployment, failures: &mut Vec<AttemptFailure>, reason: FailReason| {
        metrics
            .deployment_attempts
            .with_label_values(&[&*d.name, "skipped"])
            .inc();
        metrics
            .deployment_failures
            .with_label_values(&[&*d.name, reason.label()])
            .inc();
        failures.push(AttemptFailure {
            deployment: Arc::clone(&d.name),
            reason,
        });
    };
    for d in route.plan() {
        if attempts >= route.max_attempts {
            break;
        }
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let Some(permit) = d.breaker.try_acquire(now) else {
            let retry_in = d.breaker.retry_in(now);
            skip(&d, &mut failures, FailReason::CircuitOpen { retry_in });
            continue;
        };
        let Some(in_flight) = d.begin() else {
            drop(permit);
            skip(&d, &mut failures, FailReason::AtCapacity);
            continue;
        };
        attempts += 1;
        let call_ctx = d.call_context(&ctx.call);
        let result = tokio::time::timeout(deadline - now, call(Arc::clone(&d), call_ctx))
            .await
            .unwrap_or(Err(ProviderError::Timeout));
        let done = Instant::now();
        let took = done - now;
        ctx.timing.add_upstream(took);
        metrics
            .upstream_duration
            .with_label_values(&[d.provider.name(), &route.alias])
            .observe(took.as_secs_f64());
        let outcome_label;
        let result = match result {
            Ok(value) => {
                permit.success(done);
                d.observe_latency(took);
                metrics
                    .deployment_latency
                    .with_label_values(&[&*d.name])
                    .observe(took.as_secs_f64());
                outcome_label = "success";
                Some(Ok(value))
            }

            Err(e) => match classify(&e) {
                Next::Retry => {
                    outcome_label = "failure";
                    let retry_after = match &e {
                        ProviderError::Status { retry_after, .. } => *retry_after,
                        _ => None,
                    };
                    permit.failure(retry_after, done);
                    let reason = FailReason::Provider(e);
                    metrics
                        .deployment_failures
                        .with_label_values(&[&*d.name, reason.label()])
                        .inc();
                    tracing::info!(deployment = %d.name, model = %route.alias, reason = %reason.describe(), "attempt failed; trying the next deployment");
                    failures.push(AttemptFailure {
                        deployment: Arc::clone(&d.name),
                        reason,
                    });
                    None
                }
                Next::Skip => {
                    outcome_label = "skipped";
                    drop(permit);
                    failures.push(AttemptFailure {
                        deployment: Arc::clone(&d.name),
                        reason: FailReason::Provider(e),
                    });
                    None
                }
                Next::PassThrough => {
                    outcome_label = "client_error";
                    permit.success(done);
                    Some(Err(e))
                }
            },
        };
        metrics
            .deployment_attempts
            .with_label_values(&[&*d.name, outcome_label])
            .inc();
        metrics
            .deployment_circuit
            .with_label_values(&[&*d.name])
            .set(d.breaker.state(done).gauge());
        match result {
            Some(Ok(value)) => {
                return Ok((
                    value,
                    Served {
                        deployment: d,
                        attempts,
                        in_flight,
                    },
                ));
            }
            Some(Err(e)) => {
                return Err(Failed {
                    error: e.into(),
                    deployment: Some(Arc::clone(&d.name)),
                    attempts,
                });
            }
            None => {}
        }
    }
    Err(Failed {
        error: aggregate(&route.alias, failures),
        deployment: None,
        attempts,
    })
}

/// The error of a walk that found no deployment: the one failure itself when there was a
/// single one (or when every deployment lacked the endpoint or a parameter: a 400), else
/// the list.
fn aggregate(alias: &str, mut failures: Vec<AttemptFailure>) -> GatewayError {
    let unsupported = |f: &AttemptFailure| {
        matches!(
            f.reason,
            FailReason::Provider(ProviderError::Unsupported(_) | ProviderError::Rejected { .. })
        )
    };
    let single = failures.len() == 1 && matches!(failures[0].reason, FailReason::Provider(_));
    if (single || (!failures.is_empty() && failures.iter().all(unsupported)))
        && let FailReason::Provider(e) = failures.swap_remove(0).reason
    {
        return e.into();
    }

    GatewayError::AllAttemptsFailed {
        alias: alias.to_string(),
        failures,
    }
}

/// Waits for a stream's first chunk, within the deployment's first-token timeout.
async fn first_chunk<C>(
    stream: impl Future<Output = Result<ChunkStream<C>, ProviderError>>,
    first_token_timeout: Option<std::time::Duration>,
) -> Result<(C, ChunkStream<C>), ProviderError> {
    let peek = async {
        let mut stream = stream.await?;
        match stream.next().await {
            None => Err(ProviderError::InvalidResponse(
                "the stream ended before its first chunk".into(),
            )),
            Some(Err(e)) => Err(e),
            Some(Ok(first)) => Ok((first, stream)),
        }
    };
    match first_token_timeout {
        Some(limit) => tokio::time::timeout(limit, peek)
            .await
            .unwrap_or(Err(ProviderError::Timeout)),
        None => peek.await,
    }
}

/// `POST /v1/chat/completions` and `POST /v1/completions`.
pub async fn generate<G: Generation>(
    ctx: &RequestCtx<'_>,
    route: &Route,
    req: G,
) -> Routed<Reply<G::Full, G::Chunk>> {
    if let Err(e) = req.validate() {
        return Routed::early(invalid(e));
    }
    if let Some(include_usage) = req.stream_usage() {
        let result = attempt(ctx, route, |d, call| {
            let mut req = req.clone();
            req.set_model(&d.upstream_model);
            async move {
                first_chunk(
                    G::call_stream(&*d.provider, req, &call),
                    d.first_token_timeout,
                )
                .await
            }
        })
        .await
        .map(|((first, rest), served)| {
            let (attempts, name) = (served.attempts, Arc::clone(&served.deployment.name));
            let meter = StreamMeter::new(
                Arc::clone(&route.alias),
                ctx.route,
                ctx.state.metrics().clone(),
                ctx.start,
            )
            .served_by(served)
            .debit_tokens(ctx.tokens.clone());
            let committed = Committed::new(first, rest, include_usage, meter);
            (Reply::Stream(Box::new(committed)), attempts, name)
        });
        return Routed::from_parts(result);
    }
    let result = attempt(ctx, route, |d, call| {
        let mut req = req.clone();
        req.set_model(&d.upstream_model);
        async move { G::call(&*d.provider, req, &call).await }
    })
    .await
    .map(|(mut resp, served)| {
        if let Some(u) = G::relabel(&mut resp, &route.alias) {
            ctx.state
                .metrics()
                .record_tokens(&route.alias, u.prompt_tokens, u.completion_tokens);
            if let Some(debit) = &ctx.tokens {
                debit.debit(u.prompt_tokens + u.completion_tokens);
            }
        }
        (
            Reply::Full(resp),
            served.attempts,
            Arc::clone(&served.deployment.name),
        )
    });
    Routed::from_parts(result)
}

/// `POST /v1/embeddings`: the vectors come back in the encoding the client asked for,
/// whatever the upstream produced.
pub async fn embeddings(
    ctx: &RequestCtx<'_>,
    route: &Route,
    req: EmbeddingRequest,
) -> Routed<EmbeddingResponse> {
    if let Err(e) = req.validate() {
        return Routed::early(invalid(e));
    }
    let format = req.encoding_format.unwrap_or_default();
    let result = attempt(ctx, route, |d, call| {
        let mut req = req.clone();
        req.model.clone_from(&d.upstream_model);
        async move { d.provider.embeddings(req, &call).await }
    })
    .await;
    let (mut resp, served) = match result {
        Ok(ok) => ok,
        Err(f) => return Routed::from_parts(Err(f)),
    };
    let served_by = (served.attempts, Arc::clone(&served.deployment.name));
    resp.model = route.alias.to_string();
    for item in &mut resp.data {
        let vector = std::mem::replace(&mut item.embedding, EmbeddingVector::Float(Vec::new()));
        match vector.into_format(format) {
            Ok(v) => item.embedding = v,
            Err(e) => {
                return Routed {
                    result: Err(GatewayError::Provider(ProviderError::InvalidResponse(
                        format!("embedding {} is not valid base64: {e}", item.index),
                    ))),
                    deployment: Some(served_by.1),
                    attempts: served_by.0,
                };
            }
        }
    }
    ctx.state
        .metrics()
        .record_tokens(&route.alias, resp.usage.prompt_tokens, 0);
    if let Some(debit) = &ctx.tokens {
        debit.debit(resp.usage.prompt_tokens);
    }
    Routed::from_parts(Ok((resp, served_by.0, served_by.1)))
}

/// `POST /v1/audio/transcriptions` and `/v1/audio/translations`.
pub async fn audio(
    ctx: &RequestCtx<'_>,
    route: &Route,
    req: AudioRequest,
) -> Routed<AudioResponse> {
    if req.file.is_empty() {
        return Routed::early(GatewayError::bad_request(
            "The uploaded file is empty.",
            Some("file".into()),
        ));
    }
    let result = attempt(ctx, route, |d, call| {
        let mut req = req.clone();
        req.model.clone_from(&d.upstream_model);
        async move { d.provider.audio(req, &call).await }
    })
    .await
    .map(|(resp, served)| {
        if let Some(secs) = resp.audio_secs.filter(|s| s.is_finite() && *s > 0.0) {
            ctx.state
                .metrics()
                .audio_seconds
                .with_label_values(&[&route.alias])
                .inc_by(secs);
        }
        (resp, served.attempts, Arc::clone(&served.deployment.name))
    });
    Routed::from_parts(result)
}
