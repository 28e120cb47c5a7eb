//! Policy regimes: data keeps the policy it was collected under.
//!
//! A *regime* is a policy text in force from one base period on, until the next regime starts.
//! Every base period is collected, released and purged under its regime, whatever the policy
//! file says today. When the file changes, [`plan`] decides what happens, before the server
//! starts serving:
//!
//! - **Refused** at start, with the change, why and what to do instead: a change of the base
//!   period's length, of the grace days, of the privacy unit or of the mechanism. These define
//!   what a period and a unit of privacy *are* and in which measure the ledger counts; data
//!   collected under one cannot be accounted under another.
//! - **Amended** at once: a change that moves nothing a contact is counted, released, kept or
//!   protected by (labels, names, headcounts, dashboard thresholds, the display threshold, the
//!   largest `count` of one request). The latest regime's text is replaced by the new one.
//! - **Scheduled** from a future base period: everything else. The regime starts at the first
//!   base period after the current one that begins a new period of every release cadence whose
//!   table changes (a changed yearly table: next January), so that no release ever counts
//!   periods of two policies. A new organisation with nothing else changed starts at once.
//!
//! So an edit never reopens a released period (a release is keyed by its period and drawn once
//! under that period's regime), never lets a period be drawn twice (a renamed table applies
//! only to new periods), never raises what collected data is exposed to (its budget, cap, noise
//! and retention are those of its regime), and never stops a purge (a period's retention is read
//! from its regime, which is kept as long as the data directory lives).
//!
//! This module is pure: it reads and returns policies and the regime file's bytes; the store
//! writes the file and the service applies the plan.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use thiserror::Error;

use crate::domain::{Granularity, Period};
use crate::policy::{MarginalKind, Policy, PolicyError};
use crate::release;

/// One policy in force from `from` (a base period) until the next regime starts.
#[derive(Debug, Clone)]
pub struct Regime {
    /// The first base period collected under this policy.
    pub from: Period,
    /// The validated policy.
    pub policy: Arc<Policy>,
    /// The policy's text as it was read, kept so that anyone can see what data was collected
    /// under.
    pub text: String,
}

/// The stored form of the regime list (`regimes.json` in the data directory).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegimeFile {
    /// Format version (1).
    version: u32,
    /// Oldest first.
    regimes: Vec<RegimeRecord>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegimeRecord {
    /// First base period.
    from: Period,
    /// Where the text was read from when it was adopted (a path, for people).
    source: String,
    /// The policy text (TOML).
    policy: String,
}

/// The regimes of a data directory, oldest first; never empty.
#[derive(Debug, Clone)]
pub struct Regimes(Vec<Regime>);

/// A stored regime list that cannot be read.
#[derive(Debug, Error)]
pub enum RegimeError {
    /// The file is not the JSON this version writes.
    #[error("regimes.json is not readable: {0}")]
    Format(String),
    /// A stored policy no longer validates (a newer or older binary with other rules).
    #[error("the policy stored for periods from {from} does not validate any more: {source}")]
    Policy {
        from: Period,
        #[source]
        source: Box<PolicyError>,
    },
}

impl Regimes {
    /// One regime from `from` on.
    pub fn single(from: Period, policy: Policy, text: &str) -> Regimes {
        Regimes(vec![Regime {
            from,
            policy: Arc::new(policy),
            text: text.to_string(),
        }])
    }

    /// Reads the stored form.
    pub fn from_bytes(bytes: &[u8]) -> Result<Regimes, RegimeError> {
        let file: RegimeFile =
            serde_json::from_slice(bytes).map_err(|e| RegimeError::Format(e.to_string()))?;
        if file.version != 1 || file.regimes.is_empty() {
            return Err(RegimeError::Format(format!(
                "version {} with {} regimes; expected version 1 with at least one",
                file.version,
                file.regimes.len()
            )));
        }
        let mut out = Vec::new();
        for r in file.regimes {
            let policy = Policy::from_str(&format!("regime from {}", r.from), &r.policy).map_err(
                |source| RegimeError::Policy {
                    from: r.from,
                    source: Box::new(source),
                },
            )?;
            out.push(Regime {
                from: r.from,
                policy: Arc::new(policy),
                text: r.policy,
            });
        }
        Ok(Regimes(out))
    }

    /// The stored form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let file = RegimeFile {
            version: 1,
            regimes: self
                .0
                .iter()
                .map(|r| RegimeRecord {
                    from: r.from,
                    source: r.policy.source.clone(),
                    policy: r.text.clone(),
                })
                .collect(),
        };
        // Serialising plain strings and periods cannot fail.
        serde_json::to_vec_pretty(&file).expect("regime file serialises")
    }

    /// Every regime, oldest first.
    pub fn all(&self) -> &[Regime] {
        &self.0
    }

    /// The first base period any regime covers: before it, nothing was ever collected.
    pub fn epoch(&self) -> Period {
        self.0[0].from
    }

    /// The regime base period `b` is (or will be) collected under; `None` before the epoch.
    pub fn at(&self, b: Period) -> Option<&Regime> {
        self.0.iter().rev().find(|r| r.from <= b)
    }

    /// The smallest rolling-year cap of the regimes in force on any day of `[start, end)`.
    pub fn min_rolling_year_cap(&self, start: time::Date, end: time::Date) -> f64 {
        let mut cap = f64::INFINITY;
        for (i, r) in self.0.iter().enumerate() {
            let from = r.from.start();
            let until = self.0.get(i + 1).map(|n| n.from.start());
            if from < end && until.is_none_or(|u| u > start) {
                cap = cap.min(r.policy.privacy.rolling_year_cap);
            }
        }
        cap
    }

    /// The base length of periods: the same in every regime (a change is refused).
    pub fn granularity(&self) -> Granularity {
        self.0[0].policy.granularity
    }
}

/// A change of the policy file that the server will not apply to this data directory.
#[derive(Debug, Error)]
#[error(
    "the policy file changes `{key}` from {old} to {new}, which this data directory cannot take: {why} Instead: {instead}"
)]
pub struct Refused {
    /// The policy key.
    pub key: &'static str,
    /// Its value in force.
    pub old: String,
    /// Its value in the file.
    pub new: String,
    /// Why it cannot apply.
    pub why: &'static str,
    /// What to do instead.
    pub instead: String,
}

/// What a new policy file does to a data directory's regimes.
#[derive(Debug)]
pub enum Decision {
    /// A fresh data directory: the file's policy from `from` on.
    First { from: Period },
    /// Nothing in the file differs from the policy in force.
    Unchanged,
    /// Only what is shown to people changes; in force at once.
    Amended,
    /// The file's policy takes effect from base period `from` on.
    Scheduled { from: Period },
}

/// The outcome of [`plan`]: the regimes to store and serve with, what happened, and the
/// changes in words (for the start message and `policy check --against`).
#[derive(Debug)]
pub struct Plan {
    /// The regime list to store.
    pub regimes: Regimes,
    /// What the file does.
    pub decision: Decision,
    /// Each change, a sentence each.
    pub changes: Vec<String>,
}

impl Plan {
    /// The plan in words, for people.
    pub fn describe(&self) -> String {
        let mut out = match &self.decision {
            Decision::First { from } => {
                format!("A new data directory: the policy applies from {from}.\n")
            }
            Decision::Unchanged => "The policy file matches the policy in force.\n".to_string(),
            Decision::Amended => {
                "Only what is shown to people changes; it applies at once.\n".to_string()
            }
            Decision::Scheduled { from } => format!(
                "The change takes effect from {from}. Periods before it stay under the policy they were collected under: their tables, budget, noise and retention do not change, and none is drawn again.\n"
            ),
        };
        for c in &self.changes {
            out.push_str("  - ");
            out.push_str(c);
            out.push('\n');
        }
        out
    }
}

/// Decides what `new` (read from `text`) does to `stored` (none for a fresh data directory),
/// when the current base period is `current`.
pub fn plan(
    stored: Option<&Regimes>,
    new: &Policy,
    text: &str,
    current: Period,
) -> Result<Plan, Refused> {
    let Some(stored) = stored else {
        return Ok(Plan {
            regimes: Regimes::single(current, new.clone(), text),
            decision: Decision::First { from: current },
            changes: Vec::new(),
        });
    };
    // Regimes not yet started hold no data: the file replaces them.
    let started: Vec<Regime> = stored
        .0
        .iter()
        .filter(|r| r.from <= current)
        .cloned()
        .collect();
    let mut started = if started.is_empty() {
        // Only the epoch's regime, which begins in the future (a clock set back): keep its start.
        vec![stored.0[0].clone()]
    } else {
        started
    };
    let in_force = started.last().expect("started is not empty").policy.clone();
    refuse_fundamental(&in_force, new)?;
    let changes = describe_changes(&in_force, new);
    let old_fp = fingerprints(&in_force);
    let new_fp = fingerprints(new);
    // Organisations new in the file have collected nothing: they do not move the boundary.
    let collection_changed = collection(&in_force, &in_force) != collection(new, &in_force);
    // The longest cadence among changed tables of organisations that existed before.
    let mut longest: Option<Granularity> = None;
    let keys: BTreeSet<&(String, String)> = old_fp.keys().chain(new_fp.keys()).collect();
    for key in keys {
        let (o, n) = (old_fp.get(key), new_fp.get(key));
        if o == n || o.is_none() && in_force.org(&key.0).is_none() {
            continue;
        }
        for fp in [o, n].into_iter().flatten() {
            let cadence = fp.1;
            longest = Some(longest.map_or(cadence, |l| l.max(cadence)));
        }
    }
    let new_orgs = new.orgs.iter().any(|o| in_force.org(&o.id).is_none());
    let from = match (longest, collection_changed) {
        (Some(c), _) => Some(first_base_of_next(current, c, new.granularity)),
        (None, true) => Some(current.next()),
        (None, false) if new_orgs => Some(current),
        (None, false) => None,
    };
    let last = started.last_mut().expect("started is not empty");
    let decision = match from {
        Some(from) if from == last.from => {
            // A new organisation in a regime that starts now: nothing collected under it yet
            // for the others, whose tables are the same.
            *last = Regime {
                from,
                policy: Arc::new(new.clone()),
                text: text.to_string(),
            };
            Decision::Scheduled { from }
        }
        Some(from) => {
            started.push(Regime {
                from,
                policy: Arc::new(new.clone()),
                text: text.to_string(),
            });
            Decision::Scheduled { from }
        }
        None if text == last.text => Decision::Unchanged,
        None if changes.is_empty() && display(&in_force) == display(new) => {
            // Comments or layout only: keep the text in force, nothing to say.
            Decision::Unchanged
        }
        None => {
            last.policy = Arc::new(new.clone());
            last.text = text.to_string();
            Decision::Amended
        }
    };
    Ok(Plan {
        regimes: Regimes(started),
        decision,
        changes,
    })
}

/// The first base period of the period of cadence `c` after the one containing `current`.
fn first_base_of_next(current: Period, c: Granularity, base: Granularity) -> Period {
    let next = current.within(c).next();
    release::base_periods_in(next, base)
        .first()
        .copied()
        .unwrap_or_else(|| current.next())
}

/// Refuses changes that redefine what a period or a unit of privacy is.
fn refuse_fundamental(old: &Policy, new: &Policy) -> Result<(), Refused> {
    const NEW_DIR: &str = "start a new data directory with the new policy, and keep this one running with its policy until its last period is released and purged (the README's section on policy changes shows how).";
    if old.granularity != new.granularity {
        return Err(Refused {
            key: "period.granularity",
            old: old.granularity.as_str().into(),
            new: new.granularity.as_str().into(),
            why: "collected data and the privacy ledger are counted in base periods of one length, and a period of the new length would overlap periods already collected.",
            instead: format!(
                "keep granularity = \"{}\" for this data directory, or {NEW_DIR}",
                old.granularity.as_str()
            ),
        });
    }
    if old.grace_days != new.grace_days {
        return Err(Refused {
            key: "period.grace_days",
            old: old.grace_days.to_string(),
            new: new.grace_days.to_string(),
            why: "the grace days decide when every organisation's period closes; a longer grace would reopen periods that are closed, a shorter one would close open periods early.",
            instead: format!(
                "keep grace_days = {} for this data directory, or {NEW_DIR}",
                old.grace_days
            ),
        });
    }
    if old.privacy.unit != new.privacy.unit {
        return Err(Refused {
            key: "privacy.unit",
            old: old.privacy.unit.as_str().into(),
            new: new.privacy.unit.as_str().into(),
            why: "the ledger protects one kind of unit; releases of the two kinds cannot be added up against one budget.",
            instead: format!(
                "keep unit = \"{}\" for this data directory, or {NEW_DIR}",
                old.privacy.unit.as_str()
            ),
        });
    }
    if old.privacy.mechanism != new.privacy.mechanism {
        return Err(Refused {
            key: "privacy.mechanism",
            old: old.privacy.mechanism.as_str().into(),
            new: new.privacy.mechanism.as_str().into(),
            why: "the ledger counts in one measure (epsilon for discrete Laplace, rho for discrete Gaussian); the rolling-year cap cannot add the two.",
            instead: format!(
                "keep mechanism = \"{}\" for this data directory, or {NEW_DIR}",
                old.privacy.mechanism.as_str()
            ),
        });
    }
    Ok(())
}

/// For each (organisation, table): everything a release of it is computed and checked with,
/// and the table's cadence. Labels, names and headcounts are not in it.
fn fingerprints(p: &Policy) -> BTreeMap<(String, String), (Value, Granularity)> {
    let mut out = BTreeMap::new();
    for org in &p.orgs {
        for m in &p.marginals {
            let cells: Vec<Value> = release::domain(p, org, m)
                .into_iter()
                .map(|c| json!([c.key, c.sensitive]))
                .collect();
            let load = matches!(m.kind, MarginalKind::SupporterLoad)
                .then_some(p.thresholds.load_contacts_per_period);
            // Which value counts in which group: moving a value changes what a group holds.
            let groups: Vec<Value> = match &m.kind {
                MarginalKind::Contacts(axes) => axes
                    .iter()
                    .filter_map(|a| match a {
                        crate::policy::Axis::Group(i) => Some(json!(
                            p.dimensions[*i]
                                .values
                                .iter()
                                .map(|v| (v.id.as_str(), v.group.as_deref()))
                                .collect::<Vec<_>>()
                        )),
                        _ => None,
                    })
                    .collect(),
                MarginalKind::SupporterLoad => Vec::new(),
            };
            let fp = json!({
                "cadence": m.cadence.as_str(),
                "axes": m.axis_names,
                "load_threshold": load,
                "cells": cells,
                "groups": groups,
                "sensitivity": p.sensitivity(m),
                "release_budget": p.release_budget(m),
                "budget": p.privacy.budget,
                "rolling_year_cap": p.privacy.rolling_year_cap,
                "sensitive_noise_multiplier": p.privacy.sensitive_noise_multiplier,
            });
            out.insert((org.id.clone(), m.id.clone()), (fp, m.cadence));
        }
    }
    out
}

/// What a tick is checked against and how long raw data is kept, for the organisations of
/// `scope`: taken from the regime of the period the tick is counted in.
fn collection(p: &Policy, scope: &Policy) -> Value {
    let orgs: BTreeMap<&str, Option<Vec<&str>>> = scope
        .orgs
        .iter()
        .map(|s| {
            let units = p
                .org(&s.id)
                .map(|o| o.units.iter().map(|u| u.id.as_str()).collect());
            (s.id.as_str(), units)
        })
        .collect();
    let dims: BTreeMap<&str, Vec<(&str, Option<&str>)>> = p
        .dimensions
        .iter()
        .map(|d| {
            (
                d.id.as_str(),
                d.values
                    .iter()
                    .map(|v| (v.id.as_str(), v.group.as_deref()))
                    .collect(),
            )
        })
        .collect();
    json!({
        "orgs": orgs,
        "dimensions": dims,
        "retention_days": p.retention_days,
        "max_per_supporter_per_period": p.max_ticks_per_supporter_period,
    })
}

/// What people see: labels, names, headcounts, thresholds.
fn display(p: &Policy) -> Value {
    json!({
        "name": p.name,
        "orgs": p.orgs,
        "dimensions": p.dimensions,
        "thresholds": p.thresholds,
        "suppress_below": p.privacy.suppress_below,
        "typical_contacts_per_person": p.privacy.typical_contacts_per_person,
        "max_count_per_request": p.max_count_per_request,
    })
}

/// The changes between two policies that matter to data, one sentence each.
pub fn describe_changes(old: &Policy, new: &Policy) -> Vec<String> {
    let mut out = Vec::new();
    let mut scalar = |key: &str, a: String, b: String| {
        if a != b {
            out.push(format!("`{key}`: {a} → {b}"));
        }
    };
    scalar(
        "period.retention_days",
        old.retention_days.to_string(),
        new.retention_days.to_string(),
    );
    scalar(
        "ticks.max_per_supporter_per_period",
        old.max_ticks_per_supporter_period.to_string(),
        new.max_ticks_per_supporter_period.to_string(),
    );
    scalar(
        "privacy.budget",
        old.privacy.budget.to_string(),
        new.privacy.budget.to_string(),
    );
    scalar(
        "privacy.rolling_year_cap",
        old.privacy.rolling_year_cap.to_string(),
        new.privacy.rolling_year_cap.to_string(),
    );
    scalar(
        "privacy.sensitive_noise_multiplier",
        old.privacy.sensitive_noise_multiplier.to_string(),
        new.privacy.sensitive_noise_multiplier.to_string(),
    );
    scalar(
        "thresholds.load_contacts_per_period",
        old.thresholds.load_contacts_per_period.to_string(),
        new.thresholds.load_contacts_per_period.to_string(),
    );
    let ids =
        |p: &Policy| -> BTreeSet<String> { p.marginals.iter().map(|m| m.id.clone()).collect() };
    for id in ids(old).union(&ids(new)) {
        match (old.marginal(id), new.marginal(id)) {
            (Some(_), None) => out.push(format!("table `{id}` is no longer released")),
            (None, Some(m)) => out.push(format!(
                "table `{id}` is new (released each {})",
                m.cadence.as_str()
            )),
            (Some(a), Some(b)) => {
                if a.cadence != b.cadence
                    || a.axis_names != b.axis_names
                    || a.budget_share != b.budget_share
                    || a.kind != b.kind
                {
                    out.push(format!(
                        "table `{id}` changes (cadence {} → {}, breakdowns [{}] → [{}], budget share {} → {})",
                        a.cadence.as_str(),
                        b.cadence.as_str(),
                        a.axis_names.join(", "),
                        b.axis_names.join(", "),
                        a.budget_share,
                        b.budget_share
                    ));
                }
            }
            (None, None) => {}
        }
    }
    let org_ids =
        |p: &Policy| -> BTreeSet<String> { p.orgs.iter().map(|o| o.id.clone()).collect() };
    for id in org_ids(old).union(&org_ids(new)) {
        match (old.org(id), new.org(id)) {
            (Some(_), None) => out.push(format!(
                "organisation `{id}` is removed: it takes ticks until the change takes effect; what it collected is released and purged under the policy it was collected under"
            )),
            (None, Some(_)) => out.push(format!("organisation `{id}` is new")),
            (Some(a), Some(b)) => {
                let ua: BTreeSet<&str> = a.units.iter().map(|u| u.id.as_str()).collect();
                let ub: BTreeSet<&str> = b.units.iter().map(|u| u.id.as_str()).collect();
                for u in ua.difference(&ub) {
                    out.push(format!("unit `{u}` of `{id}` is removed"));
                }
                for u in ub.difference(&ua) {
                    out.push(format!("unit `{u}` of `{id}` is new"));
                }
            }
            (None, None) => {}
        }
    }
    for d in &old.dimensions {
        match new.dimension(&d.id) {
            None => out.push(format!("dimension `{}` is removed", d.id)),
            Some(n) => {
                for v in &d.values {
                    match n.value(&v.id) {
                        None => out.push(format!("value `{}` of `{}` is removed", v.id, d.id)),
                        Some(nv) if nv.sensitive != v.sensitive || nv.group != v.group => {
                            out.push(format!(
                                "value `{}` of `{}` changes its group or sensitivity",
                                v.id, d.id
                            ))
                        }
                        Some(_) => {}
                    }
                }
                for v in n.values.iter().filter(|v| d.value(&v.id).is_none()) {
                    out.push(format!("value `{}` of `{}` is new", v.id, d.id));
                }
            }
        }
    }
    for d in new
        .dimensions
        .iter()
        .filter(|d| old.dimension(&d.id).is_none())
    {
        out.push(format!("dimension `{}` is new", d.id));
    }
    out
}
