//! The alert rules: pure functions over released numbers and the policy's thresholds, each
//! saying `certain` or `possible`, and their false-alarm rate and power as measured by
//! simulation (`tests/it/dashboard.rs` reruns it and checks [`METHODS`]).

use super::*;

/// How sure an alert is (docs/domain.md, "Thresholds a dashboard shows").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Certainty {
    /// The whole 95 % interval is beyond the threshold.
    Certain,
    /// Only the estimate is beyond it.
    Possible,
}

impl Certainty {
    /// The word in bokmål.
    pub fn nb(self) -> &'static str {
        match self {
            Certainty::Certain => "sikkert",
            Certainty::Possible => "mulig",
        }
    }
    /// The word in English.
    pub fn en(self) -> &'static str {
        match self {
            Certainty::Certain => "certain",
            Certainty::Possible => "possible",
        }
    }
}

/// Low uptake: the estimate (per 100 employees per quarter) below `threshold`; certain if the
/// interval's upper end is below it too.
pub fn low_uptake(per_100: &Num, threshold: f64) -> Option<Certainty> {
    if per_100.high < threshold {
        Some(Certainty::Certain)
    } else if per_100.estimate < threshold {
        Some(Certainty::Possible)
    } else {
        None
    }
}

/// No uptake in each of the last quarters given (the caller hands exactly the policy's
/// `no_uptake_quarters`, of a unit at or above `no_uptake_min_headcount`): possible if every
/// estimate is 0, certain if every interval's upper end is below one contact.
pub fn no_uptake(quarters: &[Num]) -> Option<Certainty> {
    if quarters.is_empty() {
        None
    } else if quarters.iter().all(|q| q.high < 1.0) {
        Some(Certainty::Certain)
    } else if quarters.iter().all(|q| q.estimate < 1.0) {
        Some(Certainty::Possible)
    } else {
        None
    }
}

/// A spike: a quarter's count against `ratio` times the unit's own baseline (the mean of its
/// `k` earlier quarters, counted as at least `min_expected` so that a usually quiet unit is not
/// flagged for a handful of contacts; the rule of the demo's story too), with DP noise in the
/// spread: `d = current − ratio·baseline` has variance `v·(1 + ratio²/k)` for per-cell noise
/// variance `v` (just `v` where the floor holds, as the floor has no noise). Possible if
/// `d > 0`, certain if its whole 95 % interval is above 0. Not judged with fewer than 2
/// baseline quarters.
pub fn spike(
    current: f64,
    baseline: &[f64],
    cell_variance: f64,
    ratio: f64,
    min_expected: f64,
) -> Option<Certainty> {
    if baseline.len() < 2 {
        return None;
    }
    let k = baseline.len() as f64;
    let mean = baseline.iter().sum::<f64>() / k;
    let (base, base_var) = if mean >= min_expected {
        (mean, cell_variance * ratio * ratio / k)
    } else {
        (min_expected, 0.0)
    };
    let d = current - ratio * base;
    let sd = (cell_variance + base_var).sqrt();
    if d - Z95 * sd > 0.0 {
        Some(Certainty::Certain)
    } else if d > 0.0 {
        Some(Certainty::Possible)
    } else {
        None
    }
}

/// Supporter load: supporter-periods at or above the policy's load threshold in a quarter;
/// possible if the estimate is at least 1, certain if the interval's lower end is.
pub fn supporter_load(loaded: &Num) -> Option<Certainty> {
    if loaded.low >= 1.0 {
        Some(Certainty::Certain)
    } else if loaded.estimate >= 1.0 {
        Some(Certainty::Possible)
    } else {
        None
    }
}

/// One alert rule's false-alarm rate and power, measured by simulation with real OpenDP noise
/// (`tests/it/dashboard.rs` reruns the simulation and checks these figures).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
pub struct RuleMethod {
    /// The rule (`low_uptake`, `no_uptake`, `spike`, `supporter_load`).
    pub rule: &'static str,
    /// The simulated situation without anything to alert on.
    pub null_case: &'static str,
    /// The simulated real change.
    pub change: &'static str,
    /// Share of null periods with a `possible` (or `certain`) alert.
    pub false_alarm_possible: f64,
    /// Share of null periods with a `certain` alert.
    pub false_alarm_certain: f64,
    /// Share of changed periods with a `possible` (or `certain`) alert.
    pub power_possible: f64,
    /// Share of changed periods with a `certain` alert.
    pub power_certain: f64,
}

/// The measured figures under the default policy (helse-vestfjord's units, ε 0.4 per unit
/// table, ε 0.2 per load table; 2,000 simulated quarters with and without the change, see
/// `tests/it/dashboard.rs`), rounded to 0.01. What they say: with this much noise a single
/// quarter rarely makes any rule `certain` (power 0–17 %), and `possible` alerts are often
/// noise (false alarms 4–46 %, the load rule worst, as its table has ε 0.2): a leader should
/// act on `certain` and look again at `possible` in the next quarter.
pub const METHODS: [RuleMethod; 4] = [
    RuleMethod {
        rule: "low_uptake",
        null_case: "a unit of 300 employees with 3 contacts in the quarter (1 per 100, 4 times the threshold of 0.25)",
        change: "the same unit with no contacts",
        false_alarm_possible: 0.21,
        false_alarm_certain: 0.01,
        power_possible: 0.66,
        power_certain: 0.04,
    },
    RuleMethod {
        rule: "no_uptake",
        null_case: "a unit of 520 employees with 3 contacts in each of 2 quarters",
        change: "the same unit with none in either quarter",
        false_alarm_possible: 0.04,
        false_alarm_certain: 0.0,
        power_possible: 0.4,
        power_certain: 0.0,
    },
    RuleMethod {
        rule: "spike",
        null_case: "a unit with 6 contacts in each of 4 baseline quarters and in the current one (threshold 2 x 6)",
        change: "the current quarter tripled to 18",
        false_alarm_possible: 0.08,
        false_alarm_certain: 0.0,
        power_possible: 0.88,
        power_certain: 0.17,
    },
    RuleMethod {
        rule: "supporter_load",
        null_case: "10 active supporters, none with 4 or more contacts in a month",
        change: "3 of them with 5 contacts in a month",
        false_alarm_possible: 0.46,
        false_alarm_certain: 0.02,
        power_possible: 0.68,
        power_certain: 0.04,
    },
];

/// An alert for a leader or coordinator.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Alert {
    /// `low_uptake`, `no_uptake`, `spike` or `supporter_load`.
    pub rule: &'static str,
    /// How sure it is.
    pub certainty: Certainty,
    /// The unit, if the alert is about one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// The (latest) quarter it is about.
    pub period: Period,
    /// The number it was decided on.
    pub value: Num,
    /// The threshold it was compared with, in the value's unit.
    pub threshold: f64,
    /// One sentence.
    pub text: Words,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alerts_say_certain_only_when_the_whole_interval_is_beyond() {
        let low = |e, l, h| low_uptake(&Num::new(e, l, h, 1), 0.25);
        assert_eq!(low(0.0, 0.0, 0.2), Some(Certainty::Certain));
        assert_eq!(low(0.0, 0.0, 1.2), Some(Certainty::Possible));
        assert_eq!(low(0.3, 0.0, 1.2), None);
        assert_eq!(
            spike(40.0, &[2.0, 3.0, 4.0, 3.0], 0.0, 2.0, 3.0),
            Some(Certainty::Certain)
        );
        assert_eq!(
            spike(5.0, &[1.0, 0.0, 1.0, 2.0], 0.0, 2.0, 3.0),
            None,
            "a quiet unit's baseline counts as 3: 5 is no spike"
        );
        assert_eq!(
            spike(44.0, &[0.0, 1.0, 1.0, 2.0], 12.5, 2.0, 3.0),
            Some(Certainty::Certain)
        );
        assert_eq!(
            spike(7.0, &[3.0, 3.0], 12.5, 2.0, 3.0),
            Some(Certainty::Possible)
        );
        assert_eq!(
            no_uptake(&vec![Num::new(0.0, 0.0, 0.0, 0); 2]),
            Some(Certainty::Certain)
        );
        assert_eq!(
            no_uptake(&vec![Num::new(0.0, 0.0, 6.0, 0); 2]),
            Some(Certainty::Possible)
        );
        assert_eq!(
            supporter_load(&Num::new(2.0, 0.0, 9.0, 0)),
            Some(Certainty::Possible)
        );
    }
}
