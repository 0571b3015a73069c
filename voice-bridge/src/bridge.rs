//! The bridge's voice sessions, one per guild (a bot is in one voice channel per guild).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, oneshot};
use tokio::task::JoinHandle;

use crate::config::BridgeConfig;
use crate::post::Poster;
use crate::session::{self, Placement, SessionParts};
use crate::voice::{TickSender, VoiceConnector};

/// How long `stop` waits for a session to drain.
const STOP_WAIT: Duration = Duration::from_secs(20);

/// Why `/listen` or `/stop` failed, in words for the channel.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// Nothing to stop.
    #[error("I'm not listening to a voice channel in this server.")]
    NotListening,
    /// The realtime endpoint could not be used.
    #[error("{0}")]
    Realtime(String),
    /// Discord's voice side failed.
    #[error("{0}")]
    Voice(String),
}

struct Running {
    placement: Placement,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// The sessions; cheap to share behind an `Arc`.
pub struct Bridge {
    config: Arc<BridgeConfig>,
    connector: Arc<dyn VoiceConnector>,
    poster: Poster,
    sessions: Mutex<HashMap<u64, Running>>,
}

impl Bridge {
    /// A bridge with no session yet.
    pub fn new(config: BridgeConfig, connector: Arc<dyn VoiceConnector>) -> anyhow::Result<Self> {
        let poster = Poster::new(&config)?;
        Ok(Self {
            config: Arc::new(config),
            connector,
            poster,
            sessions: Mutex::new(HashMap::new()),
        })
    }

    /// The bridge's settings.
    pub fn config(&self) -> &BridgeConfig {
        &self.config
    }

    /// Joins `placement`'s voice channel and starts transcribing it; a session already
    /// running in the guild is stopped first (its last lines still posted).
    pub async fn listen(&self, placement: Placement) -> Result<(), BridgeError> {
        let mut sessions = self.sessions.lock().await;
        if let Some(running) = sessions.remove(&placement.guild) {
            tracing::info!(guild = placement.guild, "moving to another voice channel");
            finish(running).await;
        }
        let connection = session::connect(&self.config, &placement)
            .await
            .map_err(BridgeError::Realtime)?;
        let (sender, ticks) = TickSender::channel();
        self.connector
            .join(placement.guild, placement.voice_channel, sender)
            .await
            .map_err(|e| BridgeError::Voice(e.0))?;
        let (stop, stop_rx) = oneshot::channel();
        let span = tracing::info_span!(
            "voice",
            guild = placement.guild,
            channel = placement.voice_channel
        );
        let task = tokio::spawn(tracing::Instrument::instrument(
            session::run(SessionParts {
                placement,
                config: self.config.clone(),
                connector: self.connector.clone(),
                poster: self.poster.clone(),
                connection,
                ticks,
                stop: stop_rx,
            }),
            span,
        ));
        tracing::info!(
            guild = placement.guild,
            voice = placement.voice_channel,
            text = placement.text_channel,
            "listening"
        );
        sessions.insert(
            placement.guild,
            Running {
                placement,
                stop,
                task,
            },
        );
        Ok(())
    }

    /// Leaves `guild`'s voice channel, waiting for the session's last lines.
    pub async fn stop(&self, guild: u64) -> Result<Placement, BridgeError> {
        let running = self
            .sessions
            .lock()
            .await
            .remove(&guild)
            .ok_or(BridgeError::NotListening)?;
        if let Err(e) = self.connector.leave(guild).await {
            tracing::warn!(error = %e, guild, "could not leave the voice channel");
        }
        let placement = running.placement;
        finish(running).await;
        Ok(placement)
    }

    /// Where the bridge listens now.
    pub async fn sessions(&self) -> Vec<Placement> {
        let mut sessions: Vec<_> = self
            .sessions
            .lock()
            .await
            .values()
            .filter(|r| !r.task.is_finished())
            .map(|r| r.placement)
            .collect();
        sessions.sort_by_key(|p| p.guild);
        sessions
    }

    /// Stops every session (the process is ending).
    pub async fn shutdown(&self) {
        let guilds: Vec<u64> = self.sessions.lock().await.keys().copied().collect();
        for guild in guilds {
            let _ = self.stop(guild).await;
        }
    }
}

/// Stops a session and waits (bounded) for it to post its last lines.
async fn finish(running: Running) {
    let _ = running.stop.send(());
    let mut task = running.task;
    if tokio::time::timeout(STOP_WAIT, &mut task).await.is_err() {
        tracing::warn!("a voice session did not stop in time; abandoning it");
        task.abort();
    }
}
