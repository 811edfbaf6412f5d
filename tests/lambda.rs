//! The real `bootstrap` binary against a local Lambda Runtime API on
//! 127.0.0.1 (next invocation, response, error), fed real-shaped events; the
//! lake and the sources are on the local S3 server.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use object_store::{ObjectStore, ObjectStoreExt, PutPayload, path::Path};
use serde_json::{Value, json};

use crate::common::*;

/// What the function answered: its response, or the error it reported.
#[derive(Debug, Clone)]
pub enum Answer {
    Response(Value),
    Error(Value),
}

#[derive(Default)]
struct Queue {
    pending: VecDeque<(String, String, u64)>,
    answers: HashMap<String, Answer>,
}

/// A minimal Lambda Runtime API: hands out queued events, collects answers.
pub struct RuntimeApi {
    addr: String,
    state: Arc<(Mutex<Queue>, Condvar)>,
}

impl RuntimeApi {
    pub fn start() -> RuntimeApi {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state: Arc<(Mutex<Queue>, Condvar)> = Arc::default();
        let shared = Arc::clone(&state);
        std::thread::spawn(move || {
            for conn in listener.incoming().map_while(Result::ok) {
                let state = Arc::clone(&shared);
                std::thread::spawn(move || serve(conn, &state));
            }
        });
        RuntimeApi { addr, state }
    }

    /// Queue an invocation with `budget` until its deadline; returns its request id.
    pub fn invoke(&self, payload: &Value, budget: Duration) -> String {
        enqueue(&self.state, payload.to_string(), budget)
    }

    /// The answer to `id`, waiting at most `limit`.
    pub fn answer(&self, id: &str, limit: Duration) -> Answer {
        wait_answer(&self.state, id, limit)
    }

    pub fn call(&self, payload: &Value) -> Answer {
        let id = self.invoke(payload, Duration::from_secs(120));
        self.answer(&id, Duration::from_secs(180))
    }

    /// Start the function: the real binary with the Lambda environment.
    pub fn function(&self, env: &[(&str, &str)]) -> Function {
        // SLUICE_TEST_BOOTSTRAP: run the tests that need no failpoints against another
        // build, e.g. the unzipped Lambda artifact.
        let exe = std::env::var("SLUICE_TEST_BOOTSTRAP").unwrap_or_else(|_| env!("CARGO_BIN_EXE_bootstrap").into());
        let mut cmd = Command::new(exe);
        cmd.env("AWS_LAMBDA_RUNTIME_API", &self.addr)
            .env("AWS_LAMBDA_FUNCTION_NAME", FUNCTION)
            .env("AWS_ENDPOINT_URL_LAMBDA", format!("http://{}", self.addr))
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024")
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "test")
            .env("AWS_LAMBDA_LOG_GROUP_NAME", "test")
            .env_remove("SLUICE_TABLES")
            .env_remove("FAILPOINTS");
        // A traced function's stderr is read by `reached`; any other's is the test's.
        let traced = env.iter().any(|(k, _)| *k == "SLUICE_TRACE_FAILPOINTS");
        cmd.stderr(if traced { Stdio::piped() } else { Stdio::inherit() });
        for (k, v) in env {
            cmd.env(k, v);
        }
        let stdout = tempfile::NamedTempFile::new().unwrap();
        cmd.stdout(stdout.reopen().unwrap());
        Function(cmd.spawn().unwrap(), stdout)
    }
}

/// A running function process, killed on drop, and its stdout (metrics).
pub struct Function(pub Child, tempfile::NamedTempFile);

impl Function {
    /// Wait until the function reaches failpoint `name` (started with SLUICE_TRACE_FAILPOINTS=1).
    pub fn reached(&mut self, name: &str) {
        let stderr = BufReader::new(self.0.stderr.take().expect("a function started with SLUICE_TRACE_FAILPOINTS"));
        let marker = format!("failpoint: {name}");
        assert!(stderr.lines().map_while(Result::ok).any(|l| l.contains(&marker)), "the function never reached failpoint {name}");
    }

    /// The Embedded Metric Format lines it printed so far.
    pub fn metrics(&self) -> Vec<Value> {
        std::fs::read_to_string(self.1.path())
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v.get("_aws").is_some())
            .collect()
    }
}

impl Drop for Function {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The function this API serves, as the Lambda Invoke API knows it.
const FUNCTION: &str = "sluice-test";

fn enqueue(state: &(Mutex<Queue>, Condvar), payload: String, budget: Duration) -> String {
    let id = uuid::Uuid::new_v4().to_string();
    let deadline = std::time::SystemTime::now() + budget;
    let ms = deadline.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let (lock, cvar) = state;
    lock.lock().unwrap().pending.push_back((id.clone(), payload, ms));
    cvar.notify_all();
    id
}

fn wait_answer(state: &(Mutex<Queue>, Condvar), id: &str, limit: Duration) -> Answer {
    let (lock, cvar) = state;
    let start = Instant::now();
    let mut q = lock.lock().unwrap();
    loop {
        if let Some(a) = q.answers.get(id) {
            return a.clone();
        }
        let left = limit.checked_sub(start.elapsed()).unwrap_or_else(|| panic!("no answer to {id} within {limit:?}"));
        q = cvar.wait_timeout(q, left).unwrap().0;
    }
}

/// Lambda's Invoke API (RequestResponse), as the optimize fan-out calls it:
/// the payload becomes an invocation of this function; its answer, the reply.
fn invoke_api(state: &(Mutex<Queue>, Condvar), name: &str, body: Vec<u8>) -> String {
    if name != FUNCTION {
        let error = json!({"Type": "User", "message": format!("Function not found: {name}")}).to_string();
        return format!("HTTP/1.1 404 Not Found\r\nx-amzn-ErrorType: ResourceNotFoundException\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{error}", error.len());
    }
    let id = enqueue(state, String::from_utf8(body).unwrap(), Duration::from_secs(120));
    let (error, value) = match wait_answer(state, &id, Duration::from_secs(180)) {
        Answer::Response(v) => ("", v),
        Answer::Error(v) => ("X-Amz-Function-Error: Unhandled\r\n", v),
    };
    let value = value.to_string();
    format!("HTTP/1.1 200 OK\r\n{error}X-Amz-Executed-Version: $LATEST\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{value}", value.len())
}

fn serve(conn: TcpStream, state: &(Mutex<Queue>, Condvar)) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut writer = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
        let (mut length, mut chunked) = (0usize, false);
        loop {
            let mut header = String::new();
            reader.read_line(&mut header).unwrap();
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').unwrap();
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap(),
                "transfer-encoding" => chunked = value.trim().eq_ignore_ascii_case("chunked"),
                _ => {}
            }
        }
        let body = if chunked { read_chunked(&mut reader) } else {
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            body
        };
        let (lock, cvar) = state;
        if method == "GET" && path.ends_with("/runtime/invocation/next") {
            let (id, event, deadline) = {
                let mut q = lock.lock().unwrap();
                loop {
                    if let Some(next) = q.pending.pop_front() {
                        break next;
                    }
                    q = cvar.wait(q).unwrap();
                }
            };
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nLambda-Runtime-Aws-Request-Id: {id}\r\nLambda-Runtime-Deadline-Ms: {deadline}\r\nLambda-Runtime-Invoked-Function-Arn: arn:aws:lambda:us-east-1:000000000000:function:sluice-test\r\nContent-Length: {}\r\n\r\n",
                event.len()
            );
            if writer.write_all(head.as_bytes()).and_then(|_| writer.write_all(event.as_bytes())).is_err() {
                return;
            }
            continue;
        }
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        if let ["2015-03-31", "functions", name, "invocations"] = segments.as_slice() {
            if writer.write_all(invoke_api(state, name, body).as_bytes()).is_err() {
                return;
            }
            continue;
        }
        if let ["2018-06-01", "runtime", "invocation", id, kind @ ("response" | "error")] = segments.as_slice() {
            let value: Value = serde_json::from_slice(&body).unwrap_or(Value::String(String::from_utf8_lossy(&body).into()));
            let answer = if *kind == "response" { Answer::Response(value) } else { Answer::Error(value) };
            lock.lock().unwrap().answers.insert(id.to_string(), answer);
            cvar.notify_all();
        }
        let _ = writer.write_all(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n");
    }
}

fn read_chunked(reader: &mut BufReader<TcpStream>) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        reader.read_line(&mut size).unwrap();
        let n = usize::from_str_radix(size.trim().split(';').next().unwrap(), 16).unwrap();
        let mut chunk = vec![0; n + 2];
        reader.read_exact(&mut chunk).unwrap();
        if n == 0 {
            return body;
        }
        body.extend_from_slice(&chunk[..n]);
    }
}

struct S3 {
    bucket: String,
    store: Arc<dyn ObjectStore>,
    prefix: String,
}

impl S3 {
    fn new() -> Option<S3> {
        let base = std::env::var("SLUICE_TEST_S3").ok()?;
        let bucket = base.trim_start_matches("s3://").split('/').next().unwrap().to_string();
        let store = sluice::lake::s3_store(&bucket, &sluice::lake::s3_options_from_env()).unwrap();
        Some(S3 { bucket, store, prefix: format!("lambda-{}", uuid::Uuid::new_v4().simple()) })
    }

    fn lake(&self) -> String {
        format!("s3://{}/{}/lake", self.bucket, self.prefix)
    }

    /// Put `body` at `<prefix>/incoming/<rel>`; returns the key.
    fn put(&self, rel: &str, body: String) -> String {
        let key = format!("{}/incoming/{rel}", self.prefix);
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(self.store.put(&Path::parse(&key).unwrap(), PutPayload::from(body))).unwrap();
        key
    }

    fn rows(&self, rel: &str, ids: std::ops::Range<i64>) -> String {
        self.put(rel, jsonl_rows(ids))
    }

    fn record(&self, key: &str) -> Value {
        // S3 names the version it announces: the object's ETag when the event was sent (none if it is missing).
        let rt = tokio::runtime::Runtime::new().unwrap();
        let e_tag = rt.block_on(self.store.head(&Path::parse(key).unwrap())).ok().and_then(|m| m.e_tag).unwrap_or_default();
        // As S3 sends keys: URL-encoded, '+' for a space, '/' kept.
        let encoded: Vec<String> = key.split('/').map(|part| url::form_urlencoded::byte_serialize(part.as_bytes()).collect()).collect();
        json!({
            "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
            "eventTime": "2026-11-24T12:00:00.000Z", "eventName": "ObjectCreated:Put",
            "userIdentity": {"principalId": "test"}, "requestParameters": {"sourceIPAddress": "127.0.0.1"},
            "responseElements": {},
            "s3": {"s3SchemaVersion": "1.0", "configurationId": "incoming",
                   "bucket": {"name": self.bucket, "ownerIdentity": {"principalId": "test"}, "arn": format!("arn:aws:s3:::{}", self.bucket)},
                   "object": {"key": encoded.join("/"), "size": 1, "eTag": e_tag.trim_matches('"'), "sequencer": "0"}}
        })
    }

    fn s3_event(&self, keys: &[&str]) -> Value {
        json!({"Records": keys.iter().map(|k| self.record(k)).collect::<Vec<_>>()})
    }

    fn sqs_message(&self, id: &str, body: String) -> Value {
        json!({
            "messageId": id, "receiptHandle": format!("rh-{id}"), "body": body,
            "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "0", "SenderId": "s3", "ApproximateFirstReceiveTimestamp": "0"},
            "messageAttributes": {}, "md5OfBody": "", "eventSource": "aws:sqs",
            "eventSourceARN": "arn:aws:sqs:us-east-1:000000000000:incoming", "awsRegion": "us-east-1"
        })
    }
}

fn jsonl_rows(ids: std::ops::Range<i64>) -> String {
    ids.map(|i| format!("{{\"id\": {i}, \"name\": \"n{i}\"}}\n")).collect()
}

fn scan(root: &str, table: &str) -> Vec<i64> {
    scan_ids(root, table)
}

fn response(answer: Answer) -> Value {
    match answer {
        Answer::Response(v) => v,
        Answer::Error(e) => panic!("the function failed: {e}"),
    }
}

/// S3 notifications delivered directly, twice and out of order; an SQS batch
/// with a poison message, an object no table takes, a missing object and a bad
/// file among good ones (only those four are reported failed; the rest lands); an SNS-wrapped message;
/// EventBridge Object Created and a scheduled recovery; direct actions; a bad
/// configuration fails the cold start with a message naming the variable.
#[test]
fn the_lambda_serves_every_event_shape_end_to_end() {
    let Some(s3) = S3::new() else { return };
    let api = RuntimeApi::start();
    let lake = s3.lake();
    let tables = json!({format!("{}/incoming/orders/", s3.prefix): {"table": "orders", "indices": [{"column": "id", "type": "btree"}], "evolution": "add-columns"}}).to_string();
    let f = api.function(&[("SLUICE_ROOT", &lake), ("SLUICE_TABLES", &tables), ("SLUICE_CLOCK_SKEW", "0s"), ("SLUICE_SCHEDULED_ACTION", "recover")]);

    // Direct S3 notifications: routed by prefix (orders) and by folder (clicks).
    let o1 = s3.rows("orders/ö 1+50%~#[x].jsonl", 0..10);
    let c1 = s3.rows("clicks/c1.jsonl", 100..105);
    let r = response(api.call(&s3.s3_event(&[&o1, &c1])));
    assert_eq!(r["manifest_version"].as_u64().is_some(), true, "{r}");
    // Duplicate and out-of-order redelivery: nothing twice.
    let o2 = s3.rows("orders/o2.jsonl", 10..20);
    response(api.call(&s3.s3_event(&[&o2, &o1])));
    response(api.call(&s3.s3_event(&[&c1])));
    assert_eq!(scan(&lake, "orders"), (0..20).collect::<Vec<_>>());
    assert_eq!(scan(&lake, "clicks"), (100..105).collect::<Vec<_>>());

    // An SQS batch: good messages, a poison body, a bad file; an SNS envelope.
    let o3 = s3.rows("orders/o3.jsonl", 20..30);
    let o4 = s3.rows("orders/o4.jsonl", 30..40);
    let bad = s3.put("orders/bad.jsonl", "{\"id\": 1}\n{\"id\": \n".into());
    let sns = json!({"Type": "Notification", "MessageId": "sns-1", "Message": s3.s3_event(&[&o4]).to_string()}).to_string();
    let batch = json!({"Records": [
        s3.sqs_message("m-good", s3.s3_event(&[&o3]).to_string()),
        s3.sqs_message("m-poison", "not json".into()),
        s3.sqs_message("m-bad", s3.s3_event(&[&bad]).to_string()),
        s3.sqs_message("m-sns", sns),
        s3.sqs_message("m-missing", s3.s3_event(&["gone/never-written.jsonl"]).to_string()),
        s3.sqs_message("m-unroutable", s3.s3_event(&["bad folder!/x.jsonl"]).to_string()),
    ]});
    let r = response(api.call(&batch));
    let mut failed: Vec<&str> = r["batchItemFailures"].as_array().unwrap().iter().map(|f| f["itemIdentifier"].as_str().unwrap()).collect();
    failed.sort();
    assert_eq!(failed, ["m-bad", "m-missing", "m-poison", "m-unroutable"], "{r}");
    assert!(r["failures"]["m-bad"].as_str().unwrap().contains("line 2"), "{r}");
    assert_eq!((r["ingested"]["sources"].as_u64(), r["ingested"]["rows"].as_u64()), (Some(2), Some(20)), "{r}");
    assert_eq!(scan(&lake, "orders"), (0..40).collect::<Vec<_>>());

    // EventBridge: S3 Object Created, and a schedule (recovery, from the configuration).
    let c2 = s3.rows("clicks/c2.jsonl", 105..110);
    let eb = json!({"version": "0", "id": "e1", "detail-type": "Object Created", "source": "aws.s3", "account": "0", "time": "2026-11-24T12:00:00Z",
        "region": "us-east-1", "resources": [], "detail": {"bucket": {"name": s3.bucket}, "object": {"key": c2}}});
    response(api.call(&eb));
    assert_eq!(scan(&lake, "clicks"), (100..110).collect::<Vec<_>>());
    let scheduled = json!({"version": "0", "id": "e2", "detail-type": "Scheduled Event", "source": "aws.events", "account": "0",
        "time": "2026-11-24T12:00:00Z", "region": "us-east-1", "resources": ["arn:aws:events:us-east-1:0:rule/sluice-recover"], "detail": {}});
    let r = response(api.call(&scheduled));
    assert_eq!(r["pending"], 0, "{r}");

    // Direct actions, as scripts/invoke.sh sends them.
    let r = response(api.call(&json!({"action": "optimize", "tables": ["orders"]})));
    assert_eq!(r["tables"][0]["action"], "compacted", "{r}");
    let r = response(api.call(&json!({"action": "status"})));
    assert_eq!(r["tables"].as_array().unwrap().len(), 2, "{r}");
    // The route's index: declared by the first ingest, built by the optimize.
    let orders = r["tables"].as_array().unwrap().iter().find(|t| t["name"] == "orders").unwrap();
    assert_eq!((&orders["indices"][0]["name"], &orders["indices"][0]["built"], &orders["indices"][0]["rows_indexed"]), (&json!("id_idx"), &json!(true), &json!(40)), "{r}");
    let r = response(api.call(&json!({"action": "cleanup", "dry_run": true})));
    assert_eq!(r["dry_run"], true, "{r}");
    match api.call(&json!({"action": "compact everything"})) {
        Answer::Error(e) => assert!(e.to_string().contains("bad invocation"), "{e}"),
        Answer::Response(r) => panic!("an unknown action must fail: {r}"),
    }
    assert_eq!(scan(&lake, "orders"), (0..40).collect::<Vec<_>>());

    // One metrics line per invocation, in CloudWatch's Embedded Metric Format.
    let metrics = f.metrics();
    assert_eq!(metrics.len(), 10, "one per invocation so far: {metrics:?}");
    assert_eq!(metrics.iter().map(|m| m["Rows"].as_u64().unwrap()).sum::<u64>(), 50, "every row ingested once: {metrics:?}");
    assert_eq!(metrics.iter().map(|m| m["Quarantined"].as_u64().unwrap()).sum::<u64>(), 1);
    assert_eq!(metrics[0]["_aws"]["CloudWatchMetrics"][0]["Namespace"], "sluice");
    assert_eq!(metrics[0]["Bytes"], jsonl_rows(0..10).len() + jsonl_rows(100..105).len(), "the first call's two files");
    assert_eq!(metrics[0]["ManifestRetries"], 0, "nobody raced it");

    // The route's table adds columns: a field it lacks becomes one.
    let o5 = s3.put("orders/o5.jsonl", "{\"id\": 40, \"coupon\": \"SAVE5\"}\n".into());
    response(api.call(&s3.s3_event(&[&o5])));
    assert_eq!(scan(&lake, "orders"), (0..41).collect::<Vec<_>>());
    let orders = status(&lake)["tables"].as_array().unwrap().iter().find(|t| t["name"] == "orders").cloned().unwrap();
    assert_eq!(orders["evolution"], "add-columns", "{orders}");

    // A bad configuration stops the cold start with the variable's name.
    let mut bad = api.function(&[("SLUICE_ROOT", &lake), ("SLUICE_CLOCK_SKEW", "soon")]);
    let status = bad.0.wait().unwrap();
    assert!(!status.success());
}

/// A function killed mid-batch (SIGKILL while ingesting), then the batch is
/// retried on a fresh function: every row lands exactly once.
#[test]
fn a_function_killed_mid_batch_is_retried_without_duplicates() {
    let Some(s3) = S3::new() else { return };
    let api = RuntimeApi::start();
    let lake = s3.lake();
    let keys: Vec<String> = (0..4).map(|i| s3.rows(&format!("t/f{i}.jsonl"), i * 100..i * 100 + 50)).collect();
    let batch = json!({"Records": keys.iter().enumerate().map(|(i, k)| s3.sqs_message(&format!("m{i}"), s3.s3_event(&[k]).to_string())).collect::<Vec<_>>()});

    // The first function dies right after its Lance commit (held there, then killed).
    let mut first = api.function(&[
        ("SLUICE_ROOT", &lake),
        ("SLUICE_CLOCK_SKEW", "0s"),
        ("SLUICE_DEADLINE_MARGIN", "500ms"),
        ("FAILPOINTS", "ingest.after-commit=sleep(600000)"),
        ("SLUICE_TRACE_FAILPOINTS", "1"),
    ]);
    api.invoke(&batch, Duration::from_secs(4));
    first.reached(sluice::failpoints::AFTER_COMMIT);
    first.0.kill().unwrap();

    // SQS redelivers the batch to a new function once the visibility timeout passes.
    let _second = api.function(&[("SLUICE_ROOT", &lake), ("SLUICE_CLOCK_SKEW", "0s")]);
    let r = response(api.call(&batch));
    assert_eq!(r["batchItemFailures"].as_array().unwrap().len(), 0, "{r}");
    let want: Vec<i64> = (0..4).flat_map(|i| i * 100..i * 100 + 50).collect();
    assert_eq!(scan(&lake, "t"), want, "every row exactly once");
}

fn fragments(root: &str, table: &str) -> u64 {
    status(root)["tables"].as_array().unwrap().iter().find(|t| t["name"] == table).unwrap()["fragments"].as_u64().unwrap()
}

/// An `optimize` invocation fans its compaction out to worker invocations
/// through Lambda's Invoke API, then commits every result once. Workers that
/// fail after writing their files, or a worker function that does not exist,
/// fail the compaction with nothing committed; the next run compacts.
#[test]
fn optimize_fans_out_over_worker_invocations() {
    let Some(s3) = S3::new() else { return };
    let lake = s3.lake();
    let env = [("SLUICE_ROOT", lake.as_str()), ("SLUICE_CLOCK_SKEW", "0s"), ("SLUICE_OPTIMIZE_TARGET_ROWS", "20"), ("SLUICE_OPTIMIZE_PARALLEL", "3")];
    let with = |extra: (&'static str, &'static str)| env.iter().copied().chain([extra]).collect::<Vec<_>>();
    // Twelve one-file ingests: twelve fragments of ten rows, six tasks of two.
    {
        let api = RuntimeApi::start();
        let _f = api.function(&env);
        for i in 0..12 {
            let key = s3.rows(&format!("t/f{i:02}.jsonl"), i * 10..i * 10 + 10);
            response(api.call(&s3.s3_event(&[&key])));
        }
    }
    assert_eq!(fragments(&lake, "t"), 12);

    // Each API is one function's pool of sandboxes: the coordinator and three workers.
    for (extra, why) in [(("FAILPOINTS", "optimize.after-rewrite=return"), "failpoint optimize.after-rewrite"), (("SLUICE_WORKER_FUNCTION", "no-such-function"), "Function not found: no-such-function")] {
        let api = RuntimeApi::start();
        let _pool: Vec<Function> = (0..4).map(|_| api.function(&with(extra))).collect();
        match api.call(&json!({"action": "optimize"})) {
            Answer::Error(e) => assert!(e.to_string().contains("compaction worker invocation") && e.to_string().contains(why), "{e}"),
            Answer::Response(r) => panic!("a failed worker must fail the compaction: {r}"),
        }
        assert_eq!(fragments(&lake, "t"), 12, "nothing committed");
        assert_eq!(pending(&lake), 0, "the coordinator's intent is gone");
    }

    let api = RuntimeApi::start();
    let pool: Vec<Function> = (0..4).map(|_| api.function(&env)).collect();
    let r = response(api.call(&json!({"action": "optimize"})));
    let t = &r["tables"][0];
    assert_eq!((t["action"].as_str(), t["tasks"].as_u64(), t["workers"].as_u64()), (Some("compacted"), Some(6), Some(3)), "{r}");
    assert_eq!(fragments(&lake, "t"), 6);
    assert_eq!(scan(&lake, "t"), (0..120).collect::<Vec<_>>(), "every row, once");
    let lines: usize = pool.iter().map(|f| f.metrics().len()).sum();
    assert_eq!(lines, 4, "the coordinator's invocation and three workers'");

    // The failed workers' files (six tasks, one file each) are orphans; cleanup reclaims them.
    let r = response(api.call(&json!({"action": "cleanup"})));
    assert_eq!(r["tables"][0]["data_files_removed"], 6, "{r}");
    assert_eq!(scan(&lake, "t"), (0..120).collect::<Vec<_>>());
}

/// scripts/invoke.sh through the AWS CLI and Lambda's Invoke API, as an
/// operator runs it: actions with KEY=VALUE arguments, the function's JSON
/// result on stdout, exit 1 when the function reports an error.
#[test]
fn the_invoke_script_runs_actions_on_the_function() {
    let Some(s3) = S3::new() else { return };
    let api = RuntimeApi::start();
    let lake = s3.lake();
    let _f = api.function(&[("SLUICE_ROOT", &lake), ("SLUICE_CLOCK_SKEW", "0s")]);
    let venv = std::env::var("SLUICE_VENV").unwrap_or_else(|_| format!("{}/.cache/sluice-venv", std::env::var("HOME").unwrap()));
    let invoke = |args: &[&str]| {
        let out = run(Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/invoke.sh"))
            .env("PATH", format!("{venv}/bin:{}", std::env::var("PATH").unwrap()))
            .args(["--function", FUNCTION, "--endpoint-url", &format!("http://{}", api.addr)])
            .args(args));
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        (out.status.code(), stdout, String::from_utf8_lossy(&out.stderr).to_string())
    };

    let key = s3.rows("t/f1.jsonl", 0..7);
    let sources = format!("sources=s3://{}/{key}", s3.bucket);
    let (code, out, err) = invoke(&["ingest", &sources, "table=orders"]);
    assert_eq!(code, Some(0), "{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["tables"]["orders"]["rows_inserted"], 7, "{report}");

    let (code, out, _) = invoke(&["status"]);
    assert_eq!(code, Some(0));
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["tables"][0]["name"], "orders");
    let (code, out, _) = invoke(&["optimize", "tables=orders", "dry_run=true"]);
    assert_eq!(code, Some(0));
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["tables"][0]["table"], "orders", "{out}");

    // A source that does not exist: the function's error, and exit 1.
    let missing = format!("sources=s3://{}/{}/incoming/t/none.jsonl", s3.bucket, s3.prefix);
    let (code, out, err) = invoke(&["ingest", &missing, "table=orders"]);
    assert_eq!(code, Some(1), "{out} {err}");
    assert!(out.contains("errorMessage") && err.contains("reported an error"), "{out} {err}");
    assert_eq!(scan(&lake, "orders"), (0..7).collect::<Vec<_>>());
}

/// When the invocation's time runs short, the function starts no new work:
/// an SQS batch reports the messages it did not ingest as failed ("not done",
/// so SQS delivers them again) and keeps what it finished; an optimize run
/// reports its tables as not done. Nothing is half-visible, and a later
/// delivery or run finishes the job exactly once.
#[test]
fn time_running_short_reports_the_rest_as_not_done() {
    let Some(s3) = S3::new() else { return };
    let lake = s3.lake();
    let keys: Vec<String> = (0..4).map(|i| s3.rows(&format!("t/f{i}.jsonl"), i * 10..i * 10 + 10)).collect();
    let mut records: Vec<Value> = keys.iter().enumerate().map(|(i, k)| s3.sqs_message(&format!("m{i}"), s3.s3_event(&[k]).to_string())).collect();
    // A missing object fails the whole batch, so the messages are ingested one at a time, 3 s each.
    records.push(s3.sqs_message("m-missing", s3.s3_event(&[&format!("{}/incoming/t/none.jsonl", s3.prefix)]).to_string()));
    let batch = json!({"Records": records});
    let slow = [("SLUICE_ROOT", lake.as_str()), ("SLUICE_CLOCK_SKEW", "0s"), ("SLUICE_DEADLINE_MARGIN", "500ms"), ("FAILPOINTS", "ingest.after-intent=sleep(3000)")];
    let r = {
        let api = RuntimeApi::start();
        let _f = api.function(&slow);
        let id = api.invoke(&batch, Duration::from_secs(9));
        response(api.answer(&id, Duration::from_secs(60)))
    };
    let not_done: Vec<&str> = r["not_done"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    let failed: Vec<&str> = r["batchItemFailures"].as_array().unwrap().iter().map(|f| f["itemIdentifier"].as_str().unwrap()).collect();
    assert!(!not_done.is_empty() && not_done.iter().all(|id| failed.contains(id)), "{r}");
    assert!(r["failures"][not_done[0]].as_str().unwrap().starts_with("not done"), "{r}");
    let landed: Vec<usize> = (0..4).filter(|i| !failed.contains(&format!("m{i}").as_str())).collect();
    assert!(landed.contains(&0), "the first message had time: {r}");
    let want = |msgs: &[usize]| msgs.iter().flat_map(|&i| i as i64 * 10..i as i64 * 10 + 10).collect::<Vec<_>>();
    assert_eq!(scan(&lake, "t"), want(&landed), "what finished is published; nothing else is visible");

    // SQS delivers the failed messages again, to a function with time enough.
    let api = RuntimeApi::start();
    let _f = api.function(&[("SLUICE_ROOT", &lake), ("SLUICE_CLOCK_SKEW", "0s"), ("SLUICE_OPTIMIZE_TARGET_ROWS", "100")]);
    let again: Vec<Value> = batch["Records"].as_array().unwrap().iter().filter(|m| failed.contains(&m["messageId"].as_str().unwrap())).cloned().collect();
    let r = response(api.call(&json!({"Records": again})));
    let failed: Vec<&str> = r["batchItemFailures"].as_array().unwrap().iter().map(|f| f["itemIdentifier"].as_str().unwrap()).collect();
    assert_eq!(failed, ["m-missing"], "{r}");
    assert_eq!(scan(&lake, "t"), want(&[0, 1, 2, 3]), "every row exactly once");

    // An optimize run out of time: its tables are not done, nothing is committed; the next run compacts.
    let k = s3.rows("u/g0.jsonl", 100..110);
    response(api.call(&s3.s3_event(&[&k])));
    let k = s3.rows("u/g1.jsonl", 110..120);
    response(api.call(&s3.s3_event(&[&k])));
    let r = {
        let slow_api = RuntimeApi::start();
        let _f = slow_api.function(&[("SLUICE_ROOT", &lake), ("SLUICE_CLOCK_SKEW", "0s"), ("SLUICE_DEADLINE_MARGIN", "500ms"), ("SLUICE_OPTIMIZE_TARGET_ROWS", "100"), ("FAILPOINTS", "optimize.after-intent=sleep(6000)")]);
        let id = slow_api.invoke(&json!({"action": "optimize"}), Duration::from_secs(6));
        response(slow_api.answer(&id, Duration::from_secs(60)))
    };
    let actions: Vec<&str> = r["tables"].as_array().unwrap().iter().map(|t| t["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["not_done", "not_done"], "{r}");
    assert!(r["tables"][1]["reason"].as_str().unwrap().starts_with("not started"), "{r}");
    assert_eq!(pending(&lake), 0, "the intent is gone");
    let r = response(api.call(&json!({"action": "optimize"})));
    let actions: Vec<&str> = r["tables"].as_array().unwrap().iter().map(|t| t["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["compacted", "compacted"], "{r}");
    assert_eq!(scan(&lake, "u"), (100..120).collect::<Vec<_>>());
}

/// Events lost (a rule changed, DLQ messages expired): the scheduled backfill
/// lists the configured prefix and ingests what the lake lacks, routed by
/// the configured prefixes, once; rerun, it ingests nothing.
#[test]
fn a_scheduled_backfill_catches_sources_whose_events_were_lost() {
    let Some(s3) = S3::new() else { return };
    let lake = s3.lake();
    let keys: Vec<String> = (0..6).map(|i| s3.rows(&format!("orders/day {i}.jsonl"), i * 10..i * 10 + 10)).collect();
    let prefix = format!("s3://{}/{}/incoming/", s3.bucket, s3.prefix);
    let tables = json!({format!("{}/incoming/orders/", s3.prefix): {"table": "sales"}}).to_string();
    let api = RuntimeApi::start();
    let _f = api.function(&[
        ("SLUICE_ROOT", &lake),
        ("SLUICE_TABLES", &tables),
        ("SLUICE_CLOCK_SKEW", "0s"),
        ("SLUICE_SCHEDULED_ACTION", "backfill"),
        ("SLUICE_BACKFILL_PREFIXES", &prefix),
        ("SLUICE_BACKFILL_SINCE", "1day"),
    ]);
    // Two events arrived.
    response(api.call(&s3.s3_event(&[&keys[0], &keys[3]])));
    let scheduled = json!({"version": "0", "id": "e3", "detail-type": "Scheduled Event", "source": "aws.events", "account": "0",
        "time": "2026-11-30T12:00:00Z", "region": "us-east-1", "resources": [], "detail": {}});
    let r = response(api.call(&scheduled));
    assert_eq!((r["listed"].as_u64(), r["held"].as_u64(), r["ingested"].as_u64()), (Some(6), Some(2), Some(4)), "{r}");
    assert_eq!(scan(&lake, "sales"), (0..60).collect::<Vec<_>>());
    let r = response(api.call(&scheduled));
    assert_eq!((r["held"].as_u64(), r["ingested"].as_u64()), (Some(6), Some(0)), "{r}");
    // A direct invocation names its own prefix and window.
    let r = response(api.call(&json!({"action": "backfill", "prefixes": [prefix], "since": "2099-01-01T00:00:00Z", "dry_run": true})));
    assert_eq!(r["listed"], 0, "{r}");
}
