//! The process's raw `IPPROTO_GRE` socket and its demultiplexer.

use std::collections::HashMap;
use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::ports::ProbeError;
use crate::pptp::gre::{IPPROTO_GRE, parse_ipv4_gre};

/// The message of [`ProbeError::NotPermitted`] when the raw socket cannot be opened.
pub const NEED_CAP_NET_RAW: &str =
    "raw GRE sockets need CAP_NET_RAW: run as root or `setcap cap_net_raw+ep <binary>`";

/// Inbound GRE packets queued per tunnel before further ones are dropped.
const ROUTE_QUEUE: usize = 512;
/// Largest datagram read (IPv4 total length is 16 bits).
const MAX_DATAGRAM: usize = 65_535;

/// A demultiplexing key: the peer's IPv4 address and the call id it puts in the
/// GRE key of packets to us (our call id).
pub type RouteKey = (Ipv4Addr, u16);

type Routes = HashMap<RouteKey, mpsc::Sender<Vec<u8>>>;

#[derive(Debug, Default)]
struct Counters {
    received: AtomicU64,
    delivered: AtomicU64,
    unrouted: AtomicU64,
    malformed: AtomicU64,
    overflow: AtomicU64,
}

#[derive(Debug)]
struct Shared {
    fd: AsyncFd<Socket>,
    routes: Mutex<Routes>,
    next_call_id: Mutex<u16>,
    counters: Counters,
}

impl Shared {
    fn routes(&self) -> MutexGuard<'_, Routes> {
        // A poisoned map is still a consistent map (every operation is one
        // insert/remove/get), so keep using it.
        self.routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Counters of a [`GreSocket`] since it was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GreStats {
    /// Datagrams read from the socket.
    pub received: u64,
    /// Datagrams handed to a live tunnel.
    pub delivered: u64,
    /// Well-formed Enhanced GRE for no live tunnel: dropped.
    pub unrouted: u64,
    /// Not Enhanced GRE (other GRE versions, truncated, ...): dropped.
    pub malformed: u64,
    /// Dropped because the tunnel's queue was full.
    pub overflow: u64,
}

/// One raw `IPPROTO_GRE` socket shared by every tunnel of the process.
///
/// A background task reads every GRE datagram the kernel delivers (a raw socket
/// sees all of them), parses the IPv4 + Enhanced GRE headers and hands the GRE
/// packet (IP header stripped) to the tunnel registered under `(source address,
/// call id)` ([`GreSocket::register`]); packets for no live tunnel are dropped
/// and counted ([`GreSocket::stats`]). Sending needs no lock.
///
/// Opening it needs `CAP_NET_RAW`; without it [`GreSocket::open`] returns
/// [`ProbeError::NotPermitted`] with [`NEED_CAP_NET_RAW`]. The socket lives in
/// the network namespace of the thread that opens it. Dropping the last handle
/// stops the reader task and closes the socket.
#[derive(Debug)]
pub struct GreSocket {
    shared: Arc<Shared>,
    reader: JoinHandle<()>,
}

impl Drop for GreSocket {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// The process's one raw GRE socket, shared by everything that opens PPTP
/// calls (the auth prober, the speed tester, the service opener): opened by
/// whichever needs it first ([`SharedGre::get`]), in the network namespace
/// and on the tokio runtime of that caller, or given up front
/// ([`SharedGre::with_socket`]). Clones share the one socket.
///
/// ```no_run
/// # async fn demo() -> Result<(), connexa_core::ports::ProbeError> {
/// use connexa_core::tunnel::SharedGre;
/// let gre = SharedGre::new();
/// let other = gre.clone();
/// // Both hand out the same socket; it is opened on the first `get`.
/// assert!(std::sync::Arc::ptr_eq(gre.get().await?, other.get().await?));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct SharedGre(Arc<tokio::sync::OnceCell<Arc<GreSocket>>>);

impl SharedGre {
    /// A handle whose socket is opened on first use.
    pub fn new() -> Self {
        Self::default()
    }

    /// A handle over an already open socket.
    pub fn with_socket(gre: Arc<GreSocket>) -> Self {
        SharedGre(Arc::new(tokio::sync::OnceCell::new_with(Some(gre))))
    }

    /// The socket, opened now if no holder of this handle opened it yet.
    ///
    /// # Errors
    /// As [`GreSocket::open`]: [`ProbeError::NotPermitted`] without
    /// `CAP_NET_RAW`. A failed open is tried again on the next call.
    pub async fn get(&self) -> Result<&Arc<GreSocket>, ProbeError> {
        self.0.get_or_try_init(|| async { GreSocket::open() }).await
    }

    /// The socket if it is open.
    pub fn opened(&self) -> Option<&Arc<GreSocket>> {
        self.0.get()
    }

    /// `true` when both handles share one socket (one is a clone of the other).
    pub fn shares_with(&self, other: &SharedGre) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl GreSocket {
    /// Opens the raw socket and starts its reader task on the current tokio
    /// runtime (call from within one).
    ///
    /// # Errors
    /// [`ProbeError::NotPermitted`] without `CAP_NET_RAW`; [`ProbeError::Config`]
    /// for any other failure (no runtime, out of descriptors, ...).
    pub fn open() -> Result<Arc<GreSocket>, ProbeError> {
        let socket = Socket::new(
            Domain::IPV4,
            Type::RAW,
            Some(Protocol::from(i32::from(IPPROTO_GRE))),
        )
        .map_err(|e| match e.kind() {
            io::ErrorKind::PermissionDenied => ProbeError::NotPermitted(NEED_CAP_NET_RAW.into()),
            _ => ProbeError::Config(format!("cannot open a raw GRE socket: {e}")),
        })?;
        socket
            .set_nonblocking(true)
            .map_err(|e| ProbeError::Config(format!("raw GRE socket: {e}")))?;
        let _ = socket.set_recv_buffer_size(4 << 20);
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            ProbeError::Config("GreSocket::open must be called inside a tokio runtime".into())
        })?;
        let fd = {
            let _guard = runtime.enter();
            super::fd::register(socket)
                .map_err(|e| ProbeError::Config(format!("raw GRE socket: {e}")))?
        };
        let shared = Arc::new(Shared {
            fd,
            routes: Mutex::new(HashMap::new()),
            next_call_id: Mutex::new(initial_call_id()),
            counters: Counters::default(),
        });
        let reader = runtime.spawn(read_loop(Arc::clone(&shared)));
        Ok(Arc::new(GreSocket { shared, reader }))
    }

    /// Registers a tunnel with `peer` and a fresh call id of ours (unique among
    /// this socket's live tunnels with that peer, never 0). Inbound packets for
    /// it arrive on the returned route until it is dropped.
    ///
    /// # Errors
    /// All 65,535 call ids are in use with this peer.
    pub fn register(self: &Arc<Self>, peer: Ipv4Addr) -> Result<GreRoute, ProbeError> {
        let (tx, rx) = mpsc::channel(ROUTE_QUEUE);
        let mut next = self
            .shared
            .next_call_id
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut routes = self.shared.routes();
        for _ in 0..u16::MAX {
            let id = *next;
            *next = next.checked_add(1).unwrap_or(1);
            if id == 0 || routes.contains_key(&(peer, id)) {
                continue;
            }
            routes.insert((peer, id), tx);
            return Ok(GreRoute {
                socket: Arc::clone(self),
                peer,
                call_id: id,
                rx,
            });
        }
        Err(ProbeError::Config(format!(
            "no free PPTP call id for {peer}: too many concurrent calls"
        )))
    }

    /// Registers a tunnel under a call id chosen by the caller (a simulated
    /// server whose ids are fixed).
    ///
    /// # Errors
    /// That `(peer, call_id)` is already live.
    pub fn register_with_id(
        self: &Arc<Self>,
        peer: Ipv4Addr,
        call_id: u16,
    ) -> Result<GreRoute, ProbeError> {
        let (tx, rx) = mpsc::channel(ROUTE_QUEUE);
        let mut routes = self.shared.routes();
        if routes.contains_key(&(peer, call_id)) {
            return Err(ProbeError::Config(format!(
                "call id {call_id} with {peer} is already in use"
            )));
        }
        routes.insert((peer, call_id), tx);
        Ok(GreRoute {
            socket: Arc::clone(self),
            peer,
            call_id,
            rx,
        })
    }

    /// Sends one Enhanced GRE packet (no IP header: the kernel adds it) to `peer`.
    ///
    /// # Errors
    /// The kernel refused the datagram.
    pub async fn send_to(&self, peer: Ipv4Addr, gre: &[u8]) -> io::Result<()> {
        let addr = SockAddr::from(SocketAddr::V4(SocketAddrV4::new(peer, 0)));
        loop {
            let mut guard = self.shared.fd.writable().await?;
            match guard.try_io(|fd| fd.get_ref().send_to(gre, &addr)) {
                Ok(result) => return result.map(|_| ()),
                Err(_would_block) => continue,
            }
        }
    }

    /// Number of live tunnels.
    pub fn live_routes(&self) -> usize {
        self.shared.routes().len()
    }

    /// Counters since the socket was opened.
    pub fn stats(&self) -> GreStats {
        let c = &self.shared.counters;
        GreStats {
            received: c.received.load(Ordering::Relaxed),
            delivered: c.delivered.load(Ordering::Relaxed),
            unrouted: c.unrouted.load(Ordering::Relaxed),
            malformed: c.malformed.load(Ordering::Relaxed),
            overflow: c.overflow.load(Ordering::Relaxed),
        }
    }
}

/// Where the call-id counter starts: spread over the id space so that two
/// processes (or two runs) talking to one server rarely pick the same ids.
fn initial_call_id() -> u16 {
    let mut b = [0u8; 2];
    let _ = getrandom::fill(&mut b);
    u16::from_be_bytes(b).max(1)
}

async fn read_loop(shared: Arc<Shared>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let mut guard = match shared.fd.readable().await {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(error = %e, "raw GRE socket failed; no more GRE is received");
                return;
            }
        };
        // Drain everything that is ready before waiting again.
        loop {
            match guard.try_io(|fd| (&mut fd.get_ref()).read(&mut buf)) {
                Ok(Ok(n)) => dispatch(&shared, buf.get(..n).unwrap_or_default()),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "raw GRE socket read");
                    break;
                }
                Err(_would_block) => break,
            }
        }
    }
}

fn dispatch(shared: &Shared, datagram: &[u8]) {
    let c = &shared.counters;
    c.received.fetch_add(1, Ordering::Relaxed);
    let Ok(pkt) = parse_ipv4_gre(datagram) else {
        c.malformed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let key = pkt.demux_key();
    let tx = shared.routes().get(&key).cloned();
    let Some(tx) = tx else {
        c.unrouted.fetch_add(1, Ordering::Relaxed);
        return;
    };
    // The GRE packet without the IP header.
    let ihl = usize::from(datagram.first().copied().unwrap_or(0x45) & 0x0F) * 4;
    let gre = datagram.get(ihl..).unwrap_or_default().to_vec();
    match tx.try_send(gre) {
        Ok(()) => {
            c.delivered.fetch_add(1, Ordering::Relaxed);
        }
        Err(mpsc::error::TrySendError::Full(_)) => {
            c.overflow.fetch_add(1, Ordering::Relaxed);
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {
            c.unrouted.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One tunnel's registration on a [`GreSocket`]: receives the GRE packets (IP
/// header stripped) that `peer` sends to our call id, and sends to `peer`.
/// Dropping it unregisters the tunnel; later packets for it are dropped.
#[derive(Debug)]
pub struct GreRoute {
    socket: Arc<GreSocket>,
    peer: Ipv4Addr,
    call_id: u16,
    rx: mpsc::Receiver<Vec<u8>>,
}

impl GreRoute {
    /// Our call id (what the peer puts in the GRE key of packets to us).
    pub fn call_id(&self) -> u16 {
        self.call_id
    }

    /// The peer.
    pub fn peer(&self) -> Ipv4Addr {
        self.peer
    }

    /// The next inbound GRE packet (`None` once the socket is gone).
    pub async fn recv(&mut self) -> Option<Vec<u8>> {
        self.rx.recv().await
    }

    /// An inbound GRE packet if one is queued.
    pub fn try_recv(&mut self) -> Option<Vec<u8>> {
        self.rx.try_recv().ok()
    }

    /// Sends a GRE packet to the peer.
    ///
    /// # Errors
    /// The kernel refused the datagram.
    pub async fn send(&self, gre: &[u8]) -> io::Result<()> {
        self.socket.send_to(self.peer, gre).await
    }
}

impl Drop for GreRoute {
    fn drop(&mut self) {
        self.socket
            .shared
            .routes()
            .remove(&(self.peer, self.call_id));
    }
}
