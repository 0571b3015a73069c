//! Local diarisation (segmentation-3.0 + CAM++, the catalog's) behind `/v1/audio/diarizations`
//! and `diarized_json` transcriptions, through the real server, on a conversation of two
//! espeak-ng voices made here: JSON and RTTM answers, settings, errors and limits, audio
//! seconds metered. Needs `aigw models fetch --default` and espeak-ng; skips without them
//! unless `AIGW_REQUIRE_MODELS=1`.

#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test harness"
)]

use std::process::Command;
use std::sync::OnceLock;

use aigw_gateway::config::Config;
use aigw_gateway::server;
use aigw_gateway::state::AppState;
use reqwest::multipart::{Form, Part};
use serde_json::Value;

/// (voice, words), alternating A, B, A.
const SCRIPT: [(&str, &str); 3] = [
    (
        "en+m3",
        "The dragon sleeps under the mountain, and nobody dares to wake it.",
    ),
    (
        "en+f3",
        "Then we shall sneak past it quietly and take the golden cup.",
    ),
    (
        "en+m3",
        "That is a terrible plan, but I have nothing better to offer.",
    ),
];
const PAUSE_S: f64 = 0.8;

fn required() -> bool {
    std::env::var("AIGW_REQUIRE_MODELS").is_ok_and(|v| v == "1")
}

/// A 16 kHz mono PCM16 wav.
fn wav(samples: &[f32]) -> Vec<u8> {
    let data = (samples.len() * 2) as u32;
    let mut out = Vec::with_capacity(44 + data as usize);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&16_000u32.to_le_bytes());
    out.extend_from_slice(&32_000u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data.to_le_bytes());
    for s in samples {
        out.extend_from_slice(&((s.clamp(-1.0, 1.0) * 32767.0) as i16).to_le_bytes());
    }
    out
}

/// Reference turns `(voice, start, end)`.
type Reference = Vec<(usize, f64, f64)>;

/// The conversation as a wav, and its reference turns.
fn conversation() -> Option<&'static (Vec<u8>, Reference)> {
    static CLIP: OnceLock<Option<(Vec<u8>, Reference)>> = OnceLock::new();
    CLIP.get_or_init(|| {
        let dir = aigw_models::store::model_dir();
        let catalog = aigw_models::catalog::Catalog::builtin();
        let present = catalog
            .defaults()
            .all(|e| aigw_models::store::resolve(e, &dir).is_ok_and(|r| r.is_present()));
        if !present {
            assert!(
                !required(),
                "AIGW_REQUIRE_MODELS=1 but default models are missing"
            );
            eprintln!("skipping: default models missing (aigw models fetch --default)");
            return None;
        }
        let tmp = tempfile::tempdir().unwrap();
        let mut samples = Vec::new();
        let mut reference = Vec::new();
        for (i, (voice, words)) in SCRIPT.iter().enumerate() {
            let path = tmp.path().join(format!("{i}.wav"));
            let ok = Command::new("espeak-ng")
                .args(["-v", voice, "-s", "150", "-w"])
                .arg(&path)
                .arg(words)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                assert!(
                    !required(),
                    "AIGW_REQUIRE_MODELS=1 but espeak-ng is missing"
                );
                eprintln!("skipping: espeak-ng is not installed (scripts/setup --test)");
                return None;
            }
            let audio = aigw_audio::decode::decode(std::fs::read(&path).unwrap(), None, 60.0)
                .unwrap()
                .samples;
            let first = audio.iter().position(|s| s.abs() > 0.01).unwrap();
            let last = audio.iter().rposition(|s| s.abs() > 0.01).unwrap();
            let start = samples.len() as f64 / 16_000.0;
            samples.extend_from_slice(&audio[first..=last]);
            reference.push((i % 2, start, samples.len() as f64 / 16_000.0));
            samples.extend(std::iter::repeat_n(0.0, (PAUSE_S * 16_000.0) as usize));
        }
        Some((wav(&samples), reference))
    })
    .as_ref()
}

/// A server with the diarisation pipeline as `diar` (and tiny.en as `whisper`).
async fn serve() -> String {
    let toml = r#"
[server]
max_audio_body_bytes = 2000000

[local]
max_audio_secs = 30

[[local.models]]
name = "whisper"
model = "whisper-tiny.en"

[[local.models]]
name = "diar"
kind = "diarization"
model = "pyannote-segmentation-3.0"
embedding_model = "campplus-sv"
"#;
    let state = AppState::new(Config::parse(toml, &|_| None).unwrap()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(server::run(listener, state, std::future::pending()));
    url
}

async fn post(url: &str, path: &str, file: Vec<u8>, fields: &[(&str, &str)]) -> reqwest::Response {
    let mut form = Form::new().part("file", Part::bytes(file).file_name("table talk.wav"));
    for (k, v) in fields {
        form = form.text((*k).to_owned(), (*v).to_owned());
    }
    reqwest::Client::new()
        .post(format!("{url}{path}"))
        .multipart(form)
        .send()
        .await
        .unwrap()
}

async fn error_of(resp: reqwest::Response, status: u16) -> Value {
    assert_eq!(resp.status().as_u16(), status);
    let body: Value = resp.json().await.unwrap();
    assert!(body["error"]["message"].is_string(), "{body}");
    body
}

/// Seconds of `segments` by `speaker` inside `[start, end)`.
fn covered(segments: &[Value], speaker: &str, start: f64, end: f64) -> f64 {
    segments
        .iter()
        .filter(|s| s["speaker"] == speaker)
        .map(|s| {
            let (s0, s1) = (s["start"].as_f64().unwrap(), s["end"].as_f64().unwrap());
            (s1.min(end) - s0.max(start)).max(0.0)
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diarizations_in_json_and_rttm() {
    let Some((clip, reference)) = conversation() else {
        return;
    };
    let url = serve().await;
    let path = "/v1/audio/diarizations";
    // No `model`: the first diarisation model; latency 5 s for steady turns.
    let resp = post(&url, path, clip.clone(), &[("latency_s", "5")]).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    eprintln!("{body}");
    let duration = body["duration"].as_f64().unwrap();
    let expected = clip.len().saturating_sub(44) as f64 / 32_000.0;
    assert!(
        (duration - expected).abs() < 0.01,
        "{duration} vs {expected}"
    );
    assert_eq!(
        body["speakers"],
        serde_json::json!(["speaker_0", "speaker_1"])
    );
    let segments = body["segments"].as_array().unwrap();
    for &(voice, start, end) in reference {
        let speaker = format!("speaker_{voice}");
        let share = covered(segments, &speaker, start, end) / (end - start);
        assert!(
            share > 0.8,
            "{speaker} covers {share:.2} of {start:.2}–{end:.2}"
        );
    }
    // RTTM, with the model named and the default latency.
    let resp = post(
        &url,
        path,
        clip.clone(),
        &[("model", "diar"), ("response_format", "rttm")],
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let rttm = resp.text().await.unwrap();
    let lines: Vec<&str> = rttm.lines().collect();
    assert!(lines.len() >= 3, "{rttm}");
    for line in &lines {
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields.len(), 10, "{line}");
        assert_eq!(&fields[..3], ["SPEAKER", "table_talk", "1"]);
        assert!(fields[3].parse::<f64>().is_ok() && fields[4].parse::<f64>().unwrap() > 0.0);
        assert!(fields[7].starts_with("speaker_"));
    }
    // Audio seconds are metered under the alias.
    let metrics = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("aigw_audio_seconds_total{model=\"diar\"}"))
        .unwrap_or_else(|| panic!("no audio seconds in {metrics}"));
    let secs: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((secs - 2.0 * duration).abs() < 0.1, "{line}");
}

#[tokio::test]
async fn bad_requests_are_openai_errors() {
    let Some((clip, _)) = conversation() else {
        return;
    };
    let url = serve().await;
    let path = "/v1/audio/diarizations";
    let e = error_of(post(&url, path, Vec::new(), &[]).await, 400).await;
    assert_eq!(e["error"]["param"], "file");
    let e = error_of(
        post(&url, path, b"RIFF not really a wav".to_vec(), &[]).await,
        400,
    )
    .await;
    assert_eq!(e["error"]["param"], "file");
    let e = error_of(
        post(&url, path, clip.clone(), &[("latency_s", "9")]).await,
        400,
    )
    .await;
    assert_eq!(e["error"]["param"], "latency_s");
    let e = error_of(
        post(&url, path, clip.clone(), &[("max_speakers", "many")]).await,
        400,
    )
    .await;
    assert_eq!(e["error"]["param"], "max_speakers");
    let e = error_of(
        post(&url, path, clip.clone(), &[("response_format", "srt")]).await,
        400,
    )
    .await;
    assert_eq!(e["error"]["param"], "response_format");
    // Longer than local.max_audio_secs (30 s).
    let long = wav(&vec![0.0; 31 * 16_000]);
    let e = error_of(post(&url, path, long, &[]).await, 413).await;
    assert_eq!(e["error"]["code"], "audio_too_long");
    // A transcription model cannot diarise, nor the diarisation model transcribe.
    error_of(
        post(&url, path, clip.clone(), &[("model", "whisper")]).await,
        400,
    )
    .await;
    let e = error_of(
        post(
            &url,
            "/v1/audio/transcriptions",
            clip.clone(),
            &[("model", "diar")],
        )
        .await,
        400,
    )
    .await;
    eprintln!("{e}");
    error_of(
        post(&url, path, clip.clone(), &[("model", "nope")]).await,
        404,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diarized_json_labels_whisper_segments() {
    let Some((clip, reference)) = conversation() else {
        return;
    };
    let url = serve().await;
    let resp = post(
        &url,
        "/v1/audio/transcriptions",
        clip.clone(),
        &[("model", "whisper"), ("response_format", "diarized_json")],
    )
    .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    eprintln!("{body:#}");
    assert_eq!(body["task"], "transcribe");
    assert!(
        body["text"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("dragon")
    );
    assert_eq!(body["usage"]["type"], "duration");
    let segments = body["segments"].as_array().unwrap();
    assert!(!segments.is_empty());
    for (i, s) in segments.iter().enumerate() {
        assert_eq!(s["type"], "transcript.text.segment");
        assert_eq!(s["id"], format!("seg_{i}"));
        assert!(s["text"].is_string() && s["start"].is_number() && s["end"].is_number());
        assert!(s["speaker"].as_str().unwrap().starts_with("speaker_"));
    }
    // The segment that mentions the golden cup is the second voice's; the dragon the first's.
    let speaker_saying = |word: &str| {
        segments
            .iter()
            .find(|s| s["text"].as_str().unwrap().to_lowercase().contains(word))
            .map(|s| s["speaker"].as_str().unwrap().to_owned())
            .unwrap_or_else(|| panic!("no segment says {word}"))
    };
    assert_ne!(speaker_saying("dragon"), speaker_saying("cup"));
    assert_eq!(speaker_saying("dragon"), speaker_saying("terrible"));
    assert!(reference.len() == 3);
}
