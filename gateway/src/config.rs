//! Configuration: strict TOML (unknown keys are errors with their path), validated into
//! runtime types. Secrets are never written in the file, only the names of env vars that
//! hold them.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// Default listen address of `aigw serve`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// A configuration that could not be loaded or validated.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is malformed or does not match the schema.
    #[error("{path}: {message}")]
    Parse {
        /// Dotted path of the offending key (`providers.openai.base_ur`).
        path: String,
        /// What is wrong, as the TOML parser reports it.
        message: String,
    },
    /// The values are inconsistent or invalid.
    #[error("{path}: {message}")]
    Invalid {
        /// Dotted path of the offending key.
        path: String,
        /// What is wrong.
        message: String,
    },
}

fn invalid(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        path: path.into(),
        message: message.into(),
    }
}

// ---- raw file shape ----------------------------------------------------------------------

/// The configuration file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    auth: RawAuth,
    #[serde(default)]
    providers: BTreeMap<String, RawProvider>,
    #[serde(default)]
    models: Vec<RawModel>,
    #[serde(default)]
    routing: RawRouting,
    local: Option<RawLocal>,
    #[serde(default)]
    state: RawState,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    budgets: RawBudgets,
    #[serde(default)]
    cache: RawCache,
    discord: Option<crate::discord::config::RawDiscord>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCache {
    enabled: Option<bool>,
    ttl_secs: Option<u64>,
    max_entries: Option<usize>,
    max_entry_bytes: Option<usize>,
    coalesce_wait_secs: Option<u64>,
    charge_hits: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLocal {
    device: Option<String>,
    model_dir: Option<String>,
    max_batch: Option<usize>,
    max_queue: Option<usize>,
    prefill_chunk: Option<usize>,
    embedding_concurrency: Option<usize>,
    threads: Option<usize>,
    transcription_workers: Option<usize>,
    transcription_threads: Option<usize>,
    transcription_queue: Option<usize>,
    max_audio_secs: Option<f64>,
    #[serde(default)]
    models: Vec<RawLocalModel>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLocalModel {
    name: String,
    model: Option<String>,
    path: Option<String>,
    kind: Option<String>,
    /// Diarisation: the speaker embedding model (catalog id or file; default the catalog's).
    embedding_model: Option<String>,
    embedding_path: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    max_body_bytes: Option<usize>,
    max_audio_body_bytes: Option<usize>,
    shutdown_grace_secs: Option<u64>,
    health_check_interval_secs: Option<u64>,
    #[serde(default)]
    cors_allow_origins: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    #[serde(default)]
    keys: Vec<RawKey>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    name: String,
    key_env: Option<String>,
    sha256: Option<String>,
    tenant: Option<String>,
    models: Option<Vec<String>>,
    policy: Option<String>,
    requests_per_minute: Option<u64>,
    tokens_per_minute: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawState {
    redis_url_env: Option<String>,
    key_prefix: Option<String>,
    timeout_ms: Option<u64>,
    pool_size: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    key_env: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBudgets {
    default_policy: Option<String>,
    reservation_ttl_secs: Option<f64>,
    default_max_tokens: Option<u32>,
    escalation_threshold: Option<u8>,
    webhook_url: Option<String>,
    #[serde(default)]
    policies: BTreeMap<String, RawPolicy>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    tokens: Option<u64>,
    cost_usd: Option<f64>,
    audio_secs: Option<f64>,
    window: Option<String>,
    thresholds: Option<Vec<u8>>,
    downgrade_at: Option<u8>,
    downgrade_to: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum RawProvider {
    Openai(RawOpenAiProvider),
    Azure(RawAzureProvider),
    Anthropic(RawAnthropicProvider),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOpenAiProvider {
    base_url: String,
    api_key_env: Option<String>,
    timeout_secs: Option<u64>,
    connect_timeout_secs: Option<u64>,
    health_path: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAzureProvider {
    /// The resource endpoint, `https://NAME.openai.azure.com`.
    base_url: String,
    api_version: String,
    api_key_env: Option<String>,
    timeout_secs: Option<u64>,
    connect_timeout_secs: Option<u64>,
    health_path: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAnthropicProvider {
    base_url: Option<String>,
    api_key_env: Option<String>,
    anthropic_version: Option<String>,
    default_max_tokens: Option<u32>,
    timeout_secs: Option<u64>,
    connect_timeout_secs: Option<u64>,
    health_path: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

impl RawProvider {
    /// The fields every kind shares, and the kind with its own settings.
    fn split(self) -> (RawOpenAiProvider, ProviderKind) {
        match self {
            Self::Openai(p) => (p, ProviderKind::OpenAi),
            Self::Azure(p) => (
                RawOpenAiProvider {
                    base_url: p.base_url,
                    api_key_env: p.api_key_env,
                    timeout_secs: p.timeout_secs,
                    connect_timeout_secs: p.connect_timeout_secs,
                    health_path: p.health_path.or_else(|| Some("/openai/models".to_string())),
                    headers: p.headers,
                },
                ProviderKind::Azure {
                    api_version: p.api_version,
                },
            ),
            Self::Anthropic(p) => (
                RawOpenAiProvider {
                    base_url: p
                        .base_url
                        .unwrap_or_else(|| "https://api.anthropic.com".to_string()),
                    api_key_env: p.api_key_env,
                    timeout_secs: p.timeout_secs,
                    connect_timeout_secs: p.connect_timeout_secs,
                    health_path: p.health_path.or_else(|| Some("/v1/models".to_string())),
                    headers: p.headers,
                },
                ProviderKind::Anthropic {
                    version: p
                        .anthropic_version
                        .unwrap_or_else(|| "2023-06-01".to_string()),
                    default_max_tokens: p.default_max_tokens.unwrap_or(4096).max(1),
                },
            ),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    name: String,
    provider: Option<String>,
    upstream_model: Option<String>,
    owned_by: Option<String>,
    deadline_secs: Option<f64>,
    max_attempts: Option<usize>,
    input_usd_per_1m: Option<f64>,
    output_usd_per_1m: Option<f64>,
    #[serde(default)]
    groups: Vec<RawGroup>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    deployments: Vec<RawDeployment>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeployment {
    name: Option<String>,
    provider: String,
    model: Option<String>,
    weight: Option<u32>,
    max_in_flight: Option<usize>,
    timeout_secs: Option<f64>,
    first_token_timeout_secs: Option<f64>,
    health_path: Option<String>,
    health_interval_secs: Option<f64>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRouting {
    deadline_secs: Option<f64>,
    max_attempts: Option<usize>,
    first_token_timeout_secs: Option<f64>,
    #[serde(default)]
    breaker: RawBreaker,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBreaker {
    consecutive_failures: Option<u32>,
    error_rate: Option<f64>,
    min_requests: Option<u32>,
    window_secs: Option<f64>,
    cooldown_secs: Option<f64>,
    max_cooldown_secs: Option<f64>,
}

// ---- validated runtime shape --------------------------------------------------------------

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// HTTP server settings.
    pub server: ServerConfig,
    /// API keys; empty means unauthenticated.
    pub keys: Vec<ApiKeyConfig>,
    /// Upstream providers by name.
    pub providers: Vec<ProviderConfig>,
    /// Model aliases served.
    pub models: Vec<ModelConfig>,
    /// Routing defaults.
    pub routing: RoutingConfig,
    /// Where shared state lives.
    pub state: StateConfig,
    /// The admin API's key (SHA-256); `None`: the admin API is off.
    pub admin_key: Option<[u8; 32]>,
    /// Per-session budgets.
    pub budgets: BudgetsConfig,
    /// The response cache.
    pub cache: CacheConfig,
    /// The Discord integration, if configured.
    pub discord: Option<crate::discord::DiscordConfig>,

    /// Models served in-process.
    pub local: LocalConfig,
    /// Env vars the file references that are not set (fatal for `serve`).
    pub missing_env: Vec<String>,
}

/// Where local engines run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// The CPU.
    Cpu,
    /// An NVIDIA GPU by ordinal (needs the `cuda` build).
    Cuda(usize),
}

/// In-process models and their engines.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// Where the engines run.
    pub device: DeviceSpec,
    /// Model directory (default `AIGW_MODEL_DIR` or the user's cache dir).
    pub model_dir: Option<std::path::PathBuf>,
    /// Most sequences a chat engine decodes together.
    pub max_batch: usize,
    /// Most requests waiting for a chat engine before 429s.
    pub max_queue: usize,
    /// Most prompt tokens prefilled per engine step.
    pub prefill_chunk: usize,
    /// Embedding batches encoding at once per model.
    pub embedding_concurrency: usize,
    /// Compute threads per chat engine (0: one per core).
    pub threads: usize,
    /// Transcriptions running at once per speech-to-text model.
    pub transcription_workers: usize,
    /// Compute threads per transcription (0: one per core).
    pub transcription_threads: usize,
    /// Most transcriptions waiting per model before 429s.
    pub transcription_queue: usize,
    /// Longest audio a local speech-to-text model accepts, in seconds (longer: 413).
    pub max_audio_secs: f64,
    /// The models.
    pub models: Vec<LocalModelConfig>,
}

impl Default for LocalConfig {
    fn default() -> Self {
        Self {
            device: DeviceSpec::Cpu,
            model_dir: None,
            max_batch: 64,
            max_queue: 256,
            prefill_chunk: 512,
            embedding_concurrency: 1,
            threads: 0,
            transcription_workers: 1,
            transcription_threads: 0,
            transcription_queue: 16,
            max_audio_secs: 600.0,
            models: Vec::new(),
        }
    }
}

/// What a local model does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalKind {
    /// Chat and text completions.
    Chat,
    /// Embeddings.
    Embedding,
    /// Speech to text (whisper): transcriptions and, for multilingual models, translations.
    Transcription,
    /// Speaker diarisation: a segmentation model (`source`) with a speaker embedding model.
    Diarization,
}

/// Where a local model's weights come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalSource {
    /// A catalog id, fetched by `aigw models fetch`.
    Catalog(String),
    /// A GGUF file or a model directory mounted by the operator.
    Path(std::path::PathBuf),
}

/// One in-process model.
#[derive(Debug, Clone)]
pub struct LocalModelConfig {
    /// The alias clients use.
    pub alias: String,
    /// Where its weights are.
    pub source: LocalSource,
    /// Chat, embedding, transcription or diarization.
    pub kind: LocalKind,
    /// The speaker embedding model of a diarisation model (`None` for the other kinds).
    pub embedding: Option<LocalSource>,
}

/// HTTP server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to bind.
    pub listen: SocketAddr,
    /// Largest JSON body accepted (413 beyond).
    pub max_body_bytes: usize,
    /// Largest audio upload accepted (413 beyond).
    pub max_audio_body_bytes: usize,
    /// How long in-flight requests may run after SIGTERM.
    pub shutdown_grace: Duration,
    /// How often upstream health is probed.
    pub health_check_interval: Duration,
    /// Origins allowed by CORS (`*` for any); empty disables CORS.
    pub cors_allow_origins: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 16 * 1024 * 1024,
            max_audio_body_bytes: 25 * 1024 * 1024,
            shutdown_grace: Duration::from_secs(30),
            health_check_interval: Duration::from_secs(15),
            cors_allow_origins: Vec::new(),
        }
    }
}

/// How an API key is recognised.
#[derive(Debug, Clone)]
pub struct ApiKeyConfig {
    /// Name of the key (logs and metrics; never the secret).
    pub name: String,
    /// SHA-256 of the secret; `None` if its env var is missing (config check only).
    pub sha256: Option<[u8; 32]>,
    /// Tenant the key belongs to.
    pub tenant: String,
    /// Aliases the key may use; `None` means all.
    pub models: Option<Vec<String>>,
    /// The budget policy of the key's sessions; `None`: `budgets.default_policy`.
    pub policy: Option<String>,
    /// Requests per minute allowed to the key.
    pub requests_per_minute: Option<u64>,
    /// Tokens per minute allowed to the key.
    pub tokens_per_minute: Option<u64>,
}

/// The exact-match response cache.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Whether responses are cached at all.
    pub enabled: bool,
    /// How long an entry lives.
    pub ttl: Duration,
    /// Most entries of the in-memory cache.
    pub max_entries: usize,
    /// Larger responses are not stored.
    pub max_entry_bytes: usize,
    /// How long identical requests wait for the one in flight before calling themselves.
    pub coalesce_wait: Duration,
    /// Whether a hit is charged to the session's budget at its stored usage (chat and
    /// completions); by default hits are free.
    pub charge_hits: bool,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            ttl: Duration::from_secs(600),
            max_entries: 10_000,
            max_entry_bytes: 1 << 20,
            coalesce_wait: Duration::from_secs(30),
            charge_hits: false,
        }
    }
}

/// Where shared state (budgets, rate limits, cache, events) lives.
#[derive(Debug, Clone, Default)]
pub struct StateConfig {
    /// Redis URL (from the env var named in the file); `None`: in memory.
    pub redis_url: Option<String>,
    /// Prefix of every Redis key (`{prefix}:...`).
    pub key_prefix: String,
    /// Longest a Redis call may take (connecting included) before it counts as a failure.
    pub timeout: Duration,
    /// Most Redis connections held open.
    pub pool_size: usize,
}

/// How long a budget's usage accumulates before it starts again from zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetWindow {
    /// The session's whole life.
    Session,
    /// A UTC day.
    Daily,
    /// An ISO week (UTC).
    Weekly,
}

/// One budget policy: ceilings and what happens on the way to them.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyConfig {
    /// The policy's name.
    pub name: String,
    /// The ceilings.
    pub limits: aigw_state::budget::Limits,
    /// The window.
    pub window: BudgetWindow,
    /// Percentages of the ceiling that fire an event (ascending).
    pub thresholds: Vec<u8>,
    /// Past this percentage, requests go to `downgrade_to` instead.
    pub downgrade: Option<(u8, String)>,
}

/// Per-session budgets.
#[derive(Debug, Clone, Default)]
pub struct BudgetsConfig {
    /// Policies by name.
    pub policies: BTreeMap<String, PolicyConfig>,
    /// The policy of keys that name none (and of unauthenticated use); `None`: unlimited.
    pub default_policy: Option<String>,
    /// How long a reservation lives if never settled.
    pub reservation_ttl: Duration,
    /// `max_tokens` assumed for the reservation of a request that sets none.
    pub default_max_tokens: u32,
    /// The threshold whose crossing is an `escalate` event.
    pub escalation_threshold: u8,
    /// Where threshold events are POSTed, if anywhere.
    pub webhook_url: Option<String>,
}

/// The kinds of upstream provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderKind {
    /// Any server speaking the OpenAI HTTP API (OpenAI, vLLM, llama.cpp, another aigw).
    OpenAi,
    /// Azure OpenAI: `{base_url}/openai/deployments/{deployment}/…?api-version=…`, `api-key`.
    Azure {
        /// The `api-version` query parameter.
        api_version: String,
    },
    /// Anthropic's Messages API, translated to and from OpenAI chat completions.
    Anthropic {
        /// The `anthropic-version` header.
        version: String,
        /// `max_tokens` sent when the client gives none (Anthropic requires it).
        default_max_tokens: u32,
    },
}

/// An upstream provider.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// Name used by model routes.
    pub name: String,
    /// Wire protocol.
    pub kind: ProviderKind,
    /// Base URL: including the version prefix for OpenAI (`https://api.openai.com/v1`), the
    /// resource endpoint for Azure, the API host for Anthropic.
    pub base_url: String,
    /// The secret, read from the env var named in the file.
    pub api_key: Option<String>,
    /// Limit on one non-streaming call, and on silence between stream chunks.
    pub timeout: Duration,
    /// Limit on establishing a connection.
    pub connect_timeout: Duration,
    /// Path probed for readiness, relative to `base_url`.
    pub health_path: String,
    /// Extra headers sent on every call.
    pub headers: BTreeMap<String, String>,
}

/// A model alias and where it is served: deployment groups tried in order.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// The name clients use.
    pub alias: String,
    /// Shown as `owned_by` in `/v1/models`.
    pub owned_by: String,
    /// Groups of deployments, tried in order; within a group load is spread.
    pub groups: Vec<Vec<DeploymentConfig>>,
    /// Limit on the whole request across every attempt (streams: until the first chunk).
    pub deadline: Duration,
    /// Most deployments tried for one request.
    pub max_attempts: usize,
    /// USD per 1M prompt and completion tokens, for cost budgets.
    pub price: aigw_models::catalog::Price,
}

/// Provider name that refers to an in-process model of `[local]` (its alias as `model`).
pub const LOCAL_PROVIDER: &str = "local";

/// One deployment: a provider, its model name, and how to use it.
#[derive(Debug, Clone)]
pub struct DeploymentConfig {
    /// Unique name (logs, metrics, `x-aigw-deployment`, error messages).
    pub name: String,
    /// The provider (a `[providers.NAME]`, or [`LOCAL_PROVIDER`]).
    pub provider: String,
    /// The provider's own name for the model (Azure: the deployment name).
    pub upstream_model: String,
    /// Share of traffic within its group, relative to the others.
    pub weight: u32,
    /// Requests in flight beyond which it is skipped; `None`: unlimited.
    pub max_in_flight: Option<usize>,
    /// Limit on one call, overriding the provider's `timeout_secs`.
    pub timeout: Option<Duration>,
    /// Streams: limit on the wait for the first chunk, after which the next one is tried.
    pub first_token_timeout: Option<Duration>,
    /// Path probed by active health checks; `None`: the provider's `health_path`.
    pub health_path: Option<String>,
    /// How often it is probed.
    pub health_interval: Duration,
    /// Extra headers on every call.
    pub headers: BTreeMap<String, String>,
}

/// When a deployment's circuit opens and how long it stays open.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the circuit (0: never on this rule).
    pub consecutive_failures: u32,
    /// Failure share over the window that opens it (0: never on this rule).
    pub error_rate: f64,
    /// Outcomes in the window before `error_rate` applies.
    pub min_requests: u32,
    /// The sliding window of `error_rate`.
    pub window: Duration,
    /// How long it stays open, unless the upstream's `Retry-After` says otherwise.
    pub cooldown: Duration,
    /// Upper bound on a `Retry-After` cooldown.
    pub max_cooldown: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            error_rate: 0.5,
            min_requests: 20,
            window: Duration::from_secs(30),
            cooldown: Duration::from_secs(15),
            max_cooldown: Duration::from_secs(300),
        }
    }
}

/// Routing defaults.
#[derive(Debug, Clone)]
pub struct RoutingConfig {
    /// Per-deployment circuit breakers.
    pub breaker: BreakerConfig,
}

impl Config {
    /// Reads and validates a config file; env vars are looked up in the process environment.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &|name| std::env::var(name).ok())
    }

    /// Parses and validates TOML text, resolving env vars through `env`.
    pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let raw = parse_raw(text)?;
        Self::from_raw(raw, env)
    }

    /// Nothing configured at all: no models, no keys.
    pub fn empty() -> Self {
        Self {
            server: ServerConfig::default(),
            keys: Vec::new(),
            providers: Vec::new(),
            models: Vec::new(),
            routing: RoutingConfig {
                breaker: BreakerConfig::default(),
            },
            state: StateConfig {
                redis_url: None,
                key_prefix: "ai".into(),
                timeout: Duration::from_millis(500),
                pool_size: 16,
            },
            admin_key: None,
            cache: CacheConfig::default(),
            discord: None,
            budgets: BudgetsConfig {
                reservation_ttl: Duration::from_secs(600),
                default_max_tokens: 1024,
                escalation_threshold: 85,
                ..BudgetsConfig::default()
            },
            local: LocalConfig::default(),

            missing_env: Vec::new(),
        }
    }

    /// The embedded default: the catalog's default chat, embedding and speech-to-text models,
    /// and its segmentation model (with the default speaker embedding) for diarisation,
    /// in-process.
    pub fn embedded_default() -> Self {
        use aigw_models::catalog::{Catalog, ModelKind};
        let mut config = Self::empty();
        let catalog = Catalog::builtin();
        let speaker_embedding = catalog
            .default_for(ModelKind::SpeakerEmbedding)
            .map(|e| LocalSource::Catalog(e.id.clone()));
        config.local.models = catalog
            .defaults()
            .filter_map(|entry| {
                let (kind, embedding) = match entry.kind {
                    ModelKind::Chat => (LocalKind::Chat, None),
                    ModelKind::Embedding => (LocalKind::Embedding, None),
                    ModelKind::SpeechToText => (LocalKind::Transcription, None),
                    ModelKind::Segmentation => {
                        (LocalKind::Diarization, Some(speaker_embedding.clone()?))
                    }
                    _ => return None,
                };
                Some(LocalModelConfig {
                    alias: entry.id.clone(),
                    source: LocalSource::Catalog(entry.id.clone()),
                    kind,
                    embedding,
                })
            })
            .collect();
        config
    }

    fn from_raw(raw: RawConfig, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut missing_env = Vec::new();
        let mut lookup = |name: &str, path: &str| -> Result<Option<String>, ConfigError> {
            check_env_name(name, path)?;
            let value = env(name).filter(|v| !v.is_empty());
            if value.is_none() {
                missing_env.push(name.to_string());
            }
            Ok(value)
        };

        let server = server_config(raw.server)?;

        let mut keys = Vec::new();
        let mut key_names = HashSet::new();
        for (i, k) in raw.auth.keys.into_iter().enumerate() {
            let path = format!("auth.keys[{i}]");
            if !key_names.insert(k.name.clone()) {
                return Err(invalid(
                    format!("{path}.name"),
                    format!("duplicate key name '{}'", k.name),
                ));
            }
            let sha256 = match (k.key_env, k.sha256) {
                (Some(var), None) => lookup(&var, &format!("{path}.key_env"))?
                    .map(|secret| crate::auth::hash_key(&secret)),
                (None, Some(hex_digest)) => {
                    Some(parse_sha256(&hex_digest, &format!("{path}.sha256"))?)
                }
                _ => {
                    return Err(invalid(
                        path,
                        "set exactly one of `key_env` (env var holding the key) or `sha256` (hex digest of the key)",
                    ));
                }
            };
            if let Some(p) = &k.policy
                && !raw.budgets.policies.contains_key(p)
            {
                return Err(invalid(
                    format!("{path}.policy"),
                    format!("no policy named '{p}' under [budgets.policies]"),
                ));
            }
            keys.push(ApiKeyConfig {
                name: k.name,
                sha256,
                tenant: k.tenant.unwrap_or_else(|| "default".into()),
                models: k.models.filter(|m| !m.iter().any(|x| x == "*")),
                policy: k.policy,
                requests_per_minute: k.requests_per_minute.filter(|n| *n > 0),
                tokens_per_minute: k.tokens_per_minute.filter(|n| *n > 0),
            });
        }

        let state = StateConfig {
            redis_url: match &raw.state.redis_url_env {
                Some(var) => lookup(var, "state.redis_url_env")?,
                None => None,
            },
            key_prefix: raw.state.key_prefix.clone().unwrap_or_else(|| "ai".into()),
            timeout: Duration::from_millis(raw.state.timeout_ms.unwrap_or(500).max(1)),
            pool_size: raw.state.pool_size.unwrap_or(16).max(1),
        };
        let admin_key = match &raw.admin.key_env {
            Some(var) => lookup(var, "admin.key_env")?.map(|k| crate::auth::hash_key(&k)),
            None => None,
        };

        let mut providers = Vec::new();
        for (name, p) in raw.providers {
            let path = format!("providers.{name}");
            let (p, kind) = p.split();
            if let ProviderKind::Azure { api_version } = &kind
                && api_version.trim().is_empty()
            {
                return Err(invalid(
                    format!("{path}.api_version"),
                    "must not be empty (e.g. \"2024-10-21\")",
                ));
            }
            let base_url = p.base_url.trim_end_matches('/').to_string();
            if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
                return Err(invalid(
                    format!("{path}.base_url"),
                    "must start with http:// or https://",
                ));
            }
            let api_key = match &p.api_key_env {
                Some(var) => lookup(var, &format!("{path}.api_key_env"))?,
                None => None,
            };
            let health_path = p.health_path.unwrap_or_else(|| "/models".into());
            if !health_path.starts_with('/') {
                return Err(invalid(
                    format!("{path}.health_path"),
                    "must start with '/'",
                ));
            }
            for header in p.headers.keys() {
                if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                    return Err(invalid(
                        format!("{path}.headers.{header}"),
                        "not a valid HTTP header name",
                    ));
                }
            }
            providers.push(ProviderConfig {
                name,
                kind,
                base_url,

                api_key,
                timeout: Duration::from_secs(p.timeout_secs.unwrap_or(120).max(1)),
                connect_timeout: Duration::from_secs(p.connect_timeout_secs.unwrap_or(5).max(1)),
                health_path,
                headers: p.headers,
            });
        }

        let mut aliases = HashSet::new();
        let local = local_config(raw.local.unwrap_or_default(), &mut aliases)?;
        let local_aliases: HashSet<String> = aliases.clone();
        let routing = routing_config(&raw.routing)?;
        let mut models = Vec::new();
        let mut deployment_names = HashSet::new();
        for (i, m) in raw.models.into_iter().enumerate() {
            let path = format!("models[{i}]");
            if m.name.trim().is_empty() {
                return Err(invalid(format!("{path}.name"), "must not be empty"));
            }
            if !aliases.insert(m.name.clone()) {
                return Err(invalid(
                    format!("{path}.name"),
                    format!("duplicate model name '{}'", m.name),
                ));
            }
            let known = |provider: &str| {
                providers.iter().any(|p| p.name == provider) || provider == LOCAL_PROVIDER
            };
            let groups = match (m.provider, m.groups.is_empty()) {
                (Some(provider), true) => {
                    if !known(&provider) {
                        return Err(invalid(
                            format!("{path}.provider"),
                            format!("no provider named '{provider}' under [providers]"),
                        ));
                    }
                    let upstream_model = m.upstream_model.unwrap_or_else(|| m.name.clone());
                    vec![vec![RawDeployment {
                        name: None,
                        provider,
                        model: Some(upstream_model),
                        weight: None,
                        max_in_flight: None,
                        timeout_secs: None,
                        first_token_timeout_secs: None,
                        health_path: None,
                        health_interval_secs: None,
                        headers: BTreeMap::new(),
                    }]]
                }
                (None, false) if m.upstream_model.is_none() => {
                    m.groups.into_iter().map(|g| g.deployments).collect()
                }
                _ => {
                    return Err(invalid(
                        path,
                        "set either `provider` (and optionally `upstream_model`) or `[[models.groups]]` with deployments, not both",
                    ));
                }
            };
            let mut checked = Vec::new();
            for (g, group) in groups.into_iter().enumerate() {
                if group.is_empty() {
                    return Err(invalid(
                        format!("{path}.groups[{g}].deployments"),
                        "must list at least one deployment",
                    ));
                }
                let mut out = Vec::new();
                for (d, dep) in group.into_iter().enumerate() {
                    let dpath = format!("{path}.groups[{g}].deployments[{d}]");
                    if !known(&dep.provider) {
                        return Err(invalid(
                            format!("{dpath}.provider"),
                            format!(
                                "no provider named '{}' under [providers] (or \"{LOCAL_PROVIDER}\" for a [[local.models]] name)",
                                dep.provider
                            ),
                        ));
                    }
                    let dep = deployment_config(
                        dep,
                        &m.name,
                        &dpath,
                        routing.first_token_timeout,
                        server.health_check_interval,
                    )?;
                    if dep.provider == LOCAL_PROVIDER
                        && !local_aliases.contains(&dep.upstream_model)
                    {
                        return Err(invalid(
                            format!("{dpath}.model"),
                            format!("no [[local.models]] named '{}'", dep.upstream_model),
                        ));
                    }
                    if !deployment_names.insert(dep.name.clone()) {
                        return Err(invalid(
                            format!("{dpath}.name"),
                            format!("duplicate deployment name '{}'", dep.name),
                        ));
                    }
                    out.push(dep);
                }
                checked.push(out);
            }
            let mut price = aigw_models::catalog::Price::FREE;
            for (value, key, slot) in [
                (
                    m.input_usd_per_1m,
                    "input_usd_per_1m",
                    &mut price.input_per_1m,
                ),
                (
                    m.output_usd_per_1m,
                    "output_usd_per_1m",
                    &mut price.output_per_1m,
                ),
            ] {
                match value {
                    Some(v) if v.is_finite() && v >= 0.0 => *slot = v,
                    Some(_) => {
                        return Err(invalid(
                            format!("{path}.{key}"),
                            "must be a non-negative number",
                        ));
                    }
                    None => {}
                }
            }
            let owned_by = m.owned_by.unwrap_or_else(|| checked[0][0].provider.clone());
            let total: usize = checked.iter().map(Vec::len).sum();
            models.push(ModelConfig {
                alias: m.name,
                owned_by,
                groups: checked,
                deadline: positive_secs(
                    m.deadline_secs.or(raw.routing.deadline_secs),
                    &format!("{path}.deadline_secs"),
                )?
                .unwrap_or(Duration::from_secs(300)),
                max_attempts: m
                    .max_attempts
                    .or(routing.max_attempts)
                    .unwrap_or(total)
                    .clamp(1, total),
                price,
            });
        }
        for (i, k) in keys.iter().enumerate() {
            for (j, model) in k.models.iter().flatten().enumerate() {
                if !aliases.contains(model) {
                    return Err(invalid(
                        format!("auth.keys[{i}].models[{j}]"),
                        format!("no model named '{model}' under [[models]]"),
                    ));
                }
            }
        }

        let budgets = budgets_config(raw.budgets, &aliases)?;
        let discord = match raw.discord {
            Some(d) => Some(d.validate(&aliases, &budgets, &mut lookup)?),
            None => None,
        };
        let defaults = CacheConfig::default();
        let cache = CacheConfig {
            enabled: raw.cache.enabled.unwrap_or(defaults.enabled),
            ttl: raw
                .cache
                .ttl_secs
                .filter(|s| *s > 0)
                .map_or(defaults.ttl, Duration::from_secs),
            max_entries: raw
                .cache
                .max_entries
                .filter(|n| *n > 0)
                .unwrap_or(defaults.max_entries),
            max_entry_bytes: raw
                .cache
                .max_entry_bytes
                .filter(|n| *n > 0)
                .unwrap_or(defaults.max_entry_bytes),
            coalesce_wait: raw
                .cache
                .coalesce_wait_secs
                .map_or(defaults.coalesce_wait, Duration::from_secs),
            charge_hits: raw.cache.charge_hits.unwrap_or(defaults.charge_hits),
        };
        Ok(Self {
            server,
            keys,
            providers,
            state,
            admin_key,
            budgets,
            cache,
            discord,
            models,
            routing: RoutingConfig {
                breaker: routing.breaker,
            },
            local,

            missing_env,
        })
    }
}

fn budgets_config(
    raw: RawBudgets,
    aliases: &HashSet<String>,
) -> Result<BudgetsConfig, ConfigError> {
    let mut policies = BTreeMap::new();
    for (name, p) in raw.policies {
        let path = format!("budgets.policies.{name}");
        let cost_micros = match p.cost_usd {
            Some(usd) if usd.is_finite() && usd >= 0.0 => Some((usd * 1e6).round() as u64),
            Some(_) => {
                return Err(invalid(
                    format!("{path}.cost_usd"),
                    "must be a non-negative number",
                ));
            }
            None => None,
        };
        let audio_ms = match p.audio_secs {
            Some(s) if s.is_finite() && s >= 0.0 => Some((s * 1000.0).round() as u64),
            Some(_) => {
                return Err(invalid(
                    format!("{path}.audio_secs"),
                    "must be a non-negative number",
                ));
            }
            None => None,
        };
        let window = match p.window.as_deref().unwrap_or("session") {
            "session" => BudgetWindow::Session,
            "daily" => BudgetWindow::Daily,
            "weekly" => BudgetWindow::Weekly,
            other => {
                return Err(invalid(
                    format!("{path}.window"),
                    format!("'{other}' is not session, daily or weekly"),
                ));
            }
        };
        let mut thresholds = p.thresholds.unwrap_or_else(|| vec![50, 85, 100]);
        if thresholds.iter().any(|t| *t == 0 || *t > 100) {
            return Err(invalid(
                format!("{path}.thresholds"),
                "percentages must be 1..=100",
            ));
        }
        thresholds.sort_unstable();
        thresholds.dedup();
        let downgrade = match (p.downgrade_at, p.downgrade_to) {
            (None, None) => None,
            (Some(at), Some(to)) => {
                if !aliases.contains(&to) {
                    return Err(invalid(
                        format!("{path}.downgrade_to"),
                        format!("no model named '{to}'"),
                    ));
                }
                Some((at, to))
            }
            _ => {
                return Err(invalid(
                    path,
                    "set both `downgrade_at` (percent) and `downgrade_to` (a model alias), or neither",
                ));
            }
        };
        policies.insert(
            name.clone(),
            PolicyConfig {
                name,
                limits: aigw_state::budget::Limits {
                    tokens: p.tokens,
                    cost_micros,
                    audio_ms,
                },
                window,
                thresholds,
                downgrade,
            },
        );
    }
    if let Some(p) = &raw.default_policy
        && !policies.contains_key(p)
    {
        return Err(invalid(
            "budgets.default_policy",
            format!("no policy named '{p}' under [budgets.policies]"),
        ));
    }
    let escalation_threshold = raw.escalation_threshold.unwrap_or(85);
    if escalation_threshold == 0 || escalation_threshold > 100 {
        return Err(invalid(
            "budgets.escalation_threshold",
            "must be 1..=100 (percent)",
        ));
    }
    if let Some(url) = &raw.webhook_url
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        return Err(invalid(
            "budgets.webhook_url",
            "must start with http:// or https://",
        ));
    }
    Ok(BudgetsConfig {
        policies,
        default_policy: raw.default_policy,
        reservation_ttl: positive_secs(raw.reservation_ttl_secs, "budgets.reservation_ttl_secs")?
            .unwrap_or(Duration::from_secs(600)),
        default_max_tokens: raw.default_max_tokens.unwrap_or(1024).max(1),
        escalation_threshold,
        webhook_url: raw.webhook_url,
    })
}

/// `[routing]` as validated, with the defaults deployments inherit.
struct RoutingDefaults {
    first_token_timeout: Option<Duration>,
    max_attempts: Option<usize>,
    breaker: BreakerConfig,
}

fn routing_config(raw: &RawRouting) -> Result<RoutingDefaults, ConfigError> {
    let d = BreakerConfig::default();
    let b = &raw.breaker;
    let error_rate = b.error_rate.unwrap_or(d.error_rate);
    if !(0.0..=1.0).contains(&error_rate) {
        return Err(invalid(
            "routing.breaker.error_rate",
            "must be between 0 and 1 (0 disables the rule)",
        ));
    }
    let secs = |v: Option<f64>, key: &str, default: Duration| {
        positive_secs(v, &format!("routing.breaker.{key}")).map(|v| v.unwrap_or(default))
    };
    Ok(RoutingDefaults {
        first_token_timeout: positive_secs(
            raw.first_token_timeout_secs,
            "routing.first_token_timeout_secs",
        )?,
        max_attempts: raw.max_attempts,
        breaker: BreakerConfig {
            consecutive_failures: b.consecutive_failures.unwrap_or(d.consecutive_failures),
            error_rate,
            min_requests: b.min_requests.unwrap_or(d.min_requests).max(1),
            window: secs(b.window_secs, "window_secs", d.window)?,
            cooldown: secs(b.cooldown_secs, "cooldown_secs", d.cooldown)?,
            max_cooldown: secs(b.max_cooldown_secs, "max_cooldown_secs", d.max_cooldown)?,
        },
    })
}

fn deployment_config(
    raw: RawDeployment,
    alias: &str,
    path: &str,
    first_token_timeout: Option<Duration>,
    health_interval: Duration,
) -> Result<DeploymentConfig, ConfigError> {
    let upstream_model = raw.model.unwrap_or_else(|| alias.to_string());
    let name = raw
        .name
        .unwrap_or_else(|| format!("{alias}/{}/{upstream_model}", raw.provider));
    if name.trim().is_empty() {
        return Err(invalid(format!("{path}.name"), "must not be empty"));
    }
    if let Some(p) = &raw.health_path
        && !p.starts_with('/')
    {
        return Err(invalid(
            format!("{path}.health_path"),
            "must start with '/'",
        ));
    }
    for header in raw.headers.keys() {
        if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
            return Err(invalid(
                format!("{path}.headers.{header}"),
                "not a valid HTTP header name",
            ));
        }
    }
    for (header, value) in &raw.headers {
        if http::HeaderValue::from_str(value).is_err() {
            return Err(invalid(
                format!("{path}.headers.{header}"),
                "not a valid HTTP header value",
            ));
        }
    }
    Ok(DeploymentConfig {
        name,
        provider: raw.provider,
        upstream_model,
        weight: raw.weight.unwrap_or(1),
        max_in_flight: raw.max_in_flight,
        timeout: positive_secs(raw.timeout_secs, &format!("{path}.timeout_secs"))?,
        first_token_timeout: positive_secs(
            raw.first_token_timeout_secs,
            &format!("{path}.first_token_timeout_secs"),
        )?
        .or(first_token_timeout),
        health_path: raw.health_path,
        health_interval: positive_secs(
            raw.health_interval_secs,
            &format!("{path}.health_interval_secs"),
        )?
        .unwrap_or(health_interval),
        headers: raw.headers,
    })
    .and_then(|d| {
        if d.weight == 0 {
            Err(invalid(
                format!("{path}.weight"),
                "must be at least 1 (remove the deployment to stop using it)",
            ))
        } else {
            Ok(d)
        }
    })
}

/// A duration in (possibly fractional) seconds, which must be positive and finite.
fn positive_secs(value: Option<f64>, path: &str) -> Result<Option<Duration>, ConfigError> {
    match value {
        None => Ok(None),
        Some(v) if v.is_finite() && v > 0.0 && v <= 86_400.0 * 365.0 => {
            Ok(Some(Duration::from_secs_f64(v)))
        }
        Some(_) => Err(invalid(path, "must be a positive number of seconds")),
    }
}

fn local_config(raw: RawLocal, aliases: &mut HashSet<String>) -> Result<LocalConfig, ConfigError> {
    let defaults = LocalConfig::default();
    let device = match raw.device.as_deref().unwrap_or("cpu") {
        "cpu" => DeviceSpec::Cpu,
        "cuda" => DeviceSpec::Cuda(0),
        other => match other.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(n) => DeviceSpec::Cuda(n),
            None => {
                return Err(invalid(
                    "local.device",
                    format!("'{other}' is not cpu, cuda or cuda:N"),
                ));
            }
        },
    };
    let mut models = Vec::new();
    for (i, m) in raw.models.into_iter().enumerate() {
        let path = format!("local.models[{i}]");
        if !aliases.insert(m.name.clone()) {
            return Err(invalid(
                format!("{path}.name"),
                format!("duplicate model name '{}'", m.name),
            ));
        }
        let catalog_entry = m.model.as_deref().map(|id| {
            aigw_models::catalog::lookup(id).ok_or_else(|| {
                let known: Vec<&str> = aigw_models::catalog::Catalog::builtin().ids().collect();
                invalid(
                    format!("{path}.model"),
                    format!("no catalog model '{id}' (known: {})", known.join(", ")),
                )
            })
        });
        let (source, catalog_kind) = match (catalog_entry, m.path) {
            (Some(entry), None) => {
                let entry = entry?;
                (LocalSource::Catalog(entry.id.clone()), Some(entry.kind))
            }
            (None, Some(p)) => (LocalSource::Path(p.into()), None),
            _ => {
                return Err(invalid(
                    path,
                    "set exactly one of `model` (a catalog id) or `path` (a GGUF file, model directory or whisper ggml file)",
                ));
            }
        };
        let kind = match (m.kind.as_deref(), catalog_kind) {
            (Some("chat"), _) => LocalKind::Chat,
            (Some("embedding"), _) => LocalKind::Embedding,
            (Some("transcription"), _) => LocalKind::Transcription,
            (Some("diarization"), _) => LocalKind::Diarization,
            (Some(other), _) => {
                return Err(invalid(
                    format!("{path}.kind"),
                    format!("'{other}' is not chat, embedding, transcription or diarization"),
                ));
            }
            (None, Some(aigw_models::catalog::ModelKind::Chat)) => LocalKind::Chat,
            (None, Some(aigw_models::catalog::ModelKind::Embedding)) => LocalKind::Embedding,
            (None, Some(aigw_models::catalog::ModelKind::SpeechToText)) => LocalKind::Transcription,
            (None, Some(aigw_models::catalog::ModelKind::Segmentation)) => LocalKind::Diarization,
            (None, Some(other)) => {
                return Err(invalid(
                    format!("{path}.model"),
                    format!(
                        "catalog model of kind {} cannot be served here",
                        other.as_str()
                    ),
                ));
            }
            (None, None) => {
                return Err(invalid(
                    format!("{path}.kind"),
                    "required with `path`: chat, embedding, transcription or diarization",
                ));
            }
        };
        let embedding = local_embedding(&path, kind, m.embedding_model, m.embedding_path)?;
        models.push(LocalModelConfig {
            alias: m.name,
            source,
            kind,
            embedding,
        });
    }
    Ok(LocalConfig {
        device,
        model_dir: raw.model_dir.map(Into::into),
        max_batch: raw.max_batch.unwrap_or(defaults.max_batch).max(1),
        max_queue: raw.max_queue.unwrap_or(defaults.max_queue).max(1),
        prefill_chunk: raw.prefill_chunk.unwrap_or(defaults.prefill_chunk).max(16),
        embedding_concurrency: raw
            .embedding_concurrency
            .unwrap_or(defaults.embedding_concurrency)
            .max(1),
        threads: raw.threads.unwrap_or(0),
        transcription_workers: raw
            .transcription_workers
            .unwrap_or(defaults.transcription_workers)
            .max(1),
        transcription_threads: raw.transcription_threads.unwrap_or(0),
        transcription_queue: raw
            .transcription_queue
            .unwrap_or(defaults.transcription_queue)
            .max(1),
        max_audio_secs: match raw.max_audio_secs {
            None => defaults.max_audio_secs,
            Some(s) if s.is_finite() && s > 0.0 => s,
            Some(_) => {
                return Err(invalid(
                    "local.max_audio_secs",
                    "must be a positive number of seconds",
                ));
            }
        },
        models,
    })
}

/// The speaker embedding model of a `[[local.models]]` entry: for diarisation, the catalog id
/// `embedding_model` or the file `embedding_path` (default: the catalog's default speaker
/// embedding); refused for the other kinds.
fn local_embedding(
    path: &str,
    kind: LocalKind,
    model: Option<String>,
    file: Option<String>,
) -> Result<Option<LocalSource>, ConfigError> {
    use aigw_models::catalog::{Catalog, ModelKind};
    if kind != LocalKind::Diarization {
        return match (&model, &file) {
            (None, None) => Ok(None),
            _ => Err(invalid(
                path,
                "`embedding_model` and `embedding_path` are for kind = \"diarization\"",
            )),
        };
    }
    match (model, file) {
        (Some(id), None) => match aigw_models::catalog::lookup(&id) {
            Some(entry) if entry.kind == ModelKind::SpeakerEmbedding => {
                Ok(Some(LocalSource::Catalog(id)))
            }
            _ => Err(invalid(
                format!("{path}.embedding_model"),
                format!("'{id}' is not a speaker embedding model of the catalog"),
            )),
        },
        (None, Some(file)) => Ok(Some(LocalSource::Path(file.into()))),
        (None, None) => Catalog::builtin()
            .default_for(ModelKind::SpeakerEmbedding)
            .or_else(|| {
                Catalog::builtin()
                    .entries()
                    .iter()
                    .find(|e| e.kind == ModelKind::SpeakerEmbedding)
            })
            .map(|e| Some(LocalSource::Catalog(e.id.clone())))
            .ok_or_else(|| {
                invalid(
                    format!("{path}.embedding_model"),
                    "the catalog has no speaker embedding model",
                )
            }),
        (Some(_), Some(_)) => Err(invalid(
            path,
            "set at most one of `embedding_model` and `embedding_path`",
        )),
    }
}

/// Parses TOML into the raw shape, reporting the path of an unknown or mistyped key.
fn parse_raw(text: &str) -> Result<RawConfig, ConfigError> {
    let de = toml::Deserializer::parse(text).map_err(|e| ConfigError::Parse {
        path: "(file)".into(),
        message: e.to_string().trim_end().to_string(),
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        ConfigError::Parse {
            path: if path == "." { "(file)".into() } else { path },
            message: e.into_inner().to_string().trim_end().to_string(),
        }
    })
}

fn server_config(raw: RawServer) -> Result<ServerConfig, ConfigError> {
    let defaults = ServerConfig::default();
    let listen = match raw.listen {
        Some(addr) => parse_listen(&addr).map_err(|m| invalid("server.listen", m))?,
        None => defaults.listen,
    };
    Ok(ServerConfig {
        listen,
        max_body_bytes: raw.max_body_bytes.unwrap_or(defaults.max_body_bytes),
        max_audio_body_bytes: raw
            .max_audio_body_bytes
            .unwrap_or(defaults.max_audio_body_bytes),
        shutdown_grace: raw
            .shutdown_grace_secs
            .map(Duration::from_secs)
            .unwrap_or(defaults.shutdown_grace),
        health_check_interval: raw
            .health_check_interval_secs
            .map(|s| Duration::from_secs(s.max(1)))
            .unwrap_or(defaults.health_check_interval),
        cors_allow_origins: raw.cors_allow_origins,
    })
}

/// Parses a listen address (`host:port`).
pub fn parse_listen(addr: &str) -> Result<SocketAddr, String> {
    addr.parse()
        .map_err(|_| format!("'{addr}' is not an address like 127.0.0.1:8080 or [::]:8080"))
}

fn check_env_name(name: &str, path: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(invalid(
            path,
            format!(
                "'{name}' is not an environment variable name (the secret itself belongs in the environment, not in the file)"
            ),
        ))
    }
}

fn parse_sha256(text: &str, path: &str) -> Result<[u8; 32], ConfigError> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut out)
        .map_err(|_| invalid(path, "must be 64 hex digits (sha256 of the key)"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "UPSTREAM_KEY" || name == "GM_KEY").then(|| format!("secret-{name}"))
    }

    const EXAMPLE: &str = r#"
[server]
listen = "127.0.0.1:9999"

[[auth.keys]]
name = "gm"
key_env = "GM_KEY"
models = ["chat"]

[providers.up]
kind = "openai"
base_url = "http://127.0.0.1:1/v1/"
api_key_env = "UPSTREAM_KEY"

[[models]]
name = "chat"
provider = "up"
upstream_model = "gpt-4o-mini"
"#;

    #[test]
    fn example_parses() {
        let c = Config::parse(EXAMPLE, &env).unwrap();
        assert_eq!(c.server.listen.port(), 9999);
        assert_eq!(c.providers[0].base_url, "http://127.0.0.1:1/v1");
        assert_eq!(
            c.providers[0].api_key.as_deref(),
            Some("secret-UPSTREAM_KEY")
        );
        let d = &c.models[0].groups[0][0];
        assert_eq!(d.upstream_model, "gpt-4o-mini");
        assert_eq!(d.provider, "up");
        assert_eq!(d.name, "chat/up/gpt-4o-mini");
        assert_eq!(c.models[0].max_attempts, 1);

        assert_eq!(
            c.keys[0].sha256,
            Some(crate::auth::hash_key("secret-GM_KEY"))
        );
        assert!(c.missing_env.is_empty());
    }

    #[test]
    fn diarization_models_and_their_embedding() {
        let local = |entry: &str| Config::parse(&format!("[[local.models]]\n{entry}"), &env);
        // The kind follows from a segmentation model; the embedding defaults to the catalog's.
        let c = local("name = \"d\"\nmodel = \"pyannote-segmentation-3.0\"").unwrap();
        assert_eq!(c.local.models[0].kind, LocalKind::Diarization);
        assert_eq!(
            c.local.models[0].embedding,
            Some(LocalSource::Catalog("campplus-sv".into()))
        );
        let c = local(
            "name = \"d\"\nkind = \"diarization\"\npath = \"/m/seg.bin\"\nembedding_path = \"/m/cam.pt\"",
        )
        .unwrap();
        assert_eq!(
            c.local.models[0].embedding,
            Some(LocalSource::Path("/m/cam.pt".into()))
        );
        for (entry, path) in [
            (
                "name = \"d\"\nmodel = \"pyannote-segmentation-3.0\"\nembedding_model = \"whisper-tiny.en\"",
                "local.models[0].embedding_model",
            ),
            (
                "name = \"w\"\nmodel = \"whisper-tiny.en\"\nembedding_model = \"campplus-sv\"",
                "local.models[0]",
            ),
            (
                "name = \"d\"\nmodel = \"pyannote-segmentation-3.0\"\nembedding_model = \"campplus-sv\"\nembedding_path = \"x\"",
                "local.models[0]",
            ),
        ] {
            let err = local(entry).unwrap_err().to_string();
            assert!(err.starts_with(path), "{err}");
        }
        // The embedded default serves diarisation with the default embedding.
        let d = Config::embedded_default();
        let diar = d
            .local
            .models
            .iter()
            .find(|m| m.kind == LocalKind::Diarization)
            .unwrap();
        assert_eq!(diar.alias, "pyannote-segmentation-3.0");
        assert!(diar.embedding.is_some());
    }

    #[test]
    fn unknown_key_reports_its_path() {
        let text = EXAMPLE.replace("api_key_env", "api_kye_env");
        let err = Config::parse(&text, &env).unwrap_err().to_string();
        assert!(err.starts_with("providers.up"), "{err}");
        assert!(err.contains("api_kye_env"), "{err}");
        let err = Config::parse("[server]\nlisten_addr = \"x\"\n", &env)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("server.listen_addr") || err.starts_with("server"),
            "{err}"
        );
        assert!(err.contains("listen_addr"), "{err}");
    }

    #[test]
    fn semantic_errors() {
        let err = Config::parse(
            &EXAMPLE.replace("provider = \"up\"", "provider = \"nope\""),
            &env,
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("models[0].provider"), "{err}");
        let err = Config::parse(
            &EXAMPLE.replace("kind = \"openai\"", "kind = \"gopher\""),
            &env,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("gopher"), "{err}");
        let err = Config::parse(
            &EXAMPLE.replace("key_env = \"GM_KEY\"", "key_env = \"sk-live-123\""),
            &env,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("not an environment variable name"), "{err}");
    }

    #[test]
    fn missing_env_is_recorded() {
        let c = Config::parse(EXAMPLE, &|_| None).unwrap();
        assert_eq!(
            c.missing_env,
            vec!["GM_KEY".to_string(), "UPSTREAM_KEY".to_string()]
        );
    }
}
