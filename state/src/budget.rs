//! The budget ledger: per-session usage against ceilings, with reservations.
//!
//! A request first **reserves** an estimate (prompt tokens plus `max_tokens`, its cost, its
//! audio seconds): admitted only if usage + live reservations + the estimate stays within
//! every limited dimension. After the call it **settles** to the actual usage (the
//! reservation goes, the actual amount is added) or, on failure, **releases** the
//! reservation. Reservations expire after a TTL, so a replica that dies between reserve and
//! settle cannot hold budget forever. Settling also reports which thresholds (percent of the
//! ceiling) usage has newly reached; each fires once per window.
//!
//! A ledger entry is one session of one tenant in one window (`session` for the session's
//! lifetime, or a day or week label), so a new window starts from zero without any sweep.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::StateError;

/// Spend in each dimension a budget can limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Amount {
    /// Prompt plus completion tokens.
    pub tokens: u64,
    /// Cost in millionths of a US dollar.
    pub cost_micros: u64,
    /// Audio in milliseconds.
    pub audio_ms: u64,
}

impl Amount {
    /// The sum, saturating.
    pub fn plus(self, other: Amount) -> Amount {
        Amount {
            tokens: self.tokens.saturating_add(other.tokens),
            cost_micros: self.cost_micros.saturating_add(other.cost_micros),
            audio_ms: self.audio_ms.saturating_add(other.audio_ms),
        }
    }
}

/// Which dimension a ceiling is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    /// Tokens.
    Tokens,
    /// Cost.
    Cost,
    /// Audio time.
    Audio,
}

/// Ceilings; `None` leaves a dimension unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Most tokens.
    pub tokens: Option<u64>,
    /// Most cost, millionths of a US dollar.
    pub cost_micros: Option<u64>,
    /// Most audio, milliseconds.
    pub audio_ms: Option<u64>,
}

/// What is left under each limited dimension (`None`: unlimited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remaining {
    /// Tokens left.
    pub tokens: Option<u64>,
    /// Cost left, millionths of a US dollar.
    pub cost_micros: Option<u64>,
    /// Audio left, milliseconds.
    pub audio_ms: Option<u64>,
}

impl Limits {
    fn dims(&self, a: &Amount) -> [(Dimension, Option<u64>, u64); 3] {
        [
            (Dimension::Tokens, self.tokens, a.tokens),
            (Dimension::Cost, self.cost_micros, a.cost_micros),
            (Dimension::Audio, self.audio_ms, a.audio_ms),
        ]
    }

    /// Whether nothing is limited.
    pub fn is_unlimited(&self) -> bool {
        self.tokens.is_none() && self.cost_micros.is_none() && self.audio_ms.is_none()
    }

    /// The first limited dimension `committed` exceeds, if any.
    pub fn exceeded(&self, committed: &Amount) -> Option<Dimension> {
        self.dims(committed)
            .into_iter()
            .find(|(_, limit, used)| limit.is_some_and(|l| *used > l))
            .map(|(d, _, _)| d)
    }

    /// What is left after `committed` (usage plus reservations).
    pub fn remaining(&self, committed: &Amount) -> Remaining {
        Remaining {
            tokens: self.tokens.map(|l| l.saturating_sub(committed.tokens)),
            cost_micros: self
                .cost_micros
                .map(|l| l.saturating_sub(committed.cost_micros)),
            audio_ms: self.audio_ms.map(|l| l.saturating_sub(committed.audio_ms)),
        }
    }

    /// How much of the ceiling `used` reaches, in whole percent: the largest share over the
    /// limited dimensions (a zero limit counts as reached at once); 0 when unlimited.
    pub fn percent_used(&self, used: &Amount) -> u64 {
        self.dims(used)
            .into_iter()
            .filter_map(|(_, limit, used)| {
                limit.map(|l| {
                    if l == 0 {
                        if used > 0 { u64::MAX } else { 100 }
                    } else {
                        ((u128::from(used) * 100) / u128::from(l)).min(u128::from(u64::MAX)) as u64
                    }
                })
            })
            .max()
            .unwrap_or(0)
    }

    /// The thresholds (ascending, percent) that `used` reaches and that are not in `fired`.
    pub fn newly_crossed(&self, used: &Amount, thresholds: &[u8], fired: &[u8]) -> Vec<u8> {
        if self.is_unlimited() {
            return Vec::new();
        }
        let pct = self.percent_used(used);
        let mut out: Vec<u8> = thresholds
            .iter()
            .copied()
            .filter(|t| u64::from(*t) <= pct && !fired.contains(t))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// One session of one tenant in one window.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BudgetKey {
    /// The API key's tenant.
    pub tenant: String,
    /// The paying session.
    pub session: String,
    /// `session`, or a day (`2026-11-22`) or ISO week (`2026-W47`) label.
    pub window: String,
}

/// The answer to a reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reserve {
    /// Admitted and recorded; what is left after it.
    Reserved(Remaining),
    /// Refused; nothing recorded. What is left, and the dimension that would be exceeded.
    Denied {
        /// What is left (before this request).
        remaining: Remaining,
        /// The dimension the request would exceed.
        dimension: Dimension,
    },
}

/// The result of settling a reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    /// Usage of the window after this request.
    pub usage: Amount,
    /// What is left (after live reservations too).
    pub remaining: Remaining,
    /// Thresholds reached for the first time in this window (ascending percent); they are
    /// now marked fired.
    pub crossed: Vec<u8>,
}

/// A ledger entry as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Settled usage.
    pub usage: Amount,
    /// Sum of live reservations.
    pub reserved: Amount,
    /// Number of live reservations.
    pub reservations: u64,
    /// Thresholds already fired in this window (ascending percent).
    pub fired: Vec<u8>,
}

/// Per-session usage and reservations; see the module docs.
#[async_trait]
pub trait BudgetLedger: Send + Sync + 'static {
    /// Atomically: drops expired reservations; admits `amount` if usage + reservations +
    /// `amount` stays within every limited dimension of `limits`, recording it as
    /// reservation `id` for `ttl`. Registers the session with its tenant.
    async fn reserve(
        &self,
        key: &BudgetKey,
        id: &str,
        amount: Amount,
        limits: &Limits,
        ttl: Duration,
    ) -> Result<Reserve, StateError>;

    /// Atomically: removes reservation `id` (if still live), adds `actual` to usage (even
    /// past the ceiling: it was spent), and marks fired and returns the `thresholds` usage
    /// now reaches that had not fired in this window.
    async fn settle(
        &self,
        key: &BudgetKey,
        id: &str,
        actual: Amount,
        limits: &Limits,
        thresholds: &[u8],
    ) -> Result<Settled, StateError>;

    /// Removes reservation `id`; usage is unchanged.
    async fn release(&self, key: &BudgetKey, id: &str) -> Result<(), StateError>;

    /// The entry now (expired reservations not counted).
    async fn snapshot(&self, key: &BudgetKey) -> Result<Snapshot, StateError>;

    /// Forgets the entry's usage, reservations and fired thresholds.
    async fn reset(&self, key: &BudgetKey) -> Result<(), StateError>;

    /// The sessions of `tenant` that have (had) an entry, sorted.
    async fn sessions(&self, tenant: &str) -> Result<Vec<String>, StateError>;

    /// The limits an administrator set for a session (all windows), if any.
    async fn limits_override(
        &self,
        tenant: &str,
        session: &str,
    ) -> Result<Option<Limits>, StateError>;

    /// Sets (or with `None` removes) a session's limits override.
    async fn set_limits_override(
        &self,
        tenant: &str,
        session: &str,
        limits: Option<Limits>,
    ) -> Result<(), StateError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_and_thresholds() {
        let limits = Limits {
            tokens: Some(1000),
            cost_micros: Some(2_000_000),
            audio_ms: None,
        };
        let used = Amount {
            tokens: 400,
            cost_micros: 1_720_000,
            audio_ms: 99_999,
        };
        assert_eq!(limits.percent_used(&used), 86, "cost dominates");
        assert_eq!(limits.newly_crossed(&used, &[50, 85, 100], &[]), [50, 85]);
        assert_eq!(limits.newly_crossed(&used, &[50, 85, 100], &[50]), [85]);
        assert!(
            Limits::default()
                .newly_crossed(&used, &[50], &[])
                .is_empty()
        );
        assert_eq!(
            limits.exceeded(&Amount {
                tokens: 1001,
                ..Amount::default()
            }),
            Some(Dimension::Tokens)
        );
        assert_eq!(limits.exceeded(&used), None);
        assert_eq!(limits.remaining(&used).tokens, Some(600));
        assert_eq!(limits.remaining(&used).audio_ms, None);
    }
}
