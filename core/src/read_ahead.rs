//! A large local JSON Lines or CSV file decoded while its identity is hashed.
//!
//! Why: the intent names a local file's SHA-256, and no data file may be
//! written before the intent (invariant 4), so the hash ran alone on one
//! core for about 1 ms per MiB while the others waited. Decoding writes
//! nothing: the door starts it beside the hash, on the table its base
//! manifest pins, and the parts' readers fill a bounded queue of batches
//! that the Lance writers take once the intent and the claims are done.
//!
//! It is only an aid. Staging takes what was read ahead only if it is
//! exactly what it would read itself: the same file at the same version
//! (size, modification time, inode) read as the same format (a CSV file
//! with the same delimiter, quote, header and nulls), the same table
//! schema, the same rescue column, the same parts. Anything else, and when
//! nothing is staged (the file was already ingested, another attempt holds
//! it), drops it: its threads stop at their next batch, and what they read
//! is not counted (bytes read ahead are counted on the progress of the
//! staging that keeps them, once it does).

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, sync_channel};
use std::sync::{Arc, Mutex};

use arrow::array::{RecordBatch, RecordBatchReader};
use arrow::datatypes::{Schema, SchemaRef};
use arrow::error::ArrowError;
use futures::channel::oneshot;

use crate::decode::{self, Detected, ErrorSlot, Progress, SourcesReader};
use crate::failpoints;
use crate::lake::Lake;
use crate::manifest::{Manifest, Mode};
use crate::parts;
use crate::source::Source;
use crate::stage::{self, TableRequest};

/// Batches decoded ahead of the writers, at most, shared among the parts
/// (each at most about 1 MiB of the file, up to `BATCH_ROWS` rows): about
/// what one core decodes while the hash of a 64 MiB file runs, and little
/// memory beside what the writers buffer.
const BATCHES_AHEAD: usize = 8;

/// What a door read ahead, until staging takes it (or nobody does).
pub(crate) type Slot = Mutex<Option<ReadAhead>>;

pub(crate) struct ReadAhead {
    /// The file as it was stat'ed, before any hash: no identity of its own.
    source: Source,
    /// Its format and how a CSV file is written, as the request says.
    detected: Detected,
    target: SchemaRef,
    rescue: bool,
    ranges: Vec<Range<u64>>,
    parts: Vec<(Ahead, ErrorSlot)>,
    /// What the parts read, apart from any staging's until one keeps it.
    progress: Arc<Progress>,
    shown: Arc<Shown>,
}

/// The parts' readers of what was read ahead, and what they count.
pub(crate) struct Kept {
    pub readers: Vec<(Ahead, ErrorSlot)>,
    pub progress: Arc<Progress>,
}

impl ReadAhead {
    /// Start decoding `request`'s one source if it is a local, uncompressed
    /// JSON Lines or CSV file that staging will append in parts onto the table
    /// `base` pins. `None` where it is not (or anything fails: staging reads
    /// the file itself, and meets the error there).
    pub async fn start(lake: &Lake, request: &TableRequest, base: &Manifest) -> Option<ReadAhead> {
        let [spec] = &request.sources[..] else { return None };
        let pin = base.tables.get(&request.table)?;
        let appends = pin.mode == Mode::Append && request.mode != Some(Mode::Upsert) && request.key.is_none();
        if spec.uri.starts_with("s3://") || !appends {
            return None;
        }
        let uri = spec.uri.clone();
        let source = tokio::task::spawn_blocking(move || Source::unhashed_local(&uri)).await.ok()?.ok()?;
        let detected = decode::detect(&source, request.format, request.csv.as_ref()).ok()?;
        if !detected.in_parts(source.size) {
            return None;
        }
        let ds = lake.open_known(&request.table, Some(pin.version), pin.known_manifest()).await.ok()?;
        let target = Arc::new(Schema::from(ds.schema()));
        let rescue = stage::rescues(request.evolution.unwrap_or(pin.evolution), &target);
        let ranges = {
            let (source, target, handle) = (source.clone(), Arc::clone(&target), tokio::runtime::Handle::current());
            tokio::task::spawn_blocking(move || parts::plan(&source, &target, &handle)).await.ok()?.ok()??
        };
        let progress = Arc::new(Progress::default());
        let shown = Arc::new(Shown { read: Arc::clone(&progress.bytes_read), kept: Mutex::new(None) });
        let each = (BATCHES_AHEAD / ranges.len()).max(1);
        let readers = SourcesReader::for_parts((source.clone(), detected.clone()), ranges.clone(), Arc::clone(&target), rescue, Arc::clone(&progress));
        let mut parts = Vec::with_capacity(readers.len());
        for (reader, slot) in readers {
            // A thread that cannot start leaves the reading to staging.
            parts.push((Ahead::spawn(reader, each, &shown).ok()?, slot));
        }
        Some(ReadAhead { source, detected, target, rescue, ranges, parts, progress, shown })
    }

    /// [`ReadAhead::start`], given up if `resolved` comes first: then the
    /// hash is done, and waiting for the read-ahead would only delay the door.
    pub async fn until_resolved(lake: &Lake, request: &TableRequest, base: &Manifest, resolved: oneshot::Receiver<()>) -> Option<ReadAhead> {
        let start = ReadAhead::start(lake, request, base);
        // Tests that cut small files in parts (whose hash is quick) always read ahead.
        if failpoints::part_bytes().is_some() {
            return start.await;
        }
        futures::pin_mut!(start);
        match futures::future::select(start, resolved).await {
            futures::future::Either::Left((ahead, _)) => ahead,
            futures::future::Either::Right(_) => None,
        }
    }

    /// Take what `slot` read ahead if it is what staging `source` (as
    /// `detected`) onto `target` in `ranges` reads, its bytes counted on
    /// `progress` from now on; either way, the slot is empty after.
    pub fn take(slot: Option<&Slot>, (source, detected): &(Source, Detected), target: &SchemaRef, rescue: bool, ranges: &[Range<u64>], progress: &Progress) -> Option<Kept> {
        let ahead = slot?.lock().expect("read-ahead slot poisoned").take()?;
        let same = ahead.source.same_version(source) && ahead.detected == *detected && ahead.target == *target && ahead.rescue == rescue && ahead.ranges == ranges;
        if !same {
            tracing::debug!(uri = %source.uri, "what was read ahead is not what staging reads: read again");
            return None;
        }
        assert_eq!(ahead.parts.len(), ranges.len(), "a reader per part");
        tracing::debug!(uri = %source.uri, parts = ranges.len(), "staging keeps what was read ahead of the hash");
        ahead.shown.keep(&progress.bytes_read);
        // A rendezvous for tests only: an injected error is not one of staging's.
        let _ = failpoints::hit(failpoints::READ_AHEAD_KEPT);
        Some(Kept { readers: ahead.parts, progress: ahead.progress })
    }
}

/// A reader whose batches another thread decodes, a bounded number of them
/// before they are asked for.
pub(crate) struct Ahead {
    batches: Receiver<Result<RecordBatch, ArrowError>>,
    thread: Option<std::thread::JoinHandle<()>>,
    schema: SchemaRef,
}

impl Ahead {
    fn spawn(reader: SourcesReader, ahead: usize, shown: &Arc<Shown>) -> std::io::Result<Ahead> {
        let (tx, rx) = sync_channel(ahead);
        let schema = reader.schema();
        let shown = Arc::clone(shown);
        let thread = std::thread::Builder::new().name("sluice-read-ahead".into()).spawn(move || {
            for (i, batch) in reader.enumerate() {
                shown.forward();
                if tx.send(batch).is_err() {
                    return;
                }
                if i == 0 {
                    // A rendezvous for tests only (nothing to fail here).
                    let _ = failpoints::hit(failpoints::READ_AHEAD_FIRST_ROWS);
                }
            }
            shown.forward();
        })?;
        Ok(Ahead { batches: rx, thread: Some(thread), schema })
    }
}

impl Iterator for Ahead {
    type Item = Result<RecordBatch, ArrowError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.batches.recv() {
            Ok(batch) => Some(batch),
            // Disconnected: the reader ended, or its thread panicked (a bug,
            // raised here as it would have been had this thread decoded).
            Err(_) => match self.thread.take().map(std::thread::JoinHandle::join) {
                Some(Err(panic)) => std::panic::resume_unwind(panic),
                _ => None,
            },
        }
    }
}

impl RecordBatchReader for Ahead {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }
}

/// The bytes the parts read, counted on the progress of the staging that
/// keeps them, from when it does (never before: nobody may keep them).
struct Shown {
    /// What the parts' readers count (the read-ahead's own progress).
    read: Arc<AtomicU64>,
    /// The keeper's count, and what was added to it.
    kept: Mutex<Option<(Arc<AtomicU64>, u64)>>,
}

impl Shown {
    fn keep(&self, by: &Arc<AtomicU64>) {
        self.kept.lock().expect("progress poisoned").get_or_insert((Arc::clone(by), 0));
        self.forward();
    }

    fn forward(&self) {
        if let Some((by, done)) = self.kept.lock().expect("progress poisoned").as_mut() {
            let now = self.read.load(Ordering::Relaxed);
            by.fetch_add(now - *done, Ordering::Relaxed);
            *done = now;
        }
    }
}
