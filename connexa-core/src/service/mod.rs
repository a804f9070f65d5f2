//! What a SOCKS5 service needs from a node's tunnel, as two small object-safe
//! traits: a [`TunnelOpener`] brings a node's tunnel up and hands out a
//! [`TunnelLink`]; the link opens TCP streams through the tunnel, resolves names
//! with the tunnel's DNS servers, answers liveness checks and closes politely.
//!
//! The real implementation is the user-space PPTP tunnel (`tunnel/`): TCP
//! streams run over its user-space TCP/IP stack, names are resolved with the DNS
//! servers IPCP gave, liveness is an LCP Echo. [`DirectOpener`] is a stand-in
//! that connects from the local host; it exists for tests, examples and
//! development only and never goes through any node.
//!
//! ```
//! # async fn demo(node: connexa_core::domain::Node) -> std::io::Result<()> {
//! use connexa_core::service::{DirectOpener, TunnelOpener};
//! let link = DirectOpener::loopback_only().open(&node).await.map_err(std::io::Error::other)?;
//! let addrs = link.resolve("localhost").await?;
//! assert!(addrs.iter().all(|a| a.is_loopback()));
//! link.close().await;
//! # Ok(()) }
//! ```

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::domain::Node;

mod kinds;
mod pptp;
pub use kinds::KindLauncher;
pub use pptp::PptpOpener;

/// A byte stream opened through a tunnel (a TCP connection to the target).
pub trait LinkStream: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> LinkStream for T {}

/// A node's tunnel could not be brought up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TunnelError {
    /// Connecting, logging in or negotiating the tunnel failed.
    #[error("cannot open the tunnel: {0}")]
    Open(String),
}

/// Brings a node's tunnel up.
#[async_trait]
pub trait TunnelOpener: Send + Sync {
    /// Opens a tunnel through `node` (PPTP control connection, call, login,
    /// IPCP) and returns a link that can be shared by many connections.
    async fn open(&self, node: &Node) -> Result<Arc<dyn TunnelLink>, TunnelError>;
}

/// An open tunnel, shared by every connection of one service.
#[async_trait]
pub trait TunnelLink: Send + Sync {
    /// Opens a TCP stream to `addr` through the tunnel.
    async fn connect(&self, addr: SocketAddr) -> io::Result<Box<dyn LinkStream>>;

    /// Resolves a host name with the tunnel's DNS servers (those IPCP gave).
    async fn resolve(&self, host: &str) -> io::Result<Vec<IpAddr>>;

    /// Checks that the tunnel is alive (the peer answers an LCP Echo-Request);
    /// the error says why not.
    async fn alive(&self) -> io::Result<()>;

    /// Tears the tunnel down politely. Later calls to `connect` fail.
    async fn close(&self);

    /// Takes the tunnel's raw IPv4 datagrams (for a `tun` service, see
    /// [`Tunnel::packet_path`](crate::tunnel::Tunnel::packet_path)): from then
    /// on `connect` and `resolve` get nothing through. `queue` bounds each
    /// direction. The default: `Unsupported` (a link without IP datagrams,
    /// such as [`DirectOpener`]'s).
    fn packet_path(&self, _queue: usize) -> io::Result<crate::tunnel::PacketPath> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this tunnel carries no raw IP datagrams",
        ))
    }
}

/// **For tests, examples and development only**: a "tunnel" that connects from
/// the local host and resolves names locally. It never goes through a node, so
/// a service started with it proves nothing about the node.
///
/// [`DirectOpener::loopback_only`] refuses every address outside loopback
/// (`PermissionDenied`, which a SOCKS5 client sees as "connection not allowed by
/// ruleset") and resolves only IP literals and `localhost`, so that nothing
/// leaves the machine, not even a DNS query.
#[derive(Debug, Clone, Default)]
pub struct DirectOpener {
    loopback_only: bool,
}

impl DirectOpener {
    /// Connects anywhere the local host can reach.
    pub fn new() -> Self {
        DirectOpener {
            loopback_only: false,
        }
    }

    /// Connects only to loopback addresses and resolves only IP literals and `localhost`.
    pub fn loopback_only() -> Self {
        DirectOpener {
            loopback_only: true,
        }
    }
}

#[async_trait]
impl TunnelOpener for DirectOpener {
    async fn open(&self, _node: &Node) -> Result<Arc<dyn TunnelLink>, TunnelError> {
        Ok(Arc::new(DirectLink {
            loopback_only: self.loopback_only,
            closed: AtomicBool::new(false),
        }))
    }
}

/// The link of a [`DirectOpener`].
#[derive(Debug)]
struct DirectLink {
    loopback_only: bool,
    closed: AtomicBool,
}

impl DirectLink {
    fn check_open(&self) -> io::Result<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(io::Error::new(io::ErrorKind::NotConnected, "link closed"))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl TunnelLink for DirectLink {
    async fn connect(&self, addr: SocketAddr) -> io::Result<Box<dyn LinkStream>> {
        self.check_open()?;
        if self.loopback_only && !addr.ip().is_loopback() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{addr} is not a loopback address"),
            ));
        }
        let s = tokio::net::TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(Box::new(s))
    }

    async fn resolve(&self, host: &str) -> io::Result<Vec<IpAddr>> {
        self.check_open()?;
        if let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse() {
            return Ok(vec![ip]);
        }
        if self.loopback_only {
            return if host.eq_ignore_ascii_case("localhost") {
                Ok(vec![
                    IpAddr::V4(Ipv4Addr::LOCALHOST),
                    IpAddr::V6(Ipv6Addr::LOCALHOST),
                ])
            } else {
                Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{host}: only localhost resolves on a loopback-only link"),
                ))
            };
        }
        let addrs: Vec<IpAddr> = tokio::net::lookup_host((host, 0))
            .await?
            .map(|a| a.ip())
            .collect();
        if addrs.is_empty() {
            Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{host}: no address"),
            ))
        } else {
            Ok(addrs)
        }
    }

    async fn alive(&self) -> io::Result<()> {
        self.check_open()
    }

    async fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> Node {
        Node {
            status: crate::domain::Status::SpeedOk,
            service_wanted: true,
            enrichment: Default::default(),
            ..Node::added(
                crate::domain::NodeId(1),
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                1723,
                "a",
                "b".into(),
                chrono::Utc::now(),
            )
        }
    }

    #[tokio::test]
    async fn loopback_only_link_stays_on_loopback() {
        let link = DirectOpener::loopback_only().open(&node()).await.unwrap();
        let e = link
            .connect("192.0.2.1:80".parse().unwrap())
            .await
            .err()
            .unwrap();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert_eq!(
            link.resolve("example.com").await.unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert_eq!(
            link.resolve("[::1]").await.unwrap(),
            vec![IpAddr::V6(Ipv6Addr::LOCALHOST)]
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        assert!(link.connect(addr).await.is_ok());
        assert!(link.alive().await.is_ok());
        link.close().await;
        assert!(link.alive().await.is_err());
        assert_eq!(
            link.connect(addr).await.err().unwrap().kind(),
            io::ErrorKind::NotConnected
        );
    }
}
