//! Drawing releases: the full domain of each marginal from the policy, aggregation of raw cells,
//! noise through `dp`, and post-processing into numbers a leader can read.
//!
//! # Post-processing (free under DP: it only reads noisy values)
//!
//! 1. **One total per organisation-period.** Every contacts marginal released for the period,
//!    and every finer release of this organisation that tiles the period (say the three monthly
//!    totals inside a quarter), is an unbiased estimate of the organisation's total. They are
//!    combined with inverse-variance weights into one estimate `T`, rounded to a non-negative
//!    integer.
//! 2. **Consistency.** Each marginal's noisy cells are moved to sum to `T` by generalised least
//!    squares (each cell absorbs a share of the gap proportional to its noise variance), then
//!    projected onto the non-negative cells that still sum to `T` (Euclidean projection onto
//!    the scaled simplex), then rounded to integers by largest remainder, keeping the sum.
//! 3. **Intervals.** `noisy_ci` is `noisy ± h`, where `h` comes from OpenDP's accuracy helper
//!    for the cell's noise scale: the true count lies inside with probability at least 95%.
//!    `ci` is the estimate's interval. Before rounding and the non-negativity projection, a
//!    contacts cell's estimate is linear in the noisy values: `L = y + (T* - S)·v/V`, with `y`
//!    the cell's noisy value and `v` its variance, `S` and `V` its marginal's noisy sum and
//!    variance, and `T*` the unrounded combined total, in which the marginal has weight
//!    `c = (1/V) / Σ(1/Vₖ)`. Its error is `α·z + R`: the cell's own noise `z` with
//!    `α = 1 - (1 - c)·v/V`, and a weighted sum `R` of every other noisy cell, independent of
//!    `z`, with variance `v·(1 - (1 - c)·v/V) - α²·v`. The half-width is the smallest `h` with
//!    `P(|α·z + R| ≤ h) ≥ 95%`, taking `z` exactly from its discrete distribution and `R` as
//!    normal (`dp::estimate_half_width`): a normal approximation, not a bound, but one that
//!    keeps the heavy Laplace tail of the dominant term, so coverage is 95% within a point
//!    (checked over simulated periods with real noise in `tests/it/statistics.rs`). `ci` is
//!    the integers in `L ± h`, cut at 0 below (true counts are never negative, so coverage is
//!    unchanged), then widened to include the published `estimate` where rounding, clamping or
//!    the projection moved it out. A load cell's estimate is its clipped noisy value, so its
//!    `ci` is `noisy_ci` cut at 0 and widened the same way.
//! 4. **Suppression.** A cell whose estimate is below the policy's `suppress_below` is flagged
//!    `suppressed` and shown as "<N". The decision reads only noisy values; suppressing on true
//!    counts would leak them by subtraction.
//! 5. **Supporter load.** Active and loaded supporter-periods are clipped at zero and made
//!    ordered (loaded never exceeds active) by averaging when they cross.
//!
//! The unbiased `noisy` value is kept beside every `estimate` for researchers.
//!
//! Pure functions over data handed in; the caller reads the store and writes the results. Must
//! not depend on storage, HTTP or tokio.

use std::collections::{BTreeMap, BTreeSet};

use crate::domain::{CellKey, LedgerEntry, Period, Release, ReleaseCell};
use crate::dp::{self, Calibration, DpError, NoiseSource};
use crate::policy::{Axis, Marginal, MarginalKind, Org, Policy};

/// The cell keys of a load release.
pub const LOAD_ACTIVE: &str = "active";
/// The cell key of supporters at or above the load threshold.
pub const LOAD_AT_THRESHOLD: &str = "at_or_above_threshold";
/// The breakdown name of a load release's cells.
pub const LOAD_AXIS: &str = "supporters";

/// The id of a release.
pub fn release_id(period: Period, org: &str, marginal: &str) -> String {
    format!("{period}/{org}/{marginal}")
}

/// The base periods (of granularity `base`) that make up `period`; a week belongs to the
/// period of its Thursday.
pub fn base_periods_in(period: Period, base: crate::domain::Granularity) -> Vec<Period> {
    let g = period.granularity();
    let mut p = Period::containing(base, period.start());
    if p.within(g) != period {
        p = p.next();
    }
    let mut out = Vec::new();
    while p.within(g) == period {
        out.push(p);
        p = p.next();
    }
    out
}

/// One cell of a marginal's domain, and whether it is a sensitive value's cell.
#[derive(Debug, Clone)]
pub struct DomainCell {
    /// Breakdown name to value id.
    pub key: BTreeMap<String, String>,
    /// Whether stronger protection applies.
    pub sensitive: bool,
}

/// Every cell of `m` for `org`, from the policy alone: which cells exist never depends on data.
pub fn domain(policy: &Policy, org: &Org, m: &Marginal) -> Vec<DomainCell> {
    let axes = match &m.kind {
        MarginalKind::SupporterLoad => {
            return [LOAD_ACTIVE, LOAD_AT_THRESHOLD]
                .iter()
                .map(|v| DomainCell {
                    key: [(LOAD_AXIS.to_string(), v.to_string())].into(),
                    sensitive: false,
                })
                .collect();
        }
        MarginalKind::Contacts(axes) => axes,
    };
    let mut cells = vec![DomainCell {
        key: BTreeMap::new(),
        sensitive: false,
    }];
    for (axis, name) in axes.iter().zip(&m.axis_names) {
        let values: Vec<(String, bool)> = match axis {
            Axis::Unit => org.units.iter().map(|u| (u.id.clone(), false)).collect(),
            Axis::Dim(i) => policy.dimensions[*i]
                .values
                .iter()
                .map(|v| (v.id.clone(), v.sensitive))
                .collect(),
            Axis::Group(i) => policy.dimensions[*i]
                .groups
                .iter()
                .map(|g| (g.id.clone(), false))
                .collect(),
        };
        cells = cells
            .into_iter()
            .flat_map(|c| {
                values.iter().map(move |(v, s)| {
                    let mut key = c.key.clone();
                    key.insert(name.clone(), v.clone());
                    DomainCell {
                        key,
                        sensitive: c.sensitive || *s,
                    }
                })
            })
            .collect();
    }
    cells
}

/// The coordinates of raw cell `c` in marginal `m` (contacts marginals only).
fn project(
    policy: &Policy,
    m: &Marginal,
    axes: &[Axis],
    c: &CellKey,
) -> Option<BTreeMap<String, String>> {
    let mut key = BTreeMap::new();
    for (axis, name) in axes.iter().zip(&m.axis_names) {
        let v = match axis {
            Axis::Unit => c.unit.clone(),
            Axis::Dim(i) => c.tags.get(&policy.dimensions[*i].id)?.clone(),
            Axis::Group(i) => {
                let d = &policy.dimensions[*i];
                d.value(c.tags.get(&d.id)?)?.group.clone()?
            }
        };
        key.insert(name.clone(), v);
    }
    Some(key)
}

/// True counts of `m` over its domain, from raw cells of `org` (any periods handed in).
pub fn true_counts(
    policy: &Policy,
    org: &Org,
    m: &Marginal,
    raw: &[(CellKey, u64)],
    supporters: &[u32],
    dom: &[DomainCell],
) -> Vec<i64> {
    let mut counts = vec![0i64; dom.len()];
    match &m.kind {
        MarginalKind::SupporterLoad => {
            let t = policy.thresholds.load_contacts_per_period;
            counts[0] = supporters.iter().filter(|&&n| n > 0).count() as i64;
            counts[1] = supporters.iter().filter(|&&n| n >= t).count() as i64;
        }
        MarginalKind::Contacts(axes) => {
            let index: BTreeMap<&BTreeMap<String, String>, usize> =
                dom.iter().enumerate().map(|(i, c)| (&c.key, i)).collect();
            for (cell, n) in raw.iter().filter(|(c, _)| c.org == org.id) {
                // A raw cell whose value left the policy since it was logged has no place in
                // the domain; it is left out rather than invented a cell for.
                if let Some(i) = project(policy, m, axes, cell).and_then(|k| index.get(&k).copied())
                {
                    counts[i] += *n as i64;
                }
            }
        }
    }
    counts
}

/// Largest-remainder rounding of non-negative reals to integers with the given sum.
fn round_to_sum(x: &[f64], total: u64) -> Vec<u64> {
    let mut out: Vec<u64> = x.iter().map(|v| v.max(0.0).floor() as u64).collect();
    let assigned: u64 = out.iter().sum();
    let mut rest = total.saturating_sub(assigned);
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| {
        (x[b] - x[b].floor())
            .total_cmp(&(x[a] - x[a].floor()))
            .then(a.cmp(&b))
    });
    for &i in order.iter().cycle().take(x.len() * 2) {
        if rest == 0 {
            break;
        }
        out[i] += 1;
        rest -= 1;
    }
    out
}

/// Euclidean projection of `x` onto `{y >= 0, sum y = total}` (Duchi et al. 2008).
fn project_simplex(x: &[f64], total: f64) -> Vec<f64> {
    if x.is_empty() {
        return Vec::new();
    }
    if total <= 0.0 {
        return vec![0.0; x.len()];
    }
    let mut u = x.to_vec();
    u.sort_by(|a, b| b.total_cmp(a));
    let (mut cum, mut lambda) = (0.0, 0.0);
    for (j, v) in u.iter().enumerate() {
        cum += v;
        let l = (cum - total) / (j as f64 + 1.0);
        if v - l > 0.0 {
            lambda = l;
        }
    }
    x.iter().map(|v| (v - lambda).max(0.0)).collect()
}

/// Fits noisy cells with noise variances `var` to a non-negative integer vector summing to
/// `total` (steps 2 of the module doc).
pub fn fit_to_total(noisy: &[i64], var: &[f64], total: u64) -> Vec<u64> {
    let sum: f64 = noisy.iter().map(|&v| v as f64).sum();
    let var_sum: f64 = var.iter().sum();
    let gap = total as f64 - sum;
    let moved: Vec<f64> = noisy
        .iter()
        .zip(var)
        .map(|(&y, &v)| {
            y as f64
                + if var_sum > 0.0 {
                    gap * v / var_sum
                } else {
                    gap / noisy.len() as f64
                }
        })
        .collect();
    round_to_sum(&project_simplex(&moved, total as f64), total)
}

/// An unbiased estimate of a total and its variance.
#[derive(Debug, Clone, Copy)]
struct Estimate {
    value: f64,
    variance: f64,
}

/// The estimate's interval: the integers in `linear ± h`, cut at 0 below, widened to include
/// the published `estimate` (module doc, step 3).
fn estimate_interval(linear: f64, h: f64, estimate: u64) -> [i64; 2] {
    let est = i64::try_from(estimate).unwrap_or(i64::MAX);
    let lo = (linear - h).ceil() as i64;
    let hi = (linear + h).floor() as i64;
    [lo.min(est).max(0), hi.max(est)]
}

/// Combines independent unbiased estimates by inverse-variance weighting.
fn combine(estimates: &[Estimate]) -> f64 {
    if let Some(exact) = estimates.iter().find(|e| e.variance <= 0.0) {
        return exact.value;
    }
    let w: f64 = estimates.iter().map(|e| 1.0 / e.variance).sum();
    estimates.iter().map(|e| e.value / e.variance).sum::<f64>() / w
}

/// Everything one batch (one organisation, one period, the marginals of that cadence) needs.
pub struct BatchInput<'a> {
    /// The policy.
    pub policy: &'a Policy,
    /// The organisation.
    pub org: &'a Org,
    /// The release period.
    pub period: Period,
    /// Its base periods (those since the service started collecting).
    pub covers: Vec<Period>,
    /// The marginals released at this cadence.
    pub marginals: Vec<&'a Marginal>,
    /// Raw cells of the covered base periods.
    pub raw: &'a [(CellKey, u64)],
    /// Each supporter's contacts in each covered base period (no pseudonyms).
    pub supporters: &'a [u32],
    /// Releases of this organisation already drawn for finer periods inside `period`.
    pub finer: &'a [Release],
}

/// The noise of one marginal: ordinary cells, cells of sensitive values (if they get a larger
/// scale), and what a release spends.
pub struct MarginalNoise {
    /// Calibration of ordinary cells.
    pub plain: Calibration,
    /// Calibration of sensitive cells, if the policy gives them more noise.
    pub sensitive: Option<Calibration>,
    /// The ε (or ρ) a release spends, from OpenDP's map. A privacy unit's worst case is all its
    /// weight in ordinary cells (the smaller scale), so their calibration bounds the release;
    /// a marginal of sensitive cells only spends theirs.
    pub spend: f64,
}

/// Calibrates marginal `m` over its domain `dom`: the one place that decides scales and spend,
/// used by the budget check before drawing and by the draw itself.
pub fn calibrate_marginal(
    policy: &Policy,
    m: &Marginal,
    dom: &[DomainCell],
) -> Result<MarginalNoise, DpError> {
    let (mech, sens, budget) = (
        policy.privacy.mechanism,
        policy.sensitivity(m),
        policy.release_budget(m),
    );
    let multiplier = policy.privacy.sensitive_noise_multiplier;
    let plain = dp::calibrate(mech, sens, budget, 1.0)?;
    let sensitive = if multiplier > 1.0 && dom.iter().any(|c| c.sensitive) {
        Some(dp::calibrate(mech, sens, budget, multiplier)?)
    } else {
        None
    };
    let all_sensitive = sensitive.is_some() && dom.iter().all(|c| c.sensitive);
    let spend = match (&sensitive, all_sensitive) {
        (Some(s), true) => s.spend,
        _ => plain.spend,
    };
    Ok(MarginalNoise {
        plain,
        sensitive,
        spend,
    })
}

/// The ε (or ρ) one release of `m` for `org` spends, as OpenDP's privacy map returns it.
pub fn release_spend(policy: &Policy, org: &Org, m: &Marginal) -> Result<f64, DpError> {
    Ok(calibrate_marginal(policy, m, &domain(policy, org, m))?.spend)
}

/// Draws and post-processes one batch. Returns the releases with their ledger entries.
/// Builds OpenDP measurements: call from a blocking thread.
pub fn draw_batch(
    input: &BatchInput<'_>,
    noise: &dyn NoiseSource,
) -> Result<Vec<(Release, LedgerEntry)>, DpError> {
    let p = input.policy;
    struct Drawn<'m> {
        m: &'m Marginal,
        dom: Vec<DomainCell>,
        noisy: Vec<i64>,
        var: Vec<f64>,
        half: Vec<i64>,
        sensitive: Vec<bool>,
        cal: Calibration,
        sens_cal: Option<Calibration>,
        spend: f64,
    }
    impl Drawn<'_> {
        /// The calibration cell `i` was drawn with.
        fn cal_of(&self, i: usize) -> &Calibration {
            match (&self.sens_cal, self.sensitive[i]) {
                (Some(s), true) => s,
                _ => &self.cal,
            }
        }
    }
    let mut drawn = Vec::new();
    for m in &input.marginals {
        let dom = domain(p, input.org, m);
        let truth = true_counts(p, input.org, m, input.raw, input.supporters, &dom);
        let MarginalNoise {
            plain: cal,
            sensitive: sens_cal,
            spend,
        } = calibrate_marginal(p, m, &dom)?;
        // Noise for ordinary and sensitive cells is drawn separately, each at its own scale.
        let sensitive: Vec<bool> = dom
            .iter()
            .map(|c| c.sensitive && sens_cal.is_some())
            .collect();
        let (plain_idx, sens_idx): (Vec<usize>, Vec<usize>) =
            (0..dom.len()).partition(|&i| !sensitive[i]);
        let mut noisy = vec![0i64; dom.len()];
        for (idx, c) in [
            (&plain_idx, &cal),
            (&sens_idx, sens_cal.as_ref().unwrap_or(&cal)),
        ] {
            if idx.is_empty() {
                continue;
            }
            let values: Vec<i64> = idx.iter().map(|&i| truth[i]).collect();
            for (&i, v) in idx.iter().zip(noise.add_noise(c, &values)?) {
                noisy[i] = v;
            }
        }
        let mut d = Drawn {
            m,
            dom,
            noisy,
            var: Vec::new(),
            half: Vec::new(),
            sensitive,
            cal,
            sens_cal,
            spend,
        };
        let cells = 0..d.dom.len();
        d.var = cells.clone().map(|i| d.cal_of(i).variance).collect();
        d.half = cells.map(|i| d.cal_of(i).ci_half_width).collect();
        drawn.push(d);
    }

    // Step 1: one total for the organisation-period.
    let mut estimates: Vec<Estimate> = drawn
        .iter()
        .filter(|d| matches!(d.m.kind, MarginalKind::Contacts(_)))
        .map(|d| Estimate {
            value: d.noisy.iter().sum::<i64>() as f64,
            variance: d.var.iter().sum(),
        })
        .collect();
    let want: BTreeSet<Period> = input.covers.iter().copied().collect();
    let mut by_marginal: BTreeMap<&str, Vec<&Release>> = BTreeMap::new();
    for r in input
        .finer
        .iter()
        .filter(|r| r.kind == "contacts" && r.period != input.period)
    {
        by_marginal.entry(r.marginal.as_str()).or_default().push(r);
    }
    for releases in by_marginal.values() {
        let covered: Vec<Period> = releases
            .iter()
            .flat_map(|r| r.covers.iter().copied())
            .collect();
        let set: BTreeSet<Period> = covered.iter().copied().collect();
        if set == want && covered.len() == set.len() {
            estimates.push(Estimate {
                value: releases
                    .iter()
                    .flat_map(|r| &r.cells)
                    .map(|c| c.noisy as f64)
                    .sum(),
                variance: releases.iter().map(|r| r.noise_variance).sum(),
            });
        }
    }
    let combined = if estimates.is_empty() {
        0.0
    } else {
        combine(&estimates)
    };
    let total = combined.round().max(0.0) as u64;
    // Sum of the inverse variances: a marginal's weight in `combined` is (1/V) / this.
    let weight_sum: f64 = estimates.iter().map(|e| 1.0 / e.variance).sum();

    let mut out = Vec::new();
    for d in drawn {
        let estimate: Vec<u64> = match d.m.kind {
            MarginalKind::Contacts(_) => fit_to_total(&d.noisy, &d.var, total),
            MarginalKind::SupporterLoad => {
                let (a, l) = (d.noisy[0].max(0) as u64, d.noisy[1].max(0) as u64);
                if l > a {
                    let mid = (a + l).div_ceil(2);
                    vec![mid, mid]
                } else {
                    vec![a, l]
                }
            }
        };
        let ci: Vec<[i64; 2]> = match d.m.kind {
            MarginalKind::Contacts(_) => {
                let sum = d.noisy.iter().sum::<i64>() as f64;
                let var_sum: f64 = d.var.iter().sum();
                let own_weight = if weight_sum.is_finite() && var_sum > 0.0 {
                    (1.0 / var_sum) / weight_sum
                } else {
                    1.0
                };
                // Cells of one scale share their half-width: compute it once per scale.
                let mut halves: Vec<(f64, f64)> = Vec::new();
                (0..d.noisy.len())
                    .map(|i| {
                        let v = d.var[i];
                        let share = if var_sum > 0.0 { v / var_sum } else { 0.0 };
                        let linear = d.noisy[i] as f64 + (combined - sum) * share;
                        let h = match halves.iter().find(|(w, _)| *w == v) {
                            Some(&(_, h)) => h,
                            None => {
                                let own = 1.0 - (1.0 - own_weight) * share;
                                let err_var = v * (1.0 - (1.0 - own_weight) * share);
                                let h = dp::estimate_half_width(
                                    d.cal_of(i),
                                    own,
                                    err_var - own * own * v,
                                );
                                halves.push((v, h));
                                h
                            }
                        };
                        estimate_interval(linear, h, estimate[i])
                    })
                    .collect()
            }
            MarginalKind::SupporterLoad => (0..d.noisy.len())
                .map(|i| {
                    let (y, h) = (d.noisy[i] as f64, d.half[i] as f64);
                    estimate_interval(y, h, estimate[i])
                })
                .collect(),
        };
        let cells = d
            .dom
            .iter()
            .enumerate()
            .map(|(i, c)| ReleaseCell {
                key: c.key.clone(),
                noisy: d.noisy[i],
                estimate: estimate[i],
                ci: ci[i],
                noisy_ci: [d.noisy[i] - d.half[i], d.noisy[i] + d.half[i]],
                suppressed: estimate[i] < u64::from(p.privacy.suppress_below),
            })
            .collect();
        let id = release_id(input.period, &input.org.id, &d.m.id);
        let measure = p.privacy.mechanism.measure();
        let is_eps = measure == "epsilon";
        let release = Release {
            id: id.clone(),
            period: input.period,
            org: input.org.id.clone(),
            marginal: d.m.id.clone(),
            kind: match d.m.kind {
                MarginalKind::Contacts(_) => "contacts".into(),
                MarginalKind::SupporterLoad => "supporter_load".into(),
            },
            dimensions: match d.m.kind {
                MarginalKind::Contacts(_) => d.m.axis_names.clone(),
                MarginalKind::SupporterLoad => vec![LOAD_AXIS.to_string()],
            },
            covers: input.covers.clone(),
            mechanism: p.privacy.mechanism.as_str().into(),
            privacy_unit: p.privacy.unit.as_str().into(),
            epsilon: is_eps.then_some(d.spend),
            rho: (!is_eps).then_some(d.spend),
            sensitivity: d.cal.sensitivity,
            scale: d.cal.scale,
            sensitive_scale: d.sens_cal.map(|c| c.scale),
            confidence: dp::CONFIDENCE,
            suppress_below: p.privacy.suppress_below,
            total_estimate: total,
            noise_variance: d.var.iter().sum(),
            cells,
        };
        let entry = LedgerEntry {
            release: id,
            org: input.org.id.clone(),
            marginal: d.m.id.clone(),
            period: input.period,
            covers: input.covers.clone(),
            measure: measure.into(),
            spend: d.spend,
        };
        out.push((release, entry));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Granularity;

    #[test]
    fn fitting_keeps_the_total_and_never_goes_negative() {
        let cases: [(&[i64], u64); 5] = [
            (&[-3, 5, 2, 0], 5),
            (&[10, 10, 10], 20),
            (&[0, 0, 0], 0),
            (&[-5, -5], 3),
            (&[7, -1, 2, 1, 0, 0], 9),
        ];
        for (noisy, total) in cases {
            let var = vec![1.0; noisy.len()];
            let fit = fit_to_total(noisy, &var, total);
            assert_eq!(fit.iter().sum::<u64>(), total, "{noisy:?}");
            assert_eq!(fit.len(), noisy.len());
        }
        // Exact values that already sum to the total stay put.
        assert_eq!(fit_to_total(&[3, 0, 4], &[2.0, 2.0, 2.0], 7), vec![3, 0, 4]);
    }

    #[test]
    fn base_periods_tile_their_release_period() {
        let q: Period = "2026-Q4".parse().unwrap();
        let months: Vec<String> = base_periods_in(q, Granularity::Month)
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(months, ["2026-10", "2026-11", "2026-12"]);
        let weeks = base_periods_in("2026".parse().unwrap(), Granularity::Week);
        assert_eq!(weeks.len(), 53);
        assert_eq!(weeks[0].to_string(), "2026-W01");
        let weeks = base_periods_in("2027-01".parse().unwrap(), Granularity::Week);
        assert_eq!(weeks[0].to_string(), "2027-W01");
        assert_eq!(weeks.len(), 4);
    }

    #[test]
    fn the_domain_comes_from_the_policy_with_sensitive_cells_marked() {
        let p = Policy::builtin();
        let org = p.org("helse-vestfjord").unwrap();
        let d = domain(&p, org, p.marginal("unit").unwrap());
        assert_eq!(d.len(), org.units.len());
        let d = domain(&p, org, p.marginal("utlosende_arsak").unwrap());
        assert_eq!(d.len(), 9);
        assert_eq!(d.iter().filter(|c| c.sensitive).count(), 3);
        assert_eq!(domain(&p, org, p.marginal("total").unwrap()).len(), 1);
    }
}
