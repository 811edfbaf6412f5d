//! Compaction fan-out over Lambda invocations: the coordinator (an `optimize`
//! invocation) plans, sends each batch of tasks to the worker function as a
//! `{"action": "compact-tasks"}` invocation, and commits all results at once
//! under its intent. The invocations run concurrently; each is a synchronous
//! (RequestResponse) call, so results and errors come back on the call itself:
//! no reply objects to poll or clean, and no Lambda retry of an `Event`
//! invocation rewriting files after the coordinator has given up. A failed or
//! late worker fails the compaction before anything is committed; its files
//! are orphans that cleanup reclaims.

use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::InvocationType;
use lance::dataset::optimize::RewriteResult;
use serde_json::json;
use sluice::deadline::Deadline;
use sluice::optimize::{self, Batch, Executor};
use sluice::{Error, Lake, Result};

/// Lambda's limit on a synchronous invocation's request and response.
const PAYLOAD_LIMIT: usize = 6 * 1024 * 1024;

pub struct Invocations {
    pub client: aws_sdk_lambda::Client,
    /// The worker function: name or ARN.
    pub function: String,
}

impl Invocations {
    async fn run_one(&self, batch: Batch, deadline: &Deadline) -> Result<Vec<RewriteResult>> {
        let payload = serde_json::to_vec(&json!({
            "action": "compact-tasks",
            "batch": batch,
            "timeout_ms": deadline.remaining().as_millis() as u64,
        }))
        .expect("compaction tasks serialize");
        if payload.len() > PAYLOAD_LIMIT {
            return Err(Error::Usage(format!(
                "a compaction batch of table '{}' is {} bytes, over Lambda's 6 MB payload limit: lower SLUICE_OPTIMIZE_MAX_FRAGMENTS or raise SLUICE_OPTIMIZE_PARALLEL",
                batch.table,
                payload.len()
            )));
        }
        let call = self
            .client
            .invoke()
            .function_name(&self.function)
            .invocation_type(InvocationType::RequestResponse)
            .payload(Blob::new(payload))
            .send();
        let failed = |why: String| {
            Error::Blocked(format!(
                "a compaction worker invocation of '{}' for table '{}' failed: {why}; nothing was committed, the next run plans again",
                self.function, batch.table
            ))
        };
        let out = tokio::time::timeout(deadline.remaining(), call)
            .await
            .map_err(|_| Error::Deadline { step: "waiting for compaction workers" })?
            .map_err(|e| failed(aws_sdk_lambda::error::DisplayErrorContext(&e).to_string()))?;
        let body = out.payload().map(|b| b.as_ref()).unwrap_or_default();
        if let Some(kind) = out.function_error() {
            return Err(failed(format!("{kind}: {}", String::from_utf8_lossy(body))));
        }
        serde_json::from_slice(body).map_err(|e| Error::Corrupt { what: "compaction worker response", path: batch.table.clone(), reason: e.to_string() })
    }
}

#[async_trait::async_trait]
impl Executor for Invocations {
    async fn execute(&self, _lake: &Lake, batches: Vec<Batch>, deadline: &Deadline) -> Result<Vec<RewriteResult>> {
        optimize::all_at_once(batches, |b| self.run_one(b, deadline)).await
    }

    fn workers(&self, batches: usize) -> usize {
        batches
    }
}
