//! The web pages (issue 9): sign-in by token and by invite link, cookies, CSRF, the tick form,
//! the language switch, assets and the page security headers.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::json;
use time::macros::datetime;
use tower::ServiceExt;

use crate::helpers::{ADMIN, TestApp};
use crate::pages::{Browser, Page};

/// Creates an invite as `token` with `body`; returns its path.
async fn invite(app: &TestApp, token: &str, body: serde_json::Value) -> String {
    let (status, v) = app
        .call("POST", "/api/v1/invites", Some(token), Some(body))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    v["path"].as_str().unwrap().to_string()
}

/// Opens an invite link and presses its button; returns the answer to the button.
async fn open_invite(b: &mut Browser<'_>, path: &str) -> Page {
    let page = b.get(path).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let csrf = page.hidden("csrf");
    let secret = page.hidden("secret");
    b.post("/invite", &[("csrf", &csrf), ("secret", &secret)])
        .await
}

/// The tick form's fields with the first unit and the first value of every dimension.
fn first_answers(page: &Page) -> Vec<(String, String)> {
    let p = tellestrek::policy::Policy::builtin();
    let mut out = vec![
        ("csrf".to_string(), page.hidden("csrf")),
        ("key".to_string(), page.hidden("key")),
        ("unit".to_string(), "akuttmottak".to_string()),
    ];
    for d in &p.dimensions {
        out.push((format!("dim.{}", d.id), d.values[0].id.clone()));
    }
    out
}

async fn post_fields(b: &mut Browser<'_>, path: &str, fields: &[(String, String)]) -> Page {
    let f: Vec<(&str, &str)> = fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    b.post(path, &f).await
}

#[tokio::test]
async fn an_invite_link_signs_a_phone_in_once_and_the_tick_form_counts_once() {
    let app = TestApp::new();
    let coord = app.token("coordinator", Some("helse-vestfjord")).await;
    let path = invite(
        &app,
        &coord,
        json!({"org": "helse-vestfjord", "name": "Kari på akutten"}),
    )
    .await;
    assert!(path.starts_with("/invite/"), "{path}");

    let mut phone = Browser::new(&app);
    let signed_in = open_invite(&mut phone, &path).await;
    assert_eq!(signed_in.status, StatusCode::SEE_OTHER);
    let cookie = signed_in.set_cookie("tellestrek_session").unwrap();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=15552000"] {
        assert!(cookie.contains(flag), "{flag} missing in {cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP gets no Secure flag");
    assert_eq!(phone.get("/").await.location(), "/tick");

    let form = phone.get("/tick").await;
    assert_eq!(form.status, StatusCode::OK);
    // The note on what is never stored comes before the form.
    let note = form.body.find("Dette lagres aldri").unwrap();
    assert!(note < form.body.find("<form id=\"tick-form\"").unwrap());
    let fields = first_answers(&form);
    let before = app.total("2026-11");
    // The answer is the confirmation itself: no redirect, so no URL carries the answers (a
    // proxy's log or the browser history would keep them with a time).
    let confirmation = post_fields(&mut phone, "/tick", &fields).await;
    assert_eq!(confirmation.status, StatusCode::OK, "{}", confirmation.body);
    // The same form sent twice (a double tap, a reload) is counted once.
    let again = post_fields(&mut phone, "/tick", &fields).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(app.total("2026-11"), before + 1);
    // "The same again" is one tap: a form with the same answers and a fresh key.
    let same: Vec<(String, String)> = fields
        .iter()
        .map(|(k, v)| match k.as_str() {
            "key" => (k.clone(), confirmation.hidden("key")),
            _ => (k.clone(), v.clone()),
        })
        .collect();
    assert_ne!(same[1].1, fields[1].1, "a fresh key");
    for (k, v) in &same[2..] {
        assert!(
            confirmation
                .body
                .contains(&format!("name=\"{k}\" value=\"{v}\"")),
            "{k}"
        );
    }
    let r = post_fields(&mut phone, "/tick", &same).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(app.total("2026-11"), before + 2);
    // "A different conversation" posts the last answers, which the tick page preselects.
    let edit: Vec<(String, String)> = same.iter().filter(|(k, _)| k != "key").cloned().collect();
    let again = post_fields(&mut phone, "/tick/edit", &edit).await;
    assert_eq!(again.status, StatusCode::OK);
    assert!(
        again
            .body
            .contains("value=\"akuttmottak\" required checked")
    );
    assert!(confirmation.body.contains("samtalen er registrert"));
    let text = visible_text(&confirmation.body);
    assert!(
        !text.chars().any(|c| c.is_ascii_digit()),
        "the confirmation shows no number: {text}"
    );

    // The link works once: a second phone cannot use it.
    let mut other = Browser::new(&app);
    let refused = open_invite(&mut other, &path).await;
    assert_eq!(refused.status, StatusCode::GONE);
    assert!(refused.set_cookie("tellestrek_session").is_none());
}

/// The text of a page outside tags, attributes and the head (what a person reads).
fn visible_text(html: &str) -> String {
    let body = &html[html.find("<body>").unwrap_or(0)..];
    let mut out = String::new();
    let mut in_tag = false;
    for c in body.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out
}

#[tokio::test]
async fn expired_and_revoked_invites_sign_nobody_in() {
    let app = TestApp::new();
    let expired = invite(&app, ADMIN, json!({"org": "helse-vestfjord"})).await;
    let revoked = invite(&app, ADMIN, json!({"org": "helse-vestfjord"})).await;
    let (status, list) = app.call("GET", "/api/v1/invites", Some(ADMIN), None).await;
    assert_eq!(status, StatusCode::OK);
    let invites = list["invites"].as_array().unwrap();
    assert_eq!(invites.len(), 2);
    assert!(!list.to_string().contains(&revoked["/invite/".len()..]));
    let id = invites[1]["id"].as_str().unwrap();
    let (status, _) = app
        .call(
            "DELETE",
            &format!("/api/v1/invites/{id}"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let id0 = invites[0]["id"].as_str().unwrap().to_string();
    // The link revoked is one of the two; find which by trying both after 15 days.
    let mut b = Browser::new(&app);
    let mut gone = 0;
    for p in [&expired, &revoked] {
        let r = open_invite(&mut b, p).await;
        if r.status == StatusCode::GONE {
            gone += 1;
        }
    }
    assert_eq!(gone, 1, "the revoked invite is refused, the other works");
    let late = invite(&app, ADMIN, json!({"org": "helse-vestfjord"})).await;
    app.at(datetime!(2026-12-08 10:00 UTC));
    let r = open_invite(&mut Browser::new(&app), &late).await;
    assert_eq!(r.status, StatusCode::GONE, "15 days later the link expired");
    assert!(r.body.contains("utløpt"));
    let (status, _) = app
        .call(
            "DELETE",
            &format!("/api/v1/invites/{id0}"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "a used invite is gone");
}

#[tokio::test]
async fn a_coordinator_invites_only_supporters_of_their_own_organisation() {
    let app = TestApp::new();
    let coord = app.token("coordinator", Some("helse-vestfjord")).await;
    let (status, v) = app
        .call(
            "POST",
            "/api/v1/invites",
            Some(&coord),
            Some(json!({"org": "helse-vestfjord", "role": "leader"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
    let other_org = app
        .svc
        .policy()
        .orgs
        .iter()
        .find(|o| o.id != "helse-vestfjord")
        .unwrap()
        .id
        .clone();
    let (status, v) = app
        .call(
            "POST",
            "/api/v1/invites",
            Some(&coord),
            Some(json!({"org": other_org})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
    let (status, v) = app
        .call(
            "POST",
            "/api/v1/invites",
            Some(&coord),
            Some(json!({"org": "helse-vestfjord", "name": "x".repeat(81)})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().starts_with("name:"));
}

#[tokio::test]
async fn sign_in_by_token_and_sign_out() {
    let app = TestApp::new();
    let supporter = app.token("supporter", Some("helse-vestfjord")).await;
    let mut b = Browser::new(&app);
    let page = b.get("/").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("Dette lagres aldri"));
    let csrf = page.hidden("csrf");
    let wrong = b
        .post("/sign-in", &[("csrf", &csrf), ("token", "tst_nope")])
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.set_cookie("tellestrek_session").is_none());
    let ok = b
        .post("/sign-in", &[("csrf", &csrf), ("token", &supporter)])
        .await;
    assert_eq!(ok.status, StatusCode::SEE_OTHER);
    let tick = b.get("/tick").await;
    assert_eq!(tick.status, StatusCode::OK);
    let session_csrf = tick.hidden("csrf");
    let out = b.post("/sign-out", &[("csrf", &session_csrf)]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert_eq!(b.get("/tick").await.location(), "/", "signed out");
}

#[tokio::test]
async fn every_form_refuses_a_post_without_its_csrf_token() {
    let app = TestApp::new();
    let supporter = app.token("supporter", Some("helse-vestfjord")).await;
    let mut b = Browser::new(&app);
    b.get("/").await;
    let r = b.post("/sign-in", &[("token", &supporter)]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "sign-in without its token");
    let path = invite(&app, ADMIN, json!({"org": "helse-vestfjord"})).await;
    let secret = &path["/invite/".len()..];
    let r = b.post("/invite", &[("secret", secret)]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "invite without its token");
    let r = open_invite(&mut b, &path).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "the link was not used up");
    let form = b.get("/tick").await;
    let mut fields = first_answers(&form);
    let before = app.total("2026-11");
    fields[0].1 = "forged".into();
    let r = post_fields(&mut b, "/tick", &fields).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    fields.remove(0);
    let r = post_fields(&mut b, "/tick", &fields).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(app.total("2026-11"), before, "nothing counted");
    let r = b.post("/follow-up", &[("open", "true")]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = b.post("/sign-out", &[]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // The API with the session cookie but without the form token in its header.
    let (status, _) = {
        let mut req = Request::builder()
            .method("POST")
            .uri("/api/v1/ticks")
            .header("content-type", "application/json");
        let c: Vec<String> = b.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
        req = req.header(header::COOKIE, c.join("; "));
        let resp = app
            .router
            .clone()
            .oneshot(
                req.body(Body::from(crate::helpers::tick_body().to_string()))
                    .unwrap(),
            )
            .await
            .unwrap();
        (resp.status(), ())
    };
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(app.total("2026-11"), before, "nothing counted");
}

#[tokio::test]
async fn the_offline_queue_logs_through_the_api_with_the_session_once() {
    let app = TestApp::new();
    let path = invite(&app, ADMIN, json!({"org": "helse-vestfjord"})).await;
    let mut b = Browser::new(&app);
    open_invite(&mut b, &path).await;
    let form = b.get("/tick").await;
    let csrf = form.hidden("csrf");
    b.headers = vec![
        ("x-csrf-token".into(), csrf),
        ("idempotency-key".into(), "offline-1".into()),
        ("content-type".into(), "application/json".into()),
    ];
    let mut body = crate::helpers::tick_body();
    body["period"] = json!("2026-11");
    let before = app.total("2026-11");
    for _ in 0..2 {
        let req = {
            let c: Vec<String> = b.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let mut r = Request::builder()
                .method("POST")
                .uri("/api/v1/ticks")
                .header(header::COOKIE, c.join("; "));
            for (k, v) in &b.headers {
                r = r.header(k.as_str(), v.as_str());
            }
            r.body(Body::from(body.to_string())).unwrap()
        };
        let resp = app.router.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
    }
    assert_eq!(app.total("2026-11"), before + 1, "sent twice, counted once");
}

#[tokio::test]
async fn a_supporter_asks_for_a_follow_up_and_the_coordinator_sees_the_name() {
    let app = TestApp::new();
    let coord = app.token("coordinator", Some("helse-vestfjord")).await;
    let path = invite(
        &app,
        &coord,
        json!({"org": "helse-vestfjord", "name": "Kari"}),
    )
    .await;
    let mut b = Browser::new(&app);
    open_invite(&mut b, &path).await;
    let csrf = b.get("/tick").await.hidden("csrf");
    let r = b
        .post("/follow-up", &[("csrf", &csrf), ("open", "true")])
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let (status, v) = app
        .call("GET", "/api/v1/follow-ups", Some(&coord), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["follow_ups"][0]["name"], "Kari", "{v}");
    let page = b.get("/tick").await;
    assert!(page.body.contains("Trekk tilbake"));
    b.post("/follow-up", &[("csrf", &csrf), ("open", "false")])
        .await;
    let (_, v) = app
        .call("GET", "/api/v1/follow-ups", Some(&coord), None)
        .await;
    assert_eq!(v["follow_ups"], json!([]), "withdrawn");
    let supporter = app.token("supporter", Some("helse-vestfjord")).await;
    let (status, _) = app
        .call("GET", "/api/v1/follow-ups", Some(&supporter), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn the_cap_message_shows_only_when_the_cap_is_reached() {
    let app = TestApp::new();
    let path = invite(&app, ADMIN, json!({"org": "helse-vestfjord"})).await;
    let mut b = Browser::new(&app);
    open_invite(&mut b, &path).await;
    let cap = app.svc.policy().max_ticks_per_supporter_period;
    for i in 0..=cap {
        let form = b.get("/tick").await;
        assert!(!form.body.contains("grensen for hvor mange"));
        let r = post_fields(&mut b, "/tick", &first_answers(&form)).await;
        if i < cap {
            assert_eq!(r.status, StatusCode::OK, "tick {i}");
        } else {
            assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
            assert!(r.body.contains("grensen for hvor mange"));
        }
    }
}

#[tokio::test]
async fn the_language_switch_is_remembered() {
    let app = TestApp::new();
    let mut b = Browser::new(&app);
    assert!(b.get("/").await.body.contains("lang=\"nb\""));
    let r = b.get("/lang/en?back=/tick").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.location(), "/tick");
    assert!(
        r.set_cookie("tellestrek_lang")
            .unwrap()
            .contains("Max-Age=")
    );
    let page = b.get("/").await;
    assert!(page.body.contains("lang=\"en\""));
    assert!(page.body.contains("What is never stored"));
    let r = b.get("/lang/nb?back=//evil.example").await;
    assert_eq!(r.location(), "/", "no redirect to another host");
    assert!(b.get("/").await.body.contains("Dette lagres aldri"));
}

#[tokio::test]
async fn assets_are_served_from_memory_with_long_caching() {
    let app = TestApp::new();
    let mut b = Browser::new(&app);
    for (path, kind) in [
        ("/assets/site.css", "text/css"),
        ("/assets/tick.js", "text/javascript"),
        ("/assets/vendor/designsystemet-css/index.css", "text/css"),
        ("/assets/vendor/designsystemet-theme/digdir.css", "text/css"),
        ("/assets/vendor/designsystemet-css/LICENSE", "text/plain"),
    ] {
        let r = b.get(path).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        let ct = r.headers[header::CONTENT_TYPE].to_str().unwrap();
        assert!(ct.starts_with(kind), "{path}: {ct}");
        assert!(
            r.headers[header::CACHE_CONTROL]
                .to_str()
                .unwrap()
                .contains("max-age=31536000")
        );
        assert_eq!(r.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    }
    assert_eq!(
        b.get("/assets/nope.css").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn pages_carry_a_strict_csp_and_load_nothing_from_another_host() {
    let app = TestApp::new();
    let path = invite(&app, ADMIN, json!({"org": "helse-vestfjord"})).await;
    let mut b = Browser::new(&app);
    let mut pages = vec![b.get("/").await, b.get(&path).await];
    open_invite(&mut b, &path).await;
    pages.push(b.get("/tick").await);
    pages.push(b.get("/tick/done").await);
    b.get("/lang/en").await;
    pages.push(b.get("/tick").await);
    for p in &pages {
        assert_eq!(p.status, StatusCode::OK, "{}", p.body);
        let csp = p.headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.contains("default-src 'self'"), "{csp}");
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        for h in [
            header::X_CONTENT_TYPE_OPTIONS,
            header::REFERRER_POLICY,
            header::X_FRAME_OPTIONS,
        ] {
            assert!(p.headers.contains_key(&h), "{h}");
        }
        assert_eq!(p.headers[header::CACHE_CONTROL], "no-store");
        assert!(!p.body.contains("http://") && !p.body.contains("https://"));
        assert!(!p.body.contains("//"), "no protocol-relative URL");
        assert!(!p.body.contains("<script>") && !p.body.contains(" style="));
    }
    for a in ["site.css", "tick.js"] {
        let body = b.get(&format!("/assets/{a}")).await.body;
        assert!(
            !body.contains("http://") && !body.contains("https://"),
            "{a}"
        );
    }
}

#[tokio::test]
async fn secure_cookies_only_behind_a_trusted_proxy_that_says_https() {
    use tellestrek::web::{WebOptions, router_with};
    let app = TestApp::new();
    for (trusted, proto, secure) in [
        (false, "https", false),
        (true, "http", false),
        (true, "https", true),
    ] {
        let router = router_with(WebOptions {
            trusted_proxy: trusted,
        })
        .with_state(app.svc.clone());
        let req = Request::builder()
            .uri("/")
            .header("x-forwarded-proto", proto)
            .body(Body::empty())
            .unwrap();
        let resp = router.oneshot(req).await.unwrap();
        let c = resp.headers()[header::SET_COOKIE].to_str().unwrap();
        assert_eq!(c.contains("Secure"), secure, "{trusted} {proto}: {c}");
    }
}

#[tokio::test]
async fn a_session_lasts_session_days_and_ends_with_its_account() {
    let app = TestApp::new();
    let path = invite(&app, ADMIN, json!({"org": "helse-vestfjord"})).await;
    let mut phone = Browser::new(&app);
    open_invite(&mut phone, &path).await;
    let (_, v) = app.call("GET", "/api/v1/invites", Some(ADMIN), None).await;
    assert_eq!(v["invites"], json!([]), "a used invite is no longer open");
    app.at(datetime!(2027-05-21 10:00 UTC));
    assert_eq!(phone.get("/tick").await.status, StatusCode::OK, "day 179");
    app.at(datetime!(2027-05-23 10:00 UTC));
    assert_eq!(phone.get("/tick").await.location(), "/", "after 180 days");

    // Revoking the account's token signs every device of it out.
    app.at(crate::helpers::NOW);
    let path = invite(&app, ADMIN, json!({"org": "helse-vestfjord"})).await;
    let mut phone = Browser::new(&app);
    open_invite(&mut phone, &path).await;
    let (_, tokens) = app.call("GET", "/api/v1/tokens", Some(ADMIN), None).await;
    let supporters: Vec<&serde_json::Value> = tokens["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["role"] == "supporter")
        .collect();
    for t in &supporters {
        let id = t["id"].as_str().unwrap();
        let (status, _) = app
            .call("DELETE", &format!("/api/v1/tokens/{id}"), Some(ADMIN), None)
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
    }
    assert_eq!(phone.get("/tick").await.location(), "/", "revoked");
}

#[tokio::test]
async fn two_devices_of_one_account_are_one_supporter() {
    let app = TestApp::new();
    let (status, first) = app
        .call(
            "POST",
            "/api/v1/invites",
            Some(ADMIN),
            Some(json!({"org": "helse-vestfjord"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let account = first["account"].as_str().unwrap();
    let second = invite(&app, ADMIN, json!({"account": account})).await;
    let mut phone = Browser::new(&app);
    let mut laptop = Browser::new(&app);
    open_invite(&mut phone, first["path"].as_str().unwrap()).await;
    open_invite(&mut laptop, &second).await;
    // The per-supporter cap counts both devices together.
    let cap = app.svc.policy().max_ticks_per_supporter_period;
    for i in 0..cap {
        let b = if i % 2 == 0 { &mut phone } else { &mut laptop };
        let form = b.get("/tick").await;
        let r = post_fields(b, "/tick", &first_answers(&form)).await;
        assert_eq!(r.status, StatusCode::OK, "tick {i}");
    }
    let form = laptop.get("/tick").await;
    let r = post_fields(&mut laptop, "/tick", &first_answers(&form)).await;
    assert_eq!(
        r.status,
        StatusCode::TOO_MANY_REQUESTS,
        "one supporter's cap"
    );
}

#[tokio::test]
async fn a_sign_in_link_for_each_role_for_the_demo() {
    use tellestrek::domain::Role;
    let app = TestApp::new();
    let link = app
        .svc
        .sign_in_link(Role::Leader, Some("helse-vestfjord"), None, None)
        .unwrap();
    let mut b = Browser::new(&app);
    let r = open_invite(&mut b, &link).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(b.get("/").await.location(), "/dashboard");
    let link = app
        .svc
        .sign_in_link(Role::Supporter, Some("helse-vestfjord"), Some("Demo"), None)
        .unwrap();
    let mut b = Browser::new(&app);
    open_invite(&mut b, &link).await;
    assert_eq!(b.get("/").await.location(), "/tick");
}

#[test]
fn the_web_policy_keys_are_validated() {
    use tellestrek::policy::{DEFAULT_POLICY, Policy};
    let p = Policy::builtin();
    assert_eq!((p.web.invite_days, p.web.session_days), (14, 180));
    for (key, text) in [
        ("web.invite_days", "[web]\ninvite_days = 0\n"),
        ("web.session_days", "[web]\nsession_days = 401\n"),
    ] {
        let e = Policy::from_str("t.toml", &format!("{DEFAULT_POLICY}\n{text}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(key), "{e}");
    }
    let ok = Policy::from_str(
        "t.toml",
        &format!("{DEFAULT_POLICY}\n[web]\ninvite_days = 7\nsession_days = 30\n"),
    )
    .unwrap();
    assert_eq!((ok.web.invite_days, ok.web.session_days), (7, 30));
}

/// The radios a page has checked, as form fields: what a browser sends if nothing is tapped.
fn checked_answers(page: &Page) -> Vec<(String, String)> {
    let re = regex::Regex::new(r#"name="([^"]+)" value="([^"]+)" required checked"#).unwrap();
    re.captures_iter(&page.body)
        .map(|c| (c[1].to_string(), c[2].to_string()))
        .collect()
}

#[tokio::test]
async fn a_first_contact_on_a_new_phone_takes_three_taps() {
    let app = TestApp::new();
    let policy = tellestrek::policy::Policy::builtin();
    let coord = app.token("coordinator", Some("helse-vestfjord")).await;
    // The coordinator says which unit the supporter belongs to.
    let path = invite(
        &app,
        &coord,
        json!({"org": "helse-vestfjord", "name": "Kari", "unit": "intensiv"}),
    )
    .await;
    let mut phone = Browser::new(&app);
    let signed_in = open_invite(&mut phone, &path).await;
    // The unit goes to the phone, as a cookie like the session's, and leaves the server with
    // the used invite: no stored record links the person to a unit.
    let unit_cookie = signed_in
        .set_cookie("tellestrek_unit")
        .expect("a unit cookie");
    for flag in ["tellestrek_unit=intensiv", "HttpOnly", "SameSite=Strict"] {
        assert!(unit_cookie.contains(flag), "{flag} in {unit_cookie}");
    }
    let (_, open) = app.call("GET", "/api/v1/invites", Some(&coord), None).await;
    assert_eq!(
        open["invites"],
        json!([]),
        "the used invite, and its unit, are gone"
    );
    let form = phone.get("/tick").await;
    assert_eq!(form.status, StatusCode::OK);
    // Preselected: the unit from the invite and every answer the policy gives a default, each
    // marked as a preset (the page's script replaces presets with the phone's own answers),
    // under a heading that says so, after the questions still to answer.
    let checked = checked_answers(&form);
    assert!(
        checked.contains(&("unit".into(), "intensiv".into())),
        "{checked:?}"
    );
    assert!(
        form.body
            .contains("value=\"intensiv\" required checked data-preset")
    );
    let open: Vec<&str> = policy
        .dimensions
        .iter()
        .filter(|d| d.default.is_none())
        .map(|d| d.id.as_str())
        .collect();
    assert_eq!(open, ["yrkesgruppe", "utlosende_arsak"]);
    for d in policy.dimensions.iter().filter(|d| d.default.is_some()) {
        let want = (format!("dim.{}", d.id), d.default.clone().unwrap());
        assert!(checked.contains(&want), "{want:?} preselected");
    }
    let heading = form.body.find("Forhåndsvalgt").expect("a presets heading");
    for d in &open {
        assert!(form.body.find(&format!("name=\"dim.{d}\"")).unwrap() < heading);
    }
    // Three taps: a profession, a trigger, and "Registrer".
    let mut fields = vec![
        ("csrf".to_string(), form.hidden("csrf")),
        ("key".to_string(), form.hidden("key")),
        ("dim.yrkesgruppe".to_string(), "sykepleier".to_string()),
        (
            "dim.utlosende_arsak".to_string(),
            "alvorlig-hendelse".to_string(),
        ),
    ];
    fields.extend(checked);
    let before = app.total("2026-11");
    let done = post_fields(&mut phone, "/tick", &fields).await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    assert_eq!(app.total("2026-11"), before + 1);

    // Without a unit at invite and with several units, the unit is asked like any question.
    let path = invite(&app, &coord, json!({"org": "helse-vestfjord"})).await;
    let mut other = Browser::new(&app);
    open_invite(&mut other, &path).await;
    let form = other.get("/tick").await;
    assert!(!checked_answers(&form).iter().any(|(k, _)| k == "unit"));
}

#[tokio::test]
async fn an_invite_refuses_a_unit_outside_the_supporters_organisation_and_stores_nothing() {
    let app = TestApp::new();
    let coord = app.token("coordinator", Some("helse-vestfjord")).await;
    let (_, before) = app.call("GET", "/api/v1/tokens", Some(ADMIN), None).await;
    let other_unit = app
        .svc
        .policy()
        .orgs
        .iter()
        .find(|o| o.id != "helse-vestfjord")
        .unwrap()
        .units[0]
        .id
        .clone();
    for (who, body) in [
        (
            &coord,
            json!({"org": "helse-vestfjord", "unit": other_unit}),
        ),
        (
            &coord,
            json!({"org": "helse-vestfjord", "unit": "Intensiv"}),
        ),
        (
            &ADMIN.to_string(),
            json!({"org": "helse-vestfjord", "role": "leader", "unit": "intensiv"}),
        ),
    ] {
        let (status, v) = app
            .call("POST", "/api/v1/invites", Some(who), Some(body))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
        assert_eq!(v["error"]["code"], "unknown_unit");
        assert!(
            v["error"]["message"].as_str().unwrap().starts_with("unit:"),
            "{v}"
        );
    }
    let (_, after) = app.call("GET", "/api/v1/tokens", Some(ADMIN), None).await;
    assert_eq!(before, after, "a refused invite leaves no account behind");
}

#[tokio::test]
async fn an_unknown_page_is_a_page_for_browsers_and_json_for_the_api() {
    let app = TestApp::new();
    let mut plain = Browser::new(&app);
    let json = plain.get("/finnes-ikke").await;
    assert_eq!(json.status, StatusCode::NOT_FOUND);
    let v: serde_json::Value = serde_json::from_str(&json.body).unwrap();
    assert_eq!(v["error"]["code"], "not_found");

    let mut browser = Browser::new(&app);
    browser
        .headers
        .push(("accept".into(), "text/html,application/xhtml+xml".into()));
    let page = browser.get("/finnes-ikke").await;
    assert_eq!(page.status, StatusCode::NOT_FOUND);
    assert!(
        page.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(page.body.contains("<html lang=\"nb\"") && page.body.contains("Siden finnes ikke"));
    // The API answers JSON whatever the client accepts.
    let api = browser.get("/api/v1/finnes-ikke").await;
    assert_eq!(api.status, StatusCode::NOT_FOUND);
    assert!(serde_json::from_str::<serde_json::Value>(&api.body).is_ok());
}
