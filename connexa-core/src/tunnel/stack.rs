//! [`Tunnel`]: a PPTP call kept up after login, with MPPE-encrypted IPv4 and a
//! user-space TCP/IP stack (smoltcp, `Medium::Ip`) on top.

use std::future::poll_fn;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use smoltcp::iface::{Config as IfaceConfig, Interface, SocketHandle, SocketSet};
use smoltcp::socket::{dns, tcp, udp};
use smoltcp::wire::{DnsQueryType, HardwareAddress, IpAddress, IpCidr, IpEndpoint, Ipv4Address};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, mpsc, oneshot};

use super::call::{AuthConfig, Call, CtlEvent, Link, LoginReport, Teardown, ipv4_only};
use super::device::PacketQueues;
use super::socket::GreSocket;
use crate::domain::{Failure, Level, Node, Secret};
use crate::ports::ProbeError;
use crate::pptp::session::{NetworkConfig, NetworkState};

/// Settings of a [`Tunnel`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelConfig {
    /// The call and login settings (timeouts, LCP timers, teardown).
    pub auth: AuthConfig,
    /// Deadline for CCP (MPPE) and IPCP to come up after login.
    pub network_timeout: Duration,
    /// Receive buffer of each TCP connection through the tunnel (bounds the
    /// receive window, hence the download rate at a given round-trip time).
    pub tcp_rx_buffer: usize,
    /// Send buffer of each TCP connection.
    pub tcp_tx_buffer: usize,
    /// Time allowed for a TCP connection through the tunnel to be established.
    pub tcp_connect_timeout: Duration,
    /// Interval of the background LCP Echo-Requests (liveness).
    pub echo_interval: Duration,
    /// Unanswered background echoes in a row, with nothing else received from
    /// the server meanwhile, after which the tunnel is dead (default 6: a minute
    /// of silence; at 10 % loss each way, 6 echoes in a row are lost about once
    /// in 21,000, where 3 were lost once in 150).
    pub echo_failures: u32,
    /// Time [`Tunnel::echo`] waits for the Echo-Reply.
    pub echo_timeout: Duration,
    /// Time [`Tunnel::resolve`] waits for the DNS answer.
    pub dns_timeout: Duration,
    /// Tries of the control connection before a transport failure (refused,
    /// reset, closed before the handshake, ...) is final (at least 1).
    pub attempts: u32,
    /// Pause before the second try; doubled for each further try.
    pub backoff: Duration,
}

impl Default for TunnelConfig {
    fn default() -> Self {
        TunnelConfig {
            auth: AuthConfig::default(),
            network_timeout: Duration::from_secs(20),
            tcp_rx_buffer: 256 * 1024,
            tcp_tx_buffer: 128 * 1024,
            tcp_connect_timeout: Duration::from_secs(10),
            echo_interval: Duration::from_secs(10),
            echo_failures: 6,
            echo_timeout: Duration::from_secs(3),
            dns_timeout: Duration::from_secs(5),
            attempts: 2,
            backoff: Duration::from_millis(250),
        }
    }
}

/// Why a tunnel could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TunnelError {
    /// The test could not run at all (no `CAP_NET_RAW`, IPv6 node, ...): says
    /// nothing about the node.
    #[error(transparent)]
    Probe(#[from] ProbeError),
    /// The node got as far as `reached`, then `failure` stopped it.
    #[error("{failure}")]
    Failed {
        /// The level of evidence reached (Light, Auth, ...).
        reached: Level,
        /// What stopped it.
        failure: Failure,
        /// The whole report of the call (timings, teardown).
        report: Box<LoginReport>,
    },
}

impl TunnelError {
    fn from_report(report: LoginReport) -> Self {
        if let Some(local) = &report.local_error {
            return TunnelError::Probe(ProbeError::Config(format!(
                "local resources exhausted: {local}"
            )));
        }
        TunnelError::Failed {
            reached: report.reached,
            failure: report.failure.clone().unwrap_or(Failure::Other {
                detail: "the tunnel did not come up".into(),
            }),
            report: Box::new(report),
        }
    }
}

/// Datapath counters of a tunnel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TunnelStats {
    /// IPv4 datagrams sent / received through MPPE.
    pub packets_sent: u64,
    /// See `packets_sent`.
    pub packets_received: u64,
    /// IPv4 octets sent / received.
    pub bytes_sent: u64,
    /// See `bytes_sent`.
    pub bytes_received: u64,
    /// Inbound frames dropped (undecryptable, late, unencrypted).
    pub dropped: u64,
}

enum Cmd {
    Echo(oneshot::Sender<Duration>),
    Close(oneshot::Sender<Teardown>),
}

struct Stack {
    iface: Interface,
    sockets: SocketSet<'static>,
    device: PacketQueues,
    dead: Option<String>,
    next_port: u16,
    orphans: Vec<(SocketHandle, Instant)>,
    stats: TunnelStats,
    /// Set by [`Tunnel::packet_path`]: datagrams bypass smoltcp.
    raw: Option<RawTap>,
}

/// The tunnel's side of a [`PacketPath`].
struct RawTap {
    /// Datagrams received from the peer, for the path's owner.
    to_owner: mpsc::Sender<Vec<u8>>,
    /// Datagrams the owner gave, to send to the peer.
    from_owner: std::collections::VecDeque<Vec<u8>>,
    /// Datagrams dropped because a queue was full (either direction).
    dropped: u64,
}

struct Shared {
    stack: Mutex<Stack>,
    notify: Notify,
    epoch: Instant,
    local: Ipv4Addr,
    peer: Option<Ipv4Addr>,
    dns: Vec<Ipv4Addr>,
    mtu: u16,
    config: TunnelConfig,
    report: LoginReport,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Stack> {
        self.stack
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn ts(&self, now: Instant) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(
            i64::try_from(now.saturating_duration_since(self.epoch).as_micros())
                .unwrap_or(i64::MAX),
        )
    }

    /// Moves datagrams between the session and smoltcp; returns when smoltcp
    /// wants to be polled again.
    fn pump(&self, link: &mut Link, now: Instant) -> Duration {
        let ts = self.ts(now);
        let mut guard = self.lock();
        let st = &mut *guard;
        let session = link.session_mut();
        while let Some(p) = session.poll_ip() {
            match &mut st.raw {
                Some(raw) => {
                    if raw.to_owner.try_send(p).is_err() {
                        raw.dropped += 1;
                    }
                }
                None => st.device.rx.push_back(p),
            }
        }
        if let Some(raw) = &mut st.raw {
            while let Some(p) = raw.from_owner.pop_front() {
                session.send_ip(&p);
            }
        }
        st.iface.poll(ts, &mut st.device, &mut st.sockets);
        while let Some(p) = st.device.tx.pop_front() {
            session.send_ip(&p);
        }
        if let Some(n) = session.network() {
            let s = n.stats();
            st.stats = TunnelStats {
                packets_sent: s.sent,
                packets_received: s.received,
                bytes_sent: s.bytes_sent,
                bytes_received: s.bytes_received,
                dropped: s.dropped,
            };
        }
        // Closed streams: remove once the connection is over (or stuck for 30 s).
        let sockets = &mut st.sockets;
        st.orphans.retain(|(h, since)| {
            let state = sockets.get::<tcp::Socket>(*h).state();
            let over = matches!(state, tcp::State::Closed | tcp::State::TimeWait);
            if over || now.duration_since(*since) > Duration::from_secs(30) {
                sockets.remove(*h);
                false
            } else {
                true
            }
        });
        st.iface
            .poll_delay(ts, &st.sockets)
            .map_or(Duration::from_secs(1), |d| {
                Duration::from_micros(d.total_micros())
            })
    }

    fn kill(&self, why: &str) {
        let mut st = self.lock();
        st.dead = Some(why.to_owned());
        // The packet path's receiver sees the end of its channel.
        st.raw = None;
        for (_, s) in st.sockets.iter_mut() {
            if let smoltcp::socket::Socket::Tcp(t) = s {
                t.abort();
            }
        }
    }

    fn dead_error(why: &str) -> io::Error {
        io::Error::new(
            io::ErrorKind::ConnectionAborted,
            format!("tunnel down: {why}"),
        )
    }
}

/// An open PPTP tunnel: logged in with MS-CHAPv2, CCP (128-bit stateless MPPE)
/// and IPCP up, IPv4 carried encrypted, a user-space TCP/IP stack on top.
///
/// Cheap to clone and shareable between tasks; one background task per tunnel
/// polls the stack, the GRE route and the control connection, answers the
/// server's echoes and sends its own LCP Echo-Requests every
/// [`TunnelConfig::echo_interval`] (after [`TunnelConfig::echo_failures`]
/// unanswered ones with no other packet from the server in between, the
/// tunnel counts as dead). The tunnel is torn down politely
/// (LCP Terminate, Call-Clear-Request, Stop-Control-Connection-Request) by
/// [`Tunnel::close`], when the server ends it, or when the last `Tunnel` clone
/// is dropped.
///
/// ```no_run
/// # async fn demo(node: &connexa_core::domain::Node) -> Result<(), Box<dyn std::error::Error>> {
/// use connexa_core::tunnel::{GreSocket, Tunnel, TunnelConfig};
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
/// let gre = GreSocket::open()?;
/// let tunnel = Tunnel::open(node, &TunnelConfig::default(), gre).await?;
/// let mut s = tunnel.connect("10.78.0.1:80".parse()?).await?;
/// s.write_all(b"GET / HTTP/1.0\r\n\r\n").await?;
/// let mut body = Vec::new();
/// s.read_to_end(&mut body).await?;
/// tunnel.close().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Tunnel {
    shared: Arc<Shared>,
    cmd: mpsc::Sender<Cmd>,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("local", &self.shared.local)
            .field("peer", &self.shared.peer)
            .field("alive", &self.is_alive())
            .finish()
    }
}

impl Tunnel {
    /// Opens a tunnel to `node` with its credentials.
    ///
    /// # Errors
    /// [`TunnelError::Probe`] when the test cannot run here (IPv6 node, local
    /// resources); [`TunnelError::Failed`] with the level reached and the
    /// failure otherwise (refused, rejected credentials, CCP/IPCP failure, ...).
    pub async fn open(
        node: &Node,
        config: &TunnelConfig,
        gre: Arc<GreSocket>,
    ) -> Result<Tunnel, TunnelError> {
        Self::open_addr(
            SocketAddr::new(node.ip, node.port),
            &node.login,
            &node.password,
            config,
            gre,
        )
        .await
    }

    /// Opens a tunnel to the PPTP server at `addr`.
    ///
    /// # Errors
    /// As [`Tunnel::open`].
    pub async fn open_addr(
        addr: SocketAddr,
        username: &str,
        password: &Secret,
        config: &TunnelConfig,
        gre: Arc<GreSocket>,
    ) -> Result<Tunnel, TunnelError> {
        let addr = ipv4_only(addr)?;
        let connect = || async {
            let mut call = Call::connect(addr, &config.auth).await?;
            match call.setup(&gre, *addr.ip()).await {
                Some(link) => Ok((call, link)),
                None => {
                    call.teardown().await;
                    Err(call.finish().await)
                }
            }
        };
        let (mut call, mut link) = super::retrying(
            config.attempts,
            config.backoff,
            connect,
            |r: &Result<_, LoginReport>| r.as_ref().is_err_and(LoginReport::is_transient),
        )
        .await
        .map_err(TunnelError::from_report)?;
        let net = NetworkConfig {
            timeout: config.network_timeout,
            ..NetworkConfig::client()
        };
        if !call.login(&mut link, username, password, Some(net)).await {
            call.close_link(&mut link).await;
            call.teardown().await;
            return Err(TunnelError::from_report(call.finish().await));
        }
        let session = link.session();
        let (local, peer, dns) = match session.network() {
            Some(n) => (n.local_addr(), n.peer_addr(), n.dns()),
            None => (None, None, Vec::new()),
        };
        let Some(local) = local else {
            call.close_link(&mut link).await;
            call.teardown().await;
            return Err(TunnelError::from_report(call.finish().await));
        };
        let mtu = session.mtu();
        let epoch = Instant::now();
        let mut device = PacketQueues::new(usize::from(mtu));
        // smoltcp's initial sequence numbers and our first local port come
        // from this seed: a failed OS random source ends the open (our
        // failure, not the node's), never a zero seed.
        let mut seed = [0u8; 8];
        if let Err(e) = getrandom::fill(&mut seed) {
            call.close_link(&mut link).await;
            call.teardown().await;
            return Err(TunnelError::Probe(ProbeError::Config(format!(
                "the OS random source failed: {e}"
            ))));
        }
        let mut icfg = IfaceConfig::new(HardwareAddress::Ip);
        icfg.random_seed = u64::from_le_bytes(seed);
        let mut iface = Interface::new(icfg, &mut device, smoltcp::time::Instant::from_micros(0));
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(local), 32));
        });
        let gw = peer.unwrap_or(local);
        let _ = iface.routes_mut().add_default_ipv4_route(gw);
        let port = u16::from_le_bytes([seed[0], seed[1]]) % 16_000 + 49_152;
        let shared = Arc::new(Shared {
            stack: Mutex::new(Stack {
                iface,
                sockets: SocketSet::new(Vec::new()),
                device,
                dead: None,
                next_port: port,
                orphans: Vec::new(),
                stats: TunnelStats::default(),
                raw: None,
            }),
            notify: Notify::new(),
            epoch,
            local,
            peer,
            dns,
            mtu,
            config: config.clone(),
            report: call.report.clone(),
        });
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(run(Arc::clone(&shared), call, link, rx));
        Ok(Tunnel { shared, cmd: tx })
    }

    /// Our address inside the tunnel (from IPCP).
    pub fn local_addr(&self) -> Ipv4Addr {
        self.shared.local
    }

    /// The server's address inside the tunnel, if it announced one.
    pub fn peer_addr(&self) -> Option<Ipv4Addr> {
        self.shared.peer
    }

    /// The DNS servers the server gave in IPCP (RFC 1877).
    pub fn dns(&self) -> &[Ipv4Addr] {
        &self.shared.dns
    }

    /// The IP MTU (peer MRU minus MPPE overhead).
    pub fn mtu(&self) -> u16 {
        self.shared.mtu
    }

    /// What the call found while opening (timings, server identity).
    pub fn report(&self) -> &LoginReport {
        &self.shared.report
    }

    /// Datapath counters.
    pub fn stats(&self) -> TunnelStats {
        self.shared.lock().stats
    }

    /// Octets written to TCP connections through the tunnel that the remote
    /// ends have not acknowledged yet (all connections together).
    pub fn tcp_unacked(&self) -> usize {
        let st = self.shared.lock();
        st.sockets
            .iter()
            .map(|(_, s)| match s {
                smoltcp::socket::Socket::Tcp(t) => t.send_queue(),
                _ => 0,
            })
            .sum()
    }

    /// Takes the tunnel's IPv4 datagrams for the caller (a TUN device, a
    /// router): from now on every datagram the peer sends goes to the
    /// returned [`PacketPath`] instead of the user-space TCP/IP stack, and
    /// datagrams given to [`PacketPath::send`] go to the peer as they are
    /// (PPP protocol 0x0021, MPPE-encrypted). TCP streams and UDP sockets of
    /// the tunnel receive nothing any more. `queue` bounds each direction's
    /// queue (datagrams beyond it are dropped, as a network interface would).
    ///
    /// # Errors
    /// `AlreadyExists` when a packet path was taken already,
    /// `ConnectionAborted` when the tunnel is down.
    pub fn packet_path(&self, queue: usize) -> io::Result<PacketPath> {
        let mut st = self.shared.lock();
        if let Some(why) = &st.dead {
            return Err(Shared::dead_error(why));
        }
        if st.raw.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the tunnel's packet path is taken already",
            ));
        }
        let (tx, rx) = mpsc::channel(queue.max(1));
        st.raw = Some(RawTap {
            to_owner: tx,
            from_owner: std::collections::VecDeque::new(),
            dropped: 0,
        });
        drop(st);
        Ok(PacketPath {
            shared: Arc::clone(&self.shared),
            rx,
            queue: queue.max(1),
        })
    }

    /// Whether the tunnel is up (not closed, not ended by the server, echoes
    /// answered).
    pub fn is_alive(&self) -> bool {
        self.shared.lock().dead.is_none()
    }

    /// Why the tunnel is down, if it is.
    pub fn down_reason(&self) -> Option<String> {
        self.shared.lock().dead.clone()
    }

    /// Sends an LCP Echo-Request and waits for the reply: the round-trip time
    /// through the tunnel.
    ///
    /// # Errors
    /// `TimedOut` after [`TunnelConfig::echo_timeout`]; `ConnectionAborted`
    /// when the tunnel is down.
    pub async fn echo(&self) -> io::Result<Duration> {
        let (tx, rx) = oneshot::channel();
        if self.cmd.send(Cmd::Echo(tx)).await.is_err() {
            return Err(Shared::dead_error("closed"));
        }
        match tokio::time::timeout(self.shared.config.echo_timeout, rx).await {
            Ok(Ok(rtt)) => Ok(rtt),
            Ok(Err(_)) => Err(Shared::dead_error(
                &self.down_reason().unwrap_or_else(|| "no echo".into()),
            )),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no LCP Echo-Reply through the tunnel",
            )),
        }
    }

    /// Tears the tunnel down politely (LCP Terminate, Call-Clear-Request,
    /// Stop-Control-Connection-Request) and says which steps completed. Every
    /// stream through it fails from then on. A second call returns at once.
    pub async fn close(&self) -> Teardown {
        let (tx, rx) = oneshot::channel();
        if self.cmd.send(Cmd::Close(tx)).await.is_err() {
            return Teardown::default();
        }
        rx.await.unwrap_or_default()
    }

    /// Opens a TCP connection through the tunnel.
    ///
    /// # Errors
    /// `Unsupported` for IPv6; `ConnectionRefused` (RST), `TimedOut`
    /// ([`TunnelConfig::tcp_connect_timeout`]), `ConnectionAborted` (tunnel down).
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<TunnelStream> {
        let SocketAddr::V4(v4) = addr else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the tunnel carries IPv4 only",
            ));
        };
        let cfg = &self.shared.config;
        let (handle, local_port) = {
            let mut guard = self.shared.lock();
            let st = &mut *guard;
            if let Some(why) = &st.dead {
                return Err(Shared::dead_error(why));
            }
            let mut sock = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0u8; cfg.tcp_rx_buffer]),
                tcp::SocketBuffer::new(vec![0u8; cfg.tcp_tx_buffer]),
            );
            sock.set_congestion_control(tcp::CongestionControl::Reno);
            sock.set_nagle_enabled(false);
            let port = alloc_port(st);
            sock.connect(
                st.iface.context(),
                IpEndpoint::new(IpAddress::Ipv4(*v4.ip()), v4.port()),
                port,
            )
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
            (st.sockets.add(sock), port)
        };
        self.shared.notify.notify_one();
        let stream = TunnelStream {
            shared: Arc::clone(&self.shared),
            handle,
            local: SocketAddr::from((self.shared.local, local_port)),
            peer: addr,
        };
        let established = poll_fn(|cx| {
            let mut st = stream.shared.lock();
            if let Some(why) = &st.dead {
                return Poll::Ready(Err(Shared::dead_error(why)));
            }
            let sock = st.sockets.get_mut::<tcp::Socket>(handle);
            match sock.state() {
                tcp::State::Established | tcp::State::CloseWait => Poll::Ready(Ok(())),
                tcp::State::Closed => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!("connection to {addr} through the tunnel refused"),
                ))),
                _ => {
                    sock.register_send_waker(cx.waker());
                    Poll::Pending
                }
            }
        });
        match tokio::time::timeout(cfg.tcp_connect_timeout, established).await {
            Ok(Ok(())) => Ok(stream),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connecting to {addr} through the tunnel timed out"),
            )),
        }
    }

    /// Binds a UDP socket inside the tunnel (an ephemeral port of our address).
    ///
    /// # Errors
    /// `ConnectionAborted` when the tunnel is down.
    pub fn udp_bind(&self) -> io::Result<TunnelUdp> {
        let mut guard = self.shared.lock();
        let st = &mut *guard;
        if let Some(why) = &st.dead {
            return Err(Shared::dead_error(why));
        }
        let mut sock = udp::Socket::new(
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 32], vec![0u8; 64 * 1024]),
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 32], vec![0u8; 64 * 1024]),
        );
        let port = alloc_port(st);
        sock.bind(port)
            .map_err(|e| io::Error::new(io::ErrorKind::AddrInUse, e.to_string()))?;
        let handle = st.sockets.add(sock);
        Ok(TunnelUdp {
            shared: Arc::clone(&self.shared),
            handle,
            port,
        })
    }

    /// Resolves a host name to IPv4 addresses through the DNS servers the
    /// server gave in IPCP (an IP literal is returned as is).
    ///
    /// # Errors
    /// `NotFound` when there is no DNS server or the name does not resolve,
    /// `TimedOut` after [`TunnelConfig::dns_timeout`], `ConnectionAborted` when
    /// the tunnel is down.
    pub async fn resolve(&self, name: &str) -> io::Result<Vec<IpAddr>> {
        if let Ok(ip) = name.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        if self.shared.dns.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "the server gave no DNS server in IPCP",
            ));
        }
        let servers: Vec<IpAddress> = self
            .shared
            .dns
            .iter()
            .map(|a| IpAddress::Ipv4(*a))
            .collect();
        let (handle, query) = {
            let mut guard = self.shared.lock();
            let st = &mut *guard;
            if let Some(why) = &st.dead {
                return Err(Shared::dead_error(why));
            }
            let mut sock = dns::Socket::new(&servers, vec![None]);
            let q = sock
                .start_query(st.iface.context(), name, DnsQueryType::A)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{name}: {e}")))?;
            (st.sockets.add(sock), q)
        };
        self.shared.notify.notify_one();
        let answer = poll_fn(|cx| {
            let mut st = self.shared.lock();
            if let Some(why) = &st.dead {
                return Poll::Ready(Err(Shared::dead_error(why)));
            }
            let sock = st.sockets.get_mut::<dns::Socket>(handle);
            match sock.get_query_result(query) {
                Ok(addrs) => Poll::Ready(Ok(addrs
                    .iter()
                    .map(|a| match a {
                        IpAddress::Ipv4(v4) => IpAddr::V4(*v4),
                    })
                    .collect::<Vec<_>>())),
                Err(dns::GetQueryResultError::Pending) => {
                    sock.register_query_waker(query, cx.waker());
                    Poll::Pending
                }
                Err(e) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{name}: {e}"),
                ))),
            }
        });
        let result = tokio::time::timeout(self.shared.config.dns_timeout, answer).await;
        {
            let mut st = self.shared.lock();
            // The tunnel's task removes every socket when it goes down.
            if st.sockets.iter().any(|(h, _)| h == handle) {
                st.sockets.remove(handle);
            }
        }
        match result {
            Ok(Ok(v)) if v.is_empty() => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{name}: no address"),
            )),
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("resolving {name} through the tunnel timed out"),
            )),
        }
    }
}

fn alloc_port(st: &mut Stack) -> u16 {
    let used = |sockets: &SocketSet<'static>, p: u16| {
        sockets.iter().any(|(_, s)| match s {
            smoltcp::socket::Socket::Tcp(t) => t.local_endpoint().is_some_and(|e| e.port == p),
            smoltcp::socket::Socket::Udp(u) => u.endpoint().port == p,
            _ => false,
        })
    };
    let mut port = st.next_port;
    for _ in 0..16_384 {
        port = port.checked_add(1).unwrap_or(49_152).max(49_152);
        if !used(&st.sockets, port) {
            break;
        }
    }
    st.next_port = port;
    port
}

/// The background task of one tunnel.
async fn run(shared: Arc<Shared>, mut call: Call, mut link: Link, mut cmds: mpsc::Receiver<Cmd>) {
    let cfg = shared.config.clone();
    let mut echo_due = Instant::now() + cfg.echo_interval;
    let mut echo_missed = 0u32;
    let mut periodic: Option<u8> = None;
    let mut pending: Vec<(u8, Instant, oneshot::Sender<Duration>)> = Vec::new();
    let mut closer: Option<oneshot::Sender<Teardown>> = None;
    let why: String = loop {
        let now = Instant::now();
        let delay = shared.pump(&mut link, now);
        link.flush(now).await;
        for id in link.session_mut().take_echo_replies() {
            if periodic == Some(id) {
                periodic = None;
                echo_missed = 0;
            }
            if let Some(i) = pending.iter().position(|(p, ..)| *p == id) {
                let (_, sent, tx) = pending.swap_remove(i);
                let _ = tx.send(now.duration_since(sent));
            }
        }
        let session = link.session();
        if session.is_done() {
            break "the PPP link closed".into();
        }
        if let Some(NetworkState::Failed(why)) = session.network().map(|n| n.state().clone()) {
            break why;
        }
        let wake = [
            session.poll_timeout(),
            link.gre.poll_timeout(),
            Some(now + delay),
            Some(echo_due),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(echo_due);
        tokio::select! {
            pkt = link.route.recv() => match pkt {
                Some(p) => {
                    // Anything from the peer proves it alive (pppd's
                    // lcp-echo-adaptive): only silence counts against it.
                    echo_missed = 0;
                    let now = Instant::now();
                    link.input(&p, now);
                    for _ in 0..256 {
                        let Some(p) = link.route.try_recv() else { break };
                        link.input(&p, now);
                    }
                }
                None => break "the GRE socket closed".into(),
            },
            () = shared.notify.notified() => {}
            ev = call.control_event() => {
                if let CtlEvent::Gone(why) = ev {
                    break why;
                }
            }
            cmd = cmds.recv() => match cmd {
                Some(Cmd::Echo(tx)) => {
                    if let Some(id) = link.session_mut().send_echo_request(Instant::now()) {
                        pending.push((id, Instant::now(), tx));
                    }
                }
                Some(Cmd::Close(tx)) => {
                    closer = Some(tx);
                    break "closed".into();
                }
                None => break "closed (every handle dropped)".into(),
            },
            () = tokio::time::sleep_until(wake.into()) => {
                let now = Instant::now();
                link.session_mut().handle_timeout(now);
                if now >= echo_due {
                    if periodic.is_some() {
                        echo_missed += 1;
                        if echo_missed >= cfg.echo_failures {
                            break format!("{echo_missed} LCP Echo-Requests in a row went unanswered");
                        }
                    }
                    periodic = link.session_mut().send_echo_request(now);
                    echo_due = now + cfg.echo_interval;
                }
            }
        }
    };
    tracing::debug!(reason = %why, "tunnel going down");
    shared.kill(&why);
    drop(pending);
    call.close_link(&mut link).await;
    call.teardown().await;
    let report = call.finish().await;
    if let Some(tx) = closer {
        let _ = tx.send(report.teardown);
    }
    // Wake every stream so it sees the tunnel is down.
    let mut st = shared.lock();
    let handles: Vec<SocketHandle> = st.sockets.iter().map(|(h, _)| h).collect();
    for h in handles {
        st.sockets.remove(h);
    }
}

/// The raw IPv4 datagrams of a [`Tunnel`] (see [`Tunnel::packet_path`]):
/// what `pppd` gives its `ppp0`, in user space.
pub struct PacketPath {
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Vec<u8>>,
    queue: usize,
}

impl std::fmt::Debug for PacketPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacketPath")
            .field("local", &self.shared.local)
            .field("mtu", &self.shared.mtu)
            .finish_non_exhaustive()
    }
}

/// Why [`PacketPath::send`] refused a datagram.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PacketError {
    /// Not an IPv4 datagram (the tunnel carries IPv4 only).
    #[error("not an IPv4 datagram")]
    NotIpv4,
    /// Longer than the tunnel's MTU.
    #[error("datagram of {len} octets exceeds the tunnel MTU {mtu}")]
    TooBig {
        /// Its length.
        len: usize,
        /// The tunnel's MTU.
        mtu: u16,
    },
    /// The send queue is full: the datagram was dropped.
    #[error("the tunnel's send queue is full")]
    QueueFull,
    /// The tunnel is down.
    #[error("tunnel down: {0}")]
    Down(String),
}

impl PacketPath {
    /// The next datagram from the peer (a whole IPv4 datagram, decrypted);
    /// `None` once the tunnel is down.
    pub async fn recv(&mut self) -> Option<Vec<u8>> {
        self.rx.recv().await
    }

    /// Queues one IPv4 datagram for the peer and wakes the tunnel's task.
    ///
    /// # Errors
    /// See [`PacketError`]; nothing is sent then.
    pub fn send(&self, datagram: &[u8]) -> Result<(), PacketError> {
        if datagram.len() < 20 || datagram[0] >> 4 != 4 {
            return Err(PacketError::NotIpv4);
        }
        if datagram.len() > usize::from(self.shared.mtu) {
            return Err(PacketError::TooBig {
                len: datagram.len(),
                mtu: self.shared.mtu,
            });
        }
        {
            let mut st = self.shared.lock();
            if let Some(why) = &st.dead {
                return Err(PacketError::Down(why.clone()));
            }
            let queue = self.queue;
            let Some(raw) = st.raw.as_mut() else {
                return Err(PacketError::Down("the packet path was closed".into()));
            };
            if raw.from_owner.len() >= queue {
                raw.dropped += 1;
                return Err(PacketError::QueueFull);
            }
            raw.from_owner.push_back(datagram.to_vec());
        }
        self.shared.notify.notify_one();
        Ok(())
    }

    /// Datagrams dropped so far because a queue was full (either direction).
    pub fn dropped(&self) -> u64 {
        self.shared.lock().raw.as_ref().map_or(0, |r| r.dropped)
    }

    /// The tunnel's IP MTU (the datagram size limit of [`send`](Self::send)).
    pub fn mtu(&self) -> u16 {
        self.shared.mtu
    }

    /// Our address inside the tunnel (from IPCP).
    pub fn local_addr(&self) -> Ipv4Addr {
        self.shared.local
    }

    /// The server's address inside the tunnel, if it announced one.
    pub fn peer_addr(&self) -> Option<Ipv4Addr> {
        self.shared.peer
    }
}

/// A TCP connection through a [`Tunnel`]: tokio [`AsyncRead`] + [`AsyncWrite`].
/// Dropping it closes the connection (FIN) in the background.
pub struct TunnelStream {
    shared: Arc<Shared>,
    handle: SocketHandle,
    local: SocketAddr,
    peer: SocketAddr,
}

impl std::fmt::Debug for TunnelStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelStream")
            .field("local", &self.local)
            .field("peer", &self.peer)
            .finish()
    }
}

impl TunnelStream {
    /// Our end (tunnel address, port).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The remote end.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// Octets written but not yet acknowledged by the remote end (still in
    /// the send buffer): `written - unacked` is what the peer has received.
    pub fn unacked(&self) -> usize {
        let mut st = self.shared.lock();
        match st.sockets.iter_mut().find(|(h, _)| *h == self.handle) {
            Some((_, smoltcp::socket::Socket::Tcp(sock))) => sock.send_queue(),
            _ => 0,
        }
    }

    fn with_socket<R>(
        &self,
        f: impl FnOnce(&mut tcp::Socket<'static>) -> Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        let mut st = self.shared.lock();
        if let Some(why) = &st.dead {
            return Poll::Ready(Err(Shared::dead_error(why)));
        }
        match st.sockets.iter_mut().find(|(h, _)| *h == self.handle) {
            Some((_, smoltcp::socket::Socket::Tcp(sock))) => f(sock),
            _ => Poll::Ready(Err(Shared::dead_error("socket gone"))),
        }
    }
}

impl AsyncRead for TunnelStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let r = self.with_socket(|sock| {
            if sock.can_recv() {
                let n = sock
                    .recv_slice(buf.initialize_unfilled())
                    .map_err(|e| io::Error::other(e.to_string()))?;
                buf.advance(n);
                return Poll::Ready(Ok(true));
            }
            if !sock.may_recv() {
                return Poll::Ready(Ok(false));
            }
            sock.register_recv_waker(cx.waker());
            Poll::Pending
        });
        match r {
            Poll::Ready(Ok(read)) => {
                if read {
                    // The window opened: let the stack announce it.
                    self.shared.notify.notify_one();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for TunnelStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = self.with_socket(|sock| {
            if sock.can_send() {
                let n = sock
                    .send_slice(data)
                    .map_err(|e| io::Error::other(e.to_string()))?;
                return Poll::Ready(Ok(n));
            }
            if !sock.may_send() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "connection through the tunnel closed",
                )));
            }
            sock.register_send_waker(cx.waker());
            Poll::Pending
        });
        if matches!(r, Poll::Ready(Ok(_))) {
            self.shared.notify.notify_one();
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = self.with_socket(|sock| {
            sock.close();
            Poll::Ready(Ok(()))
        });
        self.shared.notify.notify_one();
        r
    }
}

impl Drop for TunnelStream {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        let found = st.sockets.iter_mut().find(|(h, _)| *h == self.handle);
        if let Some((_, smoltcp::socket::Socket::Tcp(sock))) = found {
            sock.close();
            st.orphans.push((self.handle, Instant::now()));
        }
        drop(st);
        self.shared.notify.notify_one();
    }
}

/// A UDP socket inside a [`Tunnel`]. Dropping it unbinds.
pub struct TunnelUdp {
    shared: Arc<Shared>,
    handle: SocketHandle,
    port: u16,
}

impl std::fmt::Debug for TunnelUdp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelUdp")
            .field("port", &self.port)
            .finish()
    }
}

impl TunnelUdp {
    /// Our end (tunnel address, port).
    pub fn local_addr(&self) -> SocketAddr {
        SocketAddr::from((self.shared.local, self.port))
    }

    /// Sends one datagram to `to` (IPv4).
    ///
    /// # Errors
    /// `Unsupported` for IPv6, `ConnectionAborted` when the tunnel is down.
    pub async fn send_to(&self, data: &[u8], to: SocketAddr) -> io::Result<()> {
        let SocketAddr::V4(v4) = to else {
            return Err(io::Error::new(io::ErrorKind::Unsupported, "IPv4 only"));
        };
        let ep = IpEndpoint::new(IpAddress::Ipv4(*v4.ip()), v4.port());
        poll_fn(|cx| {
            let mut st = self.shared.lock();
            if let Some(why) = &st.dead {
                return Poll::Ready(Err(Shared::dead_error(why)));
            }
            let sock = st.sockets.get_mut::<udp::Socket>(self.handle);
            if sock.can_send() {
                return Poll::Ready(
                    sock.send_slice(data, ep)
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string())),
                );
            }
            sock.register_send_waker(cx.waker());
            Poll::Pending
        })
        .await?;
        self.shared.notify.notify_one();
        Ok(())
    }

    /// Receives one datagram: its length and sender.
    ///
    /// # Errors
    /// `ConnectionAborted` when the tunnel is down.
    pub async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        poll_fn(|cx| {
            let mut st = self.shared.lock();
            if let Some(why) = &st.dead {
                return Poll::Ready(Err(Shared::dead_error(why)));
            }
            let sock = st.sockets.get_mut::<udp::Socket>(self.handle);
            match sock.recv_slice(buf) {
                Ok((n, meta)) => {
                    let IpAddress::Ipv4(a) = meta.endpoint.addr;
                    Poll::Ready(Ok((n, SocketAddr::from((a, meta.endpoint.port)))))
                }
                Err(_) => {
                    sock.register_recv_waker(cx.waker());
                    Poll::Pending
                }
            }
        })
        .await
    }
}

impl Drop for TunnelUdp {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        if st.sockets.iter().any(|(h, _)| h == self.handle) {
            st.sockets.remove(self.handle);
        }
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Tunnel>();
    is::<TunnelStream>();
    is::<TunnelUdp>();
    let _ = Ipv4Address::UNSPECIFIED;
}
