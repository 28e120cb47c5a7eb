//! The researchers' export page (`/export`, researcher and admin): pick periods, an
//! organisation and a table, download the signed releases as CSV or JSON, see the ε spent
//! (the privacy ledger from [`Service::budget`]) and the signing key, and how to check a
//! download offline. Downloads are the API's own signed answers (`GET /api/v1/releases` and
//! `GET /api/v1/releases.sig`), served as files to the signed-in browser.

use askama::Template;
use axum::extract::{Query, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Redirect, Response};

use super::{Ctx, Tr, html, message, unavailable, version};
use crate::api::{AppQuery, ReleaseQuery};
use crate::domain::Role;
use crate::service::{Principal, Service};

/// Releases in one download when the form does not say: the API's largest page, so a year
/// of the national scale (about 700 releases) comes in one file.
const DOWNLOAD_LIMIT: &str = "1000";

/// The query fields a download passes on to the API; anything else is dropped.
const DOWNLOAD_FIELDS: [&str; 8] = [
    "org", "marginal", "from", "to", "period", "format", "lang", "cursor",
];

/// One `<option>`.
struct Opt {
    value: String,
    label: String,
}

/// One row of the ledger table: an organisation's spend.
struct LedgerRow {
    org: String,
    /// The newest base period with spend, and its spent and remaining budget.
    period: String,
    spent: String,
    remaining: String,
    /// The most spent in any 365 days, and the rolling-year cap.
    year_spent: String,
    year_cap: String,
}

#[derive(Template)]
#[template(path = "export.html")]
struct ExportPage {
    t: Tr,
    v: &'static str,
    other_lang: &'static str,
    here: String,
    signout_csrf: Option<String>,
    orgs: Vec<Opt>,
    marginals: Vec<Opt>,
    measure: String,
    budget: String,
    ledger: Vec<LedgerRow>,
    public_key: String,
}

/// The signed-in person if their role is one of `roles` (`Err`: the answer to send
/// instead: to sign-in, or a refusal). Boxed, as a response is large.
pub(super) fn signed_in_as(ctx: &Ctx, roles: &[Role]) -> Result<Principal, Box<Response>> {
    match ctx.principal() {
        None => Err(Box::new(Redirect::to("/").into_response())),
        Some(p) if roles.contains(&p.role) => Ok(p.clone()),
        Some(_) => Err(Box::new(message(
            ctx,
            StatusCode::FORBIDDEN,
            "error-title",
            "role-refused",
        ))),
    }
}

/// The signed-in researcher or admin.
fn reader(ctx: &Ctx) -> Result<Principal, Box<Response>> {
    signed_in_as(ctx, &[Role::Researcher, Role::Admin])
}

/// A privacy figure with three decimals (the ledger's exact values are in the API).
fn fig(x: f64) -> String {
    format!("{x:.3}")
}

/// `GET /export`: the form, the ledger and the signing key.
pub async fn export_page(State(svc): State<Service>, ctx: Ctx) -> Response {
    let who = match reader(&ctx) {
        Ok(w) => w,
        Err(r) => return *r,
    };
    let t = ctx.t();
    let policy = svc.current_policy();
    let mut orgs = vec![Opt {
        value: String::new(),
        label: t.get("export-all-orgs"),
    }];
    orgs.extend(policy.orgs.iter().map(|o| Opt {
        value: o.id.clone(),
        label: o.name.clone(),
    }));
    let mut marginals = vec![Opt {
        value: String::new(),
        label: t.get("export-all-tables"),
    }];
    marginals.extend(policy.marginals.iter().map(|m| Opt {
        value: m.id.clone(),
        label: if m.axis_names.is_empty() {
            format!("{} ({})", m.id, m.cadence.as_str())
        } else {
            format!(
                "{}: {} ({})",
                m.id,
                m.axis_names.join(" × "),
                m.cadence.as_str()
            )
        },
    }));
    let budget = {
        let svc = svc.clone();
        tokio::task::spawn_blocking(move || svc.budget(&who)).await
    };
    let Ok(Ok(budget)) = budget else {
        return unavailable(&ctx);
    };
    let num = |v: &serde_json::Value| v.as_f64().map(fig).unwrap_or_default();
    let ledger = budget["orgs"]
        .as_array()
        .map(|orgs| {
            orgs.iter()
                .map(|o| {
                    let last = o["periods"]
                        .as_array()
                        .and_then(|p| p.last())
                        .cloned()
                        .unwrap_or_default();
                    LedgerRow {
                        org: o["org"].as_str().unwrap_or_default().to_string(),
                        period: last["period"].as_str().unwrap_or("–").to_string(),
                        spent: num(&last["spent"]),
                        remaining: num(&last["remaining"]),
                        year_spent: num(&o["rolling_year"]["most_spent"]),
                        year_cap: num(&o["rolling_year"]["cap"]),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    html(
        StatusCode::OK,
        ExportPage {
            t,
            v: version(),
            other_lang: ctx.lang.other().code(),
            here: "/export".into(),
            signout_csrf: ctx.signout_csrf(),
            orgs,
            marginals,
            measure: budget["measure"].as_str().unwrap_or("epsilon").to_string(),
            budget: num(&budget["budget"]),
            ledger,
            public_key: svc.public_key(),
        }
        .render(),
    )
}

/// The API's release query from the form's: empty fields dropped (the form's "all"),
/// unknown ones too, and the page size set to [`DOWNLOAD_LIMIT`].
fn api_query(raw: Option<&str>) -> Result<ReleaseQuery, String> {
    let pairs: Vec<(String, String)> = Query::<Vec<(String, String)>>::try_from_uri(
        &format!("/?{}", raw.unwrap_or_default())
            .parse::<Uri>()
            .map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.body_text())?
    .0;
    let mut kept: Vec<(String, String)> = pairs
        .into_iter()
        .filter(|(k, v)| DOWNLOAD_FIELDS.contains(&k.as_str()) && !v.trim().is_empty())
        .map(|(k, v)| (k, v.trim().to_string()))
        .collect();
    kept.push(("limit".into(), DOWNLOAD_LIMIT.into()));
    let qs: Vec<String> = kept
        .iter()
        .map(|(k, v)| {
            format!(
                "{k}={}",
                percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC)
            )
        })
        .collect();
    let uri: Uri = format!("/?{}", qs.join("&"))
        .parse()
        .map_err(|e: axum::http::uri::InvalidUri| e.to_string())?;
    Query::<ReleaseQuery>::try_from_uri(&uri)
        .map(|q| q.0)
        .map_err(|e| e.body_text())
}

/// An API answer as a download: success passes through (a JSON page gets a file name); an
/// error becomes a page in the reader's language with the API's message, which names the
/// field.
async fn as_download(ctx: &Ctx, r: Response, json_name: Option<&'static str>) -> Response {
    if r.status().is_success() {
        let mut r = r;
        if let Some(name) = json_name
            && !r.headers().contains_key(header::CONTENT_DISPOSITION)
            && let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\""))
        {
            r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
        }
        return r;
    }
    let status = r.status();
    let bytes = axum::body::to_bytes(r.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    let text = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_default();
    refused(ctx, status, &text)
}

fn refused(ctx: &Ctx, status: StatusCode, detail: &str) -> Response {
    let t = ctx.t();
    super::message_text(
        ctx,
        status,
        t.get("export-refused-title"),
        format!("{} {detail}", t.get("export-refused")),
    )
}

/// `GET /export/download?…`: the releases the form picked, as the API's signed CSV or JSON
/// file. A read with no effect, so a plain link (the session cookie is `SameSite=Strict`, so
/// another site cannot make the browser send it).
pub async fn download(State(svc): State<Service>, ctx: Ctx, RawQuery(raw): RawQuery) -> Response {
    let who = match reader(&ctx) {
        Ok(w) => w,
        Err(r) => return *r,
    };
    let q = match api_query(raw.as_deref()) {
        Ok(q) => q,
        Err(e) => return refused(&ctx, StatusCode::UNPROCESSABLE_ENTITY, &e),
    };
    let r = crate::api::get_releases(State(svc), who, AppQuery(q))
        .await
        .into_response();
    as_download(&ctx, r, Some("tellestrek-releases.json")).await
}

/// `GET /export/download.sig?…`: the detached signature of the CSV the same query downloads.
pub async fn download_sig(
    State(svc): State<Service>,
    ctx: Ctx,
    RawQuery(raw): RawQuery,
) -> Response {
    let who = match reader(&ctx) {
        Ok(w) => w,
        Err(r) => return *r,
    };
    let q = match api_query(raw.as_deref()) {
        Ok(q) => q,
        Err(e) => return refused(&ctx, StatusCode::UNPROCESSABLE_ENTITY, &e),
    };
    let r = crate::api::get_releases_sig(State(svc), who, AppQuery(q))
        .await
        .into_response();
    as_download(&ctx, r, None).await
}
