//! An in-process PPTP server on loopback for tests and benchmarks of
//! `connexa_core::tunnel::Tunnel`: control channel, GRE on the process's raw
//! socket, `pptp::session::SessionServer` (LCP, MS-CHAPv2, CCP/MPPE, IPCP,
//! server role) and a small smoltcp host behind it at 10.78.0.1 (HTTP
//! `GET /bytes?N` byte source on port 80, the same over TLS on port 443 when a
//! rustls server configuration is given ([`listen_tls`]), DNS answering every
//! A question with 10.78.0.1 on UDP 53). User `alice`, password `s3cret`.
//! Needs CAP_NET_RAW.
#![allow(missing_docs, clippy::missing_panics_doc)]

use std::collections::HashMap;
use std::io::{Read, Write};
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
use connexa_core::tunnel::PacketQueues;
use connexa_core::tunnel::{GreRoute, GreSocket};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::{tcp, udp};
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const HOST: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 1);

pub fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(7) ^ (i >> 10)) as u8
}

// ----- the server's host: a smoltcp interface with an HTTP byte source and DNS -----

/// One HTTP connection slot: listening, reading the request, sending bytes.
struct Slot {
    handle: SocketHandle,
    port: u16,
    request: Vec<u8>,
    /// (next octet index, total) of the body being sent.
    sending: Option<(u64, u64)>,
    head: Vec<u8>,
    /// HTTPS: the TLS server side of this connection.
    tls: Option<rustls::ServerConnection>,
    tls_config: Option<Arc<rustls::ServerConfig>>,
    /// TLS records not yet taken by the TCP socket.
    out: Vec<u8>,
    /// close_notify queued.
    closing: bool,
}

impl Slot {
    fn new(handle: SocketHandle, port: u16, tls_config: Option<Arc<rustls::ServerConfig>>) -> Slot {
        Slot {
            handle,
            port,
            request: Vec::new(),
            sending: None,
            head: Vec::new(),
            tls: tls_config
                .as_ref()
                .map(|c| rustls::ServerConnection::new(Arc::clone(c)).unwrap()),
            tls_config,
            out: Vec::new(),
            closing: false,
        }
    }

    fn reset(&mut self) {
        *self = Slot::new(self.handle, self.port, self.tls_config.take());
    }

    /// Takes received octets: plaintext straight, TLS through the server
    /// connection. `false`: a TLS failure (the connection is to be aborted).
    fn input(&mut self, data: &[u8]) -> bool {
        let Some(conn) = self.tls.as_mut() else {
            self.request.extend_from_slice(data);
            return true;
        };
        let mut rd = data;
        while !rd.is_empty() {
            match conn.read_tls(&mut rd) {
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            }
            if conn.process_new_packets().is_err() {
                let _ = conn.write_tls(&mut self.out);
                return false;
            }
        }
        let mut pt = [0u8; 2048];
        while let Ok(n) = conn.reader().read(&mut pt) {
            if n == 0 {
                break;
            }
            self.request.extend_from_slice(&pt[..n]);
        }
        true
    }

    /// Offers plaintext to send; returns how much was taken.
    fn send(&mut self, s: &mut tcp::Socket, data: &[u8]) -> usize {
        match self.tls.as_mut() {
            None if s.can_send() => s.send_slice(data).unwrap(),
            None => 0,
            Some(_) if self.out.len() > 32 * 1024 => 0,
            Some(conn) => conn.writer().write(data).unwrap_or(0),
        }
    }

    /// Moves pending TLS records into the socket.
    fn flush(&mut self, s: &mut tcp::Socket) {
        if let Some(conn) = self.tls.as_mut() {
            while conn.wants_write() {
                if conn.write_tls(&mut self.out).is_err() {
                    break;
                }
            }
        }
        if !self.out.is_empty() && s.can_send() {
            let n = s.send_slice(&self.out).unwrap_or(0);
            self.out.drain(..n);
        }
    }

    /// Whether the TLS handshake is done (always, for plain HTTP).
    fn ready(&self) -> bool {
        self.tls.as_ref().is_none_or(|c| !c.is_handshaking())
    }
}

struct Host {
    iface: Interface,
    sockets: SocketSet<'static>,
    dev: PacketQueues,
    slots: Vec<Slot>,
    dns: SocketHandle,
    epoch: Instant,
}

fn listener(port: u16) -> tcp::Socket<'static> {
    let mut s = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; 64 * 1024]),
        tcp::SocketBuffer::new(vec![0; 128 * 1024]),
    );
    s.listen(port).unwrap();
    s
}

impl Host {
    fn new(tls: Option<Arc<rustls::ServerConfig>>) -> Host {
        let mut dev = PacketQueues::new(1396);
        let mut iface = Interface::new(
            Config::new(HardwareAddress::Ip),
            &mut dev,
            smoltcp::time::Instant::from_micros(0),
        );
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(IpAddress::Ipv4(HOST), 24)).unwrap();
        });
        let mut sockets = SocketSet::new(Vec::new());
        let mut slots: Vec<Slot> = (0..6)
            .map(|_| Slot::new(sockets.add(listener(80)), 80, None))
            .collect();
        if let Some(cfg) = tls {
            for _ in 0..6 {
                slots.push(Slot::new(
                    sockets.add(listener(443)),
                    443,
                    Some(Arc::clone(&cfg)),
                ));
            }
        }
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
                if !slot.input(&buf[..n]) {
                    slot.flush(s);
                    s.close();
                    slot.sending = None;
                    slot.closing = true;
                }
                if slot.sending.is_none()
                    && !slot.closing
                    && slot.ready()
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
            if !slot.head.is_empty() {
                let head = std::mem::take(&mut slot.head);
                let n = slot.send(s, &head);
                slot.head = head[n..].to_vec();
            }
            if slot.head.is_empty()
                && let Some((next, total)) = slot.sending
            {
                if next < total {
                    let len = (total - next).min(16 * 1024) as usize;
                    let chunk: Vec<u8> = (next..next + len as u64).map(pattern).collect();
                    let n = slot.send(s, &chunk);
                    slot.sending = Some((next + n as u64, total));
                } else if !slot.closing {
                    if let Some(c) = slot.tls.as_mut() {
                        c.send_close_notify();
                    }
                    slot.closing = true;
                }
            }
            slot.flush(s);
            if slot.closing
                && slot.out.is_empty()
                && slot.tls.as_ref().is_none_or(|c| !c.wants_write())
                && s.is_open()
                && s.state() != tcp::State::Listen
                && s.may_send()
            {
                s.close();
            }
            if matches!(s.state(), tcp::State::Closed | tcp::State::TimeWait)
                && (slot.sending.is_some() || slot.closing)
                || s.state() == tcp::State::Closed
            {
                s.abort();
                *s = listener(slot.port);
                slot.reset();
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

pub async fn serve(gre: Arc<GreSocket>, tcp: TcpStream, mode: Mode, log: Log) {
    serve_tls(gre, tcp, mode, log, None).await;
}

/// [`serve`], with HTTPS on port 443 of the host when `tls` is given.
pub async fn serve_tls(
    gre: Arc<GreSocket>,
    mut tcp: TcpStream,
    mode: Mode,
    log: Log,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
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
                                host: (mode != Mode::Bare).then(|| Host::new(tls.clone())),
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
    listen_tls(gre, mode, log, None).await
}

/// [`listen`], with HTTPS (`GET /bytes?N` on port 443 of the host) served
/// with `tls` when given.
pub async fn listen_tls(
    gre: Arc<GreSocket>,
    mode: Mode,
    log: Log,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(serve_tls(
                Arc::clone(&gre),
                tcp,
                mode,
                Arc::clone(&log),
                tls.clone(),
            ));
        }
    });
    addr
}
