//! Issue 7: faults lose nothing acknowledged and count nothing twice.
//!
//! - A resent tick with the same `Idempotency-Key` is counted once and answered as the first.
//! - A full disk (a real, size-limited tmpfs; the test says so and skips only where it cannot
//!   mount one) gets 503s for writes while reads go on, `/readyz` fails while `/healthz` stays
//!   up, the server recovers by itself when space returns, and every acknowledged tick is
//!   counted while no tick answered 503 is.
//! - The release job is killed at each of its steps (`TELLESTREK_TEST_ABORT_AT`); after a restart
//!   every release a reader was served before the crash is served unchanged, each release has one
//!   ledger entry, and raw data is purged.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::{Value, json};
use tellestrek::store::Store;

use crate::helpers::{Binary, TestApp, client, remote_token, tick_body};

const ADMIN: &str = "faults-test-admin-token-0123456789";

#[tokio::test]
async fn a_resent_tick_with_the_same_idempotency_key_is_counted_once() {
    let app = TestApp::new();
    let sup = app.token("supporter", Some("helse-vestfjord")).await;
    let send = |key: Option<&'static str>, count: u32| {
        let mut body = tick_body();
        body["count"] = json!(count);
        let router = app.router.clone();
        let sup = sup.clone();
        async move {
            let mut req = axum::http::Request::builder()
                .method("POST")
                .uri("/api/v1/ticks")
                .header("authorization", format!("Bearer {sup}"))
                .header("content-type", "application/json");
            if let Some(k) = key {
                req = req.header("idempotency-key", k);
            }
            let req = req.body(axum::body::Body::from(body.to_string())).unwrap();
            let resp = tower::ServiceExt::oneshot(router, req).await.unwrap();
            let replayed = resp
                .headers()
                .get("idempotent-replayed")
                .map(|v| v.to_str().unwrap().to_string());
            let status = resp.status();
            let bytes = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .unwrap()
                .to_bytes();
            (
                status,
                replayed,
                serde_json::from_slice::<Value>(&bytes).unwrap(),
            )
        }
    };
    let first = send(Some("9f1c2a7e-0b55-4d1e-9a57-2d1a5c3e7f10"), 2).await;
    assert_eq!(first.0, StatusCode::CREATED);
    assert_eq!(first.1.as_deref(), Some("false"));
    // The client lost the answer and sends again, even with another count by mistake.
    let again = send(Some("9f1c2a7e-0b55-4d1e-9a57-2d1a5c3e7f10"), 2).await;
    assert_eq!(again.0, StatusCode::CREATED);
    assert_eq!(again.1.as_deref(), Some("true"));
    assert_eq!(again.2, first.2, "answered as the first time");
    assert_eq!(app.total("2026-11"), 2, "counted once");
    // Concurrent resends of a new key: one counts.
    let key = "c0ffee00-1111-2222-3333-444455556666";
    let all = futures::future::join_all((0..8).map(|_| send(Some(key), 1))).await;
    assert!(all.iter().all(|r| r.0 == StatusCode::CREATED));
    assert_eq!(
        all.iter()
            .filter(|r| r.1.as_deref() == Some("false"))
            .count(),
        1
    );
    assert_eq!(app.total("2026-11"), 3);
    // Without a key, each request counts; a bad key is refused and changes nothing.
    send(None, 1).await;
    assert_eq!(app.total("2026-11"), 4);
    let before = app.snapshot();
    for bad in ["", "contains space", &"x".repeat(256)] {
        let mut body = tick_body();
        body["count"] = json!(1);
        let req = axum::http::Request::builder()
            .method("POST")
            .uri("/api/v1/ticks")
            .header("authorization", format!("Bearer {sup}"))
            .header("content-type", "application/json")
            .header("idempotency-key", bad)
            .body(axum::body::Body::from(body.to_string()))
            .unwrap();
        let resp = tower::ServiceExt::oneshot(app.router.clone(), req)
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad:?}");
        let bytes = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["error"]["code"], "invalid_idempotency_key");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("Idempotency-Key")
        );
    }
    assert_eq!(app.snapshot(), before);
}

#[tokio::test]
async fn a_tick_whose_sync_fails_is_answered_503_and_not_counted() {
    let app = TestApp::new();
    let sup = app.token("supporter", Some("helse-vestfjord")).await;
    app.tick(&sup, "helse-vestfjord", "akuttmottak", &[], 1)
        .await;
    let before = app.snapshot();
    // The tick is applied in memory, then its sync fails (and the sync of its taking back).
    app.svc.store().fail_next_syncs(1);
    let (s, v) = app
        .call("POST", "/api/v1/ticks", Some(&sup), Some(tick_body()))
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("storage_unavailable")),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not counted"),
        "{v}"
    );
    assert_eq!(app.snapshot(), before, "taken back: nothing changed");
    // When the undo cannot be made durable either, the answer does not pretend to know.
    app.svc.store().fail_next_syncs(2);
    let (s, v) = app
        .call("POST", "/api/v1/ticks", Some(&sup), Some(tick_body()))
        .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("may or may not"),
        "{v}"
    );
    // Later syncs pass: the refused ticks were not counted, the first one was.
    app.tick(&sup, "helse-vestfjord", "akuttmottak", &[], 1)
        .await;
    assert_eq!(app.total("2026-11"), 2);
}

#[tokio::test]
async fn a_resend_after_midnight_at_the_end_of_a_month_is_counted_once_in_the_first_month() {
    let app = TestApp::new();
    app.at(time::macros::datetime!(2026-11-30 23:59:30 UTC));
    let sup = app.token("supporter", Some("helse-vestfjord")).await;
    let send = || async {
        let req = axum::http::Request::builder()
            .method("POST")
            .uri("/api/v1/ticks")
            .header("authorization", format!("Bearer {sup}"))
            .header("content-type", "application/json")
            .header("idempotency-key", "k-123")
            .body(axum::body::Body::from(tick_body().to_string()))
            .unwrap();
        let resp = tower::ServiceExt::oneshot(app.router.clone(), req)
            .await
            .unwrap();
        let replayed = resp.headers()["idempotent-replayed"]
            .to_str()
            .unwrap()
            .to_string();
        let bytes = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        (replayed, serde_json::from_slice::<Value>(&bytes).unwrap())
    };
    let first = send().await;
    assert_eq!(first.1["period"], "2026-11");
    // The answer was lost; the client resends a minute later, in December.
    app.at(time::macros::datetime!(2026-12-01 00:00:30 UTC));
    let again = send().await;
    assert_eq!(again.0, "true");
    assert_eq!(again.1, first.1, "answered as the first time, November");
    assert_eq!(
        app.total("2026-11") + app.total("2026-12"),
        1,
        "counted once"
    );
}

/// Starts `serve` on `data` at instant `now`, with extra environment `env`.
fn start(data: &Path, policy: &Path, now: &str, env: &[(&str, &str)]) -> Binary {
    let mut cmd = Binary::serve_command(data, Some(policy), now);
    cmd.env("TELLESTREK_ADMIN_TOKEN", ADMIN);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Binary::start(cmd, None)
}

fn policy_file(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("policy.toml");
    std::fs::write(&path, tellestrek::policy::DEFAULT_POLICY).unwrap();
    path
}

/// A size-limited tmpfs at `at`, unmounted on drop; `None` where this machine cannot mount.
struct SmallFs(std::path::PathBuf);

impl SmallFs {
    fn mount(at: &Path, mib: u64) -> Option<SmallFs> {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| SmallFs(at.to_path_buf()))
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_503_and_recovers_by_itself_with_every_acknowledged_tick() {
    let dir = tempfile::tempdir().unwrap();
    let Some(fs) = SmallFs::mount(&dir.path().join("small"), 96) else {
        eprintln!("SKIPPED: this machine cannot mount a size-limited tmpfs (needs root)");
        return;
    };
    let data = fs.0.join("data");
    let policy = policy_file(dir.path());
    let server = start(&data, &policy, "2026-11-23T10:00:00Z", &[]);
    let c = client();
    let base = server.base.clone();
    let sup = remote_token(&c, &base, ADMIN, "supporter", Some("helse-vestfjord")).await;
    let tick = |key: String| {
        let (c, base, sup) = (c.clone(), base.clone(), sup.clone());
        async move {
            c.post(format!("{base}/api/v1/ticks"))
                .bearer_auth(&sup)
                .header("idempotency-key", key)
                .json(&tick_body())
                .send()
                .await
                .unwrap()
        }
    };
    let mut acked = 0u64;
    for i in 0..5 {
        assert_eq!(tick(format!("before-{i}")).await.status(), 201);
        acked += 1;
    }
    // Fill the disk, leaving less than the store's reserve.
    let filler = fs.0.join("filler");
    let free = fs2::available_space(&fs.0).unwrap();
    let keep = 8 * 1024 * 1024;
    let f = std::fs::File::create(&filler).unwrap();
    fs2::FileExt::allocate(&f, free - keep).unwrap();
    drop(f);
    let mut refused = 0;
    for i in 0..5 {
        let r = tick(format!("full-{i}")).await;
        assert_eq!(r.status(), 503);
        assert!(r.headers().get("retry-after").is_some());
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "storage_full", "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("disk is full"),
            "{v}"
        );
        refused += 1;
    }
    let r = c.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.json::<Value>().await.unwrap()["reason"], "disk_full");
    assert_eq!(
        c.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // Reads go on; admin writes are refused too.
    let r = c
        .get(format!("{base}/api/v1/releases"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .post(format!("{base}/api/v1/tokens"))
        .bearer_auth(ADMIN)
        .json(&json!({"role": "researcher"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    // Space returns: the server writes again within a minute, without a restart.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = c.get(format!("{base}/readyz")).send().await.unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not ready a minute after space returned"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for i in 0..5 {
        // The refused ticks are resent with their keys and now count, once.
        assert_eq!(tick(format!("full-{i}")).await.status(), 201);
        assert_eq!(tick(format!("full-{i}")).await.status(), 201);
        acked += 1;
    }
    assert_eq!(refused, 5);
    drop(server);
    let store = Store::open(&data).unwrap();
    let total: u64 = store
        .cells_of("2026-11".parse().unwrap())
        .unwrap()
        .iter()
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        total, acked,
        "every acknowledged tick, each once, and no refused one"
    );
    drop(store);
    drop(fs);
}

/// Every release served, by id, with its cells as JSON.
async fn served(c: &reqwest::Client, base: &str) -> Option<BTreeMap<String, Value>> {
    let r = c
        .get(format!("{base}/api/v1/releases"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .ok()?;
    let v: Value = r.json().await.ok()?;
    Some(
        v["releases"]
            .as_array()?
            .iter()
            .map(|r| (r["id"].as_str().unwrap().to_string(), r["cells"].clone()))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_at_any_step_of_the_release_job_draws_each_release_once() {
    for point in tellestrek::fault::POINTS {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let policy = policy_file(dir.path());
        let c = client();
        {
            let server = start(&data, &policy, "2026-11-23T10:00:00Z", &[]);
            let sup = remote_token(
                &c,
                &server.base,
                ADMIN,
                "supporter",
                Some("helse-vestfjord"),
            )
            .await;
            for unit in ["akuttmottak", "intensiv", "intensiv"] {
                let mut body = tick_body();
                body["unit"] = json!(unit);
                let r = c
                    .post(format!("{}/api/v1/ticks", server.base))
                    .bearer_auth(&sup)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 201);
            }
        }
        // February 2027: November's and December's tables, the fourth quarter and the year
        // 2026 are due, and November's raw data is past its retention.
        let later = "2027-02-20T10:00:00Z";
        let mut server = start(
            &data,
            &policy,
            later,
            &[(tellestrek::fault::ABORT_AT_ENV, point)],
        );
        let mut seen: BTreeMap<String, Value> = BTreeMap::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while server.child.try_wait().unwrap().is_none() {
            if let Some(now) = served(&c, &server.base).await {
                seen.extend(now);
            }
            assert!(
                Instant::now() < deadline,
                "{point}: the job never reached the point"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(server);
        // From the first publication on, the reader was served releases before the crash: the
        // comparison below is about numbers somebody saw.
        let published = tellestrek::fault::POINTS
            .iter()
            .position(|p| *p == "release:published")
            .unwrap();
        let at = tellestrek::fault::POINTS
            .iter()
            .position(|p| *p == point)
            .unwrap();
        assert_eq!(!seen.is_empty(), at >= published, "{point}: {seen:?}");
        let server = start(&data, &policy, later, &[]);
        // The admin's release call runs the job to its end, synchronously.
        let r = c
            .post(format!("{}/api/v1/periods/2027-01/release", server.base))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{point}");
        let after = served(&c, &server.base).await.unwrap();
        for (id, cells) in &seen {
            assert_eq!(
                after.get(id),
                Some(cells),
                "{point}: {id} changed after the crash"
            );
        }
        for id in [
            "2026-11/helse-vestfjord/total",
            "2026-Q4/helse-vestfjord/unit",
            "2026/helse-vestfjord/kanal",
        ] {
            assert!(after.contains_key(id), "{point}: {id} missing");
        }
        let budget: Value = c
            .get(format!("{}/api/v1/budget", server.base))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let ledger: Vec<&str> = budget["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["release"].as_str().unwrap())
            .collect();
        let ids: std::collections::BTreeSet<&str> = ledger.iter().copied().collect();
        assert_eq!(
            ids.len(),
            ledger.len(),
            "{point}: one ledger entry per release"
        );
        assert_eq!(
            ids,
            after.keys().map(String::as_str).collect(),
            "{point}: the ledger and the releases agree"
        );
        drop(server);
        assert!(
            !data.join("raw/2026-11").exists(),
            "{point}: November's raw data is purged"
        );
    }
}
