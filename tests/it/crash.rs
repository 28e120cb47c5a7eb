//! Durability: the real binary is killed with SIGKILL right after an acknowledgement, restarted,
//! and every acknowledged tick must be counted (issue 2). Five trials, each killed at a
//! different moment, with 16 concurrent clients.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::json;
use tellestrek::policy::Policy;
use tellestrek::store::Store;
use tokio::sync::Notify;

use crate::helpers::{Binary, client, remote_token, roomy_policy_file};

const ADMIN: &str = "crash-test-admin-token-0123456789";
const CLIENTS: usize = 16;

/// Runs one trial: kills the server right after the `kill_after`-th acknowledgement.
async fn trial(kill_after: u64) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let policy_path = roomy_policy_file(dir.path());
    let policy = Policy::builtin();
    let server = Binary::serve(&data, Some(&policy_path), Some(ADMIN));
    let base = server.base.clone();
    let c = client();
    let mut tokens = Vec::new();
    for _ in 0..CLIENTS {
        tokens.push(remote_token(&c, &base, ADMIN, "supporter", Some("helse-vestfjord")).await);
    }
    let acked = Arc::new(AtomicU64::new(0));
    let enough = Arc::new(Notify::new());
    let per_client: Vec<Arc<AtomicU64>> =
        (0..CLIENTS).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let org = policy.org("helse-vestfjord").unwrap();
    let mut tasks = Vec::new();
    for (n, token) in tokens.into_iter().enumerate() {
        // Each client has a cell of its own (unit x duration), so counts are checked per client.
        let unit = org.units[n % org.units.len()].id.clone();
        let varighet = policy.dimension("varighet").unwrap().values[n / org.units.len()]
            .id
            .clone();
        let mut tags: serde_json::Map<String, serde_json::Value> = policy
            .dimensions
            .iter()
            .map(|d| (d.id.clone(), json!(d.values[0].id)))
            .collect();
        tags.insert("varighet".into(), json!(varighet));
        let body = json!({"org": "helse-vestfjord", "unit": unit, "tags": tags});
        let (c, base, acked, enough, mine) = (
            c.clone(),
            base.clone(),
            acked.clone(),
            enough.clone(),
            per_client[n].clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let r = c
                    .post(format!("{base}/api/v1/ticks"))
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 201 => {
                        mine.fetch_add(1, Ordering::SeqCst);
                        if acked.fetch_add(1, Ordering::SeqCst) + 1 == kill_after {
                            enough.notify_one();
                        }
                    }
                    Ok(r) => panic!("unexpected status {}", r.status()),
                    Err(_) => return, // the server is gone
                }
            }
        }));
    }
    enough.notified().await;
    server.kill9();
    let acked_at_kill: Vec<u64> = per_client
        .iter()
        .map(|a| a.load(Ordering::SeqCst))
        .collect();
    for t in tasks {
        t.await.unwrap();
    }

    // Restart: the binary opens the crashed directory and takes ticks again.
    let again = Binary::serve(&data, Some(&policy_path), Some(ADMIN));
    assert!(
        !again.banner.contains("Created the admin token"),
        "restart must not create a new admin"
    );
    let r = c
        .get(format!("{}/healthz", again.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(again.terminate().success());

    let store = Store::open(&data).unwrap();
    let cells = store.cells_of("2026-11".parse().unwrap()).unwrap();
    for (n, want) in acked_at_kill.iter().enumerate() {
        let unit = &org.units[n % org.units.len()].id;
        let varighet = &policy.dimension("varighet").unwrap().values[n / org.units.len()].id;
        let got: u64 = cells
            .iter()
            .filter(|(k, _)| &k.unit == unit && k.tags["varighet"] == *varighet)
            .map(|(_, v)| v)
            .sum();
        // Acknowledged ticks are all there; at most one more per client was in flight.
        assert!(
            got >= *want && got <= want + 1,
            "trial {kill_after}: client {n} had {want} acknowledged, store has {got}"
        );
    }
    let total_acked: u64 = acked_at_kill.iter().sum();
    assert!(total_acked >= kill_after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_tick_survives_sigkill_in_five_trials() {
    for kill_after in [1, 17, 90, 240, 500] {
        trial(kill_after).await;
    }
}
