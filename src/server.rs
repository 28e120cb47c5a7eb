//! The HTTP server: the router as a function, and `run` over a bound listener and a shutdown
//! future, so tests bind port 0 and the binary stays thin.
//!
//! No access log and no request metrics for the tick route: their counts would be the raw
//! count, and their timestamps would say when a contact was logged (DESIGN.md section 2).

use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};
use tokio::net::TcpListener;

use crate::api::{self, ApiError, BODY_LIMIT_BYTES};
use crate::service::Service;

/// The whole application's router.
pub fn app(svc: Service) -> Router {
    Router::new()
        .route("/healthz", get(api::healthz))
        .route("/api/v1/policy", get(api::get_policy))
        .route("/api/v1/ticks", post(api::post_tick))
        .route("/api/v1/tokens", post(api::post_token).get(api::get_tokens))
        .route("/api/v1/tokens/{id}", delete(api::delete_token))
        .route("/api/v1/periods", get(api::get_periods))
        .route("/api/v1/periods/{period}/release", post(api::post_release))
        .route("/api/v1/releases", get(api::get_releases))
        .route("/api/v1/releases.sig", get(api::get_releases_sig))
        .route("/api/v1/budget", get(api::get_budget))
        .route("/api/v1/signing-key", get(api::get_signing_key))
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        .with_state(svc)
}

/// How often the lifecycle job (close, release, purge) runs.
pub const LIFECYCLE_EVERY: Duration = Duration::from_secs(600);

/// Runs the lifecycle job now and then every `every`, until aborted. A failed run is logged
/// and retried at the next tick; a release is never half-written (one transaction).
pub async fn lifecycle_loop(svc: Service, every: Duration) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if let Err(e) = svc.run_lifecycle().await {
            tracing::error!(error = %e, "lifecycle job failed; will retry");
        }
    }
}

/// Serves `svc` on `listener` until `shutdown` resolves, with the lifecycle job in the
/// background, then flushes the store.
pub async fn run(
    listener: TcpListener,
    svc: Service,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let store = svc.store().clone();
    let job = tokio::spawn(lifecycle_loop(svc.clone(), LIFECYCLE_EVERY));
    axum::serve(listener, app(svc))
        .with_graceful_shutdown(shutdown)
        .await?;
    job.abort();
    store.flush().map_err(std::io::Error::other)?;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
