//! The published state: one immutable JSON object per manifest version,
//! created with a create-only PUT, pinning every table at a Lance version.
//!
//! `_manifest/versions/<20-digit version>.json` are the versions; exactly one
//! writer wins each. `_manifest/latest.json` is a hint: a copy of a recent
//! version, overwritten after each publish. It may lag (a publisher died before
//! updating it, or two hint writes crossed), never lead, so finding the latest
//! version is one GET of the hint plus one GET that misses, and a lagging hint
//! costs O(log lag) more GETs, never O(history).
//!
//! Cleanup deletes old versions (a prefix, never the latest), so a miss proves
//! "no newer version" only while the version it follows is known to have been
//! the latest recently: cleanup removes no version until its successor is older
//! than the retention floor (`Timing`). A version known to be the latest for
//! longer than the trust window is confirmed with one LIST instead, and a create
//! that might have re-created a cleaned-up version is checked the same way.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::deadline::Deadline;
use crate::error::{Error, Result};
use crate::failpoints;
use crate::lake::{Created, Lake};
use crate::known_manifest::LanceManifest;
use crate::settings::{Change, Evolution, IndexSpec};

const VERSIONS: &str = "_manifest/versions";
const LATEST_HINT: &str = "_manifest/latest.json";
/// Probes of a lagging hint before giving up; each round at least doubles.
const MAX_PROBES: u32 = 128;
/// Attempts at one publish before reporting contention.
const MAX_PUBLISH_ATTEMPTS: u32 = 64;

/// How a table takes new rows. Set by the ingest that creates the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Append,
    Upsert,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Append => "append",
            Mode::Upsert => "upsert",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TablePin {
    /// The Lance version readers see.
    pub version: u64,
    pub mode: Mode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The indices the table declares (`settings.rs`); optimize keeps them fresh.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub indices: Vec<IndexSpec>,
    /// What an ingest does with a source column the table lacks.
    #[serde(default, skip_serializing_if = "Evolution::is_strict")]
    pub evolution: Evolution,
    /// Where Lance keeps the manifest of a version of the table, as its
    /// committer saw it: opening `version` then skips Lance's HEAD. Used
    /// only while it names `version` (pins move forward without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lance_manifest: Option<LanceManifest>,
}

impl TablePin {
    /// A pin with no settings beyond mode and key (a new table's).
    pub fn new(version: u64, mode: Mode, key: Option<String>) -> TablePin {
        TablePin { version, mode, key, indices: Vec::new(), evolution: Evolution::Strict, lance_manifest: None }
    }

    /// Where Lance's manifest of this pin's version is, if known.
    pub fn known_manifest(&self) -> Option<&LanceManifest> {
        self.lance_manifest.as_ref().filter(|m| m.version == self.version)
    }
}

/// What one operation asks the manifest to show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    pub op: String,
    /// Unique per attempt: lets a writer recognise its own create after an ambiguous PUT.
    pub attempt: String,
    pub kind: String,
    pub tables: BTreeMap<String, u64>,
    pub sources: usize,
    /// Each source this publish made visible (`sluice sources` reads them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_list: Vec<PublishedSource>,
}

/// A source as the publish that made it visible records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedSource {
    pub table: String,
    pub uri: String,
    /// The ledger id of the exact version ingested.
    pub id: String,
    pub identity: String,
    /// Bytes as stored, and rows read (unknown when recovery published it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// The operation that ingested it, when not the one that published it
    /// (a publish shows the commits it passed on its way, with their sources).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<String>,
}

/// Add `more` to `list`, each source (by table and id) once.
pub fn add_sources(list: &mut Vec<PublishedSource>, more: impl IntoIterator<Item = PublishedSource>) {
    for s in more {
        if !list.iter().any(|l| l.table == s.table && l.id == s.id) {
            list.push(s);
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u64,
    pub published_at: DateTime<Utc>,
    pub tables: BTreeMap<String, TablePin>,
    /// The operations this version published (not cumulative).
    #[serde(default)]
    pub published: Vec<Published>,
    /// When a LIST last showed no newer version (set on hints and in memory, never
    /// on version objects).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checked_at: Option<DateTime<Utc>>,
}

impl Manifest {
    fn empty() -> Manifest {
        Manifest { version: 0, published_at: Utc::now(), tables: BTreeMap::new(), published: Vec::new(), checked_at: None }
    }

    /// The last time this version is known to have been the latest.
    pub fn as_of(&self) -> DateTime<Utc> {
        self.checked_at.map_or(self.published_at, |c| c.max(self.published_at))
    }

    /// Is "nothing newer was found" still proof that this is the latest?
    fn trusted(&self, lake: &Lake) -> bool {
        let age = (Utc::now() - self.as_of()).to_std().unwrap_or(std::time::Duration::ZERO);
        age < lake.timing().trust_window()
    }
}

/// A publish request: these tables at least at these versions, with their settings.
#[derive(Debug, Clone)]
pub struct Goal {
    pub published: Published,
    pub pins: BTreeMap<String, TablePin>,
    /// Settings changes the operation made, per table: applied to whatever
    /// settings the version it lands on has (two index changes never undo each other).
    pub changes: BTreeMap<String, Vec<Change>>,
}

impl Goal {
    /// Does `m` already show everything this goal asks for? (Invariant 6.)
    pub fn covered_by(&self, m: &Manifest) -> bool {
        self.pins.iter().all(|(t, pin)| m.tables.get(t).is_some_and(|cur| cur.version >= pin.version))
            && self.changes.iter().all(|(t, changes)| m.tables.get(t).is_some_and(|cur| changes.iter().all(|c| c.holds(&cur.indices, cur.evolution))))
    }

    /// The next version: `base` with every goal pin moved forward, never back.
    fn apply(&self, base: &Manifest) -> Manifest {
        let mut tables = base.tables.clone();
        for (name, pin) in &self.pins {
            let entry = tables.entry(name.clone()).or_insert_with(|| TablePin { lance_manifest: pin.known_manifest().cloned(), ..pin.clone() });
            if pin.version > entry.version || (pin.version == entry.version && pin.known_manifest().is_some()) {
                entry.version = pin.version;
                entry.lance_manifest = pin.known_manifest().cloned();
            }
        }
        for (name, changes) in &self.changes {
            if let Some(entry) = tables.get_mut(name) {
                changes.iter().for_each(|c| c.apply(&mut entry.indices, &mut entry.evolution));
            }
        }
        Manifest {
            version: base.version + 1,
            published_at: Utc::now(),
            tables,
            published: vec![self.published.clone()],
            checked_at: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum PublishOutcome {
    /// This call created manifest `version`.
    Published { version: u64 },
    /// Someone else's publish already covered the goal at `version`.
    AlreadyCovered { version: u64 },
}

impl PublishOutcome {
    pub fn version(&self) -> u64 {
        match self {
            PublishOutcome::Published { version } | PublishOutcome::AlreadyCovered { version } => *version,
        }
    }
}

fn version_path(version: u64) -> String {
    format!("{VERSIONS}/{version:020}.json")
}

pub async fn read_version(lake: &Lake, version: u64) -> Result<Option<Manifest>> {
    lake.get_json(&version_path(version)).await
}

/// The latest-hint: a recent manifest version, possibly behind. One GET.
pub async fn read_hint(lake: &Lake) -> Result<Option<Manifest>> {
    lake.get_json(LATEST_HINT).await
}

/// The latest manifest version, or `None` if the lake was never initialised.
pub async fn read_latest(lake: &Lake) -> Result<Option<Manifest>> {
    let start = match read_hint(lake).await? {
        Some(hint) => hint,
        // No hint: a new lake (init writes one), so this LIST is short.
        None => match list_versions(lake).await?.last().map(|(v, _)| *v) {
            Some(v) => match read_version(lake, v).await? {
                Some(m) => m,
                None => return Err(vanished(lake, v)),
            },
            None => return Ok(None),
        },
    };
    catch_up(lake, start).await.map(Some)
}

fn version_of(lake: &Lake, path: &object_store::path::Path) -> Option<u64> {
    let rel = lake.relative(path)?;
    rel.strip_prefix(VERSIONS)?.strip_prefix('/')?.strip_suffix(".json")?.parse().ok()
}

fn vanished(lake: &Lake, version: u64) -> Error {
    Error::Corrupt {
        what: "manifest",
        path: lake.path(&version_path(version)).to_string(),
        reason: "listed, then gone: cleaned up while it was the newest? Retry; if it persists, check the cleanup settings".into(),
    }
}

/// Some version newer than `version`, if one exists: one LIST.
async fn newer_than(lake: &Lake, version: u64) -> Result<Option<u64>> {
    let found = lake.any_after(VERSIONS, &version_path(version)).await?;
    Ok(found.and_then(|m| version_of(lake, &m.location)).filter(|v| *v > version))
}

/// Walk forward from `known` to the latest version. Versions are dense above
/// the oldest retained one, so gallop (1, 2, 4, ...) to a miss, then restart at
/// step 1 from the furthest hit until the very next version misses. If that
/// last version's claim to be the latest is too old to rule out a cleaned gap
/// after it, a LIST confirms it or jumps past the gap.
pub(crate) async fn catch_up(lake: &Lake, mut known: Manifest) -> Result<Manifest> {
    let mut probes = 0;
    loop {
        known = gallop(lake, known, &mut probes).await?;
        if known.trusted(lake) {
            return Ok(known);
        }
        let checked_at = Utc::now();
        match newer_than(lake, known.version).await? {
            None => {
                known.checked_at = Some(checked_at);
                return Ok(known);
            }
            Some(v) => match read_version(lake, v).await? {
                Some(newer) => known = newer,
                // Cleaned up between the LIST and the GET: list again.
                None => probes += 1,
            },
        }
    }
}

/// The manifest a caller waiting for something to show (a group member,
/// its group's publish) reads next: `known` if it `shows` it; else the very
/// next version if that shows it (one GET, where [`catch_up`] would gallop
/// on to the latest and confirm it) or if there is none yet; else the
/// latest, caught up ([`catch_up`]: a busy lake's versions are galloped
/// over, not walked). `known` too old to trust that the versions above it
/// are dense is caught up the careful way.
pub(crate) async fn catch_up_showing(lake: &Lake, known: Manifest, shows: impl Fn(&Manifest) -> bool) -> Result<Manifest> {
    if shows(&known) {
        return Ok(known);
    }
    if !known.trusted(lake) {
        return catch_up(lake, known).await;
    }
    match read_version(lake, known.version + 1).await? {
        None => Ok(known),
        Some(next) if shows(&next) => Ok(next),
        Some(next) => catch_up(lake, next).await,
    }
}

async fn gallop(lake: &Lake, mut known: Manifest, probes: &mut u32) -> Result<Manifest> {
    loop {
        let mut step = 1u64;
        loop {
            *probes += 1;
            if *probes > MAX_PROBES {
                return Err(Error::Contention {
                    what: "finding the latest manifest",
                    attempts: MAX_PROBES,
                    last: format!("still finding newer versions after {}", known.version),
                });
            }
            match read_version(lake, known.version + step).await? {
                Some(found) => {
                    assert_eq!(found.version, known.version + step, "manifest version object holds another version");
                    known = found;
                    step = step.saturating_mul(2);
                }
                None => break,
            }
        }
        if step == 1 {
            return Ok(known);
        }
    }
}

/// Create the lake's first manifest version if there is none. Idempotent.
pub async fn init(lake: &Lake) -> Result<Manifest> {
    let first = Manifest::empty();
    if lake.create_json(&version_path(0), &first, |m: &Manifest| m.version == 0).await? == Created::Mine {
        lake.put_json(LATEST_HINT, &first).await?;
    }
    read_latest(lake).await?.ok_or_else(|| Error::Corrupt {
        what: "manifest",
        path: lake.path(&version_path(0)).to_string(),
        reason: "version 0 vanished right after it was created".into(),
    })
}

/// A base for writers: the hint (maybe stale: the create-only PUT finds out),
/// initialising the lake on first use.
pub async fn writer_base(lake: &Lake) -> Result<Manifest> {
    match read_hint(lake).await? {
        // A writer's start pins come from its base, and cleanup keeps the Lance
        // versions a recent manifest pins: an old hint is brought up to date.
        Some(hint) if hint.trusted(lake) => Ok(hint),
        Some(hint) => catch_up(lake, hint).await,
        None => match read_latest(lake).await? {
            Some(latest) => Ok(latest),
            None if lake.creates() => init(lake).await,
            None => Err(Error::Usage(format!(
                "no lake at {}: nothing was ever published there. Check --root (or SLUICE_ROOT) for a typo, \
                 or create the lake with `sluice init` (or pass --create)",
                lake.uri()
            ))),
        },
    }
}

/// Publish `goal` on top of `base` (any earlier version): create the next
/// version; on losing the race, re-read, merge forward, retry. A goal already
/// covered by someone else's publish is success (invariant 6).
pub async fn publish(lake: &Lake, base: Manifest, goal: &Goal, deadline: &Deadline) -> Result<PublishOutcome> {
    let (outcome, created) = publish_unhinted(lake, base, goal, deadline).await?;
    if let Some(created) = created {
        write_hint(lake, &created).await;
    }
    Ok(outcome)
}

/// Point the latest-manifest hint at `manifest`. The hint only saves
/// requests; a failed or crossed write costs probes, not correctness.
pub async fn write_hint(lake: &Lake, manifest: &Manifest) {
    if let Err(e) = lake.put_json(LATEST_HINT, manifest).await {
        tracing::warn!(error = %e, "could not update the latest-manifest hint");
    }
}

/// [`publish`], leaving the hint to the caller (to write it alongside its own
/// last step): also returns the version this call created, if it created one.
pub async fn publish_unhinted(lake: &Lake, mut base: Manifest, goal: &Goal, deadline: &Deadline) -> Result<(PublishOutcome, Option<Manifest>)> {
    for attempt in 0..MAX_PUBLISH_ATTEMPTS {
        if attempt > 0 {
            lake.count_manifest_retry();
        }
        if goal.covered_by(&base) {
            return Ok((PublishOutcome::AlreadyCovered { version: base.version }, None));
        }
        if let Err(e) = deadline.check("publishing the manifest") {
            // Out of time: someone else's publish (recovery's) may have reached our goal.
            let latest = catch_up(lake, base).await?;
            return match goal.covered_by(&latest) {
                true => Ok((PublishOutcome::AlreadyCovered { version: latest.version }, None)),
                false => Err(e),
            };
        }
        let next = goal.apply(&base);
        failpoints::hit(failpoints::BEFORE_PUBLISH)?;
        let mine = |m: &Manifest| m.published.iter().any(|p| p.attempt == goal.published.attempt);
        match lake.create_json(&version_path(next.version), &next, mine).await? {
            Created::Mine if !base.trusted(lake) && newer_than(lake, next.version).await?.is_some() => {
                // Our base was too old to rule it out, and so it was: this version
                // had been published and cleaned up; ours is a ghost nobody reads.
                tracing::warn!(version = next.version, "re-created a cleaned-up manifest version; removing it and retrying");
                lake.delete(&version_path(next.version)).await?;
                base = catch_up(lake, base).await?;
            }
            Created::Mine => {
                failpoints::hit(failpoints::AFTER_PUBLISH)?;
                return Ok((PublishOutcome::Published { version: next.version }, Some(next)));
            }
            Created::Theirs(winner) => base = catch_up(lake, winner).await?,
            // Cleanup removed it between our PUT and GET: carry on from a newer one.
            Created::Gone if let Some(v) = newer_than(lake, next.version).await? => match read_version(lake, v).await? {
                Some(newer) => base = catch_up(lake, newer).await?,
                None => return Err(vanished(lake, v)),
            },
            Created::Gone => {
                return Err(Error::Corrupt {
                    what: "manifest",
                    path: lake.path(&version_path(next.version)).to_string(),
                    reason: "create-only PUT said it exists, GET says it does not (was it deleted?)".into(),
                });
            }
        }
    }
    Err(Error::Contention {
        what: "publishing the manifest",
        attempts: MAX_PUBLISH_ATTEMPTS,
        last: format!("lost every race up to version {}", base.version),
    })
}

/// Every version object, ascending, with the time the store wrote it: one LIST
/// (paged), for cleanup and for a lake with no hint.
pub(crate) async fn list_versions(lake: &Lake) -> Result<Vec<(u64, DateTime<Utc>)>> {
    let mut versions: Vec<(u64, DateTime<Utc>)> =
        lake.list(VERSIONS).await?.iter().filter_map(|m| Some((version_of(lake, &m.location)?, m.last_modified))).collect();
    versions.sort_unstable();
    Ok(versions)
}

/// Delete these version objects (cleanup's prefix; never the latest). Returns how many.
pub(crate) async fn delete_versions(lake: &Lake, versions: &[u64]) -> Result<u64> {
    let rels: Vec<String> = versions.iter().map(|v| version_path(*v)).collect();
    lake.delete_all(&rels).await?;
    Ok(versions.len() as u64)
}

/// Overwrite the hint with `latest`, which a LIST at `checked_at` showed to be the newest.
pub(crate) async fn refresh_hint(lake: &Lake, latest: &Manifest, checked_at: DateTime<Utc>) -> Result<()> {
    let hint = Manifest { checked_at: Some(checked_at), ..latest.clone() };
    lake.put_json(LATEST_HINT, &hint).await
}

/// Up to `limit` versions from the latest backwards (skipping cleaned-up ones).
pub async fn history(lake: &Lake, limit: usize) -> Result<Vec<Manifest>> {
    let Some(latest) = read_latest(lake).await? else { return Ok(Vec::new()) };
    let mut out = vec![latest.clone()];
    let mut v = latest.version;
    while out.len() < limit && v > 0 {
        v -= 1;
        match read_version(lake, v).await? {
            Some(m) => out.push(m),
            None => break,
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(version: u64) -> Option<LanceManifest> {
        Some(LanceManifest { version, size: 100 + version, e_tag: None })
    }

    fn pin(version: u64, known: Option<LanceManifest>) -> TablePin {
        TablePin { lance_manifest: known, ..TablePin::new(version, Mode::Append, None) }
    }

    fn goal(pins: &[(&str, TablePin)]) -> Goal {
        let published = Published { op: "op".into(), attempt: "a".into(), kind: "ingest".into(), tables: BTreeMap::new(), sources: 0, source_list: Vec::new() };
        Goal { published, pins: pins.iter().map(|(t, p)| (t.to_string(), p.clone())).collect(), changes: BTreeMap::new() }
    }

    /// A pin's record of Lance's manifest follows the pin: kept only while it
    /// names the pinned version, never carried to another.
    #[test]
    fn a_pins_record_names_its_own_version_or_none() {
        let base = Manifest { tables: BTreeMap::from([("t".to_string(), pin(3, record(3)))]), ..Manifest::empty() };
        // Forward with a record: the new record.
        assert_eq!(goal(&[("t", pin(5, record(5)))]).apply(&base).tables["t"], pin(5, record(5)));
        // Forward without one (or with another version's): none.
        assert_eq!(goal(&[("t", pin(5, None))]).apply(&base).tables["t"], pin(5, None));
        assert_eq!(goal(&[("t", pin(5, record(4)))]).apply(&base).tables["t"], pin(5, None));
        // Behind: the base's pin and record stay.
        assert_eq!(goal(&[("t", pin(2, record(2)))]).apply(&base).tables["t"], pin(3, record(3)));
        // The same version: a record is kept, or filled in.
        assert_eq!(goal(&[("t", pin(3, None))]).apply(&base).tables["t"], pin(3, record(3)));
        let bare = Manifest { tables: BTreeMap::from([("t".to_string(), pin(3, None))]), ..Manifest::empty() };
        assert_eq!(goal(&[("t", pin(3, record(3)))]).apply(&bare).tables["t"], pin(3, record(3)));
        // A new table takes only a record of its own version.
        assert_eq!(goal(&[("u", pin(1, record(9)))]).apply(&base).tables["u"], pin(1, None));
        assert_eq!(pin(4, record(3)).known_manifest(), None);
    }
}
