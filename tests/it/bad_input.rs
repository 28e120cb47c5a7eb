//! The bad-input corpus (issue 10): every case under `tests/corpus/bad-input/`, listed in its
//! `cases.toml`, is sent through the real router: malformed JSON, huge numbers, unicode tricks,
//! very long strings, duplicate keys, wrong content types, invalid UTF-8 in paths and queries,
//! forged, garbled and oversized cookies, wrong CSRF tokens and forms with bad fields. Each
//! must get its documented answer (the API: status, error code and a message that names the
//! field; pages: an HTML page, or the redirect to sign in), and the whole corpus must leave the
//! store as it found it: raw cells and counters, tokens, invites, releases and the ledger.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::http::{HeaderValue, Request, header};
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::{Value, json};
use time::macros::datetime;
use tower::ServiceExt;

use crate::helpers::{ADMIN, TestApp};
use crate::pages::Browser;

/// The corpus directory.
fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/bad-input")
}

/// `cases.toml`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    case: Vec<Case>,
}

/// One case; the fields are described at the top of `cases.toml`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    file: String,
    #[serde(default)]
    what: Option<String>,
    #[serde(default)]
    header: Option<String>,
    method: String,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    content_type: Option<String>,
    #[serde(default)]
    pad_to: Option<usize>,
    auth: String,
    status: u16,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    names: Option<String>,
    #[serde(default)]
    page: bool,
    why: String,
}

fn manifest() -> Manifest {
    let text = std::fs::read_to_string(corpus().join("cases.toml")).unwrap();
    toml::from_str(&text).unwrap()
}

/// A signed-in (or not) browser's cookies and form tokens.
struct Held {
    cookies: BTreeMap<String, String>,
    /// The session's form token (empty before sign-in).
    csrf: String,
}

impl Held {
    fn form_csrf(&self) -> String {
        self.cookies
            .get("tellestrek_form")
            .cloned()
            .unwrap_or_default()
    }

    fn cookie_header(&self) -> String {
        let c: Vec<String> = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        c.join("; ")
    }
}

/// The app and the callers the cases use.
struct Fixture {
    app: TestApp,
    supporter: String,
    coordinator: String,
    /// A supporter's browser, signed in.
    page: Held,
    /// The admin's browser, signed in.
    admin_page: Held,
    /// A browser that opened the sign-in page.
    browser: Held,
}

async fn browser_signed_in(app: &TestApp, token: &str) -> Held {
    let mut b = Browser::new(app);
    let csrf = b.get("/").await.hidden("csrf");
    let r = b
        .post("/sign-in", &[("csrf", &csrf), ("token", token)])
        .await;
    assert_eq!(r.status.as_u16(), 303, "{}", r.body);
    let csrf = b.get("/methods").await.hidden("csrf");
    Held {
        cookies: b.cookies.clone(),
        csrf,
    }
}

/// An app with ticks in November and its release, an open invite, and the callers.
async fn fixture() -> Fixture {
    let app = TestApp::zero_noise();
    let supporter = app.token("supporter", Some("helse-vestfjord")).await;
    let coordinator = app.token("coordinator", Some("helse-vestfjord")).await;
    app.tick(&supporter, "helse-vestfjord", "akuttmottak", &[], 3)
        .await;
    app.tick(&supporter, "helse-vestfjord", "intensiv", &[], 1)
        .await;
    let page = browser_signed_in(&app, &supporter).await;
    let admin_page = browser_signed_in(&app, ADMIN).await;
    let mut b = Browser::new(&app);
    b.get("/").await;
    let browser = Held {
        cookies: b.cookies.clone(),
        csrf: String::new(),
    };
    // November closed (grace 7 days) and released; December open for ticks.
    app.at(datetime!(2026-12-10 10:00 UTC));
    let (s, v) = app
        .call("POST", "/api/v1/periods/2026-11/release", Some(ADMIN), None)
        .await;
    assert_eq!(s.as_u16(), 200, "{v}");
    let (s, v) = app
        .call(
            "POST",
            "/api/v1/invites",
            Some(ADMIN),
            Some(json!({"org": "helse-vestfjord", "name": "Kari"})),
        )
        .await;
    assert_eq!(s.as_u16(), 201, "{v}");
    Fixture {
        app,
        supporter,
        coordinator,
        page,
        admin_page,
        browser,
    }
}

/// What the store holds that a request could change: every raw byte of the counting trees
/// (cells, supporter counters, periods, tokens), and as the API serves them the releases, the
/// ledger, tokens, invites and periods, and the open follow-up requests (read from the store:
/// only a coordinator may read them through the API).
async fn digest(app: &TestApp) -> (BTreeMap<Vec<u8>, Vec<u8>>, Vec<String>) {
    let mut served = Vec::new();
    for path in [
        "/api/v1/releases",
        "/api/v1/budget",
        "/api/v1/tokens",
        "/api/v1/invites",
        "/api/v1/periods",
    ] {
        let (s, v) = app.call("GET", path, Some(ADMIN), None).await;
        assert_eq!(s.as_u16(), 200, "{path}: {v}");
        served.push(format!("{path}: {v}"));
    }
    served.push(format!(
        "follow-ups: {:?}",
        app.svc.store().followups().unwrap()
    ));
    (app.snapshot(), served)
}

impl Fixture {
    /// The case's request.
    fn request(&self, c: &Case) -> Request<Body> {
        let data = std::fs::read(corpus().join(&c.file)).unwrap();
        let what = c.what.as_deref().unwrap_or("body");
        let held = match c.auth.as_str() {
            "page" | "session" => Some(&self.page),
            "admin-page" => Some(&self.admin_page),
            "browser" => Some(&self.browser),
            _ => None,
        };
        let target = if what == "target" {
            String::from_utf8(data.clone()).expect("a request target is ASCII")
        } else {
            c.path
                .clone()
                .expect("a path, or a file that is the target")
        };
        let mut req = Request::builder().method(c.method.as_str()).uri(target);
        let mut headers: Vec<(String, HeaderValue)> = Vec::new();
        match c.auth.as_str() {
            "supporter" => headers.push(bearer(&self.supporter)),
            "coordinator" => headers.push(bearer(&self.coordinator)),
            "admin" => headers.push(bearer(ADMIN)),
            "session" => headers.push((
                "x-csrf-token".into(),
                HeaderValue::from_str(&self.page.csrf).unwrap(),
            )),
            "page" | "admin-page" | "browser" | "none" => {}
            other => panic!("{}: unknown auth {other}", c.file),
        }
        if let Some(h) = held {
            headers.push((
                "cookie".into(),
                HeaderValue::from_str(&h.cookie_header()).unwrap(),
            ));
        }
        let raw = HeaderValue::from_bytes(&data);
        match what {
            "cookie" => headers.push(("cookie".into(), raw.unwrap())),
            "header" => {
                let name = c.header.clone().expect("the header's name");
                headers.retain(|(n, _)| *n != name);
                headers.push((name, raw.unwrap()));
            }
            "body" | "target" => {}
            other => panic!("{}: unknown what {other}", c.file),
        }
        for (name, value) in headers {
            req = req.header(name, value);
        }
        if let Some(ct) = &c.content_type {
            req = req.header(header::CONTENT_TYPE, ct.as_str());
        }
        let mut body = match (what, &c.body) {
            ("body", _) => data,
            (_, Some(file)) => std::fs::read(corpus().join(file)).unwrap(),
            (_, None) => Vec::new(),
        };
        if let Some(h) = held {
            // Placeholders: form tokens only this run knows.
            if let Ok(text) = std::str::from_utf8(&body) {
                body = text
                    .replace("{csrf}", &h.csrf)
                    .replace("{form_csrf}", &h.form_csrf())
                    .into_bytes();
            }
        }
        if let Some(n) = c.pad_to {
            body.resize(n.max(body.len()), b' ');
        }
        req.body(Body::from(body)).unwrap()
    }
}

fn bearer(token: &str) -> (String, HeaderValue) {
    (
        "authorization".into(),
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    )
}

/// What is wrong with the answer to `c`, if anything.
async fn check(f: &Fixture, c: &Case) -> Option<String> {
    let resp = f.app.router.clone().oneshot(f.request(c)).await.unwrap();
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let location = resp
        .headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&bytes);
    let short: String = text.chars().take(300).collect();
    let mut problems = Vec::new();
    if status != c.status {
        problems.push(format!("status {status}, expected {}", c.status));
    }
    if c.page {
        if status == 303 {
            if location != "/" {
                problems.push(format!(
                    "redirected to {location:?}, expected the sign-in page"
                ));
            }
        } else if !content_type.starts_with("text/html") {
            problems.push(format!("a page answers HTML, got {content_type:?}"));
        }
        if let Some(n) = &c.names
            && !text.contains(n.as_str())
        {
            problems.push(format!("the page does not name `{n}`"));
        }
    } else {
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let code = v["error"]["code"].as_str();
        let message = v["error"]["message"].as_str().unwrap_or("");
        if code != c.code.as_deref() {
            problems.push(format!("code {code:?}, expected {:?}", c.code));
        }
        if message.is_empty() {
            problems.push("no error message".into());
        }
        if let Some(n) = &c.names
            && !message.contains(n.as_str())
        {
            problems.push(format!("the message does not name `{n}`"));
        }
    }
    (!problems.is_empty()).then(|| {
        format!(
            "{} ({}): {}; answer: {short}",
            c.file,
            c.why,
            problems.join("; ")
        )
    })
}

#[tokio::test]
async fn every_bad_input_gets_its_documented_answer_and_changes_nothing() {
    let f = fixture().await;
    let cases = manifest().case;
    let before = digest(&f.app).await;
    let mut wrong = Vec::new();
    for c in &cases {
        if let Some(problem) = check(&f, c).await {
            wrong.push(problem);
        }
    }
    let after = digest(&f.app).await;
    assert!(
        wrong.is_empty(),
        "{} of {} cases are answered otherwise than documented:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
    assert_eq!(before.1, after.1, "the corpus changed what the API serves");
    assert!(
        before.0 == after.0,
        "the corpus changed the raw store ({} keys before, {} after)",
        before.0.len(),
        after.0.len()
    );
    // The store did hold something the corpus could have changed.
    assert!(f.app.total("2026-11") == 4, "the fixture's ticks");
}

#[test]
fn every_file_of_the_corpus_is_a_case_and_every_case_a_file() {
    let cases = manifest().case;
    let mut named: Vec<String> = cases.iter().map(|c| c.file.clone()).collect();
    named.sort();
    let before = named.len();
    named.dedup();
    assert_eq!(before, named.len(), "a file is named by two cases");
    let mut files: Vec<String> = std::fs::read_dir(corpus())
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "cases.toml")
        .collect();
    files.sort();
    assert_eq!(named, files, "cases.toml and the directory disagree");
    for c in &cases {
        assert!(!c.why.is_empty(), "{}: say what it tests", c.file);
        assert!(
            (400..500).contains(&c.status) || (c.page && c.status == 303),
            "{}: a bad input gets a 4xx (or a page's redirect to sign in)",
            c.file
        );
        assert!(
            c.page || c.code.is_some(),
            "{}: an API answer has an error code",
            c.file
        );
    }
}
