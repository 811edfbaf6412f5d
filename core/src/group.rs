//! Group commit, the writing side (docs/PROTOCOL.md, "Group commits").
//!
//! A contended writer offers its staged rows in the table's queue
//! (`queue.rs`), writes beside it the intent of the group it would lead,
//! and waits in line. The first in line leads: a group is an attempt G of
//! its own, with its intent (kind `group`), then the leader bound to it
//! create-only (`joined(G)`, its one decision), then every queued writer it
//! can bind the same way, then one Lance commit carrying the members' staged
//! fragments (tagged with them), then G's forward decision naming that commit
//! and its members, then the publish. A writer taken into someone's group
//! waits for the group's decision and then for its publish. A writer comes
//! here once Lance proves its own commit lost to other writers' (`ingest.rs`),
//! or at once under a test knob ([`failpoints::contended`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use lance::dataset::CommitBuilder;
use lance::dataset::transaction::{Operation, Transaction};

use crate::deadline::{self, Deadline, presumed_dead_at};
use crate::error::Error;
use crate::failpoints;
use crate::fence;
use crate::known_manifest::{LanceManifest, ListAhead};
use crate::manifest::{self, Manifest, PublishedSource};
use crate::lake::{Created, Lake};
use crate::queue::{self, Entry};
use crate::recover::{self, Action};
use crate::sidecar::{self, AttemptId, Decision, Fate, Intent, Outcome};
use crate::stage::{self, Appended};

/// How a group commit failed, and so what its member still owns.
#[derive(Debug)]
pub(crate) enum Failed {
    /// Before the member joined: its fate is its own, and the group bound
    /// nobody (its unused intent is removed, or recovery rolls it back).
    Alone(Error),
    /// The group was rolled back by its own writer and nothing of it stands:
    /// the member releases its claims and ends.
    RolledBack(Error),
    /// Anything else: the intents stay, and recovery finishes both.
    Left(Error),
    /// Not a group's at all: before any group took the writer, a vetter
    /// decided it forward at its own commit (one Lance proved lost, whose PUT
    /// landed after all). The writer publishes that commit as ever.
    OwnCommit(Decision),
}

/// A group commit decided forward, with this writer's rows in it.
pub(crate) struct Committed {
    pub group: AttemptId,
    /// This writer led the group: its intent is this writer's to remove.
    pub led: bool,
    /// When the group's writer is presumed dead (a member stops waiting for its publish).
    pub lives_until: Option<DateTime<Utc>>,
    pub version: u64,
    pub manifest: Option<LanceManifest>,
    pub rows: u64,
    /// The members' sources, as the group's decision names them (a publish lists them).
    pub sources: Vec<PublishedSource>,
    /// The members the group's decision names, its leader first (for a
    /// leader: whose intents it removes once it published them).
    pub members: Vec<AttemptId>,
    /// Spare groups (see [`commit`]) whose intents go with this writer's
    /// finish: for a leader, those its members would have led (removed with
    /// their intents); for a member, its own (removed only if it finishes
    /// itself, its leader gone).
    pub spares: Vec<AttemptId>,
}

/// Lance's attempts at a groupable writer's own commit before it goes to the
/// queue, where one commit carries many: one. A rebase would first sleep
/// Lance's randomized backoff (up to three times a commit's own latency,
/// then more), which under contention costs more than the queue.
pub(crate) const LONE_ATTEMPTS: u32 = 1;
/// Members one group takes at most (its leader included).
const MAX_MEMBERS: usize = 64;
/// Sources a group's decision names at most (so that a publish lists them).
const MAX_GROUP_SOURCES: usize = 1024;
/// Takes (with their entry reads) in flight at once: a full group's, so
/// that its takes cost one round trip.
const TAKES_AT_ONCE: usize = MAX_MEMBERS - 1;
/// How long a queued writer waits in line at most before it leads all the
/// same: a group in flight is decided well within it, so only a writer ahead
/// that died or stalls holds the line this long.
const MAX_WAIT: Duration = Duration::from_secs(2);
/// Listings of the queue while in line: the first pause, growing by half up
/// to this (our decision is read every [`FIRST_POLL`] meanwhile: a GET, cheap
/// beside a LIST, and a take is what ends most waits).
const LAST_LINE_POLL: Duration = Duration::from_millis(100);
/// Entries written longer ago than this are neither waited for nor taken: a
/// live writer leaves the line within [`MAX_WAIT`] (it leads, or a group
/// took it and withdraws it once decided), so an old entry's owner is gone or
/// stuck, or its group died in flight (cleanup removes it once it is decided).
const STALE: Duration = Duration::from_secs(10);
/// A leader with less time left than this takes nobody else: members bound to
/// a group that cannot commit in time would all be delivered again.
const TAKE_MARGIN: Duration = Duration::from_secs(5);
/// A member with less time left than this publishes its group's commit
/// itself rather than wait for its leader's publish.
const SELF_PUBLISH_MARGIN: Duration = Duration::from_secs(5);
/// Polls of a decision or a manifest: the first pause, growing by half up
/// to the last; a member's stays at [`QUICK_POLL`] for as long as its group
/// should take to decide and publish (well within [`MAX_WAIT`]): a round
/// trip's worth, so that it sees its group's steps within about one more.
const FIRST_POLL: Duration = Duration::from_millis(20);
const QUICK_POLL: Duration = Duration::from_millis(20);
const LAST_POLL: Duration = Duration::from_millis(250);
fn next_poll(pause: Duration, last: Duration) -> Duration {
    (pause * 3 / 2).min(last)
}
fn member_poll(pause: Duration, since: tokio::time::Instant) -> Duration {
    next_poll(pause, if since.elapsed() < MAX_WAIT { QUICK_POLL } else { LAST_POLL })
}

/// Commit `staged` (an append onto the one table of intent `of`) in a
/// group: offer it in the table's queue; if another writer's group takes it
/// meanwhile, wait for that group's outcome, else lead a group of its own,
/// taking every entry queued by then.
/// `sources` are those the writer ingests, for the group's decision;
/// `ahead` answers its Lance commit's listing if we lead.
pub(crate) async fn commit(lake: &Lake, of: &Intent, sources: Vec<PublishedSource>, (staged, ahead): (Appended, &ListAhead), deadline: &Deadline, skew: Duration) -> std::result::Result<Committed, Failed> {
    let me = AttemptId::new(&of.op, &of.attempt);
    let table = of.tables.keys().next().expect("a group member appends to one table");
    deadline.check("offering rows to a group").map_err(Failed::Alone)?;
    // The group we would lead: its intent goes beside our offer, so that
    // whoever leads has one round trip fewer to its commit. It binds nobody
    // until we lead it; spare (another leader took us), its leader removes it
    // once published, else we do (recovery rolls back one left behind).
    let (group, group_intent) = group_of(of);
    let entry = Entry {
        op: me.op.clone(),
        attempt: me.attempt.clone(),
        table: table.clone(),
        read_version: staged.read_version,
        fragments: staged.fragments.clone(),
        sources,
        deadline: of.deadline,
        spare_group: Some(group.clone()),
    };
    let (offered, intended) = futures::join!(queue::offer(lake, &entry), sidecar::create_intent(lake, &group_intent));
    let unless_queued = match offered {
        // Gone: refused, then not there: a leader took us and withdrew it.
        Ok(Created::Mine | Created::Gone) => failpoints::hit(failpoints::GROUP_QUEUED),
        Ok(Created::Theirs(e)) => Err(Error::Corrupt { what: "queue entry", path: format!("{table}/{}", e.attempt), reason: "a new attempt's entry was taken".into() }),
        Err(e) => Err(e),
    };
    if let Err(e) = unless_queued {
        drop_unused(lake, &group).await;
        return Err(Failed::Alone(e));
    }
    tracing::debug!(table, op = %me, "queued for a group commit");
    // Who is ahead of us in line: listed once our entry is there, so that of
    // two writers queueing at once, the later one's listing shows the earlier.
    let listed = queue::list(lake, table).await;
    let waited = wait_in_line(lake, table, &me, listed, deadline).await;
    tracing::debug!(table, op = %me, taken = ?waited.as_ref().and_then(|d| d.group.as_ref()).map(ToString::to_string), "left the line");
    let not_ours = match waited {
        None => return lead(lake, (&group, group_intent, intended.err()), entry, (staged, ahead), deadline, skew).await,
        Some(taken) if taken.outcome == Outcome::Joined => {
            let followed = follow(lake, &me, taken, table, staged.rows, deadline, skew).await;
            // Our group is spare: our leader removes its intent with ours
            // once published (or we do, if we publish ourselves).
            if let Ok(c) = followed {
                return Ok(Committed { spares: vec![group], ..c });
            }
            followed
        }
        Some(own) if own.outcome == Outcome::Forward => Err(Failed::OwnCommit(own)),
        // Decided by recovery meanwhile (presumed dead): the writer follows that, as ever.
        Some(other) => Err(Failed::Alone(Error::Blocked(format!("operation {me} was decided {:?} by {} meanwhile", other.outcome, other.by)))),
    };
    drop_unused(lake, &group).await;
    not_ours
}

/// The group `of`'s writer would lead, and its intent: its writer's table
/// settings and deadline; no sources (it claims none: its members' are in
/// their own intents, and in its decision).
fn group_of(of: &Intent) -> (AttemptId, Intent) {
    let group = AttemptId::new(&format!("group-{}", uuid::Uuid::new_v4().simple()), &uuid::Uuid::now_v7().to_string());
    let intent = Intent {
        op: group.op.clone(),
        attempt: group.attempt.clone(),
        kind: sidecar::KIND_GROUP.into(),
        started_at: Utc::now(),
        worker: sidecar::worker_name(),
        sources: Vec::new(),
        ..of.clone()
    };
    (group, intent)
}

/// The entries of `listed` written recently enough to be waited for or
/// taken, by the store's clock where `listed` shows our own entry (`me`),
/// else by ours.
fn fresh(listed: Vec<(AttemptId, DateTime<Utc>)>, me: &AttemptId) -> impl Iterator<Item = (AttemptId, DateTime<Utc>)> {
    let now = listed.iter().find(|(id, _)| id == me).map_or_else(Utc::now, |(_, written)| *written);
    let since = deadline::earlier(now, STALE);
    listed.into_iter().filter(move |(_, written)| *written >= since)
}

/// The line's order: when the store wrote an entry, then its attempt (one
/// order every writer computes alike from the same listing).
fn ahead((a, a_at): &(AttemptId, DateTime<Utc>), (b, b_at): &(AttemptId, DateTime<Utc>)) -> bool {
    (a_at, &a.attempt, &a.op) < (b_at, &b.attempt, &b.op)
}

/// Wait in line behind every fresh entry ahead of ours: those of a group in
/// flight (its leader withdraws them beside its decision) and the writers
/// queued before us (each leads or is taken in turn), so that one group
/// commits at a time and the next gathers everyone who queued meanwhile.
/// `listed` is the listing taken once our offer landed. We read our
/// decision (a GET) [`FIRST_POLL`] apart, and list the queue alongside at a
/// slower, growing pace; a writer taken stops listing at once, so only
/// writers still in line pay for listings. Returns our decision once there
/// is one (a group took us: we follow it); `None` once nobody is ahead of
/// us, or after [`MAX_WAIT`]: we lead. The line is liveness only: every
/// take is create-only, so leading beside another group costs speed, never
/// safety (and leading finds any decision made on us meanwhile).
async fn wait_in_line(lake: &Lake, table: &str, me: &AttemptId, listed: Result<Vec<(AttemptId, DateTime<Utc>)>, Error>, deadline: &Deadline) -> Option<Decision> {
    let until = tokio::time::Instant::now() + MAX_WAIT;
    let (mut listed, mut list_pause, mut warned) = (Some(listed), FIRST_POLL, false);
    let mut list_at = tokio::time::Instant::now() + list_pause;
    loop {
        match listed.take() {
            Some(Ok(listed)) => {
                let mine = listed.iter().find(|(id, _)| id == me).cloned();
                let mut others = fresh(listed, me).filter(|(id, _)| id != me);
                let nobody_ahead = match &mine {
                    // Gone (taken, and withdrawn), and no decision read: lead, and find out.
                    None => true,
                    Some(mine) => !others.any(|e| ahead(&e, mine)),
                };
                if nobody_ahead {
                    return None;
                }
            }
            Some(Err(e)) => tracing::warn!(table, error = %e, "could not list the queue; waiting on"),
            None => {}
        }
        if tokio::time::Instant::now() >= until || deadline.remaining() <= FIRST_POLL {
            return None;
        }
        tokio::time::sleep_until(list_at.min(tokio::time::Instant::now() + FIRST_POLL)).await;
        let list = tokio::time::Instant::now() >= list_at;
        let decided;
        (decided, listed) = futures::join!(sidecar::read_decision(lake, me), async {
            match list {
                true => Some(queue::list(lake, table).await),
                false => None,
            }
        });
        if list {
            list_pause = next_poll(list_pause, LAST_LINE_POLL);
            list_at = tokio::time::Instant::now() + list_pause;
        }
        match decided {
            Ok(Some(decided)) => return Some(decided),
            Ok(None) => {}
            Err(e) if !warned => {
                warned = true;
                tracing::warn!(table, error = %e, "could not read our decision while in line; waiting on");
            }
            Err(_) => {}
        }
    }
}

/// Wait for the group we joined (`taken` is our `joined` decision) to be
/// decided, resolving it if its writer is presumed dead.
async fn follow(lake: &Lake, me: &AttemptId, taken: Decision, table: &str, rows: u64, deadline: &Deadline, skew: Duration) -> std::result::Result<Committed, Failed> {
    let Some(group) = taken.group.clone() else {
        return Err(Failed::Left(Error::Corrupt { what: "decision", path: me.to_string(), reason: "it joined a group but names none".into() }));
    };
    failpoints::hit(failpoints::GROUP_MEMBER_WAITING).map_err(Failed::Left)?;
    let mut lives_until = None;
    let (mut pause, since) = (FIRST_POLL, tokio::time::Instant::now());
    loop {
        // Store errors are waited out (within our deadline); corruption is not.
        let (fate, intent) = futures::join!(sidecar::fate_of(lake, me, taken.clone()), async {
            match lives_until {
                None => sidecar::read_intent(lake, &group).await.map(|i| i.map(|i| i.deadline)),
                known => Ok(known),
            }
        });
        match intent {
            Ok(known) => lives_until = known,
            Err(e) => tracing::warn!(%group, error = %e, "could not read the group's intent; waiting on"),
        }
        match fate {
            Ok(Fate::Forward(decided)) => {
                let Some(&version) = decided.versions.get(table) else {
                    return Err(Failed::Left(Error::Blocked(format!("group {group} of operation {me} was decided forward without table '{table}'"))));
                };
                tracing::debug!(table, %group, op = %me, version, "our group was decided forward");
                let members = decided.members.unwrap_or_default();
                return Ok(Committed { group, led: false, lives_until, version, manifest: None, rows, sources: decided.sources, members, spares: Vec::new() });
            }
            Ok(Fate::RolledBack) => {
                return Err(Failed::RolledBack(Error::Blocked(format!(
                    "operation {me} joined group {group}, which was rolled back or left it out: nothing of it is published; deliver its sources again"
                ))));
            }
            Ok(Fate::InGroup(_) | Fate::Undecided) => {}
            Err(e @ Error::Corrupt { .. }) => return Err(Failed::Left(e)),
            Err(e) => tracing::warn!(%group, error = %e, "could not read the group's decision; waiting on"),
        }
        if lives_until.is_some_and(|d| Utc::now() >= presumed_dead_at(d, skew)) {
            match Box::pin(recover::resolve_attempt(lake, &group, skew, deadline)).await {
                Ok(Action::Refused { reason }) => {
                    return Err(Failed::Left(Error::Blocked(format!("group {group} of operation {me} died and recovery refused it: {reason}"))));
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(%group, error = %e, "could not resolve the dead group; waiting on"),
            }
        }
        if deadline.remaining() <= pause {
            return Err(Failed::Left(Error::Blocked(format!(
                "operation {me} joined group {group}, which was not decided before this worker's deadline: its intent and \
                 claims stay, and `sluice recover` finishes it once the group is decided (a redelivery waits for that, and never ingests twice)"
            ))));
        }
        tokio::time::sleep(pause).await;
        pause = member_poll(pause, since);
    }
}

/// A member's wait for its leader's publish of the group's commit (`c`, at
/// `table`), catching up from `base`: until a manifest shows it (pins never
/// go back), or the leader is gone or presumed dead with it unshown, or our
/// own deadline nears. Returns the manifest read that shows the commit
/// ([`manifest::catch_up_showing`]), else the latest read, and whether it
/// shows the commit (if not, the member publishes it itself, vetted).
pub(crate) async fn await_publish(lake: &Lake, c: &Committed, table: &str, base: Manifest, deadline: &Deadline, skew: Duration) -> (Manifest, bool) {
    let (mut latest, mut pause, since) = (base, FIRST_POLL, tokio::time::Instant::now());
    let shows = |m: &Manifest| m.tables.get(table).is_some_and(|p| p.version >= c.version);
    loop {
        let (caught_up, leading) = futures::join!(manifest::catch_up_showing(lake, latest.clone(), shows), sidecar::intent_exists(lake, &c.group));
        match caught_up {
            Ok(m) if shows(&m) => {
                tracing::debug!(table, group = %c.group, "our group's publish is shown");
                return (m, true);
            }
            Ok(m) => latest = m,
            Err(e) => tracing::warn!(table, error = %e, "could not read the latest manifest; waiting on"),
        }
        // The leader removes the group's intent only once it published (or
        // failed to): gone, or presumed dead, with the commit unshown, we publish.
        let alive = leading.unwrap_or(true) && c.lives_until.is_none_or(|d| Utc::now() < presumed_dead_at(d, skew));
        if !alive || deadline.remaining() <= SELF_PUBLISH_MARGIN {
            return (latest, false);
        }
        tokio::time::sleep(pause).await;
        pause = member_poll(pause, since);
    }
}

/// Lead `group` (whose `intent` went beside our offer; `unwritten`: that
/// write failed): our own take, then takes of every entry queued on the
/// table, then one commit of all their rows, then the group's decision.
async fn lead(lake: &Lake, (group, intent, unwritten): (&AttemptId, Intent, Option<Error>), own: Entry, (staged, ahead): (Appended, &ListAhead), deadline: &Deadline, skew: Duration) -> std::result::Result<Committed, Failed> {
    // Lance's latest version, asked beside our takes: a commit beat our
    // rows', so the group's commit would otherwise list the versions after them.
    ahead.start(Arc::clone(&staged.ds), &tokio::runtime::Handle::current());
    let member = &own.id();
    let table_name = own.table.clone();
    let table = table_name.as_str();
    let start_pin = intent.tables[table].start_pin.expect("a group member appends to a published table");
    // Its intent is durable before the group's first effect (our take).
    let ready = async {
        deadline.check("binding a writer to its group")?;
        if unwritten.is_some() {
            sidecar::create_intent(lake, &intent).await?;
        }
        // Until we are bound, the group has no effect: it goes if we do not lead it.
        failpoints::hit(failpoints::GROUP_AFTER_INTENT)
    };
    if let Err(e) = ready.await {
        // An intent that failed may have landed all the same: it binds nobody.
        drop_unused(lake, group).await;
        return Err(Failed::Alone(e));
    }
    let take = Decision { group: Some(group.clone()), ..Decision::new(&member.op, &member.attempt, &group.attempt, Outcome::Joined, "group", BTreeMap::new()) };
    let (taken, queued) = futures::join!(sidecar::decide(lake, &take), queue::list(lake, table));
    match taken {
        Ok(Created::Mine) => {}
        // Another leader took us first: our rows ride in its group.
        Ok(Created::Theirs(theirs)) if theirs.outcome == Outcome::Joined => {
            drop_unused(lake, group).await;
            return follow(lake, member, theirs, table, staged.rows, deadline, skew).await;
        }
        Ok(Created::Theirs(theirs)) if theirs.outcome == Outcome::Forward => {
            drop_unused(lake, group).await;
            return Err(Failed::OwnCommit(theirs));
        }
        // Decided by recovery meanwhile (presumed dead): the member follows that, as ever.
        Ok(Created::Theirs(theirs)) => {
            drop_unused(lake, group).await;
            return Err(Failed::Alone(Error::Blocked(format!("operation {member} was decided {:?} by {} meanwhile", theirs.outcome, theirs.by))));
        }
        Ok(Created::Gone) => return Err(Failed::Left(Error::Blocked(format!("operation {member}: joining group {group} could not be confirmed; `sluice recover` finishes both")))),
        Err(e) => return Err(Failed::Left(e)),
    }
    // Bound, with nothing committed: a failure now rolls the group back.
    if let Err(e) = failpoints::hit(failpoints::GROUP_AFTER_SELF_TAKE) {
        return give_up(lake, member, group, (table, start_pin), e, staged.rows, (vec![member.clone()], Vec::new())).await;
    }
    let others: Vec<AttemptId> = match queued {
        // Too late to commit others' rows in time: bind nobody else.
        _ if deadline.remaining() < TAKE_MARGIN => Vec::new(),
        Ok(listed) => behind_first(listed, member),
        Err(e) => {
            tracing::warn!(table, error = %e, "could not list the queue; the group commits its leader's rows alone");
            Vec::new()
        }
    };
    let joined = take_all(lake, group, table, &others).await;
    tracing::debug!(table, %group, leader = %member, members = joined.len() + 1, "leading a group");
    let members: Vec<AttemptId> = std::iter::once(member.clone()).chain(joined.iter().map(Entry::id)).collect();
    let committed = commit_taken(lake, group, (own, joined), &members, staged, start_pin, deadline).await;
    if let Err(Failed::Left(_)) = &committed {
        // G's fate is open, but its members are bound: their entries would
        // only hold the line (each member learns G's fate by following it).
        withdraw_all(lake, table, &members).await;
    }
    committed
}

/// The attempts to take from the queue as `listed` (ours is `member`):
/// those behind us in line first, then any ahead of us (a group in flight
/// took those already, unless their writers died or time out in line
/// beside us), at most [`MAX_MEMBERS`] in all with us.
fn behind_first(listed: Vec<(AttemptId, DateTime<Utc>)>, member: &AttemptId) -> Vec<AttemptId> {
    let mine = listed.iter().find(|(id, _)| id == member).cloned();
    let (ahead_of_us, behind): (Vec<_>, Vec<_>) =
        fresh(listed, member).filter(|(id, _)| id != member).partition(|e| mine.as_ref().is_some_and(|m| ahead(e, m)));
    behind.into_iter().chain(ahead_of_us).map(|(id, _)| id).take(MAX_MEMBERS - 1).collect()
}

/// A group's steps once its takes are done: one Lance commit of the rows
/// of every member (the leader's entry and `staged` rows, then the entries it
/// took), then G's forward decision (or its roll-back).
async fn commit_taken(lake: &Lake, group: &AttemptId, (own, joined): (Entry, Vec<Entry>), members: &[AttemptId], staged: Appended, start_pin: u64, deadline: &Deadline) -> std::result::Result<Committed, Failed> {
    let (member, table) = (&members[0], own.table.as_str());
    let Appended { ds, read_version, fragments, rows } = staged;
    // A member's own group is spare: bound to ours, it can never bind anyone.
    let spares: Vec<AttemptId> = joined.iter().filter_map(|e| e.spare_group.clone()).filter(|g| g.op.starts_with("group-") && g != group).collect();
    let give_up = |e: Error| give_up(lake, member, group, (table, start_pin), e, rows, (members.to_vec(), spares.clone()));
    let checked = failpoints::hit(failpoints::GROUP_AFTER_TAKES)
        .and_then(|()| deadline.check("a group's Lance commit"))
        .and_then(|()| failpoints::hit(failpoints::GROUP_COMMIT_CHECKED));
    if let Err(e) = checked {
        return give_up(e).await;
    }
    // Lance numbers fragments with id 0 at commit; any other would be kept as is.
    assert!(fragments.iter().all(|f| f.id == 0), "staged fragments carry no id before their commit");
    let mut sources: Vec<PublishedSource> = Vec::new();
    for e in std::iter::once(&own).chain(&joined) {
        let room = MAX_GROUP_SOURCES.saturating_sub(sources.len());
        sources.extend(e.sources.iter().take(room).map(|s| PublishedSource { op: Some(e.op.clone()), ..s.clone() }));
    }
    // Conflicts are checked from the oldest version any member staged on.
    let read_version = joined.iter().map(|e| e.read_version).fold(read_version, u64::min);
    let all = fragments.into_iter().chain(joined.into_iter().flat_map(|e| e.fragments)).collect();
    let mut txn = Transaction::new(read_version, Operation::Append { fragments: all }, None);
    txn.transaction_properties = Some(Arc::new(sidecar::group_properties(group, members)));
    let committed = deadline.bound(CommitBuilder::new(ds)).execute(txn).await;
    let (version, manifest) = match committed {
        Ok(ds) => (ds.version().version, LanceManifest::of(&ds)),
        Err(e) if stage::lost(&e) => return give_up(Error::lance(table, e)).await,
        Err(e) => match fence::committed_by(lake, table, start_pin, &group.attempt).await.map_err(Failed::Left)? {
            Some(version) => (version, None),
            None => return give_up(Error::lance(table, e)).await,
        },
    };
    tracing::debug!(table, %group, version, "the group's Lance commit landed");
    failpoints::hit(failpoints::GROUP_AFTER_COMMIT).map_err(Failed::Left)?;
    let forward = Decision {
        members: Some(members.to_vec()),
        sources: sources.clone(),
        ..Decision::new(&group.op, &group.attempt, &group.attempt, Outcome::Forward, "writer", BTreeMap::from([(table.to_string(), version)]))
    };
    // The entries (ours too) held the line while the group was in flight;
    // they go beside its decision, and the next in line leads.
    let (decided, ()) = futures::join!(sidecar::decide(lake, &forward), withdraw_all(lake, table, members));
    let (version, manifest, sources, members) = match decided.map_err(Failed::Left)? {
        Created::Mine => (version, manifest, sources, members.to_vec()),
        // A vetter or recovery decided it first, from the same commit's tag.
        Created::Theirs(theirs) if names(&theirs, table, member) => {
            (theirs.versions[table], manifest.filter(|_| theirs.versions[table] == version), theirs.sources, theirs.members.unwrap_or_default())
        }
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
    Ok(Committed { group: group.clone(), led: true, lives_until: None, version, manifest, rows, sources, members, spares })
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
            let why = match entry {
                Ok(Some(_)) => "it is not an uncommitted append to this table".to_string(),
                Ok(None) => "it is gone".to_string(),
                Err(e) => e.to_string(),
            };
            tracing::warn!(table, attempt = %id, why, "took a queued attempt whose entry could not be used; the group leaves it out (it is delivered again)");
            None
        }
        _ => None,
    }
}

/// Withdraw the queue entries of attempts bound to a group: each served its
/// purpose once taken (one left behind is cleanup's).
async fn withdraw_all(lake: &Lake, table: &str, bound: &[AttemptId]) {
    if let Err(e) = queue::withdraw_all(lake, table, bound).await {
        tracing::warn!(table, error = %e, "could not withdraw a taken queue entry; cleanup removes it");
    }
}

/// A leader's last step once its publish shows the group's commit (`c`, on
/// `table`; we are `me`): remove the group's intent, every other member's
/// (each returned once it saw the publish, leaving its intent to us) and
/// their spare groups', and withdraw their entries again (in case that
/// failed beside the decision: a leftover fresh entry holds the line). What
/// fails is recovery's and cleanup's to finish.
pub(crate) async fn finish_led(lake: &Lake, c: &Committed, table: &str, me: &AttemptId) {
    assert!(c.led, "only a group's leader finishes it");
    let others: Vec<AttemptId> = c.members.iter().filter(|m| *m != me).cloned().collect();
    let intents = std::iter::once(&c.group).chain(&others).chain(&c.spares);
    let (removed, withdrawn) = futures::join!(sidecar::delete_intents(lake, intents), queue::withdraw_all(lake, table, &others));
    if let Err(e) = removed.and(withdrawn) {
        tracing::warn!(table, group = %c.group, error = %e, "could not remove the group's intent, or a member's intent or entry; recovery and cleanup finish them");
    }
}

/// A member's last step once it published its group's commit (`c`)
/// itself, its leader gone: remove its spare group's intent (its leader
/// would have). What fails is recovery's to finish.
pub(crate) async fn finish_member(lake: &Lake, c: &Committed) {
    assert!(!c.led, "a group's leader finishes with `finish_led`");
    if let Err(e) = sidecar::delete_intents(lake, c.spares.iter()).await {
        tracing::warn!(group = %c.group, error = %e, "could not remove our spare group's intent; recovery rolls it back");
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
async fn give_up(lake: &Lake, member: &AttemptId, group: &AttemptId, (table, start_pin): (&str, u64), error: Error, rows: u64, (bound, spares): (Vec<AttemptId>, Vec<AttemptId>)) -> std::result::Result<Committed, Failed> {
    failpoints::hit(failpoints::GROUP_BEFORE_GIVE_UP).map_err(Failed::Left)?;
    let decision = Decision::new(&group.op, &group.attempt, &group.attempt, Outcome::RollBack, "writer", BTreeMap::new());
    // The members' entries go beside it: they only held the line.
    let (decided, ()) = futures::join!(sidecar::decide(lake, &decision), withdraw_all(lake, table, &bound));
    match decided.map_err(Failed::Left)? {
        Created::Mine => {}
        Created::Theirs(theirs) if names(&theirs, table, member) => {
            tracing::warn!(table, %group, "the group's commit answered with an error but landed, and was decided forward");
            let version = theirs.versions[table];
            let members = theirs.members.unwrap_or_default();
            return Ok(Committed { group: group.clone(), led: true, lives_until: None, version, manifest: None, rows, sources: theirs.sources, members, spares });
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
