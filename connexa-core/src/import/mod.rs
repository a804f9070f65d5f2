//! Importing node lists: every format operators paste from sellers, detected per
//! block and mixable in one file, read as a stream.
//!
//! * [`parse`] turns any reader into an iterator of [`ParsedNode`]s and
//!   [`ImportError`]s in input order. It is pure (it only reads the given reader),
//!   never panics, and keeps memory bounded: a 1 GB file is never held at once.
//! * [`Dedup`] classifies parsed nodes against the earlier rows of the same file
//!   (duplicates and conflicts within the file).
//! * [`Importer`] drives the whole import in batches for a store and builds the
//!   [`ImportReport`]: added, duplicates, conflicts, errors with line numbers.
//!
//! The formats, detection rules and the report are described in
//! `docs/import-export.md`.
//!
//! ```
//! use connexa_core::import::{parse, Format};
//!
//! let list = "\
//! // my list
//! Ip: 203.0.113.7\tseller_tag_17
//! Login: admin
//! Pass: admin
//! State: CA
//!
//! 198.51.100.52:admin:s3cret:US:Arizona:85001
//! 198.51.100.300:admin:hunter2
//! ";
//! let rows: Vec<_> = parse(list.as_bytes()).collect();
//! let first = rows[0].as_ref().unwrap();
//! assert_eq!((first.line, first.format), (2, Format::KeyValue));
//! assert_eq!(first.node.meta.state.as_deref(), Some("California"));
//! assert_eq!(rows[1].as_ref().unwrap().format, Format::ColonLocation);
//! let err = rows[2].as_ref().unwrap_err();
//! assert_eq!(err.line, 8);
//! assert_eq!(err.text, "198.51.100.300:admin:***");
//! ```

mod dedup;
mod fields;
mod input;
mod lines;
pub mod location;
mod parser;
mod report;
mod single;
pub mod summary;
mod tabular;

use std::fmt;
use std::io::Read;

pub use dedup::{Classified, Dedup};
pub use input::{MAX_ELEMENT, MAX_LINE};
pub(crate) use lines::{line_reads_back, plain_colon_reads_back};
pub use parser::Parser;
pub use report::{
    ConflictRow, DuplicateRow, Existing, ImportReport, Importer, OutcomeMismatch, ReplacedRow,
};
pub use run::{ImportOptions, OnConflict, import_into};
pub use single::NodeFields;

mod run;

use crate::domain::{InvalidNode, NewNode};

/// Parses a node list. See the [module documentation](self).
///
/// Any `Read` works (`&[u8]`, a `File`, a `BufReader`, stdin); the parser does its
/// own buffering.
pub fn parse<R: Read>(reader: R) -> Parser<R> {
    Parser::new(reader)
}

/// Which of the known formats a node was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Format {
    /// 1: a block of `Key: value` lines (`Ip:`, `Login:`, `Pass:`, `State:`...).
    KeyValue,
    /// 2: white-space columns `IP Login Pass [State]`.
    Columns,
    /// 3: `IP - login:pass - Location | date`.
    DashPipe,
    /// 4: `IP:login:pass:country:state:zip`.
    ColonLocation,
    /// 5 and 6: a block with `Credentials: login:pass` and/or `Location:`
    /// (headers such as `> PPTP_SVOIM_VPN:` or `🚨 PPTP Connection` are skipped).
    CredentialsBlock,
    /// 7: `IP:login:pass`, also `[IP]:port:login:pass`.
    Colon,
    /// 8: CSV with a header row.
    Csv,
    /// 8: JSON objects (an array of them, or one per line).
    Json,
}

impl Format {
    /// A short stable name (`key-value`, `columns`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Format::KeyValue => "key-value",
            Format::Columns => "columns",
            Format::DashPipe => "dash-pipe",
            Format::ColonLocation => "colon-location",
            Format::CredentialsBlock => "credentials-block",
            Format::Colon => "colon",
            Format::Csv => "csv",
            Format::Json => "json",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A node read from the input.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedNode {
    /// The 1-based line where the node starts (the first line of a block).
    pub line: usize,
    /// The format it was detected as.
    pub format: Format,
    /// The validated node.
    pub node: NewNode,
}

/// A row that could not be imported. Displays as `line N: reason: text`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ImportError {
    /// The 1-based line where the row starts.
    pub line: usize,
    /// The offending text, with the password replaced by `***` (where a password
    /// cannot be located, everything after the first `:` is hidden).
    pub text: String,
    /// Why.
    pub reason: ErrorReason,
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)?;
        if !self.text.is_empty() {
            write!(f, ": {}", self.text)?;
        }
        Ok(())
    }
}

impl std::error::Error for ImportError {}

/// Why a row could not be imported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorReason {
    /// A field failed validation (bad IP, unusable IP, port out of range, empty
    /// login, too long, control character).
    #[error(transparent)]
    Invalid(#[from] InvalidNode),
    /// No IP address.
    #[error("missing IP address")]
    MissingIp,
    /// No login.
    #[error("missing login")]
    MissingLogin,
    /// No password.
    #[error("missing password")]
    MissingPassword,
    /// The port is not a number.
    #[error("port {0:?} is not a number")]
    BadPort(String),
    /// The line has digits or a colon but matches no known format.
    #[error("unrecognised line (matches none of the known formats)")]
    Unrecognised,
    /// The line holds no node: a header, a seller's name, a decoration. It is
    /// reported in [`ImportReport::ignored`], not counted as an error.
    #[error("not a node (a header or a name): ignored")]
    NotANode,
    /// The line is longer than the parser keeps; it was skipped.
    #[error("line longer than {max} bytes")]
    LineTooLong {
        /// The limit.
        max: usize,
    },
    /// A JSON value or a multi-line CSV record is larger than the parser keeps.
    #[error("value larger than {max} bytes")]
    TooLarge {
        /// The limit.
        max: usize,
    },
    /// A CSV record could not be read.
    #[error("CSV: {0}")]
    Csv(String),
    /// A JSON value could not be read or is not an object.
    #[error("JSON: {0}")]
    Json(String),
    /// Reading the input failed; the parse stopped here.
    #[error("read error: {0}")]
    Io(String),
}
