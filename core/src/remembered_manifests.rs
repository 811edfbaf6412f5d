//! Lance's version manifests, read once.
//!
//! A version's manifest file is written once (create-only) and never
//! rewritten: sluice never removes a table and makes it again at the same
//! address (`known_manifest.rs`). Yet Lance reads one file twice in a row
//! on the contended path: a commit that lost its race reads the winner's
//! manifest (the whole file, when it is under Lance's 64 KiB prefetch),
//! then that manifest's inline transaction (a range of the bytes it just
//! had); a group's leader, which lost to the same winner, reads that
//! transaction again for its group commit's conflict check. On S3 each is
//! a round trip in sequence. This wrapper remembers the last ranges of
//! manifest files read through it and answers a plain read that falls
//! inside one; anything else passes through.
//!
//! A remembered range is dropped once [`REMEMBERED_FOR`] has passed, and
//! when the file is deleted or written through this wrapper (a read racing
//! that delete may remember it again, for as long). Lance's cleanup deletes
//! only versions older than the latest: one answered from memory after
//! another process deleted it is its true content (and its tail, read to
//! find it, says it exists: `known_manifest.rs`).

use std::collections::VecDeque;
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetRange, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

/// Lance's directory of version manifests, in a table.
const VERSIONS: &str = "_versions";
/// Longest range remembered (Lance prefetches a manifest's last 64 KiB).
const MAX_RANGE: u64 = 1 << 20;
/// Ranges remembered at once, across a lake's stores (the oldest are forgotten).
const MAX_REMEMBERED: usize = 32;
/// How long a range is remembered: a commit's reads of one manifest come
/// within its own latency, and a group's within its line's.
pub(crate) const REMEMBERED_FOR: Duration = Duration::from_secs(10);

/// Is `location` a Lance version manifest?
fn is_manifest(location: &Path) -> bool {
    let mut parts = location.parts().rev();
    let (name, dir) = (parts.next(), parts.next());
    name.is_some_and(|n| n.as_ref().ends_with(".manifest")) && dir.is_some_and(|d| d.as_ref() == VERSIONS)
}

/// A read with no condition, no version and a body: the only kind answered.
/// (Its `extensions` are not looked at: Lance passes none.)
fn plain(options: &GetOptions) -> bool {
    let GetOptions { if_match, if_none_match, if_modified_since, if_unmodified_since, version, head, .. } = options;
    if_match.is_none() && if_none_match.is_none() && if_modified_since.is_none() && if_unmodified_since.is_none() && version.is_none() && !head
}

/// One range read of a manifest file.
struct Read {
    /// The store (Lance's prefix for it) and the file.
    store: String,
    location: Path,
    meta: ObjectMeta,
    range: Range<u64>,
    bytes: Bytes,
    at: Instant,
}

/// The ranges a lake's stores remember, newest last: shared by every store
/// Lance opens on the lake (a loser's and its group's handles may differ).
#[derive(Default)]
pub(crate) struct Memory {
    reads: Mutex<VecDeque<Read>>,
}

impl fmt::Debug for Memory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Memory").field("ranges", &self.reads.lock().expect("remembered manifests poisoned").len()).finish()
    }
}

impl Memory {
    /// `wanted` of `location` (`None`: the whole file), if a fresh
    /// remembered range holds it: the file's meta, the range, its bytes.
    fn answer(&self, store: &str, location: &Path, wanted: Option<&GetRange>, kept_for: Duration) -> Option<(ObjectMeta, Range<u64>, Bytes)> {
        let mut reads = self.reads.lock().expect("remembered manifests poisoned");
        reads.retain(|r| r.at.elapsed() < kept_for);
        // As the store would resolve it against the file's size; an empty
        // or inverted range is the store's to refuse.
        let holds = |r: &Read| {
            let size = r.meta.size;
            let wanted = match wanted {
                None => 0..size,
                Some(GetRange::Bounded(b)) => b.clone(),
                Some(GetRange::Offset(o)) => *o..size,
                Some(GetRange::Suffix(n)) => size.saturating_sub(*n)..size,
            };
            (r.range.start <= wanted.start && wanted.start < wanted.end && wanted.end <= r.range.end).then_some(wanted)
        };
        let (r, wanted) = reads.iter().rev().filter(|r| r.store == store && &r.location == location).find_map(|r| holds(r).map(|w| (r, w)))?;
        let from = usize::try_from(wanted.start - r.range.start).expect("a remembered range fits in memory");
        let to = usize::try_from(wanted.end - r.range.start).expect("a remembered range fits in memory");
        Some((r.meta.clone(), wanted, r.bytes.slice(from..to)))
    }

    fn remember(&self, read: Read) {
        assert_eq!(read.bytes.len() as u64, read.range.end - read.range.start, "a remembered range holds its bytes");
        let mut reads = self.reads.lock().expect("remembered manifests poisoned");
        if reads.len() == MAX_REMEMBERED {
            reads.pop_front();
        }
        reads.push_back(read);
    }

    fn forget(&self, store: &str, location: &Path) {
        self.reads.lock().expect("remembered manifests poisoned").retain(|r| !(r.store == store && &r.location == location));
    }
}

#[derive(Debug)]
pub(crate) struct RememberedManifests {
    inner: Arc<dyn ObjectStore>,
    store: String,
    memory: Arc<Memory>,
    kept_for: Duration,
}

impl RememberedManifests {
    /// `inner`, Lance's store with prefix `store`, remembering into `memory`.
    pub(crate) fn new(inner: Arc<dyn ObjectStore>, store: &str, memory: Arc<Memory>) -> RememberedManifests {
        RememberedManifests { inner, store: store.to_string(), memory, kept_for: REMEMBERED_FOR }
    }
}

impl fmt::Display for RememberedManifests {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RememberedManifests({})", self.inner)
    }
}

/// A stream of one chunk, as a store answers.
fn answered(meta: ObjectMeta, range: Range<u64>, bytes: Bytes) -> GetResult {
    GetResult { payload: GetResultPayload::Stream(futures::stream::once(async move { Ok(bytes) }).boxed()), meta, range, attributes: Default::default(), extensions: Default::default() }
}

#[async_trait]
impl ObjectStore for RememberedManifests {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        if is_manifest(location) {
            self.memory.forget(&self.store, location);
        }
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        if !is_manifest(location) || !plain(&options) {
            return self.inner.get_opts(location, options).await;
        }
        // Any range (`None`: the whole file, as Lance's reader of a small file
        // reads it; a suffix: a manifest's tail, as `known_manifest.rs` reads it).
        if let Some((meta, range, bytes)) = self.memory.answer(&self.store, location, options.range.as_ref(), self.kept_for) {
            return Ok(answered(meta, range, bytes));
        }
        let got = self.inner.get_opts(location, options).await?;
        if got.range.end - got.range.start > MAX_RANGE {
            return Ok(got);
        }
        let (meta, range, attributes, extensions) = (got.meta.clone(), got.range.clone(), got.attributes.clone(), got.extensions.clone());
        let bytes = got.bytes().await?;
        self.memory.remember(Read { store: self.store.clone(), location: location.clone(), meta: meta.clone(), range: range.clone(), bytes: bytes.clone(), at: Instant::now() });
        Ok(GetResult { attributes, extensions, ..answered(meta, range, bytes) })
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        if is_manifest(location) {
            let known: Option<Vec<Bytes>> =
                ranges.iter().map(|r| self.memory.answer(&self.store, location, Some(&GetRange::Bounded(r.clone())), self.kept_for).map(|(.., b)| b)).collect();
            if let Some(known) = known {
                return Ok(known);
            }
        }
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        let (memory, store) = (Arc::clone(&self.memory), self.store.clone());
        let forgotten = locations.inspect(move |location| {
            if let Ok(location) = location
                && is_manifest(location)
            {
                memory.forget(&store, location);
            }
        });
        self.inner.delete_stream(forgotten.boxed())
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(&self, prefix: Option<&Path>, offset: &Path) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        if is_manifest(to) {
            self.memory.forget(&self.store, to);
        }
        self.inner.copy_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;

    fn counted(dir: &std::path::Path, kept_for: Duration) -> (RememberedManifests, Arc<crate::counting::RequestCounts>) {
        let counts = Arc::new(crate::counting::RequestCounts::default());
        let local = Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir).unwrap());
        let inner = Arc::new(crate::counting::CountingStore::new(local, counts.clone()));
        (RememberedManifests { kept_for, ..RememberedManifests::new(inner, "file$", Arc::default()) }, counts)
    }

    #[tokio::test]
    async fn a_manifest_range_read_once_is_answered_again_from_memory() {
        let dir = tempfile::tempdir().unwrap();
        let (store, counts) = counted(dir.path(), REMEMBERED_FOR);
        let manifest = Path::from("t.lance/_versions/18446744073709551613.manifest");
        let data = Path::from("t.lance/data/x.lance");
        let body: Vec<u8> = (0..200u8).collect();
        for p in [&manifest, &data] {
            store.put(p, PutPayload::from(body.clone())).await.unwrap();
        }
        let sent = || counts.snapshot().total();
        let before = sent();
        assert_eq!(store.get_range(&manifest, 0..200).await.unwrap(), body[..], "the whole file, as a prefetch reads it");
        assert_eq!(sent(), before + 1);
        assert_eq!(store.get_range(&manifest, 150..180).await.unwrap(), body[150..180], "its transaction, as Lance reads it next");
        assert_eq!(store.get_ranges(&manifest, &[10..20, 190..200]).await.unwrap(), vec![Bytes::from(body[10..20].to_vec()), Bytes::from(body[190..200].to_vec())]);
        assert_eq!(store.get(&manifest).await.unwrap().bytes().await.unwrap(), body[..], "the whole file, as Lance's reader of a small file reads it");
        let tail = GetOptions { range: Some(GetRange::Suffix(16)), ..Default::default() };
        assert_eq!(store.get_opts(&manifest, tail).await.unwrap().bytes().await.unwrap(), body[184..], "its tail");
        assert_eq!(sent(), before + 1, "all answered from memory");
        // An empty or inverted range is the store's to answer.
        for odd in [20..20, 50..40] {
            let _ = store.get_ranges(&manifest, &[odd]).await;
        }
        assert_eq!(sent(), before + 3);
        // Another file is never answered from memory.
        store.get_range(&data, 0..200).await.unwrap();
        store.get_range(&data, 0..10).await.unwrap();
        assert_eq!(sent(), before + 5);
        // A read with a condition passes.
        let conditional = GetOptions { range: Some(GetRange::Bounded(0..10)), if_match: Some("x".into()), ..Default::default() };
        assert!(store.get_opts(&manifest, conditional).await.is_err(), "a local disk refuses the ETag");
        assert_eq!(sent(), before + 6);
        // Deleted through the wrapper: forgotten, and read again (and missing).
        store.delete(&manifest).await.unwrap();
        assert!(store.get_range(&manifest, 150..180).await.is_err());
        assert_eq!(sent(), before + 8);
    }

    #[tokio::test]
    async fn a_manifest_s_tail_read_for_its_size_answers_lance_s_prefetch() {
        let dir = tempfile::tempdir().unwrap();
        let (store, counts) = counted(dir.path(), REMEMBERED_FOR);
        let manifest = Path::from("t.lance/_versions/18446744073709551613.manifest");
        let body: Vec<u8> = (0..200u8).collect();
        store.put(&manifest, PutPayload::from(body.clone())).await.unwrap();
        let before = counts.snapshot().total();
        let tail = GetOptions { range: Some(GetRange::Suffix(64)), ..Default::default() };
        let got = store.get_opts(&manifest, tail).await.unwrap();
        assert_eq!((got.meta.size, got.range.clone()), (200, 136..200), "its size, with its tail");
        assert_eq!(got.bytes().await.unwrap(), body[136..]);
        assert_eq!(store.get_range(&manifest, 136..200).await.unwrap(), body[136..], "the prefetch, from memory");
        assert_eq!(store.get_range(&manifest, 150..160).await.unwrap(), body[150..160], "a section of it, from memory");
        assert_eq!(counts.snapshot().total(), before + 1);
        assert_eq!(store.get_range(&manifest, 100..160).await.unwrap(), body[100..160], "outside it: read");
        assert_eq!(counts.snapshot().total(), before + 2);
    }

    #[tokio::test]
    async fn a_remembered_range_is_forgotten_after_its_time() {
        let dir = tempfile::tempdir().unwrap();
        let (store, counts) = counted(dir.path(), Duration::from_millis(50));
        let manifest = Path::from("t.lance/_versions/18446744073709551613.manifest");
        store.put(&manifest, PutPayload::from_static(b"0123456789")).await.unwrap();
        let before = counts.snapshot().total();
        store.get(&manifest).await.unwrap().bytes().await.unwrap();
        store.get_range(&manifest, 2..4).await.unwrap();
        assert_eq!(counts.snapshot().total(), before + 1);
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(store.get_range(&manifest, 2..4).await.unwrap(), Bytes::from_static(b"23"));
        assert_eq!(counts.snapshot().total(), before + 2, "read again once its time passed");
    }

    #[test]
    fn only_version_manifests_are_remembered() {
        assert!(is_manifest(&Path::from("lake/tables/t.lance/_versions/18446744073709551613.manifest")));
        for other in ["lake/tables/t.lance/_transactions/3-0b1c.txn", "lake/tables/t.lance/data/x.lance", "lake/_versions", "lake/_manifest/versions/00000000000000000001.json"] {
            assert!(!is_manifest(&Path::from(other)), "{other}");
        }
    }
}
