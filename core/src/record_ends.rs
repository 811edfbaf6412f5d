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
use std::sync::atomic::{AtomicU8, Ordering};

/// Not at the end yet.
const READING: u8 = 0;
/// The bytes ended where a record ended.
const AT_RECORD_END: u8 = 1;
/// The bytes ended inside a record (or the parser could not tell).
const INSIDE_RECORD: u8 = 2;

/// Fields buffered per parser call; the parser's output is not kept.
const SCRATCH_BYTES: usize = 64 << 10;
const SCRATCH_ENDS: usize = 1024;

/// `inner`, as read, checked by a CSV parser configured as arrow's.
pub struct RecordEnds<R> {
    inner: R,
    parser: csv_core::Reader,
    out: Vec<u8>,
    ends: Vec<usize>,
    verdict: Arc<AtomicU8>,
}

/// What a [`RecordEnds`] found, once its reader reached the end.
#[derive(Clone)]
pub struct Verdict(Arc<AtomicU8>);

impl Verdict {
    /// `Some(true)`: the bytes ended where a record ended; `None`: not read to the end.
    pub fn at_record_end(&self) -> Option<bool> {
        match self.0.load(Ordering::SeqCst) {
            READING => None,
            v => Some(v == AT_RECORD_END),
        }
    }
}

impl<R: Read> RecordEnds<R> {
    /// The parser arrow's CSV reader builds for these options (no escape
    /// byte, no comments, doubled quotes, any of `\r`, `\n`, `\r\n` ends a record).
    pub fn new(inner: R, delimiter: u8, quote: u8) -> (RecordEnds<R>, Verdict) {
        let parser = csv_core::ReaderBuilder::new().delimiter(delimiter).quote(quote).escape(None).comment(None).build();
        let verdict = Arc::new(AtomicU8::new(READING));
        let ends = RecordEnds { inner, parser, out: vec![0; SCRATCH_BYTES], ends: vec![0; SCRATCH_ENDS], verdict: Arc::clone(&verdict) };
        (ends, Verdict(verdict))
    }

    fn feed(&mut self, mut input: &[u8]) {
        // Each call takes at least one byte, or the verdict is "cannot tell".
        while !input.is_empty() {
            let (_, taken, _, _) = self.parser.read_record(input, &mut self.out, &mut self.ends);
            if taken == 0 {
                self.verdict.store(INSIDE_RECORD, Ordering::SeqCst);
                return;
            }
            input = &input[taken..];
        }
    }

    /// At the end of input the parser ends the record in progress, if any.
    fn finish(&mut self) {
        if self.verdict.load(Ordering::SeqCst) != READING {
            return;
        }
        let (result, ..) = self.parser.read_record(&[], &mut self.out, &mut self.ends);
        let at_end = result == csv_core::ReadRecordResult::End;
        self.verdict.store(if at_end { AT_RECORD_END } else { INSIDE_RECORD }, Ordering::SeqCst);
    }
}

impl<R: Read> Read for RecordEnds<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 {
            self.finish();
        } else if self.verdict.load(Ordering::SeqCst) == READING {
            self.feed(&buf[..n]);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ends_at_record(bytes: &[u8]) -> bool {
        let (mut r, verdict) = RecordEnds::new(bytes, b',', b'"');
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
        verdict.at_record_end().expect("read to the end")
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
    }
}
