//! The batch scenario: the engine's batched forward pass measured in-process, without HTTP,
//! tokenizer or sampler, on the CPU or an NVIDIA GPU (`cuda` feature).
//!
//! Throughput depends on the architecture's shapes and the dtype, not on trained values, so
//! the models are built with random weights of a real architecture's shape (labelled so in
//! the results). For each batch size, every sequence is prefilled with the same number of
//! random prompt tokens in one step, then all sequences decode together, each step feeding
//! back the greedy token. A separate check loads a real GGUF model on the CPU and on the
//! device and compares their greedy continuations of one prompt.

use std::path::PathBuf;
use std::time::Instant;

use aigw_inference::llm::config::LlamaConfig;
use aigw_inference::llm::load::{load_gguf, load_gguf_dense};
use aigw_inference::llm::model::{LlamaModel, SeqCache, StepSeq, argmax_rows};
use aigw_inference::llm::random::random_model;
use anyhow::{Context as _, bail};
use candle_core::{DType, Device};
use serde::Serialize;

use crate::results::{Machine, UtcTime, command_line, git_commit};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BatchConfig {
    /// `cpu` or `cuda` (`cuda:N` for another GPU).
    pub device: String,
    /// Architecture shape, one of [`SHAPES`].
    pub shape: String,
    /// `f32`, `bf16` or `f16`.
    pub dtype: String,
    /// Batch sizes, in order.
    pub batches: Vec<usize>,
    /// Prompt tokens per sequence.
    pub prompt: usize,
    /// Decode steps per batch.
    pub steps: usize,
    /// A real GGUF model for the CPU-versus-device greedy check (device runs only).
    pub check_gguf: Option<PathBuf>,
    /// Measure this real GGUF model instead of a random one (its own quantized weights,
    /// through the same kernels as the served engine).
    pub model_gguf: Option<PathBuf>,
    /// Give the device model a pooled KV cache of this many slots (batched decode attention).
    pub kv_pool: Option<usize>,
    /// Directory of the result files.
    pub out_dir: PathBuf,
    /// Result file stem (date prefixed).
    pub name: String,
}

/// Known architecture shapes: name, description, config.
pub const SHAPES: [&str; 3] = ["smollm2-135m", "qwen2.5-0.5b", "llama-3.2-1b"];

/// The hyper-parameters of a named shape (from the models' published config.json files).
pub fn shape(name: &str) -> anyhow::Result<LlamaConfig> {
    let c = |arch: &str, vocab, hidden, inter, layers, heads, kv, theta: f32| LlamaConfig {
        architecture: arch.to_owned(),
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: inter,
        num_layers: layers,
        num_heads: heads,
        num_kv_heads: kv,
        head_dim: hidden / heads,
        rms_norm_eps: 1e-5,
        rope_theta: theta,
        rope_interleaved: false,
        context_length: 4096,
    };
    Ok(match name {
        "smollm2-135m" => c("llama", 49_152, 576, 1536, 30, 9, 3, 100_000.0),
        "qwen2.5-0.5b" => c("qwen2", 151_936, 896, 4864, 24, 14, 2, 1_000_000.0),
        "llama-3.2-1b" => c("llama", 128_256, 2048, 8192, 16, 32, 8, 500_000.0),
        other => bail!("unknown shape `{other}` (known: {})", SHAPES.join(", ")),
    })
}

fn parse_device(name: &str) -> anyhow::Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Device::new_cuda(0).context("CUDA device 0 (built with `--features cuda`?)"),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => Device::new_cuda(n).with_context(|| format!("CUDA device {n}")),
            _ => bail!("unknown device `{other}` (cpu, cuda, cuda:N)"),
        },
    }
}

fn parse_dtype(name: &str) -> anyhow::Result<DType> {
    Ok(match name {
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        other => bail!("unknown dtype `{other}` (f32, bf16, f16)"),
    })
}

/// One batch size's figures.
#[derive(Debug, Clone, Serialize)]
pub struct BatchRow {
    /// Sequences decoding together.
    pub batch: usize,
    /// Wall time of the prefill step (all sequences' prompts in one step), ms.
    pub prefill_ms: f64,
    /// Prompt tokens per second in that step.
    pub prefill_tok_s: f64,
    /// Median decode step, ms.
    pub step_p50_ms: f64,
    /// Slowest decode step, ms.
    pub step_max_ms: f64,
    /// Generated tokens per second over all sequences.
    pub decode_tok_s: f64,
    /// Generated tokens per second of one sequence.
    pub per_seq_tok_s: f64,
}

/// One engine's greedy continuation, compared with the dense f32 reference.
#[derive(Debug, Clone, Serialize)]
pub struct Continuation {
    /// Which engine: `reference` (every weight dequantized to f32, on the CPU), `cpu`
    /// (the served CPU kernels) or `device`.
    pub engine: String,
    /// How many leading tokens agree with the reference's.
    pub agreeing_prefix: usize,
    /// Largest absolute difference of the first step's logits from the reference's.
    pub first_logits_max_abs_diff: f32,
    /// The continuation.
    pub text: String,
    /// Anything else to know about the row.
    pub note: Option<String>,
}

/// The greedy comparison on a real model: the CPU engine and the device against a dense
/// f32 reference of the same weights.
#[derive(Debug, Clone, Serialize)]
pub struct GreedyCheck {
    /// The GGUF file.
    pub model: String,
    /// The prompt's text.
    pub prompt: String,
    /// Greedy tokens compared.
    pub tokens: usize,
    /// Reference, CPU, device.
    pub engines: Vec<Continuation>,
}

/// The whole result.
#[derive(Debug, Clone, Serialize)]
pub struct BatchResults {
    /// When measured (RFC 3339).
    pub measured_at: String,
    /// The host.
    pub machine: Machine,
    /// The device's description.
    pub device: String,
    /// The exact command.
    pub command: String,
    /// The commit measured.
    pub commit: Option<String>,
    /// Whether the weights are random (else a real GGUF file's).
    pub random_weights: bool,
    /// The shape's name, or the GGUF file's.
    pub shape: String,
    /// Parameters of the random model.
    pub parameters: usize,
    /// Weight dtype.
    pub dtype: String,
    /// Prompt tokens per sequence.
    pub prompt_tokens: usize,
    /// Decode steps per batch.
    pub decode_steps: usize,
    /// Slots of the pooled KV cache, if the model had one.
    pub kv_pool_slots: Option<usize>,
    /// Figures per batch size.
    pub rows: Vec<BatchRow>,
    /// The real-model check, when asked for.
    pub greedy_check: Option<GreedyCheck>,
}

fn parameters(c: &LlamaConfig) -> usize {
    let q = c.num_heads * c.head_dim;
    let kv = c.num_kv_heads * c.head_dim;
    let block = c.hidden_size * (2 * q + 2 * kv) + 3 * c.hidden_size * c.intermediate_size;
    c.vocab_size * c.hidden_size + c.num_layers * block
}

/// Deterministic pseudo-random token ids below `vocab`.
fn token_ids(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut x = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((x >> 33) % vocab as u64) as u32
        })
        .collect()
}

/// One step over `caches`, each sequence bringing `tokens[i]`; returns the greedy tokens.
fn step(
    model: &LlamaModel,
    caches: &mut [SeqCache],
    tokens: &[Vec<u32>],
) -> anyhow::Result<Vec<u32>> {
    let mut batch: Vec<StepSeq<'_>> = caches
        .iter_mut()
        .zip(tokens)
        .map(|(cache, t)| StepSeq {
            tokens: t,
            cache,
            want_logits: true,
        })
        .collect();
    let logits = model.forward(&mut batch)?.context("no logits")?;
    Ok(argmax_rows(&logits)?)
}

fn measure(
    model: &LlamaModel,
    batch: usize,
    prompt: usize,
    steps: usize,
) -> anyhow::Result<BatchRow> {
    let vocab = model.vocab_rows();
    let mut caches: Vec<SeqCache> = (0..batch).map(|_| model.new_cache()).collect();
    let prompts: Vec<Vec<u32>> = (0..batch)
        .map(|i| token_ids(prompt, vocab, i as u64 + 1))
        .collect();
    let t = Instant::now();
    let mut next = step(model, &mut caches, &prompts)?;
    let prefill = t.elapsed().as_secs_f64();
    let mut times = Vec::with_capacity(steps);
    let start = Instant::now();
    for _ in 0..steps {
        let t = Instant::now();
        let tokens: Vec<Vec<u32>> = next.iter().map(|&id| vec![id]).collect();
        next = step(model, &mut caches, &tokens)?;
        times.push(t.elapsed().as_secs_f64());
    }
    let total = start.elapsed().as_secs_f64();
    times.sort_by(f64::total_cmp);
    Ok(BatchRow {
        batch,
        prefill_ms: prefill * 1e3,
        prefill_tok_s: (batch * prompt) as f64 / prefill,
        step_p50_ms: times.get(times.len() / 2).copied().unwrap_or(0.0) * 1e3,
        step_max_ms: times.last().copied().unwrap_or(0.0) * 1e3,
        decode_tok_s: (batch * steps) as f64 / total,
        per_seq_tok_s: steps as f64 / total,
    })
}

/// Greedy continuation of `ids` for `n` tokens; also the first step's logits.
fn greedy(model: &LlamaModel, ids: &[u32], n: usize) -> anyhow::Result<(Vec<u32>, Vec<f32>)> {
    let mut cache = model.new_cache();
    let mut out = Vec::with_capacity(n);
    let mut first = Vec::new();
    let mut input = ids.to_vec();
    for i in 0..n {
        let logits = model
            .forward(&mut [StepSeq {
                tokens: &input,
                cache: &mut cache,
                want_logits: true,
            }])?
            .context("no logits")?;
        if i == 0 {
            first = logits.flatten_all()?.to_vec1::<f32>()?;
        }
        let id = argmax_rows(&logits)?[0];
        out.push(id);
        input = vec![id];
    }
    Ok((out, first))
}

fn greedy_check(
    path: &std::path::Path,
    device: &Device,
    kv_pool: Option<usize>,
) -> anyhow::Result<GreedyCheck> {
    const PROMPT: &str = "The three primary colours of light are";
    const TOKENS: usize = 32;
    let reference = load_gguf_dense(path, &Device::Cpu)?;
    let ids = reference.codec.encode_prompt(PROMPT)?;
    let (ref_ids, ref_logits) = greedy(&reference.model, &ids, TOKENS)?;
    let mut engines = vec![Continuation {
        engine: "reference".into(),
        agreeing_prefix: TOKENS,
        first_logits_max_abs_diff: 0.0,
        text: reference.codec.decode(&ref_ids)?,
        note: None,
    }];
    drop(reference);
    let mut runs = vec![("cpu", &Device::Cpu, false), ("device", device, false)];
    if kv_pool.is_some() {
        runs.push(("device, pooled KV", device, true));
    }
    for (name, dev, pooled) in runs {
        let mut loaded = load_gguf(path, dev)?;
        if pooled {
            loaded.model = loaded.model.with_kv_pool(1, ids.len() + TOKENS + 1)?;
        }
        let (out, logits) = greedy(&loaded.model, &ids, TOKENS)?;
        engines.push(Continuation {
            engine: name.into(),
            agreeing_prefix: out.iter().zip(&ref_ids).take_while(|(x, y)| x == y).count(),
            first_logits_max_abs_diff: logits
                .iter()
                .zip(&ref_logits)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max),
            text: loaded.codec.decode(&out)?,
            note: None,
        });
    }
    if !device.is_cpu() {
        // The served engine on the device (its pooled KV cache, continuous batching): eight
        // identical greedy requests at once.
        let loaded = load_gguf(path, device)?;
        let ref_text = &engines[0].text;
        let texts = engine_texts(loaded, &ids, TOKENS, 8)?;
        let distinct: std::collections::BTreeSet<&String> = texts.iter().collect();
        let first = texts.first().cloned().unwrap_or_default();
        let single = engines
            .iter()
            .find(|e| e.engine == "device")
            .map(|e| &e.text);
        engines.push(Continuation {
            engine: "device engine, 8 concurrent requests".into(),
            agreeing_prefix: common_chars(&first, ref_text),
            first_logits_max_abs_diff: f32::NAN,
            note: Some(format!(
                "{} distinct continuation(s) among the 8; the first {} the single-sequence device's",
                distinct.len(),
                if Some(&first) == single { "equals" } else { "differs from" }
            )),
            text: first,
        });
    }
    Ok(GreedyCheck {
        model: path.display().to_string(),
        prompt: PROMPT.to_owned(),
        tokens: TOKENS,
        engines,
    })
}

/// Greedy continuations of `n` identical requests submitted at once to the engine.
fn engine_texts(
    loaded: aigw_inference::llm::load::LoadedModel,
    ids: &[u32],
    tokens: usize,
    n: usize,
) -> anyhow::Result<Vec<String>> {
    use aigw_inference::llm::engine::{EngineConfig, GenEvent, GenerationRequest, LlmEngine};
    use aigw_inference::llm::sampling::SamplingParams;
    let engine = LlmEngine::start(loaded, EngineConfig::default())?;
    let receivers = (0..n)
        .map(|_| {
            engine.submit(GenerationRequest {
                prompt: ids.to_vec(),
                sampling: SamplingParams {
                    temperature: 0.0,
                    ignore_eos: true,
                    ..SamplingParams::default()
                },
                max_tokens: Some(tokens as u32),
                stop: Vec::new(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut texts = Vec::with_capacity(n);
    for mut rx in receivers {
        let mut text = String::new();
        while let Some(event) = rx.blocking_recv() {
            match event {
                GenEvent::Delta(d) => text.push_str(&d),
                GenEvent::Finished { .. } => break,
                GenEvent::Failed(e) => bail!("engine: {e}"),
            }
        }
        texts.push(text);
    }
    Ok(texts)
}

/// Characters two texts share from the start.
fn common_chars(a: &str, b: &str) -> usize {
    a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count()
}

/// Runs the scenario and writes `DATE-NAME.{json,md}`.
pub fn run(cfg: &BatchConfig) -> anyhow::Result<BatchResults> {
    // The same allocator policy as the served engine's.
    aigw_inference::llm::heap::keep_freed_memory();
    let device = parse_device(&cfg.device)?;
    let dtype = parse_dtype(&cfg.dtype)?;
    if device.is_cpu() && dtype != DType::F32 && cfg.model_gguf.is_none() {
        bail!("the CPU path runs f32 only");
    }
    let (model, shape_name, dtype_name) = match &cfg.model_gguf {
        Some(path) => {
            let loaded = load_gguf(path, &device)?;
            let name = path.file_name().map_or_else(
                || path.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            (loaded.model, name, "gguf".to_owned())
        }
        None => {
            let config = shape(&cfg.shape)?;
            eprintln!(
                "building {} ({:.2} B parameters, random weights, {}) on {}",
                cfg.shape,
                parameters(&config) as f64 / 1e9,
                cfg.dtype,
                cfg.device
            );
            (
                random_model(config, dtype, &device)?,
                cfg.shape.clone(),
                cfg.dtype.clone(),
            )
        }
    };
    let params = parameters(&model.config);
    let model = match cfg.kv_pool {
        Some(slots) => model.with_kv_pool(slots, cfg.prompt + cfg.steps.max(4) + 1)?,
        None => model,
    };
    // Warm-up: kernels loaded, allocator primed.
    measure(&model, 2, cfg.prompt, 4)?;
    let mut rows = Vec::new();
    for &b in &cfg.batches {
        let row = measure(&model, b, cfg.prompt, cfg.steps)?;
        eprintln!(
            "batch {:>4}: prefill {:>9.2} ms, step p50 {:>8.2} ms, {:>9.1} tok/s",
            b, row.prefill_ms, row.step_p50_ms, row.decode_tok_s
        );
        rows.push(row);
    }
    drop(model);
    let greedy_check = match (&cfg.check_gguf, device.is_cpu()) {
        (Some(path), false) => Some(greedy_check(path, &device, cfg.kv_pool)?),
        _ => None,
    };
    let results = BatchResults {
        measured_at: UtcTime::now().rfc3339(),
        machine: Machine::detect(),
        device: describe(&device),
        command: command_line(),
        commit: git_commit(),
        random_weights: cfg.model_gguf.is_none(),
        shape: shape_name,
        parameters: params,
        dtype: dtype_name,
        prompt_tokens: cfg.prompt,
        decode_steps: cfg.steps,
        kv_pool_slots: cfg.kv_pool,
        rows,
        greedy_check,
    };
    let stem = format!("{}-{}", UtcTime::now().date(), cfg.name);
    let paths = crate::results::write_pair(&cfg.out_dir, &stem, &results, &markdown(&results))?;
    for p in paths {
        eprintln!("wrote {}", p.display());
    }
    Ok(results)
}

fn describe(device: &Device) -> String {
    if device.is_cpu() {
        return "CPU".to_owned();
    }
    let name = std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=name,memory.total,driver_version",
            "--format=csv,noheader",
        ])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.lines().next().unwrap_or_default().trim().to_owned())
        .filter(|s| !s.is_empty());
    name.unwrap_or_else(|| "CUDA device".to_owned())
}

/// The Markdown report.
pub fn markdown(r: &BatchResults) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Batched forward pass ({}) — {}\n",
        r.device,
        &r.measured_at[..10]
    );
    let _ = writeln!(
        s,
        "Measured {} on {} ({} CPUs, {} memory, kernel {}) at commit {}.\n",
        r.measured_at,
        r.machine.cpu,
        r.machine.cores,
        r.machine.memory,
        r.machine.kernel,
        r.commit.as_deref().unwrap_or("unknown")
    );
    let _ = writeln!(s, "Command: `{}`\n", r.command);
    let model = if r.random_weights {
        format!(
            "**random weights** of the `{}` shape ({:.2} B parameters, {} weights and activations, tied output head)",
            r.shape,
            r.parameters as f64 / 1e9,
            r.dtype
        )
    } else {
        format!(
            "the real weights of `{}` ({:.2} B parameters, its own quantization, through the served engine's kernels)",
            r.shape,
            r.parameters as f64 / 1e9
        )
    };
    let _ = writeln!(
        s,
        "Model: {model}. The engine's own forward pass in-process: no HTTP, tokenizer or sampler; each step feeds back the greedy token. Every sequence is prefilled with {} random prompt tokens in one step, then all decode {} steps together. Attention: {}.\n",
        r.prompt_tokens,
        r.decode_steps,
        match r.kv_pool_slots {
            Some(n) => format!(
                "pooled KV cache ({n} slots), one batched attention per layer for the decode steps"
            ),
            None => "per sequence over its own KV cache".to_owned(),
        }
    );
    s.push_str("| Batch | Prefill | Prefill tok/s | Decode step p50 | Step max | Aggregate decode tok/s | Per-sequence tok/s |\n");
    s.push_str("|---:|---:|---:|---:|---:|---:|---:|\n");
    for row in &r.rows {
        let _ = writeln!(
            s,
            "| {} | {:.1} ms | {:.0} | {:.2} ms | {:.2} ms | {:.0} | {:.1} |",
            row.batch,
            row.prefill_ms,
            row.prefill_tok_s,
            row.step_p50_ms,
            row.step_max_ms,
            row.decode_tok_s,
            row.per_seq_tok_s
        );
    }
    if let Some(c) = &r.greedy_check {
        let _ = writeln!(
            s,
            "\n## Correctness on the device (real weights)\n\n`{}`, prompt `{}`, {} greedy tokens from each engine, against a reference with every weight dequantized to f32 (on the CPU). Quantized kernels differ from it by design (the CPU engine quantizes activations to 8 bits per block; the device multiplies in its own precision), so greedy paths part once two candidates are close; the first-step logits show the size of the difference.\n\n| Engine | Tokens equal to the reference's, from the start | First-step logits, max abs diff | Continuation |\n|---|---:|---:|---|",
            c.model, c.prompt, c.tokens
        );
        for e in &c.engines {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:?}{} |",
                e.engine,
                if e.first_logits_max_abs_diff.is_nan() {
                    format!("{} characters", e.agreeing_prefix)
                } else {
                    format!("{} of {}", e.agreeing_prefix, c.tokens)
                },
                if e.first_logits_max_abs_diff.is_nan() {
                    "—".to_owned()
                } else {
                    format!("{:.3}", e.first_logits_max_abs_diff)
                },
                e.text,
                e.note
                    .as_ref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default()
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_are_consistent_and_sized_as_published() {
        for name in SHAPES {
            let c = shape(name).unwrap();
            c.validate().unwrap();
            assert_eq!(c.num_heads * c.head_dim, c.hidden_size);
        }
        // Published sizes (tied embeddings): 135 M, 494 M, 1.24 B.
        let billions = |n: &str| parameters(&shape(n).unwrap()) as f64 / 1e9;
        assert!((billions("smollm2-135m") - 0.135).abs() < 0.01);
        assert!((billions("qwen2.5-0.5b") - 0.494).abs() < 0.01);
        assert!((billions("llama-3.2-1b") - 1.236).abs() < 0.01);
        assert!(shape("gpt-5").is_err());
    }

    #[test]
    fn a_tiny_cpu_run_reports_every_batch() {
        let mut c = shape("smollm2-135m").unwrap();
        c.num_layers = 1;
        c.vocab_size = 256;
        let model = random_model(c, DType::F32, &Device::Cpu).unwrap();
        for b in [1, 3] {
            let row = measure(&model, b, 4, 2).unwrap();
            assert_eq!(row.batch, b);
            assert!(row.decode_tok_s > 0.0 && row.prefill_ms > 0.0);
        }
        assert!(parse_device("tpu").is_err() && parse_dtype("int3").is_err());
    }
}
