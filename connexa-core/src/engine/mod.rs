//! The engine: batch jobs with true progress, a service reconciler and a health
//! monitor, generic over the four [ports](crate::ports).
//!
//! ```no_run
//! # async fn demo(engine: connexa_core::engine::Engine) -> Result<(), connexa_core::engine::EngineError> {
//! use connexa_core::domain::NodeFilter;
//! use connexa_core::engine::JobOptions;
//! use connexa_core::ports::JobKind;
//! use futures::StreamExt;
//!
//! let job = engine.start_job(JobKind::Light, NodeFilter::all(), JobOptions::default()).await?;
//! let mut events = Box::pin(engine.progress(job));
//! while let Some(ev) = events.next().await {
//!     println!("{}/{} ok {} failed {}", ev.progress.done(), ev.progress.total, ev.progress.ok, ev.progress.failed);
//! }
//! # Ok(()) }
//! ```
//!
//! * **Progress** is read from committed `job_items` rows ([`NodeStore::progress`]):
//!   a result is counted only once its transaction committed, so every observer
//!   (this process, another CLI, the HTTP SSE stream, the next process after a
//!   crash) sees the same numbers.
//! * **Group commit**: item tasks send their results to one committer task per
//!   job, which writes up to [`EngineConfig::commit_batch`] of them (or whatever
//!   arrived within [`EngineConfig::commit_delay`]) in one
//!   [`NodeStore::finish_items`] transaction.
//! * **Every item ends**: each item runs in its own task under a supervisor that
//!   enforces the per-node timeout, the job deadline and cancellation, and turns a
//!   panic into a failed item. See `docs/architecture.md`, section "Engine".

mod enrich;
mod import;
mod runner;
mod services;

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::domain::{NodeFilter, NodeId, Status, Words};
use crate::ports::{
    FraudScorer, GeoLookup, ItemState, ItemView, Job, JobId, JobKind, JobSpec, JobState, NodeStore,
    Prober, Progress, ServiceLauncher, SpeedTester, StoreError, WorkerRegistration, WorkerRole,
};

pub use import::import_summary;
pub use services::{MonitorReport, ReconcileReport};

/// Errors of the [`Engine`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Job options could not be turned into JSON.
    #[error("job options: {0}")]
    Options(String),
    /// The job's runner in this process stopped on a store error that
    /// outlasted its retries; committed results stay, unfinished items wait
    /// for recovery.
    #[error("job {job} stopped: the store failed: {error}")]
    RunnerFailed {
        /// The job.
        job: JobId,
        /// The store error.
        error: String,
    },
}

/// Settings of an [`Engine`]. Per-job [`JobOptions`] override some of them.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// Items worked on at once per job. Default: [`default_concurrency`], sized to
    /// the soft open-file limit.
    pub concurrency: usize,
    /// Time budget of one node's test (or service action). Default 60 s.
    pub node_timeout: Duration,
    /// Most items claimed from the store at once. Default 512.
    pub claim_batch: u64,
    /// Most results written in one group commit. Default 512.
    pub commit_batch: usize,
    /// How long the committer waits for more results before writing. Default 5 ms.
    pub commit_delay: Duration,
    /// How often progress streams and runners re-read the store even without a
    /// local commit (other processes' commits, cross-process cancellation). Default 500 ms.
    pub poll_interval: Duration,
    /// Per-node results carried by each [`ProgressEvent`]. Default 5.
    pub recent_items: u64,
    /// How often [`Engine::run`] looks for queued jobs. Default 1 s.
    pub queue_interval: Duration,
    /// How often [`Engine::run`] reconciles services. Default 10 s.
    pub reconcile_interval: Duration,
    /// How often [`Engine::run`] checks service health. Default 30 s.
    pub monitor_interval: Duration,
    /// Failed health checks in a row before `HealthFailed`. Default 3.
    pub health_threshold: u32,
    /// After a failed service start, the reconciler waits this long before it
    /// tries that node again, doubling after each further failure up to
    /// [`restart_backoff_max`](Self::restart_backoff_max). A success, or the
    /// node no longer being wanted, resets it. Zero retries on every pass.
    /// Default 30 s.
    pub restart_backoff: Duration,
    /// Longest wait between the reconciler's start attempts of one node. Default 10 min.
    pub restart_backoff_max: Duration,
    /// Service starts, stops and health checks at once in the reconciler and the
    /// monitor. Default 64.
    pub service_concurrency: usize,
    /// Speed tests at once in this process, over every job (speed jobs and the
    /// speed stage of pipelines). Parallel downloads share this host's own
    /// link: many at once would make every node look slower than it is. A node
    /// waiting for a slot does not spend its [`node_timeout`](Self::node_timeout).
    /// Default 4 (`[test] speed_concurrency`).
    pub speed_concurrency: usize,
    /// Look up the GEO source (if one is set, [`Engine::set_geo`]) for every
    /// node whose light, auth, speed or pipeline test proves at least a PPTP
    /// server, and store it with the result (`[geo] after_light`). Default false.
    pub geo_after_light: bool,
    /// This process's worker name: recorded on claimed items and in the
    /// `workers` table. Default `HOST-pPID` ([`WorkerRegistration::this_process`]).
    /// Names must be unique among live workers.
    pub worker: String,
    /// What this process does ([`Engine::run`] runs job items only with
    /// [`WorkerRole::Jobs`], services only with [`WorkerRole::Services`]).
    /// Default both.
    pub roles: Vec<WorkerRole>,
    /// How long a claimed item (and the worker's row) stays held without a
    /// heartbeat: past it, any live worker may reclaim the item and this
    /// worker's late result is refused. Default 30 s (`[workers] lease_secs`).
    pub lease: Duration,
    /// How often the worker's heartbeat runs: it marks the worker alive and
    /// extends the lease of every item it holds (one statement for all).
    /// Must be well below [`lease`](Self::lease). Default 5 s
    /// (`[workers] heartbeat_secs`).
    pub heartbeat_interval: Duration,
    /// Most services placed on this worker at once (`[workers]
    /// max_services`); `None` (the default): no limit. Only with placement
    /// (a registered worker on PostgreSQL, see [`NodeStore::place_services`]).
    pub max_services: Option<u64>,
    /// This worker's placement labels (`[workers] labels`, `connexa run
    /// --label`): a service wanted with a label is placed only on workers
    /// that have it. Default none.
    pub labels: Vec<String>,
    /// The file of running proxies (`[services] proxies_file`): after each
    /// reconciler pass that changed the set of services running in this
    /// process, one `host:port:user:pass` line per service, in node id order,
    /// written atomically (a temporary file in the same directory, mode 0600,
    /// fsync, rename). Default none.
    pub proxies_file: Option<std::path::PathBuf>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            concurrency: default_concurrency(),
            node_timeout: Duration::from_secs(60),
            claim_batch: 512,
            commit_batch: 512,
            commit_delay: Duration::from_millis(5),
            poll_interval: Duration::from_millis(500),
            recent_items: 5,
            queue_interval: Duration::from_secs(1),
            reconcile_interval: Duration::from_secs(10),
            monitor_interval: Duration::from_secs(30),
            health_threshold: 3,
            restart_backoff: Duration::from_secs(30),
            restart_backoff_max: Duration::from_secs(600),
            service_concurrency: 64,
            speed_concurrency: 4,
            geo_after_light: false,
            worker: WorkerRegistration::this_process(None, Vec::new()).name,
            roles: vec![WorkerRole::Jobs, WorkerRole::Services],
            lease: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(5),
            max_services: None,
            labels: Vec::new(),
            proxies_file: None,
        }
    }
}

/// Concurrency that fits the soft `RLIMIT_NOFILE` (as RustScan and lychee do):
/// `(limit - 64) / 2` (a test may hold a TCP socket and an ICMP socket), between 1
/// and 4096. 256 when the limit cannot be read.
pub fn default_concurrency() -> usize {
    match rlimit::getrlimit(rlimit::Resource::NOFILE) {
        Ok((soft, _)) => concurrency_for_limit(soft),
        Err(_) => 256,
    }
}

fn concurrency_for_limit(soft: u64) -> usize {
    let n = soft.saturating_sub(64) / 2;
    usize::try_from(n.clamp(1, 4096)).unwrap_or(4096)
}

/// Per-job options, stored with the job as JSON so that any process can resume it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct JobOptions {
    /// Per-node time budget in milliseconds (default: [`EngineConfig::node_timeout`]).
    pub node_timeout_ms: Option<u64>,
    /// Job deadline in milliseconds from creation: items not finished by then end `timed_out`.
    pub deadline_ms: Option<u64>,
    /// Items at once (default: [`EngineConfig::concurrency`]).
    pub concurrency: Option<usize>,
}

impl JobOptions {
    /// Sets the per-node time budget.
    pub fn node_timeout(mut self, t: Duration) -> Self {
        self.node_timeout_ms = Some(millis(t));
        self
    }

    /// Sets the job deadline, counted from the job's creation.
    pub fn deadline(mut self, t: Duration) -> Self {
        self.deadline_ms = Some(millis(t));
        self
    }

    /// Sets the concurrency.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = Some(n);
        self
    }
}

impl JobOptions {
    /// Checks the options for a job of `kind`: a per-node budget
    /// (`node_timeout_ms`) below [`minimum_node_timeout`] is refused, because a
    /// budget shorter than the protocol's own timers makes most tests end
    /// inconclusive instead of proving anything. The CLI (`--timeout`) and the
    /// HTTP API (`node_timeout_secs`) call this before starting a job, so both
    /// refuse with the same message; the engine itself accepts any budget (tests
    /// with fake ports use tiny ones).
    ///
    /// ```
    /// use std::time::Duration;
    /// use connexa_core::engine::JobOptions;
    /// use connexa_core::ports::JobKind;
    /// let short = JobOptions::default().node_timeout(Duration::from_secs(2));
    /// let err = short.validate(JobKind::Auth).unwrap_err();
    /// assert!(err.to_string().contains("at least 20 s"), "{err}");
    /// assert!(JobOptions::default().validate(JobKind::Auth).is_ok());
    /// ```
    ///
    /// # Errors
    /// [`BudgetTooShort`] when the budget is below the kind's minimum.
    pub fn validate(&self, kind: JobKind) -> Result<(), BudgetTooShort> {
        let Some(ms) = self.node_timeout_ms else {
            return Ok(());
        };
        let given = Duration::from_millis(ms);
        let minimum = minimum_node_timeout(kind);
        if given < minimum {
            return Err(BudgetTooShort {
                kind,
                given,
                minimum,
            });
        }
        Ok(())
    }
}

/// The smallest per-node time budget [`JobOptions::validate`] accepts for a
/// job of `kind`. Each leaves room for the protocol's own timers at their
/// defaults, so that a node that does not answer fails on them (evidence)
/// rather than on our budget (inconclusive):
///
/// * light, 10 s: the TCP connect timeout (5 s) plus the control-channel
///   handshake timeout (5 s);
/// * auth, 20 s: the light test's 10 s plus a login at 300 ms round trip
///   (call, LCP, MS-CHAPv2 and teardown: about ten round trips, 3 s) with two
///   lost packets each costing a PPP restart (3 s);
/// * speed, 30 s: the auth test's 20 s plus the default 10 s measurement;
/// * pipeline, 40 s: light, then auth, then speed's measurement;
/// * service start and stop, geo and fraud lookups, imports: no minimum.
pub fn minimum_node_timeout(kind: JobKind) -> Duration {
    Duration::from_secs(match kind {
        JobKind::Light => 10,
        JobKind::Auth => 20,
        JobKind::Speed => 30,
        JobKind::Pipeline => 40,
        JobKind::ServiceStart
        | JobKind::ServiceStop
        | JobKind::Geo
        | JobKind::Fraud
        | JobKind::Import => 0,
    })
}

/// A per-node time budget below [`minimum_node_timeout`] ([`JobOptions::validate`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a per-node time budget of {} s is too short for {kind} tests: give at least {} s, \
     the time its own protocol timers need (a shorter budget ends most tests inconclusive)",
    .given.as_secs_f64(),
    .minimum.as_secs()
)]
#[non_exhaustive]
pub struct BudgetTooShort {
    /// The job's kind.
    pub kind: JobKind,
    /// The budget asked for.
    pub given: Duration,
    /// The smallest budget accepted for `kind`.
    pub minimum: Duration,
}

/// Options a frontend may not ask for ([`JobOptions::checked`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JobOptionsError {
    /// Concurrency 0 or above [`JobOptions::MAX_CONCURRENCY`].
    #[error("{}", self.message(&Words::API))]
    Concurrency,
    /// A time (`node_timeout_secs` or `deadline_secs`) that is not a number
    /// of seconds above 0 and at most [`JobOptions::MAX_SECONDS`].
    #[error("{}", self.message(&Words::API))]
    Seconds {
        /// The field (its JSON name).
        field: &'static str,
    },
    /// The per-node budget is below the kind's minimum.
    #[error("{}", self.message(&Words::API))]
    Budget(BudgetTooShort),
}

impl JobOptionsError {
    /// The refusal, in `words` (see [`Words`]).
    pub fn message(&self, words: &Words) -> String {
        match self {
            JobOptionsError::Concurrency => format!(
                "{}: between 1 and {}",
                (words.field)("concurrency"),
                JobOptions::MAX_CONCURRENCY
            ),
            JobOptionsError::Seconds { field } => format!(
                "{}: a number of seconds above 0 and at most {}",
                (words.field)(field),
                JobOptions::MAX_SECONDS
            ),
            JobOptionsError::Budget(e) => format!("{}: {e}", (words.field)("node_timeout_secs")),
        }
    }
}

impl JobOptions {
    /// The most items at once a job may ask for.
    pub const MAX_CONCURRENCY: u64 = 100_000;
    /// The longest per-node budget or job deadline, in seconds (7 days).
    pub const MAX_SECONDS: f64 = 604_800.0;

    /// The options of a job of `kind` from the numbers a frontend was given
    /// (the CLI's `--concurrency`, `--timeout`, `--deadline`; the API's
    /// `concurrency`, `node_timeout_secs`, `deadline_secs`), within the one
    /// set of limits: concurrency 1 to [`MAX_CONCURRENCY`](Self::MAX_CONCURRENCY),
    /// times above 0 and at most [`MAX_SECONDS`](Self::MAX_SECONDS), the
    /// per-node budget at least the kind's minimum ([`validate`](Self::validate)).
    ///
    /// ```
    /// use connexa_core::engine::{JobOptions, JobOptionsError};
    /// use connexa_core::ports::JobKind;
    /// assert_eq!(JobOptions::checked(JobKind::Light, Some(0), None, None), Err(JobOptionsError::Concurrency));
    /// let e = JobOptions::checked(JobKind::Light, None, None, Some(-1.0)).unwrap_err();
    /// assert_eq!(e.to_string(), "deadline_secs: a number of seconds above 0 and at most 604800");
    /// let o = JobOptions::checked(JobKind::Light, Some(8), Some(12.5), None).unwrap();
    /// assert_eq!((o.concurrency, o.node_timeout_ms), (Some(8), Some(12_500)));
    /// // Whole milliseconds, rounded up: never a deadline of 0.
    /// let o = JobOptions::checked(JobKind::Geo, None, None, Some(0.0004)).unwrap();
    /// assert_eq!(o.deadline_ms, Some(1));
    /// ```
    ///
    /// # Errors
    /// The first limit broken, in the order of the arguments.
    pub fn checked(
        kind: JobKind,
        concurrency: Option<u64>,
        node_timeout_secs: Option<f64>,
        deadline_secs: Option<f64>,
    ) -> Result<Self, JobOptionsError> {
        // Stored in whole milliseconds: a time above 0 is rounded up, so that
        // it never becomes a budget or deadline of 0.
        let secs = |field: &'static str, v: Option<f64>| {
            v.map(|s| {
                if s.is_finite() && s > 0.0 && s <= Self::MAX_SECONDS {
                    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                    Ok(Duration::from_millis((s * 1000.0).ceil() as u64))
                } else {
                    Err(JobOptionsError::Seconds { field })
                }
            })
            .transpose()
        };
        let mut o = JobOptions::default();
        if let Some(n) = concurrency {
            if n == 0 || n > Self::MAX_CONCURRENCY {
                return Err(JobOptionsError::Concurrency);
            }
            o = o.concurrency(usize::try_from(n).map_err(|_| JobOptionsError::Concurrency)?);
        }
        if let Some(d) = secs("node_timeout_secs", node_timeout_secs)? {
            o = o.node_timeout(d);
        }
        if let Some(d) = secs("deadline_secs", deadline_secs)? {
            o = o.deadline(d);
        }
        o.validate(kind).map_err(JobOptionsError::Budget)?;
        Ok(o)
    }
}

fn millis(t: Duration) -> u64 {
    u64::try_from(t.as_millis()).unwrap_or(u64::MAX)
}

/// How many recent jobs [`Engine::recover`] inspects for orphaned items.
const RECOVER_SCAN: u64 = 100;

/// What to do with unfinished jobs at start-up ([`Engine::recover`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecoverPolicy {
    /// Put items that were running back to pending and run the job again.
    Resume,
    /// End pending and running items as cancelled and mark the job `interrupted`.
    Interrupt,
}

/// One progress report of a job, derived from committed rows.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgressEvent {
    /// The job.
    pub job: JobId,
    /// What it does.
    pub kind: JobKind,
    /// Its state.
    pub state: JobState,
    /// Committed counts: total, ok, failed, timed out, cancelled (and pending, running).
    pub progress: Progress,
    /// Items committed per second (over the last few seconds this observer saw).
    pub rate: f64,
    /// Estimated time to completion at `rate`; `None` when unknown.
    pub eta: Option<Duration>,
    /// The last few finished items, newest first.
    pub recent: Vec<ItemView>,
    /// `true` for the last event: the job ended and every item has a result.
    pub finished: bool,
}

/// A finished job, as [`Engine::wait`] returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSummary {
    /// The job row.
    pub job: Job,
    /// Its final counts.
    pub progress: Progress,
}

/// What [`Engine::run_once`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct OnceReport {
    /// The unfinished jobs it resumed (or closed), as they ended.
    pub jobs: Vec<JobSummary>,
    /// The reconciler pass.
    pub reconcile: ReconcileReport,
    /// The monitor pass.
    pub monitor: MonitorReport,
}

/// The engine. Cheap to clone (all clones share the same state).
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

struct LocalJob {
    cancel: watch::Sender<bool>,
    task: JoinHandle<()>,
    /// An import job's runner.
    import: bool,
}

pub(crate) struct Inner {
    store: Arc<dyn NodeStore>,
    prober: Arc<dyn Prober>,
    speed: Arc<dyn SpeedTester>,
    launcher: Arc<dyn ServiceLauncher>,
    config: EngineConfig,
    /// Bumped after every commit this process makes (wakes progress streams early).
    commits: watch::Sender<u64>,
    /// Set on graceful shutdown: runners stop claiming and leave the rest pending.
    draining: watch::Sender<bool>,
    /// Set for good by [`Engine::pause_imports`]: import runners stop after
    /// their current batch and leave their jobs to be resumed.
    pausing_imports: watch::Sender<bool>,
    jobs: Mutex<HashMap<JobId, LocalJob>>,
    /// Jobs whose runner here stopped on a store error it could not retry
    /// away, with the error ([`Engine::wait`] reports it).
    failed: Mutex<HashMap<JobId, String>>,
    /// Nodes with a service action (start, stop, health check) in flight.
    busy: Arc<Mutex<HashSet<NodeId>>>,
    /// Failed health checks in a row, per node (the monitor's threshold).
    health_failures: Mutex<HashMap<NodeId, u32>>,
    /// Failed service starts in a row, per node, and when to try again.
    start_backoff: Mutex<HashMap<NodeId, services::Backoff>>,
    /// What the proxies file was last written with (`None`: not yet, or the
    /// last write failed).
    proxies_written: Mutex<Option<String>>,
    /// Wakes [`Engine::run`]'s reconciler before its next tick.
    reconcile_now: tokio::sync::Notify,
    /// Set by [`Engine::run`]: this process keeps the proxies file.
    owns_proxies_file: std::sync::atomic::AtomicBool,
    /// Speed tests at once ([`EngineConfig::speed_concurrency`]).
    speed_slots: Arc<tokio::sync::Semaphore>,
    /// The GEO source of `geo` jobs, if configured.
    geo: std::sync::RwLock<Option<Arc<dyn GeoLookup>>>,
    /// The fraud scorer of `fraud` jobs, if configured.
    fraud: std::sync::RwLock<Option<Arc<dyn FraudScorer>>>,
    /// This process as a worker (from the config).
    registration: WorkerRegistration,
    /// The wanted services placed on this worker by the last reconciler
    /// pass; `None`: no placement (SQLite, or not a registered worker), every
    /// wanted service runs here.
    placed: Mutex<Option<HashSet<NodeId>>>,
    /// The heartbeat task, once started.
    heartbeat: Mutex<Option<JoinHandle<()>>>,
    /// Results refused by fencing (late results of reclaimed items).
    refused: std::sync::atomic::AtomicU64,
    /// Registered as a worker ([`Engine::register`]): the heartbeat keeps its row.
    registered: std::sync::atomic::AtomicBool,
    /// When this worker's heartbeat last reached the store (registration
    /// included): a services worker whose placement lapses without it stops
    /// its services (see `services::release_if_cut_off`).
    last_beat: Mutex<Option<Instant>>,
}

/// Whether `job`'s runner in this process is alive: its task has not ended
/// and it has recorded no store error (after recording one it only returns).
fn runner_alive(
    jobs: &HashMap<JobId, LocalJob>,
    failed: &Mutex<HashMap<JobId, String>>,
    job: JobId,
) -> bool {
    jobs.get(&job).is_some_and(|j| !j.task.is_finished()) && !lock(failed).contains_key(&job)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Inner {
    fn geo(&self) -> Option<Arc<dyn GeoLookup>> {
        self.geo
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn fraud(&self) -> Option<Arc<dyn FraudScorer>> {
        self.fraud
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn notify(&self) {
        self.commits.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Marks a node busy with a service action while alive.
pub(crate) struct BusyGuard {
    set: Arc<Mutex<HashSet<NodeId>>>,
    node: NodeId,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        lock(&self.set).remove(&self.node);
    }
}

impl Inner {
    fn try_busy(&self, node: NodeId) -> Option<BusyGuard> {
        lock(&self.busy).insert(node).then(|| BusyGuard {
            set: Arc::clone(&self.busy),
            node,
        })
    }

    async fn busy(&self, node: NodeId) -> BusyGuard {
        loop {
            if let Some(g) = self.try_busy(node) {
                return g;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// Aborts the task when dropped (so that dropping a runner stops everything it spawned).
pub(crate) struct AbortOnDrop<T>(pub(crate) JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn terminal(state: JobState) -> bool {
    matches!(
        state,
        JobState::Done | JobState::Cancelled | JobState::Interrupted
    )
}

/// The selection narrowed to verified nodes (services run only through them).
fn verified_only(mut f: NodeFilter) -> NodeFilter {
    f.statuses = if f.statuses.is_empty() {
        Status::VERIFIED.to_vec()
    } else {
        f.statuses.into_iter().filter(|s| s.is_verified()).collect()
    };
    if f.statuses.is_empty() {
        f.ids = Some(Vec::new());
    }
    f
}

/// Creates a job in the store without running it (for frontends that leave the
/// work to a `connexa run` process: the HTTP API, `connexa test --detach`). The
/// options are stored as JSON. A service start marks the verified nodes of the
/// selection `service_wanted`; a service stop clears it for the whole selection.
pub async fn queue_job(
    store: &dyn NodeStore,
    kind: JobKind,
    selection: NodeFilter,
    options: JobOptions,
) -> Result<Job, EngineError> {
    let now = Utc::now();
    let deadline = options
        .deadline_ms
        .map(|ms| now + chrono::Duration::milliseconds(i64::try_from(ms).unwrap_or(i64::MAX)));
    match kind {
        JobKind::ServiceStart => {
            store
                .set_service_wanted(&verified_only(selection.clone()), true)
                .await?;
        }
        JobKind::ServiceStop => {
            store.set_service_wanted(&selection, false).await?;
        }
        _ => {}
    }
    let options =
        serde_json::to_value(&options).map_err(|e| EngineError::Options(e.to_string()))?;
    Ok(store
        .create_job(
            JobSpec {
                kind,
                filter: selection,
                options,
                deadline,
            },
            now,
        )
        .await?)
}

impl Engine {
    /// An engine over these ports.
    pub fn new(
        store: Arc<dyn NodeStore>,
        prober: Arc<dyn Prober>,
        speed: Arc<dyn SpeedTester>,
        launcher: Arc<dyn ServiceLauncher>,
        config: EngineConfig,
    ) -> Self {
        Engine {
            inner: Arc::new(Inner {
                store,
                prober,
                speed,
                launcher,
                commits: watch::channel(0).0,
                draining: watch::channel(false).0,
                pausing_imports: watch::channel(false).0,
                jobs: Mutex::new(HashMap::new()),
                failed: Mutex::new(HashMap::new()),
                busy: Arc::new(Mutex::new(HashSet::new())),
                health_failures: Mutex::new(HashMap::new()),
                start_backoff: Mutex::new(HashMap::new()),
                proxies_written: Mutex::new(None),
                reconcile_now: tokio::sync::Notify::new(),
                owns_proxies_file: std::sync::atomic::AtomicBool::new(false),
                speed_slots: Arc::new(tokio::sync::Semaphore::new(config.speed_concurrency.max(1))),
                registration: WorkerRegistration {
                    name: config.worker.clone(),
                    host: crate::ports::hostname(),
                    pid: std::process::id(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    roles: config.roles.clone(),
                    max_services: config.max_services,
                    labels: config.labels.clone(),
                },
                placed: Mutex::new(None),
                last_beat: Mutex::new(None),
                config,
                geo: std::sync::RwLock::new(None),
                fraud: std::sync::RwLock::new(None),
                heartbeat: Mutex::new(None),
                refused: std::sync::atomic::AtomicU64::new(0),
                registered: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// Sets the GEO source `geo` jobs use (without one they stop at once,
    /// saying so, and mark nothing).
    pub fn set_geo(&self, geo: Arc<dyn GeoLookup>) {
        *self
            .inner
            .geo
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(geo);
    }

    /// Sets the fraud scorer `fraud` jobs use.
    pub fn set_fraud(&self, fraud: Arc<dyn FraudScorer>) {
        *self
            .inner
            .fraud
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(fraud);
    }

    /// The settings.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn NodeStore> {
        &self.inner.store
    }

    /// Creates a job (see [`queue_job`]) and starts running it in this process
    /// (only queues it when this engine has no [`WorkerRole::Jobs`] role: a
    /// worker process runs it).
    pub async fn start_job(
        &self,
        kind: JobKind,
        selection: NodeFilter,
        options: JobOptions,
    ) -> Result<JobId, EngineError> {
        let job = queue_job(self.inner.store.as_ref(), kind, selection, options).await?;
        tracing::info!(job = %job.id, %kind, total = job.total, "job created");
        let id = job.id;
        if self.inner.config.roles.contains(&WorkerRole::Jobs) {
            self.spawn_runner(job);
        } else {
            tracing::info!(job = %id, "no jobs role here: the job waits for a worker");
        }
        Ok(id)
    }

    /// Imports a node list into the engine's store and, when `test` is given,
    /// starts a normal job of that kind on exactly the nodes the import added.
    /// Importing never changes the status of a node that was not tested: stored
    /// duplicates and conflicts are left alone and are not part of the job.
    ///
    /// Returns the report and the job, if one was started (none when nothing was added).
    pub async fn import<R>(
        &self,
        reader: R,
        import: crate::import::ImportOptions,
        test: Option<(JobKind, JobOptions)>,
    ) -> Result<(crate::import::ImportReport, Option<JobId>), EngineError>
    where
        R: std::io::Read + Send + 'static,
    {
        let report =
            crate::import::import_into(Arc::clone(&self.inner.store), reader, import).await;
        let added = report.added_ids();
        let job = match test {
            Some((kind, options)) if !added.is_empty() => Some(
                self.start_job(kind, NodeFilter::ids(added), options)
                    .await?,
            ),
            _ => None,
        };
        Ok((report, job))
    }

    /// `true` when this process runs the job right now. A runner that
    /// stopped on a store error is not running, even in the moment between
    /// recording its error and its task's end (a `recover` right after the
    /// error must resume the job, not skip it).
    pub fn is_running_here(&self, job: JobId) -> bool {
        runner_alive(&lock(&self.inner.jobs), &self.inner.failed, job)
    }

    fn spawn_runner(&self, job: Job) {
        self.ensure_heartbeat();
        let mut jobs = lock(&self.inner.jobs);
        if runner_alive(&jobs, &self.inner.failed, job.id) {
            return;
        }
        let (cancel, _) = watch::channel(false);
        let id = job.id;
        lock(&self.inner.failed).remove(&id);
        let is_import = job.kind == JobKind::Import;
        let task = if is_import {
            tokio::spawn(import::run_import(
                Arc::clone(&self.inner),
                job,
                cancel.subscribe(),
            ))
        } else {
            tokio::spawn(runner::run_job(
                Arc::clone(&self.inner),
                job,
                cancel.clone(),
            ))
        };
        jobs.insert(
            id,
            LocalJob {
                cancel,
                task,
                import: is_import,
            },
        );
    }

    /// Cancels a job, from any process: marks it `cancelled` in the store and ends
    /// its pending items as cancelled. Runners (here or in another process, which
    /// notices within [`EngineConfig::poll_interval`]) stop claiming and abort
    /// running items, which end as cancelled. Finished results stay.
    pub async fn cancel(&self, job: JobId) -> Result<(), EngineError> {
        if let Some(j) = lock(&self.inner.jobs).get(&job) {
            j.cancel.send_replace(true);
        }
        let store = &self.inner.store;
        let now = Utc::now();
        let current = store.job(job).await?;
        let paused_import = self.before_cancel(&current).await;
        if !terminal(current.state) {
            store.set_job_state(job, JobState::Cancelled, now).await?;
        }
        if let Some(spec) = paused_import {
            self.after_cancel(job, spec).await;
        }
        let n = store.cancel_pending(job, now).await?;
        tracing::info!(%job, cancelled = n, "job cancelled");
        self.inner.notify();
        Ok(())
    }

    /// Cancels every job not yet finished (queued or running), each exactly as
    /// [`cancel`](Self::cancel) does: finished results stay, the rest end as
    /// cancelled. Returns the ids of the jobs cancelled, oldest first (none
    /// when nothing was running).
    pub async fn cancel_all(&self) -> Result<Vec<JobId>, EngineError> {
        let mut cancelled = Vec::new();
        for job in self.inner.store.unfinished_jobs().await? {
            self.cancel(job.id).await?;
            cancelled.push(job.id);
        }
        Ok(cancelled)
    }

    /// The nodes whose items of `job` ended failed or timed out, in id order
    /// (read from the committed items; the job must exist).
    pub async fn failed_nodes(&self, job: JobId) -> Result<Vec<NodeId>, EngineError> {
        let store = &self.inner.store;
        store.job(job).await?;
        let mut cursor = crate::ports::ItemCursor::default();
        let mut nodes = Vec::new();
        loop {
            let page = store.items_since(job, cursor, 1000).await?;
            for c in &page {
                cursor = c.cursor();
                if matches!(c.item.state, ItemState::Failed | ItemState::TimedOut) {
                    nodes.push(c.item.node);
                }
            }
            if page.len() < 1000 {
                break;
            }
        }
        nodes.sort_unstable();
        nodes.dedup();
        Ok(nodes)
    }

    /// Starts a job of the same kind as `job` on the nodes it failed (items
    /// that ended failed or timed out): "retest the failed ones with a longer
    /// timeout". Without a per-node budget in `options` the new job gets twice
    /// the old one's (its own, else [`EngineConfig::node_timeout`]), at most
    /// seven days. A job that failed no node is refused with
    /// [`StoreError::NothingSelected`]. The caller checks `options` against
    /// the kind ([`JobOptions::validate`]) as for any job.
    ///
    /// Returns the new job's id and its options as used.
    pub async fn retest_failed(
        &self,
        job: JobId,
        mut options: JobOptions,
    ) -> Result<(JobId, JobOptions), EngineError> {
        let old = self.inner.store.job(job).await?;
        let nodes = self.failed_nodes(job).await?;
        if nodes.is_empty() {
            return Err(StoreError::NothingSelected.into());
        }
        if options.node_timeout_ms.is_none() {
            let before: JobOptions = serde_json::from_value(old.options).unwrap_or_default();
            let ms = before
                .node_timeout_ms
                .unwrap_or_else(|| millis(self.inner.config.node_timeout));
            options.node_timeout_ms = Some(ms.saturating_mul(2).min(7 * 86_400_000));
        }
        let id = self
            .start_job(old.kind, NodeFilter::ids(nodes), options.clone())
            .await?;
        Ok((id, options))
    }

    /// Progress events of a job, derived from committed rows: one at once, then one
    /// whenever the counts or the state changed, looked at after each commit of
    /// this process and every [`EngineConfig::poll_interval`] (for commits of
    /// other processes), ending with a `finished` event once the job
    /// ended and every item has a result. The stream ends early if the job does not exist.
    pub fn progress(&self, job: JobId) -> impl Stream<Item = ProgressEvent> + Send + 'static {
        struct St {
            inner: Arc<Inner>,
            rx: watch::Receiver<u64>,
            samples: VecDeque<(Instant, u64)>,
            last: Option<(Progress, JobState)>,
            ended: bool,
        }
        let st = St {
            rx: self.inner.commits.subscribe(),
            inner: Arc::clone(&self.inner),
            samples: VecDeque::new(),
            last: None,
            ended: false,
        };
        futures::stream::unfold(st, move |mut st| async move {
            if st.ended {
                return None;
            }
            let interval = st.inner.config.poll_interval;
            loop {
                if st.last.is_some() {
                    tokio::select! {
                        r = st.rx.changed() => if r.is_err() { tokio::time::sleep(interval).await },
                        () = tokio::time::sleep(interval) => {}
                    }
                }
                match snapshot(&st.inner, job, &mut st.samples).await {
                    // Nothing new: no event.
                    Ok(ev) if st.last == Some((ev.progress, ev.state)) => {}
                    Ok(ev) => {
                        st.ended = ev.finished;
                        st.last = Some((ev.progress, ev.state));
                        return Some((ev, st));
                    }
                    Err(StoreError::JobNotFound(_)) => return None,
                    Err(e) => {
                        tracing::warn!(%job, error = %e, "progress: store error, retrying");
                        if st.last.is_none() {
                            tokio::time::sleep(interval).await;
                        }
                    }
                }
            }
        })
    }

    /// Waits until the job ended and every item has a result.
    ///
    /// # Errors
    /// A store error, or [`EngineError::RunnerFailed`] when this process's
    /// runner of the job stopped on a store error it could not retry away (the
    /// job's committed results stay; its unfinished items wait for
    /// [`recover`](Self::recover)).
    pub async fn wait(&self, job: JobId) -> Result<JobSummary, EngineError> {
        let mut rx = self.inner.commits.subscribe();
        loop {
            if let Some(error) = lock(&self.inner.failed).get(&job) {
                return Err(EngineError::RunnerFailed {
                    job,
                    error: error.clone(),
                });
            }
            let j = self.inner.store.job(job).await?;
            let progress = self.inner.store.progress(job).await?;
            if terminal(j.state) && progress.is_complete() {
                return Ok(JobSummary { job: j, progress });
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { tokio::time::sleep(self.inner.config.poll_interval).await },
                () = tokio::time::sleep(self.inner.config.poll_interval) => {}
            }
        }
    }

    /// Start-up: for each unfinished job (queued or running) not running here,
    /// either resumes it (items that were running in a dead worker go back to
    /// pending and the job runs again) or closes it as `interrupted` (pending
    /// items and those of dead workers end as cancelled). Jobs already
    /// cancelled whose items were still running in a worker that died get
    /// those items ended as cancelled. Returns the jobs handled.
    ///
    /// Only items of dead workers are touched (no worker row, or a heartbeat
    /// expired; see [`NodeStore::requeue_orphans`]), and items recorded under
    /// this engine's own worker name (it runs none of them: they are left from
    /// an earlier run of this process). Items of other live workers stay
    /// theirs, and `Interrupt` leaves a job alone while a live worker holds
    /// any of its items.
    pub async fn recover(&self, policy: RecoverPolicy) -> Result<Vec<JobId>, EngineError> {
        let store = &self.inner.store;
        let mut handled = Vec::new();
        for job in store.unfinished_jobs().await? {
            if self.is_running_here(job.id) {
                continue;
            }
            if job.kind == JobKind::Import {
                if self.recover_import(&job, policy).await? {
                    handled.push(job.id);
                }
                continue;
            }
            let requeued = store
                .requeue_orphans(job.id, &self.inner.config.worker, Utc::now())
                .await?;
            match policy {
                RecoverPolicy::Resume => {
                    tracing::info!(job = %job.id, requeued, "resuming job");
                    self.spawn_runner(job.clone());
                }
                RecoverPolicy::Interrupt => {
                    // Items still running after the orphans went back are
                    // held by live workers: the job is theirs, leave it.
                    if store.progress(job.id).await?.running > 0 {
                        tracing::info!(job = %job.id, "job runs in a live worker: not interrupted");
                        continue;
                    }
                    let now = Utc::now();
                    let cancelled = store.cancel_pending(job.id, now).await?;
                    store
                        .set_job_state(job.id, JobState::Interrupted, now)
                        .await?;
                    tracing::info!(job = %job.id, cancelled, "job interrupted");
                    self.inner.notify();
                }
            }
            handled.push(job.id);
        }
        // A job cancelled while the process running its items died: those items
        // would stay `running` for ever; end them as cancelled.
        for job in store.jobs(RECOVER_SCAN).await? {
            if !terminal(job.state) || self.is_running_here(job.id) || job.kind == JobKind::Import {
                continue;
            }
            if store.progress(job.id).await?.is_complete() {
                continue;
            }
            store
                .requeue_orphans(job.id, &self.inner.config.worker, Utc::now())
                .await?;
            let n = store.cancel_pending(job.id, Utc::now()).await?;
            tracing::info!(job = %job.id, state = %job.state, cancelled = n, "closed orphaned items");
            self.inner.notify();
            handled.push(job.id);
        }
        Ok(handled)
    }

    /// One reconciler pass: makes running services match `service_wanted` (see
    /// [`ReconcileReport`]).
    pub async fn reconcile(&self) -> Result<ReconcileReport, EngineError> {
        services::reconcile(&self.inner).await
    }

    /// Asks the reconciler of [`run`](Self::run) for a pass now instead of at
    /// its next tick (e.g. after a restart request was recorded); a request
    /// made during a pass brings another pass right after it. Without a
    /// running [`run`](Self::run) the request waits for it.
    pub fn request_reconcile(&self) {
        self.inner.reconcile_now.notify_one();
    }

    /// Records the last counters of the services running in this process, no
    /// connection open, for the other processes that show them. Call it right
    /// before stopping every service on a process exit.
    pub async fn record_final_service_counters(&self) {
        services::flush_final_counters(&self.inner).await;
    }

    /// Makes this engine keep the proxies file ([`EngineConfig::proxies_file`])
    /// from its reconciler passes on; [`run`](Self::run) does it. A process that
    /// makes one pass and exits (`connexa run --once`) must not: its list would
    /// replace the long-running process's.
    pub fn keep_proxies_file(&self) {
        self.inner
            .owns_proxies_file
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Rewrites the proxies file ([`EngineConfig::proxies_file`]) from the
    /// services running in this process now, if that changed its text. Call it
    /// after stopping every service on a process exit: the file is then empty.
    pub async fn refresh_proxies_file(&self) {
        services::write_proxies_file(&self.inner).await;
    }

    /// One monitor pass over the nodes with a service (see [`MonitorReport`]).
    pub async fn monitor(&self) -> Result<MonitorReport, EngineError> {
        services::monitor(&self.inner).await
    }

    /// Runs until `shutdown` completes: picks up queued jobs (created by another
    /// process) and joins running jobs with pending items or items whose lease
    /// expired (another process's: the queue is shared) every
    /// [`EngineConfig::queue_interval`], reconciles services and checks their
    /// health at their intervals (jobs only with the [`WorkerRole::Jobs`]
    /// role, services only with [`WorkerRole::Services`]). On shutdown, runners stop claiming,
    /// let items in flight finish and commit, and leave the rest pending (the next
    /// start resumes it); then `run` returns. Call [`recover`](Self::recover) first.
    pub async fn run(&self, shutdown: impl Future<Output = ()> + Send) {
        self.keep_proxies_file();
        let (stop, stop_rx) = watch::channel(false);
        let every = |interval: Duration, what: &'static str| {
            let mut stop_rx = stop_rx.clone();
            let this = self.clone();
            async move {
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    let nudged = async {
                        if what == "reconcile" {
                            this.inner.reconcile_now.notified().await;
                        } else {
                            std::future::pending::<()>().await;
                        }
                    };
                    tokio::select! {
                        _ = stop_rx.wait_for(|s| *s) => break,
                        _ = tick.tick() => {}
                        () = nudged => {}
                    }
                    let r = match what {
                        "jobs" => this.pick_up_jobs().await,
                        "reconcile" => this.reconcile().await.map(|_| ()),
                        _ => this.monitor().await.map(|_| ()),
                    };
                    if let Err(e) = r {
                        tracing::warn!(error = %e, "{what} pass failed");
                    }
                }
            }
        };
        let cfg = &self.inner.config;
        let services = cfg.roles.contains(&WorkerRole::Services);
        let jobs_loop = every(cfg.queue_interval, "jobs");
        let reconcile_loop = every(cfg.reconcile_interval, "reconcile");
        let monitor_loop = every(cfg.monitor_interval, "monitor");
        tokio::join!(
            async {
                shutdown.await;
                stop.send_replace(true);
            },
            // Without the jobs role the loop still picks up this host's
            // import jobs (they run where their spool is).
            jobs_loop,
            async {
                if services {
                    reconcile_loop.await;
                }
            },
            async {
                if services {
                    monitor_loop.await;
                }
            },
        );
        tracing::info!("shutting down: draining job runners");
        self.drain().await;
    }

    /// Graceful stop of every job runner of this process: they stop claiming,
    /// let the items in flight finish and commit, and leave the rest pending
    /// (the next [`recover`](Self::recover) or [`run`](Self::run) resumes it).
    /// Returns once they all stopped; the engine can be used again afterwards.
    pub async fn drain(&self) {
        self.inner.draining.send_replace(true);
        let tasks: Vec<JoinHandle<()>> = lock(&self.inner.jobs)
            .drain()
            .map(|(_, j)| j.task)
            .collect();
        for t in tasks {
            let _ = t.await;
        }
        self.inner.draining.send_replace(false);
    }

    /// Starts runners for unfinished jobs that no runner here works on: queued
    /// jobs created by another process, and running jobs with pending items that
    /// another process works on (claims never overlap, so both share the work).
    async fn pick_up_jobs(&self) -> Result<(), EngineError> {
        for job in self.inner.store.unfinished_jobs().await? {
            if self.is_running_here(job.id) {
                continue;
            }
            if job.kind == JobKind::Import {
                // Only where its spool is, and when nobody holds it.
                if self.import_waits_here(&job).await? {
                    tracing::info!(job = %job.id, "picking up import job");
                    self.spawn_runner(job);
                }
                continue;
            }
            if !self.inner.config.roles.contains(&WorkerRole::Jobs) {
                continue;
            }
            if job.state == JobState::Running {
                let p = self.inner.store.progress(job.id).await?;
                // Nothing to claim (no pending item, no expired lease) and
                // nothing to close: someone else is on it.
                if p.pending == 0
                    && !p.is_complete()
                    && self.inner.store.claimable(job.id, Utc::now()).await? == 0
                {
                    continue;
                }
            }
            tracing::info!(job = %job.id, kind = %job.kind, state = %job.state, "picking up job");
            self.spawn_runner(job);
        }
        Ok(())
    }

    /// For `connexa run --once`: resumes every unfinished job and waits for all of
    /// them to end, then makes one reconciler pass and one monitor pass.
    pub async fn run_once(&self) -> Result<OnceReport, EngineError> {
        let jobs = self.recover(RecoverPolicy::Resume).await?;
        let mut finished = Vec::with_capacity(jobs.len());
        for job in jobs {
            finished.push(self.wait(job).await?);
        }
        let reconcile = self.reconcile().await?;
        let monitor = self.monitor().await?;
        Ok(OnceReport {
            jobs: finished,
            reconcile,
            monitor,
        })
    }

    /// Stops every task of this engine at once, as a crash would: runners, item
    /// tasks and committers are aborted; results not yet committed are lost and
    /// their items stay `running` until the next [`recover`](Self::recover).
    pub fn abort(&self) {
        for (_, j) in lock(&self.inner.jobs).drain() {
            j.task.abort();
        }
        if let Some(h) = lock(&self.inner.heartbeat).take() {
            h.abort();
        }
    }

    /// This engine's worker name ([`EngineConfig::worker`]).
    pub fn worker_name(&self) -> &str {
        &self.inner.config.worker
    }

    /// Registers this process as a worker (name, host, pid, version, roles
    /// from the config) and starts its heartbeat. Refused with
    /// [`StoreError::WorkerNameTaken`] when a live process elsewhere holds the name.
    /// An engine that runs a job without registering starts a heartbeat
    /// anyway, which only extends the leases of its items (it has no row), so
    /// that they never run out while it works.
    pub async fn register(&self) -> Result<(), EngineError> {
        self.inner
            .store
            .register_worker(
                &self.inner.registration,
                Utc::now(),
                self.inner.config.lease,
            )
            .await?;
        *lock(&self.inner.last_beat) = Some(Instant::now());
        tracing::info!(worker = %self.inner.config.worker, roles = ?self.inner.config.roles, "worker registered");
        self.inner
            .registered
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.ensure_heartbeat();
        Ok(())
    }

    /// Clean exit: stops the heartbeat and removes the worker's row. Call it
    /// after [`drain`](Self::drain) (no item is held any more).
    pub async fn deregister(&self) -> Result<(), EngineError> {
        if let Some(h) = lock(&self.inner.heartbeat).take() {
            h.abort();
        }
        self.inner
            .registered
            .store(false, std::sync::atomic::Ordering::Relaxed);
        self.inner
            .store
            .deregister_worker(&self.inner.config.worker)
            .await?;
        tracing::info!(worker = %self.inner.config.worker, "worker deregistered");
        Ok(())
    }

    /// Results of this process refused by fencing so far: items whose lease
    /// ran out and that another worker reclaimed (or that ended otherwise)
    /// before the result arrived. None of them was applied.
    pub fn results_refused(&self) -> u64 {
        self.inner
            .refused
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Starts the heartbeat task if it does not run: every
    /// [`EngineConfig::heartbeat_interval`] it marks the worker alive and
    /// extends the leases of the items it holds. It holds no strong reference:
    /// it ends when the engine is dropped.
    fn ensure_heartbeat(&self) {
        let mut slot = lock(&self.inner.heartbeat);
        if slot.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        let every = self
            .inner
            .config
            .heartbeat_interval
            .max(Duration::from_millis(10));
        *slot = Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                let now = Utc::now();
                let beat = if inner.registered.load(std::sync::atomic::Ordering::Relaxed) {
                    let beat = inner
                        .store
                        .heartbeat(&inner.registration, now, inner.config.lease)
                        .await;
                    services::after_heartbeat(&inner, &beat).await;
                    beat
                } else {
                    inner
                        .store
                        .extend_leases(&inner.config.worker, now, inner.config.lease)
                        .await
                };
                match beat {
                    Ok(n) => tracing::trace!(leases = n, "heartbeat"),
                    Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
                }
            }
        }));
    }
}

async fn snapshot(
    inner: &Inner,
    job: JobId,
    samples: &mut VecDeque<(Instant, u64)>,
) -> Result<ProgressEvent, StoreError> {
    let store = &inner.store;
    let j = store.job(job).await?;
    let progress = store.progress(job).await?;
    let recent = store.recent_items(job, inner.config.recent_items).await?;
    let now = Instant::now();
    let done = progress.done();
    samples.push_back((now, done));
    while samples.len() > 2
        && samples
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > Duration::from_secs(10))
    {
        samples.pop_front();
    }
    let window = samples.front().and_then(|(t0, d0)| {
        let dt = now.duration_since(*t0).as_secs_f64();
        (dt >= 0.2 && done > *d0).then(|| (done - d0) as f64 / dt)
    });
    let rate = window.unwrap_or_else(|| {
        let dt = (Utc::now() - j.created_at).as_seconds_f64();
        if dt > 0.0 { done as f64 / dt } else { 0.0 }
    });
    let remaining = progress.total.saturating_sub(done);
    let eta = if remaining == 0 {
        Some(Duration::ZERO)
    } else if rate > 0.0 {
        Duration::try_from_secs_f64(remaining as f64 / rate).ok()
    } else {
        None
    };
    Ok(ProgressEvent {
        job,
        kind: j.kind,
        state: j.state,
        finished: terminal(j.state) && progress.is_complete(),
        progress,
        rate,
        eta,
        recent,
    })
}

/// A stand-in for ports that are not implemented yet: as a [`SpeedTester`] it
/// answers `ProbeError::Config` (so no node is marked); as a
/// [`ServiceLauncher`] it runs nothing and every start fails.
#[derive(Debug, Clone, Copy, Default)]
pub struct NotAvailable;

#[async_trait::async_trait]
impl SpeedTester for NotAvailable {
    async fn measure(
        &self,
        _node: &crate::domain::Node,
    ) -> Result<crate::domain::Outcome, crate::ports::ProbeError> {
        Err(crate::ports::ProbeError::Config(
            "the speed test is not implemented yet".into(),
        ))
    }
}

#[async_trait::async_trait]
impl ServiceLauncher for NotAvailable {
    async fn start(
        &self,
        _node: &crate::domain::Node,
        _previous: Option<crate::domain::ServiceEndpoint>,
    ) -> Result<crate::domain::ServiceEndpoint, crate::ports::ServiceError> {
        Err(crate::ports::ServiceError::StartFailed(
            "SOCKS5 services are not implemented yet".into(),
        ))
    }

    async fn stop(&self, node: NodeId) -> Result<(), crate::ports::ServiceError> {
        Err(crate::ports::ServiceError::NotRunning(node))
    }

    async fn health(&self, _node: &crate::domain::Node) -> crate::ports::Health {
        crate::ports::Health::Unhealthy("no service runs here".into())
    }

    async fn running(&self) -> Vec<NodeId> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests;
