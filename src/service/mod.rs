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
//! | `lifecycle.rs` | the background job: close, budget check, draw, purge |
//! | `reads.rs` | releases in scope, the ledger, signed exports and their verification |

mod lifecycle;
mod periods;
mod reads;
mod ticks;
mod tokens;

pub use lifecycle::LifecycleReport;
use periods::EPOCH_KEY;
pub use periods::PeriodInfo;
pub use reads::{
    DEFAULT_PAGE_RELEASES, MAX_PAGE_RELEASES, PageRequest, ReleaseFilter, ReleasePage, VerifyError,
    canonical_json, verify_detached, verify_export,
};
pub use ticks::{TickAccepted, TickRequest};
pub use tokens::{NewToken, NewTokenRequest};

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
