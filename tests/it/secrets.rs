//! Issue 7: secrets, files and logs.
//!
//! - At the most verbose log setting, a burst of ticks and a release leave in the output no
//!   token, no key, secret or pseudonym, no count of what was sent, and no line from a
//!   dependency below `warn`; the first admin token goes to a 0600 file, never to the output.
//! - The data directory is 0700 with 0600 files.
//! - The last admin cannot revoke itself, even in a race; `admin-token` recovers an admin.
//! - The server key can live in a key file; the data directory then holds no key and refuses
//!   to start without the right file.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use serde_json::json;
use tellestrek::store::Store;

use crate::helpers::{
    Binary, TestApp, client, encodings, files, remote_token, stored_secrets, tick_body,
};

/// Starts `serve` at `now` with `args` at the most verbose log level, everything it prints
/// appended to `log`.
fn serve(data: &Path, now: &str, args: &[&str], log: &Arc<Mutex<String>>) -> Binary {
    let mut cmd = Binary::serve_command(data, None, now);
    cmd.args(args).env("TELLESTREK_LOG", "trace");
    Binary::start(cmd, Some(log.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_most_verbose_log_holds_no_secret_count_or_tick_and_files_are_private() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let output = Arc::new(Mutex::new(String::new()));
    let server = serve(&data, "2026-11-23T10:00:00Z", &[], &output);
    let token_file = dir.path().join("data.admin-token");
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "the admin token file is the service user's alone"
    );
    let admin = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_string();
    let c = client();
    let mut tokens = vec![admin.clone()];
    // A burst of 37 contacts from three supporters, in cells of their own.
    let sent = 37;
    let mut n = 0;
    for s in 0..3 {
        let sup = remote_token(
            &c,
            &server.base,
            &admin,
            "supporter",
            Some("helse-vestfjord"),
        )
        .await;
        tokens.push(sup.clone());
        while n < sent * (s + 1) / 3 {
            let mut body = tick_body();
            body["unit"] = json!(["intensiv", "akuttmottak", "fodeavdeling"][s]);
            let r = c
                .post(format!("{}/api/v1/ticks", server.base))
                .bearer_auth(&sup)
                .header("idempotency-key", format!("burst-key-{n}"))
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
            n += 1;
        }
    }
    assert_eq!(n, sent);
    assert!(server.terminate().success());
    // December: November is released by the job at start and on demand.
    let server = serve(&data, "2026-12-10T10:00:00Z", &[], &output);
    let r = c
        .post(format!("{}/api/v1/periods/2026-11/release", server.base))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(format!("{}/api/v1/releases?period=2026-11", server.base))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(server.terminate().success());

    // Files: the data directory and everything in it are the service user's alone.
    let mut all = Vec::new();
    files(&data, &mut all);
    assert!(!all.is_empty());
    for f in &all {
        let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", f.display());
        let mut d = f.parent().unwrap();
        while d.starts_with(&data) {
            let mode = std::fs::metadata(d).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", d.display());
            d = d.parent().unwrap();
        }
    }

    let log = output.lock().unwrap().clone();
    assert!(log.contains("listening on"), "{log}");
    // Secrets: tokens, and every stored key, secret and pseudonym, in any encoding.
    let secrets = stored_secrets(&data);
    assert!(secrets.len() > 5);
    for t in &tokens {
        assert!(!log.contains(t.as_str()), "a token is in the log");
    }
    for s in &secrets {
        for e in encodings(s) {
            assert!(!log.contains(&e), "a stored secret is in the log: {e}");
        }
    }
    // No count of what was sent, no idempotency key, no tick route, no dependency's debug.
    // Each line's own timestamp (the machine clock, e.g. `01:39:37`) is left out of the
    // search for the count: it would match whenever the seconds read 37.
    let stamp = regex::Regex::new(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z").unwrap();
    let unstamped = stamp.replace_all(&log, "<time>");
    let count = regex::Regex::new(&format!(r"\b{sent}\b")).unwrap();
    assert!(
        !count.is_match(&unstamped),
        "the number of ticks sent is in the log:\n{log}"
    );
    assert!(
        !log.contains("burst-key"),
        "an idempotency key is in the log"
    );
    assert!(
        !log.contains("/api/v1/ticks"),
        "a tick request is in the log"
    );
    for line in log.lines() {
        let lower_level = line.contains(" DEBUG ") || line.contains(" TRACE ");
        assert!(
            !lower_level || line.contains(" tellestrek"),
            "a dependency logs below warn: {line}"
        );
    }
}

#[tokio::test]
async fn the_last_admin_cannot_revoke_itself_even_in_a_race() {
    for _ in 0..10 {
        let app = TestApp::new();
        let other = app.token("admin", None).await;
        let (_, list) = app.call("GET", "/api/v1/tokens", Some(&other), None).await;
        let ids: Vec<String> = list["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(ids.len(), 2);
        // Each admin revokes the other at the same time: one must stay.
        let (p0, p1) = (
            format!("/api/v1/tokens/{}", ids[0]),
            format!("/api/v1/tokens/{}", ids[1]),
        );
        let a = app.call("DELETE", &p0, Some(crate::helpers::ADMIN), None);
        let b = app.call("DELETE", &p1, Some(&other), None);
        let c = app.call("DELETE", &p1, Some(crate::helpers::ADMIN), None);
        let d = app.call("DELETE", &p0, Some(&other), None);
        let results = futures::future::join4(a, b, c, d).await;
        let admins = app
            .svc
            .store()
            .tokens()
            .unwrap()
            .into_iter()
            .filter(|t| t.role == tellestrek::domain::Role::Admin)
            .count();
        assert_eq!(admins, 1, "{results:?}");
        let refused = [&results.0, &results.1, &results.2, &results.3]
            .iter()
            .filter(|r| r.0 == StatusCode::CONFLICT && r.1["error"]["code"] == "last_admin_token")
            .count();
        assert!(refused >= 1, "{results:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_token_recovers_an_admin_and_a_key_file_keeps_the_key_out_of_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let output = Arc::new(Mutex::new(String::new()));
    let key = dir.path().join("server-key");
    std::fs::write(&key, tellestrek::auth::random_secret().unwrap()).unwrap();
    let key_arg = key.to_str().unwrap();
    let server = serve(
        &data,
        "2026-11-23T10:00:00Z",
        &["--key-file", key_arg],
        &output,
    );
    let admin = std::fs::read_to_string(dir.path().join("data.admin-token"))
        .unwrap()
        .trim()
        .to_string();
    let c = client();
    let sup = remote_token(
        &c,
        &server.base,
        &admin,
        "supporter",
        Some("helse-vestfjord"),
    )
    .await;
    assert!(server.terminate().success());
    {
        let store = Store::open(&data).unwrap();
        assert!(
            store.meta_bytes("server_key").unwrap().is_none(),
            "no key in the data"
        );
    }
    let start = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_tellestrek"))
            .args(args)
            .env_remove("TELLESTREK_ADMIN_TOKEN")
            .env_remove("CREDENTIALS_DIRECTORY")
            .env("TELLESTREK_NOW", "2026-11-23T10:00:00Z")
            .output()
            .unwrap()
    };
    let policy = data.with_extension("policy.toml");
    let serve_args = |extra: &[&str]| {
        let mut v = vec!["serve", "--data", data.to_str().unwrap(), "--policy"];
        v.push(policy.to_str().unwrap());
        v.extend_from_slice(&["--listen", "127.0.0.1:0"]);
        v.extend_from_slice(extra);
        v.into_iter().map(String::from).collect::<Vec<_>>()
    };
    // Without the key file, or with another, the data directory refuses to start.
    let o = start(
        &serve_args(&[])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--key-file"),
        "{o:?}"
    );
    let wrong = dir.path().join("wrong-key");
    std::fs::write(&wrong, [7u8; 32]).unwrap();
    let args = serve_args(&["--key-file", wrong.to_str().unwrap()]);
    let o = start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("does not match"),
        "{o:?}"
    );

    // Every admin token lost: admin-token, with the server stopped, makes a new one.
    let recovered = dir.path().join("recovered");
    let o = start(&[
        "admin-token",
        "--data",
        data.to_str().unwrap(),
        "--out",
        recovered.to_str().unwrap(),
        "--key-file",
        key_arg,
    ]);
    assert!(o.status.success(), "{o:?}");
    let new_admin = std::fs::read_to_string(&recovered)
        .unwrap()
        .trim()
        .to_string();
    assert!(!String::from_utf8_lossy(&o.stdout).contains(&new_admin));
    assert_eq!(
        std::fs::metadata(&recovered).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let server = serve(
        &data,
        "2026-11-23T10:00:00Z",
        &["--key-file", key_arg],
        &output,
    );
    for t in [&new_admin, &admin] {
        let r = c
            .get(format!("{}/api/v1/tokens", server.base))
            .bearer_auth(t)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = c
        .post(format!("{}/api/v1/ticks", server.base))
        .bearer_auth(&sup)
        .json(&tick_body())
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        201,
        "tokens made before still work with the key file"
    );
    assert!(server.terminate().success());
}

#[tokio::test]
async fn revoking_an_account_deletes_the_name_it_was_given_and_its_follow_up_request() {
    let app = TestApp::new();
    let svc = &app.svc;
    let link = svc
        .sign_in_link(
            tellestrek::domain::Role::Supporter,
            Some("helse-vestfjord"),
            Some("Kari på intensiv"),
            None,
        )
        .unwrap();
    let secret = link.trim_start_matches("/invite/");
    let session = svc.redeem_invite(secret).unwrap();
    let who = svc.session(&session.secret).unwrap().principal;
    svc.set_followup(&who, true).unwrap();
    let id = who.token_id.clone();
    assert_eq!(
        app.svc.store().account_name(&id).unwrap().as_deref(),
        Some("Kari på intensiv")
    );
    assert_eq!(app.svc.store().followups().unwrap(), vec![id.clone()]);
    let (s, _) = app
        .call(
            "DELETE",
            &format!("/api/v1/tokens/{id}"),
            Some(crate::helpers::ADMIN),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(app.svc.store().account_name(&id).unwrap(), None);
    assert!(app.svc.store().followups().unwrap().is_empty());
    assert!(
        svc.session(&session.secret).is_err(),
        "its devices are signed out"
    );
}
