//! The CSV form of releases, for researchers (R's `read.csv`, pandas' `read_csv`): one row per
//! cell, the release's metadata in columns, a column per breakdown with a `*_label` beside it
//! (bokmål, or English), `shown` as a reader should print the cell (`<3` where suppressed), and
//! ε/ρ rounded to three significant digits. The JSON form keeps OpenDP's exact values.
//!
//! Pure functions over releases and the policy: must not depend on storage, HTTP or noise.

use crate::domain::Release;
use crate::policy::{MarginalKind, Policy};
use crate::release::{LOAD_ACTIVE, LOAD_AT_THRESHOLD, LOAD_AXIS};

/// The language of labels: Norwegian bokmål (the default) or English.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Lang {
    /// Norwegian bokmål.
    #[default]
    Nb,
    /// English.
    En,
}

impl std::str::FromStr for Lang {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "nb" => Ok(Lang::Nb),
            "en" => Ok(Lang::En),
            other => Err(format!("`{other}` is not a language here; use nb or en")),
        }
    }
}

/// The fixed columns, in this order (older columns first; later ones were added after them).
const FIXED: [&str; 26] = [
    "release_id",
    "period",
    "period_start",
    "period_end",
    "org",
    "marginal",
    "kind",
    "dimensions",
    "noisy",
    "estimate",
    "ci_low",
    "ci_high",
    "suppressed",
    "confidence",
    "mechanism",
    "privacy_unit",
    "epsilon",
    "rho",
    "scale",
    "sensitivity",
    "total_estimate",
    "shown",
    "suppress_below",
    "org_name",
    "noisy_ci_low",
    "noisy_ci_high",
];

/// The breakdown columns of an export: every axis of the policy's plan in plan order, so
/// every page of a listing has the same columns, then any axis of a release drawn under an
/// older plan.
fn axes<'a>(policy: &'a Policy, releases: &'a [Release]) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    let mut add = |a: &'a str| {
        if !out.contains(&a) {
            out.push(a);
        }
    };
    for m in &policy.marginals {
        match &m.kind {
            MarginalKind::Contacts(_) => m.axis_names.iter().for_each(|a| add(a)),
            MarginalKind::SupporterLoad => add(LOAD_AXIS),
        }
    }
    for r in releases {
        r.dimensions.iter().for_each(|a| add(a));
    }
    out
}

/// What people call value `value` of breakdown `axis` in organisation `org`; empty if the
/// policy no longer has it.
pub fn label(policy: &Policy, lang: Lang, org: &str, axis: &str, value: &str) -> String {
    let pick = |l: &crate::policy::Label| match lang {
        Lang::Nb => l.nb.clone(),
        Lang::En => l.en.clone(),
    };
    if axis == "unit" {
        return policy
            .org(org)
            .and_then(|o| o.units.iter().find(|u| u.id == value))
            .map(|u| u.name.clone())
            .unwrap_or_default();
    }
    if axis == LOAD_AXIS {
        let t = policy.thresholds.load_contacts_per_period;
        return match (value, lang) {
            (LOAD_ACTIVE, Lang::Nb) => "aktive støttepersoner".into(),
            (LOAD_ACTIVE, Lang::En) => "active supporters".into(),
            (LOAD_AT_THRESHOLD, Lang::Nb) => format!("støttepersoner med {t} eller flere samtaler"),
            (LOAD_AT_THRESHOLD, Lang::En) => format!("supporters with {t} or more contacts"),
            _ => String::new(),
        };
    }
    if let Some((dim, "group")) = axis.split_once('.') {
        return policy
            .dimension(dim)
            .and_then(|d| d.groups.iter().find(|g| g.id == value))
            .map(|g| pick(&g.label))
            .unwrap_or_default();
    }
    policy
        .dimension(axis)
        .and_then(|d| d.value(value))
        .map(|v| pick(&v.label))
        .unwrap_or_default()
}

/// The CSV bytes of `releases`: a header row, then one row per cell in release order.
pub fn csv_page(policy: &Policy, releases: &[Release], lang: Lang) -> Result<Vec<u8>, csv::Error> {
    let axes = axes(policy, releases);
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut head: Vec<String> = FIXED.iter().map(|c| c.to_string()).collect();
    for a in &axes {
        head.push(a.to_string());
        head.push(format!("{a}_label"));
    }
    w.write_record(&head)?;
    for r in releases {
        let org_name = policy
            .org(&r.org)
            .map(|o| o.name.clone())
            .unwrap_or_default();
        for c in &r.cells {
            let shown = if c.suppressed {
                format!("<{}", r.suppress_below)
            } else {
                c.estimate.to_string()
            };
            let mut row = vec![
                r.id.clone(),
                r.period.to_string(),
                r.period.start().to_string(),
                (r.period.end() - time::Duration::days(1)).to_string(),
                r.org.clone(),
                r.marginal.clone(),
                r.kind.clone(),
                r.dimensions.join("+"),
                c.noisy.to_string(),
                c.estimate.to_string(),
                c.ci[0].to_string(),
                c.ci[1].to_string(),
                c.suppressed.to_string(),
                r.confidence.to_string(),
                r.mechanism.clone(),
                r.privacy_unit.clone(),
                r.epsilon
                    .map(crate::plan::privacy_figure)
                    .unwrap_or_default(),
                r.rho.map(crate::plan::privacy_figure).unwrap_or_default(),
                r.scale.to_string(),
                r.sensitivity.to_string(),
                r.total_estimate.to_string(),
                shown,
                r.suppress_below.to_string(),
                org_name.clone(),
                c.noisy_ci[0].to_string(),
                c.noisy_ci[1].to_string(),
            ];
            for a in &axes {
                match c.key.get(*a) {
                    Some(v) => {
                        row.push(v.clone());
                        row.push(label(policy, lang, &r.org, a, v));
                    }
                    None => row.extend([String::new(), String::new()]),
                }
            }
            w.write_record(&row)?;
        }
    }
    w.into_inner().map_err(|e| e.into_error().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn privacy_figures_are_rounded_for_people() {
        assert_eq!(crate::plan::privacy_figure(0.6999999993), "0.7");
        assert_eq!(crate::plan::privacy_figure(0.07500001), "0.075");
        assert_eq!(crate::plan::privacy_figure(1.8549), "1.85");
        assert_eq!(crate::plan::privacy_figure(0.123456), "0.123");
        assert_eq!(crate::plan::privacy_figure(1234.5), "1230");
        assert_eq!(crate::plan::privacy_figure(0.99996), "1");
        assert_eq!(crate::plan::privacy_figure(0.0), "0");
    }

    #[test]
    fn labels_come_from_the_policy_in_both_languages() {
        let p = Policy::builtin();
        let d = &p.dimensions[0];
        let v = &d.values[0];
        assert_eq!(label(&p, Lang::Nb, "x", &d.id, &v.id), v.label.nb);
        assert_eq!(label(&p, Lang::En, "x", &d.id, &v.id), v.label.en);
        assert_eq!(
            label(&p, Lang::Nb, "helse-vestfjord", "unit", "akuttmottak"),
            "Akuttmottak"
        );
        assert_eq!(
            label(&p, Lang::En, "x", LOAD_AXIS, LOAD_ACTIVE),
            "active supporters"
        );
        assert_eq!(label(&p, Lang::Nb, "x", "nope", "nope"), "");
    }
}
