//! Whether a part of a CSV file ends where a record ends.
//!
//! A large CSV file is cut into parts at line breaks (`parts.rs`) without
//! reading what comes before each cut, so a cut may fall inside a quoted
//! field that holds a line break. Each part but the last passes the bytes
//! arrow's CSV reader takes through [`RecordEnds`], which runs the parser
//! arrow runs (`csv_core`, configured alike) beside it. Part k's bytes start
//! at a record's start (the file's start, or a cut part k-1 proved), so the
//! parser's state at part k's end is the state a reader of the whole file has
//! there. If that is not the start of a record, the next part was read from
//! inside a record and the file is read whole instead.

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

/// Fields are parsed into this scratch buffer, a call at a time; the output is not kept.
const SCRATCH_BYTES: usize = 64 << 10;
const SCRATCH_ENDS: usize = 1024;

/// What the parser saw of its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Not read to the end yet.
    Reading,
    /// The bytes ended where a record ended.
    RecordEnd,
    /// The bytes ended inside a record.
    InsideRecord,
    /// A record ran longer than the bound: the reading was stopped there.
    RecordTooLong,
}

/// `inner`, as read, checked by a CSV parser configured as arrow's.
pub struct RecordEnds<R> {
    inner: R,
    parser: csv_core::Reader,
    out: Vec<u8>,
    ends: Vec<usize>,
    /// Bytes of the record in progress, and the most it may hold.
    in_record: u64,
    max_record: u64,
    seen: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    seen: AtomicU8,
    records: AtomicU64,
}

/// What a [`RecordEnds`] found, readable once its reader has moved on.
#[derive(Clone)]
pub struct Verdict(Arc<Shared>);

impl Verdict {
    pub fn seen(&self) -> Seen {
        match self.0.seen.load(Ordering::Relaxed) {
            0 => Seen::Reading,
            1 => Seen::RecordEnd,
            2 => Seen::InsideRecord,
            _ => Seen::RecordTooLong,
        }
    }

    /// Records ended so far (blank lines are none, as for arrow's reader).
    pub fn records(&self) -> u64 {
        self.0.records.load(Ordering::Relaxed)
    }
}

impl<R: Read> RecordEnds<R> {
    /// The parser arrow's CSV reader builds for a `delimiter` and `quote`
    /// (`CsvLayout::batches` in `decode.rs`: no escape byte, no comments,
    /// doubled quotes, any of `\r`, `\n`, `\r\n` ends a record); reading stops
    /// with an error once a record exceeds `max_record` bytes.
    pub fn new(inner: R, delimiter: u8, quote: u8, max_record: u64) -> (RecordEnds<R>, Verdict) {
        let parser = csv_core::ReaderBuilder::new().delimiter(delimiter).quote(quote).escape(None).comment(None).build();
        let seen = Arc::new(Shared::default());
        let ends = RecordEnds { inner, parser, out: vec![0; SCRATCH_BYTES], ends: vec![0; SCRATCH_ENDS], in_record: 0, max_record, seen: Arc::clone(&seen) };
        (ends, Verdict(seen))
    }

    fn set(&self, seen: Seen) {
        self.seen.seen.store(seen as u8, Ordering::Relaxed);
    }

    fn feed(&mut self, mut input: &[u8]) {
        // Each call takes at least one byte (it has room for any field's
        // next byte and any record's next end), so this ends.
        while !input.is_empty() {
            let (result, taken, _, _) = self.parser.read_record(input, &mut self.out, &mut self.ends);
            assert!(taken > 0, "the CSV parser takes a byte of every call with room to put it");
            if result == csv_core::ReadRecordResult::Record {
                self.seen.records.fetch_add(1, Ordering::Relaxed);
                self.in_record = 0;
            } else {
                self.in_record += taken as u64;
            }
            input = &input[taken..];
        }
    }

    /// At the end of input the parser ends the record in progress, if any.
    fn finish(&mut self) {
        let (result, ..) = self.parser.read_record(&[], &mut self.out, &mut self.ends);
        self.set(if result == csv_core::ReadRecordResult::End { Seen::RecordEnd } else { Seen::InsideRecord });
    }
}

impl<R: Read> Read for RecordEnds<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() || self.seen.seen.load(Ordering::Relaxed) != Seen::Reading as u8 {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n == 0 {
            self.finish();
            return Ok(0);
        }
        self.feed(&buf[..n]);
        if self.in_record > self.max_record {
            self.set(Seen::RecordTooLong);
            return Err(std::io::Error::other(format!("a CSV record longer than {} bytes", self.max_record)));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ends_at_record(bytes: &[u8]) -> bool {
        let (mut r, verdict) = RecordEnds::new(bytes, b',', b'"', 1 << 20);
        let mut sink = Vec::new();
        // Small reads: the parser's state carries across them.
        let mut buf = [0u8; 3];
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            sink.extend_from_slice(&buf[..n]);
        }
        assert_eq!(sink, bytes, "the bytes pass unchanged");
        match verdict.seen() {
            Seen::RecordEnd => true,
            Seen::InsideRecord => false,
            other => panic!("read to the end: {other:?}"),
        }
    }

    #[test]
    fn a_cut_inside_a_quoted_line_break_is_seen() {
        assert!(ends_at_record(b"a,b\n1,2\n"));
        assert!(ends_at_record(b"a,b\r\n1,2\r\n"));
        assert!(ends_at_record(b"1,\"two\nlines\"\n3,4\n"));
        assert!(ends_at_record(b"1,\"a \"\"quoted\"\" word\"\n"));
        assert!(ends_at_record(b"5\"10,x\n"), "a quote inside an unquoted field is text");
        assert!(!ends_at_record(b"1,\"two\n"), "cut inside a quoted field");
        assert!(!ends_at_record(b"1,\"a \"\"\n"), "cut after a doubled quote, still inside");
        assert!(!ends_at_record(b"1,2"), "no line break at the end");
        // A quote opens a field only at its start, so the delimiter decides too.
        let (mut r, verdict) = RecordEnds::new(&b"a;b\n1;\"x\n"[..], b';', b'"', 1 << 20);
        std::io::copy(&mut r, &mut std::io::sink()).unwrap();
        assert_eq!(verdict.seen(), Seen::InsideRecord, "with ';', the quote opens a field");
        assert!(ends_at_record(b"a;b\n1;\"x\n"), "with ',', it is text");
    }

    #[test]
    fn records_are_counted_and_a_record_too_long_stops_the_reading() {
        let (mut r, verdict) = RecordEnds::new(&b"a,b\n\n1,\"x\ny\"\r\n2,3\n"[..], b',', b'"', 1 << 20);
        std::io::copy(&mut r, &mut std::io::sink()).unwrap();
        assert_eq!((verdict.seen(), verdict.records()), (Seen::RecordEnd, 3), "a blank line is no record, a quoted line break no end");
        // Checked after each read: a record longer than the bound across reads stops them.
        let long = format!("1,\"{}\"\n2,3\n", "x".repeat(100));
        let (mut r, verdict) = RecordEnds::new(long.as_bytes(), b',', b'"', 50);
        let mut buf = [0u8; 10];
        let failed = (0..long.len()).find_map(|_| r.read(&mut buf).err());
        assert!(failed.is_some(), "the reading stops");
        assert_eq!((verdict.seen(), r.read(&mut buf).ok()), (Seen::RecordTooLong, Some(0)), "and stays stopped");
    }
}
