//! The local-engine scenario: the gateway's in-process chat engine under
//! 1 to 64 concurrent streams, against llama.cpp and the memory roofline.
//!
//! It starts `aigw serve` with the embedded default (which serves the local
//! model `smollm2-135m-instruct`), waits for `GET /health`, warms the engine
//! up with one short stream, then runs one round per concurrency N: N
//! streamed chat completions at once (see [`crate::streams`]), each asked
//! for exactly `max_tokens` greedy tokens. Around each round it reads the
//! engine counters of `/metrics` (the mean batch size is the growth of
//! `aigw_engine_batched_sequences_total` over that of
//! `aigw_engine_steps_total`) and polls `GET /load` for the peak of active
//! and queued sequences. Then, with the gateway stopped, it runs the
//! llama.cpp baseline script (single stream, same GGUF file, same threads)
//! and measures the memory bandwidth for the roofline.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Serialize;
use serde_json::Value;

use crate::client::{Target, fetch, probe};
use crate::overhead::TargetCheck;
use crate::procs::{ChildGuard, TempFile, free_port, spawn_aigw};
use crate::results::{Machine, UtcTime, command_line, git_commit, write_pair};
use crate::roofline::{BANDWIDTH_BUFFER_BYTES, BANDWIDTH_PASSES, Bandwidth, Roofline};
use crate::streams::{self, RoundSummary, StreamRecord};

/// The chat model of the embedded default.
pub const DEFAULT_MODEL: &str = "smollm2-135m-instruct";
/// Its GGUF file, relative to the model directory.
pub const DEFAULT_GGUF: &str = "smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf";
/// Single-stream decode must reach this share of llama.cpp's.
pub const TARGET_VS_LLAMACPP: f64 = 0.8;
/// Concurrency of the scaling target.
pub const SCALING_STREAMS: usize = 16;
/// Aggregate tokens/s at [`SCALING_STREAMS`] must reach this multiple of the
/// single-stream aggregate.
pub const TARGET_SCALING: f64 = 4.0;
/// Tokens of the warm-up stream.
pub const WARMUP_TOKENS: u32 = 8;
/// Runs of the llama.cpp baseline (after one warm-up run); the median counts.
pub const LLAMACPP_RUNS: usize = 3;
/// The statement on GPUs that every result carries.
pub const GPU_NOTE: &str = "GPU: this scenario measures the CPU engine only; the CUDA build's \
     batched throughput is measured by `aigw-bench batch --device cuda` (results \
     `*-gpu-batch*.md`).";
/// The approximation behind the roofline, stated in every result.
pub const ROOFLINE_NOTE: &str = "bytes read per decoded token ≈ the GGUF file size: every weight \
     is read once per decode step (the tied embedding matrix as the output head); KV cache and \
     activations are neglected";
/// How long the gateway may take to load its models and answer `/health`.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Interval of the `/load` polls during a round.
const LOAD_POLL: Duration = Duration::from_millis(200);
/// Most bytes read from `/metrics`.
const METRICS_LIMIT: usize = 4 << 20;

/// How to run the scenario.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The `aigw` binary.
    pub aigw: PathBuf,
    /// Concurrencies, one round each, in this order.
    pub streams: Vec<usize>,
    /// Tokens per stream.
    pub max_tokens: u32,
    /// Measurements of every concurrency; the median one is reported.
    pub repeat: usize,
    /// Engine compute threads (`AIGW_ENGINE_THREADS`); `None`: the default.
    pub threads: Option<usize>,
    /// Python with llama-cpp-python for the baseline; `None` skips it.
    pub llamacpp_python: Option<PathBuf>,
    /// Where the result files go.
    pub out_dir: PathBuf,
    /// The GGUF file the gateway serves; `None`: found in the model dir.
    pub model_file: Option<PathBuf>,
    /// The model alias to request.
    pub model: String,
    /// Limit on one stream, start to end.
    pub timeout: Duration,
}

/// The default GGUF path: `$AIGW_MODEL_DIR/…`, else `~/.cache/aigw/models/…`,
/// as the gateway resolves it.
pub fn default_model_file(model_dir: Option<&str>, home: Option<&str>) -> Option<PathBuf> {
    let dir = match (model_dir.filter(|d| !d.is_empty()), home) {
        (Some(dir), _) => PathBuf::from(dir),
        (None, Some(home)) => Path::new(home).join(".cache/aigw/models"),
        (None, None) => return None,
    };
    Some(dir.join(DEFAULT_GGUF))
}

/// The engine's compute threads and where the number comes from: the
/// `--threads` flag, else `AIGW_ENGINE_THREADS` inherited by the gateway,
/// else one per core (the engine's default).
pub fn engine_threads(flag: Option<usize>, env: Option<&str>, cores: usize) -> (usize, String) {
    if let Some(n) = flag.filter(|&n| n > 0) {
        return (n, "--threads".to_owned());
    }
    if let Some(n) = env
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
    {
        return (n, "AIGW_ENGINE_THREADS".to_owned());
    }
    (cores.max(1), "default: one per core".to_owned())
}

/// The value of the Prometheus series `name{…model="MODEL"…}` (or of the
/// unlabelled `name`) in a text exposition.
pub fn metric_value(text: &str, name: &str, model: &str) -> Option<f64> {
    let want = format!("model=\"{model}\"");
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let value = if let Some(labels) = rest.strip_prefix('{') {
            let (labels, after) = labels.split_once('}')?;
            if !labels.split(',').any(|l| l.trim() == want) {
                return None;
            }
            after
        } else if rest.starts_with([' ', '\t']) {
            rest
        } else {
            return None;
        };
        value.split_whitespace().next()?.parse().ok()
    })
}

/// The engine's step counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EngineCounters {
    /// `aigw_engine_steps_total`.
    pub steps: u64,
    /// `aigw_engine_batched_sequences_total`.
    pub batched_sequences: u64,
}

impl EngineCounters {
    /// Reads the counters of `model` from `/metrics` text.
    pub fn parse(metrics: &str, model: &str) -> Option<Self> {
        let get = |name| metric_value(metrics, name, model).map(|v| v as u64);
        Some(Self {
            steps: get("aigw_engine_steps_total")?,
            batched_sequences: get("aigw_engine_batched_sequences_total")?,
        })
    }

    /// Steps taken and the mean batch size (sequences per step) from
    /// `before` to `self`.
    pub fn since(&self, before: &Self) -> (u64, Option<f64>) {
        let steps = self.steps.saturating_sub(before.steps);
        let seqs = self
            .batched_sequences
            .saturating_sub(before.batched_sequences);
        (steps, (steps > 0).then(|| seqs as f64 / steps as f64))
    }
}

/// Active and queued sequences of `model` in a `GET /load` answer.
pub fn parse_load(body: &[u8], model: &str) -> Option<(u64, u64)> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let entry = v["models"]
        .as_array()?
        .iter()
        .find(|m| m["model"] == model)?;
    Some((entry["active"].as_u64()?, entry["queued"].as_u64()?))
}

/// One round: N concurrent streams.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    /// Concurrent streams.
    pub concurrency: usize,
    /// TTFT, decode and throughput figures.
    pub summary: RoundSummary,
    /// Engine steps during the round.
    pub engine_steps: Option<u64>,
    /// Mean sequences per engine step during the round (prefill steps
    /// included).
    pub mean_batch: Option<f64>,
    /// Most active sequences seen by the `/load` polls.
    pub max_active: Option<u64>,
    /// Most queued requests seen by the `/load` polls.
    pub max_queued: Option<u64>,
    /// The aggregate tok/s of every measurement of this concurrency, in the order taken;
    /// this round is the one of median aggregate.
    pub repeats_aggregate_tok_s: Vec<f64>,
    /// Every stream.
    pub streams: Vec<StreamRecord>,
}

/// The llama.cpp single-stream baseline.
#[derive(Debug, Clone, Serialize)]
pub struct Baseline {
    /// `measured`, `skipped` or `failed`.
    pub status: &'static str,
    /// Why it was skipped or failed.
    pub note: Option<String>,
    /// Decode tokens/s (the statistic in `result.statistic`).
    pub decode_tok_s: Option<f64>,
    /// Time to first token: prompt prefill plus the first token, ms.
    pub ttft_ms: Option<f64>,
    /// The script's whole output.
    pub result: Option<Value>,
}

impl Baseline {
    fn skipped(note: &str) -> Self {
        Self {
            status: "skipped",
            note: Some(note.to_owned()),
            decode_tok_s: None,
            ttft_ms: None,
            result: None,
        }
    }

    fn failed(note: String) -> Self {
        Self {
            status: "failed",
            note: Some(note),
            ..Self::skipped("")
        }
    }

    /// Reads the script's stdout: its last non-empty line is one JSON object
    /// with `decode_tok_s` and `ttft_ms`.
    pub fn from_output(stdout: &str) -> Self {
        let Some(line) = stdout.lines().rev().find(|l| !l.trim().is_empty()) else {
            return Self::failed("the baseline script printed nothing".to_owned());
        };
        let value: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => {
                return Self::failed(format!("the baseline script printed no JSON ({e}): {line}"));
            }
        };
        let (Some(decode), Some(ttft)) =
            (value["decode_tok_s"].as_f64(), value["ttft_ms"].as_f64())
        else {
            return Self::failed(format!(
                "the baseline output lacks decode_tok_s/ttft_ms: {line}"
            ));
        };
        Self {
            status: "measured",
            note: None,
            decode_tok_s: Some(decode),
            ttft_ms: Some(ttft),
            result: Some(value),
        }
    }
}

/// Everything the scenario writes.
#[derive(Debug, Clone, Serialize)]
pub struct EngineReport {
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
    /// The model alias requested.
    pub model: String,
    /// Its GGUF file.
    pub model_file: String,
    /// Size of the GGUF file, bytes.
    pub model_file_bytes: u64,
    /// Engine compute threads (also llama.cpp's and the bandwidth test's).
    pub engine_threads: usize,
    /// Where that number comes from.
    pub engine_threads_source: String,
    /// Tokens per stream.
    pub max_tokens: u32,
    /// The prompt of stream i.
    pub prompt_template: String,
    /// The rounds, in the order they ran.
    pub rounds: Vec<Round>,
    /// llama.cpp, single stream.
    pub llamacpp: Baseline,
    /// Read bandwidth.
    pub bandwidth: Bandwidth,
    /// Single-stream roofline.
    pub roofline: Roofline,
    /// The approximation behind the roofline.
    pub roofline_note: &'static str,
    /// Targets and verdicts.
    pub targets: Vec<TargetCheck>,
    /// GPUs: not measured.
    pub gpu: &'static str,
}

impl EngineReport {
    /// The file name stem: `DATE-cpu-engine`.
    pub fn file_stem(&self) -> String {
        format!("{}-cpu-engine", self.date)
    }

    /// The round at concurrency `n`, if one ran.
    pub fn round(&self, n: usize) -> Option<&Round> {
        find_round(&self.rounds, n)
    }

    /// Writes the JSON and Markdown files into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<[PathBuf; 2]> {
        write_pair(
            dir,
            &self.file_stem(),
            self,
            &crate::report_md::render_engine(self),
        )
    }
}

fn find_round(rounds: &[Round], n: usize) -> Option<&Round> {
    rounds.iter().find(|r| r.concurrency == n)
}

/// Judges the rounds and the baseline against the targets; a round with a
/// failed stream fails the targets that use it.
pub fn check_targets(rounds: &[Round], llamacpp_decode_tok_s: Option<f64>) -> Vec<TargetCheck> {
    let one = find_round(rounds, 1);
    let many = find_round(rounds, SCALING_STREAMS);
    let verdict = |ok: bool, used: &[&Round]| {
        if ok && used.iter().all(|r| r.summary.errors == 0) {
            "met"
        } else {
            "not met"
        }
    };
    let single = one.and_then(|r| r.summary.decode_tok_s_mean.map(|v| (r, v)));
    let vs_llamacpp = match (single, llamacpp_decode_tok_s) {
        (Some((r, ours)), Some(theirs)) if theirs > 0.0 => {
            let ratio = ours / theirs;
            (
                Some(format!("{ours:.1} vs {theirs:.1} tok/s (× {ratio:.2})")),
                verdict(ratio >= TARGET_VS_LLAMACPP, &[r]),
            )
        }
        _ => (None, "not measured"),
    };
    let scaling = match (one, many) {
        (Some(r1), Some(rn)) if r1.summary.aggregate_tok_s > 0.0 => {
            let ratio = rn.summary.aggregate_tok_s / r1.summary.aggregate_tok_s;
            (
                Some(format!(
                    "{:.1} vs {:.1} tok/s (× {ratio:.2})",
                    rn.summary.aggregate_tok_s, r1.summary.aggregate_tok_s
                )),
                verdict(ratio >= TARGET_SCALING, &[r1, rn]),
            )
        }
        _ => (None, "not measured"),
    };
    vec![
        TargetCheck {
            name: "single-stream decode vs llama.cpp",
            goal: format!(
                ">= {TARGET_VS_LLAMACPP} × llama.cpp's decode tok/s (same GGUF, same threads)"
            ),
            measured: vs_llamacpp.0,
            status: vs_llamacpp.1,
        },
        TargetCheck {
            name: "aggregate throughput at 16 streams",
            goal: format!(
                ">= {TARGET_SCALING} × the aggregate tok/s of 1 stream (same metric: tokens / round wall time)"
            ),
            measured: scaling.0,
            status: scaling.1,
        },
    ]
}

/// The baseline script, next to this crate's sources (or under the current
/// directory when the sources have moved).
fn baseline_script() -> PathBuf {
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/llamacpp_baseline.py");
    if built.is_file() {
        built
    } else {
        PathBuf::from("bench/scripts/llamacpp_baseline.py")
    }
}

/// Runs the llama.cpp baseline with `python`, single stream.
fn run_baseline(
    python: &Path,
    model_file: &Path,
    threads: usize,
    max_tokens: u32,
) -> anyhow::Result<Baseline> {
    let script = baseline_script();
    if !script.is_file() {
        bail!("the baseline script {} is missing", script.display());
    }
    let out = Command::new(python)
        .arg(&script)
        .arg("--model")
        .arg(model_file)
        .args(["--threads", &threads.to_string()])
        .args(["--max-tokens", &max_tokens.to_string()])
        .args(["--runs", &LLAMACPP_RUNS.to_string()])
        .args(["--prompt", &streams::prompt(0)])
        .output()
        .with_context(|| format!("cannot run {}", python.display()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(10).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Ok(Baseline::failed(format!(
            "{} {} exited with {}: {}",
            python.display(),
            script.display(),
            out.status,
            tail.join(" / ")
        )));
    }
    Ok(Baseline::from_output(&String::from_utf8_lossy(&out.stdout)))
}

/// The running gateway's endpoints.
struct Gateway {
    chat_url: String,
    metrics: Target,
    load: Target,
}

impl Gateway {
    async fn counters(&self, model: &str) -> anyhow::Result<Option<EngineCounters>> {
        let (status, body) = fetch(&self.metrics, Duration::from_secs(5), METRICS_LIMIT).await?;
        if !status.is_success() {
            bail!("GET /metrics answered HTTP {status}");
        }
        Ok(EngineCounters::parse(
            &String::from_utf8_lossy(&body),
            model,
        ))
    }

    async fn load(&self, model: &str) -> Option<(u64, u64)> {
        match probe(&self.load, Duration::from_secs(2)).await {
            Ok((status, body)) if status.is_success() => parse_load(&body, model),
            _ => None,
        }
    }

    /// Waits (up to 30 s) until the engine has nothing active or queued.
    async fn wait_idle(&self, model: &str) {
        for _ in 0..300 {
            match self.load(model).await {
                Some((0, 0)) | None => return,
                Some(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

/// Polls `/load` until told to stop; returns the peaks of active and queued
/// sequences (`None` when no poll answered).
async fn poll_load(
    load: Target,
    model: String,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> Option<(u64, u64)> {
    let mut peak: Option<(u64, u64)> = None;
    loop {
        if let Ok((status, body)) = probe(&load, Duration::from_secs(2)).await
            && status.is_success()
            && let Some((active, queued)) = parse_load(&body, &model)
        {
            let (a, q) = peak.unwrap_or_default();
            peak = Some((a.max(active), q.max(queued)));
        }
        tokio::select! {
            _ = &mut stop => return peak,
            () = tokio::time::sleep(LOAD_POLL) => {}
        }
    }
}

async fn measure_round(gw: &Gateway, cfg: &EngineConfig, n: usize) -> anyhow::Result<Round> {
    gw.wait_idle(&cfg.model).await;
    let before = gw.counters(&cfg.model).await?;
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let poller = tokio::spawn(poll_load(gw.load.clone(), cfg.model.clone(), stopped));
    let (records, wall) =
        streams::run_round(&gw.chat_url, &cfg.model, n, cfg.max_tokens, cfg.timeout).await?;
    let _ = stop.send(());
    let peak = poller.await.ok().flatten();
    let after = gw.counters(&cfg.model).await?;
    let (steps, mean_batch) = match (before, after) {
        (Some(b), Some(a)) => {
            let (steps, mean) = a.since(&b);
            (Some(steps), mean)
        }
        _ => (None, None),
    };
    Ok(Round {
        concurrency: n,
        summary: streams::summarize(&records, wall.as_secs_f64()),
        engine_steps: steps,
        mean_batch,
        max_active: peak.map(|p| p.0),
        max_queued: peak.map(|p| p.1),
        repeats_aggregate_tok_s: Vec::new(),
        streams: records,
    })
}

/// The measurement of median aggregate throughput (the lower middle one of an even count),
/// carrying every measurement's aggregate. Its error count is that of all the measurements
/// (and its first error the first of any), so that a failed stream in any pass fails the
/// targets and is reported: a pass with failures is usually the slowest, the one a median
/// would otherwise drop. `None` for none.
pub fn median_round(mut measured: Vec<Round>) -> Option<Round> {
    let all: Vec<f64> = measured.iter().map(|r| r.summary.aggregate_tok_s).collect();
    let errors = measured.iter().map(|r| r.summary.errors).sum();
    let first_error = measured.iter().find_map(|r| r.summary.first_error.clone());
    measured.sort_by(|a, b| {
        a.summary
            .aggregate_tok_s
            .total_cmp(&b.summary.aggregate_tok_s)
    });
    let mid = measured.len().checked_sub(1)? / 2;
    let mut round = measured.swap_remove(mid);
    round.repeats_aggregate_tok_s = all;
    round.summary.errors = errors;
    round.summary.first_error = first_error;
    Some(round)
}

/// One line of progress on stderr.
fn progress(round: &Round) {
    let s = &round.summary;
    let f = |v: Option<f64>| v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.1}"));
    eprintln!(
        "  {} stream(s): ttft p50 {} ms, p90 {} ms; decode {} tok/s per stream; \
         aggregate {:.1} tok/s; mean batch {}; {} error(s){}",
        round.concurrency,
        f(s.ttft_ms_p50),
        f(s.ttft_ms_p90),
        f(s.decode_tok_s_mean),
        s.aggregate_tok_s,
        f(round.mean_batch),
        s.errors,
        s.first_error
            .as_deref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
}

fn check_config(cfg: &EngineConfig) -> anyhow::Result<PathBuf> {
    if !cfg.aigw.is_file() {
        bail!(
            "gateway binary {} does not exist; build it with `cargo build --release -p aigw-gateway`",
            cfg.aigw.display()
        );
    }
    if cfg.streams.is_empty() || cfg.streams.contains(&0) {
        bail!("--streams must list concurrencies of at least 1, e.g. 1,4,16,64");
    }
    if cfg.repeat == 0 {
        bail!("--repeat must be at least 1");
    }
    if cfg.max_tokens < 2 {
        bail!("--max-tokens must be at least 2 (the decode rate needs two tokens)");
    }
    if let Some(python) = &cfg.llamacpp_python
        && !python.is_file()
    {
        bail!(
            "--llamacpp-python {} does not exist; create it with bench/scripts/setup-llamacpp.sh",
            python.display()
        );
    }
    let model_file = match &cfg.model_file {
        Some(path) => path.clone(),
        None => default_model_file(
            std::env::var("AIGW_MODEL_DIR").ok().as_deref(),
            std::env::var("HOME").ok().as_deref(),
        )
        .context("cannot locate the model directory: set AIGW_MODEL_DIR or pass --model-file")?,
    };
    if !model_file.is_file() {
        bail!(
            "model file {} does not exist; install it with `aigw models fetch --default` \
             (or pass --model-file)",
            model_file.display()
        );
    }
    Ok(model_file)
}

/// Runs the scenario and returns its report (files not yet written).
pub fn run(cfg: &EngineConfig) -> anyhow::Result<EngineReport> {
    let model_file = check_config(cfg)?;
    let model_file_bytes = std::fs::metadata(&model_file)
        .with_context(|| format!("cannot read {}", model_file.display()))?
        .len();
    let machine = Machine::detect();
    let (threads, threads_source) = engine_threads(
        cfg.threads,
        std::env::var("AIGW_ENGINE_THREADS").ok().as_deref(),
        machine.cores,
    );
    let runtime = crate::build_runtime(1)?;
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let log = TempFile::new("engine-gateway.log");
    let mut env = vec![("RUST_LOG", "warn".to_owned())];
    if let Some(n) = cfg.threads {
        env.push(("AIGW_ENGINE_THREADS", n.to_string()));
    }
    let mut gateway: ChildGuard =
        spawn_aigw(&cfg.aigw, &["serve", "--listen", &listen], &env, &log)?;
    let base = Target::new(&format!("http://{listen}/"), None, &[])?;
    let gw = Gateway {
        chat_url: format!("http://{listen}/v1/chat/completions"),
        metrics: base.get("/metrics")?,
        load: base.get("/load")?,
    };
    eprintln!(
        "starting {} serve --listen {listen} ({threads} engine thread(s), {threads_source})",
        cfg.aigw.display()
    );
    runtime.block_on(gateway.wait_healthy(&base.get("/health")?, STARTUP_TIMEOUT))?;
    let rounds = runtime.block_on(async {
        let (warm, _) =
            streams::run_round(&gw.chat_url, &cfg.model, 1, WARMUP_TOKENS, cfg.timeout).await?;
        if let Some(err) = warm.iter().find_map(|r| r.error.as_deref()) {
            bail!("the warm-up stream failed: {err}");
        }
        eprintln!(
            "warmed up; {} tokens per stream, {} pass(es) over the concurrencies",
            cfg.max_tokens, cfg.repeat
        );
        // Passes over the whole list, so that a slow spell of a shared machine spreads over
        // every concurrency instead of landing on one.
        let mut measured: Vec<Vec<Round>> = vec![Vec::new(); cfg.streams.len()];
        for _ in 0..cfg.repeat {
            for (&n, taken) in cfg.streams.iter().zip(&mut measured) {
                let round = measure_round(&gw, cfg, n).await?;
                progress(&round);
                taken.push(round);
            }
        }
        anyhow::Ok(
            measured
                .into_iter()
                .filter_map(median_round)
                .collect::<Vec<_>>(),
        )
    })?;
    if let Some(status) = gateway.exited() {
        eprintln!("warning: the gateway exited during the run ({status})");
    }
    drop(gateway);

    let llamacpp = match &cfg.llamacpp_python {
        None => Baseline::skipped("no --llamacpp-python given"),
        Some(python) => {
            eprintln!(
                "llama.cpp baseline: {} threads, {} tokens, median of {LLAMACPP_RUNS} runs",
                threads, cfg.max_tokens
            );
            run_baseline(python, &model_file, threads, cfg.max_tokens)?
        }
    };
    if let Some(note) = &llamacpp.note {
        eprintln!("llama.cpp baseline {}: {note}", llamacpp.status);
    }
    eprintln!(
        "measuring read bandwidth: {} MiB, {threads} thread(s), best of {BANDWIDTH_PASSES}",
        BANDWIDTH_BUFFER_BYTES >> 20
    );
    let bandwidth =
        crate::roofline::measure_bandwidth(BANDWIDTH_BUFFER_BYTES, threads, BANDWIDTH_PASSES);
    let single = find_round(&rounds, 1).and_then(|r| r.summary.decode_tok_s_mean);
    let roofline = Roofline::new(bandwidth.best_gb_s, model_file_bytes, single);
    let now = UtcTime::now();
    Ok(EngineReport {
        scenario: "cpu-engine",
        date: now.date(),
        timestamp: now.rfc3339(),
        machine,
        command: command_line(),
        git_commit: git_commit(),
        gateway_binary: cfg.aigw.display().to_string(),
        model: cfg.model.clone(),
        model_file: model_file.display().to_string(),
        model_file_bytes,
        engine_threads: threads,
        engine_threads_source: threads_source,
        max_tokens: cfg.max_tokens,
        prompt_template: streams::PROMPT_TEMPLATE.to_owned(),
        targets: check_targets(&rounds, llamacpp.decode_tok_s),
        rounds,
        llamacpp,
        bandwidth,
        roofline,
        roofline_note: ROOFLINE_NOTE,
        gpu: GPU_NOTE,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const METRICS: &str = "\
# HELP aigw_engine_steps_total Forward steps of a local engine
# TYPE aigw_engine_steps_total counter
aigw_engine_steps_total{model=\"smollm2-135m-instruct\"} 1200
aigw_engine_steps_total_other{model=\"smollm2-135m-instruct\"} 7
aigw_engine_batched_sequences_total{model=\"all-minilm-l6-v2\"} 5
aigw_engine_batched_sequences_total{model=\"smollm2-135m-instruct\"} 9600
aigw_requests_in_flight 3
";

    #[test]
    fn reads_metrics() {
        let m = "smollm2-135m-instruct";
        assert_eq!(
            metric_value(METRICS, "aigw_engine_steps_total", m),
            Some(1200.0)
        );
        assert_eq!(
            metric_value(METRICS, "aigw_engine_batched_sequences_total", m),
            Some(9600.0)
        );
        assert_eq!(
            metric_value(METRICS, "aigw_requests_in_flight", m),
            Some(3.0)
        );
        assert_eq!(metric_value(METRICS, "aigw_engine_steps_total", "x"), None);
        assert_eq!(metric_value(METRICS, "aigw_missing", m), None);
        let before = EngineCounters::parse(METRICS, m).unwrap();
        assert_eq!(
            before,
            EngineCounters {
                steps: 1200,
                batched_sequences: 9600
            }
        );
        let after = EngineCounters {
            steps: 1330,
            batched_sequences: 9600 + 128 * 16,
        };
        let (steps, mean) = after.since(&before);
        assert_eq!(steps, 130);
        assert!((mean.unwrap() - 2048.0 / 130.0).abs() < 1e-12);
        assert_eq!(before.since(&before), (0, None));
        assert_eq!(EngineCounters::parse("", m), None);
    }

    #[test]
    fn reads_load() {
        let body = br#"{"models":[{"model":"all-minilm-l6-v2","kind":"embedding","queued":0,"active":0},
            {"model":"smollm2-135m-instruct","kind":"chat","queued":2,"active":14,"max_batch":64}]}"#;
        assert_eq!(parse_load(body, "smollm2-135m-instruct"), Some((14, 2)));
        assert_eq!(parse_load(body, "nope"), None);
        assert_eq!(parse_load(b"not json", "x"), None);
    }

    #[test]
    fn resolves_threads_and_model_file() {
        assert_eq!(engine_threads(Some(3), Some("5"), 2).0, 3);
        assert_eq!(
            engine_threads(None, Some("5"), 2),
            (5, "AIGW_ENGINE_THREADS".to_owned())
        );
        assert_eq!(engine_threads(None, Some("x"), 2).0, 2);
        assert_eq!(engine_threads(None, None, 0).0, 1);
        assert_eq!(
            default_model_file(Some("/m"), Some("/home/u")),
            Some(PathBuf::from("/m").join(DEFAULT_GGUF))
        );
        assert_eq!(
            default_model_file(None, Some("/home/u")),
            Some(PathBuf::from("/home/u/.cache/aigw/models").join(DEFAULT_GGUF))
        );
        assert_eq!(default_model_file(Some(""), None), None);
    }

    #[test]
    fn reads_baseline_output() {
        let b = Baseline::from_output(
            "loading\n{\"decode_tok_s\": 120.5, \"ttft_ms\": 30.2, \"runs\": []}\n\n",
        );
        assert_eq!(b.status, "measured");
        assert_eq!((b.decode_tok_s, b.ttft_ms), (Some(120.5), Some(30.2)));
        assert_eq!(Baseline::from_output("").status, "failed");
        assert_eq!(Baseline::from_output("{\"x\":1}").status, "failed");
        assert_eq!(Baseline::from_output("oops").status, "failed");
    }

    pub(crate) fn round(n: usize, decode: f64, aggregate: f64, errors: usize) -> Round {
        Round {
            concurrency: n,
            summary: RoundSummary {
                streams: n,
                ok: n - errors,
                errors,
                ttft_ms_p50: Some(50.0),
                ttft_ms_p90: Some(60.0),
                ttft_ms_max: Some(70.0),
                decode_tok_s_mean: Some(decode),
                decode_tok_s_min: Some(decode),
                tokens: 128 * n as u64,
                wall_s: 128.0 * n as f64 / aggregate,
                aggregate_tok_s: aggregate,
                first_error: None,
            },
            engine_steps: Some(130),
            mean_batch: Some(n as f64 * 0.95),
            max_active: Some(n as u64),
            max_queued: Some(0),
            repeats_aggregate_tok_s: Vec::new(),
            streams: Vec::new(),
        }
    }

    #[test]
    fn reports_the_median_measurement_with_all_aggregates() {
        let taken = vec![
            round(16, 40.0, 700.0, 0),
            round(16, 50.0, 900.0, 0),
            round(16, 45.0, 800.0, 0),
        ];
        let r = median_round(taken).unwrap();
        assert_eq!(r.summary.aggregate_tok_s, 800.0);
        assert_eq!(r.summary.decode_tok_s_mean, Some(45.0));
        assert_eq!(r.repeats_aggregate_tok_s, vec![700.0, 900.0, 800.0]);
        // Even counts take the lower middle; one measurement is its own median.
        let r = median_round(vec![round(1, 1.0, 20.0, 0), round(1, 1.0, 10.0, 0)]).unwrap();
        assert_eq!(r.summary.aggregate_tok_s, 10.0);
        assert_eq!(
            median_round(vec![round(1, 1.0, 5.0, 0)])
                .unwrap()
                .repeats_aggregate_tok_s,
            vec![5.0]
        );
        assert!(median_round(Vec::new()).is_none());
        // A failure in a pass that is not the median still counts, and fails the targets.
        let mut failed = round(16, 20.0, 300.0, 2);
        failed.summary.first_error = Some("stream 4: timeout".to_owned());
        let r = median_round(vec![
            round(16, 50.0, 900.0, 0),
            failed,
            round(16, 45.0, 800.0, 0),
        ])
        .unwrap();
        assert_eq!(r.summary.aggregate_tok_s, 800.0);
        assert_eq!(r.summary.errors, 2);
        assert_eq!(r.summary.first_error.as_deref(), Some("stream 4: timeout"));
        let t = check_targets(&[round(1, 100.0, 95.0, 0), r], None);
        assert_eq!(t[1].status, "not met");
    }

    #[test]
    fn judges_targets() {
        let rounds = vec![round(1, 100.0, 95.0, 0), round(16, 30.0, 400.0, 0)];
        let t = check_targets(&rounds, Some(110.0));
        assert_eq!(t[0].status, "met");
        assert_eq!(
            t[0].measured.as_deref(),
            Some("100.0 vs 110.0 tok/s (× 0.91)")
        );
        assert_eq!(t[1].status, "met");
        assert_eq!(
            t[1].measured.as_deref(),
            Some("400.0 vs 95.0 tok/s (× 4.21)")
        );

        let t = check_targets(&rounds, Some(130.0));
        assert_eq!(t[0].status, "not met");

        let t = check_targets(&rounds, None);
        assert_eq!(
            (t[0].status, t[0].measured.as_deref()),
            ("not measured", None)
        );

        let slow = vec![round(1, 100.0, 95.0, 0), round(16, 30.0, 300.0, 0)];
        assert_eq!(check_targets(&slow, None)[1].status, "not met");

        let failed = vec![round(1, 100.0, 95.0, 0), round(16, 30.0, 400.0, 1)];
        assert_eq!(check_targets(&failed, Some(100.0))[1].status, "not met");
        assert_eq!(check_targets(&failed, Some(100.0))[0].status, "met");

        assert!(
            check_targets(&[], Some(1.0))
                .iter()
                .all(|t| t.status == "not measured")
        );
    }
}
