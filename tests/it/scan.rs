//! What a data directory holds after real use: scanned byte for byte (issue 2).
//!
//! After 1,000 ticks (and rejected attempts that carried free text), no file may contain a
//! token, an unkeyed hash of a token, a date or time finer than the period, or text that is not
//! in the policy.

use axum::http::StatusCode;
use regex::bytes::Regex;
use ring::digest;
use serde_json::json;
use tellestrek::policy::Policy;

use crate::helpers::{ADMIN, TestApp};

/// Free text that clients tried to send; none of it may be stored.
const CANARIES: [&str; 4] = [
    "Kari Nordmann",
    "canary-free-text",
    "overdose",
    "12345678901",
];

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn after_1000_ticks_the_data_directory_holds_no_token_time_or_free_text() {
    let unix_now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let started_s = unix_now();
    let app = TestApp::new();
    let policy = Policy::builtin();
    let mut tokens = Vec::new();
    for org in ["helse-vestfjord", "vikafjord-kommune"] {
        for _ in 0..15 {
            tokens.push((org, app.token("supporter", Some(org)).await));
        }
    }
    let leader = app.token("leader", Some("helse-vestfjord")).await;
    let mut sent = 0u64;
    let mut i = 0usize;
    while sent < 1000 {
        let (org, tok) = &tokens[i % tokens.len()];
        let o = policy.org(org).unwrap();
        let unit = &o.units[i % o.units.len()].id;
        let tags: serde_json::Map<_, _> = policy
            .dimensions
            .iter()
            .enumerate()
            .map(|(d, dim)| {
                (
                    dim.id.clone(),
                    json!(dim.values[(i + d) % dim.values.len()].id),
                )
            })
            .collect();
        let body = json!({"org": org, "unit": unit, "tags": tags});
        let (s, v) = app
            .call("POST", "/api/v1/ticks", Some(tok), Some(body))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        sent += 1;
        i += 1;
    }
    // Attempts to smuggle free text in; all are refused.
    let (org, tok) = &tokens[0];
    for (n, canary) in CANARIES.iter().enumerate() {
        let attempts = [
            json!({"org": org, "unit": "akuttmottak", "tags": {"kanal": canary}}),
            json!({"org": org, "unit": canary, "tags": {}}),
            json!({"org": org, "unit": "akuttmottak", "tags": {}, "note": canary}),
            json!({"org": org, "unit": "akuttmottak", "tags": {*canary: "ja"}}),
            json!({"org": org, "unit": "akuttmottak", "tags": {}, "period": canary}),
        ];
        for body in attempts {
            let (s, _) = app
                .call("POST", "/api/v1/ticks", Some(tok), Some(body))
                .await;
            assert!(s.is_client_error(), "attempt {n} was accepted");
        }
        let (s, _) = app
            .call(
                "POST",
                "/api/v1/tokens",
                Some(ADMIN),
                Some(json!({"role": "supporter", "org": org, "label": canary})),
            )
            .await;
        assert!(s.is_client_error());
    }
    assert_eq!(app.total("2026-11"), 1000);
    app.svc.store().flush().unwrap();

    let mut paths = Vec::new();
    crate::helpers::files(app.dir.path(), &mut paths);
    assert!(!paths.is_empty());
    let secrets: Vec<String> = tokens
        .iter()
        .map(|(_, t)| t.clone())
        .chain([leader, ADMIN.to_string()])
        .collect();
    let date =
        Regex::new(r"(19|20)\d\d-[01]\d-[0-3]\d|\d\d:\d\d:\d\d|(19|20)\d\d-W\d\d-\d").unwrap();
    // A time written while the test ran lies between its start and its end; a time rounded
    // down to the day or the hour is one of a few exact values. Matching only those, not
    // anything "within a day of now", keeps random bytes (keyed pseudonyms beside zero padding)
    // from passing for a timestamp: the day-wide window once matched such bytes on CI; this
    // window is several hundred times narrower.
    let ended_s = unix_now();
    let ran = (started_s.saturating_sub(60))..=(ended_s + 60);
    let rounded: Vec<u64> = [86_400u64, 3_600]
        .iter()
        .flat_map(|unit| [started_s / unit * unit, ended_s / unit * unit])
        .collect();
    let is_time = |x: u64| {
        // Seconds, or milliseconds.
        ran.contains(&x)
            || ran.contains(&(x / 1000))
            || rounded.iter().any(|&r| x == r || x == r * 1000)
    };
    let mut bytes_scanned = 0;
    for path in &paths {
        let data = std::fs::read(path).unwrap();
        bytes_scanned += data.len();
        let name = path.display();
        for t in &secrets {
            assert!(
                !contains(&data, t.as_bytes()),
                "{name} holds a token in clear text"
            );
            let sha = digest::digest(&digest::SHA256, t.as_bytes());
            assert!(
                !contains(&data, sha.as_ref()),
                "{name} holds an unkeyed SHA-256 of a token"
            );
            let hex: String = sha.as_ref().iter().map(|b| format!("{b:02x}")).collect();
            assert!(
                !contains(&data, hex.as_bytes()),
                "{name} holds a hex SHA-256 of a token"
            );
        }
        if let Some(m) = date.find(&data) {
            panic!(
                "{name} holds a date or time `{}`",
                String::from_utf8_lossy(m.as_bytes())
            );
        }
        for c in CANARIES {
            assert!(
                !contains(&data, c.as_bytes()),
                "{name} holds free text `{c}`"
            );
        }
        // Timestamps in binary (seconds or milliseconds, either byte order) within a day of now.
        for (at, w) in data.windows(8).enumerate() {
            for x in [
                u64::from_be_bytes(w.try_into().unwrap()),
                u64::from_le_bytes(w.try_into().unwrap()),
            ] {
                assert!(
                    !is_time(x),
                    "{name} holds a binary timestamp {x} at byte {at}"
                );
            }
        }
        // Every readable run that looks like a key must use policy ids only.
        let text = String::from_utf8_lossy(&data);
        for key in text
            .split(|c: char| c.is_control() || c == '\u{fffd}')
            .filter(|s| s.starts_with("2026-11/"))
        {
            let parts: Vec<&str> = key.splitn(4, '/').collect();
            if parts.len() < 3 {
                continue;
            }
            assert!(
                policy.org(parts[1]).is_some(),
                "{name}: key names org `{}`",
                parts[1]
            );
        }
    }
    assert!(bytes_scanned > 10_000, "scanned only {bytes_scanned} bytes");
}
