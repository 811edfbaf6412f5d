//! Deadlines make death provable (docs/INVARIANTS.md invariant 7): a worker starts no
//! Lance commit and no publish once `at - margin` has passed.

use std::time::Duration;

use chrono::{DateTime, Utc};
use lance::dataset::CommitBuilder;

use crate::error::{Error, Result};

/// The longest safety margin kept before a deadline.
const MAX_MARGIN: Duration = Duration::from_secs(10);
/// The longest Lance retries a commit that lost a race, within a deadline.
const MAX_COMMIT_RETRIES: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    at: DateTime<Utc>,
    margin: Duration,
}

impl Deadline {
    /// A deadline `budget` from now, keeping a tenth of it (at most 10 s) as margin.
    pub fn after(budget: Duration) -> Deadline {
        let at = later(Utc::now(), budget);
        Deadline { at, margin: (budget / 10).min(MAX_MARGIN) }
    }

    pub fn at(&self) -> DateTime<Utc> {
        self.at
    }

    /// Time left before the margin starts.
    pub fn remaining(&self) -> Duration {
        let left = (self.at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        left.saturating_sub(self.margin)
    }

    /// `commit` bounded by what is left: Lance waits at most that long for
    /// it, and retries a lost race for at most 30 s of it.
    pub fn bound<'a>(&self, commit: CommitBuilder<'a>) -> CommitBuilder<'a> {
        let left = self.remaining();
        commit.with_timeout(Some(left)).with_retry_timeout(left.min(MAX_COMMIT_RETRIES))
    }

    /// Refuse to start `step` once only the margin is left.
    pub fn check(&self, step: &'static str) -> Result<()> {
        if self.remaining().is_zero() {
            return Err(Error::Deadline { step });
        }
        Ok(())
    }
}

/// `t + d`, saturating at the end of representable time (a huge `--timeout`
/// or `--clock-skew` is "forever", never a panic).
pub fn later(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d).ok().and_then(|d| t.checked_add_signed(d)).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// When a worker whose deadline is `deadline` is presumed dead: clocks may
/// disagree by `skew` (saturating).
pub fn presumed_dead_at(deadline: DateTime<Utc>, skew: Duration) -> DateTime<Utc> {
    later(deadline, skew)
}

/// `t - d`, saturating at the beginning of representable time.
pub fn earlier(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d).ok().and_then(|d| t.checked_sub_signed(d)).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        let forever = Duration::from_secs(u64::MAX);
        assert_eq!(Deadline::after(forever).at(), DateTime::<Utc>::MAX_UTC);
        assert!(!Deadline::after(forever).remaining().is_zero());
        assert_eq!(earlier(Utc::now(), forever), DateTime::<Utc>::MIN_UTC);
        assert!(Deadline::after(Duration::ZERO).check("x").is_err());
    }
}
