//! Numbers a reader can trust at a glance (issue 8): what is left of the privacy budget, and
//! who reads the supporter-load releases.

use axum::http::StatusCode;
use serde_json::Value;
use time::macros::datetime;

use crate::helpers::{ADMIN, TestApp};

/// Ticks in November and December 2026 in both organisations, then the clock at 10 January
/// 2027 and the lifecycle run: the months, Q4 and the year 2026 are released.
async fn released_history() -> TestApp {
    let app = TestApp::new();
    let a = app.token("supporter", Some("helse-vestfjord")).await;
    let k = app.token("supporter", Some("vikafjord-kommune")).await;
    app.tick(&a, "helse-vestfjord", "akuttmottak", &[], 5).await;
    app.tick(&k, "vikafjord-kommune", "sykehjem", &[], 4).await;
    app.at(datetime!(2026-12-15 09:00 UTC));
    app.tick(&a, "helse-vestfjord", "intensiv", &[], 6).await;
    app.at(datetime!(2027-01-10 12:00 UTC));
    let report = app.svc.run_lifecycle().await.unwrap();
    assert!(report.refused.is_empty(), "{:?}", report.refused);
    app
}

fn kinds(v: &Value) -> Vec<String> {
    v["releases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn load_releases_are_for_coordinators_admins_and_researchers_not_leaders() {
    let app = released_history().await;
    let coordinator = app.token("coordinator", Some("helse-vestfjord")).await;
    let leader = app.token("leader", Some("helse-vestfjord")).await;
    let researcher = app.token("researcher", None).await;
    for (who, token) in [
        ("coordinator", coordinator.as_str()),
        ("researcher", researcher.as_str()),
        ("admin", ADMIN),
    ] {
        for q in ["", "?marginal=load"] {
            let (s, v) = app
                .call("GET", &format!("/api/v1/releases{q}"), Some(token), None)
                .await;
            assert_eq!(s, StatusCode::OK, "{who}{q}: {v}");
            assert!(
                kinds(&v).iter().any(|k| k == "supporter_load"),
                "{who}{q} sees load: {v}"
            );
        }
    }
    // The leader's listing (JSON and CSV) has no load release, and the rest is all there.
    let (s, v) = app
        .call("GET", "/api/v1/releases", Some(&leader), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let k = kinds(&v);
    assert!(!k.is_empty() && k.iter().all(|k| k == "contacts"), "{k:?}");
    let (_, csv) = app
        .call("GET", "/api/v1/releases?format=csv", Some(&leader), None)
        .await;
    let csv = csv.as_str().unwrap();
    assert!(csv.contains("contacts") && !csv.contains("supporter_load"));
    // Asking for it by name is refused with a sentence that says whose it is.
    let (s, v) = app
        .call("GET", "/api/v1/releases?marginal=load", Some(&leader), None)
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("wrong_role")),
        "{v}"
    );
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("coordinator") && message.contains("leader"),
        "{message}"
    );
}

#[tokio::test]
async fn the_budget_says_what_is_left_per_period_and_per_rolling_year() {
    let app = released_history().await;
    let researcher = app.token("researcher", None).await;
    let (s, b) = app
        .call("GET", "/api/v1/budget", Some(&researcher), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let budget = b["budget"].as_f64().unwrap();
    assert_eq!(budget, 2.0);
    let entries = b["entries"].as_array().unwrap();
    for org in b["orgs"].as_array().unwrap() {
        let id = org["org"].as_str().unwrap();
        let periods = org["periods"].as_array().unwrap();
        assert_eq!(periods.len(), 2, "{org}");
        for p in periods {
            let (spent, left) = (
                p["spent"].as_f64().unwrap(),
                p["remaining"].as_f64().unwrap(),
            );
            assert!(spent > 1.8 && spent <= budget, "{p}");
            assert!(left >= 0.0 && (spent + left - budget).abs() < 1e-9, "{p}");
        }
        // Every release of this history covers November and December 2026, inside one
        // 365-day window: the most spent in a year is all that was spent.
        let all: f64 = entries
            .iter()
            .filter(|e| e["org"] == id)
            .map(|e| e["spend"].as_f64().unwrap())
            .sum();
        let ry = &org["rolling_year"];
        let (cap, most, left) = (
            ry["cap"].as_f64().unwrap(),
            ry["most_spent"].as_f64().unwrap(),
            ry["remaining"].as_f64().unwrap(),
        );
        assert_eq!(cap, 14.0);
        assert!((most - all).abs() < 1e-9 && most > 0.0, "{ry} vs {all}");
        assert!((most + left - cap).abs() < 1e-9, "{ry}");
    }
}
