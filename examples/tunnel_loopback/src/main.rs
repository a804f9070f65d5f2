//! A whole tunnel on loopback: an in-process PPTP server
//! (`connexa_tests::loopback_pptp`: LCP, MS-CHAPv2, CCP/MPPE-128 stateless,
//! IPCP, and a small host at 10.78.0.1 with DNS and an HTTP byte source) and
//! the client [`Tunnel`] sharing the process's raw GRE socket. The client
//! resolves a name through the DNS server IPCP gave it, downloads 1 MB over
//! TCP through the encrypted tunnel, checks every byte, measures the speed for
//! two seconds and closes the tunnel politely.
//!
//! Needs CAP_NET_RAW (run as root, or `setcap cap_net_raw+ep` the binary).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, ensure};
use connexa_core::domain::Secret;
use connexa_core::speed::http::{self, HttpUrl};
use connexa_core::speed::{SpeedConfig, measure_tunnel};
use connexa_core::tunnel::{GreSocket, Tunnel, TunnelConfig};
use connexa_tests::loopback_pptp::{Log, Mode, listen, pattern};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let gre = GreSocket::open().context("open the raw GRE socket (needs CAP_NET_RAW)")?;
    let server = listen(Arc::clone(&gre), Mode::Full, Log::default()).await;
    let tunnel = Tunnel::open_addr(
        server,
        "alice",
        &Secret::new("s3cret"),
        &TunnelConfig::default(),
        gre,
    )
    .await
    .context("open the tunnel")?;
    println!(
        "tunnel up: our address {}, server {:?}, DNS {:?}, MTU {}",
        tunnel.local_addr(),
        tunnel.peer_addr(),
        tunnel.dns(),
        tunnel.mtu()
    );
    println!("LCP echo through the tunnel: {:.2?}", tunnel.echo().await?);

    let url = HttpUrl::parse("http://files.example/bytes?1000000")?;
    let ip = tunnel.resolve(&url.host).await?[0];
    println!("{} resolved through the tunnel to {ip}", url.host);
    let mut stream = tunnel.connect(SocketAddr::new(ip, url.port)).await?;
    let (mut i, mut bad) = (0u64, 0u64);
    let (_, n) = http::get(&mut stream, &url, |d| {
        for b in d {
            bad += u64::from(*b != pattern(i));
            i += 1;
        }
    })
    .await?;
    drop(stream);
    ensure!(n == 1_000_000 && bad == 0, "{n} bytes, {bad} wrong");
    println!("downloaded {n} bytes through MPPE, all correct");

    let cfg = SpeedConfig {
        download_urls: vec!["http://10.78.0.1/bytes?2000000".into()],
        duration: Duration::from_secs(2),
        warmup: Duration::from_millis(500),
        streams: 2,
        ..SpeedConfig::default()
    };
    let r = measure_tunnel(&tunnel, &cfg).await?;
    println!(
        "speed: {:.1} Mbit/s down (goodput, {} bytes in the window), latency {:?} ms",
        r.down_mbps, r.bytes_down, r.latency_ms
    );
    let teardown = tunnel.close().await;
    ensure!(
        teardown.lcp_closed && teardown.call_cleared && teardown.control_stopped,
        "{teardown:?}"
    );
    println!("closed politely: {teardown:?}");
    Ok(())
}
