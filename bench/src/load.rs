//! The load generator: closed-loop or open-loop workers, one connection each.
//!
//! - Closed loop (default): each of the N workers sends its next request as
//!   soon as the previous answer has been read completely; the latency runs
//!   from the send to the end of the body.
//! - Open loop (`rate`): sends are scheduled at fixed instants spread over
//!   the N connections (see [`crate::schedule`]) and the latency runs from the
//!   *scheduled* instant, so a slow answer that delays later sends shows up in
//!   their latency too (coordinated-omission correction). A connection that
//!   falls behind sends back to back; slots still unsent at the end of the
//!   run are counted as missed. Slots are released by a pacer thread on the
//!   kernel's timers, so the latencies include its wake-up delay (typically
//!   tens of microseconds), not tokio's millisecond timer granularity.
//!
//! Requests sent during the warmup are neither counted nor timed (in open
//! loop a request due in the warmup but sent late, in the window, counts).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use hdrhistogram::Histogram;
use tokio::sync::mpsc;

use crate::client::{Answer, Connection, RequestError, Target};
use crate::schedule::{self, Pacing};
use crate::stats::{ErrorCounts, LatencySummary, LoadReport, new_histogram};

/// Pause after a failed reconnect, so a dead target is not hammered.
const RECONNECT_PAUSE: Duration = Duration::from_millis(10);

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Request to send.
    pub target: Arc<Target>,
    /// Number of connections (workers).
    pub concurrency: usize,
    /// Measured window.
    pub duration: Duration,
    /// Unmeasured time before the window.
    pub warmup: Duration,
    /// Open-loop target rate in requests per second; `None` for closed loop.
    pub rate: Option<f64>,
    /// Per-request timeout.
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    measure: Instant,
    end: Instant,
}

/// What one worker saw.
struct Recorder {
    hist: Histogram<u64>,
    requests: u64,
    errors: ErrorCounts,
    first_error: Option<(Instant, String)>,
    missed: u64,
    /// Open loop: how late sends were against their schedule.
    send_delay: Histogram<u64>,
    measure: Instant,
}

fn record_us(hist: &mut Histogram<u64>, from: Instant, to: Instant) {
    let us = to.saturating_duration_since(from).as_micros();
    hist.saturating_record(u64::try_from(us).unwrap_or(u64::MAX));
}

impl Recorder {
    fn new(measure: Instant) -> anyhow::Result<Self> {
        Ok(Self {
            hist: new_histogram()?,
            requests: 0,
            errors: ErrorCounts::default(),
            first_error: None,
            missed: 0,
            send_delay: new_histogram()?,
            measure,
        })
    }

    fn want_error_body(&self) -> bool {
        self.first_error.is_none()
    }

    fn note_error(&mut self, at: Instant, message: impl FnOnce() -> String) {
        if self.first_error.is_none() {
            self.first_error = Some((at, message()));
        }
    }

    /// Records an exchange sent at `sent` (measured when that is in the
    /// window) whose latency runs from `base`; returns whether the
    /// connection is still usable.
    fn exchange(
        &mut self,
        sent: Instant,
        base: Instant,
        result: Result<Answer, RequestError>,
    ) -> bool {
        let done = Instant::now();
        let measured = sent >= self.measure;
        self.requests += u64::from(measured);
        match result {
            Ok(answer) if answer.status.is_success() => {
                if measured {
                    record_us(&mut self.hist, base, done);
                }
                true
            }
            Ok(answer) => {
                self.errors.status += u64::from(measured);
                self.note_error(done, || {
                    let body = answer.error_body.unwrap_or_default();
                    format!("HTTP {}: {}", answer.status, String::from_utf8_lossy(&body))
                });
                true
            }
            Err(err) => {
                match err {
                    RequestError::Timeout => self.errors.timeout += u64::from(measured),
                    RequestError::Io(_) => self.errors.io += u64::from(measured),
                }
                self.note_error(done, || err.to_string());
                false
            }
        }
    }

    /// Makes sure there is a connection; on failure records it and pauses.
    async fn ensure(
        &mut self,
        conn: &mut Option<Connection>,
        target: &Target,
        sent: Instant,
    ) -> bool {
        if conn.is_some() {
            return true;
        }
        match Connection::open(target).await {
            Ok(c) => {
                *conn = Some(c);
                true
            }
            Err(err) => {
                let measured = sent >= self.measure;
                self.requests += u64::from(measured);
                self.errors.connect += u64::from(measured);
                self.note_error(Instant::now(), || format!("{err:#}"));
                tokio::time::sleep(RECONNECT_PAUSE).await;
                false
            }
        }
    }
}

async fn closed_worker(
    cfg: Arc<LoadConfig>,
    conn: Connection,
    w: Window,
) -> anyhow::Result<Recorder> {
    let mut rec = Recorder::new(w.measure)?;
    let mut conn = Some(conn);
    loop {
        let sent = Instant::now();
        if sent >= w.end {
            break;
        }
        if !rec.ensure(&mut conn, &cfg.target, sent).await {
            continue;
        }
        let Some(c) = conn.as_mut() else { continue };
        let result = c
            .send(&cfg.target, cfg.timeout, rec.want_error_body())
            .await;
        if !rec.exchange(sent, sent, result) {
            conn = None;
        }
    }
    Ok(rec)
}

/// Releases the open-loop slots: a plain OS thread sleeping (with the
/// kernel's microsecond-level timers, unlike tokio's millisecond wheel) until
/// each slot is due, then handing its due instant to the owning connection.
/// Overdue slots are released at once. It stops at the end of the window;
/// dropping the senders then ends the workers.
fn spawn_pacer(pacing: Pacing, w: Window, senders: Vec<mpsc::UnboundedSender<Instant>>) {
    std::thread::spawn(move || {
        for k in 0.. {
            let due = w.start + pacing.offset(k);
            if due >= w.end {
                break;
            }
            let wait = due.saturating_duration_since(Instant::now());
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
            if let Some(tx) = senders.get(pacing.owner(k)) {
                // A worker that is gone has failed; the others go on.
                let _ = tx.send(due);
            }
        }
    });
}

async fn open_worker(
    cfg: Arc<LoadConfig>,
    conn: Connection,
    w: Window,
    mut slots: mpsc::UnboundedReceiver<Instant>,
) -> anyhow::Result<Recorder> {
    let mut rec = Recorder::new(w.measure)?;
    let mut conn = Some(conn);
    while let Some(due) = slots.recv().await {
        let sent = Instant::now();
        if sent >= w.end {
            // Behind schedule at the end: what is still queued was never sent.
            rec.missed += u64::from(due >= w.measure);
            continue;
        }
        if sent >= w.measure {
            record_us(&mut rec.send_delay, due, sent);
        }
        if !rec.ensure(&mut conn, &cfg.target, sent).await {
            continue;
        }
        let Some(c) = conn.as_mut() else { continue };
        let result = c
            .send(&cfg.target, cfg.timeout, rec.want_error_body())
            .await;
        if !rec.exchange(sent, due, result) {
            conn = None;
        }
    }
    Ok(rec)
}

/// Runs the load and summarises the measured window.
///
/// All connections are opened before the clock starts; failing to open
/// one is an error (the target is down or the URL is wrong).
pub async fn run(cfg: LoadConfig) -> anyhow::Result<LoadReport> {
    if cfg.concurrency == 0 {
        bail!("concurrency must be at least 1");
    }
    if cfg.duration.is_zero() {
        bail!("duration must be positive");
    }
    if let Some(rate) = cfg.rate {
        schedule::check_rate(rate)?;
    }
    let mut conns = Vec::with_capacity(cfg.concurrency);
    for _ in 0..cfg.concurrency {
        let conn = Connection::open(&cfg.target)
            .await
            .with_context(|| format!("cannot open a connection for {}", cfg.target.url))?;
        conns.push(conn);
    }
    let start = Instant::now();
    let measure = start + cfg.warmup;
    let window = Window {
        start,
        measure,
        end: measure + cfg.duration,
    };
    let cfg = Arc::new(cfg);
    let mut tasks = Vec::with_capacity(cfg.concurrency);
    let mut scheduled = 0;
    let mut senders = Vec::new();
    for conn in conns {
        let cfg2 = Arc::clone(&cfg);
        tasks.push(if cfg.rate.is_some() {
            let (tx, rx) = mpsc::unbounded_channel();
            senders.push(tx);
            tokio::spawn(open_worker(cfg2, conn, window, rx))
        } else {
            tokio::spawn(closed_worker(cfg2, conn, window))
        });
    }
    if let Some(rate) = cfg.rate {
        let pacing = Pacing::new(rate, cfg.concurrency)?;
        scheduled = pacing.slots_between(cfg.warmup, cfg.warmup + cfg.duration);
        spawn_pacer(pacing, window, senders);
    }
    let mut hist = new_histogram()?;
    let mut send_delay = new_histogram()?;
    let (mut requests, mut missed) = (0, 0);
    let mut errors = ErrorCounts::default();
    let mut first_error: Option<(Instant, String)> = None;
    for task in tasks {
        let rec = task.await.context("load worker panicked")??;
        hist.add(&rec.hist)?;
        send_delay.add(&rec.send_delay)?;
        requests += rec.requests;
        missed += rec.missed;
        errors.add(&rec.errors);
        if let Some((at, msg)) = rec.first_error
            && first_error.as_ref().is_none_or(|(t, _)| at < *t)
        {
            first_error = Some((at, msg));
        }
    }
    let secs = cfg.duration.as_secs_f64();
    let open = cfg.rate.is_some();
    Ok(LoadReport {
        mode: if open { "open" } else { "closed" },
        url: cfg.target.url.clone(),
        concurrency: cfg.concurrency,
        duration_s: secs,
        warmup_s: cfg.warmup.as_secs_f64(),
        requests,
        errors: errors.total(),
        error_kinds: errors,
        rps: requests.saturating_sub(errors.total()) as f64 / secs,
        target_rps: cfg.rate,
        missed: open.then_some(missed),
        target_achieved: open.then(|| schedule::rate_achieved(scheduled, missed)),
        latency_us: LatencySummary::from_histogram(&hist),
        send_delay_us: open.then(|| LatencySummary::from_histogram(&send_delay)),
        first_error: first_error.map(|(_, msg)| msg),
    })
}
