//! Web sign-in: one-time invite links, device sessions, the name a coordinator gives an
//! account at invite, and a supporter's request for a follow-up talk.
//!
//! Secrets (invite links, session cookies) are stored only as keyed hashes, like tokens. A
//! session belongs to an account (a token id), so a supporter's phone and laptop stay one
//! supporter for caps and pseudonyms. Names are stored with the account, never with ticks,
//! counts or pseudonyms. Dates here are whole days and never leave the service.

use super::*;

/// A one-time invite, stored under the keyed hash of its link's secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InviteRecord {
    /// Public random id, for listing and revoking.
    pub id: String,
    /// The account (token id) the invite signs a device in as.
    pub account: String,
    /// The account's role.
    pub role: Role,
    /// The account's organisation.
    pub org: Option<String>,
    /// Last day the link can be opened (from `web.invite_days`); never shown.
    pub expires: Date,
    /// For a supporter: the unit the coordinator said they belong to, handed to the device
    /// that opens the link (a cookie there) and deleted with the invite: the server keeps no
    /// link between a person and a unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

/// A signed-in device, stored under the keyed hash of its cookie's secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The account (token id) the device is signed in as.
    pub account: String,
    /// The session's CSRF token, sent in a hidden field of every form.
    pub csrf: String,
    /// Last day the session is valid (from `web.session_days`); never shown.
    pub expires: Date,
}

/// Body of `POST /api/v1/invites`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewInviteRequest {
    /// Role of the account; default `supporter`.
    #[serde(default)]
    pub role: Option<String>,
    /// Organisation of the account (needed for supporter, coordinator and leader).
    #[serde(default)]
    pub org: Option<String>,
    /// The name the coordinator knows the supporter by (at most [`MAX_NAME_CHARS`]); shown
    /// only to coordinators of the organisation, with follow-up requests.
    #[serde(default)]
    pub name: Option<String>,
    /// An existing account (token id) to sign one more device in as; default a new account.
    #[serde(default)]
    pub account: Option<String>,
    /// For a supporter: the unit (policy id) they belong to, preselected on the tick page of
    /// the device that opens the link (kept there, never on the server once the link is used),
    /// so a first contact takes few taps.
    #[serde(default)]
    pub unit: Option<String>,
}

/// Longest name a coordinator may give an account, in characters: 80.
pub const MAX_NAME_CHARS: usize = 80;

/// A new invite: the only time its link is shown.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NewInvite {
    /// Public id, for revoking.
    pub id: String,
    /// The account the link signs in as.
    pub account: String,
    /// The account's role.
    pub role: Role,
    /// The account's organisation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    /// Days the link can be opened (`web.invite_days`).
    pub valid_days: u32,
    /// The link's path, `/invite/SECRET`; give it to the person now, it is not shown again.
    pub path: String,
}

/// An open invite as listed (never its secret or expiry day).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InviteInfo {
    /// Public id.
    pub id: String,
    /// The account it signs in as.
    pub account: String,
    /// The account's role.
    pub role: Role,
    /// The account's organisation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
}

/// A new session: the cookie's secret and the form token.
#[derive(Debug)]
pub struct NewSession {
    /// The cookie value; stored only as its keyed hash.
    pub secret: String,
    /// Lifetime of the cookie, in days (`web.session_days`).
    pub days: u32,
    /// The unit the invite named, for the device to keep (and preselect); never stored.
    pub unit: Option<String>,
}

/// A valid session.
#[derive(Debug, Clone)]
pub struct Session {
    /// Who the device is signed in as.
    pub principal: Principal,
    /// The form token of this session.
    pub csrf: String,
}

/// An open follow-up request, for the supporter's coordinator.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FollowUp {
    /// The supporter's account.
    pub account: String,
    /// The name the coordinator gave the account at invite (empty if none).
    pub name: String,
}

/// The stored hash of an invite secret: separated from token hashes by a prefix.
fn invite_hash(key: &ServerKey, secret: &str) -> [u8; 32] {
    key.token_hash(&Token::from_presented(&format!("invite:{secret}")))
}

/// The stored hash of a session secret.
fn session_hash(key: &ServerKey, secret: &str) -> [u8; 32] {
    key.token_hash(&Token::from_presented(&format!("session:{secret}")))
}

impl Service {
    /// Creates a one-time invite link (blocking: syncs the store). Admins invite any role;
    /// coordinators invite supporters of their own organisation. Without `account`, a new
    /// account is made (its token is never shown: it signs in by invites only).
    pub fn create_invite(
        &self,
        who: &Principal,
        req: NewInviteRequest,
    ) -> Result<NewInvite, ServiceError> {
        require(
            who,
            &[Role::Admin, Role::Coordinator],
            "an admin or coordinator token",
        )?;
        let name = match req.name.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(n) if n.chars().count() > MAX_NAME_CHARS || n.chars().any(char::is_control) => {
                return Err(ServiceError::InvalidField {
                    field: "name",
                    code: "invalid_name",
                    message: format!(
                        "give at most {MAX_NAME_CHARS} characters on one line, such as a first name"
                    ),
                });
            }
            Some(n) => Some(n.to_string()),
        };
        let unit = req.unit.as_deref().filter(|u| !u.is_empty());
        // Checked before anything is stored: a refused invite leaves no account behind.
        let check_unit = |role: Role, org: Option<&str>| match unit {
            Some(unit)
                if role != Role::Supporter
                    || !org
                        .and_then(|o| self.policy.org(o))
                        .is_some_and(|o| o.units.iter().any(|u| u.id == unit)) =>
            {
                Err(ServiceError::InvalidField {
                    field: "unit",
                    code: "unknown_unit",
                    message: format!(
                        "`{unit}` is not a unit of the supporter's organisation; give a unit id from the policy, or leave `unit` out (only supporters have one)"
                    ),
                })
            }
            _ => Ok(()),
        };
        let account = match &req.account {
            Some(id) => {
                let rec = self
                    .store
                    .token_by_id(id)?
                    .filter(|t| super::tokens::manages(who, t))
                    .ok_or_else(|| ServiceError::TokenNotFound(id.clone()))?;
                check_unit(rec.role, rec.org.as_deref())?;
                if req.role.is_some() || req.org.is_some() {
                    return Err(ServiceError::InvalidField {
                        field: "account",
                        code: "unexpected_role",
                        message: "an invite for an existing account takes its role and organisation; leave role and org out".into(),
                    });
                }
                rec
            }
            None => {
                let role = req.role.as_deref().unwrap_or("supporter");
                // An unknown role is refused by `create_token`, naming the role.
                if let Ok(role) = role.parse() {
                    check_unit(role, req.org.as_deref())?;
                }
                let created = self.create_token(
                    who,
                    NewTokenRequest {
                        role: req.role.clone().unwrap_or_else(|| "supporter".into()),
                        org: req.org.clone(),
                    },
                )?;
                TokenRecord {
                    id: created.id,
                    role: created.role,
                    org: created.org,
                    created: Period::containing(self.policy.granularity, self.clock.today()),
                }
            }
        };
        if let Some(name) = &name {
            self.store.set_account_name(&account.id, name)?;
        }
        let secret = Token::generate()?;
        let days = self.policy.web.invite_days;
        let rec = InviteRecord {
            id: auth::random_id()?,
            account: account.id.clone(),
            role: account.role,
            org: account.org.clone(),
            expires: self.clock.today() + Duration::days(i64::from(days)),
            unit: unit.map(str::to_string),
        };
        self.store
            .put_invite(&invite_hash(&self.server_key, secret.expose()), &rec)?;
        self.store.sync_main()?;
        Ok(NewInvite {
            id: rec.id,
            account: rec.account,
            role: rec.role,
            org: rec.org,
            valid_days: days,
            path: format!("/invite/{}", secret.expose()),
        })
    }

    /// The open invites the caller may manage (expired ones are dropped as they are seen).
    pub fn list_invites(&self, who: &Principal) -> Result<Vec<InviteInfo>, ServiceError> {
        require(
            who,
            &[Role::Admin, Role::Coordinator],
            "an admin or coordinator token",
        )?;
        let today = self.clock.today();
        let mut out = Vec::new();
        for (hash, rec) in self.store.invites::<InviteRecord>()? {
            if rec.expires < today {
                self.store.take_invite::<InviteRecord>(&hash)?;
                continue;
            }
            if invite_managed(who, &rec) {
                out.push(InviteInfo {
                    id: rec.id,
                    account: rec.account,
                    role: rec.role,
                    org: rec.org,
                });
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Revokes an open invite the caller may manage: its link no longer signs anyone in.
    pub fn revoke_invite(&self, who: &Principal, id: &str) -> Result<(), ServiceError> {
        require(
            who,
            &[Role::Admin, Role::Coordinator],
            "an admin or coordinator token",
        )?;
        let found = self
            .store
            .invites::<InviteRecord>()?
            .into_iter()
            .find(|(_, r)| r.id == id && invite_managed(who, r));
        match found {
            Some((hash, _)) => {
                self.store.take_invite::<InviteRecord>(&hash)?;
                self.store.sync_main()?;
                Ok(())
            }
            None => Err(ServiceError::InviteNotFound(id.to_string())),
        }
    }

    /// Opens an invite link: once, before it expires, while its account exists. Returns a
    /// session for the device.
    pub fn redeem_invite(&self, secret: &str) -> Result<NewSession, ServiceError> {
        let rec: InviteRecord = self
            .store
            .take_invite(&invite_hash(&self.server_key, secret))?
            .ok_or(ServiceError::InviteNotValid)?;
        if rec.expires < self.clock.today() || self.store.token_by_id(&rec.account)?.is_none() {
            self.store.sync_main()?;
            return Err(ServiceError::InviteNotValid);
        }
        let mut session = self.new_session(&rec.account)?;
        session.unit = rec.unit.filter(|_| rec.role == Role::Supporter);
        Ok(session)
    }

    /// Signs a device in with a token (the sign-in form).
    pub fn sign_in_with_token(&self, token: &str) -> Result<NewSession, ServiceError> {
        let who = self.authenticate(Some(token.trim()))?;
        self.new_session(&who.token_id)
    }

    fn new_session(&self, account: &str) -> Result<NewSession, ServiceError> {
        let secret = Token::generate()?;
        let days = self.policy.web.session_days;
        let rec = SessionRecord {
            account: account.to_string(),
            csrf: Token::generate()?.expose().to_string(),
            expires: self.clock.today() + Duration::days(i64::from(days)),
        };
        self.store
            .put_session(&session_hash(&self.server_key, secret.expose()), &rec)?;
        self.store.sync_main()?;
        Ok(NewSession {
            secret: secret.expose().to_string(),
            days,
            unit: None,
        })
    }

    /// The session of a cookie: valid while not expired and its account exists (revoking a
    /// token signs out every device of that account).
    pub fn session(&self, secret: &str) -> Result<Session, ServiceError> {
        let hash = session_hash(&self.server_key, secret);
        let rec: SessionRecord = self
            .store
            .session(&hash)?
            .ok_or(ServiceError::InvalidToken)?;
        let account = match self.store.token_by_id(&rec.account)? {
            Some(a) if rec.expires >= self.clock.today() => a,
            _ => {
                self.store.delete_session(&hash)?;
                return Err(ServiceError::InvalidToken);
            }
        };
        Ok(Session {
            principal: Principal {
                token_id: account.id,
                role: account.role,
                org: account.org,
            },
            csrf: rec.csrf,
        })
    }

    /// Whether `given` is the session's form token (compared as keyed hashes, so the time the
    /// comparison takes says nothing about the token).
    pub fn csrf_matches(&self, session: &Session, given: &str) -> bool {
        !given.is_empty()
            && self.server_key.token_hash(&Token::from_presented(given))
                == self
                    .server_key
                    .token_hash(&Token::from_presented(&session.csrf))
    }

    /// Signs the device out: its session is deleted.
    pub fn sign_out(&self, secret: &str) -> Result<(), ServiceError> {
        self.store
            .delete_session(&session_hash(&self.server_key, secret))?;
        self.store.sync_main()?;
        Ok(())
    }

    /// A supporter asks for (`true`) or withdraws (`false`) a follow-up talk.
    pub fn set_followup(&self, who: &Principal, open: bool) -> Result<(), ServiceError> {
        require(who, &[Role::Supporter], "a supporter's sign-in")?;
        self.store.set_followup(&who.token_id, open)?;
        self.store.sync_main()?;
        Ok(())
    }

    /// Whether the supporter has an open follow-up request.
    pub fn followup_open(&self, who: &Principal) -> Result<bool, ServiceError> {
        Ok(self.store.followups()?.contains(&who.token_id))
    }

    /// Open follow-up requests of the coordinator's organisation, under the names given at
    /// invite. Coordinators only: a supporter asks their coordinator for a talk, and the name
    /// is shown to nobody else (not to an administrator either).
    pub fn followups(&self, who: &Principal) -> Result<Vec<FollowUp>, ServiceError> {
        require(
            who,
            &[Role::Coordinator],
            "a coordinator token (follow-up requests are shown to the supporter's coordinator only)",
        )?;
        let mut out = Vec::new();
        for id in self.store.followups()? {
            let Some(rec) = self.store.token_by_id(&id)? else {
                continue;
            };
            if super::tokens::manages(who, &rec) {
                out.push(FollowUp {
                    name: self.store.account_name(&id)?.unwrap_or_default(),
                    account: id,
                });
            }
        }
        out.sort_by(|a, b| (&a.name, &a.account).cmp(&(&b.name, &b.account)));
        Ok(out)
    }

    /// A new account of `role` (in `org`) and a one-time sign-in link for it, for the demo
    /// and for operators: no caller is checked. Returns the link's path (`/invite/SECRET`).
    pub fn sign_in_link(
        &self,
        role: Role,
        org: Option<&str>,
        name: Option<&str>,
        unit: Option<&str>,
    ) -> Result<String, ServiceError> {
        let admin = Principal {
            token_id: String::new(),
            role: Role::Admin,
            org: None,
        };
        let invite = self.create_invite(
            &admin,
            NewInviteRequest {
                role: Some(role.as_str().to_string()),
                org: org.map(str::to_string),
                name: name.map(str::to_string),
                account: None,
                unit: unit.map(str::to_string),
            },
        )?;
        Ok(invite.path)
    }
}

/// Whether `who` may see and revoke invite `r`: admins any, coordinators supporters' of their
/// organisation.
fn invite_managed(who: &Principal, r: &InviteRecord) -> bool {
    match who.role {
        Role::Admin => true,
        Role::Coordinator => r.role == Role::Supporter && r.org == who.org,
        _ => false,
    }
}
