//! The OpenAPI description of the HTTP surface, generated from the handlers and wire types.
//! The committed `openapi/openapi.json` is checked against it.

use aigw_models::openai as wire;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoResponses, Modify, OpenApi};

use crate::routes;

/// The error responses every OpenAI endpoint may give, all `{"error": {…}}`.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum ApiErrors {
    /// Malformed JSON, a mistyped or invalid field (`param` names it), or an unsupported
    /// endpoint for the model.
    #[response(status = 400)]
    BadRequest(wire::ErrorResponse),
    /// Missing or invalid API key.
    #[response(status = 401)]
    Unauthorized(wire::ErrorResponse),
    /// Unknown model, or a model the key may not use.
    #[response(status = 404)]
    NotFound(wire::ErrorResponse),
    /// Body larger than the configured limit.
    #[response(status = 413)]
    PayloadTooLarge(wire::ErrorResponse),
    /// The upstream's rate limit; `Retry-After` says when to try again.
    #[response(status = 429)]
    RateLimited(wire::ErrorResponse),
    /// The upstream failed or could not be reached.
    #[response(status = 502)]
    BadGateway(wire::ErrorResponse),
    /// The upstream did not answer in time.
    #[response(status = 504)]
    GatewayTimeout(wire::ErrorResponse),
}

struct ApiKeyAuth;

impl Modify for ApiKeyAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API key from the gateway's config, as `Authorization: Bearer <key>`. Not required when the gateway runs without keys."))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "admin_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The admin key (`admin.key_env`), as `Authorization: Bearer <key>`.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The OpenAPI document type.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "aigw",
        description = "OpenAI-compatible AI inference and audio gateway. Errors are always `{\"error\": {\"message\", \"type\", \"param\", \"code\"}}`; every response carries `x-request-id` and `x-aigw-overhead-ms`.",
        license(name = "Apache-2.0")
    ),
    paths(
        routes::models::list_models,
        routes::models::retrieve_model,
        routes::chat::create_chat_completion,
        routes::completions::create_completion,
        routes::embeddings::create_embedding,
        routes::audio::create_transcription,
        routes::audio::create_translation,
        routes::audio::create_diarization,
        crate::realtime::connect,
        routes::ops::health,
        routes::ops::ready,
        routes::ops::metrics,
        routes::ops::load,
        routes::admin::list_sessions,
        routes::admin::get_budget,
        routes::admin::set_budget,
        routes::admin::reset_budget,
        crate::discord::interactions,
        crate::discord::voice::lines,
    ),
    components(schemas(wire::ChatCompletionChunk, wire::ErrorResponse)),
    modifiers(&ApiKeyAuth),
    tags(
        (name = "OpenAI", description = "The OpenAI-compatible API"),
        (name = "Extensions", description = "aigw's own endpoints beside OpenAI's"),
        (name = "Operations", description = "Health, readiness and metrics"),
        (name = "Admin", description = "Session budgets (admin key)"),
        (name = "Discord", description = "Discord's HTTP interactions (when `[discord]` is configured), and the voice bridge's transcript lines (when `[discord.voice]` is)"),
    )
)]
pub struct ApiDoc;

/// The OpenAPI document, with the crate's version.
pub fn spec() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc
}

/// The document as pretty JSON with a trailing newline (the form committed to the repo).
pub fn spec_json() -> String {
    let mut json = spec()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    json.push('\n');
    json
}
