//! The calls the gateway makes to Discord's REST API: editing an interaction's `@original`
//! message, sending follow-ups, and overwriting the application's commands.
//!
//! A call that meets a rate limit (429) waits the `retry_after` Discord names (at most
//! [`MAX_WAIT`]) and tries again; a 5xx or an unreachable API is retried with backoff; an
//! edit of `@original` that finds no message yet (404: the deferred answer has not landed at
//! Discord) is retried shortly. At most [`ATTEMPTS`] calls in all.

use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde_json::Value;

use super::config::DiscordConfig;
use super::interaction::Message;

/// Calls per request, first included.
pub const ATTEMPTS: u32 = 4;
/// The longest wait for a rate limit before trying again.
pub const MAX_WAIT: Duration = Duration::from_secs(30);
/// Discord asks bots to name themselves so.
const USER_AGENT: &str = concat!(
    "DiscordBot (https://github.com/aigw/aigw, ",
    env!("CARGO_PKG_VERSION"),
    ")"
);

/// A failed call.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The API could not be reached or did not answer in time (the URL, which holds the
    /// interaction's token, is left out).
    #[error("the Discord API could not be reached: {0}")]
    Transport(reqwest::Error),
    /// The API refused the call.
    #[error("the Discord API answered HTTP {status}: {body}")]
    Status {
        /// Its status.
        status: u16,
        /// Its body (Discord's error JSON), shortened.
        body: String,
    },
}

/// A client of one application's endpoints.
#[derive(Debug, Clone)]
pub struct DiscordApi {
    client: reqwest::Client,
    base: Url,
    application_id: String,
}

impl DiscordApi {
    /// A client for the configured application and API.
    pub fn new(config: &DiscordConfig) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(15))
            .build()?;
        Ok(Self {
            client,
            base: Url::parse(&config.api_base_url)?,
            application_id: config.application_id.clone(),
        })
    }

    /// `base/segments…`, each segment escaped.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// Replaces the "thinking…" message of a deferred interaction.
    pub async fn edit_original(&self, token: &str, message: &Message) -> Result<(), ApiError> {
        let url = self.url(&[
            "webhooks",
            &self.application_id,
            token,
            "messages",
            "@original",
        ]);
        let body = serde_json::to_value(message).unwrap_or_default();
        self.call(Method::PATCH, url, &body, None, true)
            .await
            .map(drop)
    }

    /// Sends one more message in answer to an interaction.
    pub async fn follow_up(&self, token: &str, message: &Message) -> Result<(), ApiError> {
        let url = self.url(&["webhooks", &self.application_id, token]);
        let body = serde_json::to_value(message).unwrap_or_default();
        self.call(Method::POST, url, &body, None, false)
            .await
            .map(drop)
    }

    /// Replaces the application's commands (in `guild`, else global) by `commands`; returns
    /// what Discord registered.
    pub async fn overwrite_commands(
        &self,
        bot_token: &str,
        guild: Option<&str>,
        commands: &Value,
    ) -> Result<Value, ApiError> {
        let url = match guild {
            Some(g) => self.url(&[
                "applications",
                &self.application_id,
                "guilds",
                g,
                "commands",
            ]),
            None => self.url(&["applications", &self.application_id, "commands"]),
        };
        let auth = format!("Bot {bot_token}");
        self.call(Method::PUT, url, commands, Some(&auth), false)
            .await
    }

    async fn call(
        &self,
        method: Method,
        url: Url,
        body: &Value,
        auth: Option<&str>,
        retry_not_found: bool,
    ) -> Result<Value, ApiError> {
        let mut attempt = 1;
        loop {
            let mut req = self.client.request(method.clone(), url.clone()).json(body);
            if let Some(auth) = auth {
                req = req.header(http::header::AUTHORIZATION, auth);
            }
            let wait = match req.send().await {
                Ok(resp) if resp.status().is_success() => {
                    // 204 and other empty answers are fine too.
                    let bytes = resp
                        .bytes()
                        .await
                        .map_err(|e| ApiError::Transport(e.without_url()))?;
                    return Ok(serde_json::from_slice(&bytes).unwrap_or(Value::Null));
                }
                Ok(resp) => {
                    let status = resp.status();
                    let header_wait = resp
                        .headers()
                        .get(http::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<f64>().ok());
                    let text = resp.text().await.unwrap_or_default();
                    let error = ApiError::Status {
                        status: status.as_u16(),
                        body: text.chars().take(500).collect(),
                    };
                    let wait = match status {
                        StatusCode::TOO_MANY_REQUESTS => {
                            let secs = serde_json::from_str::<Value>(&text)
                                .ok()
                                .and_then(|v| v["retry_after"].as_f64())
                                .or(header_wait)
                                .unwrap_or(1.0);
                            Some(Duration::from_secs_f64(
                                secs.clamp(0.0, MAX_WAIT.as_secs_f64()),
                            ))
                        }
                        StatusCode::NOT_FOUND if retry_not_found => {
                            Some(Duration::from_millis(500))
                        }
                        s if s.is_server_error() => Some(backoff(attempt)),
                        _ => None,
                    };
                    match wait {
                        Some(wait) if attempt < ATTEMPTS => wait,
                        _ => return Err(error),
                    }
                }
                Err(e) if attempt < ATTEMPTS => {
                    tracing::debug!(error = %e.without_url(), attempt, "Discord API call failed; retrying");
                    backoff(attempt)
                }
                Err(e) => return Err(ApiError::Transport(e.without_url())),
            };
            tracing::debug!(%method, attempt, wait_ms = wait.as_millis() as u64, "retrying a Discord API call");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(500 << attempt.min(4))
}
