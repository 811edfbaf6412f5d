//! The audit log: what recovery decided about each dead worker's operation,
//! and why. One create-only object per operation attempt under `_audit/`, so
//! two sweeps racing on one intent still leave exactly one record.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::lake::{Created, Lake};
use crate::sidecar::SourceRef;

pub(crate) const AUDIT: &str = "_audit";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The published state already showed every effect: only the sidecars were left.
    Converged,
    /// Every effect was committed but not published: recovery published it.
    RolledForward,
    /// A multi-table load had committed some tables: recovery committed the
    /// rest from the unchanged sources, then published all at once.
    Redone,
    /// Nothing of it may become visible: recovery removed its rows (if any
    /// were committed) and released its sources for redelivery.
    RolledBack,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Converged => "converged",
            Verdict::RolledForward => "rolled forward",
            Verdict::Redone => "redone",
            Verdict::RolledBack => "rolled back",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditTable {
    /// The operation's Lance commit, if it made one.
    pub committed: Option<u64>,
    /// Recovery's commit that removed the operation's rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed_at: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub op: String,
    /// The writer's attempt the intent belonged to.
    pub attempt: String,
    pub kind: String,
    pub verdict: Verdict,
    pub reason: String,
    pub tables: BTreeMap<String, AuditTable>,
    pub sources: Vec<SourceRef>,
    /// The manifest version that showed the outcome, for forward verdicts.
    pub manifest_version: Option<u64>,
    pub writer: String,
    pub writer_deadline: DateTime<Utc>,
    /// The sweep that decided: its attempt id, worker and lease number.
    pub by: String,
    pub worker: String,
    pub lease: u32,
    pub decided_at: DateTime<Utc>,
}

fn record_path(op: &str, attempt: &str) -> String {
    format!("{AUDIT}/{op}.{attempt}.json")
}

/// Record `rec` once: a record already there for this operation attempt is the
/// same decision made by a sweep that won the race (or by us, before a crash).
pub async fn record(lake: &Lake, rec: &AuditRecord) -> Result<Created<AuditRecord>> {
    lake.create_json(&record_path(&rec.op, &rec.attempt), rec, |r: &AuditRecord| r.by == rec.by).await
}

pub async fn read(lake: &Lake, op: &str, attempt: &str) -> Result<Option<AuditRecord>> {
    lake.get_json(&record_path(op, attempt)).await
}

/// The newest `limit` records, newest first: one LIST plus one GET each.
pub async fn list(lake: &Lake, limit: usize) -> Result<Vec<AuditRecord>> {
    let mut metas = lake.list(AUDIT).await?;
    metas.sort_by_key(|m| std::cmp::Reverse(m.last_modified));
    let mut records = Vec::with_capacity(limit.min(metas.len()));
    for meta in metas.into_iter().take(limit) {
        let Some(rel) = lake.relative(&meta.location) else { continue };
        if let Some(rec) = lake.get_json::<AuditRecord>(&rel).await? {
            records.push(rec);
        }
    }
    records.sort_by_key(|r| std::cmp::Reverse(r.decided_at));
    Ok(records)
}
