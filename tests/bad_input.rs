//! Bad input through the real binary: exit 3, a typed error naming the file,
//! line and column, the source quarantined with its reason, nothing published.

use std::io::Write;
use std::path::Path;

use crate::common::*;

struct Case {
    name: &'static str,
    file: &'static str,
    content: Vec<u8>,
    line: Option<u64>,
    column: Option<&'static str>,
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn cases() -> Vec<Case> {
    let good_rows: String = (0..200).map(|i| format!("{{\"id\": {i}, \"name\": \"n{i}\", \"score\": 1.5}}\n")).collect();
    let truncated = {
        let full = gzip(good_rows.as_bytes());
        full[..full.len() / 2].to_vec()
    };
    vec![
        Case {
            name: "malformed line",
            file: "malformed.jsonl",
            content: b"{\"id\": 1, \"name\": \"a\", \"score\": 1.0}\n{\"id\": 2, \"name\": \n{\"id\": 3, \"name\": \"c\", \"score\": 1.0}\n".to_vec(),
            line: Some(2),
            column: None,
        },
        Case {
            name: "wrong type",
            file: "wrongtype.jsonl",
            content: b"{\"id\": 1, \"name\": \"a\", \"score\": 1.0}\n{\"id\": 2, \"name\": \"b\", \"score\": 2.0}\n{\"id\": \"three\", \"name\": \"c\", \"score\": 1.0}\n".to_vec(),
            line: Some(3),
            column: Some("id"),
        },
        Case { name: "empty file", file: "empty.jsonl", content: Vec::new(), line: None, column: None },
        Case {
            // Blocks of about 1 MiB (some 25,000 of these lines) decode in
            // parallel: the first bad line in the file (block 2) is the one
            // named, not one in a block read later (block 3) that may finish first.
            name: "bad lines in two later blocks",
            file: "late.jsonl",
            content: (1..=90_000)
                .map(|line| match line {
                    30_001 => "{\"id\": 7.5, \"name\": \"x\", \"score\": 1.0}\n".to_string(),
                    60_000 => "{\"id\": 20000, \"name\": \n".to_string(),
                    _ => format!("{{\"id\": {line}, \"name\": \"n\", \"score\": 1.5}}\n"),
                })
                .collect::<String>()
                .into_bytes(),
            line: Some(30_001),
            column: Some("id"),
        },
        Case {
            name: "binary file",
            file: "binary.jsonl",
            content: (0u8..=255).cycle().take(4096).collect(),
            line: Some(1),
            column: None,
        },
        Case { name: "truncated gzip", file: "truncated.jsonl.gz", content: truncated, line: None, column: None },
        Case {
            name: "unknown column",
            file: "unknown.jsonl",
            content: b"{\"id\": 1, \"name\": \"a\", \"score\": 1.0}\n{\"id\": 2, \"name\": \"b\", \"score\": 1.0, \"colour\": \"red\"}\n".to_vec(),
            line: Some(2),
            column: Some("colour"),
        },
        Case {
            name: "csv wrong type",
            file: "wrongtype.csv",
            content: b"id,name,score\n1,a,1.5\n2,b,oops\n".to_vec(),
            line: Some(3),
            column: Some("score"),
        },
        Case { name: "csv unknown column", file: "unknown.csv", content: b"id,name,shoe\n1,a,9\n".to_vec(), line: Some(1), column: Some("shoe") },
        Case { name: "csv short row", file: "short.csv", content: b"id,name,score\n1,a,1.5\n2,b\n".to_vec(), line: Some(3), column: None },
        Case { name: "csv invalid text", file: "latin1.csv", content: b"id,name,score\n1,a,1.5\n2,\xe9t\xe9,2.5\n".to_vec(), line: Some(3), column: Some("name") },
        // Arrow would store 7 for 7.5, 80 for "80", and round 2^53 + 1: each changes a value.
        Case {
            name: "fraction into an integer column",
            file: "fraction.jsonl",
            content: b"{\"id\": 4, \"name\": \"a\", \"score\": 1.0}\n{\"id\": 7.5, \"name\": \"b\", \"score\": 1.0}\n".to_vec(),
            line: Some(2),
            column: Some("id"),
        },
        Case {
            // Arrow takes `01` (as text, into the name column); a strict
            // parser stops there and would never see the 7.5 after it.
            name: "fraction after a value only arrow takes",
            file: "lenient.jsonl",
            content: b"{\"id\": 4, \"name\": \"a\", \"score\": 1.0}\n{\"name\": 01, \"id\": 7.5, \"score\": 1.0}\n".to_vec(),
            line: Some(2),
            column: Some("id"),
        },
        Case {
            // Arrow takes a missing comma, and stores 7 for the 7.5 after it.
            name: "fraction after a missing comma",
            file: "nocomma.jsonl",
            content: b"{\"id\": 4, \"name\": \"a\", \"score\": 1.0}\n{\"name\": \"b\" \"id\": 7.5, \"score\": 1.0}\n".to_vec(),
            line: Some(2),
            column: None,
        },
        Case {
            name: "two objects on one line",
            file: "twice.jsonl",
            content: b"{\"id\": 4, \"name\": \"a\", \"score\": 1.0}\n{\"id\": 5, \"name\": \"b\", \"score\": 1.0}{\"id\": 6, \"name\": \"c\", \"score\": 1.0}\n".to_vec(),
            line: Some(2),
            column: None,
        },
        Case {
            // Not JSON (a leading zero): arrow reads 1.5 and stores 1.
            name: "a number JSON does not write",
            file: "leadingzero.jsonl",
            content: b"{\"id\": 4, \"name\": \"a\", \"score\": 1.0}\n{\"id\": 01.5, \"name\": \"b\", \"score\": 1.0}\n".to_vec(),
            line: Some(2),
            column: Some("id"),
        },
        Case {
            name: "quoted number into an integer column",
            file: "quoted.jsonl",
            content: b"{\"id\": 4, \"name\": \"a\", \"score\": 1.0}\n{\"name\": \"b\", \"id\": \"80\", \"score\": 1.0}\n".to_vec(),
            line: Some(2),
            column: Some("id"),
        },
        Case {
            name: "quoted number into a float column",
            file: "quotedfloat.jsonl",
            content: b"{\"id\": 4, \"name\": \"a\", \"score\": \"1.5\"}\n".to_vec(),
            line: Some(1),
            column: Some("score"),
        },
        Case {
            name: "integer a float64 cannot hold",
            file: "rounds.jsonl",
            content: b"{\"id\": 4, \"name\": \"a\", \"score\": 9007199254740993}\n".to_vec(),
            line: Some(1),
            column: Some("score"),
        },
        Case {
            name: "integer out of range",
            file: "range.jsonl",
            content: b"{\"id\": 18446744073709551615, \"name\": \"a\", \"score\": 1}\n".to_vec(),
            line: Some(1),
            column: Some("id"),
        },
    ]
}

fn quarantine_reasons(root: &str) -> Vec<serde_json::Value> {
    let dir = Path::new(root).join("_quarantine");
    let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
    entries
        .map(|e| serde_json::from_slice(&std::fs::read(e.unwrap().path().join("reason.json")).unwrap()).unwrap())
        .collect()
}

#[test]
fn every_bad_input_is_rejected_located_and_quarantined() {
    rejects_every_bad_input(None);
}

/// The same, each JSON Lines file appended in parts of 16 bytes (at most 4:
/// a line or more each), side by side: the first bad line in the file is
/// still the one named, by its line in the whole file.
#[test]
fn every_bad_input_in_a_file_read_in_parts_is_located_as_in_one() {
    rejects_every_bad_input(Some("16"));
}

fn rejects_every_bad_input(part_bytes: Option<&str>) {
    let b = local();
    let dir = tempfile::tempdir().unwrap();
    let ingest = |args: &[&str], path: &Path| {
        let mut cmd = sluice(&b.root);
        if let Some(bytes) = part_bytes {
            cmd.env("SLUICE_TEST_PART_BYTES", bytes);
        }
        run(cmd.args(args).arg(path))
    };
    // An existing table with a known schema: id int, name string, score float.
    let seed = jsonl(dir.path(), "seed.jsonl", 0..3);
    assert_eq!(ingest(&["ingest", "--table", "t"], &seed).status.code(), Some(0));
    let before = status(&b.root);

    for (i, case) in cases().into_iter().enumerate() {
        let path = write(dir.path(), case.file, &case.content);
        let out = ingest(&["--json", "ingest", "--table", "t"], &path);
        assert_eq!(out.status.code(), Some(3), "{}: exit code", case.name);
        let err = &json(&out)["error"]["bad_input"];
        assert_eq!(err["source_uri"], path.display().to_string(), "{}: names the file", case.name);
        if let Some(line) = case.line {
            assert_eq!(err["location"]["line"], line, "{}: names the line: {err}", case.name);
        }
        if let Some(column) = case.column {
            assert_eq!(err["location"]["column"], column, "{}: names the column: {err}", case.name);
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(case.file), "{}: the message names the file: {stderr}", case.name);
        assert!(stderr.contains("the file is quarantined at") && stderr.contains("_quarantine/"), "{}: says where the copy is: {stderr}", case.name);
        // Only sluice's location: arrow's own row numbers count from elsewhere.
        for arrows in ["Row data", "for column", "for line", "Parser error", "Csv error"] {
            assert!(!stderr.contains(arrows), "{}: {arrows:?} in {stderr}", case.name);
        }

        // Published state unchanged, nothing pending, the source quarantined.
        let now = status(&b.root);
        assert_eq!(now["manifest_version"], before["manifest_version"], "{}", case.name);
        assert_eq!(table_rows(&now, "t"), Some(3), "{}", case.name);
        assert!(now["pending"].as_array().unwrap().is_empty(), "{}: no intent left", case.name);
        let reasons = quarantine_reasons(&b.root);
        assert_eq!(reasons.len(), i + 1, "{}: quarantined", case.name);
        assert!(reasons.iter().any(|r| r["error"]["source_uri"] == path.display().to_string()));
    }
    // Quarantined copies are byte-identical to the sources.
    for entry in std::fs::read_dir(Path::new(&b.root).join("_quarantine")).unwrap() {
        let dir = entry.unwrap().path();
        let reason: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("reason.json")).unwrap()).unwrap();
        let source = reason["error"]["source_uri"].as_str().unwrap();
        let name = Path::new(source).file_name().unwrap();
        assert_eq!(std::fs::read(dir.join(name)).unwrap(), std::fs::read(source).unwrap());
    }
    // A bad source can be fixed and delivered again.
    let fixed = jsonl(dir.path(), "fixed.jsonl", 10..12);
    assert_eq!(ingest(&["ingest", "--table", "t"], &fixed).status.code(), Some(0));
    assert_eq!(table_rows(&status(&b.root), "t"), Some(5));
}

/// A bad file among good ones in one call: nothing of the call becomes visible.
#[test]
fn one_bad_source_fails_the_whole_call() {
    let b = local();
    let dir = tempfile::tempdir().unwrap();
    let good = jsonl(dir.path(), "good.jsonl", 0..10);
    let bad = write(dir.path(), "bad.jsonl", b"{\"id\": 1}\nnot json\n");
    let out = run(sluice(&b.root).args(["ingest", "--table", "t"]).arg(&good).arg(&bad));
    assert_eq!(out.status.code(), Some(3));
    // The good file was not half-ingested: delivering it alone ingests it.
    let out = run(sluice(&b.root).args(["--json", "ingest", "--table", "t"]).arg(&good));
    assert_eq!(json(&out)["sources"][0]["status"], "ingested");
    assert_eq!(table_rows(&status(&b.root), "t"), Some(10));
}

#[test]
fn usage_errors_exit_2() {
    let b = local();
    let out = run(sluice(&b.root).args(["ingest", "--mode", "upsert", "--table", "t", "/nonexistent.jsonl"]));
    assert_eq!(out.status.code(), Some(2), "upsert without --key");
    let out = run(sluice(&b.root).args(["scan", "t"]));
    assert_eq!(out.status.code(), Some(2), "scan of a lake that does not exist");
    let out = run(sluice(&b.root).args(["frobnicate"]));
    assert_eq!(out.status.code(), Some(2));
}

/// The first file of a new table is inferred, not cast: its errors are located too.
#[test]
fn bad_input_creating_a_table_is_located_and_creates_nothing() {
    let b = local();
    let dir = tempfile::tempdir().unwrap();
    for (name, content, line) in [
        ("new1.jsonl", &b"{\"id\": 1}\n\n{\"id\": \n"[..], 3),
        ("new2.jsonl", &b"{\"id\": 1}\n[1, 2]\n"[..], 2),
        ("new3.csv", &b"id,name\n1,a\n2,b,extra\n"[..], 3),
    ] {
        let path = write(dir.path(), name, content);
        let out = run(sluice(&b.root).args(["--json", "ingest", "--table", "fresh"]).arg(&path));
        assert_eq!(out.status.code(), Some(3), "{name}");
        assert_eq!(json(&out)["error"]["bad_input"]["location"]["line"], line, "{name}");
    }
    let s = status(&b.root);
    assert_eq!(table_rows(&s, "fresh"), None, "no table was published");
    assert!(s["pending"].as_array().unwrap().is_empty());
    // Not even created in Lance: a rejected first file does not fix the table's schema.
    assert!(!Path::new(&b.root).join("tables/fresh.lance/_versions").exists());
    let good = write(dir.path(), "good.jsonl", b"{\"other\": \"x\", \"n\": 1.5}\n");
    assert_eq!(run(sluice(&b.root).args(["ingest", "--table", "fresh"]).arg(&good)).status.code(), Some(0));
    assert_eq!(table_rows(&status(&b.root), "fresh"), Some(1));
}

/// Ingest into a root that holds no lake is an error that says so, unless
/// asked to create it; nothing is written there.
#[test]
fn a_mistyped_root_is_an_error_not_a_new_lake() {
    let b = local();
    let dir = tempfile::tempdir().unwrap();
    let file = jsonl(dir.path(), "a.jsonl", 0..3);
    let out = run(sluice(&b.root).env_remove("SLUICE_CREATE").args(["ingest", "--table", "t"]).arg(&file));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no lake at") && err.contains("sluice init"), "{err}");
    assert!(!Path::new(&b.root).join("_manifest").exists() && !Path::new(&b.root).join("_ops").exists(), "nothing written");
    // Commands that only read or repair say so too: a scheduled `recover` on
    // a mistyped root must not report "nothing pending" forever.
    for args in [&["recover"][..], &["history"], &["sources"], &["audit"]] {
        let out = run(sluice(&b.root).env_remove("SLUICE_CREATE").args(args));
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", String::from_utf8_lossy(&out.stdout));
        assert!(String::from_utf8_lossy(&out.stderr).contains("no lake at"), "{args:?}");
    }
    assert_eq!(run(sluice(&b.root).env_remove("SLUICE_CREATE").args(["ingest", "--create", "--table", "t"]).arg(&file)).status.code(), Some(0));
    let other = tempfile::tempdir().unwrap();
    let root = other.path().join("lake").display().to_string();
    assert_eq!(run(sluice(&root).env_remove("SLUICE_CREATE").arg("init")).status.code(), Some(0));
    assert_eq!(run(sluice(&root).env_remove("SLUICE_CREATE").args(["ingest", "--table", "t"]).arg(&file)).status.code(), Some(0));
    // A mistyped source says which path and what to do, and changes nothing.
    let history = run(sluice(&root).arg("history")).stdout;
    let out = run(sluice(&root).args(["ingest", "--table", "t"]).arg(dir.path().join("b.jsonl")));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("b.jsonl") && err.contains("No such file") && err.contains("check the path"), "{err}");
    assert_eq!(run(sluice(&root).arg("history")).stdout, history, "nothing published");
}

/// A read of the stored bytes that fails midway (the connection reset once
/// the store client's own retries are spent, a disk error) is no verdict on
/// the file: the call fails with exit 1 saying to retry, nothing is
/// quarantined or ingested, and the retry takes every row.
#[test]
fn a_read_that_fails_midway_is_retried_never_quarantined() {
    let b = local();
    let dir = tempfile::tempdir().unwrap();
    let rows: String = (0..2000).map(|i| format!("{{\"id\": {i}, \"name\": \"n{i}\"}}\n")).collect();
    let csv: String = std::iter::once("id,name\n".to_string()).chain((0..2000).map(|i| format!("{i},n{i}\n"))).collect();
    let local = |name: &str, bytes: &[u8]| (write(dir.path(), name, bytes).display().to_string(), bytes.len());
    // (table, source, its stored size)
    let mut sources: Vec<(&str, (String, usize))> = vec![
        ("t", local("t/rows.jsonl", rows.as_bytes())),
        ("c", local("c/rows.csv", csv.as_bytes())),
        ("z", local("z/rows.jsonl.gz", &gzip(rows.as_bytes()))),
    ];
    if let Ok(base) = std::env::var("SLUICE_TEST_S3") {
        let bucket = base.trim_start_matches("s3://").split('/').next().unwrap().to_string();
        let store = sluice::lake::s3_store(&bucket, &sluice::lake::s3_options_from_env()).unwrap();
        let key = object_store::path::Path::from(format!("incoming-{}/s/rows.jsonl", uuid::Uuid::new_v4().simple()));
        let put = object_store::ObjectStoreExt::put(&store, &key, object_store::PutPayload::from(rows.clone()));
        tokio::runtime::Runtime::new().unwrap().block_on(put).unwrap();
        sources.push(("s", (format!("s3://{bucket}/{key}"), rows.len())));
    }
    for (table, (uri, size)) in &sources {
        let out = run(sluice(&b.root).env("SLUICE_TEST_READ_FAILS_AFTER", (size / 2).to_string()).args(["--json", "ingest", uri]));
        assert_eq!(out.status.code(), Some(1), "{uri}: {}", String::from_utf8_lossy(&out.stdout));
        let message = json(&out)["error"]["message"].as_str().unwrap().to_string();
        assert!(message.contains(uri.as_str()) && message.contains("failed midway") && message.contains("retry"), "{message}");
        assert!(quarantine_reasons(&b.root).is_empty(), "{uri}: nothing quarantined");
        assert_eq!(table_rows(&status(&b.root), table), None, "{uri}: nothing ingested");
        assert_eq!(pending(&b.root), 0, "{uri}: nothing left in flight");

        assert_eq!(run(sluice(&b.root).args(["ingest", uri])).status.code(), Some(0), "{uri}: the retry");
        assert_eq!(scan_ids(&b.root, table), (0..2000).collect::<Vec<i64>>(), "{uri}: every row once");
    }
}
