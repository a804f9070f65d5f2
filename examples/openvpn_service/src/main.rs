//! An `openvpn` service: Debian's `openvpn` server whose clients' traffic
//! leaves through a node's PPTP tunnel — a phone or a laptop connects with a
//! standard OpenVPN client and the `.ovpn` profile Connexa writes.
//!
//! The node is one simulated PPTP server on loopback (`connexa_core::sim`).
//! `OpenvpnLauncher` opens the tunnel as `cx7`, starts the server on a UDP
//! port of its range with a client subnet of its own, routes that subnet into
//! `cx7` (a policy rule, NAT to the PPP address, filters); the profile is
//! written from the stored endpoint and the CA (only its header is printed:
//! it holds the client's key); what the service installed on the host is
//! listed; stop removes all of it. (The lab test `lab_openvpn_*` connects a
//! real client and fetches through it.)
//!
//! Needs root and `apt install openvpn nftables`. It runs in a network
//! namespace of its own, so the host's interfaces, rules and nft tables are
//! not touched.
//! Run: `sudo cargo run -p example-openvpn-service` (a few seconds).

use std::sync::Arc;

use anyhow::{Context, bail, ensure};
use connexa_core::domain::{NodeId, Status};
use connexa_core::openvpn::{self, OpenvpnConfig, OpenvpnLauncher};
use connexa_core::ports::ServiceLauncher;
use connexa_core::service::PptpOpener;
use connexa_core::sim::{Fleet, FleetSpec, TunnelSpec};
use connexa_core::tunnel::{GreSocket, TunnelConfig};

async fn run() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetSpec::new(1).tunnels(TunnelSpec::default())).await?;
    let mut node = fleet.nodes()[0].node(NodeId(7));
    node.status = Status::SpeedOk;
    let dir = tempfile::tempdir()?;
    let gre = GreSocket::open().context("a raw GRE socket")?;
    let ovpn = OpenvpnLauncher::new(
        Arc::new(PptpOpener::with_gre_socket(TunnelConfig::default(), gre)),
        OpenvpnConfig {
            dir: dir.path().to_path_buf(),
            bind: "127.0.0.1".parse()?,
            public_host: Some("vpn.example.net".into()),
            ..OpenvpnConfig::default()
        },
    );
    let ep = ovpn.start(&node, None).await?;
    println!(
        "openvpn service of node 7: udp {}:{}, clients {}",
        ep.host,
        ep.port,
        ep.username.trim_start_matches("openvpn:")
    );

    let ca = openvpn::ca_certificate(dir.path())?;
    let profile = openvpn::profile(node.id, &ep, &ca)?;
    let path = dir.path().join("node7.ovpn");
    std::fs::write(&path, &profile)?;
    println!(
        "profile written to {} ({} bytes); it begins:",
        path.display(),
        profile.len()
    );
    for line in profile.lines().take_while(|l| !l.starts_with('<')) {
        println!("    {line}");
    }

    let installed = ovpn.installed(node.id).await;
    println!("installed on the host:");
    for line in &installed {
        println!("    {line}");
    }
    ensure!(
        installed.iter().any(|l| l.contains("default dev cx7")),
        "no route into cx7"
    );

    ovpn.stop(node.id).await?;
    let left = ovpn.installed(node.id).await;
    ensure!(left.is_empty(), "left after stop: {left:?}");
    ensure!(
        std::net::UdpSocket::bind(("127.0.0.1", ep.port)).is_ok(),
        "the port is still taken"
    );
    println!(
        "stopped: no rule, route, nft table or process left, port {} free",
        ep.port
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("run as root: an openvpn service needs CAP_NET_ADMIN and CAP_NET_RAW");
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
