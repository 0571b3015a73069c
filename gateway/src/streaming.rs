//! Re-emitting an upstream stream to the client as SSE, chunk by chunk.
//!
//! Every chunk gets the alias as its `model`; the usage chunk the gateway always asks
//! upstreams for is passed on only when the client asked for it; an upstream failure after
//! the first byte becomes a final `data: {"error": …}` event; a clean end is `data: [DONE]`.
//! Duration, time to first token and tokens are recorded when the stream ends, including
//! when the client hangs up (the stream is dropped). A stream that breaks before its usage
//! chunk is still accounted: its completion tokens are estimated as the output chunks
//! received (one token each, as OpenAI-compatible servers send them), its prompt tokens as
//! unknown (0). The deployment that serves a stream stays counted in its load until the end,
//! and a break after the first chunk counts as a failure on its circuit.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use aigw_models::openai::{ChatCompletionChunk, CompletionResponse, Usage};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Serialize;

use crate::budget::Admission;
use crate::cache::Capture;
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::providers::ChunkStream;
use crate::ratelimit::TokenDebit;
use crate::routing::Served;
use crate::telemetry::{ModelLabel, Streaming};

/// What the streaming layer needs to know about a chunk type.
pub trait ChunkMeta: Serialize + Clone + Send + 'static {
    /// Replaces the upstream model name with the alias.
    fn set_model(&mut self, alias: &str);
    /// The usage carried by this chunk, if any.
    fn usage(&self) -> Option<&Usage>;
    /// Removes usage; returns whether anything else is left worth sending.
    fn strip_usage(&mut self) -> bool;
    /// Whether this chunk carries generated output (for time to first token).
    fn has_output(&self) -> bool;
}

impl ChunkMeta for ChatCompletionChunk {
    fn set_model(&mut self, alias: &str) {
        alias.clone_into(&mut self.model);
    }
    fn usage(&self) -> Option<&Usage> {
        self.usage.as_ref()
    }
    fn strip_usage(&mut self) -> bool {
        self.usage = None;
        !self.choices.is_empty()
    }
    fn has_output(&self) -> bool {
        self.choices.iter().any(|c| {
            c.delta.content.as_deref().is_some_and(|t| !t.is_empty())
                || c.delta.tool_calls.is_some()
                || c.delta.refusal.is_some()
        })
    }
}

impl ChunkMeta for CompletionResponse {
    fn set_model(&mut self, alias: &str) {
        alias.clone_into(&mut self.model);
    }
    fn usage(&self) -> Option<&Usage> {
        self.usage.as_ref()
    }
    fn strip_usage(&mut self) -> bool {
        self.usage = None;
        !self.choices.is_empty()
    }
    fn has_output(&self) -> bool {
        self.choices.iter().any(|c| !c.text.is_empty())
    }
}

/// A stream whose first chunk has arrived: the gateway is committed to this provider.
pub struct Committed<C> {
    first: C,
    rest: ChunkStream<C>,
    meter: StreamMeter,
    include_usage: bool,
    capture: Option<Capture<C>>,
}

impl<C: ChunkMeta> Committed<C> {
    /// Wraps the first chunk and the rest of the stream.
    pub fn new(first: C, rest: ChunkStream<C>, include_usage: bool, meter: StreamMeter) -> Self {
        Self {
            first,
            rest,
            meter,
            include_usage,
            capture: None,
        }
    }

    /// Hands the stream's chunks to `capture` when it ends cleanly (for the cache).
    pub fn capture_with(&mut self, capture: Capture<C>) {
        self.capture = Some(capture);
    }

    /// Settles `admission` when the stream ends: with its usage, or, when it broke or the
    /// client left first, with the reservation's prompt estimate and the output so far.
    pub fn settle_with(&mut self, admission: Admission) {
        self.meter.admission = Some(admission);
    }
}

struct EventLoop<C> {
    chunks: ChunkStream<C>,
    meter: StreamMeter,
    include_usage: bool,
    capture: Option<Capture<C>>,
    done: bool,
}

impl<C: ChunkMeta> EventLoop<C> {
    async fn next_event(&mut self) -> Option<Event> {
        while !self.done {
            match self.chunks.next().await {
                Some(Ok(mut chunk)) => {
                    self.meter.observe(&chunk);
                    chunk.set_model(&self.meter.alias);
                    if let Some(capture) = &mut self.capture {
                        // Usage chunks are kept whole: the cache replays them on request.
                        let size = serde_json::to_vec(&chunk).map_or(usize::MAX, |b| b.len());
                        if !capture.push(chunk.clone(), size) {
                            self.capture = None;
                        }
                    }
                    if !self.include_usage && chunk.usage().is_some() && !chunk.strip_usage() {
                        continue;
                    }
                    return Some(json_event(&chunk));
                }
                Some(Err(e)) => {
                    self.done = true;
                    self.capture = None;
                    self.meter.broke();
                    let err = GatewayError::from(e);
                    tracing::warn!(error = %err, model = %self.meter.alias, "stream failed after it started");
                    self.meter
                        .metrics
                        .errors
                        .with_label_values(&[self.meter.route, err.error_type()])
                        .inc();
                    return Some(Event::default().data(err.to_sse_data()));
                }
                None => {
                    self.done = true;
                    if let Some(capture) = self.capture.take() {
                        capture.finish().await;
                    }
                    return Some(Event::default().data("[DONE]"));
                }
            }
        }
        None
    }
}

fn json_event<C: Serialize>(chunk: &C) -> Event {
    match serde_json::to_string(chunk) {
        Ok(json) => Event::default().data(json),
        Err(e) => Event::default().data(GatewayError::Internal(e.to_string()).to_sse_data()),
    }
}

impl<C: ChunkMeta> IntoResponse for Committed<C> {
    fn into_response(self) -> Response {
        let alias = Arc::clone(&self.meter.alias);
        let chunks = futures::stream::once(std::future::ready(Ok(self.first)))
            .chain(self.rest)
            .boxed();
        let state = EventLoop {
            chunks,
            meter: self.meter,
            include_usage: self.include_usage,
            capture: self.capture,
            done: false,
        };
        let events = futures::stream::unfold(state, |mut st| async move {
            let event = st.next_event().await?;
            Some((Ok::<_, Infallible>(event), st))
        });
        sse_response(events, alias)
    }
}

fn sse_response(
    events: impl futures::Stream<Item = Result<Event, Infallible>> + Send + 'static,
    alias: Arc<str>,
) -> Response {
    let mut resp = Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response();
    resp.headers_mut()
        .insert("x-accel-buffering", http::HeaderValue::from_static("no"));
    resp.extensions_mut().insert(ModelLabel(alias));
    resp.extensions_mut().insert(Streaming);
    resp
}

/// A stored answer sent as a stream: its chunks (the usage chunk only when the client asked
/// for it), then `[DONE]`.
pub fn replay<C: ChunkMeta>(chunks: Vec<C>, include_usage: bool, alias: Arc<str>) -> Response {
    let events: Vec<Event> = chunks
        .into_iter()
        .filter_map(|mut chunk| {
            if !include_usage && chunk.usage().is_some() && !chunk.strip_usage() {
                return None;
            }
            Some(json_event(&chunk))
        })
        .chain(std::iter::once(Event::default().data("[DONE]")))
        .collect();
    sse_response(futures::stream::iter(events.into_iter().map(Ok)), alias)
}

/// Records a stream's duration, time to first token and tokens once it ends or is dropped.
pub struct StreamMeter {
    alias: Arc<str>,
    route: &'static str,
    metrics: Metrics,
    start: Instant,
    first_output: bool,
    usage: Option<Usage>,
    output_chunks: u64,
    served: Option<Served>,
    admission: Option<Admission>,
    tokens: Option<TokenDebit>,
}

impl StreamMeter {
    /// Starts metering a stream for `alias` on `route`, timed from `start`.
    pub fn new(alias: Arc<str>, route: &'static str, metrics: Metrics, start: Instant) -> Self {
        Self {
            alias,
            route,
            metrics,
            start,
            first_output: false,
            usage: None,
            output_chunks: 0,
            served: None,
            admission: None,
            tokens: None,
        }
    }

    /// Holds the serving deployment (its load count) for the stream's life.
    pub fn served_by(mut self, served: Served) -> Self {
        self.served = Some(served);
        self
    }

    /// Debits the stream's tokens from its key's rate limit when it ends.
    pub fn debit_tokens(mut self, debit: Option<TokenDebit>) -> Self {
        self.tokens = debit;
        self
    }

    /// The stream broke after it was committed: a failure of the serving deployment.
    fn broke(&self) {
        if let Some(s) = &self.served {
            let d = &s.deployment;
            d.breaker.record_failure(Instant::now());
            self.metrics
                .deployment_failures
                .with_label_values(&[&*d.name, "mid_stream"])
                .inc();
        }
    }

    fn observe<C: ChunkMeta>(&mut self, chunk: &C) {
        if chunk.has_output() {
            self.output_chunks += 1;
        }
        if !self.first_output && chunk.has_output() {
            self.first_output = true;
            self.metrics
                .time_to_first_token
                .with_label_values(&[&*self.alias])
                .observe(self.start.elapsed().as_secs_f64());
        }
        if let Some(u) = chunk.usage() {
            self.usage = Some(u.clone());
        }
    }
}

impl Drop for StreamMeter {
    fn drop(&mut self) {
        self.metrics
            .request_duration
            .with_label_values(&[self.route, &*self.alias])
            .observe(self.start.elapsed().as_secs_f64());
        self.metrics.in_flight.dec();
        let (prompt, completion) = match &self.usage {
            Some(u) => (u.prompt_tokens, u.completion_tokens),
            None => (0, self.output_chunks),
        };
        if prompt + completion > 0 {
            self.metrics.record_tokens(&self.alias, prompt, completion);
        }
        if let Some(debit) = &self.tokens {
            debit.debit(prompt + completion);
        }
        if let Some(admission) = self.admission.take() {
            let actual = match &self.usage {
                Some(u) => admission.amount(u),
                None => admission.partial(self.output_chunks),
            };
            admission.settle_later(actual);
        }
    }
}
