//! Real OpenDP noise through the release path, checked against what the release declares
//! (issue 3).
//!
//! 3,000 draws of the helse-vestfjord unit marginal (9 cells, ε 0.4, scale 2.5) give 27,000
//! noise samples. A correct implementation fails any of the checks with probability below
//! about 1 in 10,000 in all:
//! - mean error: within 4.4·σ/√n of 0 (4.4 standard errors: 1e-5 two-sided);
//! - spread: the mean absolute error within 4.4 standard errors of the declared scale's
//!   E|Z| = 2q/((1-q)(1+q)), q = e^(-1/scale) (its standard error is about 0.6% here, and the
//!   mean of |Z| is close to normal); the sample variance within 10% of the declared variance
//!   2q/(1-q)² (its standard error is about 1.4%, but Laplace tails make it skewed, so the
//!   bound is wide: about 7 standard errors);
//! - 95% intervals: coverage within 4.4·√(p(1-p)/n) of the exact coverage of `noisy ± h`, which
//!   itself must be at least 95%.

use tellestrek::domain::CellKey;
use tellestrek::dp::OpenDpNoise;
use tellestrek::policy::Policy;
use tellestrek::release::{BatchInput, draw_batch};

#[test]
fn noise_spread_and_interval_coverage_match_what_releases_declare() {
    let policy = Policy::builtin();
    let org = policy.org("helse-vestfjord").unwrap();
    let marginal = policy.marginal("unit").unwrap();
    let period = "2026-Q4".parse().unwrap();
    let tags = policy
        .dimensions
        .iter()
        .map(|d| (d.id.clone(), d.values[0].id.clone()))
        .collect::<tellestrek::domain::TagSet>();
    let truth: Vec<u64> = (0..org.units.len() as u64).map(|i| i * 3).collect();
    let raw: Vec<(CellKey, u64)> = org
        .units
        .iter()
        .zip(&truth)
        .map(|(u, n)| {
            (
                CellKey {
                    period: "2026-11".parse().unwrap(),
                    org: org.id.clone(),
                    unit: u.id.clone(),
                    tags: tags.clone(),
                },
                *n,
            )
        })
        .collect();
    let input = BatchInput {
        policy: &policy,
        org,
        period,
        covers: vec!["2026-11".parse().unwrap()],
        marginals: vec![marginal],
        raw: &raw,
        supporters: &[],
        finer: &[],
    };

    let (mut errors, mut covered) = (Vec::new(), 0usize);
    let mut declared = None;
    for _ in 0..3000 {
        let (r, entry) = draw_batch(&input, &OpenDpNoise).unwrap().remove(0);
        assert!((entry.spend - 0.4).abs() < 1e-6 && entry.spend <= 0.4);
        declared = Some((r.scale, r.cells[0].noisy_ci[1] - r.cells[0].noisy));
        for (c, t) in r.cells.iter().zip(&truth) {
            errors.push((c.noisy - *t as i64) as f64);
            covered += usize::from(c.noisy_ci[0] <= *t as i64 && *t as i64 <= c.noisy_ci[1]);
        }
    }
    let (scale, h) = declared.unwrap();
    let n = errors.len() as f64;
    let q = (-1.0 / scale).exp();
    let var = 2.0 * q / ((1.0 - q) * (1.0 - q));
    let mean = errors.iter().sum::<f64>() / n;
    let sample_var = errors.iter().map(|e| (e - mean) * (e - mean)).sum::<f64>() / (n - 1.0);
    assert!(mean.abs() < 4.4 * (var / n).sqrt(), "mean error {mean}");
    let mean_abs = errors.iter().map(|e| e.abs()).sum::<f64>() / n;
    let expected_abs = 2.0 * q / ((1.0 - q) * (1.0 + q));
    let abs_se = ((var - expected_abs * expected_abs) / n).sqrt();
    assert!(
        (mean_abs - expected_abs).abs() < 4.4 * abs_se,
        "mean |error| {mean_abs} vs declared {expected_abs} (scale {scale})"
    );
    assert!(
        (sample_var / var - 1.0).abs() < 0.10,
        "variance {sample_var} vs declared {var} (scale {scale})"
    );
    // P(|Z| <= h) for discrete Laplace: 1 - 2 q^(h+1) / (1 + q).
    let exact = 1.0 - 2.0 * q.powi(h as i32 + 1) / (1.0 + q);
    assert!(exact >= 0.95, "declared interval covers only {exact}");
    let coverage = covered as f64 / n;
    assert!(
        (coverage - exact).abs() < 4.4 * (exact * (1.0 - exact) / n).sqrt(),
        "coverage {coverage} vs exact {exact}"
    );
}

/// Raw cells of `org` in `months`: `per_unit[u]` contacts of unit `u` spread over the months,
/// with tags drawn from a seeded generator (the simulation's choices; the noise is OpenDP's).
fn simulated_raw(
    policy: &Policy,
    org: &tellestrek::policy::Org,
    months: &[tellestrek::domain::Period],
    per_unit: &[u64],
) -> Vec<(CellKey, u64)> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(8);
    let mut raw = Vec::new();
    for (u, &n) in org.units.iter().zip(per_unit) {
        for _ in 0..n {
            let tags = policy
                .dimensions
                .iter()
                .map(|d| {
                    let v = &d.values[rng.random_range(0..d.values.len())];
                    (d.id.clone(), v.id.clone())
                })
                .collect::<tellestrek::domain::TagSet>();
            let key = CellKey {
                period: months[rng.random_range(0..months.len())],
                org: org.id.clone(),
                unit: u.id.clone(),
                tags,
            };
            raw.push((key, 1));
        }
    }
    raw
}

/// Coverage of `ci`, the estimate's interval (issue 8): over simulated periods with real OpenDP
/// noise, the published `ci` covers the true count 95% of the time and always contains the
/// published `estimate`.
///
/// Two situations, each drawn 400 times:
/// - a quarter: three monthly totals drawn first (ε 0.7 each), then the unit marginal (9 cells,
///   ε 0.4) and the load marginal, whose total is combined with the months' (3,600 unit cells);
/// - a year of the four yearly marginals together (26 cells, 3 sensitive with more noise),
///   combined into one total (10,400 cells).
///
/// The intervals are a normal approximation for all but the cell's own noise (see `release`),
/// so their coverage is 95% up to that approximation, well under half a point here. The check
/// is 0.95 ± 0.015 for each situation and pooled: 4.1 standard errors for the quarter's
/// 3,600 cells (√(0.95·0.05/3600) = 0.0036) and more for the rest, so a correct implementation
/// fails with probability below about 1 in 10,000 (cells of one period share the total's noise,
/// a weak dependence that the margin absorbs). Runs in about 20 s in a debug build.
#[test]
fn estimate_intervals_contain_their_estimate_and_cover_the_truth_95_percent() {
    use tellestrek::domain::{Granularity, Period};
    use tellestrek::release::base_periods_in;

    let policy = Policy::builtin();
    let org = policy.org("helse-vestfjord").unwrap();
    let m = |id: &str| policy.marginal(id).unwrap();
    let truth_of = |r: &tellestrek::domain::Release, raw: &[(CellKey, u64)]| -> Vec<i64> {
        let marginal = m(&r.marginal);
        let dom = tellestrek::release::domain(&policy, org, marginal);
        tellestrek::release::true_counts(&policy, org, marginal, raw, &[], &dom)
    };
    let tally = |r: &tellestrek::domain::Release, truth: &[i64], hits: &mut (usize, usize)| {
        for (c, &t) in r.cells.iter().zip(truth) {
            let est = c.estimate as i64;
            assert!(
                c.ci[0] <= est && est <= c.ci[1] && c.ci[0] >= 0,
                "{}: {c:?} excludes its estimate",
                r.id
            );
            hits.0 += usize::from(c.ci[0] <= t && t <= c.ci[1]);
            hits.1 += 1;
        }
    };

    // A quarter: some units busy, some quiet, one silent.
    let quarter: Period = "2026-Q3".parse().unwrap();
    let months = base_periods_in(quarter, Granularity::Month);
    let raw_q = simulated_raw(&policy, org, &months, &[4, 18, 9, 12, 2, 25, 6, 7, 0]);
    let supporters = [0u32, 1, 5, 6, 2, 8, 0, 4, 3, 9];
    let mut quarter_hits = (0, 0);
    for _ in 0..400 {
        let mut finer = Vec::new();
        for &month in &months {
            let raw: Vec<(CellKey, u64)> = raw_q
                .iter()
                .filter(|(k, _)| k.period == month)
                .cloned()
                .collect();
            let input = BatchInput {
                policy: &policy,
                org,
                period: month,
                covers: vec![month],
                marginals: vec![m("total")],
                raw: &raw,
                supporters: &[],
                finer: &[],
            };
            finer.extend(
                draw_batch(&input, &OpenDpNoise)
                    .unwrap()
                    .into_iter()
                    .map(|x| x.0),
            );
        }
        let input = BatchInput {
            policy: &policy,
            org,
            period: quarter,
            covers: months.clone(),
            marginals: vec![m("unit"), m("load")],
            raw: &raw_q,
            supporters: &supporters,
            finer: &finer,
        };
        for (r, _) in draw_batch(&input, &OpenDpNoise).unwrap() {
            if r.kind == "contacts" {
                tally(&r, &truth_of(&r, &raw_q), &mut quarter_hits);
            } else {
                // Load cells: only that the interval holds the estimate.
                tally(&r, &[i64::MIN, i64::MIN], &mut (0, 0));
            }
        }
    }

    // A year of the yearly marginals, drawn together.
    let year: Period = "2025".parse().unwrap();
    let months = base_periods_in(year, Granularity::Month);
    let raw_y = simulated_raw(&policy, org, &months, &[10, 30, 25, 22, 8, 40, 12, 15, 3]);
    let yearly: Vec<_> = ["yrkesgruppe", "utlosende_arsak", "initiering", "kanal"]
        .into_iter()
        .map(m)
        .collect();
    let mut year_hits = (0, 0);
    for _ in 0..400 {
        let input = BatchInput {
            policy: &policy,
            org,
            period: year,
            covers: months.clone(),
            marginals: yearly.clone(),
            raw: &raw_y,
            supporters: &[],
            finer: &[],
        };
        for (r, _) in draw_batch(&input, &OpenDpNoise).unwrap() {
            tally(&r, &truth_of(&r, &raw_y), &mut year_hits);
        }
    }

    let rate = |(hit, n): (usize, usize)| hit as f64 / n as f64;
    let pooled = (quarter_hits.0 + year_hits.0, quarter_hits.1 + year_hits.1);
    for (what, hits) in [
        ("quarter", quarter_hits),
        ("year", year_hits),
        ("pooled", pooled),
    ] {
        let r = rate(hits);
        assert!(
            (r - 0.95).abs() <= 0.015,
            "{what}: coverage {r:.4} over {} cells",
            hits.1
        );
        eprintln!("{what}: coverage {r:.4} over {} cells", hits.1);
    }
}
