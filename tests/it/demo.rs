//! The demo (issue 3): its simulated history shows the spike and the silent unit, and the
//! binary prints a token per role and serves releases.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;

use crate::helpers::{binary_tmp, leftovers, terminate};
use tellestrek::demo::{self, SILENT_UNIT, SPIKE_CONTACTS, SPIKE_UNIT};
use tellestrek::dp::ZeroNoise;
use time::macros::datetime;

#[tokio::test]
async fn the_simulated_history_has_the_spike_and_the_unit_without_uptake() {
    let dir = tempfile::tempdir().unwrap();
    let d = demo::build(
        dir.path(),
        datetime!(2026-11-23 10:00 UTC),
        Arc::new(ZeroNoise),
    )
    .await
    .unwrap();
    assert!(d.report.refused.is_empty());
    let units: Vec<_> = d
        .svc
        .store()
        .releases("")
        .unwrap()
        .into_iter()
        .filter(|r| r.org == SPIKE_UNIT.0 && r.marginal == "unit")
        .collect();
    assert!(units.len() >= 6, "at least 18 months of quarterly releases");
    let count = |r: &tellestrek::domain::Release, unit: &str| {
        r.cells
            .iter()
            .find(|c| c.key["unit"] == unit)
            .unwrap()
            .estimate
    };
    let spike: Vec<u64> = units.iter().map(|r| count(r, SPIKE_UNIT.1)).collect();
    let max = *spike.iter().max().unwrap();
    assert!(max >= u64::from(SPIKE_CONTACTS), "{spike:?}");
    let others: Vec<u64> = spike.iter().copied().filter(|&n| n != max).collect();
    assert!(
        others.iter().all(|&n| n * 3 < max),
        "the spike stands out: {spike:?}"
    );
    assert!(units.iter().all(|r| count(r, SILENT_UNIT.1) == 0));
    // The months are released, and the oldest raw data is already purged.
    assert!(d.report.purged.len() >= 6);
    let roles: Vec<&str> = d.tokens.iter().map(|t| t.0.as_str()).collect();
    for role in ["admin", "coordinator", "leader", "researcher", "supporter"] {
        assert!(roles.contains(&role));
    }
}

#[tokio::test]
async fn the_demo_binary_prints_tokens_and_serves_releases() {
    // The demo keeps its data in a temporary directory under TMPDIR: a test-owned one here, so
    // that what a stop leaves behind is seen.
    let tmp = binary_tmp();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tellestrek"))
        .args(["demo", "--listen", "127.0.0.1:0"])
        .env("TELLESTREK_LOG", "warn")
        .env("TMPDIR", tmp.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let (mut text, mut base) = (String::new(), None);
    while base.is_none() {
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0, "demo exited: {text}");
        if let Some(rest) = line.split("listening on ").nth(1) {
            base = rest.split_whitespace().next().map(str::to_string);
        }
        text.push_str(&line);
    }
    let researcher = text
        .lines()
        .find(|l| l.trim_start().starts_with("researcher"))
        .and_then(|l| l.split_whitespace().last())
        .unwrap()
        .to_string();
    assert!(
        text.contains("intensiv") && text.contains("laboratorium"),
        "{text}"
    );
    let r = reqwest::Client::new()
        .get(format!("{}/api/v1/releases?marginal=unit", base.unwrap()))
        .bearer_auth(researcher)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(v["releases"].as_array().unwrap().len() >= 12);
    assert_eq!(
        leftovers(tmp.path()).len(),
        1,
        "the running demo keeps its data in TMPDIR"
    );
    // Stopped as an operator would (SIGTERM), the demo removes its temporary data directory.
    assert!(terminate(&mut child).success());
    let left = leftovers(tmp.path());
    assert!(left.is_empty(), "the demo left {left:?} behind");
}
