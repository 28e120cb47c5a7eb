//! The leaders' and coordinators' dashboard: uptake, trend, breakdowns, outreach share,
//! supporter hours and threshold alerts, computed once here for the pages, the API
//! (`GET /api/v1/dashboard`) and later metrics, so they all agree.
//!
//! Everything is read from stored releases (post-processed, DP-noised), never from raw cells:
//! reading them is free post-processing and draws no noise. Each number carries its 95 %
//! interval (the release's `ci`, or one derived from the releases' noise variances) and words a
//! leader reads correctly, made by [`words`] alone. The alert rules are pure functions
//! ([`low_uptake`], [`no_uptake`], [`spike`], [`supporter_load`]) so a simulation test can
//! measure their false-alarm rate and power ([`METHODS`]) with the same code.

use super::*;
use crate::domain::ReleaseCell;
use crate::policy::Label;

/// The trigger whose contacts the outreach share is about (`utlosende_arsak` value id).
pub const SERIOUS_TRIGGER: &str = "alvorlig-hendelse";
/// The initiation value that counts as outreach (`initiering` value id).
pub const OUTREACH: &str = "oppsokende";
/// The `oppfolging` value of a first conversation: people helped, not talks.
pub const FIRST_CONVERSATION: &str = "forste";
/// Minutes assumed for each `varighet` class: the midpoint of a closed class; 120 minutes for
/// the open class "over 90" (an assumption stated on the dashboard).
pub const DURATION_MIDPOINTS_MIN: [(&str, f64); 4] = [
    ("under-15", 7.5),
    ("15-45", 30.0),
    ("45-90", 67.5),
    ("over-90", 120.0),
];
/// The breakdowns shown, by dimension id, each from the yearly one-dimension table.
pub const BREAKDOWNS: [&str; 4] = ["yrkesgruppe", "utlosende_arsak", "initiering", "kanal"];
/// How many earlier quarters of a unit make its baseline for the spike rule (at least 2).
pub const BASELINE_QUARTERS: usize = 4;
/// The normal quantile of a two-sided 95 % interval, for intervals derived from variances.
const Z95: f64 = 1.959_963_984_540_054;

/// Text in Norwegian bokmål and English.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Words {
    /// Norwegian bokmål (shown by default).
    pub nb: String,
    /// English.
    pub en: String,
}

/// One number as a leader may read it: the estimate with its 95 % interval, and whether it is
/// too small to show (then `words` says "under N" instead of the estimate).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Num {
    /// The post-processed estimate (never a raw count).
    pub estimate: f64,
    /// Lower end of the 95 % interval.
    pub low: f64,
    /// Upper end of the 95 % interval.
    pub high: f64,
    /// Too small to show: the estimate is below the policy's `suppress_below` (in this
    /// number's unit), decided on noisy values only.
    pub suppressed: bool,
    /// Below this (in this number's unit) it is suppressed; shown as "<limit".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<f64>,
    /// Decimals shown in `words`.
    #[serde(skip)]
    pub decimals: usize,
    /// "ca. 12 (trolig 8–16)" / "about 12 (likely 8–16)", from [`words`].
    pub words: Words,
}

impl Num {
    /// A number from an estimate and interval, with its words.
    pub fn new(estimate: f64, low: f64, high: f64, decimals: usize) -> Num {
        let mut n = Num {
            estimate,
            low: low.min(estimate),
            high: high.max(estimate),
            suppressed: false,
            limit: None,
            decimals,
            words: Words {
                nb: String::new(),
                en: String::new(),
            },
        };
        n.words = words(&n);
        n
    }

    /// A released cell's estimate and interval.
    pub fn from_cell(c: &ReleaseCell, suppress_below: u32) -> Num {
        let mut n = Num::new(c.estimate as f64, c.ci[0] as f64, c.ci[1] as f64, 0);
        n.suppress(c.suppressed, f64::from(suppress_below));
        n
    }

    /// This number times `factor` (per 100 employees, per month ...), interval and limit too.
    pub fn scaled(&self, factor: f64, decimals: usize) -> Num {
        let mut n = Num::new(
            self.estimate * factor,
            self.low * factor,
            self.high * factor,
            decimals,
        );
        if let Some(l) = self.limit {
            n.suppress(self.suppressed, l * factor);
        }
        n
    }

    /// Marks the number suppressed (or not) with its display limit, and redoes the words.
    fn suppress(&mut self, suppressed: bool, limit: f64) {
        self.suppressed = suppressed;
        self.limit = Some(limit);
        self.words = words(self);
    }
}

/// The one formatting function for numbers shown to people: "ca. 12 (trolig 8–16)" in bokmål,
/// "about 12 (likely 8–16)" in English, with a decimal comma in bokmål; a suppressed number is
/// "<3" (its limit), never a bare noisy digit. "Trolig"/"likely" means the 95 % interval, which
/// [`reading_note`] states once per page.
pub fn words(n: &Num) -> Words {
    let d = n.decimals;
    let fmt = |x: f64, comma: bool| {
        let s = format!(
            "{:.*}",
            d,
            if x.abs() < 0.5 * 10f64.powi(-(d as i32)) {
                0.0
            } else {
                x
            }
        );
        if comma { s.replace('.', ",") } else { s }
    };
    if n.suppressed {
        let limit = n.limit.unwrap_or(0.0);
        return Words {
            nb: format!("<{}", fmt(limit, true)),
            en: format!("<{}", fmt(limit, false)),
        };
    }
    Words {
        nb: format!(
            "ca. {} (trolig {}–{})",
            fmt(n.estimate, true),
            fmt(n.low, true),
            fmt(n.high, true)
        ),
        en: format!(
            "about {} (likely {}–{})",
            fmt(n.estimate, false),
            fmt(n.low, false),
            fmt(n.high, false)
        ),
    }
}

/// What "trolig"/"likely" and "<3" mean: stated once on every page that shows numbers.
pub fn reading_note(suppress_below: u32) -> Words {
    Words {
        nb: format!(
            "Tallene er tilsatt tilfeldig støy for å verne den enkelte og endres aldri etter at de er publisert. «ca. 12 (trolig 8–16)» betyr: beste anslag 12, og med 95 % sannsynlighet ligger det sanne tallet mellom 8 og 16. «<{suppress_below}» betyr for lite til å vises."
        ),
        en: format!(
            "The numbers carry random noise that protects each person, and never change once published. \"about 12 (likely 8–16)\" means: best estimate 12, and with 95 % probability the true number lies between 8 and 16. \"<{suppress_below}\" means too small to show."
        ),
    }
}

/// How sure an alert is (docs/domain.md, "Thresholds a dashboard shows").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Certainty {
    /// The whole 95 % interval is beyond the threshold.
    Certain,
    /// Only the estimate is beyond it.
    Possible,
}

impl Certainty {
    fn nb(self) -> &'static str {
        match self {
            Certainty::Certain => "sikkert",
            Certainty::Possible => "mulig",
        }
    }
    fn en(self) -> &'static str {
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
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
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
#[derive(Debug, Clone, Serialize)]
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

/// A unit's uptake in one quarter.
#[derive(Debug, Clone, Serialize)]
pub struct QuarterUptake {
    /// The quarter.
    pub period: Period,
    /// Contacts (all conversations) in the unit.
    pub contacts: Num,
    /// Contacts per 100 employees.
    pub per_100: Num,
}

/// One unit's uptake by quarter.
#[derive(Debug, Clone, Serialize)]
pub struct UnitUptake {
    /// Unit id.
    pub unit: String,
    /// Unit name.
    pub name: String,
    /// Employees (from the policy).
    pub headcount: u32,
    /// Quarters of the year released so far.
    pub quarters: Vec<QuarterUptake>,
}

/// People helped: first conversations over a year, from the `oppfolging` table.
#[derive(Debug, Clone, Serialize)]
pub struct FirstConversations {
    /// The table it comes from.
    pub table: String,
    /// The year.
    pub period: Period,
    /// First conversations in the organisation.
    pub first: Num,
    /// First conversations per 100 employees in the year.
    pub per_100: Num,
}

/// Uptake: by unit and quarter (all conversations) and, where the plan releases it, people
/// helped (first conversations) for the whole organisation by year.
#[derive(Debug, Clone, Serialize)]
pub struct Uptake {
    /// What the by-unit figures count, in words.
    pub basis: Words,
    /// By unit, per quarter.
    pub by_unit: Vec<UnitUptake>,
    /// The organisation's first conversations in the year, if released.
    pub first_conversations: Option<FirstConversations>,
}

/// One month of the trend.
#[derive(Debug, Clone, Serialize)]
pub struct TrendPoint {
    /// The month.
    pub period: Period,
    /// The organisation's contacts.
    pub total: Num,
}

/// One cell of a breakdown.
#[derive(Debug, Clone, Serialize)]
pub struct BreakdownCell {
    /// Value id.
    pub value: String,
    /// Value label.
    pub label: Label,
    /// Contacts.
    pub count: Num,
}

/// A yearly breakdown by one dimension.
#[derive(Debug, Clone, Serialize)]
pub struct Breakdown {
    /// The dimension id.
    pub dimension: String,
    /// Its label.
    pub label: Label,
    /// The table it comes from.
    pub table: String,
    /// The year.
    pub period: Period,
    /// Cells in the policy's order.
    pub cells: Vec<BreakdownCell>,
}

/// Outreach share after serious events.
#[derive(Debug, Clone, Serialize)]
pub struct OutreachShare {
    /// The table it comes from.
    pub table: String,
    /// The year.
    pub period: Period,
    /// Contacts after serious events.
    pub contacts: Num,
    /// Percent of them that were outreach (interval by the delta method from the cells' noise).
    pub percent: Num,
}

/// Estimated supporter hours.
#[derive(Debug, Clone, Serialize)]
pub struct SupporterHours {
    /// The table it comes from.
    pub table: String,
    /// The year.
    pub period: Period,
    /// Minutes assumed for each duration class.
    pub minutes_per_class: BTreeMap<String, f64>,
    /// Hours per month (the year's hours over the months it covers).
    pub per_month: Num,
    /// Hours in the year.
    pub per_year: Num,
    /// How it is estimated, in words.
    pub note: Words,
}

/// A quarter's supporter load (coordinators, researchers and admins only).
#[derive(Debug, Clone, Serialize)]
pub struct LoadPoint {
    /// The quarter.
    pub period: Period,
    /// Active supporter-months.
    pub active: Num,
    /// Supporter-months at or above the load threshold.
    pub loaded: Num,
}

/// What the dashboard shows for one organisation and year.
#[derive(Debug, Clone, Serialize)]
pub struct Dashboard {
    /// Organisation id.
    pub org: String,
    /// Organisation name.
    pub org_name: String,
    /// The year shown.
    pub year: i32,
    /// The confidence of every interval (0.95).
    pub confidence: f64,
    /// How to read the numbers: "95 %" stated once.
    pub reading_note: Words,
    /// Uptake.
    pub uptake: Uptake,
    /// The monthly totals.
    pub trend: Vec<TrendPoint>,
    /// Breakdowns by profession group, trigger, initiation and channel (once the year is
    /// released).
    pub breakdowns: Vec<Breakdown>,
    /// Outreach share after serious events.
    pub outreach_after_serious_events: Option<OutreachShare>,
    /// Supporter hours.
    pub supporter_hours: Option<SupporterHours>,
    /// Supporter load by quarter; `None` for leaders (never shown to them).
    pub load: Option<Vec<LoadPoint>>,
    /// Threshold alerts.
    pub alerts: Vec<Alert>,
    /// Each alert rule's measured false-alarm rate and power.
    pub methods: Vec<RuleMethod>,
}

/// The noise variance of one ordinary cell of `r`, from its mechanism and scale.
pub fn cell_variance(r: &Release) -> f64 {
    if r.mechanism == "discrete_laplace" {
        let q = (-1.0 / r.scale).exp();
        2.0 * q / ((1.0 - q) * (1.0 - q))
    } else {
        r.scale * r.scale
    }
}

/// An interval `x ± 1.96·sd`, cut at 0 below.
fn normal_num(x: f64, variance: f64, decimals: usize) -> Num {
    let h = Z95 * variance.max(0.0).sqrt();
    Num::new(x, (x - h).max(0.0), x + h, decimals)
}

fn year_of(p: &Period) -> i32 {
    p.start().year()
}

impl Service {
    /// The dashboard of organisation `org` (a leader's or coordinator's own when `None`) for
    /// `year` (the latest year with releases when `None`), from stored releases only. Scoped
    /// like releases; supporter load is left out for leaders.
    pub fn dashboard(
        &self,
        who: &Principal,
        org: Option<&str>,
        year: Option<i32>,
    ) -> Result<Dashboard, ServiceError> {
        let scope = self.read_scope(who, org)?;
        let org_id = scope.ok_or(ServiceError::InvalidField {
            field: "org",
            code: "missing_org",
            message: "name the organisation: `?org=ID`".into(),
        })?;
        let o = self
            .policy
            .org(&org_id)
            .ok_or_else(|| ServiceError::UnknownOrg(org_id.clone()))?;
        if let Some(y) = year.filter(|y| !(2000..=2100).contains(y)) {
            return Err(ServiceError::InvalidField {
                field: "year",
                code: "invalid_year",
                message: format!("{y} is not a year to show; use a year such as 2026"),
            });
        }
        let show_load = who.role != Role::Leader;
        let year = match year {
            Some(y) => y,
            None => self.latest_year(&org_id)?,
        };
        let releases = self.dashboard_releases(&org_id, year)?;
        Ok(build(&self.policy, o, year, &releases, show_load))
    }
}

impl Service {
    /// The year of the organisation's latest released base period (looked up by key prefix,
    /// back at most two years), or this year if none.
    fn latest_year(&self, org: &str) -> Result<i32, ServiceError> {
        let g = self.policy.granularity;
        let mut p = Period::containing(g, self.clock.today());
        for _ in 0..=2 * g.per_year() {
            if !self.store.releases(&format!("{p}/{org}/"))?.is_empty() {
                return Ok(year_of(&p));
            }
            p = p.prev();
        }
        Ok(self.clock.today().year())
    }

    /// The releases the dashboard of `org` for `year` reads, by key prefix (`PERIOD/ORG/`), so
    /// its cost does not grow with other organisations or other years: the year's base
    /// periods, its quarters and enough quarters before them for the spike baseline and the
    /// no-uptake window, and the year itself.
    fn dashboard_releases(&self, org: &str, year: i32) -> Result<Vec<Release>, ServiceError> {
        let y = Period::Year { year };
        let mut periods: BTreeSet<Period> =
            crate::release::base_periods_in(y, self.policy.granularity)
                .into_iter()
                .collect();
        let back = BASELINE_QUARTERS.max(self.policy.thresholds.no_uptake_quarters as usize);
        let mut q = Period::Quarter { year, quarter: 4 };
        for _ in 0..4 + back {
            periods.insert(q);
            q = q.prev();
        }
        periods.insert(y);
        let mut out = Vec::new();
        for p in periods {
            out.extend(self.store.releases(&format!("{p}/{org}/"))?);
        }
        Ok(out)
    }
}

/// The dashboard from an organisation's releases (pure: the simulation and benches call it).
pub fn build(
    policy: &Policy,
    org: &crate::policy::Org,
    year: i32,
    releases: &[Release],
    show_load: bool,
) -> Dashboard {
    let sb = policy.privacy.suppress_below;
    let th = &policy.thresholds;
    let in_year = |r: &&Release| year_of(&r.period) == year;
    let is_dims = |r: &Release, dims: &[&str]| {
        r.kind == "contacts"
            && r.dimensions
                .iter()
                .map(String::as_str)
                .eq(dims.iter().copied())
    };
    let cell = |r: &Release, axis: &str, value: &str| -> Option<ReleaseCell> {
        r.cells
            .iter()
            .find(|c| c.key.get(axis).map(String::as_str) == Some(value))
            .cloned()
    };

    // Uptake by unit and quarter: every unit table up to the year's end (history for alerts).
    let mut unit_tables: Vec<&Release> = releases
        .iter()
        .filter(|r| {
            is_dims(r, &["unit"]) && r.period.granularity() == crate::domain::Granularity::Quarter
        })
        .filter(|r| year_of(&r.period) <= year)
        .collect();
    unit_tables.sort_by_key(|r| r.period);
    let mut by_unit = Vec::new();
    let mut alerts = Vec::new();
    for u in &org.units {
        let hist: Vec<(Period, Num, f64)> = unit_tables
            .iter()
            .filter_map(|r| {
                cell(r, "unit", &u.id).map(|c| (r.period, Num::from_cell(&c, sb), cell_variance(r)))
            })
            .collect();
        let per100 = 100.0 / f64::from(u.headcount);
        let quarters: Vec<QuarterUptake> = hist
            .iter()
            .filter(|(p, _, _)| year_of(p) == year)
            .map(|(p, n, _)| QuarterUptake {
                period: *p,
                contacts: n.clone(),
                per_100: n.scaled(per100, 1),
            })
            .collect();
        if let Some(last) = quarters.last() {
            if let Some(c) = low_uptake(&last.per_100, th.low_uptake_per_100_per_quarter) {
                alerts.push(Alert {
                    rule: "low_uptake",
                    certainty: c,
                    unit: Some(u.id.clone()),
                    period: last.period,
                    value: last.per_100.clone(),
                    threshold: th.low_uptake_per_100_per_quarter,
                    text: Words {
                        nb: format!(
                            "Lav bruk ({}): {} i {} hadde {} samtaler per 100 ansatte i {}, under terskelen {}.",
                            c.nb(), u.name, org.name, last.per_100.words.nb, last.period,
                            format!("{}", th.low_uptake_per_100_per_quarter).replace('.', ",")
                        ),
                        en: format!(
                            "Low uptake ({}): {} in {} had {} conversations per 100 employees in {}, below the threshold of {}.",
                            c.en(), u.name, org.name, last.per_100.words.en, last.period,
                            th.low_uptake_per_100_per_quarter
                        ),
                    },
                });
            }
            let n = th.no_uptake_quarters as usize;
            let in_hist: Vec<&(Period, Num, f64)> =
                hist.iter().filter(|(p, _, _)| *p <= last.period).collect();
            if u.headcount >= th.no_uptake_min_headcount && n > 0 && in_hist.len() >= n {
                let window: Vec<Num> = in_hist[in_hist.len() - n..]
                    .iter()
                    .map(|h| h.1.clone())
                    .collect();
                if let Some(c) = no_uptake(&window) {
                    alerts.push(Alert {
                        rule: "no_uptake",
                        certainty: c,
                        unit: Some(u.id.clone()),
                        period: last.period,
                        value: last.contacts.clone(),
                        threshold: 1.0,
                        text: Words {
                            nb: format!(
                                "Ingen bruk ({}): {} i {} ({} ansatte) har ikke hatt registrerte samtaler de siste {n} kvartalene til og med {}.",
                                c.nb(), u.name, org.name, u.headcount, last.period
                            ),
                            en: format!(
                                "No uptake ({}): {} in {} ({} employees) has had no recorded conversations in the last {n} quarters up to {}.",
                                c.en(), u.name, org.name, u.headcount, last.period
                            ),
                        },
                    });
                }
            }
        }
        // Spikes: each quarter of the year against the quarters before it.
        for (i, (p, n, v)) in hist.iter().enumerate() {
            if year_of(p) != year {
                continue;
            }
            let base: Vec<f64> = hist[i.saturating_sub(BASELINE_QUARTERS)..i]
                .iter()
                .map(|h| h.1.estimate)
                .collect();
            if let Some(c) = spike(n.estimate, &base, *v, th.spike_ratio, th.spike_min_expected) {
                let mean =
                    (base.iter().sum::<f64>() / base.len() as f64).max(th.spike_min_expected);
                alerts.push(Alert {
                    rule: "spike",
                    certainty: c,
                    unit: Some(u.id.clone()),
                    period: *p,
                    value: n.clone(),
                    threshold: th.spike_ratio * mean,
                    text: Words {
                        nb: format!(
                            "Topp ({}): {} i {} hadde {} samtaler i {}, mer enn {} ganger sitt eget nivå (ca. {:.0} per kvartal).",
                            c.nb(), u.name, org.name, n.words.nb, p,
                            format!("{}", th.spike_ratio).replace('.', ","), mean
                        ),
                        en: format!(
                            "Spike ({}): {} in {} had {} conversations in {}, more than {} times its own level (about {:.0} a quarter).",
                            c.en(), u.name, org.name, n.words.en, p, th.spike_ratio, mean
                        ),
                    },
                });
            }
        }
        by_unit.push(UnitUptake {
            unit: u.id.clone(),
            name: u.name.clone(),
            headcount: u.headcount,
            quarters,
        });
    }

    let yearly = |dims: &[&str]| -> Option<&Release> {
        releases.iter().filter(in_year).find(|r| {
            is_dims(r, dims) && r.period.granularity() == crate::domain::Granularity::Year
        })
    };
    let headcount = f64::from(org.headcount());
    let first_conversations = yearly(&["oppfolging"]).and_then(|r| {
        let c = cell(r, "oppfolging", FIRST_CONVERSATION)?;
        let first = Num::from_cell(&c, sb);
        Some(FirstConversations {
            table: r.marginal.clone(),
            period: r.period,
            per_100: first.scaled(100.0 / headcount, 1),
            first,
        })
    });
    let basis = Words {
        nb: format!(
            "Bruk per enhet og kvartal teller alle samtaler (tabellen «unit»). {}",
            if first_conversations.is_some() {
                "Personer som har fått hjelp (første samtaler) vises for hele organisasjonen per år (tabellen «oppfolging»)."
            } else {
                "Første samtaler for året er ikke publisert ennå."
            }
        ),
        en: format!(
            "Uptake by unit and quarter counts all conversations (table `unit`). {}",
            if first_conversations.is_some() {
                "People helped (first conversations) are shown for the whole organisation by year (table `oppfolging`)."
            } else {
                "The year's first conversations are not released yet."
            }
        ),
    };

    let mut trend: Vec<TrendPoint> = releases
        .iter()
        .filter(in_year)
        .filter(|r| is_dims(r, &[]) && r.period.granularity() == policy.granularity)
        .filter_map(|r| {
            Some(TrendPoint {
                period: r.period,
                total: Num::from_cell(r.cells.first()?, sb),
            })
        })
        .collect();
    trend.sort_by_key(|t| t.period);

    let breakdowns = BREAKDOWNS
        .iter()
        .filter_map(|dim| {
            let d = policy.dimension(dim)?;
            let r = yearly(&[dim])?;
            Some(Breakdown {
                dimension: d.id.clone(),
                label: d.label.clone(),
                table: r.marginal.clone(),
                period: r.period,
                cells: d
                    .values
                    .iter()
                    .filter_map(|v| {
                        Some(BreakdownCell {
                            value: v.id.clone(),
                            label: v.label.clone(),
                            count: Num::from_cell(&cell(r, dim, &v.id)?, sb),
                        })
                    })
                    .collect(),
            })
        })
        .collect();

    let outreach = yearly(&["utlosende_arsak", "initiering"]).and_then(|r| {
        let row: Vec<&ReleaseCell> = r
            .cells
            .iter()
            .filter(|c| c.key.get("utlosende_arsak").map(String::as_str) == Some(SERIOUS_TRIGGER))
            .collect();
        let a = row
            .iter()
            .find(|c| c.key.get("initiering").map(String::as_str) == Some(OUTREACH))?
            .estimate as f64;
        let total: f64 = row.iter().map(|c| c.estimate as f64).sum();
        let b = total - a;
        let v = cell_variance(r);
        let contacts = {
            let mut n = normal_num(total, v * row.len() as f64, 0);
            n.suppress(total < f64::from(sb), f64::from(sb));
            n
        };
        let mut percent = if total > 0.0 {
            // Delta method for a/(a+b): var ≈ (b²·var_a + a²·var_b)/(a+b)⁴, var_b of the
            // row's other cells.
            let var = (b * b * v + a * a * v * (row.len() as f64 - 1.0)) / total.powi(4);
            let n = normal_num(100.0 * a / total, 1e4 * var, 0);
            Num::new(n.estimate, n.low, n.high.min(100.0), 0)
        } else {
            Num::new(0.0, 0.0, 100.0, 0)
        };
        // A share of too few contacts is not shown.
        if contacts.suppressed {
            percent.suppress(true, 0.0);
            percent.words = Words {
                nb: "–".into(),
                en: "–".into(),
            };
        }
        Some(OutreachShare {
            table: r.marginal.clone(),
            period: r.period,
            contacts,
            percent,
        })
    });

    let supporter_hours = yearly(&["varighet"]).and_then(|r| {
        let v = cell_variance(r);
        let (mut minutes, mut var) = (0.0, 0.0);
        let mut classes = BTreeMap::new();
        for (id, m) in DURATION_MIDPOINTS_MIN {
            let c = cell(r, "varighet", id)?;
            minutes += m * c.estimate as f64;
            var += m * m * v;
            classes.insert(id.to_string(), m);
        }
        let months = r.covers.len().max(1) as f64;
        let per_year = normal_num(minutes / 60.0, var / 3600.0, 0);
        Some(SupporterHours {
            table: r.marginal.clone(),
            period: r.period,
            minutes_per_class: classes,
            per_month: per_year.scaled(1.0 / months, 0),
            per_year,
            note: Words {
                nb: "Anslått fra varighetstabellen: hver samtale regnes med midten av sin varighetsklasse (7,5, 30 og 67,5 minutter; 120 for over 90). Intervallet gjelder støyen, ikke anslaget av varighet; gruppesamtaler registrert som flere kontakter telles flere ganger.".into(),
                en: "Estimated from the duration table: each conversation counts at the midpoint of its class (7.5, 30 and 67.5 minutes; 120 for over 90). The interval covers the noise, not the duration assumption; group sessions logged as several contacts count several times.".into(),
            },
        })
    });

    let load = show_load.then(|| {
        let mut points: Vec<LoadPoint> = releases
            .iter()
            .filter(in_year)
            .filter(|r| r.kind == "supporter_load")
            .filter_map(|r| {
                let get = |k: &str| {
                    r.cells
                        .iter()
                        .find(|c| {
                            c.key.get(crate::release::LOAD_AXIS).map(String::as_str) == Some(k)
                        })
                        .map(|c| Num::from_cell(c, sb))
                };
                Some(LoadPoint {
                    period: r.period,
                    active: get(crate::release::LOAD_ACTIVE)?,
                    loaded: get(crate::release::LOAD_AT_THRESHOLD)?,
                })
            })
            .collect();
        points.sort_by_key(|p| p.period);
        points
    });
    if let Some((last, c)) = load
        .as_ref()
        .and_then(|l| l.last())
        .and_then(|last| Some((last, supporter_load(&last.loaded)?)))
    {
        alerts.push(Alert {
            rule: "supporter_load",
            certainty: c,
            unit: None,
            period: last.period,
            value: last.loaded.clone(),
            threshold: 1.0,
            text: Words {
                nb: format!(
                    "Belastning ({}): i {} hadde støttepersoner {} måneder med {} eller flere samtaler i {}. Følg opp støttepersonene og sett av tid.",
                    c.nb(), org.name, last.loaded.words.nb, th.load_contacts_per_period, last.period
                ),
                en: format!(
                    "Load ({}): in {} supporters had {} months with {} or more conversations in {}. Follow the supporters up and set time aside.",
                    c.en(), org.name, last.loaded.words.en, th.load_contacts_per_period, last.period
                ),
            },
        });
    }

    Dashboard {
        org: org.id.clone(),
        org_name: org.name.clone(),
        year,
        confidence: crate::dp::CONFIDENCE,
        reading_note: reading_note(sb),
        uptake: Uptake {
            basis,
            by_unit,
            first_conversations,
        },
        trend,
        breakdowns,
        outreach_after_serious_events: outreach,
        supporter_hours,
        load,
        alerts,
        methods: METHODS.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_state_estimate_and_interval_with_a_decimal_comma_in_bokmal() {
        let n = Num::new(12.0, 8.0, 16.0, 0);
        assert_eq!(n.words.nb, "ca. 12 (trolig 8–16)");
        assert_eq!(n.words.en, "about 12 (likely 8–16)");
        let r = Num::new(12.0, 8.0, 16.0, 0).scaled(100.0 / 480.0, 1);
        assert_eq!(r.words.nb, "ca. 2,5 (trolig 1,7–3,3)");
        assert_eq!(r.words.en, "about 2.5 (likely 1.7–3.3)");
    }

    #[test]
    fn a_suppressed_number_shows_its_limit_never_a_digit_of_noise() {
        let c = ReleaseCell {
            key: BTreeMap::new(),
            noisy: 1,
            estimate: 2,
            ci: [0, 7],
            noisy_ci: [-5, 7],
            suppressed: true,
        };
        let n = Num::from_cell(&c, 3);
        assert_eq!(n.words.nb, "<3");
        assert_eq!(n.scaled(100.0 / 200.0, 1).words.en, "<1.5");
    }

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
