//! The policy file as written: serde structs that mirror it (`deny_unknown_fields`, so a
//! mistyped key is an error), and the defaults of the keys that may be left out.

use serde::Deserialize;

use super::{Label, Mechanism, PrivacyUnit};

// ----- raw form -----------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    pub(super) name: String,
    #[serde(default)]
    pub(super) period: RawPeriod,
    #[serde(default)]
    pub(super) ticks: RawTicks,
    #[serde(default)]
    pub(super) privacy: RawPrivacy,
    #[serde(default)]
    pub(super) thresholds: RawThresholds,
    #[serde(default)]
    pub(super) marginals: Vec<RawMarginal>,
    #[serde(default)]
    pub(super) web: RawWeb,
    pub(super) orgs: Vec<RawOrg>,
    pub(super) dimensions: Vec<RawDimension>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPeriod {
    #[serde(default = "default_granularity")]
    pub(super) granularity: String,
    #[serde(default = "default_grace_days")]
    pub(super) grace_days: u32,
    #[serde(default = "default_retention_days")]
    pub(super) retention_days: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTicks {
    #[serde(default = "default_max_count")]
    pub(super) max_count_per_request: u32,
    #[serde(default = "default_max_per_supporter")]
    pub(super) max_per_supporter_per_period: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPrivacy {
    #[serde(default = "default_unit")]
    pub(super) unit: PrivacyUnit,
    #[serde(default = "default_mechanism")]
    pub(super) mechanism: Mechanism,
    #[serde(default = "default_budget")]
    pub(super) budget: f64,
    #[serde(default)]
    pub(super) rolling_year_cap: Option<f64>,
    #[serde(default = "default_typical_contacts")]
    pub(super) typical_contacts_per_person: u32,
    #[serde(default = "one")]
    pub(super) sensitive_noise_multiplier: f64,
    #[serde(default = "default_suppress_below")]
    pub(super) suppress_below: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawThresholds {
    #[serde(default = "default_load")]
    pub(super) load_contacts_per_period: u32,
    #[serde(default = "default_no_uptake_quarters")]
    pub(super) no_uptake_quarters: u32,
    #[serde(default = "default_no_uptake_headcount")]
    pub(super) no_uptake_min_headcount: u32,
    #[serde(default = "default_spike_ratio")]
    pub(super) spike_ratio: f64,
    #[serde(default = "default_spike_min_expected")]
    pub(super) spike_min_expected: f64,
    #[serde(default = "default_low_uptake")]
    pub(super) low_uptake_per_100_per_quarter: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWeb {
    #[serde(default = "default_invite_days")]
    pub(super) invite_days: u32,
    #[serde(default = "default_session_days")]
    pub(super) session_days: u32,
}

impl Default for RawWeb {
    fn default() -> Self {
        RawWeb {
            invite_days: default_invite_days(),
            session_days: default_session_days(),
        }
    }
}

pub(super) fn default_invite_days() -> u32 {
    14
}
pub(super) fn default_session_days() -> u32 {
    180
}

impl Default for RawPeriod {
    fn default() -> Self {
        RawPeriod {
            granularity: default_granularity(),
            grace_days: default_grace_days(),
            retention_days: default_retention_days(),
        }
    }
}

impl Default for RawTicks {
    fn default() -> Self {
        RawTicks {
            max_count_per_request: default_max_count(),
            max_per_supporter_per_period: default_max_per_supporter(),
        }
    }
}

impl Default for RawPrivacy {
    fn default() -> Self {
        RawPrivacy {
            unit: default_unit(),
            mechanism: default_mechanism(),
            budget: default_budget(),
            rolling_year_cap: None,
            typical_contacts_per_person: default_typical_contacts(),
            sensitive_noise_multiplier: one(),
            suppress_below: default_suppress_below(),
        }
    }
}

impl Default for RawThresholds {
    fn default() -> Self {
        RawThresholds {
            load_contacts_per_period: default_load(),
            no_uptake_quarters: default_no_uptake_quarters(),
            no_uptake_min_headcount: default_no_uptake_headcount(),
            spike_ratio: default_spike_ratio(),
            spike_min_expected: default_spike_min_expected(),
            low_uptake_per_100_per_quarter: default_low_uptake(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMarginal {
    pub(super) id: String,
    #[serde(default)]
    pub(super) kind: RawMarginalKind,
    #[serde(default)]
    pub(super) dimensions: Vec<String>,
    pub(super) cadence: String,
    pub(super) budget_share: f64,
}

#[derive(Deserialize, Default, PartialEq)]
#[serde(rename_all = "snake_case")]
pub(super) enum RawMarginalKind {
    #[default]
    Contacts,
    SupporterLoad,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOrg {
    pub(super) id: String,
    pub(super) name: String,
    #[serde(default)]
    pub(super) service_level: Option<String>,
    pub(super) units: Vec<RawUnit>,
    #[serde(default)]
    pub(super) mandate_md: Option<String>,
    #[serde(default)]
    pub(super) contact_md: Option<String>,
    #[serde(default)]
    pub(super) public_page: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUnit {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) headcount: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDimension {
    pub(super) id: String,
    pub(super) label: Label,
    #[serde(default)]
    pub(super) groups: Vec<RawGroup>,
    pub(super) values: Vec<RawValue>,
    #[serde(default)]
    pub(super) default: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGroup {
    pub(super) id: String,
    pub(super) label: Label,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawValue {
    pub(super) id: String,
    pub(super) label: Label,
    #[serde(default)]
    pub(super) group: Option<String>,
    #[serde(default)]
    pub(super) sensitive: bool,
}

pub(super) fn default_granularity() -> String {
    "month".into()
}
pub(super) fn default_grace_days() -> u32 {
    7
}
pub(super) fn default_retention_days() -> u32 {
    30
}
pub(super) fn default_max_count() -> u32 {
    10
}
pub(super) fn default_max_per_supporter() -> u32 {
    40
}
pub(super) fn default_unit() -> PrivacyUnit {
    PrivacyUnit::Contact
}
pub(super) fn default_mechanism() -> Mechanism {
    Mechanism::DiscreteLaplace
}
pub(super) fn default_budget() -> f64 {
    2.0
}
pub(super) fn default_typical_contacts() -> u32 {
    3
}
pub(super) fn one() -> f64 {
    1.0
}
pub(super) fn default_suppress_below() -> u32 {
    3
}
pub(super) fn default_load() -> u32 {
    4
}
pub(super) fn default_no_uptake_quarters() -> u32 {
    2
}
pub(super) fn default_no_uptake_headcount() -> u32 {
    50
}
pub(super) fn default_spike_ratio() -> f64 {
    2.0
}
pub(super) fn default_spike_min_expected() -> f64 {
    3.0
}
pub(super) fn default_low_uptake() -> f64 {
    0.5
}
