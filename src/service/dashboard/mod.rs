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
//!
//! | file | what |
//! | --- | --- |
//! | `mod.rs` | [`Dashboard`] and its parts, which releases it reads, how it is built |
//! | `numbers.rs` | [`Num`] and [`words`]: every number with its interval and words |
//! | `alerts.rs` | the alert rules, [`Certainty`] and their measured [`METHODS`] |

mod alerts;
mod numbers;

use super::*;
use crate::domain::ReleaseCell;
use crate::policy::Label;
pub use alerts::*;
pub use numbers::*;

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

/// A unit's uptake in one quarter.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct QuarterUptake {
    /// The quarter.
    pub period: Period,
    /// Contacts (all conversations) in the unit.
    pub contacts: Num,
    /// Contacts per 100 employees.
    pub per_100: Num,
}

/// One unit's uptake by quarter.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Uptake {
    /// What the by-unit figures count, in words.
    pub basis: Words,
    /// By unit, per quarter.
    pub by_unit: Vec<UnitUptake>,
    /// The organisation's first conversations in the year, if released.
    pub first_conversations: Option<FirstConversations>,
}

/// One month of the trend.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TrendPoint {
    /// The month.
    pub period: Period,
    /// The organisation's contacts.
    pub total: Num,
}

/// One cell of a breakdown.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BreakdownCell {
    /// Value id.
    pub value: String,
    /// Value label.
    pub label: Label,
    /// Contacts.
    pub count: Num,
}

/// A yearly breakdown by one dimension.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LoadPoint {
    /// The quarter.
    pub period: Period,
    /// Active supporter-months.
    pub active: Num,
    /// Supporter-months at or above the load threshold.
    pub loaded: Num,
}

/// What the dashboard shows for one organisation and year.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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
    /// Said while the year's yearly tables (breakdowns, outreach share, hours, first
    /// conversations) are not released: they come after the year ends.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub yearly_pending: Option<Words>,
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

/// A threshold from the policy in bokmål: decimal comma, no trailing zeros (`0,25`, `2`).
fn nb_number(x: f64) -> String {
    format!("{x}").replace('.', ",")
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
                            "Lav bruk ({}): for {} i {} i {} er anslaget under terskelen på {} samtaler per 100 ansatte (vist: {}).",
                            c.nb(), u.name, org.name, last.period,
                            nb_number(th.low_uptake_per_100_per_quarter), last.per_100.words.nb
                        ),
                        en: format!(
                            "Low uptake ({}): for {} in {} in {} the estimate is below the threshold of {} conversations per 100 employees (shown: {}).",
                            c.en(), u.name, org.name, last.period,
                            th.low_uptake_per_100_per_quarter, last.per_100.words.en
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
                                "Ingen bruk ({}): for {} i {} ({} ansatte) er anslaget 0 samtaler i hvert av de siste {n} kvartalene til og med {}.",
                                c.nb(), u.name, org.name, u.headcount, last.period
                            ),
                            en: format!(
                                "No uptake ({}): for {} in {} ({} employees) the estimate is 0 conversations in each of the last {n} quarters up to {}.",
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
                let usual = base.iter().sum::<f64>() / base.len() as f64;
                let mean = usual.max(th.spike_min_expected);
                let (floor_nb, floor_en) = if usual < th.spike_min_expected {
                    (
                        format!(", regnet som minst {}", nb_number(th.spike_min_expected)),
                        format!(", counted as at least {}", th.spike_min_expected),
                    )
                } else {
                    (String::new(), String::new())
                };
                alerts.push(Alert {
                    rule: "spike",
                    certainty: c,
                    unit: Some(u.id.clone()),
                    period: *p,
                    value: n.clone(),
                    threshold: th.spike_ratio * mean,
                    text: Words {
                        nb: format!(
                            "Topp ({}): {} i {} hadde {} samtaler i {}, mer enn {} ganger sitt vanlige nivå (ca. {} per kvartal{floor_nb}).",
                            c.nb(), u.name, org.name, n.words.nb, p,
                            nb_number(th.spike_ratio), nb_number((usual * 10.0).round() / 10.0)
                        ),
                        en: format!(
                            "Spike ({}): {} in {} had {} conversations in {}, more than {} times its usual level (about {} a quarter{floor_en}).",
                            c.en(), u.name, org.name, n.words.en, p, th.spike_ratio, (usual * 10.0).round() / 10.0
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
        yearly_pending: (!releases
            .iter()
            .any(|r| r.period == Period::Year { year }))
        .then(|| Words {
            nb: format!(
                "Årstallene for {year} (fordelinger, oppsøkende andel, timer og første samtaler) publiseres etter at året er omme; se {} for året før.",
                year - 1
            ),
            en: format!(
                "The yearly figures for {year} (breakdowns, outreach share, hours and first conversations) are released after the year ends; see {} for the year before.",
                year - 1
            ),
        }),
        outreach_after_serious_events: outreach,
        supporter_hours,
        load,
        alerts,
        methods: METHODS.to_vec(),
    }
}
