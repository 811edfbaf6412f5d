//! Recovery (DESIGN.md invariants 4-8) against real processes: every crash
//! the failpoint catalog can name, by injected error and by `kill -9`, then
//! sweeps and redeliveries; and the races of the hard-cases list, made
//! deterministic by holding one process at a failpoint while another runs.

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

const KINDS: [Kind; 3] = [Kind::Append, Kind::Upsert, Kind::Load];
const CRASHES: [Crash; 2] = [Crash::Error, Crash::Kill9];

/// Failpoints only a multi-table load passes.
fn load_only(fp: &str) -> bool {
    [BEFORE_DECISION, AFTER_DECISION, RECOVER_AFTER_DECISION].contains(&fp)
}

fn matrix() -> Vec<Case> {
    let mut cases = Vec::new();
    for &fp in ALL {
        for kind in KINDS {
            if load_only(fp) && kind != Kind::Load {
                continue;
            }
            for crash in CRASHES {
                let (writer, sweep) = if WRITER.contains(&fp) { (fp, None) } else { (AFTER_COMMIT, Some(fp)) };
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
        Kind::Append => &[("t", &[])],
        Kind::Upsert => &[("u", &["--mode", "upsert", "--key", "id"])],
        Kind::Load => &[("a", &[]), ("b", &[])],
    };
    for (table, extra) in seeds {
        let seed = jsonl(dir, &format!("seed-{table}.jsonl"), 0..5);
        let out = run(sluice(&root).args(["ingest", "--table", table]).args(*extra).arg(&seed));
        assert_eq!(out.status.code(), Some(0), "seeding {table}");
    }
    let timeout = ["--timeout".to_string(), "4s".to_string()];
    let (args, expect): (Vec<String>, _) = match kind {
        Kind::Append => {
            let f = jsonl(dir, "new-t.jsonl", 100..110);
            (["ingest", "--table", "t"].map(String::from).into_iter().chain(timeout).chain([f.display().to_string()]).collect(), vec![("t", (0..5).chain(100..110).collect())])
        }
        Kind::Upsert => {
            // Keys 3 and 4 exist: updated in place, never duplicated.
            let f = jsonl(dir, "new-u.jsonl", 3..13);
            (["ingest", "--table", "u"].map(String::from).into_iter().chain(timeout).chain([f.display().to_string()]).collect(), vec![("u", (0..13).collect())])
        }
        Kind::Load => {
            jsonl(dir, "new-a.jsonl", 100..110);
            jsonl(dir, "new-b.jsonl", 200..215);
            let d = write(dir, "load.json", br#"{"tables": [{"table": "a", "sources": ["new-a.jsonl"]}, {"table": "b", "sources": ["new-b.jsonl"]}]}"#);
            (
                ["load".to_string(), d.display().to_string()].into_iter().chain(timeout).collect(),
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
    crash(sluice(&w.root).args(&w.args), case.writer, writer_crash);

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
    let out = run(sluice(&w.root).args(&w.args));
    assert_eq!(out.status.code(), Some(0), "{case:?}: the redelivery succeeds");
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
        assert_eq!(n, 1, "{case:?}: the dead writer's operation was audited");
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
        ALL.len(),
        KINDS.len(),
        CRASHES.len(),
        cases.len()
    );
    assert!(cases.len() >= ALL.len() * 2, "every failpoint is in the matrix");
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
