//! The voice bridge end to end, against the real gateway: a simulated Discord voice channel
//! (three users speaking espeak-ng sentences, one overlapping another, delivered as Discord
//! delivers them — 48 kHz stereo PCM in 20 ms ticks, nothing while a user is silent), the
//! bridge's real session and control API, the real server transcribing each user's track
//! with the catalog's `whisper-tiny.en`, and a mock of what the outside world owns (Discord's
//! REST API, and a chat upstream for `/recap`) recording every call. `/listen`, `/transcript`,
//! `/recap` and `/stop` are signed interactions sent to the gateway. Needs
//! `aigw models fetch --default` and `scripts/setup --test`; skips without them unless
//! `AIGW_REQUIRE_MODELS=1`.

#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test harness"
)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use aigw_gateway::config::Config;
use aigw_gateway::server;
use aigw_gateway::state::AppState;
use aigw_voice_bridge::voice::{
    CHANNELS, SAMPLE_RATE, TICK_MS, Tick, TickSender, UserId, VoiceConnector, VoiceError,
};
use aigw_voice_bridge::{Bridge, BridgeConfig, control};
use async_trait::async_trait;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};
use ed25519_dalek::{Signer, SigningKey};
use serde_json::{Value, json};

const API_KEY: &str = "sk-bridge-test";
const BRIDGE_TOKEN: &str = "bridge-secret";
const BOT_TOKEN: &str = "bot-token";
const APP_ID: &str = "111111";
const GUILD: &str = "500";
const TEXT: &str = "600";
const VOICE: &str = "700";

fn required() -> bool {
    std::env::var("AIGW_REQUIRE_MODELS").is_ok()
}

// ---- speech -------------------------------------------------------------------------------

/// `text` spoken by espeak-ng's `voice`, as 48 kHz stereo PCM16 (`None` when the model or
/// the tools are missing).
fn speech(voice: &str, text: &str) -> Option<Vec<i16>> {
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
        .args(["-v", voice, "-s", "130", "-w"])
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
    let decoded = aigw_audio::decode::decode(std::fs::read(&wav).unwrap(), Some("clip.wav"), 60.0)
        .unwrap()
        .samples;
    let upsampled = aigw_audio::decode::resample(&decoded, 16_000, SAMPLE_RATE);
    Some(
        upsampled
            .iter()
            .flat_map(|s| {
                let v = (s.clamp(-1.0, 1.0) * 32767.0) as i16;
                [v; CHANNELS as usize]
            })
            .collect(),
    )
}

// ---- a simulated voice channel --------------------------------------------------------------

/// Who says what, from when (seconds after the bot joins).
struct Line {
    user: UserId,
    start: f64,
    pcm: Vec<i16>,
}

/// Discord's voice side, simulated: on `join`, plays the script in real time as 20 ms ticks
/// — each tick holds the audio of the users speaking in it, silent users are absent — and
/// keeps ticking (empty) until `leave`.
struct SimVoice {
    script: Arc<Vec<Line>>,
    names: HashMap<UserId, String>,
    joined: Mutex<Vec<(u64, u64)>>,
    left: Mutex<Vec<u64>>,
    playing: Mutex<HashMap<u64, tokio::task::JoinHandle<()>>>,
}

impl SimVoice {
    fn new(script: Vec<Line>, names: &[(UserId, &str)]) -> Self {
        Self {
            script: Arc::new(script),
            names: names.iter().map(|(u, n)| (*u, (*n).to_string())).collect(),
            joined: Mutex::new(Vec::new()),
            left: Mutex::new(Vec::new()),
            playing: Mutex::new(HashMap::new()),
        }
    }
}

/// Samples (both channels) in one tick.
const TICK: usize = (SAMPLE_RATE as usize / 1000) * TICK_MS as usize * CHANNELS as usize;

async fn play(script: Arc<Vec<Line>>, ticks: TickSender) {
    let mut clock = tokio::time::interval(Duration::from_millis(TICK_MS));
    clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let per_second = (SAMPLE_RATE * u32::from(CHANNELS)) as usize;
    for n in 0usize.. {
        clock.tick().await;
        if ticks.is_closed() {
            return;
        }
        let at = n * TICK;
        let speaking = script
            .iter()
            .filter_map(|line| {
                let from =
                    at.checked_sub((line.start * per_second as f64) as usize / TICK * TICK)?;
                let chunk = line.pcm.get(from..from + TICK)?;
                Some((line.user, chunk.to_vec()))
            })
            .collect();
        ticks.send(Tick { speaking });
    }
}

#[async_trait]
impl VoiceConnector for SimVoice {
    async fn join(&self, guild: u64, channel: u64, ticks: TickSender) -> Result<(), VoiceError> {
        if channel == 13 {
            return Err(VoiceError(
                "I have no permission to join that channel.".into(),
            ));
        }
        self.joined.lock().unwrap().push((guild, channel));
        let task = tokio::spawn(play(self.script.clone(), ticks));
        if let Some(old) = self.playing.lock().unwrap().insert(guild, task) {
            old.abort();
        }
        Ok(())
    }

    async fn leave(&self, guild: u64) -> Result<(), VoiceError> {
        self.left.lock().unwrap().push(guild);
        if let Some(task) = self.playing.lock().unwrap().remove(&guild) {
            task.abort();
        }
        Ok(())
    }

    async fn display_name(&self, _guild: u64, user: UserId) -> String {
        self.names
            .get(&user)
            .cloned()
            .unwrap_or_else(|| format!("user {user}"))
    }
}

// ---- the outside world: Discord's API and a chat upstream ---------------------------------

#[derive(Debug, Clone)]
struct Call {
    method: Method,
    path: String,
    auth: String,
    body: Value,
}

#[derive(Clone, Default)]
struct Mock {
    calls: Arc<Mutex<Vec<Call>>>,
}

async fn record(
    State(mock): State<Mock>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    mock.calls.lock().unwrap().push(Call {
        method: method.clone(),
        path: uri.path().to_string(),
        auth,
        body: body.clone(),
    });
    if uri.path() == "/v1/chat/completions" {
        // The chat upstream: a recap says how many transcript lines it was given.
        let user = body["messages"]
            .as_array()
            .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
            .and_then(|m| m["content"].as_str())
            .unwrap_or_default()
            .to_string();
        return axum::Json(json!({
            "id": "c1", "object": "chat.completion", "created": 1, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant",
                "content": format!("Recap of {} lines", user.lines().count())}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}
        }))
        .into_response();
    }
    axum::Json(json!({"id": "1"})).into_response()
}

impl Mock {
    async fn start() -> (SocketAddr, Self) {
        let mock = Self::default();
        let app = Router::new().fallback(record).with_state(mock.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (addr, mock)
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// The messages posted to the text channel.
    fn channel_messages(&self) -> Vec<Call> {
        let path = format!("/channels/{TEXT}/messages");
        self.calls()
            .into_iter()
            .filter(|c| c.path == path)
            .collect()
    }

    /// Waits (up to `secs`) for the answer that replaces `token`'s `@original`.
    async fn answer(&self, token: &str, secs: u64) -> String {
        let path = format!("/webhooks/{APP_ID}/{token}/messages/@original");
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(c) = self.calls().into_iter().find(|c| c.path == path) {
                assert_eq!(c.method, Method::PATCH);
                assert_eq!(c.body["allowed_mentions"], json!({"parse": []}));
                return c.body["content"].as_str().unwrap().to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no answer to {token} within {secs} s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

// ---- the gateway and the bridge -----------------------------------------------------------

struct Setup {
    gateway: SocketAddr,
    bridge_addr: SocketAddr,
    bridge: Arc<Bridge>,
    voice: Arc<SimVoice>,
    mock: Mock,
    key: SigningKey,
    http: reqwest::Client,
}

async fn setup(voice: SimVoice, local_whisper: bool) -> Setup {
    let (mock_addr, mock) = Mock::start().await;
    let gateway_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway = gateway_listener.local_addr().unwrap();
    let bridge_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bridge_addr = bridge_listener.local_addr().unwrap();
    let key = SigningKey::from_bytes(&[7; 32]);
    let public = hex::encode(key.verifying_key().to_bytes());
    let whisper = if local_whisper {
        "[[local.models]]\nname = \"whisper\"\nmodel = \"whisper-tiny.en\"\n"
    } else {
        ""
    };
    let toml = format!(
        r#"
[[auth.keys]]
name = "bridge"
key_env = "TEST_CLIENT_KEY"

[providers.up]
kind = "openai"
base_url = "http://{mock_addr}/v1"

[[models]]
name = "narrator"
provider = "up"

{whisper}
[discord]
application_id = "{APP_ID}"
public_key = "{public}"
api_base_url = "http://{mock_addr}"
model = "narrator"

[discord.voice]
bridge_url = "http://{bridge_addr}"
bridge_token_env = "TEST_BRIDGE_TOKEN"
"#
    );
    let env = |name: &str| match name {
        "TEST_CLIENT_KEY" => Some(API_KEY.to_owned()),
        "TEST_BRIDGE_TOKEN" => Some(BRIDGE_TOKEN.to_owned()),
        _ => None,
    };
    let state = AppState::new(Config::parse(&toml, &env).unwrap()).unwrap();
    tokio::spawn(server::run(gateway_listener, state, std::future::pending()));

    let voice = Arc::new(voice);
    let config = BridgeConfig {
        listen: bridge_addr,
        gateway_url: format!("http://{gateway}"),
        realtime_url: None,
        api_key: Some(API_KEY.into()),
        bridge_token: BRIDGE_TOKEN.into(),
        discord_api_base: format!("http://{mock_addr}"),
        bot_token: BOT_TOKEN.into(),
        model: Some("whisper".into()),
        silence_ms: 600,
    };
    let bridge = Arc::new(Bridge::new(config, voice.clone()).unwrap());
    let app = control::router(bridge.clone());
    tokio::spawn(async move { axum::serve(bridge_listener, app).await.unwrap() });
    Setup {
        gateway,
        bridge_addr,
        bridge,
        voice,
        mock,
        key,
        http: reqwest::Client::new(),
    }
}

impl Setup {
    /// Sends a signed slash command from the text channel; asserts the deferred answer.
    async fn command(&self, token: &str, name: &str, options: Value) {
        let body = json!({
            "id": format!("int-{token}"), "application_id": APP_ID, "type": 2, "token": token,
            "guild_id": GUILD, "channel_id": TEXT,
            "data": {"name": name, "options": options},
        })
        .to_string();
        let timestamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            .to_string();
        let signature = self.key.sign(format!("{timestamp}{body}").as_bytes());
        let resp = self
            .http
            .post(format!(
                "http://{}/integrations/discord/interactions",
                self.gateway
            ))
            .header("x-signature-ed25519", hex::encode(signature.to_bytes()))
            .header("x-signature-timestamp", timestamp)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["type"], 5, "{name}: {v}");
    }

    /// Waits (up to `secs`) until the text channel has `n` messages.
    async fn messages(&self, n: usize, secs: u64) -> Vec<Call> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let messages = self.mock.channel_messages();
            if messages.len() >= n {
                return messages;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} lines posted within {secs} s: {messages:?}",
                messages.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The words of `text`, lowercased, without punctuation.
fn words(text: &str) -> String {
    text.to_lowercase()
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '*' || c == ':' {
                c
            } else {
                ' '
            }
        })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_speakers_become_named_lines_in_the_channel_and_the_transcript() {
    let (Some(alice), Some(bob), Some(carol)) = (
        speech("en-us", "The quick brown fox jumps over the lazy dog."),
        speech("en-gb", "A game master rolls the dice for the party."),
        speech("en-us+f3", "The dragon sleeps under the mountain."),
    ) else {
        return;
    };
    let alice_s = alice.len() as f64 / f64::from(SAMPLE_RATE * u32::from(CHANNELS));
    let bob_s = bob.len() as f64 / f64::from(SAMPLE_RATE * u32::from(CHANNELS));
    // Bob starts while Alice is still talking: separate tracks keep them apart.
    let bob_start = 0.3 + alice_s * 0.6;
    let script = vec![
        Line {
            user: 1001,
            start: 0.3,
            pcm: alice,
        },
        Line {
            user: 1002,
            start: bob_start,
            pcm: bob,
        },
        Line {
            user: 1003,
            start: bob_start + bob_s + 1.0,
            pcm: carol,
        },
    ];
    let voice = SimVoice::new(
        script,
        &[(1001, "Alice"), (1002, "Bob_the_Bard"), (1003, "Carol")],
    );
    let s = setup(voice, true).await;

    // A /listen that Discord refuses is answered in the channel with the reason.
    s.command(
        "l13",
        "listen",
        json!([{"name": "channel", "type": 7, "value": "13"}]),
    )
    .await;
    let refused = s.mock.answer("l13", 30).await;
    assert_eq!(
        refused,
        "I couldn't join <#13>: I have no permission to join that channel."
    );
    assert!(s.bridge.sessions().await.is_empty());

    s.command(
        "listen",
        "listen",
        json!([{"name": "channel", "type": 7, "value": VOICE}]),
    )
    .await;
    let answer = s.mock.answer("listen", 30).await;
    assert!(
        answer.starts_with(&format!("Listening in <#{VOICE}>")),
        "{answer}"
    );
    assert_eq!(
        *s.voice.joined.lock().unwrap(),
        [(GUILD.parse().unwrap(), VOICE.parse().unwrap())]
    );

    let messages = s.messages(3, 90).await;
    let mut by_speaker: HashMap<String, String> = HashMap::new();
    for m in &messages {
        assert_eq!(m.method, Method::POST);
        assert_eq!(m.auth, format!("Bot {BOT_TOKEN}"));
        assert_eq!(
            m.body["allowed_mentions"],
            json!({"parse": []}),
            "{:?}",
            m.body
        );
        let content = m.body["content"].as_str().unwrap();
        let (speaker, text) = content.split_once(": ").unwrap();
        assert!(
            by_speaker
                .insert(speaker.to_string(), words(text))
                .is_none(),
            "one line per speaker: {messages:?}"
        );
    }
    eprintln!("posted: {by_speaker:?}");
    let said = |speaker: &str| by_speaker.get(speaker).cloned().unwrap_or_default();
    assert!(said("**Alice**").contains("brown fox"), "{by_speaker:?}");
    // The name's markdown is escaped.
    assert!(
        said("**Bob\\_the\\_Bard**").contains("dice"),
        "{by_speaker:?}"
    );
    assert!(said("**Carol**").contains("dragon"), "{by_speaker:?}");

    // The gateway kept the lines for the channel.
    s.command("transcript", "transcript", json!([])).await;
    let transcript = s.mock.answer("transcript", 30).await;
    assert!(
        transcript.starts_with("**Voice transcript** (last 3 lines):"),
        "{transcript}"
    );
    for speaker in ["**Alice**", "**Bob\\_the\\_Bard**", "**Carol**"] {
        assert!(transcript.contains(speaker), "{transcript}");
    }
    s.command("recap", "recap", json!([])).await;
    assert_eq!(s.mock.answer("recap", 30).await, "Recap of 3 lines");

    s.command("stop", "stop", json!([])).await;
    let stopped = s.mock.answer("stop", 30).await;
    assert!(stopped.starts_with("Stopped listening"), "{stopped}");
    assert_eq!(
        *s.voice.left.lock().unwrap(),
        [GUILD.parse::<u64>().unwrap()]
    );
    assert!(s.bridge.sessions().await.is_empty());
    s.command("stop-again", "stop", json!([])).await;
    let again = s.mock.answer("stop-again", 30).await;
    assert!(again.contains("not listening"), "{again}");
    assert_eq!(s.mock.channel_messages().len(), 3, "no line twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stopping_mid_sentence_still_posts_what_was_said() {
    let Some(long) = speech(
        "en-us",
        "I open the heavy door and walk slowly into the dark hall, holding my torch high above my head.",
    ) else {
        return;
    };
    let script = vec![Line {
        user: 42,
        start: 0.2,
        pcm: long,
    }];
    let s = setup(SimVoice::new(script, &[(42, "Dana")]), true).await;
    s.command(
        "listen",
        "listen",
        json!([{"name": "channel", "type": 7, "value": VOICE}]),
    )
    .await;
    assert!(s.mock.answer("listen", 30).await.starts_with("Listening"));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(s.mock.channel_messages().is_empty(), "still talking");
    s.command("stop", "stop", json!([])).await;
    assert!(
        s.mock
            .answer("stop", 30)
            .await
            .starts_with("Stopped listening")
    );
    // The stop waited for the utterance in progress: its line is posted by now.
    let messages = s.mock.channel_messages();
    assert_eq!(messages.len(), 1, "{messages:?}");
    let content = words(messages[0].body["content"].as_str().unwrap());
    assert!(content.starts_with("**dana**: i open the"), "{content}");
    assert!(!content.contains("torch"), "cut at the stop: {content}");
}

#[tokio::test]
async fn the_control_api_and_the_lines_endpoint_check_their_callers() {
    let s = setup(SimVoice::new(Vec::new(), &[]), false).await;
    let bridge = format!("http://{}", s.bridge_addr);
    let listen = json!({"guild_id": GUILD, "voice_channel_id": VOICE, "text_channel_id": TEXT});
    // The bridge: wrong or missing secret → 401; bad ids → 400; a refused join → 502 with
    // the reason; stop without a session → 404.
    for auth in [None, Some("Bearer nope")] {
        let mut req = s.http.post(format!("{bridge}/v1/listen")).json(&listen);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["code"], "invalid_bridge_token");
    }
    let post = |path: &str, body: Value| {
        s.http
            .post(format!("{bridge}{path}"))
            .bearer_auth(BRIDGE_TOKEN)
            .json(&body)
    };
    let resp = post(
        "/v1/listen",
        json!({"guild_id": "x", "voice_channel_id": VOICE, "text_channel_id": TEXT}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 400);
    // This gateway serves no `whisper`: the realtime session is refused before any voice
    // channel is joined.
    let resp = post("/v1/listen", listen.clone()).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "realtime_unavailable");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("the realtime endpoint refused the session"),
        "{message}"
    );
    assert!(s.voice.joined.lock().unwrap().is_empty());
    assert!(s.bridge.sessions().await.is_empty());
    let resp = post("/v1/stop", json!({"guild_id": GUILD}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);

    // The gateway's lines endpoint: the same secret, well-formed lines only.
    let lines = format!("http://{}/integrations/discord/voice/lines", s.gateway);
    let line = json!({"guild_id": GUILD, "channel_id": TEXT, "speaker": "Ada", "speaker_id": "9", "text": "Hello."});
    let resp = s
        .http
        .post(&lines)
        .bearer_auth("nope")
        .json(&line)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    for bad in [
        json!({"guild_id": GUILD, "channel_id": "abc", "speaker": "Ada", "text": "Hello."}),
        json!({"guild_id": GUILD, "channel_id": TEXT, "speaker": " ", "text": "Hello."}),
        json!({"guild_id": GUILD, "channel_id": TEXT, "speaker": "Ada", "text": ""}),
        json!({"guild_id": GUILD, "channel_id": TEXT, "speaker": "Ada", "text": "x".repeat(4001)}),
        json!({"guild_id": GUILD, "channel_id": TEXT, "speaker": "Ada", "text": "Hi", "extra": 1}),
    ] {
        let resp = s
            .http
            .post(&lines)
            .bearer_auth(BRIDGE_TOKEN)
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{bad}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }
    // Before any line, the channel has no voice session; after one, /transcript shows it.
    s.command("t0", "transcript", json!([])).await;
    assert!(
        s.mock
            .answer("t0", 30)
            .await
            .starts_with("There is no voice transcript")
    );
    let resp = s
        .http
        .post(&lines)
        .bearer_auth(BRIDGE_TOKEN)
        .json(&line)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    s.command("t1", "transcript", json!([])).await;
    assert_eq!(
        s.mock.answer("t1", 30).await,
        "**Voice transcript** (last 1 line):\n**Ada**: Hello."
    );
}
