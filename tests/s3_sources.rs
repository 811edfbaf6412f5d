//! Sources on S3: identity from the object version (ETag here), reads pinned
//! to it, and a rewritten object is a new source. Needs the local S3 server.

use std::sync::Arc;

use object_store::{ObjectStore, ObjectStoreExt, PutPayload, path::Path};
use sluice::Lake;
use sluice::ingest::SourceStatus;

use crate::common::*;

fn bucket_store() -> Option<(String, Arc<dyn ObjectStore>)> {
    let base = std::env::var("SLUICE_TEST_S3").ok()?;
    let bucket = base.trim_start_matches("s3://").split('/').next().unwrap().to_string();
    let store = sluice::lake::s3_store(&bucket, &sluice::lake::s3_options_from_env()).unwrap();
    Some((bucket, store))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_sources_ingest_once_per_object_version() {
    let Some((bucket, store)) = bucket_store() else { return };
    for b in all_backends() {
        let prefix = format!("incoming-{}", uuid::Uuid::new_v4().simple());
        let key = Path::from(format!("{prefix}/clicks/part-1.jsonl"));
        let rows = |r: std::ops::Range<i64>| r.map(|i| format!("{{\"id\": {i}, \"name\": \"c{i}\"}}\n")).collect::<String>();
        store.put(&key, PutPayload::from(rows(0..40))).await.unwrap();
        let uri = format!("s3://{bucket}/{key}");
        let lake = Lake::open(&b.root).unwrap();

        // Routed by folder: table `clicks`.
        let routed = sluice::ingest::route(std::slice::from_ref(&uri), None).unwrap();
        let req = |uri: &str| sluice::ingest::TableRequest { table: "clicks".into(), sources: vec![uri.into()], ..Default::default() };
        assert_eq!(routed.keys().collect::<Vec<_>>(), vec!["clicks"]);
        let first = ingest(&lake, vec![req(&uri)]).await.unwrap();
        assert_eq!(first.sources[0].status, SourceStatus::Ingested, "{}", b.name);
        assert!(ingest(&lake, vec![req(&uri)]).await.unwrap().all_already_ingested(), "{}", b.name);

        // The same key rewritten is a new object version: a new source.
        store.put(&key, PutPayload::from(rows(100..105))).await.unwrap();
        let second = ingest(&lake, vec![req(&uri)]).await.unwrap();
        assert_eq!(second.sources[0].status, SourceStatus::Ingested, "{}", b.name);
        assert_eq!(ids(&lake, "clicks", None).await.len(), 45, "{}", b.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_s3_source_is_quarantined_in_the_lake() {
    let Some((bucket, store)) = bucket_store() else { return };
    let b = local();
    let key = Path::from(format!("incoming-{}/t/bad.jsonl", uuid::Uuid::new_v4().simple()));
    store.put(&key, PutPayload::from("{\"id\": 1}\n{\"id\": \n")).await.unwrap();
    let uri = format!("s3://{bucket}/{key}");
    let out = run(sluice(&b.root).args(["--json", "ingest"]).arg(&uri));
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(json(&out)["error"]["bad_input"]["source_uri"], uri);
    assert_eq!(json(&out)["error"]["bad_input"]["location"]["line"], 2);
    let quarantined: Vec<_> = std::fs::read_dir(std::path::Path::new(&b.root).join("_quarantine")).unwrap().collect();
    assert_eq!(quarantined.len(), 1);
    let dir = quarantined[0].as_ref().unwrap().path();
    assert_eq!(std::fs::read(dir.join("bad.jsonl")).unwrap(), b"{\"id\": 1}\n{\"id\": \n");
}

/// Keys with any character S3 allows (non-ASCII, `%`, `~`, `#`, `[`, `]`,
/// spaces, `+`, `=`) ingest as the objects they name, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_with_any_character_ingest_from_s3() {
    let Some((bucket, store)) = bucket_store() else { return };
    let b = local();
    let prefix = format!("incoming-{}", uuid::Uuid::new_v4().simple());
    let names = ["ünïcødé 1.jsonl", "50%25 off.jsonl", "a~b#c.jsonl", "[x]+y.jsonl", "k=v&w.jsonl", "%.jsonl"];
    let mut uris = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let key = Path::parse(format!("{prefix}/weird/{name}")).unwrap();
        let i = i as i64;
        store.put(&key, PutPayload::from(format!("{{\"id\": {i}}}\n"))).await.unwrap();
        uris.push(format!("s3://{bucket}/{key}"));
    }
    let out = run(sluice(&b.root).args(["--json", "ingest"]).args(&uris));
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(scan_ids(&b.root, "weird"), (0..names.len() as i64).collect::<Vec<_>>());
    let again = run(sluice(&b.root).args(["--json", "ingest"]).args(&uris));
    let report = json(&again);
    assert!(report["sources"].as_array().unwrap().iter().all(|s| s["status"] == "already_ingested"), "{report}");
    // An S3 key object_store cannot address is a usage error that says so.
    let out = run(sluice(&b.root).args(["ingest", "--table", "weird", &format!("s3://{bucket}/{prefix}//empty-segment.jsonl")]));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot address this key"));
}

/// Store failures read as one line: what, where, and what to do (S3's XML
/// reduced to its code and message).
#[test]
fn store_errors_are_one_line_that_says_what_to_do() {
    let Some((bucket, _)) = bucket_store() else { return };
    let b = local();
    for (root, args, says) in [
        ("s3://no-such-bucket-here/lake", vec!["status".to_string()], "no such bucket (NoSuchBucket: The specified bucket does not exist); check the bucket name"),
        (b.root.as_str(), vec!["ingest".to_string(), "--table".to_string(), "t".to_string(), format!("s3://{bucket}/missing/key.jsonl")], "not found ("),
    ] {
        let out = run(sluice(root).args(&args));
        assert_ne!(out.status.code(), Some(0));
        let err = String::from_utf8_lossy(&out.stderr);
        let line = err.lines().find(|l| l.starts_with("sluice: error:")).unwrap_or_else(|| panic!("{err}"));
        assert!(line.contains(says), "{line}");
        assert!(!err.contains("<?xml") && !err.contains("<Error>"), "{err}");
    }
}

/// A large JSON Lines object is appended in parts, each read by a ranged GET
/// of the version resolved: rows keep the object's order, a bad line is named
/// by its line in the whole object, and an object overwritten after its HEAD
/// is never read in its place.
#[test]
fn a_large_s3_object_is_appended_in_parts_of_its_version() {
    use sluice::failpoints::AFTER_CLAIMS;
    let Some((bucket, store)) = bucket_store() else { return };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let b = local();
    let dir = tempfile::tempdir().unwrap();
    let seed = jsonl(dir.path(), "seed.jsonl", -1..0);
    assert_eq!(run(sluice(&b.root).args(["ingest", "--table", "t"]).arg(&seed)).status.code(), Some(0));
    let prefix = format!("incoming-{}", uuid::Uuid::new_v4().simple());
    let put = |name: &str, body: String| {
        let key = Path::from(format!("{prefix}/{name}"));
        rt.block_on(store.put(&key, PutPayload::from(body))).unwrap();
        format!("s3://{bucket}/{key}")
    };
    // Lines of many lengths, some blank: cuts fall anywhere in a line.
    let lines = |ids: std::ops::Range<i64>| -> String {
        ids.map(|i| format!("{{\"id\": {i}, \"name\": \"{}\"}}\n{}", "x".repeat((i % 37) as usize), if i % 101 == 0 { "\n" } else { "" })).collect()
    };
    let in_parts = || {
        let mut cmd = sluice(&b.root);
        cmd.env("SLUICE_TEST_PART_BYTES", "8192").args(["--json", "ingest", "--table", "t"]);
        cmd
    };

    let uri = put("big.jsonl", lines(0..2000));
    let out = run(in_parts().arg(&uri));
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(scan_ids(&b.root, "t") == (-1..2000).collect::<Vec<_>>(), "the object's rows, in order");
    let lake = Lake::open(&b.root).unwrap();
    assert_eq!(rt.block_on(lake.open_table("t", None)).unwrap().get_fragments().len(), 1 + 4, "the seed's fragment, and one per part");
    // A CSV object too: each later part reads the header from the object's start.
    let csv: String = std::iter::once("name,id\n".to_string()).chain((5000..6000).map(|i| format!("\"{}\",{i}\n", "y".repeat((i % 29 + 20) as usize)))).collect();
    let out = run(in_parts().arg(put("big.csv", csv)));
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(scan_ids(&b.root, "t") == (-1..2000).chain(5000..6000).collect::<Vec<_>>(), "the CSV object's rows, in order");
    assert_eq!(rt.block_on(lake.open_table("t", None)).unwrap().get_fragments().len(), 1 + 4 + 4, "one per part");

    // The first bad line is in the third part: named by its line in the object.
    let body = lines(2000..3000);
    let bad_line = body.lines().count() * 3 / 4;
    let mut broken: Vec<&str> = body.lines().collect();
    broken[bad_line - 1] = "{\"id\": 7, \"name\": ";
    let uri = put("broken.jsonl", broken.join("\n") + "\n");
    let out = run(in_parts().arg(&uri));
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(json(&out)["error"]["bad_input"]["location"]["line"], bad_line as u64, "{}", json(&out));
    assert_eq!(scan_ids(&b.root, "t").len(), 3001, "nothing of it published");

    // Overwritten between its HEAD and its ranged reads: refused, nothing
    // published. (Over 8 MiB, so read after the claims, not alongside them.)
    let padded = |ids: std::ops::Range<i64>| -> String { ids.map(|i| format!("{{\"id\": {i}, \"name\": \"{}\"}}\n", "x".repeat(80))).collect() };
    let uri = put("moved.jsonl", padded(10_000..100_000));
    let held = hold_at(&mut in_parts().arg(&uri), AFTER_CLAIMS);
    put("moved.jsonl", padded(100_000..190_000));
    held.release();
    let out = held.wait_with_output();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(scan_ids(&b.root, "t").len(), 3001, "neither version's rows");
}
