//! A minimal HTTP/1.1 client over any tokio stream: enough to download a file
//! or stream an upload body through a tunnel. It speaks plain HTTP over
//! whatever stream it is given; for `https://` URLs ([`HttpUrl::tls`]) the
//! caller wraps the stream in TLS first (see [`super::tls`]).

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest response header block accepted.
const MAX_HEAD: usize = 16 * 1024;

/// A parsed `http://host[:port]/path` or `https://host[:port]/path` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// `https://`: the connection is TLS (SNI and certificate name: [`HttpUrl::host`]).
    pub tls: bool,
    /// Host name or IP literal.
    pub host: String,
    /// Port (80, or 443 for `https://`, when absent).
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl HttpUrl {
    /// Parses an `http://` or `https://` URL.
    ///
    /// # Errors
    /// Another scheme, no host, or a bad port.
    pub fn parse(url: &str) -> io::Result<HttpUrl> {
        let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("{url}: {why}"));
        let (tls, rest) = if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else {
            return Err(bad("only http:// and https:// URLs are supported"));
        };
        let default_port = if tls { 443 } else { 80 };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse::<u16>().map_err(|_| bad("bad port"))?),
            None => (authority, default_port),
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        Ok(HttpUrl {
            tls,
            host: host.to_owned(),
            port,
            path: path.to_owned(),
        })
    }

    fn host_header(&self) -> String {
        if self.port == if self.tls { 443 } else { 80 } {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// The head of a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// The status code.
    pub status: u16,
    /// `Content-Length`, if given.
    pub content_length: Option<u64>,
    /// The client address a keyed speed endpoint saw
    /// ([`super::keyed::CLIENT_ADDR_HEADER`]), if given.
    pub client_addr: Option<std::net::IpAddr>,
}

/// Reads the response head; returns it and the body bytes read past it.
async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> io::Result<(ResponseHead, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let rest = buf[end + 4..].to_vec();
            let mut lines = head.split("\r\n");
            let status_line = lines.next().unwrap_or_default();
            let status = status_line
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("bad status line {status_line:?}"),
                    )
                })?;
            let mut content_length = None;
            let mut client_addr = None;
            for l in lines {
                let Some((k, v)) = l.split_once(':') else {
                    continue;
                };
                let k = k.trim();
                if k.eq_ignore_ascii_case("content-length") {
                    content_length = v.trim().parse().ok();
                } else if k.eq_ignore_ascii_case(super::keyed::CLIENT_ADDR_HEADER) {
                    client_addr = v.trim().parse().ok();
                }
            }
            return Ok((
                ResponseHead {
                    status,
                    content_length,
                    client_addr,
                },
                rest,
            ));
        }
        if buf.len() > MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "response head too long",
            ));
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before the response head",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn require_ok(head: &ResponseHead, url: &HttpUrl) -> io::Result<()> {
    if (200..300).contains(&head.status) {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "HTTP {} from {}://{}{}",
            head.status,
            if url.tls { "https" } else { "http" },
            url.host_header(),
            url.path
        )))
    }
}

/// `GET` with `Connection: close`; every body chunk is passed to `on_body` as it
/// arrives (the body is not kept). Returns the head and the body length. The
/// body ends at `Content-Length` or at EOF.
///
/// # Errors
/// I/O errors, a malformed head, a non-2xx status, or a body shorter than its
/// `Content-Length`.
pub async fn get<S, F>(stream: &mut S, url: &HttpUrl, on_body: F) -> io::Result<(ResponseHead, u64)>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnMut(&[u8]),
{
    let mut on_body = on_body;
    get_with_head(
        stream,
        url,
        |_| {},
        |d| {
            on_body(d);
            Ok(())
        },
    )
    .await
}

/// As [`get`], with `on_head` called with the (2xx) response head before the
/// body arrives, and an `on_body` that can end the download with an error.
///
/// # Errors
/// As [`get`], and the first error of `on_body`.
pub async fn get_with_head<S, H, F>(
    stream: &mut S,
    url: &HttpUrl,
    on_head: H,
    mut on_body: F,
) -> io::Result<(ResponseHead, u64)>
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: FnOnce(&ResponseHead),
    F: FnMut(&[u8]) -> io::Result<()>,
{
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: connexa\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        url.path,
        url.host_header()
    );
    stream.write_all(req.as_bytes()).await?;
    let (head, first) = read_head(stream).await?;
    require_ok(&head, url)?;
    on_head(&head);
    let limit = head.content_length.unwrap_or(u64::MAX);
    let mut total = 0u64;
    let take = |data: &[u8], total: &mut u64, on_body: &mut F| {
        let room = usize::try_from(limit - *total).unwrap_or(usize::MAX);
        let data = &data[..data.len().min(room)];
        *total += data.len() as u64;
        on_body(data)
    };
    take(&first, &mut total, &mut on_body)?;
    let mut buf = vec![0u8; 64 * 1024];
    while total < limit {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        take(&buf[..n], &mut total, &mut on_body)?;
    }
    if head.content_length.is_some_and(|l| total < l) {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("body ended after {total} of {limit} bytes"),
        ));
    }
    Ok((head, total))
}

/// Sends the head of a `POST` of `length` octets (`application/octet-stream`);
/// the caller then writes the body.
///
/// # Errors
/// I/O errors.
pub async fn post_head<S: AsyncWrite + Unpin>(
    stream: &mut S,
    url: &HttpUrl,
    length: u64,
) -> io::Result<()> {
    let req = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: connexa\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {length}\r\nConnection: close\r\n\r\n",
        url.path,
        url.host_header()
    );
    stream.write_all(req.as_bytes()).await
}

/// Reads the response to a request whose body was sent (status checked).
///
/// # Errors
/// I/O errors, a malformed head, a non-2xx status.
pub async fn finish<S: AsyncRead + Unpin>(
    stream: &mut S,
    url: &HttpUrl,
) -> io::Result<ResponseHead> {
    let (head, _) = read_head(stream).await?;
    require_ok(&head, url)?;
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            HttpUrl::parse("http://10.78.0.1/10M.bin").unwrap(),
            HttpUrl {
                tls: false,
                host: "10.78.0.1".into(),
                port: 80,
                path: "/10M.bin".into()
            }
        );
        assert_eq!(HttpUrl::parse("http://h:8080").unwrap().path, "/");
        assert_eq!(HttpUrl::parse("http://h:8080/x?y").unwrap().port, 8080);
        let u = HttpUrl::parse("https://files.example/x").unwrap();
        assert!(u.tls);
        assert_eq!((u.port, u.host_header()), (443, "files.example".to_owned()));
        assert_eq!(HttpUrl::parse("https://h:8443/").unwrap().port, 8443);
        assert!(!HttpUrl::parse("http://h/").unwrap().tls);
        assert!(HttpUrl::parse("ftp://h/").is_err());
        assert!(HttpUrl::parse("http:///x").is_err());
        assert!(HttpUrl::parse("http://h:99999/").is_err());
    }

    #[tokio::test]
    async fn get_against_a_local_server_counts_the_body_and_checks_the_length() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            for body_len in [100_000usize, 10] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut req = vec![0u8; 1024];
                let n = s.read(&mut req).await.unwrap();
                assert!(req[..n].starts_with(b"GET /f HTTP/1.1\r\n"));
                // The second response promises more than it sends.
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                    body_len.max(20)
                );
                s.write_all(head.as_bytes()).await.unwrap();
                s.write_all(&vec![7u8; body_len]).await.unwrap();
            }
        });
        let url = HttpUrl::parse(&format!("http://{addr}/f")).unwrap();
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut seen = 0usize;
        let (head, n) = get(&mut s, &url, |d| seen += d.len()).await.unwrap();
        assert_eq!(
            (head.status, head.content_length, n, seen),
            (200, Some(100_000), 100_000, 100_000)
        );
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let e = get(&mut s, &url, |_| {}).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        server.await.unwrap();
    }
}
