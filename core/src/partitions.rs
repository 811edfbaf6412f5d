//! Hive-style paths: `.../events/date=2026-11-30/hour=05/part-0.jsonl` goes
//! to table `events`, and, when the table says so, `date` and `hour` become
//! typed columns holding the path's values for every row of the file.
//!
//! The setting is the table's, fixed when it is created and kept in its
//! schema metadata (`sluice.partitions`): the partition columns, typed like
//! any column, or none (`off`: the segments only route). A path with
//! partition segments into a table that never said is a usage error rather
//! than values silently dropped.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use crate::error::{BadInput, Error, Location, Result};
use crate::types;

/// Schema metadata: a JSON array of the partition columns' names (`[]`: off).
pub const META_PARTITIONS: &str = "sluice.partitions";

/// How a table stores its path's partition segments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Partitions {
    /// Segments route, nothing is stored.
    Off,
    /// These columns, of these types (`types.rs` spellings), in path order.
    Columns(Vec<(String, String)>),
}

impl Partitions {
    /// `off`, or `date:date,hour:int32`.
    pub fn parse(s: &str) -> Result<Partitions> {
        if s.trim().eq_ignore_ascii_case("off") {
            return Ok(Partitions::Off);
        }
        let columns = s
            .split(',')
            .map(|c| {
                let (name, t) = c.split_once(':').ok_or_else(|| Error::Usage(format!("partition column '{c}': use NAME:TYPE, e.g. date:date")))?;
                types::parse(t).map_err(|e| Error::Usage(format!("partition column '{name}': {e}")))?;
                Ok((name.trim().to_string(), t.trim().to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Partitions::Columns(columns))
    }

    fn fields(&self) -> Vec<Field> {
        match self {
            Partitions::Off => Vec::new(),
            Partitions::Columns(c) => c.iter().map(|(n, t)| Field::new(n, types::parse(t).expect("checked when parsed"), false)).collect(),
        }
    }
}

/// The `key=value` segments of a source's path, in order (values percent-decoded, as Hive writes them).
pub fn segments(uri: &str) -> Vec<(String, String)> {
    let mut parts: Vec<&str> = uri.split('/').collect();
    parts.pop(); // the file name
    let mut out: Vec<(String, String)> = parts
        .iter()
        .rev()
        .map_while(|p| p.split_once('=').filter(|(k, _)| !k.is_empty()))
        .map(|(k, v)| (k.to_string(), url::form_urlencoded::parse(format!("v={}", v.replace('+', "%2B")).as_bytes()).next().map(|(_, v)| v.into_owned()).unwrap_or_default()))
        .collect();
    out.reverse();
    out
}

/// A new table's schema with its partition columns (after the file's) and
/// the setting in its metadata. `None` with partition segments in the path is
/// refused: the caller must say what to do with them.
pub fn new_table(schema: &Schema, asked: Option<&Partitions>, first_uri: &str, table: &str) -> Result<Schema> {
    let asked = match asked {
        Some(p) => p.clone(),
        None if segments(first_uri).is_empty() => return Ok(schema.clone()),
        None => return Err(undeclared(first_uri, table)),
    };
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    for f in asked.fields() {
        if fields.iter().any(|x| x.name() == f.name()) {
            return Err(Error::Usage(format!("partition column '{}' is also a column of the files: rename one", f.name())));
        }
        fields.push(f);
    }
    let names: Vec<String> = asked.fields().iter().map(|f| f.name().clone()).collect();
    let mut metadata = schema.metadata().clone();
    metadata.insert(META_PARTITIONS.to_string(), serde_json::to_string(&names).expect("names serialize"));
    Ok(Schema::new_with_metadata(fields, metadata))
}

fn undeclared(uri: &str, table: &str) -> Error {
    let seen: Vec<String> = segments(uri).iter().map(|(k, v)| format!("{k}={v}")).collect();
    Error::Usage(format!(
        "{uri} has partition segments ({}) and table '{table}' does not say what to do with them: pass --partitions \
         NAME:TYPE,... to store them as columns (e.g. {}), or --partitions off to only route by them",
        seen.join(", "),
        segments(uri).iter().map(|(k, _)| format!("{k}:string")).collect::<Vec<_>>().join(",")
    ))
}

/// The table's partition columns, from its schema metadata (`None`: never said).
pub fn of_table(schema: &Schema) -> Option<Vec<String>> {
    schema.metadata().get(META_PARTITIONS).and_then(|v| serde_json::from_str(v).ok())
}

/// Check an existing table's setting against a request and a source.
pub fn check(schema: &Schema, asked: Option<&Partitions>, uri: &str, table: &str) -> Result<()> {
    let names = of_table(schema);
    if let Some(asked) = asked {
        let want: Vec<String> = asked.fields().iter().map(|f| f.name().clone()).collect();
        if names.as_ref().is_some_and(|n| *n != want) || (names.is_none() && !want.is_empty()) {
            return Err(Error::Usage(format!("table '{table}' partitions by {:?}; it cannot take --partitions {want:?}", names.unwrap_or_default())));
        }
    }
    if names.is_none() && !segments(uri).is_empty() && asked.is_none() {
        return Err(undeclared(uri, table));
    }
    Ok(())
}

/// The file's part of the table schema (without partition columns), and a
/// function adding the path's partition values to each of its batches.
pub type AddValues = Box<dyn Fn(RecordBatch, u64) -> Result<RecordBatch> + Send>;

pub fn split(target: &SchemaRef, uri: &str) -> Result<(SchemaRef, Option<AddValues>)> {
    let names = of_table(target).unwrap_or_default();
    if names.is_empty() {
        return Ok((Arc::clone(target), None));
    }
    let values = segments(uri);
    if let Some((k, v)) = values.iter().find(|(k, _)| !names.contains(k)) {
        return Err(Error::BadInput(BadInput {
            source_uri: uri.to_string(),
            location: Location::default(),
            reason: format!("the path has a partition folder {k}={v} the table does not store (it partitions by {names:?}): its value would be lost"),
            new_column: false,
        }));
    }
    let file = Arc::new(Schema::new_with_metadata(
        target.fields().iter().filter(|f| !names.contains(f.name())).cloned().collect::<Vec<_>>(),
        target.metadata().clone(),
    ));
    let mut constants: Vec<(String, String, DataType)> = Vec::new();
    for name in &names {
        let field = target.field_with_name(name).map_err(|e| Error::Usage(format!("partition column '{name}': {e}")))?;
        let value = values.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).ok_or_else(|| {
            Error::BadInput(BadInput {
                source_uri: uri.to_string(),
                location: Location { line: None, column: Some(name.clone()) },
                reason: format!("the path has no {name}=... segment, and the table partitions by {names:?}"),
                new_column: false,
            })
        })?;
        constants.push((name.clone(), value, field.data_type().clone()));
    }
    let (target, uri) = (Arc::clone(target), uri.to_string());
    let add: AddValues = Box::new(move |batch: RecordBatch, first_row: u64| {
        let rows = batch.num_rows();
        let columns = target
            .fields()
            .iter()
            .map(|f| match constants.iter().find(|(n, _, _)| n == f.name()) {
                Some((name, value, t)) => {
                    let text: ArrayRef = Arc::new(StringArray::from(vec![value.as_str(); rows]));
                    parse(&text, t).map_err(|reason| {
                        Error::BadInput(BadInput {
                            source_uri: uri.clone(),
                            location: Location { line: Some(first_row), column: Some(name.clone()) },
                            reason: format!("path segment {name}={value}: {reason}"),
                            new_column: false,
                        })
                    })
                }
                None => Ok(Arc::clone(batch.column_by_name(f.name()).expect("conformed to the file's part of the schema"))),
            })
            .collect::<Result<Vec<_>>>()?;
        RecordBatch::try_new(Arc::clone(&target), columns).map_err(|e| Error::Usage(format!("adding partition columns: {e}")))
    });
    Ok((file, Some(add)))
}

/// Path text parsed as the column's type (`05` is the integer 5): text is
/// what a path holds, so parsing is the point; text that does not parse is
/// refused, never stored as null.
fn parse(text: &ArrayRef, t: &DataType) -> std::result::Result<ArrayRef, String> {
    let safe = arrow::compute::CastOptions { safe: true, ..Default::default() };
    let cast = arrow::compute::cast_with_options(text, t, &safe).map_err(|e| format!("cannot read it as {}: {e}", types::name(t)))?;
    if cast.null_count() > 0 {
        return Err(format!("not a value of type {}", types::name(t)));
    }
    Ok(cast)
}
