//! The service reconciler (desired state `service_wanted` -> running services)
//! and the health monitor (only nodes with a service, only health events).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tracing::Instrument;

use super::{BusyGuard, EngineError, Inner, lock};
use crate::domain::{Event, Node, NodeFilter, NodeId, Status};
use crate::ports::{
    ApplyContext, ApplyRequest, Health, ServiceCounters, ServiceError, StoreError, WorkerRole,
    all_matching,
};

/// What one reconciler pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReconcileReport {
    /// Services started (`ServiceStarted` applied).
    pub started: u64,
    /// Starts that failed (`ServiceStartFailed` applied; the node keeps its status).
    pub start_failed: u64,
    /// Running services stopped because they are no longer wanted.
    pub stopped: u64,
    /// Nodes recorded `online`/`offline` whose service is neither wanted nor
    /// running (e.g. stopped while the process was down): `ServiceStopped` applied.
    pub marked_stopped: u64,
    /// Nodes skipped because a job or the monitor was acting on them.
    pub skipped_busy: u64,
    /// Wanted services not started this pass: their last start failed and the
    /// node's [restart backoff](super::EngineConfig::restart_backoff) has not run out.
    pub deferred: u64,
    /// Running services stopped for a restart request (`connexa service
    /// restart`); each is started again in the same pass, with its stored
    /// port and credentials, and counts in `started` (or `start_failed`).
    pub restarted: u64,
    /// Services stopped here, with no event, because placement gave them to
    /// another worker (this one was presumed dead, or a pin moved them): the
    /// other worker runs them and records their endpoint.
    pub released: u64,
}

/// What one monitor pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MonitorReport {
    /// Nodes with a service that were checked.
    pub checked: u64,
    /// Checks that failed.
    pub unhealthy: u64,
    /// `HealthFailed` events applied (a node reached the failure threshold).
    pub health_failed: u64,
    /// `HealthOk` events applied (an `offline` node recovered, or a failure streak ended).
    pub health_ok: u64,
}

/// Failed starts of one node in a row, and when the reconciler may try again.
#[derive(Debug, Clone, Copy)]
pub(super) struct Backoff {
    failures: u32,
    retry_at: tokio::time::Instant,
}

/// The wait after `failures` failed starts in a row: `base`, doubled for each
/// further failure, at most `max`, and never more than a year (an `Instant`
/// plus `Duration::MAX` would panic).
fn backoff_delay(base: Duration, max: Duration, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(31);
    base.saturating_mul(1u32 << doublings)
        .min(max)
        .min(Duration::from_secs(365 * 86_400))
}

impl Inner {
    /// Records the outcome of a service start (by the reconciler or a job).
    pub(super) fn start_attempted(&self, node: NodeId, ok: bool) {
        let mut backoff = lock(&self.start_backoff);
        if ok {
            backoff.remove(&node);
            return;
        }
        let cfg = &self.config;
        let b = backoff.entry(node).or_insert(Backoff {
            failures: 0,
            retry_at: tokio::time::Instant::now(),
        });
        b.failures = b.failures.saturating_add(1);
        let delay = backoff_delay(cfg.restart_backoff, cfg.restart_backoff_max, b.failures);
        b.retry_at = tokio::time::Instant::now() + delay;
    }

    /// `true` while the node's last start failed and its backoff has not run out.
    fn start_deferred(&self, node: NodeId) -> bool {
        lock(&self.start_backoff)
            .get(&node)
            .is_some_and(|b| tokio::time::Instant::now() < b.retry_at)
    }
}

fn wanted_filter() -> NodeFilter {
    NodeFilter {
        service_wanted: Some(true),
        statuses: Status::VERIFIED.to_vec(),
        ..NodeFilter::all()
    }
}

fn now() -> ApplyContext {
    ApplyContext::now()
}

/// After each heartbeat of a registered worker: a success is remembered; a
/// failure may mean this worker is about to be presumed dead (cut off from
/// the database: its lease runs out) or already replaced (another process
/// holds its name). Either way the services placed on it will be placed on
/// another worker, which starts them — so while it runs placed services, this
/// worker stops them itself, without the store, before its lease can end:
/// when its last good heartbeat is older than the lease less a safety margin
/// (the smaller of one reconciler interval and half the lease), or at once
/// when its name is taken. They come back when a heartbeat gets through and
/// placement gives them to it again.
pub(super) async fn after_heartbeat<T>(inner: &Inner, beat: &Result<T, StoreError>) {
    let now = Instant::now();
    let lost = match beat {
        Ok(_) => {
            *lock(&inner.last_beat) = Some(now);
            return;
        }
        Err(StoreError::WorkerNameTaken { .. }) => true,
        Err(_) => {
            let lease = inner.config.lease;
            let margin = inner.config.reconcile_interval.min(lease / 2);
            lock(&inner.last_beat).is_none_or(|t| now.duration_since(t) + margin >= lease)
        }
    };
    // Only under placement (a registered services worker on PostgreSQL):
    // on SQLite no other worker takes over, so nothing runs twice.
    if !lost || lock(&inner.placed).is_none() {
        return;
    }
    let running = inner.launcher.running().await;
    if running.is_empty() {
        return;
    }
    let why = match beat {
        Err(e) => e.to_string(),
        Ok(_) => String::new(),
    };
    for id in running {
        let Some(_guard) = inner.try_busy(id) else {
            continue; // a job or the monitor acts on it: the next beat tries again
        };
        match inner.launcher.stop(id).await {
            Ok(()) | Err(ServiceError::NotRunning(_)) => tracing::error!(
                node = %id,
                error = %why,
                "heartbeat failing: service stopped here before this worker's lease ends (another worker will take it)"
            ),
            Err(e) => tracing::warn!(node = %id, error = %e, "cannot stop a service while cut off"),
        }
    }
    // Nothing is placed here until a heartbeat gets through again.
    *lock(&inner.placed) = Some(HashSet::new());
}

pub(super) async fn reconcile(inner: &Arc<Inner>) -> Result<ReconcileReport, EngineError> {
    async {
        let store = inner.store.as_ref();
        let launcher = &inner.launcher;
        let mut report = ReconcileReport::default();

        // Placement (a registered services worker on PostgreSQL): the wanted
        // services this worker is to run; `None`: all of them (SQLite, one host).
        let me = inner.config.worker.as_str();
        let mine: Option<HashSet<NodeId>> = if inner
            .registered
            .load(std::sync::atomic::Ordering::Relaxed)
            && inner.config.roles.contains(&WorkerRole::Services)
        {
            // Alive first: a worker resumed after a pause past its lease
            // must not place its services away from itself (to nobody, when
            // it is the only services worker) for want of a heartbeat.
            let beat = store
                .heartbeat(&inner.registration, chrono::Utc::now(), inner.config.lease)
                .await;
            after_heartbeat(inner, &beat).await;
            beat?;
            store
                .place_services(me, chrono::Utc::now())
                .await?
                .map(|v| v.into_iter().collect())
        } else {
            None
        };
        *lock(&inner.placed) = mine.clone();
        let here = |id: &NodeId| mine.as_ref().is_none_or(|m| m.contains(id));

        // Candidates, then their guards (no job or monitor acts on them meanwhile),
        // then a fresh look at both the store and the launcher.
        let wanted = all_matching(store, &wanted_filter()).await?;
        let wanted_ids: HashSet<NodeId> = wanted.iter().map(|n| n.id).collect();
        // Before anything else: a wanted service running here that is placed
        // on another worker (this one was presumed dead while it was paused
        // or cut off, or a pin moved it) stops here. No event: the node's
        // endpoint is the other worker's to record.
        if mine.is_some() {
            for id in launcher.running().await {
                if !wanted_ids.contains(&id) || here(&id) {
                    continue;
                }
                let Some(_guard) = inner.try_busy(id) else {
                    report.skipped_busy += 1;
                    continue;
                };
                match launcher.stop(id).await {
                    Ok(()) | Err(ServiceError::NotRunning(_)) => {
                        tracing::warn!(node = %id, "service placed on another worker: stopped here");
                        report.released += 1;
                    }
                    Err(e) => tracing::warn!(node = %id, error = %e, "cannot stop a service placed elsewhere"),
                }
            }
        }
        // A node no longer wanted forgets its failed starts (unless a job is
        // acting on it: it may have just made it wanted).
        {
            let busy = lock(&inner.busy);
            lock(&inner.start_backoff).retain(|id, _| wanted_ids.contains(id) || busy.contains(id));
        }
        let stale = all_matching(
            store,
            &NodeFilter {
                has_service: Some(true),
                service_wanted: Some(false),
                ..NodeFilter::all()
            },
        )
        .await?;
        let mut candidates: Vec<NodeId> = wanted_ids.iter().copied().filter(here).collect();
        candidates.extend(
            launcher
                .running()
                .await
                .into_iter()
                .filter(|id| !wanted_ids.contains(id)),
        );
        candidates.extend(stale.iter().map(|n| n.id));
        candidates.sort_unstable();
        candidates.dedup();
        let mut guards: HashMap<NodeId, BusyGuard> = HashMap::new();
        for id in candidates {
            match inner.try_busy(id) {
                Some(g) => {
                    guards.insert(id, g);
                }
                None => report.skipped_busy += 1,
            }
        }
        let wanted_all: HashMap<NodeId, Node> = all_matching(store, &wanted_filter())
            .await?
            .into_iter()
            .filter(|n| guards.contains_key(&n.id))
            .map(|n| (n.id, n))
            .collect();
        // The wanted services this process runs.
        let wanted: HashMap<NodeId, Node> = wanted_all
            .iter()
            .filter(|(id, _)| here(id))
            .map(|(id, n)| (*id, n.clone()))
            .collect();
        let mut running: HashSet<NodeId> = launcher.running().await.into_iter().collect();

        // Restart requests (`connexa service restart`) of nodes guarded here: a
        // wanted service running here is stopped now, and started again below
        // like any wanted service that does not run (its stored endpoint first:
        // same port, same credentials).
        let restarts: Vec<(NodeId, chrono::DateTime<chrono::Utc>)> = store
            .service_runtime(&[])
            .await?
            .into_iter()
            .filter_map(|r| r.restart_requested_at.map(|t| (r.node, t)))
            .filter(|(id, _)| guards.contains_key(id))
            .collect();
        let mut final_counters: Vec<(NodeId, ServiceCounters)> = Vec::new();
        // The requests this process settles: a service it stopped for the
        // restart or started afresh, or a node no longer wanted (nothing to
        // restart). A service running in another process (which this pass
        // neither stopped nor started) keeps its request for that process; a
        // stop that failed keeps it for the next pass.
        let mut settled: Vec<(NodeId, chrono::DateTime<chrono::Utc>)> = restarts
            .iter()
            .filter(|(id, _)| !wanted_all.contains_key(id))
            .copied()
            .collect();
        for (id, at) in &restarts {
            if !(running.contains(id) && wanted.contains_key(id)) {
                continue;
            }
            let last = launcher.counters(*id);
            match launcher.stop(*id).await {
                Ok(()) | Err(ServiceError::NotRunning(_)) => {
                    tracing::info!(node = %id, "service stopped for a restart");
                    running.remove(id);
                    report.restarted += 1;
                    // A restart asked for is carried out now, not after a backoff.
                    lock(&inner.start_backoff).remove(id);
                    final_counters.extend(last.map(|c| (*id, stopped(c))));
                    settled.push((*id, *at));
                }
                Err(e) => {
                    tracing::warn!(node = %id, error = %e, "cannot stop service for a restart")
                }
            }
        }

        // Start what is wanted and not running (after a restart: all of them, with
        // their stored port and credentials).
        // Nodes with a stored endpoint first, so that a fresh service never takes
        // a port another node's stored endpoint names before that node restarts.
        let (stored, fresh): (Vec<Node>, Vec<Node>) = wanted
            .values()
            .filter(|n| !running.contains(&n.id))
            .filter(|n| {
                let deferred = inner.start_deferred(n.id);
                report.deferred += u64::from(deferred);
                !deferred
            })
            .cloned()
            .partition(|n| n.service.is_some());
        let timeout = inner.config.node_timeout;
        let mut events: Vec<Option<ApplyRequest>> = Vec::new();
        for starts in [stored, fresh] {
            if starts.is_empty() {
                continue;
            }
            let batch: Vec<Option<ApplyRequest>> = futures::stream::iter(starts)
                .map(|node| {
                    let launcher = Arc::clone(launcher);
                    let inner = Arc::clone(inner);
                    let span = tracing::info_span!("node", id = %node.id, ip = %node.ip);
                    async move {
                        let id = node.id;
                        let task = tokio::spawn(
                            async move {
                                let previous = node.service.clone();
                                match tokio::time::timeout(timeout, launcher.start(&node, previous))
                                    .await
                                {
                                    Ok(Ok(ep)) => Event::ServiceStarted(ep),
                                    Ok(Err(e)) => Event::ServiceStartFailed(e.to_string()),
                                    Err(_) => Event::ServiceStartFailed(format!(
                                        "service start timed out after {timeout:?}"
                                    )),
                                }
                            }
                            .instrument(span),
                        );
                        match task.await {
                            Ok(event) => Some(ApplyRequest {
                                node: id,
                                event,
                                ctx: now(),
                            }),
                            Err(e) => {
                                // Our bug, not the node's: no event, but no
                                // retry on every pass either.
                                tracing::error!(node = %id, error = %e, "service start crashed");
                                inner.start_attempted(id, false);
                                None
                            }
                        }
                    }
                })
                .buffer_unordered(inner.config.service_concurrency.max(1))
                .collect()
                .await;
            events.extend(batch);
        }
        let mut requests: Vec<ApplyRequest> = events.into_iter().flatten().collect();
        // Fencing: a service started here whose placement moved meanwhile
        // (this worker was presumed dead during the pass) is stopped again and
        // its endpoint not recorded.
        if mine.is_some() && requests.iter().any(|r| matches!(r.event, Event::ServiceStarted(_))) {
            let still: HashSet<NodeId> = store
                .service_placements()
                .await?
                .into_iter()
                .filter(|p| p.worker.as_deref() == Some(me))
                .map(|p| p.node)
                .collect();
            let mut kept = Vec::with_capacity(requests.len());
            for r in requests {
                if matches!(r.event, Event::ServiceStarted(_)) && !still.contains(&r.node) {
                    tracing::warn!(node = %r.node, "service placed elsewhere during the start: stopped here");
                    let _ = launcher.stop(r.node).await;
                    report.released += 1;
                    continue;
                }
                kept.push(r);
            }
            requests = kept;
        }
        for r in &requests {
            let ok = matches!(r.event, Event::ServiceStarted(_));
            inner.start_attempted(r.node, ok);
            if ok {
                report.started += 1;
                // A service this pass started afresh is restarted: its request
                // is done (if it was stopped here, it is settled already).
                for (id, at) in &restarts {
                    if *id == r.node && !settled.iter().any(|(s, _)| s == id) {
                        settled.push((*id, *at));
                    }
                }
            } else {
                report.start_failed += 1;
            }
        }

        // Stop what runs and is no longer wanted.
        for id in running
            .iter()
            .filter(|id| guards.contains_key(id) && !wanted_all.contains_key(id))
        {
            let last = launcher.counters(*id);
            match launcher.stop(*id).await {
                Ok(()) | Err(ServiceError::NotRunning(_)) => {
                    report.stopped += 1;
                    final_counters.extend(last.map(|c| (*id, stopped(c))));
                    requests.push(ApplyRequest {
                        node: *id,
                        event: Event::ServiceStopped,
                        ctx: now(),
                    });
                }
                Err(e) => tracing::warn!(node = %id, error = %e, "cannot stop service"),
            }
        }
        // Record as stopped what the store says serves but nothing runs nor is wanted.
        for n in &stale {
            if guards.contains_key(&n.id)
                && !running.contains(&n.id)
                && !wanted_all.contains_key(&n.id)
            {
                report.marked_stopped += 1;
                requests.push(ApplyRequest {
                    node: n.id,
                    event: Event::ServiceStopped,
                    ctx: now(),
                });
            }
        }
        if !requests.is_empty() {
            for (r, res) in requests
                .iter()
                .zip(store.apply_many(requests.clone()).await?)
            {
                if let Err(e) = res {
                    tracing::debug!(node = %r.node, error = %e, "reconcile event not applied");
                }
            }
        }
        // The restart requests settled here are done (a newer request stays).
        for (id, at) in settled {
            if let Err(e) = store.finish_service_restart(id, at).await {
                tracing::warn!(node = %id, error = %e, "cannot clear the restart request");
            }
        }
        flush_counters(inner, final_counters).await;
        drop(guards);
        write_proxies_file(inner).await;
        if report != ReconcileReport::default() {
            tracing::info!(?report, "reconciled services");
        }
        Ok(report)
    }
    .instrument(tracing::info_span!("reconcile"))
    .await
}

pub(super) async fn monitor(inner: &Arc<Inner>) -> Result<MonitorReport, EngineError> {
    async {
        let store = inner.store.as_ref();
        let nodes = all_matching(
            store,
            &NodeFilter {
                has_service: Some(true),
                ..NodeFilter::all()
            },
        )
        .await?;
        // With placement, only the services placed here (or still running
        // here): another worker's service is that worker's to check.
        let placed = lock(&inner.placed).clone();
        let nodes: Vec<Node> = match placed {
            None => nodes,
            Some(placed) => {
                let running: HashSet<NodeId> = inner.launcher.running().await.into_iter().collect();
                nodes
                    .into_iter()
                    .filter(|n| placed.contains(&n.id) || running.contains(&n.id))
                    .collect()
            }
        };
        let mut report = MonitorReport::default();
        let mut guarded = Vec::with_capacity(nodes.len());
        for n in nodes {
            if let Some(g) = inner.try_busy(n.id) {
                guarded.push((n, g));
            }
        }
        let timeout = inner.config.node_timeout;
        let checks: Vec<(Node, Option<Health>, BusyGuard)> = futures::stream::iter(guarded)
            .map(|(node, guard)| {
                let launcher = Arc::clone(&inner.launcher);
                async move {
                    let n = node.clone();
                    let task = tokio::spawn(async move {
                        match tokio::time::timeout(timeout, launcher.health(&n)).await {
                            Ok(h) => h,
                            Err(_) => {
                                Health::Unhealthy(format!("health check timed out after {timeout:?}"))
                            }
                        }
                    });
                    let health = match task.await {
                        Ok(h) => Some(h),
                        Err(e) => {
                            // Our bug, not the node's: no verdict.
                            tracing::error!(node = %node.id, error = %e, "health check crashed");
                            None
                        }
                    };
                    (node, health, guard)
                }
            })
            .buffer_unordered(inner.config.service_concurrency.max(1))
            .collect()
            .await;

        let threshold = inner.config.health_threshold.max(1);
        let mut requests = Vec::new();
        {
            let mut failures = lock(&inner.health_failures);
            let seen: HashSet<NodeId> = checks.iter().map(|(n, _, _)| n.id).collect();
            failures.retain(|id, _| seen.contains(id) || lock(&inner.busy).contains(id));
            for (node, health, _) in &checks {
                let Some(health) = health else { continue };
                report.checked += 1;
                match health {
                    Health::Healthy => {
                        failures.remove(&node.id);
                        if node.status == Status::Offline || node.consecutive_failures > 0 {
                            report.health_ok += 1;
                            requests.push(ApplyRequest {
                                node: node.id,
                                event: Event::HealthOk,
                                ctx: now(),
                            });
                        }
                    }
                    Health::Unhealthy(why) => {
                        report.unhealthy += 1;
                        let streak = failures.entry(node.id).or_insert(0);
                        *streak = streak.saturating_add(1);
                        tracing::debug!(node = %node.id, streak = *streak, reason = %why, "unhealthy");
                        if *streak >= threshold && node.status == Status::Online {
                            report.health_failed += 1;
                            requests.push(ApplyRequest {
                                node: node.id,
                                event: Event::HealthFailed(why.clone()),
                                ctx: now(),
                            });
                        }
                    }
                }
            }
        }
        if !requests.is_empty() {
            store.apply_many(requests).await?;
        }
        drop(checks);
        flush_counters(inner, Vec::new()).await;
        Ok(report)
    }
    .instrument(tracing::info_span!("monitor"))
    .await
}

/// The last counters of a service that was just stopped.
fn stopped(mut c: ServiceCounters) -> ServiceCounters {
    c.connections = 0;
    c
}

/// Records the counters of the services running here (and `extra`: the last
/// ones of services just stopped) in the store, for the processes that show
/// them (`connexa service list`, another connexa-http). A failure is logged:
/// counters are not worth failing a pass for.
async fn flush_counters(inner: &Inner, extra: Vec<(NodeId, ServiceCounters)>) {
    let mut all = extra;
    for id in inner.launcher.running().await {
        if let Some(c) = inner.launcher.counters(id) {
            all.push((id, c));
        }
    }
    if all.is_empty() {
        return;
    }
    if let Err(e) = inner
        .store
        .put_service_counters(all, chrono::Utc::now())
        .await
    {
        tracing::warn!(error = %e, "cannot record service counters");
    }
}

/// Records the last counters of a service a job just stopped (`last`: read
/// before the stop).
pub(super) async fn record_stopped(inner: &Inner, node: NodeId, last: Option<ServiceCounters>) {
    let Some(c) = last else { return };
    if let Err(e) = inner
        .store
        .put_service_counters(vec![(node, stopped(c))], chrono::Utc::now())
        .await
    {
        tracing::warn!(%node, error = %e, "cannot record the last service counters");
    }
}

/// Records the last counters of every service running here, with no
/// connection open (for a process about to stop them all).
pub(super) async fn flush_final_counters(inner: &Inner) {
    let mut all = Vec::new();
    for id in inner.launcher.running().await {
        if let Some(c) = inner.launcher.counters(id) {
            all.push((id, stopped(c)));
        }
    }
    if all.is_empty() {
        return;
    }
    if let Err(e) = inner
        .store
        .put_service_counters(all, chrono::Utc::now())
        .await
    {
        tracing::warn!(error = %e, "cannot record the last service counters");
    }
}

/// The proxies file's text: `host:port:user:pass` per service running here
/// (endpoints as stored), in node id order.
async fn proxies_text(inner: &Inner) -> Result<String, EngineError> {
    let here: HashSet<NodeId> = inner.launcher.running().await.into_iter().collect();
    if here.is_empty() {
        return Ok(String::new());
    }
    let mut nodes = all_matching(
        inner.store.as_ref(),
        &NodeFilter {
            has_service: Some(true),
            ..NodeFilter::all()
        },
    )
    .await?;
    nodes.sort_by_key(|n| n.id);
    let mut text = String::new();
    // SOCKS5 services only: a `tun` service has no listener to list.
    for n in nodes
        .iter()
        .filter(|n| here.contains(&n.id) && n.service_kind == crate::domain::ServiceKind::Socks)
    {
        // The running endpoint's own kind decides, not the wanted one: while
        // a service switches kind, the stored endpoint may still be the old
        // one (an openvpn endpoint carries the client's key).
        if let Some(s) = n
            .service
            .as_ref()
            .filter(|s| s.kind() == crate::domain::ServiceKind::Socks)
        {
            text.push_str(&format!(
                "{}:{}:{}:{}\n",
                s.host,
                s.port,
                s.username,
                s.password.expose()
            ));
        }
    }
    Ok(text)
}

/// Writes the proxies file ([`EngineConfig::proxies_file`](super::EngineConfig::proxies_file))
/// when its text changed since the last write.
pub(super) async fn write_proxies_file(inner: &Inner) {
    let Some(path) = inner.config.proxies_file.clone() else {
        return;
    };
    // Only a long-running process ([`Engine::run`](super::Engine::run)) owns
    // the file: a one-pass process (`connexa run --once`) would replace the
    // running process's list with its own.
    if !inner
        .owns_proxies_file
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        return;
    }
    let text = match proxies_text(inner).await {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the running services for the proxies file");
            return;
        }
    };
    if lock(&inner.proxies_written).as_deref() == Some(text.as_str()) {
        return;
    }
    let bytes = text.clone().into_bytes();
    let target = path.clone();
    let r = tokio::task::spawn_blocking(move || write_atomically(&target, &bytes)).await;
    match r {
        Ok(Ok(())) => {
            tracing::info!(path = %path.display(), services = text.lines().count(), "proxies file written");
            *lock(&inner.proxies_written) = Some(text);
        }
        Ok(Err(e)) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the proxies file");
            *lock(&inner.proxies_written) = None;
        }
        Err(e) => tracing::error!(error = %e, "proxies file writer crashed"),
    }
}

/// Replaces `path` with `bytes` atomically: a temporary file in the same
/// directory (mode 0600), fsync, rename, fsync of the directory. A reader
/// sees the old file or the new one, never a part.
pub(crate) fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other(format!("{} names no file", path.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    // A fresh, unpredictable name created exclusively: a file or symlink
    // planted in a shared directory is never opened.
    tmp_name.push(format!(
        ".tmp{}.{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        #[cfg(unix)]
        {
            // An existing temporary file keeps its mode: set it.
            use std::os::unix::fs::PermissionsExt as _;
            f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_the_file_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxies.txt");
        std::fs::write(&path, "old\n").unwrap();
        write_atomically(&path, b"a:1:u:p\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a:1:u:p\n");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file is left behind");
        let missing = dir.path().join("no-such-dir").join("p.txt");
        assert!(write_atomically(&missing, b"x").is_err());
    }

    #[test]
    fn backoff_doubles_from_the_base_up_to_the_max() {
        let s = Duration::from_secs;
        let waits: Vec<Duration> = (1..=7).map(|n| backoff_delay(s(30), s(600), n)).collect();
        assert_eq!(
            waits,
            [s(30), s(60), s(120), s(240), s(480), s(600), s(600)]
        );
        assert_eq!(
            backoff_delay(s(30), s(600), u32::MAX),
            s(600),
            "no overflow"
        );
        assert_eq!(backoff_delay(Duration::ZERO, s(600), 9), Duration::ZERO);
        // Without a maximum, a year at most.
        assert_eq!(backoff_delay(s(86_400), Duration::MAX, 40), s(365 * 86_400));
    }
}
