//! How a single-table operation that keeps every row (a compaction, an index
//! change) ends: given up before its commit is known to have landed, or
//! decided forward and published with its settings changes.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;

use crate::deadline::Deadline;
use crate::error::{Error, Result};
use crate::lake::{Created, Lake};
use crate::manifest::{self, Goal, Manifest, Published, TablePin};
use crate::recover;
use crate::settings::Change;
use crate::sidecar::{self, AttemptId, Decision, Outcome};

/// Give up before the commit is known to have landed: decide roll_back (a
/// commit still in flight is then never published; it keeps the rows
/// anyway), remove the intent. If recovery decided first, the outcome is its
/// to carry out.
pub(crate) async fn give_up(lake: &Lake, id: &AttemptId) -> Result<()> {
    let decision = Decision {
        op: id.op.clone(),
        intent: id.attempt.clone(),
        attempt: id.attempt.clone(),
        outcome: Outcome::RollBack,
        by: "writer".into(),
        at: Utc::now(),
        versions: BTreeMap::new(),
    };
    match sidecar::decide(lake, &decision).await? {
        Created::Mine => sidecar::delete_intent(lake, id).await,
        _ => Ok(()),
    }
}

/// What the operation committed, for [`finish`].
pub(crate) struct Committed<'a> {
    pub id: &'a AttemptId,
    pub kind: &'a str,
    pub table: &'a str,
    /// The pin it started from (its settings are carried forward).
    pub pin: &'a TablePin,
    pub version: u64,
    pub changes: Vec<Change>,
}

/// Decide the commit forward (following a vetter's or recovery's identical
/// decision), publish it past vetted commits, remove the intent. Returns the
/// manifest version that shows it, and the table's pin there (the commit, or
/// past it to include others' commits vetted on the way).
pub(crate) async fn finish(lake: &Lake, base: Manifest, c: Committed<'_>, skew: Duration, deadline: &Deadline) -> Result<(u64, u64)> {
    let decision = Decision {
        op: c.id.op.clone(),
        intent: c.id.attempt.clone(),
        attempt: c.id.attempt.clone(),
        outcome: Outcome::Forward,
        by: "writer".into(),
        at: Utc::now(),
        versions: BTreeMap::from([(c.table.to_string(), c.version)]),
    };
    match sidecar::decide(lake, &decision).await? {
        Created::Mine => {}
        // A vetter or recovery decided our commit forward first: the same outcome.
        Created::Theirs(d) if d.outcome == Outcome::Forward && d.forwards(c.table, c.version) => {}
        _ => return Err(Error::Blocked(format!("{} {} was decided by recovery while this worker was stalled; it does not publish", c.kind, c.id))),
    }
    let wanted = BTreeMap::from([(c.table.to_string(), TablePin { version: c.version, ..c.pin.clone() })]);
    let pins = recover::publishable_pins(lake, &base, wanted, &c.id.attempt, recover::Expired::Resolve, skew, deadline)
        .await?
        .map_err(recover::Stop::into_error)?;
    let goal = Goal {
        published: Published {
            op: c.id.op.clone(),
            attempt: c.id.attempt.clone(),
            kind: c.kind.to_string(),
            tables: pins.iter().map(|(t, p)| (t.clone(), p.version)).collect(),
            sources: 0,
        },
        pins,
        changes: match c.changes.is_empty() {
            true => BTreeMap::new(),
            false => BTreeMap::from([(c.table.to_string(), c.changes)]),
        },
    };
    let pinned = goal.pins[c.table].version;
    let version = manifest::publish(lake, base, &goal, deadline).await?.version();
    sidecar::delete_intent(lake, c.id).await?;
    Ok((version, pinned))
}
