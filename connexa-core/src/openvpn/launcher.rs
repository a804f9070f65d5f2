//! [`OpenvpnLauncher`]: the [`ServiceLauncher`] of `openvpn` services.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::pki::Ca;
use super::{ClientCredentials, DATA_CIPHERS, OpenvpnConfig, net, server_name};
use crate::domain::{Node, NodeId, ServiceEndpoint, ServiceKind, Status};
use crate::ports::{Health, ServiceCounters, ServiceError, ServiceLauncher};
use crate::service::TunnelOpener;
use crate::tun::{NEED_CAP_NET_ADMIN, TunLauncher, has_cap_net_admin, interface_name};

fn start_failed(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::StartFailed(e.to_string())
}

/// One running service.
struct Running {
    endpoint: ServiceEndpoint,
    /// The node's tunnel interface (`cx7`).
    interface: String,
    /// The openvpn server's device (`cxv7`).
    device: String,
    /// The server process.
    child: Server,
    started_at: DateTime<Utc>,
}

/// The server process; dropping it ends the process.
struct Server(std::process::Child);

impl Server {
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.0.try_wait().ok().flatten()
    }

    /// SIGTERM (openvpn tells its client: explicit-exit-notify), then
    /// SIGKILL after `grace`; returns once the process is gone.
    async fn end(&mut self, grace: Duration) {
        if self.exited().is_some() {
            return;
        }
        let pid = self.0.id().to_string();
        let _ = net::run(Path::new("kill"), &["-TERM", &pid], None).await;
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// What a start claimed (port and subnet), until the service stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Claim {
    port: u16,
    subnet: Ipv4Addr,
}

/// A claim and the lock files that make it hold between processes on this
/// host (released when dropped, or when the process dies).
#[derive(Debug)]
struct Held {
    claim: Claim,
    service: File,
    port: File,
    subnet: File,
}

/// Removes `node`'s claim (releasing its lock files) when dropped while
/// armed: a start given up half-way (its future dropped by a time limit)
/// must not keep the node's locks for ever.
struct Unclaim<'a> {
    claims: &'a Mutex<HashMap<NodeId, Held>>,
    node: NodeId,
    armed: bool,
}

impl Drop for Unclaim<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.claims
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&self.node);
        }
    }
}

/// The file naming the process that runs a service (`<service dir>/owner`).
const OWNER: &str = "owner";

/// Whether a process runs with this pid.
fn pid_alive(pid: &str) -> bool {
    !pid.is_empty() && Path::new("/proc").join(pid).exists()
}

/// Whether the service in `dir` belongs to a live process: the one named in
/// its owner file; without one (written by an older Connexa), the parent of
/// the server named by its pid file, when that parent is not init.
fn owned_by_live_process(dir: &Path) -> bool {
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    let owner = read(OWNER);
    if !owner.is_empty() {
        return pid_alive(&owner);
    }
    let server = read("openvpn.pid");
    let ppid = std::fs::read_to_string(format!("/proc/{server}/stat"))
        .ok()
        .and_then(|st| {
            st.rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().nth(1).map(str::to_string))
        })
        .unwrap_or_default();
    !server.is_empty() && ppid != "1" && ppid != "0" && pid_alive(&ppid)
}

/// The directory of the lock files, under the launcher's directory.
const LOCKS: &str = "locks";

/// Takes the lock file `<dir>/locks/<name>` (an exclusive `flock`, which
/// the kernel drops with the process): `Ok(None)` when another process or
/// another claim of this one holds it.
fn try_lock(dir: &Path, name: &str) -> std::io::Result<Option<File>> {
    let locks = dir.join(LOCKS);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&locks)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(locks.join(name))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

fn service_lock(node: NodeId) -> String {
    format!("service-{}", node.0)
}

/// The user and group an openvpn server started as root drops to once it
/// is up (`user`/`group`, with `persist-key`/`persist-tun`): `nobody` and
/// `nogroup` (or `nobody`) when they exist. `None` when this process is not
/// root (the server has no more than this process anyway).
fn unprivileged() -> Option<(String, String)> {
    use nix::unistd::{Group, User, geteuid};
    if !geteuid().is_root() {
        return None;
    }
    let user = User::from_name("nobody").ok().flatten()?;
    let group = ["nogroup", "nobody"]
        .into_iter()
        .find(|g| Group::from_name(g).ok().flatten().is_some())?;
    Some((user.name, group.to_string()))
}

/// The pieces a stop needs, without the launcher (a stop may run in a task
/// of its own).
#[derive(Clone)]
struct Parts {
    tun: Arc<TunLauncher>,
    config: OpenvpnConfig,
}

/// Runs `openvpn` services (see the [module documentation](super)).
///
/// The endpoint it returns holds what clients connect to (`host`, UDP
/// `port`), the client subnet (`username`, `openvpn:<subnet>/24`) and the
/// client's certificate and key (`password`).
pub struct OpenvpnLauncher {
    parts: Parts,
    services: Mutex<HashMap<NodeId, Running>>,
    claims: Mutex<HashMap<NodeId, Held>>,
    /// Set once [`OpenvpnLauncher::sweep_orphans`] ran (before the first
    /// start, stop or listing).
    swept: tokio::sync::OnceCell<Vec<NodeId>>,
}

impl std::fmt::Debug for OpenvpnLauncher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenvpnLauncher")
            .field("config", &self.parts.config)
            .field("running", &self.lock().len())
            .finish_non_exhaustive()
    }
}

/// Whether an interface `name` exists in this thread's network namespace.
fn interface_exists(name: &str) -> bool {
    nix::net::if_::if_nametoindex(name).is_ok()
}

/// Whether the UDP port is free on `bind` (a bind test; the server binds it
/// right after).
fn udp_free(bind: IpAddr, port: u16) -> bool {
    std::net::UdpSocket::bind((bind, port)).is_ok()
}

impl OpenvpnLauncher {
    /// A launcher opening tunnels with `opener`.
    pub fn new(opener: Arc<dyn TunnelOpener>, config: OpenvpnConfig) -> Self {
        OpenvpnLauncher {
            parts: Parts {
                tun: Arc::new(TunLauncher::new(opener, config.tun.clone())),
                config,
            },
            services: Mutex::new(HashMap::new()),
            claims: Mutex::new(HashMap::new()),
            swept: tokio::sync::OnceCell::new(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &OpenvpnConfig {
        &self.parts.config
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Running>> {
        self.services.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn claims(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Held>> {
        self.claims.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The names of `node`'s service: the tunnel interface and the server's device.
    pub fn interfaces(&self, node: NodeId) -> Result<(String, String), ServiceError> {
        let prefix = &self.parts.config.tun.prefix;
        let tunnel = interface_name(prefix, node);
        let device = interface_name(&format!("{prefix}v"), node);
        match (tunnel, device) {
            (Some(t), Some(d)) => Ok((t, d)),
            _ => Err(start_failed(format!(
                "the interface name {prefix}v{node} is longer than 15 characters"
            ))),
        }
    }

    /// The directory of `node`'s service files.
    pub fn service_dir(&self, node: NodeId) -> PathBuf {
        self.parts
            .config
            .dir
            .join("services")
            .join(node.0.to_string())
    }

    /// What is installed on the host for `node`'s service now: policy rules
    /// and routes of its table, its nft table (one line each; empty when
    /// nothing is). For diagnostics and tests.
    pub async fn installed(&self, node: NodeId) -> Vec<String> {
        net::installed(&self.parts.config, node).await
    }

    /// Removes what crashed or killed processes left on this host: for each
    /// service directory (`<dir>/services/<id>`) whose service no live
    /// process holds (its lock file is free) and this launcher does not
    /// run, ends the server process named by its pid file, removes its
    /// rules, routes and nft table, and deletes the directory. Returns the
    /// nodes it cleaned up after. Runs by itself once, before the
    /// launcher's first start, stop or listing; the tunnel interfaces went
    /// with their processes.
    pub async fn sweep_orphans(&self) -> Vec<NodeId> {
        let c = &self.parts.config;
        let Ok(entries) = std::fs::read_dir(c.dir.join("services")) else {
            return Vec::new();
        };
        let mut swept = Vec::new();
        for entry in entries.flatten() {
            let Some(node) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i64>().ok())
                .map(NodeId)
            else {
                continue;
            };
            if self.claims().contains_key(&node) || self.lock().contains_key(&node) {
                continue;
            }
            // Held by a live process (or a start of ours under way).
            let Ok(Some(_held)) = try_lock(&c.dir, &service_lock(node)) else {
                continue;
            };
            let dir = entry.path();
            if owned_by_live_process(&dir) {
                continue;
            }
            net::kill_stale(&dir.join("openvpn.pid"), &dir.join("server.conf")).await;
            if let Err(e) = net::remove(c, node).await {
                tracing::warn!(%node, error = %e, "removing an orphan openvpn service's rules");
            }
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(%node, error = %e, dir = %dir.display(), "removing an orphan service's files");
            }
            tracing::warn!(%node, "removed what a crashed process left of an openvpn service");
            swept.push(node);
        }
        swept
    }

    /// Runs [`Self::sweep_orphans`] the first time; later calls wait for it.
    async fn swept(&self) {
        self.swept.get_or_init(|| self.sweep_orphans()).await;
    }

    /// Stops every service (for a graceful process exit). The stored
    /// endpoints keep their client certificates: the next process restores
    /// the services with the same profiles.
    pub async fn stop_all(&self) {
        let all: Vec<(NodeId, Running)> = self.lock().drain().collect();
        let parts = self.parts.clone();
        futures::future::join_all(
            all.into_iter()
                .map(|(id, r)| retire(parts.clone(), id, Some(r))),
        )
        .await;
        // The locks go last: nobody takes a service over before it is gone.
        self.claims().clear();
    }

    /// Checks what can be checked before anything is changed: the
    /// programs, the capability, the TUN device.
    fn preflight(&self) -> Result<(), ServiceError> {
        let c = &self.parts.config;
        for (program, package) in [
            (&c.openvpn, "openvpn"),
            (&c.nft, "nftables"),
            (&c.ip, "iproute2"),
        ] {
            if net::find_program(program).is_none() {
                return Err(start_failed(format!(
                    "an openvpn service needs the program {} and it is not installed \
                     (apt install {package})",
                    program.display()
                )));
            }
        }
        if has_cap_net_admin() == Some(false) {
            return Err(start_failed(format!(
                "an openvpn service needs {NEED_CAP_NET_ADMIN} (interfaces, routing rules, NAT), and \
                 this process lacks it (run connexa as root, or grant it: \
                 setcap cap_net_admin,cap_net_raw+ep $(command -v connexa))"
            )));
        }
        if !c.tun.device.exists() {
            return Err(start_failed(format!(
                "an openvpn service needs {}, which does not exist (load the tun module: modprobe tun)",
                c.tun.device.display()
            )));
        }
        Ok(())
    }

    /// Picks and claims a port and a subnet for `node`: the wanted ones when
    /// free, else the first free ones. Each is also a lock file, so two
    /// processes on this host never pick the same. `old`: what the node held
    /// (a relaunch in this process), whose lock files are reused for the
    /// same port and subnet.
    async fn claim(
        &self,
        node: NodeId,
        want_port: Option<u16>,
        want_subnet: Option<Ipv4Addr>,
        service: File,
        old: Option<(Claim, File, File)>,
    ) -> Result<Claim, ServiceError> {
        let c = &self.parts.config;
        // Subnets in use by another program have a route; a rule left by a
        // crashed one would send the new clients into its table.
        let mut routes = net::run(&c.ip, &["-4", "-o", "route", "show", "table", "all"], None)
            .await
            .map_err(start_failed)?;
        routes.push_str(
            &net::run(&c.ip, &["-4", "rule", "show"], None)
                .await
                .map_err(start_failed)?,
        );
        let routed = |s: Ipv4Addr| routes.contains(&format!("{s}/24 "));
        let (mut old_port, mut old_subnet) = match old {
            Some((cl, p, s)) => (Some((cl.port, p)), Some((cl.subnet, s))),
            None => (None, None),
        };
        let lock = |name: String| match try_lock(&c.dir, &name) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, lock = %name, "openvpn lock file");
                None
            }
        };
        let mut claims = self.claims();
        let others = |claims: &HashMap<NodeId, Held>, f: &dyn Fn(&Claim) -> bool| {
            claims.iter().any(|(id, h)| *id != node && f(&h.claim))
        };
        let mut port_file = None;
        let mut free_port = |p: u16| {
            if others(&claims, &|cl| cl.port == p) || !udp_free(c.bind, p) {
                return false;
            }
            port_file = match old_port.take() {
                Some((op, f)) if op == p => Some(f),
                other => {
                    old_port = other;
                    lock(format!("port-{p}"))
                }
            };
            port_file.is_some()
        };
        let port = want_port
            .filter(|p| c.ports.contains(p) && free_port(*p))
            .or_else(|| c.ports.clone().find(|p| free_port(*p)));
        let (Some(port), Some(port_file)) = (port, port_file) else {
            return Err(start_failed(format!(
                "no free UDP port in [services] openvpn_ports ({}-{})",
                c.ports.start(),
                c.ports.end()
            )));
        };
        let pool = c.subnet_list();
        let mut subnet_file = None;
        let mut free_subnet = |s: Ipv4Addr| {
            if others(&claims, &|cl| cl.subnet == s) || routed(s) {
                return false;
            }
            subnet_file = match old_subnet.take() {
                Some((os, f)) if os == s => Some(f),
                other => {
                    old_subnet = other;
                    lock(format!("subnet-{s}"))
                }
            };
            subnet_file.is_some()
        };
        let subnet = want_subnet
            .filter(|s| pool.contains(s) && free_subnet(*s))
            .or_else(|| pool.iter().copied().find(|s| free_subnet(*s)));
        let (Some(subnet), Some(subnet_file)) = (subnet, subnet_file) else {
            return Err(start_failed(format!(
                "no free /24 in [services] openvpn_subnets ({}/{})",
                c.subnets.0, c.subnets.1
            )));
        };
        let claim = Claim { port, subnet };
        claims.insert(
            node,
            Held {
                claim,
                service,
                port: port_file,
                subnet: subnet_file,
            },
        );
        Ok(claim)
    }

    /// Starts `node`'s service. `keep_client`: the client certificate of
    /// `previous` is kept (a restore); otherwise a new one is made.
    async fn launch(
        &self,
        node: &Node,
        previous: Option<ServiceEndpoint>,
        keep_client: bool,
    ) -> Result<Running, ServiceError> {
        let c = &self.parts.config;
        // What an earlier run of this service in this process held (a
        // relaunch): kept until the new claim is made, so that no other
        // process takes its port or subnet meanwhile; released by any
        // early return.
        let old = self.claims().remove(&node.id);
        let (interface, device) = self.interfaces(node.id)?;
        self.preflight()?;
        let (service, old) = match old {
            Some(h) => (h.service, Some((h.claim, h.port, h.subnet))),
            None => (
                try_lock(&c.dir, &service_lock(node.id))
                    .map_err(|e| start_failed(format!("cannot lock {}: {e}", c.dir.display())))?
                    .ok_or_else(|| {
                        start_failed(format!(
                            "another Connexa process on this host runs node {}'s openvpn \
                             service, or is cleaning up after it (it holds {}); the next \
                             pass tries again",
                            node.id,
                            c.dir.join(LOCKS).join(service_lock(node.id)).display()
                        ))
                    })?,
                None,
            ),
        };
        let dir = self.service_dir(node.id);
        let conf = dir.join("server.conf");
        let pid_file = dir.join("openvpn.pid");
        // A crashed run's leftovers.
        net::kill_stale(&pid_file, &conf).await;
        if let Err(e) = net::remove(c, node.id).await {
            tracing::warn!(node = %node.id, error = %e, "removing stale openvpn rules");
        }
        let kept = previous
            .as_ref()
            .filter(|_| keep_client)
            .and_then(|p| ClientCredentials::from_endpoint(p).ok());
        let claim = self
            .claim(
                node.id,
                previous.as_ref().map(|p| p.port),
                kept.as_ref().map(|k| k.subnet),
                service,
                old,
            )
            .await?;
        let mut unclaim = Unclaim {
            claims: &self.claims,
            node: node.id,
            armed: true,
        };
        match self
            .launch_claimed(node, kept, claim, &interface, &device, &dir)
            .await
        {
            Ok(r) => {
                unclaim.armed = false;
                Ok(r)
            }
            // The claim goes (with `unclaim`) once everything is undone.
            Err(e) => {
                retire(self.parts.clone(), node.id, None).await;
                Err(e)
            }
        }
    }

    async fn launch_claimed(
        &self,
        node: &Node,
        kept: Option<ClientCredentials>,
        claim: Claim,
        interface: &str,
        device: &str,
        dir: &Path,
    ) -> Result<Running, ServiceError> {
        let c = &self.parts.config;
        let ca_dir = c.dir.clone();
        let ca = tokio::task::spawn_blocking(move || Ca::load_or_create(&ca_dir))
            .await
            .map_err(start_failed)?
            .map_err(start_failed)?;
        let kept = kept.filter(|k| {
            let ours = ca.issued(&k.cert_pem);
            if !ours {
                tracing::warn!(
                    node = %node.id,
                    "the stored client certificate is not from this host's OpenVPN CA \
                     (the service moved here from a host with other CA files): \
                     a new one is made, and the old profile stops working"
                );
            }
            ours
        });
        let creds = match kept {
            Some(k) => ClientCredentials {
                subnet: claim.subnet,
                ..k
            },
            None => ca
                .issue_client(node.id, claim.subnet)
                .map_err(start_failed)?,
        };
        let (server_cert, server_key) = ca.issue_server(node.id).map_err(start_failed)?;
        write_files(dir, &ca.cert_pem, &server_cert, &server_key)
            .and_then(|()| write_private(&dir.join(OWNER), &std::process::id().to_string()))
            .map_err(|e| start_failed(format!("cannot write {}: {e}", dir.display())))?;
        let conf = dir.join("server.conf");
        let log = dir.join("openvpn.log");
        write_private(
            &conf,
            &server_config(
                c,
                node.id,
                claim,
                device,
                &creds.common_name,
                dir,
                unprivileged(),
            ),
        )
        .map_err(|e| start_failed(format!("cannot write {}: {e}", conf.display())))?;

        self.parts.tun.start(node, None).await?;
        let local = self
            .parts
            .tun
            .local_addr(node.id)
            .ok_or_else(|| start_failed("the tunnel stopped while starting"))?;
        net::install(c, node.id, claim.subnet, interface, device, local)
            .await
            .map_err(start_failed)?;

        // A crashed run's log must not pass for this server's.
        let _ = std::fs::remove_file(&log);
        // Spawned from this thread: the server runs in its network namespace.
        let mut child = Server(
            std::process::Command::new(&c.openvpn)
                .arg("--config")
                .arg(&conf)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .map_err(|e| start_failed(format!("cannot run {}: {e}", c.openvpn.display())))?,
        );
        wait_ready(&mut child, &log, c.start_timeout).await?;
        if let Err(e) = net::forward_on(device) {
            child.end(Duration::from_secs(2)).await;
            return Err(start_failed(e));
        }
        tracing::info!(
            node = %node.id, port = claim.port, subnet = %claim.subnet, %interface, %device, %local,
            "openvpn service started"
        );
        Ok(Running {
            endpoint: creds.endpoint(c.host(), claim.port),
            interface: interface.to_string(),
            device: device.to_string(),
            child,
            started_at: Utc::now(),
        })
    }

    /// Inserts `running` unless another start of the node won.
    async fn insert(
        &self,
        node: NodeId,
        running: Running,
    ) -> Result<ServiceEndpoint, ServiceError> {
        let endpoint = running.endpoint.clone();
        let lost = match self.lock().entry(node) {
            Entry::Occupied(_) => Some(running),
            Entry::Vacant(e) => {
                e.insert(running);
                None
            }
        };
        if let Some(ours) = lost {
            retire(self.parts.clone(), node, Some(ours)).await;
            return Err(start_failed("another start of this service won"));
        }
        Ok(endpoint)
    }
}

/// Writes `text` to `path` with mode 0600.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

fn write_files(dir: &Path, ca: &str, cert: &str, key: &str) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    write_private(&dir.join("ca.pem"), ca)?;
    write_private(&dir.join("server.pem"), cert)?;
    write_private(&dir.join("server.key"), key)
}

/// The server's configuration.
fn server_config(
    c: &OpenvpnConfig,
    node: NodeId,
    claim: Claim,
    device: &str,
    client_cn: &str,
    dir: &Path,
    drop_to: Option<(String, String)>,
) -> String {
    let d = |f: &str| dir.join(f).display().to_string();
    let mut s = format!(
        "# Connexa openvpn service of node {node} (generated; removed at stop)\n\
         # server name {server}\n",
        server = server_name(node)
    );
    let proto = if c.bind.is_ipv6() { "udp6" } else { "udp4" };
    s.push_str(&format!("proto {proto}\nport {}\n", claim.port));
    if !c.bind.is_unspecified() {
        s.push_str(&format!("local {}\n", c.bind));
    }
    s.push_str(&format!("dev {device}\ndev-type tun\ntopology subnet\n"));
    s.push_str(&format!("server {} 255.255.255.0\n", claim.subnet));
    s.push_str(&format!(
        "ca {}\ncert {}\nkey {}\ndh none\n",
        d("ca.pem"),
        d("server.pem"),
        d("server.key")
    ));
    s.push_str("tls-version-min 1.2\n");
    s.push_str(&format!("data-ciphers {DATA_CIPHERS}\nauth SHA256\n"));
    s.push_str("remote-cert-tls client\n");
    // Only the current client certificate: a profile of an earlier start is refused.
    s.push_str(&format!("verify-x509-name {client_cn} name\n"));
    s.push_str("push \"redirect-gateway def1\"\n");
    s.push_str("keepalive 10 60\nexplicit-exit-notify 1\n");
    if let Some((user, group)) = drop_to {
        // Root only to set up: keys and device are kept across restarts.
        s.push_str(&format!(
            "user {user}\ngroup {group}\npersist-key\npersist-tun\n"
        ));
    }
    s.push_str(&format!(
        "writepid {}\nlog {}\nverb 3\n",
        d("openvpn.pid"),
        d("openvpn.log")
    ));
    s
}

/// What the server's log says of its start: `Some(true)` up,
/// `Some(false)` up with errors ("Initialization Sequence Completed With
/// Errors"), `None` not yet.
fn ready(log: &str) -> Option<bool> {
    log.lines()
        .find_map(|l| l.split_once("Initialization Sequence Completed"))
        .map(|(_, rest)| !rest.contains("With Errors"))
}

/// Waits until the server's log says it is up; an exit, a start with errors
/// or the time limit is an error carrying the log's last lines.
async fn wait_ready(child: &mut Server, log: &Path, limit: Duration) -> Result<(), ServiceError> {
    let tail = |log: &Path| {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(8)..].join(" | ")
    };
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match std::fs::read_to_string(log).map(|t| ready(&t)) {
            Ok(Some(true)) => return Ok(()),
            Ok(Some(false)) => {
                // Up, but something of its set-up failed (e.g. its route:
                // another server holds the subnet): not a working service.
                child.end(Duration::from_secs(2)).await;
                return Err(start_failed(format!(
                    "the openvpn server started with errors: {}",
                    tail(log)
                )));
            }
            _ => {}
        }
        if let Some(status) = child.exited() {
            return Err(start_failed(format!(
                "the openvpn server exited ({status}): {}",
                tail(log)
            )));
        }
        if tokio::time::Instant::now() >= deadline {
            child.end(Duration::from_secs(2)).await;
            return Err(start_failed(format!(
                "the openvpn server was not up within {limit:?}: {}",
                tail(log)
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Stops what a service has: the server process, its rules and NAT, the
/// tunnel and its interface, its files.
async fn retire(parts: Parts, node: NodeId, running: Option<Running>) {
    if let Some(mut r) = running {
        r.child.end(Duration::from_secs(5)).await;
        tracing::debug!(%node, interface = %r.interface, device = %r.device, "openvpn server ended");
    }
    // The tunnel (and with its interface, its forwarding flag) before the
    // filters: nothing is forwarded unfiltered meanwhile.
    match parts.tun.stop(node).await {
        Ok(()) | Err(ServiceError::NotRunning(_)) => {}
        Err(e) => tracing::warn!(%node, error = %e, "stopping the openvpn service's tunnel"),
    }
    if let Err(e) = net::remove(&parts.config, node).await {
        tracing::warn!(%node, error = %e, "removing the openvpn service's rules");
    }
    let dir = parts.config.dir.join("services").join(node.0.to_string());
    if let Err(e) = std::fs::remove_dir_all(&dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(%node, error = %e, dir = %dir.display(), "removing the service's files");
    }
}

/// Whether a start of `node` restores its service (the store says it runs:
/// a process restart or a restart request), so its profile is kept. A start
/// after a stop (`service_started` not in force) makes a new client
/// certificate: the old profile is refused from then on.
fn restoring(node: &Node) -> bool {
    matches!(node.status, Status::Online | Status::Offline)
}

#[async_trait]
impl ServiceLauncher for OpenvpnLauncher {
    async fn start(
        &self,
        node: &Node,
        previous: Option<ServiceEndpoint>,
    ) -> Result<ServiceEndpoint, ServiceError> {
        self.swept().await;
        if let Some(r) = self.lock().get(&node.id) {
            return Ok(r.endpoint.clone());
        }
        let previous = previous.filter(|p| p.kind() == ServiceKind::Openvpn);
        let running = self.launch(node, previous, restoring(node)).await?;
        self.insert(node.id, running).await
    }

    async fn stop(&self, node: NodeId) -> Result<(), ServiceError> {
        let Some(running) = self.lock().remove(&node) else {
            // A start given up half-way may have left its claim.
            self.claims().remove(&node);
            return Err(ServiceError::NotRunning(node));
        };
        retire(self.parts.clone(), node, Some(running)).await;
        // The locks go last: nobody takes the service over before it is gone.
        self.claims().remove(&node);
        tracing::info!(%node, "openvpn service stopped");
        Ok(())
    }

    async fn health(&self, node: &Node) -> Health {
        let (exited, interface, device) = match self.lock().get_mut(&node.id) {
            Some(r) => (
                r.child.exited().map(|s| s.to_string()),
                r.interface.clone(),
                r.device.clone(),
            ),
            None => {
                return Health::Unhealthy("no service runs for this node in this process".into());
            }
        };
        let problem = if let Err(e) = self.parts.tun.check(node.id).await {
            e
        } else if let Some(status) = exited {
            format!("the openvpn server exited ({status})")
        } else if !interface_exists(&device) {
            format!("the openvpn device {} is gone", device.as_str())
        } else if let Err(e) = net::forward_on(&interface).and_then(|()| net::forward_on(&device)) {
            // The flags are reset by anyone switching the host's forwarding
            // off and on again: set again at every check.
            e
        } else {
            return Health::Healthy;
        };
        // Bring the whole service up again, same port, subnet and profile.
        let Some(old) = self.lock().remove(&node.id) else {
            return Health::Unhealthy(format!("{problem}; the service was stopped"));
        };
        let endpoint = old.endpoint.clone();
        // In its own task: the monitor's time limit must not cut the clean-up short.
        let _ = tokio::spawn(retire(self.parts.clone(), node.id, Some(old))).await;
        match self.launch(node, Some(endpoint), true).await {
            Ok(new) => match self.insert(node.id, new).await {
                Ok(_) => {
                    tracing::info!(node = %node.id, "openvpn service restarted: {problem}");
                    Health::Healthy
                }
                Err(e) => Health::Unhealthy(format!("{problem}; {e}")),
            },
            Err(e) => Health::Unhealthy(format!("{problem}; starting it again failed: {e}")),
        }
    }

    async fn running(&self) -> Vec<NodeId> {
        self.swept().await;
        self.lock().keys().copied().collect()
    }

    fn counters(&self, node: NodeId) -> Option<ServiceCounters> {
        let started_at = self.lock().get(&node).map(|r| r.started_at)?;
        let tun = self.parts.tun.counters(node).unwrap_or_default();
        Some(ServiceCounters {
            started_at: Some(started_at),
            ..tun
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_start_with_errors_is_not_ready() {
        assert_eq!(super::ready("Sun Dec  6 OpenVPN 2.6.3\n"), None);
        assert_eq!(
            super::ready("x\n2026-12-06 10:00:00 Initialization Sequence Completed\n"),
            Some(true)
        );
        assert_eq!(
            super::ready(
                "x\n2026-12-06 Initialization Sequence Completed With Errors ( see http://openvpn.net/howto.html#dhcpcaveats )\n"
            ),
            Some(false)
        );
    }

    use super::*;

    #[test]
    fn server_config_accepts_only_the_current_client() {
        let c = OpenvpnConfig::default();
        let claim = Claim {
            port: 1195,
            subnet: Ipv4Addr::new(10, 201, 3, 0),
        };
        let s = server_config(
            &c,
            NodeId(7),
            claim,
            "cxv7",
            "connexa-ovpn-client-7-ab",
            Path::new("/d"),
            Some(("nobody".into(), "nogroup".into())),
        );
        for line in [
            "proto udp4",
            "port 1195",
            "dev cxv7",
            "server 10.201.3.0 255.255.255.0",
            "topology subnet",
            "tls-version-min 1.2",
            "data-ciphers AES-256-GCM:CHACHA20-POLY1305",
            "remote-cert-tls client",
            "verify-x509-name connexa-ovpn-client-7-ab name",
            "key /d/server.key",
            "writepid /d/openvpn.pid",
            "user nobody",
            "group nogroup",
            "persist-key",
            "persist-tun",
        ] {
            assert!(s.lines().any(|l| l == line), "{line:?} missing:\n{s}");
        }
        assert!(!s.contains("\nlocal "), "a wildcard bind has no local line");
    }

    #[tokio::test]
    async fn ports_and_subnets_are_claimed_once_each() {
        let held = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let busy = held.local_addr().unwrap().port();
        // A range of 4 ports starting at the one held by this test (when it
        // has room above it), and a pool of 4 subnets.
        let lo = busy.min(u16::MAX - 3);
        let tmp = tempfile::tempdir().unwrap();
        let config = OpenvpnConfig {
            ports: lo..=lo + 3,
            subnets: super::super::parse_subnet_pool("10.251.4.0/22").unwrap(),
            bind: "127.0.0.1".parse().unwrap(),
            dir: tmp.path().to_path_buf(),
            ..OpenvpnConfig::default()
        };
        let l = OpenvpnLauncher::new(
            Arc::new(crate::service::DirectOpener::loopback_only()),
            config.clone(),
        );
        let svc = |n: i64| {
            try_lock(tmp.path(), &service_lock(NodeId(n)))
                .unwrap()
                .expect("the service lock is free")
        };
        let s = |i: u8| Ipv4Addr::new(10, 251, 4 + i, 0);
        // The wanted port is taken by another socket: another one is given.
        let a = l
            .claim(NodeId(1), Some(busy), Some(s(2)), svc(1), None)
            .await
            .unwrap();
        assert_ne!(a.port, busy);
        assert!((lo..=lo + 3).contains(&a.port));
        assert_eq!(a.subnet, s(2), "a free wanted subnet is kept");
        // What node 1 holds is not given to node 2.
        let b = l
            .claim(NodeId(2), Some(a.port), Some(s(2)), svc(2), None)
            .await
            .unwrap();
        assert_ne!(b.port, a.port);
        assert_eq!(b.subnet, s(0));
        // A node may claim what it holds again (a restore).
        // A relaunch hands its old lock files over.
        let h = l.claims().remove(&NodeId(1)).unwrap();
        assert_eq!(
            l.claim(
                NodeId(1),
                Some(a.port),
                Some(s(2)),
                h.service,
                Some((h.claim, h.port, h.subnet))
            )
            .await
            .unwrap(),
            a
        );
        // Another process on this host (the locks are per open file, so a
        // second launcher on the same directory stands for one) gets
        // neither the ports nor the subnets, nor a running service's lock.
        let other = OpenvpnLauncher::new(
            Arc::new(crate::service::DirectOpener::loopback_only()),
            config,
        );
        assert!(
            try_lock(tmp.path(), &service_lock(NodeId(1)))
                .unwrap()
                .is_none()
        );
        let o = other
            .claim(NodeId(9), Some(b.port), Some(s(0)), svc(9), None)
            .await
            .unwrap();
        assert!(![a.port, b.port, busy].contains(&o.port), "{o:?}");
        assert_eq!(o.subnet, s(1));
        drop(other);
        // A wanted port outside the range is not given.
        let c = l
            .claim(NodeId(3), Some(1), None, svc(3), None)
            .await
            .unwrap();
        assert!((lo..=lo + 3).contains(&c.port) && ![a.port, b.port].contains(&c.port));
        assert_eq!(c.subnet, s(1));
        // The range is used up (one port held outside, three claimed).
        let e = l
            .claim(NodeId(4), None, None, svc(4), None)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("no free UDP port"), "{e}");
        assert!(!l.claims().contains_key(&NodeId(4)));
    }
}
