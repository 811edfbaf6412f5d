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
//! - A run compacts at most `max_source_fragments` fragments per table; a
//!   larger backlog is worked off over several runs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use lance::dataset::index::DatasetIndexRemapperOptions;
use lance::dataset::optimize::{CompactionOptions, commit_compaction, plan_compaction};
use serde::Serialize;

use crate::counting::RequestSnapshot;
use crate::deadline::Deadline;
use crate::error::{Error, Result};
use crate::failpoints;
use crate::ingest::Budget;
use crate::lake::{Created, Lake};
use crate::manifest::{self, Goal, Published};
use crate::recover;
use crate::sidecar::{self, Intent, IntentTable, SCOPE_SINGLE};

/// Re-plans after a conflicting update or delete of the planned fragments.
const MAX_REPLANS: u32 = 3;

#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Fragments smaller than this many rows are compacted.
    pub target_rows_per_fragment: usize,
    /// Budget per table and run.
    pub max_source_fragments: usize,
    pub dry_run: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options { target_rows_per_fragment: 1024 * 1024, max_source_fragments: 1000, dry_run: false }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum TableAction {
    /// Nothing small enough to compact at the pin.
    NothingToDo,
    /// `--dry-run`: what would be compacted.
    Planned { tasks: usize, source_fragments: usize },
    /// Compacted and published at this manifest version.
    Compacted { lance_version: u64, manifest_version: u64, fragments_removed: usize, fragments_added: usize },
    /// Another optimizer compacted this same state; it is published.
    DoneByOther,
}

#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    pub table: String,
    pub fragments_before: usize,
    pub fragments_after: usize,
    #[serde(flatten)]
    pub action: TableAction,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub tables: Vec<TableReport>,
    pub requests: RequestSnapshot,
}

/// Compact `tables` (every published table if empty).
pub async fn run(lake: &Lake, tables: &[String], opts: Options, budget: Budget) -> Result<Report> {
    let before = lake.requests();
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
    let mut reports = Vec::with_capacity(names.len());
    for name in names {
        reports.push(compact_table(lake, &name, opts, budget.clock_skew, &deadline).await?);
    }
    Ok(Report { tables: reports, requests: lake.requests().since(&before) })
}

async fn compact_table(lake: &Lake, table: &str, opts: Options, skew: Duration, deadline: &Deadline) -> Result<TableReport> {
    for _ in 0..MAX_REPLANS {
        let latest = manifest::read_latest(lake).await?.expect("checked by run");
        let pin = latest.tables[table].clone();
        let mut ds = lake.open_table(table, Some(pin.version)).await?;
        let fragments_before = ds.fragments().len();
        let report = |action, after| TableReport { table: table.to_string(), fragments_before, fragments_after: after, action };
        let compaction = CompactionOptions {
            target_rows_per_fragment: opts.target_rows_per_fragment,
            max_source_fragments: Some(opts.max_source_fragments),
            ..Default::default()
        };
        let plan = plan_compaction(&ds, &compaction).await.map_err(|e| Error::lance(table, e))?;
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
            tables: BTreeMap::from([(table.to_string(), IntentTable { start_pin: Some(pin.version), mode: pin.mode, key: pin.key.clone(), format: None, schema: None })]),
            sources: Vec::new(),
            started_at: Utc::now(),
            deadline: deadline.at(),
            worker: sidecar::worker_name(),
        };
        match sidecar::create_intent(lake, &intent).await? {
            Created::Mine => {}
            // Another optimizer of this same state: wait for it, then look again.
            Created::Theirs(other) => {
                recover::await_gone(lake, &other.op, other.deadline, skew, deadline).await?;
                let now = manifest::read_latest(lake).await?.expect("checked by run");
                if now.tables[table].version > pin.version {
                    let after = lake.open_table(table, Some(now.tables[table].version)).await?.fragments().len();
                    return Ok(report(TableAction::DoneByOther, after));
                }
                continue;
            }
            Created::Gone => continue,
        }
        // Nothing is committed until the rewrite: a failure before it removes the intent.
        let executed = async {
            failpoints::hit(failpoints::OPTIMIZE_AFTER_INTENT)?;
            let mut results = Vec::with_capacity(plan.num_tasks());
            for task in plan.compaction_tasks() {
                deadline.check("a compaction task")?;
                results.push(task.execute(&ds).await.map_err(|e| Error::lance(table, e))?);
            }
            deadline.check("committing a compaction")?;
            Ok(results)
        }
        .await;
        let results = match executed {
            Ok(results) => results,
            Err(e) => {
                sidecar::finish(lake, &op, &attempt, false).await?;
                return Err(e);
            }
        };
        let properties = sidecar::commit_properties(&op, &attempt, &attempt, SCOPE_SINGLE);
        let committing = CompactionOptions { transaction_properties: Some(Arc::new(properties)), ..compaction };
        let metrics = match commit_compaction(&mut ds, results, Arc::new(DatasetIndexRemapperOptions::default()), &committing).await {
            Ok(m) => m,
            // An update or delete of the same fragments won: nothing of ours landed; plan again.
            Err(lance::Error::RetryableCommitConflict { .. }) => {
                sidecar::finish(lake, &op, &attempt, false).await?;
                tracing::info!(table, "compaction conflicted with an update of the same fragments; re-planning");
                continue;
            }
            Err(e) => return Err(Error::lance(table, e)),
        };
        let version = ds.version().version;
        failpoints::hit(failpoints::OPTIMIZE_AFTER_COMMIT)?;

        let pinned = recover::publishable_pin(lake, table, pin.version, version, &op, skew, deadline).await?;
        let goal = Goal {
            published: Published { op: op.clone(), attempt, kind: "optimize".into(), tables: BTreeMap::from([(table.to_string(), pinned)]), sources: 0 },
            pins: BTreeMap::from([(table.to_string(), manifest::TablePin { version: pinned, ..pin })]),
        };
        let manifest_version = manifest::publish(lake, latest, &goal, deadline).await?.version();
        sidecar::finish(lake, &op, &intent.attempt, false).await?;
        let after = lake.open_table(table, Some(pinned)).await?.fragments().len();
        let action = TableAction::Compacted {
            lance_version: version,
            manifest_version,
            fragments_removed: metrics.fragments_removed,
            fragments_added: metrics.fragments_added,
        };
        return Ok(report(action, after));
    }
    Err(Error::Contention { what: "compacting", attempts: MAX_REPLANS, last: format!("table '{table}' kept changing under the plan") })
}
