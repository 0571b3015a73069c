//! Markdown rendering of the gateway-overhead result, for people and PRs.

use std::fmt::Write as _;

use crate::overhead::{HIGH_CONCURRENCY, OverheadReport, Run};
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
    let m = &r.machine;
    let mut out = String::new();
    let _ = writeln!(out, "# Gateway overhead — {}\n", r.date);
    let _ = writeln!(
        out,
        "Measured {} on {} ({} CPUs, {} memory, kernel {}) at commit {}.\n",
        r.timestamp,
        m.cpu,
        m.cores,
        m.memory,
        m.kernel,
        r.git_commit.as_deref().unwrap_or("unknown")
    );
    let _ = writeln!(out, "Command: `{}`\n", r.command);
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
    out.push_str("\n## Targets\n\n| Target | Goal | Measured | Status |\n|---|---|---|---|\n");
    for t in &r.targets {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            t.name,
            t.goal,
            t.measured.as_deref().unwrap_or("n/a"),
            t.status
        );
    }
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
}
