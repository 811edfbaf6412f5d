//! Taking back a rolled-back upsert's commit (invariant 8) without writing a
//! file: only fragments that already exist are put back or taken away.
//!
//! An upsert (Lance's merge-insert, rows rewritten whole) at version `v`
//! added new fragments `N` holding its rows, marked the rows it replaced as
//! deleted in fragments `A`, and dropped fragments `R` whose every row it
//! replaced. Two states of the table can be undone exactly:
//!
//! - **Untouched**: nothing changed `N` or `A` since `v`, and no index
//!   changed. Remove `N`, give `A` back its deletions of `v - 1` and put `R`
//!   back as it was: the rows the upsert replaced return, its own go.
//! - **Superseded**: every fragment of `N` was dropped since, each by a
//!   commit that saw the upsert's rows and stands (the caller finds those
//!   commits in the transactions it has read, and proves that: decided
//!   forward, or itself rolled back and already removed as superseded; a
//!   compaction among them moved the rows, and is refused). Each of its keys then has a newer row, or was deleted
//!   after it; nothing the upsert replaced may come back. Only the removal
//!   is recorded. A dropper rolled back and not yet removed is removed first
//!   (it may put `N` back), then the upsert is planned again.
//!
//! Anything in between (some of its rows replaced since, or a fragment it
//! touched changed by another commit) would need new deletion files; a file
//! written by a remover that then stalls could be taken by cleanup before
//! its commit lands. That case is refused, with what to do.

use std::collections::BTreeMap;

use lance::Dataset;
use lance::dataset::transaction::{Operation, UpdateMode};
use lance::index::DatasetIndexExt;
use lance::table::format::Fragment;

use crate::error::{Error, Result};

/// How to take back an upsert.
pub(crate) enum Undo {
    /// Commit this (on the latest version the plan read).
    Commit(Operation),
    /// Every one of its new fragments (these) was dropped since: record the
    /// removal once each commit that dropped them is proven to stand.
    Superseded(Vec<u64>),
}

/// How to take back the upsert `op` committed at `at` (the table at that
/// version), given `before` (the version it landed on) and `latest`;
/// `Err(reason)` when it cannot be undone exactly.
pub(crate) async fn plan(table: &str, op: &Operation, before: &Dataset, at: &Dataset, latest: &Dataset) -> Result<Result<Undo, String>> {
    let version = at.version().version;
    let refuse = |why: String| {
        Ok(Err(format!(
            "table '{table}' version {version} is a rolled-back upsert, and {why}; removing its rows exactly would need \
             rows written anew. Accept it with `sluice adopt {table} --version {version}`, or repair the table by hand"
        )))
    };
    if let Operation::Update { update_mode: Some(UpdateMode::RewriteColumns), .. } = op {
        return refuse("it rewrote columns in place".into());
    }
    let by_id = |ds: &Dataset| ds.fragments().iter().map(|f| (f.id, f.clone())).collect::<BTreeMap<u64, Fragment>>();
    let (was, then, now) = (by_id(before), by_id(at), by_id(latest));
    let added: Vec<u64> = then.keys().filter(|id| !was.contains_key(id)).copied().collect();
    let changed: Vec<u64> = then.iter().filter(|(id, f)| was.get(id).is_some_and(|w| w != *f)).map(|(id, _)| *id).collect();
    let dropped: Vec<&Fragment> = was.values().filter(|f| !then.contains_key(&f.id)).collect();
    if let Some(id) = changed.iter().find(|id| was[id].files != then[id].files) {
        return refuse(format!("it rewrote the data of fragment {id}"));
    }
    let unchanged = |ids: &[u64]| ids.iter().all(|id| now.get(id) == then.get(id));

    if unchanged(&added) && unchanged(&changed) {
        if index_ids(latest, table).await? != index_ids(at, table).await? {
            return refuse("an index changed since".into());
        }
        // Lance renumbers a new fragment of id 0, and a deletion file is found by its fragment's id.
        if dropped.iter().any(|f| f.id == 0 && f.deletion_file.is_some()) {
            return refuse("it dropped fragment 0, which had deletions before".into());
        }
        return Ok(Ok(Undo::Commit(Operation::Update {
            removed_fragment_ids: added,
            updated_fragments: changed.iter().map(|id| was[id].clone()).collect(),
            new_fragments: dropped.into_iter().cloned().collect(),
            // Every field: the fragments whose deletions go back leave every
            // index's coverage, so an index built meanwhile on a version that
            // lacked those rows is never trusted for them.
            fields_modified: latest.schema().fields_pre_order().filter_map(|f| u32::try_from(f.id).ok()).collect(),
            compacted_sstables: vec![],
            fields_for_preserving_frag_bitmap: vec![],
            update_mode: Some(UpdateMode::RewriteRows),
            inserted_rows_filter: None,
            updated_fragment_offsets: None,
        })));
    }
    if unchanged(&added) {
        return refuse("another commit changed a fragment it had changed".into());
    }
    if added.iter().any(|id| now.contains_key(id)) {
        return refuse("some of its rows were replaced since and some were not".into());
    }
    Ok(Ok(Undo::Superseded(added)))
}

async fn index_ids(ds: &Dataset, table: &str) -> Result<Vec<uuid::Uuid>> {
    let mut ids: Vec<uuid::Uuid> = ds.load_indices().await.map_err(|e| Error::lance(table, e))?.iter().map(|i| i.uuid).collect();
    ids.sort();
    Ok(ids)
}
