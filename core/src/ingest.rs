//! Ingest and multi-table load: DESIGN.md's door for operations that add rows.
//!
//! 1. resolve sources (identity) — read only;
//! 2. intent sidecar, create-only, keyed by the source identities, so duplicate
//!    deliveries collide here and wait for the winner;
//! 3. claims in the exactly-once ledger;
//! 4. every table's data written *uncommitted* (bad input stops here, with
//!    nothing committed);
//! 5. Lance commits, tagged with the operation and attempt;
//! 6. for a multi-table load, the forward decision (create-only, so recovery
//!    and the writer cannot both decide);
//! 7. one manifest publish covering every table;
//! 8. the intent is removed; the claims stay as the ledger.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatchReader;
use arrow::datatypes::SchemaRef;
use chrono::Utc;
use lance::Dataset;
use lance::dataset::transaction::{Operation, Transaction};
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
use crate::sidecar::{self, Claim, Decision, Intent, IntentTable, Outcome, SCOPE_MULTI, SCOPE_SINGLE, SourceRef};
use crate::source::Source;

/// Schema metadata keys that keep a table's mode inside the Lance table itself.
const META_MODE: &str = "sluice.mode";
const META_KEY: &str = "sluice.key";
/// Redos of a commit that cannot stand (upsert conflict, lost table creation).
const MAX_REDO_ATTEMPTS: u32 = 5;

/// Rows for one table, as the caller asks for them.
#[derive(Debug, Clone)]
pub struct TableRequest {
    pub table: String,
    pub sources: Vec<String>,
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

/// Rounds of "another delivery of these sources is in flight": wait for it,
/// or take it over once it expired, then try again.
const MAX_TAKEOVER_ROUNDS: u32 = 3;

/// Ingest the tables' sources as one operation: all of it visible in one
/// manifest version, or none of it. A single table is an `ingest`; several a `load`.
pub async fn run(lake: &Lake, requests: Vec<TableRequest>, budget: Budget, progress: Arc<Progress>) -> Result<Report> {
    let before = lake.requests();
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
        let mut sources = Vec::with_capacity(request.sources.len());
        for uri in &request.sources {
            let source = Source::resolve(uri).await?;
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
            let source = Source::resolve(&r.uri).await?;
            if source.identity != r.identity {
                return Ok(None);
            }
            let detected = decode::detect(&source, format)?;
            all.push(source.clone());
            sources.push((source, detected));
        }
        let request = TableRequest {
            table: name.clone(),
            sources: sources.iter().map(|(s, _)| s.uri.clone()).collect(),
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
        let intent = self.intent(&tables);
        let mut round = 0;
        loop {
            round += 1;
            match sidecar::create_intent(self.lake, &intent).await? {
                Created::Mine => break,
                // The same sources, delivered again: wait for that delivery's outcome.
                Created::Theirs(other) => recover::await_gone(self.lake, &other.op, other.deadline, self.skew, &self.deadline).await?,
                // It finished between our PUT and our GET.
                Created::Gone => {}
            }
            if let Some(report) = self.report_done(&tables).await? {
                return Ok(report);
            }
            // It gave its sources back (rolled back, or gave up): ours to ingest.
            if round == MAX_TAKEOVER_ROUNDS {
                return Err(Error::Contention {
                    what: "taking over these sources",
                    attempts: MAX_TAKEOVER_ROUNDS,
                    last: "other deliveries kept starting and giving up".into(),
                });
            }
        }
        if let Err(e) = failpoints::hit(failpoints::AFTER_INTENT) {
            return Err(self.abandon(&[], e).await);
        }

        let mut claimed = Vec::new();
        let others = match self.claim(&mut tables, &mut claimed).await {
            Ok(others) => others,
            Err(e) => return Err(self.abandon(&claimed, e).await),
        };
        tables.retain(|t| !t.sources.is_empty());
        if tables.is_empty() {
            sidecar::finish(self.lake, &self.op, &self.intent, self.multi).await?;
            return self.report(None, &tables, others).await;
        }
        if let Err(e) = failpoints::hit(failpoints::AFTER_CLAIMS) {
            return Err(self.abandon(&claimed, e).await);
        }

        // Write everything uncommitted first: bad input stops before any commit.
        let mut staged = Vec::with_capacity(tables.len());
        for t in &mut tables {
            match self.stage(t, false).await {
                Ok(s) => staged.push(s),
                Err(e) => return Err(self.abandon(&claimed, e).await),
            }
        }
        if let Err(e) = failpoints::hit(failpoints::BEFORE_COMMIT) {
            return Err(self.abandon(&claimed, e).await);
        }
        let mut any_committed = false;
        for (t, stage) in tables.iter_mut().zip(staged) {
            match self.commit(t, stage).await {
                Ok(()) => {
                    any_committed = true;
                    failpoints::hit(failpoints::AFTER_COMMIT)?;
                }
                // Provably nothing of this operation is in Lance: give the sources back.
                Err(e) if !any_committed && e.surely_uncommitted() => return Err(self.abandon(&claimed, e).await),
                // A commit may have landed: the intent stays for recovery to decide.
                Err(e) => return Err(e),
            }
        }
        if self.multi {
            self.decide_forward(&tables).await?;
            failpoints::hit(failpoints::AFTER_DECISION)?;
        }
        let version = self.publish(&tables, base).await?;
        failpoints::hit(failpoints::BEFORE_FINISH)?;
        sidecar::finish(self.lake, &self.op, &self.intent, self.multi).await?;
        self.report(Some(version), &tables, others).await
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

    /// Claim every source, recording each claim made in `claimed` (so a failure
    /// midway can release them all). Sources done or in flight elsewhere leave
    /// the plan; returns their reports, with whether they are still in flight.
    async fn claim(&self, tables: &mut [TableWork], claimed: &mut Vec<String>) -> Result<Vec<(SourceReport, bool)>> {
        let mut others = Vec::new();
        for t in tables.iter_mut() {
            let mut keep = Vec::with_capacity(t.sources.len());
            for (source, detected) in std::mem::take(&mut t.sources) {
                let claim = Claim { op: self.op.clone(), attempt: self.attempt.clone(), source: source.uri.clone(), claimed_at: Utc::now() };
                match sidecar::claim(self.lake, &source.id, &claim).await? {
                    Created::Mine => {
                        claimed.push(source.id.clone());
                        keep.push((source, detected));
                    }
                    // Released between our PUT and GET: an aborted attempt; claim again next run.
                    Created::Gone => {
                        return Err(Error::Blocked(format!("source {} was released while being claimed; retry", source.uri)));
                    }
                    Created::Theirs(existing) => {
                        let in_flight = existing.op != self.op && sidecar::intent_exists(self.lake, &existing.op).await?;
                        let report = SourceReport { table: t.request.table.clone(), uri: source.uri.clone(), status: SourceStatus::AlreadyIngested, op: existing.op, bytes: source.size };
                        others.push((report, in_flight));
                    }
                }
            }
            t.sources = keep;
        }
        Ok(others)
    }

    /// Give up before any commit: quarantine bad input, release claims, remove the intent.
    async fn abandon(&self, claimed: &[String], error: Error) -> Error {
        if let Error::BadInput(bad) = &error
            && let Err(e) = self.quarantine(bad).await
        {
            tracing::error!(error = %e, source = %bad.source_uri, "could not quarantine the bad source");
        }
        for id in claimed {
            if let Err(e) = sidecar::release_claim(self.lake, id).await {
                return chain(error, e);
            }
        }
        if let Err(e) = sidecar::finish(self.lake, &self.op, &self.intent, self.multi).await {
            return chain(error, e);
        }
        error
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
            (Some(ds), Mode::Upsert) => self.stage_upsert(&ds, t, reader).await,
            (None, _) => {
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

    async fn stage_upsert(&self, ds: &Arc<Dataset>, t: &TableWork, reader: Box<dyn RecordBatchReader + Send>) -> lance::Result<Staged> {
        let key = t.key.clone().expect("upsert tables have a key");
        let mut builder = MergeInsertBuilder::try_new(Arc::clone(ds), vec![key])?;
        builder.when_matched(WhenMatched::UpdateAll).when_not_matched(WhenNotMatched::InsertAll);
        let mut uncommitted = builder.try_build()?.execute_uncommitted(reader).await?;
        uncommitted.transaction.transaction_properties = Some(Arc::new(self.properties()));
        Ok(Staged {
            ds: Some(Arc::clone(ds)),
            txn: uncommitted.transaction,
            affected: uncommitted.affected_rows,
            updated: uncommitted.stats.num_updated_rows,
        })
    }

    /// Commit the staged transaction. Redone from Lance's latest version
    /// (bounded) when the commit cannot stand as it is: an upsert that
    /// conflicts with a concurrent update of the same rows, or a table
    /// creation that lost the race to another creator.
    async fn commit(&self, t: &mut TableWork, mut stage: Staged) -> Result<()> {
        let name = t.request.table.clone();
        let uri = self.lake.table_uri(&name);
        for attempt in 1..=MAX_REDO_ATTEMPTS {
            self.deadline.check("a Lance commit")?;
            let rows_inserted = inserted_rows(&stage.txn);
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
            let redo = match builder.execute(stage.txn).await {
                Ok(ds) => {
                    let version = ds.version().version;
                    t.committed = Some(version);
                    t.report = Some(TableReport { lance_version: version, rows_inserted, rows_updated: stage.updated });
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

    async fn decide_forward(&self, tables: &[TableWork]) -> Result<()> {
        let decision = Decision {
            op: self.op.clone(),
            intent: self.intent.clone(),
            attempt: self.attempt.clone(),
            outcome: Outcome::Forward,
            by: "writer".into(),
            at: Utc::now(),
            versions: tables.iter().map(|t| (t.request.table.clone(), t.committed.expect("committed before deciding"))).collect(),
        };
        self.deadline.check("recording the decision")?;
        failpoints::hit(failpoints::BEFORE_DECISION)?;
        match sidecar::decide(self.lake, &decision).await? {
            Created::Mine => Ok(()),
            other => Err(Error::Blocked(format!(
                "operation {} was decided by someone else ({other:?}); this worker must not publish it",
                self.op
            ))),
        }
    }

    /// Publish every table at its commit, after checking that no undecided
    /// operation's commit lies between the pin and ours (invariant 3; see `recover::vet`).
    async fn publish(&self, tables: &[TableWork], base: Manifest) -> Result<u64> {
        let mut pins = BTreeMap::new();
        for t in tables {
            let committed = t.committed.expect("committed before publishing");
            let from = base.tables.get(&t.request.table).map_or(0, |p| p.version);
            let version = match from < committed {
                true => recover::publishable_pin(self.lake, &t.request.table, from, committed, &self.op, self.skew, &self.deadline).await?,
                false => committed,
            };
            pins.insert(t.request.table.clone(), TablePin { version, mode: t.mode, key: t.key.clone() });
        }
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

    /// Every source of ours was handled by another operation: check the ledger.
    /// `None` when a source has no claim (that operation gave it back).
    async fn report_done(&self, tables: &[TableWork]) -> Result<Option<Report>> {
        let mut others = Vec::new();
        for t in tables {
            for (source, _) in &t.sources {
                let Some(claim) = sidecar::read_claim(self.lake, &source.id).await? else { return Ok(None) };
                let report = SourceReport { table: t.request.table.clone(), uri: source.uri.clone(), status: SourceStatus::AlreadyIngested, op: claim.op, bytes: source.size };
                others.push((report, false));
            }
        }
        self.report(None, &[], others).await.map(Some)
    }

    async fn report(&self, version: Option<u64>, tables: &[TableWork], others: Vec<(SourceReport, bool)>) -> Result<Report> {
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
        for (report, in_flight) in others {
            if in_flight {
                let deadline = sidecar::read_intent(self.lake, &report.op).await?.map(|i| i.deadline).unwrap_or_else(Utc::now);
                recover::await_gone(self.lake, &report.op, deadline, self.skew, &self.deadline).await?;
                waited = true;
                let source = self.sources.iter().find(|s| s.uri == report.uri).expect("reports name our sources");
                if sidecar::read_claim(self.lake, &source.id).await?.is_none() {
                    return Err(Error::Blocked(format!(
                        "{} was in flight in operation {}, which gave it back without ingesting it; deliver it again",
                        report.uri, report.op
                    )));
                }
            }
            sources.push(report);
        }
        // Ours shows our sources; after waiting for others', only the latest shows theirs too.
        let manifest_version = match version {
            Some(v) if !waited => Some(v),
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
