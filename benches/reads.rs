//! The national read bench's data: 30 organisations × 40 units × 5 years of releases, drawn
//! with the real release code (`release::draw_batch`, OpenDP noise) over synthetic raw cells
//! and committed through `Store::commit_releases`, as the lifecycle job does. Not a timing
//! bench by itself: `benches/reads.sh` builds this data directory, starts the release binary on
//! it and measures reads over HTTP (figures in benches/README.md).
//!
//! ```sh
//! cargo bench --bench reads -- OUT_DIR    # writes OUT_DIR/policy.toml and OUT_DIR/data
//! ```
//!
//! The data directory is opened at 2026-11-23 (its epoch is 2026-11), and releases cover
//! 2021-01 to 2025-12: the server's lifecycle job never touches periods before its epoch, so
//! they are served as they are. Admin token: `reads-bench-admin-token-0123456789`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use tellestrek::clock::FixedClock;
use tellestrek::domain::{CellKey, Period, TagSet};
use tellestrek::dp::OpenDpNoise;
use tellestrek::policy::Policy;
use tellestrek::release::{self, BatchInput};
use tellestrek::service::Service;
use time::macros::datetime;

mod common;

const ORGS: usize = 30;
const UNITS: usize = 40;
const FIRST_YEAR: i32 = 2021;
const YEARS: i32 = 5;
/// The admin token of the generated data directory.
const ADMIN: &str = "reads-bench-admin-token-0123456789";

/// benches/load-policy.toml (the default policy with a per-supporter cap of 10000) with its
/// organisations replaced by 30 of 40 units each.
fn national_policy_text() -> String {
    common::with_orgs(include_str!("load-policy.toml"), ORGS, UNITS)
}

/// A few raw cells per unit and base period, with varied tags.
fn raw_cells(policy: &Policy, org: usize, period: Period) -> Vec<(CellKey, u64)> {
    let o = &policy.orgs[org];
    let mut out = Vec::new();
    for (u, unit) in o.units.iter().enumerate() {
        for k in 0..3 {
            let tags: TagSet = policy
                .dimensions
                .iter()
                .enumerate()
                .map(|(d, dim)| {
                    (
                        dim.id.clone(),
                        dim.values[(org + u + k + d) % dim.values.len()].id.clone(),
                    )
                })
                .collect();
            out.push((
                CellKey {
                    period,
                    org: o.id.clone(),
                    unit: unit.id.clone(),
                    tags,
                },
                (k + 1) as u64,
            ));
        }
    }
    out
}

fn main() {
    let out: PathBuf = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .expect("usage: cargo bench --bench reads -- OUT_DIR")
        .into();
    std::fs::create_dir_all(&out).expect("create OUT_DIR");
    let text = national_policy_text();
    let policy_path = out.join("policy.toml");
    std::fs::write(&policy_path, &text).expect("write policy");
    let policy = Policy::from_str("national.toml", &text).expect("national policy is valid");
    let clock = Arc::new(FixedClock::new(datetime!(2026-11-23 10:00 UTC)));
    let (svc, _) = Service::open(&out.join("data"), policy.clone(), clock, Some(ADMIN))
        .expect("open data directory");
    let started = Instant::now();
    let (mut releases, mut cells) = (0usize, 0usize);
    for (oi, org) in policy.orgs.iter().enumerate() {
        let mut batch = Vec::new();
        for year in FIRST_YEAR..FIRST_YEAR + YEARS {
            let months: Vec<Period> = (1..=12)
                .map(|m| format!("{year}-{m:02}").parse().expect("month"))
                .collect();
            let raw: Vec<(CellKey, u64)> = months
                .iter()
                .flat_map(|m| raw_cells(&policy, oi, *m))
                .collect();
            let supporters: Vec<u32> = (0..20).map(|i| i % 7).collect();
            let mut periods: Vec<Period> = months.clone();
            periods.extend((1..=4).map(|q| format!("{year}-Q{q}").parse::<Period>().expect("q")));
            periods.push(Period::Year { year });
            for period in periods {
                let cadence = period.granularity();
                let covers: Vec<Period> = months
                    .iter()
                    .copied()
                    .filter(|m| m.within(cadence) == period)
                    .collect();
                let raw: Vec<(CellKey, u64)> = raw
                    .iter()
                    .filter(|(k, _)| covers.contains(&k.period))
                    .cloned()
                    .collect();
                let input = BatchInput {
                    policy: &policy,
                    org,
                    period,
                    covers,
                    marginals: policy
                        .marginals
                        .iter()
                        .filter(|m| m.cadence == cadence)
                        .collect(),
                    raw: &raw,
                    supporters: &supporters,
                    finer: &[],
                };
                let drawn = release::draw_batch(&input, &OpenDpNoise).expect("draw");
                releases += drawn.len();
                cells += drawn.iter().map(|(r, _)| r.cells.len()).sum::<usize>();
                batch.extend(drawn);
            }
        }
        svc.store().commit_releases(&batch).expect("commit");
    }
    svc.store().flush().expect("flush");
    println!(
        "{releases} releases ({cells} cells) of {ORGS} organisations × {UNITS} units × {YEARS} years in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    println!("policy: {}", policy_path.display());
    println!("data:   {}", out.join("data").display());
    println!("admin:  {ADMIN}");
}
