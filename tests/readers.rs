//! Readers in the user's own tools: the Python package in `python/` opens
//! the published snapshot through pylance 14, so a killed, unpublished ingest
//! stays invisible, while Lance's own default (latest) shows its rows, and
//! every commit's transaction, kept only inside its manifest, reads back.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;

fn package_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../python")
}

/// What `sluice_lake.open(root)` shows, imported from `site` (a folder that
/// holds the package).
fn snapshot(python: &Path, site: &Path, root: &str) -> serde_json::Value {
    let script = format!(
        r#"{PYLANCE_PRELUDE}
import json, sys
sys.path.insert(0, sys.argv[1])
import lance, sluice_lake
root = sys.argv[2]
snap = sluice_lake.open(root, storage_options(root))
latest = lance.dataset(snap.uri("t"), storage_options=storage_options(root))
txns = latest.get_transactions()
try:
    snap.dataset("nope")
    missing = ""
except KeyError as e:
    missing = str(e)
print(json.dumps({{
    "version": snap.version,
    "pins": {{n: p.version for n, p in snap.tables.items()}},
    "rows": {{n: ds.count_rows() for n, ds in snap.datasets().items()}},
    "ids": sorted(snap.dataset("t").to_table(columns=["id"]).column("id").to_pylist()),
    "latest_rows": latest.count_rows(),
    "latest_version": latest.version,
    "transactions": len(txns),
    "unattributed": sum(1 for t in txns if not (t and (t.transaction_properties or {{}}).get("sluice.op"))),
    "missing": missing,
}}))
"#
    );
    let out = Command::new(python).args(["-c", &script]).arg(site).arg(root).output().unwrap();
    assert!(out.status.success(), "python: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_python_package_opens_the_published_snapshot() {
    let python = pylance().expect("pylance 14.0.2 in the test virtualenv (scripts/test.sh installs it)");
    // Installable with pip from the repository (built from a copy: pip builds in the tree).
    let copy = tempfile::tempdir().unwrap();
    std::fs::create_dir(copy.path().join("sluice_lake")).unwrap();
    for file in ["pyproject.toml", "README.md", "sluice_lake/__init__.py"] {
        std::fs::copy(package_dir().join(file), copy.path().join(file)).unwrap();
    }
    let site = tempfile::tempdir().unwrap();
    let out = Command::new(&python)
        .args(["-m", "pip", "install", "-q", "--no-deps", "--target"])
        .arg(site.path())
        .arg(copy.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "pip install ./python: {}", String::from_utf8_lossy(&out.stderr));

    for b in shared_backends() {
        let dir = tempfile::tempdir().unwrap();
        let a = jsonl(dir.path(), "a.jsonl", 0..10);
        let u = jsonl(dir.path(), "u.jsonl", 100..105);
        assert_eq!(run(sluice(&b.root).args(["ingest", "--table", "t"]).arg(&a)).status.code(), Some(0));
        assert_eq!(run(sluice(&b.root).args(["ingest", "--table", "u"]).arg(&u)).status.code(), Some(0));
        // Killed after its Lance commit, before its publish.
        let late = jsonl(dir.path(), "late.jsonl", 10..20);
        kill_9_at(sluice(&b.root).args(["ingest", "--table", "t", "--timeout", "3s"]).arg(&late), "ingest.after-commit");

        let s = status(&b.root);
        let snap = snapshot(&python, site.path(), &b.root);
        assert_eq!(snap["version"], s["manifest_version"], "{}: {snap}", b.name);
        assert_eq!(snap["rows"], serde_json::json!({"t": 10, "u": 5}), "{}: {snap}", b.name);
        assert_eq!(snap["ids"], serde_json::json!((0..10).collect::<Vec<_>>()), "{}", b.name);
        assert_eq!(snap["latest_rows"], 20, "{}: Lance's latest holds the unpublished commit", b.name);
        // Each commit's transaction is read from inside its manifest (on S3
        // sluice writes no separate transaction file), with sluice's tags.
        assert_eq!((&snap["transactions"], &snap["unattributed"]), (&snap["latest_version"], &0.into()), "{}: {snap}", b.name);
        assert!(snap["missing"].as_str().unwrap().contains("tables: t, u"), "{}: {snap}", b.name);

        // Recovery finishes the dead ingest; the next snapshot shows it.
        sweep_until_clean(&b.root, std::time::Duration::from_secs(60));
        let snap = snapshot(&python, site.path(), &b.root);
        assert_eq!(snap["version"], status(&b.root)["manifest_version"], "{}", b.name);
        assert_eq!(snap["rows"]["t"], 20, "{}: {snap}", b.name);
    }
}
