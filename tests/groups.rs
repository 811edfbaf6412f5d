//! Group commits: one Lance commit carrying several single-table ingests'
//! rows, made by a group attempt of its own. The first tests build the
//! objects a group leaves by hand (the group's intent, each member's intent,
//! claim and `joined` decision, the group's commit of the members' staged
//! fragments) and drive the real door, vetting and recovery over them, on
//! every backend: every worker must read groups right (a vetter that did not
//! would remove a group's commit as a late duplicate). The later ones run
//! contended writers (`SLUICE_TEST_CONTENDED`) held at the group's steps.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lance::dataset::CommitBuilder;
use lance::dataset::transaction::{Operation, Transaction};
use lance::table::format::Fragment;
use sluice::Lake;
use sluice::ingest::{self, Budget, SourceStatus};
use sluice::recover;
use sluice::sidecar::{self, AttemptId, Claim, Claimed, Decision, Fate, Intent, Outcome};

use crate::common::*;

/// A contended ingest as it joins a group: its intent, its claim on its
/// one source, its rows staged but not committed.
struct Member {
    id: AttemptId,
    source_id: String,
    fragments: Vec<Fragment>,
}

fn new_id(prefix: &str) -> AttemptId {
    AttemptId::new(&format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]), &uuid::Uuid::now_v7().to_string())
}

fn intent(id: &AttemptId, kind: &str, table: &str, start_pin: u64, sources: serde_json::Value, lives: Duration) -> Intent {
    let now = chrono::Utc::now();
    serde_json::from_value(serde_json::json!({
        "op": id.op, "attempt": id.attempt, "kind": kind,
        "tables": { table: { "start_pin": start_pin, "mode": "append" } },
        "sources": sources,
        "started_at": now, "deadline": now + lives, "worker": "test",
    }))
    .unwrap()
}

async fn pin(lake: &Lake, table: &str) -> u64 {
    sluice::manifest::read_latest(lake).await.unwrap().unwrap().tables[table].version
}

async fn member(lake: &Lake, table: &str, file: &Path, lives: Duration) -> Member {
    let id = new_id("ingest");
    let src = sluice::source::Source::resolve(&file.display().to_string()).await.unwrap();
    let sources = serde_json::json!([{ "table": table, "uri": src.uri, "id": src.id, "identity": src.identity }]);
    sidecar::create_intent(lake, &intent(&id, "ingest", table, pin(lake, table).await, sources, lives)).await.unwrap();
    let claim = Claim { op: id.op.clone(), attempt: id.attempt.clone(), source: src.id.clone(), table: table.into(), generation: 0, claimed_at: chrono::Utc::now() };
    let claimed = sidecar::claim(lake, &sidecar::source_key(&src.id), &claim, &mut Vec::new()).await.unwrap();
    assert_eq!(claimed, Claimed::Mine { generation: 1 });
    let ds = Arc::new(lake.open_table(table, None).await.unwrap());
    let schema = Arc::new(arrow::datatypes::Schema::from(ds.schema()));
    let reader = arrow::json::ReaderBuilder::new(schema).build(std::io::BufReader::new(std::fs::File::open(file).unwrap())).unwrap();
    let batches = reader.collect::<Result<Vec<_>, _>>().unwrap();
    let params = lance::dataset::WriteParams { mode: lance::dataset::WriteMode::Append, ..Default::default() };
    let staged = lance::dataset::InsertBuilder::new(ds).with_params(&params).execute_uncommitted(batches).await.unwrap();
    let Operation::Append { fragments } = staged.operation else { panic!("staged {:?}", staged.operation) };
    Member { id, source_id: src.id, fragments }
}

async fn group(lake: &Lake, table: &str, lives: Duration) -> AttemptId {
    let id = new_id("group");
    sidecar::create_intent(lake, &intent(&id, sidecar::KIND_GROUP, table, pin(lake, table).await, serde_json::json!([]), lives)).await.unwrap();
    id
}

/// `member` joins `group`: create-only, before the group's commit.
async fn join(lake: &Lake, member: &Member, group: &AttemptId) {
    let decision = Decision { group: Some(group.clone()), ..Decision::new(&member.id.op, &member.id.attempt, &group.attempt, Outcome::Joined, "group", BTreeMap::new()) };
    assert!(matches!(sidecar::decide(lake, &decision).await.unwrap(), sluice::lake::Created::Mine));
}

/// Commit `carried` members' fragments as one append, tagged as `group`'s
/// with `listed` as its members; returns its Lance version.
async fn commit(lake: &Lake, table: &str, group: &AttemptId, carried: &[&Member], listed: &[&Member]) -> u64 {
    let ds = Arc::new(lake.open_table(table, None).await.unwrap());
    let fragments = carried.iter().flat_map(|m| m.fragments.clone()).collect();
    let mut txn = Transaction::new(ds.version().version, Operation::Append { fragments }, None);
    let listed: Vec<AttemptId> = listed.iter().map(|m| m.id.clone()).collect();
    txn.transaction_properties = Some(Arc::new(sidecar::group_properties(group, &listed)));
    CommitBuilder::new(ds).execute(txn).await.unwrap().version().version
}

/// A member's own commit of its staged rows (tagged as a lone ingest's).
async fn stray(lake: &Lake, table: &str, m: &Member) -> u64 {
    let ds = Arc::new(lake.open_table(table, None).await.unwrap());
    let mut txn = Transaction::new(ds.version().version, Operation::Append { fragments: m.fragments.clone() }, None);
    txn.transaction_properties = Some(Arc::new(sidecar::commit_properties(&m.id.op, &m.id.attempt, &m.id.attempt, sidecar::SCOPE_SINGLE)));
    CommitBuilder::new(ds).execute(txn).await.unwrap().version().version
}

fn ids_of(ranges: &[std::ops::Range<i64>]) -> Vec<i64> {
    let mut out: Vec<i64> = ranges.iter().cloned().flatten().collect();
    out.sort();
    out
}

async fn sweep(lake: &Lake) -> recover::SweepReport {
    recover::sweep(lake, recover::Options { clock_skew: Duration::ZERO, dry_run: false }, Duration::from_secs(60)).await.unwrap()
}

/// Table `t` seeded with rows 0..10, and two members of one new group (both
/// joined; nothing committed): `a` of file `fa` (rows 100..110) and `bb` of
/// `fb` (rows 200..220), each living for `lives`.
struct Pair {
    fa: std::path::PathBuf,
    fb: std::path::PathBuf,
    a: Member,
    bb: Member,
    g: AttemptId,
}

async fn pair(lake: &Lake, dir: &Path, lives: Duration) -> Pair {
    ingest(lake, vec![request("t", &[&jsonl(dir, "seed.jsonl", 0..10)])]).await.unwrap();
    let (fa, fb) = (jsonl(dir, "a.jsonl", 100..110), jsonl(dir, "b.jsonl", 200..220));
    let (a, bb) = (member(lake, "t", &fa, lives).await, member(lake, "t", &fb, lives).await);
    let g = group(lake, "t", lives).await;
    join(lake, &a, &g).await;
    join(lake, &bb, &g).await;
    Pair { fa, fb, a, bb, g }
}

/// A lone ingest publishing past an undecided group's commit decides the
/// group forward on its behalf, naming the members its commit lists, and
/// publishes it once. A member that joined but is not listed (a take whose
/// answer was lost) is rolled back: recovery releases its source, and the
/// redelivery ingests it. The listed members' redeliveries are "already
/// ingested", through the group's decision.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_vetter_decides_a_group_forward_with_the_members_its_commit_lists() {
    for b in all_backends() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(&b.root).unwrap();
        ingest(&lake, vec![request("t", &[&jsonl(dir.path(), "seed.jsonl", 0..10)])]).await.unwrap();
        let files = [jsonl(dir.path(), "a.jsonl", 100..110), jsonl(dir.path(), "b.jsonl", 200..220), jsonl(dir.path(), "c.jsonl", 300..305)];
        let lives = Duration::from_secs(2);
        let (a, bb, c) = (member(&lake, "t", &files[0], lives).await, member(&lake, "t", &files[1], lives).await, member(&lake, "t", &files[2], lives).await);
        let g = group(&lake, "t", lives).await;
        for m in [&a, &bb, &c] {
            join(&lake, m, &g).await;
        }
        let started = Instant::now();
        let v = commit(&lake, "t", &g, &[&a, &bb], &[&a, &bb]).await;
        assert_eq!(sidecar::fate(&lake, &a.id).await.unwrap(), Fate::InGroup(g.clone()), "{}", b.name);

        // A lone ingest's publish passes the group's commit: it decides it forward.
        let x = ingest(&lake, vec![request("t", &[&jsonl(dir.path(), "x.jsonl", 400..403)])]).await.unwrap_or_else(|e| panic!("{}: {e}", b.name));
        assert!(x.tables["t"].lance_version > v);
        let decided = sidecar::read_decision(&lake, &g).await.unwrap().expect("the vetter decided the group");
        assert_eq!((decided.outcome, decided.by.as_str()), (Outcome::Forward, "vetter"), "{}", b.name);
        assert_eq!(decided.versions, BTreeMap::from([("t".to_string(), v)]));
        assert_eq!(decided.members, Some(vec![a.id.clone(), bb.id.clone()]), "{}: the members its commit lists", b.name);
        assert!(matches!(sidecar::fate(&lake, &a.id).await.unwrap(), Fate::Forward(d) if d.versions == decided.versions));
        assert_eq!(sidecar::fate(&lake, &c.id).await.unwrap(), Fate::RolledBack, "{}: joined, not carried", b.name);
        assert_eq!(ids(&lake, "t", None).await, ids_of(&[0..10, 100..110, 200..220, 400..403]), "{}", b.name);

        // The members' writers are gone: recovery finishes each through the group.
        tokio::time::sleep((lives + Duration::from_millis(200)).saturating_sub(started.elapsed())).await;
        let report = sweep(&lake).await;
        assert_eq!(report.unresolved(), 0, "{}: {report:?}", b.name);
        assert!(sidecar::pending(&lake).await.unwrap().is_empty(), "{}: {report:?}", b.name);
        let audit = sluice::audit::read(&lake, &a.id.op, &a.id.attempt).await.unwrap().unwrap();
        assert_eq!(audit.verdict, sluice::audit::Verdict::Converged, "{}", b.name);
        assert!(audit.reason.contains(&g.to_string()), "{}: {}", b.name, audit.reason);
        assert_eq!(sluice::audit::read(&lake, &c.id.op, &c.id.attempt).await.unwrap().unwrap().verdict, sluice::audit::Verdict::RolledBack);

        // Redelivered: the carried ones are done; the one left out goes in now, once.
        let again = ingest(&lake, vec![request("t", &[&files[0], &files[1], &files[2]])]).await.unwrap_or_else(|e| panic!("{}: {e}", b.name));
        let status: BTreeMap<String, SourceStatus> = again.sources.iter().map(|s| (s.uri.clone(), s.status)).collect();
        assert_eq!(status.values().filter(|s| **s == SourceStatus::AlreadyIngested).count(), 2, "{}: {status:?}", b.name);
        assert_eq!(again.tables["t"].rows_inserted, 5, "{}", b.name);
        assert_eq!(ids(&lake, "t", None).await, ids_of(&[0..10, 100..110, 200..220, 300..305, 400..403]), "{}: every row once", b.name);
    }
}

/// A redelivery meets a member whose writer and group both died after the
/// group's commit, nothing decided or published: it resolves the member
/// (healing first), which resolves the group first (forward, with the members its
/// commit lists, published), then follows it. The source is "already
/// ingested" and its rows are in once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redelivery_resolves_a_dead_member_through_its_dead_group() {
    for b in all_backends() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(&b.root).unwrap();
        let lives = Duration::from_secs(1);
        let Pair { fa, fb, a, bb, g } = pair(&lake, dir.path(), lives).await;
        let v = commit(&lake, "t", &g, &[&a, &bb], &[&a, &bb]).await;
        tokio::time::sleep(lives + Duration::from_millis(200)).await;

        let budget = Budget { timeout: Duration::from_secs(60), clock_skew: Duration::ZERO };
        let again = ingest::run(&lake, vec![request("t", &[&fa])], budget, Arc::new(sluice::decode::Progress::default())).await.unwrap_or_else(|e| panic!("{}: {e}", b.name));
        assert!(again.all_already_ingested(), "{}: {again:?}", b.name);
        let decided = sidecar::read_decision(&lake, &g).await.unwrap().expect("recovery decided the group");
        assert_eq!((decided.outcome, decided.by.as_str(), decided.versions["t"]), (Outcome::Forward, "recovery", v), "{}", b.name);
        assert_eq!(decided.members, Some(vec![a.id.clone(), bb.id.clone()]), "{}", b.name);
        assert_eq!(ids(&lake, "t", None).await, ids_of(&[0..10, 100..110, 200..220]), "{}", b.name);
        assert!(!sidecar::intent_exists(&lake, &a.id).await.unwrap() && !sidecar::intent_exists(&lake, &g).await.unwrap(), "{}", b.name);

        // The other member's recovery follows the decided group: nothing left, nothing twice.
        let report = sweep(&lake).await;
        assert_eq!(report.unresolved(), 0, "{}: {report:?}", b.name);
        assert!(sidecar::pending(&lake).await.unwrap().is_empty(), "{}", b.name);
        assert!(ingest(&lake, vec![request("t", &[&fb])]).await.unwrap().all_already_ingested(), "{}", b.name);
        assert_eq!(ids(&lake, "t", None).await, ids_of(&[0..10, 100..110, 200..220]), "{}", b.name);
    }
}

/// A group that died before its commit is rolled back, and so is every
/// member: recovery releases the members' sources (never before the group's
/// fate is known) and the redelivery ingests them once. A member's own
/// commit (a stray: its rows were to ride in the group's) is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_members_of_a_group_that_never_committed_are_released() {
    for b in all_backends() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(&b.root).unwrap();
        let lives = Duration::from_secs(1);
        let Pair { fa, fb, a, bb, g } = pair(&lake, dir.path(), lives).await;
        stray(&lake, "t", &a).await;
        tokio::time::sleep(lives + Duration::from_millis(200)).await;

        let report = sweep(&lake).await;
        assert_eq!(report.unresolved(), 0, "{}: {report:?}", b.name);
        assert!(sidecar::pending(&lake).await.unwrap().is_empty(), "{}: {report:?}", b.name);
        assert_eq!(sidecar::read_decision(&lake, &g).await.unwrap().map(|d| d.outcome), Some(Outcome::RollBack), "{}", b.name);
        for m in [&a, &bb] {
            assert_eq!(sidecar::fate(&lake, &m.id).await.unwrap(), Fate::RolledBack, "{}", b.name);
            let newest = sidecar::newest_claim(&lake, &sidecar::source_key(&m.source_id)).await.unwrap().unwrap();
            assert!(sidecar::is_released(&lake, &sidecar::source_key(&m.source_id), &newest).await.unwrap(), "{}: released", b.name);
        }
        let lance_rows = lake.open_table("t", None).await.unwrap().count_rows(None).await.unwrap();
        assert_eq!(lance_rows, 10, "{}: the stray's rows are removed from Lance's latest version too", b.name);

        let again = ingest(&lake, vec![request("t", &[&fa, &fb])]).await.unwrap_or_else(|e| panic!("{}: {e}", b.name));
        assert!(again.sources.iter().all(|s| s.status == SourceStatus::Ingested), "{}: {again:?}", b.name);
        assert_eq!(ids(&lake, "t", None).await, ids_of(&[0..10, 100..110, 200..220]), "{}: every row once", b.name);
    }
}

/// A member's own commit (a stray) between the published pin and a lone
/// ingest's commit: the member is bound to its group, so that commit can
/// never be named forward. The lone ingest removes it and publishes at once,
/// without waiting for the member's writer (alive, deadline far off).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_members_own_commit_is_removed_without_waiting() {
    for b in all_backends() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(&b.root).unwrap();
        ingest(&lake, vec![request("t", &[&jsonl(dir.path(), "seed.jsonl", 0..10)])]).await.unwrap();
        let a = member(&lake, "t", &jsonl(dir.path(), "a.jsonl", 100..110), Duration::from_secs(600)).await;
        let g = group(&lake, "t", Duration::from_secs(600)).await;
        join(&lake, &a, &g).await;
        stray(&lake, "t", &a).await;

        let started = Instant::now();
        ingest(&lake, vec![request("t", &[&jsonl(dir.path(), "x.jsonl", 400..403)])]).await.unwrap_or_else(|e| panic!("{}: {e}", b.name));
        assert!(started.elapsed() < Duration::from_secs(20), "{}: waited {:?} for a live member", b.name, started.elapsed());
        assert_eq!(ids(&lake, "t", None).await, ids_of(&[0..10, 400..403]), "{}: the stray is not shown", b.name);
        assert_eq!(lake.open_table("t", None).await.unwrap().count_rows(None).await.unwrap(), 13, "{}: and removed", b.name);
        assert_eq!(sidecar::fate(&lake, &a.id).await.unwrap(), Fate::InGroup(g), "{}: its fate is still its group's", b.name);
    }
}

/// A group decided forward without a member list (no sluice writes one) is
/// refused, never guessed: read as "no members" it would release every
/// member's source while their rows are shown, and the next delivery would
/// ingest them twice. A redelivery and a lone ingest both stop with the
/// reason, and nothing is ingested twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_decided_forward_without_members_is_refused() {
    for b in all_backends() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(&b.root).unwrap();
        ingest(&lake, vec![request("t", &[&jsonl(dir.path(), "seed.jsonl", 0..10)])]).await.unwrap();
        let fa = jsonl(dir.path(), "a.jsonl", 100..110);
        let a = member(&lake, "t", &fa, Duration::from_secs(600)).await;
        let g = group(&lake, "t", Duration::from_secs(600)).await;
        join(&lake, &a, &g).await;
        let v = commit(&lake, "t", &g, &[&a], &[&a]).await;
        let bare = Decision::new(&g.op, &g.attempt, &g.attempt, Outcome::Forward, "writer", BTreeMap::from([("t".to_string(), v)]));
        sidecar::decide(&lake, &bare).await.unwrap();
        sidecar::delete_intent(&lake, &a.id).await.unwrap();

        let e = sidecar::fate(&lake, &a.id).await.expect_err("no guess");
        assert!(e.to_string().contains("without a member list"), "{}: {e}", b.name);
        let e = ingest(&lake, vec![request("t", &[&fa])]).await.expect_err("a redelivery must not guess");
        assert!(e.to_string().contains("without a member list"), "{}: {e}", b.name);
        let e = ingest(&lake, vec![request("t", &[&jsonl(dir.path(), "x.jsonl", 400..403)])]).await.expect_err("nor may a publish pass it");
        assert!(e.to_string().contains("lists no members"), "{}: {e}", b.name);
        assert_eq!(ids(&lake, "t", None).await, ids_of(&[0..10]), "{}: nothing published", b.name);
    }
}

/// A group's commit whose tag lists a member not bound to it (no `joined`
/// decision: that member could still be decided on its own) is never decided
/// forward, by a vetter or by recovery: its rows could be shown twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_listing_a_member_not_bound_to_it_is_refused() {
    for b in all_backends() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(&b.root).unwrap();
        ingest(&lake, vec![request("t", &[&jsonl(dir.path(), "seed.jsonl", 0..10)])]).await.unwrap();
        let lives = Duration::from_secs(1);
        let (a, bb) = (member(&lake, "t", &jsonl(dir.path(), "a.jsonl", 100..110), lives).await, member(&lake, "t", &jsonl(dir.path(), "b.jsonl", 200..220), lives).await);
        let g = group(&lake, "t", lives).await;
        join(&lake, &a, &g).await;
        commit(&lake, "t", &g, &[&a, &bb], &[&a, &bb]).await;

        let e = ingest(&lake, vec![request("t", &[&jsonl(dir.path(), "x.jsonl", 400..403)])]).await.expect_err("a publish must not pass it");
        assert!(e.to_string().contains(&format!("its member {} has no decision binding it", bb.id)), "{}: {e}", b.name);
        assert_eq!(sidecar::read_decision(&lake, &g).await.unwrap(), None, "{}: the group is not decided", b.name);

        tokio::time::sleep(lives + Duration::from_millis(200)).await;
        // Recovery refuses the group (met first through its bound member, which
        // follows it; then met again, without waiting for the lease it left).
        let started = Instant::now();
        let report = sweep(&lake).await;
        assert!(started.elapsed() < Duration::from_secs(20), "{}: a refused attempt's lease held the sweep {:?}", b.name, started.elapsed());
        let refused = report.ops.iter().any(|o| matches!(&o.action, recover::Action::Refused { reason } if reason.contains("has no decision binding it")));
        assert!(refused, "{}: {report:?}", b.name);
        assert_eq!(sidecar::read_decision(&lake, &g).await.unwrap(), None, "{}", b.name);
        assert_eq!(ids(&lake, "t", None).await, ids_of(&[0..10]), "{}: nothing of it shown", b.name);
    }
}

/// A group takes a member while the member's recovery is between its first
/// look and its decision (held where it takes the version after the
/// member's start pin). The recovery then finds the member joined: it
/// follows the group (dead, nothing committed: rolled back), releases the
/// member's source, and the redelivery ingests it once.
#[test]
fn a_take_during_a_members_recovery_is_followed() {
    on_each_backend(|b| {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(&b.root).unwrap();
        let fa = jsonl(dir.path(), "a.jsonl", 100..110);
        let (a, g) = rt.block_on(async {
            ingest(&lake, vec![request("t", &[&jsonl(dir.path(), "seed.jsonl", 0..10)])]).await.unwrap();
            let a = member(&lake, "t", &fa, Duration::from_secs(1)).await;
            (a, group(&lake, "t", Duration::from_secs(1)).await)
        });
        std::thread::sleep(Duration::from_millis(1200));

        let sweep = hold_at(sluice(&b.root).args(["--json", "--clock-skew", "0s", "recover", "--timeout", "60s"]), "recover.before-fence");
        rt.block_on(join(&lake, &a, &g));
        sweep.release();
        let out = sweep.wait_with_output();
        assert_eq!(out.status.code(), Some(0), "{}: the sweep must follow the take", b.name);
        rt.block_on(async {
            assert!(sidecar::pending(&lake).await.unwrap().is_empty(), "{}", b.name);
            assert_eq!(sidecar::fate(&lake, &a.id).await.unwrap(), Fate::RolledBack, "{}", b.name);
            let again = ingest(&lake, vec![request("t", &[&fa])]).await.unwrap_or_else(|e| panic!("{}: {e}", b.name));
            assert_eq!(again.sources[0].status, SourceStatus::Ingested, "{}", b.name);
            assert_eq!(ids(&lake, "t", None).await, ids_of(&[0..10, 100..110]), "{}: once", b.name);
        });
    });
}

/// Every decision in the lake at `root`.
fn decisions(root: &str) -> Vec<Decision> {
    let lake = Lake::open(root).unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let mut out = Vec::new();
        for meta in lake.list("_decisions").await.unwrap() {
            out.push(lake.get_json(lake.relative(&meta.location).unwrap().as_str()).await.unwrap().unwrap());
        }
        out
    })
}

/// The decisions a finished group of one leaves: the writer joined its
/// group, and the group was decided forward at one commit, naming it.
fn group_of_one(root: &str) -> (Decision, Decision) {
    let all = decisions(root);
    let joined = all.iter().find(|d| d.outcome == Outcome::Joined).expect("the writer joined a group");
    let forward = all.iter().find(|d| d.outcome == Outcome::Forward && d.op.starts_with("group-")).expect("the group was decided forward");
    (joined.clone(), forward.clone())
}

fn contended(root: &str, file: &Path, extra: &[&str]) -> std::process::Command {
    let mut cmd = sluice(root);
    cmd.env("SLUICE_TEST_CONTENDED", "1").args(["--json", "ingest", "--table", "t"]).args(extra).arg(file);
    cmd
}

/// A contended append commits as a group of one: the writer binds itself to
/// a group of its own, the group commits its rows, decides forward naming it,
/// and publishes; both intents go. A redelivery is "already ingested"
/// through the group's decision.
#[test]
fn a_contended_ingest_commits_as_a_group_of_one() {
    on_each_backend(|b| {
        let dir = tempfile::tempdir().unwrap();
        seeded(&b.root, dir.path(), &["t"]);
        let a = jsonl(dir.path(), "a.jsonl", 100..130);
        let out = run(&mut contended(&b.root, &a, &[]));
        assert_eq!(out.status.code(), Some(0), "{}", b.name);
        assert_eq!(json(&out)["tables"]["t"]["rows_inserted"], 30, "{}", b.name);
        let (joined, forward) = group_of_one(&b.root);
        assert_eq!(joined.group.as_ref().map(|g| &g.attempt), Some(&forward.intent), "{}: it joined that group", b.name);
        assert_eq!(forward.members, Some(vec![AttemptId::new(&joined.op, &joined.intent)]), "{}", b.name);
        assert_eq!(forward.by, "writer", "{}", b.name);
        assert_eq!(pending(&b.root), 0, "{}: both intents are gone", b.name);
        assert_eq!(scan_ids(&b.root, "t"), ids_of(&[0..5, 100..130]), "{}", b.name);
        let again = run(&mut contended(&b.root, &a, &[]));
        assert_eq!(again.status.code(), Some(0), "{}", b.name);
        assert_eq!(json(&again)["sources"][0]["status"], "already_ingested", "{}", b.name);
        assert_eq!(scan_ids(&b.root, "t"), ids_of(&[0..5, 100..130]), "{}: once", b.name);
    });
}

/// A group's writer stalls before its commit past its deadline; a sweep
/// rolls the group back (nothing committed), and with it the writer, whose
/// source it releases. The writer wakes: its commit lands but can never be
/// decided forward, so it fails; the redelivery removes that late commit and
/// ingests the source once.
#[test]
fn a_stale_group_writer_never_publishes() {
    on_each_backend(|b| {
        let dir = tempfile::tempdir().unwrap();
        seeded(&b.root, dir.path(), &["t"]);
        let a = jsonl(dir.path(), "a.jsonl", 100..130);
        // Its clock runs 10 minutes behind: its intents look expired at once.
        let mut cmd = contended(&b.root, &a, &["--timeout", "60s"]);
        let held = hold_at(cmd.env("SLUICE_TEST_CLOCK_BEHIND_MS", "600000"), "group.commit-checked");
        let sweep = run(sluice(&b.root).args(["--json", "--clock-skew", "0s", "recover", "--timeout", "30s"]));
        assert_eq!(sweep.status.code(), Some(0), "{}", b.name);
        assert_eq!(pending(&b.root), 0, "{}: the writer and its group are rolled back", b.name);
        held.release();
        let out = held.wait_with_output();
        assert_eq!(out.status.code(), Some(1), "{}: the stale writer fails", b.name);
        assert!(String::from_utf8_lossy(&out.stderr).contains("was decided otherwise while this worker stalled"), "{}", b.name);
        assert_eq!(scan_ids(&b.root, "t"), ids_of(&[0..5]), "{}: nothing of it shown", b.name);
        let again = run(sluice(&b.root).args(["ingest", "--table", "t"]).arg(&a));
        assert_eq!(again.status.code(), Some(0), "{}", b.name);
        assert_eq!(scan_ids(&b.root, "t"), ids_of(&[0..5, 100..130]), "{}: once", b.name);
        assert_eq!(pending(&b.root), 0, "{}", b.name);
    });
}

/// A group's commit fails outright (its manifest PUT refused with an
/// error, so Lance and the table's history both show it did not land): its
/// writer decides the group rolled back, gives its claims back, removes both
/// intents and fails. The redelivery ingests the source once.
#[test]
fn a_group_whose_commit_failed_is_rolled_back_by_its_writer() {
    on_each_backend(|b| {
        let dir = tempfile::tempdir().unwrap();
        seeded(&b.root, dir.path(), &["t"]);
        let a = jsonl(dir.path(), "a.jsonl", 100..130);
        let mut cmd = contended(&b.root, &a, &["--timeout", "60s"]);
        let out = run(cmd.env("SLUICE_FAULTS", "rule=t.lance/_versions/:rejected:1"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("fault: rejected"), "{}: {stderr}", b.name);
        assert_eq!(out.status.code(), Some(1), "{}: {stderr}", b.name);
        assert_eq!(pending(&b.root), 0, "{}: rolled back and finished by its writer", b.name);
        let rolled_back: Vec<(Outcome, String)> = decisions(&b.root).into_iter().map(|d| (d.outcome, d.by)).collect();
        assert!(rolled_back.contains(&(Outcome::RollBack, "writer".to_string())), "{}: {rolled_back:?}", b.name);
        assert_eq!(scan_ids(&b.root, "t"), ids_of(&[0..5]), "{}", b.name);
        let again = run(sluice(&b.root).args(["ingest", "--table", "t"]).arg(&a));
        assert_eq!(again.status.code(), Some(0), "{}", b.name);
        assert_eq!(scan_ids(&b.root, "t"), ids_of(&[0..5, 100..130]), "{}: once", b.name);
    });
}

/// The group decisions a lake holds, and every `joined` decision by member.
fn groups(root: &str) -> (Vec<Decision>, BTreeMap<AttemptId, AttemptId>) {
    let all = decisions(root);
    let forward = all.iter().filter(|d| d.op.starts_with("group-")).cloned().collect();
    let joined = all.iter().filter(|d| d.outcome == Outcome::Joined).map(|d| (AttemptId::new(&d.op, &d.intent), d.group.clone().unwrap())).collect();
    (forward, joined)
}

/// Table `table`'s latest Lance version.
fn lance_version(root: &str, table: &str) -> u64 {
    let lake = Lake::open(root).unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(lake.open_table(table, None)).unwrap().version().version
}

/// Queue entries left in the lake.
fn queued(root: &str) -> usize {
    let lake = Lake::open(root).unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(sluice::queue::list_all(&lake)).unwrap().len()
}

/// Two contended writers: A leads (held once its group's intent is written),
/// B offers its rows and is held before its wait in line. A takes B, commits both
/// writers' rows in one Lance commit, decides the group forward naming both
/// and publishes: both files are visible before B goes on. B then finds it
/// was taken, waits for the group's decision and its publish, and succeeds
/// without a commit of its own; its intents (its own and its spare group's)
/// went with the leader's. Redeliveries are "already ingested".
#[test]
fn a_queued_writer_is_taken_into_the_older_writers_group() {
    on_each_backend(|b| {
        let dir = tempfile::tempdir().unwrap();
        seeded(&b.root, dir.path(), &["t"]);
        let (fa, fb) = (jsonl(dir.path(), "a.jsonl", 100..130), jsonl(dir.path(), "b.jsonl", 200..210));
        let before = lance_version(&b.root, "t");
        let a = hold_at(&mut contended(&b.root, &fa, &[]), "group.after-intent");
        let bw = hold_at(&mut contended(&b.root, &fb, &[]), "group.queued");
        a.release();
        let out = a.wait_with_output();
        assert_eq!(out.status.code(), Some(0), "{}", b.name);
        assert_eq!(json(&out)["tables"]["t"]["rows_inserted"], 30, "{}: each reports its own rows", b.name);
        assert_eq!(scan_ids(&b.root, "t"), ids_of(&[0..5, 100..130, 200..210]), "{}: the leader published both", b.name);
        // Its publish lists both files, each under its own operation.
        let out = run(sluice(&b.root).args(["--json", "sources", "--table", "t", "--status", "ingested"]));
        let listed: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let op_of = |name: &str| listed.iter().find(|e| e["uri"].as_str().unwrap().ends_with(name)).map(|e| e["op"].as_str().unwrap().to_string());
        let (a_op, b_op) = (op_of("/a.jsonl").expect("a is listed"), op_of("/b.jsonl").expect("b is listed"));
        assert_ne!(a_op, b_op, "{}: {listed:?}", b.name);
        // Published, the leader removed B's intent with its own, and the
        // intent of the group B would have led (written beside its offer).
        assert_eq!(pending(&b.root), 0, "{}: B's intents went with the leader's, B still held", b.name);
        bw.release();
        let out = bw.wait_with_output();
        assert_eq!(out.status.code(), Some(0), "{}", b.name);
        assert_eq!(json(&out)["tables"]["t"]["rows_inserted"], 10, "{}", b.name);
        assert_eq!(lance_version(&b.root, "t"), before + 1, "{}: one Lance commit for both", b.name);
        let (groups, joined) = groups(&b.root);
        assert_eq!(groups.len(), 1, "{}: {groups:?}", b.name);
        let g = &groups[0];
        assert_eq!((g.outcome, g.by.as_str()), (Outcome::Forward, "writer"), "{}", b.name);
        let members = g.members.clone().unwrap();
        assert_eq!(members.len(), 2, "{}: {members:?}", b.name);
        assert!(members.iter().all(|m| joined[m].attempt == g.intent), "{}: both bound to it", b.name);
        assert_eq!(g.sources.len(), 2, "{}: it names both writers' sources", b.name);
        assert_eq!((pending(&b.root), queued(&b.root)), (0, 0), "{}: intents and entries gone", b.name);
        for f in [&fa, &fb] {
            let again = run(&mut contended(&b.root, f, &[]));
            assert_eq!(json(&again)["sources"][0]["status"], "already_ingested", "{}", b.name);
        }
        assert_eq!(scan_ids(&b.root, "t"), ids_of(&[0..5, 100..130, 200..210]), "{}: once", b.name);
    });
}

/// A writer is held after offering its rows, before its wait in line; a
/// younger writer waits behind its entry, leads once the wait's bound passes
/// and takes the older one. Released, the older writer tries to lead: its own
/// take loses to the group that took it, so it removes its unused group's
/// intent and follows that group.
#[test]
fn a_writer_taken_before_it_bound_itself_follows_the_group_that_took_it() {
    on_each_backend(|b| {
        let dir = tempfile::tempdir().unwrap();
        seeded(&b.root, dir.path(), &["t"]);
        let (fa, fb) = (jsonl(dir.path(), "a.jsonl", 100..130), jsonl(dir.path(), "b.jsonl", 200..210));
        let a = hold_at(&mut contended(&b.root, &fa, &[]), "group.queued");
        let out = run(&mut contended(&b.root, &fb, &[]));
        assert_eq!(out.status.code(), Some(0), "{}", b.name);
        a.release();
        let out = a.wait_with_output();
        assert_eq!(out.status.code(), Some(0), "{}", b.name);
        let (groups, joined) = groups(&b.root);
        assert_eq!(groups.len(), 1, "{}: the older writer's own group never decided anything: {groups:?}", b.name);
        assert_eq!(joined.len(), 2, "{}", b.name);
        assert_eq!(groups[0].members.as_ref().map(Vec::len), Some(2), "{}", b.name);
        assert_eq!((pending(&b.root), queued(&b.root)), (0, 0), "{}: its unused group's intent is gone too", b.name);
        assert_eq!(scan_ids(&b.root, "t"), ids_of(&[0..5, 100..130, 200..210]), "{}", b.name);
    });
}

/// Two contended writers queue at once, each one's offer landing late (A's
/// after 400 ms, B's after 800 ms). A leads and is held once bound to its
/// group. B lists the line only once its own entry is there, so it finds A's
/// entry ahead and waits behind A's group in flight (listed beside its
/// offer, B found the line empty and led a group beside A's). Released,
/// A's group commits A's rows and B leads the next.
#[test]
fn a_writer_whose_offer_lands_late_still_finds_the_line() {
    on_each_backend(|b| {
        let dir = tempfile::tempdir().unwrap();
        seeded(&b.root, dir.path(), &["t"]);
        let (fa, fb) = (jsonl(dir.path(), "a.jsonl", 100..130), jsonl(dir.path(), "b.jsonl", 200..210));
        let before = lance_version(&b.root, "t");
        let (mut ca, mut cb) = (contended(&b.root, &fa, &[]), contended(&b.root, &fb, &[]));
        ca.env("SLUICE_FAULTS", "rule=_queue/t/:slow-then-applied-400");
        cb.env("SLUICE_FAULTS", "rule=_queue/t/:slow-then-applied-800");
        let a = hold_at_then(&mut ca, "ingest.before-commit", "group.after-self-take");
        let bw = hold_at(&mut cb, "ingest.before-commit");
        a.release();
        bw.release();
        a.wait_for("group.after-self-take");
        // Until B's entry lands (or B led a group and decided it already).
        let until = Instant::now() + Duration::from_secs(30);
        while queued(&b.root) < 2 && groups(&b.root).0.is_empty() {
            assert!(Instant::now() < until, "{}: B's entry never landed", b.name);
            std::thread::sleep(Duration::from_millis(20));
        }
        // Long enough for B to lead once its offer returned, well within the
        // line's 2 s bound.
        std::thread::sleep(Duration::from_millis(300));
        let (decided, _) = groups(&b.root);
        assert_eq!((groups_led(&b.root), decided.len(), queued(&b.root)), (1, 0, 2), "{}: B waits behind A's group instead of leading beside it: {decided:?}", b.name);
        a.release();
        for (w, rows) in [(a, 30), (bw, 10)] {
            let out = w.wait_with_output();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains("fault: slow-then-applied"), "{}: {stderr}", b.name);
            assert_eq!(out.status.code(), Some(0), "{}: {stderr}", b.name);
            assert_eq!(json(&out)["tables"]["t"]["rows_inserted"], rows, "{}", b.name);
        }
        let (groups, _) = groups(&b.root);
        assert_eq!(groups.iter().map(|g| g.members.as_ref().map_or(0, Vec::len)).collect::<Vec<_>>(), [1, 1], "{}: {groups:?}", b.name);
        assert_eq!(lance_version(&b.root, "t"), before + 2, "{}", b.name);
        assert_eq!((pending(&b.root), queued(&b.root)), (0, 0), "{}", b.name);
        assert_eq!(scan_ids(&b.root, "t"), ids_of(&[0..5, 100..130, 200..210]), "{}", b.name);
    });
}

/// A group's leader asks for Lance's latest version beside its takes. A
/// writer is held once queued while another commits on its own, one version
/// past the rows it staged: released, it leads, and its group's commit takes
/// that version from the answer asked ahead (no listing) and lands after it,
/// with every row once.
#[test]
fn a_group_commit_takes_the_one_newer_version_asked_ahead() {
    on_each_backend(|b| {
        let dir = tempfile::tempdir().unwrap();
        seeded(&b.root, dir.path(), &["t"]);
        let (fa, fb) = (jsonl(dir.path(), "a.jsonl", 100..130), jsonl(dir.path(), "b.jsonl", 200..210));
        let before = lance_version(&b.root, "t");
        let a = hold_at(contended(&b.root, &fa, &[]).env("SLUICE_LOG", "sluice::known_manifest=debug"), "group.queued");
        let out = run(sluice(&b.root).args(["ingest", "--table", "t"]).arg(&fb));
        assert_eq!(out.status.code(), Some(0), "{}", b.name);
        assert_eq!(lance_version(&b.root, "t"), before + 1, "{}: B committed on its own", b.name);
        a.release();
        let out = a.wait_with_output();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{}: {stderr}", b.name);
        assert!(stderr.contains("only the next version after the read version, as asked ahead"), "{}: {stderr}", b.name);
        assert_eq!(lance_version(&b.root, "t"), before + 2, "{}: A's group lands after B's commit", b.name);
        assert_eq!(groups(&b.root).0.len(), 1, "{}", b.name);
        assert_eq!((pending(&b.root), queued(&b.root)), (0, 0), "{}", b.name);
        assert_eq!(scan_ids(&b.root, "t"), ids_of(&[0..5, 100..130, 200..210]), "{}: every row once", b.name);
    });
}

/// Groups led: those that bound a writer (every contended writer writes the
/// intent of a group it would lead; only a leader binds anyone to one).
fn groups_led(root: &str) -> usize {
    groups(root).1.into_values().collect::<std::collections::BTreeSet<_>>().len()
}

/// One group in flight at a time: A leads and is held after its takes; B and
/// C queue behind it and, released, wait in line instead of leading a group
/// beside A's (each waited 50 ms per older entry, then led, before the
/// line). Released, A's group commits A's rows alone; its entry goes beside
/// its decision, and the first of B and C in line leads the next group,
/// taking the other: two groups, two Lance commits for three writers.
#[test]
fn writers_queued_behind_a_group_in_flight_form_the_next_group() {
    on_each_backend(|b| {
        let dir = tempfile::tempdir().unwrap();
        seeded(&b.root, dir.path(), &["t"]);
        let (fa, fb, fc) = (jsonl(dir.path(), "a.jsonl", 100..130), jsonl(dir.path(), "b.jsonl", 200..210), jsonl(dir.path(), "c.jsonl", 300..305));
        let before = lance_version(&b.root, "t");
        let a = hold_at(&mut contended(&b.root, &fa, &[]), "group.after-takes");
        let (bw, cw) = (hold_at(&mut contended(&b.root, &fb, &[]), "group.queued"), hold_at(&mut contended(&b.root, &fc, &[]), "group.queued"));
        assert_eq!(queued(&b.root), 3, "{}", b.name);
        bw.release();
        cw.release();
        // Long enough for the old rule (50 ms per older entry) to lead, well
        // within the line's 2 s bound, which A's group must beat once released.
        std::thread::sleep(Duration::from_millis(250));
        let (decided, _) = groups(&b.root);
        assert_eq!((groups_led(&b.root), decided.len()), (1, 0), "{}: B and C wait in line behind A's group in flight: {decided:?}", b.name);
        a.release();
        for (w, rows) in [(a, 30), (bw, 10), (cw, 5)] {
            let out = w.wait_with_output();
            assert_eq!(out.status.code(), Some(0), "{}", b.name);
            assert_eq!(json(&out)["tables"]["t"]["rows_inserted"], rows, "{}", b.name);
        }
        let (groups, _) = groups(&b.root);
        let mut sizes: Vec<usize> = groups.iter().map(|g| g.members.as_ref().map_or(0, Vec::len)).collect();
        sizes.sort();
        assert_eq!(sizes, [1, 2], "{}: A alone, then B and C together: {groups:?}", b.name);
        assert_eq!(lance_version(&b.root, "t"), before + 2, "{}", b.name);
        assert_eq!((pending(&b.root), queued(&b.root)), (0, 0), "{}", b.name);
        assert_eq!(scan_ids(&b.root, "t"), ids_of(&[0..5, 100..130, 200..210, 300..305]), "{}", b.name);
    });
}

/// A member's spare group's intent lands late (its PUT is slow, then
/// applied), after its leader published and removed the member's intents:
/// it is left over, binding nobody. The member, released, finds its entry
/// withdrawn, goes to lead, loses its own take to the leader's, removes that
/// intent and follows the group: nothing is left.
#[test]
fn a_spare_groups_intent_that_lands_after_its_leaders_finish_is_removed() {
    on_each_backend(|b| {
        let dir = tempfile::tempdir().unwrap();
        seeded(&b.root, dir.path(), &["t"]);
        let (fa, fb) = (jsonl(dir.path(), "a.jsonl", 100..130), jsonl(dir.path(), "b.jsonl", 200..210));
        let a = hold_at(&mut contended(&b.root, &fa, &[]), "group.after-intent");
        let mut cb = contended(&b.root, &fb, &[]);
        // Far longer than the leader's whole group takes once released.
        cb.env("SLUICE_FAULTS", "rule=_ops/group-:slow-then-applied-4000");
        let bw = std::thread::spawn(move || hold_at(&mut cb, "group.queued"));
        let until = Instant::now() + Duration::from_secs(30);
        while queued(&b.root) < 2 {
            assert!(Instant::now() < until, "{}: B's entry never landed", b.name);
            std::thread::sleep(Duration::from_millis(20));
        }
        a.release();
        assert_eq!(a.wait_with_output().status.code(), Some(0), "{}", b.name);
        assert_eq!(scan_ids(&b.root, "t"), ids_of(&[0..5, 100..130, 200..210]), "{}: the leader published both", b.name);
        let bw = bw.join().unwrap();
        let left = status(&b.root)["pending"].as_array().unwrap().clone();
        assert_eq!(left.iter().map(|p| p["kind"].as_str().unwrap()).collect::<Vec<_>>(), [sidecar::KIND_GROUP], "{}: B's spare group's intent landed after its leader's finish", b.name);
        bw.release();
        let out = bw.wait_with_output();
        assert_eq!(out.status.code(), Some(0), "{}: {}", b.name, String::from_utf8_lossy(&out.stderr));
        assert_eq!(json(&out)["tables"]["t"]["rows_inserted"], 10, "{}", b.name);
        assert_eq!((pending(&b.root), queued(&b.root)), (0, 0), "{}: B removed its spare group's intent", b.name);
        assert_eq!(groups_led(&b.root), 1, "{}: B led no group of its own", b.name);
        assert_eq!(scan_ids(&b.root, "t"), ids_of(&[0..5, 100..130, 200..210]), "{}: once", b.name);
    });
}

/// A member is killed (`kill -9`) while it waits for its group: the leader
/// publishes its rows all the same and, having published them, removes the
/// dead member's intent with its own. Its redelivery is "already ingested".
#[test]
fn a_member_killed_while_waiting_is_finished_by_its_leader() {
    on_each_backend(|b| {
        let dir = tempfile::tempdir().unwrap();
        seeded(&b.root, dir.path(), &["t"]);
        let (fa, fb) = (jsonl(dir.path(), "a.jsonl", 100..130), jsonl(dir.path(), "b.jsonl", 200..210));
        let a = hold_at(&mut contended(&b.root, &fa, &[]), "group.after-intent");
        // Its clock runs 10 minutes behind: its intent looks expired at once.
        let mut cmd = contended(&b.root, &fb, &["--timeout", "60s"]);
        let bw = hold_at_then(cmd.env("SLUICE_TEST_CLOCK_BEHIND_MS", "600000"), "group.queued", "group.member-waiting");
        a.release();
        assert_eq!(a.wait_with_output().status.code(), Some(0), "{}", b.name);
        bw.release();
        bw.wait_for("group.member-waiting");
        drop(bw);
        assert_eq!(pending(&b.root), 0, "{}: the leader removed the dead member's intent", b.name);
        sweep_until_clean(&b.root, Duration::from_secs(60));
        assert_eq!(scan_ids(&b.root, "t"), ids_of(&[0..5, 100..130, 200..210]), "{}", b.name);
        let again = run(&mut contended(&b.root, &fb, &[]));
        assert_eq!(json(&again)["sources"][0]["status"], "already_ingested", "{}", b.name);
        assert_eq!(scan_ids(&b.root, "t"), ids_of(&[0..5, 100..130, 200..210]), "{}: once", b.name);
    });
}

/// A member returns once it sees its leader's publish, leaving its intent
/// to the leader. The leader is killed (`kill -9`) right after that
/// publish, before it removes any intent: the member's rows are shown and
/// its call succeeded all the same; a redelivery of its source meanwhile is
/// "already ingested" at once (the member is decided forward and shown);
/// and a sweep finishes the three intents left (the leader's, the group's,
/// the member's). Both redeliveries are "already ingested".
#[test]
fn a_member_returns_once_published_and_a_sweep_finishes_what_its_dead_leader_left() {
    on_each_backend(|b| {
        let dir = tempfile::tempdir().unwrap();
        seeded(&b.root, dir.path(), &["t"]);
        let (fa, fb) = (jsonl(dir.path(), "a.jsonl", 100..130), jsonl(dir.path(), "b.jsonl", 200..210));
        // Both clocks run 10 minutes behind: a sweep may finish their intents at once.
        let mut cmd = contended(&b.root, &fa, &["--timeout", "60s"]);
        let a = hold_at_then(cmd.env("SLUICE_TEST_CLOCK_BEHIND_MS", "600000"), "group.after-intent", "ingest.before-finish");
        let mut cmd = contended(&b.root, &fb, &["--timeout", "60s"]);
        let bw = hold_at(cmd.env("SLUICE_TEST_CLOCK_BEHIND_MS", "600000"), "group.queued");
        a.release();
        a.wait_for("ingest.before-finish");
        assert_eq!(scan_ids(&b.root, "t"), ids_of(&[0..5, 100..130, 200..210]), "{}: the leader published both", b.name);
        bw.release();
        let out = bw.wait_with_output();
        assert_eq!(out.status.code(), Some(0), "{}: {}", b.name, String::from_utf8_lossy(&out.stderr));
        assert_eq!(json(&out)["tables"]["t"]["rows_inserted"], 10, "{}", b.name);
        // The leader's intent and its group's, and the member's. (Its spare
        // group's it removed itself: released, it found its entry withdrawn,
        // went to lead, and found itself taken.)
        assert_eq!(pending(&b.root), 3, "{}: the member left its intent to its leader, held", b.name);
        // A redelivery finds the member decided forward and shown: published,
        // without waiting for its intent to go (nor finishing it).
        let again = run(&mut contended(&b.root, &fb, &[]));
        assert_eq!(json(&again)["sources"][0]["status"], "already_ingested", "{}", b.name);
        assert_eq!(pending(&b.root), 3, "{}: the member's intent is still its leader's to remove", b.name);
        drop(a);
        sweep_until_clean(&b.root, Duration::from_secs(60));
        assert_eq!((pending(&b.root), queued(&b.root)), (0, 0), "{}", b.name);
        for f in [&fa, &fb] {
            let again = run(&mut contended(&b.root, f, &[]));
            assert_eq!(json(&again)["sources"][0]["status"], "already_ingested", "{}", b.name);
        }
        assert_eq!(scan_ids(&b.root, "t"), ids_of(&[0..5, 100..130, 200..210]), "{}: once", b.name);
    });
}

/// A leader is killed (`kill -9`) after taking a member, before its commit.
/// The member, waiting, finds the group's writer presumed dead and resolves
/// the group: nothing committed, so rolled back; the member gives its source
/// back and fails, asking for redelivery. A sweep rolls the dead leader back
/// through the same decision. Both redeliveries ingest their rows once.
#[test]
fn a_dead_leaders_member_resolves_the_group_and_is_delivered_again() {
    on_each_backend(|b| {
        let dir = tempfile::tempdir().unwrap();
        seeded(&b.root, dir.path(), &["t"]);
        let (fa, fb) = (jsonl(dir.path(), "a.jsonl", 100..130), jsonl(dir.path(), "b.jsonl", 200..210));
        // The leader's clock runs 10 minutes behind: its group looks expired at once.
        let mut cmd = contended(&b.root, &fa, &["--timeout", "60s"]);
        let a = hold_at_then(cmd.env("SLUICE_TEST_CLOCK_BEHIND_MS", "600000"), "group.after-intent", "group.after-takes");
        let bw = hold_at(&mut contended(&b.root, &fb, &["--clock-skew", "0s"]), "group.queued");
        a.release();
        a.wait_for("group.after-takes");
        drop(a);
        bw.release();
        let out = bw.wait_with_output();
        assert_eq!(out.status.code(), Some(1), "{}", b.name);
        assert!(String::from_utf8_lossy(&out.stderr).contains("deliver its sources again"), "{}", b.name);
        sweep_until_clean(&b.root, Duration::from_secs(60));
        assert_eq!(scan_ids(&b.root, "t"), ids_of(&[0..5]), "{}: nothing of the group shown", b.name);
        for f in [&fa, &fb] {
            assert_eq!(run(&mut contended(&b.root, f, &[])).status.code(), Some(0), "{}", b.name);
        }
        assert_eq!(scan_ids(&b.root, "t"), ids_of(&[0..5, 100..130, 200..210]), "{}: once", b.name);
        assert_eq!(pending(&b.root), 0, "{}", b.name);
    });
}

/// A writer killed right after offering its rows leaves its queue entry; a
/// sweep rolls it back (nobody can take it after that), and cleanup removes
/// the entry of a decided, finished attempt.
#[test]
fn cleanup_removes_the_queue_entry_a_dead_writer_left() {
    on_each_backend(|b| {
        let dir = tempfile::tempdir().unwrap();
        seeded(&b.root, dir.path(), &["t"]);
        let fa = jsonl(dir.path(), "a.jsonl", 100..130);
        let mut cmd = contended(&b.root, &fa, &["--timeout", "60s"]);
        kill_9_at(cmd.env("SLUICE_TEST_CLOCK_BEHIND_MS", "600000"), "group.queued");
        assert_eq!(queued(&b.root), 1, "{}", b.name);
        sweep_until_clean(&b.root, Duration::from_secs(60));
        let out = run(sluice(&b.root).args(["--json", "--clock-skew", "0s", "cleanup"]));
        assert_eq!(out.status.code(), Some(0), "{}", b.name);
        assert_eq!(json(&out)["sidecars"]["queue_entries"], 1, "{}", b.name);
        assert_eq!(queued(&b.root), 0, "{}", b.name);
        assert_eq!(run(&mut contended(&b.root, &fa, &[])).status.code(), Some(0), "{}", b.name);
        assert_eq!(scan_ids(&b.root, "t"), ids_of(&[0..5, 100..130]), "{}: once", b.name);
    });
}

/// A writer killed (`kill -9`) right after offering its rows leaves a fresh
/// entry ahead in line. The next writer waits behind it for the line's
/// bound (2 s) only, then leads and takes it: the dead writer's rows ride in
/// its group, published under their own operation, and a sweep finishes the
/// dead writer through that group. Every row once; a redelivery of the dead
/// writer's file is "already ingested".
#[test]
fn a_dead_writers_entry_holds_the_line_once_then_rides_in_the_next_group() {
    on_each_backend(|b| {
        let dir = tempfile::tempdir().unwrap();
        seeded(&b.root, dir.path(), &["t"]);
        let (fa, fb) = (jsonl(dir.path(), "a.jsonl", 100..130), jsonl(dir.path(), "b.jsonl", 200..210));
        // Its clock runs 10 minutes behind: a sweep may finish it at once.
        let mut cmd = contended(&b.root, &fa, &["--timeout", "60s"]);
        kill_9_at(cmd.env("SLUICE_TEST_CLOCK_BEHIND_MS", "600000"), "group.queued");
        assert_eq!(queued(&b.root), 1, "{}", b.name);
        let started = Instant::now();
        let out = run(&mut contended(&b.root, &fb, &[]));
        let waited = started.elapsed();
        assert_eq!(out.status.code(), Some(0), "{}: {}", b.name, String::from_utf8_lossy(&out.stderr));
        assert!(waited >= Duration::from_secs(2), "{}: B waited the line's bound behind the dead entry: {waited:?}", b.name);
        assert_eq!(scan_ids(&b.root, "t"), ids_of(&[0..5, 100..130, 200..210]), "{}: the dead writer's rows are published with B's", b.name);
        let (groups, joined) = groups(&b.root);
        assert_eq!(groups.len(), 1, "{}: {groups:?}", b.name);
        assert_eq!(groups[0].members.as_ref().map(Vec::len), Some(2), "{}", b.name);
        assert_eq!(joined.len(), 2, "{}", b.name);
        assert_eq!(pending(&b.root), 0, "{}: B, leading, removed the dead writer's intent once it published its rows", b.name);
        sweep_until_clean(&b.root, Duration::from_secs(60));
        assert_eq!((pending(&b.root), queued(&b.root)), (0, 0), "{}", b.name);
        let again = run(&mut contended(&b.root, &fa, &[]));
        assert_eq!(json(&again)["sources"][0]["status"], "already_ingested", "{}", b.name);
        assert_eq!(scan_ids(&b.root, "t"), ids_of(&[0..5, 100..130, 200..210]), "{}: once", b.name);
    });
}

/// A leader's take of a queued writer B gets an ambiguous answer: an error
/// at once, while the PUT lands a moment later (when the leader's next
/// request, its read of B's entry beside the take, arrives). Whether the
/// leader's read-back still finds the take decides the story, and both
/// endings must hold: found, B is a member and its rows are published with
/// the leader's; missed, the leader leaves B out, and B, bound to a group
/// decided forward without it, is rolled back, releases its claim and
/// fails, saying so, and its redelivery ingests it (in the runs seen, the
/// local disk takes the second ending and the S3 server the first). Either
/// way every row is published once and nothing is left pending.
#[test]
fn a_take_that_lands_late_is_followed_whichever_way_the_leader_read_it() {
    on_each_backend(|b| {
        let dir = tempfile::tempdir().unwrap();
        seeded(&b.root, dir.path(), &["t"]);
        let (fa, fb) = (jsonl(dir.path(), "a.jsonl", 100..130), jsonl(dir.path(), "b.jsonl", 200..210));
        let bw = hold_at(&mut contended(&b.root, &fb, &[]), "group.queued");
        let b_op = {
            let lake = Lake::open(&b.root).unwrap();
            let entries = tokio::runtime::Runtime::new().unwrap().block_on(sluice::queue::list_all(&lake)).unwrap();
            assert_eq!(entries.len(), 1, "{}", b.name);
            entries[0].1.op.clone()
        };
        let mut ca = contended(&b.root, &fa, &[]);
        ca.env("SLUICE_FAULTS", format!("rule=_decisions/{b_op}.:lands-late"));
        let out = run(&mut ca);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("fault: lands-late") && stderr.contains("fault: landed-late"), "{}: {stderr}", b.name);
        assert_eq!(out.status.code(), Some(0), "{}: {stderr}", b.name);
        let (groups, joined) = groups(&b.root);
        assert_eq!(groups.len(), 1, "{}: {groups:?}", b.name);
        let b_group = joined.iter().find(|(m, _)| m.op == b_op).map(|(_, g)| g.clone()).expect("B's take landed");
        assert_eq!(b_group.attempt, groups[0].intent, "{}: B is bound to A's group", b.name);
        let members = groups[0].members.clone().unwrap();
        let b_in = members.iter().any(|m| m.op == b_op);
        bw.release();
        let out = bw.wait_with_output();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if b_in {
            assert_eq!(out.status.code(), Some(0), "{}: B rides in A's group: {stderr}", b.name);
            assert_eq!(scan_ids(&b.root, "t"), ids_of(&[0..5, 100..130, 200..210]), "{}", b.name);
        } else {
            assert_eq!(out.status.code(), Some(1), "{}: B is rolled back: {stderr}", b.name);
            assert!(stderr.contains("rolled back or left it out"), "{}: {stderr}", b.name);
            assert_eq!(scan_ids(&b.root, "t"), ids_of(&[0..5, 100..130]), "{}: nothing of B is shown", b.name);
            let again = run(&mut contended(&b.root, &fb, &[]));
            assert_eq!(again.status.code(), Some(0), "{}", b.name);
        }
        assert_eq!((pending(&b.root), queued(&b.root)), (0, 0), "{}", b.name);
        assert_eq!(scan_ids(&b.root, "t"), ids_of(&[0..5, 100..130, 200..210]), "{}: every row once", b.name);
        let again = run(&mut contended(&b.root, &fb, &[]));
        assert_eq!(json(&again)["sources"][0]["status"], "already_ingested", "{}", b.name);
    });
}

/// Without the test knob, a single-table append commits on its own first,
/// with one Lance attempt: unbeaten, it lands on its own (no group). Its
/// manifest PUT beaten once, Lance proves it lost and the writer commits in
/// a group instead of rebasing (after Lance's randomized backoff) or
/// failing, without reading the table's history (a proven loss has nothing
/// there to find).
#[test]
fn a_commit_lance_proves_lost_goes_to_a_group() {
    on_each_backend(|b| {
        let dir = tempfile::tempdir().unwrap();
        seeded(&b.root, dir.path(), &["t"]);
        let (fa, fb) = (jsonl(dir.path(), "a.jsonl", 100..130), jsonl(dir.path(), "b.jsonl", 200..210));
        let ingest = |f: &Path, beaten: u32| {
            let mut cmd = sluice(&b.root);
            cmd.args(["--json", "ingest", "--table", "t"]).arg(f).env("SLUICE_LOG", "sluice=info");
            if beaten > 0 {
                cmd.env("SLUICE_FAULTS", format!("rule=t.lance/_versions/:beaten:{beaten}"));
            }
            run(&mut cmd)
        };
        let out = ingest(&fa, 0);
        assert_eq!(out.status.code(), Some(0), "{}", b.name);
        assert!(groups(&b.root).1.is_empty(), "{}: its own commit", b.name);
        let out = ingest(&fb, 1);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{}: {stderr}", b.name);
        assert!(stderr.contains("fault: beaten") && stderr.contains("committing in a group"), "{}: {stderr}", b.name);
        assert!(!stderr.contains("reading the table's history"), "{}: {stderr}", b.name);
        let (groups, joined) = groups(&b.root);
        assert_eq!((groups.len(), joined.len()), (1, 1), "{}", b.name);
        assert_eq!(json(&out)["tables"]["t"]["rows_inserted"], 10, "{}", b.name);
        assert_eq!((pending(&b.root), queued(&b.root)), (0, 0), "{}", b.name);
        assert_eq!(scan_ids(&b.root, "t"), ids_of(&[0..5, 100..130, 200..210]), "{}", b.name);
    });
}

/// A writer's own commit, which Lance proved lost, lands after all while the
/// writer waits in the queue (a store retrying the PUT): a lone ingest's
/// vetting finds it and decides the writer forward at it, before any group
/// takes the writer. The writer, going on to lead, finds that decision: it
/// publishes its own commit as a lone writer would and succeeds, its rows
/// shown once.
#[test]
fn a_lost_commit_that_landed_while_queued_is_published_as_its_writers_own() {
    on_each_backend(|b| {
        let dir = tempfile::tempdir().unwrap();
        seeded(&b.root, dir.path(), &["t"]);
        let (fa, fx) = (jsonl(dir.path(), "a.jsonl", 100..130), jsonl(dir.path(), "x.jsonl", 400..403));
        let a = hold_at(&mut contended(&b.root, &fa, &[]), "group.queued");
        let lake = Lake::open(&b.root).unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (id, _) = rt.block_on(sluice::queue::list(&lake, "t")).unwrap().pop().expect("its entry");
        let entry = rt.block_on(sluice::queue::read(&lake, "t", &id)).unwrap().unwrap();
        let own = Member { id: id.clone(), source_id: String::new(), fragments: entry.fragments };
        rt.block_on(stray(&lake, "t", &own));
        assert_eq!(run(sluice(&b.root).args(["ingest", "--table", "t"]).arg(&fx)).status.code(), Some(0), "{}", b.name);
        assert_eq!(rt.block_on(sidecar::read_decision(&lake, &id)).unwrap().map(|d| d.outcome), Some(Outcome::Forward), "{}: the vetter decided it", b.name);
        a.release();
        let out = a.wait_with_output();
        assert_eq!(out.status.code(), Some(0), "{}", b.name);
        assert_eq!(json(&out)["tables"]["t"]["rows_inserted"], 30, "{}", b.name);
        assert!(groups(&b.root).0.is_empty(), "{}: no group decided anything", b.name);
        assert_eq!((pending(&b.root), queued(&b.root)), (0, 0), "{}", b.name);
        assert_eq!(scan_ids(&b.root, "t"), ids_of(&[0..5, 100..130, 400..403]), "{}: once", b.name);
    });
}
