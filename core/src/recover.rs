//! Recovery: finish or undo the operations of workers that died (DESIGN.md
//! invariants 4-8).
//!
//! A sweep lists `_ops/` (one LIST; nothing more when nothing is pending) and
//! takes up only intents whose owner's deadline plus the clock-skew margin has
//! passed. For each it takes a lease (create-only, so one sweep acts at a
//! time), proves what reached Lance by finding the operation's own commits
//! (its attempt ids in the transaction properties) after the pins it started
//! from, and what reached the manifest, then:
//!
//! - **converges** when the published state already shows every commit;
//! - **rolls forward** when every table committed: publish them;
//! - **redoes** a multi-table load that committed some tables, when its
//!   sources are unchanged: commit the rest, decide forward, publish;
//! - **rolls back** otherwise: decide so (create-only, racing the writer), then
//!   delete exactly the fragments the operation added and release its sources;
//! - **refuses** what it cannot prove, keeping the intent.
//!
//! The decision object is what a late writer must win to publish a multi-table
//! load, so it cannot publish over recovery. A single-table operation needs no
//! decision: once committed it is only ever rolled forward, and without a
//! commit it has nothing to publish (no commit starts after its deadline).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use lance::dataset::CommitBuilder;
use lance::dataset::transaction::{Operation, Transaction};
use serde::Serialize;

use crate::audit::{self, AuditRecord, AuditTable, Verdict};
use crate::counting::RequestSnapshot;
use crate::deadline::Deadline;
use crate::error::{Error, Result};
use crate::failpoints;
use crate::ingest;
use crate::lake::{Created, Lake};
use crate::manifest::{self, Goal, Manifest, Published, PublishOutcome, TablePin};
use crate::sidecar::{
    self, Decision, Intent, Lease, OpFiles, Outcome, SourceRef, PROP_ATTEMPT, PROP_INTENT, PROP_OP, PROP_SCOPE, SCOPE_MULTI, SCOPE_ROLLBACK,
    SCOPE_SINGLE,
};
use crate::source::Source;

/// Default margin for clocks that disagree between workers.
pub const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(60);
/// Lance versions recovery reads per table to find an operation's commits.
const MAX_SCAN: u64 = 100_000;
/// Longest pause between polls of another worker's progress.
const MAX_POLL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub clock_skew: Duration,
    pub dry_run: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Its owner may still be alive: untouched.
    Live { expires_at: chrono::DateTime<Utc> },
    /// This sweep decided it and removed its sidecars.
    Decided { verdict: Verdict, manifest_version: Option<u64> },
    /// `--dry-run`: what this sweep would decide.
    Planned { verdict: Verdict },
    /// Another sweep or the writer itself finished it meanwhile.
    DoneByOther { verdict: Option<Verdict> },
    /// Could not be finished now; the intent stays for a later pass.
    Deferred { reason: String },
    /// Recovery cannot prove what to do; the intent stays. Needs a person.
    Refused { reason: String },
    /// An error (the store, Lance) stopped it; the intent stays for a later pass.
    Failed { error: String },
}

#[derive(Debug, Clone, Serialize)]
pub struct OpReport {
    pub op: String,
    pub kind: String,
    pub tables: Vec<String>,
    #[serde(flatten)]
    pub action: Action,
}

#[derive(Debug, Clone, Serialize)]
pub struct SweepReport {
    /// Intents found.
    pub pending: usize,
    pub ops: Vec<OpReport>,
    pub requests: RequestSnapshot,
}

impl SweepReport {
    /// Operations recovery refused or failed on: the CLI exits non-zero when there are any.
    pub fn unresolved(&self) -> usize {
        self.ops.iter().filter(|o| matches!(o.action, Action::Refused { .. } | Action::Failed { .. })).count()
    }
}

/// One recovery pass over every pending intent, oldest first.
pub async fn sweep(lake: &Lake, opts: Options, timeout: Duration) -> Result<SweepReport> {
    let before = lake.requests();
    let deadline = Deadline::after(timeout);
    let ops = sidecar::list_ops(lake).await?;
    let mut intents = Vec::new();
    let mut refused = Vec::new();
    for (op, files) in ops.into_iter().filter(|(_, f)| f.intent) {
        match sidecar::read_intent(lake, &op).await {
            Ok(Some(intent)) => intents.push((intent, files)),
            Ok(None) => {}
            Err(e @ Error::Corrupt { .. }) => refused.push(OpReport {
                op,
                kind: "unknown".into(),
                tables: Vec::new(),
                action: Action::Refused { reason: format!("{e}; fix or remove the intent by hand") },
            }),
            Err(e) => return Err(e),
        }
    }
    let pending = intents.len() + refused.len();
    let seen = Seen::default();
    intents.sort_by_key(|(i, _)| i.started_at);
    let mut reports = refused;
    for (intent, files) in intents {
        if deadline.remaining().is_zero() {
            reports.push(report(&intent, Action::Deferred { reason: "this sweep ran out of time".into() }));
            continue;
        }
        let action = match resolve(lake, &intent, &files, opts, &deadline, true, &seen).await {
            Ok(action) => action,
            Err(e) => Action::Failed { error: e.to_string() },
        };
        reports.push(report(&intent, action));
    }
    Ok(SweepReport { pending, ops: reports, requests: lake.requests().since(&before) })
}

fn report(intent: &Intent, action: Action) -> OpReport {
    OpReport { op: intent.op.clone(), kind: intent.kind.clone(), tables: intent.tables.keys().cloned().collect(), action }
}

/// Heal first: resolve expired intents that touch `tables` before a writer
/// goes on. One LIST when nothing is pending. Failures are the sweep's
/// business, not the writer's: they are logged, and the writer's own checks
/// keep it from publishing anything undecided.
pub async fn heal(lake: &Lake, tables: &BTreeSet<String>, clock_skew: Duration, deadline: &Deadline) -> Result<()> {
    let ops = sidecar::list_ops(lake).await?;
    let seen = Seen::default();
    for (op, files) in ops.into_iter().filter(|(_, f)| f.intent) {
        let intent = match sidecar::read_intent(lake, &op).await {
            Ok(Some(intent)) => intent,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(op, error = %e, "heal-first: cannot read an intent; `sluice recover` reports it");
                continue;
            }
        };
        if !intent.tables.keys().any(|t| tables.contains(t)) || deadline.remaining().is_zero() {
            continue;
        }
        let opts = Options { clock_skew, dry_run: false };
        match resolve(lake, &intent, &files, opts, deadline, false, &seen).await {
            Ok(Action::Live { .. }) => {}
            Ok(action) => tracing::info!(op, ?action, "heal-first resolved a dead worker's operation"),
            Err(e) => tracing::warn!(op, error = %e, "heal-first could not resolve an operation"),
        }
    }
    Ok(())
}

/// Resolve operation `op` if its owner is dead: what a writer does when the
/// intent it waits for expires.
pub async fn resolve_op(lake: &Lake, op: &str, clock_skew: Duration, deadline: &Deadline) -> Result<Action> {
    let files = sidecar::list_ops(lake).await?.remove(op).unwrap_or_default();
    match sidecar::read_intent(lake, op).await? {
        Some(intent) => resolve(lake, &intent, &files, Options { clock_skew, dry_run: false }, deadline, false, &Seen::default()).await,
        None => Ok(Action::DoneByOther { verdict: None }),
    }
}

/// When a worker whose deadline is `deadline` is presumed dead.
pub(crate) fn presumed_dead_at(deadline: chrono::DateTime<Utc>, skew: Duration) -> chrono::DateTime<Utc> {
    deadline + chrono::Duration::from_std(skew).unwrap_or(chrono::Duration::MAX)
}

/// When the owner of `intent` (the writer, or the sweep holding the latest
/// lease) is presumed dead.
fn expires_at(intent: &Intent, lease: Option<&Lease>, skew: Duration) -> chrono::DateTime<Utc> {
    presumed_dead_at(lease.map_or(intent.deadline, |l| l.deadline.max(intent.deadline)), skew)
}

/// A writer waiting on another operation `op` (a duplicate delivery, another
/// optimizer of the same state): poll until its intent is gone, resolving it
/// once its owner is presumed dead. Bounded by `deadline`.
pub(crate) async fn await_gone(lake: &Lake, op: &str, its_deadline: chrono::DateTime<Utc>, skew: Duration, deadline: &Deadline) -> Result<()> {
    let mut pause = Duration::from_millis(50);
    while sidecar::intent_exists(lake, op).await? {
        if Utc::now() >= presumed_dead_at(its_deadline, skew) {
            // Boxed here and below: recovery's future is large and would nest inside the writer's.
            let action = Box::pin(resolve_op(lake, op, skew, deadline)).await?;
            tracing::info!(op, ?action, "took over a dead worker's operation");
            match action {
                Action::Decided { .. } | Action::DoneByOther { .. } => continue,
                Action::Refused { reason } => return Err(Error::Blocked(format!("operation {op} died and recovery refused it: {reason}"))),
                _ => {}
            }
        }
        if deadline.remaining() <= pause {
            return Err(Error::Blocked(format!("operation {op} is still running (its deadline is {its_deadline}); retry later")));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_POLL);
    }
    Ok(())
}

/// The pin a writer may move `table` to from `from` to show its own commit at
/// `to` ([`vet`]), resolving dead operations whose commits stand in between.
/// Bounded by `deadline`: each round resolves an operation or pauses.
pub(crate) async fn publishable_pin(lake: &Lake, table: &str, from: u64, to: u64, own_op: &str, skew: Duration, deadline: &Deadline) -> Result<u64> {
    let mut pause = Duration::from_millis(50);
    loop {
        let op = match vet(lake, table, from, to, own_op, skew, deadline, &Seen::default()).await? {
            Vetted::Pin(v) => return Ok(v),
            Vetted::Expired(op) => op,
            Vetted::Foreign(reason) => return Err(Error::Blocked(reason)),
        };
        match Box::pin(resolve_op(lake, &op, skew, deadline)).await? {
            Action::Decided { .. } | Action::DoneByOther { .. } => continue,
            Action::Refused { reason } => {
                return Err(Error::Blocked(format!("table '{table}': operation {op} stands before this commit and recovery refused it: {reason}")));
            }
            // Another sweep holds it, or it could not be finished yet: wait.
            _ if deadline.remaining() > pause => tokio::time::sleep(pause).await,
            _ => {
                return Err(Error::Blocked(format!(
                    "table '{table}': dead operation {op} before version {to} was not resolved by this worker's deadline; run `sluice recover`"
                )));
            }
        }
        pause = (pause * 2).min(MAX_POLL);
    }
}

/// Resolve `intent` if its owner is presumed dead. A sweep (`join_sweeps`)
/// waits for another sweep's live lease to end in an outcome; a writer healing
/// first does not (its own checks keep it from publishing anything undecided).
async fn resolve(
    lake: &Lake,
    intent: &Intent,
    files: &OpFiles,
    opts: Options,
    deadline: &Deadline,
    join_sweeps: bool,
    seen: &Seen,
) -> Result<Action> {
    let mut leases = Vec::with_capacity(files.leases.len());
    for k in &files.leases {
        match sidecar::read_lease(lake, &intent.op, *k).await {
            Ok(Some(lease)) => leases.push(lease),
            Ok(None) => {}
            Err(e @ Error::Corrupt { .. }) => return Ok(Action::Refused { reason: e.to_string() }),
            Err(e) => return Err(e),
        }
    }
    let expires = expires_at(intent, leases.last(), opts.clock_skew);
    let swept = leases.last().is_some();
    if Utc::now() < expires && !(swept && join_sweeps && !opts.dry_run) {
        return Ok(Action::Live { expires_at: expires });
    }
    let mut r = Recovery {
        lake,
        intent,
        lease: Lease {
            op: intent.op.clone(),
            k: leases.last().map_or(1, |l| l.k + 1),
            attempt: uuid::Uuid::now_v7().to_string(),
            taken_at: Utc::now(),
            deadline: deadline.at(),
            worker: sidecar::worker_name(),
        },
        leases: leases.iter().map(|l| l.k).collect(),
        deadline,
        skew: opts.clock_skew,
        seen,
    };
    if Utc::now() < expires {
        // Another sweep holds a live lease on it.
        return r.await_other().await;
    }
    if opts.dry_run {
        let state = r.inspect().await?;
        return Ok(match r.plan(&state).await? {
            Plan::Refuse(reason) => Action::Refused { reason },
            plan => Action::Planned { verdict: plan.verdict(&state) },
        });
    }
    match sidecar::take_lease(lake, &r.lease).await? {
        Created::Mine => {}
        // Another sweep took over first: wait for its outcome.
        Created::Theirs(_) | Created::Gone => return r.await_other().await,
    }
    r.leases.push(r.lease.k);
    failpoints::hit(failpoints::RECOVER_AFTER_LEASE)?;
    r.run().await
}

/// A table's commit by the operation, as recovery found it.
#[derive(Debug, Clone)]
struct Commit {
    version: u64,
    /// It only added fragments (an append or a table's creation), so deleting
    /// them undoes it; an upsert's update also removed rows elsewhere.
    removable: bool,
}

#[derive(Debug)]
struct State {
    commits: BTreeMap<String, Commit>,
    /// Recovery's earlier commits removing the operation's rows.
    removals: BTreeMap<String, u64>,
    latest: Manifest,
    decision: Option<Decision>,
    /// Multi-table: the sources whose claims this intent holds, per table. A
    /// table whose sources other operations had already ingested was never
    /// going to be committed by this one.
    owned: BTreeMap<String, Vec<SourceRef>>,
}

impl State {
    fn published(&self) -> bool {
        self.commits.iter().all(|(t, c)| self.latest.tables.get(t).is_some_and(|p| p.version >= c.version))
    }
}

enum Publishing {
    Done(PublishOutcome),
    /// Another operation's commits must be decided first: a later pass.
    Wait(String),
    /// A commit recovery cannot attribute: a person must look.
    Refuse(String),
}

enum Plan {
    Forward,
    Redo(BTreeMap<String, Vec<SourceRef>>),
    RollBack(String),
    Refuse(String),
}

impl Plan {
    fn verdict(&self, state: &State) -> Verdict {
        match self {
            Plan::Forward if state.published() => Verdict::Converged,
            Plan::Forward => Verdict::RolledForward,
            Plan::Redo(_) => Verdict::Redone,
            Plan::RollBack(_) => Verdict::RolledBack,
            Plan::Refuse(_) => unreachable!("a refusal has no verdict"),
        }
    }
}

struct Recovery<'a> {
    lake: &'a Lake,
    intent: &'a Intent,
    lease: Lease,
    leases: Vec<u32>,
    deadline: &'a Deadline,
    skew: Duration,
    seen: &'a Seen,
}

/// Lance transactions read during one sweep, by table and version: a version
/// never changes once written, and dead operations on one table share their
/// versions, so each is read once per sweep instead of once per operation.
#[derive(Default)]
struct Seen(std::sync::Mutex<HashMap<(String, u64), Option<Transaction>>>);

impl Seen {
    async fn transaction(&self, ds: &lance::Dataset, table: &str, version: u64) -> Result<Option<Transaction>> {
        let key = (table.to_string(), version);
        if let Some(txn) = self.0.lock().expect("seen poisoned").get(&key) {
            return Ok(txn.clone());
        }
        let txn = ds.read_version_transaction(version).await.map_err(|e| Error::lance(table, e))?.transaction;
        self.0.lock().expect("seen poisoned").insert(key, txn.clone());
        Ok(txn)
    }
}

impl Recovery<'_> {
    fn multi(&self) -> bool {
        self.intent.tables.len() > 1
    }

    async fn run(&self) -> Result<Action> {
        let mut state = self.inspect().await?;
        let mut plan = self.plan(&state).await?;
        // A decision lost to the writer or another sweep is followed, once.
        for _ in 0..2 {
            let outcome = match &plan {
                Plan::Forward if self.multi() && state.decision.is_none() => Outcome::Forward,
                Plan::RollBack(_) if self.multi() && state.decision.is_none() && !state.commits.is_empty() => Outcome::RollBack,
                _ => break,
            };
            match self.decide(outcome, &state).await? {
                None => break,
                Some(theirs) => {
                    state.decision = Some(theirs);
                    plan = self.plan(&state).await?;
                }
            }
        }
        let (verdict, reason, manifest_version) = match plan {
            Plan::Refuse(reason) => return Ok(Action::Refused { reason }),
            Plan::Forward => {
                match self.publish(&state).await? {
                    Publishing::Wait(reason) => return Ok(Action::Deferred { reason }),
                    Publishing::Refuse(reason) => return Ok(Action::Refused { reason }),
                    Publishing::Done(PublishOutcome::AlreadyCovered { version }) => {
                        (Verdict::Converged, "the published state already showed every commit".into(), Some(version))
                    }
                    Publishing::Done(PublishOutcome::Published { version }) => {
                        (Verdict::RolledForward, "every table was committed; recovery published them".into(), Some(version))
                    }
                }
            }
            Plan::Redo(missing) => {
                let names: Vec<String> = missing.keys().cloned().collect();
                match Box::pin(ingest::redo(self.lake, self.intent, &self.lease.attempt, *self.deadline, &missing)).await? {
                    None => return Ok(Action::Deferred { reason: "a source changed while being redone; the next pass rolls back".into() }),
                    Some(done) => {
                        for (table, version) in done {
                            // Redone commits are only ever rolled forward: the decision comes next.
                            state.commits.insert(table, Commit { version, removable: false });
                        }
                    }
                }
                if let Some(theirs) = self.decide(Outcome::Forward, &state).await? {
                    return Ok(Action::Refused { reason: format!("redone, but the operation was decided {:?} by {} meanwhile", theirs.outcome, theirs.by) });
                }
                match self.publish(&state).await? {
                    Publishing::Wait(reason) => return Ok(Action::Deferred { reason }),
                    Publishing::Refuse(reason) => return Ok(Action::Refused { reason }),
                    Publishing::Done(outcome) => (Verdict::Redone, format!("tables {names:?} were missing; redone from the unchanged sources"), Some(outcome.version())),
                }
            }
            Plan::RollBack(reason) => {
                if let Err(reason) = self.remove_rows(&mut state).await? {
                    return Ok(Action::Refused { reason });
                }
                (Verdict::RolledBack, reason, None)
            }
        };
        failpoints::hit(failpoints::RECOVER_AFTER_EFFECTS)?;
        self.record(verdict, reason, manifest_version, &state).await?;
        failpoints::hit(failpoints::RECOVER_BEFORE_FINISH)?;
        if verdict == Verdict::RolledBack {
            self.release_sources().await?;
        }
        sidecar::finish_recovered(self.lake, &self.intent.op, &self.leases).await?;
        Ok(Action::Decided { verdict, manifest_version })
    }

    /// What reached Lance (the operation's commits after the pins it started
    /// from) and what reached the manifest.
    async fn inspect(&self) -> Result<State> {
        let mut commits = BTreeMap::new();
        let mut removals = BTreeMap::new();
        for (table, it) in &self.intent.tables {
            let ds = match self.lake.open_table(table, None).await {
                Ok(ds) => ds,
                Err(Error::Lance { source: lance::Error::DatasetNotFound { .. } | lance::Error::NotFound { .. }, .. }) => continue,
                Err(e) => return Err(e),
            };
            let head = ds.version().version;
            let from = it.start_pin.unwrap_or(0) + 1;
            if head.saturating_sub(from) > MAX_SCAN {
                return Err(Error::Blocked(format!(
                    "table '{table}' has {} versions after operation {}'s start; recovery reads at most {MAX_SCAN}",
                    head - from,
                    self.intent.op
                )));
            }
            for version in from..=head {
                let Some(txn) = self.seen.transaction(&ds, table, version).await? else { continue };
                let props = txn.transaction_properties.as_deref();
                let get = |k: &str| props.and_then(|p| p.get(k)).map(String::as_str);
                if get(PROP_OP) != Some(self.intent.op.as_str()) || get(PROP_INTENT) != Some(self.intent.attempt.as_str()) {
                    continue;
                }
                if get(PROP_SCOPE) == Some(SCOPE_ROLLBACK) {
                    removals.insert(table.clone(), version);
                } else if let Some(earlier) = commits.insert(table.clone(), Commit { version, removable: adds_only(&txn.operation) }) {
                    return Err(Error::Blocked(format!(
                        "operation {} has two commits on table '{table}' (versions {} and {version}); recovery will not guess",
                        self.intent.op, earlier.version
                    )));
                }
            }
        }
        let latest = manifest::read_latest(self.lake).await?.ok_or_else(|| Error::Corrupt {
            what: "manifest",
            path: self.lake.uri().to_string(),
            reason: "an operation is pending but the lake has no manifest".into(),
        })?;
        let (mut decision, mut owned) = (None, BTreeMap::<String, Vec<SourceRef>>::new());
        if self.multi() {
            decision = sidecar::read_decision(self.lake, &self.intent.op, &self.intent.attempt).await?;
            for s in &self.intent.sources {
                if self.holds_claim(&s.id).await? {
                    owned.entry(s.table.clone()).or_default().push(s.clone());
                }
            }
        }
        Ok(State { commits, removals, latest, decision, owned })
    }

    async fn plan(&self, state: &State) -> Result<Plan> {
        let committed = state.commits.len();
        // Tables this operation had to commit: all, or (multi-table) those it holds sources for.
        let missing: BTreeMap<String, Vec<SourceRef>> = match self.multi() {
            true => state.owned.iter().filter(|(t, _)| !state.commits.contains_key(*t)).map(|(t, s)| (t.clone(), s.clone())).collect(),
            false => BTreeMap::new(),
        };
        let names = || missing.keys().cloned().collect::<Vec<_>>();
        Ok(match state.decision.as_ref().map(|d| d.outcome) {
            Some(Outcome::RollBack) => Plan::RollBack("decided to roll back earlier; finishing it".into()),
            Some(Outcome::Forward) if missing.is_empty() && committed > 0 => Plan::Forward,
            Some(Outcome::Forward) => Plan::Refuse(format!("decided forward, but tables {:?} have no commit of this operation", names())),
            None if committed == 0 => Plan::RollBack("nothing was committed; the sources are released for redelivery".into()),
            None if missing.is_empty() => Plan::Forward,
            None => match self.changed_source(&missing).await? {
                None => Plan::Redo(missing),
                Some(why) => Plan::RollBack(format!("tables {:?} were never committed and cannot be redone: {why}", names())),
            },
        })
    }

    async fn holds_claim(&self, source_id: &str) -> Result<bool> {
        let claim = sidecar::read_claim(self.lake, source_id).await?;
        Ok(claim.is_some_and(|c| c.op == self.intent.op && c.attempt == self.intent.attempt))
    }

    /// Why `sources` cannot be read again as the writer read them.
    async fn changed_source(&self, sources: &BTreeMap<String, Vec<SourceRef>>) -> Result<Option<String>> {
        for s in sources.values().flatten() {
            match Source::resolve(&s.uri).await {
                Ok(now) if now.identity == s.identity => {}
                Ok(_) => return Ok(Some(format!("source {} changed since the load read it", s.uri))),
                Err(e) => return Ok(Some(format!("source {} cannot be read: {e}", s.uri))),
            }
        }
        Ok(None)
    }

    /// Record `outcome` create-only; returns the decision that won instead, if another did.
    async fn decide(&self, outcome: Outcome, state: &State) -> Result<Option<Decision>> {
        self.deadline.check("recording a recovery decision")?;
        let decision = Decision {
            op: self.intent.op.clone(),
            intent: self.intent.attempt.clone(),
            attempt: self.lease.attempt.clone(),
            outcome,
            by: "recovery".into(),
            at: Utc::now(),
            versions: state.commits.iter().map(|(t, c)| (t.clone(), c.version)).collect(),
        };
        let won = match sidecar::decide(self.lake, &decision).await? {
            Created::Mine => None,
            Created::Theirs(theirs) => Some(theirs),
            Created::Gone => return Err(Error::Blocked(format!("the decision of operation {} vanished while being read", self.intent.op))),
        };
        failpoints::hit(failpoints::RECOVER_AFTER_DECISION)?;
        Ok(won)
    }

    /// Publish every commit, unless other commits stand in the way.
    async fn publish(&self, state: &State) -> Result<Publishing> {
        let mut pins = BTreeMap::new();
        for (table, commit) in &state.commits {
            let it = &self.intent.tables[table];
            let from = state.latest.tables.get(table).map_or(0, |p| p.version);
            let version = if from >= commit.version {
                commit.version
            } else {
                match vet(self.lake, table, from, commit.version, &self.intent.op, self.skew, self.deadline, self.seen).await {
                    Ok(Vetted::Pin(v)) => v,
                    // Sweeps go oldest first; a heal or the next pass resolves that one.
                    Ok(Vetted::Expired(op)) => {
                        return Ok(Publishing::Wait(format!("operation {op}, also dead, has undecided commits on table '{table}' before this one's")));
                    }
                    Ok(Vetted::Foreign(reason)) => return Ok(Publishing::Refuse(reason)),
                    Err(Error::Blocked(reason)) => return Ok(Publishing::Wait(reason)),
                    Err(e) => return Err(e),
                }
            };
            pins.insert(table.clone(), TablePin { version, mode: it.mode, key: it.key.clone() });
        }
        let goal = Goal {
            published: Published {
                op: self.intent.op.clone(),
                attempt: self.lease.attempt.clone(),
                kind: format!("recovery:{}", self.intent.kind),
                tables: pins.iter().map(|(t, p)| (t.clone(), p.version)).collect(),
                sources: self.intent.sources.len(),
            },
            pins,
        };
        Ok(Publishing::Done(manifest::publish(self.lake, state.latest.clone(), &goal, self.deadline).await?))
    }

    /// Delete exactly the fragments the operation's commits added (invariant
    /// 8); never restore. `Err(reason)` when that cannot be done surgically.
    async fn remove_rows(&self, state: &mut State) -> Result<Result<(), String>> {
        for (table, commit) in &state.commits {
            if state.removals.contains_key(table) {
                continue;
            }
            if !commit.removable {
                return Ok(Err(format!(
                    "table '{table}' version {} is an upsert; removing its rows would not restore the rows it replaced. \
                     Restore the load's sources and run `sluice recover` again (it then redoes the load), or repair the table by hand",
                    commit.version
                )));
            }
            let added = self.added_fragments(table, commit.version).await?;
            self.deadline.check("removing a dead operation's rows")?;
            let ds = Arc::new(self.lake.open_table(table, None).await?);
            let properties = sidecar::commit_properties(&self.intent.op, &self.lease.attempt, &self.intent.attempt, SCOPE_ROLLBACK);
            let mut txn = Transaction::new(
                ds.version().version,
                Operation::Delete { updated_fragments: Vec::new(), deleted_fragment_ids: added, predicate: format!("sluice rollback of {}", self.intent.op) },
                None,
            );
            txn.transaction_properties = Some(Arc::new(properties));
            let left = self.deadline.remaining();
            let done = CommitBuilder::new(ds)
                .with_timeout(Some(left))
                .with_retry_timeout(left.min(Duration::from_secs(30)))
                .execute(txn)
                .await
                .map_err(|e| Error::lance(table, e))?;
            tracing::info!(table, op = %self.intent.op, version = done.version().version, "removed a dead operation's rows");
            state.removals.insert(table.clone(), done.version().version);
        }
        Ok(Ok(()))
    }

    /// Fragment ids present at `version` and not before it.
    async fn added_fragments(&self, table: &str, version: u64) -> Result<Vec<u64>> {
        let after = self.lake.open_table(table, Some(version)).await?;
        let before: BTreeSet<u64> = if version > 1 {
            self.lake.open_table(table, Some(version - 1)).await?.fragments().iter().map(|f| f.id).collect()
        } else {
            BTreeSet::new()
        };
        Ok(after.fragments().iter().map(|f| f.id).filter(|id| !before.contains(id)).collect())
    }

    async fn record(&self, verdict: Verdict, reason: String, manifest_version: Option<u64>, state: &State) -> Result<()> {
        let rec = AuditRecord {
            op: self.intent.op.clone(),
            attempt: self.intent.attempt.clone(),
            kind: self.intent.kind.clone(),
            verdict,
            reason,
            tables: self
                .intent
                .tables
                .keys()
                .map(|t| {
                    let committed = state.commits.get(t).map(|c| c.version);
                    (t.clone(), AuditTable { committed, removed_at: state.removals.get(t).copied() })
                })
                .collect(),
            sources: self.intent.sources.clone(),
            manifest_version,
            writer: self.intent.worker.clone(),
            writer_deadline: self.intent.deadline,
            by: self.lease.attempt.clone(),
            worker: self.lease.worker.clone(),
            lease: self.lease.k,
            decided_at: Utc::now(),
        };
        match audit::record(self.lake, &rec).await? {
            Created::Mine => Ok(()),
            // A sweep holding an earlier lease recorded it, then died before
            // finishing: the same direction (its roll-forward is our convergence).
            Created::Theirs(earlier) if (earlier.verdict == Verdict::RolledBack) == (verdict == Verdict::RolledBack) => Ok(()),
            Created::Theirs(earlier) => Err(Error::Blocked(format!(
                "operation {} was recorded as {} by sweep {}, but this sweep found {verdict}; recovery will not guess",
                self.intent.op, earlier.verdict, earlier.by
            ))),
            Created::Gone => Err(Error::Blocked(format!("the audit record of operation {} vanished while being read", self.intent.op))),
        }
    }

    /// Give the sources back for redelivery: the claims this operation made.
    async fn release_sources(&self) -> Result<()> {
        for s in &self.intent.sources {
            if self.holds_claim(&s.id).await? {
                sidecar::release_claim(self.lake, &s.id).await?;
            }
        }
        Ok(())
    }

    /// Another sweep holds the lease: wait (within our deadline) for the intent
    /// to go, then report what was recorded.
    async fn await_other(&self) -> Result<Action> {
        let mut pause = Duration::from_millis(50);
        while sidecar::intent_exists(self.lake, &self.intent.op).await? {
            if self.deadline.remaining() <= pause {
                return Ok(Action::Deferred { reason: "another sweep is resolving it".into() });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_POLL);
        }
        let rec = audit::read(self.lake, &self.intent.op, &self.intent.attempt).await?;
        Ok(Action::DoneByOther { verdict: rec.map(|r| r.verdict) })
    }
}

/// What [`vet`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Vetted {
    /// The pin may move to this version.
    Pin(u64),
    /// Operation `0`, whose owner is presumed dead, stands in the way: resolve it, then vet again.
    Expired(String),
    /// A commit no sluice decision covers stands in the way (why): never published by guessing.
    Foreign(String),
}

/// Invariant 3: may a pin of `table` advance from `from` to `to`? Every Lance
/// commit in between must be decided forward. The pin may go further than
/// `to` when the only way past a rolled-back operation's rows is to include
/// recovery's commit that removes them. Waits (within `deadline`) for live
/// multi-table loads. `to` is the caller's own commit.
#[allow(clippy::too_many_arguments)]
async fn vet(lake: &Lake, table: &str, from: u64, to: u64, own_op: &str, skew: Duration, deadline: &Deadline, seen: &Seen) -> Result<Vetted> {
    assert!(from < to, "vetting an empty range");
    if from + 1 == to {
        return Ok(Vetted::Pin(to));
    }
    let mut ds = lake.open_table(table, Some(to)).await?;
    let mut txns = read_range(&ds, table, from + 1, to - 1, seen).await?;
    let mut to = to;
    let mut i = 0;
    while i < txns.len() {
        let (version, txn) = &txns[i];
        let version = *version;
        i += 1;
        let props = txn.as_ref().and_then(|t| t.transaction_properties.clone());
        let get = |k: &str| props.as_ref().and_then(|p| p.get(k).cloned());
        let (op, intent) = match (get(PROP_OP), get(PROP_SCOPE).as_deref()) {
            _ if txn.as_ref().is_some_and(|t| carries_no_rows(&t.operation)) => continue,
            (Some(_), Some(SCOPE_SINGLE | SCOPE_ROLLBACK)) => continue,
            (Some(op), Some(SCOPE_MULTI)) if op == own_op => continue,
            (Some(op), Some(SCOPE_MULTI)) => {
                let intent = get(PROP_INTENT).or_else(|| get(PROP_ATTEMPT)).unwrap_or_default();
                (op, intent)
            }
            _ => {
                return Ok(Vetted::Foreign(format!(
                    "table '{table}' version {version} was not written by a sluice operation; \
                     sluice will not publish rows it cannot attribute (repair the table, then retry)"
                )));
            }
        };
        if removal_in(&txns[i..], &op, &intent).is_some() {
            continue;
        }
        // Undecided, or rolled back without its removal in range yet: settle it.
        let mut pause = Duration::from_millis(50);
        loop {
            let outcome = sidecar::read_decision(lake, &op, &intent).await?.map(|d| d.outcome);
            if outcome == Some(Outcome::Forward) {
                break;
            }
            // A later attempt's intent (a redelivery) does not own this commit.
            let live_intent = match sidecar::read_intent(lake, &op).await?.filter(|i| i.attempt == intent) {
                Some(found) => Some(found),
                None if outcome.is_none() && manifest::read_latest(lake).await?.and_then(|m| m.tables.get(table).map(|p| p.version)).is_some_and(|p| p >= version) => break,
                None => None,
            };
            // Rolled back (or finished without a publish): find recovery's removal beyond `to`.
            if outcome == Some(Outcome::RollBack) || live_intent.is_none() {
                ds = lake.open_table(table, None).await?;
                let head = ds.version().version;
                if head > to {
                    let more = read_range(&ds, table, to + 1, head, seen).await?;
                    if let Some(at) = removal_in(&more, &op, &intent) {
                        let upto = more.iter().position(|(v, _)| *v == at).expect("found in range");
                        txns.extend(more.into_iter().take(upto + 1));
                        to = at;
                        break;
                    }
                }
                if live_intent.is_none() {
                    return Ok(Vetted::Foreign(format!(
                        "table '{table}' version {version} belongs to operation {op}, which finished without publishing \
                         it or removing its rows; sluice will not publish them (repair the table, then retry)"
                    )));
                }
            }
            if let Some(intent) = &live_intent
                && Utc::now() >= presumed_dead_at(intent.deadline, skew)
            {
                return Ok(Vetted::Expired(op));
            }
            if deadline.remaining() <= pause {
                return Err(Error::Blocked(format!(
                    "table '{table}' version {version} belongs to multi-table operation {op}, still undecided at \
                     this worker's deadline; `sluice recover` resolves it once its own deadline has passed"
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_POLL);
        }
    }
    Ok(Vetted::Pin(to))
}

async fn read_range(ds: &lance::Dataset, table: &str, from: u64, to: u64, seen: &Seen) -> Result<Vec<(u64, Option<Transaction>)>> {
    let mut out = Vec::with_capacity((to + 1).saturating_sub(from) as usize);
    for version in from..=to {
        out.push((version, seen.transaction(ds, table, version).await?));
    }
    Ok(out)
}

/// The version of recovery's commit removing the rows of operation `op`'s
/// intent attempt `intent`, if in `txns`.
fn removal_in(txns: &[(u64, Option<Transaction>)], op: &str, intent: &str) -> Option<u64> {
    txns.iter().find_map(|(v, t)| {
        let p = t.as_ref()?.transaction_properties.as_ref()?;
        let is = |k: &str, want: &str| p.get(k).map(String::as_str) == Some(want);
        (is(PROP_OP, op) && is(PROP_INTENT, intent) && is(PROP_SCOPE, SCOPE_ROLLBACK)).then_some(*v)
    })
}

/// Operations that only add fragments.
fn adds_only(op: &Operation) -> bool {
    matches!(op, Operation::Append { .. } | Operation::Overwrite { .. })
}

/// Operations that add no rows anyone could see (Lance's own bookkeeping).
fn carries_no_rows(op: &Operation) -> bool {
    matches!(op, Operation::ReserveFragments { .. } | Operation::CreateIndex { .. } | Operation::UpdateConfig { .. })
        || matches!(op, Operation::Overwrite { fragments, .. } if fragments.is_empty())
}
