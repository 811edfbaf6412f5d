//! Ingest and multi-table load: the door (docs/PROTOCOL.md) for operations that add rows.
//!
//! 1. resolve sources (identity) — read only; the same source twice is one;
//! 2. heal, then the intent of this attempt (`_ops/<op>.<attempt>`), before
//!    any effect;
//! 3. claims in the exactly-once ledger (a source held by another attempt is
//!    done only once that attempt is proven to have published it);
//! 4. every table's data written *uncommitted* (bad input stops here, with
//!    nothing committed);
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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatchReader;
use arrow::datatypes::SchemaRef;
use chrono::Utc;
use lance::Dataset;
use lance::dataset::transaction::{Operation, Transaction};
use lance::dataset::write::merge_insert::SourceDedupeBehavior;
use lance::dataset::{CommitBuilder, InsertBuilder, MergeInsertBuilder, WhenMatched, WhenNotMatched, WriteMode, WriteParams};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::counting::RequestSnapshot;
use crate::deadline::Deadline;
use crate::decode::{self, Detected, Format, Progress, SourcesReader};
use crate::error::{BadInput, Error, Result};
use crate::failpoints;
use crate::lake::{Created, Lake};
use crate::manifest::{self, Goal, Manifest, Mode, Published, TablePin};
use crate::recover;
use crate::fence;
use crate::sidecar::{self, AttemptId, Claim, Claimed, Decision, Holder, Intent, IntentTable, Outcome, SCOPE_MULTI, SCOPE_SINGLE, SourceRef};
use crate::source::{Source, SourceSpec};

/// Schema metadata keys that keep a table's mode inside the Lance table itself.
const META_MODE: &str = "sluice.mode";
const META_KEY: &str = "sluice.key";
/// Redos of a commit that cannot stand (upsert conflict, lost table creation).
const MAX_REDO_ATTEMPTS: u32 = 5;

/// Rows for one table, as the caller asks for them.
#[derive(Debug, Clone)]
pub struct TableRequest {
    pub table: String,
    pub sources: Vec<SourceSpec>,
    pub format: Option<Format>,
    pub mode: Option<Mode>,
    pub key: Option<String>,
    /// The schema a new table gets instead of an inferred one.
    pub schema: Option<SchemaRef>,
}

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
pub struct TableReport {
    pub lance_version: u64,
    pub rows_inserted: u64,
    pub rows_updated: u64,
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

/// Route sources to tables: `--table` if given, else each source's folder name.
pub fn route(sources: &[String], table: Option<&str>) -> Result<BTreeMap<String, Vec<String>>> {
    let mut routed: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for uri in sources {
        let name = match table {
            Some(t) => t.to_string(),
            None => {
                let mut parts = uri.trim_end_matches('/').rsplit('/');
                parts.next();
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

/// One table's part of an operation, as it moves through the door.
struct TableWork {
    request: TableRequest,
    sources: Vec<(Source, Detected)>,
    mode: Mode,
    key: Option<String>,
    /// The pin in the manifest the operation started from.
    start_pin: Option<u64>,
    committed: Option<u64>,
    report: Option<TableReport>,
}

struct Door<'a> {
    lake: &'a Lake,
    op: String,
    attempt: String,
    /// The attempt whose intent this work belongs to: ours, or a dead writer's in a redo.
    intent: String,
    deadline: Deadline,
    progress: Arc<Progress>,
    multi: bool,
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

/// Rounds of "another attempt holds every source of ours": wait for it (or
/// resolve it once it expired), then claim again.
const MAX_TAKEOVER_ROUNDS: u32 = 3;
/// Budget for removing our own late commit when giving up (it is fenced by our
/// roll-back decision, so it may run past our deadline).
const LATE_REMOVAL: Duration = Duration::from_secs(30);

/// Ingest the tables' sources as one operation: all of it visible in one
/// manifest version, or none of it. A single table is an `ingest`; several a `load`.
pub async fn run(lake: &Lake, requests: Vec<TableRequest>, budget: Budget, progress: Arc<Progress>) -> Result<Report> {
    let before = lake.requests();
    lake.timing().check_timeout(budget.timeout)?;
    let deadline = Deadline::after(budget.timeout);
    if requests.is_empty() || requests.iter().any(|r| r.sources.is_empty()) {
        return Err(Error::Usage("nothing to ingest: give at least one source per table".into()));
    }
    let mut tables = Vec::with_capacity(requests.len());
    for request in requests {
        validate_table_name(&request.table)?;
        if request.mode == Some(Mode::Upsert) && request.key.is_none() {
            return Err(Error::Usage(format!("table '{}': --mode upsert needs --key COLUMN", request.table)));
        }
        let mut sources: Vec<(Source, Detected)> = Vec::with_capacity(request.sources.len());
        for spec in &request.sources {
            let uri = &spec.uri;
            let source = Source::resolve_pinned(uri, spec.pin.as_ref()).await?;
            // The same source twice in one call (`a.jsonl ./a.jsonl`) is one source.
            if sources.iter().any(|(s, _)| s.id == source.id) {
                tracing::info!(uri, "the same source was given twice; ingesting it once");
                continue;
            }
            let detected = decode::detect(&source, request.format)?;
            sources.push((source, detected));
        }
        tables.push(TableWork {
            mode: request.mode.unwrap_or(Mode::Append),
            key: request.key.clone(),
            request,
            sources,
            start_pin: None,
            committed: None,
            report: None,
        });
    }
    let op = operation_id(&tables);
    let attempt = uuid::Uuid::now_v7().to_string();
    let door = Door {
        lake,
        op: op.clone(),
        intent: attempt.clone(),
        attempt,
        deadline,
        progress,
        multi: tables.len() > 1,
        sources: tables.iter().flat_map(|t| t.sources.iter().map(|(s, _)| s.clone())).collect(),
        skew: budget.clock_skew,
    };
    let mut report = door.run(tables).await?;
    report.requests = lake.requests().since(&before);
    Ok(report)
}

/// Recovery's redo of a multi-table load that died with `tables` uncommitted:
/// commit each from the sources the load claimed for it, tagged with the
/// sweep's `attempt`. `None` when a source is no longer the version the load read.
pub(crate) async fn redo(
    lake: &Lake,
    intent: &Intent,
    attempt: &str,
    deadline: Deadline,
    tables: &BTreeMap<String, Vec<SourceRef>>,
) -> Result<Option<BTreeMap<String, u64>>> {
    let mut work = Vec::with_capacity(tables.len());
    let mut all = Vec::new();
    for (name, refs) in tables {
        let it = &intent.tables[name];
        let format = it.format.as_deref().map(str::parse::<Format>).transpose()?;
        let schema = it.schema.as_ref().map(|v| decode::parse_declared_schema(&v.to_string())).transpose()?;
        let mut sources = Vec::new();
        for r in refs {
            let source = Source::resolve_pinned(&r.uri, r.pin.as_ref()).await?;
            if source.identity != r.identity {
                return Ok(None);
            }
            let detected = decode::detect(&source, format)?;
            all.push(source.clone());
            sources.push((source, detected));
        }
        let request = TableRequest {
            table: name.clone(),
            sources: sources.iter().map(|(s, _)| SourceSpec { uri: s.uri.clone(), pin: s.pin.clone() }).collect(),
            format,
            mode: Some(it.mode),
            key: it.key.clone(),
            schema,
        };
        work.push(TableWork { request, sources, mode: it.mode, key: it.key.clone(), start_pin: it.start_pin, committed: None, report: None });
    }
    let door = Door {
        lake,
        op: intent.op.clone(),
        attempt: attempt.to_string(),
        intent: intent.attempt.clone(),
        deadline,
        progress: Arc::default(),
        multi: true,
        sources: all,
        skew: recover::DEFAULT_CLOCK_SKEW,
    };
    let mut done = BTreeMap::new();
    for t in &mut work {
        let stage = door.stage(t, false).await?;
        door.commit(t, stage).await?;
        done.insert(t.request.table.clone(), t.committed.expect("a commit that returned Ok recorded its version"));
    }
    Ok(Some(done))
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
    async fn run(&self, mut tables: Vec<TableWork>) -> Result<Report> {
        // Heal first: dead workers' operations on our tables are resolved
        // before we start, so a redelivery finds its source settled.
        let names: BTreeSet<String> = tables.iter().map(|t| t.request.table.clone()).collect();
        // Boxed: recovery's future is large and would nest inside ours.
        Box::pin(recover::heal(self.lake, &names, self.skew, &self.deadline)).await?;
        let base = manifest::writer_base(self.lake).await?;
        for t in &mut tables {
            self.settle_mode(t, &base)?;
        }
        // Heal may have used much of our time: an intent already past its deadline would be taken over at once.
        self.deadline.check("writing the intent")?;
        sidecar::create_intent(self.lake, &self.intent(&tables)).await?;
        let mut ours = Ours::default();
        if let Err(e) = failpoints::hit(failpoints::AFTER_INTENT) {
            return Err(self.abandon(&tables, &ours, e).await);
        }
        let elsewhere = match self.claim(&mut tables, &mut ours).await {
            Ok(elsewhere) => elsewhere,
            Err(e) => return Err(self.abandon(&tables, &ours, e).await),
        };
        tables.retain(|t| !t.sources.is_empty());
        if tables.is_empty() {
            // Nothing claimed, nothing written: only our intent to remove.
            sidecar::delete_intent(self.lake, &self.id()).await?;
            return self.report(None, &tables, elsewhere).await;
        }
        if let Err(e) = failpoints::hit(failpoints::AFTER_CLAIMS) {
            return Err(self.abandon(&tables, &ours, e).await);
        }

        // Write everything uncommitted first: bad input stops before any commit.
        let mut staged = Vec::with_capacity(tables.len());
        for t in &mut tables {
            match self.stage(t, false).await {
                Ok(s) => staged.push(s),
                Err(e) => return Err(self.abandon(&tables, &ours, e).await),
            }
        }
        if let Err(e) = failpoints::hit(failpoints::BEFORE_COMMIT) {
            return Err(self.abandon(&tables, &ours, e).await);
        }
        let mut any_committed = false;
        for i in 0..tables.len() {
            let stage = staged.remove(0);
            ours.commit_started = true;
            match self.commit(&mut tables[i], stage).await {
                Ok(()) => {
                    any_committed = true;
                    failpoints::hit(failpoints::AFTER_COMMIT)?;
                }
                // Nothing of ours is in Lance as far as its history shows: roll
                // ourselves back (a commit still in flight is fenced by that decision).
                Err(e) if !any_committed => return Err(self.abandon(&tables, &ours, e).await),
                // A commit landed: the intent stays for recovery to finish.
                Err(e) => return Err(e),
            }
        }
        self.decide_forward(&mut tables).await?;
        failpoints::hit(failpoints::AFTER_DECISION)?;
        let version = self.publish(&tables, base).await?;
        failpoints::hit(failpoints::BEFORE_FINISH)?;
        sidecar::delete_intent(self.lake, &self.id()).await?;
        self.report(Some(version), &tables, elsewhere).await
    }

    /// This attempt: the unit of ownership of every object it writes.
    fn id(&self) -> AttemptId {
        AttemptId::new(&self.op, &self.intent)
    }
    /// The table's mode and key: the lake's if it knows the table, else the request's.
    fn settle_mode(&self, t: &mut TableWork, base: &Manifest) -> Result<()> {
        let Some(pin) = base.tables.get(&t.request.table) else { return Ok(()) };
        check_mode(&t.request, pin.mode, pin.key.as_deref())?;
        t.mode = pin.mode;
        t.key = pin.key.clone();
        t.start_pin = Some(pin.version);
        Ok(())
    }

    fn intent(&self, tables: &[TableWork]) -> Intent {
        Intent {
            op: self.op.clone(),
            attempt: self.attempt.clone(),
            kind: if self.multi { "load" } else { "ingest" }.into(),
            tables: tables
                .iter()
                .map(|t| {
                    let table = IntentTable {
                        start_pin: t.start_pin,
                        mode: t.mode,
                        key: t.key.clone(),
                        format: t.request.format.map(|f| f.name().to_string()),
                        schema: t.request.schema.as_deref().map(decode::declared_schema_json),
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
            deadline: self.deadline.at(),
            worker: sidecar::worker_name(),
        }
    }

    /// Claim every source (one create-only PUT each on the common path). A
    /// source another attempt published leaves the plan as already ingested;
    /// one another attempt holds in flight is waited for when we have nothing
    /// else to do (and claimed if it is given back), or after our publish.
    async fn claim(&self, tables: &mut [TableWork], ours: &mut Ours) -> Result<Vec<Elsewhere>> {
        let mut todo: Vec<(usize, Source, Detected)> =
            tables.iter_mut().enumerate().flat_map(|(i, t)| std::mem::take(&mut t.sources).into_iter().map(move |(s, d)| (i, s, d))).collect();
        let mut elsewhere = Vec::new();
        for round in 1..=MAX_TAKEOVER_ROUNDS {
            let mut held = Vec::new();
            for (i, source, detected) in todo.drain(..) {
                let table = tables[i].request.table.clone();
                let claim = Claim { op: self.op.clone(), attempt: self.attempt.clone(), source: source.uri.clone(), table: table.clone(), generation: 0, claimed_at: Utc::now() };
                // Past our deadline recovery may take our attempt over: claim nothing more.
                self.deadline.check("claiming a source")?;
                let key = sidecar::source_key(&source.id);
                match sidecar::claim(self.lake, &key, &claim, &mut ours.maybe).await? {
                    Claimed::Mine { generation } => {
                        ours.claimed.push((key, generation));
                        tables[i].sources.push((source, detected));
                    }
                    Claimed::Held(holder, status) => match status {
                        Holder::Published => elsewhere.push(Elsewhere { table, source, holder }),
                        // Given back between our two reads, or in flight: try again after it.
                        Holder::Released => held.push((i, source, detected, holder, None)),
                        Holder::InFlight(intent) => held.push((i, source, detected, holder, Some(intent))),
                    },
                }
            }
            let own_work = tables.iter().any(|t| !t.sources.is_empty());
            if held.is_empty() || own_work || round == MAX_TAKEOVER_ROUNDS {
                // Still held elsewhere: settled after our own work, in `report`.
                elsewhere.extend(held.into_iter().map(|(i, source, _, holder, _)| Elsewhere { table: tables[i].request.table.clone(), source, holder }));
                break;
            }
            // Nothing of our own to do: wait for the holders, then try again.
            for (_, _, _, holder, intent) in &held {
                if let Some(intent) = intent {
                    recover::await_gone(self.lake, &AttemptId::new(&holder.op, &holder.attempt), intent.deadline, self.skew, &self.deadline).await?;
                }
            }
            todo = held.into_iter().map(|(i, s, d, _, _)| (i, s, d)).collect();
        }
        Ok(elsewhere)
    }

    /// Give up before any commit of ours is known to have landed: decide
    /// roll_back (create-only: if recovery decided first, the outcome is its
    /// to carry out), remove any commit of ours the tables show after all,
    /// release our claims, remove our intent. Returns `error`.
    async fn abandon(&self, tables: &[TableWork], ours: &Ours, error: Error) -> Error {
        if let Error::BadInput(bad) = &error
            && let Err(e) = self.quarantine(bad).await
        {
            tracing::error!(error = %e, source = %bad.source_uri, "could not quarantine the bad source");
        }
        match self.roll_back_own(tables, ours).await {
            Ok(()) => error,
            Err(e) => chain(error, e),
        }
    }

    async fn roll_back_own(&self, tables: &[TableWork], ours: &Ours) -> Result<()> {
        let id = self.id();
        let decision = Decision {
            op: self.op.clone(),
            intent: self.intent.clone(),
            attempt: self.attempt.clone(),
            outcome: Outcome::RollBack,
            by: "writer".into(),
            at: Utc::now(),
            versions: BTreeMap::new(),
        };
        match sidecar::decide(self.lake, &decision).await? {
            Created::Mine => {}
            // Recovery rolled us back first: our claims are still ours to give back.
            Created::Theirs(theirs) if theirs.outcome == Outcome::RollBack => {
                for (source, generation) in ours.claimed.iter().chain(&ours.maybe) {
                    sidecar::release(self.lake, source, *generation, &self.attempt).await?;
                }
                return Err(Error::Blocked(format!("operation {id} was rolled back by recovery meanwhile; recovery finishes it")));
            }
            other => {
                return Err(Error::Blocked(format!("operation {id} was decided by recovery meanwhile ({other:?}); recovery finishes it")));
            }
        }
        if ours.commit_started {
            let seen = fence::Seen::default();
            for t in tables {
                let Some(history) = fence::commits_of(self.lake, &t.request.table, t.start_pin.unwrap_or(0), &id, &seen, u64::MAX).await? else { continue };
                for (version, _) in history.standing() {
                    if let Err(reason) = fence::remove_commit(self.lake, &t.request.table, &id, &self.attempt, version, &Deadline::after(LATE_REMOVAL)).await? {
                        // The intent stays: recovery reports the refusal.
                        return Err(Error::Blocked(reason));
                    }
                }
            }
        }
        for (source, generation) in ours.claimed.iter().chain(&ours.maybe) {
            sidecar::release(self.lake, source, *generation, &self.attempt).await?;
        }
        sidecar::delete_intent(self.lake, &id).await
    }
    async fn quarantine(&self, bad: &BadInput) -> Result<()> {
        let source = self.sources.iter().find(|s| s.uri == bad.source_uri).expect("bad input names one of our sources");
        let dir = format!("_quarantine/{}", source.id);
        source.copy_into(self.lake, &format!("{dir}/{}", source.file_name())).await?;
        #[derive(Serialize)]
        struct Reason<'a> {
            op: &'a str,
            at: chrono::DateTime<Utc>,
            identity: &'a str,
            error: &'a BadInput,
            message: String,
        }
        let reason = Reason { op: &self.op, at: Utc::now(), identity: &source.identity, error: bad, message: bad.to_string() };
        self.lake.put_json(&format!("{dir}/reason.json"), &reason).await
    }

    fn properties(&self) -> HashMap<String, String> {
        sidecar::commit_properties(&self.op, &self.attempt, &self.intent, if self.multi { SCOPE_MULTI } else { SCOPE_SINGLE })
    }

    /// The table at its pin (or at Lance's latest), or `None` if it does not exist yet.
    async fn open(&self, t: &mut TableWork, latest: bool) -> Result<Option<Arc<Dataset>>> {
        let version = if latest { None } else { t.start_pin };
        match self.lake.open_table(&t.request.table, version).await {
            Ok(ds) => {
                self.adopt_table_mode(t, &ds)?;
                Ok(Some(Arc::new(ds)))
            }
            Err(Error::Lance { source: lance::Error::DatasetNotFound { .. } | lance::Error::NotFound { .. }, .. })
                if t.start_pin.is_none() =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// A table created but not yet published carries its mode in its schema.
    /// A declared schema must match the table's columns.
    fn adopt_table_mode(&self, t: &mut TableWork, ds: &Dataset) -> Result<()> {
        if let Some(declared) = &t.request.schema {
            let table = arrow::datatypes::Schema::from(ds.schema());
            let columns = |s: &arrow::datatypes::Schema| s.fields().iter().map(|f| (f.name().clone(), f.data_type().clone())).collect::<Vec<_>>();
            if columns(declared) != columns(&table) {
                return Err(Error::Usage(format!(
                    "table '{}' exists with columns {:?}; the declared schema differs",
                    t.request.table,
                    columns(&table)
                )));
            }
        }
        let meta = &ds.schema().metadata;
        let mode = match meta.get(META_MODE).map(String::as_str) {
            Some("upsert") => Mode::Upsert,
            _ => Mode::Append,
        };
        let key = meta.get(META_KEY).cloned();
        check_mode(&t.request, mode, key.as_deref())?;
        t.mode = mode;
        t.key = key;
        Ok(())
    }

    fn reader(&self, t: &TableWork, target: SchemaRef) -> (Box<dyn RecordBatchReader + Send>, decode::ErrorSlot) {
        let (reader, slot) = SourcesReader::new(t.sources.clone(), target, Arc::clone(&self.progress));
        (Box::new(reader), slot)
    }

    /// Write the table's rows as an uncommitted Lance transaction: an append
    /// or merge-insert on the existing table, or the table's creation.
    async fn stage(&self, t: &mut TableWork, latest: bool) -> Result<Staged> {
        match self.stage_once(t, latest).await {
            // Created by another writer since we looked: write onto theirs.
            Err(Error::Lance { source: lance::Error::DatasetAlreadyExists { .. }, .. }) => self.stage_once(t, true).await,
            staged => staged,
        }
    }

    async fn stage_once(&self, t: &mut TableWork, latest: bool) -> Result<Staged> {
        let name = t.request.table.clone();
        let ds = self.open(t, latest || t.mode == Mode::Upsert).await?;
        let target: SchemaRef = match &ds {
            Some(ds) => Arc::new(arrow::datatypes::Schema::from(ds.schema())),
            None => self.new_table_schema(t).await?,
        };
        let (reader, slot) = self.reader(t, target);
        let properties = Some(Arc::new(self.properties()));
        let staged = match (ds, t.mode) {
            (Some(ds), Mode::Append) => {
                let params = WriteParams { mode: WriteMode::Append, transaction_properties: properties, ..Default::default() };
                let txn = InsertBuilder::new(Arc::clone(&ds)).with_params(&params).execute_uncommitted_stream(reader).await;
                txn.map(|txn| Staged { ds: Some(ds), txn, affected: None, updated: 0 })
            }
            (Some(ds), Mode::Upsert) => match self.stage_upsert(&ds, t, reader).await {
                Ok(Err(refused)) => return Err(refused),
                Ok(Ok(staged)) => Ok(staged),
                Err(e) => Err(e),
            },
            (None, mode) => {
                // A new upsert table is created from its rows as they are: refuse a repeated key there.
                let reader: Box<dyn RecordBatchReader + Send> = match (mode, &t.key) {
                    (Mode::Upsert, Some(key)) => Box::new(UniqueKeys::new(reader, key, Arc::clone(&slot), self.repeated_keys_error(t))),
                    _ => reader,
                };
                let params = WriteParams {
                    mode: WriteMode::Create,
                    transaction_properties: properties,
                    store_params: Some(self.lake.store_params()),
                    session: Some(self.lake.session()),
                    ..Default::default()
                };
                let uri = self.lake.table_uri(&name);
                let txn = InsertBuilder::new(uri.as_str()).with_params(&params).execute_uncommitted_stream(reader).await;
                txn.map(|txn| Staged { ds: None, txn, affected: None, updated: 0 })
            }
        };
        staged.map_err(|e| slot.lock().expect("error slot poisoned").take().unwrap_or_else(|| Error::lance(&name, e)))
    }

    /// The schema a new table gets: inferred from its first source, with the
    /// table's mode kept in the schema metadata.
    async fn new_table_schema(&self, t: &TableWork) -> Result<SchemaRef> {
        let schema = match &t.request.schema {
            Some(declared) => decode::with_key(declared, t.key.as_deref())?,
            None => {
                let (first, detected, key) = (t.sources[0].0.clone(), t.sources[0].1, t.key.clone());
                let handle = tokio::runtime::Handle::current();
                tokio::task::spawn_blocking(move || decode::infer_schema(&first, detected, key.as_deref(), &handle))
                    .await
                    .expect("schema inference panicked")?
            }
        };
        let mut metadata = HashMap::from([(META_MODE.to_string(), t.mode.to_string())]);
        if let Some(key) = &t.key {
            metadata.insert(META_KEY.to_string(), key.clone());
        }
        Ok(Arc::new(schema.as_ref().clone().with_metadata(metadata)))
    }

    fn repeated_keys_error(&self, t: &TableWork) -> impl Fn(u64) -> Error + Send + 'static {
        let (table, key, sources) = (t.request.table.clone(), t.key.clone(), t.sources.iter().map(|(s, _)| s.uri.clone()).collect::<Vec<_>>());
        move |n| repeated_keys(&table, key.as_deref(), &sources, n)
    }

    fn repeated_keys(&self, t: &TableWork, repeated: u64) -> Error {
        let sources: Vec<String> = t.sources.iter().map(|(s, _)| s.uri.clone()).collect();
        repeated_keys(&t.request.table, t.key.as_deref(), &sources, repeated)
    }

    async fn stage_upsert(&self, ds: &Arc<Dataset>, t: &TableWork, reader: Box<dyn RecordBatchReader + Send>) -> lance::Result<Result<Staged>> {
        let key = t.key.clone().expect("upsert tables have a key");
        let mut builder = MergeInsertBuilder::try_new(Arc::clone(ds), vec![key])?;
        // Never two rows for one key: a repeated key is found here and refused below.
        builder
            .when_matched(WhenMatched::UpdateAll)
            .when_not_matched(WhenNotMatched::InsertAll)
            .source_dedupe_behavior(SourceDedupeBehavior::FirstSeen);
        let mut uncommitted = builder.try_build()?.execute_uncommitted(reader).await?;
        let repeated = uncommitted.stats.num_skipped_duplicates;
        if repeated > 0 {
            return Ok(Err(self.repeated_keys(t, repeated)));
        }
        uncommitted.transaction.transaction_properties = Some(Arc::new(self.properties()));
        Ok(Ok(Staged {
            ds: Some(Arc::clone(ds)),
            txn: uncommitted.transaction,
            affected: uncommitted.affected_rows,
            updated: uncommitted.stats.num_updated_rows,
        }))
    }

    /// Commit the staged transaction. Whether a commit that answered with an
    /// error landed is read from the table's history (our attempt's tag), never
    /// guessed from the error. Redone from Lance's latest version (bounded) when
    /// the commit cannot stand as it is: an upsert that conflicts with a
    /// concurrent update of the same rows, or a table creation that lost the
    /// race to another creator.
    async fn commit(&self, t: &mut TableWork, mut stage: Staged) -> Result<()> {
        let name = t.request.table.clone();
        let uri = self.lake.table_uri(&name);
        for attempt in 1..=MAX_REDO_ATTEMPTS {
            self.deadline.check("a Lance commit")?;
            let rows_inserted = inserted_rows(&stage.txn);
            let rows_updated = stage.updated;
            let left = self.deadline.remaining();
            let creating = stage.ds.is_none();
            let mut builder = match &stage.ds {
                Some(ds) => CommitBuilder::new(Arc::clone(ds)),
                // A strict overwrite (no retries) at read version 0: if the table
                // appeared meanwhile, Lance fails to check out version 0 instead of
                // rebasing onto that table and replacing its rows.
                None => CommitBuilder::new(uri.as_str())
                    .with_store_params(self.lake.store_params())
                    .with_session(self.lake.session())
                    .with_max_retries(0),
            };
            builder = builder.with_timeout(Some(left)).with_retry_timeout(left.min(Duration::from_secs(30)));
            if let Some(rows) = stage.affected.take() {
                builder = builder.with_affected_rows(rows);
            }
            failpoints::hit(failpoints::COMMIT_CHECKED)?;
            let failure = match builder.execute(stage.txn).await {
                Ok(ds) => Ok(ds.version().version),
                Err(e) => match fence::committed_by(self.lake, &name, t.start_pin.unwrap_or(0), &self.attempt).await? {
                    Some(version) => {
                        tracing::warn!(table = %name, version, error = %e, "the commit answered with an error but landed");
                        Ok(version)
                    }
                    None => Err(e),
                },
            };
            let redo = match failure {
                Ok(version) => {
                    t.committed = Some(version);
                    t.report = Some(TableReport { lance_version: version, rows_inserted, rows_updated });
                    return Ok(());
                }
                Err(lance::Error::RetryableCommitConflict { .. }) if t.mode == Mode::Upsert => "a concurrent update",
                Err(_) if creating && self.open(t, true).await?.is_some() => "the table's creation by another writer",
                Err(e) => return Err(Error::lance(&name, e)),
            };
            if attempt == MAX_REDO_ATTEMPTS {
                break;
            }
            tracing::info!(table = %name, attempt, "commit conflicted with {redo}; redoing it on the latest version");
            stage = self.stage(t, true).await?;
        }
        Err(Error::Contention { what: "committing to Lance", attempts: MAX_REDO_ATTEMPTS, last: format!("table '{name}' kept conflicting") })
    }

    /// Decide this attempt forward, naming its commits: create-only, so if
    /// recovery decided first (our owner was presumed dead) we follow it.
    async fn decide_forward(&self, tables: &mut [TableWork]) -> Result<()> {
        let decision = Decision {
            op: self.op.clone(),
            intent: self.intent.clone(),
            attempt: self.attempt.clone(),
            outcome: Outcome::Forward,
            by: "writer".into(),
            at: Utc::now(),
            versions: tables.iter().map(|t| (t.request.table.clone(), t.committed.expect("committed before deciding"))).collect(),
        };
        failpoints::hit(failpoints::BEFORE_DECISION)?;
        match sidecar::decide(self.lake, &decision).await? {
            Created::Mine => Ok(()),
            // Recovery or a vetter decided us forward first: publish what that decision names.
            Created::Theirs(theirs) if theirs.outcome == Outcome::Forward => {
                for t in tables.iter_mut() {
                    if let Some(v) = theirs.versions.get(&t.request.table) {
                        t.committed = Some(*v);
                    }
                }
                Ok(())
            }
            other => Err(Error::Blocked(format!(
                "operation {} was rolled back by recovery while this worker was stalled ({other:?}); nothing of it is \
                 published and its commits are removed. Deliver its sources again",
                self.id()
            ))),
        }
    }

    /// Publish every table at its commit, after checking that every other
    /// commit between the pin and ours is decided forward (`fence.rs`).
    async fn publish(&self, tables: &[TableWork], base: Manifest) -> Result<u64> {
        let wanted = tables
            .iter()
            .map(|t| (t.request.table.clone(), TablePin { version: t.committed.expect("committed before publishing"), mode: t.mode, key: t.key.clone() }))
            .collect();
        let pins = recover::publishable_pins(self.lake, &base, wanted, &self.attempt, recover::Expired::Resolve, self.skew, &self.deadline)
            .await?
            .map_err(recover::Stop::into_error)?;
        let goal = Goal {
            published: Published {
                op: self.op.clone(),
                attempt: self.attempt.clone(),
                kind: if self.multi { "load" } else { "ingest" }.into(),
                tables: pins.iter().map(|(t, p)| (t.clone(), p.version)).collect(),
                sources: tables.iter().map(|t| t.sources.len()).sum(),
            },
            pins,
        };
        Ok(manifest::publish(self.lake, base, &goal, &self.deadline).await?.version())
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
                    op: self.op.clone(),
                    bytes: s.size,
                })
            })
            .collect();
        let mut waited = false;
        for e in elsewhere {
            loop {
                match sidecar::holder(self.lake, &sidecar::source_key(&e.source.id), &e.holder).await? {
                    Holder::Published => break,
                    Holder::InFlight(intent) => {
                        let id = AttemptId::new(&e.holder.op, &e.holder.attempt);
                        recover::await_gone(self.lake, &id, intent.deadline, self.skew, &self.deadline).await?;
                        waited = true;
                    }
                    Holder::Released => {
                        return Err(Error::Blocked(format!(
                            "{} was in flight in operation {}, which gave it back without ingesting it; deliver it again",
                            e.source.uri, e.holder.op
                        )));
                    }
                }
            }
            let table = if e.holder.table.is_empty() { e.table } else { e.holder.table.clone() };
            sources.push(SourceReport { table, uri: e.source.uri.clone(), status: SourceStatus::AlreadyIngested, op: e.holder.op.clone(), bytes: e.source.size });
        }
        // Ours shows our sources; others' are shown by the latest version.
        let manifest_version = match version {
            Some(v) if !waited && sources.iter().all(|s| s.status == SourceStatus::Ingested) => Some(v),
            _ => manifest::read_latest(self.lake).await?.map(|m| m.version),
        };
        Ok(Report {
            op: self.op.clone(),
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
}

struct Staged {
    /// `None` for a table's creation.
    ds: Option<Arc<Dataset>>,
    txn: Transaction,
    affected: Option<lance::dataset::scanner::RowAddrTreeMap>,
    updated: u64,
}

fn check_mode(request: &TableRequest, mode: Mode, key: Option<&str>) -> Result<()> {
    if let Some(asked) = request.mode
        && asked != mode
    {
        return Err(Error::Usage(format!("table '{}' is a {mode} table; it cannot take --mode {asked}", request.table)));
    }
    if let (Some(asked), Some(key)) = (request.key.as_deref(), key)
        && asked != key
    {
        return Err(Error::Usage(format!("table '{}' upserts on key '{key}', not '{asked}'", request.table)));
    }
    Ok(())
}

/// The error for `repeated` rows that repeat an upsert key: one source doing
/// so is bad input; keys repeated across the sources of one call have no order
/// to apply them in, so the call must be split.
fn repeated_keys(table: &str, key: Option<&str>, sources: &[String], repeated: u64) -> Error {
    let key = key.unwrap_or("?");
    match sources {
        [one] => Error::BadInput(BadInput {
            source_uri: one.clone(),
            location: crate::error::Location { line: None, column: Some(key.to_string()) },
            reason: format!("{repeated} row(s) repeat a '{key}' value of an earlier row; an upsert source must hold one row per key"),
        }),
        many => Error::Usage(format!(
            "table '{table}': {repeated} row(s) repeat a '{key}' value across the {} sources of this call (or within one); \
             ingest them in separate calls, in the order they should apply",
            many.len()
        )),
    }
}

/// Streams a new upsert table's rows through, refusing the first row whose
/// key an earlier row had (a 128-bit hash of the key's row encoding per key seen).
struct UniqueKeys {
    inner: Box<dyn RecordBatchReader + Send>,
    column: String,
    seen: std::collections::HashSet<u128>,
    hashers: (std::hash::RandomState, std::hash::RandomState),
    slot: decode::ErrorSlot,
    refuse: Box<dyn Fn(u64) -> Error + Send>,
}

impl UniqueKeys {
    fn new(inner: Box<dyn RecordBatchReader + Send>, column: &str, slot: decode::ErrorSlot, refuse: impl Fn(u64) -> Error + Send + 'static) -> UniqueKeys {
        let hashers = (std::hash::RandomState::new(), std::hash::RandomState::new());
        UniqueKeys { inner, column: column.to_string(), seen: Default::default(), hashers, slot, refuse: Box::new(refuse) }
    }

    fn check(&mut self, batch: &arrow::array::RecordBatch) -> std::result::Result<(), arrow::error::ArrowError> {
        use std::hash::{BuildHasher, Hash, Hasher};
        let Some(col) = batch.column_by_name(&self.column) else { return Ok(()) };
        let converter = arrow::row::RowConverter::new(vec![arrow::row::SortField::new(col.data_type().clone())])?;
        let rows = converter.convert_columns(&[Arc::clone(col)])?;
        let (a, b) = &self.hashers;
        for (i, row) in rows.iter().enumerate() {
            // SQL equality: a null key matches nothing, so nulls never repeat.
            if col.is_null(i) {
                continue;
            }
            let half = |s: &std::hash::RandomState| {
                let mut h = s.build_hasher();
                row.as_ref().hash(&mut h);
                h.finish()
            };
            if !self.seen.insert(((half(a) as u128) << 64) | half(b) as u128) {
                *self.slot.lock().expect("error slot poisoned") = Some((self.refuse)(1));
                return Err(arrow::error::ArrowError::InvalidArgumentError(format!("repeated key in column '{}'", self.column)));
            }
        }
        Ok(())
    }
}

impl Iterator for UniqueKeys {
    type Item = std::result::Result<arrow::array::RecordBatch, arrow::error::ArrowError>;

    fn next(&mut self) -> Option<Self::Item> {
        let batch = self.inner.next()?;
        Some(batch.and_then(|b| self.check(&b).map(|()| b)))
    }
}

impl RecordBatchReader for UniqueKeys {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }
}

fn inserted_rows(txn: &Transaction) -> u64 {
    let fragments = match &txn.operation {
        Operation::Append { fragments } | Operation::Overwrite { fragments, .. } => fragments,
        Operation::Update { new_fragments, .. } => new_fragments,
        _ => return 0,
    };
    fragments.iter().filter_map(|f| f.num_rows()).map(|n| n as u64).sum()
}

fn chain(first: Error, then: Error) -> Error {
    tracing::error!(error = %then, "cleanup after a failed operation also failed");
    first
}
