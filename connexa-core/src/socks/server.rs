//! One service's listener: accepts clients, runs the negotiation with a time
//! limit, connects through the node's link and relays bytes untouched.
//!
//! A connection lives in two phases with separate budgets: until it has logged
//! in (greeting + RFC 1929) it holds a *pre-auth* slot ([`super::preauth`]:
//! bounded per source and in total, the oldest idle ones evicted for newcomers,
//! closed after `preauth_timeout`); once logged in it takes one of the
//! `max_connections` relay slots, which unauthenticated connections never hold.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};

use super::preauth::{Admission, PreAuthBudget};
use super::proto::{self, Action, Reject, Reply, ServerHandshake, TargetAddr};
use crate::domain::Secret;
use crate::service::{LinkStream, TunnelLink};

/// Where host names in CONNECT requests are resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DnsMode {
    /// With the tunnel's DNS servers, through the tunnel (the default: the
    /// answer is the one the node's network gives, and no query leaks locally).
    #[default]
    Tunnel,
    /// With the local resolver; the connection still goes through the tunnel.
    Local,
}

/// Limits and timeouts of each service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerOptions {
    /// Logged-in client connections (relays, and their CONNECT requests) at once
    /// per service; a client that logs in while this many are open is closed.
    /// Connections that have not logged in never count here. Default 256.
    pub max_connections: usize,
    /// Connections that have not logged in yet, at once per service. When
    /// full, a new connection still gets in and an older pre-auth connection
    /// is closed (evicted) instead: one of the newcomer's own source when that
    /// source holds `max_preauth_per_source`, else one of the source holding
    /// the most slots, connections without a complete greeting and then the
    /// oldest first. Default 128.
    pub max_preauth: usize,
    /// Connections that have not logged in yet, at once per source (IPv4
    /// address or IPv6 /64) per service. Default 16.
    pub max_preauth_per_source: usize,
    /// Time from accept to a completed login (greeting + username/password);
    /// a client that has not logged in by then is closed. Default 3 s.
    pub preauth_timeout: Duration,
    /// Time for the whole negotiation (greeting, login, request); a client that
    /// stalls is closed after it. Also bounds the pre-auth phase when shorter
    /// than `preauth_timeout`. Default 10 s.
    pub handshake_timeout: Duration,
    /// Time for resolving and connecting through the tunnel. Default 10 s.
    pub connect_timeout: Duration,
    /// A relayed connection with no byte in either direction for this long is closed. Default 300 s.
    pub idle_timeout: Duration,
    /// On stop, how long open connections may finish before they are cut. Default 2 s.
    pub drain_timeout: Duration,
    /// Where names are resolved.
    pub dns: DnsMode,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            max_connections: 256,
            max_preauth: 128,
            max_preauth_per_source: 16,
            preauth_timeout: Duration::from_secs(3),
            handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            drain_timeout: Duration::from_secs(2),
            dns: DnsMode::Tunnel,
        }
    }
}

/// Counters of one service since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ServiceStats {
    /// Client connections accepted.
    pub accepted: u64,
    /// Client connections open now (pre-auth and logged in).
    pub active: u64,
    /// Client connections open now that have not logged in yet.
    pub preauth_active: u64,
    /// Pre-auth connections closed because a newer connection took their slot
    /// (the pre-auth budget was full).
    pub preauth_evicted: u64,
    /// Pre-auth connections closed because they had not logged in within the
    /// pre-auth deadline (`preauth_timeout`, or `handshake_timeout` if shorter).
    pub preauth_timeouts: u64,
    /// Closed right after a successful login because the service had
    /// `max_connections` logged-in connections open.
    pub over_limit: u64,
    /// Logged in, then closed because the CONNECT request did not arrive
    /// within the handshake timeout.
    pub handshake_timeouts: u64,
    /// Closed for wrong credentials.
    pub auth_failures: u64,
    /// Closed for any other protocol violation (bad version, no acceptable method,
    /// unsupported command or address type, malformed message, early EOF).
    pub protocol_errors: u64,
    /// CONNECTs that failed (the reply said why).
    pub connect_failures: u64,
    /// CONNECTs that succeeded.
    pub relayed: u64,
    /// Relays closed by the idle timeout.
    pub idle_timeouts: u64,
    /// Bytes from clients to targets (counted as they move).
    pub bytes_up: u64,
    /// Bytes from targets to clients (counted as they move).
    pub bytes_down: u64,
}

impl ServiceStats {
    /// Adds `other`'s counts to these (to total several services).
    pub fn add(&mut self, other: &ServiceStats) {
        let ServiceStats {
            accepted,
            active,
            preauth_active,
            preauth_evicted,
            preauth_timeouts,
            over_limit,
            handshake_timeouts,
            auth_failures,
            protocol_errors,
            connect_failures,
            relayed,
            idle_timeouts,
            bytes_up,
            bytes_down,
        } = *other;
        self.accepted += accepted;
        self.active += active;
        self.preauth_active += preauth_active;
        self.preauth_evicted += preauth_evicted;
        self.preauth_timeouts += preauth_timeouts;
        self.over_limit += over_limit;
        self.handshake_timeouts += handshake_timeouts;
        self.auth_failures += auth_failures;
        self.protocol_errors += protocol_errors;
        self.connect_failures += connect_failures;
        self.relayed += relayed;
        self.idle_timeouts += idle_timeouts;
        self.bytes_up += bytes_up;
        self.bytes_down += bytes_down;
    }

    /// Adds these counts to a scrape (`connexa_socks_*`).
    pub fn collect_into(&self, e: &mut crate::metrics::Exposition) {
        use crate::metrics::MetricType;
        let series: [(&str, &str, MetricType, u64); 14] = [
            (
                "connexa_socks_accepted_total",
                "Client connections accepted by SOCKS5 services.",
                MetricType::Counter,
                self.accepted,
            ),
            (
                "connexa_socks_connections",
                "Client connections open now on SOCKS5 services (pre-auth and logged in).",
                MetricType::Gauge,
                self.active,
            ),
            (
                "connexa_socks_preauth_connections",
                "Client connections open now that have not logged in yet (they hold pre-auth slots, not relay slots).",
                MetricType::Gauge,
                self.preauth_active,
            ),
            (
                "connexa_socks_preauth_evicted_total",
                "Connections closed before login because the pre-auth budget (max_preauth, max_preauth_per_source) was full and a newer connection took their slot.",
                MetricType::Counter,
                self.preauth_evicted,
            ),
            (
                "connexa_socks_preauth_timeouts_total",
                "Connections closed because they had not logged in within preauth_timeout_secs.",
                MetricType::Counter,
                self.preauth_timeouts,
            ),
            (
                "connexa_socks_over_limit_total",
                "Connections closed right after a successful login because max_connections logged-in connections were open.",
                MetricType::Counter,
                self.over_limit,
            ),
            (
                "connexa_socks_handshake_timeouts_total",
                "Logged-in connections closed because the CONNECT request did not arrive within handshake_timeout_secs.",
                MetricType::Counter,
                self.handshake_timeouts,
            ),
            (
                "connexa_socks_auth_failures_total",
                "Connections closed for wrong credentials.",
                MetricType::Counter,
                self.auth_failures,
            ),
            (
                "connexa_socks_protocol_errors_total",
                "Connections closed for a SOCKS5 protocol violation or an early close.",
                MetricType::Counter,
                self.protocol_errors,
            ),
            (
                "connexa_socks_connect_failures_total",
                "CONNECT requests that failed through the tunnel.",
                MetricType::Counter,
                self.connect_failures,
            ),
            (
                "connexa_socks_relayed_total",
                "CONNECT requests that succeeded (relays started).",
                MetricType::Counter,
                self.relayed,
            ),
            (
                "connexa_socks_idle_timeouts_total",
                "Relays closed by idle_timeout_secs.",
                MetricType::Counter,
                self.idle_timeouts,
            ),
            (
                "connexa_socks_bytes_up_total",
                "Bytes relayed from clients to targets.",
                MetricType::Counter,
                self.bytes_up,
            ),
            (
                "connexa_socks_bytes_down_total",
                "Bytes relayed from targets to clients.",
                MetricType::Counter,
                self.bytes_down,
            ),
        ];
        for (name, help, kind, v) in series {
            #[allow(clippy::cast_precision_loss)] // the format's values are f64
            e.value(name, help, kind, v as f64);
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    active: AtomicU64,
    preauth_active: AtomicU64,
    preauth_evicted: AtomicU64,
    preauth_timeouts: AtomicU64,
    over_limit: AtomicU64,
    handshake_timeouts: AtomicU64,
    auth_failures: AtomicU64,
    protocol_errors: AtomicU64,
    connect_failures: AtomicU64,
    relayed: AtomicU64,
    idle_timeouts: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    fn snapshot(&self) -> ServiceStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ServiceStats {
            accepted: g(&self.accepted),
            active: g(&self.active),
            preauth_active: g(&self.preauth_active),
            preauth_evicted: g(&self.preauth_evicted),
            preauth_timeouts: g(&self.preauth_timeouts),
            over_limit: g(&self.over_limit),
            handshake_timeouts: g(&self.handshake_timeouts),
            auth_failures: g(&self.auth_failures),
            protocol_errors: g(&self.protocol_errors),
            connect_failures: g(&self.connect_failures),
            relayed: g(&self.relayed),
            idle_timeouts: g(&self.idle_timeouts),
            bytes_up: g(&self.bytes_up),
            bytes_down: g(&self.bytes_down),
        }
    }
}

/// What the listener task and its connections share.
pub(crate) struct Shared {
    link: RwLock<Arc<dyn TunnelLink>>,
    user: String,
    password: Secret,
    opts: ServerOptions,
    counters: Counters,
    preauth: PreAuthBudget,
    relays: Semaphore,
    started_at: chrono::DateTime<chrono::Utc>,
    last_error: std::sync::Mutex<Option<String>>,
}

impl Shared {
    pub(crate) fn new(
        link: Arc<dyn TunnelLink>,
        user: String,
        password: Secret,
        opts: ServerOptions,
    ) -> Self {
        Shared {
            link: RwLock::new(link),
            user,
            password,
            preauth: PreAuthBudget::new(opts.max_preauth, opts.max_preauth_per_source),
            relays: Semaphore::new(opts.max_connections.max(1)),
            opts,
            counters: Counters::default(),
            // Milliseconds, as the store keeps it.
            started_at: {
                let now = chrono::Utc::now();
                chrono::DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now)
            },
            last_error: std::sync::Mutex::new(None),
        }
    }

    /// When the service started.
    pub(crate) fn started_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.started_at
    }

    /// Records the last error (text without secrets).
    pub(crate) fn set_last_error(&self, error: String) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(error);
    }

    /// The last error recorded.
    pub(crate) fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn link(&self) -> Arc<dyn TunnelLink> {
        Arc::clone(&self.link.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Puts a new link in place (new connections use it); returns the old one.
    pub(crate) fn replace_link(&self, link: Arc<dyn TunnelLink>) -> Arc<dyn TunnelLink> {
        let mut g = self.link.write().unwrap_or_else(PoisonError::into_inner);
        std::mem::replace(&mut *g, link)
    }

    pub(crate) fn stats(&self) -> ServiceStats {
        self.counters.snapshot()
    }
}

/// A running listener; stopping it closes the port and drains connections.
pub(crate) struct ServerHandle {
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl ServerHandle {
    pub(crate) fn spawn(listener: TcpListener, shared: Arc<Shared>) -> Self {
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, shared, rx));
        ServerHandle {
            stop,
            task: Some(task),
        }
    }

    /// Closes the listener at once, lets open connections finish for the drain
    /// timeout, cuts the rest, and returns when all is done.
    pub(crate) async fn shutdown(mut self) {
        self.stop.send_replace(true);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        // A launcher dropped without stop: the task ends (port closed, drained).
        self.stop.send_replace(true);
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            () = async { let _ = stop.wait_for(|s| *s).await; } => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            r = listener.accept() => match r {
                Ok((sock, peer)) => {
                    bump(&shared.counters.accepted);
                    // Never refused: a full pre-auth budget evicts an older
                    // unauthenticated connection instead (see `preauth`).
                    let admission = shared.preauth.admit(peer.ip());
                    let shared = Arc::clone(&shared);
                    conns.spawn(async move { serve(sock, &shared, admission).await });
                }
                Err(e) => {
                    // EMFILE and friends: do not spin.
                    tracing::warn!(error = %e, "SOCKS5 accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    drop(listener);
    let drain = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(shared.opts.drain_timeout, drain)
        .await
        .is_err()
    {
        tracing::debug!(left = conns.len(), "drain timeout: cutting connections");
        conns.shutdown().await;
    }
}

/// Decrements a gauge when dropped.
struct Gauge<'a>(&'a AtomicU64);

impl<'a> Gauge<'a> {
    fn up(c: &'a AtomicU64) -> Self {
        c.fetch_add(1, Ordering::Relaxed);
        Gauge(c)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Holds a pre-auth slot; gives it back when dropped.
struct PreAuthSlot<'a>(&'a PreAuthBudget, u64);

impl Drop for PreAuthSlot<'_> {
    fn drop(&mut self) {
        self.0.release(self.1);
    }
}

enum NegotiationEnd {
    /// The client logged in; the RFC 1929 success reply is still to be sent.
    Authenticated(Vec<u8>),
    Connect(TargetAddr, Vec<u8>),
    Rejected(Reject),
    Io,
}

/// The negotiation's bounded input buffer, kept across its two phases (a
/// client may send its CONNECT request right behind its login).
struct Input {
    buf: Vec<u8>,
    len: usize,
}

impl Input {
    fn new() -> Self {
        Input {
            buf: vec![0u8; 2 * proto::MAX_MESSAGE],
            len: 0,
        }
    }

    fn consume(&mut self, used: usize) {
        let used = used.min(self.len);
        self.buf.copy_within(used..self.len, 0);
        self.len -= used;
    }
}

/// Runs the negotiation on a bounded buffer: to its end, or, when the client
/// has not logged in yet, up to the login (then returns
/// [`NegotiationEnd::Authenticated`] with the success reply unsent).
/// `greeted` is called when the greeting has been answered.
async fn negotiate(
    sock: &mut TcpStream,
    hs: &mut ServerHandshake,
    input: &mut Input,
    mut greeted: impl FnMut(),
) -> NegotiationEnd {
    let pre_auth = !hs.is_authenticated();
    loop {
        let (used, action) = hs.handle_input(&input.buf[..input.len]);
        match action {
            Action::NeedMore => {
                if input.len == input.buf.len() {
                    // Cannot happen (a message fits in half the buffer), but never grow.
                    return NegotiationEnd::Rejected(Reject::BadRequest);
                }
                match sock.read(&mut input.buf[input.len..]).await {
                    Ok(0) | Err(_) => return NegotiationEnd::Io,
                    Ok(n) => input.len += n,
                }
            }
            Action::Send(bytes) => {
                input.consume(used);
                if pre_auth {
                    if hs.is_authenticated() {
                        return NegotiationEnd::Authenticated(bytes);
                    }
                    // Before the login, the only reply is the method choice.
                    greeted();
                }
                if sock.write_all(&bytes).await.is_err() {
                    return NegotiationEnd::Io;
                }
            }
            Action::Close { reply, reason } => {
                if !reply.is_empty() {
                    let _ = sock.write_all(&reply).await;
                }
                let _ = sock.shutdown().await;
                return NegotiationEnd::Rejected(reason);
            }
            Action::Connect(target) => {
                let early = input.buf.get(used..input.len).unwrap_or_default().to_vec();
                return NegotiationEnd::Connect(target, early);
            }
        }
    }
}

/// Counts a negotiation that ended without a CONNECT.
fn count_failed(shared: &Shared, end: &NegotiationEnd) {
    let c = &shared.counters;
    match end {
        NegotiationEnd::Rejected(Reject::BadCredentials) => {
            bump(&c.auth_failures);
            shared.set_last_error("a client sent wrong credentials".into());
        }
        _ => bump(&c.protocol_errors),
    }
}

async fn serve(mut sock: TcpStream, shared: &Shared, admission: Admission) {
    let c = &shared.counters;
    let _active = Gauge::up(&c.active);
    let opts = &shared.opts;
    let start = tokio::time::Instant::now();
    let handshake_deadline = start + opts.handshake_timeout;
    let preauth_deadline = start + opts.preauth_timeout.min(opts.handshake_timeout);
    let _ = sock.set_nodelay(true);
    let mut hs = ServerHandshake::new(shared.user.clone(), shared.password.clone());
    let mut input = Input::new();

    // Phase 1: greeting + login, on a pre-auth slot.
    let Admission { id, mut evicted } = admission;
    let login = {
        let _slot = PreAuthSlot(&shared.preauth, id);
        let _gauge = Gauge::up(&c.preauth_active);
        let phase = tokio::time::timeout_at(
            preauth_deadline,
            negotiate(&mut sock, &mut hs, &mut input, || {
                shared.preauth.greeted(id)
            }),
        );
        tokio::select! {
            r = phase => r,
            _ = &mut evicted => return bump(&c.preauth_evicted),
        }
    };
    let success = match login {
        Err(_) => return bump(&c.preauth_timeouts),
        Ok(NegotiationEnd::Authenticated(reply)) => reply,
        Ok(end) => return count_failed(shared, &end),
    };

    // Phase 2: logged in, on a relay slot: the CONNECT request, then the relay.
    let Ok(_relay) = shared.relays.try_acquire() else {
        bump(&c.over_limit);
        let _ = sock.shutdown().await;
        return;
    };
    let request = tokio::time::timeout_at(handshake_deadline, async {
        if sock.write_all(&success).await.is_err() {
            return NegotiationEnd::Io;
        }
        negotiate(&mut sock, &mut hs, &mut input, || {}).await
    })
    .await;
    let (target, early) = match request {
        Err(_) => return bump(&c.handshake_timeouts),
        Ok(NegotiationEnd::Connect(t, early)) => (t, early),
        Ok(end) => return count_failed(shared, &end),
    };
    let link = shared.link();
    let upstream = tokio::time::timeout(
        opts.connect_timeout,
        connect_target(link.as_ref(), &target, opts.dns),
    )
    .await
    .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")));
    let t = opts.handshake_timeout;
    async fn reply_in_time(bytes: Vec<u8>, sock: &mut TcpStream, t: Duration) -> bool {
        matches!(
            tokio::time::timeout(t, sock.write_all(&bytes)).await,
            Ok(Ok(()))
        )
    }
    let mut upstream = match upstream {
        Ok(s) => s,
        Err(e) => {
            bump(&c.connect_failures);
            tracing::debug!(%target, error = %e, "SOCKS5 connect failed");
            // The target is the client's text: no control character, bounded.
            let shown: String = target
                .to_string()
                .chars()
                .map(|ch| if ch.is_control() { '?' } else { ch })
                .take(200)
                .collect();
            shared.set_last_error(format!("CONNECT to {shown} failed: {e}"));
            reply_in_time(proto::failure_reply(Reply::from_io(&e)), &mut sock, t).await;
            let _ = sock.shutdown().await;
            return;
        }
    };
    let bound = SocketAddr::from((IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0));
    if !reply_in_time(proto::encode_reply(Reply::Succeeded, bound), &mut sock, t).await {
        return bump(&c.protocol_errors);
    }
    bump(&c.relayed);
    if !early.is_empty() {
        if upstream.write_all(&early).await.is_err() {
            return;
        }
        c.bytes_up.fetch_add(early.len() as u64, Ordering::Relaxed);
    }
    match relay(sock, &mut upstream, opts.idle_timeout, c).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::TimedOut => bump(&c.idle_timeouts),
        Err(_) => {}
    }
}

/// Resolves `target` (IP literals as such, names per `dns`) and connects through
/// `link` to the first address that accepts.
pub(crate) async fn connect_target(
    link: &dyn TunnelLink,
    target: &TargetAddr,
    dns: DnsMode,
) -> io::Result<Box<dyn LinkStream>> {
    let addrs: Vec<SocketAddr> = match target {
        TargetAddr::Ip(a) => vec![*a],
        TargetAddr::Domain(host, port) => {
            let literal = host.trim_start_matches('[').trim_end_matches(']');
            let ips: Vec<IpAddr> = match literal.parse::<IpAddr>() {
                Ok(ip) => vec![ip],
                Err(_) => match dns {
                    DnsMode::Tunnel => link.resolve(host).await?,
                    DnsMode::Local => tokio::net::lookup_host((host.as_str(), *port))
                        .await?
                        .map(|a| a.ip())
                        .collect(),
                },
            };
            ips.into_iter()
                .map(|ip| SocketAddr::new(ip, *port))
                .collect()
        }
    };
    let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{target}: no address"));
    for a in addrs.into_iter().take(8) {
        match link.connect(a).await {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// `copy_bidirectional` with an idle timeout: the client side records the time
/// of every byte that moves and counts the bytes (read from the client: up;
/// written to it: down) as they move; a watchdog ends the relay after `idle`
/// without any.
async fn relay(
    client: TcpStream,
    upstream: &mut Box<dyn LinkStream>,
    idle: Duration,
    counters: &Counters,
) -> io::Result<(u64, u64)> {
    let epoch = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut client = Tracked {
        inner: client,
        last: Arc::clone(&last),
        epoch,
        counters,
    };
    let copy = tokio::io::copy_bidirectional(&mut client, upstream);
    tokio::pin!(copy);
    loop {
        let seen = Duration::from_millis(last.load(Ordering::Relaxed));
        let deadline = tokio::time::Instant::from_std(epoch + seen + idle);
        tokio::select! {
            r = &mut copy => return r,
            () = tokio::time::sleep_until(deadline) => {
                let seen = Duration::from_millis(last.load(Ordering::Relaxed));
                if epoch.elapsed() >= seen + idle {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout"));
                }
            }
        }
    }
}

struct Tracked<'a, S> {
    inner: S,
    last: Arc<AtomicU64>,
    epoch: Instant,
    counters: &'a Counters,
}

impl<S> Tracked<'_, S> {
    fn touch(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<'_, S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.touch();
            let n = (buf.filled().len() - before) as u64;
            this.counters.bytes_up.fetch_add(n, Ordering::Relaxed);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<'_, S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r
            && n > 0
        {
            this.touch();
            this.counters
                .bytes_down
                .fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
