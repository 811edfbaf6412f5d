//! Recovery (docs/INVARIANTS.md invariants 4-8) against real processes: every crash
//! the failpoint catalog can name, by injected error and by `kill -9`, then
//! sweeps and redeliveries; and the races of the hard-cases list, made
//! deterministic by holding one process at a failpoint while another runs.
// `ids_of(seed, &[range])` lists the ranges a table holds; one range is not a mistake.
#![allow(clippy::single_range_in_vec_init)]

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sluice::failpoints::*;

use crate::common::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Append,
    Upsert,
    Load,
    Optimize,
    Index,
    /// An ingest whose source has a column the table adds first.
    Columns,
    /// An append committed as a group of one (`SLUICE_TEST_CONTENDED`).
    Group,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Crash {
    Error,
    Kill9,
}

#[derive(Debug, Clone, Copy)]
struct Case {
    kind: Kind,
    crash: Crash,
    /// Where the writer crashes.
    writer: &'static str,
    /// Where the first sweep crashes (the writer then died after a commit).
    sweep: Option<&'static str>,
}

const KINDS: [Kind; 7] = [Kind::Append, Kind::Upsert, Kind::Load, Kind::Optimize, Kind::Index, Kind::Columns, Kind::Group];
/// A group's writer: the door's steps around its commit, and the group's own.
const GROUP_WRITER: &[&str] = &[
    AFTER_INTENT,
    BEFORE_CLAIM,
    AFTER_CLAIMS,
    BEFORE_COMMIT,
    GROUP_QUEUED,
    GROUP_AFTER_INTENT,
    GROUP_AFTER_SELF_TAKE,
    GROUP_AFTER_TAKES,
    GROUP_COMMIT_CHECKED,
    GROUP_AFTER_COMMIT,
    GROUP_AFTER_DECISION,
    BEFORE_PUBLISH,
    AFTER_PUBLISH,
    BEFORE_FINISH,
];
const CRASHES: [Crash; 2] = [Crash::Error, Crash::Kill9];

fn matrix() -> Vec<Case> {
    let mut cases = Vec::new();
    for &fp in ALL.iter().filter(|fp| !READ.contains(fp)) {
        for kind in KINDS {
            // Each kind's own steps; recovery's apply to every kind.
            let own = match kind {
                Kind::Optimize => OPTIMIZE,
                Kind::Index => INDEX,
                Kind::Columns => COLUMNS,
                Kind::Group => GROUP_WRITER,
                _ => WRITER,
            };
            if !own.contains(&fp) && !RECOVERY.contains(&fp) {
                continue;
            }
            let after_commit = match kind {
                Kind::Optimize => OPTIMIZE_AFTER_COMMIT,
                Kind::Index => INDEX_AFTER_COMMIT,
                Kind::Columns => COLUMNS_AFTER_COMMIT,
                Kind::Group => GROUP_AFTER_COMMIT,
                _ => AFTER_COMMIT,
            };
            for crash in CRASHES {
                let (writer, sweep) = if RECOVERY.contains(&fp) { (after_commit, Some(fp)) } else { (fp, None) };
                cases.push(Case { kind, crash, writer, sweep });
            }
        }
    }
    cases
}

/// What a case ingests, and the ids each table must end with.
struct Workload {
    root: String,
    dir: PathBuf,
    args: Vec<String>,
    expect: Vec<(&'static str, Vec<i64>)>,
}

fn workload(kind: Kind, root: String, dir: &Path) -> Workload {
    let seeds: &[(&str, &[&str])] = match kind {
        Kind::Append | Kind::Group => &[("t", &[])],
        Kind::Upsert => &[("u", &["--mode", "upsert", "--key", "id"])],
        Kind::Load => &[("a", &[]), ("b", &[])],
        Kind::Optimize => {
            // Five more small fragments for the optimizer to compact.
            for i in 1..6 {
                let more = jsonl(dir, &format!("more-{i}.jsonl"), i * 5..i * 5 + 5);
                let out = run(sluice(&root).args(["ingest", "--table", "o"]).arg(&more));
                assert_eq!(out.status.code(), Some(0), "seeding o");
            }
            &[("o", &[])]
        }
        Kind::Index => &[("x", &[])],
        Kind::Columns => &[("c", &["--evolution", "add-columns"])],
    };
    for (table, extra) in seeds {
        let seed = jsonl(dir, &format!("seed-{table}.jsonl"), 0..5);
        let out = run(sluice(&root).args(["ingest", "--table", table]).args(*extra).arg(&seed));
        assert_eq!(out.status.code(), Some(0), "seeding {table}");
    }
    let (args, expect): (Vec<String>, _) = match kind {
        Kind::Append | Kind::Group => {
            let f = jsonl(dir, "new-t.jsonl", 100..110);
            (["ingest", "--table", "t"].map(String::from).into_iter().chain([f.display().to_string()]).collect(), vec![("t", (0..5).chain(100..110).collect())])
        }
        Kind::Upsert => {
            // Keys 3 and 4 exist: updated in place, never duplicated.
            let f = jsonl(dir, "new-u.jsonl", 3..13);
            (["ingest", "--table", "u"].map(String::from).into_iter().chain([f.display().to_string()]).collect(), vec![("u", (0..13).collect())])
        }
        Kind::Optimize => (["optimize", "o"].map(String::from).to_vec(), vec![("o", (0..30).collect())]),
        Kind::Index => (["index", "create", "x", "id", "--type", "btree"].map(String::from).to_vec(), vec![("x", (0..5).collect())]),
        Kind::Columns => {
            let lines: String = (100..110).map(|i| format!("{{\"id\": {i}, \"extra\": {i}}}\n")).collect();
            let f = write(dir, "new-c.jsonl", lines.as_bytes());
            (["ingest", "--table", "c"].map(String::from).into_iter().chain([f.display().to_string()]).collect(), vec![("c", (0..5).chain(100..110).collect())])
        }
        Kind::Load => {
            jsonl(dir, "new-a.jsonl", 100..110);
            jsonl(dir, "new-b.jsonl", 200..215);
            let d = write(dir, "load.json", br#"{"tables": [{"table": "a", "sources": ["new-a.jsonl"]}, {"table": "b", "sources": ["new-b.jsonl"]}]}"#);
            (
                vec!["load".to_string(), d.display().to_string()],
                vec![("a", (0..5).chain(100..110).collect()), ("b", (0..5).chain(200..215).collect())],
            )
        }
    };
    Workload { root, dir: dir.to_path_buf(), args, expect }
}

fn crash(cmd: &mut std::process::Command, fp: &str, how: Crash) {
    match how {
        Crash::Error => {
            run(cmd.env("FAILPOINTS", format!("{fp}=return")));
        }
        Crash::Kill9 => kill_9_at(cmd, fp),
    }
}

fn run_case(case: Case, root: String, dir: &Path) {
    let w = workload(case.kind, root, dir);
    let writer_crash = if case.sweep.is_some() { Crash::Kill9 } else { case.crash };
    // The crashed writer's deadline is short, so sweeps soon may act on it.
    // A group's writer, and its redelivery, commit as groups.
    let writer = |root: &str| {
        let mut cmd = sluice(root);
        if case.kind == Kind::Group {
            cmd.env("SLUICE_TEST_CONTENDED", "1");
        }
        cmd
    };
    crash(writer(&w.root).args(&w.args).args(["--timeout", "4s"]), case.writer, writer_crash);

    if let Some(fp) = case.sweep {
        // Wait the writer out, then crash the first sweep at its own step.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while status(&w.root)["pending"].as_array().unwrap().iter().any(|p| p["expired"] == false) {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(200));
        }
        let mut sweep = sluice(&w.root);
        sweep.args(["--json", "--clock-skew", "0s", "recover", "--timeout", "3s"]);
        crash(&mut sweep, fp, case.crash);
    }
    sweep_until_clean(&w.root, Duration::from_secs(60));

    // Redeliver: the source's rows end up published exactly once.
    // The redelivery's is long: it proves convergence, not speed under load.
    let out = run(writer(&w.root).args(&w.args).args(["--timeout", "60s"]));
    assert_eq!(out.status.code(), Some(0), "{case:?}: the redelivery succeeds");
    if case.kind == Kind::Optimize {
        let s = status(&w.root);
        let fragments = s["tables"].as_array().unwrap().iter().find(|t| t["name"] == "o").unwrap()["fragments"].as_u64().unwrap();
        assert_eq!(fragments, 1, "{case:?}: compacted");
    }
    if case.kind == Kind::Index {
        let list = json(&run(sluice(&w.root).args(["--json", "index", "list", "x"])));
        assert_eq!(list[0]["name"], "id_idx", "{case:?}: declared: {list}");
        assert_eq!(list[0]["rows_indexed"], 5, "{case:?}: built: {list}");
    }
    if case.kind == Kind::Columns {
        let out = run(sluice(&w.root).args(["scan", "c", "--where", "extra IS NOT NULL", "--columns", "id,extra"]));
        let extra: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect();
        assert_eq!(extra.len(), 10, "{case:?}: the new column holds the source's values: {extra:?}");
    }
    for (table, ids) in &w.expect {
        assert_eq!(&scan_ids(&w.root, table), ids, "{case:?}: table {table} has every acknowledged row exactly once");
    }
    assert_eq!(pending(&w.root), 0, "{case:?}: no intent left");

    // A second sweep changes nothing.
    let before = status(&w.root)["manifest_version"].clone();
    let second = json(&run(sluice(&w.root).args(["--json", "--clock-skew", "0s", "recover"])));
    assert_eq!(second["pending"], 0, "{case:?}");
    assert_eq!(status(&w.root)["manifest_version"], before, "{case:?}: the second sweep published nothing");

    // Each operation is audited at most once.
    let audit = json(&run(sluice(&w.root).args(["--json", "audit"])));
    let mut ops: Vec<&str> = audit.as_array().unwrap().iter().map(|r| r["op"].as_str().unwrap()).collect();
    let n = ops.len();
    ops.dedup();
    assert_eq!(ops.len(), n, "{case:?}: one audit record per operation");
    if case.sweep.is_some() {
        // An ingest that died after adding columns left two operations: the
        // columns' and its own; a group's writer, its group's and its own.
        let dead = if matches!(case.kind, Kind::Columns | Kind::Group) { 2 } else { 1 };
        assert_eq!(n, dead, "{case:?}: the dead writer's operations were audited");
    }

    // The next ingest works.
    let (table, ids) = &w.expect[0];
    let next = jsonl(&w.dir, "next.jsonl", 1000..1003);
    assert_eq!(run(sluice(&w.root).args(["ingest", "--table", table]).arg(&next)).status.code(), Some(0), "{case:?}");
    assert_eq!(scan_ids(&w.root, table).len(), ids.len() + 3, "{case:?}");
}

/// Every failpoint of the catalog x every operation kind x {injected error,
/// kill -9}: sweep, redeliver, and check the lake. Recovery's own failpoints
/// crash the first sweep after the writer was killed after its commit.
#[test]
fn crash_matrix() {
    let cases = matrix();
    eprintln!(
        "crash matrix: {} failpoints x {} kinds x {} crash modes -> {} cases per backend (load-only steps skipped for single tables)",
        ALL.len() - READ.len(),
        KINDS.len(),
        CRASHES.len(),
        cases.len()
    );
    assert!(cases.len() >= (ALL.len() - READ.len()) * 2, "every failpoint is in the matrix");
    for b in shared_backends() {
        let next = AtomicUsize::new(0);
        let failures = Mutex::new(Vec::new());
        let started = std::time::Instant::now();
        std::thread::scope(|s| {
            for _ in 0..6 {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        let Some(case) = cases.get(i).copied() else { break };
                        let dir = tempfile::tempdir().unwrap();
                        let root = match b.name {
                            "local" => dir.path().join("lake").display().to_string(),
                            _ => format!("{}/case-{i}", b.root),
                        };
                        let result = std::panic::catch_unwind(|| run_case(case, root, dir.path()));
                        if let Err(e) = result {
                            let msg = e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()));
                            failures.lock().unwrap().push(format!("{case:?}: {}", msg.unwrap_or_default()));
                        }
                    }
                });
            }
        });
        eprintln!("{}: {} cases in {:?}", b.name, cases.len(), started.elapsed());
        let failures = failures.into_inner().unwrap();
        assert!(failures.is_empty(), "{}: {} of {} cases failed:\n{}", b.name, failures.len(), cases.len(), failures.join("\n"));
    }
}

/// Sleep until every pending intent's deadline has passed.
fn wait_expired(root: &str) {
    let limit = std::time::Instant::now() + Duration::from_secs(60);
    while status(root)["pending"].as_array().unwrap().iter().any(|p| p["expired"] == false) {
        assert!(std::time::Instant::now() < limit, "intents never expired");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A single-table ingest of `file` into `t` (2 s budget) killed after its Lance commit.
fn die_after_commit(root: &str, file: &Path) {
    kill_9_at(sluice(root).args(["ingest", "--table", "t", "--timeout", "2s"]).arg(file), AFTER_COMMIT);
}

fn recover_cmd(root: &str) -> std::process::Command {
    let mut cmd = sluice(root);
    cmd.args(["--json", "--clock-skew", "0s", "recover", "--timeout", "60s"]);
    cmd
}

fn audit(root: &str) -> Vec<serde_json::Value> {
    json(&run(sluice(root).args(["--json", "audit"]))).as_array().unwrap().clone()
}



fn ids_of(seed: std::ops::Range<i64>, more: &[std::ops::Range<i64>]) -> Vec<i64> {
    let mut v: Vec<i64> = seed.chain(more.iter().cloned().flatten()).collect();
    v.sort();
    v
}

/// Two sweeps race on one intent: the first holds its lease at a failpoint
/// while the second arrives. Both succeed, one audit record. (The first is
/// held by a sleep, not `hold_at`: the second waits for it without passing a
/// failpoint, so there is nothing to rendezvous on.)
#[test]
fn two_sweeps_on_one_intent_both_succeed_and_record_once() {
    for b in shared_backends() {
        let dir = tempfile::tempdir().unwrap();
        seeded(&b.root, dir.path(), &["t"]);
        let file = jsonl(dir.path(), "new.jsonl", 100..110);
        die_after_commit(&b.root, &file);
        wait_expired(&b.root);

        let first = spawn_at(&mut recover_cmd(&b.root), RECOVER_AFTER_LEASE, "sleep(5000)");
        let second = json(&run(&mut recover_cmd(&b.root)));
        let first = first.wait_with_output();
        assert_eq!(first.status.code(), Some(0), "{}", b.name);
        let first = json(&first);
        assert_eq!(first["ops"][0]["action"], "decided", "{}: {first}", b.name);
        assert_eq!(first["ops"][0]["verdict"], "rolled_forward", "{}", b.name);
        assert_eq!(second["ops"][0]["action"], "done_by_other", "{}: the loser converges: {second}", b.name);
        assert_eq!(second["ops"][0]["verdict"], "rolled_forward", "{}", b.name);
        assert_eq!(audit(&b.root).len(), 1, "{}: one record", b.name);
        assert_eq!(scan_ids(&b.root, "t"), ids_of(0..5, &[100..110]), "{}", b.name);
        assert_eq!(pending(&b.root), 0);
        // The roll-forward records where Lance keeps its commit's manifest, as the writer would have.
        let rt = tokio::runtime::Runtime::new().unwrap();
        let latest = rt.block_on(sluice::manifest::read_latest(&sluice::Lake::open(&b.root).unwrap())).unwrap().unwrap();
        let pin = &latest.tables["t"];
        assert_eq!(pin.known_manifest().map(|m| m.version), Some(pin.version), "{}: {pin:?}", b.name);
    }
}

/// A load's writer commits, then stalls before recording its decision;
/// recovery decides (forward: every table committed) and publishes meanwhile.
/// The late writer follows that decision: it finds its goal reached by
/// recovery's publish and reports success, publishing nothing of its own.
#[test]
fn a_late_writer_cannot_publish_over_a_recovery_decision() {
    for b in shared_backends() {
        let dir = tempfile::tempdir().unwrap();
        seeded(&b.root, dir.path(), &["a", "b"]);
        let d = load_descriptor(dir.path());
        let writer = hold_at(sluice(&b.root).args(["load", "--timeout", "2s"]).arg(&d), BEFORE_DECISION);
        wait_expired(&b.root);
        let swept = json(&run(&mut recover_cmd(&b.root)));
        assert_eq!(swept["ops"][0]["verdict"], "rolled_forward", "{}: {swept}", b.name);
        writer.release();
        let out = writer.wait_with_output();
        assert_eq!(out.status.code(), Some(0), "{}: the late writer's goal was reached by recovery", b.name);
        assert_eq!(status(&b.root)["manifest_version"], swept["ops"][0]["manifest_version"], "{}: the writer published nothing of its own", b.name);
        assert_eq!(scan_ids(&b.root, "a"), ids_of(0..5, &[100..110]), "{}", b.name);
        assert_eq!(scan_ids(&b.root, "b"), ids_of(0..5, &[200..215]), "{}", b.name);
        let redelivered = run(sluice(&b.root).args(["--json", "load"]).arg(&d));
        assert_eq!(json(&redelivered)["sources"][0]["status"], "already_ingested", "{}", b.name);
        assert_eq!(audit(&b.root).len(), 1, "{}", b.name);
    }
}

/// A writer dies after its commit; a live writer's commit lands on top before
/// any sweep. Single table: the live writer's publish shows both (a committed
/// single-table operation is decided forward), recovery converges.
#[test]
fn a_dead_single_commit_buried_under_a_live_one_converges() {
    for b in shared_backends() {
        let dir = tempfile::tempdir().unwrap();
        seeded(&b.root, dir.path(), &["t"]);
        let dead = jsonl(dir.path(), "dead.jsonl", 100..110);
        die_after_commit(&b.root, &dead);
        let live = jsonl(dir.path(), "live.jsonl", 200..203);
        assert_eq!(run(sluice(&b.root).args(["ingest", "--table", "t"]).arg(&live)).status.code(), Some(0));
        assert_eq!(scan_ids(&b.root, "t"), ids_of(0..5, &[100..110, 200..203]), "{}", b.name);
        wait_expired(&b.root);
        let swept = json(&run(&mut recover_cmd(&b.root)));
        assert_eq!(swept["ops"][0]["verdict"], "converged", "{}: {swept}", b.name);
        let again = json(&run(sluice(&b.root).args(["--json", "ingest", "--table", "t"]).arg(&dead)));
        assert_eq!(again["sources"][0]["status"], "already_ingested", "{}", b.name);
        assert_eq!(scan_ids(&b.root, "t"), ids_of(0..5, &[100..110, 200..203]), "{}", b.name);
    }
}

/// A load dies after committing table a; a live writer's commit on a lands on
/// top. The live writer waits for the load's deadline, takes it over (redo:
/// table b from the unchanged source), then publishes.
#[test]
fn a_live_writer_takes_over_a_dead_load_under_it() {
    for b in shared_backends() {
        let dir = tempfile::tempdir().unwrap();
        seeded(&b.root, dir.path(), &["a", "b"]);
        let d = load_descriptor(dir.path());
        kill_9_at(sluice(&b.root).args(["load", "--timeout", "3s"]).arg(&d), AFTER_COMMIT);
        let live = jsonl(dir.path(), "live.jsonl", 300..303);
        let out = run(sluice(&b.root).args(["--clock-skew", "0s", "ingest", "--table", "a", "--timeout", "60s"]).arg(&live));
        assert_eq!(out.status.code(), Some(0), "{}", b.name);
        assert_eq!(scan_ids(&b.root, "a"), ids_of(0..5, &[100..110, 300..303]), "{}", b.name);
        assert_eq!(scan_ids(&b.root, "b"), ids_of(0..5, &[200..215]), "{}", b.name);
        assert_eq!(pending(&b.root), 0, "{}", b.name);
        let records = audit(&b.root);
        assert_eq!(records.len(), 1, "{}", b.name);
        assert_eq!(records[0]["verdict"], "redone", "{}", b.name);
    }
}

/// The same, but the load's second source changed after the crash: it cannot
/// be redone, so recovery removes exactly the load's fragments from table a
/// (the live writer's rows, committed on top, stay) and the live writer pins
/// past that removal.
#[test]
fn a_rollback_removes_exactly_the_dead_loads_rows() {
    for b in shared_backends() {
        let dir = tempfile::tempdir().unwrap();
        seeded(&b.root, dir.path(), &["a", "b"]);
        let d = load_descriptor(dir.path());
        kill_9_at(sluice(&b.root).args(["load", "--timeout", "3s"]).arg(&d), AFTER_COMMIT);
        jsonl(dir.path(), "load-b.jsonl", 400..402); // the source changed
        let live = jsonl(dir.path(), "live.jsonl", 300..303);
        let out = run(sluice(&b.root).args(["--clock-skew", "0s", "ingest", "--table", "a", "--timeout", "60s"]).arg(&live));
        assert_eq!(out.status.code(), Some(0), "{}", b.name);
        assert_eq!(scan_ids(&b.root, "a"), ids_of(0..5, &[300..303]), "{}: the load's rows are gone, the live rows stay", b.name);
        assert_eq!(scan_ids(&b.root, "b"), ids_of(0..5, &[]), "{}", b.name);
        let records = audit(&b.root);
        assert_eq!(records[0]["verdict"], "rolled_back", "{}", b.name);
        assert!(records[0]["tables"]["a"]["removed_at"].is_u64(), "{}: {records:?}", b.name);
        // The sources were released: the load (as it is now) goes in once.
        assert_eq!(run(sluice(&b.root).args(["load"]).arg(&d)).status.code(), Some(0), "{}", b.name);
        assert_eq!(scan_ids(&b.root, "a"), ids_of(0..5, &[100..110, 300..303]), "{}", b.name);
        assert_eq!(scan_ids(&b.root, "b"), ids_of(0..5, &[400..402]), "{}", b.name);
    }
}

/// A sweep rolling forward stalls before its manifest PUT; a live writer
/// publishes over the dead commit meanwhile. The sweep loses the race, re-reads,
/// finds the goal reached and converges.
#[test]
fn a_roll_forward_that_loses_the_manifest_race_converges() {
    for b in shared_backends() {
        let dir = tempfile::tempdir().unwrap();
        seeded(&b.root, dir.path(), &["t"]);
        let dead = jsonl(dir.path(), "dead.jsonl", 100..110);
        die_after_commit(&b.root, &dead);
        wait_expired(&b.root);
        let sweep = hold_at(&mut recover_cmd(&b.root), BEFORE_PUBLISH);
        let live = jsonl(dir.path(), "live.jsonl", 200..203);
        assert_eq!(run(sluice(&b.root).args(["ingest", "--table", "t"]).arg(&live)).status.code(), Some(0));
        sweep.release();
        let out = sweep.wait_with_output();
        assert_eq!(out.status.code(), Some(0), "{}", b.name);
        let report = json(&out);
        assert_eq!(report["ops"][0]["verdict"], "converged", "{}: {report}", b.name);
        assert_eq!(scan_ids(&b.root, "t"), ids_of(0..5, &[100..110, 200..203]), "{}", b.name);
        assert_eq!(pending(&b.root), 0);
    }
}

/// A redelivery finds its source under an expired intent: heal-first settles
/// it (forward after a commit, back before one), with no sweep run.
#[test]
fn a_redelivery_takes_over_an_expired_intent() {
    for b in shared_backends() {
        let dir = tempfile::tempdir().unwrap();
        seeded(&b.root, dir.path(), &["t"]);
        let committed = jsonl(dir.path(), "committed.jsonl", 100..110);
        die_after_commit(&b.root, &committed);
        let claimed = jsonl(dir.path(), "claimed.jsonl", 200..205);
        kill_9_at(sluice(&b.root).args(["ingest", "--table", "t", "--timeout", "2s"]).arg(&claimed), AFTER_CLAIMS);
        wait_expired(&b.root);
        let out = json(&run(sluice(&b.root).args(["--json", "--clock-skew", "0s", "ingest", "--table", "t"]).arg(&committed)));
        assert_eq!(out["sources"][0]["status"], "already_ingested", "{}: {out}", b.name);
        let out = json(&run(sluice(&b.root).args(["--json", "--clock-skew", "0s", "ingest", "--table", "t"]).arg(&claimed)));
        assert_eq!(out["sources"][0]["status"], "ingested", "{}: {out}", b.name);
        assert_eq!(scan_ids(&b.root, "t"), ids_of(0..5, &[100..110, 200..205]), "{}", b.name);
        assert_eq!(pending(&b.root), 0, "{}", b.name);
        assert_eq!(audit(&b.root).len(), 2, "{}", b.name);
    }
}

/// `--dry-run` says what it would decide and changes nothing; an intent that
/// cannot be read is refused loudly (exit 1) and kept.
#[test]
fn dry_run_changes_nothing_and_a_corrupt_intent_is_refused() {
    let b = local();
    let dir = tempfile::tempdir().unwrap();
    seeded(&b.root, dir.path(), &["t"]);
    let file = jsonl(dir.path(), "new.jsonl", 100..110);
    die_after_commit(&b.root, &file);
    wait_expired(&b.root);
    let planned = json(&run(sluice(&b.root).args(["--json", "--clock-skew", "0s", "recover", "--dry-run"])));
    assert_eq!(planned["ops"][0]["action"], "planned");
    assert_eq!(planned["ops"][0]["verdict"], "rolled_forward");
    assert_eq!(pending(&b.root), 1, "the dry run kept the intent");
    assert_eq!(scan_ids(&b.root, "t"), ids_of(0..5, &[]));

    std::fs::write(Path::new(&b.root).join("_ops/op-garbage.0000.intent.json"), b"{ not json").unwrap();
    let out = run(sluice(&b.root).args(["--clock-skew", "0s", "recover"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("REFUSED"));
    assert!(Path::new(&b.root).join("_ops/op-garbage.0000.intent.json").exists(), "kept for a person");
    assert_eq!(scan_ids(&b.root, "t"), ids_of(0..5, &[100..110]), "the other operation was still rolled forward");
}

/// Ambiguous create-only PUTs (applied on the server, the client saw an
/// error) of the lease, the manifest version and the audit record: recovery
/// recognises its own writes and finishes with one record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_recognises_its_own_ambiguous_puts() {
    use sluice::faults::Fault;
    use sluice::recover;
    for b in all_backends() {
        let (lake, faults) = faulty_lake(&b.root);
        let dir = tempfile::tempdir().unwrap();
        ingest(&lake, vec![request("t", &[&jsonl(dir.path(), "seed.jsonl", 0..5)])]).await.unwrap();
        // The writer dies after its commit: its manifest PUT fails outright.
        faults.inject("_manifest/versions", Fault::Rejected, 1);
        let budget = sluice::ingest::Budget { timeout: Duration::from_secs(2), clock_skew: Duration::ZERO };
        let file = jsonl(dir.path(), "new.jsonl", 100..110);
        let progress = std::sync::Arc::new(sluice::decode::Progress::default());
        assert!(sluice::ingest::run(&lake, vec![request("t", &[&file])], budget, progress).await.is_err(), "{}", b.name);
        tokio::time::sleep(Duration::from_secs(2)).await;

        for path in [".sweep-", "_manifest/versions", "_audit/"] {
            faults.inject(path, Fault::AppliedThenError, 1);
        }
        let opts = recover::Options { clock_skew: Duration::ZERO, dry_run: false };
        let report = recover::sweep(&lake, opts, Duration::from_secs(60)).await.unwrap();
        assert_eq!(report.ops.len(), 1, "{}", b.name);
        assert!(matches!(report.ops[0].action, recover::Action::Decided { verdict: sluice::audit::Verdict::RolledForward, .. }), "{}: {report:?}", b.name);
        assert_eq!(sluice::audit::list(&lake, 10).await.unwrap().len(), 1, "{}", b.name);
        assert_eq!(ids(&lake, "t", None).await, ids_of(0..5, &[100..110]), "{}", b.name);

        // Nothing pending: a sweep is one LIST.
        let idle = recover::sweep(&lake, opts, Duration::from_secs(60)).await.unwrap();
        assert_eq!((idle.pending, idle.requests.total(), idle.requests.list), (0, 1, 1), "{}: {:?}", b.name, idle.requests);
    }
}

/// A load whose source for table b was already ingested (by a plain ingest)
/// commits only table a, then dies. Recovery must roll it forward as it is:
/// "redoing" b would ingest that source a second time.
#[test]
fn a_dead_load_is_never_redone_with_sources_it_did_not_claim() {
    for b in shared_backends() {
        let dir = tempfile::tempdir().unwrap();
        seeded(&b.root, dir.path(), &["a", "b"]);
        let d = load_descriptor(dir.path());
        let earlier = run(sluice(&b.root).args(["ingest", "--table", "b"]).arg(dir.path().join("load-b.jsonl")));
        assert_eq!(earlier.status.code(), Some(0));
        kill_9_at(sluice(&b.root).args(["load", "--timeout", "2s"]).arg(&d), AFTER_COMMIT);
        wait_expired(&b.root);
        let swept = json(&run(&mut recover_cmd(&b.root)));
        assert_eq!(swept["ops"][0]["verdict"], "rolled_forward", "{}: {swept}", b.name);
        assert_eq!(scan_ids(&b.root, "a"), ids_of(0..5, &[100..110]), "{}", b.name);
        assert_eq!(scan_ids(&b.root, "b"), ids_of(0..5, &[200..215]), "{}: b's source exactly once", b.name);
    }
}

/// A commit no sluice operation made (a plain Lance append) lies between the
/// published pin and a dead writer's commit: recovery cannot prove those rows
/// may be shown, so it refuses, keeps the intent and publishes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_refuses_to_publish_over_a_foreign_commit() {
    use sluice::faults::Fault;
    use sluice::recover;
    for b in all_backends() {
        let (lake, faults) = faulty_lake(&b.root);
        let dir = tempfile::tempdir().unwrap();
        ingest(&lake, vec![request("t", &[&jsonl(dir.path(), "seed.jsonl", 0..5)])]).await.unwrap();

        let ds = std::sync::Arc::new(lake.open_table("t", None).await.unwrap());
        let schema = std::sync::Arc::new(arrow::datatypes::Schema::from(ds.schema()));
        let foreign = std::fs::File::open(jsonl(dir.path(), "foreign.jsonl", 900..903)).unwrap();
        let reader = arrow::json::ReaderBuilder::new(schema).build(std::io::BufReader::new(foreign)).unwrap();
        let params = lance::dataset::WriteParams { mode: lance::dataset::WriteMode::Append, ..Default::default() };
        lance::dataset::InsertBuilder::new(ds).with_params(&params).execute_stream(Box::new(reader) as Box<dyn arrow::array::RecordBatchReader + Send>).await.unwrap();

        faults.inject("_manifest/versions", Fault::Rejected, 1);
        let budget = sluice::ingest::Budget { timeout: Duration::from_secs(2), clock_skew: Duration::ZERO };
        let file = jsonl(dir.path(), "new.jsonl", 100..110);
        let progress = std::sync::Arc::new(sluice::decode::Progress::default());
        assert!(sluice::ingest::run(&lake, vec![request("t", &[&file])], budget, progress).await.is_err(), "{}", b.name);
        tokio::time::sleep(Duration::from_secs(2)).await;

        let opts = recover::Options { clock_skew: Duration::ZERO, dry_run: false };
        let report = recover::sweep(&lake, opts, Duration::from_secs(60)).await.unwrap();
        assert_eq!(report.unresolved(), 1, "{}: {report:?}", b.name);
        let recover::Action::Refused { reason } = &report.ops[0].action else { panic!("{}: {report:?}", b.name) };
        assert!(reason.contains("not written by a sluice operation"), "{}: {reason}", b.name);
        assert_eq!(sluice::sidecar::pending(&lake).await.unwrap().len(), 1, "{}: the intent is kept", b.name);
        assert_eq!(ids(&lake, "t", None).await, ids_of(0..5, &[]), "{}: nothing published", b.name);
    }
}
