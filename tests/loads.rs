//! `sluice sources`: what became of each source, from the lake alone.

use crate::common::*;

fn sources(root: &str, args: &[&str]) -> Vec<serde_json::Value> {
    let out = run(sluice(root).args(["--json", "sources"]).args(args));
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn sources_says_what_became_of_each_file() {
    for b in shared_backends() {
        let dir = tempfile::tempdir().unwrap();
        let a = jsonl(dir.path(), "a.jsonl", 0..10);
        let c = jsonl(dir.path(), "c.jsonl", 100..105);
        let d = jsonl(dir.path(), "d.jsonl", 200..203);
        assert_eq!(run(sluice(&b.root).args(["ingest", "--table", "t"]).arg(&a)).status.code(), Some(0));
        assert_eq!(run(sluice(&b.root).args(["ingest", "--table", "u"]).arg(&c).arg(&d)).status.code(), Some(0));
        let bad = write(dir.path(), "bad.jsonl", b"{\"id\": 1}\n{\"id\": \n");
        assert_eq!(run(sluice(&b.root).args(["ingest", "--table", "t"]).arg(&bad)).status.code(), Some(3));
        // Killed after its commit, with a deadline far away: in flight.
        let late = jsonl(dir.path(), "late.jsonl", 10..20);
        kill_9_at(sluice(&b.root).args(["ingest", "--table", "t", "--timeout", "3s"]).arg(&late), "ingest.after-commit");

        let all = sources(&b.root, &[]);
        let by_status = |s: &str| all.iter().filter(|e| e["status"] == s).collect::<Vec<_>>();
        let in_flight = by_status("in-flight");
        assert_eq!(in_flight.len(), 1, "{}: {all:?}", b.name);
        assert_eq!((&in_flight[0]["uri"], &in_flight[0]["table"]), (&late.display().to_string().into(), &"t".into()));
        let quarantined = by_status("quarantined");
        assert_eq!(quarantined.len(), 1, "{}: {all:?}", b.name);
        assert!(quarantined[0]["reason"].as_str().unwrap().contains("line 2"), "{quarantined:?}");
        let ingested = by_status("ingested");
        let v = status(&b.root)["manifest_version"].as_u64().unwrap();
        let seen: Vec<(String, String, u64, u64)> = ingested
            .iter()
            .map(|e| {
                let name = e["uri"].as_str().unwrap().rsplit('/').next().unwrap().to_string();
                (name, e["table"].as_str().unwrap().to_string(), e["manifest_version"].as_u64().unwrap(), e["rows"].as_u64().unwrap())
            })
            .collect();
        assert_eq!(
            seen,
            vec![("c.jsonl".into(), "u".into(), v, 5), ("d.jsonl".into(), "u".into(), v, 3), ("a.jsonl".into(), "t".into(), v - 1, 10)],
            "{}: newest first, with the version that published each",
            b.name
        );
        assert!(ingested.iter().all(|e| e["bytes"].as_u64().unwrap() > 0 && e["identity"].as_str().unwrap().contains("sha256=")));

        // Filters: table, status, limit, since.
        let t = sources(&b.root, &["--table", "t", "--status", "ingested"]);
        assert_eq!(t.len(), 1);
        // A quarantined file is listed under the table it was for.
        let q = sources(&b.root, &["--table", "t", "--status", "quarantined"]);
        assert_eq!((q.len(), &q[0]["table"]), (1, &"t".into()), "{q:?}");
        assert!(sources(&b.root, &["--table", "u", "--status", "quarantined"]).is_empty());
        assert_eq!(sources(&b.root, &["--status", "ingested", "--limit", "2"]).len(), 2);
        assert!(sources(&b.root, &["--since", "2099-01-01T00:00:00Z"]).is_empty());

        // Recovery publishes the dead ingest: it is ingested now, at the version recovery published.
        sweep_until_clean(&b.root, std::time::Duration::from_secs(60));
        let now = sources(&b.root, &["--status", "ingested", "--table", "t"]);
        assert_eq!(now[0]["uri"], late.display().to_string(), "{now:?}");
        assert_eq!(now[0]["manifest_version"], status(&b.root)["manifest_version"]);
        assert!(sources(&b.root, &["--status", "in-flight"]).is_empty());

        // The bad file fixed in place and ingested: no longer quarantined.
        std::fs::write(&bad, b"{\"id\": 1}\n{\"id\": 2}\n").unwrap();
        assert_eq!(run(sluice(&b.root).args(["ingest", "--table", "t"]).arg(&bad)).status.code(), Some(0));
        assert!(sources(&b.root, &["--status", "quarantined"]).is_empty(), "{}", b.name);
    }
}

/// Objects in the lake's claim ledger (claims and releases).
fn ledger_objects(root: &str) -> usize {
    let lake = sluice::Lake::open(root).unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(lake.list("_ingested")).unwrap().len()
}

/// Wait until the claim ledger holds `n` objects.
fn await_ledger(root: &str, n: usize) {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while ledger_objects(root) < n {
        assert!(std::time::Instant::now() < until, "the ledger never reached {n} objects");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A load descriptor `name` of (table, file) pairs, the files in `dir`.
fn descriptor(dir: &std::path::Path, name: &str, sources: &[(&str, &str)]) -> std::path::PathBuf {
    let tables: Vec<String> = sources.iter().map(|(t, f)| format!(r#"{{"table": "{t}", "sources": ["{f}"]}}"#)).collect();
    write(dir, name, format!(r#"{{"tables": [{}]}}"#, tables.join(", ")).as_bytes())
}

fn load_cmd(root: &str, descriptor: &std::path::Path) -> std::process::Command {
    let mut c = sluice(root);
    c.args(["--json", "load", "--timeout", "30s"]).arg(descriptor);
    c
}

/// What a load that exited 0 says of each of its sources.
fn statuses(backend: &str, out: &std::process::Output) -> Vec<String> {
    eprintln!("{backend}: load: {}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{backend}");
    json(out)["sources"].as_array().unwrap().iter().map(|s| s["status"].as_str().unwrap().to_string()).collect()
}

/// Two loads of the same two files, each holding the claim of one file when
/// it meets the other's: the younger gives its claims back and waits for the
/// older, so both end at once, every row in once, the load whole. (Each
/// waiting for the other with its claims in hand lasted until a deadline.)
#[test]
fn two_loads_that_claimed_each_others_sources_never_wait_for_each_other() {
    use sluice::failpoints::{AFTER_INTENT, BEFORE_CLAIM};
    on_each_backend(|b| {
        let dir = tempfile::tempdir().unwrap();
        seeded(&b.root, dir.path(), &["a", "b"]);
        let load = |n: i64| {
            jsonl(dir.path(), &format!("a{n}.jsonl"), 100 * n..100 * n + 10);
            jsonl(dir.path(), &format!("b{n}.jsonl"), 100 * n + 50..100 * n + 65);
            descriptor(dir.path(), &format!("load{n}.json"), &[("a", &format!("a{n}.jsonl")), ("b", &format!("b{n}.jsonl"))])
        };
        let cmd = |d: &std::path::Path| load_cmd(&b.root, d);
        let statuses = |out: &std::process::Output| statuses(b.name, out);
        let started = std::time::Instant::now();

        // 1. The older load claims its first file and stops before its second;
        // the younger claims the second and meets the older's claim on the first.
        let d = load(1);
        let before = ledger_objects(&b.root);
        let older = hold_at_nth(&mut cmd(&d), BEFORE_CLAIM, 2);
        await_ledger(&b.root, before + 1);
        let mut younger = cmd(&d);
        let younger = younger.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
        await_ledger(&b.root, before + 2);
        older.release();
        let (older, younger) = (older.wait_with_output(), younger.wait_with_output().unwrap());
        assert_eq!(statuses(&older), ["ingested", "ingested"], "{}", b.name);
        assert_eq!(statuses(&younger), ["already_ingested", "already_ingested"], "{}", b.name);

        // 2. The older load writes its intent first and claims later: it meets
        // the younger's claim on the first file while holding the second.
        let d = load(2);
        let before = ledger_objects(&b.root);
        let older = hold_at(&mut cmd(&d), AFTER_INTENT);
        let younger = hold_at_nth(&mut cmd(&d), BEFORE_CLAIM, 2);
        await_ledger(&b.root, before + 1);
        older.release();
        await_ledger(&b.root, before + 2);
        younger.release();
        let (older, younger) = (older.wait_with_output(), younger.wait_with_output());
        assert_eq!(statuses(&older), ["ingested", "ingested"], "{}", b.name);
        assert_eq!(statuses(&younger), ["already_ingested", "already_ingested"], "{}", b.name);

        assert!(started.elapsed() < std::time::Duration::from_secs(25), "{}: the loads waited {:?}", b.name, started.elapsed());
        let ids = |runs: [std::ops::Range<i64>; 3]| runs.into_iter().flatten().collect::<Vec<i64>>();
        assert_eq!(scan_ids(&b.root, "a"), ids([0..5, 100..110, 200..210]), "{}: every row once", b.name);
        assert_eq!(scan_ids(&b.root, "b"), ids([0..5, 150..165, 250..265]), "{}: every row once", b.name);
        assert_eq!(pending(&b.root), 0, "{}", b.name);
    });
}

/// Three loads in a cycle: each claimed one file and then meets the next
/// one's claim on its other file (L1 x then y, L2 y then z, L3 z then x).
/// The youngest makes way; the others end in turn; every row is in once.
#[test]
fn three_loads_in_a_cycle_of_claims_all_end() {
    use sluice::failpoints::BEFORE_CLAIM;
    on_each_backend(|b| {
        let dir = tempfile::tempdir().unwrap();
        seeded(&b.root, dir.path(), &["a", "b", "c"]);
        jsonl(dir.path(), "x.jsonl", 100..110);
        jsonl(dir.path(), "y.jsonl", 200..215);
        jsonl(dir.path(), "z.jsonl", 300..320);
        let l1 = descriptor(dir.path(), "l1.json", &[("a", "x.jsonl"), ("b", "y.jsonl")]);
        let l2 = descriptor(dir.path(), "l2.json", &[("b", "y.jsonl"), ("c", "z.jsonl")]);
        let l3 = descriptor(dir.path(), "l3.json", &[("a", "x.jsonl"), ("c", "z.jsonl")]);
        let started = std::time::Instant::now();
        let before = ledger_objects(&b.root);
        // L1 claims x and stops before y; L2 claims y and stops before z;
        // L3 stops before x while it claims z.
        let one = hold_at_nth(&mut load_cmd(&b.root, &l1), BEFORE_CLAIM, 2);
        await_ledger(&b.root, before + 1);
        let two = hold_at_nth(&mut load_cmd(&b.root, &l2), BEFORE_CLAIM, 2);
        await_ledger(&b.root, before + 2);
        let three = hold_at_nth(&mut load_cmd(&b.root, &l3), BEFORE_CLAIM, 1);
        await_ledger(&b.root, before + 3);
        for held in [&one, &two, &three] {
            held.release();
        }
        let (one, two, three) = (one.wait_with_output(), two.wait_with_output(), three.wait_with_output());
        // L3 gives z back to L2 and waits for L1; L1 waits for L2, which publishes y and z.
        assert_eq!(statuses(b.name, &two), ["ingested", "ingested"], "{}", b.name);
        assert_eq!(statuses(b.name, &one), ["ingested", "already_ingested"], "{}", b.name);
        assert_eq!(statuses(b.name, &three), ["already_ingested", "already_ingested"], "{}", b.name);
        assert!(started.elapsed() < std::time::Duration::from_secs(25), "{}: the loads waited {:?}", b.name, started.elapsed());
        for (table, rows) in [("a", 100..110), ("b", 200..215), ("c", 300..320)] {
            assert_eq!(scan_ids(&b.root, table), (0..5).chain(rows).collect::<Vec<i64>>(), "{}: every row once", b.name);
        }
        assert_eq!(pending(&b.root), 0, "{}", b.name);
    });
}

/// A load killed (`kill -9`) while it waits after giving its claims back
/// holds nothing: the older load claims what it gave back and publishes
/// whole; a sweep then rolls the dead one back, and every row is in once.
#[test]
fn a_load_killed_after_giving_its_claims_back_blocks_nothing() {
    use sluice::failpoints::BEFORE_CLAIM;
    on_each_backend(|b| {
        let dir = tempfile::tempdir().unwrap();
        seeded(&b.root, dir.path(), &["a", "b"]);
        jsonl(dir.path(), "x.jsonl", 100..110);
        jsonl(dir.path(), "y.jsonl", 200..215);
        let d = descriptor(dir.path(), "load.json", &[("a", "x.jsonl"), ("b", "y.jsonl")]);
        let before = ledger_objects(&b.root);
        let older = hold_at_nth(&mut load_cmd(&b.root, &d), BEFORE_CLAIM, 2);
        await_ledger(&b.root, before + 1);
        let started = std::time::Instant::now();
        let mut younger = sluice(&b.root).args(["--json", "load", "--timeout", "4s"]).arg(&d).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
        // Its claim of y, then the release of it.
        await_ledger(&b.root, before + 3);
        younger.kill().unwrap();
        younger.wait().unwrap();
        assert_eq!(pending(&b.root), 2, "{}: both intents in flight", b.name);
        older.release();
        assert_eq!(statuses(b.name, &older.wait_with_output()), ["ingested", "ingested"], "{}", b.name);

        wait_out(&b.root, started, std::time::Duration::from_secs(4));
        sweep_until_clean(&b.root, std::time::Duration::from_secs(60));
        assert_eq!(pending(&b.root), 0, "{}", b.name);
        assert_eq!(scan_ids(&b.root, "a"), (0..5).chain(100..110).collect::<Vec<i64>>(), "{}: every row once", b.name);
        assert_eq!(scan_ids(&b.root, "b"), (0..5).chain(200..215).collect::<Vec<i64>>(), "{}: every row once", b.name);
        // A redelivery of the dead load's files finds them published.
        let again = run(&mut load_cmd(&b.root, &d));
        assert_eq!(statuses(b.name, &again), ["already_ingested", "already_ingested"], "{}", b.name);
    });
}

/// A writer whose commit another writer's publish already showed (it passed
/// it on its way, so the writer's own publish found its goal covered) still
/// has its source listed as ingested, at the version that showed it. (Its
/// commit lands after another's, so it decides forward, naming its source,
/// before it publishes; the other's vetting reads that decision.)
#[test]
fn a_source_another_writers_publish_showed_is_listed_as_ingested() {
    on_each_backend(|b| {
        let dir = tempfile::tempdir().unwrap();
        seeded(&b.root, dir.path(), &["t"]);
        let (a, x, c) = (jsonl(dir.path(), "a.jsonl", 100..110), jsonl(dir.path(), "x.jsonl", 300..302), jsonl(dir.path(), "c.jsonl", 200..205));
        let held = hold_at_then(sluice(&b.root).args(["ingest", "--table", "t", "--timeout", "60s"]).arg(&a), "ingest.commit-checked", "publish.before-put");
        assert_eq!(run(sluice(&b.root).args(["ingest", "--table", "t"]).arg(&x)).status.code(), Some(0), "{}", b.name);
        held.release();
        held.wait_for("publish.before-put");
        assert_eq!(run(sluice(&b.root).args(["ingest", "--table", "t"]).arg(&c)).status.code(), Some(0), "{}", b.name);
        let shown = status(&b.root)["manifest_version"].as_u64().unwrap();
        held.release();
        assert_eq!(held.wait_with_output().status.code(), Some(0), "{}", b.name);
        assert_eq!(status(&b.root)["manifest_version"].as_u64().unwrap(), shown, "{}: its goal was covered: nothing more published", b.name);
        let listed: Vec<(String, u64, String)> = sources(&b.root, &["--table", "t", "--status", "ingested"])
            .iter()
            .map(|e| (e["uri"].as_str().unwrap().rsplit('/').next().unwrap().to_string(), e["manifest_version"].as_u64().unwrap(), e["op"].as_str().unwrap().to_string()))
            .collect();
        let of = |name: &str| listed.iter().find(|(n, _, _)| n == name).cloned();
        let (a_listed, c_listed) = (of("a.jsonl").expect("a is listed"), of("c.jsonl").expect("c is listed"));
        assert_eq!((a_listed.1, c_listed.1), (shown, shown), "{}: both at the version that showed them: {listed:?}", b.name);
        assert_ne!(a_listed.2, c_listed.2, "{}: each under the operation that ingested it: {listed:?}", b.name);
        assert_eq!(listed.len(), 4, "{}: the seed, x, a and c, each once: {listed:?}", b.name);
    });
}
