//! End-to-end tests of the HTTP surface: the real server on port 0 in front of a scripted
//! mock upstream (`mock.rs`), driven over real sockets.

#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test harness"
)]

mod anthropic_e2e;
mod azure;
mod budgets;
mod cache;
mod chat;
mod discord;
mod errors;
mod limits;
mod mock;
mod openai_fixtures;
mod other;
mod routing;
mod sdk;
mod shared_state;
mod tools;

use std::time::Duration;

use aigw_gateway::config::Config;
use aigw_gateway::server;
use aigw_gateway::state::AppState;
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::oneshot;

pub use mock::MockServer;

/// A running gateway in front of a mock upstream.
pub struct Gateway {
    pub url: String,
    pub mock: MockServer,
    pub client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

pub const UPSTREAM_KEY: &str = "sk-upstream-secret";
pub const CLIENT_KEY: &str = "sk-client-good";

/// Models served by every test gateway: alias = upstream model name minus `mock-`.
const MODELS: &[&str] = &[
    "echo",
    "tools",
    "400",
    "401",
    "422",
    "429",
    "500",
    "503",
    "slow",
    "slowstream",
    "midstream-fail",
    "garbage",
];

pub fn config_toml(mock_url: &str, extra: &str) -> String {
    let mut toml = format!(
        r#"
[server]
listen = "127.0.0.1:0"
max_body_bytes = 65536
shutdown_grace_secs = 5
health_check_interval_secs = 1
{extra}

[providers.mock]
kind = "openai"
base_url = "{mock_url}"
api_key_env = "TEST_UPSTREAM_KEY"
timeout_secs = 1
headers = {{ "x-tenant-tag" = "tests" }}

[providers.dead]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
connect_timeout_secs = 1

[[models]]
name = "unreachable"
provider = "dead"
"#
    );
    for m in MODELS {
        toml.push_str(&format!(
            "\n[[models]]\nname = \"{m}\"\nprovider = \"mock\"\nupstream_model = \"mock-{m}\"\n"
        ));
    }
    toml
}

fn test_env(name: &str) -> Option<String> {
    match name {
        "TEST_UPSTREAM_KEY" => Some(UPSTREAM_KEY.into()),
        "TEST_CLIENT_KEY" => Some(CLIENT_KEY.into()),
        "TEST_ADMIN_KEY" => Some("admin-secret".into()),
        _ => None,
    }
}

impl Gateway {
    /// A gateway without API keys.
    pub async fn start() -> Self {
        Self::start_with("").await
    }

    /// A gateway with extra `[server]` lines or extra tables appended after `[server]`.
    pub async fn start_with(extra: &str) -> Self {
        let mock = mock::start().await;
        let toml = config_toml(&mock.base_url(), extra);
        Self::start_config(mock, &toml).await
    }

    /// A gateway with this whole config file (the standard mock runs beside it, unused).
    pub async fn start_toml(toml: &str) -> Self {
        Self::start_config(mock::start().await, toml).await
    }

    /// A gateway with this whole config file and extra env vars for it.
    pub async fn start_toml_env(toml: &str, env: &[(&str, &str)]) -> Self {
        Self::start_config_env(mock::start().await, toml, env).await
    }

    async fn start_config(mock: MockServer, toml: &str) -> Self {
        Self::start_config_env(mock, toml, &[]).await
    }

    async fn start_config_env(mock: MockServer, toml: &str, env: &[(&str, &str)]) -> Self {
        let lookup = |name: &str| {
            env.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_string())
                .or_else(|| test_env(name))
        };
        let config = Config::parse(toml, &lookup).expect("test config");

        let state = AppState::new(config).expect("state");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(server::run(listener, state, async move {
            let _ = rx.await;
        }));
        Self {
            url: format!("http://{addr}"),
            mock,
            client: reqwest::Client::new(),
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.url))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap()
    }

    /// Signals shutdown and waits for the server to stop.
    pub async fn stop(mut self) -> std::io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let handle = self.handle.take().unwrap();
        tokio::time::timeout(Duration::from_secs(10), handle)
            .await
            .expect("server stops")
            .unwrap()
    }

    pub fn trigger_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(h) = &self.handle {
            h.abort();
        }
    }
}

/// Reads an SSE response with an independent event-stream parser; returns the `data`
/// payloads in order.
pub async fn sse_data(resp: reqwest::Response) -> Vec<String> {
    use eventsource_stream::Eventsource;
    let mut events = resp.bytes_stream().eventsource();
    let mut out = Vec::new();
    while let Some(event) = events.next().await {
        out.push(event.expect("well-formed SSE").data);
    }
    out
}

/// Asserts an OpenAI-shaped error with the given status and returns its `error` object.
pub async fn expect_error(resp: reqwest::Response, status: u16) -> Value {
    assert_eq!(resp.status().as_u16(), status, "status");
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"),
        "error bodies are JSON"
    );
    let body: Value = resp.json().await.unwrap();
    let err = body["error"].clone();
    assert!(err["message"].is_string(), "message in {body}");
    assert!(err["type"].is_string(), "type in {body}");
    assert!(
        err.get("param").is_some() && err.get("code").is_some(),
        "param and code in {body}"
    );
    err
}

pub fn chat_body(model: &str, text: &str) -> Value {
    serde_json::json!({"model": model, "messages": [{"role": "user", "content": text}]})
}
