//! One CloudWatch Embedded Metric Format line per invocation, on stdout
//! (CloudWatch turns it into metrics without any API call).

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;
use sluice::ingest::{self, SourceStatus};
use sluice::recover::{self, Action};

#[derive(Debug, Default)]
pub struct Metrics {
    pub rows: u64,
    pub bytes: u64,
    pub sources: u64,
    pub commits: u64,
    pub quarantined: u64,
    pub recoveries: u64,
    pub refusals: u64,
    pub compactions: u64,
    pub manifest_retries: u64,
    pub requests: u64,
}

impl Metrics {
    pub fn record_ingest(&mut self, report: &sluice::Result<ingest::Report>) {
        match report {
            Ok(r) => {
                self.rows += r.tables.values().map(|t| t.rows_inserted + t.rows_updated).sum::<u64>();
                let ingested = r.sources.iter().filter(|s| s.status == SourceStatus::Ingested);
                self.sources += ingested.clone().count() as u64;
                self.bytes += ingested.map(|s| s.bytes).sum::<u64>();
                self.commits += r.tables.len() as u64;
            }
            Err(sluice::Error::BadInput(_)) => self.quarantined += 1,
            Err(_) => {}
        }
    }

    pub fn record_sweep(&mut self, report: &recover::SweepReport) {
        for op in &report.ops {
            match op.action {
                Action::Decided { .. } => self.recoveries += 1,
                Action::Refused { .. } | Action::Failed { .. } => self.refusals += 1,
                _ => {}
            }
        }
    }

    pub fn emit(&self) {
        let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let names = ["Rows", "Bytes", "Sources", "Commits", "ManifestRetries", "Quarantined", "Recoveries", "RecoveryRefusals", "Compactions", "StoreRequests"];
        let values = [
            self.rows,
            self.bytes,
            self.sources,
            self.commits,
            self.manifest_retries,
            self.quarantined,
            self.recoveries,
            self.refusals,
            self.compactions,
            self.requests,
        ];
        let mut line = json!({
            "_aws": {
                "Timestamp": timestamp,
                "CloudWatchMetrics": [{
                    "Namespace": "sluice",
                    "Dimensions": [["Function"]],
                    "Metrics": names.iter().map(|n| json!({"Name": n, "Unit": if *n == "Bytes" { "Bytes" } else { "Count" }})).collect::<Vec<_>>(),
                }],
            },
            "Function": std::env::var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_else(|_| "sluice".into()),
        });
        for (name, value) in names.iter().zip(values) {
            line[*name] = json!(value);
        }
        println!("{line}");
    }
}
