//! Opening a pinned Lance version without Lance's HEAD.
//!
//! To open version `v`, Lance first HEADs `_versions/<v>.manifest` for its
//! naming scheme and size, then reads it: two round trips in sequence on S3.
//! A pin that carries the manifest file's size (recorded by the writer from its
//! commit, [`LanceManifest`]) lets [`KnownManifest`] answer that HEAD
//! itself: a commit handler that knows where one version lives and hands
//! everything else, commits included, to Lance's own handler for the table.
//!
//! A manifest file is written once (create-only) and never rewritten, so the
//! record stays true while the file exists: sluice never removes a table and
//! makes it again at the same address. (Were a record wrong, Lance's reader
//! would find no magic where it says the file ends and read it again by HEAD,
//! or fail, and `Lake::open_known` then opens the version as Lance finds it.)
//! Branches and tags (other base paths) are not used by sluice.

use std::sync::Arc;

use futures::stream::BoxStream;
use lance::io::ObjectStore;
use lance::table::format::{IndexMetadata, Manifest, Transaction};
use lance::Result;
use lance_table::io::commit::{CommitError, CommitHandler, ManifestLocation, ManifestNamingScheme, ManifestWriter, PredecessorIdentity};
use object_store::ObjectStore as OSObjectStore;
use object_store::path::Path;
use serde::{Deserialize, Serialize};

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
        let at = ds.manifest_location();
        let v2 = at.naming_scheme == ManifestNamingScheme::V2;
        at.size.filter(|_| v2 && at.version == ds.version().version).map(|size| LanceManifest { version: at.version, size, e_tag: at.e_tag.clone() })
    }
}

/// Lance's commit handler for a table, plus where one version's manifest is.
#[derive(Debug)]
pub(crate) struct KnownManifest {
    inner: Arc<dyn CommitHandler>,
    known: LanceManifest,
}

impl KnownManifest {
    /// The handler Lance would use for `table_uri`, knowing `known`.
    pub(crate) async fn for_table(table_uri: &str, known: LanceManifest) -> Result<Arc<dyn CommitHandler>> {
        let inner = lance_table::io::commit::commit_handler_from_url(table_uri, &None).await?;
        Ok(Arc::new(KnownManifest { inner, known }))
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

    async fn resolve_latest_location(&self, base_path: &Path, object_store: &ObjectStore) -> Result<ManifestLocation> {
        self.inner.resolve_latest_location(base_path, object_store).await
    }

    /// The one version we know, without a request; any other as Lance finds it.
    async fn resolve_version_location(&self, base_path: &Path, version: u64, object_store: &dyn OSObjectStore) -> Result<ManifestLocation> {
        if version != self.known.version {
            return self.inner.resolve_version_location(base_path, version, object_store).await;
        }
        Ok(ManifestLocation {
            version,
            path: ManifestNamingScheme::V2.manifest_path(base_path, version),
            size: Some(self.known.size),
            naming_scheme: ManifestNamingScheme::V2,
            e_tag: self.known.e_tag.clone(),
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

    fn list_manifest_locations_since<'a>(&self, base_path: &Path, object_store: &'a ObjectStore, since_version: u64) -> BoxStream<'a, Result<ManifestLocation>> {
        self.inner.list_manifest_locations_since(base_path, object_store, since_version)
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
