//! Releases (issue 3): exact aggregation with zero noise, immutability and idempotence, the
//! ledger and its budget, purge, signed exports, and who may read what.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use serde_json::{Value, json};
use tellestrek::domain::Release;
use tellestrek::policy::Policy;
use time::macros::datetime;

use crate::helpers::{ADMIN, TestApp};

/// 10 January 2027: November and December 2026 are closed, and so are Q4 and the year.
const AFTER_YEAR: time::OffsetDateTime = datetime!(2027-01-10 12:00 UTC);

fn by_id(releases: &[Release]) -> BTreeMap<String, Release> {
    releases.iter().map(|r| (r.id.clone(), r.clone())).collect()
}

fn estimate(r: &Release, axis: &str, value: &str) -> u64 {
    r.cells
        .iter()
        .find(|c| c.key.get(axis).map(String::as_str) == Some(value))
        .unwrap_or_else(|| panic!("{} has no cell {axis}={value}", r.id))
        .estimate
}

/// A load release's (active, at or above threshold) estimates.
fn load_pair(r: &Release) -> (u64, u64) {
    (
        estimate(r, "supporters", "active"),
        estimate(r, "supporters", "at_or_above_threshold"),
    )
}

/// Ticks in November and December 2026 in both organisations; returns the app at AFTER_YEAR.
async fn history(app: &TestApp) {
    let a = app.token("supporter", Some("helse-vestfjord")).await;
    let b = app.token("supporter", Some("helse-vestfjord")).await;
    let k = app.token("supporter", Some("vikafjord-kommune")).await;
    app.tick(&a, "helse-vestfjord", "akuttmottak", &[], 3).await;
    app.tick(
        &a,
        "helse-vestfjord",
        "intensiv",
        &[("utlosende_arsak", "vold-trusler")],
        2,
    )
    .await;
    app.tick(
        &b,
        "helse-vestfjord",
        "intensiv",
        &[("yrkesgruppe", "psykolog")],
        1,
    )
    .await;
    app.tick(
        &k,
        "vikafjord-kommune",
        "sykehjem",
        &[("kanal", "telefon")],
        4,
    )
    .await;
    app.at(datetime!(2026-12-15 09:00 UTC));
    app.tick(&a, "helse-vestfjord", "akuttmottak", &[], 1).await;
    app.tick(&k, "vikafjord-kommune", "legevakt", &[], 2).await;
    app.at(AFTER_YEAR);
}

#[tokio::test]
async fn with_zero_noise_releases_count_exactly_over_the_full_domain() {
    let app = TestApp::zero_noise();
    history(&app).await;
    let report = app.svc.run_lifecycle().await.unwrap();
    assert!(report.refused.is_empty(), "{:?}", report.refused);
    let all = by_id(&app.svc.store().releases("").unwrap());
    let policy = Policy::builtin();
    // Months, quarter and year marginals for both organisations, nothing else.
    let mut expected = Vec::new();
    for org in ["helse-vestfjord", "vikafjord-kommune"] {
        for p in ["2026-11", "2026-12"] {
            expected.push(format!("{p}/{org}/total"));
        }
        expected.extend(["unit", "load"].map(|m| format!("2026-Q4/{org}/{m}")));
        expected.extend(
            [
                "yrkesgruppe",
                "utlosende_arsak",
                "initiering",
                "kanal",
                "arsak_initiering",
                "varighet",
                "oppfolging",
            ]
            .map(|m| format!("2026/{org}/{m}")),
        );
    }
    let mut got: Vec<&String> = all.keys().collect();
    got.sort();
    expected.sort();
    assert_eq!(got, expected.iter().collect::<Vec<_>>());

    let r = &all["2026-11/helse-vestfjord/total"];
    assert_eq!(
        (
            r.cells.len(),
            r.cells[0].noisy,
            r.cells[0].estimate,
            r.total_estimate
        ),
        (1, 6, 6, 6)
    );
    assert_eq!(all["2026-12/helse-vestfjord/total"].cells[0].estimate, 1);
    let unit = &all["2026-Q4/helse-vestfjord/unit"];
    assert_eq!(
        unit.covers
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>(),
        ["2026-11", "2026-12"]
    );
    // Every unit of the policy is a cell, those with no contacts too.
    let ids: Vec<&str> = unit.cells.iter().map(|c| c.key["unit"].as_str()).collect();
    assert_eq!(
        ids,
        policy
            .org("helse-vestfjord")
            .unwrap()
            .units
            .iter()
            .map(|u| u.id.as_str())
            .collect::<Vec<_>>()
    );
    assert_eq!(estimate(unit, "unit", "akuttmottak"), 4);
    assert_eq!(estimate(unit, "unit", "intensiv"), 3);
    assert_eq!(estimate(unit, "unit", "laboratorium"), 0);
    let kommune = &all["2026-Q4/vikafjord-kommune/unit"];
    assert_eq!(kommune.cells.len(), 4);
    assert_eq!(estimate(kommune, "unit", "helsestasjon"), 0);
    assert_eq!(estimate(kommune, "unit", "legevakt"), 2);
    let trigger = &all["2026/helse-vestfjord/utlosende_arsak"];
    assert_eq!(trigger.cells.len(), 9);
    assert_eq!(estimate(trigger, "utlosende_arsak", "vold-trusler"), 2);
    assert!(
        trigger.sensitive_scale.unwrap() > trigger.scale,
        "sensitive values get more noise"
    );
    let prof = &all["2026/helse-vestfjord/yrkesgruppe"];
    // The first value (lege) is every other tick's default.
    assert_eq!(estimate(prof, "yrkesgruppe", "psykolog"), 1);
    assert_eq!(estimate(prof, "yrkesgruppe", "lege"), 6);
    // Supporter load: supporter-months active, and at or above 4 contacts in the month.
    let load = &all["2026-Q4/helse-vestfjord/load"];
    assert_eq!(load_pair(load), (3, 1));

    for r in all.values() {
        if r.kind == "contacts" {
            let sum: u64 = r.cells.iter().map(|c| c.estimate).sum();
            assert_eq!(
                sum, r.total_estimate,
                "{} does not sum to its period total",
                r.id
            );
        }
        for c in &r.cells {
            assert!(c.noisy_ci[0] <= c.noisy && c.noisy <= c.noisy_ci[1]);
            let est = c.estimate as i64;
            assert!(0 <= c.ci[0] && c.ci[0] <= est && est <= c.ci[1]);
            assert_eq!(c.suppressed, c.estimate < 3);
        }
        assert!(r.epsilon.unwrap() > 0.0 && r.rho.is_none());
    }
    // Year totals agree with the months: 7 contacts in helse-vestfjord, 6 in the municipality.
    assert_eq!(all["2026/helse-vestfjord/kanal"].total_estimate, 7);
    assert_eq!(all["2026/vikafjord-kommune/kanal"].total_estimate, 6);
    let (_, periods) = app.call("GET", "/api/v1/periods", Some(ADMIN), None).await;
    let states: Vec<(&str, &str)> = periods["periods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["period"].as_str().unwrap(), p["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        states,
        [
            ("2027-01", "open"),
            ("2026-12", "released"),
            ("2026-11", "released")
        ]
    );
}

#[tokio::test]
async fn a_closed_periods_database_is_closed_after_the_job_and_reopened_for_the_year() {
    let app = TestApp::zero_noise();
    let store = app.svc.store();
    let month = |p: &str| p.parse::<tellestrek::domain::Period>().unwrap();
    let a = app.token("supporter", Some("helse-vestfjord")).await;
    app.tick(&a, "helse-vestfjord", "akuttmottak", &[], 3).await;
    assert!(store.open_raw_periods().contains(&month("2026-11")));
    // December 15: November's last tick day (6 December) is more than a day past.
    app.at(datetime!(2026-12-15 09:00 UTC));
    let report = app.svc.run_lifecycle().await.unwrap();
    assert!(
        report
            .drawn
            .iter()
            .any(|id| id == "2026-11/helse-vestfjord/total")
    );
    let open = store.open_raw_periods();
    assert!(!open.contains(&month("2026-11")), "{open:?}");
    assert!(open.contains(&month("2026-12")), "{open:?}");
    app.tick(&a, "helse-vestfjord", "akuttmottak", &[], 2).await;
    // The quarter and the year read November again, from its reopened database.
    app.at(AFTER_YEAR);
    app.svc.run_lifecycle().await.unwrap();
    let all = by_id(&store.releases("").unwrap());
    assert_eq!(
        estimate(&all["2026-Q4/helse-vestfjord/unit"], "unit", "akuttmottak"),
        5
    );
    assert_eq!(all["2026-11/helse-vestfjord/total"].total_estimate, 3);
    let open = store.open_raw_periods();
    assert!(
        !open.contains(&month("2026-11")) && !open.contains(&month("2026-12")),
        "{open:?}"
    );
    // And again: the job that purges them opens nothing it does not close.
    app.at(datetime!(2027-03-01 09:00 UTC));
    let report = app.svc.run_lifecycle().await.unwrap();
    assert!(report.purged.contains(&month("2026-11")), "{report:?}");
    assert!(!store.open_raw_periods().contains(&month("2026-12")));
}

#[tokio::test]
async fn with_real_noise_estimates_are_consistent_non_negative_integers() {
    let app = TestApp::new();
    history(&app).await;
    app.svc.run_lifecycle().await.unwrap();
    let all = app.svc.store().releases("").unwrap();
    assert_eq!(all.len(), 22);
    for r in &all {
        if r.kind == "contacts" {
            assert_eq!(
                r.cells.iter().map(|c| c.estimate).sum::<u64>(),
                r.total_estimate,
                "{}",
                r.id
            );
        }
        // Per organisation and period, every contacts marginal has the same total.
        for other in all.iter().filter(|o| {
            o.org == r.org && o.period == r.period && o.kind == "contacts" && r.kind == "contacts"
        }) {
            assert_eq!(
                other.total_estimate, r.total_estimate,
                "{} vs {}",
                other.id, r.id
            );
        }
        for c in &r.cells {
            assert_eq!(c.noisy_ci[1] - c.noisy, c.noisy - c.noisy_ci[0]);
        }
    }
}

#[tokio::test]
async fn concurrent_release_requests_give_one_release_and_one_ledger_entry() {
    let app = TestApp::new();
    let s = app.token("supporter", Some("helse-vestfjord")).await;
    app.tick(&s, "helse-vestfjord", "akuttmottak", &[], 5).await;
    app.at(datetime!(2026-12-10 08:00 UTC));
    let calls =
        (0..8).map(|_| app.call("POST", "/api/v1/periods/2026-11/release", Some(ADMIN), None));
    // Polled together: they interleave at every await, as concurrent requests do.
    let answers = futures::future::join_all(calls).await;
    for (s, v) in &answers {
        assert_eq!(*s, StatusCode::OK, "{v}");
        assert_eq!(v, &answers[0].1);
    }
    assert_eq!(answers[0].1["state"], "released");
    assert_eq!(
        answers[0].1["releases"],
        json!([
            "2026-11/helse-vestfjord/total",
            "2026-11/vikafjord-kommune/total"
        ])
    );
    let ledger = app.svc.store().ledger().unwrap();
    assert_eq!(ledger.len(), 2, "one ledger entry per release: {ledger:?}");
    let researcher = app.token("researcher", None).await;
    let (_, first) = app
        .call(
            "GET",
            "/api/v1/releases?period=2026-11",
            Some(&researcher),
            None,
        )
        .await;
    // Asking again, releasing again, and running the job again change nothing and spend nothing.
    app.call("POST", "/api/v1/periods/2026-11/release", Some(ADMIN), None)
        .await;
    app.svc.run_lifecycle().await.unwrap();
    let (_, second) = app
        .call(
            "GET",
            "/api/v1/releases?period=2026-11",
            Some(&researcher),
            None,
        )
        .await;
    assert_eq!(first["releases"], second["releases"]);
    assert_eq!(app.svc.store().ledger().unwrap().len(), 2);
    // Not yet releasable, malformed, and not an admin.
    let (s, v) = app
        .call("POST", "/api/v1/periods/2026-12/release", Some(ADMIN), None)
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("period_not_releasable")),
        "{v}"
    );
    let (s, v) = app
        .call("POST", "/api/v1/periods/2026-13/release", Some(ADMIN), None)
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_period"))
    );
    let (s, _) = app
        .call(
            "POST",
            "/api/v1/periods/2026-11/release",
            Some(&researcher),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_release_over_the_budget_is_refused_and_nothing_is_spent() {
    let dir = tempfile::tempdir().unwrap();
    let clock = std::sync::Arc::new(tellestrek::clock::FixedClock::new(crate::helpers::NOW));
    {
        let (svc, _) = tellestrek::service::Service::open(
            dir.path(),
            Policy::builtin(),
            clock.clone(),
            Some(ADMIN),
        )
        .unwrap();
        let app = crate::helpers::TestApp {
            router: tellestrek::server::app(svc.clone()),
            svc,
            clock: clock.clone(),
            dir: tempfile::tempdir().unwrap(),
        };
        let s = app.token("supporter", Some("helse-vestfjord")).await;
        app.tick(&s, "helse-vestfjord", "akuttmottak", &[], 2).await;
        app.at(datetime!(2026-12-10 08:00 UTC));
        let (st, _) = app
            .call("POST", "/api/v1/periods/2026-11/release", Some(ADMIN), None)
            .await;
        assert_eq!(st, StatusCode::OK);
    }
    // The operator lowers the budget below what November has already spent (0.7).
    let lowered = Policy::from_str(
        "lowered.toml",
        &tellestrek::policy::DEFAULT_POLICY.replace("budget = 2.0", "budget = 0.5"),
    )
    .unwrap();
    let (svc, _) =
        tellestrek::service::Service::open(dir.path(), lowered, clock.clone(), None).unwrap();
    let app = crate::helpers::TestApp {
        router: tellestrek::server::app(svc.clone()),
        svc,
        clock: clock.clone(),
        dir: tempfile::tempdir().unwrap(),
    };
    app.at(AFTER_YEAR);
    let before = app.svc.store().ledger().unwrap();
    let (s, v) = app
        .call("POST", "/api/v1/periods/2026-12/release", Some(ADMIN), None)
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("budget_exceeded")),
        "{v}"
    );
    assert!(
        v["error"]["message"].as_str().unwrap().contains("budget"),
        "{v}"
    );
    let after = app.svc.store().ledger().unwrap();
    // December's own total fits (nothing was spent on December); the quarter and the year,
    // which include November, are refused and spend nothing.
    let new: Vec<&str> = after
        .iter()
        .filter(|e| !before.contains(e))
        .map(|e| e.release.as_str())
        .collect();
    assert!(new.iter().all(|id| id.starts_with("2026-12/")), "{new:?}");
    assert!(
        app.svc
            .store()
            .release("2026-Q4/helse-vestfjord/unit")
            .unwrap()
            .is_none()
    );
    for org in ["helse-vestfjord", "vikafjord-kommune"] {
        let spent_nov: f64 = after
            .iter()
            .filter(|e| e.org == org && e.covers.iter().any(|p| p.to_string() == "2026-11"))
            .map(|e| e.spend)
            .sum();
        assert!(spent_nov <= 0.7 + 1e-9);
    }
}

#[tokio::test]
async fn after_purge_no_raw_cell_or_pseudonym_remains_and_releases_are_still_served() {
    let app = TestApp::new();
    history(&app).await;
    app.svc.run_lifecycle().await.unwrap();
    // Every raw key (cell keys, pseudonyms) and value of the raw databases, before the purge.
    let raw: Vec<Vec<u8>> = app
        .svc
        .store()
        .raw_snapshot()
        .unwrap()
        .into_iter()
        .filter(|(k, _)| k.starts_with(b"2026-1"))
        .flat_map(|(k, v)| {
            let key = k.splitn(3, |&b| b == b':').nth(2).unwrap().to_vec();
            [key, v]
        })
        .filter(|b| b.len() >= 16)
        .collect();
    assert!(
        raw.len() > 5,
        "expected raw cells and pseudonyms before the purge"
    );
    assert!(app.dir.path().join("raw/2026-11").exists());
    let researcher = app.token("researcher", None).await;
    let (_, before) = app
        .call("GET", "/api/v1/releases", Some(&researcher), None)
        .await;

    // The year's releases were drawn by 8 January 2027; 30 retention days later the raw data goes.
    app.at(datetime!(2027-02-05 12:00 UTC));
    assert!(
        app.svc.run_lifecycle().await.unwrap().purged.is_empty(),
        "purged before its retention days were over"
    );
    app.at(datetime!(2027-02-08 12:00 UTC));
    let report = app.svc.run_lifecycle().await.unwrap();
    assert_eq!(
        report
            .purged
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>(),
        ["2026-11", "2026-12"]
    );
    assert!(!app.dir.path().join("raw/2026-11").exists());
    let mut paths = Vec::new();
    crate::helpers::files(app.dir.path(), &mut paths);
    for path in paths {
        let data = std::fs::read(&path).unwrap();
        for needle in &raw {
            assert!(
                !data.windows(needle.len()).any(|w| w == needle.as_slice()),
                "{} still holds raw data {:?}",
                path.display(),
                String::from_utf8_lossy(needle)
            );
        }
    }
    let (s, after) = app
        .call("GET", "/api/v1/releases", Some(&researcher), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    // Every release drawn before the purge is served unchanged after it (January's new total
    // comes in addition).
    for r in before["releases"].as_array().unwrap() {
        assert!(
            after["releases"].as_array().unwrap().contains(r),
            "{} changed or vanished after the purge",
            r["id"]
        );
    }
    let (_, periods) = app.call("GET", "/api/v1/periods", Some(ADMIN), None).await;
    assert_eq!(periods["periods"][2]["state"], "purged");
}

#[tokio::test]
async fn exports_are_signed_and_a_tampered_file_fails_verify() {
    let app = TestApp::new();
    history(&app).await;
    app.svc.run_lifecycle().await.unwrap();
    let researcher = app.token("researcher", None).await;
    let (s, export) = app
        .call(
            "GET",
            "/api/v1/releases?org=helse-vestfjord",
            Some(&researcher),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(export["releases"].as_array().unwrap().len(), 11);
    let (_, key) = app.call("GET", "/api/v1/signing-key", None, None).await;
    let key = key["public_key"].as_str().unwrap().to_string();
    assert_eq!(export["signature"]["public_key"], key);
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("export.json");
    std::fs::write(&good, serde_json::to_string_pretty(&export).unwrap()).unwrap();
    let verify = |file: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tellestrek"))
            .arg("verify")
            .arg(file)
            .arg("--public-key")
            .arg(&key)
            .output()
            .unwrap()
    };
    let out = verify(&good);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));
    // Change one noisy value by one.
    let mut tampered: Value = export.clone();
    let n = tampered["releases"][0]["cells"][0]["noisy"]
        .as_i64()
        .unwrap();
    tampered["releases"][0]["cells"][0]["noisy"] = json!(n + 1);
    let bad = dir.path().join("tampered.json");
    std::fs::write(&bad, tampered.to_string()).unwrap();
    let out = verify(&bad);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NOT VERIFIED"));
    // Another key does not verify the genuine file either.
    let other = TestApp::new();
    let (_, other_key) = other.call("GET", "/api/v1/signing-key", None, None).await;
    assert!(
        tellestrek::service::verify_export(&export.to_string(), other_key["public_key"].as_str())
            .is_err()
    );
}

#[tokio::test]
async fn csv_exports_have_a_row_per_cell_with_metadata_and_a_signature() {
    let app = TestApp::new();
    history(&app).await;
    app.svc.run_lifecycle().await.unwrap();
    let researcher = app.token("researcher", None).await;
    let (_, json) = app
        .call("GET", "/api/v1/releases", Some(&researcher), None)
        .await;
    let cells: usize = json["releases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["cells"].as_array().unwrap().len())
        .sum();
    let req = axum::http::Request::get("/api/v1/releases?format=csv")
        .header("authorization", format!("Bearer {researcher}"))
        .body(axum::body::Body::empty())
        .unwrap();
    let resp = tower::ServiceExt::oneshot(app.router.clone(), req)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let sig = resp.headers()["x-tellestrek-signature"]
        .to_str()
        .unwrap()
        .to_string();
    let key = resp.headers()["x-tellestrek-public-key"]
        .to_str()
        .unwrap()
        .to_string();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert!(tellestrek::auth::verify_signature(&key, &body, &sig));
    let text = String::from_utf8(body.to_vec()).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    for col in [
        "release_id",
        "period",
        "org",
        "marginal",
        "noisy",
        "estimate",
        "ci_low",
        "ci_high",
        "suppressed",
        "epsilon",
        "unit",
        "yrkesgruppe",
    ] {
        assert!(header.contains(&col), "missing column {col}: {header:?}");
    }
    assert_eq!(lines.count(), cells);
}

#[tokio::test]
async fn leaders_read_only_their_own_organisation() {
    let app = TestApp::new();
    history(&app).await;
    app.svc.run_lifecycle().await.unwrap();
    let leader = app.token("leader", Some("vikafjord-kommune")).await;
    let (s, v) = app
        .call(
            "GET",
            "/api/v1/releases?org=helse-vestfjord",
            Some(&leader),
            None,
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("wrong_org")),
        "{v}"
    );
    let (s, v) = app
        .call("GET", "/api/v1/releases", Some(&leader), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let orgs: std::collections::BTreeSet<&str> = v["releases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["org"].as_str().unwrap())
        .collect();
    assert_eq!(orgs.into_iter().collect::<Vec<_>>(), ["vikafjord-kommune"]);
    let (_, budget) = app.call("GET", "/api/v1/budget", Some(&leader), None).await;
    assert!(
        budget["entries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["org"] == "vikafjord-kommune")
    );
    let sup = app.token("supporter", Some("vikafjord-kommune")).await;
    assert_eq!(
        app.call("GET", "/api/v1/releases", Some(&sup), None)
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    for (q, code) in [
        ("marginal=nope", "unknown_marginal"),
        ("org=nope", "unknown_org"),
        ("format=xml", "invalid_format"),
        ("colour=red", "invalid_query"),
        ("period=2026-13", "invalid_period"),
    ] {
        let (s, v) = app
            .call("GET", &format!("/api/v1/releases?{q}"), Some(&leader), None)
            .await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some(code)),
            "{q}: {v}"
        );
    }
}

#[tokio::test]
async fn the_budget_shows_every_spend_within_the_policy() {
    let app = TestApp::new();
    history(&app).await;
    app.svc.run_lifecycle().await.unwrap();
    let researcher = app.token("researcher", None).await;
    let (s, b) = app
        .call("GET", "/api/v1/budget", Some(&researcher), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["measure"], "epsilon");
    assert_eq!(b["entries"].as_array().unwrap().len(), 22);
    for org in b["orgs"].as_array().unwrap() {
        for p in org["periods"].as_array().unwrap() {
            let spent = p["spent"].as_f64().unwrap();
            assert!(spent <= 2.0 && spent > 1.8, "{p}");
        }
    }
}

#[tokio::test]
async fn exports_with_hard_floats_still_verify() {
    // Floats whose shortest text does not parse back exactly without serde_json's
    // float_roundtrip; found by review.
    let app = TestApp::new();
    let r = Release {
        id: "2026-11/helse-vestfjord/total".into(),
        period: "2026-11".parse().unwrap(),
        org: "helse-vestfjord".into(),
        marginal: "total".into(),
        kind: "contacts".into(),
        dimensions: vec![],
        covers: vec!["2026-11".parse().unwrap()],
        mechanism: "discrete_laplace".into(),
        privacy_unit: "contact".into(),
        epsilon: Some(175.47217903306625),
        rho: None,
        sensitivity: 1,
        scale: 985.7006946328695,
        sensitive_scale: Some(0.1 + 0.2),
        confidence: 0.95,
        suppress_below: 3,
        total_estimate: 4,
        noise_variance: 1.0 / 3.0,
        cells: vec![],
    };
    let doc = app.svc.signed_export(&[r]).unwrap();
    let text = serde_json::to_string_pretty(&doc).unwrap();
    assert_eq!(
        tellestrek::service::verify_export(&text, Some(&app.svc.public_key())),
        Ok(1)
    );
}

/// The national example: weekly periods, the supporter unit, discrete Gaussian noise.
fn national() -> Policy {
    Policy::from_path(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("policy/examples/national-weekly.toml"),
    )
    .unwrap()
}

#[tokio::test]
async fn the_supporter_unit_with_gaussian_noise_records_rho_and_counts_exactly() {
    let app = TestApp::build(national(), std::sync::Arc::new(tellestrek::dp::ZeroNoise));
    let s = app.token("supporter", Some("fagforening")).await;
    let t = app.token("supporter", Some("fagforening")).await;
    let tags = [
        ("tjenesteniva", "kommunal"),
        ("utlosende_arsak", "annet"),
        ("kanal", "video"),
    ];
    let body = |unit: &str, count: u32| {
        let mut b = json!({"org": "fagforening", "unit": unit, "count": count, "tags": {}});
        for (d, v) in tags {
            b["tags"][d] = json!(v);
        }
        b
    };
    for (tok, unit, n) in [(&s, "nord", 3), (&t, "vest", 2)] {
        let (st, v) = app
            .call("POST", "/api/v1/ticks", Some(tok), Some(body(unit, n)))
            .await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
        assert_eq!(v["period"], "2026-W48");
    }
    // The weekly cap of 3 holds.
    let (st, _) = app
        .call("POST", "/api/v1/ticks", Some(&s), Some(body("nord", 1)))
        .await;
    assert_eq!(st, StatusCode::TOO_MANY_REQUESTS);
    app.at(AFTER_YEAR);
    let report = app.svc.run_lifecycle().await.unwrap();
    assert!(report.refused.is_empty(), "{:?}", report.refused);
    let all = by_id(&app.svc.store().releases("").unwrap());
    let total = &all["2026-Q4/fagforening/total"];
    assert_eq!(total.cells[0].estimate, 5);
    assert_eq!(
        (total.mechanism.as_str(), total.privacy_unit.as_str()),
        ("discrete_gaussian", "supporter")
    );
    assert!(total.epsilon.is_none() && total.rho.unwrap() > 0.0);
    // Sensitivity: 3 contacts a week times the 14 weeks a quarter can hold.
    assert_eq!(total.sensitivity, 42);
    let region = &all["2026/fagforening/region"];
    assert_eq!(
        (
            estimate(region, "unit", "nord"),
            estimate(region, "unit", "vest"),
            estimate(region, "unit", "midt")
        ),
        (3, 2, 0)
    );
    let level = &all["2026/fagforening/tjenesteniva"];
    assert_eq!(estimate(level, "tjenesteniva", "kommunal"), 5);
    let load = &all["2026-Q4/fagforening/load"];
    assert_eq!(load_pair(load), (2, 1));
    // What a supporter active all year is in stays within the budget.
    let spent: f64 = all.values().map(|r| r.rho.unwrap()).sum();
    assert!(spent <= 0.5, "{spent}");
}

#[tokio::test]
async fn a_lowered_rolling_year_cap_refuses_the_next_release_and_raw_data_is_purged_anyway() {
    let dir = tempfile::tempdir().unwrap();
    let clock = std::sync::Arc::new(tellestrek::clock::FixedClock::new(crate::helpers::NOW));
    {
        let (svc, _) =
            tellestrek::service::Service::open(dir.path(), national(), clock.clone(), Some(ADMIN))
                .unwrap();
        let svc = svc.with_noise(std::sync::Arc::new(tellestrek::dp::ZeroNoise));
        clock.set(datetime!(2027-01-10 12:00 UTC));
        let report = svc.run_lifecycle().await.unwrap();
        assert!(report.drawn.len() >= 4 && report.refused.is_empty());
    }
    // The scheme lowers its yearly budget (the supporter unit's rolling-year cap) to 0.1,
    // below what the 2026 releases already spent.
    let lowered = Policy::from_str(
        "lowered.toml",
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("policy/examples/national-weekly.toml"),
        )
        .unwrap()
        .replace("budget = 0.5", "budget = 0.1"),
    )
    .unwrap();
    let (svc, _) =
        tellestrek::service::Service::open(dir.path(), lowered, clock.clone(), None).unwrap();
    let svc = svc.with_noise(std::sync::Arc::new(tellestrek::dp::ZeroNoise));
    clock.set(datetime!(2027-04-10 12:00 UTC));
    let before = svc.store().ledger().unwrap().len();
    let report = svc.run_lifecycle().await.unwrap();
    assert!(
        report
            .refused
            .iter()
            .any(|(id, why)| id.starts_with("2027-Q1/") && why.contains("rolling-year cap")),
        "{report:?}"
    );
    assert_eq!(
        svc.store().ledger().unwrap().len(),
        before,
        "a refused release spends nothing"
    );
    // Week 10 of 2027 is needed by the (refused) first quarter and the 2027 year; its raw data
    // is still deleted on its retention day, 14 days after the year could first be released.
    clock.set(datetime!(2028-01-25 12:00 UTC));
    let report = svc.run_lifecycle().await.unwrap();
    assert!(
        report.purged.iter().any(|p| p.to_string() == "2027-W10"),
        "{:?}",
        report.purged
    );
    assert!(!dir.path().join("raw/2027-W10").exists());
}
