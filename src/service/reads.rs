//! Reads: releases in the caller's scope, the privacy ledger, signed exports and their
//! offline verification. Reads never draw noise.

use super::*;
use crate::policy::MarginalKind;

/// Which releases a reader asks for.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseFilter {
    /// Release period (`2026-11`, `2026-Q4`, `2026`).
    #[serde(default)]
    pub period: Option<String>,
    /// Organisation id.
    #[serde(default)]
    pub org: Option<String>,
    /// Marginal id.
    #[serde(default)]
    pub marginal: Option<String>,
}

impl Service {
    /// The organisation a reader is limited to, checked against a requested one.
    pub(crate) fn read_scope(
        &self,
        who: &Principal,
        requested: Option<&str>,
    ) -> Result<Option<String>, ServiceError> {
        require(
            who,
            &[
                Role::Admin,
                Role::Researcher,
                Role::Coordinator,
                Role::Leader,
            ],
            "an admin, researcher, coordinator or leader token",
        )?;
        if let Some(org) = requested.filter(|o| !self.knows_org(o)) {
            return Err(ServiceError::UnknownFilter {
                field: "org",
                value: org.to_string(),
            });
        }
        match (&who.org, who.role) {
            (Some(own), Role::Coordinator | Role::Leader) => match requested {
                Some(org) if org != own => Err(ServiceError::WrongOrg(org.to_string())),
                _ => Ok(Some(own.clone())),
            },
            _ => Ok(requested.map(str::to_string)),
        }
    }

    /// Whether the caller may read supporter-load releases, checked against a requested
    /// marginal. Load releases are the scheme coordinator's (own organisation), and admins' and
    /// researchers', who read every release; leaders read contacts only, so a leader asking for
    /// a load marginal by name is refused rather than handed an empty list.
    pub(crate) fn load_scope(
        &self,
        who: &Principal,
        marginal: Option<&str>,
    ) -> Result<bool, ServiceError> {
        let may = who.role != Role::Leader;
        let asks_load = marginal
            .and_then(|m| self.policy.marginal(m))
            .is_some_and(|m| matches!(m.kind, MarginalKind::SupporterLoad));
        if asks_load && !may {
            return Err(ServiceError::WrongRole {
                role: who.role.as_str(),
                needed: "a coordinator, researcher or admin token to read a supporter-load marginal: load releases are for the scheme's coordinator, not for leaders",
            });
        }
        Ok(may)
    }

    /// Stored releases the caller may read, filtered. Reads never draw noise.
    pub fn releases(
        &self,
        who: &Principal,
        filter: &ReleaseFilter,
    ) -> Result<Vec<Release>, ServiceError> {
        let org = self.read_scope(who, filter.org.as_deref())?;
        let load = self.load_scope(who, filter.marginal.as_deref())?;
        let period = match &filter.period {
            Some(t) => Some(t.parse::<Period>().map_err(ServiceError::InvalidPeriod)?),
            None => None,
        };
        if let Some(m) = filter
            .marginal
            .as_deref()
            .filter(|m| !self.knows_marginal(m))
        {
            return Err(ServiceError::UnknownFilter {
                field: "marginal",
                value: m.to_string(),
            });
        }
        let prefix = period.map(|p| format!("{p}/")).unwrap_or_default();
        Ok(self
            .store
            .releases(&prefix)?
            .into_iter()
            .filter(|r| org.as_ref().is_none_or(|o| &r.org == o))
            .filter(|r| filter.marginal.as_ref().is_none_or(|m| &r.marginal == m))
            .filter(|r| load || r.kind != "supporter_load")
            .collect())
    }

    /// The privacy ledger the caller may read, with what each organisation has spent and has
    /// left, in the policy's measure (ε or ρ): per base period, `spent` on the releases covering
    /// it and `remaining` = budget − spent (the limit under the `contact` unit; under `supporter`
    /// the rolling year binds first); per organisation, `rolling_year`: the most its releases
    /// overlapping any 365 days spend together, against the rolling-year cap. JSON keeps
    /// OpenDP's exact values.
    pub fn budget(&self, who: &Principal) -> Result<serde_json::Value, ServiceError> {
        let org = self.read_scope(who, None)?;
        let p = &*self.policy;
        let entries: Vec<LedgerEntry> = self
            .store
            .ledger()?
            .into_iter()
            .filter(|e| org.as_ref().is_none_or(|o| &e.org == o))
            .collect();
        let mut per_base: BTreeMap<(&str, Period), f64> = BTreeMap::new();
        for e in &entries {
            for b in &e.covers {
                *per_base.entry((e.org.as_str(), *b)).or_default() += e.spend;
            }
        }
        // Organisations of the file, and those that left it but still have releases.
        let mut ids: Vec<&str> = p.orgs.iter().map(|o| o.id.as_str()).collect();
        for (oid, _) in per_base.keys() {
            if !ids.contains(oid) {
                ids.push(oid);
            }
        }
        let mut orgs = Vec::new();
        for id in ids
            .into_iter()
            .filter(|id| org.as_deref().is_none_or(|x| x == *id))
        {
            let periods: Vec<serde_json::Value> = per_base
                .iter()
                .filter(|((oid, _), _)| *oid == id)
                .map(|((_, b), spent)| {
                    // The budget of the policy the period was collected under, or the file's
                    // if stricter: what the release job checks against.
                    let budget = self
                        .policy_at(*b)
                        .map_or(p.privacy.budget, |r| r.privacy.budget)
                        .min(p.privacy.budget);
                    serde_json::json!({
                        "period": b,
                        "budget": budget,
                        "spent": spent,
                        "remaining": (budget - spent).max(0.0),
                    })
                })
                .collect();
            let most = most_spent_in_a_year(entries.iter().filter(|e| e.org == id));
            orgs.push(serde_json::json!({
                "org": id,
                "periods": periods,
                "rolling_year": {
                    "cap": p.privacy.rolling_year_cap,
                    "most_spent": most,
                    "remaining": (p.privacy.rolling_year_cap - most).max(0.0),
                },
            }));
        }
        Ok(serde_json::json!({
            "measure": p.privacy.mechanism.measure(),
            "privacy_unit": p.privacy.unit.as_str(),
            "budget": p.privacy.budget,
            "budget_applies_to": match p.privacy.unit {
                PrivacyUnit::Contact => "each contact, summed over every release that includes it",
                PrivacyUnit::Supporter => "each supporter, summed over the releases of a rolling year",
            },
            "orgs": orgs,
            "entries": entries,
        }))
    }

    /// The public half of the release-signing key (base64url Ed25519).
    pub fn public_key(&self) -> String {
        self.signing.public_key()
    }

    /// A signed export document: `{"releases": [...], "signature": {...}}`. The signature
    /// covers the canonical JSON of the `releases` value (keys sorted, no spaces), so a saved
    /// file can be checked offline with `tellestrek verify`.
    pub fn signed_export(&self, releases: &[Release]) -> Result<serde_json::Value, ServiceError> {
        let value =
            serde_json::to_value(releases).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let message = canonical_json(&value);
        Ok(serde_json::json!({
            "releases": value,
            "signature": {
                "algorithm": "Ed25519",
                "public_key": self.signing.public_key(),
                "signed": "canonical JSON of the releases value: keys sorted, no whitespace",
                "value": self.signing.sign(message.as_bytes()),
            }
        }))
    }

    /// Signs arbitrary export bytes (the CSV form).
    pub fn sign_bytes(&self, bytes: &[u8]) -> String {
        self.signing.sign(bytes)
    }
}

/// The most that `entries` spend together on releases overlapping any one 365-day window
/// (the figure the rolling-year cap limits). A release counts in every window that overlaps the
/// base periods it covers; the fullest window starts 364 days before some release's first day,
/// so those starts are the only ones to try.
fn most_spent_in_a_year<'a>(entries: impl Iterator<Item = &'a LedgerEntry> + Clone) -> f64 {
    let span = |covers: &[Period]| -> Option<(Date, Date)> {
        Some((covers.first()?.start(), covers.last()?.end()))
    };
    let year = Duration::days(365);
    entries
        .clone()
        .filter_map(|e| span(&e.covers))
        .map(|(s, _)| s - year + Duration::days(1))
        .map(|a| {
            entries
                .clone()
                .filter(|e| span(&e.covers).is_some_and(|(s, end)| a + year > s && a < end))
                .map(|e| e.spend)
                .sum::<f64>()
        })
        .fold(0.0, f64::max)
}

/// The canonical text of a JSON value: serde_json's `Value` keeps object keys sorted, and
/// compact output has no whitespace, so equal values give equal bytes.
pub fn canonical_json(value: &serde_json::Value) -> String {
    value.to_string()
}

/// Checks a saved export offline: the signature over its `releases`, with `public_key` if
/// given, else the key embedded in the file. Returns how many releases it holds.
pub fn verify_export(text: &str, public_key: Option<&str>) -> Result<usize, String> {
    let doc: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("the file is not JSON: {e}"))?;
    let releases = doc.get("releases").ok_or("the file has no `releases`")?;
    let sig = doc.get("signature").ok_or("the file has no `signature`")?;
    let value = sig
        .get("value")
        .and_then(|v| v.as_str())
        .ok_or("the signature has no `value`")?;
    let key = match public_key {
        Some(k) => k.to_string(),
        None => sig
            .get("public_key")
            .and_then(|v| v.as_str())
            .ok_or("the signature names no `public_key`")?
            .to_string(),
    };
    if !auth::verify_signature(&key, canonical_json(releases).as_bytes(), value) {
        return Err("the signature does not match: the file was changed after it was signed, or signed by another key".into());
    }
    Ok(releases.as_array().map_or(0, |a| a.len()))
}
