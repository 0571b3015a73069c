//! Markdown rendering of the results, for people and PRs: the
//! gateway-overhead result ([`render`]) and the local-engine result
//! ([`render_engine`]), which share the provenance paragraph and the table
//! of targets.

use std::fmt::Write as _;

use crate::engine::{EngineReport, Round};
use crate::overhead::{HIGH_CONCURRENCY, OverheadReport, Run, TargetCheck};
use crate::results::Machine;
use crate::stats::fmt_us;

fn or_na<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map_or_else(|| "n/a".to_owned(), f)
}

fn signed_us(v: i64) -> String {
    if v < 0 {
        format!("−{}", fmt_us(v.unsigned_abs() as f64))
    } else {
        format!("+{}", fmt_us(v as f64))
    }
}

/// The provenance paragraph: when, where, at which commit, and the command.
pub fn provenance(
    out: &mut String,
    timestamp: &str,
    m: &Machine,
    commit: Option<&str>,
    command: &str,
) {
    let _ = writeln!(
        out,
        "Measured {timestamp} on {} ({} CPUs, {} memory, kernel {}) at commit {}.\n",
        m.cpu,
        m.cores,
        m.memory,
        m.kernel,
        commit.unwrap_or("unknown")
    );
    let _ = writeln!(out, "Command: `{command}`\n");
}

/// The table of targets with their verdicts.
pub fn targets_table(targets: &[TargetCheck]) -> String {
    let mut out = String::from("| Target | Goal | Measured | Status |\n|---|---|---|---|\n");
    for t in targets {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            t.name,
            t.goal,
            t.measured.as_deref().unwrap_or("n/a"),
            t.status
        );
    }
    out
}

/// The table of all runs.
pub fn runs_table(runs: &[Run]) -> String {
    let mut out = String::from(
        "| Path | Connections | Requests | Errors | req/s | mean | p50 | p90 | p99 | p99.9 | max |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for run in runs {
        let r = &run.report;
        let l = &r.latency_us;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} |",
            run.path,
            r.concurrency,
            r.requests,
            r.errors,
            r.rps,
            fmt_us(l.mean),
            fmt_us(l.p50 as f64),
            fmt_us(l.p90 as f64),
            fmt_us(l.p99 as f64),
            fmt_us(l.p999 as f64),
            fmt_us(l.max as f64)
        );
    }
    out
}

/// The whole Markdown document.
pub fn render(r: &OverheadReport) -> String {
    let s = &r.summary;
    let mut out = String::new();
    let _ = writeln!(out, "# Gateway overhead — {}\n", r.date);
    provenance(
        &mut out,
        &r.timestamp,
        &r.machine,
        r.git_commit.as_deref(),
        &r.command,
    );
    let _ = writeln!(
        out,
        "Each run: closed loop, non-streaming chat completion `{}`, {} s measured after {} s warmup. \
         Load generator ({} runtime thread(s)), mock upstream ({} thread(s)) and gateway share the machine.\n",
        r.request_body, r.duration_s, r.warmup_s, r.client_threads, r.mock_threads
    );
    if r.gateway_binary.is_none() {
        out.push_str("**Upstream only**: the gateway was not measured (`--upstream-only`).\n\n");
    }
    out.push_str(
        "## Summary\n\n| | direct (mock) | through gateway | difference |\n|---|---:|---:|---:|\n",
    );
    let _ = writeln!(
        out,
        "| req/s, {HIGH_CONCURRENCY} connections | {:.0} | {} | {} |",
        s.direct_rps_c16,
        or_na(s.gateway_rps_c16, |v| format!("{v:.0}")),
        or_na(s.gateway_direct_ratio, |v| format!("× {v:.2}"))
    );
    for (name, direct, gateway, added) in [
        ("p50", s.direct_p50_us, s.gateway_p50_us, s.added_p50_us),
        ("p99", s.direct_p99_us, s.gateway_p99_us, s.added_p99_us),
    ] {
        let _ = writeln!(
            out,
            "| {name} latency, 1 connection | {} | {} | {} |",
            fmt_us(direct as f64),
            or_na(gateway, |v| fmt_us(v as f64)),
            or_na(added, signed_us)
        );
    }
    if s.errors > 0 {
        let _ = writeln!(
            out,
            "\n**{} requests failed**: the numbers are not trustworthy.",
            s.errors
        );
    }
    out.push_str("\n## Targets\n\n");
    out.push_str(&targets_table(&r.targets));
    out.push_str("\n## Runs\n\n");
    out.push_str(&runs_table(&r.runs));
    for run in &r.runs {
        if let Some(err) = &run.report.first_error {
            let _ = writeln!(
                out,
                "\nFirst error ({}, {} connection(s)): `{}`",
                run.path,
                run.report.concurrency,
                err.replace('`', "'")
            );
        }
    }
    out
}

fn ms(v: Option<f64>) -> String {
    or_na(v, |v| fmt_us(v * 1e3))
}

fn num(v: Option<f64>, decimals: usize) -> String {
    or_na(v, |v| format!("{v:.decimals$}"))
}

/// The table of the engine rounds, one row per concurrency.
pub fn engine_rounds_table(rounds: &[Round]) -> String {
    let mut out = String::from(
        "| Streams | Errors | TTFT p50 | TTFT p90 | TTFT max | Decode tok/s per stream | \
         Aggregate tok/s | Aggregate, every pass | Mean batch | Peak active | Wall |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rounds {
        let s = &r.summary;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {:.1} | {} | {} | {} | {:.2}s |",
            r.concurrency,
            s.errors,
            ms(s.ttft_ms_p50),
            ms(s.ttft_ms_p90),
            ms(s.ttft_ms_max),
            num(s.decode_tok_s_mean, 1),
            s.aggregate_tok_s,
            r.repeats_aggregate_tok_s
                .iter()
                .map(|v| format!("{v:.1}"))
                .collect::<Vec<_>>()
                .join(" / "),
            num(r.mean_batch, 1),
            or_na(r.max_active, |v| v.to_string()),
            s.wall_s
        );
    }
    out
}

/// The whole Markdown document of the local-engine scenario.
pub fn render_engine(r: &EngineReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Local engine (CPU) — {}\n", r.date);
    provenance(
        &mut out,
        &r.timestamp,
        &r.machine,
        r.git_commit.as_deref(),
        &r.command,
    );
    let _ = writeln!(
        out,
        "Model `{}` served in-process by `{}` (embedded default config) from `{}` ({:.1} MB), \
         {} engine thread(s) ({}). Each stream is one streamed chat completion on its own \
         keep-alive connection, user prompt `{}`, greedy (`temperature: 0`), exactly {} tokens \
         (`ignore_eos: true`, checked against the final usage chunk); the N streams of a round are \
         sent at once. The load generator (one runtime thread) shares the machine with the gateway.\n",
        r.model,
        r.gateway_binary,
        r.model_file,
        r.model_file_bytes as f64 / 1e6,
        r.engine_threads,
        r.engine_threads_source,
        r.prompt_template,
        r.max_tokens
    );
    let _ = writeln!(out, "{}\n", r.gpu);

    out.push_str("## Concurrent streams\n\n");
    out.push_str(&engine_rounds_table(&r.rounds));
    out.push_str(
        "\nTTFT: from sending the request to the first content token. Decode tok/s per stream: \
         (tokens − 1) / (last token − first token), averaged over the streams. Aggregate: all \
         tokens / wall time of the round (first send to last end of stream). Every concurrency is \
         measured once per pass over the list; the row is the pass of median aggregate, and \
         'every pass' lists each pass's aggregate in order. Mean batch: sequences \
         per engine step over the round, from the `/metrics` counters (prefill steps included). \
         Peak active: most sequences decoding together, from `GET /load` polled every 200 ms.\n",
    );
    for round in &r.rounds {
        if let Some(err) = &round.summary.first_error {
            let _ = writeln!(
                out,
                "\n**{} of {} streams failed** at {} streams; first: `{}`",
                round.summary.errors,
                round.summary.streams,
                round.concurrency,
                err.replace('`', "'")
            );
        }
    }

    out.push_str("\n## Single stream: llama.cpp and the roofline\n\n");
    let one = r.round(1);
    let ours_decode = one.and_then(|o| o.summary.decode_tok_s_mean);
    let ours_ttft = one.and_then(|o| o.summary.ttft_ms_p50);
    let prompt_tokens = one
        .and_then(|o| o.streams.first())
        .and_then(|s| s.prompt_tokens);
    let fraction = |v: Option<f64>| {
        or_na(v.filter(|_| r.roofline.tok_s > 0.0), |v| {
            format!("{:.0} %", 100.0 * v / r.roofline.tok_s)
        })
    };
    out.push_str(
        "| Engine | Prompt tokens | TTFT | Decode tok/s | Share of roofline |\n|---|---:|---:|---:|---:|\n",
    );
    let _ = writeln!(
        out,
        "| aigw, 1 stream (HTTP + SSE) | {} | {} | {} | {} |",
        or_na(prompt_tokens, |v| v.to_string()),
        ms(ours_ttft),
        num(ours_decode, 1),
        fraction(ours_decode)
    );
    let b = &r.llamacpp;
    if b.status == "measured" {
        let res = b.result.as_ref();
        let field = |k: &str| res.and_then(|v| v.get(k)).cloned().unwrap_or_default();
        let version = field("llama_cpp_python");
        let statistic = field("statistic");
        let _ = writeln!(
            out,
            "| llama.cpp (llama-cpp-python {}, {} threads, in-process; {}) | {} | {} | {} | {} |",
            version.as_str().unwrap_or("?"),
            field("threads"),
            statistic.as_str().unwrap_or("?"),
            or_na(field("prompt_tokens").as_u64(), |v| v.to_string()),
            ms(b.ttft_ms),
            num(b.decode_tok_s, 1),
            fraction(b.decode_tok_s)
        );
    } else {
        let _ = writeln!(
            out,
            "\nllama.cpp baseline: **{}** ({}).",
            b.status,
            b.note
                .as_deref()
                .unwrap_or("no reason recorded")
                .replace('`', "'")
        );
    }
    let bw = &r.bandwidth;
    let _ = writeln!(
        out,
        "\nRoofline: read bandwidth {:.1} GB/s (summing a {} MiB buffer with {} thread(s), best of {}: {}) \
         / {:.1} MB per token = **{:.0} tok/s** for one stream; single-stream decode through aigw \
         reaches {}. Approximation: {}.",
        bw.best_gb_s,
        bw.bytes >> 20,
        bw.threads,
        bw.passes_gb_s.len(),
        bw.passes_gb_s
            .iter()
            .map(|v| format!("{v:.1}"))
            .collect::<Vec<_>>()
            .join(", "),
        r.roofline.bytes_per_token as f64 / 1e6,
        r.roofline.tok_s,
        fraction(ours_decode),
        r.roofline_note
    );

    out.push_str("\n## Targets\n\n");
    out.push_str(&targets_table(&r.targets));
    if r.rounds.iter().any(|round| round.summary.errors > 0) {
        out.push_str("\nA round with a failed stream fails the targets that use it.\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overhead::{check_targets, summarize};
    use crate::results::Machine;
    use crate::stats::{ErrorCounts, LatencySummary, LoadReport};

    fn report(concurrency: usize, rps: f64, p50: u64, p99: u64) -> LoadReport {
        LoadReport {
            mode: "closed",
            url: "http://x/".to_owned(),
            concurrency,
            duration_s: 5.0,
            warmup_s: 1.0,
            requests: (rps * 5.0) as u64,
            errors: 0,
            error_kinds: ErrorCounts::default(),
            rps,
            target_rps: None,
            missed: None,
            target_achieved: None,
            send_delay_us: None,
            latency_us: LatencySummary {
                count: 1,
                mean: p50 as f64,
                min: 1,
                p50,
                p90: p99,
                p99,
                p999: p99,
                max: p99,
            },
            first_error: None,
        }
    }

    fn full_runs() -> Vec<Run> {
        vec![
            Run {
                path: "direct",
                report: report(16, 60_000.0, 200, 400),
            },
            Run {
                path: "gateway",
                report: report(16, 25_000.0, 600, 1_000),
            },
            Run {
                path: "direct",
                report: report(1, 8_000.0, 100, 150),
            },
            Run {
                path: "gateway",
                report: report(1, 4_000.0, 250, 1_350),
            },
        ]
    }

    #[test]
    fn summary_and_targets() {
        let s = summarize(&full_runs());
        assert_eq!(s.gateway_rps_c16, Some(25_000.0));
        assert!((s.gateway_direct_ratio.unwrap() - 25.0 / 60.0).abs() < 1e-9);
        assert_eq!((s.added_p50_us, s.added_p99_us), (Some(150), Some(1_200)));
        let t = check_targets(&s);
        assert_eq!(t[0].status, "met");
        assert_eq!(t[1].status, "not met");
    }

    #[test]
    fn upstream_only_is_not_measured() {
        let runs: Vec<Run> = full_runs()
            .into_iter()
            .filter(|r| r.path == "direct")
            .collect();
        let s = summarize(&runs);
        assert_eq!(s.gateway_rps_c16, None);
        assert!(check_targets(&s).iter().all(|t| t.status == "not measured"));
    }

    #[test]
    fn renders_markdown() {
        let runs = full_runs();
        let summary = summarize(&runs);
        let r = OverheadReport {
            scenario: "gateway-overhead",
            date: "2026-01-02".to_owned(),
            timestamp: "2026-01-02T03:04:05Z".to_owned(),
            machine: Machine {
                cpu: "Test CPU".to_owned(),
                cores: 2,
                memory: "8.0 GiB".to_owned(),
                kernel: "6.1".to_owned(),
            },
            command: "aigw-bench overhead".to_owned(),
            git_commit: Some("abc1234".to_owned()),
            gateway_binary: Some("target/release/aigw".to_owned()),
            request_body: "{}",
            duration_s: 5.0,
            warmup_s: 1.0,
            client_threads: 1,
            mock_threads: 1,
            targets: check_targets(&summary),
            summary,
            runs,
        };
        let md = render(&r);
        assert!(md.starts_with("# Gateway overhead — 2026-01-02\n"));
        assert!(md.contains("at commit abc1234"));
        assert!(md.contains("| req/s, 16 connections | 60000 | 25000 | × 0.42 |"));
        assert!(md.contains("| p99 latency, 1 connection | 150µs | 1.35ms | +1.20ms |"));
        assert!(md.contains("| not met |"));
        assert_eq!(md.matches("\n| gateway |").count(), 2);
        assert_eq!(r.file_stem(), "2026-01-02-gateway-overhead");
    }

    fn engine_report(baseline: crate::engine::Baseline) -> EngineReport {
        use crate::engine::tests::round;
        let mut rounds = vec![round(1, 100.0, 95.0, 0), round(16, 30.0, 400.0, 0)];
        rounds[0].streams.push(crate::streams::StreamRecord {
            prompt_tokens: Some(31),
            ..Default::default()
        });
        rounds[0].repeats_aggregate_tok_s = vec![97.5, 95.0, 90.25];
        rounds[1].summary.errors = 1;
        rounds[1].summary.first_error = Some("stream 3: `boom`".to_owned());
        let bandwidth = crate::roofline::Bandwidth {
            bytes: 512 << 20,
            threads: 2,
            passes_gb_s: vec![19.0, 20.0, 19.5],
            best_gb_s: 20.0,
        };
        EngineReport {
            scenario: "cpu-engine",
            date: "2026-01-02".to_owned(),
            timestamp: "2026-01-02T03:04:05Z".to_owned(),
            machine: Machine {
                cpu: "Test CPU".to_owned(),
                cores: 2,
                memory: "8.0 GiB".to_owned(),
                kernel: "6.1".to_owned(),
            },
            command: "aigw-bench engine".to_owned(),
            git_commit: Some("abc1234".to_owned()),
            gateway_binary: "target/release/aigw".to_owned(),
            model: "smollm2-135m-instruct".to_owned(),
            model_file: "/m/x.gguf".to_owned(),
            model_file_bytes: 100_000_000,
            engine_threads: 2,
            engine_threads_source: "default: one per core".to_owned(),
            max_tokens: 128,
            prompt_template: crate::streams::PROMPT_TEMPLATE.to_owned(),
            targets: crate::engine::check_targets(&rounds, baseline.decode_tok_s),
            roofline: crate::roofline::Roofline::new(20.0, 100_000_000, Some(100.0)),
            rounds,
            llamacpp: baseline,
            bandwidth,
            roofline_note: crate::engine::ROOFLINE_NOTE,
            gpu: crate::engine::GPU_NOTE,
        }
    }

    #[test]
    fn renders_engine_markdown() {
        let baseline = crate::engine::Baseline::from_output(
            r#"{"llama_cpp_python":"0.3.36","threads":2,"prompt_tokens":31,"statistic":"median of 3 runs","ttft_ms":25.0,"decode_tok_s":110.0}"#,
        );
        let r = engine_report(baseline);
        let md = render_engine(&r);
        assert!(
            md.starts_with("# Local engine (CPU) — 2026-01-02\n"),
            "{md}"
        );
        assert!(md.contains("at commit abc1234"));
        assert!(md.contains(crate::engine::GPU_NOTE));
        assert!(
            md.contains(
                "| 1 | 0 | 50.00ms | 60.00ms | 70.00ms | 100.0 | 95.0 | 97.5 / 95.0 / 90.2 | 0.9 | 1 | 1.35s |"
            ),
            "{md}"
        );
        assert!(md.contains("**1 of 16 streams failed** at 16 streams; first: `stream 3: 'boom'`"));
        assert!(
            md.contains("| aigw, 1 stream (HTTP + SSE) | 31 | 50.00ms | 100.0 | 50 % |"),
            "{md}"
        );
        assert!(md.contains("| llama.cpp (llama-cpp-python 0.3.36, 2 threads, in-process; median of 3 runs) | 31 | 25.00ms | 110.0 | 55 % |"), "{md}");
        assert!(md.contains("**200 tok/s**"), "{md}");
        assert!(md.contains("| single-stream decode vs llama.cpp |"));
        assert!(md.contains("| not met |"));
        assert_eq!(r.file_stem(), "2026-01-02-cpu-engine");

        let skipped = render_engine(&engine_report(crate::engine::Baseline::from_output("")));
        assert!(
            skipped.contains("llama.cpp baseline: **failed**"),
            "{skipped}"
        );
        assert!(skipped.contains("| not measured |"));
    }
}
