//! Differential privacy: the only module that imports `opendp`.
//!
//! It calibrates a noise scale for a budget and a sensitivity, asks OpenDP's privacy map for the
//! ε (or ρ) actually spent, adds discrete Laplace or discrete Gaussian noise to integer vectors,
//! and turns scales into 95% interval half-widths with OpenDP's accuracy helpers. OpenDP's
//! `Measurement` is not `Send`: it is built and invoked inside one call, never stored, and the
//! release job calls this from `spawn_blocking`. The ledger is ours (in `store`), not OpenDP's.
//!
//! Noise is injected through [`NoiseSource`], with [`ZeroNoise`] for exact tests. Must not
//! depend on storage, HTTP or tokio.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, PoisonError};

use opendp::accuracy::{discrete_gaussian_scale_to_accuracy, discrete_laplacian_scale_to_accuracy};
use opendp::domains::{AtomDomain, VectorDomain};
use opendp::measurements::{make_gaussian, make_laplace};
use opendp::measures::{MaxDivergence, ZeroConcentratedDivergence};
use opendp::metrics::{L1Distance, L2Distance};
use thiserror::Error;

use crate::policy::Mechanism;

/// OpenDP refused to build, map or invoke a measurement.
#[derive(Debug, Error)]
#[error("opendp: {0}")]
pub struct DpError(String);

impl From<opendp::error::Error> for DpError {
    fn from(e: opendp::error::Error) -> Self {
        DpError(format!(
            "{:?}: {}",
            e.variant,
            e.message.unwrap_or_default()
        ))
    }
}

/// A noise distribution fixed for one release: what it costs and how wide it is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Calibration {
    /// The mechanism.
    pub mechanism: Mechanism,
    /// The noise scale (discrete Laplace scale, or discrete Gaussian σ).
    pub scale: f64,
    /// The sensitivity the privacy map was evaluated at.
    pub sensitivity: u32,
    /// ε (Laplace) or ρ (Gaussian), as OpenDP's privacy map returns it for `sensitivity`.
    pub spend: f64,
    /// Half-width h of the 95% interval: the true value is in `noisy ± h` with probability at
    /// least 95%, from OpenDP's accuracy helper (`accuracy - 1`, as the helpers return the
    /// smallest error reached with probability at most α).
    pub ci_half_width: i64,
    /// Variance of one noisy cell, for weighting estimates.
    pub variance: f64,
}

/// Confidence level of every interval the service reports.
pub const CONFIDENCE: f64 = 0.95;

fn laplace_variance(scale: f64) -> f64 {
    // pmf ∝ exp(-|x|/scale); with q = exp(-1/scale) the variance is 2q / (1 - q)².
    if scale == 0.0 {
        return 0.0;
    }
    let q = (-1.0 / scale).exp();
    2.0 * q / ((1.0 - q) * (1.0 - q))
}

fn privacy_map(mechanism: Mechanism, scale: f64, sensitivity: u32) -> Result<f64, DpError> {
    let d_in = i64::from(sensitivity);
    let domain = VectorDomain::new(AtomDomain::<i64>::default());
    Ok(match mechanism {
        Mechanism::DiscreteLaplace => {
            let m = make_laplace::<_, _, MaxDivergence>(
                domain,
                L1Distance::<i64>::default(),
                scale,
                None,
            )?;
            m.map(&d_in)?
        }
        Mechanism::DiscreteGaussian => {
            let m = make_gaussian::<_, _, ZeroConcentratedDivergence>(
                domain,
                L2Distance::<i64>::default(),
                scale,
                None,
            )?;
            m.map(&d_in)?
        }
    })
}

/// The noise scale for `budget` at `sensitivity`, times `multiplier` (>= 1, stronger
/// protection), with the spend that OpenDP's privacy map reports for it. The scale starts from
/// the textbook formula and is widened until the map's answer is within the budget, so the
/// recorded spend is OpenDP's, never ours.
pub fn calibrate(
    mechanism: Mechanism,
    sensitivity: u32,
    budget: f64,
    multiplier: f64,
) -> Result<Calibration, DpError> {
    if !(budget.is_finite() && budget > 0.0) {
        return Err(DpError(format!("budget {budget} must be above 0")));
    }
    let s = f64::from(sensitivity.max(1));
    let mut scale = multiplier
        * match mechanism {
            // ε = Δ / scale
            Mechanism::DiscreteLaplace => s / budget,
            // ρ = Δ² / (2σ²)
            Mechanism::DiscreteGaussian => s / (2.0 * budget).sqrt(),
        };
    let mut spend = privacy_map(mechanism, scale, sensitivity)?;
    let mut tries = 0;
    while spend > budget {
        scale *= 1.0 + 1e-9;
        spend = privacy_map(mechanism, scale, sensitivity)?;
        tries += 1;
        if tries > 64 {
            return Err(DpError(format!("could not fit scale to budget {budget}")));
        }
    }
    let (accuracy, variance) = match mechanism {
        Mechanism::DiscreteLaplace => (
            discrete_laplacian_scale_to_accuracy(scale, 1.0 - CONFIDENCE)?,
            laplace_variance(scale),
        ),
        // The discrete Gaussian's variance is at most σ².
        Mechanism::DiscreteGaussian => (
            discrete_gaussian_scale_to_accuracy(scale, 1.0 - CONFIDENCE)?,
            scale * scale,
        ),
    };
    Ok(Calibration {
        mechanism,
        scale,
        sensitivity,
        spend,
        ci_half_width: (accuracy.ceil() as i64 - 1).max(0),
        variance,
    })
}

/// The noise distribution of one cell, as (value, probability) pairs over the values whose
/// probability is not negligible (tails below about 1e-14 are cut, so the masses sum to within
/// 1e-13 of 1). Public: it depends only on the calibration, never on data.
fn noise_pmf(cal: &Calibration) -> Vec<(i64, f64)> {
    if cal.scale <= 0.0 {
        return vec![(0, 1.0)];
    }
    match cal.mechanism {
        Mechanism::DiscreteLaplace => {
            // P(k) = (1 - q) / (1 + q) · q^|k|, q = exp(-1/scale).
            let q = (-1.0 / cal.scale).exp();
            let k_max = ((1e-14f64).ln() / q.ln()).ceil().clamp(1.0, 1e6) as i64;
            let p0 = (1.0 - q) / (1.0 + q);
            (-k_max..=k_max)
                .map(|k| (k, p0 * q.powi(k.unsigned_abs() as i32)))
                .collect()
        }
        Mechanism::DiscreteGaussian => {
            // P(k) ∝ exp(-k² / 2σ²), normalised over ±9σ (the rest is below 1e-17).
            let k_max = (9.0 * cal.scale).ceil().min(1e6) as i64 + 1;
            let w: Vec<(i64, f64)> = (-k_max..=k_max)
                .map(|k| (k, (-((k * k) as f64) / (2.0 * cal.scale * cal.scale)).exp()))
                .collect();
            let z: f64 = w.iter().map(|(_, p)| p).sum();
            w.into_iter().map(|(k, p)| (k, p / z)).collect()
        }
    }
}

/// Half-width h of the 95% interval of an estimate whose error is `own · Z + R`: Z is one
/// cell's noise of calibration `cal`, R the rest of the estimate's error (other noisy cells,
/// weighted), with variance `rest_variance`. The smallest h (to 1e-9 relative, erring wide)
/// with P(|own · Z + R| ≤ h) ≥ 95%.
///
/// Z is taken exactly from its distribution; R, a weighted sum of many independent noises, as
/// normal. A plain normal interval for the whole error would under-cover when one cell's
/// discrete Laplace noise dominates (about 93% at ε 0.4); this keeps the heavy tail where it is.
/// With `own = 1` and no rest it is OpenDP's `h` again.
///
/// The answer depends only on the calibration and the two weights, which come from the policy
/// and the sizes of its domains, never from counts; it is kept in a memo (see
/// [`forget_half_widths`]), so a policy's few distinct inputs are computed once per process
/// (each costs thousands of `erfc` evaluations). Whether the memo answers is as public as the
/// policy.
pub fn estimate_half_width(cal: &Calibration, own: f64, rest_variance: f64) -> f64 {
    let key = [
        match cal.mechanism {
            Mechanism::DiscreteLaplace => 0,
            Mechanism::DiscreteGaussian => 1,
        },
        cal.scale.to_bits(),
        own.to_bits(),
        rest_variance.to_bits(),
    ];
    let memo = || HALF_WIDTHS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(&h) = memo().get(&key) {
        return h;
    }
    let h = compute_half_width(cal, own, rest_variance);
    let mut m = memo();
    if m.len() >= HALF_WIDTH_MEMO_MAX {
        m.clear();
    }
    m.insert(key, h);
    h
}

/// The most half-widths the memo keeps; past it, it starts again empty. A policy needs a few
/// per marginal and organisation.
const HALF_WIDTH_MEMO_MAX: usize = 4096;

/// Half-widths by mechanism, scale, own weight and rest variance (their bit patterns).
static HALF_WIDTHS: LazyLock<Mutex<HashMap<[u64; 4], f64>>> = LazyLock::new(Default::default);

/// Empties the memo of [`estimate_half_width`]: for benchmarks of a first draw after start.
pub fn forget_half_widths() {
    HALF_WIDTHS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clear();
}

fn compute_half_width(cal: &Calibration, own: f64, rest_variance: f64) -> f64 {
    let pmf = noise_pmf(cal);
    let own = own.abs();
    let s = rest_variance.max(0.0).sqrt();
    // The standard normal CDF. Beyond ±9 it is within 1.2e-19 of 1 or 0 (1 is also what
    // `erfc` gives in f64 above 9), so most terms of a wide pmf skip `erfc`.
    let phi = |x: f64| {
        if x >= 9.0 {
            1.0
        } else if x <= -9.0 {
            0.0
        } else {
            0.5 * statrs::function::erf::erfc(-x / std::f64::consts::SQRT_2)
        }
    };
    let coverage = |h: f64| -> f64 {
        pmf.iter()
            .map(|&(k, p)| {
                let mid = own * k as f64;
                if s > 0.0 {
                    p * (phi((h - mid) / s) - phi((-h - mid) / s))
                } else if mid.abs() <= h {
                    p
                } else {
                    0.0
                }
            })
            .sum()
    };
    let k_max = pmf.last().map_or(0, |&(k, _)| k) as f64;
    let (mut lo, mut hi) = (0.0, own * k_max + 10.0 * s + 1.0);
    while hi - lo > 1e-9 * hi.max(1.0) {
        let mid = 0.5 * (lo + hi);
        if coverage(mid) >= CONFIDENCE {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi
}

/// The ε of (ε, δ)-DP implied by ρ-zCDP (Bun and Steinke 2016, proposition 1.3):
/// ε = ρ + 2·√(ρ·ln(1/δ)). For plain-language summaries; the ledger records ρ itself.
pub fn zcdp_epsilon(rho: f64, delta: f64) -> f64 {
    rho + 2.0 * (rho * (1.0 / delta).ln()).sqrt()
}

/// Adds noise to integer counts. Implementations are called from blocking threads.
pub trait NoiseSource: Send + Sync + 'static {
    /// Returns `values` with independent noise of `cal` added to each.
    fn add_noise(&self, cal: &Calibration, values: &[i64]) -> Result<Vec<i64>, DpError>;
}

/// Real noise from OpenDP (OpenSSL's secure generator underneath).
#[derive(Debug, Default, Clone, Copy)]
pub struct OpenDpNoise;

impl NoiseSource for OpenDpNoise {
    fn add_noise(&self, cal: &Calibration, values: &[i64]) -> Result<Vec<i64>, DpError> {
        let domain = VectorDomain::new(AtomDomain::<i64>::default());
        let arg = values.to_vec();
        Ok(match cal.mechanism {
            Mechanism::DiscreteLaplace => make_laplace::<_, _, MaxDivergence>(
                domain,
                L1Distance::<i64>::default(),
                cal.scale,
                None,
            )?
            .invoke(&arg)?,
            Mechanism::DiscreteGaussian => make_gaussian::<_, _, ZeroConcentratedDivergence>(
                domain,
                L2Distance::<i64>::default(),
                cal.scale,
                None,
            )?
            .invoke(&arg)?,
        })
    }
}

/// No noise at all: for tests that check aggregation and post-processing exactly. Never used
/// by the binary.
#[derive(Debug, Default, Clone, Copy)]
pub struct ZeroNoise;

impl NoiseSource for ZeroNoise {
    fn add_noise(&self, _cal: &Calibration, values: &[i64]) -> Result<Vec<i64>, DpError> {
        Ok(values.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recorded_spend_is_opendps_and_within_budget() {
        for (mech, sens, budget) in [
            (Mechanism::DiscreteLaplace, 1, 0.7),
            (Mechanism::DiscreteLaplace, 40, 0.1),
            (Mechanism::DiscreteGaussian, 1, 0.05),
            (Mechanism::DiscreteGaussian, 112, 0.1),
        ] {
            let c = calibrate(mech, sens, budget, 1.0).unwrap();
            assert!(c.spend <= budget, "{mech:?}: {} > {budget}", c.spend);
            assert!(
                c.spend > budget * 0.999,
                "{mech:?}: {} wastes budget {budget}",
                c.spend
            );
            assert_eq!(c.spend, privacy_map(mech, c.scale, sens).unwrap());
        }
    }

    #[test]
    fn a_multiplier_buys_stronger_protection() {
        let plain = calibrate(Mechanism::DiscreteLaplace, 1, 0.4, 1.0).unwrap();
        let strong = calibrate(Mechanism::DiscreteLaplace, 1, 0.4, 2.0).unwrap();
        assert!((strong.scale - 2.0 * plain.scale).abs() < 1e-6);
        assert!(strong.spend <= 0.2 + 1e-12);
        assert!(strong.ci_half_width > plain.ci_half_width);
    }

    #[test]
    fn the_default_plan_meets_its_accuracy_targets() {
        // Organisation-month total at ε 0.7: within about ±5; unit-quarter at ε 0.4: within ±10.
        assert!(
            calibrate(Mechanism::DiscreteLaplace, 1, 0.7, 1.0)
                .unwrap()
                .ci_half_width
                <= 5
        );
        assert!(
            calibrate(Mechanism::DiscreteLaplace, 1, 0.4, 1.0)
                .unwrap()
                .ci_half_width
                <= 10
        );
    }

    #[test]
    fn an_estimate_interval_is_opendps_for_a_lone_cell_and_widens_with_the_rest() {
        for mech in [Mechanism::DiscreteLaplace, Mechanism::DiscreteGaussian] {
            let c = calibrate(mech, 1, 0.4, 1.0).unwrap();
            let alone = estimate_half_width(&c, 1.0, 0.0);
            assert!(
                (alone - c.ci_half_width as f64).abs() < 1e-6,
                "{mech:?}: {alone} vs OpenDP's {}",
                c.ci_half_width
            );
            // Half the cell's noise and a normal rest of the same total variance: between
            // the normal 1.96σ and the lone cell's interval.
            let v = c.variance;
            let mixed = estimate_half_width(&c, 0.5f64.sqrt(), v / 2.0);
            assert!(mixed > 1.9 * v.sqrt() && mixed < alone + 1.0, "{mixed}");
            // All normal: 1.96σ.
            let normal = estimate_half_width(&c, 0.0, v);
            assert!((normal - 1.959964 * v.sqrt()).abs() < 1e-4, "{normal}");
        }
    }

    #[test]
    fn an_estimate_interval_is_the_smallest_that_covers_with_the_full_normal_cdf() {
        // The coverage of h, with erfc at every term (no cut at ±9), as the definition reads.
        let coverage = |c: &Calibration, own: f64, rest: f64, h: f64| -> f64 {
            let s = rest.sqrt();
            let phi = |x: f64| 0.5 * statrs::function::erf::erfc(-x / std::f64::consts::SQRT_2);
            noise_pmf(c)
                .iter()
                .map(|&(k, p)| {
                    let mid = own * k as f64;
                    p * (phi((h - mid) / s) - phi((-h - mid) / s))
                })
                .sum()
        };
        for mech in [Mechanism::DiscreteLaplace, Mechanism::DiscreteGaussian] {
            for (budget, own, rest_share) in [(0.4, 0.9, 0.05), (1.0, 0.6, 0.5), (0.1, 0.99, 0.01)]
            {
                let c = calibrate(mech, 1, budget, 1.0).unwrap();
                let rest = c.variance * rest_share;
                forget_half_widths();
                let h = estimate_half_width(&c, own, rest);
                assert!(
                    coverage(&c, own, rest, h) >= CONFIDENCE,
                    "{mech:?} {budget}"
                );
                assert!(
                    coverage(&c, own, rest, h * (1.0 - 1e-6)) < CONFIDENCE,
                    "{mech:?} {budget}: {h} is not the smallest"
                );
                // The memo's answer is the computed one, bit for bit.
                assert_eq!(estimate_half_width(&c, own, rest).to_bits(), h.to_bits());
                assert_eq!(compute_half_width(&c, own, rest).to_bits(), h.to_bits());
            }
        }
    }

    #[test]
    fn zero_noise_is_exact_and_real_noise_is_not() {
        let c = calibrate(Mechanism::DiscreteLaplace, 1, 0.5, 1.0).unwrap();
        let v = vec![3, 0, 7, 1];
        assert_eq!(ZeroNoise.add_noise(&c, &v).unwrap(), v);
        let draws: Vec<Vec<i64>> = (0..20)
            .map(|_| OpenDpNoise.add_noise(&c, &v).unwrap())
            .collect();
        assert!(
            draws.iter().any(|d| d != &v),
            "twenty draws at scale 2 were all exact"
        );
    }
}
