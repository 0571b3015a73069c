//! Anthropic's errors → OpenAI ones.
//!
//! Error bodies keep Anthropic's `error.type` and `message`. `529 overloaded_error` becomes a
//! 503; error events in a stream get the status Anthropic would have answered with.

use std::time::Duration;

use aigw_models::openai::ErrorResponse;
use futures::StreamExt;
use http::{HeaderMap, StatusCode};
use serde::Deserialize;

use super::ProviderError;

/// Most bytes of an upstream error body read for the error message.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// `{"type": "error", "error": {"type", "message"}}`, as a body or a stream event.
#[derive(Debug, Deserialize)]
pub(super) struct ErrorEnvelope {
    pub(super) error: ApiError,
}

/// Anthropic's error details.
#[derive(Debug, Deserialize)]
pub(super) struct ApiError {
    #[serde(rename = "type")]
    kind: String,
    message: String,
}

impl ApiError {
    /// The error as the provider error an Anthropic HTTP answer of its type would be.
    pub(super) fn into_provider_error(self) -> ProviderError {
        let status = match self.kind.as_str() {
            "invalid_request_error" => StatusCode::BAD_REQUEST,
            "authentication_error" => StatusCode::UNAUTHORIZED,
            "billing_error" => StatusCode::PAYMENT_REQUIRED,
            "permission_error" => StatusCode::FORBIDDEN,
            "not_found_error" => StatusCode::NOT_FOUND,
            "request_too_large" => StatusCode::PAYLOAD_TOO_LARGE,
            "rate_limit_error" => StatusCode::TOO_MANY_REQUESTS,
            "overloaded_error" => StatusCode::SERVICE_UNAVAILABLE,
            "timeout_error" => StatusCode::GATEWAY_TIMEOUT,
            "api_error" => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_GATEWAY,
        };
        ProviderError::Status {
            status,
            body: Some(self.into_openai()),
            retry_after: None,
        }
    }

    fn into_openai(self) -> ErrorResponse {
        ErrorResponse::new(self.message, self.kind, None, None)
    }
}

/// An error body as an OpenAI error: Anthropic's shape (OpenAI's parses too), else the
/// start of the text.
pub(super) fn error_body(body: &[u8]) -> Option<ErrorResponse> {
    if let Ok(envelope) = serde_json::from_slice::<ErrorEnvelope>(body) {
        return Some(envelope.error.into_openai());
    }
    let text = String::from_utf8_lossy(body)
        .trim()
        .chars()
        .take(500)
        .collect::<String>();
    (!text.is_empty()).then(|| ErrorResponse::new(text, "upstream_error", None, None))
}

/// Anthropic's non-standard `529 Overloaded` is reported as `503 Service Unavailable`.
pub(super) fn gateway_status(status: StatusCode) -> StatusCode {
    if status.as_u16() == 529 {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        status
    }
}

/// Passes a 2xx response on; turns anything else into [`ProviderError::Status`] carrying
/// Anthropic's error type and message, OpenAI-shaped.
pub(super) async fn check_status(
    resp: reqwest::Response,
) -> Result<reqwest::Response, ProviderError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let retry_after = retry_after(resp.headers());
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        body.extend_from_slice(&chunk);
        if body.len() >= MAX_ERROR_BODY {
            break;
        }
    }
    Err(ProviderError::Status {
        status: gateway_status(status),
        body: error_body(&body),
        retry_after,
    })
}

/// The upstream's `Retry-After`, in seconds (Anthropic sends it on 429 and 529).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(86_400.0)))
}
#[cfg(test)]
mod tests {
    use http::StatusCode;

    use super::{error_body, gateway_status};

    #[test]
    fn errors_keep_anthropic_type_and_message() {
        let body = br#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: must be positive"},"request_id":"req_1"}"#;
        let e = error_body(body).unwrap();
        assert_eq!(e.error.kind, "invalid_request_error");
        assert_eq!(e.error.message, "max_tokens: must be positive");
        let e = error_body(b"<html>bad gateway</html>").unwrap();
        assert_eq!(e.error.message, "<html>bad gateway</html>");
        assert!(error_body(b"  ").is_none());
        let status = |code| StatusCode::from_u16(code).unwrap();
        assert_eq!(gateway_status(status(529)), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(gateway_status(status(429)), StatusCode::TOO_MANY_REQUESTS);
    }
}
