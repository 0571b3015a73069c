//! Operational endpoints: liveness, readiness, metrics and the local engines' load.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use std::time::Instant;

use crate::breaker::CircuitState;
use crate::health::{ProbeResult, usable};
use crate::state::AppState;

/// Liveness or readiness.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthStatus {
    /// `ok`, `ready` or `not_ready`.
    pub status: String,
    /// Readiness only: each alias and its deployments.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub models: BTreeMap<String, ModelReadiness>,
    /// Readiness only: where shared state lives and whether it answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<StateReadiness>,
}

/// The shared state (budgets, rate limits, cache, events) as readiness sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct StateReadiness {
    /// `memory` or `redis`.
    pub backend: String,
    /// Whether it answered now (memory: always).
    pub reachable: bool,
    /// Why not, when it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Whether one alias can be served.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelReadiness {
    /// At least one deployment passed its last health probe and has no open circuit.
    pub ready: bool,
    /// Per deployment: `up`, `unknown` (not probed yet), `down: REASON` or `circuit open`.
    pub deployments: BTreeMap<String, String>,
}

/// Liveness: the process is serving HTTP.
#[utoipa::path(get, path = "/health", tag = "Operations",
    responses((status = 200, body = HealthStatus)))]
pub async fn health() -> Json<HealthStatus> {
    Json(HealthStatus {
        status: "ok".into(),
        models: BTreeMap::new(),
        state: None,
    })
}

/// Readiness: every model alias still has a deployment that passed its last health probe
/// and whose circuit is not open, and, when budgets are configured, the shared state
/// answers (budget checks fail closed without it; the cache and rate limits fail open).
#[utoipa::path(get, path = "/ready", tag = "Operations",
    responses(
        (status = 200, body = HealthStatus, description = "Every alias can be served"),
        (status = 503, body = HealthStatus, description = "Some alias has no usable deployment, or budgets are configured and the shared state does not answer"),
    ))]
pub async fn ready(State(state): State<AppState>) -> Response {
    let now = Instant::now();
    let mut models = BTreeMap::new();
    for route in state.routes().all() {
        let mut deployments = BTreeMap::new();
        let mut ready = false;
        for d in route.deployments() {
            ready |= usable(d, now);
            let text = match (d.health(), d.breaker.state(now)) {
                (ProbeResult::Down(why), _) => format!("down: {why}"),
                (_, CircuitState::Open) => "circuit open".to_string(),
                (ProbeResult::Up, _) => "up".to_string(),
                (ProbeResult::Unknown, _) => "unknown".to_string(),
            };
            deployments.insert(d.name.to_string(), text);
        }
        models.insert(
            route.alias.to_string(),
            ModelReadiness { ready, deployments },
        );
    }
    let shared = match state.redis() {
        None => StateReadiness {
            backend: "memory".into(),
            reachable: true,
            error: None,
        },
        Some(redis) => {
            let answer = redis.ping().await;
            state.metrics().state_up.set(i64::from(answer.is_ok()));
            if answer.is_err() {
                state
                    .metrics()
                    .state_errors
                    .with_label_values(&["ping"])
                    .inc();
            }
            StateReadiness {
                backend: "redis".into(),
                reachable: answer.is_ok(),
                error: answer.err().map(|e| e.to_string()),
            }
        }
    };
    let budgets_need_state = !state.config().budgets.policies.is_empty();
    let ready = models.values().all(|m| m.ready) && (shared.reachable || !budgets_need_state);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = HealthStatus {
        status: if ready { "ready" } else { "not_ready" }.into(),
        models,
        state: Some(shared),
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
