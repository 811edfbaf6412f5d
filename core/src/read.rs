//! Reading the lake: every read goes through a manifest version, so each table
//! is seen at its pin and several tables form one consistent snapshot.

use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::index::{self, IndexStatus};
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
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub indices: Vec<IndexStatus>,
    /// What an ingest does with a source column the table lacks.
    pub evolution: crate::settings::Evolution,
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
    Error::Usage(format!("no lake at {}: check --root (or SLUICE_ROOT) for a typo, or create it with `sluice --root {} init`", lake.uri(), lake.uri()))
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
        let ds = lake.open_known(name, Some(pin.version), pin.known_manifest()).await?;
        let rows = ds.count_rows(None).await.map_err(|e| Error::lance(name, e))? as u64;
        tables.push(TableStatus {
            name: name.clone(),
            pinned_version: pin.version,
            mode: pin.mode,
            key: pin.key.clone(),
            rows,
            fragments: ds.get_fragments().len(),
            indices: index::statuses(&ds, name, pin).await?,
            evolution: pin.evolution,
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

/// The declared indices of `table` (or of every table) at the latest version.
pub async fn indices(lake: &Lake, table: Option<&str>) -> Result<Vec<IndexStatus>> {
    let latest = manifest_at(lake, None).await?;
    if let Some(t) = table
        && !latest.tables.contains_key(t)
    {
        return Err(Error::Usage(format!("table '{t}' is not published in {}", lake.uri())));
    }
    let mut out = Vec::new();
    for (name, pin) in latest.tables.iter().filter(|(n, p)| table.is_none_or(|t| t == n.as_str()) && !p.indices.is_empty()) {
        let ds = lake.open_known(name, Some(pin.version), pin.known_manifest()).await?;
        out.extend(index::statuses(&ds, name, pin).await?);
    }
    Ok(out)
}

/// Rows of `table` as manifest version `at` (or the latest) pins it.
pub async fn scan(
    lake: &Lake,
    table: &str,
    at: Option<u64>,
    limit: Option<u64>,
) -> Result<(Manifest, impl Stream<Item = Result<arrow::array::RecordBatch>>)> {
    query(lake, table, at, Query { limit, ..Default::default() }).await
}

/// What to read of a table: a filter, columns, and a vector or text search.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub limit: Option<u64>,
    /// SQL predicate (`price > 10 AND region = 'eu'`).
    pub filter: Option<String>,
    pub columns: Option<Vec<String>>,
    pub nearest: Option<Nearest>,
    /// Full-text query on the table's text indices.
    pub text: Option<String>,
}

/// A k-nearest-neighbour search.
#[derive(Debug, Clone)]
pub struct Nearest {
    /// The vector column; the table's only one when `None`.
    pub column: Option<String>,
    pub vector: Vec<f32>,
    pub k: usize,
    pub nprobes: Option<usize>,
    pub refine: Option<u32>,
}

/// Rows of `table` as manifest version `at` (or the latest) pins it, as `q`
/// asks. Searches include rows no index covers yet (Lance searches them flat).
pub async fn query(lake: &Lake, table: &str, at: Option<u64>, q: Query) -> Result<(Manifest, impl Stream<Item = Result<arrow::array::RecordBatch>>)> {
    let m = manifest_at(lake, at).await?;
    let pin = m.tables.get(table).ok_or_else(|| {
        Error::Usage(format!("table '{table}' is not in manifest version {} (tables: {:?})", m.version, m.tables.keys().collect::<Vec<_>>()))
    })?;
    let ds = lake.open_known(table, Some(pin.version), pin.known_manifest()).await?;
    crate::failpoints::hit(crate::failpoints::SCAN_AFTER_OPEN)?;
    let usage = |e: lance::Error| Error::Usage(format!("table '{table}': {e}"));
    let mut scanner = ds.scan();
    if let Some(columns) = &q.columns {
        // Named here rather than by Lance's error when the scan starts.
        let schema = ds.schema();
        // (Lance's projection is case-sensitive: so is this check.)
        let known = |c: &str| c.starts_with('_') || schema.fields.iter().any(|f| f.name == c) || schema.field(c).is_some();
        if let Some(missing) = columns.iter().find(|c| !known(c)) {
            let names: Vec<&str> = schema.fields.iter().map(|f| f.name.as_str()).collect();
            return Err(Error::Usage(format!("table '{table}' has no column '{missing}' (its columns: {})", names.join(", "))));
        }
        // A search's score is part of its answer: kept when columns are chosen.
        let mut columns = columns.clone();
        columns.extend(q.nearest.as_ref().map(|_| "_distance".to_string()));
        columns.extend(q.text.as_ref().map(|_| "_score".to_string()));
        scanner.project(&columns).map_err(usage)?;
    }
    if let Some(filter) = &q.filter {
        scanner.filter(filter).map_err(usage)?;
        // A search's k rows are k rows that match, not the matches among k rows.
        scanner.prefilter(true);
    }
    if let Some(n) = &q.nearest {
        let schema = arrow::datatypes::Schema::from(ds.schema());
        let column = match &n.column {
            Some(c) => c.clone(),
            None => {
                let vectors: Vec<&String> = schema.fields().iter().filter(|f| crate::types::vector_dimensions(f.data_type()).is_some()).map(|f| f.name()).collect();
                match vectors.as_slice() {
                    [one] => one.to_string(),
                    [] => return Err(Error::Usage(format!("table '{table}' has no vector column to search"))),
                    many => return Err(Error::Usage(format!("table '{table}' has several vector columns ({many:?}): name one with --column"))),
                }
            }
        };
        let dims = schema.field_with_name(&column).ok().and_then(|f| crate::types::vector_dimensions(f.data_type()));
        match dims {
            Some(d) if d as usize == n.vector.len() => {}
            Some(d) => return Err(Error::Usage(format!("the query vector has {} values; column '{column}' of table '{table}' is vector({d})", n.vector.len()))),
            None => return Err(Error::Usage(format!("column '{column}' of table '{table}' is not a vector column"))),
        }
        let query = arrow::array::Float32Array::from(n.vector.clone());
        scanner.nearest(&column, &query, n.k).map_err(usage)?;
        if let Some(p) = n.nprobes {
            scanner.nprobes(p);
        }
        if let Some(r) = n.refine {
            scanner.refine(r);
        }
    }
    if let Some(text) = &q.text {
        scanner.full_text_search(lance_index::scalar::FullTextSearchQuery::new(text.clone())).map_err(usage)?;
    }
    if let Some(limit) = q.limit {
        scanner.limit(Some(limit as i64), None).map_err(|e| Error::lance(table, e))?;
    }
    // A filter is parsed when the scan starts: what it names wrong is the caller's to fix.
    let stream = scanner.try_into_stream().await.map_err(|e| match (&q.filter, &e) {
        (Some(filter), lance::Error::InvalidInput { source, .. }) => Error::Usage(format!("table '{table}': --where {filter:?}: {source}")),
        (Some(filter), lance::Error::Schema { message, .. }) => Error::Usage(format!("table '{table}': --where {filter:?}: {message}")),
        _ => Error::lance(table, e),
    })?;
    let table = table.to_string();
    Ok((m, stream.map(move |b| b.map_err(|e| Error::lance(&table, e)))))
}
