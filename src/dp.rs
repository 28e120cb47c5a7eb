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
