//! `aigw-voice-bridge`: the Discord bot that joins voice channels on `/listen` and sends each
//! speaking user's audio to aigw's realtime endpoint as a track of its own (see the library's
//! docs). Built with `--features discord` (serenity and songbird, which speaks Discord's
//! end-to-end encrypted voice); configured by flags or the environment (`--help`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use aigw_voice_bridge::voice::{Tick, TickSender, UserId, VoiceConnector, VoiceError};
use aigw_voice_bridge::{Bridge, BridgeConfig, control};
use async_trait::async_trait;
use clap::Parser;
use serenity::all::{ChannelId, Context, EventHandler, GatewayIntents, GuildId, Ready};
use songbird::driver::{Channels, DecodeConfig, DecodeMode, SampleRate};
use songbird::{CoreEvent, Event, EventContext, SerenityInit, Songbird};

#[derive(Debug, Parser)]
#[command(
    name = "aigw-voice-bridge",
    version,
    about = "Discord voice → aigw realtime transcription"
)]
struct Cli {
    #[command(flatten)]
    config: BridgeConfig,
}

/// Logs the bot in; everything else happens through the control API.
struct Handler;

#[async_trait]
impl EventHandler for Handler {
    async fn ready(&self, _: Context, ready: Ready) {
        tracing::info!(user = %ready.user.name, guilds = ready.guilds.len(), "connected to Discord");
    }
}

/// Discord's voice side through songbird.
struct SongbirdVoice {
    songbird: Arc<Songbird>,
    http: Arc<serenity::http::Http>,
}

#[async_trait]
impl VoiceConnector for SongbirdVoice {
    async fn join(&self, guild: u64, channel: u64, ticks: TickSender) -> Result<(), VoiceError> {
        let guild_id = GuildId::new(guild);
        let call = self
            .songbird
            .join(guild_id, ChannelId::new(channel))
            .await
            .map_err(|e| {
                VoiceError(format!(
                    "Discord did not let me join the voice channel ({e})."
                ))
            })?;
        let mut call = call.lock().await;
        call.remove_all_global_events();
        let receiver = Receiver {
            ticks,
            ssrcs: Arc::new(Mutex::new(HashMap::new())),
        };
        for event in [
            CoreEvent::SpeakingStateUpdate,
            CoreEvent::VoiceTick,
            CoreEvent::ClientDisconnect,
        ] {
            call.add_global_event(event.into(), receiver.clone());
        }
        // The bot only listens.
        if let Err(e) = call.mute(true).await {
            tracing::debug!(error = %e, "could not mute");
        }
        Ok(())
    }

    async fn leave(&self, guild: u64) -> Result<(), VoiceError> {
        self.songbird
            .remove(GuildId::new(guild))
            .await
            .map_err(|e| VoiceError(format!("could not leave the voice channel ({e})")))
    }

    async fn display_name(&self, guild: u64, user: UserId) -> String {
        match self
            .http
            .get_member(GuildId::new(guild), serenity::all::UserId::new(user))
            .await
        {
            Ok(member) => member.display_name().to_string(),
            Err(e) => {
                tracing::warn!(error = %e, user, "could not look up a speaker's name");
                format!("user {user}")
            }
        }
    }
}

/// Turns songbird's events into ticks of user ids (songbird knows speakers by SSRC until a
/// speaking update names them).
#[derive(Clone)]
struct Receiver {
    ticks: TickSender,
    ssrcs: Arc<Mutex<HashMap<u32, UserId>>>,
}

#[async_trait]
impl songbird::EventHandler for Receiver {
    async fn act(&self, ctx: &EventContext<'_>) -> Option<Event> {
        let mut ssrcs = self.ssrcs.lock().unwrap_or_else(PoisonError::into_inner);
        match ctx {
            EventContext::SpeakingStateUpdate(s) => {
                if let Some(user) = s.user_id {
                    ssrcs.insert(s.ssrc, user.0);
                }
            }
            EventContext::VoiceTick(tick) => {
                if self.ticks.is_closed() {
                    return Some(Event::Cancel);
                }
                let speaking = tick
                    .speaking
                    .iter()
                    .filter_map(|(ssrc, data)| {
                        let user = ssrcs.get(ssrc)?;
                        let pcm = data.decoded_voice.as_ref()?;
                        Some((*user, pcm.clone()))
                    })
                    .collect();
                if !self.ticks.send(Tick { speaking }) {
                    tracing::debug!(dropped = self.ticks.dropped(), "a voice tick was dropped");
                }
            }
            EventContext::ClientDisconnect(d) => ssrcs.retain(|_, user| *user != d.user_id.0),
            _ => {}
        }
        None
    }
}

/// SIGINT or SIGTERM (what Kubernetes sends).
async fn stop_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,serenity=warn,songbird=warn".into()),
        )
        .init();
    let cli = Cli::parse();
    let config = cli.config;
    let songbird = Songbird::serenity_from_config(songbird::Config::default().decode_mode(
        DecodeMode::Decode(DecodeConfig::new(Channels::Stereo, SampleRate::Hz48000)),
    ));
    let intents = GatewayIntents::GUILDS | GatewayIntents::GUILD_VOICE_STATES;
    let mut client = serenity::Client::builder(&config.bot_token, intents)
        .event_handler(Handler)
        .register_songbird_with(songbird.clone())
        .await?;
    let connector = Arc::new(SongbirdVoice {
        songbird,
        http: client.http.clone(),
    });
    let bridge = Arc::new(Bridge::new(config.clone(), connector)?);
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    tracing::info!(listen = %config.listen, "control API listening");
    let server = axum::serve(listener, control::router(bridge.clone()))
        .with_graceful_shutdown(stop_signal());
    let shards = client.shard_manager.clone();
    tokio::select! {
        r = client.start() => r?,
        r = server => r?,
    }
    tracing::info!("stopping: finishing the voice sessions");
    bridge.shutdown().await;
    shards.shutdown_all().await;
    Ok(())
}
