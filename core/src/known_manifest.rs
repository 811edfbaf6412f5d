//! Round trips Lance need not wait for: what sluice already knows about a
//! table's versions, told to Lance by a commit handler ([`KnownManifest`])
//! that answers from it and hands everything else, commits included, to
//! Lance's own handler for the table.
//!
//! - **Where a pinned version's manifest is.** To open version `v`, Lance
//!   first HEADs `_versions/<v>.manifest` for its naming scheme and size, then
//!   reads it: two round trips in sequence on S3. A pin that carries the
//!   manifest file's size (recorded by the writer from its commit,
//!   [`LanceManifest`]) answers that HEAD.
//! - **Whether anything came after the version a writer read.** Before every
//!   commit Lance lists the versions after its read version, then writes its
//!   transaction, then its manifest: three round trips in sequence. A writer
//!   asks for the latest version ahead ([`ListAhead`]), alongside writing its
//!   last data file, and the commit's listing is answered from that: "none"
//!   when the latest was the read version, the latest's manifest (where the
//!   question found it) when that was the very next version (a group's
//!   leader asks again beside its takes: its rows were staged before the
//!   commit that beat them), else Lance lists as it would. An
//!   answer that is stale by the time of the commit is harmless: Lance writes
//!   the next manifest create-only, so a version that appeared meanwhile makes
//!   the PUT fail and Lance lists again, exactly as when a writer stalls
//!   between its listing and its PUT.
//!
//! A manifest file is written once (create-only) and never rewritten, so the
//! record stays true while the file exists: sluice never removes a table and
//! makes it again at the same address. (Were a record wrong, Lance's reader
//! would find no magic where it says the file ends and read it again by HEAD,
//! or fail, and `Lake::open_known` then opens the version as Lance finds it.)
//! Branches and tags (other base paths) are not used by sluice.

use std::sync::{Arc, Mutex};

use futures::StreamExt;
use futures::stream::BoxStream;
use lance::io::ObjectStore;
use lance::table::format::{IndexMetadata, Manifest, Transaction};
use lance::Result;
use lance_table::io::commit::{CommitError, CommitHandler, ManifestLocation, ManifestNamingScheme, ManifestWriter, PredecessorIdentity};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore as OSObjectStore};
use serde::{Deserialize, Serialize};

/// Lance's prefetch of a manifest file: its last 64 KiB (`read_manifest`).
const PREFETCH: u64 = 64 * 1024;

/// Lance's manifest file of one version (V2 naming): its size and ETag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LanceManifest {
    pub version: u64,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e_tag: Option<String>,
}

impl LanceManifest {
    /// Where `ds`'s own manifest is, if Lance told it (V2 naming, size known).
    pub fn of(ds: &lance::Dataset) -> Option<LanceManifest> {
        LanceManifest::at(ds.manifest_location()).filter(|m| m.version == ds.version().version)
    }

    /// The record of a location Lance found (V2 naming, size known).
    pub(crate) fn at(at: &ManifestLocation) -> Option<LanceManifest> {
        let v2 = at.naming_scheme == ManifestNamingScheme::V2;
        at.size.filter(|_| v2).map(|size| LanceManifest { version: at.version, size, e_tag: at.e_tag.clone() })
    }
}

/// A writer's question, asked ahead of its commit: which version is the
/// latest, after the one it read? Shared by every handle the writer opens on
/// one table (a clone shares it); each commit takes the answer at most once.
#[derive(Clone, Default)]
pub(crate) struct ListAhead(Arc<Mutex<Slot>>);

#[derive(Default)]
struct Slot {
    probe: Option<Probe>,
    /// Where the latest version's manifest was, as last found by a handle
    /// sharing this question (the question's own answer among them).
    found: Option<ManifestLocation>,
}

struct Probe {
    /// The version the writer read (its commit's read version).
    since: u64,
    latest: tokio::task::JoinHandle<Result<u64>>,
}

impl std::fmt::Debug for ListAhead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let since = self.0.lock().expect("list-ahead slot poisoned").probe.as_ref().map(|p| p.since);
        f.debug_struct("ListAhead").field("since", &since).finish()
    }
}

impl ListAhead {
    /// Ask now, on `rt`, for `ds`'s latest version (one LIST on S3), replacing
    /// an earlier question.
    pub(crate) fn start(&self, ds: Arc<lance::Dataset>, rt: &tokio::runtime::Handle) {
        let since = ds.version().version;
        let latest = rt.spawn(async move { ds.latest_version_id().await });
        if let Some(old) = self.0.lock().expect("list-ahead slot poisoned").probe.replace(Probe { since, latest }) {
            old.latest.abort();
        }
    }

    /// The question asked for read version `since`, once.
    fn take(&self, since: u64) -> Option<tokio::task::JoinHandle<Result<u64>>> {
        let mut slot = self.0.lock().expect("list-ahead slot poisoned");
        slot.probe.take_if(|p| p.since == since).map(|p| p.latest)
    }

    fn found(&self, at: &ManifestLocation) {
        self.0.lock().expect("list-ahead slot poisoned").found = Some(at.clone());
    }

    /// Where version `version`'s manifest was found as the latest, if it was.
    fn found_at(&self, version: u64) -> Option<ManifestLocation> {
        self.0.lock().expect("list-ahead slot poisoned").found.clone().filter(|f| f.version == version)
    }
}

/// Lance's commit handler for a table, plus what sluice knows ahead of Lance.
#[derive(Debug)]
pub(crate) struct KnownManifest {
    inner: Arc<dyn CommitHandler>,
    /// Where one version's manifest is.
    known: Option<LanceManifest>,
    /// The latest version, asked ahead of a commit.
    ahead: Option<ListAhead>,
}

impl KnownManifest {
    /// The handler Lance would use for `table_uri`, knowing `known` and
    /// answering a commit's listing from `ahead`.
    pub(crate) async fn for_table(table_uri: &str, known: Option<LanceManifest>, ahead: Option<ListAhead>) -> Result<Arc<dyn CommitHandler>> {
        let inner = lance_table::io::commit::commit_handler_from_url(table_uri, &None).await?;
        Ok(Arc::new(KnownManifest { inner, known, ahead }))
    }
}

#[async_trait::async_trait]
impl CommitHandler for KnownManifest {
    fn is_version_not_found_definitive(&self) -> bool {
        self.inner.is_version_not_found_definitive()
    }

    fn propagate_commit_error_after_success(&self) -> bool {
        self.inner.propagate_commit_error_after_success()
    }

    /// As Lance finds it; remembered for the question asked ahead.
    async fn resolve_latest_location(&self, base_path: &Path, object_store: &ObjectStore) -> Result<ManifestLocation> {
        let found = self.inner.resolve_latest_location(base_path, object_store).await?;
        if let Some(ahead) = &self.ahead {
            ahead.found(&found);
        }
        Ok(found)
    }

    /// The one version we know, without a request; any other as Lance finds
    /// it, but by reading its V2 manifest's tail rather than HEADing it: the
    /// same round trip tells its size, and brings the bytes Lance reads next
    /// (its prefetch of a manifest's last 64 KiB), which sluice's store
    /// remembers (`remembered_manifests.rs`): one round trip, not two, for a
    /// writer's commit that lost its race to check who won. Not there as V2:
    /// the V1 name, as Lance's own handler answers then.
    async fn resolve_version_location(&self, base_path: &Path, version: u64, object_store: &dyn OSObjectStore) -> Result<ManifestLocation> {
        let Some(known) = self.known.as_ref().filter(|k| k.version == version) else {
            if lance_table::format::is_detached_version(version) {
                return self.inner.resolve_version_location(base_path, version, object_store).await;
            }
            let path = ManifestNamingScheme::V2.manifest_path(base_path, version);
            let tail = GetOptions { range: Some(GetRange::Suffix(PREFETCH)), ..Default::default() };
            return match object_store.get_opts(&path, tail).await {
                // The body is already in memory (the store remembered it).
                Ok(got) => Ok(ManifestLocation { version, path, size: Some(got.meta.size), naming_scheme: ManifestNamingScheme::V2, e_tag: got.meta.e_tag, identity: None }),
                Err(object_store::Error::NotFound { .. }) => {
                    let v1 = ManifestNamingScheme::V1;
                    Ok(ManifestLocation { version, path: v1.manifest_path(base_path, version), size: None, naming_scheme: v1, e_tag: None, identity: None })
                }
                Err(e) => Err(e.into()),
            };
        };
        Ok(ManifestLocation {
            version,
            path: ManifestNamingScheme::V2.manifest_path(base_path, version),
            size: Some(known.size),
            naming_scheme: ManifestNamingScheme::V2,
            e_tag: known.e_tag.clone(),
            identity: None,
        })
    }

    async fn version_exists(&self, base_path: &Path, version: u64, object_store: &dyn OSObjectStore, naming_scheme: ManifestNamingScheme) -> Result<bool> {
        self.inner.version_exists(base_path, version, object_store, naming_scheme).await
    }

    fn list_detached_manifest_locations<'a>(&self, base_path: &Path, object_store: &'a ObjectStore) -> BoxStream<'a, Result<ManifestLocation>> {
        self.inner.list_detached_manifest_locations(base_path, object_store)
    }

    fn list_manifest_locations<'a>(&self, base_path: &Path, object_store: &'a ObjectStore, sorted_descending: bool) -> BoxStream<'a, Result<ManifestLocation>> {
        self.inner.list_manifest_locations(base_path, object_store, sorted_descending)
    }

    /// Nothing after `since_version`, if the question asked ahead found
    /// none; the very next version alone, where the question found it the
    /// latest (versions are dense: Lance writes each create-only after the
    /// one before); otherwise (an older latest, an error, nothing asked) as
    /// Lance lists it.
    fn list_manifest_locations_since<'a>(&self, base_path: &Path, object_store: &'a ObjectStore, since_version: u64) -> BoxStream<'a, Result<ManifestLocation>> {
        let Some((ahead, latest)) = self.ahead.as_ref().and_then(|a| a.take(since_version).map(|l| (a.clone(), l))) else {
            return self.inner.list_manifest_locations_since(base_path, object_store, since_version);
        };
        let (inner, base) = (Arc::clone(&self.inner), base_path.clone());
        futures::stream::once(async move {
            let latest = latest.await.ok().and_then(|l| l.ok());
            match latest {
                Some(latest) if latest == since_version => {
                    tracing::debug!(version = since_version, "nothing after the read version, as asked ahead of the commit");
                    futures::stream::empty().boxed()
                }
                Some(latest) if latest == since_version + 1 && let Some(at) = ahead.found_at(latest) => {
                    tracing::debug!(version = since_version, latest, "only the next version after the read version, as asked ahead of the commit");
                    futures::stream::once(std::future::ready(Ok(at))).boxed()
                }
                _ => inner.list_manifest_locations_since(&base, object_store, since_version),
            }
        })
        .flatten()
        .boxed()
    }

    async fn commit(
        &self,
        manifest: &mut Manifest,
        indices: Option<Vec<IndexMetadata>>,
        base_path: &Path,
        object_store: &ObjectStore,
        manifest_writer: ManifestWriter,
        naming_scheme: ManifestNamingScheme,
        transaction: Option<Transaction>,
    ) -> std::result::Result<ManifestLocation, CommitError> {
        self.inner.commit(manifest, indices, base_path, object_store, manifest_writer, naming_scheme, transaction).await
    }

    fn supports_predecessor_condition(&self) -> bool {
        self.inner.supports_predecessor_condition()
    }

    async fn resolve_latest_identity(&self, base_path: &Path, object_store: &ObjectStore) -> Result<Option<PredecessorIdentity>> {
        self.inner.resolve_latest_identity(base_path, object_store).await
    }

    async fn resolve_identity(&self, base_path: &Path, object_store: &ObjectStore, version: u64) -> Result<Option<PredecessorIdentity>> {
        self.inner.resolve_identity(base_path, object_store, version).await
    }

    async fn commit_after(
        &self,
        manifest: &mut Manifest,
        indices: Option<Vec<IndexMetadata>>,
        base_path: &Path,
        object_store: &ObjectStore,
        manifest_writer: ManifestWriter,
        naming_scheme: ManifestNamingScheme,
        transaction: Option<Transaction>,
        predecessor: &PredecessorIdentity,
    ) -> std::result::Result<ManifestLocation, CommitError> {
        self.inner.commit_after(manifest, indices, base_path, object_store, manifest_writer, naming_scheme, transaction, predecessor).await
    }

    async fn forget_version(&self, base_path: &Path, version: u64, identity: &str) -> Result<()> {
        self.inner.forget_version(base_path, version, identity).await
    }

    async fn delete(&self, base_path: &Path) -> Result<()> {
        self.inner.delete(base_path).await
    }
}
