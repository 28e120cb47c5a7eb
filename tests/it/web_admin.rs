//! The researchers' export page, the admin page, the scheme pages and the public page
//! (issue 9): roles and scope of each page, CSRF on every form, revoked invites, Markdown
//! escaping, and the public page showing only released numbers.

use axum::http::{StatusCode, header};
use time::macros::datetime;

use crate::helpers::{ADMIN, TestApp};
use crate::pages::{Browser, Page};

/// A browser signed in with `token` through the sign-in form.
async fn signed_in<'a>(app: &'a TestApp, token: &str) -> Browser<'a> {
    let mut b = Browser::new(app);
    let page = b.get("/").await;
    let csrf = page.hidden("csrf");
    let done = b
        .post("/sign-in", &[("csrf", &csrf), ("token", token)])
        .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    b
}

#[tokio::test]
async fn scheme_pages_show_the_policy_markdown_to_their_own_organisation() {
    let app = TestApp::new();
    let leader = app.token("leader", Some("helse-vestfjord")).await;
    let mut b = signed_in(&app, &leader).await;
    assert_eq!(b.get("/scheme").await.location(), "/scheme/helse-vestfjord");
    let page = b.get("/scheme/helse-vestfjord").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.body
            .contains("<strong>Kollegastøtteordningen</strong>"),
        "{}",
        page.body
    );
    assert!(page.body.contains("55 00 00 00"));
    // Another organisation's page is refused.
    assert_eq!(
        b.get("/scheme/vikafjord-kommune").await.status,
        StatusCode::FORBIDDEN
    );
    // Every page links to the scheme page.
    assert!(b.get("/methods").await.body.contains("href=\"/scheme\""));
    // Without sign-in: to the sign-in page.
    let mut anon = Browser::new(&app);
    assert_eq!(anon.get("/scheme/helse-vestfjord").await.location(), "/");
    // An admin sees every organisation's.
    let mut admin = signed_in(&app, ADMIN).await;
    let list = admin.get("/scheme").await;
    assert!(
        list.body.contains("/scheme/vikafjord-kommune"),
        "{}",
        list.body
    );
    assert_eq!(
        admin.get("/scheme/vikafjord-kommune").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn policy_markdown_cannot_put_html_on_a_page() {
    let text = tellestrek::policy::DEFAULT_POLICY.replacen(
        "mandate_md = \"\"\"\n",
        "mandate_md = \"\"\"\n<script>alert(1)</script> <img src=x onerror=alert(1)>\n\nSe [x](javascript:alert(1)) og <b onclick=x>y</b>\n\n",
        1,
    );
    let policy = tellestrek::policy::Policy::from_str("p.toml", &text).unwrap();
    let app = TestApp::with_policy(policy);
    let mut b = signed_in(&app, ADMIN).await;
    let page = b.get("/scheme/helse-vestfjord").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(!page.body.contains("<script>alert"), "{}", page.body);
    assert!(!page.body.contains("<img src=x"), "{}", page.body);
    assert!(!page.body.contains("href=\"javascript"), "{}", page.body);
    assert!(!page.body.contains("<b onclick"), "{}", page.body);
    assert!(page.body.contains("&lt;script&gt;"), "{}", page.body);
}

#[test]
fn a_too_long_mandate_is_refused_with_its_key() {
    let long = "a".repeat(tellestrek::policy::MAX_SCHEME_MD + 1);
    let text = tellestrek::policy::DEFAULT_POLICY.replacen(
        "contact_md = \"Ta kontakt",
        &format!("contact_md = \"{long}Ta kontakt"),
        1,
    );
    let e = tellestrek::policy::Policy::from_str("p.toml", &text)
        .unwrap_err()
        .to_string();
    assert!(e.contains("orgs[1].contact_md"), "{e}");
}

#[tokio::test]
async fn the_public_page_shows_only_the_released_yearly_total_and_is_off_by_default() {
    let app = TestApp::new();
    let mut anon = Browser::new(&app);
    // Off unless the policy turns it on (Vikafjord has no `public_page`).
    assert_eq!(
        anon.get("/public/vikafjord-kommune").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        anon.get("/public/nowhere").await.status,
        StatusCode::NOT_FOUND
    );
    // Before any release: no number at all, however many ticks are stored.
    let sup = app.token("supporter", Some("helse-vestfjord")).await;
    app.tick(&sup, "helse-vestfjord", "akuttmottak", &[], 7)
        .await;
    let before = anon.get("/public/helse-vestfjord").await;
    assert_eq!(before.status, StatusCode::OK);
    assert!(
        !before.body.contains("data-testid=\"public-total\""),
        "{}",
        before.body
    );
    assert!(before.body.contains("55 00 00 00"));
    // After the year is released: the release's total, as released.
    app.at(datetime!(2027-01-10 12:00 UTC));
    app.svc.run_lifecycle().await.unwrap();
    let r = app.svc.release("2026/helse-vestfjord/kanal").unwrap();
    let shown = if r.total_estimate >= u64::from(r.suppress_below) {
        format!("ca. {} samtaler", r.total_estimate)
    } else {
        format!("&#60;{}", r.suppress_below)
    };
    let after = anon.get("/public/helse-vestfjord").await;
    assert!(after.body.contains("Samtaler i 2026"), "{}", after.body);
    let main = &after.body[after.body.find("<main").unwrap()..];
    assert!(main.contains(&shown), "{shown} in {main}");
    // Listed for everyone on /scheme.
    assert!(
        anon.get("/scheme")
            .await
            .body
            .contains("/public/helse-vestfjord")
    );
}

/// A year of ticks in both organisations, released.
async fn released_year(app: &TestApp) {
    let a = app.token("supporter", Some("helse-vestfjord")).await;
    let k = app.token("supporter", Some("vikafjord-kommune")).await;
    app.tick(&a, "helse-vestfjord", "akuttmottak", &[], 9).await;
    app.tick(&k, "vikafjord-kommune", "sykehjem", &[], 4).await;
    app.at(datetime!(2027-01-10 12:00 UTC));
    app.svc.run_lifecycle().await.unwrap();
}

#[tokio::test]
async fn a_researcher_downloads_signed_csv_and_json_that_verify() {
    let app = TestApp::new();
    released_year(&app).await;
    let researcher = app.token("researcher", None).await;
    let mut b = signed_in(&app, &researcher).await;
    let page = b.get("/export").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let key = app.svc.public_key();
    assert!(page.body.contains(&key), "the signing key is shown");
    assert!(page.body.contains("tellestrek verify"));
    assert!(
        page.body.contains("helse-vestfjord"),
        "the ledger: {}",
        page.body
    );

    let q = "org=helse-vestfjord&marginal=&from=2026&to=2026&format=csv&lang=nb";
    let csv = b.get(&format!("/export/download?{q}")).await;
    assert_eq!(csv.status, StatusCode::OK, "{}", csv.body);
    assert!(
        csv.headers[header::CONTENT_DISPOSITION]
            .to_str()
            .unwrap()
            .contains("tellestrek-releases.csv")
    );
    assert!(csv.body.contains("helse-vestfjord"));
    assert!(
        !csv.body.contains("vikafjord-kommune"),
        "only the organisation picked"
    );
    let sig = b.get(&format!("/export/download.sig?{q}")).await;
    assert_eq!(sig.status, StatusCode::OK);
    tellestrek::service::verify_detached(csv.body.as_bytes(), sig.body.trim(), &key).unwrap();

    let json = b
        .get("/export/download?org=&marginal=kanal&from=&to=&format=json")
        .await;
    assert_eq!(json.status, StatusCode::OK, "{}", json.body);
    assert!(
        json.headers[header::CONTENT_DISPOSITION]
            .to_str()
            .unwrap()
            .contains("tellestrek-releases.json")
    );
    let n = tellestrek::service::verify_export(&json.body, Some(&key)).unwrap();
    assert_eq!(n, 2, "kanal of both organisations");

    // Bad input: a page that names the field, nothing downloaded.
    let bad = b.get("/export/download?from=2026-13&format=csv").await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(bad.body.contains("from"), "{}", bad.body);
}

#[tokio::test]
async fn the_export_page_is_for_researchers_and_admins_only() {
    let app = TestApp::new();
    let mut anon = Browser::new(&app);
    assert_eq!(anon.get("/export").await.location(), "/");
    assert_eq!(
        anon.get("/export/download?format=csv").await.location(),
        "/"
    );
    for (role, org) in [
        ("leader", Some("helse-vestfjord")),
        ("coordinator", Some("helse-vestfjord")),
        ("supporter", Some("helse-vestfjord")),
    ] {
        let token = app.token(role, org).await;
        let mut b = signed_in(&app, &token).await;
        assert_eq!(
            b.get("/export").await.status,
            StatusCode::FORBIDDEN,
            "{role}"
        );
        assert_eq!(
            b.get("/export/download?format=json").await.status,
            StatusCode::FORBIDDEN,
            "{role}"
        );
    }
    let mut admin = signed_in(&app, ADMIN).await;
    assert_eq!(admin.get("/export").await.status, StatusCode::OK);
}

/// The text between `marker` and the next `<`, in `page`.
fn after(page: &Page, marker: &str) -> String {
    let start = page
        .body
        .find(marker)
        .unwrap_or_else(|| panic!("{marker} in {}", page.body))
        + marker.len();
    let end = page.body[start..].find('<').unwrap() + start;
    page.body[start..end].to_string()
}

#[tokio::test]
async fn an_admin_creates_and_revokes_an_invite_and_the_revoked_link_cannot_sign_in() {
    let app = TestApp::new();
    let mut admin = signed_in(&app, ADMIN).await;
    assert_eq!(admin.get("/").await.location(), "/admin");
    let page = admin.get("/admin").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("Publiseringsplanen"), "the plan");
    assert!(
        page.body.contains("95%"),
        "the accuracy table: {}",
        page.body
    );
    let csrf = page.hidden("csrf");
    let created = admin
        .post(
            "/admin/invites",
            &[
                ("csrf", &csrf),
                ("name", "Kari på akutten"),
                ("role", "supporter"),
                ("org", "helse-vestfjord"),
            ],
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert!(
        created.body.contains("Kari på akutten"),
        "with the name given"
    );
    let link = after(&created, "data-testid=\"shown-once\">");
    assert!(
        link.starts_with("http://") && link.contains("/invite/"),
        "{link}"
    );
    let path = &link[link.find("/invite/").unwrap()..];
    // Listed (never the link), then revoked.
    let list = admin.get("/admin").await;
    assert!(!list.body.contains(path), "the link is shown once");
    let id = after(&list, "<tr><th scope=\"row\"><code>");
    let revoked = admin
        .post("/admin/invites/revoke", &[("csrf", &csrf), ("id", &id)])
        .await;
    assert_eq!(revoked.status, StatusCode::SEE_OTHER, "{}", revoked.body);
    assert!(app.svc.list_invites(&admin_principal()).unwrap().is_empty());
    // The revoked link signs nobody in.
    let mut phone = Browser::new(&app);
    let page = phone.get(path).await;
    let r = phone
        .post(
            "/invite",
            &[
                ("csrf", &page.hidden("csrf")),
                ("secret", &path["/invite/".len()..]),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::GONE, "{}", r.body);
    assert!(!phone.cookies.contains_key("tellestrek_session"));
}

fn admin_principal() -> tellestrek::service::Principal {
    tellestrek::service::Principal {
        token_id: String::new(),
        role: tellestrek::domain::Role::Admin,
        org: None,
    }
}

#[tokio::test]
async fn an_admin_creates_and_revokes_a_token_and_releases_a_closed_period() {
    let app = TestApp::new();
    let mut admin = signed_in(&app, ADMIN).await;
    let csrf = admin.get("/admin").await.hidden("csrf");
    let created = admin
        .post(
            "/admin/tokens",
            &[
                ("csrf", &csrf),
                ("role", "leader"),
                ("org", "helse-vestfjord"),
            ],
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let token = after(&created, "data-testid=\"shown-once\">");
    let (s, _) = app
        .call("GET", "/api/v1/releases", Some(&token), None)
        .await;
    assert_eq!(s, StatusCode::OK, "the new token works");
    let all = app.svc.list_tokens(&admin_principal()).unwrap();
    let id = all
        .iter()
        .find(|t| t.role.as_str() == "leader")
        .unwrap()
        .id
        .clone();
    let r = admin
        .post("/admin/tokens/revoke", &[("csrf", &csrf), ("id", &id)])
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let (s, _) = app
        .call("GET", "/api/v1/releases", Some(&token), None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "revoked");
    // A missing org is refused with a message that names the field; nothing is created.
    let bad = admin
        .post(
            "/admin/tokens",
            &[("csrf", &csrf), ("role", "leader"), ("org", "")],
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(bad.body.contains("org"), "{}", bad.body);
    assert_eq!(
        app.svc.list_tokens(&admin_principal()).unwrap().len(),
        all.len() - 1
    );

    // November closes after its grace days; "release now" draws it.
    let sup = app.token("supporter", Some("helse-vestfjord")).await;
    app.tick(&sup, "helse-vestfjord", "akuttmottak", &[], 5)
        .await;
    app.at(datetime!(2026-12-20 12:00 UTC));
    let page = admin.get("/admin").await;
    assert!(
        page.body.contains("name=\"period\" value=\"2026-11\""),
        "{}",
        page.body
    );
    let r = admin
        .post(
            "/admin/periods/release",
            &[("csrf", &csrf), ("period", "2026-11")],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert!(app.svc.release("2026-11/helse-vestfjord/total").is_ok());
}

#[tokio::test]
async fn a_coordinator_sees_the_supporter_part_of_their_own_organisation_only() {
    let app = TestApp::new();
    let other = app.token("supporter", Some("vikafjord-kommune")).await;
    let own = app.token("supporter", Some("helse-vestfjord")).await;
    let _ = (other, own);
    let coord = app.token("coordinator", Some("helse-vestfjord")).await;
    let mut b = signed_in(&app, &coord).await;
    let page = b.get("/admin").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(!page.body.contains("/admin/periods/release"), "no periods");
    assert!(!page.body.contains("Publiseringsplanen"), "no policy");
    assert!(
        !page.body.contains("action=\"/admin/tokens\""),
        "no new tokens"
    );
    assert!(!page.body.contains("vikafjord-kommune"), "{}", page.body);
    assert!(!page.body.contains("value=\"leader\""), "supporters only");
    let csrf = page.hidden("csrf");
    // An invite for another organisation or role is refused, as the API refuses it (403).
    for (role, org) in [
        ("supporter", "vikafjord-kommune"),
        ("leader", "helse-vestfjord"),
    ] {
        let r = b
            .post(
                "/admin/invites",
                &[("csrf", &csrf), ("role", role), ("org", org)],
            )
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{role} {org}");
    }
    let r = b
        .post("/admin/invites", &[("csrf", &csrf), ("name", "Ola")])
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = b
        .post(
            "/admin/periods/release",
            &[("csrf", &csrf), ("period", "2026-10")],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "releasing is the admin's");
    // Leaders, researchers and supporters have no admin page.
    for (role, org) in [
        ("leader", Some("helse-vestfjord")),
        ("researcher", None),
        ("supporter", Some("helse-vestfjord")),
    ] {
        let token = app.token(role, org).await;
        let mut b = signed_in(&app, &token).await;
        assert_eq!(
            b.get("/admin").await.status,
            StatusCode::FORBIDDEN,
            "{role}"
        );
    }
    let mut anon = Browser::new(&app);
    assert_eq!(anon.get("/admin").await.location(), "/");
}

#[tokio::test]
async fn every_admin_form_refuses_a_post_without_its_csrf_token() {
    let app = TestApp::new();
    let mut admin = signed_in(&app, ADMIN).await;
    // November is closed (after its 7 grace days).
    app.at(datetime!(2026-12-20 12:00 UTC));
    let invite_path = app
        .svc
        .sign_in_link(
            tellestrek::domain::Role::Supporter,
            Some("helse-vestfjord"),
            None,
            None,
        )
        .unwrap();
    let invites = app.svc.list_invites(&admin_principal()).unwrap();
    let tokens = app.svc.list_tokens(&admin_principal()).unwrap();
    let before = app.snapshot();
    let page = admin.get("/admin").await;
    assert!(
        page.body.contains("name=\"period\" value=\"2026-11\""),
        "closed"
    );
    for (path, fields) in [
        ("/admin/tokens", vec![("role", "researcher")]),
        ("/admin/tokens/revoke", vec![("id", tokens[0].id.as_str())]),
        ("/admin/invites", vec![("org", "helse-vestfjord")]),
        (
            "/admin/invites/revoke",
            vec![("id", invites[0].id.as_str())],
        ),
        ("/admin/periods/release", vec![("period", "2026-11")]),
    ] {
        let r = admin.post(path, &fields).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path} without a token");
        let mut wrong = fields.clone();
        wrong.push(("csrf", "not-the-token"));
        let r = admin.post(path, &wrong).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path} with a wrong token");
    }
    assert_eq!(app.snapshot(), before, "nothing changed");
    assert_eq!(app.svc.list_invites(&admin_principal()).unwrap().len(), 1);
    assert!(app.svc.release("2026-11/helse-vestfjord/total").is_err());
    let _ = invite_path;
}

#[tokio::test]
async fn the_demo_prints_a_sign_in_link_per_role_that_opens_its_page() {
    let dir = tempfile::tempdir().unwrap();
    let d = tellestrek::demo::build(
        dir.path(),
        crate::helpers::NOW,
        std::sync::Arc::new(tellestrek::dp::ZeroNoise),
    )
    .await
    .unwrap();
    let links = tellestrek::demo::sign_in_links(&d, "http://127.0.0.1:8080").unwrap();
    let vars: Vec<&str> = links.iter().map(|l| l.0.as_str()).collect();
    for v in [
        "SIGNIN_ADMIN",
        "SIGNIN_COORDINATOR",
        "SIGNIN_LEADER",
        "SIGNIN_RESEARCHER",
        "SIGNIN_SUPPORTER",
    ] {
        assert!(vars.contains(&v), "{v} in {vars:?}");
    }
    let env = tellestrek::demo::sign_in_env_lines(&links);
    assert!(
        env.contains("export SIGNIN_LEADER='http://127.0.0.1:8080/invite/"),
        "{env}"
    );
    let app = TestApp {
        router: tellestrek::server::app(d.svc.clone()),
        svc: d.svc.clone(),
        clock: d.clock.clone(),
        dir,
    };
    for (var, _, link) in &links {
        let path = &link["http://127.0.0.1:8080".len()..];
        let mut b = Browser::new(&app);
        let page = b.get(path).await;
        let r = b
            .post(
                "/invite",
                &[
                    ("csrf", &page.hidden("csrf")),
                    ("secret", &path["/invite/".len()..]),
                ],
            )
            .await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{var}");
        let home = b.get("/").await;
        let expected = match var.as_str() {
            "SIGNIN_ADMIN" => "/admin",
            "SIGNIN_RESEARCHER" => "/export",
            "SIGNIN_SUPPORTER" => "/tick",
            "SIGNIN_LEADER" | "SIGNIN_COORDINATOR" => "/dashboard",
            _ => "",
        };
        assert_eq!(home.location(), expected, "{var}");
        if !expected.is_empty() {
            assert_eq!(b.get(expected).await.status, StatusCode::OK, "{var}");
        }
    }
}
