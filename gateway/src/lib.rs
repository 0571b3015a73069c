//! The aigw server: an OpenAI-compatible HTTP gateway in front of upstream providers.
//!
//! Layout:
//! - [`config`]: the TOML file, strictly parsed and validated into runtime types.
//! - [`server`]: binding, outer layers, graceful shutdown; [`routes`]: the route table and
//!   thin handlers; [`extract`]: extractors that fail OpenAI-style.
//! - [`auth`]: API keys → principals.
//! - [`pipeline`]: the request flow, top to bottom; [`streaming`]: SSE re-emission.
//! - [`routing`]: model aliases → ordered groups of weighted deployments, chosen by
//!   power-of-two-choices; [`breaker`]: a circuit breaker per deployment; [`providers`]: the
//!   provider trait, the OpenAI-compatible (and Azure), Anthropic and in-process providers;
//!   [`local`]: starting the in-process engines.
//! - [`error`]: the error type and its OpenAI-shaped rendering.
//! - [`telemetry`], [`metrics`], [`health`]: logs, Prometheus metrics, deployment probes.

//! - [`openapi`]: the generated OpenAPI document.
//! - [`state`]: the shared [`state::AppState`].
//! - [`models_cli`]: `aigw models fetch|list` over the model catalog of `aigw-models`.
//! - [`realtime`]: `/v1/realtime`, live transcription over a WebSocket.
//! - [`discord`]: the Discord integration (slash commands over HTTP interactions).

pub mod auth;
pub mod breaker;
pub mod budget;
pub mod cache;
pub mod config;
pub mod discord;
pub mod error;
pub mod extract;
pub mod health;
pub mod local;
pub mod metrics;
pub mod models_cli;
pub mod openapi;
pub mod pipeline;
pub mod providers;
pub mod ratelimit;
pub mod realtime;
pub mod routes;
pub mod routing;
pub mod server;
pub mod startup;
pub mod state;
pub mod streaming;
pub mod telemetry;
