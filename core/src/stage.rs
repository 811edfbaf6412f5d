//! Staging and committing one table's rows: the Lance half of the door,
//! shared by the writer (`ingest.rs`) and recovery's redo of a dead load
//! (`recover.rs`). Rows are written as an *uncommitted* Lance transaction
//! (an append, a merge-insert for upsert tables, or the table's creation),
//! then committed tagged with the operation, its attempt and its scope;
//! whether a commit that answered with an error landed is read from the
//! table's history.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::RecordBatchReader;
use arrow::datatypes::SchemaRef;
use lance::Dataset;
use lance::dataset::transaction::{Operation, Transaction};
use lance::dataset::write::merge_insert::{MergeInsertWriteMode, SourceDedupeBehavior};
use lance::dataset::{CommitBuilder, InsertBuilder, MergeInsertBuilder, WhenMatched, WhenNotMatched, WriteMode, WriteParams};
use serde::Serialize;

use crate::deadline::Deadline;
use crate::decode::{self, Detected, Format, Progress, SourcesReader};
use crate::dialect::CsvOptions;
use crate::partitions::{self, Partitions};
use crate::parts;
use crate::error::{BadInput, Error, Result};
use crate::failpoints;
use crate::fence;
use crate::known_manifest::{LanceManifest, ListAhead};
use crate::lake::Lake;
use crate::manifest::Mode;
use crate::read_ahead::{self, ReadAhead};
use crate::rescue;
use crate::settings::{Change, Evolution, IndexSpec, RESCUE_COLUMN};
use crate::sidecar::{self, Intent, SCOPE_MULTI, SCOPE_SINGLE, SourceRef};
use crate::source::{Source, SourceSpec};

/// Who stages and commits: the attempt, and the attempt whose intent the
/// work belongs to (the writer's own, or a dead writer's in a redo).
pub(crate) struct Stager<'a> {
    pub lake: &'a Lake,
    pub op: String,
    /// The committer's attempt.
    pub attempt: String,
    /// The attempt whose intent this work belongs to.
    pub intent: String,
    pub deadline: Deadline,
    pub progress: Arc<Progress>,
    pub multi: bool,
    /// What the door read ahead of its sources' identities, if anything.
    pub read_ahead: Option<&'a read_ahead::Slot>,
}

/// What staging a table reads first ([`Stager::opening`]).
pub(crate) struct Opening {
    pub table: String,
    pub pin: Option<u64>,
    pub known: Option<LanceManifest>,
    /// Lance's latest version instead of the pin.
    pub latest: bool,
    pub ahead: ListAhead,
}

/// Schema metadata keys that keep a table's mode inside the Lance table itself.
const META_MODE: &str = "sluice.mode";
const META_KEY: &str = "sluice.key";

/// Redos of a commit that cannot stand (upsert conflict, lost table creation).
const MAX_REDO_ATTEMPTS: u32 = 5;

/// Rows for one table, as the caller asks for them.
#[derive(Debug, Clone, Default)]
pub struct TableRequest {
    pub table: String,
    pub sources: Vec<SourceSpec>,
    pub format: Option<Format>,
    /// How CSV sources are written (default: detected delimiter, a header row).
    pub csv: Option<CsvOptions>,
    /// What a new table does with `key=value` path segments (`partitions.rs`).
    pub partitions: Option<Partitions>,
    pub mode: Option<Mode>,
    pub key: Option<String>,
    /// The schema a new table gets instead of an inferred one.
    pub schema: Option<SchemaRef>,
    /// Indices the table must declare: those it does not yet are declared by
    /// this operation's publish (built by the next `optimize`).
    pub indices: Vec<IndexSpec>,
    /// What the table does with a source column it lacks, from this
    /// operation's publish on (`None`: as it does now; strict for a new table).
    pub evolution: Option<Evolution>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    pub lance_version: u64,
    pub rows_inserted: u64,
    pub rows_updated: u64,
}

/// One table's part of an operation, as it moves through the door.
#[derive(Clone)]
pub(crate) struct TableWork {
    pub request: TableRequest,
    pub sources: Vec<(Source, Detected)>,
    pub mode: Mode,
    pub key: Option<String>,
    /// The pin in the manifest the operation started from.
    pub start_pin: Option<u64>,
    /// Where Lance keeps the start pin's manifest, if the pin knows.
    pub start_manifest: Option<LanceManifest>,
    pub committed: Option<u64>,
    /// Where Lance keeps our commit's manifest, if Lance said.
    pub committed_manifest: Option<LanceManifest>,
    pub report: Option<TableReport>,
    /// Settings changes this operation's publish carries (indices it declares).
    pub changes: Vec<Change>,
    /// What the table does with a source column it lacks.
    pub evolution: Evolution,
    /// Lance's latest version, asked ahead of the commit (`known_manifest.rs`).
    pub ahead: ListAhead,
    /// Lance's commit attempts, when a commit it proves lost has somewhere
    /// better to go than Lance's own retries (a group: `group.rs`).
    pub lone_attempts: Option<u32>,
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
    for (name, refs) in tables {
        let it = &intent.tables[name];
        let format = it.format.as_deref().map(str::parse::<Format>).transpose()?;
        let schema = it.schema.as_ref().map(|v| decode::parse_declared_schema(&v.to_string())).transpose()?;
        let mut sources = Vec::new();
        for r in refs {
            let source = match Source::resolve_pinned(&r.uri, r.pin.as_ref()).await {
                Err(Error::Changed { .. }) => return Ok(None),
                resolved => resolved?,
            };
            if source.identity != r.identity {
                return Ok(None);
            }
            let detected = decode::detect(&source, format, it.csv.as_ref())?;
            sources.push((source, detected));
        }
        let request = TableRequest {
            table: name.clone(),
            sources: sources.iter().map(|(s, _)| SourceSpec { uri: s.uri.clone(), pin: s.pin.clone() }).collect(),
            format,
            csv: it.csv.clone(),
            partitions: it.partitions.clone(),
            mode: Some(it.mode),
            key: it.key.clone(),
            schema,
            indices: Vec::new(),
            evolution: None,
        };
        work.push(TableWork {
            request,
            sources,
            mode: it.mode,
            key: it.key.clone(),
            start_pin: it.start_pin,
            start_manifest: None,
            committed: None,
            committed_manifest: None,
            report: None,
            changes: it.changes.clone(),
            evolution: it.evolution,
            ahead: ListAhead::default(),
            lone_attempts: None,
        });
    }
    let stager = Stager { lake, op: intent.op.clone(), attempt: attempt.to_string(), intent: intent.attempt.clone(), deadline, progress: Arc::default(), multi: true, read_ahead: None };
    let mut done = BTreeMap::new();
    for t in &mut work {
        // A table that evolves gained its columns (new ones, or the rescue
        // column) after the load's start pin: its rows go onto it as it is now.
        let stage = match stager.stage(t, t.evolution != Evolution::Strict).await {
            // Changed while it was read again: the next pass rolls the load back.
            Err(Error::Changed { .. }) => return Ok(None),
            staged => staged?,
        };
        stager.commit(t, stage).await?;
        done.insert(t.request.table.clone(), t.committed.expect("a commit that returned Ok recorded its version"));
    }
    Ok(Some(done))
}

#[derive(Clone)]
pub(crate) struct Staged {
    /// `None` for a table's creation.
    ds: Option<Arc<Dataset>>,
    txn: Transaction,
    affected: Option<lance::dataset::scanner::RowAddrTreeMap>,
    updated: u64,
}

/// An append staged onto an existing table, taken apart for a group commit.
pub(crate) struct Appended {
    pub ds: Arc<Dataset>,
    pub read_version: u64,
    pub fragments: Vec<lance::table::format::Fragment>,
    pub rows: u64,
}

impl Staged {
    /// Its parts, if it is an append onto an existing table (else itself).
    pub(crate) fn into_append(self) -> std::result::Result<Appended, Staged> {
        let rows = inserted_rows(&self.txn);
        match (self.ds, self.txn.operation) {
            (Some(ds), Operation::Append { fragments }) => Ok(Appended { ds, read_version: self.txn.read_version, fragments, rows }),
            (ds, operation) => Err(Staged { ds, txn: Transaction { operation, ..self.txn }, affected: self.affected, updated: self.updated }),
        }
    }

    /// The table's schema as this commit leaves it.
    pub(crate) fn schema(&self) -> arrow::datatypes::Schema {
        match (&self.ds, &self.txn.operation) {
            (_, Operation::Overwrite { schema, .. }) => arrow::datatypes::Schema::from(schema),
            (Some(ds), _) => arrow::datatypes::Schema::from(ds.schema()),
            (None, other) => unreachable!("a table's creation is an overwrite, not {other}"),
        }
    }
}

pub(crate) fn check_mode(request: &TableRequest, mode: Mode, key: Option<&str>) -> Result<()> {
    if let Some(asked) = request.mode
        && asked != mode
    {
        return Err(Error::Usage(format!("table '{}' takes rows by {mode}; it cannot take --mode {asked}", request.table)));
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
            new_column: false,
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

/// A table that has not gained its rescue column yet (the door adds it
/// first; a redo meets it on the table as it is) takes rows strictly.
pub(crate) fn rescues(evolution: Evolution, target: &SchemaRef) -> bool {
    evolution == Evolution::Rescue && target.field_with_name(RESCUE_COLUMN).is_ok()
}

/// Readers as the writers take them.
fn boxed<R: RecordBatchReader + Send + 'static>(readers: Vec<(R, decode::ErrorSlot)>) -> Vec<(Box<dyn RecordBatchReader + Send>, decode::ErrorSlot)> {
    readers.into_iter().map(|(reader, slot)| (Box::new(reader) as Box<dyn RecordBatchReader + Send>, slot)).collect()
}

/// One append of the fragments `txns` (appends written side by side) add, in order.
fn one_append(mut txns: Vec<Transaction>) -> Transaction {
    assert!(!txns.is_empty(), "at least one writer");
    let mut txn = txns.remove(0);
    let Operation::Append { fragments } = &mut txn.operation else { unreachable!("an append stages an append, not {}", txn.operation) };
    for other in txns {
        let Operation::Append { fragments: more } = other.operation else { unreachable!("an append stages an append, not {}", other.operation) };
        fragments.extend(more);
    }
    txn
}

/// `reader`, which asks `ahead` for `ds`'s latest version once its rows run
/// out: when Lance starts writing its last data file, the commit's next step.
fn list_ahead_at_end(reader: Box<dyn RecordBatchReader + Send>, ahead: &ListAhead, ds: &Arc<Dataset>) -> Box<dyn RecordBatchReader + Send> {
    let (ahead, ds, rt) = (ahead.clone(), Arc::clone(ds), tokio::runtime::Handle::current());
    Box::new(AtEnd { inner: reader, at_end: Some(Box::new(move || ahead.start(ds, &rt))) })
}

/// A reader that calls `at_end` once, when its input is exhausted.
struct AtEnd {
    inner: Box<dyn RecordBatchReader + Send>,
    at_end: Option<Box<dyn FnOnce() + Send>>,
}

impl Iterator for AtEnd {
    type Item = std::result::Result<arrow::array::RecordBatch, arrow::error::ArrowError>;

    fn next(&mut self) -> Option<Self::Item> {
        let next = self.inner.next();
        if next.is_none()
            && let Some(at_end) = self.at_end.take()
        {
            at_end();
        }
        next
    }
}

impl RecordBatchReader for AtEnd {
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

impl Stager<'_> {
    pub(crate) fn properties(&self) -> HashMap<String, String> {
        sidecar::commit_properties(&self.op, &self.attempt, &self.intent, if self.multi { SCOPE_MULTI } else { SCOPE_SINGLE })
    }

    /// The table at its pin (or at Lance's latest), or `None` if it does not exist yet.
    pub(crate) async fn open(&self, t: &mut TableWork, latest: bool) -> Result<Option<Arc<Dataset>>> {
        let ds = self.fetch(&t.request.table, t.start_pin, t.start_manifest.as_ref(), latest, Some(&t.ahead)).await?;
        if let Some(ds) = &ds {
            self.adopt_table_mode(t, ds)?;
        }
        Ok(ds)
    }

    /// What staging `t` reads: the table at its pin, or at Lance's latest
    /// (always for an upsert, which must see every row it may update).
    pub(crate) fn opening(t: &TableWork) -> Opening {
        Opening { table: t.request.table.clone(), pin: t.start_pin, known: t.start_manifest.clone(), latest: t.mode == Mode::Upsert, ahead: t.ahead.clone() }
    }

    /// [`Stager::fetch`] what [`Stager::opening`] says.
    pub(crate) async fn fetch_opening(&self, o: &Opening) -> Result<Option<Arc<Dataset>>> {
        self.fetch(&o.table, o.pin, o.known.as_ref(), o.latest, Some(&o.ahead)).await
    }

    /// [`Stager::open`] without adopting the table's mode: reads only, so it
    /// may run before (alongside) the intent's PUT. A commit on the handle
    /// answers its listing from `ahead`.
    pub(crate) async fn fetch(&self, table: &str, start_pin: Option<u64>, known: Option<&LanceManifest>, latest: bool, ahead: Option<&ListAhead>) -> Result<Option<Arc<Dataset>>> {
        if latest
            && let Some(pin) = start_pin
            && let Some(known) = known.filter(|k| k.version == pin)
        {
            // Lance's latest is usually the pin, which knows where its
            // manifest is: read it while asking Lance for its latest version
            // (one round trip, not a LIST and then a GET).
            let (at_pin, newest) = futures::join!(self.lake.open_to_commit(table, Some(pin), Some(known), ahead), self.lake.latest_lance_manifest(table));
            match newest {
                Ok((newest, _)) if newest == pin => return at_pin.map(|ds| Some(Arc::new(ds))),
                Ok((newest, at)) => return self.lake.open_to_commit(table, Some(newest), at.as_ref(), ahead).await.map(|ds| Some(Arc::new(ds))),
                Err(e) => tracing::debug!(table, error = %e, "Lance's latest version, asked beside reading the pin, is unknown; reading the latest"),
            }
        }
        let version = if latest { None } else { start_pin };
        match self.lake.open_to_commit(table, version, known, ahead).await {
            Ok(ds) => Ok(Some(Arc::new(ds))),
            Err(Error::Lance { source: lance::Error::DatasetNotFound { .. } | lance::Error::NotFound { .. }, .. })
                if start_pin.is_none() =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// A table created but not yet published carries its mode in its schema.
    /// A declared schema must match the table's columns.
    pub(crate) fn adopt_table_mode(&self, t: &mut TableWork, ds: &Dataset) -> Result<()> {
        if let Some(declared) = &t.request.schema {
            let table = arrow::datatypes::Schema::from(ds.schema());
            // A declaration names the files' columns; the table also holds its partition columns.
            let partition = partitions::of_table(&table).unwrap_or_default();
            let columns = |s: &arrow::datatypes::Schema| {
                s.fields().iter().filter(|f| !partition.contains(f.name())).map(|f| (f.name().clone(), f.data_type().clone())).collect::<Vec<_>>()
            };
            // A table that adds columns may have grown past its declaration.
            let matches = match t.evolution {
                Evolution::Strict => columns(declared) == columns(&table),
                Evolution::AddColumns | Evolution::Rescue => columns(declared).iter().all(|c| columns(&table).contains(c)),
            };
            if !matches {
                return Err(Error::Usage(format!(
                    "table '{}' exists with columns ({}); the declared schema ({}) differs",
                    t.request.table,
                    crate::types::describe(&table),
                    crate::types::describe(declared)
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

    pub(crate) fn reader(&self, t: &TableWork, target: SchemaRef) -> (Box<dyn RecordBatchReader + Send>, decode::ErrorSlot) {
        let rescue = rescues(t.evolution, &target);
        let (reader, slot) = SourcesReader::new(t.sources.clone(), target, rescue, Arc::clone(&self.progress));
        (Box::new(reader), slot)
    }

    /// The parts `t`'s one source is appended in (see `parts.rs`), if it is
    /// a large enough uncompressed JSON Lines or CSV file.
    async fn plan_parts(&self, t: &TableWork, target: &SchemaRef) -> Result<Option<Vec<std::ops::Range<u64>>>> {
        let [(source, detected)] = &t.sources[..] else { return Ok(None) };
        if !detected.in_parts(source.size) {
            return Ok(None);
        }
        let (source, target, handle) = (source.clone(), Arc::clone(target), tokio::runtime::Handle::current());
        tokio::task::spawn_blocking(move || parts::plan(&source, &target, &handle)).await.expect("planning parts panicked")
    }

    /// An append of `t`'s one source in `ranges`, each part by a Lance writer
    /// of its own, side by side, as one transaction whose fragments keep the
    /// file's order.
    async fn append_in_parts(&self, ds: &Arc<Dataset>, t: &TableWork, target: SchemaRef, ranges: Vec<std::ops::Range<u64>>, params: WriteParams) -> Result<Transaction> {
        let rescue = rescues(t.evolution, &target);
        let starts: Vec<u64> = ranges.iter().map(|r| r.start).collect();
        let columns = target.fields().len();
        let (readers, ahead) = match ReadAhead::take(self.read_ahead, &t.sources[0], &target, rescue, &ranges, &self.progress) {
            Some(kept) => (boxed(kept.readers), Some(kept.progress)),
            None => (boxed(SourcesReader::for_parts(t.sources[0].clone(), ranges, target, rescue, Arc::clone(&self.progress))), None),
        };
        let done = self.write_side_by_side(ds, t, readers, params, columns).await;
        if let Some(ahead) = ahead {
            self.progress.absorb_read_ahead(&ahead, &t.sources[0].0);
        }
        // The first failed part, in file order, names the error: the first
        // bad line, numbered in the part until then.
        let mut txns = Vec::with_capacity(done.len());
        for (written, start) in done.into_iter().zip(starts) {
            match written {
                Ok(txn) => txns.push(txn),
                Err(e @ Error::MisCut { .. }) => return Err(e),
                Err(e) => {
                    let (source, handle) = (t.sources[0].clone(), tokio::runtime::Handle::current());
                    return Err(tokio::task::spawn_blocking(move || decode::in_file(e, &source, start, &handle)).await.expect("locating an error panicked"));
                }
            }
        }
        Ok(one_append(txns))
    }

    /// An append of `t`'s sources in `groups` (contiguous, in order), each
    /// group by a Lance writer of its own, side by side, as one transaction
    /// whose fragments keep the sources' order. The first failed group, in
    /// order, names the error: its first bad source, as reading them one
    /// after another would.
    async fn append_in_groups(&self, ds: &Arc<Dataset>, t: &TableWork, target: SchemaRef, groups: Vec<std::ops::Range<usize>>, params: WriteParams) -> Result<Transaction> {
        let rescue = rescues(t.evolution, &target);
        let columns = target.fields().len();
        let n = groups.len();
        tracing::debug!(table = %t.request.table, sources = t.sources.len(), groups = n, "appending the sources in groups side by side");
        let whole = Arc::new(parts::Whole::new(n));
        let readers = groups.into_iter().enumerate().map(|(index, g)| {
            let (reader, slot) = SourcesReader::new(t.sources[g].to_vec(), Arc::clone(&target), rescue, Arc::clone(&self.progress));
            (reader.side_by_side(index, &whole), slot)
        });
        let readers = readers.collect();
        let done = self.write_side_by_side(ds, t, boxed(readers), params, columns).await;
        Ok(one_append(done.into_iter().collect::<Result<Vec<_>>>()?))
    }

    /// Each of `readers` appended by a Lance writer of its own, side by side
    /// (together buffering what one writer would); the last to run out of
    /// rows asks ahead, once. Every writer's outcome, in order: all have
    /// ended before any is read (those after a failed one stop early).
    async fn write_side_by_side(&self, ds: &Arc<Dataset>, t: &TableWork, readers: Vec<(Box<dyn RecordBatchReader + Send>, decode::ErrorSlot)>, params: WriteParams, columns: usize) -> Vec<Result<Transaction>> {
        let params = WriteParams { file_writer_options: Some(parts::writer_options(readers.len(), columns)), ..params };
        let running = Arc::new(std::sync::atomic::AtomicUsize::new(readers.len()));
        let writers = readers.into_iter().map(|(reader, slot)| {
            let (running, ahead, ds_at_end, rt) = (Arc::clone(&running), t.ahead.clone(), Arc::clone(ds), tokio::runtime::Handle::current());
            let at_end = move || {
                if running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
                    ahead.start(ds_at_end, &rt);
                }
            };
            let reader: Box<dyn RecordBatchReader + Send> = Box::new(AtEnd { inner: reader, at_end: Some(Box::new(at_end)) });
            let (ds, params, name) = (Arc::clone(ds), &params, &t.request.table);
            async move {
                let txn = InsertBuilder::new(ds).with_params(params).execute_uncommitted_stream(reader).await;
                txn.map_err(|e| slot.lock().expect("error slot poisoned").take().unwrap_or_else(|| Error::lance(name, e)))
            }
        });
        futures::future::join_all(writers).await
    }

    /// Write the table's rows as an uncommitted Lance transaction: an append
    /// or merge-insert on the existing table, or the table's creation.
    pub(crate) async fn stage(&self, t: &mut TableWork, latest: bool) -> Result<Staged> {
        match self.stage_once(t, latest).await {
            // Created by another writer since we looked: write onto theirs.
            Err(Error::Lance { source: lance::Error::DatasetAlreadyExists { .. }, .. }) => self.stage_once(t, true).await,
            staged => staged,
        }
    }

    pub(crate) async fn stage_once(&self, t: &mut TableWork, latest: bool) -> Result<Staged> {
        let ds = self.open(t, latest || t.mode == Mode::Upsert).await?;
        self.stage_on(t, ds).await
    }

    /// [`Stager::stage`] on `ds`, the table as [`Stager::fetch`] read it
    /// from [`Stager::opening`] (`None`: the table did not exist).
    pub(crate) async fn stage_fetched(&self, t: &mut TableWork, ds: Option<Arc<Dataset>>) -> Result<Staged> {
        if let Some(ds) = &ds {
            self.adopt_table_mode(t, ds)?;
        }
        let creating = ds.is_none();
        match self.stage_on(t, ds).await {
            Err(Error::Lance { source: lance::Error::DatasetAlreadyExists { .. }, .. }) => self.stage_once(t, true).await,
            // The table was read a while ago (alongside the intent and claims):
            // created by another writer since, our rows go onto theirs, judged
            // by its schema, not by what a new table would have been.
            Err(e) if creating => match self.fetch(&t.request.table, None, None, true, None).await {
                Ok(Some(_)) => self.stage_once(t, true).await,
                _ => Err(e),
            },
            staged => staged,
        }
    }

    /// Write `t`'s rows onto `ds` (opened, its mode adopted), or create the
    /// table; then check that every source read is still the version its
    /// identity names.
    async fn stage_on(&self, t: &mut TableWork, ds: Option<Arc<Dataset>>) -> Result<Staged> {
        // Boxed: nested in the door's futures, its type was past the compiler's depth limit.
        let staged = Box::pin(self.write_rows(t, ds)).await;
        // Checked even when staging failed: a file cut short as it was
        // written (half a line at the end) is not bad input, it is unfinished.
        for (source, _) in &t.sources {
            source.unchanged().await?;
        }
        staged
    }

    async fn write_rows(&self, t: &mut TableWork, ds: Option<Arc<Dataset>>) -> Result<Staged> {
        let name = t.request.table.clone();
        let target: SchemaRef = match &ds {
            Some(ds) => {
                let schema = arrow::datatypes::Schema::from(ds.schema());
                for (s, _) in &t.sources {
                    partitions::check(&schema, t.request.partitions.as_ref(), &s.uri, &name)?;
                }
                Arc::new(schema)
            }
            None => self.new_table_schema(t).await?,
        };
        let properties = Some(Arc::new(self.properties()));
        let append = WriteParams { mode: WriteMode::Append, transaction_properties: properties.clone(), ..Default::default() };
        let appended = |ds: &Arc<Dataset>, txn| Staged { ds: Some(Arc::clone(ds)), txn, affected: None, updated: 0 };
        if let (Some(ds), Mode::Append) = (&ds, t.mode)
            && let Some(ranges) = self.plan_parts(t, &target).await?
        {
            match self.append_in_parts(ds, t, Arc::clone(&target), ranges, append.clone()).await {
                // What the parts wrote is referenced by nothing: cleanup's, like a dropped staging's.
                Err(e @ Error::MisCut { .. }) => tracing::info!("{e}"),
                txn => return Ok(appended(ds, txn?)),
            }
        }
        let sizes: Vec<u64> = t.sources.iter().map(|(s, _)| s.size).collect();
        if let (Some(ds), Mode::Append, Some(groups)) = (&ds, t.mode, parts::groups(&sizes)) {
            return Ok(appended(ds, self.append_in_groups(ds, t, target, groups, append).await?));
        }
        let (reader, slot) = self.reader(t, target);
        let reader = match &ds {
            // The last data file's PUT runs alongside the commit's listing.
            Some(ds) => list_ahead_at_end(reader, &t.ahead, ds),
            None => reader,
        };
        let staged = match (ds, t.mode) {
            (Some(ds), Mode::Append) => {
                let txn = InsertBuilder::new(Arc::clone(&ds)).with_params(&append).execute_uncommitted_stream(reader).await;
                txn.map(|txn| appended(&ds, txn))
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

    /// The schema a new table gets: declared, or inferred from its first
    /// source (and, for a table that adds columns, every column of the
    /// others), with the table's mode kept in the schema metadata.
    pub(crate) async fn new_table_schema(&self, t: &TableWork) -> Result<SchemaRef> {
        let (declared, sources, key, evolution) = (t.request.schema.clone(), t.sources.clone(), t.key.clone(), t.evolution);
        let handle = tokio::runtime::Handle::current();
        let schema = tokio::task::spawn_blocking(move || {
            let inferred_from = usize::from(declared.is_none());
            let schema = match declared {
                Some(declared) => decode::with_key(&declared, key.as_deref())?,
                None => decode::infer_schema(&sources[0].0, sources[0].1.clone(), key.as_deref(), &handle)?,
            };
            let mut fields: Vec<arrow::datatypes::Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
            match evolution {
                Evolution::Strict => return Ok(schema),
                // A table that adds columns starts with every column of this call's sources.
                Evolution::AddColumns => fields.extend(decode::new_columns(&sources[inferred_from..], &schema, &handle)?),
                Evolution::Rescue if schema.field_with_name(RESCUE_COLUMN).is_err() => fields.push(rescue::field()),
                Evolution::Rescue => {}
            }
            Ok::<_, Error>(Arc::new(arrow::datatypes::Schema::new_with_metadata(fields, schema.metadata().clone())))
        })
        .await
        .expect("schema inference panicked")?;
        let mut metadata = HashMap::from([(META_MODE.to_string(), t.mode.to_string())]);
        if let Some(key) = &t.key {
            metadata.insert(META_KEY.to_string(), key.clone());
        }
        let schema = schema.as_ref().clone().with_metadata(metadata);
        Ok(Arc::new(partitions::new_table(&schema, t.request.partitions.as_ref(), &t.sources[0].0.uri, &t.request.table)?))
    }

    pub(crate) fn repeated_keys_error(&self, t: &TableWork) -> impl Fn(u64) -> Error + Send + 'static {
        let (table, key, sources) = (t.request.table.clone(), t.key.clone(), t.sources.iter().map(|(s, _)| s.uri.clone()).collect::<Vec<_>>());
        move |n| repeated_keys(&table, key.as_deref(), &sources, n)
    }

    pub(crate) fn repeated_keys(&self, t: &TableWork, repeated: u64) -> Error {
        let sources: Vec<String> = t.sources.iter().map(|(s, _)| s.uri.clone()).collect();
        repeated_keys(&t.request.table, t.key.as_deref(), &sources, repeated)
    }

    pub(crate) async fn stage_upsert(&self, ds: &Arc<Dataset>, t: &TableWork, reader: Box<dyn RecordBatchReader + Send>) -> lance::Result<Result<Staged>> {
        let key = t.key.clone().expect("upsert tables have a key");
        let mut builder = MergeInsertBuilder::try_new(Arc::clone(ds), vec![key])?;
        // Never two rows for one key: a repeated key is found here and refused below.
        // Whole rows rewritten (never columns in place), so a roll-back can undo it (`upsert_undo.rs`).
        builder
            .write_mode(MergeInsertWriteMode::RewriteRows)
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
    /// error landed is read from the table's history (our attempt's tag),
    /// unless Lance proved it lost ([`lost`]). Redone from Lance's latest version (bounded) when
    /// the commit cannot stand as it is: an upsert that conflicts with a
    /// concurrent update of the same rows, or a table creation that lost the
    /// race to another creator.
    pub(crate) async fn commit(&self, t: &mut TableWork, mut stage: Staged) -> Result<()> {
        let name = t.request.table.clone();
        let uri = self.lake.table_uri(&name);
        for attempt in 1..=MAX_REDO_ATTEMPTS {
            self.deadline.check("a Lance commit")?;
            // An upsert writes its updated rows anew too: they are not inserted.
            let rows_updated = stage.updated;
            let rows_inserted = inserted_rows(&stage.txn).saturating_sub(rows_updated);
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
            builder = self.deadline.bound(builder);
            if let Some(n) = t.lone_attempts {
                builder = builder.with_max_retries(n);
            }
            if let Some(rows) = stage.affected.take() {
                builder = builder.with_affected_rows(rows);
            }
            failpoints::hit(failpoints::COMMIT_CHECKED)?;
            let failure = match builder.execute(stage.txn).await {
                Ok(ds) => Ok((ds.version().version, LanceManifest::of(&ds))),
                Err(e) if lost(&e) => Err(e),
                Err(e) => {
                    tracing::info!(table = %name, error = %e, "the commit answered with an error; reading the table's history for it");
                    match fence::committed_by(self.lake, &name, t.start_pin.unwrap_or(0), &self.attempt).await? {
                        Some(version) => {
                            tracing::warn!(table = %name, version, error = %e, "the commit answered with an error but landed");
                            Ok((version, None))
                        }
                        None => Err(e),
                    }
                }
            };
            let redo = match failure {
                Ok((version, at)) => {
                    t.committed = Some(version);
                    t.committed_manifest = at;
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
}

/// Did Lance find its commit lost to other writers' compatible commits (so
/// that a group, committing from the same versions, lands where it did
/// not)? An incompatible commit would stop the group the same way.
pub(crate) fn beaten(e: &lance::Error) -> bool {
    matches!(e, lance::Error::CommitConflict { .. } | lance::Error::TooMuchWriteContention { .. })
}

/// Did Lance find its commit lost? It reads back the version of every
/// attempt that met a conflict (success if that version is its own) and
/// fails with these only after that, or before a next attempt's write: so
/// no read of the table's history would find the commit. (A manifest PUT
/// still in flight on S3 when Lance read its version back could land later;
/// every caller then either decides its attempt rolled back and looks for
/// its commits, or redoes it, and a late duplicate is never named forward.)
/// Any other error (a timeout, an unknown status, a transport error) may
/// hide a landed commit: the history is read for it.
pub(crate) fn lost(e: &lance::Error) -> bool {
    matches!(
        e,
        lance::Error::CommitConflict { .. }
            | lance::Error::TooMuchWriteContention { .. }
            | lance::Error::RetryableCommitConflict { .. }
            | lance::Error::IncompatibleTransaction { .. }
    )
}
