//! Reading the lake: every read goes through a manifest version, so each table
//! is seen at its pin and several tables form one consistent snapshot.

use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::lake::Lake;
use crate::manifest::{self, Manifest, Mode};
use crate::sidecar;

#[derive(Debug, Clone, Serialize)]
pub struct TableStatus {
    pub name: String,
    pub pinned_version: u64,
    pub mode: Mode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub rows: u64,
    pub fragments: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct PendingOp {
    pub op: String,
    pub kind: String,
    pub tables: Vec<String>,
    pub sources: usize,
    pub worker: String,
    pub started_at: DateTime<Utc>,
    pub deadline: DateTime<Utc>,
    pub age_seconds: i64,
    /// The deadline has passed: the worker is presumed dead.
    pub expired: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub root: String,
    pub manifest_version: u64,
    pub published_at: DateTime<Utc>,
    pub tables: Vec<TableStatus>,
    pub pending: Vec<PendingOp>,
}

fn not_initialised(lake: &Lake) -> Error {
    Error::Usage(format!("no lake at {}: run `sluice --root {} init` or ingest something first", lake.uri(), lake.uri()))
}

/// The manifest at `at`, or the latest.
pub async fn manifest_at(lake: &Lake, at: Option<u64>) -> Result<Manifest> {
    match at {
        None => manifest::read_latest(lake).await?.ok_or_else(|| not_initialised(lake)),
        Some(v) => manifest::read_version(lake, v).await?.ok_or_else(|| {
            Error::Usage(format!("manifest version {v} does not exist in {} (never published, or cleaned up)", lake.uri()))
        }),
    }
}

pub async fn status(lake: &Lake) -> Result<Status> {
    let m = manifest_at(lake, None).await?;
    let mut tables = Vec::with_capacity(m.tables.len());
    for (name, pin) in &m.tables {
        let ds = lake.open_table(name, Some(pin.version)).await?;
        let rows = ds.count_rows(None).await.map_err(|e| Error::lance(name, e))? as u64;
        tables.push(TableStatus {
            name: name.clone(),
            pinned_version: pin.version,
            mode: pin.mode,
            key: pin.key.clone(),
            rows,
            fragments: ds.get_fragments().len(),
        });
    }
    let now = Utc::now();
    let pending = sidecar::pending(lake)
        .await?
        .into_iter()
        .map(|i| PendingOp {
            tables: i.tables.keys().cloned().collect(),
            sources: i.sources.len(),
            age_seconds: (now - i.started_at).num_seconds(),
            expired: now > i.deadline,
            op: i.op,
            kind: i.kind,
            worker: i.worker,
            started_at: i.started_at,
            deadline: i.deadline,
        })
        .collect();
    Ok(Status { root: lake.uri().to_string(), manifest_version: m.version, published_at: m.published_at, tables, pending })
}

/// Rows of `table` as manifest version `at` (or the latest) pins it.
pub async fn scan(
    lake: &Lake,
    table: &str,
    at: Option<u64>,
    limit: Option<u64>,
) -> Result<(Manifest, impl Stream<Item = Result<arrow::array::RecordBatch>>)> {
    let m = manifest_at(lake, at).await?;
    let pin = m.tables.get(table).ok_or_else(|| {
        Error::Usage(format!("table '{table}' is not in manifest version {} (tables: {:?})", m.version, m.tables.keys().collect::<Vec<_>>()))
    })?;
    let ds = lake.open_table(table, Some(pin.version)).await?;
    crate::failpoints::hit(crate::failpoints::SCAN_AFTER_OPEN)?;
    let mut scanner = ds.scan();
    if let Some(limit) = limit {
        scanner.limit(Some(limit as i64), None).map_err(|e| Error::lance(table, e))?;
    }
    let stream = scanner.try_into_stream().await.map_err(|e| Error::lance(table, e))?;
    let table = table.to_string();
    Ok((m, stream.map(move |b| b.map_err(|e| Error::lance(&table, e)))))
}
