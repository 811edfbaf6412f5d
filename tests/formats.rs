//! Every input format and compression, detected from the name or forced.

use std::io::Write;
use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use sluice::Lake;
use sluice::decode::Format;

use crate::common::*;

fn batch(ids: std::ops::Range<i64>) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("name", DataType::Utf8, true),
        Field::new("score", DataType::Float64, true),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from_iter_values(ids.clone())),
            Arc::new(StringArray::from_iter_values(ids.clone().map(|i| format!("row-{i}")))),
            Arc::new(Float64Array::from_iter_values(ids.map(|i| i as f64 / 2.0))),
        ],
    )
    .unwrap()
}

fn parquet_bytes(ids: std::ops::Range<i64>) -> Vec<u8> {
    let b = batch(ids);
    let mut out = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut out, b.schema(), None).unwrap();
    w.write(&b).unwrap();
    w.close().unwrap();
    out
}

fn ipc_file(ids: std::ops::Range<i64>) -> Vec<u8> {
    let b = batch(ids);
    let mut out = Vec::new();
    let mut w = arrow::ipc::writer::FileWriter::try_new(&mut out, &b.schema()).unwrap();
    w.write(&b).unwrap();
    w.finish().unwrap();
    drop(w);
    out
}

fn ipc_stream(ids: std::ops::Range<i64>) -> Vec<u8> {
    let b = batch(ids);
    let mut out = Vec::new();
    let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut out, &b.schema()).unwrap();
    w.write(&b).unwrap();
    w.finish().unwrap();
    drop(w);
    out
}

fn jsonl_bytes(ids: std::ops::Range<i64>) -> Vec<u8> {
    ids.map(|i| format!("{{\"id\": {i}, \"name\": \"row-{i}\", \"score\": {}}}\n", i as f64 / 2.0)).collect::<String>().into_bytes()
}

fn csv_bytes(ids: std::ops::Range<i64>) -> Vec<u8> {
    let mut s = String::from("name,id,score\n");
    for i in ids {
        s.push_str(&format!("row-{i},{i},{}\n", i as f64 / 2.0));
    }
    s.into_bytes()
}

fn gz(data: Vec<u8>) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(&data).unwrap();
    e.finish().unwrap()
}

fn zst(data: Vec<u8>) -> Vec<u8> {
    zstd::encode_all(&data[..], 3).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_format_and_compression_ingests() {
    let b = local();
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(&b.root).unwrap();
    type Make = fn(std::ops::Range<i64>) -> Vec<u8>;
    let makers: Vec<(&str, Make)> = vec![
        ("jsonl", jsonl_bytes),
        ("csv", csv_bytes),
        ("parquet", parquet_bytes),
        ("arrow", ipc_file),
        ("arrows", ipc_stream),
    ];
    let mut next = 0i64;
    let mut expected = Vec::new();
    for (ext, make) in makers {
        for (suffix, compress) in [("", None), (".gz", Some(gz as fn(Vec<u8>) -> Vec<u8>)), (".zst", Some(zst))] {
            let ids = next..next + 25;
            next += 25;
            let data = make(ids.clone());
            let data = compress.map_or(data.clone(), |c| c(data));
            let file = write(dir.path(), &format!("f{next}.{ext}{suffix}"), &data);
            let r = ingest(&lake, vec![request("all", &[&file])]).await.unwrap_or_else(|e| panic!("{ext}{suffix}: {e}"));
            assert_eq!(r.tables["all"].rows_inserted, 25, "{ext}{suffix}");
            expected.extend(ids);
        }
    }
    assert_eq!(ids(&lake, "all", None).await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn format_can_be_forced_and_unknown_names_are_usage_errors() {
    let b = local();
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(&b.root).unwrap();
    let odd = write(dir.path(), "export.data", &jsonl_bytes(0..4));
    let err = ingest(&lake, vec![request("t", &[&odd])]).await.unwrap_err();
    assert_eq!(err.exit_code(), 2, "{err}");
    let forced = sluice::ingest::TableRequest { format: Some(Format::Jsonl), ..request("t", &[&odd]) };
    assert_eq!(ingest(&lake, vec![forced]).await.unwrap().tables["t"].rows_inserted, 4);
}

#[test]
fn sources_route_to_the_table_named_by_their_folder() {
    let b = local();
    let dir = tempfile::tempdir().unwrap();
    let a = jsonl(dir.path(), "incoming/clicks/a.jsonl", 0..3);
    let c = jsonl(dir.path(), "incoming/views/c.jsonl", 0..4);
    let out = run(sluice(&b.root).args(["--json", "ingest"]).arg(&a).arg(&c));
    assert_eq!(out.status.code(), Some(0));
    let s = status(&b.root);
    assert_eq!(table_rows(&s, "clicks"), Some(3));
    assert_eq!(table_rows(&s, "views"), Some(4));
}

/// A declared schema replaces inference for a new table; a different one for
/// an existing table is a usage error.
#[test]
fn a_declared_schema_creates_the_table_as_declared() {
    let b = local();
    let dir = tempfile::tempdir().unwrap();
    let schema = write(
        dir.path(),
        "schema.json",
        br#"{"columns": [{"name": "id", "type": "Int32", "nullable": false}, {"name": "name", "type": "Utf8"}, {"name": "score", "type": "Float32"}]}"#,
    );
    // The file alone would infer Int64/Float64, and has no `score` at all.
    let data = write(dir.path(), "a.jsonl", b"{\"id\": 1, \"name\": \"a\"}\n{\"id\": 2, \"name\": \"b\"}\n");
    let out = run(sluice(&b.root).args(["ingest", "--table", "d", "--schema"]).arg(&schema).arg(&data));
    assert_eq!(out.status.code(), Some(0));
    let lake = sluice::Lake::open(&b.root).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ds = rt.block_on(lake.open_table("d", None)).unwrap();
    let arrow_schema = arrow::datatypes::Schema::from(ds.schema());
    let types: Vec<_> = arrow_schema.fields().iter().map(|f| (f.name().as_str(), f.data_type().clone(), f.is_nullable())).collect();
    assert_eq!(
        types,
        vec![("id", DataType::Int32, false), ("name", DataType::Utf8, true), ("score", DataType::Float32, true)]
    );
    let other = write(dir.path(), "other.json", br#"{"columns": [{"name": "id", "type": "Int64"}]}"#);
    let more = write(dir.path(), "b.jsonl", b"{\"id\": 3}\n");
    let out = run(sluice(&b.root).args(["ingest", "--table", "d", "--schema"]).arg(&other).arg(&more));
    assert_eq!(out.status.code(), Some(2), "a differing declared schema");
    let bad = write(dir.path(), "bad.json", br#"{"columns": [{"name": "id", "type": "Integer"}]}"#);
    let out = run(sluice(&b.root).args(["ingest", "--table", "e", "--schema"]).arg(&bad).arg(&more));
    assert_eq!(out.status.code(), Some(2), "an unknown type name");
}

/// Column types as people write them read back as the same type, and a
/// spelling that is not a type says what is.
#[test]
fn column_types_read_back_as_spelled() {
    use sluice::types::{name, parse};
    for s in ["bool", "int64", "uint8", "float32", "float64", "string", "binary", "date", "timestamp", "vector(768)", "vector(3, float64)", "list<string>", "list<vector(2)>"] {
        let t = parse(s).unwrap();
        assert_eq!(name(&t), s, "{t:?}");
    }
    assert_eq!(parse("Int64").unwrap(), DataType::Int64, "Arrow's names still work");
    assert_eq!(parse("VECTOR( 4 )").unwrap(), DataType::FixedSizeList(Arc::new(Field::new_list_field(DataType::Float32, true)), 4));
    // Types with no readable spelling print as Arrow's names, which read back exactly.
    let strict = DataType::FixedSizeList(Arc::new(Field::new("item", DataType::Float32, false)), 2);
    for t in [DataType::Timestamp(arrow::datatypes::TimeUnit::Nanosecond, None), strict] {
        assert_eq!(parse(&name(&t)).unwrap(), t);
    }
    assert!(parse("vector(0)").unwrap_err().contains("1 to"));
    assert!(parse("vector(x)").unwrap_err().contains("whole number"));
    assert!(parse("vector(3, string)").unwrap_err().contains("float32"));
    assert!(parse("Integer").unwrap_err().contains("vector(N)"), "the error lists the spellings");
}

/// A declared `vector(N)` column takes JSON arrays and Parquet lists of
/// numbers; a vector of another length is bad input naming its row and column.
#[test]
fn vector_columns_take_json_arrays_and_parquet_lists() {
    use arrow::array::{ListBuilder, Float64Builder};
    let b = local();
    let dir = tempfile::tempdir().unwrap();
    let schema = write(dir.path(), "schema.json", br#"{"columns": [{"name": "id", "type": "int64", "nullable": false}, {"name": "emb", "type": "vector(3)"}]}"#);
    let data = write(dir.path(), "a.jsonl", b"{\"id\": 1, \"emb\": [0.5, 1, -2.25]}\n{\"id\": 2, \"emb\": [0, 0, 1]}\n");
    let out = run(sluice(&b.root).args(["ingest", "--table", "v", "--schema"]).arg(&schema).arg(&data));
    assert_eq!(out.status.code(), Some(0));
    let lake = Lake::open(&b.root).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ds = rt.block_on(lake.open_table("v", None)).unwrap();
    let emb = arrow::datatypes::Schema::from(ds.schema()).field_with_name("emb").unwrap().data_type().clone();
    assert_eq!(sluice::types::name(&emb), "vector(3)", "{emb:?}");

    let parquet = |name: &str, lists: &[&[f64]]| {
        let mut emb = ListBuilder::new(Float64Builder::new());
        for l in lists {
            emb.values().append_slice(l);
            emb.append(true);
        }
        let ids = Int64Array::from_iter_values(10..10 + lists.len() as i64);
        let batch = RecordBatch::try_from_iter([("id", Arc::new(ids) as _), ("emb", Arc::new(emb.finish()) as _)]).unwrap();
        let mut out = Vec::new();
        let mut w = parquet::arrow::ArrowWriter::try_new(&mut out, batch.schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        write(dir.path(), name, &out)
    };
    let good = parquet("good.parquet", &[&[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0]]);
    assert_eq!(run(sluice(&b.root).args(["ingest", "--table", "v"]).arg(&good)).status.code(), Some(0));
    assert_eq!(scan_ids(&b.root, "v"), vec![1, 2, 10, 11]);

    let short = write(dir.path(), "short.jsonl", b"{\"id\": 3, \"emb\": [1, 2, 3]}\n{\"id\": 4, \"emb\": [1, 2]}\n");
    let out = run(sluice(&b.root).args(["ingest", "--table", "v"]).arg(&short));
    assert_eq!(out.status.code(), Some(3), "bad input");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2") && err.contains("emb") && err.contains("expected 3"), "{err}");

    let long = parquet("long.parquet", &[&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0, 4.0]]);
    let out = run(sluice(&b.root).args(["ingest", "--table", "v"]).arg(&long));
    assert_eq!(out.status.code(), Some(3), "bad input");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2") && err.contains("emb") && err.contains("a vector of 4 values; the column is vector(3)"), "{err}");
    assert_eq!(scan_ids(&b.root, "v"), vec![1, 2, 10, 11], "nothing of a bad source is written");
}

/// Only casts that keep every value are implicit: Parquet's 5.9 into an
/// integer column, a string column into a number column, or an integer a
/// float cannot hold is bad input naming the row and column; 3.0 into an
/// integer column and integers into a float column are taken as they are.
#[test]
fn columnar_values_cast_only_when_nothing_changes() {
    let b = local();
    let dir = tempfile::tempdir().unwrap();
    let seed = write(dir.path(), "seed.parquet", &parquet_bytes(0..2));
    assert_eq!(run(sluice(&b.root).args(["ingest", "--table", "t"]).arg(&seed)).status.code(), Some(0));

    let exact = parquet_of(
        dir.path(),
        "exact.parquet",
        vec![("id", Arc::new(Float64Array::from(vec![3.0, 4.0])) as _), ("score", Arc::new(Int64Array::from(vec![7, -8])) as _)],
    );
    let out = run(sluice(&b.root).args(["ingest", "--table", "t"]).arg(&exact));
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(scan_ids(&b.root, "t"), vec![0, 1, 3, 4]);

    let bad_cases: Vec<(&str, Vec<(&str, arrow::array::ArrayRef)>, u64, &str, &str)> = vec![
        ("fraction.parquet", vec![("id", Arc::new(Float64Array::from(vec![5.0, 6.0, 5.9])) as _)], 3, "id", "5.9 would become 5"),
        ("quoted.parquet", vec![("id", Arc::new(StringArray::from(vec!["80"])) as _)], 1, "id", "the file's column is string"),
        ("rounds.parquet", vec![("id", Arc::new(Int64Array::from(vec![9])) as _), ("score", Arc::new(Int64Array::from(vec![(1i64 << 53) + 1])) as _)], 1, "score", "9007199254740993 would become"),
    ];
    for (name, columns, line, column, says) in bad_cases {
        let path = parquet_of(dir.path(), name, columns);
        let out = run(sluice(&b.root).args(["--json", "ingest", "--table", "t"]).arg(&path));
        assert_eq!(out.status.code(), Some(3), "{name}: bad input");
        let err = &json(&out)["error"]["bad_input"];
        assert_eq!(err["location"]["line"], line, "{name}: {err}");
        assert_eq!(err["location"]["column"], column, "{name}: {err}");
        assert!(err["reason"].as_str().unwrap().contains(says), "{name}: {err}");
    }
    assert_eq!(scan_ids(&b.root, "t"), vec![0, 1, 3, 4], "nothing of a bad file is written");

    // JSON: whole numbers written as floats are exact, so they are taken.
    let json = write(dir.path(), "whole.jsonl", b"{\"id\": 7.0}\n{\"id\": 1e3, \"score\": 2}\n");
    let out = run(sluice(&b.root).args(["ingest", "--table", "t"]).arg(&json));
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(scan_ids(&b.root, "t"), vec![0, 1, 3, 4, 7, 1000]);
}

/// A CSV or JSON Lines file from a spreadsheet or Windows tool starts with a
/// UTF-8 byte-order mark: it is not part of the first column's name. A name
/// that holds an invisible character is printed with it visible.
#[test]
fn byte_order_marks_are_not_data_and_invisible_names_show() {
    let b = local();
    let dir = tempfile::tempdir().unwrap();
    let csv = write(dir.path(), "bom.csv", b"\xEF\xBB\xBFid,name\n1,a\n");
    assert_eq!(run(sluice(&b.root).args(["ingest", "--table", "t"]).arg(&csv)).status.code(), Some(0));
    let again = write(dir.path(), "bom2.csv", b"\xEF\xBB\xBFid,name\n2,b\n");
    assert_eq!(run(sluice(&b.root).args(["ingest", "--table", "t"]).arg(&again)).status.code(), Some(0));
    let jsonl = write(dir.path(), "bom.jsonl", b"\xEF\xBB\xBF{\"id\": 3, \"name\": \"c\"}\n");
    let out = run(sluice(&b.root).args(["ingest", "--table", "t"]).arg(&jsonl));
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(scan_ids(&b.root, "t"), vec![1, 2, 3]);

    let hidden = write(dir.path(), "hidden.csv", "id,na\u{200b}me\n4,d\n".as_bytes());
    let out = run(sluice(&b.root).args(["ingest", "--table", "t"]).arg(&hidden));
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("column 'na\\u{200b}me'") && err.contains("\"id\", \"name\""), "{err}");
}

/// A new table's schema comes from its whole first file: a key first seen
/// after many records is a column, and a column null for its first values
/// takes the type of the values that follow.
#[test]
fn a_new_table_is_inferred_from_its_whole_first_file() {
    let b = local();
    let dir = tempfile::tempdir().unwrap();
    let mut rows: String = (0..1500).map(|i| format!("{{\"id\": {i}, \"n\": null}}\n")).collect();
    rows.push_str("{\"id\": 1500, \"n\": 5, \"late\": \"x\"}\n");
    let path = write(dir.path(), "first.jsonl", rows.as_bytes());
    let out = run(sluice(&b.root).args(["ingest", "--table", "t"]).arg(&path));
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let mut csv = String::from("id,n\n");
    (0..1500).for_each(|i| csv.push_str(&format!("{i},\n")));
    csv.push_str("1500,2.5\n");
    let path = write(dir.path(), "first.csv", csv.as_bytes());
    assert_eq!(run(sluice(&b.root).args(["ingest", "--table", "c"]).arg(&path)).status.code(), Some(0));

    let lake = Lake::open(&b.root).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for (table, want) in [("t", "id int64, n int64, late string"), ("c", "id int64, n float64")] {
        let ds = rt.block_on(lake.open_table(table, None)).unwrap();
        assert_eq!(sluice::types::describe(&arrow::datatypes::Schema::from(ds.schema())), want);
    }
}

/// A large JSONL file is decoded in blocks of about 1 MiB on several threads;
/// its rows are stored in the order written, every one once, across blank
/// lines (a whole block of them), a line longer than a block, and a last
/// line without its newline. Appended to a table, the same file is written
/// in parts side by side (3 MiB each here, so the most: 4), with the same
/// rows in the same order; so are files with parts of nothing but blank
/// lines, a byte-order mark and CRLF line ends.
#[test]
fn a_large_file_keeps_its_row_order() {
    let b = local();
    let dir = tempfile::tempdir().unwrap();
    let ids: Vec<i64> = (0..200_000).map(|i| (i * 7919) % 200_003).collect();
    let mut rows = String::new();
    for (n, i) in ids.iter().enumerate() {
        let name = if n == 150_000 { "x".repeat(3 << 19) } else { format!("n{i}") };
        rows.push_str(&format!("{{\"id\": {i}, \"name\": \"{name}\", \"score\": 0.5}}"));
        match n {
            1_000 => rows.push_str(&"\n \t\r".repeat(1 << 19)),
            n if n % 997 == 0 => rows.push_str("\n\n  \r"),
            _ => {}
        }
        if n + 1 < ids.len() {
            rows.push('\n');
        }
    }
    let path = write(dir.path(), "large.jsonl", rows.as_bytes());
    let out = run(sluice(&b.root).args(["ingest", "--table", "t"]).arg(&path));
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let in_order = |table: &str| -> Vec<i64> {
        let out = run(sluice(&b.root).args(["scan", table, "--columns", "id"]));
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_i64().unwrap()).collect()
    };
    assert!(in_order("t") == ids, "rows in file order");

    let seed = jsonl(dir.path(), "seed.jsonl", -1..0);
    assert_eq!(run(sluice(&b.root).args(["ingest", "--table", "p"]).arg(&seed)).status.code(), Some(0));
    let copy = write(dir.path(), "copy.jsonl", rows.as_bytes());
    let out = run(sluice(&b.root).env("SLUICE_TEST_PART_BYTES", (3 << 20).to_string()).args(["ingest", "--table", "p"]).arg(&copy));
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(in_order("p") == [-1].into_iter().chain(ids.iter().copied()).collect::<Vec<_>>(), "rows in file order, after the table's");
    let lake = Lake::open(&b.root).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let fragments = |table: &str| rt.block_on(lake.open_table(table, None)).unwrap().get_fragments().len();
    let parts = (rows.len() / (3 << 20)).min(4);
    assert_eq!(parts, 4, "the file is large enough for the most parts");
    assert_eq!(fragments("p"), 1 + parts, "the seed's fragment, and one per part");

    // Parts of nothing but blank lines add no fragment; a file of blank lines alone is empty, in parts as in one.
    let sparse = format!("{}{}{}", "{\"id\": 1}\n".repeat(100), "\n".repeat(200_000), "{\"id\": 2}\n".repeat(100));
    let sparse = write(dir.path(), "sparse.jsonl", sparse.as_bytes());
    let seed = jsonl(dir.path(), "seed2.jsonl", -1..0);
    let out = run(sluice(&b.root).args(["ingest", "--table", "s"]).arg(&seed));
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run(sluice(&b.root).env("SLUICE_TEST_PART_BYTES", "16384").args(["ingest", "--table", "s"]).arg(&sparse));
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(in_order("s"), [-1].into_iter().chain([1; 100]).chain([2; 100]).collect::<Vec<_>>());
    assert_eq!(fragments("s"), 1 + 2, "the seed's, the first part's and the last part's");
    // A byte-order mark and CRLF line ends, in parts of a line or two.
    let crlf = write(dir.path(), "crlf.jsonl", b"\xEF\xBB\xBF{\"id\": 3}\r\n{\"id\": 4}\r\n\r\n{\"id\": 5}\r\n{\"id\": 6}");
    let out = run(sluice(&b.root).env("SLUICE_TEST_PART_BYTES", "10").args(["ingest", "--table", "s"]).arg(&crlf));
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(in_order("s")[201..], [3, 4, 5, 6]);
    assert_eq!(fragments("s"), 3 + 4, "one per line: each part holds one");
    let blank = write(dir.path(), "blank.jsonl", "\n \n".repeat(1 << 20).as_bytes());
    for part_bytes in [None, Some("65536")] {
        let mut cmd = sluice(&b.root);
        if let Some(bytes) = part_bytes {
            cmd.env("SLUICE_TEST_PART_BYTES", bytes);
        }
        let out = run(cmd.args(["ingest", "--table", "p"]).arg(&blank));
        assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stderr).contains("empty: no rows"), "{}", String::from_utf8_lossy(&out.stderr));
    }
}

/// A large CSV file is appended in parts too, cut at line breaks: rows in
/// file order, quoted fields whole. A cut that falls inside a quoted field
/// holding a line break is found by the part before it, and the file is
/// read whole: the same rows, never a record split in two.
#[test]
fn a_large_csv_file_is_appended_in_parts_and_never_split_inside_a_record() {
    let b = local();
    let dir = tempfile::tempdir().unwrap();
    let seed = write(dir.path(), "seed.csv", b"id,name,score\n-1,seed,0.5\n");
    assert_eq!(run(sluice(&b.root).args(["ingest", "--table", "c"]).arg(&seed)).status.code(), Some(0));
    let lake = Lake::open(&b.root).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let fragments = || rt.block_on(lake.open_table("c", None)).unwrap().get_fragments().len();
    let rows = || -> Vec<(i64, String)> {
        let out = run(sluice(&b.root).args(["scan", "c", "--columns", "id,name"]));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .map(|r| (r["id"].as_i64().unwrap(), r["name"].as_str().unwrap().to_string()))
            .collect()
    };
    // Tests that cut files in parts always read ahead: the parts staging keeps are the read-ahead's.
    let in_parts = |path: &std::path::Path, part_bytes: usize| {
        let out = run(sluice(&b.root).env("SLUICE_TEST_PART_BYTES", part_bytes.to_string()).env("SLUICE_TRACE_FAILPOINTS", "1").args(["ingest", "--table", "c"]).arg(path));
        assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("failpoint: {}", sluice::failpoints::READ_AHEAD_KEPT)), "read ahead and kept");
        out
    };
    let names = |i: i64| match i % 5 {
        0 => format!("\"a, \"\"quoted\"\" {i}\""),
        1 => format!("\"two\nlines {i}\""),
        _ => format!("n{i}"),
    };
    let unquoted = |name: &str| if name.starts_with('"') { name[1..name.len() - 1].replace("\"\"", "\"") } else { name.to_string() };

    // 1. Quoted fields (some with line breaks), no cut inside one: 4 parts.
    let mut text = String::from("\u{feff}id,name,score\r\n");
    let mut want = vec![(-1, "seed".to_string())];
    for i in 0..4_000 {
        let name = if i % 5 == 1 { format!("n{i}") } else { names(i) };
        text.push_str(&format!("{i},{name},{}.5\r\n", i % 10));
        want.push((i, unquoted(&name)));
    }
    let file = write(dir.path(), "plain.csv", text.as_bytes());
    let out = in_parts(&file, text.len() / 4);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(rows(), want, "rows in file order, quoted fields as written");
    assert_eq!(fragments(), 1 + 4, "the seed's fragment, and one per part");

    // 2. A quoted field with line breaks spans the middle of the file, where
    //    the cut of two parts falls: the file is read whole, every record
    //    intact. Its lines read as records of their own (read from the cut,
    //    they would go in silently as other rows), and it is the last field,
    //    so the record cut short still has every field.
    let mut text = String::from("id,score,name\n");
    for i in 10_000..10_200 {
        text.push_str(&format!("{i},1.5,{}\n", names(i)));
        want.push((i, unquoted(&names(i))));
    }
    let long = format!("\"{}7,1.5,x\"", "7,1.5,x\n".repeat(2_000));
    text.push_str(&format!("10200,2.5,{long}\n"));
    want.push((10_200, unquoted(&long)));
    for i in 10_201..10_400 {
        text.push_str(&format!("{i},1.5,{}\n", names(i)));
        want.push((i, unquoted(&names(i))));
    }
    let middle = text.len() / 2;
    assert!(text.find(&long).is_some_and(|at| at < middle && middle < at + long.len()), "the cut falls inside the long field");
    let file = write(dir.path(), "quoted.csv", text.as_bytes());
    let out = in_parts(&file, middle);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(rows(), want, "every record whole, in file order");
    assert_eq!(fragments(), 1 + 4 + 1, "read whole: one fragment more");

    // 3. The same with the long field in the middle, so the record cut short
    //    has too few fields: that error is the cut's, and the file is read whole.
    let mut text = String::from("id,name,score\n");
    for i in 20_000..20_100 {
        text.push_str(&format!("{i},{},1.5\n", names(i)));
        want.push((i, unquoted(&names(i))));
    }
    let long = format!("\"{}\"", "a line\n".repeat(2_000));
    text.push_str(&format!("20100,{long},2.5\n"));
    want.push((20_100, unquoted(&long)));
    for i in 20_101..20_200 {
        text.push_str(&format!("{i},{},1.5\n", names(i)));
        want.push((i, unquoted(&names(i))));
    }
    let file = write(dir.path(), "middle.csv", text.as_bytes());
    let out = in_parts(&file, text.len() / 2);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(rows(), want, "every record whole, in file order");

    // 4. A record over 8 MiB (one line, every cut after it): the part
    //    holding it stops there rather than buffer it, and the file is read whole.
    let mut text = String::from("id,name,score\n");
    for i in (40_000..40_300).chain(40_301..40_600) {
        if i == 40_301 {
            let huge = "h".repeat(9 << 20);
            text.push_str(&format!("40300,\"{huge}\",2.5\n"));
            want.push((40_300, huge));
        }
        text.push_str(&format!("{i},n{i},1.5\n"));
        want.push((i, format!("n{i}")));
    }
    let file = write(dir.path(), "huge.csv", text.as_bytes());
    let before = fragments();
    let out = in_parts(&file, 64 << 10);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(fragments(), before + 1, "read whole: one fragment");
    assert_eq!(rows(), want, "every record whole, in file order");

    // 5. A bad value in the last part is named by the line a reading of the
    //    whole file names, blank lines and a quoted line break before it.
    let mut text = String::from("id,name,score\n\n");
    for i in 0..300 {
        let name = if i == 10 { "\"two\nlines\"".to_string() } else { format!("n{i}") };
        text.push_str(&format!("{},{name},1.5\n", if i == 250 { "x7".to_string() } else { (30_000 + i).to_string() }));
        if i % 50 == 0 {
            text.push('\n');
        }
    }
    let file = write(dir.path(), "bad.csv", text.as_bytes());
    let located = |part_bytes: Option<usize>| {
        let mut cmd = sluice(&b.root);
        if let Some(bytes) = part_bytes {
            cmd.env("SLUICE_TEST_PART_BYTES", bytes.to_string());
        }
        let out = run(cmd.args(["--json", "ingest", "--table", "c"]).arg(&file));
        assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
        let err = &json(&out)["error"]["bad_input"];
        (err["location"]["line"].as_u64(), err["location"]["column"].as_str().map(String::from))
    };
    let whole = located(None);
    assert_eq!(whole, (Some(252), Some("id".to_string())), "records, as arrow counts them: the header and 250 rows before");
    assert_eq!(located(Some(text.len() / 4)), whole, "in parts as in one");
    assert_eq!(rows(), want, "nothing of it published");
}

/// Several sources in one call are appended by writers side by side, each
/// taking a contiguous group of them: rows in the call's order, one commit.
/// The first bad source in that order is the one named (and quarantined),
/// as reading them one after another would, even when a later group fails
/// first.
#[test]
fn many_sources_in_one_call_are_appended_side_by_side_in_order() {
    let b = local();
    let dir = tempfile::tempdir().unwrap();
    let seed = jsonl(dir.path(), "seed.jsonl", -1..0);
    assert_eq!(run(sluice(&b.root).args(["ingest", "--table", "g"]).arg(&seed)).status.code(), Some(0));
    let lake = Lake::open(&b.root).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let fragments = || rt.block_on(lake.open_table("g", None)).unwrap().get_fragments().len();
    let in_order = || -> Vec<i64> {
        let out = run(sluice(&b.root).args(["scan", "g", "--columns", "id"]));
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_i64().unwrap()).collect()
    };
    // Eight files, one CSV and one Parquet, in up to four groups.
    let mut files = Vec::new();
    for i in 0..8i64 {
        let ids = i * 100..i * 100 + 50;
        files.push(match i {
            3 => write(dir.path(), "f3.csv", &csv_bytes(ids)),
            5 => write(dir.path(), "f5.parquet", &parquet_bytes(ids)),
            _ => jsonl(dir.path(), &format!("f{i}.jsonl"), ids),
        });
    }
    let total: u64 = files.iter().map(|f| std::fs::metadata(f).unwrap().len()).sum();
    let in_groups = |files: &[std::path::PathBuf]| {
        let out = run(sluice(&b.root).env("SLUICE_TEST_PART_BYTES", (total / 4).to_string()).env("SLUICE_LOG", "sluice::stage=debug").args(["--json", "ingest", "--table", "g"]).args(files));
        assert!(String::from_utf8_lossy(&out.stderr).contains("appending the sources in groups side by side"), "written in groups");
        out
    };
    let out = in_groups(&files);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let want: Vec<i64> = [-1].into_iter().chain((0..8).flat_map(|i| i * 100..i * 100 + 50)).collect();
    assert_eq!(in_order(), want, "rows in the call's order");
    assert!((1 + 2..=1 + 4).contains(&fragments()), "a fragment per group: {}", fragments());
    let sources = run(sluice(&b.root).args(["--json", "sources", "--table", "g"]));
    let sources: Vec<serde_json::Value> = String::from_utf8_lossy(&sources.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let rows: Vec<u64> = sources.iter().filter(|s| s["uri"].as_str().is_some_and(|u| !u.ends_with("seed.jsonl"))).map(|s| s["rows"].as_u64().unwrap()).collect();
    assert_eq!(rows, [50; 8], "every source's rows recorded: {sources:?}");

    // The third file is bad at its end, the seventh at its start (its group fails first).
    let mut bad = Vec::new();
    for i in 0..8i64 {
        let mut text = String::from_utf8(jsonl_bytes(1_000 + i * 100..1_000 + i * 100 + 50)).unwrap();
        match i {
            2 => text.push_str("{\"id\": \"two\"}\n"),
            6 => text.insert_str(0, "{\"id\": \"six\"}\n"),
            _ => {}
        }
        bad.push(write(dir.path(), &format!("b{i}.jsonl"), text.as_bytes()));
    }
    let out = in_groups(&bad);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    let err = &json(&out)["error"]["bad_input"];
    assert_eq!((err["source_uri"].as_str(), err["location"]["line"].as_u64()), (Some(bad[2].display().to_string().as_str()), Some(51)), "{err}");
    assert_eq!(in_order(), want, "nothing of the call published");
}

/// A large file is decoded beside its identity hash (read ahead), and what
/// was read is kept only for the version hashed: another file renamed into
/// its place between the read-ahead's first rows and the hash goes in as
/// hashed, the new file's rows and none of the old's.
#[test]
fn what_is_read_ahead_is_kept_only_for_the_version_hashed() {
    use sluice::failpoints::{BEFORE_HASH, READ_AHEAD_FIRST_ROWS, READ_AHEAD_KEPT};
    let b = local();
    let dir = tempfile::tempdir().unwrap();
    let seed = jsonl(dir.path(), "seed.jsonl", -1..0);
    assert_eq!(run(sluice(&b.root).args(["ingest", "--table", "t"]).arg(&seed)).status.code(), Some(0));
    // 9.5 MB: over what is staged alongside the claims, so staged after them
    // as a large file is. Lines of one length: one size, one set of parts.
    let ids = |from: i64| from..from + 190_000;
    let lines = |ids: std::ops::Range<i64>| -> String { ids.map(|i| format!("{{\"id\": {i}, \"name\": \"n{i}\", \"score\": 0.5}}\n")).collect() };
    let in_parts = || {
        let mut cmd = sluice(&b.root);
        cmd.env("SLUICE_TEST_PART_BYTES", "2000000").env("SLUICE_TRACE_FAILPOINTS", "1").args(["ingest", "--table", "t"]);
        cmd
    };

    // Read ahead and kept; the rows it counted are the file's.
    let first = write(dir.path(), "first.jsonl", lines(ids(1_000_000)).as_bytes());
    let out = run(in_parts().arg(&first));
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches(&format!("failpoint: {READ_AHEAD_FIRST_ROWS}\n")).count(), 4, "4 parts read ahead: {stderr}");
    assert!(stderr.contains(&format!("failpoint: {READ_AHEAD_KEPT}")), "{stderr}");
    assert!(scan_ids(&b.root, "t") == (-1..0).chain(ids(1_000_000)).collect::<Vec<_>>(), "the file's rows, in order");
    let out = run(sluice(&b.root).args(["--json", "sources"]));
    let recorded: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let first_rows = recorded.iter().find(|e| e["uri"] == first.display().to_string()).map(|e| e["rows"].clone());
    assert_eq!(first_rows, Some(190_000.into()), "{recorded:?}");

    // Every part has read the old file when another takes its place; the hash reads the new one.
    let same = write(dir.path(), "same.jsonl", lines(ids(2_000_000)).as_bytes());
    let held = hold_at(&mut in_parts().arg(&same), BEFORE_HASH);
    for _ in 0..4 {
        held.wait_for(READ_AHEAD_FIRST_ROWS);
    }
    let other = write(dir.path(), "other.jsonl", lines(ids(5_000_000)).as_bytes());
    let modified = std::fs::metadata(&same).unwrap().modified().unwrap();
    std::fs::File::options().write(true).open(&other).unwrap().set_modified(modified).unwrap();
    std::fs::rename(&other, &same).unwrap();
    held.release();
    let out = held.wait_with_output();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let now = scan_ids(&b.root, "t");
    assert!(now == (-1..0).chain(ids(1_000_000)).chain(ids(5_000_000)).collect::<Vec<_>>(), "the new file's rows, none of the old's: {:?}", &now[190_001..190_004]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains(READ_AHEAD_KEPT), "read again, not kept");
}

/// A source delivered again under another table name is reported as already
/// ingested into the table it really went to.
#[test]
fn already_ingested_names_the_table_it_went_to() {
    let b = local();
    let dir = tempfile::tempdir().unwrap();
    let path = jsonl(dir.path(), "a.jsonl", 0..3);
    assert_eq!(run(sluice(&b.root).args(["ingest", "--table", "first"]).arg(&path)).status.code(), Some(0));
    let out = run(sluice(&b.root).args(["--json", "ingest", "--table", "second"]).arg(&path));
    assert_eq!(out.status.code(), Some(0));
    let report = json(&out);
    assert_eq!(report["sources"][0]["status"], "already_ingested");
    assert_eq!(report["sources"][0]["table"], "first", "{report}");
    assert_eq!(table_rows(&status(&b.root), "second"), None);
}

/// ISO-8601 text in a new table's first file becomes date and timestamp
/// columns (UTC, microseconds; nanoseconds where a value needs them); a
/// column mixing the two, or holding other text, stays a string.
#[test]
fn iso_dates_and_timestamps_are_inferred_as_such() {
    use arrow::datatypes::TimeUnit;
    let b = local();
    let dir = tempfile::tempdir().unwrap();
    let jsonl = write(
        dir.path(),
        "a.jsonl",
        br#"{"id": 1, "day": "2026-11-30", "at": "2026-11-30T05:00:00Z", "local": "2026-11-30 05:00:00.123", "off": "2026-11-30T07:00:00+02:00", "ns": "2026-11-30T05:00:00.123456789Z", "mixed": "2026-11-30", "txt": "2026-11-30 or so"}
{"id": 2, "day": null, "at": "2026-11-30T06:00:00.5Z", "mixed": "2026-11-30T05:00:00Z"}
"#,
    );
    assert_eq!(run(sluice(&b.root).args(["ingest", "--table", "j"]).arg(&jsonl)).status.code(), Some(0));
    let csv = write(dir.path(), "b.csv", b"id,at,day,mixed\n1,2026-11-30T05:00:00Z,2026-11-30,2026-11-30\n2,2026-11-30 06:00:00.25,2026-12-01,2026-11-30T05:00:00Z\n");
    assert_eq!(run(sluice(&b.root).args(["ingest", "--table", "c"]).arg(&csv)).status.code(), Some(0));

    let lake = Lake::open(&b.root).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let types = |table: &str| {
        let ds = rt.block_on(lake.open_table(table, None)).unwrap();
        let schema = arrow::datatypes::Schema::from(ds.schema());
        schema.fields().iter().map(|f| (f.name().clone(), f.data_type().clone())).collect::<std::collections::HashMap<_, _>>()
    };
    let micros = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let j = types("j");
    for (column, want) in [
        ("day", DataType::Date32),
        ("at", micros.clone()),
        ("local", micros.clone()),
        ("off", micros.clone()),
        ("ns", DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()))),
        ("mixed", DataType::Utf8),
        ("txt", DataType::Utf8),
    ] {
        assert_eq!(j[column], want, "jsonl column {column}");
    }
    let c = types("c");
    assert_eq!((&c["at"], &c["day"], &c["mixed"]), (&micros, &DataType::Date32, &DataType::Utf8), "as in JSON Lines");
    // The offset is kept as the instant it names.
    let out = run(sluice(&b.root).args(["scan", "j", "--where", "id = 1", "--columns", "off"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("2026-11-30T05:00:00Z"), "{}", String::from_utf8_lossy(&out.stdout));
}

/// CSV as producers write it: `;` or tab or `|` (detected from the first
/// line, or given), another quote, no header (columns by position), and
/// null markers; line numbers stay right without a header.
#[test]
fn csv_dialects_are_read_as_written() {
    let b = local();
    let dir = tempfile::tempdir().unwrap();
    let eu = write(dir.path(), "eu.csv", b"id;name;note\n1;\"a;b\";x\n2;NA;y\n");
    let out = run(sluice(&b.root).args(["ingest", "--table", "t", "--null", "NA"]).arg(&eu));
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let tsv = write(dir.path(), "more.tsv", b"3\tc\tz\n4\t\\N\tw\n");
    let out = run(sluice(&b.root).args(["ingest", "--table", "t", "--no-header", "--null", "\\N"]).arg(&tsv));
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let piped = write(dir.path(), "p.csv", b"5|'e|f'|v\n");
    let out = run(sluice(&b.root).args(["ingest", "--table", "t", "--no-header", "--delimiter", "|", "--quote", "'"]).arg(&piped));
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let rows = String::from_utf8_lossy(&run(sluice(&b.root).args(["scan", "t", "--columns", "id,name"])).stdout).to_string();
    assert_eq!(
        rows.lines().collect::<Vec<_>>(),
        [r#"{"id":1,"name":"a;b"}"#, r#"{"id":2,"name":null}"#, r#"{"id":3,"name":"c"}"#, r#"{"id":4,"name":null}"#, r#"{"id":5,"name":"e|f"}"#]
    );
    // A column the table lacks is a usage error that names the table's columns.
    let out = run(sluice(&b.root).args(["scan", "t", "--columns", "id,nmae"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no column 'nmae' (its columns: id, name"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run(sluice(&b.root).args(["scan", "t", "--columns", "ID"]));
    assert_eq!(out.status.code(), Some(2), "column names are case-sensitive: {}", String::from_utf8_lossy(&out.stderr));
    let out = run(sluice(&b.root).args(["scan", "t", "--where", "nmae = 'a'"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--where \"nmae = 'a'\"") && err.contains("nmae") && !err.contains(".rs:"), "{err}");

    // A load descriptor carries the dialect per table.
    let semi = write(dir.path(), "d/s.csv", b"6;g;u\n");
    let descriptor = write(
        dir.path(),
        "d/load.json",
        br#"{"tables": [{"table": "t", "sources": ["s.csv"], "csv": {"delimiter": ";", "header": false}}]}"#,
    );
    let _ = semi;
    let out = run(sluice(&b.root).arg("load").arg(&descriptor));
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(scan_ids(&b.root, "t"), vec![1, 2, 3, 4, 5, 6]);

    // Without a header, a bad value's line is its line in the file.
    let bad = write(dir.path(), "bad.csv", b"7;h;t\nseven;i;s\n");
    let out = run(sluice(&b.root).args(["--json", "ingest", "--table", "t", "--no-header"]).arg(&bad));
    assert_eq!(out.status.code(), Some(3));
    let err = &json(&out)["error"]["bad_input"];
    assert_eq!((&err["location"]["line"], &err["location"]["column"]), (&2.into(), &"id".into()), "{err}");
    // A delimiter a CSV reader cannot take is a usage error.
    assert_eq!(run(sluice(&b.root).args(["ingest", "--table", "t", "--delimiter", "é"]).arg(&bad)).status.code(), Some(2));
}

/// Hive-style folders route to the table above them and, when the table
/// says so, become typed columns; a table that never said refuses them
/// rather than dropping the values; `off` only routes.
#[test]
fn hive_partition_folders_route_and_become_typed_columns() {
    let b = local();
    let dir = tempfile::tempdir().unwrap();
    let file = |path: &str, id: i64| write(dir.path(), path, format!("{{\"id\": {id}}}\n").as_bytes());
    let first = file("in/events/date=2026-11-30/hour=05/p.jsonl", 1);
    let out = run(sluice(&b.root).arg("ingest").arg(&first));
    assert_eq!(out.status.code(), Some(2), "undeclared partitions are refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--partitions"));
    assert_eq!(run(sluice(&b.root).args(["ingest", "--partitions", "date:date,hour:int32"]).arg(&first)).status.code(), Some(0));
    file("in/events/date=2026-11-30/hour=06/p.jsonl", 2);
    file("in/events/date=2026-12-01/hour=00/p.jsonl", 3);
    assert_eq!(run(sluice(&b.root).arg("ingest").arg(dir.path().join("in"))).status.code(), Some(0));
    let rows = String::from_utf8_lossy(&run(sluice(&b.root).args(["scan", "events"])).stdout).to_string();
    assert_eq!(
        rows.lines().collect::<Vec<_>>(),
        [r#"{"id":1,"date":"2026-11-30","hour":5}"#, r#"{"id":2,"date":"2026-11-30","hour":6}"#, r#"{"id":3,"date":"2026-12-01","hour":0}"#]
    );
    // A value that is not of the column's type, or a missing segment, is bad input naming the column.
    for (path, column) in [("in/events/date=soon/hour=1/p.jsonl", "date"), ("in/events/date=2026-12-02/p.jsonl", "hour")] {
        let bad = file(path, 9);
        let out = run(sluice(&b.root).args(["--json", "ingest"]).arg(&bad));
        assert_eq!(out.status.code(), Some(3), "{path}");
        assert_eq!(json(&out)["error"]["bad_input"]["location"]["column"], column, "{path}");
    }
    // `off`: the folders route, nothing is stored.
    let plain = file("in/clicks/day=1/p.jsonl", 7);
    assert_eq!(run(sluice(&b.root).args(["ingest", "--partitions", "off"]).arg(&plain)).status.code(), Some(0));
    let more = file("in/clicks/day=2/p.jsonl", 8);
    assert_eq!(run(sluice(&b.root).arg("ingest").arg(&more)).status.code(), Some(0), "the table said off once");
    assert_eq!(String::from_utf8_lossy(&run(sluice(&b.root).args(["scan", "clicks"])).stdout).lines().collect::<Vec<_>>(), [r#"{"id":7}"#, r#"{"id":8}"#]);
    // A declared schema names the files' columns: every call may repeat it,
    // though the table also holds the partition columns.
    let schema = write(dir.path(), "schema.json", br#"{"columns": [{"name": "id", "type": "int64"}]}"#);
    for (i, day) in [(10, 1), (11, 2)] {
        let f = file(&format!("in/views/day={day}/p.jsonl"), i);
        let out = run(sluice(&b.root).args(["ingest", "--partitions", "day:int32", "--schema"]).arg(&schema).arg(&f));
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(
        String::from_utf8_lossy(&run(sluice(&b.root).args(["scan", "views"])).stdout).lines().collect::<Vec<_>>(),
        [r#"{"id":10,"day":1}"#, r#"{"id":11,"day":2}"#]
    );
}

/// What a new user met (found by trying the CLI): values of an existing
/// date, timestamp or float column never change silently from JSON or CSV
/// text; leading zeros keep a CSV column text; a .tsv splits on tabs; JSON
/// columns keep the order they are written in.
#[test]
fn text_values_into_typed_columns_never_change_silently() {
    let b = local();
    let dir = tempfile::tempdir().unwrap();
    let seed = write(dir.path(), "seed.jsonl", br#"{"z": 1, "ts": "2026-11-30T05:00:00Z", "d": "2026-11-30", "f": 1.5}
"#);
    assert_eq!(run(sluice(&b.root).args(["ingest", "--table", "j"]).arg(&seed)).status.code(), Some(0));
    let lake = Lake::open(&b.root).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ds = rt.block_on(lake.open_table("j", None)).unwrap();
    let names: Vec<String> = arrow::datatypes::Schema::from(ds.schema()).fields().iter().map(|f| f.name().clone()).collect();
    assert_eq!(names, ["z", "ts", "d", "f"], "columns in the order written");
    for (line, column, says) in [
        (r#"{"ts": "2026-11-30T05:00:00.123456789Z"}"#, "ts", "below the column's unit"),
        (r#"{"d": "2026-11-30T05:00:00Z"}"#, "d", "drop the time"),
        (r#"{"ts": 1764478800}"#, "ts", "write ISO-8601 text"),
        (r#"{"d": 20000}"#, "d", "write ISO-8601 text"),
    ] {
        let path = write(dir.path(), "bad.jsonl", format!("{line}\n").as_bytes());
        let out = run(sluice(&b.root).args(["--json", "ingest", "--table", "j"]).arg(&path));
        assert_eq!(out.status.code(), Some(3), "{line}");
        let err = &json(&out)["error"]["bad_input"];
        assert_eq!(err["location"]["column"], column, "{line}: {err}");
        assert!(err["reason"].as_str().unwrap().contains(says), "{line}: {err}");
    }

    let seed = write(dir.path(), "seed.csv", b"ts,d,f,zip\n2026-11-30T05:00:00Z,2026-11-30,0.5,00501\n");
    assert_eq!(run(sluice(&b.root).args(["ingest", "--table", "c"]).arg(&seed)).status.code(), Some(0));
    let rows = String::from_utf8_lossy(&run(sluice(&b.root).args(["scan", "c", "--columns", "zip"])).stdout).to_string();
    assert_eq!(rows.trim(), r#"{"zip":"00501"}"#, "leading zeros keep a column text");
    for (row, column, says) in [
        ("2026-11-30T05:00:00.123456789Z,2026-11-30,1,1", "ts", "below the column's unit"),
        ("2026-11-30T05:00:00Z,2026-11-30T05:00:00Z,1,1", "d", "drop the time"),
        ("2026-11-30T05:00:00Z,2026-11-30,9007199254740993,1", "f", "cannot be held exactly"),
    ] {
        let path = write(dir.path(), "bad.csv", format!("ts,d,f,zip\n{row}\n").as_bytes());
        let out = run(sluice(&b.root).args(["--json", "ingest", "--table", "c"]).arg(&path));
        assert_eq!(out.status.code(), Some(3), "{row}");
        let err = &json(&out)["error"]["bad_input"];
        assert_eq!((&err["location"]["column"], &err["location"]["line"]), (&column.into(), &2.into()), "{row}: {err}");
        assert!(err["reason"].as_str().unwrap().contains(says), "{row}: {err}");
    }

    let tsv = write(dir.path(), "t.tsv", b"id\tnote, more\n1\thello, world\n");
    assert_eq!(run(sluice(&b.root).args(["ingest", "--table", "tsv"]).arg(&tsv)).status.code(), Some(0));
    let rows = String::from_utf8_lossy(&run(sluice(&b.root).args(["scan", "tsv"])).stdout).to_string();
    assert_eq!(rows.trim(), r#"{"id":1,"note, more":"hello, world"}"#);

    // A key alone asks for an upsert table; a key with --mode append is refused.
    let u = write(dir.path(), "u.jsonl", b"{\"id\": 1, \"v\": 1}\n");
    assert_eq!(run(sluice(&b.root).args(["ingest", "--table", "u", "--key", "id"]).arg(&u)).status.code(), Some(0));
    assert_eq!(status(&b.root)["tables"].as_array().unwrap().iter().find(|t| t["name"] == "u").unwrap()["mode"], "upsert");
    assert_eq!(run(sluice(&b.root).args(["ingest", "--table", "u2", "--mode", "append", "--key", "id"]).arg(&u)).status.code(), Some(2));
}
