//! Streaming diarisation on a two-speaker conversation that espeak-ng synthesises here (two
//! voices, alternating, with pauses): the speakers found, where their turns fall, and the
//! streaming contract (chunking does not matter, open turns are revised, finish is final).
//! Needs the catalog's segmentation-3.0 and CAM++ weights and espeak-ng; skips without them
//! unless `AIGW_REQUIRE_MODELS=1`.

#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests"
)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use aigw_audio::decode::decode;
use aigw_audio::diarize::{
    DiarizationConfig, DiarizationModels, SpeakerTurn, StreamingDiarizer, diarize_file,
};
use aigw_models::catalog::lookup;
use aigw_models::store;

const RATE: f64 = 16_000.0;
const PAUSE_S: f64 = 0.8;
/// (voice, words) in speaking order: A, B, A, B.
const SCRIPT: [(&str, &str); 4] = [
    (
        "en+m3",
        "Hello there, this is the first speaker talking about the weather today.",
    ),
    (
        "en+f3",
        "And I am the second speaker, answering with a rather different voice.",
    ),
    (
        "en+m3",
        "The first speaker again, asking whether the dragon was ever found.",
    ),
    (
        "en+f3",
        "It was hiding in the cave behind the old mill, of course.",
    ),
];

fn required() -> bool {
    std::env::var("AIGW_REQUIRE_MODELS").is_ok_and(|v| v == "1")
}

/// The segmentation and CAM++ weight files, or `None` (skip) when they are missing.
fn model_files() -> Option<[PathBuf; 2]> {
    let dir = store::model_dir();
    let mut files = Vec::new();
    for id in ["pyannote-segmentation-3.0", "campplus-sv"] {
        let resolved = store::resolve(lookup(id).unwrap(), &dir).unwrap();
        if !resolved.is_present() {
            assert!(!required(), "AIGW_REQUIRE_MODELS=1 but {id} is missing");
            eprintln!("skipping: {id} is missing (aigw models fetch {id})");
            return None;
        }
        files.push(resolved.main_file().unwrap().to_owned());
    }
    files.try_into().ok()
}

/// The models as the server loads them (two step threads on a machine with two cores).
fn models() -> Option<Arc<DiarizationModels>> {
    static MODELS: OnceLock<Option<Arc<DiarizationModels>>> = OnceLock::new();
    MODELS
        .get_or_init(|| {
            let [segmentation, embedding] = model_files()?;
            Some(Arc::new(
                DiarizationModels::load(&segmentation, &embedding).unwrap(),
            ))
        })
        .clone()
}

/// Reference turns: `(speaker index, start, end)`.
type Reference = Vec<(usize, f64, f64)>;

/// The conversation at 16 kHz and its reference turns.
fn conversation() -> Option<&'static (Vec<f32>, Reference)> {
    static CLIP: OnceLock<Option<(Vec<f32>, Reference)>> = OnceLock::new();
    CLIP.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let mut samples = Vec::new();
        let mut reference = Vec::new();
        for (i, (voice, words)) in SCRIPT.iter().enumerate() {
            let wav = dir.path().join(format!("{i}.wav"));
            let status = Command::new("espeak-ng")
                .args(["-v", voice, "-s", "150", "-w"])
                .arg(&wav)
                .arg(words)
                .status();
            if !status.is_ok_and(|s| s.success()) {
                assert!(
                    !required(),
                    "AIGW_REQUIRE_MODELS=1 but espeak-ng is missing"
                );
                eprintln!("skipping: espeak-ng is not installed (scripts/setup --test)");
                return None;
            }
            let audio = decode(std::fs::read(&wav).unwrap(), Some("wav"), 60.0).unwrap();
            // Trim espeak's leading and trailing silence so the reference is exact.
            let speech = |s: &&f32| s.abs() > 0.01;
            let first = audio.samples.iter().position(|s| speech(&s)).unwrap();
            let last = audio.samples.iter().rposition(|s| speech(&s)).unwrap();
            let start = samples.len() as f64 / RATE;
            samples.extend_from_slice(&audio.samples[first..=last]);
            reference.push((i % 2, start, samples.len() as f64 / RATE));
            samples.extend(std::iter::repeat_n(0.0, (PAUSE_S * RATE) as usize));
        }
        Some((samples, reference))
    })
    .as_ref()
}

/// Seconds of `turns` by `speaker` within `[start, end)`.
fn overlap(turns: &[SpeakerTurn], speaker: &str, start: f64, end: f64) -> f64 {
    turns
        .iter()
        .filter(|t| t.speaker == speaker)
        .map(|t| (t.end.min(end) - t.start.max(start)).max(0.0))
        .sum()
}

/// Checks the final turns against the reference: two speakers, each reference turn mostly
/// covered by one of them (alternating), little speech in the pauses.
fn check(turns: &[SpeakerTurn], reference: &[(usize, f64, f64)], label: &str) {
    eprintln!("{label}:");
    for t in turns {
        eprintln!("  {} {:.2}–{:.2}", t.speaker, t.start, t.end);
    }
    assert!(turns.iter().all(|t| t.final_ && t.end > t.start));
    let mut speakers: Vec<&str> = turns.iter().map(|t| t.speaker.as_str()).collect();
    speakers.sort_unstable();
    speakers.dedup();
    assert_eq!(speakers.len(), 2, "{label}: speakers {speakers:?}");
    let mut who = [None, None];
    for &(voice, start, end) in reference {
        let (best, covered) = speakers
            .iter()
            .map(|s| (*s, overlap(turns, s, start, end)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap();
        let share = covered / (end - start);
        eprintln!("  reference {voice} {start:.2}–{end:.2}: {best} covers {share:.2}");
        assert!(
            share >= 0.8,
            "{label}: {start:.2}–{end:.2} covered {share:.2}"
        );
        assert_eq!(
            *who[voice].get_or_insert(best),
            best,
            "{label}: voice {voice}"
        );
        // The other speaker barely intrudes.
        let other: f64 = speakers
            .iter()
            .filter(|s| **s != best)
            .map(|s| overlap(turns, s, start, end))
            .sum();
        assert!(
            other / (end - start) <= 0.2,
            "{label}: intrusion {other:.2}"
        );
        // Turn boundaries within 0.5 s of the reference's.
        let near = |x: f64, y: f64| (x - y).abs() <= 0.5;
        assert!(
            turns
                .iter()
                .any(|t| t.speaker == best && near(t.start, start)),
            "{label}: no turn starts near {start:.2}"
        );
        assert!(
            turns.iter().any(|t| t.speaker == best && near(t.end, end)),
            "{label}: no turn ends near {end:.2}"
        );
    }
    assert_ne!(who[0], who[1], "{label}: both voices got one label");
}

#[test]
fn two_voices_are_told_apart_at_both_latencies() {
    let (Some(models), Some((samples, reference))) = (models(), conversation()) else {
        return;
    };
    for latency_s in [0.5, 5.0] {
        let config = DiarizationConfig {
            latency_s,
            ..DiarizationConfig::default()
        };
        let started = Instant::now();
        let turns = diarize_file(&models, &config, samples).unwrap();
        let secs = samples.len() as f64 / RATE;
        eprintln!(
            "latency {latency_s} s: {secs:.1} s of audio in {:.2} s",
            started.elapsed().as_secs_f64()
        );
        check(&turns, reference, &format!("latency {latency_s} s"));
    }
}

#[test]
fn one_step_thread_gives_the_same_turns_as_two() {
    let (Some([segmentation, embedding]), Some((samples, _))) = (model_files(), conversation())
    else {
        return;
    };
    let samples = &samples[..samples.len().min(8 * RATE as usize)];
    let config = DiarizationConfig::default();
    let turns = |threads: usize| {
        let models = DiarizationModels::load(&segmentation, &embedding)
            .unwrap()
            .with_threads(threads);
        diarize_file(&Arc::new(models), &config, samples).unwrap()
    };
    let serial = turns(1);
    assert!(!serial.is_empty());
    assert_eq!(serial, turns(2));
}

#[test]
fn streaming_in_chunks_gives_the_file_result_with_revisions_on_the_way() {
    let (Some(models), Some((samples, _))) = (models(), conversation()) else {
        return;
    };
    let config = DiarizationConfig {
        latency_s: 1.0,
        ..DiarizationConfig::default()
    };
    let whole = diarize_file(&models, &config, samples).unwrap();
    let mut session = StreamingDiarizer::new(Arc::clone(&models), config);
    let mut finals = Vec::new();
    let mut revisions = 0;
    // 20 ms chunks of uneven size, as a WebSocket client would send them.
    let mut at = 0;
    for size in [320, 317, 333].iter().cycle() {
        if at >= samples.len() {
            break;
        }
        let end = (at + size).min(samples.len());
        for turn in session.push(&samples[at..end]).unwrap() {
            if turn.final_ {
                finals.push(turn);
            } else {
                revisions += 1;
                assert!(
                    turn.end <= end as f64 / RATE + 1e-9,
                    "no turn ends in the future"
                );
            }
        }
        at = end;
    }
    let tail = session.finish().unwrap();
    assert!(tail.iter().all(|t| t.final_));
    finals.extend(tail);
    finals.sort_by(|a, b| a.start.total_cmp(&b.start).then(a.end.total_cmp(&b.end)));
    assert_eq!(finals, whole);
    assert!(revisions > 0, "open turns are reported as they grow");
    assert!(session.finish().unwrap().is_empty());
    assert!(session.push(&[0.0; 160]).is_err(), "no audio after finish");
}

#[test]
fn silence_and_tiny_inputs_give_no_turns() {
    let Some(models) = models() else {
        return;
    };
    let config = DiarizationConfig::default();
    assert!(diarize_file(&models, &config, &[]).unwrap().is_empty());
    assert!(
        diarize_file(&models, &config, &[0.0; 100])
            .unwrap()
            .is_empty()
    );
    assert!(
        diarize_file(&models, &config, &vec![0.0; 48_000])
            .unwrap()
            .is_empty()
    );
    fn is_send<T: Send>() {}
    is_send::<StreamingDiarizer>();
}
