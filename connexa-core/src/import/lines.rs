//! The one-line formats: they all start with the server address.
//!
//! * 2 — white-space columns `IP Login Pass [Location...]` (the IP may carry `:port`)
//! * 3 — `IP - login:pass - Location | anything`
//! * 4 — `IP:login:pass:country:state:zip`
//! * 7 — `IP:login:pass` (everything after the second `:` is the password)
//! * bracketed — `[IP]:port:login:pass` or `[IP]:login:pass` (IPv6, or a port)

use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};

use super::fields::{Fields, mask_span, offset_in};
use super::location::{is_country_like, is_zip};
use super::{ErrorReason, Format};
use crate::domain::NewNode;

/// The outcome of a line that starts with an address: the node, or why not
/// (with the line's text, password masked).
pub(crate) type LineResult = Result<(Format, NewNode), (ErrorReason, String)>;

/// Parses a line if it starts with an IP address (or something meant to be one,
/// such as `198.51.100.300`); `None` otherwise. `line` is trimmed.
pub(crate) fn parse_ip_line(line: &str) -> Option<LineResult> {
    if let Some(rest) = line.strip_prefix('[') {
        let close = rest.find(']')?;
        let addr = &rest[..close];
        addr.parse::<IpAddr>().ok()?;
        let after = &rest[close + 1..];
        return Some(bracketed(line, addr, after));
    }
    let first = line.split_whitespace().next()?;
    if first.parse::<IpAddr>().is_ok() {
        return Some(columns(line, first, None));
    }
    if first.parse::<SocketAddrV4>().is_ok() && line.len() > first.len() {
        let end = first.rfind(':').unwrap_or(first.len());
        return Some(columns(line, &first[..end], Some(&first[end + 1..])));
    }
    // An IPv4-looking prefix: digits and dots.
    let prefix_len = line
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b'.')
        .count();
    let prefix = &line[..prefix_len];
    if !prefix.starts_with(|c: char| c.is_ascii_digit()) || !prefix.contains('.') {
        return None;
    }
    // `IP:port login pass` with a port out of range: still the column format.
    if let Some(port) = first.get(prefix_len + 1..)
        && first.as_bytes().get(prefix_len) == Some(&b':')
        && !port.is_empty()
        && port.bytes().all(|b| b.is_ascii_digit())
        && line.len() > first.len()
    {
        return Some(columns(line, prefix, Some(port)));
    }
    match line.as_bytes().get(prefix_len) {
        Some(b':') => Some(colon(line, prefix, &line[prefix_len + 1..])),
        None | Some(b' ' | b'\t') => Some(columns(line, prefix, None)),
        // `198.51.100.4x ...`: meant as an address, but not one.
        Some(_) => Some(columns(line, first, None)),
    }
}

/// Formats 2 and 3 (and `IP login:pass`).
fn columns(line: &str, ip: &str, port: Option<&str>) -> LineResult {
    let first = line.split_whitespace().next().unwrap_or_default();
    let rest = line[offset_in(line, first) + first.len()..].trim_start();
    if rest.starts_with("- ") || rest.starts_with("-\t") || rest == "-" {
        return dash(line, ip, port, rest[1..].trim_start());
    }
    let mut tokens = rest.split_whitespace();
    let mut f = Fields {
        ip: Some(ip.to_owned()),
        port: port.map(str::to_owned),
        ..Fields::default()
    };
    let mut pass_span = None;
    match (tokens.next(), tokens.next()) {
        (Some(creds), None) if creds.contains(':') => {
            let (l, p) = creds.split_once(':').unwrap_or((creds, ""));
            f.login = Some(l.to_owned());
            f.password = Some(p.to_owned());
            let start = offset_in(line, p);
            pass_span = Some((start, start + p.len()));
        }
        (Some(l), Some(p)) => {
            f.login = Some(l.to_owned());
            f.password = Some(p.to_owned());
            let start = offset_in(line, p);
            pass_span = Some((start, start + p.len()));
            let loc_start = start + p.len();
            let loc = line[loc_start..].trim();
            if !loc.is_empty() {
                f.location = Some(loc.to_owned());
            }
        }
        (Some(l), None) => f.login = Some(l.to_owned()),
        (None, _) => {}
    }
    finish(line, Format::Columns, f, pass_span)
}

/// Format 3: `IP - login:pass - Location | date`.
fn dash(line: &str, ip: &str, port: Option<&str>, rest: &str) -> LineResult {
    let rest = rest.split(" | ").next().unwrap_or_default().trim();
    let (creds, location) = match rest.rsplit_once(" - ") {
        Some((c, l)) => (c.trim(), Some(l.trim())),
        None => (rest, None),
    };
    let mut f = Fields {
        ip: Some(ip.to_owned()),
        port: port.map(str::to_owned),
        location: location.map(str::to_owned),
        ..Fields::default()
    };
    let mut pass_span = None;
    match creds.split_once(':') {
        Some((l, p)) => {
            f.login = Some(l.to_owned());
            f.password = Some(p.to_owned());
            let start = offset_in(line, p);
            pass_span = Some((start, start + p.len()));
        }
        None if !creds.is_empty() => f.login = Some(creds.to_owned()),
        None => {}
    }
    finish(line, Format::DashPipe, f, pass_span)
}

/// Formats 4 and 7 after `IP:`.
fn colon(line: &str, ip: &str, rest: &str) -> LineResult {
    let fields: Vec<&str> = rest.split(':').collect();
    let mut f = Fields {
        ip: Some(ip.to_owned()),
        ..Fields::default()
    };
    let (format, pass) = if let [login, pass, country, state, zip] = fields.as_slice()
        && is_country_like(country)
        && (is_zip(zip.trim()) || zip.trim().is_empty())
        && !state.trim().is_empty()
    {
        f.login = Some((*login).to_owned());
        f.country = Some((*country).to_owned());
        f.state = Some((*state).to_owned());
        f.zip = Some((*zip).to_owned());
        (Format::ColonLocation, Some(*pass))
    } else {
        let mut parts = rest.splitn(2, ':');
        f.login = parts.next().map(str::to_owned);
        (Format::Colon, parts.next())
    };
    let mut pass_span = None;
    if let Some(p) = pass {
        f.password = Some(p.to_owned());
        let start = offset_in(line, p);
        pass_span = Some((start, start + p.len()));
    }
    finish(line, format, f, pass_span)
}

/// `[addr]:port:login:pass`, `[addr]:login:pass`, or `[addr]:port login pass ...`.
fn bracketed(line: &str, addr: &str, after: &str) -> LineResult {
    // `[addr]` or `[addr]:port` followed by white space: the column format.
    let head = after.split_whitespace().next().unwrap_or_default();
    let head_is_port = head
        .strip_prefix(':')
        .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if after.is_empty()
        || after.starts_with(char::is_whitespace)
        || head_is_port && head.len() < after.len()
    {
        let port = if head_is_port { Some(&head[1..]) } else { None };
        return columns(line, addr, port);
    }
    let Some(rest) = after.strip_prefix(':') else {
        return Err((ErrorReason::Unrecognised, super::fields::mask_unknown(line)));
    };
    let fields: Vec<&str> = rest.splitn(3, ':').collect();
    let mut f = Fields {
        ip: Some(addr.to_owned()),
        ..Fields::default()
    };
    let pass = match fields.as_slice() {
        [port, login, pass] if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            f.port = Some((*port).to_owned());
            f.login = Some((*login).to_owned());
            Some(*pass)
        }
        [login, pass @ ..] => {
            f.login = Some((*login).to_owned());
            // Everything after the login is the password.
            pass.first().map(|p| &rest[offset_in(rest, p)..])
        }
        [] => None,
    };
    let mut pass_span = None;
    if let Some(p) = pass {
        f.password = Some(p.to_owned());
        let start = offset_in(line, p);
        pass_span = Some((start, start + p.len()));
    }
    finish(line, Format::Colon, f, pass_span)
}

fn finish(line: &str, format: Format, f: Fields, pass_span: Option<(usize, usize)>) -> LineResult {
    f.build().map(|n| (format, n)).map_err(|reason| {
        let text = match pass_span {
            Some((s, e)) => mask_span(line, s, e),
            // The line has an address and a login and nothing after them.
            None if reason == ErrorReason::MissingPassword => line.to_owned(),
            // The password was not found: hide whatever could be one.
            None => super::fields::mask_unknown(line),
        };
        (reason, super::fields::truncate(&text, 200))
    })
}

/// Is this the address of a v4 line that the writer must bracket? Used by the
/// pptp export: a plain `ip:login:password` line is written only if it reads back
/// to the same node.
pub(crate) fn plain_colon_reads_back(ip: Ipv4Addr, login: &str, password: &str) -> bool {
    let line = format!("{ip}:{login}:{password}");
    let trimmed = line.trim();
    if trimmed.len() != line.len() {
        return false;
    }
    matches!(parse_ip_line(trimmed), Some(Ok((_, n)))
        if n.ip() == IpAddr::V4(ip) && n.port() == crate::domain::DEFAULT_PORT
            && n.login() == login && n.password().expose() == password)
}

/// Does this exported line read back, by itself, to exactly this node
/// (address, port, login and password)? The pptp and txt writers refuse a
/// node whose line would not.
pub(crate) fn line_reads_back(
    line: &str,
    ip: IpAddr,
    port: u16,
    login: &str,
    password: &str,
) -> bool {
    if line.trim().len() != line.len() {
        return false;
    }
    matches!(parse_ip_line(line), Some(Ok((_, n)))
        if n.ip() == ip && n.port() == port && n.login() == login
            && n.password().expose() == password)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(line: &str) -> (Format, String, u16, String, String) {
        let (f, n) = parse_ip_line(line).expect("ip line").expect("valid");
        (
            f,
            n.ip().to_string(),
            n.port(),
            n.login().to_owned(),
            n.password().expose().to_owned(),
        )
    }

    #[test]
    fn one_line_shapes() {
        use Format::*;
        let s = |x: &str| x.to_owned();
        assert_eq!(
            ok("198.51.100.23  admin admin CA"),
            (Columns, s("198.51.100.23"), 1723, s("admin"), s("admin"))
        );
        assert_eq!(
            ok("198.51.100.4 - admin:adm:in - Arizona/Phoenix 85001 | 2025-09-03 16:05:25"),
            (DashPipe, s("198.51.100.4"), 1723, s("admin"), s("adm:in"))
        );
        assert_eq!(
            ok("198.51.100.52:admin:admin:US:Arizona:85001"),
            (
                ColonLocation,
                s("198.51.100.52"),
                1723,
                s("admin"),
                s("admin")
            )
        );
        assert_eq!(
            ok("192.0.2.35:admin:pass:word:1"),
            (Colon, s("192.0.2.35"), 1723, s("admin"), s("pass:word:1"))
        );
        assert_eq!(
            ok("[2001:db8::1]:1724:user:p:w"),
            (Colon, s("2001:db8::1"), 1724, s("user"), s("p:w"))
        );
        assert_eq!(
            ok("[2001:db8::1]:user:p"),
            (Colon, s("2001:db8::1"), 1723, s("user"), s("p"))
        );
        assert_eq!(
            ok("[2001:db8::1]:1724 user pw US"),
            (Columns, s("2001:db8::1"), 1724, s("user"), s("pw"))
        );
        assert_eq!(
            ok("198.51.100.9:1724 user pw"),
            (Columns, s("198.51.100.9"), 1724, s("user"), s("pw"))
        );
        assert_eq!(
            ok("2001:db8::2 user pw"),
            (Columns, s("2001:db8::2"), 1723, s("user"), s("pw"))
        );
    }

    #[test]
    fn errors_mask_the_password() {
        let (reason, text) = parse_ip_line("198.51.100.300:admin:s3cret")
            .unwrap()
            .unwrap_err();
        assert!(matches!(reason, ErrorReason::Invalid(_)));
        assert_eq!(text, "198.51.100.300:admin:***");
        let (reason, text) = parse_ip_line("198.51.100.1 admin").unwrap().unwrap_err();
        assert_eq!(reason, ErrorReason::MissingPassword);
        assert_eq!(text, "198.51.100.1 admin");
        let (_, text) = parse_ip_line("198.51.100.1:99999 admin s3cret")
            .unwrap()
            .unwrap_err();
        assert_eq!(text, "198.51.100.1:99999 admin ***");
        assert!(parse_ip_line("Ip: 1.2.3.4").is_none());
        assert!(parse_ip_line("2025-09-03 list").is_none());
    }
}
