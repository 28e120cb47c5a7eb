//! Tokens: creating (shown once), listing (never their secrets) and revoking.

use super::*;

/// Body of `POST /api/v1/tokens`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTokenRequest {
    /// Role of the new token.
    pub role: String,
    /// Organisation, for supporter, coordinator and leader tokens.
    #[serde(default)]
    pub org: Option<String>,
}

/// A newly created token: the only time its clear text is shown.
#[derive(Debug, Serialize, utoipa::ToSchema)]
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

impl Service {
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

    pub(crate) fn insert_token(
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
        let _one_at_a_time = self.token_lock.lock().unwrap_or_else(|p| p.into_inner());
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

/// Whether `who` may see and revoke token `t`.
pub(super) fn manages(who: &Principal, t: &TokenRecord) -> bool {
    match who.role {
        Role::Admin => true,
        Role::Coordinator => t.role == Role::Supporter && t.org == who.org,
        _ => false,
    }
}
