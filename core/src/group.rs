//! Group commit, the writing side (docs/PROTOCOL.md, "Group commits").
//!
//! A group is an attempt G of its own: its intent (kind `group`), then each
//! member bound to it create-only (`joined(G)`, the member's one decision),
//! then one Lance commit carrying the members' staged fragments (tagged with
//! them), then G's forward decision naming that commit and its members, then
//! the publish. This step builds groups of one: a contended single-table
//! append commits as its own group's only member, so the leader's whole path
//! runs and is recovered; queue entries and takes of other writers come next.
//! Until then only a test knob sends a writer here
//! ([`failpoints::contended`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Utc;
use lance::dataset::CommitBuilder;
use lance::dataset::transaction::{Operation, Transaction};

use crate::deadline::Deadline;
use crate::error::Error;
use crate::failpoints;
use crate::fence;
use crate::known_manifest::LanceManifest;
use crate::manifest::PublishedSource;
use crate::lake::{Created, Lake};
use crate::sidecar::{self, AttemptId, Decision, Intent, Outcome};
use crate::stage::{self, Appended};

/// How a group commit failed, and so what its member still owns.
#[derive(Debug)]
pub(crate) enum Failed {
    /// Before the member joined: its fate is its own, and the group left nothing.
    Alone(Error),
    /// The group was rolled back by its own writer and nothing of it stands:
    /// the member releases its claims and ends.
    RolledBack(Error),
    /// Anything else: the intents stay, and recovery finishes both.
    Left(Error),
}

/// A group commit decided forward.
pub(crate) struct Committed {
    pub group: AttemptId,
    pub version: u64,
    pub manifest: Option<LanceManifest>,
    pub rows: u64,
}

/// Commit `staged` (an append onto the one table of intent `of`) as a group
/// of one: its attempt binds itself to a new group, which commits its rows
/// and decides forward.
/// `sources` are those the member ingests, for the group's decision.
pub(crate) async fn commit_alone(lake: &Lake, of: &Intent, sources: Vec<PublishedSource>, staged: Appended, deadline: &Deadline) -> std::result::Result<Committed, Failed> {
    let member = &AttemptId::new(&of.op, &of.attempt);
    let (table, it) = of.tables.iter().next().expect("a group member appends to one table");
    let (table, start_pin) = (table.as_str(), it.start_pin.expect("a group member appends to a published table"));
    let group = AttemptId::new(&format!("group-{}", uuid::Uuid::new_v4().simple()), &uuid::Uuid::now_v7().to_string());
    deadline.check("writing a group's intent").map_err(Failed::Alone)?;
    // Its member's table settings, sources (so a publish by the group's
    // recovery lists them; it claims none) and deadline.
    let intent = Intent {
        op: group.op.clone(),
        attempt: group.attempt.clone(),
        kind: sidecar::KIND_GROUP.into(),
        started_at: Utc::now(),
        worker: sidecar::worker_name(),
        ..of.clone()
    };
    sidecar::create_intent(lake, &intent).await.map_err(Failed::Alone)?;
    // Until the member is bound, the group has no effect: on failure its intent goes.
    let unused = &group;
    let alone = |e: Error| async move {
        if let Err(cleanup) = sidecar::delete_intent(lake, unused).await {
            tracing::warn!(error = %cleanup, "could not remove an unused group's intent; recovery rolls it back");
        }
        Failed::Alone(e)
    };
    if let Err(e) = failpoints::hit(failpoints::GROUP_AFTER_INTENT) {
        return Err(alone(e).await);
    }
    let take = Decision { group: Some(group.clone()), ..Decision::new(&member.op, &member.attempt, &group.attempt, Outcome::Joined, "group", BTreeMap::new()) };
    match sidecar::decide(lake, &take).await {
        Ok(Created::Mine) => {}
        // Decided by recovery meanwhile (presumed dead): the member follows that, as ever.
        Ok(Created::Theirs(theirs)) => return Err(alone(Error::Blocked(format!("operation {member} was decided {:?} by {} meanwhile", theirs.outcome, theirs.by))).await),
        Ok(Created::Gone) => return Err(Failed::Left(Error::Blocked(format!("operation {member}: joining group {group} could not be confirmed; `sluice recover` finishes both")))),
        Err(e) => return Err(Failed::Left(e)),
    }
    let Appended { ds, read_version, fragments, rows } = staged;
    let give_up = |e: Error| give_up(lake, member, &group, (table, start_pin), e, rows);
    // Bound, with nothing committed: a failure now rolls the group back.
    let checked = failpoints::hit(failpoints::GROUP_AFTER_SELF_TAKE)
        .and_then(|()| deadline.check("a group's Lance commit"))
        .and_then(|()| failpoints::hit(failpoints::GROUP_COMMIT_CHECKED));
    if let Err(e) = checked {
        return give_up(e).await;
    }
    // Lance numbers fragments with id 0 at commit; any other would be kept as is.
    assert!(fragments.iter().all(|f| f.id == 0), "staged fragments carry no id before their commit");
    let mut txn = Transaction::new(read_version, Operation::Append { fragments }, None);
    txn.transaction_properties = Some(Arc::new(sidecar::group_properties(&group, std::slice::from_ref(member))));
    let (version, manifest) = match deadline.bound(CommitBuilder::new(ds)).execute(txn).await {
        Ok(ds) => (ds.version().version, LanceManifest::of(&ds)),
        Err(e) if stage::lost(&e) => return give_up(Error::lance(table, e)).await,
        Err(e) => match fence::committed_by(lake, table, start_pin, &group.attempt).await.map_err(Failed::Left)? {
            Some(version) => (version, None),
            None => return give_up(Error::lance(table, e)).await,
        },
    };
    failpoints::hit(failpoints::GROUP_AFTER_COMMIT).map_err(Failed::Left)?;
    let forward = Decision {
        members: Some(vec![member.clone()]),
        sources: sources.into_iter().map(|s| PublishedSource { op: Some(member.op.clone()), ..s }).collect(),
        ..Decision::new(&group.op, &group.attempt, &group.attempt, Outcome::Forward, "writer", BTreeMap::from([(table.to_string(), version)]))
    };
    let (version, manifest) = match sidecar::decide(lake, &forward).await.map_err(Failed::Left)? {
        Created::Mine => (version, manifest),
        // A vetter or recovery decided it first, from the same commit's tag.
        Created::Theirs(theirs) if names(&theirs, table, member) => (theirs.versions[table], manifest.filter(|_| theirs.versions[table] == version)),
        Created::Gone => {
            return Err(Failed::Left(Error::Blocked(format!(
                "group {group} of operation {member}: its decision could not be confirmed; its commit stands, and `sluice recover` finishes it"
            ))));
        }
        other => {
            return Err(Failed::Left(Error::Blocked(format!(
                "group {group} of operation {member} was decided otherwise while this worker stalled ({other:?}); its commit \
                 is never published, and `sluice recover` gives the sources back for redelivery"
            ))));
        }
    };
    failpoints::hit(failpoints::GROUP_AFTER_DECISION).map_err(Failed::Left)?;
    Ok(Committed { group, version, manifest, rows })
}

/// The group's commit was not sent, or did not land (as far as Lance and the
/// table's history show): decide the group rolled back, create-only. Won, it removes any
/// commit of the group found after all and goes; lost to a forward decision
/// (the commit landed and a vetter found it), it follows that (never
/// removing a commit someone decided forward).
async fn give_up(lake: &Lake, member: &AttemptId, group: &AttemptId, (table, start_pin): (&str, u64), error: Error, rows: u64) -> std::result::Result<Committed, Failed> {
    failpoints::hit(failpoints::GROUP_BEFORE_GIVE_UP).map_err(Failed::Left)?;
    let decision = Decision::new(&group.op, &group.attempt, &group.attempt, Outcome::RollBack, "writer", BTreeMap::new());
    match sidecar::decide(lake, &decision).await.map_err(Failed::Left)? {
        Created::Mine => {}
        Created::Theirs(theirs) if names(&theirs, table, member) => {
            tracing::warn!(table, %group, "the group's commit answered with an error but landed, and was decided forward");
            return Ok(Committed { group: group.clone(), version: theirs.versions[table], manifest: None, rows });
        }
        other => return Err(Failed::Left(Error::Blocked(format!("group {group} was decided by recovery meanwhile ({other:?}); recovery finishes it")))),
    }
    // Its rows are removed before its member gives its claims back; if they
    // cannot be, both intents stay and recovery finishes (or refuses).
    let removed = fence::remove_own_commits(lake, table, start_pin, group, &group.attempt).await.map_err(Failed::Left)?;
    removed.map_err(|reason| Failed::Left(Error::Blocked(reason)))?;
    sidecar::delete_intent(lake, group).await.map_err(Failed::Left)?;
    Err(Failed::RolledBack(error))
}

/// Does `decision` send forward a commit on `table` carrying `member`'s rows?
fn names(decision: &Decision, table: &str, member: &AttemptId) -> bool {
    decision.outcome == Outcome::Forward && decision.versions.contains_key(table) && decision.members.as_ref().is_some_and(|m| m.contains(member))
}
