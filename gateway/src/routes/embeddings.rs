//! `POST /v1/embeddings`.

use aigw_models::openai::{EmbeddingRequest, EmbeddingResponse};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use http::HeaderMap;

use super::{labelled, request_ctx};
use crate::auth::Principal;
use crate::extract::OpenAiJson;
use crate::openapi::ApiErrors;
use crate::pipeline;
use crate::state::AppState;
use crate::telemetry::RequestTiming;

/// Creates embedding vectors, as float arrays or base64 (`encoding_format`).
#[utoipa::path(
    post,
    path = "/v1/embeddings",
    tag = "OpenAI",
    request_body = EmbeddingRequest,
    responses(
        (status = 200, description = "One embedding per input", body = EmbeddingResponse),
        ApiErrors,
    ),
    security(("api_key" = []))
)]
pub async fn create_embedding(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Extension(timing): Extension<RequestTiming>,
    headers: HeaderMap,
    OpenAiJson(req): OpenAiJson<EmbeddingRequest>,
) -> Response {
    let ctx = request_ctx(&state, &principal, &timing, &headers, "/v1/embeddings");
    let route = match state.routes().resolve(&principal, &req.model) {
        Ok(route) => route,
        Err(e) => return e.into_response(),
    };
    labelled(
        &route.alias,
        pipeline::embeddings(&ctx, route, req).await.map(Json),
    )
}
