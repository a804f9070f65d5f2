//! The ports: the traits the engine is generic over. Frontends and tests plug in
//! implementations as `Arc<dyn Trait>`.
//!
//! With the `mocks` feature (and in this crate's own tests) each trait has a
//! mockall mock: `MockNodeStore`, `MockProber`, `MockSpeedTester`, `MockServiceLauncher`.

pub mod acting;

use std::fmt;
use std::net::IpAddr;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::{
    EnrichmentUpdate, Event, EventKind, Failure, GeoFacts, InvalidNode, Level, NewNode, Node,
    NodeFilter, NodeId, NodeMeta, Outcome, Page, PageError, Refused, Risk, SelectionError,
    ServiceEndpoint, Status,
};

mod walk;

pub use walk::{NodeWalk, all_matching};

/// The job model, at home in [`domain`](crate::domain) and re-exported here
/// where it used to be.
pub use crate::domain::{
    ImportCheckpoint, ImportRun, ImportSpec, ItemId, ItemState, ItemView, Job, JobId, JobKind,
    JobSpec, JobState, OnConflict, Progress,
};

/// Who applies an event, and when. The store records both in `status_history`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApplyContext {
    /// The job the event belongs to, if any.
    pub job: Option<JobId>,
    /// When the event happened (the caller's clock; the domain never reads one).
    pub at: DateTime<Utc>,
}

impl ApplyContext {
    /// An event outside any job, happening now.
    pub fn now() -> Self {
        ApplyContext {
            job: None,
            at: Utc::now(),
        }
    }
}

/// What [`NodeStore::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// The node.
    pub node: NodeId,
    /// Status before.
    pub from: Status,
    /// Status after (equal to `from` when the table says `=`).
    pub to: Status,
}

/// What a `status_history` row records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HistoryEvent {
    /// An event went through `apply`.
    Applied(EventKind),
    /// The node was deleted (`to` is `None`).
    Deleted,
}

impl HistoryEvent {
    /// The stored name (`tested`, `service_started`, ..., `deleted`).
    pub fn as_str(self) -> &'static str {
        match self {
            HistoryEvent::Applied(kind) => kind.as_str(),
            HistoryEvent::Deleted => "deleted",
        }
    }
}

/// One row of a node's status history.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryRow {
    /// The node.
    pub node: NodeId,
    /// Status before.
    pub from: Status,
    /// Status after (`None` for a deletion).
    pub to: Option<Status>,
    /// What happened.
    pub event: HistoryEvent,
    /// For test results: the level reached.
    pub reached: Option<Level>,
    /// The failure, if the event reported one.
    pub failure: Option<Failure>,
    /// Why, in words.
    pub detail: Option<String>,
    /// The job, if any.
    pub job: Option<JobId>,
    /// When.
    pub at: DateTime<Utc>,
}

impl HistoryRow {
    /// Rebuilds an event equivalent to the one recorded (same table column), so a
    /// history can be replayed through [`transition`](fn@crate::domain::transition).
    /// `None` for deletions.
    pub fn replay_event(&self) -> Option<Event> {
        let reason = || self.detail.clone().unwrap_or_default();
        Some(match self.event {
            HistoryEvent::Deleted => return None,
            HistoryEvent::Applied(EventKind::Tested) => Event::Tested(Outcome {
                reached: self.reached.unwrap_or(Level::None),
                failure: self.failure.clone(),
                measurements: Default::default(),
            }),
            HistoryEvent::Applied(EventKind::ServiceStarted) => {
                Event::ServiceStarted(ServiceEndpoint {
                    host: String::new(),
                    port: 0,
                    username: String::new(),
                    password: Default::default(),
                })
            }
            HistoryEvent::Applied(EventKind::ServiceStartFailed) => {
                Event::ServiceStartFailed(reason())
            }
            HistoryEvent::Applied(EventKind::ServiceStopped) => Event::ServiceStopped,
            HistoryEvent::Applied(EventKind::HealthOk) => Event::HealthOk,
            HistoryEvent::Applied(EventKind::HealthFailed) => Event::HealthFailed(reason()),
            HistoryEvent::Applied(EventKind::Inconclusive) => Event::Inconclusive {
                reason: reason(),
                proven: self.reached.unwrap_or(Level::None),
                measurements: Default::default(),
            },
        })
    }
}

/// One event for [`NodeStore::apply_many`].
#[derive(Debug, Clone, PartialEq)]
pub struct ApplyRequest {
    /// The node.
    pub node: NodeId,
    /// What happened.
    pub event: Event,
    /// Job and time.
    pub ctx: ApplyContext,
}

/// A page of nodes plus the total number matching the filter.
#[derive(Debug, Clone, PartialEq)]
pub struct NodePage {
    /// The rows of this page.
    pub nodes: Vec<Node>,
    /// How many nodes match the filter in all.
    pub total: u64,
}

/// What happened to one row of a bulk insert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertOutcome {
    /// Added with this id.
    Inserted(NodeId),
    /// The same ip, port, login and password is already stored.
    Duplicate(NodeId),
    /// The same ip, port and login is stored with a different password.
    Conflict(NodeId),
}

/// A descriptive field whose stored values [`NodeStore::field_values`] lists
/// (the filters' autocomplete).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ValueField {
    /// The provider (seller).
    Provider,
    /// The country.
    Country,
    /// The state or region.
    State,
    /// The city.
    City,
}

impl ValueField {
    /// Every field, in this order.
    pub const ALL: [ValueField; 4] = [
        ValueField::Provider,
        ValueField::Country,
        ValueField::State,
        ValueField::City,
    ];

    /// The name (`provider`, `country`, `state`, `city`): also the filter's name.
    pub fn as_str(self) -> &'static str {
        match self {
            ValueField::Provider => "provider",
            ValueField::Country => "country",
            ValueField::State => "state",
            ValueField::City => "city",
        }
    }
}

impl std::str::FromStr for ValueField {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ValueField::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| {
                let shown: String = s.chars().take(40).flat_map(char::escape_default).collect();
                format!("unknown field \"{shown}\" (known: provider, country, state, city)")
            })
    }
}

/// Errors of a [`NodeStore`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No node with this id.
    #[error("no node with id {0}")]
    NotFound(NodeId),
    /// The transition table refused the event; nothing was written.
    #[error(transparent)]
    Refused(#[from] Refused),
    /// The connection URL is not one the store understands.
    #[error("unsupported database URL {0:?} (use sqlite://PATH?mode=rwc or postgres://...)")]
    BadUrl(String),
    /// No job with this id.
    #[error("no job with id {0}")]
    JobNotFound(JobId),
    /// The database failed.
    #[error("database error: {0}")]
    Backend(String),
    /// The page cannot be served (e.g. a cursor with a sort key other than id).
    #[error(transparent)]
    Page(#[from] PageError),
    /// The node data given is invalid (a field too long, a control character).
    #[error(transparent)]
    Invalid(#[from] InvalidNode),
    /// The selection or filter given is invalid.
    #[error(transparent)]
    Selection(#[from] SelectionError),
    /// The account was disabled, deleted or given a new password while the
    /// caller was signing in: nothing was opened.
    #[error("the account changed during sign-in (disabled or new password): sign in again")]
    AccountChanged,
    /// The selection matches no node: an action on it would do nothing.
    #[error("no node matches the selection")]
    NothingSelected,
    /// Another live process is registered under this worker name.
    #[error(
        "worker name {name:?} is taken by a live process ({host}, pid {pid}); give another \
         --worker name, or wait for its heartbeat to expire"
    )]
    WorkerNameTaken {
        /// The name.
        name: String,
        /// The host of the process holding it.
        host: String,
        /// Its process id.
        pid: u32,
    },
    /// This worker no longer holds the import job (its hold ran out and
    /// another process took it): the batch was rolled back.
    #[error("import job {0} is no longer held by this worker")]
    ImportNotHeld(JobId),
    /// The import job is no longer running (it was cancelled or ended): the
    /// batch was rolled back.
    #[error("import job {0} is no longer running")]
    ImportEnded(JobId),
}

/// Builds the checkpoint of an import batch from what the store did with its
/// rows, inside the batch's transaction ([`NodeStore::import_batch`]): one
/// [`InsertOutcome`] per row, then the new ids of the rows that replaced the
/// stored nodes they conflicted with, in row order (only with
/// [`OnConflict::Replace`]).
pub type CheckpointFn = Box<dyn FnOnce(&[InsertOutcome], &[NodeId]) -> ImportCheckpoint + Send>;

/// One batch of an import job ([`NodeStore::import_batch`]).
pub struct ImportBatch {
    /// The rows' nodes, in line order.
    pub nodes: Vec<NewNode>,
    /// Conflict policy.
    pub on_conflict: OnConflict,
    /// The parser rows covered once the batch is in (its checkpoint's `rows`).
    pub through_rows: u64,
    /// Builds the checkpoint from what the store did.
    pub checkpoint: CheckpointFn,
}

impl fmt::Debug for ImportBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImportBatch")
            .field("nodes", &self.nodes.len())
            .field("on_conflict", &self.on_conflict)
            .field("through_rows", &self.through_rows)
            .finish_non_exhaustive()
    }
}

/// Persistence of nodes and their history. `apply` is the only method that
/// changes a node's status.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait NodeStore: Send + Sync {
    /// In one transaction: read the node's status, compute
    /// [`transition`](fn@crate::domain::transition), write the new status and the
    /// event's evidence, and append a history row. A refused event writes nothing
    /// and returns [`StoreError::Refused`].
    async fn apply(
        &self,
        node: NodeId,
        event: Event,
        ctx: ApplyContext,
    ) -> Result<Applied, StoreError>;

    /// Group commit: applies many events in ONE transaction (each exactly as
    /// [`apply`](Self::apply) would, in order). The outer error means nothing was
    /// written; the inner results say, per request, what happened (a refused or
    /// unknown node does not stop the others).
    async fn apply_many(
        &self,
        requests: Vec<ApplyRequest>,
    ) -> Result<Vec<Result<Applied, StoreError>>, StoreError>;

    /// One node.
    async fn get(&self, node: NodeId) -> Result<Option<Node>, StoreError>;

    /// Nodes matching `filter`, one page of them, with the total count.
    /// Implementations must honour [`Page::after`] (the cursor) and reject the
    /// pages [`Page::check`] refuses; [`ops::NodeWalk`](crate::ops::NodeWalk)
    /// relies on it.
    async fn list(&self, filter: &NodeFilter, page: Page) -> Result<NodePage, StoreError>;

    /// One page of the nodes matching `filter`, without counting them all (the
    /// count is the expensive part of [`list`](Self::list) on large tables).
    async fn list_page(&self, filter: &NodeFilter, page: Page) -> Result<Vec<Node>, StoreError> {
        Ok(self.list(filter, page).await?.nodes)
    }

    /// Stores enrichment results with their nodes, in one transaction. Never
    /// touches a node's status, evidence or history: enrichment is not an
    /// event. Unknown nodes are skipped; returns how many nodes were updated.
    async fn enrich(&self, updates: Vec<(NodeId, EnrichmentUpdate)>) -> Result<u64, StoreError>;

    /// A cached provider answer for `key` (an address) no older than `since`.
    async fn cache_get(
        &self,
        provider: &str,
        key: &str,
        since: DateTime<Utc>,
    ) -> Result<Option<String>, StoreError>;

    /// Stores (or replaces) a provider answer for `key`, fetched at `at`.
    async fn cache_put(
        &self,
        provider: &str,
        key: &str,
        value: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Inserts nodes as `not_tested`; one outcome per input row, in order.
    async fn insert(&self, nodes: Vec<NewNode>) -> Result<Vec<InsertOutcome>, StoreError>;

    /// In one transaction, deletes each `old` node (recording a `deleted` history
    /// row) and inserts its replacement as `not_tested`; returns the new ids in
    /// order. Used by imports that replace conflicting nodes on request.
    async fn replace(&self, pairs: Vec<(NodeId, NewNode)>) -> Result<Vec<NodeId>, StoreError>;

    /// Deletes the nodes matching `filter` (recording a history row each); returns how many.
    async fn delete(&self, filter: &NodeFilter) -> Result<u64, StoreError>;

    /// Replaces a node's descriptive fields.
    async fn update_meta(&self, node: NodeId, meta: NodeMeta) -> Result<(), StoreError>;

    /// Sets the desired service state of the matching nodes; returns how many changed.
    async fn set_service_wanted(
        &self,
        filter: &NodeFilter,
        wanted: bool,
    ) -> Result<u64, StoreError>;

    /// Sets the desired service kind of the matching nodes; returns how many changed.
    async fn set_service_kind(
        &self,
        filter: &NodeFilter,
        kind: crate::domain::ServiceKind,
    ) -> Result<u64, StoreError>;

    /// A node's status history, oldest first.
    async fn history(&self, node: NodeId) -> Result<Vec<HistoryRow>, StoreError>;

    /// The recorded runtime state of services (`service_runtime` rows: the
    /// counters the running process last flushed, a pending restart request)
    /// of `nodes`, or of every node when `nodes` is empty. Nodes without a row
    /// are left out. Never touches `status`.
    async fn service_runtime(&self, nodes: &[NodeId]) -> Result<Vec<ServiceRuntime>, StoreError>;

    /// Records the counters of services (the process running them flushes
    /// them); a pending restart request is kept.
    async fn put_service_counters(
        &self,
        counters: Vec<(NodeId, ServiceCounters)>,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Records a restart request for the services of `nodes` (the reconciler
    /// of the process running them carries it out on its next pass).
    async fn request_service_restart(
        &self,
        nodes: &[NodeId],
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Clears the node's restart request if it is still the one made at
    /// `requested_at` (a newer request stays); `true` when cleared.
    async fn finish_service_restart(
        &self,
        node: NodeId,
        requested_at: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Number of nodes per status (statuses with no node are omitted).
    async fn counts(&self) -> Result<Vec<(Status, u64)>, StoreError>;

    /// The distinct non-empty values of a descriptive `field` with how many
    /// nodes hold each, most frequent first (ties by value), at most `limit`;
    /// with `prefix`, only values starting with it (case-insensitive). The
    /// prefix must already be checked (no control characters): see
    /// [`ops::field_values`](crate::ops::field_values).
    async fn field_values(
        &self,
        field: ValueField,
        prefix: Option<String>,
        limit: u64,
    ) -> Result<Vec<(String, u64)>, StoreError>;

    /// Creates a job with one item per node matching `spec.filter`, in one transaction.
    async fn create_job(&self, spec: JobSpec, at: DateTime<Utc>) -> Result<Job, StoreError>;

    /// One job.
    async fn job(&self, job: JobId) -> Result<Job, StoreError>;

    /// The most recent jobs, newest first.
    async fn jobs(&self, limit: u64) -> Result<Vec<Job>, StoreError>;

    /// Jobs not yet finished (queued or running), oldest first.
    async fn unfinished_jobs(&self) -> Result<Vec<Job>, StoreError>;

    /// Marks a job's state (running, done, cancelled, interrupted) at `at`.
    async fn set_job_state(
        &self,
        job: JobId,
        state: JobState,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Claims up to `max` items of `job` for `worker`: pending items, and
    /// running items whose lease expired (their worker died or was cut off).
    /// Each claimed item gets `worker`, a fresh claim token and a lease until
    /// `at + lease`. On Postgres several processes can claim from one job at
    /// once (`FOR UPDATE SKIP LOCKED`).
    async fn claim_items(
        &self,
        job: JobId,
        worker: &str,
        max: u64,
        at: DateTime<Utc>,
        lease: std::time::Duration,
    ) -> Result<Vec<ClaimedItem>, StoreError>;

    /// Group commit of item results: in ONE transaction, applies each result's
    /// event (as [`apply_many`](Self::apply_many)) and marks the item terminal.
    /// A result is taken only if its item is still running under the claim
    /// token the result carries (fencing): results for items already ended,
    /// put back or reclaimed by another worker are refused (`written: false`),
    /// so no result is ever applied twice.
    async fn finish_items(&self, results: Vec<ItemResult>)
    -> Result<Vec<ItemFinished>, StoreError>;

    /// Ends every pending item of `job` as cancelled; returns how many.
    async fn cancel_pending(&self, job: JobId, at: DateTime<Utc>) -> Result<u64, StoreError>;

    /// Puts every `running` item of `job` back to `pending`, whoever holds
    /// it; returns how many. Only for when every worker is known to be gone:
    /// recovery uses [`requeue_orphans`](Self::requeue_orphans).
    async fn requeue_running(&self, job: JobId) -> Result<u64, StoreError>;

    /// Puts back to `pending` the `running` items of `job` whose holder is
    /// dead at `at` — its worker row's heartbeat expired, or the item's lease
    /// ran out (or it has none) — or is `me` (the caller, which knows that it
    /// runs none of them); returns how many. Items of other live holders
    /// (a registered worker, or an unregistered process whose heartbeat
    /// keeps extending its leases) are left alone.
    async fn requeue_orphans(
        &self,
        job: JobId,
        me: &str,
        at: DateTime<Utc>,
    ) -> Result<u64, StoreError>;

    /// How many items of `job` a claim at `at` could take (pending items and
    /// running items whose lease expired).
    async fn claimable(&self, job: JobId, at: DateTime<Utc>) -> Result<u64, StoreError>;

    /// Registers a worker process (refused with
    /// [`StoreError::WorkerNameTaken`] when another live process, another host
    /// or pid, holds the name), alive until `at + lease`.
    async fn register_worker(
        &self,
        worker: &WorkerRegistration,
        at: DateTime<Utc>,
        lease: std::time::Duration,
    ) -> Result<(), StoreError>;

    /// A worker's heartbeat, in one transaction: its row says it is alive
    /// until `at + lease` (the row is made if missing), and the leases of
    /// every item it holds running are extended to the same time. Returns how
    /// many item leases were extended.
    async fn heartbeat(
        &self,
        worker: &WorkerRegistration,
        at: DateTime<Utc>,
        lease: std::time::Duration,
    ) -> Result<u64, StoreError>;

    /// Extends to `at + lease` the lease of every item `worker` holds
    /// running, in one statement; returns how many. The heartbeat of a process
    /// that runs jobs without being a registered worker.
    async fn extend_leases(
        &self,
        worker: &str,
        at: DateTime<Utc>,
        lease: std::time::Duration,
    ) -> Result<u64, StoreError>;

    /// Removes a worker's row (clean exit); `true` when there was one.
    async fn deregister_worker(&self, name: &str) -> Result<bool, StoreError>;

    /// Every registered worker, by name, as seen at `at`.
    async fn workers(&self, at: DateTime<Utc>) -> Result<Vec<WorkerView>, StoreError>;

    /// Service placement, in one transaction (serialised between processes:
    /// a PostgreSQL transaction-level advisory lock): every wanted service
    /// (`service_wanted`, verified status) whose worker is unset, dead at
    /// `at` (heartbeat expired, or no row) or no longer has the services role
    /// is placed on a live services worker: its pinned worker when it has
    /// one (only there: with no live worker a pinned service waits for its
    /// pinned one), else the live services worker with the service's label,
    /// if it has one, with the fewest services placed and room under its
    /// `max_services` (ties by name); none: it stays unplaced. A
    /// pinned service placed elsewhere moves to its pinned worker once that
    /// one is alive. Placements of services no longer wanted are dropped (a
    /// pin stays). Returns the wanted services placed on `worker`, in id order,
    /// or `None` on SQLite: one host, every wanted service runs in the process
    /// that reconciles (as before placement existed).
    async fn place_services(
        &self,
        worker: &str,
        at: DateTime<Utc>,
    ) -> Result<Option<Vec<NodeId>>, StoreError>;

    /// Pins the services of `nodes` to `worker` (`None`: unpins them), in one
    /// transaction; a service placed on another worker moves on the next
    /// placement. Returns how many placements changed.
    async fn pin_services(
        &self,
        nodes: &[NodeId],
        worker: Option<String>,
    ) -> Result<u64, StoreError>;

    /// Requires the label `label` (`None`: none) of the workers the services
    /// of `nodes` are placed on (`connexa service start --label`), in one
    /// transaction; a service placed on a worker without it moves on the
    /// next placement. Returns how many placements changed.
    async fn label_services(
        &self,
        nodes: &[NodeId],
        label: Option<String>,
    ) -> Result<u64, StoreError>;

    /// Every recorded placement, by node id.
    async fn service_placements(&self) -> Result<Vec<ServicePlacement>, StoreError>;

    /// Progress of a job, computed from committed item rows.
    async fn progress(&self, job: JobId) -> Result<Progress, StoreError>;

    /// The last `limit` finished items of a job, newest first.
    async fn recent_items(&self, job: JobId, limit: u64) -> Result<Vec<ItemView>, StoreError>;

    /// Finished items of a job after `cursor` in (commit number, item id) order,
    /// at most `limit`. Every transaction that ends items of a job (a group
    /// commit, a cancellation) gets the next commit number of that job, and
    /// commits of one job are serialised, so reading "after the last item seen"
    /// again and again never misses a result nor repeats one: this is how the
    /// HTTP event stream resumes after a reconnect (`Last-Event-ID`).
    async fn items_since(
        &self,
        job: JobId,
        cursor: ItemCursor,
        limit: u64,
    ) -> Result<Vec<CommittedItem>, StoreError>;

    /// Creates an import job: kind [`JobKind::Import`], queued, `spec` as its
    /// options, its `total` the spool's size in bytes, and its progress row
    /// (nothing committed), in one transaction.
    async fn create_import(&self, spec: &ImportSpec, at: DateTime<Utc>) -> Result<Job, StoreError>;

    /// How far an import job got ([`StoreError::JobNotFound`] for a job
    /// that is not an import).
    async fn import_run(&self, job: JobId) -> Result<ImportRun, StoreError>;

    /// Takes an unfinished import job for `worker` until `at + lease`, when
    /// no other worker holds it (none does, or its hold ran out, or it is
    /// `worker`'s already); the job becomes `running`. `None`: the job ended
    /// or another worker holds it.
    async fn claim_import(
        &self,
        job: JobId,
        worker: &str,
        at: DateTime<Utc>,
        lease: std::time::Duration,
    ) -> Result<Option<ImportRun>, StoreError>;

    /// One batch of an import job, in ONE transaction: inserts its nodes (as
    /// [`insert`](Self::insert)), with [`OnConflict::Replace`] replaces the
    /// stored nodes they conflict with (as [`replace`](Self::replace)), then
    /// records the checkpoint its [`CheckpointFn`] builds from the outcomes
    /// (the parser rows covered, the bytes read, the batch's part of the
    /// report) and extends `worker`'s hold to `at + lease`. A worker that no
    /// longer holds the job gets [`StoreError::ImportNotHeld`], and a job that
    /// is no longer running (cancelled) [`StoreError::ImportEnded`]; nothing
    /// is written then. A batch whose rows are already committed (a retry
    /// after a commit whose acknowledgment was lost) is not applied again:
    /// `Ok(false)`. So every batch is committed exactly once with its
    /// checkpoint.
    async fn import_batch(
        &self,
        job: JobId,
        worker: &str,
        at: DateTime<Utc>,
        lease: std::time::Duration,
        batch: ImportBatch,
    ) -> Result<bool, StoreError>;

    /// The report parts of an import job's committed batches, in commit order.
    async fn import_parts(&self, job: JobId) -> Result<Vec<serde_json::Value>, StoreError>;

    /// Ends an import job that `worker` holds (or nobody does) in `state`
    /// (done, cancelled, interrupted) at `at`, with the test job started on
    /// its added nodes and the reason it stopped early, if any; lets go of
    /// its hold. A job cancelled meanwhile stays cancelled. `Ok(false)`:
    /// another worker holds it, nothing changed.
    #[allow(clippy::too_many_arguments)]
    async fn end_import(
        &self,
        job: JobId,
        worker: &str,
        state: JobState,
        test_job: Option<JobId>,
        error: Option<String>,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Lets go of `worker`'s hold of an unfinished import job (a graceful
    /// stop): any process on its host may resume it at once.
    async fn release_import(&self, job: JobId, worker: &str) -> Result<(), StoreError>;
}

/// A position in a job's stream of finished items ([`NodeStore::items_since`]):
/// the commit number and the item id of the last item seen. The default is the start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ItemCursor {
    /// Commit number.
    pub seq: u64,
    /// Item id within that commit.
    pub item: i64,
}

impl CommittedItem {
    /// The cursor just after this item.
    pub fn cursor(&self) -> ItemCursor {
        ItemCursor {
            seq: self.seq,
            item: self.item.item.0,
        }
    }
}

/// A finished item and the commit number of the transaction that ended it
/// ([`NodeStore::items_since`]).
#[derive(Debug, Clone, PartialEq)]
pub struct CommittedItem {
    /// The job's commit number (1, 2, ...; items ended together share it).
    pub seq: u64,
    /// The item.
    pub item: ItemView,
}

/// Identifier of an API token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct TokenId(pub i64);

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What an API token may do. Roles are ordered: each one may do everything the
/// roles below it may (`viewer < operator < admin`); only `admin` sees secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads nodes, jobs, imports, services and counts; never a secret.
    Viewer,
    /// A viewer that also imports, tests, starts and stops services, and
    /// exports (passwords masked).
    Operator,
    /// Everything: secrets in clear, deletions.
    Admin,
}

impl Role {
    /// Every role, lowest first.
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    /// The name used on the command line, in the store and in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// `true` if this role may do what `needed` may.
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }

    /// `true` if this role may see node passwords and SOCKS5 credentials in
    /// clear (views with `reveal`, exports). Only [`Role::Admin`].
    pub fn sees_secrets(self) -> bool {
        self >= Role::Admin
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name is not a [`Role`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?} (use viewer, operator or admin)")]
pub struct UnknownRole(pub String);

impl std::str::FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().to_ascii_lowercase();
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == t)
            .ok_or_else(|| UnknownRole(s.to_owned()))
    }
}

/// Where an API token is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum TokenScope {
    /// Every route its [`Role`] allows.
    #[default]
    Full,
    /// `GET /metrics` only, whatever the role (a scraper's token).
    Metrics,
}

impl TokenScope {
    /// The name used in the store and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenScope::Full => "full",
            TokenScope::Metrics => "metrics",
        }
    }
}

/// An API token as stored: never the token itself, only the SHA-256 hash of it
/// (in [`TokenStore`]); this view carries neither.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiToken {
    /// Identifier.
    pub id: TokenId,
    /// The name given at creation (who or what uses it).
    pub name: String,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last accepted (updated at most about once a minute).
    pub last_used_at: Option<DateTime<Utc>>,
    /// When it stops being accepted, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// Revoked tokens are never accepted again.
    pub revoked: bool,
    /// What it may do.
    pub role: Role,
    /// Where it is accepted.
    pub scope: TokenScope,
}

/// Persistence of API bearer tokens (used by connexa-http). Tokens are random
/// 256-bit values; the store only ever sees their hash (lower-case hex SHA-256),
/// so a copy of the database does not give access to the API.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait TokenStore: Send + Sync {
    /// Stores a new token under `name` with a role and a scope. Fails if the
    /// hash is already stored.
    async fn create_token(
        &self,
        name: &str,
        token_hash: &str,
        role: Role,
        scope: TokenScope,
        expires_at: Option<DateTime<Utc>>,
        at: DateTime<Utc>,
    ) -> Result<ApiToken, StoreError>;

    /// The token with this hash, if it is stored, not revoked and not expired
    /// at `at`. Reads only (see [`touch_token`](Self::touch_token)).
    async fn find_token(
        &self,
        token_hash: &str,
        at: DateTime<Utc>,
    ) -> Result<Option<ApiToken>, StoreError>;

    /// Records that the token was used at `at`.
    async fn touch_token(&self, id: TokenId, at: DateTime<Utc>) -> Result<(), StoreError>;

    /// Every token (revoked ones included), oldest first.
    async fn tokens(&self) -> Result<Vec<ApiToken>, StoreError>;

    /// Revokes a token; `false` if there is no such token or it was already revoked.
    async fn revoke_token(&self, id: TokenId) -> Result<bool, StoreError>;
}

/// Identifier of an operator account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct AccountId(pub i64);

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An operator account (who signs in to the console with a name and a
/// password). The password hash is never part of this view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Account {
    /// Identifier.
    pub id: AccountId,
    /// The sign-in name (unique).
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// A disabled account cannot sign in and has no session.
    pub disabled: bool,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// When the password was last set after creation, if ever.
    pub password_changed_at: Option<DateTime<Utc>>,
}

/// A sign-in session as stored: only the SHA-256 of its id is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Session {
    /// Row id.
    pub id: i64,
    /// Whose session it is.
    pub account: AccountId,
    /// Signed in.
    pub created_at: DateTime<Utc>,
    /// Last request seen (updated at most about once per tenth of the idle timeout).
    pub last_seen: DateTime<Utc>,
    /// When it ends whatever its use (absolute expiry).
    pub expires_at: DateTime<Utc>,
    /// The client address it was opened from, if known.
    pub source: Option<String>,
}

/// Persistence of operator accounts and their sessions (used by
/// connexa-http). Passwords arrive already hashed (Argon2id PHC strings, see
/// [`crate::store::accounts`]); sessions by the SHA-256 of their id.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait AccountStore: Send + Sync {
    /// Stores a new account; [`StoreError::Backend`] if the name is taken.
    async fn create_account(
        &self,
        name: &str,
        password_hash: &str,
        role: Role,
        at: DateTime<Utc>,
    ) -> Result<Account, StoreError>;

    /// The account of this name and its password hash, disabled or not.
    async fn account_by_name(&self, name: &str) -> Result<Option<(Account, String)>, StoreError>;

    /// The account of this id and its password hash.
    async fn account_by_id(&self, id: AccountId) -> Result<Option<(Account, String)>, StoreError>;

    /// Every account, oldest first.
    async fn accounts(&self) -> Result<Vec<Account>, StoreError>;

    /// Sets the password hash and ends every session of the account except
    /// the one whose id hashes to `keep_session` (the session that asked).
    /// `false` if there is no such account.
    async fn set_password(
        &self,
        id: AccountId,
        password_hash: &str,
        keep_session: Option<String>,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Disables the account and ends all its sessions; `false` if there is no
    /// such account or it was disabled already.
    async fn disable_account(&self, id: AccountId) -> Result<bool, StoreError>;

    /// Enables a disabled account (it may sign in again; it has no session);
    /// `false` if there is no such account or it is enabled already.
    async fn enable_account(&self, id: AccountId) -> Result<bool, StoreError>;

    /// Opens a session of `account` (its id hashed to `session_hash`) — only
    /// if the stored account is still enabled and its password is still the
    /// one `account` was read with (same `password_changed_at`), checked in
    /// the same transaction as the insert (the account's row locked on
    /// PostgreSQL): a sign-in racing a password change or a disable gets
    /// [`StoreError::AccountChanged`] and opens nothing, so the change's
    /// "end every session" cannot miss it.
    async fn create_session(
        &self,
        account: &Account,
        session_hash: &str,
        source: Option<String>,
        at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<Session, StoreError>;

    /// The session whose id hashes to `session_hash` and its account, if the
    /// session exists, has not expired at `at` (absolute expiry), was last seen
    /// less than `idle` before `at`, and its account is not disabled. Reads only.
    async fn find_session(
        &self,
        session_hash: &str,
        at: DateTime<Utc>,
        idle: std::time::Duration,
    ) -> Result<Option<(Session, Account)>, StoreError>;

    /// Records a request of the session at `at`.
    async fn touch_session(&self, id: i64, at: DateTime<Utc>) -> Result<(), StoreError>;

    /// Ends the session whose id hashes to `session_hash`; `false` if none.
    async fn end_session(&self, session_hash: &str) -> Result<bool, StoreError>;

    /// The open sessions of an account (expired ones may be included until
    /// they are purged), oldest first.
    async fn sessions(&self, account: AccountId) -> Result<Vec<Session>, StoreError>;
}

/// An item a worker claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimedItem {
    /// The item.
    pub item: ItemId,
    /// Its job.
    pub job: JobId,
    /// The node to work on.
    pub node: NodeId,
    /// The claim token: the item's result is taken only with it
    /// ([`ItemResult::token`]).
    pub token: i64,
}

/// What a process does, as registered in the `workers` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum WorkerRole {
    /// Runs job items.
    Jobs,
    /// Runs services (reconciler and monitor).
    Services,
    /// Serves the HTTP API and console.
    Http,
}

crate::domain::snake_names!(WorkerRole { Jobs => "jobs", Services => "services", Http => "http" });

/// A worker process, as it registers itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerRegistration {
    /// Unique name (`--worker NAME`, else `HOST-pPID`); job items record it.
    pub name: String,
    /// The host it runs on.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// The Connexa version it runs.
    pub version: String,
    /// What it does.
    pub roles: Vec<WorkerRole>,
    /// Most services placed on it at once (`[workers] max_services`); `None`:
    /// no limit.
    pub max_services: Option<u64>,
    /// Its placement labels (`[workers] labels`, `connexa run --label`): a
    /// service wanted with a label is placed only on workers that have it.
    pub labels: Vec<String>,
}

impl WorkerRegistration {
    /// This process: `name` or `HOST-pPID`, this host, pid and crate version.
    pub fn this_process(name: Option<String>, roles: Vec<WorkerRole>) -> Self {
        let host = hostname();
        let pid = std::process::id();
        WorkerRegistration {
            name: name.unwrap_or_else(|| format!("{host}-p{pid}")),
            host,
            pid,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            roles,
            max_services: None,
            labels: Vec::new(),
        }
    }
}

/// This host's name (`/proc/sys/kernel/hostname`, else `$HOSTNAME`, else `localhost`).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "localhost".to_owned())
}

/// A registered worker, with its liveness and load ([`NodeStore::workers`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkerView {
    /// Its name.
    pub name: String,
    /// Its host.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// The Connexa version it runs.
    pub version: String,
    /// What it does.
    pub roles: Vec<WorkerRole>,
    /// When it registered.
    pub started_at: DateTime<Utc>,
    /// Its last heartbeat.
    pub last_heartbeat: DateTime<Utc>,
    /// Alive until then unless it beats again.
    pub expires_at: DateTime<Utc>,
    /// `true` while its heartbeat has not expired.
    pub alive: bool,
    /// Job items it holds running now.
    pub items_in_flight: u64,
    /// Wanted services placed on it now (PostgreSQL placement; 0 on SQLite).
    #[serde(default)]
    pub services_held: u64,
    /// Most services placed on it at once; `None`: no limit.
    #[serde(default)]
    pub max_services: Option<u64>,
    /// Its placement labels.
    #[serde(default)]
    pub labels: Vec<String>,
}

/// Where a wanted service is placed ([`NodeStore::service_placements`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServicePlacement {
    /// The node.
    pub node: NodeId,
    /// The worker that runs (or is to run) its service; `None` while no live
    /// services worker can take it.
    pub worker: Option<String>,
    /// The worker it is pinned to (`connexa service start --on`), if any.
    pub pinned: Option<String>,
    /// The label its worker must have (`connexa service start --label`), if any.
    pub label: Option<String>,
    /// When it was placed on `worker`.
    pub placed_at: Option<DateTime<Utc>>,
}

/// A finished item, for [`NodeStore::finish_items`].
#[derive(Debug, Clone, PartialEq)]
pub struct ItemResult {
    /// The item.
    pub item: ItemId,
    /// The claim token the item was claimed with ([`ClaimedItem::token`]).
    pub token: i64,
    /// Its terminal state.
    pub state: ItemState,
    /// The event to apply to the item's node, if any.
    pub event: Option<Event>,
    /// Enrichment to store with the item's node, in the same transaction (GEO
    /// and fraud jobs; never an event).
    pub enrichment: Option<EnrichmentUpdate>,
    /// A short human summary (the failure, the refusal...).
    pub detail: Option<String>,
    /// When it finished.
    pub at: DateTime<Utc>,
}

/// What [`NodeStore::finish_items`] did with one result.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemFinished {
    /// The item.
    pub item: ItemId,
    /// The state it was given (a refused event turns `ok` into `failed`).
    pub state: ItemState,
    /// The transition applied, if any.
    pub applied: Option<Applied>,
    /// `false` when the item had already ended and nothing was written.
    pub written: bool,
}

/// How deep a [`Prober`] goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeDepth {
    /// PPTP control-channel handshake only (reaches at most level 1).
    Light,
    /// Handshake, call, LCP and MS-CHAPv2 login (reaches at most level 2).
    Auth,
}

/// The prober could not test at all (this is about us, not the node: the node
/// must not be marked).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// A privilege is missing (raw GRE sockets need CAP_NET_RAW).
    #[error("{0}")]
    NotPermitted(String),
    /// The prober is misconfigured.
    #[error("probe configuration: {0}")]
    Config(String),
}

/// Tests whether a PPTP server answers, and whether its credentials log in.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait Prober: Send + Sync {
    /// Tests one node. Failures of the node are an `Ok(Outcome)` with a failure;
    /// `Err` means the test could not be run.
    async fn probe(&self, node: &Node, depth: ProbeDepth) -> Result<Outcome, ProbeError>;
}

/// Measures throughput through a node's tunnel.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait SpeedTester: Send + Sync {
    /// Logs in, brings the tunnel up and measures. An outcome below level 3 says
    /// how far it got (a slow tunnel is level 2 with `TooSlow`).
    async fn measure(&self, node: &Node) -> Result<Outcome, ProbeError>;
}

/// Result of a service health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// The tunnel is alive and a connection through it succeeded.
    Healthy,
    /// Something failed; the reason.
    Unhealthy(String),
}

/// Errors of a [`ServiceLauncher`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The service could not be started.
    #[error("service start failed: {0}")]
    StartFailed(String),
    /// There is no service for this node.
    #[error("no service is running for node {0}")]
    NotRunning(NodeId),
}

/// Counters of one service, kept by the process that runs it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServiceCounters {
    /// Client connections open now.
    pub connections: u64,
    /// Client connections accepted since the service started.
    pub connections_total: u64,
    /// Bytes relayed from clients to targets since the service started.
    pub bytes_up: u64,
    /// Bytes relayed from targets to clients since the service started.
    pub bytes_down: u64,
    /// The last error the service met (a failed CONNECT, a failed login, a
    /// failed health check), without secrets.
    pub last_error: Option<String>,
    /// When the service (this run of it) started.
    pub started_at: Option<DateTime<Utc>>,
}

/// A service's recorded runtime state (see [`NodeStore::service_runtime`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRuntime {
    /// The node.
    pub node: NodeId,
    /// The counters last flushed, if any.
    pub counters: Option<ServiceCounters>,
    /// When they were flushed.
    pub updated_at: Option<DateTime<Utc>>,
    /// A restart asked for and not carried out yet.
    pub restart_requested_at: Option<DateTime<Utc>>,
}

/// Runs SOCKS5 services through nodes' tunnels.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait ServiceLauncher: Send + Sync {
    /// Starts a service through `node`, reusing `previous` (port and credentials)
    /// when given and possible.
    async fn start(
        &self,
        node: &Node,
        previous: Option<ServiceEndpoint>,
    ) -> Result<ServiceEndpoint, ServiceError>;

    /// Stops the node's service.
    async fn stop(&self, node: NodeId) -> Result<(), ServiceError>;

    /// Checks the node's service.
    async fn health(&self, node: &Node) -> Health;

    /// The nodes whose service runs in this launcher right now. The engine's
    /// reconciler compares it with the desired state (`service_wanted`): after a
    /// process restart it is empty, so every wanted node's service is started
    /// again (with its stored port and credentials).
    async fn running(&self) -> Vec<NodeId>;

    /// The counters of the node's service running in this launcher (`None`:
    /// not running here, or the launcher keeps none).
    fn counters(&self, _node: NodeId) -> Option<ServiceCounters> {
        None
    }
}

/// Why an enrichment lookup gave no answer. None of these marks the node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LookupError {
    /// The source knows nothing about this address.
    #[error("no data for {0}")]
    NotFound(IpAddr),
    /// The source refused for now (HTTP 429, quota exhausted): try again
    /// later, after `retry_after` when the source said.
    #[error("rate limited by {provider}{}", .retry_after.map(|d| format!(", retry after {} s", d.as_secs())).unwrap_or_default())]
    RateLimited {
        /// The provider.
        provider: String,
        /// How long it asked us to wait.
        retry_after: Option<std::time::Duration>,
    },
    /// The answer for this address was unusable (malformed body, an error
    /// status): this address failed, the others go on.
    #[error("{0}")]
    Failed(String),
    /// The source cannot answer at all (not configured, bad key): the job stops.
    #[error("{0}")]
    Unavailable(String),
}

/// Where an address is: an offline database or an online provider.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait GeoLookup: Send + Sync {
    /// The source's name, stored with each result (`mmdb`, `ip-api`, ...).
    fn source(&self) -> String;
    /// Looks one address up.
    async fn lookup(&self, ip: IpAddr) -> Result<GeoFacts, LookupError>;
    /// For sources made of several (a fallback chain): which one answered the
    /// last successful lookup of `ip` (taken once). `None`: [`source`](Self::source).
    fn answered_by(&self, _ip: IpAddr) -> Option<String> {
        None
    }
}

/// A fraud score of an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FraudScore {
    /// 0 (clean) to 100.
    pub score: u8,
    /// The level (the provider's own, or [`Risk::from_score`]).
    pub risk: Risk,
}

/// Scores an address for fraud risk (IPQualityScore, AbuseIPDB, Scamalytics...).
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait FraudScorer: Send + Sync {
    /// The provider's name, stored with each result.
    fn source(&self) -> String;
    /// Scores one address.
    async fn score(&self, ip: IpAddr) -> Result<FraudScore, LookupError>;
    /// For chains: which scorer answered the last successful call for `ip`
    /// (taken once). `None`: [`source`](Self::source).
    fn answered_by(&self, _ip: IpAddr) -> Option<String> {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::domain::{Level, Outcome};

    #[tokio::test]
    async fn ports_are_object_safe_and_mockable() {
        let mut prober = MockProber::new();
        prober
            .expect_probe()
            .returning(|_, _| Ok(Outcome::success(Level::Light)));
        let prober: Arc<dyn Prober> = Arc::new(prober);
        let node = crate::domain::Node::added(
            NodeId(1),
            "127.0.0.1".parse().unwrap(),
            1723,
            "a",
            "b".into(),
            Utc::now(),
        );
        let out = prober.probe(&node, ProbeDepth::Light).await.unwrap();
        assert_eq!(out.reached, Level::Light);
        let _store: Option<Arc<dyn NodeStore>> = None::<Arc<MockNodeStore>>.map(|s| s as _);
        let _speed: Option<Arc<dyn SpeedTester>> = None::<Arc<MockSpeedTester>>.map(|s| s as _);
        let _svc: Option<Arc<dyn ServiceLauncher>> =
            None::<Arc<MockServiceLauncher>>.map(|s| s as _);
    }
}
