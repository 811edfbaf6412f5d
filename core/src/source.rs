//! Sources: what an ingest reads, and the identity that makes it exactly-once.
//!
//! Identity is the source object *version*: for S3 the bucket, key and version
//! id (or ETag); for a local file its absolute path, size and SHA-256. The same
//! bytes re-delivered are the same source; a rewritten object is a new one.

use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use object_store::path::Path;
use object_store::{GetOptions, ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::error::{Error, Result};
use crate::lake::{s3_options_from_env, s3_store};

#[derive(Clone)]
pub enum Location {
    /// A local file, and what it showed of its version as its identity was
    /// taken: it must show the same after it is read.
    Local { path: PathBuf, version: FileVersion },
    S3 { store: Arc<dyn ObjectStore>, key: Path, e_tag: Option<String>, version: Option<String> },
}

/// The exact version of an S3 object a caller names, as an S3 event does
/// (`versionId`, `eTag`): the source is that version, or an error if it is gone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectPin {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e_tag: Option<String>,
}

impl ObjectPin {
    pub fn is_empty(&self) -> bool {
        self.version_id.is_none() && self.e_tag.is_none()
    }
}

/// A source as a caller names it: a URI, and for S3 optionally the version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceSpec {
    pub uri: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<ObjectPin>,
}

impl From<String> for SourceSpec {
    fn from(uri: String) -> SourceSpec {
        SourceSpec { uri, pin: None }
    }
}

impl From<&str> for SourceSpec {
    fn from(uri: &str) -> SourceSpec {
        SourceSpec { uri: uri.to_string(), pin: None }
    }
}

fn unquote(e_tag: &str) -> &str {
    e_tag.trim_matches('"')
}

#[derive(Clone)]
pub struct Source {
    /// As the user gave it (normalised to an absolute path for local files).
    pub uri: String,
    /// The S3 version the caller named, if any (kept so recovery resolves the same one).
    pub pin: Option<ObjectPin>,
    pub identity: String,
    /// Hex digest of `identity`: the ledger key.
    pub id: String,
    /// Bytes, as stored (compressed if the file is).
    pub size: u64,
    pub location: Location,
    /// Raw bytes read through [`Source::open_blocking`] are added here (progress).
    pub read_counter: Option<Arc<AtomicU64>>,
    /// The first error met reading the stored bytes (the store or the disk
    /// failed, after the store client's own retries; the bytes may be fine),
    /// shared by every copy of this source: what fails to decode after it is
    /// no verdict on the file (`decode::bad`).
    pub read_fault: Arc<OnceLock<String>>,
}

/// A reader of a source's stored bytes: it counts them (progress) and keeps
/// the first error reading them.
struct Watched<R> {
    inner: R,
    counter: Option<Arc<AtomicU64>>,
    fault: Arc<OnceLock<String>>,
    /// Bytes passed, and after how many to fail (tests: [`crate::failpoints::read_fails_after`]).
    passed: u64,
    fail_after: Option<u64>,
}

impl<R: Read> Read for Watched<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let result = match self.fail_after {
            Some(limit) if self.passed >= limit => Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "injected: the connection was reset")),
            Some(limit) => {
                let room = usize::try_from(limit - self.passed).unwrap_or(usize::MAX).min(buf.len());
                self.inner.read(&mut buf[..room])
            }
            None => self.inner.read(buf),
        };
        match result {
            Ok(n) => {
                self.passed += n as u64;
                if let Some(counter) = &self.counter {
                    counter.fetch_add(n as u64, Ordering::Relaxed);
                }
                Ok(n)
            }
            Err(e) => {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    let _ = self.fault.set(e.to_string());
                }
                Err(e)
            }
        }
    }
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source").field("uri", &self.uri).field("identity", &self.identity).finish()
    }
}

fn digest_hex(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes)[..16])
}

impl Source {
    /// The ledger id of a source identity.
    pub fn id_of(identity: &str) -> String {
        digest_hex(identity.as_bytes())
    }

    /// Pin down which version of `uri` this is: one HEAD for S3, a hash pass for local files.
    pub async fn resolve(uri: &str) -> Result<Source> {
        Self::resolve_pinned(uri, None).await
    }

    /// As [`Source::resolve`], but for S3 exactly the version `pin` names: a
    /// version id is read as that version; an ETag must still be the object's
    /// (without bucket versioning an overwritten object's old bytes are gone,
    /// and that is an error, never the newer object in its place).
    pub async fn resolve_pinned(uri: &str, pin: Option<&ObjectPin>) -> Result<Source> {
        let pin = pin.filter(|p| !p.is_empty());
        if let Some(rest) = uri.strip_prefix("s3://") {
            let (bucket, key) = rest
                .split_once('/')
                .filter(|(b, k)| !b.is_empty() && !k.is_empty())
                .ok_or_else(|| Error::Usage(format!("source '{uri}': use s3://BUCKET/KEY")))?;
            let store = s3_store(bucket, &s3_options_from_env())?;
            // The key exactly as S3 holds it (`Path::from` would percent-encode
            // `#`, `%`, `[`... once more on the way to the server).
            let key = Path::parse(key).map_err(|e| {
                Error::Usage(format!(
                    "source '{uri}': sluice's S3 client cannot address this key ({e}); keys with an empty segment ('//'), \
                     a '.' or '..' segment or a control character must be renamed"
                ))
            })?;
            let version = pin.and_then(|p| p.version_id.clone());
            let head = GetOptions { version: version.clone(), head: true, ..Default::default() };
            let meta = match store.get_opts(&key, head).await {
                Ok(got) => got.meta,
                Err(object_store::Error::NotFound { .. }) if version.is_some() => {
                    return Err(Error::Blocked(format!(
                        "{uri}: version {} named by the event no longer exists; it was not ingested",
                        version.unwrap_or_default()
                    )));
                }
                Err(e) => return Err(Error::store(uri, e)),
            };
            if let Some(want) = pin.and_then(|p| p.e_tag.as_deref())
                && let Some(now) = meta.e_tag.as_deref()
                && unquote(want) != unquote(now)
            {
                return Err(Error::Blocked(format!(
                    "{uri}: the event names ETag {}, but the object now has ETag {}: it was overwritten, and without \
                     bucket versioning the event's version is gone. It was not ingested; the newer version arrives \
                     with its own event",
                    unquote(want),
                    unquote(now)
                )));
            }
            // A version id "null" (written while versioning was suspended) is
            // shared by every overwrite of the key: not an identity.
            let version = meta.version.clone().filter(|v| v != "null");
            let tag = match (&version, &meta.e_tag) {
                (Some(v), _) => format!("version={v}"),
                (None, Some(e)) => format!("etag={}", e.trim_matches('"')),
                (None, None) => format!("size={};modified={}", meta.size, meta.last_modified.timestamp_millis()),
            };
            let identity = format!("s3://{bucket}/{key}#{tag}");
            return Ok(Source {
                uri: uri.to_string(),
                pin: pin.cloned(),
                id: digest_hex(identity.as_bytes()),
                identity,
                size: meta.size,
                location: Location::S3 { store, key, e_tag: meta.e_tag, version },
                read_counter: None,
                read_fault: Arc::default(),
            });
        }
        let path = local_path(uri).map_err(|e| Error::io(uri, e))?;
        let shown = path.display().to_string();
        let (size, hash, version) = tokio::task::spawn_blocking({
            let path = path.clone();
            move || -> std::io::Result<(u64, String, Result<FileVersion, String>)> {
                crate::failpoints::hit(crate::failpoints::BEFORE_HASH).map_err(|e| std::io::Error::other(e.to_string()))?;
                let mut file = std::fs::File::open(&path)?;
                let meta = file.metadata()?;
                if meta.is_dir() {
                    return Err(std::io::Error::other("is a directory, not a file"));
                }
                let before = FileVersion::of(&meta)?;
                let mut hasher = Sha256::new();
                let mut buf = vec![0u8; 1 << 20];
                let mut size = 0u64;
                loop {
                    let n = file.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    size += n as u64;
                    hasher.update(&buf[..n]);
                }
                // A file written as it is hashed has no one version to name:
                // what its stat shows changed, or the bytes read were not its size.
                let after = FileVersion::of(&file.metadata()?)?;
                let changed = before.changes(after).or_else(|| before.changes(FileVersion { size, ..before }));
                Ok((size, hex::encode(hasher.finalize()), changed.map_or(Ok(before), Err)))
            }
        })
        .await
        .expect("hashing task panicked")
        .map_err(|e| Error::io(&shown, e))?;
        let version = version.map_err(|what| Error::Changed { path: shown.clone(), what })?;
        let identity = format!("file://{shown}#size={size};sha256={hash}");
        let location = Location::Local { path, version };
        Ok(Source { uri: shown, pin: None, id: digest_hex(identity.as_bytes()), identity, size, location, read_counter: None, read_fault: Arc::default() })
    }

    /// A local file as it is now, before its identity is taken: only to read
    /// ahead (`read_ahead.rs`). It has no identity (empty `identity` and
    /// `id`), so it is never claimed, recorded or quarantined; staging takes
    /// what it read only for the resolved source of the same version.
    /// Call from a blocking thread.
    pub(crate) fn unhashed_local(uri: &str) -> std::io::Result<Source> {
        let path = local_path(uri)?;
        let meta = std::fs::metadata(&path)?;
        if !meta.is_file() {
            return Err(std::io::Error::other("not a file"));
        }
        let version = FileVersion::of(&meta)?;
        let uri = path.display().to_string();
        let location = Location::Local { path, version };
        Ok(Source { uri, pin: None, identity: String::new(), id: String::new(), size: version.size, location, read_counter: None, read_fault: Arc::default() })
    }

    /// Whether both read the same bytes: the same local file at the same
    /// version (an S3 object is never read ahead).
    pub(crate) fn same_version(&self, other: &Source) -> bool {
        match (&self.location, &other.location) {
            (Location::Local { path, version }, Location::Local { path: p, version: v }) => path == p && version == v,
            _ => false,
        }
    }

    /// Check that a local file is still the version its identity names, once
    /// its bytes were read: the same file at its path, the same size, and
    /// not modified since it was hashed. A file still being written fails
    /// here instead of going in under an identity its rows do not match.
    /// (An S3 source is read by version or `If-Match`: nothing to check.)
    pub async fn unchanged(&self) -> Result<()> {
        let Location::Local { path, version } = &self.location else { return Ok(()) };
        let what = match tokio::fs::metadata(path).await {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some("it was removed".to_string()),
            Err(e) => return Err(Error::io(&self.uri, e)),
            Ok(now) => version.changes(FileVersion::of(&now).map_err(|e| Error::io(&self.uri, e))?),
        };
        match what {
            None => Ok(()),
            Some(what) => Err(Error::Changed { path: self.uri.clone(), what }),
        }
    }

    /// The form [`Source::resolve`] gives a local path (absolute, without
    /// `file://`); other URIs as they are.
    pub fn shown_uri(uri: &str) -> String {
        if uri.starts_with("s3://") {
            return uri.to_string();
        }
        local_path(uri).map_or_else(|_| uri.to_string(), |p| p.display().to_string())
    }

    /// The file name, used for format detection and routing.
    pub fn file_name(&self) -> &str {
        self.uri.rsplit('/').next().unwrap_or(&self.uri)
    }

    /// GET options that fail if the object changed since `resolve`.
    fn pinned_get(e_tag: &Option<String>, version: &Option<String>) -> GetOptions {
        GetOptions { if_match: e_tag.clone(), version: version.clone(), ..Default::default() }
    }

    /// A blocking reader over the raw bytes. Call from a blocking thread.
    pub fn open_blocking(&self, handle: &tokio::runtime::Handle) -> Result<Box<dyn Read + Send>> {
        Ok(self.watched(self.open_raw_blocking(handle)?))
    }

    fn watched(&self, raw: Box<dyn Read + Send>) -> Box<dyn Read + Send> {
        let fault = Arc::clone(&self.read_fault);
        Box::new(Watched { inner: raw, counter: self.read_counter.clone(), fault, passed: 0, fail_after: crate::failpoints::read_fails_after() })
    }

    /// Bytes `range` of the source as stored, counted like
    /// [`Source::open_blocking`]'s: a local file's if it is still the
    /// version hashed, an S3 object's by a ranged GET of the version
    /// resolved. Call from a blocking thread.
    pub fn open_range(&self, range: std::ops::Range<u64>, handle: &tokio::runtime::Handle) -> Result<Box<dyn Read + Send>> {
        assert!(range.start <= range.end && range.end <= self.size, "a range of the bytes resolved");
        let raw: Box<dyn Read + Send> = match &self.location {
            Location::Local { .. } => {
                let mut file = self.open_version()?;
                std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(range.start)).map_err(|e| Error::io(&self.uri, e))?;
                Box::new(file.take(range.end - range.start))
            }
            // An empty range is no request (S3 refuses one).
            Location::S3 { .. } if range.is_empty() => Box::new(std::io::empty()),
            Location::S3 { e_tag, version, .. } => {
                self.s3_reader(GetOptions { range: Some(object_store::GetRange::Bounded(range)), ..Self::pinned_get(e_tag, version) }, handle)?
            }
        };
        Ok(self.watched(raw))
    }

    /// A blocking reader over an S3 source's GET with `options`.
    fn s3_reader(&self, options: GetOptions, handle: &tokio::runtime::Handle) -> Result<Box<dyn Read + Send>> {
        let Location::S3 { store, key, .. } = &self.location else { unreachable!("only an S3 object is read by GET") };
        let got = handle.block_on(store.get_opts(key, options)).map_err(|e| Error::store(&self.uri, e))?;
        let stream = futures::TryStreamExt::map_err(got.into_stream(), std::io::Error::other);
        Ok(Box::new(tokio_util::io::SyncIoBridge::new_with_handle(tokio_util::io::StreamReader::new(stream), handle.clone())))
    }

    /// The local file, opened, if it is still the version its identity
    /// names: what is read from it is then that version's bytes even if
    /// another file takes its path while it is read (a file changed in place
    /// is seen by [`Source::unchanged`] once read). Call from a blocking thread.
    fn open_version(&self) -> Result<std::fs::File> {
        let Location::Local { path, version } = &self.location else { unreachable!("only a local file is opened") };
        let file = std::fs::File::open(path).map_err(|e| Error::io(&self.uri, e))?;
        let now = file.metadata().and_then(|meta| FileVersion::of(&meta)).map_err(|e| Error::io(&self.uri, e))?;
        match version.changes(now) {
            None => Ok(file),
            Some(what) => Err(Error::Changed { path: self.uri.clone(), what }),
        }
    }

    fn open_raw_blocking(&self, handle: &tokio::runtime::Handle) -> Result<Box<dyn Read + Send>> {
        match &self.location {
            // No further than the bytes its identity hashed.
            Location::Local { .. } => Ok(Box::new(self.open_version()?.take(self.size))),
            Location::S3 { e_tag, version, .. } => self.s3_reader(Self::pinned_get(e_tag, version), handle),
        }
    }

    /// A local file with the raw bytes (formats that seek): the file itself, or
    /// a temporary copy of an S3 object. Call from a blocking thread.
    pub fn local_copy_blocking(&self, handle: &tokio::runtime::Handle) -> Result<(PathBuf, Option<tempfile::TempPath>)> {
        match &self.location {
            Location::Local { path, .. } => Ok((path.clone(), None)),
            Location::S3 { store, key, e_tag, version } => {
                let temp = tempfile::NamedTempFile::new().map_err(|e| Error::io("temporary file", e))?.into_temp_path();
                handle.block_on(async {
                    let got = store.get_opts(key, Self::pinned_get(e_tag, version)).await.map_err(|e| Error::store(&self.uri, e))?;
                    let mut out = tokio::fs::File::create(&temp).await.map_err(|e| Error::io(temp.display(), e))?;
                    let mut stream = got.into_stream();
                    while let Some(chunk) = futures::StreamExt::next(&mut stream).await {
                        let chunk = chunk.map_err(|e| Error::store(&self.uri, e))?;
                        out.write_all(&chunk).await.map_err(|e| Error::io(temp.display(), e))?;
                    }
                    out.flush().await.map_err(|e| Error::io(temp.display(), e))
                })?;
                Ok((temp.to_path_buf(), Some(temp)))
            }
        }
    }

    /// Copy the raw bytes into the lake at `rel` (quarantine). Bounded memory.
    pub async fn copy_into(&self, lake: &crate::lake::Lake, rel: &str) -> Result<()> {
        let dest = lake.path(rel);
        let mut upload = object_store::WriteMultipart::new(
            lake.store().put_multipart(&dest).await.map_err(|e| Error::store(&dest, e))?,
        );
        match &self.location {
            // The version its identity names: no further than the bytes hashed.
            Location::Local { path, .. } => {
                let file = tokio::fs::File::open(path).await.map_err(|e| Error::io(&self.uri, e))?;
                let mut file = tokio::io::AsyncReadExt::take(file, self.size);
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = tokio::io::AsyncReadExt::read(&mut file, &mut buf).await.map_err(|e| Error::io(&self.uri, e))?;
                    if n == 0 {
                        break;
                    }
                    upload.wait_for_capacity(4).await.map_err(|e| Error::store(&dest, e))?;
                    upload.write(&buf[..n]);
                }
            }
            Location::S3 { store, key, e_tag, version } => {
                let got = store.get_opts(key, Self::pinned_get(e_tag, version)).await.map_err(|e| Error::store(&self.uri, e))?;
                let mut stream = got.into_stream();
                while let Some(chunk) = futures::StreamExt::next(&mut stream).await {
                    let chunk = chunk.map_err(|e| Error::store(&self.uri, e))?;
                    upload.wait_for_capacity(4).await.map_err(|e| Error::store(&dest, e))?;
                    upload.put(chunk);
                }
            }
        }
        upload.finish().await.map_err(|e| Error::store(&dest, e))?;
        Ok(())
    }
}

/// A local URI's absolute path (`file://` or none).
fn local_path(uri: &str) -> std::io::Result<PathBuf> {
    std::path::absolute(uri.strip_prefix("file://").unwrap_or(uri))
}

/// What a local file shows of its version without being read: its size,
/// when it was last modified, and (on Unix) which file it is, so a file
/// renamed into its place is told apart. Modification times are as fine as
/// the file system keeps them: a same-size rewrite within one tick of the
/// clock it stamps with passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileVersion {
    size: u64,
    modified: SystemTime,
    /// Device and inode.
    file: (u64, u64),
}

impl FileVersion {
    fn of(meta: &std::fs::Metadata) -> std::io::Result<FileVersion> {
        #[cfg(unix)]
        let file = {
            use std::os::unix::fs::MetadataExt;
            (meta.dev(), meta.ino())
        };
        #[cfg(not(unix))]
        let file = (0, 0);
        Ok(FileVersion { size: meta.len(), modified: meta.modified()?, file })
    }

    /// What differs in `now`, if anything.
    fn changes(self, now: FileVersion) -> Option<String> {
        let at = |t: SystemTime| chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        if self == now {
            None
        } else if self.file != now.file {
            Some("another file took its place".to_string())
        } else if self.size != now.size {
            Some(format!("its size went from {} to {} bytes", self.size, now.size))
        } else {
            Some(format!("it was modified at {} (the version read: {})", at(now.modified), at(self.modified)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What is read of a local file is the version hashed, even when another
    /// file stood at its path when it was opened and the first one is back
    /// by the time anyone looks again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_local_file_is_read_only_as_the_version_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
        std::fs::write(&a, "{\"id\": 1}\n").unwrap();
        std::fs::write(&b, "{\"id\": 2}\n").unwrap();
        let source = Source::resolve(a.to_str().unwrap()).await.unwrap();
        let handle = tokio::runtime::Handle::current();
        let kept = dir.path().join("kept.jsonl");
        std::fs::rename(&a, &kept).unwrap();
        std::fs::rename(&b, &a).unwrap();
        let refused = |got: Result<Box<dyn Read + Send>>| match got {
            Err(Error::Changed { what, .. }) => assert_eq!(what, "another file took its place"),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("the other file was opened as the version hashed"),
        };
        refused(tokio::task::block_in_place(|| source.open_blocking(&handle)));
        refused(tokio::task::block_in_place(|| source.open_range(0..4, &handle)));
        std::fs::rename(&kept, &a).unwrap();
        assert!(source.unchanged().await.is_ok(), "the version hashed is back");
        let mut read = String::new();
        tokio::task::block_in_place(|| source.open_blocking(&handle)).unwrap().read_to_string(&mut read).unwrap();
        assert_eq!(read, "{\"id\": 1}\n");
    }
}
