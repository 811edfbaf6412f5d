//! May a pin pass that commit? (docs/INVARIANTS.md 3 and 12.)
//!
//! A manifest pin that moves from `from` to `to` makes every Lance commit in
//! between visible. Each of them must be proven decided forward by durable
//! evidence, never assumed from its scope or from timing:
//!
//! - Lance's own bookkeeping (no rows) and recovery's `rollback` commits pass;
//! - a commit of attempt X passes when X's decision is `forward` *and names
//!   this very version* (any other commit of X on the table is a late
//!   duplicate); an undecided single-table X is decided forward on its behalf
//!   (create-only, so it cannot cross a roll-back); a multi-table X passes
//!   only once a manifest already shows it — so no publish shows half a load;
//! - a commit of a rolled-back attempt passes only with the commit that
//!   removes its rows, which the pin then includes; if nobody will remove it
//!   (it landed after its attempt's recovery finished) the caller removes it;
//! - an undecided commit waits for its attempt (bounded by the caller's
//!   deadline), and is resolved by recovery once its owner is presumed dead;
//! - a load decided forward but not yet shown is joined: the caller publishes
//!   all of its tables with its own, in one version;
//! - a compaction's rewrite, an index change or sluice's new columns pass
//!   (same rows; a new column is null in every one of them);
//! - anything else (no sluice tag, no decision and no audit record) is refused
//!   unless an operator adopted that commit (`sluice adopt`).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use futures::{StreamExt, TryStreamExt};
use lance::dataset::CommitBuilder;
use lance::dataset::transaction::{Operation, Transaction};
use lance::table::format::Fragment;

use crate::audit::{self, Verdict};
use crate::deadline::{self, Deadline};
use crate::error::{Error, Result};
use crate::lake::Lake;
use crate::manifest::{self, Manifest};
use crate::upsert_undo::{self, Undo};
use crate::sidecar::{self, AttemptId, Outcome, PROP_INTENT, PROP_MEMBERS, PROP_OP, PROP_REMOVES, PROP_SCOPE, SCOPE_COLUMNS, SCOPE_FENCE, SCOPE_GROUP, SCOPE_MULTI, SCOPE_ROLLBACK};

/// Budget for removing a writer's own late commit when it gives up (it is
/// fenced by its roll-back decision, so it may run past its deadline).
const LATE_REMOVAL: Duration = Duration::from_secs(30);
/// Versions a writer reads to learn whether its own commit landed.
const MAX_HISTORY: u64 = 100_000;
/// Longest pause between polls of another worker's progress.
pub(crate) const MAX_POLL: Duration = Duration::from_secs(1);
/// Lance transactions read at once while vetting a range of commits.
const READ_AHEAD: usize = 16;
/// Rolled-back upserts, each replacing the last one's rows, taken back in one removal.
const MAX_UNDO_CHAIN: usize = 8;
/// Versions read to learn what became of a rolled-back upsert's fragments.
const MAX_SINCE: u64 = 10_000;

/// What one call has read and need not read again: Lance transactions by
/// table and version (a version never changes once written), and the newest
/// manifest version (a publish after vetting starts from it, instead of
/// losing a race it could already see).
#[derive(Default)]
pub(crate) struct Seen {
    transactions: Mutex<HashMap<(String, u64), Option<Transaction>>>,
    newest: Mutex<Option<Manifest>>,
    /// The sources of other attempts' commits vetting passed (their decisions say).
    passed: Mutex<Vec<manifest::PublishedSource>>,
}

impl Seen {
    pub(crate) async fn transaction(&self, ds: &lance::Dataset, table: &str, version: u64) -> Result<Option<Transaction>> {
        let key = (table.to_string(), version);
        if let Some(txn) = self.transactions.lock().expect("seen poisoned").get(&key) {
            return Ok(txn.clone());
        }
        let txn = ds.read_version_transaction(version).await.map_err(|e| Error::lance(table, e))?.transaction;
        self.transactions.lock().expect("seen poisoned").insert(key, txn.clone());
        Ok(txn)
    }

    /// Vetting passes a commit `decision` sends forward: its sources become
    /// visible with the publish, which records them.
    fn pass(&self, decision: &sidecar::Decision) {
        let sources = decision.sources.iter().map(|s| manifest::PublishedSource { op: s.op.clone().or_else(|| Some(decision.op.clone())), ..s.clone() });
        manifest::add_sources(&mut self.passed.lock().expect("seen poisoned"), sources);
    }

    /// The sources of the commits passed so far.
    pub(crate) fn passed(&self) -> Vec<manifest::PublishedSource> {
        self.passed.lock().expect("seen poisoned").clone()
    }

    fn saw(&self, manifest: &Manifest) {
        let mut newest = self.newest.lock().expect("seen poisoned");
        if newest.as_ref().is_none_or(|n| n.version < manifest.version) {
            *newest = Some(manifest.clone());
        }
    }

    /// `base`, or the newest manifest read since if that is newer. Only a
    /// publish's own vetting asks (`recover::publishable_pins`, with a `Seen`
    /// of its own): a sweep's shared `Seen` records manifests nobody reads.
    pub(crate) fn newest_from(&self, base: Manifest) -> Manifest {
        match self.newest.lock().expect("seen poisoned").as_ref() {
            Some(newest) if newest.version > base.version => newest.clone(),
            _ => base,
        }
    }
}

/// What a Lance commit is, by its transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Tag {
    /// Lance's own bookkeeping: nothing anyone could see.
    NoRows,
    /// Recovery (or a writer) removing the rows of `0`'s commit at `1` (any of its commits if `None`).
    Removal(AttemptId, Option<u64>),
    /// A commit of attempt `0`, carrying rows of what `1` says.
    Op(AttemptId, Scope),
    /// The same rows, rearranged or indexed: a compaction's rewrite (it can
    /// only land on the fragments it read; Lance refuses it otherwise), an
    /// index change, or nullable columns sluice added (null in every row).
    /// It passes whatever became of its attempt — a late one included; so
    /// does another tool's. The attempt, if sluice's.
    Preserving(Option<AttemptId>),
    /// Not written by sluice.
    Foreign,
}

impl Tag {
    pub(crate) fn of(txn: Option<&Transaction>) -> Tag {
        let Some(txn) = txn else { return Tag::Foreign };
        let props = txn.transaction_properties.as_deref();
        let get = |k: &str| props.and_then(|p| p.get(k)).cloned();
        let ids = (get(PROP_OP), get(PROP_INTENT), get(PROP_SCOPE));
        // sluice's new columns keep every row as it was, plus nulls; another
        // tool's merge may rewrite data (`sluice adopt` decides on it).
        if preserves_rows(&txn.operation) || is_columns_merge(Some(txn)) {
            return Tag::Preserving(match ids {
                (Some(op), Some(attempt), _) => Some(AttemptId { op, attempt }),
                _ => None,
            });
        }
        if carries_no_rows(txn) {
            return Tag::NoRows;
        }
        let (Some(op), Some(intent), Some(scope)) = ids else { return Tag::Foreign };
        let id = AttemptId { op, attempt: intent };
        match scope.as_str() {
            SCOPE_ROLLBACK => Tag::Removal(id, get(PROP_REMOVES).and_then(|v| v.parse().ok())),
            SCOPE_MULTI => Tag::Op(id, Scope::Multi),
            SCOPE_GROUP => Tag::Op(id, Scope::Group(get(PROP_MEMBERS).and_then(|m| serde_json::from_str(&m).ok()))),
            _ => Tag::Op(id, Scope::Single),
        }
    }
}

/// Whose rows a commit of an attempt carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Its own, on one table.
    Single,
    /// Its own, on one table of a multi-table load.
    Multi,
    /// Its members' (a group commit), if its tag lists them readably.
    Group(Option<Vec<AttemptId>>),
}

/// What [`vet`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Vetted {
    /// The pin may move to this version.
    Pin(u64),
    /// Attempt `0` stands in the way and its owner is presumed dead: resolve it, then vet again.
    Expired(AttemptId),
    /// The commit at `version` belongs to rolled-back attempt `id` and nobody
    /// else will remove it: remove it ([`remove_commit`]), then vet again.
    Late { id: AttemptId, version: u64 },
    /// A commit no sluice decision covers (why): never published by guessing.
    Foreign(String),
    /// A load decided forward and not yet shown stands in the way: publish it
    /// with ours (all its tables at its decided commits), then vet again.
    Join(AttemptId),
}

/// What the evidence says of one commit of another attempt.
enum Standing {
    Forward,
    /// Shown by the latest manifest, whose pin on the table is this.
    Published(u64),
    /// Rolled back; `recovering` is its attempt's intent while it still exists
    /// (its recovery or its writer is removing what it found).
    RolledBack { recovering: Option<sidecar::Intent> },
    /// In flight and undecided: wait.
    Pending(sidecar::Intent),
    /// A load decided forward, not yet published: join it.
    Join,
    Unprovable(String),
}

/// May the pin of `table` move from `from` to `to` (the caller's commit)?
/// `by` is the caller's attempt (it may decide others' commits forward);
/// `None` for a dry run, which writes nothing and reports what it would do. Reads
/// nothing when `to` is the very next version. Waits (within `deadline`) for
/// live attempts; the pin may go past `to` to include the removal of a
/// rolled-back attempt's rows.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn vet(
    lake: &Lake,
    table: &str,
    (from, to): (u64, u64),
    by: Option<&str>,
    joined: &BTreeSet<AttemptId>,
    skew: Duration,
    deadline: &Deadline,
    seen: &Seen,
) -> Result<Vetted> {
    assert!(from < to, "vetting an empty range");
    if from + 1 == to {
        return Ok(Vetted::Pin(to));
    }
    // Commits a newer manifest already shows were vetted by whoever published
    // them. Lance's table is read alongside (one round trip, not two).
    let (published, ds) = futures::join!(latest_pin(lake, table, seen), lake.open_table(table, None));
    let from = from.max(published?.unwrap_or(0));
    if from >= to {
        return Ok(Vetted::Pin(to));
    }
    let ds = ds?;
    let mut txns = read_range(&ds, table, from + 1, to - 1, seen).await?;
    let mut to = to;
    let mut floor = from;
    let mut i = 0;
    'commits: while i < txns.len() {
        let (version, tag) = txns[i].clone();
        i += 1;
        let (id, scope) = match tag {
            _ if version <= floor => continue,
            // The pin passes a rolled-back commit only with its removal, so a
            // removal of a commit at or below the published pin is a second
            // one: a remover that stalled until the versions that would have
            // conflicted with it were cleaned. Taking away fragment ids again
            // changes nothing; putting deletions back may revive rows.
            Tag::Removal(of, Some(removes)) if removes <= from && puts_back(seen.transaction(&ds, table, version).await?.as_ref()) => {
                if sidecar::adopted(lake, table, version).await? {
                    continue;
                }
                return Ok(Vetted::Foreign(format!(
                    "table '{table}' version {version} repeats the roll-back of operation {of} at version {removes}, which \
                     version {from} or earlier already took back (its remover stalled past the retention floor); it may \
                     have put back rows deleted since. Compare the table at versions {version} and {}: accept it with \
                     `sluice adopt {table} --version {version}`, or repair the table by hand",
                    version - 1
                )));
            }
            Tag::NoRows | Tag::Removal(..) | Tag::Preserving(_) => continue,
            Tag::Foreign if sidecar::adopted(lake, table, version).await? => continue,
            Tag::Foreign => {
                return Ok(Vetted::Foreign(format!(
                    "table '{table}' version {version} was not written by a sluice operation; sluice will not publish rows \
                     it cannot attribute. If that commit is wanted, run `sluice adopt {table}`; else repair the table"
                )));
            }
            Tag::Op(id, _) if removed(&txns[i..], &id, version) => continue,
            // Our own other commits too: one commit per table is decided; any other is a late duplicate.
            Tag::Op(id, scope) => (id, scope),
        };
        let mut pause = Duration::from_millis(50);
        loop {
            match standing(lake, table, version, &id, &scope, by, joined, seen).await? {
                Standing::Forward => continue 'commits,
                Standing::Join => return Ok(Vetted::Join(id)),
                Standing::Published(pin) => {
                    floor = floor.max(pin);
                    continue 'commits;
                }
                Standing::RolledBack { recovering } => {
                    // Its removal may lie beyond `to`: the pin then moves on to it.
                    let head = ds.latest_version_id().await.map_err(|e| Error::lance(table, e))?;
                    if head > to {
                        let more = read_range(&ds, table, to + 1, head, seen).await?;
                        if let Some(at) = more.iter().position(|(_, t)| matches!(t, Tag::Removal(r, v) if *r == id && v.is_none_or(|v| v == version))) {
                            to = more[at].0;
                            txns.extend(more.into_iter().take(at + 1));
                            continue 'commits;
                        }
                    }
                    if sidecar::adopted(lake, table, version).await? {
                        continue 'commits;
                    }
                    match recovering {
                        None => return Ok(Vetted::Late { id, version }),
                        // Its remover died: recovery takes it over.
                        Some(intent) if Utc::now() >= deadline::presumed_dead_at(intent.deadline, skew) => return Ok(Vetted::Expired(id)),
                        Some(_) => {}
                    }
                }
                Standing::Pending(intent) => {
                    if Utc::now() >= deadline::presumed_dead_at(intent.deadline, skew) {
                        return Ok(Vetted::Expired(id));
                    }
                }
                Standing::Unprovable(_) if sidecar::adopted(lake, table, version).await? => continue 'commits,
                Standing::Unprovable(reason) => return Ok(Vetted::Foreign(reason)),
            }
            // A dry run reports instead of waiting.
            if by.is_none() || deadline.remaining() <= pause {
                return Err(Error::Blocked(format!(
                    "table '{table}' version {version} belongs to operation {id}, still undecided at this worker's \
                     deadline; retry later (`sluice recover` resolves it once its own deadline has passed)"
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_POLL);
        }
    }
    Ok(Vetted::Pin(to))
}

async fn latest_pin(lake: &Lake, table: &str, seen: &Seen) -> Result<Option<u64>> {
    let latest = manifest::read_latest(lake).await?;
    latest.iter().for_each(|m| seen.saw(m));
    Ok(latest.and_then(|m| m.tables.get(table).map(|p| p.version)))
}

/// The evidence on the commit of `id` at `version`.
///
/// A single-table attempt whose commit landed can always go forward (its
/// rows are whole, its sources claimed), so a vetter that finds it undecided
/// decides it forward on its behalf — create-only, racing the attempt's own
/// writer (who decides the same) and recovery (who may have decided roll_back
/// before the commit landed): whoever wins, everyone follows. So no writer
/// waits on another single-table writer, and none passes a commit recovery
/// rolled back. A group's commit is decided forward the same way, naming the
/// members its tag lists: each won its place in it create-only before the
/// commit (`Outcome::Joined`), so each shares its fate. A commit of a member
/// itself is a stray (its rows ride in the group's): never published, and
/// removed at once. A multi-table attempt's commit is only decided by its own
/// writer or recovery (the vetter cannot know its other tables): undecided, it
/// is waited for.
#[allow(clippy::too_many_arguments)]
async fn standing(lake: &Lake, table: &str, version: u64, id: &AttemptId, scope: &Scope, by: Option<&str>, joined: &BTreeSet<AttemptId>, seen: &Seen) -> Result<Standing> {
    let unattributed = |why: &str| {
        Standing::Unprovable(format!(
            "table '{table}' version {version} is a commit of group {id}, but {why}; sluice will not publish rows it \
             cannot attribute. Run `sluice adopt {table}` if they are wanted; else repair the table"
        ))
    };
    let no_members = || unattributed("it lists no members readably");
    let multi = *scope == Scope::Multi;
    let mut decision = sidecar::read_decision(lake, id).await?;
    if decision.is_none() {
        if let Some(intent) = sidecar::read_intent(lake, id).await? {
            let members = match scope {
                Scope::Multi => return Ok(Standing::Pending(intent)),
                Scope::Single => None,
                Scope::Group(Some(members)) => match sidecar::unbound_member(lake, id, members).await? {
                    Some(why) => return Ok(unattributed(&why)),
                    None => Some(members.clone()),
                },
                Scope::Group(None) => return Ok(no_members()),
            };
            match by {
                Some(by) => decision = Some(decide_for(lake, id, table, version, by, members).await?),
                // A dry run: it would decide it forward (or follow the winner).
                None => return Ok(Standing::Forward),
            }
        } else {
            // Decided before its intent went? Read again, then the audit record
            // (cleanup removes decisions before audit records).
            decision = sidecar::read_decision(lake, id).await?;
        }
    }
    let forward = match &decision {
        Some(d) if d.outcome == Outcome::RollBack => {
            return Ok(Standing::RolledBack { recovering: sidecar::read_intent(lake, id).await? });
        }
        // Published, it would read to every member as rolled back.
        Some(d) if matches!(scope, Scope::Group(_)) && d.members.is_none() && d.forwards(table, version) => return Ok(no_members()),
        Some(d) => d.forwards(table, version),
        None => match audit::read(lake, &id.op, &id.attempt).await? {
            Some(rec) if rec.verdict == Verdict::RolledBack => return Ok(Standing::RolledBack { recovering: None }),
            Some(rec) => rec.tables.get(table).and_then(|t| t.committed) == Some(version),
            None => {
                return Ok(Standing::Unprovable(format!(
                    "table '{table}' version {version} belongs to operation {id}, which left no decision and no audit record; \
                     sluice will not publish it. If those rows are wanted, run `sluice adopt {table}`; else repair the table"
                )));
            }
        },
    };
    if !forward {
        // Another commit of a forward-decided attempt (a late duplicate), or
        // a group member's own commit (its rows ride in its group's).
        return Ok(Standing::RolledBack { recovering: None });
    }
    if !multi || joined.contains(id) {
        if let Some(d) = &decision {
            seen.pass(d);
        }
        return Ok(Standing::Forward);
    }
    // A load is shown whole or not at all: pass it only once a manifest shows it.
    if let Some(pin) = latest_pin(lake, table, seen).await?
        && pin >= version
    {
        return Ok(Standing::Published(pin));
    }
    match sidecar::read_intent(lake, id).await? {
        Some(_) => Ok(Standing::Join),
        None => match latest_pin(lake, table, seen).await? {
            Some(pin) if pin >= version => Ok(Standing::Published(pin)),
            _ => Ok(Standing::Unprovable(format!(
                "table '{table}' version {version} belongs to load {id}, decided forward but finished without publishing it; \
                 run `sluice recover`, and report this"
            ))),
        },
    }
}

/// Decide single-table attempt `id` forward with its commit at `version`
/// (a group's with its `members`), on its behalf; returns the decision that
/// stands (ours, or the one that won).
/// It names no sources: the intent lists every source asked for, some of
/// them held by others, and only the writer knows which it ingested.
async fn decide_for(lake: &Lake, id: &AttemptId, table: &str, version: u64, by: &str, members: Option<Vec<AttemptId>>) -> Result<sidecar::Decision> {
    let versions = std::collections::BTreeMap::from([(table.to_string(), version)]);
    let decision = sidecar::Decision { members, ..sidecar::Decision::new(&id.op, &id.attempt, by, Outcome::Forward, "vetter", versions) };
    match sidecar::decide(lake, &decision).await? {
        crate::lake::Created::Mine => Ok(decision),
        crate::lake::Created::Theirs(theirs) => Ok(theirs),
        crate::lake::Created::Gone => Err(Error::Blocked(format!("the decision of operation {id} vanished while being read"))),
    }
}

/// Is the commit of `id` at `version` removed by a rollback commit in `txns`?
fn removed(txns: &[(u64, Tag)], id: &AttemptId, version: u64) -> bool {
    txns.iter().any(|(_, t)| matches!(t, Tag::Removal(r, v) if r == id && v.is_none_or(|v| v == version)))
}

async fn read_range(ds: &lance::Dataset, table: &str, from: u64, to: u64, seen: &Seen) -> Result<Vec<(u64, Tag)>> {
    // Independent reads: READ_AHEAD at once (each is two round trips on S3).
    let txns: Vec<Option<Transaction>> =
        futures::stream::iter(from..=to).map(|version| seen.transaction(ds, table, version)).buffered(READ_AHEAD).try_collect().await?;
    let mut out = Vec::with_capacity(txns.len());
    for (version, txn) in (from..=to).zip(txns) {
        let tag = match Tag::of(txn.as_ref()) {
            // New columns that did not land on the state they were built on
            // are vetted like any commit of their attempt (and removed if it
            // was rolled back).
            Tag::Preserving(Some(id)) if is_columns_merge(txn.as_ref()) && !lands_as_built(ds, table, version).await? => Tag::Op(id, Scope::Single),
            tag => tag,
        };
        out.push((version, tag));
    }
    Ok(out)
}

/// A sluice schema change: a merge that adds columns to every fragment as it was.
fn is_columns_merge(txn: Option<&Transaction>) -> bool {
    txn.is_some_and(|t| {
        matches!(t.operation, Operation::Merge { .. }) && t.transaction_properties.as_deref().and_then(|p| p.get(PROP_SCOPE)).map(String::as_str) == Some(SCOPE_COLUMNS)
    })
}

/// Does the merge at `version` keep exactly the fragments of the version it
/// landed on? One built on an older state that landed late (its worker
/// stalled past recovery, and cleanup took the versions Lance would have
/// checked it against) carries that state's fragments: rows removed since
/// would come back.
async fn lands_as_built(ds: &lance::Dataset, table: &str, version: u64) -> Result<bool> {
    let at = |v: u64| async move { ds.checkout_version(v).await.map_err(|e| Error::lance(table, e)) };
    let (after, before) = (at(version).await?, at(version - 1).await?);
    Ok(same_fragments(after.fragments(), before.fragments()))
}

/// The same fragments, each with the same files and deletions.
fn same_fragments(a: &[Fragment], b: &[Fragment]) -> bool {
    fn by_id(fs: &[Fragment]) -> std::collections::BTreeMap<u64, (&Vec<lance::table::format::DataFile>, &Option<lance::table::format::DeletionFile>)> {
        fs.iter().map(|f| (f.id, (&f.files, &f.deletion_file))).collect()
    }
    by_id(a) == by_id(b)
}

/// The commits of attempt `id` on `table` after version `after`, and the
/// removals of them, as the table's history shows them (not as any error
/// suggested). At most `max_scan` versions are read.
pub(crate) async fn commits_of(lake: &Lake, table: &str, after: u64, id: &AttemptId, seen: &Seen, max_scan: u64) -> Result<Option<History>> {
    let ds = match lake.open_table(table, None).await {
        Ok(ds) => ds,
        Err(Error::Lance { source: lance::Error::DatasetNotFound { .. } | lance::Error::NotFound { .. }, .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let head = ds.version().version;
    if head.saturating_sub(after) > max_scan {
        return Err(Error::Blocked(format!(
            "table '{table}' has {} versions after operation {id}'s start; recovery reads at most {max_scan}",
            head - after
        )));
    }
    let mut history = History::default();
    for version in after + 1..=head {
        let txn = seen.transaction(&ds, table, version).await?;
        match Tag::of(txn.as_ref()) {
            Tag::Op(of, scope) if &of == id => {
                history.commits.push((version, txn.is_some_and(|t| adds_only(&t.operation))));
                if let Scope::Group(members) = scope {
                    history.members.insert(version, members);
                }
            }
            // A rewrite or an index change: its commit, never to be removed (it passes every vet).
            Tag::Preserving(Some(of)) if &of == id => {
                history.commits.push((version, false));
                history.rewrites.push(version);
            }
            Tag::Removal(of, removes) if &of == id => history.removals.push((version, removes)),
            _ => {}
        }
    }
    Ok(Some(history))
}

/// The version of the commit that `committer` (an attempt id, the writer's or
/// a sweep's) made on `table` after `after`, if the history shows one: whether
/// a commit that answered with an error landed is decided here, never from the error.
pub(crate) async fn committed_by(lake: &Lake, table: &str, after: u64, committer: &str) -> Result<Option<u64>> {
    let ds = match lake.open_table(table, None).await {
        Ok(ds) => ds,
        Err(Error::Lance { source: lance::Error::DatasetNotFound { .. } | lance::Error::NotFound { .. }, .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let head = ds.version().version;
    if head.saturating_sub(after) > MAX_HISTORY {
        return Err(Error::Blocked(format!("table '{table}' has {} versions since this operation started; cannot tell whether its commit landed", head - after)));
    }
    for version in (after + 1..=head).rev() {
        let txn = ds.read_version_transaction(version).await.map_err(|e| Error::lance(table, e))?.transaction;
        let props = txn.as_ref().and_then(|t| t.transaction_properties.clone());
        let get = |k: &str| props.as_ref().and_then(|p| p.get(k).cloned());
        if get(sidecar::PROP_ATTEMPT).as_deref() == Some(committer) && get(PROP_SCOPE).as_deref() != Some(SCOPE_ROLLBACK) {
            return Ok(Some(version));
        }
    }
    Ok(None)
}

/// A writer that decided its own attempt `id` rolled back removes every
/// commit of it the history of `table` after `after` shows (one may have
/// landed after all), as `by`, within [`LATE_REMOVAL`]. `Err(reason)` when
/// one cannot be removed exactly: the intent then stays for recovery.
pub(crate) async fn remove_own_commits(lake: &Lake, table: &str, after: u64, id: &AttemptId, by: &str) -> Result<Result<(), String>> {
    let Some(history) = commits_of(lake, table, after, id, &Seen::default(), u64::MAX).await? else { return Ok(Ok(())) };
    for (version, _) in history.standing() {
        if let Err(reason) = remove_commit(lake, table, id, by, version, &Deadline::after(LATE_REMOVAL)).await? {
            return Ok(Err(reason));
        }
    }
    Ok(Ok(()))
}

/// An attempt's commits on one table, and the commits that removed them.
#[derive(Debug, Clone, Default)]
pub(crate) struct History {
    /// (version, only added fragments: removable by deleting them).
    pub commits: Vec<(u64, bool)>,
    /// (version, the commit it removes, if recorded).
    pub removals: Vec<(u64, Option<u64>)>,
    /// Those of `commits` that keep the rows (rewrites, index changes).
    pub rewrites: Vec<u64>,
    /// Those of `commits` that are a group's, with the members their tags list readably.
    pub members: std::collections::BTreeMap<u64, Option<Vec<AttemptId>>>,
}

impl History {
    /// Commits not yet removed.
    pub fn standing(&self) -> Vec<(u64, bool)> {
        self.commits.iter().copied().filter(|(v, _)| !self.removals.iter().any(|(_, r)| r.is_none_or(|r| r == *v))).collect()
    }
}

/// Make sure Lance version `after + 1` of `table` exists, committing a
/// fence (tagged as `id`'s, by `by`) if the latest is still `after`: a
/// config update that changes nothing, which every vetter, of this sluice
/// or an older one, passes as Lance's bookkeeping, and which conflicts
/// with no other commit.
///
/// A single-table ingest that started from pin `after` and whose commit
/// lands at `after + 1` publishes beside its decision instead of after it
/// (`ingest.rs`): once that version is taken, whether it is the ingest's
/// shows in the history for good, so recovery takes it before it looks a
/// last time and may decide the ingest rolled back.
pub(crate) async fn take_next_version(lake: &Lake, table: &str, after: u64, id: &AttemptId, by: &str, deadline: &Deadline) -> Result<()> {
    let latest = |ds: &lance::Dataset| ds.version().version;
    let ds = match lake.open_table(table, None).await {
        Ok(ds) => ds,
        Err(Error::Lance { source: lance::Error::DatasetNotFound { .. } | lance::Error::NotFound { .. }, .. }) => {
            return Err(Error::Blocked(format!(
                "table '{table}' is missing, though operation {id} started from its published version {after}; repair it by hand"
            )));
        }
        Err(e) => return Err(e),
    };
    if latest(&ds) > after {
        return Ok(());
    }
    if latest(&ds) < after {
        return Err(Error::Blocked(format!(
            "table '{table}' is at Lance version {}, older than the pin {after} operation {id} started from: was the table made \
             again? Repair it by hand",
            latest(&ds)
        )));
    }
    deadline.check("fencing a dead ingest's next version")?;
    let operation = Operation::UpdateConfig { config_updates: None, table_metadata_updates: None, schema_metadata_updates: None, field_metadata_updates: Default::default() };
    let mut txn = Transaction::new(after, operation, None);
    txn.transaction_properties = Some(Arc::new(sidecar::commit_properties(&id.op, by, &id.attempt, SCOPE_FENCE)));
    let committed = deadline.bound(CommitBuilder::new(Arc::new(ds))).execute(txn).await;
    match committed {
        Ok(ds) => {
            tracing::info!(table, op = %id, version = latest(&ds), "took the version after a dead ingest's start pin");
            Ok(())
        }
        // An error is not proof: the version may be taken all the same (ours or another's).
        Err(e) if latest(&lake.open_table(table, None).await?) > after => {
            tracing::info!(table, op = %id, error = %e, "the version after a dead ingest's start pin is taken");
            Ok(())
        }
        Err(e) => Err(Error::lance(table, e)),
    }
}

/// Take back exactly what the commit at `version` did (invariant 8), tagged
/// as the roll-back of `id` by `by`; never a restore of the whole table.
/// Added fragments are removed; an upsert is undone with fragments that
/// already exist (`upsert_undo.rs`). `Err(reason)` when that cannot be done.
pub(crate) async fn remove_commit(lake: &Lake, table: &str, id: &AttemptId, by: &str, version: u64, deadline: &Deadline) -> Result<Result<u64, String>> {
    remove_within(lake, table, id, by, version, deadline, MAX_UNDO_CHAIN).await
}

/// [`remove_commit`], removing first at most `chain` rolled-back upserts
/// that replaced this one's rows.
async fn remove_within(lake: &Lake, table: &str, id: &AttemptId, by: &str, version: u64, deadline: &Deadline, chain: usize) -> Result<Result<u64, String>> {
    let after = lake.open_table(table, Some(version)).await?;
    let txn = after.read_transaction().await.map_err(|e| Error::lance(table, e))?;
    if txn.as_ref().is_some_and(|t| preserves_rows(&t.operation)) {
        // A rewrite or an index change keeps the same rows: nothing to take back.
        return Ok(Ok(version));
    }
    if sidecar::adopted(lake, table, version).await? {
        // An operator accepted it: it stands, and the pin may already have passed it.
        return Ok(Ok(version));
    }
    let predicate = format!("sluice rollback of {id} version {version}");
    let (ds, operation) = match txn.as_ref().map(|t| &t.operation) {
        Some(op @ Operation::Update { .. }) => {
            assert!(version > 1, "an update is never a table's first version");
            let before = lake.open_table(table, Some(version - 1)).await?;
            deadline.check("removing a rolled-back operation's rows")?;
            let latest = lake.open_table(table, None).await?;
            match upsert_undo::plan(table, op, &before, &after, &latest).await? {
                Ok(Undo::Commit(undo)) => (Arc::new(latest), undo),
                Ok(Undo::Superseded(fragments)) => {
                    let seen = Seen::default();
                    let droppers = match droppers(&latest, table, version, &fragments, &seen).await? {
                        Ok(droppers) => droppers,
                        Err(reason) => return Ok(Err(format!("table '{table}' version {version} is a rolled-back upsert whose rows were replaced since, but {reason}"))),
                    };
                    // Another remover took it back first.
                    if let Some((at, _)) = droppers.iter().find(|(_, t)| matches!(Tag::of(Some(t)), Tag::Removal(r, Some(v)) if r == *id && v == version)) {
                        return Ok(Ok(*at));
                    }
                    match supersession_stands(lake, table, by, &latest, droppers, deadline, chain, &seen).await? {
                        Ok(true) => {}
                        // A rolled-back dropper was removed (it may have put our fragments back): plan again.
                        Ok(false) => return Box::pin(remove_within(lake, table, id, by, version, deadline, chain - 1)).await,
                        Err(reason) => return Ok(Err(format!("table '{table}' version {version} is a rolled-back upsert whose rows were replaced since, but {reason}"))),
                    }
                    (Arc::new(latest), Operation::Delete { updated_fragments: vec![], deleted_fragment_ids: vec![], predicate })
                }
                Err(reason) => return Ok(Err(reason)),
            }
        }
        _ => match remove_added(lake, table, id, version, &after, txn.as_ref(), deadline, predicate).await? {
            Ok(Some(removal)) => removal,
            Ok(None) => return Ok(Ok(version)),
            Err(reason) => return Ok(Err(reason)),
        },
    };
    let mut properties = sidecar::commit_properties(&id.op, by, &id.attempt, SCOPE_ROLLBACK);
    properties.insert(PROP_REMOVES.into(), version.to_string());
    let mut txn = Transaction::new(ds.version().version, operation, None);
    txn.transaction_properties = Some(Arc::new(properties));
    // No affected rows: a concurrent change to a fragment this touches is a
    // conflict, never merged into it.
    let done = deadline.bound(CommitBuilder::new(ds)).execute(txn).await.map_err(|e| Error::lance(table, e))?;
    let at = done.version().version;
    tracing::info!(table, op = %id, version, removal = at, "removed the rows of a rolled-back commit");
    Ok(Ok(at))
}

/// The commits after `since` that dropped any of `fragments` (version,
/// transaction), read through `seen`; `Err(reason)` when one is a
/// compaction (it moved the upsert's rows: there is nothing exact to undo).
async fn droppers(latest: &lance::Dataset, table: &str, since: u64, fragments: &[u64], seen: &Seen) -> Result<Result<Vec<(u64, Transaction)>, String>> {
    let head = latest.version().version;
    if head - since > MAX_SINCE {
        return Err(Error::Blocked(format!(
            "table '{table}': {} versions since rolled-back upsert version {since}, more than the {MAX_SINCE} a roll-back \
             reads; accept it with `sluice adopt {table} --version {since}`, or repair the table by hand",
            head - since
        )));
    }
    let txns: Vec<Option<Transaction>> =
        futures::stream::iter(since + 1..=head).map(|v| seen.transaction(latest, table, v)).buffered(READ_AHEAD).try_collect().await?;
    let mut found = Vec::new();
    for (v, txn) in (since + 1..=head).zip(txns) {
        let Some(txn) = txn else {
            return Err(Error::Blocked(format!("table '{table}' version {v} has no transaction to read; repair the table by hand")));
        };
        let dropped = match &txn.operation {
            Operation::Update { removed_fragment_ids: ids, .. } | Operation::Delete { deleted_fragment_ids: ids, .. } => ids.iter().any(|id| fragments.contains(id)),
            Operation::Rewrite { groups, .. } if groups.iter().flat_map(|g| &g.old_fragments).any(|f| fragments.contains(&f.id)) => {
                return Ok(Err(format!("a compaction (version {v}) moved its rows since; accept it with `sluice adopt {table} --version {since}`, or repair the table by hand")));
            }
            Operation::Overwrite { .. } | Operation::Restore { .. } => true,
            _ => false,
        };
        if dropped {
            found.push((v, txn));
        }
    }
    Ok(Ok(found))
}

/// Does each commit that dropped a superseded upsert's fragments stand?
/// Adopted, decided forward at that version (an undecided single-table one
/// is decided forward on its behalf, as vetting does), or rolled back and
/// already removed (as superseded itself: else the fragments would be
/// back). `Ok(false)` when a rolled-back one not yet removed was removed
/// now; `Err(reason)` when one cannot be shown to stand.
#[allow(clippy::too_many_arguments)]
async fn supersession_stands(
    lake: &Lake,
    table: &str,
    by: &str,
    latest: &lance::Dataset,
    droppers: Vec<(u64, Transaction)>,
    deadline: &Deadline,
    chain: usize,
    seen: &Seen,
) -> Result<Result<bool, String>> {
    for (at, txn) in droppers {
        if sidecar::adopted(lake, table, at).await? {
            continue;
        }
        let Tag::Op(of, scope) = Tag::of(Some(&txn)) else {
            return Ok(Err(format!("version {at}, which dropped them, is not a sluice commit decided forward")));
        };
        match standing(lake, table, at, &of, &scope, Some(by), &BTreeSet::new(), seen).await? {
            Standing::Forward | Standing::Published(_) | Standing::Join => continue,
            Standing::RolledBack { .. } => {}
            Standing::Pending(_) => {
                return Err(Error::Blocked(format!(
                    "table '{table}': version {at} (load {of}) replaced a rolled-back upsert's rows and is not decided yet; retry once it is"
                )));
            }
            Standing::Unprovable(reason) => return Ok(Err(reason)),
        }
        // Rolled back (or a late duplicate) itself.
        let head = latest.version().version;
        if read_range(latest, table, at + 1, head, seen).await?.iter().any(|(_, t)| matches!(t, Tag::Removal(r, v) if *r == of && v.is_none_or(|v| v == at))) {
            continue;
        }
        if chain == 0 {
            return Ok(Err(format!("more than {MAX_UNDO_CHAIN} rolled-back upserts replaced each other's rows")));
        }
        return match Box::pin(remove_within(lake, table, &of, by, at, deadline, chain - 1)).await? {
            Ok(_) => Ok(Ok(false)),
            Err(reason) => Ok(Err(format!("version {at}, which dropped them, is rolled back and cannot be taken back: {reason}"))),
        };
    }
    Ok(Ok(true))
}

/// The removal of the fragments an append (or sluice's misplaced new
/// columns) added, on the latest version; `None` when there is nothing to take back.
#[allow(clippy::too_many_arguments)]
async fn remove_added(
    lake: &Lake,
    table: &str,
    id: &AttemptId,
    version: u64,
    after: &lance::Dataset,
    txn: Option<&Transaction>,
    deadline: &Deadline,
    predicate: String,
) -> Result<Result<Option<(Arc<lance::Dataset>, Operation)>, String>> {
    let columns = is_columns_merge(txn);
    if !columns && !txn.is_some_and(|t| adds_only(&t.operation)) {
        return Ok(Err(format!(
            "table '{table}' version {version} (operation {id}) (rolled back) neither only added rows nor is an upsert sluice \
             wrote; removing its rows would not restore what it changed. Accept it with `sluice adopt {table} --version {version}`, \
             or repair the table by hand"
        )));
    }
    let before = match version {
        v if v > 1 => lake.open_table(table, Some(v - 1)).await?.fragments().as_ref().clone(),
        _ => Vec::new(),
    };
    let misplaced_columns = columns && !same_fragments(after.fragments(), &before);
    if columns && !misplaced_columns {
        // New columns keep the same rows: nothing to take back.
        return Ok(Ok(None));
    }
    let added: Vec<u64> = after.fragments().iter().map(|f| f.id).filter(|f| !before.iter().any(|b| b.id == *f)).collect();
    deadline.check("removing a rolled-back operation's rows")?;
    let ds = Arc::new(lake.open_table(table, None).await?);
    // A misplaced schema change also put back older copies of fragments
    // (deletions undone): restore the copies it landed on, unless a later
    // commit changed the fragment again.
    let mut restored = Vec::new();
    for b in before.iter().filter(|b| misplaced_columns && after.fragments().iter().any(|a| a.id == b.id && a != *b)) {
        let (put_back, now) = (after.fragments().iter().find(|a| a.id == b.id), ds.fragments().iter().find(|f| f.id == b.id));
        if now.is_some() && now != put_back {
            return Ok(Err(format!(
                "table '{table}' version {version} (operation {id}, rolled back) is a schema change that landed on a state it was \
                 not built on, and fragment {} changed again since: repair the table by hand (its fragments should be those of version {})",
                b.id,
                version - 1
            )));
        }
        restored.extend(now.map(|_| b.clone()));
    }
    Ok(Ok(Some((ds, Operation::Delete { updated_fragments: restored, deleted_fragment_ids: added, predicate }))))
}

/// Does this removal put fragments or deletions back (an upsert's undo, a
/// misplaced schema change's restore), rather than only take fragments away?
fn puts_back(txn: Option<&Transaction>) -> bool {
    txn.is_some_and(|t| match &t.operation {
        Operation::Update { .. } => true,
        Operation::Delete { updated_fragments, .. } => !updated_fragments.is_empty(),
        _ => false,
    })
}

/// Operations that only add fragments.
pub(crate) fn adds_only(op: &Operation) -> bool {
    matches!(op, Operation::Append { .. } | Operation::Overwrite { .. })
}

/// Operations that keep every row as it was: compaction, index changes.
fn preserves_rows(op: &Operation) -> bool {
    matches!(op, Operation::Rewrite { .. } | Operation::CreateIndex { .. })
}

/// Transactions that add no rows anyone could see (Lance's own bookkeeping;
/// an empty table's creation — not an empty overwrite of a table, which removes rows).
fn carries_no_rows(txn: &Transaction) -> bool {
    matches!(txn.operation, Operation::ReserveFragments { .. } | Operation::UpdateConfig { .. })
        || matches!(&txn.operation, Operation::Overwrite { fragments, .. } if fragments.is_empty() && txn.read_version == 0)
}
