//! The public page's one number: an organisation's last released yearly total, read from
//! releases only (never from raw counts), for organisations whose policy turns
//! `public_page` on.

use super::*;
use crate::store::ReleaseScan;

/// The last released yearly total of one organisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicTotal {
    /// The calendar year of the release.
    pub year: i32,
    /// The released (noisy, post-processed) total of contacts in that year; `None` when it is
    /// below the release's display threshold (shown as "<`suppress_below`").
    pub total: Option<u64>,
    /// The release's display threshold (the policy's `suppress_below`, e.g. 3).
    pub suppress_below: u32,
}

impl Service {
    /// The last released yearly total of `org`, from the newest yearly contacts release
    /// (every contacts release of a period carries the same `total_estimate`). `None` if the
    /// organisation has no public page in the current policy or no yearly release yet.
    /// Needs no principal: it is published on purpose. Blocking.
    pub fn public_total(&self, org: &str) -> Result<Option<PublicTotal>, ServiceError> {
        if !self
            .current_policy()
            .org(org)
            .is_some_and(|o| o.public_page)
        {
            return Ok(None);
        }
        let scan = ReleaseScan {
            org: Some(org),
            starts_from: None,
            starts_before: None,
        };
        let mut newest: Option<(i32, String)> = None;
        for entry in self.store.release_index(&scan, None)? {
            let entry = entry?;
            let mut parts = entry.id.splitn(3, '/');
            let (Some(Ok(Period::Year { year })), Some(_), Some(marginal)) = (
                parts.next().map(str::parse::<Period>),
                parts.next(),
                parts.next(),
            ) else {
                continue;
            };
            if self.is_load_marginal(marginal) {
                continue;
            }
            if newest.as_ref().is_none_or(|(y, _)| year > *y) {
                newest = Some((year, entry.id));
            }
        }
        let Some((year, id)) = newest else {
            return Ok(None);
        };
        let r = self.release(&id)?;
        Ok(Some(PublicTotal {
            year,
            total: (r.total_estimate >= u64::from(r.suppress_below)).then_some(r.total_estimate),
            suppress_below: r.suppress_below,
        }))
    }
}
