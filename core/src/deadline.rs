//! Deadlines make death provable (DESIGN.md invariant 7): a worker starts no
//! Lance commit and no publish once `at - margin` has passed.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::error::{Error, Result};

/// The longest safety margin kept before a deadline.
const MAX_MARGIN: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    at: DateTime<Utc>,
    margin: Duration,
}

impl Deadline {
    /// A deadline `budget` from now, keeping a tenth of it (at most 10 s) as margin.
    pub fn after(budget: Duration) -> Deadline {
        let at = Utc::now() + chrono::Duration::from_std(budget).unwrap_or(chrono::Duration::MAX);
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

    /// Refuse to start `step` once only the margin is left.
    pub fn check(&self, step: &'static str) -> Result<()> {
        if self.remaining().is_zero() {
            return Err(Error::Deadline { step });
        }
        Ok(())
    }
}
