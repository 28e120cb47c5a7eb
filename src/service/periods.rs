//! Base periods: which exist since the epoch, which accept ticks, and their states.

use super::*;

/// One period and where it is in its life.
#[derive(Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
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

/// The meta key where data directories from before regimes were kept recorded their first
/// base period; read once to adopt such a directory.
pub(crate) const LEGACY_EPOCH_KEY: &str = "first_period";

impl Service {
    /// The last day a period accepts ticks.
    pub fn last_tick_day(&self, period: Period) -> Date {
        period.end() + Duration::days(i64::from(self.policy.grace_days)) - Duration::days(1)
    }

    /// Why `period` does not accept ticks today by the clock, if it does not.
    pub(crate) fn not_open_reason(&self, period: Period, today: Date) -> Option<String> {
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

    /// Why `period` takes no tick now (`None`: it takes them): by the clock (not started, or
    /// past its grace days), or by its recorded state: a period closed, released or purged
    /// takes none even in its grace days (a restore from a backup without raw data marks the
    /// periods that have ended purged; a tick, or a period secret made for a replay, would
    /// create raw data that is never released nor deleted).
    pub(crate) fn refuses_ticks(
        &self,
        period: Period,
        today: Date,
    ) -> Result<Option<String>, ServiceError> {
        if let Some(why) = self.not_open_reason(period, today) {
            return Ok(Some(why));
        }
        Ok(match self.store.period_state(period)? {
            Some(PeriodState::Purged) => Some(
                "it is purged (its raw data was not in the backup this server was restored from), so no tick can be counted in it".to_string(),
            ),
            Some(s) if s != PeriodState::Open => Some(format!("it is {}", s.as_str())),
            _ => None,
        })
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
        Ok(self.regimes.epoch())
    }

    /// Base periods from the epoch up to the current one, oldest first.
    pub fn base_periods(&self) -> Result<Vec<Period>, ServiceError> {
        let current = Period::containing(self.regimes.granularity(), self.clock.today());
        let mut p = self.epoch()?;
        let mut out = Vec::new();
        while p <= current {
            out.push(p);
            p = p.next();
        }
        Ok(out)
    }
}
