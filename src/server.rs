//! The HTTP server: the router as a function, and `run` over a bound listener and a shutdown
//! future, so tests bind port 0 and the binary stays thin.
//!
//! Connections are served with hyper's HTTP/1.1 connection builder rather than `axum::serve`,
//! which exposes no timeouts: a client gets [`HEADER_READ_TIMEOUT`] to send each request head
//! (which also closes idle keep-alive connections), [`BODY_READ_TIMEOUT`] to send a body, and
//! shutdown waits at most [`SHUTDOWN_GRACE`] for requests in flight. No timeout covers a
//! handler, so none can cut a tick between its write and its answer.
//!
//! No access log and no request metrics for the tick route: their counts would be the raw
//! count, and their timestamps would say when a contact was logged (docs/design.md,
//! "Durability and side channels"). For the same reason nothing is logged per connection.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, header};
use axum::routing::{delete, get, post};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tower_http::map_request_body::MapRequestBodyLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::RequestBodyTimeoutLayer;

use crate::api::{self, ApiError, BODY_LIMIT_BYTES, BODY_READ_TIMEOUT};
use crate::service::Service;

/// Longest a client may take to send a request head (request line and headers), in seconds: 10.
/// A real client sends it in one packet; a slowloris client that sends a byte at a time, or
/// opens a connection and sends nothing, is disconnected after this. hyper also starts this
/// clock while a keep-alive connection waits for its next request, so it is the idle timeout
/// too: a reverse proxy in front should keep idle upstream connections for less (nginx
/// `keepalive_timeout` in the `upstream` block, e.g. 5 s), or it may send a request on a
/// connection that is being closed.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest the runtime waits, after the server stopped, for blocking work still running (a
/// release being drawn): 2 s, the rest of the 10 s bound after [`SHUTDOWN_GRACE`] and the flush.
/// A draw cut short is not on disk and is drawn again at the next start: nobody saw it.
pub const RUNTIME_SHUTDOWN: Duration = Duration::from_secs(2);

/// Longest shutdown waits for requests in flight to finish, in seconds: 6. A tick takes
/// milliseconds and a release draw about a second, so 6 s lets every honest request finish,
/// and leaves 4 s of the 10 s an operator (or systemd's `TimeoutStopSec`) is promised for
/// flushing the store and exiting. Connections still open then (slow clients) are closed.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(6);

/// Most connections open at once: 1024. Each holds a file descriptor; the binary raises its
/// soft descriptor limit to at least 4096 at start (where the hard limit allows), so the store
/// keeps descriptors for its databases whatever the clients do. Clients past the cap wait in
/// the kernel's accept queue until a connection closes (the header timeout closes idle ones
/// within 10 s).
pub const MAX_CONNECTIONS: usize = 1024;

/// How long to pause accepting after `accept` fails (for example too many open files), so a
/// persistent error does not spin a core; connections already open are served meanwhile.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Security headers every response carries unless its handler set its own: the browser must
/// not guess content types, leak the address in a `Referer`, frame the response, or run or
/// load anything from an API answer.
const SECURITY_HEADERS: [(HeaderName, &str); 4] = [
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::REFERRER_POLICY, "no-referrer"),
    (header::X_FRAME_OPTIONS, "DENY"),
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; frame-ancestors 'none'",
    ),
];

/// `Cache-Control` of every response except the public ones below: answers carry tokens
/// (token creation shows one, once) or numbers meant only for the caller's role, so no
/// browser or proxy may keep them.
const NO_STORE: &str = "no-store";

/// `Cache-Control` of the liveness and readiness probes: public, but stale answers mislead.
pub const PROBE_CACHE: &str = "no-cache";

/// `Cache-Control` of the public signing key: the same for the data directory's life, so
/// caches may keep it for 5 minutes.
const SIGNING_KEY_CACHE: &str = "public, max-age=300";

/// A layer that sets `Cache-Control` to `value` on a public route's answers, which then keep
/// it instead of [`NO_STORE`].
pub fn cache_control(value: &'static str) -> SetResponseHeaderLayer<HeaderValue> {
    SetResponseHeaderLayer::overriding(header::CACHE_CONTROL, HeaderValue::from_static(value))
}

/// The whole application's router, with its body limits and timeouts and the security
/// headers on every answer (errors and 404s included).
pub fn app(svc: Service) -> Router {
    let mut router = Router::new()
        .route(
            "/healthz",
            get(api::healthz).layer(cache_control(PROBE_CACHE)),
        )
        .route(
            "/readyz",
            get(api::readyz).layer(cache_control(PROBE_CACHE)),
        )
        .route("/api/v1/policy", get(api::get_policy))
        .route("/api/v1/ticks", post(api::post_tick))
        .route("/api/v1/tokens", post(api::post_token).get(api::get_tokens))
        .route("/api/v1/tokens/{id}", delete(api::delete_token))
        .route("/api/v1/periods", get(api::get_periods))
        .route("/api/v1/periods/{period}/release", post(api::post_release))
        .route("/api/v1/admin/backup", post(api::post_backup))
        .route("/api/v1/releases", get(api::get_releases))
        .route("/api/v1/releases.sig", get(api::get_releases_sig))
        .route("/api/v1/budget", get(api::get_budget))
        .route("/api/v1/dashboard", get(api::get_dashboard))
        .route(
            "/api/v1/signing-key",
            get(api::get_signing_key).layer(cache_control(SIGNING_KEY_CACHE)),
        )
        // The pages, assets and the invite API (src/web).
        .merge(crate::web::router())
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        .layer(MapRequestBodyLayer::new(Body::new))
        // Bounds each read of a body; the JSON extractor bounds the whole body to the same time.
        .layer(RequestBodyTimeoutLayer::new(BODY_READ_TIMEOUT));
    let defaults = SECURITY_HEADERS
        .into_iter()
        .chain([(header::CACHE_CONTROL, NO_STORE)]);
    for (name, value) in defaults {
        router = router.layer(SetResponseHeaderLayer::if_not_present(
            name,
            HeaderValue::from_static(value),
        ));
    }
    router.with_state(svc)
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
///
/// On shutdown it stops accepting, lets requests in flight finish and closes idle connections,
/// waits at most [`SHUTDOWN_GRACE`] for that, closes whatever is still open, and flushes, so
/// it returns within about 6 s whatever the clients do.
pub async fn run(
    listener: TcpListener,
    svc: Service,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let store = svc.store().clone();
    let job = tokio::spawn(lifecycle_loop(svc.clone(), LIFECYCLE_EVERY));
    let router = app(svc);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    // Every connection's task, so those still open after the grace can be closed.
    let mut conns = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            // At the cap, accept no more until one closes: a flood of idle connections must not
            // take the descriptors the store needs.
            accepted = listener.accept(), if conns.len() < MAX_CONNECTIONS => match accepted {
                Ok((tcp, _peer)) => {
                    // Answers are written whole; Nagle would only delay them.
                    let _ = tcp.set_nodelay(true);
                    let service = TowerToHyperService::new(router.clone());
                    let conn = http.serve_connection(TokioIo::new(tcp), service);
                    let conn = graceful.watch(conn);
                    // A connection's errors (timeouts, resets) are the client's business, and a
                    // log line would say when someone used the service.
                    conns.spawn(async move {
                        let _ = conn.await;
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed; pausing");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            // Reap finished connections so the set holds only open ones.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    // Stop accepting: new connections are refused from here on.
    drop(listener);
    job.abort();
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        while conns.try_join_next().is_some() {}
        tracing::warn!(
            open = conns.len(),
            grace_s = SHUTDOWN_GRACE.as_secs(),
            "connections still open after the shutdown grace; closing them"
        );
    }
    conns.shutdown().await;
    store.flush().map_err(std::io::Error::other)?;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
///
/// The handlers are installed when this is called (not when the future is first polled), so
/// a caller that calls it before announcing that it listens never dies of a SIGTERM sent
/// right after the announcement. Call it inside the runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).ok();
    async move {
        let wait = |s: Option<tokio::signal::unix::Signal>| async move {
            match s {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = wait(interrupt) => {},
            _ = wait(term) => {},
        }
    }
}
