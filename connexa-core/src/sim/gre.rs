//! The simulator's raw GRE socket: sends with each node's own source address
//! (`IP_HDRINCL`, the IPv4 header built here) and demultiplexes what it reads
//! by `(destination address, call id)` — the server's view.
//!
//! On loopback every raw `IPPROTO_GRE` socket sees every GRE datagram, so a
//! client ([`GreSocket`](crate::tunnel::GreSocket), keyed by *source* = its peer)
//! and this socket (keyed by *destination* = one of the fleet's nodes) in one
//! process each see the other's packets and must ignore them:
//!
//! * a packet the client sends to node `N` has destination `N` and the node's
//!   call id in its key: routed here, and unrouted at the client (its source is
//!   the client's own address);
//! * a packet a node sends has destination = the client's address, not a node:
//!   ignored here (counted as [`SimGreStats::foreign`]), routed at the client by
//!   its source `N`.
//!
//! A node address that is also the client's address (a fleet starting at
//! 127.0.0.1) would make both directions look alike: the fleet refuses to serve
//! logins on 127.0.0.1.

use std::collections::HashMap;
use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Impairment;
use crate::pptp::gre::{IPPROTO_GRE, parse_ipv4_gre};

/// Packets an impaired call's delay line holds; more are dropped (a full
/// router queue).
const DELAY_LINE: usize = 4096;

/// Inbound packets queued per call before further ones are dropped.
const CALL_QUEUE: usize = 64;
const MAX_DATAGRAM: usize = 65_535;
const IPV4_HEADER: usize = 20;

type Key = (Ipv4Addr, u16);

/// Counters of the simulator's GRE socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SimGreStats {
    /// Datagrams read.
    pub received: u64,
    /// Handed to a live simulated call.
    pub delivered: u64,
    /// Addressed to no node (the nodes' own packets to clients, other traffic).
    pub foreign: u64,
    /// Addressed to a node but to no live call of it.
    pub unrouted: u64,
    /// Not IPv4 + Enhanced GRE.
    pub malformed: u64,
    /// Datagrams sent.
    pub sent: u64,
    /// GRE packets an impaired link lost (both ways, [`Impairment`]).
    pub lost: u64,
}

#[derive(Debug, Default)]
struct Counters {
    received: AtomicU64,
    delivered: AtomicU64,
    foreign: AtomicU64,
    unrouted: AtomicU64,
    malformed: AtomicU64,
    sent: AtomicU64,
    lost: AtomicU64,
}

#[derive(Debug)]
pub(crate) struct SimGre {
    fd: AsyncFd<Socket>,
    /// Node addresses that serve calls.
    nodes: std::collections::HashSet<Ipv4Addr>,
    routes: Mutex<HashMap<Key, mpsc::Sender<Vec<u8>>>>,
    next_id: Mutex<u16>,
    counters: Counters,
}

impl SimGre {
    /// Opens the raw socket (needs `CAP_NET_RAW`) for these node addresses.
    /// Call inside a tokio runtime.
    pub(crate) fn open(nodes: std::collections::HashSet<Ipv4Addr>) -> io::Result<Arc<SimGre>> {
        let socket = Socket::new(
            Domain::IPV4,
            Type::RAW,
            Some(Protocol::from(i32::from(IPPROTO_GRE))),
        )?;
        socket.set_header_included_v4(true)?;
        socket.set_nonblocking(true)?;
        let _ = socket.set_recv_buffer_size(4 << 20);
        let _ = socket.set_send_buffer_size(4 << 20);
        let fd = crate::tunnel::register_async_fd(socket)?;
        Ok(Arc::new(SimGre {
            fd,
            nodes,
            routes: Mutex::new(HashMap::new()),
            next_id: Mutex::new(1),
            counters: Counters::default(),
        }))
    }

    fn routes(&self) -> MutexGuard<'_, HashMap<Key, mpsc::Sender<Vec<u8>>>> {
        self.routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A fresh call id of `node` (never 0) and the queue of its inbound
    /// packets, behind a link with `impairment` (losses drawn from `seed`).
    pub(crate) fn register(
        self: &Arc<Self>,
        node: Ipv4Addr,
        impairment: Impairment,
        seed: u64,
    ) -> Option<SimRoute> {
        let (tx, rx) = mpsc::channel(CALL_QUEUE);
        let mut next = self
            .next_id
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut routes = self.routes();
        for _ in 0..u16::MAX {
            let id = *next;
            *next = next.checked_add(1).unwrap_or(1);
            if id == 0 || routes.contains_key(&(node, id)) {
                continue;
            }
            routes.insert((node, id), tx);
            let delay_line = (!impairment.latency.is_zero()).then(|| {
                let (tx, rx) = mpsc::channel(DELAY_LINE);
                tokio::spawn(delay_line(Arc::clone(self), node, rx));
                tx
            });
            return Some(SimRoute {
                gre: Arc::clone(self),
                node,
                call_id: id,
                rx,
                loss: Loss::new(impairment.loss_ppm, seed ^ (u64::from(id) << 32)),
                latency: impairment.latency,
                delay_line,
            });
        }
        None
    }

    /// Live calls.
    pub(crate) fn live_calls(&self) -> usize {
        self.routes().len()
    }

    pub(crate) fn stats(&self) -> SimGreStats {
        let c = &self.counters;
        SimGreStats {
            received: c.received.load(Ordering::Relaxed),
            delivered: c.delivered.load(Ordering::Relaxed),
            foreign: c.foreign.load(Ordering::Relaxed),
            unrouted: c.unrouted.load(Ordering::Relaxed),
            malformed: c.malformed.load(Ordering::Relaxed),
            sent: c.sent.load(Ordering::Relaxed),
            lost: c.lost.load(Ordering::Relaxed),
        }
    }

    /// Sends `gre` (an Enhanced GRE packet) from `source` to `destination`.
    pub(crate) async fn send(
        &self,
        source: Ipv4Addr,
        destination: Ipv4Addr,
        gre: &[u8],
    ) -> io::Result<()> {
        let datagram = ipv4_datagram(source, destination, gre)?;
        let addr = SockAddr::from(SocketAddr::V4(SocketAddrV4::new(destination, 0)));
        loop {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| fd.get_ref().send_to(&datagram, &addr)) {
                Ok(result) => {
                    self.counters.sent.fetch_add(1, Ordering::Relaxed);
                    return result.map(|_| ());
                }
                Err(_would_block) => continue,
            }
        }
    }

    /// Reads and dispatches until the socket fails (the task is aborted on shutdown).
    pub(crate) async fn read_loop(self: Arc<Self>) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let mut guard = match self.fd.readable().await {
                Ok(g) => g,
                Err(e) => {
                    tracing::error!(error = %e, "simulator GRE socket failed");
                    return;
                }
            };
            loop {
                match guard.try_io(|fd| (&mut fd.get_ref()).read(&mut buf)) {
                    Ok(Ok(n)) => self.dispatch(buf.get(..n).unwrap_or_default()),
                    Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "simulator GRE read");
                        break;
                    }
                    Err(_would_block) => break,
                }
            }
        }
    }

    fn dispatch(&self, datagram: &[u8]) {
        let c = &self.counters;
        c.received.fetch_add(1, Ordering::Relaxed);
        let Ok(pkt) = parse_ipv4_gre(datagram) else {
            c.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if !self.nodes.contains(&pkt.destination) {
            c.foreign.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let key = (pkt.destination, pkt.gre.call_id);
        let Some(tx) = self.routes().get(&key).cloned() else {
            c.unrouted.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let ihl = usize::from(datagram.first().copied().unwrap_or(0x45) & 0x0F) * 4;
        let gre = datagram.get(ihl..).unwrap_or_default().to_vec();
        if tx.try_send(gre).is_ok() {
            c.delivered.fetch_add(1, Ordering::Relaxed);
        } else {
            c.unrouted.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Sends what an impaired call queued, each packet when it is due (a
/// constant delay: the queue is in due order). Ends when the call is gone.
async fn delay_line(
    gre: Arc<SimGre>,
    node: Ipv4Addr,
    mut rx: mpsc::Receiver<(Instant, Ipv4Addr, Vec<u8>)>,
) {
    while let Some((due, peer, pkt)) = rx.recv().await {
        tokio::time::sleep_until(due).await;
        if let Err(e) = gre.send(node, peer, &pkt).await {
            tracing::debug!(error = %e, "simulator GRE send (delayed)");
        }
    }
}

/// Seeded packet loss (splitmix64, lock-free: the route is shared by `&`).
#[derive(Debug)]
pub(crate) struct Loss {
    ppm: u32,
    state: AtomicU64,
}

impl Loss {
    pub(crate) fn new(ppm: u32, seed: u64) -> Self {
        Loss {
            ppm,
            state: AtomicU64::new(seed),
        }
    }

    /// Whether the next packet is lost.
    pub(crate) fn lost(&self) -> bool {
        if self.ppm == 0 {
            return false;
        }
        let s = self
            .state
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z % 1_000_000) < u64::from(self.ppm)
    }
}

/// One simulated call's registration: inbound packets for `(node, call_id)`,
/// and the node's side of its link (loss both ways, latency on the way out).
#[derive(Debug)]
pub(crate) struct SimRoute {
    gre: Arc<SimGre>,
    node: Ipv4Addr,
    call_id: u16,
    rx: mpsc::Receiver<Vec<u8>>,
    loss: Loss,
    latency: std::time::Duration,
    delay_line: Option<mpsc::Sender<(Instant, Ipv4Addr, Vec<u8>)>>,
}

impl SimRoute {
    pub(crate) fn call_id(&self) -> u16 {
        self.call_id
    }

    /// The next inbound packet the link did not lose (cancel safe).
    pub(crate) async fn recv(&mut self) -> Option<Vec<u8>> {
        loop {
            let pkt = self.rx.recv().await?;
            if !self.loss.lost() {
                return Some(pkt);
            }
            self.gre.counters.lost.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Sends a GRE packet from the node to `peer` (unless the link loses it;
    /// after the link's latency).
    pub(crate) async fn send(&self, peer: Ipv4Addr, gre: &[u8]) -> io::Result<()> {
        if self.loss.lost() {
            self.gre.counters.lost.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        match &self.delay_line {
            None => self.gre.send(self.node, peer, gre).await,
            Some(line) => {
                // A full line drops the packet, as a full router queue would.
                let _ = line.try_send((Instant::now() + self.latency, peer, gre.to_vec()));
                Ok(())
            }
        }
    }
}

impl Drop for SimRoute {
    fn drop(&mut self) {
        self.gre.routes().remove(&(self.node, self.call_id));
    }
}

/// An IPv4 header (no options, DF, TTL 64, protocol GRE, checksum) + `payload`.
fn ipv4_datagram(source: Ipv4Addr, destination: Ipv4Addr, payload: &[u8]) -> io::Result<Vec<u8>> {
    let total = u16::try_from(IPV4_HEADER + payload.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "GRE packet too long"))?;
    let mut d = Vec::with_capacity(usize::from(total));
    d.extend_from_slice(&[0x45, 0]);
    d.extend_from_slice(&total.to_be_bytes());
    // Identification 0 (the kernel fills it in), DF, TTL 64, GRE, checksum 0.
    d.extend_from_slice(&[0, 0, 0x40, 0, 64, IPPROTO_GRE, 0, 0]);
    d.extend_from_slice(&source.octets());
    d.extend_from_slice(&destination.octets());
    let sum = checksum(&d);
    d[10..12].copy_from_slice(&sum.to_be_bytes());
    d.extend_from_slice(payload);
    Ok(d)
}

/// The Internet checksum (RFC 1071) of `bytes`.
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = bytes.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pptp::gre::GrePacket;

    #[test]
    fn header_checksums_to_zero_and_parses_back() {
        let gre = GrePacket {
            call_id: 9,
            seq: Some(1),
            ack: None,
            payload: b"\xc0\x21\x01",
        }
        .encode()
        .unwrap();
        let src = Ipv4Addr::new(127, 1, 0, 7);
        let dst = Ipv4Addr::new(127, 0, 0, 1);
        let d = ipv4_datagram(src, dst, &gre).unwrap();
        // A header with its checksum in place sums to 0xFFFF (complement 0).
        assert_eq!(checksum(&d[..20]), 0);
        let p = parse_ipv4_gre(&d).unwrap();
        assert_eq!((p.source, p.destination, p.gre.call_id), (src, dst, 9));
        assert_eq!(usize::from(u16::from_be_bytes([d[2], d[3]])), d.len());
    }

    #[test]
    fn loss_draws_the_configured_share_and_repeats_with_its_seed() {
        let draws = |ppm, seed| {
            let l = Loss::new(ppm, seed);
            (0..100_000).filter(|_| l.lost()).count()
        };
        assert_eq!(draws(0, 7), 0);
        assert_eq!(draws(1_000_000, 7), 100_000);
        let five = draws(50_000, 7);
        assert!(
            (4_500..5_500).contains(&five),
            "{five} of 100,000 lost at 5 %"
        );
        assert_eq!(draws(50_000, 7), five, "same seed, same losses");
        assert_ne!(draws(50_000, 8), five, "another seed, other losses");
    }

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071 §3: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2 (one's complement 220d).
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
        assert_eq!(checksum(&[0xff]), !0xff00);
    }
}
