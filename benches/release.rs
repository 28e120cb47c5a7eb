//! Benchmark of drawing releases for a large policy, against the raw OpenDP sampler.
//!
//! * `release/large_policy`: every marginal of a policy with 50 organisations of 40 units each
//!   (the default taxonomy and plan: monthly total, quarterly unit and load, four yearly
//!   breakdowns), drawn with `release::draw_batch` for one month, one quarter and one year per
//!   organisation: domain building, aggregation of raw cells, calibration through OpenDP's
//!   privacy map, noise, and post-processing. 50 × 69 = 3,450 noisy cells.
//! * `release/raw_opendp_sampler`: one OpenDP discrete Laplace measurement invoked on a vector
//!   of the same 3,450 cells: the floor any release path has to pay for the noise.
//!
//! Run with `cargo bench --bench release`; figures are in benches/README.md.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tellestrek::domain::{CellKey, Granularity, Period, TagSet};
use tellestrek::dp::{self, NoiseSource, OpenDpNoise};
use tellestrek::policy::{DEFAULT_POLICY, Mechanism, Policy};
use tellestrek::release::{self, BatchInput};

mod common;

const ORGS: usize = 50;
const UNITS: usize = 40;

/// The default policy with its organisations replaced by 50 of 40 units each.
fn large_policy() -> Policy {
    let text = common::with_orgs(DEFAULT_POLICY, ORGS, UNITS);
    Policy::from_str("large.toml", &text).expect("large policy is valid")
}

/// A few raw cells per unit, with varied tags, for one base period.
fn raw_cells(policy: &Policy, period: Period) -> Vec<(CellKey, u64)> {
    let mut out = Vec::new();
    for (o, org) in policy.orgs.iter().enumerate() {
        for (u, unit) in org.units.iter().enumerate() {
            for k in 0..3 {
                let tags: TagSet = policy
                    .dimensions
                    .iter()
                    .enumerate()
                    .map(|(d, dim)| {
                        (
                            dim.id.clone(),
                            dim.values[(o + u + k + d) % dim.values.len()].id.clone(),
                        )
                    })
                    .collect();
                out.push((
                    CellKey {
                        period,
                        org: org.id.clone(),
                        unit: unit.id.clone(),
                        tags,
                    },
                    (k + 1) as u64,
                ));
            }
        }
    }
    out
}

fn bench(c: &mut Criterion) {
    let policy = large_policy();
    let month: Period = "2026-12".parse().unwrap();
    let raw = raw_cells(&policy, month);
    let supporters: Vec<u32> = (0..20).map(|i| i % 7).collect();
    let cells: usize = policy
        .orgs
        .iter()
        .map(|o| {
            policy
                .marginals
                .iter()
                .map(|m| release::domain(&policy, o, m).len())
                .sum::<usize>()
        })
        .sum();
    let mut g = c.benchmark_group("release");
    g.sample_size(10);
    g.throughput(Throughput::Elements(cells as u64));
    g.bench_function("large_policy", |b| {
        b.iter(|| {
            let mut drawn = 0;
            for org in &policy.orgs {
                let raw: Vec<(CellKey, u64)> = raw
                    .iter()
                    .filter(|(k, _)| k.org == org.id)
                    .cloned()
                    .collect();
                for cadence in [Granularity::Month, Granularity::Quarter, Granularity::Year] {
                    let input = BatchInput {
                        policy: &policy,
                        org,
                        period: month.within(cadence),
                        covers: vec![month],
                        marginals: policy
                            .marginals
                            .iter()
                            .filter(|m| m.cadence == cadence)
                            .collect(),
                        raw: &raw,
                        supporters: &supporters,
                        finer: &[],
                    };
                    drawn += release::draw_batch(&input, &OpenDpNoise)
                        .expect("draw")
                        .iter()
                        .map(|(r, _)| r.cells.len())
                        .sum::<usize>();
                }
            }
            assert_eq!(drawn, cells);
        })
    });
    let cal = dp::calibrate(Mechanism::DiscreteLaplace, 1, 0.4, 1.0).expect("calibrate");
    let values: Vec<i64> = (0..cells as i64).map(|i| i % 5).collect();
    g.bench_function("raw_opendp_sampler", |b| {
        b.iter(|| OpenDpNoise.add_noise(&cal, &values).expect("noise"))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
