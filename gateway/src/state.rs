//! The shared state of one server.

use std::collections::HashMap;
use std::sync::Arc;

use aigw_state::budget::BudgetLedger;
use aigw_state::cache::ResponseCache;
use aigw_state::events::EventSink;
use aigw_state::memory::{
    BroadcastSink, MemoryCache, MemoryLedger, MemoryRateLimiter, MemoryTranscripts,
};
use aigw_state::ratelimit::RateLimiter;
use aigw_state::redis::{RedisOptions, RedisState};
use aigw_state::transcript::TranscriptLog;

use crate::auth::KeyStore;
use crate::budget::Budgets;
use crate::cache::Cache;
use crate::config::{
    Config, DeploymentConfig, LOCAL_PROVIDER, ModelConfig, ProviderKind, StateConfig,
};
use crate::local::LocalModel;
use crate::metrics::Metrics;
use crate::providers::Provider;
use crate::providers::anthropic::AnthropicProvider;
use crate::providers::openai::OpenAiProvider;
use crate::ratelimit::RateLimits;
use crate::routing::ModelRoutes;

/// The shared-state backends of a server.
struct Backends {
    ledger: Arc<dyn BudgetLedger>,
    sink: Arc<dyn EventSink>,
    limiter: Arc<dyn RateLimiter>,
    cache: Arc<dyn ResponseCache>,
    transcripts: Arc<dyn TranscriptLog>,
    /// Budget events, when they stay in this process.
    events: Option<BroadcastSink>,
    /// The Redis server behind them, if any.
    redis: Option<RedisState>,
}

impl Backends {
    /// In-process state: one replica.
    fn memory(cache_entries: usize) -> Self {
        let sink = BroadcastSink::new(1024);
        Self {
            ledger: Arc::new(MemoryLedger::new()),
            sink: Arc::new(sink.clone()),
            limiter: Arc::new(MemoryRateLimiter::new()),
            cache: Arc::new(MemoryCache::new(cache_entries)),
            transcripts: Arc::new(MemoryTranscripts::new()),
            events: Some(sink),
            redis: None,
        }
    }

    /// State on a Redis server shared by every replica. Connections are made on first use:
    /// a server that is down at start only fails the calls made while it is.
    fn redis(url: &str, config: &StateConfig) -> anyhow::Result<Self> {
        let redis = RedisState::connect_with(
            url,
            RedisOptions {
                prefix: config.key_prefix.clone(),
                pool_size: config.pool_size,
                timeout: config.timeout,
                ..RedisOptions::default()
            },
        )
        .map_err(|e| anyhow::anyhow!("state.redis_url_env: {e}"))?;
        Ok(Self {
            ledger: Arc::new(redis.ledger()),
            sink: Arc::new(redis.events()),
            limiter: Arc::new(redis.rate_limiter()),
            cache: Arc::new(redis.cache()),
            transcripts: Arc::new(redis.transcripts()),
            events: None,
            redis: Some(redis),
        })
    }
}

/// Deadline of a directly served in-process model: its own queue and `max_tokens` bound it.
const LOCAL_DEADLINE: std::time::Duration = std::time::Duration::from_secs(3600);

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
    local: Vec<LocalModel>,
    budgets: Arc<Budgets>,
    rate_limits: Arc<RateLimits>,
    cache: Arc<Cache>,
    transcripts: Arc<dyn TranscriptLog>,
    redis: Option<RedisState>,
    events: Option<BroadcastSink>,
    background: tokio_util::task::TaskTracker,
}

impl AppState {
    /// Builds providers, routes, keys and metrics from a validated config, loading the local
    /// models (blocking: seconds for large models).
    pub fn new(config: Config) -> anyhow::Result<Self> {
        let mut by_name: HashMap<String, Arc<dyn Provider>> = HashMap::new();
        for p in &config.providers {
            let provider: Arc<dyn Provider> = match p.kind {
                ProviderKind::OpenAi | ProviderKind::Azure { .. } => {
                    Arc::new(OpenAiProvider::new(p)?)
                }
                ProviderKind::Anthropic { .. } => Arc::new(AnthropicProvider::new(p)?),
            };
            by_name.insert(p.name.clone(), provider);
        }
        let local = crate::local::start(&config.local)?;
        let mut models = config.models.clone();
        for m in &local {
            let name = m.provider.name().to_string();
            models.push(ModelConfig {
                alias: m.alias.clone(),
                owned_by: "aigw-local".into(),
                groups: vec![vec![DeploymentConfig {
                    name: name.clone(),
                    provider: LOCAL_PROVIDER.into(),
                    upstream_model: m.alias.clone(),
                    weight: 1,
                    max_in_flight: None,
                    timeout: None,
                    first_token_timeout: None,
                    health_path: None,
                    health_interval: config.server.health_check_interval,
                    headers: Default::default(),
                }]],
                deadline: LOCAL_DEADLINE,
                max_attempts: 1,
                price: m.price,
            });
            by_name.insert(name, m.provider.clone());
        }
        let routes = ModelRoutes::new(
            &models,
            &by_name,
            &config.routing.breaker,
            aigw_models::openai::unix_now(),
        )
        .map_err(anyhow::Error::msg)?;
        let mut providers: Vec<_> = by_name.into_values().collect();
        providers.sort_by(|a, b| a.name().cmp(b.name()));
        let metrics = Metrics::new()?;
        metrics.register_engines(&local)?;
        let backends = match &config.state.redis_url {
            Some(url) => Backends::redis(url, &config.state)?,
            None => Backends::memory(config.cache.max_entries),
        };
        let Backends {
            ledger,
            sink,
            limiter,
            cache,
            transcripts,
            events,
            redis,
        } = backends;
        let cache = Arc::new(Cache::new(cache, config.cache.clone(), metrics.clone()));
        let rate_limits = Arc::new(RateLimits::new(limiter, metrics.clone()));
        let budgets = Arc::new(Budgets::new(
            config.budgets.clone(),
            ledger,
            sink,
            metrics.clone(),
        ));
        Ok(Self {
            inner: Arc::new(Inner {
                keys: KeyStore::new(&config.keys),
                routes,
                providers,
                metrics,
                local,
                budgets,
                rate_limits,
                cache,
                transcripts,
                redis,
                events,
                background: tokio_util::task::TaskTracker::new(),
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

    /// Per-session budgets.
    pub fn budgets(&self) -> &Arc<Budgets> {
        &self.inner.budgets
    }

    /// The Redis server holding the shared state, if one is configured.
    pub fn redis(&self) -> Option<&RedisState> {
        self.inner.redis.as_ref()
    }

    /// The response cache.
    pub fn cache(&self) -> &Arc<Cache> {
        &self.inner.cache
    }

    /// Voice sessions' transcripts (the Discord voice bridge writes them).
    pub fn transcripts(&self) -> &Arc<dyn TranscriptLog> {
        &self.inner.transcripts
    }

    /// Rate limits.
    pub fn rate_limits(&self) -> &Arc<RateLimits> {
        &self.inner.rate_limits
    }

    /// Budget events, when they stay in this process (no Redis).
    pub fn events(&self) -> Option<&BroadcastSink> {
        self.inner.events.as_ref()
    }

    /// The in-process models.
    pub fn local_models(&self) -> &[LocalModel] {
        &self.inner.local
    }

    /// Work that outlives the request that started it (Discord answers): shutdown waits for
    /// it within the grace period, as for requests.
    pub fn background(&self) -> &tokio_util::task::TaskTracker {
        &self.inner.background
    }
}
