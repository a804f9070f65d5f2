//! The engine end to end on the REAL stores (a SQLite file and Postgres), with
//! scripted fake ports: a property test that runs jobs, the monitor and the
//! reconciler concurrently and crashes the engine midway, and the field
//! regression (1,000 verified nodes, service starts and a busy monitor).

mod common;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::TestDb;
use connexa_core::domain::*;
use connexa_core::engine::{Engine, EngineConfig, JobOptions, RecoverPolicy};
use connexa_core::ports::*;
use connexa_core::store::SqlStore;
use proptest::prelude::*;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What one node does, drawn by proptest.
#[derive(Debug, Clone)]
struct Script {
    /// Highest level the node reaches: 0 refused, 1 light only, 2 logs in but slow, 3 fast.
    level: u8,
    /// Delay of each answer, ms (may exceed the per-node timeout).
    delay_ms: u64,
    /// Service starts fail.
    start_fails: bool,
    /// Health checks fail.
    sick: bool,
}

fn script() -> impl Strategy<Value = Script> {
    (
        0u8..=3,
        prop_oneof![4 => 0u64..15, 1 => 150u64..400],
        any::<bool>(),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(level, delay_ms, start_fails, sick)| Script {
            level,
            delay_ms,
            start_fails,
            sick,
        })
}

type Scripts = Arc<HashMap<IpAddr, Script>>;

struct FakeProber(Scripts);

#[async_trait]
impl Prober for FakeProber {
    async fn probe(&self, node: &Node, depth: ProbeDepth) -> Result<Outcome, ProbeError> {
        let s = &self.0[&node.ip];
        tokio::time::sleep(Duration::from_millis(s.delay_ms)).await;
        Ok(match (depth, s.level) {
            (_, 0) => Outcome::failed(Level::None, Failure::Refused),
            (ProbeDepth::Light, _) => Outcome::success(Level::Light),
            (ProbeDepth::Auth, 1) => Outcome::failed(
                Level::Light,
                Failure::AuthRejected {
                    code: Some(691),
                    message: String::new(),
                },
            ),
            (ProbeDepth::Auth, _) => Outcome::success(Level::Auth),
        })
    }
}

struct FakeSpeed(Scripts);

#[async_trait]
impl SpeedTester for FakeSpeed {
    async fn measure(&self, node: &Node) -> Result<Outcome, ProbeError> {
        let s = &self.0[&node.ip];
        tokio::time::sleep(Duration::from_millis(s.delay_ms)).await;
        Ok(match s.level {
            0 => Outcome::failed(Level::None, Failure::Refused),
            1 => Outcome::failed(
                Level::Light,
                Failure::AuthRejected {
                    code: Some(691),
                    message: String::new(),
                },
            ),
            2 => Outcome::failed(
                Level::Auth,
                Failure::TooSlow {
                    down_mbps: 0.1,
                    threshold_mbps: 1.0,
                },
            ),
            _ => Outcome::success(Level::Speed),
        })
    }
}

/// Services in memory (a new launcher = a restarted process: nothing runs).
struct FakeLauncher {
    scripts: Scripts,
    running: Mutex<HashMap<NodeId, ServiceEndpoint>>,
    health_checked: Mutex<HashSet<NodeId>>,
}

impl FakeLauncher {
    fn new(scripts: Scripts) -> Arc<Self> {
        Arc::new(FakeLauncher {
            scripts,
            running: Mutex::new(HashMap::new()),
            health_checked: Mutex::new(HashSet::new()),
        })
    }
}

#[async_trait]
impl ServiceLauncher for FakeLauncher {
    async fn start(
        &self,
        node: &Node,
        previous: Option<ServiceEndpoint>,
    ) -> Result<ServiceEndpoint, ServiceError> {
        let s = &self.scripts[&node.ip];
        tokio::time::sleep(Duration::from_millis(s.delay_ms % 20)).await;
        if s.start_fails {
            return Err(ServiceError::StartFailed(
                "cannot bring the tunnel up".into(),
            ));
        }
        let ep = previous.unwrap_or_else(|| ServiceEndpoint {
            host: "127.0.0.1".into(),
            port: 40_000 + (node.id.0 % 20_000) as u16,
            username: format!("s{}", node.id),
            password: Secret::new("generated-socks-password"),
        });
        lock(&self.running).insert(node.id, ep.clone());
        Ok(ep)
    }

    async fn stop(&self, node: NodeId) -> Result<(), ServiceError> {
        lock(&self.running)
            .remove(&node)
            .map(|_| ())
            .ok_or(ServiceError::NotRunning(node))
    }

    async fn health(&self, node: &Node) -> Health {
        lock(&self.health_checked).insert(node.id);
        let sick = self.scripts.get(&node.ip).is_some_and(|s| s.sick);
        if sick || !lock(&self.running).contains_key(&node.id) {
            Health::Unhealthy("no reply through the tunnel".into())
        } else {
            Health::Healthy
        }
    }

    async fn running(&self) -> Vec<NodeId> {
        lock(&self.running).keys().copied().collect()
    }
}

fn config() -> EngineConfig {
    EngineConfig {
        concurrency: 16,
        node_timeout: Duration::from_millis(100),
        poll_interval: Duration::from_millis(20),
        commit_delay: Duration::from_millis(2),
        queue_interval: Duration::from_millis(10),
        reconcile_interval: Duration::from_millis(7),
        monitor_interval: Duration::from_millis(3),
        health_threshold: 2,
        // The reconciler retries failed starts on every pass, so they keep
        // racing the monitor and the jobs.
        restart_backoff: Duration::ZERO,
        ..EngineConfig::default()
    }
}

fn engine(store: Arc<dyn NodeStore>, scripts: &Scripts, launcher: Arc<FakeLauncher>) -> Engine {
    Engine::new(
        store,
        Arc::new(FakeProber(Arc::clone(scripts))),
        Arc::new(FakeSpeed(Arc::clone(scripts))),
        launcher,
        config(),
    )
}

async fn insert_fleet(store: &dyn NodeStore, n: usize) -> Vec<(NodeId, IpAddr)> {
    let nodes: Vec<NewNode> = (0..n)
        .map(|i| {
            NewNode::new(&format!("10.9.{}.{}", i / 250, i % 250 + 1), 1723, "u", "p").unwrap()
        })
        .collect();
    let ips: Vec<IpAddr> = nodes.iter().map(|n| n.ip()).collect();
    store
        .insert(nodes)
        .await
        .unwrap()
        .into_iter()
        .zip(ips)
        .map(|(o, ip)| match o {
            InsertOutcome::Inserted(id) => (id, ip),
            other => panic!("{other:?}"),
        })
        .collect()
}

/// Starts `engine.run` with a shutdown switch.
fn run_in_background(
    e: &Engine,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let e = e.clone();
    let h = tokio::spawn(async move {
        e.run(async {
            let _ = rx.await;
        })
        .await
    });
    (tx, h)
}

/// The invariants every run must leave behind.
async fn check_invariants(store: &dyn NodeStore, nodes: &[(NodeId, IpAddr)]) {
    for job in store.jobs(1_000).await.unwrap() {
        let p = store.progress(job.id).await.unwrap();
        assert!(
            matches!(
                job.state,
                JobState::Done | JobState::Cancelled | JobState::Interrupted
            ),
            "job {} left {}",
            job.id,
            job.state
        );
        assert!(
            p.is_complete(),
            "job {} at {:.1} %: {p:?}",
            job.id,
            p.percent()
        );
        let items = store.recent_items(job.id, 1_000_000).await.unwrap();
        assert_eq!(items.len() as u64, job.total, "every item result is stored");
        assert!(
            items
                .iter()
                .all(|i| i.state.is_terminal() && i.finished_at.is_some())
        );
    }
    for (id, _) in nodes {
        let node = store.get(*id).await.unwrap().unwrap();
        let history = store.history(*id).await.unwrap();
        let mut verified = false;
        let mut current = Status::NotTested;
        for row in &history {
            assert_eq!(row.from, current, "history of {id} is a chain");
            let ev = row.replay_event().unwrap();
            assert_eq!(
                transition(row.from, &ev).ok(),
                row.to,
                "history of {id} follows the table"
            );
            current = row.to.unwrap();
            if verified {
                assert!(current.is_verified(), "node {id} left level 3: {history:?}");
            }
            verified |= current.is_verified();
        }
        assert_eq!(node.status, current);
        if verified {
            assert!(
                node.status.is_verified(),
                "node {id} reached level 3 and is now {}",
                node.status
            );
        }
    }
}

async fn crash_and_restart_scenario(db: TestDb, scripts_in: Vec<Script>, crash_after_ms: u64) {
    let store: Arc<dyn NodeStore> = Arc::new(db.store.clone());
    let nodes = insert_fleet(store.as_ref(), scripts_in.len()).await;
    let scripts: Scripts = Arc::new(
        nodes
            .iter()
            .zip(scripts_in)
            .map(|((_, ip), s)| (*ip, s))
            .collect(),
    );

    // First process: a pipeline over everything, service starts, the loops.
    let a = engine(
        Arc::clone(&store),
        &scripts,
        FakeLauncher::new(Arc::clone(&scripts)),
    );
    let (stop_a, run_a) = run_in_background(&a);
    let opts = JobOptions::default();
    a.start_job(JobKind::Pipeline, NodeFilter::all(), opts.clone())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(crash_after_ms / 2)).await;
    a.start_job(JobKind::ServiceStart, NodeFilter::all(), opts.clone())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(crash_after_ms / 2)).await;
    // Crash.
    run_a.abort();
    a.abort();
    drop(stop_a);
    drop(a);

    // Second process on the same database: resume, and more work at once.
    let store2: Arc<dyn NodeStore> = Arc::new(SqlStore::connect(&db.url).await.unwrap());
    let launcher2 = FakeLauncher::new(Arc::clone(&scripts));
    let b = engine(Arc::clone(&store2), &scripts, Arc::clone(&launcher2));
    b.recover(RecoverPolicy::Resume).await.unwrap();
    let (stop_b, run_b) = run_in_background(&b);
    let retest = b
        .start_job(JobKind::Light, NodeFilter::all(), opts.clone())
        .await
        .unwrap();
    let start = b
        .start_job(JobKind::ServiceStart, NodeFilter::all(), opts.clone())
        .await
        .unwrap();
    let stop_some = b
        .start_job(
            JobKind::ServiceStop,
            NodeFilter {
                ids: Some(nodes.iter().step_by(3).map(|(id, _)| *id).collect()),
                ..NodeFilter::all()
            },
            opts,
        )
        .await
        .unwrap();
    for job in store2.jobs(100).await.unwrap() {
        tokio::time::timeout(Duration::from_secs(30), b.wait(job.id))
            .await
            .unwrap_or_else(|_| panic!("job {} never ended", job.id))
            .unwrap();
    }
    for job in [retest, start, stop_some] {
        assert!(store2.progress(job).await.unwrap().is_complete());
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    stop_b.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), run_b)
        .await
        .unwrap()
        .unwrap();
    b.run_once().await.unwrap();

    check_invariants(store2.as_ref(), &nodes).await;
    // The monitor never looked at a node without a service.
    let checked = lock(&launcher2.health_checked).clone();
    for id in checked.iter() {
        let h = store2.history(*id).await.unwrap();
        assert!(
            h.iter().any(|r| r.to == Some(Status::Online)),
            "health of {id} checked although it never had a service"
        );
    }
}

fn block_on<F: std::future::Future<Output = ()>>(f: F) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 5, max_shrink_iters: 20, ..ProptestConfig::default() })]

    #[test]
    fn engine_crash_restart_keeps_invariants_sqlite(
        scripts in prop::collection::vec(script(), 10..30),
        crash_after_ms in 0u64..120,
    ) {
        block_on(async move {
            crash_and_restart_scenario(common::sqlite().await, scripts, crash_after_ms).await
        });
    }

    #[test]
    fn engine_crash_restart_keeps_invariants_postgres(
        scripts in prop::collection::vec(script(), 10..30),
        crash_after_ms in 0u64..120,
    ) {
        block_on(async move {
            crash_and_restart_scenario(common::postgres().await, scripts, crash_after_ms).await
        });
    }
}

/// The field report: nodes that passed the speed test fell back to `ping_failed`
/// when services were started while a background monitor ran.
async fn field_scenario(db: TestDb) {
    const N: usize = 1_000;
    let store: Arc<dyn NodeStore> = Arc::new(db.store.clone());
    let nodes = insert_fleet(store.as_ref(), N).await;
    let scripts: Scripts = Arc::new(
        nodes
            .iter()
            .enumerate()
            .map(|(i, (_, ip))| {
                let s = Script {
                    level: 3,
                    delay_ms: (i % 5) as u64,
                    start_fails: i % 2 == 0,
                    sick: false,
                };
                (*ip, s)
            })
            .collect(),
    );
    let launcher = FakeLauncher::new(Arc::clone(&scripts));
    let e = Engine::new(
        Arc::clone(&store),
        Arc::new(FakeProber(Arc::clone(&scripts))),
        Arc::new(FakeSpeed(Arc::clone(&scripts))),
        Arc::clone(&launcher) as Arc<dyn ServiceLauncher>,
        EngineConfig {
            concurrency: 256,
            node_timeout: Duration::from_secs(10),
            ..config()
        },
    );
    // 1,000 nodes pass the speed test.
    let speed = e
        .start_job(JobKind::Speed, NodeFilter::all(), JobOptions::default())
        .await
        .unwrap();
    let s = tokio::time::timeout(Duration::from_secs(60), e.wait(speed))
        .await
        .expect("job ends")
        .unwrap();
    assert_eq!(s.progress.ok, N as u64);
    assert_eq!(
        store.counts().await.unwrap(),
        vec![(Status::SpeedOk, N as u64)]
    );

    // Service start for all of them while the monitor runs every 3 ms; half fail.
    let (stop, run) = run_in_background(&e);
    let start = e
        .start_job(
            JobKind::ServiceStart,
            NodeFilter::all(),
            JobOptions::default(),
        )
        .await
        .unwrap();
    let s = tokio::time::timeout(Duration::from_secs(60), e.wait(start))
        .await
        .expect("job ends")
        .unwrap();
    assert_eq!(
        (s.progress.ok, s.progress.failed),
        (N as u64 / 2, N as u64 / 2)
    );
    // Let the monitor and the reconciler (which retries the failed starts) run a while.
    tokio::time::sleep(Duration::from_millis(150)).await;
    stop.send(()).unwrap();
    run.await.unwrap();

    let counts: HashMap<Status, u64> = store.counts().await.unwrap().into_iter().collect();
    assert_eq!(
        counts.get(&Status::Online),
        Some(&(N as u64 / 2)),
        "{counts:?}"
    );
    assert_eq!(
        counts.get(&Status::SpeedOk),
        Some(&(N as u64 / 2)),
        "{counts:?}"
    );
    assert_eq!(counts.values().sum::<u64>(), N as u64);
    assert!(!counts.contains_key(&Status::PingFailed));
    for (id, _) in &nodes {
        let h = store.history(*id).await.unwrap();
        assert!(
            h.iter()
                .all(|r| r.to.is_some_and(Status::is_verified) || r.from == Status::NotTested)
        );
    }
    let checked = lock(&launcher.health_checked).clone();
    assert!(!checked.is_empty(), "the monitor ran");
    for id in checked {
        assert_eq!(
            store.get(id).await.unwrap().unwrap().status,
            Status::Online,
            "only services are checked"
        );
    }
    check_invariants(store.as_ref(), &nodes).await;
}

/// Two processes (two engines, two connection pools) share one job queue.
async fn two_engines_share_one_job(db: TestDb) {
    let store: Arc<dyn NodeStore> = Arc::new(db.store.clone());
    let nodes = insert_fleet(store.as_ref(), 200).await;
    let job = connexa_core::engine::queue_job(
        store.as_ref(),
        JobKind::Light,
        NodeFilter::all(),
        JobOptions::default(),
    )
    .await
    .unwrap();
    let mut engines = Vec::new();
    let mut counters = Vec::new();
    for _ in 0..2 {
        let s: Arc<dyn NodeStore> = Arc::new(SqlStore::connect(&db.url).await.unwrap());
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        counters.push(Arc::clone(&count));
        let e = Engine::new(
            s,
            Arc::new(CountingProber(count)),
            Arc::new(connexa_core::engine::NotAvailable),
            Arc::new(connexa_core::engine::NotAvailable),
            EngineConfig {
                concurrency: 8,
                ..config()
            },
        );
        engines.push((run_in_background(&e), e));
    }
    let s = tokio::time::timeout(Duration::from_secs(60), engines[0].1.wait(job.id))
        .await
        .expect("job ends")
        .unwrap();
    assert_eq!(s.job.state, JobState::Done);
    assert_eq!(s.progress.ok, 200);
    let probed: Vec<usize> = counters
        .iter()
        .map(|c| c.load(std::sync::atomic::Ordering::SeqCst))
        .collect();
    assert_eq!(
        probed.iter().sum::<usize>(),
        200,
        "no item was tested twice: {probed:?}"
    );
    assert!(
        probed.iter().all(|n| *n > 0),
        "both processes worked: {probed:?}"
    );
    for ((stop, run), _) in engines {
        stop.send(()).unwrap();
        run.await.unwrap();
    }
    check_invariants(store.as_ref(), &nodes).await;
}

struct CountingProber(Arc<std::sync::atomic::AtomicUsize>);

#[async_trait]
impl Prober for CountingProber {
    async fn probe(&self, _node: &Node, _depth: ProbeDepth) -> Result<Outcome, ProbeError> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(10)).await;
        Ok(Outcome::success(Level::Light))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_share_one_job_sqlite() {
    two_engines_share_one_job(common::sqlite().await).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_share_one_job_postgres() {
    two_engines_share_one_job(common::postgres().await).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn field_regression_1000_verified_nodes_survive_service_starts_and_monitor() {
    field_scenario(common::sqlite().await).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn field_regression_1000_verified_nodes_survive_service_starts_and_monitor_postgres() {
    field_scenario(common::postgres().await).await
}
