//! Backfill and load history: what catching up on lost events costs, and
//! that `sources` does not grow with the ledger.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use object_store::{ObjectStoreExt, PutPayload};
use sluice::Lake;
use sluice::decode::Progress;
use sluice::discover::{self, Plan};
use sluice::ingest::{Budget, TableRequest};
use sluice::loads;

use crate::{Row, TIMEOUT, ms};

/// Object PUTs in flight while the bench writes its source keys.
const PUT_CONCURRENCY: usize = 64;

async fn backfill(lake: &Lake, spec: &str, batch: usize) -> (discover::BackfillReport, Duration, u64) {
    let route = |uris: &[String]| discover::route_by_folder(uris, None, &TableRequest::default());
    let plan = Plan { specs: vec![spec.to_string()], since: None, route: &route, batch, budget: Budget::new(TIMEOUT), dry_run: false };
    let before = lake.requests();
    let start = Instant::now();
    let report = discover::backfill(lake, plan, Arc::new(Progress::default()), |_| {}).await.expect("backfill");
    (report, start.elapsed(), lake.requests().since(&before).total())
}

/// `keys` objects under an S3 prefix, all but `new` already ingested: the
/// cost of the backfill that catches the `new` ones.
pub async fn s3(lake_root: &str, bucket: &str, prefix: &str, keys: usize, new: usize, rows: &mut Vec<Row>) {
    assert!(new <= keys, "--backfill-new is at most --backfill-keys");
    let store = sluice::lake::s3_store(bucket, &sluice::lake::s3_options_from_env()).expect("S3 store");
    let put = |range: std::ops::Range<usize>| {
        let store = Arc::clone(&store);
        futures::stream::iter(range)
            .map(move |i| {
                let store = Arc::clone(&store);
                async move {
                    let key = object_store::path::Path::parse(format!("{prefix}/events/part-{i:06}.jsonl")).unwrap();
                    store.put(&key, PutPayload::from(format!("{{\"id\": {i}}}\n"))).await.expect("put a source key");
                }
            })
            .buffer_unordered(PUT_CONCURRENCY)
            .collect::<Vec<_>>()
    };
    put(0..keys - new).await;
    let lake = Lake::open(lake_root).unwrap();
    let spec = format!("s3://{bucket}/{prefix}/");
    let (first, took, _) = backfill(&lake, &spec, 1000).await;
    assert_eq!(first.ingested, keys - new, "the first backfill ingests every key");
    eprintln!("backfill: {} keys ingested in {} batches in {:.1} s", first.ingested, first.batches, took.as_secs_f64());
    put(keys - new..keys).await;
    let (report, took, lake_requests) = backfill(&lake, &spec, 1000).await;
    assert_eq!(report.ingested, new, "{report:?}");
    // The source side: LIST pages, then a HEAD and a GET per new object.
    let source_requests = keys.div_ceil(1000) + 2 * new;
    rows.push((
        format!("backfill of {keys} S3 keys, {new} new (one batch)"),
        format!("{} ({lake_requests} lake + {source_requests} source requests)", ms(took)),
        "-".into(),
        format!("{:.1} requests per new key", (lake_requests + source_requests as u64) as f64 / new.max(1) as f64),
    ));
    let (rerun, took, lake_requests) = backfill(&lake, &spec, 1000).await;
    assert_eq!(rerun.ingested, 0);
    rows.push((
        format!("backfill rerun, nothing new ({keys} keys)"),
        format!("{} ({lake_requests} lake + {} source requests)", ms(took), keys.div_ceil(1000)),
        "-".into(),
        "-".into(),
    ));
}

/// `sluice sources --limit 100` on a lake whose ledger holds `ledger` entries.
pub async fn sources(lake_root: &str, work: &std::path::Path, ledger: usize, rows: &mut Vec<Row>) {
    let lake = Lake::open(lake_root).unwrap();
    let dir = work.join("sources-src/events");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..200 {
        std::fs::write(dir.join(format!("f{i:03}.jsonl")), format!("{{\"id\": {i}}}\n")).unwrap();
    }
    // Two batches of 100: two publishes, 200 ledger entries of real claims.
    backfill(&lake, &work.join("sources-src").display().to_string(), 100).await;
    // The rest of the ledger: claims as the door writes them, for sources
    // long ingested (only their count matters to what is measured).
    let claim = std::fs::read(first_claim(lake_root)).expect("a real claim to copy");
    let root = std::path::Path::new(lake_root);
    for i in 0..ledger.saturating_sub(200) {
        let d = root.join(format!("_ingested/{:032x}", i as u128 + (1 << 100)));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("000001.json"), &claim).unwrap();
    }
    let filter = loads::Filter { limit: 100, statuses: vec![loads::Status::Ingested], ..Default::default() };
    let before = lake.requests();
    let start = Instant::now();
    let got = loads::list(&lake, &filter).await.expect("sources");
    let took = start.elapsed();
    let requests = lake.requests().since(&before).total();
    assert_eq!(got.len(), 100);
    let start = Instant::now();
    let listed = lake.list("_ingested").await.expect("list the ledger").len();
    let scan = start.elapsed();
    rows.push((
        format!("`sources --limit 100` with {ledger} ledger entries"),
        format!("{} ({requests} requests)", ms(took)),
        "-".into(),
        format!("listing the ledger instead: {} ({listed} objects)", ms(scan)),
    ));
}

fn first_claim(lake_root: &str) -> std::path::PathBuf {
    let ledger = std::path::Path::new(lake_root).join("_ingested");
    let dir = std::fs::read_dir(&ledger).unwrap().next().unwrap().unwrap().path();
    dir.join("000001.json")
}
