//! The leaders' and coordinators' dashboard page (`/dashboard`) and the methods page
//! (`/methods`), server-rendered from [`Service::dashboard`] alone, so the page, the API and
//! later metrics show the same numbers. No JavaScript: charts are SVG drawn on the server
//! ([`super::charts`]), each with a table of the same numbers beside it.
//!
//! Scope is the service's: a leader or coordinator sees their own organisation (another's is
//! a 403 page); admins and researchers pick one. The supporter-load indicator and the open
//! follow-up requests are shown to coordinators only. Every number is shown in words
//! ("ca. 12 (trolig 8–16)") with "95 %" said once, in the reading panel; a number too small to
//! show is [`SUPPRESSED`] in every table, explained in the same panel. The panel is the page's
//! own text rather than the service's `reading_note`, which explains the API's "<3" words.

use askama::Template;
use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use serde::Deserialize;

use super::charts::{self, Labels, Point, Row};
use super::{Ctx, Lang, MessagePage, Tr, html, version};
use crate::domain::Role;
use crate::service::{Certainty, Dashboard, METHODS, Num, Service, ServiceError, Words};

/// The one symbol of a number too small to show (Statistics Norway's symbol for a figure not
/// shown for confidentiality), explained in every page's legend.
pub const SUPPRESSED: &str = ":";

/// The dashboard's and the methods page's routes.
pub fn routes() -> Router<Service> {
    Router::new()
        .route("/dashboard", get(dashboard))
        .route("/methods", get(methods))
}

/// One table cell: a number in words, or the symbol.
struct Cell {
    text: String,
    hidden: bool,
}

/// One table row.
struct TableRow {
    label: String,
    cells: Vec<Cell>,
}

/// A table of numbers, with a caption.
struct Table {
    caption: String,
    head: Vec<String>,
    rows: Vec<TableRow>,
}

/// A chart with the table of its numbers beside it.
struct Figure {
    id: String,
    title: String,
    /// The chart, `role="img"` with title and description (rendered unescaped: it is
    /// plotters' SVG, whose every text is escaped by [`charts`]).
    svg: String,
    table: Table,
}

/// An alert as shown.
struct AlertView {
    certain: bool,
    tag: String,
    text: String,
}

/// One organisation in the admin's and researcher's picker.
struct OrgChoice {
    id: String,
    name: String,
    selected: bool,
}

#[derive(Template)]
#[template(path = "dashboard.html")]
struct DashboardPage {
    t: Tr,
    v: &'static str,
    other_lang: &'static str,
    here: String,
    signout_csrf: Option<String>,
    org_name: String,
    year: i32,
    /// Organisations to pick from (admins and researchers only).
    picker: Vec<OrgChoice>,
    /// Links to the year before and (up to this year) after: `(href, year)`.
    years: Vec<(String, i32)>,
    basis: String,
    first: Option<String>,
    pending: Option<String>,
    alerts: Vec<AlertView>,
    uptake: Option<Figure>,
    trend: Option<Figure>,
    breakdowns: Vec<Figure>,
    outreach: Option<String>,
    hours: Option<(String, String, String)>,
    /// Coordinators only.
    load: Option<Table>,
    /// Coordinators only: names given at invite.
    followups: Option<Vec<String>>,
}

/// One alert rule's measured figures, as shown on the methods page.
struct RuleView {
    name: String,
    null_case: String,
    change: String,
    false_alarm_possible: String,
    false_alarm_certain: String,
    power_possible: String,
    power_certain: String,
}

#[derive(Template)]
#[template(path = "methods.html")]
struct MethodsPage {
    t: Tr,
    v: &'static str,
    other_lang: &'static str,
    here: String,
    signout_csrf: Option<String>,
    rules: Vec<RuleView>,
}

/// Query of the dashboard: organisation (admins, researchers) and year.
#[derive(Deserialize)]
struct DashQuery {
    #[serde(default)]
    org: Option<String>,
    #[serde(default)]
    year: Option<String>,
}

fn said(lang: Lang, w: &Words) -> String {
    match lang {
        Lang::Nb => w.nb.clone(),
        Lang::En => w.en.clone(),
    }
}

fn cell(lang: Lang, n: &Num) -> Cell {
    if n.suppressed {
        Cell {
            text: SUPPRESSED.into(),
            hidden: true,
        }
    } else {
        Cell {
            text: said(lang, &n.words),
            hidden: false,
        }
    }
}

fn point(n: &Num) -> Point {
    Point {
        estimate: n.estimate,
        low: n.low,
        high: n.high,
        hidden: n.suppressed,
    }
}

/// A percentage for the methods page: `21 %`.
fn percent(x: f64) -> String {
    format!("{:.0} %", 100.0 * x)
}

fn error_page(ctx: &Ctx, e: &ServiceError) -> Response {
    let t = ctx.t();
    let (status, body) = match e {
        ServiceError::WrongOrg(_) | ServiceError::WrongRole { .. } => {
            (StatusCode::FORBIDDEN, t.get("dash-forbidden"))
        }
        ServiceError::UnknownOrg(_) | ServiceError::UnknownFilter { .. } => {
            (StatusCode::NOT_FOUND, t.get("dash-unknown-org"))
        }
        ServiceError::InvalidField { .. } => (StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
        _ => (StatusCode::SERVICE_UNAVAILABLE, t.get("error-retry")),
    };
    html(
        status,
        MessagePage {
            t,
            v: version(),
            other_lang: ctx.lang.other().code(),
            here: "/dashboard".into(),
            signout_csrf: ctx.signout_csrf(),
            title: t.get("error-title"),
            body,
        }
        .render(),
    )
}

/// `GET /dashboard?org=ID&year=YYYY`: the dashboard of the signed-in leader's or
/// coordinator's organisation, or of the organisation an admin or researcher picks (the
/// policy's first by default).
async fn dashboard(
    State(svc): State<Service>,
    ctx: Ctx,
    query: Result<Query<DashQuery>, QueryRejection>,
) -> Response {
    let Some(who) = ctx.principal().cloned() else {
        return Redirect::to("/").into_response();
    };
    let q = query.map(|Query(q)| q).unwrap_or(DashQuery {
        org: None,
        year: None,
    });
    let year = match q.year.as_deref().filter(|y| !y.is_empty()) {
        None => None,
        Some(y) => match y.parse::<i32>() {
            Ok(y) => Some(y),
            Err(_) => {
                let e = ServiceError::InvalidField {
                    field: "year",
                    code: "invalid_year",
                    message: format!("{y:?} is not a year; use a year such as 2026"),
                };
                return error_page(&ctx, &e);
            }
        },
    };
    let picks = matches!(who.role, Role::Admin | Role::Researcher);
    let org = q.org.filter(|o| !o.is_empty()).or_else(|| {
        picks
            .then(|| svc.current_policy().orgs.first().map(|o| o.id.clone()))
            .flatten()
    });
    let coordinator = who.role == Role::Coordinator;
    let (svc2, who2) = (svc.clone(), who.clone());
    let got = tokio::task::spawn_blocking(move || {
        let d = svc2.dashboard(&who2, org.as_deref(), year)?;
        let f = if coordinator {
            Some(svc2.followups(&who2)?)
        } else {
            None
        };
        Ok::<_, ServiceError>((d, f))
    })
    .await;
    let (d, followups) = match got {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return error_page(&ctx, &e),
        Err(_) => {
            return super::unavailable(&ctx);
        }
    };
    let t = ctx.t();
    let picker = if picks {
        svc.current_policy()
            .orgs
            .iter()
            .map(|o| OrgChoice {
                id: o.id.clone(),
                name: o.name.clone(),
                selected: o.id == d.org,
            })
            .collect()
    } else {
        Vec::new()
    };
    let followups = followups.map(|list| {
        list.into_iter()
            .map(|f| {
                if f.name.is_empty() {
                    t.get("dash-followup-unnamed")
                } else {
                    f.name
                }
            })
            .collect()
    });
    let mut page = page(&ctx, &d, picker, followups, coordinator);
    let org_param = if picks {
        format!("org={}&", d.org)
    } else {
        String::new()
    };
    page.years = [d.year - 1, d.year + 1]
        .into_iter()
        .filter(|y| *y <= svc.today().year())
        .map(|y| (format!("/dashboard?{org_param}year={y}"), y))
        .collect();
    html(StatusCode::OK, page.render())
}

/// The page's parts from the dashboard.
fn page(
    ctx: &Ctx,
    d: &Dashboard,
    picker: Vec<OrgChoice>,
    followups: Option<Vec<String>>,
    coordinator: bool,
) -> DashboardPage {
    let (t, lang) = (ctx.t(), ctx.lang);
    let quarters: Vec<crate::domain::Period> = {
        let mut q: Vec<_> = d
            .uptake
            .by_unit
            .iter()
            .flat_map(|u| u.quarters.iter().map(|q| q.period))
            .collect();
        q.sort();
        q.dedup();
        q
    };
    let uptake = (!quarters.is_empty()).then(|| {
        let rows: Vec<(String, Vec<Option<&Num>>)> = d
            .uptake
            .by_unit
            .iter()
            .map(|u| {
                let nums = quarters
                    .iter()
                    .map(|p| {
                        u.quarters
                            .iter()
                            .find(|q| q.period == *p)
                            .map(|q| &q.per_100)
                    })
                    .collect();
                (u.name.clone(), nums)
            })
            .collect();
        let series: Vec<String> = quarters.iter().map(ToString::to_string).collect();
        let title = t.get("dash-uptake-title");
        let svg = charts::intervals(
            &Labels {
                id: "chart-uptake",
                title: &title,
                desc: &t.get("dash-uptake-desc"),
            },
            &series,
            &rows
                .iter()
                .map(|(label, nums)| Row {
                    label: label.clone(),
                    points: nums.iter().map(|n| n.map(point)).collect(),
                })
                .collect::<Vec<_>>(),
        );
        Figure {
            id: "uptake".into(),
            title: title.clone(),
            svg,
            table: Table {
                caption: title,
                head: std::iter::once(t.get("dash-unit"))
                    .chain(series.iter().cloned())
                    .collect(),
                rows: rows
                    .iter()
                    .map(|(label, nums)| TableRow {
                        label: label.clone(),
                        cells: nums
                            .iter()
                            .map(|n| match n {
                                Some(n) => cell(lang, n),
                                None => Cell {
                                    text: "–".into(),
                                    hidden: false,
                                },
                            })
                            .collect(),
                    })
                    .collect(),
            },
        }
    });
    let trend = (!d.trend.is_empty()).then(|| {
        let title = t.get("dash-trend-title");
        let ticks: Vec<String> = d.trend.iter().map(|p| p.period.to_string()).collect();
        let svg = charts::band(
            &Labels {
                id: "chart-trend",
                title: &title,
                desc: &t.get("dash-trend-desc"),
            },
            &ticks,
            &d.trend.iter().map(|p| point(&p.total)).collect::<Vec<_>>(),
        );
        Figure {
            id: "trend".into(),
            title: title.clone(),
            svg,
            table: Table {
                caption: title,
                head: vec![t.get("dash-month"), t.get("dash-contacts")],
                rows: d
                    .trend
                    .iter()
                    .map(|p| TableRow {
                        label: p.period.to_string(),
                        cells: vec![cell(lang, &p.total)],
                    })
                    .collect(),
            },
        }
    });
    let breakdowns = d
        .breakdowns
        .iter()
        .map(|b| {
            let title = format!("{} ({})", t.label(&b.label), b.period);
            let id = format!("chart-{}", b.dimension.replace('_', "-"));
            let svg = charts::intervals(
                &Labels {
                    id: &id,
                    title: &title,
                    desc: &t.get("dash-breakdown-desc"),
                },
                &[],
                &b.cells
                    .iter()
                    .map(|c| Row {
                        label: t.label(&c.label).to_string(),
                        points: vec![Some(point(&c.count))],
                    })
                    .collect::<Vec<_>>(),
            );
            Figure {
                id: b.dimension.replace('_', "-"),
                title: title.clone(),
                svg,
                table: Table {
                    caption: title,
                    head: vec![t.label(&b.label).to_string(), t.get("dash-contacts")],
                    rows: b
                        .cells
                        .iter()
                        .map(|c| TableRow {
                            label: t.label(&c.label).to_string(),
                            cells: vec![cell(lang, &c.count)],
                        })
                        .collect(),
                },
            }
        })
        .collect();
    let mut alerts: Vec<AlertView> = d
        .alerts
        .iter()
        .map(|a| AlertView {
            certain: a.certainty == Certainty::Certain,
            tag: t.get(match a.certainty {
                Certainty::Certain => "dash-certain",
                Certainty::Possible => "dash-possible",
            }),
            text: said(lang, &a.text),
        })
        .collect();
    alerts.sort_by_key(|a| !a.certain);
    let load = d.load.as_ref().filter(|_| coordinator).map(|l| Table {
        caption: t.get("dash-load-title"),
        head: vec![
            t.get("dash-quarter"),
            t.get("dash-load-active"),
            t.get("dash-load-loaded"),
        ],
        rows: l
            .iter()
            .map(|p| TableRow {
                label: p.period.to_string(),
                cells: vec![cell(lang, &p.active), cell(lang, &p.loaded)],
            })
            .collect(),
    });
    DashboardPage {
        t,
        v: version(),
        other_lang: ctx.lang.other().code(),
        here: "/dashboard".into(),
        signout_csrf: ctx.signout_csrf(),
        org_name: d.org_name.clone(),
        year: d.year,
        picker,
        years: Vec::new(),
        basis: said(lang, &d.uptake.basis),
        first: d.uptake.first_conversations.as_ref().map(|f| {
            let n = cell(lang, &f.per_100).text;
            format!("{} {} ({})", t.get("dash-first"), n, f.period)
        }),
        pending: d.yearly_pending.as_ref().map(|w| said(lang, w)),
        alerts,
        uptake,
        trend,
        breakdowns,
        outreach: d
            .outreach_after_serious_events
            .as_ref()
            .map(|o| format!("{} {}", t.get("dash-outreach"), cell(lang, &o.percent).text)),
        hours: d.supporter_hours.as_ref().map(|h| {
            (
                cell(lang, &h.per_month).text,
                cell(lang, &h.per_year).text,
                said(lang, &h.note),
            )
        }),
        load,
        followups: followups.filter(|_| coordinator),
    }
}

/// `GET /methods`: what is counted, why the numbers are noisy and never change, what ε means,
/// how alerts decide, and each rule's measured false-alarm rate and power. Open to anyone: it
/// holds no number of any organisation.
async fn methods(ctx: Ctx) -> Response {
    let t = ctx.t();
    let rules = METHODS
        .iter()
        .map(|m| RuleView {
            name: t.get(&format!("methods-rule-{}", m.rule)),
            null_case: t.get(&format!("methods-null-{}", m.rule)),
            change: t.get(&format!("methods-change-{}", m.rule)),
            false_alarm_possible: percent(m.false_alarm_possible),
            false_alarm_certain: percent(m.false_alarm_certain),
            power_possible: percent(m.power_possible),
            power_certain: percent(m.power_certain),
        })
        .collect();
    html(
        StatusCode::OK,
        MethodsPage {
            t,
            v: version(),
            other_lang: ctx.lang.other().code(),
            here: "/methods".into(),
            signout_csrf: ctx.signout_csrf(),
            rules,
        }
        .render(),
    )
}
