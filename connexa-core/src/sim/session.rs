//! The server side of one simulated control connection: the handshake, at
//! most one call (Outgoing-Call-Request/Reply, Set-Link-Info, Call-Clear /
//! Call-Disconnect-Notify, Stop-Control-Connection), and the PPP login of that
//! call over the simulator's GRE socket ([`LoginServer`]), optionally followed by
//! a [`DataPath`].

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use std::collections::VecDeque;

use super::gre::{Loss, SimGre, SimRoute};
use super::host::{HttpHost, SpeedRoute};
use super::{Behaviour, DataPath, DataPathFactory, Impairment, SimNode, TunnelSpec};
use crate::pptp::control::{
    CallDisconnectNotify, ControlMessage, EchoReply, FixedText, Framer, OutgoingCallReply,
    OutgoingCallRequest, StartControlConnectionReply, StopControlConnectionReply,
    StopControlConnectionRequest,
};
use crate::pptp::gre::{Accepted, GrePacket, GreSession};
use crate::pptp::login::{LoginServer, ServerConfig, ServerOutcome};
use crate::pptp::mschapv2::Credentials;
use crate::pptp::ppp::{PROTO_CHAP, PROTO_LCP, PppFrame};
use crate::pptp::session::{ServerNetworkConfig, SessionServer};

/// Call-Disconnect-Notify result codes (RFC 2637 §2.13).
const CDN_ADMIN_SHUTDOWN: u8 = 3;
const CDN_REQUEST: u8 = 4;
/// Outgoing-Call-Reply result codes (RFC 2637 §2.8).
const OCRP_CONNECTED: u8 = 1;
const OCRP_GENERAL_ERROR: u8 = 2;
const OCRP_BUSY: u8 = 4;
/// Delay before a lone GRE acknowledgment.
const ACK_DELAY: Duration = Duration::from_millis(100);

/// Everything a node's connections share.
pub(crate) struct NodeServer {
    pub(crate) node: SimNode,
    pub(crate) identity: StartControlConnectionReply,
    /// The node's user table (a wrong password for [`Behaviour::AuthReject`]).
    pub(crate) credentials: Credentials,
    /// `None`: the fleet cannot serve logins (no `CAP_NET_RAW`).
    pub(crate) gre: Option<Arc<SimGre>>,
    pub(crate) data_path: Option<DataPathFactory>,
    /// Tunnels after login (CCP/MPPE, IPCP, the HTTP host).
    pub(crate) tunnel: Option<TunnelSpec>,
    /// Control connections accepted so far (for [`Behaviour::Flaky`]).
    pub(crate) accepted: std::sync::atomic::AtomicU32,
    /// Seed of the node's packet losses ([`Behaviour::Impaired`]).
    pub(crate) seed: u64,
}

/// Control messages on their way to the client through an impaired link:
/// each is due after the link's latency, plus a retransmission timeout when
/// TCP had to resend the request or the reply; TCP delivers in order, so a
/// late message holds back those after it.
struct ControlLine {
    impairment: Impairment,
    loss: Loss,
    queue: VecDeque<(Instant, Vec<u8>)>,
}

impl ControlLine {
    fn new(impairment: Impairment, seed: u64) -> Self {
        ControlLine {
            impairment,
            loss: Loss::new(impairment.loss_ppm, seed),
            queue: VecDeque::new(),
        }
    }

    /// Queues `bytes` (written at once on a perfect link).
    async fn send(&mut self, stream: &mut TcpStream, bytes: &[u8]) -> io::Result<()> {
        if self.impairment.is_none() {
            return stream.write_all(bytes).await;
        }
        let mut due = Instant::now() + self.impairment.latency;
        // The request or the reply was lost: one RTO each.
        for _ in 0..2 {
            if self.loss.lost() {
                due += self.impairment.control_rto();
            }
        }
        if let Some((last, _)) = self.queue.back() {
            due = due.max(*last);
        }
        self.queue.push_back((due, bytes.to_vec()));
        Ok(())
    }

    fn next_due(&self) -> Option<Instant> {
        self.queue.front().map(|(t, _)| *t)
    }

    /// Writes what is due by `now` (everything with `all`).
    async fn flush(&mut self, stream: &mut TcpStream, now: Instant, all: bool) -> io::Result<()> {
        while let Some((due, _)) = self.queue.front() {
            if !all && *due > now {
                break;
            }
            if let Some((_, bytes)) = self.queue.pop_front() {
                stream.write_all(&bytes).await?;
            }
        }
        Ok(())
    }
}

/// The PPP server of a call: login only, or login + network phase (tunnel).
enum Ppp {
    Login(Box<LoginServer>),
    Session(Box<SessionServer>),
}

impl Ppp {
    fn handle_input(&mut self, frame: &[u8], now: Instant) {
        match self {
            Ppp::Login(l) => l.handle_input(frame, now),
            Ppp::Session(s) => s.handle_input(frame, now),
        }
    }
    fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        match self {
            Ppp::Login(l) => l.poll_transmit(),
            Ppp::Session(s) => s.poll_transmit(),
        }
    }
    fn poll_timeout(&self) -> Option<Instant> {
        match self {
            Ppp::Login(l) => l.poll_timeout(),
            Ppp::Session(s) => s.poll_timeout(),
        }
    }
    fn handle_timeout(&mut self, now: Instant) {
        match self {
            Ppp::Login(l) => l.handle_timeout(now),
            Ppp::Session(s) => s.handle_timeout(now),
        }
    }
    fn outcome(&self) -> Option<&ServerOutcome> {
        match self {
            Ppp::Login(l) => l.outcome(),
            Ppp::Session(s) => s.login().outcome(),
        }
    }
}

/// Reads until the peer closes (or errors): the polite way to end, without
/// resetting a peer whose bytes are unread.
pub(crate) async fn drain(stream: &mut TcpStream) {
    let mut buf = [0u8; 512];
    while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
}

/// Serves one control connection until the peer stops or closes it, or the
/// fleet stops (`stop` changes or its sender is gone): then the call (if any) is
/// disconnected and the control connection stopped politely.
pub(crate) async fn serve(
    mut stream: TcpStream,
    node: Arc<NodeServer>,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let _ = stream.set_nodelay(true);
    let nth = node
        .accepted
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (delay, result_code) = match node.node.behaviour.base() {
        Behaviour::Flaky(n) if nth < *n => {
            // FIN first, then read what the client sent, so that it sees the
            // close (ClosedEarly) rather than a reset.
            let _ = stream.shutdown().await;
            tokio::select! {
                () = drain(&mut stream) => {}
                _ = stop.changed() => {}
            }
            return Ok(());
        }
        Behaviour::Silent | Behaviour::Refused => {
            tokio::select! {
                () = drain(&mut stream) => {}
                _ = stop.changed() => {}
            }
            return Ok(());
        }
        Behaviour::Garbage => {
            let mut buf = [0u8; 512];
            let _ = stream.read(&mut buf).await?;
            stream
                .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                .await?;
            tokio::select! {
                () = drain(&mut stream) => {}
                _ = stop.changed() => {}
            }
            return Ok(());
        }
        Behaviour::Slow(d) => (*d, 1),
        Behaviour::WrongResultCode(c) => (Duration::ZERO, *c),
        _ => (Duration::ZERO, 1),
    };
    let peer = match stream.peer_addr()?.ip() {
        IpAddr::V4(ip) => ip,
        IpAddr::V6(_) => return Ok(()),
    };
    let mut framer = Framer::new();
    let mut buf = [0u8; 1024];
    let mut call: Option<Call> = None;
    let mut line = ControlLine::new(
        node.node.behaviour.impairment(),
        node.seed ^ u64::from(nth).rotate_left(17),
    );
    loop {
        if let Some(c) = call.as_mut() {
            c.flush(peer).await;
        }
        let wake = call.as_ref().and_then(Call::poll_timeout);
        let due = line.next_due();
        let mut replies: Vec<ControlMessage> = Vec::new();
        tokio::select! {
            () = sleep_until(due) => {
                line.flush(&mut stream, Instant::now(), false).await?;
            }
            _ = stop.changed() => {
                let _ = line.flush(&mut stream, Instant::now(), true).await;
                if let Some(c) = call.take() {
                    let cdn = disconnect(c.route.call_id(), CDN_ADMIN_SHUTDOWN);
                    let _ = stream.write_all(&cdn.encode()).await;
                }
                let scc = ControlMessage::StopControlConnectionRequest(
                    StopControlConnectionRequest { reason: 3 },
                );
                let _ = stream.write_all(&scc.encode()).await;
                let _ = stream.shutdown().await;
                return Ok(());
            }
            read = stream.read(&mut buf) => {
                let n = read?;
                if n == 0 {
                    return Ok(());
                }
                framer.push(buf.get(..n).unwrap_or_default());
                while let Ok(Some(frame)) = framer.next_frame() {
                    let msg = match ControlMessage::decode(&frame) {
                        Ok(m) => m,
                        Err(_) => continue,
                    };
                    match msg {
                        ControlMessage::StartControlConnectionRequest(_) => {
                            if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                            let mut r = node.identity.clone();
                            r.result_code = result_code;
                            replies.push(ControlMessage::StartControlConnectionReply(r));
                        }
                        ControlMessage::OutgoingCallRequest(req) => {
                            replies.push(answer_call(&node, &req, &mut call));
                        }
                        ControlMessage::SetLinkInfo(info) => {
                            // ACCMs only matter to asynchronous HDLC framing;
                            // PPTP carries whole frames in GRE.
                            tracing::trace!(?info, "Set-Link-Info");
                        }
                        ControlMessage::CallClearRequest(_) => {
                            if let Some(c) = call.take() {
                                replies.push(disconnect(c.route.call_id(), CDN_REQUEST));
                            }
                        }
                        ControlMessage::EchoRequest(e) => {
                            replies.push(ControlMessage::EchoReply(EchoReply {
                                identifier: e.identifier,
                                result_code: 1,
                                error_code: 0,
                            }));
                        }
                        ControlMessage::StopControlConnectionRequest(_) => {
                            // A call still up ends with the control connection.
                            drop(call.take());
                            // Teardown is not delayed: what is queued goes first.
                            line.flush(&mut stream, Instant::now(), true).await?;
                            for r in replies.drain(..) {
                                stream.write_all(&r.encode()).await?;
                            }
                            let r = ControlMessage::StopControlConnectionReply(
                                StopControlConnectionReply { result_code: 1, error_code: 0 },
                            );
                            stream.write_all(&r.encode()).await?;
                            tokio::select! {
                                () = drain(&mut stream) => {}
                                _ = stop.changed() => {}
                            }
                            return Ok(());
                        }
                        _ => {}
                    }
                }
                if framer.check_prefix().is_err() {
                    drop(call.take());
                    tokio::select! {
                        () = drain(&mut stream) => {}
                        _ = stop.changed() => {}
                    }
                    return Ok(());
                }
            }
            pkt = recv(&mut call) => {
                if let (Some(pkt), Some(c)) = (pkt, call.as_mut()) {
                    c.input(&pkt, Instant::now());
                }
            }
            () = sleep_until(wake) => {
                if let Some(c) = call.as_mut() {
                    c.handle_timeout(Instant::now());
                }
            }
        }
        for r in replies {
            line.send(&mut stream, &r.encode()).await?;
        }
    }
}

async fn recv(call: &mut Option<Call>) -> Option<Vec<u8>> {
    match call {
        Some(c) => c.route.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

fn disconnect(call_id: u16, result_code: u8) -> ControlMessage {
    ControlMessage::CallDisconnectNotify(CallDisconnectNotify {
        call_id,
        result_code,
        error_code: 0,
        cause_code: 0,
        call_statistics: FixedText::default(),
    })
}

fn call_reply(call_id: u16, peer_call_id: u16, result_code: u8) -> ControlMessage {
    ControlMessage::OutgoingCallReply(OutgoingCallReply {
        call_id,
        peer_call_id,
        result_code,
        error_code: 0,
        cause_code: 0,
        connect_speed: 10_000_000,
        packet_recv_window_size: 64,
        packet_processing_delay: 0,
        physical_channel_id: 0,
    })
}

/// The reply to an Outgoing-Call-Request; sets up the call when it is accepted.
fn answer_call(
    node: &NodeServer,
    req: &OutgoingCallRequest,
    call: &mut Option<Call>,
) -> ControlMessage {
    if let Behaviour::CallReject(code) = *node.node.behaviour.base() {
        return call_reply(0, req.call_id, code);
    }
    if call.is_some() {
        // One call per control connection, as pptpd.
        return call_reply(0, req.call_id, OCRP_BUSY);
    }
    let Some(gre) = &node.gre else {
        return call_reply(0, req.call_id, OCRP_GENERAL_ERROR);
    };
    let Some(route) = gre.register(
        node.node.ip,
        node.node.behaviour.impairment(),
        node.seed ^ u64::from(req.call_id),
    ) else {
        return call_reply(0, req.call_id, OCRP_BUSY);
    };
    let now = Instant::now();
    let id = route.call_id();
    let login = (*node.node.behaviour.base() != Behaviour::LcpSilent).then(|| {
        let mut cfg = ServerConfig::new(Arc::clone(&node.credentials));
        cfg.name = "connexa-sim".into();
        let login = LoginServer::new(cfg, now);
        match node.tunnel {
            Some(_) => Ppp::Session(Box::new(SessionServer::from_login(
                login,
                ServerNetworkConfig::default(),
            ))),
            None => Ppp::Login(Box::new(login)),
        }
    });
    *call = Some(Call {
        route,
        session: GreSession::new(id, req.call_id, ACK_DELAY),
        login,
        mute_at_chap: *node.node.behaviour.base() == Behaviour::AuthSilent,
        muted: false,
        data: None,
        factory: node.data_path.clone(),
        node: node.node.clone(),
        tunnel: node.tunnel,
        host: None,
        host_wake: None,
    });
    call_reply(id, req.call_id, OCRP_CONNECTED)
}

/// One simulated call: GRE numbering, the PPP login, and after it the data path.
struct Call {
    route: SimRoute,
    session: GreSession,
    /// `None` for a node that never answers LCP.
    login: Option<Ppp>,
    /// Fall silent (both directions) when the login reaches MS-CHAPv2.
    mute_at_chap: bool,
    muted: bool,
    data: Option<Box<dyn DataPath>>,
    factory: Option<DataPathFactory>,
    node: SimNode,
    tunnel: Option<TunnelSpec>,
    /// The host behind the tunnel, once the network phase is up.
    host: Option<Box<HttpHost>>,
    host_wake: Option<Instant>,
}

impl Call {
    fn input(&mut self, gre: &[u8], now: Instant) {
        if self.muted {
            return;
        }
        let Ok(pkt) = GrePacket::decode(gre) else {
            return;
        };
        let Accepted::Payload(frame) = self.session.accept(&pkt, now) else {
            return;
        };
        let Some(login) = self.login.as_mut() else {
            return;
        };
        let protocol = PppFrame::decode(frame).map(|f| f.protocol).ok();
        match (&mut self.data, protocol) {
            (Some(data), Some(p)) if p != PROTO_LCP && p != PROTO_CHAP => {
                data.handle_frame(frame, now);
            }
            _ => login.handle_input(frame, now),
        }
        self.start_data_path(now);
        self.pump_ip(now);
    }

    /// After a successful login, the data path (if the fleet has one) takes the
    /// frames of every protocol but LCP and CHAP.
    fn start_data_path(&mut self, now: Instant) {
        if self.data.is_some() {
            return;
        }
        let Some(factory) = &self.factory else {
            return;
        };
        if self.tunnel.is_some() {
            return;
        }
        if let Some(ServerOutcome::Accepted { user }) = self.login.as_ref().and_then(Ppp::outcome) {
            self.data = Some(factory(&self.node, user.clone(), now));
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        if self.muted {
            return None;
        }
        [
            self.login.as_ref().and_then(Ppp::poll_timeout),
            self.session.poll_timeout(),
            self.data.as_ref().and_then(|d| d.poll_timeout()),
            self.host_wake,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn handle_timeout(&mut self, now: Instant) {
        if let Some(l) = self.login.as_mut() {
            l.handle_timeout(now);
        }
        if let Some(d) = self.data.as_mut() {
            d.handle_timeout(now);
        }
        self.pump_ip(now);
    }

    /// Moves IPv4 datagrams between the tunnel and the host behind it.
    fn pump_ip(&mut self, now: Instant) {
        let Some(Ppp::Session(session)) = self.login.as_mut() else {
            return;
        };
        if self.host.is_none() && session.is_up() {
            let rate = self.tunnel.and_then(|t| t.rate_limit);
            let local = ServerNetworkConfig::default().local;
            let speed = if *self.node.behaviour.base() == Behaviour::FakeSpeed {
                SpeedRoute::Fake
            } else {
                SpeedRoute::Keyed(self.tunnel.and_then(|t| t.speed_key))
            };
            self.host = Some(Box::new(HttpHost::new(local, rate, speed, now)));
        }
        let Some(host) = self.host.as_mut() else {
            return;
        };
        while let Some(p) = session.poll_ip() {
            host.push_ip(p);
        }
        host.poll(now);
        while let Some(p) = host.pop_ip() {
            session.send_ip(&p);
        }
        self.host_wake = host.poll_at(now);
    }

    async fn flush(&mut self, peer: Ipv4Addr) {
        if self.muted {
            return;
        }
        let mut out = Vec::with_capacity(128);
        loop {
            let frame = match self.login.as_mut().and_then(Ppp::poll_transmit) {
                Some(f) => f,
                None => match self.data.as_mut().and_then(|d| d.poll_transmit()) {
                    Some(f) => f,
                    None => break,
                },
            };
            if self.mute_at_chap && PppFrame::decode(&frame).is_ok_and(|f| f.protocol == PROTO_CHAP)
            {
                self.muted = true;
                return;
            }
            out.clear();
            if self.session.encode(&frame, &mut out).is_ok()
                && let Err(e) = self.route.send(peer, &out).await
            {
                tracing::debug!(error = %e, "simulator GRE send");
            }
        }
        if let Some(ack) = self.session.poll_ack_only(Instant::now()) {
            let _ = self.route.send(peer, &ack).await;
        }
    }
}
