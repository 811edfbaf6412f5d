//! Only casts that keep every value are implicit. Arrow's readers and casts
//! truncate (`7.5` into an integer column is 7, Parquet's `5.9` is 5) and
//! parse quoted numbers (`"80"` is 80) without a word; these checks turn each
//! such value into bad input naming its row and column.
//!
//! Two places need it: JSON Lines, which arrow decodes straight into the
//! table's types (checked here on the text, per top-level numeric column),
//! and columnar files whose column type differs from the table's (checked by
//! casting back and comparing).

use std::fmt;

use arrow::array::{Array, ArrayRef};
use arrow::compute::kernels::cmp::distinct;
use arrow::compute::{CastOptions, can_cast_types, cast_with_options};
use arrow::datatypes::{DataType, Schema};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::{json_members, types};

/// Longest quoted value an error message repeats.
const SHOWN_CHARS: usize = 40;

/// What a top-level numeric column takes without changing a value.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// Whole numbers in `min..=max`.
    Int { min: i128, max: i128 },
    /// Any number; integers only where the float holds them exactly.
    Float { mantissa: u32 },
    /// ISO-8601 text only (a number would be read as raw days or ticks).
    Time(TimeText),
}

impl Kind {
    fn of(t: &DataType) -> Option<Kind> {
        let int = |min: i128, max: i128| Some(Kind::Int { min, max });
        match t {
            DataType::Int8 => int(i8::MIN.into(), i8::MAX.into()),
            DataType::Int16 => int(i16::MIN.into(), i16::MAX.into()),
            DataType::Int32 => int(i32::MIN.into(), i32::MAX.into()),
            DataType::Int64 => int(i64::MIN.into(), i64::MAX.into()),
            DataType::UInt8 => int(0, u8::MAX.into()),
            DataType::UInt16 => int(0, u16::MAX.into()),
            DataType::UInt32 => int(0, u32::MAX.into()),
            DataType::UInt64 => int(0, u64::MAX.into()),
            DataType::Float16 => Some(Kind::Float { mantissa: 11 }),
            DataType::Float32 => Some(Kind::Float { mantissa: 24 }),
            DataType::Float64 => Some(Kind::Float { mantissa: 53 }),
            other => TimeText::of(other).map(Kind::Time),
        }
    }

    fn integer(self, v: i128) -> Result<(), Problem> {
        match self {
            Kind::Time(_) => Err(Problem::NumberAsTime(v.to_string())),
            Kind::Int { min, max } if v < min || v > max => Err(Problem::OutOfRange(v.to_string())),
            // Exact iff its significant bits fit the mantissa (float16's
            // exponent tops out first, at 65504).
            Kind::Float { mantissa } => {
                let m = v.unsigned_abs();
                let fits = m == 0 || (m >> m.trailing_zeros()) < 1u128 << mantissa;
                if fits && (mantissa != 11 || m <= 65_504) { Ok(()) } else { Err(Problem::Rounds(v.to_string())) }
            }
            _ => Ok(()),
        }
    }

    fn float(self, v: f64) -> Result<(), Problem> {
        let (min, max) = match self {
            Kind::Time(_) => return Err(Problem::NumberAsTime(v.to_string())),
            // A decimal may round to the nearest float, but never to infinity.
            Kind::Float { mantissa } => {
                let largest = match mantissa {
                    11 => 65_504.0,
                    24 => f64::from(f32::MAX),
                    _ => f64::MAX,
                };
                return if v.abs() <= largest { Ok(()) } else { Err(Problem::OutOfRange(v.to_string())) };
            }
            Kind::Int { min, max } => (min, max),
        };
        // Below 2^53 an f64 holds the literal's integer exactly; above, the
        // literal (say 9007199254740993.0) may already have rounded.
        if v.fract() != 0.0 || !v.is_finite() || v.abs() >= (1u64 << 53) as f64 {
            return Err(Problem::NotWhole(v.to_string()));
        }
        let whole = v as i128;
        if whole < min || whole > max {
            return Err(Problem::OutOfRange(whole.to_string()));
        }
        Ok(())
    }
}

/// Why a JSON value does not fit its column exactly.
#[derive(Debug)]
enum Problem {
    Quoted(String),
    NumberAsTime(String),
    Time(String),
    NotWhole(String),
    OutOfRange(String),
    Rounds(String),
    /// Not a number as JSON writes one (`01`, `.5`, `1e999`): arrow reads it anyway, as something else.
    NotJson(String),
}

/// The top-level numeric columns of a table, checked on each JSON line.
pub struct JsonNumbers {
    /// (column name, its type, what it takes), in schema order.
    columns: Vec<(String, DataType, Kind)>,
    /// Bit `n` set: some column's name is `n` bytes long (63: 63 or more).
    /// Most keys that name no checked column are told apart by length alone.
    name_lengths: u64,
    /// The first line checked whole, as a [`Layout`]. Set once: `None` (it
    /// had no members) leaves every line of the source to the walk.
    layout: std::sync::OnceLock<Option<Layout>>,
}

/// A line's bytes between its values: a producer writes every line of a
/// file alike, so a line whose bytes between values are the same as this
/// one's has the same members, in the same order, and the same structure.
/// Matching them byte for byte, then delimiting each value as
/// [`json_members::walk`] does, judges the line as the walk would, without
/// finding its keys again; anything else is walked.
struct Layout {
    /// Before the first value, between each value and the next, after the last.
    gaps: Vec<Vec<u8>>,
    /// Each member's checked column (an index into `JsonNumbers::columns`), if any.
    checked: Vec<Option<usize>>,
}

impl Layout {
    /// `line`'s layout, if it walks whole with at least one member.
    fn of(numbers: &JsonNumbers, line: &[u8]) -> Option<Layout> {
        let (mut gaps, mut checked, mut at, mut expected) = (Vec::new(), Vec::new(), 0, 0);
        let whole = json_members::walk(line, |member| {
            let start = member.value.as_ptr() as usize - line.as_ptr() as usize;
            gaps.push(line[at..start].to_vec());
            // Found as the walk finds it (`expected` too, though names are distinct).
            let column = numbers.column(&member, expected);
            expected = column.map_or(expected, |i| i + 1);
            checked.push(column);
            at = start + member.value.len();
        });
        gaps.push(line[at..].to_vec());
        (whole && !checked.is_empty()).then_some(Layout { gaps, checked })
    }

    /// `line` judged as [`JsonNumbers::walking`] judges it, if its bytes
    /// between values are this layout's; else `None`.
    fn check(&self, numbers: &JsonNumbers, line: &[u8]) -> Option<Result<(), Inexact>> {
        let mut at = 0;
        for (gap, checked) in self.gaps.iter().zip(&self.checked) {
            if !same(line.get(at..at + gap.len())?, gap) {
                return None;
            }
            at += gap.len();
            let kept = checked.and_then(|i| kept_as_written(&numbers.columns[i].2, line, at));
            if let Some(end) = kept {
                at = end;
                continue;
            }
            // A value the walk would start later (whitespace here) is none to
            // `value_end`: the line goes to the walk.
            let end = json_members::value_end(line, at)?;
            if let Some(i) = *checked {
                let kind = numbers.columns[i].2;
                let value = &line[at..end];
                if let Err(problem) = plain(kind, value).unwrap_or_else(|| by_parse(kind, value)) {
                    // The walk too stops at a line's first problem.
                    return Some(Err(numbers.inexact(i, &problem)));
                }
            }
            at = end;
        }
        same(line.get(at..)?, self.gaps.last().expect("a gap after the last value")).then_some(Ok(()))
    }
}

/// The end of the value at `at` in `line` if it is one of the values most
/// lines hold and `plain` keeps as written, found in one pass over it; `None`
/// leaves it to `value_end` and `plain`. Where it says `Some(end)`, they say
/// the same: `value_end` ends the value there (a number ends at a separator,
/// a string at its first quote) and `plain` keeps it.
#[inline]
fn kept_as_written(kind: &Kind, line: &[u8], at: usize) -> Option<usize> {
    let separator = |i: usize| line.get(i).is_none_or(|b| matches!(b, b',' | b'}' | b']') || b.is_ascii_whitespace());
    let end = match (kind, *line.get(at)?) {
        (Kind::Time(t), b'"') => {
            // Text up to the first quote: no escape, no control character.
            let text = &line[at + 1..];
            let close = json_members::quote_backslash_or_control(text)?;
            if text[close] != b'"' || !t.keeps_all(&text[..close]) {
                return None;
            }
            at + 1 + close + 1
        }
        (_, b'n') => (line.get(at..at + 4)? == b"null" && separator(at + 4)).then_some(at + 4)?,
        (Kind::Int { min, max }, first @ (b'-' | b'0'..=b'9')) => {
            let (n, end) = whole_number(line, at + usize::from(first == b'-'))?;
            let n = if first == b'-' { -i128::from(n) } else { i128::from(n) };
            (*min <= n && n <= *max && separator(end)).then_some(end)?
        }
        (Kind::Float { mantissa }, first @ (b'-' | b'0'..=b'9')) => {
            let (n, end) = whole_number(line, at + usize::from(first == b'-'))?;
            match line.get(end) {
                // 18 digits are far inside float32's range; float16's is judged by the parse.
                Some(b'.') if *mantissa >= 24 => {
                    let fraction = line[end + 1..].iter().take_while(|b| b.is_ascii_digit()).count();
                    (fraction > 0 && separator(end + 1 + fraction)).then_some(end + 1 + fraction)?
                }
                _ => (separator(end) && kind.integer(i128::from(n)).is_ok()).then_some(end)?,
            }
        }
        _ => return None,
    };
    debug_assert_eq!(json_members::value_end(line, at), Some(end), "delimited as the walk delimits it");
    debug_assert!(matches!(plain(*kind, &line[at..end]), Some(Ok(()))), "kept as plain keeps it");
    Some(end)
}

/// The digits from `at`: their value and end, if they are 1 to 18 digits
/// (an i64 holds them) without a leading zero (`01`).
#[inline]
fn whole_number(line: &[u8], at: usize) -> Option<(i64, usize)> {
    let text = line.get(at..)?;
    let (mut n, mut digits) = (0i64, 0);
    for &d in text.iter().take(18).take_while(|d| d.is_ascii_digit()) {
        (n, digits) = (n * 10 + i64::from(d - b'0'), digits + 1);
    }
    let more = text.get(digits).is_some_and(u8::is_ascii_digit);
    (digits > 0 && !more && (digits == 1 || text[0] != b'0')).then_some((n, at + digits))
}

/// `a == b` a word at a time (the last word overlapping the one before):
/// gaps are a few bytes, too short for a call to `memcmp` to pay off.
#[inline]
fn same(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let word = |s: &[u8], i: usize| u64::from_ne_bytes(s[i..i + 8].try_into().expect("eight bytes"));
    let half = |s: &[u8], i: usize| u32::from_ne_bytes(s[i..i + 4].try_into().expect("four bytes"));
    match n {
        0..4 => a.iter().zip(b).all(|(x, y)| x == y),
        4..8 => half(a, 0) == half(b, 0) && half(a, n - 4) == half(b, n - 4),
        _ => (0..n - 8).step_by(8).all(|i| word(a, i) == word(b, i)) && word(a, n - 8) == word(b, n - 8),
    }
}

fn length_bit(len: usize) -> u64 {
    1 << len.min(63)
}

/// A value that would change: the column (none: the line's shape) and why.
#[derive(Debug)]
pub struct Inexact {
    pub column: Option<String>,
    pub reason: String,
}

impl JsonNumbers {
    /// `None` when the table has no top-level numeric column: nothing to check.
    pub fn for_schema(schema: &Schema) -> Option<JsonNumbers> {
        let columns: Vec<_> = schema
            .fields()
            .iter()
            .filter_map(|f| Kind::of(f.data_type()).map(|k| (f.name().clone(), f.data_type().clone(), k)))
            .collect();
        let name_lengths = columns.iter().fold(0, |bits, (name, _, _)| bits | length_bit(name.len()));
        (!columns.is_empty()).then_some(JsonNumbers { columns, name_lengths, layout: std::sync::OnceLock::new() })
    }

    /// The checked column `member` names, trying the one at `expected` first.
    fn column(&self, member: &json_members::Member, expected: usize) -> Option<usize> {
        match member.plain_key() {
            Some(key) if self.name_lengths & length_bit(key.len()) == 0 => None,
            Some(key) if self.columns.get(expected).is_some_and(|(name, _, _)| name.as_bytes() == key) => Some(expected),
            Some(key) => self.columns.iter().position(|(name, _, _)| name.as_bytes() == key),
            None => self.columns.iter().position(|(name, _, _)| member.key_is(name)),
        }
    }

    fn inexact(&self, column: usize, problem: &Problem) -> Inexact {
        let (name, t, _) = &self.columns[column];
        Inexact { column: Some(name.clone()), reason: explain(problem, &types::name(t)) }
    }

    /// Check one line arrow's decoder took as one JSON object: that it is
    /// one, as JSON writes it (arrow also takes a missing comma, or two
    /// objects on one line), and each top-level member that names a numeric
    /// column, its value alone.
    pub fn check(&self, line: &[u8]) -> Result<(), Inexact> {
        // Most lines share the first one's layout: matched, they are judged without a walk.
        if let Some(Some(layout)) = self.layout.get()
            && let Some(judged) = layout.check(self, line)
        {
            return judged;
        }
        let walked = self.walking(line);
        if walked.is_ok() {
            self.layout.get_or_init(|| Layout::of(self, line));
        }
        walked
    }

    /// [`JsonNumbers::check`], walking the line's members.
    fn walking(&self, line: &[u8]) -> Result<(), Inexact> {
        let mut found: Option<(usize, Problem)> = None;
        // Lines mostly repeat one order of members: try the column after the last one found first.
        let mut expected = 0;
        let one_object = json_members::walk(line, |member| {
            if found.is_some() {
                return;
            }
            let Some(i) = self.column(&member, expected) else { return };
            expected = i + 1;
            let kind = self.columns[i].2;
            let checked = plain(kind, member.value).unwrap_or_else(|| by_parse(kind, member.value));
            if let Err(problem) = checked {
                found = Some((i, problem));
            }
        });
        match found {
            Some((i, problem)) => Err(self.inexact(i, &problem)),
            None if !one_object => Err(Inexact {
                column: None,
                reason: "not one JSON object as JSON writes it (a missing comma, or a second object on the line?)".to_string(),
            }),
            None => Ok(()),
        }
    }
}

/// `value` judged by serde's parse: what [`plain`] leaves.
fn by_parse(kind: Kind, value: &[u8]) -> Result<(), Problem> {
    let mut de = serde_json::Deserializer::from_slice(value);
    Number(kind).deserialize(&mut de).unwrap_or_else(|_| Err(Problem::NotJson(String::from_utf8_lossy(value).into_owned())))
}

/// The values most lines hold, judged as [`by_parse`] would judge them but
/// without a parser: `null`, an integer of at most 18 digits, a decimal
/// without exponent into a float column, and text without escapes or control
/// characters into a time column. `None`: anything else, left to [`by_parse`].
fn plain(kind: Kind, value: &[u8]) -> Option<Result<(), Problem>> {
    match (kind, value.first()?) {
        (Kind::Time(t), b'"') => {
            let text = value.strip_suffix(b"\"").filter(|_| value.len() >= 2)?.get(1..)?;
            if text.iter().any(|&b| b == b'\\' || b < 0x20) {
                return None;
            }
            if t.keeps_all(text) {
                return Some(Ok(()));
            }
            Some(t.check(std::str::from_utf8(text).ok()?).map_err(Problem::Time))
        }
        (_, b'n') => (value == b"null").then_some(Ok(())),
        (Kind::Int { .. } | Kind::Float { .. }, &first @ (b'-' | b'0'..=b'9')) => {
            let negative = first == b'-';
            let (n, end) = whole_number(value, usize::from(negative))?;
            match &value[end..] {
                [] => Some(kind.integer(if negative { -i128::from(n) } else { i128::from(n) })),
                // 18 digits are far inside float32's range; float16's is judged by the parse.
                [b'.', fraction @ ..] if matches!(kind, Kind::Float { mantissa: 24.. }) && !fraction.is_empty() && fraction.iter().all(u8::is_ascii_digit) => Some(Ok(())),
                _ => None,
            }
        }
        _ => None,
    }
}

fn explain(problem: &Problem, column_type: &str) -> String {
    match problem {
        Problem::Quoted(s) => format!(
            "a quoted string ({}) where the column is {column_type}: write numbers without quotes, or declare the column as a string",
            shown(s)
        ),
        Problem::NumberAsTime(v) => format!("a number ({v}) where the column is {column_type}: write ISO-8601 text (2026-11-30, 2026-11-30T05:00:00Z)"),
        Problem::Time(reason) => reason.clone(),
        Problem::NotWhole(v) => format!("{v} is not a whole number and the column is {column_type}: storing it would change the value"),
        Problem::OutOfRange(v) => format!("{v} is out of range for {column_type}"),
        Problem::Rounds(v) => format!("{v} cannot be held exactly by {column_type}: storing it would change the value"),
        Problem::NotJson(v) => format!("{} is not a number as JSON writes one, and the column is {column_type}: it would be stored as something else", shown(v)),
    }
}

fn shown(s: &str) -> String {
    let cut: String = s.chars().take(SHOWN_CHARS).collect();
    if cut.len() < s.len() { format!("{:?}...", cut) } else { format!("{s:?}") }
}

/// One value of a numeric column.
struct Number(Kind);

impl<'de> DeserializeSeed<'de> for Number {
    type Value = Result<(), Problem>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Number {
    type Value = Result<(), Problem>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a number")
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(self.0.integer(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(self.0.integer(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(self.0.float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(match self.0 {
            Kind::Time(t) => t.check(v).map_err(Problem::Time),
            _ => Err(Problem::Quoted(v.to_string())),
        })
    }
    // Nulls pass; booleans, arrays and objects are arrow's to refuse.
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Ok(()))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Ok(()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Ok(()))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Ok(()))
    }
}

/// A columnar file's column cast to the table's type, refusing any value the
/// cast would change. `Err((row, reason))` names the first such row (0-based).
pub fn cast_column(column: &ArrayRef, to: &DataType) -> Result<ArrayRef, (Option<usize>, String)> {
    let from = column.data_type();
    let (from_name, to_name) = (types::name(from), types::name(to));
    if is_string(from) && !(is_string(to) || to.is_temporal()) {
        return Err((None, format!("the file's column is {from_name} and the table's is {to_name}: quoted values are not converted")));
    }
    if from.is_integer() && to.is_temporal() {
        return Err((None, format!("the file's column is {from_name} and the table's is {to_name}: numbers are not read as dates or times")));
    }
    if is_string(from)
        && let Err((row, reason)) = text_column(column, to)
    {
        return Err((Some(row), reason));
    }
    let safe = CastOptions { safe: true, ..Default::default() };
    let cast = cast_with_options(column, to, &safe).map_err(|e| (None, format!("cannot cast {from_name} to {to_name}: {e}")))?;
    // A safe cast turns failures into nulls: the first new null is the bad row.
    if let Some(row) = (0..column.len()).find(|&r| column.is_valid(r) && cast.is_null(r)) {
        return Err((Some(row), format!("value {} does not cast from {from_name} to {to_name}", value(column, row))));
    }
    // Casting back must give every value again (only flat types compare).
    let flat = |t: &DataType| t.is_primitive() || is_string(t) || matches!(t, DataType::Boolean);
    // Text parsed into dates and times is checked by the parse alone.
    if flat(from) && flat(to) && !is_string(from) && can_cast_types(to, from) {
        let back = cast_with_options(&cast, from, &safe).map_err(|e| (None, format!("cannot cast {to_name} back to {from_name}: {e}")))?;
        let changed = distinct(column, &back).map_err(|e| (None, format!("comparing {from_name} with {to_name}: {e}")))?;
        if let Some(row) = (0..column.len()).find(|&r| column.is_valid(r) && changed.value(r)) {
            return Err((
                Some(row),
                format!(
                    "{} would become {} as {to_name}: the file's column is {from_name}, and the change would lose the value",
                    value(column, row),
                    value(&cast, row)
                ),
            ));
        }
    }
    Ok(cast)
}

fn is_string(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

fn value(array: &ArrayRef, row: usize) -> String {
    ArrayFormatter::try_new(array.as_ref(), &FormatOptions::default())
        .map(|f| f.value(row).to_string())
        .unwrap_or_else(|_| "the value".to_string())
}

/// What ISO-8601 text a date or timestamp column takes without losing part
/// of it: a date column only dates (not a time of day), a timestamp column
/// no digits below its unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeText {
    Date,
    /// Nanoseconds per tick of the column's unit.
    Timestamp { tick_nanos: u32 },
}

impl TimeText {
    /// Does `text` show without a parse that it loses nothing? A date alone
    /// (no time of day to drop), or no more fraction digits than the unit
    /// keeps: most text does.
    fn keeps_all(self, text: &[u8]) -> bool {
        match self {
            TimeText::Date => text.len() == 10,
            TimeText::Timestamp { tick_nanos } => {
                let fraction = memchr::memchr(b'.', text).map_or(&[][..], |dot| &text[dot + 1..]);
                let digits = fraction.iter().take_while(|b| b.is_ascii_digit()).count();
                digits <= (9 - tick_nanos.ilog10()) as usize
            }
        }
    }

    pub fn of(t: &DataType) -> Option<TimeText> {
        use arrow::datatypes::TimeUnit;
        match t {
            DataType::Date32 | DataType::Date64 => Some(TimeText::Date),
            DataType::Timestamp(unit, _) => Some(TimeText::Timestamp {
                tick_nanos: match unit {
                    TimeUnit::Second => 1_000_000_000,
                    TimeUnit::Millisecond => 1_000_000,
                    TimeUnit::Microsecond => 1_000,
                    TimeUnit::Nanosecond => 1,
                },
            }),
            _ => None,
        }
    }

    /// `Err` says why `text` would not be stored as written. Text that does
    /// not parse at all is left to the reader, which refuses it.
    pub fn check(self, text: &str) -> Result<(), String> {
        use chrono::{NaiveDate, Timelike};
        if self.keeps_all(text.as_bytes()) {
            return Ok(());
        }
        match (self, crate::times::parse_timestamp(text)) {
            (TimeText::Date, Some(_)) if NaiveDate::parse_from_str(text, "%Y-%m-%d").is_err() => {
                Err(format!("{} has a time of day and the column is a date: storing it would drop the time", shown(text)))
            }
            (TimeText::Timestamp { tick_nanos }, Some(t)) if t.nanosecond() % tick_nanos != 0 => Err(format!(
                "{} has digits below the column's unit: storing it would truncate them",
                shown(text)
            )),
            _ => Ok(()),
        }
    }
}

/// Text (CSV fields) into `to`: each value as written, or the first row
/// whose value would change (a float column that would round an integer,
/// a date column given a time, a timestamp given finer digits).
pub fn text_column(column: &ArrayRef, to: &DataType) -> Result<(), (usize, String)> {
    use arrow::array::AsArray;
    let Some(strings) = column.as_string_opt::<i32>() else { return Ok(()) };
    let check: Box<dyn Fn(&str) -> Result<(), String>> = match (Kind::of(to), TimeText::of(to)) {
        (_, Some(t)) => Box::new(move |s| t.check(s)),
        (Some(kind @ Kind::Float { .. }), _) => Box::new(move |s: &str| match s.trim().parse::<i128>() {
            Ok(v) => kind.integer(v).map_err(|p| explain(&p, &types::name(to))),
            Err(_) => Ok(()),
        }),
        _ => return Ok(()),
    };
    for (row, value) in strings.iter().enumerate() {
        if let Some(v) = value {
            check(v).map_err(|reason| (row, reason))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token a JSON line may hold where a numeric or time column is named,
    /// from a seeded xorshift: mostly near the shapes `plain` takes, to find
    /// where its judgement and the parser's part.
    fn token(rng: &mut u64) -> String {
        let mut next = || {
            *rng ^= *rng << 13;
            *rng ^= *rng >> 7;
            *rng ^= *rng << 17;
            *rng
        };
        let digits = |n: u64, first: u64| {
            let mut s: String = (0..n).map(|i| char::from(b'0' + ((first >> (i % 16 * 4)) % 10) as u8)).collect();
            if s.is_empty() {
                s.push('7');
            }
            s
        };
        let sign = if next() % 3 == 0 { "-" } else { "" };
        let (a, b, c) = (next(), next(), next());
        match a % 12 {
            0 => format!("{sign}{}", digits(b % 22, c)),
            1 => format!("{sign}0{}", digits(b % 3, c)),
            2 => format!("{sign}{}.{}", digits(b % 20, c), digits(c % 5, b)),
            3 => format!("{sign}{}.", digits(b % 4, c)),
            4 => format!("{sign}{}e{}", digits(b % 4, c), c % 400),
            5 => ["null", "true", "false", "nul", "-", "\"\"", "{}", "[1]", "1x", "7.5x", "-0", "-0.0", "+1", ".5"][(b % 14) as usize].to_string(),
            6 => format!("\"{}\"", digits(b % 6, c)),
            7 => format!("\"2026-11-{:02}\"", 1 + b % 30),
            8 => format!("\"2026-11-{:02}T{:02}:07:00{}Z\"", 1 + b % 30, c % 24, [".", ".1", ".123", ".123456", ".123456789", ""][(a >> 8) as usize % 6]),
            9 => format!("\"2026-11-01{}05:00:00\"", [" ", "T", "t", "\\u0054", "\t", "\u{1}"][(b % 6) as usize]),
            10 => format!("\"{}\"", ["é", "\\\"", "x\\n", "2026-13-01", "not a time"][(b % 5) as usize]),
            _ => format!("{sign}{}", (b as i128) << (c % 40)),
        }
    }

    #[test]
    fn plain_values_are_judged_as_the_parser_judges_them() {
        let kinds = [
            Kind::of(&DataType::Int8),
            Kind::of(&DataType::Int64),
            Kind::of(&DataType::UInt16),
            Kind::of(&DataType::UInt64),
            Kind::of(&DataType::Float16),
            Kind::of(&DataType::Float32),
            Kind::of(&DataType::Float64),
            Kind::of(&DataType::Date32),
            Kind::of(&DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, None)),
            Kind::of(&DataType::Timestamp(arrow::datatypes::TimeUnit::Nanosecond, Some("UTC".into()))),
        ]
        .map(|k| k.expect("a checked kind"));
        let mut rng = 0x5eed_u64;
        let mut judged_plainly = 0;
        for _ in 0..20_000 {
            let token = token(&mut rng);
            for kind in kinds {
                let Some(plainly) = plain(kind, token.as_bytes()) else { continue };
                judged_plainly += 1;
                let parsed = by_parse(kind, token.as_bytes());
                assert_eq!(format!("{plainly:?}"), format!("{parsed:?}"), "{token} as {kind:?}");
            }
        }
        // Most of what was drawn is judged without the parser: the test compares something.
        assert!(judged_plainly > 30_000, "{judged_plainly}");
        // A value the float column would hold as infinity changes.
        let float = |t: &DataType| Kind::of(t).expect("a float kind");
        for (t, value) in [(DataType::Float16, "70000.5"), (DataType::Float16, "-65505"), (DataType::Float32, "1e39"), (DataType::Float32, "-3.5e38")] {
            assert!(by_parse(float(&t), value.as_bytes()).is_err(), "{value} into {t}");
        }
        for (t, value) in [(DataType::Float16, "65504.0"), (DataType::Float32, "3.4e38"), (DataType::Float64, "1e308")] {
            assert!(by_parse(float(&t), value.as_bytes()).is_ok(), "{value} into {t}");
        }
    }

    /// A line whose bytes between values are the first line's is judged
    /// from that layout exactly as a walk judges it; any other is walked.
    #[test]
    fn lines_matched_against_a_layout_are_judged_as_walked() {
        use arrow::datatypes::{Field, TimeUnit};
        let schema = Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("user", DataType::Utf8, true),
            Field::new("amount", DataType::Float32, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
            Field::new("n", DataType::Int8, true),
        ]);
        let numbers = JsonNumbers::for_schema(&schema).unwrap();
        numbers.check(br#"{"id": 1, "user": "u", "amount": 1.5, "ts": "2026-11-01T00:00:00Z", "n": 3}"#).unwrap();
        let layout = numbers.layout.get().and_then(Option::as_ref).expect("the first line's layout");
        let (mut rng, mut matched, mut refused) = (0x1a70_u64, 0, 0);
        for round in 0..20_000 {
            // One value drawn, the others good: a line holds a problem or none.
            let mut values = ["70", "\"u\"", "1.25", "\"2026-11-01T00:00:00Z\"", "-3"].map(String::from);
            values[round % 5] = token(&mut rng);
            // Values holding separators, and a string holding a member's text.
            if round % 13 == 0 {
                values[round % 5] = [r#"[1, 2]"#, r#"{"a": 1}"#, r#""x\", \"amount\": 7.5, \"""#, r#""a, b}""#][round / 13 % 4].to_string();
            }
            let [a, b, c, d, e] = values;
            let mut line = format!(r#"{{"id": {a}, "user": {b}, "amount": {c}, "ts": {d}, "n": {e}}}"#);
            // Now and then bytes between values differ, or the line is not one object.
            match round % 9 {
                0 => line = line.replacen(", ", ",", 1),
                1 => line.push_str(" {}"),
                2 => line = line.replacen("\"ts\"", "\"t\\u0073\"", 1),
                3 => line = line.replacen(": ", ":  ", 1),
                4 => line = line.replacen(", \"ts\"", ", \"id\": 7.5, \"ts\"", 1),
                5 => line = line.replacen(", ", " ", 1),
                6 => line.push(' '),
                7 => line.truncate((0..=line.len() / 2).rev().find(|&cut| line.is_char_boundary(cut)).unwrap_or(0)),
                _ => {}
            }
            let walked = format!("{:?}", numbers.walking(line.as_bytes()));
            if let Some(judged) = layout.check(&numbers, line.as_bytes()) {
                matched += 1;
                refused += usize::from(judged.is_err());
                assert_eq!(format!("{judged:?}"), walked, "{line}");
            }
            assert_eq!(format!("{:?}", numbers.check(line.as_bytes())), walked, "{line}");
        }
        // Most lines matched, and the layout judged good and bad values both.
        assert!(matched > 5_000 && refused > 1_000 && matched - refused > 500, "{matched} matched, {refused} refused");
    }
}
