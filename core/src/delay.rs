//! A latency model: an `ObjectStore` wrapper that sleeps a fixed time before
//! every request, in the style of object_store's `throttle.rs` (which cannot
//! wrap a local disk's file-backed GETs). On S3 a small request costs about
//! 20 ms, so under this wrapper wall time counts round trips in sequence.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, PutResult, Result, UploadPart,
};

#[derive(Debug)]
pub struct DelayStore {
    inner: Arc<dyn ObjectStore>,
    delay: Duration,
}

impl DelayStore {
    pub fn new(inner: Arc<dyn ObjectStore>, delay: Duration) -> Self {
        Self { inner, delay }
    }
}

impl fmt::Display for DelayStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DelayStore({:?}, {})", self.delay, self.inner)
    }
}

/// `stream`, started after `delay`.
fn delayed<T: Send + 'static>(stream: BoxStream<'static, T>, delay: Duration) -> BoxStream<'static, T> {
    tokio::time::sleep(delay).map(move |()| stream).flatten_stream().boxed()
}

#[async_trait]
impl ObjectStore for DelayStore {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        tokio::time::sleep(self.delay).await;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
        tokio::time::sleep(self.delay).await;
        let upload = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(DelayUpload { upload, delay: self.delay }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        tokio::time::sleep(self.delay).await;
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        tokio::time::sleep(self.delay).await;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        delayed(self.inner.delete_stream(locations), self.delay)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        delayed(self.inner.list(prefix), self.delay)
    }

    fn list_with_offset(&self, prefix: Option<&Path>, offset: &Path) -> BoxStream<'static, Result<ObjectMeta>> {
        delayed(self.inner.list_with_offset(prefix, offset), self.delay)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        tokio::time::sleep(self.delay).await;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        tokio::time::sleep(self.delay).await;
        self.inner.copy_opts(from, to, options).await
    }
}

#[derive(Debug)]
struct DelayUpload {
    upload: Box<dyn MultipartUpload>,
    delay: Duration,
}

#[async_trait]
impl MultipartUpload for DelayUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let part = self.upload.put_part(data);
        let delay = self.delay;
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            part.await
        })
    }

    async fn complete(&mut self) -> Result<PutResult> {
        tokio::time::sleep(self.delay).await;
        self.upload.complete().await
    }

    async fn abort(&mut self) -> Result<()> {
        tokio::time::sleep(self.delay).await;
        self.upload.abort().await
    }
}
