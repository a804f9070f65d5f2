//! Starts a small simulated PPTP fleet on loopback (one node of each behaviour),
//! light-tests every node concurrently through the `Prober` port, and prints what
//! each node answered and the status it would get.
//! Run: `cargo run -p example-probe-list` (finishes in about a second).

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use connexa_core::domain::{Event, NodeId, Status, transition};
use connexa_core::ports::{ProbeDepth, Prober};
use connexa_core::probe::{IcmpConfig, LightProber, ProbeConfig};
use connexa_core::sim::{Behaviour, Fleet, FleetSpec};
use futures::StreamExt;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mix = vec![
        (Behaviour::Healthy, 3),
        (Behaviour::Refused, 1),
        (Behaviour::Silent, 1),
        (Behaviour::Slow(Duration::from_millis(200)), 1),
        (Behaviour::Garbage, 1),
        (Behaviour::WrongResultCode(4), 1),
    ];
    let fleet = Fleet::start(
        FleetSpec::new(8)
            .first_ip(Ipv4Addr::new(127, 30, 0, 1))
            .port(21723)
            .mix(mix),
    )
    .await?;
    println!("node list (ip:login:password, port 21723):");
    fleet.write_node_list(std::io::stdout().lock())?;

    let prober: Arc<dyn Prober> = Arc::new(LightProber::new(ProbeConfig {
        connect_timeout: Duration::from_millis(500),
        handshake_timeout: Duration::from_millis(400),
        attempts: 2,
        backoff: Duration::from_millis(100),
        icmp: Some(IcmpConfig {
            count: 2,
            timeout: Duration::from_millis(300),
            ..IcmpConfig::default()
        }),
        ..ProbeConfig::default()
    }));

    let started = Instant::now();
    let nodes: Vec<_> = fleet
        .nodes()
        .iter()
        .enumerate()
        .map(|(i, n)| (n.behaviour.clone(), n.node(NodeId(i as i64 + 1))))
        .collect();
    let results: Vec<_> = futures::stream::iter(nodes)
        .map(|(behaviour, node)| {
            let prober = Arc::clone(&prober);
            async move {
                let out = prober.probe(&node, ProbeDepth::Light).await;
                (behaviour, node, out)
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;

    println!(
        "\n{:<14} {:<22} {:<12} {:>8} {:>8}  answer",
        "ip", "behaviour", "status", "hs ms", "ping ms"
    );
    let mut results = results;
    results.sort_by_key(|(_, n, _)| n.ip);
    for (behaviour, node, out) in results {
        let out = out?;
        let status =
            transition(Status::NotTested, &Event::Tested(out.clone())).unwrap_or(Status::NotTested);
        let answer = match (&out.failure, &out.measurements.pptp) {
            (Some(f), _) => f.to_string(),
            (None, Some(id)) => format!("host {:?}, vendor {:?}", id.hostname, id.vendor),
            (None, None) => String::new(),
        };
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
        println!(
            "{:<14} {:<22} {:<12} {:>8} {:>8}  {answer}",
            node.ip.to_string(),
            format!("{behaviour:?}"),
            status.to_string(),
            ms(out.measurements.handshake_ms),
            ms(out.measurements.ping_ms),
        );
    }
    println!(
        "\nprobed {} nodes in {:.2?}",
        fleet.nodes().len(),
        started.elapsed()
    );
    Ok(())
}
