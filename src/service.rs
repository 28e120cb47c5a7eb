//! Use cases: authenticate, log a tick, manage tokens, list periods.
//!
//! The service ties policy, store, auth and clock together and decides every rule of the
//! product; handlers only translate HTTP to these calls. Time comes from the injected
//! [`Clock`]. Must not depend on axum or any HTTP type.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use time::{Date, Duration};

use crate::auth::{self, AuthError, PeriodSecret, ServerKey, Token};
use crate::clock::Clock;
use crate::domain::{CellKey, Period, PeriodState, Role, TagSet, TokenRecord};
use crate::policy::{Policy, TagError};
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
    /// The supporter has logged as many contacts as the period allows.
    #[error(
        "count: this would pass the limit of {cap} contacts per supporter in {period}; {remaining} left"
    )]
    OverCap {
        period: Period,
        cap: u32,
        remaining: u32,
    },
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
    pub tags: TagSet,
    /// Contacts logged at once; default 1.
    #[serde(default)]
    pub count: Option<i64>,
    /// Base period, default the current one (e.g. the previous month during the grace days).
    #[serde(default)]
    pub period: Option<String>,
}

/// Response to an accepted tick.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct TickAccepted {
    /// The period the contacts were counted in.
    pub period: Period,
    /// Contacts accepted.
    pub accepted: u32,
    /// How many more the supporter may log in this period (their own allowance).
    pub remaining: u32,
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

/// The use cases over one data directory and policy.
#[derive(Clone)]
pub struct Service {
    policy: Arc<Policy>,
    store: Store,
    clock: Arc<dyn Clock>,
    server_key: ServerKey,
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
        let service = Service {
            policy: Arc::new(policy),
            store,
            clock,
            server_key,
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
        let used = self.store.apply_tick(&write).map_err(|e| match e {
            StoreError::OverCap { used, cap } => ServiceError::OverCap {
                period: write.period,
                cap,
                remaining: cap.saturating_sub(used),
            },
            StoreError::PeriodNotOpen(state) => ServiceError::PeriodNotOpen {
                period: write.period,
                why: format!("it is {}", state.as_str()),
            },
            other => ServiceError::Store(other),
        })?;
        self.store.durable().await?;
        Ok(TickAccepted {
            period: write.period,
            accepted: write.count,
            remaining: write.cap.saturating_sub(used),
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

    /// Every period with data or a state, plus the ones open now; newest first.
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
        let today = self.clock.today();
        let current = Period::containing(self.policy.granularity, today);
        let mut set: BTreeSet<Period> = [current, current.prev()].into();
        for name in self.store.known_periods()?.into_keys() {
            if let Ok(p) = name.parse::<Period>() {
                set.insert(p);
            }
        }
        set.into_iter()
            .rev()
            .filter(|p| p.granularity() == self.policy.granularity)
            .filter(|p| p.start() <= today)
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

    /// Creates a token. Admins create any; coordinators create supporter tokens (invites) for
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
        self.store.flush()?;
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
        self.store.flush()?;
        Ok(())
    }
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
