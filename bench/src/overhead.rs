//! The gateway-overhead scenario: the mock measured directly and through aigw.
//!
//! It starts this executable's `mock-upstream` on an ephemeral port, writes a
//! gateway config routing `bench-model` to it, starts `aigw serve`, waits for
//! `GET /health`, then runs four closed-loop loads of the same non-streaming
//! chat request: direct and through the gateway, at 16 connections (the
//! throughput) and at 1 connection (the latency, and the latency the gateway
//! adds). Children are killed when the scenario ends, on error included.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use serde::Serialize;

use crate::client::{Target, probe};
use crate::load::{self, LoadConfig};
use crate::procs::{TempFile, free_port, spawn_aigw, spawn_mock};
use crate::results::{Machine, UtcTime, command_line, git_commit, write_pair};
use crate::stats::{LoadReport, fmt_us};

/// The request of every run.
pub const CHAT_BODY: &str =
    r#"{"model":"bench-model","messages":[{"role":"user","content":"Say hello"}],"max_tokens":16}"#;
/// Throughput target through the gateway at 16 connections, req/s.
pub const TARGET_RPS: f64 = 20_000.0;
/// Ceiling on the p99 latency the gateway adds at 1 connection, µs.
pub const TARGET_ADDED_P99_US: f64 = 1_000.0;
/// Connections of the throughput runs.
pub const HIGH_CONCURRENCY: usize = 16;

/// How to run the scenario.
#[derive(Debug, Clone)]
pub struct OverheadConfig {
    /// The `aigw` binary; unused with `upstream_only`.
    pub aigw: Option<PathBuf>,
    /// Measure the mock only (no gateway).
    pub upstream_only: bool,
    /// Measured window of each run.
    pub duration: Duration,
    /// Warmup before each run.
    pub warmup: Duration,
    /// Where the result files go.
    pub out_dir: PathBuf,
    /// Runtime threads of the load generator.
    pub client_threads: usize,
    /// Runtime threads of the mock.
    pub mock_threads: usize,
    /// Per-request timeout.
    pub timeout: Duration,
}

/// The gateway config routing `bench-model` to the mock.
pub fn gateway_config(listen_port: u16, mock: SocketAddr) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:{listen_port}\"\n\n\
         [providers.mock]\nkind = \"openai\"\nbase_url = \"http://{mock}/v1\"\n\n\
         [[models]]\nname = \"bench-model\"\nprovider = \"mock\"\nupstream_model = \"mock-model\"\n"
    )
}

/// One load run of the scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// `direct` or `gateway`.
    pub path: &'static str,
    /// The load report.
    pub report: LoadReport,
}

/// The headline numbers (latencies in µs, at 1 connection).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// req/s against the mock at 16 connections.
    pub direct_rps_c16: f64,
    /// req/s through the gateway at 16 connections.
    pub gateway_rps_c16: Option<f64>,
    /// `gateway_rps_c16 / direct_rps_c16`.
    pub gateway_direct_ratio: Option<f64>,
    /// Median against the mock.
    pub direct_p50_us: u64,
    /// p99 against the mock.
    pub direct_p99_us: u64,
    /// Median through the gateway.
    pub gateway_p50_us: Option<u64>,
    /// p99 through the gateway.
    pub gateway_p99_us: Option<u64>,
    /// Median added by the gateway.
    pub added_p50_us: Option<i64>,
    /// p99 added by the gateway.
    pub added_p99_us: Option<i64>,
    /// Requests that failed, over all runs (any makes the result suspect).
    pub errors: u64,
}

/// A target and whether the measurement met it.
#[derive(Debug, Clone, Serialize)]
pub struct TargetCheck {
    /// What is measured.
    pub name: &'static str,
    /// The goal, human-readable.
    pub goal: String,
    /// The measured value, human-readable.
    pub measured: Option<String>,
    /// `met`, `not met` or `not measured`.
    pub status: &'static str,
}

/// Everything the scenario writes.
#[derive(Debug, Clone, Serialize)]
pub struct OverheadReport {
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
    /// The gateway binary measured (absent with `--upstream-only`).
    pub gateway_binary: Option<String>,
    /// The request body of every run.
    pub request_body: &'static str,
    /// Measured window per run, seconds.
    pub duration_s: f64,
    /// Warmup per run, seconds.
    pub warmup_s: f64,
    /// Runtime threads of the load generator.
    pub client_threads: usize,
    /// Runtime threads of the mock.
    pub mock_threads: usize,
    /// The load runs, in the order they ran.
    pub runs: Vec<Run>,
    /// Headline numbers.
    pub summary: Summary,
    /// Targets and verdicts.
    pub targets: Vec<TargetCheck>,
}

fn check_gateway_binary(cfg: &OverheadConfig) -> anyhow::Result<Option<PathBuf>> {
    if cfg.upstream_only {
        return Ok(None);
    }
    let Some(path) = &cfg.aigw else {
        bail!("--aigw PATH is required (or pass --upstream-only to measure the mock alone)");
    };
    if !path.is_file() {
        bail!(
            "gateway binary {} does not exist; build it with `cargo build --release -p aigw-gateway` \
             and pass --aigw target/release/aigw (or use --upstream-only)",
            path.display()
        );
    }
    Ok(Some(path.clone()))
}

/// Checks that one request through `target` gets a chat completion back
/// before loading it.
async fn check_answers(name: &str, target: &Target, timeout: Duration) -> anyhow::Result<()> {
    let (status, body) = probe(target, timeout)
        .await
        .with_context(|| format!("probing {name}"))?;
    if !status.is_success() {
        bail!(
            "{name} answered HTTP {status} to the benchmark request: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let completion = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .filter(|v| v["object"] == "chat.completion" && v["choices"].is_array());
    if completion.is_none() {
        bail!(
            "{name} answered the benchmark request with something that is not a chat completion: {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(())
}

/// Runs the scenario and returns its report (files not yet written).
pub fn run(cfg: &OverheadConfig) -> anyhow::Result<OverheadReport> {
    let aigw = check_gateway_binary(cfg)?;
    let runtime = crate::build_runtime(cfg.client_threads)?;
    let (mock, mock_addr) = spawn_mock(cfg.mock_threads)?;
    eprintln!("mock upstream listening on {mock_addr}");
    let body = Some(Bytes::from_static(CHAT_BODY.as_bytes()));
    let direct = Arc::new(Target::new(
        &format!("http://{mock_addr}/v1/chat/completions"),
        body.clone(),
        &[],
    )?);
    let config = TempFile::new("gateway.toml");
    let log = TempFile::new("gateway.log");
    let mut gateway_guard = None;
    let mut targets = vec![("direct", direct)];
    if let Some(aigw) = &aigw {
        let port = free_port()?;
        std::fs::write(config.path(), gateway_config(port, mock_addr))
            .with_context(|| format!("cannot write {}", config.path().display()))?;
        let args = [
            OsStr::new("serve"),
            OsStr::new("--config"),
            config.path().as_os_str(),
        ];
        let mut guard = spawn_aigw(aigw, &args, &[("RUST_LOG", "warn".to_owned())], &log)?;
        let gw = Arc::new(Target::new(
            &format!("http://127.0.0.1:{port}/v1/chat/completions"),
            body,
            &[],
        )?);
        runtime.block_on(guard.wait_healthy(&gw.get("/health")?, Duration::from_secs(30)))?;
        eprintln!("gateway healthy on 127.0.0.1:{port}");
        gateway_guard = Some(guard);
        targets.push(("gateway", gw));
    }
    let mut runs = Vec::new();
    runtime.block_on(async {
        for (name, target) in &targets {
            check_answers(name, target, cfg.timeout).await?;
        }
        for concurrency in [HIGH_CONCURRENCY, 1] {
            for (name, target) in &targets {
                eprintln!(
                    "measuring {name}, {concurrency} connection(s), {:?}",
                    cfg.duration
                );
                let report = load::run(LoadConfig {
                    target: Arc::clone(target),
                    concurrency,
                    duration: cfg.duration,
                    warmup: cfg.warmup,
                    rate: None,
                    timeout: cfg.timeout,
                })
                .await?;
                eprint!("{}", report.render_text());
                runs.push(Run { path: name, report });
            }
        }
        anyhow::Ok(())
    })?;
    drop(gateway_guard);
    drop(mock);
    let now = UtcTime::now();
    let summary = summarize(&runs);
    Ok(OverheadReport {
        scenario: "gateway-overhead",
        date: now.date(),
        timestamp: now.rfc3339(),
        machine: Machine::detect(),
        command: command_line(),
        git_commit: git_commit(),
        gateway_binary: aigw.map(|p| p.display().to_string()),
        request_body: CHAT_BODY,
        duration_s: cfg.duration.as_secs_f64(),
        warmup_s: cfg.warmup.as_secs_f64(),
        client_threads: cfg.client_threads,
        mock_threads: cfg.mock_threads,
        targets: check_targets(&summary),
        summary,
        runs,
    })
}

fn find<'a>(runs: &'a [Run], path: &str, concurrency: usize) -> Option<&'a LoadReport> {
    runs.iter()
        .find(|r| r.path == path && r.report.concurrency == concurrency)
        .map(|r| &r.report)
}

/// Derives the headline numbers from the runs.
pub fn summarize(runs: &[Run]) -> Summary {
    let d16 = find(runs, "direct", HIGH_CONCURRENCY);
    let d1 = find(runs, "direct", 1);
    let g16 = find(runs, "gateway", HIGH_CONCURRENCY);
    let g1 = find(runs, "gateway", 1);
    let direct_rps = d16.map_or(0.0, |r| r.rps);
    let (dp50, dp99) = d1.map_or((0, 0), |r| (r.latency_us.p50, r.latency_us.p99));
    let added = |g: u64, d: u64| {
        i64::try_from(g).unwrap_or(i64::MAX) - i64::try_from(d).unwrap_or(i64::MAX)
    };
    Summary {
        direct_rps_c16: direct_rps,
        gateway_rps_c16: g16.map(|r| r.rps),
        gateway_direct_ratio: g16.filter(|_| direct_rps > 0.0).map(|r| r.rps / direct_rps),
        direct_p50_us: dp50,
        direct_p99_us: dp99,
        gateway_p50_us: g1.map(|r| r.latency_us.p50),
        gateway_p99_us: g1.map(|r| r.latency_us.p99),
        added_p50_us: g1.map(|r| added(r.latency_us.p50, dp50)),
        added_p99_us: g1.map(|r| added(r.latency_us.p99, dp99)),
        errors: runs.iter().map(|r| r.report.errors).sum(),
    }
}

/// Judges the summary against the targets; any failed request fails them.
pub fn check_targets(s: &Summary) -> Vec<TargetCheck> {
    let verdict = |ok: bool| {
        if ok && s.errors == 0 {
            "met"
        } else {
            "not met"
        }
    };
    vec![
        TargetCheck {
            name: "throughput through the gateway, 16 connections",
            goal: format!(">= {TARGET_RPS:.0} req/s"),
            measured: s.gateway_rps_c16.map(|v| format!("{v:.0} req/s")),
            status: s
                .gateway_rps_c16
                .map_or("not measured", |v| verdict(v >= TARGET_RPS)),
        },
        TargetCheck {
            name: "p99 latency added by the gateway, 1 connection",
            goal: format!("<= {}", fmt_us(TARGET_ADDED_P99_US)),
            measured: s.added_p99_us.map(|v| format!("{v} µs")),
            status: s
                .added_p99_us
                .map_or("not measured", |v| verdict(v as f64 <= TARGET_ADDED_P99_US)),
        },
    ]
}

impl OverheadReport {
    /// The file name stem: `DATE-gateway-overhead`, with `-upstream-only`
    /// appended when no gateway was measured (so it never replaces a real
    /// result).
    pub fn file_stem(&self) -> String {
        let suffix = if self.gateway_binary.is_none() {
            "-upstream-only"
        } else {
            ""
        };
        format!("{}-gateway-overhead{suffix}", self.date)
    }

    /// Writes the JSON and Markdown files into `dir`.
    pub fn write(&self, dir: &std::path::Path) -> anyhow::Result<[PathBuf; 2]> {
        write_pair(
            dir,
            &self.file_stem(),
            self,
            &crate::report_md::render(self),
        )
    }
}
