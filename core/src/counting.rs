//! A request-counting `ObjectStore` wrapper, in the style of object_store's own
//! `limit.rs`: it changes nothing, it only counts what passes through it.
//!
//! The lake wraps both its own store and Lance's stores in one shared
//! [`RequestCounts`], so a test or the benchmark can measure what one operation
//! costs in requests, whoever sent them.
//!
//! It also measures the critical path in round trips: a request that starts
//! after requests of depth `d` finished has depth `d + 1`; requests in flight
//! together share a depth. The deepest finished request is how many round trips
//! one operation waited for, in sequence (meaningful for one operation at a time).

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result, UploadPart,
};
use serde::Serialize;

/// Every request, at trace level (`SLUICE_LOG=sluice::requests=trace`).
fn note(kind: &str, path: &Path) {
    tracing::trace!(target: "sluice::requests", "{kind} {path}");
}

/// Requests seen, by kind. A LIST counts once per call (our listings are single-page).
#[derive(Debug, Default)]
pub struct RequestCounts {
    get: AtomicU64,
    head: AtomicU64,
    put: AtomicU64,
    list: AtomicU64,
    delete: AtomicU64,
    copy: AtomicU64,
    /// The depth of the deepest finished request.
    frontier: AtomicU64,
}

/// One request in flight: finishes (at its depth) when dropped.
struct Trip {
    counts: Arc<RequestCounts>,
    depth: u64,
}

impl Drop for Trip {
    fn drop(&mut self) {
        self.counts.frontier.fetch_max(self.depth, Ordering::Relaxed);
    }
}

/// A point-in-time copy of [`RequestCounts`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RequestSnapshot {
    pub get: u64,
    pub head: u64,
    pub put: u64,
    pub list: u64,
    pub delete: u64,
    pub copy: u64,
    /// Round trips in sequence so far (see the module doc).
    pub round_trips: u64,
}

impl RequestSnapshot {
    pub fn total(&self) -> u64 {
        self.get + self.head + self.put + self.list + self.delete + self.copy
    }

    /// Requests made between `earlier` and `self`.
    pub fn since(&self, earlier: &RequestSnapshot) -> RequestSnapshot {
        RequestSnapshot {
            get: self.get - earlier.get,
            head: self.head - earlier.head,
            put: self.put - earlier.put,
            list: self.list - earlier.list,
            delete: self.delete - earlier.delete,
            copy: self.copy - earlier.copy,
            round_trips: self.round_trips - earlier.round_trips,
        }
    }
}

impl RequestCounts {
    pub fn snapshot(&self) -> RequestSnapshot {
        RequestSnapshot {
            get: self.get.load(Ordering::Relaxed),
            head: self.head.load(Ordering::Relaxed),
            put: self.put.load(Ordering::Relaxed),
            list: self.list.load(Ordering::Relaxed),
            delete: self.delete.load(Ordering::Relaxed),
            copy: self.copy.load(Ordering::Relaxed),
            round_trips: self.frontier.load(Ordering::Relaxed),
        }
    }

    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A request starts now: one deeper than everything finished so far.
    fn trip(self: &Arc<Self>) -> Trip {
        let depth = self.frontier.load(Ordering::Relaxed) + 1;
        tracing::trace!(target: "sluice::requests", depth, "round trip");
        Trip { counts: Arc::clone(self), depth }
    }
}

/// Counts every request to `inner` into a shared [`RequestCounts`].
#[derive(Debug)]
pub struct CountingStore {
    inner: Arc<dyn ObjectStore>,
    counts: Arc<RequestCounts>,
}

impl CountingStore {
    pub fn new(inner: Arc<dyn ObjectStore>, counts: Arc<RequestCounts>) -> Self {
        Self { inner, counts }
    }
}

impl fmt::Display for CountingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CountingStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for CountingStore {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        note("PUT", location);
        RequestCounts::bump(&self.counts.put);
        let _trip = self.counts.trip();
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        note("PUT (multipart)", location);
        RequestCounts::bump(&self.counts.put);
        let _trip = self.counts.trip();
        let upload = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(CountingUpload { upload, counts: Arc::clone(&self.counts) }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let counter = if options.head { &self.counts.head } else { &self.counts.get };
        note(if options.head { "HEAD" } else { "GET" }, location);
        RequestCounts::bump(counter);
        let _trip = self.counts.trip();
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        // Stores coalesce ranges into GETs; one call is at least one request.
        note("GET (ranges)", location);
        RequestCounts::bump(&self.counts.get);
        let _trip = self.counts.trip();
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        let counts = Arc::clone(&self.counts);
        let locations = locations
            .inspect(move |p| {
                if let Ok(p) = p {
                    note("DELETE", p);
                }
                RequestCounts::bump(&counts.delete)
            })
            .boxed();
        until_done(self.inner.delete_stream(locations), self.counts.trip())
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        note("LIST", &prefix.cloned().unwrap_or_default());
        RequestCounts::bump(&self.counts.list);
        until_done(self.inner.list(prefix), self.counts.trip())
    }

    fn list_with_offset(&self, prefix: Option<&Path>, offset: &Path) -> BoxStream<'static, Result<ObjectMeta>> {
        note("LIST (offset)", &prefix.cloned().unwrap_or_default());
        RequestCounts::bump(&self.counts.list);
        until_done(self.inner.list_with_offset(prefix, offset), self.counts.trip())
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        note("LIST (delimiter)", &prefix.cloned().unwrap_or_default());
        RequestCounts::bump(&self.counts.list);
        let _trip = self.counts.trip();
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        RequestCounts::bump(&self.counts.copy);
        let _trip = self.counts.trip();
        self.inner.copy_opts(from, to, options).await
    }
}

/// `stream`, its request finishing when the stream is done (or dropped).
fn until_done<T: Send + 'static>(stream: BoxStream<'static, T>, trip: Trip) -> BoxStream<'static, T> {
    stream
        .map(move |item| {
            let _ = &trip;
            item
        })
        .boxed()
}

#[derive(Debug)]
struct CountingUpload {
    upload: Box<dyn MultipartUpload>,
    counts: Arc<RequestCounts>,
}

#[async_trait]
impl MultipartUpload for CountingUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        RequestCounts::bump(&self.counts.put);
        let trip = self.counts.trip();
        let part = self.upload.put_part(data);
        Box::pin(async move {
            let done = part.await;
            drop(trip);
            done
        })
    }

    async fn complete(&mut self) -> Result<PutResult> {
        RequestCounts::bump(&self.counts.put);
        let _trip = self.counts.trip();
        self.upload.complete().await
    }

    async fn abort(&mut self) -> Result<()> {
        RequestCounts::bump(&self.counts.delete);
        self.upload.abort().await
    }
}

/// Counts paged listings that Lance pushes down past the wrapped store.
pub struct CountingLister {
    inner: Arc<dyn object_store::list::PaginatedListStore>,
    counts: Arc<RequestCounts>,
}

impl CountingLister {
    pub fn new(inner: Arc<dyn object_store::list::PaginatedListStore>, counts: Arc<RequestCounts>) -> Self {
        Self { inner, counts }
    }
}

#[async_trait]
impl object_store::list::PaginatedListStore for CountingLister {
    async fn list_paginated(
        &self,
        prefix: Option<&str>,
        opts: object_store::list::PaginatedListOptions,
    ) -> Result<object_store::list::PaginatedListResult> {
        note("LIST (paged)", &Path::from(prefix.unwrap_or_default()));
        RequestCounts::bump(&self.counts.list);
        let _trip = self.counts.trip();
        self.inner.list_paginated(prefix, opts).await
    }
}
