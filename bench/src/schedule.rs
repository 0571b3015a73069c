//! Open-loop (fixed-rate) scheduling arithmetic, free of I/O and clocks.
//!
//! At a target rate `R` the send slots are `k / R` seconds after the start,
//! `k = 0, 1, 2, …`. With `N` connections, slot `k` belongs to connection
//! `k mod N`, so each connection runs at `R / N` and the connections are
//! interleaved, which spreads the load evenly instead of in bursts of `N`.

use std::time::Duration;

use anyhow::bail;

/// Requests may fall this far short of the schedule (as a fraction of the
/// slots in the measured window) before the rate counts as not achieved.
pub const RATE_TOLERANCE: f64 = 0.01;

/// The send slots of an open-loop run: `rate` per second over `workers`
/// connections.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pacing {
    rate: f64,
    workers: u64,
}

impl Pacing {
    /// Slots at `rate` req/s in total, spread over `workers` connections.
    pub fn new(rate: f64, workers: usize) -> anyhow::Result<Self> {
        check_rate(rate)?;
        if workers == 0 {
            bail!("open loop needs at least one connection");
        }
        Ok(Self {
            rate,
            workers: workers as u64,
        })
    }

    /// When, after the start, global slot `k` is due.
    pub fn offset(&self, k: u64) -> Duration {
        Duration::from_secs_f64(k as f64 / self.rate)
    }

    /// The connection that sends slot `k`.
    pub fn owner(&self, k: u64) -> usize {
        // The remainder is below `workers`, which came from a usize.
        usize::try_from(k % self.workers).unwrap_or(usize::MAX)
    }

    /// Time between two sends of one connection.
    pub fn connection_interval(&self) -> Duration {
        Duration::from_secs_f64(self.workers as f64 / self.rate)
    }

    /// How many slots fall strictly before `t`.
    pub fn slots_before(&self, t: Duration) -> u64 {
        // offset(k) < t  <=>  k < t·R, then nudged to agree exactly with
        // `offset`, whose float-to-duration rounding may differ.
        let mut count = (t.as_secs_f64() * self.rate).ceil() as u64;
        while count > 0 && self.offset(count - 1) >= t {
            count -= 1;
        }
        while self.offset(count) < t {
            count += 1;
        }
        count
    }

    /// How many slots fall in `[from, to)`.
    pub fn slots_between(&self, from: Duration, to: Duration) -> u64 {
        self.slots_before(to)
            .saturating_sub(self.slots_before(from))
    }
}

/// Rejects rates that cannot drive a schedule.
pub fn check_rate(rate: f64) -> anyhow::Result<()> {
    if !(rate.is_finite() && rate > 0.0) {
        bail!("--rate must be a positive number of requests per second, got {rate}");
    }
    Ok(())
}

/// Whether an open-loop run kept up: no more than [`RATE_TOLERANCE`] of the
/// `scheduled` slots of the measured window went unsent.
pub fn rate_achieved(scheduled: u64, missed: u64) -> bool {
    missed as f64 <= scheduled as f64 * RATE_TOLERANCE
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn slots_interleave_over_connections() {
        let p = Pacing::new(1000.0, 4).unwrap();
        assert_eq!(p.offset(0), Duration::ZERO);
        assert_eq!(p.offset(1), ms(1));
        assert_eq!(p.offset(250), ms(250));
        assert_eq!(p.offset(3_600_000), Duration::from_secs(3600));
        let owners: Vec<usize> = (0..9).map(|k| p.owner(k)).collect();
        assert_eq!(owners, [0, 1, 2, 3, 0, 1, 2, 3, 0]);
        // Each connection runs at a quarter of the rate.
        assert_eq!(p.connection_interval(), ms(4));
    }

    #[test]
    fn counts_slots_in_windows() {
        let p = Pacing::new(1000.0, 4).unwrap();
        // Slots at 0..=9 ms are before 10 ms; the one at 10 ms is not.
        assert_eq!(p.slots_before(ms(10)), 10);
        assert_eq!(p.slots_before(Duration::ZERO), 0);
        assert_eq!(p.slots_before(Duration::from_micros(9_500)), 10);
        assert_eq!(p.slots_between(ms(2), ms(10)), 8);
        assert_eq!(p.slots_between(ms(10), ms(2)), 0);
        for (rate, secs, expected) in [
            (100.0, 2.0, 200u64),
            (2500.0, 0.5, 1250),
            (0.5, 10.0, 5),
            (3.0, 1.0, 3),
        ] {
            let p = Pacing::new(rate, 3).unwrap();
            let n = p.slots_between(Duration::from_secs(1), Duration::from_secs_f64(1.0 + secs));
            assert!(n.abs_diff(expected) <= 1, "{rate}/s over {secs}s: {n}");
        }
    }

    #[test]
    fn slot_offsets_agree_with_counts() {
        let p = Pacing::new(333.0, 7).unwrap();
        for k in [0u64, 1, 2, 332, 333, 334, 10_000] {
            let t = p.offset(k);
            assert!(
                p.slots_before(t) <= k && k < p.slots_before(t + Duration::from_micros(1)),
                "slot {k}"
            );
        }
    }

    #[test]
    fn rejects_bad_input() {
        assert!(Pacing::new(0.0, 1).is_err());
        assert!(Pacing::new(-5.0, 1).is_err());
        assert!(Pacing::new(f64::NAN, 1).is_err());
        assert!(Pacing::new(f64::INFINITY, 1).is_err());
        assert!(Pacing::new(10.0, 0).is_err());
    }

    #[test]
    fn tolerance() {
        assert!(rate_achieved(1000, 0));
        assert!(rate_achieved(1000, 10));
        assert!(!rate_achieved(1000, 11));
        assert!(rate_achieved(0, 0));
    }
}
