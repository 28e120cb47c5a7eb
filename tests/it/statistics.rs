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
        declared = Some((r.scale, r.cells[0].ci[1] - r.cells[0].noisy));
        for (c, t) in r.cells.iter().zip(&truth) {
            errors.push((c.noisy - *t as i64) as f64);
            covered += usize::from(c.ci[0] <= *t as i64 && *t as i64 <= c.ci[1]);
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
