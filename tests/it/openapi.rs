//! The OpenAPI document (`GET /api/v1/openapi.json`): it lists every JSON route the router
//! serves with its method (the routes come from `server::api_routes`, the table the router is
//! built from), it is valid OpenAPI 3.1, and every answer of every documented operation, to
//! valid and to invalid input, has a status the document lists, a body that its schema for
//! that status accepts, and, for an error, a code the document lists for that status.

use std::collections::{BTreeMap, BTreeSet};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use time::macros::datetime;
use tower::ServiceExt;

use crate::helpers::{ADMIN, TestApp, tick_body};
use crate::pages::Browser;

/// The methods OpenAPI names in a path item.
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// The document as served.
async fn served_document(app: &TestApp) -> Value {
    let req = Request::get("/api/v1/openapi.json")
        .body(Body::empty())
        .unwrap();
    let resp = app.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let h = resp.headers().clone();
    assert_eq!(h[header::CONTENT_TYPE], "application/json");
    assert_eq!(h[header::CACHE_CONTROL], "public, max-age=3600");
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

/// Every (METHOD, path) the document describes.
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in METHODS {
            if item.get(m).is_some() {
                out.insert((m.to_uppercase(), path.clone()));
            }
        }
    }
    out
}

#[tokio::test]
async fn every_json_route_the_router_serves_is_documented_with_its_method() {
    let app = TestApp::new();
    let doc = served_document(&app).await;
    let served: BTreeSet<(String, String)> = tellestrek::server::api_routes()
        .iter()
        .map(|r| (r.method.as_str().to_string(), r.path.to_string()))
        .collect();
    let documented = documented(&doc);
    let missing: Vec<_> = served.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "served but not in the OpenAPI document (or under another method): {missing:?}"
    );
    let extra: Vec<_> = documented.difference(&served).collect();
    assert!(
        extra.is_empty(),
        "in the OpenAPI document but not served: {extra:?}"
    );
    for (_, path) in &served {
        assert!(
            path.starts_with("/api/") || path == "/healthz" || path == "/readyz",
            "{path} is not a JSON route"
        );
    }
    // The router really serves each of them (a missing route answers `not_found`, a wrong
    // method `method_not_allowed`).
    for (method, path) in &served {
        let uri = path.replace("{id}", "x").replace("{period}", "2026-11");
        let req = Request::builder()
            .method(method.as_str())
            .uri(&uri)
            .body(Body::empty())
            .unwrap();
        let resp = app.router.clone().oneshot(req).await.unwrap();
        assert_ne!(
            resp.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {uri}"
        );
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        assert_ne!(v["error"]["code"], "not_found", "{method} {uri}");
    }
}

/// Files under `dir` ending in `.rs`.
fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn json_routes_are_added_only_through_the_route_table() {
    // A `.route("/api/...")` or `.nest("/api", ...)` outside `server::api_routes` would be
    // served without being in the table the coverage test reads.
    let re = regex::Regex::new(
        r#"\.(route|nest|route_service|nest_service)\(\s*"(/api\b|/healthz|/readyz)"#,
    )
    .unwrap();
    let mut files = Vec::new();
    rust_files(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    let mut found = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for m in re.find_iter(&text) {
            found.push(format!("{}: {}", f.display(), m.as_str()));
        }
    }
    assert!(
        found.is_empty(),
        "add JSON routes to server::api_routes: {found:?}"
    );
}

/// Every `$ref` in `v`, with where it is.
fn refs(v: &Value, at: &str, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(map) => {
            for (k, x) in map {
                if k == "$ref"
                    && let Some(r) = x.as_str()
                {
                    out.push((at.to_string(), r.to_string()));
                }
                refs(x, &format!("{at}/{k}"), out);
            }
        }
        Value::Array(items) => {
            for (i, x) in items.iter().enumerate() {
                refs(x, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[tokio::test]
async fn the_document_is_valid_openapi_3_1() {
    let app = TestApp::new();
    let doc = served_document(&app).await;
    let version = doc["openapi"].as_str().unwrap();
    assert!(version.starts_with("3.1."), "openapi is {version}");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(doc["info"]["title"], "Tellestrek API");
    assert!(doc["info"]["license"]["name"].is_string());
    assert!(!doc["info"]["description"].as_str().unwrap().is_empty());
    assert_eq!(doc["servers"][0]["url"], "/", "servers are relative");
    // Every reference resolves inside the document.
    let mut all = Vec::new();
    refs(&doc, "", &mut all);
    assert!(all.len() > 20, "the schemas are shared by reference");
    for (at, r) in &all {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{at}: {r} is not a local reference"));
        assert!(doc.pointer(pointer).is_some(), "{at}: {r} does not resolve");
    }
    // Every schema is a valid JSON Schema (2020-12, the dialect of OpenAPI 3.1).
    for (name, schema) in doc["components"]["schemas"].as_object().unwrap() {
        let mut root = schema.clone();
        root["components"] = doc["components"].clone();
        jsonschema::draft202012::options()
            .build(&root)
            .unwrap_or_else(|e| panic!("components/schemas/{name}: {e}"));
    }
    // Security schemes that operations use exist; each operation has a unique id, a tag, at
    // least one answer, and a declared parameter for every `{name}` in its path.
    let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    for k in ["bearer", "session", "csrf"] {
        assert!(schemes.contains_key(k), "security scheme {k}");
    }
    let mut ids = BTreeSet::new();
    let tags: BTreeSet<&str> = doc["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in METHODS {
            let Some(op) = item.get(m) else { continue };
            let id = op["operationId"].as_str().unwrap();
            assert!(ids.insert(id.to_string()), "operationId {id} twice");
            for t in op["tags"].as_array().unwrap() {
                assert!(tags.contains(t.as_str().unwrap()), "{id}: tag {t}");
            }
            let responses = op["responses"].as_object().unwrap();
            assert!(!responses.is_empty(), "{id} has no responses");
            if op["security"] != json!([{}]) {
                // Behind a token: refused without one, and may fail inside.
                for status in ["401", "500"] {
                    assert!(
                        responses.contains_key(status),
                        "{id} does not list {status}"
                    );
                }
            }
            for (status, r) in responses {
                assert!(status.parse::<u16>().is_ok(), "{id}: status {status}");
                assert!(r["description"].is_string(), "{id} {status}");
            }
            for req in op["security"].as_array().into_iter().flatten() {
                for k in req.as_object().unwrap().keys() {
                    assert!(schemes.contains_key(k), "{id}: scheme {k}");
                }
            }
            let declared: BTreeSet<&str> = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["in"] == "path")
                .map(|p| p["name"].as_str().unwrap())
                .collect();
            let in_path: BTreeSet<&str> = path
                .split('/')
                .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
                .collect();
            assert_eq!(declared, in_path, "{id}: path parameters");
        }
    }
    // Public operations say so; the rest need a bearer token or the session and its header.
    assert_eq!(
        doc["security"],
        json!([{"bearer": []}, {"session": [], "csrf": []}])
    );
    for (path, m) in [
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/api/v1/openapi.json", "get"),
        ("/api/v1/signing-key", "get"),
    ] {
        assert_eq!(doc["paths"][path][m]["security"], json!([{}]), "{path}");
    }
}

/// Checks live answers against the document and remembers which statuses each operation
/// gave.
struct Checker<'a> {
    app: &'a TestApp,
    doc: Value,
    /// `components`, with every plain object schema closed (`additionalProperties: false`),
    /// so a field the document does not describe fails too.
    components: Value,
    seen: BTreeMap<(String, String), BTreeSet<u16>>,
}

impl<'a> Checker<'a> {
    async fn new(app: &'a TestApp) -> Checker<'a> {
        let doc = served_document(app).await;
        let mut components = doc["components"].clone();
        // Schemas that are part of an `allOf` stay open: the other parts add fields.
        let mut all = Vec::new();
        refs(&doc, "", &mut all);
        let in_all_of: BTreeSet<String> = all
            .iter()
            .filter(|(at, _)| at.contains("/allOf/"))
            .map(|(_, r)| r.rsplit('/').next().unwrap().to_string())
            .collect();
        for (name, s) in components["schemas"].as_object_mut().unwrap() {
            if s.get("properties").is_some()
                && s.get("additionalProperties").is_none()
                && !in_all_of.contains(name)
            {
                s["additionalProperties"] = json!(false);
            }
        }
        Checker {
            app,
            doc,
            components,
            seen: BTreeMap::new(),
        }
    }

    /// A validator for `schema`, a schema of the document whose references point into
    /// (closed) `components`.
    fn validator(&self, schema: &Value) -> jsonschema::Validator {
        let mut root = schema.clone();
        root["components"] = self.components.clone();
        jsonschema::draft202012::options()
            .should_validate_formats(true)
            .build(&root)
            .unwrap_or_else(|e| panic!("the schema {schema} does not build: {e}"))
    }

    /// Sends `method uri` (an instance of the documented `path`) with an optional bearer token,
    /// extra headers and a body (JSON unless a `content-type` is among the headers), checks the
    /// answer against the document, and returns its status and body (JSON, or a string).
    async fn call(
        &mut self,
        method: &str,
        path: &str,
        uri: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let has_type = headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"));
        if body.is_some() && !has_type {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req.body(body.map_or_else(Body::empty, Body::from)).unwrap();
        let resp = self.app.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let ctype = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string());
        let resp_headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let label = format!("{method} {uri} answered {status}");
        let op = &self.doc["paths"][path][method.to_lowercase()];
        assert!(op.is_object(), "{method} {path} is not documented");
        let documented = &op["responses"][status.as_str()];
        assert!(
            documented.is_object(),
            "{label}, a status the document does not list for {method} {path}: {}",
            String::from_utf8_lossy(&bytes)
        );
        let value = match documented.get("content") {
            None => {
                assert!(
                    bytes.is_empty(),
                    "{label} with a body the document does not give"
                );
                Value::Null
            }
            Some(content) => {
                let ctype = ctype.unwrap_or_else(|| panic!("{label} without a Content-Type"));
                let media = ctype.split(';').next().unwrap().trim();
                let schema = &content[media]["schema"];
                assert!(
                    schema.is_object(),
                    "{label} as {media}, which the document does not list"
                );
                let value = if media == "application/json" {
                    serde_json::from_slice(&bytes)
                        .unwrap_or_else(|e| panic!("{label}: not JSON: {e}"))
                } else {
                    Value::String(String::from_utf8(bytes.to_vec()).unwrap())
                };
                let validator = self.validator(schema);
                let errors: Vec<String> = validator
                    .iter_errors(&value)
                    .map(|e| format!("{} at {}", e, e.instance_path()))
                    .collect();
                assert!(
                    errors.is_empty(),
                    "{label}: the body does not match the documented schema: {errors:?}\n{value}"
                );
                value
            }
        };
        // Each error status lists its codes; the one given must be among them.
        if let Some(code) = value["error"]["code"].as_str() {
            let listed = documented["description"].as_str().unwrap_or_default();
            assert!(
                listed.contains(&format!("`{code}`")),
                "{label} with code `{code}`, which the document does not list for it: {listed}"
            );
        }
        if status == StatusCode::CREATED && path == "/api/v1/ticks" {
            assert!(resp_headers.contains_key("idempotent-replayed"), "{label}");
        }
        if status == StatusCode::SERVICE_UNAVAILABLE && value.get("error").is_some() {
            assert!(resp_headers.contains_key(header::RETRY_AFTER), "{label}");
        }
        self.seen
            .entry((method.to_uppercase(), path.to_string()))
            .or_default()
            .insert(status.as_u16());
        (status, value)
    }

    /// [`Checker::call`] with a JSON body.
    async fn json(
        &mut self,
        method: &str,
        path: &str,
        uri: &str,
        token: Option<&str>,
        body: Value,
    ) -> (StatusCode, Value) {
        self.call(
            method,
            path,
            uri,
            token,
            &[],
            Some(body.to_string().into_bytes()),
        )
        .await
    }

    /// [`Checker::call`] without headers or body.
    async fn get(&mut self, path: &str, uri: &str, token: Option<&str>) -> (StatusCode, Value) {
        self.call("GET", path, uri, token, &[], None).await
    }
}

#[tokio::test]
async fn the_checker_refuses_bodies_the_document_does_not_describe() {
    // The live test below is only as strict as its validator: a field the schema does not
    // name, a missing one, a wrong type or an unlisted value must each fail.
    let app = TestApp::new();
    let c = Checker::new(&app).await;
    let error = c.validator(&json!({"$ref": "#/components/schemas/ErrorBody"}));
    assert!(
        error.is_valid(&json!({"error": {"code": "missing_field", "message": "org: missing"}}))
    );
    for bad in [
        json!({"error": {"code": "missing_field", "message": "m", "count": 3}}),
        json!({"error": {"code": "missing_field"}}),
        json!({"error": {"code": 7, "message": "m"}}),
        json!({"error": {"code": "Not Snake", "message": "m"}}),
        json!({"error": {"code": "x", "message": "m"}, "at": "2026-11-23T10:00:00Z"}),
    ] {
        assert!(!error.is_valid(&bad), "{bad}");
    }
    let periods = c.validator(&json!({"$ref": "#/components/schemas/PeriodList"}));
    let ok = json!({"periods": [{"period": "2026-11", "state": "open", "starts": "2026-11-01",
        "ends": "2026-11-30", "accepts_ticks_until": "2026-12-07"}]});
    assert!(periods.is_valid(&ok));
    let mut bad = ok.clone();
    bad["periods"][0]["state"] = json!("forgotten");
    assert!(!periods.is_valid(&bad), "an unlisted enum value");
    let mut bad = ok.clone();
    bad["periods"][0]["starts"] = json!("1 November");
    assert!(!periods.is_valid(&bad), "a date that is not a date");
    let mut bad = ok;
    bad["periods"][0]["period"] = json!("2026-11-23");
    assert!(!periods.is_valid(&bad), "a day where a period belongs");
}

/// Asserts the status of an answer, showing the body when it differs.
fn expect(got: (StatusCode, Value), status: u16) -> Value {
    assert_eq!(got.0.as_u16(), status, "{}", got.1);
    got.1
}

#[tokio::test]
async fn live_answers_to_valid_and_invalid_input_match_the_document() {
    let app = TestApp::new();
    let mut c = Checker::new(&app).await;
    let org = "helse-vestfjord";
    let other = "vikafjord-kommune";

    // Probes, this document and the signing key: public.
    expect(c.get("/healthz", "/healthz", None).await, 200);
    expect(c.get("/readyz", "/readyz", None).await, 200);
    expect(
        c.get("/api/v1/openapi.json", "/api/v1/openapi.json", None)
            .await,
        200,
    );
    expect(
        c.get("/api/v1/signing-key", "/api/v1/signing-key", None)
            .await,
        200,
    );

    // Tokens.
    let t = "/api/v1/tokens";
    let mut tokens = BTreeMap::new();
    for (role, o) in [
        ("supporter", Some(org)),
        ("coordinator", Some(org)),
        ("leader", Some(org)),
        ("researcher", None),
        ("supporter", Some(other)),
    ] {
        let body = match o {
            Some(o) => json!({"role": role, "org": o}),
            None => json!({"role": role}),
        };
        let v = expect(c.json("POST", t, t, Some(ADMIN), body).await, 201);
        let key = format!("{role}@{}", o.unwrap_or("-"));
        tokens.insert(key, v["token"].as_str().unwrap().to_string());
    }
    let sup = tokens[&format!("supporter@{org}")].clone();
    let coord = tokens[&format!("coordinator@{org}")].clone();
    let leader = tokens[&format!("leader@{org}")].clone();
    let researcher = tokens["researcher@-"].clone();
    let sup_other = tokens[&format!("supporter@{other}")].clone();
    expect(
        c.json("POST", t, t, Some(ADMIN), json!({"role": "king"}))
            .await,
        422,
    );
    expect(
        c.json("POST", t, t, Some(ADMIN), json!({"role": "supporter"}))
            .await,
        422,
    );
    expect(
        c.json(
            "POST",
            t,
            t,
            Some(ADMIN),
            json!({"role": "admin", "org": org}),
        )
        .await,
        422,
    );
    expect(
        c.json(
            "POST",
            t,
            t,
            Some(ADMIN),
            json!({"role": "supporter", "org": "nowhere"}),
        )
        .await,
        422,
    );
    expect(
        c.json("POST", t, t, Some(ADMIN), json!({"role": 7})).await,
        422,
    );
    expect(
        c.json(
            "POST",
            t,
            t,
            Some(ADMIN),
            json!({"role": "leader", "org": org, "x": 1}),
        )
        .await,
        422,
    );
    expect(
        c.json("POST", t, t, None, json!({"role": "researcher"}))
            .await,
        401,
    );
    expect(
        c.json("POST", t, t, Some(&sup), json!({"role": "researcher"}))
            .await,
        403,
    );
    expect(
        c.call("POST", t, t, Some(ADMIN), &[], Some(b"{\"role\":".to_vec()))
            .await,
        400,
    );
    expect(
        c.call(
            "POST",
            t,
            t,
            Some(ADMIN),
            &[("content-type", "text/plain")],
            Some(b"{}".to_vec()),
        )
        .await,
        415,
    );
    expect(
        c.call("POST", t, t, Some(ADMIN), &[], Some(vec![b' '; 20_000]))
            .await,
        413,
    );
    expect(c.get(t, t, Some(ADMIN)).await, 200);
    expect(c.get(t, t, Some(&coord)).await, 200);
    expect(c.get(t, t, Some(&sup)).await, 403);
    expect(c.get(t, t, None).await, 401);
    expect(c.get(t, t, Some("not-a-token")).await, 401);
    let td = "/api/v1/tokens/{id}";
    let spare = expect(
        c.json("POST", t, t, Some(ADMIN), json!({"role": "researcher"}))
            .await,
        201,
    );
    let uri = format!("/api/v1/tokens/{}", spare["id"].as_str().unwrap());
    expect(c.call("DELETE", td, &uri, Some(&sup), &[], None).await, 403);
    expect(
        c.call("DELETE", td, &uri, Some(ADMIN), &[], None).await,
        204,
    );
    expect(
        c.call("DELETE", td, &uri, Some(ADMIN), &[], None).await,
        404,
    );
    expect(c.call("DELETE", td, &uri, None, &[], None).await, 401);
    expect(
        c.call("DELETE", td, "/api/v1/tokens/%FF", Some(ADMIN), &[], None)
            .await,
        400,
    );

    // The policy.
    let p = "/api/v1/policy";
    expect(c.get(p, p, Some(&sup)).await, 200);
    expect(
        c.get(p, "/api/v1/policy?lang=en", Some(&researcher)).await,
        200,
    );
    expect(c.get(p, "/api/v1/policy?lang=xx", Some(&sup)).await, 422);
    expect(c.get(p, "/api/v1/policy?colour=red", Some(&sup)).await, 422);
    expect(c.get(p, "/api/v1/policy?lang=%FF", Some(&sup)).await, 400);
    expect(c.get(p, p, None).await, 401);
    expect(
        c.call("GET", p, p, None, &[("authorization", "Basic eDp5")], None)
            .await,
        401,
    );

    // Ticks, by token.
    let k = "/api/v1/ticks";
    let tick = tick_body();
    expect(c.json("POST", k, k, Some(&sup), tick.clone()).await, 201);
    let keyed = |key: &'static str| [("idempotency-key", key)];
    let body = Some(tick.to_string().into_bytes());
    for _ in 0..2 {
        expect(
            c.call("POST", k, k, Some(&sup), &keyed("contact-1"), body.clone())
                .await,
            201,
        );
    }
    expect(
        c.call("POST", k, k, Some(&sup), &keyed("has space"), body.clone())
            .await,
        422,
    );
    let mut bad = tick.clone();
    bad.as_object_mut().unwrap().remove("unit");
    expect(c.json("POST", k, k, Some(&sup), bad).await, 422);
    let mut bad = tick.clone();
    bad["tags"]["colour"] = json!("red");
    expect(c.json("POST", k, k, Some(&sup), bad).await, 422);
    let mut bad = tick.clone();
    bad["unit"] = json!("nowhere");
    expect(c.json("POST", k, k, Some(&sup), bad).await, 422);
    let mut bad = tick.clone();
    bad["count"] = json!(11);
    expect(c.json("POST", k, k, Some(&sup), bad).await, 422);
    let mut bad = tick.clone();
    bad["period"] = json!("2026-10");
    expect(c.json("POST", k, k, Some(&sup), bad).await, 409);
    let mut bad = tick.clone();
    bad["period"] = json!("soon");
    expect(c.json("POST", k, k, Some(&sup), bad).await, 422);
    expect(
        c.json("POST", k, k, Some(&sup_other), tick.clone()).await,
        403,
    );
    expect(c.json("POST", k, k, Some(ADMIN), tick.clone()).await, 403);
    expect(c.json("POST", k, k, None, tick.clone()).await, 401);
    expect(
        c.call("POST", k, k, Some(&sup), &[], Some(b"{\"org\":".to_vec()))
            .await,
        400,
    );
    expect(
        c.call(
            "POST",
            k,
            k,
            Some(&sup),
            &[("content-type", "application/xml")],
            body.clone(),
        )
        .await,
        415,
    );
    // Up to the cap of 40 a period, then 429.
    let capped = expect(
        c.json(
            "POST",
            t,
            t,
            Some(ADMIN),
            json!({"role": "supporter", "org": org}),
        )
        .await,
        201,
    );
    let capped = capped["token"].as_str().unwrap().to_string();
    let mut ten = tick.clone();
    ten["count"] = json!(10);
    for _ in 0..4 {
        expect(c.json("POST", k, k, Some(&capped), ten.clone()).await, 201);
    }
    expect(c.json("POST", k, k, Some(&capped), tick.clone()).await, 429);

    // Invites and follow-ups (coordinator), and ticks by the session an invite signs in.
    let i = "/api/v1/invites";
    let invite = expect(
        c.call(
            "POST",
            i,
            i,
            Some(&coord),
            &[("host", "tellestrek.example")],
            Some(json!({"org": org, "name": "Kari"}).to_string().into_bytes()),
        )
        .await,
        201,
    );
    assert!(
        invite["link"]
            .as_str()
            .unwrap()
            .starts_with("http://tellestrek.example/invite/")
    );
    let spare = expect(
        c.json("POST", i, i, Some(&coord), json!({"org": org}))
            .await,
        201,
    );
    expect(
        c.json(
            "POST",
            i,
            i,
            Some(&coord),
            json!({"org": org, "name": "x".repeat(100)}),
        )
        .await,
        422,
    );
    expect(
        c.json("POST", i, i, Some(&coord), json!({"account": "nobody"}))
            .await,
        404,
    );
    expect(
        c.json("POST", i, i, Some(&coord), json!({"org": other}))
            .await,
        403,
    );
    expect(
        c.json("POST", i, i, Some(&sup), json!({"org": org})).await,
        403,
    );
    expect(c.json("POST", i, i, None, json!({"org": org})).await, 401);
    expect(
        c.json("POST", i, i, Some(&coord), json!({"rank": 1})).await,
        422,
    );
    expect(c.get(i, i, Some(&coord)).await, 200);
    expect(c.get(i, i, Some(&sup)).await, 403);
    expect(c.get(i, i, None).await, 401);
    let id = "/api/v1/invites/{id}";
    let uri = format!("/api/v1/invites/{}", spare["id"].as_str().unwrap());
    expect(c.call("DELETE", id, &uri, Some(&sup), &[], None).await, 403);
    expect(
        c.call("DELETE", id, &uri, Some(&coord), &[], None).await,
        204,
    );
    expect(
        c.call("DELETE", id, &uri, Some(&coord), &[], None).await,
        404,
    );
    expect(c.call("DELETE", id, &uri, None, &[], None).await, 401);
    expect(
        c.call("DELETE", id, "/api/v1/invites/%FF", Some(&coord), &[], None)
            .await,
        400,
    );
    let mut b = Browser::new(&app);
    let page = b.get(invite["path"].as_str().unwrap()).await;
    let (csrf, secret) = (page.hidden("csrf"), page.hidden("secret"));
    b.post("/invite", &[("csrf", &csrf), ("secret", &secret)])
        .await;
    let csrf = b.get("/tick").await.hidden("csrf");
    b.post("/follow-up", &[("csrf", &csrf), ("open", "true")])
        .await;
    let cookies: Vec<String> = b.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let cookie = cookies.join("; ");
    for (given, status) in [(csrf.as_str(), 201), ("forged", 422)] {
        expect(
            c.call(
                "POST",
                k,
                k,
                None,
                &[("cookie", &cookie), ("x-csrf-token", given)],
                body.clone(),
            )
            .await,
            status,
        );
    }
    let f = "/api/v1/follow-ups";
    let ups = expect(c.get(f, f, Some(&coord)).await, 200);
    assert_eq!(ups["follow_ups"][0]["name"], "Kari", "{ups}");
    expect(c.get(f, f, Some(&sup)).await, 403);
    expect(c.get(f, f, None).await, 401);

    // Periods, and releasing November once it is closed.
    let pe = "/api/v1/periods";
    expect(c.get(pe, pe, Some(ADMIN)).await, 200);
    expect(c.get(pe, pe, Some(&sup)).await, 403);
    expect(c.get(pe, pe, None).await, 401);
    let r = "/api/v1/periods/{period}/release";
    let nov = "/api/v1/periods/2026-11/release";
    expect(c.call("POST", r, nov, Some(ADMIN), &[], None).await, 409);
    app.at(datetime!(2026-12-10 08:00 UTC));
    expect(
        c.call("POST", r, nov, Some(&researcher), &[], None).await,
        403,
    );
    expect(c.call("POST", r, nov, None, &[], None).await, 401);
    let released = expect(c.call("POST", r, nov, Some(ADMIN), &[], None).await, 200);
    assert!(!released["releases"].as_array().unwrap().is_empty());
    expect(c.call("POST", r, nov, Some(ADMIN), &[], None).await, 200);
    expect(
        c.call(
            "POST",
            r,
            "/api/v1/periods/2026-13/release",
            Some(ADMIN),
            &[],
            None,
        )
        .await,
        422,
    );
    expect(
        c.call(
            "POST",
            r,
            "/api/v1/periods/%FF/release",
            Some(ADMIN),
            &[],
            None,
        )
        .await,
        400,
    );

    // A backup, written by the running server (admin only; the target must be new or empty).
    let bk = "/api/v1/admin/backup";
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("copy").display().to_string();
    expect(
        c.json("POST", bk, bk, Some(ADMIN), json!({"to": to})).await,
        201,
    );
    expect(
        c.json("POST", bk, bk, Some(ADMIN), json!({"to": to})).await,
        422,
    );
    expect(
        c.json("POST", bk, bk, Some(ADMIN), json!({"to": "relative"}))
            .await,
        422,
    );
    expect(
        c.json("POST", bk, bk, Some(ADMIN), json!({"to": to, "x": 1}))
            .await,
        422,
    );
    expect(
        c.json("POST", bk, bk, Some(&researcher), json!({"to": to}))
            .await,
        403,
    );
    expect(c.json("POST", bk, bk, None, json!({"to": to})).await, 401);
    expect(
        c.call("POST", bk, bk, Some(ADMIN), &[], Some(b"{\"to\":".to_vec()))
            .await,
        400,
    );

    // Releases, their CSV and its signature, the ledger, the dashboard.
    let rl = "/api/v1/releases";
    let page = expect(
        c.get(rl, "/api/v1/releases?period=2026-11", Some(&researcher))
            .await,
        200,
    );
    assert!(!page["releases"].as_array().unwrap().is_empty());
    let first = expect(
        c.get(rl, "/api/v1/releases?limit=1", Some(&researcher))
            .await,
        200,
    );
    let next = first["next"].as_str().unwrap_or_else(|| panic!("{first}"));
    expect(
        c.get(
            rl,
            &format!("/api/v1/releases?limit=1&cursor={next}"),
            Some(&researcher),
        )
        .await,
        200,
    );
    let csv = expect(
        c.get(
            rl,
            "/api/v1/releases?period=2026-11&format=csv&lang=en",
            Some(&researcher),
        )
        .await,
        200,
    );
    assert!(csv.as_str().unwrap().contains(','));
    for bad in [
        "format=xml",
        "lang=xx",
        "limit=0",
        "limit=many",
        "cursor=%21%21",
        "period=soon",
        "org=nowhere",
        "marginal=colour",
        "colour=red",
    ] {
        expect(
            c.get(rl, &format!("/api/v1/releases?{bad}"), Some(&researcher))
                .await,
            422,
        );
    }
    expect(
        c.get(rl, "/api/v1/releases?period=%FF", Some(&researcher))
            .await,
        400,
    );
    expect(
        c.get(rl, &format!("/api/v1/releases?org={other}"), Some(&leader))
            .await,
        403,
    );
    expect(c.get(rl, rl, Some(&sup)).await, 403);
    expect(c.get(rl, rl, None).await, 401);
    let sig = "/api/v1/releases.sig";
    expect(
        c.get(
            sig,
            "/api/v1/releases.sig?period=2026-11",
            Some(&researcher),
        )
        .await,
        200,
    );
    expect(
        c.get(sig, "/api/v1/releases.sig?format=json", Some(&researcher))
            .await,
        422,
    );
    expect(
        c.get(sig, "/api/v1/releases.sig?lang=%FF", Some(&researcher))
            .await,
        400,
    );
    expect(c.get(sig, sig, Some(&sup)).await, 403);
    expect(c.get(sig, sig, None).await, 401);
    let bu = "/api/v1/budget";
    expect(c.get(bu, bu, Some(&researcher)).await, 200);
    expect(c.get(bu, bu, Some(&leader)).await, 200);
    expect(c.get(bu, bu, Some(&sup)).await, 403);
    expect(c.get(bu, bu, None).await, 401);
    let d = "/api/v1/dashboard";
    expect(c.get(d, d, Some(&leader)).await, 200);
    expect(
        c.get(d, "/api/v1/dashboard?year=2026", Some(&coord)).await,
        200,
    );
    expect(
        c.get(
            d,
            &format!("/api/v1/dashboard?org={org}"),
            Some(&researcher),
        )
        .await,
        200,
    );
    expect(c.get(d, d, Some(&researcher)).await, 422);
    expect(
        c.get(d, "/api/v1/dashboard?year=soon", Some(&leader)).await,
        422,
    );
    expect(
        c.get(d, "/api/v1/dashboard?year=1999", Some(&leader)).await,
        422,
    );
    expect(
        c.get(d, "/api/v1/dashboard?org=nowhere", Some(&researcher))
            .await,
        422,
    );
    expect(
        c.get(d, "/api/v1/dashboard?colour=red", Some(&leader))
            .await,
        422,
    );
    expect(
        c.get(d, "/api/v1/dashboard?year=%FF", Some(&leader)).await,
        400,
    );
    expect(
        c.get(d, &format!("/api/v1/dashboard?org={other}"), Some(&leader))
            .await,
        403,
    );
    expect(c.get(d, d, Some(&sup)).await, 403);
    expect(c.get(d, d, None).await, 401);

    // A tick whose write fails is answered 503, with `Retry-After`.
    app.svc.store().fail_next_syncs(1);
    expect(c.json("POST", k, k, Some(&sup), tick.clone()).await, 503);

    // Every documented operation was called and answered with success, and, where it
    // documents errors, with at least one of them.
    for (method, path) in documented(&c.doc) {
        let seen = c
            .seen
            .get(&(method.clone(), path.clone()))
            .unwrap_or_else(|| panic!("{method} {path} was not called"));
        assert!(
            seen.iter().any(|s| (200..300).contains(s)),
            "{method} {path} never succeeded: {seen:?}"
        );
        let op = &c.doc["paths"][&path][method.to_lowercase()];
        let documents_errors = op["responses"]
            .as_object()
            .unwrap()
            .keys()
            .any(|s| s.starts_with('4'));
        if documents_errors {
            assert!(
                seen.iter().any(|s| (400..500).contains(s)),
                "{method} {path} was never called with bad input: {seen:?}"
            );
        }
    }
}
