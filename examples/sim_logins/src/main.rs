//! A simulated fleet that serves logins: healthy nodes, nodes that reject the
//! password (E=691), refuse the call, or never answer LCP — auth-tested with
//! the real prober, client and fleet in one process on loopback, then closed
//! politely. Needs CAP_NET_RAW (run as root). Finishes in about a second.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Context, bail};
use connexa_core::domain::{Level, NodeId};
use connexa_core::ports::{ProbeDepth, Prober};
use connexa_core::pptp::ppp::fsm::FsmConfig;
use connexa_core::probe::{LightProber, ProbeConfig};
use connexa_core::sim::{Behaviour, Fleet, FleetSpec};
use connexa_core::tunnel::AuthConfig;

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
    Ok(())
}
