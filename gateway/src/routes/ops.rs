//! Operational endpoints: liveness, readiness and metrics.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use crate::health::ProbeResult;
use crate::state::AppState;

/// Liveness or readiness.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthStatus {
    /// `ok`, `ready` or `not_ready`.
    pub status: String,
    /// Per upstream provider: `up`, `unknown` or why it is down (readiness only).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub upstreams: BTreeMap<String, String>,
}

/// Liveness: the process is serving HTTP.
#[utoipa::path(get, path = "/health", tag = "Operations",
    responses((status = 200, body = HealthStatus)))]
pub async fn health() -> Json<HealthStatus> {
    Json(HealthStatus {
        status: "ok".into(),
        upstreams: BTreeMap::new(),
    })
}

/// Readiness: every configured upstream answered its last health probe.
#[utoipa::path(get, path = "/ready", tag = "Operations",
    responses(
        (status = 200, body = HealthStatus, description = "Ready to serve"),
        (status = 503, body = HealthStatus, description = "Some upstream is unreachable or not yet probed"),
    ))]
pub async fn ready(State(state): State<AppState>) -> Response {
    let snapshot = state.health().snapshot();
    let ready = snapshot.values().all(|r| *r == ProbeResult::Up);
    let upstreams = snapshot
        .into_iter()
        .map(|(name, r)| {
            let text = match r {
                ProbeResult::Up => "up".to_string(),
                ProbeResult::Unknown => "unknown".to_string(),
                ProbeResult::Down(why) => format!("down: {why}"),
            };
            (name, text)
        })
        .collect();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = HealthStatus {
        status: if ready { "ready" } else { "not_ready" }.into(),
        upstreams,
    };
    (status, Json(body)).into_response()
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "Operations",
    responses((status = 200, content_type = "text/plain; version=0.0.4", body = String)))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics().render(),
    )
        .into_response()
}

/// The load of the in-process models (queue depth, active sequences), for routing by
/// gateways in front of this worker.
#[derive(Debug, Serialize, ToSchema)]
pub struct LoadReport {
    /// One entry per local model.
    pub models: Vec<crate::local::ModelLoad>,
}

/// Load of the local engines.
#[utoipa::path(get, path = "/load", tag = "Operations",
    responses((status = 200, body = LoadReport)))]
pub async fn load(State(state): State<AppState>) -> Json<LoadReport> {
    Json(LoadReport {
        models: state
            .local_models()
            .iter()
            .map(crate::local::LocalModel::load)
            .collect(),
    })
}
