//! Time, injected: the system clock in production, a fixed instant for demos and tests.
//!
//! Every use case asks a [`Clock`] rather than the operating system, so tests can stand on any
//! day of any period. Depends on nothing but `time`.

use std::sync::Mutex;

use time::{Date, OffsetDateTime, format_description::well_known::Rfc3339};

/// Environment variable that fixes the clock (RFC 3339, e.g. `2026-11-23T10:00:00Z`).
pub const NOW_ENV: &str = "TELLESTREK_NOW";

/// A source of the current time.
pub trait Clock: Send + Sync + 'static {
    /// The current instant, in UTC.
    fn now(&self) -> OffsetDateTime;

    /// Today's date in UTC. Periods are calendar periods in UTC; a contact logged just after
    /// midnight Norwegian time on the first of a month still falls in the previous month, which
    /// the grace days absorb.
    fn today(&self) -> Date {
        self.now().date()
    }
}

/// The operating system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock that stands still until moved; for demos (`TELLESTREK_NOW`) and tests.
#[derive(Debug)]
pub struct FixedClock {
    now: Mutex<OffsetDateTime>,
}

impl FixedClock {
    /// A clock fixed at `now`.
    pub fn new(now: OffsetDateTime) -> Self {
        FixedClock {
            now: Mutex::new(now),
        }
    }

    /// Parses an RFC 3339 instant, naming the offending text on failure.
    pub fn parse(text: &str) -> Result<Self, String> {
        OffsetDateTime::parse(text.trim(), &Rfc3339)
            .map(Self::new)
            .map_err(|e| {
                format!("`{text}` is not an RFC 3339 instant such as 2026-11-23T10:00:00Z: {e}")
            })
    }

    /// Moves the clock to `now` (tests walk through a period's lifecycle with this).
    pub fn set(&self, now: OffsetDateTime) {
        // A poisoned lock means a test panicked while holding it; the value is still usable.
        *self.now.lock().unwrap_or_else(|p| p.into_inner()) = now;
    }
}

impl Clock for FixedClock {
    fn now(&self) -> OffsetDateTime {
        *self.now.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The clock named by the environment: fixed if `TELLESTREK_NOW` is set, else the system clock.
pub fn from_env() -> Result<Box<dyn Clock>, String> {
    match std::env::var(NOW_ENV) {
        Ok(v) if !v.trim().is_empty() => Ok(Box::new(FixedClock::parse(&v)?)),
        _ => Ok(Box::new(SystemClock)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_clock_parses_rfc3339_and_names_bad_input() {
        let c = FixedClock::parse("2026-11-23T10:00:00Z").unwrap();
        assert_eq!(c.today().to_string(), "2026-11-23");
        let e = FixedClock::parse("23.11.2026").unwrap_err();
        assert!(e.contains("23.11.2026"), "{e}");
    }
}
