//! An `ObjectStore` wrapper that leaves out of every listing the files written
//! at or after a cutoff, except Lance's version manifests.
//!
//! Cleanup hands it to Lance's own cleanup together with `delete_unverified`:
//! Lance still works out which files its retained versions reference, but a file
//! it never sees cannot be deleted. The cutoff is the start of the oldest
//! operation still in flight (see `cleanup.rs`), so the uncommitted files of
//! live writers stay, and those of dead, decided writers go at once instead of
//! after Lance's seven days. Manifests are never hidden: a newer version must
//! still count as referencing its files.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use futures::stream::BoxStream;
use lance::io::WrappingObjectStore;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, PutResult, Result,
};

/// Lance's directory of version manifests: always listed in full.
const MANIFESTS: &str = "_versions";

#[derive(Debug, Clone, Copy)]
pub struct HideNewer {
    pub cutoff: DateTime<Utc>,
}

impl HideNewer {
    fn shown(&self, meta: &ObjectMeta) -> bool {
        meta.last_modified < self.cutoff || meta.location.parts().any(|p| p.as_ref() == MANIFESTS)
    }

    /// A listing without the hidden files (errors pass through).
    fn filter(self, listing: BoxStream<'static, Result<ObjectMeta>>) -> BoxStream<'static, Result<ObjectMeta>> {
        listing.filter(move |m| std::future::ready(m.as_ref().map_or(true, |m| self.shown(m)))).boxed()
    }
}

impl WrappingObjectStore for HideNewer {
    fn wrap(&self, _prefix: &str, original: Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore> {
        Arc::new(HidingStore { inner: original, hide: *self })
    }

    fn wrap_paginated(
        &self,
        _prefix: &str,
        _original: Arc<dyn object_store::list::PaginatedListStore>,
    ) -> Option<Arc<dyn object_store::list::PaginatedListStore>> {
        // Paged listings would bypass the filter: force them through `wrap`.
        None
    }
}

#[derive(Debug)]
struct HidingStore {
    inner: Arc<dyn ObjectStore>,
    hide: HideNewer,
}

impl fmt::Display for HidingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HideNewer({}, {})", self.hide.cutoff, self.inner)
    }
}

#[async_trait]
impl ObjectStore for HidingStore {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
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
        self.hide.filter(self.inner.list(prefix))
    }

    fn list_with_offset(&self, prefix: Option<&Path>, offset: &Path) -> BoxStream<'static, Result<ObjectMeta>> {
        self.hide.filter(self.inner.list_with_offset(prefix, offset))
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let mut listed = self.inner.list_with_delimiter(prefix).await?;
        listed.objects.retain(|m| self.hide.shown(m));
        Ok(listed)
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}
