//! Token management: roles, organisation scope, revocation, and that secrets are shown once.

use axum::http::StatusCode;
use serde_json::json;

use crate::helpers::{ADMIN, TestApp, tick_body};

#[tokio::test]
async fn admin_creates_lists_and_revokes_tokens_and_secrets_are_shown_once() {
    let app = TestApp::new();
    let (s, v) = app
        .call(
            "POST",
            "/api/v1/tokens",
            Some(ADMIN),
            Some(json!({"role": "leader", "org": "helse-vestfjord"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let token = v["token"].as_str().unwrap().to_string();
    let id = v["id"].as_str().unwrap().to_string();
    assert!(token.starts_with("tst_") && token.len() > 40);
    let (s, list) = app.call("GET", "/api/v1/tokens", Some(ADMIN), None).await;
    assert_eq!(s, StatusCode::OK);
    let text = list.to_string();
    assert!(
        !text.contains(&token) && !text.contains(ADMIN),
        "the list must not show secrets"
    );
    let rec = list["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id)
        .unwrap();
    assert_eq!(rec["role"], "leader");
    assert_eq!(rec["org"], "helse-vestfjord");
    assert_eq!(rec["created"], "2026-11");
    // The leader can read the policy until revoked.
    assert_eq!(
        app.call("GET", "/api/v1/policy", Some(&token), None)
            .await
            .0,
        StatusCode::OK
    );
    let (s, _) = app
        .call("DELETE", &format!("/api/v1/tokens/{id}"), Some(ADMIN), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = app.call("GET", "/api/v1/policy", Some(&token), None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_token"))
    );
    let (s, v) = app
        .call("DELETE", &format!("/api/v1/tokens/{id}"), Some(ADMIN), None)
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("token_not_found"))
    );
}

#[tokio::test]
async fn a_revoked_supporter_can_no_longer_tick() {
    let app = TestApp::new();
    let (_, v) = app
        .call(
            "POST",
            "/api/v1/tokens",
            Some(ADMIN),
            Some(json!({"role": "supporter", "org": "helse-vestfjord"})),
        )
        .await;
    let sup = v["token"].as_str().unwrap();
    assert_eq!(
        app.call("POST", "/api/v1/ticks", Some(sup), Some(tick_body()))
            .await
            .0,
        StatusCode::CREATED
    );
    app.call(
        "DELETE",
        &format!("/api/v1/tokens/{}", v["id"].as_str().unwrap()),
        Some(ADMIN),
        None,
    )
    .await;
    let before = app.snapshot();
    let (s, _) = app
        .call("POST", "/api/v1/ticks", Some(sup), Some(tick_body()))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(app.snapshot(), before);
}

#[tokio::test]
async fn coordinators_invite_and_revoke_supporters_of_their_own_organisation_only() {
    let app = TestApp::new();
    let coord = app.token("coordinator", Some("vikafjord-kommune")).await;
    let (s, v) = app
        .call(
            "POST",
            "/api/v1/tokens",
            Some(&coord),
            Some(json!({"role": "supporter", "org": "vikafjord-kommune"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let own = v["id"].as_str().unwrap().to_string();
    let (s, v) = app
        .call(
            "POST",
            "/api/v1/tokens",
            Some(&coord),
            Some(json!({"role": "supporter", "org": "helse-vestfjord"})),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("wrong_org"))
    );
    let (s, v) = app
        .call(
            "POST",
            "/api/v1/tokens",
            Some(&coord),
            Some(json!({"role": "leader", "org": "vikafjord-kommune"})),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("wrong_role"))
    );
    // Another organisation's supporter is invisible to this coordinator.
    let (_, v) = app
        .call(
            "POST",
            "/api/v1/tokens",
            Some(ADMIN),
            Some(json!({"role": "supporter", "org": "helse-vestfjord"})),
        )
        .await;
    let foreign = v["id"].as_str().unwrap().to_string();
    let (_, list) = app.call("GET", "/api/v1/tokens", Some(&coord), None).await;
    let ids: Vec<&str> = list["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![own.as_str()]);
    let (s, _) = app
        .call(
            "DELETE",
            &format!("/api/v1/tokens/{foreign}"),
            Some(&coord),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = app
        .call(
            "DELETE",
            &format!("/api/v1/tokens/{own}"),
            Some(&coord),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn bad_token_requests_name_the_field_and_create_nothing() {
    let app = TestApp::new();
    let leader = app.token("leader", Some("helse-vestfjord")).await;
    let cases = [
        (
            Some(ADMIN),
            json!({"role": "overlord"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_role",
            "role",
        ),
        (
            Some(ADMIN),
            json!({"role": "supporter"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "missing_org",
            "org",
        ),
        (
            Some(ADMIN),
            json!({"role": "researcher", "org": "helse-vestfjord"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unexpected_org",
            "org",
        ),
        (
            Some(ADMIN),
            json!({"role": "leader", "org": "nowhere"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_org",
            "nowhere",
        ),
        (
            Some(ADMIN),
            json!({"role": "leader", "org": "helse-vestfjord", "name": "Kari"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_field",
            "name",
        ),
        (
            Some(leader.as_str()),
            json!({"role": "supporter", "org": "helse-vestfjord"}),
            StatusCode::FORBIDDEN,
            "wrong_role",
            "leader",
        ),
        (
            None,
            json!({"role": "supporter", "org": "helse-vestfjord"}),
            StatusCode::UNAUTHORIZED,
            "missing_token",
            "token",
        ),
    ];
    for (token, body, status, code, field) in cases {
        let before = app.snapshot();
        let (s, v) = app
            .call("POST", "/api/v1/tokens", token, Some(body.clone()))
            .await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}: {v}"
        );
        assert!(
            v["error"]["message"].as_str().unwrap().contains(field),
            "{v}"
        );
        assert_eq!(app.snapshot(), before);
    }
    let (s, _) = app.call("GET", "/api/v1/tokens", Some(&leader), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn the_last_admin_token_cannot_be_revoked() {
    let app = TestApp::new();
    let (_, list) = app.call("GET", "/api/v1/tokens", Some(ADMIN), None).await;
    let admin_id = list["tokens"][0]["id"].as_str().unwrap().to_string();
    let (s, v) = app
        .call(
            "DELETE",
            &format!("/api/v1/tokens/{admin_id}"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("last_admin_token"))
    );
    let second = app.token("admin", None).await;
    let (s, _) = app
        .call(
            "DELETE",
            &format!("/api/v1/tokens/{admin_id}"),
            Some(&second),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(
        app.call("GET", "/api/v1/tokens", Some(ADMIN), None).await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn periods_show_their_state_and_dates_from_the_first_collected_period() {
    let app = TestApp::new();
    let (s, v) = app.call("GET", "/api/v1/periods", Some(ADMIN), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let periods = v["periods"].as_array().unwrap();
    assert_eq!(periods[0]["period"], "2026-11");
    assert_eq!(periods[0]["state"], "open");
    assert_eq!(periods[0]["starts"], "2026-11-01");
    assert_eq!(periods[0]["ends"], "2026-11-30");
    assert_eq!(periods[0]["accepts_ticks_until"], "2026-12-07");
    assert_eq!(
        periods.len(),
        1,
        "the service started collecting in November: {v}"
    );
    // 10 December: November's grace days are over.
    app.clock
        .set(crate::helpers::NOW + time::Duration::days(17));
    let (_, v) = app.call("GET", "/api/v1/periods", Some(ADMIN), None).await;
    assert_eq!(v["periods"][0]["period"], "2026-12");
    assert_eq!(v["periods"][0]["state"], "open");
    assert_eq!(v["periods"][1]["period"], "2026-11");
    assert_eq!(v["periods"][1]["state"], "closed");
    let sup = app.token("supporter", Some("helse-vestfjord")).await;
    assert_eq!(
        app.call("GET", "/api/v1/periods", Some(&sup), None).await.0,
        StatusCode::FORBIDDEN
    );
}
