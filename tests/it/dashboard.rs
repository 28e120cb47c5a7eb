//! The dashboard's numbers (issue 9): scope, exact numbers with zero noise, an alert from the
//! demo history, the words a leader reads, and each alert rule's false-alarm rate and power
//! measured with real OpenDP noise against the figures the dashboard publishes.

use std::sync::Arc;

use axum::http::StatusCode;
use serde_json::Value;
use tellestrek::demo::{self, SILENT_UNIT, SPIKE_UNIT};
use tellestrek::domain::{CellKey, Granularity, Period, Release};
use tellestrek::dp::{OpenDpNoise, ZeroNoise};
use tellestrek::policy::Policy;
use tellestrek::release::{BatchInput, base_periods_in, draw_batch};
use tellestrek::service::{
    Certainty, METHODS, Num, cell_variance, low_uptake, no_uptake, spike, supporter_load,
};
use time::macros::datetime;

use crate::helpers::{ADMIN, TestApp};

/// 10 January 2027: November and December 2026 are closed and released, and so are Q4 and
/// the year.
const AFTER_YEAR: time::OffsetDateTime = datetime!(2027-01-10 12:00 UTC);

/// Ticks in November and December 2026 (the fixtures' service starts in November); every
/// dimension takes its first value unless named: alvorlig-hendelse, selvhenvendt, under-15,
/// forste.
async fn history(app: &TestApp) {
    let a = app.token("supporter", Some("helse-vestfjord")).await;
    let b = app.token("supporter", Some("helse-vestfjord")).await;
    let hv = "helse-vestfjord";
    app.tick(&a, hv, "akuttmottak", &[], 3).await;
    let outreach = [
        ("initiering", "oppsokende"),
        ("varighet", "45-90"),
        ("oppfolging", "oppfolging"),
    ];
    app.tick(&a, hv, "intensiv", &outreach, 2).await;
    app.tick(&b, hv, "intensiv", &[("yrkesgruppe", "psykolog")], 1)
        .await;
    app.at(datetime!(2026-12-15 09:00 UTC));
    app.tick(&a, hv, "akuttmottak", &[("varighet", "over-90")], 1)
        .await;
    app.at(AFTER_YEAR);
}

async fn released_app() -> TestApp {
    let app = TestApp::zero_noise();
    history(&app).await;
    let report = app.svc.run_lifecycle().await.unwrap();
    assert!(report.refused.is_empty(), "{:?}", report.refused);
    app
}

fn alerts_of<'a>(d: &'a Value, rule: &str) -> Vec<&'a Value> {
    d["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["rule"] == rule)
        .collect()
}

#[tokio::test]
async fn a_leader_reads_only_their_own_organisation_and_never_the_load() {
    let app = released_app().await;
    let leader = app.token("leader", Some("helse-vestfjord")).await;
    let (s, v) = app
        .call(
            "GET",
            "/api/v1/dashboard?org=vikafjord-kommune",
            Some(&leader),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(v["error"]["code"], "wrong_org");
    assert!(v["error"]["message"].as_str().unwrap().starts_with("org:"));

    let (s, d) = app
        .call("GET", "/api/v1/dashboard", Some(&leader), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{d}");
    assert_eq!(d["org"], "helse-vestfjord");
    assert!(d["load"].is_null(), "{}", d["load"]);
    assert!(alerts_of(&d, "supporter_load").is_empty());

    // The coordinator of the same organisation sees the load and its alert.
    let coord = app.token("coordinator", Some("helse-vestfjord")).await;
    let (s, d) = app
        .call(
            "GET",
            "/api/v1/dashboard?org=helse-vestfjord&year=2026",
            Some(&coord),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{d}");
    let load = &d["load"][0];
    assert_eq!(load["period"], "2026-Q4");
    // Supporter a in November (5 contacts), b in November, a in December: 3 active
    // supporter-months, 1 of them at or above 4 contacts.
    assert_eq!(
        (
            load["active"]["estimate"].as_f64(),
            load["loaded"]["estimate"].as_f64()
        ),
        (Some(3.0), Some(1.0))
    );
    let alert = alerts_of(&d, "supporter_load");
    assert_eq!(alert.len(), 1, "{}", d["alerts"]);
    assert_eq!(alert[0]["certainty"], "possible");

    // A supporter may not read it; a researcher must name the organisation; bad input is named.
    let sup = app.token("supporter", Some("helse-vestfjord")).await;
    let (s, _) = app.call("GET", "/api/v1/dashboard", Some(&sup), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let res = app.token("researcher", None).await;
    let (s, v) = app.call("GET", "/api/v1/dashboard", Some(&res), None).await;
    assert_eq!(
        (s, &v["error"]["code"]),
        (StatusCode::UNPROCESSABLE_ENTITY, &"missing_org".into())
    );
    let (s, v) = app
        .call(
            "GET",
            "/api/v1/dashboard?org=helse-vestfjord&year=soon",
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        v["error"]["message"].as_str().unwrap().starts_with("year:"),
        "{v}"
    );
    let (s, v) = app
        .call("GET", "/api/v1/dashboard?org=nowhere", Some(ADMIN), None)
        .await;
    assert_eq!(
        (s, &v["error"]["code"]),
        (StatusCode::UNPROCESSABLE_ENTITY, &"unknown_org".into())
    );
}

#[tokio::test]
async fn with_zero_noise_the_dashboard_shows_the_exact_numbers() {
    let app = released_app().await;
    let (s, d) = app
        .call(
            "GET",
            "/api/v1/dashboard?org=helse-vestfjord",
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{d}");
    assert_eq!(d["year"], 2026);
    let est = |v: &Value| v["estimate"].as_f64().unwrap();

    // Trend: 6 contacts in November (3 + 2 + 1), 1 in December.
    let trend: Vec<(String, f64)> = d["trend"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["period"].as_str().unwrap().to_string(), est(&t["total"])))
        .collect();
    assert_eq!(trend, [("2026-11".into(), 6.0), ("2026-12".into(), 1.0)]);

    // Uptake in Q4: akuttmottak 4 of 120 employees, intensiv 3 of 180.
    let unit = |id: &str| {
        d["uptake"]["by_unit"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["unit"] == id)
            .unwrap()["quarters"][0]
            .clone()
    };
    let akutt = unit("akuttmottak");
    assert_eq!(akutt["period"], "2026-Q4");
    assert_eq!(est(&akutt["contacts"]), 4.0);
    assert!((est(&akutt["per_100"]) - 400.0 / 120.0).abs() < 1e-9);
    assert!(
        akutt["per_100"]["words"]["nb"]
            .as_str()
            .unwrap()
            .starts_with("ca. 3,3 (trolig ")
    );
    assert_eq!(est(&unit("intensiv")["contacts"]), 3.0);
    // A unit with nothing: 0, and below 3 it is suppressed and shown as its limit.
    let silent = unit("laboratorium");
    assert_eq!(est(&silent["contacts"]), 0.0);
    assert_eq!(silent["contacts"]["suppressed"], true);
    assert_eq!(silent["contacts"]["words"]["nb"], "<3");

    // People helped: 5 first conversations (3 + 1 + 1) in 2,520 employees.
    let first = &d["uptake"]["first_conversations"];
    assert_eq!(first["table"], "oppfolging");
    assert_eq!(est(&first["first"]), 5.0);
    assert!((est(&first["per_100"]) - 500.0 / 2520.0).abs() < 1e-9);

    // Breakdowns: four, from the yearly tables, every value of the dimension.
    let dims: Vec<&str> = d["breakdowns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["dimension"].as_str().unwrap())
        .collect();
    assert_eq!(
        dims,
        ["yrkesgruppe", "utlosende_arsak", "initiering", "kanal"]
    );
    let init = &d["breakdowns"][2]["cells"];
    assert_eq!(
        (init[0]["value"].as_str(), est(&init[0]["count"])),
        (Some("selvhenvendt"), 5.0)
    );
    assert_eq!(
        (init[1]["value"].as_str(), est(&init[1]["count"])),
        (Some("oppsokende"), 2.0)
    );

    // Outreach after serious events: 2 of 7.
    let o = &d["outreach_after_serious_events"];
    assert_eq!(o["table"], "arsak_initiering");
    assert_eq!(est(&o["contacts"]), 7.0);
    assert!((est(&o["percent"]) - 200.0 / 7.0).abs() < 1e-9);

    // Hours: 4 × 7.5 + 2 × 67.5 + 1 × 120 minutes = 285 minutes = 4.75 hours over the two
    // months the year's table covers.
    let h = &d["supporter_hours"];
    assert_eq!(h["table"], "varighet");
    assert!((est(&h["per_year"]) - 4.75).abs() < 1e-9);
    assert!((est(&h["per_month"]) - 4.75 / 2.0).abs() < 1e-9);
    assert!(h["per_year"]["low"].as_f64().unwrap() <= 4.75);
    assert!(
        h["per_year"]["high"].as_f64().unwrap() > 4.75,
        "the noise is in the interval"
    );

    // Every interval holds its estimate; "95 %" is said once, in the reading note.
    assert!(d["reading_note"]["nb"].as_str().unwrap().contains("95 %"));
    assert!(d["reading_note"]["en"].as_str().unwrap().contains("95 %"));
    let text = d.to_string();
    assert_eq!(text.matches("95 %").count(), 2, "once per language");
    assert_eq!(d["methods"].as_array().unwrap().len(), 4);
    assert!(
        d.get("yearly_pending").is_none(),
        "2026 is released in full"
    );
    // Low uptake in Q4 for units with nothing: possible, never certain under the declared noise.
    let low = alerts_of(&d, "low_uptake");
    assert!(
        low.iter()
            .any(|a| a["unit"] == "laboratorium" && a["certainty"] == "possible")
    );
    assert!(low.iter().all(|a| a["unit"] != "akuttmottak"));
}

#[tokio::test]
async fn the_demo_history_raises_the_spike_and_the_silent_unit() {
    let dir = tempfile::tempdir().unwrap();
    let d = demo::build(
        dir.path(),
        datetime!(2026-11-23 10:00 UTC),
        Arc::new(ZeroNoise),
    )
    .await
    .unwrap();
    let admin = d
        .svc
        .authenticate(Some(&d.tokens.iter().find(|t| t.0 == "admin").unwrap().2))
        .unwrap();
    let dash = d
        .svc
        .dashboard(&admin, Some(SPIKE_UNIT.0), Some(2026))
        .unwrap();
    let v = serde_json::to_value(&dash).unwrap();
    let spikes = alerts_of(&v, "spike");
    assert!(
        spikes
            .iter()
            .any(|a| a["unit"] == SPIKE_UNIT.1 && a["certainty"] == "certain"),
        "{}",
        v["alerts"]
    );
    let s = spikes.iter().find(|a| a["unit"] == SPIKE_UNIT.1).unwrap();
    assert!(
        s["text"]["nb"]
            .as_str()
            .unwrap()
            .starts_with("Topp (sikkert): Intensivavdeling")
    );
    assert!(
        s["text"]["en"]
            .as_str()
            .unwrap()
            .starts_with("Spike (certain): Intensivavdeling")
    );
    assert!(
        v["yearly_pending"]["nb"]
            .as_str()
            .unwrap()
            .starts_with("Årstallene for 2026"),
        "the year is not over: {}",
        v["yearly_pending"]
    );
    let silent = alerts_of(&v, "no_uptake");
    assert!(
        silent.iter().any(|a| a["unit"] == SILENT_UNIT.1),
        "{}",
        v["alerts"]
    );
    // Units below the headcount threshold are never flagged for no uptake.
    let policy = d.svc.policy();
    let small: Vec<&str> = policy
        .org(SPIKE_UNIT.0)
        .unwrap()
        .units
        .iter()
        .filter(|u| u.headcount < policy.thresholds.no_uptake_min_headcount)
        .map(|u| u.id.as_str())
        .collect();
    assert!(
        silent
            .iter()
            .all(|a| !small.contains(&a["unit"].as_str().unwrap()))
    );
}

#[test]
fn numbers_read_as_estimate_and_likely_range_never_a_bare_digit() {
    let n = Num::new(12.0, 8.0, 16.0, 0);
    assert_eq!(n.words.nb, "ca. 12 (trolig 8–16)");
    assert_eq!(n.words.en, "about 12 (likely 8–16)");
    let per = n.scaled(100.0 / 300.0, 1);
    assert_eq!(per.words.nb, "ca. 4,0 (trolig 2,7–5,3)");
    let v = serde_json::to_value(&per).unwrap();
    for k in ["estimate", "low", "high", "suppressed", "words"] {
        assert!(v.get(k).is_some(), "{k} in {v}");
    }
    assert_eq!(tellestrek::service::words(&n), n.words);
}

/// A quarter of helse-vestfjord's data drawn as the release job draws it: three monthly totals,
/// then the unit and load tables, whose total is combined with the months'. Returns the unit
/// and load releases.
fn draw_quarter(policy: &Policy, per_unit: &[u64], supporters: &[u32]) -> (Release, Release) {
    let org = policy.org("helse-vestfjord").unwrap();
    let quarter: Period = "2026-Q3".parse().unwrap();
    let months = base_periods_in(quarter, Granularity::Month);
    let tags: tellestrek::domain::TagSet = policy
        .dimensions
        .iter()
        .map(|d| (d.id.clone(), d.values[0].id.clone()))
        .collect();
    let mut raw = Vec::new();
    for (u, &n) in org.units.iter().zip(per_unit) {
        for (i, &month) in months.iter().enumerate() {
            // Spread the quarter's contacts over its months.
            let share = n / 3 + u64::from((i as u64) < n % 3);
            if share > 0 {
                let key = CellKey {
                    period: month,
                    org: org.id.clone(),
                    unit: u.id.clone(),
                    tags: tags.clone(),
                };
                raw.push((key, share));
            }
        }
    }
    let m = |id: &str| policy.marginal(id).unwrap();
    let mut finer = Vec::new();
    for &month in &months {
        let month_raw: Vec<(CellKey, u64)> = raw
            .iter()
            .filter(|(k, _)| k.period == month)
            .cloned()
            .collect();
        let input = BatchInput {
            policy,
            org,
            period: month,
            covers: vec![month],
            marginals: vec![m("total")],
            raw: &month_raw,
            supporters: &[],
            finer: &[],
        };
        finer.extend(
            draw_batch(&input, &OpenDpNoise)
                .unwrap()
                .into_iter()
                .map(|(r, _)| r),
        );
    }
    let input = BatchInput {
        policy,
        org,
        period: quarter,
        covers: months.clone(),
        marginals: vec![m("unit"), m("load")],
        raw: &raw,
        supporters,
        finer: &finer,
    };
    let mut out = draw_batch(&input, &OpenDpNoise)
        .unwrap()
        .into_iter()
        .map(|(r, _)| r);
    (out.next().unwrap(), out.next().unwrap())
}

/// Rates of `possible` (or `certain`) and of `certain` alerts over trials.
#[derive(Default, Debug)]
struct Rate {
    possible: usize,
    certain: usize,
    n: usize,
}

impl Rate {
    fn add(&mut self, c: Option<Certainty>) {
        self.n += 1;
        self.possible += usize::from(c.is_some());
        self.certain += usize::from(c == Some(Certainty::Certain));
    }
    fn rates(&self) -> (f64, f64) {
        let n = self.n as f64;
        (self.possible as f64 / n, self.certain as f64 / n)
    }
}

/// Each alert rule's false-alarm rate and power, measured with real OpenDP noise through the
/// release path, against the figures the dashboard publishes (`METHODS`).
///
/// 2,000 quarters without change and 2,000 with, of helse-vestfjord (unit table ε 0.4, load
/// ε 0.2, with the monthly totals combined in as the release job does). Units play the rules'
/// cases: five units of 6 contacts a quarter (tripled to 18) for the spike rule, each judged
/// against 4 quarters without change (2,000 trials without change, 2,500 with); two large units
/// with 3 contacts a quarter (none with change) for no uptake over 2 quarters (2,000 trials
/// each); a unit of 300 with 3 (none) for low uptake (2,000 each); 10 supporters over 3 months
/// with 1 contact a month each (3 of them with 5 in one month) for load (2,000 each).
///
/// Each published rate `p` (rounded to 0.01) must lie within 4.4 standard errors
/// (√(max(p, 0.01)·(1 − p)/n)) plus 0.005 of the measured one; with 16 checks a correct
/// implementation fails with probability below about 1 in 5,000 (units of one quarter share the
/// combined total's noise, a weak dependence the margin absorbs). About 25 s in a debug build.
#[test]
fn alert_rules_false_alarm_rate_and_power_match_the_published_figures() {
    let policy = Policy::builtin();
    let th = &policy.thresholds;
    const SPIKE_UNITS: [usize; 5] = [0, 1, 3, 4, 6];
    const NO_UPTAKE_UNITS: [usize; 2] = [2, 5];
    const LOW_UNIT: usize = 7;
    let null_units = [6, 6, 3, 6, 6, 3, 6, 3, 5];
    let changed_units = [18, 18, 0, 18, 18, 0, 18, 0, 5];
    let null_supporters = vec![1u32; 30];
    let mut changed_supporters = vec![1u32; 27];
    changed_supporters.extend([5, 5, 5]);
    const N: usize = 2000;
    let draws = |units: &[u64], sup: &[u32]| -> Vec<(Release, Release)> {
        (0..N).map(|_| draw_quarter(&policy, units, sup)).collect()
    };
    let null = draws(&null_units, &null_supporters);
    let changed = draws(&changed_units, &changed_supporters);
    let sb = policy.privacy.suppress_below;
    let unit_num = |r: &Release, i: usize| Num::from_cell(&r.cells[i], sb);
    let loaded = |r: &Release| {
        let c = r
            .cells
            .iter()
            .find(|c| c.key["supporters"] == "at_or_above_threshold")
            .unwrap();
        Num::from_cell(c, sb)
    };
    let headcount = f64::from(policy.org("helse-vestfjord").unwrap().units[LOW_UNIT].headcount);

    let mut rates: Vec<(&str, Rate, Rate)> = Vec::new();
    // Low uptake.
    let (mut f, mut p) = (Rate::default(), Rate::default());
    for (set, rate) in [(&null, &mut f), (&changed, &mut p)] {
        for (u, _) in set {
            let per = unit_num(u, LOW_UNIT).scaled(100.0 / headcount, 1);
            rate.add(low_uptake(&per, th.low_uptake_per_100_per_quarter));
        }
    }
    rates.push(("low_uptake", f, p));
    // No uptake over the policy's quarters.
    let q = th.no_uptake_quarters as usize;
    let (mut f, mut p) = (Rate::default(), Rate::default());
    for (set, rate) in [(&null, &mut f), (&changed, &mut p)] {
        for chunk in set.chunks_exact(q) {
            for &i in &NO_UPTAKE_UNITS {
                let w: Vec<Num> = chunk.iter().map(|(u, _)| unit_num(u, i)).collect();
                rate.add(no_uptake(&w));
            }
        }
    }
    rates.push(("no_uptake", f, p));
    // Spikes against 4 baseline quarters.
    let (mut f, mut p) = (Rate::default(), Rate::default());
    let judge = |base: &[(Release, Release)], current: &Release, i: usize| {
        let b: Vec<f64> = base
            .iter()
            .map(|(u, _)| u.cells[i].estimate as f64)
            .collect();
        spike(
            current.cells[i].estimate as f64,
            &b,
            cell_variance(current),
            th.spike_ratio,
            th.spike_min_expected,
        )
    };
    for g in null.chunks_exact(5) {
        for &i in &SPIKE_UNITS {
            f.add(judge(&g[..4], &g[4].0, i));
        }
    }
    for (g, (c, _)) in null.chunks_exact(4).zip(&changed) {
        for &i in &SPIKE_UNITS {
            p.add(judge(g, c, i));
        }
    }
    rates.push(("spike", f, p));
    // Supporter load.
    let (mut f, mut p) = (Rate::default(), Rate::default());
    for (set, rate) in [(&null, &mut f), (&changed, &mut p)] {
        for (_, l) in set {
            rate.add(supporter_load(&loaded(l)));
        }
    }
    rates.push(("supporter_load", f, p));

    let mut report = String::new();
    let mut bad = Vec::new();
    for ((rule, f, p), published) in rates.iter().zip(METHODS.iter()) {
        assert_eq!(*rule, published.rule);
        let (fp, fc) = f.rates();
        let (pp, pc) = p.rates();
        report.push_str(&format!(
            "{rule}: false alarm possible {fp:.3} certain {fc:.3} (n {}), power possible {pp:.3} certain {pc:.3} (n {})\n",
            f.n, p.n
        ));
        for (what, measured, claimed, n) in [
            (
                "false_alarm_possible",
                fp,
                published.false_alarm_possible,
                f.n,
            ),
            (
                "false_alarm_certain",
                fc,
                published.false_alarm_certain,
                f.n,
            ),
            ("power_possible", pp, published.power_possible, p.n),
            ("power_certain", pc, published.power_certain, p.n),
        ] {
            let se = (claimed.max(0.01) * (1.0 - claimed) / n as f64).sqrt();
            if (measured - claimed).abs() > 4.4 * se + 0.005 {
                bad.push(format!(
                    "{rule}.{what}: published {claimed}, measured {measured:.3}"
                ));
            }
        }
    }
    println!("{report}");
    assert!(bad.is_empty(), "{bad:?}\n{report}");
}
