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

use std::sync::Arc;
use std::time::Duration;

use lance::dataset::CommitBuilder;
use lance::dataset::transaction::{Operation, Transaction};
use lance::index::DatasetIndexExt;
use lance::index::vector::VectorIndexParams;
use lance_index::scalar::{BuiltinIndexType, InvertedIndexParams, ScalarIndexParams};
use lance_index::vector::hnsw::builder::HnswBuildParams;
use lance_index::vector::ivf::IvfBuildParams;
use lance_index::vector::sq::builder::SQBuildParams;
use lance_index::optimize::OptimizeOptions;
use lance_index::{IndexParams, IndexType};
use lance::table::format::IndexMetadata;
use lance_linalg::distance::MetricType;
use serde::Serialize;

use crate::deadline::Deadline;
use crate::error::{Error, Result};
use crate::failpoints;
use crate::ingest::Budget;
use crate::lake::Lake;
use crate::known_manifest::LanceManifest;
use crate::manifest::{self, TablePin};
use crate::settings::{Change, IndexKind, IndexSpec, Metric};
use crate::sidecar::{self, AttemptId, SCOPE_SINGLE};
use crate::single;
use crate::types;

/// Most IVF partitions a default picks.
const MAX_DEFAULT_PARTITIONS: u32 = 4096;
/// Rounds of one index request or refresh (each builds one missing index,
/// updates the rest, or waits out another optimizer or a lost commit race).
const MAX_ROUNDS: u32 = 16;

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
    for _ in 0..MAX_ROUNDS {
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
        let change = Some(Change::AddIndex(spec.clone()));
        match again(build(lake, latest, table, &pin, &spec, change, budget.clock_skew, &deadline).await, lake, table, &pin, &deadline).await? {
            Step::Done(report) => return Ok(report),
            Step::Nothing | Step::Again => {}
        }
    }
    Err(contention(table))
}

/// How one index operation ended.
enum Step {
    Done(Report),
    /// Lance had nothing to do: no commit, no publish.
    Nothing,
    /// Another optimizer or index change held this state, or won the commit
    /// race: look at the table again.
    Again,
}

/// A commit lost to a concurrent one Lance cannot rebase over (a retryable
/// conflict) is `Again`, once the winner's publish moved the pin.
async fn again(step: Result<Step>, lake: &Lake, table: &str, pin: &TablePin, deadline: &Deadline) -> Result<Step> {
    match step {
        Err(Error::Lance { source: lance::Error::RetryableCommitConflict { .. }, .. }) => {
            tracing::info!(table, "an index change lost a commit race; looking again once the winner is published");
            single::await_pin_past(lake, table, pin.version, deadline).await?;
            Ok(Step::Again)
        }
        other => other,
    }
}

fn contention(table: &str) -> Error {
    Error::Contention { what: "changing indices", attempts: MAX_ROUNDS, last: format!("table '{table}' kept changing under the index change") }
}

/// Build `spec` at the pin as one operation; its publish carries `change`
/// (the declaration), or none when the index was declared already.
#[allow(clippy::too_many_arguments)]
async fn build(lake: &Lake, latest: manifest::Manifest, table: &str, pin: &TablePin, spec: &IndexSpec, change: Option<Change>, skew: Duration, deadline: &Deadline) -> Result<Step> {
    let mut ds = lake.open_known(table, Some(pin.version), pin.known_manifest()).await?;
    let rows = ds.count_rows(None).await.map_err(|e| Error::lance(table, e))? as u64;
    let params = build_params(&ds, table, spec, rows)?;
    // A rebuild replaces every segment of the index, in the same commit.
    let replacing: Vec<IndexMetadata> = ds.load_indices().await.map_err(|e| Error::lance(table, e))?.iter().filter(|i| i.name == spec.name).cloned().collect();
    let Some(id) = begin(lake, table, pin, change.as_slice(), skew, deadline).await? else { return Ok(Step::Again) };

    let built = async {
        failpoints::hit(failpoints::INDEX_AFTER_INTENT)?;
        let columns = [spec.column.as_str()];
        let mut builder = ds.create_index_builder(&columns, params.index_type(), params.as_ref()).name(spec.name.clone()).replace(!replacing.is_empty());
        let meta = builder.execute_uncommitted().await.map_err(|e| Error::lance(table, e))?;
        failpoints::hit(failpoints::INDEX_AFTER_BUILD)?;
        deadline.check("committing an index")?;
        Ok(meta)
    }
    .await;
    let meta = single::or_give_up(lake, &id, built).await?;
    let operation = Operation::CreateIndex { new_indices: vec![meta], removed_indices: replacing };
    let committed = commit(lake, table, pin, &id, operation, deadline).await?;
    Ok(Step::Done(finish(lake, latest, table, pin, &id, committed, &spec.name, change, skew, deadline).await?))
}

/// Drop index `name` of `table`: from its settings and from Lance.
pub async fn drop(lake: &Lake, table: &str, name: &str, budget: Budget) -> Result<Report> {
    lake.timing().check_timeout(budget.timeout)?;
    let deadline = Deadline::after(budget.timeout);
    for round in 0..MAX_ROUNDS {
        let (latest, pin) = published(lake, table).await?;
        let ds = lake.open_table(table, None).await?;
        let segments: Vec<_> = ds.load_indices().await.map_err(|e| Error::lance(table, e))?.iter().filter(|i| i.name == name).cloned().collect();
        // Not declared, but built by another tool or by a rolled-back attempt: still dropped.
        if !pin.indices.iter().any(|i| i.name == name) && segments.is_empty() {
            return match round {
                0 => Err(Error::Usage(format!("table '{table}' has no index named '{name}' (`sluice index list {table}` shows them)"))),
                // Dropped by a concurrent request we waited for.
                _ => Ok(Report { table: table.into(), index: name.into(), outcome: Outcome::AlreadyDone { manifest_version: latest.version } }),
            };
        }
        let step = drop_segments(lake, latest, table, &pin, name, segments, budget.clock_skew, &deadline).await;
        match again(step, lake, table, &pin, &deadline).await? {
            Step::Done(report) => return Ok(report),
            Step::Nothing | Step::Again => {}
        }
    }
    Err(contention(table))
}

#[allow(clippy::too_many_arguments)]
async fn drop_segments(lake: &Lake, latest: manifest::Manifest, table: &str, pin: &TablePin, name: &str, segments: Vec<IndexMetadata>, skew: Duration, deadline: &Deadline) -> Result<Step> {
    let change = Change::DropIndex(name.to_string());
    let Some(id) = begin(lake, table, pin, std::slice::from_ref(&change), skew, deadline).await? else { return Ok(Step::Again) };
    single::or_give_up(lake, &id, failpoints::hit(failpoints::INDEX_AFTER_INTENT)).await?;
    let committed = match segments.is_empty() {
        // Declared but gone from Lance (another tool dropped it): only the settings change.
        true => (pin.version, pin.known_manifest().cloned()),
        false => commit(lake, table, pin, &id, Operation::CreateIndex { new_indices: Vec::new(), removed_indices: segments }, deadline).await?,
    };
    Ok(Step::Done(finish(lake, latest, table, pin, &id, committed, name, Some(change), skew, deadline).await?))
}

/// What `optimize` did for a table's declared indices.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Refresh {
    /// Declared indices missing from Lance, or vector indices the table has
    /// outgrown (see [`outgrown`]), built now.
    pub built: Vec<Report>,
    /// The incremental update of the others (rows committed since they were built).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated: Option<Report>,
    /// Rows at the pin that some declared index did not cover before this run.
    pub rows_unindexed_before: u64,
    /// Why the refresh stopped short (time, or other optimizers kept moving the
    /// table); the next run goes on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_done: Option<String>,
}

/// Keep `table`'s declared indices fresh at its published pin: build the ones
/// Lance lacks, then add the rows the others miss (Lance's incremental
/// optimize: new rows become a delta segment, merged into the newest
/// `merge` segments). Each is its own operation through the door. A commit
/// that loses to a concurrent index change or compaction (Lance's retryable
/// conflict) waits for the winner's publish and looks again, a bounded number
/// of times.
pub(crate) async fn refresh(lake: &Lake, table: &str, merge: usize, skew: Duration, deadline: &Deadline) -> Result<Refresh> {
    let mut out = Refresh::default();
    for round in 0..MAX_ROUNDS {
        let (latest, pin) = published(lake, table).await?;
        let (missing, stale, uncovered) = survey(lake, table, &pin).await?;
        if round == 0 {
            out.rows_unindexed_before = uncovered;
        }
        let step = if let Some(spec) = missing.first() {
            deadline.check("building an index")?;
            build(lake, latest, table, &pin, spec, None, skew, deadline).await
        } else if !stale.is_empty() {
            deadline.check("updating indices")?;
            update(lake, latest, table, &pin, stale, merge, skew, deadline).await
        } else {
            return Ok(out);
        };
        match again(step, lake, table, &pin, deadline).await? {
            // A build: the others may still need their update; look again.
            Step::Done(report) if !missing.is_empty() => out.built.push(report),
            Step::Done(report) => {
                out.updated = Some(report);
                return Ok(out);
            }
            Step::Nothing => return Ok(out),
            Step::Again => {}
        }
    }
    Err(contention(table))
}

/// The declared indices Lance lacks, those missing rows, and the most rows any misses.
async fn survey(lake: &Lake, table: &str, pin: &TablePin) -> Result<(Vec<IndexSpec>, Vec<String>, u64)> {
    let (mut missing, mut stale, mut most) = (Vec::new(), Vec::new(), 0);
    if pin.indices.is_empty() {
        return Ok((missing, stale, most));
    }
    let ds = lake.open_known(table, Some(pin.version), pin.known_manifest()).await?;
    let present = ds.load_indices().await.map_err(|e| Error::lance(table, e))?;
    let fragments: Vec<(u32, u64)> = ds.fragments().iter().map(|f| (f.id as u32, f.num_rows().unwrap_or(0) as u64)).collect();
    let total: u64 = fragments.iter().map(|(_, rows)| rows).sum();
    for spec in &pin.indices {
        let segments: Vec<_> = present.iter().filter(|i| i.name == spec.name).collect();
        let uncovered: u64 = fragments
            .iter()
            .filter(|(id, _)| !segments.iter().any(|s| s.fragment_bitmap.as_ref().is_some_and(|b| b.contains(*id))))
            .map(|(_, rows)| rows)
            .sum();
        most = most.max(uncovered);
        if segments.is_empty() || outgrown(spec, total - uncovered, uncovered) {
            missing.push(spec.clone());
        } else if uncovered > 0 {
            stale.push(spec.name.clone());
        }
    }
    Ok((missing, stale, most))
}

/// A vector index outgrows what it was trained on once the rows it lacks
/// outnumber the rows it covers: it is then rebuilt (partitions sized for the
/// table as it is now) rather than extended. Extending keeps the centroids and
/// codebook of the smaller table: on 200,000 rows indexed at 20,000, recall@10
/// fell to 0.15 where a rebuild gave 0.69 (nprobes 20, refine 10). Rebuilding
/// at each doubling costs at most twice a single build over the table's life.
fn outgrown(spec: &IndexSpec, covered: u64, uncovered: u64) -> bool {
    spec.kind.is_vector() && uncovered > covered
}

/// One operation: Lance's incremental optimize of `names` at the pin, one
/// tagged commit. `None` when Lance found nothing to do.
#[allow(clippy::too_many_arguments)]
async fn update(lake: &Lake, latest: manifest::Manifest, table: &str, pin: &TablePin, names: Vec<String>, merge: usize, skew: Duration, deadline: &Deadline) -> Result<Step> {
    let Some(id) = begin(lake, table, pin, &[], skew, deadline).await? else { return Ok(Step::Again) };
    let mut ds = lake.open_known(table, Some(pin.version), pin.known_manifest()).await?;
    let updated = async {
        failpoints::hit(failpoints::INDEX_AFTER_INTENT)?;
        let mut options = OptimizeOptions::merge(merge);
        options.index_names = Some(names.clone());
        options.transaction_properties = Some(Arc::new(sidecar::commit_properties(&id.op, &id.attempt, &id.attempt, SCOPE_SINGLE)));
        ds.optimize_indices(&options).await.map_err(|e| Error::lance(table, e))?;
        Ok::<_, Error>(ds.version().version)
    }
    .await;
    let committed = match updated {
        Ok(v) if v > pin.version => (v, LanceManifest::of(&ds)),
        // Lance skipped every index: no commit.
        Ok(_) => {
            single::give_up(lake, &id).await?;
            return Ok(Step::Nothing);
        }
        Err(e) => (single::landed_or_give_up(lake, table, pin.version, &id).await?.ok_or(e)?, None),
    };
    Ok(Step::Done(finish(lake, latest, table, pin, &id, committed, &names.join(","), None, skew, deadline).await?))
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

/// The declared indices of a table, with what Lance says of each at the
/// pin `ds` is opened at.
pub async fn statuses(ds: &lance::Dataset, table: &str, pin: &TablePin) -> Result<Vec<IndexStatus>> {
    if pin.indices.is_empty() {
        return Ok(Vec::new());
    }
    let present = ds.load_indices().await.map_err(|e| Error::lance(table, e))?;
    let mut out = Vec::with_capacity(pin.indices.len());
    for spec in &pin.indices {
        let built = present.iter().any(|i| i.name == spec.name);
        let stats: Option<serde_json::Value> = match built {
            true => serde_json::from_str(&ds.index_statistics(&spec.name).await.map_err(|e| Error::lance(table, e))?).ok(),
            false => None,
        };
        let num = |k: &str| stats.as_ref().and_then(|s| s.get(k)).and_then(|v| v.as_u64());
        out.push(IndexStatus {
            table: table.to_string(),
            spec: spec.clone(),
            built,
            rows_indexed: num("num_indexed_rows"),
            rows_unindexed: num("num_unindexed_rows"),
            segments: num("num_indices"),
        });
    }
    Ok(out)
}

async fn published(lake: &Lake, table: &str) -> Result<(manifest::Manifest, TablePin)> {
    let latest = manifest::read_latest(lake).await?.ok_or_else(|| Error::Usage(format!("no lake at {}: ingest something first", lake.uri())))?;
    let pin = latest.tables.get(table).cloned().ok_or_else(|| {
        Error::Usage(format!("table '{table}' is not published in {}: ingest into it first, then index it", lake.uri()))
    })?;
    Ok((latest, pin))
}

/// The intent of an index operation on `table` at `pin` publishing `changes`,
/// and its claim on that state's maintenance (`None`: another optimizer or
/// index change held it; it was waited for, look again).
async fn begin(lake: &Lake, table: &str, pin: &TablePin, changes: &[Change], skew: Duration, deadline: &Deadline) -> Result<Option<AttemptId>> {
    let what = serde_json::to_string(changes).expect("changes serialize");
    single::begin(lake, single::Kind { name: "index", prefix: "idx" }, table, pin, changes, &what, skew, deadline).await
}

/// Commit `operation` read at the pin, tagged with the attempt. An error is
/// not proof: the history says whether it landed.
async fn commit(lake: &Lake, table: &str, pin: &TablePin, id: &AttemptId, operation: Operation, deadline: &Deadline) -> Result<(u64, Option<LanceManifest>)> {
    let mut txn = Transaction::new(pin.version, operation, None);
    txn.transaction_properties = Some(Arc::new(sidecar::commit_properties(&id.op, &id.attempt, &id.attempt, SCOPE_SINGLE)));
    let committed = async {
        deadline.check("committing an index change")?;
        let ds = Arc::new(lake.open_table(table, None).await?);
        deadline
            .bound(CommitBuilder::new(ds))
            .execute(txn)
            .await
            .map(|ds| (ds.version().version, LanceManifest::of(&ds)))
            .map_err(|e| Error::lance(table, e))
    }
    .await;
    match committed {
        Ok(done) => Ok(done),
        Err(e) => Ok((single::landed_or_give_up(lake, table, pin.version, id).await?.ok_or(e)?, None)),
    }
}

#[allow(clippy::too_many_arguments)]
async fn finish(lake: &Lake, latest: manifest::Manifest, table: &str, pin: &TablePin, id: &AttemptId, (version, manifest): (u64, Option<LanceManifest>), index: &str, change: Option<Change>, skew: Duration, deadline: &Deadline) -> Result<Report> {
    failpoints::hit(failpoints::INDEX_AFTER_COMMIT)?;
    let committed = single::Committed { id, kind: "index", table, pin, version, manifest, changes: change.into_iter().collect() };
    let (manifest_version, _) = single::finish(lake, latest, committed, skew, deadline).await?;
    Ok(Report { table: table.into(), index: index.to_string(), outcome: Outcome::Done { lance_version: version, manifest_version } })
}

/// Lance's parameters for `spec`, after checking that the column suits it.
fn build_params(ds: &lance::Dataset, table: &str, spec: &IndexSpec, rows: u64) -> Result<Params> {
    let schema = arrow::datatypes::Schema::from(ds.schema());
    spec.check_column(table, &schema)?;
    if spec.kind.is_vector() {
        let dims = schema.field_with_name(&spec.column).ok().and_then(|f| types::vector_dimensions(f.data_type())).expect("checked: a vector column");
        let metric = match spec.metric.unwrap_or(Metric::L2) {
            Metric::L2 => MetricType::L2,
            Metric::Cosine => MetricType::Cosine,
            Metric::Dot => MetricType::Dot,
        };
        let partitions = spec.partitions.unwrap_or_else(|| ((rows as f64).sqrt().round() as u32).clamp(1, MAX_DEFAULT_PARTITIONS)) as usize;
        let params = match spec.kind {
            IndexKind::IvfFlat => VectorIndexParams::ivf_flat(partitions, metric),
            IndexKind::IvfPq => {
                // 8 dimensions per code byte: at 16, points of one cluster
                // blur together (recall@10 0.69 vs 0.90 at refine 10, bench data).
                let sub_vectors = spec.sub_vectors.map(|s| s as i32).unwrap_or(if dims % 8 == 0 { dims / 8 } else if dims % 4 == 0 { dims / 4 } else { 1 });
                if sub_vectors < 1 || dims % sub_vectors != 0 {
                    return Err(Error::Usage(format!("--sub-vectors {sub_vectors} must divide the {dims} dimensions of column '{}'", spec.column)));
                }
                VectorIndexParams::ivf_pq(partitions, 8, sub_vectors as usize, metric, 50)
            }
            _ => VectorIndexParams::with_ivf_hnsw_sq_params(metric, IvfBuildParams::new(partitions), HnswBuildParams::default(), SQBuildParams::default()),
        };
        return Ok(Params::Vector(params));
    }
    Ok(match spec.kind {
        IndexKind::Fts => Params::Text(InvertedIndexParams::default()),
        IndexKind::LabelList => Params::Scalar(IndexType::LabelList, ScalarIndexParams::for_builtin(BuiltinIndexType::LabelList)),
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
