//! New columns through the door: a table whose schema evolves by
//! `add-columns` takes a column its sources have and it lacks as a new
//! nullable column, null in every earlier row. An operation of its own, like
//! an index change, published before the rows that need the column:
//!
//! 1. the table's published pin, and the columns it lacks (none: done);
//! 2. the intent (kind `columns`), then a claim on the table's maintenance at
//!    the pin (one schema change, index change or compaction per published state);
//! 3. one Lance `Merge` commit that adds the columns to the schema and keeps
//!    every fragment as it is (Lance reads a column a fragment has no data
//!    for as null), tagged with the attempt and scope `columns`. A merge
//!    conflicts with any commit after the version it read, so it is built on
//!    Lance's latest version and, when another commit lands first, rebuilt
//!    on the new latest (bounded);
//! 4. decided forward and published (`single.rs`).
//!
//! A column Lance's latest version already has (added by an operation not yet
//! published) is not added twice: the commit restates it, and the publish
//! shows it. Its type is then the one the values are cast to. The commit
//! keeps every row, so it passes any other writer's vetting; one that lands
//! after its attempt was rolled back shows only a column of nulls.

use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::{Field, Schema};
use lance::dataset::CommitBuilder;
use lance::dataset::transaction::{Operation, Transaction};

use crate::deadline::Deadline;
use crate::error::{Error, Result};
use crate::failpoints;
use crate::fence;
use crate::lake::Lake;
use crate::known_manifest::LanceManifest;
use crate::manifest::{self, TablePin};
use crate::sidecar::{self, AttemptId, SCOPE_COLUMNS};
use crate::single;
use crate::types;

/// Rounds of looking at the table (another maintenance held its state, or
/// the commit lost a race to one that cannot be rebuilt over).
const MAX_ROUNDS: u32 = 8;
/// Commits of one attempt rebuilt on a newer latest version after losing to
/// another writer's commit.
const MAX_REBUILDS: u32 = 16;

/// Add `wanted` (those of them the published table lacks) to `table` as
/// nullable columns. Returns the manifest version that shows them all.
pub(crate) async fn add(lake: &Lake, table: &str, wanted: &[Field], skew: Duration, deadline: &Deadline) -> Result<u64> {
    assert!(wanted.iter().all(|f| f.is_nullable()), "new columns are nullable: earlier rows have no value");
    let mut waited = false;
    for _ in 0..MAX_ROUNDS {
        let latest = manifest::read_latest(lake).await?.ok_or_else(|| Error::Usage(format!("no lake at {}", lake.uri())))?;
        let Some(pin) = latest.tables.get(table).cloned() else {
            // Created in Lance by a writer that has not published it yet (as a
            // rule, it does within moments): wait for that once, bounded.
            if !waited {
                waited = true;
                failpoints::hit(failpoints::COLUMNS_AWAIT_TABLE)?;
                single::await_pin_past(lake, table, 0, deadline).await?;
                continue;
            }
            return Err(Error::Blocked(format!(
                "table '{table}' is being created by another operation that has not published it yet; deliver this source again once it has"
            )));
        };
        let published = lake.open_known(table, Some(pin.version), pin.known_manifest()).await?;
        let missing: Vec<Field> = wanted.iter().filter(|f| published.schema().field(f.name()).is_none()).cloned().collect();
        if missing.is_empty() {
            return Ok(latest.version);
        }
        let what = types::describe(&Schema::new(missing.clone()));
        let kind = single::Kind { name: "columns", prefix: "col" };
        let Some(id) = single::begin(lake, kind, table, &pin, &[], &what, skew, deadline).await? else { continue };
        tracing::info!(table, columns = %what, op = %id, "adding columns the sources have and the table lacks");
        let Some((version, manifest)) = commit(lake, table, &pin, &id, &missing, deadline).await? else { continue };
        failpoints::hit(failpoints::COLUMNS_AFTER_COMMIT)?;
        let committed = single::Committed { id: &id, kind: "columns", table, pin: &pin, version, manifest, changes: Vec::new() };
        let (manifest_version, _) = single::finish(lake, latest, committed, skew, deadline).await?;
        return Ok(manifest_version);
    }
    Err(Error::Contention { what: "adding columns", attempts: MAX_ROUNDS, last: format!("table '{table}' kept changing under the schema change") })
}

/// Commit the merge adding `missing` on Lance's latest version of `table`.
/// `None`: the attempt was given up after losing every rebuild (look again).
async fn commit(lake: &Lake, table: &str, pin: &TablePin, id: &AttemptId, missing: &[Field], deadline: &Deadline) -> Result<Option<(u64, Option<LanceManifest>)>> {
    for _ in 0..MAX_REBUILDS {
        let built = async {
            deadline.check("committing new columns")?;
            let ds = Arc::new(lake.open_table(table, None).await?);
            let add: Vec<Field> = missing.iter().filter(|f| ds.schema().field(f.name()).is_none()).cloned().collect();
            let mut schema = ds.schema().clone();
            if !add.is_empty() {
                schema = schema.merge(&Schema::new(add)).map_err(|e| Error::lance(table, e))?;
                schema.try_set_field_id(Some(ds.manifest().max_field_id())).map_err(|e| Error::lance(table, e))?;
            }
            let operation = Operation::Merge { fragments: ds.fragments().as_ref().clone(), schema, preserves_nullability: true };
            let mut txn = Transaction::new(ds.version().version, operation, None);
            txn.transaction_properties = Some(Arc::new(sidecar::commit_properties(&id.op, &id.attempt, &id.attempt, SCOPE_COLUMNS)));
            let commit = deadline.bound(CommitBuilder::new(ds));
            // Frozen here, a process is like a paused VM: woken, its commit still lands.
            failpoints::hit(failpoints::COLUMNS_BEFORE_COMMIT)?;
            Ok((commit, txn))
        }
        .await;
        let (commit, txn) = single::or_give_up(lake, id, built).await?;
        let committed = commit.execute(txn).await;
        let error = match committed {
            Ok(ds) => return Ok(Some((ds.version().version, LanceManifest::of(&ds)))),
            Err(e) => e,
        };
        // An error is not proof: the history says whether it landed.
        if let Some(version) = fence::committed_by(lake, table, pin.version, &id.attempt).await? {
            return Ok(Some((version, None)));
        }
        if !matches!(error, lance::Error::RetryableCommitConflict { .. }) {
            single::give_up(lake, id).await?;
            return Err(Error::lance(table, error));
        }
        tracing::info!(table, op = %id, "another commit landed first; adding the columns on the new latest version");
    }
    single::give_up(lake, id).await?;
    Ok(None)
}
