//! Speaker embeddings of a window's local speakers, from the frames where each speaks alone.
//!
//! diart weights each frame's contribution to a local speaker's embedding by that speaker's
//! activity, with an overlapped-speech penalty that all but removes frames where another
//! speaker also talks. CAM++ normalises its features by their mean over the input and
//! pools statistics over the whole input, so instead of weighting its pooling we give it only
//! the frames that count: the window's fbank frames where the speaker is active and every
//! other local speaker is not (the penalty in its hard form). When that leaves less than
//! [`MIN_CLEAN_FRAMES`], the frames where the speaker is active at all (overlaps included)
//! are used; below [`MIN_FRAMES`] the speaker gets no embedding in this window. At most the
//! latest [`MAX_FRAMES`] are used.

use super::clustering::normalize;
use crate::campplus::CamPlusPlus;
use crate::fbank::{self, FRAME_LENGTH, FRAME_SHIFT, NUM_MEL_BINS};
use crate::parallel::parallel_map;
use crate::segmentation::{FRAME_SPAN, FRAME_STEP, LOCAL_SPEAKERS};
use crate::weights::ModelError;

/// Activity from which a frame counts as speech of a speaker.
const SPEECH: f32 = 0.5;
/// Fbank frames (10 ms each) of clean speech preferred for an embedding: 0.5 s.
const MIN_CLEAN_FRAMES: usize = 50;
/// Fewest fbank frames an embedding is computed from: 0.2 s.
const MIN_FRAMES: usize = 20;
/// Most fbank frames an embedding is computed from (the speaker's latest): 1.5 s. Enough for a
/// steady embedding, and CAM++'s cost grows with its input: on pyannote's sample clip the
/// DER is the same as with 2 s or the whole window, and so it is on the synthetic
/// conversations of `bench/diarization/evaluate.py`, for about a quarter less CAM++ work
/// than 2 s.
const MAX_FRAMES: usize = 150;

/// For each fbank frame of a window, the segmentation frame nearest to its centre.
pub(crate) fn fbank_to_segmentation(fbank_frames: usize, seg_frames: usize) -> Vec<usize> {
    let last = seg_frames.saturating_sub(1);
    (0..fbank_frames)
        .map(|f| {
            let centre = (f * FRAME_SHIFT + FRAME_LENGTH / 2) as f64;
            let seg = (centre - (FRAME_SPAN - 1) as f64 / 2.0) / FRAME_STEP as f64;
            (seg.round().max(0.0) as usize).min(last)
        })
        .collect()
}

/// The fbank frames to embed speaker `speaker` from, or `None` when too few.
fn select_frames(
    activity: &[[f32; LOCAL_SPEAKERS]],
    mapping: &[usize],
    speaker: usize,
) -> Option<Vec<usize>> {
    let speaks = |f: usize| activity[mapping[f]][speaker] >= SPEECH;
    let alone = |f: usize| {
        (0..LOCAL_SPEAKERS).all(|other| other == speaker || activity[mapping[f]][other] < SPEECH)
    };
    let clean: Vec<usize> = (0..mapping.len())
        .filter(|&f| speaks(f) && alone(f))
        .collect();
    if clean.len() >= MIN_CLEAN_FRAMES {
        return Some(clean);
    }
    let any: Vec<usize> = (0..mapping.len()).filter(|&f| speaks(f)).collect();
    (any.len() >= MIN_FRAMES).then_some(any)
}

/// Unit-length embeddings of the local speakers `speakers` of one window, from the window's
/// fbank features (row-major `(frames, 80)`, not mean-normalised) and its per-frame speaker
/// activities; `None` for a speaker with too little speech. The embeddings are computed on up
/// to `threads` threads.
pub(crate) fn embed_speakers(
    model: &CamPlusPlus,
    features: &[f32],
    activity: &[[f32; LOCAL_SPEAKERS]],
    speakers: &[usize],
    threads: usize,
) -> Result<Vec<Option<Vec<f32>>>, ModelError> {
    let mapping = fbank_to_segmentation(features.len() / NUM_MEL_BINS, activity.len());
    let inputs: Vec<Option<Vec<f32>>> = speakers
        .iter()
        .map(|&speaker| {
            let mut frames = select_frames(activity, &mapping, speaker)?;
            if frames.len() > MAX_FRAMES {
                frames.drain(..frames.len() - MAX_FRAMES);
            }
            let mut selected = Vec::with_capacity(frames.len() * NUM_MEL_BINS);
            for f in &frames {
                selected.extend_from_slice(&features[f * NUM_MEL_BINS..(f + 1) * NUM_MEL_BINS]);
            }
            Some(selected)
        })
        .collect();
    let present: Vec<(usize, &[f32])> = inputs
        .iter()
        .enumerate()
        .filter_map(|(i, input)| Some((i, input.as_deref()?)))
        .collect();
    // As many speakers at once as there are threads; the rest share the threads within one
    // embedding (e.g. 3 speakers on 2 threads: two side by side, then one on both).
    let threads = threads.max(1);
    let mut computed = Vec::with_capacity(present.len());
    for round in present.chunks(threads) {
        let within = threads / round.len();
        computed.extend(parallel_map(round, round.len(), |&(_, input)| {
            embed(model, input, within)
        })?);
    }
    let mut embeddings: Vec<Option<Vec<f32>>> = vec![None; inputs.len()];
    for ((i, _), embedding) in present.into_iter().zip(computed) {
        embeddings[i] = Some(embedding);
    }
    Ok(embeddings)
}

/// The unit-length embedding of selected, not yet mean-normalised fbank frames.
fn embed(model: &CamPlusPlus, selected: &[f32], threads: usize) -> Result<Vec<f32>, ModelError> {
    let mut input = selected.to_vec();
    fbank::subtract_mean(&mut input, NUM_MEL_BINS);
    let mut embedding = model.embed_frames(&input, input.len() / NUM_MEL_BINS, threads)?;
    normalize(&mut embedding);
    Ok(embedding)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fbank_frames_map_to_the_nearest_segmentation_frame() {
        let map = fbank_to_segmentation(fbank::num_frames(80_000), 293);
        assert_eq!(map.len(), 498);
        assert_eq!(map[0], 0);
        assert_eq!(*map.last().unwrap_or(&0), 292);
        // Fbank frame 100 is centred on sample 16 200, segmentation frame 58 on 16 155.
        assert_eq!(map[100], 58);
        assert!(map.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn clean_frames_are_preferred_then_overlaps_then_nothing() {
        let mapping: Vec<usize> = (0..100).collect();
        // Speaker 0 speaks frames 0..95; speaker 1 overlaps it on 0..40.
        let mut activity = vec![[0.0f32; 3]; 100];
        for (f, row) in activity.iter_mut().enumerate() {
            row[0] = if f < 95 { 0.9 } else { 0.1 };
            row[1] = if f < 40 { 0.8 } else { 0.0 };
            row[2] = if f < 10 { 0.7 } else { 0.0 };
        }
        let zero = select_frames(&activity, &mapping, 0).unwrap();
        assert_eq!(zero, (40..95).collect::<Vec<_>>());
        // Speaker 1 never speaks alone: all 40 of its frames, overlaps included.
        assert_eq!(select_frames(&activity, &mapping, 1).unwrap().len(), 40);
        // Speaker 2 has 10 frames: too few.
        assert!(select_frames(&activity, &mapping, 2).is_none());
    }
}
