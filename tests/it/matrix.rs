//! The authorization matrix (issue 10): every route the router serves, API and pages, called
//! by every kind of caller (each role of organisation A, the coordinator, leader and supporter
//! of organisation B on A's data, a revoked token, an expired invite, a signed-out session and
//! nobody). Each answer must be the documented one: the status, the API's error code, and
//! where a page sends the browser. The expected matrix is data ([`ROWS`]); the README holds it
//! rendered as a table between `<!-- authz:start -->` and `<!-- authz:end -->`, and a test
//! fails when the two differ, so the documentation cannot drift from the code. Another test
//! reads the routes from the router's source and fails when the router serves one the matrix
//! lacks.

use std::collections::{BTreeMap, BTreeSet};

use axum::body::Body;
use axum::http::{Request, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use time::macros::datetime;
use tower::ServiceExt;

use crate::helpers::{ADMIN, NOW, TestApp, tick_body};
use crate::pages::{Browser, enc};

/// Organisation A, whose data every row touches.
const ORG_A: &str = "helse-vestfjord";
/// Organisation B, whose coordinator, leader and supporter try A's data.
const ORG_B: &str = "vikafjord-kommune";

/// The callers, in the table's column order.
const CALLERS: [&str; 12] = [
    "admin",
    "coordinator",
    "leader",
    "researcher",
    "supporter",
    "coordinator B",
    "leader B",
    "supporter B",
    "revoked",
    "expired invite",
    "signed out",
    "none",
];

/// The instant every row is called at: 10 December 2026, 17 days after the fixture was made
/// at [`NOW`], so the invite made then has expired (`web.invite_days` = 14) and November is
/// closed and releasable (grace 7 days).
const CALL_AT: time::OffsetDateTime = datetime!(2026-12-10 10:00 UTC);

/// The closed period the release rows release.
const CLOSED: &str = "2026-11";

/// A request body.
#[derive(Clone, Copy)]
enum Sent {
    None,
    /// JSON text.
    Json(&'static str),
    /// A valid tick of organisation A.
    Tick,
    /// Form fields; values may hold placeholders (see [`Fixture::fill`]).
    Form(&'static [(&'static str, &'static str)]),
}

/// One route of the matrix: how it is registered, how the test calls it, and the answer each
/// caller gets, in [`CALLERS`] order.
struct Row {
    method: &'static str,
    /// As registered in the router.
    route: &'static str,
    /// The path called: placeholders `{token}` (a fresh supporter token id of A), `{invite}`
    /// (a fresh invite id of A) and `{invite_secret}` (a fresh invite link's secret of A; the
    /// expired one for the expired-invite caller).
    path: &'static str,
    body: Sent,
    /// `STATUS`, `STATUS code` (API errors) or `303 LOCATION` (pages).
    expect: [&'static str; 12],
}

const OK: &str = "200";
const CREATED: &str = "201";
const GONE_INV: &str = "401 invalid_token";
const MISSING: &str = "401 missing_token";
const ROLE: &str = "403 wrong_role";
const ORG: &str = "403 wrong_org";
const TO_SIGN_IN: &str = "303 /";
const FORBIDDEN: &str = "403";

/// Callers that fail authentication, in [`CALLERS`] order from "revoked": the API's answers.
const UNAUTH: [&str; 4] = [GONE_INV, GONE_INV, GONE_INV, MISSING];

/// The expected matrix. The API: 401 `missing_token` without credentials, 401 `invalid_token`
/// for a revoked token, an invite link's secret or a signed-out session's cookie, 403
/// `wrong_role` / `wrong_org`; pages: a browser that is not signed in is sent to the sign-in
/// page, a signed-in person without the role gets a 403 page.
#[rustfmt::skip]
fn rows() -> Vec<Row> {
    let r = |e: [&'static str; 8]| join(e, UNAUTH);
    let all = |s: &'static str| [s; 12];
    // Pages for a browser that is not signed in (revoked, expired invite, signed out, none).
    let p = |e: [&'static str; 8], out: &'static str| join(e, [out; 4]);
    const CSRF: &[(&str, &str)] = &[("csrf", "{csrf}")];
    vec![
        // --- the API ---
        Row { method: "GET", route: "/healthz", path: "/healthz", body: Sent::None, expect: all(OK) },
        Row { method: "GET", route: "/readyz", path: "/readyz", body: Sent::None, expect: all(OK) },
        Row { method: "GET", route: "/api/v1/policy", path: "/api/v1/policy", body: Sent::None,
            expect: r([OK; 8]) },
        Row { method: "POST", route: "/api/v1/ticks", path: "/api/v1/ticks", body: Sent::Tick,
            expect: r([ROLE, ROLE, ROLE, ROLE, CREATED, ROLE, ROLE, ORG]) },
        Row { method: "POST", route: "/api/v1/tokens", path: "/api/v1/tokens",
            body: Sent::Json(r#"{"role":"supporter","org":"helse-vestfjord"}"#),
            expect: r([CREATED, CREATED, ROLE, ROLE, ROLE, ORG, ROLE, ROLE]) },
        Row { method: "GET", route: "/api/v1/tokens", path: "/api/v1/tokens", body: Sent::None,
            expect: r([OK, OK, ROLE, ROLE, ROLE, OK, ROLE, ROLE]) },
        Row { method: "DELETE", route: "/api/v1/tokens/{id}", path: "/api/v1/tokens/{token}",
            body: Sent::None,
            expect: r(["204", "204", ROLE, ROLE, ROLE, "404 token_not_found", ROLE, ROLE]) },
        Row { method: "GET", route: "/api/v1/periods", path: "/api/v1/periods", body: Sent::None,
            expect: r([OK, OK, OK, OK, ROLE, OK, OK, ROLE]) },
        Row { method: "POST", route: "/api/v1/periods/{period}/release",
            path: "/api/v1/periods/2026-11/release", body: Sent::None,
            expect: r([OK, ROLE, ROLE, ROLE, ROLE, ROLE, ROLE, ROLE]) },
        Row { method: "GET", route: "/api/v1/releases", path: "/api/v1/releases?org=helse-vestfjord",
            body: Sent::None, expect: r([OK, OK, OK, OK, ROLE, ORG, ORG, ROLE]) },
        Row { method: "GET", route: "/api/v1/releases.sig",
            path: "/api/v1/releases.sig?org=helse-vestfjord", body: Sent::None,
            expect: r([OK, OK, OK, OK, ROLE, ORG, ORG, ROLE]) },
        // The ledger of the caller's own scope: B's leader and coordinator read B's.
        Row { method: "GET", route: "/api/v1/budget", path: "/api/v1/budget", body: Sent::None,
            expect: r([OK, OK, OK, OK, ROLE, OK, OK, ROLE]) },
        Row { method: "GET", route: "/api/v1/dashboard",
            path: "/api/v1/dashboard?org=helse-vestfjord", body: Sent::None,
            expect: r([OK, OK, OK, OK, ROLE, ORG, ORG, ROLE]) },
        Row { method: "GET", route: "/api/v1/signing-key", path: "/api/v1/signing-key",
            body: Sent::None, expect: all(OK) },
        Row { method: "GET", route: "/api/v1/openapi.json", path: "/api/v1/openapi.json",
            body: Sent::None, expect: all(OK) },
        Row { method: "POST", route: "/api/v1/admin/backup", path: "/api/v1/admin/backup",
            body: Sent::Json(r#"{"to":"{backup_dir}"}"#),
            expect: r([CREATED, ROLE, ROLE, ROLE, ROLE, ROLE, ROLE, ROLE]) },
        Row { method: "POST", route: "/api/v1/invites", path: "/api/v1/invites",
            body: Sent::Json(r#"{"org":"helse-vestfjord"}"#),
            expect: r([CREATED, CREATED, ROLE, ROLE, ROLE, ORG, ROLE, ROLE]) },
        Row { method: "GET", route: "/api/v1/invites", path: "/api/v1/invites", body: Sent::None,
            expect: r([OK, OK, ROLE, ROLE, ROLE, OK, ROLE, ROLE]) },
        Row { method: "DELETE", route: "/api/v1/invites/{id}", path: "/api/v1/invites/{invite}",
            body: Sent::None,
            expect: r(["204", "204", ROLE, ROLE, ROLE, "404 invite_not_found", ROLE, ROLE]) },
        // The names of supporters asking for a talk: their coordinator's only.
        Row { method: "GET", route: "/api/v1/follow-ups", path: "/api/v1/follow-ups",
            body: Sent::None, expect: r([ROLE, OK, ROLE, ROLE, ROLE, OK, ROLE, ROLE]) },
        // --- the pages ---
        Row { method: "GET", route: "/", path: "/", body: Sent::None,
            expect: p(["303 /admin", "303 /dashboard", "303 /dashboard", "303 /export", "303 /tick",
                "303 /dashboard", "303 /dashboard", "303 /tick"], OK) },
        // Each caller signs in with the token it holds (revoked: the revoked one; expired
        // invite: the link's secret; signed out and none: none). Nobody without the form
        // cookie gets past the CSRF check.
        Row { method: "POST", route: "/sign-in", path: "/sign-in",
            body: Sent::Form(&[("csrf", "{form_csrf}"), ("token", "{own_token}")]),
            expect: join([TO_SIGN_IN; 8], ["401", "401", "401", FORBIDDEN]) },
        // Opening a link changes nothing; the link is checked when its button is pressed.
        Row { method: "GET", route: "/invite/{secret}", path: "/invite/{invite_secret}",
            body: Sent::None, expect: all(OK) },
        Row { method: "POST", route: "/invite", path: "/invite",
            body: Sent::Form(&[("csrf", "{form_csrf}"), ("secret", "{invite_secret}")]),
            expect: join([TO_SIGN_IN; 8], [TO_SIGN_IN, "410", TO_SIGN_IN, FORBIDDEN]) },
        Row { method: "POST", route: "/sign-out", path: "/sign-out", body: Sent::Form(CSRF),
            expect: all(TO_SIGN_IN) },
        Row { method: "GET", route: "/lang/{lang}", path: "/lang/en?back=/tick", body: Sent::None,
            expect: all("303 /tick") },
        Row { method: "GET", route: "/tick", path: "/tick", body: Sent::None,
            expect: p([TO_SIGN_IN, TO_SIGN_IN, TO_SIGN_IN, TO_SIGN_IN, OK, TO_SIGN_IN, TO_SIGN_IN, OK],
                TO_SIGN_IN) },
        // The form's organisation is the session's: B's supporter sending A's unit is told
        // the unit is not one of B's.
        Row { method: "POST", route: "/tick", path: "/tick", body: Sent::Form(&[
                ("csrf", "{csrf}"), ("key", "{fresh}"), ("unit", "akuttmottak"), ("{dims}", "")]),
            expect: p([TO_SIGN_IN, TO_SIGN_IN, TO_SIGN_IN, TO_SIGN_IN, OK, TO_SIGN_IN, TO_SIGN_IN,
                "422"], TO_SIGN_IN) },
        Row { method: "POST", route: "/tick/edit", path: "/tick/edit", body: Sent::Form(CSRF),
            expect: p([TO_SIGN_IN, TO_SIGN_IN, TO_SIGN_IN, TO_SIGN_IN, OK, TO_SIGN_IN, TO_SIGN_IN, OK],
                TO_SIGN_IN) },
        Row { method: "GET", route: "/tick/done", path: "/tick/done", body: Sent::None,
            expect: p([TO_SIGN_IN, TO_SIGN_IN, TO_SIGN_IN, TO_SIGN_IN, OK, TO_SIGN_IN, TO_SIGN_IN, OK],
                TO_SIGN_IN) },
        Row { method: "POST", route: "/follow-up", path: "/follow-up",
            body: Sent::Form(&[("csrf", "{csrf}"), ("open", "true")]),
            expect: p([TO_SIGN_IN, TO_SIGN_IN, TO_SIGN_IN, TO_SIGN_IN, "303 /tick#followup",
                TO_SIGN_IN, TO_SIGN_IN, "303 /tick#followup"], TO_SIGN_IN) },
        Row { method: "GET", route: "/assets/{*path}", path: "/assets/tick.js", body: Sent::None,
            expect: all(OK) },
        Row { method: "GET", route: "/scheme", path: "/scheme", body: Sent::None,
            expect: p([OK, "303 /scheme/helse-vestfjord", "303 /scheme/helse-vestfjord", OK,
                "303 /scheme/helse-vestfjord", "303 /scheme/vikafjord-kommune",
                "303 /scheme/vikafjord-kommune", "303 /scheme/vikafjord-kommune"], OK) },
        Row { method: "GET", route: "/scheme/{org}", path: "/scheme/helse-vestfjord",
            body: Sent::None,
            expect: p([OK, OK, OK, OK, OK, FORBIDDEN, FORBIDDEN, FORBIDDEN], TO_SIGN_IN) },
        Row { method: "GET", route: "/public/{org}", path: "/public/helse-vestfjord",
            body: Sent::None, expect: all(OK) },
        Row { method: "GET", route: "/export", path: "/export", body: Sent::None,
            expect: p([OK, FORBIDDEN, FORBIDDEN, OK, FORBIDDEN, FORBIDDEN, FORBIDDEN, FORBIDDEN],
                TO_SIGN_IN) },
        Row { method: "GET", route: "/export/download",
            path: "/export/download?org=helse-vestfjord&format=csv", body: Sent::None,
            expect: p([OK, FORBIDDEN, FORBIDDEN, OK, FORBIDDEN, FORBIDDEN, FORBIDDEN, FORBIDDEN],
                TO_SIGN_IN) },
        Row { method: "GET", route: "/export/download.sig",
            path: "/export/download.sig?org=helse-vestfjord", body: Sent::None,
            expect: p([OK, FORBIDDEN, FORBIDDEN, OK, FORBIDDEN, FORBIDDEN, FORBIDDEN, FORBIDDEN],
                TO_SIGN_IN) },
        Row { method: "GET", route: "/admin", path: "/admin", body: Sent::None,
            expect: p([OK, OK, FORBIDDEN, FORBIDDEN, FORBIDDEN, OK, FORBIDDEN, FORBIDDEN],
                TO_SIGN_IN) },
        Row { method: "POST", route: "/admin/tokens", path: "/admin/tokens",
            body: Sent::Form(&[("csrf", "{csrf}"), ("role", "supporter"), ("org", ORG_A)]),
            expect: p([CREATED, CREATED, FORBIDDEN, FORBIDDEN, FORBIDDEN, FORBIDDEN, FORBIDDEN,
                FORBIDDEN], TO_SIGN_IN) },
        Row { method: "POST", route: "/admin/tokens/revoke", path: "/admin/tokens/revoke",
            body: Sent::Form(&[("csrf", "{csrf}"), ("id", "{token}")]),
            expect: p(["303 /admin#tokens", "303 /admin#tokens", FORBIDDEN, FORBIDDEN, FORBIDDEN,
                "404", FORBIDDEN, FORBIDDEN], TO_SIGN_IN) },
        Row { method: "POST", route: "/admin/invites", path: "/admin/invites",
            body: Sent::Form(&[("csrf", "{csrf}"), ("org", ORG_A)]),
            expect: p([CREATED, CREATED, FORBIDDEN, FORBIDDEN, FORBIDDEN, FORBIDDEN, FORBIDDEN,
                FORBIDDEN], TO_SIGN_IN) },
        Row { method: "POST", route: "/admin/invites/revoke", path: "/admin/invites/revoke",
            body: Sent::Form(&[("csrf", "{csrf}"), ("id", "{invite}")]),
            expect: p(["303 /admin#invites", "303 /admin#invites", FORBIDDEN, FORBIDDEN, FORBIDDEN,
                "404", FORBIDDEN, FORBIDDEN], TO_SIGN_IN) },
        Row { method: "POST", route: "/admin/periods/release", path: "/admin/periods/release",
            body: Sent::Form(&[("csrf", "{csrf}"), ("period", CLOSED)]),
            expect: p(["303 /admin#periods", FORBIDDEN, FORBIDDEN, FORBIDDEN, FORBIDDEN, FORBIDDEN,
                FORBIDDEN, FORBIDDEN], TO_SIGN_IN) },
        Row { method: "GET", route: "/dashboard", path: "/dashboard?org=helse-vestfjord",
            body: Sent::None,
            expect: p([OK, OK, OK, OK, FORBIDDEN, FORBIDDEN, FORBIDDEN, FORBIDDEN], TO_SIGN_IN) },
        Row { method: "GET", route: "/methods", path: "/methods", body: Sent::None,
            expect: all(OK) },
    ]
}

/// The answers of the eight role callers followed by those of the other four.
fn join(roles: [&'static str; 8], others: [&'static str; 4]) -> [&'static str; 12] {
    let mut out = [""; 12];
    out[..8].copy_from_slice(&roles);
    out[8..].copy_from_slice(&others);
    out
}

/// Whether a route is the JSON API's (answers carry an error code) rather than a page.
fn is_api(route: &str) -> bool {
    route.starts_with("/api/") || route == "/healthz" || route == "/readyz"
}

/// One caller: what it presents to the API and what its browser holds.
struct Caller {
    /// The bearer token sent to the API.
    bearer: Option<String>,
    /// Cookies the caller's browser holds (sent to pages; to the API only by "signed out",
    /// whose cookie is its only credential).
    cookies: BTreeMap<String, String>,
    /// The session's form token, or the last one it had.
    csrf: String,
    /// What it types into the sign-in form.
    own_token: String,
    /// The invite link it holds, if any (the expired one).
    invite_secret: Option<String>,
}

/// A fresh app with one caller of each kind, called at [`CALL_AT`].
struct Fixture {
    app: TestApp,
    callers: Vec<Caller>,
    /// Where `{backup_dir}` targets are made (removed with the fixture).
    backups: tempfile::TempDir,
}

/// Signs a browser in with `token`; returns its cookies and its session's form token.
async fn signed_in(app: &TestApp, token: &str) -> (BTreeMap<String, String>, String) {
    let mut b = Browser::new(app);
    let page = b.get("/").await;
    let csrf = page.hidden("csrf");
    let r = b
        .post("/sign-in", &[("csrf", &csrf), ("token", token)])
        .await;
    assert_eq!(r.status.as_u16(), 303, "sign-in with a token: {}", r.body);
    let page = b.get("/methods").await;
    (b.cookies.clone(), page.hidden("csrf"))
}

impl Fixture {
    async fn new() -> Fixture {
        let app = TestApp::zero_noise();
        let mut callers = Vec::new();
        let roles: [(&str, Option<&str>); 8] = [
            ("admin", None),
            ("coordinator", Some(ORG_A)),
            ("leader", Some(ORG_A)),
            ("researcher", None),
            ("supporter", Some(ORG_A)),
            ("coordinator", Some(ORG_B)),
            ("leader", Some(ORG_B)),
            ("supporter", Some(ORG_B)),
        ];
        for (role, org) in roles {
            let token = if role == "admin" {
                ADMIN.to_string()
            } else {
                app.token(role, org).await
            };
            let (cookies, csrf) = signed_in(&app, &token).await;
            callers.push(Caller {
                bearer: Some(token.clone()),
                cookies,
                csrf,
                own_token: token,
                invite_secret: None,
            });
        }
        // Revoked: a supporter of A signed in on a device, then its token revoked.
        let token = app.token("supporter", Some(ORG_A)).await;
        let (cookies, csrf) = signed_in(&app, &token).await;
        let id = token_id_of(&app, &token).await;
        let (s, v) = app
            .call("DELETE", &format!("/api/v1/tokens/{id}"), Some(ADMIN), None)
            .await;
        assert_eq!(s.as_u16(), 204, "{v}");
        callers.push(Caller {
            bearer: Some(token.clone()),
            cookies,
            csrf,
            own_token: token,
            invite_secret: None,
        });
        // Expired invite: a link made now, pressed after it expired (the press is refused, so
        // the browser holds only the form cookie); its secret is presented as a token too.
        let path = invite_path(&app).await;
        let secret = path["/invite/".len()..].to_string();
        let mut b = Browser::new(&app);
        let form_csrf = b.get(&path).await.hidden("csrf");
        app.at(CALL_AT);
        let r = b
            .post("/invite", &[("csrf", &form_csrf), ("secret", &secret)])
            .await;
        assert_eq!(r.status.as_u16(), 410, "an expired invite: {}", r.body);
        app.at(NOW);
        callers.push(Caller {
            bearer: Some(secret.clone()),
            cookies: b.cookies.clone(),
            csrf: form_csrf,
            own_token: secret.clone(),
            invite_secret: Some(secret),
        });
        // Signed out: a supporter's device that signed out; it keeps the old cookie and form
        // token, and presents both (the cookie to the API with the form token in its header).
        let token = app.token("supporter", Some(ORG_A)).await;
        let (mut cookies, csrf) = signed_in(&app, &token).await;
        let mut b = Browser::new(&app);
        b.cookies = cookies.clone();
        let r = b.post("/sign-out", &[("csrf", &csrf)]).await;
        assert_eq!(r.status.as_u16(), 303);
        assert!(!b.cookies.contains_key("tellestrek_session"));
        cookies.extend(b.cookies.clone());
        callers.push(Caller {
            bearer: None,
            cookies,
            csrf,
            own_token: String::new(),
            invite_secret: None,
        });
        // None: no token, no cookie.
        callers.push(Caller {
            bearer: None,
            cookies: BTreeMap::new(),
            csrf: String::new(),
            own_token: String::new(),
            invite_secret: None,
        });
        assert_eq!(callers.len(), CALLERS.len());
        app.at(CALL_AT);
        Fixture {
            app,
            callers,
            backups: tempfile::tempdir().unwrap(),
        }
    }

    /// Replaces the placeholders of `text` for caller `c`, making fresh targets as needed:
    /// those of [`Row::path`], and in form values `{csrf}` (the session's form token, or the
    /// last one the caller had), `{form_csrf}` (the sign-in form cookie's), `{own_token}`
    /// (the token the caller holds), `{fresh}` (a new idempotency key) and `{backup_dir}` (a
    /// new directory for a backup). A form field named
    /// `{dims}` stands for the first value of every dimension (in [`Fixture::call`]).
    async fn fill(&self, text: &str, c: &Caller) -> String {
        let mut out = text.to_string();
        if out.contains("{token}") {
            let t = self.app.token("supporter", Some(ORG_A)).await;
            out = out.replace("{token}", &token_id_of(&self.app, &t).await);
        }
        if out.contains("{invite}") {
            let (s, v) = self
                .app
                .call(
                    "POST",
                    "/api/v1/invites",
                    Some(ADMIN),
                    Some(json!({"org": ORG_A})),
                )
                .await;
            assert_eq!(s.as_u16(), 201, "{v}");
            out = out.replace("{invite}", v["id"].as_str().unwrap());
        }
        if out.contains("{invite_secret}") {
            let secret = match &c.invite_secret {
                Some(s) => s.clone(),
                None => invite_path(&self.app).await["/invite/".len()..].to_string(),
            };
            out = out.replace("{invite_secret}", &secret);
        }
        let form = c
            .cookies
            .get("tellestrek_form")
            .cloned()
            .unwrap_or_default();
        out.replace("{form_csrf}", &form)
            .replace("{csrf}", &c.csrf)
            .replace("{own_token}", &c.own_token)
            .replace("{fresh}", &format!("k{}", rand_key()))
            .replace(
                "{backup_dir}",
                &self
                    .backups
                    .path()
                    .join(format!("backup-{}", rand_key()))
                    .display()
                    .to_string(),
            )
    }

    /// Calls `row` as caller `i`; returns the answer as a matrix cell.
    async fn call(&self, row: &Row, i: usize) -> String {
        let c = &self.callers[i];
        let path = self.fill(row.path, c).await;
        let api = is_api(row.route);
        let mut req = Request::builder().method(row.method).uri(&path);
        let send_cookies = !api || c.bearer.is_none();
        if api && let Some(t) = &c.bearer {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        if send_cookies && !c.cookies.is_empty() {
            let cookie: Vec<String> = c.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
            req = req.header(header::COOKIE, cookie.join("; "));
            if api {
                req = req.header("x-csrf-token", &c.csrf);
            }
        }
        let req = match row.body {
            Sent::None => req.body(Body::empty()).unwrap(),
            Sent::Json(text) => req
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(self.fill(text, c).await))
                .unwrap(),
            Sent::Tick => req
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(tick_body().to_string()))
                .unwrap(),
            Sent::Form(fields) => {
                let mut pairs = Vec::new();
                for (k, v) in fields {
                    if *k == "{dims}" {
                        for d in &self.app.svc.current_policy().dimensions {
                            pairs.push(format!(
                                "{}={}",
                                enc(&format!("dim.{}", d.id)),
                                enc(&d.values[0].id)
                            ));
                        }
                        continue;
                    }
                    pairs.push(format!("{}={}", enc(k), enc(&self.fill(v, c).await)));
                }
                req.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(Body::from(pairs.join("&")))
                    .unwrap()
            }
        };
        let resp = self.app.router.clone().oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let location = resp
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let html = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/html"));
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        if let Some(to) = location {
            return format!("{status} {to}");
        }
        if api && status >= 400 {
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let code = v["error"]["code"].as_str().unwrap_or("(no JSON error)");
            return format!("{status} {code}");
        }
        // A page's refusal is a page, in the reader's language.
        if !api && status >= 400 && !html {
            return format!("{status} (not an HTML page)");
        }
        status.to_string()
    }
}

/// A random idempotency key for the tick form.
fn rand_key() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u8(0);
    h.finish()
}

/// A fresh invite link of organisation A (made by the admin); returns its path.
async fn invite_path(app: &TestApp) -> String {
    let (s, v) = app
        .call(
            "POST",
            "/api/v1/invites",
            Some(ADMIN),
            Some(json!({"org": ORG_A})),
        )
        .await;
    assert_eq!(s.as_u16(), 201, "{v}");
    v["path"].as_str().unwrap().to_string()
}

/// The public id of the token whose clear text is `token`.
async fn token_id_of(app: &TestApp, token: &str) -> String {
    app.svc.authenticate(Some(token)).unwrap().token_id
}

/// The matrix as a Markdown table: one row per route, one column per caller.
fn render(rows: &[Row], cells: impl Fn(usize, usize) -> String) -> String {
    let mut out = String::from("| route |");
    for c in CALLERS {
        out.push_str(&format!(" {c} |"));
    }
    out.push_str("\n| --- |");
    out.push_str(&" --- |".repeat(CALLERS.len()));
    out.push('\n');
    for (r, row) in rows.iter().enumerate() {
        out.push_str(&format!("| `{} {}` |", row.method, row.route));
        for c in 0..CALLERS.len() {
            out.push_str(&format!(" {} |", cells(r, c)));
        }
        out.push('\n');
    }
    out
}

/// The expected matrix, rendered.
fn expected_table() -> String {
    let rows = rows();
    render(&rows, |r, c| rows[r].expect[c].to_string())
}

/// The README's table between the markers.
fn readme_table() -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("<!-- authz:start -->")
        .expect("README.md has `<!-- authz:start -->`")
        + "<!-- authz:start -->".len();
    let end = readme
        .find("<!-- authz:end -->")
        .expect("README.md has `<!-- authz:end -->`");
    readme[start..end].trim().to_string()
}

#[tokio::test]
async fn every_route_answers_every_caller_as_documented() {
    let rows = rows();
    let mut got = vec![vec![String::new(); CALLERS.len()]; rows.len()];
    let mut wrong = Vec::new();
    for (r, row) in rows.iter().enumerate() {
        // A fresh app per row, so one caller's change (a sign-out, a revocation, a release)
        // never decides another's answer.
        let f = Fixture::new().await;
        for c in 0..CALLERS.len() {
            got[r][c] = f.call(row, c).await;
            if got[r][c] != row.expect[c] {
                wrong.push(format!(
                    "{} {} as {}: expected `{}`, got `{}`",
                    row.method, row.path, CALLERS[c], row.expect[c], got[r][c]
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} answers differ from the documented matrix:\n{}\n\nthe answers as a table:\n{}",
        wrong.len(),
        wrong.join("\n"),
        render(&rows, |r, c| got[r][c].clone())
    );
}

#[test]
fn the_readme_holds_the_matrix() {
    let expected = expected_table();
    assert_eq!(
        readme_table(),
        expected.trim(),
        "README.md's table between <!-- authz:start --> and <!-- authz:end --> must be this:\n{expected}"
    );
}

/// Every `(method, route)` registered with `.route(…)` in the crate's source.
fn routes_in_source() -> BTreeSet<(String, String)> {
    let mut files = Vec::new();
    crate::helpers::files(
        std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src")),
        &mut files,
    );
    let method = regex::Regex::new(r"(?:^|[^A-Za-z0-9_:])(get|post|put|delete|patch)\(").unwrap();
    let mut out = BTreeSet::new();
    for f in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "rs"))
    {
        let text = std::fs::read_to_string(f).unwrap();
        let mut rest = text.as_str();
        while let Some(at) = rest.find(".route(") {
            rest = &rest[at + ".route(".len()..];
            // The call's arguments, to its closing parenthesis.
            let mut depth = 1;
            let end = rest
                .char_indices()
                .find_map(|(i, ch)| {
                    match ch {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    (depth == 0).then_some(i)
                })
                .unwrap();
            let args = &rest[..end];
            let Some(path) = args.split('"').nth(1) else {
                continue;
            };
            for m in method.captures_iter(args) {
                out.insert((m[1].to_uppercase(), path.to_string()));
            }
        }
    }
    // The JSON routes are registered from one table (`server::api_routes`).
    for r in tellestrek::server::api_routes() {
        out.insert((r.method.to_string(), r.path.to_string()));
    }
    out
}

#[test]
fn the_matrix_has_every_route_the_router_serves() {
    let source = routes_in_source();
    assert!(
        source.len() > 30,
        "the route scan found too few routes: {source:?}"
    );
    let table: BTreeSet<(String, String)> = rows()
        .iter()
        .map(|r| (r.method.to_string(), r.route.to_string()))
        .collect();
    let missing: Vec<_> = source.difference(&table).collect();
    let extra: Vec<_> = table.difference(&source).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "routes served but not in the matrix: {missing:?}; in the matrix but not served: {extra:?}"
    );
}

#[test]
fn every_row_is_a_documented_answer() {
    // Each API error cell carries a code, each redirect a target, so the table says what a
    // client sees.
    for row in rows() {
        for (c, cell) in row.expect.iter().enumerate() {
            let status: u16 = cell.split(' ').next().unwrap().parse().unwrap();
            if is_api(row.route) && status >= 400 {
                assert!(
                    cell.contains(' '),
                    "{} {} as {}: an API error names its code",
                    row.method,
                    row.route,
                    CALLERS[c]
                );
            }
            if status == 303 {
                assert!(
                    cell.contains(" /"),
                    "{} {} as {}: a redirect names where",
                    row.method,
                    row.route,
                    CALLERS[c]
                );
            }
        }
    }
}
