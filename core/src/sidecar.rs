//! Ownership: who owns each coordination object, and the only ways to act on it.
//!
//! Every object an operation writes is named by the **attempt** that owns it
//! (an attempt is one run of an operation: a delivery, a redelivery; a uuid
//! minted at its start). A worker only ever deletes or releases objects that
//! carry its own attempt id, or the attempt it holds a recovery lease on. So a
//! worker that stalls for longer than every timeout and wakes up can touch
//! nothing of a newer attempt of the same operation: no read-then-delete race
//! exists, because no name is shared between attempts.
//!
//! - `_ops/<op>.<attempt>.intent.json`: written create-only before any effect
//!   (invariant 4), deleted last, after the attempt's outcome is decided and
//!   carried out (published, or rolled back and released). Only in-flight
//!   attempts have one, so listing `_ops/` costs one LIST however long the
//!   history.
//! - `_ops/<op>.<attempt>.sweep-<k>.json`: recovery's lease on that attempt,
//!   create-only with k = 1, 2, ...: one sweep acts on an attempt at a time,
//!   until its own deadline; the next takes lease k + 1 after that.
//! - `_decisions/<op>.<attempt>.json`: the one decision on the attempt,
//!   `forward` (naming the exact Lance versions of its commits) or
//!   `roll_back`, create-only: the writer decides forward after its commits or
//!   roll_back when it gives up; recovery decides either way once the writer is
//!   presumed dead. Exactly one of them wins; everyone follows the winner. Kept
//!   for good: a decision that could be deleted could be won again by a
//!   worker that stalled past its deletion. A third outcome, `joined`, binds
//!   an ingest to a group attempt whose one commit carries its rows: its
//!   fate is then the group's ([`fate`]).
//! - `_ingested/<source-id>/<gen>.json`: generation `gen` of the claim on a
//!   source, create-only, naming the attempt that holds it. Never deleted.
//! - `_ingested/<source-id>/<gen>.released-<attempt>.json`: the holder's
//!   release of generation `gen` (written only by the holder attempt, or by
//!   recovery on its behalf, after a `roll_back` decision). A released
//!   generation lets the next delivery claim generation `gen + 1`.
//!
//! - `_adopted/<table>/<version>.json`: an operator accepted the commit at that
//!   version, which another tool made (`sluice adopt`). Kept.
//!
//! The state of a source follows from those objects, read in this order:
//! a release of the newest generation exists (released: deliver again), else
//! its holder has an intent (in flight), else its holder's fate is rolled
//! back (released), else the holder published it (an attempt deletes its
//! intent only after publishing or after releasing).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::lake::{Created, Lake};
use crate::manifest::Mode;

pub(crate) const OPS: &str = "_ops";
const CLAIMS: &str = "_ingested";
const MAINTENANCE: &str = "_maintenance";
const INTENT_SUFFIX: &str = ".intent.json";
const DECISIONS: &str = "_decisions";
const LEASE_INFIX: &str = ".sweep-";
const RELEASE_INFIX: &str = ".released-";
const ADOPTED: &str = "_adopted";
/// Claim generations one call tries before reporting contention.
const MAX_CLAIM_ROUNDS: u32 = 8;
/// Decisions read at once (a group's members).
const READS_AT_ONCE: usize = 16;

/// Lance transaction properties that tie a commit to its operation.
pub const PROP_OP: &str = "sluice.op";
pub const PROP_ATTEMPT: &str = "sluice.attempt";
/// The attempt of the intent the commit belongs to (a sweep's redo or
/// roll-back commits carry the dead writer's intent attempt here).
pub const PROP_INTENT: &str = "sluice.intent";
/// `single`, `multi`, `rollback` (a commit removing an attempt's rows),
/// `columns` (a schema change adding nullable columns, no data), `fence`
/// (recovery taking the version a single-table ingest could have published
/// beside its decision: a config update that changes nothing) or `group`
/// (one commit carrying several single-table ingests' rows, by a group
/// attempt of its own: [`PROP_MEMBERS`] names them).
pub const PROP_SCOPE: &str = "sluice.scope";
/// On a `rollback` commit: the Lance version whose rows it removes.
pub const PROP_REMOVES: &str = "sluice.removes";
/// On a `group` commit: its members, the attempts whose rows it carries (a
/// JSON list of `{op, attempt}`).
pub const PROP_MEMBERS: &str = "sluice.members";
pub const SCOPE_SINGLE: &str = "single";
pub const SCOPE_MULTI: &str = "multi";
pub const SCOPE_ROLLBACK: &str = "rollback";
pub const SCOPE_COLUMNS: &str = "columns";
pub const SCOPE_FENCE: &str = "fence";
pub const SCOPE_GROUP: &str = "group";

/// The Lance transaction properties of a commit by operation `op`: the
/// committer's `attempt`, the `intent` attempt it belongs to, and its scope.
pub fn commit_properties(op: &str, attempt: &str, intent: &str, scope: &str) -> std::collections::HashMap<String, String> {
    [(PROP_OP, op), (PROP_ATTEMPT, attempt), (PROP_INTENT, intent), (PROP_SCOPE, scope)].into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// The Lance transaction properties of group `group`'s commit carrying `members`' rows.
pub fn group_properties(group: &AttemptId, members: &[AttemptId]) -> std::collections::HashMap<String, String> {
    let mut properties = commit_properties(&group.op, &group.attempt, &group.attempt, SCOPE_GROUP);
    properties.insert(PROP_MEMBERS.to_string(), serde_json::to_string(members).expect("attempt ids serialize"));
    properties
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntentTable {
    /// The pin the operation started from (a lower bound: it may be stale).
    pub start_pin: Option<u64>,
    pub mode: Mode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The format the caller forced (`--format`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// How its CSV sources are written, if not the defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csv: Option<crate::dialect::CsvOptions>,
    /// What a table it creates does with partition segments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<crate::partitions::Partitions>,
    /// The declared schema of a table this operation may create (`--schema`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<serde_json::Value>,
    /// The settings changes its publish carries (an index created or dropped).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<crate::settings::Change>,
    /// What its rows do with what the table lacks (a redo does the same).
    #[serde(default, skip_serializing_if = "crate::settings::Evolution::is_strict")]
    pub evolution: crate::settings::Evolution,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRef {
    pub table: String,
    pub uri: String,
    /// The S3 version the caller named, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<crate::source::ObjectPin>,
    /// Stable id of this exact source version (see `source.rs`).
    pub id: String,
    pub identity: String,
}

/// The kind of a group's intent: one commit carrying its members' rows.
pub const KIND_GROUP: &str = "group";

impl SourceRef {
    /// As a publish records it (its bytes and rows unknown here).
    pub fn published(&self) -> crate::manifest::PublishedSource {
        crate::manifest::PublishedSource {
            table: self.table.clone(),
            uri: self.uri.clone(),
            id: self.id.clone(),
            identity: self.identity.clone(),
            bytes: None,
            rows: None,
            op: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    pub op: String,
    pub attempt: String,
    /// `ingest`, `load`, `optimize`, `index` or [`KIND_GROUP`].
    pub kind: String,
    pub tables: BTreeMap<String, IntentTable>,
    pub sources: Vec<SourceRef>,
    pub started_at: DateTime<Utc>,
    pub deadline: DateTime<Utc>,
    /// host:pid of the worker, for people reading `status`.
    pub worker: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Forward,
    RollBack,
    /// The attempt's rows ride in a group's commit (`Decision::group`): the
    /// group's decision is its fate ([`fate`]). Won create-only before that
    /// commit, so the attempt can be named forward through no other.
    Joined,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub op: String,
    /// The attempt this decides.
    pub intent: String,
    /// The decider's attempt (the writer's own, or a sweep's).
    pub attempt: String,
    pub outcome: Outcome,
    /// `writer` or `recovery`.
    pub by: String,
    pub at: DateTime<Utc>,
    /// Forward: the Lance version of the attempt's one commit on each table.
    /// Any other commit of the attempt is a late duplicate, never published.
    pub versions: BTreeMap<String, u64>,
    /// Joined: the group attempt whose commit carries this attempt's rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<AttemptId>,
    /// A group's forward decision: every attempt whose rows its commit
    /// carries. Never absent on one (a member missing from it is rolled back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<AttemptId>>,
    /// Forward: the sources its commits show, so a publish that passes them
    /// records them (the attempt's own publish may then find its goal covered).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<crate::manifest::PublishedSource>,
}

impl Decision {
    /// A decision of `outcome` on attempt `intent` of `op`, by `by` (its
    /// role) in attempt `attempt`, naming `versions`; no group.
    pub fn new(op: &str, intent: &str, attempt: &str, outcome: Outcome, by: &str, versions: BTreeMap<String, u64>) -> Decision {
        Decision {
            op: op.to_string(),
            intent: intent.to_string(),
            attempt: attempt.to_string(),
            outcome,
            by: by.to_string(),
            at: Utc::now(),
            versions,
            group: None,
            members: None,
            sources: Vec::new(),
        }
    }

    /// Is the commit at `version` of `table` the one this decision sends forward?
    pub fn forwards(&self, table: &str, version: u64) -> bool {
        self.outcome == Outcome::Forward && self.versions.get(table) == Some(&version)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub op: String,
    pub attempt: String,
    pub source: String,
    /// The table the source goes to.
    #[serde(default)]
    pub table: String,
    #[serde(default)]
    pub generation: u32,
    pub claimed_at: DateTime<Utc>,
}

/// Recovery's lease on an attempt whose owner is presumed dead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub op: String,
    /// The attempt the lease is on.
    #[serde(default)]
    pub intent: String,
    pub k: u32,
    /// The sweep's attempt id: its Lance commits carry it.
    pub attempt: String,
    pub taken_at: DateTime<Utc>,
    pub deadline: DateTime<Utc>,
    pub worker: String,
}

/// One attempt of one operation: the unit of ownership.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AttemptId {
    pub op: String,
    pub attempt: String,
}

impl AttemptId {
    pub fn new(op: &str, attempt: &str) -> AttemptId {
        AttemptId { op: op.to_string(), attempt: attempt.to_string() }
    }
}

impl std::fmt::Display for AttemptId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (attempt {})", self.op, self.attempt)
    }
}

/// The sidecars of one attempt, as one LIST of `_ops/` shows them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpFiles {
    pub intent: bool,
    /// Lease numbers, ascending.
    pub leases: Vec<u32>,
}

fn intent_path(op: &str, attempt: &str) -> String {
    format!("{OPS}/{op}.{attempt}{INTENT_SUFFIX}")
}

fn decision_path(op: &str, attempt: &str) -> String {
    format!("{DECISIONS}/{op}.{attempt}.json")
}

fn lease_path(op: &str, attempt: &str, k: u32) -> String {
    format!("{OPS}/{op}.{attempt}{LEASE_INFIX}{k:04}.json")
}

/// The ledger key of a source version: at most one attempt holds it at a time.
pub fn source_key(source_id: &str) -> String {
    format!("{CLAIMS}/{source_id}")
}

/// The ledger key of maintaining `table` at pin `pin` (a compaction or an
/// index refresh): two optimizers of the same state do not both rewrite it.
pub fn maintenance_key(table: &str, pin: u64) -> String {
    format!("{MAINTENANCE}/{table}/{pin:020}")
}

fn claim_path(key: &str, generation: u32) -> String {
    format!("{key}/{generation:06}.json")
}

fn release_path(key: &str, generation: u32, attempt: &str) -> String {
    format!("{key}/{generation:06}{RELEASE_INFIX}{attempt}.json")
}

/// Write the intent of a new attempt. Its name is the attempt's own, so the
/// only way to find someone else's object there is a corrupted store.
pub async fn create_intent(lake: &Lake, intent: &Intent) -> Result<()> {
    let path = intent_path(&intent.op, &intent.attempt);
    match lake.create_json(&path, intent, |i: &Intent| i.attempt == intent.attempt).await? {
        Created::Mine => Ok(()),
        other => Err(Error::Corrupt { what: "intent", path: lake.path(&path).to_string(), reason: format!("a new attempt's name was taken: {other:?}") }),
    }
}

pub async fn read_intent(lake: &Lake, id: &AttemptId) -> Result<Option<Intent>> {
    lake.get_json(&intent_path(&id.op, &id.attempt)).await
}

pub async fn intent_exists(lake: &Lake, id: &AttemptId) -> Result<bool> {
    lake.exists(&intent_path(&id.op, &id.attempt)).await
}

/// The attempt's last step: its outcome is published or released.
pub async fn delete_intent(lake: &Lake, id: &AttemptId) -> Result<()> {
    lake.delete(&intent_path(&id.op, &id.attempt)).await
}

/// Remove the intents of `ids`, finished (a group's leader removes its
/// members' once its publish shows their rows).
pub(crate) async fn delete_intents<'a>(lake: &Lake, ids: impl Iterator<Item = &'a AttemptId>) -> Result<()> {
    lake.delete_all(&ids.map(|id| intent_path(&id.op, &id.attempt)).collect::<Vec<_>>()).await
}

/// Recovery's finish: its leases first, the intent last (its decision stays).
pub async fn finish_recovered(lake: &Lake, id: &AttemptId, leases: &[u32]) -> Result<()> {
    for k in leases {
        remove_lease(lake, id, *k).await?;
    }
    delete_intent(lake, id).await
}

pub async fn take_lease(lake: &Lake, lease: &Lease) -> Result<Created<Lease>> {
    lake.create_json(&lease_path(&lease.op, &lease.intent, lease.k), lease, |l: &Lease| l.attempt == lease.attempt).await
}

pub async fn remove_lease(lake: &Lake, id: &AttemptId, k: u32) -> Result<()> {
    lake.delete(&lease_path(&id.op, &id.attempt, k)).await
}

pub async fn read_lease(lake: &Lake, id: &AttemptId, k: u32) -> Result<Option<Lease>> {
    lake.get_json(&lease_path(&id.op, &id.attempt, k)).await
}

/// What an object under `_ops/` is, by its name.
pub(crate) enum OpsObject {
    Intent(AttemptId),
    Lease(AttemptId, u32),
}

pub(crate) fn ops_object(lake: &Lake, location: &object_store::path::Path) -> Option<OpsObject> {
    let rel = lake.relative(location)?;
    let name = rel.strip_prefix(OPS)?.strip_prefix('/')?;
    let split = |s: &str| s.split_once('.').map(|(op, attempt)| AttemptId::new(op, attempt));
    if let Some(rest) = name.strip_suffix(INTENT_SUFFIX) {
        return Some(OpsObject::Intent(split(rest)?));
    }
    let (rest, k) = name.strip_suffix(".json")?.rsplit_once(LEASE_INFIX)?;
    Some(OpsObject::Lease(split(rest)?, k.parse().ok()?))
}

/// Every attempt with sidecars in `_ops/`: one LIST, names only.
pub async fn list_ops(lake: &Lake) -> Result<BTreeMap<AttemptId, OpFiles>> {
    let mut ops: BTreeMap<AttemptId, OpFiles> = BTreeMap::new();
    for meta in lake.list(OPS).await? {
        match ops_object(lake, &meta.location) {
            Some(OpsObject::Intent(id)) => ops.entry(id).or_default().intent = true,
            Some(OpsObject::Lease(id, k)) => ops.entry(id).or_default().leases.push(k),
            None => {}
        }
    }
    for files in ops.values_mut() {
        files.leases.sort_unstable();
    }
    Ok(ops)
}

/// Every in-flight attempt: one LIST, then one GET per intent found.
pub async fn pending(lake: &Lake) -> Result<Vec<Intent>> {
    let mut intents = Vec::new();
    for (id, files) in list_ops(lake).await? {
        if files.intent
            && let Some(intent) = read_intent(lake, &id).await?
        {
            intents.push(intent);
        }
    }
    intents.sort_by_key(|i| i.started_at);
    Ok(intents)
}

pub async fn decide(lake: &Lake, decision: &Decision) -> Result<Created<Decision>> {
    lake.create_json(&decision_path(&decision.op, &decision.intent), decision, |d: &Decision| d.attempt == decision.attempt).await
}

/// The decision on attempt `id`, if one was made.
pub async fn read_decision(lake: &Lake, id: &AttemptId) -> Result<Option<Decision>> {
    lake.get_json(&decision_path(&id.op, &id.attempt)).await
}

/// What became of an attempt: its own decision, or through it its group's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// No decision yet.
    Undecided,
    /// Decided forward by this decision: the attempt's own, or its group's.
    Forward(Decision),
    /// Rolled back: decided so, or its group was, or its group's commit left it out.
    RolledBack,
    /// It joined this group, which is not decided yet.
    InGroup(AttemptId),
}

/// The fate of attempt `id`: one hop through its group, if it joined one.
pub async fn fate(lake: &Lake, id: &AttemptId) -> Result<Fate> {
    match read_decision(lake, id).await? {
        Some(decision) => fate_of(lake, id, decision).await,
        None => Ok(Fate::Undecided),
    }
}

/// The fate of attempt `id`, whose decision is `decision`.
pub async fn fate_of(lake: &Lake, id: &AttemptId, decision: Decision) -> Result<Fate> {
    let corrupt = |reason: String| Error::Corrupt { what: "decision", path: lake.path(&decision_path(&id.op, &id.attempt)).to_string(), reason };
    match decision.outcome {
        Outcome::Forward => Ok(Fate::Forward(decision)),
        Outcome::RollBack => Ok(Fate::RolledBack),
        Outcome::Joined => {
            let group = decision.group.clone().ok_or_else(|| corrupt("it joined a group but names none".into()))?;
            let Some(of_group) = read_decision(lake, &group).await? else { return Ok(Fate::InGroup(group)) };
            match (of_group.outcome, &of_group.members) {
                (Outcome::RollBack, _) => Ok(Fate::RolledBack),
                (Outcome::Forward, Some(members)) if members.contains(id) => Ok(Fate::Forward(of_group)),
                (Outcome::Forward, Some(_)) => Ok(Fate::RolledBack),
                // Read as "not a member" it would release sources the group's commit published.
                (Outcome::Forward, None) => Err(corrupt(format!("its group {group} was decided forward without a member list"))),
                (Outcome::Joined, _) => Err(corrupt(format!("its group {group} joined another group"))),
            }
        }
    }
}

/// Why not every one of `members` is bound to `group` (its decision
/// `joined(group)`, won before the group's commit), if so. A group's
/// forward decision names only bound members: one that could still be
/// decided on its own would have its rows shown twice, or shown after its
/// sources were released.
pub async fn unbound_member(lake: &Lake, group: &AttemptId, members: &[AttemptId]) -> Result<Option<String>> {
    use futures::{StreamExt, TryStreamExt};
    let decisions: Vec<Option<Decision>> =
        futures::stream::iter(members.to_vec()).map(|m| async move { read_decision(lake, &m).await }).buffered(READS_AT_ONCE).try_collect().await?;
    Ok(members.iter().zip(decisions).find_map(|(m, d)| match d {
        Some(d) if d.outcome == Outcome::Joined && d.group.as_ref() == Some(group) => None,
        Some(d) => Some(format!("its member {m} is decided {:?} on its own, not bound to the group", d.outcome)),
        None => Some(format!("its member {m} has no decision binding it to the group")),
    }))
}

/// The outcome of trying to claim a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claimed {
    /// This attempt holds generation `generation`.
    Mine { generation: u32 },
    /// Another attempt holds the newest generation (unreleased), and what became of it.
    Held(Claim, Holder),
}

/// What became of the holder of a claim that is not ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// Its attempt is in flight (its intent, for the deadline).
    InFlight(Intent),
    /// It gave the source back: the source must be delivered (claimed) again.
    Released,
    /// It ended without releasing: it published the source's rows.
    Published,
}

/// The claims on one source, as one LIST shows them.
#[derive(Debug, Default)]
struct Ledger {
    /// Generations with a claim object.
    claims: BTreeSet<u32>,
    /// Releases, by generation: the attempts that wrote them.
    releases: BTreeMap<u32, BTreeSet<String>>,
}

async fn ledger(lake: &Lake, key: &str) -> Result<Ledger> {
    let mut out = Ledger::default();
    for meta in lake.list(key).await? {
        let Some(rel) = lake.relative(&meta.location) else { continue };
        if let Some(name) = rel.strip_prefix(key).and_then(|n| n.strip_prefix('/')).and_then(|n| n.strip_suffix(".json")) {
            out.add(name);
        }
    }
    Ok(out)
}

impl Ledger {
    fn released(&self, generation: u32, attempt: &str) -> bool {
        self.releases.get(&generation).is_some_and(|a| a.contains(attempt))
    }

    /// Held: the newest generation has no release (ingested or in flight).
    /// A claim that landed after its attempt was rolled back also looks held
    /// here, though `holder` would call it released: a listing cannot tell.
    fn held(&self) -> bool {
        self.claims.last().is_some_and(|g| !self.releases.contains_key(g))
    }

    fn add(&mut self, name: &str) {
        match name.split_once(RELEASE_INFIX) {
            Some((generation, attempt)) => {
                if let Ok(g) = generation.parse() {
                    self.releases.entry(g).or_default().insert(attempt.to_string());
                }
            }
            None => {
                if let Ok(g) = name.parse() {
                    self.claims.insert(g);
                }
            }
        }
    }
}

/// Which of the source ids `wanted` the ledger holds: one LIST per source
/// when there are at most `per_source` of them (run `concurrency` at a time),
/// else one listing of the whole ledger (a page per 1,000 claims).
pub async fn held_sources(lake: &Lake, wanted: &BTreeSet<&str>, per_source: usize, concurrency: usize) -> Result<BTreeSet<String>> {
    use futures::{StreamExt, TryStreamExt};
    let ledgers: Vec<(String, Ledger)> = if wanted.len() <= per_source {
        futures::stream::iter(wanted.iter().map(|id| id.to_string()))
            .map(|id| async move { Ok::<_, Error>((id.clone(), ledger(lake, &source_key(&id)).await?)) })
            .buffer_unordered(concurrency.max(1))
            .try_collect()
            .await?
    } else {
        let mut all: BTreeMap<String, Ledger> = BTreeMap::new();
        for meta in lake.list(CLAIMS).await? {
            let Some(rel) = lake.relative(&meta.location) else { continue };
            let Some((id, name)) = rel.strip_prefix(CLAIMS).and_then(|r| r.strip_prefix('/')).and_then(|r| r.split_once('/')) else {
                continue;
            };
            if let (true, Some(name)) = (wanted.contains(id), name.strip_suffix(".json")) {
                all.entry(id.to_string()).or_default().add(name);
            }
        }
        all.into_iter().collect()
    };
    Ok(ledgers.into_iter().filter(|(_, l)| l.held()).map(|(id, _)| id).collect())
}

async fn read_claim_at(lake: &Lake, key: &str, generation: u32) -> Result<Claim> {
    let path = claim_path(key, generation);
    lake.get_json(&path).await?.ok_or_else(|| Error::Corrupt {
        what: "claim",
        path: lake.path(&path).to_string(),
        reason: "listed, then gone: claims are never deleted".into(),
    })
}

/// Claim ledger key `key` (a source: [`source_key`]; maintenance:
/// [`maintenance_key`]) for `claim`'s attempt: generation 1 on the common path
/// (one create-only PUT); after a released generation, the next one. A PUT
/// with an ambiguous answer that cannot be read back may still land later:
/// its generation is pushed to `maybe` (so a giving-up attempt releases it)
/// and the error is returned.
pub async fn claim(lake: &Lake, key: &str, claim: &Claim, maybe: &mut Vec<(String, u32)>) -> Result<Claimed> {
    let mut generation = 1;
    for _ in 0..MAX_CLAIM_ROUNDS {
        let mine = Claim { generation, claimed_at: Utc::now(), ..claim.clone() };
        // This very claim, not an earlier one of ours that we gave back (a
        // load that made way for an older one claims its sources again).
        let (path, is_mine) = (claim_path(key, generation), |c: &Claim| *c == mine);
        let (created, listed) = match lake.put_create(&path, &mine).await {
            Ok(true) => return Ok(Claimed::Mine { generation }),
            // Refused: read the claim there and list the ledger at once (the
            // listing starts after the refusal, so it shows that generation).
            Ok(false) => {
                let (created, listed) = futures::join!(lake.read_back(&path, None, is_mine), ledger(lake, key));
                (created, Some(listed))
            }
            Err(e) => (lake.read_back(&path, Some(e), is_mine).await, None),
        };
        let theirs = match created {
            Ok(Created::Mine) => return Ok(Claimed::Mine { generation }),
            Ok(Created::Theirs(theirs)) => Some(theirs),
            Ok(Created::Gone) => None,
            Err(e) => {
                maybe.push((key.to_string(), generation));
                return Err(e);
            }
        };
        let ledger = match listed {
            Some(listed) => listed?,
            None => ledger(lake, key).await?,
        };
        let newest = *ledger.claims.last().expect("a claim we just saw is listed");
        // A claim is written once and never deleted: the one just read back stands.
        let held = match theirs {
            Some(theirs) if newest == generation => theirs,
            _ => read_claim_at(lake, key, newest).await?,
        };
        if held.attempt == claim.attempt && !ledger.released(newest, &claim.attempt) {
            return Ok(Claimed::Mine { generation: newest });
        }
        match ledger.released(newest, &held.attempt) {
            true => {}
            false => match holder(lake, key, &held).await? {
                Holder::Released => {}
                status => return Ok(Claimed::Held(held, status)),
            },
        }
        generation = newest + 1;
    }
    Err(Error::Contention {
        what: "claiming a source",
        attempts: MAX_CLAIM_ROUNDS,
        last: format!("source {} was claimed and released by others every time", claim.source),
    })
}

/// What became of `held`'s generation. A release of it means given back,
/// whatever its attempt does next (a live load makes way for an older one
/// and claims again later). Else its intent means in flight, unless its
/// attempt is decided forward and shown ([`shown_forward`]). Else the
/// release and the fate are read again, together: an attempt releases
/// before it deletes its intent, and its fate is final before either, so
/// once its intent is seen gone both are already written. With no intent, a
/// release or a rolled-back fate means given back (a claim that landed late,
/// after its attempt was rolled back, has no release: its decision says
/// it), and neither means it published.
pub async fn holder(lake: &Lake, key: &str, held: &Claim) -> Result<Holder> {
    let id = AttemptId::new(&held.op, &held.attempt);
    let release = release_path(key, held.generation, &held.attempt);
    let (intent, released) = futures::join!(read_intent(lake, &id), lake.exists(&release));
    if released? {
        return Ok(Holder::Released);
    }
    if let Some(intent) = intent? {
        // Decided forward and shown, all that is left of it is its intent's
        // removal (a group's member leaves that to its leader).
        if shown_forward(lake, &id).await? {
            return Ok(Holder::Published);
        }
        return Ok(Holder::InFlight(intent));
    }
    let (released, fate) = futures::join!(lake.exists(&release), fate(lake, &id));
    if released? {
        return Ok(Holder::Released);
    }
    match fate? {
        Fate::RolledBack => Ok(Holder::Released),
        Fate::Forward(_) | Fate::Undecided => Ok(Holder::Published),
        Fate::InGroup(group) => Err(Error::Corrupt {
            what: "intent",
            path: lake.path(&intent_path(&id.op, &id.attempt)).to_string(),
            reason: format!("operation {id} ended while its group {group} was undecided; a member's intent goes only after its fate is final"),
        }),
    }
}

/// Is attempt `id` decided forward (on its own or through its group) at
/// versions the latest manifest shows? Its rows are then published, whether
/// or not its intent is gone yet; pins never go back, so it stays so.
pub(crate) async fn shown_forward(lake: &Lake, id: &AttemptId) -> Result<bool> {
    let Fate::Forward(decided) = fate(lake, id).await? else { return Ok(false) };
    if decided.versions.is_empty() {
        return Ok(false);
    }
    let Some(latest) = crate::manifest::read_latest(lake).await? else { return Ok(false) };
    Ok(decided.versions.iter().all(|(table, v)| latest.tables.get(table).is_some_and(|p| p.version >= *v)))
}

/// Release generation `generation` of `key`, held by `attempt`. Only the
/// holder (or recovery on its behalf, after a roll-back decision) calls this;
/// the name carries the holder, so it can release nothing of anyone else's.
pub async fn release(lake: &Lake, key: &str, generation: u32, attempt: &str) -> Result<()> {
    lake.put_json(&release_path(key, generation, attempt), &serde_json::json!({ "attempt": attempt, "at": Utc::now() })).await
}

/// Whether `held`'s attempt gave generation `held.generation` of `key` back.
pub async fn is_released(lake: &Lake, key: &str, held: &Claim) -> Result<bool> {
    lake.exists(&release_path(key, held.generation, &held.attempt)).await
}

/// The newest claim on `key`, if any (released or not).
pub async fn newest_claim(lake: &Lake, key: &str) -> Result<Option<Claim>> {
    match ledger(lake, key).await?.claims.last() {
        Some(&g) => Ok(Some(read_claim_at(lake, key, g).await?)),
        None => Ok(None),
    }
}

/// The unreleased generations of `key` that `attempt` holds.
pub async fn held_by(lake: &Lake, key: &str, attempt: &str) -> Result<Vec<u32>> {
    let ledger = ledger(lake, key).await?;
    let mut out = Vec::new();
    for &g in &ledger.claims {
        if !ledger.released(g, attempt) && read_claim_at(lake, key, g).await?.attempt == attempt {
            out.push(g);
        }
    }
    Ok(out)
}

/// An operator's acceptance of a commit sluice did not make (`sluice adopt`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Adoption {
    pub table: String,
    pub version: u64,
    /// Lance's name for what the commit did (`Delete`, `Merge`, ...).
    pub operation: String,
    pub adopted_at: DateTime<Utc>,
    pub by: String,
}

fn adoption_path(table: &str, version: u64) -> String {
    format!("{ADOPTED}/{table}/{version:020}.json")
}

/// Record `adoption`, create-only: an earlier adoption of the same commit stands.
pub async fn adopt(lake: &Lake, adoption: &Adoption) -> Result<()> {
    lake.create_json(&adoption_path(&adoption.table, adoption.version), adoption, |_: &Adoption| true).await.map(|_| ())
}

/// Was the commit at `version` of `table` adopted?
pub async fn adopted(lake: &Lake, table: &str, version: u64) -> Result<bool> {
    lake.exists(&adoption_path(table, version)).await
}

/// `host:pid` of this worker.
pub fn worker_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_string()))
        .unwrap_or_else(|| "unknown".into());
    format!("{host}:{}", std::process::id())
}
