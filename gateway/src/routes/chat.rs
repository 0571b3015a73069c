//! `POST /v1/chat/completions`.

use aigw_models::openai::{ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse};
use axum::Extension;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::HeaderMap;

use super::{labelled, request_ctx};
use crate::auth::Principal;
use crate::extract::OpenAiJson;
use crate::openapi::ApiErrors;
use crate::pipeline;
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
    let ctx = request_ctx(
        &state,
        &principal,
        &timing,
        &headers,
        "/v1/chat/completions",
    );
    let route = match state.routes().resolve(&principal, &req.model) {
        Ok(route) => route,
        Err(e) => return e.into_response(),
    };
    labelled(&route.alias, pipeline::chat(&ctx, route, req).await)
}
