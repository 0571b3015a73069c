//! Voice transcripts on Redis: a list `P:transcript:{session}` of JSON lines (`RPUSH`, then
//! `LTRIM` to the cap) and a marker `P:transcript:{session}:live`, both expiring together;
//! every update is one `MULTI`/`EXEC`.

use std::time::Duration;

use async_trait::async_trait;
use deadpool_redis::redis;

use super::RedisState;
use crate::StateError;
use crate::transcript::{TranscriptEntry, TranscriptLog};

/// Voice transcripts on Redis; cheap to clone.
#[derive(Debug, Clone)]
pub struct RedisTranscripts {
    state: RedisState,
}

impl RedisTranscripts {
    pub(super) fn new(state: RedisState) -> Self {
        Self { state }
    }

    /// Adds to `pipe`: `session`'s marker set and its lines kept, both for `ttl` from now.
    fn keep_alive(&self, pipe: &mut redis::Pipeline, session: &str, ttl: Duration) {
        let (list, live) = self.keys(session);
        let ms = millis(ttl);
        pipe.cmd("SET")
            .arg(&live)
            .arg(1)
            .arg("PX")
            .arg(ms)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&list)
            .arg(ms)
            .ignore();
    }

    /// The list of `session`'s lines and its marker.
    fn keys(&self, session: &str) -> (String, String) {
        (
            self.state.key(&["transcript", session]),
            self.state.key(&["transcript", session, "live"]),
        )
    }
}

fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[async_trait]
impl TranscriptLog for RedisTranscripts {
    async fn begin(&self, session: &str, ttl: Duration) -> Result<(), StateError> {
        let mut pipe = redis::pipe();
        self.keep_alive(pipe.atomic(), session, ttl);
        self.state
            .run(async |conn| pipe.query_async::<()>(conn).await)
            .await
    }

    async fn append(
        &self,
        session: &str,
        entry: &TranscriptEntry,
        cap: usize,
        ttl: Duration,
    ) -> Result<(), StateError> {
        let (list, _) = self.keys(session);
        let json = serde_json::to_string(entry)
            .map_err(|e| StateError::Corrupt(format!("transcript line: {e}")))?;
        let keep = i64::try_from(cap.max(1)).unwrap_or(i64::MAX);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("RPUSH")
            .arg(&list)
            .arg(json)
            .ignore()
            .cmd("LTRIM")
            .arg(&list)
            .arg(-keep)
            .arg(-1)
            .ignore();
        self.keep_alive(&mut pipe, session, ttl);
        self.state
            .run(async |conn| pipe.query_async::<()>(conn).await)
            .await
    }

    async fn latest(
        &self,
        session: &str,
        limit: usize,
    ) -> Result<Option<Vec<TranscriptEntry>>, StateError> {
        let (list, live) = self.keys(session);
        // `LRANGE key -0 -1` would be the whole list: a limit of 0 reads nothing.
        let from = -i64::try_from(limit.max(1)).unwrap_or(i64::MAX);
        let pipe = redis::pipe()
            .cmd("EXISTS")
            .arg(&live)
            .cmd("LRANGE")
            .arg(&list)
            .arg(from)
            .arg(-1)
            .to_owned();
        let (exists, lines): (bool, Vec<String>) = self
            .state
            .run(async |conn| pipe.query_async(conn).await)
            .await?;
        if !exists {
            return Ok(None);
        }
        if limit == 0 {
            return Ok(Some(Vec::new()));
        }
        lines
            .iter()
            .map(|l| {
                serde_json::from_str(l)
                    .map_err(|e| StateError::Corrupt(format!("transcript line {l:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }
}
