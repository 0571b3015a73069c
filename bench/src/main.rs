//! `aigw-bench`: mock upstream, load generator, gateway-overhead, routing,
//! shared-state and local-engine scenarios.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand};

use aigw_bench::client::Target;
use aigw_bench::engine::{self, EngineConfig};
use aigw_bench::load::{self, LoadConfig};
use aigw_bench::overhead::{self, OverheadConfig};
use aigw_bench::routing::{self, RoutingBenchConfig};
use aigw_bench::state::{self, StateBenchConfig};

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
    /// Measure what routing among ten deployments and a fallback from a
    /// failing deployment cost the gateway; write results.
    Routing {
        /// The aigw binary to measure.
        #[arg(long)]
        aigw: PathBuf,
        /// Measured requests per alias.
        #[arg(long, default_value_t = 20_000)]
        requests: usize,
        /// Unmeasured requests per alias first.
        #[arg(long, default_value_t = 2_000)]
        warmup: usize,
        /// Rounds interleaving the aliases.
        #[arg(long, default_value_t = 10)]
        rounds: usize,
        /// Directory of the result files.
        #[arg(long, default_value = "bench/results")]
        out_dir: PathBuf,
    },
    /// Measure cache hits in memory and on Redis, and the latency budgets + rate
    /// limits on Redis add; write results (Redis parts skipped without redis-server).
    State {
        /// The aigw binary to measure.
        #[arg(long)]
        aigw: PathBuf,
        /// Connections of the cache-hit runs (closed loop).
        #[arg(long, default_value_t = 16)]
        connections: usize,
        /// Measured seconds of each cache-hit run.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Unmeasured seconds before each cache-hit run.
        #[arg(long, default_value_t = 2.0)]
        warmup: f64,
        /// Measured requests per gateway of the budget + limits comparison (sequential).
        #[arg(long, default_value_t = 20_000)]
        requests: usize,
        /// Unmeasured requests per gateway before that comparison.
        #[arg(long, default_value_t = 2_000)]
        warmup_requests: usize,
        /// Rounds interleaving the two gateways of that comparison.
        #[arg(long, default_value_t = 10)]
        rounds: usize,
        /// Per-request timeout, seconds.
        #[arg(long, default_value_t = 10.0)]
        timeout: f64,
        /// Directory of the result files.
        #[arg(long, default_value = "bench/results")]
        out_dir: PathBuf,
    },
    /// Benchmark the gateway's local chat engine under concurrent streams,
    /// against llama.cpp and the memory-bandwidth roofline; write results.
    Engine {
        /// The aigw binary to measure (served with its embedded default).
        #[arg(long)]
        aigw: PathBuf,
        /// Concurrent streams of each round, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
        streams: Vec<usize>,
        /// Tokens generated by every stream (exactly: `ignore_eos`).
        #[arg(long, default_value_t = 128)]
        max_tokens: u32,
        /// Times every concurrency is measured (passes over the list, interleaved); the
        /// round of median aggregate throughput is reported.
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        /// Engine compute threads (`AIGW_ENGINE_THREADS` of the gateway;
        /// also llama.cpp's and the bandwidth test's). Default: one per core.
        #[arg(long)]
        threads: Option<usize>,
        /// Python interpreter with llama-cpp-python for the baseline (see
        /// bench/scripts/setup-llamacpp.sh); without it the baseline is skipped.
        #[arg(long)]
        llamacpp_python: Option<PathBuf>,
        /// Directory of the result files.
        #[arg(long, default_value = "bench/results")]
        out_dir: PathBuf,
        /// The GGUF file the gateway serves (default: found in
        /// $AIGW_MODEL_DIR or ~/.cache/aigw/models).
        #[arg(long)]
        model_file: Option<PathBuf>,
        /// The model alias to request.
        #[arg(long, default_value = engine::DEFAULT_MODEL)]
        model: String,
        /// Limit on one stream, seconds.
        #[arg(long, default_value_t = 600.0)]
        timeout: f64,
    },
    /// The engine's batched forward pass in-process (random weights of a real shape) on the
    /// CPU or an NVIDIA GPU; optionally a CPU-versus-device greedy check on a real GGUF.
    Batch {
        /// `cpu`, `cuda` or `cuda:N` (CUDA needs a build with `--features cuda`).
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Architecture shape: smollm2-135m, qwen2.5-0.5b or llama-3.2-1b.
        #[arg(long, default_value = "smollm2-135m")]
        shape: String,
        /// Weight dtype: f32, bf16 or f16 (the CPU path runs f32 only).
        #[arg(long, default_value = "f32")]
        dtype: String,
        /// Batch sizes, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
        batches: Vec<usize>,
        /// Prompt tokens per sequence.
        #[arg(long, default_value_t = 32)]
        prompt: usize,
        /// Decode steps per batch size.
        #[arg(long, default_value_t = 32)]
        steps: usize,
        /// A real GGUF model for a CPU-versus-device greedy comparison.
        #[arg(long)]
        check_gguf: Option<PathBuf>,
        /// Measure this real GGUF model instead of a random-weight one.
        #[arg(long)]
        model_gguf: Option<PathBuf>,
        /// Give the device model a pooled KV cache of this many slots (batched decode
        /// attention); at least the largest batch.
        #[arg(long)]
        kv_pool: Option<usize>,
        /// Directory of the result files.
        #[arg(long, default_value = "bench/results")]
        out_dir: PathBuf,
        /// Result file name after the date.
        #[arg(long, default_value = "batch")]
        name: String,
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
        Cmd::Routing {
            aigw,
            requests,
            warmup,
            rounds,
            out_dir,
        } => {
            let cfg = RoutingBenchConfig {
                aigw,
                requests,
                warmup,
                rounds,
                out_dir,
            };
            let report = routing::run(&cfg)?;
            let [json, md] = report.write(&cfg.out_dir)?;
            std::io::stdout()
                .lock()
                .write_all(routing::render(&report).as_bytes())?;
            eprintln!("wrote {} and {}", json.display(), md.display());
            Ok(())
        }
        Cmd::State {
            aigw,
            connections,
            duration,
            warmup,
            requests,
            warmup_requests,
            rounds,
            timeout,
            out_dir,
        } => {
            if duration <= 0.0 {
                bail!("--duration must be positive");
            }
            let cfg = StateBenchConfig {
                aigw,
                connections,
                duration: seconds("duration", duration)?,
                warmup: seconds("warmup", warmup)?,
                requests,
                warmup_requests,
                rounds,
                timeout: seconds("timeout", timeout)?,
                out_dir,
            };
            let report = state::run(&cfg)?;
            let [json, md] = report.write(&cfg.out_dir)?;
            std::io::stdout()
                .lock()
                .write_all(state::render(&report).as_bytes())?;
            eprintln!("wrote {} and {}", json.display(), md.display());
            Ok(())
        }
        Cmd::Batch {
            device,
            shape,
            dtype,
            batches,
            prompt,
            steps,
            check_gguf,
            model_gguf,
            kv_pool,
            out_dir,
            name,
        } => {
            aigw_bench::batch::run(&aigw_bench::batch::BatchConfig {
                device,
                shape,
                dtype,
                batches,
                prompt,
                steps,
                check_gguf,
                model_gguf,
                kv_pool,
                out_dir,
                name,
            })?;
            Ok(())
        }
        Cmd::Engine {
            aigw,
            streams,
            max_tokens,
            repeat,
            threads,
            llamacpp_python,
            out_dir,
            model_file,
            model,
            timeout,
        } => {
            let cfg = EngineConfig {
                aigw,
                streams,
                max_tokens,
                repeat,
                threads,
                llamacpp_python,
                out_dir,
                model_file,
                model,
                timeout: seconds("timeout", timeout)?,
            };
            let report = engine::run(&cfg)?;
            let [json, md] = report.write(&cfg.out_dir)?;
            std::io::stdout()
                .lock()
                .write_all(aigw_bench::report_md::render_engine(&report).as_bytes())?;
            eprintln!("wrote {} and {}", json.display(), md.display());
            Ok(())
        }
    }
}
