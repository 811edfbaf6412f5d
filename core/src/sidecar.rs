//! Recovery sidecars and the exactly-once ledger.
//!
//! - `_ops/<op>.intent.json`: written create-only before any effect (invariant
//!   4), deleted last, after the publish. The existence of an intent is what
//!   "in flight" means; `_ops/` holds only in-flight operations, so listing it
//!   costs one LIST however long the history.
//! - `_ops/<op>.decision.json`: create-only, so exactly one of a multi-table
//!   writer ("forward": every table committed) and recovery wins it.
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

const OPS: &str = "_ops";
const CLAIMS: &str = "_ingested";
const INTENT_SUFFIX: &str = ".intent.json";

/// Lance transaction properties that tie a commit to its operation.
pub const PROP_OP: &str = "sluice.op";
pub const PROP_ATTEMPT: &str = "sluice.attempt";
/// `single` (decided forward once committed) or `multi` (needs a decision).
pub const PROP_SCOPE: &str = "sluice.scope";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntentTable {
    /// The pin the operation started from (a lower bound: it may be stale).
    pub start_pin: Option<u64>,
    pub mode: Mode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
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

fn intent_path(op: &str) -> String {
    format!("{OPS}/{op}{INTENT_SUFFIX}")
}

fn decision_path(op: &str) -> String {
    format!("{OPS}/{op}.decision.json")
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

/// Remove an operation's sidecars: the decision (multi-table ops have one)
/// first, the intent last.
pub async fn finish(lake: &Lake, op: &str, multi_table: bool) -> Result<()> {
    if multi_table {
        lake.delete(&decision_path(op)).await?;
    }
    lake.delete(&intent_path(op)).await
}

pub async fn decide(lake: &Lake, decision: &Decision) -> Result<Created<Decision>> {
    lake.create_json(&decision_path(&decision.op), decision, |d: &Decision| d == decision).await
}

pub async fn read_decision(lake: &Lake, op: &str) -> Result<Option<Decision>> {
    lake.get_json(&decision_path(op)).await
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
    for meta in lake.list(OPS).await? {
        let Some(rel) = lake.relative(&meta.location) else { continue };
        let Some(op) = rel.strip_prefix("_ops/").and_then(|n| n.strip_suffix(INTENT_SUFFIX)) else { continue };
        if let Some(intent) = read_intent(lake, op).await? {
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
