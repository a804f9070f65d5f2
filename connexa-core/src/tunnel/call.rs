//! One PPTP call from a client: control connection, call, PPP login, teardown.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::socket::{GreRoute, GreSocket};
use crate::domain::{Failure, Level, PptpIdentity, Secret};
use crate::ports::ProbeError;
use crate::pptp::control::{
    CallClearRequest, ControlMessage, EchoReply, Framer, OutgoingCallRequest,
    StartControlConnectionRequest, StopControlConnectionReply, StopControlConnectionRequest,
    Text64, bearer, framing,
};
use crate::pptp::gre::{Accepted, GrePacket, GreSession};
use crate::pptp::login::{LoginClient, LoginConfig, LoginOutcome, LoginPhase};
use crate::pptp::ppp::fsm::FsmConfig;
use crate::pptp::session::{NetworkConfig, NetworkState, SessionClient};

/// Settings of an authenticating call ([`login`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// Time allowed for the TCP connection to complete.
    pub connect_timeout: Duration,
    /// Time from the Start-Control-Connection-Request to its reply.
    pub handshake_timeout: Duration,
    /// Time from the Outgoing-Call-Request to its reply (default 20 s: pptpd
    /// answers only once it has started a pppd for the call, which a busy
    /// server does slowly; 10 s lost 1 login in 25 at 5 % loss in the lab).
    pub call_timeout: Duration,
    /// LCP timers and counters. The default restart timer is 2 s and
    /// Max-Configure 6, so a server that never answers LCP fails after ~12 s.
    pub lcp: FsmConfig,
    /// Deadline of the whole LCP phase.
    pub lcp_timeout: Duration,
    /// Deadline of the MS-CHAPv2 exchange, from LCP up.
    pub auth_timeout: Duration,
    /// Time granted to each polite teardown step (LCP Terminate-Ack,
    /// Call-Disconnect-Notify, Stop-Control-Connection-Reply). Politeness only:
    /// it never changes the outcome.
    pub teardown_timeout: Duration,
    /// Delay before a lone GRE acknowledgment is sent.
    pub ack_delay: Duration,
    /// Host name announced in the Start-Control-Connection-Request.
    pub host_name: String,
    /// Vendor announced in the Start-Control-Connection-Request.
    pub vendor: String,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            connect_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(5),
            call_timeout: Duration::from_secs(20),
            lcp: FsmConfig {
                restart: Duration::from_secs(2),
                max_configure: 6,
                ..FsmConfig::default()
            },
            lcp_timeout: Duration::from_secs(20),
            auth_timeout: Duration::from_secs(15),
            teardown_timeout: Duration::from_secs(2),
            ack_delay: Duration::from_millis(200),
            host_name: "connexa".into(),
            vendor: "connexa".into(),
        }
    }
}

/// Which polite teardown steps completed (for tests and diagnostics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Teardown {
    /// The PPP link was closed with LCP Terminate-Request/Ack (or was already
    /// closed by the login driver or the peer).
    pub lcp_closed: bool,
    /// The call ended with a Call-Disconnect-Notify (after our
    /// Call-Clear-Request or on the server's initiative).
    pub call_cleared: bool,
    /// The control connection ended with Stop-Control-Connection-Request/Reply.
    pub control_stopped: bool,
    /// The server closed the control connection itself during the teardown
    /// (pptpd's control process exits as soon as its pppd has terminated the
    /// link, without waiting for our Call-Clear-Request).
    pub server_closed: bool,
}

/// What one authenticating call found.
#[derive(Debug, Clone, PartialEq)]
pub struct LoginReport {
    /// How far it got: [`Level::Auth`] on MS-CHAPv2 success (authenticator
    /// verified), [`Level::Light`] when the control handshake succeeded,
    /// [`Level::None`] otherwise.
    pub reached: Level,
    /// Why it stopped below [`Level::Auth`].
    pub failure: Option<Failure>,
    /// TCP connect time, ms.
    pub connect_ms: Option<f64>,
    /// Start-Control-Connection request → reply, ms.
    pub handshake_ms: Option<f64>,
    /// Outgoing-Call-Request → reply, ms.
    pub call_ms: Option<f64>,
    /// First LCP Configure-Request → login outcome, ms.
    pub login_ms: Option<f64>,
    /// What the server said about itself.
    pub pptp: Option<PptpIdentity>,
    /// The server's `M=` message on success.
    pub message: Option<String>,
    /// Teardown steps that completed.
    pub teardown: Teardown,
    /// Set when the attempt failed because of this machine (out of sockets):
    /// says nothing about the node.
    pub local_error: Option<String>,
}

impl LoginReport {
    /// `true` when the attempt failed in transit before the server answered
    /// the control handshake ([`Failure::is_transient`]), not because of this
    /// machine: worth another try.
    pub fn is_transient(&self) -> bool {
        self.local_error.is_none()
            && self.reached == Level::None
            && self.failure.as_ref().is_some_and(Failure::is_transient)
    }

    fn new() -> Self {
        LoginReport {
            reached: Level::None,
            failure: None,
            connect_ms: None,
            handshake_ms: None,
            call_ms: None,
            login_ms: None,
            pptp: None,
            message: None,
            teardown: Teardown::default(),
            local_error: None,
        }
    }

    fn fail(mut self, failure: Failure) -> Self {
        self.failure = Some(failure);
        self
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Why reading the control connection stopped.
#[derive(Debug)]
enum CtlError {
    Eof,
    Io(io::Error),
    NotPptp,
    Bad(String),
}

impl CtlError {
    fn failure(self) -> Failure {
        match self {
            CtlError::Eof => Failure::ClosedEarly,
            CtlError::Io(e) => io_failure(&e),
            CtlError::NotPptp => Failure::NotPptp,
            CtlError::Bad(detail) => Failure::BadReply { detail },
        }
    }
}

/// The control connection: framing over the TCP stream.
struct Control {
    stream: TcpStream,
    framer: Framer,
    buf: Vec<u8>,
    /// No more reads or writes (closed, failed or stopped).
    dead: bool,
}

impl Control {
    async fn send(&mut self, msg: ControlMessage) -> io::Result<()> {
        if self.dead {
            return Err(io::ErrorKind::NotConnected.into());
        }
        let r = self.stream.write_all(&msg.encode()).await;
        if r.is_err() {
            self.dead = true;
        }
        r
    }

    /// The next message. Cancel-safe (bytes read are kept in the framer).
    async fn recv(&mut self) -> Result<ControlMessage, CtlError> {
        if self.dead {
            return Err(CtlError::Eof);
        }
        loop {
            match self.framer.next_frame() {
                Ok(Some(frame)) => {
                    return match ControlMessage::decode(&frame) {
                        Ok(m) => Ok(m),
                        Err(e) if e.is_not_pptp() => Err(CtlError::NotPptp),
                        Err(e) => Err(CtlError::Bad(e.to_string())),
                    };
                }
                Ok(None) => {}
                Err(_) => {
                    self.dead = true;
                    return Err(CtlError::NotPptp);
                }
            }
            match self.stream.read(&mut self.buf).await {
                Ok(0) => {
                    self.dead = true;
                    return Err(CtlError::Eof);
                }
                Ok(n) => self.framer.push(self.buf.get(..n).unwrap_or_default()),
                Err(e) => {
                    self.dead = true;
                    return Err(CtlError::Io(e));
                }
            }
        }
    }

    /// Answers what must always be answered. Returns `true` if the message was
    /// consumed that way.
    async fn answer_housekeeping(&mut self, msg: &ControlMessage) -> bool {
        match msg {
            ControlMessage::EchoRequest(req) => {
                let _ = self
                    .send(ControlMessage::EchoReply(EchoReply {
                        identifier: req.identifier,
                        result_code: 1,
                        error_code: 0,
                    }))
                    .await;
                true
            }
            ControlMessage::SetLinkInfo(info) => {
                // ACCMs matter to asynchronous HDLC framing only; PPTP carries
                // PPP frames whole in GRE, so there is nothing to apply.
                tracing::trace!(?info, "Set-Link-Info");
                true
            }
            ControlMessage::StopControlConnectionRequest(_) => {
                let _ = self
                    .send(ControlMessage::StopControlConnectionReply(
                        StopControlConnectionReply {
                            result_code: 1,
                            error_code: 0,
                        },
                    ))
                    .await;
                self.dead = true;
                false
            }
            _ => false,
        }
    }
}

/// Logs in to the PPTP server at `addr` as `username` with MS-CHAPv2 and tears
/// everything down again, politely, whatever happened.
///
/// Sequence: TCP connect; Start-Control-Connection-Request sent at once (pptpd
/// drops connections that stay silent) and its reply; a GRE route and call id
/// on `gre`; Outgoing-Call-Request/Reply; LCP and MS-CHAPv2 over GRE driven by
/// [`LoginClient`]; then LCP Terminate, Call-Clear-Request (waiting briefly for
/// Call-Disconnect-Notify) and Stop-Control-Connection-Request. Echo-Requests
/// are answered and Set-Link-Info accepted throughout. Every phase has its own
/// timeout ([`AuthConfig`]).
pub async fn login(
    gre: &Arc<GreSocket>,
    addr: SocketAddrV4,
    username: &str,
    password: &Secret,
    config: &AuthConfig,
) -> LoginReport {
    let mut call = match Call::connect(addr, config).await {
        Ok(c) => c,
        Err(report) => return report,
    };
    if let Some(mut link) = call.setup(gre, *addr.ip()).await {
        call.login(&mut link, username, password, None).await;
        // Close the PPP link politely while the call is still there.
        call.close_link(&mut link).await;
    }
    call.teardown().await;
    call.finish().await
}

/// One PPTP call in progress: the control connection, what was found so far,
/// and the call's state. Used by [`login`] and by the tunnel.
pub(super) struct Call {
    ctl: Control,
    pub(super) report: LoginReport,
    /// `(our call id, disconnected)` once the call is up.
    call: Option<(u16, bool)>,
    config: AuthConfig,
}

/// What ended a call from the server side while it was in use.
pub(super) enum CtlEvent {
    /// Housekeeping answered or nothing of interest.
    Nothing,
    /// The server cleared the call, stopped or closed the control connection.
    Gone(String),
}

impl Call {
    pub(super) fn new(stream: TcpStream, report: LoginReport, config: AuthConfig) -> Self {
        Call {
            ctl: Control {
                stream,
                framer: Framer::new(),
                buf: vec![0u8; 2048],
                dead: false,
            },
            report,
            call: None,
            config,
        }
    }

    /// Connects to `addr` (own timeout); a report with the failure otherwise.
    pub(super) async fn connect(
        addr: SocketAddrV4,
        config: &AuthConfig,
    ) -> Result<Call, LoginReport> {
        let report = LoginReport::new();
        let start = Instant::now();
        let stream = match tokio::time::timeout(
            config.connect_timeout,
            TcpStream::connect(SocketAddr::V4(addr)),
        )
        .await
        {
            Err(_) => return Err(report.fail(Failure::ConnectTimeout)),
            Ok(Err(e)) => {
                let mut r = report.fail(connect_failure(&e));
                r.local_error = is_local_exhaustion(&e).then(|| e.to_string());
                return Err(r);
            }
            Ok(Ok(s)) => s,
        };
        let mut report = report;
        report.connect_ms = Some(ms(start.elapsed()));
        let _ = stream.set_nodelay(true);
        Ok(Call::new(stream, report, config.clone()))
    }

    /// Shuts the control connection and returns the report.
    pub(super) async fn finish(mut self) -> LoginReport {
        let _ = self.ctl.stream.shutdown().await;
        self.report
    }

    /// Reads the control connection once: answers housekeeping, reports a
    /// server-side end of the call. Cancel-safe.
    pub(super) async fn control_event(&mut self) -> CtlEvent {
        match self.ctl.recv().await {
            Ok(msg) => {
                if self.ctl.answer_housekeeping(&msg).await {
                    return CtlEvent::Nothing;
                }
                match msg {
                    ControlMessage::CallDisconnectNotify(cdn) => {
                        if let Some((_, d)) = &mut self.call {
                            *d = true;
                        }
                        self.report.teardown.call_cleared = true;
                        CtlEvent::Gone(format!(
                            "the server disconnected the call (result {})",
                            cdn.result_code
                        ))
                    }
                    ControlMessage::StopControlConnectionRequest(_) => {
                        if let Some((_, d)) = &mut self.call {
                            *d = true;
                        }
                        self.report.teardown.control_stopped = true;
                        CtlEvent::Gone("the server stopped the control connection".into())
                    }
                    other => {
                        tracing::debug!(msg = %other.control_type(), "ignored on an open call");
                        CtlEvent::Nothing
                    }
                }
            }
            Err(e) => {
                if let Some((_, d)) = &mut self.call {
                    *d = true;
                }
                self.report.teardown.server_closed = true;
                CtlEvent::Gone(format!("the control connection ended ({})", e.failure()))
            }
        }
    }

    /// Start-Control-Connection and Outgoing-Call; the GRE link on success
    /// (failures are in the report).
    pub(super) async fn setup(&mut self, gre: &Arc<GreSocket>, peer: Ipv4Addr) -> Option<Link> {
        let cfg = self.config.clone();
        // 1. Start-Control-Connection.
        let sent = Instant::now();
        let sccrq = StartControlConnectionRequest::new(&cfg.host_name, &cfg.vendor);
        if let Err(e) = self
            .ctl
            .send(ControlMessage::StartControlConnectionRequest(sccrq))
            .await
        {
            self.report.failure = Some(io_failure(&e));
            return None;
        }
        let reply = tokio::time::timeout(cfg.handshake_timeout, async {
            loop {
                let msg = self.ctl.recv().await.map_err(CtlError::failure)?;
                if self.ctl.answer_housekeeping(&msg).await {
                    continue;
                }
                return match msg {
                    ControlMessage::StartControlConnectionReply(r) => Ok(r),
                    other => Err(Failure::BadReply {
                        detail: format!(
                            "expected Start-Control-Connection-Reply, got {}",
                            other.control_type()
                        ),
                    }),
                };
            }
        })
        .await;
        let reply = match reply {
            Err(_) => {
                self.report.failure = Some(Failure::HandshakeTimeout);
                return None;
            }
            Ok(Err(f)) => {
                self.report.failure = Some(f);
                return None;
            }
            Ok(Ok(r)) => r,
        };
        if reply.result_code != 1 {
            self.report.failure = Some(Failure::ControlRejected {
                code: reply.result_code,
            });
            return None;
        }
        self.report.handshake_ms = Some(ms(sent.elapsed()));
        self.report.pptp = Some(reply.identity());
        self.report.reached = Level::Light;

        // 2. The call. Register the route first: the server's LCP may arrive
        //    right after its reply.
        let route = match gre.register(peer) {
            Ok(r) => r,
            Err(e) => {
                self.report.local_error = Some(e.to_string());
                self.report.failure = Some(Failure::Other {
                    detail: e.to_string(),
                });
                return None;
            }
        };
        let our_id = route.call_id();
        let sent = Instant::now();
        let ocrq = OutgoingCallRequest {
            call_id: our_id,
            call_serial_number: our_id,
            minimum_bps: 2400,
            maximum_bps: 10_000_000,
            bearer_type: bearer::ANALOG | bearer::DIGITAL,
            framing_type: framing::ASYNC | framing::SYNC,
            packet_recv_window_size: 64,
            packet_processing_delay: 0,
            phone_number_length: 0,
            phone_number: Text64::default(),
            subaddress: Text64::default(),
        };
        if let Err(e) = self
            .ctl
            .send(ControlMessage::OutgoingCallRequest(ocrq))
            .await
        {
            self.report.failure = Some(io_failure(&e));
            return None;
        }
        let reply = tokio::time::timeout(cfg.call_timeout, async {
            loop {
                let msg = self.ctl.recv().await.map_err(CtlError::failure)?;
                if self.ctl.answer_housekeeping(&msg).await {
                    continue;
                }
                match msg {
                    ControlMessage::OutgoingCallReply(r) if r.peer_call_id == our_id => {
                        return Ok(r);
                    }
                    ControlMessage::StopControlConnectionRequest(_) => {
                        return Err(Failure::BadReply {
                            detail: "the server stopped the control connection instead of \
                                     answering the Outgoing-Call-Request"
                                .into(),
                        });
                    }
                    other => {
                        tracing::debug!(msg = %other.control_type(), "ignored while awaiting the call reply");
                    }
                }
            }
        })
        .await;
        let reply = match reply {
            Err(_) => {
                self.report.failure = Some(Failure::TunnelFailed {
                    detail: "no Outgoing-Call-Reply in time".into(),
                });
                return None;
            }
            Ok(Err(f)) => {
                self.report.failure = Some(f);
                return None;
            }
            Ok(Ok(r)) => r,
        };
        if reply.result_code != 1 {
            self.report.failure = Some(Failure::CallRejected {
                code: reply.result_code,
            });
            return None;
        }
        self.report.call_ms = Some(ms(sent.elapsed()));
        self.call = Some((our_id, false));

        Some(Link {
            session: None,
            gre: GreSession::new(our_id, reply.call_id, cfg.ack_delay),
            route,
        })
    }

    /// LCP + MS-CHAPv2 (and, with `network`, CCP/MPPE + IPCP) over the link
    /// until the login outcome is known (and the network phase is up or
    /// failed). Fills the report; `true` when the session is up (or, without
    /// `network`, logged in).
    pub(super) async fn login(
        &mut self,
        link: &mut Link,
        user: &str,
        password: &Secret,
        network: Option<NetworkConfig>,
    ) -> bool {
        let cfg = &self.config;
        let mut login_cfg = LoginConfig::new(user, password.clone());
        login_cfg.lcp = cfg.lcp;
        login_cfg.lcp_timeout = cfg.lcp_timeout;
        login_cfg.auth_timeout = cfg.auth_timeout;
        let t0 = Instant::now();
        let with_network = network.is_some();
        let hard_deadline = t0
            + cfg.lcp_timeout
            + cfg.auth_timeout
            + network.as_ref().map_or(Duration::ZERO, |n| n.timeout)
            + Duration::from_secs(1);
        // The peer challenge, LCP magic numbers and MPPE state come from this
        // seed. A failed OS random source is our failure, never a weaker seed.
        let mut seed = [0u8; 32];
        if let Err(e) = getrandom::fill(&mut seed) {
            self.report.local_error = Some(format!("the OS random source failed: {e}"));
            return false;
        }
        link.session = Some(SessionClient::from_login(
            LoginClient::with_seed(login_cfg, seed, t0),
            network,
        ));
        let result = self.ppp(link, hard_deadline).await;
        self.report.login_ms = Some(ms(t0.elapsed()));
        match result {
            Ok(LoginOutcome::Success { message, .. }) => {
                self.report.reached = Level::Auth;
                self.report.message = Some(message);
                if !with_network {
                    return true;
                }
                let session = link.session();
                if session.is_up() {
                    return true;
                }
                let detail = match session.network().map(|n| n.state().clone()) {
                    Some(NetworkState::Failed(why)) => why,
                    _ if session.is_done() => "the link closed before CCP/IPCP came up".into(),
                    _ => "CCP/IPCP did not come up in time".into(),
                };
                self.report.failure = Some(Failure::TunnelFailed { detail });
                false
            }
            Ok(other) => {
                self.report.failure = other.to_failure();
                false
            }
            Err(f) => {
                self.report.failure = Some(f);
                false
            }
        }
    }

    /// Runs the session until the login outcome is known and, when the
    /// session has a network phase, until that is up or failed.
    async fn ppp(
        &mut self,
        link: &mut Link,
        hard_deadline: Instant,
    ) -> Result<LoginOutcome, Failure> {
        loop {
            link.flush(Instant::now()).await;
            if let Some(o) = link.settled() {
                return Ok(o);
            }
            let wake = [
                link.session().poll_timeout(),
                link.gre.poll_timeout(),
                Some(hard_deadline),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(hard_deadline);
            let gone: Option<String> = tokio::select! {
                pkt = link.route.recv() => match pkt {
                    Some(pkt) => { link.input(&pkt, Instant::now()); None }
                    None => Some("the GRE socket closed".into()),
                },
                msg = self.ctl.recv() => match msg {
                    Ok(msg) => {
                        if self.ctl.answer_housekeeping(&msg).await {
                            None
                        } else {
                            match msg {
                                ControlMessage::CallDisconnectNotify(cdn) => {
                                    if let Some((_, d)) = &mut self.call { *d = true; }
                                    self.report.teardown.call_cleared = true;
                                    Some(format!("the server disconnected the call (result {})", cdn.result_code))
                                }
                                ControlMessage::StopControlConnectionRequest(_) => {
                                    if let Some((_, d)) = &mut self.call { *d = true; }
                                    self.report.teardown.control_stopped = true;
                                    Some("the server stopped the control connection".into())
                                }
                                other => {
                                    tracing::debug!(msg = %other.control_type(), "ignored during login");
                                    None
                                }
                            }
                        }
                    }
                    Err(e) => {
                        if let Some((_, d)) = &mut self.call { *d = true; }
                        self.report.teardown.server_closed = true;
                        Some(format!("the control connection ended ({})", e.failure()))
                    }
                },
                () = tokio::time::sleep_until(wake.into()) => {
                    let now = Instant::now();
                    link.session_mut().handle_timeout(now);
                    if now >= hard_deadline {
                        if let Some(o) = link.session().login().outcome() {
                            return Ok(o.clone());
                        }
                        return Err(Failure::Timeout);
                    }
                    None
                }
            };
            if let Some(why) = gone {
                // Packets that arrived before the hang-up still count (pppd
                // sends CHAP Failure, then the call is cleared).
                let now = Instant::now();
                while let Some(pkt) = link.route.try_recv() {
                    link.input(&pkt, now);
                }
                if let Some(o) = link.session().login().outcome() {
                    return Ok(o.clone());
                }
                return Err(match link.session().login().phase() {
                    LoginPhase::Establish => Failure::LcpFailed {
                        detail: format!("{why} during LCP negotiation"),
                    },
                    _ => Failure::LcpFailed {
                        detail: format!("{why} during authentication"),
                    },
                });
            }
        }
    }

    /// LCP Terminate (bounded by the teardown timeout), unless the call is gone.
    pub(super) async fn close_link(&mut self, link: &mut Link) {
        let now = Instant::now();
        link.session_mut().close(now);
        if self.call.is_some_and(|(_, disconnected)| disconnected) {
            self.report.teardown.lcp_closed = link.session().is_done();
            return;
        }
        let deadline = now + self.config.teardown_timeout;
        loop {
            link.flush(Instant::now()).await;
            if link.session().is_done() {
                self.report.teardown.lcp_closed = true;
                return;
            }
            let wake = link
                .session()
                .poll_timeout()
                .map_or(deadline, |t| t.min(deadline));
            tokio::select! {
                pkt = link.route.recv() => match pkt {
                    Some(pkt) => link.input(&pkt, Instant::now()),
                    None => return,
                },
                msg = self.ctl.recv() => match msg {
                    Ok(msg) => {
                        self.ctl.answer_housekeeping(&msg).await;
                        let end = match msg {
                            ControlMessage::CallDisconnectNotify(_) => {
                                self.report.teardown.call_cleared = true;
                                true
                            }
                            ControlMessage::StopControlConnectionRequest(_) => {
                                self.report.teardown.control_stopped = true;
                                true
                            }
                            _ => false,
                        };
                        if end {
                            if let Some((_, d)) = &mut self.call { *d = true; }
                            self.report.teardown.lcp_closed = link.session().is_done();
                            return;
                        }
                    }
                    Err(_) => {
                        if let Some((_, d)) = &mut self.call { *d = true; }
                        self.report.teardown.server_closed = true;
                        return;
                    }
                },
                () = tokio::time::sleep_until(wake.into()) => {
                    let now = Instant::now();
                    if now >= deadline { return; }
                    link.session_mut().handle_timeout(now);
                }
            }
        }
    }

    /// Call-Clear-Request → Call-Disconnect-Notify, then Stop-Control-Connection.
    pub(super) async fn teardown(&mut self) {
        let t = self.config.teardown_timeout;
        match self.call {
            // Already ended by the server (Call-Disconnect-Notify, Stop or hang-up).
            Some((_, true)) => {}
            Some((our_id, false)) => {
                let sent = self
                    .ctl
                    .send(ControlMessage::CallClearRequest(CallClearRequest {
                        call_id: our_id,
                    }))
                    .await
                    .is_ok();
                if sent {
                    let cleared = tokio::time::timeout(t, async {
                        loop {
                            let Ok(msg) = self.ctl.recv().await else {
                                self.report.teardown.server_closed = true;
                                return false;
                            };
                            if self.ctl.answer_housekeeping(&msg).await {
                                continue;
                            }
                            match msg {
                                ControlMessage::CallDisconnectNotify(_) => return true,
                                ControlMessage::StopControlConnectionRequest(_) => {
                                    self.report.teardown.control_stopped = true;
                                    return false;
                                }
                                _ => {}
                            }
                        }
                    })
                    .await;
                    self.report.teardown.call_cleared = cleared == Ok(true);
                }
            }
            None => {}
        }
        if self.ctl.dead {
            if !self.report.teardown.control_stopped {
                self.report.teardown.server_closed = true;
            }
            return;
        }
        if self
            .ctl
            .send(ControlMessage::StopControlConnectionRequest(
                StopControlConnectionRequest { reason: 1 },
            ))
            .await
            .is_err()
        {
            self.report.teardown.server_closed = true;
            return;
        }
        let stopped = tokio::time::timeout(t, async {
            loop {
                let Ok(msg) = self.ctl.recv().await else {
                    self.report.teardown.server_closed = true;
                    return false;
                };
                if self.ctl.answer_housekeeping(&msg).await {
                    continue;
                }
                match msg {
                    ControlMessage::StopControlConnectionReply(_) => return true,
                    ControlMessage::StopControlConnectionRequest(_) => return true,
                    _ => {}
                }
            }
        })
        .await;
        self.report.teardown.control_stopped = stopped == Ok(true);
    }
}

/// The PPP link of a call: session driver + GRE numbering + route.
pub(super) struct Link {
    session: Option<SessionClient>,
    pub(super) gre: GreSession,
    pub(super) route: GreRoute,
}

impl Link {
    /// The session (set by [`Call::login`]).
    pub(super) fn session(&self) -> &SessionClient {
        self.session
            .as_ref()
            .expect("Call::login sets the session first")
    }

    /// The session, mutably.
    pub(super) fn session_mut(&mut self) -> &mut SessionClient {
        self.session
            .as_mut()
            .expect("Call::login sets the session first")
    }

    /// The login outcome once the session has settled: a failed login at once;
    /// a successful one when there is no network phase, or it is up or failed.
    fn settled(&self) -> Option<LoginOutcome> {
        let s = self.session();
        let o = s.login().outcome()?;
        if !o.is_success() || !s.has_network_phase() || s.is_up() || s.is_done() {
            return Some(o.clone());
        }
        match s.network().map(|n| n.state()) {
            Some(NetworkState::Failed(_)) => Some(o.clone()),
            _ => None,
        }
    }

    pub(super) fn input(&mut self, gre: &[u8], now: Instant) {
        let Ok(pkt) = GrePacket::decode(gre) else {
            return;
        };
        if let Accepted::Payload(payload) = self.gre.accept(&pkt, now)
            && let Some(s) = self.session.as_mut()
        {
            s.handle_input(payload, now);
        }
    }

    pub(super) async fn flush(&mut self, now: Instant) {
        let mut out = Vec::with_capacity(1500);
        while let Some(frame) = self.session.as_mut().and_then(SessionClient::poll_transmit) {
            out.clear();
            if self.gre.encode(&frame, &mut out).is_ok()
                && let Err(e) = self.route.send(&out).await
            {
                tracing::debug!(error = %e, "GRE send");
            }
        }
        if let Some(ack) = self.gre.poll_ack_only(now) {
            let _ = self.route.send(&ack).await;
        }
    }
}

/// Opens the GRE socket or says why not (for callers that want an `Err`).
pub(crate) fn ipv4_only(addr: SocketAddr) -> Result<SocketAddrV4, ProbeError> {
    match addr {
        SocketAddr::V4(a) => Ok(a),
        SocketAddr::V6(_) => Err(ProbeError::Config(
            "the auth test supports IPv4 nodes only (raw GRE over IPv6 is not implemented)".into(),
        )),
    }
}

pub(crate) fn connect_failure(e: &io::Error) -> Failure {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => Failure::Refused,
        io::ErrorKind::TimedOut => Failure::ConnectTimeout,
        _ => io_failure(e),
    }
}

pub(crate) fn io_failure(e: &io::Error) -> Failure {
    match e.kind() {
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => Failure::Reset,
        io::ErrorKind::BrokenPipe | io::ErrorKind::UnexpectedEof => Failure::ClosedEarly,
        _ => Failure::Other {
            detail: e.to_string(),
        },
    }
}

/// Out of file descriptors, local ports or buffers: this machine's problem.
pub(crate) fn is_local_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(23 | 24 | 99 | 105))
}
