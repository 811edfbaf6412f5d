//! Compaction fan-out over local processes: each batch of tasks goes to a
//! `sluice compact-tasks` child as JSON on stdin, its results come back on
//! stdout, and the coordinator commits them all at once. A child that fails
//! fails the whole compaction before anything is committed.

use std::process::Stdio;
use std::time::Duration;

use lance::dataset::optimize::RewriteResult;
use sluice::deadline::Deadline;
use sluice::optimize::{self, Batch, Executor};
use sluice::{Error, Lake, Result};
use tokio::io::AsyncWriteExt;

/// Environment variable naming the coordinator's pid, for `compact-tasks` children.
pub const PARENT_PID: &str = "SLUICE_PARENT_PID";
/// Time past the deadline a child gets to report before it is killed.
const CHILD_GRACE: Duration = Duration::from_secs(2);

/// In a `compact-tasks` child: exit as soon as the coordinator that started it
/// is gone, so a killed coordinator leaves no worker behind.
pub fn exit_with_parent() {
    let Some(parent) = std::env::var(PARENT_PID).ok().and_then(|p| p.parse::<u32>().ok()) else { return };
    std::thread::spawn(move || {
        loop {
            if std::os::unix::process::parent_id() != parent {
                // Not eprintln!: stderr is a pipe to the dead coordinator, and a failed write would panic.
                let _ = std::io::Write::write_all(&mut std::io::stderr(), format!("compact-tasks: the coordinator (pid {parent}) is gone; stopping\n").as_bytes());
                // Not exit(): its at-exit handlers can wait on threads this worker has stalled.
                std::process::abort();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
}

pub struct Processes {
    pub root: String,
    pub clock_skew: Duration,
    pub retention_floor: Duration,
}

impl Processes {
    async fn run_one(&self, batch: Batch, deadline: &Deadline) -> Result<Vec<RewriteResult>> {
        let exe = std::env::current_exe().map_err(|e| Error::Io { path: "current executable".into(), source: e })?;
        let mut child = tokio::process::Command::new(&exe)
            .arg("--root")
            .arg(&self.root)
            .arg("--clock-skew")
            .arg(format!("{}ms", self.clock_skew.as_millis()))
            .arg("--retention-floor")
            .arg(format!("{}ms", self.retention_floor.as_millis()))
            .arg("compact-tasks")
            .arg("--timeout")
            .arg(format!("{}ms", deadline.remaining().as_millis().max(1)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // The child stops when this process is gone (even after a kill -9).
            .env(PARENT_PID, std::process::id().to_string())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Error::Io { path: exe.display().to_string(), source: e })?;
        let input = serde_json::to_vec(&batch).expect("compaction tasks serialize");
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin.write_all(&input).await.map_err(|e| Error::Io { path: "compact-tasks stdin".into(), source: e })?;
        drop(stdin);
        // Bounded by the deadline: a hung child is killed (on drop) and fails the run.
        let limit = deadline.remaining() + CHILD_GRACE;
        let out = match tokio::time::timeout(limit, child.wait_with_output()).await {
            Ok(out) => out.map_err(|e| Error::Io { path: exe.display().to_string(), source: e })?,
            Err(_) => {
                return Err(Error::Blocked(format!(
                    "a compaction worker process for table '{}' did not finish within {limit:?} (the deadline); it was \
                     killed and nothing was committed; the next run plans again",
                    batch.table
                )));
            }
        };
        if !out.status.success() {
            return Err(Error::Blocked(format!(
                "a compaction worker process for table '{}' failed ({}): {}; nothing was committed, the next run plans again",
                batch.table,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| Error::Corrupt {
            what: "compaction worker output",
            path: batch.table.clone(),
            reason: e.to_string(),
        })
    }
}

#[async_trait::async_trait]
impl Executor for Processes {
    async fn execute(&self, _lake: &Lake, batches: Vec<Batch>, deadline: &Deadline) -> Result<Vec<RewriteResult>> {
        optimize::all_at_once(batches, |b| self.run_one(b, deadline)).await
    }

    fn workers(&self, batches: usize) -> usize {
        batches
    }
}
