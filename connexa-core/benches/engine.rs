//! Engine throughput (committed items per second) on a SQLite file, against a
//! baseline measured in the same process: the store alone claiming and
//! group-committing the same results with no engine around it. A run with
//! `commit_batch = 1` (one transaction per result) shows what group commit buys.
//!
//!     cargo bench -p connexa-core --bench engine
//!
//! The fake prober answers after 2 ms (a fast LAN), so the figures are about the
//! engine and the store, not the network.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use connexa_core::domain::{Event, Level, NewNode, Node, NodeFilter, Outcome};
use connexa_core::engine::{Engine, EngineConfig, JobOptions, NotAvailable};
use connexa_core::ports::{
    ItemResult, ItemState, JobKind, JobSpec, NodeStore, ProbeDepth, ProbeError, Prober,
};
use connexa_core::store::SqlStore;

const NODES: usize = 10_000;

struct FastProber;

#[async_trait]
impl Prober for FastProber {
    async fn probe(&self, _node: &Node, _depth: ProbeDepth) -> Result<Outcome, ProbeError> {
        tokio::time::sleep(Duration::from_millis(2)).await;
        Ok(Outcome::success(Level::Light))
    }
}

async fn seeded(dir: &tempfile::TempDir, name: &str) -> Arc<SqlStore> {
    let url = format!("sqlite://{}?mode=rwc", dir.path().join(name).display());
    let store = SqlStore::connect(&url).await.expect("open store");
    let nodes = (0..NODES)
        .map(|i| {
            NewNode::new(
                &format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255),
                1723,
                "u",
                "p",
            )
            .expect("node")
        })
        .collect();
    store.insert(nodes).await.expect("insert");
    Arc::new(store)
}

/// The store alone: claim 512, finish 512, until the job is done.
async fn baseline(store: &SqlStore) -> f64 {
    let job = store
        .create_job(
            JobSpec {
                kind: JobKind::Light,
                filter: NodeFilter::all(),
                options: serde_json::json!({}),
                deadline: None,
            },
            Utc::now(),
        )
        .await
        .expect("job");
    let start = Instant::now();
    loop {
        let items = store
            .claim_items(
                job.id,
                "bench",
                512,
                Utc::now(),
                std::time::Duration::from_secs(30),
            )
            .await
            .expect("claim");
        if items.is_empty() {
            break;
        }
        let results = items
            .into_iter()
            .map(|i| ItemResult {
                item: i.item,
                token: i.token,
                state: ItemState::Ok,
                event: Some(Event::Tested(Outcome::success(Level::Light))),
                enrichment: None,
                detail: None,
                at: Utc::now(),
            })
            .collect();
        store.finish_items(results).await.expect("finish");
    }
    NODES as f64 / start.elapsed().as_secs_f64()
}

async fn through_engine(store: Arc<SqlStore>, commit_batch: usize) -> f64 {
    let engine = Engine::new(
        store,
        Arc::new(FastProber),
        Arc::new(NotAvailable),
        Arc::new(NotAvailable),
        EngineConfig {
            concurrency: 512,
            commit_batch,
            ..EngineConfig::default()
        },
    );
    let start = Instant::now();
    let job = engine
        .start_job(JobKind::Light, NodeFilter::all(), JobOptions::default())
        .await
        .expect("start");
    let s = engine.wait(job).await.expect("wait");
    assert_eq!(s.progress.ok, NODES as u64);
    NODES as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let base = baseline(&*seeded(&dir, "base.db").await).await;
    let grouped = through_engine(seeded(&dir, "grouped.db").await, 512).await;
    let single = through_engine(seeded(&dir, "single.db").await, 1).await;
    println!("engine bench, SQLite, {NODES} items, prober answers after 2 ms, concurrency 512");
    println!("  baseline: store alone, claim + group commit   {base:>9.0} items/s  1.00");
    println!(
        "  engine, group commit (batch 512)             {grouped:>9.0} items/s  {:.2}",
        grouped / base
    );
    println!(
        "  engine, one transaction per result           {single:>9.0} items/s  {:.2}",
        single / base
    );
}
