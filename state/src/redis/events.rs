//! Budget events on a Redis stream: `XADD P:events MAXLEN ~ {cap} * event {json}`.

use async_trait::async_trait;
use deadpool_redis::redis;

use super::RedisState;
use crate::StateError;
use crate::events::{BudgetEvent, EventSink};

/// Budget events appended to the stream `P:events`, field `event` holding the event's JSON,
/// trimmed to about [`super::RedisOptions::events_max_len`] entries; cheap to clone.
/// Consumers read it with `XRANGE`/`XREAD` (or a consumer group).
#[derive(Debug, Clone)]
pub struct RedisEvents {
    state: RedisState,
    stream: String,
}

impl RedisEvents {
    pub(super) fn new(state: RedisState) -> Self {
        let stream = state.key(&["events"]);
        Self { state, stream }
    }

    /// The stream's key.
    pub fn stream(&self) -> &str {
        &self.stream
    }
}

#[async_trait]
impl EventSink for RedisEvents {
    async fn publish(&self, event: &BudgetEvent) -> Result<(), StateError> {
        let json = serde_json::to_string(event)
            .map_err(|e| StateError::Corrupt(format!("budget event: {e}")))?;
        let cmd = redis::cmd("XADD")
            .arg(&self.stream)
            .arg("MAXLEN")
            .arg("~")
            .arg(self.state.inner.events_max_len)
            .arg("*")
            .arg("event")
            .arg(json)
            .to_owned();
        self.state
            .run(async |conn| cmd.query_async::<()>(conn).await)
            .await
    }
}
