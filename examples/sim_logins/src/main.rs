//! A simulated fleet that serves logins: healthy nodes, nodes that reject the
//! password (E=691), refuse the call, or never answer LCP — auth-tested with
//! the real prober, client and fleet in one process on loopback, then closed
//! politely. Then a fleet with tunnels: a full MPPE tunnel to a node whose
//! host serves 300 kB at 200 kB/s. Needs CAP_NET_RAW (run as root). Finishes
//! in about two seconds.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use connexa_core::domain::{Level, NodeId};
use connexa_core::ports::{ProbeDepth, Prober};
use connexa_core::pptp::ppp::fsm::FsmConfig;
use connexa_core::probe::{LightProber, ProbeConfig};
use connexa_core::sim::{Behaviour, Fleet, FleetSpec, TUNNEL_HOST, TunnelSpec, pattern};
use connexa_core::speed::http::{self, HttpUrl};
use connexa_core::tunnel::{AuthConfig, Tunnel, TunnelConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let fleet = Fleet::start(
        FleetSpec::new(8)
            .first_ip(Ipv4Addr::new(127, 32, 0, 1))
            .port(21725)
            .mix(vec![
                (Behaviour::Healthy, 5),
                (Behaviour::AuthReject, 1),
                (Behaviour::CallReject(7), 1),
                (Behaviour::LcpSilent, 1),
            ]),
    )
    .await?;
    if let Some(why) = fleet.logins_unavailable() {
        bail!("the simulated fleet cannot serve logins: {why}");
    }
    let prober = LightProber::new(ProbeConfig {
        attempts: 1,
        icmp: None,
        ..ProbeConfig::default()
    })
    .with_auth_config(AuthConfig {
        // A node that never answers LCP fails after 4 x 150 ms.
        lcp: FsmConfig {
            restart: Duration::from_millis(150),
            max_configure: 4,
            ..FsmConfig::default()
        },
        ..AuthConfig::default()
    });
    let outcomes = futures::future::join_all(fleet.nodes().iter().enumerate().map(|(i, n)| {
        let node = n.node(NodeId(i as i64 + 1));
        let prober = &prober;
        async move { prober.probe(&node, ProbeDepth::Auth).await }
    }))
    .await;
    let mut ok = 0;
    for (n, out) in fleet.nodes().iter().zip(outcomes) {
        let out = out.context("the auth test needs CAP_NET_RAW: run as root")?;
        println!(
            "{:<12} {:<14} {} as {:<6} -> reached {:?}{}",
            n.ip.to_string(),
            n.behaviour.to_string(),
            n.port,
            n.login,
            out.reached,
            out.failure
                .as_ref()
                .map(|f| format!(", {f}"))
                .unwrap_or_default()
        );
        if (out.reached == Level::Auth) != (n.behaviour == Behaviour::Healthy) {
            bail!("unexpected outcome for a {} node: {out:?}", n.behaviour);
        }
        ok += usize::from(out.reached == Level::Auth);
    }
    println!(
        "{ok} of {} nodes logged in; fleet GRE socket: {:?}",
        fleet.nodes().len(),
        fleet.gre_stats()
    );
    fleet.close().await;

    // Tunnels: CCP/MPPE + IPCP after login, an HTTP byte source behind the node.
    let fleet = Fleet::start(
        FleetSpec::new(1)
            .first_ip(Ipv4Addr::new(127, 32, 1, 1))
            .port(21725)
            .tunnels(TunnelSpec {
                rate_limit: Some(200_000),
                ..TunnelSpec::default()
            }),
    )
    .await?;
    let n = &fleet.nodes()[0];
    // One raw GRE socket per process: the prober's.
    let gre = Arc::clone(prober.gre_socket().await?);
    let t = Tunnel::open_addr(
        n.addr(),
        &n.login,
        &n.password,
        &TunnelConfig::default(),
        gre,
    )
    .await
    .context("tunnel to the simulated node")?;
    let mut s = t.connect((TUNNEL_HOST, 80).into()).await?;
    let url = HttpUrl::parse(&format!("http://{TUNNEL_HOST}/bytes?300000"))?;
    let started = std::time::Instant::now();
    let (mut i, mut bad) = (0u64, 0u64);
    let (_, len) = http::get(&mut s, &url, |d| {
        for b in d {
            bad += u64::from(*b != pattern(i));
            i += 1;
        }
    })
    .await?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "tunnel {} -> {}: {len} bytes in {secs:.2} s = {:.0} kB/s (node limit 200 kB/s), {bad} bad",
        t.local_addr(),
        TUNNEL_HOST,
        len as f64 / secs / 1000.0
    );
    drop(s);
    let teardown = t.close().await;
    println!("teardown: {teardown:?}");
    fleet.close().await;
    if len != 300_000 || bad != 0 {
        bail!("the tunnel did not carry the bytes intact");
    }
    Ok(())
}
