//! Indices as table settings: declared through the door, built, searched,
//! kept across other writers' publishes, dropped; a dead index change is
//! finished or undone by recovery.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sluice::failpoints::{INDEX_AFTER_COMMIT, INDEX_AFTER_INTENT};

use crate::common::*;

const DIMS: usize = 16;

/// `n` rows from `first`: four clusters of vectors (cluster = id % 4, every
/// value near 10 × cluster), a text column and a category.
fn vectors(dir: &Path, name: &str, first: i64, n: i64) -> PathBuf {
    let mut out = String::new();
    for id in first..first + n {
        let c = id % 4;
        let v: Vec<String> = (0..DIMS).map(|d| format!("{:.3}", c as f64 * 10.0 + ((id * 7 + d as i64) % 10) as f64 / 10.0)).collect();
        let text = if c == 3 { "the blue moon" } else { "a green field" };
        out.push_str(&format!("{{\"id\": {id}, \"emb\": [{}], \"txt\": \"{text} {id}\", \"cat\": \"c{c}\"}}\n", v.join(", ")));
    }
    write(dir, name, out.as_bytes())
}

fn schema(dir: &Path) -> PathBuf {
    write(
        dir,
        "schema.json",
        format!(r#"{{"columns": [{{"name": "id", "type": "int64", "nullable": false}}, {{"name": "emb", "type": "vector({DIMS})"}}, {{"name": "txt", "type": "string"}}, {{"name": "cat", "type": "string"}}]}}"#).as_bytes(),
    )
}

/// What pylance 14 sees of `table` at Lance version `pin`: its indices, and
/// a vector search (through the index?) and a full-text search.
fn pylance_search(root: &str, table: &str, pin: u64) -> serde_json::Value {
    let python = pylance().expect("pylance 14.0.2 in the test virtualenv (scripts/test.sh installs it)");
    let script = format!(
        r#"{PYLANCE_PRELUDE}
import json, sys
import lance
root, table, pin = sys.argv[1], sys.argv[2], int(sys.argv[3])
ds = lance.dataset(f"{{root}}/tables/{{table}}.lance", version=pin, storage_options=storage_options(root))
q = {{"column": "emb", "q": [20.45] * {DIMS}, "k": 5, "nprobes": 4, "refine_factor": 5}}
plan = ds.scanner(nearest=q, columns=["id", "cat"]).explain_plan()
print(json.dumps({{
    "indices": sorted(i["name"] for i in ds.list_indices()),
    "uses_ann": "ANN" in plan,
    "nearest": ds.to_table(nearest=q, columns=["id", "cat"]).column("cat").to_pylist(),
    "moon": ds.to_table(full_text_query="moon", columns=["id"], limit=1000).num_rows,
}}))
"#
    );
    let out = std::process::Command::new(python).args(["-c", &script, root, table, &pin.to_string()]).output().unwrap();
    assert!(out.status.success(), "pylance: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn index_list(root: &str) -> Vec<serde_json::Value> {
    json(&run(sluice(root).args(["--json", "index", "list"]))).as_array().unwrap().clone()
}

fn lines(out: &std::process::Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn indices_are_declared_built_searched_kept_and_dropped() {
    for b in shared_backends() {
        let dir = tempfile::tempdir().unwrap();
        let first = vectors(dir.path(), "a.jsonl", 0, 600);
        assert_eq!(run(sluice(&b.root).args(["ingest", "--table", "t", "--schema"]).arg(schema(dir.path())).arg(&first)).status.code(), Some(0));
        for (column, kind) in [("emb", "ivf_pq"), ("id", "btree"), ("txt", "fts")] {
            let out = run(sluice(&b.root).args(["--json", "index", "create", "t", column, "--type", kind]));
            assert_eq!(out.status.code(), Some(0), "{}: {kind}", b.name);
            assert_eq!(json(&out)["outcome"], "done", "{}", b.name);
        }
        let list = index_list(&b.root);
        assert_eq!(list.len(), 3, "{}: {list:?}", b.name);
        assert!(list.iter().all(|i| i["built"] == true && i["rows_indexed"] == 600 && i["rows_unindexed"] == 0), "{}: {list:?}", b.name);

        // The nearest rows to a cluster-2 point are cluster-2 rows, closest first.
        let q = format!("[{}]", vec!["20.45"; DIMS].join(","));
        let out = run(sluice(&b.root).args(["search", "t", "--vector", &q, "--k", "5", "--columns", "id,cat", "--nprobes", "4", "--refine", "5"]));
        assert_eq!(out.status.code(), Some(0), "{}", b.name);
        let rows = lines(&out);
        assert_eq!(rows.len(), 5, "{}: {rows:?}", b.name);
        assert!(rows.iter().all(|r| r["cat"] == "c2"), "{}: {rows:?}", b.name);
        let d: Vec<f64> = rows.iter().map(|r| r["_distance"].as_f64().unwrap()).collect();
        assert!(d.windows(2).all(|w| w[0] <= w[1]), "{}: closest first: {d:?}", b.name);
        // Text search, and a filter.
        let rows = lines(&run(sluice(&b.root).args(["search", "t", "--text", "moon", "--k", "1000", "--columns", "id"])));
        assert_eq!(rows.len(), 150, "{}: every cluster-3 row mentions the moon", b.name);
        let rows = lines(&run(sluice(&b.root).args(["scan", "t", "--where", "id < 3 AND cat != 'c1'", "--columns", "id"])));
        assert_eq!(rows.iter().map(|r| r["id"].as_i64().unwrap()).collect::<Vec<_>>(), vec![0, 2], "{}", b.name);
        // pylance at the pin sees the same indices and searches through them.
        let pin = status(&b.root)["tables"][0]["pinned_version"].as_u64().unwrap();
        let seen = pylance_search(&b.root, "t", pin);
        assert_eq!(seen["indices"], serde_json::json!(["emb_idx", "id_idx", "txt_idx"]), "{}: {seen}", b.name);
        assert!(seen["uses_ann"].as_bool().unwrap(), "{}: the vector search goes through the index: {seen}", b.name);
        assert!(seen["nearest"].as_array().unwrap().iter().all(|c| c == "c2"), "{}: {seen}", b.name);
        assert_eq!(seen["moon"], 150, "{}: {seen}", b.name);

        // Another writer's publish keeps the settings; its rows are searched before optimize indexes them.
        let more = vectors(dir.path(), "b.jsonl", 600, 100);
        assert_eq!(run(sluice(&b.root).args(["ingest", "--table", "t"]).arg(&more)).status.code(), Some(0));
        let list = index_list(&b.root);
        assert_eq!(list.len(), 3, "{}: settings kept across an ingest: {list:?}", b.name);
        assert!(list.iter().all(|i| i["rows_unindexed"] == 100), "{}: {list:?}", b.name);
        let rows = lines(&run(sluice(&b.root).args(["search", "t", "--where", "id >= 600", "--vector", &q, "--k", "3", "--columns", "id"])));
        assert_eq!(rows.len(), 3, "{}: unindexed rows are found: {rows:?}", b.name);
        // One optimize indexes them all, and publishes it.
        let out = run(sluice(&b.root).args(["--json", "optimize"]));
        assert_eq!(out.status.code(), Some(0), "{}", b.name);
        assert_eq!(json(&out)["tables"][0]["indices"]["rows_unindexed_before"], 100, "{}", b.name);
        let list = index_list(&b.root);
        assert!(list.iter().all(|i| i["rows_indexed"] == 700 && i["rows_unindexed"] == 0), "{}: {list:?}", b.name);
        let rows = lines(&run(sluice(&b.root).args(["search", "t", "--where", "id >= 600", "--vector", &q, "--k", "3", "--columns", "id"])));
        assert_eq!(rows.len(), 3, "{}: found through the index: {rows:?}", b.name);
        let out = json(&run(sluice(&b.root).args(["--json", "optimize"])));
        assert!(out["tables"][0].get("indices").is_none(), "{}: nothing left to index: {out}", b.name);

        // The same request again is done; another under the same name is refused; a wrong column too.
        let out = run(sluice(&b.root).args(["--json", "index", "create", "t", "id", "--type", "btree"]));
        assert_eq!((out.status.code(), json(&out)["outcome"].clone()), (Some(0), "already_done".into()), "{}", b.name);
        let out = run(sluice(&b.root).args(["index", "create", "t", "id", "--type", "bitmap", "--name", "id_idx"]));
        assert_eq!(out.status.code(), Some(2), "{}", b.name);
        let out = run(sluice(&b.root).args(["index", "create", "t", "txt", "--type", "ivf_pq", "--name", "txt_vec"]));
        assert_eq!(out.status.code(), Some(2), "{}", b.name);
        assert!(String::from_utf8_lossy(&out.stderr).contains("vector(N)"), "{}", b.name);

        let out = run(sluice(&b.root).args(["index", "drop", "t", "id_idx"]));
        assert_eq!(out.status.code(), Some(0), "{}", b.name);
        let names: Vec<String> = index_list(&b.root).iter().map(|i| i["name"].as_str().unwrap().to_string()).collect();
        assert_eq!(names, vec!["emb_idx", "txt_idx"], "{}", b.name);
        assert_eq!(scan_ids(&b.root, "t").len(), 700, "{}: no index change touches a row", b.name);
        assert_eq!(pending(&b.root), 0, "{}", b.name);
    }
}

/// An index change killed after its Lance commit is finished by recovery
/// (declared and published); one killed before it is undone (nothing
/// declared). Until then each holds its table's maintenance claim: another
/// change of that table waits for it (and gives up within its own deadline).
#[test]
fn recovery_finishes_or_undoes_a_dead_index_change() {
    for b in shared_backends() {
        let dir = tempfile::tempdir().unwrap();
        for table in ["t", "u"] {
            let rows = vectors(dir.path(), &format!("{table}.jsonl"), 0, 300);
            assert_eq!(run(sluice(&b.root).args(["ingest", "--table", table, "--schema"]).arg(schema(dir.path())).arg(&rows)).status.code(), Some(0));
        }
        kill_9_at(sluice(&b.root).args(["index", "create", "t", "id", "--type", "btree", "--timeout", "2s"]), INDEX_AFTER_COMMIT);
        kill_9_at(sluice(&b.root).args(["index", "create", "u", "cat", "--type", "bitmap", "--timeout", "2s"]), INDEX_AFTER_INTENT);
        assert!(index_list(&b.root).is_empty(), "{}: nothing declared before recovery", b.name);
        let out = run(sluice(&b.root).args(["index", "create", "t", "cat", "--type", "bitmap", "--timeout", "2s"]));
        assert_eq!(out.status.code(), Some(1), "{}: the dead change still holds table t", b.name);
        assert!(String::from_utf8_lossy(&out.stderr).contains("still running"), "{}", b.name);
        std::thread::sleep(Duration::from_secs(2));
        let reports = sweep_until_clean(&b.root, Duration::from_secs(60));
        let names: Vec<String> = index_list(&b.root).iter().map(|i| format!("{}.{}", i["table"].as_str().unwrap(), i["name"].as_str().unwrap())).collect();
        assert_eq!(names, vec!["t.id_idx"], "{}: the committed change is published, the other undone: {reports:?}", b.name);
        assert_eq!(pending(&b.root), 0, "{}", b.name);
        // The undone one can be made again.
        assert_eq!(run(sluice(&b.root).args(["index", "create", "u", "cat", "--type", "bitmap"])).status.code(), Some(0), "{}", b.name);
        assert_eq!(index_list(&b.root).len(), 2, "{}", b.name);
        assert_eq!(scan_ids(&b.root, "t").len(), 300, "{}", b.name);
    }
}

/// Index maintenance while 4 processes ingest into the table and two
/// optimizers run at once: every ingest and optimize succeeds, every row is
/// there exactly once, and a last optimize leaves every row indexed.
#[test]
fn index_maintenance_while_four_processes_ingest_and_another_optimizes() {
    for b in shared_backends() {
        let dir = tempfile::tempdir().unwrap();
        let ingest = |root: &str, dir: &Path, from: i64, n: i64| {
            for i in from..from + n {
                let f = jsonl(dir, &format!("t-{i}.jsonl"), i * 10..i * 10 + 10);
                assert_eq!(run(sluice(root).args(["ingest", "--table", "t"]).arg(&f)).status.code(), Some(0));
            }
        };
        ingest(&b.root, dir.path(), 0, 4);
        assert_eq!(run(sluice(&b.root).args(["index", "create", "t", "id", "--type", "btree"])).status.code(), Some(0));
        std::thread::scope(|s| {
            for w in 0..4i64 {
                let (root, dir) = (b.root.clone(), dir.path().to_path_buf());
                s.spawn(move || ingest(&root, &dir, 100 + w * 10, 4));
            }
            for _ in 0..2 {
                let root = b.root.clone();
                s.spawn(move || {
                    for _ in 0..3 {
                        let out = run(sluice(&root).args(["--json", "optimize", "t", "--timeout", "60s"]));
                        assert_eq!(out.status.code(), Some(0), "an optimizer failed");
                    }
                });
            }
        });
        let mut want: Vec<i64> = (0..40).collect();
        for w in 0..4i64 {
            for i in 100 + w * 10..100 + w * 10 + 4 {
                want.extend(i * 10..i * 10 + 10);
            }
        }
        want.sort();
        assert_eq!(scan_ids(&b.root, "t"), want, "{}: every row exactly once", b.name);
        assert_eq!(pending(&b.root), 0, "{}", b.name);
        assert_eq!(run(sluice(&b.root).args(["optimize", "t"])).status.code(), Some(0));
        let list = index_list(&b.root);
        assert_eq!(list[0]["rows_indexed"], want.len(), "{}: {list:?}", b.name);
        assert_eq!(list[0]["rows_unindexed"], 0, "{}: {list:?}", b.name);
        let rows = lines(&run(sluice(&b.root).args(["scan", "t", "--where", "id = 1305", "--columns", "id"])));
        assert_eq!(rows.len(), 1, "{}: {rows:?}", b.name);
    }
}

/// A load descriptor declares indices with its tables: the load's publish
/// carries the declaration and the next optimize builds them. A declaration
/// its column cannot take is refused before anything is committed.
#[test]
fn a_load_declares_indices_and_optimize_builds_them() {
    for b in shared_backends() {
        let dir = tempfile::tempdir().unwrap();
        vectors(dir.path(), "docs.jsonl", 0, 300);
        jsonl(dir.path(), "plain.jsonl", 0..10);
        let schema: serde_json::Value = serde_json::from_slice(&std::fs::read(schema(dir.path())).unwrap()).unwrap();
        let descriptor = serde_json::json!({"tables": [
            {"table": "docs", "sources": ["docs.jsonl"], "schema": schema,
             "indices": [{"column": "emb", "type": "ivf_flat", "metric": "cosine"}, {"column": "txt", "type": "fts"}]},
            {"table": "plain", "sources": ["plain.jsonl"]}
        ]});
        let d = write(dir.path(), "load.json", descriptor.to_string().as_bytes());
        assert_eq!(run(sluice(&b.root).arg("load").arg(&d)).status.code(), Some(0), "{}", b.name);
        let list = index_list(&b.root);
        let declared: Vec<(&str, bool)> = list.iter().map(|i| (i["name"].as_str().unwrap(), i["built"].as_bool().unwrap())).collect();
        assert_eq!(declared, vec![("emb_idx", false), ("txt_idx", false)], "{}: declared with the load, not built yet", b.name);
        assert_eq!(run(sluice(&b.root).arg("optimize")).status.code(), Some(0), "{}", b.name);
        let list = index_list(&b.root);
        assert!(list.iter().all(|i| i["built"] == true && i["rows_indexed"] == 300), "{}: {list:?}", b.name);
        assert_eq!(list[0]["metric"], "cosine", "{}", b.name);

        jsonl(dir.path(), "wrong.jsonl", 100..110);
        let bad = write(dir.path(), "bad.json", br#"{"tables": [{"table": "wrong", "sources": ["wrong.jsonl"], "indices": [{"column": "name", "type": "ivf_pq"}]}]}"#);
        let out = run(sluice(&b.root).arg("load").arg(&bad));
        assert_eq!(out.status.code(), Some(2), "{}", b.name);
        assert!(String::from_utf8_lossy(&out.stderr).contains("vector(N)"), "{}", b.name);
        assert!(status(&b.root)["tables"].as_array().unwrap().iter().all(|t| t["name"] != "wrong"), "{}: nothing of it is published", b.name);
        assert_eq!(pending(&b.root), 0, "{}", b.name);
        // Its source was given back: once the declaration is fixed, it loads.
        let good = write(dir.path(), "good.json", br#"{"tables": [{"table": "wrong", "sources": ["wrong.jsonl"], "indices": [{"column": "name", "type": "btree"}]}]}"#);
        assert_eq!(run(sluice(&b.root).arg("load").arg(&good)).status.code(), Some(0), "{}", b.name);
    }
}

/// A vector index declared on a table too small to train it is recorded
/// empty; once enough rows arrived, one optimize trains it over all of them.
#[test]
fn an_index_declared_on_a_small_table_is_trained_by_optimize_later() {
    for b in shared_backends() {
        let dir = tempfile::tempdir().unwrap();
        let few = vectors(dir.path(), "few.jsonl", 0, 20);
        assert_eq!(run(sluice(&b.root).args(["ingest", "--table", "t", "--schema"]).arg(schema(dir.path())).arg(&few)).status.code(), Some(0));
        assert_eq!(run(sluice(&b.root).args(["index", "create", "t", "emb", "--type", "ivf_pq"])).status.code(), Some(0), "{}", b.name);
        assert_eq!(index_list(&b.root)[0]["rows_indexed"], 0, "{}: too few rows to train", b.name);
        let more = vectors(dir.path(), "more.jsonl", 20, 600);
        assert_eq!(run(sluice(&b.root).args(["ingest", "--table", "t"]).arg(&more)).status.code(), Some(0));
        assert_eq!(run(sluice(&b.root).arg("optimize")).status.code(), Some(0), "{}", b.name);
        let list = index_list(&b.root);
        assert_eq!((&list[0]["rows_indexed"], &list[0]["rows_unindexed"]), (&serde_json::json!(620), &serde_json::json!(0)), "{}: {list:?}", b.name);
        let q = format!("[{}]", vec!["30.45"; DIMS].join(","));
        let rows = lines(&run(sluice(&b.root).args(["search", "t", "--vector", &q, "--k", "5", "--columns", "cat", "--nprobes", "8", "--refine", "5"])));
        assert!(rows.iter().all(|r| r["cat"] == "c3"), "{}: {rows:?}", b.name);
    }
}

/// A vector index the table has outgrown (it lacks more rows than it covers)
/// is rebuilt by optimize, sized for the table as it is; below that, new rows
/// are added incrementally.
#[test]
fn an_outgrown_vector_index_is_rebuilt_and_a_grown_one_extended() {
    let b = local();
    let dir = tempfile::tempdir().unwrap();
    let first = vectors(dir.path(), "first.jsonl", 0, 300);
    assert_eq!(run(sluice(&b.root).args(["ingest", "--table", "t", "--schema"]).arg(schema(dir.path())).arg(&first)).status.code(), Some(0));
    assert_eq!(run(sluice(&b.root).args(["index", "create", "t", "emb", "--type", "ivf_pq"])).status.code(), Some(0));
    assert_eq!(index_list(&b.root)[0]["rows_indexed"], 300);
    let optimize = |root: &str| json(&run(sluice(root).args(["--json", "optimize"])))["tables"][0]["indices"].clone();

    // 400 new rows against 300 covered: rebuilt, one segment over all 700.
    let more = vectors(dir.path(), "more.jsonl", 300, 400);
    assert_eq!(run(sluice(&b.root).args(["ingest", "--table", "t"]).arg(&more)).status.code(), Some(0));
    let done = optimize(&b.root);
    assert_eq!(done["built"][0]["index"], "emb_idx", "rebuilt: {done}");
    assert!(done["updated"].is_null(), "{done}");
    let list = index_list(&b.root);
    assert_eq!((&list[0]["rows_indexed"], &list[0]["segments"]), (&serde_json::json!(700), &serde_json::json!(1)), "{list:?}");

    // 100 new rows against 700 covered: extended, not rebuilt.
    let few = vectors(dir.path(), "few.jsonl", 700, 100);
    assert_eq!(run(sluice(&b.root).args(["ingest", "--table", "t"]).arg(&few)).status.code(), Some(0));
    let done = optimize(&b.root);
    assert!(done["built"].as_array().is_none_or(|b| b.is_empty()), "{done}");
    assert_eq!(done["updated"]["index"], "emb_idx", "{done}");
    assert_eq!(index_list(&b.root)[0]["rows_indexed"], 800);
}
