//! Test support shared by the engine fault tests: [`FaultStore`], a
//! [`NodeStore`] wrapper that injects failures and delays into chosen methods.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use connexa_core::domain::{Event, NewNode, Node, NodeFilter, NodeId, NodeMeta, Page, Status};
use connexa_core::ports::*;

/// The methods a [`FaultStore`] can disturb (the ones the job runner calls).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// [`NodeStore::claim_items`].
    Claim,
    /// [`NodeStore::list`] (the runner reads the claimed nodes with it).
    List,
    /// [`NodeStore::finish_items`] (group commits and expiries).
    Finish,
    /// [`NodeStore::progress`].
    Progress,
    /// [`NodeStore::job`].
    Job,
    /// [`NodeStore::set_job_state`].
    SetJobState,
    /// [`NodeStore::heartbeat`].
    Heartbeat,
    /// [`NodeStore::import_batch`].
    ImportBatch,
}

/// What happens to a disturbed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Fails before touching the database, with the error a busy SQLite or a
    /// PostgreSQL serialization failure gives (`StoreError::Backend`); the
    /// runner retries it.
    Transient,
    /// Runs the call on the real store (its transaction commits) and then
    /// reports a failure, as a connection lost before the commit's
    /// acknowledgement does: a retry must not apply the results twice.
    AfterCommit,
    /// Waits this long, then runs the call.
    Delay(Duration),
}

#[derive(Debug, Clone, Copy)]
struct Rule {
    /// Calls to let through untouched first.
    skip: u64,
    /// Calls to disturb after that (`u64::MAX`: every call, a permanent fault).
    times: u64,
    fault: Fault,
}

/// A [`NodeStore`] over a real one that fails or delays chosen calls. Every
/// call is counted (disturbed or not), so tests can assert how often the
/// engine retried.
pub struct FaultStore {
    inner: Arc<dyn NodeStore>,
    rules: Mutex<HashMap<Method, Rule>>,
    calls: Mutex<HashMap<Method, u64>>,
    injected: Mutex<HashMap<Method, u64>>,
    /// `max` of every claim, in order.
    claims: Mutex<Vec<u64>>,
    /// `(max, items claimed)` of every claim that succeeded, in order.
    claimed: Mutex<Vec<(u64, usize)>>,
    /// Number of results of every commit (`finish_items`), in order.
    commits: Mutex<Vec<usize>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl FaultStore {
    /// Wraps `inner`; nothing is disturbed until a rule is set.
    pub fn new(inner: Arc<dyn NodeStore>) -> Arc<Self> {
        Arc::new(FaultStore {
            inner,
            rules: Mutex::new(HashMap::new()),
            calls: Mutex::new(HashMap::new()),
            injected: Mutex::new(HashMap::new()),
            claims: Mutex::new(Vec::new()),
            claimed: Mutex::new(Vec::new()),
            commits: Mutex::new(Vec::new()),
        })
    }

    /// Disturbs the next `n` calls of `m` with `fault` (replaces any rule of `m`).
    pub fn next(&self, m: Method, n: u64, fault: Fault) {
        self.after(m, 0, n, fault);
    }

    /// Lets `skip` calls of `m` through, then disturbs the next `n` with `fault`.
    pub fn after(&self, m: Method, skip: u64, n: u64, fault: Fault) {
        lock(&self.rules).insert(
            m,
            Rule {
                skip,
                times: n,
                fault,
            },
        );
    }

    /// Every call of `m` from now on fails (a store that stays broken).
    pub fn always(&self, m: Method) {
        self.next(m, u64::MAX, Fault::Transient);
    }

    /// Removes the rule of `m`.
    pub fn heal(&self, m: Method) {
        lock(&self.rules).remove(&m);
    }

    /// Calls of `m` so far (disturbed ones included).
    pub fn calls(&self, m: Method) -> u64 {
        lock(&self.calls).get(&m).copied().unwrap_or(0)
    }

    /// Calls of `m` that were disturbed so far.
    pub fn injected(&self, m: Method) -> u64 {
        lock(&self.injected).get(&m).copied().unwrap_or(0)
    }

    /// The `max` asked by every claim so far, in order.
    pub fn claim_sizes(&self) -> Vec<u64> {
        lock(&self.claims).clone()
    }

    /// `(max, items claimed)` of every claim that succeeded so far, in order.
    pub fn claimed(&self) -> Vec<(u64, usize)> {
        lock(&self.claimed).clone()
    }

    /// The number of results of every commit so far, in order.
    pub fn commit_sizes(&self) -> Vec<usize> {
        lock(&self.commits).clone()
    }

    /// Counts the call and says what to do with it.
    fn fault(&self, m: Method) -> Option<Fault> {
        *lock(&self.calls).entry(m).or_insert(0) += 1;
        let mut rules = lock(&self.rules);
        let rule = rules.get_mut(&m)?;
        if rule.skip > 0 {
            rule.skip -= 1;
            return None;
        }
        if rule.times == 0 {
            return None;
        }
        if rule.times != u64::MAX {
            rule.times -= 1;
        }
        *lock(&self.injected).entry(m).or_insert(0) += 1;
        Some(rule.fault)
    }

    async fn call<T, Fut>(&self, m: Method, f: Fut) -> Result<T, StoreError>
    where
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        match self.fault(m) {
            None => f.await,
            Some(Fault::Transient) => Err(StoreError::Backend(format!(
                "injected {m:?} failure: database is locked"
            ))),
            Some(Fault::AfterCommit) => {
                f.await?;
                Err(StoreError::Backend(format!(
                    "injected {m:?} failure after commit: connection reset"
                )))
            }
            Some(Fault::Delay(d)) => {
                tokio::time::sleep(d).await;
                f.await
            }
        }
    }
}

#[async_trait]
impl NodeStore for FaultStore {
    async fn service_runtime(
        &self,
        nodes: &[NodeId],
    ) -> Result<Vec<connexa_core::ports::ServiceRuntime>, StoreError> {
        self.inner.service_runtime(nodes).await
    }

    async fn put_service_counters(
        &self,
        counters: Vec<(NodeId, connexa_core::ports::ServiceCounters)>,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), StoreError> {
        self.inner.put_service_counters(counters, at).await
    }

    async fn request_service_restart(
        &self,
        nodes: &[NodeId],
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), StoreError> {
        self.inner.request_service_restart(nodes, at).await
    }

    async fn finish_service_restart(
        &self,
        node: NodeId,
        requested_at: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, StoreError> {
        self.inner.finish_service_restart(node, requested_at).await
    }

    async fn apply(
        &self,
        node: NodeId,
        event: Event,
        ctx: ApplyContext,
    ) -> Result<Applied, StoreError> {
        self.inner.apply(node, event, ctx).await
    }

    async fn apply_many(
        &self,
        requests: Vec<ApplyRequest>,
    ) -> Result<Vec<Result<Applied, StoreError>>, StoreError> {
        self.inner.apply_many(requests).await
    }

    async fn get(&self, node: NodeId) -> Result<Option<Node>, StoreError> {
        self.inner.get(node).await
    }

    async fn list(&self, filter: &NodeFilter, page: Page) -> Result<NodePage, StoreError> {
        self.call(Method::List, self.inner.list(filter, page)).await
    }

    async fn list_page(&self, filter: &NodeFilter, page: Page) -> Result<Vec<Node>, StoreError> {
        self.inner.list_page(filter, page).await
    }

    async fn insert(&self, nodes: Vec<NewNode>) -> Result<Vec<InsertOutcome>, StoreError> {
        self.inner.insert(nodes).await
    }

    async fn replace(&self, pairs: Vec<(NodeId, NewNode)>) -> Result<Vec<NodeId>, StoreError> {
        self.inner.replace(pairs).await
    }

    async fn delete(&self, filter: &NodeFilter) -> Result<u64, StoreError> {
        self.inner.delete(filter).await
    }

    async fn update_meta(&self, node: NodeId, meta: NodeMeta) -> Result<(), StoreError> {
        self.inner.update_meta(node, meta).await
    }

    async fn set_service_wanted(
        &self,
        filter: &NodeFilter,
        wanted: bool,
    ) -> Result<u64, StoreError> {
        self.inner.set_service_wanted(filter, wanted).await
    }

    async fn set_service_kind(
        &self,
        filter: &NodeFilter,
        kind: connexa_core::domain::ServiceKind,
    ) -> Result<u64, StoreError> {
        self.inner.set_service_kind(filter, kind).await
    }

    async fn history(&self, node: NodeId) -> Result<Vec<HistoryRow>, StoreError> {
        self.inner.history(node).await
    }

    async fn counts(&self) -> Result<Vec<(Status, u64)>, StoreError> {
        self.inner.counts().await
    }

    async fn field_values(
        &self,
        field: connexa_core::ports::ValueField,
        prefix: Option<String>,
        limit: u64,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        self.inner.field_values(field, prefix, limit).await
    }

    async fn enrich(
        &self,
        updates: Vec<(NodeId, connexa_core::domain::EnrichmentUpdate)>,
    ) -> Result<u64, StoreError> {
        self.inner.enrich(updates).await
    }

    async fn cache_get(
        &self,
        provider: &str,
        key: &str,
        since: DateTime<Utc>,
    ) -> Result<Option<String>, StoreError> {
        self.inner.cache_get(provider, key, since).await
    }

    async fn cache_put(
        &self,
        provider: &str,
        key: &str,
        value: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.inner.cache_put(provider, key, value, at).await
    }

    async fn create_job(&self, spec: JobSpec, at: DateTime<Utc>) -> Result<Job, StoreError> {
        self.inner.create_job(spec, at).await
    }

    async fn job(&self, job: JobId) -> Result<Job, StoreError> {
        self.call(Method::Job, self.inner.job(job)).await
    }

    async fn jobs(&self, limit: u64) -> Result<Vec<Job>, StoreError> {
        self.inner.jobs(limit).await
    }

    async fn unfinished_jobs(&self) -> Result<Vec<Job>, StoreError> {
        self.inner.unfinished_jobs().await
    }

    async fn set_job_state(
        &self,
        job: JobId,
        state: JobState,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.call(
            Method::SetJobState,
            self.inner.set_job_state(job, state, at),
        )
        .await
    }

    async fn claim_items(
        &self,
        job: JobId,
        worker: &str,
        max: u64,
        at: DateTime<Utc>,
        lease: Duration,
    ) -> Result<Vec<ClaimedItem>, StoreError> {
        lock(&self.claims).push(max);
        let got = self
            .call(
                Method::Claim,
                self.inner.claim_items(job, worker, max, at, lease),
            )
            .await?;
        lock(&self.claimed).push((max, got.len()));
        Ok(got)
    }

    async fn finish_items(
        &self,
        results: Vec<ItemResult>,
    ) -> Result<Vec<ItemFinished>, StoreError> {
        lock(&self.commits).push(results.len());
        self.call(Method::Finish, self.inner.finish_items(results))
            .await
    }

    async fn cancel_pending(&self, job: JobId, at: DateTime<Utc>) -> Result<u64, StoreError> {
        self.inner.cancel_pending(job, at).await
    }

    async fn requeue_running(&self, job: JobId) -> Result<u64, StoreError> {
        self.inner.requeue_running(job).await
    }

    async fn requeue_orphans(
        &self,
        job: JobId,
        me: &str,
        at: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        self.inner.requeue_orphans(job, me, at).await
    }

    async fn claimable(&self, job: JobId, at: DateTime<Utc>) -> Result<u64, StoreError> {
        self.inner.claimable(job, at).await
    }

    async fn register_worker(
        &self,
        worker: &WorkerRegistration,
        at: DateTime<Utc>,
        lease: Duration,
    ) -> Result<(), StoreError> {
        self.inner.register_worker(worker, at, lease).await
    }

    async fn heartbeat(
        &self,
        worker: &WorkerRegistration,
        at: DateTime<Utc>,
        lease: Duration,
    ) -> Result<u64, StoreError> {
        self.call(Method::Heartbeat, self.inner.heartbeat(worker, at, lease))
            .await
    }

    async fn extend_leases(
        &self,
        worker: &str,
        at: DateTime<Utc>,
        lease: Duration,
    ) -> Result<u64, StoreError> {
        self.inner.extend_leases(worker, at, lease).await
    }

    async fn deregister_worker(&self, name: &str) -> Result<bool, StoreError> {
        self.inner.deregister_worker(name).await
    }

    async fn workers(&self, at: DateTime<Utc>) -> Result<Vec<WorkerView>, StoreError> {
        self.inner.workers(at).await
    }

    async fn place_services(
        &self,
        worker: &str,
        at: DateTime<Utc>,
    ) -> Result<Option<Vec<NodeId>>, StoreError> {
        self.inner.place_services(worker, at).await
    }

    async fn pin_services(
        &self,
        nodes: &[NodeId],
        worker: Option<String>,
    ) -> Result<u64, StoreError> {
        self.inner.pin_services(nodes, worker).await
    }

    async fn label_services(
        &self,
        nodes: &[NodeId],
        label: Option<String>,
    ) -> Result<u64, StoreError> {
        self.inner.label_services(nodes, label).await
    }

    async fn service_placements(&self) -> Result<Vec<ServicePlacement>, StoreError> {
        self.inner.service_placements().await
    }

    async fn progress(&self, job: JobId) -> Result<Progress, StoreError> {
        self.call(Method::Progress, self.inner.progress(job)).await
    }

    async fn recent_items(&self, job: JobId, limit: u64) -> Result<Vec<ItemView>, StoreError> {
        self.inner.recent_items(job, limit).await
    }

    async fn items_since(
        &self,
        job: JobId,
        cursor: ItemCursor,
        limit: u64,
    ) -> Result<Vec<CommittedItem>, StoreError> {
        self.inner.items_since(job, cursor, limit).await
    }

    async fn create_import(&self, spec: &ImportSpec, at: DateTime<Utc>) -> Result<Job, StoreError> {
        self.inner.create_import(spec, at).await
    }

    async fn import_run(&self, job: JobId) -> Result<ImportRun, StoreError> {
        self.inner.import_run(job).await
    }

    async fn claim_import(
        &self,
        job: JobId,
        worker: &str,
        at: DateTime<Utc>,
        lease: Duration,
    ) -> Result<Option<ImportRun>, StoreError> {
        self.inner.claim_import(job, worker, at, lease).await
    }

    async fn import_batch(
        &self,
        job: JobId,
        worker: &str,
        at: DateTime<Utc>,
        lease: Duration,
        batch: ImportBatch,
    ) -> Result<bool, StoreError> {
        self.call(
            Method::ImportBatch,
            self.inner.import_batch(job, worker, at, lease, batch),
        )
        .await
    }

    async fn import_parts(&self, job: JobId) -> Result<Vec<serde_json::Value>, StoreError> {
        self.inner.import_parts(job).await
    }

    async fn end_import(
        &self,
        job: JobId,
        worker: &str,
        state: JobState,
        test_job: Option<JobId>,
        error: Option<String>,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.inner
            .end_import(job, worker, state, test_job, error, at)
            .await
    }

    async fn release_import(&self, job: JobId, worker: &str) -> Result<(), StoreError> {
        self.inner.release_import(job, worker).await
    }
}
