//! The operations behind the frontends: each CLI subcommand and HTTP handler
//! parses its input, calls one function here (or one [`NodeStore`] method), and
//! formats the result. The serialisable views (`*View`, [`Stats`],
//! [`ImportSummary`]) are the stable JSON shapes both frontends print
//! (documented in `docs/cli.md`); passwords in them are masked unless asked for.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use connexa_core::domain::NodeFilter;
//! use connexa_core::import::{import_into, ImportOptions};
//! use connexa_core::{ops, store::SqlStore};
//! use std::sync::Arc;
//! let db = std::env::temp_dir().join(format!("connexa-ops-doc-{}.db", std::process::id()));
//! let store = Arc::new(SqlStore::connect(&format!("sqlite://{}?mode=rwc", db.display())).await.unwrap());
//! import_into(store.clone(), &b"127.0.0.5:admin:pw\n"[..], ImportOptions::default()).await;
//! let stats = ops::stats(store.as_ref()).await.unwrap();
//! assert_eq!((stats.total, stats.services_running), (1, 0));
//! assert_eq!(ops::count(store.as_ref(), &NodeFilter::all()).await.unwrap(), 1);
//! # drop(store); let _ = std::fs::remove_file(&db);
//! # }
//! ```

use std::io::Write;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::domain::{
    Failure, FilterError, Level, Node, NodeFilter, NodeId, NodeMeta, Page, PptpIdentity, Selection,
    Status,
};
use crate::export::{ExportError, ExportFormat};
use crate::import::{ErrorReason, Existing, ImportError, ImportReport, NodeFields};
use crate::ports::{
    HistoryRow, InsertOutcome, Job, JobId, JobKind, JobState, NodeStore, Progress, ServiceCounters,
    StoreError, ValueField,
};
pub use crate::ports::{NodeWalk, all_matching};

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpsError {
    /// The store failed (or the node does not exist: [`StoreError::NotFound`]).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Writing the output failed.
    #[error(transparent)]
    Export(#[from] ExportError),
}

/// How many nodes match `filter`.
pub async fn count(store: &dyn NodeStore, filter: &NodeFilter) -> Result<u64, StoreError> {
    let page = Page {
        limit: 0,
        ..Page::default()
    };
    Ok(store.list(filter, page).await?.total)
}

/// One node, or [`StoreError::NotFound`].
pub async fn node(store: &dyn NodeStore, id: NodeId) -> Result<Node, StoreError> {
    store.get(id).await?.ok_or(StoreError::NotFound(id))
}

/// Writes every node matching `filter` in `format` to `out`; returns how many
/// were written (the socks formats skip nodes without a running service).
pub async fn export<W: Write>(
    store: &dyn NodeStore,
    filter: &NodeFilter,
    format: ExportFormat,
    out: W,
) -> Result<usize, OpsError> {
    let nodes = all_matching(store, filter).await?;
    Ok(crate::export::write(format, &nodes, out)?)
}

/// What [`delete_ids`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Deleted {
    /// Nodes deleted.
    pub deleted: u64,
    /// Ids given that matched no node.
    pub missing: Vec<NodeId>,
}

/// Deletes the nodes with these ids (each gets a `deleted` history row) and
/// names the ids that did not exist.
pub async fn delete_ids(store: &dyn NodeStore, ids: &[NodeId]) -> Result<Deleted, StoreError> {
    let filter = NodeFilter::ids(ids.iter().copied());
    let found: std::collections::HashSet<NodeId> = all_matching(store, &filter)
        .await?
        .into_iter()
        .map(|n| n.id)
        .collect();
    let mut missing: Vec<NodeId> = ids
        .iter()
        .copied()
        .filter(|id| !found.contains(id))
        .collect();
    missing.sort_unstable();
    missing.dedup();
    let deleted = store.delete(&filter).await?;
    Ok(Deleted { deleted, missing })
}

/// The store filter of a selection that matches at least one node: an action
/// (a test job, a service start or stop) on no node is refused with
/// [`StoreError::NothingSelected`] instead of becoming a job of 0 items. The
/// selection itself was validated when it was built ([`Selection::new`]).
pub async fn selected(
    store: &dyn NodeStore,
    selection: &Selection,
) -> Result<NodeFilter, StoreError> {
    let filter = selection.to_filter();
    let page = Page {
        limit: 0,
        ..Page::default()
    };
    if store.list(&filter, page).await?.total == 0 {
        return Err(StoreError::NothingSelected);
    }
    Ok(filter)
}

/// Why [`add_node`] added nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AddNodeError {
    /// A field is refused, for the reason (and with the message) an import
    /// gives for the same value.
    #[error(transparent)]
    Invalid(#[from] ErrorReason),
    /// The same ip, port, login and password are stored: nothing was added.
    #[error(
        "duplicate of stored node {0}: the same ip, port, login and password are already stored"
    )]
    Duplicate(NodeId),
    /// The same ip, port and login are stored with another password: the
    /// stored node was kept (as an import keeps it).
    #[error(
        "conflict: same ip, port and login as stored node {0} with another password (kept the existing one)"
    )]
    Conflict(NodeId),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Adds one node typed by hand: validated as an import row
/// ([`NodeFields::validate`]) and inserted through the import's path, so a
/// duplicate or a conflict with a stored node is found exactly as an import
/// finds it. The node starts `not_tested`; returns it as stored.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use connexa_core::import::NodeFields;
/// use connexa_core::ops::{self, AddNodeError};
/// use connexa_core::store::SqlStore;
/// let db = std::env::temp_dir().join(format!("connexa-add-doc-{}.db", std::process::id()));
/// let store = SqlStore::connect(&format!("sqlite://{}?mode=rwc", db.display())).await.unwrap();
/// let fields = NodeFields::new("198.51.100.9", "admin", "pw");
/// let node = ops::add_node(&store, &fields).await.unwrap();
/// let again = ops::add_node(&store, &fields).await.unwrap_err();
/// assert!(matches!(again, AddNodeError::Duplicate(id) if id == node.id));
/// # drop(store); let _ = std::fs::remove_file(&db);
/// # }
/// ```
pub async fn add_node(store: &dyn NodeStore, fields: &NodeFields) -> Result<Node, AddNodeError> {
    let new = fields.validate()?;
    let outcome = store.insert(vec![new]).await?;
    match outcome.first() {
        Some(InsertOutcome::Inserted(id)) => Ok(node(store, *id).await?),
        Some(InsertOutcome::Duplicate(id)) => Err(AddNodeError::Duplicate(*id)),
        Some(InsertOutcome::Conflict(id)) => Err(AddNodeError::Conflict(*id)),
        None => Err(AddNodeError::Store(StoreError::Backend(
            "the insert returned no outcome".into(),
        ))),
    }
}

/// One stored value of a descriptive field and how many nodes hold it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FieldValue {
    /// The value as stored.
    pub value: String,
    /// Nodes holding it.
    pub count: u64,
}

/// The most values [`field_values`] returns at once.
pub const MAX_FIELD_VALUES: u64 = 50;

/// Why [`field_values`] answered nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ValuesError {
    /// The prefix is refused as a text filter of the same field is (control
    /// characters, too long), with the filter's message.
    #[error(transparent)]
    Prefix(#[from] FilterError),
    /// The limit is 0 or above [`MAX_FIELD_VALUES`].
    #[error("limit: between 1 and {MAX_FIELD_VALUES}")]
    Limit,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The values the store holds for a descriptive field (the filters'
/// autocomplete): distinct, non-empty, most frequent first, at most `limit`
/// (default 20, at most [`MAX_FIELD_VALUES`]); with a `prefix`, only values
/// starting with it, case-insensitively. The prefix is checked as a text
/// filter of that field is, so a NUL byte is refused with the same words.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use connexa_core::import::{import_into, ImportOptions};
/// use connexa_core::{ops, ports::ValueField, store::SqlStore};
/// use std::sync::Arc;
/// let db = std::env::temp_dir().join(format!("connexa-values-doc-{}.db", std::process::id()));
/// let store = Arc::new(SqlStore::connect(&format!("sqlite://{}?mode=rwc", db.display())).await.unwrap());
/// let list = "127.0.0.5:a:p:US:TX:75001\n127.0.0.6:a:p:US:CA:90001\n127.0.0.7:a:p:DE:Bavaria:80331\n";
/// import_into(store.clone(), list.as_bytes(), ImportOptions::default()).await;
/// let v = ops::field_values(store.as_ref(), ValueField::Country, None, None).await.unwrap();
/// assert_eq!((v[0].value.as_str(), v[0].count), ("United States", 2));
/// let v = ops::field_values(store.as_ref(), ValueField::State, Some("ca"), None).await.unwrap();
/// assert_eq!(v[0].value, "California");
/// assert!(ops::field_values(store.as_ref(), ValueField::City, Some("\0"), None).await.is_err());
/// # drop(store); let _ = std::fs::remove_file(&db);
/// # }
/// ```
pub async fn field_values(
    store: &dyn NodeStore,
    field: ValueField,
    prefix: Option<&str>,
    limit: Option<u64>,
) -> Result<Vec<FieldValue>, ValuesError> {
    let limit = limit.unwrap_or(20);
    if !(1..=MAX_FIELD_VALUES).contains(&limit) {
        return Err(ValuesError::Limit);
    }
    let prefix = prefix.filter(|p| !p.is_empty()).map(str::to_owned);
    if let Some(p) = &prefix {
        let text = Some(p.clone());
        let probe = match field {
            ValueField::Provider => NodeFilter {
                provider: text,
                ..NodeFilter::all()
            },
            ValueField::Country => NodeFilter {
                country: text,
                ..NodeFilter::all()
            },
            ValueField::State => NodeFilter {
                state: text,
                ..NodeFilter::all()
            },
            ValueField::City => NodeFilter {
                city: text,
                ..NodeFilter::all()
            },
        };
        probe.validate()?;
    }
    Ok(store
        .field_values(field, prefix, limit)
        .await?
        .into_iter()
        .map(|(value, count)| FieldValue { value, count })
        .collect())
}

/// Changes to a node's descriptive fields: `None` keeps a field, `Some("")`
/// clears it, anything else sets it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetaPatch {
    /// Provider.
    pub provider: Option<String>,
    /// Country.
    pub country: Option<String>,
    /// State or region.
    pub state: Option<String>,
    /// City.
    pub city: Option<String>,
    /// Zip code.
    pub zipcode: Option<String>,
    /// Comment.
    pub comment: Option<String>,
}

impl MetaPatch {
    /// `true` when the patch changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == MetaPatch::default()
    }

    /// `meta` with the patch applied.
    pub fn apply_to(&self, mut meta: NodeMeta) -> NodeMeta {
        let set = |field: &mut Option<String>, v: &Option<String>| {
            if let Some(v) = v {
                let v = v.trim();
                *field = (!v.is_empty()).then(|| v.to_owned());
            }
        };
        set(&mut meta.provider, &self.provider);
        set(&mut meta.country, &self.country);
        set(&mut meta.state, &self.state);
        set(&mut meta.city, &self.city);
        set(&mut meta.zipcode, &self.zipcode);
        set(&mut meta.comment, &self.comment);
        meta
    }
}

/// Applies `patch` to a node's descriptive fields (never its identity or
/// status); returns the node as stored afterwards.
pub async fn edit_meta(
    store: &dyn NodeStore,
    id: NodeId,
    patch: &MetaPatch,
) -> Result<Node, StoreError> {
    let current = node(store, id).await?;
    let meta = patch.apply_to(current.meta);
    meta.check()?;
    store.update_meta(id, meta).await?;
    node(store, id).await
}

/// Counts of one status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StatusCount {
    /// The status.
    pub status: Status,
    /// Nodes in it.
    pub count: u64,
}

/// A job, with its progress.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobView {
    /// Identifier.
    pub id: JobId,
    /// What it does.
    pub kind: JobKind,
    /// Where it is.
    pub state: JobState,
    /// Number of items.
    pub total: u64,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// Item counts from committed rows.
    pub progress: Progress,
}

impl JobView {
    /// A job and its progress.
    pub fn new(job: &Job, progress: Progress) -> Self {
        JobView {
            id: job.id,
            kind: job.kind,
            state: job.state,
            total: job.total,
            created_at: job.created_at,
            finished_at: job.finished_at,
            progress,
        }
    }
}

/// What `connexa stats` shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Stats {
    /// All nodes.
    pub total: u64,
    /// Every status, in level order, zeros included.
    pub by_status: Vec<StatusCount>,
    /// Nodes with a service (`online` + `offline`).
    pub services_running: u64,
    /// `speed_ok` nodes whose service is wanted but has never come up: waiting
    /// for the reconciler, or failing to start (the reason is the node's
    /// `last_error`). A node that had a service keeps `online`/`offline` (the
    /// monitor moves it to `offline` when its service is gone) and counts in
    /// `services_running`.
    pub services_waiting: u64,
    /// The most recent job, if any.
    pub last_job: Option<JobView>,
}

/// Counts per status, services running, and the last job.
pub async fn stats(store: &dyn NodeStore) -> Result<Stats, StoreError> {
    let counts = store.counts().await?;
    let get = |s: Status| {
        counts
            .iter()
            .find(|(st, _)| *st == s)
            .map(|(_, n)| *n)
            .unwrap_or(0)
    };
    let by_status: Vec<StatusCount> = Status::ALL
        .into_iter()
        .map(|status| StatusCount {
            status,
            count: get(status),
        })
        .collect();
    let last_job = match store.jobs(1).await?.into_iter().next() {
        Some(job) => {
            let progress = store.progress(job.id).await?;
            Some(JobView::new(&job, progress))
        }
        None => None,
    };
    let services_waiting = services_waiting(store).await?;
    Ok(Stats {
        total: by_status.iter().map(|c| c.count).sum(),
        services_running: get(Status::Online) + get(Status::Offline),
        services_waiting,
        by_status,
        last_job,
    })
}

/// `speed_ok` nodes whose service is wanted but has not come up
/// ([`Stats::services_waiting`]).
pub async fn services_waiting(store: &dyn NodeStore) -> Result<u64, StoreError> {
    let waiting = NodeFilter {
        statuses: vec![Status::SpeedOk],
        service_wanted: Some(true),
        ..NodeFilter::all()
    };
    let page = Page {
        limit: 0,
        ..Page::default()
    };
    Ok(store.list(&waiting, page).await?.total)
}

/// A running service, as shown (password masked unless revealed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServiceView {
    /// `socks` or `tun`.
    pub kind: crate::domain::ServiceKind,
    /// For a `tun` service: the name of its network interface (`cx<node id>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// Host (for a `tun` service: the interface name).
    pub host: String,
    /// Port.
    pub port: u16,
    /// SOCKS5 user name.
    pub username: String,
    /// SOCKS5 password, or `***`.
    pub password: String,
    /// The counters the process running the service last recorded (see
    /// [`service_counters`]); absent where not looked up (node lists) or
    /// none was recorded yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counters: Option<ServiceCounters>,
    /// The worker it is placed on (PostgreSQL placement; absent on SQLite
    /// and where not looked up): `host` and `port` are that worker's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
}

/// A node, as shown and printed as JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeView {
    /// Identifier.
    pub id: NodeId,
    /// Address.
    pub ip: String,
    /// Control port.
    pub port: u16,
    /// Login.
    pub login: String,
    /// The password, or `***` unless revealed.
    pub password: String,
    /// Status.
    pub status: Status,
    /// Its level of evidence.
    pub level: Level,
    /// Provider.
    pub provider: Option<String>,
    /// Country.
    pub country: Option<String>,
    /// State or region.
    pub state: Option<String>,
    /// City.
    pub city: Option<String>,
    /// Zip code.
    pub zip: Option<String>,
    /// Comment.
    pub comment: Option<String>,
    /// Last test.
    pub last_checked_at: Option<DateTime<Utc>>,
    /// Last failure.
    pub last_error: Option<String>,
    /// Failed tests in a row.
    pub consecutive_failures: u32,
    /// Latency.
    pub ping_ms: Option<f64>,
    /// Download speed.
    pub speed_down_mbps: Option<f64>,
    /// Upload speed.
    pub speed_up_mbps: Option<f64>,
    /// What the server announced.
    pub pptp: Option<PptpIdentity>,
    /// The address the node's traffic leaves from, as the keyed speed
    /// endpoint saw it (websites see this one; GEO and fraud describe it).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub exit_ip: Option<std::net::IpAddr>,
    /// The running service.
    pub service: Option<ServiceView>,
    /// Whether a service is wanted.
    pub service_wanted: bool,
    /// The kind of service wanted (`socks` or `tun`).
    pub service_kind: crate::domain::ServiceKind,
    /// The last GEO lookup of the node's address (`connexa test geo`):
    /// where it really is, its ASN, and whether the seller's location differs.
    pub geo: Option<crate::domain::GeoRecord>,
    /// The last fraud score of the node's address (`connexa test fraud`, or
    /// imported from a seller's Scamalytics line).
    pub fraud: Option<crate::domain::FraudRecord>,
    /// Imported.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

impl NodeView {
    /// The view of `node`; passwords (the node's and its service's) are `***`
    /// unless `reveal`.
    pub fn new(node: &Node, reveal: bool) -> Self {
        let secret = |s: &crate::domain::Secret| {
            if reveal {
                s.expose().to_owned()
            } else {
                s.masked().to_owned()
            }
        };
        NodeView {
            id: node.id,
            ip: node.ip.to_string(),
            port: node.port,
            login: node.login.clone(),
            password: secret(&node.password),
            status: node.status,
            level: node.status.level(),
            provider: node.meta.provider.clone(),
            country: node.meta.country.clone(),
            state: node.meta.state.clone(),
            city: node.meta.city.clone(),
            zip: node.meta.zipcode.clone(),
            comment: node.meta.comment.clone(),
            last_checked_at: node.last_checked_at,
            last_error: node.last_error.clone(),
            consecutive_failures: node.consecutive_failures,
            ping_ms: node.ping_ms,
            speed_down_mbps: node.speed_down_mbps,
            speed_up_mbps: node.speed_up_mbps,
            pptp: node.pptp.clone(),
            exit_ip: node.exit_ip,
            service: node.service.as_ref().map(|s| ServiceView {
                kind: node.service_kind,
                interface: (node.service_kind == crate::domain::ServiceKind::Tun)
                    .then(|| s.host.clone()),
                host: s.host.clone(),
                port: s.port,
                username: s.username.clone(),
                // An openvpn service's secret is its profile's key: fetched
                // with `service profile`, never listed.
                password: if s.kind() == crate::domain::ServiceKind::Openvpn {
                    String::new()
                } else {
                    secret(&s.password)
                },
                counters: None,
                worker: None,
            }),
            service_wanted: node.service_wanted,
            service_kind: node.service_kind,
            geo: node.enrichment.geo.clone(),
            fraud: node.enrichment.fraud.clone(),
            created_at: node.created_at,
            updated_at: node.updated_at,
        }
    }
}

/// One status-history row, as shown.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HistoryView {
    /// When.
    pub at: DateTime<Utc>,
    /// Status before.
    pub from: Status,
    /// Status after (`null` for a deletion).
    pub to: Option<Status>,
    /// `tested`, `service_started`, ..., `deleted`.
    pub event: &'static str,
    /// For tests: the level reached.
    pub reached: Option<Level>,
    /// The failure, if any.
    pub failure: Option<Failure>,
    /// Why, in words.
    pub why: Option<String>,
    /// The job, if any.
    pub job: Option<JobId>,
}

impl From<&HistoryRow> for HistoryView {
    fn from(r: &HistoryRow) -> Self {
        HistoryView {
            at: r.at,
            from: r.from,
            to: r.to,
            event: r.event.as_str(),
            reached: r.reached,
            why: r
                .detail
                .clone()
                .or_else(|| r.failure.as_ref().map(|f| f.to_string())),
            failure: r.failure.clone(),
            job: r.job,
        }
    }
}

/// One row of an import that collided with a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Collision {
    /// The row's line.
    pub line: usize,
    /// The earlier line of the same input it collides with, if so.
    pub with_line: Option<usize>,
    /// The stored node it collides with, if so.
    pub with_node: Option<NodeId>,
}

impl Collision {
    fn new(line: usize, with: Existing) -> Self {
        let (with_line, with_node) = match with {
            Existing::Line(l) => (Some(l), None),
            Existing::Stored(id) => (None, Some(id)),
        };
        Collision {
            line,
            with_line,
            with_node,
        }
    }
}

/// An added row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AddedRow {
    /// The row's line.
    pub line: usize,
    /// The new node.
    pub id: NodeId,
}

/// A replaced node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReplacedView {
    /// The row's line.
    pub line: usize,
    /// The deleted node.
    pub old: NodeId,
    /// The node added instead.
    pub new: NodeId,
}

/// A row that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorRow {
    /// The row's line.
    pub line: usize,
    /// Why.
    pub reason: String,
    /// The row, password masked.
    pub text: String,
}

impl ErrorRow {
    fn new(e: &ImportError) -> Self {
        ErrorRow {
            line: e.line,
            reason: e.reason.to_string(),
            text: e.text.clone(),
        }
    }
}

/// An [`ImportReport`] as printed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ImportSummary {
    /// Where the rows came from (a file name or `-`).
    pub source: String,
    /// Added rows.
    pub added: Vec<AddedRow>,
    /// Replaced nodes.
    pub replaced: Vec<ReplacedView>,
    /// Duplicates (in the input or stored).
    pub duplicates: Vec<Collision>,
    /// Conflicts (same ip, port and login, another password), kept out.
    pub conflicts: Vec<Collision>,
    /// Unreadable rows.
    pub errors: Vec<ErrorRow>,
    /// Lines that hold no node (headers, sellers' names): not errors.
    pub ignored: Vec<ErrorRow>,
    /// Lines parsed but not inserted because the store failed.
    pub not_inserted: Vec<usize>,
    /// Why the import stopped early, if it did.
    pub failure: Option<String>,
}

impl ImportSummary {
    /// The summary of `report`, read from `source`.
    pub fn new(source: impl Into<String>, report: &ImportReport) -> Self {
        ImportSummary {
            source: source.into(),
            added: report
                .added
                .iter()
                .map(|(line, id)| AddedRow {
                    line: *line,
                    id: *id,
                })
                .collect(),
            replaced: report
                .replaced
                .iter()
                .map(|r| ReplacedView {
                    line: r.line,
                    old: r.old,
                    new: r.new,
                })
                .collect(),
            duplicates: report
                .duplicates
                .iter()
                .map(|d| Collision::new(d.line, d.of))
                .collect(),
            conflicts: report
                .conflicts
                .iter()
                .map(|c| Collision::new(c.line, c.with))
                .collect(),
            errors: report.errors.iter().map(ErrorRow::new).collect(),
            ignored: report.ignored.iter().map(ErrorRow::new).collect(),
            not_inserted: report.not_inserted.clone(),
            failure: report.failure.clone(),
        }
    }
}

/// What [`want_services`] changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceChange {
    /// `true` for a start (services wanted), `false` for a stop.
    pub wanted: bool,
    /// Nodes the selection matched.
    pub matched: u64,
    /// Nodes whose desired state changed, in id order.
    pub changed: Vec<NodeId>,
    /// Nodes that already were in the desired state.
    pub unchanged: u64,
    /// For a start: matching nodes left alone because they are not verified
    /// (services run only through `speed_ok`, `online` or `offline` nodes).
    pub not_verified: u64,
}

/// Pins the services of the selected nodes whose service is wanted to
/// `worker` (`connexa service start --on`): on PostgreSQL, placement puts
/// them on that worker only (moving them there once it is alive, waiting
/// while it is down). Returns the pinned node ids, in id order.
pub async fn pin_services(
    store: &dyn NodeStore,
    filter: &NodeFilter,
    worker: String,
) -> Result<Vec<NodeId>, StoreError> {
    let mut ids: Vec<NodeId> = all_matching(store, filter)
        .await?
        .into_iter()
        .filter(|n| n.service_wanted)
        .map(|n| n.id)
        .collect();
    ids.sort_unstable();
    store.pin_services(&ids, Some(worker)).await?;
    Ok(ids)
}

/// Requires `label` of the workers the selected wanted services are placed on
/// (`connexa service start --label`): on PostgreSQL they move to live
/// services workers with that label. Returns the labelled node ids, in id order.
pub async fn label_services(
    store: &dyn NodeStore,
    filter: &NodeFilter,
    label: String,
) -> Result<Vec<NodeId>, StoreError> {
    let mut ids: Vec<NodeId> = all_matching(store, filter)
        .await?
        .into_iter()
        .filter(|n| n.service_wanted)
        .map(|n| n.id)
        .collect();
    ids.sort_unstable();
    store.label_services(&ids, Some(label)).await?;
    Ok(ids)
}

/// Sets the desired service state (`service_wanted`) of the selected nodes and
/// says what changed. A start only marks verified nodes (level 3); a stop
/// clears every selected node. Nothing is started or stopped here: the engine's
/// reconciler (in `connexa run` or connexa-http) makes running services match.
pub async fn want_services(
    store: &dyn NodeStore,
    selection: &NodeFilter,
    wanted: bool,
) -> Result<ServiceChange, StoreError> {
    let matched = all_matching(store, selection).await?;
    let eligible: Vec<&Node> = matched
        .iter()
        .filter(|n| !wanted || n.status.is_verified())
        .collect();
    let changed: Vec<NodeId> = eligible
        .iter()
        .filter(|n| n.service_wanted != wanted)
        .map(|n| n.id)
        .collect();
    if !changed.is_empty() {
        // Only the nodes read above: a node imported meanwhile is not touched.
        let f = NodeFilter {
            statuses: if wanted {
                Status::VERIFIED.to_vec()
            } else {
                Vec::new()
            },
            ..NodeFilter::ids(changed.iter().copied())
        };
        store.set_service_wanted(&f, wanted).await?;
    }
    Ok(ServiceChange {
        wanted,
        matched: matched.len() as u64,
        unchanged: (eligible.len() - changed.len()) as u64,
        not_verified: (matched.len() - eligible.len()) as u64,
        changed,
    })
}

/// What [`want_service_kind`] changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KindChange {
    /// The kind asked for.
    pub kind: crate::domain::ServiceKind,
    /// Verified nodes whose desired kind changed, in id order.
    pub changed: Vec<NodeId>,
    /// Of those, the nodes whose running service of the other kind will be
    /// restarted as the new kind (a restart request, carried out by the
    /// reconciler of the process running it).
    pub restarting: Vec<NodeId>,
}

/// Sets the desired service kind (`socks`, `tun`) of the selected verified
/// nodes (`speed_ok`, `online`, `offline`) before a start. A node whose
/// running service is of another kind gets a restart request, so the
/// reconciler stops it and starts the new kind. Nothing starts here.
pub async fn want_service_kind(
    store: &dyn NodeStore,
    selection: &NodeFilter,
    kind: crate::domain::ServiceKind,
) -> Result<KindChange, StoreError> {
    let matched = all_matching(store, selection).await?;
    let changed: Vec<&Node> = matched
        .iter()
        .filter(|n| n.status.is_verified() && n.service_kind != kind)
        .collect();
    let ids: Vec<NodeId> = changed.iter().map(|n| n.id).collect();
    if ids.is_empty() {
        return Ok(KindChange {
            kind,
            changed: ids,
            restarting: Vec::new(),
        });
    }
    store
        .set_service_kind(&NodeFilter::ids(ids.iter().copied()), kind)
        .await?;
    let restarting: Vec<NodeId> = changed
        .iter()
        .filter(|n| {
            n.service.is_some()
                && n.service_wanted
                && matches!(n.status, Status::Online | Status::Offline)
        })
        .map(|n| n.id)
        .collect();
    if !restarting.is_empty() {
        store
            .request_service_restart(&restarting, Utc::now())
            .await?;
    }
    Ok(KindChange {
        kind,
        changed: ids,
        restarting,
    })
}

/// A running service as `connexa service list` shows it (credentials included:
/// they are what a client needs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunningService {
    /// The node it goes through.
    pub node: NodeId,
    /// The node's address.
    pub node_ip: String,
    /// `online` or `offline` (health check failing).
    pub status: Status,
    /// `socks` or `tun`.
    pub kind: crate::domain::ServiceKind,
    /// For a `tun` service: its network interface (`cx<node id>`).
    pub interface: Option<String>,
    /// Where the SOCKS5 listener is (for a `tun` service: the interface name).
    pub host: String,
    /// Its port.
    pub port: u16,
    /// RFC 1929 user name.
    pub username: String,
    /// RFC 1929 password.
    pub password: String,
    /// Whether the service is still wanted (a stop not yet carried out shows `false`).
    pub wanted: bool,
    /// The counters the process running it last recorded (`null`: none yet).
    pub counters: Option<ServiceCounters>,
    /// A restart asked for and not carried out yet (`connexa service restart`).
    pub restart_pending: bool,
    /// The worker it is placed on (PostgreSQL placement; `null` on SQLite,
    /// where the one process that reconciles runs every service): `host` and
    /// `port` are that worker's.
    pub worker: Option<String>,
    /// The worker it is pinned to (`connexa service start --on`), if any.
    pub pinned: Option<String>,
}

/// Why a node has no OpenVPN profile.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProfileError {
    /// The store failed (or the node does not exist: [`StoreError::NotFound`]).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The node runs no `openvpn` service (the message says what it runs).
    #[error("node {node} has no OpenVPN profile: {why}")]
    NoProfile {
        /// The node.
        node: NodeId,
        /// What it has instead.
        why: String,
    },
    /// The profile cannot be made (CA file, stored credentials).
    #[error(transparent)]
    Openvpn(#[from] crate::openvpn::OpenvpnError),
    /// Profiles of a selection: it matches no node, or some of its nodes run
    /// no `openvpn` service (the message names them, at most 20).
    #[error("no OpenVPN profiles: {0}")]
    Selection(String),
}

/// The `.ovpn` profile of `node`'s running `openvpn` service, with the CA
/// kept in `dir` (`[services] openvpn_dir`, see
/// [`Config::openvpn_dir`](crate::config::Config::openvpn_dir)). Made from
/// the stored endpoint, so any process can hand it out.
pub async fn service_profile(
    store: &dyn NodeStore,
    id: NodeId,
    dir: &std::path::Path,
) -> Result<String, ProfileError> {
    let n = node(store, id).await?;
    let no = |why: String| ProfileError::NoProfile { node: id, why };
    let ep = match (&n.service, n.status) {
        (Some(ep), Status::Online | Status::Offline) => ep,
        _ => {
            return Err(no(format!(
                "no service runs through it (status {}); `connexa service start --kind openvpn {id}` wants one",
                n.status.as_str()
            )));
        }
    };
    if ep.kind() != crate::domain::ServiceKind::Openvpn {
        return Err(no(format!(
            "its running service is a {} service, not openvpn",
            ep.kind()
        )));
    }
    let ca = crate::openvpn::ca_certificate(dir)?;
    Ok(crate::openvpn::profile(id, ep, &ca)?)
}

/// The `.ovpn` profiles of the nodes matching `filter` (see
/// [`service_profile`]), in node id order: one per node. Every matching node
/// must run an `openvpn` service; otherwise nothing is returned and the error
/// names the nodes that do not (at most 20).
pub async fn service_profiles(
    store: &dyn NodeStore,
    filter: &NodeFilter,
    dir: &std::path::Path,
) -> Result<Vec<(NodeId, String)>, ProfileError> {
    let nodes = all_matching(store, filter).await?;
    let without: Vec<NodeId> = nodes
        .iter()
        .filter(|n| {
            !matches!(n.status, Status::Online | Status::Offline)
                || n.service.as_ref().map(|s| s.kind()) != Some(crate::domain::ServiceKind::Openvpn)
        })
        .map(|n| n.id)
        .collect();
    if nodes.is_empty() || !without.is_empty() {
        let shown: Vec<String> = without.iter().take(20).map(ToString::to_string).collect();
        let more = without.len().saturating_sub(20);
        return Err(ProfileError::Selection(if nodes.is_empty() {
            "no node matches the selection".into()
        } else {
            format!(
                "{} of the {} selected nodes run no openvpn service ({}{}): select only nodes \
                     with one (`connexa service list`), or start one with `connexa service start \
                     --kind openvpn`",
                without.len(),
                nodes.len(),
                shown.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            )
        }));
    }
    let ca = crate::openvpn::ca_certificate(dir)?;
    nodes
        .iter()
        .filter_map(|n| n.service.as_ref().map(|ep| (n.id, ep)))
        .map(|(id, ep)| Ok((id, crate::openvpn::profile(id, ep, &ca)?)))
        .collect()
}

/// The services recorded as running (nodes `online` or `offline` with an
/// endpoint) among the nodes matching `filter`, in node id order.
pub async fn running_services(
    store: &dyn NodeStore,
    filter: &NodeFilter,
) -> Result<Vec<RunningService>, StoreError> {
    let f = NodeFilter {
        has_service: Some(true),
        ..filter.clone()
    };
    let nodes = all_matching(store, &f).await?;
    let ids: Vec<NodeId> = nodes.iter().map(|n| n.id).collect();
    let mut runtime = runtime_of(store, &ids).await?;
    let mut placed: std::collections::HashMap<NodeId, crate::ports::ServicePlacement> =
        if ids.is_empty() {
            Default::default()
        } else {
            store
                .service_placements()
                .await?
                .into_iter()
                .map(|p| (p.node, p))
                .collect()
        };
    Ok(nodes
        .into_iter()
        .filter_map(|n| {
            let s = n.service.as_ref()?;
            let rt = runtime.remove(&n.id);
            let place = placed.remove(&n.id);
            Some(RunningService {
                worker: place.as_ref().and_then(|p| p.worker.clone()),
                pinned: place.and_then(|p| p.pinned),
                node: n.id,
                node_ip: n.ip.to_string(),
                status: n.status,
                kind: n.service_kind,
                interface: (n.service_kind == crate::domain::ServiceKind::Tun)
                    .then(|| s.host.clone()),
                host: s.host.clone(),
                port: s.port,
                username: s.username.clone(),
                // An openvpn service's secret is its profile's key: see
                // [`service_profile`].
                password: if s.kind() == crate::domain::ServiceKind::Openvpn {
                    String::new()
                } else {
                    s.password.expose().to_owned()
                },
                wanted: n.service_wanted,
                restart_pending: rt
                    .as_ref()
                    .is_some_and(|r| r.restart_requested_at.is_some()),
                counters: rt.and_then(|r| r.counters),
            })
        })
        .collect())
}

async fn runtime_of(
    store: &dyn NodeStore,
    ids: &[NodeId],
) -> Result<std::collections::HashMap<NodeId, crate::ports::ServiceRuntime>, StoreError> {
    if ids.is_empty() {
        return Ok(Default::default());
    }
    Ok(store
        .service_runtime(ids)
        .await?
        .into_iter()
        .map(|r| (r.node, r))
        .collect())
}

/// The counters last recorded for the services of `nodes` (by the process
/// running them, at each reconciler and monitor pass and on stop), by node.
pub async fn service_counters(
    store: &dyn NodeStore,
    nodes: &[NodeId],
) -> Result<std::collections::HashMap<NodeId, ServiceCounters>, StoreError> {
    Ok(runtime_of(store, nodes)
        .await?
        .into_iter()
        .filter_map(|(id, r)| Some((id, r.counters?)))
        .collect())
}

/// Fills in the counters of the services of `views` ([`ServiceView::counters`]).
pub async fn with_service_counters(
    store: &dyn NodeStore,
    views: &mut [NodeView],
) -> Result<(), StoreError> {
    let ids: Vec<NodeId> = views
        .iter()
        .filter(|v| v.service.is_some())
        .map(|v| v.id)
        .collect();
    let mut counters = service_counters(store, &ids).await?;
    let mut placed: std::collections::HashMap<NodeId, String> = if ids.is_empty() {
        Default::default()
    } else {
        store
            .service_placements()
            .await?
            .into_iter()
            .filter_map(|p| Some((p.node, p.worker?)))
            .collect()
    };
    for v in views.iter_mut() {
        if let Some(s) = v.service.as_mut() {
            s.counters = counters.remove(&v.id);
            s.worker = placed.remove(&v.id);
        }
    }
    Ok(())
}

/// What [`restart_services`] asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RestartRequest {
    /// Nodes the selection matched.
    pub matched: u64,
    /// Nodes whose running service will be restarted (in id order): the
    /// reconciler of the process running it stops it and starts it again on
    /// its next pass, with the same port and credentials.
    pub restarting: Vec<NodeId>,
    /// Matching nodes with no running service (none recorded, or no longer
    /// wanted): nothing to restart.
    pub not_running: Vec<NodeId>,
}

/// Asks for a restart of the running services of the selected nodes (those
/// recorded as running — `online` or `offline` with an endpoint — and still
/// wanted). Nothing is restarted here: the request is recorded in the store,
/// and the reconciler of the process that runs the services (`connexa run`,
/// connexa-http) carries it out on its next pass (`connexa run --once`: now).
/// A node's status is never changed by a restart request.
pub async fn restart_services(
    store: &dyn NodeStore,
    selection: &NodeFilter,
) -> Result<RestartRequest, StoreError> {
    let matched = all_matching(store, selection).await?;
    let (restarting, not_running): (Vec<NodeId>, Vec<NodeId>) = {
        let mut r = Vec::new();
        let mut n = Vec::new();
        for node in &matched {
            let running = node.service.is_some()
                && node.service_wanted
                && matches!(node.status, Status::Online | Status::Offline);
            if running {
                r.push(node.id)
            } else {
                n.push(node.id)
            }
        }
        (r, n)
    };
    store
        .request_service_restart(&restarting, Utc::now())
        .await?;
    Ok(RestartRequest {
        matched: matched.len() as u64,
        restarting,
        not_running,
    })
}

/// The deepest test that can run here against one known-good node, and why
/// deeper ones cannot (see [`deepest_test`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TestPlan {
    /// The job to run: `light`, `auth` or `pipeline` (light, auth and speed).
    pub kind: JobKind,
    /// Why the next deeper test is skipped (`None` when the whole pipeline runs).
    pub skipped: Option<String>,
}

/// Finds the deepest test this process can run, by trying it on `sample` (a node
/// known to pass the light test, e.g. a healthy simulated node), marking nothing:
///
/// * the auth test needs `CAP_NET_RAW` (raw GRE) and a server that answers
///   logins: the sample must log in, or have its password rejected, within `budget`;
/// * the speed test needs a [`SpeedTester`](crate::ports::SpeedTester) (`None`
///   when this build has none) that measures the sample within `budget`.
///
/// The result is `pipeline` when both work, else `auth`, else `light`.
pub async fn deepest_test(
    prober: &dyn crate::ports::Prober,
    speed: Option<&dyn crate::ports::SpeedTester>,
    sample: &Node,
    budget: std::time::Duration,
) -> TestPlan {
    use crate::ports::ProbeDepth;
    let light = |why: String| TestPlan {
        kind: JobKind::Light,
        skipped: Some(why),
    };
    match tokio::time::timeout(budget, prober.probe(sample, ProbeDepth::Auth)).await {
        Err(_) => {
            return light(format!(
                "auth and speed tests skipped: a healthy node did not answer a login within {budget:?}"
            ));
        }
        Ok(Err(e)) => return light(format!("auth and speed tests skipped: {e}")),
        Ok(Ok(o))
            if o.reached >= Level::Auth
                || matches!(o.failure, Some(Failure::AuthRejected { .. })) => {}
        Ok(Ok(o)) => {
            let why = o
                .failure
                .map(|f| f.to_string())
                .unwrap_or_else(|| format!("reached only {:?}", o.reached));
            return light(format!(
                "auth and speed tests skipped: a healthy node does not answer logins ({why})"
            ));
        }
    }
    let auth = |why: String| TestPlan {
        kind: JobKind::Auth,
        skipped: Some(why),
    };
    let Some(speed) = speed else {
        return auth("speed test skipped: no speed tester was given".into());
    };
    match tokio::time::timeout(budget, speed.measure(sample)).await {
        Err(_) => auth(format!(
            "speed test skipped: measuring a healthy node did not finish within {budget:?}"
        )),
        Ok(Err(e)) => auth(format!("speed test skipped: {e}")),
        Ok(Ok(o))
            if o.reached >= Level::Speed || matches!(o.failure, Some(Failure::TooSlow { .. })) =>
        {
            TestPlan {
                kind: JobKind::Pipeline,
                skipped: None,
            }
        }
        Ok(Ok(o)) => auth(format!(
            "speed test skipped: a healthy node could not be measured ({})",
            o.failure
                .map(|f| f.to_string())
                .unwrap_or_else(|| format!("reached only {:?}", o.reached))
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::import::{ImportOptions, import_into};
    use crate::store::SqlStore;

    async fn temp_store() -> (tempfile::TempDir, Arc<SqlStore>) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        (dir, Arc::new(SqlStore::connect(&url).await.unwrap()))
    }

    async fn store_with(list: &'static str) -> (tempfile::TempDir, Arc<SqlStore>) {
        let (dir, store) = temp_store().await;
        let r = import_into(store.clone(), list.as_bytes(), ImportOptions::default()).await;
        assert!(r.failure.is_none());
        (dir, store)
    }

    #[tokio::test]
    async fn a_store_that_ignores_the_cursor_ends_the_walk_with_an_error() {
        let mut store = crate::ports::MockNodeStore::new();
        let page: Vec<Node> = (1..=3)
            .map(|i| {
                Node::added(
                    NodeId(i),
                    std::net::IpAddr::from([127, 0, 0, 1]),
                    1723,
                    "u",
                    crate::domain::Secret::new("p"),
                    Utc::now(),
                )
            })
            .collect();
        store
            .expect_list_page()
            .returning(move |_, _| Ok(page.clone()));
        let mut walk = NodeWalk::new(NodeFilter::all()).with_limit(3);
        assert_eq!(
            walk.next_page(&store).await.unwrap().map(|p| p.len()),
            Some(3)
        );
        let e = walk.next_page(&store).await.unwrap_err();
        assert!(e.to_string().contains("ignored the page cursor"), "{e}");
        assert!(walk.next_page(&store).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn edit_meta_patches_only_given_fields() {
        let (_dir, store) = store_with("127.0.0.5:admin:pw:US:Texas:75001\n").await;
        let patch = MetaPatch {
            city: Some("Austin".into()),
            zipcode: Some(String::new()),
            ..MetaPatch::default()
        };
        let n = edit_meta(store.as_ref(), NodeId(1), &patch).await.unwrap();
        assert_eq!(n.meta.city.as_deref(), Some("Austin"));
        assert_eq!(n.meta.zipcode, None);
        assert_eq!(n.meta.state.as_deref(), Some("Texas"));
        let e = edit_meta(store.as_ref(), NodeId(9), &patch)
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::NotFound(NodeId(9))));
    }

    #[tokio::test]
    async fn export_reads_past_one_page() {
        let mut list = String::new();
        for i in 0..(Page::MAX_LIMIT + 5) {
            list.push_str(&format!("127.0.{}.{}:u:p\n", i / 250, i % 250 + 1));
        }
        let (_dir, store) = temp_store().await;
        let r = import_into(
            store.clone(),
            std::io::Cursor::new(list),
            ImportOptions::default(),
        )
        .await;
        assert_eq!(r.added.len() as u64, Page::MAX_LIMIT + 5);
        let mut out = Vec::new();
        let n = export(
            store.as_ref(),
            &NodeFilter::all(),
            ExportFormat::Pptp,
            &mut out,
        )
        .await
        .unwrap();
        assert_eq!(n as u64, Page::MAX_LIMIT + 5);
        assert_eq!(
            out.iter().filter(|b| **b == b'\n').count() as u64,
            Page::MAX_LIMIT + 5
        );
    }

    #[tokio::test]
    async fn views_mask_passwords_unless_revealed() {
        let (_dir, store) = store_with("127.0.0.5:admin:s3cret\n").await;
        let n = node(store.as_ref(), NodeId(1)).await.unwrap();
        let masked = serde_json::to_string(&NodeView::new(&n, false)).unwrap();
        assert!(!masked.contains("s3cret") && masked.contains("\"password\":\"***\""));
        assert_eq!(NodeView::new(&n, true).password, "s3cret");
    }

    #[tokio::test]
    async fn delete_ids_names_the_missing_ones() {
        let (_dir, store) = store_with("127.0.0.5:a:b\n127.0.0.6:a:b\n").await;
        let d = delete_ids(store.as_ref(), &[NodeId(2), NodeId(7)])
            .await
            .unwrap();
        assert_eq!(
            d,
            Deleted {
                deleted: 1,
                missing: vec![NodeId(7)]
            }
        );
        assert_eq!(count(store.as_ref(), &NodeFilter::all()).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn stats_lists_every_status() {
        let (_dir, store) = store_with("127.0.0.5:a:b\n127.0.0.6:a:b\n").await;
        let s = stats(store.as_ref()).await.unwrap();
        assert_eq!(s.by_status.len(), Status::ALL.len());
        assert_eq!(
            s.by_status[0],
            StatusCount {
                status: Status::NotTested,
                count: 2
            }
        );
        assert!(s.last_job.is_none());
    }

    #[tokio::test]
    async fn want_services_marks_only_verified_nodes_and_says_what_changed() {
        let (_dir, store) = store_with("127.0.0.5:a:b\n127.0.0.6:a:b\n127.0.0.7:a:b\n").await;
        store
            .apply(
                NodeId(1),
                crate::domain::Event::Tested(crate::domain::Outcome::success(Level::Speed)),
                crate::ports::ApplyContext::now(),
            )
            .await
            .unwrap();
        let sel = NodeFilter::ids([NodeId(1), NodeId(2)]);
        let c = want_services(store.as_ref(), &sel, true).await.unwrap();
        assert_eq!(
            c,
            ServiceChange {
                wanted: true,
                matched: 2,
                changed: vec![NodeId(1)],
                unchanged: 0,
                not_verified: 1,
            }
        );
        assert!(
            node(store.as_ref(), NodeId(1))
                .await
                .unwrap()
                .service_wanted
        );
        assert!(
            !node(store.as_ref(), NodeId(2))
                .await
                .unwrap()
                .service_wanted
        );
        let again = want_services(store.as_ref(), &sel, true).await.unwrap();
        assert_eq!((again.changed.len(), again.unchanged), (0, 1));
        let stop = want_services(store.as_ref(), &NodeFilter::all(), false)
            .await
            .unwrap();
        assert_eq!(
            (stop.changed, stop.unchanged, stop.matched),
            (vec![NodeId(1)], 2, 3)
        );
        assert!(
            !node(store.as_ref(), NodeId(1))
                .await
                .unwrap()
                .service_wanted
        );
    }

    #[tokio::test]
    async fn running_services_carry_their_credentials() {
        use crate::domain::{Event, Outcome, Secret, ServiceEndpoint};
        let (_dir, store) = store_with("127.0.0.5:a:nodepw\n127.0.0.6:a:b\n").await;
        assert!(
            running_services(store.as_ref(), &NodeFilter::all())
                .await
                .unwrap()
                .is_empty()
        );
        let ctx = crate::ports::ApplyContext::now;
        store
            .apply(
                NodeId(2),
                Event::Tested(Outcome::success(Level::Speed)),
                ctx(),
            )
            .await
            .unwrap();
        store
            .apply(
                NodeId(2),
                Event::ServiceStarted(ServiceEndpoint {
                    host: "127.0.0.1".into(),
                    port: 20001,
                    username: "u".into(),
                    password: Secret::new("sockspw"),
                }),
                ctx(),
            )
            .await
            .unwrap();
        let list = running_services(store.as_ref(), &NodeFilter::all())
            .await
            .unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].node, NodeId(2));
        assert_eq!(list[0].status, Status::Online);
        assert_eq!(
            (list[0].port, list[0].password.as_str()),
            (20001, "sockspw")
        );
        let none = running_services(store.as_ref(), &NodeFilter::ids([NodeId(1)]))
            .await
            .unwrap();
        assert!(none.is_empty());
    }

    fn sample() -> Node {
        let now = Utc::now();
        Node::added(
            NodeId(0),
            std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 5)),
            1723,
            "u",
            crate::domain::Secret::new("p"),
            now,
        )
    }

    fn prober_answering(
        r: Result<crate::domain::Outcome, crate::ports::ProbeError>,
    ) -> crate::ports::MockProber {
        let mut p = crate::ports::MockProber::new();
        p.expect_probe()
            .withf(|_, d| *d == crate::ports::ProbeDepth::Auth)
            .returning(move |_, _| r.clone());
        p
    }

    #[tokio::test]
    async fn deepest_test_goes_as_deep_as_privileges_and_ports_allow() {
        use crate::domain::Outcome;
        use crate::ports::{MockSpeedTester, ProbeError};
        use std::time::Duration;
        let t = Duration::from_secs(1);
        let n = sample();
        // No CAP_NET_RAW: light, with the reason.
        let p = prober_answering(Err(ProbeError::NotPermitted("need CAP_NET_RAW".into())));
        let plan = deepest_test(&p, None, &n, t).await;
        assert_eq!(plan.kind, JobKind::Light);
        assert!(plan.skipped.unwrap().contains("need CAP_NET_RAW"));
        // A server that does not answer logins: light.
        let p = prober_answering(Ok(Outcome::failed(
            Level::Light,
            Failure::CallRejected { code: 2 },
        )));
        let plan = deepest_test(&p, None, &n, t).await;
        assert_eq!(plan.kind, JobKind::Light);
        assert!(plan.skipped.unwrap().contains("does not answer logins"));
        // Logins work (a rejected password counts: the server speaks MS-CHAPv2), no speed tester: auth.
        let rejected = Outcome::failed(
            Level::Light,
            Failure::AuthRejected {
                code: Some(691),
                message: String::new(),
            },
        );
        let p = prober_answering(Ok(rejected));
        let plan = deepest_test(&p, None, &n, t).await;
        assert_eq!(plan.kind, JobKind::Auth);
        assert!(plan.skipped.unwrap().contains("no speed tester"));
        // Both: the pipeline.
        let p = prober_answering(Ok(Outcome::success(Level::Auth)));
        let mut s = MockSpeedTester::new();
        s.expect_measure()
            .returning(|_| Ok(Outcome::success(Level::Speed)));
        let plan = deepest_test(&p, Some(&s), &n, t).await;
        assert_eq!(
            plan,
            TestPlan {
                kind: JobKind::Pipeline,
                skipped: None
            }
        );
        // A speed tester that cannot run: auth.
        let p = prober_answering(Ok(Outcome::success(Level::Auth)));
        let mut s = MockSpeedTester::new();
        s.expect_measure()
            .returning(|_| Err(ProbeError::Config("no test URL".into())));
        let plan = deepest_test(&p, Some(&s), &n, t).await;
        assert_eq!(plan.kind, JobKind::Auth);
        assert!(plan.skipped.unwrap().contains("no test URL"));
    }

    #[tokio::test]
    async fn deepest_test_gives_up_after_the_budget() {
        struct Hangs;
        #[async_trait::async_trait]
        impl crate::ports::Prober for Hangs {
            async fn probe(
                &self,
                _: &Node,
                _: crate::ports::ProbeDepth,
            ) -> Result<crate::domain::Outcome, crate::ports::ProbeError> {
                std::future::pending().await
            }
        }
        let budget = std::time::Duration::from_millis(200);
        let plan = deepest_test(&Hangs, None, &sample(), budget).await;
        assert_eq!(plan.kind, JobKind::Light);
        assert!(plan.skipped.unwrap().contains("within 200ms"));
    }
}
