//! Streaming speaker diarisation: the diart algorithm over segmentation-3.0 and CAM++.
//!
//! A session keeps a rolling [`WINDOW_SECONDS`] buffer of 16 kHz audio and, every `step`,
//! runs one window ending at the newest step boundary (the stream's start is zero-padded):
//! 1. segmentation → per-frame activities of up to 3 local speakers (the most likely powerset
//!    class of each frame, as pyannote and diart decode it: 0 or 1 per speaker);
//! 2. local speakers whose activity peaks above `tau_active` get an embedding from the frames
//!    where they speak alone ([`embedding`]);
//! 3. those are matched to the session's global speakers by cosine distance and the
//!    Hungarian method, new speakers past `delta_new`, centroids moved only by speakers whose
//!    mean activity in the window reaches `rho_update`, at most `max_speakers` ([`clustering`]);
//! 4. the window's activities, relabelled to global speakers, are Hamming-weighted onto one
//!    timeline; a frame is read out `latency` after its time, averaged over the windows that
//!    covered it by then, binarised at `tau_active` and turned into turns ([`aggregation`]).
//!
//! The models are loaded once ([`DiarizationModels`]) and shared by any number of sessions
//! through an `Arc`; a session's state ([`StreamingDiarizer`]) is a few seconds of audio plus
//! the centroids, and is freed by dropping it.

use std::path::Path;
use std::sync::Arc;

use aggregation::{Run, Timeline, Turns};
use clustering::{Clustering, LocalSpeaker};

use crate::campplus::CamPlusPlus;
use crate::fbank::Fbank;
use crate::segmentation::{self, Decoding, LOCAL_SPEAKERS, SAMPLE_RATE, Segmentation};
pub use crate::weights::ModelError;

mod aggregation;
mod clustering;
mod config;
mod embedding;
mod hungarian;

pub use config::DiarizationConfig;

/// Length of the rolling window the segmentation model sees.
pub const WINDOW_SECONDS: f64 = 5.0;
const WINDOW_SAMPLES: usize = 5 * SAMPLE_RATE;

/// The segmentation and embedding models, loaded once and shared by every session.
#[derive(Debug)]
pub struct DiarizationModels {
    segmentation: Segmentation,
    embedding: CamPlusPlus,
    fbank: Fbank,
    /// Threads one step may use: the LSTM's two directions side by side, the local
    /// speakers' embeddings side by side.
    threads: usize,
}

impl DiarizationModels {
    /// Loads segmentation-3.0 (`pytorch_model.bin`) and CAM++ (`campplus_cn_en_common.pt`).
    /// A step uses two threads where the machine has two cores or more (see
    /// [`with_threads`](Self::with_threads)).
    pub fn load(segmentation_model: &Path, embedding_model: &Path) -> Result<Self, ModelError> {
        let threads = std::thread::available_parallelism()
            .map_or(1, std::num::NonZero::get)
            .min(2);
        Ok(Self {
            segmentation: Segmentation::load(segmentation_model)?,
            embedding: CamPlusPlus::load(embedding_model)?,
            fbank: Fbank::default(),
            threads: 1,
        }
        .with_threads(threads))
    }

    /// Sets the threads one step may use (at least 1; more than 2 gains little, since the
    /// work splits into the LSTM's two directions and at most 3 speakers' embeddings). Each
    /// thread runs candle ops, so keep candle itself to one thread (`CANDLE_NUM_THREADS=1`)
    /// when setting more than one here.
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self.segmentation = self.segmentation.with_threads(self.threads);
        self
    }

    /// Threads one step uses.
    pub fn threads(&self) -> usize {
        self.threads
    }
}

/// A turn of one speaker, in seconds from the stream's start.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SpeakerTurn {
    /// `speaker_0`, `speaker_1`, … in order of first appearance.
    pub speaker: String,
    /// Start, seconds.
    pub start: f64,
    /// End, seconds (for a turn still open: as far as it is known).
    pub end: f64,
    /// Whether the turn is closed; an open turn is reported again as it grows.
    #[serde(rename = "final")]
    pub final_: bool,
}

/// The diarisation state of one stream. Feed it audio with [`push`](Self::push), end it with
/// [`finish`](Self::finish); dropping it frees everything.
#[derive(Debug)]
pub struct StreamingDiarizer {
    models: Arc<DiarizationModels>,
    config: DiarizationConfig,
    step: usize,
    latency: usize,
    hamming: Vec<f64>,
    /// Audio from sample `buffer_start` on.
    buffer: Vec<f32>,
    buffer_start: usize,
    /// Samples received so far.
    received: usize,
    /// End sample of the next window to run.
    next_end: usize,
    clustering: Clustering,
    timeline: Timeline,
    turns: Turns,
    /// The open turns as last reported, so that unchanged ones are not repeated.
    reported: Vec<Run>,
    finished: bool,
    /// Threads a step uses (the models' setting unless [`set_threads`](Self::set_threads)).
    threads: usize,
}

impl StreamingDiarizer {
    /// A new session. `config` should have passed [`DiarizationConfig::validate`]; values out
    /// of range are clamped into it.
    pub fn new(models: Arc<DiarizationModels>, config: DiarizationConfig) -> Self {
        let config = config.clamped();
        let threads = models.threads;
        let step = ((config.step_s * SAMPLE_RATE as f64).round() as usize).max(1);
        let latency = ((config.latency_s * SAMPLE_RATE as f64).round() as usize).max(step);
        Self {
            models,
            step,
            latency,
            hamming: aggregation::hamming(segmentation::num_frames(WINDOW_SAMPLES)),
            buffer: Vec::new(),
            buffer_start: 0,
            received: 0,
            next_end: step,
            clustering: Clustering::new(config.delta_new, config.max_speakers),
            timeline: Timeline::default(),
            turns: Turns::default(),
            reported: Vec::new(),
            finished: false,
            threads,
            config,
        }
    }

    /// Lets the next steps use `threads` threads (at least 1): a server running many
    /// sessions gives each one thread, which costs less CPU per step than two.
    pub fn set_threads(&mut self, threads: usize) {
        self.threads = threads.max(1);
    }

    /// The session's settings.
    pub fn config(&self) -> &DiarizationConfig {
        &self.config
    }

    /// Global speakers found so far.
    pub fn num_speakers(&self) -> usize {
        self.clustering.num_speakers()
    }

    /// Feeds 16 kHz mono f32 samples (any length); returns the turns finalised or revised
    /// since the last call (CPU-heavy: callers run it on a blocking thread).
    pub fn push(&mut self, samples: &[f32]) -> Result<Vec<SpeakerTurn>, ModelError> {
        if self.finished {
            return Err(ModelError::Input(
                "the diarisation stream has already finished".into(),
            ));
        }
        // Samples that are not numbers (a corrupt float file) are silence.
        self.buffer
            .extend(samples.iter().map(|&s| if s.is_finite() { s } else { 0.0 }));
        self.received += samples.len();
        let mut out = Vec::new();
        while self.next_end <= self.received {
            out.extend(self.run_window(self.next_end, self.next_end + self.step)?);
            self.next_end += self.step;
        }
        // Keep what the next window needs.
        let keep_from = self.next_end.saturating_sub(WINDOW_SAMPLES);
        if keep_from > self.buffer_start {
            let drop = (keep_from - self.buffer_start).min(self.buffer.len());
            self.buffer.drain(..drop);
            self.buffer_start += drop;
        }
        out.extend(self.revisions());
        Ok(out)
    }

    /// Flushes the remaining audio at end of stream; every returned turn is final.
    pub fn finish(&mut self) -> Result<Vec<SpeakerTurn>, ModelError> {
        if self.finished {
            return Ok(Vec::new());
        }
        self.finished = true;
        let mut out = Vec::new();
        // The last partial step, zero-padded, then everything up to the end of the audio.
        if self.received + self.step > self.next_end && self.received > 0 {
            out.extend(self.run_window(self.next_end, 0)?);
        }
        let frames = self.timeline.read_until(self.received as i64);
        out.extend(self.feed_frames(frames));
        let runs = self.turns.close_all();
        out.extend(runs.into_iter().map(|run| self.turn(run, true)));
        self.buffer = Vec::new();
        Ok(out)
    }

    /// Runs the window ending at sample `end`, then reads out the timeline's frames before
    /// sample `read_until - latency` (none when `read_until` is 0); returns the closed turns.
    fn run_window(
        &mut self,
        end: usize,
        read_until: usize,
    ) -> Result<Vec<SpeakerTurn>, ModelError> {
        let start = end as i64 - WINDOW_SAMPLES as i64;
        let window: Vec<f32> = (start..end as i64)
            .map(|s| {
                usize::try_from(s)
                    .ok()
                    .and_then(|s| s.checked_sub(self.buffer_start))
                    .and_then(|i| self.buffer.get(i))
                    .copied()
                    .unwrap_or(0.0)
            })
            .collect();
        let models = Arc::clone(&self.models);
        let log_probs = models.segmentation.segment_with(&window, self.threads)?;
        let activity: Vec<[f32; LOCAL_SPEAKERS]> =
            segmentation::speaker_activity(&log_probs, Decoding::Hard)?
                .to_vec2::<f32>()?
                .into_iter()
                .map(|row| [row[0], row[1], row[2]])
                .collect();
        let frames = activity.len().max(1) as f64;
        let active: Vec<usize> = (0..LOCAL_SPEAKERS)
            .filter(|&k| {
                let peak = activity.iter().map(|a| a[k]).fold(0f32, f32::max);
                f64::from(peak) >= self.config.tau_active
            })
            .collect();
        let mut globals = [None; LOCAL_SPEAKERS];
        if !active.is_empty() {
            let features = models.fbank.compute(&window);
            let embeddings = embedding::embed_speakers(
                &models.embedding,
                &features,
                &activity,
                &active,
                self.threads,
            )?;
            let (locals, ids): (Vec<LocalSpeaker>, Vec<usize>) = active
                .iter()
                .zip(embeddings)
                .filter_map(|(&k, e)| {
                    let mean = activity.iter().map(|a| f64::from(a[k])).sum::<f64>() / frames;
                    e.map(|embedding| {
                        let long = mean >= self.config.rho_update;
                        (LocalSpeaker { embedding, long }, k)
                    })
                })
                .unzip();
            for (k, g) in ids.into_iter().zip(self.clustering.identify(&locals)) {
                globals[k] = g;
            }
        }
        let speakers = self.clustering.num_speakers();
        let relabelled: Vec<Vec<f64>> = activity
            .iter()
            .map(|a| {
                let mut row = vec![0.0; speakers];
                for (k, g) in globals.iter().enumerate() {
                    if let Some(g) = *g {
                        row[g] = f64::from(a[k]);
                    }
                }
                row
            })
            .collect();
        self.timeline.add(start, &relabelled, &self.hamming);
        if read_until == 0 {
            return Ok(Vec::new());
        }
        // Frames are read out `latency` after their time, but never past this window's last
        // frame (its final few milliseconds have none): those wait for the next window.
        let last = aggregation::timeline_index(start, self.hamming.len().saturating_sub(1));
        let until = (read_until as i64 - self.latency as i64)
            .min(aggregation::frame_center_sample(last) + 1);
        let frames = self.timeline.read_until(until);
        Ok(self.feed_frames(frames))
    }

    fn feed_frames(&mut self, frames: Vec<(i64, Vec<f64>)>) -> Vec<SpeakerTurn> {
        let mut closed = Vec::new();
        for (index, activity) in frames {
            closed.extend(self.turns.feed(index, &activity, self.config.tau_active));
        }
        closed.into_iter().map(|run| self.turn(run, true)).collect()
    }

    /// The open turns that changed since they were last reported.
    fn revisions(&mut self) -> Vec<SpeakerTurn> {
        let open: Vec<Run> = self.turns.open().collect();
        let changed: Vec<SpeakerTurn> = open
            .iter()
            .filter(|run| !self.reported.contains(run))
            .map(|&run| self.turn(run, false))
            .collect();
        self.reported = open;
        changed
    }

    fn turn(&self, run: Run, final_: bool) -> SpeakerTurn {
        let (start, mut end) = aggregation::span_seconds(run.first, run.last);
        if self.finished {
            end = end.min(self.received as f64 / SAMPLE_RATE as f64);
        }
        SpeakerTurn {
            speaker: format!("speaker_{}", run.speaker),
            start,
            end,
            final_,
        }
    }
}

/// Whole-file diarisation (runs the streaming pipeline over the file, fast as the CPU
/// allows): the final turns, ordered by start.
pub fn diarize_file(
    models: &Arc<DiarizationModels>,
    config: &DiarizationConfig,
    samples_16k: &[f32],
) -> Result<Vec<SpeakerTurn>, ModelError> {
    let mut session = StreamingDiarizer::new(Arc::clone(models), config.clone());
    let mut turns: Vec<SpeakerTurn> = session
        .push(samples_16k)?
        .into_iter()
        .filter(|t| t.final_)
        .collect();
    turns.extend(session.finish()?);
    turns.sort_by(|a, b| a.start.total_cmp(&b.start).then(a.end.total_cmp(&b.end)));
    Ok(turns)
}
