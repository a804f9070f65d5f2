//! [`SocksLauncher`]: the [`ServiceLauncher`] that runs one SOCKS5 listener per
//! service, its outbound connections going through the node's tunnel.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;

use super::proto::TargetAddr;
use super::server::{ServerHandle, ServerOptions, ServiceStats, Shared, connect_target};
use crate::domain::{Node, NodeId, Secret, ServiceEndpoint};
use crate::ports::{Health, ServiceCounters, ServiceError, ServiceLauncher};
use crate::service::{TunnelLink, TunnelOpener};

/// Settings of a [`SocksLauncher`]; `SocksConfig::from_services` (in
/// [`runtime`](crate::runtime)) builds them from the `[services]` section of
/// the configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocksConfig {
    /// Address the listeners bind to. Default `127.0.0.1`.
    pub bind: IpAddr,
    /// Host name or address clients are told to use (stored in the endpoint and
    /// exported). Default: `bind` as text — set it when `bind` is a wildcard
    /// address (`0.0.0.0`, `::`), which clients cannot connect to.
    pub public_host: Option<String>,
    /// Lowest port given to a service.
    pub port_min: u16,
    /// Highest port given to a service.
    pub port_max: u16,
    /// Limits and timeouts of each service.
    pub server: ServerOptions,
    /// The health check connects through the tunnel to this target; `None`:
    /// the check is only the tunnel's liveness (LCP echo).
    pub check_target: Option<TargetAddr>,
}

impl Default for SocksConfig {
    /// `127.0.0.1`, ports 20000–29999, the [`ServerOptions`] defaults, no
    /// health-check target: the defaults of the `[services]` section.
    fn default() -> Self {
        SocksConfig {
            bind: IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            public_host: None,
            port_min: 20000,
            port_max: 29999,
            server: ServerOptions::default(),
            check_target: None,
        }
    }
}

impl SocksConfig {
    /// The host name or address clients are told to use.
    pub(crate) fn host(&self) -> String {
        self.public_host
            .clone()
            .unwrap_or_else(|| self.bind.to_string())
    }
}

struct Running {
    endpoint: ServiceEndpoint,
    shared: Arc<Shared>,
    server: ServerHandle,
}

/// Runs SOCKS5 services (RFC 1928 CONNECT, RFC 1929 username/password required)
/// whose outbound connections go through nodes' tunnels.
///
/// * **start**: binds a listener on [`SocksConfig::bind`] and a port of the
///   configured range (the `previous` endpoint's port when it is free, so a
///   restarted process serves on the same port), opens the node's tunnel with
///   the [`TunnelOpener`], and serves. Credentials are the previous ones, or
///   new random ones (user name 16 and password 24 alphanumeric characters).
/// * **health**: the tunnel answers (LCP echo) and a CONNECT through it to the
///   check target succeeds. A dead tunnel is opened again once per check, so
///   a node that comes back gets its service back.
/// * **stop**: closes the listener (the port is free when `stop` returns),
///   lets open connections finish for the drain timeout, closes the tunnel.
///
/// The engine's reconciler starts the services with a stored endpoint before
/// the new ones, so after a restart a new service cannot take a stored port
/// first; fresh ports are tried from a random offset in the range.
pub struct SocksLauncher {
    opener: Arc<dyn TunnelOpener>,
    config: SocksConfig,
    services: Mutex<HashMap<NodeId, Running>>,
    /// The final counters of the services stopped so far (so totals never go back).
    retired: Mutex<ServiceStats>,
    /// Serializes port allocation (bind attempts) within the process.
    binding: Mutex<()>,
}

impl std::fmt::Debug for SocksLauncher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocksLauncher")
            .field("config", &self.config)
            .field("running", &self.lock().len())
            .finish_non_exhaustive()
    }
}

/// The alphabet of generated credentials.
const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// `len` characters of [`ALPHABET`] from the OS random source.
fn random_token(len: usize) -> Result<String, ServiceError> {
    let mut out = String::with_capacity(len);
    let mut bytes = [0u8; 64];
    while out.len() < len {
        getrandom::fill(&mut bytes)
            .map_err(|e| ServiceError::StartFailed(format!("no randomness: {e}")))?;
        // Rejection sampling: 248 = 4 * 62, so every character is equally likely.
        for b in bytes.iter().filter(|b| **b < 248) {
            if out.len() == len {
                break;
            }
            out.push(char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]));
        }
    }
    Ok(out)
}

fn usable_credential(s: &str) -> bool {
    !s.is_empty() && s.len() <= 255 && !s.chars().any(char::is_control)
}

fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    Ok(sock.into())
}

impl SocksLauncher {
    /// A launcher that opens tunnels with `opener`.
    pub fn new(opener: Arc<dyn TunnelOpener>, config: SocksConfig) -> Self {
        SocksLauncher {
            opener,
            config,
            services: Mutex::new(HashMap::new()),
            retired: Mutex::new(ServiceStats::default()),
            binding: Mutex::new(()),
        }
    }

    /// The settings.
    pub fn config(&self) -> &SocksConfig {
        &self.config
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Running>> {
        self.services.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The endpoint of the node's running service.
    pub fn endpoint(&self, node: NodeId) -> Option<ServiceEndpoint> {
        self.lock().get(&node).map(|r| r.endpoint.clone())
    }

    /// The counters of the node's running service.
    pub fn stats(&self, node: NodeId) -> Option<ServiceStats> {
        self.lock().get(&node).map(|r| r.shared.stats())
    }

    /// The counters of every service this launcher ran, running or stopped,
    /// added up (gauges: of the running ones).
    pub fn total_stats(&self) -> ServiceStats {
        let mut total = *self.retired.lock().unwrap_or_else(PoisonError::into_inner);
        for r in self.lock().values() {
            total.add(&r.shared.stats());
        }
        total
    }

    /// Adds [`total_stats`](Self::total_stats) to a scrape (`connexa_socks_*`,
    /// see [`ServiceStats::collect_into`]), then the counters of each running
    /// service, labelled with its node id (`connexa_service_connections`,
    /// `connexa_service_connections_total`,
    /// `connexa_service_bytes_total{direction="up|down"}`,
    /// `connexa_service_start_time_seconds`; one label set per running service).
    #[allow(clippy::cast_precision_loss)] // the format's values are f64
    pub fn collect_into(&self, e: &mut crate::metrics::Exposition) {
        use crate::metrics::MetricType;
        self.total_stats().collect_into(e);
        let mut per: Vec<(NodeId, ServiceCounters)> = self
            .lock()
            .iter()
            .map(|(id, r)| (*id, counters_of(&r.shared)))
            .collect();
        per.sort_by_key(|(id, _)| *id);
        let node = |id: &NodeId| vec![id.to_string()];
        e.family(
            "connexa_service_connections",
            "Client connections open now, per running SOCKS5 service (node id).",
            MetricType::Gauge,
            &["node"],
            per.iter().map(|(id, c)| (node(id), c.connections as f64)),
        );
        e.family(
            "connexa_service_connections_total",
            "Client connections accepted since the service started, per running SOCKS5 service (node id).",
            MetricType::Counter,
            &["node"],
            per.iter().map(|(id, c)| (node(id), c.connections_total as f64)),
        );
        e.family(
            "connexa_service_bytes_total",
            "Bytes relayed since the service started, per running SOCKS5 service (node id) and direction (up: client to target, down: target to client).",
            MetricType::Counter,
            &["node", "direction"],
            per.iter().flat_map(|(id, c)| {
                [("up", c.bytes_up), ("down", c.bytes_down)]
                    .map(|(dir, v)| (vec![id.to_string(), dir.to_owned()], v as f64))
            }),
        );
        e.family(
            "connexa_service_start_time_seconds",
            "When the running SOCKS5 service started (Unix seconds), per node id.",
            MetricType::Gauge,
            &["node"],
            per.iter().map(|(id, c)| {
                (
                    node(id),
                    c.started_at.map(|t| t.timestamp()).unwrap_or(0) as f64,
                )
            }),
        );
    }

    /// Stops every service (for a graceful process exit).
    pub async fn stop_all(&self) {
        let all: Vec<Running> = self.lock().drain().map(|(_, r)| r).collect();
        futures::future::join_all(all.into_iter().map(|r| self.retire(r))).await;
    }

    async fn retire(&self, r: Running) {
        let shared = Arc::clone(&r.shared);
        stop_running(r).await;
        let mut last = shared.stats();
        // Stopped: nothing is open any more.
        last.active = 0;
        last.preauth_active = 0;
        self.retired
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .add(&last);
    }

    /// Binds the previous port when given, in range and free, else the first free
    /// port of the range from a random offset.
    fn allocate(&self, previous: Option<u16>) -> Result<std::net::TcpListener, ServiceError> {
        let _g = self.binding.lock().unwrap_or_else(PoisonError::into_inner);
        let (min, max) = (self.config.port_min, self.config.port_max);
        let ip = self.config.bind;
        let fatal = |e: io::Error| ServiceError::StartFailed(format!("cannot listen on {ip}: {e}"));
        let prev = previous.filter(|p| (min..=max).contains(p));
        if let Some(p) = prev {
            match bind(SocketAddr::new(ip, p)) {
                Ok(l) => return Ok(l),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                    tracing::info!(
                        port = p,
                        "previous service port is taken; allocating another"
                    );
                }
                Err(e) => return Err(fatal(e)),
            }
        }
        let span = u32::from(max - min) + 1;
        let mut r = [0u8; 4];
        let _ = getrandom::fill(&mut r);
        let start = u32::from_le_bytes(r) % span;
        for i in 0..span {
            let offset = (start + i) % span;
            let Ok(p) = u16::try_from(u32::from(min) + offset) else {
                continue;
            };
            if Some(p) == prev {
                continue;
            }
            match bind(SocketAddr::new(ip, p)) {
                Ok(l) => return Ok(l),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
                Err(e) => return Err(fatal(e)),
            }
        }
        Err(ServiceError::StartFailed(format!(
            "no free port in {min}-{max} on {ip}"
        )))
    }
}

fn counters_of(shared: &Shared) -> ServiceCounters {
    let st = shared.stats();
    ServiceCounters {
        connections: st.active,
        connections_total: st.accepted,
        bytes_up: st.bytes_up,
        bytes_down: st.bytes_down,
        last_error: shared.last_error(),
        started_at: Some(shared.started_at()),
    }
}

async fn stop_running(r: Running) {
    let link = r.shared.link();
    r.server.shutdown().await;
    link.close().await;
}

#[async_trait]
impl ServiceLauncher for SocksLauncher {
    async fn start(
        &self,
        node: &Node,
        previous: Option<ServiceEndpoint>,
    ) -> Result<ServiceEndpoint, ServiceError> {
        if let Some(ep) = self.endpoint(node.id) {
            return Ok(ep);
        }
        let (user, password) = match &previous {
            Some(p) if usable_credential(&p.username) && usable_credential(p.password.expose()) => {
                (p.username.clone(), p.password.clone())
            }
            _ => (
                format!("cx{}", random_token(14)?),
                Secret::new(random_token(24)?),
            ),
        };
        let std_listener = self.allocate(previous.as_ref().map(|p| p.port))?;
        let listener = tokio::net::TcpListener::from_std(std_listener)
            .map_err(|e| ServiceError::StartFailed(format!("listener: {e}")))?;
        let port = listener
            .local_addr()
            .map_err(|e| ServiceError::StartFailed(format!("listener: {e}")))?
            .port();
        let link = self
            .opener
            .open(node)
            .await
            .map_err(|e| ServiceError::StartFailed(e.to_string()))?;
        let endpoint = ServiceEndpoint {
            host: self.config.host(),
            port,
            username: user.clone(),
            password: password.clone(),
        };
        let shared = Arc::new(Shared::new(
            link,
            user,
            password,
            self.config.server.clone(),
        ));
        let server = ServerHandle::spawn(listener, Arc::clone(&shared));
        let raced = {
            let mut services = self.lock();
            match services.get(&node.id) {
                Some(other) => Some(other.endpoint.clone()),
                None => {
                    services.insert(
                        node.id,
                        Running {
                            endpoint: endpoint.clone(),
                            shared: Arc::clone(&shared),
                            server,
                        },
                    );
                    None
                }
            }
        };
        if let Some(theirs) = raced {
            // Another start for the same node won; ours goes away.
            shared.link().close().await;
            return Ok(theirs);
        }
        tracing::info!(node = %node.id, port, "SOCKS5 service started");
        Ok(endpoint)
    }

    async fn stop(&self, node: NodeId) -> Result<(), ServiceError> {
        let running = self
            .lock()
            .remove(&node)
            .ok_or(ServiceError::NotRunning(node))?;
        self.retire(running).await;
        tracing::info!(%node, "SOCKS5 service stopped");
        Ok(())
    }

    async fn health(&self, node: &Node) -> Health {
        let Some(shared) = self.lock().get(&node.id).map(|r| Arc::clone(&r.shared)) else {
            return Health::Unhealthy("no service runs for this node in this process".into());
        };
        let h = self.check(node, &shared).await;
        if let Health::Unhealthy(why) = &h {
            shared.set_last_error(format!("health check: {why}"));
        }
        h
    }

    async fn running(&self) -> Vec<NodeId> {
        self.lock().keys().copied().collect()
    }

    fn counters(&self, node: NodeId) -> Option<ServiceCounters> {
        self.lock().get(&node).map(|r| counters_of(&r.shared))
    }
}

impl SocksLauncher {
    /// The health check of a running service (see [`ServiceLauncher::health`]).
    async fn check(&self, node: &Node, shared: &Shared) -> Health {
        let mut link: Arc<dyn TunnelLink> = shared.link();
        if let Err(dead) = link.alive().await {
            // The tunnel died (server restarted, network cut): bring up a new one.
            match self.opener.open(node).await {
                Ok(new) => {
                    let old = shared.replace_link(Arc::clone(&new));
                    old.close().await;
                    if !self.lock().contains_key(&node.id) {
                        // Stopped meanwhile: `stop` may have closed the old link only.
                        new.close().await;
                        return Health::Unhealthy("the service was stopped".into());
                    }
                    tracing::info!(node = %node.id, "tunnel reopened");
                    link = new;
                }
                Err(e) => {
                    return Health::Unhealthy(format!(
                        "tunnel dead ({dead}) and reopening it failed: {e}"
                    ));
                }
            }
            if let Err(e) = link.alive().await {
                return Health::Unhealthy(format!("reopened tunnel not alive: {e}"));
            }
        }
        if let Some(target) = &self.config.check_target {
            let opts = &self.config.server;
            let r = tokio::time::timeout(
                opts.connect_timeout,
                connect_target(link.as_ref(), target, opts.dns),
            )
            .await;
            match r {
                Ok(Ok(_stream)) => {}
                Ok(Err(e)) => {
                    return Health::Unhealthy(format!(
                        "check connection to {target} through the tunnel failed: {e}"
                    ));
                }
                Err(_) => {
                    return Health::Unhealthy(format!(
                        "check connection to {target} through the tunnel timed out"
                    ));
                }
            }
        }
        Health::Healthy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_alphanumeric() {
        let a = random_token(24).unwrap();
        let b = random_token(24).unwrap();
        assert_eq!(a.len(), 24);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }
}
