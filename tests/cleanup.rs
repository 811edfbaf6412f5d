//! Cleanup against real processes: what it may take, and what it must leave.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use lance::io::WrappingObjectStore;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use sluice::Lake;
use sluice::hide_newer::HideNewer;
use sluice::failpoints::*;

use crate::common::*;

/// Data files of `table` in the store, and those its Lance HEAD references (file names).
fn data_files(root: &str, table: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let lake = Lake::open(root).unwrap();
        let dir = lake.path(&format!("tables/{table}.lance/data"));
        let listed: Vec<_> = lake.store().list(Some(&dir)).try_collect().await.unwrap();
        let listed = listed.iter().map(|m| m.location.filename().unwrap().to_string()).collect();
        let ds = lake.open_table(table, None).await.unwrap();
        let referenced = ds
            .get_fragments()
            .iter()
            .flat_map(|f| f.metadata().files.iter().map(|d| d.path.rsplit('/').next().unwrap().to_string()).collect::<Vec<_>>())
            .collect();
        (listed, referenced)
    })
}

/// Index files of `table` in the store, and those its Lance HEAD's indices use.
fn index_dirs(root: &str, table: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    use lance::index::DatasetIndexExt;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let lake = Lake::open(root).unwrap();
        let dir = lake.path(&format!("tables/{table}.lance/_indices"));
        let listed: Vec<_> = lake.store().list(Some(&dir)).try_collect().await.unwrap();
        let prefix = dir.parts().count();
        let listed = listed.iter().filter_map(|m| m.location.parts().nth(prefix).map(|p| p.as_ref().to_string())).collect();
        let ds = lake.open_table(table, None).await.unwrap();
        let used = ds.load_indices().await.unwrap().iter().map(|i| i.uuid.to_string()).collect();
        (listed, used)
    })
}

fn orphans(root: &str, table: &str) -> usize {
    let (listed, referenced) = data_files(root, table);
    assert!(referenced.is_subset(&listed), "a referenced data file is missing: {referenced:?} vs {listed:?}");
    listed.difference(&referenced).count()
}

fn cleanup(root: &str, args: &[&str]) -> serde_json::Value {
    let out = run(sluice(root).args(["--json", "--clock-skew", "0s", "cleanup"]).args(args));
    assert_eq!(out.status.code(), Some(0), "cleanup failed");
    json(&out)
}

fn table_report<'a>(report: &'a serde_json::Value, table: &str) -> &'a serde_json::Value {
    report["tables"].as_array().unwrap().iter().find(|t| t["table"] == table).unwrap()
}

#[tokio::test]
async fn hide_newer_hides_new_files_but_never_manifests() {
    let memory: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    memory.put(&Path::from("t/data/old.lance"), PutPayload::from_static(b"x")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let cutoff = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    memory.put(&Path::from("t/data/new.lance"), PutPayload::from_static(b"x")).await.unwrap();
    memory.put(&Path::from("t/_versions/2.manifest"), PutPayload::from_static(b"x")).await.unwrap();
    let store = HideNewer { cutoff }.wrap("", memory);
    let mut listed: Vec<String> = store.list(Some(&Path::from("t"))).map_ok(|m| m.location.to_string()).try_collect().await.unwrap();
    listed.sort();
    assert_eq!(listed, ["t/_versions/2.manifest", "t/data/old.lance"]);
    let offset: Vec<_> = store.list_with_offset(Some(&Path::from("t")), &Path::from("t/_")).try_collect().await.unwrap();
    assert_eq!(offset.len(), 2);
    assert_eq!(store.list_with_delimiter(Some(&Path::from("t/data"))).await.unwrap().objects.len(), 1);
}

/// Two writers killed with their files written but uncommitted, and one that
/// gave up there: cleanup decides the dead ones and removes all three's files
/// in the same run. A live writer standing at the same step keeps its files,
/// commits them afterwards, and its rows are readable. A dry run changes nothing.
#[test]
fn cleanup_reclaims_dead_writers_files_but_not_a_live_writers() {
    for b in shared_backends() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..3 {
            let f = jsonl(dir.path(), &format!("base-{i}.jsonl"), i * 10..i * 10 + 10);
            assert_eq!(run(sluice(&b.root).args(["ingest", "--table", "t"]).arg(&f)).status.code(), Some(0));
        }
        let dead: Vec<_> = (3..5).map(|i| jsonl(dir.path(), &format!("dead-{i}.jsonl"), i * 10..i * 10 + 10)).collect();
        for f in &dead {
            kill_9_at(sluice(&b.root).args(["ingest", "--timeout", "2s", "--table", "t"]).arg(f), BEFORE_COMMIT);
        }
        let gave_up = jsonl(dir.path(), "gave-up.jsonl", 50..60);
        let out = run(sluice(&b.root).args(["ingest", "--table", "t"]).arg(&gave_up).env("FAILPOINTS", format!("{BEFORE_COMMIT}=return")));
        assert_eq!(out.status.code(), Some(1));
        // The dead writers' deadlines pass, and their files are clearly older than the live writer's intent.
        std::thread::sleep(Duration::from_secs(3));
        let live_file = jsonl(dir.path(), "live.jsonl", 60..70);
        let live = hold_at(sluice(&b.root).args(["--clock-skew", "0s", "ingest", "--table", "t"]).arg(&live_file), BEFORE_COMMIT);
        assert_eq!(orphans(&b.root, "t"), 4, "{}: three dead writers' files and the live one's", b.name);

        let planned = cleanup(&b.root, &["--dry-run"]);
        assert_eq!(orphans(&b.root, "t"), 4, "{}: the dry run removed nothing", b.name);
        assert_eq!(table_report(&planned, "t")["data_files_removed"], 3, "{}: {planned}", b.name);

        let done = cleanup(&b.root, &[]);
        let t = table_report(&done, "t");
        assert_eq!(t["data_files_removed"], 3, "{}: {done}", b.name);
        assert!(t["bytes_removed"].as_u64().unwrap() > 0, "{}", b.name);
        assert_eq!(orphans(&b.root, "t"), 1, "{}: only the live writer's file is left unreferenced", b.name);

        live.release();
        assert_eq!(live.wait_with_output().status.code(), Some(0), "{}: the live writer commits its files", b.name);
        assert_eq!(orphans(&b.root, "t"), 0, "{}", b.name);
        for f in dead.iter().chain([&gave_up]) {
            assert_eq!(run(sluice(&b.root).args(["ingest", "--table", "t"]).arg(f)).status.code(), Some(0), "{}: redelivery", b.name);
        }
        assert_eq!(scan_ids(&b.root, "t"), (0..70).collect::<Vec<_>>(), "{}: every row exactly once", b.name);
        assert_eq!(pending(&b.root), 0, "{}", b.name);

        // Spent sidecars: the dead writers' audit records go once past --keep-audit.
        assert_eq!(json(&run(sluice(&b.root).args(["--json", "audit"]))).as_array().unwrap().len(), 2, "{}", b.name);
        let trimmed = cleanup(&b.root, &["--keep-audit", "0s"]);
        assert_eq!(trimmed["sidecars"]["audit_records"], 2, "{}: {trimmed}", b.name);
        assert_eq!(json(&run(sluice(&b.root).args(["--json", "audit"]))).as_array().unwrap().len(), 0, "{}", b.name);
        assert_eq!(table_report(&trimmed, "t")["data_files_removed"], 0, "{}: nothing more to reclaim", b.name);
    }
}

/// A writer passes its last deadline check and stalls just before creating
/// manifest version k, for longer than the retention floor, while others
/// publish k and k+1 and cleanup removes k. When it goes on, its create-only
/// PUT of k succeeds, on an empty name. It must notice that k was cleaned up
/// (its base is too old to rule that out) and remove its ghost; being past
/// its deadline it then stops, and recovery publishes its decided commit on
/// top: its rows end up in the latest version, which is not the ghost.
#[test]
fn a_writer_stalled_past_cleanup_cannot_resurrect_a_manifest_version() {
    for b in shared_backends() {
        let dir = tempfile::tempdir().unwrap();
        let floor = |cmd: &mut std::process::Command| {
            cmd.env("SLUICE_RETENTION_FLOOR", "3s");
        };
        for i in 0..2 {
            let f = jsonl(dir.path(), &format!("base-{i}.jsonl"), i * 10..i * 10 + 10);
            assert_eq!(run(sluice(&b.root).args(["ingest", "--table", "t"]).arg(&f)).status.code(), Some(0));
        }
        let base = status(&b.root)["manifest_version"].as_u64().unwrap();
        let stalled_file = jsonl(dir.path(), "stalled.jsonl", 100..110);
        let mut cmd = sluice(&b.root);
        floor(cmd.args(["--json", "--clock-skew", "0s", "ingest", "--timeout", "3s", "--table", "t"]).arg(&stalled_file));
        let stalled = hold_at(&mut cmd, BEFORE_PUBLISH);
        // Another table, so that nobody else's pin covers the stalled writer's commit.
        for i in 2..4 {
            let f = jsonl(dir.path(), &format!("other-{i}.jsonl"), i * 10..i * 10 + 10);
            assert_eq!(run(sluice(&b.root).args(["ingest", "--table", "u"]).arg(&f)).status.code(), Some(0));
        }
        std::thread::sleep(std::time::Duration::from_millis(3500));
        // (Cleanup's own sweep leaves the writer alone: its skew keeps it alive.)
        let mut cmd = sluice(&b.root);
        floor(cmd.args(["--json", "cleanup", "--keep", "3s", "--keep-versions", "1"]));
        let cleaned = json(&run(&mut cmd));
        assert_eq!(cleaned["manifest"]["oldest_kept"], base + 2, "{cleaned}");
        assert_eq!(read_version(&b.root, base + 1), None, "{}: the version the stalled writer will create is gone", b.name);

        stalled.release();
        let out = stalled.wait_with_output();
        assert_eq!(out.status.code(), Some(1), "{}: past its deadline, the writer stops after removing its ghost", b.name);
        assert_eq!(read_version(&b.root, base + 1), None, "{}: its ghost of version {} was removed", b.name, base + 1);
        sweep_until_clean(&b.root, std::time::Duration::from_secs(30));
        let latest = status(&b.root)["manifest_version"].as_u64().unwrap();
        assert_eq!(latest, base + 3, "{}: recovery published on top of the others", b.name);
        let want: Vec<i64> = (0..20).chain(100..110).collect();
        assert_eq!(scan_ids(&b.root, "t"), want, "{}: its rows are visible in the latest version", b.name);
        assert_eq!(scan_ids(&b.root, "u"), (20..40).collect::<Vec<_>>(), "{}", b.name);
    }
}

fn read_version(root: &str, version: u64) -> Option<u64> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(sluice::manifest::read_version(&Lake::open(root).unwrap(), version)).unwrap().map(|m| m.version)
}

/// A reader opens an old manifest version (still kept) and stops before
/// reading any data; the table is compacted, more is ingested, and cleanup
/// removes every older version. The reader's files were referenced only by
/// versions before the compaction, which cleanup must keep: the read completes.
#[test]
fn cleanup_while_a_reader_scans_an_old_manifest_version() {
    for b in shared_backends() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..4 {
            let f = jsonl(dir.path(), &format!("a-{i}.jsonl"), i * 10..i * 10 + 10);
            assert_eq!(run(sluice(&b.root).args(["ingest", "--table", "t"]).arg(&f)).status.code(), Some(0));
        }
        let at = status(&b.root)["manifest_version"].as_u64().unwrap();
        let reader = hold_at(sluice(&b.root).args(["scan", "t", "--at", &at.to_string()]), SCAN_AFTER_OPEN);
        assert_eq!(run(sluice(&b.root).args(["optimize", "t"])).status.code(), Some(0));
        for i in 4..6 {
            let f = jsonl(dir.path(), &format!("a-{i}.jsonl"), i * 10..i * 10 + 10);
            assert_eq!(run(sluice(&b.root).args(["ingest", "--table", "t"]).arg(&f)).status.code(), Some(0));
        }
        let latest = status(&b.root)["manifest_version"].as_u64().unwrap();
        let keep = (latest - at + 1).to_string();
        let cleaned = cleanup(&b.root, &["--retention-floor", "0s", "--keep", "0s", "--keep-versions", &keep]);
        assert_eq!(cleaned["manifest"]["oldest_kept"], at, "{}: {cleaned}", b.name);
        assert!(cleaned["manifest"]["removed"].as_u64().unwrap() > 0, "{}", b.name);
        assert!(table_report(&cleaned, "t")["lance_versions_removed"].as_u64().unwrap() > 0, "{}: older versions went", b.name);

        reader.release();
        let out = reader.wait_with_output();
        assert_eq!(out.status.code(), Some(0), "{}: the read completes", b.name);
        let mut ids: Vec<i64> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_i64().unwrap())
            .collect();
        ids.sort();
        assert_eq!(ids, (0..40).collect::<Vec<_>>(), "{}: every row of the old version", b.name);
        assert_eq!(scan_ids(&b.root, "t"), (0..60).collect::<Vec<_>>(), "{}", b.name);

        // Once that version is past retention too, its files go (files younger
        // than the orphan cutoff, the clock skew plus a second, wait for a later run).
        std::thread::sleep(Duration::from_secs(2));
        let again = cleanup(&b.root, &["--retention-floor", "0s", "--keep", "0s", "--keep-versions", "1"]);
        assert!(table_report(&again, "t")["data_files_removed"].as_u64().unwrap() >= 4, "{}: {again}", b.name);
        assert_eq!(scan_ids(&b.root, "t"), (0..60).collect::<Vec<_>>(), "{}", b.name);
        let usage = run(sluice(&b.root).args(["cleanup", "--keep", "1m"]));
        assert_eq!(usage.status.code(), Some(2), "{}: --keep below the retention floor is refused", b.name);
    }
}

/// A dead index build's files (written, never committed) go with the first
/// cleanup after its attempt is decided, like a dead writer's data files; the
/// indices in use stay.
#[test]
fn cleanup_reclaims_a_dead_index_builds_files() {
    for b in shared_backends() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..2 {
            let f = jsonl(dir.path(), &format!("base-{i}.jsonl"), i * 10..i * 10 + 10);
            assert_eq!(run(sluice(&b.root).args(["ingest", "--table", "t"]).arg(&f)).status.code(), Some(0));
        }
        assert_eq!(run(sluice(&b.root).args(["index", "create", "t", "id", "--type", "btree"])).status.code(), Some(0));
        kill_9_at(sluice(&b.root).args(["index", "create", "t", "name", "--type", "bitmap", "--timeout", "2s"]), INDEX_AFTER_BUILD);
        let (listed, used) = index_dirs(&b.root, "t");
        assert_eq!((listed.len(), used.len()), (2, 1), "{}: the dead build's files are there: {listed:?}", b.name);
        std::thread::sleep(Duration::from_secs(3));
        let done = cleanup(&b.root, &[]);
        assert!(table_report(&done, "t")["other_files_removed"].as_u64().unwrap() > 0, "{}: {done}", b.name);
        let (listed, used) = index_dirs(&b.root, "t");
        assert_eq!(listed, used, "{}: only the index in use is left", b.name);
        assert_eq!(pending(&b.root), 0, "{}: recovery decided the dead build first", b.name);
        let names: Vec<String> = json(&run(sluice(&b.root).args(["--json", "index", "list"]))).as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap().to_string()).collect();
        assert_eq!(names, vec!["id_idx"], "{}", b.name);
    }
}
