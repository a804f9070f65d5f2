//! An in-process PPTP server on loopback for tests and benchmarks of
//! `connexa_core::tunnel::Tunnel`: control channel, GRE on the process's raw
//! socket, `pptp::session::SessionServer` (LCP, MS-CHAPv2, CCP/MPPE, IPCP,
//! server role) and a small smoltcp host behind it at 10.78.0.1 (HTTP
//! `GET /bytes?N` byte source on port 80, DNS answering every A question with
//! 10.78.0.1 on UDP 53). User `alice`, password `s3cret`. Needs CAP_NET_RAW.
#![allow(missing_docs, clippy::missing_panics_doc)]

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use connexa_core::domain::Secret;
use connexa_core::pptp::control::{
    CallDisconnectNotify, ControlMessage, FixedText, Framer, OutgoingCallReply,
    StartControlConnectionReply, StopControlConnectionReply,
};
use connexa_core::pptp::gre::{Accepted, GrePacket, GreSession};
use connexa_core::pptp::login::ServerConfig;
use connexa_core::pptp::ppp::{PROTO_CCP, PppFrame};
use connexa_core::pptp::session::{ServerNetworkConfig, SessionServer};
use connexa_core::tunnel::{GreRoute, GreSocket};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::{tcp, udp};
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const HOST: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 1);

pub fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(7) ^ (i >> 10)) as u8
}

// ----- the server's host: a smoltcp interface with an HTTP byte source and DNS -----

#[derive(Default)]
struct Queues {
    rx: std::collections::VecDeque<Vec<u8>>,
    tx: std::collections::VecDeque<Vec<u8>>,
}
struct Rx(Vec<u8>);
struct Tx<'a>(&'a mut std::collections::VecDeque<Vec<u8>>);
impl RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}
impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut b = vec![0u8; len];
        let r = f(&mut b);
        self.0.push_back(b);
        r
    }
}
impl Device for Queues {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;
    fn receive(&mut self, _: smoltcp::time::Instant) -> Option<(Rx, Tx<'_>)> {
        let p = self.rx.pop_front()?;
        Some((Rx(p), Tx(&mut self.tx)))
    }
    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.tx))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ip;
        c.max_transmission_unit = 1396;
        c
    }
}

/// One HTTP connection slot: listening, reading the request, sending bytes.
struct Slot {
    handle: SocketHandle,
    request: Vec<u8>,
    /// (next octet index, total) of the body being sent.
    sending: Option<(u64, u64)>,
    head: Vec<u8>,
}

struct Host {
    iface: Interface,
    sockets: SocketSet<'static>,
    dev: Queues,
    slots: Vec<Slot>,
    dns: SocketHandle,
    epoch: Instant,
}

fn listener() -> tcp::Socket<'static> {
    let mut s = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; 64 * 1024]),
        tcp::SocketBuffer::new(vec![0; 128 * 1024]),
    );
    s.listen(80).unwrap();
    s
}

impl Host {
    fn new() -> Host {
        let mut dev = Queues::default();
        let mut iface = Interface::new(
            Config::new(HardwareAddress::Ip),
            &mut dev,
            smoltcp::time::Instant::from_micros(0),
        );
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(IpAddress::Ipv4(HOST), 24)).unwrap();
        });
        let mut sockets = SocketSet::new(Vec::new());
        let slots = (0..6)
            .map(|_| Slot {
                handle: sockets.add(listener()),
                request: Vec::new(),
                sending: None,
                head: Vec::new(),
            })
            .collect();
        let mut dns = udp::Socket::new(
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 4096]),
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 4096]),
        );
        dns.bind(53).unwrap();
        let dns = sockets.add(dns);
        Host {
            iface,
            sockets,
            dev,
            slots,
            dns,
            epoch: Instant::now(),
        }
    }

    fn poll(&mut self) {
        let ts = smoltcp::time::Instant::from_micros(self.epoch.elapsed().as_micros() as i64);
        self.iface.poll(ts, &mut self.dev, &mut self.sockets);
        for slot in &mut self.slots {
            let s = self.sockets.get_mut::<tcp::Socket>(slot.handle);
            if s.can_recv() {
                let mut buf = [0u8; 2048];
                let n = s.recv_slice(&mut buf).unwrap();
                slot.request.extend_from_slice(&buf[..n]);
                if slot.sending.is_none()
                    && let Some(end) = slot.request.windows(4).position(|w| w == b"\r\n\r\n")
                {
                    let head = String::from_utf8_lossy(&slot.request[..end]).into_owned();
                    let n: u64 = head
                        .split_whitespace()
                        .nth(1)
                        .and_then(|p| p.strip_prefix("/bytes?"))
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0);
                    slot.head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n"
                    )
                    .into_bytes();
                    slot.sending = Some((0, n));
                }
            }
            if !slot.head.is_empty() && s.can_send() {
                let n = s.send_slice(&slot.head).unwrap();
                slot.head.drain(..n);
            }
            if slot.head.is_empty()
                && let Some((next, total)) = slot.sending
            {
                if next < total && s.can_send() {
                    let len = (total - next).min(16 * 1024) as usize;
                    let chunk: Vec<u8> = (next..next + len as u64).map(pattern).collect();
                    let n = s.send_slice(&chunk).unwrap();
                    slot.sending = Some((next + n as u64, total));
                } else if next >= total {
                    s.close();
                }
            }
            if matches!(s.state(), tcp::State::Closed | tcp::State::TimeWait)
                && slot.sending.is_some()
                || s.state() == tcp::State::Closed
            {
                s.abort();
                *s = listener();
                slot.request.clear();
                slot.sending = None;
                slot.head.clear();
            }
        }
        // DNS: answer every A question with HOST.
        let d = self.sockets.get_mut::<udp::Socket>(self.dns);
        let mut q = [0u8; 512];
        while let Ok((n, meta)) = d.recv_slice(&mut q) {
            if n < 12 {
                continue;
            }
            let mut r = q[..n].to_vec();
            r[2] = 0x81;
            r[3] = 0x80;
            r[6..8].copy_from_slice(&[0, 1]);
            r[8..12].copy_from_slice(&[0, 0, 0, 0]);
            r.extend_from_slice(&[0xC0, 0x0C, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
            r.extend_from_slice(&HOST.octets());
            let _ = d.send_slice(&r, meta.endpoint);
        }
        let ts = smoltcp::time::Instant::from_micros(self.epoch.elapsed().as_micros() as i64);
        self.iface.poll(ts, &mut self.dev, &mut self.sockets);
    }
}

// ----- the in-process PPTP server -----

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Everything, with the HTTP/DNS host.
    Full,
    /// Drops every CCP frame: MPPE never comes up.
    NoCcp,
    /// Login, CCP and IPCP, but no host behind (for memory measurements).
    Bare,
}

pub type Log = Arc<Mutex<Vec<String>>>;

struct Call {
    route: GreRoute,
    gre: GreSession,
    ppp: SessionServer,
    host: Option<Host>,
}

async fn recv(call: &mut Option<Call>) -> Option<Vec<u8>> {
    match call {
        Some(c) => c.route.recv().await,
        None => std::future::pending().await,
    }
}

pub async fn serve(gre: Arc<GreSocket>, mut tcp: TcpStream, mode: Mode, log: Log) {
    let table = Arc::new(HashMap::from([("alice".to_owned(), Secret::new("s3cret"))]));
    let mut framer = Framer::new();
    let mut buf = vec![0u8; 2048];
    let mut call: Option<Call> = None;
    loop {
        let wake = call
            .as_ref()
            .and_then(|c| c.ppp.poll_timeout())
            .unwrap_or_else(|| Instant::now() + Duration::from_millis(50))
            .min(Instant::now() + Duration::from_millis(50));
        let mut replies = Vec::new();
        tokio::select! {
            n = tcp.read(&mut buf) => {
                let Ok(n) = n else { return };
                if n == 0 { return; }
                framer.push(&buf[..n]);
                while let Ok(Some(frame)) = framer.next_frame() {
                    let Ok(msg) = ControlMessage::decode(&frame) else { return };
                    match msg {
                        ControlMessage::StartControlConnectionRequest(_) => replies.push(
                            ControlMessage::StartControlConnectionReply(
                                StartControlConnectionReply::success("loopback", "test", 1))),
                        ControlMessage::OutgoingCallRequest(r) => {
                            let route = gre.register(Ipv4Addr::LOCALHOST).unwrap();
                            replies.push(ControlMessage::OutgoingCallReply(OutgoingCallReply {
                                call_id: route.call_id(), peer_call_id: r.call_id, result_code: 1,
                                error_code: 0, cause_code: 0, connect_speed: 10_000_000,
                                packet_recv_window_size: 64, packet_processing_delay: 0,
                                physical_channel_id: 0,
                            }));
                            call = Some(Call {
                                gre: GreSession::new(route.call_id(), r.call_id, Duration::from_millis(20)),
                                route,
                                ppp: SessionServer::new(ServerConfig::new(Arc::clone(&table)),
                                    ServerNetworkConfig::default(), Instant::now()),
                                host: (mode != Mode::Bare).then(Host::new),
                            });
                        }
                        ControlMessage::CallClearRequest(_) => {
                            log.lock().unwrap().push("ccr".into());
                            if let Some(c) = call.take() {
                                // Our Terminate-Request was acked: Stopping (RFC 1661 zrc) or later.
                                let state = c.ppp.login().lcp().state();
                                log.lock().unwrap().push(format!("lcp {state:?}"));
                                replies.push(ControlMessage::CallDisconnectNotify(CallDisconnectNotify {
                                    call_id: c.route.call_id(), result_code: 4, error_code: 0,
                                    cause_code: 0, call_statistics: FixedText::default(),
                                }));
                            }
                        }
                        ControlMessage::StopControlConnectionRequest(_) => {
                            log.lock().unwrap().push("stop".into());
                            let reply = ControlMessage::StopControlConnectionReply(
                                StopControlConnectionReply { result_code: 1, error_code: 0 });
                            let _ = tcp.write_all(&reply.encode()).await;
                            return;
                        }
                        _ => {}
                    }
                }
            }
            pkt = recv(&mut call) => {
                if let (Some(pkt), Some(c)) = (pkt, call.as_mut())
                    && let Ok(pkt) = GrePacket::decode(&pkt)
                    && let Accepted::Payload(p) = c.gre.accept(&pkt, Instant::now())
                {
                    let ccp = PppFrame::decode(p).is_ok_and(|f| f.protocol == PROTO_CCP);
                    if !(ccp && mode == Mode::NoCcp) {
                        c.ppp.handle_input(p, Instant::now());
                    }
                }
            }
            () = tokio::time::sleep_until(wake.into()) => {
                if let Some(c) = call.as_mut() { c.ppp.handle_timeout(Instant::now()); }
            }
        }
        for r in replies {
            if tcp.write_all(&r.encode()).await.is_err() {
                return;
            }
        }
        if let Some(c) = call.as_mut() {
            if let Some(host) = c.host.as_mut() {
                while let Some(p) = c.ppp.poll_ip() {
                    host.dev.rx.push_back(p);
                }
                host.poll();
                while let Some(p) = host.dev.tx.pop_front() {
                    c.ppp.send_ip(&p);
                }
            }
            let mut out = Vec::new();
            while let Some(frame) = c.ppp.poll_transmit() {
                let ccp = PppFrame::decode(&frame).is_ok_and(|f| f.protocol == PROTO_CCP);
                if ccp && mode == Mode::NoCcp {
                    continue;
                }
                out.clear();
                c.gre.encode(&frame, &mut out).unwrap();
                let _ = c.route.send(&out).await;
            }
        }
    }
}

/// Accepts PPTP control connections on a fresh loopback port and serves each
/// with [`serve`]; returns the address.
pub async fn listen(gre: Arc<GreSocket>, mode: Mode, log: Log) -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(serve(Arc::clone(&gre), tcp, mode, Arc::clone(&log)));
        }
    });
    addr
}
