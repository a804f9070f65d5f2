//! The demo (feature `sim`): a simulated PPTP fleet on loopback, its node list
//! imported into a store, the deepest test this machine can run against it
//! planned, and a SOCKS5 service tried through a node that passed the speed
//! test. `connexa demo` is this plus the progress bar and the printing.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::{OpsError, TestPlan, all_matching, deepest_test, want_services};
use crate::domain::{NodeFilter, NodeId, Status};
use crate::engine::Engine;
use crate::export::ExportFormat;
use crate::import::{Existing, ImportOptions, import_into};
use crate::ports::{JobKind, NodeStore, Prober, SpeedTester};
use crate::sim::{Behaviour, Fleet, FleetSpec, SimError, TUNNEL_HOST, TunnelSpec};
use crate::socks::client as socks_client;
use crate::socks::proto::TargetAddr;
use crate::speed::keyed::SpeedKey;

/// Bytes per second each simulated node's tunnel serves (4 Mbit/s).
pub const DEMO_RATE: u64 = 500_000;

/// What the demo fetches through a started SOCKS5 service, bytes.
pub const DEMO_FETCH_BYTES: u64 = 1_000_000;

/// The default behaviour mix of the demo fleet.
pub const DEFAULT_MIX: &str = "healthy=70,refused=10,silent=10,garbage=5,wrong=5";

/// What fleet to simulate.
#[derive(Debug, Clone)]
pub struct DemoSpec {
    /// Number of nodes.
    pub nodes: usize,
    /// Behaviours and their weights.
    pub mix: Vec<(Behaviour, u32)>,
    /// Address of the first node (in 127.0.0.0/8).
    pub first_ip: Ipv4Addr,
    /// Control port of every node.
    pub port: u16,
    /// The speed test's key: nodes that log in serve the keyed byte stream
    /// the speed tester verifies ([`runtime::speed_key`](crate::runtime::speed_key)).
    pub speed_key: Option<SpeedKey>,
}

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DemoError {
    /// The fleet's addresses are taken.
    #[error(
        "cannot start the simulated fleet: {0} (choose other addresses with --first-ip or --port)"
    )]
    Bind(SimError),
    /// The fleet could not start otherwise.
    #[error("cannot start the simulated fleet: {0}")]
    Fleet(SimError),
    /// Writing the node list failed.
    #[error("writing the node list: {0}")]
    List(String),
    /// The import stopped.
    #[error("import stopped: {0}")]
    Import(String),
    /// The store failed.
    #[error(transparent)]
    Ops(#[from] OpsError),
}

/// A running demo fleet whose node list is imported.
pub struct DemoFleet {
    fleet: Fleet,
    /// The fleet's node list, in the `pptp` import format.
    pub list: Vec<u8>,
    /// The store's ids of the fleet's nodes (added now or by an earlier demo).
    pub ids: Vec<NodeId>,
    /// How many of them this import added.
    pub added: usize,
    /// Nodes per behaviour name.
    pub mix: BTreeMap<String, usize>,
    /// The first and the last node's address.
    pub first_ip: Ipv4Addr,
    /// The last node's address.
    pub last_ip: Ipv4Addr,
}

impl std::fmt::Debug for DemoFleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DemoFleet")
            .field("nodes", &self.ids.len())
            .field("mix", &self.mix)
            .finish_non_exhaustive()
    }
}

/// A service tried through a node that passed the speed test.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DemoService {
    /// The node.
    pub node: NodeId,
    /// Its address.
    pub ip: std::net::IpAddr,
    /// What happened: the proxy and what it fetched, or why it failed.
    pub result: Result<DemoFetch, String>,
}

/// What the demo fetched through a SOCKS5 service.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DemoFetch {
    /// The proxy's host.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// Its user name (the password is not kept).
    pub username: String,
    /// Body bytes received.
    pub fetched_bytes: usize,
    /// How long the fetch took.
    pub seconds: f64,
}

impl DemoFleet {
    /// Starts the fleet (each node that logs in also brings a tunnel up, with
    /// an HTTP byte source behind it at [`DEMO_RATE`]) and imports its list
    /// into `store`; nodes of an earlier demo run are found again.
    pub async fn start(spec: DemoSpec, store: Arc<dyn NodeStore>) -> Result<Self, DemoError> {
        let fleet = Fleet::start(
            FleetSpec::new(spec.nodes)
                .mix(spec.mix)
                .first_ip(spec.first_ip)
                .port(spec.port)
                .tunnels(TunnelSpec {
                    rate_limit: Some(DEMO_RATE),
                    speed_key: spec.speed_key,
                }),
        )
        .await
        .map_err(|e| match e {
            e @ SimError::Bind { .. } => DemoError::Bind(e),
            e => DemoError::Fleet(e),
        })?;
        let mut mix: BTreeMap<String, usize> = BTreeMap::new();
        for n in fleet.nodes() {
            *mix.entry(n.behaviour.to_string()).or_default() += 1;
        }
        let last_ip = fleet.nodes().last().map_or(spec.first_ip, |n| n.ip);
        let mut list = Vec::new();
        fleet
            .write_list(ExportFormat::Pptp, &mut list)
            .map_err(|e| DemoError::List(e.to_string()))?;
        let report = import_into(store, Cursor::new(list.clone()), ImportOptions::default()).await;
        if let Some(why) = report.failure {
            return Err(DemoError::Import(why));
        }
        let mut ids: Vec<NodeId> = report.added_ids();
        ids.extend(report.duplicates.iter().filter_map(|d| match d.of {
            Existing::Stored(id) => Some(id),
            Existing::Line(_) => None,
        }));
        ids.sort_unstable();
        ids.dedup();
        Ok(DemoFleet {
            fleet,
            list,
            ids,
            added: report.added.len(),
            mix,
            first_ip: spec.first_ip,
            last_ip,
        })
    }

    /// The deepest test this machine can run against the fleet, tried on
    /// one healthy node (light alone when the mix has none).
    pub async fn plan(&self, prober: &dyn Prober, speed: &dyn SpeedTester) -> TestPlan {
        let Some(sim) = self
            .fleet
            .nodes()
            .iter()
            .find(|n| n.behaviour == Behaviour::Healthy)
        else {
            return TestPlan {
                kind: JobKind::Light,
                skipped: Some(
                    "auth and speed tests skipped: the mix has no healthy node to try them on"
                        .into(),
                ),
            };
        };
        deepest_test(
            prober,
            Some(speed),
            &sim.node(NodeId(0)),
            Duration::from_secs(5),
        )
        .await
    }

    /// Starts a SOCKS5 service through the first of the fleet's nodes that
    /// passed the speed test (through the engine's reconciler, as `connexa
    /// service start` and `connexa run` would), fetches
    /// [`DEMO_FETCH_BYTES`] from the simulator's tunnel host through it, and
    /// stops it again. `None`: no node passed the speed test.
    pub async fn try_service(&self, engine: &Engine) -> Option<DemoService> {
        let store = engine.store().as_ref();
        let nodes = all_matching(store, &NodeFilter::ids(self.ids.iter().copied()))
            .await
            .ok()?;
        let node = nodes.iter().find(|n| n.status == Status::SpeedOk)?;
        let one = NodeFilter::ids([node.id]);
        let fetched = async {
            want_services(store, &one, true)
                .await
                .map_err(|e| e.to_string())?;
            engine.reconcile().await.map_err(|e| e.to_string())?;
            fetch_through(store, node.id).await
        }
        .await;
        // Stopped again: the demo leaves no service wanted behind.
        let stopped = async {
            want_services(store, &one, false)
                .await
                .map_err(|e| e.to_string())?;
            engine.reconcile().await.map_err(|e| e.to_string())?;
            Ok::<(), String>(())
        }
        .await;
        let result = match (fetched, stopped) {
            (Ok(f), Ok(())) => Ok(f),
            (Err(e), _) | (Ok(_), Err(e)) => Err(e),
        };
        Some(DemoService {
            node: node.id,
            ip: node.ip,
            result,
        })
    }

    /// Stops the fleet.
    pub async fn close(self) {
        self.fleet.close().await;
    }
}

/// Fetches [`DEMO_FETCH_BYTES`] through `node`'s running service.
async fn fetch_through(store: &dyn NodeStore, node: NodeId) -> Result<DemoFetch, String> {
    let started = store
        .get(node)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("node #{node} vanished"))?;
    let ep = started.service.clone().ok_or_else(|| {
        format!(
            "the service did not start: {}",
            started
                .last_error
                .as_deref()
                .unwrap_or("no reason recorded")
        )
    })?;
    let t0 = std::time::Instant::now();
    let proxy = std::net::SocketAddr::new(
        ep.host
            .parse()
            .map_err(|e| format!("the service's host {:?}: {e}", ep.host))?,
        ep.port,
    );
    let io = |e: std::io::Error| format!("through the proxy: {e}");
    let mut s = socks_client::connect(
        proxy,
        &ep.username,
        ep.password.expose(),
        &TargetAddr::Ip((TUNNEL_HOST, 80).into()),
        Duration::from_secs(10),
    )
    .await
    .map_err(|e| format!("SOCKS5 connect: {e}"))?;
    s.write_all(
        format!(
            "GET /bytes?{DEMO_FETCH_BYTES} HTTP/1.1\r\nHost: {TUNNEL_HOST}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .map_err(io)?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut response))
        .await
        .map_err(|_| "the fetch took over 30 s".to_owned())?
        .map_err(io)?;
    let body = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(0, |i| response.len() - i - 4);
    Ok(DemoFetch {
        host: ep.host.clone(),
        port: ep.port,
        username: ep.username.clone(),
        fetched_bytes: body,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// How many of `ids` are in each status, in [`Status::ALL`] order (statuses
/// no node has are left out).
pub async fn status_counts(
    store: &dyn NodeStore,
    ids: &[NodeId],
) -> Result<Vec<(Status, u64)>, OpsError> {
    let mut by_status = std::collections::HashMap::new();
    for n in all_matching(store, &NodeFilter::ids(ids.iter().copied())).await? {
        *by_status.entry(n.status).or_insert(0u64) += 1;
    }
    Ok(Status::ALL
        .iter()
        .filter_map(|s| by_status.get(s).map(|n| (*s, *n)))
        .collect())
}
