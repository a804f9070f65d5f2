//! Speed tests share this host's link: the engine runs at most
//! `speed_concurrency` of them at once, over every job, and a node waiting
//! for a slot does not spend its time budget (the wait is ours, not the
//! node's). On a real SQLite file.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use connexa_core::domain::*;
use connexa_core::engine::{Engine, EngineConfig, JobOptions, NotAvailable};
use connexa_core::ports::*;
use connexa_core::store::SqlStore;

/// Logs in to every node; a speed test takes `took` and counts how many ran at once.
struct Counting {
    took: Duration,
    now: AtomicUsize,
    most: AtomicUsize,
}

#[async_trait]
impl Prober for Counting {
    async fn probe(&self, _: &Node, depth: ProbeDepth) -> Result<Outcome, ProbeError> {
        Ok(Outcome::success(match depth {
            ProbeDepth::Light => Level::Light,
            _ => Level::Auth,
        }))
    }
}

#[async_trait]
impl SpeedTester for Counting {
    async fn measure(&self, _: &Node) -> Result<Outcome, ProbeError> {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(n, Ordering::SeqCst);
        tokio::time::sleep(self.took).await;
        self.now.fetch_sub(1, Ordering::SeqCst);
        Ok(Outcome::success(Level::Speed))
    }
}

async fn run(kind: JobKind) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("s.db").display());
    let store = Arc::new(SqlStore::connect(&url).await.unwrap());
    let nodes: Vec<NewNode> = (1..=8)
        .map(|i| NewNode::new(&format!("192.0.2.{i}"), 1723, "u", "p").unwrap())
        .collect();
    store.insert(nodes).await.unwrap();
    let tester = Arc::new(Counting {
        took: Duration::from_millis(400),
        now: AtomicUsize::new(0),
        most: AtomicUsize::new(0),
    });
    let engine = Engine::new(
        store.clone(),
        tester.clone(),
        tester.clone(),
        Arc::new(NotAvailable),
        EngineConfig {
            speed_concurrency: 2,
            poll_interval: Duration::from_millis(50),
            ..EngineConfig::default()
        },
    );
    // 8 nodes, 2 at a time, 400 ms each: the last ones wait 1.2 s for a slot,
    // longer than their 1 s budget; the wait must not count.
    let job = engine
        .start_job(
            kind,
            NodeFilter::all(),
            JobOptions::default().node_timeout(Duration::from_secs(1)),
        )
        .await
        .unwrap();
    let summary = engine.wait(job).await.unwrap();
    assert_eq!(summary.job.state, JobState::Done, "{summary:?}");
    assert_eq!(summary.progress.ok, 8, "{:?}", summary.progress);
    assert_eq!(tester.most.load(Ordering::SeqCst), 2, "speed tests at once");
    let counts: std::collections::HashMap<Status, u64> =
        store.counts().await.unwrap().into_iter().collect();
    assert_eq!(counts.get(&Status::SpeedOk), Some(&8), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speed_jobs_run_speed_concurrency_tests_at_once_and_waiting_costs_no_budget() {
    run(JobKind::Speed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_share_the_speed_slots_too() {
    run(JobKind::Pipeline).await;
}
