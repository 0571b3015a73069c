//! The shared state of one server.

use std::collections::HashMap;
use std::sync::Arc;

use crate::auth::KeyStore;
use crate::config::{Config, ModelConfig, ProviderKind};
use crate::health::UpstreamHealth;
use crate::local::LocalModel;
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
    local: Vec<LocalModel>,
}

impl AppState {
    /// Builds providers, routes, keys and metrics from a validated config, loading the local
    /// models (blocking: seconds for large models).
    pub fn new(config: Config) -> anyhow::Result<Self> {
        let mut by_name: HashMap<String, Arc<dyn Provider>> = HashMap::new();
        for p in &config.providers {
            let provider: Arc<dyn Provider> = match p.kind {
                ProviderKind::OpenAi => Arc::new(OpenAiProvider::new(p)?),
            };
            by_name.insert(p.name.clone(), provider);
        }
        let local = crate::local::start(&config.local)?;
        let mut models = config.models.clone();
        for m in &local {
            let name = m.provider.name().to_string();
            models.push(ModelConfig {
                alias: m.alias.clone(),
                provider: name.clone(),
                upstream_model: m.alias.clone(),
                owned_by: "aigw-local".into(),
            });
            by_name.insert(name, m.provider.clone());
        }
        let routes = ModelRoutes::new(&models, &by_name, aigw_models::openai::unix_now())
            .map_err(anyhow::Error::msg)?;
        let mut providers: Vec<_> = by_name.into_values().collect();
        providers.sort_by(|a, b| a.name().cmp(b.name()));
        let health = UpstreamHealth::new(providers.iter().map(|p| p.name()));
        let metrics = Metrics::new()?;
        metrics.register_engines(&local)?;
        Ok(Self {
            inner: Arc::new(Inner {
                keys: KeyStore::new(&config.keys),
                routes,
                providers,
                metrics,
                health,
                local,
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

    /// The in-process models.
    pub fn local_models(&self) -> &[LocalModel] {
        &self.inner.local
    }

    /// Upstream health as last probed.
    pub fn health(&self) -> &UpstreamHealth {
        &self.inner.health
    }
}
