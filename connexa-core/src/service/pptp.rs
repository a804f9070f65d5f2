//! The real [`TunnelOpener`]: each service's link is a user-space PPTP tunnel
//! ([`Tunnel`]) through its node — MPPE-128, IPCP, smoltcp TCP/IP — so SOCKS5
//! connections leave from the node, names resolve with the node's DNS servers
//! and liveness is an LCP Echo answered by the node.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use async_trait::async_trait;

use super::{LinkStream, TunnelError, TunnelLink, TunnelOpener};
use crate::domain::Node;
use crate::tunnel::{GreSocket, SharedGre, Tunnel, TunnelConfig};

/// Opens a node's PPTP tunnel for a SOCKS5 service. Needs `CAP_NET_RAW` (raw
/// GRE); without it `open` fails with the reason and the engine records a
/// `ServiceStartFailed`, which never demotes a `speed_ok` node.
#[derive(Debug)]
pub struct PptpOpener {
    config: TunnelConfig,
    gre: SharedGre,
}

impl PptpOpener {
    /// An opener over the process's shared GRE handle (see [`SharedGre`]).
    pub fn with_gre(config: TunnelConfig, gre: SharedGre) -> Self {
        PptpOpener { config, gre }
    }

    /// An opener over an already open GRE socket.
    pub fn with_gre_socket(config: TunnelConfig, gre: Arc<GreSocket>) -> Self {
        Self::with_gre(config, SharedGre::with_socket(gre))
    }

    async fn gre(&self) -> Result<Arc<GreSocket>, TunnelError> {
        self.gre
            .get()
            .await
            .map(Arc::clone)
            .map_err(|e| TunnelError::Open(e.to_string()))
    }
}

#[async_trait]
impl TunnelOpener for PptpOpener {
    async fn open(&self, node: &Node) -> Result<Arc<dyn TunnelLink>, TunnelError> {
        let gre = self.gre().await?;
        let tunnel = Tunnel::open(node, &self.config, gre)
            .await
            .map_err(|e| TunnelError::Open(e.to_string()))?;
        Ok(Arc::new(PptpLink(tunnel)))
    }
}

/// A [`TunnelLink`] over a [`Tunnel`].
#[derive(Debug)]
struct PptpLink(Tunnel);

#[async_trait]
impl TunnelLink for PptpLink {
    async fn connect(&self, addr: SocketAddr) -> io::Result<Box<dyn LinkStream>> {
        let stream = self.0.connect(addr).await?;
        Ok(Box::new(stream))
    }

    async fn resolve(&self, host: &str) -> io::Result<Vec<IpAddr>> {
        self.0.resolve(host).await
    }

    async fn alive(&self) -> io::Result<()> {
        if !self.0.is_alive() {
            let why = self
                .0
                .down_reason()
                .unwrap_or_else(|| "the tunnel is down".into());
            return Err(io::Error::new(io::ErrorKind::NotConnected, why));
        }
        self.0.echo().await.map(|_| ())
    }

    async fn close(&self) {
        let _ = self.0.close().await;
    }

    fn packet_path(&self, queue: usize) -> io::Result<crate::tunnel::PacketPath> {
        self.0.packet_path(queue)
    }
}
