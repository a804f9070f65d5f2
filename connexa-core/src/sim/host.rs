//! The host behind a simulated node's tunnel: a smoltcp interface at the
//! node's tunnel address with an HTTP byte source on port 80
//! (`GET /bytes?N` answers N bytes of [`pattern`]; `GET /speed/down?nonce=..&bytes=N`
//! the keyed speed stream, see [`SpeedRoute`]), rate-limited per call by a
//! token bucket. Sans-IO: IPv4 datagrams in and out, time as an argument.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};

use crate::speed::keyed::{self, Keystream, SpeedKey};
use crate::tunnel::PacketQueues;
use smoltcp::socket::tcp;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};

/// HTTP connections served at once per call.
const SLOTS: usize = 4;
const RX_BUFFER: usize = 4 * 1024;
const TX_BUFFER: usize = 64 * 1024;
/// The largest chunk queued at once.
const CHUNK: usize = 16 * 1024;
/// Tokens are spent in units of at least this many bytes (one segment).
const MIN_SEND: f64 = 1400.0;

/// Byte `i` of every `/bytes` body: a pattern a client can verify.
pub fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(7) ^ (i >> 10)) as u8
}

/// How the host answers the keyed speed endpoint's `/speed/down`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum SpeedRoute {
    /// As the real endpoint: nonce checked with the key, the keyed stream
    /// (`None`: no key, `404`).
    Keyed(Option<SpeedKey>),
    /// A faking node: any request gets N bytes of [`pattern`].
    Fake,
}

struct Slot {
    handle: SocketHandle,
    request: Vec<u8>,
    head: Vec<u8>,
    /// (next octet generated, total) of the body being sent.
    body: Option<(u64, u64)>,
    /// The keyed stream of the body, if it is one (else [`pattern`]).
    stream: Option<Keystream>,
    /// Generated body octets not yet queued on the socket.
    pending: Vec<u8>,
}

/// The answer to a request head: response head, body length, keyed stream.
fn answer(target: &str, speed: SpeedRoute, peer: &str) -> (String, u64, Option<Keystream>) {
    let not_found = || {
        (
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned(),
            0,
            None,
        )
    };
    let ok = |n: u64| {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n{}: {peer}\r\nConnection: close\r\n\r\n",
            keyed::CLIENT_ADDR_HEADER
        )
    };
    if let Some(n) = target.strip_prefix("/bytes?").and_then(|n| n.parse().ok()) {
        return (ok(n), n, None);
    }
    let Some(query) = target
        .strip_prefix(keyed::DOWN_PATH)
        .and_then(|q| q.strip_prefix('?'))
    else {
        return not_found();
    };
    let bytes: Option<u64> = keyed::query_value(query, "bytes").and_then(|b| b.parse().ok());
    match (speed, bytes) {
        (SpeedRoute::Fake, Some(n)) => (ok(n), n, None),
        (SpeedRoute::Keyed(Some(key)), Some(n)) => {
            match key.check(
                keyed::query_value(query, "nonce"),
                std::time::SystemTime::now(),
            ) {
                Ok(nonce) => (ok(n), n, Some(key.keystream(&nonce))),
                Err(e) => (
                    format!(
                        "HTTP/1.1 403 Forbidden\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{e}",
                        e.to_string().len()
                    ),
                    0,
                    None,
                ),
            }
        }
        _ => not_found(),
    }
}

/// A token bucket: `rate` bytes/s, at most `burst` bytes at once.
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.at = now;
    }

    /// When `MIN_SEND` tokens will be there.
    fn ready_at(&self) -> Instant {
        let missing = (MIN_SEND - self.tokens).max(0.0);
        self.at + Duration::from_secs_f64(missing / self.rate)
    }
}

pub(crate) struct HttpHost {
    iface: Interface,
    sockets: SocketSet<'static>,
    dev: PacketQueues,
    slots: Vec<Slot>,
    epoch: Instant,
    bucket: Option<Bucket>,
    /// A body is waiting for tokens.
    starved: bool,
    speed: SpeedRoute,
}

fn listener() -> tcp::Socket<'static> {
    let mut s = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; RX_BUFFER]),
        tcp::SocketBuffer::new(vec![0; TX_BUFFER]),
    );
    // A fresh socket always accepts `listen` on a non-zero port.
    let _ = s.listen(80);
    s
}

impl HttpHost {
    /// A host at `addr` whose bodies go out at most at `rate` bytes/s.
    pub(crate) fn new(addr: Ipv4Addr, rate: Option<u64>, speed: SpeedRoute, now: Instant) -> Self {
        let mut dev = PacketQueues::new(1400);
        let mut iface = Interface::new(
            Config::new(HardwareAddress::Ip),
            &mut dev,
            smoltcp::time::Instant::from_micros(0),
        );
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(addr), 24));
        });
        let mut sockets = SocketSet::new(Vec::new());
        let slots = (0..SLOTS)
            .map(|_| Slot {
                handle: sockets.add(listener()),
                request: Vec::new(),
                head: Vec::new(),
                body: None,
                stream: None,
                pending: Vec::new(),
            })
            .collect();
        let bucket = rate.filter(|r| *r > 0).map(|r| {
            let rate = r as f64;
            // A tenth of a second's worth, at least a few segments.
            let burst = (rate / 10.0).max(4.0 * MIN_SEND);
            Bucket {
                rate,
                burst,
                tokens: burst,
                at: now,
            }
        });
        HttpHost {
            iface,
            sockets,
            dev,
            slots,
            epoch: now,
            bucket,
            starved: false,
            speed,
        }
    }

    fn ts(&self, now: Instant) -> smoltcp::time::Instant {
        let us = now.saturating_duration_since(self.epoch).as_micros();
        smoltcp::time::Instant::from_micros(i64::try_from(us).unwrap_or(i64::MAX))
    }

    /// An IPv4 datagram from the tunnel.
    pub(crate) fn push_ip(&mut self, packet: Vec<u8>) {
        if self.dev.rx.len() < 256 {
            self.dev.rx.push_back(packet);
        }
    }

    /// The next IPv4 datagram for the tunnel.
    pub(crate) fn pop_ip(&mut self) -> Option<Vec<u8>> {
        self.dev.tx.pop_front()
    }

    /// When [`HttpHost::poll`] must run again (smoltcp's timers, the bucket).
    pub(crate) fn poll_at(&mut self, now: Instant) -> Option<Instant> {
        let ts = self.ts(now);
        let stack = self
            .iface
            .poll_delay(ts, &self.sockets)
            .map(|d| now + Duration::from_micros(d.total_micros()));
        let bucket = match (&self.bucket, self.starved) {
            (Some(b), true) => Some(b.ready_at()),
            _ => None,
        };
        [stack, bucket].into_iter().flatten().min()
    }

    /// Runs the interface and the HTTP slots.
    pub(crate) fn poll(&mut self, now: Instant) {
        let ts = self.ts(now);
        self.iface.poll(ts, &mut self.dev, &mut self.sockets);
        if let Some(b) = self.bucket.as_mut() {
            b.refill(now);
        }
        self.starved = false;
        for slot in &mut self.slots {
            let s = self.sockets.get_mut::<tcp::Socket>(slot.handle);
            if s.can_recv() {
                let mut buf = [0u8; 1024];
                if let Ok(n) = s.recv_slice(&mut buf) {
                    slot.request
                        .extend_from_slice(buf.get(..n).unwrap_or_default());
                }
                if slot.body.is_none()
                    && let Some(end) = slot.request.windows(4).position(|w| w == b"\r\n\r\n")
                {
                    let head = String::from_utf8_lossy(slot.request.get(..end).unwrap_or_default())
                        .into_owned();
                    let target = head.split_whitespace().nth(1).unwrap_or("");
                    let peer = s
                        .remote_endpoint()
                        .map(|e| e.addr.to_string())
                        .unwrap_or_default();
                    let (h, n, stream) = answer(target, self.speed, &peer);
                    slot.head = h.into_bytes();
                    slot.body = Some((0, n));
                    slot.stream = stream;
                }
                if slot.request.len() > 8 * 1024 && slot.body.is_none() {
                    s.abort();
                }
            }
            if !slot.head.is_empty() && s.can_send() {
                let n = s.send_slice(&slot.head).unwrap_or(0);
                slot.head.drain(..n);
            }
            if slot.head.is_empty()
                && let Some((next, total)) = slot.body
            {
                let left = total - next + slot.pending.len() as u64;
                if left == 0 {
                    s.close();
                } else if s.can_send() {
                    let mut len = left.min(CHUNK as u64) as usize;
                    len = len.min(s.send_capacity() - s.send_queue());
                    if let Some(b) = self.bucket.as_mut() {
                        if b.tokens < MIN_SEND.min(len as f64) {
                            self.starved = true;
                            len = 0;
                        } else {
                            len = len.min(b.tokens as usize);
                        }
                    }
                    if slot.pending.is_empty() && next < total {
                        // Generate a chunk; what the socket does not take now
                        // waits in `pending` (the stream cannot be rewound).
                        let g = (total - next).min(CHUNK as u64) as usize;
                        match slot.stream.as_mut() {
                            Some(ks) => {
                                slot.pending.resize(g, 0);
                                ks.fill(&mut slot.pending);
                            }
                            None => slot.pending.extend((next..next + g as u64).map(pattern)),
                        }
                        slot.body = Some((next + g as u64, total));
                    }
                    let len = len.min(slot.pending.len());
                    if len > 0 {
                        let n = s.send_slice(&slot.pending[..len]).unwrap_or(0);
                        if let Some(b) = self.bucket.as_mut() {
                            b.tokens -= n as f64;
                        }
                        slot.pending.drain(..n);
                    }
                }
            }
            if s.state() == tcp::State::Closed
                || (s.state() == tcp::State::TimeWait && slot.body.is_some())
            {
                s.abort();
                *s = listener();
                slot.request.clear();
                slot.head.clear();
                slot.body = None;
                slot.stream = None;
                slot.pending.clear();
            }
        }
        self.iface.poll(ts, &mut self.dev, &mut self.sockets);
    }
}
