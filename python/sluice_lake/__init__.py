"""Open a sluice lake's published snapshot in one call.

A Lance table's latest version may hold rows sluice has not published (an
ingest that died between its Lance commit and its publish, which recovery
will undo or finish). Readers see the published state by opening each table
at the version the lake's manifest pins; this package finds that manifest.

    import sluice_lake
    snap = sluice_lake.open("s3://bucket/lake")    # or a local path
    snap.version                                   # the manifest version
    orders = snap.dataset("orders")                # a lance.LanceDataset at its pin
    orders.to_table(filter="amount > 10")
    snap.datasets()                                # every table

polars: ``pl.scan_pyarrow_dataset(snap.dataset("orders"))``;
DuckDB: ``orders = snap.dataset("orders"); duckdb.sql("SELECT count(*) FROM orders")``;
LanceDB: ``snap.lancedb_table("orders")`` (needs ``lancedb``).

The manifest layout read here: ``_manifest/versions/<20-digit version>.json``
(immutable, one per version, dense above the oldest kept) and
``_manifest/latest.json`` (a copy of a recent version that may lag, never
lead). The latest version is the hint's, walked forward to the first miss.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Dict, Optional
from urllib.parse import urlparse

__all__ = ["open", "Snapshot", "TablePin", "NoLake"]

VERSIONS = "_manifest/versions"
LATEST_HINT = "_manifest/latest.json"
# A hint lags by a few versions at most; bound the walk all the same.
MAX_PROBES = 128


class NoLake(Exception):
    """The root holds no sluice lake (nothing was ever published there)."""


@dataclass(frozen=True)
class TablePin:
    name: str
    version: int
    mode: str
    key: Optional[str] = None
    indices: tuple = ()


@dataclass
class Snapshot:
    """One manifest version: every table at its pinned Lance version."""

    root: str
    version: int
    published_at: str
    tables: Dict[str, TablePin]
    storage_options: Optional[dict] = field(default=None, repr=False)

    def uri(self, table: str) -> str:
        return f"{self.root.rstrip('/')}/tables/{table}.lance"

    def _pin(self, table: str) -> TablePin:
        try:
            return self.tables[table]
        except KeyError:
            names = ", ".join(sorted(self.tables)) or "none"
            raise KeyError(f"no table '{table}' in manifest version {self.version} of {self.root} (tables: {names})") from None

    def dataset(self, table: str):
        """The table as a ``lance.LanceDataset`` at its published version."""
        import lance

        pin = self._pin(table)
        return lance.dataset(self.uri(table), version=pin.version, storage_options=self.storage_options)

    def datasets(self) -> dict:
        return {name: self.dataset(name) for name in self.tables}

    def lancedb_table(self, table: str):
        """The table through LanceDB, checked out at its published version."""
        import lancedb

        pin = self._pin(table)
        db = lancedb.connect(f"{self.root.rstrip('/')}/tables", storage_options=self.storage_options)
        t = db.open_table(table)
        t.checkout(pin.version)
        return t


def open(root: str, storage_options: Optional[dict] = None) -> Snapshot:  # noqa: A001 - the one entry point
    """The lake's latest published snapshot.

    ``storage_options`` are pylance's (``endpoint``, ``region``,
    ``aws_access_key_id``, ``allow_http``, ...); by default S3 credentials,
    region and endpoint come from the usual ``AWS_*`` environment variables.
    """
    store = _Store(root, storage_options)
    version = _latest_version(store)
    if version is None:
        raise NoLake(f"no sluice lake at {root}: {VERSIONS}/ is empty (nothing published yet?)")
    doc = store.read_json(_version_path(version))
    if doc is None:
        raise RuntimeError(f"{root}: manifest version {version} vanished while being read (cleaned up?); open again")
    tables = {
        name: TablePin(name=name, version=int(t["version"]), mode=t.get("mode", "append"), key=t.get("key"),
                       indices=tuple(t.get("indices", ())))
        for name, t in doc.get("tables", {}).items()
    }
    return Snapshot(root=root, version=int(doc["version"]), published_at=doc.get("published_at", ""), tables=tables,
                    storage_options=storage_options)


def _version_path(version: int) -> str:
    return f"{VERSIONS}/{version:020d}.json"


def _latest_version(store: "_Store") -> Optional[int]:
    hint = store.read_json(LATEST_HINT)
    if hint is not None:
        known = int(hint["version"])
    else:
        listed = store.list_names(VERSIONS)
        numbers = [int(n[:-5]) for n in listed if n.endswith(".json") and n[:-5].isdigit()]
        if not numbers:
            return None
        known = max(numbers)
    # Gallop forward (1, 2, 4, ...) to a miss, then restart from the furthest hit.
    for _ in range(MAX_PROBES):
        step, moved = 1, False
        while store.exists(_version_path(known + step)):
            known, moved = known + step, True
            step *= 2
        if not moved:
            return known
    raise RuntimeError(f"{store.root}: the manifest kept moving for {MAX_PROBES} rounds of probes; open again")


class _Store:
    """Just enough of an object store: GET, HEAD and LIST through pyarrow.fs."""

    def __init__(self, root: str, storage_options: Optional[dict]):
        import pyarrow.fs as pafs

        self.root = root
        parsed = urlparse(root)
        if parsed.scheme == "s3":
            opts = {k.lower(): v for k, v in (storage_options or {}).items()}
            endpoint = opts.get("endpoint") or opts.get("aws_endpoint") or os.environ.get("AWS_ENDPOINT_URL_S3") \
                or os.environ.get("AWS_ENDPOINT_URL")
            kwargs = {}
            if endpoint:
                ep = urlparse(endpoint)
                kwargs["endpoint_override"] = ep.netloc or ep.path
                kwargs["scheme"] = ep.scheme or "https"
            region = opts.get("region") or opts.get("aws_region") or os.environ.get("AWS_REGION") \
                or os.environ.get("AWS_DEFAULT_REGION")
            if region:
                kwargs["region"] = region
            key = opts.get("aws_access_key_id") or opts.get("access_key_id")
            secret = opts.get("aws_secret_access_key") or opts.get("secret_access_key")
            if key and secret:
                kwargs["access_key"], kwargs["secret_key"] = key, secret
                token = opts.get("aws_session_token") or opts.get("session_token")
                if token:
                    kwargs["session_token"] = token
            self.fs = pafs.S3FileSystem(**kwargs)
            self.base = f"{parsed.netloc}{parsed.path}".rstrip("/")
        elif parsed.scheme in ("", "file"):
            self.fs = pafs.LocalFileSystem()
            self.base = os.path.abspath(parsed.path if parsed.scheme == "file" else root).rstrip("/")
        else:
            raise ValueError(f"{root}: sluice_lake reads local paths and s3:// roots")

    def _path(self, rel: str) -> str:
        return f"{self.base}/{rel}"

    def read_json(self, rel: str):
        import pyarrow as pa

        try:
            with self.fs.open_input_stream(self._path(rel)) as f:
                return json.loads(f.read())
        except (FileNotFoundError, pa.lib.ArrowIOError) as e:  # pyarrow reports a missing S3 object as OSError
            if self.exists(rel):
                raise RuntimeError(f"{self.root}: cannot read {rel}: {e}") from e
            return None

    def exists(self, rel: str) -> bool:
        import pyarrow.fs as pafs

        return self.fs.get_file_info(self._path(rel)).type != pafs.FileType.NotFound

    def list_names(self, rel: str) -> list:
        import pyarrow.fs as pafs

        selector = pafs.FileSelector(self._path(rel), allow_not_found=True)
        return [info.base_name for info in self.fs.get_file_info(selector)]
