//! `GET /v1/models` and `GET /v1/models/{id}`: the aliases the caller may use.

use aigw_models::openai::{Model, ModelList};
use axum::extract::{Path, State};
use axum::{Extension, Json};

use crate::auth::Principal;
use crate::error::GatewayError;
use crate::openapi::ApiErrors;
use crate::state::AppState;

/// Lists the models the caller's key may use.
#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "OpenAI",
    responses((status = 200, body = ModelList), ApiErrors),
    security(("api_key" = []))
)]
pub async fn list_models(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Json<ModelList> {
    Json(state.routes().list(&principal))
}

/// Describes one model.
#[utoipa::path(
    get,
    path = "/v1/models/{id}",
    tag = "OpenAI",
    params(("id" = String, Path, description = "The model alias")),
    responses((status = 200, body = Model), ApiErrors),
    security(("api_key" = []))
)]
pub async fn retrieve_model(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Model>, GatewayError> {
    state
        .routes()
        .list(&principal)
        .data
        .into_iter()
        .find(|m| m.id == id)
        .map(Json)
        .ok_or(GatewayError::ModelNotFound(id))
}
