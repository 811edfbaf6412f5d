//! Cleanup: old manifest versions, old Lance versions, the files dead writers
//! left, and sidecars nobody needs any more (docs/INVARIANTS.md invariant 11).
//!
//! One run:
//! 1. **Heal** (a recovery sweep), so dead writers are decided first.
//! 2. **In flight**: one LIST of `_ops/`. The oldest intent (or now) minus the
//!    clock skew is the *orphan cutoff*: every operation that can still commit
//!    wrote its intent before its first data file, so an unreferenced file
//!    older than the cutoff belongs to a writer that finished, gave up or was
//!    decided by recovery, and can go now rather than after Lance's seven days.
//! 3. **Manifest versions**: a version is removed once its successor is older
//!    than `keep` (at least the lake's retention floor) and it is not among the
//!    newest `keep_versions`; always a prefix, never the latest. The hint is
//!    refreshed first. A writer or reader holding a removed version notices by
//!    its age and checks with a LIST (`manifest.rs`), so it can neither publish
//!    into the removed range nor take it for the latest.
//! 4. **Lance versions** of each published table below both the pin of the
//!    oldest kept manifest version and the start pin of every operation in
//!    flight on it, through Lance's own cleanup, with unreferenced files older
//!    than the orphan cutoff (and only those: `HideNewer`) deleted too.
//! 5. **Sidecars**: stale leases older than the retention floor, audit records
//!    older than `keep_audit`; never those of an attempt still in flight.
//!    Group-commit queue entries of attempts decided and finished go.
//!    Claims in `_ingested/` (the exactly-once ledger), decisions (create-only
//!    fences a stalled worker must lose) and adoptions are kept.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use lance::dataset::cleanup::{CleanupPolicy, RemovalStats};
use lance::io::WrappingObjectStore;
use serde::Serialize;

use crate::audit;
use crate::counting::RequestSnapshot;
use crate::deadline::{self, Deadline};
use crate::error::{Error, Result};
use crate::hide_newer::HideNewer;
use crate::lake::Lake;
use crate::manifest::{self, Manifest};
use crate::queue;
use crate::recover;
use crate::sidecar::{self, AttemptId, Intent, OpsObject};

/// Granularity of store timestamps (S3 reports whole seconds).
const TIMESTAMP_GRAIN: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// A manifest version is kept until its successor is this old.
    pub keep: Duration,
    /// ... and the newest this many versions are always kept.
    pub keep_versions: usize,
    /// Audit records are kept this long.
    pub keep_audit: Duration,
    pub dry_run: bool,
}

impl Options {
    /// Keep manifest versions for the lake's retention floor, the newest 10, audit records for 30 days.
    pub fn for_lake(lake: &Lake) -> Options {
        Options {
            keep: lake.timing().retention_floor,
            keep_versions: 10,
            keep_audit: Duration::from_secs(30 * 24 * 3600),
            dry_run: false,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub dry_run: bool,
    /// What the healing sweep found and did.
    pub recovery: recover::SweepReport,
    pub manifest: ManifestCleanup,
    /// Files newer than this were left alone (live writers may still commit them).
    pub orphan_cutoff: DateTime<Utc>,
    pub tables: Vec<TableCleanup>,
    pub sidecars: SidecarCleanup,
    /// Steps the run had no time to start ("table NAME", "sidecars"); the next run does them.
    pub not_done: Vec<String>,
    pub requests: RequestSnapshot,
}

#[derive(Debug, Clone, Serialize)]
pub struct ManifestCleanup {
    pub latest: u64,
    pub oldest_kept: u64,
    pub removed: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TableCleanup {
    pub table: String,
    /// Lance versions from this one up are kept.
    pub kept_from: u64,
    pub lance_versions_removed: u64,
    pub data_files_removed: u64,
    pub other_files_removed: u64,
    pub bytes_removed: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SidecarCleanup {
    pub leases: u64,
    pub audit_records: u64,
    /// Group-commit queue entries of attempts decided and finished.
    pub queue_entries: u64,
}

/// What `_ops/` held when listed.
struct InFlight {
    /// Intents by operation; `None` if unreadable (its tables are unknown).
    intents: BTreeMap<AttemptId, Option<Intent>>,
    /// When the oldest intent was written, or when the LIST started if none.
    oldest: DateTime<Utc>,
    stale_leases: Vec<(AttemptId, u32, DateTime<Utc>)>,
}

pub async fn run(lake: &Lake, opts: Options, timeout: Duration) -> Result<Report> {
    let timing = lake.timing();
    if opts.keep < timing.retention_floor {
        return Err(Error::Usage(format!(
            "--keep {}s is below the retention floor {}s: a worker may still act on a manifest version that young; \
             keep longer, or lower --retention-floor on every worker (it must exceed the longest operation timeout plus the clock skew)",
            opts.keep.as_secs(),
            timing.retention_floor.as_secs()
        )));
    }
    let before = lake.requests();
    let deadline = Deadline::after(timeout);
    let recovery = Box::pin(recover::sweep(lake, recover::Options { clock_skew: timing.clock_skew, dry_run: opts.dry_run }, deadline.remaining())).await?;

    // A dry run's sweep only planned: the intents it would resolve are as good
    // as gone for what cleanup may take, as they are in the real run.
    let resolved: BTreeSet<AttemptId> = recovery
        .ops
        .iter()
        .filter(|o| matches!(o.action, recover::Action::Planned { .. }))
        .map(|o| AttemptId::new(&o.op, &o.attempt))
        .collect();
    let in_flight = in_flight(lake, &resolved).await?;
    let orphan_cutoff = deadline::earlier(in_flight.oldest, timing.clock_skew.saturating_add(TIMESTAMP_GRAIN));

    deadline.check("cleaning up manifest versions")?;
    let (manifest, oldest, latest) = clean_manifests(lake, &opts).await?;

    // Out of time: start no further step, and say which were not reached.
    let mut not_done = Vec::new();
    let mut tables = Vec::with_capacity(latest.tables.len());
    for table in latest.tables.keys() {
        if deadline.remaining().is_zero() {
            not_done.push(format!("table {table}"));
            continue;
        }
        let kept_from = keep_from(table, &oldest, &in_flight);
        let stats = clean_table(lake, table, kept_from, orphan_cutoff, opts.dry_run).await?;
        tables.push(TableCleanup {
            table: table.clone(),
            kept_from,
            lance_versions_removed: stats.old_versions,
            data_files_removed: stats.data_files_removed,
            other_files_removed: stats.transaction_files_removed + stats.deletion_files_removed + stats.index_files_removed,
            bytes_removed: stats.bytes_removed,
        });
    }

    let sidecars = if deadline.remaining().is_zero() {
        not_done.push("sidecars".into());
        SidecarCleanup::default()
    } else {
        clean_sidecars(lake, &opts, &in_flight, &deadline).await?
    };
    Ok(Report { dry_run: opts.dry_run, recovery, manifest, orphan_cutoff, tables, sidecars, not_done, requests: lake.requests().since(&before) })
}

/// The intents in flight, but those in `resolved`.
async fn in_flight(lake: &Lake, resolved: &BTreeSet<AttemptId>) -> Result<InFlight> {
    let listed_at = Utc::now();
    let listing = lake.list(sidecar::OPS).await?;
    let mut intents = BTreeMap::new();
    let mut oldest = listed_at;
    let mut leases = Vec::new();
    for meta in &listing {
        match sidecar::ops_object(lake, &meta.location) {
            Some(OpsObject::Intent(id)) if resolved.contains(&id) => {}
            Some(OpsObject::Intent(id)) => {
                let intent = match sidecar::read_intent(lake, &id).await {
                    Ok(Some(intent)) => Some(intent),
                    Ok(None) => continue, // finished since the LIST
                    Err(e) => {
                        tracing::warn!(op = %id, error = %e, "unreadable intent: cleanup keeps every table's versions");
                        None
                    }
                };
                oldest = oldest.min(meta.last_modified);
                intents.insert(id, intent);
            }
            Some(OpsObject::Lease(id, k)) => leases.push((id, k, meta.last_modified)),
            None => {}
        }
    }
    let stale_leases = leases.into_iter().filter(|(id, _, _)| !intents.contains_key(id)).collect();
    Ok(InFlight { intents, oldest, stale_leases })
}

/// Remove the manifest versions past retention. Returns what it did, the oldest
/// version kept and the latest.
async fn clean_manifests(lake: &Lake, opts: &Options) -> Result<(ManifestCleanup, Manifest, Manifest)> {
    let listed_at = Utc::now();
    let versions = manifest::list_versions(lake).await?;
    let Some(&(latest_version, _)) = versions.last() else {
        return Err(Error::Usage(format!("no lake at {}: nothing to clean up", lake.uri())));
    };
    let cutoff = deadline::earlier(listed_at, opts.keep);
    // Versions[i] may go once versions[i + 1] is older than the cutoff: a prefix.
    let removable_limit = versions.len().saturating_sub(opts.keep_versions.max(1));
    let first_kept = (0..removable_limit).find(|&i| versions[i + 1].1 > cutoff).unwrap_or(removable_limit);
    let oldest_kept = versions[first_kept].0;
    assert!(oldest_kept <= latest_version, "cleanup never removes the latest manifest version");

    let read = |v: u64| async move {
        manifest::read_version(lake, v).await?.ok_or_else(|| {
            Error::Blocked(format!("manifest version {v} vanished while cleanup read it: another cleanup is running; retry"))
        })
    };
    let oldest = read(oldest_kept).await?;
    let latest = read(latest_version).await?;
    let doomed: Vec<u64> = versions[..first_kept].iter().map(|(v, _)| *v).collect();
    if !opts.dry_run {
        let hint = manifest::read_hint(lake).await?;
        let half_window = deadline::earlier(listed_at, lake.timing().trust_window() / 2);
        let stale = hint.is_none_or(|h| h.version < latest_version || (h.version == latest_version && h.as_of() < half_window));
        if stale {
            manifest::refresh_hint(lake, &latest, listed_at).await?;
        }
        manifest::delete_versions(lake, &doomed).await?;
    }
    Ok((ManifestCleanup { latest: latest_version, oldest_kept, removed: doomed.len() as u64 }, oldest, latest))
}

/// The oldest Lance version of `table` anyone may still need: the oldest kept
/// manifest version's pin, or an in-flight operation's start pin if lower.
fn keep_from(table: &str, oldest: &Manifest, in_flight: &InFlight) -> u64 {
    // A table the oldest kept version does not pin yet is kept whole.
    let mut keep = oldest.tables.get(table).map_or(0, |p| p.version);
    for intent in in_flight.intents.values() {
        match intent {
            None => return 0,
            Some(i) => {
                if let Some(t) = i.tables.get(table) {
                    keep = keep.min(t.start_pin.unwrap_or(0));
                }
            }
        }
    }
    keep
}

async fn clean_table(lake: &Lake, table: &str, kept_from: u64, orphan_cutoff: DateTime<Utc>, dry_run: bool) -> Result<RemovalStats> {
    let ds = lake.open_table(table, None).await?;
    let ds = ds.with_object_store_wrappers([Arc::new(HideNewer { cutoff: orphan_cutoff }) as Arc<dyn WrappingObjectStore>]);
    let policy = CleanupPolicy {
        before_version: Some(kept_from),
        // Safe here only because HideNewer keeps files newer than the cutoff out of sight.
        delete_unverified: true,
        error_if_tagged_old_versions: false,
        ..CleanupPolicy::default()
    };
    let cleanup = ds.cleanup(policy);
    let stats = if dry_run { cleanup.explain().await.map(|e| e.stats) } else { cleanup.execute().await };
    stats.map_err(|e| Error::lance(table, e))
}

async fn clean_sidecars(lake: &Lake, opts: &Options, in_flight: &InFlight, deadline: &Deadline) -> Result<SidecarCleanup> {
    let now = Utc::now();
    let floor = deadline::earlier(now, lake.timing().retention_floor);
    let audit_cutoff = deadline::earlier(now, opts.keep_audit);
    let mut done = SidecarCleanup::default();
    // Audit records are named `<op>.<attempt>.json`. Decisions stay for good
    // (create-only: one deleted could be won again by a worker stalled past it).
    {
        let (dir, cutoff, count) = (audit::AUDIT, audit_cutoff, &mut done.audit_records);
        for meta in lake.list(dir).await? {
            let Some(rel) = lake.relative(&meta.location) else { continue };
            let name = rel.strip_prefix(dir).and_then(|n| n.strip_prefix('/')).and_then(|n| n.strip_suffix(".json"));
            let Some(id) = name.and_then(|n| n.split_once('.')).map(|(op, attempt)| AttemptId::new(op, attempt)) else { continue };
            if meta.last_modified < cutoff && !in_flight.intents.contains_key(&id) {
                if !opts.dry_run {
                    lake.delete(&rel).await?;
                }
                *count += 1;
            }
        }
    }
    // A queue entry is only an offer: once its attempt is decided (nobody can
    // take it any more) and finished (its intent gone), nobody reads it. The
    // decision is read before the intent: an attempt deletes its intent only
    // after its decision exists. One unreadable entry costs only itself; the
    // next run looks again.
    for (table, id) in queue::list_all(lake).await? {
        if deadline.remaining().is_zero() {
            break;
        }
        let finished = async {
            let finished = sidecar::read_decision(lake, &id).await?.is_some() && !sidecar::intent_exists(lake, &id).await?;
            if finished && !opts.dry_run {
                queue::withdraw(lake, &table, &id).await?;
            }
            Ok::<_, Error>(finished)
        };
        match finished.await {
            Ok(finished) => done.queue_entries += u64::from(finished),
            Err(e) => tracing::warn!(table, attempt = %id, error = %e, "could not clean up a queue entry; the next run looks again"),
        }
    }
    for (id, k, written) in &in_flight.stale_leases {
        if *written < floor {
            if !opts.dry_run {
                sidecar::remove_lease(lake, id, *k).await?;
            }
            done.leases += 1;
        }
    }
    Ok(done)
}
