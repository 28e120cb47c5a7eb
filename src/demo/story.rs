//! What the demo's released numbers say, in a leader's words: each organisation's trend, the
//! units' spikes, and units with probably less uptake than the rest, and the privacy spent.
//!
//! Reads releases and the ledger only, never the simulation's truth nor raw cells, so what it
//! prints is what any reader of the releases could work out. Every statement is a 95% one
//! ("probably"), or says that the noise is larger than the difference ("too few to say").
//! The rules follow the policy's thresholds (`spike_ratio`, `spike_min_expected`,
//! `no_uptake_min_headcount`) and count the noise in the spread.

use crate::domain::{Period, Release};
use crate::service::{Principal, Service, ServiceError};

/// Released months compared at each end of an organisation's history for its trend.
pub const TREND_MONTHS: usize = 10;

/// z for a two-sided 95% interval.
const Z_TWO_SIDED: f64 = 1.959_964;
/// z for a one-sided 95% bound.
const Z_ONE_SIDED: f64 = 1.644_854;

/// Which way an organisation's contacts moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The whole 95% interval of the change is above zero.
    ProbablyRose,
    /// The whole 95% interval of the change is below zero.
    ProbablyFell,
    /// The interval holds zero: the noise is larger than the change.
    TooFewToSay,
}

/// One thing the released numbers say, with the released numbers it rests on.
#[derive(Debug, Clone, PartialEq)]
pub enum Finding {
    /// Contacts per month in the first and last [`TREND_MONTHS`] released months of an
    /// organisation, from the unbiased noisy monthly totals and their noise variances.
    Trend {
        /// Organisation id.
        org: String,
        /// First and last month of the early stretch.
        early: (Period, Period),
        /// First and last month of the late stretch.
        late: (Period, Period),
        /// Contacts per month, early and late.
        per_month: (f64, f64),
        /// The change per month: estimate and 95% interval.
        change: [f64; 3],
        /// What it says.
        direction: Direction,
    },
    /// A unit's quarter whose whole 95% interval lies above `spike_ratio` times the top of a
    /// usual quarter's interval (the median of its other quarters' `ci[1]`, counted as at
    /// least `spike_min_expected`): the noise counts in the spread, so a quarter that is only
    /// noisy is not called a spike.
    Spike {
        /// Organisation id.
        org: String,
        /// Unit id.
        unit: String,
        /// The quarter.
        period: Period,
        /// The released estimate.
        estimate: u64,
        /// The released 95% interval.
        ci: [i64; 2],
        /// The median of the top of the unit's other quarters' intervals.
        usual: f64,
        /// What the interval is above.
        threshold: f64,
    },
    /// A unit (at least `no_uptake_min_headcount` employees) whose one-sided 95% upper bound
    /// over the fully released quarters is below what the rest of the organisation's rate per
    /// employee would give it. Judged only where that expectation is at least twice the
    /// one-sided margin (1.645 σ): below that, even a silent unit could not be told from a busy
    /// one. The bounds of all judged units hold together at 95% (Bonferroni: each at
    /// 1 - 0.05/k), so a false "probably" about any of them has at most a 5% chance.
    LessUptake {
        /// Organisation id.
        org: String,
        /// Unit id.
        unit: String,
        /// First and last quarter counted.
        quarters: (Period, Period),
        /// One-sided upper bound of its contacts (noisy sum + z·σ; 95% for all judged units).
        at_most: f64,
        /// Its headcount times the rest of the organisation's estimates per employee (spike
        /// quarters left out).
        expected: f64,
    },
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The released cell of `unit` in a unit release.
fn unit_cell<'a>(r: &'a Release, unit: &str) -> Option<&'a crate::domain::ReleaseCell> {
    r.cells
        .iter()
        .find(|c| c.key.get("unit").map(String::as_str) == Some(unit))
}

/// What the released numbers say about each organisation: its trend, the units' spikes, and
/// units with probably less uptake than the rest. Reads releases only.
pub fn story(svc: &Service) -> Result<Vec<Finding>, ServiceError> {
    let p = svc.policy();
    let th = &p.thresholds;
    let all = svc.store().releases("")?;
    let mut out = Vec::new();
    for org in &p.orgs {
        let mut months: Vec<&Release> = all
            .iter()
            .filter(|r| r.org == org.id && r.kind == "contacts" && r.dimensions.is_empty())
            .filter(|r| r.period.granularity() == p.granularity)
            .collect();
        months.sort_by_key(|r| r.period);
        let n = TREND_MONTHS.min(months.len() / 2);
        if n > 0 {
            let (early, late) = (&months[..n], &months[months.len() - n..]);
            let sum = |rs: &[&Release]| -> (f64, f64) {
                (
                    rs.iter()
                        .flat_map(|r| &r.cells)
                        .map(|c| c.noisy as f64)
                        .sum(),
                    rs.iter().map(|r| r.noise_variance).sum(),
                )
            };
            let ((s1, v1), (s2, v2)) = (sum(early), sum(late));
            let k = n as f64;
            let change = (s2 - s1) / k;
            let half = Z_TWO_SIDED * (v1 + v2).sqrt() / k;
            let direction = if change - half > 0.0 {
                Direction::ProbablyRose
            } else if change + half < 0.0 {
                Direction::ProbablyFell
            } else {
                Direction::TooFewToSay
            };
            out.push(Finding::Trend {
                org: org.id.clone(),
                early: (early[0].period, early[n - 1].period),
                late: (late[0].period, late[n - 1].period),
                per_month: (s1 / k, s2 / k),
                change: [change, change - half, change + half],
                direction,
            });
        }

        let mut quarters: Vec<&Release> = all
            .iter()
            .filter(|r| r.org == org.id && r.kind == "contacts" && r.dimensions == ["unit"])
            .collect();
        quarters.sort_by_key(|r| r.period);
        let mut spikes = Vec::new();
        for u in &org.units {
            let cells: Vec<(&Release, &crate::domain::ReleaseCell)> = quarters
                .iter()
                .filter_map(|r| Some((*r, unit_cell(r, &u.id)?)))
                .collect();
            if cells.len() < 3 {
                continue;
            }
            for (i, (r, c)) in cells.iter().enumerate() {
                let usual = median(
                    cells
                        .iter()
                        .enumerate()
                        .filter(|(j, _)| *j != i)
                        .map(|(_, (_, c))| c.ci[1] as f64)
                        .collect(),
                );
                let threshold = th.spike_ratio * usual.max(th.spike_min_expected);
                if c.ci[0] as f64 > threshold {
                    spikes.push(Finding::Spike {
                        org: org.id.clone(),
                        unit: u.id.clone(),
                        period: r.period,
                        estimate: c.estimate,
                        ci: c.ci,
                        usual,
                        threshold,
                    });
                }
            }
        }
        // A spike is not the usual rate: spike cells stay out of the rest's rate below.
        let spiked: Vec<(String, Period)> = spikes
            .iter()
            .filter_map(|f| match f {
                Finding::Spike { unit, period, .. } => Some((unit.clone(), *period)),
                _ => None,
            })
            .collect();
        out.extend(spikes);

        // Quarters released in full: a quarter before the service started has fewer months.
        let full: Vec<&Release> = quarters
            .iter()
            .copied()
            .filter(|r| {
                r.covers.len() == crate::release::base_periods_in(r.period, p.granularity).len()
            })
            .collect();
        let (Some(first), Some(last)) = (full.first(), full.last()) else {
            continue;
        };
        let headcount: u32 = org.units.iter().map(|u| u.headcount).sum();
        // Per unit: its noisy sum and noise variance, and what the rest's rate would give it.
        let mut judged = Vec::new();
        for u in org
            .units
            .iter()
            .filter(|u| u.headcount >= th.no_uptake_min_headcount && u.headcount < headcount)
        {
            let (mut noisy, mut var, mut rest) = (0.0, 0.0, 0.0);
            for r in &full {
                // The unit marginal has no sensitive cells: every cell has the same variance.
                var += r.noise_variance / r.cells.len().max(1) as f64;
                for c in &r.cells {
                    let Some(id) = c.key.get("unit") else {
                        continue;
                    };
                    if id == &u.id {
                        noisy += c.noisy as f64;
                    } else if !spiked.contains(&(id.clone(), r.period)) {
                        rest += c.estimate as f64;
                    }
                }
            }
            let expected = rest * f64::from(u.headcount) / f64::from(headcount - u.headcount);
            // Judged only where the expected count makes it meaningful: where even a silent
            // unit's bound (noisy sum 0) would be at most half of what is expected.
            if expected >= 2.0 * Z_ONE_SIDED * var.sqrt() {
                judged.push((u, noisy, var, expected));
            }
        }
        // One-sided bounds held at 95% for all judged units together (Bonferroni).
        let z = if judged.len() > 1 {
            std::f64::consts::SQRT_2
                * statrs::function::erf::erfc_inv(2.0 * 0.05 / judged.len() as f64)
        } else {
            Z_ONE_SIDED
        };
        for (u, noisy, var, expected) in judged {
            let at_most = noisy + z * var.sqrt();
            if at_most < expected {
                out.push(Finding::LessUptake {
                    org: org.id.clone(),
                    unit: u.id.clone(),
                    quarters: (first.period, last.period),
                    at_most,
                    expected,
                });
            }
        }
    }
    Ok(out)
}

/// The findings in a leader's words, one line each, with a line saying so where the numbers
/// are too few to say anything about spikes or units' uptake.
pub fn render(policy: &crate::policy::Policy, findings: &[Finding]) -> String {
    let org_name = |id: &str| policy.org(id).map_or(id.to_string(), |o| o.name.clone());
    let unit_name = |org: &str, unit: &str| {
        policy
            .org(org)
            .and_then(|o| o.units.iter().find(|u| u.id == unit))
            .map_or(unit.to_string(), |u| u.name.clone())
    };
    let mut out = String::from(
        "What the released numbers say (each \"probably\" is a 95% statement, wrong about 1 time in 20; \"too few to say\" means the noise is larger than the difference):\n",
    );
    for f in findings {
        let line = match f {
            Finding::Trend {
                org,
                early,
                late,
                per_month,
                change,
                direction,
            } => {
                let what = match direction {
                    Direction::ProbablyRose => "contacts probably rose".to_string(),
                    Direction::ProbablyFell => "contacts probably fell".to_string(),
                    Direction::TooFewToSay => "too few to say whether contacts changed".to_string(),
                };
                format!(
                    "{}: {what}: {:.1} a month in {}–{}, {:.1} a month in {}–{} (change {:+.1} a month, 95% interval {:+.1} to {:+.1}).",
                    org_name(org),
                    // The noisy sums are unbiased and may dip below zero; a count is not shown so.
                    per_month.0.max(0.0),
                    early.0,
                    early.1,
                    per_month.1.max(0.0),
                    late.0,
                    late.1,
                    change[0],
                    change[1],
                    change[2]
                )
            }
            Finding::Spike {
                org,
                unit,
                period,
                estimate,
                ci,
                usual,
                threshold,
            } => {
                format!(
                    "{}, {period}: probably a spike: {estimate} contacts (95% interval {}–{}), all of it above {threshold:.0}, twice the most a usual quarter's interval allows ({usual:.0}).",
                    unit_name(org, unit),
                    ci[0],
                    ci[1]
                )
            }
            Finding::LessUptake {
                org,
                unit,
                quarters,
                at_most,
                expected,
            } => format!(
                "{}: probably less uptake than the rest of {}: at most {at_most:.0} contacts in {}–{} (95%), where the rest's rate would give about {expected:.0}.",
                unit_name(org, unit),
                org_name(org),
                quarters.0,
                quarters.1
            ),
        };
        out.push_str("  ");
        out.push_str(&line);
        out.push('\n');
    }
    if !findings.iter().any(|f| matches!(f, Finding::Spike { .. })) {
        out.push_str("  No unit's quarter is probably a spike.\n");
    }
    if !findings
        .iter()
        .any(|f| matches!(f, Finding::LessUptake { .. }))
    {
        out.push_str("  Uptake by unit: too few to say that any unit is below the rest.\n");
    }
    out
}

/// What the releases have spent of the privacy budget, per organisation, for people: the
/// most any base period carries against the budget, and the most any 365 days carry against
/// the rolling-year cap, as `GET /api/v1/budget` reports them, with figures rounded by
/// [`crate::plan::privacy_figure`]. Reads the ledger only.
pub fn privacy_summary(svc: &Service) -> Result<String, ServiceError> {
    let p = svc.policy();
    let fig = crate::plan::privacy_figure;
    let measure = p.privacy.mechanism.measure();
    // The demo reads as a researcher would: every organisation's ledger.
    let reader = Principal {
        token_id: "demo".into(),
        role: crate::domain::Role::Researcher,
        org: None,
    };
    let budget = svc.budget(&reader)?;
    let mut out = format!(
        "Privacy spent ({measure}, budget {} per {}, rolling-year cap {}):\n",
        fig(p.privacy.budget),
        match p.privacy.unit {
            crate::policy::PrivacyUnit::Contact => "contact",
            crate::policy::PrivacyUnit::Supporter => "supporter and rolling year",
        },
        fig(p.privacy.rolling_year_cap)
    );
    for o in budget["orgs"].as_array().into_iter().flatten() {
        let most_period = o["periods"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x["spent"].as_f64())
            .fold(0.0, f64::max);
        let year = o["rolling_year"]["most_spent"].as_f64().unwrap_or(0.0);
        let name = o["org"]
            .as_str()
            .and_then(|id| p.org(id))
            .map_or(String::new(), |org| org.name.clone());
        out.push_str(&format!(
            "  {name}: at most {} on any {}, {} on any 365 days\n",
            fig(most_period),
            p.granularity.as_str(),
            fig(year)
        ));
    }
    Ok(out)
}
