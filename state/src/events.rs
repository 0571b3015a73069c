//! Budget events: thresholds reached, escalations to a human game master.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::StateError;
use crate::budget::{Amount, Limits};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Usage reached a threshold.
    Threshold,
    /// Usage reached the escalation threshold: a human should look (the GM queue).
    Escalate,
}

/// One budget event, as published and posted to webhooks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetEvent {
    /// What happened.
    pub kind: EventKind,
    /// The session's tenant.
    pub tenant: String,
    /// The session.
    pub session: String,
    /// The window (`session`, a day, a week).
    pub window: String,
    /// The threshold reached, percent of the ceiling.
    pub threshold_pct: u8,
    /// Usage when it was reached.
    pub usage: Amount,
    /// The ceilings.
    pub limits: Limits,
    /// Unix seconds.
    pub at: u64,
}

/// Where events go.
#[async_trait]
pub trait EventSink: Send + Sync + 'static {
    /// Publishes one event.
    async fn publish(&self, event: &BudgetEvent) -> Result<(), StateError>;
}
