//! Bounded-memory reading: lines of at most [`MAX_LINE`] bytes and JSON values of
//! at most [`MAX_ELEMENT`] bytes, from any `Read`, with the line number tracked.

use std::io::{self, Read};

/// The longest line kept; the rest of a longer line is skipped (and reported).
pub const MAX_LINE: usize = 64 * 1024;
/// The largest JSON object (or CSV record spanning lines) kept.
pub const MAX_ELEMENT: usize = 1024 * 1024;

const BUF: usize = 2 * MAX_LINE;
/// How far ahead the JSON detection looks for the `{` after a `[`.
const LOOKAHEAD: usize = 4096;

pub(crate) struct Input<R> {
    inner: R,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    eof: bool,
    /// The 1-based number of the line the cursor is on.
    line: usize,
}

/// What a line read returned.
pub(crate) enum LineRead {
    /// No more input.
    Eof,
    /// A line (its number), possibly cut at [`MAX_LINE`].
    Line { number: usize, too_long: bool },
}

/// What opens at the cursor, if the current line starts a JSON value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JsonStart {
    /// `[` followed (after white space) by `{` or `]`.
    Array,
    /// `{`.
    Object,
}

/// How a JSON value scan ended.
pub(crate) enum Scan {
    /// The value is complete; `overflow` if it was longer than the limit (not kept).
    Done { overflow: bool },
    /// The input ended inside the value.
    Eof,
}

impl<R: Read> Input<R> {
    pub(crate) fn new(inner: R) -> Self {
        Input {
            inner,
            buf: vec![0; BUF].into_boxed_slice(),
            start: 0,
            end: 0,
            eof: false,
            line: 1,
        }
    }

    pub(crate) fn line(&self) -> usize {
        self.line
    }

    /// Reads more input after the buffered bytes; `false` at end of input.
    fn fill(&mut self) -> io::Result<bool> {
        if self.eof {
            return Ok(false);
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            return Ok(true);
        }
        loop {
            match self.inner.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(false);
                }
                Ok(n) => {
                    self.end += n;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The byte `at` positions past the cursor, reading as needed.
    fn peek_at(&mut self, at: usize) -> io::Result<Option<u8>> {
        while self.start + at >= self.end {
            if !self.fill()? || self.end == self.buf.len() && self.start + at >= self.end {
                return Ok(None);
            }
        }
        Ok(Some(self.buf[self.start + at]))
    }

    /// Does a JSON value start on the current line (after spaces, tabs and a BOM)?
    /// Nothing is consumed except when the answer is `Some`: then the cursor is
    /// left on the `[` or `{`.
    pub(crate) fn json_start(&mut self) -> io::Result<Option<JsonStart>> {
        let mut i = 0;
        loop {
            match self.peek_at(i)? {
                Some(b' ' | b'\t' | b'\r') => i += 1,
                Some(0xEF)
                    if self.peek_at(i + 1)? == Some(0xBB) && self.peek_at(i + 2)? == Some(0xBF) =>
                {
                    i += 3
                }
                Some(b'{') => {
                    self.consume_blank(i);
                    return Ok(Some(JsonStart::Object));
                }
                Some(b'[') => break,
                _ => return Ok(None),
            }
            if i > LOOKAHEAD {
                return Ok(None);
            }
        }
        let open = i;
        i += 1;
        loop {
            match self.peek_at(i)? {
                Some(b' ' | b'\t' | b'\r' | b'\n') => i += 1,
                Some(b'{' | b']') => {
                    self.consume_blank(open);
                    return Ok(Some(JsonStart::Array));
                }
                _ => return Ok(None),
            }
            if i > LOOKAHEAD {
                return Ok(None);
            }
        }
    }

    /// Consumes `n` bytes known to be blank (no line feed among them).
    fn consume_blank(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
    }

    /// Consumes one byte (the caller peeked it), counting line feeds.
    pub(crate) fn bump(&mut self) -> io::Result<Option<u8>> {
        let b = self.peek_at(0)?;
        if let Some(b) = b {
            self.start += 1;
            if b == b'\n' {
                self.line += 1;
            }
        }
        Ok(b)
    }

    /// Skips JSON white space; returns the next byte without consuming it.
    pub(crate) fn skip_json_ws(&mut self) -> io::Result<Option<u8>> {
        loop {
            match self.peek_at(0)? {
                Some(b' ' | b'\t' | b'\r' | b'\n') => {
                    self.bump()?;
                }
                other => return Ok(other),
            }
        }
    }

    /// Reads one JSON value starting at the cursor into `out` (kept up to `max`
    /// bytes). Objects and arrays end at their matching bracket, scalars at
    /// `,`, `]`, `}` or white space outside strings.
    pub(crate) fn scan_json_value(&mut self, out: &mut Vec<u8>, max: usize) -> io::Result<Scan> {
        out.clear();
        let mut overflow = false;
        let mut depth = 0usize;
        let mut in_string = false;
        let mut escape = false;
        let mut first = true;
        loop {
            let Some(b) = self.peek_at(0)? else {
                return Ok(Scan::Eof);
            };
            if !in_string
                && depth == 0
                && !first
                && matches!(b, b',' | b']' | b'}' | b' ' | b'\t' | b'\r' | b'\n')
            {
                return Ok(Scan::Done { overflow });
            }
            self.bump()?;
            first = false;
            if out.len() < max {
                out.push(b);
            } else {
                overflow = true;
            }
            if in_string {
                if escape {
                    escape = false;
                } else if b == b'\\' {
                    escape = true;
                } else if b == b'"' {
                    in_string = false;
                }
                continue;
            }
            match b {
                b'"' => in_string = true,
                b'{' | b'[' => depth += 1,
                b'}' | b']' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        return Ok(Scan::Done { overflow });
                    }
                }
                _ => {}
            }
        }
    }

    /// Reads the next line into `out` (without its `\n`, a trailing `\r` or a
    /// leading BOM; invalid UTF-8 replaced). Lines longer than [`MAX_LINE`] are
    /// cut there and the rest of the line is skipped.
    pub(crate) fn read_line(&mut self, out: &mut String) -> io::Result<LineRead> {
        out.clear();
        let number = self.line;
        let mut scanned = 0;
        loop {
            let avail = &self.buf[self.start..self.end];
            if let Some(i) = memchr::memchr(b'\n', &avail[scanned..]) {
                let pos = scanned + i;
                decode(&avail[..pos], out);
                self.start += pos + 1;
                self.line += 1;
                return Ok(LineRead::Line {
                    number,
                    too_long: false,
                });
            }
            scanned = avail.len();
            if scanned >= MAX_LINE {
                decode(&avail[..MAX_LINE], out);
                self.start = self.end;
                // Skip to the end of the line.
                loop {
                    if !self.fill()? {
                        break;
                    }
                    let avail = &self.buf[self.start..self.end];
                    if let Some(i) = memchr::memchr(b'\n', avail) {
                        self.start += i + 1;
                        self.line += 1;
                        break;
                    }
                    self.start = self.end;
                }
                return Ok(LineRead::Line {
                    number,
                    too_long: true,
                });
            }
            if !self.fill()? {
                let avail = &self.buf[self.start..self.end];
                if avail.is_empty() {
                    return Ok(LineRead::Eof);
                }
                decode(avail, out);
                self.start = self.end;
                return Ok(LineRead::Line {
                    number,
                    too_long: false,
                });
            }
        }
    }
}

fn decode(bytes: &[u8], out: &mut String) {
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    match std::str::from_utf8(bytes) {
        Ok(s) => out.push_str(s),
        Err(_) => out.push_str(&String::from_utf8_lossy(bytes)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8]) -> Vec<(usize, String, bool)> {
        let mut inp = Input::new(input);
        let mut out = Vec::new();
        let mut s = String::new();
        while let LineRead::Line { number, too_long } = inp.read_line(&mut s).unwrap() {
            out.push((number, s.clone(), too_long));
        }
        out
    }

    #[test]
    fn crlf_bom_and_last_line_without_newline() {
        let got = lines(b"\xEF\xBB\xBFa\r\nb\n\nc");
        let want = [
            (1, "a", false),
            (2, "b", false),
            (3, "", false),
            (4, "c", false),
        ];
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert_eq!((g.0, g.1.as_str(), g.2), w);
        }
    }

    #[test]
    fn overlong_lines_are_cut_and_skipped() {
        let mut input = vec![b'x'; MAX_LINE * 3 + 7];
        input.extend_from_slice(b"\nnext\n");
        let got = lines(&input);
        assert_eq!(got.len(), 2);
        assert!(got[0].2);
        assert_eq!(got[0].1.len(), MAX_LINE);
        assert_eq!((got[1].0, got[1].1.as_str()), (2, "next"));
    }

    #[test]
    fn json_detection_does_not_consume_other_lines() {
        let mut inp = Input::new(&b"[Seller]\n"[..]);
        assert_eq!(inp.json_start().unwrap(), None);
        let mut s = String::new();
        inp.read_line(&mut s).unwrap();
        assert_eq!(s, "[Seller]");
        let mut inp = Input::new(&b"  [\n  {\"a\":1}]"[..]);
        assert_eq!(inp.json_start().unwrap(), Some(JsonStart::Array));
        assert_eq!(inp.bump().unwrap(), Some(b'['));
    }
}
