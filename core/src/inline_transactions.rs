//! Lance commits that keep their transaction only inside their manifest.
//!
//! Lance 14 records each commit's transaction twice: inline in the manifest
//! (up to 20 MiB) and in a file under `_transactions/`, PUT before the
//! manifest. Lance 14 reads the inline copy whenever there is one
//! (`Dataset::read_transaction`, and a commit's check of who won a race it
//! lost); the file is the fallback for manifests written without one. On S3
//! that file is one more PUT in sequence on every commit, inside the window
//! in which concurrent commits collide. This wrapper answers it without
//! sending it, for a transaction far below Lance's inline bound, so always
//! one Lance inlines; anything else passes through. The manifest still
//! names the file: Lance's cleanup keeps what is named and deletes nothing
//! that is absent. A commit that loses its race deletes its transaction
//! file at once: one answered here (never sent, and named by nobody else:
//! its name is a fresh UUID) is answered again, saving the loser a round trip.
//! (On local disk Lance writes files outside object_store: the file is
//! written there, and its delete is sent.)

use std::collections::VecDeque;
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMode, PutMultipartOptions,
    PutOptions, PutPayload, PutResult, Result,
};

/// Lance's directory of transaction files, in a table.
const TRANSACTIONS: &str = "_transactions";
/// Largest transaction answered here: far below the 20 MiB Lance 14 inlines
/// (`MAX_INLINE_TRANSACTION_BYTES`; recheck it on a Lance upgrade).
const MAX_ANSWERED: usize = 1 << 20;
/// Answered files remembered for a loser's delete (the oldest are forgotten:
/// their delete is then sent, and finds nothing).
const REMEMBERED: usize = 256;

/// Is `location` a transaction file Lance writes beside an inline copy?
fn redundant(location: &Path, bytes: usize, mode: &PutMode) -> bool {
    let parts: Vec<_> = location.parts().collect();
    let in_place = matches!(parts.as_slice(), [.., dir, name] if dir.as_ref() == TRANSACTIONS && name.as_ref().ends_with(".txn"));
    in_place && bytes <= MAX_ANSWERED && matches!(mode, PutMode::Overwrite)
}

#[derive(Debug)]
pub(crate) struct InlineTransactions {
    inner: Arc<dyn ObjectStore>,
    /// Transaction files answered and not yet deleted, oldest first.
    answered: Arc<Mutex<VecDeque<Path>>>,
}

impl InlineTransactions {
    pub(crate) fn new(inner: Arc<dyn ObjectStore>) -> InlineTransactions {
        InlineTransactions { inner, answered: Arc::default() }
    }

    fn remember(&self, location: &Path) {
        let mut answered = self.answered.lock().expect("answered transactions poisoned");
        if answered.len() == REMEMBERED {
            answered.pop_front();
        }
        answered.push_back(location.clone());
    }
}

/// Was `location` answered (and so never sent)? Forgets it.
fn forget(answered: &Mutex<VecDeque<Path>>, location: &Path) -> bool {
    let mut answered = answered.lock().expect("answered transactions poisoned");
    match answered.iter().position(|p| p == location) {
        Some(i) => answered.remove(i).is_some(),
        None => false,
    }
}

impl fmt::Display for InlineTransactions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InlineTransactions({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for InlineTransactions {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        if redundant(location, payload.content_length(), &opts.mode) {
            self.remember(location);
            return Ok(PutResult { e_tag: None, version: None, extensions: Default::default() });
        }
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    /// Deletes of answered files are answered; the rest go on as one stream
    /// (a store batches them), then the answered ones are reported deleted.
    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        let done: Arc<Mutex<Vec<Path>>> = Arc::default();
        let (answered, kept) = (Arc::clone(&self.answered), Arc::clone(&done));
        let sent = locations.filter_map(move |location| {
            let answer = match location {
                Ok(path) if forget(&answered, &path) => {
                    kept.lock().expect("answered deletes poisoned").push(path);
                    None
                }
                other => Some(other),
            };
            std::future::ready(answer)
        });
        let answered = futures::stream::once(async move { std::mem::take(&mut *done.lock().expect("answered deletes poisoned")) })
            .flat_map(|paths| futures::stream::iter(paths.into_iter().map(Ok)));
        self.inner.delete_stream(sent.boxed()).chain(answered).boxed()
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
        self.inner.copy_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;

    #[test]
    fn only_small_transaction_files_written_over_are_answered() {
        let txn = Path::from("lake/tables/t.lance/_transactions/3-0b1c.txn");
        assert!(redundant(&txn, 2_000, &PutMode::Overwrite));
        assert!(!redundant(&txn, MAX_ANSWERED + 1, &PutMode::Overwrite), "a large one passes");
        assert!(!redundant(&txn, 2_000, &PutMode::Create), "a create-only PUT passes");
        for other in ["lake/tables/t.lance/_versions/18446744073709551613.manifest", "lake/tables/t.lance/data/x.lance", "lake/_transactions.txn", "lake/x/_transactions"] {
            assert!(!redundant(&Path::from(other), 2_000, &PutMode::Overwrite), "{other}");
        }
    }

    #[tokio::test]
    async fn a_loser_s_delete_of_its_answered_file_is_answered() {
        let dir = tempfile::tempdir().unwrap();
        let counts = Arc::new(crate::counting::RequestCounts::default());
        let local = Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        let store = InlineTransactions::new(Arc::new(crate::counting::CountingStore::new(local, counts.clone())));
        let (txn, next) = (Path::from("t.lance/_transactions/3-0b1c.txn"), Path::from("t.lance/_transactions/3-9f2e.txn"));
        let other = Path::from("t.lance/data/x.lance");
        for answered in [&txn, &next] {
            store.put_opts(answered, PutPayload::from_static(b"txn"), PutOptions::default()).await.unwrap();
        }
        store.put(&other, PutPayload::from_static(b"data")).await.unwrap();
        let before = counts.snapshot().total();
        store.delete(&txn).await.unwrap();
        assert_eq!(counts.snapshot().total(), before, "the answered file's delete is not sent");
        let both = futures::stream::iter([Ok(next.clone()), Ok(other.clone())]).boxed();
        let mut deleted: Vec<Path> = store.delete_stream(both).map(|r| r.unwrap()).collect().await;
        deleted.sort();
        assert_eq!(deleted, vec![next, other.clone()], "each path reported deleted once");
        assert_eq!(counts.snapshot().total(), before + 1, "only the data file's delete is sent");
        assert!(store.head(&other).await.is_err(), "the data file is gone");
        // Forgotten once deleted: a second delete is sent (and finds nothing:
        // a local disk says so, S3 does not).
        assert!(store.delete(&txn).await.is_err());
        assert_eq!(counts.snapshot().total(), before + 3, "sent, with the HEAD above");
    }
}
