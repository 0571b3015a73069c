//! The gateway's error type and its OpenAI-shaped rendering, as a JSON response or as the
//! final event of a stream. 5xx messages never carry upstream internals.

use std::sync::Arc;
use std::time::Duration;

use aigw_models::openai::ErrorResponse;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode};

use crate::providers::ProviderError;

/// Everything that can go wrong serving a request.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The request is malformed or invalid.
    #[error("{message}")]
    BadRequest {
        /// What is wrong.
        message: String,
        /// The parameter at fault.
        param: Option<String>,
        /// Stable code, if any.
        code: Option<&'static str>,
    },
    /// Missing or wrong API key.
    #[error("{0}")]
    Unauthorized(String),
    /// The model does not exist or the key may not use it.
    #[error("The model `{0}` does not exist or you do not have access to it.")]
    ModelNotFound(String),
    /// No such route.
    #[error("Unknown request URL: {method} {path}.")]
    RouteNotFound {
        /// Request method.
        method: String,
        /// Request path.
        path: String,
    },
    /// The route exists but not for this method.
    #[error("Method {0} is not allowed for this URL.")]
    MethodNotAllowed(String),
    /// Body larger than the configured limit.
    #[error("Request body too large: the limit is {limit} bytes.")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The upstream failed or refused.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// Every deployment of the alias that was tried failed, or none could be tried.
    #[error("{}", all_failed_message(.alias, .failures))]
    AllAttemptsFailed {
        /// The alias requested.
        alias: String,
        /// Each deployment's failure, in the order tried.
        failures: Vec<AttemptFailure>,
    },
    /// The session's budget cannot admit the request.
    #[error("This session's budget is exhausted (remaining: {remaining}).")]
    QuotaExceeded {
        /// What is left, per limited dimension.
        remaining: String,
    },
    /// The key is over its requests or tokens per minute.
    #[error("Rate limit reached for {what} per minute (limit {limit}). Retry after {}s.", ceil_secs(*.retry_after))]
    RateLimited {
        /// `requests` or `tokens`.
        what: &'static str,
        /// The limit per minute.
        limit: u64,
        /// When to retry.
        retry_after: Duration,
        /// The `x-ratelimit-*` headers.
        headers: Box<http::HeaderMap>,
    },
    /// Shared state (Redis) is unreachable and this check fails closed.
    #[error("The {0} service is unavailable; the request was not attempted. Retry shortly.")]
    StateUnavailable(String),
    /// A bug or an impossible state; details are logged, not returned.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Why one deployment did not serve a request.
#[derive(Debug)]
pub struct AttemptFailure {
    /// The deployment's name.
    pub deployment: Arc<str>,
    /// What happened.
    pub reason: FailReason,
}

/// What happened to one deployment of a request.
#[derive(Debug)]
pub enum FailReason {
    /// It was called and failed.
    Provider(ProviderError),
    /// Its circuit was open; it lets a probe through in `retry_in`.
    CircuitOpen {
        /// Time left of its cooldown.
        retry_in: Option<Duration>,
    },
    /// It had `max_in_flight` requests already.
    AtCapacity,
}

impl FailReason {
    /// A short description without upstream details or secrets.
    pub fn describe(&self) -> String {
        match self {
            Self::Provider(e) => match e {
                ProviderError::Connect(_) => "connection failed".into(),
                ProviderError::Timeout => "timed out".into(),
                ProviderError::Status { status, .. } => format!("HTTP {}", status.as_u16()),
                ProviderError::InvalidResponse(_) => "invalid response".into(),
                ProviderError::Transport(_) => "connection broke".into(),
                ProviderError::Unsupported(what) => format!("does not support {what}"),
                ProviderError::Rejected { .. } => "rejected the request".into(),
                ProviderError::Overloaded(_) => "overloaded".into(),
                ProviderError::Engine(_) => "engine failed".into(),
            },
            Self::CircuitOpen { retry_in: Some(d) } => {
                format!("circuit open (retry in {}s)", ceil_secs(*d))
            }
            Self::CircuitOpen { retry_in: None } => "circuit open (probe under way)".into(),
            Self::AtCapacity => "at capacity".into(),
        }
    }

    /// A metrics label.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Provider(e) => match e {
                ProviderError::Connect(_) => "connect",
                ProviderError::Timeout => "timeout",
                ProviderError::Status { status, .. } if status.as_u16() == 429 => "status_429",
                ProviderError::Status { status, .. } if status.is_server_error() => "status_5xx",
                ProviderError::Status { .. } => "status_4xx",
                ProviderError::InvalidResponse(_) => "invalid_response",
                ProviderError::Transport(_) => "transport",
                ProviderError::Unsupported(_) => "unsupported",
                ProviderError::Rejected { .. } => "rejected",
                ProviderError::Overloaded(_) => "overloaded",
                ProviderError::Engine(_) => "engine",
            },
            Self::CircuitOpen { .. } => "circuit_open",
            Self::AtCapacity => "at_capacity",
        }
    }
}

/// Whole seconds, rounded up, at least 1 (for `Retry-After`).
fn ceil_secs(d: Duration) -> u64 {
    d.as_millis().div_ceil(1000).max(1) as u64
}

fn all_failed_message(alias: &str, failures: &[AttemptFailure]) -> String {
    let tried = failures
        .iter()
        .filter(|f| matches!(f.reason, FailReason::Provider(_)))
        .count();
    let list = failures
        .iter()
        .map(|f| format!("{}: {}", f.deployment, f.reason.describe()))
        .collect::<Vec<_>>()
        .join("; ");
    if failures.is_empty() {
        return format!("No deployment of `{alias}` could be tried before the deadline.");
    }
    format!(
        "No deployment of `{alias}` could serve the request ({tried} attempt{}): {list}.",
        if tried == 1 { "" } else { "s" }
    )
}

/// The status of an aggregated failure: 429 when every attempt was rate limited, 503 when
/// none could be tried (open circuits, full deployments), 504 when the attempts timed out,
/// 502 otherwise.
fn all_failed_status(failures: &[AttemptFailure]) -> StatusCode {
    let tried: Vec<&ProviderError> = failures
        .iter()
        .filter_map(|f| match &f.reason {
            FailReason::Provider(e) => Some(e),
            _ => None,
        })
        .collect();
    let rate_limited = |e: &ProviderError| {
        matches!(e, ProviderError::Overloaded(_))
            || matches!(e, ProviderError::Status { status, .. } if status.as_u16() == 429)
    };
    if tried.is_empty() {
        if failures.is_empty() {
            StatusCode::GATEWAY_TIMEOUT
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        }
    } else if tried.iter().all(|e| rate_limited(e)) {
        StatusCode::TOO_MANY_REQUESTS
    } else if tried.iter().any(|e| matches!(e, ProviderError::Timeout))
        && tried
            .iter()
            .all(|e| matches!(e, ProviderError::Timeout) || rate_limited(e))
    {
        StatusCode::GATEWAY_TIMEOUT
    } else {
        StatusCode::BAD_GATEWAY
    }
}

/// When the client may retry an aggregated failure: the soonest of the upstreams'
/// `Retry-After`s and the open circuits' remaining cooldowns.
fn all_failed_retry_after(failures: &[AttemptFailure]) -> Option<Duration> {
    failures
        .iter()
        .filter_map(|f| match &f.reason {
            FailReason::Provider(ProviderError::Status { retry_after, .. }) => *retry_after,
            FailReason::Provider(ProviderError::Overloaded(_)) | FailReason::AtCapacity => {
                Some(Duration::from_secs(1))
            }
            FailReason::CircuitOpen { retry_in } => {
                Some(retry_in.unwrap_or(Duration::from_secs(1)))
            }
            FailReason::Provider(_) => None,
        })
        .min()
}

impl GatewayError {
    /// A 400 naming the parameter at fault.
    pub fn bad_request(message: impl Into<String>, param: Option<String>) -> Self {
        Self::BadRequest {
            message: message.into(),
            param,
            code: None,
        }
    }

    /// The HTTP status of this error.
    pub fn status_code(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::ModelNotFound(_) | Self::RouteNotFound { .. } => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::QuotaExceeded { .. } | Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::StateUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::AllAttemptsFailed { failures, .. } => all_failed_status(failures),
            Self::Provider(e) => match e {
                ProviderError::Timeout => StatusCode::GATEWAY_TIMEOUT,
                ProviderError::Connect(_)
                | ProviderError::InvalidResponse(_)
                | ProviderError::Transport(_) => StatusCode::BAD_GATEWAY,
                ProviderError::Unsupported(_) | ProviderError::Rejected { .. } => {
                    StatusCode::BAD_REQUEST
                }
                ProviderError::Overloaded(_) => StatusCode::TOO_MANY_REQUESTS,
                ProviderError::Engine(_) => StatusCode::INTERNAL_SERVER_ERROR,
                ProviderError::Status { status, .. } if status.is_client_error() => *status,
                ProviderError::Status { .. } => StatusCode::BAD_GATEWAY,
            },
        }
    }

    /// A stable short name, used as a metrics label and in logs.
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::BadRequest { .. } => "bad_request",
            Self::Unauthorized(_) => "unauthorized",
            Self::ModelNotFound(_) => "model_not_found",
            Self::RouteNotFound { .. } => "route_not_found",
            Self::MethodNotAllowed(_) => "method_not_allowed",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::Internal(_) => "internal",
            Self::QuotaExceeded { .. } => "insufficient_quota",
            Self::RateLimited { .. } => "rate_limited",
            Self::StateUnavailable(_) => "state_unavailable",
            Self::AllAttemptsFailed { .. } => "all_attempts_failed",
            Self::Provider(e) => match e {
                ProviderError::Connect(_) => "upstream_connect",
                ProviderError::Timeout => "upstream_timeout",
                ProviderError::Status { status, .. } if status.is_client_error() => "upstream_4xx",
                ProviderError::Status { .. } => "upstream_5xx",
                ProviderError::InvalidResponse(_) => "upstream_invalid",
                ProviderError::Transport(_) => "upstream_transport",
                ProviderError::Unsupported(_) => "unsupported",
                ProviderError::Rejected { .. } => "rejected",
                ProviderError::Overloaded(_) => "overloaded",
                ProviderError::Engine(_) => "engine",
            },
        }
    }

    /// The OpenAI error body for this error.
    pub fn to_body(&self) -> ErrorResponse {
        let status = self.status_code();
        let (kind, param, code): (&str, Option<String>, Option<&str>) = match self {
            Self::BadRequest { param, code, .. } => ("invalid_request_error", param.clone(), *code),
            Self::Unauthorized(_) => ("invalid_request_error", None, Some("invalid_api_key")),
            Self::ModelNotFound(_) => (
                "invalid_request_error",
                Some("model".into()),
                Some("model_not_found"),
            ),
            Self::RouteNotFound { .. } => ("invalid_request_error", None, Some("unknown_url")),
            Self::MethodNotAllowed(_) => {
                ("invalid_request_error", None, Some("method_not_allowed"))
            }
            Self::PayloadTooLarge { .. } => {
                ("invalid_request_error", None, Some("request_too_large"))
            }
            Self::Internal(_) => ("api_error", None, None),
            Self::QuotaExceeded { .. } => ("insufficient_quota", None, Some("insufficient_quota")),
            Self::RateLimited { .. } => ("rate_limit_error", None, Some("rate_limit_exceeded")),
            Self::StateUnavailable(_) => ("api_error", None, Some("budget_unavailable")),
            Self::AllAttemptsFailed { .. } if status == StatusCode::TOO_MANY_REQUESTS => {
                ("rate_limit_error", None, Some("all_attempts_failed"))
            }
            Self::AllAttemptsFailed { .. } => ("api_error", None, Some("all_attempts_failed")),
            Self::Provider(ProviderError::Unsupported(_)) => (
                "invalid_request_error",
                Some("model".into()),
                Some("unsupported_endpoint"),
            ),
            Self::Provider(ProviderError::Status {
                body: Some(body), ..
            }) if status.is_client_error() => {
                return body.clone();
            }
            Self::Provider(ProviderError::Status { status: up, .. })
                if status.is_client_error() =>
            {
                return ErrorResponse::new(
                    format!(
                        "The upstream provider rejected the request (HTTP {}).",
                        up.as_u16()
                    ),
                    "invalid_request_error",
                    None,
                    None,
                );
            }
            Self::Provider(ProviderError::Rejected { param, code, .. }) => {
                ("invalid_request_error", param.clone(), Some(*code))
            }
            Self::Provider(ProviderError::Overloaded(_)) => {
                ("rate_limit_error", None, Some("engine_overloaded"))
            }
            Self::Provider(ProviderError::Engine(_)) => ("api_error", None, Some("engine_error")),
            Self::Provider(ProviderError::Timeout) => ("api_error", None, Some("upstream_timeout")),
            Self::Provider(_) => ("api_error", None, Some("upstream_error")),
        };
        let message = match self {
            Self::Internal(_) => {
                "The server had an error while processing your request.".to_string()
            }
            Self::Provider(ProviderError::Timeout) => {
                "The upstream provider did not respond in time.".to_string()
            }
            Self::Provider(ProviderError::Status { status, .. }) => {
                format!("The upstream provider failed (HTTP {}).", status.as_u16())
            }
            Self::Provider(
                ProviderError::Unsupported(_)
                | ProviderError::Rejected { .. }
                | ProviderError::Overloaded(_),
            ) => self.to_string(),
            Self::Provider(ProviderError::Engine(_)) => {
                "The local model failed while processing your request.".to_string()
            }
            Self::Provider(_) => {
                "The upstream provider could not be reached or answered invalidly.".to_string()
            }
            _ => self.to_string(),
        };
        ErrorResponse::new(message, kind, param, code.map(str::to_string))
    }

    /// The `data:` payload of a final stream event carrying this error.
    pub fn to_sse_data(&self) -> String {
        serde_json::to_string(&self.to_body()).unwrap_or_else(|_| {
            r#"{"error":{"message":"internal error","type":"api_error","param":null,"code":null}}"#.to_string()
        })
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let status = self.status_code();
        if status.is_server_error() {
            tracing::warn!(error = %self, error_type = self.error_type(), "request failed");
        }
        let retry_after = match &self {
            Self::Provider(ProviderError::Status {
                retry_after: Some(d),
                ..
            }) => Some(ceil_secs(*d)),
            Self::Provider(ProviderError::Overloaded(_)) => Some(1),
            Self::AllAttemptsFailed { failures, .. } if matches!(status.as_u16(), 429 | 503) => {
                all_failed_retry_after(failures).map(ceil_secs)
            }
            _ => None,
        };
        let mut resp = (status, axum::Json(self.to_body())).into_response();
        if matches!(self, Self::QuotaExceeded { .. }) {
            resp.headers_mut()
                .insert("x-should-retry", HeaderValue::from_static("false"));
        }
        if let Self::RateLimited {
            retry_after,
            headers,
            ..
        } = &self
        {
            resp.headers_mut().extend((**headers).clone());
            resp.headers_mut().insert(
                http::header::RETRY_AFTER,
                HeaderValue::from(ceil_secs(*retry_after)),
            );
        }
        if matches!(self, Self::StateUnavailable(_)) {
            resp.headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from(1));
        }
        if let Some(secs) = retry_after {
            resp.headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp.extensions_mut().insert(ErrorKind(self.error_type()));
        resp
    }
}

/// Put in response extensions so the metrics middleware can label failures.
#[derive(Debug, Clone, Copy)]
pub struct ErrorKind(pub &'static str);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_client_errors_pass_through() {
        let body = ErrorResponse::new(
            "bad tool schema",
            "invalid_request_error",
            Some("tools".into()),
            None,
        );
        let e = GatewayError::Provider(ProviderError::Status {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            body: Some(body.clone()),
            retry_after: None,
        });
        assert_eq!(e.status_code(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(e.to_body(), body);
    }

    #[test]
    fn upstream_server_errors_hide_details() {
        let e = GatewayError::Provider(ProviderError::Status {
            status: StatusCode::SERVICE_UNAVAILABLE,
            body: Some(ErrorResponse::new(
                "db at 10.0.0.3 down",
                "server_error",
                None,
                None,
            )),
            retry_after: None,
        });
        assert_eq!(e.status_code(), StatusCode::BAD_GATEWAY);
        assert!(!e.to_body().error.message.contains("10.0.0.3"));
        assert_eq!(
            GatewayError::Provider(ProviderError::Timeout).status_code(),
            StatusCode::GATEWAY_TIMEOUT
        );
    }
}
