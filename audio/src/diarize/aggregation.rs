//! Delayed aggregation of overlapping windows, and binarisation into speaker turns.
//!
//! Every window's per-frame activities of the global speakers are added, weighted by a
//! Hamming window over the window's frames (its middle is trusted more than its edges, where
//! the model saw little context), onto one timeline of frames `FRAME_STEP` samples apart
//! ([`Timeline`]). A frame is read out once `latency` has passed since its time: by then
//! every window ending up to `latency` after it has been added, so the read-out value is the
//! Hamming-weighted mean over those windows (diart's DelayedAggregation). A read-out frame is
//! binarised at `tau_active` and fed to [`Turns`], which opens and closes speaker turns.

use std::collections::VecDeque;

use crate::segmentation::{FRAME_SPAN, FRAME_STEP, SAMPLE_RATE};

/// The sums of one timeline frame.
#[derive(Debug, Clone, Default)]
struct Frame {
    weight: f64,
    /// Weighted activity per global speaker (shorter when later speakers never touched it).
    activity: Vec<f64>,
}

/// The timeline of aggregated activities, from the first frame not yet read out.
#[derive(Debug, Clone, Default)]
pub(crate) struct Timeline {
    /// Index of `frames[0]`.
    first: i64,
    frames: VecDeque<Frame>,
}

/// The Hamming window of `n` points.
pub(crate) fn hamming(n: usize) -> Vec<f64> {
    if n < 2 {
        return vec![1.0; n];
    }
    (0..n)
        .map(|i| 0.54 - 0.46 * (2.0 * std::f64::consts::PI * i as f64 / (n - 1) as f64).cos())
        .collect()
}

/// The timeline frame of a window's frame `frame`, for a window starting at sample `start`
/// (negative while the stream's beginning is zero-padded).
pub(crate) fn timeline_index(start: i64, frame: usize) -> i64 {
    (start as f64 / FRAME_STEP as f64).round() as i64 + frame as i64
}

/// The sample at the centre of timeline frame `index`.
pub(crate) fn frame_center_sample(index: i64) -> i64 {
    index * FRAME_STEP as i64 + (FRAME_SPAN as i64 - 1) / 2
}

/// The time span (seconds) a run of timeline frames `first..=last` stands for: from half a
/// step before the first centre to half a step after the last.
pub(crate) fn span_seconds(first: i64, last: i64) -> (f64, f64) {
    let half = FRAME_STEP as f64 / 2.0;
    let start = (frame_center_sample(first) as f64 - half).max(0.0);
    let end = frame_center_sample(last) as f64 + half;
    (start / SAMPLE_RATE as f64, end / SAMPLE_RATE as f64)
}

impl Timeline {
    /// Adds a window starting at sample `start`: `activity[frame][global]`, weighted by
    /// `weights[frame]`. Frames before the read-out point or before the stream are dropped.
    pub(crate) fn add(&mut self, start: i64, activity: &[Vec<f64>], weights: &[f64]) {
        for (frame, (row, &w)) in activity.iter().zip(weights).enumerate() {
            let index = timeline_index(start, frame);
            if index < self.first || index < 0 {
                continue;
            }
            let offset = (index - self.first) as usize;
            if self.frames.len() <= offset {
                self.frames.resize_with(offset + 1, Frame::default);
            }
            let slot = &mut self.frames[offset];
            slot.weight += w;
            if slot.activity.len() < row.len() {
                slot.activity.resize(row.len(), 0.0);
            }
            for (sum, &a) in slot.activity.iter_mut().zip(row) {
                *sum += w * a;
            }
        }
    }

    /// Reads out, in order, the frames whose centre lies before sample `until`: their index
    /// and mean activity per speaker (empty for frames no window reached).
    pub(crate) fn read_until(&mut self, until: i64) -> Vec<(i64, Vec<f64>)> {
        let mut out = Vec::new();
        while frame_center_sample(self.first) < until {
            let frame = self.frames.pop_front().unwrap_or_default();
            let mean = if frame.weight > 0.0 {
                frame.activity.iter().map(|a| a / frame.weight).collect()
            } else {
                Vec::new()
            };
            out.push((self.first, mean));
            self.first += 1;
        }
        out
    }
}

/// A turn of one global speaker over timeline frames `first..=last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Run {
    pub speaker: usize,
    pub first: i64,
    pub last: i64,
}

/// The speakers' open turns, fed one binarised frame at a time.
#[derive(Debug, Clone, Default)]
pub(crate) struct Turns {
    /// Per global speaker: the open turn's first and last frame.
    open: Vec<Option<(i64, i64)>>,
}

impl Turns {
    /// Feeds frame `index` with the speakers' mean activities; returns the turns it closed.
    pub(crate) fn feed(&mut self, index: i64, activity: &[f64], tau_active: f64) -> Vec<Run> {
        if self.open.len() < activity.len() {
            self.open.resize(activity.len(), None);
        }
        let mut closed = Vec::new();
        for (speaker, open) in self.open.iter_mut().enumerate() {
            let active = activity.get(speaker).is_some_and(|&a| a >= tau_active);
            match (*open, active) {
                (None, true) => *open = Some((index, index)),
                (Some((first, _)), true) => *open = Some((first, index)),
                (Some((first, last)), false) => {
                    closed.push(Run {
                        speaker,
                        first,
                        last,
                    });
                    *open = None;
                }
                (None, false) => {}
            }
        }
        closed
    }

    /// The turns still open.
    pub(crate) fn open(&self) -> impl Iterator<Item = Run> + '_ {
        self.open.iter().enumerate().filter_map(|(speaker, open)| {
            open.map(|(first, last)| Run {
                speaker,
                first,
                last,
            })
        })
    }

    /// Closes every open turn.
    pub(crate) fn close_all(&mut self) -> Vec<Run> {
        let runs: Vec<Run> = self.open().collect();
        self.open.iter_mut().for_each(|o| *o = None);
        runs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hamming_weights() {
        let w = hamming(5);
        assert!((w[0] - 0.08).abs() < 1e-12 && (w[4] - 0.08).abs() < 1e-12);
        assert!((w[2] - 1.0).abs() < 1e-12);
        assert_eq!(hamming(1), [1.0]);
    }

    #[test]
    fn overlapping_windows_average_with_their_weights() {
        let mut t = Timeline::default();
        // Window A at frames 0..4, speaker 0 at 1.0; window B at frames 2..6, speaker 0 at
        // 0.0 and speaker 1 at 1.0.
        t.add(0, &vec![vec![1.0]; 4], &[1.0, 1.0, 3.0, 1.0]);
        t.add(
            2 * FRAME_STEP as i64,
            &vec![vec![0.0, 1.0]; 4],
            &[1.0, 1.0, 1.0, 1.0],
        );
        let out = t.read_until(frame_center_sample(4));
        assert_eq!(out.len(), 4);
        assert_eq!(out[0], (0, vec![1.0]));
        // Frame 2: (3·1 + 1·0) / 4 for speaker 0, 1/4 for speaker 1.
        assert_eq!(out[2], (2, vec![0.75, 0.25]));
        assert_eq!(out[3], (3, vec![0.5, 0.5]));
        // Frames already read out are not touched by later windows.
        t.add(0, &vec![vec![1.0]; 8], &[1.0; 8]);
        let out = t.read_until(frame_center_sample(6));
        assert_eq!(out[0], (4, vec![0.5, 0.5]));
        assert_eq!(out[1].0, 5);
        // A frame no window reached reads as silence.
        assert_eq!(
            t.read_until(frame_center_sample(9)).last(),
            Some(&(8, vec![]))
        );
    }

    #[test]
    fn padding_before_the_stream_is_dropped() {
        let mut t = Timeline::default();
        t.add(-2 * FRAME_STEP as i64, &vec![vec![1.0]; 4], &[1.0; 4]);
        let out = t.read_until(frame_center_sample(2));
        assert_eq!(out, [(0, vec![1.0]), (1, vec![1.0])]);
    }

    #[test]
    fn binarised_frames_become_turns() {
        let mut turns = Turns::default();
        assert!(turns.feed(0, &[0.9, 0.1], 0.5).is_empty());
        assert!(turns.feed(1, &[0.9, 0.7], 0.5).is_empty());
        let closed = turns.feed(2, &[0.2, 0.7], 0.5);
        let run = |speaker, first, last| Run {
            speaker,
            first,
            last,
        };
        assert_eq!(closed, [run(0, 0, 1)]);
        assert_eq!(turns.open().collect::<Vec<_>>(), [run(1, 1, 2)]);
        assert!(turns.feed(3, &[], 0.5).len() == 1);
        assert!(turns.close_all().is_empty());
        let (start, end) = span_seconds(0, 1);
        assert_eq!(start, (495.0 - 135.0) / 16_000.0);
        assert_eq!(end, (270.0 + 495.0 + 135.0) / 16_000.0);
    }
}
