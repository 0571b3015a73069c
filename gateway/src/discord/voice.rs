//! The gateway's side of the voice bridge (`[discord.voice]`).
//!
//! The bridge is a separate process (`aigw-voice-bridge`, a bot on Discord's voice gateway):
//! the gateway answers the slash commands, so `/listen` and `/stop` reach the bridge through
//! its control API ([`BridgeClient`]), and the bridge sends each finalised utterance back
//! here ([`lines`], `POST /integrations/discord/voice/lines`) so `/transcript` and `/recap`
//! can read the channel's transcript on any replica. Both directions carry the shared secret
//! of `discord.voice.bridge_token_env` as a bearer token.

use std::time::Duration;

use aigw_models::openai::ErrorResponse;
use aigw_state::transcript::TranscriptEntry;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::config::{VoiceConfig, is_snowflake};
use super::{Channel, Discord, refuse};

/// Where the bridge sends transcript lines.
pub const LINES_PATH: &str = "/integrations/discord/voice/lines";
/// Longest speaker name and line the gateway stores.
const MAX_SPEAKER_CHARS: usize = 100;
const MAX_TEXT_CHARS: usize = 4000;

/// What `/listen` asks of the bridge: join `voice_channel_id`, post lines to `text_channel_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenRequest {
    /// The guild.
    pub guild_id: String,
    /// The voice channel to join.
    pub voice_channel_id: String,
    /// The text channel whose session the lines belong to (where `/listen` was used).
    pub text_channel_id: String,
}

/// What `/stop` asks of the bridge: leave the guild's voice channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopRequest {
    /// The guild.
    pub guild_id: String,
}

/// One finalised utterance, as the bridge sends it.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VoiceLine {
    /// The guild.
    pub guild_id: String,
    /// The text channel of the voice session (where `/listen` was used).
    pub channel_id: String,
    /// The speaker's display name.
    pub speaker: String,
    /// The speaker's user id.
    #[serde(default)]
    pub speaker_id: Option<String>,
    /// What they said.
    pub text: String,
}

/// Why the bridge did not do what was asked, in words for the channel.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// No `[discord.voice]`, or its secret is unset.
    #[error("voice listening is not set up on this server")]
    NotConfigured,
    /// The bridge could not be reached.
    #[error("the voice bridge could not be reached")]
    Unreachable,
    /// The bridge refused, with its reason.
    #[error("{0}")]
    Refused(String),
}

/// A client of the bridge's control API.
#[derive(Debug, Clone)]
pub struct BridgeClient {
    client: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl BridgeClient {
    /// A client for `voice`'s bridge.
    pub fn new(voice: &VoiceConfig) -> anyhow::Result<Self> {
        Ok(Self {
            client: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(3))
                // Joining takes Discord seconds; moving from another channel first waits for
                // that session's last transcripts (up to 20 s).
                .timeout(Duration::from_secs(60))
                .build()?,
            base: voice.bridge_url.clone(),
            token: voice.bridge_token.clone(),
        })
    }

    /// Asks the bridge to join and transcribe.
    pub async fn listen(&self, req: &ListenRequest) -> Result<(), BridgeError> {
        self.call("/v1/listen", req).await
    }

    /// Asks the bridge to leave.
    pub async fn stop(&self, req: &StopRequest) -> Result<(), BridgeError> {
        self.call("/v1/stop", req).await
    }

    async fn call(&self, path: &str, body: &impl Serialize) -> Result<(), BridgeError> {
        let token = self.token.as_deref().ok_or(BridgeError::NotConfigured)?;
        let resp = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .map_err(|e| {
                tracing::warn!(error = %e.without_url(), "the voice bridge could not be reached");
                BridgeError::Unreachable
            })?;
        if resp.status().is_success() {
            return Ok(());
        }
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or_default();
        let message = body["error"]["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("the voice bridge answered HTTP {status}"));
        tracing::warn!(%status, %message, "the voice bridge refused");
        Err(BridgeError::Refused(message))
    }
}

/// Whether `headers` carry `token` as a bearer token (compared as digests, so the time taken
/// says nothing about the secret).
pub fn bearer_matches(headers: &HeaderMap, token: &str) -> bool {
    let Some(given) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    Sha256::digest(given.trim().as_bytes()) == Sha256::digest(token.as_bytes())
}

/// Receives a finalised utterance from the voice bridge.
///
/// The line joins the transcript of the text channel's voice session, which `/transcript`
/// and `/recap` read (kept `discord.voice.transcript_lines` lines, for
/// `discord.voice.transcript_ttl_secs` after the last).
#[utoipa::path(
    post,
    path = "/integrations/discord/voice/lines",
    tag = "Discord",
    params(
        ("Authorization" = String, Header, description = "`Bearer` and the secret of `discord.voice.bridge_token_env`"),
    ),
    request_body(content = VoiceLine),
    responses(
        (status = 204, description = "Stored"),
        (status = 400, description = "Not a line (bad ids, empty or over-long text)", body = ErrorResponse),
        (status = 401, description = "A missing or wrong secret", body = ErrorResponse),
        (status = 404, description = "No `[discord.voice]` section is configured", body = ErrorResponse),
        (status = 503, description = "The transcript store is unavailable (Redis down)", body = ErrorResponse),
    )
)]
pub async fn lines(
    State(discord): State<Discord>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Some(voice) = &discord.inner.config.voice else {
        return refuse(
            StatusCode::NOT_FOUND,
            "voice_not_configured",
            "No [discord.voice] section is configured on this server.",
        );
    };
    let authorised = voice
        .bridge_token
        .as_deref()
        .is_some_and(|token| bearer_matches(&headers, token));
    if !authorised {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "invalid_bridge_token",
            "Missing or wrong voice bridge token.",
        );
    }
    let line: VoiceLine = match serde_json::from_slice(&body) {
        Ok(line) => line,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "invalid_line",
                &format!("The body is not a transcript line: {e}"),
            );
        }
    };
    let speaker = line.speaker.trim();
    let text = line.text.trim();
    let problem = if !is_snowflake(&line.guild_id) || !is_snowflake(&line.channel_id) {
        Some("'guild_id' and 'channel_id' must be Discord ids (digits).")
    } else if line
        .speaker_id
        .as_deref()
        .is_some_and(|id| !is_snowflake(id))
    {
        Some("'speaker_id' must be a Discord id (digits).")
    } else if speaker.is_empty() || speaker.chars().count() > MAX_SPEAKER_CHARS {
        Some("'speaker' must be 1 to 100 characters.")
    } else if text.is_empty() || text.chars().count() > MAX_TEXT_CHARS {
        Some("'text' must be 1 to 4000 characters.")
    } else {
        None
    };
    if let Some(problem) = problem {
        return refuse(StatusCode::BAD_REQUEST, "invalid_line", problem);
    }
    let session = Channel {
        guild_id: line.guild_id.clone(),
        channel_id: line.channel_id.clone(),
    }
    .session();
    let entry = TranscriptEntry {
        speaker: speaker.to_string(),
        speaker_id: line.speaker_id.clone(),
        text: text.to_string(),
        at: aigw_state::unix_now(),
    };
    match discord
        .inner
        .app
        .transcripts()
        .append(
            &session,
            &entry,
            voice.transcript_lines,
            voice.transcript_ttl,
        )
        .await
    {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => {
            tracing::warn!(error = %e, %session, "could not store a transcript line");
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "transcript_store_unavailable",
                "The transcript store is unavailable; try again.",
            )
        }
    }
}
