//! How a single-table operation that keeps every row (a compaction, an index
//! change, new columns) begins — its intent, then a claim on the table's
//! published state — and ends: given up before its commit is known to have
//! landed, or decided forward and published with its settings changes.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;

use crate::deadline::Deadline;
use crate::fence;
use crate::error::{Error, Result};
use crate::lake::{Created, Lake};
use crate::known_manifest::LanceManifest;
use crate::manifest::{self, Goal, Manifest, Published, TablePin};
use crate::recover;
use crate::settings::Change;
use crate::sidecar::{self, AttemptId, Claim, Claimed, Decision, Holder, Intent, IntentTable, Outcome};

/// How long a loser of a commit race waits for the winner's publish before looking again.
const PIN_WAIT: Duration = Duration::from_secs(10);

/// What kind of single-table operation an intent is for, and its op ids' prefix.
#[derive(Clone, Copy)]
pub(crate) struct Kind {
    pub name: &'static str,
    pub prefix: &'static str,
}

/// Write the intent of a `kind` operation on `table` at `pin` (its op id
/// deterministic from the table, the pin and `what` it does), then claim the
/// table's maintenance at the pin. `None`: another attempt held it; ours was
/// given up and the holder waited for, so the caller looks at the table again.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn begin(lake: &Lake, kind: Kind, table: &str, pin: &TablePin, changes: &[Change], what: &str, skew: Duration, deadline: &Deadline) -> Result<Option<AttemptId>> {
    let digest = <sha2::Sha256 as sha2::Digest>::digest(format!("{table}\0{}\0{what}", pin.version));
    let op = format!("{}-{}", kind.prefix, &hex::encode(digest)[..24]);
    let attempt = uuid::Uuid::now_v7().to_string();
    deadline.check("writing the intent")?;
    let intent = Intent {
        op: op.clone(),
        attempt: attempt.clone(),
        kind: kind.name.into(),
        tables: BTreeMap::from([(
            table.to_string(),
            IntentTable { start_pin: Some(pin.version), mode: pin.mode, key: pin.key.clone(), format: None, csv: None, partitions: None, schema: None, changes: changes.to_vec(), evolution: Default::default() },
        )]),
        sources: Vec::new(),
        started_at: Utc::now(),
        deadline: deadline.at(),
        worker: sidecar::worker_name(),
    };
    sidecar::create_intent(lake, &intent).await?;
    let id = AttemptId::new(&op, &attempt);
    Ok(claim_maintenance(lake, &id, table, pin.version, skew, deadline).await?.then_some(id))
}

/// Give up before the commit is known to have landed: decide roll_back (a
/// commit still in flight is then never published; it keeps the rows
/// anyway), remove the intent. If recovery decided first, the outcome is its
/// to carry out.
pub(crate) async fn give_up(lake: &Lake, id: &AttemptId) -> Result<()> {
    let decision = Decision::new(&id.op, &id.attempt, &id.attempt, Outcome::RollBack, "writer", BTreeMap::new());
    match sidecar::decide(lake, &decision).await? {
        Created::Mine => sidecar::delete_intent(lake, id).await,
        _ => Ok(()),
    }
}

/// `r`, with the attempt given up first if it failed: for the work before
/// a commit, where a failure means nothing of the attempt landed.
pub(crate) async fn or_give_up<T>(lake: &Lake, id: &AttemptId, r: Result<T>) -> Result<T> {
    if r.is_err() {
        give_up(lake, id).await?;
    }
    r
}

/// A commit of attempt `id` on `table` answered with an error. Errors are not
/// proof: its version if the history after `after` shows it landed; if not,
/// the attempt is given up and `None` returned.
pub(crate) async fn landed_or_give_up(lake: &Lake, table: &str, after: u64, id: &AttemptId) -> Result<Option<u64>> {
    let landed = fence::committed_by(lake, table, after, &id.attempt).await?;
    if landed.is_none() {
        give_up(lake, id).await?;
    }
    Ok(landed)
}

/// What the operation committed, for [`finish`].
pub(crate) struct Committed<'a> {
    pub id: &'a AttemptId,
    pub kind: &'a str,
    pub table: &'a str,
    /// The pin it started from (its settings are carried forward).
    pub pin: &'a TablePin,
    pub version: u64,
    /// Where Lance keeps the commit's manifest, if Lance said.
    pub manifest: Option<LanceManifest>,
    pub changes: Vec<Change>,
}

/// Decide the commit forward (following a vetter's or recovery's identical
/// decision), publish it past vetted commits, remove the intent. Returns the
/// manifest version that shows it, and the table's pin there (the commit, or
/// past it to include others' commits vetted on the way).
pub(crate) async fn finish(lake: &Lake, mut base: Manifest, c: Committed<'_>, skew: Duration, deadline: &Deadline) -> Result<(u64, u64)> {
    let decision = Decision::new(&c.id.op, &c.id.attempt, &c.id.attempt, Outcome::Forward, "writer", BTreeMap::from([(c.table.to_string(), c.version)]));
    match sidecar::decide(lake, &decision).await? {
        Created::Mine => {}
        // A vetter or recovery decided our commit forward first: the same outcome.
        Created::Theirs(d) if d.outcome == Outcome::Forward && d.forwards(c.table, c.version) => {}
        _ => return Err(Error::Blocked(format!("{} {} was decided by recovery while this worker was stalled; it does not publish", c.kind, c.id))),
    }
    let wanted = BTreeMap::from([(c.table.to_string(), TablePin { version: c.version, lance_manifest: c.manifest, ..c.pin.clone() })]);
    let recover::Publishable { pins, passed } = recover::publishable_pins(lake, &mut base, wanted, &c.id.attempt, recover::Expired::Resolve, skew, deadline)
        .await?
        .map_err(recover::Stop::into_error)?;
    let goal = Goal {
        published: Published {
            op: c.id.op.clone(),
            attempt: c.id.attempt.clone(),
            kind: c.kind.to_string(),
            tables: pins.iter().map(|(t, p)| (t.clone(), p.version)).collect(),
            sources: 0,
            source_list: passed,
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

/// After losing a commit race, give the winner (usually another optimizer, soon
/// to publish) a moment to move the pin past `pin` (0: to publish the table),
/// so the next plan starts from its result instead of conflicting again.
/// Bounded by `PIN_WAIT` and the deadline.
pub(crate) async fn await_pin_past(lake: &Lake, table: &str, pin: u64, deadline: &Deadline) -> Result<()> {
    let until = std::time::Instant::now() + PIN_WAIT.min(deadline.remaining());
    while std::time::Instant::now() < until {
        let latest = manifest::read_latest(lake).await?;
        if latest.is_some_and(|m| m.tables.get(table).is_some_and(|p| p.version > pin)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// Claim the maintenance of `table` at `pin` (a compaction or an index
/// refresh) for attempt `id`, whose intent is written: one optimizer per
/// state, like a source claim. `false`: another attempt held it; ours was
/// given up (nothing was done yet) and the holder waited for, so the caller
/// looks at the table again.
pub(crate) async fn claim_maintenance(lake: &Lake, id: &AttemptId, table: &str, pin: u64, skew: Duration, deadline: &Deadline) -> Result<bool> {
    let key = sidecar::maintenance_key(table, pin);
    let claim = Claim { op: id.op.clone(), attempt: id.attempt.clone(), source: format!("maintenance of {table} at {pin}"), table: table.to_string(), generation: 0, claimed_at: Utc::now() };
    // A maybe-claim needs no release of its own: our roll_back decision gives it back.
    let mut maybe = Vec::new();
    let (holder, status) = match sidecar::claim(lake, &key, &claim, &mut maybe).await {
        Ok(Claimed::Mine { .. }) => return Ok(true),
        Ok(Claimed::Held(holder, status)) => (holder, status),
        Err(e) => {
            give_up(lake, id).await?;
            return Err(e);
        }
    };
    give_up(lake, id).await?;
    if let Holder::InFlight(other) = status {
        recover::await_gone(lake, &AttemptId::new(&holder.op, &holder.attempt), other.deadline, skew, deadline).await?;
    }
    Ok(false)
}
