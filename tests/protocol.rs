//! The door, in process, on every backend: exactly once, one commit and one
//! publish per call, atomic multi-table loads, upserts, casts, races.

use std::collections::BTreeSet;
use std::sync::Arc;

use sluice::Lake;
use sluice::ingest::SourceStatus;
use sluice::manifest;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ingest_once_then_redelivery_is_already_ingested() {
    for b in all_backends() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(&b.root).unwrap();
        let a = jsonl(dir.path(), "a.jsonl", 0..100);

        let first = ingest(&lake, vec![request("events", &[&a])]).await.unwrap();
        assert_eq!(first.sources[0].status, SourceStatus::Ingested, "{}", b.name);
        assert_eq!(first.tables["events"].rows_inserted, 100);
        let v = first.manifest_version.unwrap();
        assert_eq!(ids(&lake, "events", None).await, (0..100).collect::<Vec<_>>());

        let again = ingest(&lake, vec![request("events", &[&a])]).await.unwrap();
        assert!(again.all_already_ingested(), "{}: {again:?}", b.name);
        assert_eq!(again.manifest_version, Some(v), "a redelivery publishes nothing");
        assert_eq!(ids(&lake, "events", None).await.len(), 100);

        // A fresh process (new session, no caches) sees the same ledger.
        let fresh = Lake::open(&b.root).unwrap();
        assert!(ingest(&fresh, vec![request("events", &[&a])]).await.unwrap().all_already_ingested());
        assert!(sluice::sidecar::pending(&fresh).await.unwrap().is_empty(), "no intent left behind");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_sources_become_one_commit_and_one_publish() {
    for b in all_backends() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(&b.root).unwrap();
        let seed = jsonl(dir.path(), "seed.jsonl", 0..10);
        let seeded = ingest(&lake, vec![request("t", &[&seed])]).await.unwrap();
        let files: Vec<_> = (0..3).map(|i| jsonl(dir.path(), &format!("f{i}.jsonl"), (i + 1) * 100..(i + 1) * 100 + 50)).collect();
        let refs: Vec<&std::path::Path> = files.iter().map(|p| p.as_path()).collect();
        let report = ingest(&lake, vec![request("t", &refs)]).await.unwrap();

        assert_eq!(report.tables["t"].rows_inserted, 150, "{}", b.name);
        assert_eq!(report.tables["t"].lance_version, seeded.tables["t"].lance_version + 1, "one Lance commit");
        assert_eq!(report.manifest_version, Some(seeded.manifest_version.unwrap() + 1), "one publish");
        let latest = manifest::read_latest(&lake).await.unwrap().unwrap();
        assert_eq!(latest.published.len(), 1);
        assert_eq!(latest.published[0].sources, 3);
        assert_eq!(ids(&lake, "t", None).await.len(), 160);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn multi_table_load_is_one_manifest_version() {
    for b in all_backends() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(&b.root).unwrap();
        let orders = jsonl(dir.path(), "o.jsonl", 0..30);
        let items = jsonl(dir.path(), "i.jsonl", 0..70);
        let report = ingest(&lake, vec![request("orders", &[&orders]), request("items", &[&items])]).await.unwrap();
        let v = report.manifest_version.unwrap();
        let m = manifest::read_version(&lake, v).await.unwrap().unwrap();
        assert_eq!(m.published.len(), 1, "{}", b.name);
        assert_eq!(m.published[0].kind, "load");
        assert!(m.tables.contains_key("orders") && m.tables.contains_key("items"));
        // Both appear together: the version before shows neither.
        let before = manifest::read_version(&lake, v - 1).await.unwrap().unwrap();
        assert!(!before.tables.contains_key("orders") && !before.tables.contains_key("items"));
        assert_eq!(ids(&lake, "orders", None).await.len(), 30);
        assert_eq!(ids(&lake, "items", None).await.len(), 70);
        // The writer removed its intent; its forward decision stays (cleanup takes it later).
        assert_eq!(lake.list("_decisions").await.unwrap().len(), 1);
        assert!(lake.list("_ops").await.unwrap().is_empty());
        // Redelivering the whole load changes nothing.
        let again = ingest(&lake, vec![request("orders", &[&orders]), request("items", &[&items])]).await.unwrap();
        assert!(again.all_already_ingested());
        assert_eq!(again.manifest_version, Some(v));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upsert_replaces_rows_by_key_and_the_mode_is_kept() {
    for b in all_backends() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(&b.root).unwrap();
        let first = jsonl(dir.path(), "u1.jsonl", 0..10);
        let second = write(dir.path(), "u2.jsonl", (5..15).map(|i| format!("{{\"id\": {i}, \"name\": \"new-{i}\", \"score\": 1.0}}\n")).collect::<String>().as_bytes());
        ingest(&lake, vec![upsert("users", "id", &[&first])]).await.unwrap();
        // Later calls need not repeat the mode: the lake keeps it.
        let r = ingest(&lake, vec![request("users", &[&second])]).await.unwrap();
        // 5 new keys and 5 replaced: a 10-row file is 10 rows, not 15.
        assert_eq!((r.tables["users"].rows_inserted, r.tables["users"].rows_updated), (5, 5), "{}", b.name);
        assert_eq!(ids(&lake, "users", None).await, (0..15).collect::<Vec<_>>());
        // A conflicting mode is a usage error, not a silent append.
        let third = jsonl(dir.path(), "u3.jsonl", 100..101);
        let err = ingest(&lake, vec![sluice::ingest::TableRequest { mode: Some(sluice::manifest::Mode::Append), ..request("users", &[&third]) }])
            .await
            .unwrap_err();
        assert_eq!(err.exit_code(), 2, "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn later_files_are_cast_to_the_table_schema() {
    let b = local();
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(&b.root).unwrap();
    let first = write(dir.path(), "a.jsonl", b"{\"id\": 1, \"name\": \"a\", \"score\": 1.5}\n");
    // No `name` (nullable: null), an integer score (cast to float).
    let second = write(dir.path(), "b.jsonl", b"{\"id\": 2, \"score\": 3}\n");
    ingest(&lake, vec![request("t", &[&first])]).await.unwrap();
    ingest(&lake, vec![request("t", &[&second])]).await.unwrap();
    assert_eq!(ids(&lake, "t", None).await, vec![1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scans_read_a_consistent_old_version() {
    let b = local();
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(&b.root).unwrap();
    let one = ingest(&lake, vec![request("t", &[&jsonl(dir.path(), "1.jsonl", 0..5)])]).await.unwrap();
    ingest(&lake, vec![request("t", &[&jsonl(dir.path(), "2.jsonl", 5..9)])]).await.unwrap();
    assert_eq!(ids(&lake, "t", one.manifest_version).await, (0..5).collect::<Vec<_>>());
    assert_eq!(ids(&lake, "t", None).await, (0..9).collect::<Vec<_>>());
}

/// Independent writers (own Lake, own Lance session) race on one table and
/// one manifest: all succeed, every row once, pins only move forward.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_converge_on_the_manifest() {
    for b in all_backends() {
        let dir = tempfile::tempdir().unwrap();
        // Create the table first so the race is on appends and publishes.
        let lake = Lake::open(&b.root).unwrap();
        ingest(&lake, vec![request("t", &[&jsonl(dir.path(), "seed.jsonl", 0..1)])]).await.unwrap();
        let writers = 6;
        let mut tasks = Vec::new();
        for w in 0..writers {
            let root = b.root.clone();
            let file = jsonl(dir.path(), &format!("w{w}.jsonl"), (w + 1) * 1000..(w + 1) * 1000 + 20);
            tasks.push(tokio::spawn(async move {
                let lake = Lake::open(&root).unwrap();
                ingest(&lake, vec![request("t", &[&file])]).await
            }));
        }
        let mut versions = BTreeSet::new();
        for t in tasks {
            let report = t.await.unwrap().unwrap_or_else(|e| panic!("{}: writer failed: {e}", b.name));
            versions.insert(report.manifest_version.unwrap());
        }
        let got = ids(&lake, "t", None).await;
        assert_eq!(got.len(), 1 + 20 * writers as usize, "{}", b.name);
        assert_eq!(got.iter().collect::<BTreeSet<_>>().len(), got.len(), "no row twice");
        // Pins never went back along the history.
        let history = manifest::history(&lake, 100).await.unwrap();
        for pair in history.windows(2) {
            let (newer, older) = (&pair[0], &pair[1]);
            assert_eq!(newer.version, older.version + 1);
            for (t, pin) in &older.tables {
                assert!(newer.tables[t].version >= pin.version, "pin of {t} went back at v{}", newer.version);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicate_deliveries_in_process_ingest_once() {
    for b in all_backends() {
        let dir = tempfile::tempdir().unwrap();
        let file = Arc::new(jsonl(dir.path(), "dup.jsonl", 0..50));
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let (root, file) = (b.root.clone(), Arc::clone(&file));
            tasks.push(tokio::spawn(async move { ingest(&Lake::open(&root).unwrap(), vec![request("d", &[&file])]).await }));
        }
        let mut ingested = 0;
        for t in tasks {
            let r = t.await.unwrap().unwrap_or_else(|e| panic!("{}: {e}", b.name));
            ingested += usize::from(!r.all_already_ingested());
        }
        assert_eq!(ingested, 1, "{}: exactly one delivery ingests", b.name);
        assert_eq!(ids(&Lake::open(&b.root).unwrap(), "d", None).await.len(), 50);
    }
}

/// Contract with Lance that table creation relies on: a strict overwrite
/// (no retries) at read version 0 fails on an existing table instead of
/// replacing it. (A non-strict one rebases onto the latest version and would
/// wipe the rows of whoever created the table first.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_table_creation_cannot_replace_the_table() {
    use lance::dataset::CommitBuilder;
    use lance::dataset::transaction::{Operation, TransactionBuilder};
    for b in all_backends() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(&b.root).unwrap();
        ingest(&lake, vec![request("t", &[&jsonl(dir.path(), "a.jsonl", 0..10)])]).await.unwrap();
        let ds = lake.open_table("t", None).await.unwrap();
        let late = TransactionBuilder::new(
            0,
            Operation::Overwrite { fragments: vec![], schema: ds.schema().clone(), config_upsert_values: None, initial_bases: None },
        )
        .build();
        let result = CommitBuilder::new(lake.table_uri("t").as_str())
            .with_store_params(lake.store_params())
            .with_max_retries(0)
            .execute(late)
            .await;
        assert!(result.is_err(), "{}: a late creation replaced the table", b.name);
        let after = lake.open_table("t", None).await.unwrap();
        assert_eq!(after.version().version, ds.version().version, "{}", b.name);
        assert_eq!(after.count_rows(None).await.unwrap(), 10);
    }
}

/// A create-only PUT that the server applied but the client saw fail (an
/// error, or "already exists" after its own retry) is recognised as ours, at
/// every create-only step of the door: intent, claim, manifest version.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ambiguous_create_only_put_is_recognised_as_ours() {
    use sluice::faults::Fault;
    for fault in [Fault::AppliedThenAlreadyExists, Fault::AppliedThenError] {
        for step in ["_ops/", "_ingested/", "_manifest/versions/"] {
            let dir = tempfile::tempdir().unwrap();
            let (lake, faults) = faulty_memory_lake();
            let seed = ingest(&lake, vec![request("t", &[&jsonl(dir.path(), "seed.jsonl", 0..3)])]).await.unwrap();
            faults.inject(step, fault, 1);
            let file = jsonl(dir.path(), "a.jsonl", 10..20);
            let r = ingest(&lake, vec![request("t", &[&file])]).await.unwrap_or_else(|e| panic!("{fault:?} at {step}: {e}"));
            assert_eq!(r.sources[0].status, SourceStatus::Ingested, "{fault:?} at {step}");
            assert_eq!(r.manifest_version, Some(seed.manifest_version.unwrap() + 1), "{fault:?} at {step}: one publish");
            assert_eq!(ids(&lake, "t", None).await.len(), 13, "{fault:?} at {step}: rows once");
            assert!(sluice::sidecar::pending(&lake).await.unwrap().is_empty(), "{fault:?} at {step}");
            assert!(ingest(&lake, vec![request("t", &[&file])]).await.unwrap().all_already_ingested());
        }
    }
}

/// A claim that fails midway through a multi-source call: the claims already
/// made are released with the intent, so no source is left marked as done.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failure_while_claiming_releases_every_claim() {
    let dir = tempfile::tempdir().unwrap();
    let (lake, faults) = faulty_memory_lake();
    let (a, c) = (jsonl(dir.path(), "a.jsonl", 0..5), jsonl(dir.path(), "c.jsonl", 5..9));
    let second = sluice::source::Source::resolve(&c.display().to_string()).await.unwrap();
    faults.inject(&format!("_ingested/{}", second.id), sluice::faults::Fault::Rejected, 1);
    let err = ingest(&lake, vec![request("t", &[&a, &c])]).await.unwrap_err();
    assert_eq!(err.exit_code(), 1, "{err}");
    assert!(sluice::sidecar::pending(&lake).await.unwrap().is_empty(), "intent removed");
    // Neither source is marked as ingested: each ingests now.
    let r = ingest(&lake, vec![request("t", &[&a])]).await.unwrap();
    assert_eq!(r.sources[0].status, SourceStatus::Ingested);
    assert_eq!(ids(&lake, "t", None).await.len(), 5);
}

/// Finding the latest manifest costs 2 GETs (hint, then a miss) at any depth;
/// a hint lagging by L versions costs O(log L) more, never O(history).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn latest_manifest_lookup_is_constant_and_a_stale_hint_costs_log_lag() {
    use sluice::deadline::Deadline;
    use sluice::manifest::{Goal, Mode, Published, TablePin};
    let b = memory();
    let lake = Lake::open(&b.root).unwrap();
    let mut base = manifest::init(&lake).await.unwrap();
    let mut stale = None;
    for v in 1..=300u64 {
        let goal = Goal {
            published: Published { op: format!("op-{v}"), attempt: format!("a-{v}"), kind: "ingest".into(), tables: Default::default(), sources: 1, source_list: Vec::new() },
            pins: [("t".to_string(), TablePin::new(v, Mode::Append, None))].into(),
            changes: Default::default(),
        };
        manifest::publish(&lake, base.clone(), &goal, &Deadline::after(TIMEOUT)).await.unwrap();
        base = manifest::read_latest(&lake).await.unwrap().unwrap();
        if v == 44 {
            stale = Some(base.clone());
        }
    }
    let cost = |before: sluice::counting::RequestSnapshot| lake.requests().since(&before).total();
    let before = lake.requests();
    assert_eq!(manifest::read_latest(&lake).await.unwrap().unwrap().version, 300);
    assert_eq!(cost(before), 2, "hint + one miss");

    // A publisher died before updating the hint, 256 versions ago.
    lake.put_json("_manifest/latest.json", &stale.unwrap()).await.unwrap();
    let before = lake.requests();
    assert_eq!(manifest::read_latest(&lake).await.unwrap().unwrap().version, 300);
    let lagging = cost(before);
    // Gallop: 1 + 9 hits (45, 46, 48, ... 300), a miss, then the next miss: ~2·log2(256).
    assert!(lagging <= 2 + 2 * 8, "{lagging} GETs for a lag of 256: not logarithmic");

    // A publish from a stale base loses the race once, catches up, and wins: one retry counted.
    let goal = Goal {
        published: Published { op: "op-late".into(), attempt: "a-late".into(), kind: "ingest".into(), tables: Default::default(), sources: 1, source_list: Vec::new() },
        pins: [("t".to_string(), TablePin::new(301, Mode::Append, None))].into(),
        changes: Default::default(),
    };
    let old = manifest::history(&lake, 300).await.unwrap().into_iter().find(|m| m.version == 44).unwrap();
    let retries = lake.manifest_retries();
    let published = manifest::publish(&lake, old, &goal, &Deadline::after(TIMEOUT)).await.unwrap();
    assert_eq!(published.version(), 301);
    assert_eq!(lake.manifest_retries() - retries, 1);
}

/// A removal of a commit the published pin already passed is a second one:
/// its remover stalled until the versions that would have conflicted with it
/// were cleaned. One that only takes fragment ids away again changes
/// nothing and passes; one that puts deletions back (an upsert's undo
/// replayed) could revive replaced rows, and is refused, never published.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_repeated_roll_back_that_puts_rows_back_is_never_published() {
    use lance::dataset::CommitBuilder;
    use lance::dataset::transaction::{Operation, Transaction, UpdateMode};
    use sluice::sidecar::{PROP_REMOVES, SCOPE_ROLLBACK, commit_properties};
    for b in all_backends() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(&b.root).unwrap();
        ingest(&lake, vec![upsert("u", "id", &[&jsonl(dir.path(), "a.jsonl", 0..10)])]).await.unwrap();
        // Version 2 replaces rows 5..9 of fragment 0.
        ingest(&lake, vec![upsert("u", "id", &[&jsonl(dir.path(), "b.jsonl", 5..15)])]).await.unwrap();
        let replay = |operation: Operation| async {
            let ds = Arc::new(lake.open_table("u", None).await.unwrap());
            let mut properties = commit_properties("op-stalled", "remover", "intent-2", SCOPE_ROLLBACK);
            properties.insert(PROP_REMOVES.into(), "2".into());
            let mut txn = Transaction::new(ds.version().version, operation, None);
            txn.transaction_properties = Some(Arc::new(properties));
            CommitBuilder::new(ds).execute(txn).await.unwrap();
        };

        replay(Operation::Delete { updated_fragments: vec![], deleted_fragment_ids: vec![], predicate: "replayed".into() }).await;
        ingest(&lake, vec![upsert("u", "id", &[&jsonl(dir.path(), "c.jsonl", 20..22)])]).await.unwrap_or_else(|e| panic!("{}: a removal taking nothing back passes: {e}", b.name));

        let first = lake.open_table("u", Some(1)).await.unwrap().fragments()[0].clone();
        replay(Operation::Update {
            removed_fragment_ids: vec![],
            updated_fragments: vec![first],
            new_fragments: vec![],
            fields_modified: vec![],
            compacted_sstables: vec![],
            fields_for_preserving_frag_bitmap: vec![],
            update_mode: Some(UpdateMode::RewriteRows),
            inserted_rows_filter: None,
            updated_fragment_offsets: None,
        })
        .await;
        let published = ids(&lake, "u", None).await;
        let e = ingest(&lake, vec![upsert("u", "id", &[&jsonl(dir.path(), "d.jsonl", 30..32)])]).await.expect_err("a replayed undo must not be published");
        assert!(e.to_string().contains("repeats the roll-back of operation op-stalled"), "{}: {e}", b.name);
        assert_eq!(ids(&lake, "u", None).await, published, "{}: nothing new published", b.name);
        assert_eq!(published, (0..15).chain(20..22).collect::<Vec<_>>(), "{}: each key once", b.name);
    }
}
