//! Use cases: the service ties policy, store, auth, dp and clock together and decides every
//! rule of the product; handlers only translate HTTP to these calls. Time comes from the
//! injected [`Clock`] and noise from the injected [`NoiseSource`]. Must not depend on axum or
//! any HTTP type.
//!
//! | file | use case |
//! | --- | --- |
//! | `mod.rs` | [`Service`], [`ServiceError`], [`Principal`], opening a data directory, authenticating |
//! | `ticks.rs` | logging and checking a tick |
//! | `periods.rs` | which base periods exist, which are open, the epoch |
//! | `tokens.rs` | creating, listing and revoking tokens |
//! | `sessions.rs` | web sign-in: invite links, device sessions, follow-up requests |
//! | `lifecycle.rs` | the background job: close, budget check, draw, purge |
//! | `public.rs` | the public page's last released yearly total |
//! | `reads.rs` | releases in scope, the ledger, signed exports and their verification |
//! | `dashboard/` | uptake, trend, breakdowns, hours and alerts: once, for pages, API and metrics |

mod dashboard;
mod lifecycle;
mod periods;
mod public;
mod reads;
mod sessions;
mod ticks;
mod tokens;

use crate::regime::{self, Plan, Regimes};
use crate::store;
pub use dashboard::{
    Alert, Certainty, Dashboard, METHODS, Num, RuleMethod, Words, cell_variance, low_uptake,
    no_uptake, reading_note, spike, supporter_load, words,
};
pub use lifecycle::LifecycleReport;
use periods::LEGACY_EPOCH_KEY;
pub use periods::PeriodInfo;
pub use public::PublicTotal;
pub use reads::{
    Budget, DEFAULT_PAGE_RELEASES, MAX_PAGE_RELEASES, OrgBudget, PageRequest, PeriodBudget,
    ReleaseFilter, ReleasePage, RollingYear, VerifyError, canonical_json, verify_detached,
    verify_export,
};
pub use sessions::{FollowUp, InviteInfo, NewInvite, NewInviteRequest, NewSession, Session};
pub use ticks::{TickAccepted, TickRequest};
pub use tokens::{NewToken, NewTokenRequest};

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use time::{Date, Duration};

use crate::auth::{self, AuthError, ServerKey, SigningKey, Token};
use crate::clock::Clock;
use crate::domain::{
    CellKey, LedgerEntry, Period, PeriodState, Release, Role, TagSet, TokenRecord,
};
use crate::dp::{DpError, NoiseSource, OpenDpNoise};
use crate::policy::{Policy, PrivacyUnit, TagError};
use crate::release::{self, BatchInput};
use crate::store::{Store, StoreError, TickApplied, TickWrite};

/// Why a use case refused or failed. Messages are lowercase sentences naming the offending
/// field or value; the API maps each variant to a status and a code in one place.
#[derive(Debug, Error)]
pub enum ServiceError {
    /// No token was presented.
    #[error(
        "this needs a token: send `Authorization: Bearer TOKEN`; ask your coordinator or admin for a token"
    )]
    MissingToken,
    /// The presented token is unknown or revoked.
    #[error("the token is not valid or has been revoked")]
    InvalidToken,
    /// The caller's role may not do this.
    #[error("a token of role `{role}` cannot do this; it needs {needed}")]
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
    /// A tick could not be made durable. `certain`: it was taken back, so it is not counted;
    /// otherwise it may or may not have reached the disk (a resend with the same
    /// `Idempotency-Key` counts it once either way).
    #[error("{}", not_stored_message(detail, *certain))]
    NotStored { detail: StoreError, certain: bool },
    /// The policy file changes something the data directory cannot take (refused at start).
    #[error(transparent)]
    PolicyChange(#[from] crate::regime::Refused),
    /// The stored regime list cannot be read.
    #[error(transparent)]
    Regime(#[from] crate::regime::RegimeError),
    /// An invite link that was used, revoked, has expired or never existed.
    #[error(
        "the invite link is not valid: it was used already, revoked or has expired; ask your coordinator for a new one"
    )]
    InviteNotValid,
    /// An invite id that does not exist (or is outside the caller's scope).
    #[error("there is no open invite `{0}` that you can manage")]
    InviteNotFound(String),
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

/// The use cases over one data directory and policy.
#[derive(Clone)]
pub struct Service {
    /// The policy file as read at start: what is shown to people (labels, names, headcounts,
    /// thresholds). What data is collected, released and purged under comes from `regimes`.
    policy: Arc<Policy>,
    /// The policy each base period was (or will be) collected under.
    regimes: Arc<Regimes>,
    /// What the policy file did to the regimes at this start, in words.
    policy_change: Arc<String>,
    store: Store,
    clock: Arc<dyn Clock>,
    server_key: ServerKey,
    signing: Arc<SigningKey>,
    noise: Arc<dyn NoiseSource>,
    /// Serialises the lifecycle job: one release drawn at a time, budgets read consistently.
    release_lock: Arc<Mutex<()>>,
    /// Serialises revocations, so the check "another admin remains" and the revocation are one
    /// step (the store is this process's alone).
    token_lock: Arc<Mutex<()>>,
    /// Requests with the same idempotency key take turns on one of these (sharded by key).
    idempotency_locks: Arc<Vec<tokio::sync::Mutex<()>>>,
    /// Canonical JSON of releases already served (releases are immutable).
    canonical: Arc<reads::CanonicalCache>,
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
        Service::open_with_key(dir, policy, clock, admin_token, None)
    }

    /// [`Service::open`] with the server key kept outside the data directory (`key`: the 32
    /// bytes of the key file), or inside it (`None`). A data directory stays with the choice it
    /// was created with; a key file that does not match it is refused.
    pub fn open_with_key(
        dir: &Path,
        policy: Policy,
        clock: Arc<dyn Clock>,
        admin_token: Option<&str>,
        key: Option<&[u8]>,
    ) -> Result<(Service, Option<Token>), ServiceError> {
        let store = Store::open(dir)?;
        let server_key = server_key(&store, key)?;
        let (pkcs8, _) = store.meta_get_or_create("signing_key", || {
            SigningKey::generate()
                .map(|(_, doc)| doc)
                .map_err(|e| StoreError::Secret(e.to_string()))
        })?;
        let signing = Arc::new(SigningKey::from_pkcs8(&pkcs8)?);
        let current = Period::containing(policy.granularity, clock.today());
        // A clock set back would let periods be reopened and regimes be rewritten: refuse.
        if let Some(seen) = store
            .meta_text(LATEST_PERIOD_KEY)?
            .and_then(|t| t.parse::<Period>().ok())
            .filter(|p| p.granularity() == policy.granularity)
            && current < seen
        {
            return Err(ServiceError::InvalidField {
                field: "clock",
                code: "clock_set_back",
                message: format!(
                    "the clock says the current period is {current}, but this data directory has already been used in {seen}; set the system clock (or TELLESTREK_NOW) right"
                ),
            });
        }
        let plan = Self::plan_policy(dir, &store, &policy, clock.today())?;
        // Written whenever it differs from what is stored, so that an edit that was scheduled and
        // then reverted leaves no abandoned regime behind.
        let bytes = plan.regimes.to_bytes();
        if store::read_regimes(dir)?.as_deref() != Some(bytes.as_slice()) {
            store::write_regimes(dir, &bytes)?;
        }
        store.set_meta_text(LATEST_PERIOD_KEY, &current.to_string())?;
        let service = Service {
            policy: Arc::new(policy),
            regimes: Arc::new(plan.regimes.clone()),
            policy_change: Arc::new(plan.describe()),
            store,
            clock,
            server_key,
            signing,
            noise: Arc::new(OpenDpNoise),
            release_lock: Arc::new(Mutex::new(())),
            token_lock: Arc::new(Mutex::new(())),
            idempotency_locks: Arc::new((0..64).map(|_| tokio::sync::Mutex::new(())).collect()),
            canonical: Default::default(),
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

    /// What `policy` would do to the regimes of data directory `dir` (opened as `store`, if
    /// open) today: refused, unchanged, amended or scheduled. Writes nothing.
    pub fn plan_policy(
        dir: &Path,
        store: &Store,
        policy: &Policy,
        today: Date,
    ) -> Result<Plan, ServiceError> {
        let current = Period::containing(policy.granularity, today);
        let stored = match store::read_regimes(dir)? {
            Some(bytes) => Some(Regimes::from_bytes(&bytes)?),
            // A data directory from before regimes were kept: its epoch, under this policy.
            None => store
                .meta_text(LEGACY_EPOCH_KEY)?
                .and_then(|t| t.parse::<Period>().ok())
                .map(|from| Regimes::single(from, policy.clone(), &policy.text)),
        };
        Ok(regime::plan(
            stored.as_ref(),
            policy,
            &policy.text,
            current,
        )?)
    }

    /// What the policy file did at this start, in words (for the start message).
    pub fn policy_change(&self) -> &str {
        &self.policy_change
    }

    /// The regimes: which policy each base period is collected under.
    pub fn regimes(&self) -> &Regimes {
        &self.regimes
    }

    /// The policy base period `b` is (or will be) collected under; `None` before the epoch.
    pub fn policy_at(&self, b: Period) -> Option<&Policy> {
        self.regimes.at(b).map(|r| &*r.policy)
    }

    /// The policy the current period is collected under: the taxonomy a tick must use now.
    pub fn current_policy(&self) -> &Policy {
        let current = Period::containing(self.regimes.granularity(), self.clock.today());
        self.policy_at(current).unwrap_or(&self.policy)
    }

    /// Whether any policy this data directory was collected under, or the file, has
    /// organisation `id` (its releases stay readable after it leaves the file).
    pub fn knows_org(&self, id: &str) -> bool {
        self.policy.org(id).is_some()
            || self
                .regimes
                .all()
                .iter()
                .any(|r| r.policy.org(id).is_some())
    }

    /// Whether any policy of this data directory, or the file, releases table `id`.
    pub fn knows_marginal(&self, id: &str) -> bool {
        self.policy.marginal(id).is_some()
            || self
                .regimes
                .all()
                .iter()
                .any(|r| r.policy.marginal(id).is_some())
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
}

/// The answer to a tick that could not be stored: what happened, and what to do.
fn not_stored_message(detail: &StoreError, certain: bool) -> String {
    let why = match detail {
        StoreError::Full { .. } => "the server's disk is full",
        _ => "the server could not write to its storage",
    };
    if certain {
        format!(
            "{why}; the contact was not counted. Try again later, with the same Idempotency-Key"
        )
    } else {
        format!(
            "{why}; the contact may or may not have been stored. Send it again later with the same Idempotency-Key, and it is counted once"
        )
    }
}

/// The meta key of the latest base period this data directory has been used in.
const LATEST_PERIOD_KEY: &str = "latest_period";

/// The meta key of the server key, when the data directory keeps it.
const SERVER_KEY: &str = "server_key";
/// The meta key of the fingerprint of a server key kept outside the data directory.
const KEY_FINGERPRINT: &str = "server_key_fingerprint";

/// The server key: from the key file (checked against the fingerprint the data directory
/// recorded when it was created with it), or from the data directory.
fn server_key(store: &Store, external: Option<&[u8]>) -> Result<ServerKey, ServiceError> {
    let refuse = |code: &'static str, message: &str| ServiceError::InvalidField {
        field: "--key-file",
        code,
        message: message.to_string(),
    };
    match external {
        Some(bytes) => {
            let key = ServerKey::from_bytes(bytes)?;
            if store.meta_bytes(SERVER_KEY)?.is_some() {
                return Err(refuse(
                    "key_in_data_dir",
                    "this data directory keeps its own server key (it was created without a key file); start it without --key-file",
                ));
            }
            let fingerprint = key.fingerprint();
            let (stored, _) =
                store.meta_get_or_create(KEY_FINGERPRINT, || Ok(fingerprint.to_vec()))?;
            if stored != fingerprint {
                return Err(refuse(
                    "wrong_key_file",
                    "the key file does not match this data directory; use the key file it was created with",
                ));
            }
            Ok(key)
        }
        None => {
            if store.meta_bytes(KEY_FINGERPRINT)?.is_some() {
                return Err(refuse(
                    "key_file_needed",
                    "this data directory's server key is kept outside it: start with --key-file FILE (or systemd's LoadCredential)",
                ));
            }
            let (bytes, _) = store.meta_get_or_create(SERVER_KEY, fresh_secret)?;
            Ok(ServerKey::from_bytes(&bytes)?)
        }
    }
}

/// Creates a new admin token in the data directory `dir` (the server must be stopped: the store
/// is locked while it runs), for an operator who has lost every admin token.
pub fn recover_admin(dir: &Path, key: Option<&[u8]>) -> Result<Token, ServiceError> {
    if !dir.join("db").exists() {
        return Err(ServiceError::InvalidField {
            field: "--data",
            code: "no_data_dir",
            message: format!("{} holds no Tellestrek data", dir.display()),
        });
    }
    let store = Store::open(dir)?;
    let server_key = server_key(&store, key)?;
    let granularity = match store::read_regimes(dir)? {
        Some(bytes) => Regimes::from_bytes(&bytes)?.granularity(),
        None => crate::domain::Granularity::Month,
    };
    let today = time::OffsetDateTime::now_utc().date();
    let token = Token::generate()?;
    let rec = TokenRecord {
        id: auth::random_id()?,
        role: Role::Admin,
        org: None,
        created: Period::containing(granularity, today),
    };
    store.put_token(&server_key.token_hash(&token), &rec)?;
    store.flush()?;
    Ok(token)
}

/// A new 256-bit secret for the store's get-or-create calls.
fn fresh_secret() -> Result<Vec<u8>, StoreError> {
    auth::random_secret()
        .map(|s| s.to_vec())
        .map_err(|e| StoreError::Secret(e.to_string()))
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
