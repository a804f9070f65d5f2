//! Engine logic against a real SQLite store (temp file) and fake or mockall ports.

use std::collections::HashMap;
use std::sync::Mutex as StdMutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use futures::StreamExt;
use futures::future::BoxFuture;

use super::*;
use crate::domain::{
    Event, EventKind, Failure, Level, NewNode, Node, Outcome, Secret, ServiceEndpoint, transition,
};
use crate::ports::{
    ApplyContext, Health, HistoryEvent, InsertOutcome, ItemState, MockServiceLauncher,
    MockSpeedTester, ProbeDepth, ProbeError, ServiceError,
};
use crate::store::SqlStore;

type ProbeFn =
    dyn Fn(Node, ProbeDepth) -> BoxFuture<'static, Result<Outcome, ProbeError>> + Send + Sync;

/// A prober whose answer for each node is a closure (delays, hangs, panics).
struct FnProber(Box<ProbeFn>);

#[async_trait]
impl Prober for FnProber {
    async fn probe(&self, node: &Node, depth: ProbeDepth) -> Result<Outcome, ProbeError> {
        (self.0)(node.clone(), depth).await
    }
}

fn prober<F, Fut>(f: F) -> Arc<dyn Prober>
where
    F: Fn(Node, ProbeDepth) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Outcome, ProbeError>> + Send + 'static,
{
    Arc::new(FnProber(Box::new(move |n, d| Box::pin(f(n, d)))))
}

fn no_speed() -> Arc<dyn SpeedTester> {
    let mut m = MockSpeedTester::new();
    m.expect_measure().never();
    Arc::new(m)
}

fn no_launcher() -> Arc<dyn ServiceLauncher> {
    let mut m = MockServiceLauncher::new();
    m.expect_start().never();
    m.expect_stop().never();
    m.expect_health().never();
    m.expect_running().returning(Vec::new);
    Arc::new(m)
}

/// A launcher that keeps its running services in memory; starts of nodes in
/// `fail` fail, health of nodes in `sick` is bad.
#[derive(Default)]
struct FakeLauncher {
    running: StdMutex<HashMap<NodeId, ServiceEndpoint>>,
    fail: StdMutex<HashSet<NodeId>>,
    sick: StdMutex<HashSet<NodeId>>,
    starts: StdMutex<Vec<(NodeId, Option<ServiceEndpoint>)>>,
    health_checked: StdMutex<HashSet<NodeId>>,
}

#[async_trait]
impl ServiceLauncher for FakeLauncher {
    async fn start(
        &self,
        node: &Node,
        previous: Option<ServiceEndpoint>,
    ) -> Result<ServiceEndpoint, crate::ports::ServiceError> {
        lock(&self.starts).push((node.id, previous.clone()));
        if lock(&self.fail).contains(&node.id) {
            return Err(ServiceError::StartFailed("port busy".into()));
        }
        let ep = previous.unwrap_or_else(|| endpoint(20_000 + node.id.0 as u16));
        lock(&self.running).insert(node.id, ep.clone());
        Ok(ep)
    }
    async fn stop(&self, node: NodeId) -> Result<(), ServiceError> {
        match lock(&self.running).remove(&node) {
            Some(_) => Ok(()),
            None => Err(ServiceError::NotRunning(node)),
        }
    }
    async fn health(&self, node: &Node) -> Health {
        lock(&self.health_checked).insert(node.id);
        if lock(&self.sick).contains(&node.id) || !lock(&self.running).contains_key(&node.id) {
            Health::Unhealthy("no reply through the tunnel".into())
        } else {
            Health::Healthy
        }
    }
    async fn running(&self) -> Vec<NodeId> {
        lock(&self.running).keys().copied().collect()
    }
}

fn endpoint(port: u16) -> ServiceEndpoint {
    ServiceEndpoint {
        host: "127.0.0.1".into(),
        port,
        username: "u".into(),
        password: Secret::new("socks-secret-pw"),
    }
}

struct Env {
    _dir: tempfile::TempDir,
    url: String,
    store: Arc<dyn NodeStore>,
    ids: Vec<NodeId>,
}

async fn env(n: usize) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
    let store = SqlStore::connect(&url).await.unwrap();
    let nodes = (0..n)
        .map(|i| {
            NewNode::new(&format!("10.0.{}.{}", i / 250, i % 250 + 1), 1723, "u", "p").unwrap()
        })
        .collect();
    let ids = store
        .insert(nodes)
        .await
        .unwrap()
        .into_iter()
        .map(|o| match o {
            InsertOutcome::Inserted(id) => id,
            other => panic!("{other:?}"),
        })
        .collect();
    Env {
        _dir: dir,
        url,
        store: Arc::new(store),
        ids,
    }
}

fn cfg() -> EngineConfig {
    EngineConfig {
        concurrency: 8,
        node_timeout: Duration::from_secs(10),
        poll_interval: Duration::from_millis(20),
        commit_delay: Duration::from_millis(2),
        recent_items: 3,
        ..EngineConfig::default()
    }
}

fn engine(env: &Env, p: Arc<dyn Prober>, cfg: EngineConfig) -> Engine {
    Engine::new(Arc::clone(&env.store), p, no_speed(), no_launcher(), cfg)
}

async fn items(env: &Env, job: JobId) -> Vec<ItemView> {
    let mut v = env.store.recent_items(job, 100_000).await.unwrap();
    v.sort_by_key(|i| i.node);
    v
}

/// Nodes with a service (`online` or `offline`), and `speed_ok` nodes whose
/// service is wanted but not up: the counts of `connexa stats`.
async fn services_running_and_waiting(env: &Env) -> (u64, u64) {
    let count = |statuses: Vec<Status>, wanted: Option<bool>| {
        let f = NodeFilter {
            statuses,
            service_wanted: wanted,
            ..NodeFilter::all()
        };
        async move {
            let page = crate::domain::Page {
                limit: 0,
                ..Default::default()
            };
            env.store.list(&f, page).await.unwrap().total
        }
    };
    (
        count(vec![Status::Online, Status::Offline], None).await,
        count(vec![Status::SpeedOk], Some(true)).await,
    )
}

async fn status(env: &Env, id: NodeId) -> Status {
    env.store.get(id).await.unwrap().unwrap().status
}

async fn until<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let give_up = Instant::now() + Duration::from_secs(20);
    while !f().await {
        assert!(Instant::now() < give_up, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `Engine::wait` with a limit, so that a broken engine fails the test instead of hanging it.
async fn wait(e: &Engine, job: JobId) -> JobSummary {
    tokio::time::timeout(Duration::from_secs(20), e.wait(job))
        .await
        .expect("job ends")
        .unwrap()
}

fn light_ok() -> Outcome {
    Outcome::success(Level::Light)
}

fn refused() -> Outcome {
    Outcome::failed(Level::None, Failure::Refused)
}

#[test]
fn concurrency_follows_the_open_file_limit() {
    assert_eq!(concurrency_for_limit(1024), 480);
    assert_eq!(concurrency_for_limit(10), 1);
    assert_eq!(concurrency_for_limit(1 << 20), 4096);
    assert!((1..=4096).contains(&default_concurrency()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn light_job_commits_every_result_and_progress_ends_at_100() {
    let env = env(20).await;
    let odd = |n: &Node| n.id.0 % 2 == 1;
    let e = engine(
        &env,
        prober(move |n, d| async move {
            assert_eq!(d, ProbeDepth::Light);
            tokio::time::sleep(Duration::from_millis(5)).await;
            Ok(if odd(&n) { light_ok() } else { refused() })
        }),
        cfg(),
    );
    let job = e
        .start_job(JobKind::Light, NodeFilter::all(), JobOptions::default())
        .await
        .unwrap();
    let events: Vec<ProgressEvent> = e.progress(job).collect().await;
    let last = events.last().unwrap();
    assert!(last.finished);
    assert_eq!(last.state, JobState::Done);
    assert_eq!((last.progress.total, last.progress.done()), (20, 20));
    assert_eq!((last.progress.ok, last.progress.failed), (10, 10));
    assert_eq!(last.recent.len(), 3);
    assert_eq!(last.eta, Some(Duration::ZERO));
    // Done counts never go backwards and only the last event is final.
    for w in events.windows(2) {
        assert!(w[0].progress.done() <= w[1].progress.done());
        assert!(!w[0].finished);
    }
    let summary = wait(&e, job).await;
    assert_eq!(summary.progress, last.progress);
    for id in &env.ids {
        let want = if id.0 % 2 == 1 {
            Status::PingLight
        } else {
            Status::PingFailed
        };
        assert_eq!(status(&env, *id).await, want);
    }
    for it in items(&env, job).await {
        let ok = it.node.0 % 2 == 1;
        assert_eq!(it.state, if ok { ItemState::Ok } else { ItemState::Failed });
        assert_eq!(
            it.status,
            Some(if ok {
                Status::PingLight
            } else {
                Status::PingFailed
            })
        );
    }
    // The options are stored with the job, so another process could resume it.
    let stored = env.store.job(job).await.unwrap();
    let opts: JobOptions = serde_json::from_value(stored.options).unwrap();
    assert_eq!(opts, JobOptions::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_ends_running_and_pending_items_and_keeps_finished_results() {
    let env = env(30).await;
    let fast = env.ids[..3].to_vec();
    let e = engine(
        &env,
        prober(move |n, _| {
            let fast = fast.contains(&n.id);
            async move {
                if !fast {
                    std::future::pending::<()>().await;
                }
                Ok(light_ok())
            }
        }),
        EngineConfig {
            concurrency: 6,
            ..cfg()
        },
    );
    let job = e
        .start_job(JobKind::Light, NodeFilter::all(), JobOptions::default())
        .await
        .unwrap();
    let store = Arc::clone(&env.store);
    until("3 results and 6 running", || async {
        let p = store.progress(job).await.unwrap();
        p.ok == 3 && p.running == 6
    })
    .await;
    e.cancel(job).await.unwrap();
    let s = tokio::time::timeout(Duration::from_secs(10), e.wait(job))
        .await
        .expect("a cancelled job ends although its probes hang")
        .unwrap();
    assert_eq!(s.job.state, JobState::Cancelled);
    assert_eq!(
        (s.progress.ok, s.progress.cancelled, s.progress.done()),
        (3, 27, 30)
    );
    for (i, id) in env.ids.iter().enumerate() {
        let want = if i < 3 {
            Status::PingLight
        } else {
            Status::NotTested
        };
        assert_eq!(status(&env, *id).await, want, "node {i}");
    }
    until("the runner ends", || async { !e.is_running_here(job) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_all_cancels_every_unfinished_job_and_leaves_finished_ones() {
    let env = env(12).await;
    let first = env.ids[0];
    // Node 1 answers at once; every other node hangs until cancelled.
    let e = engine(
        &env,
        prober(move |n, _| async move {
            if n.id != first {
                std::future::pending::<()>().await;
            }
            Ok(light_ok())
        }),
        cfg(),
    );
    let done = e
        .start_job(
            JobKind::Light,
            NodeFilter::ids(vec![first]),
            JobOptions::default(),
        )
        .await
        .unwrap();
    let s = tokio::time::timeout(Duration::from_secs(10), e.wait(done))
        .await
        .expect("a one-node job ends")
        .unwrap();
    assert_eq!(s.job.state, JobState::Done);
    let a = e
        .start_job(
            JobKind::Light,
            NodeFilter::ids(env.ids[1..6].to_vec()),
            JobOptions::default(),
        )
        .await
        .unwrap();
    let b = e
        .start_job(
            JobKind::Light,
            NodeFilter::ids(env.ids[6..].to_vec()),
            JobOptions::default(),
        )
        .await
        .unwrap();
    let store = Arc::clone(&env.store);
    until("both jobs running", || async {
        store.progress(a).await.unwrap().running > 0 && store.progress(b).await.unwrap().running > 0
    })
    .await;
    assert_eq!(e.cancel_all().await.unwrap(), vec![a, b]);
    for (job, n) in [(a, 5), (b, 6)] {
        let s = tokio::time::timeout(Duration::from_secs(10), e.wait(job))
            .await
            .expect("a cancelled job ends although its probes hang")
            .unwrap();
        assert_eq!(s.job.state, JobState::Cancelled);
        assert_eq!((s.progress.cancelled, s.progress.done()), (n, n));
    }
    assert_eq!(store.job(done).await.unwrap().state, JobState::Done);
    assert_eq!(status(&env, first).await, Status::PingLight);
    assert!(
        e.cancel_all().await.unwrap().is_empty(),
        "nothing left to cancel"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retest_failed_takes_exactly_the_failed_nodes_with_twice_the_budget() {
    let env = env(6).await;
    let bad: Vec<NodeId> = env.ids[..2].to_vec();
    let seen = Arc::new(StdMutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let e = engine(
        &env,
        prober(move |n, _| {
            let fail = bad.contains(&n.id);
            log.lock().unwrap().push(n.id);
            async move { if fail { Ok(refused()) } else { Ok(light_ok()) } }
        }),
        cfg(),
    );
    let first = e
        .start_job(
            JobKind::Light,
            NodeFilter::all(),
            JobOptions::default().node_timeout(Duration::from_secs(12)),
        )
        .await
        .unwrap();
    let s = tokio::time::timeout(Duration::from_secs(10), e.wait(first))
        .await
        .expect("the job ends")
        .unwrap();
    assert_eq!((s.progress.ok, s.progress.failed), (4, 2));
    assert_eq!(e.failed_nodes(first).await.unwrap(), env.ids[..2].to_vec());
    seen.lock().unwrap().clear();
    let (second, used) = e.retest_failed(first, JobOptions::default()).await.unwrap();
    assert_eq!(used.node_timeout_ms, Some(24_000), "twice the old budget");
    let s = tokio::time::timeout(Duration::from_secs(10), e.wait(second))
        .await
        .expect("the retest ends")
        .unwrap();
    assert_eq!(
        (s.job.kind, s.progress.total, s.progress.failed),
        (JobKind::Light, 2, 2)
    );
    let mut probed = seen.lock().unwrap().clone();
    probed.sort_unstable();
    assert_eq!(
        probed,
        env.ids[..2].to_vec(),
        "only the failed nodes are probed again"
    );
    // A budget given wins; a job that failed nothing is refused.
    let (_, used) = e
        .retest_failed(
            second,
            JobOptions::default().node_timeout(Duration::from_secs(30)),
        )
        .await
        .unwrap();
    assert_eq!(used.node_timeout_ms, Some(30_000));
    let ok_only = e
        .start_job(
            JobKind::Light,
            NodeFilter::ids(env.ids[2..].to_vec()),
            JobOptions::default(),
        )
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), e.wait(ok_only))
        .await
        .expect("the job ends")
        .unwrap();
    assert!(matches!(
        e.retest_failed(ok_only, JobOptions::default()).await,
        Err(EngineError::Store(StoreError::NothingSelected))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_from_another_engine_stops_the_runner() {
    let env = env(10).await;
    let hang = || prober(|_, _| async { std::future::pending().await });
    let a = engine(&env, hang(), cfg());
    let b = engine(&env, hang(), cfg());
    let job = a
        .start_job(JobKind::Light, NodeFilter::all(), JobOptions::default())
        .await
        .unwrap();
    let store = Arc::clone(&env.store);
    until("items running", || async {
        store.progress(job).await.unwrap().running > 0
    })
    .await;
    assert!(!b.is_running_here(job));
    b.cancel(job).await.unwrap();
    let s = tokio::time::timeout(Duration::from_secs(10), a.wait(job))
        .await
        .expect("runner notices the cancellation through the store")
        .unwrap();
    assert_eq!(s.progress.cancelled, 10);
    assert_eq!(s.job.state, JobState::Cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_deadline_times_out_what_is_left_without_marking_nodes() {
    let env = env(12).await;
    let first = env.ids[0];
    let e = engine(
        &env,
        prober(move |n, _| async move {
            if n.id != first {
                std::future::pending::<()>().await;
            }
            Ok(light_ok())
        }),
        EngineConfig {
            concurrency: 4,
            ..cfg()
        },
    );
    let job = e
        .start_job(
            JobKind::Light,
            NodeFilter::all(),
            JobOptions::default().deadline(Duration::from_millis(1000)),
        )
        .await
        .unwrap();
    let s = tokio::time::timeout(Duration::from_secs(10), e.wait(job))
        .await
        .expect("the deadline ends the job")
        .unwrap();
    assert_eq!(s.job.state, JobState::Done);
    assert_eq!((s.progress.ok, s.progress.timed_out), (1, 11));
    let mut in_flight = 0;
    for it in items(&env, job).await.iter().filter(|i| i.node != first) {
        let d = it.detail.as_deref().unwrap_or_default();
        assert!(d.starts_with("job deadline reached"), "{d}");
        assert_eq!(status(&env, it.node).await, Status::NotTested);
        // Items that were running record the deadline as inconclusive; the
        // ones never claimed record nothing. Neither is a node failure.
        let n = env.store.get(it.node).await.unwrap().unwrap();
        assert_eq!((n.consecutive_failures, n.last_error), (0, None));
        let h = env.store.history(it.node).await.unwrap();
        if let Some(row) = h.first() {
            in_flight += 1;
            assert_eq!(row.event, HistoryEvent::Applied(EventKind::Inconclusive));
            assert_eq!(row.to, Some(Status::NotTested));
            let why = row.detail.as_deref().unwrap_or_default();
            assert!(
                why.starts_with("job deadline reached after") && why.ends_with("at stage light"),
                "{why}"
            );
        }
    }
    assert!(
        in_flight >= 1,
        "at least the items running at the deadline say why"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_probe_times_out_as_inconclusive_and_the_node_is_not_blamed() {
    let env = env(5).await;
    let stuck = env.ids[2];
    let e = engine(
        &env,
        prober(move |n, _| async move {
            if n.id == stuck {
                std::future::pending::<()>().await;
            }
            Ok(light_ok())
        }),
        cfg(),
    );
    let job = e
        .start_job(
            JobKind::Light,
            NodeFilter::all(),
            JobOptions::default().node_timeout(Duration::from_millis(300)),
        )
        .await
        .unwrap();
    let s = wait(&e, job).await;
    assert_eq!((s.progress.ok, s.progress.timed_out), (4, 1));
    let n = env.store.get(stuck).await.unwrap().unwrap();
    assert_eq!(n.status, Status::NotTested, "our budget is not evidence");
    assert_eq!((n.consecutive_failures, n.last_error), (0, None));
    let h = env.store.history(stuck).await.unwrap();
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].event, HistoryEvent::Applied(EventKind::Inconclusive));
    assert_eq!(
        (h[0].from, h[0].to),
        (Status::NotTested, Some(Status::NotTested))
    );
    assert_eq!(h[0].failure, None);
    assert_eq!(
        h[0].detail.as_deref(),
        Some("budget exceeded after 0.3 s at stage light")
    );
    let it = items(&env, job)
        .await
        .into_iter()
        .find(|i| i.node == stuck)
        .unwrap();
    assert_eq!(it.state, ItemState::TimedOut);
    assert_eq!(
        it.detail.as_deref(),
        Some("budget exceeded after 0.3 s at stage light")
    );
}

/// Gives `id` the status a real test of `outcome` would.
async fn mark(env: &Env, id: NodeId, outcome: Outcome) {
    env.store
        .apply(id, Event::Tested(outcome), ApplyContext::now())
        .await
        .unwrap();
}

/// A prober whose light probe answers at once and whose login never ends
/// (a login slower than any per-node budget).
fn login_never_ends() -> Arc<dyn Prober> {
    prober(|_, depth| async move {
        if depth == ProbeDepth::Auth {
            std::future::pending::<()>().await;
        }
        Ok(light_ok())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_budget_shorter_than_the_login_keeps_ping_light_and_auth_failed() {
    let env = env(3).await;
    let (light, rejected, counted) = (env.ids[0], env.ids[1], env.ids[2]);
    mark(&env, light, light_ok()).await;
    let auth_rejected = Outcome::failed(
        Level::Light,
        Failure::AuthRejected {
            code: Some(691),
            message: "bad password".into(),
        },
    );
    mark(&env, rejected, auth_rejected.clone()).await;
    // A node with real failures on record keeps exactly that record.
    mark(&env, counted, auth_rejected).await;
    mark(
        &env,
        counted,
        Outcome::failed(Level::None, Failure::Refused),
    )
    .await;
    mark(&env, counted, light_ok()).await;
    mark(
        &env,
        counted,
        Outcome::failed(Level::Light, Failure::AuthTimeout),
    )
    .await;
    let before = env.store.get(counted).await.unwrap().unwrap();
    assert_eq!(before.consecutive_failures, 1);

    let e = engine(&env, login_never_ends(), cfg());
    let job = e
        .start_job(
            JobKind::Auth,
            NodeFilter::all(),
            JobOptions::default().node_timeout(Duration::from_millis(400)),
        )
        .await
        .unwrap();
    let s = wait(&e, job).await;
    assert_eq!((s.progress.timed_out, s.progress.failed), (3, 0));

    assert_eq!(status(&env, light).await, Status::PingLight);
    assert_eq!(status(&env, rejected).await, Status::AuthFailed);
    let after = env.store.get(counted).await.unwrap().unwrap();
    assert_eq!(after.status, Status::PingLight);
    assert_eq!(
        (after.consecutive_failures, &after.last_error),
        (before.consecutive_failures, &before.last_error),
        "an overrun counts nothing against the node"
    );
    for (id, st) in [
        (light, Status::PingLight),
        (rejected, Status::AuthFailed),
        (counted, Status::PingLight),
    ] {
        let h = env.store.history(id).await.unwrap();
        let last = h.iter().max_by_key(|r| r.at).unwrap();
        assert_eq!(last.event, HistoryEvent::Applied(EventKind::Inconclusive));
        assert_eq!((last.from, last.to), (st, Some(st)));
        assert_eq!(last.job, Some(job));
        assert_eq!(
            last.detail.as_deref(),
            Some("budget exceeded after 0.4 s at stage auth")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_that_passed_light_and_overran_in_auth_ends_ping_light() {
    let env = env(2).await;
    let (fresh, failed_before) = (env.ids[0], env.ids[1]);
    mark(&env, failed_before, refused()).await;
    let e = engine(&env, login_never_ends(), cfg());
    let job = e
        .start_job(
            JobKind::Pipeline,
            NodeFilter::all(),
            JobOptions::default().node_timeout(Duration::from_millis(400)),
        )
        .await
        .unwrap();
    let s = wait(&e, job).await;
    assert_eq!(s.progress.timed_out, 2);
    for (id, from) in [
        (fresh, Status::NotTested),
        (failed_before, Status::PingFailed),
    ] {
        let n = env.store.get(id).await.unwrap().unwrap();
        assert_eq!(
            n.status,
            Status::PingLight,
            "light was proven before the overrun"
        );
        assert!(n.last_checked_at.is_some());
        let h = env.store.history(id).await.unwrap();
        let last = h.iter().max_by_key(|r| r.at).unwrap();
        assert_eq!(last.event, HistoryEvent::Applied(EventKind::Inconclusive));
        assert_eq!((last.from, last.to), (from, Some(Status::PingLight)));
        assert_eq!(last.reached, Some(Level::Light));
        assert_eq!(last.failure, None);
        assert_eq!(
            last.detail.as_deref(),
            Some("budget exceeded after 0.4 s at stage auth")
        );
        // Replaying the history gives the stored status.
        let mut st = Status::NotTested;
        for r in &h {
            st = transition(st, &r.replay_event().unwrap()).unwrap_or(st);
        }
        assert_eq!(st, Status::PingLight);
    }
    // The node whose last real test failed keeps that failure on record.
    let n = env.store.get(failed_before).await.unwrap().unwrap();
    assert_eq!(n.consecutive_failures, 1);
    assert_eq!(n.last_error.as_deref(), Some("connection refused"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_probe_is_a_failed_item_and_the_node_is_not_marked() {
    let env = env(6).await;
    let bad = env.ids[3];
    let e = engine(
        &env,
        prober(move |n, _| async move {
            if n.id == bad {
                panic!("index out of bounds in the prober");
            }
            Ok(light_ok())
        }),
        cfg(),
    );
    let job = e
        .start_job(JobKind::Light, NodeFilter::all(), JobOptions::default())
        .await
        .unwrap();
    let s = wait(&e, job).await;
    assert_eq!(s.job.state, JobState::Done);
    assert_eq!((s.progress.ok, s.progress.failed), (5, 1));
    let it = items(&env, job)
        .await
        .into_iter()
        .find(|i| i.node == bad)
        .unwrap();
    assert_eq!(it.state, ItemState::Failed);
    assert_eq!(
        it.detail.as_deref(),
        Some("test crashed: index out of bounds in the prober")
    );
    assert_eq!(status(&env, bad).await, Status::NotTested);
    assert!(env.store.history(bad).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_error_fails_fast_and_marks_no_node() {
    let env = env(40).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let e = engine(
        &env,
        prober(move |_, _| {
            c.fetch_add(1, Ordering::SeqCst);
            async {
                Err(ProbeError::NotPermitted(
                    "raw GRE sockets need CAP_NET_RAW".into(),
                ))
            }
        }),
        EngineConfig {
            concurrency: 2,
            ..cfg()
        },
    );
    let job = e
        .start_job(JobKind::Light, NodeFilter::all(), JobOptions::default())
        .await
        .unwrap();
    let s = wait(&e, job).await;
    assert_eq!(s.job.state, JobState::Cancelled);
    assert_eq!(s.progress.done(), 40);
    assert!(
        s.progress.failed >= 1 && s.progress.failed <= 2,
        "{:?}",
        s.progress
    );
    assert_eq!(s.progress.failed + s.progress.cancelled, 40);
    assert!(calls.load(Ordering::SeqCst) <= 4, "fails fast");
    for it in items(&env, job).await {
        let d = it.detail.unwrap_or_default();
        assert!(
            d.contains("CAP_NET_RAW"),
            "reason recorded on every item: {d}"
        );
        assert_eq!(it.status, None);
    }
    for id in &env.ids {
        assert_eq!(status(&env, *id).await, Status::NotTested);
        assert!(env.store.history(*id).await.unwrap().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_goes_as_far_as_it_can_and_keeps_the_furthest_real_outcome() {
    let env = env(2).await;
    let (up, down) = (env.ids[0], env.ids[1]);
    let e = engine(
        &env,
        prober(move |n, depth| async move {
            match depth {
                ProbeDepth::Light if n.id == up => Ok(light_ok()),
                ProbeDepth::Light => Ok(refused()),
                ProbeDepth::Auth => {
                    assert_eq!(n.id, up, "a node that failed light is not logged in");
                    Err(ProbeError::Config("auth depth not implemented yet".into()))
                }
            }
        }),
        cfg(),
    );
    let job = e
        .start_job(JobKind::Pipeline, NodeFilter::all(), JobOptions::default())
        .await
        .unwrap();
    let s = wait(&e, job).await;
    assert_eq!(
        s.job.state,
        JobState::Done,
        "a missing later stage is not fatal"
    );
    assert_eq!(status(&env, up).await, Status::PingLight);
    assert_eq!(status(&env, down).await, Status::PingFailed);
    let its = items(&env, job).await;
    assert_eq!(its[0].state, ItemState::Failed);
    let d = its[0].detail.clone().unwrap();
    assert!(
        d.contains("auth stage could not run") && d.contains("not implemented"),
        "{d}"
    );
    assert_eq!(its[1].detail.as_deref(), Some("connection refused"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_runs_speed_after_auth() {
    let env = env(1).await;
    let mut speed = MockSpeedTester::new();
    speed
        .expect_measure()
        .times(1)
        .returning(|_| Ok(Outcome::success(Level::Speed)));
    let e = Engine::new(
        Arc::clone(&env.store),
        prober(|_, depth| async move {
            Ok(match depth {
                ProbeDepth::Light => light_ok(),
                ProbeDepth::Auth => Outcome::success(Level::Auth),
            })
        }),
        Arc::new(speed),
        no_launcher(),
        cfg(),
    );
    let job = e
        .start_job(JobKind::Pipeline, NodeFilter::all(), JobOptions::default())
        .await
        .unwrap();
    assert_eq!(wait(&e, job).await.progress.ok, 1);
    assert_eq!(status(&env, env.ids[0]).await, Status::SpeedOk);
}

async fn verify(env: &Env, id: NodeId) {
    env.store
        .apply(
            id,
            Event::Tested(Outcome::success(Level::Speed)),
            ApplyContext::now(),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_start_below_level_3_is_refused_with_what_to_run_first() {
    let env = env(2).await;
    let (good, weak) = (env.ids[0], env.ids[1]);
    verify(&env, good).await;
    env.store
        .apply(
            weak,
            Event::Tested(Outcome::success(Level::Auth)),
            ApplyContext::now(),
        )
        .await
        .unwrap();
    let mut launcher = MockServiceLauncher::new();
    launcher.expect_running().returning(Vec::new);
    launcher
        .expect_start()
        .withf(move |n, prev| n.id == good && prev.is_none())
        .times(1)
        .returning(|_, _| Ok(endpoint(31_000)));
    let e = Engine::new(
        Arc::clone(&env.store),
        prober(|_, _| async { unreachable!("no test in a service job") }),
        no_speed(),
        Arc::new(launcher),
        cfg(),
    );
    let job = e
        .start_job(
            JobKind::ServiceStart,
            NodeFilter::all(),
            JobOptions::default(),
        )
        .await
        .unwrap();
    let s = wait(&e, job).await;
    assert_eq!((s.progress.ok, s.progress.failed), (1, 1));
    let its = items(&env, job).await;
    let refusal = its[1].detail.clone().unwrap();
    assert!(
        refusal.contains("ping_ok") && refusal.contains("connexa test speed"),
        "{refusal}"
    );
    let g = env.store.get(good).await.unwrap().unwrap();
    assert_eq!(g.status, Status::Online);
    assert!(g.service_wanted);
    assert_eq!(g.service.map(|s| s.port), Some(31_000));
    let w = env.store.get(weak).await.unwrap().unwrap();
    assert_eq!(w.status, Status::PingOk);
    assert!(!w.service_wanted, "a refused node is not marked wanted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_service_start_keeps_the_node_verified_and_stop_returns_it_to_speed_ok() {
    let env = env(2).await;
    for id in &env.ids {
        verify(&env, *id).await;
    }
    let launcher = Arc::new(FakeLauncher::default());
    lock(&launcher.fail).insert(env.ids[1]);
    let e = Engine::new(
        Arc::clone(&env.store),
        prober(|_, _| async { unreachable!() }),
        no_speed(),
        launcher.clone(),
        cfg(),
    );
    let job = e
        .start_job(
            JobKind::ServiceStart,
            NodeFilter::all(),
            JobOptions::default(),
        )
        .await
        .unwrap();
    let s = wait(&e, job).await;
    assert_eq!((s.progress.ok, s.progress.failed), (1, 1));
    assert_eq!(status(&env, env.ids[0]).await, Status::Online);
    let n1 = env.store.get(env.ids[1]).await.unwrap().unwrap();
    assert_eq!(n1.status, Status::SpeedOk);
    assert!(n1.last_error.unwrap().contains("port busy"));

    let job = e
        .start_job(
            JobKind::ServiceStop,
            NodeFilter::all(),
            JobOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(wait(&e, job).await.progress.ok, 2);
    for id in &env.ids {
        let n = env.store.get(*id).await.unwrap().unwrap();
        assert_eq!(n.status, Status::SpeedOk);
        assert!(!n.service_wanted);
    }
    assert!(lock(&launcher.running).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_an_unfinished_job_to_100_percent() {
    let env = env(30).await;
    // First process: ten nodes answer, the rest hang; then it "crashes".
    let quick: Vec<NodeId> = env.ids[..10].to_vec();
    let a = engine(
        &env,
        prober(move |n, _| {
            let quick = quick.contains(&n.id);
            async move {
                if !quick {
                    std::future::pending::<()>().await;
                }
                Ok(light_ok())
            }
        }),
        EngineConfig {
            concurrency: 5,
            ..cfg()
        },
    );
    let job = a
        .start_job(JobKind::Light, NodeFilter::all(), JobOptions::default())
        .await
        .unwrap();
    let store = Arc::clone(&env.store);
    until("10 ok and 5 stuck", || async {
        let p = store.progress(job).await.unwrap();
        p.ok == 10 && p.running == 5
    })
    .await;
    a.abort();
    drop(a);
    assert_eq!(env.store.job(job).await.unwrap().state, JobState::Running);

    // Second process on the same database file.
    let store2: Arc<dyn NodeStore> = Arc::new(SqlStore::connect(&env.url).await.unwrap());
    let tested = Arc::new(StdMutex::new(Vec::new()));
    let t = Arc::clone(&tested);
    let b = Engine::new(
        Arc::clone(&store2),
        prober(move |n, _| {
            lock(&t).push(n.id);
            async { Ok(refused()) }
        }),
        no_speed(),
        no_launcher(),
        cfg(),
    );
    assert_eq!(b.recover(RecoverPolicy::Resume).await.unwrap(), vec![job]);
    let s = wait(&b, job).await;
    assert_eq!(s.job.state, JobState::Done);
    assert_eq!(
        (s.progress.ok, s.progress.failed, s.progress.done()),
        (10, 20, 30)
    );
    let mut again = lock(&tested).clone();
    again.sort();
    assert_eq!(
        again,
        env.ids[10..].to_vec(),
        "finished results are not redone"
    );
    assert!(b.recover(RecoverPolicy::Resume).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_interrupt_closes_the_job() {
    let env = env(8).await;
    let a = engine(
        &env,
        prober(|_, _| async { std::future::pending().await }),
        EngineConfig {
            concurrency: 3,
            ..cfg()
        },
    );
    let job = a
        .start_job(JobKind::Light, NodeFilter::all(), JobOptions::default())
        .await
        .unwrap();
    let store = Arc::clone(&env.store);
    until("running", || async {
        store.progress(job).await.unwrap().running == 3
    })
    .await;
    a.abort();
    let b = engine(&env, prober(|_, _| async { unreachable!() }), cfg());
    assert_eq!(
        b.recover(RecoverPolicy::Interrupt).await.unwrap(),
        vec![job]
    );
    let s = wait(&b, job).await;
    assert_eq!(s.job.state, JobState::Interrupted);
    assert_eq!(s.progress.cancelled, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_job_from_another_process_is_picked_up_by_run_and_shutdown_is_graceful() {
    let env = env(6).await;
    let job = queue_job(
        env.store.as_ref(),
        JobKind::Light,
        NodeFilter::all(),
        JobOptions::default(),
    )
    .await
    .unwrap();
    let e = engine(
        &env,
        prober(|_, _| async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok(light_ok())
        }),
        EngineConfig {
            queue_interval: Duration::from_millis(20),
            ..cfg()
        },
    );
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let runner = {
        let e = e.clone();
        tokio::spawn(async move {
            e.run(async {
                let _ = rx.await;
            })
            .await
        })
    };
    let s = tokio::time::timeout(Duration::from_secs(10), e.wait(job.id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.progress.ok, 6);
    tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), runner)
        .await
        .expect("run returns on shutdown")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_checks_only_services_and_waits_for_the_threshold() {
    let env = env(4).await;
    let (a, b, plain, untested) = (env.ids[0], env.ids[1], env.ids[2], env.ids[3]);
    for id in [a, b, plain] {
        verify(&env, id).await;
    }
    let launcher = Arc::new(FakeLauncher::default());
    for id in [a, b] {
        let ep = launcher
            .start(&env.store.get(id).await.unwrap().unwrap(), None)
            .await
            .unwrap();
        env.store
            .apply(id, Event::ServiceStarted(ep), ApplyContext::now())
            .await
            .unwrap();
    }
    lock(&launcher.sick).insert(b);
    let e = Engine::new(
        Arc::clone(&env.store),
        prober(|_, _| async { unreachable!() }),
        no_speed(),
        launcher.clone(),
        cfg(),
    );
    for pass in 1..=2 {
        let r = e.monitor().await.unwrap();
        assert_eq!(
            (r.checked, r.unhealthy, r.health_failed),
            (2, 1, 0),
            "pass {pass}"
        );
        assert_eq!(status(&env, b).await, Status::Online, "below the threshold");
    }
    let r = e.monitor().await.unwrap();
    assert_eq!(r.health_failed, 1);
    assert_eq!(status(&env, b).await, Status::Offline);
    assert_eq!(status(&env, a).await, Status::Online);
    lock(&launcher.sick).clear();
    let r = e.monitor().await.unwrap();
    assert_eq!(r.health_ok, 1);
    assert_eq!(status(&env, b).await, Status::Online);
    let checked = lock(&launcher.health_checked).clone();
    assert_eq!(
        checked,
        HashSet::from([a, b]),
        "only nodes with a service are checked"
    );
    assert_eq!(status(&env, plain).await, Status::SpeedOk);
    assert_eq!(status(&env, untested).await, Status::NotTested);
    assert_eq!(env.store.history(plain).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciler_restarts_wanted_services_after_a_restart_and_stops_unwanted_ones() {
    let env = env(4).await;
    let (a, b, weak, c) = (env.ids[0], env.ids[1], env.ids[2], env.ids[3]);
    for id in [a, b, c] {
        verify(&env, id).await;
    }
    env.store
        .set_service_wanted(&NodeFilter::ids([a, b, weak]), true)
        .await
        .unwrap();
    let first = Arc::new(FakeLauncher::default());
    let e = Engine::new(
        Arc::clone(&env.store),
        prober(|_, _| async { unreachable!() }),
        no_speed(),
        first.clone(),
        cfg(),
    );
    let r = e.reconcile().await.unwrap();
    assert_eq!((r.started, r.start_failed), (2, 0));
    let ep_a = env.store.get(a).await.unwrap().unwrap().service.unwrap();
    assert_eq!(status(&env, a).await, Status::Online);
    assert_eq!(
        status(&env, weak).await,
        Status::NotTested,
        "only level 3 nodes are started"
    );
    assert_eq!(
        e.reconcile().await.unwrap(),
        ReconcileReport::default(),
        "idempotent"
    );

    // The process restarts: nothing runs. b is no longer wanted meanwhile.
    env.store
        .set_service_wanted(&NodeFilter::ids([b]), false)
        .await
        .unwrap();
    let second = Arc::new(FakeLauncher::default());
    let e2 = Engine::new(
        Arc::clone(&env.store),
        prober(|_, _| async { unreachable!() }),
        no_speed(),
        second.clone(),
        cfg(),
    );
    let r = e2.reconcile().await.unwrap();
    assert_eq!((r.started, r.marked_stopped), (1, 1));
    assert_eq!(
        lock(&second.starts).clone(),
        vec![(a, Some(ep_a.clone()))],
        "restarted with its stored port and credentials"
    );
    assert_eq!(status(&env, a).await, Status::Online);
    assert_eq!(status(&env, b).await, Status::SpeedOk);

    // A running service that is no longer wanted is stopped.
    env.store
        .set_service_wanted(&NodeFilter::ids([a]), false)
        .await
        .unwrap();
    let r = e2.reconcile().await.unwrap();
    assert_eq!(r.stopped, 1);
    assert!(lock(&second.running).is_empty());
    assert_eq!(status(&env, a).await, Status::SpeedOk);
    assert_eq!(status(&env, c).await, Status::SpeedOk);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciler_backs_off_a_failing_start_and_forgets_it_when_no_longer_wanted() {
    let env = env(2).await;
    let (a, b) = (env.ids[0], env.ids[1]);
    for id in [a, b] {
        verify(&env, id).await;
    }
    env.store
        .set_service_wanted(&NodeFilter::ids([a, b]), true)
        .await
        .unwrap();
    let launcher = Arc::new(FakeLauncher::default());
    lock(&launcher.fail).insert(b);
    let backoff = Duration::from_secs(2);
    let e = Engine::new(
        Arc::clone(&env.store),
        prober(|_, _| async { unreachable!() }),
        no_speed(),
        launcher.clone(),
        EngineConfig {
            restart_backoff: backoff,
            ..cfg()
        },
    );
    let starts_of_b = || {
        lock(&launcher.starts)
            .iter()
            .filter(|(n, _)| *n == b)
            .count()
    };
    // b's retry time is set during this pass: between these two instants plus the backoff.
    let before_failure = Instant::now();
    let r = e.reconcile().await.unwrap();
    let after_failure = Instant::now();
    assert_eq!((r.started, r.start_failed, r.deferred), (1, 1, 0));
    // The next passes leave b alone until its backoff runs out, even once it could start.
    let r = e.reconcile().await.unwrap();
    assert_eq!((r.started, r.start_failed, r.deferred), (0, 0, 1));
    lock(&launcher.fail).clear();
    let r = e.reconcile().await.unwrap();
    assert_eq!(r.deferred, 1, "{r:?}");
    assert!(
        before_failure.elapsed() < backoff,
        "the passes were too slow to check the backoff"
    );
    assert_eq!(starts_of_b(), 1);
    assert_eq!(
        status(&env, b).await,
        Status::SpeedOk,
        "a failed start never demotes"
    );
    assert_eq!(services_running_and_waiting(&env).await, (1, 1));
    tokio::time::sleep_until((after_failure + backoff + Duration::from_millis(20)).into()).await;
    let r = e.reconcile().await.unwrap();
    assert_eq!((r.started, r.deferred), (1, 0), "{r:?}");
    assert_eq!(status(&env, b).await, Status::Online);
    assert_eq!(services_running_and_waiting(&env).await, (2, 0));

    // A node that stops being wanted forgets its failures: wanted again, it is
    // tried on the next pass.
    lock(&launcher.fail).insert(a);
    lock(&launcher.running).remove(&a);
    let r = e.reconcile().await.unwrap();
    assert_eq!((r.start_failed, r.deferred), (1, 0), "{r:?}");
    assert_eq!(e.reconcile().await.unwrap().deferred, 1);
    for wanted in [false, true] {
        env.store
            .set_service_wanted(&NodeFilter::ids([a]), wanted)
            .await
            .unwrap();
        e.reconcile().await.unwrap();
    }
    assert_eq!(
        lock(&launcher.starts)
            .iter()
            .filter(|(n, _)| *n == a)
            .count(),
        3,
        "tried again at once after being unwanted"
    );
    assert_eq!(status(&env, a).await, Status::SpeedOk);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_cancelled_after_its_runner_died_is_completed_by_recover() {
    let env = env(6).await;
    let hang = || prober(|_, _| async { std::future::pending().await });
    let a = engine(&env, hang(), cfg());
    let job = a
        .start_job(JobKind::Light, NodeFilter::all(), JobOptions::default())
        .await
        .unwrap();
    let store = Arc::clone(&env.store);
    until("running", || async {
        store.progress(job).await.unwrap().running == 6
    })
    .await;
    a.abort();
    // Cancelled from another process while nobody runs the items.
    let b = engine(&env, hang(), cfg());
    b.cancel(job).await.unwrap();
    assert_eq!(env.store.progress(job).await.unwrap().running, 6);
    let c = engine(&env, hang(), cfg());
    assert_eq!(c.recover(RecoverPolicy::Resume).await.unwrap(), vec![job]);
    let s = wait(&c, job).await;
    assert_eq!(s.job.state, JobState::Cancelled);
    assert_eq!(s.progress.cancelled, 6);
    assert!(!c.is_running_here(job), "a cancelled job is not run again");
}

/// A runner that recorded a store error only returns afterwards: in the
/// moment before its task ends it already counts as not running, so a
/// `recover` right after the error resumes the job instead of skipping it
/// (engine_faults' `commits_failing_for_good_...` hit this window on a
/// loaded machine).
#[tokio::test]
async fn a_runner_that_recorded_a_store_error_is_not_alive_before_its_task_ends() {
    let (cancel, _) = watch::channel(false);
    let task = tokio::spawn(std::future::pending::<()>());
    let mut jobs = HashMap::new();
    jobs.insert(
        JobId(1),
        LocalJob {
            cancel,
            task,
            import: false,
        },
    );
    let failed = StdMutex::new(HashMap::new());
    assert!(runner_alive(&jobs, &failed, JobId(1)));
    assert!(!runner_alive(&jobs, &failed, JobId(2)), "no runner");
    lock(&failed).insert(JobId(1), "database is locked".to_string());
    assert!(!runner_alive(&jobs, &failed, JobId(1)));
    jobs[&JobId(1)].task.abort();
}

/// The proxies file is replaced through a temporary file beside it, so the
/// rename never crosses filesystems: also when the target is on another
/// filesystem than the current directory (tmpfs `/dev/shm` where there is
/// one). Nothing is left beside it.
#[test]
fn write_atomically_writes_beside_the_target() {
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .unwrap();
    let path = dir.path().join("proxies.txt");
    super::services::write_atomically(&path, b"a:1:u:p\n").unwrap();
    super::services::write_atomically(&path, b"b:2:u:p\n").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"b:2:u:p\n");
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("proxies.txt")]);
}
