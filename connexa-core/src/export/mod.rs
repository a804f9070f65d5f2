//! Exporting nodes: pure writers over a node iterator.
//!
//! | format | one line per node | reads back with [`import`](crate::import) |
//! |---|---|---|
//! | `txt` | `ip login password country` (`ip:port` when the port is not 1723) | yes, format 2 |
//! | `csv` | header `ip,port,login,password,country,state,city,zip,provider,comment` then the enrichment columns (`geo_ip` ... `fraud_provider`, ignored on import) | yes, format 8 |
//! | `json` | an array of objects, one per line | yes, format 8 |
//! | `pptp` | `ip:login:password` (`[ip]:port:login:password` where needed) | yes, format 7 |
//! | `socks` | `socks5://user:pass@host:port` of the node's running service | no |
//! | `socks-colon` | `host:port:user:pass` of the node's running service | no |
//!
//! The socks formats list only nodes with a running, healthy SOCKS5 service
//! (status `online` and a service endpoint); the others
//! list every node given. Passwords are written in clear: an export is the place
//! where they leave the process on purpose. There is no `.ovpn` writer here:
//! the profiles of `openvpn` services come from
//! [`ops::service_profiles`](crate::ops::service_profiles) (see
//! `docs/import-export.md`).
//!
//! ```
//! use connexa_core::export::{write, ExportFormat};
//! # let nodes: Vec<connexa_core::domain::Node> = Vec::new();
//! let mut out = Vec::new();
//! let written = write("csv".parse::<ExportFormat>().unwrap(), &nodes, &mut out).unwrap();
//! assert_eq!(written, 0);
//! assert_eq!(String::from_utf8(out).unwrap(),
//!            connexa_core::export::CSV_HEADER);
//! assert!(connexa_core::export::CSV_HEADER.starts_with("ip,port,login,password,country,state,city,zip,provider,comment,geo_ip,"));
//! ```

use std::fmt;
use std::io::{self, Write};
use std::net::IpAddr;
use std::str::FromStr;

use serde::Serialize;

pub use crate::csv_cell::{FORMULA_TRIGGERS, neutralize_formula};
use crate::domain::{DEFAULT_PORT, Node, Status};

/// An export format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ExportFormat {
    /// `ip login password country`.
    Txt,
    /// CSV with a header row (the columns the CSV import reads).
    Csv,
    /// A JSON array of objects.
    Json,
    /// `ip:login:password`.
    Pptp,
    /// `socks5://user:pass@host:port` for nodes with a running service.
    Socks,
    /// `host:port:user:pass` for nodes with a running service.
    SocksColon,
}

impl ExportFormat {
    /// Every format.
    pub const ALL: [ExportFormat; 6] = [
        ExportFormat::Txt,
        ExportFormat::Csv,
        ExportFormat::Json,
        ExportFormat::Pptp,
        ExportFormat::Socks,
        ExportFormat::SocksColon,
    ];

    /// The name used on the command line and in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            ExportFormat::Txt => "txt",
            ExportFormat::Csv => "csv",
            ExportFormat::Json => "json",
            ExportFormat::Pptp => "pptp",
            ExportFormat::Socks => "socks",
            ExportFormat::SocksColon => "socks-colon",
        }
    }

    /// A file extension for the format.
    pub fn extension(self) -> &'static str {
        match self {
            ExportFormat::Csv => "csv",
            ExportFormat::Json => "json",
            _ => "txt",
        }
    }
}

impl fmt::Display for ExportFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name is not an export format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown export format {0:?} (use txt, csv, json, pptp, socks or socks-colon)")]
#[non_exhaustive]
pub struct UnknownFormat(pub String);

impl FromStr for ExportFormat {
    type Err = UnknownFormat;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().to_ascii_lowercase();
        ExportFormat::ALL
            .into_iter()
            .find(|f| f.as_str() == t)
            .or(match t.as_str() {
                "socks5" => Some(ExportFormat::Socks),
                "socks_colon" => Some(ExportFormat::SocksColon),
                _ => None,
            })
            .ok_or(UnknownFormat(s.to_owned()))
    }
}

/// Writing an export failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// The output failed.
    #[error("write failed: {0}")]
    Io(#[from] io::Error),
}

/// Writes `nodes` in `format`; returns how many nodes were written.
pub fn write<'a, W: Write>(
    format: ExportFormat,
    nodes: impl IntoIterator<Item = &'a Node>,
    out: W,
) -> Result<usize, ExportError> {
    let mut out = io::BufWriter::new(out);
    let mut n = 0;
    match format {
        ExportFormat::Csv => {
            out.write_all(CSV_HEADER.as_bytes())?;
            for node in nodes {
                write_csv_row(&mut out, node)?;
                n += 1;
            }
        }
        ExportFormat::Json => {
            out.write_all(b"[")?;
            for node in nodes {
                out.write_all(if n == 0 { b"\n" } else { b",\n" })?;
                serde_json::to_writer(&mut out, &JsonNode::from(node)).map_err(io::Error::from)?;
                n += 1;
            }
            out.write_all(b"\n]\n")?;
        }
        ExportFormat::Txt | ExportFormat::Pptp => {
            for node in nodes {
                let line = if format == ExportFormat::Txt {
                    txt_line(node)
                } else {
                    pptp_line(node)
                };
                let pass = node.password.expose();
                if crate::import::line_reads_back(&line, node.ip, node.port, &node.login, pass) {
                    writeln!(out, "{line}")?;
                    n += 1;
                } else {
                    // A comment: importers skip it, a reader sees why.
                    writeln!(out, "{}", unrepresentable(node, format))?;
                }
            }
        }
        ExportFormat::Socks | ExportFormat::SocksColon => {
            for node in nodes {
                let Some(s) = &node.service else { continue };
                if node.status != Status::Online {
                    continue;
                }
                let host = host_text(&s.host);
                if format == ExportFormat::Socks {
                    writeln!(
                        out,
                        "socks5://{}:{}@{host}:{}",
                        percent(&s.username),
                        percent(s.password.expose()),
                        s.port
                    )?;
                } else {
                    writeln!(
                        out,
                        "{host}:{}:{}:{}",
                        s.port,
                        s.username,
                        s.password.expose()
                    )?;
                }
                n += 1;
            }
        }
    }
    out.flush()?;
    Ok(n)
}

/// The CSV header the export writes (and the import reads in any order): the
/// node's own columns, then what GEO and fraud lookups found (the import
/// ignores those: they describe the address, not the seller's data).
pub const CSV_HEADER: &str = "ip,port,login,password,country,state,city,zip,provider,comment,geo_ip,geo_country_code,geo_region,geo_city,geo_postal,geo_latitude,geo_longitude,geo_time_zone,asn,asn_org,location_mismatch,fraud_score,fraud_risk,fraud_provider\n";

/// The enrichment columns at the end of a CSV row, in [`CSV_HEADER`] order.
fn enrichment_cells(node: &Node) -> [String; 14] {
    let g = node.enrichment.geo.as_ref();
    let f = node.enrichment.fraud.as_ref();
    let text = |v: Option<&String>| v.cloned().unwrap_or_default();
    let num = |v: Option<String>| v.unwrap_or_default();
    [
        num(g.map(|g| g.ip.to_string())),
        text(g.and_then(|g| g.facts.country_code.as_ref())),
        text(g.and_then(|g| g.facts.region.as_ref())),
        text(g.and_then(|g| g.facts.city.as_ref())),
        text(g.and_then(|g| g.facts.postal.as_ref())),
        num(g.and_then(|g| g.facts.latitude).map(|v| v.to_string())),
        num(g.and_then(|g| g.facts.longitude).map(|v| v.to_string())),
        text(g.and_then(|g| g.facts.time_zone.as_ref())),
        num(g.and_then(|g| g.facts.asn).map(|v| v.to_string())),
        text(g.and_then(|g| g.facts.org.as_ref())),
        num(g.and_then(|g| g.location_mismatch).map(|v| v.to_string())),
        num(f.map(|f| f.score.to_string())),
        num(f.map(|f| f.risk.to_string())),
        text(f.map(|f| &f.provider)),
    ]
}

fn write_csv_row(out: &mut impl Write, node: &Node) -> io::Result<()> {
    let m = &node.meta;
    let ip = node.ip.to_string();
    let port = node.port.to_string();
    let cells: [&str; 10] = [
        &ip,
        &port,
        &node.login,
        node.password.expose(),
        m.country.as_deref().unwrap_or_default(),
        m.state.as_deref().unwrap_or_default(),
        m.city.as_deref().unwrap_or_default(),
        m.zipcode.as_deref().unwrap_or_default(),
        m.provider.as_deref().unwrap_or_default(),
        m.comment.as_deref().unwrap_or_default(),
    ];
    for (i, cell) in cells.iter().enumerate() {
        if i > 0 {
            out.write_all(b",")?;
        }
        write_csv_cell(out, cell)?;
    }
    for cell in enrichment_cells(node) {
        out.write_all(b",")?;
        write_csv_cell(out, &cell)?;
    }
    out.write_all(b"\n")
}

/// RFC 4180 quoting, plus: cells with leading/trailing white space or starting
/// with `#` are quoted too, so that the import (which trims lines and skips `#`
/// comments) reads them back exactly; formulas are neutralized
/// ([`neutralize_formula`]).
fn write_csv_cell(out: &mut impl Write, cell: &str) -> io::Result<()> {
    let cell = &*neutralize_formula(cell);
    let needs = cell.contains([',', '"', '\n', '\r', ';', '\t'])
        || cell.starts_with(char::is_whitespace)
        || cell.ends_with(char::is_whitespace)
        || cell.starts_with('#')
        || cell.starts_with("//")
        || cell.starts_with('\u{feff}');
    if !needs {
        return out.write_all(cell.as_bytes());
    }
    out.write_all(b"\"")?;
    out.write_all(cell.replace('"', "\"\"").as_bytes())?;
    out.write_all(b"\"")
}

#[derive(Serialize)]
struct JsonNode<'a> {
    id: i64,
    ip: String,
    port: u16,
    login: &'a str,
    password: &'a str,
    country: Option<&'a str>,
    state: Option<&'a str>,
    city: Option<&'a str>,
    zip: Option<&'a str>,
    provider: Option<&'a str>,
    comment: Option<&'a str>,
    status: &'a str,
    ping_ms: Option<f64>,
    speed_down_mbps: Option<f64>,
    speed_up_mbps: Option<f64>,
    last_checked_at: Option<String>,
    /// The last GEO lookup, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    geo: Option<&'a crate::domain::GeoRecord>,
    /// The last fraud score, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    fraud: Option<&'a crate::domain::FraudRecord>,
}

impl<'a> From<&'a Node> for JsonNode<'a> {
    fn from(n: &'a Node) -> Self {
        let m = &n.meta;
        JsonNode {
            id: n.id.0,
            ip: n.ip.to_string(),
            port: n.port,
            login: &n.login,
            password: n.password.expose(),
            country: m.country.as_deref(),
            state: m.state.as_deref(),
            city: m.city.as_deref(),
            zip: m.zipcode.as_deref(),
            provider: m.provider.as_deref(),
            comment: m.comment.as_deref(),
            status: n.status.as_str(),
            ping_ms: n.ping_ms.filter(|v| v.is_finite()),
            speed_down_mbps: n.speed_down_mbps.filter(|v| v.is_finite()),
            speed_up_mbps: n.speed_up_mbps.filter(|v| v.is_finite()),
            last_checked_at: n.last_checked_at.map(|t| t.to_rfc3339()),
            geo: n.enrichment.geo.as_ref(),
            fraud: n.enrichment.fraud.as_ref(),
        }
    }
}

/// `ip login password [country]`; the address is `ip:port` (`[v6]:port`) when
/// the port is not 1723. Logins and passwords with white space cannot be
/// carried by this format (see the docs).
fn txt_line(node: &Node) -> String {
    let addr = match (node.ip, node.port) {
        (ip, DEFAULT_PORT) => ip.to_string(),
        (IpAddr::V4(ip), port) => format!("{ip}:{port}"),
        (IpAddr::V6(ip), port) => format!("[{ip}]:{port}"),
    };
    let pass = node.password.expose();
    let country = node
        .meta
        .country
        .as_deref()
        .map(|c| c.replace(char::is_control, " ").trim().to_owned())
        .filter(|c| !c.is_empty());
    match country {
        Some(c) => format!("{addr} {} {pass} {c}", node.login),
        None => format!("{addr} {} {pass}", node.login),
    }
}

/// The line written instead of a node that a line format cannot hold (a login
/// with `:` in the pptp format, white space in the txt format): a `#` comment
/// that names the node and says why, with no secret in it.
fn unrepresentable(node: &Node, format: ExportFormat) -> String {
    format!(
        "# node {} ({}) not exported: its login or password cannot be written in the {format} format so that it reads back (use csv or json)",
        node.id, node.ip
    )
}

/// `ip:login:password` when that reads back to the same node, else
/// `[ip]:port:login:password` (IPv6, a port other than 1723, or a password that
/// would make the plain line look like another format).
fn pptp_line(node: &Node) -> String {
    let pass = node.password.expose();
    if let IpAddr::V4(v4) = node.ip
        && node.port == DEFAULT_PORT
        && crate::import::plain_colon_reads_back(v4, &node.login, pass)
    {
        return format!("{v4}:{}:{pass}", node.login);
    }
    format!("[{}]:{}:{}:{pass}", node.ip, node.port, node.login)
}

fn host_text(host: &str) -> String {
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
        _ => host.to_owned(),
    }
}

/// Percent-encodes the user-info characters RFC 3986 does not allow unencoded.
fn percent(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests;
