//! From the file as written to the typed policy: every check, each naming its key.

use std::collections::BTreeSet;

use super::raw::*;
use super::*;

/// Service levels an organisation may declare.
const SERVICE_LEVELS: [&str; 3] = ["spesialist", "kommunal", "privat"];

// ----- validation ---------------------------------------------------------------------------

struct Checker<'a> {
    file: &'a str,
}

impl Checker<'_> {
    fn err(&self, key: impl Into<String>, problem: impl Into<String>) -> PolicyError {
        // The place in the file is added by `Policy::from_str`, which has the text.
        PolicyError::Invalid {
            file: self.file.to_string(),
            key: key.into(),
            problem: problem.into(),
            at: String::new(),
            snippet: String::new(),
        }
    }

    fn id(&self, key: &str, id: &str) -> Result<(), PolicyError> {
        let ok = !id.is_empty()
            && id.len() <= 40
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            && id.as_bytes()[0].is_ascii_alphanumeric();
        if ok {
            Ok(())
        } else {
            Err(self.err(
                key,
                format!("`{id}` is not a valid id; use 1 to 40 characters a-z, 0-9, - or _, starting with a letter or digit"),
            ))
        }
    }

    fn text(&self, key: &str, text: &str) -> Result<(), PolicyError> {
        if text.trim().is_empty() || text.len() > 200 {
            Err(self.err(key, "must be between 1 and 200 characters"))
        } else {
            Ok(())
        }
    }

    fn label(&self, key: &str, label: &Label) -> Result<(), PolicyError> {
        self.text(&format!("{key}.nb"), &label.nb)?;
        self.text(&format!("{key}.en"), &label.en)
    }

    fn unique<'b>(&self, key: &str, ids: impl Iterator<Item = &'b str>) -> Result<(), PolicyError> {
        let mut seen = BTreeSet::new();
        for id in ids {
            if !seen.insert(id) {
                return Err(self.err(key, format!("id `{id}` appears twice")));
            }
        }
        Ok(())
    }
}

pub(super) fn validate(file: &str, raw: RawPolicy) -> Result<Policy, PolicyError> {
    let c = Checker { file };
    c.text("name", &raw.name)?;

    let granularity: Granularity = match raw.period.granularity.parse() {
        Ok(Granularity::Year) => {
            return Err(c.err(
                "period.granularity",
                "a base period of a year keeps raw data far too long; use week, month or quarter",
            ));
        }
        Ok(g) => g,
        Err(_) => {
            return Err(c.err(
                "period.granularity",
                format!(
                    "`{}` is not a base period; use week, month or quarter",
                    raw.period.granularity
                ),
            ));
        }
    };
    if raw.period.grace_days > 31 {
        return Err(c.err(
            "period.grace_days",
            format!("{} days is more than the 31 allowed", raw.period.grace_days),
        ));
    }
    if raw.period.retention_days > 400 {
        return Err(c.err("period.retention_days", format!("{} days is more than the 400 allowed; raw data is personal data and must be kept briefly", raw.period.retention_days)));
    }
    if !(1..=90).contains(&raw.web.invite_days) {
        return Err(c.err(
            "web.invite_days",
            format!(
                "{} days is not allowed; an invite link must expire after 1 to 90 days",
                raw.web.invite_days
            ),
        ));
    }
    if !(1..=400).contains(&raw.web.session_days) {
        return Err(c.err(
            "web.session_days",
            format!(
                "{} days is not allowed; a device may stay signed in for 1 to 400 days",
                raw.web.session_days
            ),
        ));
    }
    if raw.ticks.max_count_per_request == 0 || raw.ticks.max_count_per_request > 100 {
        return Err(c.err("ticks.max_count_per_request", "must be between 1 and 100"));
    }
    if raw.ticks.max_per_supporter_per_period < raw.ticks.max_count_per_request
        || raw.ticks.max_per_supporter_per_period > 10_000
    {
        return Err(c.err(
            "ticks.max_per_supporter_per_period",
            "must be at least ticks.max_count_per_request and at most 10000",
        ));
    }

    let p = &raw.privacy;
    if !(p.budget.is_finite() && p.budget > 0.0 && p.budget <= 20.0) {
        return Err(c.err(
            "privacy.budget",
            format!(
                "{} is not a budget; use a number above 0 and at most 20",
                p.budget
            ),
        ));
    }
    if !(p.sensitive_noise_multiplier.is_finite()
        && (1.0..=10.0).contains(&p.sensitive_noise_multiplier))
    {
        return Err(c.err(
            "privacy.sensitive_noise_multiplier",
            "must be between 1 and 10",
        ));
    }
    if p.typical_contacts_per_person == 0 {
        return Err(c.err("privacy.typical_contacts_per_person", "must be at least 1"));
    }
    if let Some(cap) = p.rolling_year_cap.filter(|c| !(c.is_finite() && *c > 0.0)) {
        return Err(c.err(
            "privacy.rolling_year_cap",
            format!("{cap} is not a cap; use a number above 0"),
        ));
    }
    let privacy = Privacy {
        unit: p.unit,
        mechanism: p.mechanism,
        budget: p.budget,
        rolling_year_cap: p.rolling_year_cap.unwrap_or(f64::INFINITY),
        typical_contacts_per_person: p.typical_contacts_per_person,
        sensitive_noise_multiplier: p.sensitive_noise_multiplier,
        suppress_below: p.suppress_below,
    };

    let t = &raw.thresholds;
    if t.load_contacts_per_period == 0 {
        return Err(c.err("thresholds.load_contacts_per_period", "must be at least 1"));
    }
    if !(t.spike_ratio.is_finite() && t.spike_ratio > 1.0) {
        return Err(c.err("thresholds.spike_ratio", "must be above 1"));
    }
    if !(t.spike_min_expected.is_finite() && t.spike_min_expected >= 0.0) {
        return Err(c.err("thresholds.spike_min_expected", "must be 0 or more"));
    }
    if !(t.low_uptake_per_100_per_quarter.is_finite() && t.low_uptake_per_100_per_quarter >= 0.0) {
        return Err(c.err(
            "thresholds.low_uptake_per_100_per_quarter",
            "must be 0 or more",
        ));
    }
    let thresholds = Thresholds {
        load_contacts_per_period: t.load_contacts_per_period,
        no_uptake_quarters: t.no_uptake_quarters,
        no_uptake_min_headcount: t.no_uptake_min_headcount,
        spike_ratio: t.spike_ratio,
        spike_min_expected: t.spike_min_expected,
        low_uptake_per_100_per_quarter: t.low_uptake_per_100_per_quarter,
    };

    if raw.orgs.is_empty() {
        return Err(c.err("orgs", "the policy needs at least one organisation"));
    }
    c.unique("orgs", raw.orgs.iter().map(|o| o.id.as_str()))?;
    let mut orgs = Vec::new();
    for (i, o) in raw.orgs.into_iter().enumerate() {
        let k = format!("orgs[{i}]");
        c.id(&format!("{k}.id"), &o.id)?;
        c.text(&format!("{k}.name"), &o.name)?;
        if let Some(level) = o
            .service_level
            .as_deref()
            .filter(|l| !SERVICE_LEVELS.contains(l))
        {
            return Err(c.err(
                format!("{k}.service_level"),
                format!("`{level}` is not a service level; use spesialist, kommunal or privat"),
            ));
        }
        if o.units.is_empty() {
            return Err(c.err(
                format!("{k}.units"),
                format!("organisation `{}` needs at least one unit", o.id),
            ));
        }
        c.unique(&format!("{k}.units"), o.units.iter().map(|u| u.id.as_str()))?;
        let mut units = Vec::new();
        for (j, u) in o.units.into_iter().enumerate() {
            let uk = format!("{k}.units[{j}]");
            c.id(&format!("{uk}.id"), &u.id)?;
            c.text(&format!("{uk}.name"), &u.name)?;
            if u.headcount == 0 {
                return Err(c.err(
                    format!("{uk}.headcount"),
                    format!("unit `{}` needs a headcount above 0", u.id),
                ));
            }
            units.push(Unit {
                id: u.id,
                name: u.name,
                headcount: u.headcount,
            });
        }
        for (key, md) in [("mandate_md", &o.mandate_md), ("contact_md", &o.contact_md)] {
            if let Some(md) = md
                && (md.trim().is_empty() || md.len() > MAX_SCHEME_MD)
            {
                return Err(c.err(
                    format!("{k}.{key}"),
                    format!("must be between 1 and {MAX_SCHEME_MD} bytes of Markdown"),
                ));
            }
        }
        orgs.push(Org {
            id: o.id,
            name: o.name,
            service_level: o.service_level,
            units,
            mandate_md: o.mandate_md,
            contact_md: o.contact_md,
            public_page: o.public_page,
        });
    }

    if raw.dimensions.is_empty() {
        return Err(c.err("dimensions", "the policy needs at least one tag dimension"));
    }
    c.unique("dimensions", raw.dimensions.iter().map(|d| d.id.as_str()))?;
    let mut dimensions = Vec::new();
    for (i, d) in raw.dimensions.into_iter().enumerate() {
        let k = format!("dimensions[{i}]");
        c.id(&format!("{k}.id"), &d.id)?;
        if d.id == "unit" || d.id == "org" || d.id == "period" {
            return Err(c.err(format!("{k}.id"), format!("`{}` is reserved", d.id)));
        }
        c.label(&format!("{k}.label"), &d.label)?;
        if d.values.len() < 2 {
            return Err(c.err(
                format!("{k}.values"),
                format!("dimension `{}` needs at least two values", d.id),
            ));
        }
        c.unique(
            &format!("{k}.values"),
            d.values.iter().map(|v| v.id.as_str()),
        )?;
        c.unique(
            &format!("{k}.groups"),
            d.groups.iter().map(|g| g.id.as_str()),
        )?;
        let mut groups = Vec::new();
        for (j, g) in d.groups.into_iter().enumerate() {
            c.id(&format!("{k}.groups[{j}].id"), &g.id)?;
            c.label(&format!("{k}.groups[{j}].label"), &g.label)?;
            groups.push(DimGroup {
                id: g.id,
                label: g.label,
            });
        }
        let mut values = Vec::new();
        for (j, v) in d.values.into_iter().enumerate() {
            let vk = format!("{k}.values[{j}]");
            c.id(&format!("{vk}.id"), &v.id)?;
            c.label(&format!("{vk}.label"), &v.label)?;
            match (&v.group, groups.is_empty()) {
                (None, false) => {
                    return Err(c.err(
                        format!("{vk}.group"),
                        format!(
                            "dimension `{}` has groups, so value `{}` needs one",
                            d.id, v.id
                        ),
                    ));
                }
                (Some(g), true) => {
                    return Err(c.err(
                        format!("{vk}.group"),
                        format!("`{g}` is not a group; dimension `{}` declares none", d.id),
                    ));
                }
                (Some(g), false) if !groups.iter().any(|x| &x.id == g) => {
                    return Err(c.err(
                        format!("{vk}.group"),
                        format!("`{g}` is not a group of dimension `{}`", d.id),
                    ));
                }
                _ => {}
            }
            values.push(DimValue {
                id: v.id,
                label: v.label,
                group: v.group,
                sensitive: v.sensitive,
            });
        }
        if let Some(v) = &d.default
            && !values.iter().any(|x| &x.id == v)
        {
            return Err(c.err(
                format!("{k}.default"),
                format!(
                    "`{v}` is not a value of dimension `{}`; give one of its values, or leave `default` out so supporters always choose",
                    d.id
                ),
            ));
        }
        dimensions.push(Dimension {
            id: d.id,
            label: d.label,
            values,
            groups,
            default: d.default,
        });
    }

    c.unique("marginals", raw.marginals.iter().map(|m| m.id.as_str()))?;
    let mut marginals = Vec::new();
    for (i, m) in raw.marginals.into_iter().enumerate() {
        let k = format!("marginals[{i}]");
        c.id(&format!("{k}.id"), &m.id)?;
        // Only cadences at least as coarse as the base period are accepted, and suggested.
        let accepted = [
            Granularity::Week,
            Granularity::Month,
            Granularity::Quarter,
            Granularity::Year,
        ]
        .into_iter()
        .filter(|g| granularity.max_per(*g).is_some())
        .map(|g| g.as_str())
        .collect::<Vec<_>>()
        .join(", ");
        let cadence: Granularity = m.cadence.parse().map_err(|_| {
            c.err(
                format!("{k}.cadence"),
                format!("`{}` is not a cadence; use {accepted}", m.cadence),
            )
        })?;
        if granularity.max_per(cadence).is_none() {
            return Err(c.err(
                format!("{k}.cadence"),
                format!(
                    "`{}` is finer than the base period `{}`; use {accepted}",
                    cadence.as_str(),
                    granularity.as_str()
                ),
            ));
        }
        if !(m.budget_share.is_finite() && m.budget_share > 0.0 && m.budget_share <= 1.0) {
            return Err(c.err(
                format!("{k}.budget_share"),
                format!(
                    "{} is not a share; use a number above 0 and at most 1",
                    m.budget_share
                ),
            ));
        }
        let kind = if m.kind == RawMarginalKind::SupporterLoad {
            if !m.dimensions.is_empty() {
                return Err(c.err(format!("{k}.dimensions"), "a supporter_load marginal has no breakdown: per-unit supporter counts would single people out"));
            }
            MarginalKind::SupporterLoad
        } else {
            let mut axes = Vec::new();
            for (j, name) in m.dimensions.iter().enumerate() {
                let ak = format!("{k}.dimensions[{j}]");
                let axis = if name == "unit" {
                    Axis::Unit
                } else {
                    let (dim, group) = match name.split_once('.') {
                        Some((d, "group")) => (d, true),
                        Some(_) => return Err(c.err(ak, format!("`{name}` is not a breakdown; use unit, a dimension id, or DIMENSION.group"))),
                        None => (name.as_str(), false),
                    };
                    let idx = dimensions.iter().position(|d| d.id == dim).ok_or_else(|| {
                        c.err(
                            &ak,
                            format!(
                                "there is no dimension `{dim}`; known: unit, {}",
                                dimensions
                                    .iter()
                                    .map(|d| d.id.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        )
                    })?;
                    if group && dimensions[idx].groups.is_empty() {
                        return Err(c.err(ak, format!("dimension `{dim}` has no groups")));
                    }
                    if group {
                        Axis::Group(idx)
                    } else {
                        Axis::Dim(idx)
                    }
                };
                if axes.contains(&axis) {
                    return Err(c.err(format!("{k}.dimensions"), format!("`{name}` appears twice")));
                }
                axes.push(axis);
            }
            MarginalKind::Contacts(axes)
        };
        marginals.push(Marginal {
            id: m.id,
            kind,
            axis_names: m.dimensions,
            cadence,
            budget_share: m.budget_share,
        });
    }
    let share: f64 = marginals.iter().map(|m| m.budget_share).sum();
    if share > 1.0 + 1e-9 {
        return Err(c.err(
            "marginals",
            format!(
                "the budget shares add up to {share:.3}, more than the whole budget; lower some budget_share so they sum to at most 1"
            ),
        ));
    }

    let mut policy = Policy {
        source: file.to_string(),
        text: String::new(),
        name: raw.name,
        granularity,
        grace_days: raw.period.grace_days,
        retention_days: raw.period.retention_days,
        max_count_per_request: raw.ticks.max_count_per_request,
        max_ticks_per_supporter_period: raw.ticks.max_per_supporter_per_period,
        privacy,
        marginals,
        thresholds,
        orgs,
        dimensions,
        web: WebPolicy {
            invite_days: raw.web.invite_days,
            session_days: raw.web.session_days,
        },
    };
    let yearly = policy.planned_yearly_spend();
    if policy.privacy.rolling_year_cap.is_infinite() {
        policy.privacy.rolling_year_cap = match policy.privacy.unit {
            PrivacyUnit::Contact => yearly,
            PrivacyUnit::Supporter => policy.privacy.budget,
        };
    } else if yearly > policy.privacy.rolling_year_cap * (1.0 + 1e-9) {
        return Err(c.err(
            "privacy.rolling_year_cap",
            format!("the plan spends {yearly:.3} in a year, more than the cap of {}; lower some budget_share or raise the cap", policy.privacy.rolling_year_cap),
        ));
    }
    Ok(policy)
}
