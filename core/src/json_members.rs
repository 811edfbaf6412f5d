//! The top-level members of one JSON object's text, found without parsing
//! their values: the spans the exactness check and the rescue column need
//! from a line arrow parses. Values are delimited, not parsed, so a value
//! arrow takes but a strict parser refuses (`01`) hides nothing after it.

use std::borrow::Cow;

/// One top-level member of an object, as written.
#[derive(Debug, Clone, Copy)]
pub struct Member<'a> {
    /// The key between its quotes, escapes as written.
    raw_key: &'a [u8],
    /// Does the key hold an escape (`\`)?
    escaped: bool,
    /// `"key": value`.
    pub text: &'a [u8],
    /// The value alone.
    pub value: &'a [u8],
}

impl<'a> Member<'a> {
    /// The key as a string (its escapes resolved); `None` if it is not valid text.
    pub fn key(&self) -> Option<Cow<'a, str>> {
        if !self.escaped {
            return std::str::from_utf8(self.raw_key).ok().map(Cow::Borrowed);
        }
        // With its quotes, which are the bytes either side of it in the line.
        let quoted_len = self.raw_key.len() + 2;
        let quoted = &self.text[..quoted_len];
        serde_json::from_slice::<String>(quoted).ok().map(Cow::Owned)
    }

    /// The key's bytes when it holds no escape (then they are the key).
    pub fn plain_key(&self) -> Option<&'a [u8]> {
        (!self.escaped).then_some(self.raw_key)
    }

    /// Is the key `name`? No allocation unless the key holds escapes.
    pub fn key_is(&self, name: &str) -> bool {
        if self.escaped { self.key().is_some_and(|k| k == name) } else { self.raw_key == name.as_bytes() }
    }
}

/// Call `each` with every top-level member of `line`, in order. `false` if
/// `line` is not exactly one JSON object (whitespace around it aside): a
/// missing comma or a second object on the line, which arrow's decoder takes,
/// stop the walk. Values are delimited, not validated.
pub fn walk<'a>(line: &'a [u8], mut each: impl FnMut(Member<'a>)) -> bool {
    let mut i = skip_ws(line, 0);
    if line.get(i) != Some(&b'{') {
        return false;
    }
    i = skip_ws(line, i + 1);
    if line.get(i) == Some(&b'}') {
        return skip_ws(line, i + 1) == line.len();
    }
    // Each round consumes at least a key's two quotes: at most len/2 rounds.
    for _ in 0..=line.len() / 2 {
        let start = i;
        let Some((key_end, escaped)) = string_end(line, i) else { return false };
        i = skip_ws(line, key_end);
        if line.get(i) != Some(&b':') {
            return false;
        }
        let value_start = skip_ws(line, i + 1);
        let Some(value_end) = value_end(line, value_start) else { return false };
        each(Member { raw_key: &line[start + 1..key_end - 1], escaped, text: &line[start..value_end], value: &line[value_start..value_end] });
        i = skip_ws(line, value_end);
        match line.get(i) {
            Some(b',') => i = skip_ws(line, i + 1),
            Some(b'}') => return skip_ws(line, i + 1) == line.len(),
            _ => return false,
        }
    }
    unreachable!("every member consumes at least two bytes")
}

fn skip_ws(s: &[u8], mut i: usize) -> usize {
    while s.get(i).is_some_and(|b| b.is_ascii_whitespace()) {
        i += 1;
    }
    i
}

/// The end (exclusive) of the string starting at `i` (a `"`), and whether
/// it holds an escape.
fn string_end(s: &[u8], i: usize) -> Option<(usize, bool)> {
    if s.get(i) != Some(&b'"') {
        return None;
    }
    let (mut at, mut escaped) = (i + 1, false);
    loop {
        let rest = s.get(at..)?;
        let found = quote_or_backslash(rest)?;
        at += found;
        match s[at] {
            b'"' => return Some((at + 1, escaped)),
            b'\\' => (escaped, at) = (true, at + 2),
            other => unreachable!("found {other:?} looking for a quote or a backslash"),
        }
    }
}

/// The first `"` or `\\` in `s`.
fn quote_or_backslash(s: &[u8]) -> Option<usize> {
    first_of(s, false)
}

/// The first `"`, `\\` or control character in `s`: where a string's text
/// ends, or stops being plain.
pub(crate) fn quote_backslash_or_control(s: &[u8]) -> Option<usize> {
    first_of(s, true)
}

/// The first `"` or `\\` (or control character, if `controls`) in `s`,
/// eight bytes at a time: most strings are too short for a call to `memchr`
/// to pay off. A byte of the word equal to neither has no high bit left in
/// its mask; the lowest one set is the first match (only bytes after a
/// match can show false ones). A byte below `0x20` has no high bit and
/// borrows in `word - 0x20...`, so it too leaves one in the mask (a byte
/// from `0x80` up has none in `!word`).
#[inline]
fn first_of(s: &[u8], controls: bool) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let matches = |word: u64, byte: u8| {
        let x = word ^ (ONES * byte as u64);
        x.wrapping_sub(ONES) & !x & HIGHS
    };
    let mut at = 0;
    while let Some(chunk) = s.get(at..at + 8) {
        let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let mut hits = matches(word, b'"') | matches(word, b'\\');
        if controls {
            hits |= word.wrapping_sub(ONES * 0x20) & !word & HIGHS;
        }
        if hits != 0 {
            return Some(at + hits.trailing_zeros() as usize / 8);
        }
        at += 8;
    }
    s[at..].iter().position(|&b| b == b'"' || b == b'\\' || (controls && b < 0x20)).map(|n| at + n)
}

/// The end (exclusive) of the value starting at `i`, as [`walk`] delimits
/// it; `None` if none starts there (whitespace, a separator, the line's end).
pub(crate) fn value_end(s: &[u8], mut i: usize) -> Option<usize> {
    match s.get(i)? {
        b'"' => string_end(s, i).map(|(end, _)| end),
        b'{' | b'[' => {
            let mut depth = 0usize;
            loop {
                match s.get(i)? {
                    b'"' => {
                        i = string_end(s, i)?.0;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        _ => {
            let start = i;
            while s.get(i).is_some_and(|b| !matches!(b, b',' | b'}' | b']') && !b.is_ascii_whitespace()) {
                i += 1;
            }
            (i > start).then_some(i)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn members(line: &[u8]) -> Option<Vec<(String, String, String)>> {
        let mut out = Vec::new();
        let text = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
        let whole = walk(line, |m| out.push((m.key().unwrap().into_owned(), text(m.text), text(m.value))));
        whole.then_some(out)
    }

    #[test]
    fn members_keep_each_value_as_written() {
        let line = br#" { "a" : 1.50 , "b\"q": {"x": [1, "}"]}, "c": "s,}\\", "d": 123456789012345678901234 }"#;
        let m = members(line).unwrap();
        let keys: Vec<&str> = m.iter().map(|(k, _, _)| k.as_str()).collect();
        assert_eq!(keys, ["a", "b\"q", "c", "d"]);
        let texts: Vec<&str> = m.iter().map(|(_, t, _)| t.as_str()).collect();
        assert_eq!(texts, [r#""a" : 1.50"#, r#""b\"q": {"x": [1, "}"]}"#, r#""c": "s,}\\""#, r#""d": 123456789012345678901234"#]);
        let values: Vec<&str> = m.iter().map(|(_, _, v)| v.as_str()).collect();
        assert_eq!(values, ["1.50", r#"{"x": [1, "}"]}"#, r#""s,}\\""#, "123456789012345678901234"]);
        assert_eq!(members(b"{}").unwrap().len(), 0);
        assert_eq!(members(b"{\"a\": 1} \r\n").unwrap().len(), 1);
        let not_one = [&b"[1]"[..], b"", b"{", b"{\"a\"}", b"{\"a\": }", b"{\"a\": 1", b"{\"a\": \"x}", b"{\"a\": [1}"];
        let more_than_one = [&b"{\"a\": 1}{\"b\": 2}"[..], b"{\"a\": 1 \"b\": 2}", b"{\"a\": 1,,\"b\": 2}", b"{,\"a\": 1}", b"{} x"];
        for not_one_object in not_one.into_iter().chain(more_than_one) {
            assert!(members(not_one_object).is_none(), "{:?}", String::from_utf8_lossy(not_one_object));
        }
    }

    /// A random JSON value of at most `depth` levels, from a seeded xorshift.
    fn value(rng: &mut u64, depth: u32) -> Value {
        fn step(rng: &mut u64) -> u64 {
            *rng ^= *rng << 13;
            *rng ^= *rng >> 7;
            *rng ^= *rng << 17;
            *rng
        }
        let mut next = || step(rng);
        let pick = next() % if depth == 0 { 5 } else { 7 };
        // Short ones, and long ones whose quote or escape comes after the first 32 bytes.
        let long = |c: &str| format!("{}{c}{}", "l".repeat(40), "m".repeat(30));
        let text = |n: u64| match n % 10 {
            8 => long("\""),
            9 => long("\\"),
            n => ["", "x", "a\"b", "}{][,:", "back\\slash", "tab\t", "é€", "\u{1}"][n as usize].to_string(),
        };
        match pick {
            0 => Value::Null,
            1 => Value::Bool(next() % 2 == 0),
            2 => serde_json::json!(next() as i64 >> (next() % 64)),
            3 => serde_json::json!((next() % 1_000_000) as f64 / 64.0),
            4 => Value::String(text(next())),
            5 => Value::Array((0..step(rng) % 4).map(|_| value(rng, depth - 1)).collect()),
            _ => Value::Object((0..step(rng) % 4).map(|_| (text(step(rng)), value(rng, depth - 1))).collect()),
        }
    }

    #[test]
    fn walking_agrees_with_a_parser_on_random_objects() {
        let mut rng = 0x5eed_u64;
        for round in 0..2_000 {
            let Value::Object(object) = value(&mut rng, 3) else { continue };
            let pretty = round % 2 == 0;
            let line = if pretty { serde_json::to_string_pretty(&object) } else { serde_json::to_string(&object) }.unwrap();
            let walked = members(line.as_bytes()).unwrap_or_else(|| panic!("not walked: {line}"));
            assert_eq!(walked.len(), object.len(), "{line}");
            for ((key, text, value), (want_key, want_value)) in walked.iter().zip(&object) {
                assert_eq!(key, want_key, "{line}");
                assert_eq!(&serde_json::from_str::<Value>(value).unwrap(), want_value, "{line}");
                assert!(text.starts_with('"') && text.ends_with(value.as_str()), "{line}");
            }
        }
    }

    /// The word-at-a-time search finds the first byte a byte-by-byte one finds,
    /// wherever it falls in a word and whatever bytes (UTF-8 ones too) surround it.
    #[test]
    fn word_searches_find_the_first_byte_sought() {
        let mut rng = 0x0b1e_u64;
        let alphabet = [b'"', b'\\', 0x00, 0x1f, b' ', b'a', 0x7f, 0x80, 0xc3, 0xff, b'0', b'!'];
        for round in 0..20_000 {
            let len = round % 40;
            let s: Vec<u8> = (0..len)
                .map(|_| {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    // Mostly plain bytes, so the first one sought falls anywhere.
                    if rng % 8 == 0 { alphabet[(rng >> 8) as usize % alphabet.len()] } else { b'a' + (rng >> 16) as u8 % 26 }
                })
                .collect();
            let naive = |controls: bool| s.iter().position(|&b| b == b'"' || b == b'\\' || (controls && b < 0x20));
            assert_eq!(quote_or_backslash(&s), naive(false), "{s:?}");
            assert_eq!(quote_backslash_or_control(&s), naive(true), "{s:?}");
        }
    }
}
