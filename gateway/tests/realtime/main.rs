//! `/v1/realtime?intent=transcription` through the real server, with the catalog's
//! `whisper-tiny.en` and speech synthesised here by espeak-ng: sessions streamed in real time
//! (20 ms chunks) and faster, server VAD and manual commits, binary frames at 48 kHz stereo,
//! two named tracks on one connection, malformed events, concurrent sessions, budgets and
//! metrics, and the openai Python SDK's realtime client. Needs `aigw models fetch --default`
//! and `scripts/setup --test`; skips without them unless `AIGW_REQUIRE_MODELS=1`.

#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test harness"
)]

use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use aigw_gateway::config::Config;
use aigw_gateway::server;
use aigw_gateway::state::AppState;
use base64::Engine as _;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

mod diarize;
mod flows;
mod sdk;
mod tracks;

const FOX: &str = "The quick brown fox jumps over the lazy dog.";
/// The API key of servers configured with `[[auth.keys]] key_env = "TEST_CLIENT_KEY"`.
const KEY: &str = "sk-realtime-test";
const DICE: &str = "A game master rolls the dice for the party.";

fn required() -> bool {
    std::env::var("AIGW_REQUIRE_MODELS").is_ok()
}

/// `text` spoken by espeak-ng, as 16 kHz mono samples (`None` when the tools are missing).
fn speech(text: &str) -> Option<Vec<f32>> {
    speech_in("en-us", text)
}

/// `text` spoken by espeak-ng's `voice`, as 16 kHz mono samples.
fn speech_in(voice: &str, text: &str) -> Option<Vec<f32>> {
    let entry = aigw_models::catalog::lookup(aigw_models::catalog::WHISPER_TINY_EN)?;
    let dir = aigw_models::store::model_dir();
    if !aigw_models::store::resolve(entry, &dir).is_ok_and(|r| r.is_present()) {
        assert!(
            !required(),
            "whisper-tiny.en is missing (aigw models fetch --default)"
        );
        eprintln!("skipping: whisper-tiny.en is missing");
        return None;
    }
    let tmp = tempfile::tempdir().unwrap();
    let wav = tmp.path().join("clip.wav");
    let ok = Command::new("espeak-ng")
        .args(["-v", voice, "-s", "120", "-w"])
        .arg(&wav)
        .arg(text)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            !required(),
            "espeak-ng is not installed (scripts/setup --test)"
        );
        eprintln!("skipping: espeak-ng is not installed");
        return None;
    }
    let bytes = std::fs::read(&wav).unwrap();
    Some(
        aigw_audio::decode::decode(bytes, Some("clip.wav"), 60.0)
            .unwrap()
            .samples,
    )
}

fn fox() -> Option<&'static [f32]> {
    static CLIP: OnceLock<Option<Vec<f32>>> = OnceLock::new();
    CLIP.get_or_init(|| speech(FOX)).as_deref()
}

fn dice() -> Option<&'static [f32]> {
    static CLIP: OnceLock<Option<Vec<f32>>> = OnceLock::new();
    CLIP.get_or_init(|| speech(DICE)).as_deref()
}

/// `samples` at 16 kHz → PCM16 at `rate` with `channels`, with `pad_s` of silence after.
fn pcm(samples: &[f32], rate: u32, channels: usize, pad_s: f64) -> Vec<u8> {
    let mut audio = aigw_audio::decode::resample(samples, 16_000, rate);
    audio.extend(std::iter::repeat_n(0.0, (f64::from(rate) * pad_s) as usize));
    audio
        .iter()
        .flat_map(|s| {
            let v = (s.clamp(-1.0, 1.0) * 32767.0) as i16;
            std::iter::repeat_n(v.to_le_bytes(), channels).flatten()
        })
        .collect()
}

/// Starts a server whose `whisper` alias is the local tiny.en.
async fn serve(extra: &str) -> String {
    let toml = format!(
        r#"
{extra}
[[local.models]]
name = "whisper"
model = "whisper-tiny.en"
"#
    );
    let env = |name: &str| (name == "TEST_CLIENT_KEY").then(|| KEY.to_owned());
    let state = AppState::new(Config::parse(&toml, &env).unwrap()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server::run(listener, state, std::future::pending()));
    format!("{addr}")
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Client {
    ws: Ws,
    events: Vec<Value>,
}

impl Client {
    async fn connect(addr: &str) -> Self {
        Self::connect_with(addr, &[]).await
    }

    /// Connects with extra request `headers`.
    async fn connect_with(addr: &str, headers: &[(&'static str, &str)]) -> Self {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = format!("ws://{addr}/v1/realtime?intent=transcription")
            .into_client_request()
            .unwrap();
        for (k, v) in headers {
            req.headers_mut().insert(*k, v.parse().unwrap());
        }
        let (ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
        assert_eq!(resp.status(), 101);
        let mut c = Self {
            ws,
            events: Vec::new(),
        };
        c.until("transcription_session.created").await;
        c
    }

    async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    async fn update(&mut self, session: Value) -> Value {
        self.send(json!({"type": "transcription_session.update", "session": session}))
            .await;
        self.until("transcription_session.updated").await
    }

    async fn append(&mut self, bytes: &[u8], track: Option<&str>) {
        let audio = base64::engine::general_purpose::STANDARD.encode(bytes);
        let mut v = json!({"type": "input_audio_buffer.append", "audio": audio});
        if let Some(t) = track {
            v["aigw_track"] = json!(t);
        }
        self.send(v).await;
    }

    /// The next event (the test fails after 60 s without one).
    async fn next(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(60), self.ws.next())
                .await
                .expect("no server event within 60 s")
                .expect("the server closed the connection")
                .unwrap();
            if let Message::Text(t) = msg {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                assert!(v["event_id"].is_string(), "{v}");
                self.events.push(v.clone());
                return v;
            }
        }
    }

    /// Reads events up to the first of type `kind`.
    async fn until(&mut self, kind: &str) -> Value {
        loop {
            let v = self.next().await;
            if v["type"] == kind {
                return v;
            }
        }
    }

    /// Reads events until every committed item is completed (or failed); returns the
    /// `completed` events.
    async fn transcripts(&mut self, items: usize) -> Vec<Value> {
        let done = |events: &[Value]| {
            events
                .iter()
                .filter(|e| {
                    e["type"] == "conversation.item.input_audio_transcription.completed"
                        || e["type"] == "conversation.item.input_audio_transcription.failed"
                })
                .count()
        };
        while done(&self.events) < items {
            self.next().await;
        }
        self.of("conversation.item.input_audio_transcription.completed")
    }

    fn of(&self, kind: &str) -> Vec<Value> {
        self.events
            .iter()
            .filter(|e| e["type"] == kind)
            .cloned()
            .collect()
    }
}

fn words_of(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

fn assert_heard(text: &str, expected: &[&str]) {
    let words = words_of(text);
    for w in expected {
        assert!(words.iter().any(|x| x == w), "{w:?} not heard in {text:?}");
    }
}

fn joined(completed: &[Value]) -> String {
    completed
        .iter()
        .map(|e| e["transcript"].as_str().unwrap())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Checks a server-VAD session's events: speech started and stopped, items committed, and
/// every committed item transcribed; returns the whole transcript.
async fn vad_transcript(c: &mut Client) -> String {
    c.until("input_audio_buffer.speech_stopped").await;
    c.until("input_audio_buffer.committed").await;
    let committed = c.of("input_audio_buffer.committed").len();
    let completed = c.transcripts(committed).await;
    let started = c.of("input_audio_buffer.speech_started");
    assert!(!started.is_empty());
    assert_eq!(started[0]["item_id"], completed[0]["item_id"]);
    let start_ms = started[0]["audio_start_ms"].as_u64().unwrap();
    assert!(
        start_ms < 600,
        "speech starts near the beginning: {start_ms} ms"
    );
    for e in &completed {
        assert_eq!(e["content_index"], 0);
        assert_eq!(e["usage"]["type"], "duration");
    }
    joined(&completed)
}
