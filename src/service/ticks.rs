//! Logging a tick: every check before any write, and the answer only once it is on disk.

use super::*;

/// Body of `POST /api/v1/ticks`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TickRequest {
    /// Organisation id.
    pub org: String,
    /// Unit id within the organisation.
    pub unit: String,
    /// One value id per dimension.
    #[serde(deserialize_with = "unique_tags")]
    #[schema(value_type = std::collections::BTreeMap<String, String>)]
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
#[derive(Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct TickAccepted {
    /// Whether this answers a request counted before under the same idempotency key (sent as
    /// the `Idempotent-Replayed` header, not in the body, so the body is the first answer's).
    #[serde(skip)]
    pub replayed: bool,
    /// The period the contacts were counted in.
    pub period: Period,
    /// Contacts accepted.
    pub accepted: u32,
}

impl Service {
    /// Logs contacts. Every check happens before any write; the result is durable when this
    /// returns `Ok`.
    pub async fn log_tick(
        &self,
        who: &Principal,
        req: TickRequest,
    ) -> Result<TickAccepted, ServiceError> {
        self.log_tick_once(who, req, None).await
    }

    /// Logs contacts under the client's idempotency key: a request with a key that was counted
    /// in the same period is answered as the first time and changes nothing. An error answer
    /// means not counted: a tick that could not be made durable is taken back.
    pub async fn log_tick_once(
        &self,
        who: &Principal,
        req: TickRequest,
        idempotency_key: Option<&str>,
    ) -> Result<TickAccepted, ServiceError> {
        let explicit_period = req.period.is_some();
        let mut write = self.check_tick(who, req)?;
        // Requests with the same key are handled one at a time, so a resend never sees a first
        // request's tick that is about to be taken back.
        let _one_at_a_time = match idempotency_key {
            Some(key) => {
                write.idempotency = Some(self.idempotency_hash(write.period, who, key)?);
                Some(self.idempotency_lock(who, key).lock().await)
            }
            None => None,
        };
        // A resend without a period, after the period changed: the first may be in the
        // previous period, which still takes ticks during its grace days.
        if let Some(key) = idempotency_key.filter(|_| !explicit_period)
            && let Some(first) = self.replay_in_previous(&write, who, key).await?
        {
            return Ok(first);
        }
        // The supporter's running count stays inside: no answer carries a raw count.
        let applied = self.store.apply_tick(&write).map_err(|e| match e {
            StoreError::OverCap { cap, .. } => ServiceError::OverCap {
                period: write.period,
                cap,
            },
            StoreError::PeriodNotOpen(state) => ServiceError::PeriodNotOpen {
                period: write.period,
                why: format!("it is {}", state.as_str()),
            },
            other => ServiceError::NotStored {
                detail: other,
                certain: true,
            },
        })?;
        if let Err(e) = self.store.durable_period(write.period).await {
            // Take it back, so it is not counted when the store writes again. Only if the
            // taking back is itself on disk is the answer sure: sled may have written the tick
            // before the sync failed.
            let certain = applied != TickApplied::Counted
                || (self.store.undo_tick(&write).is_ok()
                    && self.store.durable_period(write.period).await.is_ok());
            return Err(ServiceError::NotStored { detail: e, certain });
        }
        Ok(TickAccepted {
            period: write.period,
            accepted: match applied {
                TickApplied::Counted => write.count,
                TickApplied::Replayed(n) => n,
            },
            replayed: matches!(applied, TickApplied::Replayed(_)),
        })
    }

    /// The answer to a request counted under `key` in the period before `write`'s, if that
    /// period still takes ticks and holds the key.
    async fn replay_in_previous(
        &self,
        write: &TickWrite,
        who: &Principal,
        key: &str,
    ) -> Result<Option<TickAccepted>, ServiceError> {
        let previous = write.period.prev();
        if previous < self.regimes.epoch()
            || self.refuses_ticks(previous, self.clock.today())?.is_some()
        {
            return Ok(None);
        }
        let hash = self.idempotency_hash(previous, who, key)?;
        let Some(n) = self.store.idempotent_answer(previous, &hash)? else {
            return Ok(None);
        };
        self.store.durable_period(previous).await?;
        Ok(Some(TickAccepted {
            period: previous,
            accepted: n,
            replayed: true,
        }))
    }

    /// The lock requests with this supporter's `key` take turns on (one of a few shards).
    fn idempotency_lock(&self, who: &Principal, key: &str) -> &tokio::sync::Mutex<()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (&who.token_id, key).hash(&mut h);
        &self.idempotency_locks[(h.finish() % self.idempotency_locks.len() as u64) as usize]
    }

    /// The keyed hash an idempotency key is stored under: scoped to the supporter's token and
    /// the period, under the period's secret, so the stored bytes reveal neither.
    fn idempotency_hash(
        &self,
        period: Period,
        who: &Principal,
        key: &str,
    ) -> Result<[u8; 32], ServiceError> {
        if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err(ServiceError::InvalidField {
                field: "Idempotency-Key",
                code: "invalid_idempotency_key",
                message: "the header must be 1 to 255 visible ASCII characters, such as a UUID; use a new one for each contact".into(),
            });
        }
        let secret = self.store.period_secret(period, fresh_secret)?;
        Ok(self
            .server_key
            .period_secret(&secret)?
            .idempotency(&who.token_id, key))
    }

    /// Validates a tick and prepares its write, in the order a person fixing the request would
    /// want to hear about problems: who, where, what, how many, when.
    pub fn check_tick(&self, who: &Principal, req: TickRequest) -> Result<TickWrite, ServiceError> {
        require(who, &[Role::Supporter], "a supporter token")?;
        let gran = self.regimes.granularity();
        let today = self.clock.today();
        // The tick is checked against the policy of the period it is counted in; a period that
        // cannot be read is reported after the fields before it, against today's policy.
        let period = match &req.period {
            None => Ok(Period::containing(gran, today)),
            Some(text) => match text.parse::<Period>() {
                Ok(p) if p.granularity() == gran => Ok(p),
                Ok(p) => Err(ServiceError::InvalidPeriod(format!(
                    "`{text}` is a {}, but this scheme counts by {}",
                    p.granularity().as_str(),
                    gran.as_str()
                ))),
                Err(e) => Err(ServiceError::InvalidPeriod(e)),
            },
        };
        let policy = period
            .as_ref()
            .ok()
            .and_then(|p| self.policy_at(*p))
            .unwrap_or_else(|| self.current_policy());
        let Some(org) = policy.org(&req.org) else {
            // Known to another period's policy: the period is the problem, not the name.
            if let Some(from) = self.org_collects(&req.org) {
                let period = period?;
                return Err(ServiceError::PeriodNotOpen {
                    period,
                    why: format!("organisation `{}` {from}", req.org),
                });
            }
            return Err(ServiceError::UnknownOrg(req.org));
        };
        if who.org.as_deref() != Some(org.id.as_str()) {
            return Err(ServiceError::WrongOrg(req.org));
        }
        if org.unit(&req.unit).is_none() {
            return Err(ServiceError::UnknownUnit {
                org: req.org,
                unit: req.unit,
            });
        }
        policy.check_tags(&req.tags)?;
        let max = self.policy.max_count_per_request;
        let count = match req.count {
            None => 1,
            Some(n) if n >= 1 && n <= i64::from(max) => n as u32,
            Some(n) => return Err(ServiceError::InvalidCount { given: n, max }),
        };
        let period = period?;
        if period < self.regimes.epoch() {
            return Err(ServiceError::PeriodNotOpen {
                period,
                why: format!(
                    "it is before {}, the first period this service collected",
                    self.regimes.epoch()
                ),
            });
        }
        if let Some(why) = self.refuses_ticks(period, today)? {
            return Err(ServiceError::PeriodNotOpen { period, why });
        }
        let cap = policy.max_ticks_per_supporter_period;
        let secret = self.store.period_secret(period, fresh_secret)?;
        let pseudonym = self
            .server_key
            .period_secret(&secret)?
            .pseudonym(&who.token_id);
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
            cap,
            idempotency: None,
        })
    }

    /// When organisation `id`, unknown to some period's policy, collects, in words: `None` if
    /// no regime knows it.
    fn org_collects(&self, id: &str) -> Option<String> {
        let all = self.regimes.all();
        let with: Vec<usize> = (0..all.len())
            .filter(|&i| all[i].policy.org(id).is_some())
            .collect();
        let (first, last) = (*with.first()?, *with.last()?);
        Some(match all.get(last + 1) {
            Some(next) => format!(
                "collects from {} until {} only",
                all[first].from,
                next.from.prev()
            ),
            None => format!("collects from {} on", all[first].from),
        })
    }
}
