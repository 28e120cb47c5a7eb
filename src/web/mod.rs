//! The web pages: server-rendered HTML (askama templates compiled with the binary) in
//! Norwegian bokmål or English, sign-in by token or one-time invite link, and the supporter's
//! tick page. Every page works without JavaScript; the one script (`/assets/tick.js`) only
//! adds remembered answers and an offline queue. Pages call the same service methods as the
//! API. Must not depend on sled, opendp or ring (secrets come from `auth` through the service).
//!
//! | file | what |
//! | --- | --- |
//! | `mod.rs` | the router, cookies, CSRF, page handlers |
//! | `i18n.rs` | languages and the Fluent catalogues (`locales/`) |
//! | `assets.rs` | static files served from memory under `/assets/` |
//! | `api.rs` | the JSON API of invites and follow-up requests |
//! | `admin.rs` | the admin page: tokens, invites, periods, the policy's plan |
//! | `export.rs` | the researchers' export page and its downloads |
//! | `scheme.rs` | the scheme pages (mandate, contact) and the public page per organisation |
//!
//! Security: pages carry a strict Content-Security-Policy ([`PAGE_CSP`]: nothing from other
//! hosts, no inline script or style); the session cookie is `HttpOnly`, `SameSite=Strict`,
//! and `Secure` when a trusted proxy says the request came over HTTPS; every form carries a
//! CSRF token in a hidden field (the session's, or before sign-in a double-submit cookie's).

mod admin;
pub mod api;
mod assets;
mod charts;
mod dashboard;
mod export;
mod i18n;
mod scheme;

use std::collections::BTreeMap;

use askama::Template;
use axum::Router;
use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Form};
use cookie::{Cookie, SameSite};
use serde::Deserialize;

use crate::domain::{Period, Role};
use crate::service::{Principal, Service, ServiceError, Session, TickRequest};

pub use i18n::{Lang, Tr};

/// The session cookie: the secret whose keyed hash the store keeps.
pub const SESSION_COOKIE: &str = "tellestrek_session";
/// The pre-sign-in form cookie: a random value repeated in the sign-in forms (double submit).
pub const FORM_COOKIE: &str = "tellestrek_form";
/// The language cookie: `nb` or `en`.
pub const LANG_COOKIE: &str = "tellestrek_lang";
/// The unit the invite named: kept on the device (like its remembered answers) and preselected
/// on its tick page; the server keeps no link between a person and a unit.
pub const UNIT_COOKIE: &str = "tellestrek_unit";
/// The header the tick page's script sends the session's CSRF token in, for API calls made
/// with the session cookie.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The Content-Security-Policy of every page: only this server's own files, no inline script
/// or style, no framing, forms only to this server.
pub const PAGE_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'";

/// `Cache-Control` of `/assets/…`: a year, as every URL carries the assets' fingerprint.
pub const ASSET_CACHE: &str = "public, max-age=31536000, immutable";

/// How the pages are served.
#[derive(Debug, Clone, Copy, Default)]
pub struct WebOptions {
    /// Whether the server sits behind a reverse proxy whose `X-Forwarded-Proto` header is
    /// believed: then a request it says came over `https` gets `Secure` cookies. Default
    /// false (set `TELLESTREK_TRUSTED_PROXY=1`); never turn it on without such a proxy, or a
    /// client could choose the flag.
    pub trusted_proxy: bool,
}

impl WebOptions {
    /// From the environment: `TELLESTREK_TRUSTED_PROXY` = `1` or `true` trusts the proxy.
    pub fn from_env() -> WebOptions {
        let v = std::env::var("TELLESTREK_TRUSTED_PROXY").unwrap_or_default();
        WebOptions {
            trusted_proxy: matches!(v.as_str(), "1" | "true" | "yes"),
        }
    }
}

/// The pages' routes, with options from the environment.
pub fn router() -> Router<Service> {
    router_with(WebOptions::from_env())
}

/// The pages' routes.
pub fn router_with(opts: WebOptions) -> Router<Service> {
    Router::new()
        .route("/", get(home))
        .route("/sign-in", post(sign_in))
        .route("/invite/{secret}", get(invite_page))
        .route("/invite", post(invite_redeem))
        .route("/sign-out", post(sign_out))
        .route("/lang/{lang}", get(switch_lang))
        .route("/tick", get(tick_page).post(tick_post))
        .route("/tick/edit", post(tick_edit))
        .route("/tick/done", get(tick_done))
        .route("/follow-up", post(follow_up))
        .route("/assets/{*path}", get(asset))
        .merge(pages())
        // The invite API's routes are in crate::server::api_routes, with every JSON route.
        .merge(dashboard::routes())
        .layer(Extension(opts))
}

/// The researchers' export page, the admin page and the scheme pages (`export.rs`,
/// `admin.rs`, `scheme.rs`).
fn pages() -> Router<Service> {
    Router::new()
        .route("/scheme", get(scheme::scheme_index))
        .route("/scheme/{org}", get(scheme::scheme_page))
        .route("/public/{org}", get(scheme::public_page))
        .route("/export", get(export::export_page))
        .route("/export/download", get(export::download))
        .route("/export/download.sig", get(export::download_sig))
        .route("/admin", get(admin::admin_page))
        .route("/admin/tokens", post(admin::create_token))
        .route("/admin/tokens/revoke", post(admin::revoke_token))
        .route("/admin/invites", post(admin::create_invite))
        .route("/admin/invites/revoke", post(admin::revoke_invite))
        .route("/admin/periods/release", post(admin::release_period))
}

/// What every page handler knows about the request: language, session, cookies.
pub(crate) struct Ctx {
    lang: Lang,
    /// The session and its cookie's secret, if the device is signed in.
    session: Option<(Session, String)>,
    /// The pre-sign-in form cookie's value, if set.
    form_cookie: Option<String>,
    /// Whether cookies get the `Secure` flag.
    secure: bool,
    /// The unit cookie's value, if set (checked against the policy where it is used).
    unit_cookie: Option<String>,
}

impl FromRequestParts<Service> for Ctx {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, svc: &Service) -> Result<Ctx, Self::Rejection> {
        let opts = parts
            .extensions
            .get::<WebOptions>()
            .copied()
            .unwrap_or_default();
        let cookies = cookies(&parts.headers);
        let session = cookies
            .get(SESSION_COOKIE)
            .and_then(|s| svc.session(s).ok().map(|sess| (sess, s.clone())));
        Ok(Ctx {
            lang: Lang::from_cookie(cookies.get(LANG_COOKIE).map(String::as_str)),
            session,
            form_cookie: cookies.get(FORM_COOKIE).cloned(),
            unit_cookie: cookies.get(UNIT_COOKIE).cloned(),
            secure: opts.trusted_proxy
                && parts
                    .headers
                    .get("x-forwarded-proto")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.eq_ignore_ascii_case("https")),
        })
    }
}

impl Ctx {
    fn t(&self) -> Tr {
        Tr(self.lang)
    }

    fn principal(&self) -> Option<&Principal> {
        self.session.as_ref().map(|(s, _)| &s.principal)
    }

    fn signout_csrf(&self) -> Option<String> {
        self.session.as_ref().map(|(s, _)| s.csrf.clone())
    }

    /// A cookie with the flags every cookie of the service has.
    fn cookie(&self, name: &'static str, value: String, max_age_days: i64) -> HeaderValue {
        let c = Cookie::build((name, value))
            .path("/")
            .http_only(true)
            .same_site(SameSite::Strict)
            .secure(self.secure)
            .max_age(cookie::time::Duration::days(max_age_days))
            .build();
        // A cookie built from ASCII names and base64url values is a valid header value.
        HeaderValue::from_str(&c.to_string()).unwrap_or(HeaderValue::from_static(""))
    }

    /// The form cookie's value, or a new one to set.
    fn form_token(&self) -> (String, Option<HeaderValue>) {
        match &self.form_cookie {
            Some(v) if !v.is_empty() => (v.clone(), None),
            _ => {
                let v = crate::auth::Token::generate()
                    .map(|t| t.expose().to_string())
                    .unwrap_or_default();
                let c = self.cookie(FORM_COOKIE, v.clone(), 1);
                (v, Some(c))
            }
        }
    }

    /// Whether `given` matches the form cookie (before sign-in).
    fn form_token_ok(&self, given: Option<&str>) -> bool {
        match (&self.form_cookie, given) {
            (Some(c), Some(g)) => !c.is_empty() && c == g,
            _ => false,
        }
    }
}

/// A page's typed path parameters. A parameter axum cannot read (not UTF-8 once
/// percent-decoded) gets the "no such page" page (404) in the reader's language, as a page
/// answers an address it does not know, instead of axum's plain-text 400.
pub(crate) struct PagePath<T>(pub T);

impl<T: serde::de::DeserializeOwned + Send> FromRequestParts<Service> for PagePath<T> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, svc: &Service) -> Result<Self, Response> {
        match Path::<T>::from_request_parts(parts, svc).await {
            Ok(Path(v)) => Ok(PagePath(v)),
            Err(_) => {
                let ctx = match Ctx::from_request_parts(parts, svc).await {
                    Ok(ctx) => ctx,
                    Err(never) => match never {},
                };
                Err(message(
                    &ctx,
                    StatusCode::NOT_FOUND,
                    "error-title",
                    "not-found",
                ))
            }
        }
    }
}

/// The request's cookies by name (the first of each name).
fn cookies(headers: &HeaderMap) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for v in headers.get_all(header::COOKIE) {
        let Ok(v) = v.to_str() else { continue };
        for c in Cookie::split_parse(v).flatten() {
            out.entry(c.name().to_string())
                .or_insert_with(|| c.value().to_string());
        }
    }
    out
}

/// The principal of an API request made with the session cookie (the tick page's offline
/// queue), if it has one: the session's CSRF token must come in [`CSRF_HEADER`], so another
/// site cannot make the browser call the API. `None` without a session cookie.
pub fn api_session(headers: &HeaderMap, svc: &Service) -> Result<Option<Principal>, ServiceError> {
    let cookies = cookies(headers);
    let Some(secret) = cookies.get(SESSION_COOKIE) else {
        return Ok(None);
    };
    let session = svc.session(secret)?;
    let given = headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !svc.csrf_matches(&session, given) {
        return Err(ServiceError::InvalidField {
            field: "X-CSRF-Token",
            code: "csrf_token_invalid",
            message: "a request signed in by the session cookie needs the session's form token in this header; reload the page".into(),
        });
    }
    Ok(Some(session.principal))
}

/// An HTML page with the page CSP.
fn html(status: StatusCode, body: Result<String, askama::Error>) -> Response {
    match body {
        Ok(body) => (
            status,
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CONTENT_SECURITY_POLICY, PAGE_CSP),
            ],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "a page template failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }
    }
}

/// A redirect after a POST (303 See Other), optionally setting cookies.
fn see_other(to: &str, cookies: Vec<HeaderValue>) -> Response {
    let mut r = Redirect::to(to).into_response();
    for c in cookies {
        r.headers_mut().append(header::SET_COOKIE, c);
    }
    r
}

fn with_cookie(mut r: Response, c: Option<HeaderValue>) -> Response {
    if let Some(c) = c {
        r.headers_mut().append(header::SET_COOKIE, c);
    }
    r
}

#[derive(Template)]
#[template(path = "signin.html")]
struct SignInPage {
    t: Tr,
    v: &'static str,
    other_lang: &'static str,
    here: String,
    signout_csrf: Option<String>,
    form_csrf: String,
    failed: bool,
}

#[derive(Template)]
#[template(path = "invite.html")]
struct InvitePage {
    t: Tr,
    v: &'static str,
    other_lang: &'static str,
    here: String,
    signout_csrf: Option<String>,
    form_csrf: String,
    secret: String,
    days: u32,
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage {
    t: Tr,
    v: &'static str,
    other_lang: &'static str,
    here: String,
    signout_csrf: Option<String>,
    title: String,
    body: String,
}

/// One radio button of the tick form.
struct Choice {
    id: String,
    label: String,
    checked: bool,
}

/// One question of the tick form: the unit or a dimension.
struct Group {
    name: String,
    legend: String,
    choices: Vec<Choice>,
    /// Whether the checked answer is a preset (the policy's default answer, or the unit the
    /// coordinator gave at invite) rather than the supporter's own: the page's script then
    /// replaces it with the answer this device remembers.
    preset: bool,
}

#[derive(Template)]
#[template(path = "tick.html")]
struct TickPage {
    t: Tr,
    v: &'static str,
    other_lang: &'static str,
    here: String,
    signout_csrf: Option<String>,
    csrf: String,
    key: String,
    org: String,
    period: String,
    /// Questions without a preselected answer, asked first.
    groups: Vec<Group>,
    /// Questions with a preset answer, shown after the others under a heading that says so.
    presets: Vec<Group>,
    problem: Option<String>,
    followup_open: bool,
}

#[derive(Template)]
#[template(path = "done.html")]
struct DonePage {
    t: Tr,
    v: &'static str,
    other_lang: &'static str,
    here: String,
    signout_csrf: Option<String>,
    csrf: String,
    /// A fresh idempotency key for "the same again".
    key: String,
    /// The last answers, for "the same again" and "a different one" (empty: only the plain
    /// link). They travel in the page's forms, never in a URL, which a proxy's log or the
    /// browser's history would keep with a time.
    answers: Vec<(String, String)>,
}

fn version() -> &'static str {
    assets::VERSION.as_str()
}

/// The page for a store that cannot take the request now (503): try again later.
fn unavailable(ctx: &Ctx) -> Response {
    message(
        ctx,
        StatusCode::SERVICE_UNAVAILABLE,
        "error-title",
        "error-retry",
    )
}

fn message(ctx: &Ctx, status: StatusCode, title: &str, body: &str) -> Response {
    let t = ctx.t();
    html(
        status,
        MessagePage {
            t,
            v: version(),
            other_lang: ctx.lang.other().code(),
            here: "/".into(),
            signout_csrf: ctx.signout_csrf(),
            title: t.get(title),
            body: t.get(body),
        }
        .render(),
    )
}

/// A message page with texts already in the page's language.
fn message_text(ctx: &Ctx, status: StatusCode, title: String, body: String) -> Response {
    html(
        status,
        MessagePage {
            t: ctx.t(),
            v: version(),
            other_lang: ctx.lang.other().code(),
            here: "/".into(),
            signout_csrf: ctx.signout_csrf(),
            title,
            body,
        }
        .render(),
    )
}

fn csrf_refused(ctx: &Ctx) -> Response {
    message(ctx, StatusCode::FORBIDDEN, "error-title", "csrf-failed")
}

/// `GET /`: the sign-in page, or the signed-in person's page.
async fn home(ctx: Ctx) -> Response {
    if let Some(who) = ctx.principal() {
        if who.role == Role::Supporter {
            return Redirect::to("/tick").into_response();
        }
        if let Some(to) = admin::own_page(who.role) {
            return Redirect::to(to).into_response();
        }
        if matches!(who.role, Role::Leader | Role::Coordinator) {
            return Redirect::to("/dashboard").into_response();
        }
        let t = ctx.t();
        let role = t.get(&format!("role-{}", who.role.as_str()));
        return html(
            StatusCode::OK,
            MessagePage {
                t,
                v: version(),
                other_lang: ctx.lang.other().code(),
                here: "/".into(),
                signout_csrf: ctx.signout_csrf(),
                title: t.get("home-title"),
                body: t.get1("home-body", "role", role),
            }
            .render(),
        );
    }
    sign_in_page(&ctx, StatusCode::OK, false)
}

fn sign_in_page(ctx: &Ctx, status: StatusCode, failed: bool) -> Response {
    let (form_csrf, set) = ctx.form_token();
    let page = SignInPage {
        t: ctx.t(),
        v: version(),
        other_lang: ctx.lang.other().code(),
        here: "/".into(),
        signout_csrf: None,
        form_csrf,
        failed,
    };
    with_cookie(html(status, page.render()), set)
}

/// Fields of the sign-in form.
#[derive(Deserialize)]
struct SignInForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    token: String,
}

/// `POST /sign-in`: a token signs this device in.
async fn sign_in(
    State(svc): State<Service>,
    ctx: Ctx,
    form: Result<Form<SignInForm>, FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        return csrf_refused(&ctx);
    };
    if !ctx.form_token_ok(Some(&form.csrf)) {
        return csrf_refused(&ctx);
    }
    let result = tokio::task::spawn_blocking(move || svc.sign_in_with_token(&form.token)).await;
    match result {
        Ok(Ok(session)) => see_other("/", session_cookies(&ctx, &session)),
        Ok(Err(ServiceError::InvalidToken | ServiceError::MissingToken)) => {
            sign_in_page(&ctx, StatusCode::UNAUTHORIZED, true)
        }
        _ => unavailable(&ctx),
    }
}

/// The cookies of a new session: the session's, and the unit its invite named (kept on the
/// device for the tick page, as long as the session).
fn session_cookies(ctx: &Ctx, s: &crate::service::NewSession) -> Vec<HeaderValue> {
    let days = i64::from(s.days);
    let mut set = vec![ctx.cookie(SESSION_COOKIE, s.secret.clone(), days)];
    if let Some(unit) = &s.unit {
        set.push(ctx.cookie(UNIT_COOKIE, unit.clone(), days));
    }
    set
}

/// `GET /invite/{secret}`: a page with one button that signs this device in. Opening the link
/// changes nothing, so a link preview (a chat app fetching the URL) does not use it up.
async fn invite_page(
    State(svc): State<Service>,
    ctx: Ctx,
    PagePath(secret): PagePath<String>,
) -> Response {
    if secret.is_empty()
        || secret.len() > 100
        || !secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return message(&ctx, StatusCode::NOT_FOUND, "error-title", "invite-invalid");
    }
    let (form_csrf, set) = ctx.form_token();
    let page = InvitePage {
        t: ctx.t(),
        v: version(),
        other_lang: ctx.lang.other().code(),
        here: format!("/invite/{secret}"),
        signout_csrf: None,
        form_csrf,
        days: svc.policy().web.session_days,
        secret,
    };
    with_cookie(html(StatusCode::OK, page.render()), set)
}

/// Fields of the invite form.
#[derive(Deserialize)]
struct InviteForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    secret: String,
}

/// `POST /invite`: uses the invite link once and signs this device in for
/// `web.session_days`.
async fn invite_redeem(
    State(svc): State<Service>,
    ctx: Ctx,
    form: Result<Form<InviteForm>, FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        return csrf_refused(&ctx);
    };
    if !ctx.form_token_ok(Some(&form.csrf)) {
        return csrf_refused(&ctx);
    }
    let result = tokio::task::spawn_blocking(move || svc.redeem_invite(&form.secret)).await;
    match result {
        Ok(Ok(session)) => see_other("/", session_cookies(&ctx, &session)),
        Ok(Err(ServiceError::InviteNotValid)) => {
            message(&ctx, StatusCode::GONE, "error-title", "invite-invalid")
        }
        _ => unavailable(&ctx),
    }
}

/// A form with only the CSRF token.
#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// `POST /sign-out`: deletes this device's session.
async fn sign_out(
    State(svc): State<Service>,
    ctx: Ctx,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    let Some((session, secret)) = ctx.session.clone() else {
        return see_other("/", vec![]);
    };
    let csrf = form.map(|Form(f)| f.csrf).unwrap_or_default();
    if !svc.csrf_matches(&session, &csrf) {
        return csrf_refused(&ctx);
    }
    let _ = tokio::task::spawn_blocking(move || svc.sign_out(&secret)).await;
    see_other(
        "/",
        vec![
            ctx.cookie(SESSION_COOKIE, String::new(), 0),
            ctx.cookie(UNIT_COOKIE, String::new(), 0),
        ],
    )
}

/// Query of the language switch.
#[derive(Deserialize)]
struct Back {
    #[serde(default)]
    back: String,
}

/// `GET /lang/{nb|en}?back=/path`: remembers the language for a year and goes back. Only a
/// path of this site is followed (no open redirect).
async fn switch_lang(
    ctx: Ctx,
    PagePath(lang): PagePath<String>,
    back: Result<Query<Back>, QueryRejection>,
) -> Response {
    let Some(lang) = Lang::parse(&lang) else {
        return message(&ctx, StatusCode::NOT_FOUND, "error-title", "not-found");
    };
    let back = back.map(|Query(b)| b.back).unwrap_or_default();
    let safe = back.starts_with('/')
        && !back.starts_with("//")
        && back
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/_-".contains(&b));
    let to = if safe { back.as_str() } else { "/" };
    see_other(
        to,
        vec![ctx.cookie(LANG_COOKIE, lang.code().to_string(), 365)],
    )
}

/// The signed-in supporter (`None`: send the device to `/` to sign in).
fn supporter(ctx: &Ctx) -> Option<(Session, Principal)> {
    match &ctx.session {
        Some((s, _)) if s.principal.role == Role::Supporter && s.principal.org.is_some() => {
            Some((s.clone(), s.principal.clone()))
        }
        _ => None,
    }
}

fn tick_page_for(
    svc: &Service,
    ctx: &Ctx,
    session: &Session,
    who: &Principal,
    chosen: &BTreeMap<String, String>,
    problem: Option<String>,
    status: StatusCode,
) -> Response {
    let t = ctx.t();
    let policy = svc.current_policy();
    let org_id = who.org.clone().unwrap_or_default();
    // A question's answer: the one posted, else a preset (the only unit, the unit the
    // coordinator gave at invite, the policy's default answer); with no answer posted at all.
    let fresh = chosen.is_empty();
    let question =
        |name: String, legend: String, options: Vec<(String, String)>, preset: Option<String>| {
            let (answer, preset) = match (chosen.get(&name), preset.filter(|_| fresh)) {
                (Some(a), _) => (Some(a.clone()), false),
                (None, Some(p)) => (Some(p), true),
                (None, None) => (None, false),
            };
            Group {
                choices: options
                    .into_iter()
                    .map(|(id, label)| Choice {
                        checked: answer.as_ref() == Some(&id),
                        id,
                        label,
                    })
                    .collect(),
                preset,
                name,
                legend,
            }
        };
    let mut all = Vec::new();
    if let Some(org) = policy.org(&org_id) {
        let only = (org.units.len() == 1).then(|| org.units[0].id.clone());
        all.push(question(
            "unit".into(),
            t.get("tick-unit"),
            org.units
                .iter()
                .map(|u| (u.id.clone(), u.name.clone()))
                .collect(),
            only.or_else(|| {
                ctx.unit_cookie
                    .clone()
                    .filter(|u| org.units.iter().any(|x| &x.id == u))
            }),
        ));
    }
    for d in &policy.dimensions {
        all.push(question(
            format!("dim.{}", d.id),
            t.label(&d.label).to_string(),
            d.values
                .iter()
                .map(|v| (v.id.clone(), t.label(&v.label).to_string()))
                .collect(),
            d.default.clone(),
        ));
    }
    let (presets, groups): (Vec<Group>, Vec<Group>) = all.into_iter().partition(|g| g.preset);
    let page = TickPage {
        t,
        v: version(),
        other_lang: ctx.lang.other().code(),
        here: "/tick".into(),
        signout_csrf: Some(session.csrf.clone()),
        csrf: session.csrf.clone(),
        key: crate::auth::random_id().unwrap_or_default(),
        org: org_id,
        period: Period::containing(policy.granularity, svc.today()).to_string(),
        groups,
        presets,
        problem,
        followup_open: svc.followup_open(who).unwrap_or(false),
    };
    html(status, page.render())
}

/// `GET /tick`: the supporter's tick form; answers in the query (from the confirmation's
/// "another conversation" link) are preselected, so a similar contact takes two taps without
/// JavaScript too.
async fn tick_page(State(svc): State<Service>, ctx: Ctx) -> Response {
    let Some((session, who)) = supporter(&ctx) else {
        return Redirect::to("/").into_response();
    };
    // No answers come in a URL (a proxy's log would keep them with a time); the page's script
    // preselects the usual ones from the device, and "a different one" posts them.
    tick_page_for(
        &svc,
        &ctx,
        &session,
        &who,
        &BTreeMap::new(),
        None,
        StatusCode::OK,
    )
}

/// `POST /tick`: logs one contact from the form (CSRF-checked, counted once per form key),
/// and answers with the confirmation itself (not a redirect whose URL would carry the
/// answers). Sending the form again (a reload) replays the same key: counted once.
async fn tick_post(
    State(svc): State<Service>,
    ctx: Ctx,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    let Some((session, who)) = supporter(&ctx) else {
        return Redirect::to("/").into_response();
    };
    let fields: Vec<(String, String)> = form.map(|Form(f)| f).unwrap_or_default();
    let mut chosen = BTreeMap::new();
    for (k, v) in fields {
        chosen.entry(k).or_insert(v);
    }
    if !svc.csrf_matches(&session, chosen.get("csrf").map_or("", String::as_str)) {
        return csrf_refused(&ctx);
    }
    let t = ctx.t();
    let policy = svc.current_policy();
    let tags: BTreeMap<String, String> = policy
        .dimensions
        .iter()
        .filter_map(|d| {
            chosen
                .get(&format!("dim.{}", d.id))
                .map(|v| (d.id.clone(), v.clone()))
        })
        .collect();
    let (Some(unit), true) = (chosen.get("unit"), tags.len() == policy.dimensions.len()) else {
        return tick_page_for(
            &svc,
            &ctx,
            &session,
            &who,
            &chosen,
            Some(t.get("tick-missing")),
            StatusCode::UNPROCESSABLE_ENTITY,
        );
    };
    let req = TickRequest {
        org: who.org.clone().unwrap_or_default(),
        unit: unit.clone(),
        tags,
        count: None,
        period: None,
    };
    let key = chosen.get("key").cloned();
    match svc.log_tick_once(&who, req, key.as_deref()).await {
        Ok(_) => done_page(&ctx, session, answers_only(chosen)),
        Err(e) => {
            let (status, problem) = match &e {
                ServiceError::OverCap { .. } => (StatusCode::TOO_MANY_REQUESTS, t.get("tick-cap")),
                ServiceError::NotStored { .. } => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("{} {e}", t.get("tick-error")),
                ),
                _ => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("{} {e}", t.get("tick-error")),
                ),
            };
            tick_page_for(&svc, &ctx, &session, &who, &chosen, Some(problem), status)
        }
    }
}

/// `GET /tick/done`: the confirmation after a tick sent by the page's script (which keeps the
/// usual answers on the device, so the URL carries none).
async fn tick_done(ctx: Ctx) -> Response {
    let Some((session, _)) = supporter(&ctx) else {
        return Redirect::to("/").into_response();
    };
    done_page(&ctx, session, BTreeMap::new())
}

/// The confirmation. It shows no count, not even the supporter's own: a shared or lost phone
/// must not tell how many talks its owner had. With the last answers, it offers them again in
/// one tap (a form with a fresh key) and a different contact in two (a form that preselects
/// them on the tick page).
fn done_page(ctx: &Ctx, session: Session, answers: BTreeMap<String, String>) -> Response {
    html(
        StatusCode::OK,
        DonePage {
            t: ctx.t(),
            v: version(),
            other_lang: ctx.lang.other().code(),
            here: "/tick".into(),
            csrf: session.csrf.clone(),
            signout_csrf: Some(session.csrf),
            key: crate::auth::random_id().unwrap_or_default(),
            answers: answers.into_iter().collect(),
        }
        .render(),
    )
}

/// `POST /tick/edit`: the tick page with the posted answers preselected ("a different one"
/// from the confirmation), CSRF-checked like every form.
async fn tick_edit(
    State(svc): State<Service>,
    ctx: Ctx,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    let Some((session, who)) = supporter(&ctx) else {
        return Redirect::to("/").into_response();
    };
    let mut chosen = BTreeMap::new();
    for (k, v) in form.map(|Form(f)| f).unwrap_or_default() {
        chosen.entry(k).or_insert(v);
    }
    if !svc.csrf_matches(&session, chosen.get("csrf").map_or("", String::as_str)) {
        return csrf_refused(&ctx);
    }
    tick_page_for(
        &svc,
        &ctx,
        &session,
        &who,
        &answers_only(chosen),
        None,
        StatusCode::OK,
    )
}

/// Only the tick answers (`unit`, `dim.*`) of posted fields.
fn answers_only(fields: BTreeMap<String, String>) -> BTreeMap<String, String> {
    fields
        .into_iter()
        .filter(|(k, _)| k == "unit" || k.starts_with("dim."))
        .collect()
}

/// Fields of the follow-up form.
#[derive(Deserialize)]
struct FollowUpForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    open: String,
}

/// `POST /follow-up`: the supporter asks for, or withdraws, a follow-up talk.
async fn follow_up(
    State(svc): State<Service>,
    ctx: Ctx,
    form: Result<Form<FollowUpForm>, FormRejection>,
) -> Response {
    let Some((session, who)) = supporter(&ctx) else {
        return Redirect::to("/").into_response();
    };
    let Ok(Form(form)) = form else {
        return csrf_refused(&ctx);
    };
    if !svc.csrf_matches(&session, &form.csrf) {
        return csrf_refused(&ctx);
    }
    let open = form.open == "true";
    match tokio::task::spawn_blocking(move || svc.set_followup(&who, open)).await {
        Ok(Ok(())) => see_other("/tick#followup", vec![]),
        _ => unavailable(&ctx),
    }
}

/// `GET /assets/{path}`: an embedded file, cached for a year.
async fn asset(ctx: Ctx, PagePath(path): PagePath<String>) -> Response {
    match assets::find(&path) {
        Some(a) => (
            [
                (header::CONTENT_TYPE, a.content_type),
                (header::CACHE_CONTROL, ASSET_CACHE),
            ],
            a.body,
        )
            .into_response(),
        None => message(&ctx, StatusCode::NOT_FOUND, "error-title", "not-found"),
    }
}

/// The answer for a path no route serves: the not-found page for a browser asking for a page
/// (in the visitor's language, with the site's links), the JSON error for the API and for
/// every client that does not ask for HTML.
pub(crate) async fn not_found(
    ctx: Ctx,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
) -> Response {
    let wants_page = !uri.path().starts_with("/api/")
        && headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/html"));
    if wants_page {
        message(&ctx, StatusCode::NOT_FOUND, "error-title", "not-found")
    } else {
        crate::api::ApiError::not_found().into_response()
    }
}
