//! One large JSON Lines or CSV file (local, or an S3 object read by ranged
//! GETs) cut at line boundaries into parts that Lance writers append side
//! by side, committed as one transaction. A CSV cut may fall inside a
//! quoted field that holds a line break: the part before it, or the part
//! after it (a record too long), finds out (`record_ends.rs`), and the file
//! is then read whole. Several sources of one call are grouped the same
//! way (`groups`).
//!
//! Why: a Lance writer buffers each column (8 MiB by default) and encodes
//! what it holds at the end of its file one column after another, after the
//! last batch; with one writer the other cores wait for it. With a writer
//! per part, the parts' last pages are encoded side by side (on Lance's CPU
//! threads: `set_lance_defaults` gives it every core).
//! Rows keep their order: part k's fragments come after part k-1's.

use std::io::Read;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use arrow::datatypes::SchemaRef;

use crate::error::{Error, Result};
use crate::failpoints;
use crate::partitions;
use crate::source::{Location, Source};

/// Bytes per part (the last may hold fewer): below it, the end of one
/// writer costs less than a second writer's start.
const PART_BYTES: u64 = 16 << 20;
/// What one Lance writer buffers per column before it encodes a page (its
/// default). The parts' writers share it, so memory does not grow with them.
const WRITER_BYTES_PER_COLUMN: u64 = 8 << 20;
/// Parts of one file at most, whatever the cores: each writer's pages are
/// then at least 2 MiB per column.
const MAX_PARTS: u64 = 4;
/// Bytes read at a time looking for the end of a line.
const SCAN_BYTES: usize = 64 << 10;

/// The byte ranges `source`, an uncompressed JSON Lines or CSV file, is written in,
/// in file order; `None` unless it is at least two parts' bytes and its path
/// gives the table no values. A local file is read only as the version its
/// identity names, an S3 object by ranged GETs of the version resolved (one
/// per cut, mostly). Call from a blocking thread.
pub fn plan(source: &Source, target: &SchemaRef, handle: &tokio::runtime::Handle) -> Result<Option<Vec<Range<u64>>>> {
    let n = parts_of(source.size);
    let takes_path_values = !matches!(partitions::split(target, &source.uri), Ok((_, None)));
    if n < 2 || takes_path_values {
        return Ok(None);
    }
    // An S3 object known by size and time alone cannot be read by ranges of one version.
    if let Location::S3 { e_tag: None, version: None, .. } = &source.location {
        return Ok(None);
    }
    let mut starts = vec![0];
    for k in 1..n {
        // Each cut looks for its line start no further than the next cut.
        let (at, until) = (source.size * k / n, source.size * (k + 1) / n);
        if let Some(start) = line_start_from(source, at, until, handle)?
            && start > *starts.last().expect("the first part starts at 0")
            && start < source.size
        {
            starts.push(start);
        }
    }
    if starts.len() < 2 {
        return Ok(None);
    }
    let ends = starts.iter().skip(1).copied().chain([source.size]);
    Ok(Some(starts.iter().zip(ends).map(|(&start, end)| start..end).collect()))
}

/// How many parts a file of `size` bytes is cut into, at most: one per core.
pub fn parts_of(size: u64) -> u64 {
    let (part_bytes, cores) = match failpoints::part_bytes() {
        Some(bytes) => (bytes.max(1), MAX_PARTS),
        None => (PART_BYTES, std::thread::available_parallelism().map_or(1, |n| n.get() as u64)),
    };
    cores.min(MAX_PARTS).min(size / part_bytes)
}

/// Several sources of `sizes` bytes (in call order), appended by writers
/// side by side as one commit: contiguous groups of them, balanced by
/// bytes, one per core (at most 4), each source whole in one group.
/// `None` unless there are two groups or more (together at least two
/// parts' bytes).
pub fn groups(sizes: &[u64]) -> Option<Vec<Range<usize>>> {
    let total: u64 = sizes.iter().sum();
    let n = parts_of(total).min(sizes.len() as u64);
    if n < 2 {
        return None;
    }
    // A source goes to the group its middle byte falls in: groups follow the call's order.
    let mut groups: Vec<Range<usize>> = Vec::with_capacity(n as usize);
    let (mut before, mut last) = (0u128, None);
    for (i, &size) in sizes.iter().enumerate() {
        let middle = before + u128::from(size) / 2;
        let g = (middle * u128::from(n) / u128::from(total)).min(u128::from(n - 1));
        match groups.last_mut() {
            Some(group) if last == Some(g) => group.end = i + 1,
            _ => groups.push(i..i + 1),
        }
        (before, last) = (before + u128::from(size), Some(g));
    }
    assert_eq!(groups.iter().map(|g| g.len()).sum::<usize>(), sizes.len(), "every source in one group");
    (groups.len() >= 2).then_some(groups)
}

/// What each of `parts` writers into `columns` columns may buffer: together,
/// what one writer would (a 1 GiB file stays under 256 MiB).
pub fn writer_options(parts: usize, columns: usize) -> lance_file::writer::FileWriterOptions {
    let per_column = WRITER_BYTES_PER_COLUMN / parts.max(1) as u64;
    lance_file::writer::FileWriterOptions { data_cache_bytes: Some(per_column * columns.max(1) as u64), ..Default::default() }
}

/// The first line start in `at..until` (0 < `at`): just past the first
/// newline from byte `at - 1` on; `None` if no line starts there. Two reads
/// at most (ranged GETs on S3): the first `SCAN_BYTES`, where a line
/// mostly ends, then the rest of the span, stopped at the newline.
fn line_start_from(source: &Source, at: u64, until: u64, handle: &tokio::runtime::Handle) -> Result<Option<u64>> {
    assert!(0 < at && at <= until && until <= source.size, "a cut within the source");
    let first = (at - 1 + SCAN_BYTES as u64).min(until);
    let mut buf = vec![0u8; SCAN_BYTES];
    for span in [at - 1..first, first..until] {
        let mut pos = span.start;
        let mut read = source.open_range(span.clone(), handle)?;
        // Each round reads something or ends (short reads and interruptions
        // included, twice over).
        for _ in 0..2 * (span.end - span.start).div_ceil(SCAN_BYTES as u64) + 2 {
            let n = match read.read(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                n => n.map_err(|e| Error::io(&source.uri, e))?,
            };
            if n == 0 {
                break;
            }
            if let Some(newline) = memchr::memchr(b'\n', &buf[..n]) {
                return Ok(Some(pos + newline as u64 + 1));
            }
            pos += n as u64;
        }
    }
    Ok(None)
}

/// Lines before byte `at` of `source`, a line start.
pub fn lines_before(source: &Source, at: u64, handle: &tokio::runtime::Handle) -> Result<u64> {
    let mut read = source.open_range(0..at, handle)?;
    let (mut buf, mut lines) = (vec![0u8; 1 << 20], 0u64);
    loop {
        let n = match read.read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            n => n.map_err(|e| Error::io(&source.uri, e))?,
        };
        if n == 0 {
            return Ok(lines);
        }
        lines += memchr::memchr_iter(b'\n', &buf[..n]).count() as u64;
    }
}

/// One part of a file being read, and what all its parts share.
pub struct Part {
    pub index: usize,
    pub range: Range<u64>,
    pub whole: Arc<Whole>,
}

/// What readers side by side share: the parts of one file (which failed
/// first, how many are left, their rows), or groups of sources (which
/// failed first).
pub struct Whole {
    parts: usize,
    /// Parts not finished yet.
    left: AtomicUsize,
    /// Rows of the parts that finished.
    rows: AtomicU64,
    /// The first part (in file order) that failed, or `usize::MAX`.
    first_failed: AtomicUsize,
}

impl Whole {
    pub fn new(parts: usize) -> Whole {
        Whole { parts, left: AtomicUsize::new(parts), rows: AtomicU64::new(0), first_failed: AtomicUsize::new(usize::MAX) }
    }

    pub fn parts(&self) -> usize {
        self.parts
    }

    /// Part `index` failed: the parts after it stop (their error is never the first).
    pub fn failed(&self, index: usize) {
        self.first_failed.fetch_min(index, Ordering::SeqCst);
    }

    pub fn earlier_failed(&self, index: usize) -> bool {
        self.first_failed.load(Ordering::SeqCst) < index
    }

    /// A part finished with `rows`: the file's rows if it was the last one to.
    pub fn finished(&self, rows: u64) -> Option<u64> {
        self.rows.fetch_add(rows, Ordering::SeqCst);
        let left = self.left.fetch_sub(1, Ordering::SeqCst);
        assert!(left > 0, "each part finishes once");
        (left == 1).then(|| self.rows.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_grouped_in_order_and_balanced_by_bytes() {
        const MIB: u64 = 1 << 20;
        let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut grouped = 0;
        for _ in 0..2_000 {
            let n = 1 + next() % 12;
            let sizes: Vec<u64> = (0..n).map(|_| [0, 1, 5 * MIB, 16 * MIB, 40 * MIB][(next() % 5) as usize] + next() % MIB).collect();
            let Some(groups) = groups(&sizes) else { continue };
            grouped += 1;
            assert!(groups.len() >= 2 && groups.len() as u64 <= parts_of(sizes.iter().sum()), "{sizes:?}: {groups:?}");
            assert_eq!(groups.first().map(|g| g.start), Some(0), "{groups:?}");
            assert_eq!(groups.last().map(|g| g.end), Some(sizes.len()), "{groups:?}");
            assert!(groups.windows(2).all(|w| w[0].end == w[1].start && !w[0].is_empty()), "contiguous, none empty: {groups:?}");
            // No group holds more than its share plus one source.
            let (total, largest) = (sizes.iter().sum::<u64>(), sizes.iter().max().copied().unwrap_or(0));
            for g in &groups {
                assert!(sizes[g.clone()].iter().sum::<u64>() <= total / groups.len() as u64 + 2 * largest, "{sizes:?}: {groups:?}");
            }
        }
        // On one core nothing is grouped; elsewhere most draws are.
        assert!(parts_of(u64::MAX) < 2 || grouped > 500, "{grouped}");
    }
}
