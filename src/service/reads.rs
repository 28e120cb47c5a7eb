//! Reads: releases in the caller's scope, the privacy ledger, signed exports and their
//! offline verification. Reads never draw noise.

use super::*;

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

    /// Stored releases the caller may read, filtered. Reads never draw noise.
    pub fn releases(
        &self,
        who: &Principal,
        filter: &ReleaseFilter,
    ) -> Result<Vec<Release>, ServiceError> {
        let org = self.read_scope(who, filter.org.as_deref())?;
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
            .collect())
    }

    /// The privacy ledger the caller may read, with what each organisation has spent.
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
        let mut orgs = Vec::new();
        for o in p
            .orgs
            .iter()
            .filter(|o| org.as_ref().is_none_or(|x| x == &o.id))
        {
            let periods: Vec<serde_json::Value> = per_base
                .iter()
                .filter(|((oid, _), _)| *oid == o.id)
                .map(|((_, b), spent)| serde_json::json!({"period": b, "spent": spent}))
                .collect();
            orgs.push(serde_json::json!({"org": o.id, "periods": periods}));
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
