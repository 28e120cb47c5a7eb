//! Benchmark of the release job's drawing, against the bare OpenDP sampling it needs.
//!
//! * `release/large_policy`: every marginal of a policy with 50 organisations of 40 units each
//!   (the default taxonomy and plan: monthly total, quarterly unit and load, four yearly
//!   breakdowns), drawn with `release::draw_batch` for one month, one quarter and one year per
//!   organisation: domain building, aggregation of raw cells, calibration through OpenDP's
//!   privacy map, noise, and post-processing. 5,550 noisy cells. The interval half-widths are
//!   kept in a memo (`dp::estimate_half_width`), as in a running server after its first job.
//! * `release/large_policy_first`: the same with the memo emptied before each draw: a server's
//!   first release job after it starts.
//! * `release/raw_opendp_sampler`: one OpenDP discrete Laplace measurement invoked on a vector
//!   of the same 5,550 cells: the floor any release path has to pay for the noise.
//! * `release/national_example` and `release/national_example_sampler`: the example policy of a
//!   national scheme (`policy/examples/national-weekly.toml`: weekly periods, discrete Gaussian
//!   noise, one organisation of four regions) drawing a whole year as its release job does:
//!   four quarters (total and supporter load), then the year (region and service level), from
//!   52 weeks of raw cells; against OpenDP's sampling of the same cells at the same scales.
//!   `national_example_first` is its first draw after a start (memo emptied).
//!
//! Run with `cargo bench --bench release`; figures are in benches/README.md.

use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use tellestrek::domain::{CellKey, Granularity, Period, TagSet};
use tellestrek::dp::{self, Calibration, NoiseSource, OpenDpNoise};
use tellestrek::policy::{DEFAULT_POLICY, Marginal, Mechanism, Org, Policy};
use tellestrek::release::{self, BatchInput};

mod common;

const ORGS: usize = 50;
const UNITS: usize = 40;

/// The default policy with its organisations replaced by 50 of 40 units each.
fn large_policy() -> Policy {
    let text = common::with_orgs(DEFAULT_POLICY, ORGS, UNITS);
    Policy::from_str("large.toml", &text).expect("large policy is valid")
}

/// The national example policy, as shipped.
fn national_policy() -> Policy {
    let file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/policy/examples/national-weekly.toml"
    );
    let text = std::fs::read_to_string(file).expect("the national example is readable");
    Policy::from_str(file, &text).expect("the national example is valid")
}

/// A few raw cells per unit of every organisation, with varied tags, for one base period.
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

/// One batch of the release job: an organisation's marginals of one cadence for one period.
struct Job<'a> {
    org: &'a Org,
    period: Period,
    covers: Vec<Period>,
    marginals: Vec<&'a Marginal>,
    raw: Vec<(CellKey, u64)>,
}

impl Job<'_> {
    /// Draws the batch with real noise; returns the number of cells drawn.
    fn draw(&self, policy: &Policy, supporters: &[u32]) -> usize {
        let input = BatchInput {
            policy,
            org: self.org,
            period: self.period,
            covers: self.covers.clone(),
            marginals: self.marginals.clone(),
            raw: &self.raw,
            supporters,
            finer: &[],
        };
        release::draw_batch(&input, &OpenDpNoise)
            .expect("draw")
            .iter()
            .map(|(r, _)| r.cells.len())
            .sum()
    }

    /// The calibrations the batch's cells are drawn with, and how many cells each.
    fn calibrations(&self, policy: &Policy) -> Vec<(Calibration, usize)> {
        self.marginals
            .iter()
            .map(|m| {
                let dom = release::domain(policy, self.org, m);
                let noise = release::calibrate_marginal(policy, m, &dom).expect("calibrate");
                (noise.plain, dom.len())
            })
            .collect()
    }
}

/// Benches drawing `jobs` (warm, and first after a start as `NAME_first`) and, as `sampler_name`,
/// the bare OpenDP sampling of their cells.
fn bench_jobs(
    g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    (name, sampler_name): (&str, &str),
    policy: &Policy,
    jobs: &[Job<'_>],
    sampler: impl Fn(),
) {
    let supporters: Vec<u32> = (0..20).map(|i| i % 7).collect();
    let cells: usize = jobs
        .iter()
        .flat_map(|j| j.calibrations(policy))
        .map(|(_, n)| n)
        .sum();
    let draw_all = || {
        let drawn: usize = jobs.iter().map(|j| j.draw(policy, &supporters)).sum();
        assert_eq!(drawn, cells);
    };
    g.throughput(Throughput::Elements(cells as u64));
    g.bench_function(name, |b| b.iter(draw_all));
    g.bench_function(format!("{name}_first"), |b| {
        b.iter(|| {
            dp::forget_half_widths();
            draw_all()
        })
    });
    g.bench_function(sampler_name, |b| b.iter(&sampler));
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("release");
    g.sample_size(10);

    // 50 × 40: a month, its quarter and its year per organisation, from one month of cells.
    let policy = large_policy();
    let month: Period = "2026-12".parse().unwrap();
    let raw = raw_cells(&policy, month);
    let mut jobs = Vec::new();
    for org in &policy.orgs {
        for cadence in [Granularity::Month, Granularity::Quarter, Granularity::Year] {
            jobs.push(Job {
                org,
                period: month.within(cadence),
                covers: vec![month],
                marginals: policy
                    .marginals
                    .iter()
                    .filter(|m| m.cadence == cadence)
                    .collect(),
                raw: raw
                    .iter()
                    .filter(|(k, _)| k.org == org.id)
                    .cloned()
                    .collect(),
            });
        }
    }
    let cal = dp::calibrate(Mechanism::DiscreteLaplace, 1, 0.4, 1.0).expect("calibrate");
    let cells: usize = jobs
        .iter()
        .flat_map(|j| j.calibrations(&policy))
        .map(|(_, n)| n)
        .sum();
    let values: Vec<i64> = (0..cells as i64).map(|i| i % 5).collect();
    // The large policy's names predate the national example's: kept so runs compare.
    bench_jobs(
        &mut g,
        ("large_policy", "raw_opendp_sampler"),
        &policy,
        &jobs,
        || {
            OpenDpNoise.add_noise(&cal, &values).expect("noise");
        },
    );

    // The national example: a year of weeks, released as its four quarters and the year.
    let national = national_policy();
    let year: Period = "2026".parse().unwrap();
    let weeks = release::base_periods_in(year, national.granularity);
    let raw: Vec<(CellKey, u64)> = weeks
        .iter()
        .flat_map(|w| raw_cells(&national, *w))
        .collect();
    let mut jobs = Vec::new();
    for org in &national.orgs {
        let quarters = release::base_periods_in(year, Granularity::Quarter);
        for period in quarters.into_iter().chain([year]) {
            let covers = release::base_periods_in(period, national.granularity);
            jobs.push(Job {
                org,
                period,
                marginals: national
                    .marginals
                    .iter()
                    .filter(|m| m.cadence == period.granularity())
                    .collect(),
                raw: raw
                    .iter()
                    .filter(|(k, _)| k.org == org.id && covers.contains(&k.period))
                    .cloned()
                    .collect(),
                covers,
            });
        }
    }
    let draws: Vec<(Calibration, Vec<i64>)> = jobs
        .iter()
        .flat_map(|j| j.calibrations(&national))
        .map(|(cal, n)| (cal, vec![2; n]))
        .collect();
    bench_jobs(
        &mut g,
        ("national_example", "national_example_sampler"),
        &national,
        &jobs,
        || {
            for (cal, values) in &draws {
                OpenDpNoise.add_noise(cal, values).expect("noise");
            }
        },
    );
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
