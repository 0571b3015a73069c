//! Model aliases → ordered groups of weighted deployments.
//!
//! A [`Route`] is what one alias resolves to: groups tried in order, each holding one or more
//! [`Deployment`]s (a provider, its own model name, a weight and limits). Within a group the
//! order of attempts is drawn by power-of-two-choices: two candidates are picked at random in
//! proportion to their weights and the one with the lower load score — requests in flight
//! times the latency EWMA — goes first. Deployments whose last health probe failed are kept as
//! a last resort after every group. The pipeline walks the plan, skipping open circuits; see
//! [`crate::pipeline`].

use std::cell::Cell;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use aigw_models::openai::{Model, ModelList};
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::auth::Principal;
use crate::breaker::Breaker;
use crate::config::{BreakerConfig, DeploymentConfig, LOCAL_PROVIDER, ModelConfig};
use crate::error::GatewayError;
use crate::health::ProbeResult;
use crate::providers::{CallContext, Provider};

/// Weight of the newest sample in the latency EWMA.
const EWMA_ALPHA: f64 = 0.3;
/// Latency assumed for a deployment not measured yet, and the floor of the score.
const MIN_LATENCY_SECS: f64 = 1e-4;

/// A provider + model name + limits, with its live state (load, latency, circuit, health).
pub struct Deployment {
    /// Unique name (metrics, logs, `x-aigw-deployment`).
    pub name: Arc<str>,
    /// Who serves it.
    pub provider: Arc<dyn Provider>,
    /// The provider's own model name.
    pub upstream_model: String,
    /// Relative share of its group's traffic.
    pub weight: u32,
    /// Requests in flight beyond which it is skipped.
    pub max_in_flight: Option<usize>,
    /// Limit on one call (overrides the provider's).
    pub timeout: Option<Duration>,
    /// Streams: limit on the wait for the first chunk.
    pub first_token_timeout: Option<Duration>,
    /// Extra headers on every call.
    pub headers: Arc<HeaderMap>,
    /// Health probe path; `None`: the provider's default.
    pub health_path: Option<String>,
    /// How often it is probed.
    pub health_interval: Duration,
    /// Its circuit breaker.
    pub breaker: Breaker,
    in_flight: AtomicUsize,
    /// Latency EWMA in seconds, as `f64` bits; 0 until the first sample.
    ewma: AtomicU64,
    health: RwLock<ProbeResult>,
}

impl std::fmt::Debug for Deployment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deployment")
            .field("name", &self.name)
            .field("provider", &self.provider.name())
            .field("upstream_model", &self.upstream_model)
            .field("weight", &self.weight)
            .finish_non_exhaustive()
    }
}

/// A request counted in a deployment's load until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<Deployment>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Deployment {
    /// Builds a deployment from its config and provider.
    pub fn new(
        cfg: &DeploymentConfig,
        provider: Arc<dyn Provider>,
        breaker: Arc<BreakerConfig>,
    ) -> Result<Self, String> {
        let mut headers = HeaderMap::new();
        for (name, value) in &cfg.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| format!("deployment '{}': header {name}: {e}", cfg.name))?;
            let value = HeaderValue::from_str(value)
                .map_err(|e| format!("deployment '{}': header {name}: {e}", cfg.name))?;
            headers.insert(name, value);
        }
        Ok(Self {
            name: cfg.name.as_str().into(),
            provider,
            upstream_model: cfg.upstream_model.clone(),
            weight: cfg.weight.max(1),
            max_in_flight: cfg.max_in_flight,
            timeout: cfg.timeout,
            first_token_timeout: cfg.first_token_timeout,
            headers: Arc::new(headers),
            health_path: cfg.health_path.clone(),
            health_interval: cfg.health_interval,
            breaker: Breaker::new(breaker),
            in_flight: AtomicUsize::new(0),
            ewma: AtomicU64::new(0),
            health: RwLock::new(ProbeResult::Unknown),
        })
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request in its load, or `None` when it is at `max_in_flight`.
    pub fn begin(self: &Arc<Self>) -> Option<InFlight> {
        let limit = self.max_in_flight.unwrap_or(usize::MAX);
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| InFlight(Arc::clone(self)))
    }

    /// The latency EWMA, once measured.
    pub fn latency(&self) -> Option<Duration> {
        let secs = f64::from_bits(self.ewma.load(Ordering::Relaxed));
        (secs > 0.0).then(|| Duration::from_secs_f64(secs))
    }

    /// Folds one latency sample into the EWMA.
    pub fn observe_latency(&self, took: Duration) {
        let sample = took.as_secs_f64().max(MIN_LATENCY_SECS);
        // Races lose a sample at worst; the EWMA stays a plausible value.
        let old = f64::from_bits(self.ewma.load(Ordering::Relaxed));
        let new = if old > 0.0 {
            old + EWMA_ALPHA * (sample - old)
        } else {
            sample
        };
        self.ewma.store(new.to_bits(), Ordering::Relaxed);
    }

    /// Load score for power-of-two-choices: lower is better.
    fn score(&self) -> f64 {
        let latency = f64::from_bits(self.ewma.load(Ordering::Relaxed)).max(MIN_LATENCY_SECS);
        (self.in_flight() as f64 + 1.0) * latency
    }

    /// The last probe result.
    pub fn health(&self) -> ProbeResult {
        self.health
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records a probe result.
    pub fn set_health(&self, result: ProbeResult) {
        *self.health.write().unwrap_or_else(PoisonError::into_inner) = result;
    }

    /// The provider call context for this deployment.
    pub fn call_context(&self, base: &CallContext) -> CallContext {
        CallContext {
            request_id: base.request_id.clone(),
            timeout: self.timeout,
            headers: Arc::clone(&self.headers),
        }
    }
}

/// The deployment that answered a request, held (and counted in its load) until the
/// response is done — for a stream, until its last chunk.
#[derive(Debug)]
pub struct Served {
    /// Who answered.
    pub deployment: Arc<Deployment>,
    /// Deployments called, this one included.
    pub attempts: usize,
    /// Its load count.
    pub in_flight: InFlight,
}

/// Where one alias is served.
#[derive(Clone)]
pub struct Route {
    /// The name clients use.
    pub alias: Arc<str>,
    /// Shown as `owned_by`.
    pub owned_by: String,
    /// Deployment groups, tried in order.
    pub groups: Vec<Vec<Arc<Deployment>>>,
    /// Limit on the whole request across attempts.
    pub deadline: Duration,
    /// Most deployments tried for one request.
    pub max_attempts: usize,
    /// Its price, for cost budgets.
    pub price: aigw_models::catalog::Price,
}

impl Route {
    /// Every deployment, in group order.
    pub fn deployments(&self) -> impl Iterator<Item = &Arc<Deployment>> {
        self.groups.iter().flatten()
    }

    /// The order in which deployments are tried for one request.
    pub fn plan(&self) -> Vec<Arc<Deployment>> {
        let mut order = Vec::with_capacity(self.groups.iter().map(Vec::len).sum());
        let mut last_resort = Vec::new();
        for group in &self.groups {
            let mut pool: Vec<&Arc<Deployment>> = Vec::with_capacity(group.len());
            for d in group {
                if matches!(d.health(), ProbeResult::Down(_)) {
                    last_resort.push(Arc::clone(d));
                } else {
                    pool.push(d);
                }
            }
            while !pool.is_empty() {
                let pick = if pool.len() == 1 {
                    0
                } else {
                    let a = weighted_pick(&pool);
                    let b = weighted_pick(&pool);
                    if pool[b].score() < pool[a].score() {
                        b
                    } else {
                        a
                    }
                };
                order.push(Arc::clone(pool.swap_remove(pick)));
            }
        }
        order.extend(last_resort);
        order
    }
}

/// An index into `pool`, drawn with probability proportional to weight.
fn weighted_pick(pool: &[&Arc<Deployment>]) -> usize {
    let total: u64 = pool.iter().map(|d| u64::from(d.weight)).sum();
    let mut x = random_u64() % total.max(1);
    for (i, d) in pool.iter().enumerate() {
        let w = u64::from(d.weight);
        if x < w {
            return i;
        }
        x -= w;
    }
    pool.len() - 1
}

/// A fast per-thread pseudo-random number (xorshift64*), seeded from the std hasher's keys.
fn random_u64() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(RandomState::new().hash_one(std::thread::current().id()) | 1);
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

/// Every alias the server knows, in configuration order.
#[derive(Clone, Default)]
pub struct ModelRoutes {
    by_alias: HashMap<Arc<str>, Route>,
    order: Vec<Arc<str>>,
    created: u64,
}

impl ModelRoutes {
    /// Builds the table from config, resolving providers by name (`local` deployments by
    /// the in-process model's alias, registered as `local:ALIAS`).
    pub fn new(
        models: &[ModelConfig],
        providers: &HashMap<String, Arc<dyn Provider>>,
        breaker: &BreakerConfig,
        created: u64,
    ) -> Result<Self, String> {
        let breaker = Arc::new(breaker.clone());
        let mut routes = Self {
            created,
            ..Self::default()
        };
        for m in models {
            let mut groups = Vec::with_capacity(m.groups.len());
            for group in &m.groups {
                let mut deployments = Vec::with_capacity(group.len());
                for d in group {
                    let key = if d.provider == LOCAL_PROVIDER {
                        format!("{LOCAL_PROVIDER}:{}", d.upstream_model)
                    } else {
                        d.provider.clone()
                    };
                    let provider = providers.get(&key).ok_or_else(|| {
                        format!(
                            "model '{}' names unknown provider '{}'",
                            m.alias, d.provider
                        )
                    })?;
                    deployments.push(Arc::new(Deployment::new(
                        d,
                        provider.clone(),
                        Arc::clone(&breaker),
                    )?));
                }
                groups.push(deployments);
            }
            let alias: Arc<str> = m.alias.as_str().into();
            routes.order.push(alias.clone());
            routes.by_alias.insert(
                alias.clone(),
                Route {
                    alias,
                    owned_by: m.owned_by.clone(),
                    groups,
                    deadline: m.deadline,
                    max_attempts: m.max_attempts,
                    price: m.price,
                },
            );
        }
        Ok(routes)
    }

    /// The route of `alias` if it exists and `principal` may use it.
    pub fn resolve(&self, principal: &Principal, alias: &str) -> Result<&Route, GatewayError> {
        match self.by_alias.get(alias) {
            Some(route) if principal.may_use(alias) => Ok(route),
            _ => Err(GatewayError::ModelNotFound(alias.to_string())),
        }
    }

    /// The route of `alias`, whoever asks (for downgrades decided by policy).
    pub fn get(&self, alias: &str) -> Option<&Route> {
        self.by_alias.get(alias)
    }

    /// Every route, in configuration order.
    pub fn all(&self) -> impl Iterator<Item = &Route> {
        self.order.iter().filter_map(|a| self.by_alias.get(a))
    }

    /// The models `principal` may use, as `/v1/models` lists them.
    pub fn list(&self, principal: &Principal) -> ModelList {
        ModelList::new(
            self.all()
                .filter(|r| principal.may_use(&r.alias))
                .map(|r| Model::new(&*r.alias, self.created, &r.owned_by))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::{ChunkStream, ProviderError};
    use aigw_models::openai::{ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse};

    struct Nop;

    #[async_trait::async_trait]
    impl Provider for Nop {
        fn name(&self) -> &str {
            "nop"
        }
        async fn chat(
            &self,
            _: ChatCompletionRequest,
            _: &CallContext,
        ) -> Result<ChatCompletionResponse, ProviderError> {
            Err(ProviderError::Unsupported("chat"))
        }
        async fn chat_stream(
            &self,
            _: ChatCompletionRequest,
            _: &CallContext,
        ) -> Result<ChunkStream<ChatCompletionChunk>, ProviderError> {
            Err(ProviderError::Unsupported("chat"))
        }
        async fn health(&self) -> Result<(), ProviderError> {
            Ok(())
        }
    }

    fn deployment(name: &str, weight: u32) -> Arc<Deployment> {
        let cfg = DeploymentConfig {
            name: name.into(),
            provider: "nop".into(),
            upstream_model: "m".into(),
            weight,
            max_in_flight: Some(2),
            timeout: None,
            first_token_timeout: None,
            health_path: None,
            health_interval: Duration::from_secs(10),
            headers: Default::default(),
        };
        Arc::new(Deployment::new(&cfg, Arc::new(Nop), Arc::new(BreakerConfig::default())).unwrap())
    }

    fn route(groups: Vec<Vec<Arc<Deployment>>>) -> Route {
        Route {
            alias: "a".into(),
            owned_by: "x".into(),
            groups,
            deadline: Duration::from_secs(1),
            max_attempts: 10,
            price: aigw_models::catalog::Price::FREE,
        }
    }

    fn first_counts(r: &Route, n: usize) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for _ in 0..n {
            *counts.entry(r.plan()[0].name.to_string()).or_insert(0usize) += 1;
        }
        counts
    }

    #[test]
    fn groups_are_tried_in_order_and_every_deployment_once() {
        let (a, b, c) = (deployment("a", 1), deployment("b", 1), deployment("c", 1));
        let r = route(vec![vec![a, b], vec![c]]);
        for _ in 0..50 {
            let names: Vec<_> = r.plan().iter().map(|d| d.name.to_string()).collect();
            assert_eq!(names.len(), 3);
            assert_eq!(names[2], "c");
            assert!(names[..2].contains(&"a".into()) && names[..2].contains(&"b".into()));
        }
    }

    #[test]
    fn weights_set_the_share_when_loads_are_equal() {
        let r = route(vec![vec![deployment("heavy", 3), deployment("light", 1)]]);
        let counts = first_counts(&r, 20_000);
        let share = counts["heavy"] as f64 / 20_000.0;
        assert!((share - 0.75).abs() < 0.03, "{counts:?}");
    }

    #[test]
    fn load_and_latency_steer_traffic() {
        let (busy, idle) = (deployment("busy", 1), deployment("idle", 1));
        let _held = busy.begin().unwrap();
        let r = route(vec![vec![busy.clone(), idle.clone()]]);
        let counts = first_counts(&r, 4_000);
        // With two deployments the pair differs half the time and then idle wins.
        assert!(counts["idle"] > 2_800, "{counts:?}");

        let (slow, fast) = (deployment("slow", 1), deployment("fast", 1));
        slow.observe_latency(Duration::from_millis(200));
        fast.observe_latency(Duration::from_millis(20));
        let r = route(vec![vec![slow, fast]]);
        assert!(first_counts(&r, 4_000)["fast"] > 2_800);
    }

    #[test]
    fn unhealthy_deployments_go_last() {
        let (a, b, c) = (deployment("a", 1), deployment("b", 1), deployment("c", 1));
        a.set_health(ProbeResult::Down("HTTP 500".into()));
        let r = route(vec![vec![a, b], vec![c]]);
        for _ in 0..20 {
            let names: Vec<_> = r.plan().iter().map(|d| d.name.to_string()).collect();
            assert_eq!(names, ["b", "c", "a"]);
        }
    }

    #[test]
    fn in_flight_is_bounded_and_released() {
        let d = deployment("d", 1);
        let one = d.begin().unwrap();
        let two = d.begin().unwrap();
        assert!(d.begin().is_none(), "max_in_flight = 2");
        drop(one);
        assert_eq!(d.in_flight(), 1);
        assert!(d.begin().is_some());
        drop(two);
    }

    #[test]
    fn latency_ewma() {
        let d = deployment("d", 1);
        assert_eq!(d.latency(), None);
        d.observe_latency(Duration::from_millis(100));
        d.observe_latency(Duration::from_millis(200));
        let ms = d.latency().unwrap().as_secs_f64() * 1000.0;
        assert!((ms - 130.0).abs() < 1e-6, "{ms}");
    }
}
