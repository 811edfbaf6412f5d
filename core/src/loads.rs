//! Load history: what became of each source, answered from the lake alone.
//!
//! - ingested: each manifest version lists the sources its publish made
//!   visible, so the newest first are read from the latest version backwards;
//!   the cost follows the versions walked (bounded by `--since` and
//!   `--limit`), never the size of the ledger. History reaches back as far as
//!   cleanup keeps manifest versions.
//! - in flight: the intents of operations not yet finished (one LIST).
//! - quarantined: `_quarantine/<source id>/reason.json` (one LIST, one GET each).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::lake::Lake;
use crate::manifest;
use crate::sidecar;

/// Manifest versions one call walks at most: the bound on its cost.
pub const MAX_VERSIONS: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Ingested,
    InFlight,
    Quarantined,
}

/// One source and what became of it.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub status: Status,
    pub uri: String,
    /// Key, version or ETag (S3); path, size and SHA-256 (local).
    pub identity: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    pub op: String,
    /// The manifest version that published it (ingested).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest_version: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Published, started, or quarantined at.
    pub at: DateTime<Utc>,
    /// Why it was quarantined.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Which sources to show.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub table: Option<String>,
    pub since: Option<DateTime<Utc>>,
    /// Empty: every status.
    pub statuses: Vec<Status>,
    /// At most this many ingested sources (newest first).
    pub limit: usize,
}

impl Filter {
    fn wants(&self, status: Status) -> bool {
        self.statuses.is_empty() || self.statuses.contains(&status)
    }

    fn keeps(&self, table: Option<&str>, at: DateTime<Utc>) -> bool {
        self.table.as_deref().is_none_or(|t| table == Some(t)) && self.since.is_none_or(|s| at >= s)
    }
}

/// The sources `filter` asks for: in flight, then quarantined, then ingested newest first.
pub async fn list(lake: &Lake, filter: &Filter) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    if filter.wants(Status::InFlight) {
        for intent in sidecar::pending(lake).await? {
            for s in &intent.sources {
                if filter.keeps(Some(&s.table), intent.started_at) {
                    out.push(Entry {
                        status: Status::InFlight,
                        uri: s.uri.clone(),
                        identity: s.identity.clone(),
                        table: Some(s.table.clone()),
                        op: intent.op.clone(),
                        manifest_version: None,
                        rows: None,
                        bytes: None,
                        at: intent.started_at,
                        reason: None,
                    });
                }
            }
        }
    }
    if filter.wants(Status::Quarantined) {
        let found = quarantined(lake, filter).await?;
        // A quarantined file is no longer quarantined once it, or a version
        // of it (the same path or key, fixed), was ingested into its table
        // after: look among the versions since the oldest. (By publish time:
        // an older version published after the quarantine hides it as well.)
        if let Some(oldest) = found.iter().map(|q| q.at).min() {
            let since = Filter { table: None, since: Some(oldest), statuses: Vec::new(), limit: usize::MAX };
            let later = ingested(lake, &since).await?;
            let superseded = |q: &Entry| {
                later.iter().any(|e| e.table == q.table && e.at >= q.at && (e.identity == q.identity || e.uri == q.uri))
            };
            out.extend(found.into_iter().filter(|q| !superseded(q)));
        }
    }
    if filter.wants(Status::Ingested) {
        out.extend(ingested(lake, filter).await?);
    }
    Ok(out)
}

/// Sources in the published versions, newest first. A source recorded by
/// two versions (another publish that passed its commit on the way, and its
/// own) is listed once, at the newer.
async fn ingested(lake: &Lake, filter: &Filter) -> Result<Vec<Entry>> {
    let mut out: Vec<Entry> = Vec::new();
    let mut listed = std::collections::HashSet::new();
    let Some(latest) = manifest::read_latest(lake).await? else { return Ok(out) };
    let mut next = Some(latest);
    let mut walked = 0;
    while let Some(m) = next.take() {
        if out.len() >= filter.limit || walked >= MAX_VERSIONS || filter.since.is_some_and(|s| m.published_at < s) {
            break;
        }
        walked += 1;
        for p in &m.published {
            for s in &p.source_list {
                if out.len() < filter.limit && filter.keeps(Some(&s.table), m.published_at) && listed.insert((s.table.clone(), s.id.clone())) {
                    out.push(Entry {
                        status: Status::Ingested,
                        uri: s.uri.clone(),
                        identity: s.identity.clone(),
                        table: Some(s.table.clone()),
                        op: s.op.clone().unwrap_or_else(|| p.op.clone()),
                        manifest_version: Some(m.version),
                        rows: s.rows,
                        bytes: s.bytes,
                        at: m.published_at,
                        reason: None,
                    });
                }
            }
        }
        // Older versions may be cleaned up: history ends there.
        if m.version > 0 {
            next = manifest::read_version(lake, m.version - 1).await?;
        }
    }
    Ok(out)
}

async fn quarantined(lake: &Lake, filter: &Filter) -> Result<Vec<Entry>> {
    #[derive(Deserialize)]
    struct Reason {
        op: String,
        /// Absent in records written before it was kept.
        #[serde(default)]
        table: Option<String>,
        at: DateTime<Utc>,
        identity: String,
        message: String,
        error: ReasonError,
    }
    #[derive(Deserialize)]
    struct ReasonError {
        source_uri: String,
    }
    let mut out = Vec::new();
    for meta in lake.list("_quarantine").await? {
        let Some(rel) = lake.relative(&meta.location) else { continue };
        if !rel.ends_with("/reason.json") || filter.since.is_some_and(|s| meta.last_modified < s) {
            continue;
        }
        let Some(r) = lake.get_json::<Reason>(&rel).await? else { continue };
        if !filter.keeps(r.table.as_deref(), r.at) {
            continue;
        }
        out.push(Entry {
            status: Status::Quarantined,
            uri: r.error.source_uri,
            identity: r.identity,
            table: r.table,
            op: r.op,
            manifest_version: None,
            rows: None,
            bytes: None,
            at: r.at,
            reason: Some(r.message),
        });
    }
    out.sort_by(|a, b| b.at.cmp(&a.at));
    Ok(out)
}
