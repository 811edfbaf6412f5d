//! Fencing: an actor acting on a stale view (a sweep on an old read of an
//! intent, a writer past its deadline, a commit that lands late, a delivery
//! trusting a claim) must never undo, hide or duplicate what others did.
//! Each test reproduces one scenario of the fencing issue with real `sluice`
//! processes, made deterministic by holding them at failpoints; it checks only
//! what users see: exit codes, `scan` (also `--at` every manifest version),
//! `status`, `history`.
// `ids_of(seed, &[range])` lists the ranges a table holds; one range is not a mistake.
#![allow(clippy::single_range_in_vec_init)]

use std::io::BufRead;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use sluice::failpoints::*;

use crate::common::*;


fn recover_cmd(root: &str) -> Command {
    let mut cmd = sluice(root);
    cmd.args(["--json", "--clock-skew", "0s", "recover", "--timeout", "60s"]);
    cmd
}

/// `sluice --clock-skew 0s ingest --table TABLE [extra] FILE...`.
fn ingest_cmd(root: &str, table: &str, extra: &[&str], files: &[&Path]) -> Command {
    let mut cmd = sluice(root);
    cmd.args(["--clock-skew", "0s", "ingest", "--table", table]).args(extra);
    for f in files {
        cmd.arg(f);
    }
    cmd
}

/// The ids `scan TABLE` shows, sorted, or a failure naming what went wrong.
fn readable_ids(root: &str, table: &str, what: &str) -> Vec<i64> {
    let out = run(sluice(root).args(["scan", table]));
    assert_eq!(out.status.code(), Some(0), "{what}: table {table} cannot be read: {}", String::from_utf8_lossy(&out.stderr).trim());
    scan_ids(root, table)
}

/// Every kept manifest version: `table`'s ids in it.
fn every_version(root: &str, table: &str) -> Vec<(u64, Vec<i64>)> {
    history(root).iter().map(|v| (v["version"].as_u64().unwrap(), scan_ids_at(root, table, v))).collect()
}

fn ids_of(seed: std::ops::Range<i64>, more: &[std::ops::Range<i64>]) -> Vec<i64> {
    let mut v: Vec<i64> = seed.chain(more.iter().cloned().flatten()).collect();
    v.sort();
    v
}

/// Issue scenario 1: a sweep acts on an old copy of an intent.
///
/// Writer A dies after claiming `s`; a sweep reads A's intent and stalls
/// before taking its lease; a redelivery C heals A (rolls it back), writes
/// its own intent for the same operation id, claims `s` and stalls before
/// its commit. The stale sweep then goes on. Current code: it "finishes" A by
/// deleting the intent by name, which is C's; C dies; nothing is pending, C's
/// claim looks done, and every later delivery of `s` reports "already
/// ingested" while its rows were never published (silent loss).
#[test]
fn a_stale_sweep_never_removes_a_redeliverys_intent() {
    on_each_backend(|b| {
        let dir = tempfile::tempdir().unwrap();
        seeded(&b.root, dir.path(), &["t"]);
        let s = jsonl(dir.path(), "s.jsonl", 100..110);
        let started = Instant::now();
        kill_9_at(&mut ingest_cmd(&b.root, "t", &["--timeout", "2s"], &[&s]), AFTER_CLAIMS);
        wait_out(&b.root, started, Duration::from_secs(2));

        let sweep = hold_at(&mut recover_cmd(&b.root), RECOVER_BEFORE_LEASE);
        let c_started = Instant::now();
        let c = hold_at(&mut ingest_cmd(&b.root, "t", &["--timeout", "3s"], &[&s]), BEFORE_COMMIT);
        sweep.release();
        drop(c); // kill -9 (it never gets past its hold; the sweep goes on on its own)
        sweep.wait_with_output();
        wait_out(&b.root, c_started, Duration::from_secs(3));

        sweep_until_clean(&b.root, Duration::from_secs(60));
        let out = run(&mut ingest_cmd(&b.root, "t", &[], &[&s]));
        assert_eq!(out.status.code(), Some(0), "{}: the delivery after recovery succeeds", b.name);
        let ids = readable_ids(&b.root, "t", b.name);
        assert_eq!(count_in(&ids, 100..110), 10, "{}: s's rows are published exactly once (0 = silently lost): {ids:?}", b.name);
        assert_eq!(ids, ids_of(0..5, &[100..110]), "{}", b.name);
        assert_eq!(pending(&b.root), 0, "{}", b.name);
    });
}

/// Issue scenario 2a: a writer past its deadline gives up and releases what
/// is no longer its own.
///
/// A stalls before its commit until its deadline passes; redelivery C heals
/// it (rolls it back) and publishes `s`. A then hits its deadline check and
/// gives up. Current code: it releases `s`'s claim and deletes the intent by
/// name, although both are C's now, so the next delivery ingests `s` again:
/// its rows are published twice.
#[test]
fn a_writer_past_its_deadline_never_releases_a_redeliverys_claim() {
    on_each_backend(|b| {
        let dir = tempfile::tempdir().unwrap();
        seeded(&b.root, dir.path(), &["t"]);
        let s = jsonl(dir.path(), "s.jsonl", 100..110);
        let started = Instant::now();
        let a = hold_at(&mut ingest_cmd(&b.root, "t", &["--timeout", "3s"], &[&s]), BEFORE_COMMIT);
        wait_out(&b.root, started, Duration::from_secs(3));

        let out = run(&mut ingest_cmd(&b.root, "t", &[], &[&s]));
        assert_eq!(out.status.code(), Some(0), "{}: the redelivery takes over and publishes", b.name);
        assert_eq!(readable_ids(&b.root, "t", b.name), ids_of(0..5, &[100..110]), "{}", b.name);

        a.release();
        a.wait_with_output();
        let out = run(&mut ingest_cmd(&b.root, "t", &[], &[&s]));
        assert_eq!(out.status.code(), Some(0), "{}: one more delivery of s", b.name);
        let ids = readable_ids(&b.root, "t", b.name);
        assert_eq!(count_in(&ids, 100..110), 10, "{}: s's rows exactly once (20 = the late writer gave C's claim away): {ids:?}", b.name);
        assert_eq!(pending(&b.root), 0, "{}", b.name);
    });
}

/// Issue scenario 2b: the same late give-up while the redelivery is still
/// staged, then cleanup.
///
/// Current code: A deletes C's intent (same name) and claim; cleanup, which
/// protects only files newer than the oldest intent, finds none and removes
/// C's staged data files; C then commits and publishes references to files
/// that are gone, and the table can no longer be read.
#[test]
fn a_writer_past_its_deadline_never_exposes_a_live_writers_files_to_cleanup() {
    on_each_backend(|b| {
        let dir = tempfile::tempdir().unwrap();
        seeded(&b.root, dir.path(), &["t"]);
        let s = jsonl(dir.path(), "s.jsonl", 100..110);
        let started = Instant::now();
        let a = hold_at(&mut ingest_cmd(&b.root, "t", &["--timeout", "3s"], &[&s]), BEFORE_COMMIT);
        wait_out(&b.root, started, Duration::from_secs(3));

        let c = hold_at(&mut ingest_cmd(&b.root, "t", &["--timeout", "120s"], &[&s]), BEFORE_COMMIT);
        a.release();
        a.wait_with_output();
        // Cleanup's orphan cutoff: a file must be over a second older than the oldest intent (or now).
        std::thread::sleep(Duration::from_millis(1500));
        let out = run(sluice(&b.root).args(["--json", "--clock-skew", "0s", "cleanup"]));
        assert_eq!(out.status.code(), Some(0), "{}: cleanup", b.name);

        c.release();
        let out = c.wait_with_output();
        assert_eq!(out.status.code(), Some(0), "{}: the live redelivery succeeds", b.name);
        let ids = readable_ids(&b.root, "t", b.name);
        assert_eq!(ids, ids_of(0..5, &[100..110]), "{}: s's rows exactly once", b.name);
        assert_eq!(pending(&b.root), 0, "{}", b.name);
    });
}

/// Issue scenario 2c: two optimizers of one (table, pin) share an operation id.
///
/// Optimizer O1 stalls after its intent until its deadline passes; O2 heals it
/// (rolls it back), plans the same compaction (same id), writes its rewrite
/// and stalls before committing. O1 then fails its deadline check. Current
/// code: it removes the intent by name, O2's; cleanup then removes O2's
/// rewritten files, O2 commits and publishes them, and the table cannot be read.
#[test]
fn an_optimizer_past_its_deadline_never_removes_another_optimizers_intent() {
    on_each_backend(|b| {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..6 {
            let f = jsonl(dir.path(), &format!("small-{i}.jsonl"), i * 10..i * 10 + 10);
            assert_eq!(run(sluice(&b.root).args(["ingest", "--table", "t"]).arg(&f)).status.code(), Some(0));
        }
        let started = Instant::now();
        let o1 = hold_at(sluice(&b.root).args(["--clock-skew", "0s", "optimize", "t", "--timeout", "3s"]), OPTIMIZE_AFTER_INTENT);
        wait_out(&b.root, started, Duration::from_secs(3));

        let o2 = hold_at(sluice(&b.root).args(["--clock-skew", "0s", "optimize", "t", "--timeout", "120s"]), OPTIMIZE_AFTER_REWRITE);
        o1.release();
        o1.wait_with_output();
        std::thread::sleep(Duration::from_millis(1500));
        let out = run(sluice(&b.root).args(["--json", "--clock-skew", "0s", "cleanup"]));
        assert_eq!(out.status.code(), Some(0), "{}: cleanup", b.name);

        o2.release();
        let out = o2.wait_with_output();
        assert_eq!(out.status.code(), Some(0), "{}: the live optimizer succeeds", b.name);
        assert_eq!(readable_ids(&b.root, "t", b.name), (0..60).collect::<Vec<_>>(), "{}: every row exactly once", b.name);
        assert_eq!(pending(&b.root), 0, "{}", b.name);
    });
}


/// In every kept manifest version, the load's rows (a: 100..110, b:
/// 200..215) are in both tables or in neither, and never more than once.
fn assert_load_atomic_in_every_version(root: &str, what: &str) {
    for v in history(root) {
        let (a, b) = (scan_ids_at(root, "a", &v), scan_ids_at(root, "b", &v));
        let (in_a, in_b) = (count_in(&a, 100..110), count_in(&b, 200..215));
        assert!(
            (in_a, in_b) == (0, 0) || (in_a, in_b) == (10, 15),
            "{what}: manifest version {} shows {in_a} of the load's 10 rows in a and {in_b} of its 15 in b (all or nothing, once): {v}",
            v["version"]
        );
    }
}

/// Issue scenario 4: a publish shows half of a load.
///
/// Load M committed both tables and recorded its forward decision, then
/// stalls before publishing; an ingest into table a publishes meanwhile, and
/// M dies. Current code: that publish vets M's commit on a (decided forward)
/// and moves a's pin past it, so a manifest version shows M's rows in a but
/// not in b until recovery publishes b.
#[test]
fn a_publish_never_shows_half_of_a_load() {
    on_each_backend(|b| {
        let dir = tempfile::tempdir().unwrap();
        seeded(&b.root, dir.path(), &["a", "b"]);
        let d = load_descriptor(dir.path());
        let started = Instant::now();
        let m = hold_at(sluice(&b.root).args(["load", "--timeout", "4s"]).arg(&d), AFTER_DECISION);

        let live = jsonl(dir.path(), "live.jsonl", 300..303);
        let out = run(&mut ingest_cmd(&b.root, "a", &["--timeout", "60s"], &[&live]));
        assert_eq!(out.status.code(), Some(0), "{}: the live ingest into a", b.name);
        drop(m); // kill -9
        assert_load_atomic_in_every_version(&b.root, &format!("{}, before recovery", b.name));

        wait_out(&b.root, started, Duration::from_secs(4));
        sweep_until_clean(&b.root, Duration::from_secs(60));
        assert_load_atomic_in_every_version(&b.root, &format!("{}, after recovery", b.name));
        assert_eq!(readable_ids(&b.root, "a", b.name), ids_of(0..5, &[100..110, 300..303]), "{}", b.name);
        assert_eq!(readable_ids(&b.root, "b", b.name), ids_of(0..5, &[200..215]), "{}", b.name);
        assert_eq!(pending(&b.root), 0, "{}", b.name);
    });
}

/// Issue scenario 5: a late single-table commit after its roll-back.
///
/// Writer A passes its last deadline check and freezes (like a paused VM)
/// just before its Lance commit; its deadline passes; recovery rolls it back
/// (nothing committed) and releases `s`. A then wakes and its commit lands.
/// `s` is delivered again and another file is ingested. Current code: A's
/// late commit is `single`-scoped, so the next publish shows it, and `s`'s
/// rows are published twice.
#[test]
fn a_late_commit_after_its_roll_back_is_never_published() {
    on_each_backend(|b| {
        let dir = tempfile::tempdir().unwrap();
        seeded(&b.root, dir.path(), &["t"]);
        let s = jsonl(dir.path(), "s.jsonl", 100..110);
        let started = Instant::now();
        let a = hold_at(&mut ingest_cmd(&b.root, "t", &["--timeout", "3s"], &[&s]), COMMIT_CHECKED);
        wait_out(&b.root, started, Duration::from_secs(3));
        let out = run(&mut recover_cmd(&b.root));
        assert_eq!(out.status.code(), Some(0), "{}: recovery rolls A back", b.name);

        a.release();
        a.wait_with_output();
        let out = run(&mut ingest_cmd(&b.root, "t", &[], &[&s]));
        assert_eq!(out.status.code(), Some(0), "{}: the redelivery of s", b.name);
        let other = jsonl(dir.path(), "other.jsonl", 300..303);
        assert_eq!(run(&mut ingest_cmd(&b.root, "t", &[], &[&other])).status.code(), Some(0), "{}: another ingest", b.name);
        sweep_until_clean(&b.root, Duration::from_secs(60));

        for (v, ids) in every_version(&b.root, "t") {
            assert!(count_in(&ids, 100..110) <= 10, "{}: manifest version {v} shows s's rows {} times: {ids:?}", b.name, count_in(&ids, 100..110) / 10);
        }
        let ids = readable_ids(&b.root, "t", b.name);
        assert_eq!(count_in(&ids, 100..110), 10, "{}: s's rows exactly once: {ids:?}", b.name);
        assert_eq!(ids, ids_of(0..5, &[100..110, 300..303]), "{}", b.name);
        assert_eq!(pending(&b.root), 0, "{}", b.name);
    });
}

/// A single-table ingest whose commit lands right after its start pin
/// publishes beside its forward decision, not after it. Writer A's clock runs
/// 117 s behind the sweep's (beyond the skew margin the sweep allows), so its
/// intent looks expired while A is well within its own deadline. A freezes
/// just before its Lance commit; a sweep finds no commit of A's and stops
/// before deciding; A's commit lands at the version after its pin, and A
/// pauses there; the sweep goes on, then A. The sweep must take that version
/// and look again before deciding A rolled back: it finds A's commit and
/// decides forward. Deciding roll_back from its first look would have A
/// publish rows the sweep then takes back, and release the source for a
/// second ingest.
#[test]
fn a_commit_published_beside_its_decision_is_never_rolled_back() {
    on_each_backend(|b| {
        let dir = tempfile::tempdir().unwrap();
        seeded(&b.root, dir.path(), &["t"]);
        let s = jsonl(dir.path(), "s.jsonl", 100..110);
        let started = Instant::now();
        let mut a = ingest_cmd(&b.root, "t", &["--timeout", "120s"], &[&s]);
        a.env("SLUICE_TEST_CLOCK_BEHIND_MS", "117000");
        let a = hold_at_then(&mut a, COMMIT_CHECKED, AFTER_COMMIT);
        wait_out(&b.root, started, Duration::from_secs(3));
        let sweep = hold_at(&mut recover_cmd(&b.root), RECOVER_BEFORE_FENCE);
        a.release();
        a.wait_for(AFTER_COMMIT);
        sweep.release();
        let swept = sweep.wait_with_output();
        a.release();
        let a = a.wait_with_output();
        let again = run(&mut ingest_cmd(&b.root, "t", &[], &[&s]));
        assert_eq!(again.status.code(), Some(0), "{}: the redelivery of s", b.name);
        sweep_until_clean(&b.root, Duration::from_secs(60));
        let mut shown = false;
        for (v, ids) in every_version(&b.root, "t") {
            let n = count_in(&ids, 100..110);
            assert!(n == 0 || n == 10, "{}: manifest version {v} shows part of s: {ids:?}", b.name);
            assert!(!shown || n == 10, "{}: manifest version {v} took back s's rows, shown before: {ids:?}", b.name);
            shown |= n == 10;
        }
        assert_eq!(readable_ids(&b.root, "t", b.name), ids_of(0..5, &[100..110]), "{}: s's rows exactly once", b.name);
        assert_eq!(pending(&b.root), 0, "{}", b.name);
        assert_eq!(a.status.code(), Some(0), "{}: A's publish stands: {}", b.name, String::from_utf8_lossy(&a.stderr));
        assert_eq!(swept.status.code(), Some(0), "{}", b.name);
        let swept = json(&swept);
        assert_eq!(swept["ops"][0]["verdict"], "rolled_forward", "{}: the sweep found A's commit: {swept}", b.name);
    });
}

/// `(id, name)` of every row of `table`'s latest Lance version (published or
/// not), and how many of its commits are sluice's roll-backs, as pylance reads them.
fn lance_latest(root: &str, table: &str) -> (Vec<(i64, String)>, usize) {
    let python = pylance().expect("pylance 14.0.2 in the test virtualenv (scripts/test.sh installs it)");
    let script = format!(
        "{PYLANCE_PRELUDE}\nimport json, lance\nds = lance.dataset('{root}/tables/{table}.lance', storage_options=storage_options('{root}'))\n\
         t = ds.to_table(columns=['id', 'name'])\n\
         rows = sorted(zip(t.column('id').to_pylist(), t.column('name').to_pylist()))\n\
         undone = sum(1 for x in ds.get_transactions(ds.version) if x and (x.transaction_properties or {{}}).get('sluice.scope') == 'rollback')\n\
         print(json.dumps([rows, undone]))\n"
    );
    let out = Command::new(python).arg("-c").arg(script).output().unwrap();
    assert!(out.status.success(), "pylance: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `(id, name)` of every published row of `table`.
fn published_rows(root: &str, table: &str) -> Vec<(i64, String)> {
    let out = run(sluice(root).args(["scan", table]));
    assert_eq!(out.status.code(), Some(0), "scan {table}: {}", String::from_utf8_lossy(&out.stderr));
    let mut rows: Vec<(i64, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|r| (r["id"].as_i64().unwrap(), r["name"].as_str().unwrap().to_string()))
        .collect();
    rows.sort();
    rows
}

/// A late upsert after its roll-back: writer A freezes just before its Lance
/// commit, recovery rolls it back, then its commit lands. It must be taken
/// back, and the table must go on taking ingests:
/// - untouched since (another file comes next): the rows it replaced come
///   back, its own go;
/// - superseded (its file is delivered again, and that upsert replaces every
///   row of A's): only the removal is recorded;
/// - superseded by another late upsert, itself rolled back: both are taken back.
///
/// Before, either case refused every later publish on the table (an upsert
/// "cannot be removed surgically") until an operator stepped in.
#[test]
fn a_late_upsert_after_its_roll_back_is_taken_back() {
    on_each_backend(|b| {
        let dir = tempfile::tempdir().unwrap();
        let upsert = ["--mode", "upsert", "--key", "id"];
        let file = |name: &str, ids: std::ops::Range<i64>, tag: &str| {
            write(dir.path(), name, ids.map(|i| format!("{{\"id\": {i}, \"name\": \"{tag}-{i}\"}}\n")).collect::<String>().as_bytes())
        };
        let named = |rows: &[(std::ops::Range<i64>, &str)]| -> Vec<(i64, String)> {
            let mut v: Vec<(i64, String)> = rows.iter().flat_map(|(r, tag)| r.clone().map(move |i| (i, format!("{tag}-{i}")))).collect();
            v.sort();
            v
        };
        let seed = file("seed.jsonl", 0..5, "old");
        assert_eq!(run(&mut ingest_cmd(&b.root, "u", &upsert, &[&seed])).status.code(), Some(0), "{}: seeding u", b.name);
        // Keys 3 and 4 exist: A replaces them and adds 5..13.
        let s = file("s.jsonl", 3..13, "late");
        let late_upsert = |what: &str, s: &Path| {
            let started = Instant::now();
            let a = hold_at(&mut ingest_cmd(&b.root, "u", &[&upsert[..], &["--timeout", "3s"]].concat(), &[s]), COMMIT_CHECKED);
            wait_out(&b.root, started, Duration::from_secs(3));
            let out = run(&mut recover_cmd(&b.root));
            assert_eq!(out.status.code(), Some(0), "{} ({what}): recovery rolls A back: {}", b.name, String::from_utf8_lossy(&out.stderr));
            a.release();
            a.wait_with_output();
        };

        late_upsert("untouched", &s);
        let (rows, _) = lance_latest(&b.root, "u");
        assert!(rows.iter().any(|(_, n)| n.starts_with("late-")), "{}: A's late commit landed (else this tests nothing): {rows:?}", b.name);
        let next = file("next.jsonl", 20..22, "next");
        let out = run(&mut ingest_cmd(&b.root, "u", &upsert, &[&next]));
        assert_eq!(out.status.code(), Some(0), "{}: the next ingest takes A's commit back and publishes: {}", b.name, String::from_utf8_lossy(&out.stderr));
        let want = named(&[(0..5, "old"), (20..22, "next")]);
        assert_eq!(published_rows(&b.root, "u"), want, "{}: the rows A replaced are back, its own gone", b.name);
        assert_eq!(lance_latest(&b.root, "u"), (want, 1), "{}: Lance's latest version agrees; one roll-back commit", b.name);

        late_upsert("superseded", &s);
        let out = run(&mut ingest_cmd(&b.root, "u", &upsert, &[&s]));
        assert_eq!(out.status.code(), Some(0), "{}: the redelivery of s publishes: {}", b.name, String::from_utf8_lossy(&out.stderr));
        let want = named(&[(0..3, "old"), (3..13, "late"), (20..22, "next")]);
        assert_eq!(published_rows(&b.root, "u"), want, "{}: s's rows once each, by the redelivery", b.name);
        assert_eq!(lance_latest(&b.root, "u"), (want.clone(), 2), "{}", b.name);

        // A chain: late upsert C1, then C2 of the same file (replacing every
        // row of C1's) lands late too. C1 looks superseded, but by a
        // rolled-back commit: C2 is taken back first (putting C1's rows back),
        // then C1.
        let t = file("t.jsonl", 30..33, "chained");
        late_upsert("chain, first", &t);
        late_upsert("chain, second", &t);
        let other = file("other.jsonl", 40..41, "other");
        let out = run(&mut ingest_cmd(&b.root, "u", &upsert, &[&other]));
        assert_eq!(out.status.code(), Some(0), "{}: an ingest after the chain: {}", b.name, String::from_utf8_lossy(&out.stderr));
        sweep_until_clean(&b.root, Duration::from_secs(60));
        let want = named(&[(0..3, "old"), (3..13, "late"), (20..22, "next"), (40..41, "other")]);
        assert_eq!(published_rows(&b.root, "u"), want, "{}: neither late upsert of t is shown", b.name);
        assert_eq!(lance_latest(&b.root, "u"), (want, 4), "{}", b.name);
        for (v, ids) in every_version(&b.root, "u") {
            let mut unique = ids.clone();
            unique.dedup();
            assert_eq!(unique, ids, "{}: manifest version {v} shows a key twice", b.name);
            assert!(ids.iter().all(|i| !(5..13).contains(i)) || count_in(&ids, 3..13) == 10, "{}: manifest version {v} shows part of s: {ids:?}", b.name);
            assert_eq!(count_in(&ids, 30..33), 0, "{}: manifest version {v} shows a rolled-back upsert of t: {ids:?}", b.name);
        }
        assert_eq!(pending(&b.root), 0, "{}", b.name);
    });
}

/// A child stopped (SIGSTOP) right after it printed the `n`-th trace of a failpoint.
struct Stopped {
    child: std::process::Child,
    stderr: Option<std::thread::JoinHandle<()>>,
}

impl Stopped {
    /// Start `cmd` with `FAILPOINTS=name=action`; when it reports reaching
    /// `name` for the `n`-th time, stop it. `action` must keep it at that
    /// failpoint long enough for the stop to land (a sleep of a few seconds).
    fn at_nth(cmd: &mut Command, name: &str, n: usize, action: &str) -> Stopped {
        let mut child = cmd
            .env("FAILPOINTS", format!("{name}={action}"))
            .env("SLUICE_TRACE_FAILPOINTS", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let marker = format!("failpoint: {name}");
        let (mut seen, mut line) = (0, String::new());
        while seen < n {
            line.clear();
            assert!(stderr.read_line(&mut line).unwrap() > 0, "{cmd:?} reached failpoint {name} only {seen} times");
            if line.contains(&marker) {
                seen += 1;
            }
        }
        signal(child.id(), "STOP");
        let stderr = std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut rest);
            eprintln!("stopped child's stderr after the stop:\n{rest}");
        });
        Stopped { child, stderr: Some(stderr) }
    }

    /// Let it go on (SIGCONT) and wait for it to exit.
    fn resume_and_wait(mut self) -> Option<i32> {
        signal(self.child.id(), "CONT");
        let status = self.child.wait().unwrap();
        self.stderr.take().unwrap().join().unwrap();
        status.code()
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status().unwrap().success();
    assert!(ok, "kill -{sig} {pid}");
}

/// Issue scenario 5, multi-table variant: a late commit of a load's second
/// table after recovery redid that table.
///
/// Load M commits table a, passes the deadline check of table b's commit and
/// freezes before the commit call; its deadline passes; recovery redoes b from
/// the unchanged source, decides forward and publishes. M wakes and its
/// commit of b lands too. Current code: the next ingest into b vets M's late
/// commit (the operation is decided forward) and publishes it: b's load rows
/// twice.
///
/// (M is frozen with SIGSTOP while it sleeps at the failpoint's second hit:
/// `hold_at` would stop it at the first table's commit.)
#[test]
fn a_late_commit_of_a_redone_load_table_is_never_published() {
    on_each_backend(|b| {
        let dir = tempfile::tempdir().unwrap();
        seeded(&b.root, dir.path(), &["a", "b"]);
        let d = load_descriptor(dir.path());
        let started = Instant::now();
        let m = Stopped::at_nth(sluice(&b.root).args(["load", "--timeout", "4s"]).arg(&d), COMMIT_CHECKED, 2, "1*off->sleep(5000)");
        wait_out(&b.root, started, Duration::from_secs(4));
        let out = run(&mut recover_cmd(&b.root));
        assert_eq!(out.status.code(), Some(0), "{}: recovery redoes b", b.name);
        assert_eq!(readable_ids(&b.root, "b", b.name), ids_of(0..5, &[200..215]), "{}", b.name);

        m.resume_and_wait();
        let other = jsonl(dir.path(), "other.jsonl", 300..303);
        assert_eq!(run(&mut ingest_cmd(&b.root, "b", &[], &[&other])).status.code(), Some(0), "{}: another ingest into b", b.name);
        sweep_until_clean(&b.root, Duration::from_secs(60));

        assert_load_atomic_in_every_version(&b.root, b.name);
        assert_eq!(readable_ids(&b.root, "a", b.name), ids_of(0..5, &[100..110]), "{}", b.name);
        let ids = readable_ids(&b.root, "b", b.name);
        assert_eq!(count_in(&ids, 200..215), 15, "{}: the load's rows in b exactly once: {ids:?}", b.name);
        assert_eq!(ids, ids_of(0..5, &[200..215, 300..303]), "{}", b.name);
        assert_eq!(pending(&b.root), 0, "{}", b.name);
    });
}

/// Issue scenario 6: a false "already ingested".
///
/// Operation Y (`ingest s o`) has claimed `s` and is alive, not yet
/// committed. Delivery D1 of `s` writes its intent and dies. Delivery D2 of
/// `s` finds the claim held by Y. Before the fix D2 reported "already
/// ingested", exit 0, while `s`'s rows were not published; Y then died, was
/// rolled back, and `s` never landed. The test checks: D2, whose deadline
/// comes before Y's, does not exit 0 (Y is held the whole time); once Y is
/// dead and rolled back, a delivery ingests `s`, exactly once.
#[test]
fn a_delivery_facing_a_claim_in_flight_does_not_report_it_done() {
    on_each_backend(|b| {
        let dir = tempfile::tempdir().unwrap();
        seeded(&b.root, dir.path(), &["t"]);
        let s = jsonl(dir.path(), "s.jsonl", 100..110);
        let o = jsonl(dir.path(), "o.jsonl", 200..205);
        // Y: alive, holding s's claim (default clock skew: nobody presumes it dead).
        let y_started = Instant::now();
        let y = hold_at(sluice(&b.root).args(["ingest", "--table", "t", "--timeout", "10s"]).arg(&s).arg(&o), AFTER_CLAIMS);
        // D1: writes the intent of s's operation, and dies.
        kill_9_at(sluice(&b.root).args(["ingest", "--table", "t", "--timeout", "2s"]).arg(&s), AFTER_INTENT);
        // D2: its deadline comes before Y's, so it can only wait for Y and give up.
        let d2 = run(&mut ingest_cmd(&b.root, "t", &["--timeout", "3s"], &[&s]));
        assert_ne!(d2.status.code(), Some(0), "{}: D2 acknowledged s while Y held it unpublished", b.name);
        assert_eq!(count_in(&readable_ids(&b.root, "t", b.name), 100..110), 0, "{}", b.name);

        // Y dies; recovery rolls it back and gives s back; s is delivered again.
        drop(y);
        wait_out(&b.root, y_started, Duration::from_secs(10));
        sweep_until_clean(&b.root, Duration::from_secs(60));
        assert_eq!(run(&mut ingest_cmd(&b.root, "t", &[], &[&s])).status.code(), Some(0), "{}: s delivered again", b.name);
        let ids = readable_ids(&b.root, "t", b.name);
        assert_eq!(count_in(&ids, 100..110), 10, "{}: s's rows exactly once: {ids:?}", b.name);
        assert_eq!(count_in(&ids, 200..205), 0, "{}: o was Y's alone, and Y was rolled back: {ids:?}", b.name);
        assert_eq!(pending(&b.root), 0, "{}", b.name);
    });
}

/// Issue scenario 7: the same source twice in one call.
///
/// `ingest a.jsonl a.jsonl`, `ingest b.jsonl ./b.jsonl` (the same file by
/// another name) and a load descriptor that lists one source twice. Current
/// code: the second claim of the same source by the same attempt is
/// recognised as "mine" and the rows are staged twice: published twice.
#[test]
fn the_same_source_twice_in_one_call_is_ingested_once() {
    on_each_backend(|b| {
        let dir = tempfile::tempdir().unwrap();
        seeded(&b.root, dir.path(), &["t"]);
        // Each case is checked; the test reports every one that fails.
        let mut problems = Vec::new();
        let mut check = |what: &str, out: std::process::Output, rows: std::ops::Range<i64>| {
            if out.status.code() != Some(0) {
                problems.push(format!("{what}: exit {:?}", out.status.code()));
            }
            let ids = readable_ids(&b.root, "t", b.name);
            let (n, want) = (count_in(&ids, rows.clone()), (rows.end - rows.start) as usize);
            if n != want {
                problems.push(format!("{what}: {n} rows of its {want} (want exactly once)"));
            }
        };

        let a = jsonl(dir.path(), "a.jsonl", 100..110);
        check("`ingest a.jsonl a.jsonl`", run(&mut ingest_cmd(&b.root, "t", &[], &[&a, &a])), 100..110);

        jsonl(dir.path(), "b.jsonl", 200..210);
        let out = run(ingest_cmd(&b.root, "t", &[], &[]).args(["b.jsonl", "./b.jsonl"]).current_dir(dir.path()));
        check("`ingest b.jsonl ./b.jsonl`", out, 200..210);

        jsonl(dir.path(), "c.jsonl", 300..310);
        let d = write(dir.path(), "twice.json", br#"{"tables": [{"table": "t", "sources": ["c.jsonl", "c.jsonl"]}]}"#);
        check("a load listing c.jsonl twice", run(sluice(&b.root).args(["load"]).arg(&d)), 300..310);

        // The same table listed twice with the same source: once, or refused as a usage error.
        jsonl(dir.path(), "e.jsonl", 400..410);
        let d = write(dir.path(), "table-twice.json", br#"{"tables": [{"table": "t", "sources": ["e.jsonl"]}, {"table": "t", "sources": ["e.jsonl"]}]}"#);
        let out = run(sluice(&b.root).args(["load"]).arg(&d));
        let ids = readable_ids(&b.root, "t", b.name);
        match (out.status.code(), count_in(&ids, 400..410)) {
            (Some(0), 10) | (Some(2), 0) => {}
            (code, n) => problems.push(format!("a load listing table t twice with e.jsonl: exit {code:?}, {n} rows of its 10 (want exit 0 and once, or exit 2 and none)")),
        }
        assert!(problems.is_empty(), "{}: {}", b.name, problems.join("; "));
        assert_eq!(pending(&b.root), 0, "{}", b.name);
    });
}

/// Issue scenario 7, upsert: a file that repeats a key. The table must never
/// hold that key twice: the file is rejected as bad input (exit 3), or one row
/// per key lands. Checked for a table the file creates and for an existing
/// upsert table (a key it already has, and a new one).
#[test]
fn an_upsert_file_that_repeats_a_key_never_duplicates_it() {
    fn rows(ids: &[i64]) -> Vec<u8> {
        ids.iter().map(|id| format!("{{\"id\": {id}, \"name\": \"row-{id}\", \"score\": 1.5}}\n")).collect::<String>().into_bytes()
    }
    on_each_backend(|b| {
        let dir = tempfile::tempdir().unwrap();
        let upsert = ["--mode", "upsert", "--key", "id"];
        let mut problems = Vec::new();
        let published = |table: &str| status(&b.root)["tables"].as_array().unwrap().iter().any(|t| t["name"] == table);

        // A new table from a file with id 7 twice.
        let dup = write(dir.path(), "dup.jsonl", &rows(&[6, 7, 8, 7]));
        let code = run(&mut ingest_cmd(&b.root, "u", &upsert, &[&dup])).status.code();
        let ids = if published("u") { readable_ids(&b.root, "u", b.name) } else { Vec::new() };
        match code {
            Some(0) if ids == [6, 7, 8] => {}
            Some(3) if ids.is_empty() => {}
            _ => problems.push(format!("a new upsert table from a file repeating id 7: exit {code:?}, ids {ids:?} (want exit 0 and [6, 7, 8], or exit 3 and no table)")),
        }

        // An existing upsert table: id 3 (present) and id 9 (new), each twice in one file.
        let seed = jsonl(dir.path(), "seed-v.jsonl", 0..5);
        assert_eq!(run(&mut ingest_cmd(&b.root, "v", &upsert, &[&seed])).status.code(), Some(0), "{}", b.name);
        let dup = write(dir.path(), "dup-v.jsonl", &rows(&[3, 9, 3, 9]));
        let code = run(&mut ingest_cmd(&b.root, "v", &upsert, &[&dup])).status.code();
        let ids = readable_ids(&b.root, "v", b.name);
        match code {
            Some(0) if ids == [0, 1, 2, 3, 4, 9] => {}
            Some(3) if ids == [0, 1, 2, 3, 4] => {}
            _ => problems.push(format!(
                "an existing upsert table and a file repeating ids 3 and 9: exit {code:?}, ids {ids:?} (want exit 0 and [0, 1, 2, 3, 4, 9], or exit 3 and [0, 1, 2, 3, 4])"
            )),
        }
        assert!(problems.is_empty(), "{}: {}", b.name, problems.join("; "));
        assert_eq!(pending(&b.root), 0, "{}", b.name);
    });
}

/// Pids of `sluice compact-tasks` processes working on the lake at `root`.
fn compact_workers(root: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<String> = cmdline.split(|&c| c == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if args.iter().any(|a| a == "compact-tasks") && args.iter().any(|a| a == root) {
            pids.push(pid);
        }
    }
    pids
}

/// Wait up to `limit` for no compact-tasks worker of `root` to be left; returns those left.
fn workers_left_after(root: &str, limit: Duration) -> Vec<u32> {
    let until = Instant::now() + limit;
    loop {
        let left = compact_workers(root);
        if left.is_empty() || Instant::now() >= until {
            return left;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Kill (SIGKILL) what this test's coordinator left behind, so a failure does
/// not leave sleeping processes; they are this test's own grandchildren.
fn reap(pids: &[u32]) {
    for pid in pids {
        let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
    }
}

fn small_fragments(root: &str, dir: &Path, table: &str, n: i64) {
    for i in 0..n {
        let f = jsonl(dir, &format!("{table}-{i}.jsonl"), i * 10..i * 10 + 10);
        assert_eq!(run(sluice(root).args(["ingest", "--table", table]).arg(&f)).status.code(), Some(0));
    }
}

/// Issue scenario 10: `optimize --parallel` and hung children.
///
/// The `compact-tasks` children hang after their rewrite (they inherit the
/// coordinator's `FAILPOINTS`). The coordinator must give up by its own
/// deadline (plus a small grace), exit non-zero and leave no child running.
/// Current code: it waits for its children without a bound, past its
/// `--timeout`.
#[test]
fn optimize_parallel_gives_up_on_hung_children_by_its_deadline() {
    on_each_backend(|b| {
        let dir = tempfile::tempdir().unwrap();
        small_fragments(&b.root, dir.path(), "t", 6);
        let mut coordinator = sluice(&b.root)
            .args(["optimize", "t", "--parallel", "2", "--target-rows", "20", "--timeout", "5s"])
            .env("FAILPOINTS", format!("{OPTIMIZE_AFTER_REWRITE}=sleep(600000)"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        let exited = loop {
            if let Some(status) = coordinator.try_wait().unwrap() {
                break Some(status);
            }
            if started.elapsed() > Duration::from_secs(20) {
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        if exited.is_none() {
            let _ = coordinator.kill();
            let _ = coordinator.wait();
        }
        let left = workers_left_after(&b.root, Duration::from_secs(3));
        reap(&left);
        let status = exited.unwrap_or_else(|| panic!("{}: the coordinator (--timeout 5s) was still running after 20 s", b.name));
        assert!(!status.success(), "{}: the coordinator fails: its workers never finished", b.name);
        assert!(left.is_empty(), "{}: compact-tasks workers {left:?} outlived their coordinator", b.name);

        sweep_until_clean(&b.root, Duration::from_secs(60));
        assert_eq!(readable_ids(&b.root, "t", b.name), (0..60).collect::<Vec<_>>(), "{}: every row exactly once", b.name);
    });
}

/// Issue scenario 10: a coordinator killed with `kill -9` while its
/// `compact-tasks` children hang must not leave them running. Current code:
/// they are orphaned and sleep on (here: 10 minutes).
#[test]
fn optimize_parallel_children_do_not_outlive_a_killed_coordinator() {
    on_each_backend(|b| {
        let dir = tempfile::tempdir().unwrap();
        small_fragments(&b.root, dir.path(), "t", 6);
        let mut coordinator = sluice(&b.root)
            .args(["optimize", "t", "--parallel", "2", "--target-rows", "20", "--timeout", "120s"])
            .env("FAILPOINTS", format!("{OPTIMIZE_AFTER_REWRITE}=sleep(600000)"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Rendezvous: both workers are running.
        let until = Instant::now() + Duration::from_secs(60);
        while compact_workers(&b.root).len() < 2 {
            if Instant::now() >= until {
                let _ = coordinator.kill();
                let _ = coordinator.wait();
                reap(&workers_left_after(&b.root, Duration::from_secs(1)));
                panic!("{}: the coordinator never started two workers", b.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        coordinator.kill().unwrap(); // SIGKILL
        coordinator.wait().unwrap();
        let left = workers_left_after(&b.root, Duration::from_secs(5));
        reap(&left);
        assert!(left.is_empty(), "{}: compact-tasks workers {left:?} outlived their kill -9'd coordinator", b.name);
    });
}

/// Issue scenario 8: an S3 event's own object version.
///
/// An S3 notification names the eTag of version 1 of a key; it is delivered
/// after the key was overwritten with version 2. The function must not ingest
/// version 2's rows under that event: it fails loudly, or (on a versioned
/// bucket) ingests exactly version 1. Current code: it ignores the event's
/// eTag/versionId, ingests whatever the key holds now (version 2) and reports
/// success. (S3 only: the local S3 server; skipped without it.)
#[test]
fn an_s3_event_never_ingests_another_version_of_its_object() {
    use object_store::{ObjectStoreExt, PutPayload, path::Path as StorePath};
    let Ok(base) = std::env::var("SLUICE_TEST_S3") else {
        eprintln!("note: SLUICE_TEST_S3 unset: skipped");
        return;
    };
    let bucket = base.trim_start_matches("s3://").split('/').next().unwrap().to_string();
    let store = sluice::lake::s3_store(&bucket, &sluice::lake::s3_options_from_env()).unwrap();
    let prefix = format!("fencing-{}", uuid::Uuid::new_v4().simple());
    let lake = format!("s3://{bucket}/{prefix}/lake");
    let key = format!("{prefix}/incoming/orders/o.jsonl");
    let rows = |ids: std::ops::Range<i64>| ids.map(|i| format!("{{\"id\": {i}, \"name\": \"n{i}\"}}\n")).collect::<String>();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let v1 = rt.block_on(store.put(&StorePath::from(key.as_str()), PutPayload::from(rows(0..10)))).unwrap();
    let e_tag = v1.e_tag.clone().expect("the S3 server returns an ETag").trim_matches('"').to_string();
    rt.block_on(store.put(&StorePath::from(key.as_str()), PutPayload::from(rows(100..110)))).unwrap();

    let mut object = serde_json::json!({"key": key, "size": rows(0..10).len(), "eTag": e_tag, "sequencer": "0"});
    if let Some(version) = &v1.version {
        object["versionId"] = serde_json::json!(version);
    }
    let event = serde_json::json!({"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
        "eventTime": "2026-11-24T12:00:00.000Z", "eventName": "ObjectCreated:Put",
        "userIdentity": {"principalId": "test"}, "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "responseElements": {},
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "incoming",
               "bucket": {"name": bucket, "ownerIdentity": {"principalId": "test"}, "arn": format!("arn:aws:s3:::{bucket}")},
               "object": object}
    }]});
    let api = crate::lambda::RuntimeApi::start();
    let _function = api.function(&[("SLUICE_ROOT", &lake), ("SLUICE_CLOCK_SKEW", "0s")]);
    let answer = api.call(&event);
    eprintln!("answer: {answer:?}");

    // A lake that was never written has no status (exit 2): nothing was published.
    let out = run(sluice(&lake).args(["--json", "status"]));
    let published = out.status.code() == Some(0) && json(&out)["tables"].as_array().unwrap().iter().any(|t| t["name"] == "orders");
    let ids = if published { scan_ids(&lake, "orders") } else { Vec::new() };
    assert_eq!(count_in(&ids, 100..110), 0, "the event of version 1 ingested version 2's rows: {ids:?} (answer: {answer:?})");
    if let crate::lambda::Answer::Response(r) = &answer
        && r.get("error").is_none()
    {
        assert_eq!(ids, (0..10).collect::<Vec<_>>(), "the function reported success, so version 1's rows exactly once (answer: {r})");
    }
}

/// Review finding: two loads whose commits cross on two tables. L1 commits a
/// and stalls; L2 commits a and b and decides forward, then must not show
/// L1's undecided commit on a, so it waits; L1 resumes, commits b after L2's
/// commit there and decides forward. Waiting for each other's publish would
/// wedge both tables for good; instead L1's publish joins L2 (decided
/// forward, not yet shown): one manifest version shows both loads whole, and
/// L2 then finds its goal reached.
#[test]
fn two_loads_crossing_on_two_tables_both_publish_whole() {
    on_each_backend(|b| {
        let dir = tempfile::tempdir().unwrap();
        seeded(&b.root, dir.path(), &["a", "b"]);
        let first = load_descriptor(dir.path());
        jsonl(dir.path(), "second-a.jsonl", 400..410);
        jsonl(dir.path(), "second-b.jsonl", 500..515);
        let second = write(
            dir.path(),
            "second.json",
            br#"{"tables": [{"table": "a", "sources": ["second-a.jsonl"]}, {"table": "b", "sources": ["second-b.jsonl"]}]}"#,
        );
        // L1 has committed a (the first table), nothing else.
        let l1 = hold_at(sluice(&b.root).args(["load", "--timeout", "60s"]).arg(&first), AFTER_COMMIT);
        // L2 commits a and b and decides forward; its publish then meets L1's commit on a.
        let l2 = spawn_at(sluice(&b.root).args(["load", "--timeout", "60s"]).arg(&second), AFTER_DECISION, "off");
        l1.release();
        let (o1, o2) = (l1.wait_with_output(), l2.wait_with_output());
        assert_eq!((o1.status.code(), o2.status.code()), (Some(0), Some(0)), "{}: both loads publish", b.name);
        assert_load_atomic_in_every_version(&b.root, b.name);
        for v in history(&b.root) {
            let (a, bb) = (scan_ids_at(&b.root, "a", &v), scan_ids_at(&b.root, "b", &v));
            let (in_a, in_b) = (count_in(&a, 400..410), count_in(&bb, 500..515));
            assert!((in_a, in_b) == (0, 0) || (in_a, in_b) == (10, 15), "{}: version {} shows half of the second load", b.name, v["version"]);
        }
        assert_eq!(readable_ids(&b.root, "a", b.name), ids_of(0..5, &[100..110, 400..410]), "{}", b.name);
        assert_eq!(readable_ids(&b.root, "b", b.name), ids_of(0..5, &[200..215, 500..515]), "{}", b.name);
        assert_eq!(pending(&b.root), 0, "{}", b.name);
    });
}

/// Another tool's commit (a Lance `Delete` written without sluice's tags)
/// blocks every publish of the table at once, with an error that names
/// `sluice adopt`; `sluice adopt` records it and the next publish shows it.
#[test]
fn a_foreign_commit_is_refused_until_adopted() {
    on_each_backend(|b| {
        let dir = tempfile::tempdir().unwrap();
        seeded(&b.root, dir.path(), &["t"]);
        // A pylance user deletes rows: an untagged Lance commit after the pin.
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let lake = sluice::Lake::open(&b.root).unwrap();
            let mut ds = lake.open_table("t", None).await.unwrap();
            ds.delete("id = 3").await.unwrap();
        });
        let more = jsonl(dir.path(), "more.jsonl", 100..103);
        let started = Instant::now();
        let out = run(&mut ingest_cmd(&b.root, "t", &["--timeout", "20s"], &[&more]));
        assert_eq!(out.status.code(), Some(1), "{}: the publish is refused", b.name);
        assert!(started.elapsed() < Duration::from_secs(10), "{}: at once, not after waiting out the deadline", b.name);
        assert!(String::from_utf8_lossy(&out.stderr).contains("sluice adopt t"), "{}: says what to run", b.name);
        assert_eq!(readable_ids(&b.root, "t", b.name), ids_of(0..5, &[]), "{}: nothing of it published", b.name);

        let dry = json(&run(sluice(&b.root).args(["--json", "adopt", "t", "--dry-run"])));
        assert_eq!(dry["adopted"].as_array().unwrap().len(), 1, "{}: {dry}", b.name);
        let adopted = json(&run(sluice(&b.root).args(["--json", "adopt", "t"])));
        assert_eq!(adopted["adopted"][0]["operation"], "Delete", "{}: {adopted}", b.name);
        // The refused ingest's commit (decided forward) is newer than the delete:
        // redelivered, the source waits for that attempt, which recovery then publishes.
        let again = run(&mut ingest_cmd(&b.root, "t", &["--timeout", "40s"], &[&more]));
        assert_eq!(again.status.code(), Some(0), "{}", b.name);
        sweep_until_clean(&b.root, Duration::from_secs(60));
        let want: Vec<i64> = [0, 1, 2, 4].into_iter().chain(100..103).collect();
        assert_eq!(readable_ids(&b.root, "t", b.name), want, "{}: the delete and the rows, once", b.name);
    });
}

/// Issue scenario 3: a table's creation that landed but answered late. The
/// new table's first Lance manifest PUT is applied, then answered only after
/// the writer's commit timeout fired. The writer must learn from the table's
/// history that its creation landed — never take it for another writer's
/// creation and append the same rows again, nor give the source back while
/// version 1 holds its rows.
#[test]
fn a_creation_that_landed_but_answered_late_is_not_redone() {
    on_each_backend(|b| {
        let dir = tempfile::tempdir().unwrap();
        let s = jsonl(dir.path(), "s.jsonl", 0..10);
        let started = Instant::now();
        let mut cmd = ingest_cmd(&b.root, "fresh", &["--timeout", "4s"], &[&s]);
        cmd.env("SLUICE_FAULTS", "rule=fresh.lance/_versions/:applied-then-slow-8000");
        let out = run(&mut cmd);
        assert!(String::from_utf8_lossy(&out.stderr).contains("fault: applied-then-slow"), "{}: the fault fired", b.name);
        wait_out(&b.root, started, Duration::from_secs(4));
        sweep_until_clean(&b.root, Duration::from_secs(60));
        let again = run(&mut ingest_cmd(&b.root, "fresh", &[], &[&s]));
        assert_eq!(again.status.code(), Some(0), "{}", b.name);
        assert_eq!(readable_ids(&b.root, "fresh", b.name), (0..10).collect::<Vec<_>>(), "{}: the rows exactly once", b.name);
        for (v, ids) in every_version(&b.root, "fresh") {
            assert!(ids.len() <= 10, "{}: manifest version {v} shows the rows more than once: {ids:?}", b.name);
        }
    });
}

/// Issue scenario 9: a claim's create-only PUT answers with an error, the
/// read-back finds nothing, and the PUT lands only afterwards. The writer
/// gives up; its claim must not then stand as "ingested" with no intent
/// behind it: the next delivery ingests the source.
#[test]
fn a_claim_that_lands_after_its_writer_gave_up_is_not_taken_for_done() {
    on_each_backend(|b| {
        let dir = tempfile::tempdir().unwrap();
        seeded(&b.root, dir.path(), &["t"]);
        let s = jsonl(dir.path(), "s.jsonl", 100..110);
        let mut cmd = ingest_cmd(&b.root, "t", &["--timeout", "30s"], &[&s]);
        cmd.env("SLUICE_FAULTS", "rule=_ingested/:lands-late");
        let out = run(&mut cmd);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("fault: landed-late"), "{}: the claim landed after the read-back: {stderr}", b.name);
        assert_ne!(out.status.code(), Some(0), "{}: the writer gave up", b.name);
        let again = run(&mut ingest_cmd(&b.root, "t", &[], &[&s]));
        assert_eq!(again.status.code(), Some(0), "{}", b.name);
        assert_eq!(readable_ids(&b.root, "t", b.name), ids_of(0..5, &[100..110]), "{}: delivered again, the source lands once", b.name);
        assert_eq!(pending(&b.root), 0, "{}", b.name);
    });
}

/// Found by the explorer (seed 46): a load that owns only some of its sources
/// while another attempt still holds the rest must not publish its part
/// alone. Load M1 (la → a, lb → b) holds both claims and stalls; load M2
/// (la2 → a, lb → b) shares lb. M2 waits for M1 instead of publishing la2
/// without lb; once M1 published, M2 publishes la2. In no manifest version
/// is la2 shown without lb.
#[test]
fn a_load_sharing_a_source_with_a_load_in_flight_waits_for_it() {
    on_each_backend(|b| {
        let dir = tempfile::tempdir().unwrap();
        seeded(&b.root, dir.path(), &["a", "b"]);
        let first = load_descriptor(dir.path());
        jsonl(dir.path(), "second-a.jsonl", 400..410);
        let second = write(
            dir.path(),
            "second.json",
            br#"{"tables": [{"table": "a", "sources": ["second-a.jsonl"]}, {"table": "b", "sources": ["load-b.jsonl"]}]}"#,
        );
        let m1 = hold_at(sluice(&b.root).args(["load", "--timeout", "60s"]).arg(&first), AFTER_CLAIMS);
        let m2 = spawn_at(sluice(&b.root).args(["--json", "load", "--timeout", "60s"]).arg(&second), AFTER_INTENT, "off");
        // M2 claims second-a, finds load-b held by M1 in flight, and waits: nothing of it shows.
        std::thread::sleep(Duration::from_millis(1500));
        for v in history(&b.root) {
            assert_eq!(count_in(&scan_ids_at(&b.root, "a", &v), 400..410), 0, "{}: version {} shows M2's a without its b", b.name, v["version"]);
        }
        m1.release();
        let (o1, o2) = (m1.wait_with_output(), m2.wait_with_output());
        assert_eq!((o1.status.code(), o2.status.code()), (Some(0), Some(0)), "{}", b.name);
        for v in history(&b.root) {
            let (a, bb) = (scan_ids_at(&b.root, "a", &v), scan_ids_at(&b.root, "b", &v));
            if count_in(&a, 400..410) > 0 {
                assert_eq!(count_in(&bb, 200..215), 15, "{}: version {} shows M2's a without its b", b.name, v["version"]);
            }
        }
        assert_eq!(readable_ids(&b.root, "a", b.name), ids_of(0..5, &[100..110, 400..410]), "{}", b.name);
        assert_eq!(readable_ids(&b.root, "b", b.name), ids_of(0..5, &[200..215]), "{}", b.name);
    });
}
