//! Recovery: finish or undo the attempts of workers that died (docs/INVARIANTS.md
//! 4-8 and 12).
//!
//! A sweep lists `_ops/` (one LIST; nothing more when nothing is pending) and
//! takes up only intents whose owner's deadline plus the clock-skew margin has
//! passed. For each it takes a lease on that attempt (create-only, so one sweep
//! acts at a time), reads the intent again (a stale copy is never acted on),
//! proves what reached Lance by finding the attempt's own commits (its ids in
//! the transaction properties) after the pins it started from, then:
//!
//! - **converges** when the published state already shows every commit;
//! - **rolls forward** when every table committed: decide forward (naming the
//!   commits), publish them;
//! - **redoes** a multi-table load that committed some tables, when its
//!   sources are unchanged: commit the rest, decide forward, publish;
//! - **rolls back** otherwise: decide so, then look again (a late commit may
//!   have landed meanwhile), delete exactly the fragments the attempt added and
//!   release its sources;
//! - **refuses** what it cannot prove, keeping the intent.
//!
//! The decision is create-only and shared with the writer: whichever of them
//! decides first wins, the other follows. So a writer that wakes up after its
//! roll-back cannot publish, and its late commit is never passed by a pin
//! (`fence.rs`) but removed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::Utc;
use serde::Serialize;

use crate::audit::{self, AuditRecord, AuditTable, Verdict};
use crate::counting::RequestSnapshot;
use crate::deadline::{Deadline, presumed_dead_at};
use crate::error::{Error, Result};
use crate::failpoints;
use crate::fence::{self, MAX_POLL, Seen, Vetted};
use crate::stage;
use crate::known_manifest::LanceManifest;
use crate::lake::{Created, Lake};
use crate::manifest::{self, Goal, Manifest, Published, PublishOutcome, TablePin};
use crate::sidecar::{self, AttemptId, Claim, Decision, Fate, Intent, Lease, OpFiles, Outcome, SourceRef};
use crate::source::Source;

/// Default margin for clocks that disagree between workers.
pub const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(60);
/// Lance versions recovery reads per table to find an attempt's commits.
const MAX_SCAN: u64 = 100_000;
/// Rounds of vetting one publish: each resolves or removes one obstacle.
const MAX_VET_ROUNDS: u32 = 64;

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
    pub attempt: String,
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
    for (id, files) in ops.into_iter().filter(|(_, f)| f.intent) {
        match sidecar::read_intent(lake, &id).await {
            Ok(Some(intent)) => intents.push((intent, files)),
            Ok(None) => {}
            Err(e @ Error::Corrupt { .. }) => refused.push(OpReport {
                op: id.op,
                attempt: id.attempt,
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
    OpReport { op: intent.op.clone(), attempt: intent.attempt.clone(), kind: intent.kind.clone(), tables: intent.tables.keys().cloned().collect(), action }
}

/// Heal first: resolve expired intents that touch `tables` before a writer
/// goes on. One LIST when nothing is pending. Failures are the sweep's
/// business, not the writer's: they are logged, and the writer's own checks
/// keep it from publishing anything undecided.
pub async fn heal(lake: &Lake, tables: &BTreeSet<String>, clock_skew: Duration, deadline: &Deadline) -> Result<()> {
    let ops = sidecar::list_ops(lake).await?;
    let seen = Seen::default();
    for (id, files) in ops.into_iter().filter(|(_, f)| f.intent) {
        let intent = match sidecar::read_intent(lake, &id).await {
            Ok(Some(intent)) => intent,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(op = %id, error = %e, "heal-first: cannot read an intent; `sluice recover` reports it");
                continue;
            }
        };
        if !intent.tables.keys().any(|t| tables.contains(t)) || deadline.remaining().is_zero() {
            continue;
        }
        let opts = Options { clock_skew, dry_run: false };
        match resolve(lake, &intent, &files, opts, deadline, false, &seen).await {
            Ok(Action::Live { .. }) => {}
            Ok(action) => tracing::info!(op = %id, ?action, "heal-first resolved a dead worker's operation"),
            Err(e) => tracing::warn!(op = %id, error = %e, "heal-first could not resolve an operation"),
        }
    }
    Ok(())
}

/// Resolve attempt `id` if its owner is dead: what a writer does when an
/// attempt it waits for expires.
pub async fn resolve_attempt(lake: &Lake, id: &AttemptId, clock_skew: Duration, deadline: &Deadline) -> Result<Action> {
    let files = sidecar::list_ops(lake).await?.remove(id).unwrap_or_default();
    match sidecar::read_intent(lake, id).await? {
        Some(intent) => resolve(lake, &intent, &files, Options { clock_skew, dry_run: false }, deadline, false, &Seen::default()).await,
        None => Ok(Action::DoneByOther { verdict: None }),
    }
}

/// When the owner of `intent` (the writer, or the sweep holding the latest
/// lease) is presumed dead.
fn expires_at(intent: &Intent, lease: Option<&Lease>, skew: Duration) -> chrono::DateTime<Utc> {
    presumed_dead_at(lease.map_or(intent.deadline, |l| l.deadline.max(intent.deadline)), skew)
}

/// A worker waiting on another attempt: poll until that attempt's intent is
/// gone or its rows are shown ([`sidecar::shown_forward`]), resolving it
/// once its owner is presumed dead. Bounded by `deadline`.
pub(crate) async fn await_gone(lake: &Lake, id: &AttemptId, its_deadline: chrono::DateTime<Utc>, skew: Duration, deadline: &Deadline) -> Result<()> {
    await_settled(lake, id, None, its_deadline, skew, deadline).await
}

/// A worker waiting for a source another attempt holds (`held`, on ledger
/// key `key`): [`await_gone`], or until that claim is given back (a load
/// making way for an older one releases its claims and lives on).
pub(crate) async fn await_released(lake: &Lake, key: &str, held: &Claim, its_deadline: chrono::DateTime<Utc>, skew: Duration, deadline: &Deadline) -> Result<()> {
    let id = AttemptId::new(&held.op, &held.attempt);
    await_settled(lake, &id, Some((key, held)), its_deadline, skew, deadline).await
}

async fn await_settled(
    lake: &Lake,
    id: &AttemptId,
    claim: Option<(&str, &Claim)>,
    its_deadline: chrono::DateTime<Utc>,
    skew: Duration,
    deadline: &Deadline,
) -> Result<()> {
    let mut pause = Duration::from_millis(50);
    loop {
        let released = async {
            match claim {
                Some((key, held)) => sidecar::is_released(lake, key, held).await,
                None => Ok(false),
            }
        };
        // Its intent gone, its claim given back, or (its intent left to a
        // group's leader, or to recovery) its rows shown.
        let (exists, released, shown) = futures::join!(sidecar::intent_exists(lake, id), released, sidecar::shown_forward(lake, id));
        if !exists? || released? || shown? {
            return Ok(());
        }
        if Utc::now() >= presumed_dead_at(its_deadline, skew) {
            // Boxed here and below: recovery's future is large and would nest inside the writer's.
            let action = Box::pin(resolve_attempt(lake, id, skew, deadline)).await?;
            tracing::info!(op = %id, ?action, "took over a dead worker's operation");
            match action {
                Action::Decided { .. } | Action::DoneByOther { .. } => continue,
                Action::Refused { reason } => return Err(Error::Blocked(format!("operation {id} died and recovery refused it: {reason}"))),
                _ => {}
            }
        }
        if deadline.remaining() <= pause {
            return Err(Error::Blocked(format!("operation {id} is still running (its deadline is {its_deadline}); retry later")));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_POLL);
    }
}

/// What a publish may show: its pins, and the sources of the other
/// attempts' commits its vetting passed on the way to them.
pub(crate) struct Publishable {
    pub pins: BTreeMap<String, TablePin>,
    pub passed: Vec<crate::manifest::PublishedSource>,
}

/// Why a publish cannot go on now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Something a person must look at (a commit sluice cannot attribute, a refusal).
    Refuse(String),
    /// Something another pass (or a later retry) resolves.
    Wait(String),
}

impl Stop {
    pub(crate) fn into_error(self) -> Error {
        match self {
            Stop::Refuse(reason) | Stop::Wait(reason) => Error::Blocked(reason),
        }
    }
}

/// What to do about a dead attempt that stands in a publish's way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expired {
    /// Resolve it now (a writer).
    Resolve,
    /// Leave it to a later pass and report `Blocked` (a sweep: sweeps go oldest first).
    Defer,
}

/// The pins that publish `wanted` (table → the commit to show), each vetted
/// from its pin in `base` ([`fence::vet`]): dead attempts in the way are
/// resolved (or deferred), late commits removed, and a load decided forward
/// but not yet shown is **joined** — all its tables are published with ours,
/// in the same version, at its decided commits (their settings from its
/// intent). Bounded by `deadline` and [`MAX_VET_ROUNDS`]. `base` comes back
/// as the newest manifest the vetting read, if newer: the publish starts
/// there instead of losing a race it could already see (what it vetted from
/// the older base covers the newer one's, as after any lost race).
/// Comes back with the sources of the other attempts' commits it passed
/// (their decisions name them): the publish records them.
pub(crate) async fn publishable_pins(
    lake: &Lake,
    base: &mut Manifest,
    wanted: BTreeMap<String, TablePin>,
    by: &str,
    expired: Expired,
    skew: Duration,
    deadline: &Deadline,
) -> Result<Result<Publishable, Stop>> {
    let seen = Seen::default();
    let mut want = wanted;
    let mut joined = BTreeSet::new();
    let mut pause = Duration::from_millis(50);
    'rounds: for _ in 0..MAX_VET_ROUNDS {
        let mut pins = BTreeMap::new();
        for (table, goal) in want.clone() {
            let table = &table;
            let from = base.tables.get(table).map_or(0, |p| p.version);
            let vetted = match from < goal.version {
                true => fence::vet(lake, table, (from, goal.version), Some(by), &joined, skew, deadline, &seen).await?,
                false => Vetted::Pin(goal.version),
            };
            let id = match vetted {
                Vetted::Pin(v) => {
                    pins.insert(table.clone(), TablePin { version: v, ..goal.clone() });
                    continue;
                }
                Vetted::Foreign(reason) => return Ok(Err(Stop::Refuse(reason))),
                Vetted::Late { id, version } => {
                    if let Err(reason) = fence::remove_commit(lake, table, &id, by, version, deadline).await? {
                        return Ok(Err(Stop::Refuse(reason)));
                    }
                    continue 'rounds;
                }
                Vetted::Join(id) => {
                    let decision = sidecar::read_decision(lake, &id).await?;
                    let intent = sidecar::read_intent(lake, &id).await?;
                    let (Some(decision), Some(intent)) = (decision, intent) else { continue 'rounds };
                    for (t, v) in &decision.versions {
                        let Some(it) = intent.tables.get(t) else { continue };
                        let pin = want.entry(t.clone()).or_insert_with(|| TablePin::new(*v, it.mode, it.key.clone()));
                        pin.version = pin.version.max(*v);
                    }
                    tracing::info!(table, load = %id, "a load decided forward stands before this commit: publishing it too");
                    joined.insert(id);
                    continue 'rounds;
                }
                Vetted::Expired(id) => id,
            };
            if expired == Expired::Defer {
                return Ok(Err(Stop::Wait(format!("operation {id}, also dead, has undecided commits on table '{table}' before this one's"))));
            }
            match Box::pin(resolve_attempt(lake, &id, skew, deadline)).await? {
                Action::Decided { .. } | Action::DoneByOther { .. } => continue 'rounds,
                Action::Refused { reason } => {
                    return Ok(Err(Stop::Refuse(format!("table '{table}': operation {id} stands before this commit and recovery refused it: {reason}"))));
                }
                // Another sweep holds it, or it could not be finished yet: wait.
                _ if deadline.remaining() > pause => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_POLL);
                    continue 'rounds;
                }
                _ => {
                    return Ok(Err(Stop::Wait(format!(
                        "table '{table}': dead operation {id} stands before this commit and was not resolved by this worker's deadline; run `sluice recover`"
                    ))));
                }
            }
        }
        *base = seen.newest_from(base.clone());
        return Ok(Ok(Publishable { pins, passed: seen.passed() }));
    }
    Err(Error::Contention { what: "vetting a publish", attempts: MAX_VET_ROUNDS, last: "tables kept gaining undecided commits".into() })
}

/// Resolve `intent` if its owner is presumed dead. A sweep (`join_sweeps`)
/// waits for another sweep's live lease to end in an outcome; a writer healing
/// first does not (its own checks keep it from publishing anything undecided).
async fn resolve(lake: &Lake, intent: &Intent, files: &OpFiles, opts: Options, deadline: &Deadline, join_sweeps: bool, seen: &Seen) -> Result<Action> {
    let id = AttemptId::new(&intent.op, &intent.attempt);
    let mut leases = Vec::with_capacity(files.leases.len());
    for k in &files.leases {
        match sidecar::read_lease(lake, &id, *k).await {
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
        id: id.clone(),
        lease: Lease {
            op: intent.op.clone(),
            intent: intent.attempt.clone(),
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
        // Another sweep holds a live lease on it: wait for its outcome, or
        // for its lease to run out (a sweep that died), then take over.
        if let Some(action) = r.await_other(Some(expires)).await? {
            return Ok(action);
        }
        r.lease.taken_at = Utc::now();
    }
    if opts.dry_run {
        let state = r.inspect().await?;
        return match r.plan(&state).await? {
            Plan::Refuse(reason) => Ok(Action::Refused { reason }),
            Plan::Follow(group) => Ok(Action::Deferred { reason: format!("it joined group {group}, not decided yet; its fate is the group's") }),
            // What the real run's publish would meet: the same answer, before acting.
            Plan::Forward(versions) if !state.published(&versions) => Ok(match r.vet_dry(&state, &versions).await? {
                Some(action) => action,
                None => Action::Planned { verdict: Verdict::RolledForward },
            }),
            plan => Ok(Action::Planned { verdict: plan.verdict(&state) }),
        };
    }
    failpoints::hit(failpoints::RECOVER_BEFORE_LEASE)?;
    match sidecar::take_lease(lake, &r.lease).await? {
        Created::Mine => {}
        // Another sweep took over first: wait for its outcome.
        Created::Theirs(_) | Created::Gone => return Ok(r.await_other(None).await?.expect("waited until the intent was gone or the deadline")),
    }
    r.leases.push(r.lease.k);
    failpoints::hit(failpoints::RECOVER_AFTER_LEASE)?;
    // What we read before the lease may be stale: act only on what is there now.
    if !sidecar::intent_exists(lake, &id).await? {
        sidecar::remove_lease(lake, &id, r.lease.k).await?;
        let rec = audit::read(lake, &id.op, &id.attempt).await?;
        return Ok(Action::DoneByOther { verdict: rec.map(|r| r.verdict) });
    }
    let action = r.run().await;
    // Refused or deferred, it acts no more: the next pass (or this sweep,
    // meeting it again after resolving it from another attempt's recovery)
    // need not wait out this lease. Any other end finished the intent, or
    // is an error that leaves the lease as a crash would.
    if let Ok(Action::Refused { .. } | Action::Deferred { .. }) = &action
        && let Err(e) = sidecar::remove_lease(lake, &id, r.lease.k).await
    {
        tracing::warn!(op = %id, error = %e, "could not remove this sweep's lease; the next pass waits it out");
    }
    action
}

#[derive(Debug)]
struct State {
    /// Per table, the attempt's commits not yet removed.
    commits: BTreeMap<String, Vec<(u64, bool)>>,
    /// Recovery's earlier commits removing the attempt's rows.
    removals: BTreeMap<String, u64>,
    latest: Manifest,
    decision: Option<Decision>,
    /// Multi-table: the sources whose claims this attempt holds, per table. A
    /// table whose sources other operations had already ingested was never
    /// going to be committed by this one.
    owned: BTreeMap<String, Vec<SourceRef>>,
    /// A member (its decision `Joined`): its group, and its fate through it.
    /// Its own commits are then strays: its rows ride in the group's commit.
    group: Option<(AttemptId, Fate)>,
    /// A group: the members each of its commits lists, by table and version.
    members: BTreeMap<String, BTreeMap<u64, Option<Vec<AttemptId>>>>,
}

impl State {
    /// The one commit per table that goes forward: the decided ones, or else
    /// each table's first (several commits of one attempt on a table hold the
    /// same rows — Lance retried an ambiguous PUT — so the rest are duplicates).
    fn forward_versions(&self) -> BTreeMap<String, u64> {
        if let Some(d) = self.decision.as_ref().filter(|d| d.outcome == Outcome::Forward) {
            return d.versions.clone();
        }
        if let Some((_, fate)) = &self.group {
            return match fate {
                Fate::Forward(d) => d.versions.clone(),
                _ => BTreeMap::new(),
            };
        }
        self.commits.iter().filter_map(|(t, c)| c.first().map(|(v, _)| (t.clone(), *v))).collect()
    }

    fn committed_tables(&self) -> usize {
        self.commits.values().filter(|c| !c.is_empty()).count()
    }

    fn published(&self, versions: &BTreeMap<String, u64>) -> bool {
        versions.iter().all(|(t, v)| self.latest.tables.get(t).is_some_and(|p| p.version >= *v))
    }
}

enum Publishing {
    Done(PublishOutcome),
    /// Another attempt's commits must be decided first: a later pass.
    Wait(String),
    /// A commit recovery cannot attribute: a person must look.
    Refuse(String),
}

enum Plan {
    Forward(BTreeMap<String, u64>),
    /// A member whose group is undecided: its fate is the group's.
    Follow(AttemptId),
    Redo(BTreeMap<String, Vec<SourceRef>>),
    RollBack(String),
    Refuse(String),
}

impl Plan {
    fn verdict(&self, state: &State) -> Verdict {
        match self {
            Plan::Forward(v) if state.published(v) => Verdict::Converged,
            Plan::Forward(_) => Verdict::RolledForward,
            Plan::Redo(_) => Verdict::Redone,
            Plan::RollBack(_) => Verdict::RolledBack,
            Plan::Refuse(_) | Plan::Follow(_) => unreachable!("a refusal, or a wait on a group, has no verdict"),
        }
    }
}

struct Recovery<'a> {
    lake: &'a Lake,
    intent: &'a Intent,
    id: AttemptId,
    lease: Lease,
    leases: Vec<u32>,
    deadline: &'a Deadline,
    skew: Duration,
    seen: &'a Seen,
}

impl Recovery<'_> {
    fn multi(&self) -> bool {
        self.intent.tables.len() > 1
    }

    /// The table and start pin of an ingest that may publish without waiting
    /// for its decision (`ingest.rs`): one table, published when it started.
    fn fast_path_pin(&self) -> Option<(&str, u64)> {
        match (self.intent.kind.as_str(), self.intent.tables.iter().next()) {
            ("ingest", Some((table, it))) if !self.multi() => it.start_pin.map(|p| (table.as_str(), p)),
            _ => None,
        }
    }

    async fn run(&self) -> Result<Action> {
        let mut state = self.inspect().await?;
        let mut plan = self.plan(&state).await?;
        // A single-table ingest whose commit lands right after its start pin
        // publishes beside its decision, not after it: before deciding it
        // rolled back, take that version and look again.
        if state.decision.is_none()
            && matches!(plan, Plan::RollBack(_))
            && let Some((table, after)) = self.fast_path_pin()
        {
            failpoints::hit(failpoints::RECOVER_BEFORE_FENCE)?;
            fence::take_next_version(self.lake, table, after, &self.id, &self.lease.attempt, self.deadline).await?;
            state = self.inspect().await?;
            plan = self.plan(&state).await?;
        }
        // Decide before acting; a decision lost to the writer or another sweep is followed.
        if state.decision.is_none() {
            let outcome = match &plan {
                Plan::Forward(_) => Some(Outcome::Forward),
                Plan::RollBack(_) => Some(Outcome::RollBack),
                Plan::Redo(_) | Plan::Refuse(_) | Plan::Follow(_) => None,
            };
            if let Some(outcome) = outcome {
                let versions = match &plan {
                    Plan::Forward(v) => v.clone(),
                    _ => BTreeMap::new(),
                };
                let members = match self.members_of(&state, &versions).await? {
                    Ok(members) => members,
                    Err(reason) => return Ok(Action::Refused { reason }),
                };
                if self.decide(outcome, versions, members).await?.is_some() {
                    // Lost to the writer, another sweep, a vetter or a group's take: follow it.
                    state = self.inspect().await?;
                    plan = self.plan(&state).await?;
                } else if outcome == Outcome::RollBack {
                    // A commit may have landed between our look and our decision: look again.
                    state = self.inspect().await?;
                }
            }
        }
        // A member's fate is its group's (joined before we looked, or since):
        // resolve the group first if its owner is dead.
        if let Plan::Follow(group) = &plan {
            let action = Box::pin(resolve_attempt(self.lake, group, self.skew, self.deadline)).await?;
            state = self.inspect().await?;
            plan = self.plan(&state).await?;
            if let Plan::Follow(group) = &plan {
                return Ok(match action {
                    Action::Refused { reason } => Action::Refused { reason: format!("it joined group {group}, which recovery refused: {reason}") },
                    Action::Decided { .. } | Action::DoneByOther { .. } => {
                        Action::Refused { reason: format!("it joined group {group}, which ended without a decision; recovery will not guess") }
                    }
                    _ => Action::Deferred { reason: format!("it joined group {group}, which is not decided yet; its fate is the group's") },
                });
            }
        }
        // A member's own commits are strays: never published (a roll-back removes them below).
        if state.group.is_some()
            && matches!(plan, Plan::Forward(_))
            && let Err(reason) = self.remove_rows(&mut state).await?
        {
            return Ok(Action::Refused { reason });
        }
        let (verdict, reason, manifest_version) = match plan {
            Plan::Refuse(reason) => return Ok(Action::Refused { reason }),
            Plan::Follow(_) => unreachable!("a member waits for its group above"),
            Plan::Forward(versions) => match self.publish(&state, &versions).await? {
                Publishing::Wait(reason) => return Ok(Action::Deferred { reason }),
                Publishing::Refuse(reason) => return Ok(Action::Refused { reason }),
                Publishing::Done(PublishOutcome::AlreadyCovered { version }) => {
                    (Verdict::Converged, "the published state already showed every commit".into(), Some(version))
                }
                Publishing::Done(PublishOutcome::Published { version }) => {
                    (Verdict::RolledForward, "every table was committed; recovery published them".into(), Some(version))
                }
            },
            Plan::Redo(missing) => {
                let names: Vec<String> = missing.keys().cloned().collect();
                let mut versions = state.forward_versions();
                match Box::pin(stage::redo(self.lake, self.intent, &self.lease.attempt, *self.deadline, &missing)).await {
                    Ok(None) => return Ok(Action::Deferred { reason: "a source changed while being redone; the next pass rolls back".into() }),
                    Ok(Some(done)) => versions.extend(done),
                    // It would fail the same way on every pass: roll the load back instead.
                    Err(e @ (Error::BadInput(_) | Error::Usage(_))) => {
                        if let Some(theirs) = self.decide(Outcome::RollBack, BTreeMap::new(), None).await? {
                            return Ok(Action::Refused { reason: format!("the redo failed ({e}), and the operation was decided {:?} by {} meanwhile", theirs.outcome, theirs.by) });
                        }
                        state = self.inspect().await?;
                        if let Err(reason) = self.remove_rows(&mut state).await? {
                            return Ok(Action::Refused { reason });
                        }
                        failpoints::hit(failpoints::RECOVER_AFTER_EFFECTS)?;
                        self.record(Verdict::RolledBack, format!("tables {names:?} cannot be redone: {e}"), None, &state).await?;
                        release_sources(self.lake, self.intent).await?;
                        sidecar::finish_recovered(self.lake, &self.id, &self.leases).await?;
                        return Ok(Action::Decided { verdict: Verdict::RolledBack, manifest_version: None });
                    }
                    Err(e) => return Err(e),
                }
                if let Some(theirs) = self.decide(Outcome::Forward, versions.clone(), None).await? {
                    return Ok(Action::Refused { reason: format!("redone, but the operation was decided {:?} by {} meanwhile", theirs.outcome, theirs.by) });
                }
                match self.publish(&state, &versions).await? {
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
        let reason = match &state.group {
            Some((group, _)) => format!("{reason} (its rows ride in group {group}'s commit)"),
            None => reason,
        };
        failpoints::hit(failpoints::RECOVER_AFTER_EFFECTS)?;
        self.record(verdict, reason, manifest_version, &state).await?;
        failpoints::hit(failpoints::RECOVER_BEFORE_FINISH)?;
        if verdict == Verdict::RolledBack {
            release_sources(self.lake, self.intent).await?;
        }
        sidecar::finish_recovered(self.lake, &self.id, &self.leases).await?;
        Ok(Action::Decided { verdict, manifest_version })
    }

    /// What reached Lance (the attempt's commits after the pins it started
    /// from), what reached the manifest, and the decision.
    async fn inspect(&self) -> Result<State> {
        let mut commits = BTreeMap::new();
        let mut removals = BTreeMap::new();
        let mut members = BTreeMap::new();
        for (table, it) in &self.intent.tables {
            let Some(history) = fence::commits_of(self.lake, table, it.start_pin.unwrap_or(0), &self.id, self.seen, MAX_SCAN).await? else { continue };
            if let Some((v, _)) = history.removals.last() {
                removals.insert(table.clone(), *v);
            }
            commits.insert(table.clone(), history.standing());
            members.insert(table.clone(), history.members);
        }
        let latest = manifest::read_latest(self.lake).await?.ok_or_else(|| Error::Corrupt {
            what: "manifest",
            path: self.lake.uri().to_string(),
            reason: "an operation is pending but the lake has no manifest".into(),
        })?;
        let decision = sidecar::read_decision(self.lake, &self.id).await?;
        let mut owned = BTreeMap::<String, Vec<SourceRef>>::new();
        if self.multi() {
            for s in &self.intent.sources {
                if !sidecar::held_by(self.lake, &sidecar::source_key(&s.id), &self.intent.attempt).await?.is_empty() {
                    owned.entry(s.table.clone()).or_default().push(s.clone());
                }
            }
        }
        let group = match &decision {
            Some(d) if d.outcome == Outcome::Joined => {
                let fate = sidecar::fate_of(self.lake, &self.id, d.clone()).await?;
                d.group.clone().map(|g| (g, fate))
            }
            _ => None,
        };
        Ok(State { commits, removals, latest, decision, owned, group, members })
    }

    async fn plan(&self, state: &State) -> Result<Plan> {
        let committed = state.committed_tables();
        // Tables this attempt had to commit: all, or (multi-table) those it holds sources for.
        let missing: BTreeMap<String, Vec<SourceRef>> = match self.multi() {
            true => state.owned.iter().filter(|(t, _)| state.commits.get(*t).is_none_or(|c| c.is_empty())).map(|(t, s)| (t.clone(), s.clone())).collect(),
            false => BTreeMap::new(),
        };
        let names = || missing.keys().cloned().collect::<Vec<_>>();
        if let Some((group, fate)) = &state.group {
            return Ok(match fate {
                Fate::Forward(d) if d.versions.keys().all(|t| self.intent.tables.contains_key(t)) => Plan::Forward(d.versions.clone()),
                Fate::Forward(d) => Plan::Refuse(format!("its group {group} was decided forward on tables {:?}, not this operation's; recovery will not guess", d.versions)),
                Fate::RolledBack => Plan::RollBack(format!("its group {group} was rolled back, or its commit left this one out; the sources are released for redelivery")),
                Fate::InGroup(_) | Fate::Undecided => Plan::Follow(group.clone()),
            });
        }
        Ok(match state.decision.as_ref().map(|d| d.outcome) {
            Some(Outcome::RollBack) => Plan::RollBack("decided to roll back; finishing it".into()),
            Some(Outcome::Joined) => Plan::Refuse("it joined a group its decision does not name; recovery will not guess".into()),
            // Published, it would read to every member as rolled back.
            Some(Outcome::Forward) if self.intent.kind == sidecar::KIND_GROUP && state.decision.as_ref().is_some_and(|d| d.members.is_none()) => {
                Plan::Refuse("a group decided forward without a member list; recovery will not guess who its commit carries".into())
            }
            Some(Outcome::Forward) => {
                let versions = state.decision.as_ref().map(|d| d.versions.clone()).unwrap_or_default();
                let absent: Vec<&String> = versions.iter().filter(|(t, v)| !state.commits.get(*t).is_some_and(|c| c.iter().any(|(cv, _)| cv == *v))).map(|(t, _)| t).collect();
                if versions.is_empty() || !absent.is_empty() {
                    Plan::Refuse(format!("decided forward, but tables {absent:?} do not show the decided commits; recovery will not guess"))
                } else {
                    Plan::Forward(versions)
                }
            }
            None if committed == 0 => Plan::RollBack("nothing was committed; the sources are released for redelivery".into()),
            None if missing.is_empty() => Plan::Forward(state.forward_versions()),
            None => match self.changed_source(&missing).await? {
                None => Plan::Redo(missing),
                Some(why) => Plan::RollBack(format!("tables {:?} were never committed and cannot be redone: {why}", names())),
            },
        })
    }

    /// Why `sources` cannot be read again as the writer read them.
    async fn changed_source(&self, sources: &BTreeMap<String, Vec<SourceRef>>) -> Result<Option<String>> {
        for s in sources.values().flatten() {
            match Source::resolve_pinned(&s.uri, s.pin.as_ref()).await {
                Ok(now) if now.identity == s.identity => {}
                Ok(_) => return Ok(Some(format!("source {} changed since the load read it", s.uri))),
                Err(e) => return Ok(Some(format!("source {} cannot be read: {e}", s.uri))),
            }
        }
        Ok(None)
    }

    /// The members a group's forward decision must name: those its commit's
    /// tag lists, each bound to the group (`None` for any other attempt);
    /// `Err(reason)` when they cannot be.
    async fn members_of(&self, state: &State, versions: &BTreeMap<String, u64>) -> Result<std::result::Result<Option<Vec<AttemptId>>, String>> {
        if self.intent.kind != sidecar::KIND_GROUP || versions.is_empty() {
            return Ok(Ok(None));
        }
        let listed = versions.iter().map(|(t, v)| state.members.get(t).and_then(|m| m.get(v)).cloned().flatten()).collect::<Option<Vec<_>>>();
        let Some([members]) = listed.as_deref() else {
            return Ok(Err(format!("group {}'s commit at {versions:?} lists no members readably; recovery will not guess who it carries", self.id)));
        };
        Ok(match sidecar::unbound_member(self.lake, &self.id, members).await? {
            Some(why) => Err(format!("group {}'s commit at {versions:?} cannot go forward: {why}; recovery will not guess", self.id)),
            None => Ok(Some(members.clone())),
        })
    }

    /// Record `outcome` create-only (a group's forward with its `members`);
    /// returns the decision that won instead, if another did.
    async fn decide(&self, outcome: Outcome, versions: BTreeMap<String, u64>, members: Option<Vec<AttemptId>>) -> Result<Option<Decision>> {
        self.deadline.check("recording a recovery decision")?;
        // No sources: recovery publishes what it decides itself.
        let decision = Decision { members, ..Decision::new(&self.intent.op, &self.intent.attempt, &self.lease.attempt, outcome, "recovery", versions) };
        let won = match sidecar::decide(self.lake, &decision).await? {
            Created::Mine => None,
            Created::Theirs(theirs) => Some(theirs),
            Created::Gone => return Err(Error::Blocked(format!("the decision of operation {} vanished while being read", self.id))),
        };
        failpoints::hit(failpoints::RECOVER_AFTER_DECISION)?;
        Ok(won)
    }

    /// Publish the decided commits, unless other commits stand in the way.
    async fn publish(&self, state: &State, versions: &BTreeMap<String, u64>) -> Result<Publishing> {
        // Where Lance keeps each commit's manifest, so that the next writer
        // opens it without Lance's HEAD: one open per table, here, off every
        // writer's path (what the writer would have recorded, had it lived).
        // Only an aid: a table that cannot be opened now is pinned without it.
        let opened = futures::future::join_all(versions.iter().map(|(t, v)| self.lake.open_table(t, Some(*v)))).await;
        let wanted = versions
            .iter()
            .zip(opened)
            .map(|((t, v), ds)| {
                let it = &self.intent.tables[t];
                let known = ds.ok().and_then(|ds| LanceManifest::of(&ds));
                (t.clone(), TablePin { lance_manifest: known, ..TablePin::new(*v, it.mode, it.key.clone()) })
            })
            .collect();
        let mut base = state.latest.clone();
        let Publishable { pins, passed } = match publishable_pins(self.lake, &mut base, wanted, &self.lease.attempt, Expired::Defer, self.skew, self.deadline).await {
            Ok(Ok(publishable)) => publishable,
            Ok(Err(Stop::Refuse(reason))) => return Ok(Publishing::Refuse(reason)),
            // Sweeps go oldest first; a heal or the next pass resolves what stands in the way.
            Ok(Err(Stop::Wait(reason))) | Err(Error::Blocked(reason)) => return Ok(Publishing::Wait(reason)),
            Err(e) => return Err(e),
        };
        let goal = Goal {
            published: Published {
                op: self.intent.op.clone(),
                attempt: self.lease.attempt.clone(),
                kind: format!("recovery:{}", self.intent.kind),
                tables: pins.iter().map(|(t, p)| (t.clone(), p.version)).collect(),
                sources: self.intent.sources.len(),
                source_list: {
                    let mut list = self.intent.sources.iter().map(SourceRef::published).collect();
                    // A group's decision names its members' sources (its intent names none).
                    let decided = match &state.group {
                        Some((_, Fate::Forward(group))) => Some(group),
                        _ => state.decision.as_ref(),
                    };
                    manifest::add_sources(&mut list, decided.map(|d| d.sources.clone()).unwrap_or_default().into_iter().chain(passed));
                    list
                },
            },
            pins,
            changes: self.intent.tables.iter().filter(|(_, it)| !it.changes.is_empty()).map(|(t, it)| (t.clone(), it.changes.clone())).collect(),
        };
        Ok(Publishing::Done(manifest::publish(self.lake, base, &goal, self.deadline).await?))
    }

    /// A dry run of [`Self::publish`]'s vetting: writes nothing, waits for nothing.
    async fn vet_dry(&self, state: &State, versions: &BTreeMap<String, u64>) -> Result<Option<Action>> {
        for (table, &commit) in versions {
            let from = state.latest.tables.get(table).map_or(0, |p| p.version);
            if from >= commit {
                continue;
            }
            match fence::vet(self.lake, table, (from, commit), None, &BTreeSet::new(), self.skew, self.deadline, self.seen).await {
                Ok(Vetted::Pin(_) | Vetted::Late { .. } | Vetted::Join(_)) => {}
                Ok(Vetted::Expired(id)) => return Ok(Some(Action::Deferred { reason: format!("operation {id}, also dead, has undecided commits on table '{table}' before this one's") })),
                Ok(Vetted::Foreign(reason)) => return Ok(Some(Action::Refused { reason })),
                Err(Error::Blocked(reason)) => return Ok(Some(Action::Deferred { reason })),
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Remove every standing commit of the attempt (invariant 8); never restore.
    async fn remove_rows(&self, state: &mut State) -> Result<Result<(), String>> {
        for (table, commits) in &state.commits {
            for &(version, _) in commits {
                match fence::remove_commit(self.lake, table, &self.id, &self.lease.attempt, version, self.deadline).await? {
                    Ok(at) => {
                        state.removals.insert(table.clone(), at);
                    }
                    Err(reason) => return Ok(Err(reason)),
                }
            }
        }
        Ok(Ok(()))
    }

    async fn record(&self, verdict: Verdict, reason: String, manifest_version: Option<u64>, state: &State) -> Result<()> {
        let forward = state.forward_versions();
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
                    let committed = forward.get(t).copied().or_else(|| state.commits.get(t).and_then(|c| c.first()).map(|(v, _)| *v));
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
                self.id, earlier.verdict, earlier.by
            ))),
            Created::Gone => Err(Error::Blocked(format!("the audit record of operation {} vanished while being read", self.id))),
        }
    }

    /// Another sweep holds the lease: wait (within our deadline) for the intent
    /// to go, then report what was recorded. `None`: its lease ran out at
    /// `until` with the attempt unfinished (that sweep died).
    async fn await_other(&self, until: Option<chrono::DateTime<Utc>>) -> Result<Option<Action>> {
        let mut pause = Duration::from_millis(50);
        while sidecar::intent_exists(self.lake, &self.id).await? {
            if until.is_some_and(|t| Utc::now() >= t) {
                return Ok(None);
            }
            if self.deadline.remaining() <= pause {
                return Ok(Some(Action::Deferred { reason: "another sweep is resolving it".into() }));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_POLL);
        }
        let rec = audit::read(self.lake, &self.id.op, &self.id.attempt).await?;
        Ok(Some(Action::DoneByOther { verdict: rec.map(|r| r.verdict) }))
    }
}

/// Give the sources of a rolled-back attempt back for redelivery: release
/// every claim generation it holds (only after its `roll_back` decision).
pub(crate) async fn release_sources(lake: &Lake, intent: &Intent) -> Result<()> {
    let mut ids: Vec<&str> = intent.sources.iter().map(|s| s.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    for id in ids {
        let key = sidecar::source_key(id);
        for generation in sidecar::held_by(lake, &key, &intent.attempt).await? {
            sidecar::release(lake, &key, generation, &intent.attempt).await?;
        }
    }
    Ok(())
}
