//! Format 8: CSV with a header row, and JSON objects.

use std::io::Cursor;

use serde_json::Value;

use super::ErrorReason;
use super::fields::{Fields, Key, truncate};
use crate::domain::NewNode;

/// A CSV header: the delimiter and what each column holds (`None`: ignored),
/// and a reusable record reader (building one is far costlier than a record).
#[derive(Debug)]
pub(crate) struct CsvHeader {
    pub delimiter: u8,
    pub columns: Vec<Option<Key>>,
    reader: csv::Reader<Cursor<Vec<u8>>>,
}

impl CsvHeader {
    /// Recognises a header row: split by `,`, `;` or tab, every cell a known
    /// column name, one of them the IP. Quoted cells are allowed.
    pub(crate) fn detect(line: &str) -> Option<CsvHeader> {
        for delimiter in [b',', b';', b'\t'] {
            if !line.as_bytes().contains(&delimiter) {
                continue;
            }
            // Header cells never hold the delimiter: a plain split (quotes
            // trimmed) is enough, and cheap for the many lines that are no header.
            let cells: Vec<&str> = line
                .split(char::from(delimiter))
                .map(|c| c.trim().trim_matches('"'))
                .collect();
            let first = cells.first().copied().unwrap_or_default();
            if Key::of(first).is_none() && !is_extra(first) {
                continue;
            }
            let columns: Vec<Option<Key>> = cells.iter().map(|c| Key::of(c)).collect();
            let known = columns.iter().filter(|c| c.is_some()).count();
            let has_ip = columns.contains(&Some(Key::Ip));
            let has_creds = columns
                .iter()
                .any(|c| matches!(c, Some(Key::Login | Key::Password | Key::Credentials)));
            // Every cell must be a column name (empty trailing cells allowed).
            let all_known = cells
                .iter()
                .zip(&columns)
                .all(|(cell, col)| col.is_some() || cell.trim().is_empty() || is_extra(cell));
            if has_ip && has_creds && all_known && known >= 2 {
                let reader = csv::ReaderBuilder::new()
                    .has_headers(false)
                    .flexible(true)
                    .delimiter(delimiter)
                    .from_reader(Cursor::new(Vec::new()));
                return Some(CsvHeader {
                    delimiter,
                    columns,
                    reader,
                });
            }
        }
        None
    }

    /// Parses one record (which may span lines inside quotes) into a node.
    /// On error, the text is the record with the password cell masked.
    pub(crate) fn row(&mut self, record: &str) -> Result<NewNode, (ErrorReason, String)> {
        let cells = match self.split_record(record) {
            Ok(c) => c,
            Err(e) => return Err((ErrorReason::Csv(e), mask_record(record))),
        };
        let mut f = Fields::default();
        for (cell, col) in cells.iter().zip(&self.columns) {
            if let Some(key) = col {
                // Our CSV export guards formulas with a leading `'`.
                f.set(*key, crate::csv_cell::unneutralize_formula(cell));
            }
        }
        f.build().map_err(|reason| {
            let shown: Vec<String> = cells
                .iter()
                .zip(self.columns.iter().chain(std::iter::repeat(&None)))
                .map(|(c, col)| match col {
                    Some(Key::Password) => "***".to_owned(),
                    Some(Key::Credentials) => match c.split_once(':') {
                        Some((l, _)) => format!("{l}:***"),
                        None => c.clone(),
                    },
                    _ => c.clone(),
                })
                .collect();
            let sep = char::from(self.delimiter).to_string();
            (reason, truncate(&shown.join(&sep), 200))
        })
    }
}

/// Columns our own JSON/CSV exports carry that the import does not read.
fn is_extra(cell: &str) -> bool {
    matches!(
        cell.trim().to_ascii_lowercase().as_str(),
        "id" | "status"
            | "ping_ms"
            | "speed_down_mbps"
            | "speed_up_mbps"
            | "last_checked_at"
            | "last_error"
            | "created_at"
            // enrichment columns of the CSV export (they describe the address)
            | "geo_ip"
            | "geo_country_code"
            | "geo_region"
            | "geo_city"
            | "geo_postal"
            | "geo_latitude"
            | "geo_longitude"
            | "geo_time_zone"
            | "asn"
            | "asn_org"
            | "location_mismatch"
            | "fraud_score"
            | "fraud_risk"
            | "fraud_provider"
    )
}

fn mask_record(record: &str) -> String {
    format!("(CSV record, {} bytes)", record.len())
}

impl CsvHeader {
    fn split_record(&mut self, record: &str) -> Result<Vec<String>, String> {
        let buf = self.reader.get_mut().get_mut();
        buf.clear();
        buf.extend_from_slice(record.as_bytes());
        // Rewinds the cursor and resets the parser state (kept: the built DFA).
        self.reader
            .seek(csv::Position::new())
            .map_err(|_| "malformed record".to_owned())?;
        let mut rec = csv::StringRecord::new();
        match self.reader.read_record(&mut rec) {
            Ok(_) => Ok(rec.iter().map(str::to_owned).collect()),
            Err(e) => Err(match e.kind() {
                csv::ErrorKind::Utf8 { .. } => "invalid UTF-8".to_owned(),
                _ => "malformed record".to_owned(),
            }),
        }
    }
}

/// Builds a node from one JSON object (keys case-insensitive, the same names as
/// the CSV columns; strings or numbers; `null` is absent; other keys ignored).
pub(crate) fn json_object(bytes: &[u8]) -> Result<NewNode, (ErrorReason, String)> {
    let shown = || format!("(JSON value, {} bytes)", bytes.len());
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        // serde_json syntax errors carry a position, never the data.
        (ErrorReason::Json(format!("invalid JSON: {e}")), shown())
    })?;
    let Value::Object(map) = value else {
        return Err((
            ErrorReason::Json("array element is not an object".to_owned()),
            shown(),
        ));
    };
    let mut f = Fields::default();
    for (k, v) in &map {
        let Some(key) = Key::of(k) else { continue };
        let text = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Null | Value::Array(_) | Value::Object(_) => continue,
        };
        f.set(key, &text);
    }
    let ip = f.ip.clone();
    let login = f.login.clone();
    f.build().map_err(|reason| {
        let text = format!(
            "{{ip: {}, login: {}, password: ***}}",
            ip.as_deref().unwrap_or("-"),
            login.as_deref().unwrap_or("-")
        );
        (reason, truncate(&text, 200))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_in_any_order_with_quotes() {
        let mut h = CsvHeader::detect("\"Password\";zip;LOGIN;ip;port").unwrap();
        assert_eq!(h.delimiter, b';');
        let n = h
            .row("\"a;b\"\"c\";90210; admin ;2001:db8::5;1724")
            .unwrap();
        assert_eq!(n.password().expose(), "a;b\"c");
        assert_eq!(n.login(), "admin");
        assert_eq!(n.port(), 1724);
        assert_eq!(n.meta.zipcode.as_deref(), Some("90210"));
        assert!(CsvHeader::detect("name,surname,ip").is_none());
        assert!(CsvHeader::detect("1.2.3.4,admin,admin").is_none());
        // The reader is reused: records do not leak into each other.
        let a = h.row("\"x\";1;a;1.2.3.4;").unwrap();
        let b = h.row("y;2;b;1.2.3.5").unwrap();
        assert_eq!((a.password().expose(), b.password().expose()), ("x", "y"));
        assert_eq!((a.port(), b.port()), (1723, 1723));
    }

    #[test]
    fn csv_errors_mask_the_password() {
        let mut h = CsvHeader::detect("ip,login,password").unwrap();
        let (r, text) = h.row("1.2.3.999,admin,topsecret").unwrap_err();
        assert!(matches!(r, ErrorReason::Invalid(_)));
        assert_eq!(text, "1.2.3.999,admin,***");
    }

    #[test]
    fn json_values() {
        let n = json_object(br#"{"IP":"1.2.3.4","port":1724,"login":"u","password":"p","zip":90210,"status":"online"}"#).unwrap();
        assert_eq!((n.port(), n.meta.zipcode.as_deref()), (1724, Some("90210")));
        let (r, text) = json_object(br#"{"ip":"1.2.3.4","login":"u"}"#).unwrap_err();
        assert_eq!(r, ErrorReason::MissingPassword);
        assert!(!text.contains("\"p\""));
        let (r, text) = json_object(br#""hunter2""#).unwrap_err();
        assert!(matches!(r, ErrorReason::Json(_)));
        assert!(!text.contains("hunter2"));
    }
}
