//! The dashboard and methods pages (issue 9), through the real router over the demo's history
//! (zero noise, so the figures are reproducible): scope (a leader of one organisation gets a
//! 403 page for another's), no load or follow-ups for a leader, charts with titles, tables
//! with the same numbers as the API, "95 %" said once, the symbol's legend, and the methods
//! page's measured figures.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::Value;
use tellestrek::demo::{self, SPIKE_UNIT};
use tellestrek::dp::ZeroNoise;
use time::macros::datetime;
use tower::ServiceExt;

/// The demo's service and router, and its tokens by role and organisation.
struct Demo {
    router: Router,
    tokens: Vec<(String, Option<String>, String)>,
    _dir: tempfile::TempDir,
}

impl Demo {
    async fn new() -> Demo {
        let dir = tempfile::tempdir().unwrap();
        let d = demo::build(
            dir.path(),
            datetime!(2026-11-23 10:00 UTC),
            Arc::new(ZeroNoise),
        )
        .await
        .unwrap();
        Demo {
            router: tellestrek::server::app(d.svc.clone()),
            tokens: d.tokens,
            _dir: dir,
        }
    }

    fn token(&self, role: &str, org: Option<&str>) -> String {
        self.tokens
            .iter()
            .find(|t| t.0 == role && t.1.as_deref() == org)
            .unwrap_or_else(|| panic!("no demo token for {role} {org:?}"))
            .2
            .clone()
    }

    async fn send(&self, req: Request<Body>) -> (StatusCode, HeaderMap, String) {
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let (status, headers) = (resp.status(), resp.headers().clone());
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            headers,
            String::from_utf8_lossy(&bytes).into_owned(),
        )
    }

    /// Signs a browser in with `token` as the sign-in page does; returns its cookie header.
    async fn sign_in(&self, token: &str, lang: &str) -> String {
        let (_, headers, body) = self
            .send(Request::get("/").body(Body::empty()).unwrap())
            .await;
        let form_cookie = set_cookie(&headers, "tellestrek_form");
        let marker = "name=\"csrf\" value=\"";
        let start = body.find(marker).unwrap() + marker.len();
        let csrf = &body[start..start + body[start..].find('"').unwrap()];
        let (status, headers, _) = self
            .send(
                Request::post("/sign-in")
                    .header(header::COOKIE, &form_cookie)
                    .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(Body::from(format!("csrf={csrf}&token={token}")))
                    .unwrap(),
            )
            .await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        format!(
            "{}; tellestrek_lang={lang}",
            set_cookie(&headers, "tellestrek_session")
        )
    }

    async fn page(&self, cookie: &str, path: &str) -> (StatusCode, HeaderMap, String) {
        self.send(
            Request::get(path)
                .header(header::COOKIE, cookie)
                .body(Body::empty())
                .unwrap(),
        )
        .await
    }

    async fn api(&self, token: &str, path: &str) -> Value {
        let (status, _, body) = self
            .send(
                Request::get(path)
                    .header(header::AUTHORIZATION, format!("Bearer {token}"))
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        serde_json::from_str(&body).unwrap()
    }
}

/// `name=value` of the `Set-Cookie` header setting `name`.
fn set_cookie(headers: &HeaderMap, name: &str) -> String {
    headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .and_then(|v| v.split(';').next())
        .unwrap_or_else(|| panic!("no {name} cookie set"))
        .to_string()
}

#[tokio::test]
async fn a_leader_sees_charts_tables_and_alerts_of_their_own_organisation_only() {
    let demo = Demo::new().await;
    let hv = SPIKE_UNIT.0;
    let token = demo.token("leader", Some(hv));
    let cookie = demo.sign_in(&token, "nb").await;
    let (status, headers, body) = demo.page(&cookie, "/dashboard").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .contains("style-src 'self'")
    );
    // Charts: titled, described images, styled without `style` attributes (the CSP).
    for id in ["chart-uptake", "chart-trend"] {
        assert!(
            body.contains(&format!(
                "role=\"img\" aria-labelledby=\"{id}-title {id}-desc\""
            )),
            "{id}"
        );
        assert!(body.contains(&format!("<title id=\"{id}-title\">")), "{id}");
        assert!(body.contains(&format!("<desc id=\"{id}-desc\">")), "{id}");
    }
    assert!(!body.contains("style="));
    assert!(!body.contains("<script"));
    // "95 %" once, in the reading panel; the symbol explained; which uptake is counted.
    assert_eq!(body.matches("95 %").count(), 1);
    assert!(body.contains("Slik leser du tallene"));
    assert!(body.contains("Tegnet «:» betyr"));
    assert!(body.contains("/methods"));
    // Tables: the API's numbers, in the same words.
    let api = demo.api(&token, "/api/v1/dashboard").await;
    let unit = &api["uptake"]["by_unit"][0];
    let last = unit["quarters"].as_array().unwrap().last().unwrap();
    let words = last["per_100"]["words"]["nb"].as_str().unwrap();
    assert!(
        body.contains(&format!("<td>{words}</td>")),
        "{words} not in a table"
    );
    let month = api["trend"].as_array().unwrap().last().unwrap();
    assert!(body.contains(&format!(
        "<td>{}</td>",
        month["total"]["words"]["nb"].as_str().unwrap()
    )));
    assert!(body.contains(api["uptake"]["basis"]["nb"].as_str().unwrap()));
    // At least one alert from the demo history, in the page's words.
    let alerts = api["alerts"].as_array().unwrap();
    assert!(!alerts.is_empty());
    for a in alerts {
        let text = a["text"]["nb"].as_str().unwrap();
        assert!(body.contains(&text.replace('<', "&#60;")), "{a}");
    }
    assert!(body.contains("ds-tag"));
    // Never the load or the follow-up requests for a leader.
    assert!(!body.contains("Belastning på støttepersonene"));
    assert!(!body.contains("Forespørsler om oppfølging"));
    assert!(!body.contains("id=\"pick-org\""));

    // The year before, released in full: its breakdowns are charts with tables too.
    assert!(body.contains("href=\"/dashboard?year=2025\""));
    assert!(!body.contains("year=2027"));
    let (status, _, body) = demo.page(&cookie, "/dashboard?year=2025").await;
    assert_eq!(status, StatusCode::OK);
    for dim in ["yrkesgruppe", "utlosende-arsak", "initiering", "kanal"] {
        assert!(
            body.contains(&format!("<title id=\"chart-{dim}-title\">")),
            "{dim}"
        );
    }
    assert_eq!(body.matches("95 %").count(), 1);

    // Another organisation's page: refused, with no number of it.
    let (status, _, body) = demo.page(&cookie, "/dashboard?org=vikafjord-kommune").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("ikke tilgang"), "{body}");
    assert!(!body.contains("ca. "));
    // And the other way round, in English.
    let other = demo
        .sign_in(&demo.token("leader", Some("vikafjord-kommune")), "en")
        .await;
    let (status, _, body) = demo.page(&other, &format!("/dashboard?org={hv}")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("may not see"), "{body}");
    let (status, _, body) = demo.page(&other, "/dashboard").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("How to read these numbers"));
    assert_eq!(body.matches("95 %").count(), 1);
    assert!(body.contains("Vikafjord"), "{body}");
}

#[tokio::test]
async fn the_coordinator_sees_load_and_follow_ups_and_an_admin_picks_the_organisation() {
    let demo = Demo::new().await;
    let hv = SPIKE_UNIT.0;
    let cookie = demo
        .sign_in(&demo.token("coordinator", Some(hv)), "nb")
        .await;
    let (status, _, body) = demo.page(&cookie, "/dashboard").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("Belastning på støttepersonene"));
    assert!(body.contains("Forespørsler om oppfølging"));

    let admin = demo.sign_in(&demo.token("admin", None), "en").await;
    let (status, _, body) = demo
        .page(&admin, "/dashboard?org=vikafjord-kommune&year=2026")
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("id=\"pick-org\""));
    assert!(body.contains("<option value=\"vikafjord-kommune\" selected>"));
    assert!(!body.contains("Load on the supporters"));
    let (status, _, body) = demo.page(&admin, "/dashboard?year=twenty").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body.contains("year"), "{body}");
    let (status, _, _) = demo.page(&admin, "/dashboard?org=nowhere").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A supporter has no dashboard; no session goes to sign-in.
    let sup = demo.sign_in(&demo.token("supporter", Some(hv)), "nb").await;
    let (status, _, _) = demo.page(&sup, "/dashboard").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, headers, _) = demo.page("", "/dashboard").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers[header::LOCATION], "/");
}

#[tokio::test]
async fn the_methods_page_prints_each_rules_measured_figures_in_both_languages() {
    let demo = Demo::new().await;
    for (lang, words) in [("nb", "Falske alarmer"), ("en", "False alarms")] {
        let (status, _, body) = demo
            .page(&format!("tellestrek_lang={lang}"), "/methods")
            .await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains(words));
        assert!(body.contains("ε"));
        for m in tellestrek::service::METHODS {
            for x in [
                m.false_alarm_possible,
                m.false_alarm_certain,
                m.power_possible,
                m.power_certain,
            ] {
                assert!(body.contains(&format!("<td>{:.0} %</td>", 100.0 * x)));
            }
        }
    }
}
