//! The shared state of one server.

use std::collections::HashMap;
use std::sync::Arc;

use crate::auth::KeyStore;
use crate::config::{Config, ProviderKind};
use crate::health::UpstreamHealth;
use crate::metrics::Metrics;
use crate::providers::Provider;
use crate::providers::openai::OpenAiProvider;
use crate::routing::ModelRoutes;

/// Everything a handler needs. Cloning is cheap: it is one `Arc`, and every handler of
/// every request holds a clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    keys: KeyStore,
    routes: ModelRoutes,
    providers: Vec<Arc<dyn Provider>>,
    metrics: Metrics,
    health: UpstreamHealth,
}

impl AppState {
    /// Builds providers, routes, keys and metrics from a validated config.
    pub fn new(config: Config) -> anyhow::Result<Self> {
        let mut by_name: HashMap<String, Arc<dyn Provider>> = HashMap::new();
        for p in &config.providers {
            let provider: Arc<dyn Provider> = match p.kind {
                ProviderKind::OpenAi => Arc::new(OpenAiProvider::new(p)?),
            };
            by_name.insert(p.name.clone(), provider);
        }
        let routes = ModelRoutes::new(&config.models, &by_name, aigw_models::openai::unix_now())
            .map_err(anyhow::Error::msg)?;
        let mut providers: Vec<_> = by_name.into_values().collect();
        providers.sort_by(|a, b| a.name().cmp(b.name()));
        let health = UpstreamHealth::new(providers.iter().map(|p| p.name()));
        Ok(Self {
            inner: Arc::new(Inner {
                keys: KeyStore::new(&config.keys),
                routes,
                providers,
                metrics: Metrics::new()?,
                health,
                config,
            }),
        })
    }

    /// The validated configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// API keys.
    pub fn keys(&self) -> &KeyStore {
        &self.inner.keys
    }

    /// Model aliases and their routes.
    pub fn routes(&self) -> &ModelRoutes {
        &self.inner.routes
    }

    /// Every configured provider.
    pub fn providers(&self) -> &[Arc<dyn Provider>] {
        &self.inner.providers
    }

    /// Metrics registry.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Upstream health as last probed.
    pub fn health(&self) -> &UpstreamHealth {
        &self.inner.health
    }
}
