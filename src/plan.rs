//! The human-readable release plan printed by `tellestrek policy check`.
//!
//! Sits beside `service`: it reads the validated policy (and, for accuracy, the `dp` module)
//! and renders text. Must not depend on storage or HTTP.

use std::fmt::Write;

use crate::policy::{MarginalKind, Policy, PrivacyUnit};

/// The plan of `policy` as plain text: periods, caps, each marginal with its cadence and spend,
/// and what protects one contact or supporter.
pub fn describe(policy: &Policy) -> String {
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
    let _ = writeln!(out, "\nRelease plan:");
    for m in &p.marginals {
        let what = match &m.kind {
            MarginalKind::Contacts(_) if m.axis_names.is_empty() => {
                "contacts, organisation total".to_string()
            }
            MarginalKind::Contacts(_) => format!("contacts by {}", m.axis_names.join(" x ")),
            MarginalKind::SupporterLoad => format!(
                "supporter load (active supporter-periods, and those with {}+ contacts)",
                p.thresholds.load_contacts_per_period
            ),
        };
        let _ = writeln!(
            out,
            "  {:<18} every {:<7} {measure} {:.3} per release, sensitivity {}: {what}",
            m.id,
            m.cadence.as_str(),
            p.release_budget(m),
            p.sensitivity(m)
        );
    }
    let spend = p.planned_spend();
    let _ = writeln!(out);
    match p.privacy.unit {
        PrivacyUnit::Contact => {
            let _ = writeln!(
                out,
                "One contact is protected at {measure} = {spend:.3} (the sum over every release that includes it); a person with {} conversations at {:.3}.",
                p.privacy.typical_contacts_per_person,
                spend * f64::from(p.privacy.typical_contacts_per_person)
            );
        }
        PrivacyUnit::Supporter => {
            let _ = writeln!(
                out,
                "One supporter active all year is protected at {measure} = {spend:.3} per rolling year, whatever they log."
            );
        }
    }
    out
}
