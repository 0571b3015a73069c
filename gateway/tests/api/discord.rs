//! The Discord integration end to end: interactions signed with a key pair made here, sent to
//! the real server, commands answered through the real chat pipeline (a mock upstream behind
//! it) and their answers posted to a mock Discord API that records every call; and
//! `aigw discord register-commands` against the same mock.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use aigw_gateway::config::Config;
use aigw_gateway::discord::transcript::StoreError;
use aigw_gateway::discord::{TranscriptLine, TranscriptStore};
use aigw_gateway::state::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use ed25519_dalek::{Signer, SigningKey};
use serde_json::{Value, json};

use super::Gateway;

const APP_ID: &str = "111";
const GUILD: &str = "222";
const CHANNEL: &str = "333";
const BOT_TOKEN: &str = "test-bot-token";

// ---- the chat upstream --------------------------------------------------------------------

/// What the upstream answers depends on the last user message: `slow:` waits 3.5 s, `long`
/// answers 4,399 characters in 100 lines, `fail` is a 500; otherwise `You asked: …`. A request
/// whose system message asks for a recap gets `Recap of N lines`.
#[derive(Clone, Default)]
struct Upstream {
    bodies: Arc<Mutex<Vec<Value>>>,
}

fn long_answer() -> String {
    (0..100)
        .map(|i| format!("Line {i:03} of a long answer about the dragon."))
        .collect::<Vec<_>>()
        .join("\n")
}

async fn upstream_chat(State(up): State<Upstream>, Json(body): Json<Value>) -> Response {
    up.bodies.lock().unwrap().push(body.clone());
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let user = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_string();
    let system = messages
        .iter()
        .find(|m| m["role"] == "system")
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default();
    let answer = if system.contains("recaps") {
        format!("Recap of {} lines", user.lines().count())
    } else if user == "long" {
        long_answer()
    } else if user == "fail" {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": {"message": "shard 7 on 10.0.0.3 crashed", "type": "server_error"}})),
        )
            .into_response();
    } else {
        if user.starts_with("slow:") {
            tokio::time::sleep(Duration::from_millis(3500)).await;
        }
        format!("You asked: {user}")
    };
    Json(json!({
        "id": "c1", "object": "chat.completion", "created": 1, "model": body["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}
    }))
    .into_response()
}

impl Upstream {
    async fn start() -> (SocketAddr, Self) {
        let up = Self::default();
        let app = Router::new()
            .route("/v1/chat/completions", post(upstream_chat))
            .with_state(up.clone());
        (serve(app).await, up)
    }

    fn calls(&self) -> usize {
        self.bodies.lock().unwrap().len()
    }

    fn last(&self) -> Value {
        self.bodies.lock().unwrap().last().cloned().unwrap()
    }
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

// ---- the Discord API ----------------------------------------------------------------------

/// One call the mock Discord API received.
#[derive(Debug, Clone)]
struct Call {
    method: Method,
    path: String,
    auth: Option<String>,
    body: Value,
}

#[derive(Clone, Default)]
struct MockDiscord {
    calls: Arc<Mutex<Vec<Call>>>,
    /// Answer this many webhook calls with a 429 first.
    rate_limit_next: Arc<Mutex<u32>>,
}

async fn discord_api(
    State(m): State<MockDiscord>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let path = uri.path().to_string();
    let auth = headers
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_string());
    if path.contains("/webhooks/") {
        let mut limited = m.rate_limit_next.lock().unwrap();
        if *limited > 0 {
            *limited -= 1;
            return (
                StatusCode::TOO_MANY_REQUESTS,
                Json(json!({"message": "You are being rate limited.", "retry_after": 0.2, "global": false})),
            )
                .into_response();
        }
    }
    m.calls.lock().unwrap().push(Call {
        method: method.clone(),
        path: path.clone(),
        auth: auth.clone(),
        body: body.clone(),
    });
    if path.ends_with("/commands") {
        if auth.as_deref() != Some(&format!("Bot {BOT_TOKEN}")) {
            return (
                StatusCode::UNAUTHORIZED,
                Json(json!({"message": "401: Unauthorized", "code": 0})),
            )
                .into_response();
        }
        let registered: Vec<Value> = body
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut c = c.clone();
                c["id"] = json!(format!("9000{i}"));
                c["application_id"] = json!(APP_ID);
                c
            })
            .collect();
        return Json(Value::Array(registered)).into_response();
    }
    Json(json!({"id": "555", "content": body["content"]})).into_response()
}

impl MockDiscord {
    async fn start() -> (SocketAddr, Self) {
        let m = Self::default();
        let app = Router::new().fallback(discord_api).with_state(m.clone());
        (serve(app).await, m)
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// Waits until at least `n` calls have arrived.
    async fn wait_for(&self, n: usize) -> Vec<Call> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let calls = self.calls();
            if calls.len() >= n {
                return calls;
            }
            assert!(
                Instant::now() < deadline,
                "expected {n} Discord calls, got {calls:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

// ---- the gateway --------------------------------------------------------------------------

struct Harness {
    url: String,
    client: reqwest::Client,
    key: SigningKey,
    up: Upstream,
    discord: MockDiscord,
    /// The server, when it is a whole gateway.
    gw: Option<Gateway>,
}

fn signing_key() -> SigningKey {
    let mut seed = [0u8; 32];
    seed[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    seed[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    SigningKey::from_bytes(&seed)
}

/// The config: the alias `narrator` on the mock upstream (as `big`), a `channel` budget
/// policy of `tokens` tokens, and `[discord]` plus `discord_extra`.
fn config(
    upstream: SocketAddr,
    discord: SocketAddr,
    key: &SigningKey,
    tokens: u64,
    discord_extra: &str,
) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[budgets.policies.channel]
tokens = {tokens}

[providers.up]
kind = "openai"
base_url = "http://{upstream}/v1"

[[models]]
name = "narrator"
provider = "up"
upstream_model = "big"

[discord]
application_id = "{APP_ID}"
public_key = "{public}"
api_base_url = "http://{discord}/api/v10"
model = "narrator"
tenant = "tables"
policy = "channel"
bot_token_env = "TEST_DISCORD_BOT_TOKEN"
system_prompt = "You help at a fantasy table."
max_tokens = 5
{discord_extra}
"#,
        public = hex::encode(key.verifying_key().to_bytes()),
    )
}

impl Harness {
    async fn start(tokens: u64, discord_extra: &str) -> Self {
        let (up_addr, up) = Upstream::start().await;
        let (discord_addr, discord) = MockDiscord::start().await;
        let key = signing_key();
        let gw =
            Gateway::start_toml(&config(up_addr, discord_addr, &key, tokens, discord_extra)).await;
        Self {
            url: gw.url.clone(),
            client: gw.client.clone(),
            key,
            up,
            discord,
            gw: Some(gw),
        }
    }

    async fn interact(&self, body: &Value) -> reqwest::Response {
        interact(&self.client, &self.url, &self.key, body).await
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// POSTs `body` signed by `key` at `timestamp`.
async fn send_signed(
    client: &reqwest::Client,
    url: &str,
    key: &SigningKey,
    timestamp: &str,
    body: &[u8],
) -> reqwest::Response {
    let mut message = timestamp.as_bytes().to_vec();
    message.extend_from_slice(body);
    client
        .post(format!("{url}/integrations/discord/interactions"))
        .header("content-type", "application/json")
        .header(
            "x-signature-ed25519",
            hex::encode(key.sign(&message).to_bytes()),
        )
        .header("x-signature-timestamp", timestamp)
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
}

async fn interact(
    client: &reqwest::Client,
    url: &str,
    key: &SigningKey,
    body: &Value,
) -> reqwest::Response {
    let body = serde_json::to_vec(body).unwrap();
    send_signed(client, url, key, &now_secs().to_string(), &body).await
}

/// A slash command invoked in `channel` of the test guild.
fn command(token: &str, channel: &str, name: &str, options: Value) -> Value {
    json!({
        "id": format!("i-{token}"), "application_id": APP_ID, "type": 2, "token": token,
        "guild_id": GUILD, "channel_id": channel, "version": 1,
        "member": {"user": {"id": "42", "username": "player"}},
        "data": {"id": "c", "name": name, "type": 1, "options": options},
    })
}

fn ask(token: &str, channel: &str, prompt: &str) -> Value {
    command(
        token,
        channel,
        "ask",
        json!([{"name": "prompt", "type": 3, "value": prompt}]),
    )
}

/// Sends a command, checks it was deferred, and returns the messages posted for it.
async fn run(h: &Harness, body: Value) -> Vec<Call> {
    let token = body["token"].as_str().unwrap().to_string();
    let before = h.discord.calls().len();
    let resp = h.interact(&body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap(), json!({"type": 5}));
    h.discord.wait_for(before + 1).await;
    // Let any follow-ups land.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let calls: Vec<Call> = h
        .discord
        .calls()
        .into_iter()
        .skip(before)
        .filter(|c| c.path.contains(&token))
        .collect();
    assert!(!calls.is_empty(), "{calls:?}");
    calls
}

/// The one message that answered a command: the edit of `@original`.
async fn answer(h: &Harness, body: Value) -> String {
    let token = body["token"].as_str().unwrap().to_string();
    let calls = run(h, body).await;
    assert_eq!(calls.len(), 1, "{calls:?}");
    let call = &calls[0];
    assert_eq!(call.method, Method::PATCH);
    assert_eq!(
        call.path,
        format!("/api/v10/webhooks/{APP_ID}/{token}/messages/@original")
    );
    assert_eq!(call.body["allowed_mentions"], json!({"parse": []}));
    assert!(
        call.auth.is_none(),
        "interaction webhooks need no bot token"
    );
    call.body["content"].as_str().unwrap().to_string()
}

// ---- tests --------------------------------------------------------------------------------

#[tokio::test]
async fn signatures_and_timestamps_are_checked() {
    let h = Harness::start(1000, "timestamp_window_secs = 60").await;
    let ping = serde_json::to_vec(
        &json!({"id": "1", "application_id": APP_ID, "type": 1, "token": "t", "version": 1}),
    )
    .unwrap();
    let (client, url) = (&h.client, h.url.as_str());
    let now = now_secs();

    let resp = send_signed(client, url, &h.key, &now.to_string(), &ping).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap(), json!({"type": 1}));

    // Missing headers.
    let resp = client
        .post(format!("{url}/integrations/discord/interactions"))
        .body(ping.clone())
        .send()
        .await
        .unwrap();
    let err = super::expect_error(resp, 401).await;
    assert_eq!(err["code"], "invalid_signature");

    // Another key; a body changed after signing; a garbled signature.
    let other = signing_key();
    let resp = send_signed(client, url, &other, &now.to_string(), &ping).await;
    assert_eq!(resp.status(), 401);
    let mut message = now.to_string().into_bytes();
    message.extend_from_slice(&ping);
    let signature = hex::encode(h.key.sign(&message).to_bytes());
    let tampered = String::from_utf8(ping.clone())
        .unwrap()
        .replace("\"type\":1", "\"type\":2");
    let resp = client
        .post(format!("{url}/integrations/discord/interactions"))
        .header("x-signature-ed25519", &signature)
        .header("x-signature-timestamp", now.to_string())
        .body(tampered)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = client
        .post(format!("{url}/integrations/discord/interactions"))
        .header("x-signature-ed25519", "not-hex")
        .header("x-signature-timestamp", now.to_string())
        .body(ping.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    // Validly signed, but stale or from the future.
    for ts in [now - 3600, now - 120, now + 120] {
        let resp = send_signed(client, url, &h.key, &ts.to_string(), &ping).await;
        assert_eq!(resp.status(), 401, "timestamp {ts} (now {now})");
    }
    // Validly signed, not an interaction.
    let resp = send_signed(client, url, &h.key, &now.to_string(), b"[1,2]").await;
    super::expect_error(resp, 400).await;

    assert!(h.discord.calls().is_empty());
    assert_eq!(h.up.calls(), 0);
}

#[tokio::test]
async fn ask_is_deferred_then_answered_through_the_pipeline() {
    let h = Harness::start(1000, "").await;
    // The upstream takes 3.5 s: the interaction is answered at once all the same.
    let body = ask("tok-slow", CHANNEL, "slow: where is the dragon?");
    let started = Instant::now();
    let resp = h.interact(&body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap(), json!({"type": 5}));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "deferred within Discord's 3 s: {:?}",
        started.elapsed()
    );
    assert!(h.discord.calls().is_empty(), "the answer comes later");

    let calls = h.discord.wait_for(1).await;
    assert!(started.elapsed() >= Duration::from_millis(3500));
    assert_eq!(calls[0].method, Method::PATCH);
    assert_eq!(
        calls[0].path,
        format!("/api/v10/webhooks/{APP_ID}/tok-slow/messages/@original")
    );
    assert_eq!(
        calls[0].body,
        json!({"content": "You asked: slow: where is the dragon?", "allowed_mentions": {"parse": []}})
    );
    // The pipeline routed the alias to its deployment with the configured request.
    let sent = h.up.last();
    assert_eq!(sent["model"], "big");
    assert_eq!(sent["max_tokens"], 5);
    assert_eq!(
        sent["messages"][0]["content"],
        "You help at a fantasy table."
    );
    assert_eq!(sent["messages"][1]["content"], "slow: where is the dragon?");

    // The channel's session paid (7 + 2 tokens); another channel's did not.
    let text = answer(&h, command("tok-b1", CHANNEL, "budget", json!([]))).await;
    assert!(text.contains("policy `channel`"), "{text}");
    assert!(text.contains("tokens: 991 of 1,000 left"), "{text}");
    let text = answer(&h, command("tok-b2", "444", "budget", json!([]))).await;
    assert!(text.contains("tokens: 1,000 of 1,000 left"), "{text}");

    // An upstream failure is a polite sentence, not the upstream's error.
    let text = answer(&h, ask("tok-fail", CHANNEL, "fail")).await;
    assert!(
        text.starts_with("Sorry, I couldn't get an answer"),
        "{text}"
    );
    assert!(!text.contains("shard") && !text.contains('{'), "{text}");
}

#[tokio::test]
async fn shutdown_waits_for_answers_in_progress() {
    let mut h = Harness::start(1000, "").await;
    let resp = h
        .interact(&ask("tok-sd", CHANNEL, "slow: last words"))
        .await;
    assert_eq!(resp.json::<Value>().await.unwrap(), json!({"type": 5}));
    // SIGTERM while the answer is still being computed: the server drains it first.
    let started = Instant::now();
    h.gw.take().unwrap().stop().await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let calls = h.discord.calls();
    assert_eq!(calls.len(), 1, "answered before the server stopped");
    assert_eq!(calls[0].body["content"], "You asked: slow: last words");
}

#[tokio::test]
async fn deterministic_asks_are_served_from_the_cache() {
    let h = Harness::start(1000, "temperature = 0").await;
    let first = answer(&h, ask("tok-c1", CHANNEL, "Who rules Waterdeep?")).await;
    let second = answer(&h, ask("tok-c2", "444", "Who rules Waterdeep?")).await;
    assert_eq!(first, "You asked: Who rules Waterdeep?");
    assert_eq!(second, first);
    assert_eq!(h.up.calls(), 1, "the second channel got the cached answer");
    assert_eq!(h.up.last()["temperature"], 0.0);
}

#[tokio::test]
async fn a_spent_budget_gets_a_polite_answer() {
    // Each ask reserves its estimate (about 55 tokens) and settles at 9.
    let h = Harness::start(100, "").await;
    let mut answered = 0;
    let refusal = loop {
        let text = answer(&h, ask(&format!("tok-{answered}"), CHANNEL, "hi")).await;
        if text != "You asked: hi" {
            break text;
        }
        answered += 1;
        assert!(answered < 20, "never refused");
    };
    assert!(answered >= 1);
    assert_eq!(
        h.up.calls(),
        answered,
        "a refused ask never reaches the upstream"
    );
    assert!(refusal.contains("budget"), "{refusal}");
    assert!(refusal.contains("game master"), "{refusal}");
    for raw in ["insufficient_quota", "{", "429", "tokens="] {
        assert!(!refusal.contains(raw), "{raw} in {refusal}");
    }
    // Other channels have budgets of their own.
    let text = answer(&h, ask("tok-other", "444", "hi")).await;
    assert_eq!(text, "You asked: hi");
}

#[tokio::test]
async fn long_answers_are_split_and_nobody_is_mentioned() {
    let h = Harness::start(100_000, "").await;
    let calls = run(&h, ask("tok-long", CHANNEL, "long")).await;
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert_eq!(calls[0].method, Method::PATCH);
    assert!(calls[0].path.ends_with("/tok-long/messages/@original"));
    for follow_up in &calls[1..] {
        assert_eq!(follow_up.method, Method::POST);
        assert_eq!(
            follow_up.path,
            format!("/api/v10/webhooks/{APP_ID}/tok-long")
        );
    }
    let parts: Vec<&str> = calls
        .iter()
        .map(|c| c.body["content"].as_str().unwrap())
        .collect();
    for (c, part) in calls.iter().zip(&parts) {
        assert!(
            part.chars().count() <= 2000,
            "{} chars",
            part.chars().count()
        );
        assert_eq!(c.body["allowed_mentions"], json!({"parse": []}));
    }
    assert_eq!(
        parts.join("\n"),
        long_answer(),
        "cut at line breaks, nothing lost"
    );

    let text = answer(&h, ask("tok-m", CHANNEL, "@everyone <@42> come here")).await;
    assert_eq!(text, "You asked: @everyone <@42> come here");
}

#[tokio::test]
async fn rate_limited_answers_are_retried() {
    let h = Harness::start(1000, "").await;
    *h.discord.rate_limit_next.lock().unwrap() = 2;
    let started = Instant::now();
    let text = answer(&h, ask("tok-rl", CHANNEL, "hello")).await;
    assert_eq!(text, "You asked: hello");
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "waited retry_after twice"
    );
}

#[tokio::test]
async fn without_voice_sessions_transcript_and_recap_say_so() {
    let h = Harness::start(1000, "").await;
    let text = answer(
        &h,
        command(
            "tok-t",
            CHANNEL,
            "transcript",
            json!([{"name": "lines", "type": 4, "value": 5}]),
        ),
    )
    .await;
    assert!(
        text.contains("no voice transcript for this channel"),
        "{text}"
    );
    let text = answer(&h, command("tok-r", CHANNEL, "recap", json!([]))).await;
    assert!(
        text.contains("no voice transcript for this channel"),
        "{text}"
    );
    assert_eq!(h.up.calls(), 0, "nothing to summarise");
}

#[tokio::test]
async fn without_a_voice_bridge_listen_and_stop_say_so() {
    let h = Harness::start(1000, "").await;
    let listen = json!([{"name": "channel", "type": 7, "value": "777"}]);
    let text = answer(&h, command("tok-l", CHANNEL, "listen", listen)).await;
    assert_eq!(text, "Voice listening is not set up on this server.");
    let text = answer(&h, command("tok-s", CHANNEL, "stop", json!([]))).await;
    assert_eq!(text, "Voice listening is not set up on this server.");
    // A channel option that is not an id is refused at once.
    let body: Value = h
        .interact(&command(
            "tok-x",
            CHANNEL,
            "listen",
            json!([{"name": "channel", "type": 7, "value": "lobby"}]),
        ))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["type"], 4, "{body}");
    assert!(
        body["data"]["content"]
            .as_str()
            .unwrap()
            .contains("/listen channel")
    );
    // Without [discord.voice] there is no lines endpoint to write to.
    let resp = h
        .client
        .post(format!("{}/integrations/discord/voice/lines", h.url))
        .json(&json!({"guild_id": GUILD, "channel_id": CHANNEL, "speaker": "A", "text": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn unknown_commands_and_direct_messages_are_answered_at_once() {
    let h = Harness::start(1000, "").await;
    let resp = h
        .interact(&command("tok-u", CHANNEL, "dance", json!([])))
        .await;
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["type"], 4);
    assert_eq!(body["data"]["flags"], 64);
    assert_eq!(body["data"]["allowed_mentions"], json!({"parse": []}));

    let mut dm = ask("tok-dm", CHANNEL, "hi");
    dm.as_object_mut().unwrap().remove("guild_id");
    let body: Value = h.interact(&dm).await.json().await.unwrap();
    assert_eq!(body["type"], 4);
    assert!(
        body["data"]["content"].as_str().unwrap().contains("server"),
        "{body}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(h.discord.calls().is_empty());
    assert_eq!(h.up.calls(), 0);
}

/// A voice session's lines, as a store of the test's own gives them.
struct Lines(Vec<TranscriptLine>);

#[async_trait::async_trait]
impl TranscriptStore for Lines {
    async fn latest(
        &self,
        guild_id: &str,
        channel_id: &str,
        limit: usize,
    ) -> Result<Option<Vec<TranscriptLine>>, StoreError> {
        if (guild_id, channel_id) != (GUILD, CHANNEL) {
            return Ok(None);
        }
        let skip = self.0.len().saturating_sub(limit);
        Ok(Some(self.0[skip..].to_vec()))
    }
}

#[tokio::test]
async fn transcript_and_recap_read_the_voice_session() {
    let (up_addr, up) = Upstream::start().await;
    let (discord_addr, discord) = MockDiscord::start().await;
    let key = signing_key();
    let config = Config::parse(&config(up_addr, discord_addr, &key, 1000, ""), &|_| None).unwrap();
    let state = AppState::new(config).unwrap();
    let line = |speaker: &str, text: &str| TranscriptLine {
        speaker: speaker.into(),
        text: text.into(),
    };
    let store = Lines(vec![
        line("Alice", "I open the door."),
        line("Bob_the_Bard", "I sing to the ogre."),
        line("GM", "The ogre falls asleep."),
    ]);
    let app = aigw_gateway::discord::router_with(&state, Arc::new(store)).with_state(state);
    let addr = serve(app).await;
    let h = Harness {
        url: format!("http://{addr}"),
        client: reqwest::Client::new(),
        key,
        up,
        discord,
        gw: None,
    };

    let text = answer(
        &h,
        command(
            "tok-t",
            CHANNEL,
            "transcript",
            json!([{"name": "lines", "type": 4, "value": 2}]),
        ),
    )
    .await;
    assert_eq!(
        text,
        "**Voice transcript** (last 2 lines):\n**Bob\\_the\\_Bard**: I sing to the ogre.\n**GM**: The ogre falls asleep."
    );
    let text = answer(&h, command("tok-r", CHANNEL, "recap", json!([]))).await;
    assert_eq!(text, "Recap of 3 lines");
    let sent = h.up.last();
    assert!(
        sent["messages"][0]["content"]
            .as_str()
            .unwrap()
            .contains("recaps")
    );
    assert_eq!(
        sent["messages"][1]["content"],
        "Alice: I open the door.\nBob_the_Bard: I sing to the ogre.\nGM: The ogre falls asleep."
    );
    // Another channel has no voice session.
    let text = answer(&h, command("tok-t2", "444", "transcript", json!([]))).await;
    assert!(text.contains("no voice transcript"), "{text}");
}

#[tokio::test]
async fn register_commands_puts_them_through_the_api() {
    let (up_addr, _up) = Upstream::start().await;
    let (discord_addr, discord) = MockDiscord::start().await;
    let key = signing_key();
    let file = std::env::temp_dir().join(format!("aigw-discord-{}.toml", uuid::Uuid::new_v4()));
    std::fs::write(&file, config(up_addr, discord_addr, &key, 1000, "")).unwrap();
    let aigw = |args: &[&str], token: Option<&str>| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_aigw"));
        cmd.args(["discord", "register-commands", "--config"])
            .arg(&file)
            .args(args)
            .env_remove("AIGW_CONFIG")
            .env_remove("TEST_DISCORD_BOT_TOKEN");
        if let Some(t) = token {
            cmd.env("TEST_DISCORD_BOT_TOKEN", t);
        }
        cmd.output()
    };

    let out = aigw(&["--guild", "999"], Some(BOT_TOKEN)).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("registered 6 commands in guild 999") && stdout.contains("/ask (90000)"),
        "{stdout}"
    );
    let calls = discord.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].method, Method::PUT);
    assert_eq!(
        calls[0].path,
        format!("/api/v10/applications/{APP_ID}/guilds/999/commands")
    );
    assert_eq!(calls[0].auth.as_deref(), Some("Bot test-bot-token"));
    let names: Vec<&str> = calls[0]
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["ask", "budget", "transcript", "recap", "listen", "stop"]
    );
    assert_eq!(calls[0].body[0]["options"][0]["name"], "prompt");
    assert_eq!(calls[0].body[0]["options"][0]["required"], true);
    assert_eq!(calls[0].body[2]["options"][0]["type"], 4);

    // Without --guild (and no discord.guild_id): global.
    let out = aigw(&[], Some(BOT_TOKEN)).await.unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("globally"));
    assert_eq!(
        discord.calls()[1].path,
        format!("/api/v10/applications/{APP_ID}/commands")
    );

    // No token: a usage error naming the variable, and no call. A token Discord refuses: 1.
    let out = aigw(&[], None).await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("TEST_DISCORD_BOT_TOKEN"));
    assert_eq!(discord.calls().len(), 2);
    let out = aigw(&[], Some("wrong")).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
    let _ = std::fs::remove_file(&file);
}
