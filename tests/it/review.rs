//! Findings of the review of issues 9 and 10 against the non-negotiables, each kept by a test.

use axum::http::StatusCode;
use tellestrek::metrics::Metrics;

use crate::helpers::TestApp;
use crate::pages::Browser;

/// A supporter opens the site at `/` (a bookmark, the home screen) to log a contact, and `/`
/// sends them on to `/tick`: a count or a timing of those redirects would count ticks, so they
/// are in no request metric (a sign-in, once per device, is); a leader's redirect is.
#[tokio::test]
async fn the_redirects_that_lead_a_supporter_to_the_tick_page_are_in_no_metric() {
    let mut app = TestApp::new();
    let m = Metrics::new(app.svc.clone()).unwrap();
    app.router = tellestrek::server::app_with(app.svc.clone(), Some(&m), None);
    let supporter = app.token("supporter", Some("helse-vestfjord")).await;
    let leader = app.token("leader", Some("helse-vestfjord")).await;
    let mut b = Browser::new(&app);
    let csrf = b.get("/").await.hidden("csrf");
    let signed_in = b
        .post("/sign-in", &[("csrf", &csrf), ("token", &supporter)])
        .await;
    assert_eq!(signed_in.status, StatusCode::SEE_OTHER);
    let before = String::from_utf8(m.render()).unwrap();
    for _ in 0..3 {
        let home = b.get("/").await;
        assert_eq!(home.status, StatusCode::SEE_OTHER);
        assert_eq!(home.location(), "/tick");
    }
    let text = String::from_utf8(m.render()).unwrap();
    let home_series = |t: &str| {
        t.lines()
            .filter(|l| l.contains(r#"route="/""#))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(home_series(&text), home_series(&before), "{text}");
    // A leader's `/` goes to the dashboard, and is counted as before.
    let mut l = Browser::new(&app);
    let csrf = l.get("/").await.hidden("csrf");
    l.post("/sign-in", &[("csrf", &csrf), ("token", &leader)])
        .await;
    let home = l.get("/").await;
    assert_eq!(home.location(), "/dashboard");
    let text = String::from_utf8(m.render()).unwrap();
    assert!(
        text.contains(r#"tellestrek_http_requests_total{method="GET",route="/",status="303"} 1"#),
        "{text}"
    );
}

/// A backup without raw data restored in the grace days of the period before: restore marks
/// that period purged (nothing is released from missing data). A supporter's phone that
/// still sends a tick for it must be refused: counted into a new raw database of a purged
/// period, the tick would be acknowledged but never released, and its raw data never deleted.
#[tokio::test]
async fn a_period_a_restore_marked_purged_takes_no_tick_in_its_grace_days() {
    use std::sync::Arc;
    use tellestrek::clock::FixedClock;
    use tellestrek::policy::Policy;
    use tellestrek::service::Service;
    use time::macros::{date, datetime};

    let app = TestApp::new();
    let supporter = app.token("supporter", Some("helse-vestfjord")).await;
    app.tick(&supporter, "helse-vestfjord", "akuttmottak", &[], 1)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let backup = dir.path().join("backup");
    tellestrek::backup::take(
        app.svc.store(),
        &backup,
        &tellestrek::backup::Options::default(),
    )
    .unwrap();
    let data = dir.path().join("restored");
    let done =
        tellestrek::backup::restore(&backup, &data, false, date!(2026 - 12 - 03), false).unwrap();
    let november: tellestrek::domain::Period = "2026-11".parse().unwrap();
    assert_eq!(done.marked_purged, vec![november]);

    let clock = Arc::new(FixedClock::new(datetime!(2026-12-03 10:00 UTC)));
    let (svc, _) = Service::open(&data, Policy::builtin(), clock, None).unwrap();
    let mut restored = TestApp::new();
    restored.router = tellestrek::server::app(svc);
    let mut body = crate::helpers::tick_body();
    body["period"] = serde_json::json!("2026-11");
    let (status, v) = restored
        .call("POST", "/api/v1/ticks", Some(&supporter), Some(body))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["error"]["code"], "period_not_open", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("purged"),
        "{v}"
    );
    assert!(
        !data.join("raw").join("2026-11").exists(),
        "no raw data for a purged period"
    );
    // A keyed tick for today looks for its key in the previous period (a resend after
    // midnight): for a purged period it must not make a period secret there either.
    let req = axum::http::Request::builder()
        .method("POST")
        .uri("/api/v1/ticks")
        .header("authorization", format!("Bearer {supporter}"))
        .header("content-type", "application/json")
        .header("idempotency-key", "after-restore-1")
        .body(axum::body::Body::from(
            crate::helpers::tick_body().to_string(),
        ))
        .unwrap();
    let resp = tower::ServiceExt::oneshot(restored.router.clone(), req)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert!(
        !data.join("raw").join("2026-11").exists(),
        "the replay lookup made no raw data for the purged period"
    );
}

/// A tick sent to a path just beside the tick route (a proxy that adds a slash, a retired
/// path of an old app version) matches no route; counted as `unmatched`, each such attempt
/// would still count a contact. Other unknown paths are counted as before.
#[tokio::test]
async fn a_tick_to_an_unknown_path_below_the_tick_routes_is_in_no_metric() {
    let mut app = TestApp::new();
    let m = Metrics::new(app.svc.clone()).unwrap();
    app.router = tellestrek::server::app_with(app.svc.clone(), Some(&m), None);
    let supporter = app.token("supporter", Some("helse-vestfjord")).await;
    for path in [
        "/api/v1/ticks/",
        "/api/v1/ticks/queue",
        "/tick/old",
        "/tick/",
    ] {
        let (status, _) = app
            .call(
                "POST",
                path,
                Some(&supporter),
                Some(crate::helpers::tick_body()),
            )
            .await;
        assert!(status.is_client_error(), "{path}: {status}");
    }
    let text = String::from_utf8(m.render()).unwrap();
    assert!(!text.contains("unmatched"), "{text}");
    app.call("POST", "/api/v1/tickets", None, None).await;
    let text = String::from_utf8(m.render()).unwrap();
    assert!(
        text.contains(
            r#"tellestrek_http_requests_total{method="POST",route="unmatched",status="404"} 1"#
        ),
        "{text}"
    );
}
