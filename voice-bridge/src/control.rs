//! The control API the gateway calls: `POST /v1/listen`, `POST /v1/stop` (bearer: the shared
//! secret), and `GET /healthz`. Errors are OpenAI-shaped JSON, their message written for
//! the Discord channel (the gateway shows it as is).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::bridge::{Bridge, BridgeError};
use crate::session::Placement;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenRequest {
    guild_id: String,
    voice_channel_id: String,
    text_channel_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StopRequest {
    guild_id: String,
}

/// The control API's routes.
pub fn router(bridge: Arc<Bridge>) -> Router {
    Router::new()
        .route("/v1/listen", post(listen))
        .route("/v1/stop", post(stop))
        .route("/healthz", get(health))
        .with_state(bridge)
}

/// A refused call, answered as OpenAI-shaped JSON.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let kind = match self.status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            s if s.is_server_error() => "api_error",
            _ => "invalid_request_error",
        };
        let body = json!({"error": {
            "message": self.message, "type": kind, "param": null, "code": self.code,
        }});
        (self.status, axum::Json(body)).into_response()
    }
}

fn error(status: StatusCode, code: &'static str, message: &str) -> Refusal {
    Refusal {
        status,
        code,
        message: message.to_string(),
    }
}

/// The body as `T`, after the bearer check; else the error to answer.
fn accept<T: serde::de::DeserializeOwned>(
    bridge: &Bridge,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<T, Refusal> {
    let token = &bridge.config().bridge_token;
    let given = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Compared as SHA-256 digests, so the time taken says nothing about the secret.
    let ok = given.is_some_and(|g| Sha256::digest(g.trim()) == Sha256::digest(token));
    if !ok {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "invalid_bridge_token",
            "Missing or wrong bridge token.",
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &format!("The body is not a valid request: {e}"),
        )
    })
}

fn id(value: &str, name: &str) -> Result<u64, Refusal> {
    value.parse::<u64>().ok().filter(|v| *v > 0).ok_or_else(|| {
        error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &format!("'{name}' must be a Discord id (digits)."),
        )
    })
}

async fn listen(State(bridge): State<Arc<Bridge>>, headers: HeaderMap, body: Bytes) -> Response {
    let req: ListenRequest = match accept(&bridge, &headers, &body) {
        Ok(r) => r,
        Err(refusal) => return refusal.into_response(),
    };
    let placement = match (
        id(&req.guild_id, "guild_id"),
        id(&req.voice_channel_id, "voice_channel_id"),
        id(&req.text_channel_id, "text_channel_id"),
    ) {
        (Ok(guild), Ok(voice_channel), Ok(text_channel)) => Placement {
            guild,
            voice_channel,
            text_channel,
        },
        (Err(refusal), _, _) | (_, Err(refusal), _) | (_, _, Err(refusal)) => {
            return refusal.into_response();
        }
    };
    match bridge.listen(placement).await {
        Ok(()) => axum::Json(json!({"status": "listening"})).into_response(),
        Err(e) => failure(&e),
    }
}

async fn stop(State(bridge): State<Arc<Bridge>>, headers: HeaderMap, body: Bytes) -> Response {
    let req: StopRequest = match accept(&bridge, &headers, &body) {
        Ok(r) => r,
        Err(refusal) => return refusal.into_response(),
    };
    let guild = match id(&req.guild_id, "guild_id") {
        Ok(g) => g,
        Err(refusal) => return refusal.into_response(),
    };
    match bridge.stop(guild).await {
        Ok(p) => axum::Json(json!({
            "status": "stopped",
            "voice_channel_id": p.voice_channel.to_string(),
            "text_channel_id": p.text_channel.to_string(),
        }))
        .into_response(),
        Err(e) => failure(&e),
    }
}

fn failure(e: &BridgeError) -> Response {
    let (status, code) = match e {
        BridgeError::NotListening => (StatusCode::NOT_FOUND, "not_listening"),
        BridgeError::Realtime(_) => (StatusCode::BAD_GATEWAY, "realtime_unavailable"),
        BridgeError::Voice(_) => (StatusCode::BAD_GATEWAY, "voice_failed"),
    };
    error(status, code, &e.to_string()).into_response()
}

async fn health(State(bridge): State<Arc<Bridge>>) -> Response {
    let sessions: Vec<_> = bridge
        .sessions()
        .await
        .iter()
        .map(|p| {
            json!({
                "guild_id": p.guild.to_string(),
                "voice_channel_id": p.voice_channel.to_string(),
                "text_channel_id": p.text_channel.to_string(),
            })
        })
        .collect();
    axum::Json(json!({"status": "ok", "sessions": sessions})).into_response()
}
