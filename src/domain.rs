//! Pure domain types: periods, identifiers, roles and the cell a tick counts in.
//!
//! This module owns the vocabulary every other layer speaks. It must not depend on axum, sled,
//! opendp, ring or tokio, so that it can be tested and reasoned about on its own.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::{Date, Duration, Month, Weekday};

/// How long one base period (or one release cadence) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    /// ISO week (Monday to Sunday), written `2026-W47`.
    Week,
    /// Calendar month, written `2026-11`.
    Month,
    /// Calendar quarter, written `2026-Q4`.
    Quarter,
    /// Calendar year, written `2026`.
    Year,
}

impl Granularity {
    /// The name used in policy files and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Week => "week",
            Granularity::Month => "month",
            Granularity::Quarter => "quarter",
            Granularity::Year => "year",
        }
    }

    /// The largest number of base periods of granularity `self` that fall in one period of
    /// `coarser` (weeks are placed by their Thursday, so a month holds 4 or 5 of them).
    /// `None` if `coarser` is finer than `self`.
    pub fn max_per(self, coarser: Granularity) -> Option<u32> {
        use Granularity::*;
        Some(match (self, coarser) {
            (a, b) if a == b => 1,
            (Week, Month) => 5,
            (Week, Quarter) => 14,
            (Week, Year) => 53,
            (Month, Quarter) => 3,
            (Month, Year) => 12,
            (Quarter, Year) => 4,
            _ => return None,
        })
    }

    /// How many periods of this granularity start in a year, at most.
    pub fn per_year(self) -> u32 {
        match self {
            Granularity::Week => 53,
            Granularity::Month => 12,
            Granularity::Quarter => 4,
            Granularity::Year => 1,
        }
    }
}

impl FromStr for Granularity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "week" => Ok(Granularity::Week),
            "month" => Ok(Granularity::Month),
            "quarter" => Ok(Granularity::Quarter),
            "year" => Ok(Granularity::Year),
            other => Err(format!(
                "`{other}` is not a period length; use week, month, quarter or year"
            )),
        }
    }
}

/// One period: the finest time unit the service ever records or reveals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Period {
    /// ISO week-numbering year and week 1..=53.
    Week { year: i32, week: u8 },
    /// Calendar year and month 1..=12.
    Month { year: i32, month: u8 },
    /// Calendar year and quarter 1..=4.
    Quarter { year: i32, quarter: u8 },
    /// Calendar year.
    Year { year: i32 },
}

impl Period {
    /// The last year a period given as text may be in. The period after one that ends a year
    /// is in the next year, and every period's end is the next one's start: a period of 9999
    /// would end in 10000, past the calendar the `time` crate represents, so its end could
    /// not be computed (a request naming `9999-12` panicked).
    pub const LAST_YEAR: i32 = 9998;

    /// The period of granularity `g` that contains `date`.
    pub fn containing(g: Granularity, date: Date) -> Period {
        match g {
            Granularity::Week => {
                let (year, week, _) = date.to_iso_week_date();
                Period::Week { year, week }
            }
            Granularity::Month => Period::Month {
                year: date.year(),
                month: date.month() as u8,
            },
            Granularity::Quarter => Period::Quarter {
                year: date.year(),
                quarter: (date.month() as u8 - 1) / 3 + 1,
            },
            Granularity::Year => Period::Year { year: date.year() },
        }
    }

    /// This period's granularity.
    pub fn granularity(&self) -> Granularity {
        match self {
            Period::Week { .. } => Granularity::Week,
            Period::Month { .. } => Granularity::Month,
            Period::Quarter { .. } => Granularity::Quarter,
            Period::Year { .. } => Granularity::Year,
        }
    }

    /// First day of the period.
    pub fn start(&self) -> Date {
        // The constructors only admit valid weeks, months and quarters, so these dates exist.
        match *self {
            Period::Week { year, week } => Date::from_iso_week_date(year, week, Weekday::Monday)
                .expect("period week validated at construction"),
            Period::Month { year, month } => Date::from_calendar_date(
                year,
                Month::try_from(month).expect("period month validated at construction"),
                1,
            )
            .expect("first of a valid month exists"),
            Period::Quarter { year, quarter } => Date::from_calendar_date(
                year,
                Month::try_from((quarter - 1) * 3 + 1).expect("quarter validated at construction"),
                1,
            )
            .expect("first of a valid month exists"),
            Period::Year { year } => {
                Date::from_calendar_date(year, Month::January, 1).expect("1 January exists")
            }
        }
    }

    /// The day after the period's last day.
    pub fn end(&self) -> Date {
        self.next().start()
    }

    /// The following period of the same granularity.
    pub fn next(&self) -> Period {
        match *self {
            Period::Week { .. } => {
                Period::containing(Granularity::Week, self.start() + Duration::weeks(1))
            }
            Period::Month { year, month: 12 } => Period::Month {
                year: year + 1,
                month: 1,
            },
            Period::Month { year, month } => Period::Month {
                year,
                month: month + 1,
            },
            Period::Quarter { year, quarter: 4 } => Period::Quarter {
                year: year + 1,
                quarter: 1,
            },
            Period::Quarter { year, quarter } => Period::Quarter {
                year,
                quarter: quarter + 1,
            },
            Period::Year { year } => Period::Year { year: year + 1 },
        }
    }

    /// The preceding period of the same granularity.
    pub fn prev(&self) -> Period {
        Period::containing(self.granularity(), self.start() - Duration::days(1))
    }

    /// The period of the coarser granularity `g` that this period belongs to. A week belongs to
    /// the month, quarter and year of its Thursday, so every week is in exactly one of each.
    pub fn within(&self, g: Granularity) -> Period {
        let anchor = match self {
            Period::Week { .. } => self.start() + Duration::days(3),
            _ => self.start(),
        };
        Period::containing(g, anchor)
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Period::Week { year, week } => write!(f, "{year:04}-W{week:02}"),
            Period::Month { year, month } => write!(f, "{year:04}-{month:02}"),
            Period::Quarter { year, quarter } => write!(f, "{year:04}-Q{quarter}"),
            Period::Year { year } => write!(f, "{year:04}"),
        }
    }
}

impl FromStr for Period {
    type Err = String;
    /// Parses `2026`, `2026-Q4`, `2026-11` or `2026-W47`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "`{s}` is not a period; write 2026-11 (month), 2026-W47 (week), 2026-Q4 (quarter) or 2026 (year)"
            )
        };
        let year_of = |y: &str| -> Result<i32, String> {
            if y.len() == 4 && y.bytes().all(|b| b.is_ascii_digit()) {
                y.parse()
                    .ok()
                    .filter(|y| *y <= Period::LAST_YEAR)
                    .ok_or_else(bad)
            } else {
                Err(bad())
            }
        };
        let num = |n: &str, max: u8| -> Result<u8, String> {
            if n.is_empty() || n.len() > 2 || !n.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            match n.parse::<u8>() {
                Ok(v) if (1..=max).contains(&v) => Ok(v),
                _ => Err(bad()),
            }
        };
        match s.split_once('-') {
            None => Ok(Period::Year { year: year_of(s)? }),
            Some((y, rest)) => {
                let year = year_of(y)?;
                if let Some(q) = rest.strip_prefix('Q') {
                    Ok(Period::Quarter {
                        year,
                        quarter: num(q, 4)?,
                    })
                } else if let Some(w) = rest.strip_prefix('W') {
                    if w.len() != 2 {
                        return Err(bad());
                    }
                    let week = num(w, 53)?;
                    Date::from_iso_week_date(year, week, Weekday::Monday).map_err(|_| bad())?;
                    Ok(Period::Week { year, week })
                } else if rest.len() == 2 {
                    Ok(Period::Month {
                        year,
                        month: num(rest, 12)?,
                    })
                } else {
                    Err(bad())
                }
            }
        }
    }
}

impl Serialize for Period {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// In the OpenAPI document (src/openapi.rs) a period is the string it serialises to.
impl utoipa::PartialSchema for Period {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::Type::String)
            .pattern(Some(r"^[0-9]{4}(-W[0-9]{2}|-[0-9]{2}|-Q[1-4])?$"))
            .description(Some(
                "A period: a year `2026`, quarter `2026-Q4`, month `2026-11` or ISO week `2026-W47`",
            ))
            .examples(["2026-11"])
            .into()
    }
}

impl utoipa::ToSchema for Period {}

impl<'de> Deserialize<'de> for Period {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The roles of docs/design.md, "Users and roles", from least to most trusted in what they may manage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Logs contact ticks for one organisation.
    Supporter,
    /// Runs an organisation's scheme; sees its releases and invites supporters.
    Coordinator,
    /// Reads an organisation's releases.
    Leader,
    /// Reads all releases, the ledger and the signing key.
    Researcher,
    /// Manages tokens, periods and releases; never sees raw counts.
    Admin,
}

impl Role {
    /// The name used in JSON and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Supporter => "supporter",
            Role::Coordinator => "coordinator",
            Role::Leader => "leader",
            Role::Researcher => "researcher",
            Role::Admin => "admin",
        }
    }

    /// Whether tokens of this role are scoped to one organisation.
    pub fn needs_org(self) -> bool {
        matches!(self, Role::Supporter | Role::Coordinator | Role::Leader)
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "supporter" => Ok(Role::Supporter),
            "coordinator" => Ok(Role::Coordinator),
            "leader" => Ok(Role::Leader),
            "researcher" => Ok(Role::Researcher),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "`{other}` is not a role; use supporter, coordinator, leader, researcher or admin"
            )),
        }
    }
}

/// Where a period is in its life (docs/design.md, "Lifecycle of a period").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PeriodState {
    /// Ticks are accepted (the current period, and the previous one during the grace days).
    Open,
    /// No more ticks; waiting for its releases to be drawn.
    Closed,
    /// Every release that ends with this period has been drawn; raw cells may still be needed by
    /// coarser releases (a quarter, a year) that have not ended yet.
    Released,
    /// Raw cells and pseudonyms are deleted; only the releases remain.
    Purged,
}

impl PeriodState {
    /// The name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            PeriodState::Open => "open",
            PeriodState::Closed => "closed",
            PeriodState::Released => "released",
            PeriodState::Purged => "purged",
        }
    }
}

/// One tag value for each of the policy's dimensions, keyed by dimension id. A `BTreeMap`, so the
/// order (and the stored key) is canonical whatever order the client sent.
pub type TagSet = BTreeMap<String, String>;

/// The raw counter a tick increments: nothing but policy ids and a period.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CellKey {
    /// The base period the contact happened in.
    pub period: Period,
    /// Organisation id from the policy.
    pub org: String,
    /// Unit id from the policy.
    pub unit: String,
    /// One value id for every dimension of the policy.
    pub tags: TagSet,
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    #[test]
    fn periods_round_trip_through_their_text() {
        for s in [
            "2026-11", "2026-W01", "2026-W53", "2026-Q4", "2026", "2027-01",
        ] {
            let p: Period = s.parse().unwrap();
            assert_eq!(p.to_string(), s);
        }
    }

    #[test]
    fn malformed_periods_are_refused_with_a_hint() {
        for s in [
            "2026-13",
            "2026-00",
            "2026-1",
            "26-11",
            "2026-Q5",
            "2025-W53",
            "2026-11-05",
            "",
            "x",
            "9999",
            "9999-12",
            "9999-W01",
            "9999-Q1",
        ] {
            let e = s.parse::<Period>().unwrap_err();
            assert!(e.contains("is not a period"), "{s}: {e}");
        }
    }

    #[test]
    fn the_last_periods_that_parse_have_an_end_and_a_start() {
        for s in [
            "9998", "9998-12", "9998-W52", "9998-Q4", "0000", "0000-01", "0000-W01",
        ] {
            let p: Period = s.parse().unwrap();
            assert!(p.end() > p.start(), "{s}");
            assert!(p.prev().end() == p.start(), "{s}");
        }
    }

    #[test]
    fn containing_and_boundaries_agree() {
        let p = Period::containing(Granularity::Month, date!(2026 - 12 - 31));
        assert_eq!(p.to_string(), "2026-12");
        assert_eq!(p.next().to_string(), "2027-01");
        assert_eq!(p.end(), date!(2027 - 01 - 01));
        assert_eq!(p.prev().to_string(), "2026-11");
        let w = Period::containing(Granularity::Week, date!(2026 - 11 - 23));
        assert_eq!(w.to_string(), "2026-W48");
        assert_eq!(w.start(), date!(2026 - 11 - 23));
        assert_eq!(w.next().start(), date!(2026 - 11 - 30));
        let q = Period::containing(Granularity::Quarter, date!(2026 - 11 - 23));
        assert_eq!(q.to_string(), "2026-Q4");
        assert_eq!(q.next().to_string(), "2027-Q1");
    }

    #[test]
    fn a_week_belongs_to_the_month_of_its_thursday() {
        // 2026-W53 runs Mon 28 Dec 2026 .. Sun 3 Jan 2027; its Thursday is 31 Dec 2026.
        let w: Period = "2026-W53".parse().unwrap();
        assert_eq!(w.within(Granularity::Month).to_string(), "2026-12");
        assert_eq!(w.within(Granularity::Year).to_string(), "2026");
        // 2027-W01 starts Mon 4 Jan 2027.
        let w: Period = "2027-W01".parse().unwrap();
        assert_eq!(w.within(Granularity::Quarter).to_string(), "2027-Q1");
    }
}

/// What the service keeps about a token: never the token itself, never a name or note.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenRecord {
    /// Public random id, for listing and revoking.
    pub id: String,
    /// What the holder may do.
    pub role: Role,
    /// The organisation the holder is scoped to (supporter, coordinator, leader).
    pub org: Option<String>,
    /// The base period in which the token was created (no finer time is kept).
    pub created: Period,
}

/// One released cell: the noisy value as drawn, and the post-processed estimate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReleaseCell {
    /// The cell's coordinates: breakdown name to value id (empty for a total).
    pub key: BTreeMap<String, String>,
    /// The unbiased noisy count exactly as drawn (may be negative).
    pub noisy: i64,
    /// The post-processed count: non-negative, integer, consistent with the period's total.
    pub estimate: u64,
    /// 95% interval for the true count around the estimate: it always contains `estimate`,
    /// never goes below 0, and covers the true count 95% of the time (see `release`, step 3).
    #[schema(min_items = 2, max_items = 2)]
    pub ci: [i64; 2],
    /// 95% interval for the true count around `noisy` (`noisy ± h`, h from OpenDP's accuracy
    /// helper; at least 95%). For researchers who work with the unbiased values; `[0, 0]` in
    /// releases drawn before it was recorded.
    #[serde(default)]
    #[schema(min_items = 2, max_items = 2)]
    pub noisy_ci: [i64; 2],
    /// Whether `estimate` is below the policy's display threshold (decided on noisy values).
    pub suppressed: bool,
}

/// One immutable release: a marginal of one organisation for one period, drawn once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Release {
    /// `PERIOD/ORG/MARGINAL`.
    pub id: String,
    /// The release's period (its cadence: a month, quarter or year).
    pub period: Period,
    /// Organisation id.
    pub org: String,
    /// Marginal id from the policy (`total` for the organisation total).
    pub marginal: String,
    /// `contacts` or `supporter_load`.
    pub kind: String,
    /// The breakdowns, as named in the policy (`unit`, a dimension id, `dimension.group`).
    pub dimensions: Vec<String>,
    /// The base periods whose raw cells it counts.
    pub covers: Vec<Period>,
    /// `discrete_laplace` or `discrete_gaussian`.
    pub mechanism: String,
    /// `contact` or `supporter`.
    pub privacy_unit: String,
    /// ε spent, as OpenDP's privacy map returned it (discrete Laplace).
    pub epsilon: Option<f64>,
    /// ρ spent, as OpenDP's privacy map returned it (discrete Gaussian).
    pub rho: Option<f64>,
    /// The sensitivity the spend was computed for.
    pub sensitivity: u32,
    /// Noise scale of ordinary cells.
    pub scale: f64,
    /// Noise scale of cells of sensitive values, if any.
    pub sensitive_scale: Option<f64>,
    /// Confidence level of `ci` and `noisy_ci` (0.95).
    pub confidence: f64,
    /// Estimates below this are suppressed for display.
    pub suppress_below: u32,
    /// The estimated organisation total every contacts marginal of this period sums to.
    pub total_estimate: u64,
    /// Sum of the cells' noise variances, for combining estimates later.
    pub noise_variance: f64,
    /// Every cell of the marginal's domain from the policy, zero cells included.
    pub cells: Vec<ReleaseCell>,
}

/// One line of the privacy ledger, written in the same transaction as its release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LedgerEntry {
    /// The release it paid for.
    pub release: String,
    /// Organisation id.
    pub org: String,
    /// Marginal id.
    pub marginal: String,
    /// The release's period.
    pub period: Period,
    /// The base periods it covers.
    pub covers: Vec<Period>,
    /// `epsilon` or `rho`.
    pub measure: String,
    /// The amount spent, from OpenDP's privacy map.
    pub spend: f64,
}
