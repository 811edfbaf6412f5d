//! Turning source bytes into Arrow batches of a table's schema, streaming with
//! bounded memory, with every failure located (source, line or row, column).
//!
//! Parsing is arrow's and parquet's; this module only chooses the reader,
//! decompresses, conforms columns to the table schema and locates errors.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arrow::array::{Array, ArrayRef, RecordBatch, RecordBatchReader, new_null_array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use serde::Deserialize;


use crate::error::{BadInput, Error, Location, Result};
use crate::dialect::CsvOptions;
use crate::exact::{self, JsonNumbers};
use crate::partitions;
use crate::parts::{self, Part, Whole};
use crate::record_ends::RecordEnds;
use crate::rescue;
use crate::source::Source;
use crate::times::{self, TimeColumns};
use crate::types;

/// Rows per batch handed to Lance.
const BATCH_ROWS: usize = 8192;
/// Read buffer for text sources.
const READ_BUFFER: usize = 1 << 20;
/// The longest record a later part of a CSV file may hold (`open_csv_part`).
const MAX_PART_RECORD: u64 = 8 << 20;
/// Lance's marker for the key column merge-insert detects conflicts on.
const PRIMARY_KEY_META: &str = "lance-schema:unenforced-primary-key";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Jsonl,
    Csv,
    Parquet,
    /// Arrow IPC file format.
    Arrow,
    /// Arrow IPC stream format.
    ArrowStream,
}

impl FromStr for Format {
    type Err = Error;
    fn from_str(s: &str) -> Result<Format> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "jsonl" | "ndjson" | "json" => Format::Jsonl,
            "csv" | "tsv" => Format::Csv,
            "parquet" | "pq" => Format::Parquet,
            "arrow" | "ipc" | "feather" => Format::Arrow,
            "arrows" | "arrow-stream" => Format::ArrowStream,
            other => {
                return Err(Error::Usage(format!(
                    "unknown format '{other}': use jsonl, csv, parquet, arrow or arrow-stream"
                )));
            }
        })
    }
}

impl Format {
    /// The name `from_str` reads back.
    pub fn name(self) -> &'static str {
        match self {
            Format::Jsonl => "jsonl",
            Format::Csv => "csv",
            Format::Parquet => "parquet",
            Format::Arrow => "arrow",
            Format::ArrowStream => "arrow-stream",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    pub format: Format,
    pub compression: Compression,
    /// How a CSV source is written (unused for the other formats).
    pub csv: Arc<CsvOptions>,
}

impl Detected {
    /// Whether a source of `size` bytes written so is appended in parts
    /// (`parts.rs`): uncompressed JSON Lines or CSV, at least two parts' bytes.
    pub fn in_parts(&self, size: u64) -> bool {
        matches!(self.format, Format::Jsonl | Format::Csv) && self.compression == Compression::None && parts::parts_of(size) >= 2
    }
}

/// Format and compression from the file name (`x.jsonl.gz`), `forced`
/// overriding the format; `csv` says how CSV sources are written.
pub fn detect(source: &Source, forced: Option<Format>, csv: Option<&CsvOptions>) -> Result<Detected> {
    let (format, compression) = detect_name(&source.uri, forced)?;
    Ok(Detected { format, compression, csv: Arc::new(csv.cloned().unwrap_or_default()) })
}

/// Format and compression from a URI's file name alone.
pub fn detect_name(uri: &str, forced: Option<Format>) -> Result<(Format, Compression)> {
    let name = uri.rsplit('/').next().unwrap_or(uri).to_ascii_lowercase();
    let (stem, compression) = if let Some(s) = name.strip_suffix(".gz").or_else(|| name.strip_suffix(".gzip")) {
        (s, Compression::Gzip)
    } else if let Some(s) = name.strip_suffix(".zst").or_else(|| name.strip_suffix(".zstd")) {
        (s, Compression::Zstd)
    } else {
        (name.as_str(), Compression::None)
    };
    if let Some(format) = forced {
        return Ok((format, compression));
    }
    let ext = stem.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
    let format = Format::from_str(ext).map_err(|_| {
        Error::Usage(format!("cannot tell the format of {uri} from its name: pass --format jsonl|csv|parquet|arrow|arrow-stream"))
    })?;
    Ok((format, compression))
}

fn bad(source: &Source, line: Option<u64>, column: Option<String>, reason: impl Into<String>) -> Error {
    // Reading the stored bytes failed midway (the store or the disk): what
    // did not decode after it is no verdict on the file.
    if let Some(fault) = source.read_fault.get() {
        let why = format!("reading it failed midway ({fault}); the file is not judged bad and nothing of it was ingested: retry");
        return Error::io(&source.uri, std::io::Error::other(why));
    }
    Error::BadInput(BadInput { source_uri: source.uri.clone(), location: Location { line, column }, reason: reason.into(), new_column: false })
}

/// The decompressed bytes of a text source.
fn text_reader(source: &Source, compression: Compression, handle: &tokio::runtime::Handle) -> Result<Box<dyn BufRead + Send>> {
    let raw = source.open_blocking(handle)?;
    let inner: Box<dyn Read + Send> = match compression {
        Compression::None => raw,
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(raw)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(raw).map_err(|e| bad(source, None, None, format!("zstd: {e}")))?),
    };
    Ok(Box::new(BufReader::with_capacity(READ_BUFFER, inner)))
}

/// A text format's decompressed bytes, without a UTF-8 byte-order mark
/// (spreadsheet exports start with one; it is not part of the first name).
fn text_lines(source: &Source, compression: Compression, handle: &tokio::runtime::Handle) -> Result<Box<dyn BufRead + Send>> {
    without_bom(source, text_reader(source, compression, handle)?)
}

fn without_bom(source: &Source, mut reader: Box<dyn BufRead + Send>) -> Result<Box<dyn BufRead + Send>> {
    const BOM: &[u8] = b"\xEF\xBB\xBF";
    let head = reader.fill_buf().map_err(|e| bad(source, Some(1), None, format!("reading (truncated or corrupt file?): {e}")))?;
    if head.starts_with(BOM) {
        reader.consume(BOM.len());
    }
    Ok(reader)
}

/// A local, decompressed file for the formats that seek (Parquet, Arrow file).
fn seekable_file(source: &Source, compression: Compression, handle: &tokio::runtime::Handle) -> Result<(std::fs::File, Vec<tempfile::TempPath>)> {
    let (path, copy) = source.local_copy_blocking(handle)?;
    let mut keep: Vec<tempfile::TempPath> = copy.into_iter().collect();
    if compression == Compression::None {
        return Ok((std::fs::File::open(&path).map_err(|e| Error::io(&source.uri, e))?, keep));
    }
    let mut text = text_reader(source, compression, handle)?;
    let mut out = tempfile::NamedTempFile::new().map_err(|e| Error::io("temporary file", e))?;
    std::io::copy(&mut text, &mut out).map_err(|e| bad(source, None, None, format!("decompressing: {e}")))?;
    let file = out.reopen().map_err(|e| Error::io("temporary file", e))?;
    keep.push(out.into_temp_path());
    Ok((file, keep))
}

/// A schema for a new table, inferred from the start of `source`. Every column
/// is nullable except an upsert key, which Lance marks as the primary key.
pub fn infer_schema(source: &Source, detected: Detected, key: Option<&str>, handle: &tokio::runtime::Handle) -> Result<SchemaRef> {
    let schema = match detected.format {
        Format::Jsonl => infer_jsonl(source, text_lines(source, detected.compression, handle)?)?,
        Format::Csv => {
            let mut reader = text_lines(source, detected.compression, handle)?;
            reject_binary(source, &mut reader)?;
            let opts = &detected.csv;
            let head = reader.fill_buf().map_err(|e| bad(source, Some(1), None, format!("reading: {e}")))?;
            let mut format = arrow::csv::reader::Format::default()
                .with_header(opts.header)
                .with_delimiter(csv_delimiter(source, opts, head))
                .with_quote(opts.quote_byte());
            if let Some(nulls) = opts.null_regex()? {
                format = format.with_null_regex(nulls);
            }
            let delimiter = csv_delimiter(source, opts, head);
            let (schema, _) = format
                .infer_schema(reader, None)
                .map_err(|e| bad(source, number_after(&e.to_string(), "at line "), None, format!("cannot infer a schema: {e}")))?;
            let schema = times::utc_timestamps(schema);
            // Digits with a leading zero (zip codes, ids like 00501) are text:
            // as integers they would lose the zeros. So is a column mixing
            // dates and timestamps, as in JSON Lines.
            let temporal: std::collections::BTreeSet<usize> =
                schema.fields().iter().enumerate().filter(|(_, f)| f.data_type().is_temporal()).map(|(i, _)| i).collect();
            if schema.fields().iter().any(|f| f.data_type().is_integer()) || !temporal.is_empty() {
                let text = opts.text_columns(text_lines(source, detected.compression, handle)?, delimiter, &temporal);
                let fields: Vec<Field> = schema
                    .fields()
                    .iter()
                    .enumerate()
                    .map(|(i, f)| {
                        let integer_or_time = f.data_type().is_integer() || f.data_type().is_temporal();
                        if integer_or_time && text.contains(&i) { f.as_ref().clone().with_data_type(DataType::Utf8) } else { f.as_ref().clone() }
                    })
                    .collect();
                Schema::new_with_metadata(fields, schema.metadata().clone())
            } else {
                schema
            }
        }
        Format::Parquet | Format::Arrow | Format::ArrowStream => open_columnar(source, detected, handle)?.0.as_ref().clone(),
    };
    if schema.fields().is_empty() {
        return Err(bad(source, None, None, "empty: no columns (an empty file?)"));
    }
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| {
            // Lance cannot store the Null type an all-null JSON column infers to.
            let data_type = if f.data_type() == &DataType::Null { DataType::Utf8 } else { f.data_type().clone() };
            Field::new(f.name(), data_type, true)
        })
        .collect();
    if let Some(key) = key
        && !fields.iter().any(|f| f.name() == key)
    {
        return Err(bad(source, None, Some(key.to_string()), "the upsert key column is not in the source"));
    }
    with_key(&Schema::new(fields), key)
}

/// Columns `sources` have that `table` lacks, typed as inference over each
/// whole source types them (nullable; the first source to have one decides
/// its type, and the others' values are cast to it).
pub fn new_columns(sources: &[(Source, Detected)], table: &Schema, handle: &tokio::runtime::Handle) -> Result<Vec<Field>> {
    let mut new: Vec<Field> = Vec::new();
    for (source, detected) in sources {
        let inferred = infer_schema(source, detected.clone(), None, handle)?;
        for f in inferred.fields() {
            if table.field_with_name(f.name()).is_err() && !new.iter().any(|n| n.name() == f.name()) {
                new.push(f.as_ref().clone().with_nullable(true));
            }
        }
    }
    Ok(new)
}

/// Infer from every record of the file (a key first seen on its last line
/// still makes a column), streaming: one record in memory at a time.
/// Parsed line by line so an error names its line.
fn infer_jsonl(source: &Source, mut reader: Box<dyn BufRead + Send>) -> Result<Schema> {
    let mut failure: Option<Error> = None;
    let mut times = TimeColumns::default();
    let (mut line, mut buf) = (0u64, Vec::new());
    let records = std::iter::from_fn(|| {
        loop {
            buf.clear();
            let read = reader.read_until(b'\n', &mut buf);
            let step = match read {
                Err(e) => Err(bad(source, Some(line + 1), None, format!("reading (truncated or corrupt file?): {e}"))),
                Ok(0) => return None,
                Ok(_) => {
                    line += 1;
                    if buf.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    times.observe_order(&buf);
                    parse_record(source, line, &buf)
                }
            };
            return match step {
                Ok(value) => {
                    times.observe(&value);
                    Some(Ok(value))
                }
                Err(e) => {
                    // Stop here; the typed error is reported, not arrow's copy.
                    failure = Some(e);
                    None
                }
            };
        }
    });
    let schema = arrow::json::reader::infer_json_schema_from_iterator(records)
        .map_err(|e| bad(source, None, None, format!("cannot infer a schema: {e}")));
    match failure {
        Some(e) => Err(e),
        None => Ok(times.apply(schema?)),
    }
}

fn parse_record(source: &Source, line: u64, bytes: &[u8]) -> Result<serde_json::Value> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        // serde counts lines inside this one line; keep only the column.
        let what = e.to_string();
        let what = what.split(" at line ").next().unwrap_or(&what).to_string();
        bad(source, Some(line), None, format!("not valid JSON at column {}: {what}", e.column()))
    })?;
    if !value.is_object() {
        return Err(bad(source, Some(line), None, "not a JSON object"));
    }
    Ok(value)
}

/// A declared table schema, as JSON: `{"columns": [{"name": "id", "type":
/// "int64", "nullable": false}, {"name": "emb", "type": "vector(768)"}, ...]}`.
/// Types as `types.rs` spells them (Arrow's names work too).
pub fn parse_declared_schema(json: &str) -> Result<SchemaRef> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Declared {
        columns: Vec<Column>,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Column {
        name: String,
        #[serde(rename = "type")]
        data_type: String,
        #[serde(default = "yes")]
        nullable: bool,
    }
    fn yes() -> bool {
        true
    }
    let declared: Declared = serde_json::from_str(json).map_err(|e| Error::Usage(format!("declared schema: {e}")))?;
    if declared.columns.is_empty() {
        return Err(Error::Usage("declared schema has no columns".into()));
    }
    let fields = declared
        .columns
        .into_iter()
        .map(|c| {
            let data_type = types::parse(&c.data_type).map_err(|e| Error::Usage(format!("declared schema, column '{}': {e}", c.name)))?;
            Ok(Field::new(c.name, data_type, c.nullable))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Arc::new(Schema::new(fields)))
}

/// `schema` in the JSON form [`parse_declared_schema`] reads.
pub fn declared_schema_json(schema: &Schema) -> serde_json::Value {
    let columns: Vec<serde_json::Value> = schema
        .fields()
        .iter()
        .map(|f| serde_json::json!({"name": f.name(), "type": types::name(f.data_type()), "nullable": f.is_nullable()}))
        .collect();
    serde_json::json!({ "columns": columns })
}

/// Mark the upsert key as Lance's primary key (required, not null).
pub fn with_key(schema: &Schema, key: Option<&str>) -> Result<SchemaRef> {
    let Some(key) = key else { return Ok(Arc::new(schema.clone())) };
    if schema.field_with_name(key).is_err() {
        return Err(Error::Usage(format!("the upsert key column '{key}' is not in the table's schema")));
    }
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| {
            let f = f.as_ref().clone();
            if f.name() == key {
                f.with_nullable(false).with_metadata(HashMap::from([(PRIMARY_KEY_META.to_string(), "true".to_string())]))
            } else {
                f
            }
        })
        .collect();
    Ok(Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone())))
}

/// A text file whose first bytes hold NUL is binary, not CSV.
fn reject_binary(source: &Source, reader: &mut Box<dyn BufRead + Send>) -> Result<()> {
    let head = reader.fill_buf().map_err(|e| bad(source, Some(1), None, format!("reading: {e}")))?;
    if head.contains(&0) {
        return Err(bad(source, Some(1), None, "binary data (NUL bytes) in a text file"));
    }
    Ok(())
}

/// Batches of one source, conformed to the table schema.
type Batches = Box<dyn Iterator<Item = Result<RecordBatch>> + Send>;

fn open_columnar(source: &Source, detected: Detected, handle: &tokio::runtime::Handle) -> Result<(SchemaRef, Batches)> {
    match detected.format {
        Format::Parquet => {
            let (file, temps) = seekable_file(source, detected.compression, handle)?;
            let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                .map_err(|e| bad(source, None, None, format!("not a readable Parquet file: {e}")))?;
            let reader = builder.with_batch_size(BATCH_ROWS).build().map_err(|e| bad(source, None, None, e.to_string()))?;
            let schema = reader.schema();
            let src = source.clone();
            Ok((schema, Box::new(reader.map(move |b| { let _keep = &temps; b.map_err(|e| bad(&src, None, None, e.to_string())) }))))
        }
        Format::Arrow => {
            let (file, temps) = seekable_file(source, detected.compression, handle)?;
            let reader = arrow::ipc::reader::FileReader::try_new(file, None)
                .map_err(|e| bad(source, None, None, format!("not a readable Arrow IPC file: {e}")))?;
            let schema = reader.schema();
            let src = source.clone();
            Ok((schema, Box::new(reader.map(move |b| { let _keep = &temps; b.map_err(|e| bad(&src, None, None, e.to_string())) }))))
        }
        Format::ArrowStream => {
            let reader = arrow::ipc::reader::StreamReader::try_new(text_reader(source, detected.compression, handle)?, None)
                .map_err(|e| bad(source, None, None, format!("not a readable Arrow IPC stream: {e}")))?;
            let schema = reader.schema();
            let src = source.clone();
            Ok((schema, Box::new(reader.map(move |b| b.map_err(|e| bad(&src, None, None, e.to_string()))))))
        }
        Format::Jsonl | Format::Csv => unreachable!("open_columnar is only called for columnar formats"),
    }
}

/// Maps a file's columns onto the table's: reorders, casts, fills missing
/// nullable columns with nulls; refuses unknown columns (a `rescue` table
/// keeps them, and values that do not cast, in its rescue column).
struct Conform {
    source: Source,
    target: SchemaRef,
    /// For each target column, its index in the file, if present.
    slots: Vec<Option<usize>>,
    /// A `rescue` table's rescue column (in the target) and the file's
    /// columns the table lacks.
    rescue: Option<(usize, Vec<usize>)>,
}

impl Conform {
    fn plan(source: &Source, file: &Schema, target: &SchemaRef, rescue: bool) -> Result<Conform> {
        let rescue_at = if rescue { target.index_of(rescue::RESCUE_COLUMN).ok() } else { None };
        let mut extra = Vec::new();
        for (i, f) in file.fields().iter().enumerate() {
            // A file's own column of that name is rescued too (never overwritten).
            if target.field_with_name(f.name()).is_err() || (rescue_at.is_some() && f.name() == rescue::RESCUE_COLUMN) {
                match rescue_at {
                    Some(_) => extra.push(i),
                    None => return Err(unknown_column(source, 1, f.name(), target)),
                }
            }
        }
        let slots = target
            .fields()
            .iter()
            .map(|t| {
                let slot = file.index_of(t.name()).ok().filter(|i| !extra.contains(i));
                if slot.is_none() && !t.is_nullable() {
                    return Err(bad(source, Some(1), Some(t.name().clone()), "required column is missing"));
                }
                Ok(slot)
            })
            .collect::<Result<_>>()?;
        Ok(Conform { source: source.clone(), target: Arc::clone(target), slots, rescue: rescue_at.map(|at| (at, extra)) })
    }

    /// `first_row` is the 1-based row (or line) number of the batch's first
    /// row; `cells`, what the reader already rescued from it.
    fn apply(&self, batch: RecordBatch, first_row: u64, mut cells: rescue::Cells) -> Result<RecordBatch> {
        let rows = batch.num_rows();
        let fail = |e: ArrowError| bad(&self.source, Some(first_row), None, e.to_string());
        if let Some((_, extra)) = &self.rescue {
            for &i in extra {
                cells.add(batch.schema().field(i).name(), Arc::clone(batch.column(i)));
            }
        }
        let mut columns = Vec::with_capacity(self.target.fields().len());
        for (field, slot) in self.target.fields().iter().zip(&self.slots) {
            let column = match slot {
                None => new_null_array(field.data_type(), rows),
                Some(i) => {
                    let column = batch.column(*i);
                    match (self.cast(column, field, first_row), &self.rescue) {
                        (Ok(cast), _) => cast,
                        (Err(Error::BadInput(_)), Some(_)) if column.data_type() != field.data_type() => {
                            let (cast, failed) = rescue::cast_by_row(column, field.data_type(), |c| exact::cast_column(c, field.data_type())).map_err(fail)?;
                            cells.add_rows(field.name(), column, &failed).map_err(fail)?;
                            self.required(&cast, field, first_row)?;
                            cast
                        }
                        (Err(e), _) => return Err(e),
                    }
                }
            };
            columns.push(column);
        }
        if let Some((at, _)) = &self.rescue {
            columns[*at] = cells.to_json(rows).map_err(fail)?;
        }
        RecordBatch::try_new(Arc::clone(&self.target), columns).map_err(fail)
    }

    fn required(&self, column: &ArrayRef, field: &Field, first_row: u64) -> Result<()> {
        match (0..column.len()).find(|&r| !field.is_nullable() && column.is_null(r)) {
            Some(row) => Err(bad(&self.source, Some(first_row + row as u64), Some(field.name().clone()), "null in a required column")),
            None => Ok(()),
        }
    }

    fn cast(&self, column: &ArrayRef, field: &Field, first_row: u64) -> Result<ArrayRef> {
        let out = if column.data_type() == field.data_type() {
            Arc::clone(column)
        } else {
            exact::cast_column(column, field.data_type()).map_err(|(row, reason)| {
                let reason = match (row.and_then(|r| list_len(column, r)), types::vector_dimensions(field.data_type())) {
                    (Some(n), Some(dims)) if n != dims as usize => {
                        format!("a vector of {n} values; the column is {}", types::name(field.data_type()))
                    }
                    _ => reason,
                };
                bad(&self.source, Some(first_row + row.unwrap_or(0) as u64), Some(field.name().clone()), reason)
            })?
        };
        self.required(&out, field, first_row)?;
        Ok(out)
    }
}

fn unknown_column(source: &Source, line: u64, name: &str, target: &Schema) -> Error {
    let names: Vec<String> = target.fields().iter().map(|f| format!("{:?}", f.name())).collect();
    let reason = format!(
        "unknown column: not in the table's schema ({}). Ingest it again with `--evolution add-columns` \
         to add the column, or `--evolution rescue` to keep such fields in _rescued_data",
        names.join(", ")
    );
    Error::BadInput(BadInput { source_uri: source.uri.clone(), location: Location { line: Some(line), column: Some(name.to_string()) }, reason, new_column: true })
}

/// The length of the list at `row`, if `column` holds lists.
fn list_len(column: &ArrayRef, row: usize) -> Option<usize> {
    use arrow::array::AsArray;
    match column.data_type() {
        DataType::List(_) => Some(column.as_list::<i32>().value_length(row) as usize),
        DataType::LargeList(_) => Some(column.as_list::<i64>().value_length(row) as usize),
        DataType::FixedSizeList(_, n) => Some(*n as usize),
        _ => None,
    }
}

/// JSON Lines as batches of the table schema. The reading thread cuts the
/// file into blocks of whole lines (copying bytes and counting newlines,
/// nothing per line); each block is split into lines, decoded in one call
/// and checked for values that would change on a thread of its own, at most
/// `window` at once, and the batches come back in file order, so the first
/// bad line in the file is the one reported. Only a chunk that fails, or
/// yields a row count other than its line count, is decoded line by line to
/// name the bad one.
struct JsonLines {
    reader: Box<dyn BufRead + Send>,
    chunks: Arc<JsonChunks>,
    line: u64,
    done: bool,
    in_flight: VecDeque<Decoding>,
    /// Chunks decoded at once: the cores, plus one being read.
    window: usize,
    /// Buffers of decoded chunks, for the next ones: fresh memory is zeroed
    /// by the kernel page by page, and a growing one is copied as it grows.
    spare: Arc<Mutex<Vec<Vec<u8>>>>,
}

/// A chunk being decoded (`None`: only blank lines), or one whose outcome is known (a read error).
enum Decoding {
    Thread(std::thread::JoinHandle<Result<Option<RecordBatch>>>),
    Ready(Result<Option<RecordBatch>>),
}

/// Bytes per block: whole lines, this many or a little more (a block always
/// holds at least one line), and at most `BATCH_ROWS` lines: a row's arrays
/// can be far larger than its text (an omitted vector is still 768 slots).
const CHUNK_BYTES: usize = 1 << 20;
/// Lines a `rescue` table's failed chunk is tried in before any is taken apart.
const RESCUE_BLOCK: usize = 32;

/// What every chunk of one source is decoded with.
struct JsonChunks {
    source: Source,
    /// The table's columns JSON values decode into (not its rescue column).
    schema: SchemaRef,
    /// The table's numeric columns, whose values arrow would change silently.
    numbers: Option<JsonNumbers>,
    /// A `rescue` table's schema, and where its rescue column is in it.
    rescue: Option<(SchemaRef, usize)>,
    /// Decoders of whole chunks that finished one, for the next (a fresh
    /// decoder's buffers grow, copied, as each chunk fills them), each with
    /// the records it decodes at most: its buffers are sized for them, so
    /// a wide table's few long lines get small ones.
    decoders: Mutex<Vec<(usize, arrow::json::reader::Decoder)>>,
}

/// Whole lines of one file as read, and the number of the first.
struct Block {
    buf: Vec<u8>,
    first_line: u64,
}

/// Lines of one file: their bytes, and each record's (line number, byte range) in them.
struct Chunk {
    buf: Vec<u8>,
    records: Vec<(u64, std::ops::Range<usize>)>,
}

impl Chunk {
    /// A block's records: its lines that are not blank. Blank lines stay in
    /// the bytes, which arrow reads as whitespace between records.
    fn of(block: Block) -> Chunk {
        let Block { buf, first_line } = block;
        let unterminated = buf.last().is_some_and(|&b| b != b'\n');
        let ends = memchr::memchr_iter(b'\n', &buf).map(|at| at + 1).chain(unterminated.then_some(buf.len()));
        let mut records = Vec::new();
        let mut start = 0;
        for (line, end) in (first_line..).zip(ends) {
            if !buf[start..end].iter().all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n')) {
                records.push((line, start..end));
            }
            start = end;
        }
        Chunk { buf, records }
    }
}

/// Lines in `buf`: its newlines, and an unterminated last line.
fn lines_in(buf: &[u8]) -> u64 {
    memchr::memchr_iter(b'\n', buf).count() as u64 + u64::from(buf.last().is_some_and(|&b| b != b'\n'))
}

impl JsonLines {
    /// `share`: readers decoding side by side, among whom the cores are shared.
    fn new(source: &Source, reader: Box<dyn BufRead + Send>, target: SchemaRef, rescue: bool, share: usize) -> Result<JsonLines> {
        let (schema, rescue) = match target.index_of(rescue::RESCUE_COLUMN) {
            Ok(at) if rescue => {
                let mut fields: Vec<Field> = target.fields().iter().map(|f| f.as_ref().clone()).collect();
                fields.remove(at);
                (Arc::new(Schema::new_with_metadata(fields, target.metadata().clone())), Some((target, at)))
            }
            _ => (target, None),
        };
        // A schema arrow cannot decode JSON into fails here, not in a thread.
        JsonChunks::decoder(&schema, 1)?;
        let numbers = JsonNumbers::for_schema(&schema);
        Ok(JsonLines {
            reader,
            chunks: Arc::new(JsonChunks { source: source.clone(), schema, numbers, rescue, decoders: Mutex::default() }),
            line: 0,
            done: false,
            in_flight: VecDeque::new(),
            window: std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 8).div_ceil(share.max(1)) + 1,
            spare: Arc::default(),
        })
    }

    /// The next block of whole lines, `None` at the end of the file.
    fn read_block(&mut self) -> Result<Option<Block>> {
        let mut buf = self.spare.lock().expect("spare buffers poisoned").pop().unwrap_or_default();
        let read = |buf: &mut Vec<u8>, reader: &mut Box<dyn BufRead + Send>| -> std::io::Result<bool> {
            let mut lines = 0;
            while buf.len() < CHUNK_BYTES {
                let available = match reader.fill_buf() {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    read => read?,
                };
                if available.is_empty() {
                    return Ok(true);
                }
                let mut n = available.len().min(CHUNK_BYTES - buf.len());
                let mut full = false;
                for at in memchr::memchr_iter(b'\n', &available[..n]) {
                    lines += 1;
                    if lines == BATCH_ROWS {
                        (n, full) = (at + 1, true);
                        break;
                    }
                }
                buf.extend_from_slice(&available[..n]);
                reader.consume(n);
                if full {
                    return Ok(false);
                }
            }
            // On to the end of the line the block stopped in: one line more, still at most BATCH_ROWS.
            Ok(buf.last() != Some(&b'\n') && reader.read_until(b'\n', buf)? == 0)
        };
        match read(&mut buf, &mut self.reader) {
            Ok(at_end) => self.done = at_end,
            Err(e) => {
                // The line after the last whole one read.
                let line = self.line + memchr::memchr_iter(b'\n', &buf).count() as u64 + 1;
                return Err(bad(&self.chunks.source, Some(line), None, format!("reading (truncated or corrupt file?): {e}")));
            }
        }
        if buf.is_empty() {
            return Ok(None);
        }
        let first_line = self.line + 1;
        let lines = lines_in(&buf);
        assert!(lines <= BATCH_ROWS as u64, "a block holds at most BATCH_ROWS lines, so a batch's arrays are bounded");
        self.line += lines;
        Ok(Some(Block { buf, first_line }))
    }

    fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        // Each round ends a chunk: at most one per block of the file, plus the end.
        loop {
            while !self.done && self.in_flight.len() < self.window {
                match self.read_block() {
                    Ok(Some(block)) => {
                        let (chunks, spare) = (Arc::clone(&self.chunks), Arc::clone(&self.spare));
                        self.in_flight.push_back(Decoding::Thread(std::thread::spawn(move || {
                            let chunk = Chunk::of(block);
                            let decoded = if chunk.records.is_empty() { Ok(None) } else { chunks.decode(&chunk) };
                            let mut buf = chunk.buf;
                            buf.clear();
                            spare.lock().expect("spare buffers poisoned").push(buf);
                            decoded
                        })));
                    }
                    Ok(None) => {}
                    // Reported after the chunks before it, which may hold an earlier bad line.
                    Err(e) => {
                        self.done = true;
                        self.in_flight.push_back(Decoding::Ready(Err(e)));
                    }
                }
            }
            assert!(self.in_flight.len() <= self.window, "decoding is bounded");
            let decoded = match self.in_flight.pop_front() {
                None => return Ok(None),
                Some(Decoding::Ready(result)) => result,
                Some(Decoding::Thread(thread)) => thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            };
            // A chunk of blank lines only yields nothing: on to the next.
            if let Some(batch) = decoded? {
                return Ok(Some(batch));
            }
        }
    }
}

impl JsonChunks {
    /// A decoder of `rows` records into one batch.
    fn decoder(schema: &SchemaRef, rows: usize) -> Result<arrow::json::reader::Decoder> {
        arrow::json::ReaderBuilder::new(Arc::clone(schema))
            .with_batch_size(rows.max(1))
            .with_strict_mode(true)
            .with_coerce_primitive(true)
            .build_decoder()
            .map_err(|e| Error::Usage(format!("table schema unusable for JSON: {e}")))
    }

    fn error(&self, line: u64, e: &ArrowError) -> Error {
        let msg = e.to_string();
        let msg = msg.strip_prefix("Json error: ").unwrap_or(&msg);
        // A key of the record itself (not one nested in a field) the table lacks.
        if let Some(name) = msg.strip_prefix("column '").and_then(|m| m.strip_suffix("' missing from schema")) {
            return unknown_column(&self.source, line, name, &self.schema);
        }
        let column = quoted_after(msg, "whilst decoding field '").or_else(|| quoted_after(msg, "column '"));
        // The location names the column; the rest is what went wrong in it.
        let what = match &column {
            Some(c) => msg.strip_prefix(&format!("whilst decoding field '{c}': ")).unwrap_or(msg),
            None => msg,
        };
        let reason = match (what.strip_prefix("column '").and_then(|m| m.strip_suffix("' missing from schema")), &column) {
            (Some(nested), Some(c)) => format!(
                "field '{nested}' inside column '{c}' is not in the table's schema: fields nested in a column are never added \
                 (`--evolution rescue` keeps such a value in _rescued_data)"
            ),
            _ => what.to_string(),
        };
        bad(&self.source, Some(line), column, reason)
    }

    /// The chunk failed as a whole: find the first line that fails alone.
    fn locate(&self, chunk: &Chunk, e: Option<ArrowError>) -> Error {
        for (line, range) in &chunk.records {
            if let Err(err) = self.decode_one(*line, &chunk.buf[range.clone()]) {
                return err;
            }
        }
        bad(&self.source, None, None, e.map_or_else(|| "the batch did not decode".to_string(), |e| e.to_string()))
    }

    /// Does this one line decode, and keep every value as written?
    fn decode_one(&self, line: u64, bytes: &[u8]) -> Result<()> {
        let mut one = Self::decoder(&self.schema, 1)?;
        let used = one.decode(bytes).map_err(|e| self.error(line, &e))?;
        if used != bytes.len() || one.has_partial_record() || one.len() != 1 {
            return Err(bad(&self.source, Some(line), None, "not one complete JSON object on this line (truncated?)"));
        }
        one.flush().map_err(|e| self.error(line, &e))?;
        match &self.numbers {
            Some(numbers) => numbers.check(bytes).map_err(|e| bad(&self.source, Some(line), e.column, e.reason)),
            None => Ok(()),
        }
    }

    fn decode(&self, chunk: &Chunk) -> Result<Option<RecordBatch>> {
        let Some((target, at)) = &self.rescue else { return self.decode_whole(chunk) };
        let (batch, rescued) = match self.decode_whole(chunk) {
            Ok(batch) => (batch, None),
            // Some line has what does not fit: rescue it line by line.
            Err(Error::BadInput(_)) => self.decode_rescuing(chunk)?,
            Err(e) => return Err(e),
        };
        let Some(batch) = batch else { return Ok(None) };
        let rows = batch.num_rows();
        let mut columns = batch.columns().to_vec();
        columns.insert(*at, rescued.unwrap_or_else(|| new_null_array(&DataType::Utf8, rows)));
        RecordBatch::try_new(Arc::clone(target), columns).map(Some).map_err(|e| bad(&self.source, None, None, e.to_string()))
    }

    /// Each line with what does not fit taken out of it (into the rescue
    /// column, as written), then the lines decoded in one call. Lines are
    /// tried a block at a time first: only a block that fails is taken apart.
    fn decode_rescuing(&self, chunk: &Chunk) -> Result<(Option<RecordBatch>, Option<ArrayRef>)> {
        let mut fixed = Vec::with_capacity(chunk.buf.len());
        let mut rescued = Vec::with_capacity(chunk.records.len());
        for block in chunk.records.chunks(RESCUE_BLOCK) {
            let lines = || block.iter().map(|(line, range)| (*line, &chunk.buf[range.clone()]));
            if self.fits(lines()) {
                for (_, bytes) in lines() {
                    fixed.extend_from_slice(bytes);
                    fixed.push(b'\n');
                    rescued.push(None);
                }
                continue;
            }
            for (line, bytes) in lines() {
                let (kept, out) = self.rescue_line(line, bytes)?;
                fixed.extend_from_slice(&kept);
                fixed.push(b'\n');
                rescued.push(out);
            }
        }
        let mut decoder = Self::decoder(&self.schema, rescued.len())?;
        let failed = |e: String| bad(&self.source, None, None, format!("lines left after rescuing did not decode: {e}"));
        let used = decoder.decode(&fixed).map_err(|e| failed(e.to_string()))?;
        let batch = decoder.flush().map_err(|e| failed(e.to_string()))?;
        // Each rescued cell belongs to its own row: one row per line, or none.
        let rows = batch.as_ref().map_or(0, RecordBatch::num_rows);
        if used != fixed.len() || rows != rescued.len() {
            return Err(failed(format!("{rows} rows from {} lines", rescued.len())));
        }
        Ok((batch, Some(Arc::new(arrow::array::StringArray::from(rescued)))))
    }

    /// Do these lines decode together, keeping every value as written?
    fn fits<'b>(&self, lines: impl Iterator<Item = (u64, &'b [u8])>) -> bool {
        let Ok(mut decoder) = Self::decoder(&self.schema, RESCUE_BLOCK) else { return false };
        let mut n = 0;
        for (_, bytes) in lines {
            n += 1;
            let numbers_fit = self.numbers.as_ref().is_none_or(|numbers| numbers.check(bytes).is_ok());
            let whole = |decoded: Result<usize, ArrowError>, of: &[u8]| decoded.is_ok_and(|used| used == of.len());
            if !numbers_fit || !whole(decoder.decode(bytes), bytes) || !whole(decoder.decode(b"\n"), b"\n") {
                return false;
            }
        }
        !decoder.has_partial_record() && decoder.len() == n && decoder.flush().is_ok()
    }

    /// One line as the table takes it, and the members it cannot take (as a
    /// JSON object, as written), if any. A line that is not a JSON object,
    /// or fails for want of something (a required value), stays bad input.
    fn rescue_line(&self, line: u64, bytes: &[u8]) -> Result<(Vec<u8>, Option<String>)> {
        let Some(mut kept) = rescue::members(bytes) else {
            return Err(self.decode_one(line, bytes).err().unwrap_or_else(|| bad(&self.source, Some(line), None, "not a JSON object")));
        };
        let mut out: Vec<&[u8]> = Vec::new();
        // Each round takes at least one member out.
        for _ in 0..=kept.len() {
            let text = rescue::object(&kept.iter().map(|(_, m)| *m).collect::<Vec<_>>());
            let error = match self.decode_one(line, &text) {
                Ok(()) => {
                    let rescued = (!out.is_empty()).then(|| String::from_utf8_lossy(&rescue::object(&out)).into_owned());
                    return Ok((text, rescued));
                }
                Err(e) => e,
            };
            let column = match &error {
                Error::BadInput(b) => b.location.column.clone(),
                _ => None,
            };
            let before = kept.len();
            kept.retain(|(key, member)| {
                let rescue = Some(key) == column.as_ref();
                if rescue {
                    out.push(*member);
                }
                !rescue
            });
            if kept.len() == before {
                return Err(error);
            }
        }
        unreachable!("a line has finitely many members")
    }

    fn decode_whole(&self, chunk: &Chunk) -> Result<Option<RecordBatch>> {
        let records = chunk.records.len();
        assert!(records <= BATCH_ROWS, "a chunk is one batch");
        // One that holds too few records is dropped: the pool never outgrows the chunks in flight.
        let spare = self.decoders.lock().expect("spare decoders poisoned").pop().filter(|(rows, _)| *rows >= records);
        let (rows, mut decoder) = match spare {
            Some(spare) => spare,
            // Room to spare, as the next chunks may hold a few more lines.
            None => {
                let rows = records.next_power_of_two().min(BATCH_ROWS);
                (rows, Self::decoder(&self.schema, rows)?)
            }
        };
        match decoder.decode(&chunk.buf) {
            Ok(used) if used == chunk.buf.len() && !decoder.has_partial_record() && decoder.len() == chunk.records.len() => {}
            Ok(_) => return Err(self.locate(chunk, None)),
            Err(e) => return Err(self.locate(chunk, Some(e))),
        }
        let batch = decoder.flush().map_err(|e| self.locate(chunk, Some(e)))?;
        // Flushed whole, it is as new but for its buffers' capacity. (One that failed is dropped.)
        self.decoders.lock().expect("spare decoders poisoned").push((rows, decoder));
        if let Some(numbers) = &self.numbers {
            for (line, range) in &chunk.records {
                numbers.check(&chunk.buf[range.clone()]).map_err(|e| bad(&self.source, Some(*line), e.column, e.reason))?;
            }
        }
        Ok(batch)
    }
}

impl Iterator for JsonLines {
    type Item = Result<RecordBatch>;
    fn next(&mut self) -> Option<Self::Item> {
        let next = self.next_batch();
        if next.is_err() {
            // Nothing after a bad line is read; chunks still decoding are dropped.
            self.done = true;
            self.in_flight.clear();
        }
        next.transpose()
    }
}

fn quoted_after(msg: &str, marker: &str) -> Option<String> {
    let rest = &msg[msg.find(marker)? + marker.len()..];
    Some(rest[..rest.find('\'')?].to_string())
}

/// CSV with a header row: columns matched to the table by name.
/// The delimiter: given, a tab for `.tsv` files, else detected from the first line.
fn csv_delimiter(source: &Source, opts: &CsvOptions, head: &[u8]) -> u8 {
    let name = source.file_name().to_ascii_lowercase();
    let stem = name.trim_end_matches(".gz").trim_end_matches(".gzip").trim_end_matches(".zst").trim_end_matches(".zstd");
    match opts.delimiter {
        None if stem.ends_with(".tsv") => b'\t',
        _ => opts.delimiter_for(head),
    }
}

/// CSV, columns matched to the table by the header's names, or by position
/// without a header.
fn open_csv(source: &Source, detected: &Detected, target: &SchemaRef, rescue: bool, handle: &tokio::runtime::Handle) -> Result<Batches> {
    let mut reader = text_lines(source, detected.compression, handle)?;
    let layout = CsvLayout::read(source, &detected.csv, target, rescue, &mut reader)?;
    let first_line = layout.data_starts;
    layout.batches(source, &detected.csv, reader, first_line)
}

/// The records in bytes `range` of an uncompressed CSV file (local, or an S3
/// object by a ranged GET), one of the parts of `parts.rs`, numbered from
/// the part's first line. The header and delimiter are the file's (a later
/// part reads them from the file's start). A part fails with
/// [`Error::MisCut`], and the file is then read whole, if it is not the
/// last and does not end where a record ends, or if one of its records
/// runs past [`MAX_PART_RECORD`] (`record_ends.rs`).
fn open_csv_part(source: &Source, detected: &Detected, target: &SchemaRef, rescue: bool, range: std::ops::Range<u64>, last: bool, handle: &tokio::runtime::Handle) -> Result<Batches> {
    use crate::record_ends::Seen;
    let opts = &detected.csv;
    let (range_start, end) = (range.start, range.end);
    let mut reader: Box<dyn BufRead + Send> = Box::new(BufReader::with_capacity(READ_BUFFER, source.open_range(range, handle)?));
    let (layout, first_line) = if range_start == 0 {
        reader = without_bom(source, reader)?;
        let layout = CsvLayout::read(source, opts, target, rescue, &mut reader)?;
        let first_line = layout.data_starts;
        (layout, first_line)
    } else {
        let mut head = without_bom(source, csv_head(source, range_start, handle)?)?;
        (CsvLayout::read(source, opts, target, rescue, &mut head)?, 1)
    };
    let (checked, verdict) = RecordEnds::new(reader, layout.delimiter, opts.quote_byte(), MAX_PART_RECORD);
    let mut batches = layout.batches(source, opts, checked, first_line)?;
    let (path, mut done) = (source.uri.clone(), false);
    Ok(Box::new(std::iter::from_fn(move || {
        if done {
            return None;
        }
        let next = batches.next();
        let mis_cut = match (&next, verdict.seen()) {
            // Read from inside a quoted field (its closing quote taken for an
            // opening one), a part could hold the rest of it as one record.
            (_, Seen::RecordTooLong) => true,
            (None, seen) => !last && seen != Seen::RecordEnd,
            // Once the bytes ran out inside a record, an error of the last
            // batch may be that record's, cut short (too few fields): the
            // cut is wrong. Any other error of that batch is met again when
            // the file is read whole.
            (Some(Err(_)), Seen::InsideRecord) => !last,
            _ => false,
        };
        done = !matches!(next, Some(Ok(_))) || mis_cut;
        if mis_cut { Some(Err(Error::MisCut { path: path.clone(), at: end })) } else { next }
    })))
}

/// The start of a CSV file, for a later part (starting at byte `before`) to
/// read the header from: the first `HEAD_BYTES`, where the first line
/// mostly ends (the header, the delimiter and the field count come from it
/// alone; the first part's wider check for binary data fails first), else
/// every byte before the part (a cut is never inside the header line: it
/// falls after a line break). One small read per later part, not 1 MiB.
fn csv_head(source: &Source, before: u64, handle: &tokio::runtime::Handle) -> Result<Box<dyn BufRead + Send>> {
    const HEAD_BYTES: u64 = 64 << 10;
    let first = before.min(HEAD_BYTES);
    let mut bytes = Vec::with_capacity(first as usize);
    source.open_range(0..first, handle)?.read_to_end(&mut bytes).map_err(|e| Error::io(&source.uri, e))?;
    if memchr::memchr(b'\n', &bytes).is_some() || first == before {
        return Ok(Box::new(std::io::Cursor::new(bytes)));
    }
    Ok(Box::new(BufReader::with_capacity(READ_BUFFER, source.open_range(0..before, handle)?)))
}

/// Records of CSV `source` before byte `at` (a record's start), counted as
/// arrow's reader counts them (the header included, blank lines not), to
/// number an error met in a part from there. Call from a blocking thread.
fn csv_records_before(source: &Source, opts: &CsvOptions, at: u64, handle: &tokio::runtime::Handle) -> Result<u64> {
    let mut head = csv_head(source, at, handle)?;
    let delimiter = csv_delimiter(source, opts, head.fill_buf().map_err(|e| Error::io(&source.uri, e))?);
    let (mut records, verdict) = RecordEnds::new(source.open_range(0..at, handle)?, delimiter, opts.quote_byte(), u64::MAX);
    std::io::copy(&mut records, &mut std::io::sink()).map_err(|e| Error::io(&source.uri, e))?;
    Ok(verdict.records())
}

/// `e`, met in the part of `source` starting at byte `start`, with its line
/// numbered in the whole file, as a reading of the whole file numbers it
/// (only a failure counts what comes before a part). A line that cannot be
/// counted is left out, not misnamed. Call from a blocking thread.
pub fn in_file(e: Error, (source, detected): &(Source, Detected), start: u64, handle: &tokio::runtime::Handle) -> Error {
    match e {
        Error::BadInput(mut bad) if start > 0 && bad.location.line.is_some() => {
            let before = match detected.format {
                Format::Csv => csv_records_before(source, &detected.csv, start, handle),
                _ => parts::lines_before(source, start, handle),
            };
            bad.location.line = match before {
                Ok(before) => bad.location.line.map(|line| line + before),
                Err(_) => None,
            };
            Error::BadInput(bad)
        }
        e => e,
    }
}

/// How a CSV file is written: read from its start (the header, or the
/// first line's field count), matched to the table's columns.
struct CsvLayout {
    delimiter: u8,
    names: Vec<String>,
    /// The file's columns as arrow reads them (some as text first).
    text_schema: SchemaRef,
    /// The file's columns in the table's types.
    typed: SchemaRef,
    conform: Conform,
    rescue: bool,
    /// The line of the first record: 2 after a header.
    data_starts: u64,
}

impl CsvLayout {
    /// Takes the header line off `reader`, if the file has one.
    fn read(source: &Source, opts: &CsvOptions, target: &SchemaRef, rescue: bool, reader: &mut Box<dyn BufRead + Send>) -> Result<CsvLayout> {
        reject_binary(source, reader)?;
        let head = reader.fill_buf().map_err(|e| bad(source, Some(1), None, format!("reading: {e}")))?;
        let delimiter = csv_delimiter(source, opts, head);
        let mut first = String::new();
        let names: Vec<String> = if opts.header {
            reader.read_line(&mut first).map_err(|e| bad(source, Some(1), None, format!("reading the header: {e}")))?;
            opts.split_line(first.trim_end_matches(['\r', '\n']), delimiter)
        } else {
            // Peek at the first line for its number of fields: the table's first columns.
            let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
            let n = opts.split_line(String::from_utf8_lossy(line).trim_end_matches('\r'), delimiter).len();
            if n > target.fields().len() {
                return Err(bad(source, Some(1), None, format!("{n} fields, but the table has {} columns", target.fields().len())));
            }
            target.fields().iter().take(n).map(|f| f.name().clone()).collect()
        };
        if names.iter().all(String::is_empty) {
            return Err(bad(source, Some(1), None, "empty: no header row"));
        }
        let mut fields = Vec::with_capacity(names.len());
        for name in &names {
            // A column the table lacks is text, for a `rescue` table to keep.
            let data_type = match target.field_with_name(name) {
                Ok(field) if !(rescue && name == rescue::RESCUE_COLUMN) => field.data_type().clone(),
                _ if rescue => DataType::Utf8,
                _ => return Err(unknown_column(source, 1, name, target)),
            };
            fields.push(Field::new(name, data_type, true));
        }
        let file_schema = Arc::new(Schema::new(fields));
        let conform = Conform::plan(source, &file_schema, target, rescue)?;
        // Float, date and timestamp columns are read as text first: arrow's
        // parse would round 2^53 + 1, drop a date's time or truncate finer digits.
        // For a `rescue` table every column is, so a value that does not parse is
        // rescued rather than failing its batch.
        let as_text = |t: &DataType| rescue || t.is_floating() || t.is_temporal();
        let text_schema = Arc::new(Schema::new(
            file_schema
                .fields()
                .iter()
                .map(|f| if as_text(f.data_type()) { f.as_ref().clone().with_data_type(DataType::Utf8) } else { f.as_ref().clone() })
                .collect::<Vec<_>>(),
        ));
        let data_starts = if opts.header { 2 } else { 1 };
        Ok(CsvLayout { delimiter, names, text_schema, typed: file_schema, conform, rescue, data_starts })
    }

    /// The records `reader` holds, the first numbered `first_line`.
    fn batches(self, source: &Source, opts: &CsvOptions, reader: impl Read + Send + 'static, first_line: u64) -> Result<Batches> {
        let mut builder = arrow::csv::ReaderBuilder::new(Arc::clone(&self.text_schema))
            .with_header(false)
            .with_delimiter(self.delimiter)
            .with_quote(opts.quote_byte())
            .with_batch_size(BATCH_ROWS);
        if let Some(nulls) = opts.null_regex()? {
            builder = builder.with_null_regex(nulls);
        }
        let csv = builder.build(reader).map_err(|e| bad(source, None, None, e.to_string()))?;
        let src = source.clone();
        let CsvLayout { names, typed, conform, rescue, .. } = self;
        let mut next_line = first_line;
        Ok(Box::new(csv.map(move |b| {
            let batch = b.map_err(|e| csv_error(&src, &names, &e, next_line, first_line))?;
            let first = next_line;
            next_line += batch.num_rows() as u64;
            let (batch, cells) = typed_text(&src, batch, &typed, first, rescue)?;
            conform.apply(batch, first, cells)
        })))
    }
}

/// The columns read as text, checked value by value and parsed into their
/// types; with `rescue`, a value that does not parse is left null and kept
/// (as written) among the batch's rescued cells.
fn typed_text(source: &Source, batch: RecordBatch, typed: &SchemaRef, first_line: u64, rescue: bool) -> Result<(RecordBatch, rescue::Cells)> {
    let mut cells = rescue::Cells::default();
    let mut columns = Vec::with_capacity(typed.fields().len());
    for (field, column) in typed.fields().iter().zip(batch.columns()) {
        if column.data_type() == field.data_type() {
            columns.push(Arc::clone(column));
            continue;
        }
        let at = |row: usize, reason: String| bad(source, Some(first_line + row as u64), Some(field.name().clone()), reason);
        let parsed = match text_to(column, field.data_type()) {
            Ok(parsed) => parsed,
            Err(_) if rescue => {
                let (parsed, failed) = rescue::cast_by_row(column, field.data_type(), |c| text_to(c, field.data_type())).map_err(|e| at(0, e.to_string()))?;
                cells.add_rows(field.name(), column, &failed).map_err(|e| at(0, e.to_string()))?;
                parsed
            }
            Err((row, reason)) => return Err(at(row, reason)),
        };
        columns.push(parsed);
    }
    let batch = RecordBatch::try_new(Arc::clone(typed), columns).map_err(|e| bad(source, Some(first_line), None, e.to_string()))?;
    Ok((batch, cells))
}

/// CSV text into `to` as arrow's CSV reader parses it, refusing any value
/// that would change: `Err((row, reason))` names the first that does not fit.
fn text_to(column: &ArrayRef, to: &DataType) -> std::result::Result<ArrayRef, (usize, String)> {
    let strings = column.as_any().downcast_ref::<arrow::array::StringArray>().expect("CSV columns are read as text");
    let not_a = |row: usize| (row, format!("{:?} is not a value of type {}", strings.value(row), types::name(to)));
    exact::text_column(column, to)?;
    // Only what the CSV reader takes as a bool (arrow's cast also takes `yes`, `1`, ...).
    if to == &DataType::Boolean
        && let Some(row) = (0..strings.len()).find(|&r| strings.is_valid(r) && !["true", "false"].iter().any(|b| strings.value(r).eq_ignore_ascii_case(b)))
    {
        return Err(not_a(row));
    }
    let safe = arrow::compute::CastOptions { safe: true, ..Default::default() };
    let cast = arrow::compute::cast_with_options(column, to, &safe).map_err(|e| (0, e.to_string()))?;
    match (0..column.len()).find(|&r| column.is_valid(r) && cast.is_null(r)) {
        Some(row) => Err(not_a(row)),
        None => Ok(cast),
    }
}

/// arrow-csv says "for column N at line M" (M counts data rows from 0 here,
/// since the header was read separately): turn that into file line and name.
fn csv_error(source: &Source, names: &[String], e: &ArrowError, batch_first_line: u64, data_starts: u64) -> Error {
    let msg = e.to_string();
    let msg = msg.strip_prefix("Parser error: ").or_else(|| msg.strip_prefix("Csv error: ")).unwrap_or(&msg);
    // Arrow counts data rows, from 0 ("at line") or from 1 ("for line"); fields from 1.
    let line = number_after(msg, "at line ")
        .map(|l| l + data_starts)
        .or_else(|| number_after(msg, "for line ").map(|l| l + data_starts - 1))
        .unwrap_or(batch_first_line);
    let column = number_after(msg, "for column ")
        .or_else(|| number_after(msg, "parsing column "))
        .or_else(|| number_after(msg, "and field ").and_then(|f| f.checked_sub(1)))
        .and_then(|i| names.get(i as usize).cloned());
    bad(source, Some(line), column, csv_reason(msg))
}

/// What arrow's CSV error says went wrong, without its own row and column
/// numbers (the location says those, counted as in the file).
fn csv_reason(msg: &str) -> String {
    if let Some(rest) = msg.strip_prefix("Error while parsing value '")
        && let Some((value, rest)) = rest.split_once("' as type '")
        && let Some((t, _)) = rest.split_once("' for column ")
    {
        return format!("'{value}' is not a valid {t}");
    }
    if let Some(rest) = msg.strip_prefix("incorrect number of fields for line ")
        && let Some((_, counts)) = rest.split_once(", ")
    {
        return format!("wrong number of fields: {}", counts.replacen(" got ", ", got ", 1));
    }
    if msg.starts_with("Encountered invalid UTF-8 data") {
        return "not valid UTF-8 text".to_string();
    }
    if let Some(rest) = msg.strip_prefix("Error parsing column ")
        && let Some((_, why)) = rest.split_once(": ")
    {
        return why.to_string();
    }
    msg.to_string()
}

/// The number right after `marker` in an error message.
fn number_after(msg: &str, marker: &str) -> Option<u64> {
    let rest = &msg[msg.find(marker)? + marker.len()..];
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// Open one source as batches of `target`: the file's columns, and the
/// partition values its path holds (`partitions.rs`).
fn open_source(source: &Source, detected: Detected, target: &SchemaRef, rescue: bool, share: usize, handle: &tokio::runtime::Handle) -> Result<Batches> {
    let (file_target, add) = partitions::split(target, &source.uri)?;
    let batches = open_file(source, detected, &file_target, rescue, share, handle)?;
    let Some(add) = add else { return Ok(batches) };
    let mut next_row = 1u64;
    Ok(Box::new(batches.map(move |b| {
        let batch = b?;
        let first = next_row;
        next_row += batch.num_rows() as u64;
        add(batch, first)
    })))
}

/// The rows in bytes `range` of `source`, one of the parts of `parts.rs`
/// (the `index`-th of `of`), numbered from the part's first line.
fn open_part(source: &Source, detected: &Detected, target: &SchemaRef, rescue: bool, range: std::ops::Range<u64>, (index, of): (usize, usize), handle: &tokio::runtime::Handle) -> Result<Batches> {
    assert_eq!(detected.compression, Compression::None, "only uncompressed files are read in parts");
    match detected.format {
        Format::Jsonl => open_jsonl_part(source, target, rescue, range, of, handle),
        Format::Csv => open_csv_part(source, detected, target, rescue, range, index + 1 == of, handle),
        other => unreachable!("{} files are not read in parts", other.name()),
    }
}

/// The lines in bytes `range` of a JSON Lines file (local, or an S3 object
/// by a ranged GET), one of `of` parts, numbered from the part's first line.
fn open_jsonl_part(source: &Source, target: &SchemaRef, rescue: bool, range: std::ops::Range<u64>, of: usize, handle: &tokio::runtime::Handle) -> Result<Batches> {
    let from_start = range.start == 0;
    let raw = source.open_range(range, handle)?;
    let mut reader: Box<dyn BufRead + Send> = Box::new(BufReader::with_capacity(READ_BUFFER, raw));
    if from_start {
        reader = without_bom(source, reader)?;
    }
    Ok(Box::new(JsonLines::new(source, reader, Arc::clone(target), rescue, of)?))
}

fn open_file(source: &Source, detected: Detected, target: &SchemaRef, rescue: bool, share: usize, handle: &tokio::runtime::Handle) -> Result<Batches> {
    match detected.format {
        Format::Jsonl => Ok(Box::new(JsonLines::new(source, text_lines(source, detected.compression, handle)?, Arc::clone(target), rescue, share)?)),
        Format::Csv => open_csv(source, &detected, target, rescue, handle),
        Format::Parquet | Format::Arrow | Format::ArrowStream => {
            let (schema, batches) = open_columnar(source, detected, handle)?;
            let conform = Conform::plan(source, &schema, target, rescue)?;
            let mut next_row = 1u64;
            Ok(Box::new(batches.map(move |b| {
                let batch = b?;
                let first = next_row;
                next_row += batch.num_rows() as u64;
                conform.apply(batch, first, rescue::Cells::default())
            })))
        }
    }
}

/// Rows and sources read so far, for progress reporting.
#[derive(Debug, Default)]
pub struct Progress {
    pub rows: AtomicU64,
    pub sources_done: AtomicU64,
    /// Bytes of the sources read so far (as stored), and of all of them once resolved.
    pub bytes_read: Arc<AtomicU64>,
    pub bytes_total: AtomicU64,
    /// Rows read from each finished source, by source id.
    pub source_rows: Mutex<BTreeMap<String, u64>>,
}

impl Progress {
    /// Count what `other` read (work done apart, then kept) as read here.
    pub fn absorb(&self, other: &Progress) {
        self.rows.fetch_add(other.rows.load(Ordering::Relaxed), Ordering::Relaxed);
        self.sources_done.fetch_add(other.sources_done.load(Ordering::Relaxed), Ordering::Relaxed);
        self.bytes_read.fetch_add(other.bytes_read.load(Ordering::Relaxed), Ordering::Relaxed);
        let theirs = other.source_rows.lock().expect("progress poisoned").clone();
        self.source_rows.lock().expect("progress poisoned").extend(theirs);
    }

    /// Count the rows `other` read ahead of `source`'s identity as read of
    /// `source` (its bytes are counted here as they are read, once kept:
    /// `read_ahead.rs`).
    pub fn absorb_read_ahead(&self, other: &Progress, source: &Source) {
        self.rows.fetch_add(other.rows.load(Ordering::Relaxed), Ordering::Relaxed);
        self.sources_done.fetch_add(other.sources_done.load(Ordering::Relaxed), Ordering::Relaxed);
        // Recorded under the id of a source read before its identity: none.
        if let Some(rows) = other.source_rows.lock().expect("progress poisoned").get("") {
            self.source_rows.lock().expect("progress poisoned").insert(source.id.clone(), *rows);
        }
    }
}

/// The first typed error a reader met. Lance only sees an opaque Arrow error.
pub type ErrorSlot = Arc<Mutex<Option<Error>>>;

/// Every source in turn, as one stream of batches of the table schema; what
/// Lance writes as one commit (or one part of one large file, of several
/// written side by side: `parts.rs`). Decoding runs on Lance's blocking
/// reader thread.
pub struct SourcesReader {
    sources: std::vec::IntoIter<(Source, Detected)>,
    current: Option<(Source, Batches, u64)>,
    target: SchemaRef,
    /// What does not fit goes to the table's rescue column.
    rescue: bool,
    handle: tokio::runtime::Handle,
    error: ErrorSlot,
    progress: Arc<Progress>,
    /// `bytes_read` when the current source was opened.
    source_bytes_start: u64,
    /// The part of its one source this reader reads, if the source is read in parts.
    part: Option<Part>,
    /// This reader's place among readers of groups of sources side by side, and what they share.
    group: Option<(usize, Arc<Whole>)>,
}

impl SourcesReader {
    pub fn new(sources: Vec<(Source, Detected)>, target: SchemaRef, rescue: bool, progress: Arc<Progress>) -> (SourcesReader, ErrorSlot) {
        assert!(!rescue || target.field_with_name(rescue::RESCUE_COLUMN).is_ok(), "a rescuing reader writes the rescue column");
        let error: ErrorSlot = Arc::default();
        let reader = SourcesReader {
            sources: sources.into_iter(),
            current: None,
            target,
            rescue,
            handle: tokio::runtime::Handle::current(),
            error: Arc::clone(&error),
            progress,
            source_bytes_start: 0,
            part: None,
            group: None,
        };
        (reader, error)
    }

    /// This reader, the `index`-th of the readers of groups of sources
    /// written side by side, sharing `whole`: they share the cores, and
    /// those after a failed one stop.
    pub fn side_by_side(mut self, index: usize, whole: &Arc<Whole>) -> SourcesReader {
        self.group = Some((index, Arc::clone(whole)));
        self
    }

    /// This reader's place among readers side by side (parts of one file,
    /// or groups of sources), and what they share.
    fn side(&self) -> Option<(usize, &Whole)> {
        match (&self.part, &self.group) {
            (Some(part), _) => Some((part.index, &part.whole)),
            (None, Some((index, whole))) => Some((*index, whole)),
            (None, None) => None,
        }
    }

    /// One reader for each of `ranges`, the parts of `source` (see `parts.rs`),
    /// each numbering lines from its part's first.
    pub fn for_parts(source: (Source, Detected), ranges: Vec<std::ops::Range<u64>>, target: SchemaRef, rescue: bool, progress: Arc<Progress>) -> Vec<(SourcesReader, ErrorSlot)> {
        let whole = Arc::new(parts::Whole::new(ranges.len()));
        let readers = ranges.into_iter().enumerate().map(|(index, range)| {
            let (mut reader, slot) = SourcesReader::new(vec![source.clone()], Arc::clone(&target), rescue, Arc::clone(&progress));
            reader.part = Some(Part { index, range, whole: Arc::clone(&whole) });
            (reader, slot)
        });
        readers.collect()
    }

    fn fail(&mut self, e: Error) -> ArrowError {
        let msg = e.to_string();
        self.error.lock().expect("error slot poisoned").get_or_insert(e);
        if let Some((index, whole)) = self.side() {
            whole.failed(index);
        }
        // Stop: nothing after a bad source may be written.
        self.sources = Vec::new().into_iter();
        self.current = None;
        ArrowError::ExternalError(msg.into())
    }

    fn step(&mut self) -> Result<Option<RecordBatch>> {
        if let Some((index, whole)) = self.side()
            && whole.earlier_failed(index)
        {
            // Never reported: the earlier reader's error comes first (`stage.rs`).
            return Err(Error::Blocked("stopped: an earlier part or source failed".into()));
        }
        loop {
            if self.current.is_none() {
                let Some((mut source, detected)) = self.sources.next() else { return Ok(None) };
                source.read_counter = Some(Arc::clone(&self.progress.bytes_read));
                self.source_bytes_start = self.progress.bytes_read.load(Ordering::Relaxed);
                let batches = match &self.part {
                    Some(part) => open_part(&source, &detected, &self.target, self.rescue, part.range.clone(), (part.index, part.whole.parts()), &self.handle)?,
                    None => open_source(&source, detected, &self.target, self.rescue, self.group.as_ref().map_or(1, |(_, whole)| whole.parts()), &self.handle)?,
                };
                self.current = Some((source, batches, 0));
            }
            let (source, batches, rows) = self.current.as_mut().expect("a source is open");
            match batches.next() {
                Some(batch) => {
                    let batch = batch?;
                    *rows += batch.num_rows() as u64;
                    self.progress.rows.fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
                    if batch.num_rows() > 0 {
                        return Ok(Some(batch));
                    }
                }
                None => {
                    // Parts are counted as read; the last to finish speaks for the file.
                    let rows = match &self.part {
                        Some(part) => part.whole.finished(*rows),
                        None => {
                            // Formats read through a local file are counted whole, once done.
                            let counted = self.progress.bytes_read.load(Ordering::Relaxed) - self.source_bytes_start;
                            self.progress.bytes_read.fetch_add(source.size.saturating_sub(counted), Ordering::Relaxed);
                            Some(*rows)
                        }
                    };
                    if let Some(rows) = rows {
                        if rows == 0 {
                            return Err(bad(source, None, None, "empty: no rows"));
                        }
                        self.progress.sources_done.fetch_add(1, Ordering::Relaxed);
                        self.progress.source_rows.lock().expect("progress poisoned").insert(source.id.clone(), rows);
                    }
                    self.current = None;
                }
            }
        }
    }
}

impl Iterator for SourcesReader {
    type Item = Result<RecordBatch, ArrowError>;
    fn next(&mut self) -> Option<Self::Item> {
        match self.step() {
            Ok(batch) => batch.map(Ok),
            Err(e) => Some(Err(self.fail(e))),
        }
    }
}

impl RecordBatchReader for SourcesReader {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.target)
    }
}
