//! Shared fixtures: backends, data files, and running the real `sluice` binary.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use sluice::Lake;
use sluice::decode::Progress;
use sluice::ingest::{self, Report, TableRequest};
use sluice::manifest::Mode;

pub const TIMEOUT: Duration = Duration::from_secs(120);

/// A lake root on one backend, unique per test.
pub struct Backend {
    pub name: &'static str,
    pub root: String,
    _dir: Option<tempfile::TempDir>,
}

fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

fn s3_root() -> Option<String> {
    match std::env::var("SLUICE_TEST_S3") {
        Ok(base) => Some(format!("{}/{}", base.trim_end_matches('/'), unique())),
        Err(_) => {
            assert!(std::env::var_os("SLUICE_REQUIRE_S3").is_none(), "SLUICE_REQUIRE_S3 is set but SLUICE_TEST_S3 is not");
            eprintln!("note: SLUICE_TEST_S3 unset: S3 cases skipped (scripts/test.sh runs them)");
            None
        }
    }
}

pub fn local() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    Backend { name: "local", root: dir.path().join("lake").display().to_string(), _dir: Some(dir) }
}

/// Backends a child process can share: local files and S3.
pub fn shared_backends() -> Vec<Backend> {
    let mut out = vec![local()];
    if let Some(root) = s3_root() {
        out.push(Backend { name: "s3", root, _dir: None });
    }
    out
}

/// Run `test` on every shared backend; report every backend's failure, not just the first.
pub fn on_each_backend(test: impl Fn(&Backend)) {
    let mut failures = Vec::new();
    for b in shared_backends() {
        if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| test(&b))) {
            let msg = e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()));
            failures.push(format!("[{}] {}", b.name, msg.unwrap_or_default()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

pub fn memory() -> Backend {
    Backend { name: "memory", root: format!("memory://{}", unique()), _dir: None }
}

/// Every backend, memory included (in-process tests only).
pub fn all_backends() -> Vec<Backend> {
    let mut out = shared_backends();
    out.push(memory());
    out
}

/// A JSONL file of rows `id` in `ids`, with a name and a score.
pub fn jsonl(dir: &Path, name: &str, ids: std::ops::Range<i64>) -> PathBuf {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    for id in ids {
        writeln!(f, r#"{{"id": {id}, "name": "row-{id}", "score": {}.5}}"#, id % 97).unwrap();
    }
    f.flush().unwrap();
    path
}

pub fn write(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, content).unwrap();
    path
}

/// A Parquet file of these columns.
pub fn parquet_of(dir: &Path, name: &str, columns: Vec<(&str, arrow::array::ArrayRef)>) -> PathBuf {
    let batch = arrow::array::RecordBatch::try_from_iter(columns).unwrap();
    let mut out = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut out, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    write(dir, name, &out)
}

pub fn request(table: &str, sources: &[&Path]) -> TableRequest {
    TableRequest { table: table.into(), sources: sources.iter().map(|p| p.display().to_string().into()).collect(), ..Default::default() }
}

pub fn upsert(table: &str, key: &str, sources: &[&Path]) -> TableRequest {
    TableRequest { mode: Some(Mode::Upsert), key: Some(key.into()), ..request(table, sources) }
}

pub async fn ingest(lake: &Lake, requests: Vec<TableRequest>) -> sluice::Result<Report> {
    ingest::run(lake, requests, ingest::Budget::new(TIMEOUT), Arc::new(Progress::default())).await
}

/// The published ids of `table` (latest manifest or `at`), sorted.
pub async fn ids(lake: &Lake, table: &str, at: Option<u64>) -> Vec<i64> {
    let (_, mut batches) = sluice::read::scan(lake, table, at, None).await.unwrap();
    let mut out = Vec::new();
    while let Some(b) = batches.next().await {
        let b = b.unwrap();
        let col = b.column_by_name("id").unwrap();
        let col = arrow::compute::cast(col, &arrow::datatypes::DataType::Int64).unwrap();
        let col = col.as_any().downcast_ref::<arrow::array::Int64Array>().unwrap();
        out.extend(col.iter().map(|v| v.unwrap()));
    }
    out.sort();
    out
}

/// The real binary, with the test environment.
pub fn sluice(root: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    // Tests start from fresh roots: the first ingest creates the lake
    // (`a_mistyped_root_is_an_error_not_a_new_lake` checks the default).
    cmd.arg("--root").arg(root).env_remove("FAILPOINTS").env_remove("SLUICE_ROOT").env_remove("SLUICE_HOLD_AT").env("SLUICE_CREATE", "true");
    cmd
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run sluice");
    eprintln!(
        "$ {:?}\n  exit {:?}\n  stdout: {}\n  stderr: {}",
        cmd,
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    out
}

pub fn json(out: &Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_else(|| panic!("no output; stderr: {}", String::from_utf8_lossy(&out.stderr)));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

/// Run `cmd` until it reaches failpoint `name` (where it sleeps), then SIGKILL it.
pub fn kill_9_at(cmd: &mut Command, name: &str) {
    use std::io::BufRead;
    let mut child = cmd
        .env("FAILPOINTS", format!("{name}=sleep(600000)"))
        .env("SLUICE_TRACE_FAILPOINTS", "1")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let marker = format!("failpoint: {name}");
    let reached = stderr.lines().map_while(Result::ok).any(|l| l.contains(&marker));
    assert!(reached, "{cmd:?} never reached failpoint {name}");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

/// A memory lake whose own store injects the faults the returned handle asks for.
pub fn faulty_memory_lake() -> (Lake, Arc<sluice::faults::FaultStore>) {
    faulty_lake(&memory().root)
}

/// The lake at `root`, its own store injecting the faults the handle asks for.
pub fn faulty_lake(root: &str) -> (Lake, Arc<sluice::faults::FaultStore>) {
    let mut faults = None;
    let lake = Lake::open_wrapped(root, |inner| {
        let store = Arc::new(sluice::faults::FaultStore::new(inner));
        faults = Some(Arc::clone(&store));
        store
    })
    .unwrap();
    (lake, faults.unwrap())
}

pub fn status(root: &str) -> serde_json::Value {
    let out = run(sluice(root).args(["--json", "status"]));
    assert_eq!(out.status.code(), Some(0));
    json(&out)
}

pub fn table_rows(status: &serde_json::Value, table: &str) -> Option<u64> {
    status["tables"].as_array().unwrap().iter().find(|t| t["name"] == table).map(|t| t["rows"].as_u64().unwrap())
}

/// A child process held at a failpoint; its stderr is collected in the background.
pub struct Held {
    /// Taken by `wait_with_output`; a child still here on drop (a failed test) is killed.
    child: Option<std::process::Child>,
    stderr: std::thread::JoinHandle<Vec<u8>>,
    /// Its stderr lines after the failpoint it was started to.
    lines: std::sync::mpsc::Receiver<String>,
    /// For [`hold_at`]: the files whose creation let it go on, one per
    /// failpoint it is held at, and how many were created.
    release: Option<(tempfile::TempDir, Vec<PathBuf>)>,
    released: std::sync::atomic::AtomicUsize,
}

impl Held {
    /// Let a child started by [`hold_at`] (or [`hold_at_then`]) go on from
    /// the failpoint it is held at (the first one not yet released).
    pub fn release(&self) {
        let (_, files) = self.release.as_ref().expect("started by hold_at");
        let next = self.released.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::fs::write(&files[next], b"go").unwrap();
    }

    /// Return once the child has reached failpoint `name` (later than the one
    /// it was started to): a rendezvous on a step it does not stop at.
    pub fn wait_for(&self, name: &str) {
        let marker = format!("failpoint: {name}");
        let until = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            let left = until.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(&marker) => return,
                Ok(_) => {}
                Err(e) => panic!("the child never reached failpoint {name}: {e}"),
            }
        }
    }

    pub fn wait_with_output(mut self) -> Output {
        let mut out = self.child.take().unwrap().wait_with_output().unwrap();
        out.stderr = std::mem::replace(&mut self.stderr, std::thread::spawn(Vec::new)).join().unwrap();
        eprintln!("held child: exit {:?}\n  stdout: {}\n  stderr: {}", out.status.code(), String::from_utf8_lossy(&out.stdout).trim(), String::from_utf8_lossy(&out.stderr).trim());
        out
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Start `cmd` with `action` at failpoint `name` and return once it got there
/// (it then runs the action: a sleep holds it at that step).
pub fn spawn_at(cmd: &mut Command, name: &str, action: &str) -> Held {
    start_at(cmd.env("FAILPOINTS", format!("{name}={action}")), name, 1, None)
}

/// Start `cmd`, and return once it stands at failpoint `name`, where it
/// waits until [`Held::release`]: a deterministic rendezvous.
pub fn hold_at(cmd: &mut Command, name: &str) -> Held {
    hold_at_each(cmd, &[name])
}

/// [`hold_at`] `first`; once released there, the child stops again at
/// `then` until released once more ([`Held::wait_for`] `then` to meet it).
pub fn hold_at_then(cmd: &mut Command, first: &str, then: &str) -> Held {
    hold_at_each(cmd, &[first, then])
}

/// [`hold_at`] the `n`-th time the child reaches `name` (it passes the earlier ones).
pub fn hold_at_nth(cmd: &mut Command, name: &str, n: usize) -> Held {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("release-0");
    cmd.env("SLUICE_HOLD_AT", format!("{name}@{n}={}", file.display()));
    start_at(cmd, name, n, Some((dir, vec![file])))
}

fn hold_at_each(cmd: &mut Command, names: &[&str]) -> Held {
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = (0..names.len()).map(|i| dir.path().join(format!("release-{i}"))).collect();
    let spec: Vec<String> = names.iter().zip(&files).map(|(name, file)| format!("{name}={}", file.display())).collect();
    cmd.env("SLUICE_HOLD_AT", spec.join(","));
    start_at(cmd, names[0], 1, Some((dir, files)))
}

fn start_at(cmd: &mut Command, name: &str, n: usize, release: Option<(tempfile::TempDir, Vec<PathBuf>)>) -> Held {
    use std::io::BufRead;
    let mut child = cmd
        .env("SLUICE_TRACE_FAILPOINTS", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let marker = format!("failpoint: {name}");
    let (mut reached, mut line) = (0, String::new());
    while reached < n {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "{cmd:?} reached failpoint {name} {reached} times, not {n}");
        reached += usize::from(line.contains(&marker));
    }
    // Keep draining stderr so the child never blocks on a full pipe, passing
    // each line on for `Held::wait_for`.
    let (lines, passed) = std::sync::mpsc::channel();
    let stderr = std::thread::spawn(move || {
        let (mut rest, mut line) = (Vec::new(), Vec::new());
        while stderr.read_until(b'\n', &mut line).unwrap() > 0 {
            rest.extend_from_slice(&line);
            let _ = lines.send(String::from_utf8_lossy(&line).into_owned());
            line.clear();
        }
        rest
    });
    Held { child: Some(child), stderr, lines: passed, release, released: Default::default() }
}

/// Run `sluice recover --clock-skew 0s` until nothing is pending (waiting out
/// live owners), at most `limit`. Every pass must exit 0. Returns the reports.
pub fn sweep_until_clean(root: &str, limit: Duration) -> Vec<serde_json::Value> {
    let start = std::time::Instant::now();
    let mut reports = Vec::new();
    loop {
        let out = run(sluice(root).args(["--json", "--clock-skew", "0s", "recover", "--timeout", "20s"]));
        assert_eq!(out.status.code(), Some(0), "a sweep failed");
        let report = json(&out);
        let done = report["ops"].as_array().unwrap().iter().all(|o| o["action"] == "decided" || o["action"] == "done_by_other");
        reports.push(report);
        if done {
            return reports;
        }
        assert!(start.elapsed() < limit, "still pending after {limit:?}: {reports:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The ids `sluice scan TABLE` shows, sorted.
pub fn scan_ids(root: &str, table: &str) -> Vec<i64> {
    let out = run(sluice(root).args(["scan", table]));
    assert_eq!(out.status.code(), Some(0));
    sorted_ids(&out)
}

/// The `id`s of a JSONL scan's output, sorted.
fn sorted_ids(out: &Output) -> Vec<i64> {
    let mut ids: Vec<i64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_i64().unwrap())
        .collect();
    ids.sort();
    ids
}

pub fn pending(root: &str) -> usize {
    status(root)["pending"].as_array().unwrap().len()
}

/// Every manifest version the lake keeps, oldest first (`sluice --json history`).
pub fn history(root: &str) -> Vec<serde_json::Value> {
    let out = run(sluice(root).args(["--json", "history", "--limit", "100000"]));
    assert_eq!(out.status.code(), Some(0), "history failed");
    let mut versions = json(&out).as_array().unwrap().clone();
    versions.reverse();
    versions
}

/// The ids `sluice scan TABLE --at V` shows, sorted; empty when version `v`
/// does not have the table (per `history`'s `tables`).
pub fn scan_ids_at(root: &str, table: &str, version: &serde_json::Value) -> Vec<i64> {
    if version["tables"].get(table).is_none() {
        return Vec::new();
    }
    let v = version["version"].as_u64().unwrap().to_string();
    let out = run(sluice(root).args(["scan", table, "--at", &v]));
    assert_eq!(out.status.code(), Some(0), "scan {table} --at {v} failed");
    sorted_ids(&out)
}

/// How many of `ids` fall in `range`.
pub fn count_in(ids: &[i64], range: std::ops::Range<i64>) -> usize {
    ids.iter().filter(|i| range.contains(i)).count()
}

/// Wait out the deadline of an operation started at `started` with `timeout`:
/// sleep past it, then (its process started a little later than `started`)
/// poll until `status` shows no intent whose deadline is still ahead.
pub fn wait_out(root: &str, started: std::time::Instant, timeout: Duration) {
    sleep_past(started + timeout);
    let limit = std::time::Instant::now() + Duration::from_secs(30);
    while status(root)["pending"].as_array().unwrap().iter().any(|p| p["expired"] == false) {
        assert!(std::time::Instant::now() < limit, "an intent never expired");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sleep until `deadline` (an operation's `--timeout` from when it started) has passed.
pub fn sleep_past(deadline: std::time::Instant) {
    let now = std::time::Instant::now();
    if deadline > now {
        std::thread::sleep(deadline - now);
    }
    std::thread::sleep(Duration::from_millis(300));
}

/// Does the venv's python import pylance? (Checked once.)
pub fn pylance() -> Option<PathBuf> {
    static FOUND: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    FOUND
        .get_or_init(|| {
            let venv = std::env::var_os("SLUICE_VENV").map(PathBuf::from).unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/sluice-venv")
            });
            let python = venv.join("bin/python");
            let ok = Command::new(&python).args(["-c", "import lance"]).output().is_ok_and(|o| o.status.success());
            if !ok {
                eprintln!("note: pylance is not importable from {}: the pylance cross-check is skipped (scripts/env.sh installs it)", python.display());
            }
            ok.then_some(python)
        })
        .clone()
}

/// Python defining `storage_options(root)` for pylance on local files or the S3 server.
pub const PYLANCE_PRELUDE: &str = r#"
import os
def storage_options(root):
    if not root.startswith("s3://"):
        return None
    return {"region": os.environ.get("AWS_REGION", "us-east-1"), "allow_http": "true",
            "endpoint": os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ["AWS_ENDPOINT_URL"],
            "aws_access_key_id": os.environ["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": os.environ["AWS_SECRET_ACCESS_KEY"]}
"#;

/// Seed each of `tables` with rows 0..5 (files in `dir`).
pub fn seeded(root: &str, dir: &Path, tables: &[&str]) {
    for t in tables {
        let seed = jsonl(dir, &format!("seed-{t}.jsonl"), 0..5);
        assert_eq!(run(sluice(root).args(["ingest", "--table", t]).arg(&seed)).status.code(), Some(0), "seeding {t}");
    }
}

/// A load of two files: rows 100..110 into table a, 200..215 into table b.
pub fn load_descriptor(dir: &Path) -> PathBuf {
    jsonl(dir, "load-a.jsonl", 100..110);
    jsonl(dir, "load-b.jsonl", 200..215);
    write(dir, "load.json", br#"{"tables": [{"table": "a", "sources": ["load-a.jsonl"]}, {"table": "b", "sources": ["load-b.jsonl"]}]}"#)
}
