//! The admin API under `/admin`: read, set and reset a session's budget; list a tenant's
//! sessions. It has its own key (`admin.key_env`); without one configured it answers 404.

use aigw_state::budget::{Amount, BudgetKey, Limits, Remaining, Snapshot};
use axum::Json;
use axum::extract::{Path, Query, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::hash_key;
use crate::budget::window_label;
use crate::config::BudgetWindow;
use crate::error::GatewayError;
use crate::openapi::ApiErrors;
use crate::state::AppState;

/// Requires the admin key (`Authorization: Bearer …`).
pub async fn require_admin(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(expected) = state.config().admin_key else {
        return GatewayError::RouteNotFound {
            method: req.method().to_string(),
            path: req.uri().path().to_string(),
        }
        .into_response();
    };
    let presented = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        Some(key) if hash_key(key) == expected => next.run(req).await,
        _ => {
            GatewayError::Unauthorized("The admin API needs the admin key.".into()).into_response()
        }
    }
}

/// A session's budget in its current window.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionBudget {
    /// The tenant.
    pub tenant: String,
    /// The session.
    pub session: String,
    /// The policy in force (`override` when only an admin override applies), if any.
    pub policy: Option<String>,
    /// The current window (`session`, a day, a week).
    pub window: Option<String>,
    /// The ceilings in force.
    #[schema(value_type = Object)]
    pub limits: Option<Limits>,
    /// Whether the limits are an admin override.
    pub overridden: bool,
    /// Settled usage in the window.
    #[schema(value_type = Object)]
    pub usage: Amount,
    /// Live reservations (requests in flight).
    #[schema(value_type = Object)]
    pub reserved: Amount,
    /// What is left.
    #[schema(value_type = Object)]
    pub remaining: Option<Remaining>,
    /// Thresholds already fired in the window, percent.
    pub fired: Vec<u8>,
}

/// New limits for a session (all windows); absent fields are unlimited. `null` body fields
/// or `{"clear": true}` remove the override.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetBudget {
    /// Most tokens.
    pub tokens: Option<u64>,
    /// Most cost, USD.
    pub cost_usd: Option<f64>,
    /// Most audio, seconds.
    pub audio_secs: Option<f64>,
    /// Remove the override instead (the policy applies again).
    #[serde(default)]
    pub clear: bool,
}

/// The sessions of a tenant.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionList {
    /// The tenant.
    pub tenant: String,
    /// Its sessions, sorted.
    pub sessions: Vec<String>,
}

/// Which policy to read a session under.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PolicyQuery {
    /// The session's policy, when it is not `budgets.default_policy` (keys that name their
    /// own policy).
    pub policy: Option<String>,
}

async fn describe(
    state: &AppState,
    tenant: &str,
    session: &str,
    policy: Option<&str>,
) -> Result<SessionBudget, GatewayError> {
    let budgets = state.budgets();
    let unavailable = |_| GatewayError::StateUnavailable("budget".into());
    let over = budgets
        .ledger()
        .limits_override(tenant, session)
        .await
        .map_err(unavailable)?;
    let policy = budgets.policy_named(policy).map_err(|name| {
        GatewayError::bad_request(
            format!("no budget policy named '{name}'"),
            Some("policy".into()),
        )
    })?;
    let (name, window, limits) = match (&policy, over) {
        (Some(p), o) => (Some(p.name.clone()), p.window, Some(o.unwrap_or(p.limits))),
        (None, Some(o)) => (Some("override".to_string()), BudgetWindow::Session, Some(o)),
        (None, None) => (None, BudgetWindow::Session, None),
    };
    let window = limits.map(|_| window_label(window, std::time::SystemTime::now()));
    let snap = match &window {
        Some(w) => budgets
            .ledger()
            .snapshot(&BudgetKey {
                tenant: tenant.into(),
                session: session.into(),
                window: w.clone(),
            })
            .await
            .map_err(unavailable)?,
        None => Snapshot::default(),
    };
    Ok(SessionBudget {
        tenant: tenant.into(),
        session: session.into(),
        policy: name,
        remaining: limits.map(|l| l.remaining(&snap.usage.plus(snap.reserved))),
        window,
        limits,
        overridden: over.is_some(),
        usage: snap.usage,
        reserved: snap.reserved,
        fired: snap.fired,
    })
}

/// Reads a session's budget.
#[utoipa::path(get, path = "/admin/budgets/{tenant}/{session}", tag = "Admin",
    params(("tenant" = String, Path), ("session" = String, Path), PolicyQuery),
    responses((status = 200, body = SessionBudget), ApiErrors),
    security(("admin_key" = [])))]
pub async fn get_budget(
    State(state): State<AppState>,
    Path((tenant, session)): Path<(String, String)>,
    Query(q): Query<PolicyQuery>,
) -> Result<Json<SessionBudget>, GatewayError> {
    Ok(Json(
        describe(&state, &tenant, &session, q.policy.as_deref()).await?,
    ))
}

/// Sets (or clears) a session's limits, overriding its policy in every window.
#[utoipa::path(put, path = "/admin/budgets/{tenant}/{session}", tag = "Admin",
    params(("tenant" = String, Path), ("session" = String, Path), PolicyQuery),
    request_body = SetBudget,
    responses((status = 200, body = SessionBudget), ApiErrors),
    security(("admin_key" = [])))]
pub async fn set_budget(
    State(state): State<AppState>,
    Path((tenant, session)): Path<(String, String)>,
    Query(q): Query<PolicyQuery>,
    crate::extract::OpenAiJson(body): crate::extract::OpenAiJson<SetBudget>,
) -> Result<Json<SessionBudget>, GatewayError> {
    let limits = if body.clear {
        None
    } else {
        let units = |v: Option<f64>, scale: f64, param: &str| match v {
            Some(x) if x.is_finite() && x >= 0.0 => Ok(Some((x * scale).round() as u64)),
            Some(_) => Err(GatewayError::bad_request(
                "must be a non-negative number",
                Some(param.into()),
            )),
            None => Ok(None),
        };
        Some(Limits {
            tokens: body.tokens,
            cost_micros: units(body.cost_usd, 1e6, "cost_usd")?,
            audio_ms: units(body.audio_secs, 1e3, "audio_secs")?,
        })
    };
    state
        .budgets()
        .ledger()
        .set_limits_override(&tenant, &session, limits)
        .await
        .map_err(|_| GatewayError::StateUnavailable("budget".into()))?;
    Ok(Json(
        describe(&state, &tenant, &session, q.policy.as_deref()).await?,
    ))
}

/// Resets a session's usage, reservations and fired thresholds in the current window.
#[utoipa::path(delete, path = "/admin/budgets/{tenant}/{session}", tag = "Admin",
    params(("tenant" = String, Path), ("session" = String, Path), PolicyQuery),
    responses((status = 200, body = SessionBudget), ApiErrors),
    security(("admin_key" = [])))]
pub async fn reset_budget(
    State(state): State<AppState>,
    Path((tenant, session)): Path<(String, String)>,
    Query(q): Query<PolicyQuery>,
) -> Result<Json<SessionBudget>, GatewayError> {
    let policy = q.policy.as_deref();
    let current = describe(&state, &tenant, &session, policy).await?;
    if let Some(window) = current.window {
        state
            .budgets()
            .ledger()
            .reset(&BudgetKey {
                tenant: tenant.clone(),
                session: session.clone(),
                window,
            })
            .await
            .map_err(|_| GatewayError::StateUnavailable("budget".into()))?;
    }
    Ok(Json(describe(&state, &tenant, &session, policy).await?))
}

/// Lists the sessions of a tenant.
#[utoipa::path(get, path = "/admin/budgets/{tenant}", tag = "Admin",
    params(("tenant" = String, Path)),
    responses((status = 200, body = SessionList), ApiErrors),
    security(("admin_key" = [])))]
pub async fn list_sessions(
    State(state): State<AppState>,
    Path(tenant): Path<String>,
) -> Result<Json<SessionList>, GatewayError> {
    let sessions = state
        .budgets()
        .ledger()
        .sessions(&tenant)
        .await
        .map_err(|_| GatewayError::StateUnavailable("budget".into()))?;
    Ok(Json(SessionList { tenant, sessions }))
}
