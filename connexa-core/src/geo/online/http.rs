//! A minimal HTTP/1.1 GET client for provider APIs (http:// and https://,
//! `Connection: close`, chunked or sized bodies). Request URLs may hold an API
//! key, so they never appear in an error or a log line.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Largest response body read.
const MAX_BODY: usize = 1 << 20;

/// A response: status, `Retry-After` (seconds form), body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Response {
    pub status: u16,
    pub retry_after: Option<Duration>,
    pub body: Vec<u8>,
}

/// `scheme://host[:port]` split up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Base {
    tls: bool,
    host: String,
    port: u16,
    /// Path prefix without a trailing `/`.
    prefix: String,
}

impl Base {
    /// Parses a base URL (`https://ipinfo.io`, `http://127.0.0.1:8080/x`).
    pub(crate) fn parse(url: &str) -> Result<Base, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(format!("{url:?} is not an http:// or https:// URL"));
        };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
                match p.parse::<u16>() {
                    Ok(p) => (h, p),
                    Err(_) => return Err(format!("{url:?}: bad port")),
                }
            }
            _ => (authority, if tls { 443 } else { 80 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("{url:?}: no host"));
        }
        Ok(Base {
            tls,
            host: host.to_owned(),
            port,
            prefix: path.trim_end_matches('/').to_owned(),
        })
    }
}

fn tls() -> TlsConnector {
    static C: OnceLock<TlsConnector> = OnceLock::new();
    C.get_or_init(|| {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| b.with_root_certificates(roots).with_no_client_auth())
            .unwrap_or_else(|_| {
                ClientConfig::builder()
                    .with_root_certificates(RootCertStore::empty())
                    .with_no_client_auth()
            });
        TlsConnector::from(Arc::new(config))
    })
    .clone()
}

/// GET `path_and_query` (starting with `/`) under `base`, with extra headers.
pub(crate) async fn get(
    base: &Base,
    path_and_query: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<Response, String> {
    tokio::time::timeout(timeout, get_inner(base, path_and_query, headers))
        .await
        .map_err(|_| format!("no answer from {} within {timeout:?}", base.host))?
}

async fn get_inner(
    base: &Base,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> Result<Response, String> {
    let tcp = TcpStream::connect((base.host.as_str(), base.port))
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", base.host))?;
    let mut req = format!(
        "GET {}{} HTTP/1.1\r\nHost: {}\r\nUser-Agent: connexa\r\nAccept: application/json\r\nConnection: close\r\n",
        base.prefix, path_and_query, base.host
    );
    for (k, v) in headers {
        req.push_str(k);
        req.push_str(": ");
        req.push_str(v);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    if base.tls {
        let name = ServerName::try_from(base.host.clone())
            .map_err(|_| format!("{}: not a TLS server name", base.host))?;
        let stream = tls()
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {}: {e}", base.host))?;
        exchange(stream, &req, &base.host).await
    } else {
        exchange(tcp, &req, &base.host).await
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    req: &str,
    host: &str,
) -> Result<Response, String> {
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("sending to {host}: {e}"))?;
    let mut raw = Vec::new();
    let mut limited = (&mut s).take((MAX_BODY + 64 * 1024) as u64);
    // A TLS peer that closes without close_notify still gave us the bytes.
    if let Err(e) = limited.read_to_end(&mut raw).await
        && raw.is_empty()
    {
        return Err(format!("reading from {host}: {e}"));
    }
    parse(&raw).map_err(|e| format!("{host}: {e}"))
}

/// Parses a whole HTTP/1.x response.
pub(crate) fn parse(raw: &[u8]) -> Result<Response, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("malformed HTTP response (no header end)")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "malformed HTTP header")?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or("malformed HTTP status line")?;
    let mut chunked = false;
    let mut retry_after = None;
    let mut length = None;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k.trim().to_ascii_lowercase().as_str() {
            "transfer-encoding" => chunked = v.to_ascii_lowercase().contains("chunked"),
            "content-length" => length = v.parse::<usize>().ok(),
            "retry-after" => retry_after = v.parse::<u64>().ok().map(Duration::from_secs),
            _ => {}
        }
    }
    let rest = &raw[end + 4..];
    let body = if chunked {
        dechunk(rest)?
    } else {
        match length {
            Some(n) => rest.get(..n).ok_or("truncated HTTP body")?.to_vec(),
            None => rest.to_vec(),
        }
    };
    if body.len() > MAX_BODY {
        return Err("HTTP body too large".into());
    }
    Ok(Response {
        status,
        retry_after,
        body,
    })
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("malformed chunked body")?;
        let size_text = std::str::from_utf8(&rest[..eol]).map_err(|_| "malformed chunk size")?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| "malformed chunk size")?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = rest.get(..size).ok_or("truncated chunk")?;
        out.extend_from_slice(chunk);
        if out.len() > MAX_BODY {
            return Err("HTTP body too large".into());
        }
        rest = rest.get(size + 2..).ok_or("truncated chunk")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bases_and_responses_parse() {
        let b = Base::parse("http://127.0.0.1:8080/api/").unwrap();
        assert_eq!(
            (b.tls, b.host.as_str(), b.port, b.prefix.as_str()),
            (false, "127.0.0.1", 8080, "/api")
        );
        let b = Base::parse("https://ipinfo.io").unwrap();
        assert_eq!((b.tls, b.port, b.prefix.as_str()), (true, 443, ""));
        assert!(Base::parse("ftp://x").is_err());
        let r = parse(b"HTTP/1.1 429 Too Many\r\nRetry-After: 7\r\nContent-Length: 2\r\n\r\n{}")
            .unwrap();
        assert_eq!(
            (r.status, r.retry_after, r.body.as_slice()),
            (429, Some(Duration::from_secs(7)), &b"{}"[..])
        );
        let r = parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap();
        assert_eq!(r.body, b"abcde");
        assert!(parse(b"garbage").is_err());
    }
}
