//! Issue 7: data keeps the policy it was collected under. Each edit of the policy file between
//! two starts is shown to do what the README promises: it takes effect from a future period or
//! is refused at start; no contact's ε passes the budget it was collected under, no release is
//! drawn twice, and raw data is purged on schedule.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use axum::http::StatusCode;
use serde_json::json;
use tellestrek::clock::FixedClock;
use tellestrek::domain::Period;
use tellestrek::dp::ZeroNoise;
use tellestrek::policy::{DEFAULT_POLICY, Policy};
use tellestrek::service::{Service, ServiceError};
use time::OffsetDateTime;
use time::macros::datetime;

use crate::helpers::{ADMIN, NOW, TestApp};

/// Opens `dir` with `text` as the policy file, zero noise, on `clock`.
fn open(dir: &Path, text: &str, clock: &Arc<FixedClock>) -> Result<TestApp, ServiceError> {
    let policy = Policy::from_str("edited.toml", text).unwrap();
    let (svc, _) = Service::open(dir, policy, clock.clone(), Some(ADMIN))?;
    let svc = svc.with_noise(Arc::new(ZeroNoise));
    Ok(TestApp {
        router: tellestrek::server::app(svc.clone()),
        svc,
        clock: clock.clone(),
        dir: tempfile::tempdir().unwrap(),
    })
}

/// A data directory with November 2026 collected under the default policy and its monthly
/// total released; returns the directory, the clock (at 10 December 2026) and a supporter of
/// each organisation.
async fn collected() -> (tempfile::TempDir, Arc<FixedClock>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(FixedClock::new(NOW));
    let app = open(dir.path(), DEFAULT_POLICY, &clock).unwrap();
    let sup = app.token("supporter", Some("helse-vestfjord")).await;
    app.tick(
        &sup,
        "helse-vestfjord",
        "akuttmottak",
        &[("kanal", "skriftlig")],
        3,
    )
    .await;
    app.tick(&sup, "helse-vestfjord", "intensiv", &[], 2).await;
    let vik = app.token("supporter", Some("vikafjord-kommune")).await;
    app.tick(&vik, "vikafjord-kommune", "legevakt", &[], 1)
        .await;
    app.at(datetime!(2026-12-10 08:00 UTC));
    let report = app.svc.run_lifecycle().await.unwrap();
    assert!(
        report
            .drawn
            .contains(&"2026-11/helse-vestfjord/total".to_string())
    );
    (dir, clock, sup, vik)
}

/// Sends the default tick with `patch` merged in (top-level fields, and `tags`), expects it
/// refused with `status` and `code`, and returns the message.
async fn refused(
    app: &TestApp,
    token: &str,
    patch: serde_json::Value,
    status: StatusCode,
    code: &str,
) -> String {
    let mut body = crate::helpers::tick_body();
    for (k, v) in patch.as_object().unwrap() {
        match (k.as_str(), v.as_object()) {
            ("tags", Some(tags)) => {
                for (d, value) in tags {
                    body["tags"][d] = value.clone();
                }
            }
            _ => body[k] = v.clone(),
        }
    }
    let (s, v) = app
        .call("POST", "/api/v1/ticks", Some(token), Some(body))
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (status, Some(code)),
        "{v}"
    );
    v["error"]["message"].as_str().unwrap().to_string()
}

/// Runs the lifecycle job at each of the given instants; returns every release drawn.
async fn run_until(app: &TestApp, instants: &[OffsetDateTime]) -> Vec<String> {
    let mut drawn = Vec::new();
    for at in instants {
        app.at(*at);
        let report = app.svc.run_lifecycle().await.unwrap();
        assert!(report.refused.is_empty(), "{report:?}");
        drawn.extend(report.drawn);
    }
    drawn
}

/// The instants a year of the job needs: each month's release, the year's, and the purges.
const THROUGH_2027: [OffsetDateTime; 5] = [
    datetime!(2027-01-10 08:00 UTC),
    datetime!(2027-02-10 08:00 UTC),
    datetime!(2027-03-10 08:00 UTC),
    datetime!(2027-04-10 08:00 UTC),
    datetime!(2027-05-10 08:00 UTC),
];

/// What every check after an edit shares: each release id in the ledger once, every base
/// period's spend within the budget of the policy it was collected under, and November's raw
/// data deleted once its last release (the year) plus the retention days have passed.
fn assert_guarantees(app: &TestApp, budget_2026: f64, budget_2027: f64) {
    let ledger = app.svc.store().ledger().unwrap();
    let mut ids = std::collections::BTreeSet::new();
    let mut per_base: BTreeMap<(String, Period), f64> = BTreeMap::new();
    for e in &ledger {
        assert!(ids.insert(e.release.clone()), "{} twice", e.release);
        for b in &e.covers {
            *per_base.entry((e.org.clone(), *b)).or_default() += e.spend;
        }
    }
    for ((org, b), spent) in per_base {
        let budget = if b.start().year() == 2026 {
            budget_2026
        } else {
            budget_2027
        };
        assert!(spent <= budget + 1e-9, "{org} {b}: {spent} over {budget}");
    }
    // No base period is counted by more releases of one cadence than the policy it was
    // collected under has tables of that cadence: a second draw under a new name would be.
    let mut per_cadence: BTreeMap<(String, Period, String), usize> = BTreeMap::new();
    for e in &ledger {
        for b in &e.covers {
            *per_cadence
                .entry((
                    e.org.clone(),
                    *b,
                    e.period.granularity().as_str().to_string(),
                ))
                .or_default() += 1;
        }
    }
    for ((org, b, cadence), n) in per_cadence {
        let policy = app.svc.policy_at(b).unwrap();
        let tables = policy
            .marginals
            .iter()
            .filter(|m| m.cadence.as_str() == cadence)
            .count();
        assert!(
            n <= tables,
            "{org} {b}: {n} {cadence} releases for {tables} tables"
        );
    }
    let raw = app.svc.store().raw_periods().unwrap();
    assert!(
        !raw.contains(&"2026-11".parse().unwrap()),
        "November's raw data is purged on schedule: {raw:?}"
    );
}

#[tokio::test]
async fn renaming_a_table_applies_to_new_periods_and_never_draws_a_period_again() {
    let (dir, clock, _, _) = collected().await;
    let text = DEFAULT_POLICY.replace("id = \"total\"", "id = \"sum\"");
    let app = open(dir.path(), &text, &clock).unwrap();
    assert!(
        app.svc.policy_change().contains("from 2027-01"),
        "{}",
        app.svc.policy_change()
    );
    let drawn = run_until(&app, &THROUGH_2027).await;
    assert!(drawn.contains(&"2026-12/helse-vestfjord/total".to_string()));
    assert!(drawn.contains(&"2027-01/helse-vestfjord/sum".to_string()));
    assert!(
        !drawn
            .iter()
            .any(|id| id.starts_with("2026-11/") || id == "2026-12/helse-vestfjord/sum"),
        "{drawn:?}"
    );
    assert_guarantees(&app, 2.0, 2.0);
}

#[tokio::test]
async fn an_edit_scheduled_then_reverted_leaves_no_regime_behind() {
    let (dir, clock, _, _) = collected().await;
    let edited = DEFAULT_POLICY.replace("id = \"total\"", "id = \"total2\"");
    let app = open(dir.path(), &edited, &clock).unwrap();
    assert_eq!(app.svc.regimes().all().len(), 2);
    drop(app);
    let app = open(dir.path(), DEFAULT_POLICY, &clock).unwrap();
    assert!(
        app.svc.policy_change().contains("matches"),
        "{}",
        app.svc.policy_change()
    );
    drop(app);
    let stored = std::fs::read_to_string(dir.path().join("regimes.json")).unwrap();
    assert!(
        !stored.contains("total2"),
        "the reverted edit is gone from regimes.json"
    );
    // After the boundary, a restart with the original file draws January once, as `total`.
    clock.set(datetime!(2027-02-10 08:00 UTC));
    let app = open(dir.path(), DEFAULT_POLICY, &clock).unwrap();
    assert_eq!(app.svc.regimes().all().len(), 1);
    run_until(&app, &THROUGH_2027).await;
    assert!(
        app.svc
            .store()
            .release("2027-01/helse-vestfjord/total")
            .unwrap()
            .is_some()
    );
    assert!(
        app.svc
            .store()
            .release("2027-01/helse-vestfjord/total2")
            .unwrap()
            .is_none()
    );
    assert_guarantees(&app, 2.0, 2.0);
}

#[tokio::test]
async fn a_clock_set_back_is_refused_at_start() {
    let (dir, clock, _, _) = collected().await;
    clock.set(datetime!(2027-02-10 08:00 UTC));
    drop(open(dir.path(), DEFAULT_POLICY, &clock).unwrap());
    clock.set(datetime!(2026-12-10 08:00 UTC));
    match open(dir.path(), DEFAULT_POLICY, &clock) {
        Err(e) => assert!(e.to_string().contains("2027-02"), "{e}"),
        Ok(_) => panic!("a start with the clock set back must be refused"),
    }
}

#[tokio::test]
async fn raising_the_budget_applies_from_next_year_and_lowering_it_at_once() {
    let (dir, clock, _, _) = collected().await;
    let raised = DEFAULT_POLICY
        .replace("budget = 2.0", "budget = 4.0")
        .replace("rolling_year_cap = 14.0", "rolling_year_cap = 28.0")
        .replace("id = \"total\"", "id = \"total-again\"");
    let app = open(dir.path(), &raised, &clock).unwrap();
    assert!(app.svc.policy_change().contains("from 2027-01"));
    assert_eq!(app.svc.regimes().all().len(), 2);
    run_until(&app, &THROUGH_2027).await;
    // 2026 is drawn with the scales of the 2.0 budget; 2027 with those of 4.0.
    let r26 = app
        .svc
        .store()
        .release("2026-12/helse-vestfjord/total")
        .unwrap()
        .unwrap();
    let r27 = app
        .svc
        .store()
        .release("2027-01/helse-vestfjord/total-again")
        .unwrap()
        .unwrap();
    assert!(
        (r26.epsilon.unwrap() - 0.7).abs() < 1e-6,
        "{:?}",
        r26.epsilon
    );
    assert!(
        (r27.epsilon.unwrap() - 1.4).abs() < 1e-6,
        "{:?}",
        r27.epsilon
    );
    assert_guarantees(&app, 2.0, 4.0);
    drop(app);
    // A stricter file applies to what is still to draw, at once.
    let lowered = DEFAULT_POLICY.replace("budget = 2.0", "budget = 0.5");
    let app = open(dir.path(), &lowered, &clock).unwrap();
    app.at(datetime!(2027-06-10 08:00 UTC));
    let report = app.svc.run_lifecycle().await.unwrap();
    assert!(
        report
            .refused
            .iter()
            .any(|(id, _)| id.starts_with("2027-05/")),
        "{report:?}"
    );
}

#[tokio::test]
async fn a_new_period_length_grace_mechanism_or_unit_of_privacy_is_refused_at_start() {
    let (dir, clock, _, _) = collected().await;
    let before = std::fs::read(dir.path().join("regimes.json")).unwrap();
    for (text, key) in [
        (
            DEFAULT_POLICY.replace("granularity = \"month\"", "granularity = \"week\""),
            "period.granularity",
        ),
        (
            DEFAULT_POLICY.replace(
                "mechanism = \"discrete_laplace\"",
                "mechanism = \"discrete_gaussian\"",
            ),
            "privacy.mechanism",
        ),
        (
            DEFAULT_POLICY.replace("grace_days = 7", "grace_days = 14"),
            "period.grace_days",
        ),
        (
            DEFAULT_POLICY.replace("unit = \"contact\"", "unit = \"supporter\""),
            "privacy.unit",
        ),
    ] {
        let err = match open(dir.path(), &text, &clock) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{key}: a change of it must be refused"),
        };
        assert!(err.contains(key) && err.contains("Instead"), "{err}");
        assert_eq!(
            std::fs::read(dir.path().join("regimes.json")).unwrap(),
            before,
            "a refused start changes nothing"
        );
    }
    // The data directory still works with the policy it has.
    let app = open(dir.path(), DEFAULT_POLICY, &clock).unwrap();
    run_until(&app, &THROUGH_2027).await;
    assert_guarantees(&app, 2.0, 2.0);
}

#[tokio::test]
async fn a_removed_unit_value_or_organisation_keeps_its_data_in_its_own_cells() {
    let (dir, clock, sup, vik) = collected().await;
    let vikafjord_start = DEFAULT_POLICY
        .find("[[orgs]]\nid = \"vikafjord-kommune\"")
        .unwrap();
    let vikafjord_end = DEFAULT_POLICY.find("# ---- taxonomy").unwrap();
    let text = format!(
        "{}{}",
        &DEFAULT_POLICY[..vikafjord_start],
        &DEFAULT_POLICY[vikafjord_end..]
    )
    .replace(
        "  { id = \"akuttmottak\", name = \"Akuttmottak\", headcount = 120 },\n",
        "",
    )
    .replace(
        "  { id = \"skriftlig\", label = { nb = \"Skriftlig\", en = \"Written\" } },\n",
        "",
    );
    assert!(!text.contains("akuttmottak") && !text.contains("skriftlig"));
    let app = open(dir.path(), &text, &clock).unwrap();
    let said = app.svc.policy_change().to_string();
    for what in [
        "akuttmottak",
        "skriftlig",
        "vikafjord-kommune",
        "from 2027-01",
    ] {
        assert!(said.contains(what), "{what}: {said}");
    }
    // Until the change, December still takes ticks under the policy it started with.
    app.tick(&sup, "helse-vestfjord", "akuttmottak", &[], 1)
        .await;
    run_until(&app, &THROUGH_2027[..1]).await;
    // From January, the removed unit and value are refused, and the organisation has stopped.
    let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
    let patch = json!({"tags": {"kanal": "skriftlig"}});
    refused(&app, &sup, patch, unprocessable, "unknown_unit").await;
    let patch = json!({"unit": "intensiv", "tags": {"kanal": "skriftlig"}});
    refused(&app, &sup, patch, unprocessable, "unknown_value").await;
    let patch = json!({"org": "vikafjord-kommune", "unit": "legevakt"});
    let why = refused(&app, &vik, patch, StatusCode::CONFLICT, "period_not_open").await;
    assert!(why.contains("until 2026-12"), "{why}");
    run_until(&app, &THROUGH_2027[1..]).await;
    // Q4 and 2026 were released under the policy they were collected under: the removed unit
    // and value have their own cells, holding exactly what was logged there.
    let cell = |id: &str, axis: &str, value: &str| {
        let r = app
            .svc
            .store()
            .release(id)
            .unwrap()
            .unwrap_or_else(|| panic!("{id}"));
        r.cells
            .iter()
            .find(|c| c.key.get(axis).map(String::as_str) == Some(value))
            .map(|c| c.estimate)
    };
    assert_eq!(
        cell("2026-Q4/helse-vestfjord/unit", "unit", "akuttmottak"),
        Some(4)
    );
    assert_eq!(
        cell("2026/helse-vestfjord/kanal", "kanal", "skriftlig"),
        Some(3)
    );
    assert_eq!(
        cell("2027-Q1/helse-vestfjord/unit", "unit", "akuttmottak"),
        None
    );
    assert!(
        app.svc
            .store()
            .release("2026/vikafjord-kommune/total")
            .unwrap()
            .is_none()
    );
    assert!(
        app.svc
            .store()
            .release("2026-12/vikafjord-kommune/total")
            .unwrap()
            .is_some()
    );
    assert!(
        app.svc
            .store()
            .release("2026/vikafjord-kommune/kanal")
            .unwrap()
            .is_some()
    );
    assert!(
        app.svc
            .store()
            .release("2027-01/vikafjord-kommune/total")
            .unwrap()
            .is_none()
    );
    assert_guarantees(&app, 2.0, 2.0);
}

#[tokio::test]
async fn a_label_edit_applies_at_once_and_changes_nothing_else() {
    let (dir, clock, _, _) = collected().await;
    let text = DEFAULT_POLICY.replace("name = \"Akuttmottak\"", "name = \"Akutten\"");
    let app = open(dir.path(), &text, &clock).unwrap();
    assert!(
        app.svc.policy_change().contains("at once"),
        "{}",
        app.svc.policy_change()
    );
    assert_eq!(app.svc.regimes().all().len(), 1);
    let (_, v) = app.call("GET", "/api/v1/policy", Some(ADMIN), None).await;
    assert_eq!(v["orgs"][0]["units"][0]["name"], "Akutten");
    run_until(&app, &THROUGH_2027).await;
    assert_guarantees(&app, 2.0, 2.0);
}

#[tokio::test]
async fn a_new_organisation_collects_at_once_and_ticks_before_the_first_period_are_refused() {
    let (dir, clock, _, _) = collected().await;
    let text = DEFAULT_POLICY.replace(
        "# ---- taxonomy",
        "[[orgs]]\nid = \"nyby\"\nname = \"Nyby kommune\"\nunits = [ { id = \"sykehjem\", name = \"Sykehjem\", headcount = 90 } ]\n\n# ---- taxonomy",
    );
    let app = open(dir.path(), &text, &clock).unwrap();
    assert!(
        app.svc.policy_change().contains("from 2026-12"),
        "{}",
        app.svc.policy_change()
    );
    let sup = app.token("supporter", Some("nyby")).await;
    app.tick(&sup, "nyby", "sykehjem", &[], 1).await;
    // November (still in its grace days on 2 December) is before Nyby joined.
    app.at(datetime!(2026-12-02 08:00 UTC));
    let patch = json!({"org": "nyby", "unit": "sykehjem", "period": "2026-11"});
    let why = refused(&app, &sup, patch, StatusCode::CONFLICT, "period_not_open").await;
    assert!(why.contains("2026-12"), "{why}");
    run_until(&app, &THROUGH_2027).await;
    let y = app.svc.store().release("2026/nyby/total").unwrap();
    assert!(y.is_none(), "the yearly plan has no total");
    let q = app
        .svc
        .store()
        .release("2026-Q4/nyby/unit")
        .unwrap()
        .unwrap();
    assert_eq!(q.covers, vec!["2026-12".parse::<Period>().unwrap()]);
    assert_guarantees(&app, 2.0, 2.0);

    // A fresh data directory: the month before its first (still in grace) is refused, 409.
    let fresh = tempfile::tempdir().unwrap();
    let clock = Arc::new(FixedClock::new(datetime!(2026-12-02 08:00 UTC)));
    let app = open(fresh.path(), DEFAULT_POLICY, &clock).unwrap();
    let sup = app.token("supporter", Some("helse-vestfjord")).await;
    let patch = json!({"period": "2026-11"});
    let why = refused(&app, &sup, patch, StatusCode::CONFLICT, "period_not_open").await;
    assert!(why.contains("first period"), "{why}");
}

#[tokio::test]
async fn policy_check_against_a_data_directory_says_what_would_change() {
    let (dir, _clock, _, _) = collected().await;
    let edited = tempfile::tempdir().unwrap();
    let run = |text: String| {
        let path = edited.path().join("p.toml");
        std::fs::write(&path, text).unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_tellestrek"))
            .args(["policy", "check"])
            .arg(&path)
            .arg("--against")
            .arg(dir.path())
            .env("TELLESTREK_NOW", "2026-12-10T08:00:00Z")
            .output()
            .unwrap()
    };
    let out = run(DEFAULT_POLICY
        .replace("budget = 2.0", "budget = 3.0")
        .replace("rolling_year_cap = 14.0", "rolling_year_cap = 21.0"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("from 2027-01") && text.contains("privacy.budget"),
        "{text}"
    );
    let out = run(DEFAULT_POLICY.replace("granularity = \"month\"", "granularity = \"week\""));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("period.granularity") && err.contains("Instead"),
        "{err}"
    );
}
