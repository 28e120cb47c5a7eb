//! The human-readable release plan printed by `tellestrek policy check`.
//!
//! Sits beside `service`: it reads the validated policy (and, for accuracy, the `dp` module)
//! and renders text. Must not depend on storage or HTTP.

use std::fmt::Write;

use crate::dp;
use crate::policy::{MarginalKind, Policy, PrivacyUnit};

/// A privacy figure (ε, ρ, or a factor made from them) for people: three significant digits,
/// trailing zeros dropped (`0.7`, not `0.6999999993`; `13.2`; `2`; `0.0175`). Every figure the
/// CLI, the demo and the README show to people goes through here; JSON keeps OpenDP's exact
/// value. Not for values that are compared or summed again: rounding is for reading only.
pub fn privacy_figure(x: f64) -> String {
    if !x.is_finite() || x == 0.0 {
        return format!("{x}");
    }
    let magnitude = x.abs().log10().floor() as i32;
    let text = if magnitude >= 2 {
        let unit = 10f64.powi(magnitude - 2);
        format!("{:.0}", (x / unit).round() * unit)
    } else {
        format!("{:.*}", (2 - magnitude) as usize, x)
    };
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

/// The plan of `policy` as plain text: periods, caps, each marginal with its cadence, spend and
/// expected 95% error, and what protects one contact or supporter. Fails only if OpenDP cannot
/// calibrate a marginal.
pub fn describe(policy: &Policy) -> Result<String, dp::DpError> {
    let mut out = String::new();
    let p = policy;
    let measure = p.privacy.mechanism.measure();
    // Writing to a String cannot fail.
    let _ = writeln!(out, "Policy {} is valid: \"{}\"", p.source, p.name);
    let _ = writeln!(
        out,
        "  base period: {}; ticks accepted {} days after it ends; raw data deleted {} days after its last release",
        p.granularity.as_str(),
        p.grace_days,
        p.retention_days
    );
    let _ = writeln!(
        out,
        "  caps: {} contacts per request, {} per supporter per period",
        p.max_count_per_request, p.max_ticks_per_supporter_period
    );
    let _ = writeln!(
        out,
        "  {} organisations, {} units, {} tag dimensions",
        p.orgs.len(),
        p.orgs.iter().map(|o| o.units.len()).sum::<usize>(),
        p.dimensions.len()
    );
    let _ = writeln!(
        out,
        "  privacy unit: {}; mechanism: {}; budget: {measure} = {}",
        p.privacy.unit.as_str(),
        p.privacy.mechanism.as_str(),
        privacy_figure(p.privacy.budget)
    );
    let _ = writeln!(
        out,
        "\nRelease plan (expected error: the true count is within ± this of the released noisy value, 95% of the time):"
    );
    for m in &p.marginals {
        let cal = dp::calibrate(
            p.privacy.mechanism,
            p.sensitivity(m),
            p.release_budget(m),
            1.0,
        )?;
        let (what, unit) = match &m.kind {
            MarginalKind::Contacts(_) if m.axis_names.is_empty() => {
                ("organisation total".to_string(), "contacts")
            }
            MarginalKind::Contacts(_) => (
                format!("by {}", m.axis_names.join(" x ")),
                "contacts per cell",
            ),
            MarginalKind::SupporterLoad => (
                format!(
                    "supporter load: active supporters, and those with {}+ contacts in a {}",
                    p.thresholds.load_contacts_per_period,
                    p.granularity.as_str()
                ),
                "supporter-periods",
            ),
        };
        let _ = writeln!(
            out,
            "  {:<16} every {:<7} ±{:<4} {unit:<18} {measure} {} per release (OpenDP), sensitivity {}; {what}",
            m.id,
            m.cadence.as_str(),
            cal.ci_half_width,
            privacy_figure(cal.spend),
            p.sensitivity(m)
        );
        let sensitive = matches!(&m.kind, MarginalKind::Contacts(axes) if axes.iter().any(|a| matches!(a, crate::policy::Axis::Dim(i) if p.dimensions[*i].values.iter().any(|v| v.sensitive))));
        if sensitive && p.privacy.sensitive_noise_multiplier > 1.0 {
            let s = dp::calibrate(
                p.privacy.mechanism,
                p.sensitivity(m),
                p.release_budget(m),
                p.privacy.sensitive_noise_multiplier,
            )?;
            let _ = writeln!(
                out,
                "  {:<16}               ±{:<4} for sensitive values ({measure} {}: stronger protection)",
                "",
                s.ci_half_width,
                privacy_figure(s.spend)
            );
        }
    }
    let _ = writeln!(out, "{}", dashboard_coverage(p));
    let spend = p.planned_spend();
    let _ = writeln!(out);
    let k = p.privacy.typical_contacts_per_person;
    match (p.privacy.unit, p.privacy.mechanism.measure()) {
        (PrivacyUnit::Contact, "epsilon") => {
            let _ = writeln!(
                out,
                "One contact is protected at epsilon = {}: the sum over every release that includes it (disjoint periods compose in parallel); a person with {k} conversations at {} (group privacy).",
                privacy_figure(spend),
                privacy_figure(spend * f64::from(k))
            );
            let _ = writeln!(
                out,
                "In plain words: whatever else is known, all releases together make it at most {} times more (or less) likely that any one conversation was logged than if it had not been.",
                privacy_figure(spend.exp())
            );
            let _ = writeln!(
                out,
                "A person with a conversation every {} for a year is protected at {} x {} = {} (group privacy); the ledger refuses any release that would take what the releases covering any 365 days spend past the rolling-year cap of {}.",
                p.granularity.as_str(),
                p.granularity.per_year(),
                privacy_figure(spend),
                privacy_figure(spend * f64::from(p.granularity.per_year())),
                privacy_figure(p.privacy.rolling_year_cap)
            );
        }
        (PrivacyUnit::Contact, _) => {
            let _ = writeln!(
                out,
                "One contact is protected at rho = {} (zCDP), summed over every release that includes it (about epsilon = {} at delta = 1e-6); a person with {k} conversations at rho = {}.",
                privacy_figure(spend),
                privacy_figure(dp::zcdp_epsilon(spend, 1e-6)),
                privacy_figure(spend * f64::from(k * k))
            );
        }
        (PrivacyUnit::Supporter, m) => {
            let _ = writeln!(
                out,
                "One supporter active all year is protected at {m} = {} per rolling year, whatever they log (their ticks are capped at {} per {}).",
                privacy_figure(spend),
                p.max_ticks_per_supporter_period,
                p.granularity.as_str()
            );
            let eps = if m == "rho" {
                dp::zcdp_epsilon(spend, 1e-6)
            } else {
                spend
            };
            let _ = writeln!(
                out,
                "In plain words: all releases of a year together make anything about one supporter's activity at most {} times more (or less) likely than without them{}.",
                privacy_figure(eps.exp()),
                if m == "rho" {
                    format!(
                        " (epsilon about {}, except with probability 1e-6)",
                        privacy_figure(eps)
                    )
                } else {
                    String::new()
                }
            );
        }
    }
    Ok(out)
}

/// What the leaders' dashboard shows, and the breakdowns of the contacts table it reads each
/// from (`service::dashboard`); the supporter load comes from a `supporter_load` table.
const DASHBOARD_NEEDS: [(&str, &[&str]); 9] = [
    ("the monthly trend", &[]),
    ("uptake by unit", &["unit"]),
    ("the profession breakdown", &["yrkesgruppe"]),
    ("the trigger breakdown", &["utlosende_arsak"]),
    ("the initiation breakdown", &["initiering"]),
    ("the channel breakdown", &["kanal"]),
    (
        "the outreach share after serious events",
        &["utlosende_arsak", "initiering"],
    ),
    ("supporter hours", &["varighet"]),
    ("people helped (first conversations)", &["oppfolging"]),
];

/// One line on what of the dashboard the plan feeds, naming what it cannot show and the table
/// that would let it.
pub fn dashboard_coverage(p: &Policy) -> String {
    let has = |dims: &[&str]| {
        p.marginals.iter().any(|m| {
            matches!(m.kind, MarginalKind::Contacts(_))
                && m.axis_names
                    .iter()
                    .map(String::as_str)
                    .eq(dims.iter().copied())
        })
    };
    let mut missing: Vec<String> = DASHBOARD_NEEDS
        .iter()
        .filter(|(_, dims)| !has(dims))
        .map(|(what, dims)| {
            let table = if dims.is_empty() {
                "a table with no dimensions".to_string()
            } else {
                format!("a table by {}", dims.join(" x "))
            };
            format!("{what} (needs {table})")
        })
        .collect();
    if !p
        .marginals
        .iter()
        .any(|m| matches!(m.kind, MarginalKind::SupporterLoad))
    {
        missing.push("supporter load (needs a table of kind supporter_load)".into());
    }
    if missing.is_empty() {
        "\nDashboard: the plan releases every table it reads.".into()
    } else {
        format!(
            "\nDashboard: the plan has no table for {}; the dashboard leaves these out.",
            missing.join("; ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn privacy_figures_are_rounded_to_three_significant_digits_for_people() {
        for (x, shown) in [
            (0.6999999993, "0.7"),
            (0.7000000001, "0.7"),
            (2.0, "2"),
            (13.2, "13.2"),
            (14.0, "14"),
            (1.85, "1.85"),
            (5.5499999, "5.55"),
            (22.2000001, "22.2"),
            (0.017499999, "0.0175"),
            (0.15, "0.15"),
            (6.359819, "6.36"),
            (316.227766, "316"),
            (1234.5, "1230"),
            (9.9996, "10"),
            (0.0, "0"),
            (-0.123456, "-0.123"),
        ] {
            assert_eq!(privacy_figure(x), shown, "{x}");
        }
    }

    #[test]
    fn the_plan_says_what_of_the_dashboard_it_cannot_feed() {
        let p = Policy::builtin();
        assert!(
            describe(&p)
                .unwrap()
                .contains("the plan releases every table it reads")
        );
        let text = crate::policy::DEFAULT_POLICY.replace(
            "id = \"varighet\"\ndimensions = [\"varighet\"]",
            "id = \"varighet\"\ndimensions = [\"kanal\", \"varighet\"]",
        );
        let p = Policy::from_str("test.toml", &text).unwrap();
        let line = dashboard_coverage(&p);
        assert!(
            line.contains("supporter hours (needs a table by varighet)"),
            "{line}"
        );
    }

    #[test]
    fn the_plan_shows_no_float_noise() {
        let text = describe(&Policy::builtin()).unwrap();
        assert!(text.contains("epsilon 0.7 per release"), "{text}");
        assert!(text.contains("epsilon = 1.99"), "{text}");
        // No figure with more than three significant digits.
        let long = text
            .split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|w| w.contains('.'))
            .find(|w| w.replace('.', "").trim_matches('0').len() > 3);
        assert!(long.is_none(), "{long:?} in {text}");
    }
}
