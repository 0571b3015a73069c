//! Voice transcripts: the finalised lines of a live voice session (a Discord channel's talk,
//! say), newest last, capped in length and expiring when the session goes quiet.
//!
//! A session's log exists from [`TranscriptLog::begin`] (or its first line) until its time
//! to live passes with nothing new; reading a session that never began answers `None`, so
//! "no voice session here" and "a session with no lines yet" stay distinct.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::StateError;

/// One finalised utterance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TranscriptEntry {
    /// Who spoke, as people see them (a display name).
    pub speaker: String,
    /// A stable id of the speaker (a Discord user id), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speaker_id: Option<String>,
    /// What they said.
    pub text: String,
    /// When the line was recorded, in seconds since the Unix epoch.
    pub at: u64,
}

/// Where voice sessions' transcripts are kept.
#[async_trait]
pub trait TranscriptLog: Send + Sync + 'static {
    /// Marks `session` as live (keeping its lines) for `ttl` from now.
    async fn begin(&self, session: &str, ttl: Duration) -> Result<(), StateError>;

    /// Appends `entry` to `session`'s log, keeps its newest `cap` lines and extends its life
    /// to `ttl` from now.
    async fn append(
        &self,
        session: &str,
        entry: &TranscriptEntry,
        cap: usize,
        ttl: Duration,
    ) -> Result<(), StateError>;

    /// The newest `limit` lines of `session`, oldest first; `None` when it has no log.
    async fn latest(
        &self,
        session: &str,
        limit: usize,
    ) -> Result<Option<Vec<TranscriptEntry>>, StateError>;
}
