//! Compaction through the door: heal first, intent, one Lance `Rewrite`,
//! publish, finish — one operation per table.
//!
//! - The plan is made at the table's *pinned* version, so it only ever
//!   rewrites decided rows: fragments that undecided operations added after
//!   the pin are left out (their surgical roll-back stays possible). The
//!   rewrite is rebased over later commits (it commutes with appends); before
//!   its publish moves the pin over those commits, they are vetted like any
//!   writer's (waiting, within the deadline, for undecided loads).
//! - Content-preserving, so it publishes monotonically: a manifest already
//!   at or past its commit means done.
//! - The operation id is the table and its pin: two optimizers of the same
//!   state collide on the intent, and the second waits for the first.
//! - A conflict with an update or delete of the same fragments (an upsert, a
//!   roll-back) re-plans from the new pin, at most `MAX_REPLANS` times.
//! - A run compacts at most `max_fragments` fragments and about `max_bytes`
//!   bytes per table (targets per table); a larger backlog is worked off over
//!   several runs, each publishing what it finished.
//! - Fan-out: the plan's tasks are serializable; an [`Executor`] runs them in
//!   batches (here, in other processes, or in other invocations) under the
//!   coordinator's intent, and the coordinator commits all results at once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use lance::dataset::index::DatasetIndexRemapperOptions;
use lance::dataset::optimize::{CompactionMetrics, CompactionOptions, CompactionPlan, CompactionTask, RewriteResult, commit_compaction, plan_compaction};
use serde::{Deserialize, Serialize};

use crate::counting::RequestSnapshot;
use crate::deadline::Deadline;
use crate::error::{Error, Result};
use crate::failpoints;
use crate::ingest::Budget;
use crate::lake::Lake;
use crate::known_manifest::LanceManifest;
use crate::manifest;
use crate::index;
use crate::recover;
use crate::single;
use crate::sidecar::{self, AttemptId, Intent, IntentTable, SCOPE_SINGLE};

/// Re-plans after a conflicting update or delete of the planned fragments.
const MAX_REPLANS: u32 = 5;

/// What to compact in one table, and how much per run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Targets {
    /// Fragments smaller than this many rows are compacted.
    pub target_rows: usize,
    /// At most this many source fragments per run.
    pub max_fragments: usize,
    /// At most about this many source bytes per run (at least one task runs).
    pub max_bytes: Option<u64>,
}

impl Default for Targets {
    fn default() -> Targets {
        Targets { target_rows: 1024 * 1024, max_fragments: 1000, max_bytes: None }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Targets for tables not in `per_table`.
    pub targets: Targets,
    pub per_table: BTreeMap<String, Targets>,
    /// Split each table's tasks into this many batches for the executor.
    pub parallel: usize,
    /// Index refresh: new rows become a delta segment merged into the newest
    /// this many segments (0: a new segment each run; Lance's default is 1).
    pub index_merge: usize,
    pub dry_run: bool,
}

impl Options {
    /// Options from `N` (every table) or `TABLE=N` (one table) settings, as the
    /// CLI flags and the Lambda's environment give them.
    pub fn parse(target_rows: &[String], max_fragments: &[String], max_bytes: &[String], parallel: usize, dry_run: bool) -> Result<Options> {
        type Set = fn(&mut Targets, u64);
        let settings: [(&str, &[String], Set); 3] = [
            ("target rows", target_rows, |t, n| t.target_rows = n as usize),
            ("max fragments", max_fragments, |t, n| t.max_fragments = n as usize),
            ("max bytes", max_bytes, |t, n| t.max_bytes = Some(n)),
        ];
        let mut parsed: Vec<(Option<&str>, Set, u64)> = Vec::new();
        for (what, values, set) in settings {
            for value in values {
                let (table, n) = match value.split_once('=') {
                    Some((t, n)) => (Some(t), n),
                    None => (None, value.as_str()),
                };
                let n = n.parse().ok().filter(|n| *n > 0).ok_or_else(|| Error::Usage(format!("{what} '{value}': expected N or TABLE=N, N > 0")))?;
                parsed.push((table, set, n));
            }
        }
        let mut opts = Options { parallel: parallel.max(1), dry_run, index_merge: 1, ..Default::default() };
        // Defaults first, so a table's own settings start from them.
        for (_, set, n) in parsed.iter().filter(|(t, _, _)| t.is_none()) {
            set(&mut opts.targets, *n);
        }
        for (table, set, n) in parsed.iter().filter_map(|(t, set, n)| t.map(|t| (t, set, n))) {
            set(opts.per_table.entry(table.to_string()).or_insert(opts.targets), *n);
        }
        Ok(opts)
    }

    pub fn targets_for(&self, table: &str) -> Targets {
        self.per_table.get(table).copied().unwrap_or(self.targets)
    }
}

/// Compaction tasks of one table, all planned at one Lance version: the unit
/// of fan-out, serializable so another process or invocation can run it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Batch {
    pub table: String,
    pub tasks: Vec<CompactionTask>,
}

/// Run a batch's tasks: write their new fragments, commit nothing. The
/// coordinator's intent covers the files (cleanup and recovery see it).
pub async fn execute_batch(lake: &Lake, batch: &Batch, deadline: &Deadline) -> Result<Vec<RewriteResult>> {
    let Some(first) = batch.tasks.first() else { return Ok(Vec::new()) };
    assert!(batch.tasks.iter().all(|t| t.read_version == first.read_version), "one batch, one planned version");
    let ds = lake.open_table(&batch.table, Some(first.read_version)).await?;
    let mut results = Vec::with_capacity(batch.tasks.len());
    for task in &batch.tasks {
        deadline.check("a compaction task")?;
        results.push(task.clone().execute(&ds).await.map_err(|e| Error::lance(&batch.table, e))?);
    }
    failpoints::hit(failpoints::OPTIMIZE_AFTER_REWRITE)?;
    Ok(results)
}

/// Where compaction tasks run.
#[async_trait]
pub trait Executor: Send + Sync {
    /// Run every batch; all results, or an error if any batch failed.
    async fn execute(&self, lake: &Lake, batches: Vec<Batch>, deadline: &Deadline) -> Result<Vec<RewriteResult>>;
    /// How many workers it runs batches on.
    fn workers(&self, batches: usize) -> usize;
}

/// For executors that fan out: run every batch at once through `run_one`;
/// all results, or the first error (the others are dropped).
pub async fn all_at_once<F, Fut>(batches: Vec<Batch>, run_one: F) -> Result<Vec<RewriteResult>>
where
    F: Fn(Batch) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<RewriteResult>>>,
{
    let results = futures::future::try_join_all(batches.into_iter().map(run_one)).await?;
    Ok(results.into_iter().flatten().collect())
}

/// Runs the batches one after another in this process.
pub struct InProcess;

#[async_trait]
impl Executor for InProcess {
    async fn execute(&self, lake: &Lake, batches: Vec<Batch>, deadline: &Deadline) -> Result<Vec<RewriteResult>> {
        let mut results = Vec::new();
        for batch in &batches {
            results.extend(execute_batch(lake, batch, deadline).await?);
        }
        Ok(results)
    }

    fn workers(&self, _batches: usize) -> usize {
        1
    }
}


/// Keep the plan's leading tasks within the bytes budget (at least one).
fn within_bytes(plan: &mut CompactionPlan, max_bytes: Option<u64>) {
    let Some(max) = max_bytes else { return };
    let task_bytes = |t: &lance::dataset::optimize::TaskData| -> u64 {
        t.fragments.iter().flat_map(|f| &f.files).map(|d| d.file_size_bytes.get().map_or(0, u64::from)).sum()
    };
    let mut total = 0;
    let keep = plan.tasks.iter().take_while(|t| {
        total += task_bytes(t);
        total <= max
    });
    let keep = keep.count().max(1);
    plan.tasks.truncate(keep);
}

/// Split `tasks` round-robin into at most `n` batches.
fn batches(table: &str, tasks: Vec<CompactionTask>, n: usize) -> Vec<Batch> {
    let n = n.clamp(1, tasks.len().max(1));
    let mut out: Vec<Batch> = (0..n).map(|_| Batch { table: table.to_string(), tasks: Vec::new() }).collect();
    for (i, task) in tasks.into_iter().enumerate() {
        out[i % n].tasks.push(task);
    }
    out
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum TableAction {
    /// Nothing small enough to compact at the pin.
    NothingToDo,
    /// `--dry-run`: what would be compacted.
    Planned { tasks: usize, source_fragments: usize },
    /// Compacted and published at this manifest version.
    Compacted { lance_version: u64, manifest_version: u64, fragments_removed: usize, fragments_added: usize, tasks: usize, workers: usize },
    /// The run's time ran out before this table's compaction was committed
    /// (or before it started); the next run plans it again.
    NotDone { reason: String },
}

#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    pub table: String,
    pub targets: Targets,
    /// Unknown (absent) for a table the run had no time to open.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fragments_before: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fragments_after: Option<usize>,
    #[serde(flatten)]
    pub action: TableAction,
    /// The declared indices, refreshed after compaction (none declared, or a dry run: absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indices: Option<index::Refresh>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub tables: Vec<TableReport>,
    pub requests: RequestSnapshot,
}

/// Compact `tables` (every published table if empty).
pub async fn run(lake: &Lake, tables: &[String], opts: &Options, budget: Budget, executor: &dyn Executor) -> Result<Report> {
    let before = lake.requests();
    lake.timing().check_timeout(budget.timeout)?;
    let deadline = Deadline::after(budget.timeout);
    let latest = manifest::read_latest(lake).await?.ok_or_else(|| Error::Usage(format!("no lake at {}: nothing to optimize", lake.uri())))?;
    let names: Vec<String> = if tables.is_empty() { latest.tables.keys().cloned().collect() } else { tables.to_vec() };
    for name in &names {
        if !latest.tables.contains_key(name) {
            return Err(Error::Usage(format!("table '{name}' is not published in {}", lake.uri())));
        }
    }
    if !opts.dry_run {
        let set: BTreeSet<String> = names.iter().cloned().collect();
        Box::pin(recover::heal(lake, &set, budget.clock_skew, &deadline)).await?;
    }
    // Out of time: start none of the rest, report each as not done, keep what was published.
    let mut reports = Vec::with_capacity(names.len());
    let mut out_of_time: Option<String> = None;
    for name in names {
        let targets = opts.targets_for(&name);
        let not_done = |reason: String| TableReport { table: name.clone(), targets, fragments_before: None, fragments_after: None, action: TableAction::NotDone { reason }, indices: None };
        if deadline.remaining().is_zero() {
            out_of_time.get_or_insert_with(|| "the run's time ran out".into());
        }
        if let Some(why) = &out_of_time {
            reports.push(not_done(format!("not started: {why}")));
            continue;
        }
        let mut report = match compact_table(lake, &name, opts, budget.clock_skew, &deadline, executor).await {
            Ok(report) => report,
            // Other optimizers or index changes kept moving this table: not an
            // error of the run; the next run plans it again.
            Err(e @ Error::Contention { .. }) => not_done(e.to_string()),
            Err(e @ Error::Deadline { .. }) => {
                out_of_time = Some(e.to_string());
                reports.push(not_done(e.to_string()));
                continue;
            }
            Err(e) => return Err(e),
        };
        // Then the indices, on the compacted pin: compaction first, so the new
        // segments cover the rewritten fragments.
        if !opts.dry_run {
            match index::refresh(lake, &name, opts.index_merge, budget.clock_skew, &deadline).await {
                Ok(r) if r.built.is_empty() && r.updated.is_none() && r.rows_unindexed_before == 0 => {}
                Ok(r) => report.indices = Some(r),
                Err(e @ (Error::Deadline { .. } | Error::Contention { .. })) => {
                    if matches!(e, Error::Deadline { .. }) {
                        out_of_time = Some(e.to_string());
                    }
                    report.indices = Some(index::Refresh { not_done: Some(e.to_string()), ..Default::default() });
                }
                Err(e) => return Err(e),
            }
        }
        reports.push(report);
    }
    Ok(Report { tables: reports, requests: lake.requests().since(&before) })
}

async fn compact_table(lake: &Lake, table: &str, opts: &Options, skew: Duration, deadline: &Deadline, executor: &dyn Executor) -> Result<TableReport> {
    let targets = opts.targets_for(table);
    for _ in 0..MAX_REPLANS {
        let latest = manifest::read_latest(lake).await?.expect("checked by run");
        let pin = latest.tables[table].clone();
        let mut ds = lake.open_known(table, Some(pin.version), pin.known_manifest()).await?;
        let fragments_before = ds.fragments().len();
        let report = |action, after| TableReport { table: table.to_string(), targets, fragments_before: Some(fragments_before), fragments_after: Some(after), action, indices: None };
        let compaction = CompactionOptions {
            target_rows_per_fragment: targets.target_rows,
            max_source_fragments: Some(targets.max_fragments),
            ..Default::default()
        };
        let mut plan = plan_compaction(&ds, &compaction).await.map_err(|e| Error::lance(table, e))?;
        within_bytes(&mut plan, targets.max_bytes);
        if plan.num_tasks() == 0 {
            return Ok(report(TableAction::NothingToDo, fragments_before));
        }
        let source_fragments: usize = plan.tasks.iter().map(|t| t.fragments.len()).sum();
        if opts.dry_run {
            return Ok(report(TableAction::Planned { tasks: plan.num_tasks(), source_fragments }, fragments_before));
        }

        let op = format!("opt-{}", &hex::encode(<sha2::Sha256 as sha2::Digest>::digest(format!("{table}\0{}", pin.version)))[..24]);
        let attempt = uuid::Uuid::now_v7().to_string();
        let intent = Intent {
            op: op.clone(),
            attempt: attempt.clone(),
            kind: "optimize".into(),
            tables: BTreeMap::from([(table.to_string(), IntentTable { start_pin: Some(pin.version), mode: pin.mode, key: pin.key.clone(), format: None, csv: None, partitions: None, schema: None, changes: Vec::new(), evolution: Default::default() })]),
            sources: Vec::new(),
            started_at: Utc::now(),
            deadline: deadline.at(),
            worker: sidecar::worker_name(),
        };
        let id = AttemptId::new(&op, &attempt);
        sidecar::create_intent(lake, &intent).await?;
        if !single::claim_maintenance(lake, &id, table, pin.version, skew, deadline).await? {
            // Another optimizer worked on this state: plan again from what it published.
            continue;
        }
        // Nothing is committed until the rewrite: a failure before it rolls this attempt back.
        let batches = batches(table, plan.compaction_tasks().collect(), opts.parallel);
        let workers = executor.workers(batches.len());
        let executed = async {
            failpoints::hit(failpoints::OPTIMIZE_AFTER_INTENT)?;
            let results = executor.execute(lake, batches, deadline).await?;
            assert_eq!(results.len(), plan.num_tasks(), "one result per task");
            deadline.check("committing a compaction")?;
            Ok(results)
        }
        .await;
        let results = single::or_give_up(lake, &id, executed).await?;
        let properties = sidecar::commit_properties(&op, &attempt, &attempt, SCOPE_SINGLE);
        let committing = CompactionOptions { transaction_properties: Some(Arc::new(properties)), ..compaction };
        let (version, manifest, metrics) = match commit_compaction(&mut ds, results, Arc::new(DatasetIndexRemapperOptions::default()), &committing).await {
            Ok(m) => (ds.version().version, LanceManifest::of(&ds), m),
            Err(e) => match single::landed_or_give_up(lake, table, pin.version, &id).await? {
                // It landed after all: the history decides, not the error.
                Some(version) => (version, None, CompactionMetrics::default()),
                None => {
                    match e {
                        // An update or delete of the same fragments won: plan again.
                        lance::Error::RetryableCommitConflict { .. } => {
                            tracing::info!(table, "compaction conflicted with a rewrite, update or delete of the same fragments; re-planning");
                            single::await_pin_past(lake, table, pin.version, deadline).await?;
                            continue;
                        }
                        e => return Err(Error::lance(table, e)),
                    }
                }
            },
        };
        failpoints::hit(failpoints::OPTIMIZE_AFTER_COMMIT)?;

        let committed = single::Committed { id: &id, kind: "optimize", table, pin: &pin, version, manifest, changes: Vec::new() };
        let (manifest_version, pinned) = single::finish(lake, latest, committed, skew, deadline).await?;
        let after = lake.open_table(table, Some(pinned)).await?.fragments().len();
        let action = TableAction::Compacted {
            lance_version: version,
            manifest_version,
            fragments_removed: metrics.fragments_removed,
            fragments_added: metrics.fragments_added,
            tasks: plan.num_tasks(),
            workers,
        };
        return Ok(report(action, after));
    }
    Err(Error::Contention { what: "compacting", attempts: MAX_REPLANS, last: format!("table '{table}' kept changing under the plan") })
}
