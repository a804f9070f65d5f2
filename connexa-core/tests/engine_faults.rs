//! The job runner against a store that fails (transiently, permanently, after
//! committing), against the job deadline, and with cancellation and draining
//! racing its claims and commits — on a real SQLite file, through
//! [`support::FaultStore`]. The invariant everywhere: every item ends exactly
//! once, and a result is applied to its node at most once.

mod common;
mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use common::TestDb;
use connexa_core::domain::*;
use connexa_core::engine::{
    Engine, EngineConfig, EngineError, JobOptions, ReconcileReport, RecoverPolicy,
};
use connexa_core::ports::*;
use support::{Fault, FaultStore, Method};
use tokio::sync::Semaphore;

/// How the fake prober answers.
#[derive(Clone, Copy)]
enum Answer {
    /// Light reached, after `ms` milliseconds.
    Ok(u64),
    /// Never answers (only a deadline, the budget or a cancellation ends it).
    Hang,
    /// This outcome, at once.
    By(fn(&Node, ProbeDepth) -> Outcome),
}

/// A light prober with one behaviour for every node; counts its probes. With
/// a gate, each probe first takes a permit from it (tests open it at will).
struct FakeProber {
    answer: Answer,
    probes: AtomicU64,
    gate: Option<Arc<Semaphore>>,
}

#[async_trait]
impl Prober for FakeProber {
    async fn probe(&self, node: &Node, depth: ProbeDepth) -> Result<Outcome, ProbeError> {
        self.probes.fetch_add(1, Ordering::SeqCst);
        if let Some(g) = &self.gate {
            g.acquire().await.expect("gate open").forget();
        }
        match self.answer {
            Answer::Ok(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(Outcome::success(Level::Light))
            }
            Answer::Hang => std::future::pending().await,
            Answer::By(f) => Ok(f(node, depth)),
        }
    }
}

fn prober(answer: Answer) -> Arc<FakeProber> {
    Arc::new(FakeProber {
        answer,
        probes: AtomicU64::new(0),
        gate: None,
    })
}

fn config(concurrency: usize) -> EngineConfig {
    EngineConfig {
        concurrency,
        node_timeout: Duration::from_secs(10),
        poll_interval: Duration::from_millis(20),
        commit_delay: Duration::from_millis(2),
        ..EngineConfig::default()
    }
}

struct Env {
    db: TestDb,
    /// The real store, for the test's own reads (never disturbed).
    real: Arc<dyn NodeStore>,
    faults: Arc<FaultStore>,
    ids: Vec<NodeId>,
}

async fn env(n: usize) -> Env {
    let db = common::sqlite().await;
    let real: Arc<dyn NodeStore> = Arc::new(db.store.clone());
    let ids = common::seed(real.as_ref(), n).await;
    let faults = FaultStore::new(Arc::clone(&real));
    Env {
        db,
        real,
        faults,
        ids,
    }
}

impl Env {
    fn engine(&self, p: Arc<FakeProber>, cfg: EngineConfig) -> Engine {
        Engine::new(
            Arc::clone(&self.faults) as Arc<dyn NodeStore>,
            p,
            Arc::new(connexa_core::engine::NotAvailable),
            Arc::new(connexa_core::engine::NotAvailable),
            cfg,
        )
    }

    /// An engine whose speed tests and service starts and stops never end.
    fn hanging_engine(&self, cfg: EngineConfig) -> Engine {
        Engine::new(
            Arc::clone(&self.faults) as Arc<dyn NodeStore>,
            prober(Answer::Hang),
            Arc::new(Hanging),
            Arc::new(Hanging),
            cfg,
        )
    }

    /// Waits (on the real store) until the job ended with every item done.
    async fn done(&self, job: JobId) -> (Job, Progress) {
        let give_up = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let j = self.real.job(job).await.unwrap();
            let p = self.real.progress(job).await.unwrap();
            if j.state != JobState::Running && j.state != JobState::Queued && p.is_complete() {
                return (j, p);
            }
            assert!(
                tokio::time::Instant::now() < give_up,
                "job {job} never ended: {} {p:?}",
                j.state
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// History rows of each node recorded by `job`.
    async fn rows_of(&self, job: JobId) -> HashMap<NodeId, Vec<HistoryRow>> {
        let mut out = HashMap::new();
        for id in &self.ids {
            let rows: Vec<HistoryRow> = self
                .real
                .history(*id)
                .await
                .unwrap()
                .into_iter()
                .filter(|r| r.job == Some(job))
                .collect();
            out.insert(*id, rows);
        }
        out
    }

    /// Every item of `job` that ended ok or failed has exactly one history row
    /// of the job on its node, every other item none: each result was applied
    /// once, and nothing else was. Returns the number of rows.
    async fn applied_once(&self, job: JobId) -> usize {
        let items = self.real.recent_items(job, 1_000_000).await.unwrap();
        let rows = self.rows_of(job).await;
        let mut total = 0;
        for it in &items {
            let n = rows.get(&it.node).map_or(0, Vec::len);
            let want = match it.state {
                ItemState::Ok | ItemState::Failed => 1,
                _ => n.min(1),
            };
            assert_eq!(
                n, want,
                "node {} ({} {:?}): {n} history rows for the job",
                it.node, it.state, it.detail
            );
            total += n;
        }
        let with_items: std::collections::HashSet<NodeId> = items.iter().map(|i| i.node).collect();
        for (node, r) in &rows {
            assert!(
                r.is_empty() || with_items.contains(node),
                "node {node} has history of job {job} but no finished item"
            );
        }
        total
    }
}

async fn wait_runner_error(e: &Engine, job: JobId) -> String {
    match tokio::time::timeout(Duration::from_secs(20), e.wait(job))
        .await
        .expect("wait returns")
    {
        Err(EngineError::RunnerFailed { job: j, error }) => {
            assert_eq!(j, job);
            error
        }
        other => panic!("expected the runner to fail, got {other:?}"),
    }
}

// ---------------------------------------------------------------- store faults

/// Transient failures of `m` (`n` in a row, within the runner's 8 attempts)
/// are retried: the job ends done at 100 %, each result applied once.
async fn transient(m: Method, n: u64, fault: Fault) -> Env {
    let env = env(20).await;
    env.faults.next(m, n, fault);
    let e = env.engine(prober(Answer::Ok(1)), config(4));
    let job = e
        .start_job(JobKind::Light, NodeFilter::all(), JobOptions::default())
        .await
        .unwrap();
    let (j, p) = env.done(job).await;
    assert_eq!(j.state, JobState::Done);
    assert_eq!((p.ok, p.done(), p.total), (20, 20, 20), "{p:?}");
    assert_eq!(p.percent(), 100.0);
    assert_eq!(env.faults.injected(m), n, "every planned fault was hit");
    assert_eq!(env.applied_once(job).await, 20);
    for id in &env.ids {
        let node = env.real.get(*id).await.unwrap().unwrap();
        assert_eq!(node.status, Status::PingLight);
    }
    // A summary through the engine (the faults are used up).
    let s = e.wait(job).await.unwrap();
    assert_eq!(s.progress, p);
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_claim_failures_are_retried_up_to_seven_in_a_row() {
    let env = transient(Method::Claim, 7, Fault::Transient).await;
    // 7 failed attempts, then the claims that ran the job.
    assert!(env.faults.calls(Method::Claim) > 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_list_failures_are_retried() {
    transient(Method::List, 3, Fault::Transient).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_finish_failures_are_retried() {
    transient(Method::Finish, 3, Fault::Transient).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_acknowledgement_is_lost_is_not_applied_twice() {
    // The first commits go through in the database and still report an error;
    // the retry finds the items ended and writes nothing again.
    transient(Method::Finish, 3, Fault::AfterCommit).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_progress_and_job_read_failures_at_the_end_are_retried() {
    let env = env(6).await;
    // The runner reads the job state and the progress once, at the end.
    env.faults.next(Method::Progress, 3, Fault::Transient);
    env.faults.next(Method::SetJobState, 2, Fault::Transient);
    let e = env.engine(prober(Answer::Ok(1)), config(2));
    let job = e
        .start_job(JobKind::Light, NodeFilter::all(), JobOptions::default())
        .await
        .unwrap();
    let (j, p) = env.done(job).await;
    assert_eq!(j.state, JobState::Done);
    assert_eq!(p.ok, 6);
    assert_eq!(env.faults.injected(Method::Progress), 3);
    assert_eq!(env.faults.injected(Method::SetJobState), 2);
    env.faults.next(Method::Job, 3, Fault::Transient);
    let env2 = env;
    // The same for the job row, on a second job.
    let job2 = e
        .start_job(JobKind::Light, NodeFilter::all(), JobOptions::default())
        .await
        .unwrap();
    let (j2, p2) = env2.done(job2).await;
    assert_eq!((j2.state, p2.ok), (JobState::Done, 6));
    assert_eq!(env2.faults.injected(Method::Job), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_failing_eight_times_in_a_row_stops_the_job_with_the_error_and_loses_nothing() {
    let env = env(20).await;
    env.faults.next(Method::Claim, 8, Fault::Transient);
    let p = prober(Answer::Ok(1));
    let e = env.engine(Arc::clone(&p), config(4));
    let job = e
        .start_job(JobKind::Light, NodeFilter::all(), JobOptions::default())
        .await
        .unwrap();
    let err = wait_runner_error(&e, job).await;
    assert!(err.contains("injected Claim failure"), "{err}");
    // Exactly 8 attempts, then the runner gave up.
    assert_eq!(env.faults.calls(Method::Claim), 8);
    assert_eq!(p.probes.load(Ordering::SeqCst), 0);
    let j = env.real.job(job).await.unwrap();
    let prog = env.real.progress(job).await.unwrap();
    assert_eq!(
        j.state,
        JobState::Queued,
        "never claimed: left for recovery"
    );
    assert_eq!((prog.pending, prog.done()), (20, 0));
    // The store is back: recovery runs the job to the end.
    e.recover(RecoverPolicy::Resume).await.unwrap();
    let s = tokio::time::timeout(Duration::from_secs(10), e.wait(job))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((s.job.state, s.progress.ok), (JobState::Done, 20));
    assert_eq!(env.applied_once(job).await, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_failing_for_good_stops_the_job_with_the_error() {
    let env = env(10).await;
    env.faults.always(Method::List);
    let e = env.engine(prober(Answer::Ok(1)), config(4));
    let job = e
        .start_job(JobKind::Light, NodeFilter::all(), JobOptions::default())
        .await
        .unwrap();
    let err = wait_runner_error(&e, job).await;
    assert!(err.contains("injected List failure"), "{err}");
    assert_eq!(env.faults.calls(Method::List), 8);
    let prog = env.real.progress(job).await.unwrap();
    assert_eq!(prog.done(), 0);
    // The claimed items wait for recovery, which runs everything once.
    env.faults.heal(Method::List);
    e.recover(RecoverPolicy::Resume).await.unwrap();
    let s = tokio::time::timeout(Duration::from_secs(10), e.wait(job))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((s.job.state, s.progress.ok), (JobState::Done, 10));
    assert_eq!(env.applied_once(job).await, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_failing_for_good_stop_the_job_and_keep_every_committed_result() {
    let env = env(12).await;
    // Two group commits go through, then the store cannot commit any more.
    env.faults
        .after(Method::Finish, 2, u64::MAX, Fault::Transient);
    let gate = Arc::new(Semaphore::new(0));
    let p = Arc::new(FakeProber {
        answer: Answer::Ok(0),
        probes: AtomicU64::new(0),
        gate: Some(Arc::clone(&gate)),
    });
    let e = env.engine(p, config(2));
    let job = e
        .start_job(JobKind::Light, NodeFilter::all(), JobOptions::default())
        .await
        .unwrap();
    // One item at a time, so that each commit holds one result.
    for done in 1..=2 {
        gate.add_permits(1);
        let give_up = tokio::time::Instant::now() + Duration::from_secs(10);
        while env.real.progress(job).await.unwrap().ok < done {
            assert!(tokio::time::Instant::now() < give_up);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    gate.add_permits(100);
    let err = wait_runner_error(&e, job).await;
    assert!(err.contains("injected Finish failure"), "{err}");
    let prog = env.real.progress(job).await.unwrap();
    assert_eq!(prog.ok, 2, "the committed results stay: {prog:?}");
    assert!(!prog.is_complete());
    assert_eq!(env.real.job(job).await.unwrap().state, JobState::Running);
    assert_eq!(env.applied_once(job).await, 2);
    // Recovery after the store healed: every item ends, each result applied once.
    env.faults.heal(Method::Finish);
    e.recover(RecoverPolicy::Resume).await.unwrap();
    let s = tokio::time::timeout(Duration::from_secs(10), e.wait(job))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((s.job.state, s.progress.ok), (JobState::Done, 12));
    assert_eq!(env.applied_once(job).await, 12);
}

// -------------------------------------------------------------------- deadline

/// Marks every node of the env `speed_ok` (a verified node has the most to lose).
async fn verify_all(env: &Env) {
    for id in &env.ids {
        env.real
            .apply(
                *id,
                Event::Tested(Outcome::success(Level::Speed)),
                ApplyContext::now(),
            )
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_ends_items_in_flight_and_never_claimed_timed_out_without_demoting() {
    let env = env(10).await;
    verify_all(&env).await;
    let e = env.engine(prober(Answer::Hang), config(3));
    let job = e
        .start_job(
            JobKind::Light,
            NodeFilter::all(),
            JobOptions::default().deadline(Duration::from_millis(1500)),
        )
        .await
        .unwrap();
    let (j, p) = env.done(job).await;
    assert_eq!(j.state, JobState::Done);
    assert_eq!((p.timed_out, p.done(), p.total), (10, 10, 10), "{p:?}");
    assert_eq!(p.percent(), 100.0);
    let rows = env.rows_of(job).await;
    let mut in_flight = 0;
    for it in env.real.recent_items(job, 100).await.unwrap() {
        assert_eq!(it.state, ItemState::TimedOut);
        let d = it.detail.as_deref().unwrap_or_default();
        assert!(d.starts_with("job deadline reached"), "{d}");
        let node = env.real.get(it.node).await.unwrap().unwrap();
        assert_eq!(
            node.status,
            Status::SpeedOk,
            "a deadline is ours, not the node's"
        );
        assert_eq!((node.consecutive_failures, node.last_error), (0, None));
        match rows[&it.node].as_slice() {
            // Never claimed: nothing recorded on the node.
            [] => assert_eq!(d, "job deadline reached"),
            // In flight at the deadline: inconclusive, the status kept.
            [row] => {
                in_flight += 1;
                assert_eq!(row.event, HistoryEvent::Applied(EventKind::Inconclusive));
                assert_eq!((row.from, row.to), (Status::SpeedOk, Some(Status::SpeedOk)));
                assert_eq!(row.failure, None);
                assert!(d.starts_with("job deadline reached after"), "{d}");
                assert!(d.ends_with("at stage light"), "{d}");
            }
            more => panic!("node {}: {more:?}", it.node),
        }
    }
    // What the runner claimed (at most its 3 slots: the expiry claims up to
    // 1,000 at once) was in flight; nothing was claimed after the deadline.
    let claimed: usize = env
        .faults
        .claimed()
        .iter()
        .filter(|(max, _)| *max <= 3)
        .map(|(_, n)| n)
        .sum();
    assert!(claimed <= 3, "{:?}", env.faults.claimed());
    assert_eq!(in_flight, claimed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_far_deadline_lets_every_item_run() {
    let env = env(8).await;
    let e = env.engine(prober(Answer::Ok(5)), config(2));
    let job = e
        .start_job(
            JobKind::Light,
            NodeFilter::all(),
            JobOptions::default().deadline(Duration::from_secs(120)),
        )
        .await
        .unwrap();
    let (j, p) = env.done(job).await;
    assert_eq!((j.state, p.ok, p.timed_out), (JobState::Done, 8, 0));
    assert_eq!(env.applied_once(job).await, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_without_deadline_is_never_expired() {
    // One item at a time, each slower than the runner's poll: the runner loops
    // many times and never expires anything.
    let env = env(5).await;
    let e = env.engine(prober(Answer::Ok(60)), config(1));
    let job = e
        .start_job(JobKind::Light, NodeFilter::all(), JobOptions::default())
        .await
        .unwrap();
    let (j, p) = env.done(job).await;
    assert_eq!(j.deadline, None);
    assert_eq!((j.state, p.ok, p.timed_out), (JobState::Done, 5, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_requeued_by_another_process_are_not_expired_by_a_runner_without_deadline() {
    // Runner A claimed what it could; while its items run, another process's
    // recovery puts a dead worker's item back to pending. A's job has no
    // deadline: A must leave that item pending (not end it as "deadline
    // reached"), and the next runner runs it.
    let env = env(3).await;
    let gate = Arc::new(Semaphore::new(0));
    let p = Arc::new(FakeProber {
        answer: Answer::Ok(0),
        probes: AtomicU64::new(0),
        gate: Some(Arc::clone(&gate)),
    });
    let job = connexa_core::engine::queue_job(
        env.real.as_ref(),
        JobKind::Light,
        NodeFilter::all(),
        JobOptions::default(),
    )
    .await
    .unwrap();
    // A worker of a process that died holds one item.
    let dead = env
        .real
        .claim_items(
            job.id,
            "dead",
            1,
            chrono::Utc::now(),
            std::time::Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    let a = env.engine(
        Arc::clone(&p),
        EngineConfig {
            queue_interval: Duration::from_millis(10),
            ..config(4)
        },
    );
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let run = {
        let a = a.clone();
        tokio::spawn(async move {
            a.run(async {
                let _ = rx.await;
            })
            .await
        })
    };
    // A picks the job up, claims the two other items, then claims nothing more.
    let give_up = tokio::time::Instant::now() + Duration::from_secs(10);
    while p.probes.load(Ordering::SeqCst) < 2 || env.faults.calls(Method::Claim) < 2 {
        assert!(tokio::time::Instant::now() < give_up);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(env.faults.calls(Method::Claim), 2, "A stopped claiming");
    // Recovery elsewhere: every running item goes back to pending.
    env.real.requeue_running(job.id).await.unwrap();
    gate.add_permits(100);
    let s = tokio::time::timeout(Duration::from_secs(10), a.wait(job.id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((s.progress.ok, s.progress.timed_out), (3, 0), "{s:?}");
    assert_eq!(s.job.state, JobState::Done);
    assert_eq!(env.applied_once(job.id).await, 3);
    tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .unwrap()
        .unwrap();
}

// ------------------------------------------------------- cancellation, drain

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_racing_with_claims_ends_every_item_exactly_once() {
    let env = env(24).await;
    let e = env.engine(prober(Answer::Ok(1)), config(4));
    for i in 0..20u64 {
        let job = e
            .start_job(JobKind::Light, NodeFilter::all(), JobOptions::default())
            .await
            .unwrap();
        // Cancel at a different point of the claim loop each time.
        tokio::time::sleep(Duration::from_micros(i * 700)).await;
        e.cancel(job).await.unwrap();
        let s = tokio::time::timeout(Duration::from_secs(10), e.wait(job))
            .await
            .expect("a cancelled job ends")
            .unwrap();
        assert!(
            matches!(s.job.state, JobState::Cancelled | JobState::Done),
            "{}",
            s.job.state
        );
        assert_eq!((s.progress.total, s.progress.done()), (24, 24));
        if s.job.state == JobState::Cancelled {
            assert_eq!(s.progress.timed_out, 0);
        }
        let items = env.real.recent_items(job, 1_000).await.unwrap();
        assert_eq!(items.len(), 24, "one result per item");
        assert!(items.iter().all(|i| i.state.is_terminal()));
        assert_eq!(env.applied_once(job).await as u64, s.progress.ok);
        let give_up = tokio::time::Instant::now() + Duration::from_secs(10);
        while e.is_running_here(job) {
            assert!(tokio::time::Instant::now() < give_up, "the runner ends");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_racing_with_commits_leaves_no_item_running_and_loses_no_result() {
    let env = env(24).await;
    let e = env.engine(prober(Answer::Ok(2)), config(4));
    for i in 0..12u64 {
        let job = e
            .start_job(JobKind::Light, NodeFilter::all(), JobOptions::default())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(i * 2)).await;
        // SIGTERM: stop claiming, let the items in flight end and commit.
        tokio::time::timeout(Duration::from_secs(10), e.drain())
            .await
            .expect("drain ends");
        let p = env.real.progress(job).await.unwrap();
        assert_eq!(p.running, 0, "every item in flight was committed: {p:?}");
        assert_eq!(p.pending + p.ok, 24, "nothing else happened: {p:?}");
        assert_eq!((p.cancelled, p.timed_out, p.failed), (0, 0, 0));
        let state = env.real.job(job).await.unwrap().state;
        if p.pending > 0 {
            assert!(
                matches!(state, JobState::Running | JobState::Queued),
                "left for the next process: {state}"
            );
        }
        assert_eq!(env.applied_once(job).await as u64, p.ok);
        // The next process resumes the rest; each item still ends once.
        e.recover(RecoverPolicy::Resume).await.unwrap();
        let s = tokio::time::timeout(Duration::from_secs(10), e.wait(job))
            .await
            .expect("resumed job ends")
            .unwrap();
        assert_eq!((s.job.state, s.progress.ok), (JobState::Done, 24));
        assert_eq!(env.applied_once(job).await, 24);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_of_run_drains_with_items_in_flight() {
    let env = env(16).await;
    let gate = Arc::new(Semaphore::new(0));
    let p = Arc::new(FakeProber {
        answer: Answer::Ok(0),
        probes: AtomicU64::new(0),
        gate: Some(Arc::clone(&gate)),
    });
    let e = env.engine(Arc::clone(&p), config(4));
    let job = e
        .start_job(JobKind::Light, NodeFilter::all(), JobOptions::default())
        .await
        .unwrap();
    let give_up = tokio::time::Instant::now() + Duration::from_secs(10);
    while p.probes.load(Ordering::SeqCst) < 4 {
        assert!(tokio::time::Instant::now() < give_up);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Shutdown while 4 items are in flight; they end during the grace.
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
    tx.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    gate.add_permits(4);
    tokio::time::timeout(Duration::from_secs(10), runner)
        .await
        .expect("run returns after the drain")
        .unwrap();
    let prog = env.real.progress(job).await.unwrap();
    assert_eq!(
        (prog.ok, prog.pending, prog.running),
        (4, 12, 0),
        "{prog:?}"
    );
    assert_eq!(env.real.job(job).await.unwrap().state, JobState::Running);
    assert_eq!(
        p.probes.load(Ordering::SeqCst),
        4,
        "nothing claimed after SIGTERM"
    );
    assert_eq!(env.applied_once(job).await, 4);
    drop(env.db);
}

// ------------------------------------------------- batching, budgets, verdicts

/// Speed tests and service actions that never end.
struct Hanging;

#[async_trait]
impl SpeedTester for Hanging {
    async fn measure(&self, _node: &Node) -> Result<Outcome, ProbeError> {
        std::future::pending().await
    }
}

#[async_trait]
impl ServiceLauncher for Hanging {
    async fn start(
        &self,
        _node: &Node,
        _previous: Option<ServiceEndpoint>,
    ) -> Result<ServiceEndpoint, ServiceError> {
        std::future::pending().await
    }
    async fn stop(&self, _node: NodeId) -> Result<(), ServiceError> {
        std::future::pending().await
    }
    async fn health(&self, _node: &Node) -> Health {
        Health::Unhealthy("hangs".into())
    }
    async fn running(&self) -> Vec<NodeId> {
        Vec::new()
    }
}

fn gated(gate: &Arc<Semaphore>) -> Arc<FakeProber> {
    Arc::new(FakeProber {
        answer: Answer::Ok(0),
        probes: AtomicU64::new(0),
        gate: Some(Arc::clone(gate)),
    })
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let give_up = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(tokio::time::Instant::now() < give_up, "waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_take_the_free_slots_together_and_never_more_than_claim_batch() {
    let env = env(8).await;
    let gate = Arc::new(Semaphore::new(0));
    let p = gated(&gate);
    let e = env.engine(
        Arc::clone(&p),
        EngineConfig {
            claim_batch: 3,
            ..config(8)
        },
    );
    let job = e
        .start_job(JobKind::Light, NodeFilter::all(), JobOptions::default())
        .await
        .unwrap();
    until("8 probes", || p.probes.load(Ordering::SeqCst) == 8).await;
    // 8 free slots, at most 3 per claim: 3, 3, 2.
    assert_eq!(env.faults.claim_sizes(), vec![3, 3, 2]);
    gate.add_permits(8);
    let (j, prog) = env.done(job).await;
    assert_eq!((j.state, prog.ok), (JobState::Done, 8));
    let sizes = env.faults.claim_sizes();
    assert!(sizes.iter().all(|n| *n <= 3), "{sizes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_larger_than_a_default_page_finds_every_node() {
    let env = env(150).await;
    let e = env.engine(prober(Answer::Ok(0)), config(150));
    let job = e
        .start_job(JobKind::Light, NodeFilter::all(), JobOptions::default())
        .await
        .unwrap();
    let (j, p) = env.done(job).await;
    assert_eq!((j.state, p.ok, p.failed), (JobState::Done, 150, 0), "{p:?}");
    assert_eq!(env.faults.claim_sizes()[0], 150, "one claim of 150");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_ending_together_are_group_committed_within_commit_batch() {
    let env = env(8).await;
    let gate = Arc::new(Semaphore::new(0));
    let p = gated(&gate);
    let e = env.engine(
        Arc::clone(&p),
        EngineConfig {
            commit_batch: 3,
            commit_delay: Duration::from_millis(300),
            ..config(8)
        },
    );
    let job = e
        .start_job(JobKind::Light, NodeFilter::all(), JobOptions::default())
        .await
        .unwrap();
    until("8 probes", || p.probes.load(Ordering::SeqCst) == 8).await;
    gate.add_permits(8);
    let (_, prog) = env.done(job).await;
    assert_eq!(prog.ok, 8);
    let sizes = env.faults.commit_sizes();
    assert_eq!(sizes.iter().sum::<usize>(), 8, "{sizes:?}");
    assert!(
        sizes.iter().all(|n| *n <= 3),
        "at most commit_batch: {sizes:?}"
    );
    assert!(
        sizes.len() < 8,
        "results that end together share commits: {sizes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_is_ok_only_when_it_reached_its_aim_without_a_failure() {
    let env = env(3).await;
    // Node 1 passes; node 2 reaches the level but reports a failure; node 3
    // reports no failure but stays below the level.
    fn by(n: &Node, _d: ProbeDepth) -> Outcome {
        match n.id.0 % 3 {
            1 => Outcome::success(Level::Light),
            2 => Outcome::failed(Level::Light, Failure::Refused),
            _ => Outcome::success(Level::None),
        }
    }
    let p = prober(Answer::By(by));
    let e = env.engine(Arc::clone(&p), config(4));
    let job = e
        .start_job(JobKind::Light, NodeFilter::all(), JobOptions::default())
        .await
        .unwrap();
    let (_, prog) = env.done(job).await;
    assert_eq!((prog.ok, prog.failed), (1, 2), "{prog:?}");
    for it in env.real.recent_items(job, 10).await.unwrap() {
        let want = if it.node.0 % 3 == 1 {
            ItemState::Ok
        } else {
            ItemState::Failed
        };
        assert_eq!(it.state, want, "node {}", it.node);
    }
    // A pipeline stops at a light stage that reported a failure.
    let before = p.probes.load(Ordering::SeqCst);
    let job = e
        .start_job(
            JobKind::Pipeline,
            NodeFilter::ids([env.ids[1]]),
            JobOptions::default(),
        )
        .await
        .unwrap();
    let (_, prog) = env.done(job).await;
    assert_eq!(prog.failed, 1);
    assert_eq!(p.probes.load(Ordering::SeqCst), before + 1, "no auth stage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_of_speed_tests_and_service_actions_say_what_ran_out() {
    let env = env(2).await;
    verify_all(&env).await;
    let e = env.hanging_engine(config(4));
    let budget = JobOptions::default().node_timeout(Duration::from_millis(200));
    let one = NodeFilter::ids([env.ids[0]]);

    // A speed test over its budget: inconclusive at stage speed, status kept.
    let job = e
        .start_job(JobKind::Speed, one.clone(), budget.clone())
        .await
        .unwrap();
    let (_, p) = env.done(job).await;
    assert_eq!(p.timed_out, 1);
    let row = &env.rows_of(job).await[&env.ids[0]][0];
    assert_eq!(row.event, HistoryEvent::Applied(EventKind::Inconclusive));
    assert_eq!(
        row.detail.as_deref(),
        Some("budget exceeded after 0.2 s at stage speed")
    );
    assert_eq!(row.to, Some(Status::SpeedOk));

    // A service start over its budget: a failed start, the status kept.
    let job = e
        .start_job(JobKind::ServiceStart, one.clone(), budget.clone())
        .await
        .unwrap();
    let (_, p) = env.done(job).await;
    assert_eq!(p.timed_out, 1);
    let rows = env.rows_of(job).await;
    let row = &rows[&env.ids[0]][0];
    assert_eq!(
        row.event,
        HistoryEvent::Applied(EventKind::ServiceStartFailed)
    );
    assert_eq!(row.detail.as_deref(), Some("timed out after 200ms"));
    assert_eq!(row.to, Some(Status::SpeedOk));

    // A service stop over its budget records nothing on the node.
    let job = e
        .start_job(JobKind::ServiceStop, one.clone(), budget)
        .await
        .unwrap();
    let (_, p) = env.done(job).await;
    assert_eq!(p.timed_out, 1);
    let items = env.real.recent_items(job, 10).await.unwrap();
    assert_eq!(items[0].detail.as_deref(), Some("timed out after 200ms"));
    assert!(env.rows_of(job).await[&env.ids[0]].is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_start_makes_the_service_wanted_again() {
    let env = env(1).await;
    verify_all(&env).await;
    let job = connexa_core::engine::queue_job(
        env.real.as_ref(),
        JobKind::ServiceStart,
        NodeFilter::all(),
        JobOptions::default(),
    )
    .await
    .unwrap();
    // A stop request cleared the desired state before the start job ran.
    env.real
        .set_service_wanted(&NodeFilter::all(), false)
        .await
        .unwrap();
    let e = env.engine(prober(Answer::Hang), config(2));
    e.recover(RecoverPolicy::Resume).await.unwrap();
    let (_, p) = env.done(job.id).await;
    assert_eq!(p.failed, 1, "NotAvailable fails the start: {p:?}");
    let node = env.real.get(env.ids[0]).await.unwrap().unwrap();
    assert!(node.service_wanted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_cancelled_in_the_store_stays_cancelled_when_its_last_items_end() {
    // Another process cancels the job while this runner's last items run and
    // before its next look at the store: the runner must not mark it done.
    let env = env(2).await;
    let gate = Arc::new(Semaphore::new(0));
    let p = gated(&gate);
    let e = env.engine(
        Arc::clone(&p),
        EngineConfig {
            poll_interval: Duration::from_secs(3_600),
            ..config(4)
        },
    );
    let job = e
        .start_job(JobKind::Light, NodeFilter::all(), JobOptions::default())
        .await
        .unwrap();
    until("2 probes and an empty claim", || {
        p.probes.load(Ordering::SeqCst) == 2 && env.faults.calls(Method::Claim) == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    env.real
        .set_job_state(job, JobState::Cancelled, chrono::Utc::now())
        .await
        .unwrap();
    gate.add_permits(2);
    let (j, prog) = env.done(job).await;
    assert_eq!(prog.ok, 2);
    assert_eq!(j.state, JobState::Cancelled);
    until("the runner ends", || !e.is_running_here(job)).await;
    assert_eq!(env.real.job(job).await.unwrap().state, JobState::Cancelled);
}

/// Services in memory: a restart of the process is `running.clear()`.
#[derive(Default)]
struct MemLauncher {
    running: std::sync::Mutex<std::collections::HashSet<NodeId>>,
    starts: AtomicU64,
    /// With a gate, each health check first takes a permit from it.
    health_gate: Option<Arc<Semaphore>>,
    checks: AtomicU64,
    /// With a gate, each start (after counting itself) takes a permit from it.
    start_gate: Option<Arc<Semaphore>>,
    /// Starts of these nodes fail.
    fail_starts: std::sync::Mutex<std::collections::HashSet<NodeId>>,
    /// Health checks of these nodes fail (as do those of services not running).
    unhealthy: std::sync::Mutex<std::collections::HashSet<NodeId>>,
}

#[async_trait]
impl ServiceLauncher for MemLauncher {
    async fn start(
        &self,
        node: &Node,
        previous: Option<ServiceEndpoint>,
    ) -> Result<ServiceEndpoint, ServiceError> {
        self.starts.fetch_add(1, Ordering::SeqCst);
        if let Some(g) = &self.start_gate {
            g.acquire().await.expect("gate open").forget();
        }
        if self.fail_starts.lock().unwrap().contains(&node.id) {
            return Err(ServiceError::StartFailed("refused by the test".into()));
        }
        self.running.lock().unwrap().insert(node.id);
        Ok(previous.unwrap_or_else(|| ServiceEndpoint {
            host: "127.0.0.1".into(),
            port: 30_000 + node.id.0 as u16,
            username: "u".into(),
            password: Secret::new("socks-secret-pw"),
        }))
    }
    async fn stop(&self, node: NodeId) -> Result<(), ServiceError> {
        match self.running.lock().unwrap().remove(&node) {
            true => Ok(()),
            false => Err(ServiceError::NotRunning(node)),
        }
    }
    async fn health(&self, node: &Node) -> Health {
        self.checks.fetch_add(1, Ordering::SeqCst);
        if let Some(g) = &self.health_gate {
            g.acquire().await.expect("gate open").forget();
        }
        if !self.running.lock().unwrap().contains(&node.id) {
            Health::Unhealthy("not running here".into())
        } else if self.unhealthy.lock().unwrap().contains(&node.id) {
            Health::Unhealthy("the test says so".into())
        } else {
            Health::Healthy
        }
    }
    async fn running(&self) -> Vec<NodeId> {
        self.running.lock().unwrap().iter().copied().collect()
    }
    fn counters(&self, node: NodeId) -> Option<ServiceCounters> {
        // Fixed counters of a running service (3 clients connected now).
        self.running
            .lock()
            .unwrap()
            .contains(&node)
            .then(|| ServiceCounters {
                connections: 3,
                connections_total: 7,
                bytes_up: 100,
                bytes_down: 200,
                ..ServiceCounters::default()
            })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_job_starts_what_does_not_run_and_leaves_a_running_service_alone() {
    let env = env(2).await;
    verify_all(&env).await;
    let launcher = Arc::new(MemLauncher::default());
    let e = services_engine(&env, &launcher, config(4));
    let start = || {
        e.start_job(
            JobKind::ServiceStart,
            NodeFilter::all(),
            JobOptions::default(),
        )
    };
    let details = |job: JobId| {
        let real = Arc::clone(&env.real);
        async move {
            let mut d: Vec<String> = real
                .recent_items(job, 10)
                .await
                .unwrap()
                .into_iter()
                .map(|i| i.detail.unwrap_or_default())
                .collect();
            d.sort();
            d
        }
    };
    // Nothing runs: both start and go online.
    let job = start().await.unwrap();
    let (_, p) = env.done(job).await;
    assert_eq!(p.ok, 2);
    assert_eq!(launcher.starts.load(Ordering::SeqCst), 2);
    for id in &env.ids {
        let n = env.real.get(*id).await.unwrap().unwrap();
        assert_eq!(n.status, Status::Online);
    }
    assert!(
        details(job)
            .await
            .iter()
            .all(|d| d.starts_with("service on 127.0.0.1:"))
    );
    // Online and running: left alone.
    let job = start().await.unwrap();
    let (_, p) = env.done(job).await;
    assert_eq!(p.ok, 2);
    assert_eq!(launcher.starts.load(Ordering::SeqCst), 2, "no second start");
    assert_eq!(
        details(job).await,
        vec!["already running", "already running"]
    );
    // A restarted process runs nothing although the nodes are online: start again.
    launcher.running.lock().unwrap().clear();
    let job = start().await.unwrap();
    let (_, p) = env.done(job).await;
    assert_eq!(p.ok, 2);
    assert_eq!(launcher.starts.load(Ordering::SeqCst), 4);
}

// ------------------------------------------------------- workers and leases

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_leaves_a_live_workers_items_alone_and_reclaims_a_lapsed_lease() {
    let env = env(6).await;
    let gate = Arc::new(Semaphore::new(0));
    let p = Arc::new(FakeProber {
        answer: Answer::Ok(1),
        probes: AtomicU64::new(0),
        gate: Some(Arc::clone(&gate)),
    });
    let worker = |name: &str| EngineConfig {
        worker: name.to_owned(),
        lease: Duration::from_secs(3600),
        ..config(3)
    };
    // A, a live registered worker, holds three items (its tests wait at the gate).
    let a = env.engine(Arc::clone(&p), worker("a"));
    a.register().await.unwrap();
    let job = a
        .start_job(JobKind::Light, NodeFilter::all(), JobOptions::default())
        .await
        .unwrap();
    let give_up = tokio::time::Instant::now() + Duration::from_secs(10);
    while p.probes.load(Ordering::SeqCst) < 3 {
        assert!(tokio::time::Instant::now() < give_up);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // A worker that died holds one more, with a lease that already ran out.
    let lapsed = env
        .real
        .claim_items(
            job,
            "dead",
            1,
            chrono::Utc::now() - chrono::Duration::hours(2),
            Duration::from_secs(3600),
        )
        .await
        .unwrap();
    assert_eq!(lapsed.len(), 1);
    // B starts: its recovery puts back only the dead worker's item.
    let b = env.engine(Arc::clone(&p), worker("b"));
    b.register().await.unwrap();
    assert_eq!(env.real.progress(job).await.unwrap().running, 4);
    b.recover(RecoverPolicy::Resume).await.unwrap();
    let w = env.real.workers(chrono::Utc::now()).await.unwrap();
    let held = |n: &str| {
        w.iter()
            .find(|w| w.name == n)
            .map_or(0, |w| w.items_in_flight)
    };
    assert_eq!(held("a"), 3, "{w:?}");
    // A third process recovering with `Interrupt` leaves the job to its live workers.
    let c = env.engine(Arc::clone(&p), worker("c"));
    c.recover(RecoverPolicy::Interrupt).await.unwrap();
    assert_ne!(
        env.real.job(job).await.unwrap().state,
        JobState::Interrupted,
        "a job live workers run was interrupted"
    );
    assert_eq!(env.real.progress(job).await.unwrap().cancelled, 0);
    // Everything runs to the end; every item ends once, nothing is refused.
    gate.add_permits(1_000);
    let s = tokio::time::timeout(Duration::from_secs(10), b.wait(job))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((s.job.state, s.progress.ok), (JobState::Done, 6));
    assert_eq!(env.applied_once(job).await, 6);
    assert_eq!(a.results_refused() + b.results_refused(), 0);
    // The dead worker's late result is refused.
    let late = env
        .real
        .finish_items(vec![ItemResult {
            item: lapsed[0].item,
            token: lapsed[0].token,
            state: ItemState::Ok,
            event: None,
            enrichment: None,
            detail: None,
            at: chrono::Utc::now(),
        }])
        .await
        .unwrap();
    assert!(!late[0].written);
    a.deregister().await.unwrap();
    b.deregister().await.unwrap();
    assert!(
        env.real
            .workers(chrono::Utc::now())
            .await
            .unwrap()
            .is_empty()
    );
}

/// A services worker cut off from PostgreSQL (its heartbeats fail) stops the
/// services placed on it by itself, before its lease can run out and another
/// worker take them over: never two copies of one service. When its
/// heartbeats get through again, placement gives them back and they restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_worker_cut_off_from_the_database_stops_its_services_before_its_lease_ends() {
    let env = wanted_on_postgres(3).await;
    let launcher = Arc::new(MemLauncher::default());
    let e = services_engine(
        &env,
        &launcher,
        EngineConfig {
            worker: "cut-off".into(),
            roles: vec![WorkerRole::Services],
            lease: Duration::from_secs(3),
            heartbeat_interval: Duration::from_millis(50),
            // Longer than half the lease: the margin is half the lease (1.5 s).
            reconcile_interval: Duration::from_secs(10),
            ..config(4)
        },
    );
    e.register().await.unwrap();
    let r = e.reconcile().await.unwrap();
    assert_eq!(r.started, 3, "{r:?}");
    assert_eq!(launcher.running().await.len(), 3);

    // Cut off: every heartbeat fails. The services stop here before the lease
    // (3 s after the last good beat) ends: at 3 s less the margin (1.5 s) —
    // not at the first failed beat (a blip must not stop services).
    env.faults.always(Method::Heartbeat);
    let cut = tokio::time::Instant::now();
    let give_up = cut + Duration::from_secs(10);
    while !launcher.running().await.is_empty() {
        assert!(tokio::time::Instant::now() < give_up, "services still run");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The last good beat was at most one interval (50 ms) before the cut, so
    // the stop is due 1.45 s after it at the earliest; a stop at the first
    // failed beat comes ~50 ms after it (1 s leaves room for a late wake-up).
    let after = cut.elapsed();
    assert!(
        after >= Duration::from_millis(1_000),
        "services stopped {after:?} after the heartbeats began to fail, before lease less margin"
    );
    // The worker's row, read from the database, still says it is alive:
    // nobody could have taken its services yet.
    let row = env
        .real
        .workers(chrono::Utc::now())
        .await
        .unwrap()
        .into_iter()
        .find(|w| w.name == "cut-off")
        .unwrap();
    assert!(row.alive, "stopped only after the lease ended: {row:?}");
    // A pass while cut off starts nothing.
    assert!(e.reconcile().await.is_err());
    assert!(launcher.running().await.is_empty());
    // Back: the next pass beats, is given its services again and starts them.
    env.faults.heal(Method::Heartbeat);
    let r = e.reconcile().await.unwrap();
    assert_eq!(r.started, 3, "{r:?}");
    assert_eq!(launcher.running().await.len(), 3);
    e.deregister().await.unwrap();
}

/// An engine that did not register (one process on SQLite: no placement)
/// reconciles without heartbeats: it never appears as a worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_that_did_not_register_reconciles_without_becoming_a_worker() {
    let env = env(3).await;
    verify_and_want_all(&env).await;
    let launcher = Arc::new(MemLauncher::default());
    let e = services_engine(&env, &launcher, config(4));
    assert!(e.config().roles.contains(&WorkerRole::Services));
    let r = e.reconcile().await.unwrap();
    assert_eq!(r.started, 3, "{r:?}");
    assert_eq!(env.faults.calls(Method::Heartbeat), 0);
    assert!(
        env.real
            .workers(chrono::Utc::now())
            .await
            .unwrap()
            .is_empty(),
        "an unregistered engine became a worker"
    );
}

/// Placement on PostgreSQL: a second pass of a worker that runs its services
/// changes nothing; a service pinned to another worker stops here (released:
/// not counted as stopped, no `ServiceStopped`) and starts there; its node is
/// verified at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_service_placed_on_another_worker_is_released_here_and_started_there() {
    let env = wanted_on_postgres(3).await;
    let worker = |name: &str, launcher: &Arc<MemLauncher>| services_worker(&env, name, launcher);
    let (la, lb) = (
        Arc::new(MemLauncher::default()),
        Arc::new(MemLauncher::default()),
    );
    let a = worker("a", &la);
    a.register().await.unwrap();
    let r = a.reconcile().await.unwrap();
    assert_eq!(r.started, 3, "{r:?}");
    // A second pass: everything runs where it is placed.
    let r = a.reconcile().await.unwrap();
    assert_eq!(r, ReconcileReport::default());
    assert_eq!(
        (la.running().await.len(), la.starts.load(Ordering::SeqCst)),
        (3, 3)
    );

    let b = worker("b", &lb);
    b.register().await.unwrap();
    let moved = env.ids[0];
    env.real
        .pin_services(&[moved], Some("b".into()))
        .await
        .unwrap();
    let r = a.reconcile().await.unwrap();
    assert_eq!(
        r,
        ReconcileReport {
            released: 1,
            ..ReconcileReport::default()
        }
    );
    let mut here = la.running().await;
    here.sort_unstable();
    assert_eq!(here, env.ids[1..].to_vec());
    let r = b.reconcile().await.unwrap();
    assert_eq!(r.started, 1, "{r:?}");
    assert_eq!(lb.running().await, vec![moved]);
    for id in &env.ids {
        let n = env.real.get(*id).await.unwrap().unwrap();
        assert!(n.status.is_verified(), "{id}: {}", n.status);
    }
    a.deregister().await.unwrap();
    b.deregister().await.unwrap();
}

/// A service whose node was deleted while it ran (its row is gone, so no
/// query of wanted or stale services finds it) is stopped by the next pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_whose_node_was_deleted_is_stopped_by_the_next_pass() {
    let env = env(2).await;
    verify_and_want_all(&env).await;
    let launcher = Arc::new(MemLauncher::default());
    let e = services_engine(&env, &launcher, config(4));
    assert_eq!(e.reconcile().await.unwrap().started, 2);
    let gone = env.ids[0];
    assert_eq!(
        env.real.delete(&NodeFilter::ids(vec![gone])).await.unwrap(),
        1
    );
    let r = e.reconcile().await.unwrap();
    assert_eq!(
        r,
        ReconcileReport {
            stopped: 1,
            ..ReconcileReport::default()
        }
    );
    assert_eq!(launcher.running().await, vec![env.ids[1]]);
}

/// Nodes a health check holds (the monitor's guard) are left alone by a
/// reconciler pass and counted as skipped, also a service to release; the
/// next pass releases it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_services_the_monitor_holds_are_skipped_and_counted() {
    let env = wanted_on_postgres(3).await;
    let gate = Arc::new(Semaphore::new(0));
    let launcher = Arc::new(MemLauncher {
        health_gate: Some(Arc::clone(&gate)),
        ..MemLauncher::default()
    });
    let a = Arc::new(services_engine(
        &env,
        &launcher,
        EngineConfig {
            worker: "a".into(),
            roles: vec![WorkerRole::Services],
            lease: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(5),
            service_concurrency: 8,
            ..config(4)
        },
    ));
    a.register().await.unwrap();
    assert_eq!(a.reconcile().await.unwrap().started, 3);
    // Another live services worker, and one service pinned to it.
    let b = services_worker(&env, "b", &Arc::new(MemLauncher::default()));
    b.register().await.unwrap();
    env.real
        .pin_services(&[env.ids[0]], Some("b".into()))
        .await
        .unwrap();
    // The monitor checks all three and waits at the gate, holding them.
    let monitor = tokio::spawn({
        let a = Arc::clone(&a);
        async move { a.monitor().await }
    });
    until("the monitor holds every node", || {
        launcher.checks.load(Ordering::SeqCst) == 3
    })
    .await;
    let r = a.reconcile().await.unwrap();
    assert_eq!(
        r,
        ReconcileReport {
            skipped_busy: 3,
            ..ReconcileReport::default()
        },
        "one to release, two to keep running: all held"
    );
    assert_eq!(launcher.running().await.len(), 3);
    gate.add_permits(3);
    monitor.await.unwrap().unwrap();
    let r = a.reconcile().await.unwrap();
    assert_eq!(
        r,
        ReconcileReport {
            released: 1,
            ..ReconcileReport::default()
        }
    );
    a.deregister().await.unwrap();
    b.deregister().await.unwrap();
}

/// The restart requests (`connexa service restart`): a running wanted service
/// is stopped and started again in one pass and its request cleared; the
/// request of a service no longer wanted is cleared too (nothing to restart),
/// and that service stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_requests_restart_running_services_and_are_cleared() {
    let env = env(2).await;
    verify_and_want_all(&env).await;
    let launcher = Arc::new(MemLauncher::default());
    let e = services_engine(&env, &launcher, config(4));
    assert_eq!(e.reconcile().await.unwrap().started, 2);
    let requested = |env: &Env| {
        let real = Arc::clone(&env.real);
        async move {
            let mut r: Vec<NodeId> = real
                .service_runtime(&[])
                .await
                .unwrap()
                .into_iter()
                .filter(|r| r.restart_requested_at.is_some())
                .map(|r| r.node)
                .collect();
            r.sort_unstable();
            r
        }
    };
    let (a, b) = (env.ids[0], env.ids[1]);
    env.real
        .request_service_restart(&[a], chrono::Utc::now())
        .await
        .unwrap();
    assert_eq!(requested(&env).await, vec![a]);
    let r = e.reconcile().await.unwrap();
    assert_eq!(
        r,
        ReconcileReport {
            restarted: 1,
            started: 1,
            ..ReconcileReport::default()
        }
    );
    assert_eq!(launcher.starts.load(Ordering::SeqCst), 3);
    assert!(requested(&env).await.is_empty());
    // A request for a service that is then no longer wanted.
    env.real
        .request_service_restart(&[b], chrono::Utc::now())
        .await
        .unwrap();
    env.real
        .set_service_wanted(&NodeFilter::ids(vec![b]), false)
        .await
        .unwrap();
    let r = e.reconcile().await.unwrap();
    assert_eq!(
        r,
        ReconcileReport {
            stopped: 1,
            ..ReconcileReport::default()
        }
    );
    assert!(
        requested(&env).await.is_empty(),
        "the request of an unwanted service stays"
    );
    assert_eq!(launcher.running().await, vec![a]);

    // A service that does not run (it crashed) is started afresh: that is its
    // restart, and its request is cleared; the request of a service whose
    // start is deferred (it failed a moment ago) stays for a later pass.
    env.real
        .set_service_wanted(&NodeFilter::ids(vec![b]), true)
        .await
        .unwrap();
    launcher.fail_starts.lock().unwrap().insert(b);
    let r = e.reconcile().await.unwrap();
    assert_eq!((r.start_failed, r.started), (1, 0), "{r:?}");
    launcher.running.lock().unwrap().remove(&a);
    env.real
        .request_service_restart(&[a, b], chrono::Utc::now())
        .await
        .unwrap();
    let r = e.reconcile().await.unwrap();
    assert_eq!(
        r,
        ReconcileReport {
            started: 1,
            deferred: 1,
            ..ReconcileReport::default()
        }
    );
    assert_eq!(requested(&env).await, vec![b]);
}

/// Fencing of a start: a service whose placement moved to another worker
/// while it was starting here (this worker was slow, or presumed dead) is
/// stopped again and its endpoint not recorded; the other worker starts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_service_placed_elsewhere_during_its_start_is_stopped_and_not_recorded() {
    let env = wanted_on_postgres(1).await;
    let worker = |name: &str, launcher: &Arc<MemLauncher>| services_worker(&env, name, launcher);
    let gate = Arc::new(Semaphore::new(0));
    let la = Arc::new(MemLauncher {
        start_gate: Some(Arc::clone(&gate)),
        ..MemLauncher::default()
    });
    let lb = Arc::new(MemLauncher::default());
    let a = worker("a", &la);
    a.register().await.unwrap();
    let pass = tokio::spawn({
        let a = Arc::clone(&a);
        async move { a.reconcile().await }
    });
    until("the start began", || la.starts.load(Ordering::SeqCst) == 1).await;
    // Meanwhile the service moves to b (pinned there, b alive).
    let b = worker("b", &lb);
    b.register().await.unwrap();
    let node = env.ids[0];
    env.real
        .pin_services(&[node], Some("b".into()))
        .await
        .unwrap();
    let on_b = env
        .real
        .place_services("b", chrono::Utc::now())
        .await
        .unwrap();
    assert_eq!(on_b, Some(vec![node]));
    gate.add_permits(1);
    let r = pass.await.unwrap().unwrap();
    assert_eq!(
        r,
        ReconcileReport {
            released: 1,
            ..ReconcileReport::default()
        }
    );
    assert!(la.running().await.is_empty());
    let n = env.real.get(node).await.unwrap().unwrap();
    assert!(
        n.service.is_none(),
        "the endpoint started on a was recorded: {n:?}"
    );
    assert_eq!(n.status, Status::SpeedOk);
    assert_eq!(b.reconcile().await.unwrap().started, 1);
    assert_eq!(lb.running().await, vec![node]);
    a.deregister().await.unwrap();
    b.deregister().await.unwrap();
}

/// Restart requests in one pass with a running service (stopped and started
/// again), a crashed one (started afresh: that is its restart) and one whose
/// start is deferred (it failed a moment ago): the first two are settled, the
/// deferred one keeps its request for a later pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_requests_of_fresh_starts_are_settled_and_deferred_ones_kept() {
    let env = env(3).await;
    verify_and_want_all(&env).await;
    let (a, b, c) = (env.ids[0], env.ids[1], env.ids[2]);
    let launcher = Arc::new(MemLauncher::default());
    launcher.fail_starts.lock().unwrap().insert(c);
    let e = services_engine(&env, &launcher, config(4));
    let r = e.reconcile().await.unwrap();
    assert_eq!((r.started, r.start_failed), (2, 1), "{r:?}");
    launcher.running.lock().unwrap().remove(&a);
    env.real
        .request_service_restart(&[a, b, c], chrono::Utc::now())
        .await
        .unwrap();
    let r = e.reconcile().await.unwrap();
    assert_eq!(
        r,
        ReconcileReport {
            restarted: 1,
            started: 2,
            deferred: 1,
            ..ReconcileReport::default()
        }
    );
    let requested: Vec<NodeId> = env
        .real
        .service_runtime(&[])
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.restart_requested_at.is_some())
        .map(|r| r.node)
        .collect();
    assert_eq!(requested, vec![c]);
}

/// A PostgreSQL env of `n` verified nodes whose services are wanted.
async fn wanted_on_postgres(n: usize) -> Env {
    let db = common::postgres().await;
    let real: Arc<dyn NodeStore> = Arc::new(db.store.clone());
    let ids = common::seed(real.as_ref(), n).await;
    let faults = FaultStore::new(Arc::clone(&real));
    let env = Env {
        db,
        real,
        faults,
        ids,
    };
    verify_all(&env).await;
    env.real
        .set_service_wanted(&NodeFilter::all(), true)
        .await
        .unwrap();
    env
}

/// A services worker `name` over the env's store (lease 30 s, beats every 5 s).
fn services_worker(env: &Env, name: &str, launcher: &Arc<MemLauncher>) -> Arc<Engine> {
    Arc::new(Engine::new(
        Arc::clone(&env.faults) as Arc<dyn NodeStore>,
        prober(Answer::Hang),
        Arc::new(Hanging),
        Arc::clone(launcher) as Arc<dyn ServiceLauncher>,
        EngineConfig {
            worker: name.into(),
            roles: vec![WorkerRole::Services],
            lease: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(5),
            ..config(4)
        },
    ))
}

/// With placement, the monitor checks the services placed here also when
/// they do not run here (a crashed one fails its check), not only those both
/// placed and running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_the_monitor_checks_services_placed_here_that_do_not_run() {
    let env = wanted_on_postgres(2).await;
    let launcher = Arc::new(MemLauncher::default());
    let a = services_worker(&env, "a", &launcher);
    a.register().await.unwrap();
    assert_eq!(a.reconcile().await.unwrap().started, 2);
    launcher.running.lock().unwrap().remove(&env.ids[0]);
    let r = a.monitor().await.unwrap();
    assert_eq!((r.checked, r.unhealthy), (2, 1), "{r:?}");
    a.deregister().await.unwrap();
}

/// A failure streak survives a monitor pass that could not check the node
/// (another pass held it): with a threshold of 2, two failed checks in a row
/// mark the node offline even with a skipped pass between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_streak_survives_a_pass_that_could_not_check_the_node() {
    let env = env(1).await;
    verify_all(&env).await;
    env.real
        .set_service_wanted(&NodeFilter::all(), true)
        .await
        .unwrap();
    let gate = Arc::new(Semaphore::new(0));
    let launcher = Arc::new(MemLauncher {
        health_gate: Some(Arc::clone(&gate)),
        ..MemLauncher::default()
    });
    let e = Arc::new(Engine::new(
        Arc::clone(&env.faults) as Arc<dyn NodeStore>,
        prober(Answer::Hang),
        Arc::new(Hanging),
        Arc::clone(&launcher) as Arc<dyn ServiceLauncher>,
        EngineConfig {
            health_threshold: 2,
            ..config(4)
        },
    ));
    assert_eq!(e.reconcile().await.unwrap().started, 1);
    let node = env.ids[0];
    launcher.unhealthy.lock().unwrap().insert(node);
    // First failed check: a streak of 1, still online.
    gate.add_permits(1);
    let r = e.monitor().await.unwrap();
    assert_eq!((r.unhealthy, r.health_failed), (1, 0), "{r:?}");
    // A pass holds the node at its check; another pass meanwhile cannot
    // check it and must keep its streak.
    let held = tokio::spawn({
        let e = Arc::clone(&e);
        async move { e.monitor().await }
    });
    until("the check began", || {
        launcher.checks.load(Ordering::SeqCst) == 2
    })
    .await;
    let r = e.monitor().await.unwrap();
    assert_eq!(r.checked, 0, "{r:?}");
    gate.add_permits(1);
    let r = held.await.unwrap().unwrap();
    assert_eq!((r.unhealthy, r.health_failed), (1, 1), "{r:?}");
    let n = env.real.get(node).await.unwrap().unwrap();
    assert_eq!(n.status, Status::Offline);
}

/// The counters of running services are recorded by every pass, and the last
/// ones of a stopped service with no connection open; an offline node whose
/// check passes again is back online.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_are_recorded_and_the_last_ones_when_a_service_stops() {
    let env = env(1).await;
    verify_all(&env).await;
    env.real
        .set_service_wanted(&NodeFilter::all(), true)
        .await
        .unwrap();
    let launcher = Arc::new(MemLauncher::default());
    let e = Engine::new(
        Arc::clone(&env.faults) as Arc<dyn NodeStore>,
        prober(Answer::Hang),
        Arc::new(Hanging),
        Arc::clone(&launcher) as Arc<dyn ServiceLauncher>,
        EngineConfig {
            health_threshold: 1,
            ..config(4)
        },
    );
    let node = env.ids[0];
    let counters = |env: &Env| {
        let real = Arc::clone(&env.real);
        async move {
            real.service_runtime(&[node])
                .await
                .unwrap()
                .into_iter()
                .next()
                .and_then(|r| r.counters)
                .map(|c| (c.connections, c.connections_total, c.bytes_up, c.bytes_down))
        }
    };
    assert_eq!(e.reconcile().await.unwrap().started, 1);
    assert_eq!(counters(&env).await, Some((3, 7, 100, 200)));
    // Offline, then healthy again: back online.
    launcher.unhealthy.lock().unwrap().insert(node);
    assert_eq!(e.monitor().await.unwrap().health_failed, 1);
    assert_eq!(
        env.real.get(node).await.unwrap().unwrap().status,
        Status::Offline
    );
    launcher.unhealthy.lock().unwrap().clear();
    let r = e.monitor().await.unwrap();
    assert_eq!((r.checked, r.health_ok), (1, 1), "{r:?}");
    assert_eq!(
        env.real.get(node).await.unwrap().unwrap().status,
        Status::Online
    );
    // A healthy online node with no failures: nothing to record.
    assert_eq!(e.monitor().await.unwrap().health_ok, 0);
    // An online node a failed test counted against (it stays online): its
    // passing check clears the count.
    env.real
        .apply(
            node,
            Event::Tested(Outcome::failed(Level::None, Failure::Refused)),
            ApplyContext::now(),
        )
        .await
        .unwrap();
    let n = env.real.get(node).await.unwrap().unwrap();
    assert_eq!((n.status, n.consecutive_failures), (Status::Online, 1));
    assert_eq!(e.monitor().await.unwrap().health_ok, 1);
    assert_eq!(
        env.real
            .get(node)
            .await
            .unwrap()
            .unwrap()
            .consecutive_failures,
        0
    );
    // No longer wanted: stopped, its last counters kept with no connection open.
    env.real
        .set_service_wanted(&NodeFilter::all(), false)
        .await
        .unwrap();
    assert_eq!(e.reconcile().await.unwrap().stopped, 1);
    assert_eq!(counters(&env).await, Some((0, 7, 100, 200)));
}

/// The proxies file (`EngineConfig::proxies_file`): written only by a process
/// that keeps it, `host:port:user:pass` of the SOCKS5 services running here in
/// node id order, private (0600), rewritten when that changes (empty when
/// nothing runs); the last counters of a process about to stop its services
/// and of a service a job stops have no connection open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxies_file_and_the_last_counters_follow_the_services_running_here() {
    use std::os::unix::fs::PermissionsExt as _;
    let env = env(3).await;
    verify_all(&env).await;
    env.real
        .set_service_wanted(&NodeFilter::all(), true)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxies.txt");
    let launcher = Arc::new(MemLauncher::default());
    let e = Engine::new(
        Arc::clone(&env.faults) as Arc<dyn NodeStore>,
        prober(Answer::Hang),
        Arc::new(Hanging),
        Arc::clone(&launcher) as Arc<dyn ServiceLauncher>,
        EngineConfig {
            proxies_file: Some(path.clone()),
            ..config(4)
        },
    );
    // A one-pass process does not own the file.
    assert_eq!(e.reconcile().await.unwrap().started, 3);
    assert!(!path.exists());
    e.keep_proxies_file();
    e.refresh_proxies_file().await;
    let line = |id: NodeId| format!("127.0.0.1:{}:u:socks-secret-pw\n", 30_000 + id.0);
    let (a, b, c) = (env.ids[0], env.ids[1], env.ids[2]);
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        format!("{}{}{}", line(a), line(b), line(c))
    );
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // A job stops one: the file follows, its last counters have no connection.
    let job = e
        .start_job(
            JobKind::ServiceStop,
            NodeFilter::ids(vec![a]),
            JobOptions::default(),
        )
        .await
        .unwrap();
    e.wait(job).await.unwrap();
    e.refresh_proxies_file().await;
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        format!("{}{}", line(b), line(c))
    );
    // c's service crashed: the store still has its endpoint, nothing runs it
    // here, so the file no longer lists it.
    launcher.running.lock().unwrap().remove(&c);
    e.refresh_proxies_file().await;
    assert_eq!(std::fs::read_to_string(&path).unwrap(), line(b));
    let last = |id: NodeId| {
        let real = Arc::clone(&env.real);
        async move {
            real.service_runtime(&[id])
                .await
                .unwrap()
                .into_iter()
                .next()
                .and_then(|r| r.counters)
                .map(|c| (c.connections, c.connections_total))
        }
    };
    assert_eq!(last(a).await, Some((0, 7)));
    // The process is about to stop: the last counters of what runs here.
    e.record_final_service_counters().await;
    assert_eq!(last(b).await, Some((0, 7)));
    launcher.running.lock().unwrap().clear();
    e.refresh_proxies_file().await;
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
}

/// Marks every node of the env `speed_ok` and wants its service.
async fn verify_and_want_all(env: &Env) {
    verify_all(env).await;
    env.real
        .set_service_wanted(&NodeFilter::all(), true)
        .await
        .unwrap();
}

/// An engine over the env's store with this launcher (probes never answer).
fn services_engine(env: &Env, launcher: &Arc<MemLauncher>, config: EngineConfig) -> Engine {
    Engine::new(
        Arc::clone(&env.faults) as Arc<dyn NodeStore>,
        prober(Answer::Hang),
        Arc::new(Hanging),
        Arc::clone(launcher) as Arc<dyn ServiceLauncher>,
        config,
    )
}
