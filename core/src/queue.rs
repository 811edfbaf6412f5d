//! The group-commit queue: one create-only entry per contended writer,
//! `_queue/<table>/<op>.<attempt>.json`, carrying its staged (uncommitted)
//! fragments, so that another writer leading a group can commit them once it
//! has bound the writer to its group (`group.rs`). An entry is only an offer:
//! the writer's fate is decided by its decision object, never by its entry.
//! Its owner (or cleanup, once the attempt is decided and its intent gone)
//! deletes it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::lake::{Created, Lake};
use crate::manifest::PublishedSource;
use crate::sidecar::AttemptId;

const QUEUE: &str = "_queue";

/// A contended writer's offer of its staged rows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub op: String,
    pub attempt: String,
    pub table: String,
    /// The Lance version its fragments were staged on.
    pub read_version: u64,
    /// Uncommitted: every id is 0 until the group's commit numbers them.
    pub fragments: Vec<lance::table::format::Fragment>,
    /// Its sources, for the group's decision (so a publish lists them).
    pub sources: Vec<PublishedSource>,
    /// Its writer's deadline (not read yet: for leaders to skip a writer
    /// with too little time left to wait for a group).
    pub deadline: DateTime<Utc>,
    /// The group its writer would lead, whose intent it wrote beside this
    /// entry: spare once another leader takes the writer, and removed by that
    /// leader once it published (absent from entries of older writers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spare_group: Option<AttemptId>,
}

impl Entry {
    pub fn id(&self) -> AttemptId {
        AttemptId::new(&self.op, &self.attempt)
    }
}

fn table_dir(table: &str) -> String {
    format!("{QUEUE}/{table}")
}

fn entry_path(table: &str, id: &AttemptId) -> String {
    format!("{QUEUE}/{table}/{}.{}.json", id.op, id.attempt)
}

/// Write `entry`, create-only (its name is its attempt's own).
pub async fn offer(lake: &Lake, entry: &Entry) -> Result<Created<Entry>> {
    lake.create_json(&entry_path(&entry.table, &entry.id()), entry, |e: &Entry| e.attempt == entry.attempt).await
}

pub async fn read(lake: &Lake, table: &str, id: &AttemptId) -> Result<Option<Entry>> {
    lake.get_json(&entry_path(table, id)).await
}

/// Deleting what is gone is success.
pub async fn withdraw(lake: &Lake, table: &str, id: &AttemptId) -> Result<()> {
    lake.delete(&entry_path(table, id)).await
}

/// [`withdraw`] each of `ids`, as one stream.
pub async fn withdraw_all(lake: &Lake, table: &str, ids: &[AttemptId]) -> Result<()> {
    lake.delete_all(&ids.iter().map(|id| entry_path(table, id)).collect::<Vec<_>>()).await
}

/// The attempts queued on `table` and when the store wrote each entry,
/// oldest attempt first (attempt ids are UUIDv7, so they sort by when they
/// started; the line's order is the store's times first): one LIST, names only.
pub async fn list(lake: &Lake, table: &str) -> Result<Vec<(AttemptId, DateTime<Utc>)>> {
    let mut ids: Vec<(AttemptId, DateTime<Utc>)> =
        lake.list(&table_dir(table)).await?.iter().filter_map(|m| parse(lake, &m.location).map(|(_, id)| (id, m.last_modified))).collect();
    ids.sort_by(|(a, _), (b, _)| (&a.attempt, &a.op).cmp(&(&b.attempt, &b.op)));
    Ok(ids)
}

/// Every entry of every table, as (table, attempt): one LIST (cleanup's).
pub async fn list_all(lake: &Lake) -> Result<Vec<(String, AttemptId)>> {
    Ok(lake.list(QUEUE).await?.iter().filter_map(|m| parse(lake, &m.location)).collect())
}

fn parse(lake: &Lake, location: &object_store::path::Path) -> Option<(String, AttemptId)> {
    let rel = lake.relative(location)?;
    let (dir, name) = rel.strip_prefix(QUEUE)?.strip_prefix('/')?.rsplit_once('/')?;
    let (op, attempt) = name.strip_suffix(".json")?.split_once('.')?;
    Some((dir.to_string(), AttemptId::new(op, attempt)))
}
