//! `bootstrap`: the Lambda face of sluice, a thin shell over the same core as
//! the CLI. It serves S3 notifications (direct, via SQS, via SNS), EventBridge
//! events (S3 "Object Created" and schedules) and direct `{"action": ...}`
//! invocations. The invocation's deadline, minus `SLUICE_DEADLINE_MARGIN`,
//! is every operation's budget. Logs are JSON lines carrying the request id;
//! metrics are CloudWatch Embedded Metric Format lines on stdout.

mod config;
mod events;
mod fanout;
mod metrics;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lambda_runtime::{Diagnostic, LambdaEvent, service_fn};
use serde::Deserialize;
use serde_json::{Value, json};
use sluice::deadline::Deadline;
use sluice::decode::Progress;
use sluice::ingest::{self, Budget, TableRequest};
use sluice::manifest::Mode;
use sluice::{Error, Lake, cleanup, optimize, read, recover};

use config::Config;
use events::{Message, Object, Work};
use metrics::Metrics;

struct State {
    config: Config,
    lake: Lake,
    /// Optimize fan-out to worker invocations (when `SLUICE_OPTIMIZE_PARALLEL` > 1 or asked).
    invocations: fanout::Invocations,
}

fn main() -> Result<(), lambda_runtime::Error> {
    // SAFETY: no other thread exists yet.
    unsafe { sluice::set_lance_defaults() };
    tokio::runtime::Runtime::new()?.block_on(serve())
}

async fn serve() -> Result<(), lambda_runtime::Error> {
    // Failpoints (tests only; compiled in with the `failpoints` feature).
    let _failpoints = fail::FailScenario::setup();
    tracing_subscriber::fmt()
        .json()
        .with_current_span(true)
        .with_span_list(false)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| "info,lance=warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let config = Config::from_env().inspect_err(|e| tracing::error!(error = %e, "invalid configuration"))?;
    let lake = Lake::open(&config.root)?.with_timing(config.timing);
    tracing::info!(root = %config.root, routes = config.routes.len(), "sluice ready");
    let aws = aws_config::load_from_env().await;
    let invocations = fanout::Invocations { client: aws_sdk_lambda::Client::new(&aws), function: config.worker_function.clone() };
    let state = Arc::new(State { config, lake, invocations });
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let state = Arc::clone(&state);
        // Boxed: the core's futures nest deep enough to overflow the layout query.
        async move { Box::pin(handle(&state, event)).await.map_err(diagnostic) }
    }))
    .await
}

async fn handle(state: &State, event: LambdaEvent<Value>) -> Result<Value, Error> {
    let (before, retries_before) = (state.lake.requests(), state.lake.manifest_retries());
    let budget = budget(state, event.context.deadline);
    let work = events::classify(event.payload).map_err(|e| Error::Usage(format!("cannot handle this event: {e}")))?;
    let mut metrics = Metrics::default();
    let result = match work {
        Work::Objects(objects) => Box::pin(ingest_objects(state, &objects, budget, &mut metrics)).await.map(|r| to_json(&r)),
        Work::Batch(messages) => Ok(Box::pin(ingest_batch(state, messages, budget, &mut metrics)).await),
        Work::Action(payload) => Box::pin(action(state, payload, budget, &mut metrics)).await,
        Work::Scheduled => match &state.config.scheduled_action {
            Some(a) => Box::pin(action(state, json!({"action": a}), budget, &mut metrics)).await,
            None => Err(Error::Usage("a scheduled event without an action, and SLUICE_SCHEDULED_ACTION is not set".into())),
        },
        Work::Ignore(what) => Ok(json!({"ignored": what})),
    };
    metrics.requests = state.lake.requests().since(&before).total();
    metrics.manifest_retries = state.lake.manifest_retries() - retries_before;
    metrics.emit();
    if let Err(e) = &result {
        tracing::error!(error = %e, "invocation failed");
    }
    result
}

/// A failed invocation as Lambda reports it: the error's kind and message.
fn diagnostic(e: Error) -> Diagnostic {
    let kind = match &e {
        Error::BadInput(_) => "BadInput",
        Error::Usage(_) => "Usage",
        Error::Deadline { .. } => "Deadline",
        Error::Blocked(_) => "Blocked",
        Error::Contention { .. } => "Contention",
        Error::Corrupt { .. } => "Corrupt",
        _ => "Failed",
    };
    Diagnostic { error_type: kind.into(), error_message: e.to_string() }
}

/// The operation budget: up to the invocation's deadline, minus the margin.
fn budget(state: &State, deadline_ms: u64) -> Budget {
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let left = Duration::from_millis(deadline_ms.saturating_sub(now_ms)).saturating_sub(state.config.margin);
    Budget { timeout: left.max(Duration::from_millis(1)), clock_skew: state.config.timing.clock_skew }
}

/// One request per table: configured routes first, else the object's folder.
fn requests(state: &State, objects: &[Object]) -> Result<Vec<TableRequest>, Error> {
    let mut by_table: BTreeMap<String, TableRequest> = BTreeMap::new();
    for object in objects {
        let (table, route) = match state.config.route(&object.key) {
            Some(route) => (route.table.clone(), Some(route)),
            None => {
                let routed = ingest::route(&[object.uri()], None)?;
                (routed.into_keys().next().expect("one source, one table"), None)
            }
        };
        let request = by_table.entry(table.clone()).or_insert_with(|| TableRequest {
            table,
            sources: Vec::new(),
            format: route.and_then(|r| r.format.as_deref()).map(|f| f.parse().expect("checked at start")),
            csv: route.and_then(|r| r.csv.clone()),
            partitions: route.and_then(|r| r.partitions.as_deref()).map(|p| sluice::partitions::Partitions::parse(p).expect("checked at start")),
            mode: route.and_then(|r| r.mode),
            key: route.and_then(|r| r.key.clone()),
            schema: None,
            indices: route.map(|r| r.index_specs()).unwrap_or_default(),
            evolution: route.and_then(|r| r.evolution),
        });
        // Each event names its object's version: two versions of one key are two sources.
        let spec = object.spec();
        if !request.sources.contains(&spec) {
            request.sources.push(spec);
        }
    }
    Ok(by_table.into_values().collect())
}

/// Every ingest and load goes through here, so metrics count each once.
async fn run_ingest(state: &State, requests: Vec<TableRequest>, budget: Budget, metrics: &mut Metrics) -> Result<ingest::Report, Error> {
    let report = ingest::run(&state.lake, requests, budget, Arc::new(Progress::default())).await;
    metrics.record_ingest(&report);
    report
}

async fn ingest_objects(state: &State, objects: &[Object], budget: Budget, metrics: &mut Metrics) -> Result<ingest::Report, Error> {
    run_ingest(state, requests(state, objects)?, budget, metrics).await
}

/// A failed message's reason, as the batch response gives it (the log has it whole).
const MAX_REASON: usize = 1000;

/// Less time than this left: start no more ingests in a batch.
const MIN_INGEST_TIME: Duration = Duration::from_secs(2);

/// An SQS batch: one ingest of every readable message's objects (one commit
/// per table, one publish). A source with bad input fails only the messages
/// that carry it: it is set aside and the rest is ingested again without it.
/// Any other failure (a missing object, say) is isolated by ingesting each
/// message on its own. Failed messages go back to the queue, and after its
/// retries to the dead-letter queue; a poison message never blocks the rest.
/// Each ingest gets the time left; once it runs short, the messages not yet
/// ingested are reported as not done (failed, so SQS delivers them again).
async fn ingest_batch(state: &State, messages: Vec<Message>, budget: Budget, metrics: &mut Metrics) -> Value {
    let until = Instant::now() + budget.timeout;
    let time_left = || {
        let timeout = until.saturating_duration_since(Instant::now());
        (timeout >= MIN_INGEST_TIME).then_some(Budget { timeout, ..budget })
    };
    let mut failed: BTreeMap<String, String> = BTreeMap::new();
    let mut not_done: Vec<String> = Vec::new();
    let mut live: Vec<(String, Vec<Object>)> = Vec::new();
    for m in messages {
        // A message whose objects cannot be routed to a table is as poisonous as an unreadable one.
        match m.objects.and_then(|o| requests(state, &o).map(|_| o).map_err(|e| e.to_string())) {
            Ok(objects) => live.push((m.id, objects)),
            Err(why) => {
                tracing::error!(message_id = %m.id, reason = %why, "poison message");
                failed.insert(m.id, why);
            }
        }
    }
    let mut reports = Vec::new();
    // Each round either lands everything or removes at least one message.
    for _ in 0..=live.len() {
        let objects: Vec<Object> = live.iter().flat_map(|(_, o)| o.iter().cloned()).collect();
        if objects.is_empty() {
            break;
        }
        let err = match time_left() {
            None => Error::Deadline { step: "ingesting the batch" },
            Some(budget) => match ingest_objects(state, &objects, budget, metrics).await {
                Ok(report) => {
                    reports.push(report);
                    break;
                }
                Err(e) => e,
            },
        };
        if let Error::Deadline { .. } = &err {
            not_done.extend(std::mem::take(&mut live).into_iter().map(|(id, _)| id));
            break;
        }
        if let Error::BadInput(bad) = &err {
            let (poisoned, rest): (Vec<_>, Vec<_>) = live.into_iter().partition(|(_, o)| o.iter().any(|o| o.uri() == bad.source_uri));
            for (id, _) in &poisoned {
                tracing::error!(message_id = %id, source = %bad.source_uri, reason = %bad, "bad input: quarantined, message failed");
                failed.insert(id.clone(), bad.to_string());
            }
            live = rest;
            if !poisoned.is_empty() {
                continue;
            }
        }
        // Not pinned on one message: find out which, one message at a time.
        for (id, objects) in std::mem::take(&mut live) {
            let Some(budget) = time_left() else {
                not_done.push(id);
                continue;
            };
            match ingest_objects(state, &objects, budget, metrics).await {
                Ok(report) => reports.push(report),
                Err(Error::Deadline { .. }) => not_done.push(id),
                Err(e) => {
                    tracing::error!(message_id = %id, error = %e, "message failed");
                    failed.insert(id, e.to_string());
                }
            }
        }
        break;
    }
    if !not_done.is_empty() {
        tracing::warn!(messages = not_done.len(), "the invocation's time ran out: messages not ingested go back to the queue");
    }
    for id in &not_done {
        failed.insert(id.clone(), "not done: the invocation's time ran out before this message was ingested; it will be delivered again".into());
    }
    // A summary, not the reports: the response must stay far below Lambda's 6 MB for any batch size.
    let ingested = reports.iter().flat_map(|r| &r.sources).filter(|s| s.status == ingest::SourceStatus::Ingested);
    let failures: BTreeMap<&String, String> = failed.iter().map(|(id, why)| (id, why.chars().take(MAX_REASON).collect())).collect();
    json!({
        "batchItemFailures": failed.keys().map(|id| json!({"itemIdentifier": id})).collect::<Vec<_>>(),
        "failures": failures,
        "not_done": not_done,
        "ingested": {
            "sources": ingested.count(),
            "rows": reports.iter().flat_map(|r| r.tables.values()).map(|t| t.rows_inserted + t.rows_updated).sum::<u64>(),
            "manifest_versions": reports.iter().filter_map(|r| r.manifest_version).collect::<Vec<_>>(),
        },
    })
}

/// A direct invocation: `{"action": "ingest" | "load" | "optimize" | "cleanup" | "recover" | "status", ...}`.
#[derive(Deserialize)]
#[serde(tag = "action", rename_all = "lowercase", deny_unknown_fields)]
enum Action {
    Ingest { sources: Vec<String>, table: Option<String>, format: Option<String>, mode: Option<Mode>, key: Option<String> },
    Load { tables: Vec<LoadTable> },
    /// Objects under the prefixes the lake does not hold (events lost):
    /// `prefixes` and `since` (RFC 3339 or a span ago) default to the configuration's.
    Backfill { #[serde(default)] prefixes: Vec<String>, since: Option<String>, #[serde(default)] dry_run: bool, batch: Option<usize> },
    Optimize { #[serde(default)] tables: Vec<String>, #[serde(default)] dry_run: bool, parallel: Option<usize> },
    /// A fan-out worker's share of a coordinator's compaction (see `fanout`).
    #[serde(rename = "compact-tasks")]
    CompactTasks { batch: optimize::Batch, timeout_ms: u64 },
    Cleanup { #[serde(default)] dry_run: bool },
    Recover { #[serde(default)] dry_run: bool },
    Status {},
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoadTable {
    table: String,
    sources: Vec<String>,
    format: Option<String>,
    mode: Option<Mode>,
    key: Option<String>,
}

fn to_json<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).expect("reports serialize")
}

async fn action(state: &State, payload: Value, budget: Budget, metrics: &mut Metrics) -> Result<Value, Error> {
    let action: Action = serde_json::from_value(payload)
        .map_err(|e| Error::Usage(format!("bad invocation: {e}; actions: {}", config::ACTIONS.join(", "))))?;
    let lake = &state.lake;
    match action {
        Action::Ingest { sources, table, format, mode, key } => {
            let format = format.as_deref().map(str::parse).transpose()?;
            let requests = ingest::route(&sources, table.as_deref())?
                .into_iter()
                .map(|(table, sources)| TableRequest { table, sources: sources.into_iter().map(Into::into).collect(), format, csv: None, partitions: None, mode, key: key.clone(), schema: None, indices: Vec::new(), evolution: None })
                .collect();
            Ok(to_json(&run_ingest(state, requests, budget, metrics).await?))
        }
        Action::Load { tables } => {
            let requests = tables
                .into_iter()
                .map(|t| Ok(TableRequest { table: t.table, sources: t.sources.into_iter().map(Into::into).collect(), format: t.format.as_deref().map(str::parse).transpose()?, csv: None, partitions: None, mode: t.mode, key: t.key, schema: None, indices: Vec::new(), evolution: None }))
                .collect::<Result<Vec<_>, Error>>()?;
            Ok(to_json(&run_ingest(state, requests, budget, metrics).await?))
        }
        Action::Backfill { prefixes, since, dry_run, batch } => {
            let specs = if prefixes.is_empty() { state.config.backfill_prefixes.clone() } else { prefixes };
            if specs.is_empty() {
                return Err(Error::Usage("backfill: name \"prefixes\" or set SLUICE_BACKFILL_PREFIXES".into()));
            }
            let since = match since {
                Some(s) => Some(sluice::discover::parse_since(&s).map_err(Error::Usage)?),
                None => state.config.backfill_since.map(|d| chrono::Utc::now() - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)),
            };
            let route = |uris: &[String]| {
                let objects = uris
                    .iter()
                    .map(|u| {
                        let (bucket, key) = u.trim_start_matches("s3://").split_once('/').unwrap_or_default();
                        Object { bucket: bucket.into(), key: key.into(), pin: Default::default() }
                    })
                    .collect::<Vec<_>>();
                requests(state, &objects)
            };
            let plan = sluice::discover::Plan {
                specs,
                since,
                route: &route,
                batch: batch.unwrap_or(sluice::discover::DEFAULT_BATCH).max(1),
                budget,
                dry_run,
            };
            let report = sluice::discover::backfill(lake, plan, Arc::new(Progress::default()), |r| metrics.record_ingest(&Ok(r.clone()))).await?;
            Ok(to_json(&report))
        }
        Action::Optimize { tables, dry_run, parallel } => {
            let opts = optimize::Options { dry_run, parallel: parallel.unwrap_or(state.config.optimize.parallel).max(1), ..state.config.optimize.clone() };
            let executor: &dyn optimize::Executor = if opts.parallel > 1 { &state.invocations } else { &optimize::InProcess };
            let report = optimize::run(lake, &tables, &opts, budget, executor).await?;
            metrics.compactions = report.tables.iter().filter(|t| matches!(t.action, optimize::TableAction::Compacted { .. })).count() as u64;
            Ok(to_json(&report))
        }
        Action::Cleanup { dry_run } => {
            let report = cleanup::run(lake, state.config.cleanup.options(lake, dry_run), budget.timeout).await?;
            metrics.record_sweep(&report.recovery);
            Ok(to_json(&report))
        }
        Action::Recover { dry_run } => {
            let report = recover::sweep(lake, recover::Options { clock_skew: budget.clock_skew, dry_run }, budget.timeout).await?;
            metrics.record_sweep(&report);
            if report.unresolved() > 0 {
                return Err(Error::Blocked(format!("recovery refused or failed on {} operation(s): {}", report.unresolved(), to_json(&report))));
            }
            Ok(to_json(&report))
        }
        Action::CompactTasks { batch, timeout_ms } => {
            let deadline = Deadline::after(budget.timeout.min(Duration::from_millis(timeout_ms)));
            Ok(to_json(&optimize::execute_batch(lake, &batch, &deadline).await?))
        }
        Action::Status {} => Ok(to_json(&read::status(lake).await?)),
    }
}
