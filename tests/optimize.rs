//! Compaction through the door, against real processes.

use std::time::Duration;

use crate::common::*;

fn fragments(root: &str, table: &str) -> u64 {
    status(root)["tables"].as_array().unwrap().iter().find(|t| t["name"] == table).unwrap()["fragments"].as_u64().unwrap()
}

fn small_ingests(root: &str, dir: &std::path::Path, table: &str, from: i64, n: i64) {
    for i in 0..n {
        let f = jsonl(dir, &format!("{table}-{}.jsonl", from + i), (from + i) * 10..(from + i) * 10 + 10);
        assert_eq!(run(sluice(root).args(["ingest", "--table", table]).arg(&f)).status.code(), Some(0));
    }
}

/// Twelve small fragments become one; the rows are the same; a dry run
/// changes nothing; a second run has nothing to do.
#[test]
fn optimize_compacts_small_fragments_and_keeps_every_row() {
    for b in shared_backends() {
        let dir = tempfile::tempdir().unwrap();
        small_ingests(&b.root, dir.path(), "t", 0, 12);
        assert_eq!(fragments(&b.root, "t"), 12, "{}", b.name);
        let planned = json(&run(sluice(&b.root).args(["--json", "optimize", "--dry-run"])));
        assert_eq!(planned["tables"][0]["action"], "planned", "{}: {planned}", b.name);
        assert_eq!(fragments(&b.root, "t"), 12, "{}: the dry run changed nothing", b.name);

        let done = json(&run(sluice(&b.root).args(["--json", "optimize", "t"])));
        assert_eq!(done["tables"][0]["action"], "compacted", "{}: {done}", b.name);
        assert_eq!(fragments(&b.root, "t"), 1, "{}", b.name);
        assert_eq!(scan_ids(&b.root, "t"), (0..120).collect::<Vec<_>>(), "{}", b.name);
        let again = json(&run(sluice(&b.root).args(["--json", "optimize"])));
        assert_eq!(again["tables"][0]["action"], "nothing_to_do", "{}", b.name);
        assert_eq!(pending(&b.root), 0, "{}", b.name);
    }
}

/// Optimize runs while 4 processes keep ingesting into the same table, and
/// two optimizers run at once: every ingest succeeds, every row is there
/// exactly once, the optimizers succeed or converge.
#[test]
fn optimize_while_four_processes_ingest_and_another_optimizes() {
    for b in shared_backends() {
        let dir = tempfile::tempdir().unwrap();
        small_ingests(&b.root, dir.path(), "t", 0, 8);
        std::thread::scope(|s| {
            for w in 0..4i64 {
                let (root, dir) = (b.root.clone(), dir.path().to_path_buf());
                s.spawn(move || small_ingests(&root, &dir, "t", 100 + w * 10, 4));
            }
            let optimizers: Vec<_> = (0..2)
                .map(|_| {
                    let root = b.root.clone();
                    s.spawn(move || {
                        for _ in 0..3 {
                            let out = run(sluice(&root).args(["--json", "optimize", "t", "--timeout", "60s"]));
                            assert_eq!(out.status.code(), Some(0), "an optimizer failed");
                        }
                    })
                })
                .collect();
            for o in optimizers {
                o.join().unwrap();
            }
        });
        let mut want: Vec<i64> = (0..80).collect();
        for w in 0..4i64 {
            for i in 0..4 {
                want.extend((100 + w * 10 + i) * 10..(100 + w * 10 + i) * 10 + 10);
            }
        }
        want.sort();
        assert_eq!(scan_ids(&b.root, "t"), want, "{}: every row exactly once", b.name);
        assert_eq!(pending(&b.root), 0, "{}", b.name);
        assert_eq!(run(sluice(&b.root).args(["optimize", "t"])).status.code(), Some(0));
        assert_eq!(fragments(&b.root, "t"), 1, "{}", b.name);
    }
}

/// A live load has committed table a and not yet decided. Optimize plans at
/// the pin, so it leaves the load's fragment out of its rewrite, and it must
/// not publish over the undecided commit: it waits to its deadline and fails,
/// showing nothing of the load. Once the load publishes, recovery rolls the
/// optimize forward; every row is there exactly once, and the load's fragment
/// was never merged into the compacted one.
#[test]
fn optimize_never_publishes_a_live_loads_undecided_commit() {
    for b in shared_backends() {
        let dir = tempfile::tempdir().unwrap();
        small_ingests(&b.root, dir.path(), "a", 0, 4);
        small_ingests(&b.root, dir.path(), "b", 10, 1);
        jsonl(dir.path(), "load-a.jsonl", 1000..1010);
        jsonl(dir.path(), "load-b.jsonl", 2000..2010);
        let d = write(dir.path(), "load.json", br#"{"tables": [{"table": "a", "sources": ["load-a.jsonl"]}, {"table": "b", "sources": ["load-b.jsonl"]}]}"#);
        let load = hold_at(sluice(&b.root).args(["load", "--timeout", "120s"]).arg(&d), sluice::failpoints::AFTER_COMMIT);

        let out = run(sluice(&b.root).args(["optimize", "a", "--timeout", "3s"]));
        assert_eq!(out.status.code(), Some(1), "{}: the optimizer cannot publish", b.name);
        assert!(String::from_utf8_lossy(&out.stderr).contains("undecided"), "{}", b.name);
        assert_eq!(scan_ids(&b.root, "a"), (0..40).collect::<Vec<_>>(), "{}: nothing of the load is visible", b.name);

        load.release();
        assert_eq!(load.wait_with_output().status.code(), Some(0), "{}: the load finishes", b.name);
        sweep_until_clean(&b.root, Duration::from_secs(60));
        let mut want: Vec<i64> = (0..40).chain(1000..1010).collect();
        want.sort();
        assert_eq!(scan_ids(&b.root, "a"), want, "{}: every row exactly once", b.name);
        assert_eq!(fragments(&b.root, "a"), 2, "{}: the compacted fragment and the load's own", b.name);
        assert_eq!(pending(&b.root), 0, "{}", b.name);
    }
}

fn table<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["tables"].as_array().unwrap().iter().find(|t| t["table"] == name).unwrap()
}

/// `--parallel 3` runs one table's six tasks in three `sluice` processes and
/// commits them once; another table has its own target; a bytes budget of one
/// byte still makes progress, one task per run.
#[test]
fn optimize_fans_out_over_processes_with_per_table_targets_and_a_bytes_budget() {
    for b in shared_backends() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["t", "u", "v"] {
            small_ingests(&b.root, dir.path(), name, 0, 12);
        }
        let out = run(sluice(&b.root).args(["--json", "optimize", "t", "u", "--parallel", "3", "--target-rows", "20", "--target-rows", "u=1000"]));
        assert_eq!(out.status.code(), Some(0), "{}", b.name);
        let report = json(&out);
        let t = table(&report, "t");
        assert_eq!((t["action"].as_str(), t["tasks"].as_u64(), t["workers"].as_u64()), (Some("compacted"), Some(6), Some(3)), "{}: {report}", b.name);
        assert_eq!(t["targets"]["target_rows"], 20, "{}", b.name);
        assert_eq!(table(&report, "u")["targets"]["target_rows"], 1000, "{}", b.name);
        assert_eq!((fragments(&b.root, "t"), fragments(&b.root, "u")), (6, 1), "{}", b.name);
        for name in ["t", "u"] {
            assert_eq!(scan_ids(&b.root, name), (0..120).collect::<Vec<_>>(), "{}: table {name} keeps every row", b.name);
        }
        assert_eq!(pending(&b.root), 0, "{}", b.name);

        for left in [11, 10] {
            let out = run(sluice(&b.root).args(["--json", "optimize", "v", "--target-rows", "20", "--max-bytes", "1"]));
            assert_eq!(table(&json(&out), "v")["tasks"], 1, "{}", b.name);
            assert_eq!(fragments(&b.root, "v"), left, "{}: one task per run", b.name);
        }
        assert_eq!(scan_ids(&b.root, "v"), (0..120).collect::<Vec<_>>(), "{}", b.name);
        let usage = run(sluice(&b.root).args(["optimize", "--target-rows", "t=lots"]));
        assert_eq!(usage.status.code(), Some(2), "{}", b.name);
    }
}
