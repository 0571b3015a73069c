//! Request extractors that fail with OpenAI-shaped errors instead of axum's plain text.

use aigw_models::parse::from_json_slice;
use axum::extract::{FromRequest, Request};
use bytes::Bytes;
use http::StatusCode;
use serde::de::DeserializeOwned;

use crate::error::GatewayError;
use crate::state::AppState;

/// A JSON body decoded into `T`; malformed JSON or a mistyped field is a 400 naming the
/// field, an oversized body a 413.
#[derive(Debug, Clone)]
pub struct OpenAiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for OpenAiJson<T> {
    type Rejection = GatewayError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                GatewayError::PayloadTooLarge {
                    limit: state.config().server.max_body_bytes,
                }
            } else {
                GatewayError::bad_request(
                    format!("Could not read the request body: {}", rejection.body_text()),
                    None,
                )
            }
        })?;
        if bytes.is_empty() {
            return Err(GatewayError::bad_request(
                "The request body is empty; expected a JSON object.",
                None,
            ));
        }
        from_json_slice(&bytes)
            .map(OpenAiJson)
            .map_err(|e| GatewayError::bad_request(e.message, e.param))
    }
}
