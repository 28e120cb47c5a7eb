//! The admin page (`/admin`): tokens and invites (create, list, revoke; a new token or invite
//! link is shown once), periods (state, release now) and a policy summary with the plan's
//! accuracy table (`policy check`'s, from [`crate::plan::describe`]). An admin sees all of it;
//! a coordinator sees the supporter part for their own organisation (its supporters' tokens
//! and invites). Every form is CSRF-checked with the session's token, like the tick form.

use askama::Template;
use axum::Form;
use axum::extract::State;
use axum::extract::rejection::FormRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use serde::Deserialize;

use super::export::signed_in_as;
use super::{Ctx, Tr, csrf_refused, html, see_other, unavailable, version};
use crate::api::ApiError;
use crate::domain::Role;
use crate::service::{
    NewInviteRequest, NewTokenRequest, Principal, Service, ServiceError, Session,
};

/// Periods listed, newest first: two years of months.
const PERIODS_SHOWN: usize = 24;

/// One `<option>`.
struct Opt {
    value: String,
    label: String,
}

/// A row of the tokens or invites table.
struct Row {
    id: String,
    role: String,
    org: String,
    /// Tokens: the base period it was created in; invites: the account.
    extra: String,
}

/// A row of the periods table.
struct PeriodRow {
    period: String,
    state: String,
    /// Whether "release now" is offered (closed periods).
    releasable: bool,
}

/// What a form just did, shown once at the top.
struct Notice {
    title: String,
    /// A secret shown once (a token, or an invite link), if any.
    secret: Option<String>,
    body: String,
}

#[derive(Template)]
#[template(path = "admin.html")]
struct AdminPage {
    t: Tr,
    v: &'static str,
    other_lang: &'static str,
    here: String,
    signout_csrf: Option<String>,
    csrf: String,
    is_admin: bool,
    notice: Option<Notice>,
    problem: Option<String>,
    roles: Vec<Opt>,
    orgs: Vec<Opt>,
    /// Units to preselect on a supporter's tick page, by organisation.
    units: Vec<(String, Vec<Opt>)>,
    tokens: Vec<Row>,
    invites: Vec<Row>,
    periods: Vec<PeriodRow>,
    plan: String,
}

/// The page `/` sends a signed-in admin or researcher to (others: see `home`).
pub fn own_page(role: Role) -> Option<&'static str> {
    match role {
        Role::Admin => Some("/admin"),
        Role::Researcher => Some("/export"),
        _ => None,
    }
}

/// The signed-in admin or coordinator, and their session (for the form token).
fn manager(ctx: &Ctx) -> Result<(Session, Principal), Box<Response>> {
    let who = signed_in_as(ctx, &[Role::Admin, Role::Coordinator])?;
    let session = ctx.session.as_ref().map(|(s, _)| s.clone());
    // A principal comes from a session, so there is one.
    session
        .map(|s| (s, who))
        .ok_or_else(|| Box::new(see_other("/", vec![])))
}

/// What the page lists, read off the async threads (store reads, and the plan's OpenDP
/// calibration): tokens, invites, and for admins the periods and the plan.
type Listed = (
    Vec<crate::domain::TokenRecord>,
    Vec<crate::service::InviteInfo>,
    Vec<crate::service::PeriodInfo>,
    String,
);

fn listed(svc: &Service, who: &Principal) -> Listed {
    let is_admin = who.role == Role::Admin;
    (
        svc.list_tokens(who).unwrap_or_default(),
        svc.list_invites(who).unwrap_or_default(),
        if is_admin {
            svc.periods(who).unwrap_or_default()
        } else {
            Vec::new()
        },
        if is_admin {
            crate::plan::describe(svc.current_policy()).unwrap_or_else(|e| e.to_string())
        } else {
            String::new()
        },
    )
}

async fn render(
    svc: &Service,
    ctx: &Ctx,
    session: &Session,
    who: &Principal,
    notice: Option<Notice>,
    problem: Option<String>,
    status: StatusCode,
) -> Response {
    let t = ctx.t();
    let is_admin = who.role == Role::Admin;
    let policy = svc.current_policy();
    let role_label = |r: Role| t.get(&format!("role-{}", r.as_str()));
    let roles = if is_admin {
        [
            Role::Supporter,
            Role::Coordinator,
            Role::Leader,
            Role::Researcher,
            Role::Admin,
        ]
        .to_vec()
    } else {
        vec![Role::Supporter]
    }
    .into_iter()
    .map(|r| Opt {
        value: r.as_str().to_string(),
        label: role_label(r),
    })
    .collect();
    let visible: Vec<_> = policy
        .orgs
        .iter()
        .filter(|o| is_admin || who.org.as_deref() == Some(o.id.as_str()))
        .collect();
    let orgs = visible
        .iter()
        .map(|o| Opt {
            value: o.id.clone(),
            label: o.name.clone(),
        })
        .collect();
    let units = visible
        .iter()
        .map(|o| {
            let units = o
                .units
                .iter()
                .map(|u| Opt {
                    value: u.id.clone(),
                    label: u.name.clone(),
                })
                .collect();
            (o.name.clone(), units)
        })
        .collect();
    let (tokens, invites, mut periods, plan) = {
        let (svc, who) = (svc.clone(), who.clone());
        tokio::task::spawn_blocking(move || listed(&svc, &who))
            .await
            .unwrap_or_default()
    };
    let tokens = tokens
        .into_iter()
        .map(|r| Row {
            id: r.id,
            role: role_label(r.role),
            org: r.org.unwrap_or_default(),
            extra: r.created.to_string(),
        })
        .collect();
    let invites = invites
        .into_iter()
        .map(|r| Row {
            id: r.id,
            role: role_label(r.role),
            org: r.org.unwrap_or_default(),
            extra: r.account,
        })
        .collect();
    periods.sort_by_key(|p| std::cmp::Reverse(p.period));
    let periods = periods
        .into_iter()
        .take(PERIODS_SHOWN)
        .map(|p| PeriodRow {
            period: p.period.to_string(),
            state: t.get(&format!("admin-state-{}", p.state.as_str())),
            releasable: p.state == crate::domain::PeriodState::Closed,
        })
        .collect();
    html(
        status,
        AdminPage {
            t,
            v: version(),
            other_lang: ctx.lang.other().code(),
            here: "/admin".into(),
            signout_csrf: Some(session.csrf.clone()),
            csrf: session.csrf.clone(),
            is_admin,
            notice,
            problem,
            roles,
            orgs,
            units,
            tokens,
            invites,
            periods,
            plan,
        }
        .render(),
    )
}

/// `GET /admin`.
pub async fn admin_page(State(svc): State<Service>, ctx: Ctx) -> Response {
    let (session, who) = match manager(&ctx) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    render(&svc, &ctx, &session, &who, None, None, StatusCode::OK).await
}

/// Fields of the admin forms (each form sends the ones it has).
#[derive(Deserialize)]
pub struct AdminForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    org: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    unit: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    period: String,
}

/// The checked form and who sent it, or the answer to send instead.
fn checked(
    svc: &Service,
    ctx: &Ctx,
    form: Result<Form<AdminForm>, FormRejection>,
) -> Result<(Session, Principal, AdminForm), Box<Response>> {
    let (session, who) = manager(ctx)?;
    let Ok(Form(form)) = form else {
        return Err(Box::new(csrf_refused(ctx)));
    };
    if !svc.csrf_matches(&session, &form.csrf) {
        return Err(Box::new(csrf_refused(ctx)));
    }
    Ok((session, who, form))
}

fn some(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

/// The absolute address of `path` on this server, as the caller reached it.
fn absolute(headers: &HeaderMap, path: &str) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let https = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"));
    format!("{}://{host}{path}", if https { "https" } else { "http" })
}

/// `POST /admin/tokens`: creates a token, shown once.
pub async fn create_token(
    State(svc): State<Service>,
    ctx: Ctx,
    form: Result<Form<AdminForm>, FormRejection>,
) -> Response {
    let (session, who, form) = match checked(&svc, &ctx, form) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let svc2 = svc.clone();
    let req = NewTokenRequest {
        role: form.role.clone(),
        org: some(&form.org),
    };
    let who2 = who.clone();
    let done = tokio::task::spawn_blocking(move || svc2.create_token(&who2, req)).await;
    let t = ctx.t();
    match done {
        Ok(Ok(tok)) => {
            render(
                &svc,
                &ctx,
                &session,
                &who,
                Some(Notice {
                    title: t.get("admin-token-created"),
                    body: t.get("admin-shown-once"),
                    secret: Some(tok.token),
                }),
                None,
                StatusCode::CREATED,
            )
            .await
        }
        Ok(Err(e)) => problem(&svc, &ctx, &session, &who, e).await,
        Err(_) => unavailable(&ctx),
    }
}

/// The admin page with the service's refusal, under the status the API gives the same
/// refusal (403 wrong role or organisation, 404 no such token or invite, 409 period not
/// releasable, 422 invalid value), so a page and the API never disagree on what happened.
async fn problem(
    svc: &Service,
    ctx: &Ctx,
    session: &Session,
    who: &Principal,
    e: ServiceError,
) -> Response {
    let text = format!("{} {e}", ctx.t().get("admin-refused"));
    let status = ApiError::from(e).status();
    render(svc, ctx, session, who, None, Some(text), status).await
}

/// `POST /admin/tokens/revoke`.
pub async fn revoke_token(
    State(svc): State<Service>,
    ctx: Ctx,
    form: Result<Form<AdminForm>, FormRejection>,
) -> Response {
    revoke(svc, ctx, form, Service::revoke_token, "/admin#tokens").await
}

/// A revocation form (a token or an invite, by `id`): checked, done off the async threads,
/// then back to the page's section `back`, or the page with the refusal.
async fn revoke(
    svc: Service,
    ctx: Ctx,
    form: Result<Form<AdminForm>, FormRejection>,
    op: fn(&Service, &Principal, &str) -> Result<(), ServiceError>,
    back: &'static str,
) -> Response {
    let (session, who, form) = match checked(&svc, &ctx, form) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let (svc2, who2) = (svc.clone(), who.clone());
    match tokio::task::spawn_blocking(move || op(&svc2, &who2, &form.id)).await {
        Ok(Ok(())) => see_other(back, vec![]),
        Ok(Err(e)) => problem(&svc, &ctx, &session, &who, e).await,
        Err(_) => unavailable(&ctx),
    }
}

/// `POST /admin/invites`: creates a one-time sign-in link, shown once with the name given.
/// A coordinator invites supporters of their own organisation.
pub async fn create_invite(
    State(svc): State<Service>,
    ctx: Ctx,
    headers: HeaderMap,
    form: Result<Form<AdminForm>, FormRejection>,
) -> Response {
    let (session, who, form) = match checked(&svc, &ctx, form) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let name = some(&form.name);
    let req = NewInviteRequest {
        role: some(&form.role),
        org: some(&form.org).or_else(|| who.org.clone()),
        name: name.clone(),
        account: None,
        unit: some(&form.unit),
    };
    let (svc2, who2) = (svc.clone(), who.clone());
    let t = ctx.t();
    match tokio::task::spawn_blocking(move || svc2.create_invite(&who2, req)).await {
        Ok(Ok(inv)) => {
            render(
                &svc,
                &ctx,
                &session,
                &who,
                Some(Notice {
                    title: match &name {
                        Some(n) => t.get1("admin-invite-created-for", "name", n),
                        None => t.get("admin-invite-created"),
                    },
                    body: t.get1("admin-invite-once", "days", inv.valid_days),
                    secret: Some(absolute(&headers, &inv.path)),
                }),
                None,
                StatusCode::CREATED,
            )
            .await
        }
        Ok(Err(e)) => problem(&svc, &ctx, &session, &who, e).await,
        Err(_) => unavailable(&ctx),
    }
}

/// `POST /admin/invites/revoke`: the link no longer signs anyone in.
pub async fn revoke_invite(
    State(svc): State<Service>,
    ctx: Ctx,
    form: Result<Form<AdminForm>, FormRejection>,
) -> Response {
    revoke(svc, ctx, form, Service::revoke_invite, "/admin#invites").await
}

/// `POST /admin/periods/release`: releases a closed period now (admin; idempotent).
pub async fn release_period(
    State(svc): State<Service>,
    ctx: Ctx,
    form: Result<Form<AdminForm>, FormRejection>,
) -> Response {
    let (session, who, form) = match checked(&svc, &ctx, form) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    match svc.release_period(&who, form.period.trim()).await {
        Ok(_) => see_other("/admin#periods", vec![]),
        Err(e) => problem(&svc, &ctx, &session, &who, e).await,
    }
}
