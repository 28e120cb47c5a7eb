//! Prometheus metrics that leak nothing: the only module that uses the `prometheus` crate.
//!
//! Everything here is either a count of operational events that are not ticks (requests to
//! other routes, runs of the release job) or a gauge computed at scrape time from the service
//! layer, from the same numbers the API serves (released, noisy, post-processed estimates;
//! the ledger; period states; readiness). Nothing counts or times ticks:
//!
//! - the tick routes ([`is_tick_route`]) are left out of every request counter and histogram,
//!   since their counts would be the raw count and their timing would say when a contact was
//!   logged (docs/design.md, "Durability and side channels");
//! - the store size is that of released data only ([`STORE_RELEASED_BYTES`]), never of the raw
//!   cells, which grow with every tick;
//! - the lifecycle job's duration is recorded per run (at start and every 10 minutes), not per
//!   tick; it follows the tables and cells of the policy's domain (the raw cells it reads are
//!   at most one per combination of tags, never one per tick);
//! - there are no process metrics (start time, memory, CPU): they say nothing an operator
//!   needs from this service that the host does not, and differ between two runs.
//!
//! Labels are bounded: route templates (axum's matched path, never the raw path; unknown
//! paths are one label, `unmatched`), methods, status codes, period states, organisation ids
//! and table ids from the policy. No label ever holds text a person typed.
//!
//! The registry is this service's own ([`Registry::new`]), never the crate's default one, so a
//! dependency that registers metrics there cannot add a series to `/metrics`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::domain::Role;
use crate::service::{LifecycleReport, Principal, Service, ServiceError};
use crate::store::ReleaseScan;

/// The `Content-Type` of the text exposition format: `text/plain; version=0.0.4`.
pub const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

/// Where the metrics are served: `GET /metrics`.
pub const METRICS_PATH: &str = "/metrics";

/// The label every request to a path the router does not know gets, so a scanner trying
/// random paths cannot create series.
pub const UNMATCHED: &str = "unmatched";

/// Name of the gauge of released data's size, in bytes.
pub const STORE_RELEASED_BYTES: &str = "tellestrek_store_released_bytes";

/// Upper bounds of the request latency buckets, in seconds: from 1 ms (a cached read) to
/// 60 s (an export of years of releases). No bound is a small integer a count could be
/// mistaken for in a leak scan (no `10`).
const REQUEST_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 60.0,
];

/// Upper bounds of the release-job duration buckets, in seconds: from 10 ms (nothing due) to
/// 5 minutes (a national policy's first release of a year).
const JOB_BUCKETS: [f64; 9] = [0.01, 0.05, 0.25, 1.0, 2.5, 5.0, 30.0, 120.0, 300.0];

/// Whether a route template is one whose requests would count or time ticks, and so is left
/// out of every request metric: the API's `POST /api/v1/ticks` (the pages' offline queue posts
/// there too), the tick page `/tick` (its form posts there, and each tick reloads it), the
/// correction `/tick/edit` and the confirmation `/tick/done` (one redirect per tick), and any
/// route added below these prefixes later.
pub fn is_tick_route(route: &str) -> bool {
    route == "/tick"
        || route.starts_with("/tick/")
        || route == "/api/v1/ticks"
        || route.starts_with("/api/v1/ticks/")
}

/// Errors of the metrics layer.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// A metric could not be defined or registered (a programming error: names are fixed).
    #[error("defining the metrics: {0}")]
    Define(#[from] prometheus::Error),
    /// The token file for `/metrics` could not be read or is too short.
    #[error("the metrics token file {path}: {detail}")]
    TokenFile {
        /// The file given.
        path: String,
        /// Why it cannot be used.
        detail: String,
    },
}

/// The bearer token that guards `/metrics` on the main address, read from a file so it is
/// never on a command line (where `ps` shows it) nor in the log.
#[derive(Clone)]
pub struct MetricsToken(Arc<str>);

impl std::fmt::Debug for MetricsToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetricsToken(..)")
    }
}

impl MetricsToken {
    /// Reads the token from `path`: its first line, trimmed, at least
    /// [`crate::auth::MIN_CHOSEN_TOKEN_LEN`] (20) characters, so it cannot be guessed.
    pub fn from_file(path: &std::path::Path) -> Result<MetricsToken, MetricsError> {
        let bad = |detail: String| MetricsError::TokenFile {
            path: path.display().to_string(),
            detail,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let token = text.lines().next().unwrap_or_default().trim();
        if token.chars().count() < crate::auth::MIN_CHOSEN_TOKEN_LEN {
            return Err(bad(format!(
                "the token must be at least {} characters (e.g. head -c 32 /dev/urandom | base64)",
                crate::auth::MIN_CHOSEN_TOKEN_LEN
            )));
        }
        Ok(MetricsToken(Arc::from(token)))
    }

    /// Whether `presented` (the text after `Bearer `) is this token, compared without
    /// revealing through timing how much of it matched.
    pub fn matches(&self, presented: &str) -> bool {
        crate::auth::same_secret(presented.as_bytes(), self.0.as_bytes())
    }
}

/// The service's metrics: event counters fed by the server, and gauges read from the service
/// at each scrape. Cheap to clone (shared).
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    requests: IntCounterVec,
    request_seconds: HistogramVec,
    job_runs: IntCounterVec,
    job_seconds: Histogram,
    job_drawn: IntCounter,
    job_refused: IntCounter,
}

impl Metrics {
    /// Defines every metric in a registry of its own, with the gauges read from `svc`.
    pub fn new(svc: Service) -> Result<Metrics, MetricsError> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "tellestrek_http_requests_total",
                "HTTP requests answered, by method, route template and status code; the tick routes are left out",
            ),
            &["method", "route", "status"],
        )?;
        let request_seconds = HistogramVec::new(
            HistogramOpts::new(
                "tellestrek_http_request_duration_seconds",
                "Time to answer an HTTP request, by method and route template; the tick routes are left out",
            )
            .buckets(REQUEST_BUCKETS.to_vec()),
            &["method", "route"],
        )?;
        let job_runs = IntCounterVec::new(
            Opts::new(
                "tellestrek_release_job_runs_total",
                "Runs of the lifecycle job (close, release, purge), by outcome (ok, failed)",
            ),
            &["outcome"],
        )?;
        let job_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "tellestrek_release_job_duration_seconds",
                "Time one run of the lifecycle job took",
            )
            .buckets(JOB_BUCKETS.to_vec()),
        )?;
        let job_drawn = IntCounter::new(
            "tellestrek_release_job_releases_drawn_total",
            "Releases the lifecycle job drew (and wrote) since the start",
        )?;
        let job_refused = IntCounter::new(
            "tellestrek_release_job_batches_refused_total",
            "Release batches the lifecycle job refused since the start (over the privacy budget)",
        )?;
        // Both outcomes exist from the start, so a dashboard's rate() sees a zero, not nothing.
        for outcome in ["ok", "failed"] {
            job_runs.with_label_values(&[outcome]);
        }
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(request_seconds.clone()))?;
        registry.register(Box::new(job_runs.clone()))?;
        registry.register(Box::new(job_seconds.clone()))?;
        registry.register(Box::new(job_drawn.clone()))?;
        registry.register(Box::new(job_refused.clone()))?;
        registry.register(Box::new(ServiceGauges::new(svc)?))?;
        Ok(Metrics {
            inner: Arc::new(Inner {
                registry,
                requests,
                request_seconds,
                job_runs,
                job_seconds,
                job_drawn,
                job_refused,
            }),
        })
    }

    /// Records one answered request: `route` is the matched route template (`None` for a path
    /// the router does not know). Requests to tick routes are ignored here, whoever calls, and
    /// so are scrapes of `/metrics` (so a scrape does not change the next one).
    pub fn observe_request(&self, method: &str, route: Option<&str>, status: u16, took: Duration) {
        let route = route.unwrap_or(UNMATCHED);
        if is_tick_route(route) || route == METRICS_PATH {
            return;
        }
        let method = match method {
            "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS" => method,
            _ => "other",
        };
        let status = status.to_string();
        self.inner
            .requests
            .with_label_values(&[method, route, &status])
            .inc();
        self.inner
            .request_seconds
            .with_label_values(&[method, route])
            .observe(took.as_secs_f64());
    }

    /// Records one run of the lifecycle job and how long it took.
    pub fn observe_job(&self, outcome: &Result<LifecycleReport, ServiceError>, took: Duration) {
        self.inner.job_seconds.observe(took.as_secs_f64());
        match outcome {
            Ok(report) => {
                self.inner.job_runs.with_label_values(&["ok"]).inc();
                self.inner.job_drawn.inc_by(report.drawn.len() as u64);
                self.inner.job_refused.inc_by(report.refused.len() as u64);
            }
            Err(_) => self.inner.job_runs.with_label_values(&["failed"]).inc(),
        }
    }

    /// The text exposition of every metric. Reads the store (the gauges): call it off the
    /// async threads.
    pub fn render(&self) -> Vec<u8> {
        let families = self.inner.registry.gather();
        let mut out = Vec::new();
        // Encoding into a Vec fails only on a malformed family, which fixed names rule out;
        // a partial answer is then still better than none.
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            tracing::warn!(error = %e, "encoding the metrics failed");
        }
        out
    }
}

/// The gauges computed at scrape time from the service layer, never by counting events.
struct ServiceGauges {
    svc: Service,
    ready: IntGauge,
    periods: IntGaugeVec,
    released_bytes: IntGauge,
    releases: IntGaugeVec,
    budget: GaugeVec,
    spent: GaugeVec,
    remaining: GaugeVec,
    latest_total: IntGaugeVec,
    build: IntGaugeVec,
    /// Size in bytes of each stored release, by id: releases never change, so each is read
    /// once, and a scrape walks only the index.
    sizes: Mutex<HashMap<String, u64>>,
    /// Held through a scrape's refresh and read.
    scrape: Mutex<()>,
}

impl ServiceGauges {
    fn new(svc: Service) -> Result<ServiceGauges, prometheus::Error> {
        Ok(ServiceGauges {
            svc,
            ready: IntGauge::new(
                "tellestrek_ready",
                "1 when the data directory accepts writes (as /readyz answers 200), else 0",
            )?,
            periods: IntGaugeVec::new(
                Opts::new(
                    "tellestrek_periods",
                    "Base periods since the epoch, by state (open, closed, released, purged)",
                ),
                &["state"],
            )?,
            released_bytes: IntGauge::new(
                STORE_RELEASED_BYTES,
                "Bytes of released data (the stored releases); the raw cells are never measured, since their size grows with every tick",
            )?,
            releases: IntGaugeVec::new(
                Opts::new("tellestrek_releases", "Releases stored, by organisation"),
                &["org"],
            )?,
            budget: GaugeVec::new(
                Opts::new(
                    "tellestrek_privacy_budget",
                    "The policy's privacy budget per base period, and its rolling-year cap, in the policy's measure (epsilon or rho)",
                ),
                &["measure", "limit"],
            )?,
            spent: GaugeVec::new(
                Opts::new(
                    "tellestrek_privacy_spent",
                    "Privacy loss spent by an organisation's releases, from the ledger (as GET /api/v1/budget): the most on any base period, and the most in any 365 days",
                ),
                &["org", "measure", "limit"],
            )?,
            remaining: GaugeVec::new(
                Opts::new(
                    "tellestrek_privacy_remaining",
                    "Privacy budget an organisation has left (as GET /api/v1/budget): the least on any base period, and under the rolling-year cap",
                ),
                &["org", "measure", "limit"],
            )?,
            latest_total: IntGaugeVec::new(
                Opts::new(
                    "tellestrek_release_latest_total",
                    "The newest released (noisy, post-processed) total of contacts of an organisation, by table of the policy; absent while no release exists or when it is below the display threshold",
                ),
                &["org", "table", "cadence"],
            )?,
            build: IntGaugeVec::new(
                Opts::new("tellestrek_build_info", "Always 1; the version as a label"),
                &["version"],
            )?,
            sizes: Mutex::new(HashMap::new()),
            scrape: Mutex::new(()),
        })
    }

    /// The gauges this scrape shows; a store error leaves the affected gauges out (and says
    /// so in the log at debug), never shows a half-computed number.
    fn refresh(&self) {
        use crate::store::Writable;
        self.ready.set(i64::from(matches!(
            self.svc.store().writable(),
            Writable::Yes
        )));
        self.build
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        if let Err(e) = self.refresh_periods() {
            tracing::debug!(error = %e, "metrics: period states not read");
        }
        if let Err(e) = self.refresh_releases() {
            tracing::debug!(error = %e, "metrics: releases not read");
        }
        if let Err(e) = self.refresh_budget() {
            tracing::debug!(error = %e, "metrics: the ledger not read");
        }
    }

    fn refresh_periods(&self) -> Result<(), ServiceError> {
        self.periods.reset();
        for s in ["open", "closed", "released", "purged"] {
            self.periods.with_label_values(&[s]).set(0);
        }
        for p in self.svc.base_periods()? {
            let state = self.svc.period_state(p)?;
            self.periods.with_label_values(&[state.as_str()]).inc();
        }
        Ok(())
    }

    /// The released data's size, the releases per organisation, and the newest total of each
    /// table, all from the release index and the releases the API serves.
    fn refresh_releases(&self) -> Result<(), ServiceError> {
        self.releases.reset();
        self.latest_total.reset();
        let store = self.svc.store();
        let mut bytes = 0u64;
        {
            let mut sizes = self.sizes.lock().unwrap_or_else(|p| p.into_inner());
            for entry in store.release_index(&ReleaseScan::default(), None)? {
                let id = entry?.id;
                let size = match sizes.get(&id) {
                    Some(s) => *s,
                    None => {
                        let s = store.release_bytes(&id)?.map_or(0, |b| b.len() as u64);
                        sizes.insert(id, s);
                        s
                    }
                };
                bytes += size;
            }
        }
        self.released_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        for org in &self.svc.current_policy().orgs {
            let scan = ReleaseScan {
                org: Some(&org.id),
                starts_from: None,
                starts_before: None,
            };
            // The index of one organisation is ordered by period start: the last id of each
            // table is its newest release.
            let mut newest: HashMap<String, String> = HashMap::new();
            let mut count = 0i64;
            for entry in store.release_index(&scan, None)? {
                let id = entry?.id;
                count += 1;
                if let Some(table) = id.splitn(3, '/').nth(2) {
                    newest.insert(table.to_string(), id.clone());
                }
            }
            self.releases.with_label_values(&[&org.id]).set(count);
            for id in newest.values() {
                let r = self.svc.release(id)?;
                if r.kind != "contacts" || r.total_estimate < u64::from(r.suppress_below) {
                    continue;
                }
                self.latest_total
                    .with_label_values(&[&r.org, &r.marginal, r.period.granularity().as_str()])
                    .set(i64::try_from(r.total_estimate).unwrap_or(i64::MAX));
            }
        }
        Ok(())
    }

    /// ε (or ρ) spent and left per organisation, from the budget the API serves an admin.
    fn refresh_budget(&self) -> Result<(), ServiceError> {
        self.budget.reset();
        self.spent.reset();
        self.remaining.reset();
        // The service's own reading, with an admin's scope (every organisation); no token is
        // involved and nothing is logged for it.
        let all = Principal {
            token_id: "metrics".into(),
            role: Role::Admin,
            org: None,
        };
        let b = self.svc.budget(&all)?;
        let measure = b["measure"].as_str().unwrap_or("epsilon");
        let per_period = b["budget"].as_f64().unwrap_or(0.0);
        self.budget
            .with_label_values(&[measure, "period"])
            .set(per_period);
        for o in b["orgs"].as_array().into_iter().flatten() {
            let Some(org) = o["org"].as_str() else {
                continue;
            };
            let year = &o["rolling_year"];
            self.budget
                .with_label_values(&[measure, "rolling_year"])
                .set(year["cap"].as_f64().unwrap_or(0.0));
            self.spent
                .with_label_values(&[org, measure, "rolling_year"])
                .set(year["most_spent"].as_f64().unwrap_or(0.0));
            self.remaining
                .with_label_values(&[org, measure, "rolling_year"])
                .set(year["remaining"].as_f64().unwrap_or(0.0));
            let periods = o["periods"].as_array();
            let most = periods
                .into_iter()
                .flatten()
                .filter_map(|p| p["spent"].as_f64())
                .fold(0.0, f64::max);
            let least = periods
                .into_iter()
                .flatten()
                .filter_map(|p| p["remaining"].as_f64())
                .fold(per_period, f64::min);
            self.spent
                .with_label_values(&[org, measure, "period"])
                .set(most);
            self.remaining
                .with_label_values(&[org, measure, "period"])
                .set(least);
        }
        Ok(())
    }

    fn vecs(&self) -> [&dyn Collector; 9] {
        [
            &self.ready,
            &self.periods,
            &self.released_bytes,
            &self.releases,
            &self.budget,
            &self.spent,
            &self.remaining,
            &self.latest_total,
            &self.build,
        ]
    }
}

impl Collector for ServiceGauges {
    fn desc(&self) -> Vec<&Desc> {
        let mut out = Vec::new();
        for c in self.vecs() {
            out.extend(c.desc());
        }
        out
    }

    fn collect(&self) -> Vec<MetricFamily> {
        // One scrape at a time: each resets and refills the gauges it then reads.
        let _one = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        self.refresh();
        self.vecs().iter().flat_map(|c| c.collect()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tick_route_is_left_out() {
        for r in ["/tick", "/tick/edit", "/tick/done", "/api/v1/ticks"] {
            assert!(is_tick_route(r), "{r}");
        }
        for r in ["/", "/api/v1/tokens", "/dashboard", "/ticker", UNMATCHED] {
            assert!(!is_tick_route(r), "{r}");
        }
    }
}
