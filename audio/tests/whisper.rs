//! whisper tiny.en (the catalog's ggml file, converted from CTranslate2 by `aigw models
//! fetch`) transcribing speech that espeak-ng synthesises here (22.05 kHz wav, decoded and
//! resampled to 16 kHz). Skips without the model or espeak-ng unless `AIGW_REQUIRE_MODELS=1`.

#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    reason = "test harness"
)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use aigw_audio::decode::decode;
use aigw_audio::whisper::{TranscribeOptions, WhisperConfig, WhisperError, WhisperModel};
use aigw_models::catalog::{WHISPER_TINY_EN, lookup};
use aigw_models::store;

const SENTENCE: &str = "The quick brown fox jumps over the lazy dog. \
                        A game master rolls the dice for the party.";

/// The model file and a wav of [`SENTENCE`], or `None` (skip) when either cannot be had.
fn setup() -> Option<(PathBuf, Vec<u8>)> {
    let required = std::env::var("AIGW_REQUIRE_MODELS").is_ok();
    let entry = lookup(WHISPER_TINY_EN).unwrap();
    let resolved = store::resolve(entry, &store::model_dir()).unwrap();
    if !resolved.is_present() {
        assert!(
            !required,
            "AIGW_REQUIRE_MODELS is set but {WHISPER_TINY_EN} is missing"
        );
        eprintln!("skipping: {WHISPER_TINY_EN} missing (aigw models fetch --default)");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("clip.wav");
    let status = Command::new("espeak-ng")
        .args(["-v", "en-us", "-s", "120", "-w"])
        .arg(&wav)
        .arg(SENTENCE)
        .status();
    if !status.is_ok_and(|s| s.success()) {
        assert!(
            !required,
            "AIGW_REQUIRE_MODELS is set but espeak-ng is missing"
        );
        eprintln!("skipping: espeak-ng is not installed (scripts/setup --test)");
        return None;
    }
    Some((
        resolved.main_file().unwrap().to_owned(),
        std::fs::read(wav).unwrap(),
    ))
}

fn words_of(text: &str) -> Vec<String> {
    text.split_whitespace()
        .map(|w| {
            w.trim_matches(|c: char| !c.is_alphanumeric())
                .to_lowercase()
        })
        .filter(|w| !w.is_empty())
        .collect()
}

#[tokio::test]
async fn transcribes_synthetic_speech_with_segments_and_words() {
    let Some((model_path, wav)) = setup() else {
        return;
    };
    let audio = decode(wav, Some("clip.wav"), 600.0).unwrap();
    assert_eq!(audio.source_rate, 22_050, "espeak-ng speaks at 22.05 kHz");
    let model = WhisperModel::load(&model_path, WhisperConfig::default()).unwrap();
    assert!(!model.is_multilingual());

    let t0 = Instant::now();
    let options = TranscribeOptions {
        words: true,
        ..TranscribeOptions::default()
    };
    let t = model
        .transcribe(audio.samples.clone(), options)
        .await
        .unwrap();
    println!(
        "{:.2} s of audio transcribed in {:.2} s: {:?}",
        t.duration,
        t0.elapsed().as_secs_f64(),
        t.text
    );
    let got = words_of(&t.text);
    // tiny.en hears "jump" for espeak's "jumps"; the rest comes through.
    for expected in [
        "quick", "brown", "fox", "over", "lazy", "dog", "game", "master", "rolls", "dice", "party",
    ] {
        assert!(
            got.iter().any(|w| w == expected),
            "{expected:?} missing from {:?}",
            t.text
        );
    }
    assert_eq!(
        (t.language.as_str(), t.language_name.as_str()),
        ("en", "english")
    );
    assert!((t.duration - audio.duration_secs()).abs() < 1e-9);
    assert!(!t.segments.is_empty());
    let mut last_end = 0.0;
    for s in &t.segments {
        assert!(
            s.start >= last_end - 0.01 && s.end > s.start && s.end <= t.duration + 0.5,
            "{s:?}"
        );
        assert!(!s.tokens.is_empty() && s.avg_logprob < 0.0 && s.compression_ratio > 0.0);
        assert!((0.0..=1.0).contains(&s.no_speech_prob));
        last_end = s.end;
    }
    let word_list: Vec<String> = t
        .words
        .iter()
        .map(|w| words_of(&w.word).join(" "))
        .collect();
    assert_eq!(
        word_list.join(" "),
        got.join(" "),
        "words joined give the text"
    );
    let fox = t
        .words
        .iter()
        .position(|w| words_of(&w.word) == ["fox"])
        .unwrap();
    let dice = t
        .words
        .iter()
        .position(|w| words_of(&w.word) == ["dice"])
        .unwrap();
    assert!(
        t.words[fox].end <= t.words[dice].start,
        "fox is said before dice"
    );
    for w in &t.words {
        assert!(w.start <= w.end && w.end <= t.duration + 0.5, "{w:?}");
    }

    // The prompt and a fixed temperature are accepted; other languages are not (English-only).
    let prompted = TranscribeOptions {
        prompt: Some("Quick brown fox.".into()),
        temperature: 0.2,
        ..TranscribeOptions::default()
    };
    let again = model
        .transcribe(audio.samples.clone(), prompted)
        .await
        .unwrap();
    assert!(
        words_of(&again.text).contains(&"fox".to_owned()),
        "{}",
        again.text
    );
    let french = TranscribeOptions {
        language: Some("fr".into()),
        ..TranscribeOptions::default()
    };
    let err = model
        .transcribe(audio.samples.clone(), french)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            WhisperError::Unsupported {
                param: "language",
                ..
            }
        ),
        "{err:?}"
    );
    let translate = TranscribeOptions {
        translate: true,
        ..TranscribeOptions::default()
    };
    let err = model
        .transcribe(audio.samples, translate)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("English-only"), "{err}");
    assert_eq!(
        model
            .stats()
            .completed
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
}

#[tokio::test]
async fn a_full_queue_is_refused_and_dropped_callers_cancel() {
    use std::sync::atomic::Ordering::Relaxed;
    let Some((model_path, wav)) = setup() else {
        return;
    };
    let audio = decode(wav, None, 600.0).unwrap();
    let config = WhisperConfig {
        workers: 1,
        threads: 1,
        max_queue: 1,
    };
    let model = std::sync::Arc::new(WhisperModel::load(&model_path, config).unwrap());
    // Two long jobs (32 s of audio each, seconds of work): one runs, one waits.
    let long: Vec<f32> = audio.samples.repeat(4);
    let mut running = Vec::new();
    for _ in 0..2 {
        let (model, samples) = (model.clone(), long.clone());
        running.push(tokio::spawn(async move {
            model
                .transcribe(samples, TranscribeOptions::default())
                .await
        }));
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    assert_eq!(
        (
            model.stats().active.load(Relaxed),
            model.stats().queued.load(Relaxed)
        ),
        (1, 1)
    );
    let err = model
        .transcribe(audio.samples.clone(), TranscribeOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err, WhisperError::Overloaded { max_queue: 1 });

    // Dropping the callers aborts the running job and skips the queued one.
    for handle in running {
        handle.abort();
        assert!(handle.await.unwrap_err().is_cancelled());
    }
    let t0 = Instant::now();
    while model.stats().active.load(Relaxed) + model.stats().queued.load(Relaxed) > 0 {
        assert!(t0.elapsed().as_secs() < 10, "the worker never got free");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let freed = t0.elapsed();
    println!("worker free {freed:?} after the callers went away");
    // Neither job ran to its end: the running one was aborted, the queued one skipped.
    assert_eq!(model.stats().completed.load(Relaxed), 0);
    let t = model
        .transcribe(audio.samples, TranscribeOptions::default())
        .await
        .unwrap();
    assert!(words_of(&t.text).contains(&"fox".to_owned()));
}
