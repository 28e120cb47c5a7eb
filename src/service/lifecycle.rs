//! The lifecycle job: closes periods, checks the budget, draws releases once, purges raw data.

use super::*;
use crate::domain::Granularity;

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

/// One release batch: an organisation, a release period and the marginals still to draw, under
/// the policy its base periods were collected under.
pub(crate) struct Batch<'a> {
    policy: &'a Policy,
    org: &'a crate::policy::Org,
    period: Period,
    covers: Vec<Period>,
    marginals: Vec<&'a crate::policy::Marginal>,
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
    pub(crate) fn is_closed(&self, b: Period, today: Date) -> bool {
        today > self.last_tick_day(b)
    }

    /// The batches the lifecycle job would draw now, in the order it draws them: every
    /// (release period, organisation) whose last base period is closed and that lacks a
    /// release of some marginal of that cadence. Finer cadences come first among periods that
    /// end together, so a quarter can use the months inside it.
    pub(crate) fn due_batches(&self) -> Result<Vec<Batch<'_>>, ServiceError> {
        let today = self.clock.today();
        let gran = self.regimes.granularity();
        let epoch = self.regimes.epoch();
        let bases = self.base_periods()?;
        let mut due: BTreeSet<(Date, crate::domain::Granularity, Period)> = BTreeSet::new();
        for b in &bases {
            let Some(regime) = self.regimes.at(*b) else {
                continue;
            };
            for m in &regime.policy.marginals {
                let period = b.within(m.cadence);
                let last = *release::base_periods_in(period, gran).last().unwrap_or(b);
                if self.is_closed(last, today) {
                    // Ordered by the end of the last base period it covers (a month's last ISO
                    // week can end after the month), so finer releases come first.
                    due.insert((last.end(), m.cadence, period));
                }
            }
        }
        let mut out = Vec::new();
        for (_, cadence, period) in due {
            let in_period: Vec<Period> = release::base_periods_in(period, gran)
                .into_iter()
                .filter(|b| *b >= epoch)
                .collect();
            // Raw data already purged (after a refusal, say) cannot be released any more.
            if in_period
                .iter()
                .any(|b| self.store.period_state(*b).ok().flatten() == Some(PeriodState::Purged))
            {
                continue;
            }
            // Every organisation that collected in the period under some regime, each released
            // under the regime of the last base period it collected in. Regimes change only
            // where no release of a changed table straddles the change, so that regime's
            // tables and domains are those of every covered period.
            let mut orgs: Vec<&str> = Vec::new();
            for b in &in_period {
                if let Some(r) = self.regimes.at(*b) {
                    for o in &r.policy.orgs {
                        if !orgs.contains(&o.id.as_str()) {
                            orgs.push(&o.id);
                        }
                    }
                }
            }
            for org_id in orgs {
                let covers: Vec<Period> = in_period
                    .iter()
                    .copied()
                    .filter(|b| {
                        self.regimes
                            .at(*b)
                            .is_some_and(|r| r.policy.org(org_id).is_some())
                    })
                    .collect();
                let Some(policy) = covers
                    .last()
                    .and_then(|b| self.regimes.at(*b))
                    .map(|r| &*r.policy)
                else {
                    continue;
                };
                let Some(org) = policy.org(org_id) else {
                    continue;
                };
                let mut missing = Vec::new();
                for m in policy.marginals.iter().filter(|m| m.cadence == cadence) {
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
                        policy,
                        org,
                        period,
                        covers,
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
        // The purge below runs whatever fails before it (a full disk, a refused or failed
        // draw): retention never waits for anything. The first error is returned at the end.
        let mut failure: Option<ServiceError> = None;
        let mut note = |r: Result<(), ServiceError>| {
            if let Err(e) = r {
                failure.get_or_insert(e);
            }
        };
        note(self.remember_latest_period());
        // The raw databases of the current and the next period exist before any tick, so the
        // first tick of a period is not slower than the rest (which would tell its sender they
        // were first) and no file is created at the moment of a tick.
        if let Some(current) = bases.last() {
            note(
                self.store
                    .period_secret(*current, fresh_secret)
                    .and_then(|_| self.store.period_secret(current.next(), fresh_secret))
                    .map(|_| ())
                    .map_err(Into::into),
            );
        }
        note((|| {
            for &b in bases.iter().filter(|&&b| self.is_closed(b, today)) {
                if self.store.period_state(b)?.is_none() {
                    self.store.set_period_state(b, PeriodState::Closed)?;
                }
            }
            crate::fault::point("lifecycle:closed");
            let due = self.due_batches()?;
            // Batches and periods are policy-level facts, never counts of ticks.
            tracing::debug!(
                batches_due = due.len(),
                periods = bases.len(),
                "lifecycle job"
            );
            for batch in due {
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
                if self.store.period_state(b)? == Some(PeriodState::Closed)
                    && self.releases_ending_with(b)?.iter().all(|(_, done)| *done)
                {
                    self.store.set_period_state(b, PeriodState::Released)?;
                    crate::fault::point("lifecycle:released");
                }
            }
            Ok(())
        })());
        // Retention is kept whatever happened above: raw data of a period whose release was
        // refused, or could not be drawn, is deleted on the same day as everyone else's.
        for &b in bases.iter().filter(|&&b| self.is_closed(b, today)) {
            let r = (|| {
                if self.store.period_state(b)? != Some(PeriodState::Purged)
                    && today > self.purge_day(b)
                {
                    self.store.purge(b)?;
                    report.purged.push(b);
                }
                Ok(())
            })();
            note(r);
        }
        // A period past its last tick day is read again only by this job (a quarter's or a
        // year's release, which opens every period it covers) and by a backup with raw data:
        // its database is closed at the end of each job, so its memory is not held for the
        // months until its purge. A full day later, so no tick let in before the deadline can
        // still be writing to it.
        for b in self.store.open_raw_periods() {
            if today > self.last_tick_day(b) + time::Duration::days(1) {
                note(self.store.close_raw(b).map_err(Into::into));
            }
        }
        note(self.store.flush().map_err(Into::into));
        if let Some(e) = failure {
            return Err(e);
        }
        crate::fault::point("lifecycle:done");
        if !report.drawn.is_empty() || !report.purged.is_empty() {
            tracing::info!(
                drawn = report.drawn.len(),
                purged = report.purged.len(),
                "lifecycle job ran"
            );
        }
        Ok(report)
    }

    /// Records the current period as the latest this data directory has been used in, so that
    /// a start with a clock set back is refused (see `Service::open`).
    fn remember_latest_period(&self) -> Result<(), ServiceError> {
        let current = Period::containing(self.regimes.granularity(), self.clock.today());
        let seen = self
            .store
            .meta_text(super::LATEST_PERIOD_KEY)?
            .and_then(|t| t.parse::<Period>().ok());
        if seen.is_none_or(|s| s < current) {
            self.store
                .set_meta_text(super::LATEST_PERIOD_KEY, &current.to_string())?;
        }
        Ok(())
    }

    /// The releases (ids, and whether drawn) whose period ends with base period `b`.
    pub(crate) fn releases_ending_with(
        &self,
        b: Period,
    ) -> Result<Vec<(String, bool)>, ServiceError> {
        let Some(regime) = self.regimes.at(b) else {
            return Ok(Vec::new());
        };
        let p = &*regime.policy;
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
    /// release that counts it (the one with the longest cadence) could first be drawn, by the
    /// policy `b` was collected under (a later edit can neither shorten nor extend it).
    pub(crate) fn purge_day(&self, b: Period) -> Date {
        let p = self.regimes.at(b).map_or(&*self.policy, |r| &*r.policy);
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
    pub(crate) fn draw_and_commit(&self, batch: &Batch<'_>) -> Result<Vec<String>, ServiceError> {
        let p = batch.policy;
        let org = batch.org;
        // The budget is checked before any noise is drawn, with the spends OpenDP's map gives,
        // and before any raw data is read: a refused batch, due again at every run until its
        // periods are purged, opens none of their databases.
        let ledger = self.store.ledger()?;
        self.check_budget(&ledger, batch)?;
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
        // Releases of finer cadences inside this period: read by their periods' prefixes, not by
        // scanning every release.
        let cover_set: BTreeSet<Period> = batch.covers.iter().copied().collect();
        let cadence = batch.period.granularity();
        let finer_periods: BTreeSet<Period> = batch
            .covers
            .iter()
            .flat_map(|b| {
                [Granularity::Week, Granularity::Month, Granularity::Quarter]
                    .into_iter()
                    .filter(move |g| *g >= b.granularity() && *g < cadence)
                    .map(move |g| b.within(g))
            })
            .collect();
        let mut finer: Vec<Release> = Vec::new();
        for fp in finer_periods {
            finer.extend(
                self.store
                    .releases(&format!("{fp}/{}/", org.id))?
                    .into_iter()
                    .filter(|r| {
                        !r.covers.is_empty() && r.covers.iter().all(|c| cover_set.contains(c))
                    }),
            );
        }
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
        crate::fault::point("release:drawn");
        self.store.commit_releases(&drawn)?;
        Ok(drawn.into_iter().map(|(r, _)| r.id).collect())
    }

    /// The ledger entries a batch will write, with OpenDP's spends, before anything is drawn.
    pub(crate) fn planned_entries(
        &self,
        batch: &Batch<'_>,
    ) -> Result<Vec<LedgerEntry>, ServiceError> {
        let p = batch.policy;
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
    pub(crate) fn check_budget(
        &self,
        ledger: &[LedgerEntry],
        batch: &Batch<'_>,
    ) -> Result<(), ServiceError> {
        let p = batch.policy;
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
        // One measure per ledger: epsilon and rho are never added up (a change of mechanism is
        // refused at start; this guards data directories written otherwise).
        if let Some(e) = ledger.iter().find(|e| e.measure != measure) {
            return Err(refuse(format!(
                "the ledger holds {} spent in {}, which cannot be added to {measure}",
                e.release, e.measure
            )));
        }
        if p.privacy.unit == PrivacyUnit::Contact {
            // Each covered period against the budget of the policy it was collected under (or
            // the file's, if that is stricter: a lower budget applies at once, a higher one
            // only to periods collected under it), summing every release that covers it,
            // whatever table it belongs to.
            for b in &batch.covers {
                let budget = self
                    .regimes
                    .at(*b)
                    .map_or(p.privacy.budget, |r| r.policy.privacy.budget)
                    .min(p.privacy.budget)
                    .min(self.policy.privacy.budget);
                let spent: f64 = ledger
                    .iter()
                    .filter(|e| e.covers.contains(b))
                    .map(|e| e.spend)
                    .sum();
                if spent + add > budget * (1.0 + 1e-9) {
                    return Err(refuse(format!(
                        "it would spend {measure} {add:.3} on {b}, which has {spent:.3} spent already, over the budget of {budget}"
                    )));
                }
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
            // A window that reaches into periods of several policies is held to the smallest
            // cap among them (and the file's, if stricter), so no edit raises what earlier data
            // is exposed to.
            let cap = self
                .regimes
                .min_rolling_year_cap(a, a + year)
                .min(p.privacy.rolling_year_cap)
                .min(self.policy.privacy.rolling_year_cap);
            if spent + add > cap * (1.0 + 1e-9) {
                return Err(refuse(format!(
                    "it would spend {measure} {add:.3} on top of {spent:.3} spent on the 365 days from {a}, over the rolling-year cap of {cap}"
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
        if period.granularity() != self.regimes.granularity() {
            return Err(ServiceError::InvalidPeriod(format!(
                "`{text}` is not a {} of this scheme",
                self.regimes.granularity().as_str()
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
    pub(crate) fn dry_run(&self, period: Period) -> Result<(), ServiceError> {
        let mut ledger = self.store.ledger()?;
        for batch in self.due_batches()? {
            let ends_here = release::base_periods_in(batch.period, self.regimes.granularity())
                .last()
                == Some(&period);
            match self.check_budget(&ledger, &batch) {
                Ok(()) => ledger.extend(self.planned_entries(&batch)?),
                Err(e) if ends_here => return Err(e),
                Err(_) => {}
            }
        }
        Ok(())
    }
}
