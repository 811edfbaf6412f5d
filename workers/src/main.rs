//! `sluice`: the command-line face of the workers. Exit codes: 0 success (also
//! "already ingested"), 1 failure, 2 usage, 3 bad input.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;
use sluice::decode::{Format, Progress};
use sluice::ingest::{self, Budget, Report, SourceStatus, TableRequest};
use sluice::recover::{self, Action};
use sluice::manifest::{self, Mode};
use sluice::optimize;
use sluice::partitions::Partitions;
use sluice::lake::Timing;
use sluice::{Error, Lake, Result, cleanup, read};

mod fanout;

#[derive(Parser)]
#[command(name = "sluice", version, about = "Ingest files into Lance tables on S3, exactly once, with no server")]
struct Cli {
    /// Lake root: s3://BUCKET/PREFIX, memory://NAME or a local path.
    #[arg(long, global = true, env = "SLUICE_ROOT", default_value = "./lake")]
    root: String,
    /// Print machine-readable JSON.
    #[arg(long, global = true)]
    json: bool,
    /// How long past another worker's deadline it is presumed dead (clocks may disagree).
    #[arg(long, global = true, env = "SLUICE_CLOCK_SKEW", default_value = "1m", value_parser = humantime::parse_duration)]
    clock_skew: Duration,
    /// Cleanup keeps a manifest version until its successor is at least this old; workers
    /// re-check with a LIST before trusting an older one. Must exceed the longest --timeout
    /// plus the clock skew, and be the same on every worker of a lake.
    #[arg(long, global = true, env = "SLUICE_RETENTION_FLOOR", default_value = "1h", value_parser = humantime::parse_duration)]
    retention_floor: Duration,
    /// Let ingest, load and backfill create the lake if the root holds none
    /// (otherwise that is an error: `sluice init` creates it).
    #[arg(long, global = true, env = "SLUICE_CREATE", value_parser = clap::builder::BoolishValueParser::new(), num_args = 0, default_missing_value = "true", default_value = "false")]
    create: bool,
    #[command(subcommand)]
    command: Command,
}

/// How CSV sources are written.
#[derive(clap::Args, Clone)]
struct CsvArgs {
    /// CSV field delimiter: a character, or tab / '\t' (default: a tab for .tsv files, else
    /// the one of , ; tab | the first line uses most).
    #[arg(long, value_parser = parse_delimiter)]
    delimiter: Option<char>,
    /// CSV quote character.
    #[arg(long, default_value_t = '"')]
    quote: char,
    /// CSV files have no header row: columns are the table's, in order.
    #[arg(long)]
    no_header: bool,
    /// A CSV text meaning null, besides the empty field (repeatable: --null NA --null '\N').
    #[arg(long = "null")]
    nulls: Vec<String>,
}

fn parse_delimiter(s: &str) -> std::result::Result<char, String> {
    match s {
        "tab" | "\\t" | "\t" => Ok('\t'),
        _ => {
            let mut chars = s.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) => Ok(c),
                _ => Err(format!("'{s}': one character, or tab")),
            }
        }
    }
}

impl CsvArgs {
    fn options(self) -> Result<Option<sluice::dialect::CsvOptions>> {
        let opts = sluice::dialect::CsvOptions { delimiter: self.delimiter, quote: self.quote, header: !self.no_header, nulls: self.nulls };
        opts.check()?;
        Ok((opts != sluice::dialect::CsvOptions::default()).then_some(opts))
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum SourceStatusArg {
    Ingested,
    InFlight,
    Quarantined,
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    Append,
    Upsert,
}

#[derive(Clone, Copy, ValueEnum)]
enum OutFormat {
    Jsonl,
    Csv,
}

#[derive(Subcommand)]
enum IndexCommand {
    /// Declare an index on COLUMN and build it; it is published with the table.
    Create {
        table: String,
        column: String,
        /// ivf_pq, ivf_hnsw_sq or ivf_flat (a vector column); btree, bitmap
        /// or label_list (a scalar or list column); fts (a text column).
        #[arg(long = "type")]
        kind: String,
        /// Vector indices: l2 (default), cosine or dot.
        #[arg(long)]
        metric: Option<String>,
        /// Default: COLUMN_idx.
        #[arg(long)]
        name: Option<String>,
        /// IVF partitions (default: about the square root of the rows).
        #[arg(long)]
        partitions: Option<u32>,
        /// PQ sub-vectors (default: a sixteenth or eighth of the dimensions).
        #[arg(long)]
        sub_vectors: Option<u32>,
        #[command(flatten)]
        timeout: Timeout,
    },
    /// The declared indices, with rows indexed and not yet indexed.
    List { table: Option<String> },
    /// Drop an index from the table's settings and from Lance.
    Drop {
        table: String,
        name: String,
        #[command(flatten)]
        timeout: Timeout,
    },
}

/// How long an operation may take, whatever it is.
#[derive(clap::Args)]
struct Timeout {
    /// Budget for the whole operation, e.g. 90s, 15m.
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

#[derive(Subcommand)]
enum Command {
    /// Create the lake (idempotent).
    Init,
    /// Ingest source files (local paths or s3:// URLs) into a table, exactly once.
    Ingest {
        /// Target table; default: each source's folder name (.../<table>/<file>).
        #[arg(long)]
        table: Option<String>,
        /// Input format: jsonl, csv, parquet, arrow, arrow-stream; default: from the name.
        #[arg(long)]
        format: Option<String>,
        /// How a new table takes rows (kept in the lake).
        #[arg(long, value_enum)]
        mode: Option<ModeArg>,
        /// Key column for --mode upsert (alone, it asks for an upsert table).
        #[arg(long)]
        key: Option<String>,
        #[command(flatten)]
        csv: CsvArgs,
        /// A new table's `key=value` path folders: NAME:TYPE,... stores them as
        /// columns (date:date,hour:int32); off only routes by them.
        #[arg(long)]
        partitions: Option<String>,
        /// Schema for a new table instead of inferring one: a JSON file
        /// `{"columns": [{"name": "id", "type": "Int64", "nullable": false}]}`.
        #[arg(long)]
        schema: Option<PathBuf>,
        /// What the table does with what it lacks, from now on (kept in the
        /// lake): strict (bad input), add-columns (a new nullable column) or
        /// rescue (fields and values that do not fit go to _rescued_data as
        /// JSON); default: as it does now, strict for a new table.
        #[arg(long)]
        evolution: Option<String>,
        #[command(flatten)]
        timeout: Timeout,
        #[arg(required = true)]
        sources: Vec<String>,
    },
    /// Ingest what a folder, glob or s3://bucket/prefix/ holds that the lake
    /// does not: sources whose events were lost. Safe to rerun at any time.
    Backfill {
        /// Folders, globs ('data/*.jsonl', quoted) or s3://BUCKET/PREFIX/.
        #[arg(required = true)]
        specs: Vec<String>,
        /// Only files modified at or after this time: RFC 3339, or a span ago (6h, 2days).
        #[arg(long, value_parser = sluice::discover::parse_since)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// Target table; default: each file's folder name.
        #[arg(long)]
        table: Option<String>,
        /// Input format: jsonl, csv, parquet, arrow, arrow-stream; default: from each name.
        #[arg(long)]
        format: Option<String>,
        #[command(flatten)]
        csv: CsvArgs,
        /// A new table's `key=value` path folders: NAME:TYPE,... stores them as
        /// columns (date:date,hour:int32); off only routes by them.
        #[arg(long)]
        partitions: Option<String>,
        /// strict, add-columns or rescue, as for `ingest`.
        #[arg(long)]
        evolution: Option<String>,
        /// Files per batch: one Lance commit and one publish each.
        #[arg(long, default_value_t = sluice::discover::DEFAULT_BATCH)]
        batch: usize,
        #[command(flatten)]
        timeout: Timeout,
        /// List and check the ledger only: say what would be ingested.
        #[arg(long)]
        dry_run: bool,
    },
    /// Load several tables from a JSON descriptor: all visible at once, or none.
    Load {
        descriptor: PathBuf,
        #[command(flatten)]
        timeout: Timeout,
    },
    /// Manifest version, tables, and operations in flight.
    Status,
    /// What became of each source: ingested (newest first, with the manifest
    /// version that published it), in flight, or quarantined and why.
    Sources {
        /// Only this table's sources.
        #[arg(long)]
        table: Option<String>,
        /// Only sources published (started, quarantined) at or after: RFC 3339 or a span ago (6h).
        #[arg(long, value_parser = sluice::discover::parse_since)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// ingested, in-flight or quarantined (repeatable; default all).
        #[arg(long, value_enum)]
        status: Vec<SourceStatusArg>,
        /// At most this many ingested sources.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Rows of a table as a manifest version pins it.
    Scan {
        table: String,
        /// Manifest version (default: latest).
        #[arg(long)]
        at: Option<u64>,
        #[arg(long, value_enum, default_value = "jsonl")]
        format: OutFormat,
        /// At most this many rows.
        #[arg(long)]
        limit: Option<u64>,
        /// Only rows matching this SQL predicate (`price > 10 AND region = 'eu'`).
        #[arg(long = "where")]
        filter: Option<String>,
        /// Only these columns (comma-separated).
        #[arg(long, value_delimiter = ',')]
        columns: Option<Vec<String>>,
    },
    /// Nearest rows to a vector, or rows matching a text query, at the pinned
    /// version (rows no index covers yet are searched too).
    Search {
        table: String,
        /// Query vector as a JSON array: '[0.1, 0.2, ...]'.
        #[arg(long, conflicts_with = "text", required_unless_present = "text")]
        vector: Option<String>,
        /// Full-text query (needs an fts index on the column).
        #[arg(long)]
        text: Option<String>,
        /// The vector column (default: the table's only one).
        #[arg(long)]
        column: Option<String>,
        /// Only rows matching this SQL predicate.
        #[arg(long = "where")]
        filter: Option<String>,
        /// How many rows.
        #[arg(long, default_value_t = 10)]
        k: usize,
        /// Only these columns (comma-separated).
        #[arg(long, value_delimiter = ',')]
        columns: Option<Vec<String>>,
        /// Manifest version (default: latest).
        #[arg(long)]
        at: Option<u64>,
        /// IVF partitions to probe (more: better recall, slower).
        #[arg(long, default_value_t = 20)]
        nprobes: usize,
        /// Re-rank this many times k candidates by exact distance (0: none).
        /// IVF_PQ's codes alone blur close neighbours: 20 found 0.95 of the
        /// true 10 nearest in the benchmark, 10 about 0.85.
        #[arg(long, default_value_t = 20)]
        refine: u32,
        #[arg(long, value_enum, default_value = "jsonl")]
        format: OutFormat,
    },
    /// Declare, list or drop a table's indices (kept fresh by `optimize`).
    Index {
        #[command(subcommand)]
        action: IndexCommand,
    },
    /// Manifest versions, newest first, with what each published.
    History {
        /// At most this many versions.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Finish or undo the operations of workers that died (deadline + --clock-skew passed).
    Recover {
        /// Say what would be decided; change nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        timeout: Timeout,
    },
    /// Accept the commits another tool (pylance, LanceDB) made to TABLE after its
    /// published version, and publish them; sluice otherwise refuses to publish
    /// rows it cannot attribute.
    Adopt {
        table: String,
        /// Adopt exactly this Lance version (repeatable), also one sluice wrote that
        /// can be neither published nor removed; default: every foreign commit.
        #[arg(long = "version")]
        versions: Vec<u64>,
        /// List the foreign commits; adopt nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        timeout: Timeout,
    },
    /// Compact small fragments of published tables (all, or those named).
    Optimize {
        tables: Vec<String>,
        /// Say what would be compacted; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Fragments with fewer rows than this are compacted: N for every table,
        /// TABLE=N for one (repeatable). Default 1048576.
        #[arg(long, value_name = "[TABLE=]N")]
        target_rows: Vec<String>,
        /// At most this many source fragments per table and run (a bigger backlog
        /// takes several runs): N or TABLE=N. Default 1000.
        #[arg(long, value_name = "[TABLE=]N")]
        max_fragments: Vec<String>,
        /// At most about this many source bytes per table and run (at least one
        /// task runs): N or TABLE=N. Default: no limit.
        #[arg(long, value_name = "[TABLE=]N")]
        max_bytes: Vec<String>,
        /// Run each table's compaction tasks in up to N processes; one commit.
        #[arg(long, default_value_t = 1)]
        parallel: usize,
        /// Declared indices: the rows they miss become a new segment merged
        /// into the newest N segments (0 keeps every segment).
        #[arg(long, default_value_t = 1)]
        index_merge: usize,
        #[command(flatten)]
        timeout: Timeout,
    },
    /// (Internal) run compaction tasks read from stdin as JSON; print their results.
    #[command(hide = true)]
    CompactTasks {
        #[command(flatten)]
        timeout: Timeout,
    },
    /// Remove old manifest and Lance versions, dead writers' files and spent sidecars.
    Cleanup {
        /// Say what would be removed; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Keep a manifest version until its successor is this old (at least --retention-floor).
        #[arg(long, value_parser = humantime::parse_duration)]
        keep: Option<Duration>,
        /// Always keep this many newest manifest versions.
        #[arg(long, default_value_t = 10)]
        keep_versions: usize,
        /// Keep recovery's audit records this long.
        #[arg(long, default_value = "30days", value_parser = humantime::parse_duration)]
        keep_audit: Duration,
        #[command(flatten)]
        timeout: Timeout,
    },
    /// What recovery decided, newest first.
    Audit {
        /// At most this many records.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

fn main() -> ExitCode {
    // SAFETY: no other thread exists yet.
    unsafe { sluice::set_lance_defaults() };
    let _failpoints = fail::FailScenario::setup();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let json = cli.json;
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if json {
                let body = json!({"error": {"message": e.to_string(), "exit_code": e.exit_code(), "bad_input": match &e {
                    Error::BadInput(b) => serde_json::to_value(b).ok(),
                    _ => None,
                }}});
                println!("{body}");
            }
            eprintln!("sluice: error: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

/// A mistyped root holds no lake: say so, rather than report an empty one
/// (commands that only read or repair would otherwise find nothing to do).
async fn require_lake(lake: &Lake) -> Result<()> {
    sluice::read::manifest_at(lake, None).await.map(|_| ())
}

async fn run(cli: Cli) -> Result<()> {
    let clock_skew = cli.clock_skew;
    let lake = Lake::open(&cli.root)?.with_timing(Timing { clock_skew, retention_floor: cli.retention_floor }).with_create(cli.create);
    match cli.command {
        Command::Init => {
            let m = manifest::init(&lake).await?;
            emit(cli.json, &json!({"root": lake.uri(), "manifest_version": m.version}), || {
                format!("lake ready at {} (manifest version {})", lake.uri(), m.version)
            });
        }
        Command::Ingest { table, format, mode, key, csv, partitions, schema, evolution, timeout: Timeout { timeout }, sources } => {
            let format = format.as_deref().map(str::parse::<Format>).transpose()?;
            let evolution = evolution.as_deref().map(str::parse).transpose()?;
            let csv = csv.options()?;
            let partitions = partitions.as_deref().map(Partitions::parse).transpose()?;
            let schema = match schema {
                Some(path) => Some(sluice::decode::parse_declared_schema(
                    &std::fs::read_to_string(&path).map_err(|e| Error::Usage(format!("schema file {}: {e}", path.display())))?,
                )?),
                None => None,
            };
            let mode = mode.map(|m| match m {
                ModeArg::Append => Mode::Append,
                ModeArg::Upsert => Mode::Upsert,
            });
            // A folder, glob or prefix: listed, and ingested in batches less what the lake holds.
            if sources.iter().any(|s| sluice::discover::is_collection(s)) {
                let template = TableRequest { format, csv, partitions, mode, key: key.clone(), schema: schema.clone(), evolution, ..Default::default() };
                let route = |uris: &[String]| sluice::discover::route_by_folder(uris, table.as_deref(), &template);
                let plan = sluice::discover::Plan {
                    specs: sources, since: None, route: &route, batch: sluice::discover::DEFAULT_BATCH,
                    budget: Budget { timeout, clock_skew }, dry_run: false,
                };
                return backfill(&lake, plan, cli.json).await;
            }
            for (table, sources) in ingest::route(&sources, table.as_deref())? {
                let sources = sources.into_iter().map(Into::into).collect();
                let request = TableRequest {
                    table, sources, format, csv: csv.clone(), partitions: partitions.clone(), mode, key: key.clone(), schema: schema.clone(), indices: Vec::new(),
                    evolution,
                };
                let n = request.sources.len();
                let report = with_progress(n, async |p| ingest::run(&lake, vec![request], Budget { timeout, clock_skew }, p).await).await?;
                print_report(cli.json, &report);
            }
        }
        Command::Backfill { specs, since, table, format, csv, partitions, evolution, batch, timeout: Timeout { timeout }, dry_run } => {
            if batch == 0 {
                return Err(Error::Usage("--batch must be at least 1".into()));
            }
            let format = format.as_deref().map(str::parse::<Format>).transpose()?;
            let partitions = partitions.as_deref().map(Partitions::parse).transpose()?;
            let evolution = evolution.as_deref().map(str::parse).transpose()?;
            let template = TableRequest { format, csv: csv.options()?, partitions, evolution, ..Default::default() };
            let route = |uris: &[String]| sluice::discover::route_by_folder(uris, table.as_deref(), &template);
            let plan = sluice::discover::Plan { specs, since, route: &route, batch, budget: Budget { timeout, clock_skew }, dry_run };
            backfill(&lake, plan, cli.json).await?;
        }
        Command::Load { descriptor, timeout: Timeout { timeout } } => {
            let requests = read_descriptor(&descriptor)?;
            let n = requests.iter().map(|r| r.sources.len()).sum();
            let report = with_progress(n, async |p| ingest::run(&lake, requests, Budget { timeout, clock_skew }, p).await).await?;
            print_report(cli.json, &report);
        }
        Command::Sources { table, since, status, limit } => {
            require_lake(&lake).await?;
            use sluice::loads::{self, Status};
            let statuses = status
                .into_iter()
                .map(|s| match s {
                    SourceStatusArg::Ingested => Status::Ingested,
                    SourceStatusArg::InFlight => Status::InFlight,
                    SourceStatusArg::Quarantined => Status::Quarantined,
                })
                .collect();
            let entries = loads::list(&lake, &loads::Filter { table, since, statuses, limit }).await?;
            if cli.json {
                for e in &entries {
                    emit(true, e, String::new);
                }
            } else {
                let mut out = std::io::stdout().lock();
                for e in &entries {
                    let what = match e.status {
                        Status::Ingested => "ingested",
                        Status::InFlight => "in-flight",
                        Status::Quarantined => "quarantined",
                    };
                    let version = e.manifest_version.map(|v| format!(" v{v}")).unwrap_or_default();
                    let size = match (e.rows, e.bytes) {
                        (Some(r), Some(b)) => format!(" {r} rows {b} bytes"),
                        (None, Some(b)) => format!(" {b} bytes"),
                        _ => String::new(),
                    };
                    let table = e.table.as_deref().map(|t| format!(" -> {t}")).unwrap_or_default();
                    let _ = writeln!(out, "{what:<11} {} {}{table}{version}{size} (op {})", e.at.format("%Y-%m-%dT%H:%M:%SZ"), e.uri, e.op);
                    if let Some(r) = &e.reason {
                        let _ = writeln!(out, "            {r}");
                    }
                }
            }
        }
        Command::Status => {
            let s = read::status(&lake).await?;
            emit(cli.json, &s, || {
                let mut out = format!("lake {}\nmanifest version {} published {}\n", s.root, s.manifest_version, s.published_at);
                if s.tables.is_empty() {
                    out.push_str("no tables yet\n");
                }
                for t in &s.tables {
                    let key = t.key.as_deref().map(|k| format!(" key={k}")).unwrap_or_default();
                    let evolution = if t.evolution.is_strict() { String::new() } else { format!(" {}", t.evolution.name()) };
                    out.push_str(&format!(
                        "  table {:<24} lance v{:<6} {:>12} rows {:>6} fragments  {}{key}{evolution}\n",
                        t.name, t.pinned_version, t.rows, t.fragments, t.mode
                    ));
                    for i in &t.indices {
                        out.push_str(&format!("    index {}\n", index_line(i)));
                    }
                }
                if s.pending.is_empty() {
                    out.push_str("no operations in flight\n");
                }
                for p in &s.pending {
                    out.push_str(&format!(
                        "  pending {} {} on {:?}: {} source(s), worker {}, age {}s, deadline {}{}\n",
                        p.kind, p.op, p.tables, p.sources, p.worker, p.age_seconds, p.deadline,
                        if p.expired { " (EXPIRED: run recovery)" } else { "" }
                    ));
                }
                out.trim_end().to_string()
            });
        }
        Command::Scan { table, at, format, limit, filter, columns } => {
            let (_, batches) = read::query(&lake, &table, at, read::Query { limit, filter, columns, ..Default::default() }).await?;
            write_rows(batches, format).await?;
        }
        Command::Search { table, vector, text, column, filter, k, columns, at, nprobes, refine, format } => {
            let nearest = match vector {
                Some(v) => {
                    let vector: Vec<f32> = serde_json::from_str(&v).map_err(|e| Error::Usage(format!("--vector must be a JSON array of numbers: {e}")))?;
                    Some(read::Nearest { column, vector, k, nprobes: Some(nprobes), refine: (refine > 0).then_some(refine) })
                }
                None => None,
            };
            let q = read::Query { limit: Some(k as u64), filter, columns, nearest, text };
            let (_, batches) = read::query(&lake, &table, at, q).await?;
            write_rows(batches, format).await?;
        }
        Command::Index { action } => run_index(&lake, cli.json, clock_skew, action).await?,
        Command::Recover { dry_run, timeout: Timeout { timeout } } => {
            require_lake(&lake).await?;
            lake.timing().check_timeout(timeout)?;
            let report = recover::sweep(&lake, recover::Options { clock_skew, dry_run }, timeout).await?;
            emit(cli.json, &report, || {
                let mut out = format!("{} operation(s) pending\n", report.pending);
                for o in &report.ops {
                    let what = match &o.action {
                        Action::Live { expires_at } => format!("live (presumed dead after {expires_at})"),
                        Action::Decided { verdict, manifest_version: Some(v) } => format!("{verdict} (manifest version {v})"),
                        Action::Decided { verdict, manifest_version: None } => verdict.to_string(),
                        Action::Planned { verdict } => format!("would be {verdict}"),
                        Action::DoneByOther { verdict: Some(v) } => format!("{v} by another worker"),
                        Action::DoneByOther { verdict: None } => "finished by another worker".into(),
                        Action::Deferred { reason } => format!("deferred: {reason}"),
                        Action::Refused { reason } => format!("REFUSED: {reason}"),
                        Action::Failed { error } => format!("FAILED: {error}"),
                    };
                    out.push_str(&format!("  {} {} {:?}: {what}\n", o.kind, o.op, o.tables));
                }
                out.trim_end().to_string()
            });
            if report.unresolved() > 0 {
                return Err(Error::Blocked(format!(
                    "recovery refused or failed on {} operation(s); their intents are kept (see above) for a person or the next sweep",
                    report.unresolved()
                )));
            }
        }
        Command::Optimize { tables, dry_run, target_rows, max_fragments, max_bytes, parallel, index_merge, timeout: Timeout { timeout } } => {
            let mut opts = optimize::Options::parse(&target_rows, &max_fragments, &max_bytes, parallel, dry_run)?;
            opts.index_merge = index_merge;
            let budget = Budget { timeout, clock_skew };
            let report = if parallel > 1 {
                let processes = fanout::Processes { root: cli.root.clone(), clock_skew, retention_floor: cli.retention_floor };
                optimize::run(&lake, &tables, &opts, budget, &processes).await?
            } else {
                optimize::run(&lake, &tables, &opts, budget, &optimize::InProcess).await?
            };
            emit(cli.json, &report, || {
                let lines: Vec<String> = report
                    .tables
                    .iter()
                    .map(|t| {
                        let what = match &t.action {
                            optimize::TableAction::NothingToDo => "nothing to compact".to_string(),
                            optimize::TableAction::Planned { tasks, source_fragments } => format!("would compact {source_fragments} fragments in {tasks} task(s)"),
                            optimize::TableAction::Compacted { lance_version, manifest_version, tasks, workers, .. } => {
                                format!("compacted in {tasks} task(s) on {workers} worker(s) (lance v{lance_version}, manifest version {manifest_version})")
                            }
                            optimize::TableAction::NotDone { reason } => return format!("table {}: not done ({reason}); the next run plans it again", t.table),
                        };
                        let mut line = format!("table {}: {} -> {} fragments: {what}", t.table, t.fragments_before.expect("known for every table the run opened"), t.fragments_after.expect("known for every table the run opened"));
                        if let Some(ix) = &t.indices {
                            let built: Vec<&str> = ix.built.iter().map(|r| r.index.as_str()).collect();
                            line.push_str(&format!("; indices: {} row(s) were not indexed", ix.rows_unindexed_before));
                            if !built.is_empty() {
                                line.push_str(&format!(", built {}", built.join(", ")));
                            }
                            if let Some(u) = &ix.updated {
                                line.push_str(&format!(", updated {}", u.index));
                            }
                            if let Some(why) = &ix.not_done {
                                line.push_str(&format!(", not done ({why}); the next run goes on"));
                            }
                        }
                        line
                    })
                    .collect();
                if lines.is_empty() { "no tables".into() } else { lines.join("\n") }
            });
        }
        Command::Cleanup { dry_run, keep, keep_versions, keep_audit, timeout: Timeout { timeout } } => {
            let defaults = cleanup::Options::for_lake(&lake);
            let opts = cleanup::Options { keep: keep.unwrap_or(defaults.keep), keep_versions, keep_audit, dry_run };
            let report = cleanup::run(&lake, opts, timeout).await?;
            emit(cli.json, &report, || {
                let verb = if report.dry_run { "would remove" } else { "removed" };
                let m = &report.manifest;
                let mut out = format!(
                    "recovery: {} operation(s) pending\nmanifest: {verb} {} version(s); keeping {}..={}\n",
                    report.recovery.pending, m.removed, m.oldest_kept, m.latest
                );
                for t in &report.tables {
                    out.push_str(&format!(
                        "table {}: {verb} {} Lance version(s), {} data file(s), {} other file(s), {} bytes; keeping v{} and up\n",
                        t.table, t.lance_versions_removed, t.data_files_removed, t.other_files_removed, t.bytes_removed, t.kept_from
                    ));
                }
                let s = &report.sidecars;
                out.push_str(&format!("sidecars: {verb} {} lease(s), {} audit record(s), {} queue entry(ies)", s.leases, s.audit_records, s.queue_entries));
                if !report.not_done.is_empty() {
                    out.push_str(&format!("\nnot done (out of time; the next run does them): {}", report.not_done.join(", ")));
                }
                out
            });
            if report.recovery.unresolved() > 0 {
                return Err(Error::Blocked(format!(
                    "recovery refused or failed on {} operation(s) (run `sluice recover` for details); cleanup kept what they may need",
                    report.recovery.unresolved()
                )));
            }
        }
        Command::CompactTasks { timeout: Timeout { timeout } } => {
            fanout::exit_with_parent();
            let batch: optimize::Batch = serde_json::from_reader(std::io::stdin().lock())
                .map_err(|e| Error::Usage(format!("compact-tasks reads a batch of compaction tasks as JSON on stdin: {e}")))?;
            let results = optimize::execute_batch(&lake, &batch, &sluice::deadline::Deadline::after(timeout)).await?;
            println!("{}", serde_json::to_string(&results).expect("rewrite results serialize"));
        }
        Command::Adopt { table, versions, dry_run, timeout: Timeout { timeout } } => {
            let report = sluice::adopt::run(&lake, &table, &versions, dry_run, timeout).await?;
            emit(cli.json, &report, || {
                let mut out = String::new();
                if report.adopted.is_empty() {
                    out.push_str(&format!("table '{table}': no foreign commits after version {}\n", report.pin));
                }
                for a in &report.adopted {
                    let verb = if dry_run { "would adopt" } else { "adopted" };
                    out.push_str(&format!("{verb} table '{table}' version {} ({})\n", a.version, a.operation));
                }
                match (report.manifest_version, &report.not_published) {
                    (Some(v), _) => out.push_str(&format!("published in manifest version {v}")),
                    (None, Some(why)) => out.push_str(&format!("not published: {why}")),
                    (None, None) => {}
                }
                out.trim_end().to_string()
            });
        }
        Command::Audit { limit } => {
            require_lake(&lake).await?;
            let records = sluice::audit::list(&lake, limit).await?;
            emit(cli.json, &records, || {
                if records.is_empty() {
                    return "no recovery decisions recorded".into();
                }
                records
                    .iter()
                    .map(|r| {
                        let at = r.decided_at.format("%Y-%m-%d %H:%M:%S");
                        format!("{at}  {} {} {:?}: {} — {}", r.kind, r.op, r.tables.keys().collect::<Vec<_>>(), r.verdict, r.reason)
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        Command::History { limit } => {
            require_lake(&lake).await?;
            let versions = manifest::history(&lake, limit).await?;
            emit(cli.json, &versions, || {
                versions
                    .iter()
                    .map(|m| {
                        let what: Vec<String> = m
                            .published
                            .iter()
                            .map(|p| format!("{} {} ({} source(s)) -> {:?}", p.kind, p.op, p.sources, p.tables))
                            .collect();
                        let what = if what.is_empty() { "lake created".to_string() } else { what.join("; ") };
                        format!("v{:<6} {}  {}", m.version, m.published_at.format("%Y-%m-%d %H:%M:%S"), what)
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
    }
    Ok(())
}

fn emit<T: serde::Serialize>(json: bool, value: &T, text: impl FnOnce() -> String) {
    let mut out = std::io::stdout().lock();
    let line = if json { serde_json::to_string(value).expect("serializable") } else { text() };
    let _ = writeln!(out, "{line}");
}

fn print_report(json: bool, r: &Report) {
    emit(json, r, || {
        let mut out = String::new();
        for s in &r.sources {
            let what = match s.status {
                SourceStatus::Ingested => "ingested",
                SourceStatus::AlreadyIngested => "already ingested",
            };
            out.push_str(&format!("{what}: {} -> table {} (op {})\n", s.uri, s.table, s.op));
        }
        for (t, rep) in &r.tables {
            out.push_str(&format!(
                "table {t}: +{} rows inserted, {} updated, lance v{}\n",
                rep.rows_inserted, rep.rows_updated, rep.lance_version
            ));
        }
        if let Some(v) = r.manifest_version {
            out.push_str(&format!("visible in manifest version {v}"));
        }
        out.trim_end().to_string()
    });
}

/// Runs `work`, showing rows and sources read on stderr when it is a terminal.
async fn backfill(lake: &Lake, plan: sluice::discover::Plan<'_>, json: bool) -> Result<()> {
    let dry_run = plan.dry_run;
    let report = sluice::discover::backfill(lake, plan, Arc::new(Progress::default()), |r| {
        if !json {
            let rows: u64 = r.tables.values().map(|t| t.rows_inserted + t.rows_updated).sum();
            eprintln!("batch: {} sources, {rows} rows, manifest version {}", r.sources.len(), r.manifest_version.unwrap_or_default());
        }
    })
    .await?;
    emit(json, &report, || {
        let mut out = format!(
            "listed {}: {} held by the ledger, {} quarantined earlier; ",
            report.listed, report.held, report.quarantined_before
        );
        if dry_run {
            out.push_str(&format!("{} would be ingested", report.not_done));
        } else {
            out.push_str(&format!(
                "ingested {} ({} rows) in {} batches, {} found already ingested",
                report.ingested, report.rows, report.batches, report.already_ingested
            ));
            if let Some(v) = report.manifest_version {
                out.push_str(&format!(", visible in manifest version {v}"));
            }
            if report.not_done > 0 {
                out.push_str(&format!("; {} left for the next run (deadline)", report.not_done));
            }
        }
        for b in &report.bad {
            out.push_str(&format!("\nquarantined: {}", b.reason));
        }
        for s in &report.skipped {
            out.push_str(&format!("\nskipped: {}: {}", s.uri, s.reason));
        }
        for c in report.changing.iter().chain(&report.unreadable) {
            out.push_str(&format!("\nleft for the next run: {}", c.reason));
        }
        out
    });
    if !report.bad.is_empty() {
        return Err(Error::BadInput(sluice::error::BadInput {
            source_uri: report.bad[0].uri.clone(),
            location: Default::default(),
            reason: format!("{} bad sources quarantined; the rest was ingested", report.bad.len()),
            new_column: false,
        }));
    }
    if !report.unreadable.is_empty() {
        let n = report.unreadable.len();
        return Err(Error::Blocked(format!("{n} sources could not be read now (the first: {}); the rest was ingested; run again to take them", report.unreadable[0].reason)));
    }
    if report.not_done > 0 && !dry_run {
        return Err(Error::Blocked(format!("{} sources left for the next run: the deadline came first", report.not_done)));
    }
    Ok(())
}

async fn with_progress<T>(sources: usize, work: impl AsyncFnOnce(Arc<Progress>) -> Result<T>) -> Result<T> {
    let progress = Arc::new(Progress::default());
    if !std::io::stderr().is_terminal() {
        return work(progress).await;
    }
    // Bytes as stored, from the first byte of the first file: percent and ETA
    // once the sources are resolved and their sizes known.
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(indicatif::ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}").expect("valid progress template"));
    bar.set_message("finding the sources (a local file is hashed for its identity)");
    let ticker = {
        let (bar, progress) = (bar.clone(), Arc::clone(&progress));
        tokio::spawn(async move {
            loop {
                let total = progress.bytes_total.load(Ordering::Relaxed);
                if total == 0 {
                    bar.tick();
                    tokio::time::sleep(Duration::from_millis(120)).await;
                    continue;
                }
                if bar.length() != Some(total) {
                    bar.set_style(
                        indicatif::ProgressStyle::with_template(
                            "{spinner} {elapsed_precise} [{bar:24}] {bytes}/{total_bytes} {percent}% ETA {eta}  {msg}",
                        )
                        .expect("valid progress template")
                        .progress_chars("=> "),
                    );
                }
                bar.set_length(total);
                bar.set_position(progress.bytes_read.load(Ordering::Relaxed));
                bar.set_message(format!(
                    "{}/{sources} sources, {} rows",
                    progress.sources_done.load(Ordering::Relaxed),
                    progress.rows.load(Ordering::Relaxed)
                ));
                bar.tick();
                tokio::time::sleep(Duration::from_millis(120)).await;
            }
        })
    };
    let out = work(progress).await;
    ticker.abort();
    bar.finish_and_clear();
    out
}

/// A load descriptor: `{"tables": [{"table": "t", "sources": [...], "format"?, "mode"?, "key"?, "schema"?, "indices"?}]}`.
/// Relative source paths are relative to the descriptor's folder.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Descriptor {
    tables: Vec<DescriptorTable>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DescriptorTable {
    table: String,
    sources: Vec<String>,
    format: Option<String>,
    /// How CSV sources are written: `{"delimiter": ";", "header": false, "nulls": ["NA"]}`.
    csv: Option<sluice::dialect::CsvOptions>,
    /// As `--partitions` takes it: "date:date,hour:int32" or "off".
    partitions: Option<String>,
    mode: Option<Mode>,
    key: Option<String>,
    /// A declared schema, as `--schema` takes it.
    schema: Option<serde_json::Value>,
    /// Indices the table declares: `[{"column": "emb", "type": "ivf_pq"}]`.
    #[serde(default)]
    indices: Vec<sluice::settings::IndexDecl>,
    /// As `--evolution` takes it: "strict", "add-columns" or "rescue".
    evolution: Option<String>,
}

fn read_descriptor(path: &Path) -> Result<Vec<TableRequest>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Usage(format!("load descriptor {}: {e}", path.display())))?;
    let d: Descriptor = serde_json::from_str(&text).map_err(|e| Error::Usage(format!("load descriptor {}: {e}", path.display())))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    d.tables
        .into_iter()
        .map(|t| {
            let sources = t
                .sources
                .into_iter()
                .map(|s| if s.contains("://") || Path::new(&s).is_absolute() { s } else { dir.join(s).display().to_string() })
                .map(Into::into)
                .collect();
            let schema = t.schema.map(|v| sluice::decode::parse_declared_schema(&v.to_string())).transpose()?;
            let indices = t.indices.into_iter().map(|d| d.spec()).collect::<Result<_>>()?;
            if let Some(c) = &t.csv {
                c.check()?;
            }
            let partitions = t.partitions.as_deref().map(Partitions::parse).transpose()?;
            let evolution = t.evolution.as_deref().map(str::parse).transpose()?;
            Ok(TableRequest { table: t.table, sources, format: t.format.as_deref().map(str::parse).transpose()?, csv: t.csv, partitions, mode: t.mode, key: t.key, schema, indices, evolution })
        })
        .collect()
}

/// Rows to stdout as JSON Lines or CSV.
async fn write_rows(mut batches: impl futures::Stream<Item = Result<arrow::array::RecordBatch>> + Unpin, format: OutFormat) -> Result<()> {
    let stdout = std::io::stdout().lock();
    let io_err = |e: arrow::error::ArrowError| Error::Io { path: "stdout".into(), source: std::io::Error::other(e) };
    match format {
        OutFormat::Jsonl => {
            // Every column on every line, null or not, as in CSV output.
            let mut w = arrow::json::WriterBuilder::new().with_explicit_nulls(true).build::<_, arrow::json::writer::LineDelimited>(stdout);
            while let Some(b) = batches.next().await {
                w.write(&b?).map_err(io_err)?;
            }
            w.finish().map_err(io_err)?;
        }
        OutFormat::Csv => {
            let mut w = arrow::csv::Writer::new(stdout);
            while let Some(b) = batches.next().await {
                w.write(&b?).map_err(io_err)?;
            }
        }
    }
    Ok(())
}

async fn run_index(lake: &Lake, json: bool, clock_skew: Duration, action: IndexCommand) -> Result<()> {
    use sluice::index;
    use sluice::settings::IndexDecl;
    let report = match action {
        IndexCommand::Create { table, column, kind, metric, name, partitions, sub_vectors, timeout: Timeout { timeout } } => {
            let spec = IndexDecl { column, kind, metric, name, partitions, sub_vectors }.spec()?;
            index::create(lake, &table, spec, Budget { timeout, clock_skew }).await?
        }
        IndexCommand::Drop { table, name, timeout: Timeout { timeout } } => index::drop(lake, &table, &name, Budget { timeout, clock_skew }).await?,
        IndexCommand::List { table } => {
            let indices = read::indices(lake, table.as_deref()).await?;
            emit(json, &indices, || {
                let lines: Vec<String> = indices.iter().map(|i| format!("{}.{}", i.table, index_line(i))).collect();
                if lines.is_empty() { "no indices declared".to_string() } else { lines.join("\n") }
            });
            return Ok(());
        }
    };
    emit(json, &report, || match &report.outcome {
        index::Outcome::Done { lance_version, manifest_version } => {
            format!("table '{}': index '{}' changed (lance v{lance_version}), visible in manifest version {manifest_version}", report.table, report.index)
        }
        index::Outcome::AlreadyDone { manifest_version } => {
            format!("table '{}': index '{}' already as asked (manifest version {manifest_version})", report.table, report.index)
        }
    });
    Ok(())
}

/// `name: kind on 'column' — rows indexed`, for `status` and `index list`.
fn index_line(i: &sluice::index::IndexStatus) -> String {
    let rows = match (i.built, i.rows_indexed, i.rows_unindexed) {
        (false, _, _) => "not built yet (optimize builds it)".to_string(),
        (true, Some(a), Some(b)) => format!("{a} rows indexed, {b} not yet"),
        (true, _, _) => "built".to_string(),
    };
    let segments = i.segments.map(|n| format!(", {n} segment(s)")).unwrap_or_default();
    format!("{}: {} on '{}' — {rows}{segments}", i.spec.name, i.spec.kind.name(), i.spec.column)
}
