//! Recovery sidecars and the exactly-once ledger.
//!
//! - `_ops/<op>.intent.json`: written create-only before any effect (invariant
//!   4), deleted last, after the publish. The existence of an intent is what
//!   "in flight" means; `_ops/` holds only in-flight operations, so listing it
//!   costs one LIST however long the history.
//! - `_decisions/<op>.<intent attempt>.json`: create-only, so exactly one of
//!   a multi-table writer ("forward": every table committed) and recovery wins
//!   it. The writer removes its own after publishing; recovery's stay (until
//!   cleanup), so a late writer of that attempt can never win one.
//! - `_ops/<op>.sweep-<k>.json`: recovery's lease on an expired intent,
//!   create-only with k = 1, 2, ...: exactly one sweep acts on an operation at
//!   a time, until its own deadline; the next takes lease k + 1 after that.
//! - `_ingested/<source-id>.json`: the claim on a source, create-only, naming
//!   the operation. A claim whose operation has no intent left is done: an
//!   operation that gives up or is rolled back removes its claims before its
//!   intent.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::lake::{Created, Lake};
use crate::manifest::Mode;

pub(crate) const OPS: &str = "_ops";
const CLAIMS: &str = "_ingested";
const INTENT_SUFFIX: &str = ".intent.json";
pub(crate) const DECISIONS: &str = "_decisions";
const LEASE_INFIX: &str = ".sweep-";

/// Lance transaction properties that tie a commit to its operation.
pub const PROP_OP: &str = "sluice.op";
pub const PROP_ATTEMPT: &str = "sluice.attempt";
/// The attempt of the intent the commit belongs to (a sweep's redo or
/// roll-back commits carry the dead writer's intent attempt here).
pub const PROP_INTENT: &str = "sluice.intent";
/// `single` (decided forward once committed), `multi` (needs a decision) or
/// `rollback` (recovery removing the operation's rows).
pub const PROP_SCOPE: &str = "sluice.scope";
pub const SCOPE_SINGLE: &str = "single";
pub const SCOPE_MULTI: &str = "multi";
pub const SCOPE_ROLLBACK: &str = "rollback";

/// The Lance transaction properties of a commit by operation `op`: the
/// committer's `attempt`, the `intent` attempt it belongs to, and its scope.
pub fn commit_properties(op: &str, attempt: &str, intent: &str, scope: &str) -> std::collections::HashMap<String, String> {
    [(PROP_OP, op), (PROP_ATTEMPT, attempt), (PROP_INTENT, intent), (PROP_SCOPE, scope)].into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
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
    /// The declared schema of a table this operation may create (`--schema`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRef {
    pub table: String,
    pub uri: String,
    /// Stable id of this exact source version (see `source.rs`).
    pub id: String,
    pub identity: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    pub op: String,
    pub attempt: String,
    /// `ingest` or `load`.
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
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub op: String,
    /// The attempt of the intent this decides.
    pub intent: String,
    /// The decider's attempt.
    pub attempt: String,
    pub outcome: Outcome,
    /// `writer` or `recovery`.
    pub by: String,
    pub at: DateTime<Utc>,
    /// Lance versions of the operation's commits, per table.
    pub versions: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub op: String,
    pub attempt: String,
    pub source: String,
    pub claimed_at: DateTime<Utc>,
}

/// Recovery's lease on an operation whose owner is presumed dead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub op: String,
    pub k: u32,
    /// The sweep's attempt id: its Lance commits carry it.
    pub attempt: String,
    pub taken_at: DateTime<Utc>,
    pub deadline: DateTime<Utc>,
    pub worker: String,
}

/// The sidecars of one operation, as one LIST of `_ops/` shows them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpFiles {
    pub intent: bool,
    /// Lease numbers, ascending.
    pub leases: Vec<u32>,
}

fn intent_path(op: &str) -> String {
    format!("{OPS}/{op}{INTENT_SUFFIX}")
}

fn decision_path(op: &str, intent: &str) -> String {
    format!("{DECISIONS}/{op}.{intent}.json")
}

fn lease_path(op: &str, k: u32) -> String {
    format!("{OPS}/{op}{LEASE_INFIX}{k:04}.json")
}

fn claim_path(source_id: &str) -> String {
    format!("{CLAIMS}/{source_id}.json")
}

pub async fn create_intent(lake: &Lake, intent: &Intent) -> Result<Created<Intent>> {
    lake.create_json(&intent_path(&intent.op), intent, |i: &Intent| i.attempt == intent.attempt).await
}

pub async fn read_intent(lake: &Lake, op: &str) -> Result<Option<Intent>> {
    lake.get_json(&intent_path(op)).await
}

pub async fn intent_exists(lake: &Lake, op: &str) -> Result<bool> {
    lake.exists(&intent_path(op)).await
}

/// The writer's finish: its own decision (multi-table ops have one) first,
/// the intent last.
pub async fn finish(lake: &Lake, op: &str, attempt: &str, multi_table: bool) -> Result<()> {
    if multi_table {
        lake.delete(&decision_path(op, attempt)).await?;
    }
    lake.delete(&intent_path(op)).await
}

/// Recovery's finish: leases first, the intent last; its decision stays.
pub async fn finish_recovered(lake: &Lake, op: &str, leases: &[u32]) -> Result<()> {
    for k in leases {
        lake.delete(&lease_path(op, *k)).await?;
    }
    lake.delete(&intent_path(op)).await
}

pub async fn take_lease(lake: &Lake, lease: &Lease) -> Result<Created<Lease>> {
    lake.create_json(&lease_path(&lease.op, lease.k), lease, |l: &Lease| l.attempt == lease.attempt).await
}

pub async fn remove_lease(lake: &Lake, op: &str, k: u32) -> Result<()> {
    lake.delete(&lease_path(op, k)).await
}

pub async fn read_lease(lake: &Lake, op: &str, k: u32) -> Result<Option<Lease>> {
    lake.get_json(&lease_path(op, k)).await
}

/// What an object under `_ops/` is, by its name.
pub(crate) enum OpsObject {
    Intent(String),
    Lease(String, u32),
}

pub(crate) fn ops_object(lake: &Lake, location: &object_store::path::Path) -> Option<OpsObject> {
    let rel = lake.relative(location)?;
    let name = rel.strip_prefix(OPS)?.strip_prefix('/')?;
    if let Some(op) = name.strip_suffix(INTENT_SUFFIX) {
        return Some(OpsObject::Intent(op.to_string()));
    }
    let (op, k) = name.strip_suffix(".json")?.rsplit_once(LEASE_INFIX)?;
    Some(OpsObject::Lease(op.to_string(), k.parse().ok()?))
}

/// Every operation with sidecars in `_ops/`: one LIST, names only.
pub async fn list_ops(lake: &Lake) -> Result<BTreeMap<String, OpFiles>> {
    let mut ops: BTreeMap<String, OpFiles> = BTreeMap::new();
    for meta in lake.list(OPS).await? {
        match ops_object(lake, &meta.location) {
            Some(OpsObject::Intent(op)) => ops.entry(op).or_default().intent = true,
            Some(OpsObject::Lease(op, k)) => ops.entry(op).or_default().leases.push(k),
            None => {}
        }
    }
    for files in ops.values_mut() {
        files.leases.sort_unstable();
    }
    Ok(ops)
}

pub async fn decide(lake: &Lake, decision: &Decision) -> Result<Created<Decision>> {
    lake.create_json(&decision_path(&decision.op, &decision.intent), decision, |d: &Decision| d == decision).await
}

/// The decision on the intent of `op` whose attempt was `intent`.
pub async fn read_decision(lake: &Lake, op: &str, intent: &str) -> Result<Option<Decision>> {
    lake.get_json(&decision_path(op, intent)).await
}

pub async fn claim(lake: &Lake, source_id: &str, claim: &Claim) -> Result<Created<Claim>> {
    lake.create_json(&claim_path(source_id), claim, |c: &Claim| c.attempt == claim.attempt).await
}

pub async fn read_claim(lake: &Lake, source_id: &str) -> Result<Option<Claim>> {
    lake.get_json(&claim_path(source_id)).await
}

pub async fn release_claim(lake: &Lake, source_id: &str) -> Result<()> {
    lake.delete(&claim_path(source_id)).await
}

/// Every in-flight operation: one LIST, then one GET per intent found.
pub async fn pending(lake: &Lake) -> Result<Vec<Intent>> {
    let mut intents = Vec::new();
    for (op, files) in list_ops(lake).await? {
        if files.intent
            && let Some(intent) = read_intent(lake, &op).await?
        {
            intents.push(intent);
        }
    }
    intents.sort_by_key(|i| i.started_at);
    Ok(intents)
}

/// `host:pid` of this worker.
pub fn worker_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_string()))
        .unwrap_or_else(|| "unknown".into());
    format!("{host}:{}", std::process::id())
}
