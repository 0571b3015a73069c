//! A per-deployment circuit breaker.
//!
//! - **Closed**: calls flow. It opens after `consecutive_failures` failures in a row, or
//!   when failures reach `error_rate` of at least `min_requests` outcomes in the sliding
//!   `window`, or at once when a failure carries a `Retry-After` (the upstream said when to
//!   come back).
//! - **Open**: calls are refused until the cooldown ends: the failure's `Retry-After` when it
//!   had one (capped at `max_cooldown`), else `cooldown`.
//! - **Half-open**: after the cooldown exactly one call goes through as a probe; its success
//!   closes the circuit, its failure opens it again. A probe abandoned without an outcome (the
//!   client went away) lets the next call probe.
//!
//! Client errors (4xx other than 408/429) are not failures: the upstream answered. Time is
//! passed in, so the state machine is tested without sleeping.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::config::BreakerConfig;

/// Slots of the sliding error-rate window.
const SLOTS: usize = 10;

/// The externally visible state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// Calls flow.
    Closed,
    /// One probe may go through (or is under way).
    HalfOpen,
    /// Calls are refused.
    Open,
}

impl CircuitState {
    /// The value of the `aigw_deployment_circuit_state` gauge: 0 closed, 1 half-open, 2 open.
    pub fn gauge(self) -> i64 {
        match self {
            Self::Closed => 0,
            Self::HalfOpen => 1,
            Self::Open => 2,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { probing: bool },
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    epoch: u64,
    ok: u32,
    failed: u32,
}

#[derive(Debug)]
struct Inner {
    state: State,
    consecutive: u32,
    slots: [Slot; SLOTS],
}

/// One deployment's breaker; cheap to share.
#[derive(Debug, Clone)]
pub struct Breaker {
    config: Arc<BreakerConfig>,
    origin: Instant,
    inner: Arc<Mutex<Inner>>,
}

/// Leave to make one call; report how it went. Dropped unreported, it counts as nothing
/// (and a half-open probe is handed to the next caller).
#[derive(Debug)]
pub struct Permit {
    breaker: Breaker,
    probe: bool,
    done: bool,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: Arc<BreakerConfig>) -> Self {
        Self {
            config,
            origin: Instant::now(),
            inner: Arc::new(Mutex::new(Inner {
                state: State::Closed,
                consecutive: 0,
                slots: [Slot::default(); SLOTS],
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The state at `now` (an open circuit whose cooldown ended reads half-open).
    pub fn state(&self, now: Instant) -> CircuitState {
        match self.lock().state {
            State::Closed => CircuitState::Closed,
            State::Open { until } if now >= until => CircuitState::HalfOpen,
            State::Open { .. } => CircuitState::Open,
            State::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    /// How long until an open circuit lets a probe through; `None` unless open.
    pub fn retry_in(&self, now: Instant) -> Option<Duration> {
        match self.lock().state {
            State::Open { until } if until > now => Some(until - now),
            _ => None,
        }
    }

    /// Leave to call, or `None` while the circuit is open or its probe is under way.
    pub fn try_acquire(&self, now: Instant) -> Option<Permit> {
        let mut inner = self.lock();
        let probe = match inner.state {
            State::Closed => false,
            State::Open { until } if now >= until => true,
            State::Open { .. } | State::HalfOpen { probing: true } => return None,
            State::HalfOpen { probing: false } => true,
        };
        if probe {
            inner.state = State::HalfOpen { probing: true };
        }
        Some(Permit {
            breaker: self.clone(),
            probe,
            done: false,
        })
    }

    fn epoch(&self, now: Instant) -> u64 {
        let slot = (self.config.window.as_nanos() / SLOTS as u128).max(1);
        (now.saturating_duration_since(self.origin).as_nanos() / slot) as u64
    }

    fn record(inner: &mut Inner, epoch: u64, ok: bool) {
        let slot = &mut inner.slots[(epoch % SLOTS as u64) as usize];
        if slot.epoch != epoch {
            *slot = Slot {
                epoch,
                ok: 0,
                failed: 0,
            };
        }
        if ok {
            slot.ok += 1;
        } else {
            slot.failed += 1;
        }
    }

    /// Outcomes in the window ending at `epoch`: (ok, failed).
    fn window(inner: &Inner, epoch: u64) -> (u32, u32) {
        inner
            .slots
            .iter()
            .filter(|s| s.epoch + (SLOTS as u64) > epoch && s.epoch <= epoch)
            .fold((0, 0), |(ok, failed), s| (ok + s.ok, failed + s.failed))
    }

    fn succeeded(&self, probe: bool, now: Instant) {
        let epoch = self.epoch(now);
        let mut inner = self.lock();
        inner.consecutive = 0;
        if probe {
            inner.state = State::Closed;
            inner.slots = [Slot::default(); SLOTS];
        }
        Self::record(&mut inner, epoch, true);
    }

    fn failed(&self, probe: bool, retry_after: Option<Duration>, now: Instant) {
        let cfg = &self.config;
        let epoch = self.epoch(now);
        let mut inner = self.lock();
        inner.consecutive += 1;
        Self::record(&mut inner, epoch, false);
        let open = probe
            || retry_after.is_some()
            || (cfg.consecutive_failures > 0 && inner.consecutive >= cfg.consecutive_failures)
            || (cfg.error_rate > 0.0 && {
                let (ok, failed) = Self::window(&inner, epoch);
                let total = ok + failed;
                total >= cfg.min_requests && f64::from(failed) >= cfg.error_rate * f64::from(total)
            });
        // A failure reported by a call that started before the circuit opened does not
        // extend the cooldown.
        if open && !matches!(inner.state, State::Open { .. }) {
            let cooldown = retry_after.map_or(cfg.cooldown, |d| d.min(cfg.max_cooldown));
            inner.state = State::Open {
                until: now + cooldown,
            };
        }
    }

    /// A failure noticed outside a permit: a stream that broke after it was committed.
    pub fn record_failure(&self, now: Instant) {
        self.failed(false, None, now);
    }

    fn abandoned(&self, probe: bool) {
        if probe {
            let mut inner = self.lock();
            if matches!(inner.state, State::HalfOpen { probing: true }) {
                inner.state = State::HalfOpen { probing: false };
            }
        }
    }
}

impl Permit {
    /// Whether this call is the half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// The call succeeded (or failed by the client's fault).
    pub fn success(mut self, now: Instant) {
        self.done = true;
        self.breaker.succeeded(self.probe, now);
    }

    /// The call failed; `retry_after` is the upstream's, if it sent one.
    pub fn failure(mut self, retry_after: Option<Duration>, now: Instant) {
        self.done = true;
        self.breaker.failed(self.probe, retry_after, now);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.done {
            self.breaker.abandoned(self.probe);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(consecutive: u32, rate: f64, min: u32) -> Breaker {
        Breaker::new(Arc::new(BreakerConfig {
            consecutive_failures: consecutive,
            error_rate: rate,
            min_requests: min,
            window: Duration::from_secs(10),
            cooldown: Duration::from_secs(5),
            max_cooldown: Duration::from_secs(60),
        }))
    }

    fn fail(b: &Breaker, now: Instant) {
        b.try_acquire(now).unwrap().failure(None, now);
    }

    fn succeed(b: &Breaker, now: Instant) {
        b.try_acquire(now).unwrap().success(now);
    }

    #[test]
    fn opens_after_consecutive_failures_and_closes_after_a_good_probe() {
        let b = breaker(3, 0.0, 1);
        let t = Instant::now();
        fail(&b, t);
        fail(&b, t);
        succeed(&b, t); // resets the run
        fail(&b, t);
        fail(&b, t);
        assert_eq!(b.state(t), CircuitState::Closed);
        fail(&b, t);
        assert_eq!(b.state(t), CircuitState::Open);
        assert!(b.try_acquire(t + Duration::from_secs(4)).is_none());
        assert_eq!(
            b.retry_in(t + Duration::from_secs(4)),
            Some(Duration::from_secs(1))
        );

        let later = t + Duration::from_secs(5);
        assert_eq!(b.state(later), CircuitState::HalfOpen);
        let probe = b.try_acquire(later).unwrap();
        assert!(probe.is_probe());
        assert!(b.try_acquire(later).is_none(), "a single probe at a time");
        probe.success(later);
        assert_eq!(b.state(later), CircuitState::Closed);
        assert!(!b.try_acquire(later).unwrap().is_probe());
    }

    #[test]
    fn a_failed_probe_reopens_for_another_cooldown() {
        let b = breaker(1, 0.0, 1);
        let t = Instant::now();
        fail(&b, t);
        let t1 = t + Duration::from_secs(5);
        b.try_acquire(t1).unwrap().failure(None, t1);
        assert_eq!(b.state(t1 + Duration::from_secs(4)), CircuitState::Open);
        assert_eq!(b.state(t1 + Duration::from_secs(5)), CircuitState::HalfOpen);
    }

    #[test]
    fn an_abandoned_probe_hands_the_probe_on() {
        let b = breaker(1, 0.0, 1);
        let t = Instant::now();
        fail(&b, t);
        let t1 = t + Duration::from_secs(6);
        drop(b.try_acquire(t1).unwrap());
        let next = b.try_acquire(t1).unwrap();
        assert!(next.is_probe());
    }

    #[test]
    fn retry_after_opens_at_once_for_that_long() {
        let b = breaker(5, 0.0, 1);
        let t = Instant::now();
        b.try_acquire(t)
            .unwrap()
            .failure(Some(Duration::from_secs(20)), t);
        assert_eq!(b.state(t + Duration::from_secs(19)), CircuitState::Open);
        assert_eq!(b.state(t + Duration::from_secs(20)), CircuitState::HalfOpen);
        // Capped by max_cooldown.
        let b = breaker(5, 0.0, 1);
        b.try_acquire(t)
            .unwrap()
            .failure(Some(Duration::from_secs(3600)), t);
        assert_eq!(b.state(t + Duration::from_secs(60)), CircuitState::HalfOpen);
    }

    #[test]
    fn error_rate_over_the_window() {
        let b = breaker(0, 0.5, 10);
        let t = Instant::now();
        // Alternating outcomes never make 5 in a row but are 50 % failures.
        for i in 0..9 {
            if i % 2 == 0 {
                fail(&b, t);
            } else {
                succeed(&b, t);
            }
        }
        assert_eq!(b.state(t), CircuitState::Closed, "below min_requests");
        succeed(&b, t);
        assert_eq!(b.state(t), CircuitState::Closed, "4 of 10 failed");
        fail(&b, t);
        assert_eq!(b.state(t), CircuitState::Open, "6 of 11 failed");
    }

    #[test]
    fn old_outcomes_leave_the_window() {
        let b = breaker(0, 0.5, 4);
        let t = Instant::now();
        fail(&b, t);
        fail(&b, t);
        fail(&b, t);
        // Eleven seconds later those three are outside the 10 s window.
        let later = t + Duration::from_secs(11);
        succeed(&b, later);
        fail(&b, later);
        succeed(&b, later);
        assert_eq!(b.state(later), CircuitState::Closed);
        fail(&b, later);
        assert_eq!(b.state(later), CircuitState::Open, "2 of 4 in the window");
    }

    #[test]
    fn late_failures_do_not_extend_an_open_circuit() {
        let b = breaker(1, 0.0, 1);
        let t = Instant::now();
        let slow = b.try_acquire(t).unwrap();
        fail(&b, t);
        slow.failure(None, t + Duration::from_secs(3));
        assert_eq!(b.state(t + Duration::from_secs(5)), CircuitState::HalfOpen);
    }
}
