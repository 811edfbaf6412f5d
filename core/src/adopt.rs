//! Adopting another tool's commits: the operator's way out when a pylance or
//! LanceDB user committed to a table of the lake (a `delete`, `add_columns`,
//! `restore`, ...). sluice never publishes a commit it cannot attribute
//! (`fence.rs`), so such a commit blocks every later publish of that table
//! until a person says it is wanted: `sluice adopt TABLE` records each
//! foreign commit after the table's pin as accepted
//! (`_adopted/<table>/<version>.json`, create-only, kept), then publishes the
//! table up to its newest commit if every commit in between is decided.
//!
//! Adopting accepts the commit as Lance holds it: a `restore` or an
//! `overwrite` replaces the table's content, rows of sluice operations
//! committed before it included.

use chrono::Utc;
use serde::Serialize;

use crate::deadline::Deadline;
use crate::error::{Error, Result};
use crate::fence::{Seen, Tag};
use crate::lake::Lake;
use crate::manifest::{self, Goal, Published, TablePin};
use crate::recover;
use crate::sidecar::{self, Adoption};

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub table: String,
    /// The published pin before.
    pub pin: u64,
    /// Foreign commits found after the pin (adopted unless a dry run).
    pub adopted: Vec<Adoption>,
    /// The manifest version that shows them, if this run published one.
    pub manifest_version: Option<u64>,
    /// Why nothing was published, if so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_published: Option<String>,
}

/// Adopt every foreign commit of `table` after its pin (or exactly the
/// `versions` named: also sluice commits that can be neither published nor
/// removed, such as a rolled-back upsert), then publish up to the newest
/// commit when everything between is decided.
pub async fn run(lake: &Lake, table: &str, versions: &[u64], dry_run: bool, timeout: std::time::Duration) -> Result<Report> {
    lake.timing().check_timeout(timeout)?;
    let deadline = Deadline::after(timeout);
    let mut latest = manifest::read_latest(lake).await?.ok_or_else(|| Error::Usage(format!("no lake at {}", lake.uri())))?;
    let pin = latest.tables.get(table).cloned().ok_or_else(|| Error::Usage(format!("table '{table}' is not published in {}", lake.uri())))?;
    let ds = lake.open_table(table, None).await?;
    let head = ds.version().version;
    let by = uuid::Uuid::now_v7().to_string();
    let seen = Seen::default();
    if let Some(v) = versions.iter().find(|v| **v <= pin.version || **v > head) {
        return Err(Error::Usage(format!("table '{table}' version {v} is not after its published version {} and at most its newest, {head}", pin.version)));
    }
    let mut adopted = Vec::new();
    for version in pin.version + 1..=head {
        let txn = seen.transaction(&ds, table, version).await?;
        let wanted = match versions.is_empty() {
            true => Tag::of(txn.as_ref()) == Tag::Foreign,
            false => versions.contains(&version),
        };
        if !wanted {
            continue;
        }
        let operation = txn.as_ref().map_or_else(|| "unknown (no transaction recorded)".to_string(), |t| t.operation.name().to_string());
        let adoption = Adoption { table: table.to_string(), version, operation, adopted_at: Utc::now(), by: by.clone() };
        if !dry_run {
            sidecar::adopt(lake, &adoption).await?;
        }
        adopted.push(adoption);
    }
    let mut report = Report { table: table.to_string(), pin: pin.version, adopted, manifest_version: None, not_published: None };
    if dry_run || head <= pin.version {
        return Ok(report);
    }
    // Publish up to the newest commit only if it is one we just adopted (a
    // sluice operation's own commit is its writer's or recovery's to publish).
    if report.adopted.last().map(|a| a.version) != Some(head) {
        report.not_published = Some(format!("the newest commit (version {head}) is a sluice operation's; its own publish shows the adopted commits"));
        return Ok(report);
    }
    let wanted = [(table.to_string(), TablePin { version: head, ..pin })].into();
    let recover::Publishable { pins, passed } = recover::publishable_pins(lake, &mut latest, wanted, &by, recover::Expired::Resolve, lake.timing().clock_skew, &deadline)
        .await?
        .map_err(recover::Stop::into_error)?;
    let goal = Goal {
        published: Published { op: format!("adopt-{table}"), attempt: by.clone(), kind: "adopt".into(), tables: pins.iter().map(|(t, p)| (t.clone(), p.version)).collect(), sources: 0, source_list: passed },
        pins,
        changes: Default::default(),
    };
    report.manifest_version = Some(manifest::publish(lake, latest, &goal, &deadline).await?.version());
    Ok(report)
}
