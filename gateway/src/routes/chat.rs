//! `POST /v1/chat/completions`.

use aigw_models::openai::{ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse};
use axum::Extension;
use axum::extract::State;
use axum::response::Response;
use http::HeaderMap;

use crate::auth::Principal;
use crate::extract::OpenAiJson;
use crate::openapi::ApiErrors;
use crate::state::AppState;
use crate::telemetry::RequestTiming;

/// Creates a chat completion, or streams it as server-sent events when `stream` is true.
#[utoipa::path(
    post,
    path = "/v1/chat/completions",
    tag = "OpenAI",
    request_body = ChatCompletionRequest,
    responses(
        (status = 200, description = "The completion (JSON), or with `stream: true` a `text/event-stream` of chunks ending with `data: [DONE]`",
            content(
                (ChatCompletionResponse = "application/json"),
                (ChatCompletionChunk = "text/event-stream"),
            )),
        ApiErrors,
    ),
    security(("api_key" = []))
)]
pub async fn create_chat_completion(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Extension(timing): Extension<RequestTiming>,
    headers: HeaderMap,
    OpenAiJson(req): OpenAiJson<ChatCompletionRequest>,
) -> Response {
    super::generate(
        &state,
        &principal,
        &timing,
        &headers,
        req,
        "/v1/chat/completions",
    )
    .await
}
