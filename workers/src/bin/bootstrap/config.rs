//! The function's configuration: environment variables, read and checked once
//! at cold start, so a misconfigured function fails its init with a message
//! that names the variable instead of failing every invocation.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use sluice::cleanup;
use sluice::lake::Timing;
use sluice::manifest::Mode;
use sluice::optimize;
use sluice::settings::{IndexDecl, IndexSpec};

/// How objects under one key prefix are ingested.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub table: String,
    pub mode: Option<Mode>,
    pub key: Option<String>,
    pub format: Option<String>,
    /// How its CSV objects are written: `{"delimiter": ";", "header": false, "nulls": ["NA"]}`.
    pub csv: Option<sluice::dialect::CsvOptions>,
    /// `key=value` folders of a new table: "date:date,hour:int32" stores them as columns; "off" only routes.
    pub partitions: Option<String>,
    /// Indices the table declares (built and kept fresh by the scheduled optimize).
    #[serde(default)]
    pub indices: Vec<IndexDecl>,
    /// What the table does with an object's column it lacks: "strict" or "add-columns".
    pub evolution: Option<sluice::settings::Evolution>,
}

impl Route {
    pub fn index_specs(&self) -> Vec<IndexSpec> {
        self.indices.iter().map(|d| d.clone().spec().expect("checked at cold start")).collect()
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    /// `SLUICE_ROOT`: the lake, e.g. s3://bucket/lake.
    pub root: String,
    /// `SLUICE_TABLES`: JSON `{"<key prefix>": {"table": ..., "mode"?, "key"?, "format"?,
    /// "indices"?: [{"column": ..., "type": ...}], "evolution"?: "add-columns"}}`;
    /// objects under no prefix go to the table named by their folder.
    pub routes: BTreeMap<String, Route>,
    /// `SLUICE_CLOCK_SKEW`, `SLUICE_RETENTION_FLOOR`.
    pub timing: Timing,
    /// `SLUICE_DEADLINE_MARGIN`: kept back from the invocation's deadline for
    /// reporting (default 5s).
    pub margin: Duration,
    /// `SLUICE_OPTIMIZE_TARGET_ROWS`, `_MAX_FRAGMENTS`, `_MAX_BYTES`: comma-separated `N` / `TABLE=N`;
    /// `SLUICE_OPTIMIZE_PARALLEL`: worker invocations per table (default 1: in the coordinator).
    pub optimize: optimize::Options,
    /// `SLUICE_WORKER_FUNCTION`: the function optimize fans out to (default: this one).
    pub worker_function: String,
    /// `SLUICE_CLEANUP_KEEP`, `_KEEP_VERSIONS`, `_KEEP_AUDIT`.
    pub cleanup: CleanupSettings,
    /// `SLUICE_SCHEDULED_ACTION`: what a scheduled event without an action does.
    pub scheduled_action: Option<String>,
    /// `SLUICE_BACKFILL_PREFIXES` (comma-separated `s3://BUCKET/PREFIX/`) and
    /// `SLUICE_BACKFILL_SINCE` (a span: only objects modified within it): what
    /// a `backfill` action lists when it names none.
    pub backfill_prefixes: Vec<String>,
    pub backfill_since: Option<Duration>,
}

#[derive(Debug, Clone, Copy)]
pub struct CleanupSettings {
    pub keep: Option<Duration>,
    pub keep_versions: usize,
    pub keep_audit: Duration,
}

impl CleanupSettings {
    pub fn options(&self, lake: &sluice::Lake, dry_run: bool) -> cleanup::Options {
        let defaults = cleanup::Options::for_lake(lake);
        cleanup::Options { keep: self.keep.unwrap_or(defaults.keep), keep_versions: self.keep_versions, keep_audit: self.keep_audit, dry_run }
    }
}

pub const ACTIONS: [&str; 7] = ["ingest", "load", "backfill", "optimize", "cleanup", "recover", "status"];

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn bad(name: &str, value: &str, why: impl std::fmt::Display) -> String {
    format!("environment variable {name}={value:?} is invalid: {why}")
}

fn duration(name: &str, default: Option<&str>) -> Result<Option<Duration>, String> {
    match var(name).or(default.map(String::from)) {
        None => Ok(None),
        Some(v) => humantime::parse_duration(&v).map(Some).map_err(|e| bad(name, &v, format!("{e} (e.g. 90s, 15m, 1h)"))),
    }
}

fn list(name: &str) -> Vec<String> {
    var(name).map(|v| v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()).unwrap_or_default()
}

fn count(name: &str, default: usize) -> Result<usize, String> {
    match var(name) {
        None => Ok(default),
        Some(v) => v.parse().ok().filter(|n| *n > 0).ok_or_else(|| bad(name, &v, "expected a count > 0")),
    }
}

impl Config {
    pub fn from_env() -> Result<Config, String> {
        let root = var("SLUICE_ROOT").ok_or("environment variable SLUICE_ROOT is not set: set it to the lake root, e.g. s3://my-bucket/lake")?;
        sluice::lake::Root::parse(&root).map_err(|e| bad("SLUICE_ROOT", &root, e))?;
        let routes: BTreeMap<String, Route> = match var("SLUICE_TABLES") {
            None => BTreeMap::new(),
            Some(v) => serde_json::from_str(&v).map_err(|e| bad("SLUICE_TABLES", &v, format!("{e}; expected {{\"incoming/orders/\": {{\"table\": \"orders\"}}}}")))?,
        };
        for route in routes.values() {
            sluice::ingest::validate_table_name(&route.table).map_err(|e| bad("SLUICE_TABLES", &route.table, e))?;
            if route.mode == Some(Mode::Upsert) && route.key.is_none() {
                return Err(bad("SLUICE_TABLES", &route.table, "mode upsert needs a key"));
            }
            if let Some(f) = &route.format {
                f.parse::<sluice::decode::Format>().map_err(|e| bad("SLUICE_TABLES", f, e))?;
            }
            if let Some(p) = &route.partitions {
                sluice::partitions::Partitions::parse(p).map_err(|e| bad("SLUICE_TABLES", p, e))?;
            }
            if let Some(c) = &route.csv {
                c.check().map_err(|e| bad("SLUICE_TABLES", &route.table, e))?;
            }
            for d in &route.indices {
                d.clone().spec().map_err(|e| bad("SLUICE_TABLES", &route.table, e))?;
            }
        }
        let timing = Timing {
            clock_skew: duration("SLUICE_CLOCK_SKEW", Some("1m"))?.expect("default"),
            retention_floor: duration("SLUICE_RETENTION_FLOOR", Some("1h"))?.expect("default"),
        };
        let optimize = optimize::Options::parse(
            &list("SLUICE_OPTIMIZE_TARGET_ROWS"),
            &list("SLUICE_OPTIMIZE_MAX_FRAGMENTS"),
            &list("SLUICE_OPTIMIZE_MAX_BYTES"),
            count("SLUICE_OPTIMIZE_PARALLEL", 1)?,
            false,
        )
        .map_err(|e| format!("SLUICE_OPTIMIZE_*: {e}"))?;
        let worker_function = var("SLUICE_WORKER_FUNCTION")
            .or_else(|| var("AWS_LAMBDA_FUNCTION_NAME"))
            .ok_or("environment variable SLUICE_WORKER_FUNCTION is not set (nor AWS_LAMBDA_FUNCTION_NAME, which Lambda sets)")?;
        let keep_versions = count("SLUICE_CLEANUP_KEEP_VERSIONS", 10)?;
        let cleanup = CleanupSettings {
            keep: duration("SLUICE_CLEANUP_KEEP", None)?,
            keep_versions,
            keep_audit: duration("SLUICE_CLEANUP_KEEP_AUDIT", Some("30days"))?.expect("default"),
        };
        // A Lambda invocation runs at most 15 minutes: the floor must cover it.
        timing.check_timeout(sluice::DEFAULT_TIMEOUT).map_err(|e| format!("SLUICE_RETENTION_FLOOR / SLUICE_CLOCK_SKEW: {e}"))?;
        if cleanup.keep.is_some_and(|k| k < timing.retention_floor) {
            return Err("SLUICE_CLEANUP_KEEP is below SLUICE_RETENTION_FLOOR: keep manifest versions at least as long as the floor".into());
        }
        let scheduled_action = var("SLUICE_SCHEDULED_ACTION");
        if let Some(a) = &scheduled_action
            && !["optimize", "cleanup", "recover", "backfill"].contains(&a.as_str())
        {
            return Err(bad("SLUICE_SCHEDULED_ACTION", a, "expected optimize, cleanup, recover or backfill"));
        }
        let backfill_prefixes = list("SLUICE_BACKFILL_PREFIXES");
        for p in &backfill_prefixes {
            if !p.starts_with("s3://") || !p.ends_with('/') {
                return Err(bad("SLUICE_BACKFILL_PREFIXES", p, "expected s3://BUCKET/PREFIX/ (ending in '/')"));
            }
        }
        if scheduled_action.as_deref() == Some("backfill") && backfill_prefixes.is_empty() {
            return Err("SLUICE_SCHEDULED_ACTION=backfill needs SLUICE_BACKFILL_PREFIXES (s3://BUCKET/PREFIX/, ...)".into());
        }
        Ok(Config {
            root,
            routes,
            timing,
            margin: duration("SLUICE_DEADLINE_MARGIN", Some("5s"))?.expect("default"),
            optimize,
            worker_function,
            cleanup,
            scheduled_action,
            backfill_prefixes,
            backfill_since: duration("SLUICE_BACKFILL_SINCE", None)?,
        })
    }

    /// The route for an object key: the longest matching prefix.
    pub fn route(&self, key: &str) -> Option<&Route> {
        self.routes.iter().filter(|(prefix, _)| key.starts_with(prefix.as_str())).max_by_key(|(prefix, _)| prefix.len()).map(|(_, r)| r)
    }
}
