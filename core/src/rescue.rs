//! A `rescue` table's catch-all: what a source has that does not fit the
//! table — a field it lacks, a value its column cannot hold as written — goes
//! into the `_rescued_data` column, one JSON object per row (null when
//! nothing was rescued), instead of failing the file. The row's other values
//! go in as usual. What is not a row (a malformed line, a corrupt file) is
//! still bad input.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;

use crate::json_members;
pub use crate::settings::RESCUE_COLUMN;

/// The rescue column's field: text, nullable.
pub fn field() -> Field {
    Field::new(RESCUE_COLUMN, DataType::Utf8, true)
}

/// Rescued cells of one batch, as they were in the file: per file column,
/// its values where rescued and null elsewhere.
#[derive(Default)]
pub struct Cells {
    fields: Vec<Field>,
    columns: Vec<ArrayRef>,
}

impl Cells {
    /// Rescue the whole column `name`.
    pub fn add(&mut self, name: &str, column: ArrayRef) {
        self.fields.push(Field::new(name, column.data_type().clone(), true));
        self.columns.push(column);
    }

    /// Rescue the rows of `column` that `rescued` marks.
    pub fn add_rows(&mut self, name: &str, column: &ArrayRef, rescued: &BooleanArray) -> Result<(), arrow::error::ArrowError> {
        let kept = arrow::compute::not(rescued)?;
        self.add(name, arrow::compute::nullif(column, &kept)?);
        Ok(())
    }

    /// One JSON object per row (its non-null cells), or null.
    pub fn to_json(&self, rows: usize) -> Result<ArrayRef, arrow::error::ArrowError> {
        if self.columns.is_empty() {
            return Ok(arrow::array::new_null_array(&DataType::Utf8, rows));
        }
        let batch = RecordBatch::try_new(Arc::new(Schema::new(self.fields.clone())), self.columns.clone())?;
        let mut writer = arrow::json::LineDelimitedWriter::new(Vec::new());
        writer.write(&batch)?;
        writer.finish()?;
        let text = String::from_utf8(writer.into_inner()).map_err(|e| arrow::error::ArrowError::ExternalError(Box::new(e)))?;
        let objects: StringArray = text.lines().map(|o| (o != "{}").then_some(o)).collect();
        assert_eq!(objects.len(), rows, "one JSON object per row");
        Ok(Arc::new(objects))
    }
}

/// Cast `column` to `to` row by row with `cast` (after the whole column
/// failed): the column with the rows that do not cast left null, and which
/// those are.
pub fn cast_by_row<E>(column: &ArrayRef, to: &DataType, cast: impl Fn(&ArrayRef) -> Result<ArrayRef, E>) -> Result<(ArrayRef, BooleanArray), arrow::error::ArrowError> {
    let failed: BooleanArray = (0..column.len()).map(|r| Some(column.is_valid(r) && cast(&column.slice(r, 1)).is_err())).collect();
    let kept = arrow::compute::nullif(column, &failed)?;
    // No value left: a cast refused for the column's type alone (text into
    // a number column) would refuse even the nulls.
    if kept.null_count() == kept.len() {
        return Ok((arrow::array::new_null_array(to, column.len()), failed));
    }
    let cast = cast(&kept).map_err(|_| arrow::error::ArrowError::ComputeError("a column cast row by row still fails whole".into()))?;
    Ok((cast, failed))
}

/// The top-level members of one JSON object's text, as written: (key, the
/// member's text `"key": value`). `None` if `line` is not one JSON object
/// (the caller has parsed it already; this only finds the spans).
pub fn members(line: &[u8]) -> Option<Vec<(String, &[u8])>> {
    let mut out = Vec::new();
    let mut keys_are_text = true;
    let whole = json_members::walk(line, |m| match m.key() {
        Some(key) => out.push((key.into_owned(), m.text)),
        None => keys_are_text = false,
    });
    (whole && keys_are_text).then_some(out)
}

/// `{` + the members + `}`.
pub fn object(members: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + members.iter().map(|m| m.len() + 1).sum::<usize>());
    out.push(b'{');
    for (n, m) in members.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        out.extend_from_slice(m);
    }
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_keep_each_value_as_written() {
        let line = br#" { "a" : 1.50 , "b\"q": {"x": [1, "}"]}, "c": "s,}", "d": 123456789012345678901234 }"#;
        let m = members(line).unwrap();
        let keys: Vec<&str> = m.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["a", "b\"q", "c", "d"]);
        let texts: Vec<&str> = m.iter().map(|(_, t)| std::str::from_utf8(t).unwrap()).collect();
        assert_eq!(texts, [r#""a" : 1.50"#, r#""b\"q": {"x": [1, "}"]}"#, r#""c": "s,}""#, r#""d": 123456789012345678901234"#]);
        assert_eq!(object(&[m[0].1, m[3].1]), br#"{"a" : 1.50,"d": 123456789012345678901234}"#.to_vec());
        assert_eq!(members(b"{}").unwrap().len(), 0);
        assert!(members(b"[1]").is_none());
    }
}
