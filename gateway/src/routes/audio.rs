//! `POST /v1/audio/transcriptions` and `/v1/audio/translations`: multipart forms served by a
//! local whisper model or forwarded to the upstream that serves the model; its answer (json,
//! text, srt, vtt, verbose_json, diarized_json) is passed through. `POST
//! /v1/audio/diarizations` (our extension) goes the same way to a diarisation model. The
//! audio's seconds are the request's usage: metered, and settled against the session's budget
//! (`audio_secs` ceilings).

use aigw_models::openai::{
    DiarizationForm, DiarizationResponse, TranscriptionBody, TranscriptionForm,
};
use axum::Extension;
use axum::extract::multipart::{Multipart, MultipartError};
use axum::extract::{FromRequest, Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::StatusCode;

use super::{labelled, request_ctx};
use crate::auth::Principal;
use crate::budget;
use crate::error::GatewayError;
use crate::openapi::ApiErrors;
use crate::pipeline;
use crate::providers::{AudioRequest, AudioTask};
use crate::state::AppState;
use crate::telemetry::RequestTiming;

/// Transcribes audio into the input language.
#[utoipa::path(
    post,
    path = "/v1/audio/transcriptions",
    tag = "OpenAI",
    request_body(content = TranscriptionForm, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "The transcript: JSON for `json`/`verbose_json`, plain text for `text`/`srt`/`vtt`",
            content(
                (TranscriptionBody = "application/json"),
                (String = "text/plain"),
            )),
        ApiErrors,
    ),
    security(("api_key" = []))
)]
pub async fn create_transcription(
    state: State<AppState>,
    principal: Extension<Principal>,
    timing: Extension<RequestTiming>,
    req: Request,
) -> Response {
    serve(
        state,
        principal,
        timing,
        req,
        AudioTask::Transcription,
        "/v1/audio/transcriptions",
    )
    .await
}

/// Translates audio into English text.
#[utoipa::path(
    post,
    path = "/v1/audio/translations",
    tag = "OpenAI",
    request_body(content = TranscriptionForm, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "The English text: JSON for `json`/`verbose_json`, plain text for `text`/`srt`/`vtt`",
            content(
                (TranscriptionBody = "application/json"),
                (String = "text/plain"),
            )),
        ApiErrors,
    ),
    security(("api_key" = []))
)]
pub async fn create_translation(
    state: State<AppState>,
    principal: Extension<Principal>,
    timing: Extension<RequestTiming>,
    req: Request,
) -> Response {
    serve(
        state,
        principal,
        timing,
        req,
        AudioTask::Translation,
        "/v1/audio/translations",
    )
    .await
}

/// Who spoke when: speaker turns of a whole file (our extension), computed by the streaming
/// diarisation pipeline (diart's algorithm) run over the file as fast as the CPU allows.
#[utoipa::path(
    post,
    path = "/v1/audio/diarizations",
    tag = "Extensions",
    request_body(content = DiarizationForm, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "The speaker turns: JSON for `json`, RTTM text for `rttm`",
            content(
                (DiarizationResponse = "application/json"),
                (String = "text/plain"),
            )),
        ApiErrors,
    ),
    security(("api_key" = []))
)]
pub async fn create_diarization(
    state: State<AppState>,
    principal: Extension<Principal>,
    timing: Extension<RequestTiming>,
    req: Request,
) -> Response {
    serve(
        state,
        principal,
        timing,
        req,
        AudioTask::Diarization,
        "/v1/audio/diarizations",
    )
    .await
}

async fn serve(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Extension(timing): Extension<RequestTiming>,
    req: Request,
    task: AudioTask,
    route_name: &'static str,
) -> Response {
    let headers = req.headers().clone();
    let ctx = request_ctx(&state, &principal, &timing, &headers, route_name);
    let form = match read_form(&state, req, task).await {
        Ok(form) => form,
        Err(e) => return e.into_response(),
    };
    let route = match state.routes().resolve(&principal, &form.model) {
        Ok(route) => route,
        Err(e) => return e.into_response(),
    };
    let budgets = state.budgets();
    let session = budgets.session(&principal, &headers, None);
    let admission = match budgets.applied(&session).await {
        // The length is known only once decoded: a second is held, the rest settled after.
        Ok(Some(applied)) => {
            let estimate = audio_amount(1.0);
            match budgets.admit(applied, estimate, 0, route.price).await {
                Ok(admission) => Some(admission),
                Err(e) => return labelled(&route.alias, e),
            }
        }
        Ok(None) => None,
        Err(e) => return labelled(&route.alias, e),
    };
    let routed = pipeline::audio(&ctx, route, form).await;
    let mut remaining = admission.as_ref().and_then(|a| a.remaining_header());
    if let (Ok(resp), Some(admission)) = (&routed.result, admission) {
        // Without a known length the reservation is released (dropped).
        if let Some(secs) = resp.audio_secs {
            remaining = admission.settle(audio_amount(secs)).await.or(remaining);
        }
    }
    let result = routed.map(|resp| {
        (
            StatusCode::OK,
            [(http::header::CONTENT_TYPE, resp.content_type)],
            resp.body,
        )
    });
    let mut resp = labelled(&route.alias, result);
    if let Some(value) = remaining.and_then(|r| http::HeaderValue::from_str(&r).ok()) {
        resp.headers_mut().insert(budget::REMAINING_HEADER, value);
    }
    resp
}

/// The budget spend of `secs` of audio.
fn audio_amount(secs: f64) -> aigw_state::budget::Amount {
    aigw_state::budget::Amount {
        audio_ms: (secs.max(0.0) * 1000.0).round() as u64,
        ..aigw_state::budget::Amount::default()
    }
}

/// Reads the multipart form: `file` and `model` are required (for a diarisation, `model`
/// defaults to the first local diarisation model), other fields are kept.
async fn read_form(
    state: &AppState,
    req: Request,
    task: AudioTask,
) -> Result<AudioRequest, GatewayError> {
    let limit = state.config().server.max_audio_body_bytes;
    let mut multipart = Multipart::from_request(req, state).await.map_err(|e| {
        GatewayError::bad_request(
            format!("Expected a multipart/form-data body: {}", e.body_text()),
            None,
        )
    })?;
    let field_error = |e: MultipartError| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            GatewayError::PayloadTooLarge { limit }
        } else {
            GatewayError::bad_request(format!("Malformed multipart body: {}", e.body_text()), None)
        }
    };
    let mut file: Option<(String, Option<String>, Bytes)> = None;
    let mut model = None;
    let mut fields = Vec::new();
    while let Some(field) = multipart.next_field().await.map_err(field_error)? {
        let name = field.name().unwrap_or_default().to_string();
        if name == "file" {
            let file_name = field.file_name().unwrap_or("audio").to_string();
            let content_type = field.content_type().map(str::to_string);
            let bytes = field.bytes().await.map_err(field_error)?;
            file = Some((file_name, content_type, bytes));
        } else {
            let value = field.text().await.map_err(field_error)?;
            if name == "model" {
                model = Some(value);
            } else {
                fields.push((name, value));
            }
        }
    }
    let (file_name, file_content_type, file) = file.ok_or_else(|| {
        GatewayError::bad_request("Missing required parameter: 'file'.", Some("file".into()))
    })?;
    let default_model = || match task {
        AudioTask::Diarization => state
            .local_models()
            .iter()
            .find(|m| m.diarizer.is_some())
            .map(|m| m.alias.clone()),
        AudioTask::Transcription | AudioTask::Translation => None,
    };
    let model = model
        .filter(|m| !m.trim().is_empty())
        .or_else(default_model)
        .ok_or_else(|| {
            GatewayError::bad_request("Missing required parameter: 'model'.", Some("model".into()))
        })?;
    Ok(AudioRequest {
        task,
        model,
        file_name,
        file_content_type,
        file,
        fields,
    })
}
