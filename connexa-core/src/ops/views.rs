//! The JSON views of nodes, jobs, history and the fleet's statistics.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::domain::{Failure, Level, Node, NodeFilter, NodeId, Page, PptpIdentity, Status};
use crate::ports::{
    HistoryRow, Job, JobId, JobKind, JobState, NodeStore, Progress, ServiceCounters, StoreError,
};

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
    /// `ops::service_counters`); absent where not looked up (node lists) or
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
