//! Schema evolution: a table whose evolution is `add-columns` takes a
//! source's new fields as nullable columns — an operation of its own,
//! published before the rows that need them — while a strict table refuses
//! them as bad input. The races (an append staged on the old schema, a schema
//! change that loses to an append, two sources needing one column) are made
//! deterministic by holding processes at failpoints.
// A column's rows are listed as ranges; one range is not a mistake.
#![allow(clippy::single_range_in_vec_init)]

use std::path::Path;

use sluice::failpoints::*;

use crate::common::*;

/// `sluice scan TABLE` as JSON rows, sorted by id, without their nulls
/// (scan prints every column; these tests compare what rows hold).
fn rows(root: &str, table: &str) -> Vec<serde_json::Value> {
    let out = run(sluice(root).args(["scan", table]));
    assert_eq!(out.status.code(), Some(0), "scan {table}");
    let without_nulls = |mut row: serde_json::Value| {
        row.as_object_mut().expect("a row is an object").retain(|_, v| !v.is_null());
        row
    };
    let mut rows: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| without_nulls(serde_json::from_str(l).unwrap())).collect();
    rows.sort_by_key(|r| r["id"].as_i64());
    rows
}

fn table_status(root: &str, table: &str) -> serde_json::Value {
    status(root)["tables"].as_array().unwrap().iter().find(|t| t["name"] == table).cloned().unwrap_or_else(|| panic!("no table {table}"))
}

fn ingest(root: &str, table: &str, extra: &[&str], file: &Path) -> std::process::Output {
    run(sluice(root).args(["--clock-skew", "0s", "ingest", "--table", table]).args(extra).arg(file))
}

/// The table's Arrow schema at its pin, as pylance reads it: `name: type` lines.
fn pylance_schema(root: &str, table: &str) -> String {
    let python = pylance().expect("pylance 14.0.2 in the test virtualenv (scripts/test.sh installs it)");
    let pin = table_status(root, table)["pinned_version"].as_u64().unwrap();
    let script = format!(
        "{PYLANCE_PRELUDE}\nimport lance\nds = lance.dataset('{root}/tables/{table}.lance', version={pin}, storage_options=storage_options('{root}'))\n\
         print('\\n'.join(f'{{f.name}}: {{f.type}}' for f in ds.schema))\nassert ds.count_rows() == len(ds.to_table())\n"
    );
    let out = std::process::Command::new(python).arg("-c").arg(script).output().unwrap();
    assert!(out.status.success(), "pylance: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn new_fields_become_columns_of_a_table_that_adds_them_and_bad_input_of_a_strict_one() {
    on_each_backend(|b| {
        let dir = tempfile::tempdir().unwrap();
        let first = write(dir.path(), "1.jsonl", b"{\"id\": 1, \"a\": \"x\"}\n{\"id\": 2, \"a\": \"y\"}\n");
        let wider = write(dir.path(), "2.jsonl", b"{\"id\": 3, \"a\": \"z\", \"b\": 7.5, \"c\": \"2026-11-30T05:00:00Z\"}\n{\"id\": 4, \"b\": 1}\n");
        assert_eq!(ingest(&b.root, "t", &[], &first).status.code(), Some(0));

        // Strict (the default): the new field is bad input that says how to take it.
        let out = ingest(&b.root, "t", &[], &wider);
        assert_eq!(out.status.code(), Some(3), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("line 1, column 'b'") && err.contains("unknown column") && err.contains("--evolution add-columns"), "{err}");
        assert_eq!(table_rows(&status(&b.root), "t"), Some(2));

        // add-columns: the columns come first, as an operation of their own, then the rows.
        let out = ingest(&b.root, "t", &["--evolution", "add-columns"], &wider);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        assert_eq!(table_status(&b.root, "t")["evolution"], "add-columns");
        let kinds: Vec<String> = history(&b.root).iter().map(|v| v["published"][0]["kind"].as_str().unwrap_or("").to_string()).collect();
        assert_eq!(kinds[kinds.len() - 2..], ["columns", "ingest"], "{kinds:?}");
        assert_eq!(
            rows(&b.root, "t"),
            [
                serde_json::json!({"id": 1, "a": "x"}),
                serde_json::json!({"id": 2, "a": "y"}),
                serde_json::json!({"id": 3, "a": "z", "b": 7.5, "c": "2026-11-30T05:00:00Z"}),
                serde_json::json!({"id": 4, "b": 1.0}),
            ]
        );
        assert_eq!(pylance_schema(&b.root, "t"), "id: int64\na: string\nb: double\nc: timestamp[us, tz=UTC]");

        // The policy is the table's now: a CSV with one more column needs no flag.
        let csv = write(dir.path(), "3.csv", b"id,d,b\n5,true,2.5\n");
        assert_eq!(ingest(&b.root, "t", &[], &csv).status.code(), Some(0));
        assert_eq!(rows(&b.root, "t")[4], serde_json::json!({"id": 5, "d": true, "b": 2.5}));
        // A value that does not fit a column the table has is still bad input.
        let clash = write(dir.path(), "4.jsonl", b"{\"id\": 6, \"b\": \"seven\"}\n");
        assert_eq!(ingest(&b.root, "t", &[], &clash).status.code(), Some(3));
        // A field nested in an existing struct column is never added, and the message says so.
        let nested_seed = write(dir.path(), "n0.jsonl", b"{\"id\": 1, \"addr\": {\"city\": \"Oslo\"}}\n");
        assert_eq!(ingest(&b.root, "nest", &["--evolution", "add-columns"], &nested_seed).status.code(), Some(0));
        let nested = write(dir.path(), "n1.jsonl", b"{\"id\": 2, \"addr\": {\"city\": \"Rome\", \"zip\": \"00100\"}}\n");
        let out = ingest(&b.root, "nest", &[], &nested);
        assert_eq!(out.status.code(), Some(3), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("column 'addr': field 'zip' inside column 'addr' is not in the table's schema"), "{err}");
        // And the table can be made strict again.
        let later = write(dir.path(), "5.jsonl", b"{\"id\": 7, \"e\": 1}\n");
        assert_eq!(ingest(&b.root, "t", &["--evolution", "strict"], &later).status.code(), Some(3));
        assert_eq!(table_rows(&status(&b.root), "t"), Some(5));

        // A new table that adds columns starts with every column of its first call's files.
        let n1 = write(dir.path(), "n1.jsonl", b"{\"id\": 1}\n");
        let n2 = write(dir.path(), "n2.jsonl", b"{\"id\": 2, \"late\": \"yes\"}\n");
        let out = run(sluice(&b.root).args(["ingest", "--table", "n", "--evolution", "add-columns"]).arg(&n1).arg(&n2));
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        assert_eq!(rows(&b.root, "n"), [serde_json::json!({"id": 1}), serde_json::json!({"id": 2, "late": "yes"})]);
        // Scan prints a null as null, as CSV prints an empty field: every line has every column.
        let scanned = String::from_utf8_lossy(&run(sluice(&b.root).args(["scan", "n", "--where", "id = 1"])).stdout).to_string();
        assert_eq!(scanned.trim(), r#"{"id":1,"late":null}"#);

        // A declared schema stays valid for a table that grew past it.
        let schema = write(dir.path(), "schema.json", br#"{"columns": [{"name": "id", "type": "int64", "nullable": false}]}"#);
        let s = schema.display().to_string();
        for (i, line) in ["{\"id\": 1}\n", "{\"id\": 2, \"extra\": 2}\n", "{\"id\": 3}\n"].iter().enumerate() {
            let f = write(dir.path(), &format!("d{i}.jsonl"), line.as_bytes());
            let out = ingest(&b.root, "d", &["--schema", &s, "--evolution", "add-columns"], &f);
            assert_eq!(out.status.code(), Some(0), "{out:?}");
        }
        assert_eq!(pylance_schema(&b.root, "d"), "id: int64\nextra: int64");
        assert_eq!(pending(&b.root), 0);
    });
}

#[test]
fn adding_columns_races_appends_and_another_schema_change() {
    on_each_backend(|b| {
        let dir = tempfile::tempdir().unwrap();
        let seed = jsonl(dir.path(), "seed.jsonl", 0..5);
        assert_eq!(ingest(&b.root, "t", &["--evolution", "add-columns"], &seed).status.code(), Some(0));
        let with = |name: &str, ids: std::ops::Range<i64>, column: &str| {
            let lines: String = ids.map(|i| format!("{{\"id\": {i}, \"name\": \"row-{i}\", \"score\": {}.5, \"{column}\": {i}}}\n", i % 97)).collect();
            write(dir.path(), name, lines.as_bytes())
        };

        // 1. The schema change built its commit; an append lands first: the
        //    change is rebuilt on the new latest version, never lost or forced.
        let x = hold_at(sluice(&b.root).args(["--clock-skew", "0s", "ingest", "--table", "t"]).arg(with("x.jsonl", 100..103, "b")), COLUMNS_BEFORE_COMMIT);
        let plain = jsonl(dir.path(), "plain.jsonl", 200..203);
        assert_eq!(ingest(&b.root, "t", &[], &plain).status.code(), Some(0));
        x.release();
        assert_eq!(x.wait_with_output().status.code(), Some(0));

        // 2. An append staged on the old schema lands after the new column:
        //    its rows read null there, every other value as sent.
        let y = hold_at(sluice(&b.root).args(["--clock-skew", "0s", "ingest", "--table", "t"]).arg(jsonl(dir.path(), "y.jsonl", 300..303)), COMMIT_CHECKED);
        assert_eq!(ingest(&b.root, "t", &[], &with("z.jsonl", 400..403, "c")).status.code(), Some(0));
        y.release();
        assert_eq!(y.wait_with_output().status.code(), Some(0));

        // 3. Two sources need the same new column at once: one adds it, the
        //    other waits for that and takes it (or adds nothing of its own).
        let first = hold_at(sluice(&b.root).args(["--clock-skew", "0s", "ingest", "--table", "t"]).arg(with("p.jsonl", 500..503, "d")), COLUMNS_BEFORE_COMMIT);
        let mut second = sluice(&b.root);
        second.args(["--clock-skew", "0s", "ingest", "--table", "t"]).arg(with("q.jsonl", 600..603, "d"));
        let second = std::thread::spawn(move || run(&mut second));
        std::thread::sleep(std::time::Duration::from_secs(2));
        first.release();
        assert_eq!(first.wait_with_output().status.code(), Some(0));
        assert_eq!(second.join().unwrap().status.code(), Some(0));

        let all = rows(&b.root, "t");
        let ids: Vec<i64> = all.iter().map(|r| r["id"].as_i64().unwrap()).collect();
        let expect: Vec<i64> = [0..5, 100..103, 200..203, 300..303, 400..403, 500..503, 600..603].into_iter().flatten().collect();
        assert_eq!(ids, expect, "every acknowledged row exactly once");
        let sent: [(&str, &[std::ops::Range<i64>]); 3] = [("b", &[100..103]), ("c", &[400..403]), ("d", &[500..503, 600..603])];
        for r in &all {
            let id = r["id"].as_i64().unwrap();
            for (column, ranges) in sent {
                let want = if ranges.iter().any(|range| range.contains(&id)) { serde_json::json!(id) } else { serde_json::Value::Null };
                assert_eq!(r.get(column).cloned().unwrap_or_default(), want, "row {r}, column {column}");
            }
            assert_eq!(r["name"], format!("row-{id}"), "row {r}: every other value as sent");
            assert_eq!(r["score"], (id % 97) as f64 + 0.5, "row {r}: every other value as sent");
        }
        assert_eq!(pylance_schema(&b.root, "t"), "id: int64\nname: string\nscore: double\nb: int64\nc: int64\nd: int64");
        let columns = history(&b.root).iter().filter(|v| v["published"][0]["kind"] == "columns").count();
        assert_eq!(columns, 3, "one schema change per new column");
        assert_eq!(pending(&b.root), 0);
    });
}

/// Two ingests create one table at once from sources with different fields.
/// The one whose creation loses at commit stages its rows onto the winner's
/// table: a field that table lacks is still added as a column (add-columns)
/// or kept in the rescue column (rescue), never refused as bad input.
/// (Found by the interleaving explorer, seed 906.)
#[test]
fn a_table_creation_lost_at_commit_still_evolves_the_winners_table() {
    on_each_backend(|b| {
        let dir = tempfile::tempdir().unwrap();
        let with = |name: &str, id: i64, column: &str| write(dir.path(), name, format!("{{\"id\": {id}, \"name\": \"row-{id}\", \"{column}\": {id}}}\n").as_bytes());
        // (The winner adds columns: its table has no rescue column.)
        for (table, evolution) in [("e", "add-columns"), ("r", "rescue")] {
            let late = hold_at(sluice(&b.root).args(["--clock-skew", "0s", "ingest", "--table", table, "--evolution", evolution, "--timeout", "60s"]).arg(with(&format!("{table}-late.jsonl"), 1, "late")), COMMIT_CHECKED);
            let first = ingest(&b.root, table, &["--evolution", "add-columns"], &with(&format!("{table}-first.jsonl"), 0, "first"));
            assert_eq!(first.status.code(), Some(0), "{table}: {}", String::from_utf8_lossy(&first.stderr));
            late.release();
            let out = late.wait_with_output();
            assert_eq!(out.status.code(), Some(0), "{table}: the late creator's rows go onto the first's table: {}", String::from_utf8_lossy(&out.stderr));
            let all = rows(&b.root, table);
            assert_eq!(all.len(), 2, "{table}: {all:?}");
            assert_eq!(all[0]["first"], 0, "{table}: {all:?}");
            match evolution {
                "add-columns" => assert_eq!(all[1]["late"], 1, "{table}: the late field became a column: {all:?}"),
                _ => assert!(all[1]["_rescued_data"].as_str().is_some_and(|r| r.contains("late")), "{table}: the late field was rescued: {all:?}"),
            }
        }
        // The winner held between its commit and its publish: the late one
        // waits for the table's publish before changing its schema (the
        // rendezvous is on that wait; without it the late one gives up).
        let late = hold_at(sluice(&b.root).args(["--clock-skew", "0s", "ingest", "--table", "w", "--evolution", "add-columns", "--timeout", "60s"]).arg(with("w-late.jsonl", 1, "late")), COMMIT_CHECKED);
        let first = hold_at(sluice(&b.root).args(["--clock-skew", "0s", "ingest", "--table", "w", "--evolution", "add-columns"]).arg(with("w-first.jsonl", 0, "first")), AFTER_COMMIT);
        late.release();
        late.wait_for(COLUMNS_AWAIT_TABLE);
        first.release();
        assert_eq!(first.wait_with_output().status.code(), Some(0));
        let out = late.wait_with_output();
        assert_eq!(out.status.code(), Some(0), "w: the late creator waits for the winner's publish: {}", String::from_utf8_lossy(&out.stderr));
        let all = rows(&b.root, "w");
        assert_eq!((all.len(), &all[0]["first"], &all[1]["late"]), (2, &serde_json::json!(0), &serde_json::json!(1)), "w: {all:?}");
        assert_eq!(pending(&b.root), 0);
    });
}

/// A schema change frozen just before its commit (like a paused VM) is rolled
/// back by recovery once its deadline passed, then wakes and its commit
/// lands. That commit adds only a column of nulls: the next publish passes
/// it, and the redelivered source's rows arrive once.
#[test]
fn a_schema_change_that_lands_after_its_roll_back_shows_only_a_column_of_nulls() {
    on_each_backend(|b| {
        let dir = tempfile::tempdir().unwrap();
        let seed = jsonl(dir.path(), "seed.jsonl", 0..5);
        assert_eq!(ingest(&b.root, "t", &["--evolution", "add-columns"], &seed).status.code(), Some(0));
        let wide = write(dir.path(), "wide.jsonl", b"{\"id\": 100, \"b\": 1}\n{\"id\": 101, \"b\": 2}\n");
        let started = std::time::Instant::now();
        let x = hold_at(sluice(&b.root).args(["--clock-skew", "0s", "ingest", "--table", "t", "--timeout", "3s"]).arg(&wide), COLUMNS_BEFORE_COMMIT);
        wait_out(&b.root, started, std::time::Duration::from_secs(3));
        let out = run(sluice(&b.root).args(["--json", "--clock-skew", "0s", "recover", "--timeout", "60s"]));
        assert_eq!(out.status.code(), Some(0), "recovery rolls the schema change and its ingest back");
        x.release();
        assert_ne!(x.wait_with_output().status.code(), Some(0), "a decided attempt never reports success");

        let other = jsonl(dir.path(), "other.jsonl", 200..203);
        assert_eq!(ingest(&b.root, "t", &[], &other).status.code(), Some(0), "the next ingest publishes past the late commit");
        assert_eq!(ingest(&b.root, "t", &[], &wide).status.code(), Some(0), "the redelivery");
        sweep_until_clean(&b.root, std::time::Duration::from_secs(60));
        let all = rows(&b.root, "t");
        let ids: Vec<i64> = all.iter().map(|r| r["id"].as_i64().unwrap()).collect();
        assert_eq!(ids, [0..5, 100..102, 200..203].into_iter().flatten().collect::<Vec<_>>());
        assert_eq!(all.iter().filter_map(|r| r.get("b")?.as_i64()).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(pending(&b.root), 0);
    });
}

/// A `rescue` table keeps what does not fit — fields it lacks, values its
/// columns cannot hold as written — in `_rescued_data`, one JSON object per
/// row, and takes the rest of each row; what is not a row stays bad input.
/// The JSON Lines files after the first are appended in parts of a line or
/// two, side by side, as a large file would be.
#[test]
fn a_rescue_table_keeps_what_does_not_fit_in_its_rescue_column() {
    on_each_backend(|b| {
        let dir = tempfile::tempdir().unwrap();
        let in_parts = |file: &Path| run(sluice(&b.root).env("SLUICE_TEST_PART_BYTES", "8").args(["--clock-skew", "0s", "ingest", "--table", "r"]).arg(file));
        let first = write(dir.path(), "1.jsonl", b"{\"id\": 1, \"n\": 5, \"t\": \"2026-11-30T05:00:00Z\"}\n{\"id\": 2, \"n\": 6}\n");
        assert_eq!(ingest(&b.root, "r", &["--evolution", "rescue"], &first).status.code(), Some(0));
        assert_eq!(pylance_schema(&b.root, "r"), "id: int64\nn: int64\nt: timestamp[us, tz=UTC]\n_rescued_data: string");

        let drift = write(
            dir.path(),
            "2.jsonl",
            br#"{"id": 3, "n": 7.5, "extra": {"k": [1, 2]}}
{"id": 4, "n": "80", "t": "soon"}
{"id": 5, "n": 123456789012345678901234}
{"id": 6, "n": 8}
"#,
        );
        let out = in_parts(&drift);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        let csv = write(dir.path(), "3.csv", b"id,n,colour\n7,9,red\n8,x,blue\n");
        let out = ingest(&b.root, "r", &[], &csv);
        assert_eq!(out.status.code(), Some(0), "{out:?}");

        // Parquet: a float column into the integer one (5.5 does not fit, 6.0 does), and one the table lacks.
        let parquet = parquet_of(
            dir.path(),
            "p.parquet",
            vec![
                ("id", std::sync::Arc::new(arrow::array::Int64Array::from(vec![20, 21])) as arrow::array::ArrayRef),
                ("n", std::sync::Arc::new(arrow::array::Float64Array::from(vec![5.5, 6.0]))),
                ("shade", std::sync::Arc::new(arrow::array::StringArray::from(vec![Some("teal"), None]))),
            ],
        );
        let out = ingest(&b.root, "r", &[], &parquet);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        // A text column into the integer one: no value fits, every one is rescued.
        let text = parquet_of(
            dir.path(),
            "q.parquet",
            vec![
                ("id", std::sync::Arc::new(arrow::array::Int64Array::from(vec![22])) as arrow::array::ArrayRef),
                ("n", std::sync::Arc::new(arrow::array::StringArray::from(vec!["80"]))),
            ],
        );
        let out = ingest(&b.root, "r", &[], &text);
        assert_eq!(out.status.code(), Some(0), "{out:?}");

        let rescued = |r: &serde_json::Value| r.get("_rescued_data").map(|s| serde_json::from_str::<serde_json::Value>(s.as_str().unwrap()).unwrap());
        let all = rows(&b.root, "r");
        let want: [(serde_json::Value, Option<serde_json::Value>); 11] = [
            (serde_json::json!({"id": 1, "n": 5, "t": "2026-11-30T05:00:00Z"}), None),
            (serde_json::json!({"id": 2, "n": 6}), None),
            (serde_json::json!({"id": 3}), Some(serde_json::json!({"n": 7.5, "extra": {"k": [1, 2]}}))),
            (serde_json::json!({"id": 4}), Some(serde_json::json!({"n": "80", "t": "soon"}))),
            (serde_json::json!({"id": 5}), Some(serde_json::from_str(r#"{"n": 123456789012345678901234}"#).unwrap())),
            (serde_json::json!({"id": 6, "n": 8}), None),
            (serde_json::json!({"id": 7, "n": 9}), Some(serde_json::json!({"colour": "red"}))),
            (serde_json::json!({"id": 8}), Some(serde_json::json!({"n": "x", "colour": "blue"}))),
            (serde_json::json!({"id": 20}), Some(serde_json::json!({"n": 5.5, "shade": "teal"}))),
            (serde_json::json!({"id": 21, "n": 6}), None),
            (serde_json::json!({"id": 22}), Some(serde_json::json!({"n": "80"}))),
        ];
        assert_eq!(all.len(), want.len(), "{all:?}");
        for (row, (values, kept)) in all.iter().zip(want) {
            let mut plain = row.clone();
            plain.as_object_mut().unwrap().remove("_rescued_data");
            assert_eq!(plain, values, "row {row}");
            assert_eq!(rescued(row), kept, "row {row}");
        }
        // The rescued text is the source's, digit for digit.
        let big = all.iter().find(|r| r["id"] == 5).unwrap();
        assert!(big["_rescued_data"].as_str().unwrap().contains("123456789012345678901234"), "{big}");

        // What is not a row is still bad input.
        let broken = write(dir.path(), "4.jsonl", b"{\"id\": 9}\n{\"id\": 10, \"n\": \n");
        let out = in_parts(&broken);
        assert_eq!(out.status.code(), Some(3), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("line 2"), "{out:?}");

        // A strict table that starts rescuing gains the column first.
        let strict = jsonl(dir.path(), "s1.jsonl", 0..2);
        assert_eq!(ingest(&b.root, "s", &[], &strict).status.code(), Some(0));
        let odd = write(dir.path(), "s2.jsonl", b"{\"id\": 2, \"name\": \"row-2\", \"score\": 2.5, \"shoe\": 9}\n");
        assert_eq!(ingest(&b.root, "s", &["--evolution", "rescue"], &odd).status.code(), Some(0));
        let all = rows(&b.root, "s");
        assert_eq!(rescued(&all[2]), Some(serde_json::json!({"shoe": 9})), "{all:?}");
        assert_eq!(rescued(&all[0]), None);
        assert_eq!(pending(&b.root), 0);
    });
}

/// The worst stall: a schema change built on the table as it was, frozen
/// before its commit past recovery *and* cleanup, lands on a state it was
/// not built on. Lance cannot check it against the versions cleanup removed,
/// and its fragment list brings back a rolled-back writer's rows (whose files
/// cleanup deleted). The next publish must remove exactly that, never show it.
#[test]
fn a_schema_change_landing_on_a_state_it_was_not_built_on_is_undone() {
    on_each_backend(|b| {
        let dir = tempfile::tempdir().unwrap();
        let cmd = || {
            let mut c = sluice(&b.root);
            c.env("SLUICE_CLOCK_SKEW", "1s").env("SLUICE_RETENTION_FLOOR", "8s");
            c
        };
        let file = |name: &str, line: &str| write(dir.path(), name, format!("{line}\n").as_bytes());
        let (a, x, w, y) = (file("a.jsonl", r#"{"id": 1, "s": "a"}"#), file("x.jsonl", r#"{"id": 2, "s": "x"}"#), file("w.jsonl", r#"{"id": 3, "c": "new"}"#), file("y.jsonl", r#"{"id": 4, "s": "y"}"#));
        assert_eq!(run(cmd().args(["ingest", "--table", "t", "--evolution", "add-columns", "--timeout", "6s"]).arg(&a)).status.code(), Some(0));

        // X freezes before its commit, is rolled back, and its commit lands late.
        let started = std::time::Instant::now();
        let held = hold_at(cmd().args(["ingest", "--table", "t", "--timeout", "4s"]).arg(&x), COMMIT_CHECKED);
        wait_out(&b.root, started, std::time::Duration::from_secs(5));
        assert_eq!(run(cmd().args(["recover", "--timeout", "6s"])).status.code(), Some(0));
        held.release();
        held.wait_with_output();

        // W builds its schema change on that state (X's fragment still in it) and freezes.
        let started = std::time::Instant::now();
        let w_held = hold_at(cmd().args(["ingest", "--table", "t", "--timeout", "4s"]).arg(&w), COLUMNS_BEFORE_COMMIT);
        wait_out(&b.root, started, std::time::Duration::from_secs(5));
        // Others publish (removing X's fragment), recovery rolls W back, cleanup takes the old versions.
        for column in ["id", "s"] {
            assert_eq!(run(cmd().args(["index", "create", "t", column, "--type", "btree", "--timeout", "6s"])).status.code(), Some(0));
        }
        std::thread::sleep(std::time::Duration::from_secs(9));
        assert_eq!(run(cmd().args(["cleanup", "--keep-versions", "1", "--keep", "8s", "--timeout", "6s"])).status.code(), Some(0));
        w_held.release();
        assert_ne!(w_held.wait_with_output().status.code(), Some(0), "W was rolled back: it reports no success");

        // The next publish removes what W's commit brought back; X's row never shows.
        assert_eq!(run(cmd().args(["ingest", "--table", "t", "--timeout", "6s"]).arg(&y)).status.code(), Some(0));
        assert_eq!(rows(&b.root, "t").iter().map(|r| r["id"].as_i64().unwrap()).collect::<Vec<_>>(), [1, 4]);
        sweep_until_clean(&b.root, std::time::Duration::from_secs(60));
        assert_eq!(run(cmd().args(["ingest", "--table", "t", "--timeout", "6s"]).arg(&w)).status.code(), Some(0), "W's source, delivered again");
        assert_eq!(run(cmd().args(["ingest", "--table", "t", "--timeout", "6s"]).arg(&x)).status.code(), Some(0), "X's source, delivered again");
        let all = rows(&b.root, "t");
        assert_eq!(all.iter().map(|r| r["id"].as_i64().unwrap()).collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert_eq!(all[2]["c"], "new");
        for v in history(&b.root) {
            let out = run(sluice(&b.root).args(["scan", "t", "--at", &v["version"].to_string()]));
            assert!(out.status.code() == Some(0) || v["tables"].get("t").is_none(), "every kept version reads: {v}");
        }
        assert_eq!(pending(&b.root), 0);
    });
}

/// Recovery decides to roll a frozen schema change back; its commit lands
/// between that decision and recovery's look at the table. New columns keep
/// every row, so there is nothing to remove: recovery finishes, never refuses.
#[test]
fn recovery_finishes_a_rolled_back_schema_change_whose_commit_landed_after_its_decision() {
    on_each_backend(|b| {
        let dir = tempfile::tempdir().unwrap();
        let seed = jsonl(dir.path(), "seed.jsonl", 0..3);
        assert_eq!(ingest(&b.root, "t", &["--evolution", "add-columns"], &seed).status.code(), Some(0));
        let wide = write(dir.path(), "wide.jsonl", b"{\"id\": 100, \"b\": 1}\n");
        let started = std::time::Instant::now();
        let w = hold_at(sluice(&b.root).args(["--clock-skew", "0s", "ingest", "--table", "t", "--timeout", "3s"]).arg(&wide), COLUMNS_BEFORE_COMMIT);
        wait_out(&b.root, started, std::time::Duration::from_secs(3));
        // The sweep decides the ingest, then the schema change, and is held
        // right after that second decision until W's commit has landed.
        let sweep = hold_at_nth(sluice(&b.root).args(["--json", "--clock-skew", "0s", "recover", "--timeout", "60s"]), RECOVER_AFTER_DECISION, 2);
        w.release();
        assert_ne!(w.wait_with_output().status.code(), Some(0), "W was rolled back: it reports no success");
        sweep.release();
        let out = sweep.wait_with_output();
        let report = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "recovery finishes: {report}");
        assert!(report.contains(r#""kind":"columns","tables":["t"],"action":"decided","verdict":"rolled_back""#), "{report}");
        sweep_until_clean(&b.root, std::time::Duration::from_secs(60));
        assert_eq!(ingest(&b.root, "t", &[], &wide).status.code(), Some(0), "the source, delivered again");
        let all = rows(&b.root, "t");
        assert_eq!(all.iter().map(|r| r["id"].as_i64().unwrap()).collect::<Vec<_>>(), [0, 1, 2, 100]);
        assert_eq!(all[3]["b"], 1);
        assert_eq!(pending(&b.root), 0);
    });
}

/// A load whose second table starts rescuing dies after its first table's
/// commit: the rescue column was added while staging, so recovery redoes the
/// second table on the table as it is now, rescuing as the load would have.
#[test]
fn a_load_that_died_after_adding_its_rescue_column_is_redone_with_it() {
    on_each_backend(|b| {
        let dir = tempfile::tempdir().unwrap();
        for t in ["a", "r"] {
            let seed = jsonl(dir.path(), &format!("seed-{t}.jsonl"), 0..3);
            assert_eq!(ingest(&b.root, t, &[], &seed).status.code(), Some(0));
        }
        jsonl(dir.path(), "a1.jsonl", 10..13);
        write(dir.path(), "r1.jsonl", b"{\"id\": 20, \"name\": \"row-20\", \"score\": \"high\"}\n");
        let d = write(
            dir.path(),
            "load.json",
            br#"{"tables": [{"table": "a", "sources": ["a1.jsonl"]}, {"table": "r", "sources": ["r1.jsonl"], "evolution": "rescue"}]}"#,
        );
        let started = std::time::Instant::now();
        kill_9_at(sluice(&b.root).args(["--clock-skew", "0s", "load", "--timeout", "4s"]).arg(&d), AFTER_COMMIT);
        wait_out(&b.root, started, std::time::Duration::from_secs(4));
        sweep_until_clean(&b.root, std::time::Duration::from_secs(60));
        assert_eq!(scan_ids(&b.root, "a"), [0, 1, 2, 10, 11, 12]);
        let r = rows(&b.root, "r");
        assert_eq!(r.iter().map(|r| r["id"].as_i64().unwrap()).collect::<Vec<_>>(), [0, 1, 2, 20]);
        assert_eq!(r[3]["_rescued_data"], r#"{"score": "high"}"#, "{r:?}");
        assert_eq!(pending(&b.root), 0);
    });
}
