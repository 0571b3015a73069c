//! Prometheus metrics, one registry per server (so tests can run several servers).

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

/// Buckets for whole-request and upstream latency, in seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Buckets for the time the gateway itself adds, in seconds.
const OVERHEAD_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.1,
];

/// All metrics the gateway exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Requests by route, model and status.
    pub requests: IntCounterVec,
    /// Whole-request latency by route and model (streams: until the last byte).
    pub request_duration: HistogramVec,
    /// Time spent waiting on upstreams by provider and model.
    pub upstream_duration: HistogramVec,
    /// Time to the first streamed token by model.
    pub time_to_first_token: HistogramVec,
    /// Time spent in the gateway outside upstream calls, by route.
    pub overhead: HistogramVec,
    /// Tokens by model and direction (`in`, `out`).
    pub tokens: IntCounterVec,
    /// Seconds of audio transcribed or translated, by model.
    pub audio_seconds: prometheus::CounterVec,
    /// Failures by route and error type.
    pub errors: IntCounterVec,
    /// Requests being served now.
    pub in_flight: IntGauge,
    /// Realtime (WebSocket) transcription sessions open now.
    pub realtime_sessions: IntGauge,
    /// Deployment health by its last probe (1 healthy, 0 not).
    pub deployment_up: prometheus::IntGaugeVec,
    /// Attempts by deployment and outcome (`success`, `failure`, `client_error`, `skipped`).
    pub deployment_attempts: IntCounterVec,
    /// Failed or skipped attempts by deployment and reason.
    pub deployment_failures: IntCounterVec,
    /// Circuit state by deployment: 0 closed, 1 half-open, 2 open.
    pub deployment_circuit: prometheus::IntGaugeVec,
    /// Latency of answered attempts by deployment (streams: to the first chunk).
    pub deployment_latency: HistogramVec,
    /// Requests refused for an exhausted budget, by tenant.
    pub budget_denials: IntCounterVec,
    /// Budget events by kind (`threshold`, `escalate`).
    pub budget_events: IntCounterVec,
    /// Shared-state failures by operation (`budget` fails closed, `cache` open).
    pub state_errors: IntCounterVec,
    /// Whether the shared state (Redis) answered its last readiness ping (1) or not (0).
    pub state_up: IntGauge,
    /// Response-cache outcomes (`hit`, `miss`, `bypass`, `stored`, `coalesced`).
    pub cache: IntCounterVec,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("aigw".into()), None)?;
        let requests = IntCounterVec::new(
            Opts::new("requests_total", "Requests by route, model and status"),
            &["route", "model", "status"],
        )?;
        let request_duration = HistogramVec::new(
            HistogramOpts::new("request_duration_seconds", "Whole-request latency")
                .buckets(LATENCY_BUCKETS.to_vec()),
            &["route", "model"],
        )?;
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new(
                "upstream_duration_seconds",
                "Time spent waiting on upstreams",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["provider", "model"],
        )?;
        let time_to_first_token = HistogramVec::new(
            HistogramOpts::new(
                "time_to_first_token_seconds",
                "Time to the first streamed token",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["model"],
        )?;
        let overhead = HistogramVec::new(
            HistogramOpts::new(
                "gateway_overhead_seconds",
                "Time spent in the gateway outside upstream calls",
            )
            .buckets(OVERHEAD_BUCKETS.to_vec()),
            &["route"],
        )?;
        let tokens = IntCounterVec::new(
            Opts::new("tokens_total", "Tokens by model and direction"),
            &["model", "direction"],
        )?;
        let audio_seconds = prometheus::CounterVec::new(
            Opts::new(
                "audio_seconds_total",
                "Seconds of audio transcribed or translated, by model",
            ),
            &["model"],
        )?;
        registry.register(Box::new(audio_seconds.clone()))?;
        let errors = IntCounterVec::new(
            Opts::new("errors_total", "Failed requests by route and error type"),
            &["route", "type"],
        )?;
        let in_flight = IntGauge::new("requests_in_flight", "Requests being served")?;
        let realtime_sessions =
            IntGauge::new("realtime_sessions", "Realtime transcription sessions open")?;
        let deployment_up = prometheus::IntGaugeVec::new(
            Opts::new(
                "deployment_up",
                "Whether the last health probe of a deployment succeeded",
            ),
            &["deployment"],
        )?;
        let deployment_attempts = IntCounterVec::new(
            Opts::new(
                "deployment_attempts_total",
                "Attempts by deployment and outcome",
            ),
            &["deployment", "outcome"],
        )?;
        let deployment_failures = IntCounterVec::new(
            Opts::new(
                "deployment_failures_total",
                "Failed or skipped attempts by deployment and reason",
            ),
            &["deployment", "reason"],
        )?;
        let deployment_circuit = prometheus::IntGaugeVec::new(
            Opts::new(
                "deployment_circuit_state",
                "Circuit breaker state: 0 closed, 1 half-open, 2 open",
            ),
            &["deployment"],
        )?;
        let deployment_latency = HistogramVec::new(
            HistogramOpts::new(
                "deployment_latency_seconds",
                "Latency of answered attempts (streams: to the first chunk)",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["deployment"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(upstream_duration.clone()))?;
        registry.register(Box::new(time_to_first_token.clone()))?;
        registry.register(Box::new(overhead.clone()))?;
        registry.register(Box::new(tokens.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(realtime_sessions.clone()))?;
        let budget_denials = IntCounterVec::new(
            Opts::new(
                "budget_denials_total",
                "Requests refused for an exhausted budget",
            ),
            &["tenant"],
        )?;
        let budget_events = IntCounterVec::new(
            Opts::new("budget_events_total", "Budget threshold events by kind"),
            &["kind"],
        )?;
        let state_errors = IntCounterVec::new(
            Opts::new(
                "state_errors_total",
                "Shared-state (Redis) failures by operation",
            ),
            &["operation"],
        )?;
        registry.register(Box::new(budget_denials.clone()))?;
        registry.register(Box::new(budget_events.clone()))?;
        registry.register(Box::new(state_errors.clone()))?;
        let cache = IntCounterVec::new(
            Opts::new("cache_total", "Response-cache outcomes"),
            &["outcome"],
        )?;
        registry.register(Box::new(cache.clone()))?;
        let state_up = IntGauge::new(
            "state_up",
            "Whether the shared state answered its last readiness ping",
        )?;
        state_up.set(1);
        registry.register(Box::new(state_up.clone()))?;
        registry.register(Box::new(deployment_up.clone()))?;
        registry.register(Box::new(deployment_attempts.clone()))?;
        registry.register(Box::new(deployment_failures.clone()))?;
        registry.register(Box::new(deployment_circuit.clone()))?;
        registry.register(Box::new(deployment_latency.clone()))?;
        Ok(Self {
            registry,
            requests,
            request_duration,
            upstream_duration,
            time_to_first_token,
            overhead,
            tokens,
            audio_seconds,
            errors,
            in_flight,
            realtime_sessions,
            deployment_up,
            deployment_attempts,
            deployment_failures,
            deployment_circuit,
            deployment_latency,
            budget_denials,
            budget_events,
            state_errors,
            cache,
            state_up,
        })
    }

    /// Counts tokens of one request.
    pub fn record_tokens(&self, model: &str, prompt: u64, completion: u64) {
        self.tokens.with_label_values(&[model, "in"]).inc_by(prompt);
        self.tokens
            .with_label_values(&[model, "out"])
            .inc_by(completion);
    }

    /// Exports the live counters of the local engines, read at scrape time.
    pub fn register_engines(
        &self,
        models: &[crate::local::LocalModel],
    ) -> Result<(), prometheus::Error> {
        let engines: Vec<_> = models
            .iter()
            .filter_map(|m| m.engine.clone().map(|e| (m.alias.clone(), e)))
            .collect();
        if engines.is_empty() {
            return Ok(());
        }
        self.registry
            .register(Box::new(EngineCollector::new(engines)?))
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Reads the atomic counters of the chat engines when Prometheus scrapes.
struct EngineCollector {
    engines: Vec<(
        String,
        std::sync::Arc<aigw_inference::llm::engine::LlmEngine>,
    )>,
    queued: prometheus::IntGaugeVec,
    active: prometheus::IntGaugeVec,
    steps: IntCounterVec,
    batched: IntCounterVec,
    generated: IntCounterVec,
    prompt: IntCounterVec,
    cancelled: IntCounterVec,
}

impl EngineCollector {
    fn new(
        engines: Vec<(
            String,
            std::sync::Arc<aigw_inference::llm::engine::LlmEngine>,
        )>,
    ) -> Result<Self, prometheus::Error> {
        let gauge = |name: &str, help: &str| {
            prometheus::IntGaugeVec::new(Opts::new(name, help), &["model"])
        };
        let counter =
            |name: &str, help: &str| IntCounterVec::new(Opts::new(name, help), &["model"]);
        Ok(Self {
            engines,
            queued: gauge(
                "engine_queue_depth",
                "Requests waiting to join a local engine's batch",
            )?,
            active: gauge(
                "engine_active_sequences",
                "Sequences a local engine is decoding",
            )?,
            steps: counter("engine_steps_total", "Forward steps of a local engine")?,
            batched: counter(
                "engine_batched_sequences_total",
                "Sequences summed over steps (divide by steps for the mean batch size)",
            )?,
            generated: counter(
                "engine_generated_tokens_total",
                "Tokens generated by a local engine",
            )?,
            prompt: counter(
                "engine_prompt_tokens_total",
                "Prompt tokens processed by a local engine",
            )?,
            cancelled: counter(
                "engine_cancelled_sequences_total",
                "Sequences a local engine dropped because their client went away",
            )?,
        })
    }
}

impl prometheus::core::Collector for EngineCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        [
            self.queued.desc(),
            self.active.desc(),
            self.steps.desc(),
            self.batched.desc(),
            self.generated.desc(),
            self.prompt.desc(),
            self.cancelled.desc(),
        ]
        .concat()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        use std::sync::atomic::Ordering::Relaxed;
        for (model, engine) in &self.engines {
            let s = engine.stats();
            let labels = [model.as_str()];
            self.queued
                .with_label_values(&labels)
                .set(s.queued.load(Relaxed) as i64);
            self.active
                .with_label_values(&labels)
                .set(s.active.load(Relaxed) as i64);
            let sync = |c: &IntCounterVec, v: u64| {
                let c = c.with_label_values(&labels);
                c.inc_by(v.saturating_sub(c.get()));
            };
            sync(&self.steps, s.steps.load(Relaxed));
            sync(&self.batched, s.batched_sequences.load(Relaxed));
            sync(&self.generated, s.generated_tokens.load(Relaxed));
            sync(&self.prompt, s.prompt_tokens.load(Relaxed));
            sync(&self.cancelled, s.cancelled.load(Relaxed));
        }
        [
            self.queued.collect(),
            self.active.collect(),
            self.steps.collect(),
            self.batched.collect(),
            self.generated.collect(),
            self.prompt.collect(),
            self.cancelled.collect(),
        ]
        .concat()
    }
}
