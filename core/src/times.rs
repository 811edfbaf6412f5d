//! ISO-8601 text in a new table's first file becomes a date or timestamp
//! column, not a string: `2026-11-30` a `date`, `2026-11-30T05:00:00Z` (or a
//! space for the `T`, an offset, no zone meaning UTC) a `timestamp`, in
//! microseconds, UTC; nanoseconds where a value has digits below the
//! microsecond (a cast to microseconds would change it). A column mixing the
//! two, or holding any other text, stays a string.

use std::collections::HashMap;

use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use chrono::{DateTime, NaiveDate, NaiveDateTime, Timelike};

/// What every string seen so far in one column parses as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Guess {
    Date,
    Timestamp { nanos: bool },
    Text,
}

/// `2026-11-30`: a date, written as a date.
pub fn is_date(s: &str) -> bool {
    s.len() == 10 && NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok()
}

fn classify(s: &str) -> Guess {
    if is_date(s) {
        return Guess::Date;
    }
    match parse_timestamp(s) {
        Some(t) => Guess::Timestamp { nanos: t.nanosecond() % 1000 != 0 },
        None => Guess::Text,
    }
}

/// ISO-8601 timestamp text as an instant (UTC): RFC 3339, or a `T` or space
/// between date and time with no zone (meaning UTC).
pub fn parse_timestamp(s: &str) -> Option<NaiveDateTime> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.naive_utc())
        .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f"))
        .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f"))
        .ok()
}

fn join(a: Guess, b: Guess) -> Guess {
    match (a, b) {
        (Guess::Date, Guess::Date) => Guess::Date,
        (Guess::Timestamp { nanos: x }, Guess::Timestamp { nanos: y }) => Guess::Timestamp { nanos: x || y },
        _ => Guess::Text,
    }
}

/// Watches the top-level values of JSON records: which strings are times,
/// and the order keys first appear in (the table's column order).
#[derive(Debug, Default)]
pub struct TimeColumns {
    guesses: HashMap<String, Guess>,
    order: Vec<String>,
    seen: std::collections::HashSet<String>,
}

impl TimeColumns {
    pub fn observe(&mut self, record: &serde_json::Value) {
        let Some(object) = record.as_object() else { return };
        for (key, value) in object {
            let guess = match value {
                serde_json::Value::Null => continue,
                serde_json::Value::String(s) => classify(s),
                _ => Guess::Text,
            };
            match self.guesses.get_mut(key) {
                Some(g) => *g = join(*g, guess),
                None => {
                    self.guesses.insert(key.clone(), guess);
                }
            }
        }

    }

    /// Note the keys of one record's raw text in the order they are written
    /// (a parsed `serde_json::Value` has them sorted).
    pub fn observe_order(&mut self, line: &[u8]) {
        struct Keys<'a>(&'a mut TimeColumns);
        impl<'de> serde::de::Visitor<'de> for Keys<'_> {
            type Value = ();
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    if self.0.order.len() < MAX_ORDERED && !self.0.seen.contains(key.as_ref()) {
                        self.0.seen.insert(key.to_string());
                        self.0.order.push(key.into_owned());
                    }
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
                Ok(())
            }
        }
        if self.order.len() < MAX_ORDERED {
            let _ = serde::Deserializer::deserialize_map(&mut serde_json::Deserializer::from_slice(line), Keys(self));
        }
    }

    /// `schema` (as arrow inferred it: such columns are strings) with the
    /// columns that held only dates or only timestamps typed as such.
    pub fn apply(&self, schema: Schema) -> Schema {
        let rank: HashMap<&str, usize> = self.order.iter().enumerate().map(|(i, k)| (k.as_str(), i)).collect();
        let position = |name: &str| rank.get(name).copied().unwrap_or(usize::MAX);
        let mut fields: Vec<Field> = schema
            .fields()
            .iter()
            .map(|f| match (f.data_type(), self.guesses.get(f.name())) {
                (DataType::Utf8, Some(Guess::Date)) => f.as_ref().clone().with_data_type(DataType::Date32),
                (DataType::Utf8, Some(Guess::Timestamp { nanos })) => f.as_ref().clone().with_data_type(timestamp(*nanos)),
                _ => f.as_ref().clone(),
            })
            .collect();
        fields.sort_by_key(|f| position(f.name()));
        Schema::new_with_metadata(fields, schema.metadata().clone())
    }
}

/// Keys whose first-seen order is kept (beyond, arrow's order stands).
const MAX_ORDERED: usize = 4096;

fn timestamp(nanos: bool) -> DataType {
    DataType::Timestamp(if nanos { TimeUnit::Nanosecond } else { TimeUnit::Microsecond }, Some("UTC".into()))
}

/// Arrow's CSV inference gives zoneless timestamps in the unit of the most
/// fractional digits seen: make them UTC, in microseconds unless a value
/// needs nanoseconds.
pub fn utc_timestamps(schema: Schema) -> Schema {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Timestamp(unit, None) => f.as_ref().clone().with_data_type(timestamp(*unit == TimeUnit::Nanosecond)),
            _ => f.as_ref().clone(),
        })
        .collect();
    Schema::new_with_metadata(fields, schema.metadata().clone())
}
