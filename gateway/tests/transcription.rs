//! Local whisper (the catalog's `whisper-tiny.en`) behind `/v1/audio/transcriptions`, through
//! the real server: speech synthesised here by espeak-ng, sent as wav, flac, ogg/vorbis and
//! mp3 (encoded here with flac, oggenc and lame), answered in every response format; bad and
//! oversized files; translations refused by the English-only model; audio seconds in the
//! metrics and the session's budget. Needs `aigw models fetch --default` and
//! `scripts/setup --test`; skips without them unless `AIGW_REQUIRE_MODELS=1`.

#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test harness"
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use aigw_gateway::config::Config;
use aigw_gateway::server;
use aigw_gateway::state::AppState;
use reqwest::multipart::{Form, Part};
use serde_json::Value;

const SENTENCE: &str = "The quick brown fox jumps over the lazy dog. \
                        A game master rolls the dice for the party.";
/// Words tiny.en gets right in espeak-ng's rendering of [`SENTENCE`].
const EXPECTED: &[&str] = &[
    "quick", "brown", "fox", "lazy", "dog", "game", "master", "rolls", "dice", "party",
];

fn required() -> bool {
    std::env::var("AIGW_REQUIRE_MODELS").is_ok()
}

fn skip(why: &str) -> Option<Clips> {
    assert!(!required(), "AIGW_REQUIRE_MODELS is set but {why}");
    eprintln!("skipping: {why}");
    None
}

/// The speech clip in every container, made once per test binary.
struct Clips {
    _dir: tempfile::TempDir,
    wav: PathBuf,
    encoded: Vec<(&'static str, PathBuf)>,
}

fn run(cmd: &mut Command) -> bool {
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn clips() -> Option<&'static Clips> {
    static CLIPS: OnceLock<Option<Clips>> = OnceLock::new();
    CLIPS
        .get_or_init(|| {
            let entry = aigw_models::catalog::lookup(aigw_models::catalog::WHISPER_TINY_EN)?;
            let dir = aigw_models::store::model_dir();
            if !aigw_models::store::resolve(entry, &dir).is_ok_and(|r| r.is_present()) {
                return skip("whisper-tiny.en is missing (aigw models fetch --default)");
            }
            let tmp = tempfile::tempdir().unwrap();
            let wav = tmp.path().join("clip.wav");
            let spoke = run(Command::new("espeak-ng")
                .args(["-v", "en-us", "-s", "120", "-w"])
                .arg(&wav)
                .arg(SENTENCE));
            if !spoke {
                return skip("espeak-ng is not installed (scripts/setup --test)");
            }
            let mut encoded = Vec::new();
            let out = |ext: &str| tmp.path().join(format!("clip.{ext}"));
            let encoders: [(&str, Command); 3] = [
                ("flac", {
                    let mut c = Command::new("flac");
                    c.arg("-s").arg("-f").arg("-o").arg(out("flac")).arg(&wav);
                    c
                }),
                ("ogg", {
                    let mut c = Command::new("oggenc");
                    c.args(["-Q", "-q", "8", "-o"]).arg(out("ogg")).arg(&wav);
                    c
                }),
                ("mp3", {
                    let mut c = Command::new("lame");
                    c.args(["--silent", "-b", "192"]).arg(&wav).arg(out("mp3"));
                    c
                }),
            ];
            for (ext, mut cmd) in encoders {
                if run(&mut cmd) {
                    encoded.push((ext, out(ext)));
                } else {
                    assert!(!required(), "cannot encode {ext} (scripts/setup --test)");
                    eprintln!("not testing {ext}: its encoder is not installed");
                }
            }
            Some(Clips {
                _dir: tmp,
                wav,
                encoded,
            })
        })
        .as_ref()
}

/// Starts a server whose `whisper` alias is the local tiny.en.
async fn serve(extra: &str) -> String {
    let toml = format!(
        r#"
[server]
max_audio_body_bytes = 2000000
{extra}
[local]
max_audio_secs = 20

[[local.models]]
name = "whisper"
model = "whisper-tiny.en"
"#
    );
    let state = AppState::new(Config::parse(&toml, &|_| None).unwrap()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(server::run(listener, state, std::future::pending()));
    url
}

async fn transcribe(
    url: &str,
    path: &str,
    file: Vec<u8>,
    name: &str,
    fields: &[(&str, &str)],
) -> reqwest::Response {
    let mut form = Form::new()
        .part("file", Part::bytes(file).file_name(name.to_owned()))
        .text("model", "whisper");
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

fn words_of(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric() && c != '\'')
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// Words heard even through lossy codecs (vorbis, mp3), which sway a word or two.
const CORE: &[&str] = &["quick", "fox", "lazy", "dog", "dice", "party"];

fn assert_heard(text: &str) {
    assert_heard_all(text, EXPECTED);
}

fn assert_heard_all(text: &str, expected: &[&str]) {
    let words = words_of(text);
    for w in expected {
        assert!(words.iter().any(|x| x == w), "{w:?} not heard in {text:?}");
    }
}

async fn error_of(resp: reqwest::Response, status: u16) -> Value {
    assert_eq!(resp.status().as_u16(), status);
    let body: Value = resp.json().await.unwrap();
    assert!(body["error"]["message"].is_string(), "{body}");
    body["error"].clone()
}

#[tokio::test]
async fn every_response_format_through_the_server() {
    let Some(clips) = clips() else {
        return;
    };
    let url = serve("").await;
    let wav = std::fs::read(&clips.wav).unwrap();
    let post = |fields: &'static [(&'static str, &'static str)]| {
        transcribe(
            &url,
            "/v1/audio/transcriptions",
            wav.clone(),
            "clip.wav",
            fields,
        )
    };

    let started = std::time::Instant::now();
    let resp = post(&[]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(resp.headers()["x-aigw-deployment"], "local:whisper");
    let json: Value = resp.json().await.unwrap();
    eprintln!("json in {:?}: {json}", started.elapsed());
    assert_heard(json["text"].as_str().unwrap());
    assert_eq!(
        json["usage"],
        serde_json::json!({"type": "duration", "seconds": 9.0})
    );
    assert_eq!(
        json.as_object().unwrap().len(),
        2,
        "only text and usage: {json}"
    );

    let text = post(&[("response_format", "text")]).await;
    assert!(
        text.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = text.text().await.unwrap();
    assert!(text.ends_with('\n') && !text.ends_with("\n\n"), "{text:?}");
    assert_heard(&text);
    assert_eq!(text.trim_end(), json["text"].as_str().unwrap());

    let srt = post(&[("response_format", "srt")])
        .await
        .text()
        .await
        .unwrap();
    let cues: Vec<&str> = srt.split("\n\n").filter(|c| !c.is_empty()).collect();
    assert!(!cues.is_empty(), "{srt:?}");
    for (i, cue) in cues.iter().enumerate() {
        let lines: Vec<&str> = cue.lines().collect();
        assert_eq!(lines[0], (i + 1).to_string(), "{srt}");
        let (from, to) = lines[1].split_once(" --> ").unwrap();
        for t in [from, to] {
            assert!(
                t.len() == 12 && &t[8..9] == "," && t.starts_with("00:00:0"),
                "{t}"
            );
        }
    }
    assert_heard(&srt);

    let vtt = post(&[("response_format", "vtt")])
        .await
        .text()
        .await
        .unwrap();
    assert!(
        vtt.starts_with("WEBVTT\n\n00:00:00.000 --> 00:00:0"),
        "{vtt:?}"
    );
    assert_heard(&vtt);

    let verbose: Value = post(&[("response_format", "verbose_json")])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(verbose["task"], "transcribe");
    assert_eq!(verbose["language"], "english");
    let duration = verbose["duration"].as_f64().unwrap();
    assert!((8.0..8.1).contains(&duration), "{duration}");
    assert_eq!(verbose["text"], json["text"]);
    assert!(verbose.get("words").is_none());
    let segments = verbose["segments"].as_array().unwrap();
    assert!(!segments.is_empty());
    for (i, s) in segments.iter().enumerate() {
        assert_eq!(s["id"], i);
        for field in [
            "seek",
            "start",
            "end",
            "temperature",
            "avg_logprob",
            "compression_ratio",
            "no_speech_prob",
        ] {
            assert!(s[field].is_number(), "{field} in {s}");
        }
        assert!(s["tokens"].as_array().is_some_and(|t| !t.is_empty()) && s["text"].is_string());
        assert!(
            s["end"].as_f64() > s["start"].as_f64() && s["end"].as_f64().unwrap() <= duration + 0.5
        );
    }
    assert_eq!(verbose["usage"]["seconds"], 9.0);

    let worded: Value = post(&[
        ("response_format", "verbose_json"),
        ("timestamp_granularities[]", "word"),
        ("timestamp_granularities[]", "segment"),
    ])
    .await
    .json()
    .await
    .unwrap();
    let words = worded["words"].as_array().unwrap();
    let said: Vec<String> = words
        .iter()
        .map(|w| w["word"].as_str().unwrap().to_owned())
        .collect();
    assert_heard(&said.join(" "));
    let at = |w: &str| {
        words
            .iter()
            .find(|x| words_of(x["word"].as_str().unwrap()) == [w])
            .unwrap()["start"]
            .as_f64()
            .unwrap()
    };
    assert!(at("fox") < at("dog") && at("dog") < at("dice"), "{words:?}");
    assert!(worded["segments"].is_array());

    // language, prompt and temperature are honoured; a prompt does not leak into the text.
    let resp = post(&[
        ("language", "en"),
        ("prompt", "Dice, dragons."),
        ("temperature", "0.2"),
    ])
    .await;
    assert_eq!(resp.status(), 200);
    let prompted: Value = resp.json().await.unwrap();
    // Sampling at 0.2 may sway a word.
    assert_heard_all(prompted["text"].as_str().unwrap(), CORE);
    assert!(
        !prompted["text"].as_str().unwrap().contains("dragons"),
        "{prompted}"
    );
}

#[tokio::test]
async fn flac_ogg_and_mp3_uploads_are_decoded() {
    let Some(clips) = clips() else {
        return;
    };
    let url = serve("").await;
    for (ext, path) in &clips.encoded {
        let name = format!("clip.{ext}");
        let resp = transcribe(
            &url,
            "/v1/audio/transcriptions",
            std::fs::read(path).unwrap(),
            &name,
            &[("response_format", "text")],
        )
        .await;
        assert_eq!(resp.status(), 200, "{ext}");
        let text = resp.text().await.unwrap();
        eprintln!("{ext}: {text:?}");
        assert_heard_all(&text, if *ext == "flac" { EXPECTED } else { CORE });
        // The container is found from the bytes, not the name.
        let renamed = transcribe(
            &url,
            "/v1/audio/transcriptions",
            std::fs::read(path).unwrap(),
            "upload.bin",
            &[],
        )
        .await;
        assert_eq!(renamed.status(), 200, "{ext} without its extension");
    }
}

#[tokio::test]
async fn bad_files_and_limits_get_openai_errors() {
    let Some(clips) = clips() else {
        return;
    };
    let url = serve("").await;
    let path = "/v1/audio/transcriptions";
    let wav = std::fs::read(&clips.wav).unwrap();

    let garbage = b"definitely not audio \x00\x01\x02".repeat(200);
    let e = error_of(transcribe(&url, path, garbage, "clip.mp3", &[]).await, 400).await;
    assert_eq!(
        (e["param"].as_str(), e["code"].as_str()),
        (Some("file"), Some("invalid_value")),
        "{e}"
    );
    let noise: Vec<u8> = (0u32..300_000)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let e = error_of(transcribe(&url, path, noise, "noise.mp3", &[]).await, 400).await;
    assert_eq!(e["param"], "file", "{e}");
    let e = error_of(
        transcribe(&url, path, Vec::new(), "clip.wav", &[]).await,
        400,
    )
    .await;
    assert_eq!(e["param"], "file", "{e}");
    let e = error_of(
        transcribe(&url, path, wav[..44].to_vec(), "clip.wav", &[]).await,
        400,
    )
    .await;
    assert_eq!(e["param"], "file", "a wav header without samples: {e}");

    // Longer than local.max_audio_secs (20 s): 413 without transcribing it.
    let long = long_wav(&clips.wav, 3);
    let started = std::time::Instant::now();
    let e = error_of(transcribe(&url, path, long, "long.wav", &[]).await, 413).await;
    assert_eq!(e["code"], "audio_too_long", "{e}");
    assert!(
        started.elapsed().as_secs() < 3,
        "refused only after {:?}",
        started.elapsed()
    );
    // Larger than server.max_audio_body_bytes (2 MB): 413 from the upload limit.
    let huge = long_wav(&clips.wav, 8);
    assert!(huge.len() > 2_000_000);
    let e = error_of(transcribe(&url, path, huge, "huge.wav", &[]).await, 413).await;
    assert_eq!(e["code"], "request_too_large", "{e}");

    let field = |fields: &'static [(&'static str, &'static str)]| {
        transcribe(&url, path, wav.clone(), "clip.wav", fields)
    };
    for (fields, param) in [
        (&[("response_format", "xml")][..], "response_format"),
        (&[("temperature", "2")][..], "temperature"),
        (&[("language", "fr")][..], "language"),
        (&[("language", "klingon")][..], "language"),
        (
            &[("timestamp_granularities[]", "word")][..],
            "timestamp_granularities",
        ),
    ] {
        let e = error_of(field(fields).await, 400).await;
        assert_eq!(e["param"], param, "{fields:?}: {e}");
    }

    // tiny.en cannot translate.
    let e = error_of(
        transcribe(&url, "/v1/audio/translations", wav.clone(), "clip.wav", &[]).await,
        400,
    )
    .await;
    assert!(
        e["message"].as_str().unwrap().contains("English-only"),
        "{e}"
    );
    assert_eq!(e["code"], "unsupported_endpoint");

    // Still serving after all that.
    let ok: Value = field(&[]).await.json().await.unwrap();
    assert_heard(ok["text"].as_str().unwrap());
}

#[tokio::test]
async fn audio_seconds_are_metered_and_budgeted() {
    let Some(clips) = clips() else {
        return;
    };
    let url = serve(
        r#"
[budgets]
default_policy = "listener"

[budgets.policies.listener]
audio_secs = 12
"#,
    )
    .await;
    let wav = std::fs::read(&clips.wav).unwrap();
    let ask = || async {
        reqwest::Client::new()
            .post(format!("{url}/v1/audio/transcriptions"))
            .header("x-session-id", "table-7")
            .multipart(
                Form::new()
                    .part("file", Part::bytes(wav.clone()).file_name("clip.wav"))
                    .text("model", "whisper"),
            )
            .send()
            .await
            .unwrap()
    };
    let first = ask().await;
    assert_eq!(first.status(), 200);
    let remaining = first.headers()["x-aigw-budget-remaining"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        remaining.contains("audio_secs=4.0") || remaining.contains("audio_secs=3.9"),
        "{remaining}"
    );
    // 4 s left: admitted (a second is held), then settled past the ceiling...
    assert_eq!(ask().await.status(), 200);
    // ...after which the session is refused.
    let refused = ask().await;
    let e = error_of(refused, 429).await;
    assert_eq!(e["code"], "insufficient_quota");

    let metrics = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("aigw_audio_seconds_total{model=\"whisper\"}"))
        .unwrap_or_else(|| panic!("no audio seconds in {metrics}"));
    let secs: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((16.0..16.2).contains(&secs), "{line}");
    let load: Value = reqwest::get(format!("{url}/load"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(load.to_string().contains("\"transcription\""), "{load}");
}

/// `clip` repeated `times` times, as one PCM16 wav.
fn long_wav(clip: &Path, times: usize) -> Vec<u8> {
    let bytes = std::fs::read(clip).unwrap();
    // espeak-ng writes a canonical 44-byte header (its data size is often left unset).
    let (header, samples) = bytes.split_at(44);
    let data = samples.repeat(times);
    let mut out = header.to_vec();
    out[4..8].copy_from_slice(&(36 + data.len() as u32).to_le_bytes());
    out[40..44].copy_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(&data);
    out
}
