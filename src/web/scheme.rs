//! Scheme pages: the scheme's mandate and guidelines and how to reach a supporter, from the
//! policy's Markdown texts per organisation (`mandate_md`, `contact_md`), for everyone signed
//! in to that organisation; and, where the policy sets `public_page = true`, a public page
//! per organisation without sign-in with the last released yearly total (from releases
//! only) and how to reach a supporter.
//!
//! Markdown is rendered by `pulldown-cmark` (the CommonMark parser rustdoc and mdBook use)
//! with raw HTML shown as text and links only to `http(s)`, `mailto`, `tel` or this site, so
//! a policy text cannot put markup or script on a page.

use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};

use super::{Ctx, PagePath, Tr, html, message, unavailable, version};
use crate::policy::Org;
use crate::service::Service;

/// Markdown to HTML for the scheme pages: CommonMark without extensions; raw HTML (block or
/// inline) is escaped as text, and a link or image to any other scheme (`javascript:`,
/// `data:`) goes nowhere (`#`).
pub fn markdown(md: &str) -> String {
    use pulldown_cmark::{CowStr, Event, Parser, Tag};
    fn safe(url: &str) -> bool {
        let lower = url.trim().to_ascii_lowercase();
        ["https://", "http://", "mailto:", "tel:"]
            .iter()
            .any(|p| lower.starts_with(p))
            || (lower.starts_with('/') && !lower.starts_with("//"))
            || lower.starts_with('#')
    }
    let events = Parser::new(md).map(|e| match e {
        Event::Html(h) | Event::InlineHtml(h) => Event::Text(h),
        Event::Start(Tag::Link {
            link_type,
            dest_url,
            title,
            id,
        }) if !safe(&dest_url) => Event::Start(Tag::Link {
            link_type,
            dest_url: CowStr::Borrowed("#"),
            title,
            id,
        }),
        Event::Start(Tag::Image {
            link_type,
            dest_url,
            title,
            id,
        }) if !safe(&dest_url) => Event::Start(Tag::Image {
            link_type,
            dest_url: CowStr::Borrowed("#"),
            title,
            id,
        }),
        other => other,
    });
    let mut out = String::new();
    pulldown_cmark::html::push_html(&mut out, events);
    out
}

/// One organisation in a list of scheme pages.
struct OrgLink {
    href: String,
    name: String,
}

#[derive(Template)]
#[template(path = "scheme_list.html")]
struct SchemeListPage {
    t: Tr,
    v: &'static str,
    other_lang: &'static str,
    here: String,
    signout_csrf: Option<String>,
    orgs: Vec<OrgLink>,
}

#[derive(Template)]
#[template(path = "scheme.html")]
struct SchemePage {
    t: Tr,
    v: &'static str,
    other_lang: &'static str,
    here: String,
    signout_csrf: Option<String>,
    name: String,
    /// Rendered by [`markdown`]; empty when the policy has no text.
    mandate_html: String,
    contact_html: String,
    public_href: Option<String>,
}

#[derive(Template)]
#[template(path = "public.html")]
struct PublicPage {
    t: Tr,
    v: &'static str,
    other_lang: &'static str,
    here: String,
    signout_csrf: Option<String>,
    name: String,
    /// "Contacts in YEAR" heading, if a yearly total is released.
    year_heading: Option<String>,
    /// The released total, or "<3" when suppressed.
    total: String,
    contact_html: String,
}

fn md_or_empty(md: &Option<String>) -> String {
    md.as_deref().map(markdown).unwrap_or_default()
}

/// `GET /scheme`: the signed-in person's own scheme page; for admins and researchers the
/// list of every organisation's; before sign-in, the organisations with public pages.
pub async fn scheme_index(State(svc): State<Service>, ctx: Ctx) -> Response {
    let signed_in = ctx.principal().cloned();
    if let Some(org) = signed_in.as_ref().and_then(|p| p.org.clone()) {
        return Redirect::to(&format!("/scheme/{org}")).into_response();
    }
    let policy = svc.current_policy();
    let orgs = policy
        .orgs
        .iter()
        .filter(|o| signed_in.is_some() || o.public_page)
        .map(|o| OrgLink {
            href: if signed_in.is_some() {
                format!("/scheme/{}", o.id)
            } else {
                format!("/public/{}", o.id)
            },
            name: o.name.clone(),
        })
        .collect();
    html(
        StatusCode::OK,
        SchemeListPage {
            t: ctx.t(),
            v: version(),
            other_lang: ctx.lang.other().code(),
            here: "/scheme".into(),
            signout_csrf: ctx.signout_csrf(),
            orgs,
        }
        .render(),
    )
}

/// `GET /scheme/{org}`: the scheme's mandate and how to reach a supporter, for anyone signed
/// in to that organisation (admins and researchers: any).
pub async fn scheme_page(
    State(svc): State<Service>,
    ctx: Ctx,
    PagePath(org_id): PagePath<String>,
) -> Response {
    let Some(who) = ctx.principal().cloned() else {
        return Redirect::to("/").into_response();
    };
    if who.org.as_ref().is_some_and(|o| *o != org_id) {
        return message(&ctx, StatusCode::FORBIDDEN, "error-title", "scope-refused");
    }
    let policy = svc.current_policy();
    let Some(org) = policy.org(&org_id) else {
        return message(&ctx, StatusCode::NOT_FOUND, "error-title", "not-found");
    };
    html(
        StatusCode::OK,
        SchemePage {
            t: ctx.t(),
            v: version(),
            other_lang: ctx.lang.other().code(),
            here: format!("/scheme/{}", org.id),
            signout_csrf: ctx.signout_csrf(),
            name: org.name.clone(),
            mandate_html: md_or_empty(&org.mandate_md),
            contact_html: md_or_empty(&org.contact_md),
            public_href: org.public_page.then(|| format!("/public/{}", org.id)),
        }
        .render(),
    )
}

/// The organisation `id` if the policy gives it a public page.
fn public_org<'a>(svc: &'a Service, id: &str) -> Option<&'a Org> {
    svc.current_policy().org(id).filter(|o| o.public_page)
}

/// `GET /public/{org}`: without sign-in, where the policy turns it on (404 otherwise): the
/// last released yearly total (a release's number, never a raw count; "<3" when below the
/// display threshold) and how to reach a supporter.
pub async fn public_page(
    State(svc): State<Service>,
    ctx: Ctx,
    PagePath(org_id): PagePath<String>,
) -> Response {
    let Some(org) = public_org(&svc, &org_id).cloned() else {
        return message(&ctx, StatusCode::NOT_FOUND, "error-title", "not-found");
    };
    let id = org.id.clone();
    let found = {
        let svc = svc.clone();
        tokio::task::spawn_blocking(move || svc.public_total(&id)).await
    };
    let Ok(Ok(total)) = found else {
        return unavailable(&ctx);
    };
    let t = ctx.t();
    html(
        StatusCode::OK,
        PublicPage {
            t,
            v: version(),
            other_lang: ctx.lang.other().code(),
            here: format!("/public/{}", org.id),
            signout_csrf: ctx.signout_csrf(),
            name: org.name.clone(),
            year_heading: total
                .as_ref()
                .map(|p| t.get1("public-year", "year", p.year)),
            total: match &total {
                Some(p) => match p.total {
                    Some(n) => t.get1("public-total", "total", n),
                    None => format!("<{}", p.suppress_below),
                },
                None => String::new(),
            },
            contact_html: md_or_empty(&org.contact_md),
        }
        .render(),
    )
}

#[cfg(test)]
mod tests {
    use super::markdown;

    #[test]
    fn raw_html_is_escaped() {
        let out = markdown("Hei <script>alert(1)</script>\n\n<div onclick=x>y</div>\n");
        assert!(!out.contains("<script"), "{out}");
        assert!(!out.contains("<div"), "{out}");
        assert!(out.contains("&lt;script&gt;"), "{out}");
    }

    #[test]
    fn only_safe_links() {
        let out = markdown("[a](javascript:alert(1)) [b](https://x.no) [c](tel:113)");
        assert!(!out.contains("javascript"), "{out}");
        assert!(out.contains("href=\"https://x.no\""), "{out}");
        assert!(out.contains("href=\"tel:113\""), "{out}");
        assert!(markdown("**fet**").contains("<strong>fet</strong>"));
    }
}
