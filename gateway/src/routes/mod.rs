//! The route table: every path, its handler and its middleware, in one place.
//!
//! Handlers stay short: extract → resolve the model → call the pipeline → JSON or SSE.

pub(crate) mod admin;
pub(crate) mod audio;
pub(crate) mod chat;
pub(crate) mod completions;
pub(crate) mod embeddings;
pub(crate) mod models;
pub(crate) mod ops;

use std::time::Instant;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderMap, HeaderValue};

use serde::Serialize;

pub use audio::{create_diarization, create_transcription, create_translation};
pub use chat::create_chat_completion;
pub use completions::create_completion;
pub use embeddings::create_embedding;
pub use models::{list_models, retrieve_model};
pub use ops::{health, metrics, ready};

use crate::auth::{self, Principal};
use crate::budget;
use crate::cache::{Cacheable, Capture, Lookup, Plan, Status};
use crate::error::GatewayError;
use crate::pipeline::{self, Generation, Reply, RequestCtx, Routed};
use crate::providers::CallContext;
use crate::ratelimit;
use crate::state::AppState;
use crate::streaming::ChunkMeta;
use crate::telemetry::{self, ModelLabel, RequestTiming};

/// Builds the whole HTTP application (without the outer tower layers of [`crate::server`]).
pub fn router(state: AppState) -> Router {
    let server = &state.config().server;
    let v1 = Router::new()
        .route("/v1/models", get(list_models))
        .route("/v1/models/{id}", get(retrieve_model))
        .route("/v1/chat/completions", post(create_chat_completion))
        .route("/v1/completions", post(create_completion))
        .route("/v1/embeddings", post(create_embedding))
        .route(
            "/v1/audio/transcriptions",
            post(create_transcription).layer(DefaultBodyLimit::max(server.max_audio_body_bytes)),
        )
        .route(
            "/v1/audio/translations",
            post(create_translation).layer(DefaultBodyLimit::max(server.max_audio_body_bytes)),
        )
        .route(
            "/v1/audio/diarizations",
            post(create_diarization).layer(DefaultBodyLimit::max(server.max_audio_body_bytes)),
        )
        .route_layer(from_fn_with_state(state.clone(), ratelimit::enforce))
        .route_layer(from_fn_with_state(state.clone(), auth::require_key));
    let realtime = Router::new()
        .route("/v1/realtime", get(crate::realtime::connect))
        .route_layer(from_fn_with_state(state.clone(), ratelimit::enforce))
        .route_layer(from_fn_with_state(
            state.clone(),
            crate::realtime::authenticate,
        ));
    let admin = Router::new()
        .route("/admin/budgets/{tenant}", get(admin::list_sessions))
        .route(
            "/admin/budgets/{tenant}/{session}",
            get(admin::get_budget)
                .put(admin::set_budget)
                .delete(admin::reset_budget),
        )
        .route_layer(from_fn_with_state(state.clone(), admin::require_admin));
    let ops = Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/load", get(ops::load));
    let docs: Router<AppState> = utoipa_swagger_ui::SwaggerUi::new("/docs")
        .url("/openapi.json", crate::openapi::spec())
        .into();
    Router::new()
        .merge(v1)
        .merge(realtime)
        .merge(admin)
        .merge(ops)
        .merge(docs)
        .merge(crate::discord::router(&state))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(server.max_body_bytes))
        .layer(from_fn_with_state(state.clone(), telemetry::observe))
        .with_state(state)
}

async fn not_found(method: http::Method, uri: http::Uri) -> GatewayError {
    GatewayError::RouteNotFound {
        method: method.to_string(),
        path: uri.path().to_string(),
    }
}

async fn method_not_allowed(method: http::Method) -> GatewayError {
    GatewayError::MethodNotAllowed(method.to_string())
}

/// Builds the pipeline context of one request.
fn request_ctx<'a>(
    state: &'a AppState,
    principal: &'a Principal,
    timing: &'a RequestTiming,
    headers: &HeaderMap,
    route: &'static str,
) -> RequestCtx<'a> {
    let request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    RequestCtx {
        state,
        principal,
        timing,
        call: CallContext::new(request_id),
        tokens: state.rate_limits().token_debit(principal),
        start: Instant::now(),
        route,
    }
}

/// The body of the chat and completion handlers: resolve the alias, apply the session's
/// budget, answer from the cache or run the pipeline.
pub(crate) async fn generate<G: Cacheable>(
    state: &AppState,
    principal: &Principal,
    timing: &RequestTiming,
    headers: &HeaderMap,
    req: G,
    route_name: &'static str,
) -> Response {
    let ctx = request_ctx(state, principal, timing, headers, route_name);
    let route = match state.routes().resolve(principal, req.model()) {
        Ok(route) => route,
        Err(e) => return e.into_response(),
    };
    let budgets = state.budgets();
    let session = budgets.session(principal, headers, req.user());
    let cache = state.cache();
    let plan_for = |alias: &str| {
        cache.plan(
            headers,
            &principal.tenant,
            G::KIND,
            alias,
            &req,
            req.deterministic(),
        )
    };
    let lookup = async |plan: &Option<Plan>| match plan {
        Some(plan) if plan.read => Some(cache.lookup(plan).await),
        _ => None,
    };
    // The session's budget and the cache are read at once (on a shared store, one round
    // trip's wait instead of two); the lookup is redone below if a downgrade changes the alias.
    let first_plan = plan_for(&route.alias);
    let (applied, first_lookup) = tokio::join!(budgets.applied(&session), lookup(&first_plan));
    let applied = match applied {
        Ok(applied) => applied,
        Err(e) => return labelled(&route.alias, e),
    };
    // Past its downgrade threshold the session is served by the cheaper alias.
    let (route, downgraded_from) = match &applied {
        Some(applied) => match budgets.downgrade(applied, &route.alias).await {
            Ok(Some(to)) => match state.routes().get(&to) {
                Some(cheaper) => (cheaper, Some(route.alias.clone())),
                None => (route, None),
            },
            Ok(None) => (route, None),
            Err(e) => return labelled(&route.alias, e),
        },
        None => (route, None),
    };

    let (plan, looked_up) = if downgraded_from.is_none() {
        (first_plan, first_lookup)
    } else {
        drop(first_lookup);
        let plan = plan_for(&route.alias);
        let looked_up = lookup(&plan).await;
        (plan, looked_up)
    };
    let mut flight = None;
    let status = match looked_up {
        Some(found) => match found {
            Lookup::Hit(bytes) => {
                cache.count(Status::Hit);
                let remaining = match applied {
                    Some(applied) if cache.config().charge_hits => {
                        match charge_hit::<G>(budgets, applied, &bytes, route.price).await {
                            Ok(remaining) => remaining,
                            Err(e) => {
                                let resp = labelled(&route.alias, e);
                                return finish(resp, Status::Hit, None, downgraded_from);
                            }
                        }
                    }
                    Some(applied) => budgets.remaining(&applied).await,
                    None => None,
                };
                let resp = cached_answer::<G>(bytes, req.stream_usage(), &route.alias);
                return finish(resp, Status::Hit, remaining, downgraded_from);
            }
            Lookup::Miss(guard) => {
                flight = guard;
                Status::Miss
            }
        },
        _ => Status::Bypass,
    };
    cache.count(status);
    let store = plan.filter(|p| p.write).map(|p| p.key);

    let admission = match applied {
        Some(applied) => {
            let (estimate, prompt_estimate) = estimate(
                &req,
                route,
                state.config().budgets.default_max_tokens,
                route.price,
            );
            match budgets
                .admit(applied, estimate, prompt_estimate, route.price)
                .await
            {
                Ok(a) => Some(a),
                Err(e) => return finish(labelled(&route.alias, e), status, None, None),
            }
        }
        None => None,
    };
    let mut remaining = admission.as_ref().and_then(|a| a.remaining_header());
    let routed = pipeline::generate(&ctx, route, req).await;
    let routed = match routed.result {
        Ok(Reply::Full(mut full)) => {
            let usage = G::relabel(&mut full, &route.alias).cloned();
            if let Some(admission) = admission {
                // Without usage the reservation is released (dropped): nothing is known spent.
                if let Some(u) = usage {
                    let actual = admission.amount(&u);
                    remaining = admission.settle(actual).await.or(remaining);
                }
            }
            if let Some(key) = store
                && G::storable(&full)
                && let Some(bytes) = crate::cache::encode(&full)
            {
                cache.put(&key, bytes, flight.take()).await;
            }
            Routed {
                result: Ok(Reply::Full(full)),
                deployment: routed.deployment,
                attempts: routed.attempts,
            }
        }
        Ok(Reply::Stream(mut stream)) => {
            if let Some(admission) = admission {
                stream.settle_with(admission);
            }
            if let Some(key) = store {
                let cache = std::sync::Arc::clone(cache);
                let guard = flight.take();
                let limit = cache.config().max_entry_bytes;
                stream.capture_with(Capture::new(limit, move |chunks| {
                    Box::pin(async move {
                        if let Some(full) = G::assemble(chunks)
                            && G::storable(&full)
                            && let Some(bytes) = crate::cache::encode(&full)
                        {
                            cache.put(&key, bytes, guard).await;
                        }
                    })
                }));
            }
            Routed {
                result: Ok(Reply::Stream(stream)),
                deployment: routed.deployment,
                attempts: routed.attempts,
            }
        }
        Err(e) => Routed {
            result: Err(e),
            deployment: routed.deployment,
            attempts: routed.attempts,
        },
    };
    finish(
        labelled(&route.alias, routed),
        status,
        remaining,
        downgraded_from,
    )
}

/// Charges a hit to the session at the stored answer's usage (`cache.charge_hits`): the
/// same reserve-then-settle as a call, so a spent budget refuses it.
async fn charge_hit<G: Cacheable>(
    budgets: &std::sync::Arc<budget::Budgets>,
    applied: budget::Applied,
    bytes: &[u8],
    price: aigw_models::catalog::Price,
) -> Result<Option<String>, GatewayError> {
    let usage = serde_json::from_slice::<G::Full>(bytes)
        .ok()
        .and_then(|mut full| G::relabel(&mut full, "").cloned());
    let Some(usage) = usage else {
        return Ok(budgets.remaining(&applied).await);
    };
    let amount = budget::amount(usage.prompt_tokens, usage.completion_tokens, price);
    let admission = budgets
        .admit(applied, amount, usage.prompt_tokens, price)
        .await?;
    let fallback = admission.remaining_header();
    Ok(admission.settle(amount).await.or(fallback))
}

/// A stored answer, as JSON or (`stream_usage` is `Some`) replayed as a stream.
fn cached_answer<G: Cacheable>(
    bytes: bytes::Bytes,
    stream_usage: Option<bool>,
    alias: &std::sync::Arc<str>,
) -> Response {
    let Some(include_usage) = stream_usage else {
        let mut resp = (
            [(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            bytes,
        )
            .into_response();
        resp.extensions_mut().insert(ModelLabel(alias.clone()));
        return resp;
    };
    match serde_json::from_slice::<G::Full>(&bytes) {
        Ok(full) => crate::streaming::replay(G::replay(full), include_usage, alias.clone()),
        Err(e) => labelled(
            alias,
            GatewayError::Internal(format!("a cached answer could not be read: {e}")),
        ),
    }
}

/// Adds the cache, budget and downgrade headers.
fn finish(
    mut resp: Response,
    status: Status,
    remaining: Option<String>,
    downgraded_from: Option<std::sync::Arc<str>>,
) -> Response {
    let headers = resp.headers_mut();
    headers.insert(
        crate::cache::STATUS_HEADER,
        HeaderValue::from_static(status.as_str()),
    );
    if let Some(value) = remaining.and_then(|r| HeaderValue::from_str(&r).ok()) {
        headers.insert(budget::REMAINING_HEADER, value);
    }
    if let Some(from) = downgraded_from.and_then(|a| HeaderValue::from_str(&a).ok()) {
        headers.insert("x-aigw-downgraded-from", from);
    }
    resp
}

/// The reservation of a generation request: the prompt counted with the model's tokenizer
/// when the route has one deployment that knows it (a local engine), else conservatively at
/// one token per three bytes of the request's JSON (an over-estimate for text in any script);
/// plus every choice's output limit (or the configured default).
fn estimate<G: Generation>(
    req: &G,
    route: &crate::routing::Route,
    default_max_tokens: u32,
    price: aigw_models::catalog::Price,
) -> (aigw_state::budget::Amount, u64) {
    let mut deployments = route.deployments();
    let exact = match (deployments.next(), deployments.next()) {
        (Some(only), None) => req.prompt_tokens(&*only.provider),
        _ => None,
    };
    let prompt = exact.unwrap_or_else(|| {
        let bytes = serde_json::to_vec(req).map_or(0, |b| b.len()) as u64;
        bytes.div_ceil(3) + 16
    });
    let output =
        u64::from(req.max_output().unwrap_or(default_max_tokens)) * u64::from(req.choices());
    (budget::amount(prompt, output, price), prompt)
}

/// Renders a pipeline result and labels it with the model alias for metrics.
fn labelled(alias: &std::sync::Arc<str>, resp: impl IntoResponse) -> Response {
    let mut resp = resp.into_response();
    resp.extensions_mut().insert(ModelLabel(alias.clone()));
    resp
}

/// Which deployment answered a request.
pub const DEPLOYMENT_HEADER: &str = "x-aigw-deployment";
/// How many deployments a request called.
pub const ATTEMPTS_HEADER: &str = "x-aigw-attempts";

impl<T: IntoResponse> IntoResponse for Routed<T> {
    fn into_response(self) -> Response {
        let mut resp = self.result.into_response();
        let headers = resp.headers_mut();
        if let Some(name) = self.deployment
            && let Ok(value) = HeaderValue::from_str(&name)
        {
            headers.insert(DEPLOYMENT_HEADER, value);
        }
        if self.attempts > 0 {
            headers.insert(ATTEMPTS_HEADER, HeaderValue::from(self.attempts));
        }
        resp
    }
}

impl<T: Serialize, C: ChunkMeta> IntoResponse for Reply<T, C> {
    fn into_response(self) -> Response {
        match self {
            Reply::Full(body) => axum::Json(body).into_response(),
            Reply::Stream(stream) => (*stream).into_response(),
        }
    }
}
