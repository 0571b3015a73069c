//! The voice transcripts `/transcript` and `/recap` read, by guild and channel. The server
//! reads the shared [`TranscriptLog`] (in memory, or on Redis so every replica sees the
//! lines the voice bridge sent to any of them); tests may give a store of their own.

use std::sync::Arc;

use aigw_state::transcript::TranscriptLog;
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

/// The server's store: the shared transcript log, keyed by the channel's session.
#[derive(Clone)]
pub struct SharedTranscripts(pub Arc<dyn TranscriptLog>);

#[async_trait]
impl TranscriptStore for SharedTranscripts {
    async fn latest(
        &self,
        guild_id: &str,
        channel_id: &str,
        limit: usize,
    ) -> Result<Option<Vec<TranscriptLine>>, StoreError> {
        let session = super::Channel {
            guild_id: guild_id.to_string(),
            channel_id: channel_id.to_string(),
        }
        .session();
        let lines = self
            .0
            .latest(&session, limit)
            .await
            .map_err(|e| StoreError(e.to_string()))?;
        Ok(lines.map(|lines| {
            lines
                .into_iter()
                .map(|l| TranscriptLine {
                    speaker: l.speaker,
                    text: l.text,
                })
                .collect()
        }))
    }
}
