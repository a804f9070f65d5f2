//! Service wants, pins, labels, kinds, profiles, counters and restarts.

use chrono::Utc;
use serde::Serialize;

use crate::domain::{Node, NodeFilter, NodeId, Status};
use crate::ports::all_matching;
use crate::ports::{NodeStore, ServiceCounters, StoreError};

use super::{NodeView, node};

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

/// Fills in the counters of the services of `views` ([`ServiceView::counters`](super::ServiceView::counters)).
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
