//! CSV as producers write it: the delimiter (`,` `;` tab `|`, detected from
//! the first line or given), the quote, a header row or none, and the texts
//! that mean null (`NA`, `NULL`, `\N`; an empty field always does).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Delimiters the first line is checked for, in order of preference on a tie.
const CANDIDATES: [u8; 4] = [b',', b';', b'\t', b'|'];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvOptions {
    /// `None`: the one of `,` `;` tab `|` most frequent outside quotes on the first line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delimiter: Option<char>,
    #[serde(default = "double_quote")]
    pub quote: char,
    /// Without a header, columns are the table's, in order (a new table's are
    /// named `column_1`, `column_2`, ...).
    #[serde(default = "yes")]
    pub header: bool,
    /// Field texts read as null, besides the empty field.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nulls: Vec<String>,
}

fn double_quote() -> char {
    '"'
}

fn yes() -> bool {
    true
}

impl Default for CsvOptions {
    fn default() -> CsvOptions {
        CsvOptions { delimiter: None, quote: '"', header: true, nulls: Vec::new() }
    }
}

impl CsvOptions {
    /// Refuse what arrow's CSV reader cannot take: delimiters and quotes are single ASCII bytes.
    pub fn check(&self) -> Result<()> {
        for (what, c) in [("delimiter", self.delimiter), ("quote", Some(self.quote))] {
            if let Some(c) = c
                && (!c.is_ascii() || c == '\n' || c == '\r')
            {
                return Err(Error::Usage(format!("CSV {what} {c:?}: use one ASCII character other than a line break")));
            }
        }
        if self.delimiter.is_some_and(|d| d == self.quote) {
            return Err(Error::Usage("CSV delimiter and quote must differ".into()));
        }
        Ok(())
    }

    pub fn quote_byte(&self) -> u8 {
        self.quote as u8
    }

    /// The delimiter: as given, else detected from `first_line`.
    pub fn delimiter_for(&self, first_line: &[u8]) -> u8 {
        if let Some(d) = self.delimiter {
            return d as u8;
        }
        let quote = self.quote_byte();
        let mut counts = [0usize; CANDIDATES.len()];
        let mut quoted = false;
        for &b in first_line.split(|&b| b == b'\n').next().unwrap_or_default() {
            if b == quote {
                quoted = !quoted;
            } else if !quoted && let Some(i) = CANDIDATES.iter().position(|&c| c == b) {
                counts[i] += 1;
            }
        }
        let best = (0..CANDIDATES.len()).max_by_key(|&i| (counts[i], std::cmp::Reverse(i))).expect("candidates");
        if counts[best] == 0 { b',' } else { CANDIDATES[best] }
    }

    /// What arrow's reader takes as null: the empty field and the markers.
    pub fn null_regex(&self) -> Result<Option<regex::Regex>> {
        if self.nulls.is_empty() {
            return Ok(None);
        }
        let alternatives: Vec<String> = std::iter::once(String::new()).chain(self.nulls.iter().map(|n| regex::escape(n))).collect();
        regex::Regex::new(&format!("^(?:{})$", alternatives.join("|")))
            .map(Some)
            .map_err(|e| Error::Usage(format!("CSV null markers {:?}: {e}", self.nulls)))
    }

    /// The columns (by position) inference must leave as text, from one pass
    /// over the file: where some value is digits with a leading zero (`007`,
    /// `-01`; not `0` or `0.5`), and, among the `temporal` columns, where
    /// dates and timestamps mix (neither type holds both as they were written).
    pub fn text_columns(&self, reader: impl std::io::Read, delimiter: u8, temporal: &std::collections::BTreeSet<usize>) -> std::collections::BTreeSet<usize> {
        let mut out = std::collections::BTreeSet::new();
        // Per temporal column: (a date seen, a timestamp seen).
        let mut seen: std::collections::BTreeMap<usize, (bool, bool)> = temporal.iter().map(|&i| (i, (false, false))).collect();
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(self.header)
            .flexible(true)
            .delimiter(delimiter)
            .quote(self.quote_byte())
            .from_reader(reader);
        let mut record = csv::ByteRecord::new();
        while let Ok(true) = reader.read_byte_record(&mut record) {
            for (i, field) in record.iter().enumerate() {
                let digits = field.strip_prefix(b"-").unwrap_or(field);
                if digits.len() > 1 && digits[0] == b'0' && digits.iter().all(u8::is_ascii_digit) {
                    out.insert(i);
                }
                if let Some((date, timestamp)) = seen.get_mut(&i) {
                    match std::str::from_utf8(field).ok().filter(|f| !f.is_empty()) {
                        Some(f) if crate::times::is_date(f) => *date = true,
                        Some(f) if crate::times::parse_timestamp(f).is_some() => *timestamp = true,
                        // A null marker: inference already took it as null.
                        _ => {}
                    }
                }
            }
        }
        out.extend(seen.into_iter().filter(|(_, (date, timestamp))| *date && *timestamp).map(|(i, _)| i));
        out
    }

    /// The fields of one line (the header), unquoted.
    pub fn split_line(&self, line: &str, delimiter: u8) -> Vec<String> {
        let mut reader = csv::ReaderBuilder::new().has_headers(false).delimiter(delimiter).quote(self.quote_byte()).from_reader(line.as_bytes());
        match reader.records().next() {
            Some(Ok(record)) => record.iter().map(|f| f.trim().to_string()).collect(),
            _ => Vec::new(),
        }
    }
}
