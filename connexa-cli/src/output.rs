//! Output: the three formats, aligned tables, colour only on a terminal.

use std::io::{IsTerminal, Write};

use clap::ValueEnum;
use connexa_core::domain::{Level, Status};
use serde::Serialize;

/// What stdout carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned tables and sentences for people.
    Human,
    /// Stable JSON (one document per command; see docs/cli.md).
    Json,
    /// CSV with a header row.
    Csv,
}

/// Where and how to print.
#[derive(Debug, Clone, Copy)]
pub struct Out {
    /// The format.
    pub format: OutputFormat,
    /// ANSI colour on stdout.
    pub color: bool,
    /// `-q`: no informational messages on stderr.
    pub quiet: bool,
}

impl Out {
    /// Colour only when stdout is a terminal and `NO_COLOR` is not set.
    pub fn new(format: OutputFormat, quiet: bool) -> Self {
        let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        Out {
            format,
            color,
            quiet,
        }
    }

    /// Prints a value as pretty JSON on stdout.
    pub fn json<T: Serialize>(&self, value: &T) -> anyhow::Result<()> {
        let mut stdout = std::io::stdout().lock();
        // As an io::Error, so that a closed stdout (`| head`) is recognised.
        serde_json::to_writer_pretty(&mut stdout, value).map_err(std::io::Error::from)?;
        writeln!(stdout)?;
        Ok(())
    }

    /// Prints text on stdout (control characters shown escaped: see [`escape`]).
    pub fn line(&self, text: impl std::fmt::Display) -> anyhow::Result<()> {
        writeln!(std::io::stdout().lock(), "{}", escape(&text.to_string()))?;
        Ok(())
    }

    /// An informational message on stderr (silenced by `-q`; control
    /// characters shown escaped).
    pub fn note(&self, text: impl std::fmt::Display) {
        if !self.quiet {
            eprintln!("{}", escape(&text.to_string()));
        }
    }

    /// Prints a table in the human or CSV format.
    pub fn table(&self, table: &Table) -> anyhow::Result<()> {
        let text = match self.format {
            OutputFormat::Csv => table.csv(),
            _ => table.render(self.color),
        };
        std::io::stdout().lock().write_all(text.as_bytes())?;
        Ok(())
    }
}

/// ANSI colours used in tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Color {
    /// Good.
    Green,
    /// Partial.
    Yellow,
    /// Failed.
    Red,
    /// Unimportant.
    Dim,
}

impl Color {
    pub(crate) fn code(self) -> &'static str {
        match self {
            Color::Green => "32",
            Color::Yellow => "33",
            Color::Red => "31",
            Color::Dim => "2",
        }
    }
}

/// The colour of a status.
pub fn status_color(s: Status) -> Color {
    match s {
        Status::PingFailed | Status::AuthFailed | Status::Offline => Color::Red,
        Status::NotTested => Color::Dim,
        _ if s.level() == Level::Light => Color::Yellow,
        _ => Color::Green,
    }
}

/// One cell.
#[derive(Debug, Clone, Default)]
pub struct Cell {
    text: String,
    color: Option<Color>,
    right: bool,
}

impl Cell {
    /// Left-aligned text.
    pub fn text(t: impl Into<String>) -> Self {
        Cell {
            text: t.into(),
            ..Cell::default()
        }
    }

    /// Right-aligned (numbers).
    pub fn num(t: impl ToString) -> Self {
        Cell {
            text: t.to_string(),
            right: true,
            color: None,
        }
    }

    /// An optional value; `-` when absent.
    pub fn opt(t: Option<impl ToString>) -> Self {
        match t {
            Some(v) => Cell::text(v.to_string()),
            None => Cell::text("-").colored(Color::Dim),
        }
    }

    /// A status, coloured.
    pub fn status(s: Status) -> Self {
        Cell::text(s.as_str()).colored(status_color(s))
    }

    /// With a colour (shown only on a terminal).
    pub fn colored(mut self, c: Color) -> Self {
        self.color = Some(c);
        self
    }

    /// Right-aligned.
    pub fn right(mut self) -> Self {
        self.right = true;
        self
    }
}

/// An aligned table.
#[derive(Debug, Clone, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<Cell>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&str]) -> Self {
        Table {
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row.
    pub fn row(&mut self, cells: Vec<Cell>) {
        self.rows.push(cells);
    }

    /// `true` without rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Aligned columns separated by two spaces; headers in bold on a terminal.
    pub fn render(&self, color: bool) -> String {
        let n = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, c) in row.iter().enumerate().take(n) {
                widths[i] = widths[i].max(sanitize(&c.text).chars().count());
            }
        }
        let mut out = String::new();
        let header: Vec<Cell> = self
            .headers
            .iter()
            .enumerate()
            .map(|(i, h)| Cell {
                text: h.clone(),
                color: None,
                right: self
                    .rows
                    .first()
                    .and_then(|r| r.get(i))
                    .is_some_and(|c| c.right),
            })
            .collect();
        push_row(&mut out, &header, &widths, color, true);
        for row in &self.rows {
            push_row(&mut out, row, &widths, color, false);
        }
        out
    }

    /// RFC 4180 CSV with the headers lower-cased.
    pub fn csv(&self) -> String {
        let mut out = String::new();
        let header: Vec<String> = self
            .headers
            .iter()
            .map(|h| h.to_ascii_lowercase().replace(' ', "_"))
            .collect();
        out.push_str(
            &header
                .iter()
                .map(|h| csv_cell(h))
                .collect::<Vec<_>>()
                .join(","),
        );
        out.push('\n');
        for row in &self.rows {
            let cells: Vec<String> = row
                .iter()
                .map(|c| {
                    if c.text == "-" {
                        String::new()
                    } else {
                        csv_cell(&c.text)
                    }
                })
                .collect();
            out.push_str(&cells.join(","));
            out.push('\n');
        }
        out
    }
}

fn push_row(out: &mut String, row: &[Cell], widths: &[usize], color: bool, bold: bool) {
    let last = widths.len().saturating_sub(1);
    let mut line = String::new();
    for (i, w) in widths.iter().enumerate() {
        let cell = row.get(i).cloned().unwrap_or_default();
        let text = sanitize(&cell.text);
        let pad = w.saturating_sub(text.chars().count());
        let padded = if cell.right {
            format!("{}{text}", " ".repeat(pad))
        } else if i == last {
            text.clone()
        } else {
            format!("{text}{}", " ".repeat(pad))
        };
        let styled = match (color, bold, cell.color) {
            (true, true, _) => format!("\x1b[1m{padded}\x1b[0m"),
            (true, false, Some(c)) => format!("\x1b[{}m{padded}\x1b[0m", c.code()),
            _ => padded,
        };
        if i > 0 {
            line.push_str("  ");
        }
        line.push_str(&styled);
    }
    out.push_str(line.trim_end());
    out.push('\n');
}

/// Text from the store or the input made safe for a terminal: every control
/// character but a line break and a tab is shown escaped (`\u{1b}]0;x\u{7}`),
/// so an imported line or a node's comment cannot move the cursor, set the
/// window title or clear the screen.
pub fn escape(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() && c != '\n' && c != '\t' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Control characters (from imported data) never reach the terminal.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// One CSV cell, quoted when needed, a formula neutralized (a leading `'`
/// before `=`, `+`, `-`, `@`, tab or CR: spreadsheets show it as text).
pub fn csv_cell(s: &str) -> String {
    let s = &*connexa_core::export::neutralize_formula(s);
    if s.contains([',', '"', '\n', '\r']) || s.starts_with(' ') || s.ends_with(' ') {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// Creates `path` for output that carries secrets (exports, OpenVPN
/// profiles): readable by its owner only (`0600`, also when `force`
/// overwrites an existing file), and never over an existing file without
/// `force` (exit 2, "refusing to overwrite ... (pass --force)").
pub fn private_file(path: &std::path::Path, force: bool) -> anyhow::Result<std::fs::File> {
    use crate::exit::{Exit, WithCode, fail};
    use anyhow::Context as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let mut open = std::fs::OpenOptions::new();
    open.write(true).mode(0o600);
    if force {
        open.create(true).truncate(true);
    } else {
        open.create_new(true);
    }
    let file = match open.open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(fail(
                Exit::Usage,
                format_args!("refusing to overwrite {} (pass --force)", path.display()),
            ));
        }
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot create {}", path.display()))
                .code(Exit::Usage);
        }
    };
    // An existing file overwritten with `force` keeps its mode otherwise.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot make {} private", path.display()))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_numbers_go_right() {
        let mut t = Table::new(&["NAME", "N"]);
        t.row(vec![Cell::text("a"), Cell::num(10)]);
        t.row(vec![Cell::text("long name"), Cell::num(7)]);
        assert_eq!(
            t.render(false),
            "NAME        N\na          10\nlong name   7\n"
        );
        assert_eq!(t.csv(), "name,n\na,10\nlong name,7\n");
    }

    #[test]
    fn colour_only_when_asked_and_control_chars_are_blanked() {
        let mut t = Table::new(&["S"]);
        t.row(vec![Cell::status(Status::SpeedOk)]);
        assert!(!t.render(false).contains('\x1b'));
        assert!(t.render(true).contains("\x1b[32mspeed_ok"));
        let mut t = Table::new(&["X"]);
        t.row(vec![Cell::text("a\x1b[31mb")]);
        assert!(!t.render(false).contains('\x1b'));
    }

    #[test]
    fn escape_shows_control_characters_and_keeps_line_breaks() {
        assert_eq!(escape("plain\ntext\there"), "plain\ntext\there");
        assert_eq!(
            escape("a\u{1b}]0;pwned\u{7}\u{1b}[2Jb\r\0"),
            "a\\u{1b}]0;pwned\\u{7}\\u{1b}[2Jb\\r\\u{0}"
        );
        assert!(!escape("\u{9b}31m").contains('\u{9b}'));
    }

    #[test]
    fn csv_quotes() {
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
