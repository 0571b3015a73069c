//! Active health checks: every deployment is probed on its own interval (its provider's
//! health endpoint, or the deployment's `health_path`); the results steer routing (a
//! deployment that failed its probe is tried only as a last resort) and `/ready`.

use std::sync::Arc;
use std::time::Instant;

use crate::breaker::CircuitState;
use crate::metrics::Metrics;
use crate::routing::{Deployment, ModelRoutes};

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeResult {
    /// Not probed yet.
    Unknown,
    /// Reachable and accepting our credentials.
    Up,
    /// Why it is not usable.
    Down(String),
}

/// Whether a deployment can take traffic now: its last probe passed and its circuit is not
/// open.
pub fn usable(d: &Deployment, now: Instant) -> bool {
    d.health() == ProbeResult::Up && d.breaker.state(now) != CircuitState::Open
}

/// Probes one deployment and records the result.
pub async fn probe(d: &Deployment, metrics: &Metrics) {
    let result = match d.provider.probe(d.health_path.as_deref()).await {
        Ok(()) => ProbeResult::Up,
        Err(e) => ProbeResult::Down(e.to_string()),
    };
    metrics
        .deployment_up
        .with_label_values(&[&*d.name])
        .set(i64::from(result == ProbeResult::Up));
    if let ProbeResult::Down(why) = &result
        && d.health() != result
    {
        tracing::warn!(deployment = %d.name, reason = %why, "deployment health probe failed");
    }
    d.set_health(result);
}

/// Starts one probing task per deployment; abort the handles to stop them.
pub fn spawn_probers(routes: &ModelRoutes, metrics: &Metrics) -> Vec<tokio::task::JoinHandle<()>> {
    routes
        .all()
        .flat_map(|r| r.deployments())
        .map(|d| {
            let d: Arc<Deployment> = Arc::clone(d);
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(d.health_interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    probe(&d, &metrics).await;
                }
            })
        })
        .collect()
}
