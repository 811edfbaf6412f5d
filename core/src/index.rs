//! Index changes through the door: `sluice index create|drop`, one operation
//! each, like any writer's.
//!
//! 1. the table's published pin and settings; an index already declared the
//!    same way is done, one declared differently under the name is refused;
//! 2. the intent (kind `index`, carrying the settings change for recovery);
//! 3. the index built *uncommitted* at the pin (only rows every reader sees;
//!    rows committed later are added by `optimize`);
//! 4. one Lance `CreateIndex` commit tagged with the attempt (whether it
//!    landed is read from the history on an error);
//! 5. decided forward and published with the settings change (`single.rs`).
//!
//! An index commit keeps every row, so it passes any other writer's vetting;
//! one that lands after its attempt was rolled back is an undeclared index
//! nobody maintains, never a change of data.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use lance::dataset::CommitBuilder;
use lance::dataset::transaction::{Operation, Transaction};
use lance::index::DatasetIndexExt;
use lance::index::vector::VectorIndexParams;
use lance_index::scalar::{BuiltinIndexType, InvertedIndexParams, ScalarIndexParams};
use lance_index::vector::hnsw::builder::HnswBuildParams;
use lance_index::vector::ivf::IvfBuildParams;
use lance_index::vector::sq::builder::SQBuildParams;
use lance_index::{IndexParams, IndexType};
use lance_linalg::distance::MetricType;
use serde::Serialize;

use crate::deadline::Deadline;
use crate::error::{Error, Result};
use crate::failpoints;
use crate::fence;
use crate::ingest::Budget;
use crate::lake::Lake;
use crate::manifest::{self, TablePin};
use crate::settings::{Change, IndexKind, IndexSpec, Metric};
use crate::sidecar::{self, AttemptId, Intent, IntentTable, SCOPE_SINGLE};
use crate::single;
use crate::types;

/// Most IVF partitions a default picks.
const MAX_DEFAULT_PARTITIONS: u32 = 4096;

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// This call changed the table's indices; `manifest_version` shows it.
    Done { lance_version: u64, manifest_version: u64 },
    /// The settings already said so: nothing to do.
    AlreadyDone { manifest_version: u64 },
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub table: String,
    pub index: String,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// Declare and build index `spec` on the published `table`.
pub async fn create(lake: &Lake, table: &str, spec: IndexSpec, budget: Budget) -> Result<Report> {
    lake.timing().check_timeout(budget.timeout)?;
    let deadline = Deadline::after(budget.timeout);
    let (latest, pin) = published(lake, table).await?;
    if let Some(have) = pin.indices.iter().find(|i| i.name == spec.name) {
        return match have == &spec {
            true => Ok(Report { table: table.into(), index: spec.name, outcome: Outcome::AlreadyDone { manifest_version: latest.version } }),
            false => Err(Error::Usage(format!(
                "table '{table}' already declares an index named '{}' ({} on '{}'); drop it first (`sluice index drop {table} {}`) or pick another --name",
                have.name,
                have.kind.name(),
                have.column,
                have.name
            ))),
        };
    }
    let mut ds = lake.open_table(table, Some(pin.version)).await?;
    let rows = ds.count_rows(None).await.map_err(|e| Error::lance(table, e))? as u64;
    let params = build_params(&ds, table, &spec, rows)?;
    let change = Change::AddIndex(spec.clone());
    let id = begin(lake, table, &pin, &change, &deadline).await?;

    let built = async {
        failpoints::hit(failpoints::INDEX_AFTER_INTENT)?;
        let columns = [spec.column.as_str()];
        let mut builder = ds.create_index_builder(&columns, params.index_type(), params.as_ref()).name(spec.name.clone());
        let meta = builder.execute_uncommitted().await.map_err(|e| Error::lance(table, e))?;
        deadline.check("committing an index")?;
        Ok(meta)
    }
    .await;
    let meta = match built {
        Ok(meta) => meta,
        Err(e) => {
            single::give_up(lake, &id).await?;
            return Err(e);
        }
    };
    let operation = Operation::CreateIndex { new_indices: vec![meta], removed_indices: Vec::new() };
    let version = commit(lake, table, &pin, &id, operation, &deadline).await?;
    finish(lake, latest, table, &pin, &id, version, change, budget.clock_skew, &deadline).await
}

/// Drop index `name` of `table`: from its settings and from Lance.
pub async fn drop(lake: &Lake, table: &str, name: &str, budget: Budget) -> Result<Report> {
    lake.timing().check_timeout(budget.timeout)?;
    let deadline = Deadline::after(budget.timeout);
    let (latest, pin) = published(lake, table).await?;
    let ds = lake.open_table(table, None).await?;
    let segments: Vec<_> = ds.load_indices().await.map_err(|e| Error::lance(table, e))?.iter().filter(|i| i.name == name).cloned().collect();
    if !pin.indices.iter().any(|i| i.name == name) {
        if segments.is_empty() {
            return Err(Error::Usage(format!("table '{table}' has no index named '{name}' (`sluice index list {table}` shows them)")));
        }
        // Built by another tool, or by an attempt that was rolled back: still dropped.
    }
    let change = Change::DropIndex(name.to_string());
    let id = begin(lake, table, &pin, &change, &deadline).await?;
    if let Err(e) = failpoints::hit(failpoints::INDEX_AFTER_INTENT) {
        single::give_up(lake, &id).await?;
        return Err(e);
    }
    let version = match segments.is_empty() {
        // Declared but never built (or already gone from Lance): only the settings change.
        true => pin.version,
        false => commit(lake, table, &pin, &id, Operation::CreateIndex { new_indices: Vec::new(), removed_indices: segments }, &deadline).await?,
    };
    finish(lake, latest, table, &pin, &id, version, change, budget.clock_skew, &deadline).await
}

/// One declared index and what Lance says of it at the pin.
#[derive(Debug, Clone, Serialize)]
pub struct IndexStatus {
    pub table: String,
    #[serde(flatten)]
    pub spec: IndexSpec,
    /// False while declared but not yet built in Lance (optimize builds it).
    pub built: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows_indexed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows_unindexed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segments: Option<u64>,
}

/// The declared indices of `table` (or of every table) at the latest version.
pub async fn list(lake: &Lake, table: Option<&str>) -> Result<Vec<IndexStatus>> {
    let latest = crate::read::manifest_at(lake, None).await?;
    let mut out = Vec::new();
    for (name, pin) in latest.tables.iter().filter(|(n, _)| table.is_none_or(|t| t == n.as_str())) {
        if pin.indices.is_empty() {
            continue;
        }
        let ds = lake.open_table(name, Some(pin.version)).await?;
        let present = ds.load_indices().await.map_err(|e| Error::lance(name, e))?;
        for spec in &pin.indices {
            let built = present.iter().any(|i| i.name == spec.name);
            let stats: Option<serde_json::Value> = match built {
                true => serde_json::from_str(&ds.index_statistics(&spec.name).await.map_err(|e| Error::lance(name, e))?).ok(),
                false => None,
            };
            let num = |k: &str| stats.as_ref().and_then(|s| s.get(k)).and_then(|v| v.as_u64());
            out.push(IndexStatus {
                table: name.clone(),
                spec: spec.clone(),
                built,
                rows_indexed: num("num_indexed_rows"),
                rows_unindexed: num("num_unindexed_rows"),
                segments: num("num_indices"),
            });
        }
    }
    if let Some(t) = table
        && !latest.tables.contains_key(t)
    {
        return Err(Error::Usage(format!("table '{t}' is not published in {}", lake.uri())));
    }
    Ok(out)
}

async fn published(lake: &Lake, table: &str) -> Result<(manifest::Manifest, TablePin)> {
    let latest = crate::read::manifest_at(lake, None).await?;
    let pin = latest.tables.get(table).cloned().ok_or_else(|| {
        Error::Usage(format!("table '{table}' is not published in {}: ingest into it first, then index it", lake.uri()))
    })?;
    Ok((latest, pin))
}

/// The intent of an index change: the operation is the table and the change,
/// so two identical requests collide on their claims-free work by name.
async fn begin(lake: &Lake, table: &str, pin: &TablePin, change: &Change, deadline: &Deadline) -> Result<AttemptId> {
    let what = serde_json::to_string(change).expect("a change serializes");
    let op = format!("idx-{}", &hex::encode(<sha2::Sha256 as sha2::Digest>::digest(format!("{table}\0{what}")))[..24]);
    let attempt = uuid::Uuid::now_v7().to_string();
    deadline.check("writing the intent")?;
    let intent = Intent {
        op: op.clone(),
        attempt: attempt.clone(),
        kind: "index".into(),
        tables: BTreeMap::from([(
            table.to_string(),
            IntentTable { start_pin: Some(pin.version), mode: pin.mode, key: pin.key.clone(), format: None, schema: None, changes: vec![change.clone()] },
        )]),
        sources: Vec::new(),
        started_at: Utc::now(),
        deadline: deadline.at(),
        worker: sidecar::worker_name(),
    };
    sidecar::create_intent(lake, &intent).await?;
    Ok(AttemptId::new(&op, &attempt))
}

/// Commit `operation` read at the pin, tagged with the attempt. An error is
/// not proof: the history says whether it landed.
async fn commit(lake: &Lake, table: &str, pin: &TablePin, id: &AttemptId, operation: Operation, deadline: &Deadline) -> Result<u64> {
    let mut txn = Transaction::new(pin.version, operation, None);
    txn.transaction_properties = Some(Arc::new(sidecar::commit_properties(&id.op, &id.attempt, &id.attempt, SCOPE_SINGLE)));
    let committed = async {
        deadline.check("committing an index change")?;
        let ds = Arc::new(lake.open_table(table, None).await?);
        let left = deadline.remaining();
        CommitBuilder::new(ds)
            .with_timeout(Some(left))
            .with_retry_timeout(left.min(Duration::from_secs(30)))
            .execute(txn)
            .await
            .map(|ds| ds.version().version)
            .map_err(|e| Error::lance(table, e))
    }
    .await;
    match committed {
        Ok(version) => Ok(version),
        Err(e) => match fence::committed_by(lake, table, pin.version, &id.attempt).await? {
            Some(version) => Ok(version),
            None => {
                single::give_up(lake, id).await?;
                Err(e)
            }
        },
    }
}

#[allow(clippy::too_many_arguments)]
async fn finish(lake: &Lake, latest: manifest::Manifest, table: &str, pin: &TablePin, id: &AttemptId, version: u64, change: Change, skew: Duration, deadline: &Deadline) -> Result<Report> {
    failpoints::hit(failpoints::INDEX_AFTER_COMMIT)?;
    let index = match &change {
        Change::AddIndex(spec) => spec.name.clone(),
        Change::DropIndex(name) => name.clone(),
    };
    let committed = single::Committed { id, kind: "index", table, pin, version, changes: vec![change] };
    let (manifest_version, _) = single::finish(lake, latest, committed, skew, deadline).await?;
    Ok(Report { table: table.into(), index, outcome: Outcome::Done { lance_version: version, manifest_version } })
}

/// Lance's parameters for `spec`, after checking that the column suits it.
fn build_params(ds: &lance::Dataset, table: &str, spec: &IndexSpec, rows: u64) -> Result<Params> {
    let schema = arrow::datatypes::Schema::from(ds.schema());
    let field = schema.field_with_name(&spec.column).map_err(|_| {
        Error::Usage(format!("table '{table}' has no column '{}' (columns: {})", spec.column, types::describe(&schema)))
    })?;
    let t = field.data_type();
    let unsuited = |what: &str| {
        Error::Usage(format!(
            "a {} index needs {what}; column '{}' of table '{table}' is {}",
            spec.kind.name(),
            spec.column,
            types::name(t)
        ))
    };
    if spec.kind.is_vector() {
        let Some(dims) = types::vector_dimensions(t) else {
            return Err(unsuited("a vector(N) column (declare it in the table's schema; a list<float64> from inference is not one)"));
        };
        let metric = match spec.metric.unwrap_or(Metric::L2) {
            Metric::L2 => MetricType::L2,
            Metric::Cosine => MetricType::Cosine,
            Metric::Dot => MetricType::Dot,
        };
        let partitions = spec.partitions.unwrap_or_else(|| ((rows as f64).sqrt().round() as u32).clamp(1, MAX_DEFAULT_PARTITIONS)) as usize;
        let params = match spec.kind {
            IndexKind::IvfFlat => VectorIndexParams::ivf_flat(partitions, metric),
            IndexKind::IvfPq => {
                let sub_vectors = spec.sub_vectors.map(|s| s as i32).unwrap_or(if dims % 16 == 0 { dims / 16 } else if dims % 8 == 0 { dims / 8 } else { 1 });
                if sub_vectors < 1 || dims % sub_vectors != 0 {
                    return Err(Error::Usage(format!("--sub-vectors {sub_vectors} must divide the {dims} dimensions of column '{}'", spec.column)));
                }
                VectorIndexParams::ivf_pq(partitions, 8, sub_vectors as usize, metric, 50)
            }
            _ => VectorIndexParams::with_ivf_hnsw_sq_params(metric, IvfBuildParams::new(partitions), HnswBuildParams::default(), SQBuildParams::default()),
        };
        return Ok(Params::Vector(params));
    }
    if spec.metric.is_some() || spec.partitions.is_some() || spec.sub_vectors.is_some() {
        return Err(Error::Usage(format!("--metric, --partitions and --sub-vectors are for vector indices, not {}", spec.kind.name())));
    }
    use arrow::datatypes::DataType;
    Ok(match spec.kind {
        IndexKind::Fts if matches!(t, DataType::Utf8 | DataType::LargeUtf8) => Params::Text(InvertedIndexParams::default()),
        IndexKind::Fts => return Err(unsuited("a string column")),
        IndexKind::LabelList if matches!(t, DataType::List(_) | DataType::LargeList(_)) => Params::Scalar(IndexType::LabelList, ScalarIndexParams::for_builtin(BuiltinIndexType::LabelList)),
        IndexKind::LabelList => return Err(unsuited("a list column")),
        _ if t.is_nested() => return Err(unsuited("a scalar column")),
        IndexKind::Bitmap => Params::Scalar(IndexType::Bitmap, ScalarIndexParams::for_builtin(BuiltinIndexType::Bitmap)),
        _ => Params::Scalar(IndexType::BTree, ScalarIndexParams::for_builtin(BuiltinIndexType::BTree)),
    })
}

enum Params {
    Vector(VectorIndexParams),
    Scalar(IndexType, ScalarIndexParams),
    Text(InvertedIndexParams),
}

impl Params {
    fn index_type(&self) -> IndexType {
        match self {
            Params::Vector(_) => IndexType::Vector,
            Params::Scalar(t, _) => *t,
            Params::Text(_) => IndexType::Inverted,
        }
    }

    fn as_ref(&self) -> &dyn IndexParams {
        match self {
            Params::Vector(p) => p,
            Params::Scalar(_, p) => p,
            Params::Text(p) => p,
        }
    }
}
