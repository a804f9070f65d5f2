//! The ports: the traits the engine is generic over. Frontends and tests plug in
//! implementations as `Arc<dyn Trait>`.
//!
//! With the `mocks` feature (and in this crate's own tests) each trait has a
//! mockall mock: `MockNodeStore`, `MockProber`, `MockSpeedTester`, `MockServiceLauncher`.

use std::fmt;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::{
    Event, EventKind, NewNode, Node, NodeFilter, NodeId, NodeMeta, Outcome, Page, Refused,
    ServiceEndpoint, Status,
};

/// Identifier of a job (a batch test, an import, a service start or stop).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub i64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

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

/// One row of a node's status history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRow {
    /// The node.
    pub node: NodeId,
    /// Status before.
    pub from: Status,
    /// Status after.
    pub to: Status,
    /// What happened.
    pub event: EventKind,
    /// Why, in words (the failure, if any).
    pub detail: Option<String>,
    /// The job, if any.
    pub job: Option<JobId>,
    /// When.
    pub at: DateTime<Utc>,
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
    /// The database failed.
    #[error("database error: {0}")]
    Backend(String),
}

/// Persistence of nodes and their history. `apply` is the only method that
/// changes a node's status.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait NodeStore: Send + Sync {
    /// In one transaction: read the node's status, compute
    /// [`transition`](crate::domain::transition), write the new status and the
    /// event's evidence, and append a history row. A refused event writes nothing
    /// and returns [`StoreError::Refused`].
    async fn apply(
        &self,
        node: NodeId,
        event: Event,
        ctx: ApplyContext,
    ) -> Result<Applied, StoreError>;

    /// One node.
    async fn get(&self, node: NodeId) -> Result<Option<Node>, StoreError>;

    /// Nodes matching `filter`, one page of them, with the total count.
    async fn list(&self, filter: &NodeFilter, page: Page) -> Result<NodePage, StoreError>;

    /// Inserts nodes as `not_tested`; one outcome per input row, in order.
    async fn insert(&self, nodes: Vec<NewNode>) -> Result<Vec<InsertOutcome>, StoreError>;

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

    /// A node's status history, oldest first.
    async fn history(&self, node: NodeId) -> Result<Vec<HistoryRow>, StoreError>;

    /// Number of nodes per status (statuses with no node are omitted).
    async fn counts(&self) -> Result<Vec<(Status, u64)>, StoreError>;
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
        let node = crate::domain::Node {
            id: NodeId(1),
            ip: "127.0.0.1".parse().unwrap(),
            port: 1723,
            login: "a".into(),
            password: "b".into(),
            meta: NodeMeta::default(),
            status: Status::NotTested,
            last_checked_at: None,
            last_error: None,
            consecutive_failures: 0,
            ping_ms: None,
            speed_down_mbps: None,
            speed_up_mbps: None,
            pptp: None,
            service: None,
            service_wanted: false,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        };
        let out = prober.probe(&node, ProbeDepth::Light).await.unwrap();
        assert_eq!(out.reached, Level::Light);
        let _store: Option<Arc<dyn NodeStore>> = None::<Arc<MockNodeStore>>.map(|s| s as _);
        let _speed: Option<Arc<dyn SpeedTester>> = None::<Arc<MockSpeedTester>>.map(|s| s as _);
        let _svc: Option<Arc<dyn ServiceLauncher>> =
            None::<Arc<MockServiceLauncher>>.map(|s| s as _);
    }
}
