//! Probe latency histograms: wraps a `LightProber` in
//! `connexa_core::metrics::Instrumented`, light-tests a small simulated PPTP
//! fleet on loopback (healthy, refused, slow and silent nodes), and prints the
//! Prometheus text that `connexa-http` serves on `/metrics`
//! (`connexa_probe_*` families; only the light probes' series here, the full
//! text is `stats.render()`). Run: `cargo run -p example-probe-metrics` (about a second).

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use connexa_core::domain::NodeId;
use connexa_core::metrics::{Instrumented, ProbeKind, ProbeResult, ProbeStats};
use connexa_core::ports::{ProbeDepth, Prober};
use connexa_core::probe::{IcmpConfig, LightProber, ProbeConfig};
use connexa_core::sim::{Behaviour, Fleet, FleetSpec};
use futures::StreamExt;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let fleet = Fleet::start(
        FleetSpec::new(8)
            .first_ip(Ipv4Addr::new(127, 33, 0, 1))
            .port(21726)
            .logins(false)
            .mix(vec![
                (Behaviour::Healthy, 4),
                (Behaviour::Refused, 2),
                (Behaviour::Slow(Duration::from_millis(150)), 1),
                (Behaviour::Silent, 1),
            ]),
    )
    .await?;

    // One collector, shared by every instrumented port (here just the prober).
    let stats = Arc::new(ProbeStats::new());
    let light = LightProber::new(ProbeConfig {
        connect_timeout: Duration::from_millis(500),
        handshake_timeout: Duration::from_millis(400),
        attempts: 1,
        icmp: Some(IcmpConfig {
            count: 2,
            timeout: Duration::from_millis(300),
            ..IcmpConfig::default()
        }),
        ..ProbeConfig::default()
    });
    let prober: Arc<dyn Prober> = Arc::new(Instrumented::new(Arc::new(light), Arc::clone(&stats)));

    let nodes: Vec<_> = fleet
        .nodes()
        .iter()
        .enumerate()
        .map(|(i, n)| n.node(NodeId(i as i64 + 1)))
        .collect();
    let outcomes: Vec<_> = futures::stream::iter(nodes)
        .map(|node| {
            let prober = Arc::clone(&prober);
            async move { prober.probe(&node, ProbeDepth::Light).await }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let answered = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(o) if o.failure.is_none()))
        .count();

    // The text format, as `connexa-http` serves it (`stats.render()`), here
    // only the light probes' series (the full text has every depth and result).
    let out: String = stats
        .render()
        .lines()
        .filter(|l| l.starts_with('#') || l.contains("depth=\"light\""))
        .map(|l| format!("{l}\n"))
        .collect();
    print!("{out}");

    let ok = stats.duration(ProbeKind::Light, ProbeResult::Ok).count();
    let failed = stats
        .duration(ProbeKind::Light, ProbeResult::Failed)
        .count();
    println!(
        "\n{} nodes probed: {ok} ok, {failed} failed; {answered} answered the handshake",
        fleet.nodes().len()
    );
    anyhow::ensure!(
        ok + failed == fleet.nodes().len() as u64 && ok == answered as u64,
        "the histograms do not add up"
    );
    anyhow::ensure!(
        stats.handshake(ProbeKind::Light).count() == ok,
        "one handshake time per answering node"
    );
    fleet.shutdown();
    Ok(())
}
