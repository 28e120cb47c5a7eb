//! The demo: a fresh data directory with a simulated history, released, for a newcomer to
//! look at, and what the released numbers say about it in a leader's words.
//!
//! The history is built so that its story shows through the noise of the default policy
//! (a unit's quarter is ±7 at ε 0.4, the organisation's month ±4 at ε 0.7). Figures for a run
//! with OpenDP noise, measured over 180 runs:
//! - **a trend**: uptake grows fourfold over the history (0.4 to 1.6 times the yearly rate) as
//!   the scheme becomes known, so Helse Vestfjord's last ten months are 9–10 contacts a month
//!   above its first ten, against a 95% margin of about ±1.7: "probably rose" in every run;
//! - **a spike**: 40 extra contacts in intensiv in the month of a serious event, on a usual
//!   quarter of about 2 whose interval reaches about 7: the spike quarter's interval starts
//!   near 35, above twice that, unless its noise is below -20 (about 1 run in 7,000). Some
//!   other unit's quarter crosses its line by noise alone in about 1 run in 50;
//! - **a unit with no uptake**: psykisk helsevern, the largest unit (520 employees), where the
//!   rest of the organisation's rate would give about 37 contacts over the six full quarters;
//!   a silent unit's one-sided 95% bound is about 14 ± 9 (a sum of six Laplace noises, with
//!   heavier tails than a normal), so it shows as "probably less" in about 99 runs of 100
//!   (178 of 180) and is left out otherwise. Another unit is called "probably less" in about
//!   1 run in 60.
//!
//! Rates are 6 contacts per 100 employees a year on average in the hospital trust and 2.5 in
//! the municipality: the top of the 1–5 that schemes report, and a little above, so that a
//! silent unit can be told from a busy one at these noise levels.
//!
//! Everything [`story`] says is read from the released numbers (estimates, intervals, and the
//! unbiased noisy values with their variances), never from the simulation's truth.
//!
//! The simulation goes through the real use cases (tick validation, caps, the lifecycle job
//! with OpenDP noise); only its random choices come from a seeded generator, never the noise.

use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Poisson};
use time::{Duration, OffsetDateTime};

mod story;
pub use story::{Direction, Finding, TREND_MONTHS, privacy_summary, render, story};

use crate::clock::{Clock, FixedClock};
use crate::domain::{Granularity, Period, TagSet};
use crate::dp::NoiseSource;
use crate::service::{
    LifecycleReport, NewTokenRequest, Principal, Service, ServiceError, TickRequest,
};

/// Months of simulated history before the current one.
pub const HISTORY_MONTHS: u32 = 20;
/// The unit with the spike, and how many months before now it happened.
pub const SPIKE_UNIT: (&str, &str) = ("helse-vestfjord", "intensiv");
/// Months before the current one in which the serious event happened.
pub const SPIKE_MONTHS_AGO: u32 = 8;
/// Extra contacts after the serious event (group sessions and follow-ups for the unit).
pub const SPIKE_CONTACTS: u32 = 40;
/// The unit with no uptake: the largest, so that its silence shows through the noise.
pub const SILENT_UNIT: (&str, &str) = ("helse-vestfjord", "psykisk-helsevern");

/// Contacts per 100 employees per year, by organisation, on average over the history.
fn yearly_rate(org: &str) -> f64 {
    if org == "vikafjord-kommune" { 2.5 } else { 6.0 }
}

/// A tag value drawn with weights (the first values are the common ones).
fn pick(rng: &mut StdRng, ids: &[&str], weights: &[f64]) -> String {
    let total: f64 = weights.iter().sum();
    let mut x = rng.random::<f64>() * total;
    for (id, w) in ids.iter().zip(weights) {
        if x < *w {
            return id.to_string();
        }
        x -= w;
    }
    ids[ids.len() - 1].to_string()
}

/// Tags for one simulated contact; `serious` for contacts after the serious event.
fn tags(svc: &Service, rng: &mut StdRng, serious: bool) -> TagSet {
    let p = svc.policy();
    let mut t = TagSet::new();
    for d in &p.dimensions {
        let ids: Vec<&str> = d.values.iter().map(|v| v.id.as_str()).collect();
        let v = match (d.id.as_str(), serious) {
            ("utlosende_arsak", true) => {
                pick(rng, &["alvorlig-hendelse", "uventet-dodsfall"], &[3.0, 1.0])
            }
            ("initiering", true) => pick(
                rng,
                &["oppsokende", "leder-initiert", "selvhenvendt"],
                &[4.0, 2.0, 1.0],
            ),
            ("format", true) => pick(rng, &["gruppe", "individuell"], &[1.0, 1.0]),
            ("yrkesgruppe", _) => pick(rng, &ids, &[3.0, 5.0, 2.0, 0.5, 0.5, 1.0, 0.7, 0.3, 0.3]),
            _ => {
                let w: Vec<f64> = (0..ids.len()).map(|i| 1.0 / (i as f64 + 1.0)).collect();
                pick(rng, &ids, &w)
            }
        };
        t.insert(d.id.clone(), v);
    }
    t
}

/// The demo's world after simulation: the service and a token for each role.
pub struct Demo {
    /// The service over the demo data directory.
    pub svc: Service,
    /// The clock, standing at "now".
    pub clock: Arc<FixedClock>,
    /// Role name and organisation (if scoped) with its token, in the order to print them.
    pub tokens: Vec<(String, Option<String>, String)>,
    /// What the final lifecycle run did.
    pub report: LifecycleReport,
}

/// Builds the demo in `dir`, with "now" at `now`, drawing releases with `noise` (the binary
/// uses OpenDP; tests use zero noise to check the simulation exactly).
pub async fn build(
    dir: &std::path::Path,
    now: OffsetDateTime,
    noise: Arc<dyn NoiseSource>,
) -> Result<Demo, ServiceError> {
    let policy = crate::policy::Policy::builtin();
    let current = Period::containing(Granularity::Month, now.date());
    let mut first = current;
    for _ in 0..HISTORY_MONTHS {
        first = first.prev();
    }
    let clock = Arc::new(FixedClock::new(now));
    let start = first.start().midnight().assume_utc() + Duration::days(14);
    clock.set(start);
    let (svc, admin) = Service::open(dir, policy, clock.clone(), None)?;
    let svc = svc.with_noise(noise);
    let admin = admin.ok_or_else(|| ServiceError::InvalidField {
        field: "data",
        code: "not_empty",
        message: "the demo needs an empty data directory".into(),
    })?;
    let admin_p = svc.authenticate(Some(admin.expose()))?;
    let mut rng = StdRng::seed_from_u64(2026);

    // Supporters: a handful per organisation, created as the scheme's coordinator would.
    let mut supporters: Vec<(String, Principal)> = Vec::new();
    for (org, n) in [("helse-vestfjord", 10), ("vikafjord-kommune", 6)] {
        for _ in 0..n {
            let t = svc.create_token(
                &admin_p,
                NewTokenRequest {
                    role: "supporter".into(),
                    org: Some(org.into()),
                },
            )?;
            supporters.push((org.to_string(), svc.authenticate(Some(&t.token))?));
        }
    }
    let mut spike = current;
    for _ in 0..SPIKE_MONTHS_AGO {
        spike = spike.prev();
    }

    let mut month = first;
    while month <= current {
        let mid = month.start().midnight().assume_utc() + Duration::days(14);
        clock.set(if month == current { now } else { mid });
        for org in &svc.policy().orgs.clone() {
            let staff: Vec<&Principal> = supporters
                .iter()
                .filter(|(o, _)| o == &org.id)
                .map(|(_, p)| p)
                .collect();
            // Uptake grows fourfold over the history, as the scheme becomes known.
            let age = f64::from(HISTORY_MONTHS) - months_between(month, current) as f64;
            let growth = 0.4 + 1.2 * age / f64::from(HISTORY_MONTHS);
            for unit in &org.units {
                let silent = (org.id.as_str(), unit.id.as_str()) == SILENT_UNIT;
                let lambda = if silent {
                    0.0
                } else {
                    f64::from(unit.headcount) * yearly_rate(&org.id) / 100.0 / 12.0 * growth
                };
                let mut n = if lambda > 0.0 {
                    Poisson::new(lambda)
                        .map(|d| d.sample(&mut rng) as u32)
                        .unwrap_or(0)
                } else {
                    0
                };
                let is_spike = month == spike && (org.id.as_str(), unit.id.as_str()) == SPIKE_UNIT;
                if is_spike {
                    n += SPIKE_CONTACTS;
                }
                for i in 0..n {
                    let who = staff[rng.random_range(0..staff.len())];
                    let serious = is_spike && i >= n - SPIKE_CONTACTS;
                    let req = TickRequest {
                        org: org.id.clone(),
                        unit: unit.id.clone(),
                        tags: tags(&svc, &mut rng, serious),
                        count: None,
                        period: None,
                    };
                    match svc.log_tick(who, req).await {
                        Ok(_) | Err(ServiceError::OverCap { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        month = month.next();
    }
    clock.set(now);
    let report = svc.run_lifecycle().await?;

    let mut tokens = vec![("admin".to_string(), None, admin.expose().to_string())];
    for (role, org) in [
        ("coordinator", Some("helse-vestfjord")),
        ("leader", Some("helse-vestfjord")),
        ("leader", Some("vikafjord-kommune")),
        ("researcher", None),
        ("supporter", Some("helse-vestfjord")),
    ] {
        let t = svc.create_token(
            &admin_p,
            NewTokenRequest {
                role: role.into(),
                org: org.map(str::to_string),
            },
        )?;
        tokens.push((role.to_string(), org.map(str::to_string), t.token));
    }
    Ok(Demo {
        svc,
        clock,
        tokens,
        report,
    })
}

fn months_between(a: Period, b: Period) -> i64 {
    let (ya, ma) = (a.start().year(), a.start().month() as i64);
    let (yb, mb) = (b.start().year(), b.start().month() as i64);
    i64::from(yb - ya) * 12 + (mb - ma)
}

/// A small text table of the released unit-by-quarter estimates of one organisation, so the
/// newcomer sees the spike and the silent unit at once. Reads releases only.
pub fn unit_table(svc: &Service, org: &str) -> Result<String, ServiceError> {
    let releases: Vec<_> = svc
        .store()
        .releases("")?
        .into_iter()
        .filter(|r| r.org == org && r.marginal == "unit")
        .collect();
    let Some(o) = svc.policy().org(org) else {
        return Ok(String::new());
    };
    let mut out = format!("{:<22}", "unit");
    for r in &releases {
        out.push_str(&format!("{:>9}", r.period.to_string()));
    }
    out.push('\n');
    let below = svc.policy().privacy.suppress_below;
    for u in &o.units {
        out.push_str(&format!("{:<22}", u.id));
        for r in &releases {
            let cell = r.cells.iter().find(|c| c.key.get("unit") == Some(&u.id));
            let text = match cell {
                Some(c) if c.suppressed => format!("<{below}"),
                Some(c) => c.estimate.to_string(),
                None => "-".into(),
            };
            out.push_str(&format!("{text:>9}"));
        }
        out.push('\n');
    }
    Ok(out)
}

/// Quotes `text` for a POSIX shell: single quotes, with any single quote closed, escaped and
/// reopened, so a path or token is taken literally by `source`.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The demo's copy-paste environment, as `export` lines a reader can paste into a shell or
/// `source` from the env file: `TELLESTREK_URL` (the address the demo listens on), a token per
/// role (`ADMIN`, `COORDINATOR`, `LEADER`, `RESEARCHER`, `SUPPORTER`; the scoped ones for
/// `ORG`, and `OTHER_LEADER` for `OTHER_ORG`), the periods the README's walk-through names
/// (`PERIOD` the current one, `PREVIOUS_PERIOD`, `CLOSED_PERIOD` the newest that no longer takes
/// ticks) and, with `bin_dir`, `PATH` with that directory first, so `tellestrek` is this build.
///
/// Tokens are printed because the demo holds only simulated data; a real server shows a token
/// once, to the person who created it.
pub fn env_lines(
    demo: &Demo,
    url: &str,
    bin_dir: Option<&std::path::Path>,
) -> Result<String, ServiceError> {
    let org = demo
        .tokens
        .iter()
        .find_map(|(_, o, _)| o.clone())
        .unwrap_or_default();
    let mut lines = vec![format!("export TELLESTREK_URL={}", shell_quote(url))];
    for (role, scope, token) in &demo.tokens {
        let name = match scope {
            Some(o) if o != &org => format!("OTHER_{}", role.to_uppercase()),
            _ => role.to_uppercase(),
        };
        lines.push(format!("export {name}={}", shell_quote(token)));
    }
    lines.push(format!("export ORG={}", shell_quote(&org)));
    if let Some(other) = demo
        .tokens
        .iter()
        .filter_map(|(_, o, _)| o.as_deref())
        .find(|o| *o != org)
    {
        lines.push(format!("export OTHER_ORG={}", shell_quote(other)));
    }
    let svc = &demo.svc;
    let current = Period::containing(svc.policy().granularity, demo.clock.today());
    let mut closed = current;
    while closed > svc.epoch()? && svc.period_state(closed)? == crate::domain::PeriodState::Open {
        closed = closed.prev();
    }
    lines.push(format!("export PERIOD={current}"));
    lines.push(format!("export PREVIOUS_PERIOD={}", current.prev()));
    lines.push(format!("export CLOSED_PERIOD={closed}"));
    if let Some(dir) = bin_dir {
        lines.push(format!(
            "export PATH={}\"${{PATH:+:$PATH}}\"",
            shell_quote(&dir.display().to_string())
        ));
    }
    let mut out = lines.join("\n");
    out.push('\n');
    Ok(out)
}

/// One one-time sign-in link per role of the demo's main organisation (and the admin and
/// researcher), each opening that role's page: `(variable, role, absolute link)`, e.g.
/// `("SIGNIN_LEADER", "leader", "http://127.0.0.1:8080/invite/…")`. Each link signs one
/// browser in once (a new account of that role, made by [`Service::sign_in_link`]).
pub fn sign_in_links(
    demo: &Demo,
    url: &str,
) -> Result<Vec<(String, String, String)>, ServiceError> {
    let org = demo
        .tokens
        .iter()
        .find_map(|(_, o, _)| o.clone())
        .unwrap_or_default();
    let mut out = Vec::new();
    for (role, scope, _) in &demo.tokens {
        if scope.as_ref().is_some_and(|o| *o != org) {
            continue;
        }
        let Ok(r) = role.parse::<crate::domain::Role>() else {
            continue;
        };
        let supporter = r == crate::domain::Role::Supporter;
        let name = supporter.then_some("Demo");
        // The demo supporter belongs to the organisation's first unit, so their first contact
        // takes as few taps as a real supporter's whose coordinator named their unit.
        let policy = demo.svc.current_policy();
        let unit = scope
            .as_deref()
            .and_then(|o| policy.org(o))
            .and_then(|o| o.units.first())
            .filter(|_| supporter)
            .map(|u| u.id.clone());
        let path = demo
            .svc
            .sign_in_link(r, scope.as_deref(), name, unit.as_deref())?;
        out.push((
            format!("SIGNIN_{}", role.to_uppercase()),
            role.clone(),
            format!("{url}{path}"),
        ));
    }
    Ok(out)
}

/// `sign_in_links` as `export` lines for the env file.
pub fn sign_in_env_lines(links: &[(String, String, String)]) -> String {
    links
        .iter()
        .map(|(var, _, link)| format!("export {var}={}\n", shell_quote(link)))
        .collect()
}

#[cfg(test)]
mod env_tests {
    use super::shell_quote;

    #[test]
    fn quoting_keeps_a_single_quote_literal() {
        assert_eq!(shell_quote("abc"), "'abc'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
