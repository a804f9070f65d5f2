//! A `tun` service: a node's PPTP tunnel as a kernel network interface
//! (`cx7`), what `pppd` gives as `ppp0` but in user space — then any program
//! reaches the node's network with plain sockets.
//!
//! The node is one simulated PPTP server on loopback (`connexa_core::sim`:
//! MS-CHAPv2, MPPE-128, IPCP, and an HTTP host at 10.78.0.1 behind its
//! tunnel). `TunLauncher` opens the tunnel and creates the interface; a plain
//! `TcpStream` (the kernel's TCP, no Connexa code) downloads from 10.78.0.1
//! through it; the bytes are checked; stop removes the interface.
//!
//! Needs root (CAP_NET_ADMIN for the interface, CAP_NET_RAW for GRE). It
//! runs in a network namespace of its own, so the host's interfaces and
//! routes are not touched.
//! Run: `sudo cargo run -p example-tun-service` (about a second).

use std::sync::Arc;

use anyhow::{Context, bail, ensure};
use connexa_core::domain::NodeId;
use connexa_core::ports::ServiceLauncher;
use connexa_core::service::PptpOpener;
use connexa_core::sim::{Fleet, FleetSpec, TUNNEL_HOST, TunnelSpec, pattern};
use connexa_core::tun::{TunConfig, TunLauncher};
use connexa_core::tunnel::{GreSocket, TunnelConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BYTES: usize = 200_000;

async fn run() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetSpec::new(1).tunnels(TunnelSpec::default())).await?;
    let node = fleet.nodes()[0].node(NodeId(7));
    let gre = GreSocket::open().context("a raw GRE socket")?;
    let tun = TunLauncher::new(
        Arc::new(PptpOpener::with_gre_socket(TunnelConfig::default(), gre)),
        TunConfig::default(),
    );
    tun.start(&node, None).await?;
    let name = tun.interface(node.id).context("the interface")?;
    let local = tun.local_addr(node.id).context("the PPP address")?;
    println!("tun service of node 7: interface {name}, PPP address {local}");

    // The kernel's TCP, routed through the interface to the node's side.
    let mut s = tokio::net::TcpStream::connect((TUNNEL_HOST, 80)).await?;
    s.write_all(format!("GET /bytes?{BYTES} HTTP/1.0\r\n\r\n").as_bytes())
        .await?;
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).await?;
    let at = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("an HTTP reply")?;
    let body = &reply[at + 4..];
    ensure!(body.len() == BYTES, "{} bytes, not {BYTES}", body.len());
    ensure!(
        body.iter()
            .enumerate()
            .all(|(i, b)| *b == pattern(i as u64)),
        "the bytes differ from the host's"
    );
    let counters = tun.counters(node.id).context("counters")?;
    println!(
        "downloaded {BYTES} bytes from {TUNNEL_HOST} through {name} with a plain TcpStream, \
         every byte checked ({} bytes came down the tunnel)",
        counters.bytes_down
    );

    tun.stop(node.id).await?;
    ensure!(
        !std::path::Path::new("/sys/class/net").join(&name).exists(),
        "{name} is still there"
    );
    println!("stopped: {name} is gone");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "run as root: a tun service needs CAP_NET_ADMIN (the interface) and CAP_NET_RAW (GRE)"
        );
    }
    // A network namespace of our own (before any thread starts), loopback up.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET)")?;
    let up = std::process::Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .context("ip link set lo up")?;
    ensure!(up.success(), "ip link set lo up failed");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run())
}
