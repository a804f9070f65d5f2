//! Starts a small simulated PPTP fleet on loopback, imports it into a temporary
//! SQLite store, runs a Light job through the engine with the real `LightProber`,
//! prints every progress event (derived from committed rows) and the final counts.
//! Run: `cargo run -p example-run-job` (finishes in about a second).

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use connexa_core::domain::{NewNode, NodeFilter};
use connexa_core::engine::{Engine, EngineConfig, JobOptions, NotAvailable};
use connexa_core::ports::{JobKind, NodeStore};
use connexa_core::probe::{LightProber, ProbeConfig};
use connexa_core::sim::{Behaviour, Fleet, FleetSpec};
use connexa_core::store::SqlStore;
use futures::StreamExt;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let fleet = Fleet::start(
        FleetSpec::new(12)
            .first_ip(Ipv4Addr::new(127, 31, 0, 1))
            .port(21724)
            .mix(vec![
                (Behaviour::Healthy, 6),
                (Behaviour::Refused, 2),
                (Behaviour::Silent, 1),
                (Behaviour::Slow(Duration::from_millis(150)), 1),
                (Behaviour::Garbage, 1),
                (Behaviour::WrongResultCode(2), 1),
            ]),
    )
    .await?;

    let dir = tempfile::tempdir()?;
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("connexa.db").display()
    );
    let store = Arc::new(SqlStore::connect(&url).await?);
    let nodes = fleet
        .nodes()
        .iter()
        .map(|n| {
            NewNode::new(
                &n.ip.to_string(),
                u64::from(n.port),
                &n.login,
                n.password.expose(),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let imported = store.insert(nodes).await?;
    println!("imported {} simulated nodes into {url}", imported.len());

    let prober = LightProber::new(ProbeConfig {
        connect_timeout: Duration::from_millis(400),
        handshake_timeout: Duration::from_millis(400),
        attempts: 1,
        icmp: None,
        ..ProbeConfig::default()
    });
    let engine = Engine::new(
        store.clone(),
        Arc::new(prober),
        Arc::new(NotAvailable),
        Arc::new(NotAvailable),
        EngineConfig {
            poll_interval: Duration::from_millis(100),
            ..EngineConfig::default()
        },
    );
    let job = engine
        .start_job(
            JobKind::Light,
            NodeFilter::all(),
            JobOptions::default().node_timeout(Duration::from_secs(2)),
        )
        .await?;
    println!(
        "job {job} started (concurrency {})",
        engine.config().concurrency
    );

    let mut events = Box::pin(engine.progress(job));
    while let Some(ev) = events.next().await {
        let p = ev.progress;
        println!(
            "[{:>5.1} %] {}/{} ok {} failed {} timed out {} cancelled {} | {:.0}/s eta {} | {}",
            p.percent(),
            p.done(),
            p.total,
            p.ok,
            p.failed,
            p.timed_out,
            p.cancelled,
            ev.rate,
            ev.eta
                .map_or("?".into(), |d| format!("{:.1}s", d.as_secs_f64())),
            ev.recent
                .iter()
                .map(|i| format!(
                    "node {} {}",
                    i.node,
                    i.status.map_or("-".into(), |s| s.to_string())
                ))
                .collect::<Vec<_>>()
                .join(", "),
        );
    }

    let summary = engine.wait(job).await?;
    println!(
        "\njob {} {}: {:?}",
        job, summary.job.state, summary.progress
    );
    println!("node statuses:");
    for (status, n) in store.counts().await? {
        println!("  {status:<12} {n}");
    }
    Ok(())
}
