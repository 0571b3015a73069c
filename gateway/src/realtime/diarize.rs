//! Streaming diarisation of a session's default track (`aigw_diarization`): a
//! [`StreamingDiarizer`] fed the track's 16 kHz audio on a blocking thread, one push at a
//! time, its turns sent as `diarization.speaker_turn {speaker, start, end, final}` events and
//! kept in a [`TurnLog`] from which the transcriber labels segments with their `speaker`.
//!
//! Open turns are reported again as they grow (a revision: same speaker and start, later
//! end); the final one closes them. Named tracks need none of this: their speaker is the
//! track. The audio queue is bounded (backpressure on the socket reader), steps of all
//! sessions share one permit per core (a step takes one per thread it uses, so sessions
//! never oversubscribe the cores; a lone session's step uses two threads, one each when
//! several run), and the state is freed when the session ends or switches
//! diarisation off.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use aigw_audio::diarize::{DiarizationConfig, DiarizationModels, SpeakerTurn, StreamingDiarizer};
use axum::extract::ws::Message;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::protocol::{DiarizationSettings, EventError, error_event, event};
use crate::state::AppState;

/// Chunks of audio waiting for the diariser.
const PENDING_CHUNKS: usize = 32;
/// Turns remembered for labelling transcripts (the oldest are forgotten first).
const MAX_TURNS: usize = 4096;
/// Longest a transcript waits for the diariser to catch up with its end.
const LABEL_WAIT: Duration = Duration::from_secs(5);
const RATE: f64 = 16_000.0;

/// Sessions diarising now, across the server.
static ACTIVE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Counts a session as diarising while it lives.
struct Active;

impl Active {
    fn enter() -> Self {
        ACTIVE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        ACTIVE.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The machine's cores, read once (the lookup reads cgroup files).
fn cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The permits for diarisation steps running at once, shared by every session: one per core.
fn compute() -> &'static Arc<tokio::sync::Semaphore> {
    static COMPUTE: OnceLock<Arc<tokio::sync::Semaphore>> = OnceLock::new();
    COMPUTE.get_or_init(|| Arc::new(tokio::sync::Semaphore::new(cores())))
}

/// The local diarisation models, if the server has any (`kind = "diarization"`).
pub fn models(state: &AppState) -> Option<Arc<DiarizationModels>> {
    state.local_models().iter().find_map(|m| m.diarizer.clone())
}

/// The session's settings as the engine's, checked.
pub fn config(settings: &DiarizationSettings) -> Result<DiarizationConfig, EventError> {
    let param = Some("session.aigw_diarization");
    let config: DiarizationConfig = serde_json::from_value(Value::Object(settings.clone()))
        .map_err(|e| {
            EventError::new(
                "invalid_value",
                format!("Invalid 'aigw_diarization': {e}."),
                param,
            )
        })?;
    config.validate().map_err(|e| {
        EventError::new(
            "invalid_value",
            format!("Invalid 'aigw_diarization': {e}."),
            param,
        )
    })?;
    Ok(config)
}

/// The turns found so far, in stream seconds.
#[derive(Debug, Default)]
pub struct TurnLog {
    turns: Vec<SpeakerTurn>,
    /// Up to where the turns are known (the diariser's latency behind the audio).
    known_until: f64,
    /// The diariser stopped: nothing more will come.
    done: bool,
}

impl TurnLog {
    fn record(&mut self, turn: SpeakerTurn) {
        let same = self
            .turns
            .iter_mut()
            .rev()
            .take(32)
            .find(|t| t.speaker == turn.speaker && (t.start - turn.start).abs() < 1e-6);
        match same {
            Some(t) => *t = turn,
            None => self.turns.push(turn),
        }
        if self.turns.len() > MAX_TURNS {
            self.turns.drain(..self.turns.len() - MAX_TURNS);
        }
    }

    /// The speaker who talks most between `start` and `end`, if any.
    pub fn speaker(&self, start: f64, end: f64) -> Option<String> {
        let mut best: Option<(&str, f64)> = None;
        let mut totals: Vec<(&str, f64)> = Vec::new();
        for t in &self.turns {
            let overlap = t.end.min(end) - t.start.max(start);
            if overlap <= 0.0 {
                continue;
            }
            match totals.iter_mut().find(|(s, _)| *s == t.speaker) {
                Some((_, sum)) => *sum += overlap,
                None => totals.push((&t.speaker, overlap)),
            }
        }
        for (s, sum) in totals {
            if best.is_none_or(|(_, b)| sum > b) {
                best = Some((s, sum));
            }
        }
        best.map(|(s, _)| s.to_owned())
    }
}

/// Waits (a while) until `log` covers `end`, then gives the speaker of `start..end`.
pub async fn speaker_of(log: &Mutex<TurnLog>, start: f64, end: f64) -> Option<String> {
    let deadline = tokio::time::Instant::now() + LABEL_WAIT;
    loop {
        {
            let log = log.lock().unwrap_or_else(PoisonError::into_inner);
            if log.done || log.known_until >= end || tokio::time::Instant::now() >= deadline {
                return log.speaker(start, end);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A running diariser.
pub struct Diarization {
    /// The settings it runs with.
    pub settings: DiarizationSettings,
    /// Its turns.
    pub turns: Arc<Mutex<TurnLog>>,
    audio: mpsc::Sender<Vec<f32>>,
    task: tokio::task::JoinHandle<()>,
}

impl Diarization {
    /// Starts diarising audio that begins at `offset` seconds of the track.
    pub fn start(
        models: Arc<DiarizationModels>,
        settings: DiarizationSettings,
        config: DiarizationConfig,
        offset: f64,
        events: mpsc::Sender<Message>,
    ) -> Self {
        let (audio, rx) = mpsc::channel(PENDING_CHUNKS);
        let turns = Arc::new(Mutex::new(TurnLog {
            known_until: offset,
            ..TurnLog::default()
        }));
        let latency = config.latency_s;
        let threads = models.threads();
        let diarizer = StreamingDiarizer::new(models, config);
        let task = tokio::spawn(run(
            diarizer,
            threads,
            rx,
            Arc::clone(&turns),
            offset,
            latency,
            events,
        ));
        Self {
            settings,
            turns,
            audio,
            task,
        }
    }

    /// Queues `samples` (waits while the queue is full); false once the diariser has stopped.
    pub async fn push(&self, samples: Vec<f32>) -> bool {
        self.audio.send(samples).await.is_ok()
    }

    /// Stops at once (the connection is gone).
    pub fn abort(self) {
        self.task.abort();
    }
}

async fn run(
    diarizer: StreamingDiarizer,
    threads: usize,
    mut rx: mpsc::Receiver<Vec<f32>>,
    log: Arc<Mutex<TurnLog>>,
    offset: f64,
    latency: f64,
    events: mpsc::Sender<Message>,
) {
    let _active = Active::enter();
    let mut diarizer = Some(diarizer);
    let mut pushed = 0usize;
    let mut open = true;
    while open {
        let mut chunk = match rx.recv().await {
            Some(chunk) => chunk,
            None => {
                open = false;
                Vec::new()
            }
        };
        while let Ok(more) = rx.try_recv() {
            chunk.extend(more);
        }
        let Some(mut d) = diarizer.take() else { return };
        pushed += chunk.len();
        // One permit per core across all sessions, a step taking one per thread it uses;
        // the others wait their turn (and their audio queues, then their sockets, fill up).
        // A lone session's step uses the models' threads (lower latency); with others
        // running, one (less CPU per step, so more sessions keep up).
        let wanted = if ACTIVE.load(std::sync::atomic::Ordering::Relaxed) > 1 {
            1
        } else {
            threads.clamp(1, cores())
        };
        let Ok(permit) = Arc::clone(compute())
            .acquire_many_owned(u32::try_from(wanted).unwrap_or(1))
            .await
        else {
            return;
        };
        d.set_threads(wanted);
        let step = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let result = if open { d.push(&chunk) } else { d.finish() };
            (d, result)
        })
        .await;
        let turns = match step {
            Ok((d, Ok(turns))) => {
                diarizer = Some(d);
                turns
            }
            Ok((_, Err(e))) => {
                let err = EventError::new(
                    "diarization_failed",
                    format!("Diarisation stopped: {e}."),
                    None,
                );
                let _ = send(&events, error_event(&err, None)).await;
                break;
            }
            Err(_) => break,
        };
        let shifted: Vec<SpeakerTurn> = turns
            .into_iter()
            .map(|t| SpeakerTurn {
                start: offset + t.start,
                end: offset + t.end,
                ..t
            })
            .collect();
        {
            let mut log = log.lock().unwrap_or_else(PoisonError::into_inner);
            for t in &shifted {
                log.record(t.clone());
            }
            log.known_until = offset + pushed as f64 / RATE - if open { latency } else { 0.0 };
        }
        for t in shifted {
            let fields =
                json!({"speaker": t.speaker, "start": t.start, "end": t.end, "final": t.final_});
            if send(&events, event("diarization.speaker_turn", None, fields))
                .await
                .is_err()
            {
                break;
            }
        }
    }
    log.lock().unwrap_or_else(PoisonError::into_inner).done = true;
}

async fn send(events: &mpsc::Sender<Message>, v: Value) -> Result<(), ()> {
    events
        .send(Message::Text(v.to_string().into()))
        .await
        .map_err(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(speaker: &str, start: f64, end: f64, final_: bool) -> SpeakerTurn {
        SpeakerTurn {
            speaker: speaker.into(),
            start,
            end,
            final_,
        }
    }

    #[test]
    fn revisions_replace_and_overlap_picks_the_speaker() {
        let mut log = TurnLog::default();
        log.record(turn("speaker_0", 0.0, 1.0, false));
        log.record(turn("speaker_0", 0.0, 2.5, true));
        log.record(turn("speaker_1", 2.4, 5.0, true));
        assert_eq!(log.turns.len(), 2);
        assert_eq!(log.speaker(0.5, 2.0).as_deref(), Some("speaker_0"));
        assert_eq!(log.speaker(2.0, 4.0).as_deref(), Some("speaker_1"));
        assert_eq!(log.speaker(6.0, 7.0), None);
    }

    #[test]
    fn settings_are_checked() {
        let ok = json!({"step_s": 0.5, "latency_s": 1.0});
        assert_eq!(config(ok.as_object().unwrap()).unwrap().latency_s, 1.0);
        let unknown = json!({"stepsize": 0.5});
        assert!(config(unknown.as_object().unwrap()).is_err());
        let bad = json!({"latency_s": 9.0});
        let e = config(bad.as_object().unwrap()).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("session.aigw_diarization"));
    }
}
