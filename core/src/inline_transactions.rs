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
//! that is absent.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
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

/// Is `location` a transaction file Lance writes beside an inline copy?
fn redundant(location: &Path, bytes: usize, mode: &PutMode) -> bool {
    let parts: Vec<_> = location.parts().collect();
    let in_place = matches!(parts.as_slice(), [.., dir, name] if dir.as_ref() == TRANSACTIONS && name.as_ref().ends_with(".txn"));
    in_place && bytes <= MAX_ANSWERED && matches!(mode, PutMode::Overwrite)
}

#[derive(Debug)]
pub(crate) struct InlineTransactions {
    inner: Arc<dyn ObjectStore>,
}

impl InlineTransactions {
    pub(crate) fn new(inner: Arc<dyn ObjectStore>) -> InlineTransactions {
        InlineTransactions { inner }
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

    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
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
}
