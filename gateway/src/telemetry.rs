//! Logs, request timing and per-request metrics.
//!
//! [`observe`] wraps every route: it times the request, subtracts the time spent waiting on
//! upstreams (recorded by the pipeline in [`RequestTiming`]) to set `x-aigw-overhead-ms`, and
//! counts the request by route, model and status.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::HeaderValue;

use crate::error::ErrorKind;
use crate::state::AppState;

/// Name of the header carrying the gateway's own time.
pub const OVERHEAD_HEADER: &str = "x-aigw-overhead-ms";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global tracing subscriber (`RUST_LOG` filters; default `info`).
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
    if let Err(e) = result {
        eprintln!("tracing already initialised: {e}");
    }
}

/// Time spent waiting on upstreams during one request; shared by the pipeline and
/// [`observe`] through request extensions.
#[derive(Debug, Clone, Default)]
pub struct RequestTiming {
    upstream_nanos: Arc<AtomicU64>,
}

impl RequestTiming {
    /// Adds time spent waiting on an upstream.
    pub fn add_upstream(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.upstream_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Total time spent waiting on upstreams so far.
    pub fn upstream(&self) -> Duration {
        Duration::from_nanos(self.upstream_nanos.load(Ordering::Relaxed))
    }
}

/// The model alias a response was for, put in response extensions by handlers.
#[derive(Debug, Clone)]
pub struct ModelLabel(pub Arc<str>);

/// Marks a streamed response: its duration and in-flight count are settled when the
/// stream ends, not when the headers go out.
#[derive(Debug, Clone, Copy)]
pub struct Streaming;

/// Middleware: timing, overhead header and request metrics.
pub async fn observe(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let timing = RequestTiming::default();
    req.extensions_mut().insert(timing.clone());
    let metrics = state.metrics();
    metrics.in_flight.inc();

    let mut resp = next.run(req).await;

    let elapsed = start.elapsed();
    let overhead = elapsed.saturating_sub(timing.upstream());
    let ms = format!("{:.3}", overhead.as_secs_f64() * 1000.0);
    if let Ok(v) = HeaderValue::from_str(&ms) {
        resp.headers_mut().insert(OVERHEAD_HEADER, v);
    }
    let model = resp
        .extensions()
        .get::<ModelLabel>()
        .map(|m| m.0.clone())
        .unwrap_or_else(|| "-".into());
    let status = resp.status();
    metrics
        .requests
        .with_label_values(&[route.as_str(), &model, status.as_str()])
        .inc();
    metrics
        .overhead
        .with_label_values(&[route.as_str()])
        .observe(overhead.as_secs_f64());
    if let Some(kind) = resp.extensions().get::<ErrorKind>() {
        metrics
            .errors
            .with_label_values(&[route.as_str(), kind.0])
            .inc();
    }
    if resp.extensions().get::<Streaming>().is_none() {
        metrics
            .request_duration
            .with_label_values(&[route.as_str(), &model])
            .observe(elapsed.as_secs_f64());
        metrics.in_flight.dec();
    }
    tracing::debug!(%route, %model, status = status.as_u16(), elapsed_ms = elapsed.as_secs_f64() * 1000.0, "served");
    resp
}
