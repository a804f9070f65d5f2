//! What `connexa test --detach` + `connexa run --once` do, embedded: a small
//! simulated fleet on loopback is imported into a temporary SQLite store, the
//! deepest test this process can run is found on one healthy node
//! (`ops::deepest_test`: light unless raw GRE sockets and logins work), a job
//! is only *queued* (`engine::queue_job`), and `Engine::run_once` resumes it
//! to the end, then makes one reconciler and one monitor pass.
//! Run: `cargo run -p example-queue-run-once` (finishes in about a second).

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use connexa_core::domain::{NodeFilter, NodeId};
use connexa_core::engine::{Engine, EngineConfig, JobOptions, NotAvailable, queue_job};
use connexa_core::import::{ImportOptions, import_into};
use connexa_core::ops;
use connexa_core::probe::{LightProber, ProbeConfig};
use connexa_core::sim::{Behaviour, Fleet, FleetSpec};
use connexa_core::store::SqlStore;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let fleet = Fleet::start(
        FleetSpec::new(10)
            .first_ip(Ipv4Addr::new(127, 32, 0, 1))
            .port(21725)
            .mix(vec![(Behaviour::Healthy, 4), (Behaviour::Refused, 1)]),
    )
    .await?;
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("c.db").display());
    let store = Arc::new(SqlStore::connect(&url).await?);
    let mut list = Vec::new();
    fleet.write_list(connexa_core::export::ExportFormat::Pptp, &mut list)?;
    let report = import_into(
        store.clone(),
        std::io::Cursor::new(list),
        ImportOptions::default(),
    )
    .await;
    println!("imported {} nodes", report.added.len());

    let prober = Arc::new(LightProber::new(ProbeConfig {
        connect_timeout: Duration::from_millis(500),
        handshake_timeout: Duration::from_millis(500),
        icmp: None,
        ..ProbeConfig::default()
    }));
    let healthy = fleet
        .nodes()
        .iter()
        .find(|n| n.behaviour == Behaviour::Healthy)
        .ok_or_else(|| anyhow::anyhow!("no healthy node"))?;
    let plan = ops::deepest_test(
        prober.as_ref(),
        None,
        &healthy.node(NodeId(0)),
        Duration::from_secs(2),
    )
    .await;
    println!(
        "deepest test: {} ({})",
        plan.kind,
        plan.skipped.as_deref().unwrap_or("nothing skipped")
    );

    // Queued only: no runner yet (another process could run it just as well).
    let job = queue_job(
        store.as_ref(),
        plan.kind,
        NodeFilter::all(),
        JobOptions::default().node_timeout(Duration::from_secs(5)),
    )
    .await?;
    println!(
        "queued job #{} ({} nodes), state {}",
        job.id, job.total, job.state
    );

    let engine = Engine::new(
        store.clone(),
        prober,
        Arc::new(NotAvailable),
        Arc::new(NotAvailable),
        EngineConfig::default(),
    );
    let once = engine.run_once().await?;
    for j in &once.jobs {
        println!(
            "job #{} {}: {} — ok {}, failed {}",
            j.job.id, j.job.kind, j.job.state, j.progress.ok, j.progress.failed
        );
    }
    println!(
        "reconcile: {:?}; monitor: {:?}",
        once.reconcile, once.monitor
    );
    let stats = ops::stats(store.as_ref()).await?;
    for c in stats.by_status.iter().filter(|c| c.count > 0) {
        println!("{:<12} {}", c.status.as_str(), c.count);
    }
    anyhow::ensure!(once.jobs.len() == 1 && once.jobs[0].progress.ok == 8);
    Ok(())
}
