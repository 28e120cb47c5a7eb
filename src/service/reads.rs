//! Reads: releases in the caller's scope, the privacy ledger, signed exports and their
//! offline verification. Reads never draw noise.

use super::*;
use crate::policy::MarginalKind;
use crate::store::ReleaseScan;
use std::collections::HashMap;

/// Releases on one page when the reader does not say (`limit`).
pub const DEFAULT_PAGE_RELEASES: usize = 100;
/// The most releases one page may hold. At the national scale's largest release (a unit
/// table of 40 cells, about 6 KB of JSON) a full page is a few MB: the bound on what one read
/// holds in memory, since a page's bytes are kept to be signed.
pub const MAX_PAGE_RELEASES: usize = 1000;

/// Which releases a reader asks for.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseFilter {
    /// Release period (`2026-11`, `2026-Q4`, `2026`): exactly this period.
    #[serde(default)]
    pub period: Option<String>,
    /// Organisation id.
    #[serde(default)]
    pub org: Option<String>,
    /// Marginal id.
    #[serde(default)]
    pub marginal: Option<String>,
    /// Releases whose period lies within `from` and `to` (both periods, both included, of any
    /// length): `from=2025-01&to=2025-12` gives 2025's months, quarters and the year.
    #[serde(default)]
    pub from: Option<String>,
    /// See `from`; either may be left out.
    #[serde(default)]
    pub to: Option<String>,
}

/// Where a page starts and how long it is.
#[derive(Debug, Default, Clone)]
pub struct PageRequest {
    /// Releases per page; default [`DEFAULT_PAGE_RELEASES`], at most [`MAX_PAGE_RELEASES`].
    pub limit: Option<u64>,
    /// The `next` of the previous page (opaque to readers).
    pub cursor: Option<String>,
}

/// One page of a release listing: the ids to serve, in order, and where the next page starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleasePage {
    /// Release ids, in the listing's stable order.
    pub ids: Vec<String>,
    /// The cursor of the next page; `None` on the last page.
    pub next: Option<String>,
}

/// Threads that decode and serialise release pages (JSON and CSV).
const EXPORT_THREADS: usize = 2;

/// Nice value of the export threads (Linux keeps one per thread; 0 is normal, 19 the
/// lowest). At 10 a busy export thread gets about a tenth of the CPU time of a normal thread
/// that wants the same core, so researchers' downloads cannot slow ticks down, while idle CPU
/// still goes to the downloads.
const EXPORT_NICE: i32 = 10;

/// A unit of export work.
type ExportJob = Box<dyn FnOnce() + Send + 'static>;

/// The queue of the export threads, started on first use. Two threads at a lowered priority,
/// so that however many readers download at once, exports use at most two cores and yield
/// them to ticks. Jobs never wait for a reader (a page is written to an unbounded channel; it
/// is bounded by the page size), so slow readers cannot hold these threads.
fn export_queue() -> &'static std::sync::mpsc::Sender<ExportJob> {
    static QUEUE: std::sync::OnceLock<std::sync::mpsc::Sender<ExportJob>> =
        std::sync::OnceLock::new();
    QUEUE.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<ExportJob>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..EXPORT_THREADS {
            let rx = rx.clone();
            // If no thread starts, the receiver is dropped and every send reports it.
            let _ = std::thread::Builder::new()
                .name(format!("tellestrek-export-{i}"))
                .spawn(move || {
                    lower_this_threads_priority();
                    loop {
                        let job = match rx.lock().unwrap_or_else(|p| p.into_inner()).recv() {
                            Ok(job) => job,
                            Err(_) => return,
                        };
                        // A panicking job drops its answer channel (the reader gets a 500);
                        // the thread lives on.
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                    }
                });
        }
        tx
    })
}

/// Lowers the calling thread's scheduling priority to [`EXPORT_NICE`]. Linux only (elsewhere
/// the nice value is per process); a failure leaves the normal priority, which is only slower
/// for ticks under heavy downloads.
fn lower_this_threads_priority() {
    // `None` is "the caller", which on Linux is this thread; rustix's safe wrapper.
    let _ = rustix::process::setpriority_process(None, EXPORT_NICE);
}

/// The most bytes of canonical release text kept in memory. The national scale (30
/// organisations × 40 units × 5 years, 3,600 releases) is about 4 MB.
const CANONICAL_CACHE_BYTES: usize = 32 * 1024 * 1024;

/// Canonical JSON text of releases already served, by id, so that repeated downloads of the
/// same listing cost a copy and a signature instead of a parse and a serialisation of every
/// release (two thirds of an export's CPU). Releases are immutable, so an entry never goes
/// stale; when the bound is passed the cache is emptied and refills (simple, and rare).
#[derive(Default)]
pub(crate) struct CanonicalCache {
    /// The texts, and their total length in bytes.
    inner: Mutex<(HashMap<String, Arc<str>>, usize)>,
}

impl CanonicalCache {
    fn get(&self, id: &str) -> Option<Arc<str>> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.0.get(id).cloned()
    }

    fn put(&self, id: &str, text: Arc<str>) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.1 + text.len() > CANONICAL_CACHE_BYTES {
            *inner = Default::default();
        }
        inner.1 += text.len();
        inner.0.insert(id.to_string(), text);
    }
}

/// Version tag of cursors, so a cursor of another layout is refused rather than misread. A
/// cursor is base64url of this byte, the index key of the last release served, and an 8-byte
/// tag under the server key ([`auth::ServerKey::short_tag`]): opaque to readers, and a changed
/// one is refused.
const CURSOR_VERSION: u8 = 1;

fn invalid_cursor(why: &str) -> ServiceError {
    ServiceError::InvalidField {
        field: "cursor",
        code: "invalid_cursor",
        message: format!(
            "{why}; use the `next` value of the previous page with the same filters, or leave it out to start again"
        ),
    }
}

fn parse_period(field: &'static str, text: &str) -> Result<Period, ServiceError> {
    text.parse::<Period>().map_err(|e| {
        if field == "period" {
            ServiceError::InvalidPeriod(e)
        } else {
            ServiceError::InvalidField {
                field,
                code: "invalid_period",
                message: e,
            }
        }
    })
}

/// The privacy ledger in a caller's scope (`GET /api/v1/budget`), in the policy's measure.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Budget {
    /// `epsilon` or `rho`.
    #[schema(value_type = String)]
    pub measure: &'static str,
    /// `contact` or `supporter`.
    #[schema(value_type = String)]
    pub privacy_unit: &'static str,
    /// The budget of one privacy unit.
    pub budget: f64,
    /// What the budget bounds, in words.
    #[schema(value_type = String)]
    pub budget_applies_to: &'static str,
    /// Per organisation: spent and left.
    pub orgs: Vec<OrgBudget>,
    /// The ledger's lines.
    pub entries: Vec<LedgerEntry>,
}

/// What one organisation has spent and has left.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OrgBudget {
    /// Organisation id.
    pub org: String,
    /// Per base period covered by a release.
    pub periods: Vec<PeriodBudget>,
    /// The rolling-year cap and the most spent in any 365 days.
    pub rolling_year: RollingYear,
}

/// What the releases covering one base period spent.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PeriodBudget {
    /// The base period.
    pub period: Period,
    /// Its budget (the stricter of its own policy's and the file's).
    pub budget: f64,
    /// Spent by the releases covering it.
    pub spent: f64,
    /// `budget − spent`, at least 0.
    pub remaining: f64,
}

/// The rolling-year cap of one organisation.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RollingYear {
    /// The policy's cap.
    pub cap: f64,
    /// The most its releases overlapping any 365 days spend together.
    pub most_spent: f64,
    /// `cap − most_spent`, at least 0.
    pub remaining: f64,
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
        let asks_load = marginal.is_some_and(|m| self.is_load_marginal(m));
        if asks_load && !may {
            return Err(ServiceError::WrongRole {
                role: who.role.as_str(),
                needed: "a coordinator, researcher or admin token to read a supporter-load marginal: load releases are for the scheme's coordinator, not for leaders",
            });
        }
        Ok(may)
    }

    /// Whether table `id` is a supporter-load table in any policy of this data directory.
    pub(crate) fn is_load_marginal(&self, id: &str) -> bool {
        std::iter::once(&*self.policy)
            .chain(self.regimes.all().iter().map(|r| &*r.policy))
            .filter_map(|p| p.marginal(id))
            .any(|m| matches!(m.kind, MarginalKind::SupporterLoad))
    }

    /// One page of the releases the caller may read, filtered: the ids and the next cursor.
    /// Reads index keys only (no release is decoded), so it is cheap at any scale; the order
    /// is stable (organisation, then period start, when scoped to one organisation; period
    /// start, then organisation, otherwise), and a cursor resumes after the last id served,
    /// so releases drawn meanwhile are neither served twice nor shift the pages. Blocking.
    pub fn release_page(
        &self,
        who: &Principal,
        filter: &ReleaseFilter,
        page: &PageRequest,
    ) -> Result<ReleasePage, ServiceError> {
        let org = self.read_scope(who, filter.org.as_deref())?;
        let load = self.load_scope(who, filter.marginal.as_deref())?;
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
        let period = filter
            .period
            .as_deref()
            .map(|t| parse_period("period", t))
            .transpose()?;
        let from = filter
            .from
            .as_deref()
            .map(|t| parse_period("from", t))
            .transpose()?;
        let to = filter
            .to
            .as_deref()
            .map(|t| parse_period("to", t))
            .transpose()?;
        if period.is_some() && (from.is_some() || to.is_some()) {
            return Err(ServiceError::InvalidField {
                field: "period",
                code: "conflicting_filters",
                message: "give either one period, or a range with from and to, not both".into(),
            });
        }
        if let (Some(f), Some(t)) = (from, to)
            && t.end() <= f.start()
        {
            return Err(ServiceError::InvalidField {
                field: "to",
                code: "invalid_period",
                message: format!("{t} ends before {f} starts"),
            });
        }
        let limit = match page.limit {
            None => DEFAULT_PAGE_RELEASES,
            Some(n) if (1..=MAX_PAGE_RELEASES as u64).contains(&n) => n as usize,
            Some(n) => {
                return Err(ServiceError::InvalidField {
                    field: "limit",
                    code: "invalid_limit",
                    message: format!(
                        "{n} is not a page size here; ask for 1 to {MAX_PAGE_RELEASES} releases (default {DEFAULT_PAGE_RELEASES})"
                    ),
                });
            }
        };
        let after = match page.cursor.as_deref() {
            None => None,
            Some(c) => {
                let raw = data_encoding::BASE64URL_NOPAD
                    .decode(c.as_bytes())
                    .map_err(|_| invalid_cursor("this is not a cursor of Tellestrek"))?;
                match raw.split_first() {
                    Some((&CURSOR_VERSION, rest)) if rest.len() > 8 => {
                        let (key, tag) = rest.split_at(rest.len() - 8);
                        if self.server_key.short_tag(key) != tag {
                            return Err(invalid_cursor("this cursor was changed"));
                        }
                        Some(key.to_vec())
                    }
                    _ => return Err(invalid_cursor("this is not a cursor of Tellestrek")),
                }
            }
        };
        let scan = ReleaseScan {
            org: org.as_deref(),
            starts_from: period.or(from).map(|p| p.start()),
            starts_before: match (period, to) {
                (Some(p), _) => Some(p.start() + Duration::days(1)),
                (None, Some(t)) => Some(t.end()),
                (None, None) => None,
            },
        };
        let index = self
            .store
            .release_index(&scan, after.as_deref())
            .map_err(|e| match e {
                StoreError::CursorOutOfRange => {
                    invalid_cursor("this cursor belongs to a listing with other filters")
                }
                e => e.into(),
            })?;
        let mut ids = Vec::new();
        let mut last_key = Vec::new();
        let mut more = false;
        for entry in index {
            let entry = entry?;
            let (p, m) = id_period_marginal(&entry.id)?;
            if period.is_some_and(|want| want != p)
                || to.is_some_and(|t| p.end() > t.end())
                || filter.marginal.as_deref().is_some_and(|want| want != m)
                || (!load && self.is_load_marginal(m))
            {
                continue;
            }
            if ids.len() == limit {
                more = true;
                break;
            }
            last_key = entry.key;
            ids.push(entry.id);
        }
        let next = more.then(|| {
            let mut raw = vec![CURSOR_VERSION];
            raw.extend_from_slice(&last_key);
            raw.extend_from_slice(&self.server_key.short_tag(&last_key));
            data_encoding::BASE64URL_NOPAD.encode(&raw)
        });
        Ok(ReleasePage { ids, next })
    }

    /// Runs `work` on the export threads (see [`EXPORT_NICE`]) without waiting for it.
    pub fn spawn_export(
        &self,
        work: impl FnOnce(&Service) + Send + 'static,
    ) -> Result<(), ServiceError> {
        let svc = self.clone();
        export_queue()
            .send(Box::new(move || work(&svc)))
            .map_err(|_| StoreError::Corrupt("the export threads did not start".into()).into())
    }

    /// Runs `work` on the export threads and waits for its answer.
    pub async fn export<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Service) -> Result<T, ServiceError> + Send + 'static,
    ) -> Result<T, ServiceError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.spawn_export(move |svc| {
            let _ = tx.send(work(svc));
        })?;
        rx.await
            .map_err(|_| StoreError::Corrupt("an export job failed".into()))?
    }

    /// The canonical JSON text of a stored release, straight from its stored JSON: parsing it
    /// as a JSON value gives the same value as [`Self::release`] then `serde_json::to_value`
    /// (serde_json's float_roundtrip keeps every float exact), at about half the work, which
    /// matters when whole listings are downloaded. Blocking.
    /// Kept in [`CanonicalCache`]: releases never change, so neither does this text.
    pub fn canonical_release_text(&self, id: &str) -> Result<Arc<str>, ServiceError> {
        if let Some(text) = self.canonical.get(id) {
            return Ok(text);
        }
        let bytes = self
            .store
            .release_bytes(id)?
            .ok_or_else(|| StoreError::Corrupt(format!("indexed release {id} is missing")))?;
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::Corrupt(format!("release {id}: {e}")))?;
        let text: Arc<str> = canonical_json(&value).into();
        self.canonical.put(id, text.clone());
        Ok(text)
    }

    /// The release with this id, as stored. Blocking.
    pub fn release(&self, id: &str) -> Result<Release, ServiceError> {
        self.store
            .release(id)?
            .ok_or_else(|| StoreError::Corrupt(format!("indexed release {id} is missing")).into())
    }

    /// Writes the signed JSON export of `page` to `sink` in chunks of about 64 KB, as each
    /// release is decoded: `{"releases":[...],"next":...,"signature":{...}}`. The signature
    /// covers the canonical JSON of the `releases` value, exactly as [`Self::signed_export`]
    /// and [`verify_export`] define it; the page's canonical bytes are kept until the end to be
    /// signed (Ed25519 signs a whole message), which is what bounds a page's size. `sink`
    /// returns false when the reader has gone, which stops the work. Blocking.
    pub fn write_json_page(
        &self,
        page: &ReleasePage,
        mut sink: impl FnMut(Vec<u8>) -> bool,
    ) -> Result<(), ServiceError> {
        const CHUNK: usize = 64 * 1024;
        let mut signed = Vec::with_capacity(CHUNK);
        signed.push(b'[');
        let mut chunk = br#"{"releases":["#.to_vec();
        for (i, id) in page.ids.iter().enumerate() {
            let text = self.canonical_release_text(id)?;
            if i > 0 {
                signed.push(b',');
                chunk.push(b',');
            }
            signed.extend_from_slice(text.as_bytes());
            chunk.extend_from_slice(text.as_bytes());
            if chunk.len() >= CHUNK && !sink(std::mem::take(&mut chunk)) {
                return Ok(());
            }
        }
        signed.push(b']');
        let tail = serde_json::json!({
            "algorithm": "Ed25519",
            "public_key": self.signing.public_key(),
            "signed": "canonical JSON of the releases value: keys sorted, no whitespace",
            "value": self.signing.sign(&signed),
        });
        chunk.extend_from_slice(
            format!(
                r#"],"next":{},"signature":{}}}"#,
                serde_json::Value::from(page.next.clone()),
                tail
            )
            .as_bytes(),
        );
        sink(chunk);
        Ok(())
    }

    /// The CSV export of `page` (see [`crate::export::csv_page`]) and its detached Ed25519
    /// signature (base64url) over exactly those bytes. Blocking.
    pub fn csv_page(
        &self,
        page: &ReleasePage,
        lang: crate::export::Lang,
    ) -> Result<(Vec<u8>, String), ServiceError> {
        let releases = page
            .ids
            .iter()
            .map(|id| self.release(id))
            .collect::<Result<Vec<_>, _>>()?;
        let bytes = crate::export::csv_page(&self.policy, &releases, lang)
            .map_err(|e| StoreError::Corrupt(format!("csv export: {e}")))?;
        let sig = self.signing.sign(&bytes);
        Ok((bytes, sig))
    }

    /// The privacy ledger the caller may read, with what each organisation has spent and has
    /// left, in the policy's measure (ε or ρ): per base period, `spent` on the releases covering
    /// it and `remaining` = budget − spent (the limit under the `contact` unit; under `supporter`
    /// the rolling year binds first); per organisation, `rolling_year`: the most its releases
    /// overlapping any 365 days spend together, against the rolling-year cap. JSON keeps
    /// OpenDP's exact values.
    pub fn budget_typed(&self, who: &Principal) -> Result<Budget, ServiceError> {
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
            let periods: Vec<PeriodBudget> = per_base
                .iter()
                .filter(|((oid, _), _)| *oid == id)
                .map(|((_, b), spent)| {
                    // The budget of the policy the period was collected under, or the file's
                    // if stricter: what the release job checks against.
                    let budget = self
                        .policy_at(*b)
                        .map_or(p.privacy.budget, |r| r.privacy.budget)
                        .min(p.privacy.budget);
                    PeriodBudget {
                        period: *b,
                        budget,
                        spent: *spent,
                        remaining: (budget - spent).max(0.0),
                    }
                })
                .collect();
            let most = most_spent_in_a_year(entries.iter().filter(|e| e.org == id));
            orgs.push(OrgBudget {
                org: id.to_string(),
                periods,
                rolling_year: RollingYear {
                    cap: p.privacy.rolling_year_cap,
                    most_spent: most,
                    remaining: (p.privacy.rolling_year_cap - most).max(0.0),
                },
            });
        }
        Ok(Budget {
            measure: p.privacy.mechanism.measure(),
            privacy_unit: p.privacy.unit.as_str(),
            budget: p.privacy.budget,
            budget_applies_to: match p.privacy.unit {
                PrivacyUnit::Contact => "each contact, summed over every release that includes it",
                PrivacyUnit::Supporter => {
                    "each supporter, summed over the releases of a rolling year"
                }
            },
            orgs,
            entries,
        })
    }

    /// [`Service::budget_typed`] as JSON, for the pages and the demo.
    pub fn budget(&self, who: &Principal) -> Result<serde_json::Value, ServiceError> {
        let budget = self.budget_typed(who)?;
        serde_json::to_value(budget).map_err(|e| StoreError::Corrupt(e.to_string()).into())
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

/// The period and marginal of a release id `PERIOD/ORG/MARGINAL`.
fn id_period_marginal(id: &str) -> Result<(Period, &str), ServiceError> {
    let bad = || ServiceError::Store(StoreError::Corrupt(format!("release id {id}")));
    let mut parts = id.splitn(3, '/');
    let period = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
    let marginal = parts.nth(1).ok_or_else(bad)?;
    Ok((period, marginal))
}

/// Why an export did not verify offline. `Malformed*` are mistakes in what was given (exit 2
/// of `tellestrek verify`); the others mean the file is not what was signed (exit 1).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum VerifyError {
    /// The public key given or named in the file is not base64url Ed25519.
    #[error("the public key is not valid base64url Ed25519 (32 bytes, no padding)")]
    MalformedKey,
    /// The signature given or in the file is not base64url Ed25519.
    #[error("the signature is not valid base64url Ed25519 (64 bytes, no padding)")]
    MalformedSignature,
    /// The file is not a signed export (not JSON, or a part is missing).
    #[error("{0}")]
    NotAnExport(String),
    /// The signature does not match the file and key.
    #[error(
        "the signature does not match: the file was changed after it was signed, or signed by another key"
    )]
    Mismatch,
}

impl VerifyError {
    /// Whether the key or signature given was malformed, rather than the file not matching.
    pub fn is_malformed_input(&self) -> bool {
        matches!(
            self,
            VerifyError::MalformedKey | VerifyError::MalformedSignature
        )
    }
}

impl From<auth::SignatureError> for VerifyError {
    fn from(e: auth::SignatureError) -> Self {
        match e {
            auth::SignatureError::MalformedKey => VerifyError::MalformedKey,
            auth::SignatureError::MalformedSignature => VerifyError::MalformedSignature,
            auth::SignatureError::Mismatch => VerifyError::Mismatch,
        }
    }
}

/// Checks a saved export offline: the signature over its `releases`, with `public_key` if
/// given, else the key embedded in the file. Returns how many releases it holds.
pub fn verify_export(text: &str, public_key: Option<&str>) -> Result<usize, VerifyError> {
    let not = |m: &str| VerifyError::NotAnExport(m.to_string());
    let doc: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| VerifyError::NotAnExport(format!("the file is not JSON: {e}")))?;
    let releases = doc
        .get("releases")
        .ok_or(not("the file has no `releases`"))?;
    let sig = doc
        .get("signature")
        .ok_or(not("the file has no `signature`"))?;
    let value = sig
        .get("value")
        .and_then(|v| v.as_str())
        .ok_or(not("the signature has no `value`"))?;
    let key = match public_key {
        Some(k) => k.to_string(),
        None => sig
            .get("public_key")
            .and_then(|v| v.as_str())
            .ok_or(not("the signature names no `public_key`"))?
            .to_string(),
    };
    auth::check_signature(&key, canonical_json(releases).as_bytes(), value)?;
    Ok(releases.as_array().map_or(0, |a| a.len()))
}

/// Checks a detached signature (the text of a `.sig` file: base64url Ed25519) over the exact
/// bytes of a saved file, such as a CSV export.
pub fn verify_detached(bytes: &[u8], signature: &str, public_key: &str) -> Result<(), VerifyError> {
    auth::check_signature(public_key, bytes, signature).map_err(Into::into)
}
