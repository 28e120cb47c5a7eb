//! The policy: taxonomy, organisations, periods, caps and the release plan, parsed from TOML and
//! validated into typed form in one function ([`Policy::from_str`]).
//!
//! Raw serde structs (`Raw*`, `deny_unknown_fields`) mirror the file; [`Policy`] is what the rest
//! of the service trusts. Every error names the file, the key and the problem. This module knows
//! nothing of storage, HTTP or noise; `dp` turns the plan into accuracy figures.
//!
//! | file | holds |
//! | --- | --- |
//! | `mod.rs` | the typed, validated [`Policy`] and its queries (budgets, sensitivity, tags) |
//! | `raw.rs` | the serde `Raw*` structs that mirror the file, and their defaults |
//! | `validate.rs` | the one function that turns raw into typed, with every check |
//! | `diagnostics.rs` | where in the file an error is: line, column, key path, caret |

use std::path::Path;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::domain::{Granularity, TagSet};

mod diagnostics;
mod raw;
mod validate;
use diagnostics::{locate, place, plain_words};
use raw::RawPolicy;
use validate::validate;

/// The built-in default policy, compiled in so `serve` and `demo` work with no files at hand.
pub const DEFAULT_POLICY: &str = include_str!("../../policy/default.toml");

/// The name under which the built-in policy is reported in messages.
pub const DEFAULT_POLICY_NAME: &str = "policy/default.toml (built in)";

/// The text `tellestrek policy init` writes: the built-in policy, every key commented, under a
/// header that says what to change first. It parses to the built-in policy (a unit test checks).
pub fn starter_text() -> String {
    const HEADER: &str = "\
# Tellestrek policy: a starting point written by `tellestrek policy init`.
#
# It is the built-in default policy. Before you serve real ticks:
#   1. name your scheme (`name`) and replace the example organisations under [[orgs]] with
#      yours: ids are stable ASCII (a-z, 0-9, -, _), names and labels are shown to people;
#   2. keep the taxonomy ([[dimensions]]) unless your scheme has agreed on another: changing it
#      later starts new tables;
#   3. read what `tellestrek policy check FILE` prints: the release plan, the expected error
#      of each released number, and what protects one contact.
# [period], [ticks], [privacy] and [thresholds] may be left out: every key has a default,
# shown here. Every key is documented in the README, \"The policy file\", and the design in
# docs/design.md.
";
    let body = DEFAULT_POLICY
        .find("\nname = ")
        .map_or(DEFAULT_POLICY, |i| &DEFAULT_POLICY[i..]);
    format!("{HEADER}{body}")
}

/// A policy that could not be read or is not valid.
///
/// `at` is `:LINE:COLUMN` when the place in the file is known (else empty) and `snippet` the
/// source line with a caret under the offending value, rendered by `annotate-snippets` (else
/// empty); both come from [`Policy::from_str`], which has the text.
#[derive(Debug, Error)]
pub enum PolicyError {
    /// The file could not be read. The I/O error is part of the message, not a `source`, so that
    /// a caller printing the whole chain shows it once.
    #[error("{file}: cannot read the policy: {reason}")]
    Read {
        file: String,
        reason: std::io::Error,
    },
    /// The TOML is malformed or has an unknown or mistyped key; `message` names the key path
    /// (`marginals[2].budget_share`) when there is one.
    #[error("{file}{at}: {message}{snippet}")]
    Syntax {
        file: String,
        at: String,
        message: String,
        snippet: String,
    },
    /// A key has a value the service cannot work with.
    #[error("{file}{at}: `{key}`: {problem}{snippet}")]
    Invalid {
        file: String,
        key: String,
        problem: String,
        at: String,
        snippet: String,
    },
}

/// What one privacy unit is (docs/design.md, "Privacy unit").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrivacyUnit {
    /// One logged conversation; sensitivity 1 in every marginal.
    Contact,
    /// One supporter's ticks in a period, bounded by the per-supporter cap.
    Supporter,
}

impl PrivacyUnit {
    /// The name used in the policy and in releases.
    pub fn as_str(self) -> &'static str {
        match self {
            PrivacyUnit::Contact => "contact",
            PrivacyUnit::Supporter => "supporter",
        }
    }
}

/// The noise mechanism, and with it the privacy measure the budget is counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mechanism {
    /// Discrete Laplace (geometric) noise; pure ε-DP; the budget is ε.
    DiscreteLaplace,
    /// Discrete Gaussian noise; ρ-zCDP; the budget is ρ.
    DiscreteGaussian,
}

impl Mechanism {
    /// The name used in the policy and in releases.
    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::DiscreteLaplace => "discrete_laplace",
            Mechanism::DiscreteGaussian => "discrete_gaussian",
        }
    }

    /// The symbol of the privacy measure: `epsilon` or `rho`.
    pub fn measure(self) -> &'static str {
        match self {
            Mechanism::DiscreteLaplace => "epsilon",
            Mechanism::DiscreteGaussian => "rho",
        }
    }
}

/// A name in Norwegian bokmål (shown first) and English.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Label {
    /// Norwegian bokmål.
    pub nb: String,
    /// English.
    pub en: String,
}

/// One allowed value of a tag dimension.
#[derive(Debug, Clone, Serialize)]
pub struct DimValue {
    /// Stable id used in the API and the store (`[a-z0-9_-]`).
    pub id: String,
    /// What people see.
    pub label: Label,
    /// Id of the coarser group this value rolls up to for small units (e.g. `lege-psykolog`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Whether contacts with this value get stronger protection (more noise) in the marginals
    /// that break it out; see [`Privacy::sensitive_noise_multiplier`].
    pub sensitive: bool,
}

/// A rollup group of a dimension's values.
#[derive(Debug, Clone, Serialize)]
pub struct DimGroup {
    /// Stable id.
    pub id: String,
    /// What people see.
    pub label: Label,
}

/// A tag dimension: every tick carries exactly one value for each.
#[derive(Debug, Clone, Serialize)]
pub struct Dimension {
    /// Stable id used as the key in a tick's `tags`.
    pub id: String,
    /// What people see.
    pub label: Label,
    /// Allowed values, in display order.
    pub values: Vec<DimValue>,
    /// Rollup groups; empty if the dimension has none.
    pub groups: Vec<DimGroup>,
    /// The answer the tick page preselects while the device remembers none of its own (a
    /// supporter's first contacts): the answer most contacts have, such as "no" for "referred
    /// on". `None` (the default) means the supporter always chooses. It only saves taps: a
    /// preselected answer is shown, and sent only if the supporter leaves it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
}

impl Dimension {
    /// The value with this id.
    pub fn value(&self, id: &str) -> Option<&DimValue> {
        self.values.iter().find(|v| v.id == id)
    }
}

/// One unit (department, ward, service) of an organisation.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Unit {
    /// Stable id.
    pub id: String,
    /// What people see.
    pub name: String,
    /// Employees, for uptake per 100 employees; a fact from HR, not from the data.
    pub headcount: u32,
}

/// One organisation (health trust, municipality, association).
#[derive(Debug, Clone, Serialize)]
pub struct Org {
    /// Stable id.
    pub id: String,
    /// What people see.
    pub name: String,
    /// Service level (`spesialist`, `kommunal` or `privat`) for equity views across orgs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_level: Option<String>,
    /// Units, in display order.
    pub units: Vec<Unit>,
    /// The scheme's mandate and guidelines, in Markdown (at most [`MAX_SCHEME_MD`] bytes),
    /// shown on the scheme page; optional.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mandate_md: Option<String>,
    /// How to reach a supporter, in Markdown (at most [`MAX_SCHEME_MD`] bytes); optional.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contact_md: Option<String>,
    /// Whether the organisation has a public page without sign-in (`/scheme/{org}/public`)
    /// with its last released yearly total and `contact_md`; default false.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub public_page: bool,
}

/// The most bytes of each Markdown text of an organisation (`mandate_md`, `contact_md`):
/// a page's worth, so a policy file stays readable and a page stays short.
pub const MAX_SCHEME_MD: usize = 4000;

impl Org {
    /// The unit with this id.
    pub fn unit(&self, id: &str) -> Option<&Unit> {
        self.units.iter().find(|u| u.id == id)
    }

    /// Employees in the whole organisation.
    pub fn headcount(&self) -> u32 {
        self.units.iter().map(|u| u.headcount).sum()
    }
}

/// One breakdown axis of a marginal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Axis {
    /// The organisation's units.
    Unit,
    /// A tag dimension's values (index into [`Policy::dimensions`]).
    Dim(usize),
    /// A tag dimension's rollup groups (index into [`Policy::dimensions`]).
    Group(usize),
}

/// What a marginal counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MarginalKind {
    /// Contacts, broken down by the axes (none: the organisation total).
    Contacts(Vec<Axis>),
    /// Supporters: active ones, and those at or above the load threshold.
    SupporterLoad,
}

/// One released table (docs/design.md, "Release plan").
#[derive(Debug, Clone)]
pub struct Marginal {
    /// Stable id (`total`, `unit`, `yrkesgruppe`, `load` ...).
    pub id: String,
    /// What it counts.
    pub kind: MarginalKind,
    /// The axis names as written in the policy (`unit`, a dimension id, or `dimension.group`).
    pub axis_names: Vec<String>,
    /// How often it is released; at least as coarse as the base period.
    pub cadence: Granularity,
    /// Its share of the budget, in (0, 1].
    pub budget_share: f64,
}

/// The privacy parameters (docs/design.md, "Privacy model").
#[derive(Debug, Clone)]
pub struct Privacy {
    /// What one protected unit is; default `contact`.
    pub unit: PrivacyUnit,
    /// The noise mechanism; default discrete Laplace.
    pub mechanism: Mechanism,
    /// Under `contact`: the ε (or ρ) that protects one contact, summed over every release that
    /// includes it. Under `supporter`: the ε (or ρ) that protects one supporter over a rolling
    /// year. Default 2.0.
    pub budget: f64,
    /// The most the releases of one organisation that cover any part of any 365 days may
    /// spend together. Under `supporter` it is what protects a supporter active all year (the
    /// budget); under `contact` it is a ceiling on what a year of data may cost, so that a
    /// policy change cannot quietly raise the release rate. Default: what the plan spends.
    pub rolling_year_cap: f64,
    /// Contacts per person the plain-language summary reports group privacy for; default 3.
    pub typical_contacts_per_person: u32,
    /// Cells of sensitive values get their noise scale multiplied by this (>= 1; default 1).
    pub sensitive_noise_multiplier: f64,
    /// Estimates below this many contacts are shown as "<N" (decided on noisy values only).
    pub suppress_below: u32,
}

/// Thresholds the dashboard and alerts use (docs/domain.md, "Thresholds a dashboard shows").
#[derive(Debug, Clone, Serialize)]
pub struct Thresholds {
    /// A supporter with at least this many contacts in a base period counts as loaded; default 4.
    pub load_contacts_per_period: u32,
    /// Quarters with no uptake before a unit is flagged; default 2.
    pub no_uptake_quarters: u32,
    /// Only units with at least this headcount are flagged for no uptake; default 50.
    pub no_uptake_min_headcount: u32,
    /// A period's count above baseline times this is a spike; default 2.0.
    pub spike_ratio: f64,
    /// A unit's baseline (contacts per quarter) counts as at least this much when judging a
    /// spike, so a usually quiet unit is not flagged for a handful of contacts; default 3.
    pub spike_min_expected: f64,
    /// Uptake per 100 employees per quarter below this is flagged as low; default 0.5.
    pub low_uptake_per_100_per_quarter: f64,
}

/// A validated policy. Build with [`Policy::from_str`], [`Policy::from_path`] or
/// [`Policy::builtin`].
#[derive(Debug, Clone)]
pub struct Policy {
    /// Where it came from, for messages.
    pub source: String,
    /// The text it was parsed from, kept with the data it governs (see `regime`).
    pub text: String,
    /// The scheme's name.
    pub name: String,
    /// Length of a base period (the unit of collection); default month.
    pub granularity: Granularity,
    /// Days after a period ends during which it still accepts ticks; default 7.
    pub grace_days: u32,
    /// Days raw cells are kept after the last release that needs them; default 30.
    pub retention_days: u32,
    /// Largest `count` one tick request may carry; default 10.
    pub max_count_per_request: u32,
    /// Largest number of contacts one supporter may log in one base period; default 40.
    pub max_ticks_per_supporter_period: u32,
    /// Privacy parameters.
    pub privacy: Privacy,
    /// The release plan.
    pub marginals: Vec<Marginal>,
    /// Alert thresholds.
    pub thresholds: Thresholds,
    /// Organisations.
    pub orgs: Vec<Org>,
    /// Tag dimensions.
    pub dimensions: Vec<Dimension>,
    /// Sign-in on the web pages: invite and session lifetimes.
    pub web: WebPolicy,
}

/// How long web sign-ins last (`[web]`). Neither changes what is collected or released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebPolicy {
    /// Days an invite link can be opened before it expires; default 14, 1 to 90.
    pub invite_days: u32,
    /// Days a device stays signed in after opening an invite or signing in; default 180 (a
    /// supporter should never have to sign in again), 1 to 400.
    pub session_days: u32,
}

impl Policy {
    /// The built-in default policy (`policy/default.toml`).
    pub fn builtin() -> Policy {
        // The default policy is checked by a unit test and cannot be edited at run time.
        Policy::from_str(DEFAULT_POLICY_NAME, DEFAULT_POLICY).expect("built-in policy is valid")
    }

    /// Reads and validates a policy file.
    pub fn from_path(path: &Path) -> Result<Policy, PolicyError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|reason| PolicyError::Read {
            file: file.clone(),
            reason,
        })?;
        Policy::from_str(&file, &text)
    }

    /// Parses and validates policy text; `file` names it in error messages.
    ///
    /// Errors name the file, the line and column, and the full key path
    /// (`serde_path_to_error`), and show the source line with a caret (`annotate-snippets`).
    #[allow(clippy::should_implement_trait)] // needs the file name, which FromStr cannot take
    pub fn from_str(file: &str, text: &str) -> Result<Policy, PolicyError> {
        let raw: RawPolicy = serde_path_to_error::deserialize(toml::Deserializer::new(text))
            .map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner();
                let message = plain_words(inner.message());
                let message = if path.is_empty() || path == "." {
                    message
                } else {
                    format!("`{path}`: {message}")
                };
                let (at, snippet) = place(text, inner.span());
                PolicyError::Syntax {
                    file: file.to_string(),
                    at,
                    message,
                    snippet,
                }
            })?;
        let mut policy = validate(file, raw).map_err(|e| match e {
            PolicyError::Invalid {
                file, key, problem, ..
            } => {
                let (at, snippet) = place(text, locate(text, &key));
                PolicyError::Invalid {
                    file,
                    key,
                    problem,
                    at,
                    snippet,
                }
            }
            other => other,
        })?;
        policy.text = text.to_string();
        Ok(policy)
    }

    /// The organisation with this id.
    pub fn org(&self, id: &str) -> Option<&Org> {
        self.orgs.iter().find(|o| o.id == id)
    }

    /// The dimension with this id.
    pub fn dimension(&self, id: &str) -> Option<&Dimension> {
        self.dimensions.iter().find(|d| d.id == id)
    }

    /// The marginal with this id.
    pub fn marginal(&self, id: &str) -> Option<&Marginal> {
        self.marginals.iter().find(|m| m.id == id)
    }

    /// The ε (or ρ) one release of `m` spends for the privacy unit.
    ///
    /// Under `contact`, a contact is in exactly one release of each marginal, so a marginal's
    /// share of the budget is spent in each of its releases. Under `supporter`, a supporter
    /// active for any 12 months is in up to one more release than a calendar year holds (13
    /// months, 5 quarters, 2 years), so the share is spread over that many.
    pub fn release_budget(&self, m: &Marginal) -> f64 {
        let per = self.privacy.budget * m.budget_share;
        match self.privacy.unit {
            PrivacyUnit::Contact => per,
            PrivacyUnit::Supporter => per / f64::from(m.cadence.per_year() + 1),
        }
    }

    /// The L1 (and L2) sensitivity of marginal `m`: how much one privacy unit can change it.
    pub fn sensitivity(&self, m: &Marginal) -> u32 {
        match (self.privacy.unit, &m.kind) {
            // One contact moves one cell by one.
            (PrivacyUnit::Contact, MarginalKind::Contacts(_)) => 1,
            // One contact can make its supporter active and, if the threshold is 1, loaded too.
            (PrivacyUnit::Contact, MarginalKind::SupporterLoad) => {
                if self.thresholds.load_contacts_per_period <= 1 {
                    2
                } else {
                    1
                }
            }
            // One supporter's capped ticks over every base period the release covers.
            (PrivacyUnit::Supporter, MarginalKind::Contacts(_)) => {
                self.max_ticks_per_supporter_period
                    * self.granularity.max_per(m.cadence).unwrap_or(1)
            }
            // One supporter is one active and at most one loaded supporter in each base period.
            (PrivacyUnit::Supporter, MarginalKind::SupporterLoad) => {
                2 * self.granularity.max_per(m.cadence).unwrap_or(1)
            }
        }
    }

    /// The ε (or ρ) that protects one contact (`contact` unit) or one supporter over a rolling
    /// year (`supporter` unit), if the whole plan is released: the budget the shares add up to.
    pub fn planned_spend(&self) -> f64 {
        self.privacy.budget * self.marginals.iter().map(|m| m.budget_share).sum::<f64>()
    }

    /// What the releases of one organisation that cover any part of 365 days spend together,
    /// at most: a 365-day span overlaps one more period of each cadence than a year holds.
    pub fn planned_yearly_spend(&self) -> f64 {
        self.marginals
            .iter()
            .map(|m| self.release_budget(m) * f64::from(m.cadence.per_year() + 1))
            .sum()
    }

    /// Checks that `tags` has exactly one known value for each dimension; the error names the
    /// first offending dimension or value.
    pub fn check_tags(&self, tags: &TagSet) -> Result<(), TagError> {
        for (dim, value) in tags {
            let d = self
                .dimension(dim)
                .ok_or_else(|| TagError::UnknownDimension(dim.clone()))?;
            if d.value(value).is_none() {
                return Err(TagError::UnknownValue {
                    dimension: dim.clone(),
                    value: value.clone(),
                });
            }
        }
        if let Some(d) = self.dimensions.iter().find(|d| !tags.contains_key(&d.id)) {
            return Err(TagError::MissingDimension(d.id.clone()));
        }
        Ok(())
    }
}

/// Why a set of tags does not fit the taxonomy.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TagError {
    /// A tag names a dimension the policy does not have.
    #[error("tags.{0}: there is no dimension `{0}` in the policy")]
    UnknownDimension(String),
    /// A tag has a value its dimension does not allow.
    #[error("tags.{dimension}: `{value}` is not a value of dimension `{dimension}`")]
    UnknownValue { dimension: String, value: String },
    /// A dimension has no tag.
    #[error("tags.{0}: every tick needs a value for dimension `{0}`")]
    MissingDimension(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_policy_file_in_the_repository_is_valid() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("policy");
        let mut seen = 0;
        let mut stack = vec![root];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "toml") {
                    Policy::from_path(&path).unwrap_or_else(|e| panic!("{e}"));
                    seen += 1;
                }
            }
        }
        assert!(
            seen >= 2,
            "expected the default policy and at least one example"
        );
    }

    #[test]
    fn the_builtin_policy_has_the_domain_taxonomy() {
        let p = Policy::builtin();
        assert_eq!(p.granularity, Granularity::Month);
        assert_eq!(p.privacy.unit, PrivacyUnit::Contact);
        assert!(p.orgs.len() >= 2);
        assert!(p.orgs[0].units.len() >= 8);
        for d in [
            "yrkesgruppe",
            "utlosende_arsak",
            "initiering",
            "format",
            "kanal",
            "varighet",
            "oppfolging",
            "informert",
            "henvist",
        ] {
            assert!(p.dimension(d).is_some(), "missing dimension {d}");
        }
        assert!(
            (p.planned_spend() - p.privacy.budget).abs() < 1e-9
                || p.planned_spend() < p.privacy.budget
        );
    }

    fn with(replace: &str, by: &str) -> Result<Policy, PolicyError> {
        assert!(
            DEFAULT_POLICY.contains(replace),
            "fixture text `{replace}` not in the default policy"
        );
        Policy::from_str("test.toml", &DEFAULT_POLICY.replacen(replace, by, 1))
    }

    #[test]
    fn errors_name_the_file_the_key_and_the_problem() {
        let cases = [
            (
                "granularity = \"month\"",
                "granularity = \"fortnight\"",
                "period.granularity",
            ),
            ("grace_days = 7", "grace_days = 60", "period.grace_days"),
            ("budget = 2.0", "budget = -1.0", "privacy.budget"),
            (
                "id = \"akuttmottak\"",
                "id = \"Akutt Mottak\"",
                "orgs[0].units[0].id",
            ),
            ("id = \"akuttmottak\"", "id = \"intensiv\"", "orgs[0].units"),
            ("headcount = 120", "headcount = 0", "headcount"),
            (
                "cadence = \"month\"",
                "cadence = \"week\"",
                "marginals[0].cadence",
            ),
            (
                "dimensions = [\"unit\"]",
                "dimensions = [\"ward\"]",
                "marginals[1].dimensions[0]",
            ),
            (
                "default = \"selvhenvendt\"",
                "default = \"ja\"",
                "dimensions[2].default",
            ),
        ];
        for (from, to, key) in cases {
            let e = with(from, to).unwrap_err().to_string();
            assert!(e.starts_with("test.toml:"), "{e}");
            assert!(e.contains(key), "expected key {key} in: {e}");
        }
        let e = with("name = \"", "colour = \"blue\"\nname = \"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("test.toml") && e.contains("colour"), "{e}");
    }

    #[test]
    fn a_mistyped_value_shows_file_line_column_key_path_source_line_and_caret() {
        let e = with("budget_share = 0.075", "budget_share = \"x\"")
            .unwrap_err()
            .to_string();
        let line = DEFAULT_POLICY
            .lines()
            .position(|l| l == "budget_share = 0.075")
            .unwrap()
            + 1;
        let first = e.lines().next().unwrap();
        assert_eq!(
            first,
            format!(
                "test.toml:{line}:16: `marginals[2].budget_share`: invalid type: string \"x\", expected a number"
            ),
            "{e}"
        );
        assert!(e.contains(&format!("{line} | budget_share = \"x\"")), "{e}");
        assert!(
            e.lines().any(|l| l.ends_with("|                ^^^")),
            "the caret is under the value: {e}"
        );
        assert!(!e.contains("f64"), "{e}");
    }

    #[test]
    fn a_wrong_granularity_suggests_only_accepted_values() {
        for bad in ["fortnight", "year"] {
            let e = with(
                "granularity = \"month\"",
                &format!("granularity = \"{bad}\""),
            )
            .unwrap_err()
            .to_string();
            let first = e.lines().next().unwrap();
            assert!(
                first.contains("`period.granularity`")
                    && first.contains("week, month or quarter")
                    && !first.contains("year,")
                    && !first.contains("or year"),
                "{e}"
            );
            assert!(first.starts_with("test.toml:12:15:"), "{e}");
        }
        let e = with("cadence = \"month\"", "cadence = \"monthly\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("use month, quarter, year"), "{e}");
    }

    #[test]
    fn validation_errors_point_at_the_value_in_the_file() {
        let e = with("headcount = 180", "headcount = 0")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`orgs[0].units[1].headcount`"), "{e}");
        assert!(
            e.contains("headcount = 0 },"),
            "the source line is shown: {e}"
        );
        assert!(e.contains('^'), "{e}");
    }

    #[test]
    fn period_ticks_and_privacy_may_be_omitted_and_take_their_defaults() {
        let start = DEFAULT_POLICY.find("[period]").unwrap();
        let end = DEFAULT_POLICY.find("[thresholds]").unwrap();
        let text = format!("{}{}", &DEFAULT_POLICY[..start], &DEFAULT_POLICY[end..]);
        // The default plan spends 13.48 in a rolling year, within the implied cap.
        let p = Policy::from_str("short.toml", &text).unwrap();
        assert_eq!(p.granularity, Granularity::Month);
        assert_eq!((p.grace_days, p.retention_days), (7, 30));
        assert_eq!(
            (p.max_count_per_request, p.max_ticks_per_supporter_period),
            (10, 40)
        );
        assert_eq!(p.privacy.unit, PrivacyUnit::Contact);
        assert_eq!(p.privacy.mechanism, Mechanism::DiscreteLaplace);
        assert_eq!(p.privacy.budget, 2.0);
        assert_eq!(p.privacy.suppress_below, 3);
        assert_eq!(p.privacy.sensitive_noise_multiplier, 1.0);
    }

    #[test]
    fn a_missing_file_names_the_file_and_the_reason_once() {
        let e = Policy::from_path(Path::new("/nonexistent/policy.toml")).unwrap_err();
        assert!(std::error::Error::source(&e).is_none());
        let text = format!("{:#}", anyhow::Error::from(e));
        assert_eq!(text.matches("No such file").count(), 1, "{text}");
        assert!(text.contains("/nonexistent/policy.toml"), "{text}");
    }

    #[test]
    fn the_starting_policy_is_commented_and_is_the_builtin_one() {
        let text = starter_text();
        assert!(text.starts_with("# Tellestrek policy: a starting point"));
        assert!(text.contains("policy check"));
        let p = Policy::from_str("init.toml", &text).unwrap();
        let b = Policy::builtin();
        assert_eq!(p.name, b.name);
        assert_eq!(p.orgs.len(), b.orgs.len());
        assert_eq!(p.marginals.len(), b.marginals.len());
        assert!((p.planned_spend() - b.planned_spend()).abs() < 1e-12);
    }

    #[test]
    fn a_plan_whose_budget_does_not_add_up_is_refused() {
        let e = with("budget_share = 0.35", "budget_share = 0.95")
            .unwrap_err()
            .to_string();
        assert!(e.contains("marginals") && e.contains("add up"), "{e}");
    }

    #[test]
    fn a_plan_over_its_rolling_year_cap_is_refused() {
        let p = Policy::builtin();
        // 13 months x 0.7 + 5 quarters x 0.6 + 2 years x 0.69.
        assert!((p.planned_yearly_spend() - 13.48).abs() < 1e-9);
        let e = with("rolling_year_cap = 14.0", "rolling_year_cap = 12.0")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("rolling_year_cap") && e.contains("13.480"),
            "{e}"
        );
    }

    #[test]
    fn tags_are_checked_against_the_taxonomy() {
        let p = Policy::builtin();
        let mut tags: TagSet = p
            .dimensions
            .iter()
            .map(|d| (d.id.clone(), d.values[0].id.clone()))
            .collect();
        assert_eq!(p.check_tags(&tags), Ok(()));
        tags.insert("kanal".into(), "brevdue".into());
        assert!(matches!(
            p.check_tags(&tags),
            Err(TagError::UnknownValue { .. })
        ));
        tags.remove("kanal");
        assert_eq!(
            p.check_tags(&tags),
            Err(TagError::MissingDimension("kanal".into()))
        );
        tags.insert("humør".into(), "bra".into());
        assert!(matches!(
            p.check_tags(&tags),
            Err(TagError::UnknownDimension(_))
        ));
    }
}
