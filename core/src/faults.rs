//! A fault-injecting `ObjectStore` wrapper, the sibling of `counting.rs`: it
//! lets tests produce the failures a real network produces, deterministically.
//!
//! The fault that matters most to the protocol is the *ambiguous* conditional
//! PUT: the server applied it, but the client saw an error (a timeout), or
//! retried and was told "already exists".

use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, PutResult, Result,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Apply the PUT, then answer as a client that timed out, retried the
    /// create-only PUT and was told the object already exists.
    AppliedThenAlreadyExists,
    /// Apply the PUT, then answer with a transport error.
    AppliedThenError,
    /// Do not apply the PUT; answer with a transport error.
    Rejected,
}

#[derive(Debug)]
struct Rule {
    path_contains: String,
    fault: Fault,
    remaining: u32,
}

/// Injects [`Fault`]s into PUTs whose path contains a given string.
#[derive(Debug)]
pub struct FaultStore {
    inner: Arc<dyn ObjectStore>,
    rules: Mutex<Vec<Rule>>,
}

impl FaultStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Self { inner, rules: Mutex::new(Vec::new()) }
    }

    /// The next `times` PUTs to a path containing `path_contains` suffer `fault`.
    pub fn inject(&self, path_contains: &str, fault: Fault, times: u32) {
        self.rules.lock().expect("fault rules poisoned").push(Rule { path_contains: path_contains.into(), fault, remaining: times });
    }

    fn take(&self, location: &Path) -> Option<Fault> {
        let mut rules = self.rules.lock().expect("fault rules poisoned");
        let rule = rules.iter_mut().find(|r| r.remaining > 0 && location.as_ref().contains(&r.path_contains))?;
        rule.remaining -= 1;
        Some(rule.fault)
    }
}

impl fmt::Display for FaultStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FaultStore {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        let Some(fault) = self.take(location) else { return self.inner.put_opts(location, payload, opts).await };
        if fault != Fault::Rejected {
            self.inner.put_opts(location, payload, opts).await?;
        }
        match fault {
            Fault::AppliedThenAlreadyExists => Err(object_store::Error::AlreadyExists {
                path: location.to_string(),
                source: "injected: the retried create-only PUT found the first attempt's object".into(),
            }),
            Fault::AppliedThenError => Err(object_store::Error::Generic {
                store: "FaultStore",
                source: "injected: the PUT was applied but the response was lost".into(),
            }),
            Fault::Rejected => Err(object_store::Error::Generic { store: "FaultStore", source: "injected: the PUT failed".into() }),
        }
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
