//! [`TunLauncher`]: the [`ServiceLauncher`] of `tun` services.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::io;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::task::JoinHandle;

use super::{NEED_CAP_NET_ADMIN, has_cap_net_admin, interface_name};
use crate::domain::{Node, NodeId, Secret, ServiceEndpoint};
use crate::ports::{Health, ServiceCounters, ServiceError, ServiceLauncher};
use crate::service::{TunnelLink, TunnelOpener};
use crate::tunnel::{PacketError, PacketPath};

/// Settings of a [`TunLauncher`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunConfig {
    /// Interface names are `<prefix><node id>` (default `cx`).
    pub prefix: String,
    /// Datagrams queued per direction between the interface and the tunnel
    /// (beyond it they are dropped, as on any congested link). Default 256.
    pub queue: usize,
    /// Where the TUN clone device is. Default `/dev/net/tun`.
    pub device: std::path::PathBuf,
}

impl Default for TunConfig {
    fn default() -> Self {
        TunConfig {
            prefix: "cx".into(),
            queue: 256,
            device: "/dev/net/tun".into(),
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    /// Octets from the interface into the tunnel.
    up: AtomicU64,
    /// Octets from the tunnel out of the interface.
    down: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Counters {
    fn set_error(&self, e: String) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(e);
    }
}

struct Running {
    endpoint: ServiceEndpoint,
    name: String,
    local: Ipv4Addr,
    link: Arc<dyn TunnelLink>,
    pump: JoinHandle<String>,
    counters: Arc<Counters>,
    started_at: DateTime<Utc>,
}

/// Runs `tun` services (see the [module documentation](super)): one kernel
/// TUN interface per node, carrying the IPv4 datagrams of the node's tunnel.
///
/// The endpoint it returns names the interface in `host`; `port` is 0 and
/// there are no credentials.
pub struct TunLauncher {
    opener: Arc<dyn TunnelOpener>,
    config: TunConfig,
    services: Mutex<HashMap<NodeId, Running>>,
}

impl std::fmt::Debug for TunLauncher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunLauncher")
            .field("config", &self.config)
            .field("running", &self.lock().len())
            .finish_non_exhaustive()
    }
}

fn start_failed(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::StartFailed(e.to_string())
}

/// Whether an interface `name` exists in this thread's network namespace
/// (`/sys/class/net` shows the namespace sysfs was mounted in instead).
fn interface_exists(name: &str) -> bool {
    nix::net::if_::if_nametoindex(name).is_ok()
}

/// An interface `name` left over (a persistent TUN device, another run's):
/// deleted when it is a TUN device; anything else is not ours to touch. The
/// `ip` commands run on this thread (its network namespace); they are quick
/// and needed only after a crash left something behind.
fn remove_stale(name: &str) -> Result<(), ServiceError> {
    if !interface_exists(name) {
        return Ok(());
    }
    let run = |args: &[&str]| {
        std::process::Command::new("ip")
            .args(args)
            .output()
            .map_err(|e| start_failed(format!("cannot run `ip {}`: {e}", args.join(" "))))
    };
    let show = run(&["-d", "-o", "link", "show", "dev", name])?;
    if !String::from_utf8_lossy(&show.stdout).contains(" tun type tun ") {
        return Err(start_failed(format!(
            "an interface named {name} exists and is not a TUN device; not touching it \
             (remove it, or set [services] tun_prefix)"
        )));
    }
    tracing::warn!(interface = name, "deleting a stale TUN interface");
    let out = run(&["link", "delete", "dev", name])?;
    if !out.status.success() && interface_exists(name) {
        return Err(start_failed(format!(
            "cannot delete the stale interface {name}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Creates the interface: point-to-point `local` → `peer`, `mtu`, up.
fn create_device(
    name: &str,
    local: Ipv4Addr,
    peer: Option<Ipv4Addr>,
    mtu: u16,
) -> io::Result<tun_rs::AsyncDevice> {
    tun_rs::DeviceBuilder::new()
        .name(name)
        .packet_information(false)
        .mtu(mtu)
        .ipv4(local, 32u8, peer)
        .enable(true)
        .build_async()
}

/// Moves datagrams between the interface and the tunnel until one side ends;
/// returns why. Dropping the device (here, or when the task is aborted)
/// closes its descriptor, which removes the interface.
async fn pump(dev: tun_rs::AsyncDevice, mut path: PacketPath, counters: Arc<Counters>) -> String {
    let mut buf = vec![0u8; 65_536];
    loop {
        tokio::select! {
            r = dev.recv(&mut buf) => match r {
                Ok(n) => {
                    let d = buf.get(..n).unwrap_or_default();
                    match path.send(d) {
                        Ok(()) => {
                            counters.up.fetch_add(n as u64, Ordering::Relaxed);
                        }
                        Err(PacketError::Down(why)) => return format!("tunnel down: {why}"),
                        // IPv6, oversize, queue full: dropped like on a real link.
                        Err(e) => tracing::trace!(error = %e, "datagram from the interface dropped"),
                    }
                }
                Err(e) => return format!("reading the interface failed: {e}"),
            },
            p = path.recv() => match p {
                Some(p) => match dev.send(&p).await {
                    Ok(_) => {
                        counters.down.fetch_add(p.len() as u64, Ordering::Relaxed);
                    }
                    Err(e) => tracing::debug!(error = %e, "datagram to the interface dropped"),
                },
                None => return "tunnel down".into(),
            },
        }
    }
}

impl TunLauncher {
    /// A launcher that opens tunnels with `opener`.
    pub fn new(opener: Arc<dyn TunnelOpener>, config: TunConfig) -> Self {
        TunLauncher {
            opener,
            config,
            services: Mutex::new(HashMap::new()),
        }
    }

    /// The settings.
    pub fn config(&self) -> &TunConfig {
        &self.config
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Running>> {
        self.services.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The interface name of the node's running service.
    pub fn interface(&self, node: NodeId) -> Option<String> {
        self.lock().get(&node).map(|r| r.name.clone())
    }

    /// Our PPP address on the node's running service (the interface's
    /// address; it changes when the tunnel is brought up again).
    pub fn local_addr(&self, node: NodeId) -> Option<Ipv4Addr> {
        self.lock().get(&node).map(|r| r.local)
    }

    /// Checks the node's running service without acting on it: the tunnel
    /// answers an LCP Echo, the packet pump runs, the interface exists. The
    /// error says what is wrong (or that no service runs).
    pub async fn check(&self, node: NodeId) -> Result<(), String> {
        let (link, name, finished) = match self.lock().get(&node) {
            Some(r) => (Arc::clone(&r.link), r.name.clone(), r.pump.is_finished()),
            None => return Err("no service runs for this node in this process".into()),
        };
        if let Err(e) = link.alive().await {
            Err(format!("tunnel dead ({e})"))
        } else if finished {
            Err("the packet pump stopped".into())
        } else if !interface_exists(&name) {
            Err(format!("the interface {name} is gone"))
        } else {
            Ok(())
        }
    }

    /// Stops every service (for a graceful process exit).
    pub async fn stop_all(&self) {
        let all: Vec<Running> = self.lock().drain().map(|(_, r)| r).collect();
        futures::future::join_all(all.into_iter().map(retire)).await;
    }

    /// Checks what can be checked before a call is made.
    fn preflight(&self, name: &str) -> Result<(), ServiceError> {
        if has_cap_net_admin() == Some(false) {
            return Err(start_failed(format!(
                "a tun service needs {NEED_CAP_NET_ADMIN} to create the interface {name}, and this \
                 process lacks it (run connexa as root, or grant it: \
                 setcap cap_net_admin,cap_net_raw+ep $(command -v connexa))"
            )));
        }
        if !self.config.device.exists() {
            return Err(start_failed(format!(
                "a tun service needs {}, which does not exist (load the tun module: modprobe tun)",
                self.config.device.display()
            )));
        }
        Ok(())
    }

    async fn launch(&self, node: &Node) -> Result<Running, ServiceError> {
        let name = interface_name(&self.config.prefix, node.id).ok_or_else(|| {
            start_failed(format!(
                "the interface name {}{} is longer than 15 characters",
                self.config.prefix, node.id
            ))
        })?;
        self.preflight(&name)?;
        remove_stale(&name)?;
        let link = self.opener.open(node).await.map_err(start_failed)?;
        let path = match link.packet_path(self.config.queue) {
            Ok(p) => p,
            Err(e) => {
                link.close().await;
                return Err(start_failed(format!("the tunnel's packet path: {e}")));
            }
        };
        let (local, peer, mtu) = (path.local_addr(), path.peer_addr(), path.mtu());
        let dev = match create_device(&name, local, peer, mtu) {
            Ok(d) => d,
            Err(e) => {
                link.close().await;
                let why = if e.kind() == io::ErrorKind::PermissionDenied {
                    format!("needs {NEED_CAP_NET_ADMIN}: {e}")
                } else {
                    e.to_string()
                };
                return Err(start_failed(format!(
                    "cannot create the TUN interface {name}: {why}"
                )));
            }
        };
        let counters = Arc::new(Counters::default());
        let pump = tokio::spawn(pump(dev, path, Arc::clone(&counters)));
        tracing::info!(node = %node.id, interface = %name, %local, ?peer, mtu, "tun service started");
        Ok(Running {
            endpoint: ServiceEndpoint {
                host: name.clone(),
                port: 0,
                username: String::new(),
                password: Secret::new(""),
            },
            name,
            local,
            link,
            pump,
            counters,
            started_at: Utc::now(),
        })
    }
}

/// Stops a service: the task (and with it the interface) first, then the tunnel.
async fn retire(r: Running) {
    r.pump.abort();
    // Wait until the task is gone: the device is closed then, so the
    // interface no longer exists when `stop` returns.
    let _ = r.pump.await;
    r.link.close().await;
}

fn counters_of(r: &Running) -> ServiceCounters {
    ServiceCounters {
        connections: 0,
        connections_total: 0,
        bytes_up: r.counters.up.load(Ordering::Relaxed),
        bytes_down: r.counters.down.load(Ordering::Relaxed),
        last_error: r
            .counters
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone(),
        started_at: Some(r.started_at),
    }
}

#[async_trait]
impl ServiceLauncher for TunLauncher {
    async fn start(
        &self,
        node: &Node,
        _previous: Option<ServiceEndpoint>,
    ) -> Result<ServiceEndpoint, ServiceError> {
        if let Some(r) = self.lock().get(&node.id) {
            return Ok(r.endpoint.clone());
        }
        let running = self.launch(node).await?;
        let endpoint = running.endpoint.clone();
        let raced = {
            let mut services = self.lock();
            match services.entry(node.id) {
                Entry::Occupied(_) => Some(running),
                Entry::Vacant(e) => {
                    e.insert(running);
                    None
                }
            }
        };
        if let Some(ours) = raced {
            // Cannot happen with distinct names per node unless two starts of
            // one node overlap; the interface name is taken then anyway.
            retire(ours).await;
            return Err(start_failed("another start of this service won"));
        }
        Ok(endpoint)
    }

    async fn stop(&self, node: NodeId) -> Result<(), ServiceError> {
        let running = self
            .lock()
            .remove(&node)
            .ok_or(ServiceError::NotRunning(node))?;
        let name = running.name.clone();
        retire(running).await;
        tracing::info!(%node, interface = %name, "tun service stopped");
        Ok(())
    }

    async fn health(&self, node: &Node) -> Health {
        let problem = match self.check(node.id).await {
            Ok(()) => return Health::Healthy,
            Err(p) => p,
        };
        let Some(counters) = self.lock().get(&node.id).map(|r| Arc::clone(&r.counters)) else {
            return Health::Unhealthy(problem);
        };
        counters.set_error(format!("health check: {problem}"));
        // Bring the service up again (same interface name), once per check.
        let Some(old) = self.lock().remove(&node.id) else {
            return Health::Unhealthy(format!("{problem}; the service was stopped"));
        };
        let name = old.name.clone();
        // In its own task: the monitor's time limit on this check must not cut
        // the clean-up short (a tunnel dropped without being closed).
        let _ = tokio::spawn(retire(old)).await;
        match self.launch(node).await {
            Ok(new) => {
                let lost = {
                    let mut services = self.lock();
                    match services.entry(node.id) {
                        Entry::Occupied(_) => Some(new),
                        Entry::Vacant(e) => {
                            e.insert(new);
                            None
                        }
                    }
                };
                if let Some(new) = lost {
                    retire(new).await;
                }
                tracing::info!(node = %node.id, interface = %name, "tun service restarted: {problem}");
                Health::Healthy
            }
            Err(e) => Health::Unhealthy(format!("{problem}; starting it again failed: {e}")),
        }
    }

    async fn running(&self) -> Vec<NodeId> {
        self.lock().keys().copied().collect()
    }

    fn counters(&self, node: NodeId) -> Option<ServiceCounters> {
        self.lock().get(&node).map(counters_of)
    }
}
