//! The request flow, top to bottom: validate → route → call the provider → meter → reply.
//!
//! Streams are committed only once their first chunk has arrived: an upstream that fails
//! before producing anything yields an ordinary error response, never a broken stream.
//! Later issues insert session, rate limit, budget and cache steps here, in that order.

use std::sync::Arc;
use std::time::Instant;

use aigw_models::openai::{
    ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse, CompletionRequest,
    CompletionResponse, EmbeddingRequest, EmbeddingResponse, EmbeddingVector, InvalidParam, Usage,
};
use futures::StreamExt;
use futures::future::BoxFuture;
use serde::Serialize;

use crate::auth::Principal;
use crate::error::GatewayError;
use crate::providers::{
    AudioRequest, AudioResponse, CallContext, ChunkStream, Provider, ProviderError,
};
use crate::routing::Route;
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

/// A request that generates text (chat or legacy completion): what the pipeline needs to
/// know to run either through the same steps.
pub trait Generation: Sized + Send + 'static {
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

/// `POST /v1/chat/completions` and `POST /v1/completions`.
pub async fn generate<G: Generation>(
    ctx: &RequestCtx<'_>,
    route: &Route,
    mut req: G,
) -> Result<Reply<G::Full, G::Chunk>, GatewayError> {
    req.validate().map_err(invalid)?;
    req.set_model(&route.upstream_model);
    let provider = &*route.provider;
    if let Some(include_usage) = req.stream_usage() {
        let stream = timed(ctx, route, G::call_stream(provider, req, &ctx.call)).await?;
        let committed = commit(ctx, route, stream, include_usage).await?;
        return Ok(Reply::Stream(Box::new(committed)));
    }
    let mut resp = timed(ctx, route, G::call(provider, req, &ctx.call)).await?;
    if let Some(u) = G::relabel(&mut resp, &route.alias) {
        ctx.state
            .metrics()
            .record_tokens(&route.alias, u.prompt_tokens, u.completion_tokens);
    }
    Ok(Reply::Full(resp))
}

/// `POST /v1/embeddings`: the vectors come back in the encoding the client asked for,
/// whatever the upstream produced.
pub async fn embeddings(
    ctx: &RequestCtx<'_>,
    route: &Route,
    mut req: EmbeddingRequest,
) -> Result<EmbeddingResponse, GatewayError> {
    req.validate().map_err(invalid)?;
    req.model.clone_from(&route.upstream_model);
    let format = req.encoding_format.unwrap_or_default();
    let mut resp = timed(ctx, route, route.provider.embeddings(req, &ctx.call)).await?;
    resp.model = route.alias.to_string();
    for item in &mut resp.data {
        let vector = std::mem::replace(&mut item.embedding, EmbeddingVector::Float(Vec::new()));
        item.embedding = vector.into_format(format).map_err(|e| {
            GatewayError::Provider(ProviderError::InvalidResponse(format!(
                "embedding {} is not valid base64: {e}",
                item.index
            )))
        })?;
    }
    ctx.state
        .metrics()
        .record_tokens(&route.alias, resp.usage.prompt_tokens, 0);
    Ok(resp)
}

/// `POST /v1/audio/transcriptions` and `/v1/audio/translations`.
pub async fn audio(
    ctx: &RequestCtx<'_>,
    route: &Route,
    mut req: AudioRequest,
) -> Result<AudioResponse, GatewayError> {
    if req.file.is_empty() {
        return Err(GatewayError::bad_request(
            "The uploaded file is empty.",
            Some("file".into()),
        ));
    }
    req.model.clone_from(&route.upstream_model);
    timed(ctx, route, route.provider.audio(req, &ctx.call)).await
}

/// Runs one provider call, charging its duration to the upstream clock.
async fn timed<T>(
    ctx: &RequestCtx<'_>,
    route: &Route,
    call: impl Future<Output = Result<T, ProviderError>>,
) -> Result<T, GatewayError> {
    let t0 = Instant::now();
    let result = call.await;
    let took = t0.elapsed();
    ctx.timing.add_upstream(took);
    ctx.state
        .metrics()
        .upstream_duration
        .with_label_values(&[route.provider.name(), &route.alias])
        .observe(took.as_secs_f64());
    result.map_err(GatewayError::from)
}

/// Waits for the first chunk; an error before it is an ordinary error response.
async fn commit<C: ChunkMeta>(
    ctx: &RequestCtx<'_>,
    route: &Route,
    mut stream: ChunkStream<C>,
    include_usage: bool,
) -> Result<Committed<C>, GatewayError> {
    let t0 = Instant::now();
    let first = stream.next().await;
    ctx.timing.add_upstream(t0.elapsed());
    match first {
        None => Err(GatewayError::Provider(ProviderError::InvalidResponse(
            "the stream ended before its first chunk".into(),
        ))),
        Some(Err(e)) => Err(e.into()),
        Some(Ok(first)) => Ok(Committed::new(
            first,
            stream,
            include_usage,
            StreamMeter::new(
                Arc::clone(&route.alias),
                ctx.route,
                ctx.state.metrics().clone(),
                ctx.start,
            ),
        )),
    }
}
