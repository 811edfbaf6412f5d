//! sluice-bench: sluice against plain Lance on the same data and the same
//! store, in one run. Prints a Markdown table. See scripts/bench.sh.
//!
//! Plain Lance is what a stateless worker would do without sluice: open the
//! table at its latest version, decode the JSONL (or CSV) with arrow's reader, append.

use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatchReader;
use lance::dataset::builder::DatasetBuilder;
use lance::dataset::{InsertBuilder, WriteMode, WriteParams};
use sluice::Lake;
use sluice::counting::RequestSnapshot;
use sluice::decode::Progress;
use sluice::ingest::{self, TableRequest};

mod backfill;
mod roundtrips;
mod search;

const TIMEOUT: Duration = Duration::from_secs(900);

/// One line of the printed table: measure, sluice, plain Lance, sluice / Lance.
type Row = (String, String, String, String);

struct Args {
    /// Where lakes go: a local folder or s3://bucket/prefix.
    root: String,
    work: PathBuf,
    depth: u64,
    big_mb: u64,
    reps: usize,
    sizes: Vec<u64>,
    /// Sections to run (all when empty): see the usage message.
    only: Vec<String>,
    /// Single-row ingests before the optimize section compacts them.
    small: u64,
    /// The search section's table.
    search: search::Shape,
    /// The backfill section (S3): keys under the prefix, and how many are new.
    backfill_keys: usize,
    backfill_new: usize,
    /// The sources section (local disk): ledger entries.
    ledger: usize,
    /// The latency model of the roundtrips and contention sections: added to every request.
    delay: Duration,
    /// The contention section: writers at once.
    writers: Vec<usize>,
}

impl Args {
    fn want(&self, section: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == section)
    }
}

fn args() -> Args {
    let search = search::Shape { rows: 200_000, dims: 768, batches: 100, queries: 100, clusters: 256, nprobes: 20, refine: 20 };
    let mut a = Args { root: String::new(), work: std::env::temp_dir().join("sluice-bench"), depth: 1000, big_mb: 1024, reps: 3, sizes: vec![1, 64], only: Vec::new(), small: 500, search, backfill_keys: 10_000, backfill_new: 100, ledger: 100_000, delay: Duration::from_millis(20), writers: vec![1, 8, 32] };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--root" => a.root = val(),
            "--work" => a.work = PathBuf::from(val()),
            "--depth" => a.depth = val().parse().expect("--depth N"),
            "--big-mb" => a.big_mb = val().parse().expect("--big-mb N"),
            "--reps" => a.reps = val().parse().expect("--reps N"),
            "--sizes" => a.sizes = val().split(',').map(|s| s.parse().expect("--sizes MB,MB")).collect(),
            "--only" => a.only = val().split(',').map(String::from).collect(),
            "--small" => a.small = val().parse().expect("--small N"),
            "--vectors" => a.search.rows = val().parse().expect("--vectors N"),
            "--dims" => a.search.dims = val().parse().expect("--dims N"),
            "--batches" => a.search.batches = val().parse().expect("--batches N"),
            "--queries" => a.search.queries = val().parse().expect("--queries N"),
            "--nprobes" => a.search.nprobes = val().parse().expect("--nprobes N"),
            "--refine" => a.search.refine = val().parse().expect("--refine N"),
            "--backfill-keys" => a.backfill_keys = val().parse().expect("--backfill-keys N"),
            "--backfill-new" => a.backfill_new = val().parse().expect("--backfill-new N"),
            "--ledger" => a.ledger = val().parse().expect("--ledger N"),
            "--delay-ms" => a.delay = Duration::from_millis(val().parse().expect("--delay-ms N")),
            "--writers" => a.writers = val().split(',').map(|s| s.parse().expect("--writers N,N")).collect(),
            other => panic!(
                "unknown flag {other}; flags: --root --work --depth --big-mb --reps --sizes --small --vectors --dims --batches --queries --nprobes --refine \
                 --backfill-keys --backfill-new --ledger --delay-ms --writers \
                 --only throughput,csv,many,roundtrips,contention,depth,rss,latency,recovery,optimize,cleanup,search,backfill,sources"
            ),
        }
    }
    if a.root.is_empty() {
        a.root = a.work.join("lakes").display().to_string();
    }
    a
}

/// A JSONL file (or CSV, with a header, if `name` ends in `.csv`) of about
/// `mb` MiB (at least one row); `seed` makes each file's rows distinct.
fn generate(dir: &Path, name: &str, mb: u64, seed: u64) -> PathBuf {
    let path = dir.join(name);
    let csv = name.ends_with(".csv");
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(&path).unwrap());
    if csv {
        w.write_all(b"id,user,kind,amount,ts\n").unwrap();
    }
    let target = mb << 20;
    let (mut written, mut i) = (0u64, 0u64);
    while i == 0 || written < target {
        let (id, user, kind, amount, ts) = (
            seed * 1_000_000_000 + i,
            i % 9973,
            ["view", "click", "buy"][(i % 3) as usize],
            format!("{}.{:02}", i % 1000, i % 100),
            format!("2026-11-{:02}T{:02}:{:02}:00Z", 1 + i % 28, i % 24, i % 60),
        );
        let line = if csv {
            format!("{id},user-{user},{kind},{amount},{ts}\n")
        } else {
            format!("{{\"id\": {id}, \"user\": \"user-{user}\", \"kind\": \"{kind}\", \"amount\": {amount}, \"ts\": \"{ts}\"}}\n")
        };
        w.write_all(line.as_bytes()).unwrap();
        written += line.len() as u64;
        i += 1;
    }
    w.flush().unwrap();
    path
}

/// One ingest of `file` into table `t`: wall time and the requests it made.
async fn sluice_ingest(lake: &Lake, file: &Path) -> (Duration, RequestSnapshot) {
    try_sluice_ingest(lake, file).await.expect("sluice ingest")
}

async fn try_sluice_ingest(lake: &Lake, file: &Path) -> sluice::Result<(Duration, RequestSnapshot)> {
    timed(lake, TableRequest { table: "t".into(), sources: vec![file.display().to_string().into()], ..Default::default() }).await
}

/// One sluice call for `req`: wall time and the requests it made.
async fn timed(lake: &Lake, req: TableRequest) -> sluice::Result<(Duration, RequestSnapshot)> {
    let start = Instant::now();
    let r = ingest::run(lake, vec![req], ingest::Budget::new(TIMEOUT), Arc::new(Progress::default())).await?;
    Ok((start.elapsed(), r.requests))
}

/// Fragments of table `t` as published, and the median time of 5 full scans.
async fn scan_table(lake: &Lake) -> (usize, Duration) {
    use futures::StreamExt;
    let mut times = Vec::new();
    let mut fragments = 0;
    for _ in 0..5 {
        let start = Instant::now();
        let (m, mut batches) = sluice::read::scan(lake, "t", None, None).await.expect("scan");
        let mut rows = 0;
        while let Some(b) = batches.next().await {
            rows += b.expect("batch").num_rows();
        }
        times.push(start.elapsed());
        assert!(rows > 0);
        fragments = lake.open_table("t", Some(m.tables["t"].version)).await.unwrap().fragments().len();
    }
    (fragments, median(times))
}

async fn sluice_ingest_report(lake: &Lake, file: &Path) -> ingest::Report {
    let req = TableRequest { table: "t".into(), sources: vec![file.display().to_string().into()], ..Default::default() };
    ingest::run(lake, vec![req], ingest::Budget::new(TIMEOUT), Arc::new(Progress::default())).await.expect("sluice ingest")
}

/// Plain Lance: open latest, decode with arrow, append. Counted by `lake`'s wrapper.
async fn lance_append(lake: &Lake, file: &Path) -> (Duration, RequestSnapshot) {
    try_lance_append(lake, file).await.expect("plain Lance append")
}

/// One sluice upsert of `file` (key `id`) into table `u`: wall time and requests.
async fn sluice_upsert(lake: &Lake, file: &Path) -> (Duration, RequestSnapshot) {
    let req = TableRequest { table: "u".into(), sources: vec![file.display().to_string().into()], mode: Some(sluice::manifest::Mode::Upsert), key: Some("id".into()), ..Default::default() };
    timed(lake, req).await.expect("sluice upsert")
}

/// Plain Lance's upsert: open latest, arrow's JSON reader, a merge-insert on
/// `id` (update matches, insert the rest). Counted by `lake`'s wrapper.
async fn lance_upsert(lake: &Lake, file: &Path) -> (Duration, RequestSnapshot) {
    lance_write(lake, "plain_upsert", &[file], true).await.expect("plain Lance upsert")
}

/// Arrow's JSON reader over `files` in turn (its CSV reader, header first,
/// for `.csv` files), the schema inferred from the first 1,000 lines of the first.
fn arrow_reader(files: &[&Path]) -> Box<dyn RecordBatchReader + Send> {
    let infer = BufReader::new(std::fs::File::open(files[0]).unwrap());
    let csv = files[0].extension().is_some_and(|e| e == "csv");
    let schema = Arc::new(if csv {
        arrow::csv::reader::Format::default().with_header(true).infer_schema(infer, Some(1000)).unwrap().0
    } else {
        arrow::json::reader::infer_json_schema(infer, Some(1000)).unwrap().0
    });
    let open = {
        let schema = Arc::clone(&schema);
        move |file: &Path| -> Box<dyn RecordBatchReader + Send> {
            let data = BufReader::new(std::fs::File::open(file).unwrap());
            if csv {
                Box::new(arrow::csv::ReaderBuilder::new(Arc::clone(&schema)).with_header(true).build(data).unwrap())
            } else {
                Box::new(arrow::json::ReaderBuilder::new(Arc::clone(&schema)).build(data).unwrap())
            }
        }
    };
    let files: Vec<PathBuf> = files.iter().map(|f| f.to_path_buf()).collect();
    Box::new(arrow::record_batch::RecordBatchIterator::new(files.into_iter().flat_map(move |f| open(&f)), schema))
}

async fn try_lance_append(lake: &Lake, file: &Path) -> lance::Result<(Duration, RequestSnapshot)> {
    lance_write(lake, "plain", &[file], false).await
}

/// Plain Lance into `table`: open latest, arrow's JSON reader, then an append
/// (or a merge-insert on `id` if `upsert`), or the table's creation.
async fn lance_write(lake: &Lake, table: &str, files: &[&Path], upsert: bool) -> lance::Result<(Duration, RequestSnapshot)> {
    use lance::dataset::{MergeInsertBuilder, WhenMatched, WhenNotMatched};
    let before = lake.requests();
    let start = Instant::now();
    let uri = lake.table_uri(table);
    let existing = DatasetBuilder::from_uri(&uri).with_store_params(lake.plain_lance_params()).with_session(lake.session()).load().await;
    let reader = arrow_reader(files);
    match existing {
        Ok(ds) if upsert => {
            let mut builder = MergeInsertBuilder::try_new(Arc::new(ds), vec!["id".into()])?;
            builder.when_matched(WhenMatched::UpdateAll).when_not_matched(WhenNotMatched::InsertAll);
            builder.try_build()?.execute_reader(reader).await?;
        }
        Ok(ds) => {
            let params = WriteParams { mode: WriteMode::Append, ..Default::default() };
            InsertBuilder::new(Arc::new(ds)).with_params(&params).execute_stream(reader).await?;
        }
        Err(_) => {
            let params = WriteParams { mode: WriteMode::Create, store_params: Some(lake.plain_lance_params()), session: Some(lake.session()), ..Default::default() };
            InsertBuilder::new(uri.as_str()).with_params(&params).execute_stream(reader).await?;
        }
    }
    Ok((start.elapsed(), lake.requests().since(&before)))
}

/// Data files of table `t` that its Lance HEAD does not reference: count and bytes.
async fn orphans(lake: &Lake) -> (usize, u64) {
    let listed = lake.list("tables/t.lance/data").await.unwrap();
    let ds = lake.open_table("t", None).await.unwrap();
    let referenced: std::collections::HashSet<String> =
        ds.get_fragments().iter().flat_map(|f| f.metadata().files.iter().map(|d| d.path.rsplit('/').next().unwrap().to_string()).collect::<Vec<_>>()).collect();
    let orphaned: Vec<_> = listed.iter().filter(|m| !referenced.contains(m.location.filename().unwrap())).collect();
    (orphaned.len(), orphaned.iter().map(|m| m.size).sum())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    let idx = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[idx]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// CPU time this process has used, all threads (user + system; Linux's
/// /proc, in its clock ticks of 10 ms).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat (the bench runs on Linux)");
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat[stat.rfind(')').expect("a stat line") + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    Duration::from_millis(ticks * 10)
}

/// Run a `sluice` command; returns wall time and its peak RSS (KiB).
///
/// Measured by GNU time, a small parent: a child's own `ru_maxrss` would
/// inherit this (large) process's high-water mark across fork and exec.
fn timed_child(cmd: &Command) -> (Duration, u64) {
    const MARK: &str = "sluice-bench-maxrss-kib=";
    let mut timed = Command::new("/usr/bin/time");
    timed.arg("-f").arg(format!("{MARK}%M")).arg(cmd.get_program()).args(cmd.get_args());
    let start = Instant::now();
    let out = timed.stdout(std::process::Stdio::null()).output().expect("run /usr/bin/time (Debian package `time`)");
    let elapsed = start.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "sluice child failed: {stderr}");
    let rss = stderr.lines().find_map(|l| l.strip_prefix(MARK)).and_then(|v| v.trim().parse().ok()).expect("GNU time's %M");
    (elapsed, rss)
}

fn main() {
    // Both sides run in this process, with the same Lance settings as the CLI's.
    // SAFETY: no other thread exists yet.
    unsafe { sluice::set_lance_defaults() };
    tokio::runtime::Runtime::new().expect("tokio runtime").block_on(bench());
}

async fn bench() {
    // `SLUICE_LOG=sluice::requests=trace` shows every request, sluice's and Lance's.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let a = args();
    let _ = std::fs::remove_dir_all(&a.work);
    std::fs::create_dir_all(&a.work).unwrap();
    let run = uuid::Uuid::now_v7().simple().to_string();
    // A memory lake's name has no folders: its tables' lakes are siblings.
    let sep = if a.root.starts_with("memory://") { "-" } else { "/" };
    let root = |name: &str| format!("{}{sep}{run}-{name}", a.root.trim_end_matches('/'));
    let sluice_bin = std::env::current_exe().unwrap().with_file_name("sluice");
    let mut rows: Vec<Row> = Vec::new();

    let tiny = |i: u64| generate(&a.work, &format!("tiny-{i}.jsonl"), 0, i + 10);

    // 1. Wall time at 1 MiB and 64 MiB, interleaved so drift hits both alike:
    //    JSON Lines (`throughput`), then CSV (`csv`).
    let formats = [("throughput", "jsonl", "JSONL"), ("csv", "csv", "CSV")];
    for (ext, shown, &mb) in formats.iter().filter(|(section, ..)| a.want(section)).flat_map(|&(_, ext, shown)| a.sizes.iter().map(move |mb| (ext, shown, mb))) {
        let lake = Lake::open(&root(&format!("tp{mb}-{ext}"))).unwrap();
        let (mut s, mut l, mut s_cpu, mut l_cpu) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        // One warm-up each creates the tables, so every timed run is an append.
        let warm = generate(&a.work, &format!("warm.{ext}"), 1, 999);
        sluice_ingest(&lake, &warm).await;
        lance_append(&lake, &warm).await;
        for rep in 0..a.reps {
            let file = generate(&a.work, &format!("tp{mb}-{rep}.{ext}"), mb, rep as u64 + 1);
            let cpu = cpu_time();
            s.push(sluice_ingest(&lake, &file).await.0);
            let between = cpu_time();
            l.push(lance_append(&lake, &file).await.0);
            (s_cpu.push(between - cpu), l_cpu.push(cpu_time() - between));
            std::fs::remove_file(file).unwrap();
        }
        for (what, s, l) in [("wall time", s, l), ("cpu time, all threads", s_cpu, l_cpu)] {
            let (s, l) = (median(s), median(l));
            rows.push((format!("{what}, {mb} MiB {shown} (median of {})", a.reps), ms(s), ms(l), format!("{:.2}x", s.as_secs_f64() / l.as_secs_f64())));
        }
    }

    // 1a. Many files in one call (an SQS batch, a backfill's): eight of 8 MiB.
    if a.want("many") {
        let lake = Lake::open(&root("many")).unwrap();
        let warm = generate(&a.work, "many-warm.jsonl", 1, 999);
        sluice_ingest(&lake, &warm).await;
        lance_append(&lake, &warm).await;
        let (mut s, mut l) = (Vec::new(), Vec::new());
        for rep in 0..a.reps {
            let files: Vec<PathBuf> = (0..8).map(|i| generate(&a.work, &format!("many-{rep}-{i}.jsonl"), 8, 1_000 + rep as u64 * 10 + i)).collect();
            let req = TableRequest { table: "t".into(), sources: files.iter().map(|f| f.display().to_string().into()).collect(), ..Default::default() };
            s.push(timed(&lake, req).await.expect("sluice ingest").0);
            let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
            l.push(lance_write(&lake, "plain", &paths, false).await.expect("plain Lance append").0);
            files.iter().for_each(|f| std::fs::remove_file(f).unwrap());
        }
        let (s, l) = (median(s), median(l));
        rows.push((format!("wall time, 8 JSONL files of 8 MiB in one call (median of {})", a.reps), ms(s), ms(l), format!("{:.2}x", s.as_secs_f64() / l.as_secs_f64())));
    }

    // 1b. Round trips under the latency model, and writers contending.
    if a.want("roundtrips") {
        roundtrips::single(root, &a.work, a.delay, a.reps, &mut rows).await;
    }
    if a.want("contention") {
        roundtrips::contention(root, &a.work, a.delay, &a.writers, &mut rows).await;
    }

    // 2. Requests per single-file ingest at depth 1 and `depth`.
    if a.want("depth") {
    let lake = Lake::open(&root("depth")).unwrap();
    let (_, s1) = sluice_ingest(&lake, &tiny(0)).await;
    let (_, l1) = lance_append(&lake, &tiny(0)).await;
    let (s2, l2) = (sluice_ingest(&lake, &tiny(1)).await.1.total(), lance_append(&lake, &tiny(1)).await.1.total());
    rows.push(("requests per ingest, depth 2".into(), s2.to_string(), l2.to_string(), format!("+{}", s2 as i64 - l2 as i64)));
    let _ = (s1, l1);
    for i in 2..a.depth {
        let f = tiny(i);
        sluice_ingest(&lake, &f).await;
        lance_append(&lake, &f).await;
        std::fs::remove_file(f).unwrap();
    }
    let f = tiny(a.depth + 1);
    let (sd, ld) = (sluice_ingest(&lake, &f).await.1.total(), lance_append(&lake, &f).await.1.total());
    rows.push((format!("requests per ingest, depth {}", a.depth), sd.to_string(), ld.to_string(), format!("+{}", sd as i64 - ld as i64)));
    }

    // 3. Peak RSS of a whole `sluice ingest` process on a big file.
    if a.want("rss") {
    let big = generate(&a.work, "big.jsonl", a.big_mb, 77);
    let big_root = root("big");
    // An append, as most ingests are: a large file is written in parts, side by side.
    timed_child(Command::new(&sluice_bin).args(["--root", &big_root, "--create", "ingest", "--table", "t"]).arg(generate(&a.work, "big-warm.jsonl", 1, 76)));
    let (t, rss) = timed_child(Command::new(&sluice_bin).args(["--root", &big_root, "ingest", "--table", "t"]).arg(&big));
    rows.push((format!("peak RSS, {} MiB JSONL ({:.1} s)", a.big_mb, t.as_secs_f64()), format!("{} MiB", rss / 1024), "-".into(), "-".into()));
    std::fs::remove_file(big).unwrap();
    }

    // 4. Latency of one ingest process alone vs 8 at once (1 MiB files, one table).
    if a.want("latency") {
    let conc_root = root("conc");
    // 8 files alone, then `rounds` rounds of 8 at once.
    let rounds = a.reps.max(1);
    let files: Vec<PathBuf> = (0..8 * (rounds as u64 + 1)).map(|i| generate(&a.work, &format!("c{i}.jsonl"), 1, 500 + i)).collect();
    let ingest_cmd = |f: &Path| {
        let mut c = Command::new(&sluice_bin);
        c.args(["--root", &conc_root, "--create", "ingest", "--table", "t"]).arg(f);
        c
    };
    timed_child(&ingest_cmd(&generate(&a.work, "c-warm.jsonl", 1, 499)));
    let alone: Vec<Duration> = files[..8].iter().map(|f| timed_child(&ingest_cmd(f)).0).collect();
    let mut together = Vec::new();
    for round in 1..=rounds {
        let batch = &files[8 * round..8 * round + 8];
        let handles: Vec<_> = batch.iter().map(|f| {
            let c = ingest_cmd(f);
            std::thread::spawn(move || timed_child(&c).0)
        }).collect();
        together.extend(handles.into_iter().map(|h| h.join().unwrap()));
    }
    let n = together.len();
    rows.push(("ingest latency p50, 1 process alone".into(), ms(percentile(alone.clone(), 0.5)), "-".into(), "-".into()));
    rows.push(("ingest latency p99, 1 process alone".into(), ms(percentile(alone, 0.99)), "-".into(), "-".into()));
    rows.push((format!("ingest latency p50, 8 processes at once ({n} samples)"), ms(percentile(together.clone(), 0.5)), "-".into(), "-".into()));
    rows.push((format!("ingest latency p99, 8 processes at once ({n} samples)"), ms(percentile(together, 0.99)), "-".into(), "-".into()));
    }

    // 5. Recovery: a sweep with 0, 1 and 100 dead writers (each died after its
    // Lance commit: its manifest PUT was refused), and heal-first on an ingest
    // when nothing is pending.
    for dead in [0u32, 1, 100].into_iter().filter(|_| a.want("recovery")) {
        let mut faults = None;
        let lake = Lake::open_wrapped(&root(&format!("sweep{dead}")), |inner| {
            let store = Arc::new(sluice::faults::FaultStore::new(inner));
            faults = Some(Arc::clone(&store));
            store
        })
        .unwrap();
        sluice_ingest(&lake, &tiny(9_000)).await;
        if dead == 0 {
            let again = sluice_ingest_report(&lake, &tiny(9_001)).await;
            rows.push(("heal-first on an ingest, nothing pending".into(), format!("{} LIST ({} requests in all)", again.requests.list, again.requests.total()), "-".into(), "-".into()));
        }
        faults.unwrap().inject("_manifest/versions", sluice::faults::Fault::Rejected, dead);
        // A large skew keeps each writer from healing the ones that died before it.
        let short = ingest::Budget { timeout: Duration::from_secs(2), clock_skew: Duration::from_secs(3600) };
        for i in 0..dead {
            let f = tiny(10_000 + u64::from(i));
            let req = TableRequest { table: "t".into(), sources: vec![f.display().to_string().into()], ..Default::default() };
            let r = ingest::run(&lake, vec![req], short, Arc::new(Progress::default())).await;
            assert!(r.is_err(), "the writer must die after its commit: {r:?}");
        }
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let opts = sluice::recover::Options { clock_skew: Duration::ZERO, dry_run: false };
        let start = Instant::now();
        let report = sluice::recover::sweep(&lake, opts, TIMEOUT).await.expect("sweep");
        let took = start.elapsed();
        assert_eq!(report.pending, dead as usize);
        assert!(report.ops.iter().all(|o| matches!(o.action, sluice::recover::Action::Decided { .. })), "{report:?}");
        let r = &report.requests;
        rows.push((
            format!("recovery sweep, {dead} dead writer(s)"),
            format!("{} ({} requests: {} LIST, {} GET, {} PUT, {} DELETE)", ms(took), r.total(), r.list, r.get, r.put, r.delete),
            "-".into(),
            "-".into(),
        ));
    }

    // 6. Optimize after many small ingests: fragments, full-scan time, cost.
    if a.want("optimize") {
        let lake = Lake::open(&root("optimize")).unwrap();
        let n = a.small;
        for i in 0..n {
            let f = tiny(20_000 + i);
            sluice_ingest(&lake, &f).await;
            std::fs::remove_file(f).unwrap();
        }
        let (before_frags, before_scan) = scan_table(&lake).await;
        // A separate `sluice optimize` process: a cold start, as a scheduled worker has.
        let start = Instant::now();
        let out = Command::new(&sluice_bin).args(["--root", &root("optimize"), "--json", "optimize"]).output().expect("run sluice optimize");
        let took = start.elapsed();
        assert!(out.status.success(), "sluice optimize: {}", String::from_utf8_lossy(&out.stderr));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("optimize --json");
        let (after_frags, after_scan) = scan_table(&Lake::open(&root("optimize")).unwrap()).await;
        let r = &report["requests"];
        rows.push((
            format!("optimize after {n} single-row ingests (one process)"),
            format!("{} ({} GET, {} PUT, {} LIST, {} DELETE)", ms(took), r["get"], r["put"], r["list"], r["delete"]),
            "-".into(),
            "-".into(),
        ));
        rows.push(("fragments before / after optimize".into(), format!("{before_frags} / {after_frags}"), "-".into(), "-".into()));
        rows.push((
            "full scan before / after optimize (median of 5)".into(),
            format!("{} / {}", ms(before_scan), ms(after_scan)),
            "-".into(),
            format!("{:.1}x faster", before_scan.as_secs_f64() / after_scan.as_secs_f64()),
        ));
    }

    // 7. Cleanup after killed ingests: 20 `sluice ingest` processes killed with
    // SIGKILL at spread-out moments (before, during and after staging their
    // files), then one `sluice cleanup`, which first lets recovery decide them.
    if a.want("cleanup") {
        let croot = root("cleanup");
        let lake = Lake::open(&croot).unwrap();
        sluice_ingest(&lake, &tiny(30_000)).await;
        let files: Vec<PathBuf> = (0..21).map(|i| generate(&a.work, &format!("kill-{i}.jsonl"), 4, 31_000 + i)).collect();
        let ingest_cmd = |f: &Path| {
            let mut c = Command::new(&sluice_bin);
            c.args(["--root", &croot, "--create", "ingest", "--timeout", "5s", "--table", "t"]).arg(f).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
            c
        };
        // How long one uninterrupted ingest takes, to spread the kills over it.
        let start = Instant::now();
        assert!(ingest_cmd(&files[20]).status().unwrap().success());
        let full = start.elapsed();
        for (i, f) in files[..20].iter().enumerate() {
            let mut child = ingest_cmd(f).spawn().unwrap();
            std::thread::sleep(full.mul_f64((i as f64 + 1.0) / 21.0));
            child.kill().unwrap();
            child.wait().unwrap();
        }
        let (orphan_files, orphan_bytes) = orphans(&lake).await;
        tokio::time::sleep(Duration::from_secs(6)).await; // the dead writers' deadlines pass
        let start = Instant::now();
        let out = Command::new(&sluice_bin).args(["--root", &croot, "--json", "--clock-skew", "0s", "cleanup"]).output().expect("run sluice cleanup");
        let took = start.elapsed();
        assert!(out.status.success(), "sluice cleanup: {}", String::from_utf8_lossy(&out.stderr));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("cleanup --json");
        let (left_files, left_bytes) = orphans(&Lake::open(&croot).unwrap()).await;
        let r = &report["requests"];
        rows.push((
            format!("cleanup after 20 killed ingests (one process; recovery decided {})", report["recovery"]["pending"]),
            format!("{} ({} GET, {} PUT, {} LIST, {} DELETE)", ms(took), r["get"], r["put"], r["list"], r["delete"]),
            "-".into(),
            "-".into(),
        ));
        rows.push((
            "orphan data of dead writers before / after cleanup".into(),
            format!("{orphan_files} files, {orphan_bytes} B / {left_files} files, {left_bytes} B"),
            "-".into(),
            format!("{} B reclaimed", report["tables"][0]["bytes_removed"]),
        ));
        for f in files {
            std::fs::remove_file(f).unwrap();
        }
    }

    // 9. Backfill on S3 (the listing's ETags are the identities), and
    // `sources` on local disk (a ledger of any size, written fast).
    match a.root.strip_prefix("s3://") {
        Some(rest) if a.want("backfill") => {
            let bucket = rest.split('/').next().unwrap();
            backfill::s3(&root("backfill"), bucket, &format!("{run}-backfill-src"), a.backfill_keys, a.backfill_new, &mut rows).await;
        }
        None if a.want("sources") => backfill::sources(&root("sources"), &a.work, a.ledger, &mut rows).await,
        _ => {}
    }

    // 8. Search: recall and latency with indices kept fresh by optimize.
    if a.want("search") {
        search::run(&root("search"), &a.work, &a.search, &mut rows).await;
    }

    println!("store: {}", a.root);
    println!("| measure | sluice | plain Lance | sluice / Lance |");
    println!("|---|---|---|---|");
    for (m, s, l, r) in rows {
        println!("| {m} | {s} | {l} | {r} |");
    }
}
