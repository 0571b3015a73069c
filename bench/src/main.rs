//! `aigw-bench`: mock upstream, load generator and gateway-overhead scenario.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand};

use aigw_bench::client::Target;
use aigw_bench::load::{self, LoadConfig};
use aigw_bench::overhead::{self, OverheadConfig};

/// Benchmarks for the aigw gateway.
#[derive(Debug, Parser)]
#[command(name = "aigw-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Serve a fast mock OpenAI-compatible upstream (precomputed answers).
    MockUpstream {
        /// Address to listen on; with port 0 the bound address is printed
        /// as the first stdout line, `listening on ADDR`.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Runtime threads (1 leaves the other cores to the gateway).
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// Put load on a URL and report throughput and latency percentiles.
    Load {
        /// Target URL (http:// only).
        #[arg(long)]
        url: String,
        /// JSON request body (makes the request a POST).
        #[arg(long, conflicts_with = "body_file")]
        body: Option<String>,
        /// File holding the JSON request body (makes the request a POST).
        #[arg(long)]
        body_file: Option<PathBuf>,
        /// Extra request header, `Name: value` (repeatable).
        #[arg(long = "header", short = 'H')]
        headers: Vec<String>,
        /// Connections, one worker each.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Measured seconds.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Unmeasured seconds before the measurement.
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        /// Open loop at this many requests per second in total; latency is
        /// then measured from the scheduled send time.
        #[arg(long)]
        rate: Option<f64>,
        /// Runtime threads of the load generator.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Per-request timeout, seconds.
        #[arg(long, default_value_t = 30.0)]
        timeout: f64,
        /// Also write the report as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Measure the mock directly and through the gateway; write results.
    Overhead {
        /// The aigw binary to measure.
        #[arg(long, required_unless_present = "upstream_only")]
        aigw: Option<PathBuf>,
        /// Skip the gateway: measure the mock alone.
        #[arg(long)]
        upstream_only: bool,
        /// Measured seconds per run.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Unmeasured seconds before each run.
        #[arg(long, default_value_t = 2.0)]
        warmup: f64,
        /// Directory of the result files.
        #[arg(long, default_value = "bench/results")]
        out_dir: PathBuf,
        /// Runtime threads of the load generator.
        #[arg(long, default_value_t = 1)]
        client_threads: usize,
        /// Runtime threads of the mock upstream.
        #[arg(long, default_value_t = 1)]
        mock_threads: usize,
        /// Per-request timeout, seconds.
        #[arg(long, default_value_t = 30.0)]
        timeout: f64,
    },
}

fn seconds(name: &str, v: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(v)
        .with_context(|| format!("--{name} must be a non-negative number of seconds"))
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::MockUpstream { listen, threads } => aigw_bench::mock::run(listen, threads),
        Cmd::Load {
            url,
            body,
            body_file,
            headers,
            concurrency,
            duration,
            warmup,
            rate,
            threads,
            timeout,
            json,
        } => {
            let body = match (body, body_file) {
                (Some(b), _) => Some(Bytes::from(b)),
                (None, Some(path)) => {
                    Some(Bytes::from(std::fs::read(&path).with_context(|| {
                        format!("cannot read {}", path.display())
                    })?))
                }
                (None, None) => None,
            };
            let cfg = LoadConfig {
                target: Arc::new(Target::new(&url, body, &headers)?),
                concurrency,
                duration: seconds("duration", duration)?,
                warmup: seconds("warmup", warmup)?,
                rate,
                timeout: seconds("timeout", timeout)?,
            };
            let report = aigw_bench::build_runtime(threads)?.block_on(load::run(cfg))?;
            std::io::stdout()
                .lock()
                .write_all(report.render_text().as_bytes())?;
            if let Some(path) = json {
                let text = serde_json::to_string_pretty(&report)?;
                std::fs::write(&path, text + "\n")
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            if report.target_achieved == Some(false) {
                eprintln!("warning: the target rate was not achieved");
            }
            Ok(())
        }
        Cmd::Overhead {
            aigw,
            upstream_only,
            duration,
            warmup,
            out_dir,
            client_threads,
            mock_threads,
            timeout,
        } => {
            if duration <= 0.0 {
                bail!("--duration must be positive");
            }
            let cfg = OverheadConfig {
                aigw,
                upstream_only,
                duration: seconds("duration", duration)?,
                warmup: seconds("warmup", warmup)?,
                out_dir,
                client_threads,
                mock_threads,
                timeout: seconds("timeout", timeout)?,
            };
            let report = overhead::run(&cfg)?;
            let [json, md] = report.write(&cfg.out_dir)?;
            std::io::stdout()
                .lock()
                .write_all(aigw_bench::report_md::render(&report).as_bytes())?;
            eprintln!("wrote {} and {}", json.display(), md.display());
            Ok(())
        }
    }
}
