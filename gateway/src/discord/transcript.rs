//! The voice transcripts `/transcript` and `/recap` read: a store keyed by guild and
//! channel. The voice bridge (the second half of issue 7) is what will fill one; until it
//! exists the server runs with [`NoTranscripts`], so both commands say there is none.

use async_trait::async_trait;

/// One finalised utterance of a voice session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranscriptLine {
    /// The speaker's display name.
    pub speaker: String,
    /// What they said.
    pub text: String,
}

/// The store could not be read.
#[derive(Debug, thiserror::Error)]
#[error("the transcript store failed: {0}")]
pub struct StoreError(pub String);

/// Where the voice sessions' transcripts are kept.
#[async_trait]
pub trait TranscriptStore: Send + Sync {
    /// The latest `limit` lines (oldest first) of the voice session of `channel_id` in
    /// `guild_id`; `None` when that channel has no voice session.
    async fn latest(
        &self,
        guild_id: &str,
        channel_id: &str,
        limit: usize,
    ) -> Result<Option<Vec<TranscriptLine>>, StoreError>;
}

/// The store of a server without voice sessions: no channel has a transcript.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoTranscripts;

#[async_trait]
impl TranscriptStore for NoTranscripts {
    async fn latest(
        &self,
        _guild_id: &str,
        _channel_id: &str,
        _limit: usize,
    ) -> Result<Option<Vec<TranscriptLine>>, StoreError> {
        Ok(None)
    }
}
