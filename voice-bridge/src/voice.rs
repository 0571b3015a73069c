//! What the bridge needs from Discord's voice side, and the audio it receives.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use tokio::sync::mpsc;

/// Discord's decoded voice: 48 kHz.
pub const SAMPLE_RATE: u32 = 48_000;
/// Stereo, interleaved (`L, R, L, R, …`).
pub const CHANNELS: u16 = 2;
/// One tick is 20 ms.
pub const TICK_MS: u64 = 20;
/// Samples (both channels) in one tick.
pub const TICK_SAMPLES: usize =
    (SAMPLE_RATE as usize / 1000) * TICK_MS as usize * CHANNELS as usize;

/// A Discord user id.
pub type UserId = u64;

/// One 20 ms tick of a voice channel: the PCM16 of every user heard in it (48 kHz stereo,
/// interleaved). A user who is silent is absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tick {
    /// Who spoke, and their audio.
    pub speaking: Vec<(UserId, Vec<i16>)>,
}

/// Where a connector delivers a session's ticks: a bounded queue. When the session falls
/// behind, new ticks are dropped (and counted) rather than stalling the voice driver.
#[derive(Debug, Clone)]
pub struct TickSender {
    tx: mpsc::Sender<Tick>,
    dropped: Arc<AtomicU64>,
}

/// Ticks queued per session before new ones are dropped: 5 s of audio.
pub const TICK_QUEUE: usize = 250;

impl TickSender {
    /// A sender and the session's receiving end.
    pub fn channel() -> (Self, mpsc::Receiver<Tick>) {
        let (tx, rx) = mpsc::channel(TICK_QUEUE);
        (
            Self {
                tx,
                dropped: Arc::new(AtomicU64::new(0)),
            },
            rx,
        )
    }

    /// Queues `tick`; `false` when it was dropped (the session is behind, or has ended).
    pub fn send(&self, tick: Tick) -> bool {
        match self.tx.try_send(tick) {
            Ok(()) => true,
            Err(_) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Ticks dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Why joining or leaving failed, in words for the channel.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct VoiceError(pub String);

/// Discord's voice side: joining a channel and receiving each user's audio.
#[async_trait]
pub trait VoiceConnector: Send + Sync + 'static {
    /// Joins `channel` in `guild` (moving from another channel of the guild) and delivers
    /// its ticks to `ticks` until [`VoiceConnector::leave`].
    async fn join(&self, guild: u64, channel: u64, ticks: TickSender) -> Result<(), VoiceError>;

    /// Leaves `guild`'s voice channel.
    async fn leave(&self, guild: u64) -> Result<(), VoiceError>;

    /// How `user` is shown in `guild` (nickname, else global name, else username).
    async fn display_name(&self, guild: u64, user: UserId) -> String;
}
