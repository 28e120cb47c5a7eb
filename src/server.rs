//! The HTTP server: the router as a function, and `run` over a bound listener and a shutdown
//! future, so tests bind port 0 and the binary stays thin.
//!
//! Connections are served with hyper's HTTP/1.1 connection builder rather than `axum::serve`,
//! which exposes no timeouts: a client gets [`HEADER_READ_TIMEOUT`] to send each request head
//! (which also closes idle keep-alive connections), [`BODY_READ_TIMEOUT`] to send a body, and
//! shutdown waits at most [`SHUTDOWN_GRACE`] for requests in flight. No timeout covers a
//! handler, so none can cut a tick between its write and its answer.
//!
//! Metrics (`crate::metrics`) are recorded by one middleware over every route but the tick
//! routes (and redirects to them, such as a supporter's `/`), and served at `/metrics` on a separate listener or behind a bearer token
//! ([`MetricsServe`]).
//!
//! No access log and no request metrics for the tick route: their counts would be the raw
//! count, and their timestamps would say when a contact was logged (docs/design.md,
//! "Durability and side channels"). For the same reason nothing is logged per connection.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use axum::extract::{MatchedPath, Request, State};
use axum::handler::Handler;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, get, on};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tower_http::map_request_body::MapRequestBodyLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::RequestBodyTimeoutLayer;

use crate::api::{self, ApiError, BODY_LIMIT_BYTES, BODY_READ_TIMEOUT};
use crate::metrics::{self, Metrics, MetricsToken};
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

/// `Cache-Control` of the OpenAPI document: it changes only with the binary, so caches may
/// keep it for an hour.
const OPENAPI_CACHE: &str = "public, max-age=3600";

/// One JSON route: the method and path that the OpenAPI document must give it, and what
/// serves it. The router is built from [`api_routes`] only, so tests/it/openapi.rs can check
/// the document against every route the router serves.
pub struct ApiRoute {
    /// The HTTP method.
    pub method: Method,
    /// The path, in axum's syntax, which is OpenAPI's (`/api/v1/tokens/{id}`).
    pub path: &'static str,
    service: MethodRouter<Service>,
}

/// `handler` for `method` on `path`.
fn route<H, T>(method: Method, path: &'static str, handler: H) -> ApiRoute
where
    H: Handler<T, Service>,
    T: 'static,
{
    // Only standard methods are in the table, and MethodFilter has each of them.
    let filter = MethodFilter::try_from(method.clone()).expect("a standard method");
    ApiRoute {
        method,
        path,
        service: on(filter, handler),
    }
}

impl ApiRoute {
    /// The route with `Cache-Control: value` on its answers.
    fn cached(mut self, value: &'static str) -> ApiRoute {
        self.service = self.service.layer(cache_control(value));
        self
    }
}

/// Every JSON route: `/healthz`, `/readyz` and everything under `/api/`. Each has a
/// `#[utoipa::path]` annotation listed in [`crate::openapi::ApiDoc`]; add a route here, never
/// with `.route` elsewhere, or tests/it/openapi.rs fails.
pub fn api_routes() -> Vec<ApiRoute> {
    use crate::web::api as web_api;
    vec![
        route(Method::GET, "/healthz", api::healthz).cached(PROBE_CACHE),
        route(Method::GET, "/readyz", api::readyz).cached(PROBE_CACHE),
        route(Method::GET, "/api/v1/openapi.json", api::get_openapi).cached(OPENAPI_CACHE),
        route(Method::GET, "/api/v1/policy", api::get_policy),
        route(Method::POST, "/api/v1/ticks", api::post_tick),
        route(Method::POST, "/api/v1/tokens", api::post_token),
        route(Method::GET, "/api/v1/tokens", api::get_tokens),
        route(Method::DELETE, "/api/v1/tokens/{id}", api::delete_token),
        route(Method::GET, "/api/v1/periods", api::get_periods),
        route(
            Method::POST,
            "/api/v1/periods/{period}/release",
            api::post_release,
        ),
        route(Method::POST, "/api/v1/admin/backup", api::post_backup),
        route(Method::GET, "/api/v1/releases", api::get_releases),
        route(Method::GET, "/api/v1/releases.sig", api::get_releases_sig),
        route(Method::GET, "/api/v1/budget", api::get_budget),
        route(Method::GET, "/api/v1/dashboard", api::get_dashboard),
        route(Method::GET, "/api/v1/signing-key", api::get_signing_key).cached(SIGNING_KEY_CACHE),
        route(Method::POST, "/api/v1/invites", web_api::post_invite),
        route(Method::GET, "/api/v1/invites", web_api::get_invites),
        route(
            Method::DELETE,
            "/api/v1/invites/{id}",
            web_api::delete_invite,
        ),
        route(Method::GET, "/api/v1/follow-ups", web_api::get_follow_ups),
    ]
}

/// The whole application's router, with its body limits and timeouts and the security
/// headers on every answer (errors and 404s included); without metrics.
pub fn app(svc: Service) -> Router {
    app_with(svc, None, None)
}

/// [`app`] with request metrics recorded in `metrics` (the tick routes left out), and with
/// `GET /metrics` behind the bearer token `metrics_token` when one is given.
pub fn app_with(
    svc: Service,
    metrics: Option<&Metrics>,
    metrics_token: Option<MetricsToken>,
) -> Router {
    let mut routes = Router::new();
    for route in api_routes() {
        // Two methods on one path merge into one route.
        routes = routes.route(route.path, route.service);
    }
    // The pages and assets (src/web).
    routes = routes.merge(crate::web::router());
    if let (Some(m), Some(token)) = (metrics, metrics_token) {
        let m = m.clone();
        routes = routes.route(
            metrics::METRICS_PATH,
            get(move |headers: HeaderMap| metrics_answer(m.clone(), Some(token.clone()), headers)),
        );
    }
    routes = routes
        .fallback(crate::web::not_found)
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() });
    // Last of the route layers, so it sees every route's matched path (and the fallback).
    if let Some(m) = metrics {
        routes = routes.layer(middleware::from_fn_with_state(m.clone(), track));
    }
    let mut router = routes
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
    lifecycle_loop_observed(svc, every, None).await
}

/// [`lifecycle_loop`], recording each run's outcome and duration in `metrics`.
pub async fn lifecycle_loop_observed(svc: Service, every: Duration, metrics: Option<Metrics>) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let started = std::time::Instant::now();
        let outcome = svc.run_lifecycle().await;
        if let Some(m) = &metrics {
            m.observe_job(&outcome, started.elapsed());
        }
        if let Err(e) = outcome {
            tracing::error!(error = %e, "lifecycle job failed; will retry");
        }
    }
}

/// Records a request in the metrics: method, matched route template (never the raw path) and
/// status, and its time; [`Metrics::observe_request`] drops the tick routes.
async fn track(State(m): State<Metrics>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let method = req.method().clone();
    // The tick routes are not even timed; nor is a path below them that matches no route
    // (`/api/v1/ticks/` from a proxy that adds a slash, an old app's retired tick path),
    // which would otherwise count tick attempts under `unmatched`.
    let tick_path = match route.as_deref() {
        Some(r) => metrics::is_tick_route(r),
        None => metrics::is_tick_route(req.uri().path()),
    };
    if tick_path {
        return next.run(req).await;
    }
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    // Nor the way to them: a supporter opens `/` (or signs in, or switches the language) to
    // log a contact and is sent on to `/tick`, so those redirects would count ticks too.
    if redirects_to_tick_route(&resp) {
        return resp;
    }
    m.observe_request(
        method.as_str(),
        route.as_deref(),
        resp.status().as_u16(),
        started.elapsed(),
    );
    resp
}

/// Whether `resp` is a redirect to a tick route (`Location` a path or an absolute URL).
fn redirects_to_tick_route(resp: &Response) -> bool {
    resp.status().is_redirection()
        && resp
            .headers()
            .get(header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .and_then(|l| l.parse::<axum::http::Uri>().ok())
            .is_some_and(|u| metrics::is_tick_route(u.path()))
}

/// The answer of `GET /metrics`: the text exposition, or a 401 when a token is required and
/// not presented or wrong. The gauges read the store, so rendering runs off the async threads.
async fn metrics_answer(m: Metrics, token: Option<MetricsToken>, headers: HeaderMap) -> Response {
    if let Some(token) = token {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let refused = match presented {
            None => Some(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing_token",
                "the Authorization header must read `Bearer TOKEN`, with the metrics token",
            )),
            Some(p) if !token.matches(p) => Some(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "the Authorization header does not hold the metrics token",
            )),
            Some(_) => None,
        };
        if let Some(e) = refused {
            let mut resp = e.into_response();
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return resp;
        }
    }
    match tokio::task::spawn_blocking(move || m.render()).await {
        Ok(body) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(metrics::CONTENT_TYPE),
            )],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "rendering the metrics failed");
            ApiError::internal().into_response()
        }
    }
}

/// The router of the separate metrics address (`--metrics-listen`): `GET /metrics` without a
/// token, for a scraper on an internal network, and a JSON 404 for anything else.
pub fn metrics_app(m: Metrics) -> Router {
    let mut router = Router::new()
        .route(
            metrics::METRICS_PATH,
            get(move |headers: HeaderMap| metrics_answer(m.clone(), None, headers)),
        )
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() });
    let defaults = SECURITY_HEADERS
        .into_iter()
        .chain([(header::CACHE_CONTROL, NO_STORE)]);
    for (name, value) in defaults {
        router = router.layer(SetResponseHeaderLayer::if_not_present(
            name,
            HeaderValue::from_static(value),
        ));
    }
    router
}

/// Where `GET /metrics` is served, the operator's choice.
pub enum MetricsServe {
    /// Nowhere: `/metrics` is a 404 and nothing is recorded.
    Off,
    /// On its own listener, without a token (`--metrics-listen`).
    Separate(TcpListener),
    /// On the main address behind a bearer token (`--metrics-token-file`).
    Bearer(MetricsToken),
}

impl MetricsServe {
    /// Where `/metrics` is, in words for the startup line (never the token).
    pub fn describe(&self, main: std::net::SocketAddr) -> String {
        match self {
            MetricsServe::Off => {
                "off (no /metrics; use --metrics-listen or --metrics-token-file)".into()
            }
            MetricsServe::Separate(l) => match l.local_addr() {
                Ok(a) => format!("http://{a}/metrics without a token"),
                Err(_) => "a separate address without a token".into(),
            },
            MetricsServe::Bearer(_) => format!("http://{main}/metrics behind a bearer token"),
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
    run_with(listener, svc, shutdown, MetricsServe::Off).await
}

/// [`run`] with `/metrics` served where `metrics` says. A separate metrics listener is served
/// by `axum::serve` in a task of its own, stopped with the server.
pub async fn run_with(
    listener: TcpListener,
    svc: Service,
    shutdown: impl Future<Output = ()> + Send + 'static,
    metrics: MetricsServe,
) -> std::io::Result<()> {
    let store = svc.store().clone();
    let recorder = match &metrics {
        MetricsServe::Off => None,
        _ => Some(Metrics::new(svc.clone()).map_err(std::io::Error::other)?),
    };
    let job = tokio::spawn(lifecycle_loop_observed(
        svc.clone(),
        LIFECYCLE_EVERY,
        recorder.clone(),
    ));
    let (router, side) = match (metrics, &recorder) {
        (MetricsServe::Separate(l), Some(m)) => (
            app_with(svc, Some(m), None),
            Some(tokio::spawn(
                axum::serve(l, metrics_app(m.clone())).into_future(),
            )),
        ),
        (MetricsServe::Bearer(t), Some(m)) => (app_with(svc, Some(m), Some(t)), None),
        _ => (app(svc), None),
    };
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
    if let Some(side) = side {
        side.abort();
    }
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
