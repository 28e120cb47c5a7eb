//! Benchmark of `GET /api/v1/dashboard` and the `/dashboard` page for the largest organisation at five years of released
//! history, through the real router (`tower::ServiceExt::oneshot`), as a leader of that
//! organisation would read it.
//!
//! Setup (untimed): the default policy with its organisations replaced by 20 organisations of
//! 40 units each (the largest has 40 units: larger than any in the default policy), a data
//! directory whose releases cover 2026–2030 for every organisation (every table of the default
//! plan: 60 months, 20 quarters and 5 years each, drawn with `release::draw_batch` and OpenDP
//! noise from a few raw cells per unit and month, committed with `Store::commit_releases`),
//! and the clock at 20 January 2031.
//!
//! * `dashboard/api_2030`: the year 2030 asked for by name.
//! * `dashboard/api_default_year`: no year: the service looks up the latest released one.
//! * `dashboard/service_2030`: `Service::dashboard` alone, without HTTP and JSON.
//! * `dashboard/page_2030`, `dashboard/page_default_year`: the dashboard page (`/dashboard`)
//!   for the same leader signed in on the web: session lookup, the same service call, the
//!   charts drawn by plotters and the HTML rendered.
//!
//! Run with `cargo bench --bench dashboard`; figures are in benches/README.md.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::BodyExt;
use tellestrek::clock::FixedClock;
use tellestrek::domain::{CellKey, Granularity, Period, Release, TagSet};
use tellestrek::dp::OpenDpNoise;
use tellestrek::policy::{DEFAULT_POLICY, Policy};
use tellestrek::release::{BatchInput, base_periods_in, draw_batch};
use tellestrek::server::app;
use tellestrek::service::Service;
use time::macros::datetime;
use tower::ServiceExt;

mod common;

const ORGS: usize = 20;
const UNITS: usize = 40;
const ADMIN: &str = "bench-admin-token-0123456789";

/// The default policy with its organisations replaced by 20 of 40 units each.
fn policy() -> Policy {
    let text = common::with_orgs(DEFAULT_POLICY, ORGS, UNITS);
    Policy::from_str("bench.toml", &text).expect("bench policy is valid")
}

/// A few raw cells per unit of `org` in `month`, with varied tags.
fn raw(policy: &Policy, org: &str, month: Period, seed: usize) -> Vec<(CellKey, u64)> {
    let o = policy.org(org).expect("org exists");
    let mut out = Vec::new();
    for (u, unit) in o.units.iter().enumerate() {
        for k in 0..2 {
            let tags: TagSet = policy
                .dimensions
                .iter()
                .enumerate()
                .map(|(d, dim)| {
                    let i = (seed + u + k + d) % dim.values.len();
                    (dim.id.clone(), dim.values[i].id.clone())
                })
                .collect();
            let key = CellKey {
                period: month,
                org: org.to_string(),
                unit: unit.id.clone(),
                tags,
            };
            out.push((key, ((seed + u + k) % 3) as u64));
        }
    }
    out
}

/// Draws and commits every release of 2026–2030 for every organisation.
fn fill(svc: &Service, policy: &Policy) {
    for org in &policy.orgs {
        for year in 2026..=2030 {
            let y = Period::Year { year };
            let months = base_periods_in(y, Granularity::Month);
            let all: Vec<(CellKey, u64)> = months
                .iter()
                .enumerate()
                .flat_map(|(i, &m)| raw(policy, &org.id, m, i + year as usize))
                .collect();
            let supporters: Vec<u32> = (0..30).map(|i| (i % 6) as u32).collect();
            let draw = |period: Period, covers: Vec<Period>, cadence: Granularity| {
                let raw: Vec<(CellKey, u64)> = all
                    .iter()
                    .filter(|(k, _)| covers.contains(&k.period))
                    .cloned()
                    .collect();
                let input = BatchInput {
                    policy,
                    org,
                    period,
                    covers,
                    marginals: policy
                        .marginals
                        .iter()
                        .filter(|m| m.cadence == cadence)
                        .collect(),
                    raw: &raw,
                    supporters: &supporters,
                    finer: &[],
                };
                let batch = draw_batch(&input, &OpenDpNoise).expect("draw");
                svc.store().commit_releases(&batch).expect("commit");
            };
            for &m in &months {
                draw(m, vec![m], Granularity::Month);
            }
            for quarter in 1..=4 {
                let q = Period::Quarter { year, quarter };
                draw(
                    q,
                    base_periods_in(q, Granularity::Month),
                    Granularity::Quarter,
                );
            }
            draw(y, months.clone(), Granularity::Year);
        }
    }
}

fn bench(c: &mut Criterion) {
    let policy = policy();
    let dir = tempfile::tempdir().expect("temp dir");
    let clock = Arc::new(FixedClock::new(datetime!(2031-01-20 10:00 UTC)));
    let (svc, _) =
        Service::open(dir.path(), policy.clone(), clock, Some(ADMIN)).expect("open service");
    fill(&svc, &policy);
    let releases: Vec<Release> = svc.store().releases("").expect("releases");
    eprintln!(
        "{} releases, {} cells in the data directory",
        releases.len(),
        releases.iter().map(|r| r.cells.len()).sum::<usize>()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let router = app(svc.clone());
    let leader = rt.block_on(async {
        let req = Request::post("/api/v1/tokens")
            .header("authorization", format!("Bearer {ADMIN}"))
            .header("content-type", "application/json")
            .body(Body::from(r#"{"role":"leader","org":"org-00"}"#))
            .expect("request");
        let resp = router.clone().oneshot(req).await.expect("token");
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        v["token"].as_str().expect("token").to_string()
    });
    let get = |path: &'static str| {
        let router = router.clone();
        let leader = leader.clone();
        async move {
            let req = Request::get(path)
                .header("authorization", format!("Bearer {leader}"))
                .body(Body::empty())
                .expect("request");
            let resp = router.oneshot(req).await.expect("response");
            assert!(resp.status().is_success(), "{}", resp.status());
            resp.into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes()
                .len()
        }
    };
    let size = rt.block_on(get("/api/v1/dashboard?year=2030"));
    eprintln!("dashboard answer: {size} bytes");

    let mut g = c.benchmark_group("dashboard");
    g.sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    g.bench_function("api_2030", |b| {
        b.to_async(&rt).iter(|| get("/api/v1/dashboard?year=2030"))
    });
    g.bench_function("api_default_year", |b| {
        b.to_async(&rt).iter(|| get("/api/v1/dashboard"))
    });
    // The page: the same leader signed in on the web (session cookie), as a browser would.
    let cookie = rt.block_on(sign_in(&router, &leader));
    let page = |path: &'static str| {
        let router = router.clone();
        let cookie = cookie.clone();
        async move {
            let req = Request::get(path)
                .header("cookie", cookie)
                .body(Body::empty())
                .expect("request");
            let resp = router.oneshot(req).await.expect("response");
            assert!(resp.status().is_success(), "{}", resp.status());
            resp.into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes()
                .len()
        }
    };
    let size = rt.block_on(page("/dashboard?year=2030"));
    eprintln!("dashboard page: {size} bytes");
    g.bench_function("page_2030", |b| {
        b.to_async(&rt).iter(|| page("/dashboard?year=2030"))
    });
    g.bench_function("page_default_year", |b| {
        b.to_async(&rt).iter(|| page("/dashboard"))
    });
    let who = svc
        .authenticate(Some(&leader))
        .expect("the leader token is valid");
    g.bench_function("service_2030", |b| {
        b.iter(|| svc.dashboard(&who, None, Some(2030)).expect("dashboard"))
    });
    g.finish();
}

/// Signs in on the sign-in page with `token`; returns the session's `Cookie` header value.
async fn sign_in(router: &axum::Router, token: &str) -> String {
    let cookie_of = |resp: &axum::response::Response, name: &str| -> String {
        resp.headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with(&format!("{name}=")))
            .and_then(|v| v.split(';').next())
            .expect("cookie set")
            .to_string()
    };
    let resp = router
        .clone()
        .oneshot(Request::get("/").body(Body::empty()).expect("request"))
        .await
        .expect("sign-in page");
    let form = cookie_of(&resp, "tellestrek_form");
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let body = String::from_utf8_lossy(&body);
    let marker = "name=\"csrf\" value=\"";
    let start = body.find(marker).expect("csrf field") + marker.len();
    let csrf = &body[start..start + body[start..].find('"').expect("csrf end")];
    let req = Request::post("/sign-in")
        .header("cookie", form)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from(format!("csrf={csrf}&token={token}")))
        .expect("request");
    let resp = router.clone().oneshot(req).await.expect("sign-in");
    cookie_of(&resp, "tellestrek_session")
}

criterion_group!(benches, bench);
criterion_main!(benches);
