//! Per-session budgets in the request flow: who pays, under which policy, reserve before the
//! call, settle or release after, threshold events, downgrades.
//!
//! - The **session** is `X-Session-Id` if present, else the request's `user`, else the API
//!   key's name; it is scoped to the key's tenant.
//! - The **policy** is the session's admin override, else the key's policy, else
//!   `budgets.default_policy`; no policy: no budget (nothing is reserved).
//! - An [`Admission`] holds the reservation. Settled with the actual usage, it fires threshold
//!   events (once per window; `escalate` at the escalation threshold) to the event sink and
//!   the webhook; dropped unsettled (an error, a panic), it releases the reservation.
//! - The shared state failing closes budgets: a 503 (`budget_unavailable`), never an
//!   unchecked call.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aigw_models::catalog::Price;
use aigw_models::openai::Usage;
use aigw_state::budget::{Amount, BudgetKey, BudgetLedger, Limits, Remaining, Reserve};
use aigw_state::events::{BudgetEvent, EventKind, EventSink};
use http::HeaderMap;

use crate::auth::Principal;
use crate::config::{BudgetWindow, BudgetsConfig, PolicyConfig};
use crate::error::GatewayError;
use crate::metrics::Metrics;

/// Header naming the paying session.
pub const SESSION_HEADER: &str = "x-session-id";
/// Header with what is left of the session's budget.
pub const REMAINING_HEADER: &str = "x-aigw-budget-remaining";

/// The budget side of the server.
pub struct Budgets {
    config: BudgetsConfig,
    ledger: Arc<dyn BudgetLedger>,
    events: Arc<dyn EventSink>,
    metrics: Metrics,
    webhook: Option<(reqwest::Client, String)>,
}

/// The paying session of a request.
#[derive(Debug, Clone)]
pub struct Session {
    /// The key's tenant.
    pub tenant: Arc<str>,
    /// The session id.
    pub id: String,
    policy_name: Option<String>,
}

/// The policy in force for a session, with its effective limits.
#[derive(Debug, Clone)]
pub struct Applied {
    policy: PolicyConfig,
    key: BudgetKey,
}

impl Applied {
    /// The policy in force, its limits after any admin override.
    pub fn policy(&self) -> &PolicyConfig {
        &self.policy
    }

    /// The session's ledger entry in the current window.
    pub fn key(&self) -> &BudgetKey {
        &self.key
    }
}

impl Budgets {
    /// Budgets over `ledger`, publishing to `events`.
    pub fn new(
        config: BudgetsConfig,
        ledger: Arc<dyn BudgetLedger>,
        events: Arc<dyn EventSink>,
        metrics: Metrics,
    ) -> Self {
        let webhook = config.webhook_url.clone().map(|url| {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default();
            (client, url)
        });
        Self {
            config,
            ledger,
            events,
            metrics,
            webhook,
        }
    }

    /// The ledger (for the admin API).
    pub fn ledger(&self) -> &Arc<dyn BudgetLedger> {
        &self.ledger
    }

    /// The configuration.
    pub fn config(&self) -> &BudgetsConfig {
        &self.config
    }

    /// Who pays for a request.
    pub fn session(
        &self,
        principal: &Principal,
        headers: &HeaderMap,
        user: Option<&str>,
    ) -> Session {
        let id = headers
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .or(user.map(str::trim).filter(|s| !s.is_empty()))
            .unwrap_or(&principal.key_name);
        Session {
            tenant: Arc::clone(&principal.tenant),
            id: id.chars().take(256).collect(),
            policy_name: principal
                .policy
                .as_deref()
                .map(str::to_string)
                .or_else(|| self.config.default_policy.clone()),
        }
    }

    /// The policy named `name`, else the default policy (admin API: the paying key is not
    /// known there); `Err(name)` when no policy has that name.
    pub fn policy_named(&self, name: Option<&str>) -> Result<Option<PolicyConfig>, String> {
        match name {
            Some(n) => self
                .config
                .policies
                .get(n)
                .cloned()
                .map(Some)
                .ok_or_else(|| n.to_string()),
            None => Ok(self
                .config
                .default_policy
                .as_ref()
                .and_then(|n| self.config.policies.get(n))
                .cloned()),
        }
    }

    /// The policy and ledger entry of `session` now, if it is under a budget.
    pub async fn applied(&self, session: &Session) -> Result<Option<Applied>, GatewayError> {
        let base = session
            .policy_name
            .as_ref()
            .and_then(|n| self.config.policies.get(n));
        let over = match self
            .ledger
            .limits_override(&session.tenant, &session.id)
            .await
        {
            Ok(over) => over,
            // A session without a policy is under no budget unless an admin override says
            // otherwise; when the override cannot be read, it is served (and counted).
            Err(e) if base.is_none() => {
                self.metrics
                    .state_errors
                    .with_label_values(&["budget"])
                    .inc();
                tracing::warn!(error = %e, "could not read a budget override: serving a session without a policy");
                None
            }
            Err(e) => return Err(self.unavailable(e)),
        };
        let mut policy = match (base, over) {
            (Some(p), _) => p.clone(),
            (None, Some(_)) => PolicyConfig {
                name: "override".into(),
                limits: Limits::default(),
                window: BudgetWindow::Session,
                thresholds: vec![50, 85, 100],
                downgrade: None,
            },
            (None, None) => return Ok(None),
        };
        if let Some(limits) = over {
            policy.limits = limits;
        }
        let key = BudgetKey {
            tenant: session.tenant.to_string(),
            session: session.id.clone(),
            window: window_label(policy.window, SystemTime::now()),
        };
        Ok(Some(Applied { policy, key }))
    }

    /// The alias to use instead of `alias` when the session is past its policy's downgrade
    /// threshold.
    pub async fn downgrade(
        &self,
        applied: &Applied,
        alias: &str,
    ) -> Result<Option<String>, GatewayError> {
        let Some((at, to)) = &applied.policy.downgrade else {
            return Ok(None);
        };
        if to == alias {
            return Ok(None);
        }
        let snap = self
            .ledger
            .snapshot(&applied.key)
            .await
            .map_err(|e| self.unavailable(e))?;
        let pct = applied.policy.limits.percent_used(&snap.usage);
        Ok((pct >= u64::from(*at)).then(|| to.clone()))
    }

    /// What is left of `applied`'s budget now (for answers that spend nothing, such as
    /// cache hits); `None` when the ledger cannot say.
    pub async fn remaining(&self, applied: &Applied) -> Option<String> {
        let snap = self.ledger.snapshot(&applied.key).await.ok()?;
        let committed = Amount {
            tokens: snap.usage.tokens + snap.reserved.tokens,
            cost_micros: snap.usage.cost_micros + snap.reserved.cost_micros,
            audio_ms: snap.usage.audio_ms + snap.reserved.audio_ms,
        };
        let remaining = applied.policy.limits.remaining(&committed);
        Some(describe(&applied.policy.limits, &remaining))
    }

    /// Reserves `estimate` for one request; 429 `insufficient_quota` when it does not fit.
    pub async fn admit(
        self: &Arc<Self>,
        applied: Applied,
        estimate: Amount,
        prompt_estimate: u64,
        price: Price,
    ) -> Result<Admission, GatewayError> {
        let id = uuid::Uuid::new_v4().to_string();
        let outcome = self
            .ledger
            .reserve(
                &applied.key,
                &id,
                estimate,
                &applied.policy.limits,
                self.config.reservation_ttl,
            )
            .await
            .map_err(|e| self.unavailable(e))?;
        match outcome {
            Reserve::Reserved(remaining) => Ok(Admission {
                budgets: Arc::clone(self),
                applied: Some(applied),
                id,
                price,
                remaining,
                prompt_estimate,
            }),
            Reserve::Denied { remaining, .. } => {
                self.metrics
                    .budget_denials
                    .with_label_values(&[&applied.key.tenant])
                    .inc();
                Err(GatewayError::QuotaExceeded {
                    remaining: describe(&applied.policy.limits, &remaining),
                })
            }
        }
    }

    fn unavailable(&self, e: aigw_state::StateError) -> GatewayError {
        self.metrics
            .state_errors
            .with_label_values(&["budget"])
            .inc();
        tracing::warn!(error = %e, "budget check failed: refusing the request");
        GatewayError::StateUnavailable("budget".into())
    }

    async fn publish(&self, applied: &Applied, usage: Amount, crossed: &[u8]) {
        for &pct in crossed {
            let kind = if pct == self.config.escalation_threshold {
                EventKind::Escalate
            } else {
                EventKind::Threshold
            };
            let event = BudgetEvent {
                kind,
                tenant: applied.key.tenant.clone(),
                session: applied.key.session.clone(),
                window: applied.key.window.clone(),
                threshold_pct: pct,
                usage,
                limits: applied.policy.limits,
                at: aigw_state::unix_now(),
            };
            self.metrics
                .budget_events
                .with_label_values(&[if kind == EventKind::Escalate {
                    "escalate"
                } else {
                    "threshold"
                }])
                .inc();
            if let Err(e) = self.events.publish(&event).await {
                tracing::warn!(error = %e, "could not publish a budget event");
            }
            if let Some((client, url)) = &self.webhook {
                tokio::spawn(post_webhook(client.clone(), url.clone(), event));
            }
        }
    }
}

/// POSTs one event, retrying with backoff (1 s, 2 s, 4 s, 8 s) on failure.
async fn post_webhook(client: reqwest::Client, url: String, event: BudgetEvent) {
    let mut delay = Duration::from_secs(1);
    for attempt in 1..=5 {
        match client.post(&url).json(&event).send().await {
            Ok(resp) if resp.status().is_success() => return,
            Ok(resp) => {
                tracing::warn!(status = %resp.status(), attempt, "budget webhook refused the event")
            }
            Err(e) => tracing::warn!(error = %e, attempt, "budget webhook unreachable"),
        }
        if attempt < 5 {
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
    }
    tracing::error!(session = %event.session, threshold = event.threshold_pct, "budget webhook gave up on an event");
}

/// The budget taken by one request; settle it, or drop it to release.
pub struct Admission {
    budgets: Arc<Budgets>,
    applied: Option<Applied>,
    id: String,
    price: Price,
    remaining: Remaining,
    prompt_estimate: u64,
}

impl Admission {
    /// What was left once this request's reservation was taken.
    pub fn remaining_header(&self) -> Option<String> {
        self.applied
            .as_ref()
            .map(|a| describe(&a.policy.limits, &self.remaining))
    }

    /// The amount of an OpenAI usage at this model's price.
    pub fn amount(&self, usage: &Usage) -> Amount {
        amount(usage.prompt_tokens, usage.completion_tokens, self.price)
    }

    /// The spend of a stream cut before its usage arrived: the reservation's prompt estimate
    /// and one token per output chunk received.
    pub fn partial(&self, output_chunks: u64) -> Amount {
        amount(self.prompt_estimate, output_chunks, self.price)
    }

    /// Replaces the reservation by the actual usage; returns the remaining-budget header.
    pub async fn settle(mut self, actual: Amount) -> Option<String> {
        let applied = self.applied.take()?;
        let budgets = Arc::clone(&self.budgets);
        match budgets
            .ledger
            .settle(
                &applied.key,
                &self.id,
                actual,
                &applied.policy.limits,
                &applied.policy.thresholds,
            )
            .await
        {
            Ok(settled) => {
                budgets
                    .publish(&applied, settled.usage, &settled.crossed)
                    .await;
                Some(describe(&applied.policy.limits, &settled.remaining))
            }
            Err(e) => {
                // The reservation expires by itself; the usage is lost for this request.
                budgets
                    .metrics
                    .state_errors
                    .with_label_values(&["settle"])
                    .inc();
                tracing::error!(error = %e, session = %applied.key.session, "could not settle a budget reservation");
                None
            }
        }
    }

    /// Settles in the background (from a destructor).
    pub fn settle_later(self, actual: Amount) {
        tokio::spawn(async move {
            self.settle(actual).await;
        });
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some(applied) = self.applied.take() {
            let budgets = Arc::clone(&self.budgets);
            let id = std::mem::take(&mut self.id);
            tokio::spawn(async move {
                if let Err(e) = budgets.ledger.release(&applied.key, &id).await {
                    budgets
                        .metrics
                        .state_errors
                        .with_label_values(&["release"])
                        .inc();
                    tracing::warn!(error = %e, "could not release a budget reservation (it will expire)");
                }
            });
        }
    }
}

/// Tokens and cost of a usage.
pub fn amount(prompt: u64, completion: u64, price: Price) -> Amount {
    let cost =
        (prompt as f64 * price.input_per_1m + completion as f64 * price.output_per_1m).ceil();
    Amount {
        tokens: prompt.saturating_add(completion),
        cost_micros: if cost.is_finite() && cost > 0.0 {
            cost as u64
        } else {
            0
        },
        audio_ms: 0,
    }
}

/// `tokens=…, cost_usd=…, audio_secs=…` for the limited dimensions.
pub fn describe(limits: &Limits, remaining: &Remaining) -> String {
    let mut parts = Vec::new();
    if let (Some(_), Some(t)) = (limits.tokens, remaining.tokens) {
        parts.push(format!("tokens={t}"));
    }
    if let (Some(_), Some(c)) = (limits.cost_micros, remaining.cost_micros) {
        parts.push(format!("cost_usd={:.6}", c as f64 / 1e6));
    }
    if let (Some(_), Some(a)) = (limits.audio_ms, remaining.audio_ms) {
        parts.push(format!("audio_secs={:.1}", a as f64 / 1e3));
    }
    parts.join(", ")
}

/// The ledger window label for `now`: `session`, `YYYY-MM-DD` or `YYYY-Www` (ISO week, UTC).
pub fn window_label(window: BudgetWindow, now: SystemTime) -> String {
    let days = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400) as i64;
    match window {
        BudgetWindow::Session => "session".into(),
        BudgetWindow::Daily => {
            let (y, m, d) = civil(days);
            format!("{y:04}-{m:02}-{d:02}")
        }
        BudgetWindow::Weekly => {
            // ISO week: the week with the year's first Thursday is week 1; Monday starts it.
            let weekday = (days + 3).rem_euclid(7); // 0 = Monday (1970-01-01 was a Thursday)
            let thursday = days - weekday + 3;
            let (year, _, _) = civil(thursday);
            let jan1 = days_from_civil(year, 1, 1);
            let week = (thursday - jan1) / 7 + 1;
            format!("{year:04}-W{week:02}")
        }
    }
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(days: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(days * 86_400 + 3600)
    }

    #[test]
    fn window_labels() {
        // 2026-11-22 is day 20779, a Sunday of ISO week 47.
        assert_eq!(window_label(BudgetWindow::Daily, at(20_779)), "2026-11-22");
        assert_eq!(window_label(BudgetWindow::Weekly, at(20_779)), "2026-W47");
        assert_eq!(window_label(BudgetWindow::Weekly, at(20_780)), "2026-W48");
        // 2021-01-03 (Sunday) belongs to 2020-W53; 2024-12-30 (Monday) to 2025-W01.
        assert_eq!(window_label(BudgetWindow::Weekly, at(18_630)), "2020-W53");
        assert_eq!(window_label(BudgetWindow::Weekly, at(20_087)), "2025-W01");
        assert_eq!(window_label(BudgetWindow::Session, at(1)), "session");
    }

    #[test]
    fn amounts_and_descriptions() {
        let price = Price {
            input_per_1m: 0.15,
            output_per_1m: 0.6,
        };
        let a = amount(1000, 500, price);
        assert_eq!(a.tokens, 1500);
        assert_eq!(a.cost_micros, 450); // 150 µ$ + 300 µ$
        let limits = Limits {
            tokens: Some(10),
            cost_micros: Some(2_000_000),
            audio_ms: None,
        };
        let rem = limits.remaining(&Amount {
            tokens: 4,
            cost_micros: 500_000,
            audio_ms: 0,
        });
        assert_eq!(describe(&limits, &rem), "tokens=6, cost_usd=1.500000");
    }
}
