//! What an invocation asks for, from the shape of its payload: S3
//! notifications (direct, inside SQS messages, inside SNS envelopes),
//! EventBridge events (S3 "Object Created", schedules), or a direct
//! `{"action": ...}` from the scripts.

use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use aws_lambda_events::event::s3::S3Event;
use aws_lambda_events::event::sqs::SqsEvent;
use serde_json::Value;
use sluice::source::{ObjectPin, SourceSpec};

/// An object a notification announces, and the version it announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    pub bucket: String,
    pub key: String,
    pub pin: ObjectPin,
}

impl Object {
    pub fn uri(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }

    /// The source to ingest: this version of the object, not whatever the key holds now.
    pub fn spec(&self) -> SourceSpec {
        SourceSpec { uri: self.uri(), pin: (!self.pin.is_empty()).then(|| self.pin.clone()) }
    }
}

fn pin(version_id: Option<&str>, e_tag: Option<&str>) -> ObjectPin {
    let keep = |s: Option<&str>| s.map(str::trim).filter(|s| !s.is_empty() && *s != "null").map(str::to_string);
    ObjectPin { version_id: keep(version_id), e_tag: keep(e_tag) }
}

/// One SQS message: its objects, or why it cannot be read (a poison message).
#[derive(Debug)]
pub struct Message {
    pub id: String,
    pub objects: Result<Vec<Object>, String>,
}

#[derive(Debug)]
pub enum Work {
    /// Objects to ingest (S3 notification or EventBridge "Object Created").
    Objects(Vec<Object>),
    /// An SQS batch: report failures per message.
    Batch(Vec<Message>),
    /// A direct invocation, or a schedule carrying an action.
    Action(Value),
    /// A schedule without an action: the configured one.
    Scheduled,
    /// Nothing to do (S3's test event).
    Ignore(&'static str),
}

/// S3 notification keys are URL-encoded, with '+' for a space.
fn decode_key(key: &str) -> String {
    let spaced = key.replace('+', " ");
    url::form_urlencoded::parse(format!("k={}", spaced.replace('&', "%26").replace('=', "%3D")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or(spaced)
}

fn s3_objects(event: S3Event) -> Vec<Object> {
    event
        .records
        .into_iter()
        .filter(|r| r.event_name.as_deref().is_none_or(|n| n.starts_with("ObjectCreated")))
        .filter_map(|r| {
            let pin = pin(r.s3.object.version_id.as_deref(), r.s3.object.e_tag.as_deref());
            Some(Object { bucket: r.s3.bucket.name?, key: decode_key(&r.s3.object.key?), pin })
        })
        .collect()
}

/// The objects in an SQS message body: an S3 notification, or one wrapped in an SNS envelope.
fn message_objects(body: &str) -> Result<Vec<Object>, String> {
    let value: Value = serde_json::from_str(body).map_err(|e| format!("message body is not JSON: {e}"))?;
    if value.get("Event").and_then(Value::as_str) == Some("s3:TestEvent") {
        return Ok(Vec::new());
    }
    if value.get("Type").and_then(Value::as_str) == Some("Notification") {
        let inner = value.get("Message").and_then(Value::as_str).ok_or("SNS envelope without a Message")?;
        return message_objects(inner);
    }
    if value.get("Records").is_some() {
        let event: S3Event = serde_json::from_value(value).map_err(|e| format!("not an S3 notification: {e}"))?;
        return Ok(s3_objects(event));
    }
    if value.get("detail-type").is_some() {
        return eventbridge_objects(value);
    }
    Err("message body is neither an S3 notification, an SNS envelope of one, nor an EventBridge event".into())
}

fn eventbridge_objects(value: Value) -> Result<Vec<Object>, String> {
    let event: EventBridgeEvent<Value> = serde_json::from_value(value).map_err(|e| format!("not an EventBridge event: {e}"))?;
    let bucket = event.detail.pointer("/bucket/name").and_then(Value::as_str);
    let key = event.detail.pointer("/object/key").and_then(Value::as_str);
    match (bucket, key) {
        (Some(bucket), Some(key)) => {
            let field = |name: &str| event.detail.pointer(&format!("/object/{name}")).and_then(Value::as_str);
            Ok(vec![Object { bucket: bucket.into(), key: key.into(), pin: pin(field("version-id"), field("etag")) }])
        }
        _ => Err("EventBridge Object Created event without detail.bucket.name and detail.object.key".into()),
    }
}

pub fn classify(payload: Value) -> Result<Work, String> {
    if payload.get("action").is_some() {
        return Ok(Work::Action(payload));
    }
    let source = payload.pointer("/Records/0/eventSource").or_else(|| payload.pointer("/Records/0/EventSource")).and_then(Value::as_str);
    match source {
        Some("aws:s3") => {
            let event: S3Event = serde_json::from_value(payload).map_err(|e| format!("not an S3 notification: {e}"))?;
            return Ok(Work::Objects(s3_objects(event)));
        }
        Some("aws:sqs") => {
            let event: SqsEvent = serde_json::from_value(payload).map_err(|e| format!("not an SQS event: {e}"))?;
            let messages = event
                .records
                .into_iter()
                .map(|m| Message {
                    id: m.message_id.unwrap_or_default(),
                    objects: m.body.as_deref().map_or(Err("empty message".to_string()), message_objects),
                })
                .collect();
            return Ok(Work::Batch(messages));
        }
        Some("aws:sns") => {
            let message = payload.pointer("/Records/0/Sns/Message").and_then(Value::as_str).ok_or("SNS event without a message")?;
            return message_objects(message).map(Work::Objects);
        }
        _ => {}
    }
    if payload.get("Event").and_then(Value::as_str) == Some("s3:TestEvent") {
        return Ok(Work::Ignore("S3 test event"));
    }
    match payload.get("detail-type").and_then(Value::as_str) {
        Some("Object Created") => eventbridge_objects(payload).map(Work::Objects),
        Some("Scheduled Event") => match payload.pointer("/detail/action") {
            Some(_) => Ok(Work::Action(payload["detail"].clone())),
            None => Ok(Work::Scheduled),
        },
        Some(other) => Err(format!("EventBridge events of type '{other}' are not handled")),
        None => Err("unrecognised payload: expected an S3, SQS, SNS or EventBridge event, or {\"action\": ...}".into()),
    }
}
