//! Use cases: authenticate, log a tick, manage tokens, list periods.
//!
//! The service ties policy, store, auth and clock together and decides every rule of the
//! product; handlers only translate HTTP to these calls. Time comes from the injected
//! [`Clock`]. Must not depend on axum or any HTTP type.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use time::{Date, Duration};

use crate::auth::{self, AuthError, PeriodSecret, ServerKey, SigningKey, Token};
use crate::clock::Clock;
use crate::domain::{
    CellKey, LedgerEntry, Period, PeriodState, Release, Role, TagSet, TokenRecord,
};
use crate::dp::{DpError, NoiseSource, OpenDpNoise};
use crate::policy::{Policy, PrivacyUnit, TagError};
use crate::release::{self, BatchInput};
use crate::store::{Store, StoreError, TickWrite};

/// Why a use case refused or failed. Messages are lowercase sentences naming the offending
/// field or value; the API maps each variant to a status and a code in one place.
#[derive(Debug, Error)]
pub enum ServiceError {
    /// No token was presented.
    #[error("this needs a token: send `Authorization: Bearer TOKEN` or sign in")]
    MissingToken,
    /// The presented token is unknown or revoked.
    #[error("the token is not valid or has been revoked")]
    InvalidToken,
    /// The caller's role may not do this.
    #[error("a {role} token cannot do this; it needs {needed}")]
    WrongRole {
        role: &'static str,
        needed: &'static str,
    },
    /// The caller is scoped to another organisation.
    #[error("org: this token belongs to another organisation than `{0}`")]
    WrongOrg(String),
    /// The organisation id is not in the policy.
    #[error("org: there is no organisation `{0}` in the policy")]
    UnknownOrg(String),
    /// The unit id is not one of the organisation's.
    #[error("unit: organisation `{org}` has no unit `{unit}`")]
    UnknownUnit { org: String, unit: String },
    /// A tag does not fit the taxonomy.
    #[error(transparent)]
    Tag(#[from] TagError),
    /// `count` is outside 1..=the per-request cap.
    #[error("count: {given} is not allowed; log between 1 and {max} contacts in one request")]
    InvalidCount { given: i64, max: u32 },
    /// `period` is not a period name, or not of the policy's granularity.
    #[error("period: {0}")]
    InvalidPeriod(String),
    /// The period does not accept ticks.
    #[error("period: {period} does not accept ticks; {why}")]
    PeriodNotOpen { period: Period, why: String },
    /// The supporter has logged as many contacts as the period allows. The message does not
    /// say how many they have logged: whoever holds a leaked token must not learn that.
    #[error(
        "count: this would pass the limit of {cap} contacts per supporter in {period}; ask the scheme's coordinator if the limit is too low"
    )]
    OverCap { period: Period, cap: u32 },
    /// A field of a management request is invalid.
    #[error("{field}: {message}")]
    InvalidField {
        field: &'static str,
        code: &'static str,
        message: String,
    },
    /// A token id that does not exist (or is outside the caller's scope).
    #[error("there is no token `{0}` that you can manage")]
    TokenNotFound(String),
    /// Refused because it would leave the service without an admin.
    #[error("this is the last admin token; create another admin token before revoking it")]
    LastAdmin,
    /// The period cannot be released (yet).
    #[error("period: {period} cannot be released; {why}")]
    NotReleasable { period: Period, why: String },
    /// Drawing a release would spend more than the policy's budget.
    #[error("period: release {release} is refused: {detail}")]
    BudgetExceeded { release: String, detail: String },
    /// A filter names something the policy does not have.
    #[error("{field}: there is no {field} `{value}` in the policy")]
    UnknownFilter { field: &'static str, value: String },
    /// OpenDP failed.
    #[error(transparent)]
    Dp(#[from] DpError),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Randomness or key material failed.
    #[error(transparent)]
    Auth(#[from] AuthError),
}

/// Who is calling, from a valid token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's public id (the supporter's pseudonym is derived from it).
    pub token_id: String,
    /// What the holder may do.
    pub role: Role,
    /// The organisation the holder is scoped to.
    pub org: Option<String>,
}

/// Body of `POST /api/v1/ticks`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TickRequest {
    /// Organisation id.
    pub org: String,
    /// Unit id within the organisation.
    pub unit: String,
    /// One value id per dimension.
    #[serde(deserialize_with = "unique_tags")]
    pub tags: TagSet,
    /// Contacts logged at once; default 1.
    #[serde(default)]
    pub count: Option<i64>,
    /// Base period, default the current one (e.g. the previous month during the grace days).
    #[serde(default)]
    pub period: Option<String>,
}

/// Reads `tags`, refusing a dimension given twice (JSON allows it; silently keeping the last
/// would log something other than what the supporter may have meant).
fn unique_tags<'de, D: serde::Deserializer<'de>>(d: D) -> Result<TagSet, D::Error> {
    struct Tags;
    impl<'de> serde::de::Visitor<'de> for Tags {
        type Value = TagSet;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object from dimension ids to value ids")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<TagSet, A::Error> {
            let mut out = TagSet::new();
            while let Some((k, v)) = map.next_entry::<String, String>()? {
                if out.contains_key(&k) {
                    return Err(serde::de::Error::custom(format!(
                        "duplicate dimension `{k}`: give each dimension once"
                    )));
                }
                out.insert(k, v);
            }
            Ok(out)
        }
    }
    d.deserialize_map(Tags)
}

/// Response to an accepted tick.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct TickAccepted {
    /// The period the contacts were counted in.
    pub period: Period,
    /// Contacts accepted.
    pub accepted: u32,
}

/// Body of `POST /api/v1/tokens`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTokenRequest {
    /// Role of the new token.
    pub role: String,
    /// Organisation, for supporter, coordinator and leader tokens.
    #[serde(default)]
    pub org: Option<String>,
}

/// A newly created token: the only time its clear text is shown.
#[derive(Debug, Serialize)]
pub struct NewToken {
    /// Public id.
    pub id: String,
    /// Role.
    pub role: Role,
    /// Organisation scope.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    /// The token; store it now, it is not shown again.
    pub token: String,
}

/// One period and where it is in its life.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct PeriodInfo {
    /// The period.
    pub period: Period,
    /// Its state.
    pub state: PeriodState,
    /// First day.
    pub starts: Date,
    /// Last day.
    pub ends: Date,
    /// Last day on which ticks are accepted (the grace days included).
    pub accepts_ticks_until: Date,
}

/// What one run of the lifecycle job did.
#[derive(Debug, Default, Serialize)]
pub struct LifecycleReport {
    /// Ids of the releases drawn.
    pub drawn: Vec<String>,
    /// Batches refused: the first release id of the batch, and why.
    pub refused: Vec<(String, String)>,
    /// Base periods whose raw data was deleted.
    pub purged: Vec<Period>,
}

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

/// One release batch: an organisation, a release period and the marginals still to draw.
struct Batch<'a> {
    org: &'a crate::policy::Org,
    period: Period,
    covers: Vec<Period>,
    marginals: Vec<&'a crate::policy::Marginal>,
}

/// The meta key of the first base period the service collected.
const EPOCH_KEY: &str = "first_period";

/// The use cases over one data directory and policy.
#[derive(Clone)]
pub struct Service {
    policy: Arc<Policy>,
    store: Store,
    clock: Arc<dyn Clock>,
    server_key: ServerKey,
    signing: Arc<SigningKey>,
    noise: Arc<dyn NoiseSource>,
    /// Serialises the lifecycle job: one release drawn at a time, budgets read consistently.
    release_lock: Arc<Mutex<()>>,
}

impl Service {
    /// Opens the data directory. On first start of an empty directory creates the admin token,
    /// from `admin_token` if given (at least [`auth::MIN_CHOSEN_TOKEN_LEN`] characters), else at
    /// random, and returns it so the caller can print it once.
    pub fn open(
        dir: &Path,
        policy: Policy,
        clock: Arc<dyn Clock>,
        admin_token: Option<&str>,
    ) -> Result<(Service, Option<Token>), ServiceError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Corrupt(format!("cannot create {}: {e}", dir.display())))?;
        let store = Store::open(dir)?;
        let (key, _) = store.meta_get_or_create("server_key", fresh_secret)?;
        let server_key = ServerKey::from_bytes(&key)?;
        let (pkcs8, _) = store.meta_get_or_create("signing_key", || {
            SigningKey::generate()
                .map(|(_, doc)| doc)
                .map_err(|e| StoreError::Secret(e.to_string()))
        })?;
        let signing = Arc::new(SigningKey::from_pkcs8(&pkcs8)?);
        if store.meta_text(EPOCH_KEY)?.is_none() {
            store.set_meta_text(
                EPOCH_KEY,
                &Period::containing(policy.granularity, clock.today()).to_string(),
            )?;
        }
        let service = Service {
            policy: Arc::new(policy),
            store,
            clock,
            server_key,
            signing,
            noise: Arc::new(OpenDpNoise),
            release_lock: Arc::new(Mutex::new(())),
        };
        let mut created = None;
        if service.store.tokens()?.is_empty() {
            let token = match admin_token {
                Some(t) if t.len() >= auth::MIN_CHOSEN_TOKEN_LEN => Token::from_presented(t),
                Some(_) => {
                    return Err(ServiceError::InvalidField {
                        field: "TELLESTREK_ADMIN_TOKEN",
                        code: "weak_admin_token",
                        message: format!(
                            "must be at least {} characters",
                            auth::MIN_CHOSEN_TOKEN_LEN
                        ),
                    });
                }
                None => Token::generate()?,
            };
            service.insert_token(&token, Role::Admin, None)?;
            service.store.flush()?;
            created = Some(token);
        }
        Ok((service, created))
    }

    /// Replaces the noise source (tests use [`crate::dp::ZeroNoise`] to check exactly).
    pub fn with_noise(mut self, noise: Arc<dyn NoiseSource>) -> Service {
        self.noise = noise;
        self
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The store (for the release job, tests and benches).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Today, by the injected clock.
    pub fn today(&self) -> Date {
        self.clock.today()
    }

    /// Resolves a presented token to its holder.
    pub fn authenticate(&self, presented: Option<&str>) -> Result<Principal, ServiceError> {
        let presented = presented
            .filter(|t| !t.is_empty())
            .ok_or(ServiceError::MissingToken)?;
        let hash = self
            .server_key
            .token_hash(&Token::from_presented(presented));
        let rec = self
            .store
            .token_by_hash(&hash)?
            .ok_or(ServiceError::InvalidToken)?;
        Ok(Principal {
            token_id: rec.id,
            role: rec.role,
            org: rec.org,
        })
    }

    /// Logs contacts. Every check happens before any write; the result is durable when this
    /// returns `Ok`.
    pub async fn log_tick(
        &self,
        who: &Principal,
        req: TickRequest,
    ) -> Result<TickAccepted, ServiceError> {
        let write = self.check_tick(who, req)?;
        // The supporter's running count stays inside: no answer carries a raw count.
        self.store.apply_tick(&write).map_err(|e| match e {
            StoreError::OverCap { cap, .. } => ServiceError::OverCap {
                period: write.period,
                cap,
            },
            StoreError::PeriodNotOpen(state) => ServiceError::PeriodNotOpen {
                period: write.period,
                why: format!("it is {}", state.as_str()),
            },
            other => ServiceError::Store(other),
        })?;
        self.store.durable_period(write.period).await?;
        Ok(TickAccepted {
            period: write.period,
            accepted: write.count,
        })
    }

    /// Validates a tick and prepares its write, in the order a person fixing the request would
    /// want to hear about problems: who, where, what, how many, when.
    pub fn check_tick(&self, who: &Principal, req: TickRequest) -> Result<TickWrite, ServiceError> {
        require(who, &[Role::Supporter], "a supporter token")?;
        let org = self
            .policy
            .org(&req.org)
            .ok_or_else(|| ServiceError::UnknownOrg(req.org.clone()))?;
        if who.org.as_deref() != Some(org.id.as_str()) {
            return Err(ServiceError::WrongOrg(req.org));
        }
        if org.unit(&req.unit).is_none() {
            return Err(ServiceError::UnknownUnit {
                org: req.org,
                unit: req.unit,
            });
        }
        self.policy.check_tags(&req.tags)?;
        let max = self.policy.max_count_per_request;
        let count = match req.count {
            None => 1,
            Some(n) if n >= 1 && n <= i64::from(max) => n as u32,
            Some(n) => return Err(ServiceError::InvalidCount { given: n, max }),
        };
        let today = self.clock.today();
        let period = match &req.period {
            None => Period::containing(self.policy.granularity, today),
            Some(text) => {
                let p: Period = text.parse().map_err(ServiceError::InvalidPeriod)?;
                if p.granularity() != self.policy.granularity {
                    return Err(ServiceError::InvalidPeriod(format!(
                        "`{text}` is a {}, but this scheme counts by {}",
                        p.granularity().as_str(),
                        self.policy.granularity.as_str()
                    )));
                }
                p
            }
        };
        if let Some(why) = self.not_open_reason(period, today) {
            return Err(ServiceError::PeriodNotOpen { period, why });
        }
        let secret = self.store.period_secret(period, fresh_secret)?;
        let pseudonym = PeriodSecret::from_bytes(&secret)?.pseudonym(&who.token_id);
        Ok(TickWrite {
            period,
            cell: CellKey {
                period,
                org: req.org,
                unit: req.unit,
                tags: req.tags,
            },
            pseudonym,
            count,
            cap: self.policy.max_ticks_per_supporter_period,
        })
    }

    /// The last day a period accepts ticks.
    pub fn last_tick_day(&self, period: Period) -> Date {
        period.end() + Duration::days(i64::from(self.policy.grace_days)) - Duration::days(1)
    }

    /// Why `period` does not accept ticks today by the clock, if it does not.
    fn not_open_reason(&self, period: Period, today: Date) -> Option<String> {
        if today < period.start() {
            Some("it has not started yet".into())
        } else if today > self.last_tick_day(period) {
            Some(format!(
                "it closed for ticks after {} ({} grace days after it ended)",
                self.last_tick_day(period),
                self.policy.grace_days
            ))
        } else {
            None
        }
    }

    /// The state of `period` now: recorded, else open or closed by the clock.
    pub fn period_state(&self, period: Period) -> Result<PeriodState, ServiceError> {
        Ok(match self.store.period_state(period)? {
            Some(s) => s,
            None if self.not_open_reason(period, self.clock.today()).is_none() => PeriodState::Open,
            None => PeriodState::Closed,
        })
    }

    /// Every base period since the service started collecting, newest first.
    pub fn periods(&self, who: &Principal) -> Result<Vec<PeriodInfo>, ServiceError> {
        require(
            who,
            &[
                Role::Admin,
                Role::Coordinator,
                Role::Leader,
                Role::Researcher,
            ],
            "an admin, coordinator, leader or researcher token",
        )?;
        self.base_periods()?
            .into_iter()
            .rev()
            .map(|p| {
                Ok(PeriodInfo {
                    period: p,
                    state: self.period_state(p)?,
                    starts: p.start(),
                    ends: p.end() - Duration::days(1),
                    accepts_ticks_until: self.last_tick_day(p),
                })
            })
            .collect()
    }

    /// The first base period the service collected.
    pub fn epoch(&self) -> Result<Period, ServiceError> {
        let today = Period::containing(self.policy.granularity, self.clock.today());
        Ok(self
            .store
            .meta_text(EPOCH_KEY)?
            .and_then(|t| t.parse::<Period>().ok())
            .filter(|p| p.granularity() == self.policy.granularity)
            .unwrap_or(today))
    }

    /// Sets the first base period (the demo starts its simulated history there).
    pub fn set_epoch(&self, period: Period) -> Result<(), ServiceError> {
        self.store.set_meta_text(EPOCH_KEY, &period.to_string())?;
        Ok(())
    }

    /// Base periods from the epoch up to the current one, oldest first.
    pub fn base_periods(&self) -> Result<Vec<Period>, ServiceError> {
        let current = Period::containing(self.policy.granularity, self.clock.today());
        let mut p = self.epoch()?;
        let mut out = Vec::new();
        while p <= current {
            out.push(p);
            p = p.next();
        }
        Ok(out)
    }

    /// Creates a token (blocking: it syncs the store; handlers call it off the async threads).
    /// Admins create any; coordinators create supporter tokens (invites) for
    /// their own organisation.
    pub fn create_token(
        &self,
        who: &Principal,
        req: NewTokenRequest,
    ) -> Result<NewToken, ServiceError> {
        require(
            who,
            &[Role::Admin, Role::Coordinator],
            "an admin or coordinator token",
        )?;
        let role: Role = req
            .role
            .parse()
            .map_err(|message| ServiceError::InvalidField {
                field: "role",
                code: "invalid_role",
                message,
            })?;
        match (&req.org, role.needs_org()) {
            (None, true) => {
                return Err(ServiceError::InvalidField {
                    field: "org",
                    code: "missing_org",
                    message: format!(
                        "a {} token needs the organisation it belongs to",
                        role.as_str()
                    ),
                });
            }
            (Some(_), false) => {
                return Err(ServiceError::InvalidField {
                    field: "org",
                    code: "unexpected_org",
                    message: format!(
                        "a {} token is not scoped to one organisation; leave org out",
                        role.as_str()
                    ),
                });
            }
            (Some(org), true) if self.policy.org(org).is_none() => {
                return Err(ServiceError::UnknownOrg(org.clone()));
            }
            _ => {}
        }
        if who.role == Role::Coordinator {
            if role != Role::Supporter {
                return Err(ServiceError::WrongRole {
                    role: "coordinator",
                    needed: "an admin token to create other roles than supporter",
                });
            }
            if req.org != who.org {
                return Err(ServiceError::WrongOrg(req.org.unwrap_or_default()));
            }
        }
        let token = Token::generate()?;
        let rec = self.insert_token(&token, role, req.org)?;
        self.store.sync_main()?;
        Ok(NewToken {
            id: rec.id,
            role: rec.role,
            org: rec.org,
            token: token.expose().to_string(),
        })
    }

    fn insert_token(
        &self,
        token: &Token,
        role: Role,
        org: Option<String>,
    ) -> Result<TokenRecord, ServiceError> {
        let rec = TokenRecord {
            id: auth::random_id()?,
            role,
            org,
            created: Period::containing(self.policy.granularity, self.clock.today()),
        };
        self.store
            .put_token(&self.server_key.token_hash(token), &rec)?;
        Ok(rec)
    }

    /// The tokens the caller may manage (never their clear text).
    pub fn list_tokens(&self, who: &Principal) -> Result<Vec<TokenRecord>, ServiceError> {
        require(
            who,
            &[Role::Admin, Role::Coordinator],
            "an admin or coordinator token",
        )?;
        let mut all = self.store.tokens()?;
        all.retain(|t| manages(who, t));
        all.sort_by(|a, b| (a.role.as_str(), &a.org, &a.id).cmp(&(b.role.as_str(), &b.org, &b.id)));
        Ok(all)
    }

    /// Revokes a token the caller may manage.
    pub fn revoke_token(&self, who: &Principal, id: &str) -> Result<(), ServiceError> {
        require(
            who,
            &[Role::Admin, Role::Coordinator],
            "an admin or coordinator token",
        )?;
        let rec = self
            .store
            .token_by_id(id)?
            .filter(|t| manages(who, t))
            .ok_or_else(|| ServiceError::TokenNotFound(id.to_string()))?;
        if rec.role == Role::Admin
            && self
                .store
                .tokens()?
                .iter()
                .filter(|t| t.role == Role::Admin)
                .count()
                <= 1
        {
            return Err(ServiceError::LastAdmin);
        }
        self.store.delete_token(id)?;
        self.store.sync_main()?;
        Ok(())
    }
}

impl Service {
    /// Runs the lifecycle job off the async threads: closes periods whose grace days are over,
    /// draws every release that is due, and purges raw data past its retention.
    pub async fn run_lifecycle(&self) -> Result<LifecycleReport, ServiceError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.lifecycle_blocking())
            .await
            .map_err(|e| StoreError::Corrupt(format!("lifecycle job panicked: {e}")))?
    }

    /// Whether base period `b` no longer accepts ticks.
    fn is_closed(&self, b: Period, today: Date) -> bool {
        today > self.last_tick_day(b)
    }

    /// The batches the lifecycle job would draw now, in the order it draws them: every
    /// (release period, organisation) whose last base period is closed and that lacks a
    /// release of some marginal of that cadence. Finer cadences come first among periods that
    /// end together, so a quarter can use the months inside it.
    fn due_batches(&self) -> Result<Vec<Batch<'_>>, ServiceError> {
        let p = &*self.policy;
        let today = self.clock.today();
        let epoch = self.epoch()?;
        let bases = self.base_periods()?;
        let mut due: BTreeSet<(Date, crate::domain::Granularity, Period)> = BTreeSet::new();
        for m in &p.marginals {
            for b in &bases {
                let period = b.within(m.cadence);
                let last = *release::base_periods_in(period, p.granularity)
                    .last()
                    .unwrap_or(b);
                if self.is_closed(last, today) {
                    due.insert((period.end(), m.cadence, period));
                }
            }
        }
        let mut out = Vec::new();
        for (_, cadence, period) in due {
            let covers: Vec<Period> = release::base_periods_in(period, p.granularity)
                .into_iter()
                .filter(|b| *b >= epoch)
                .collect();
            // Raw data already purged (after a refusal, say) cannot be released any more.
            if covers
                .iter()
                .any(|b| self.store.period_state(*b).ok().flatten() == Some(PeriodState::Purged))
            {
                continue;
            }
            for org in &p.orgs {
                let mut missing = Vec::new();
                for m in p.marginals.iter().filter(|m| m.cadence == cadence) {
                    if self
                        .store
                        .release(&release::release_id(period, &org.id, &m.id))?
                        .is_none()
                    {
                        missing.push(m);
                    }
                }
                if !missing.is_empty() {
                    out.push(Batch {
                        org,
                        period,
                        covers: covers.clone(),
                        marginals: missing,
                    });
                }
            }
        }
        Ok(out)
    }

    /// The lifecycle job; holds the release lock throughout.
    pub fn lifecycle_blocking(&self) -> Result<LifecycleReport, ServiceError> {
        let _guard = self.release_lock.lock().unwrap_or_else(|p| p.into_inner());
        let today = self.clock.today();
        let bases = self.base_periods()?;
        let mut report = LifecycleReport::default();
        // The raw databases of the current and the next period exist before any tick, so the
        // first tick of a period is not slower than the rest (which would tell its sender they
        // were first) and no file is created at the moment of a tick.
        if let Some(current) = bases.last() {
            self.store.period_secret(*current, fresh_secret)?;
            self.store.period_secret(current.next(), fresh_secret)?;
        }
        for &b in bases.iter().filter(|&&b| self.is_closed(b, today)) {
            if self.store.period_state(b)?.is_none() {
                self.store.set_period_state(b, PeriodState::Closed)?;
            }
        }
        for batch in self.due_batches()? {
            match self.draw_and_commit(&batch) {
                Ok(ids) => report.drawn.extend(ids),
                Err(ServiceError::BudgetExceeded { release, detail }) => {
                    tracing::warn!(release = %release, %detail, "release refused: over the privacy budget");
                    report.refused.push((release, detail));
                }
                Err(e) => return Err(e),
            }
        }
        for &b in bases.iter().filter(|&&b| self.is_closed(b, today)) {
            let state = self.store.period_state(b)?;
            if state == Some(PeriodState::Closed)
                && self.releases_ending_with(b)?.iter().all(|(_, done)| *done)
            {
                self.store.set_period_state(b, PeriodState::Released)?;
            }
            // Retention is kept whatever happened to the releases: raw data of a period whose
            // release was refused is deleted on the same day as everyone else's.
            if matches!(
                self.store.period_state(b)?,
                Some(PeriodState::Closed | PeriodState::Released)
            ) && today > self.purge_day(b)
            {
                self.store.purge(b)?;
                report.purged.push(b);
            }
        }
        self.store.flush()?;
        if !report.drawn.is_empty() || !report.purged.is_empty() {
            tracing::info!(
                drawn = report.drawn.len(),
                purged = report.purged.len(),
                "lifecycle job ran"
            );
        }
        Ok(report)
    }

    /// The releases (ids, and whether drawn) whose period ends with base period `b`.
    fn releases_ending_with(&self, b: Period) -> Result<Vec<(String, bool)>, ServiceError> {
        let p = &*self.policy;
        let mut out = Vec::new();
        for m in &p.marginals {
            let period = b.within(m.cadence);
            if release::base_periods_in(period, p.granularity).last() != Some(&b) {
                continue;
            }
            for org in &p.orgs {
                let id = release::release_id(period, &org.id, &m.id);
                let done = self.store.release(&id)?.is_some();
                out.push((id, done));
            }
        }
        Ok(out)
    }

    /// The last day base period `b`'s raw data is kept: the retention days after the last
    /// release that counts it (the one with the longest cadence) could first be drawn.
    fn purge_day(&self, b: Period) -> Date {
        let p = &*self.policy;
        let last_needed = p
            .marginals
            .iter()
            .filter_map(|m| {
                release::base_periods_in(b.within(m.cadence), p.granularity)
                    .last()
                    .copied()
            })
            .map(|last| self.last_tick_day(last))
            .fold(self.last_tick_day(b), Date::max);
        last_needed + Duration::days(i64::from(p.retention_days))
    }

    /// Draws one batch and writes it with its ledger entries, after the budget check.
    fn draw_and_commit(&self, batch: &Batch<'_>) -> Result<Vec<String>, ServiceError> {
        let p = &*self.policy;
        let org = batch.org;
        let mut raw = Vec::new();
        let mut supporters = Vec::new();
        for b in &batch.covers {
            raw.extend(
                self.store
                    .cells_of(*b)?
                    .into_iter()
                    .filter(|(c, _)| c.org == org.id),
            );
            supporters.extend(self.store.supporter_counts(*b, &org.id)?);
        }
        let cover_set: BTreeSet<Period> = batch.covers.iter().copied().collect();
        let finer: Vec<Release> = self
            .store
            .releases("")?
            .into_iter()
            .filter(|r| {
                r.org == org.id
                    && !r.covers.is_empty()
                    && r.covers.iter().all(|c| cover_set.contains(c))
            })
            .collect();
        // The budget is checked before any noise is drawn, with the spends OpenDP's map gives.
        let ledger = self.store.ledger()?;
        self.check_budget(&ledger, batch)?;
        let input = BatchInput {
            policy: p,
            org,
            period: batch.period,
            covers: batch.covers.clone(),
            marginals: batch.marginals.clone(),
            raw: &raw,
            supporters: &supporters,
            finer: &finer,
        };
        let drawn = release::draw_batch(&input, &*self.noise)?;
        self.store.commit_releases(&drawn)?;
        Ok(drawn.into_iter().map(|(r, _)| r.id).collect())
    }

    /// The ledger entries a batch will write, with OpenDP's spends, before anything is drawn.
    fn planned_entries(&self, batch: &Batch<'_>) -> Result<Vec<LedgerEntry>, ServiceError> {
        let p = &*self.policy;
        batch
            .marginals
            .iter()
            .map(|m| {
                Ok(LedgerEntry {
                    release: release::release_id(batch.period, &batch.org.id, &m.id),
                    org: batch.org.id.clone(),
                    marginal: m.id.clone(),
                    period: batch.period,
                    covers: batch.covers.clone(),
                    measure: p.privacy.mechanism.measure().into(),
                    spend: release::release_spend(p, batch.org, m)?,
                })
            })
            .collect()
    }

    /// Refuses a batch that would take any covered base period (unit `contact`) over the
    /// budget, or the releases covering any 365 days over the rolling-year cap.
    ///
    /// A release counts in every 365-day window that overlaps the base periods it covers: a
    /// supporter active in any 12 months is in every such release. Of the windows that overlap
    /// the new batch, the fullest starts where some release first overlaps it, so those starts
    /// are the ones checked.
    fn check_budget(&self, ledger: &[LedgerEntry], batch: &Batch<'_>) -> Result<(), ServiceError> {
        let p = &*self.policy;
        let planned = self.planned_entries(batch)?;
        let ledger: Vec<&LedgerEntry> = ledger.iter().filter(|e| e.org == batch.org.id).collect();
        let add: f64 = planned.iter().map(|e| e.spend).sum();
        let first = planned
            .first()
            .map(|e| e.release.clone())
            .unwrap_or_default();
        let measure = p.privacy.mechanism.measure();
        let refuse = |detail: String| ServiceError::BudgetExceeded {
            release: first.clone(),
            detail,
        };
        if p.privacy.unit == PrivacyUnit::Contact {
            let spent = batch
                .covers
                .iter()
                .map(|b| {
                    ledger
                        .iter()
                        .filter(|e| e.covers.contains(b))
                        .map(|e| e.spend)
                        .sum::<f64>()
                })
                .fold(0.0, f64::max);
            if spent + add > p.privacy.budget * (1.0 + 1e-9) {
                return Err(refuse(format!(
                    "it would spend {measure} {add:.3} on a period that has {spent:.3} spent already, over the budget of {}",
                    p.privacy.budget
                )));
            }
        }
        let span = |covers: &[Period]| -> Option<(Date, Date)> {
            Some((covers.first()?.start(), covers.last()?.end()))
        };
        let Some((new_start, new_end)) = span(&batch.covers) else {
            return Ok(());
        };
        let year = Duration::days(365);
        // Window [a, a + 365 days) overlaps covered span [s, e) iff a ∈ [s - 364 days, e - 1 day].
        let overlaps = |a: Date, (s, e): (Date, Date)| a + year > s && a < e;
        let mut starts: Vec<Date> = ledger
            .iter()
            .filter_map(|e| span(&e.covers))
            .map(|(s, _)| s - year + Duration::days(1))
            .collect();
        starts.push(new_start - year + Duration::days(1));
        for a in starts
            .into_iter()
            .filter(|a| overlaps(*a, (new_start, new_end)))
        {
            let spent: f64 = ledger
                .iter()
                .filter(|e| span(&e.covers).is_some_and(|sp| overlaps(a, sp)))
                .map(|e| e.spend)
                .sum();
            if spent + add > p.privacy.rolling_year_cap * (1.0 + 1e-9) {
                return Err(refuse(format!(
                    "it would spend {measure} {add:.3} on top of {spent:.3} spent on the 365 days from {a}, over the rolling-year cap of {}",
                    p.privacy.rolling_year_cap
                )));
            }
        }
        Ok(())
    }

    /// Releases a closed base period on demand (admin). Idempotent: a period released before
    /// returns the same releases and spends nothing. If any release that ends with the period
    /// would go over the budget, nothing at all is drawn and the answer is 409.
    pub async fn release_period(
        &self,
        who: &Principal,
        text: &str,
    ) -> Result<(PeriodState, Vec<Release>), ServiceError> {
        require(who, &[Role::Admin], "an admin token")?;
        let period: Period = text.parse().map_err(ServiceError::InvalidPeriod)?;
        if period.granularity() != self.policy.granularity {
            return Err(ServiceError::InvalidPeriod(format!(
                "`{text}` is not a {} of this scheme",
                self.policy.granularity.as_str()
            )));
        }
        if period < self.epoch()? {
            return Err(ServiceError::NotReleasable {
                period,
                why: "it is before the service started collecting".into(),
            });
        }
        if !self.is_closed(period, self.clock.today()) {
            return Err(ServiceError::NotReleasable {
                period,
                why: format!("it accepts ticks until {}", self.last_tick_day(period)),
            });
        }
        let this = self.clone();
        let report = tokio::task::spawn_blocking(move || {
            // The same lock as the job: the dry run and the draw see one ledger.
            let guard = this.release_lock.lock().unwrap_or_else(|p| p.into_inner());
            this.dry_run(period)?;
            drop(guard);
            this.lifecycle_blocking()
        })
        .await
        .map_err(|e| StoreError::Corrupt(format!("release job panicked: {e}")))??;
        let mut out = Vec::new();
        for (id, _) in self.releases_ending_with(period)? {
            match self.store.release(&id)? {
                Some(r) => out.push(r),
                None => {
                    let detail = report
                        .refused
                        .iter()
                        .map(|(_, d)| d.clone())
                        .next()
                        .unwrap_or_else(|| "it was refused as over the privacy budget".into());
                    return Err(ServiceError::BudgetExceeded {
                        release: id,
                        detail,
                    });
                }
            }
        }
        Ok((self.period_state(period)?, out))
    }

    /// Checks, without drawing anything, that every due batch up to and including those that
    /// end with `period` fits the budget, spending as the job would in order.
    fn dry_run(&self, period: Period) -> Result<(), ServiceError> {
        let mut ledger = self.store.ledger()?;
        for batch in self.due_batches()? {
            let ends_here = release::base_periods_in(batch.period, self.policy.granularity).last()
                == Some(&period);
            match self.check_budget(&ledger, &batch) {
                Ok(()) => ledger.extend(self.planned_entries(&batch)?),
                Err(e) if ends_here => return Err(e),
                Err(_) => {}
            }
        }
        Ok(())
    }

    /// The organisation a reader is limited to, checked against a requested one.
    fn read_scope(
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
        if let Some(org) = requested.filter(|o| self.policy.org(o).is_none()) {
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
            .filter(|m| self.policy.marginal(m).is_none())
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

/// A new 256-bit secret for the store's get-or-create calls.
fn fresh_secret() -> Result<Vec<u8>, StoreError> {
    auth::random_secret()
        .map(|s| s.to_vec())
        .map_err(|e| StoreError::Secret(e.to_string()))
}

/// Whether `who` may see and revoke token `t`.
fn manages(who: &Principal, t: &TokenRecord) -> bool {
    match who.role {
        Role::Admin => true,
        Role::Coordinator => t.role == Role::Supporter && t.org == who.org,
        _ => false,
    }
}

/// Refuses callers whose role is not in `roles`.
pub fn require(who: &Principal, roles: &[Role], needed: &'static str) -> Result<(), ServiceError> {
    if roles.contains(&who.role) {
        Ok(())
    } else {
        Err(ServiceError::WrongRole {
            role: who.role.as_str(),
            needed,
        })
    }
}
