//! One service's listener: accepts clients, runs the negotiation with a time
//! limit, connects through the node's link and relays bytes untouched.

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
    /// Client connections at once per service; more are closed on accept. Default 256.
    pub max_connections: usize,
    /// Time for the whole negotiation (greeting, login, request); a client that
    /// stalls is closed after it. Default 10 s.
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
    /// Client connections accepted (including those closed at once for the limit).
    pub accepted: u64,
    /// Client connections open now.
    pub active: u64,
    /// Closed at once because the service had `max_connections` open.
    pub over_limit: u64,
    /// Closed because the negotiation took longer than the handshake timeout.
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
    /// Bytes from clients to targets (of relays that ended).
    pub bytes_up: u64,
    /// Bytes from targets to clients (of relays that ended).
    pub bytes_down: u64,
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    active: AtomicU64,
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
            opts,
            counters: Counters::default(),
        }
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
    let limit = Arc::new(Semaphore::new(shared.opts.max_connections.max(1)));
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            () = async { let _ = stop.wait_for(|s| *s).await; } => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            r = listener.accept() => match r {
                Ok((sock, _peer)) => {
                    bump(&shared.counters.accepted);
                    match Arc::clone(&limit).try_acquire_owned() {
                        Ok(permit) => {
                            let shared = Arc::clone(&shared);
                            conns.spawn(async move {
                                serve(sock, &shared).await;
                                drop(permit);
                            });
                        }
                        Err(_) => {
                            bump(&shared.counters.over_limit);
                            drop(sock);
                        }
                    }
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

struct Active<'a>(&'a Counters);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

enum NegotiationEnd {
    Connect(TargetAddr, Vec<u8>),
    Rejected(Reject),
    Io,
}

/// Runs the negotiation on a bounded buffer.
async fn negotiate(sock: &mut TcpStream, hs: &mut ServerHandshake) -> NegotiationEnd {
    let mut buf = vec![0u8; 2 * proto::MAX_MESSAGE];
    let mut len = 0usize;
    loop {
        let (used, action) = hs.handle_input(&buf[..len]);
        match action {
            Action::NeedMore => {
                if len == buf.len() {
                    // Cannot happen (a message fits in half the buffer), but never grow.
                    return NegotiationEnd::Rejected(Reject::BadRequest);
                }
                match sock.read(&mut buf[len..]).await {
                    Ok(0) | Err(_) => return NegotiationEnd::Io,
                    Ok(n) => len += n,
                }
            }
            Action::Send(bytes) => {
                if sock.write_all(&bytes).await.is_err() {
                    return NegotiationEnd::Io;
                }
                buf.copy_within(used..len, 0);
                len -= used;
            }
            Action::Close { reply, reason } => {
                if !reply.is_empty() {
                    let _ = sock.write_all(&reply).await;
                }
                let _ = sock.shutdown().await;
                return NegotiationEnd::Rejected(reason);
            }
            Action::Connect(target) => {
                let early = buf.get(used..len).unwrap_or_default().to_vec();
                return NegotiationEnd::Connect(target, early);
            }
        }
    }
}

async fn serve(mut sock: TcpStream, shared: &Shared) {
    let c = &shared.counters;
    c.active.fetch_add(1, Ordering::Relaxed);
    let _active = Active(c);
    let _ = sock.set_nodelay(true);
    let opts = &shared.opts;
    let mut hs = ServerHandshake::new(shared.user.clone(), shared.password.clone());
    let (target, early) =
        match tokio::time::timeout(opts.handshake_timeout, negotiate(&mut sock, &mut hs)).await {
            Err(_) => return bump(&c.handshake_timeouts),
            Ok(NegotiationEnd::Rejected(Reject::BadCredentials)) => return bump(&c.auth_failures),
            Ok(NegotiationEnd::Rejected(_) | NegotiationEnd::Io) => {
                return bump(&c.protocol_errors);
            }
            Ok(NegotiationEnd::Connect(t, early)) => (t, early),
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
    if !early.is_empty() && upstream.write_all(&early).await.is_err() {
        return;
    }
    match relay(sock, &mut upstream, opts.idle_timeout).await {
        Ok((up, down)) => {
            c.bytes_up
                .fetch_add(up + early.len() as u64, Ordering::Relaxed);
            c.bytes_down.fetch_add(down, Ordering::Relaxed);
        }
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
/// of every byte that moves; a watchdog ends the relay after `idle` without any.
async fn relay(
    client: TcpStream,
    upstream: &mut Box<dyn LinkStream>,
    idle: Duration,
) -> io::Result<(u64, u64)> {
    let epoch = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut client = Tracked {
        inner: client,
        last: Arc::clone(&last),
        epoch,
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

struct Tracked<S> {
    inner: S,
    last: Arc<AtomicU64>,
    epoch: Instant,
}

impl<S> Tracked<S> {
    fn touch(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
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
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.touch();
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
