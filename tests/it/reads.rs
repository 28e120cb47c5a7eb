//! Reads that scale (issue 7) and CSV for researchers (issue 8): paged listings over the
//! release index, opaque cursors, bounded pages, scope on every page, streamed signed JSON, and
//! CSV with labels, `<3` and a detached signature that verifies with `tellestrek verify` and
//! with an Ed25519 implementation other than ours (ed25519-dalek).

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tellestrek::domain::{LedgerEntry, Period, Release, ReleaseCell};
use tellestrek::policy::Policy;
use tower::ServiceExt;

use crate::helpers::{ADMIN, TestApp};

/// A release of `marginal` for `org` and `period` over the marginal's full domain, with fixed
/// made-up numbers (no noise is drawn: these tests are about reading, not drawing). Every
/// third cell is suppressed. ε is a value with a long decimal tail, as OpenDP's map returns.
fn synthetic(policy: &Policy, period: &str, org: &str, marginal: &str) -> (Release, LedgerEntry) {
    let period: Period = period.parse().unwrap();
    let o = policy.org(org).unwrap();
    let (dimensions, keys): (Vec<String>, Vec<Vec<(String, String)>>) = match marginal {
        "total" => (vec![], vec![vec![]]),
        "unit" => (
            vec!["unit".into()],
            o.units
                .iter()
                .map(|u| vec![("unit".to_string(), u.id.clone())])
                .collect(),
        ),
        dim => {
            let d = policy.dimension(dim).unwrap();
            (
                vec![dim.to_string()],
                d.values
                    .iter()
                    .map(|v| vec![(dim.to_string(), v.id.clone())])
                    .collect(),
            )
        }
    };
    let cells: Vec<ReleaseCell> = keys
        .into_iter()
        .enumerate()
        .map(|(i, key)| {
            let estimate = if i % 3 == 0 { 1 } else { 5 + i as u64 };
            ReleaseCell {
                key: key.into_iter().collect(),
                noisy: estimate as i64,
                estimate,
                ci: [estimate as i64 - 4, estimate as i64 + 4],
                noisy_ci: [estimate as i64 - 4, estimate as i64 + 4],
                suppressed: estimate < 3,
            }
        })
        .collect();
    let id = format!("{period}/{org}/{marginal}");
    let epsilon = 0.6999999993;
    let release = Release {
        id: id.clone(),
        period,
        org: org.into(),
        marginal: marginal.into(),
        kind: "contacts".into(),
        dimensions,
        covers: vec![period],
        mechanism: "discrete_laplace".into(),
        privacy_unit: "contact".into(),
        epsilon: Some(epsilon),
        rho: None,
        sensitivity: 1,
        scale: 1.0 / 0.7,
        sensitive_scale: None,
        confidence: 0.95,
        suppress_below: 3,
        total_estimate: cells.iter().map(|c| c.estimate).sum(),
        noise_variance: 4.0,
        cells,
    };
    let ledger = LedgerEntry {
        release: id,
        org: org.into(),
        marginal: marginal.into(),
        period,
        covers: vec![period],
        measure: "epsilon".into(),
        spend: epsilon,
    };
    (release, ledger)
}

/// Three years (2023–2025) of releases for both organisations of the built-in policy:
/// monthly totals, quarterly unit tables, a yearly profession table. 2 × (36 + 12 + 3) = 102.
fn three_years(app: &TestApp) -> Vec<String> {
    let p = app.svc.policy();
    let mut batch = Vec::new();
    for org in ["helse-vestfjord", "vikafjord-kommune"] {
        for year in 2023..=2025 {
            for m in 1..=12 {
                batch.push(synthetic(p, &format!("{year}-{m:02}"), org, "total"));
            }
            for q in 1..=4 {
                batch.push(synthetic(p, &format!("{year}-Q{q}"), org, "unit"));
            }
            batch.push(synthetic(p, &year.to_string(), org, "yrkesgruppe"));
        }
    }
    app.svc.store().commit_releases(&batch).unwrap();
    batch.into_iter().map(|(r, _)| r.id).collect()
}

/// A GET through the real router: status, headers and body bytes.
async fn get(
    app: &TestApp,
    path: &str,
    token: &str,
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let req = Request::get(path)
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    let resp = app.router.clone().oneshot(req).await.unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, headers, body)
}

/// Walks every page of a JSON listing; checks each page's signature and size. Returns the ids
/// in the order served.
async fn walk(app: &TestApp, query: &str, token: &str, limit: usize) -> Vec<String> {
    let key = app.svc.public_key();
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..1000 {
        let mut path = format!("/api/v1/releases?{query}&limit={limit}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (s, headers, body) = get(app, &path, token).await;
        assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        let text = String::from_utf8(body).unwrap();
        // Every page is a complete signed export on its own.
        let n = tellestrek::service::verify_export(&text, Some(&key)).unwrap();
        assert!(n <= limit, "a page of {n} releases for limit {limit}");
        let doc: Value = serde_json::from_str(&text).unwrap();
        // Served exactly as stored (the stream transcodes the stored JSON).
        for r in doc["releases"].as_array().unwrap() {
            let stored = app.svc.store().release(r["id"].as_str().unwrap()).unwrap();
            assert_eq!(r, &serde_json::to_value(stored.unwrap()).unwrap());
        }
        ids.extend(
            doc["releases"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_str().unwrap().to_string()),
        );
        match doc["next"].as_str() {
            Some(next) => {
                assert_eq!(n, limit, "only the last page may be short");
                assert_eq!(headers["x-tellestrek-next"], next);
                cursor = Some(next.to_string());
            }
            None => {
                assert!(!headers.contains_key("x-tellestrek-next"));
                return ids;
            }
        }
    }
    panic!("the listing never ended");
}

#[tokio::test]
async fn pages_cover_every_release_exactly_once_in_a_stable_order() {
    let app = TestApp::new();
    let all: BTreeSet<String> = three_years(&app).into_iter().collect();
    let researcher = app.token("researcher", None).await;
    for limit in [1, 7, 100, 1000] {
        let ids = walk(&app, "format=json", &researcher, limit).await;
        let unique: BTreeSet<String> = ids.iter().cloned().collect();
        assert_eq!(
            unique.len(),
            ids.len(),
            "a release served twice (limit {limit})"
        );
        assert_eq!(unique, all, "limit {limit}");
        // The order does not depend on the page size.
        assert_eq!(ids, walk(&app, "format=json", &researcher, 1000).await);
    }
    // Filters: one organisation's 2024 (12 months, 4 quarters, the year), as a range.
    let ids = walk(
        &app,
        "org=helse-vestfjord&from=2024-01&to=2024-12",
        &researcher,
        5,
    )
    .await;
    let want: BTreeSet<String> = all
        .iter()
        .filter(|id| id.starts_with("2024") && id.contains("/helse-vestfjord/"))
        .cloned()
        .collect();
    assert_eq!(want.len(), 17);
    assert_eq!(ids.iter().cloned().collect::<BTreeSet<_>>(), want);
    // One period, every organisation; one marginal.
    let ids = walk(&app, "period=2025-Q2", &researcher, 100).await;
    assert_eq!(
        ids,
        [
            "2025-Q2/helse-vestfjord/unit",
            "2025-Q2/vikafjord-kommune/unit"
        ]
    );
    let ids = walk(
        &app,
        "marginal=yrkesgruppe&org=vikafjord-kommune",
        &researcher,
        2,
    )
    .await;
    assert_eq!(
        ids,
        [
            "2023/vikafjord-kommune/yrkesgruppe",
            "2024/vikafjord-kommune/yrkesgruppe",
            "2025/vikafjord-kommune/yrkesgruppe"
        ]
    );
}

#[tokio::test]
async fn a_release_drawn_between_pages_is_neither_served_twice_nor_shifts_the_pages() {
    let app = TestApp::new();
    let before: BTreeSet<String> = three_years(&app).into_iter().collect();
    let researcher = app.token("researcher", None).await;
    let (_, _, body) = get(&app, "/api/v1/releases?limit=40", &researcher).await;
    let first: Value = serde_json::from_slice(&body).unwrap();
    let cursor = first["next"].as_str().unwrap().to_string();
    // A release sorting before the cursor (2023's first quarter) arrives meanwhile.
    let p = app.svc.policy().clone();
    app.svc
        .store()
        .commit_releases(&[synthetic(&p, "2023-Q1", "helse-vestfjord", "kanal")])
        .unwrap();
    let mut seen: Vec<String> = first["releases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    let mut next = Some(cursor);
    while let Some(c) = next {
        let (s, _, body) = get(
            &app,
            &format!("/api/v1/releases?limit=40&cursor={c}"),
            &researcher,
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        let page: Value = serde_json::from_slice(&body).unwrap();
        seen.extend(
            page["releases"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_str().unwrap().to_string()),
        );
        next = page["next"].as_str().map(str::to_string);
    }
    let unique: BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len());
    assert!(before.is_subset(&unique));
}

#[tokio::test]
async fn the_cursor_is_opaque_and_a_bad_one_is_a_422_json_error() {
    let app = TestApp::new();
    three_years(&app);
    let researcher = app.token("researcher", None).await;
    let (_, _, body) = get(
        &app,
        "/api/v1/releases?org=helse-vestfjord&limit=3",
        &researcher,
    )
    .await;
    let page: Value = serde_json::from_slice(&body).unwrap();
    let cursor = page["next"].as_str().unwrap().to_string();
    // Opaque: not a release id, no path, safe in a URL as is.
    assert!(
        cursor
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "{cursor}"
    );
    assert!(!cursor.contains("helse"));
    for (bad, why) in [
        ("not-a-cursor!".to_string(), "garbage"),
        ("AAAA".to_string(), "another version"),
        (format!("{cursor}x"), "changed"),
        // A cursor of one organisation's listing is refused in another's.
        (cursor.clone(), "another listing"),
    ] {
        let org = if why == "another listing" {
            "vikafjord-kommune"
        } else {
            "helse-vestfjord"
        };
        let (s, headers, body) = get(
            &app,
            &format!("/api/v1/releases?org={org}&limit=3&cursor={bad}"),
            &researcher,
        )
        .await;
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_cursor")),
            "{why}: {v}"
        );
        assert!(
            headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json")
        );
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("cursor: "),
            "{v}"
        );
    }
}

#[tokio::test]
async fn the_page_size_is_bounded() {
    let app = TestApp::new();
    let all = three_years(&app);
    assert!(all.len() > tellestrek::service::DEFAULT_PAGE_RELEASES);
    let researcher = app.token("researcher", None).await;
    let (s, _, body) = get(&app, "/api/v1/releases", &researcher).await;
    assert_eq!(s, StatusCode::OK);
    let page: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        page["releases"].as_array().unwrap().len(),
        tellestrek::service::DEFAULT_PAGE_RELEASES
    );
    assert!(page["next"].is_string());
    for (q, code) in [
        ("limit=0", "invalid_limit"),
        ("limit=1001", "invalid_limit"),
        ("limit=-1", "invalid_query"),
        ("limit=ten", "invalid_query"),
        ("from=2025-13", "invalid_period"),
        ("from=2025-06&to=2025-01", "invalid_period"),
        ("period=2025&from=2025-01", "conflicting_filters"),
        ("lang=de&format=csv", "invalid_lang"),
    ] {
        let (s, _, body) = get(&app, &format!("/api/v1/releases?{q}"), &researcher).await;
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some(code)),
            "{q}: {v}"
        );
    }
    let (s, _, _) = get(&app, "/api/v1/releases?limit=1000", &researcher).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn a_leader_sees_only_their_organisation_on_every_page() {
    let app = TestApp::new();
    three_years(&app);
    let leader = app.token("leader", Some("vikafjord-kommune")).await;
    let ids = walk(&app, "format=json", &leader, 6).await;
    assert_eq!(ids.len(), 51);
    assert!(ids.iter().all(|id| id.contains("/vikafjord-kommune/")));
    let (s, _, body) = get(&app, "/api/v1/releases?org=helse-vestfjord", &leader).await;
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("wrong_org"))
    );
    // A cursor from a researcher's listing of every organisation does not widen the scope.
    let researcher = app.token("researcher", None).await;
    let (_, _, body) = get(&app, "/api/v1/releases?limit=2", &researcher).await;
    let page: Value = serde_json::from_slice(&body).unwrap();
    let c = page["next"].as_str().unwrap();
    let (s, _, _) = get(&app, &format!("/api/v1/releases?cursor={c}"), &leader).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let sup = app.token("supporter", Some("vikafjord-kommune")).await;
    for path in ["/api/v1/releases", "/api/v1/releases.sig"] {
        assert_eq!(
            get(&app, path, &sup).await.0,
            StatusCode::FORBIDDEN,
            "{path}"
        );
    }
}

/// Runs `tellestrek verify` on a file with a detached signature.
fn verify_cli(file: &std::path::Path, sig: &std::path::Path, key: &str) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tellestrek"))
        .arg("verify")
        .arg(file)
        .arg("--signature")
        .arg(sig)
        .arg("--public-key")
        .arg(key)
        .output()
        .unwrap()
}

/// Verifies with ed25519-dalek, an implementation independent of ring.
fn dalek_verifies(key: &str, message: &[u8], sig: &str) -> bool {
    use data_encoding::BASE64URL_NOPAD;
    use ed25519_dalek::{Signature, Verifier, VerifyingKey};
    let key: [u8; 32] = BASE64URL_NOPAD
        .decode(key.as_bytes())
        .unwrap()
        .try_into()
        .unwrap();
    let sig: [u8; 64] = BASE64URL_NOPAD
        .decode(sig.trim().as_bytes())
        .unwrap()
        .try_into()
        .unwrap();
    VerifyingKey::from_bytes(&key)
        .unwrap()
        .verify(message, &Signature::from_bytes(&sig))
        .is_ok()
}

#[tokio::test]
async fn the_csv_has_labels_and_suppression_and_a_detached_signature_that_verifies() {
    let app = TestApp::new();
    three_years(&app);
    let researcher = app.token("researcher", None).await;
    let query = "org=helse-vestfjord&from=2025-01&to=2025-12&format=csv";
    let (s, headers, csv) = get(&app, &format!("/api/v1/releases?{query}"), &researcher).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&csv));
    let text = String::from_utf8(csv.clone()).unwrap();
    let mut rows = csv::Reader::from_reader(text.as_bytes());
    let head: Vec<String> = rows.headers().unwrap().iter().map(str::to_string).collect();
    let col = |name: &str| {
        head.iter()
            .position(|h| h == name)
            .unwrap_or_else(|| panic!("no column {name}: {head:?}"))
    };
    let (shown, estimate, suppressed, eps) = (
        col("shown"),
        col("estimate"),
        col("suppressed"),
        col("epsilon"),
    );
    let (unit, unit_label) = (col("unit"), col("unit_label"));
    let (prof, prof_label) = (col("yrkesgruppe"), col("yrkesgruppe_label"));
    let p = Policy::builtin();
    let mut saw_suppressed = false;
    let mut n = 0;
    for row in rows.records() {
        let row = row.unwrap();
        n += 1;
        if &row[suppressed] == "true" {
            assert_eq!(&row[shown], "<3");
            saw_suppressed = true;
        } else {
            assert_eq!(&row[shown], &row[estimate]);
        }
        assert_eq!(&row[eps], "0.7", "ε rounded to three significant digits");
        if &row[unit] == "akuttmottak" {
            assert_eq!(&row[unit_label], "Akuttmottak");
        }
        if !row[prof].is_empty() {
            let v = p
                .dimension("yrkesgruppe")
                .unwrap()
                .value(&row[prof])
                .unwrap();
            assert_eq!(&row[prof_label], v.label.nb.as_str());
        }
    }
    // 12 totals, 4 unit tables of 9 units, one profession table.
    let professions = p.dimension("yrkesgruppe").unwrap().values.len();
    assert_eq!(n, 12 + 4 * 9 + professions);
    assert!(saw_suppressed);
    // English labels on request.
    let (_, _, en) = get(
        &app,
        &format!("/api/v1/releases?{query}&lang=en"),
        &researcher,
    )
    .await;
    let en = String::from_utf8(en).unwrap();
    let v = &p.dimension("yrkesgruppe").unwrap().values[1];
    assert!(
        en.contains(&v.label.en) && v.label.en != v.label.nb,
        "{}",
        v.label.en
    );

    // The detached signature: from the header and from GET /api/v1/releases.sig, the same.
    let (s, sig_headers, sig) =
        get(&app, &format!("/api/v1/releases.sig?{query}"), &researcher).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&sig));
    let sig = String::from_utf8(sig).unwrap();
    assert_eq!(
        sig.trim(),
        headers["x-tellestrek-signature"].to_str().unwrap()
    );
    let key = app.svc.public_key();
    assert_eq!(
        sig_headers["x-tellestrek-public-key"].to_str().unwrap(),
        key
    );
    // A JSON export carries its own signature; asking for a detached one is a clear 422.
    let (s, _, body) = get(&app, "/api/v1/releases.sig?format=json", &researcher).await;
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_format"))
    );
    let dir = tempfile::tempdir().unwrap();
    let (file, sig_file) = (dir.path().join("year.csv"), dir.path().join("year.csv.sig"));
    std::fs::write(&file, &csv).unwrap();
    std::fs::write(&sig_file, &sig).unwrap();
    let out = verify_cli(&file, &sig_file, &key);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("OK"));
    assert!(dalek_verifies(&key, &csv, &sig));

    // One changed byte: a 5 becomes a 6 somewhere in the numbers.
    let mut changed = csv.clone();
    let at = changed.iter().rposition(|&b| b == b'5').unwrap();
    changed[at] = b'6';
    let bad = dir.path().join("changed.csv");
    std::fs::write(&bad, &changed).unwrap();
    let out = verify_cli(&bad, &sig_file, &key);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("NOT VERIFIED"));
    assert!(!dalek_verifies(&key, &changed, &sig));

    // A malformed key or signature file is reported as such (exit 2), not as a changed file.
    let out = verify_cli(&file, &sig_file, &key[..30]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("the public key is not valid base64url Ed25519"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let junk = dir.path().join("junk.sig");
    std::fs::write(&junk, "this is not a signature").unwrap();
    let out = verify_cli(&file, &junk, &key);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("signature is not valid"));
    // The JSON form gives the same answer for a malformed key.
    let (_, _, json) = get(&app, "/api/v1/releases?limit=2", &researcher).await;
    let json_file = dir.path().join("page.json");
    std::fs::write(&json_file, &json).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tellestrek"))
        .args(["verify", json_file.to_str().unwrap(), "--public-key", "abc"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // And the JSON signature verifies with ed25519-dalek too.
    let doc: Value = serde_json::from_slice(&json).unwrap();
    let canonical = tellestrek::service::canonical_json(&doc["releases"]);
    assert!(dalek_verifies(
        &key,
        canonical.as_bytes(),
        doc["signature"]["value"].as_str().unwrap()
    ));
}

#[tokio::test]
async fn csv_pages_link_to_the_next_and_keep_their_columns() {
    let app = TestApp::new();
    three_years(&app);
    let researcher = app.token("researcher", None).await;
    let (s, headers, first) = get(&app, "/api/v1/releases?format=csv&limit=10", &researcher).await;
    assert_eq!(s, StatusCode::OK);
    let link = headers["link"].to_str().unwrap().to_string();
    let next = headers["x-tellestrek-next"].to_str().unwrap();
    assert_eq!(
        link,
        format!("</api/v1/releases?limit=10&format=csv&cursor={next}>; rel=\"next\"")
    );
    let url = link.trim_start_matches('<').split('>').next().unwrap();
    let (s, _, second) = get(&app, url, &researcher).await;
    assert_eq!(s, StatusCode::OK);
    let header = |b: &[u8]| {
        String::from_utf8_lossy(b)
            .lines()
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(header(&first), header(&second));
    // The admin reads everything as before.
    assert_eq!(
        get(&app, "/api/v1/releases?format=csv", ADMIN).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn the_budget_refuses_a_parameter_it_does_not_take() {
    let app = crate::helpers::TestApp::new();
    let (s, v) = app
        .call(
            "GET",
            "/api/v1/budget?period=9999",
            Some(crate::helpers::ADMIN),
            None,
        )
        .await;
    assert_eq!(s.as_u16(), 422, "{v}");
    assert_eq!(v["error"]["code"], "invalid_query");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("period"),
        "{v}"
    );
    let (s, _) = app
        .call("GET", "/api/v1/budget", Some(crate::helpers::ADMIN), None)
        .await;
    assert_eq!(s.as_u16(), 200);
}
