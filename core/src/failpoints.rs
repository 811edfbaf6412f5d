//! The failpoint catalog: one name between every two durable steps of the door.
//! Compiled in only with the `failpoints` feature; the tests' crash matrix
//! iterates [`ALL`], so a new failpoint joins the matrix by being listed here.
//!
//! Actions come from the `FAILPOINTS` environment variable (the `fail` crate's
//! syntax, e.g. `ingest.after-commit=return` or `...=sleep(60000)`). With
//! `SLUICE_TRACE_FAILPOINTS=1` every failpoint reached prints `failpoint: NAME`
//! on stderr, so a test can `kill -9` a child exactly there. With
//! `SLUICE_HOLD_AT=NAME=FILE` the process stops at failpoint NAME until FILE
//! exists (several `NAME=FILE`, separated by commas, hold it at each;
//! `NAME@N=FILE` only at its N-th hit): a
//! rendezvous that lets a test run another process in between, then release
//! this one, without guessing how long to sleep.

use crate::error::Result;

/// Intent sidecar written; no claim, no Lance commit yet.
pub const AFTER_INTENT: &str = "ingest.after-intent";
/// One source's claim is next (claims run side by side: a hold here stops
/// only this one, see [`hit_async`]).
pub const BEFORE_CLAIM: &str = "ingest.before-claim";
/// Sources claimed in the exactly-once ledger; no Lance commit yet.
pub const AFTER_CLAIMS: &str = "ingest.after-claims";
/// Every table's rows are written as uncommitted Lance files; nothing committed.
pub const BEFORE_COMMIT: &str = "ingest.before-commit";
/// The writer passed its last deadline check before a Lance commit and set
/// Lance's timeout; the commit call is next. Held here, a process is frozen
/// like a paused VM: released, its commit still lands.
pub const COMMIT_CHECKED: &str = "ingest.commit-checked";
/// A table's Lance commit landed (for a load: before the next table's commit).
pub const AFTER_COMMIT: &str = "ingest.after-commit";
/// The writer committed every table; its forward decision is not yet recorded
/// (a writer stalling here must lose to recovery's decision).
pub const BEFORE_DECISION: &str = "load.before-decision";
/// The writer recorded its forward decision; nothing published yet.
pub const AFTER_DECISION: &str = "load.after-decision";
/// Publish is about to create the next manifest version.
pub const BEFORE_PUBLISH: &str = "publish.before-put";
/// The manifest version was created; the latest-hint is not yet updated.
pub const AFTER_PUBLISH: &str = "publish.after-put";
/// Published and hinted; the intent sidecar is not yet removed.
pub const BEFORE_FINISH: &str = "ingest.before-finish";

/// A sweep read the intent it is about to act on; no lease yet.
pub const RECOVER_BEFORE_LEASE: &str = "recover.before-lease";
/// A sweep took its lease on a dead operation; nothing decided yet.
pub const RECOVER_AFTER_LEASE: &str = "recover.after-lease";
/// A sweep recorded its decision on an attempt.
pub const RECOVER_AFTER_DECISION: &str = "recover.after-decision";
/// A sweep published (or removed the rows of) the operation; no audit record yet.
pub const RECOVER_AFTER_EFFECTS: &str = "recover.after-effects";
/// Audited; the sources are not yet released and the sidecars not yet removed.
pub const RECOVER_BEFORE_FINISH: &str = "recover.before-finish";
/// A sweep found no commit of a single-table ingest and is about to take
/// the version after its start pin, then look again, before deciding it
/// rolled back (a rendezvous for tests: only that path passes here).
pub const RECOVER_BEFORE_FENCE: &str = "recover.before-fence";

/// An optimizer wrote its intent; nothing compacted yet.
pub const OPTIMIZE_AFTER_INTENT: &str = "optimize.after-intent";
/// A batch of compaction tasks wrote its new files (in the coordinator, or in
/// a fan-out worker); nothing committed.
pub const OPTIMIZE_AFTER_REWRITE: &str = "optimize.after-rewrite";
/// An optimizer's rewrite is committed in Lance; not yet published.
pub const OPTIMIZE_AFTER_COMMIT: &str = "optimize.after-commit";

/// An index change wrote its intent; nothing built or committed yet.
pub const INDEX_AFTER_INTENT: &str = "index.after-intent";
/// An index was built (its files written); nothing committed.
pub const INDEX_AFTER_BUILD: &str = "index.after-build";
/// An index change is committed in Lance; not yet decided or published.
pub const INDEX_AFTER_COMMIT: &str = "index.after-commit";

/// A schema change adding columns wrote its intent, claimed the table's
/// maintenance and built its commit on Lance's latest version; nothing committed.
pub const COLUMNS_BEFORE_COMMIT: &str = "columns.before-commit";
/// New columns are committed in Lance; not yet decided or published.
pub const COLUMNS_AFTER_COMMIT: &str = "columns.after-commit";
/// A schema change found its table created in Lance but not yet published;
/// it waits for the publish. Nothing written yet (a rendezvous for tests).
pub const COLUMNS_AWAIT_TABLE: &str = "columns.await-table";
/// A reader opened a table at its pinned version; no data read yet.
pub const SCAN_AFTER_OPEN: &str = "scan.after-open";
/// A local file's version was taken; its identity hash is next.
pub const BEFORE_HASH: &str = "source.before-hash";
/// A part of a large local file read ahead of its identity hash
/// (`read_ahead.rs`) decoded its first rows; nothing written.
pub const READ_AHEAD_FIRST_ROWS: &str = "ingest.read-ahead";
/// Staging took what was read ahead: the file is the version hashed.
pub const READ_AHEAD_KEPT: &str = "stage.kept-read-ahead";

/// A contended writer offered its rows in the table's queue; it has not
/// waited in line yet (`group.rs`).
pub const GROUP_QUEUED: &str = "group.queued";
/// A writer leads: its group's intent (written beside its offer) is durable; no member bound yet.
pub const GROUP_AFTER_INTENT: &str = "group.after-intent";
/// The contended writer bound itself to its group (`joined`); nothing committed.
pub const GROUP_AFTER_SELF_TAKE: &str = "group.after-self-take";
/// The group's leader bound the queued writers it could; nothing committed.
pub const GROUP_AFTER_TAKES: &str = "group.after-takes";
/// A queued writer was taken into another writer's group; it waits for that group's outcome.
pub const GROUP_MEMBER_WAITING: &str = "group.member-waiting";
/// The group's commit is built and its deadline checked; Lance is next.
pub const GROUP_COMMIT_CHECKED: &str = "group.commit-checked";
/// The group's commit landed; the group is not decided yet.
pub const GROUP_AFTER_COMMIT: &str = "group.after-commit";
/// The group's commit did not land; its writer is about to decide it rolled back.
pub const GROUP_BEFORE_GIVE_UP: &str = "group.before-give-up";
/// The group is decided forward; not published yet.
pub const GROUP_AFTER_DECISION: &str = "group.after-decision";

/// The writer's steps (a crash here leaves work for recovery).
pub const WRITER: &[&str] = &[AFTER_INTENT, BEFORE_CLAIM, AFTER_CLAIMS, BEFORE_COMMIT, COMMIT_CHECKED, AFTER_COMMIT, BEFORE_DECISION, AFTER_DECISION, BEFORE_PUBLISH, AFTER_PUBLISH, BEFORE_FINISH];
/// The optimizer's own steps.
pub const OPTIMIZE: &[&str] = &[OPTIMIZE_AFTER_INTENT, OPTIMIZE_AFTER_REWRITE, OPTIMIZE_AFTER_COMMIT];
/// An index change's own steps.
pub const INDEX: &[&str] = &[INDEX_AFTER_INTENT, INDEX_AFTER_BUILD, INDEX_AFTER_COMMIT];
/// A schema change's own steps.
pub const COLUMNS: &[&str] = &[COLUMNS_BEFORE_COMMIT, COLUMNS_AFTER_COMMIT];
/// Steps that only read (a rendezvous for tests; nothing is left behind).
pub const READ: &[&str] = &[SCAN_AFTER_OPEN, BEFORE_HASH, READ_AHEAD_FIRST_ROWS, READ_AHEAD_KEPT];
/// A group's steps on the common path (its give-up is met only when its commit fails).
/// (A member's wait is met only when another writer's group takes it.)
pub const GROUP: &[&str] = &[GROUP_QUEUED, GROUP_AFTER_INTENT, GROUP_AFTER_SELF_TAKE, GROUP_AFTER_TAKES, GROUP_COMMIT_CHECKED, GROUP_AFTER_COMMIT, GROUP_AFTER_DECISION];
/// Recovery's own steps (a crash here leaves work for the next sweep).
pub const RECOVERY: &[&str] = &[RECOVER_BEFORE_LEASE, RECOVER_AFTER_LEASE, RECOVER_AFTER_DECISION, RECOVER_AFTER_EFFECTS, RECOVER_BEFORE_FINISH];

pub const ALL: &[&str] = &[
    AFTER_INTENT,
    BEFORE_CLAIM,
    AFTER_CLAIMS,
    BEFORE_COMMIT,
    COMMIT_CHECKED,
    AFTER_COMMIT,
    BEFORE_DECISION,
    AFTER_DECISION,
    BEFORE_PUBLISH,
    AFTER_PUBLISH,
    BEFORE_FINISH,
    RECOVER_BEFORE_LEASE,
    RECOVER_AFTER_LEASE,
    RECOVER_AFTER_DECISION,
    RECOVER_AFTER_EFFECTS,
    RECOVER_BEFORE_FINISH,
    RECOVER_BEFORE_FENCE,
    OPTIMIZE_AFTER_INTENT,
    OPTIMIZE_AFTER_REWRITE,
    OPTIMIZE_AFTER_COMMIT,
    INDEX_AFTER_INTENT,
    INDEX_AFTER_BUILD,
    INDEX_AFTER_COMMIT,
    COLUMNS_BEFORE_COMMIT,
    COLUMNS_AFTER_COMMIT,
    COLUMNS_AWAIT_TABLE,
    SCAN_AFTER_OPEN,
    BEFORE_HASH,
    READ_AHEAD_FIRST_ROWS,
    READ_AHEAD_KEPT,
    GROUP_QUEUED,
    GROUP_AFTER_INTENT,
    GROUP_AFTER_SELF_TAKE,
    GROUP_AFTER_TAKES,
    GROUP_MEMBER_WAITING,
    GROUP_COMMIT_CHECKED,
    GROUP_AFTER_COMMIT,
    GROUP_BEFORE_GIVE_UP,
    GROUP_AFTER_DECISION,
];

/// How far behind this worker's clock runs, as the deadline it records in
/// its intent shows it: `SLUICE_TEST_CLOCK_BEHIND_MS`, read only in builds
/// with failpoints (tests of what a worker whose clock lags the sweep's by
/// more than the skew margin can and cannot do).
pub fn clock_behind() -> std::time::Duration {
    let ms = if cfg!(feature = "failpoints") { std::env::var("SLUICE_TEST_CLOCK_BEHIND_MS").ok().and_then(|v| v.parse().ok()) } else { None };
    std::time::Duration::from_millis(ms.unwrap_or(0))
}

/// Bytes per part of a file appended in parts, whatever the cores:
/// `SLUICE_TEST_PART_BYTES`, read only in builds with failpoints (tests cut
/// small files into several parts; see `parts.rs`).
pub fn part_bytes() -> Option<u64> {
    if cfg!(feature = "failpoints") { std::env::var("SLUICE_TEST_PART_BYTES").ok().and_then(|v| v.parse().ok()) } else { None }
}

/// Whether a single-table append commits as a group (of one, itself) instead
/// of on its own: `SLUICE_TEST_CONTENDED`, read only in builds with
/// failpoints. The writing side of group commits is built step by step
/// (`group.rs`); until it takes other writers, nothing else sends one there.
pub fn contended() -> bool {
    cfg!(feature = "failpoints") && std::env::var_os("SLUICE_TEST_CONTENDED").is_some()
}

/// After how many bytes every reader of a source's stored bytes fails, as a
/// connection reset the store client's retries did not cure:
/// `SLUICE_TEST_READ_FAILS_AFTER`, read only in builds with failpoints.
pub fn read_fails_after() -> Option<u64> {
    if cfg!(feature = "failpoints") { std::env::var("SLUICE_TEST_READ_FAILS_AFTER").ok().and_then(|v| v.parse().ok()) } else { None }
}

/// Evaluate failpoint `name`: a `return` action becomes [`Error::Injected`].
pub fn hit(name: &'static str) -> Result<()> {
    if let Some(file) = reached(name) {
        wait_for(&file);
    }
    act(name)
}

/// [`hit`] for a step that runs beside others in one task: a hold waits on
/// a blocking thread, so the task's other futures go on meanwhile. Hits are
/// counted in the order the task reaches them (for `NAME@N`).
pub async fn hit_async(name: &'static str) -> Result<()> {
    if let Some(file) = reached(name) {
        tokio::task::spawn_blocking(move || wait_for(&file)).await.expect("a failpoint's hold panicked");
    }
    act(name)
}

/// Trace that `name` was reached (before any hold: the tests' rendezvous),
/// and say where to hold.
fn reached(name: &'static str) -> Option<String> {
    debug_assert!(ALL.contains(&name), "failpoint {name} is not in the catalog");
    if cfg!(feature = "failpoints") && std::env::var_os("SLUICE_TRACE_FAILPOINTS").is_some() {
        eprintln!("failpoint: {name}");
    }
    held_until(name)
}

// Without failpoints, `fail_point!` expands to nothing.
#[cfg_attr(not(feature = "failpoints"), allow(unused_variables))]
fn act(name: &'static str) -> Result<()> {
    fail::fail_point!(name, |_| Err(crate::error::Error::Injected(name.to_string())));
    Ok(())
}

/// The release file `SLUICE_HOLD_AT` names for this hit of `name`, if the
/// process is to wait there. `SLUICE_HOLD_AT` is `NAME=FILE`, or several
/// separated by commas: a process held at one step, then at a later one.
/// `NAME@N=FILE` holds only at the N-th time the process reaches NAME.
fn held_until(name: &str) -> Option<String> {
    static HITS: std::sync::Mutex<Vec<(String, usize)>> = std::sync::Mutex::new(Vec::new());
    if !cfg!(feature = "failpoints") {
        return None;
    }
    let spec = std::env::var_os("SLUICE_HOLD_AT")?.to_str()?.to_owned();
    let hits = {
        let mut all = HITS.lock().unwrap_or_else(|e| e.into_inner());
        let i = all.iter().position(|(n, _)| n == name).unwrap_or_else(|| {
            all.push((name.to_string(), 0));
            all.len() - 1
        });
        all[i].1 += 1;
        all[i].1
    };
    let held_here = |at: &str| match at.split_once('@') {
        Some((at, nth)) => at == name && nth.parse() == Ok(hits),
        None => at == name,
    };
    spec.split(',').filter_map(|one| one.split_once('=')).find(|(at, _)| held_here(at)).map(|(_, file)| file.to_string())
}

/// Wait until `file` exists (at most 10 minutes).
fn wait_for(file: &str) {
    const LIMIT: std::time::Duration = std::time::Duration::from_secs(600);
    let start = std::time::Instant::now();
    while !std::path::Path::new(file).exists() && start.elapsed() < LIMIT {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
