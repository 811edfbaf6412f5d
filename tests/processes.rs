//! Real child processes of the real binary: duplicate deliveries, concurrent
//! writers, injected failures at every failpoint, and `kill -9`.

use std::process::{Child, Stdio};

use sluice::failpoints::{AFTER_CLAIMS, COMMIT_CHECKED};

use crate::common::*;

fn spawn_ingest(root: &str, table: &str, file: &std::path::Path) -> Child {
    sluice(root)
        .args(["--json", "ingest", "--timeout", "300s", "--table", table])
        .arg(file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn eight_processes_delivering_the_same_source_ingest_it_once() {
    for b in shared_backends() {
        let dir = tempfile::tempdir().unwrap();
        let file = jsonl(dir.path(), "dup.jsonl", 0..500);
        let children: Vec<Child> = (0..8).map(|_| spawn_ingest(&b.root, "t", &file)).collect();
        let mut ingested = 0;
        for child in children {
            let out = child.wait_with_output().unwrap();
            assert_eq!(out.status.code(), Some(0), "{}: {}", b.name, String::from_utf8_lossy(&out.stderr));
            if json(&out)["sources"][0]["status"] == "ingested" {
                ingested += 1;
            }
        }
        assert_eq!(ingested, 1, "{}: exactly one process ingested", b.name);
        let s = status(&b.root);
        assert_eq!(table_rows(&s, "t"), Some(500), "{}: rows once", b.name);
        assert!(s["pending"].as_array().unwrap().is_empty());
    }
}

#[test]
fn eight_processes_writing_one_table_all_succeed() {
    for b in shared_backends() {
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<_> = (0..8).map(|i| jsonl(dir.path(), &format!("w{i}.jsonl"), i * 1000..i * 1000 + 100 + i)).collect();
        let children: Vec<Child> = files.iter().map(|f| spawn_ingest(&b.root, "t", f)).collect();
        for child in children {
            let out = child.wait_with_output().unwrap();
            assert_eq!(out.status.code(), Some(0), "{}: {}", b.name, String::from_utf8_lossy(&out.stderr));
        }
        let expected: u64 = (0..8).map(|i| 100 + i).sum();
        let s = status(&b.root);
        assert_eq!(table_rows(&s, "t"), Some(expected), "{}: rows = sum", b.name);
        assert!(s["pending"].as_array().unwrap().is_empty());
    }
}

/// A writer killed with SIGKILL after its Lance commit, before its publish:
/// its rows are not visible, its intent is, and the lake keeps working.
#[test]
fn kill_9_after_commit_leaves_a_visible_intent_and_a_working_lake() {
    for b in shared_backends() {
        let dir = tempfile::tempdir().unwrap();
        let seed = jsonl(dir.path(), "seed.jsonl", 0..10);
        assert_eq!(run(sluice(&b.root).args(["ingest", "--table", "t"]).arg(&seed)).status.code(), Some(0));

        let doomed = jsonl(dir.path(), "doomed.jsonl", 100..150);
        kill_9_at(sluice(&b.root).args(["ingest", "--table", "t"]).arg(&doomed), sluice::failpoints::AFTER_COMMIT);

        let s = status(&b.root);
        assert_eq!(table_rows(&s, "t"), Some(10), "{}: the dead writer's rows are not visible", b.name);
        let pending = s["pending"].as_array().unwrap();
        assert_eq!(pending.len(), 1, "{}: its intent is visible in status", b.name);
        assert_eq!(pending[0]["kind"], "ingest");
        assert_eq!(pending[0]["tables"][0], "t");

        // Another source still ingests (a single-table commit that landed is
        // decided forward, so this publish may show the dead writer's rows too).
        let next = jsonl(dir.path(), "next.jsonl", 200..205);
        assert_eq!(run(sluice(&b.root).args(["ingest", "--table", "t"]).arg(&next)).status.code(), Some(0));
        let rows = table_rows(&status(&b.root), "t").unwrap();
        assert!(rows == 15 || rows == 65, "{}: {rows}", b.name);
    }
}

/// An injected error at each failpoint: the published rows are exactly what
/// the protocol says, never part of an operation; failures before any commit
/// leave nothing behind; the lake keeps working.
///
/// A single-table commit that landed is decided forward (docs/INVARIANTS.md invariant
/// 3), so rows of a writer that failed after its commit stay in "limbo" until
/// the next publish on the table shows them.
#[test]
fn an_error_at_every_failpoint_leaves_a_consistent_lake() {
    use sluice::failpoints::*;
    let b = local();
    let dir = tempfile::tempdir().unwrap();
    let seed = jsonl(dir.path(), "seed.jsonl", 0..10);
    assert_eq!(run(sluice(&b.root).args(["ingest", "--table", "t"]).arg(&seed)).status.code(), Some(0));
    let (mut visible, mut limbo) = (10u64, 0u64);
    // Writers that failed after their commit keep their intent for recovery.
    let mut kept_intents = 0;
    for (i, fp) in WRITER.iter().enumerate() {
        let file = jsonl(dir.path(), &format!("fp{i}.jsonl"), 1000 * (i as i64 + 1)..1000 * (i as i64 + 1) + 7);
        let out = run(sluice(&b.root).args(["ingest", "--table", "t"]).arg(&file).env("FAILPOINTS", format!("{fp}=return")));
        let pending = |s: &serde_json::Value| s["pending"].as_array().unwrap().len();
        let before = pending(&status(&b.root));
        match *fp {
            AFTER_INTENT | BEFORE_CLAIM | AFTER_CLAIMS | BEFORE_COMMIT | COMMIT_CHECKED => {
                assert_eq!(out.status.code(), Some(1), "{fp}: the injected error fails the call");
                // Nothing committed: the intent is gone and the source released.
                assert_eq!(before, kept_intents, "{fp}: nothing left behind");
                assert_eq!(run(sluice(&b.root).args(["ingest", "--table", "t"]).arg(&file)).status.code(), Some(0));
                visible += 7 + limbo;
                limbo = 0;
            }
            // Committed, so the next writer decides it forward (if it was not yet) and shows it.
            AFTER_COMMIT | BEFORE_DECISION | AFTER_DECISION | BEFORE_PUBLISH => {
                assert_eq!(out.status.code(), Some(1), "{fp}");
                limbo += 7;
                kept_intents += 1;
                assert_eq!(before, kept_intents, "{fp}: the intent stays for recovery");
            }
            AFTER_PUBLISH | BEFORE_FINISH => {
                assert_eq!(out.status.code(), Some(1), "{fp}");
                visible += 7 + limbo;
                limbo = 0;
                kept_intents += 1;
                assert_eq!(before, kept_intents, "{fp}: the intent stays for recovery");
            }
            other => panic!("failpoint {other} has no expectation here: add one"),
        }
        assert_eq!(table_rows(&status(&b.root), "t"), Some(visible), "{fp}: exactly the published operations");
    }
    // The last word: an ordinary ingest still works, and shows the limbo rows.
    let last = jsonl(dir.path(), "last.jsonl", 0..1);
    assert_eq!(run(sluice(&b.root).args(["ingest", "--table", "t"]).arg(&last)).status.code(), Some(0));
    assert_eq!(table_rows(&status(&b.root), "t"), Some(visible + limbo + 1));
}

/// A multi-table load killed (SIGKILL) after committing its first table: its
/// rows are undecided, so another writer's publish on that table must not
/// show them (docs/INVARIANTS.md invariant 3) — it waits within its deadline and fails,
/// while other tables keep working.
#[test]
fn a_load_killed_between_its_tables_is_never_published_by_another_writer() {
    for b in shared_backends() {
        let dir = tempfile::tempdir().unwrap();
        for t in ["a", "b", "c"] {
            let seed = jsonl(dir.path(), &format!("seed-{t}.jsonl"), 0..5);
            assert_eq!(run(sluice(&b.root).args(["ingest", "--table", t]).arg(&seed)).status.code(), Some(0));
        }
        jsonl(dir.path(), "load-a.jsonl", 100..130);
        jsonl(dir.path(), "load-b.jsonl", 100..140);
        let descriptor = write(
            dir.path(),
            "load.json",
            br#"{"tables": [{"table": "a", "sources": ["load-a.jsonl"]}, {"table": "b", "sources": ["load-b.jsonl"]}]}"#,
        );
        // The first table's commit fires the failpoint; the second never commits.
        kill_9_at(sluice(&b.root).args(["load", "--timeout", "300s"]).arg(&descriptor), sluice::failpoints::AFTER_COMMIT);

        let s = status(&b.root);
        assert_eq!((table_rows(&s, "a"), table_rows(&s, "b")), (Some(5), Some(5)), "{}: nothing of the load visible", b.name);
        assert_eq!(s["pending"][0]["kind"], "load", "{}", b.name);

        // A writer on table a lands on top of the undecided commit: it must not publish it.
        let over = jsonl(dir.path(), "over-a.jsonl", 200..203);
        let out = run(sluice(&b.root).args(["ingest", "--timeout", "6s", "--table", "a"]).arg(&over));
        assert_eq!(out.status.code(), Some(1), "{}", b.name);
        assert!(String::from_utf8_lossy(&out.stderr).contains("undecided"), "{}: says why", b.name);
        assert_eq!(table_rows(&status(&b.root), "a"), Some(5), "{}: the load's rows stay invisible", b.name);

        // Table c has no undecided commit under it: writers there are unaffected.
        let c = jsonl(dir.path(), "more-c.jsonl", 300..304);
        assert_eq!(run(sluice(&b.root).args(["ingest", "--table", "c"]).arg(&c)).status.code(), Some(0));
        assert_eq!(table_rows(&status(&b.root), "c"), Some(9), "{}", b.name);
    }
}

/// Upserts from 4 processes on overlapping keys: all succeed (conflicts are
/// redone from the latest version), and every key is present exactly once.
#[test]
fn concurrent_upserts_keep_every_key_once() {
    for b in shared_backends() {
        let dir = tempfile::tempdir().unwrap();
        let seed = jsonl(dir.path(), "seed.jsonl", 0..50);
        let out = run(sluice(&b.root).args(["ingest", "--table", "u", "--mode", "upsert", "--key", "id"]).arg(&seed));
        assert_eq!(out.status.code(), Some(0));
        // Each writer touches 25 old keys and 50 new ones shared with the others.
        let files: Vec<_> = (0..4).map(|w| jsonl(dir.path(), &format!("u{w}.jsonl"), 25 + w..100 + w)).collect();
        let children: Vec<Child> = files.iter().map(|f| spawn_ingest(&b.root, "u", f)).collect();
        for child in children {
            let out = child.wait_with_output().unwrap();
            assert_eq!(out.status.code(), Some(0), "{}: {}", b.name, String::from_utf8_lossy(&out.stderr));
        }
        let scan = run(sluice(&b.root).args(["scan", "u"]));
        let mut keys: Vec<i64> = String::from_utf8_lossy(&scan.stdout)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_i64().unwrap())
            .collect();
        keys.sort();
        assert_eq!(keys, (0..103).collect::<Vec<_>>(), "{}: every key exactly once", b.name);
    }
}

/// A writer asks for the table's latest version ahead of its commit, while
/// its last data file is written. Held after asking while another writer
/// commits, its answer ("nothing newer") is stale when its commit runs: the
/// commit must still land, after the other's, with every row once.
#[test]
fn a_commit_asked_ahead_lands_after_a_newer_version() {
    on_each_backend(|b| {
        let dir = tempfile::tempdir().unwrap();
        let (first, a, c) = (jsonl(dir.path(), "first.jsonl", 100..101), jsonl(dir.path(), "a.jsonl", 0..10), jsonl(dir.path(), "c.jsonl", 10..20));
        assert_eq!(run(sluice(&b.root).args(["ingest", "--table", "t"]).arg(&first)).status.code(), Some(0));
        let held = hold_at(sluice(&b.root).env("SLUICE_LOG", "sluice::known_manifest=debug").args(["ingest", "--table", "t", "--timeout", "60s"]).arg(&a), COMMIT_CHECKED);
        let other = run(sluice(&b.root).args(["ingest", "--table", "t"]).arg(&c));
        assert_eq!(other.status.code(), Some(0), "B: {}", String::from_utf8_lossy(&other.stderr));
        assert!(String::from_utf8_lossy(&other.stdout).contains("lance v2"), "B commits version 2: {}", String::from_utf8_lossy(&other.stdout));
        held.release();
        let out = held.wait_with_output();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(0), "A: {stderr}");
        assert!(stderr.contains("nothing after the read version, as asked ahead"), "A's commit took the answer asked ahead: {stderr}");
        assert!(stdout.contains("lance v3"), "A's commit lands after B's: {stdout}");
        let mut want: Vec<i64> = (0..20).collect();
        want.push(100);
        assert_eq!(scan_ids(&b.root, "t"), want, "every row once");
    });
}

/// Small sources are staged alongside their claims; when a claim is lost the
/// staged rows must be dropped, never committed. B ingests `a` and `c` while
/// A holds `a`'s claim (stopped after claiming): B publishes `c` alone.
#[test]
fn rows_staged_alongside_a_lost_claim_are_dropped() {
    on_each_backend(|b| {
        let dir = tempfile::tempdir().unwrap();
        let (first, a, c) = (jsonl(dir.path(), "first.jsonl", 100..101), jsonl(dir.path(), "a.jsonl", 0..10), jsonl(dir.path(), "c.jsonl", 10..20));
        assert_eq!(run(sluice(&b.root).args(["ingest", "--table", "t"]).arg(&first)).status.code(), Some(0));
        let held = hold_at(sluice(&b.root).args(["ingest", "--table", "t", "--timeout", "60s"]).arg(&a), AFTER_CLAIMS);
        let other = sluice(&b.root)
            .args(["ingest", "--table", "t", "--timeout", "60s"])
            .args([&a, &c])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // B publishes `c`, then waits for A's publish of `a`.
        let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            match table_rows(&status(&b.root), "t") {
                Some(11) => break,
                Some(n) if n > 11 => panic!("B published {n} rows: more than its own"),
                _ => assert!(std::time::Instant::now() < until, "B never published c"),
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        held.release();
        assert_eq!(held.wait_with_output().status.code(), Some(0), "A publishes a");
        let out = other.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "B: {}", String::from_utf8_lossy(&out.stderr));
        let mut want: Vec<i64> = (0..20).collect();
        want.push(100);
        assert_eq!(scan_ids(&b.root, "t"), want, "every row once");
    });
}

/// An upsert whose commit met a concurrent update of the same rows is redone
/// on the latest version. Lance proves such a loss itself (it reads back the
/// version it lost and finds it another's), so the writer does not read the
/// table's history to learn whether its commit landed: that scan is one
/// read per version since its pin, paid on every contended commit.
#[test]
fn an_upsert_that_lost_to_a_concurrent_update_is_redone_without_reading_history() {
    on_each_backend(|b| {
        let dir = tempfile::tempdir().unwrap();
        let upsert = || {
            let mut cmd = sluice(&b.root);
            cmd.args(["ingest", "--table", "u", "--mode", "upsert", "--key", "id", "--timeout", "60s"]);
            cmd
        };
        assert_eq!(run(upsert().arg(jsonl(dir.path(), "seed.jsonl", 0..20))).status.code(), Some(0));
        let held = hold_at(upsert().env("SLUICE_LOG", "sluice=info").arg(jsonl(dir.path(), "a.jsonl", 0..10)), COMMIT_CHECKED);
        assert_eq!(run(upsert().arg(jsonl(dir.path(), "b.jsonl", 5..15))).status.code(), Some(0), "{}", b.name);
        held.release();
        let out = held.wait_with_output();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{}: {stderr}", b.name);
        assert!(stderr.contains("redoing it on the latest version"), "{}: the upsert was redone: {stderr}", b.name);
        assert!(!stderr.contains("reading the table's history"), "{}: a proven loss needs no history scan: {stderr}", b.name);
        assert_eq!(scan_ids(&b.root, "u"), (0..20).collect::<Vec<_>>(), "{}: every key once", b.name);
    });
}
