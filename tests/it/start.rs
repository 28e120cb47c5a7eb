//! The first hour (issue 8): `serve` refuses to start without a policy and says how,
//! `policy init` writes one, policy errors point at the file, line, key and value, `serve --help`
//! shows the environment, a failed start leaves a fresh data directory as it found it, and the
//! 401 message names only what a person can do.

use std::path::Path;
use std::process::{Command, Output};

use axum::http::StatusCode;

use crate::helpers::{Binary, TestApp, binary_tmp, leftovers};

/// Runs the binary to completion with a clean environment for the variables it reads.
fn run(args: &[&str], cwd: &Path) -> Output {
    let tmp = binary_tmp();
    let out = Command::new(env!("CARGO_BIN_EXE_tellestrek"))
        .args(args)
        .current_dir(cwd)
        .env_remove("TELLESTREK_POLICY")
        .env_remove("TELLESTREK_DATA")
        .env_remove("TELLESTREK_LISTEN")
        .env_remove("TELLESTREK_ADMIN_TOKEN")
        .env("TELLESTREK_NOW", "2026-11-23T10:00:00Z")
        .env("TELLESTREK_LOG", "warn")
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    let left = leftovers(tmp.path());
    assert!(left.is_empty(), "{args:?} left {left:?} in TMPDIR");
    out
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn serve_without_a_policy_refuses_and_says_how_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        &["serve", "--data", "data", "--listen", "127.0.0.1:0"],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("--policy")
            && err.contains("TELLESTREK_POLICY")
            && err.contains("tellestrek policy init"),
        "{err}"
    );
    assert!(!dir.path().join("data").exists(), "nothing was created");
}

#[test]
fn policy_init_writes_a_commented_valid_policy_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&["policy", "init", "policy.toml"], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("serve --policy policy.toml"), "{stdout}");
    let text = std::fs::read_to_string(dir.path().join("policy.toml")).unwrap();
    assert!(
        text.starts_with("# ") && text.contains("[[orgs]]"),
        "{text}"
    );
    let check = run(&["policy", "check", "policy.toml"], dir.path());
    assert!(check.status.success(), "{}", stderr(&check));

    std::fs::write(dir.path().join("policy.toml"), "mine").unwrap();
    let again = run(&["policy", "init", "policy.toml"], dir.path());
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("never overwritten"),
        "{}",
        stderr(&again)
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("policy.toml")).unwrap(),
        "mine"
    );
}

#[test]
fn policy_check_shows_file_line_key_path_source_line_and_caret() {
    let dir = tempfile::tempdir().unwrap();
    let text = tellestrek::policy::DEFAULT_POLICY.replacen(
        "budget_share = 0.075",
        "budget_share = \"a lot\"",
        1,
    );
    std::fs::write(dir.path().join("bad.toml"), &text).unwrap();
    let out = run(&["policy", "check", "bad.toml"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    let line = text.lines().position(|l| l.contains("a lot")).unwrap() + 1;
    assert!(
        err.starts_with(&format!(
            "error: bad.toml:{line}:16: `marginals[2].budget_share`: "
        )),
        "{err}"
    );
    assert!(
        err.contains("expected a number") && !err.contains("f64"),
        "{err}"
    );
    assert!(
        err.contains(&format!("{line} | budget_share = \"a lot\"")),
        "{err}"
    );
    assert!(err.contains("^^^^^^^"), "{err}");
}

#[test]
fn a_missing_policy_file_is_reported_once() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["policy", "check", "nope.toml"][..],
        &["serve", "--policy", "nope.toml", "--data", "data"][..],
    ] {
        let out = run(args, dir.path());
        assert_eq!(out.status.code(), Some(1));
        let err = stderr(&out);
        assert!(err.contains("nope.toml"), "{err}");
        assert_eq!(err.matches("No such file").count(), 1, "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    assert!(!dir.path().join("data").exists());
}

#[test]
fn serve_help_shows_each_variable_and_default() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&["serve", "--help"], dir.path());
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "[env: TELLESTREK_DATA=]",
        "[default: ./tellestrek-data]",
        "[env: TELLESTREK_POLICY=]",
        "[env: TELLESTREK_LISTEN=]",
        "[default: 127.0.0.1:8080]",
        "TELLESTREK_ADMIN_TOKEN",
        "TELLESTREK_NOW",
        "TELLESTREK_LOG",
        "policy init",
    ] {
        assert!(help.contains(needle), "no `{needle}` in:\n{help}");
    }
}

#[test]
fn a_log_setting_that_would_make_a_dependency_talk_stops_the_start() {
    // sled's trace output prints raw cells and keys; hyper's, the moment of every tick.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("policy.toml"),
        tellestrek::policy::DEFAULT_POLICY,
    )
    .unwrap();
    for spec in ["sled=debug", "trace,hyper=trace", "[tick]=trace"] {
        let tmp = binary_tmp();
        let out = Command::new(env!("CARGO_BIN_EXE_tellestrek"))
            .args(["serve", "--policy", "policy.toml", "--data", "data"])
            .args(["--listen", "127.0.0.1:0"])
            .current_dir(dir.path())
            .env_remove("TELLESTREK_ADMIN_TOKEN")
            .env("TELLESTREK_LOG", spec)
            .env("TMPDIR", tmp.path())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{spec} started");
        let err = stderr(&out);
        assert!(
            err.contains(&format!(
                "TELLESTREK_LOG: `{}`",
                spec.rsplit(',').next().unwrap()
            )) && err.contains("tellestrek only"),
            "{spec}: {err}"
        );
        assert!(
            !dir.path().join("data").exists(),
            "{spec} made the data directory"
        );
    }
}

#[tokio::test]
async fn listen_takes_a_port_alone_and_host_names() {
    // The parser has a unit test per form; here the real binary starts with two of them.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("policy.toml"),
        tellestrek::policy::DEFAULT_POLICY,
    )
    .unwrap();
    for listen in [":0", "localhost:0"] {
        let tmp = binary_tmp();
        let mut child = Command::new(env!("CARGO_BIN_EXE_tellestrek"))
            .args(["serve", "--policy", "policy.toml", "--data", "data"])
            .args(["--listen", listen])
            .current_dir(dir.path())
            .env_remove("TELLESTREK_ADMIN_TOKEN")
            .env("TELLESTREK_NOW", "2026-11-23T10:00:00Z")
            .env("TELLESTREK_LOG", "warn")
            .env("TMPDIR", tmp.path())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut text = String::new();
        while !text.contains("listening on") {
            let mut line = String::new();
            let n = std::io::BufRead::read_line(&mut out, &mut line).unwrap();
            assert!(n > 0, "{listen}: exited before listening: {text}");
            text.push_str(&line);
        }
        let base = text
            .split("listening on ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap()
            .to_string();
        assert!(
            base.starts_with("http://127.0.0.1:") || base.starts_with("http://[::1]:"),
            "{listen}: {text}"
        );
        let r = reqwest::get(format!("{base}/healthz")).await.unwrap();
        assert_eq!(r.status(), 200, "{listen}");
        assert!(crate::helpers::terminate(&mut child).success(), "{listen}");
        assert!(leftovers(tmp.path()).is_empty());
    }
}

/// Starts `serve` on an address that is already taken; returns its output.
fn serve_on_taken_port(cwd: &Path, data: &str) -> Output {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    std::fs::write(cwd.join("policy.toml"), tellestrek::policy::DEFAULT_POLICY).unwrap();
    run(
        &[
            "serve",
            "--policy",
            "policy.toml",
            "--data",
            data,
            "--listen",
            &addr,
        ],
        cwd,
    )
}

#[test]
fn a_failed_start_leaves_a_fresh_data_directory_as_it_found_it() {
    let dir = tempfile::tempdir().unwrap();
    // A port in use: the store was opened (db/, raw/ created) before the bind failed.
    let out = serve_on_taken_port(dir.path(), "fresh/data");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("binding"), "{}", stderr(&out));
    assert!(
        !dir.path().join("fresh").exists(),
        "the data directory and the parent this start created are removed"
    );
    // A bad policy: nothing is created.
    std::fs::write(dir.path().join("bad.toml"), "name = 1").unwrap();
    let out = run(
        &["serve", "--policy", "bad.toml", "--data", "data"],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(!dir.path().join("data").exists());
}

#[tokio::test]
async fn a_failed_start_keeps_a_data_directory_that_existed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // A first, successful start makes a real data directory.
    let server = Binary::serve(&data, None, None);
    // Served once (so the shutdown handler is in place), then stopped as an operator would.
    let r = reqwest::get(format!("{}/healthz", server.base))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(server.terminate().success());
    let mut before = Vec::new();
    crate::helpers::files(&data, &mut before);
    assert!(!before.is_empty());
    let out = serve_on_taken_port(dir.path(), "data");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let mut after = Vec::new();
    crate::helpers::files(&data, &mut after);
    // Opening the store may add a snapshot file; nothing that was there is removed.
    let missing: Vec<_> = before.iter().filter(|f| !after.contains(f)).collect();
    assert!(
        missing.is_empty(),
        "an existing data directory is never removed: {missing:?} is gone"
    );
}

#[tokio::test]
async fn the_401_message_names_only_what_a_person_can_do() {
    let app = TestApp::new();
    let (status, v) = app.call("GET", "/api/v1/tokens", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("Authorization: Bearer TOKEN")
            && message.contains("ask your coordinator or admin"),
        "{message}"
    );
    assert!(!message.to_lowercase().contains("sign in"), "{message}");
}

#[test]
fn the_repository_stands_alone_every_document_it_names_is_in_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md"), root.join("Cargo.toml")];
    for dir in ["src", "tests", "benches", "policy", "docs", ".ci"] {
        crate::helpers::files(&root.join(dir), &mut files);
    }
    // Spelled in two parts so that this file does not name them itself.
    let gone = [format!("{}.md", "DESIGN"), format!("{}.md", "DOMAIN")];
    let docs = regex::Regex::new(r"docs/[a-z_-]+\.md").unwrap();
    let mut checked = 0;
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        for g in &gone {
            assert!(!text.contains(g.as_str()), "{} names {g}", f.display());
        }
        for m in docs.find_iter(&text) {
            assert!(
                root.join(m.as_str()).is_file(),
                "{} names {}, which is not in the repository",
                f.display(),
                m.as_str()
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 5,
        "the code points to docs/ ({checked} references)"
    );
}

#[test]
fn ci_names_no_path_that_does_not_exist() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let ci = std::fs::read_to_string(root.join(".ci/run")).unwrap();
    let paths = regex::Regex::new(r"\b(tests|benches|policy|docs|src)/[A-Za-z0-9_./-]*").unwrap();
    for m in paths.find_iter(&ci) {
        let p = m.as_str().trim_end_matches('.');
        assert!(
            root.join(p).exists(),
            ".ci/run names {p}, which does not exist"
        );
    }
    assert!(ci.contains("build-essential") && ci.contains("perl"));
}
