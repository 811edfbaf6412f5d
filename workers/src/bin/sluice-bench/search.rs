//! The search section: vectors with cluster structure arrive in batches into
//! one table with an IVF_PQ index and a BTREE; recall@10 against brute force
//! and query latency before and after one `optimize`, flat search for
//! comparison, and the incremental index refresh against a full rebuild.
//!
//! "plain Lance" is Lance's own scanner on the same table at the same version,
//! without sluice's manifest in front.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{AsArray, FixedSizeListArray, Float32Array, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use futures::StreamExt;
use sluice::Lake;
use sluice::decode::Progress;
use sluice::ingest::{self, Budget, TableRequest};
use sluice::read::{Nearest, Query};
use sluice::settings::IndexDecl;

use crate::{Row, TIMEOUT, ms, percentile};

pub struct Shape {
    pub rows: usize,
    pub dims: usize,
    pub batches: usize,
    pub queries: usize,
    pub clusters: usize,
    pub nprobes: usize,
    pub refine: u32,
}

/// A small deterministic generator (splitmix64), so every run sees the same data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Roughly normal (sum of uniforms), mean 0, sd about `sd`.
    fn normal(&mut self, sd: f32) -> f32 {
        let s: f32 = (0..4).map(|_| (self.next() >> 40) as f32 / (1u64 << 24) as f32).sum();
        (s - 2.0) * sd * 1.7
    }
}

/// Vectors around `clusters` centres, like real embeddings (not uniform noise).
struct Data {
    centres: Vec<Vec<f32>>,
    rng: Rng,
    dims: usize,
}

impl Data {
    fn new(shape: &Shape) -> Data {
        let mut rng = Rng(42);
        let centres = (0..shape.clusters).map(|_| (0..shape.dims).map(|_| rng.normal(1.0)).collect()).collect();
        Data { centres, rng, dims: shape.dims }
    }
    fn vector(&mut self) -> Vec<f32> {
        let c = (self.rng.next() % self.centres.len() as u64) as usize;
        (0..self.dims).map(|d| self.centres[c][d] + self.rng.normal(0.25)).collect()
    }
}

fn schema(dims: usize) -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("emb", DataType::FixedSizeList(Arc::new(Field::new_list_field(DataType::Float32, true)), dims as i32), true),
    ]))
}

/// An Arrow IPC file of `n` rows from id `first`; their vectors are also kept in `all`.
fn batch_file(dir: &Path, first: usize, n: usize, data: &mut Data, all: &mut Vec<Vec<f32>>) -> std::path::PathBuf {
    let vectors: Vec<Vec<f32>> = (0..n).map(|_| data.vector()).collect();
    let flat = Float32Array::from(vectors.iter().flatten().copied().collect::<Vec<f32>>());
    let emb = FixedSizeListArray::new(Arc::new(Field::new_list_field(DataType::Float32, true)), data.dims as i32, Arc::new(flat), None);
    let ids = Int64Array::from_iter_values((first..first + n).map(|i| i as i64));
    let batch = RecordBatch::try_new(schema(data.dims), vec![Arc::new(ids), Arc::new(emb)]).unwrap();
    all.extend(vectors);
    let path = dir.join(format!("vectors-{first}.arrow"));
    let mut w = arrow::ipc::writer::FileWriter::try_new(std::fs::File::create(&path).unwrap(), &batch.schema()).unwrap();
    w.write(&batch).unwrap();
    w.finish().unwrap();
    path
}

async fn ingest(lake: &Lake, file: &Path, dims: usize) {
    let declared = format!(r#"{{"columns": [{{"name": "id", "type": "int64", "nullable": false}}, {{"name": "emb", "type": "vector({dims})"}}]}}"#);
    let req = TableRequest {
        table: "v".into(),
        sources: vec![file.display().to_string().into()],
        schema: Some(sluice::decode::parse_declared_schema(&declared).unwrap()),
        ..Default::default()
    };
    ingest::run(lake, vec![req], Budget::new(TIMEOUT), Arc::new(Progress::default())).await.expect("ingest");
}

/// The ids of the `k` vectors nearest `q` (squared L2), by brute force.
fn brute_force(all: &[Vec<f32>], q: &[f32], k: usize) -> Vec<i64> {
    let mut d: Vec<(f32, i64)> = all.iter().enumerate().map(|(i, v)| (v.iter().zip(q).map(|(a, b)| (a - b) * (a - b)).sum(), i as i64)).collect();
    d.select_nth_unstable_by(k, |a, b| a.0.total_cmp(&b.0));
    d.truncate(k);
    d.into_iter().map(|(_, i)| i).collect()
}

fn ids(batches: &[RecordBatch]) -> Vec<i64> {
    batches.iter().flat_map(|b| b.column_by_name("id").unwrap().as_primitive::<arrow::datatypes::Int64Type>().values().to_vec()).collect()
}

/// Recall@k and per-query latencies of `sluice search` (the library's query
/// at the published pin) and of Lance's own scanner at that version.
async fn measure(lake: &Lake, queries: &[Vec<f32>], truth: &[Vec<i64>], shape: &Shape) -> ((f64, Vec<Duration>), (f64, Vec<Duration>)) {
    const K: usize = 10;
    let pin = sluice::read::manifest_at(lake, None).await.unwrap().tables["v"].version;
    let ds = lake.open_table("v", Some(pin)).await.unwrap();
    let (mut s_hits, mut l_hits, mut s_times, mut l_times) = (0, 0, Vec::new(), Vec::new());
    for (q, want) in queries.iter().zip(truth) {
        let start = Instant::now();
        let nearest = Nearest { column: Some("emb".into()), vector: q.clone(), k: K, nprobes: Some(shape.nprobes), refine: Some(shape.refine) };
        let query = Query { limit: Some(K as u64), columns: Some(vec!["id".into()]), nearest: Some(nearest), ..Default::default() };
        let (_, stream) = sluice::read::query(lake, "v", None, query).await.unwrap();
        let batches: Vec<RecordBatch> = stream.map(|b| b.unwrap()).collect().await;
        s_times.push(start.elapsed());
        s_hits += ids(&batches).iter().filter(|i| want.contains(i)).count();

        let start = Instant::now();
        let batches = lance_nearest(&ds, q, K, Some(shape)).await;
        l_times.push(start.elapsed());
        l_hits += ids(&batches).iter().filter(|i| want.contains(i)).count();
    }
    let recall = |hits: usize| hits as f64 / (queries.len() * K) as f64;
    ((recall(s_hits), s_times), (recall(l_hits), l_times))
}

/// Lance's own k-nearest search; with no `shape`, flat (no index).
async fn lance_nearest(ds: &lance::Dataset, q: &[f32], k: usize, shape: Option<&Shape>) -> Vec<RecordBatch> {
    let mut scanner = ds.scan();
    scanner.project(&["id"]).unwrap();
    scanner.nearest("emb", &Float32Array::from(q.to_vec()), k).unwrap();
    match shape {
        Some(s) => {
            scanner.nprobes(s.nprobes);
            scanner.refine(s.refine);
        }
        None => {
            scanner.use_index(false);
        }
    }
    scanner.try_into_stream().await.unwrap().map(|b| b.unwrap()).collect().await
}

fn latency(times: &[Duration]) -> String {
    format!("p50 {} / p99 {}", ms(percentile(times.to_vec(), 0.5)), ms(percentile(times.to_vec(), 0.99)))
}

async fn unindexed(lake: &Lake) -> u64 {
    let s = sluice::read::indices(lake, Some("v")).await.unwrap();
    s.iter().map(|i| i.rows_unindexed.unwrap_or(0)).max().unwrap_or(0)
}

pub async fn run(root: &str, work: &Path, shape: &Shape, rows: &mut Vec<Row>) {
    let lake = Lake::open(root).unwrap();
    let per = shape.rows / shape.batches;
    let mut data = Data::new(shape);
    let mut all = Vec::with_capacity(shape.rows);
    // A tenth of the batches first; the indices are declared on those.
    let first = (shape.batches / 10).max(1);
    for b in 0..first {
        let f = batch_file(work, b * per, per, &mut data, &mut all);
        ingest(&lake, &f, shape.dims).await;
        std::fs::remove_file(f).unwrap();
    }
    let budget = Budget::new(TIMEOUT);
    for (column, kind) in [("emb", "ivf_pq"), ("id", "btree")] {
        let decl = IndexDecl { column: column.into(), kind: kind.into(), metric: None, name: None, partitions: None, sub_vectors: None };
        sluice::index::create(&lake, "v", decl.spec().unwrap(), budget).await.expect("index create");
    }
    let start = Instant::now();
    for b in first..shape.batches {
        let f = batch_file(work, b * per, per, &mut data, &mut all);
        ingest(&lake, &f, shape.dims).await;
        std::fs::remove_file(f).unwrap();
    }
    let ingest_time = start.elapsed();
    let queries: Vec<Vec<f32>> = (0..shape.queries).map(|_| data.vector()).collect();
    let truth: Vec<Vec<i64>> = queries.iter().map(|q| brute_force(&all, q, 10)).collect();
    let shape_name = format!("{} x {}-dim vectors, {} ingests", shape.rows, shape.dims, shape.batches);
    rows.push((format!("search: {shape_name}; ingest after the index ({} batches)", shape.batches - first), ms(ingest_time), "-".into(), "-".into()));

    let before_unindexed = unindexed(&lake).await;
    let ((s_recall, s_times), (l_recall, l_times)) = measure(&lake, &queries, &truth, shape).await;
    let p = format!("nprobes {}, refine {}", shape.nprobes, shape.refine);
    rows.push((format!("recall@10 before optimize ({before_unindexed} rows unindexed; {p})"), format!("{s_recall:.3}"), format!("{l_recall:.3}"), "-".into()));
    rows.push(("search latency before optimize".into(), latency(&s_times), latency(&l_times), ratio(&s_times, &l_times)));

    let start = Instant::now();
    let report = sluice::optimize::run(&lake, &[], &sluice::optimize::Options::parse(&[], &[], &[], 1, false).unwrap(), budget, &sluice::optimize::InProcess).await.expect("optimize");
    let optimize_time = start.elapsed();
    let after_unindexed = unindexed(&lake).await;
    rows.push((format!("one optimize (compaction + index refresh): rows unindexed {before_unindexed} -> {after_unindexed}"), ms(optimize_time), "-".into(), format!("{} table(s)", report.tables.len())));
    let ((s_recall, s_times), (l_recall, l_times)) = measure(&lake, &queries, &truth, shape).await;
    rows.push((format!("recall@10 after optimize ({p})"), format!("{s_recall:.3}"), format!("{l_recall:.3}"), "-".into()));
    rows.push(("search latency after optimize".into(), latency(&s_times), latency(&l_times), ratio(&s_times, &l_times)));
    let pin = sluice::read::manifest_at(&lake, None).await.unwrap().tables["v"].version;
    match pylance(&lake.table_uri("v"), pin, &queries, &truth, shape, work) {
        Ok((recall, p50, p99)) => rows.push((
            format!("pylance on the same table at the pin (reference; {p})"),
            "-".into(),
            format!("recall@10 {recall:.3}, p50 / p99 {p50:.1} / {p99:.1} ms"),
            format!("sluice p50 {:.2}x pylance", percentile(s_times.clone(), 0.5).as_secs_f64() * 1000.0 / p50),
        )),
        Err(why) => eprintln!("pylance reference skipped: {why}"),
    }
    let ds = lake.open_table("v", Some(pin)).await.unwrap();
    let mut flat = Vec::with_capacity(queries.len());
    for q in &queries {
        let start = Instant::now();
        lance_nearest(&ds, q, 10, None).await;
        flat.push(start.elapsed());
    }
    rows.push((
        "flat search (no index), Lance".into(),
        "-".into(),
        latency(&flat),
        format!("indexed p50 {:.1}x faster", percentile(flat.clone(), 0.5).as_secs_f64() / percentile(s_times.clone(), 0.5).as_secs_f64()),
    ));

    // 1% new rows: the incremental refresh against building the index anew.
    let more = (shape.rows / 100).max(1);
    let f = batch_file(work, shape.rows, more, &mut data, &mut all);
    ingest(&lake, &f, shape.dims).await;
    std::fs::remove_file(f).unwrap();
    let start = Instant::now();
    sluice::optimize::run(&lake, &[], &sluice::optimize::Options::parse(&[], &[], &[], 1, false).unwrap(), budget, &sluice::optimize::InProcess).await.expect("optimize");
    let incremental = start.elapsed();
    let start = Instant::now();
    let decl = IndexDecl { column: "emb".into(), kind: "ivf_pq".into(), metric: None, name: Some("emb_rebuilt".into()), partitions: None, sub_vectors: None };
    sluice::index::create(&lake, "v", decl.spec().unwrap(), budget).await.expect("full rebuild");
    let rebuild = start.elapsed();
    rows.push((
        format!("index refresh after {more} new rows (1%) vs a full rebuild"),
        format!("{} vs {}", ms(incremental), ms(rebuild)),
        "-".into(),
        format!("{:.2}x", incremental.as_secs_f64() / rebuild.as_secs_f64()),
    ));
}

fn ratio(s: &[Duration], l: &[Duration]) -> String {
    format!("{:.2}x (p50)", percentile(s.to_vec(), 0.5).as_secs_f64() / percentile(l.to_vec(), 0.5).as_secs_f64())
}

/// The same queries through pylance (Python's Lance, the reference readers
/// use) at the same version: recall@10 and p50 / p99 in ms. Needs a Python
/// with pylance: `$SLUICE_VENV/bin/python` (scripts/env.sh makes it) or `python3`.
fn pylance(uri: &str, version: u64, queries: &[Vec<f32>], truth: &[Vec<i64>], shape: &Shape, work: &Path) -> Result<(f64, f64, f64), String> {
    let venv = std::env::var("SLUICE_VENV").map(std::path::PathBuf::from).unwrap_or_else(|_| {
        std::path::PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/sluice-venv")
    });
    let python = [venv.join("bin/python"), "python3".into()].into_iter().find(|p| {
        std::process::Command::new(p).args(["-c", "import lance"]).output().is_ok_and(|o| o.status.success())
    });
    let python = python.ok_or("no Python with pylance (scripts/env.sh installs one)")?;
    let input = work.join("pylance-queries.json");
    std::fs::write(&input, serde_json::json!({"queries": queries, "truth": truth}).to_string()).map_err(|e| e.to_string())?;
    let script = r#"
import json, sys, time, lance
uri, version, nprobes, refine, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
d = json.load(open(path))
ds = lance.dataset(uri, version=version)
hits, times = 0, []
for q, want in zip(d["queries"], d["truth"]):
    start = time.perf_counter()
    got = ds.to_table(nearest={"column": "emb", "q": q, "k": 10, "nprobes": nprobes, "refine_factor": refine}, columns=["id"])
    times.append((time.perf_counter() - start) * 1000)
    hits += len(set(got.column("id").to_pylist()) & set(want))
times.sort()
print(json.dumps({"recall": hits / (10 * len(d["queries"])), "p50": times[len(times) // 2], "p99": times[min(len(times) - 1, int(len(times) * 0.99))]}))
"#;
    let out = std::process::Command::new(python)
        .args(["-c", script, uri, &version.to_string(), &shape.nprobes.to_string(), &shape.refine.to_string()])
        .arg(&input)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).to_string());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    Ok((v["recall"].as_f64().unwrap_or(0.0), v["p50"].as_f64().unwrap_or(0.0), v["p99"].as_f64().unwrap_or(0.0)))
}
