//! A minimal SOCKS5 client (RFC 1928 CONNECT with RFC 1929 username/password),
//! for checking a service from Rust: `connexa demo` fetches a page with it.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::proto::{self, Reply, TargetAddr};

fn bad(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.into())
}

/// Connects to the SOCKS5 server at `proxy`, logs in with `user`/`password`
/// and asks it to CONNECT to `target`; returns the stream, ready to carry the
/// target's bytes. The whole negotiation must finish within `timeout`.
///
/// # Errors
/// Connection errors, `PermissionDenied` when the credentials are refused,
/// `ConnectionRefused`/`Other` with the server's reply when the CONNECT fails,
/// `InvalidData` for a peer that does not speak SOCKS5, `TimedOut`.
pub async fn connect(
    proxy: SocketAddr,
    user: &str,
    password: &str,
    target: &TargetAddr,
    timeout: Duration,
) -> io::Result<TcpStream> {
    tokio::time::timeout(timeout, negotiate(proxy, user, password, target))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "SOCKS5 negotiation timed out"))?
}

async fn negotiate(
    proxy: SocketAddr,
    user: &str,
    password: &str,
    target: &TargetAddr,
) -> io::Result<TcpStream> {
    let auth = proto::encode_auth(user, password).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "user and password must be 1..=255 bytes",
        )
    })?;
    let mut s = TcpStream::connect(proxy).await?;
    // Greeting: version 5, one method, username/password (2).
    s.write_all(&[5, 1, 2]).await?;
    let mut two = [0u8; 2];
    s.read_exact(&mut two).await?;
    if two != [5, 2] {
        return Err(bad(format!(
            "the server did not accept username/password ({two:?})"
        )));
    }
    s.write_all(&auth).await?;
    s.read_exact(&mut two).await?;
    if two[1] != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "SOCKS5 credentials refused",
        ));
    }
    s.write_all(&proto::encode_connect(target)).await?;
    let mut buf = Vec::with_capacity(32);
    loop {
        let mut byte = [0u8; 1];
        s.read_exact(&mut byte).await?;
        buf.push(byte[0]);
        match proto::parse_reply(&buf).map_err(|e| bad(e.to_string()))? {
            None if buf.len() < 262 => continue,
            None => return Err(bad("SOCKS5 reply too long")),
            Some((Reply::Succeeded, _, _)) => return Ok(s),
            Some((Reply::ConnectionRefused, _, _)) => {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    "connection refused through the service",
                ));
            }
            Some((rep, _, _)) => {
                return Err(io::Error::other(format!("SOCKS5 CONNECT failed: {rep:?}")));
            }
        }
    }
}
