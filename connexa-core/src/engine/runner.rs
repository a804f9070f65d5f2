//! One job's runner: claims items, runs each in its own supervised task, and
//! sends results to the job's committer, which group-commits them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument;

use super::{AbortOnDrop, BusyGuard, Inner, JobOptions, lock, terminal};
use crate::domain::{
    EnrichmentUpdate, Event, EventKind, Failure, Level, Measurements, Node, NodeFilter, NodeId,
    Outcome, Page, Status, transition,
};
use crate::ports::{
    ClaimedItem, ItemResult, ItemState, Job, JobId, JobKind, JobState, ProbeDepth, ProbeError,
    ServiceError, StoreError,
};

/// A result on its way to the committer, with the service guard held until it is committed.
struct Pending {
    result: ItemResult,
    _guard: Option<BusyGuard>,
}

/// Why the runner stops before every item ran.
#[derive(Debug, Clone, PartialEq)]
enum Stop {
    /// Cancelled (on request, or because the job cannot run: the reason).
    Cancelled(String),
    /// Graceful shutdown: leave the rest pending for the next process.
    Drain,
    /// The store failed beyond the retries: stop claiming, let the items in
    /// flight end, leave the rest pending for recovery, report the error.
    StoreFailed,
}

/// What an item's work produced.
pub(super) struct Finish {
    state: ItemState,
    event: Option<Event>,
    /// Enrichment to store with the node (geo and fraud jobs).
    pub(super) enrichment: Option<EnrichmentUpdate>,
    detail: Option<String>,
    /// The job cannot run at all (a [`ProbeError`]): stop it, with this reason.
    pub(super) fatal: Option<String>,
    guard: Option<BusyGuard>,
}

impl Finish {
    pub(super) fn new(state: ItemState, event: Option<Event>, detail: Option<String>) -> Self {
        Finish {
            state,
            event,
            enrichment: None,
            detail,
            fatal: None,
            guard: None,
        }
    }
}

struct Ctx {
    inner: Arc<Inner>,
    job: JobId,
    kind: JobKind,
    node_timeout: Duration,
    deadline: Option<Instant>,
    stop: watch::Sender<Option<Stop>>,
    results: mpsc::Sender<Msg>,
    /// The first store error the runner or its committer could not retry away.
    failed: Mutex<Option<StoreError>>,
}

impl Ctx {
    /// Records a store error that outlasted the retries and stops the runner.
    fn store_failed(&self, e: StoreError) {
        lock(&self.failed).get_or_insert(e);
        request_stop(self, Stop::StoreFailed);
    }
}

enum Msg {
    Result(Box<Pending>),
    /// Commit everything sent before, then answer.
    Flush(tokio::sync::oneshot::Sender<()>),
}

pub(super) async fn run_job(inner: Arc<Inner>, job: Job, cancel: watch::Sender<bool>) {
    let span = tracing::info_span!("job", id = %job.id, kind = %job.kind);
    async move {
        let started = std::time::Instant::now();
        let id = job.id;
        let services = matches!(job.kind, JobKind::ServiceStart | JobKind::ServiceStop);
        let outcome = run(Arc::clone(&inner), job, cancel.subscribe()).await;
        if services {
            // The set of running services changed: the reconciler of a running
            // `Engine::run` records it (proxies file, counters) now.
            inner.reconcile_now.notify_one();
        }
        match outcome {
            Ok(state) => tracing::info!(?state, elapsed = ?started.elapsed(), "runner finished"),
            Err(e) => {
                tracing::error!(error = %e, "runner stopped by a store error; unfinished items stay for recovery");
                lock(&inner.failed).insert(id, e.to_string());
                inner.notify();
            }
        }
    }
    .instrument(span)
    .await
}

async fn with_retries<T, F, Fut>(what: &str, mut f: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut delay = Duration::from_millis(10);
    let mut attempt = 1;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if attempt < 8 => {
                tracing::warn!(attempt, error = %e, "{what} failed, retrying");
                tokio::time::sleep(delay).await;
                delay = delay.saturating_mul(2);
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Runs the job until every item it can claim ended; returns the state it left the job in.
async fn run(
    inner: Arc<Inner>,
    job: Job,
    mut cancel: watch::Receiver<bool>,
) -> Result<JobState, StoreError> {
    let opts: JobOptions = serde_json::from_value(job.options.clone()).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "unreadable job options, using defaults");
        JobOptions::default()
    });
    let cfg = &inner.config;
    let concurrency = opts.concurrency.unwrap_or(cfg.concurrency).max(1);
    let node_timeout = opts
        .node_timeout_ms
        .map(Duration::from_millis)
        .unwrap_or(cfg.node_timeout);
    let deadline = job
        .deadline
        .map(|d| Instant::now() + (d - Utc::now()).to_std().unwrap_or(Duration::ZERO));
    let (tx, rx) = mpsc::channel(concurrency.saturating_mul(2).clamp(64, 8192));
    let (stop, _) = watch::channel(None);
    let ctx = Arc::new(Ctx {
        inner: Arc::clone(&inner),
        job: job.id,
        kind: job.kind,
        node_timeout,
        deadline,
        stop,
        results: tx,
        failed: Mutex::new(None),
    });
    let committer = AbortOnDrop(tokio::spawn(
        commit_loop(Arc::clone(&ctx), rx).in_current_span(),
    ));
    let mut draining = inner.draining.subscribe();
    let mut stop_rx = ctx.stop.subscribe();
    let slots = Arc::new(Semaphore::new(concurrency));
    let mut tasks = JoinSet::new();
    let mut last_check = Instant::now();
    let poll = cfg.poll_interval;
    let deadline_passed = || deadline.is_some_and(|d| Instant::now() >= d);

    // Claim and run.
    loop {
        // Finished tasks are reaped at once: a finished task keeps its
        // allocation in the set until joined, so a job of a million items
        // would otherwise hold memory for every item it ever ran, not only
        // for the ones in flight.
        while tasks.try_join_next().is_some() {}
        if ctx.stop.borrow().is_some() {
            break;
        }
        if *cancel.borrow() {
            request_stop(&ctx, Stop::Cancelled("cancelled".into()));
            break;
        }
        if *draining.borrow() {
            request_stop(&ctx, Stop::Drain);
            break;
        }
        if last_check.elapsed() >= poll {
            last_check = Instant::now();
            check_store_state(&ctx).await;
            continue;
        }
        let permit = tokio::select! {
            p = Arc::clone(&slots).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = cancel.changed() => continue,
            _ = stop_rx.changed() => continue,
            _ = draining.changed() => continue,
            () = tokio::time::sleep(poll) => continue,
            Some(_) = tasks.join_next() => continue,
        };
        let batch = usize::try_from(cfg.claim_batch.max(1)).unwrap_or(usize::MAX);
        let mut permits = vec![permit];
        gather(
            &slots,
            &mut permits,
            concurrency,
            batch,
            cfg.commit_delay,
            &deadline_passed,
        )
        .await;
        // The only deadline check of the claim loop, just before claiming:
        // items in flight end at the deadline (their supervisors see to it)
        // and free their slots, so the loop always gets here. A slot freed by
        // an item that stopped the job: claim nothing more either.
        if ctx.stop.borrow().is_some() || deadline_passed() {
            break;
        }
        let want = permits.len() as u64;
        let claimed = match with_retries("claim", || {
            inner
                .store
                .claim_items(job.id, &cfg.worker, want, Utc::now(), cfg.lease)
        })
        .await
        {
            Ok(c) => c,
            Err(e) => {
                ctx.store_failed(e);
                break;
            }
        };
        if claimed.is_empty() {
            break;
        }
        tracing::debug!(n = claimed.len(), "claimed");
        // The claimed nodes in one query, not one per item.
        let filter = NodeFilter::ids(claimed.iter().map(|c| c.node));
        let page = Page {
            limit: Page::MAX_LIMIT,
            ..Page::default()
        };
        let mut nodes: HashMap<NodeId, Node> =
            match with_retries("read nodes", || inner.store.list(&filter, page)).await {
                Ok(p) => p.nodes.into_iter().map(|n| (n.id, n)).collect(),
                Err(e) => {
                    // These items stay `running` until recovery requeues them.
                    ctx.store_failed(e);
                    break;
                }
            };
        // Unused permits go back to the semaphore when `permits` is dropped.
        for (item, p) in claimed.into_iter().zip(permits.drain(..)) {
            let node = nodes.remove(&item.node);
            tasks.spawn(supervise(Arc::clone(&ctx), item, node, p));
        }
    }

    // Let the items in flight end, still honouring cancellation.
    loop {
        tokio::select! {
            next = tasks.join_next() => if next.is_none() { break },
            _ = cancel.changed(), if !*cancel.borrow() => {}
            () = tokio::time::sleep(poll) => check_store_state(&ctx).await,
        }
        if *cancel.borrow() {
            request_stop(&ctx, Stop::Cancelled("cancelled".into()));
        }
    }

    // Items never claimed.
    let stopped = ctx.stop.borrow().clone();
    let expire = match &stopped {
        Some(Stop::Cancelled(why)) => Some((ItemState::Cancelled, why.clone())),
        Some(Stop::Drain | Stop::StoreFailed) => None,
        None if deadline_passed() => Some((ItemState::TimedOut, "job deadline reached".to_owned())),
        None => None,
    };
    // Every result sent is committed once the committer answers the flush.
    let (flushed, flushed_rx) = tokio::sync::oneshot::channel();
    if ctx.results.send(Msg::Flush(flushed)).await.is_ok() {
        let _ = flushed_rx.await;
    }
    drop(committer);
    if let Some(e) = lock(&ctx.failed).take() {
        // Committed results stay; the rest waits for recovery.
        return Err(e);
    }
    if let Some((state, why)) = expire {
        let n = expire_pending(&inner, job.id, state, &why).await?;
        tracing::info!(n, %state, reason = %why, "ended the items that never ran");
        inner.notify();
    }

    let now_state = with_retries("read job", || inner.store.job(job.id))
        .await?
        .state;
    let progress = with_retries("read progress", || inner.store.progress(job.id)).await?;
    let final_state = match stopped {
        Some(Stop::Drain | Stop::StoreFailed) => now_state,
        _ if terminal(now_state) => now_state,
        Some(Stop::Cancelled(_)) => JobState::Cancelled,
        None if progress.is_complete() => JobState::Done,
        // Another process still works on items of this job; the last one to finish marks it.
        None => now_state,
    };
    if final_state != now_state {
        with_retries("set job state", || {
            inner.store.set_job_state(job.id, final_state, Utc::now())
        })
        .await?;
        inner.notify();
    }
    Ok(final_state)
}

/// Takes up to `batch` free slots for one claim. Claims go in chunks: when
/// fewer than a quarter of `concurrency` slots are free, it waits a moment (at
/// most `delay`, and not once the job deadline passed) for more, so that claims
/// do not turn into one transaction per item competing with the committer.
/// The waiting decides only the size and timing of claims, never which items
/// run or how they end (`.cargo/mutants.toml` excludes its mutants for that).
async fn gather(
    slots: &Arc<Semaphore>,
    permits: &mut Vec<OwnedSemaphorePermit>,
    concurrency: usize,
    batch: usize,
    delay: Duration,
    deadline_passed: &impl Fn() -> bool,
) {
    let low_water = (concurrency / 4).clamp(1, batch);
    let until = Instant::now() + delay;
    while permits.len() < batch {
        match Arc::clone(slots).try_acquire_owned() {
            Ok(p) => permits.push(p),
            Err(_) if permits.len() >= low_water || deadline_passed() => break,
            Err(_) => match tokio::time::timeout_at(until, Arc::clone(slots).acquire_owned()).await
            {
                Ok(Ok(p)) => permits.push(p),
                _ => break,
            },
        }
    }
}

/// Records why the runner stops (the first reason wins) and tells every item.
fn request_stop(ctx: &Ctx, why: Stop) {
    ctx.stop.send_if_modified(|s| {
        if s.is_none() {
            *s = Some(why);
            true
        } else {
            false
        }
    });
}

/// Cross-process cancellation: a job cancelled (or closed) in the store stops here too.
async fn check_store_state(ctx: &Ctx) {
    match ctx.inner.store.job(ctx.job).await {
        Ok(j) if terminal(j.state) => {
            request_stop(ctx, Stop::Cancelled(format!("job {}", j.state)));
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the job state"),
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Claims what is still pending and ends it with `state` (deadline, fail-fast).
async fn expire_pending(
    inner: &Inner,
    job: JobId,
    state: ItemState,
    why: &str,
) -> Result<u64, StoreError> {
    let mut n = 0;
    loop {
        let now = Utc::now();
        let items = with_retries("claim", || {
            inner
                .store
                .claim_items(job, &inner.config.worker, 1_000, now, inner.config.lease)
        })
        .await?;
        if items.is_empty() {
            return Ok(n);
        }
        n += items.len() as u64;
        let results = items
            .into_iter()
            .map(|i| ItemResult {
                item: i.item,
                token: i.token,
                state,
                event: None,
                enrichment: None,
                detail: Some(why.to_owned()),
                at: now,
            })
            .collect();
        with_retries("finish", || inner.store.finish_items(Vec::clone(&results))).await?;
    }
}

/// Group commit: write whatever arrived within `commit_delay` (at most
/// `commit_batch`) in one transaction; only then are the results counted.
async fn commit_loop(ctx: Arc<Ctx>, mut rx: mpsc::Receiver<Msg>) {
    let inner = &ctx.inner;
    let max = inner.config.commit_batch.max(1);
    let mut batch: Vec<Pending> = Vec::with_capacity(max);
    while let Some(first) = rx.recv().await {
        let mut flush = None;
        match first {
            Msg::Result(p) => batch.push(*p),
            Msg::Flush(ack) => {
                let _ = ack.send(());
                continue;
            }
        }
        let until = Instant::now() + inner.config.commit_delay;
        while batch.len() < max {
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(Msg::Result(p))) => batch.push(*p),
                Ok(Some(Msg::Flush(ack))) => {
                    flush = Some(ack);
                    break;
                }
                Ok(None) | Err(_) => break,
            }
        }
        let results: Vec<ItemResult> = batch.iter().map(|p| p.result.clone()).collect();
        let n = results.len();
        match with_retries("group commit", || inner.store.finish_items(results.clone())).await {
            Ok(finished) => {
                let refused = finished.iter().filter(|f| !f.written).count();
                if refused > 0 {
                    // Fencing: these items were reclaimed (our lease ran out)
                    // or ended elsewhere; their results were not applied.
                    inner
                        .refused
                        .fetch_add(refused as u64, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(
                        refused,
                        "late results refused: their items were reclaimed by another worker or ended; nothing of them was applied"
                    );
                }
                tracing::debug!(n, "committed");
                inner.notify();
            }
            Err(e) => {
                tracing::error!(
                    n,
                    error = %e,
                    "results could not be committed; their items stay running until the job is recovered"
                );
                ctx.store_failed(e);
            }
        }
        // Service guards are released only now that the outcome is in the store.
        batch.clear();
        if let Some(ack) = flush {
            let _ = ack.send(());
        }
    }
}

/// One item's time budget: [`Ctx::node_timeout`] of work, not counting the
/// time spent waiting for a speed slot (the wait is ours, not the node's).
#[derive(Default)]
struct Budget {
    /// Time waited so far, and since when the item is waiting now.
    paused: Mutex<(Duration, Option<Instant>)>,
    changed: tokio::sync::Notify,
}

impl Budget {
    /// Waits for a slot of `slots`, pausing the budget meanwhile.
    async fn wait_for(&self, slots: &Arc<Semaphore>) -> Option<OwnedSemaphorePermit> {
        self.paused(Arc::clone(slots).acquire_owned()).await.ok()
    }

    /// Runs `work` of ours (waiting for a slot, enriching a finished result)
    /// with the budget paused: it is not the node's time.
    async fn paused<T>(&self, work: impl Future<Output = T>) -> T {
        lock(&self.paused).1 = Some(Instant::now());
        self.changed.notify_waiters();
        let out = work.await;
        {
            let mut p = lock(&self.paused);
            if let Some(since) = p.1.take() {
                p.0 += since.elapsed();
            }
        }
        self.changed.notify_waiters();
        out
    }

    /// Returns once `timeout` of unpaused time has passed since `started`.
    async fn expired(&self, started: Instant, timeout: Duration) {
        loop {
            let changed = self.changed.notified();
            let (waited, waiting) = *lock(&self.paused);
            if waiting.is_none() {
                let due = started + timeout + waited;
                if Instant::now() >= due {
                    return;
                }
                tokio::select! {
                    () = tokio::time::sleep_until(due) => {}
                    () = changed => {}
                }
            } else {
                changed.await;
            }
        }
    }
}

/// Runs one item in its own task and turns whatever happens into a terminal result.
async fn supervise(
    ctx: Arc<Ctx>,
    item: ClaimedItem,
    node: Option<Node>,
    _slot: OwnedSemaphorePermit,
) {
    let span = tracing::info_span!("node", id = %item.node, ip = tracing::field::Empty);
    let partial: Arc<Mutex<Option<Outcome>>> = Arc::new(Mutex::new(None));
    let budget = Arc::new(Budget::default());
    let started = Instant::now();
    let mut work = AbortOnDrop(tokio::spawn(
        work(
            Arc::clone(&ctx.inner),
            ctx.kind,
            node,
            Arc::clone(&partial),
            Arc::clone(&budget),
        )
        .instrument(span.clone()),
    ));
    let mut stop_rx = ctx.stop.subscribe();
    let finish = tokio::select! {
        biased;
        joined = &mut work.0 => match joined {
            Ok(f) => f,
            Err(e) if e.is_panic() => {
                let why = panic_message(e.into_panic());
                span.in_scope(|| tracing::error!(panic = %why, "test crashed"));
                Finish::new(
                    ItemState::Failed,
                    None,
                    Some(Failure::Crashed { detail: why }.to_string()),
                )
            }
            Err(_) => Finish::new(ItemState::Cancelled, None, Some("aborted".into())),
        },
        reason = stop_rx.wait_for(|s| matches!(s, Some(Stop::Cancelled(_)))) => {
            let why = match reason.as_deref() {
                Ok(Some(Stop::Cancelled(why))) => why.clone(),
                _ => "stopped".to_owned(),
            };
            Finish::new(ItemState::Cancelled, None, Some(why))
        }
        () = sleep_until_opt(ctx.deadline) => {
            deadline_reached(ctx.kind, started.elapsed(), lock(&partial).take())
        }
        () = budget.expired(started, ctx.node_timeout) => {
            span.in_scope(|| tracing::debug!(timeout = ?ctx.node_timeout, "timed out"));
            if ctx.kind == JobKind::ServiceStart {
                ctx.inner.start_attempted(item.node, false);
            }
            timed_out(ctx.kind, ctx.node_timeout, lock(&partial).take())
        }
    };
    drop(work);
    if let Some(why) = &finish.fatal {
        request_stop(&ctx, Stop::Cancelled(format!("cancelled: {why}")));
    }
    let result = ItemResult {
        item: item.item,
        token: item.token,
        state: finish.state,
        event: finish.event,
        enrichment: finish.enrichment,
        detail: finish.detail,
        at: Utc::now(),
    };
    let _ = ctx
        .results
        .send(Msg::Result(Box::new(Pending {
            result,
            _guard: finish.guard,
        })))
        .await;
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-text payload".to_owned()
    }
}

/// The per-node budget ran out. That is our side, not evidence about the node
/// (DESIGN.md "Verdicts"): a test records [`Event::Inconclusive`] with the
/// level it had proven so far (a pipeline whose light stage passed keeps or
/// earns `ping_light`) and the stage it was in; no failure is counted against
/// the node. A service start records a failed start (which keeps the status).
fn timed_out(kind: JobKind, t: Duration, partial: Option<Outcome>) -> Finish {
    match kind {
        // Enrichment is not evidence: nothing is recorded on the node.
        JobKind::Geo | JobKind::Fraud => Finish::new(
            ItemState::TimedOut,
            None,
            Some(format!("timed out after {t:?}")),
        ),
        JobKind::ServiceStart => {
            let detail = format!("timed out after {t:?}");
            Finish::new(
                ItemState::TimedOut,
                Some(Event::ServiceStartFailed(detail.clone())),
                Some(detail),
            )
        }
        JobKind::ServiceStop => Finish::new(
            ItemState::TimedOut,
            None,
            Some(format!("timed out after {t:?}")),
        ),
        _ => {
            let reason = format!(
                "budget exceeded after {} s at stage {}",
                t.as_secs_f64(),
                stage(kind, partial.as_ref())
            );
            Finish::new(
                ItemState::TimedOut,
                Some(inconclusive(reason.clone(), partial)),
                Some(reason),
            )
        }
    }
}

/// The job deadline passed while the item ran: like an exceeded budget, not
/// evidence (services record nothing).
fn deadline_reached(kind: JobKind, ran: Duration, partial: Option<Outcome>) -> Finish {
    if matches!(
        kind,
        JobKind::ServiceStart | JobKind::ServiceStop | JobKind::Geo | JobKind::Fraud
    ) {
        return Finish::new(
            ItemState::TimedOut,
            None,
            Some("job deadline reached".into()),
        );
    }
    let reason = format!(
        "job deadline reached after {:.1} s at stage {}",
        ran.as_secs_f64(),
        stage(kind, partial.as_ref())
    );
    Finish::new(
        ItemState::TimedOut,
        Some(inconclusive(reason.clone(), partial)),
        Some(reason),
    )
}

/// The stage a test was in: its own for single-stage jobs; for a pipeline the
/// one after the furthest stage that passed.
fn stage(kind: JobKind, partial: Option<&Outcome>) -> &'static str {
    match kind {
        JobKind::Light => "light",
        JobKind::Auth => "auth",
        JobKind::Speed => "speed",
        _ => match partial.map(|o| o.reached) {
            None | Some(Level::None) => "light",
            Some(Level::Light) => "auth",
            Some(Level::Auth | Level::Speed) => "speed",
        },
    }
}

/// The event of a test stopped on our side, keeping what it had proven.
fn inconclusive(reason: String, partial: Option<Outcome>) -> Event {
    match partial {
        // A stage that failed is evidence (the pipeline was about to report it).
        Some(o) if o.failure.is_some() => Event::Tested(o),
        Some(o) => Event::Inconclusive {
            reason,
            proven: o.reached,
            measurements: o.measurements,
        },
        None => Event::Inconclusive {
            reason,
            proven: Level::None,
            measurements: Measurements::default(),
        },
    }
}

async fn work(
    inner: Arc<Inner>,
    kind: JobKind,
    node: Option<Node>,
    partial: Arc<Mutex<Option<Outcome>>>,
    budget: Arc<Budget>,
) -> Finish {
    let inner = &*inner;
    let Some(node) = node else {
        return Finish::new(
            ItemState::Failed,
            None,
            Some("node no longer exists".into()),
        );
    };
    tracing::Span::current().record("ip", tracing::field::display(node.ip));
    let mut finish = match kind {
        JobKind::Light => tested(
            inner.prober.probe(&node, ProbeDepth::Light).await,
            Level::Light,
        ),
        JobKind::Auth => tested(
            inner.prober.probe(&node, ProbeDepth::Auth).await,
            Level::Auth,
        ),
        JobKind::Speed => {
            let _slot = budget.wait_for(&inner.speed_slots).await;
            tested(inner.speed.measure(&node).await, Level::Speed)
        }
        JobKind::Pipeline => pipeline(inner, &node, &partial, &budget).await,
        JobKind::ServiceStart => start_service(inner, node.id).await,
        JobKind::ServiceStop => stop_service(inner, node.id).await,
        JobKind::Geo => super::enrich::geo(inner, &node).await,
        JobKind::Fraud => super::enrich::fraud(inner, &node).await,
        // An import job has no items (its own runner reads its spool).
        JobKind::Import => Finish::new(
            ItemState::Failed,
            None,
            Some("an import job has no node items".into()),
        ),
    };
    let proved_a_server = matches!(
        &finish.event,
        Some(Event::Tested(o)) if o.reached >= Level::Light
    );
    if inner.config.geo_after_light && proved_a_server && finish.enrichment.is_none() {
        // The verdict is in: a slow lookup must not run it out of budget.
        finish.enrichment = budget
            .paused(super::enrich::geo_after_test(inner, &node))
            .await;
    }
    finish
}

/// A test result: the node is marked with the outcome; a [`ProbeError`] marks nothing
/// and stops the job (the test cannot run on any node).
fn tested(result: Result<Outcome, ProbeError>, aim: Level) -> Finish {
    match result {
        Ok(o) => {
            let ok = o.failure.is_none() && o.reached >= aim;
            let detail = o.failure.as_ref().map(ToString::to_string);
            let state = if ok { ItemState::Ok } else { ItemState::Failed };
            Finish::new(state, Some(Event::Tested(o)), detail)
        }
        Err(e) => {
            let mut f = Finish::new(
                ItemState::Failed,
                None,
                Some(format!("could not test: {e}")),
            );
            f.fatal = Some(e.to_string());
            f
        }
    }
}

fn reached_its_aim(o: &Outcome, aim: Level) -> bool {
    o.failure.is_none() && o.reached >= aim
}

/// Light, then auth, then speed; stops at the first failure. A later stage that
/// cannot run keeps the furthest real outcome and says why in the detail.
async fn pipeline(
    inner: &Inner,
    node: &Node,
    partial: &Mutex<Option<Outcome>>,
    budget: &Budget,
) -> Finish {
    let light = match inner.prober.probe(node, ProbeDepth::Light).await {
        Ok(o) => o,
        Err(e) => return tested(Err(e), Level::Speed),
    };
    *lock(partial) = Some(light.clone());
    if !reached_its_aim(&light, Level::Light) {
        return tested(Ok(light), Level::Speed);
    }
    let auth = match inner.prober.probe(node, ProbeDepth::Auth).await {
        Ok(o) => o,
        Err(e) => return stage_missing(light, "light", "auth", &e),
    };
    *lock(partial) = Some(auth.clone());
    if !reached_its_aim(&auth, Level::Auth) {
        return tested(Ok(auth), Level::Speed);
    }
    let _slot = budget.wait_for(&inner.speed_slots).await;
    match inner.speed.measure(node).await {
        Ok(o) => tested(Ok(o), Level::Speed),
        Err(e) => stage_missing(auth, "auth", "speed", &e),
    }
}

fn stage_missing(furthest: Outcome, done: &str, missing: &str, e: &ProbeError) -> Finish {
    Finish::new(
        ItemState::Failed,
        Some(Event::Tested(furthest)),
        Some(format!(
            "stopped after the {done} stage: the {missing} stage could not run: {e}"
        )),
    )
}

async fn start_service(inner: &Inner, node: crate::domain::NodeId) -> Finish {
    let guard = inner.busy(node).await;
    let node = match inner.store.get(node).await {
        Ok(Some(n)) => n,
        Ok(None) => {
            return Finish::new(
                ItemState::Failed,
                None,
                Some("node no longer exists".into()),
            );
        }
        Err(e) => return Finish::new(ItemState::Failed, None, Some(format!("store: {e}"))),
    };
    if let Err(refused) = transition::allows(node.status, EventKind::ServiceStarted) {
        return Finish::new(ItemState::Failed, None, Some(refused.to_string()));
    }
    if !node.service_wanted {
        // An explicit start makes the service wanted (the reconciler keeps it up).
        let f = crate::domain::NodeFilter::ids([node.id]);
        if let Err(e) = inner.store.set_service_wanted(&f, true).await {
            return Finish::new(ItemState::Failed, None, Some(format!("store: {e}")));
        }
    }
    // PostgreSQL placement (a registered worker): a service placed on another
    // worker is that worker's to start; its reconciler does.
    if inner.registered.load(std::sync::atomic::Ordering::Relaxed) {
        match inner
            .store
            .place_services(&inner.config.worker, chrono::Utc::now())
            .await
        {
            Ok(Some(mine)) if !mine.contains(&node.id) => {
                let mut f = Finish::new(
                    ItemState::Ok,
                    None,
                    Some("placed on another worker: its reconciler starts it".into()),
                );
                f.guard = Some(guard);
                return f;
            }
            Ok(_) => {}
            Err(e) => return Finish::new(ItemState::Failed, None, Some(format!("store: {e}"))),
        }
    }
    if node.status == Status::Online && inner.launcher.running().await.contains(&node.id) {
        let mut f = Finish::new(ItemState::Ok, None, Some("already running".into()));
        f.guard = Some(guard);
        return f;
    }
    let started = inner.launcher.start(&node, node.service.clone()).await;
    inner.start_attempted(node.id, started.is_ok());
    let mut f = match started {
        Ok(ep) => {
            let detail = format!("service on {}:{}", ep.host, ep.port);
            Finish::new(ItemState::Ok, Some(Event::ServiceStarted(ep)), Some(detail))
        }
        Err(e) => Finish::new(
            ItemState::Failed,
            Some(Event::ServiceStartFailed(e.to_string())),
            Some(e.to_string()),
        ),
    };
    f.guard = Some(guard);
    f
}

async fn stop_service(inner: &Inner, node: crate::domain::NodeId) -> Finish {
    let guard = inner.busy(node).await;
    let last = inner.launcher.counters(node);
    let mut f = match inner.launcher.stop(node).await {
        Ok(()) => {
            super::services::record_stopped(inner, node, last).await;
            Finish::new(ItemState::Ok, Some(Event::ServiceStopped), None)
        }
        Err(ServiceError::NotRunning(_)) => Finish::new(
            ItemState::Ok,
            Some(Event::ServiceStopped),
            Some("was not running".into()),
        ),
        Err(e) => Finish::new(ItemState::Failed, None, Some(e.to_string())),
    };
    f.guard = Some(guard);
    f
}
