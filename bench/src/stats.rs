//! Latency summaries from HDR histograms, and the report of one load run.
//!
//! Latencies are recorded in microseconds into an [`hdrhistogram`] with
//! three significant digits (0.1 % relative error) and an upper bound of one
//! hour; the summary reads the usual percentiles from it.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency the histograms can hold, in microseconds (one hour);
/// larger values are clamped to it.
pub const MAX_LATENCY_US: u64 = 3_600_000_000;

/// A fresh latency histogram (microseconds, three significant digits).
pub fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)?)
}

/// Percentiles of a latency distribution, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Number of recorded latencies.
    pub count: u64,
    /// Arithmetic mean.
    pub mean: f64,
    /// Smallest value.
    pub min: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest value.
    pub max: u64,
}

impl LatencySummary {
    /// Reads the summary from a histogram; all zeros when it is empty.
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            mean: h.mean(),
            min: h.min(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// Formats microseconds for people: `850µs`, `1.25ms`, `2.50s`.
pub fn fmt_us(us: f64) -> String {
    if us < 1_000.0 {
        format!("{us:.0}µs")
    } else if us < 1_000_000.0 {
        format!("{:.2}ms", us / 1_000.0)
    } else {
        format!("{:.2}s", us / 1_000_000.0)
    }
}

/// Failed requests by cause.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ErrorCounts {
    /// Answers with a status outside 2xx.
    pub status: u64,
    /// Send or read failures (the connection is then reopened).
    pub io: u64,
    /// Answers that did not complete within the per-request timeout.
    pub timeout: u64,
    /// Failed attempts to (re)open a connection.
    pub connect: u64,
}

impl ErrorCounts {
    /// All errors together.
    pub fn total(&self) -> u64 {
        self.status + self.io + self.timeout + self.connect
    }

    /// Adds another worker's counts.
    pub fn add(&mut self, other: &Self) {
        self.status += other.status;
        self.io += other.io;
        self.timeout += other.timeout;
        self.connect += other.connect;
    }
}

/// The outcome of one load run (warmup excluded).
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// `closed` (send on completion) or `open` (fixed rate).
    pub mode: &'static str,
    /// The URL under load.
    pub url: String,
    /// Number of connections.
    pub concurrency: usize,
    /// Measured window, seconds.
    pub duration_s: f64,
    /// Warmup before the window, seconds.
    pub warmup_s: f64,
    /// Requests completed (successfully or not) in the window.
    pub requests: u64,
    /// Failed requests in the window.
    pub errors: u64,
    /// Failed requests by cause.
    pub error_kinds: ErrorCounts,
    /// Successful (2xx) requests per second of the window.
    pub rps: f64,
    /// Target rate of an open-loop run.
    pub target_rps: Option<f64>,
    /// Open loop: slots of the window that were never sent.
    pub missed: Option<u64>,
    /// Open loop: whether the target rate was kept (see [`crate::schedule`]).
    pub target_achieved: Option<bool>,
    /// Latency of successful requests, microseconds. Open loop measures
    /// from the scheduled send time.
    pub latency_us: LatencySummary,
    /// Open loop: how late the sends were against their schedule, µs (the
    /// load generator's own lag plus any backlog on the connection).
    pub send_delay_us: Option<LatencySummary>,
    /// The first failure seen (status and body, or the I/O error).
    pub first_error: Option<String>,
}

impl LoadReport {
    /// A human-readable multi-line summary.
    pub fn render_text(&self) -> String {
        let l = &self.latency_us;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} loop, {} connection(s), {:.1}s measured after {:.1}s warmup: {}",
            self.mode, self.concurrency, self.duration_s, self.warmup_s, self.url
        );
        let e = &self.error_kinds;
        let _ = writeln!(
            out,
            "  requests {}  errors {} (status {}, io {}, timeout {}, connect {})  {:.0} req/s",
            self.requests, self.errors, e.status, e.io, e.timeout, e.connect, self.rps
        );
        if let (Some(target), Some(missed), Some(ok)) =
            (self.target_rps, self.missed, self.target_achieved)
        {
            let verdict = if ok { "achieved" } else { "NOT achieved" };
            let _ = writeln!(
                out,
                "  target {target:.0} req/s {verdict} ({missed} scheduled requests never sent)"
            );
        }
        let _ = writeln!(
            out,
            "  latency mean {}  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            fmt_us(l.mean),
            fmt_us(l.p50 as f64),
            fmt_us(l.p90 as f64),
            fmt_us(l.p99 as f64),
            fmt_us(l.p999 as f64),
            fmt_us(l.max as f64)
        );
        if let Some(d) = &self.send_delay_us {
            let _ = writeln!(
                out,
                "  send delay vs schedule p50 {}  p99 {}  max {}",
                fmt_us(d.p50 as f64),
                fmt_us(d.p99 as f64),
                fmt_us(d.max as f64)
            );
        }
        if let Some(err) = &self.first_error {
            let _ = writeln!(out, "  first error: {err}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_uniform_distribution() {
        let mut h = new_histogram().unwrap();
        for v in 1..=1000u64 {
            h.record(v).unwrap();
        }
        let s = LatencySummary::from_histogram(&h);
        assert_eq!(s.count, 1000);
        assert_eq!(s.min, 1);
        assert_eq!(s.p50, 500);
        assert_eq!(s.p90, 900);
        assert_eq!(s.p99, 990);
        assert_eq!(s.p999, 999);
        assert_eq!(s.max, 1000);
        assert!((s.mean - 500.5).abs() < 0.5);
    }

    #[test]
    fn percentiles_keep_three_digits_and_tail() {
        let mut h = new_histogram().unwrap();
        h.record_n(100, 9_990).unwrap();
        h.record_n(250_000, 10).unwrap();
        h.saturating_record(u64::MAX);
        let s = LatencySummary::from_histogram(&h);
        assert_eq!(s.p50, 100);
        assert_eq!(s.p99, 100);
        // 250 ms within 0.1 %.
        assert!(s.p999.abs_diff(250_000) <= 250);
        // Clamped to the histogram's bound, within its precision.
        assert!(s.max >= MAX_LATENCY_US && s.max <= MAX_LATENCY_US + MAX_LATENCY_US / 1000);
    }

    #[test]
    fn empty_histogram_reports_zeros() {
        let h = new_histogram().unwrap();
        assert_eq!(
            LatencySummary::from_histogram(&h),
            LatencySummary::default()
        );
    }

    #[test]
    fn formats_durations() {
        assert_eq!(fmt_us(850.0), "850µs");
        assert_eq!(fmt_us(1250.0), "1.25ms");
        assert_eq!(fmt_us(2_500_000.0), "2.50s");
    }

    #[test]
    fn error_counts_add_up() {
        let mut a = ErrorCounts {
            status: 1,
            io: 2,
            timeout: 0,
            connect: 1,
        };
        a.add(&ErrorCounts {
            status: 3,
            io: 0,
            timeout: 1,
            connect: 0,
        });
        assert_eq!(a.total(), 8);
        assert_eq!(a.status, 4);
    }
}
