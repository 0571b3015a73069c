//! A transcript in OpenAI's response formats: `json`, `verbose_json`, `diarized_json`, `text`,
//! `srt`, `vtt`.

use aigw_audio::diarize::SpeakerTurn;
use aigw_audio::whisper::Transcript;
use aigw_models::openai::{
    TranscriptionDiarized, TranscriptionDiarizedSegment, TranscriptionResponse,
    TranscriptionSegment, TranscriptionUsage, TranscriptionVerbose, TranscriptionWord,
};
use bytes::Bytes;

use super::{Form, Format};
use crate::providers::{AudioResponse, AudioTask, ProviderError};

/// The answer in the requested format (`turns`: the diarisation, for `diarized_json`).
pub(super) fn render(
    form: &Form,
    task: AudioTask,
    t: &Transcript,
    turns: &[SpeakerTurn],
) -> Result<AudioResponse, ProviderError> {
    let usage = TranscriptionUsage::duration(t.duration.ceil());
    let (content_type, body) = match form.format {
        Format::Json => {
            let mut extra = aigw_models::openai::Extra::new();
            extra.insert(
                "usage".into(),
                serde_json::to_value(&usage).unwrap_or_default(),
            );
            let body = TranscriptionResponse {
                text: t.text.clone(),
                extra,
            };
            ("application/json", to_json(&body)?)
        }
        Format::VerboseJson => {
            let body = TranscriptionVerbose {
                task: match task {
                    AudioTask::Transcription | AudioTask::Diarization => "transcribe".into(),
                    AudioTask::Translation => "translate".into(),
                },
                language: if task == AudioTask::Translation {
                    "english".into()
                } else {
                    t.language_name.clone()
                },
                duration: round2(t.duration),
                text: t.text.clone(),
                segments: form.segments.then(|| segments(t)),
                words: form.options.words.then(|| words(t)),
                usage: Some(usage),
            };
            ("application/json", to_json(&body)?)
        }
        Format::DiarizedJson => {
            let body = TranscriptionDiarized {
                task: "transcribe".into(),
                duration: round2(t.duration),
                text: t.text.clone(),
                segments: diarized_segments(t, turns),
                usage: Some(usage),
            };
            ("application/json", to_json(&body)?)
        }
        Format::Text => ("text/plain; charset=utf-8", format!("{}\n", t.text).into()),
        Format::Srt => ("text/plain; charset=utf-8", srt(t).into()),
        Format::Vtt => ("text/plain; charset=utf-8", vtt(t).into()),
    };
    Ok(AudioResponse {
        content_type: content_type.into(),
        body,
        audio_secs: Some(t.duration),
    })
}

fn to_json(value: &impl serde::Serialize) -> Result<Bytes, ProviderError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| ProviderError::Engine(e.to_string()))
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn segments(t: &Transcript) -> Vec<TranscriptionSegment> {
    t.segments
        .iter()
        .map(|s| TranscriptionSegment {
            id: s.id as u32,
            seek: (s.start * 100.0).round() as u32,
            start: round2(s.start),
            end: round2(s.end),
            text: s.text.clone(),
            tokens: s.tokens.clone(),
            temperature: s.temperature,
            avg_logprob: s.avg_logprob,
            compression_ratio: s.compression_ratio,
            no_speech_prob: s.no_speech_prob,
        })
        .collect()
}

/// The segments, each labelled with the speaker whose turns overlap it most (the nearest
/// turn's speaker when none does; `speaker_0` when there are no turns at all).
fn diarized_segments(t: &Transcript, turns: &[SpeakerTurn]) -> Vec<TranscriptionDiarizedSegment> {
    t.segments
        .iter()
        .enumerate()
        .map(|(i, s)| TranscriptionDiarizedSegment {
            kind: "transcript.text.segment".into(),
            id: format!("seg_{i}"),
            start: round2(s.start),
            end: round2(s.end),
            text: s.text.trim().to_owned(),
            speaker: speaker_of(s.start, s.end, turns),
        })
        .collect()
}

pub(super) fn speaker_of(start: f64, end: f64, turns: &[SpeakerTurn]) -> String {
    let mut overlap: Vec<(&str, f64)> = Vec::new();
    for turn in turns {
        let shared = (turn.end.min(end) - turn.start.max(start)).max(0.0);
        match overlap.iter_mut().find(|(s, _)| *s == turn.speaker) {
            Some((_, total)) => *total += shared,
            None => overlap.push((&turn.speaker, shared)),
        }
    }
    let most = overlap
        .iter()
        .filter(|(_, total)| *total > 0.0)
        .max_by(|a, b| a.1.total_cmp(&b.1));
    let gap = |turn: &SpeakerTurn| (turn.start - end).max(start - turn.end).max(0.0);
    let nearest = || turns.iter().min_by(|a, b| gap(a).total_cmp(&gap(b)));
    match (most, nearest()) {
        (Some((speaker, _)), _) => (*speaker).to_owned(),
        (None, Some(turn)) => turn.speaker.clone(),
        (None, None) => "speaker_0".into(),
    }
}

fn words(t: &Transcript) -> Vec<TranscriptionWord> {
    t.words
        .iter()
        .map(|w| TranscriptionWord {
            word: w.word.clone(),
            start: round2(w.start),
            end: round2(w.end),
        })
        .collect()
}

/// `HH:MM:SS{sep}mmm`.
fn timestamp(secs: f64, sep: char) -> String {
    let ms = (secs.max(0.0) * 1000.0).round() as u64;
    let (h, m, s, ms) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    format!("{h:02}:{m:02}:{s:02}{sep}{ms:03}")
}

/// SubRip: numbered cues, `,` before the milliseconds, a blank line after each.
fn srt(t: &Transcript) -> String {
    let mut out = String::new();
    for (i, s) in t.segments.iter().enumerate() {
        out.push_str(&format!(
            "{}\n{} --> {}\n{}\n\n",
            i + 1,
            timestamp(s.start, ','),
            timestamp(s.end, ','),
            cue_text(&s.text)
        ));
    }
    out
}

/// WebVTT: the header, then cues with `.` before the milliseconds.
fn vtt(t: &Transcript) -> String {
    let mut out = String::from("WEBVTT\n\n");
    for s in &t.segments {
        out.push_str(&format!(
            "{} --> {}\n{}\n\n",
            timestamp(s.start, '.'),
            timestamp(s.end, '.'),
            cue_text(&s.text)
        ));
    }
    out
}

/// A cue's text: trimmed, and never containing the `-->` that would end it.
fn cue_text(text: &str) -> String {
    text.trim().replace("-->", "->")
}
