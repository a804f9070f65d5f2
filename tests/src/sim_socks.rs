//! Helpers for SOCKS5 services over simulated tunnels (the `sim_socks` test and
//! the `bench_sim_socks` benchmark): the simulator's `GET /bytes?N` body is
//! `connexa_core::sim::pattern(i)` for i in 0..N, so its SHA-256 is known in
//! advance ([`pattern_sha256`]); [`get_bytes`] downloads it over any stream
//! (a SOCKS5 connection or a `TunnelStream`) and hashes it as it streams.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use connexa_core::domain::{NodeId, ServiceEndpoint};
use connexa_core::sim::{TUNNEL_HOST, pattern};
use connexa_core::socks::client;
use connexa_core::socks::proto::TargetAddr;
use connexa_core::speed::http::{self, HttpUrl};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// The simulator's HTTP host behind every tunnel: `10.78.0.1:80`.
pub fn tunnel_host() -> SocketAddr {
    SocketAddr::from((TUNNEL_HOST, 80))
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex SHA-256 of the first `n` bytes of the simulator's pattern — what a
/// correct `GET /bytes?n` body hashes to.
pub fn pattern_sha256(n: u64) -> String {
    let mut h = Sha256::new();
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut i = 0u64;
    while i < n {
        buf.clear();
        let end = (i + 64 * 1024).min(n);
        buf.extend((i..end).map(pattern));
        h.update(&buf);
        i = end;
    }
    hex(&h.finalize())
}

/// `GET /bytes?n` from the simulator's host over `stream`; returns the body's
/// length and hex SHA-256.
///
/// # Errors
/// I/O errors and HTTP errors of [`http::get`].
pub async fn get_bytes<S>(stream: &mut S, n: u64) -> io::Result<(u64, String)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let url = HttpUrl::parse(&format!("http://{TUNNEL_HOST}/bytes?{n}"))?;
    let mut h = Sha256::new();
    let (_, len) = http::get(stream, &url, |d| h.update(d)).await?;
    Ok((len, hex(&h.finalize())))
}

/// A SOCKS5 connection through the service `ep` to the simulator's host.
///
/// # Errors
/// As [`client::connect`].
pub async fn socks_to_host(ep: &ServiceEndpoint) -> io::Result<TcpStream> {
    let proxy = SocketAddr::new(ep.host.parse().map_err(io::Error::other)?, ep.port);
    client::connect(
        proxy,
        &ep.username,
        ep.password.expose(),
        &TargetAddr::Ip(tunnel_host()),
        Duration::from_secs(30),
    )
    .await
}

/// `GET /bytes?n` through the service `ep` (SOCKS5, then the node's tunnel).
///
/// # Errors
/// As [`socks_to_host`] and [`get_bytes`].
pub async fn get_via_socks(ep: &ServiceEndpoint, n: u64) -> io::Result<(u64, String)> {
    let mut s = socks_to_host(ep).await?;
    get_bytes(&mut s, n).await
}

/// The node id given to the simulated node at `index` (1-based ids).
pub fn node_id(index: usize) -> NodeId {
    NodeId(i64::try_from(index).unwrap_or(i64::MAX - 1) + 1)
}
