//! The shared-state scenario (issue 5): what the response cache, budgets and rate limits
//! cost, in memory and on Redis.
//!
//! It starts a throwaway `redis-server` on a free loopback port
//! ([`aigw_state::testing::RedisServer`]), one mock upstream and up to three gateways, all
//! serving `bench-model` from the mock behind the same API key:
//!
//! - `memory`: no `[state]` (cache in memory), no budgets, no limits;
//! - `redis`: `[state] redis_url_env` (cache on Redis), no budgets, no limits;
//! - `redis+limits`: the same, plus `[budgets] default_policy` with a ceiling of 10^12
//!   tokens and the key limited to 10^9 requests and 10^12 tokens per minute (limits that
//!   never deny, so every request pays for the checks and nothing else changes).
//!
//! Measures:
//!
//! 1. **Cache hits**: a deterministic request (`temperature: 0`) is sent once (stored), then
//!    closed-loop on 16 keep-alive connections against `memory` and `redis`. Every request
//!    after the first hit must answer 2xx with `x-cache: hit`, or the run fails.
//! 2. **Budgets + rate limits on Redis**: a non-cached request (`temperature: 0.7` and
//!    `x-aigw-cache: off`, answered `x-cache: bypass`) sent one at a time on one connection
//!    to `redis` and to `redis+limits`, in interleaved rounds. Every answer of
//!    `redis+limits` must carry `x-aigw-budget-remaining` and `x-ratelimit-remaining-*`
//!    (the checks ran), every answer of `redis` must carry none of them.
//!
//! Without `redis-server` the Redis parts are reported as skipped.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aigw_state::testing::RedisServer;
use anyhow::{Context as _, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::client::{Connection, Target};
use crate::overhead::TargetCheck;
use crate::procs::{ChildGuard, TempFile, free_port, spawn_aigw, spawn_mock};
use crate::report_md::{provenance, targets_table};
use crate::results::{
    CpuSample, Machine, UtcTime, command_line, git_commit, uncommitted_paths, write_pair,
};
use crate::routing::overhead_us;
use crate::stats::{LatencySummary, fmt_us, new_histogram};

/// The cached request: deterministic, so the gateway caches it.
pub const CACHE_BODY: &str = r#"{"model":"bench-model","messages":[{"role":"user","content":"Say hello"}],"max_tokens":16,"temperature":0}"#;
/// The request of the budget and rate-limit runs: not deterministic, and sent with
/// `x-aigw-cache: off`, so it never touches the cache.
pub const UNCACHED_BODY: &str = r#"{"model":"bench-model","messages":[{"role":"user","content":"Say hello"}],"max_tokens":16,"temperature":0.7}"#;
/// The API key every gateway accepts (given to them in [`KEY_ENV`]).
pub const BENCH_KEY: &str = "sk-aigw-bench-state";
/// Env var holding [`BENCH_KEY`] for the gateways.
pub const KEY_ENV: &str = "AIGW_BENCH_KEY";
/// Env var holding the Redis URL for the gateways.
pub const REDIS_ENV: &str = "AIGW_BENCH_REDIS_URL";
/// Requests per minute of the limited key: never reached.
pub const REQUESTS_PER_MINUTE: u64 = 1_000_000_000;
/// Tokens per minute of the limited key: never reached.
pub const TOKENS_PER_MINUTE: u64 = 1_000_000_000_000;
/// Token ceiling of the budget policy: never reached.
pub const BUDGET_TOKENS: u64 = 1_000_000_000_000;
/// Ceiling on the cache-hit p99 in memory, µs.
pub const TARGET_HIT_P99_MEMORY_US: f64 = 1_000.0;
/// Ceiling on the cache-hit p99 on Redis, µs.
pub const TARGET_HIT_P99_REDIS_US: f64 = 2_000.0;
/// Ceiling on the p50 that budgets + rate limits add, µs.
pub const TARGET_ADDED_P50_US: f64 = 500.0;

/// How long the first cache hit may take to appear after the storing request.
const FIRST_HIT_WAIT: Duration = Duration::from_secs(5);

/// How to run the scenario.
#[derive(Debug, Clone)]
pub struct StateBenchConfig {
    /// The `aigw` binary.
    pub aigw: PathBuf,
    /// Connections of the cache-hit runs.
    pub connections: usize,
    /// Measured window of each cache-hit run.
    pub duration: Duration,
    /// Unmeasured time before each cache-hit run.
    pub warmup: Duration,
    /// Measured requests per gateway of the budget + limits comparison.
    pub requests: usize,
    /// Unmeasured requests per gateway before it.
    pub warmup_requests: usize,
    /// Rounds the measured requests are split into.
    pub rounds: usize,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Where the result files go.
    pub out_dir: PathBuf,
}

/// The gateways of the scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Cache in memory, no budgets, no limits.
    Memory,
    /// Cache on Redis, no budgets, no limits.
    Redis,
    /// Cache on Redis, a budget policy and rate limits that never deny.
    RedisLimits,
}

impl Variant {
    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Redis => "redis",
            Self::RedisLimits => "redis+limits",
        }
    }
}

/// The gateway config of `variant`, routing `bench-model` to the mock.
pub fn gateway_config(listen_port: u16, mock: SocketAddr, variant: Variant) -> String {
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:{listen_port}\"\n\n\
         [[auth.keys]]\nname = \"bench\"\nkey_env = \"{KEY_ENV}\"\n"
    );
    if variant == Variant::RedisLimits {
        text.push_str(&format!(
            "requests_per_minute = {REQUESTS_PER_MINUTE}\ntokens_per_minute = {TOKENS_PER_MINUTE}\n"
        ));
    }
    if variant != Variant::Memory {
        text.push_str(&format!("\n[state]\nredis_url_env = \"{REDIS_ENV}\"\n"));
    }
    if variant == Variant::RedisLimits {
        text.push_str(&format!(
            "\n[budgets]\ndefault_policy = \"bench\"\n\n\
             [budgets.policies.bench]\ntokens = {BUDGET_TOKENS}\n"
        ));
    }
    text.push_str(&format!(
        "\n[providers.mock]\nkind = \"openai\"\nbase_url = \"http://{mock}/v1\"\n\n\
         [[models]]\nname = \"bench-model\"\nprovider = \"mock\"\nupstream_model = \"mock-model\"\n"
    ));
    text
}

/// One cache-hit run.
#[derive(Debug, Clone, Serialize)]
pub struct CacheRun {
    /// `memory` or `redis`.
    pub store: &'static str,
    /// Keep-alive connections, closed loop.
    pub connections: usize,
    /// Measured requests (every one a hit).
    pub requests: u64,
    /// Measured window, seconds.
    pub duration_s: f64,
    /// Hits per second.
    pub rps: f64,
    /// Latency seen by the client, µs.
    pub client_latency_us: LatencySummary,
    /// The gateway's own time (`x-aigw-overhead-ms`), µs.
    pub gateway_time_us: LatencySummary,
    /// Every request of the run: the storing one, the first hit, the warmup and the
    /// measured ones.
    pub requests_sent: u64,
    /// Redis commands per request of the run (`INFO commandstats` before and after,
    /// divided by `requests_sent`); empty in memory.
    pub redis_per_request: Vec<RedisCommandRate>,
}

/// How often one Redis command ran per request, and Redis's own time on it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RedisCommandRate {
    /// The command, lower case (`get`, `evalsha`, `ping`, ...).
    pub command: String,
    /// Calls per request.
    pub calls_per_request: f64,
    /// Redis's time executing it per request, µs (`usec` of `INFO commandstats`).
    pub redis_us_per_request: f64,
}

/// One gateway of the budget + limits comparison.
#[derive(Debug, Clone, Serialize)]
pub struct SequentialSide {
    /// `redis` or `redis+limits`.
    pub gateway: &'static str,
    /// Measured requests.
    pub requests: u64,
    /// Latency seen by the client, µs.
    pub client_latency_us: LatencySummary,
    /// The gateway's own time (`x-aigw-overhead-ms`), µs.
    pub gateway_time_us: LatencySummary,
    /// Every request sent to it, warmup included.
    pub requests_sent: u64,
    /// Redis commands per request sent (`INFO commandstats` around each of its batches).
    pub redis_per_request: Vec<RedisCommandRate>,
}

/// The budget + limits comparison, one connection, sequential.
#[derive(Debug, Clone, Serialize)]
pub struct AddedLatency {
    /// Connections per gateway (1: one request at a time).
    pub connections: usize,
    /// Rounds interleaving the two gateways.
    pub rounds: usize,
    /// Without budgets and limits.
    pub baseline: SequentialSide,
    /// With them.
    pub limited: SequentialSide,
    /// Client p50 with minus without, µs.
    pub added_client_p50_us: i64,
    /// Client p99 with minus without, µs.
    pub added_client_p99_us: i64,
    /// Gateway-time p50 with minus without, µs.
    pub added_gateway_p50_us: i64,
}

/// Everything the scenario writes.
#[derive(Debug, Clone, Serialize)]
pub struct StateReport {
    /// Scenario name.
    pub scenario: &'static str,
    /// UTC date of the run.
    pub date: String,
    /// UTC time the run ended.
    pub timestamp: String,
    /// Where it ran.
    pub machine: Machine,
    /// The exact command line.
    pub command: String,
    /// Short commit of the checkout, when known.
    pub git_commit: Option<String>,
    /// Tracked files with uncommitted changes when the run ended (the `-dirty`).
    pub uncommitted: Vec<String>,
    /// The gateway binary measured.
    pub gateway_binary: String,
    /// Share of the machine's CPU time used by other processes during the run (0 to 1):
    /// anything above a few percent means the numbers are noisier than they should be.
    pub other_processes_cpu_share: Option<f64>,
    /// `/proc/loadavg` when the run started and when it ended.
    pub loadavg: [String; 2],
    /// `redis-server --version`, when Redis was used.
    pub redis_server: Option<String>,
    /// Why the Redis parts were skipped, if they were.
    pub redis_skipped: Option<String>,
    /// The cached request.
    pub cache_body: &'static str,
    /// The request of the budget + limits comparison (sent with `x-aigw-cache: off`).
    pub uncached_body: &'static str,
    /// Unmeasured seconds before each cache-hit run.
    pub warmup_s: f64,
    /// The cache-hit runs, in the order they ran.
    pub cache_hits: Vec<CacheRun>,
    /// The budget + limits comparison (absent without Redis).
    pub budgets_and_limits: Option<AddedLatency>,
    /// Targets and verdicts.
    pub targets: Vec<TargetCheck>,
}

/// A running gateway of the scenario with its files.
struct Gateway {
    variant: Variant,
    guard: ChildGuard,
    port: u16,
    _config: TempFile,
    _log: TempFile,
}

impl Gateway {
    fn spawn(
        aigw: &Path,
        variant: Variant,
        mock: SocketAddr,
        redis_url: Option<&str>,
    ) -> anyhow::Result<Self> {
        let port = free_port()?;
        let tag = variant.name().replace('+', "-");
        let config = TempFile::new(&format!("state-{tag}.toml"));
        let log = TempFile::new(&format!("state-{tag}.log"));
        std::fs::write(config.path(), gateway_config(port, mock, variant))
            .with_context(|| format!("cannot write {}", config.path().display()))?;
        let args = [
            OsStr::new("serve"),
            OsStr::new("--config"),
            config.path().as_os_str(),
        ];
        let mut env = vec![
            ("RUST_LOG", "warn".to_owned()),
            (KEY_ENV, BENCH_KEY.to_owned()),
        ];
        if let Some(url) = redis_url {
            env.push((REDIS_ENV, url.to_owned()));
        }
        let guard = spawn_aigw(aigw, &args, &env, &log)?;
        Ok(Self {
            variant,
            guard,
            port,
            _config: config,
            _log: log,
        })
    }

    fn target(&self, body: &'static str, headers: &[String]) -> anyhow::Result<Target> {
        let mut all = vec![format!("Authorization: Bearer {BENCH_KEY}")];
        all.extend_from_slice(headers);
        Target::new(
            &format!("http://127.0.0.1:{}/v1/chat/completions", self.port),
            Some(Bytes::from_static(body.as_bytes())),
            &all,
        )
    }

    async fn wait_healthy(&mut self) -> anyhow::Result<()> {
        let health = self.target(CACHE_BODY, &[])?.get("/health")?;
        self.guard
            .wait_healthy(&health, Duration::from_secs(30))
            .await?;
        eprintln!(
            "gateway `{}` healthy on 127.0.0.1:{}",
            self.variant.name(),
            self.port
        );
        Ok(())
    }
}

fn header<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Sends one request and checks that it answered 2xx; returns its headers and latency.
async fn exchange(
    conn: &mut Connection,
    target: &Target,
    timeout: Duration,
) -> anyhow::Result<(http::HeaderMap, u64)> {
    let t0 = Instant::now();
    let (status, headers) = conn
        .send_headers(target, timeout)
        .await
        .map_err(|e| anyhow::anyhow!("{}: {e}", target.url))?;
    let took = t0.elapsed().as_micros().max(1) as u64;
    if !status.is_success() {
        bail!("{} answered HTTP {status}", target.url);
    }
    Ok((headers, took))
}

/// Stores the cached answer and waits until a request is served from it.
async fn prime_cache(target: &Target, timeout: Duration) -> anyhow::Result<u64> {
    let mut conn = Connection::open(target).await?;
    let (headers, _) = exchange(&mut conn, target, timeout).await?;
    let mut sent = 1;
    eprintln!(
        "first request: x-cache: {}",
        header(&headers, "x-cache").unwrap_or("(none)")
    );
    let deadline = Instant::now() + FIRST_HIT_WAIT;
    loop {
        let (headers, _) = exchange(&mut conn, target, timeout).await?;
        sent += 1;
        match header(&headers, "x-cache") {
            Some("hit") => return Ok(sent),
            other if Instant::now() >= deadline => bail!(
                "no cache hit within {FIRST_HIT_WAIT:?} of storing the answer (last x-cache: {})",
                other.unwrap_or("(none)")
            ),
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// What one worker of a cache-hit run measured.
struct HitWorker {
    sent: u64,
    requests: u64,
    client: Histogram<u64>,
    gateway: Histogram<u64>,
}

/// One closed-loop worker: sends until `end`, recording requests sent from `measure` on;
/// every answer must be a hit.
async fn hit_worker(
    target: Arc<Target>,
    measure: Instant,
    end: Instant,
    timeout: Duration,
) -> anyhow::Result<HitWorker> {
    let mut conn = Connection::open(&target).await?;
    let mut out = HitWorker {
        sent: 0,
        requests: 0,
        client: new_histogram()?,
        gateway: new_histogram()?,
    };
    loop {
        let sent = Instant::now();
        if sent >= end {
            return Ok(out);
        }
        let (headers, took) = exchange(&mut conn, &target, timeout).await?;
        out.sent += 1;
        let cache = header(&headers, "x-cache");
        if cache != Some("hit") {
            bail!(
                "a cache-hit run got x-cache: {} (every request must be a hit)",
                cache.unwrap_or("(none)")
            );
        }
        if sent >= measure {
            out.requests += 1;
            out.client.saturating_record(took);
            out.gateway.saturating_record(overhead_us(&headers)?);
        }
    }
}

/// Primes the cache of `gw`, then hammers it with hits.
async fn cache_run(
    gw: &Gateway,
    cfg: &StateBenchConfig,
    store: &'static str,
    redis_port: Option<u16>,
) -> anyhow::Result<CacheRun> {
    let target = Arc::new(gw.target(CACHE_BODY, &[])?);
    let stats_before = redis_port.map(redis_commandstats).transpose()?;
    let mut requests_sent = prime_cache(&target, cfg.timeout).await?;
    eprintln!(
        "measuring cache hits in {store}, {} connection(s), {:?} after {:?} warmup",
        cfg.connections, cfg.duration, cfg.warmup
    );
    let start = Instant::now();
    let measure = start + cfg.warmup;
    let end = measure + cfg.duration;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..cfg.connections.max(1) {
        set.spawn(hit_worker(Arc::clone(&target), measure, end, cfg.timeout));
    }
    let mut requests = 0;
    let mut client = new_histogram()?;
    let mut gateway = new_histogram()?;
    while let Some(joined) = set.join_next().await {
        let w = joined.context("a cache-hit worker panicked")??;
        requests += w.requests;
        requests_sent += w.sent;
        client.add(&w.client)?;
        gateway.add(&w.gateway)?;
    }
    let duration_s = cfg.duration.as_secs_f64();
    let run = CacheRun {
        store,
        connections: cfg.connections.max(1),
        requests,
        duration_s,
        rps: requests as f64 / duration_s,
        client_latency_us: LatencySummary::from_histogram(&client),
        gateway_time_us: LatencySummary::from_histogram(&gateway),
        requests_sent,
        redis_per_request: match (redis_port, stats_before) {
            (Some(port), Some(before)) => {
                per_request(&before, &redis_commandstats(port)?, requests_sent)
            }
            _ => Vec::new(),
        },
    };
    eprintln!(
        "  {} hits, {:.0} req/s, p50 {}, p99 {}",
        run.requests,
        run.rps,
        fmt_us(run.client_latency_us.p50 as f64),
        fmt_us(run.client_latency_us.p99 as f64)
    );
    Ok(run)
}

/// One side of the sequential comparison while it runs.
struct Side {
    name: &'static str,
    limited: bool,
    target: Target,
    conn: Connection,
    client: Histogram<u64>,
    gateway: Histogram<u64>,
    sent: u64,
    redis: CommandStats,
}

/// The headers budgets and rate limits add to every answer.
const LIMIT_HEADERS: [&str; 3] = [
    "x-aigw-budget-remaining",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
];

impl Side {
    /// Sends `n` requests one at a time, recording them when `record`, and adds the
    /// Redis commands that ran meanwhile to the side's count.
    async fn batch(
        &mut self,
        n: usize,
        record: bool,
        timeout: Duration,
        redis_port: u16,
    ) -> anyhow::Result<()> {
        let before = redis_commandstats(redis_port)?;
        self.send(n, record, timeout).await?;
        self.sent += n as u64;
        for (name, (calls, usec)) in redis_commandstats(redis_port)? {
            let (c0, u0) = before.get(&name).copied().unwrap_or_default();
            let entry = self.redis.entry(name).or_default();
            entry.0 += calls.saturating_sub(c0);
            entry.1 += usec.saturating_sub(u0);
        }
        Ok(())
    }

    /// Sends `n` requests one at a time, recording them when `record`.
    async fn send(&mut self, n: usize, record: bool, timeout: Duration) -> anyhow::Result<()> {
        for _ in 0..n {
            let (headers, took) = exchange(&mut self.conn, &self.target, timeout).await?;
            let cache = header(&headers, "x-cache");
            if cache != Some("bypass") {
                bail!(
                    "`{}` answered the uncached request with x-cache: {}",
                    self.name,
                    cache.unwrap_or("(none)")
                );
            }
            for name in LIMIT_HEADERS {
                if headers.contains_key(name) != self.limited {
                    bail!(
                        "`{}` answered {} {name}: budgets and rate limits are {} there",
                        self.name,
                        if self.limited { "without" } else { "with" },
                        if self.limited {
                            "not applied"
                        } else {
                            "applied"
                        },
                    );
                }
            }
            if record {
                self.client.saturating_record(took);
                self.gateway.saturating_record(overhead_us(&headers)?);
            }
        }
        Ok(())
    }

    fn result(&self) -> SequentialSide {
        SequentialSide {
            gateway: self.name,
            requests: self.client.len(),
            client_latency_us: LatencySummary::from_histogram(&self.client),
            gateway_time_us: LatencySummary::from_histogram(&self.gateway),
            requests_sent: self.sent,
            redis_per_request: per_request(&CommandStats::new(), &self.redis, self.sent),
        }
    }
}

/// The same uncached request, one at a time, through `plain` and `limited` in interleaved
/// rounds.
async fn added_latency(
    plain: &Gateway,
    limited: &Gateway,
    cfg: &StateBenchConfig,
    redis_port: u16,
) -> anyhow::Result<AddedLatency> {
    let off = ["x-aigw-cache: off".to_owned()];
    let mut sides = Vec::new();
    for gw in [plain, limited] {
        let target = gw.target(UNCACHED_BODY, &off)?;
        sides.push(Side {
            name: gw.variant.name(),
            limited: gw.variant == Variant::RedisLimits,
            conn: Connection::open(&target).await?,
            target,
            client: new_histogram()?,
            gateway: new_histogram()?,
            sent: 0,
            redis: CommandStats::new(),
        });
    }
    for side in &mut sides {
        eprintln!(
            "warming up `{}`: {} requests",
            side.name, cfg.warmup_requests
        );
        side.batch(cfg.warmup_requests, false, cfg.timeout, redis_port)
            .await?;
    }
    let rounds = cfg.rounds.max(1);
    let per_round = cfg.requests.div_ceil(rounds);
    for round in 0..rounds {
        eprintln!(
            "budgets + limits: round {} of {rounds}, {per_round} requests per gateway",
            round + 1
        );
        // Alternate which gateway goes first, so neither always follows the other.
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            sides[i]
                .batch(per_round, true, cfg.timeout, redis_port)
                .await?;
        }
    }
    let baseline = sides[0].result();
    let limited = sides[1].result();
    let diff =
        |a: u64, b: u64| i64::try_from(a).unwrap_or(i64::MAX) - i64::try_from(b).unwrap_or(0);
    Ok(AddedLatency {
        connections: 1,
        rounds,
        added_client_p50_us: diff(
            limited.client_latency_us.p50,
            baseline.client_latency_us.p50,
        ),
        added_client_p99_us: diff(
            limited.client_latency_us.p99,
            baseline.client_latency_us.p99,
        ),
        added_gateway_p50_us: diff(limited.gateway_time_us.p50, baseline.gateway_time_us.p50),
        baseline,
        limited,
    })
}

/// How to read the Redis command counts of the report.
const REDIS_COUNTS_NOTE: &str = "\n(Redis's `INFO commandstats` around the run. Each \
    command the gateway sends is one round trip (`evalsha` runs a Lua script; the pool hands \
    out connections without checking them first); commands that Lua scripts run (`time`, \
    `hincrby`, …) are counted too but cost no round trip of their own. Round trips the gateway \
    makes at once (the budget entry and the cache lookup, the two rate limits) overlap.)\n";

/// Calls and time (µs) of every command, from `INFO commandstats`.
type CommandStats = std::collections::BTreeMap<String, (u64, u64)>;

/// `INFO commandstats` of the Redis server on `port` (a plain RESP exchange).
fn redis_commandstats(port: u16) -> anyhow::Result<CommandStats> {
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))
        .with_context(|| format!("cannot connect to redis-server on port {port}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"INFO commandstats\r\n")?;
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    reader.read_line(&mut head)?;
    let len: usize = head
        .trim_end()
        .strip_prefix('$')
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("unexpected answer to INFO commandstats: {head:?}"))?;
    let mut body = vec![0; len];
    reader.read_exact(&mut body)?;
    Ok(parse_commandstats(&String::from_utf8_lossy(&body)))
}

/// Parses `cmdstat_get:calls=3,usec=12,...` lines.
fn parse_commandstats(text: &str) -> CommandStats {
    text.lines()
        .filter_map(|line| {
            let (name, fields) = line.trim().strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |key: &str| {
                fields
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
            };
            Some((name.to_owned(), (field("calls")?, field("usec")?)))
        })
        .collect()
}

/// The growth of each command between two snapshots, per request, busiest first.
fn per_request(
    before: &CommandStats,
    after: &CommandStats,
    requests: u64,
) -> Vec<RedisCommandRate> {
    let n = requests.max(1) as f64;
    let mut rates: Vec<RedisCommandRate> = after
        .iter()
        .filter(|(name, _)| name.as_str() != "info")
        .filter_map(|(name, &(calls, usec))| {
            let (c0, u0) = before.get(name).copied().unwrap_or_default();
            let calls = calls.checked_sub(c0).filter(|c| *c > 0)?;
            Some(RedisCommandRate {
                command: name.clone(),
                calls_per_request: calls as f64 / n,
                redis_us_per_request: usec.saturating_sub(u0) as f64 / n,
            })
        })
        .collect();
    rates.sort_by(|a, b| b.calls_per_request.total_cmp(&a.calls_per_request));
    rates
}

/// `` `get` 1.00, `ping` 1.00 (Redis's own time 4.1µs) ``: the commands that ran at least
/// once per hundred requests (the gateways' periodic pings fall below).
fn render_rates(rates: &[RedisCommandRate]) -> String {
    let shown: Vec<String> = rates
        .iter()
        .filter(|r| r.calls_per_request >= 0.01)
        .map(|r| format!("`{}` {:.2}", r.command, r.calls_per_request))
        .collect();
    let redis_us: f64 = rates.iter().map(|r| r.redis_us_per_request).sum();
    format!("{} (Redis's own time {redis_us:.1}µs)", shown.join(", "))
}

/// The first three fields of `/proc/loadavg`.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// `redis-server --version`, trimmed.
fn redis_version() -> Option<String> {
    let out = std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
}

/// Runs the scenario and returns its report (files not yet written).
pub fn run(cfg: &StateBenchConfig) -> anyhow::Result<StateReport> {
    if !cfg.aigw.is_file() {
        bail!(
            "gateway binary {} does not exist; build it with `cargo build --release -p aigw-gateway`",
            cfg.aigw.display()
        );
    }
    if cfg.duration.is_zero() {
        bail!("--duration must be positive");
    }
    let loadavg_start = loadavg();
    let cpu_start = CpuSample::now();
    let runtime = crate::build_runtime(1)?;
    let redis = RedisServer::start();
    let redis_skipped = redis
        .is_none()
        .then(|| "redis-server not found on PATH".to_owned());
    if let Some(r) = &redis {
        eprintln!("redis-server listening on {}", r.url());
    }
    let (mock, mock_addr) = spawn_mock(1)?;
    eprintln!("mock upstream listening on {mock_addr}");

    let mut cache_hits = Vec::new();
    let mut budgets_and_limits = None;
    {
        let mut gw = Gateway::spawn(&cfg.aigw, Variant::Memory, mock_addr, None)?;
        runtime.block_on(async {
            gw.wait_healthy().await?;
            cache_hits.push(cache_run(&gw, cfg, "memory", None).await?);
            anyhow::Ok(())
        })?;
    }
    if let Some(redis) = &redis {
        let url = redis.url();
        let mut plain = Gateway::spawn(&cfg.aigw, Variant::Redis, mock_addr, Some(&url))?;
        let mut limited = Gateway::spawn(&cfg.aigw, Variant::RedisLimits, mock_addr, Some(&url))?;
        runtime.block_on(async {
            plain.wait_healthy().await?;
            limited.wait_healthy().await?;
            cache_hits.push(cache_run(&plain, cfg, "redis", Some(redis.port())).await?);
            budgets_and_limits = Some(added_latency(&plain, &limited, cfg, redis.port()).await?);
            anyhow::Ok(())
        })?;
    }
    drop(mock);
    let redis_server = redis.as_ref().and_then(|_| redis_version());
    drop(redis);
    let other_processes_cpu_share = cpu_start.others_share(&CpuSample::now());

    let targets = check_targets(
        &cache_hits,
        budgets_and_limits.as_ref(),
        redis_skipped.as_deref(),
    );
    let now = UtcTime::now();
    Ok(StateReport {
        scenario: "state",
        date: now.date(),
        timestamp: now.rfc3339(),
        machine: Machine::detect(),
        command: command_line(),
        git_commit: git_commit(),
        uncommitted: uncommitted_paths(),
        gateway_binary: cfg.aigw.display().to_string(),
        other_processes_cpu_share,
        loadavg: [loadavg_start, loadavg()],
        redis_server,
        redis_skipped,
        cache_body: CACHE_BODY,
        uncached_body: UNCACHED_BODY,
        warmup_s: cfg.warmup.as_secs_f64(),
        cache_hits,
        budgets_and_limits,
        targets,
    })
}

/// Judges the measurements against issue 5's targets.
pub fn check_targets(
    cache_hits: &[CacheRun],
    added: Option<&AddedLatency>,
    redis_skipped: Option<&str>,
) -> Vec<TargetCheck> {
    let skipped = || redis_skipped.map(|why| format!("skipped: {why}"));
    let hit = |store: &str, name: &'static str, ceiling: f64| {
        let run = cache_hits.iter().find(|r| r.store == store);
        TargetCheck {
            name,
            goal: format!("p99 <= {}", fmt_us(ceiling)),
            measured: run
                .map(|r| {
                    format!(
                        "p99 {} (p50 {}, {:.0} req/s)",
                        fmt_us(r.client_latency_us.p99 as f64),
                        fmt_us(r.client_latency_us.p50 as f64),
                        r.rps
                    )
                })
                .or_else(skipped),
            status: run.map_or("not measured", |r| {
                if r.requests > 0 && r.client_latency_us.p99 as f64 <= ceiling {
                    "met"
                } else {
                    "not met"
                }
            }),
        }
    };
    vec![
        hit(
            "memory",
            "cache-hit latency in memory, 16 connections",
            TARGET_HIT_P99_MEMORY_US,
        ),
        hit(
            "redis",
            "cache-hit latency on Redis, 16 connections",
            TARGET_HIT_P99_REDIS_US,
        ),
        TargetCheck {
            name: "p50 added by budgets + rate limits on Redis, 1 connection",
            goal: format!("<= {}", fmt_us(TARGET_ADDED_P50_US)),
            measured: added
                .map(|a| {
                    format!(
                        "{} (client p50 {} vs {}; gateway time {})",
                        signed_us(a.added_client_p50_us),
                        fmt_us(a.limited.client_latency_us.p50 as f64),
                        fmt_us(a.baseline.client_latency_us.p50 as f64),
                        signed_us(a.added_gateway_p50_us)
                    )
                })
                .or_else(skipped),
            status: added.map_or("not measured", |a| {
                if a.added_client_p50_us as f64 <= TARGET_ADDED_P50_US {
                    "met"
                } else {
                    "not met"
                }
            }),
        },
    ]
}

fn signed_us(v: i64) -> String {
    if v < 0 {
        format!("−{}", fmt_us(v.unsigned_abs() as f64))
    } else {
        format!("+{}", fmt_us(v as f64))
    }
}

/// The Markdown version of the report.
pub fn render(r: &StateReport) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "# Shared state: cache hits, budgets and rate limits — {}\n\n",
        r.date
    );
    provenance(
        &mut out,
        &r.timestamp,
        &r.machine,
        r.git_commit.as_deref(),
        &r.command,
    );
    if !r.uncommitted.is_empty() {
        let in_bench = r.uncommitted.iter().any(|p| p.starts_with("bench/"));
        let _ = writeln!(
            out,
            "When the run ended, {} tracked file(s) had uncommitted changes{}; the binaries were \
             built from that working tree: {}.\n",
            r.uncommitted.len(),
            if in_bench {
                ""
            } else {
                ", none under `bench/`"
            },
            r.uncommitted
                .iter()
                .map(|p| format!("`{p}`"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if let Some(share) = r.other_processes_cpu_share {
        let _ = writeln!(
            out,
            "Other processes used {:.1} % of the machine's CPU time during the run (load \
             average {} at the start, {} at the end){}.\n",
            share * 100.0,
            r.loadavg[0],
            r.loadavg[1],
            if share > 0.05 {
                ": the machine was not idle, so the latencies, the tails above all, are \
                 inflated by that work"
            } else {
                ""
            }
        );
    }
    let _ = writeln!(
        out,
        "Gateway `{}`, one mock upstream, {}, everything on this machine (the load generator \
         on one thread). Every gateway serves `bench-model` from the mock behind one API key; \
         `memory` keeps the cache in memory, `redis` and `redis+limits` use `[state] \
         redis_url_env` (cache on Redis), and `redis+limits` adds `[budgets] default_policy` \
         ({BUDGET_TOKENS} tokens) and `requests_per_minute = {REQUESTS_PER_MINUTE}`, \
         `tokens_per_minute = {TOKENS_PER_MINUTE}` on the key: limits that never deny, so \
         its requests pay for every check. *Gateway time* is `x-aigw-overhead-ms`: the \
         request's time in the gateway minus its upstream calls.\n",
        r.gateway_binary,
        match (&r.redis_server, &r.redis_skipped) {
            (_, Some(why)) => format!("no Redis ({why}: the Redis parts are skipped)"),
            (Some(v), None) => format!("a throwaway `redis-server` on loopback ({v})"),
            (None, None) => "a throwaway `redis-server` on loopback".to_owned(),
        }
    );
    out.push_str("## Cache hits\n\n");
    let _ = writeln!(
        out,
        "`{}`, stored by one request, then sent closed loop on keep-alive connections ({}s \
         unmeasured first); every answer was checked to be 2xx with `x-cache: hit`.\n",
        r.cache_body, r.warmup_s
    );
    out.push_str(
        "| Store | Connections | Hits | req/s | Client p50 | p90 | p99 | p99.9 | max | Gateway p50 | Gateway p99 |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for c in &r.cache_hits {
        let l = &c.client_latency_us;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} |",
            c.store,
            c.connections,
            c.requests,
            c.rps,
            fmt_us(l.p50 as f64),
            fmt_us(l.p90 as f64),
            fmt_us(l.p99 as f64),
            fmt_us(l.p999 as f64),
            fmt_us(l.max as f64),
            fmt_us(c.gateway_time_us.p50 as f64),
            fmt_us(c.gateway_time_us.p99 as f64),
        );
    }
    for c in r
        .cache_hits
        .iter()
        .filter(|c| !c.redis_per_request.is_empty())
    {
        let _ = writeln!(
            out,
            "\nRedis commands per request of the `{}` run ({} requests, warmup included): {}.",
            c.store,
            c.requests_sent,
            render_rates(&c.redis_per_request)
        );
    }
    if r.cache_hits.iter().any(|c| !c.redis_per_request.is_empty()) {
        out.push_str(REDIS_COUNTS_NOTE);
    }
    out.push_str(
        "\nAt 16 connections on 2 cores the client latency is mostly queueing: 16 requests \
         in flight share the cores with the load generator, the gateway and Redis, so it is \
         about 16 / req/s; the gateway time is what one hit costs inside the gateway.\n\n",
    );
    out.push_str("## Budgets + rate limits on Redis\n\n");
    match &r.budgets_and_limits {
        None => {
            let _ = writeln!(
                out,
                "Not measured: {}.\n",
                r.redis_skipped.as_deref().unwrap_or("no Redis")
            );
        }
        Some(a) => {
            let _ = writeln!(
                out,
                "`{}` with `x-aigw-cache: off` (answered `x-cache: bypass`), **one connection \
                 per gateway, one request at a time** (no queueing), {} rounds alternating \
                 which gateway goes first. Every answer of `redis+limits` carried \
                 `x-aigw-budget-remaining` and `x-ratelimit-remaining-{{requests,tokens}}`; \
                 those of `redis` carried none.\n",
                r.uncached_body, a.rounds
            );
            out.push_str(
                "| Gateway | Requests | Client p50 | Client p90 | Client p99 | Client p99.9 | Gateway p50 | Gateway p99 |\n\
                 |---|---:|---:|---:|---:|---:|---:|---:|\n",
            );
            for s in [&a.baseline, &a.limited] {
                let l = &s.client_latency_us;
                let _ = writeln!(
                    out,
                    "| `{}` | {} | {} | {} | {} | {} | {} | {} |",
                    s.gateway,
                    s.requests,
                    fmt_us(l.p50 as f64),
                    fmt_us(l.p90 as f64),
                    fmt_us(l.p99 as f64),
                    fmt_us(l.p999 as f64),
                    fmt_us(s.gateway_time_us.p50 as f64),
                    fmt_us(s.gateway_time_us.p99 as f64),
                );
            }
            let _ = writeln!(
                out,
                "\nAdded by budgets + rate limits: **{} at the client p50** ({} at p99), {} \
                 of gateway time at p50. The checks are Redis round trips (the rate limits \
                 and the budget's reservation before the call, its settlement after), so \
                 most of the added time is Redis and loopback, not gateway CPU.\n",
                signed_us(a.added_client_p50_us),
                signed_us(a.added_client_p99_us),
                signed_us(a.added_gateway_p50_us),
            );
            out.push_str(REDIS_COUNTS_NOTE.trim_start());
            out.push('\n');
            for side in [&a.baseline, &a.limited] {
                let _ = writeln!(
                    out,
                    "Redis commands per request of `{}` ({} requests, warmup included): {}.\n",
                    side.gateway,
                    side.requests_sent,
                    render_rates(&side.redis_per_request)
                );
            }
        }
    }
    out.push_str("## Targets\n\n");
    out.push_str(&targets_table(&r.targets));
    out
}

impl StateReport {
    /// Writes `DATE-state.json` and `.md` into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<[PathBuf; 2]> {
        write_pair(dir, &format!("{}-state", self.date), self, &render(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            KEY_ENV => Some(BENCH_KEY.to_owned()),
            REDIS_ENV => Some("redis://127.0.0.1:6379/".to_owned()),
            _ => None,
        }
    }

    #[test]
    fn configs_are_valid_for_the_gateway() {
        let mock = "127.0.0.1:9".parse().unwrap();
        let parse = |v| aigw_gateway::config::Config::parse(&gateway_config(8080, mock, v), &env);

        let memory = parse(Variant::Memory).unwrap();
        assert!(memory.state.redis_url.is_none());
        assert!(memory.budgets.default_policy.is_none());
        assert_eq!(memory.keys.len(), 1);
        assert!(memory.cache.enabled);

        let redis = parse(Variant::Redis).unwrap();
        assert!(redis.state.redis_url.is_some());
        assert!(redis.budgets.default_policy.is_none());
        assert_eq!(redis.keys[0].requests_per_minute, None);
        assert_eq!(redis.keys[0].tokens_per_minute, None);

        let limited = parse(Variant::RedisLimits).unwrap();
        assert!(limited.state.redis_url.is_some());
        assert_eq!(limited.budgets.default_policy.as_deref(), Some("bench"));
        assert_eq!(
            limited.budgets.policies["bench"].limits.tokens,
            Some(BUDGET_TOKENS)
        );
        assert_eq!(
            limited.keys[0].requests_per_minute,
            Some(REQUESTS_PER_MINUTE)
        );
        assert_eq!(limited.keys[0].tokens_per_minute, Some(TOKENS_PER_MINUTE));
    }

    #[test]
    fn bodies_are_json_with_the_intended_temperature() {
        let cached: serde_json::Value = serde_json::from_str(CACHE_BODY).unwrap();
        let uncached: serde_json::Value = serde_json::from_str(UNCACHED_BODY).unwrap();
        assert_eq!(cached["temperature"], 0);
        assert_eq!(uncached["temperature"], 0.7);
    }

    #[test]
    fn redis_commands_per_request() {
        let before = parse_commandstats(
            "# Commandstats\r\ncmdstat_get:calls=10,usec=50,usec_per_call=5.00,rejected_calls=0,failed_calls=0\r\n\
             cmdstat_ping:calls=2,usec=2,usec_per_call=1.00\r\n",
        );
        assert_eq!(before["get"], (10, 50));
        let after = parse_commandstats(
            "cmdstat_get:calls=110,usec=550\r\ncmdstat_ping:calls=102,usec=52\r\n\
             cmdstat_unwatch:calls=100,usec=30\r\ncmdstat_info:calls=1,usec=9\r\n",
        );
        let rates = per_request(&before, &after, 100);
        assert_eq!(rates.len(), 3, "INFO is the scenario's own");
        assert_eq!(rates[0].calls_per_request, 1.0);
        let get = rates.iter().find(|r| r.command == "get").unwrap();
        assert_eq!(get.redis_us_per_request, 5.0);
        let text = render_rates(&rates);
        assert!(text.contains("`get` 1.00"), "{text}");
        assert!(!text.contains("info"), "{text}");
        assert!(text.contains("Redis's own time 5.8µs"), "{text}");
    }

    fn summary(p50: u64, p99: u64) -> LatencySummary {
        LatencySummary {
            count: 100,
            p50,
            p99,
            ..LatencySummary::default()
        }
    }

    #[test]
    fn targets_are_judged_and_skips_reported() {
        let run = |store, p99| CacheRun {
            store,
            connections: 16,
            requests: 100,
            duration_s: 1.0,
            rps: 100.0,
            client_latency_us: summary(p99 / 2, p99),
            gateway_time_us: summary(10, 20),
            requests_sent: 120,
            redis_per_request: Vec::new(),
        };
        let side = |gateway, p50| SequentialSide {
            gateway,
            requests: 100,
            client_latency_us: summary(p50, p50 * 2),
            gateway_time_us: summary(10, 20),
            requests_sent: 120,
            redis_per_request: Vec::new(),
        };
        let added = AddedLatency {
            connections: 1,
            rounds: 1,
            baseline: side("redis", 300),
            limited: side("redis+limits", 900),
            added_client_p50_us: 600,
            added_client_p99_us: 1200,
            added_gateway_p50_us: 550,
        };
        let t = check_targets(
            &[run("memory", 900), run("redis", 2100)],
            Some(&added),
            None,
        );
        assert_eq!(
            t.iter().map(|t| t.status).collect::<Vec<_>>(),
            ["met", "not met", "not met"]
        );

        let t = check_targets(&[run("memory", 1001)], None, Some("redis-server not found"));
        assert_eq!(
            t.iter().map(|t| t.status).collect::<Vec<_>>(),
            ["not met", "not measured", "not measured"]
        );
        assert_eq!(
            t[1].measured.as_deref(),
            Some("skipped: redis-server not found")
        );
    }
}
