//! Group commit, the writing side (docs/PROTOCOL.md, "Group commits").
//!
//! A contended writer offers its staged rows in the table's queue
//! (`queue.rs`). The oldest queued writer leads: a group is an attempt G of
//! its own, with its intent (kind `group`), then the leader bound to it
//! create-only (`joined(G)`, its one decision), then every queued writer it
//! can bind the same way, then one Lance commit carrying the members' staged
//! fragments (tagged with them), then G's forward decision naming that commit
//! and its members, then the publish. A writer taken into someone's group
//! waits for the group's decision and then for its publish. Until the switch
//! from Lance's commit conflicts is built, only a test knob sends a writer
//! here ([`failpoints::contended`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use lance::dataset::CommitBuilder;
use lance::dataset::transaction::{Operation, Transaction};

use crate::deadline::{Deadline, presumed_dead_at};
use crate::error::{Error, Result};
use crate::failpoints;
use crate::fence;
use crate::known_manifest::LanceManifest;
use crate::manifest::PublishedSource;
use crate::lake::{Created, Lake};
use crate::queue::{self, Entry};
use crate::recover::{self, Action};
use crate::sidecar::{self, AttemptId, Decision, Fate, Intent, Outcome};
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

/// A group commit decided forward, with this writer's rows in it.
pub(crate) struct Committed {
    pub group: AttemptId,
    /// This writer led the group: its intent is this writer's to remove.
    pub led: bool,
    pub version: u64,
    pub manifest: Option<LanceManifest>,
    pub rows: u64,
}

/// Members one group takes at most (its leader included).
const MAX_MEMBERS: usize = 64;
/// Sources a group's decision names at most (so that a publish lists them).
const MAX_GROUP_SOURCES: usize = 1024;
/// Takes (with their entry reads) in flight at once.
const TAKES_AT_ONCE: usize = 16;
/// How long a queued writer waits per older entry before it leads, and for
/// how many entries at most: the oldest leads at once, younger ones give it
/// time to take them.
const TURN: Duration = Duration::from_millis(50);
const MAX_RANK: u32 = 4;
/// Entries older than this do not delay a writer's turn (their owners are
/// waiting on a group already, or gone).
const STALE: Duration = Duration::from_secs(10);
/// Polls of a decision or a manifest: the first pause, growing by half up to the last.
pub(crate) const FIRST_POLL: Duration = Duration::from_millis(20);
pub(crate) const LAST_POLL: Duration = Duration::from_millis(250);
/// How long a member waits for its leader's publish before it publishes itself.
pub(crate) const PUBLISH_WAIT: Duration = Duration::from_secs(2);

pub(crate) fn next_poll(pause: Duration) -> Duration {
    (pause * 3 / 2).min(LAST_POLL)
}

/// Commit `staged` (an append onto the one table of intent `of`) in a
/// group: offer it in the table's queue; if another writer's group takes it
/// meanwhile, wait for that group's outcome, else lead a group of its own,
/// taking every entry queued by then.
/// `sources` are those the writer ingests, for the group's decision.
pub(crate) async fn commit(lake: &Lake, of: &Intent, sources: Vec<PublishedSource>, staged: Appended, deadline: &Deadline, skew: Duration) -> std::result::Result<Committed, Failed> {
    let me = AttemptId::new(&of.op, &of.attempt);
    let table = of.tables.keys().next().expect("a group member appends to one table");
    deadline.check("offering rows to a group").map_err(Failed::Alone)?;
    let entry = Entry {
        op: me.op.clone(),
        attempt: me.attempt.clone(),
        table: table.clone(),
        read_version: staged.read_version,
        fragments: staged.fragments.clone(),
        rows: staged.rows,
        sources,
        deadline: of.deadline,
    };
    // The queue as it was before our entry: who is older, and so leads first.
    let (offered, queued) = futures::join!(queue::offer(lake, &entry), queue::list(lake, table));
    match offered.map_err(Failed::Alone)? {
        // Gone: refused, then not there: a leader took us and withdrew it.
        Created::Mine | Created::Gone => {}
        Created::Theirs(e) => return Err(Failed::Alone(Error::Corrupt { what: "queue entry", path: format!("{table}/{}", e.attempt), reason: "a new attempt's entry was taken".into() })),
    }
    failpoints::hit(failpoints::GROUP_QUEUED).map_err(Failed::Alone)?;
    let older = queued.map_err(Failed::Alone)?.iter().filter(|id| id.attempt < me.attempt && fresh(id)).count();
    match wait_turn(lake, &me, older, deadline).await.map_err(Failed::Alone)? {
        Some(taken) if taken.outcome == Outcome::Joined => follow(lake, &me, taken, table, staged.rows, deadline, skew).await,
        // Decided by recovery meanwhile (presumed dead): the writer follows that, as ever.
        Some(other) => Err(Failed::Alone(Error::Blocked(format!("operation {me} was decided {:?} by {} meanwhile", other.outcome, other.by)))),
        None => lead(lake, of, entry, staged, deadline, skew).await,
    }
}

/// Is queued attempt `id` recent enough to be waited for?
fn fresh(id: &AttemptId) -> bool {
    let started = uuid::Uuid::parse_str(&id.attempt).ok().and_then(|u| u.get_timestamp()).map(|t| t.to_unix().0);
    started.is_some_and(|secs| secs + STALE.as_secs() >= Utc::now().timestamp().max(0) as u64)
}

/// Wait our turn to lead (`older` entries were queued before ours), unless
/// someone decides us first: returns that decision.
async fn wait_turn(lake: &Lake, me: &AttemptId, older: usize, deadline: &Deadline) -> Result<Option<Decision>> {
    let turn = tokio::time::Instant::now() + TURN * (older as u32).min(MAX_RANK);
    let mut pause = FIRST_POLL;
    while tokio::time::Instant::now() < turn && deadline.remaining() > pause {
        tokio::time::sleep(pause.min(turn - tokio::time::Instant::now())).await;
        if let Some(decided) = sidecar::read_decision(lake, me).await? {
            return Ok(Some(decided));
        }
        pause = next_poll(pause);
    }
    Ok(None)
}

/// Wait for the group we joined (`taken` is our `joined` decision) to be
/// decided, resolving it if its writer is presumed dead.
async fn follow(lake: &Lake, me: &AttemptId, taken: Decision, table: &str, rows: u64, deadline: &Deadline, skew: Duration) -> std::result::Result<Committed, Failed> {
    let group = taken.group.clone().unwrap_or_else(|| AttemptId::new("?", "?"));
    failpoints::hit(failpoints::GROUP_MEMBER_WAITING).map_err(Failed::Left)?;
    let its_deadline = sidecar::read_intent(lake, &group).await.map_err(Failed::Left)?.map(|i| i.deadline);
    let mut pause = FIRST_POLL;
    loop {
        match sidecar::fate_of(lake, me, taken.clone()).await.map_err(Failed::Left)? {
            Fate::Forward(decided) => {
                let Some(&version) = decided.versions.get(table) else {
                    return Err(Failed::Left(Error::Blocked(format!("group {group} of operation {me} was decided forward without table '{table}'"))));
                };
                return Ok(Committed { group, led: false, version, manifest: None, rows });
            }
            Fate::RolledBack => {
                return Err(Failed::RolledBack(Error::Blocked(format!(
                    "operation {me} joined group {group}, which was rolled back or left it out: nothing of it is published; deliver its sources again"
                ))));
            }
            Fate::InGroup(_) | Fate::Undecided => {}
        }
        if its_deadline.is_some_and(|d| Utc::now() >= presumed_dead_at(d, skew))
            && let Action::Refused { reason } = Box::pin(recover::resolve_attempt(lake, &group, skew, deadline)).await.map_err(Failed::Left)?
        {
            return Err(Failed::Left(Error::Blocked(format!("group {group} of operation {me} died and recovery refused it: {reason}"))));
        }
        if deadline.remaining() <= pause {
            return Err(Failed::Left(Error::Blocked(format!(
                "operation {me} joined group {group}, which was not decided before this worker's deadline: its intent and \
                 claims stay, and `sluice recover` finishes it once the group is decided (a redelivery waits for that, and never ingests twice)"
            ))));
        }
        tokio::time::sleep(pause).await;
        pause = next_poll(pause);
    }
}

/// Lead a group: its intent, our own take, then takes of every entry queued
/// on the table, then one commit of all their rows, then the group's decision.
async fn lead(lake: &Lake, of: &Intent, own: Entry, staged: Appended, deadline: &Deadline, skew: Duration) -> std::result::Result<Committed, Failed> {
    let member = &own.id();
    let table = own.table.as_str();
    let start_pin = of.tables[table].start_pin.expect("a group member appends to a published table");
    let group = AttemptId::new(&format!("group-{}", uuid::Uuid::new_v4().simple()), &uuid::Uuid::now_v7().to_string());
    deadline.check("writing a group's intent").map_err(Failed::Alone)?;
    // Its leader's table settings, sources (so a publish by the group's
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
    // Until we are bound, the group has no effect: it goes if we do not lead it.
    if let Err(e) = failpoints::hit(failpoints::GROUP_AFTER_INTENT) {
        drop_unused(lake, &group).await;
        return Err(Failed::Alone(e));
    }
    let take = Decision { group: Some(group.clone()), ..Decision::new(&member.op, &member.attempt, &group.attempt, Outcome::Joined, "group", BTreeMap::new()) };
    let (taken, queued) = futures::join!(sidecar::decide(lake, &take), queue::list(lake, table));
    match taken {
        Ok(Created::Mine) => {}
        // Another leader took us first: our rows ride in its group.
        Ok(Created::Theirs(theirs)) if theirs.outcome == Outcome::Joined => {
            drop_unused(lake, &group).await;
            return follow(lake, member, theirs, table, own.rows, deadline, skew).await;
        }
        // Decided by recovery meanwhile (presumed dead): the member follows that, as ever.
        Ok(Created::Theirs(theirs)) => {
            drop_unused(lake, &group).await;
            return Err(Failed::Alone(Error::Blocked(format!("operation {member} was decided {:?} by {} meanwhile", theirs.outcome, theirs.by))));
        }
        Ok(Created::Gone) => return Err(Failed::Left(Error::Blocked(format!("operation {member}: joining group {group} could not be confirmed; `sluice recover` finishes both")))),
        Err(e) => return Err(Failed::Left(e)),
    }
    let Appended { ds, read_version, fragments, rows } = staged;
    let give_up = |e: Error| give_up(lake, member, &group, (table, start_pin), e, rows);
    // Bound, with nothing committed: a failure now rolls the group back.
    if let Err(e) = failpoints::hit(failpoints::GROUP_AFTER_SELF_TAKE) {
        return give_up(e).await;
    }
    let others: Vec<AttemptId> = match queued {
        Ok(ids) => ids.into_iter().filter(|id| id != member).take(MAX_MEMBERS - 1).collect(),
        Err(e) => {
            tracing::warn!(table, error = %e, "could not list the queue; the group commits its leader's rows alone");
            Vec::new()
        }
    };
    let joined = take_all(lake, &group, table, &others).await;
    let checked = failpoints::hit(failpoints::GROUP_AFTER_TAKES)
        .and_then(|()| deadline.check("a group's Lance commit"))
        .and_then(|()| failpoints::hit(failpoints::GROUP_COMMIT_CHECKED));
    if let Err(e) = checked {
        return give_up(e).await;
    }
    // Lance numbers fragments with id 0 at commit; any other would be kept as is.
    assert!(fragments.iter().all(|f| f.id == 0), "staged fragments carry no id before their commit");
    let members: Vec<AttemptId> = std::iter::once(member.clone()).chain(joined.iter().map(Entry::id)).collect();
    let mut sources: Vec<PublishedSource> = Vec::new();
    for e in std::iter::once(&own).chain(&joined) {
        let room = MAX_GROUP_SOURCES.saturating_sub(sources.len());
        sources.extend(e.sources.iter().take(room).map(|s| PublishedSource { op: Some(e.op.clone()), ..s.clone() }));
    }
    // Conflicts are checked from the oldest version any member staged on.
    let read_version = joined.iter().map(|e| e.read_version).fold(read_version, u64::min);
    let all = fragments.into_iter().chain(joined.into_iter().flat_map(|e| e.fragments)).collect();
    let mut txn = Transaction::new(read_version, Operation::Append { fragments: all }, None);
    txn.transaction_properties = Some(Arc::new(sidecar::group_properties(&group, &members)));
    // The taken entries served their purpose: withdrawn while Lance commits.
    let withdraw = futures::future::join_all(members[1..].iter().map(|id| queue::withdraw(lake, table, id)));
    let (committed, withdrawn) = futures::join!(deadline.bound(CommitBuilder::new(ds)).execute(txn), withdraw);
    if let Some(e) = withdrawn.into_iter().find_map(|r| r.err()) {
        tracing::warn!(table, error = %e, "could not withdraw a taken queue entry; cleanup removes it");
    }
    let (version, manifest) = match committed {
        Ok(ds) => (ds.version().version, LanceManifest::of(&ds)),
        Err(e) if stage::lost(&e) => return give_up(Error::lance(table, e)).await,
        Err(e) => match fence::committed_by(lake, table, start_pin, &group.attempt).await.map_err(Failed::Left)? {
            Some(version) => (version, None),
            None => return give_up(Error::lance(table, e)).await,
        },
    };
    failpoints::hit(failpoints::GROUP_AFTER_COMMIT).map_err(Failed::Left)?;
    let forward = Decision {
        members: Some(members),
        sources,
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
    Ok(Committed { group, led: true, version, manifest, rows })
}

/// Bind every queued attempt in `others` to `group`, create-only, reading
/// its entry alongside. A member is one whose take is ours **and** whose
/// entry was read (a take whose entry is gone binds an attempt the group
/// leaves out: its fate is rolled back). Never fails: an attempt not taken
/// for any reason is simply not a member.
async fn take_all(lake: &Lake, group: &AttemptId, table: &str, others: &[AttemptId]) -> Vec<Entry> {
    use futures::StreamExt;
    let takes: Vec<_> = others.iter().map(|id| take(lake, group, table, id)).collect();
    let taken: Vec<Option<Entry>> = futures::stream::iter(takes).buffer_unordered(TAKES_AT_ONCE).collect().await;
    taken.into_iter().flatten().collect()
}

async fn take(lake: &Lake, group: &AttemptId, table: &str, id: &AttemptId) -> Option<Entry> {
    let take = Decision { group: Some(group.clone()), ..Decision::new(&id.op, &id.attempt, &group.attempt, Outcome::Joined, "group", BTreeMap::new()) };
    match futures::join!(sidecar::decide(lake, &take), queue::read(lake, table, id)) {
        // Uncommitted fragments only (the review's F8): Lance keeps any id it is given.
        (Ok(Created::Mine), Ok(Some(e))) if e.id() == *id && e.table == table && e.fragments.iter().all(|f| f.id == 0) => Some(e),
        (Ok(Created::Mine), entry) => {
            tracing::warn!(table, attempt = %id, ?entry, "took a queued attempt whose entry could not be read; the group leaves it out");
            None
        }
        _ => None,
    }
}

/// Remove the intent of a group that bound nobody (we did not lead it).
async fn drop_unused(lake: &Lake, group: &AttemptId) {
    if let Err(cleanup) = sidecar::delete_intent(lake, group).await {
        tracing::warn!(error = %cleanup, "could not remove an unused group's intent; recovery rolls it back");
    }
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
            return Ok(Committed { group: group.clone(), led: true, version: theirs.versions[table], manifest: None, rows });
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
