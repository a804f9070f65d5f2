//! Truth over bad links: a simulated fleet whose nodes lose 5 % of packets
//! each way and sit 150 ms away (`lossy:5+latency:150`), 20 healthy and 5
//! with a password different from the list's, auth-tested with the default
//! prober settings. Every healthy node logs in and no wrong password passes.
//! Needs CAP_NET_RAW (root) for GRE.
//!
//! ```text
//! sudo -E cargo run -p example-lossy-fleet
//! ```

use std::net::Ipv4Addr;
use std::sync::Arc;

use anyhow::ensure;
use connexa_core::config::TestConfig;
use connexa_core::domain::{Level, NodeId};
use connexa_core::ports::{ProbeDepth, Prober};
use connexa_core::runtime::prober;
use connexa_core::sim::{Behaviour, Fleet, FleetSpec, parse_mix};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mix = parse_mix("lossy:5+latency:150=20,auth_reject+lossy:5+latency:150=5")?;
    let fleet = Fleet::start(
        FleetSpec::new(25)
            .first_ip(Ipv4Addr::new(127, 47, 0, 1))
            .port(21761)
            .mix(mix),
    )
    .await?;
    ensure!(
        fleet.serves_logins(),
        "run as root: {:?}",
        fleet.logins_unavailable()
    );
    let p = Arc::new(prober(&TestConfig::default()));
    let mut set = tokio::task::JoinSet::new();
    for (i, n) in fleet.nodes().iter().enumerate() {
        let (p, node, healthy) = (
            Arc::clone(&p),
            n.node(NodeId(i as i64 + 1)),
            *n.behaviour.base() == Behaviour::Healthy,
        );
        set.spawn(async move { (healthy, p.probe(&node, ProbeDepth::Auth).await) });
    }
    let (mut logged_in, mut wrong_passed) = (0, 0);
    while let Some(r) = set.join_next().await {
        let (healthy, out) = r?;
        let out = out?;
        match (healthy, out.reached >= Level::Auth) {
            (true, true) => logged_in += 1,
            (false, true) => wrong_passed += 1,
            _ => {}
        }
    }
    let stats = fleet.gre_stats().unwrap_or_default();
    println!(
        "5 % loss, 150 ms: {logged_in} of 20 healthy nodes logged in, {wrong_passed} of 5 wrong \
         passwords passed; the link lost {} of {} GRE packets",
        stats.lost,
        stats.lost + stats.sent
    );
    ensure!(logged_in == 20 && wrong_passed == 0);
    fleet.close().await;
    Ok(())
}
