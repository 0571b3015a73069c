//! Requests and tokens per minute per API key (GCRA over the shared
//! [`aigw_state::ratelimit::RateLimiter`]).
//!
//! Requests are counted on arrival: a key past its requests per minute gets a 429
//! (`rate_limit_error`, `code: rate_limit_exceeded`, `Retry-After`). Tokens are known only
//! after a call, so they are debited then; a key whose token bucket is in debt is refused
//! until it has paid it back. Every response to a limited key carries OpenAI's
//! `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` headers. The limits fail open:
//! when the shared state is unreachable requests pass, and the failure is counted.

use std::sync::Arc;
use std::time::Duration;

use aigw_state::ratelimit::{RateDecision, RateLimit, RateLimiter};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue};

use crate::auth::Principal;
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::state::AppState;

/// Rate limits of the server.
pub struct RateLimits {
    limiter: Arc<dyn RateLimiter>,
    metrics: Metrics,
}

/// Where a request's tokens are debited once known.
#[derive(Clone)]
pub struct TokenDebit {
    limits: Arc<RateLimits>,
    key: String,
    limit: RateLimit,
}

impl TokenDebit {
    /// Debits `tokens` in the background.
    pub fn debit(&self, tokens: u64) {
        if tokens == 0 {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(e) = this
                .limits
                .limiter
                .debit(&this.key, this.limit, tokens)
                .await
            {
                this.limits
                    .metrics
                    .state_errors
                    .with_label_values(&["rate_limit"])
                    .inc();
                tracing::warn!(error = %e, "could not debit tokens from a rate limit");
            }
        });
    }
}

fn per_minute(n: u64) -> RateLimit {
    RateLimit {
        per_minute: n.max(1),
        burst: n.max(1),
    }
}

impl RateLimits {
    /// Limits over `limiter`.
    pub fn new(limiter: Arc<dyn RateLimiter>, metrics: Metrics) -> Self {
        Self { limiter, metrics }
    }

    /// The token debit of `principal`'s requests, if its key limits tokens.
    pub fn token_debit(self: &Arc<Self>, principal: &Principal) -> Option<TokenDebit> {
        principal.tokens_per_minute.map(|n| TokenDebit {
            limits: Arc::clone(self),
            key: format!("tpm:{}", principal.key_name),
            limit: per_minute(n),
        })
    }

    async fn check(&self, key: String, limit: RateLimit, cost: u64) -> Option<RateDecision> {
        match self.limiter.acquire(&key, limit, cost).await {
            Ok(d) => Some(d),
            Err(e) => {
                self.metrics
                    .state_errors
                    .with_label_values(&["rate_limit"])
                    .inc();
                tracing::warn!(error = %e, "rate limit check failed: letting the request through");
                None
            }
        }
    }

    /// Admits one request of `principal`: its headers, or the 429. Both limits are checked
    /// at once (one round trip's wait on a shared store, not two): the token check costs
    /// nothing, so running it beside a request check that denies changes nothing.
    pub async fn admit(&self, principal: &Principal) -> Result<HeaderMap, GatewayError> {
        let requests = async {
            let n = principal.requests_per_minute?;
            let key = format!("rpm:{}", principal.key_name);
            Some((n, self.check(key, per_minute(n), 1).await?))
        };
        let tokens = async {
            let n = principal.tokens_per_minute?;
            let key = format!("tpm:{}", principal.key_name);
            // Cost 0: admitted unless earlier requests' tokens put the key in debt.
            Some((n, self.check(key, per_minute(n), 0).await?))
        };
        let (requests, tokens) = tokio::join!(requests, tokens);
        let mut headers = HeaderMap::new();
        for (what, decision) in [("requests", requests), ("tokens", tokens)] {
            let Some((limit, d)) = decision else {
                continue;
            };
            put(&mut headers, what, &d);
            if !d.allowed {
                return Err(GatewayError::RateLimited {
                    what,
                    limit,
                    retry_after: d.retry_after.unwrap_or(Duration::from_secs(1)),
                    headers: Box::new(headers),
                });
            }
        }
        Ok(headers)
    }
}

/// `x-ratelimit-*-{what}` headers of a decision.
fn put(headers: &mut HeaderMap, what: &str, d: &RateDecision) {
    let reset = format!("{:.3}s", d.reset_after.as_secs_f64());
    for (name, value) in [
        (format!("x-ratelimit-limit-{what}"), d.limit.to_string()),
        (
            format!("x-ratelimit-remaining-{what}"),
            d.remaining.to_string(),
        ),
        (format!("x-ratelimit-reset-{what}"), reset),
    ] {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            headers.insert(n, v);
        }
    }
}

/// Middleware after authentication: admits the request under its key's limits and adds
/// the rate-limit headers to the response.
pub async fn enforce(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(principal) = req.extensions().get::<Principal>().cloned() else {
        return next.run(req).await;
    };
    if principal.requests_per_minute.is_none() && principal.tokens_per_minute.is_none() {
        return next.run(req).await;
    }
    match state.rate_limits().admit(&principal).await {
        Ok(headers) => {
            let mut resp = next.run(req).await;
            resp.headers_mut().extend(headers);
            resp
        }
        Err(e) => e.into_response(),
    }
}
