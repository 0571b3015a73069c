//! The routing scenario: what choosing among many deployments, and falling back from a
//! failed one, costs the gateway.
//!
//! One mock upstream serves three aliases of one gateway, each measured on one keep-alive
//! connection, sequentially, in interleaved rounds (so drift affects all alike):
//!
//! - `one`: a single deployment (the baseline);
//! - `ten`: one group of ten deployments on the mock (power-of-two-choices on every request);
//! - `fallback`: a first group whose deployment answers 503 at once (the mock's `/fail`
//!   prefix), then the mock: every request makes a failed attempt and a successful one. The
//!   circuit breaker is disabled, so the failing deployment is never skipped.
//!
//! For every request it reads the gateway's own time, `x-aigw-overhead-ms` (the whole
//! request minus the time spent in upstream calls, so both attempts of a fallback are
//! excluded), and checks `x-aigw-attempts`. The targets are on that time's p99: with ten
//! deployments, and with a fallback — what a fallback adds beyond the failed attempt's own
//! time. The client-side latency is reported beside it.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::client::{Connection, Target};
use crate::overhead::{CHAT_BODY, TargetCheck};
use crate::procs::{TempFile, free_port, spawn_aigw, spawn_mock};
use crate::report_md::{provenance, targets_table};
use crate::results::{Machine, UtcTime, command_line, git_commit, write_pair};
use crate::stats::fmt_us;

/// Ceiling on the p99 of the gateway's own time, µs, for both targets.
pub const TARGET_P99_US: f64 = 200.0;

/// The aliases measured, in order, with the attempts each request must take.
const ALIASES: [(&str, &str); 3] = [("one", "1"), ("ten", "1"), ("fallback", "2")];

/// How to run the scenario.
#[derive(Debug, Clone)]
pub struct RoutingBenchConfig {
    /// The `aigw` binary.
    pub aigw: PathBuf,
    /// Measured requests per alias.
    pub requests: usize,
    /// Unmeasured requests per alias before the rounds.
    pub warmup: usize,
    /// Rounds the measured requests are split into.
    pub rounds: usize,
    /// Where the result files go.
    pub out_dir: PathBuf,
}

/// The gateway config of the scenario.
pub fn gateway_config(listen_port: u16, mock: SocketAddr) -> String {
    let ten = (0..10)
        .map(|i| format!("{{ name = \"d{i}\", provider = \"mock\", model = \"mock-model\" }}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "[server]\nlisten = \"127.0.0.1:{listen_port}\"\n\n\
         [routing.breaker]\nconsecutive_failures = 0\nerror_rate = 0\n\n\
         [providers.mock]\nkind = \"openai\"\nbase_url = \"http://{mock}/v1\"\n\n\
         [providers.failing]\nkind = \"openai\"\nbase_url = \"http://{mock}/fail/v1\"\n\n\
         [[models]]\nname = \"one\"\nprovider = \"mock\"\nupstream_model = \"mock-model\"\n\n\
         [[models]]\nname = \"ten\"\n[[models.groups]]\ndeployments = [{ten}]\n\n\
         [[models]]\nname = \"fallback\"\n\
         [[models.groups]]\ndeployments = [{{ name = \"failing\", provider = \"failing\", model = \"mock-model\" }}]\n\
         [[models.groups]]\ndeployments = [{{ name = \"mock\", provider = \"mock\", model = \"mock-model\" }}]\n"
    )
}

/// Percentiles of one measure, µs.
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest.
    pub max_us: u64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Self {
        Self {
            p50_us: h.value_at_quantile(0.5),
            p90_us: h.value_at_quantile(0.9),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

/// What one alias measured.
#[derive(Debug, Clone, Serialize)]
pub struct AliasResult {
    /// The alias.
    pub alias: &'static str,
    /// Calls to deployments per request.
    pub attempts: u32,
    /// Measured requests.
    pub requests: usize,
    /// The gateway's own time (`x-aigw-overhead-ms`).
    pub gateway_time: Percentiles,
    /// Latency seen by the client.
    pub client_latency: Percentiles,
}

/// Everything the scenario writes.
#[derive(Debug, Clone, Serialize)]
pub struct RoutingReport {
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
    /// The gateway binary measured.
    pub gateway_binary: String,
    /// The request body of every request.
    pub request_body: &'static str,
    /// Measured rounds.
    pub rounds: usize,
    /// Results per alias.
    pub aliases: Vec<AliasResult>,
    /// The failing deployment measured directly (its own time), client latency.
    pub failing_direct: Percentiles,
    /// Targets and verdicts.
    pub targets: Vec<TargetCheck>,
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 60_000_000, 3)?)
}

/// Parses `x-aigw-overhead-ms` (milliseconds, three decimals) into µs (at least 1).
pub fn overhead_us(headers: &http::HeaderMap) -> anyhow::Result<u64> {
    let text = headers
        .get("x-aigw-overhead-ms")
        .context("the gateway sent no x-aigw-overhead-ms")?
        .to_str()?;
    let ms: f64 = text.parse().context("x-aigw-overhead-ms is not a number")?;
    Ok((ms * 1000.0).round().max(1.0) as u64)
}

/// Sends `n` requests on `conn`; records them when `hists` is given.
async fn measure(
    conn: &mut Connection,
    target: &Target,
    attempts: &str,
    n: usize,
    mut hists: Option<(&mut Histogram<u64>, &mut Histogram<u64>)>,
) -> anyhow::Result<()> {
    let timeout = Duration::from_secs(10);
    for _ in 0..n {
        let t0 = Instant::now();
        let (status, headers) = conn
            .send_headers(target, timeout)
            .await
            .map_err(|e| anyhow::anyhow!("{}: {e}", target.url))?;
        let took = t0.elapsed().as_micros().max(1) as u64;
        if !status.is_success() {
            bail!("{} answered HTTP {status}", target.url);
        }
        let got = headers
            .get("x-aigw-attempts")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?");
        if got != attempts {
            bail!("expected {attempts} attempt(s) per request, the gateway reports {got}");
        }
        if let Some((gateway, client)) = hists.as_mut() {
            gateway.record(overhead_us(&headers)?)?;
            client.record(took)?;
        }
    }
    Ok(())
}

/// Runs the scenario and returns its report (files not yet written).
pub fn run(cfg: &RoutingBenchConfig) -> anyhow::Result<RoutingReport> {
    if !cfg.aigw.is_file() {
        bail!(
            "gateway binary {} does not exist; build it with `cargo build --release -p aigw-gateway`",
            cfg.aigw.display()
        );
    }
    let runtime = crate::build_runtime(1)?;
    let (_mock, mock_addr) = spawn_mock(1)?;
    let port = free_port()?;
    let config = TempFile::new("routing.toml");
    let log = TempFile::new("routing.log");
    std::fs::write(config.path(), gateway_config(port, mock_addr))
        .with_context(|| format!("cannot write {}", config.path().display()))?;
    let args = [
        OsStr::new("serve"),
        OsStr::new("--config"),
        config.path().as_os_str(),
    ];
    let mut gateway = spawn_aigw(&cfg.aigw, &args, &[("RUST_LOG", "error".to_owned())], &log)?;
    let body = |alias: &str| Bytes::from(CHAT_BODY.replace("bench-model", alias));
    let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
    let targets: Vec<Target> = ALIASES
        .iter()
        .map(|(alias, _)| Target::new(&url, Some(body(alias)), &[]))
        .collect::<anyhow::Result<_>>()?;
    let failing = Target::new(
        &format!("http://{mock_addr}/fail/v1/chat/completions"),
        Some(body("mock-model")),
        &[],
    )?;
    let per_round = cfg.requests.div_ceil(cfg.rounds.max(1));
    let (aliases, failing_direct) = runtime.block_on(async {
        gateway
            .wait_healthy(&targets[0].get("/health")?, Duration::from_secs(30))
            .await?;
        // Let the first health probes pass, so no deployment is a last resort.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut conn = Connection::open(&targets[0]).await?;
        let mut hists = Vec::new();
        for (target, (_, attempts)) in targets.iter().zip(ALIASES) {
            eprintln!("warming up {}", target.url);
            measure(&mut conn, target, attempts, cfg.warmup, None).await?;
            hists.push((histogram()?, histogram()?));
        }
        for round in 0..cfg.rounds.max(1) {
            eprintln!("round {} of {}", round + 1, cfg.rounds.max(1));
            for ((target, (_, attempts)), (gw, client)) in
                targets.iter().zip(ALIASES).zip(hists.iter_mut())
            {
                measure(&mut conn, target, attempts, per_round, Some((gw, client))).await?;
            }
        }
        // The failing deployment's own time, for comparison.
        let mut direct = Connection::open(&failing).await?;
        let mut failing_hist = histogram()?;
        for _ in 0..per_round {
            let t0 = Instant::now();
            let (status, _) = direct
                .send_headers(&failing, Duration::from_secs(10))
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            if status.as_u16() != 503 {
                bail!("the failing endpoint answered HTTP {status}");
            }
            failing_hist.record(t0.elapsed().as_micros().max(1) as u64)?;
        }
        let aliases: Vec<AliasResult> = ALIASES
            .iter()
            .zip(&hists)
            .map(|((alias, attempts), (gw, client))| AliasResult {
                alias,
                attempts: attempts.parse().unwrap_or(1),
                requests: gw.len() as usize,
                gateway_time: Percentiles::of(gw),
                client_latency: Percentiles::of(client),
            })
            .collect();
        anyhow::Ok((aliases, Percentiles::of(&failing_hist)))
    })?;
    let p99 = |alias: &str| {
        aliases
            .iter()
            .find(|a| a.alias == alias)
            .map_or(0, |a| a.gateway_time.p99_us) as f64
    };
    let check = |name: &'static str, goal: &str, value: f64| TargetCheck {
        name,
        goal: goal.to_owned(),
        measured: Some(format!(
            "{} (single deployment: {})",
            fmt_us(value),
            fmt_us(p99("one"))
        )),
        status: if value <= TARGET_P99_US {
            "met"
        } else {
            "not met"
        },
    };
    let targets = vec![
        check(
            "routing with 10 deployments per alias",
            "p99 of the gateway's own time <= 0.2 ms",
            p99("ten"),
        ),
        check(
            "cost of a fallback",
            "p99 of the gateway's own time with a failed attempt, beyond both attempts' own time, <= 0.2 ms",
            p99("fallback"),
        ),
    ];
    let now = UtcTime::now();
    Ok(RoutingReport {
        scenario: "routing",
        date: now.date(),
        timestamp: now.rfc3339(),
        machine: Machine::detect(),
        command: command_line(),
        git_commit: git_commit(),
        gateway_binary: cfg.aigw.display().to_string(),
        request_body: CHAT_BODY,
        rounds: cfg.rounds.max(1),
        aliases,
        failing_direct,
        targets,
    })
}

/// The Markdown version of the report.
pub fn render(r: &RoutingReport) -> String {
    use std::fmt::Write as _;
    let mut out = format!("# Routing and fallback cost — {}\n\n", r.date);
    provenance(
        &mut out,
        &r.timestamp,
        &r.machine,
        r.git_commit.as_deref(),
        &r.command,
    );
    let _ = writeln!(
        out,
        "One gateway (`{}`), one mock upstream, one keep-alive connection, requests sent one at a \
         time, {} rounds interleaving the aliases. Aliases: `one` (a single deployment), `ten` \
         (one group of ten deployments: power-of-two-choices on every request), `fallback` (a \
         deployment answering 503 at once, then the mock: every request makes two attempts; \
         breakers disabled). *Gateway time* is `x-aigw-overhead-ms`: the request's time in the \
         gateway minus the time spent in upstream calls (both attempts of a fallback).\n",
        r.gateway_binary, r.rounds
    );
    out.push_str(
        "| Alias | Attempts | Requests | Gateway p50 | Gateway p99 | Gateway p99.9 | Client p50 | Client p99 |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for a in &r.aliases {
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} | {} | {} | {} | {} |",
            a.alias,
            a.attempts,
            a.requests,
            fmt_us(a.gateway_time.p50_us as f64),
            fmt_us(a.gateway_time.p99_us as f64),
            fmt_us(a.gateway_time.p999_us as f64),
            fmt_us(a.client_latency.p50_us as f64),
            fmt_us(a.client_latency.p99_us as f64),
        );
    }
    let _ = writeln!(
        out,
        "\nThe failing endpoint called directly: p50 {}, p99 {} (the failed attempt's own time).",
        fmt_us(r.failing_direct.p50_us as f64),
        fmt_us(r.failing_direct.p99_us as f64)
    );
    let client_p50 = |alias: &str| {
        r.aliases
            .iter()
            .find(|a| a.alias == alias)
            .map_or(0, |a| a.client_latency.p50_us) as i64
    };
    let added = client_p50("fallback") - client_p50("one") - r.failing_direct.p50_us as i64;
    let _ = writeln!(
        out,
        "Client-side cross-check at the median: `fallback` − `one` − the failing endpoint's own \
         time = {added}µs (this includes the extra attempt's request serialisation and \
         connection handling, which the gateway time counts as upstream time). Percentiles \
         above the median are dominated by this shared 2-core machine's scheduling noise and \
         do not subtract.\n"
    );
    out.push_str("## Targets\n\n");
    out.push_str(&targets_table(&r.targets));
    out
}

impl RoutingReport {
    /// Writes `DATE-routing.json` and `.md` into `dir`.
    pub fn write(&self, dir: &std::path::Path) -> anyhow::Result<[PathBuf; 2]> {
        write_pair(dir, &format!("{}-routing", self.date), self, &render(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overhead_header_parses_to_microseconds() {
        let mut h = http::HeaderMap::new();
        h.insert("x-aigw-overhead-ms", "0.137".parse().unwrap());
        assert_eq!(overhead_us(&h).unwrap(), 137);
        h.insert("x-aigw-overhead-ms", "0.000".parse().unwrap());
        assert_eq!(overhead_us(&h).unwrap(), 1);
    }

    #[test]
    fn config_is_valid_for_the_gateway() {
        let text = gateway_config(8080, "127.0.0.1:9".parse().unwrap());
        let config = aigw_gateway::config::Config::parse(&text, &|_| None).unwrap();
        assert_eq!(config.models.len(), 3);
        assert_eq!(config.models[1].groups[0].len(), 10);
        assert_eq!(config.models[2].groups.len(), 2);
        assert_eq!(config.routing.breaker.consecutive_failures, 0);
        assert_eq!(config.routing.breaker.error_rate, 0.0);
    }
}
