//! `POST /v1/completions` (legacy text completions).

use aigw_models::openai::{CompletionRequest, CompletionResponse};
use axum::Extension;
use axum::extract::State;
use axum::response::Response;
use http::HeaderMap;

use crate::auth::Principal;
use crate::extract::OpenAiJson;
use crate::openapi::ApiErrors;
use crate::state::AppState;
use crate::telemetry::RequestTiming;

/// Creates a text completion, or streams it as server-sent events when `stream` is true.
#[utoipa::path(
    post,
    path = "/v1/completions",
    tag = "OpenAI",
    request_body = CompletionRequest,
    responses(
        (status = 200, description = "The completion (JSON), or with `stream: true` a `text/event-stream` of completion chunks ending with `data: [DONE]`",
            content(
                (CompletionResponse = "application/json"),
                (CompletionResponse = "text/event-stream"),
            )),
        ApiErrors,
    ),
    security(("api_key" = []))
)]
pub async fn create_completion(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Extension(timing): Extension<RequestTiming>,
    headers: HeaderMap,
    OpenAiJson(req): OpenAiJson<CompletionRequest>,
) -> Response {
    super::generate(
        &state,
        &principal,
        &timing,
        &headers,
        req,
        "/v1/completions",
    )
    .await
}
