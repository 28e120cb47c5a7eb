//! `POST /api/v1/ticks`: what is accepted, and that every rejection has its own status and
//! code, names the field, and changes nothing (issue 2).

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{NOW, TestApp, tick_body};

/// Sends `body` as `token` and asserts the status, the error code, that the message mentions
/// `field`, and that the store is byte-for-byte unchanged.
async fn rejected(
    app: &TestApp,
    token: Option<&str>,
    body: Value,
    status: StatusCode,
    code: &str,
    field: &str,
) {
    let before = app.snapshot();
    let (s, v) = app
        .call("POST", "/api/v1/ticks", token, Some(body.clone()))
        .await;
    assert_eq!(s, status, "body {body} gave {v}");
    assert_eq!(v["error"]["code"], code, "body {body} gave {v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains(field), "message `{msg}` should name `{field}`");
    assert_eq!(
        app.snapshot(),
        before,
        "a rejected tick ({code}) changed the store"
    );
}

#[tokio::test]
async fn a_valid_tick_is_counted_and_acknowledged_with_the_period() {
    let app = TestApp::new();
    let sup = app.token("supporter", Some("helse-vestfjord")).await;
    let (s, v) = app
        .call("POST", "/api/v1/ticks", Some(&sup), Some(tick_body()))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v, json!({"period": "2026-11", "accepted": 1}));
    let mut body = tick_body();
    body["count"] = json!(3);
    let (s, v) = app
        .call("POST", "/api/v1/ticks", Some(&sup), Some(body))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(v["accepted"], 3);
    assert_eq!(app.total("2026-11"), 4);
}

#[tokio::test]
async fn the_previous_period_accepts_ticks_during_the_grace_days_only() {
    let app = TestApp::new();
    let sup = app.token("supporter", Some("helse-vestfjord")).await;
    // 3 December: November is within its 7 grace days.
    app.clock.set(NOW + time::Duration::days(10));
    let mut body = tick_body();
    body["period"] = json!("2026-11");
    let (s, v) = app
        .call("POST", "/api/v1/ticks", Some(&sup), Some(body.clone()))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["period"], "2026-11");
    // The default is the current period.
    let (_, v) = app
        .call("POST", "/api/v1/ticks", Some(&sup), Some(tick_body()))
        .await;
    assert_eq!(v["period"], "2026-12");
    // 8 December: November is closed.
    app.clock.set(NOW + time::Duration::days(15));
    rejected(
        &app,
        Some(&sup),
        body,
        StatusCode::CONFLICT,
        "period_not_open",
        "2026-11",
    )
    .await;
    assert_eq!(app.total("2026-11"), 1);
}

#[tokio::test]
async fn every_kind_of_bad_tick_gets_its_own_status_and_code_and_changes_nothing() {
    let app = TestApp::new();
    let sup = app.token("supporter", Some("helse-vestfjord")).await;
    let other_org = app.token("supporter", Some("vikafjord-kommune")).await;
    let leader = app.token("leader", Some("helse-vestfjord")).await;
    // Something is stored already, so "unchanged" is not trivially an empty store.
    assert_eq!(
        app.call("POST", "/api/v1/ticks", Some(&sup), Some(tick_body()))
            .await
            .0,
        StatusCode::CREATED
    );
    let with = |f: &dyn Fn(&mut Value)| {
        let mut b = tick_body();
        f(&mut b);
        b
    };
    let s = Some(sup.as_str());
    use StatusCode as S;
    let cases: Vec<(Option<&str>, Value, StatusCode, &str, &str)> = vec![
        (
            s,
            with(&|b| b["org"] = json!("helse-ost")),
            S::UNPROCESSABLE_ENTITY,
            "unknown_org",
            "org",
        ),
        (
            s,
            with(&|b| b["unit"] = json!("kantina")),
            S::UNPROCESSABLE_ENTITY,
            "unknown_unit",
            "unit",
        ),
        (
            s,
            with(&|b| b["unit"] = json!("sykehjem")),
            S::UNPROCESSABLE_ENTITY,
            "unknown_unit",
            "sykehjem",
        ),
        (
            s,
            with(&|b| b["tags"]["stemning"] = json!("god")),
            S::UNPROCESSABLE_ENTITY,
            "unknown_dimension",
            "stemning",
        ),
        (
            s,
            with(&|b| b["tags"]["kanal"] = json!("brevdue")),
            S::UNPROCESSABLE_ENTITY,
            "unknown_value",
            "tags.kanal",
        ),
        (
            s,
            with(&|b| {
                b["tags"].as_object_mut().unwrap().remove("varighet");
            }),
            S::UNPROCESSABLE_ENTITY,
            "missing_dimension",
            "varighet",
        ),
        (
            s,
            with(&|b| b["note"] = json!("Kari was upset")),
            S::UNPROCESSABLE_ENTITY,
            "unknown_field",
            "note",
        ),
        (
            s,
            with(&|b| b["tags"]["kanal"] = json!({"fri": "tekst"})),
            S::UNPROCESSABLE_ENTITY,
            "invalid_type",
            "tags.kanal",
        ),
        (
            s,
            with(&|b| {
                b.as_object_mut().unwrap().remove("unit");
            }),
            S::UNPROCESSABLE_ENTITY,
            "missing_field",
            "unit",
        ),
        (
            s,
            with(&|b| b["count"] = json!(0)),
            S::UNPROCESSABLE_ENTITY,
            "invalid_count",
            "count",
        ),
        (
            s,
            with(&|b| b["count"] = json!(-2)),
            S::UNPROCESSABLE_ENTITY,
            "invalid_count",
            "count",
        ),
        (
            s,
            with(&|b| b["count"] = json!(11)),
            S::UNPROCESSABLE_ENTITY,
            "invalid_count",
            "count",
        ),
        (
            s,
            with(&|b| b["count"] = json!("3")),
            S::UNPROCESSABLE_ENTITY,
            "invalid_type",
            "count",
        ),
        (
            s,
            with(&|b| b["count"] = json!(1.5)),
            S::UNPROCESSABLE_ENTITY,
            "invalid_type",
            "count",
        ),
        (
            s,
            with(&|b| b["period"] = json!("november")),
            S::UNPROCESSABLE_ENTITY,
            "invalid_period",
            "period",
        ),
        (
            s,
            with(&|b| b["period"] = json!("2026-Q4")),
            S::UNPROCESSABLE_ENTITY,
            "invalid_period",
            "period",
        ),
        (
            s,
            with(&|b| b["period"] = json!("2026-09")),
            S::CONFLICT,
            "period_not_open",
            "period",
        ),
        (
            s,
            with(&|b| b["period"] = json!("2026-12")),
            S::CONFLICT,
            "period_not_open",
            "not started",
        ),
        (None, tick_body(), S::UNAUTHORIZED, "missing_token", "token"),
        (
            Some("tst_not-a-real-token"),
            tick_body(),
            S::UNAUTHORIZED,
            "invalid_token",
            "token",
        ),
        (
            Some(leader.as_str()),
            tick_body(),
            S::FORBIDDEN,
            "wrong_role",
            "supporter",
        ),
        (
            Some(other_org.as_str()),
            tick_body(),
            S::FORBIDDEN,
            "wrong_org",
            "org",
        ),
    ];
    for (token, body, status, code, field) in cases {
        rejected(&app, token, body, status, code, field).await;
    }
    assert_eq!(app.total("2026-11"), 1);
}

#[tokio::test]
async fn malformed_oversized_and_non_json_bodies_are_refused_without_change() {
    let app = TestApp::new();
    let sup = app.token("supporter", Some("helse-vestfjord")).await;
    let before = app.snapshot();
    let (s, v) = app
        .raw(
            "POST",
            "/api/v1/ticks",
            Some(&sup),
            Some(b"{\"org\": ".to_vec()),
            "application/json",
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("malformed_json"))
    );
    let (s, v) = app
        .raw(
            "POST",
            "/api/v1/ticks",
            Some(&sup),
            Some(format!("{} {{}}", tick_body()).into_bytes()),
            "application/json",
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("malformed_json"))
    );
    let (s, v) = app
        .raw(
            "POST",
            "/api/v1/ticks",
            Some(&sup),
            Some(tick_body().to_string().into_bytes()),
            "text/plain",
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Some("unsupported_media_type")
        )
    );
    let mut big = tick_body();
    big["tags"]["padding"] = json!("x".repeat(20_000));
    let (s, v) = app
        .call("POST", "/api/v1/ticks", Some(&sup), Some(big))
        .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    assert_eq!(v["error"]["code"], "body_too_large");
    assert!(v["error"]["message"].as_str().unwrap().contains("bytes"));
    assert_eq!(app.snapshot(), before);
}

#[tokio::test]
async fn a_supporter_over_the_period_cap_gets_429_and_nothing_is_counted() {
    let app = TestApp::new();
    let sup = app.token("supporter", Some("helse-vestfjord")).await;
    let mut ten = tick_body();
    ten["count"] = json!(10);
    for _ in 0..3 {
        assert_eq!(
            app.call("POST", "/api/v1/ticks", Some(&sup), Some(ten.clone()))
                .await
                .0,
            StatusCode::CREATED
        );
    }
    let mut nine = tick_body();
    nine["count"] = json!(9);
    assert_eq!(
        app.call("POST", "/api/v1/ticks", Some(&sup), Some(nine))
            .await
            .0,
        StatusCode::CREATED
    );
    // 39 of 40 used: a request for 2 is refused whole, not cut to 1.
    let mut two = tick_body();
    two["count"] = json!(2);
    let before = app.snapshot();
    let (s, v) = app
        .call("POST", "/api/v1/ticks", Some(&sup), Some(two))
        .await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert_eq!(v["error"]["code"], "tick_cap_exceeded");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("count") && msg.contains("limit of 40"),
        "{msg}"
    );
    // The answer does not tell a token's holder how much its supporter has logged.
    assert!(!msg.contains("39") && !msg.contains("left"), "{msg}");
    assert_eq!(app.snapshot(), before);
    // The last one fits; then the cap holds.
    assert_eq!(
        app.call("POST", "/api/v1/ticks", Some(&sup), Some(tick_body()))
            .await
            .0,
        StatusCode::CREATED
    );
    rejected(
        &app,
        Some(&sup),
        tick_body(),
        StatusCode::TOO_MANY_REQUESTS,
        "tick_cap_exceeded",
        "limit of 40",
    )
    .await;
    // Another supporter is not affected.
    let other = app.token("supporter", Some("helse-vestfjord")).await;
    assert_eq!(
        app.call("POST", "/api/v1/ticks", Some(&other), Some(tick_body()))
            .await
            .0,
        StatusCode::CREATED
    );
    assert_eq!(app.total("2026-11"), 41);
}

#[tokio::test]
async fn the_policy_lists_taxonomy_and_orgs_in_the_documented_shape() {
    let app = TestApp::new();
    let sup = app.token("supporter", Some("vikafjord-kommune")).await;
    let (s, v) = app.call("GET", "/api/v1/policy", Some(&sup), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["period"], "month");
    assert_eq!(v["orgs"][0]["id"], "helse-vestfjord");
    assert!(v["orgs"][0]["units"][0]["headcount"].as_u64().unwrap() > 0);
    let dims = v["dimensions"].as_array().unwrap();
    let kanal = dims.iter().find(|d| d["id"] == "kanal").unwrap();
    assert_eq!(kanal["label"], "Kanal");
    assert_eq!(
        kanal["values"][1],
        json!({"id": "telefon", "label": "Telefon", "labels": {"nb": "Telefon", "en": "Phone"}, "sensitive": false})
    );
    let (_, en) = app
        .call("GET", "/api/v1/policy?lang=en", Some(&sup), None)
        .await;
    assert_eq!(en["dimensions"][0]["label"], "Profession group");
    let (s, v) = app
        .call("GET", "/api/v1/policy?lang=sv", Some(&sup), None)
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_lang"))
    );
    let (s, _) = app.call("GET", "/api/v1/policy", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_in_the_error_shape() {
    let app = TestApp::new();
    let (s, v) = app
        .call("GET", "/api/v1/nothing", Some(crate::helpers::ADMIN), None)
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let (s, v) = app
        .call("GET", "/api/v1/ticks", Some(crate::helpers::ADMIN), None)
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed"))
    );
    let (s, v) = app.call("GET", "/healthz", None, None).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("ok")));
}

#[tokio::test]
async fn a_dimension_given_twice_is_refused_not_silently_overwritten() {
    let app = TestApp::new();
    let sup = app.token("supporter", Some("helse-vestfjord")).await;
    let body = tick_body().to_string().replacen(
        "\"kanal\":\"fysisk\"",
        "\"kanal\":\"fysisk\",\"kanal\":\"telefon\"",
        1,
    );
    assert!(body.contains("\"kanal\":\"telefon\""), "fixture: {body}");
    let before = app.snapshot();
    let (s, v) = app
        .raw(
            "POST",
            "/api/v1/ticks",
            Some(&sup),
            Some(body.into_bytes()),
            "application/json",
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("duplicate_field")),
        "{v}"
    );
    assert!(
        v["error"]["message"].as_str().unwrap().contains("tags")
            && v["error"]["message"].as_str().unwrap().contains("kanal"),
        "{v}"
    );
    assert_eq!(app.snapshot(), before);
}
