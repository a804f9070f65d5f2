//! The streaming parser: a state machine over lines (and JSON values) that
//! detects the format of every block.

use std::collections::VecDeque;
use std::io::Read;

use super::fields::{Fields, Key, mask_unknown, truncate};
use super::input::{Input, JsonStart, LineRead, MAX_ELEMENT, MAX_LINE, Scan};
use super::lines::parse_ip_line;
use super::tabular::{CsvHeader, json_object};
use super::{ErrorReason, Format, ImportError, ParsedNode};

type Item = Result<ParsedNode, ImportError>;

/// The streaming parser returned by [`parse`](super::parse): an iterator of
/// nodes and errors in input order. Memory stays bounded whatever the input size
/// (one line of at most 64 KiB, one JSON object or CSV record of at most 1 MiB).
pub struct Parser<R> {
    input: Input<R>,
    line: String,
    mode: Mode,
    block: Block,
    pending: VecDeque<Item>,
    element: Vec<u8>,
    done: bool,
}

enum Mode {
    Lines,
    Csv {
        header: Box<CsvHeader>,
        record: String,
        record_line: usize,
        quotes: usize,
    },
    JsonArray {
        open_line: usize,
    },
}

/// A key-value block being collected (formats 1, 5, 6).
#[derive(Default)]
struct Block {
    fields: Fields,
    first_line: usize,
    text: String,
    active: bool,
    credentials_style: bool,
}

impl<R: Read> Parser<R> {
    pub(crate) fn new(reader: R) -> Self {
        Parser {
            input: Input::new(reader),
            line: String::new(),
            mode: Mode::Lines,
            block: Block::default(),
            pending: VecDeque::new(),
            element: Vec::new(),
            done: false,
        }
    }

    fn error(&mut self, line: usize, reason: ErrorReason, text: String) {
        self.pending
            .push_back(Err(ImportError { line, text, reason }));
    }

    fn flush_block(&mut self) {
        let block = std::mem::take(&mut self.block);
        if !block.active || !block.fields.has_identity() {
            return;
        }
        let format = if block.credentials_style {
            Format::CredentialsBlock
        } else {
            Format::KeyValue
        };
        let item = match block.fields.build() {
            Ok(node) => Ok(ParsedNode {
                line: block.first_line,
                format,
                node,
            }),
            Err(reason) => Err(ImportError {
                line: block.first_line,
                text: block.text,
                reason,
            }),
        };
        self.pending.push_back(item);
    }

    /// One unit of work: pushes zero or more items.
    fn step(&mut self) -> std::io::Result<()> {
        match self.mode {
            Mode::Lines => self.step_lines(),
            Mode::Csv { .. } => self.step_csv(),
            Mode::JsonArray { open_line } => self.step_json_array(open_line),
        }
    }

    fn step_lines(&mut self) -> std::io::Result<()> {
        match self.input.json_start()? {
            Some(JsonStart::Array) => {
                self.flush_block();
                let open_line = self.input.line();
                self.input.bump()?; // the `[`
                self.mode = Mode::JsonArray { open_line };
                return Ok(());
            }
            Some(JsonStart::Object) => {
                self.flush_block();
                self.json_element(None)?;
                return Ok(());
            }
            None => {}
        }
        let mut line = std::mem::take(&mut self.line);
        let read = self.input.read_line(&mut line);
        let result = match read {
            Ok(LineRead::Eof) => {
                self.flush_block();
                self.done = true;
                Ok(())
            }
            Ok(LineRead::Line {
                number,
                too_long: true,
            }) => {
                self.flush_block();
                let text = mask_unknown(&truncate(&line, 40));
                self.error(number, ErrorReason::LineTooLong { max: MAX_LINE }, text);
                Ok(())
            }
            Ok(LineRead::Line { number, .. }) => {
                self.handle_line(number, &line);
                Ok(())
            }
            Err(e) => Err(e),
        };
        self.line = line;
        result
    }

    fn handle_line(&mut self, number: usize, raw: &str) {
        let t = raw.trim().trim_start_matches('\u{feff}').trim_start();
        if t.is_empty() {
            self.flush_block();
            return;
        }
        if t.starts_with('#') || t.starts_with("//") {
            return;
        }
        if is_separator(t) {
            self.flush_block();
            return;
        }
        if let Some(header) = CsvHeader::detect(t) {
            self.flush_block();
            self.mode = Mode::Csv {
                header: Box::new(header),
                record: String::new(),
                record_line: 0,
                quotes: 0,
            };
            return;
        }
        if let Some(result) = parse_ip_line(t) {
            self.flush_block();
            self.pending.push_back(match result {
                Ok((format, node)) => Ok(ParsedNode {
                    line: number,
                    format,
                    node,
                }),
                Err((reason, text)) => Err(ImportError {
                    line: number,
                    text,
                    reason,
                }),
            });
            return;
        }
        if t.starts_with('>') {
            self.flush_block();
            return;
        }
        if let Some((k, v)) = t.split_once(':') {
            if let Some(key) = Key::of(k) {
                self.key_value(number, key, k, v.trim());
                return;
            }
            if is_word_like(k) {
                // An unknown key (`Scamalytics Risk: medium`): ignored, and said so.
                self.error(
                    number,
                    ErrorReason::NotANode,
                    mask_unknown(&truncate(t, 60)),
                );
                return;
            }
        }
        let first = t.chars().next().unwrap_or(' ');
        let no_digit_no_colon = !t.contains(|c: char| c.is_ascii_digit() || c == ':');
        let has_content = t.contains(char::is_alphanumeric);
        if has_content && (!first.is_alphanumeric() || no_digit_no_colon) {
            // An emoji/symbol header (`🚨 PPTP Connection`) or a seller's name:
            // reported as ignored, so no line vanishes without a word.
            self.flush_block();
            self.error(
                number,
                ErrorReason::NotANode,
                mask_unknown(&truncate(t, 60)),
            );
            return;
        }
        if !has_content && !t.contains([':', ';', '|', ',']) {
            // Pure decoration (`★★★`, `🚨🚨`).
            self.flush_block();
            return;
        }
        self.flush_block();
        self.error(number, ErrorReason::Unrecognised, mask_unknown(t));
    }

    fn key_value(&mut self, number: usize, key: Key, name: &str, value: &str) {
        let value = if key == Key::Ip {
            // Text after the IP on its line is ignored.
            value.split_whitespace().next().unwrap_or_default()
        } else {
            value
        };
        if self.block.fields.has(key) {
            self.flush_block();
        }
        if !self.block.active {
            self.block.active = true;
            self.block.first_line = number;
        }
        if matches!(key, Key::Credentials | Key::Location) {
            self.block.credentials_style = true;
        }
        self.block.fields.set(key, value);
        let text = &mut self.block.text;
        if text.len() < 300 {
            if !text.is_empty() {
                text.push_str(" | ");
            }
            text.push_str(cut(name.trim(), 40));
            text.push_str(": ");
            match key {
                Key::Password => text.push_str("***"),
                Key::Credentials => match value.split_once(':') {
                    Some((l, _)) => {
                        text.push_str(cut(l, 60));
                        text.push_str(":***");
                    }
                    None => text.push_str(cut(value, 60)),
                },
                _ => text.push_str(cut(value, 60)),
            }
        }
    }

    fn step_csv(&mut self) -> std::io::Result<()> {
        let mut line = std::mem::take(&mut self.line);
        let read = self.input.read_line(&mut line);
        let result = match read {
            Err(e) => Err(e),
            Ok(LineRead::Eof) => {
                self.finish_csv_record();
                self.mode = Mode::Lines;
                Ok(())
            }
            Ok(LineRead::Line { number, too_long }) => {
                self.csv_line(number, too_long, &line);
                Ok(())
            }
        };
        self.line = line;
        result
    }

    fn csv_line(&mut self, number: usize, too_long: bool, line: &str) {
        let Mode::Csv {
            header,
            record,
            record_line,
            quotes,
        } = &mut self.mode
        else {
            return;
        };
        let line_quotes = line.bytes().filter(|b| *b == b'"').count();
        if !record.is_empty() {
            // Inside a quoted cell spanning lines.
            record.push('\n');
            record.push_str(line);
            *quotes += line_quotes;
            if record.len() > MAX_ELEMENT || too_long {
                let at = *record_line;
                record.clear();
                *quotes = 0;
                self.error(
                    at,
                    ErrorReason::TooLarge { max: MAX_ELEMENT },
                    "(CSV record)".to_owned(),
                );
            } else if *quotes % 2 == 0 {
                self.finish_csv_record();
            }
            return;
        }
        let t = line.trim();
        if t.is_empty() || is_separator(t) {
            self.mode = Mode::Lines;
            self.flush_block();
            return;
        }
        if t.starts_with('#') || t.starts_with("//") {
            return;
        }
        if too_long {
            let text = mask_unknown(&truncate(t, 40));
            self.error(number, ErrorReason::LineTooLong { max: MAX_LINE }, text);
            return;
        }
        if !line.as_bytes().contains(&header.delimiter) {
            self.mode = Mode::Lines;
            self.handle_line(number, line);
            return;
        }
        if let Some(h) = CsvHeader::detect(t) {
            **header = h;
            return;
        }
        record.push_str(line);
        *record_line = number;
        *quotes = line_quotes;
        if *quotes % 2 == 0 {
            self.finish_csv_record();
        }
    }

    fn finish_csv_record(&mut self) {
        let Mode::Csv {
            header,
            record,
            record_line,
            quotes,
        } = &mut self.mode
        else {
            return;
        };
        if record.is_empty() {
            return;
        }
        let item = match header.row(record.trim_end()) {
            Ok(node) => Ok(ParsedNode {
                line: *record_line,
                format: Format::Csv,
                node,
            }),
            Err((reason, text)) => Err(ImportError {
                line: *record_line,
                text,
                reason,
            }),
        };
        record.clear();
        *quotes = 0;
        self.pending.push_back(item);
    }

    fn step_json_array(&mut self, open_line: usize) -> std::io::Result<()> {
        match self.input.skip_json_ws()? {
            None => {
                self.error(
                    open_line,
                    ErrorReason::Json("the JSON array is not closed".to_owned()),
                    "[".to_owned(),
                );
                self.mode = Mode::Lines;
            }
            Some(b']') => {
                self.input.bump()?;
                self.mode = Mode::Lines;
            }
            Some(b',') => {
                self.input.bump()?;
            }
            Some(_) => self.json_element(Some(open_line))?,
        }
        Ok(())
    }

    /// Scans and converts one JSON value at the cursor.
    fn json_element(&mut self, array_line: Option<usize>) -> std::io::Result<()> {
        let line = self.input.line();
        let mut element = std::mem::take(&mut self.element);
        let scan = self.input.scan_json_value(&mut element, MAX_ELEMENT);
        let result = match scan {
            Err(e) => Err(e),
            Ok(Scan::Eof) => {
                self.error(
                    array_line.unwrap_or(line),
                    ErrorReason::Json("the input ends inside a JSON value".to_owned()),
                    format!("(JSON value, {} bytes)", element.len()),
                );
                self.mode = Mode::Lines;
                Ok(())
            }
            Ok(Scan::Done { overflow: true }) => {
                self.error(
                    line,
                    ErrorReason::TooLarge { max: MAX_ELEMENT },
                    "(JSON value)".to_owned(),
                );
                Ok(())
            }
            Ok(Scan::Done { overflow: false }) => {
                let item = match json_object(&element) {
                    Ok(node) => Ok(ParsedNode {
                        line,
                        format: Format::Json,
                        node,
                    }),
                    Err((reason, text)) => Err(ImportError { line, text, reason }),
                };
                self.pending.push_back(item);
                Ok(())
            }
        };
        if element.capacity() > 64 * 1024 {
            element = Vec::new();
        }
        self.element = element;
        result
    }
}

impl<R: Read> Iterator for Parser<R> {
    type Item = Item;

    fn next(&mut self) -> Option<Item> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some(item);
            }
            if self.done {
                return None;
            }
            if let Err(e) = self.step() {
                self.flush_block();
                let line = self.input.line();
                self.error(line, ErrorReason::Io(e.to_string()), String::new());
                self.done = true;
            }
        }
    }
}

/// The first `max` characters of `s`.
fn cut(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// A line of only dashes, equals signs, underscores, stars or tildes (3 or more).
fn is_separator(t: &str) -> bool {
    t.len() >= 3
        && t.chars()
            .all(|c| matches!(c, '-' | '=' | '_' | '*' | '~' | '—' | '–' | ' '))
}

/// A key nobody knows but that looks like one: letters (any script), spaces,
/// `_`, `-`, `.`, `(`, `)`; at most 40 characters.
fn is_word_like(k: &str) -> bool {
    let k = k.trim();
    !k.is_empty()
        && k.chars().count() <= 40
        && k.chars().any(char::is_alphabetic)
        && k.chars().all(|c| {
            c.is_alphabetic() || matches!(c, ' ' | '\t' | '_' | '-' | '.' | '(' | ')' | '/')
        })
}
