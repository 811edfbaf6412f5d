//! Column types as people write them (`int64`, `string`, `vector(768)`) and
//! as errors print them: the same spelling both ways.
//!
//! Anything else falls back to Arrow's own names (`Int64`,
//! `Timestamp(Microsecond, None)`), so every Arrow type stays declarable.

use std::str::FromStr;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, TimeUnit};

/// The element type of `vector(N)`: what Lance's vector indices search.
const VECTOR_ELEMENT: DataType = DataType::Float32;
/// Longest vector a column may declare (Lance's own limit is far above real embeddings).
const MAX_DIMENSIONS: i32 = 65_536;

/// A type from its spelling; `Err` says what is accepted.
pub fn parse(spelling: &str) -> Result<DataType, String> {
    let s = spelling.trim();
    let lower = s.to_ascii_lowercase();
    if let Some(inner) = lower.strip_prefix("vector(").and_then(|r| r.strip_suffix(')')) {
        let (n, element) = match inner.split_once(',') {
            Some((n, e)) => (n.trim(), parse(e)?),
            None => (inner.trim(), VECTOR_ELEMENT),
        };
        let dims: i32 = n.parse().map_err(|_| format!("'{s}': vector(N) needs a whole number of dimensions"))?;
        if !(1..=MAX_DIMENSIONS).contains(&dims) {
            return Err(format!("'{s}': a vector has 1 to {MAX_DIMENSIONS} dimensions"));
        }
        if !matches!(element, DataType::Float16 | DataType::Float32 | DataType::Float64 | DataType::UInt8 | DataType::Int8) {
            return Err(format!("'{s}': vector elements are float32 (the default), float16, float64, uint8 or int8"));
        }
        return Ok(DataType::FixedSizeList(item(element), dims));
    }
    if let Some(inner) = lower.strip_prefix("list<").and_then(|r| r.strip_suffix('>')) {
        return Ok(DataType::List(item(parse(inner)?)));
    }
    let simple = match lower.as_str() {
        "bool" | "boolean" => DataType::Boolean,
        "int8" => DataType::Int8,
        "int16" => DataType::Int16,
        "int32" | "int" => DataType::Int32,
        "int64" | "bigint" | "long" => DataType::Int64,
        "uint8" => DataType::UInt8,
        "uint16" => DataType::UInt16,
        "uint32" => DataType::UInt32,
        "uint64" => DataType::UInt64,
        "float16" | "half" => DataType::Float16,
        "float32" | "float" => DataType::Float32,
        "float64" | "double" => DataType::Float64,
        "string" | "utf8" | "text" => DataType::Utf8,
        "large_string" => DataType::LargeUtf8,
        "binary" | "bytes" => DataType::Binary,
        "date" | "date32" => DataType::Date32,
        "timestamp" => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        _ => {
            return DataType::from_str(s).map_err(|_| {
                format!(
                    "unknown type '{s}': use bool, int8..int64, uint8..uint64, float16, float32, float64, string, binary, \
                     date, timestamp, list<T>, vector(N) (float32; or vector(N, float16|float64|uint8|int8)), or an Arrow type name"
                )
            });
        }
    };
    Ok(simple)
}

/// The spelling [`parse`] reads back as exactly `t`: readable where one
/// exists, Arrow's name otherwise.
pub fn name(t: &DataType) -> String {
    let readable = match t {
        DataType::Boolean => "bool".to_string(),
        DataType::Int8 => "int8".into(),
        DataType::Int16 => "int16".into(),
        DataType::Int32 => "int32".into(),
        DataType::Int64 => "int64".into(),
        DataType::UInt8 => "uint8".into(),
        DataType::UInt16 => "uint16".into(),
        DataType::UInt32 => "uint32".into(),
        DataType::UInt64 => "uint64".into(),
        DataType::Float16 => "float16".into(),
        DataType::Float32 => "float32".into(),
        DataType::Float64 => "float64".into(),
        DataType::Utf8 => "string".into(),
        DataType::LargeUtf8 => "large_string".into(),
        DataType::Binary => "binary".into(),
        DataType::Date32 => "date".into(),
        DataType::Timestamp(TimeUnit::Microsecond, Some(tz)) if tz.as_ref() == "UTC" => "timestamp".into(),
        DataType::FixedSizeList(f, n) if f.data_type() == &VECTOR_ELEMENT => format!("vector({n})"),
        DataType::FixedSizeList(f, n) => format!("vector({n}, {})", name(f.data_type())),
        DataType::List(f) => format!("list<{}>", name(f.data_type())),
        other => return other.to_string(),
    };
    // Only a spelling that reads back as this very type (item field and all).
    match parse(&readable) {
        Ok(back) if &back == t => readable,
        _ => t.to_string(),
    }
}

/// `name type, ...` of every column, as a person reads a schema.
pub fn describe(schema: &arrow::datatypes::Schema) -> String {
    let columns: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| format!("{} {}{}", f.name(), name(f.data_type()), if f.is_nullable() { "" } else { " not null" }))
        .collect();
    columns.join(", ")
}

/// Is `t` a vector column (what vector indices and `search --vector` take)?
pub fn vector_dimensions(t: &DataType) -> Option<i32> {
    match t {
        DataType::FixedSizeList(f, n) if f.data_type().is_floating() || matches!(f.data_type(), DataType::UInt8 | DataType::Int8) => Some(*n),
        _ => None,
    }
}

fn item(t: DataType) -> Arc<Field> {
    Arc::new(Field::new_list_field(t, true))
}
