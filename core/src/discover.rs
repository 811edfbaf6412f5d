//! Finding sources: a local folder, a glob or an `s3://bucket/prefix/`
//! expanded to its files, less what the ledger already holds, ingested in
//! bounded batches. This is also the backfill that catches sources whose
//! events were lost: rerunning it is cheap and never ingests a file twice
//! (the door decides that; the ledger check only saves work).
//!
//! Cost on S3: one LIST page per 1,000 listed keys, the ledger check (one
//! LIST per candidate when there are few, else pages of the whole ledger),
//! one LIST of the quarantine, then the ingests.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use serde::Serialize;

use crate::decode::Progress;
use crate::deadline::Deadline;
use crate::error::{Error, Result};
use crate::ingest::{self, Budget, SourceStatus, TableRequest};
use crate::lake::{Lake, s3_options_from_env, s3_store};
use crate::sidecar;
use crate::source::Source;

/// Candidates checked one LIST each; above this, the whole ledger is listed.
const PER_SOURCE_CHECKS: usize = 100;
/// Concurrent per-source ledger LISTs (and local hash passes).
const CHECK_CONCURRENCY: usize = 16;
/// Files per batch by default: one Lance commit and one publish each.
pub const DEFAULT_BATCH: usize = 100;
/// Bad files a batch drops (quarantined) before the run gives up.
const MAX_BAD_PER_BATCH: usize = 100;

/// One file a listing found.
#[derive(Debug, Clone)]
pub struct Listed {
    pub uri: String,
    pub size: u64,
    pub modified: DateTime<Utc>,
    /// The ledger id, when the listing alone tells the version (S3's ETag).
    id: Option<String>,
}

/// Is `spec` a collection of files (a folder, a glob, an S3 prefix) rather than one file?
pub fn is_collection(spec: &str) -> bool {
    if spec.starts_with("s3://") {
        return spec.ends_with('/') || spec.trim_start_matches("s3://").split_once('/').is_none_or(|(_, k)| k.is_empty());
    }
    has_glob(spec) || std::path::Path::new(spec.strip_prefix("file://").unwrap_or(spec)).is_dir()
}

fn has_glob(spec: &str) -> bool {
    spec.contains(['*', '?', '['])
}

/// Names tools leave beside data (`_SUCCESS`, `.crc`, `.DS_Store`): not sources.
fn skipped_name(name: &str) -> bool {
    name.starts_with('_') || name.starts_with('.')
}

/// A time: RFC 3339 (`2026-11-30T05:00:00Z`), or a span ago (`6h`, `2days`).
pub fn parse_since(s: &str) -> std::result::Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let ago = humantime::parse_duration(s).map_err(|_| format!("'{s}': use an RFC 3339 time (2026-11-30T05:00:00Z) or a span ago (6h, 2days)"))?;
    Ok(Utc::now() - chrono::Duration::from_std(ago).map_err(|e| format!("'{s}': {e}"))?)
}

/// Every file `spec` names, modified at or after `since`, sorted by name.
pub async fn expand(spec: &str, since: Option<DateTime<Utc>>) -> Result<Vec<Listed>> {
    let mut out = if let Some(rest) = spec.strip_prefix("s3://") {
        list_s3(spec, rest).await?
    } else {
        tokio::task::spawn_blocking({
            let spec = spec.to_string();
            move || list_local(&spec)
        })
        .await
        .map_err(|e| Error::Blocked(format!("listing {spec}: {e}")))??
    };
    out.retain(|l| since.is_none_or(|t| l.modified >= t));
    out.sort_by(|a, b| a.uri.cmp(&b.uri));
    Ok(out)
}

async fn list_s3(spec: &str, rest: &str) -> Result<Vec<Listed>> {
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(Error::Usage(format!("'{spec}': use s3://BUCKET/PREFIX/")));
    }
    let store = s3_store(bucket, &s3_options_from_env())?;
    let prefix = Path::parse(prefix).map_err(|e| Error::Usage(format!("'{spec}': not a prefix the S3 client can list: {e}")))?;
    let mut out = Vec::new();
    let mut listing = store.list(Some(&prefix));
    while let Some(meta) = listing.try_next().await.map_err(|e| Error::store(spec, e))? {
        let key = meta.location.to_string();
        if key.ends_with('/') || key.rsplit('/').next().is_some_and(skipped_name) {
            continue;
        }
        let uri = format!("s3://{bucket}/{key}");
        // The identity resolve() would give: a listing has no version ids, so
        // on a versioned bucket the id differs and the door decides instead.
        let id = meta.e_tag.as_deref().map(|e| Source::id_of(&format!("{uri}#etag={}", e.trim_matches('"'))));
        out.push(Listed { uri, size: meta.size, modified: meta.last_modified, id });
    }
    Ok(out)
}

fn list_local(spec: &str) -> Result<Vec<Listed>> {
    let spec = spec.strip_prefix("file://").unwrap_or(spec);
    let paths: Vec<std::path::PathBuf> = if has_glob(spec) {
        // A glob may match nothing (no new files); a folder before its
        // pattern that does not exist is a mistyped path.
        let folder: std::path::PathBuf = std::path::Path::new(spec).components().take_while(|c| !has_glob(&c.as_os_str().to_string_lossy())).collect();
        if !folder.as_os_str().is_empty() && !folder.is_dir() {
            return Err(Error::io(folder.display(), std::io::Error::new(std::io::ErrorKind::NotFound, "no such folder")));
        }
        glob::glob(spec)
            .map_err(|e| Error::Usage(format!("'{spec}': not a glob pattern: {e}")))?
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::io(spec, std::io::Error::from(e)))?
    } else {
        let mut found = Vec::new();
        let mut dirs = vec![std::path::PathBuf::from(spec)];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).map_err(|e| Error::io(dir.display(), e))? {
                let path = entry.map_err(|e| Error::io(dir.display(), e))?.path();
                if path.file_name().and_then(|n| n.to_str()).is_some_and(skipped_name) {
                    continue;
                }
                if path.is_dir() { dirs.push(path) } else { found.push(path) }
            }
        }
        found
    };
    let mut out = Vec::with_capacity(paths.len());
    for path in paths.into_iter().filter(|p| p.is_file()) {
        let meta = std::fs::metadata(&path).map_err(|e| Error::io(path.display(), e))?;
        let modified = meta.modified().map(DateTime::<Utc>::from).unwrap_or_default();
        let uri = std::path::absolute(&path).map_err(|e| Error::io(path.display(), e))?.display().to_string();
        out.push(Listed { uri, size: meta.len(), modified, id: None });
    }
    Ok(out)
}

/// What a backfill did.
#[derive(Debug, Default, Serialize)]
pub struct BackfillReport {
    pub listed: usize,
    /// Left out: the ledger holds them (ingested, or in flight).
    pub held: usize,
    /// Left out: quarantined earlier as bad input.
    pub quarantined_before: usize,
    pub ingested: usize,
    /// Candidates the door found ingested after all (a versioned bucket, or a race).
    pub already_ingested: usize,
    /// Bad input met now: quarantined, each with its reason.
    pub bad: Vec<BadSource>,
    /// Left out: files no table takes or of no known format (a README, a
    /// folder that is not a table name), each with the reason.
    pub skipped: Vec<BadSource>,
    pub batches: usize,
    pub rows: u64,
    pub manifest_version: Option<u64>,
    /// Candidates left for the next run (the deadline came first).
    pub not_done: usize,
    /// Left for the next run: local files that changed while they were
    /// read (still being written), each with what changed.
    pub changing: Vec<BadSource>,
    /// Left for the next run: sources that could not be read now (a read
    /// failed midway, a file gone since it was listed), each with the error.
    pub unreadable: Vec<BadSource>,
}

#[derive(Debug, Serialize)]
pub struct BadSource {
    pub uri: String,
    pub reason: String,
}

/// Sources to requests, one per table: the CLI routes by folder or
/// `--table`, the Lambda by its configured prefixes.
pub type Router<'a> = &'a (dyn Fn(&[String]) -> Result<Vec<TableRequest>> + Sync);

/// How a backfill runs.
pub struct Plan<'a> {
    /// Folders, globs, S3 prefixes or single files.
    pub specs: Vec<String>,
    pub since: Option<DateTime<Utc>>,
    pub route: Router<'a>,
    pub batch: usize,
    pub budget: Budget,
    /// Only list and check: ingest nothing.
    pub dry_run: bool,
}

/// The CLI's routing: every source into `table`, else into its folder's
/// table, with `template`'s settings.
pub fn route_by_folder(uris: &[String], table: Option<&str>, template: &TableRequest) -> Result<Vec<TableRequest>> {
    Ok(ingest::route(uris, table)?
        .into_iter()
        .map(|(table, sources)| TableRequest { table, sources: sources.into_iter().map(Into::into).collect(), ..template.clone() })
        .collect())
}

/// List, leave out what the ledger holds, ingest the rest in batches until
/// done or the deadline is near; `on_batch` sees each batch's report.
pub async fn backfill(lake: &Lake, plan: Plan<'_>, progress: Arc<Progress>, mut on_batch: impl FnMut(&ingest::Report)) -> Result<BackfillReport> {
    assert!(plan.batch > 0, "a batch holds at least one file");
    if plan.budget.timeout.is_zero() {
        return Err(Error::Usage("--timeout must be above zero".into()));
    }
    let deadline = Deadline::after(plan.budget.timeout);
    let mut report = BackfillReport::default();
    let mut listed = Vec::new();
    for spec in &plan.specs {
        if is_collection(spec) {
            listed.extend(expand(spec, plan.since).await?);
        } else {
            listed.push(Listed { uri: spec.clone(), size: 0, modified: Utc::now(), id: None });
        }
    }
    report.listed = listed.len();
    // A file no table takes, or of no format sluice reads, is reported and
    // left out: one stray README must not stop the rest.
    let mut routable = Vec::with_capacity(listed.len());
    for l in listed {
        let why = match (plan.route)(std::slice::from_ref(&l.uri)) {
            Err(e) => Some(e.to_string()),
            Ok(requests) => requests.first().and_then(|r| crate::decode::detect_name(&l.uri, r.format).err()).map(|e| e.to_string()),
        };
        match why {
            Some(reason) => report.skipped.push(BadSource { uri: l.uri, reason }),
            None => routable.push(l),
        }
    }
    let (candidates, held, quarantined) = unseen(lake, routable, &mut report.changing).await?;
    (report.held, report.quarantined_before) = (held, quarantined);
    if plan.dry_run {
        report.not_done = candidates.len();
        return Ok(report);
    }
    let mut rest: &[String] = &candidates;
    while !rest.is_empty() {
        // Leave a batch's worth of time: a batch that cannot finish is not started.
        let left = deadline.remaining();
        if left.is_zero() || (report.batches > 0 && left < plan.budget.timeout / 4) {
            break;
        }
        let (batch, after) = rest.split_at(plan.batch.min(rest.len()));
        let mut batch_owned: Vec<String> = batch.to_vec();
        let mut bad_here = 0;
        let done = loop {
            let requests = (plan.route)(&batch_owned)?;
            let budget = Budget { timeout: deadline.remaining().max(Duration::from_secs(1)), ..plan.budget };
            let error = match ingest::run(lake, requests, budget, Arc::clone(&progress)).await {
                Ok(r) => break Some(r),
                Err(e) => e,
            };
            // The door quarantined a bad file, met one still being written
            // (the next run takes it, once it is whole), or could not read
            // one now (the next run tries again): the rest of the batch goes
            // on without it.
            let (uri, list) = match &error {
                Error::BadInput(bad) => (bad.source_uri.clone(), &mut report.bad),
                Error::Changed { path, .. } => (path.clone(), &mut report.changing),
                Error::Io { path, .. } => (path.clone(), &mut report.unreadable),
                _ => return Err(error),
            };
            let before = batch_owned.len();
            batch_owned.retain(|u| Source::shown_uri(u) != uri);
            // A file not in the batch (it cannot be left out), or too many: give up.
            if batch_owned.len() == before || bad_here == MAX_BAD_PER_BATCH {
                return Err(error);
            }
            bad_here += 1;
            list.push(BadSource { uri, reason: error.to_string() });
            if batch_owned.is_empty() {
                break None;
            }
        };
        rest = after;
        report.batches += 1;
        if let Some(r) = done {
            for s in &r.sources {
                match s.status {
                    SourceStatus::Ingested => report.ingested += 1,
                    SourceStatus::AlreadyIngested => report.already_ingested += 1,
                }
            }
            report.rows += r.tables.values().map(|t| t.rows_inserted + t.rows_updated).sum::<u64>();
            report.manifest_version = r.manifest_version.or(report.manifest_version);
            on_batch(&r);
        }
    }
    report.not_done = rest.len();
    Ok(report)
}

/// The listed sources the ledger does not hold and the quarantine does not
/// have, and how many of each were left out; files that changed as they
/// were hashed go to `changing`.
async fn unseen(lake: &Lake, listed: Vec<Listed>, changing: &mut Vec<BadSource>) -> Result<(Vec<String>, usize, usize)> {
    // Local files: the identity needs the bytes' hash.
    let resolved: Vec<(String, Result<String>)> = futures::stream::iter(listed)
        .map(|l| async move {
            let id = match l.id {
                Some(id) => Ok(id),
                None => Source::resolve(&l.uri).await.map(|s| s.id),
            };
            (l.uri, id)
        })
        .buffered(CHECK_CONCURRENCY)
        .collect()
        .await;
    let mut ids = Vec::with_capacity(resolved.len());
    for (uri, id) in resolved {
        match id {
            Ok(id) => ids.push((uri, id)),
            Err(changed @ Error::Changed { .. }) => changing.push(BadSource { uri, reason: changed.to_string() }),
            Err(e) => return Err(e),
        }
    }
    let wanted: BTreeSet<&str> = ids.iter().map(|(_, id)| id.as_str()).collect();
    let held = sidecar::held_sources(lake, &wanted, PER_SOURCE_CHECKS, CHECK_CONCURRENCY).await?;
    let quarantined = quarantined(lake).await?;
    let (mut out, mut n_held, mut n_quarantined) = (Vec::new(), 0, 0);
    let mut seen = BTreeMap::new();
    for (uri, id) in ids {
        if held.contains(&id) {
            n_held += 1;
        } else if quarantined.contains(&id) {
            n_quarantined += 1;
        } else if seen.insert(id, ()).is_none() {
            out.push(uri);
        }
    }
    Ok((out, n_held, n_quarantined))
}

async fn quarantined(lake: &Lake) -> Result<BTreeSet<String>> {
    Ok(lake
        .list("_quarantine")
        .await?
        .iter()
        .filter_map(|m| lake.relative(&m.location)?.strip_prefix("_quarantine/")?.split('/').next().map(str::to_string))
        .collect())
}
