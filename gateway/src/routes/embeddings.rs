//! `POST /v1/embeddings`.

use aigw_models::openai::{
    Embedding, EmbeddingInput, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage,
    EmbeddingVector, EncodingFormat,
};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use http::HeaderMap;
use serde_json::{Value, json};

use super::{finish, labelled, request_ctx};
use crate::auth::Principal;
use crate::budget;
use crate::cache::{Plan, Status};
use crate::error::GatewayError;
use crate::extract::OpenAiJson;
use crate::openapi::ApiErrors;
use crate::pipeline;
use crate::pipeline::Routed;
use crate::providers::ProviderError;
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
    if let Err(e) = req.validate() {
        return labelled(
            &route.alias,
            GatewayError::bad_request(e.message, Some(e.param)),
        );
    }
    let budgets = state.budgets();
    let session = budgets.session(&principal, &headers, req.user.as_deref());
    let applied = match budgets.applied(&session).await {
        Ok(applied) => applied,
        Err(e) => return labelled(&route.alias, e),
    };

    // Each input is cached on its own: only the ones not seen before are computed.
    let cache = state.cache();
    let inputs = split(&req.input);
    let plans: Vec<Option<Plan>> = inputs
        .iter()
        .map(|input| {
            let mut key_req = req.extra.clone();
            key_req.insert("input".into(), input.clone());
            key_req.insert("dimensions".into(), json!(req.dimensions));
            cache.plan(
                &headers,
                &principal.tenant,
                "embedding",
                &route.alias,
                &key_req,
                true,
            )
        })
        .collect();
    let mut vectors: Vec<Option<Vec<f32>>> = vec![None; inputs.len()];
    let mut read = false;
    for (plan, slot) in plans.iter().zip(&mut vectors) {
        if let Some(plan) = plan.as_ref().filter(|p| p.read) {
            read = true;
            *slot = cache.get(&plan.key).await.and_then(|b| from_bytes(&b));
        }
    }
    let missing: Vec<usize> = (0..inputs.len())
        .filter(|&i| vectors[i].is_none())
        .collect();
    let status = match (read, missing.is_empty()) {
        (false, _) => Status::Bypass,
        (true, true) => Status::Hit,
        (true, false) => Status::Miss,
    };
    cache.count(status);
    let format = req.encoding_format.unwrap_or_default();

    let mut usage = EmbeddingUsage::default();
    let mut remaining = None;
    let (mut deployment, mut attempts) = (None, 0);
    if missing.is_empty() {
        if let Some(applied) = &applied {
            remaining = budgets.remaining(applied).await;
        }
    } else {
        let mut sub = req.clone();
        sub.input = join(&req.input, &missing);
        sub.encoding_format = Some(EncodingFormat::Float);
        let admission = match applied {
            Some(applied) => {
                let bytes = serde_json::to_vec(&sub.input).map_or(0, |b| b.len()) as u64;
                let estimate = bytes.div_ceil(3) + 16;
                let amount = budget::amount(estimate, 0, route.price);
                match budgets.admit(applied, amount, estimate, route.price).await {
                    Ok(a) => Some(a),
                    Err(e) => return finish(labelled(&route.alias, e), status, None, None),
                }
            }
            None => None,
        };
        remaining = admission.as_ref().and_then(|a| a.remaining_header());
        let routed = pipeline::embeddings(&ctx, route, sub).await;
        (deployment, attempts) = (routed.deployment.clone(), routed.attempts);
        let resp = match routed.result {
            Ok(resp) => resp,
            Err(e) => {
                let failed = Routed::<Json<EmbeddingResponse>> {
                    result: Err(e),
                    deployment,
                    attempts,
                };
                return finish(labelled(&route.alias, failed), status, remaining, None);
            }
        };
        if let Some(admission) = admission {
            let actual = budget::amount(resp.usage.prompt_tokens, 0, route.price);
            remaining = admission.settle(actual).await.or(remaining);
        }
        usage = resp.usage;
        for item in resp.data {
            let Some(&i) = missing.get(item.index as usize) else {
                continue;
            };
            if let EmbeddingVector::Float(v) = item.embedding {
                if let Some(plan) = plans[i].as_ref().filter(|p| p.write) {
                    cache.put(&plan.key, to_bytes(&v), None).await;
                }
                vectors[i] = Some(v);
            }
        }
    }
    let mut data = Vec::with_capacity(vectors.len());
    for (i, v) in vectors.into_iter().enumerate() {
        let Some(v) = v else {
            let e = GatewayError::Provider(ProviderError::InvalidResponse(format!(
                "the upstream returned no embedding for input {i}"
            )));
            return finish(labelled(&route.alias, e), status, remaining, None);
        };
        let embedding = match EmbeddingVector::Float(v).into_format(format) {
            Ok(e) => e,
            Err(e) => return labelled(&route.alias, GatewayError::Internal(e.to_string())),
        };
        data.push(Embedding {
            object: "embedding".into(),
            index: i as u32,
            embedding,
        });
    }
    let resp = EmbeddingResponse {
        object: "list".into(),
        data,
        model: route.alias.to_string(),
        usage,
        extra: Default::default(),
    };
    let routed = Routed {
        result: Ok(Json(resp)),
        deployment,
        attempts,
    };
    finish(labelled(&route.alias, routed), status, remaining, None)
}

/// Every input as its own JSON value.
fn split(input: &EmbeddingInput) -> Vec<Value> {
    match input {
        EmbeddingInput::Text(t) => vec![json!(t)],
        EmbeddingInput::Tokens(t) => vec![json!(t)],
        EmbeddingInput::Texts(v) => v.iter().map(|t| json!(t)).collect(),
        EmbeddingInput::TokenLists(v) => v.iter().map(|t| json!(t)).collect(),
    }
}

/// The inputs at `indices`, in the shape of `input`.
fn join(input: &EmbeddingInput, indices: &[usize]) -> EmbeddingInput {
    match input {
        EmbeddingInput::Text(_) | EmbeddingInput::Tokens(_) => input.clone(),
        EmbeddingInput::Texts(v) => {
            EmbeddingInput::Texts(indices.iter().map(|&i| v[i].clone()).collect())
        }
        EmbeddingInput::TokenLists(v) => {
            EmbeddingInput::TokenLists(indices.iter().map(|&i| v[i].clone()).collect())
        }
    }
}

/// A vector as stored: little-endian f32 values.
fn to_bytes(v: &[f32]) -> Bytes {
    v.iter()
        .flat_map(|x| x.to_le_bytes())
        .collect::<Vec<u8>>()
        .into()
}

fn from_bytes(b: &[u8]) -> Option<Vec<f32>> {
    (b.len().is_multiple_of(4) && !b.is_empty()).then(|| {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    })
}
