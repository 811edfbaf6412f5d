//! A lake: a root URI on an object store, the store itself (counted), and
//! everything Lance needs to open the lake's tables with the same settings.
//!
//! Roots: `s3://bucket/prefix`, `memory://name` (process-wide, for tests), or a
//! local path. S3 settings come from the standard AWS environment, as the AWS
//! CLI reads it; a custom endpoint uses path-style addressing and may be http.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use lance::Dataset;
use lance::dataset::builder::DatasetBuilder;
use lance::io::{ObjectStoreParams, StorageOptionsAccessor, WrappingObjectStore};
use lance::session::Session;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::counting::{CountingLister, CountingStore, RequestCounts, RequestSnapshot};
use crate::delay::DelayStore;
use crate::error::{Error, Result};
use crate::faults::{FaultSpec, FaultStore, RandomFaults, Scope};
use crate::inline_transactions::InlineTransactions;
use crate::known_manifest::{KnownManifest, LanceManifest, ListAhead};
use crate::remembered_manifests::{self, RememberedManifests};

/// Where a lake lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Root {
    S3 { bucket: String, prefix: String },
    Memory { name: String },
    Local { path: std::path::PathBuf },
}

impl Root {
    pub fn parse(uri: &str) -> Result<Root> {
        let uri = uri.trim_end_matches('/');
        if let Some(rest) = uri.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(Error::Usage(format!("root '{uri}' names no bucket: use s3://BUCKET/PREFIX")));
            }
            return Ok(Root::S3 { bucket: bucket.into(), prefix: prefix.into() });
        }
        if let Some(name) = uri.strip_prefix("memory://") {
            if name.is_empty() || name.contains('/') {
                return Err(Error::Usage(format!("root '{uri}': use memory://NAME")));
            }
            return Ok(Root::Memory { name: name.into() });
        }
        if uri.contains("://") && !uri.starts_with("file://") {
            return Err(Error::Usage(format!(
                "root '{uri}': unsupported scheme; use s3://BUCKET/PREFIX, memory://NAME or a local path"
            )));
        }
        let path = std::path::PathBuf::from(uri.strip_prefix("file://").unwrap_or(uri));
        let path = std::path::absolute(&path).map_err(|e| Error::io(uri, e))?;
        Ok(Root::Local { path })
    }
}

/// S3 settings from the standard AWS environment (as the AWS CLI reads it),
/// in the keys both object_store and Lance understand.
pub fn s3_options_from_env() -> HashMap<String, String> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let mut opts = HashMap::new();
    if let Some(endpoint) = env("AWS_ENDPOINT_URL_S3").or_else(|| env("AWS_ENDPOINT_URL")) {
        if endpoint.starts_with("http://") {
            opts.insert("aws_allow_http".into(), "true".into());
        }
        opts.insert("aws_endpoint".into(), endpoint);
        opts.insert("aws_virtual_hosted_style_request".into(), "false".into());
    }
    let region = env("AWS_REGION").or_else(|| env("AWS_DEFAULT_REGION")).unwrap_or_else(|| "us-east-1".into());
    opts.insert("aws_region".into(), region);
    for (var, key) in [
        ("AWS_ACCESS_KEY_ID", "aws_access_key_id"),
        ("AWS_SECRET_ACCESS_KEY", "aws_secret_access_key"),
        ("AWS_SESSION_TOKEN", "aws_session_token"),
    ] {
        if let Some(v) = env(var) {
            opts.insert(key.into(), v);
        }
    }
    opts
}

/// Build an S3 store for `bucket` with `opts` (see [`s3_options_from_env`]);
/// anything not given falls back to object_store's default credential chain.
pub fn s3_store(bucket: &str, opts: &HashMap<String, String>) -> Result<Arc<dyn ObjectStore>> {
    let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
    for (k, v) in opts {
        let key = AmazonS3ConfigKey::from_str(k).map_err(|e| Error::Usage(format!("S3 option {k}: {e}")))?;
        builder = builder.with_config(key, v);
    }
    let store = builder.build().map_err(|e| Error::store(format!("s3://{bucket}"), e))?;
    Ok(Arc::new(store))
}

/// Memory lakes are shared by name across the process, like a bucket.
static MEMORY_LAKES: LazyLock<Mutex<HashMap<String, Arc<InMemory>>>> = LazyLock::new(Default::default);

fn memory_backend(name: &str) -> Arc<InMemory> {
    let mut lakes = MEMORY_LAKES.lock().expect("memory lake registry poisoned");
    Arc::clone(lakes.entry(name.to_string()).or_insert_with(|| Arc::new(InMemory::new())))
}

/// Hands Lance the lake's request counter, for memory lakes the lake's own
/// backend in place of the fresh one Lance would mint per `memory://` store,
/// (failpoints builds, `SLUICE_FAULTS`) the process's random faults, and
/// (`inline_transactions`) commits whose transaction is only in the manifest,
/// and (`remembered`) manifest ranges read again answered from memory.
#[derive(Debug, Clone)]
struct LanceWrapper {
    counts: Arc<RequestCounts>,
    memory: Option<Arc<InMemory>>,
    faults: Option<Arc<RandomFaults>>,
    delay: Option<Duration>,
    inline_transactions: bool,
    remembered: Option<Arc<remembered_manifests::Memory>>,
}

impl WrappingObjectStore for LanceWrapper {
    fn wrap(&self, prefix: &str, original: Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore> {
        let mut inner: Arc<dyn ObjectStore> = match &self.memory {
            Some(memory) => Arc::clone(memory) as Arc<dyn ObjectStore>,
            None => original,
        };
        if let Some(delay) = self.delay {
            inner = Arc::new(DelayStore::new(inner, delay));
        }
        if let Some(faults) = &self.faults {
            inner = Arc::new(FaultStore::random(inner, Arc::clone(faults)));
        }
        let mut store: Arc<dyn ObjectStore> = Arc::new(CountingStore::new(inner, Arc::clone(&self.counts)));
        if self.inline_transactions {
            store = Arc::new(InlineTransactions::new(store));
        }
        if let Some(memory) = &self.remembered {
            store = Arc::new(RememberedManifests::new(store, prefix, Arc::clone(memory)));
        }
        store
    }

    fn wrap_paginated(
        &self,
        _prefix: &str,
        original: Arc<dyn object_store::list::PaginatedListStore>,
    ) -> Option<Arc<dyn object_store::list::PaginatedListStore>> {
        // A memory lake swaps the backend, so the original lister would list the
        // wrong store; with faults or a delay, every request must go through `wrap`'s store.
        if self.memory.is_some() || self.faults.is_some() || self.delay.is_some() {
            return None;
        }
        Some(Arc::new(CountingLister::new(original, Arc::clone(&self.counts))))
    }
}

/// Environment variable: milliseconds added to every request to the lake's
/// store, sluice's and Lance's alike (a latency model for benchmarks and tests:
/// on S3 a small request costs about 20 ms, so wall time is round trips).
pub const STORE_DELAY_ENV: &str = "SLUICE_STORE_DELAY_MS";

fn store_delay_from_env() -> Result<Option<Duration>> {
    match std::env::var(STORE_DELAY_ENV) {
        Err(_) => Ok(None),
        Ok(v) => v
            .trim()
            .parse::<u64>()
            .map(|ms| (ms > 0).then(|| Duration::from_millis(ms)))
            .map_err(|_| Error::Usage(format!("{STORE_DELAY_ENV}={v}: expected whole milliseconds, like 20"))),
    }
}

/// Outcome of a create-only PUT of a JSON object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created<T> {
    /// Ours: written by this call (possibly recognised after an ambiguous answer).
    Mine,
    /// Someone else's object is there, as read back.
    Theirs(T),
    /// The store said it exists, but it was deleted before it could be read.
    Gone,
}

/// An open lake. Cheap to share behind an `Arc`.
pub struct Lake {
    uri: String,
    store: Arc<dyn ObjectStore>,
    base: Path,
    storage_options: HashMap<String, String>,
    counts: Arc<RequestCounts>,
    /// Manifest publishes retried after losing a race (for metrics).
    manifest_retries: Arc<std::sync::atomic::AtomicU64>,
    session: Arc<Session>,
    wrapper: Arc<LanceWrapper>,
    /// The same, writing Lance's transaction files too (`plain_lance_params`).
    plain: Arc<LanceWrapper>,
    timing: Timing,
    /// May a writer create the lake when the root holds none? (The CLI asks
    /// for `init` or `--create`, so a mistyped root is an error, not a new lake.)
    creates: bool,
}

/// Protocol timings every worker on a lake must agree on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How far two workers' clocks (and the store's) may disagree.
    pub clock_skew: Duration,
    /// Cleanup never removes a manifest version until its successor is at least
    /// this old, so it must exceed the longest operation deadline plus the skew.
    /// Below this age a manifest's "I was the latest" is trusted without a LIST.
    pub retention_floor: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing { clock_skew: Duration::from_secs(60), retention_floor: Duration::from_secs(3600) }
    }
}

impl Timing {
    /// How long after a manifest version was known to be the latest a worker may
    /// still act on that without checking: cleanup (whose clock, like the store's
    /// and ours, may be off by the skew) deletes no version while its successor is
    /// younger than the floor.
    pub fn trust_window(&self) -> Duration {
        self.retention_floor.saturating_sub(self.clock_skew.saturating_mul(3))
    }

    /// Refuse a worker budget this lake's timings cannot protect: cleanup keeps
    /// what a worker may hold for the retention floor, so a worker must finish
    /// (or be presumed dead) within it.
    pub fn check_timeout(&self, timeout: Duration) -> Result<()> {
        if timeout.saturating_add(self.clock_skew) > self.retention_floor {
            return Err(Error::Usage(format!(
                "--timeout {} plus --clock-skew {} exceeds --retention-floor {}: cleanup could remove manifest versions \
                 a worker this slow still holds. Lower --timeout, or raise --retention-floor (SLUICE_RETENTION_FLOOR) on every worker",
                humantime(timeout),
                humantime(self.clock_skew),
                humantime(self.retention_floor)
            )));
        }
        Ok(())
    }
}

impl std::fmt::Debug for Lake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lake").field("uri", &self.uri).finish()
    }
}

impl Lake {
    /// Open (not create) the lake at `uri`. Makes no request.
    pub fn open(uri: &str) -> Result<Lake> {
        Self::open_wrapped(uri, |store| store)
    }

    /// Open with `wrap` around sluice's own store (tests inject faults this way;
    /// Lance's stores are not wrapped). In failpoints builds, `SLUICE_FAULTS`
    /// (see [`FaultSpec`]) wraps sluice's store and Lance's in random faults.
    pub fn open_wrapped(uri: &str, wrap: impl FnOnce(Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore>) -> Result<Lake> {
        Self::build(uri, wrap, store_delay_from_env()?)
    }

    /// Open with `delay` added to every request, sluice's and Lance's (see
    /// [`STORE_DELAY_ENV`]); `Duration::ZERO` adds none.
    pub fn open_delayed(uri: &str, delay: Duration) -> Result<Lake> {
        Self::build(uri, |store| store, Some(delay).filter(|d| !d.is_zero()))
    }

    fn build(uri: &str, wrap: impl FnOnce(Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore>, delay: Option<Duration>) -> Result<Lake> {
        let faults = FaultSpec::from_env().map_err(Error::Usage)?.map(RandomFaults::new);
        let root = Root::parse(uri)?;
        let counts = Arc::new(RequestCounts::default());
        let (raw, base, storage_options, memory): (Arc<dyn ObjectStore>, Path, _, _) = match &root {
            Root::S3 { bucket, prefix } => {
                let opts = s3_options_from_env();
                (s3_store(bucket, &opts)?, Path::from(prefix.as_str()), opts, None)
            }
            Root::Memory { name } => {
                let memory = memory_backend(name);
                (Arc::clone(&memory) as Arc<dyn ObjectStore>, Path::from(name.as_str()), HashMap::new(), Some(memory))
            }
            Root::Local { path } => {
                let base = Path::from_absolute_path(path)
                    .map_err(|e| Error::Usage(format!("root {}: {e}", path.display())))?;
                (Arc::new(LocalFileSystem::new()), base, HashMap::new(), None)
            }
        };
        let uri = match &root {
            Root::S3 { bucket, prefix } if prefix.is_empty() => format!("s3://{bucket}"),
            Root::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}"),
            Root::Memory { name } => format!("memory://{name}"),
            Root::Local { path } => path.display().to_string(),
        };
        let lance_faults = faults.as_ref().filter(|f| f.covers(Scope::Lance)).cloned();
        let plain = LanceWrapper { counts: Arc::clone(&counts), memory, faults: lance_faults, delay, inline_transactions: false, remembered: None };
        let wrapper = Arc::new(LanceWrapper { inline_transactions: true, remembered: Some(Arc::default()), ..plain.clone() });
        let raw = match delay {
            Some(delay) => Arc::new(DelayStore::new(raw, delay)),
            None => raw,
        };
        let mut store = wrap(raw);
        if let Some(f) = faults.filter(|f| f.covers(Scope::Sluice)) {
            store = Arc::new(FaultStore::random(store, f));
        }
        Ok(Lake {
            uri,
            store: Arc::new(CountingStore::new(store, Arc::clone(&counts))),
            base,
            storage_options,
            counts,
            manifest_retries: Arc::default(),
            session: Arc::new(Session::default()),
            wrapper,
            plain: Arc::new(plain),
            timing: Timing::default(),
            creates: true,
        })
    }

    /// Set the protocol timings (the CLI's `--clock-skew` and `--retention-floor`).
    pub fn with_timing(mut self, timing: Timing) -> Lake {
        self.timing = timing;
        self
    }

    /// Whether a writer creates the lake when the root holds none (default yes).
    pub fn with_create(mut self, creates: bool) -> Lake {
        self.creates = creates;
        self
    }

    pub fn creates(&self) -> bool {
        self.creates
    }

    pub fn timing(&self) -> Timing {
        self.timing
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Requests this process has sent to the lake's store so far (sluice and Lance).
    pub fn requests(&self) -> RequestSnapshot {
        self.counts.snapshot()
    }

    /// Manifest publishes this process retried after losing a race (or finding a ghost).
    pub fn manifest_retries(&self) -> u64 {
        self.manifest_retries.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn count_manifest_retry(&self) {
        self.manifest_retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The counted store, for raw writes into the lake (quarantine copies).
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Absolute object path of `rel` inside the lake.
    pub fn path(&self, rel: &str) -> Path {
        let mut path = self.base.clone();
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            path = path.clone().join(part);
        }
        path
    }

    /// Lance URI of table `name`.
    pub fn table_uri(&self, name: &str) -> String {
        format!("{}/tables/{name}.lance", self.uri)
    }

    /// Store parameters every Lance call on this lake must use.
    pub fn store_params(&self) -> ObjectStoreParams {
        self.params(&self.wrapper)
    }

    /// As [`Lake::store_params`], but writing every file plain Lance writes
    /// (`inline_transactions.rs`): the benchmark's baseline.
    pub fn plain_lance_params(&self) -> ObjectStoreParams {
        self.params(&self.plain)
    }

    fn params(&self, wrapper: &Arc<LanceWrapper>) -> ObjectStoreParams {
        ObjectStoreParams {
            object_store_wrapper: Some(Arc::clone(wrapper) as Arc<dyn WrappingObjectStore>),
            storage_options_accessor: Some(Arc::new(StorageOptionsAccessor::with_static_options(
                self.storage_options.clone(),
            ))),
            ..Default::default()
        }
    }

    pub fn session(&self) -> Arc<Session> {
        Arc::clone(&self.session)
    }

    /// Open table `name` at `version`, or at Lance's latest version.
    pub async fn open_table(&self, name: &str, version: Option<u64>) -> Result<Dataset> {
        self.open_known(name, version, None).await
    }

    /// [`Lake::open_table`]; `known` (a pin's record of where Lance keeps a
    /// version's manifest), if it is `version`'s, saves Lance's HEAD: one
    /// round trip fewer on S3.
    pub async fn open_known(&self, name: &str, version: Option<u64>, known: Option<&LanceManifest>) -> Result<Dataset> {
        self.open_to_commit(name, version, known, None).await
    }

    /// [`Lake::open_known`] for a writer: a commit on the handle takes its
    /// listing of newer versions from `ahead`, once asked (`known_manifest.rs`).
    pub(crate) async fn open_to_commit(&self, name: &str, version: Option<u64>, known: Option<&LanceManifest>, ahead: Option<&ListAhead>) -> Result<Dataset> {
        let uri = self.table_uri(name);
        let open = |known: Option<LanceManifest>| async {
            let mut builder = DatasetBuilder::from_uri(&uri).with_store_params(self.store_params()).with_session(self.session());
            if let Some(v) = version {
                builder = builder.with_version(v);
            }
            if known.is_some() || ahead.is_some() {
                builder = builder.with_commit_handler(KnownManifest::for_table(&uri, known, ahead.cloned()).await?);
            }
            builder.load().await
        };
        if let Some(known) = known.filter(|k| Some(k.version) == version) {
            match open(Some(known.clone())).await {
                Ok(ds) => return Ok(ds),
                // Not the file the pin recorded (a table made again): as Lance finds it.
                Err(e) => tracing::warn!(table = name, version, error = %e, "the pin's record of Lance's manifest is stale; reading it afresh"),
            }
        }
        open(None).await.map_err(|e| Error::lance(name, e))
    }

    /// Lance's latest version of table `name` and where its manifest is (one
    /// LIST on S3), without reading the manifest.
    pub(crate) async fn latest_lance_manifest(&self, name: &str) -> Result<(u64, Option<LanceManifest>)> {
        let uri = self.table_uri(name);
        let builder = DatasetBuilder::from_uri(&uri).with_store_params(self.store_params()).with_session(self.session());
        let (store, base, handler) = builder.build_object_store().await.map_err(|e| Error::lance(name, e))?;
        let at = handler.resolve_latest_location(&base, &store).await.map_err(|e| Error::lance(name, e))?;
        Ok((at.version, LanceManifest::at(&at)))
    }

    /// GET and parse a JSON object; `None` if it does not exist.
    pub async fn get_json<T: DeserializeOwned>(&self, rel: &str) -> Result<Option<T>> {
        let path = self.path(rel);
        let bytes = match self.store.get(&path).await {
            Ok(got) => got.bytes().await.map_err(|e| Error::store(&path, e))?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(Error::store(&path, e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Corrupt { what: "sluice object", path: path.to_string(), reason: e.to_string() })
    }

    /// HEAD: does `rel` exist?
    pub async fn exists(&self, rel: &str) -> Result<bool> {
        let path = self.path(rel);
        match self.store.head(&path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(Error::store(&path, e)),
        }
    }

    /// Create-only PUT (`If-None-Match: *`) of a JSON object that recognises
    /// its own write: when the PUT is ambiguous (an error, or "already exists"
    /// after a client retry), the object is read back and `is_mine` decides.
    /// A conflict returns what it read, so callers need not GET it again.
    pub async fn create_json<T: Serialize + DeserializeOwned>(
        &self,
        rel: &str,
        value: &T,
        is_mine: impl Fn(&T) -> bool,
    ) -> Result<Created<T>> {
        let failure = match self.put_create(rel, value).await {
            Ok(true) => return Ok(Created::Mine),
            Ok(false) => None,
            Err(e) => Some(e),
        };
        self.read_back(rel, failure, is_mine).await
    }

    /// A create-only PUT of a JSON object: `true` when written, `false` when
    /// refused (something is there). An error leaves unknown whether it
    /// landed: [`Lake::read_back`] says.
    pub(crate) async fn put_create<T: Serialize>(&self, rel: &str, value: &T) -> Result<bool> {
        let path = self.path(rel);
        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
        match self.store.put_opts(&path, PutPayload::from_bytes(to_json(value)), opts).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => Ok(false),
            Err(e) => Err(Error::store(&path, e)),
        }
    }

    /// What a create-only PUT at `rel` that was refused (`failure` is `None`)
    /// or answered with an error left there: [`Lake::create_json`]'s answer.
    pub(crate) async fn read_back<T: DeserializeOwned>(&self, rel: &str, failure: Option<Error>, is_mine: impl Fn(&T) -> bool) -> Result<Created<T>> {
        match (self.get_json::<T>(rel).await?, failure) {
            (Some(found), _) if is_mine(&found) => Ok(Created::Mine),
            (Some(found), _) => Ok(Created::Theirs(found)),
            // Not there after an error: the PUT did not happen.
            (None, Some(e)) => Err(e),
            (None, None) => Ok(Created::Gone),
        }
    }

    /// Unconditional PUT of a JSON object.
    pub async fn put_json<T: Serialize>(&self, rel: &str, value: &T) -> Result<()> {
        let path = self.path(rel);
        self.store.put(&path, PutPayload::from_bytes(to_json(value))).await.map_err(|e| Error::store(&path, e))?;
        Ok(())
    }

    /// DELETE; deleting what is already gone is success.
    pub async fn delete(&self, rel: &str) -> Result<()> {
        let path = self.path(rel);
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Error::store(&path, e)),
        }
    }

    /// DELETE every one of `rels` (as one stream: S3 takes up to 1,000 in one
    /// request); deleting what is already gone is success. The first error, if any.
    pub async fn delete_all(&self, rels: &[String]) -> Result<()> {
        use futures::StreamExt;
        let paths: Vec<object_store::Result<Path>> = rels.iter().map(|r| Ok(self.path(r))).collect();
        let mut deleted = self.store.delete_stream(futures::stream::iter(paths).boxed());
        let mut first = None;
        while let Some(result) = deleted.next().await {
            match result {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        first.map_or(Ok(()), |e| Err(Error::store(self.path(&rels[0]), e)))
    }

    /// LIST every object under `rel` (one request for the small prefixes sluice lists).
    pub async fn list(&self, rel: &str) -> Result<Vec<ObjectMeta>> {
        let prefix = self.path(rel);
        self.store.list(Some(&prefix)).try_collect().await.map_err(|e| Error::store(&prefix, e))
    }

    /// Some object under `rel` whose path sorts after `after`, if any: one LIST
    /// page on S3 (lexical order there; a local listing is unordered).
    pub async fn any_after(&self, rel: &str, after: &str) -> Result<Option<ObjectMeta>> {
        let prefix = self.path(rel);
        let mut listing = self.store.list_with_offset(Some(&prefix), &self.path(after));
        listing.try_next().await.map_err(|e| Error::store(&prefix, e))
    }

    /// The part of `path` below the lake root.
    pub fn relative(&self, path: &Path) -> Option<String> {
        path.prefix_match(&self.base).map(|parts| parts.map(|p| p.as_ref().to_string()).collect::<Vec<_>>().join("/"))
    }
}

fn humantime(d: Duration) -> String {
    format!("{}s", d.as_secs())
}

pub(crate) fn to_json<T: Serialize>(value: &T) -> Bytes {
    Bytes::from(serde_json::to_vec_pretty(value).expect("sluice types serialize"))
}
