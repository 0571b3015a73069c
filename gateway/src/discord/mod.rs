//! The Discord integration: slash commands over HTTP interactions, and the gateway's side of
//! the voice bridge.
//!
//! Discord POSTs every interaction to `/integrations/discord/interactions`, signed with the
//! application's Ed25519 key. The handler verifies the signature and its timestamp (else
//! 401), answers a PING with a PONG, and answers a command at once with a deferred response
//! (type 5, "thinking…"); the command then runs in the background and its answer replaces
//! the "thinking…" message by a PATCH of `@original` through Discord's API, a long answer
//! continuing in follow-up messages. Every message the bot writes mentions nobody.
//!
//! Each guild channel is a session of its own (`discord:{guild}:{channel}`) within the
//! configured tenant: its budget, the cache and routing apply to `/ask` as to any client.
//!
//! Layout:
//! - [`config`]: the `[discord]` section; [`verify`]: signatures;
//! - [`interaction`]: the wire format and the commands; [`commands`]: what each answers;
//! - [`split`]: long answers into messages; [`api`]: the calls to Discord's REST API;
//! - [`transcript`]: the voice transcripts `/transcript` and `/recap` read;
//! - [`voice`]: `/listen` and `/stop` to the voice bridge, its transcript lines back;
//! - [`cli`]: `aigw discord register-commands`.

pub mod api;
pub mod cli;
mod commands;
pub mod config;
pub mod interaction;
pub mod split;
pub mod transcript;
pub mod verify;
pub mod voice;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aigw_models::openai::ErrorResponse;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http::{HeaderMap, StatusCode};
use tracing::Instrument;

pub use config::DiscordConfig;
use interaction::{
    APPLICATION_COMMAND, Command, Interaction, InteractionResponse, MESSAGE_LIMIT, Message, PING,
};
pub use transcript::{SharedTranscripts, TranscriptLine, TranscriptStore};

use crate::auth::Principal;
use crate::error::ErrorKind;
use crate::state::AppState;

/// Where Discord sends interactions.
pub const PATH: &str = "/integrations/discord/interactions";
/// Most messages one answer is split into; the rest is cut with a note.
pub const MAX_MESSAGES: usize = 10;
/// Discord's interaction tokens live 15 minutes: an answer must be posted before.
const ANSWER_WITHIN: Duration = Duration::from_secs(14 * 60);

/// The integration's state. Cloning is cheap: one `Arc`.
#[derive(Clone)]
pub struct Discord {
    inner: Arc<Inner>,
}

struct Inner {
    app: AppState,
    config: DiscordConfig,
    verifier: verify::Verifier,
    api: api::DiscordApi,
    transcripts: Arc<dyn TranscriptStore>,
    /// The voice bridge's control API, when `[discord.voice]` is configured.
    bridge: Option<voice::BridgeClient>,
    /// Who the channels' requests run as: the configured tenant and policy, the one alias.
    principal: Principal,
}

/// A guild channel: the paying session of its commands.
#[derive(Debug, Clone)]
struct Channel {
    guild_id: String,
    channel_id: String,
}

impl Channel {
    fn session(&self) -> String {
        format!("discord:{}:{}", self.guild_id, self.channel_id)
    }
}

/// A command being answered in the background.
struct Job {
    interaction_id: String,
    token: String,
    channel: Channel,
    command: Command,
}

impl Discord {
    /// The integration for `app`'s `[discord]` section.
    pub fn new(
        app: AppState,
        config: DiscordConfig,
        transcripts: Arc<dyn TranscriptStore>,
    ) -> anyhow::Result<Self> {
        let verifier = verify::Verifier::new(&config.public_key, config.timestamp_window)?;
        let api = api::DiscordApi::new(&config)?;
        let bridge = config
            .voice
            .as_ref()
            .map(voice::BridgeClient::new)
            .transpose()?;
        let principal = Principal {
            key_name: "discord".into(),
            tenant: config.tenant.as_str().into(),
            models: Some(vec![config.model.clone()].into()),
            policy: config.policy.as_deref().map(Into::into),
            requests_per_minute: None,
            tokens_per_minute: None,
        };
        Ok(Self {
            inner: Arc::new(Inner {
                app,
                config,
                verifier,
                api,
                transcripts,
                bridge,
                principal,
            }),
        })
    }

    /// The immediate answer to a verified interaction; a command starts its background job.
    fn respond(&self, interaction: Interaction) -> Response {
        let answer = match interaction.kind {
            PING => InteractionResponse::pong(),
            APPLICATION_COMMAND => {
                let Some(command) = interaction.data.as_ref().and_then(Command::parse) else {
                    return ephemeral(
                        "I don't know that command. Try `/ask`, `/budget`, `/transcript`, `/recap`, `/listen` or `/stop`.",
                    );
                };
                let (Some(guild_id), Some(channel_id)) =
                    (interaction.guild_id, interaction.channel_id)
                else {
                    return ephemeral(
                        "My commands work in a server's channels: each channel has its own budget.",
                    );
                };
                if matches!(&command, Command::Ask { prompt } if prompt.is_empty()) {
                    return ephemeral("Ask me something: `/ask prompt: …`");
                }
                if matches!(&command, Command::Listen { voice_channel_id } if voice_channel_id.is_empty())
                {
                    return ephemeral("Name the voice channel to listen to: `/listen channel: …`");
                }
                self.spawn(Job {
                    interaction_id: interaction.id,
                    token: interaction.token,
                    channel: Channel {
                        guild_id,
                        channel_id,
                    },
                    command,
                });
                InteractionResponse::deferred()
            }
            other => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    "unsupported_interaction",
                    &format!("Interaction type {other} is not handled."),
                );
            }
        };
        axum::Json(answer).into_response()
    }

    fn spawn(&self, job: Job) {
        let span = tracing::info_span!(
            "discord",
            command = job.command.name(),
            interaction = %job.interaction_id,
            session = %job.channel.session(),
        );
        let discord = self.clone();
        self.inner
            .app
            .background()
            .spawn(async move { discord.complete(job).await }.instrument(span));
    }

    /// Runs the command and posts its answer: the first message replaces `@original`, the
    /// rest follow.
    async fn complete(&self, job: Job) {
        let text = tokio::time::timeout(ANSWER_WITHIN, commands::run(self, &job))
            .await
            .unwrap_or_else(|_| "Sorry, that took too long to answer.".into());
        let mut parts = split::split(&text, MESSAGE_LIMIT, MAX_MESSAGES);
        if parts.is_empty() {
            parts.push("*(no answer)*".into());
        }
        let api = &self.inner.api;
        for (i, part) in parts.iter().enumerate() {
            let message = Message::new(part.as_str());
            let sent = if i == 0 {
                api.edit_original(&job.token, &message).await
            } else {
                api.follow_up(&job.token, &message).await
            };
            if let Err(e) = sent {
                tracing::warn!(error = %e, message = i, "could not post the answer to Discord");
                return;
            }
        }
        tracing::info!(messages = parts.len(), "answered");
    }
}

/// A message only the invoking user sees, as the immediate answer.
fn ephemeral(content: &str) -> Response {
    axum::Json(InteractionResponse::ephemeral(content)).into_response()
}

/// An OpenAI-shaped error, labelled for the metrics.
fn refuse(status: StatusCode, code: &'static str, message: &str) -> Response {
    let kind = if status == StatusCode::UNAUTHORIZED {
        "authentication_error"
    } else if status.is_server_error() {
        "api_error"
    } else {
        "invalid_request_error"
    };
    let body = ErrorResponse::new(message, kind, None, Some(code.into()));
    let mut resp = (status, axum::Json(body)).into_response();
    resp.extensions_mut().insert(ErrorKind(code));
    resp
}

/// Receives Discord's interactions.
///
/// PING → PONG; a command → a deferred response, its answer following through Discord's API.
#[utoipa::path(
    post,
    path = "/integrations/discord/interactions",
    tag = "Discord",
    params(
        ("X-Signature-Ed25519" = String, Header, description = "Ed25519 signature (hex) of the timestamp followed by the raw body, by the application's key"),
        ("X-Signature-Timestamp" = String, Header, description = "Unix time (seconds) of the signature; refused outside `discord.timestamp_window_secs` of now"),
    ),
    request_body(content = Interaction, description = "A Discord interaction (only the fields the gateway reads are shown)"),
    responses(
        (status = 200, description = "PONG (type 1) to a PING; a deferred response (type 5) to a command, whose answer then replaces `@original`; an ephemeral message (type 4) for a command it cannot run", body = InteractionResponse),
        (status = 400, description = "The body is not an interaction, or its type is not handled", body = ErrorResponse),
        (status = 401, description = "A missing or wrong signature, or a stale timestamp", body = ErrorResponse),
        (status = 404, description = "No `[discord]` section is configured", body = ErrorResponse),
    )
)]
pub async fn interactions(
    State(discord): State<Discord>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(why) = discord
        .inner
        .verifier
        .verify(&headers, &body, SystemTime::now())
    {
        tracing::info!(reason = %why, "refused a Discord interaction");
        return refuse(
            StatusCode::UNAUTHORIZED,
            "invalid_signature",
            "Invalid request signature.",
        );
    }
    let interaction: Interaction = match serde_json::from_slice(&body) {
        Ok(i) => i,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "invalid_interaction",
                &format!("The body is not an interaction: {e}"),
            );
        }
    };
    discord.respond(interaction)
}

/// The interactions route (and the voice bridge's transcript lines) when `[discord]` is
/// configured; nothing otherwise.
pub fn router(state: &AppState) -> Router<AppState> {
    router_with(
        state,
        Arc::new(SharedTranscripts(state.transcripts().clone())),
    )
}

/// [`router`] reading transcripts from `transcripts`.
pub fn router_with(state: &AppState, transcripts: Arc<dyn TranscriptStore>) -> Router<AppState> {
    let Some(config) = &state.config().discord else {
        return Router::new();
    };
    match Discord::new(state.clone(), config.clone(), transcripts) {
        Ok(discord) => Router::new()
            .route(PATH, post(interactions))
            .route(voice::LINES_PATH, post(voice::lines))
            .with_state(discord),
        Err(e) => {
            tracing::error!(error = %e, "the Discord integration could not start");
            Router::new().route(
                PATH,
                post(|| async {
                    refuse(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "discord_unavailable",
                        "The Discord integration could not start.",
                    )
                }),
            )
        }
    }
}
