//! Ingest and multi-table load: the door (docs/PROTOCOL.md) for operations that add rows.
//!
//! 1. resolve sources (identity) — read only; the same source twice is one;
//! 2. the intent of this attempt (`_ops/<op>.<attempt>`), before any effect
//!    (no sweep first: dead attempts are resolved where they stand in the way);
//! 3. claims in the exactly-once ledger (a source held by another attempt is
//!    done only once that attempt is proven to have published it);
//! 4. every table's data written *uncommitted* (bad input stops here, with
//!    nothing committed); small sources are written alongside step 3, kept
//!    only if the claims changed nothing;
//! 5. Lance commits, tagged with the operation and attempt; whether one landed
//!    is read from the table's history;
//! 6. the forward decision naming those commits (create-only: recovery and a
//!    stalled writer cannot both decide);
//! 7. one manifest publish covering every table, past only commits proven
//!    decided forward (`fence.rs`);
//! 8. the intent is removed; the claims stay as the ledger.
//!
//! Giving up before a commit is known to have landed is a roll-back decided by
//! the writer itself: decide, remove what the history shows, release, remove
//! the intent.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::channel::oneshot;
use futures::{StreamExt, TryStreamExt};
use lance::Dataset;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::counting::RequestSnapshot;
use crate::deadline::Deadline;
use crate::decode::{self, Compression, Detected, Progress};
use crate::error::{BadInput, Error, Result};
use crate::failpoints;
use crate::lake::{Created, Lake};
use crate::manifest::{self, Goal, Manifest, Mode, Published, PublishedSource, TablePin};
use crate::columns;
use crate::read_ahead::{self, ReadAhead};
use crate::rescue;
use crate::settings::{Change, Evolution, RESCUE_COLUMN};
use crate::fence;
use crate::recover;
use crate::sidecar::{self, AttemptId, Claim, Claimed, Decision, Holder, Intent, IntentTable, Outcome, SourceRef};
use crate::source::Source;
use crate::group;
use crate::queue;
use crate::stage::{self, Appended, Opening, Staged, Stager, TableWork, check_mode};
pub use crate::stage::{TableReport, TableRequest};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceStatus {
    Ingested,
    AlreadyIngested,
}

#[derive(Debug, Clone, Serialize)]
pub struct SourceReport {
    pub table: String,
    pub uri: String,
    pub status: SourceStatus,
    /// The operation that ingested it.
    pub op: String,
    /// Its size as stored.
    pub bytes: u64,
}


#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub op: String,
    /// The manifest version that shows every source of this call.
    pub manifest_version: Option<u64>,
    pub tables: BTreeMap<String, TableReport>,
    pub sources: Vec<SourceReport>,
    /// Requests this call sent to the lake (sluice and Lance).
    pub requests: RequestSnapshot,
}

impl Report {
    pub fn all_already_ingested(&self) -> bool {
        self.sources.iter().all(|s| s.status == SourceStatus::AlreadyIngested)
    }
}

/// Route sources to tables: `--table` if given, else each source's folder
/// name, above any Hive-style `key=value` folders (`events/date=.../x.jsonl`).
pub fn route(sources: &[String], table: Option<&str>) -> Result<BTreeMap<String, Vec<String>>> {
    let mut routed: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for uri in sources {
        let name = match table {
            Some(t) => t.to_string(),
            None => {
                let mut parts = uri.trim_end_matches('/').rsplit('/');
                parts.next();
                let mut parts = parts.skip_while(|p| p.split_once('=').is_some_and(|(k, _)| !k.is_empty()));
                parts.next().filter(|p| !p.is_empty() && !p.ends_with(':')).map(str::to_string).ok_or_else(|| {
                    Error::Usage(format!("cannot route {uri}: it is not inside a folder named for its table; pass --table"))
                })?
            }
        };
        validate_table_name(&name)?;
        routed.entry(name).or_default().push(uri.clone());
    }
    Ok(routed)
}

pub fn validate_table_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !name.starts_with('-');
    if !ok {
        return Err(Error::Usage(format!("table name '{name}': use 1-128 letters, digits, '_' or '-'")));
    }
    Ok(())
}


/// The writer's door: the staging half (`stage.rs`) and the rest.
struct Door<'a> {
    w: Stager<'a>,
    /// Every source as resolved at the start: quarantine copies exactly that version.
    sources: Vec<Source>,
    /// Margin before another worker's expired intent is taken over.
    skew: Duration,
}

/// How long a writing operation may take, and how long past another worker's
/// deadline it waits before presuming that worker dead.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub timeout: Duration,
    pub clock_skew: Duration,
}

impl Budget {
    pub fn new(timeout: Duration) -> Budget {
        Budget { timeout, clock_skew: recover::DEFAULT_CLOCK_SKEW }
    }
}

/// Rounds of "another attempt holds a source we want": wait for it (or
/// resolve it once it expired), then claim again. A source given back goes to
/// whoever claims it first, so a load racing several others may need more
/// than two waits; each round waits on an attempt that makes progress, and
/// all of them together are bounded by our deadline.
const MAX_TAKEOVER_ROUNDS: u32 = 8;
/// Holders of a source followed after ours published (each gave it back,
/// and another claimed it again) before we tell the caller to deliver it again.
const MAX_CLAIMED_AGAIN: u32 = 4;
/// Sources resolved (HEAD or hash pass) and claimed at once by one call.
const CONCURRENT_SOURCES: usize = 16;
/// Sources up to this size in all are staged alongside the claims: a round
/// trip saved, and at most this much staged for nothing when a claim is lost.
const SPECULATE_MAX_BYTES: u64 = 8 << 20;
/// Sources a forward decision names at most (beyond, it names none: a
/// publish that shows our commit first then does not list them).
const MAX_DECIDED_SOURCES: usize = 64;

/// Ingest the tables' sources as one operation: all of it visible in one
/// manifest version, or none of it. A single table is an `ingest`; several a `load`.
pub async fn run(lake: &Lake, requests: Vec<TableRequest>, budget: Budget, progress: Arc<Progress>) -> Result<Report> {
    let before = lake.requests();
    lake.timing().check_timeout(budget.timeout)?;
    let deadline = Deadline::after(budget.timeout);
    if requests.is_empty() || requests.iter().any(|r| r.sources.is_empty()) {
        return Err(Error::Usage("nothing to ingest: give at least one source per table".into()));
    }
    // The lake's latest manifest is read alongside the sources' HEADs (reads
    // only: a source that cannot be read fails the call as before).
    let requests = requests.into_iter().map(checked).collect::<Result<Vec<_>>>()?;
    let started = std::time::Instant::now();
    // A large local file is decoded beside its hash (no data file is written
    // before the intent): `read_ahead.rs`. An aid only: it never delays the
    // door, so it is given up if the sources are resolved before it starts.
    let single = match &requests[..] {
        [request] => Some(request.clone()),
        _ => None,
    };
    let (resolved, resolving) = oneshot::channel::<()>();
    let based = async {
        let base = manifest::writer_base(lake).await;
        let ahead = match (&base, &single) {
            (Ok(base), Some(request)) => ReadAhead::until_resolved(lake, request, base, resolving).await,
            _ => None,
        };
        (base, ahead)
    };
    let resolve = async {
        let tables = resolve(requests).await;
        let _ = resolved.send(());
        tables
    };
    let (tables, (base, ahead)) = futures::join!(resolve, based);
    let read_ahead: read_ahead::Slot = std::sync::Mutex::new(ahead);
    let (tables, mut base) = (tables?, base?);
    // Until our intent exists only the manifest's retention protects our start
    // pins, and its margin is the clock skew: a slow resolve reads them again.
    if started.elapsed() > lake.timing().clock_skew {
        base = manifest::writer_base(lake).await?;
    }
    let bytes: u64 = tables.iter().flat_map(|t| t.sources.iter().map(|(s, _)| s.size)).sum();
    progress.bytes_total.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    let op = operation_id(&tables);
    let attempt = uuid::Uuid::now_v7().to_string();
    let door = Door {
        w: Stager { lake, op: op.clone(), intent: attempt.clone(), attempt, deadline, progress, multi: tables.len() > 1, read_ahead: Some(&read_ahead) },
        sources: tables.iter().flat_map(|t| t.sources.iter().map(|(s, _)| s.clone())).collect(),
        skew: budget.clock_skew,
    };
    let mut report = door.run(tables, base).await?;
    report.requests = lake.requests().since(&before);
    Ok(report)
}

/// A request as the door takes it, or the usage error it is.
fn checked(request: TableRequest) -> Result<TableRequest> {
    validate_table_name(&request.table)?;
    if request.mode == Some(Mode::Upsert) && request.key.is_none() {
        return Err(Error::Usage(format!("table '{}': --mode upsert needs --key COLUMN", request.table)));
    }
    if request.mode == Some(Mode::Append) && request.key.is_some() {
        return Err(Error::Usage(format!("table '{}': --key is the upsert key; an append table has none (drop --key or use --mode upsert)", request.table)));
    }
    // A key alone asks for an upsert table.
    Ok(TableRequest { mode: request.mode.or(request.key.as_ref().map(|_| Mode::Upsert)), ..request })
}

/// Resolve each request's sources (one HEAD or hash pass each).
async fn resolve(requests: Vec<TableRequest>) -> Result<Vec<TableWork>> {
    let mut tables = Vec::with_capacity(requests.len());
    for request in requests {
        let mut sources: Vec<(Source, Detected)> = Vec::with_capacity(request.sources.len());
        // One HEAD (or hash pass) each, a bounded number at a time, in order.
        // The first failure stops the rest (resolving has no effects to undo).
        let resolved: Vec<Source> = futures::stream::iter(request.sources.clone())
            .map(|spec| async move { Source::resolve_pinned(&spec.uri, spec.pin.as_ref()).await })
            .buffered(CONCURRENT_SOURCES)
            .try_collect()
            .await?;
        for source in resolved {
            let uri = &source.uri;
            // The same source twice in one call (`a.jsonl ./a.jsonl`) is one source.
            if sources.iter().any(|(s, _)| s.id == source.id) {
                tracing::info!(uri, "the same source was given twice; ingesting it once");
                continue;
            }
            let detected = decode::detect(&source, request.format, request.csv.as_ref())?;
            sources.push((source, detected));
        }
        tables.push(TableWork {
            evolution: request.evolution.unwrap_or_default(),
            mode: request.mode.unwrap_or(Mode::Append),
            key: request.key.clone(),
            request,
            sources,
            start_pin: None,
            start_manifest: None,
            committed: None,
            committed_manifest: None,
            report: None,
            changes: Vec::new(),
            ahead: Default::default(),
            lone_attempts: None,
        });
    }
    Ok(tables)
}


/// How writing the intent and claiming failed.
enum Claiming {
    /// Before the intent was written: there is nothing to undo.
    NoIntent(Error),
    /// After: give up through `abandon`.
    Failed(Error),
}

/// Deterministic from the sources' identities: a redelivery is the same operation.
fn operation_id(tables: &[TableWork]) -> String {
    let mut pairs: Vec<(String, String)> =
        tables.iter().flat_map(|t| t.sources.iter().map(|(s, _)| (t.request.table.clone(), s.id.clone()))).collect();
    pairs.sort();
    pairs.dedup();
    let mut hasher = Sha256::new();
    for (table, id) in &pairs {
        hasher.update(table.as_bytes());
        hasher.update([0]);
        hasher.update(id.as_bytes());
        hasher.update([0]);
    }
    format!("op-{}", &hex::encode(hasher.finalize())[..24])
}

impl Door<'_> {
    async fn run(&self, mut tables: Vec<TableWork>, mut base: Manifest) -> Result<Report> {
        // No sweep first: a dead attempt in our way is resolved where we meet
        // it (a claim it holds, a commit of its between our pin and ours);
        // the rest is the scheduled sweep's. A LIST saved on every ingest.
        for t in &mut tables {
            self.settle_mode(t, &base)?;
        }
        // Resolving sources may have used much of our time: an intent already past its deadline would be taken over at once.
        self.w.deadline.check("writing the intent")?;
        let intent = self.intent_of(&tables);
        // Reading the tables has no effect, so it runs alongside the intent's
        // PUT and the claims (which need the intent first: invariant 4). Small
        // sources are also staged alongside the claims, on copies of the work,
        // once the intent is durable: kept only if every source is claimed.
        let opening: Vec<_> = tables.iter().map(Stager::opening).collect();
        // (A compressed source counts at what it may decode to.)
        let weight = |(s, d): &(Source, Detected)| if d.compression == Compression::None { s.size } else { s.size.saturating_mul(8) };
        let small = tables.iter().flat_map(|t| &t.sources).map(weight).sum::<u64>() <= SPECULATE_MAX_BYTES;
        let copies = (small && !self.w.multi).then(|| tables.clone());
        let (durable, intent_written) = oneshot::channel();
        let mut ours = Ours::default();
        let (claimed, mut fetched, speculated) = {
            let reads = self.read_then_stage(&opening, copies, intent_written);
            let claims = self.intent_then_claim(&intent, &mut tables, &mut ours, durable);
            futures::pin_mut!(reads, claims);
            // The reads (and staging) are waited for only if the claims leave
            // work to do; staging that cannot stand is dropped, not waited for
            // (the tables are read again: from the session's cache, mostly).
            match futures::future::select(claims, reads).await {
                futures::future::Either::Left((claimed, reads)) => match claimed {
                    Ok(Claims { work: true, unchanged: true, .. }) => {
                        let (fetched, speculated) = reads.await;
                        (claimed, fetched, speculated)
                    }
                    Ok(Claims { work: true, .. }) => {
                        drop(reads);
                        (claimed, futures::future::join_all(opening.iter().map(|o| self.w.fetch_opening(o))).await, None)
                    }
                    claimed => (claimed, Vec::new(), None),
                },
                futures::future::Either::Right(((fetched, speculated), claims)) => (claims.await, fetched, speculated),
            }
        };
        let (elsewhere, unchanged) = match claimed {
            Ok(Claims { elsewhere, unchanged, .. }) => (elsewhere, unchanged),
            Err(Claiming::NoIntent(e)) => return Err(e),
            Err(Claiming::Failed(e)) => return Err(self.abandon(&tables, &ours, e).await),
        };
        // Staged before the claims were known: it stands if they changed nothing.
        let speculated = speculated.filter(|_| unchanged);
        assert!(fetched.is_empty() || fetched.len() == tables.len(), "one read per table, or none");
        if ours.waited && !fetched.is_empty() {
            // What was read at Lance's latest before waiting for another holder is stale.
            for (i, o) in opening.iter().enumerate() {
                if (o.latest || o.pin.is_none()) && !tables[i].sources.is_empty() {
                    fetched[i] = self.w.fetch_opening(o).await;
                }
            }
        }
        // A table with no source claimed needs nothing it read (nor its error).
        // (`fetched` is empty when no table has work: the loop keeps none.)
        let (mut kept, mut opened) = (Vec::with_capacity(tables.len()), Vec::with_capacity(tables.len()));
        for (t, ds) in tables.into_iter().zip(fetched).filter(|(t, _)| !t.sources.is_empty()) {
            match ds {
                Ok(ds) => {
                    kept.push(t);
                    opened.push(ds);
                }
                // No commit started: `abandon` needs only our claims.
                Err(e) => return Err(self.abandon(&kept, &ours, e).await),
            }
        }
        let mut tables = kept;
        if tables.is_empty() {
            // Nothing claimed: only our intent to remove. Rows staged alongside
            // the claims are files no version references: cleanup's orphans.
            let id = self.id();
            let (finished, report) = futures::join!(sidecar::delete_intent(self.w.lake, &id), self.report(None, &tables, elsewhere));
            // The report's error first: it says what the caller must do.
            let report = report?;
            finished?;
            return Ok(report);
        }
        if let Err(e) = failpoints::hit(failpoints::AFTER_CLAIMS) {
            return Err(self.abandon(&tables, &ours, e).await);
        }

        // Write everything uncommitted first: bad input stops before any commit.
        let mut staged = Vec::with_capacity(tables.len());
        if let Some((copies, done, progress)) = speculated {
            assert_eq!(copies.len(), tables.len(), "staged alongside the claims: every table, all its sources ours");
            (tables, staged) = (copies, done);
            opened.clear();
            self.w.progress.absorb(&progress);
        }
        for (t, ds) in tables.iter_mut().zip(opened) {
            let stage = match lacks_rescue(t, ds.as_deref()) {
                true => self.add_columns(t).await,
                false => match self.w.stage_fetched(t, ds).await {
                    Err(Error::BadInput(bad)) if bad.new_column && t.evolution == Evolution::AddColumns => self.add_columns(t).await,
                    stage => stage,
                },
            };
            match stage {
                Ok(s) => staged.push(s),
                Err(e) => return Err(self.abandon(&tables, &ours, e).await),
            }
        }
        // An index the table cannot have is refused before anything commits.
        for (t, s) in tables.iter().zip(&staged) {
            for c in &t.changes {
                if let Change::AddIndex(spec) = c
                    && let Err(e) = spec.check_column(&t.request.table, &s.schema())
                {
                    return Err(self.abandon(&tables, &ours, e).await);
                }
            }
        }
        if let Err(e) = failpoints::hit(failpoints::BEFORE_COMMIT) {
            return Err(self.abandon(&tables, &ours, e).await);
        }
        // A single-table append whose own commit Lance proves lost to other
        // writers' (after few attempts) commits in a group (`group.rs`), which
        // decides and publishes its own way. The test knob sends it there at once.
        let mut group = None;
        let mut spare = None;
        if self.groupable(&tables) {
            match failpoints::contended() {
                true => {
                    ours.commit_started = true;
                    let appended = staged.pop().expect("one table, one stage").into_append().ok().expect("groupable: an append onto a table");
                    group = self.commit_as_group(&intent, &mut tables, appended, &mut ours, &mut base).await?;
                }
                false => {
                    tables[0].lone_attempts = Some(group::LONE_ATTEMPTS);
                    spare = staged.first().cloned();
                }
            }
        }
        let mut any_committed = false;
        for i in 0..staged.len() {
            let stage = staged.remove(0);
            ours.commit_started = true;
            match self.commit(&mut tables[i], stage).await {
                Ok(()) => {
                    any_committed = true;
                    failpoints::hit(failpoints::AFTER_COMMIT)?;
                }
                // Definitively not landed (no history to read): the group takes it.
                Err(Error::Lance { source, .. }) if stage::beaten(&source) && spare.is_some() => {
                    let appended = spare.take().and_then(|s| s.into_append().ok()).expect("groupable: an append onto a table");
                    tracing::info!(table = %tables[i].request.table, error = %source, "the commit lost to other writers'; committing in a group");
                    group = self.commit_as_group(&intent, &mut tables, appended, &mut ours, &mut base).await?;
                }
                // Nothing of ours is in Lance as far as its history shows: roll
                // ourselves back (a commit still in flight is fenced by that decision).
                Err(e) if !any_committed => return Err(self.abandon(&tables, &ours, e).await),
                // A commit landed: the intent stays for recovery to finish.
                Err(e) => return Err(e),
            }
        }
        // `handed_off`: published by our group's leader, who removes our
        // intent and entry with its own once it did (recovery, if it dies first).
        let (version, created, handed_off) = match &group {
            // Its group decided it: published after that decision, never
            // beside it, by its leader (a member waits for that).
            Some(c) if c.led => with_finish(self.publish(&tables, base, c.sources.clone()).await?),
            Some(c) => match group::await_publish(self.w.lake, c, &tables[0].request.table, base, &self.w.deadline, self.skew).await {
                (latest, true) => (latest.version, None, true),
                // Its leader is gone or presumed dead, or our time is short: we publish it, vetted like any publish.
                (latest, false) => with_finish(self.publish(&tables, latest, c.sources.clone()).await?),
            },
            // Its decision goes beside the publish (one round trip, not two).
            None if beside_its_decision(&tables, self.w.multi) => {
                let (published, decided) = futures::join!(self.publish(&tables, base, Vec::new()), self.record_forward(&tables));
                decided?;
                with_finish(published?)
            }
            None => {
                self.decide_forward(&mut tables).await?;
                failpoints::hit(failpoints::AFTER_DECISION)?;
                with_finish(self.publish(&tables, base, Vec::new()).await?)
            }
        };
        failpoints::hit(failpoints::BEFORE_FINISH)?;
        let id = self.id();
        if handed_off {
            tracing::debug!(op = %id, version, "published by our group's leader, who removes our intent");
            return self.report(Some(version), &tables, elsewhere).await;
        }
        // Published: the hint and our intent's removal are independent (one round trip).
        let hint = async {
            if let Some(created) = &created {
                manifest::write_hint(self.w.lake, created).await;
            }
        };
        // Our entry (if a leader has not withdrawn it) and, if we led a group,
        // what its leader removes (`group::finish_led`), or if we published
        // our group's commit ourselves, our spare group, go with our intent.
        // Published: a failure here is cleanup's and recovery's to finish,
        // not a failed ingest.
        let group_done = async {
            let withdrawn = async {
                if let Some(table) = &ours.queued {
                    self.withdraw(table).await;
                }
            };
            let grouped = async {
                match &group {
                    Some(c) if c.led => group::finish_led(self.w.lake, c, &tables[0].request.table, &id).await,
                    Some(c) => group::finish_member(self.w.lake, c).await,
                    None => {}
                }
            };
            futures::join!(withdrawn, grouped);
        };
        let ((), finished, ()) = futures::join!(hint, sidecar::delete_intent(self.w.lake, &id), group_done);
        finished?;
        tracing::debug!(op = %id, version, "published and finished");
        self.report(Some(version), &tables, elsewhere).await
    }

    /// May this attempt commit in a group? A single-table append onto a
    /// published table that changes no settings.
    fn groupable(&self, tables: &[TableWork]) -> bool {
        !self.w.multi && matches!(tables, [t] if t.mode == Mode::Append && t.start_pin.is_some() && t.changes.is_empty())
    }

    /// Commit `tables`' one table in a group ([`group::commit`]); returns
    /// the group, decided forward at the table's commit (`None`: our own
    /// commit was, and we go on as a lone writer whose decision was made).
    /// `base` is caught up meanwhile, if that is done before the group's
    /// commit (it is never waited for): the publish that beat our commit
    /// would otherwise cost the group's publish (or a member's wait for it) a race.
    async fn commit_as_group(&self, intent: &Intent, tables: &mut [TableWork], appended: Appended, ours: &mut Ours, base: &mut Manifest) -> Result<Option<group::Committed>> {
        ours.queued = Some(tables[0].request.table.clone());
        let rows = appended.rows;
        let t = &mut tables[0];
        let sources = self.decided_sources(std::slice::from_ref(t));
        let committed = {
            let (commit, caught_up) = (group::commit(self.w.lake, intent, sources, (appended, &t.ahead), &self.w.deadline, self.skew), manifest::catch_up(self.w.lake, base.clone()));
            futures::pin_mut!(commit, caught_up);
            match futures::future::select(commit, caught_up).await {
                futures::future::Either::Left((committed, _)) => committed,
                futures::future::Either::Right((caught_up, commit)) => {
                    if let Ok(latest) = caught_up {
                        *base = latest;
                    }
                    commit.await
                }
            }
        };
        match committed {
            Ok(mut c) => {
                (t.committed, t.committed_manifest) = (Some(c.version), c.manifest.take());
                t.report = Some(TableReport { lance_version: c.version, rows_inserted: c.rows, rows_updated: 0 });
                Ok(Some(c))
            }
            Err(group::Failed::OwnCommit(decided)) => {
                let version = decided.versions.get(&t.request.table).copied().ok_or_else(|| Error::Blocked(format!("operation {} was decided forward without table '{}'", self.id(), t.request.table)))?;
                tracing::warn!(table = %t.request.table, version, "our commit, which Lance had found lost, landed after all and was decided forward; publishing it");
                (t.committed, t.committed_manifest) = (Some(version), None);
                t.report = Some(TableReport { lance_version: version, rows_inserted: rows, rows_updated: 0 });
                Ok(None)
            }
            Err(group::Failed::Alone(e)) => Err(self.abandon(tables, ours, e).await),
            // The group is rolled back for good: our claims are ours to give back.
            Err(group::Failed::RolledBack(e)) => match self.give_back_and_end(ours).await {
                Ok(()) => Err(e),
                Err(then) => Err(chain(e, then)),
            },
            Err(group::Failed::Left(e)) => Err(e),
        }
    }

    /// Commit `t`'s staged rows. A table creation that lost the race at
    /// commit is staged again onto the winner's table (`Stager::commit`, only
    /// once the history shows ours did not land); when that table lacks what
    /// our rows need (a column to add, the rescue column), it gains it as at
    /// staging, and the rows are staged and committed once more.
    async fn commit(&self, t: &mut TableWork, stage: Staged) -> Result<()> {
        match self.w.commit(t, stage).await {
            Err(Error::BadInput(bad)) if (bad.new_column && t.evolution == Evolution::AddColumns) || t.evolution == Evolution::Rescue => {
                tracing::info!(table = %t.request.table, "the table another writer created lacks what our rows need; adding it");
                let stage = self.add_columns(t).await?;
                self.w.commit(t, stage).await
            }
            committed => committed,
        }
    }

    /// `t`'s table lacks columns it needs — its sources' new columns, if it
    /// adds columns; its rescue column, if it rescues — : add them (an
    /// operation of its own, published before our rows, which keep our
    /// claims), then stage onto Lance's latest version, which has them.
    async fn add_columns(&self, t: &mut TableWork) -> Result<Staged> {
        let table = t.request.table.clone();
        let Some(ds) = self.w.fetch(&table, None, None, true, None).await? else {
            return Err(Error::Blocked(format!("table '{table}' vanished while its columns were being added")));
        };
        let schema = arrow::datatypes::Schema::from(ds.schema());
        let new = match t.evolution {
            Evolution::AddColumns => {
                let (sources, handle) = (t.sources.clone(), tokio::runtime::Handle::current());
                tokio::task::spawn_blocking(move || decode::new_columns(&sources, &schema, &handle)).await.expect("schema inference panicked")?
            }
            Evolution::Rescue => [rescue::field()].into_iter().filter(|f| schema.field_with_name(f.name()).is_err()).collect(),
            Evolution::Strict => unreachable!("a strict table adds no columns"),
        };
        if !new.is_empty() {
            // Columns only the version named brings: not those of one written since.
            for (source, _) in &t.sources {
                source.unchanged().await?;
            }
            columns::add(self.w.lake, &table, &new, self.skew, &self.w.deadline).await?;
        }
        self.w.stage_once(t, true).await
    }

    /// Write the intent (saying so on `durable`), then claim every source.
    /// Nothing is ours to undo until the intent is written.
    async fn intent_then_claim(&self, intent: &Intent, tables: &mut [TableWork], ours: &mut Ours, durable: oneshot::Sender<()>) -> std::result::Result<Claims, Claiming> {
        sidecar::create_intent(self.w.lake, intent).await.map_err(Claiming::NoIntent)?;
        // Dropped unsent on any error above: what waits for it never writes.
        let _ = durable.send(());
        failpoints::hit(failpoints::AFTER_INTENT).map_err(Claiming::Failed)?;
        let count = |tables: &[TableWork]| tables.iter().map(|t| t.sources.len()).sum::<usize>();
        let before = count(tables);
        let elsewhere = self.claim(intent, tables, ours).await.map_err(Claiming::Failed)?;
        Ok(Claims { elsewhere, work: count(tables) > 0, unchanged: count(tables) == before && !ours.waited })
    }

    /// Read every table as `opening` says; then, given `copies` of the work
    /// and once the intent is `durable`, stage them (invariant 4: no data file
    /// before the intent). The staging is `None` where it cannot stand as is
    /// (any error, or a rescue column to add): the door stages again after
    /// the claims, and deals with the error there.
    async fn read_then_stage(&self, opening: &[Opening], copies: Option<Vec<TableWork>>, durable: oneshot::Receiver<()>) -> (Vec<Result<Option<Arc<Dataset>>>>, Option<(Vec<TableWork>, Vec<Staged>, Arc<Progress>)>) {
        let fetched = futures::future::join_all(opening.iter().map(|o| self.w.fetch_opening(o))).await;
        let Some(mut copies) = copies else { return (fetched, None) };
        if durable.await.is_err() {
            return (fetched, None);
        }
        // Its own progress, counted only if it stands.
        let w = Stager { progress: Arc::default(), op: self.w.op.clone(), attempt: self.w.attempt.clone(), intent: self.w.intent.clone(), ..self.w };
        let mut staged = Vec::with_capacity(copies.len());
        for (t, ds) in copies.iter_mut().zip(&fetched) {
            let Ok(ds) = ds else { return (fetched, None) };
            if lacks_rescue(t, ds.as_deref()) {
                return (fetched, None);
            }
            match w.stage_fetched(t, ds.clone()).await {
                Ok(s) => staged.push(s),
                Err(_) => return (fetched, None),
            }
        }
        (fetched, Some((copies, staged, w.progress)))
    }

    /// This attempt: the unit of ownership of every object it writes.
    fn id(&self) -> AttemptId {
        AttemptId::new(&self.w.op, &self.w.intent)
    }

    /// The table's mode and key: the lake's if it knows the table, else the
    /// request's; and the indices the request declares that the lake does not.
    fn settle_mode(&self, t: &mut TableWork, base: &Manifest) -> Result<()> {
        let pin = base.tables.get(&t.request.table);
        let declared = pin.map_or(&[][..], |p| &p.indices[..]);
        for spec in &t.request.indices {
            match declared.iter().find(|d| d.name == spec.name) {
                Some(d) if d == spec => {}
                Some(d) => {
                    return Err(Error::Usage(format!(
                        "table '{}' declares index '{}' as {} on '{}'; the request declares it otherwise (drop it first with `sluice index drop`)",
                        t.request.table,
                        d.name,
                        d.kind.name(),
                        d.column
                    )));
                }
                None => t.changes.push(Change::AddIndex(spec.clone())),
            }
        }
        match (t.request.evolution, pin) {
            (Some(wanted), Some(pin)) if wanted != pin.evolution => t.changes.push(Change::Evolution(wanted)),
            (Some(wanted), None) if wanted != Evolution::Strict => t.changes.push(Change::Evolution(wanted)),
            _ => {}
        }
        let Some(pin) = pin else { return Ok(()) };
        t.evolution = t.request.evolution.unwrap_or(pin.evolution);
        check_mode(&t.request, pin.mode, pin.key.as_deref())?;
        t.mode = pin.mode;
        t.key = pin.key.clone();
        t.start_pin = Some(pin.version);
        t.start_manifest = pin.known_manifest().cloned();
        Ok(())
    }

    fn intent_of(&self, tables: &[TableWork]) -> Intent {
        Intent {
            op: self.w.op.clone(),
            attempt: self.w.attempt.clone(),
            kind: if self.w.multi { LOAD } else { "ingest" }.into(),
            tables: tables
                .iter()
                .map(|t| {
                    let table = IntentTable {
                        start_pin: t.start_pin,
                        mode: t.mode,
                        key: t.key.clone(),
                        format: t.request.format.map(|f| f.name().to_string()),
                        csv: t.request.csv.clone(),
                        partitions: t.request.partitions.clone(),
                        schema: t.request.schema.as_deref().map(decode::declared_schema_json),
                        changes: t.changes.clone(),
                        evolution: t.evolution,
                    };
                    (t.request.table.clone(), table)
                })
                .collect(),
            sources: tables
                .iter()
                .flat_map(|t| {
                    t.sources.iter().map(|(s, _)| SourceRef {
                        table: t.request.table.clone(),
                        uri: s.uri.clone(),
                        pin: s.pin.clone(),
                        id: s.id.clone(),
                        identity: s.identity.clone(),
                    })
                })
                .collect(),
            started_at: Utc::now(),
            // (Earlier only in tests of a worker whose clock runs behind.)
            deadline: crate::deadline::earlier(self.w.deadline.at(), failpoints::clock_behind()),
            worker: sidecar::worker_name(),
        }
    }

    /// Claim every source (one create-only PUT each on the common path). A
    /// source another attempt published leaves the plan as already ingested;
    /// one another attempt holds in flight is waited for (and claimed if it is
    /// given back) before our own work when we have nothing else to do or are
    /// a load (a load is shown whole), after our publish otherwise.
    async fn claim(&self, intent: &Intent, tables: &mut [TableWork], ours: &mut Ours) -> Result<Vec<Elsewhere>> {
        let mut todo: Vec<(usize, Source, Detected)> =
            tables.iter_mut().enumerate().flat_map(|(i, t)| std::mem::take(&mut t.sources).into_iter().map(move |(s, d)| (i, s, d))).collect();
        // Rows go in in the call's order, whatever order the rounds claimed them in.
        let position: std::collections::HashMap<(usize, String), usize> = todo.iter().enumerate().map(|(k, (i, s, _))| ((*i, s.id.clone()), k)).collect();
        let mut elsewhere = Vec::new();
        let table_names: Vec<String> = tables.iter().map(|t| t.request.table.clone()).collect();
        let tables_names = &table_names;
        for round in 1..=MAX_TAKEOVER_ROUNDS {
            let mut held = Vec::new();
            // Claims are independent: a bounded number in flight, results in
            // order. After a failure no new claim starts; every outcome of
            // those started is recorded before the error is returned, so a
            // giving-up attempt releases all it may hold.
            let failed = &std::sync::atomic::AtomicBool::new(false);
            let attempts: Vec<_> = futures::stream::iter(todo.drain(..))
                .map(|(i, source, detected)| async move {
                    let table = tables_names[i].clone();
                    let claim = Claim { op: self.w.op.clone(), attempt: self.w.attempt.clone(), source: source.uri.clone(), table, generation: 0, claimed_at: Utc::now() };
                    let key = sidecar::source_key(&source.id);
                    let mut maybe = Vec::new();
                    let result = if failed.load(std::sync::atomic::Ordering::SeqCst) {
                        None
                    } else if let Err(e) = failpoints::hit_async(failpoints::BEFORE_CLAIM).await {
                        failed.store(true, std::sync::atomic::Ordering::SeqCst);
                        Some(Err(e))
                    } else {
                        // Past our deadline recovery may take our attempt over: claim nothing more.
                        let result = match self.w.deadline.check("claiming a source") {
                            Ok(()) => sidecar::claim(self.w.lake, &key, &claim, &mut maybe).await,
                            Err(e) => Err(e),
                        };
                        if result.is_err() {
                            failed.store(true, std::sync::atomic::Ordering::SeqCst);
                        }
                        Some(result)
                    };
                    (i, source, detected, key, maybe, result)
                })
                .buffered(CONCURRENT_SOURCES)
                .collect()
                .await;
            let mut first_error = None;
            let mut outcomes = Vec::with_capacity(attempts.len());
            for (i, source, detected, key, maybe, result) in attempts {
                ours.maybe.extend(maybe);
                match result {
                    Some(Ok(claimed)) => outcomes.push((i, source, detected, key, claimed)),
                    Some(Err(e)) => {
                        first_error.get_or_insert(e);
                    }
                    None => {}
                }
            }
            for (i, source, detected, key, claimed) in outcomes {
                let table = tables[i].request.table.clone();
                match claimed {
                    Claimed::Mine { generation } => {
                        ours.claimed.push((key, generation));
                        tables[i].sources.push((source, detected));
                    }
                    Claimed::Held(holder, status) => match status {
                        Holder::Published => elsewhere.push(Elsewhere { table, source, holder, published: true }),
                        // Given back between our two reads, or in flight: try again after it.
                        Holder::Released => held.push((i, source, detected, holder, None)),
                        Holder::InFlight(intent) => held.push((i, source, detected, holder, Some(intent))),
                    },
                }
            }
            if let Some(e) = first_error {
                return Err(e);
            }
            let own_work = tables.iter().any(|t| !t.sources.is_empty());
            // A load never publishes part of itself while another attempt still
            // holds some of its sources: it settles them first.
            let settle_first = self.w.multi && !held.is_empty();
            if settle_first && round == MAX_TAKEOVER_ROUNDS {
                let (_, source, _, holder, _) = &held[0];
                return Err(Error::Blocked(format!(
                    "{} of this load is still held by operation {} (attempt {}); nothing of the load was published, \
                     deliver it again later",
                    source.uri, holder.op, holder.attempt
                )));
            }
            if held.is_empty() || (own_work && !settle_first) || round == MAX_TAKEOVER_ROUNDS {
                // Still held elsewhere: settled after our own work, in `report`.
                elsewhere.extend(held.into_iter().map(|(i, source, _, holder, _)| Elsewhere { table: tables[i].request.table.clone(), source, holder, published: false }));
                break;
            }
            // Nothing of our own to do, or a load: wait for the holders, then try again.
            ours.waited = true;
            // A load waits holding its claims, so two loads that each hold a
            // source the other wants would wait for each other until a
            // deadline. The younger gives its claims back before it waits;
            // the older waits only for them to be given back.
            let before_an_older_load = held.iter().any(|(.., holder)| holder.as_ref().is_some_and(|h| h.kind == LOAD && older(h, intent)));
            if before_an_older_load && !ours.claimed.is_empty() {
                assert!(self.w.multi, "only a load waits holding claims");
                self.give_back(tables, ours, &mut todo).await?;
            }
            for (_, source, _, holder, intent) in &held {
                if let Some(intent) = intent {
                    let key = sidecar::source_key(&source.id);
                    recover::await_released(self.w.lake, &key, holder, intent.deadline, self.skew, &self.w.deadline).await?;
                }
            }
            todo.extend(held.into_iter().map(|(i, s, d, _, _)| (i, s, d)));
        }
        for (i, t) in tables.iter_mut().enumerate() {
            t.sources.sort_by_key(|(s, _)| position[&(i, s.id.clone())]);
        }
        Ok(elsewhere)
    }

    /// Release every claim of ours (a load making way for an older one):
    /// their sources go back to `todo`, to be claimed again after it. Only
    /// claims are undone: a load stages nothing before its claims settle.
    async fn give_back(&self, tables: &mut [TableWork], ours: &mut Ours, todo: &mut Vec<(usize, Source, Detected)>) -> Result<()> {
        let releases = ours.claimed.iter().map(|(key, generation)| sidecar::release(self.w.lake, key, *generation, &self.w.attempt));
        futures::future::try_join_all(releases).await?;
        tracing::info!(op = %self.id(), claims = ours.claimed.len(), "gave its claims back to an older load that wants some of them");
        ours.claimed.clear();
        for (i, t) in tables.iter_mut().enumerate() {
            todo.extend(std::mem::take(&mut t.sources).into_iter().map(|(s, d)| (i, s, d)));
        }
        Ok(())
    }

    /// Give up before any commit of ours is known to have landed: decide
    /// roll_back (create-only: if recovery decided first, the outcome is its
    /// to carry out), remove any commit of ours the tables show after all,
    /// release our claims, remove our intent. Returns `error`.
    async fn abandon(&self, tables: &[TableWork], ours: &Ours, error: Error) -> Error {
        let error = match error {
            Error::BadInput(mut bad) => {
                match self.quarantine(&bad, tables).await {
                    Ok(copy) => bad.reason = format!("{}; the file is quarantined at {copy}: fix it and deliver it again", bad.reason),
                    Err(e) => tracing::error!(error = %e, source = %bad.source_uri, "could not quarantine the bad source"),
                }
                Error::BadInput(bad)
            }
            other => other,
        };
        match self.roll_back_own(tables, ours).await {
            Ok(()) => error,
            Err(e) => chain(error, e),
        }
    }

    async fn roll_back_own(&self, tables: &[TableWork], ours: &Ours) -> Result<()> {
        let id = self.id();
        let decision = Decision::new(&self.w.op, &self.w.intent, &self.w.attempt, Outcome::RollBack, "writer", BTreeMap::new());
        let decided = sidecar::decide(self.w.lake, &decision).await?;
        // Decided otherwise: our queue entry (if any) can only hold the line.
        if !matches!(decided, Created::Mine)
            && let Some(table) = &ours.queued
        {
            self.withdraw(table).await;
        }
        match decided {
            Created::Mine => {}
            // Recovery rolled us back first: our claims are still ours to give back.
            Created::Theirs(theirs) if theirs.outcome == Outcome::RollBack => {
                for (source, generation) in ours.claimed.iter().chain(&ours.maybe) {
                    sidecar::release(self.w.lake, source, *generation, &self.w.attempt).await?;
                }
                return Err(Error::Blocked(format!("operation {id} was rolled back by recovery meanwhile; recovery finishes it")));
            }
            // Its fate is the group's: its claims and its intent stay for the group's outcome.
            Created::Theirs(theirs) if theirs.outcome == Outcome::Joined => return Err(joined(&id, &theirs)),
            other => {
                return Err(Error::Blocked(format!("operation {id} was decided by recovery meanwhile ({other:?}); recovery finishes it")));
            }
        }
        if ours.commit_started {
            for t in tables {
                // On a refusal the intent stays: recovery reports it.
                fence::remove_own_commits(self.w.lake, &t.request.table, t.start_pin.unwrap_or(0), &id, &self.w.attempt).await?.map_err(Error::Blocked)?;
            }
        }
        self.give_back_and_end(ours).await
    }

    /// The last steps of an attempt rolled back for good: release every
    /// claim generation it holds or may hold, then remove its intent.
    async fn give_back_and_end(&self, ours: &Ours) -> Result<()> {
        for (source, generation) in ours.claimed.iter().chain(&ours.maybe) {
            sidecar::release(self.w.lake, source, *generation, &self.w.attempt).await?;
        }
        if let Some(table) = &ours.queued {
            self.withdraw(table).await;
        }
        sidecar::delete_intent(self.w.lake, &self.id()).await
    }

    /// Withdraw our queue entry on `table` (a leader that took us withdraws it
    /// too: ours retries one that failed); one left behind is cleanup's once
    /// we are decided and finished.
    async fn withdraw(&self, table: &str) {
        if let Err(e) = queue::withdraw(self.w.lake, table, &self.id()).await {
            tracing::warn!(table, error = %e, "could not withdraw our queue entry; cleanup removes it");
        }
    }

    /// Copy the bad source and its reason under `_quarantine/<source id>/`;
    /// returns where the copy is.
    async fn quarantine(&self, bad: &BadInput, tables: &[TableWork]) -> Result<String> {
        let source = self.sources.iter().find(|s| s.uri == bad.source_uri).expect("bad input names one of our sources");
        let table = tables.iter().find(|t| t.sources.iter().any(|(s, _)| s.id == source.id)).map(|t| t.request.table.as_str());
        let dir = format!("_quarantine/{}", source.id);
        source.copy_into(self.w.lake, &format!("{dir}/{}", source.file_name())).await?;
        #[derive(Serialize)]
        struct Reason<'a> {
            op: &'a str,
            /// The table the source was for (`sluice sources --table`).
            table: Option<&'a str>,
            at: chrono::DateTime<Utc>,
            identity: &'a str,
            error: &'a BadInput,
            message: String,
        }
        let reason = Reason { op: &self.w.op, table, at: Utc::now(), identity: &source.identity, error: bad, message: bad.to_string() };
        self.w.lake.put_json(&format!("{dir}/reason.json"), &reason).await?;
        Ok(format!("{}/{dir}/", self.w.lake.uri().trim_end_matches('/')))
    }

    fn forward(&self, tables: &[TableWork]) -> Decision {
        let versions = tables.iter().map(|t| (t.request.table.clone(), t.committed.expect("committed before deciding"))).collect();
        Decision { sources: self.decided_sources(tables), ..Decision::new(&self.w.op, &self.w.intent, &self.w.attempt, Outcome::Forward, "writer", versions) }
    }

    /// The sources a forward decision names, so that a publish passing our
    /// commit records them: ours, unless there are too many to carry in a
    /// decision every redelivery of them reads.
    fn decided_sources(&self, tables: &[TableWork]) -> Vec<PublishedSource> {
        match tables.iter().map(|t| t.sources.len()).sum::<usize>() <= MAX_DECIDED_SOURCES {
            true => self.published_sources(tables),
            false => Vec::new(),
        }
    }

    /// Our sources, as a publish records them (with their bytes and the rows read).
    fn published_sources(&self, tables: &[TableWork]) -> Vec<PublishedSource> {
        let rows = self.w.progress.source_rows.lock().expect("progress poisoned");
        tables
            .iter()
            .flat_map(|t| {
                t.sources.iter().map(|(s, _)| PublishedSource {
                    table: t.request.table.clone(),
                    uri: s.uri.clone(),
                    id: s.id.clone(),
                    identity: s.identity.clone(),
                    bytes: Some(s.size),
                    rows: rows.get(&s.id).copied(),
                    op: None,
                })
            })
            .collect()
    }

    /// Record the forward decision of an attempt that publishes beside it
    /// ([`beside_its_decision`]). Nobody decides such an attempt otherwise:
    /// recovery decides one rolled back only after taking the version after
    /// its start pin (`fence::take_next_version`) and finding it not ours,
    /// and a vetter decides it forward at that same commit.
    async fn record_forward(&self, tables: &[TableWork]) -> Result<()> {
        let decision = self.forward(tables);
        failpoints::hit(failpoints::BEFORE_DECISION)?;
        match sidecar::decide(self.w.lake, &decision).await? {
            Created::Mine => {}
            Created::Theirs(theirs) if theirs.outcome == Outcome::Forward && theirs.versions == decision.versions => {}
            Created::Theirs(theirs) if theirs.outcome == Outcome::Joined => return Err(joined(&self.id(), &theirs)),
            Created::Theirs(theirs) => {
                return Err(Error::Blocked(format!(
                    "operation {} published its commit at {:?} beside its decision, but it was decided otherwise meanwhile \
                     ({:?} by {}): only a sweep that does not first take the version after a dead ingest's start pin (an \
                     older sluice) decides so. Run every worker on one sluice version, then check those tables' rows",
                    self.id(),
                    decision.versions,
                    theirs.outcome,
                    theirs.by
                )));
            }
            // Nobody can decide it otherwise: the intent stays, and recovery records it forward.
            Created::Gone => {
                return Err(Error::Blocked(format!(
                    "operation {}: its decision's PUT could not be confirmed; its commit stands, and `sluice recover` records it",
                    self.id()
                )));
            }
        }
        failpoints::hit(failpoints::AFTER_DECISION)
    }

    /// Decide this attempt forward, naming its commits: create-only, so if
    /// recovery decided first (our owner was presumed dead) we follow it.
    async fn decide_forward(&self, tables: &mut [TableWork]) -> Result<()> {
        let decision = self.forward(tables);
        failpoints::hit(failpoints::BEFORE_DECISION)?;
        match sidecar::decide(self.w.lake, &decision).await? {
            Created::Mine => Ok(()),
            // Recovery or a vetter decided us forward first: publish what that decision names.
            Created::Theirs(theirs) if theirs.outcome == Outcome::Forward => {
                for t in tables.iter_mut() {
                    if let Some(v) = theirs.versions.get(&t.request.table)
                        && t.committed != Some(*v)
                    {
                        t.committed = Some(*v);
                        t.committed_manifest = None;
                    }
                }
                Ok(())
            }
            Created::Theirs(theirs) if theirs.outcome == Outcome::Joined => Err(joined(&self.id(), &theirs)),
            other => Err(Error::Blocked(format!(
                "operation {} was rolled back by recovery while this worker was stalled ({other:?}); nothing of it is \
                 published and its commits are removed. Deliver its sources again",
                self.id()
            ))),
        }
    }

    /// Publish every table at its commit, after checking that every other
    /// commit between the pin and ours is decided forward (`fence.rs`).
    /// `decided`: sources a group's decision names (its members'), listed too.
    async fn publish(&self, tables: &[TableWork], mut base: Manifest, decided: Vec<PublishedSource>) -> Result<(u64, Option<Manifest>)> {
        let wanted = tables
            .iter()
            .map(|t| {
                let pin = TablePin::new(t.committed.expect("committed before publishing"), t.mode, t.key.clone());
                (t.request.table.clone(), TablePin { lance_manifest: t.committed_manifest.clone(), ..pin })
            })
            .collect();
        let recover::Publishable { pins, passed } =
            recover::publishable_pins(self.w.lake, &mut base, wanted, &self.w.attempt, recover::Expired::Resolve, self.skew, &self.w.deadline)
                .await?
                .map_err(recover::Stop::into_error)?;
        let goal = Goal {
            published: Published {
                op: self.w.op.clone(),
                attempt: self.w.attempt.clone(),
                kind: if self.w.multi { LOAD } else { "ingest" }.into(),
                tables: pins.iter().map(|(t, p)| (t.clone(), p.version)).collect(),
                sources: tables.iter().map(|t| t.sources.len()).sum(),
                source_list: {
                    let mut list = self.published_sources(tables);
                    manifest::add_sources(&mut list, decided.into_iter().chain(passed));
                    list
                },
            },
            pins,
            changes: tables.iter().filter(|t| !t.changes.is_empty()).map(|t| (t.request.table.clone(), t.changes.clone())).collect(),
        };
        let (outcome, created) = manifest::publish_unhinted(self.w.lake, base, &goal, &self.w.deadline).await?;
        Ok((outcome.version(), created))
    }

    /// The report: our sources, and those other attempts hold. An
    /// acknowledgement is earned: a source held elsewhere counts as done only
    /// once its holder is proven to have published it; a holder in flight is
    /// waited for (within our deadline); one that gave the source back fails
    /// this call, so the source is delivered again.
    async fn report(&self, version: Option<u64>, tables: &[TableWork], elsewhere: Vec<Elsewhere>) -> Result<Report> {
        let mut sources: Vec<SourceReport> = tables
            .iter()
            .flat_map(|t| {
                t.sources.iter().map(|(s, _)| SourceReport {
                    table: t.request.table.clone(),
                    uri: s.uri.clone(),
                    status: SourceStatus::Ingested,
                    op: self.w.op.clone(),
                    bytes: s.size,
                })
            })
            .collect();
        let mut waited = false;
        for e in elsewhere {
            // Shown published when claimed (an attempt that published stays
            // so), or looked at until its holder is done.
            let (mut published, mut holder) = (e.published, e.holder);
            let key = sidecar::source_key(&e.source.id);
            let mut claimed_again = 0;
            while !published {
                // Each wait below ends by the deadline; this bounds the loop even if one returns at once.
                self.w.deadline.check("waiting for a source another operation holds")?;
                match sidecar::holder(self.w.lake, &key, &holder).await? {
                    Holder::Published => published = true,
                    Holder::InFlight(intent) => {
                        recover::await_released(self.w.lake, &key, &holder, intent.deadline, self.skew, &self.w.deadline).await?;
                        waited = true;
                    }
                    Holder::Released => match sidecar::newest_claim(self.w.lake, &key).await? {
                        // Given back and claimed again (a load that made way for
                        // an older one, or a redelivery): its new holder says.
                        Some(next) if next.generation > holder.generation && claimed_again < MAX_CLAIMED_AGAIN => {
                            (holder, claimed_again) = (next, claimed_again + 1);
                        }
                        _ => {
                            return Err(Error::Blocked(format!(
                                "{} was in flight in operation {}, which gave it back without ingesting it; deliver it again",
                                e.source.uri, holder.op
                            )));
                        }
                    },
                }
            }
            let table = if holder.table.is_empty() { e.table } else { holder.table.clone() };
            sources.push(SourceReport { table, uri: e.source.uri.clone(), status: SourceStatus::AlreadyIngested, op: holder.op.clone(), bytes: e.source.size });
        }
        // Ours shows our sources; others' are shown by the latest version.
        let manifest_version = match version {
            Some(v) if !waited && sources.iter().all(|s| s.status == SourceStatus::Ingested) => Some(v),
            _ => manifest::read_latest(self.w.lake).await?.map(|m| m.version),
        };
        Ok(Report {
            op: self.w.op.clone(),
            manifest_version,
            tables: tables.iter().filter_map(|t| Some((t.request.table.clone(), t.report.clone()?))).collect(),
            sources,
            requests: RequestSnapshot::default(),
        })
    }
}

/// A source of this call that another attempt holds.
struct Elsewhere {
    table: String,
    source: Source,
    holder: Claim,
    /// Its holder was shown to have published it (no need to look again).
    published: bool,
}

/// What this attempt owns, for giving it back.
#[derive(Default)]
struct Ours {
    /// (ledger key, claim generation) claimed.
    claimed: Vec<(String, u32)>,
    /// Generations whose create-only PUT answered ambiguously: maybe ours.
    maybe: Vec<(String, u32)>,
    /// A Lance commit was started (so one may have landed).
    commit_started: bool,
    /// Claiming waited for another attempt to finish.
    waited: bool,
    /// The table whose group-commit queue holds (or may hold) our entry.
    queued: Option<String>,
}

/// What claiming found: the sources held elsewhere; whether any is ours to
/// ingest; whether the plan is as it was before claiming (every source ours
/// at once, no other holder waited for).
struct Claims {
    elsewhere: Vec<Elsewhere>,
    work: bool,
    unchanged: bool,
}

/// The kind of an operation on several tables at once (a load waits for a
/// source another attempt holds with its claims in hand; an ingest does not).
const LOAD: &str = "load";

/// Does the attempt of `a` precede that of `b`? (The order in which loads
/// make way for each other: the same for every worker, whatever its clock.)
fn older(a: &Intent, b: &Intent) -> bool {
    (a.started_at, &a.attempt) < (b.started_at, &b.attempt)
}

/// May this attempt publish beside its forward decision instead of after it?
/// A single table, published when the attempt started (its start pin `p`),
/// whose commit landed at `p + 1`. No fence of recovery's can precede that
/// commit (a fence lands after `p`, and `p + 1` is ours), so recovery, which
/// takes `p + 1` before it may decide a single-table ingest rolled back,
/// finds it there and decides forward; and no earlier commit of ours exists
/// for a vetter to name instead.
fn beside_its_decision(tables: &[TableWork], multi: bool) -> bool {
    match tables {
        [t] if !multi => t.start_pin.is_some_and(|p| t.committed == Some(p + 1)),
        _ => false,
    }
}

/// `t` rescues what does not fit, but its table lacks the rescue column yet.
fn lacks_rescue(t: &TableWork, ds: Option<&Dataset>) -> bool {
    t.evolution == Evolution::Rescue && ds.is_some_and(|ds| ds.schema().field(RESCUE_COLUMN).is_none())
}

/// A publish of our own, whose intent we remove ourselves.
fn with_finish((version, created): (u64, Option<Manifest>)) -> (u64, Option<Manifest>, bool) {
    (version, created, false)
}

fn chain(first: Error, then: Error) -> Error {
    tracing::error!(error = %then, "cleanup after a failed operation also failed");
    first
}

/// An attempt found that a group took it (`sidecar::Outcome::Joined`): its
/// rows go with the group's commit, and it gives nothing back itself.
fn joined(id: &AttemptId, decision: &Decision) -> Error {
    let group = decision.group.as_ref().map_or_else(|| "(unnamed)".to_string(), ToString::to_string);
    Error::Blocked(format!(
        "operation {id} joined group {group} meanwhile: its rows go with that group's commit. Its claims and intent stay \
         until the group is decided; `sluice recover` finishes it then (a redelivery waits for that, and never ingests twice)"
    ))
}
