//! Binding and serving: the outer tower layers (request id, tracing, CORS), the background
//! health prober, and graceful shutdown that lets in-flight requests, streams and background
//! work (see [`AppState::background`]) finish within the configured grace period.

use std::future::Future;
use std::net::SocketAddr;

use axum::Router;
use http::{HeaderName, HeaderValue, Request};
use tokio::net::TcpListener;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::routes;
use crate::state::AppState;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The complete application: routes plus the outer layers.
pub fn app(state: AppState) -> Router {
    let cors = cors_layer(&state.config().server.cors_allow_origins);
    let mut app = routes::router(state)
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
            let id = req
                .headers()
                .get(&REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path())
        }))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid));
    if let Some(cors) = cors {
        app = app.layer(cors);
    }
    app
}

fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods(Any)
            .allow_headers(Any)
            .expose_headers([
                REQUEST_ID,
                HeaderName::from_static(crate::telemetry::OVERHEAD_HEADER),
            ]),
    )
}

/// Serves `state` on `listener` until `shutdown` resolves, then waits for in-flight requests
/// (streams included) and background work for at most the configured grace period.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let grace = state.config().server.shutdown_grace;
    let probers = crate::health::spawn_probers(state.routes(), state.metrics());
    let background = state.background().clone();
    let stopped_at = std::sync::Arc::new(std::sync::OnceLock::new());
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let signal_at = std::sync::Arc::clone(&stopped_at);
    let signal = async move {
        shutdown.await;
        let _ = signal_at.set(tokio::time::Instant::now());
        tracing::info!(
            grace_secs = grace.as_secs(),
            "shutting down: draining in-flight requests"
        );
        let _ = stopping_tx.send(());
    };
    let server = axum::serve(
        listener,
        app(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(signal);
    let server = server.into_future();
    tokio::pin!(server);
    let result = tokio::select! {
        result = &mut server => result,
        () = async {
            if stopping_rx.await.is_ok() {
                tokio::time::sleep(grace).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => {
            tracing::warn!("grace period over: closing remaining connections");
            Ok(())
        }
    };
    for p in &probers {
        p.abort();
    }
    background.close();
    if let Some(&at) = stopped_at.get()
        && !background.is_empty()
    {
        tracing::info!(tasks = background.len(), "waiting for background work");
        if tokio::time::timeout_at(at + grace, background.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                tasks = background.len(),
                "grace period over: abandoning background work"
            );
        }
    }
    result
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
