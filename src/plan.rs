//! The human-readable release plan printed by `tellestrek policy check`.
//!
//! Sits beside `service`: it reads the validated policy (and, for accuracy, the `dp` module)
//! and renders text. Must not depend on storage or HTTP.

use std::fmt::Write;

use crate::dp;
use crate::policy::{MarginalKind, Policy, PrivacyUnit};

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
        p.privacy.budget
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
            "  {:<16} every {:<7} ±{:<4} {unit:<18} {measure} {:.3} per release (OpenDP), sensitivity {}; {what}",
            m.id,
            m.cadence.as_str(),
            cal.ci_half_width,
            cal.spend,
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
                "  {:<16}               ±{:<4} for sensitive values ({measure} {:.3}: stronger protection)",
                "", s.ci_half_width, s.spend
            );
        }
    }
    let spend = p.planned_spend();
    let _ = writeln!(out);
    let k = p.privacy.typical_contacts_per_person;
    match (p.privacy.unit, p.privacy.mechanism.measure()) {
        (PrivacyUnit::Contact, "epsilon") => {
            let _ = writeln!(
                out,
                "One contact is protected at epsilon = {spend:.3}: the sum over every release that includes it (disjoint periods compose in parallel); a person with {k} conversations at {:.3} (group privacy).",
                spend * f64::from(k)
            );
            let _ = writeln!(
                out,
                "In plain words: whatever else is known, all releases together make it at most {:.1} times more (or less) likely that any one conversation was logged than if it had not been.",
                spend.exp()
            );
            let _ = writeln!(
                out,
                "A person with a conversation every {} for a year is protected at {} x {spend:.3} = {:.2} (group privacy); the ledger refuses any release that would take what the releases covering any 365 days spend past the rolling-year cap of {}.",
                p.granularity.as_str(),
                p.granularity.per_year(),
                spend * f64::from(p.granularity.per_year()),
                p.privacy.rolling_year_cap
            );
        }
        (PrivacyUnit::Contact, _) => {
            let _ = writeln!(
                out,
                "One contact is protected at rho = {spend:.3} (zCDP), summed over every release that includes it (about epsilon = {:.2} at delta = 1e-6); a person with {k} conversations at rho = {:.3}.",
                dp::zcdp_epsilon(spend, 1e-6),
                spend * f64::from(k * k)
            );
        }
        (PrivacyUnit::Supporter, m) => {
            let _ = writeln!(
                out,
                "One supporter active all year is protected at {m} = {spend:.3} per rolling year, whatever they log (their ticks are capped at {} per {}).",
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
                "In plain words: all releases of a year together make anything about one supporter's activity at most {:.1} times more (or less) likely than without them{}.",
                eps.exp(),
                if m == "rho" {
                    format!(" (epsilon about {eps:.2}, except with probability 1e-6)")
                } else {
                    String::new()
                }
            );
        }
    }
    Ok(out)
}
