//! Background health probes of upstream providers, read by `/ready`.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::metrics::Metrics;
use crate::providers::Provider;

/// The last probe result of each provider.
#[derive(Clone, Default)]
pub struct UpstreamHealth {
    status: Arc<RwLock<BTreeMap<String, ProbeResult>>>,
}

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

impl UpstreamHealth {
    /// Tracks `providers`, all unknown until probed.
    pub fn new<'a>(providers: impl Iterator<Item = &'a str>) -> Self {
        let status = providers
            .map(|p| (p.to_string(), ProbeResult::Unknown))
            .collect();
        Self {
            status: Arc::new(RwLock::new(status)),
        }
    }

    /// Current status of every provider.
    pub fn snapshot(&self) -> BTreeMap<String, ProbeResult> {
        self.status.read().map(|s| s.clone()).unwrap_or_default()
    }

    fn set(&self, provider: &str, result: ProbeResult) {
        if let Ok(mut s) = self.status.write() {
            s.insert(provider.to_string(), result);
        }
    }

    /// Probes every provider now, concurrently.
    pub async fn probe_all(&self, providers: &[Arc<dyn Provider>], metrics: &Metrics) {
        let probes = providers.iter().map(|p| async move {
            let result = match p.health().await {
                Ok(()) => ProbeResult::Up,
                Err(e) => ProbeResult::Down(e.to_string()),
            };
            (p.name().to_string(), result)
        });
        for (name, result) in futures::future::join_all(probes).await {
            metrics
                .upstream_up
                .with_label_values(&[name.as_str()])
                .set(i64::from(result == ProbeResult::Up));
            if let ProbeResult::Down(why) = &result {
                tracing::warn!(provider = %name, reason = %why, "upstream health probe failed");
            }
            self.set(&name, result);
        }
    }

    /// Probes every `interval` until the returned task is aborted.
    pub fn spawn_prober(
        &self,
        providers: Vec<Arc<dyn Provider>>,
        metrics: Metrics,
        interval: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let health = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                health.probe_all(&providers, &metrics).await;
            }
        })
    }
}
