//! `GET /v1/realtime?intent=transcription`: live transcription over a WebSocket, speaking the
//! OpenAI Realtime transcription-session events so stock SDK clients work, with `aigw_`
//! extensions (binary PCM16 frames, 16/24/48 kHz mono or stereo input, named tracks).
//!
//! Layout:
//! - [`protocol`]: the session settings and the shapes of server events;
//! - [`input`]: PCM16 → 16 kHz mono, streamed; [`vad`]: the energy voice detector;
//! - [`session`]: one connection's state, without I/O (tracks, buffers, commits);
//! - [`connection`]: the socket's reader and writer; `transcribe`: its transcriber task.

pub mod connection;
pub mod diarize;
pub mod input;
pub mod protocol;
pub mod session;
mod transcribe;
pub mod vad;

use axum::extract::ws::{WebSocketUpgrade, rejection::WebSocketUpgradeRejection};
use axum::extract::{Query, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::HeaderMap;
use serde::Deserialize;

use crate::auth::Principal;
use crate::error::GatewayError;
use crate::state::AppState;

/// Largest WebSocket message accepted (a base64 append of ~20 s at 24 kHz).
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;
/// The subprotocol prefix under which browsers pass their key (they cannot set headers).
const KEY_PROTOCOL: &str = "openai-insecure-api-key.";

/// The query of the upgrade request.
#[derive(Debug, Deserialize)]
pub struct RealtimeQuery {
    /// Only `transcription` is served.
    #[serde(default)]
    intent: Option<String>,
    /// A transcription model to start the session with.
    #[serde(default)]
    model: Option<String>,
}

/// Middleware: authenticates like every `/v1` route (`Authorization: Bearer`, `api-key`),
/// or by the `openai-insecure-api-key.<key>` WebSocket subprotocol of browser clients.
pub async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let mut result = state.keys().authenticate(req.headers());
    if result.is_err()
        && let Some(key) = protocol_key(req.headers())
        && let Ok(value) = http::HeaderValue::from_str(&format!("Bearer {key}"))
    {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, value);
        result = state.keys().authenticate(&headers);
    }
    match result {
        Ok(principal) => {
            req.extensions_mut().insert(principal);
            next.run(req).await
        }
        Err(err) => err.into_response(),
    }
}

fn protocol_key(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix(KEY_PROTOCOL).map(str::to_owned))
}

/// Opens a realtime transcription session.
///
/// A WebSocket speaking OpenAI's Realtime transcription-session events: client
/// `transcription_session.update` / `session.update`, `input_audio_buffer.append` (base64
/// PCM16, 24 kHz mono by default), `input_audio_buffer.commit`, `input_audio_buffer.clear`;
/// server `…created`, `…updated`, `input_audio_buffer.speech_started` / `speech_stopped` /
/// `committed` / `cleared`, `conversation.item.input_audio_transcription.delta` /
/// `completed` / `segment` / `failed`, and `error`. Extensions (`aigw_`): binary PCM16
/// frames, `aigw_input` (16/24/48 kHz, 1–2 channels), named tracks (`aigw_track`),
/// `aigw_diarization` with `diarization.speaker_turn` events. The key may also come as the
/// `openai-insecure-api-key.<key>` subprotocol.
#[utoipa::path(
    get,
    path = "/v1/realtime",
    operation_id = "create_realtime_transcription_session",
    tag = "OpenAI",
    params(
        ("intent" = Option<String>, Query, description = "`transcription` (the only kind served)"),
        ("model" = Option<String>, Query, description = "The transcription model to start with"),
    ),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol: OpenAI Realtime transcription-session events (see the README)"),
        crate::openapi::ApiErrors,
    ),
    security(("api_key" = []))
)]
pub async fn connect(
    State(state): State<AppState>,
    axum::Extension(principal): axum::Extension<Principal>,
    Query(query): Query<RealtimeQuery>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if let Some(intent) = query.intent.as_deref().filter(|i| *i != "transcription") {
        return GatewayError::bad_request(
            format!("Unsupported intent '{intent}': this server serves realtime transcription sessions only (intent=transcription)."),
            Some("intent".into()),
        )
        .into_response();
    }
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(e) => {
            return GatewayError::bad_request(
                format!("This endpoint speaks WebSocket: {}", e.body_text()),
                None,
            )
            .into_response();
        }
    };
    let session = state.budgets().session(&principal, &headers, None);
    let offered_realtime = headers
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|p| p.trim() == "realtime"));
    let mut upgrade = upgrade
        .max_message_size(MAX_MESSAGE_BYTES)
        .max_frame_size(MAX_MESSAGE_BYTES);
    if offered_realtime {
        upgrade = upgrade.protocols(["realtime"]);
    }
    let model = query.model;
    upgrade.on_upgrade(move |socket| {
        let peer = connection::Peer {
            state,
            principal,
            session,
        };
        connection::serve(socket, peer, model)
    })
}
