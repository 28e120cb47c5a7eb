//! Issue 10: Prometheus metrics that leak nothing, JSON logs and the startup line.
//!
//! - After a burst of N ticks, neither `/metrics` nor the whole log at `trace` holds N, a
//!   token, a stored secret or pseudonym, an idempotency key, or the tag combination only the
//!   tick bodies held; and `/metrics` is byte-identical whether the burst had 10 or 11 ticks.
//! - `/metrics` behind a token refuses a missing or wrong token (401); with metrics off it is
//!   a 404 and the startup line says so.
//! - `--log-format json` writes one JSON object per line; the startup line names the policy
//!   (and its fingerprint), the data directory, the address, where `/metrics` is and the log
//!   level, and no secret.

use std::path::Path;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tellestrek::metrics::Metrics;
use time::macros::datetime;

use crate::helpers::{
    ADMIN as APP_ADMIN, Binary, TestApp, client, encodings, remote_token, stored_secrets, tick_body,
};

/// The admin token of these tests (set through `TELLESTREK_ADMIN_TOKEN`, so two runs match).
const ADMIN: &str = "metrics-test-admin-token-0123456789";

/// A Monday in March: no part of the date is 10 or 11, so the scans below can look for the
/// number of ticks sent as a bare number anywhere in the log.
const NOW: &str = "2026-03-16T09:00:00Z";

/// Starts `serve` with `args` at `trace`, everything it prints appended to `log`.
fn serve(data: &Path, args: &[&str], log: &Arc<Mutex<String>>) -> Binary {
    let mut cmd = Binary::serve_command(data, None, NOW);
    cmd.args(args)
        .env("TELLESTREK_LOG", "trace")
        .env("TELLESTREK_ADMIN_TOKEN", ADMIN)
        .env_remove("TELLESTREK_LOG_FORMAT")
        .env_remove("TELLESTREK_METRICS_LISTEN")
        .env_remove("TELLESTREK_METRICS_TOKEN_FILE");
    Binary::start(cmd, Some(log.clone()))
}

/// The metrics address the startup line names (`metrics: http://ADDR/metrics ...`).
fn metrics_url(banner: &str) -> String {
    let re = regex::Regex::new(r"metrics: (http://\S+/metrics) without a token").unwrap();
    re.captures(banner)
        .unwrap_or_else(|| panic!("no metrics address in the startup line: {banner}"))[1]
        .to_string()
}

/// The metrics text with only the values that measure wall-clock time masked: the sums and
/// the finite buckets of the two duration histograms. They time requests to other routes and
/// the lifecycle job, which take a different number of microseconds in any two runs; their
/// `_count` and `+Inf` bucket (how many were timed) are compared exactly. Nothing else is
/// masked: there are no process metrics.
fn masked(text: &str) -> String {
    text.lines()
        .map(|l| {
            let timed = l.starts_with("tellestrek_http_request_duration_seconds_")
                || l.starts_with("tellestrek_release_job_duration_seconds_");
            let exact = l.contains("_count") || l.contains("le=\"+Inf\"");
            match l.rsplit_once(' ') {
                Some((series, _)) if timed && !exact && !l.starts_with('#') => {
                    format!("{series} <time>")
                }
                _ => l.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Scrapes `url` until the lifecycle job's first run (at start) is recorded, so two runs are
/// compared at the same point; returns the text.
async fn scrape_after_first_job(c: &reqwest::Client, url: &str) -> String {
    for _ in 0..200 {
        let text = c.get(url).send().await.unwrap().text().await.unwrap();
        if text.contains("tellestrek_release_job_runs_total{outcome=\"ok\"} 1") {
            return text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the lifecycle job did not run at start");
}

/// One fresh server: the same requests, a burst of `sent` ticks in a tag combination of their
/// own, then a scrape. Checks the scrape and the whole log; returns the scrape.
async fn burst_and_scrape(sent: usize) -> String {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = Arc::new(Mutex::new(String::new()));
    let server = serve(&data, &["--metrics-listen", "127.0.0.1:0"], &log);
    let url = metrics_url(&server.banner);
    let c = client();
    let before = scrape_after_first_job(&c, &url).await;
    let sup = remote_token(
        &c,
        &server.base,
        ADMIN,
        "supporter",
        Some("helse-vestfjord"),
    )
    .await;
    let leader = remote_token(&c, &server.base, ADMIN, "leader", Some("helse-vestfjord")).await;
    // Requests that are counted, the same in every run.
    for (path, token) in [
        ("/readyz", None),
        ("/api/v1/budget", Some(&leader)),
        ("/api/v1/periods", Some(&leader)),
        ("/no/such/path", None),
    ] {
        let mut r = c.get(format!("{}{path}", server.base));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send().await.unwrap();
    }
    // The burst: unit `intensiv` and the last value of every dimension, a combination that
    // only these tick bodies held.
    let policy = tellestrek::policy::Policy::builtin();
    let mut body = tick_body();
    body["unit"] = json!("intensiv");
    let mut combination = vec!["intensiv".to_string()];
    for d in &policy.dimensions {
        let v = &d.values.last().unwrap().id;
        body["tags"][&d.id] = json!(v);
        combination.push(v.clone());
    }
    for n in 0..sent {
        let r = c
            .post(format!("{}/api/v1/ticks", server.base))
            .bearer_auth(&sup)
            .header("idempotency-key", format!("burst-key-{n}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    }
    let scrape = c.get(&url).send().await.unwrap();
    assert_eq!(scrape.status(), 200);
    assert_eq!(
        scrape.headers()["content-type"],
        "text/plain; version=0.0.4"
    );
    let text = scrape.text().await.unwrap();
    assert!(server.terminate().success());

    // What is there: the counted requests, by route template, and the gauges.
    for series in [
        r#"tellestrek_http_requests_total{method="GET",route="/readyz",status="200"} 1"#,
        r#"tellestrek_http_requests_total{method="POST",route="/api/v1/tokens",status="201"} 2"#,
        r#"tellestrek_http_requests_total{method="GET",route="unmatched",status="404"} 1"#,
        r#"tellestrek_http_requests_total{method="GET",route="/api/v1/budget",status="200"} 1"#,
        r#"tellestrek_ready 1"#,
        r#"tellestrek_periods{state="open"} 1"#,
        r#"tellestrek_release_job_runs_total{outcome="ok"} 1"#,
        r#"tellestrek_store_released_bytes 0"#,
        r#"tellestrek_privacy_remaining{limit="rolling_year",measure="epsilon",org="helse-vestfjord"} 14"#,
    ] {
        assert!(text.contains(series), "missing {series} in:\n{text}");
    }
    // The burst moved nothing: the gauges before it and after it are the same, but for the
    // request counts of the setup above.
    let gauges = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| !l.contains("tellestrek_http_"))
            .map(String::from)
            .collect()
    };
    assert_eq!(gauges(&masked(&before)), gauges(&masked(&text)));

    // What is not there, in the metrics or anywhere in the log at `trace`.
    // Each log line starts with the moment it was written (the machine's clock, not
    // TELLESTREK_NOW); that is when the log line was made, not what it says, so it is left
    // out of the scan, which would otherwise find today's date in it.
    let stamp = regex::Regex::new(r"(?m)^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z ").unwrap();
    let all_log = stamp.replace_all(&log.lock().unwrap(), "").into_owned();
    assert!(all_log.contains("listening on"), "{all_log}");
    assert!(
        !all_log.contains('\u{1b}'),
        "colour codes in a log that is not a terminal"
    );
    let secrets = stored_secrets(&data);
    assert!(secrets.len() > 5);
    let count = regex::Regex::new(&format!(r"\b{sent}\b")).unwrap();
    for (what, out) in [("the metrics", &text), ("the log", &all_log)] {
        assert!(
            !count.is_match(out),
            "the number of ticks sent ({sent}) is in {what}:\n{out}"
        );
        for t in [ADMIN, sup.as_str(), leader.as_str()] {
            assert!(!out.contains(t), "a token is in {what}");
        }
        for s in &secrets {
            for e in encodings(s) {
                assert!(!out.contains(&e), "a stored secret is in {what}: {e}");
            }
        }
        assert!(
            !out.contains("burst-key"),
            "an idempotency key is in {what}"
        );
        assert!(
            !out.contains("/api/v1/ticks"),
            "the tick route is in {what}"
        );
        assert!(
            !combination.iter().all(|v| out.contains(v.as_str())),
            "the burst's tag combination {combination:?} is in {what}"
        );
        assert!(!out.contains("intensiv"), "the burst's unit is in {what}");
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_ticks_is_in_no_metric_and_no_log_line_and_10_or_11_scrape_the_same() {
    let ten = burst_and_scrape(10).await;
    let eleven = burst_and_scrape(11).await;
    assert_eq!(
        masked(&ten),
        masked(&eleven),
        "the metrics differ between a burst of 10 and of 11 ticks"
    );
    // The mask hid only times (the finite buckets and sums of the two duration histograms);
    // every other value, the requests counted per route included, was compared byte for byte.
    let masked_ten = masked(&ten);
    for l in masked_ten.lines().filter(|l| l.ends_with("<time>")) {
        assert!(l.contains("_duration_seconds_"), "{l}");
    }
    let exact = masked_ten
        .lines()
        .filter(|l| !l.starts_with('#') && !l.ends_with("<time>"))
        .count();
    assert!(exact >= 40, "only {exact} values compared exactly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_behind_a_token_refuse_a_missing_or_wrong_token() {
    let dir = tempfile::tempdir().unwrap();
    let token = "metrics-scraper-token-abcdefghijklmnop";
    let file = dir.path().join("metrics-token");
    std::fs::write(&file, format!("{token}\n")).unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let server = serve(
        &dir.path().join("data"),
        &["--metrics-token-file", file.to_str().unwrap()],
        &log,
    );
    assert!(
        server.banner.contains("/metrics behind a bearer token"),
        "{}",
        server.banner
    );
    let c = client();
    let url = format!("{}/metrics", server.base);
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "missing_token", "{v}");
    for wrong in [ADMIN, "metrics-scraper-token-abcdefghijklmnoq", ""] {
        let r = c.get(&url).bearer_auth(wrong).send().await.unwrap();
        assert_eq!(r.status(), 401, "{wrong}");
    }
    let r = c.get(&url).bearer_auth(token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/plain; version=0.0.4");
    let text = r.text().await.unwrap();
    assert!(text.contains("tellestrek_ready 1"), "{text}");
    // The scrape itself is not counted; the refused ones are not either.
    assert!(!text.contains("route=\"/metrics\""), "{text}");
    assert!(server.terminate().success());
    let all = log.lock().unwrap().clone();
    assert!(!all.contains(token), "the metrics token is in the output");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_metrics_off_there_is_no_metrics_route_and_the_startup_line_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let server = serve(&dir.path().join("data"), &[], &log);
    assert!(server.banner.contains("metrics: off"), "{}", server.banner);
    let r = client()
        .get(format!("{}/metrics", server.base))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "not_found", "{v}");
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metrics_token_file_too_short_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("metrics-token");
    std::fs::write(&file, "short\n").unwrap();
    let out = Binary::serve_command(&dir.path().join("data"), None, NOW)
        .args(["--metrics-token-file", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("at least 20 characters"), "{err}");
    assert!(
        !err.contains("short"),
        "the token file's content is in the error: {err}"
    );
    assert!(
        !dir.path().join("data").exists(),
        "a failed start created the data directory"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line_and_the_startup_line_says_what_runs_where() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = Arc::new(Mutex::new(String::new()));
    let mut cmd = Binary::serve_command(&data, None, NOW);
    cmd.args(["--log-format", "json", "--metrics-listen", "127.0.0.1:0"])
        .env("TELLESTREK_LOG", "debug")
        .env("TELLESTREK_ADMIN_TOKEN", ADMIN);
    let server = Binary::start(cmd, Some(log.clone()));
    // A token creation is logged at info.
    let c = client();
    remote_token(&c, &server.base, ADMIN, "leader", Some("helse-vestfjord")).await;
    let banner = server.banner.clone();
    let server_addr = server.base.trim_start_matches("http://").to_string();
    assert!(server.terminate().success());

    // The startup line on standard output.
    let line = banner
        .lines()
        .find(|l| l.contains("listening on"))
        .unwrap()
        .to_string();
    let policy = data.with_extension("policy.toml");
    for part in [
        format!("data: {}", data.display()),
        format!("policy: {}", policy.display()),
        format!(
            "policy fingerprint: {}",
            tellestrek::auth::text_fingerprint(tellestrek::policy::DEFAULT_POLICY)
        ),
        "metrics: http://127.0.0.1:".to_string(),
        "log: level debug, format json".to_string(),
    ] {
        assert!(line.contains(&part), "{part} is not in {line}");
    }
    assert!(!line.contains(ADMIN));

    // Standard error: every line a JSON object, the startup line among them.
    let all = log.lock().unwrap().clone();
    let stderr: Vec<&str> = all
        .lines()
        .filter(|l| !banner.lines().any(|b| b == *l))
        .collect();
    assert!(stderr.len() >= 2, "{all}");
    let mut seen_start = false;
    let mut seen_token = false;
    for l in &stderr {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{l}");
        let message = v["fields"]["message"].as_str().unwrap_or_default();
        if message == line {
            seen_start = true;
            assert_eq!(v["fields"]["listen"], server_addr, "{l}");
            assert!(v["fields"]["policy_fingerprint"].is_string(), "{l}");
        }
        seen_token |= message == "token created";
    }
    assert!(seen_start, "no JSON startup line in {all}");
    assert!(seen_token, "no JSON token line in {all}");
    assert!(!all.contains(ADMIN), "the admin token is in the log");
}

/// The value of the series `series` (name and labels exactly as written) in a scrape.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

#[tokio::test]
async fn tick_routes_are_neither_counted_nor_timed_whatever_the_answer() {
    let mut app = TestApp::new();
    let m = Metrics::new(app.svc.clone()).unwrap();
    app.router = tellestrek::server::app_with(app.svc.clone(), Some(&m), None);
    let sup = app.token("supporter", Some("helse-vestfjord")).await;
    app.tick(&sup, "helse-vestfjord", "akuttmottak", &[], 1)
        .await;
    // Every tick route, every answer: stored, refused, redirected, wrong method.
    for (method, path) in [
        ("GET", "/tick"),
        ("POST", "/tick"),
        ("POST", "/tick/edit"),
        ("GET", "/tick/done"),
        ("POST", "/api/v1/ticks"),
        ("GET", "/api/v1/ticks"),
    ] {
        app.raw(method, path, None, None, "application/json").await;
    }
    app.call("GET", "/api/v1/policy", None, None).await;
    app.call("GET", "/no/such/path/12345", None, None).await;
    let text = String::from_utf8(m.render()).unwrap();
    for series in [
        r#"tellestrek_http_requests_total{method="POST",route="/api/v1/tokens",status="201"}"#,
        r#"tellestrek_http_requests_total{method="GET",route="/api/v1/policy",status="401"}"#,
        r#"tellestrek_http_requests_total{method="GET",route="unmatched",status="404"}"#,
        r#"tellestrek_http_request_duration_seconds_count{method="GET",route="/api/v1/policy"}"#,
    ] {
        assert_eq!(value(&text, series), Some(1.0), "{series} in {text}");
    }
    assert!(!text.contains("12345"), "a raw path is a label: {text}");
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(!l.contains("tick"), "a tick route is in the metrics: {l}");
    }
}

#[tokio::test]
async fn the_release_gauges_show_what_the_api_serves() {
    let app = TestApp::new();
    let sup = app.token("supporter", Some("helse-vestfjord")).await;
    app.tick(&sup, "helse-vestfjord", "akuttmottak", &[], 10)
        .await;
    // December: November is closed and released.
    app.at(datetime!(2026-12-10 08:00 UTC));
    let report = app.svc.run_lifecycle().await.unwrap();
    assert!(!report.drawn.is_empty());
    let m = Metrics::new(app.svc.clone()).unwrap();
    let text = String::from_utf8(m.render()).unwrap();

    // The newest monthly total, as the releases API serves it (or absent below the threshold).
    let (_, page) = app
        .call(
            "GET",
            "/api/v1/releases?period=2026-11&org=helse-vestfjord&marginal=total",
            Some(APP_ADMIN),
            None,
        )
        .await;
    let served = &page["releases"][0];
    let estimate = served["total_estimate"].as_f64().unwrap();
    let series =
        r#"tellestrek_release_latest_total{cadence="month",org="helse-vestfjord",table="total"}"#;
    if estimate >= served["suppress_below"].as_f64().unwrap() {
        assert_eq!(value(&text, series), Some(estimate), "{text}");
    } else {
        assert_eq!(value(&text, series), None, "{text}");
    }
    // Released data's size: the stored releases, byte for byte.
    let store = app.svc.store();
    let mut bytes = 0;
    for e in store
        .release_index(&tellestrek::store::ReleaseScan::default(), None)
        .unwrap()
    {
        bytes += store.release_bytes(&e.unwrap().id).unwrap().unwrap().len();
    }
    assert!(bytes > 0);
    assert_eq!(
        value(&text, "tellestrek_store_released_bytes"),
        Some(bytes as f64)
    );
    // ε spent and left, as the budget API says.
    let (_, budget) = app
        .call("GET", "/api/v1/budget", Some(APP_ADMIN), None)
        .await;
    let org = budget["orgs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["org"] == "helse-vestfjord")
        .unwrap();
    let year = &org["rolling_year"];
    assert!(year["most_spent"].as_f64().unwrap() > 0.0);
    for (metric, v) in [
        ("tellestrek_privacy_spent", &year["most_spent"]),
        ("tellestrek_privacy_remaining", &year["remaining"]),
    ] {
        let series =
            format!(r#"{metric}{{limit="rolling_year",measure="epsilon",org="helse-vestfjord"}}"#);
        assert_eq!(value(&text, &series), v.as_f64(), "{series} in {text}");
    }
    assert_eq!(
        value(&text, r#"tellestrek_periods{state="open"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(&text, r#"tellestrek_periods{state="released"}"#).unwrap()
            + value(&text, r#"tellestrek_periods{state="purged"}"#).unwrap(),
        1.0,
        "{text}"
    );
}

#[tokio::test]
async fn the_grafana_dashboard_is_json_and_uses_only_metrics_the_server_exports() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana-dashboard.json"
    ))
    .unwrap();
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is valid JSON");
    assert!(dashboard["panels"].as_array().is_some_and(|p| p.len() > 5));
    // A server that has answered a request and drawn releases, so every family has series
    // (without noise, so the newest total is above the display threshold).
    let mut app = TestApp::zero_noise();
    let m = Metrics::new(app.svc.clone()).unwrap();
    app.router = tellestrek::server::app_with(app.svc.clone(), Some(&m), None);
    let sup = app.token("supporter", Some("helse-vestfjord")).await;
    app.tick(&sup, "helse-vestfjord", "akuttmottak", &[], 10)
        .await;
    app.at(datetime!(2026-12-10 08:00 UTC));
    app.svc.run_lifecycle().await.unwrap();
    let scrape = String::from_utf8(m.render()).unwrap();
    let exported: std::collections::BTreeSet<&str> = scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let used: std::collections::BTreeSet<&str> = regex::Regex::new(r"tellestrek_[a-z_]+")
        .unwrap()
        .find_iter(&text)
        .map(|m| m.as_str())
        .collect();
    assert!(used.len() >= 10, "{used:?}");
    let missing: Vec<&&str> = used.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "the dashboard uses metrics the server does not export: {missing:?}\nexported: {exported:?}"
    );
}
