//! The aigw server: an OpenAI-compatible HTTP gateway in front of upstream providers.
//!
//! Layout:
//! - [`config`]: the TOML file, strictly parsed and validated into runtime types.
//! - [`server`]: binding, outer layers, graceful shutdown; [`routes`]: the route table and
//!   thin handlers; [`extract`]: extractors that fail OpenAI-style.
//! - [`auth`]: API keys → principals.
//! - [`pipeline`]: the request flow, top to bottom; [`streaming`]: SSE re-emission.
//! - [`routing`]: model aliases → providers; [`providers`]: the provider trait and the
//!   OpenAI-compatible upstream.
//! - [`error`]: the error type and its OpenAI-shaped rendering.
//! - [`telemetry`], [`metrics`], [`health`]: logs, Prometheus metrics, upstream probes.
//! - [`openapi`]: the generated OpenAPI document.
//! - [`state`]: the shared [`state::AppState`].

pub mod auth;
pub mod config;
pub mod error;
pub mod extract;
pub mod health;
pub mod metrics;
pub mod openapi;
pub mod pipeline;
pub mod providers;
pub mod routes;
pub mod routing;
pub mod server;
pub mod startup;
pub mod state;
pub mod streaming;
pub mod telemetry;
