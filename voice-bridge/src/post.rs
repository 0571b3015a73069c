//! Where a finalised utterance goes: a message in the Discord text channel (the speaker's
//! display name in bold, no mentions) and a line in the gateway's transcript.
//!
//! Both calls retry what is worth retrying — Discord's rate limits (waiting its
//! `retry_after`), 5xx answers and unreachable servers — a few times, then give up with a
//! logged warning: a lost line must not hold up the ones after it.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::config::BridgeConfig;

/// Calls per post, first included.
const ATTEMPTS: u32 = 4;
/// Longest message Discord accepts.
const MESSAGE_LIMIT: usize = 2000;
/// The longest rate-limit wait honoured.
const MAX_WAIT: Duration = Duration::from_secs(30);

/// A failed post.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    /// The server could not be reached.
    #[error("unreachable: {0}")]
    Transport(reqwest::Error),
    /// The server refused.
    #[error("HTTP {status}: {body}")]
    Status {
        /// Its status.
        status: u16,
        /// Its body, shortened.
        body: String,
    },
}

/// Posts utterances; cheap to clone.
#[derive(Debug, Clone)]
pub struct Poster {
    client: reqwest::Client,
    discord: String,
    bot_token: String,
    gateway: String,
    bridge_token: String,
}

impl Poster {
    /// A poster for `config`'s Discord API and gateway.
    pub fn new(config: &BridgeConfig) -> anyhow::Result<Self> {
        Ok(Self {
            client: reqwest::Client::builder()
                .user_agent(concat!(
                    "DiscordBot (https://github.com/aigw/aigw, ",
                    env!("CARGO_PKG_VERSION"),
                    ")"
                ))
                .connect_timeout(Duration::from_secs(5))
                .timeout(Duration::from_secs(15))
                .build()?,
            discord: config.discord_api_base.trim_end_matches('/').to_string(),
            bot_token: config.bot_token.clone(),
            gateway: config.gateway_url.trim_end_matches('/').to_string(),
            bridge_token: config.bridge_token.clone(),
        })
    }

    /// Posts `speaker: text` to `channel_id`.
    pub async fn message(
        &self,
        channel_id: u64,
        speaker: &str,
        text: &str,
    ) -> Result<(), PostError> {
        let url = format!("{}/channels/{channel_id}/messages", self.discord);
        let body = json!({
            "content": line(speaker, text),
            "allowed_mentions": {"parse": []},
        });
        self.call(&url, &format!("Bot {}", self.bot_token), &body)
            .await
    }

    /// Adds the line to the gateway's transcript of `guild_id`/`channel_id`.
    pub async fn transcript(
        &self,
        guild_id: u64,
        channel_id: u64,
        speaker: &str,
        speaker_id: u64,
        text: &str,
    ) -> Result<(), PostError> {
        let url = format!("{}/integrations/discord/voice/lines", self.gateway);
        let body = json!({
            "guild_id": guild_id.to_string(),
            "channel_id": channel_id.to_string(),
            "speaker": speaker,
            "speaker_id": speaker_id.to_string(),
            "text": text,
        });
        self.call(&url, &format!("Bearer {}", self.bridge_token), &body)
            .await
    }

    async fn call(&self, url: &str, auth: &str, body: &Value) -> Result<(), PostError> {
        let mut attempt = 1;
        loop {
            let sent = self
                .client
                .request(Method::POST, url)
                .header(http::header::AUTHORIZATION, auth)
                .json(body)
                .send()
                .await;
            let (error, wait) = match sent {
                Ok(resp) if resp.status().is_success() => return Ok(()),
                Ok(resp) => {
                    let status = resp.status();
                    let text = resp.text().await.unwrap_or_default();
                    let wait = match status {
                        StatusCode::TOO_MANY_REQUESTS => {
                            let secs = serde_json::from_str::<Value>(&text)
                                .ok()
                                .and_then(|v| v["retry_after"].as_f64())
                                .unwrap_or(1.0);
                            Some(Duration::from_secs_f64(
                                secs.clamp(0.0, MAX_WAIT.as_secs_f64()),
                            ))
                        }
                        s if s.is_server_error() => Some(backoff(attempt)),
                        _ => None,
                    };
                    let error = PostError::Status {
                        status: status.as_u16(),
                        body: text.chars().take(300).collect(),
                    };
                    (error, wait)
                }
                Err(e) => (
                    PostError::Transport(e.without_url()),
                    Some(backoff(attempt)),
                ),
            };
            match wait {
                Some(wait) if attempt < ATTEMPTS => {
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                _ => return Err(error),
            }
        }
    }
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(250 << attempt.min(5))
}

/// `**speaker**: text`, the name's markdown escaped, cut to Discord's message limit.
pub fn line(speaker: &str, text: &str) -> String {
    let mut name = String::with_capacity(speaker.len() + 4);
    for c in speaker.chars() {
        if matches!(
            c,
            '\\' | '*' | '_' | '~' | '`' | '|' | '>' | '[' | ']' | '(' | ')' | '#'
        ) {
            name.push('\\');
        }
        name.push(c);
    }
    let full = format!("**{name}**: {}", text.trim());
    if full.chars().count() <= MESSAGE_LIMIT {
        return full;
    }
    let mut cut: String = full.chars().take(MESSAGE_LIMIT - 1).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_escape_names_and_fit_a_message() {
        assert_eq!(line("Ada", " Hello there. "), "**Ada**: Hello there.");
        assert_eq!(line("*bold_guy*", "hi"), "**\\*bold\\_guy\\***: hi");
        let long = line("Ada", &"é".repeat(3000));
        assert_eq!(long.chars().count(), MESSAGE_LIMIT);
        assert!(long.ends_with('…'));
    }
}
