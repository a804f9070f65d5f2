//! The sans-IO login driver: LCP negotiation → MS-CHAPv2 → a [`LoginOutcome`]
//! ([`LoginClient`]), and its server-side counterpart ([`LoginServer`]: LCP server
//! plus an MS-CHAPv2 authenticator over a credential table) used by tests and by
//! the loopback simulator.
//!
//! Both take and emit whole PPP frames (the GRE payload) and never touch a socket:
//!
//! * [`LoginClient::handle_input`]`(frame, now)` — a PPP frame arrived;
//! * [`LoginClient::poll_transmit`] — the next PPP frame to send;
//! * [`LoginClient::poll_timeout`] / [`LoginClient::handle_timeout`]`(now)` — timers;
//! * [`LoginClient::outcome`] — how the login ended, as soon as it is known.
//!
//! Every login ends: the LCP phase is bounded by Max-Configure (no answer), by
//! [`FsmConfig::max_requests`] (a peer that never agrees), by a renegotiation
//! limit and by [`LoginConfig::lcp_timeout`]; the authentication phase by
//! [`LoginConfig::auth_timeout`]. After a failure the driver closes the link
//! politely (LCP Terminate-Request) by itself; after a success the link stays
//! open until [`LoginClient::close`].
//!
//! ```
//! use std::{collections::HashMap, sync::Arc, time::Instant};
//! use connexa_core::domain::Secret;
//! use connexa_core::pptp::login::{LoginClient, LoginConfig, LoginOutcome, LoginServer, ServerConfig};
//!
//! let t0 = Instant::now();
//! let table = Arc::new(HashMap::from([("alice".to_owned(), Secret::new("s3cret"))]));
//! let mut server = LoginServer::new(ServerConfig::new(table), t0);
//! let mut client = LoginClient::new(LoginConfig::new("alice", Secret::new("s3cret")), t0);
//! for _ in 0..20 {
//!     while let Some(f) = client.poll_transmit() { server.handle_input(&f, t0); }
//!     while let Some(f) = server.poll_transmit() { client.handle_input(&f, t0); }
//! }
//! assert!(matches!(client.outcome(), Some(LoginOutcome::Success { .. })));
//! ```

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::entropy::Entropy;
use super::mschapv2::{
    AuthenticatorOutcome, ChapOutcome, Credentials, MasterKey, MsChapAuthenticator, MsChapClient,
};
use super::ppp::fsm::{FinishReason, Fsm, FsmConfig, FsmEvent, State};
use super::ppp::lcp::{LcpConfig, LcpNegotiator};
use super::ppp::{CpPacket, PROTO_CHAP, PROTO_LCP, PppFrame};
use crate::domain::{Failure, Secret};

/// How many times LCP may go down and come back up before the login gives up.
const MAX_RENEGOTIATIONS: u32 = 3;
/// Frames of other protocols kept for the next layer after a successful login.
const MAX_UPPER_FRAMES: usize = 64;

/// Client settings.
#[derive(Debug, Clone)]
pub struct LoginConfig {
    /// The user name sent in the MS-CHAPv2 Response.
    pub username: String,
    /// The password (never logged).
    pub password: Secret,
    /// LCP timers and counters.
    pub lcp: FsmConfig,
    /// The MRU to request (default 1400).
    pub mru: Option<u16>,
    /// Deadline of the whole LCP phase (default 40 s, longer than Max-Configure ×
    /// restart timer so that a silent peer ends as [`LcpFailure::NoResponse`]).
    pub lcp_timeout: Duration,
    /// Deadline of the authentication phase, from LCP Up (default 15 s).
    pub auth_timeout: Duration,
}

impl LoginConfig {
    /// Defaults for `username` / `password`.
    pub fn new(username: impl Into<String>, password: Secret) -> Self {
        LoginConfig {
            username: username.into(),
            password,
            lcp: FsmConfig::default(),
            mru: Some(1400),
            lcp_timeout: Duration::from_secs(40),
            auth_timeout: Duration::from_secs(15),
        }
    }
}

/// Why LCP did not come up.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LcpFailure {
    /// The peer never answered our Configure-Requests (Max-Configure reached).
    NoResponse,
    /// The peer kept Nak-ing/Rejecting or renegotiating (bounds reached).
    NotConverging,
    /// The link is looped back (magic-number collisions).
    LoopedBack,
    /// The peer sent Terminate-Request.
    PeerTerminated,
    /// The peer rejected LCP itself (Code-Reject / Protocol-Reject).
    Rejected,
    /// [`LoginConfig::lcp_timeout`] passed.
    Timeout,
}

impl std::fmt::Display for LcpFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LcpFailure::NoResponse => "no answer to LCP Configure-Request (Max-Configure reached)",
            LcpFailure::NotConverging => "LCP negotiation did not converge",
            LcpFailure::LoopedBack => "link is looped back",
            LcpFailure::PeerTerminated => "peer terminated the link",
            LcpFailure::Rejected => "peer rejected LCP",
            LcpFailure::Timeout => "LCP phase timed out",
        })
    }
}

/// How a login ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LoginOutcome {
    /// MS-CHAPv2 Success, with the server's authenticator response verified.
    Success {
        /// The server's `M=` text.
        message: String,
        /// The MPPE master key (RFC 3079), for the tunnel.
        master_key: MasterKey,
    },
    /// MS-CHAPv2 Failure: the credentials were rejected.
    AuthRejected {
        /// The `E=` code (691 = authentication failure).
        code: Option<u32>,
        /// `R=1`: the server would allow a retry.
        retry: bool,
        /// The `M=` text.
        message: String,
    },
    /// The server claimed Success but failed to prove it knows the password.
    BadAuthenticator,
    /// LCP opened but the server did not ask us to authenticate with MS-CHAPv2:
    /// the credentials could not be checked.
    NoAuthentication,
    /// LCP did not come up (or fell apart before authentication finished).
    LcpFailed(LcpFailure),
    /// LCP came up but authentication did not finish in time.
    AuthTimeout,
}

impl LoginOutcome {
    /// Whether the credentials were accepted.
    pub fn is_success(&self) -> bool {
        matches!(self, LoginOutcome::Success { .. })
    }

    /// The domain [`Failure`] this outcome stands for (`None` on success).
    pub fn to_failure(&self) -> Option<Failure> {
        Some(match self {
            LoginOutcome::Success { .. } => return None,
            LoginOutcome::AuthRejected { code, message, .. } => Failure::AuthRejected {
                code: *code,
                message: message.clone(),
            },
            LoginOutcome::BadAuthenticator => Failure::BadReply {
                detail: "MS-CHAPv2 Success with an authenticator response that does not verify"
                    .into(),
            },
            LoginOutcome::NoAuthentication => Failure::BadReply {
                detail: "server did not request MS-CHAPv2 authentication".into(),
            },
            LoginOutcome::LcpFailed(f) => Failure::LcpFailed {
                detail: f.to_string(),
            },
            LoginOutcome::AuthTimeout => Failure::AuthTimeout,
        })
    }
}

/// Where the client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginPhase {
    /// LCP negotiation.
    Establish,
    /// MS-CHAPv2 exchange.
    Authenticate,
    /// Logged in; the link is open for the next layer (CCP/IPCP).
    Authenticated,
    /// Closing the link (LCP Terminate).
    Terminating,
    /// Done: LCP finished; nothing more will be sent.
    Done,
}

/// Moves the LCP packets the state machine wants sent into `out` as PPP frames.
fn queue_lcp(lcp: &mut Fsm<LcpNegotiator>, out: &mut VecDeque<Vec<u8>>) {
    while let Some(p) = lcp.poll_transmit() {
        out.push_back(
            PppFrame {
                protocol: PROTO_LCP,
                information: &p,
            }
            .encode(false, false),
        );
    }
}

fn protocol_reject(lcp: &mut Fsm<LcpNegotiator>, protocol: u16, information: &[u8]) {
    if lcp.state() != State::Opened {
        return;
    }
    let mut data = protocol.to_be_bytes().to_vec();
    data.extend_from_slice(&information[..information.len().min(1000)]);
    lcp.send_extended(super::ppp::lcp::PROTOCOL_REJECT, data);
}

fn lcp_failure(reason: &FinishReason) -> LcpFailure {
    match reason {
        FinishReason::NoResponse => LcpFailure::NoResponse,
        FinishReason::NotConverging => LcpFailure::NotConverging,
        FinishReason::Fatal(_) => LcpFailure::LoopedBack,
        FinishReason::Rejected => LcpFailure::Rejected,
        FinishReason::PeerTerminated => LcpFailure::PeerTerminated,
        _ => LcpFailure::PeerTerminated,
    }
}

/// The client side of a PPTP login (see the module docs).
#[derive(Debug)]
pub struct LoginClient {
    lcp: Fsm<LcpNegotiator>,
    chap: MsChapClient,
    phase: LoginPhase,
    deadline: Option<Instant>,
    auth_timeout: Duration,
    outcome: Option<LoginOutcome>,
    early_chap: Option<Vec<u8>>,
    ups: u32,
    transmit: VecDeque<Vec<u8>>,
    upper: VecDeque<Vec<u8>>,
}

impl LoginClient {
    /// Starts a login: the first LCP Configure-Request is ready to send.
    ///
    /// # Panics
    ///
    /// When the OS random source fails (see [`LoginClient::with_seed`] to
    /// supply the seed and handle that failure yourself).
    pub fn new(config: LoginConfig, now: Instant) -> Self {
        Self::with_seed(config, Entropy::from_os().bytes(), now)
    }

    /// As [`LoginClient::new`], with all randomness (peer challenge, magic numbers)
    /// derived from `seed`: for reproducible tests.
    pub fn with_seed(config: LoginConfig, seed: [u8; 32], now: Instant) -> Self {
        let mut rng = Entropy::from_seed(seed);
        let mut lcp_cfg = LcpConfig::client(rng.u32());
        lcp_cfg.mru = config.mru;
        let negotiator = LcpNegotiator::new(lcp_cfg, rng.u64());
        let chap = MsChapClient::with_peer_challenge(config.username, config.password, rng.bytes());
        let mut lcp = Fsm::new(negotiator, config.lcp);
        lcp.open(now);
        lcp.up(now);
        let mut c = LoginClient {
            lcp,
            chap,
            phase: LoginPhase::Establish,
            deadline: Some(now + config.lcp_timeout),
            auth_timeout: config.auth_timeout,
            outcome: None,
            early_chap: None,
            ups: 0,
            transmit: VecDeque::new(),
            upper: VecDeque::new(),
        };
        c.pump(now);
        c
    }

    /// How the login ended, once known.
    pub fn outcome(&self) -> Option<&LoginOutcome> {
        self.outcome.as_ref()
    }

    /// The current phase.
    pub fn phase(&self) -> LoginPhase {
        self.phase
    }

    /// Whether nothing more will happen (LCP finished).
    pub fn is_done(&self) -> bool {
        self.phase == LoginPhase::Done
    }

    /// The LCP automaton (negotiated values, state).
    pub fn lcp(&self) -> &Fsm<LcpNegotiator> {
        &self.lcp
    }

    /// The next PPP frame to send (a GRE payload).
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmit.pop_front()
    }

    /// After a successful login: the next frame of another protocol (CCP, IPCP,
    /// IP, ...) that arrived, for the next layer. At most 64 are kept.
    pub fn poll_upper(&mut self) -> Option<Vec<u8>> {
        self.upper.pop_front()
    }

    /// When [`LoginClient::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let chap = if matches!(
            self.phase,
            LoginPhase::Authenticate | LoginPhase::Authenticated
        ) {
            self.chap.poll_timeout()
        } else {
            None
        };
        [self.lcp.poll_timeout(), self.deadline, chap]
            .into_iter()
            .flatten()
            .min()
    }

    /// Timers: LCP restart timer and the phase deadlines.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.lcp.handle_timeout(now);
        self.pump(now);
        if matches!(
            self.phase,
            LoginPhase::Authenticate | LoginPhase::Authenticated
        ) {
            self.chap.handle_timeout(now);
            self.check_chap(now);
        }
        if self.deadline.is_some_and(|d| now >= d) {
            self.deadline = None;
            match self.phase {
                LoginPhase::Establish => {
                    self.fail(LoginOutcome::LcpFailed(LcpFailure::Timeout), now)
                }
                LoginPhase::Authenticate => self.fail(LoginOutcome::AuthTimeout, now),
                _ => {}
            }
        }
        self.pump(now);
    }

    /// Sends an LCP Echo-Request (liveness check) if LCP is open; returns its id.
    /// Replies are reported by [`LoginClient::take_echo_replies`].
    pub fn send_echo_request(&mut self, now: Instant) -> Option<u8> {
        if self.lcp.state() != State::Opened {
            return None;
        }
        let magic = self.lcp.negotiator().magic();
        let id = self
            .lcp
            .send_extended(super::ppp::lcp::ECHO_REQUEST, magic.to_be_bytes().to_vec());
        self.pump(now);
        Some(id)
    }

    /// Sends an LCP Protocol-Reject for a frame of a protocol the caller does
    /// not run (only while LCP is open).
    pub fn protocol_reject(&mut self, protocol: u16, information: &[u8], now: Instant) {
        protocol_reject(&mut self.lcp, protocol, information);
        self.pump(now);
    }

    /// Ids of the LCP Echo-Replies received since the last call (oldest first).
    pub fn take_echo_replies(&mut self) -> Vec<u8> {
        self.lcp.negotiator_mut().take_echo_replies()
    }

    /// Closes the link politely (LCP Terminate-Request, retransmitted up to
    /// Max-Terminate times).
    pub fn close(&mut self, now: Instant) {
        if self.phase != LoginPhase::Done {
            self.phase = LoginPhase::Terminating;
            self.deadline = None;
            self.lcp.close(now);
        }
        self.pump(now);
    }

    /// A PPP frame (GRE payload) arrived. Malformed frames are ignored.
    pub fn handle_input(&mut self, frame: &[u8], now: Instant) {
        let Ok(f) = PppFrame::decode(frame) else {
            return;
        };
        match f.protocol {
            PROTO_LCP => {
                let terminate = CpPacket::decode(f.information)
                    .ok()
                    .filter(|p| p.code == super::ppp::fsm::TERMINATE_REQUEST);
                self.lcp.handle_input(f.information, now);
                if let Some(t) = terminate {
                    // The peer gave up on us before the login finished: stop too
                    // (the Terminate-Ack was sent by the automaton).
                    match self.phase {
                        LoginPhase::Authenticate if self.chap.has_responded() => {
                            // The server saw our Response and hung up: a rejection
                            // whose Failure packet was lost or never sent (pppd
                            // sends Failure, then Terminate "Authentication failed").
                            let text: String =
                                String::from_utf8_lossy(&t.data).chars().take(80).collect();
                            self.fail(
                                LoginOutcome::AuthRejected {
                                    code: None,
                                    retry: false,
                                    message: format!("link terminated after our Response: {text}"),
                                },
                                now,
                            );
                        }
                        LoginPhase::Establish | LoginPhase::Authenticate => {
                            self.fail(LoginOutcome::LcpFailed(LcpFailure::PeerTerminated), now)
                        }
                        _ => {}
                    }
                }
            }
            PROTO_CHAP => match self.phase {
                LoginPhase::Authenticate | LoginPhase::Authenticated => {
                    self.chap.handle_input(f.information, now);
                    self.check_chap(now);
                }
                LoginPhase::Establish => self.early_chap = Some(f.information.to_vec()),
                _ => {}
            },
            _ => {
                if self.phase == LoginPhase::Authenticated && self.upper.len() < MAX_UPPER_FRAMES {
                    self.upper.push_back(frame.to_vec());
                }
            }
        }
        self.pump(now);
    }

    fn fail(&mut self, outcome: LoginOutcome, now: Instant) {
        if self.outcome.is_none() {
            self.outcome = Some(outcome);
        }
        self.deadline = None;
        if !matches!(self.phase, LoginPhase::Terminating | LoginPhase::Done) {
            self.phase = LoginPhase::Terminating;
            self.lcp.close(now);
        }
    }

    fn check_chap(&mut self, now: Instant) {
        while let Some(p) = self.chap.poll_transmit() {
            self.transmit.push_back(
                PppFrame {
                    protocol: PROTO_CHAP,
                    information: &p,
                }
                .encode(false, false),
            );
        }
        if self.phase == LoginPhase::Authenticated {
            // A re-challenge: the login stands; a failed re-authentication ends
            // the link (the outcome of the login is kept).
            if matches!(
                self.chap.outcome(),
                Some(ChapOutcome::Failure(_) | ChapOutcome::BadAuthenticator)
            ) {
                self.close(now);
            }
            return;
        }
        match self.chap.outcome().cloned() {
            None => {}
            Some(ChapOutcome::Success {
                message,
                master_key,
            }) => {
                self.outcome = Some(LoginOutcome::Success {
                    message,
                    master_key,
                });
                self.phase = LoginPhase::Authenticated;
                self.deadline = None;
            }
            Some(ChapOutcome::Failure(f)) => self.fail(
                LoginOutcome::AuthRejected {
                    code: f.error,
                    retry: f.retry,
                    message: f.message,
                },
                now,
            ),
            Some(ChapOutcome::BadAuthenticator) => self.fail(LoginOutcome::BadAuthenticator, now),
        }
    }

    /// Moves LCP output to the wire and reacts to LCP events.
    fn pump(&mut self, now: Instant) {
        loop {
            queue_lcp(&mut self.lcp, &mut self.transmit);
            let Some(event) = self.lcp.poll_event() else {
                break;
            };
            match event {
                FsmEvent::Up => {
                    self.ups += 1;
                    if self.ups > MAX_RENEGOTIATIONS + 1 && self.phase != LoginPhase::Authenticated
                    {
                        self.fail(LoginOutcome::LcpFailed(LcpFailure::NotConverging), now);
                        continue;
                    }
                    if self.phase != LoginPhase::Establish {
                        continue;
                    }
                    let wants_mschap = self.lcp.negotiator().negotiated().peer_auth.is_some();
                    if wants_mschap {
                        self.phase = LoginPhase::Authenticate;
                        self.deadline = Some(now + self.auth_timeout);
                        if let Some(early) = self.early_chap.take() {
                            self.chap.handle_input(&early, now);
                            self.check_chap(now);
                        }
                    } else {
                        self.fail(LoginOutcome::NoAuthentication, now);
                    }
                }
                FsmEvent::Down | FsmEvent::Started => {}
                FsmEvent::Finished(reason) => {
                    if self.outcome.is_none() {
                        self.outcome = Some(LoginOutcome::LcpFailed(lcp_failure(&reason)));
                    }
                    self.phase = LoginPhase::Done;
                    self.deadline = None;
                }
            }
        }
        if self.phase == LoginPhase::Terminating
            && matches!(
                self.lcp.state(),
                State::Closed | State::Stopped | State::Initial
            )
        {
            self.phase = LoginPhase::Done;
        }
    }
}

// ---------------------------------------------------------------------------
// Server side
// ---------------------------------------------------------------------------

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Users and passwords.
    pub credentials: Credentials,
    /// The authenticator name sent in the Challenge.
    pub name: String,
    /// LCP timers and counters.
    pub lcp: FsmConfig,
}

impl ServerConfig {
    /// Defaults with the given credential table.
    pub fn new(credentials: Credentials) -> Self {
        ServerConfig {
            credentials,
            name: "connexa-sim".into(),
            lcp: FsmConfig::default(),
        }
    }
}

/// How a login ended, from the server's side.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerOutcome {
    /// The peer authenticated as `user`; the link stays open.
    Accepted {
        /// The user name.
        user: String,
    },
    /// Wrong password or unknown user; Failure E=691 was sent and the link closed.
    Rejected {
        /// The claimed user name.
        user: String,
    },
    /// The peer refused to authenticate (rejected the Auth-Protocol option).
    AuthRefused,
    /// The peer never answered the Challenge.
    NoResponse,
    /// LCP did not come up.
    LcpFailed(LcpFailure),
}

/// The server side of a PPTP login: LCP (requiring MS-CHAPv2) and the MS-CHAPv2
/// authenticator. Used by tests and the loopback simulator.
#[derive(Debug)]
pub struct LoginServer {
    lcp: Fsm<LcpNegotiator>,
    auth: MsChapAuthenticator,
    outcome: Option<ServerOutcome>,
    authenticating: bool,
    closing: bool,
    transmit: VecDeque<Vec<u8>>,
}

impl LoginServer {
    /// A server waiting for (and already requesting) LCP.
    ///
    /// # Panics
    ///
    /// When the OS random source fails (see [`LoginServer::with_seed`]).
    pub fn new(config: ServerConfig, now: Instant) -> Self {
        Self::with_seed(config, Entropy::from_os().bytes(), now)
    }

    /// As [`LoginServer::new`] with randomness from `seed`.
    pub fn with_seed(config: ServerConfig, seed: [u8; 32], now: Instant) -> Self {
        let mut rng = Entropy::from_seed(seed);
        let negotiator = LcpNegotiator::new(LcpConfig::server(rng.u32()), rng.u64());
        let auth = MsChapAuthenticator::with_challenge(
            config.credentials,
            config.name.into_bytes(),
            rng.bytes(),
            rng.bytes::<1>()[0],
        );
        let mut lcp = Fsm::new(negotiator, config.lcp);
        lcp.open(now);
        lcp.up(now);
        let mut s = LoginServer {
            lcp,
            auth,
            outcome: None,
            authenticating: false,
            closing: false,
            transmit: VecDeque::new(),
        };
        s.pump(now);
        s
    }

    /// How the login ended, once known.
    pub fn outcome(&self) -> Option<&ServerOutcome> {
        self.outcome.as_ref()
    }

    /// The MPPE master key of an accepted peer (RFC 3079), for CCP/MPPE.
    pub fn master_key(&self) -> Option<&MasterKey> {
        self.auth.master_key()
    }

    /// The LCP automaton (negotiated values, state).
    pub fn lcp(&self) -> &Fsm<LcpNegotiator> {
        &self.lcp
    }

    /// Sends an LCP Protocol-Reject for a frame of a protocol the caller does
    /// not run (only while LCP is open).
    pub fn protocol_reject(&mut self, protocol: u16, information: &[u8], now: Instant) {
        protocol_reject(&mut self.lcp, protocol, information);
        self.pump(now);
    }

    /// Whether LCP has finished (link closed or failed).
    pub fn is_done(&self) -> bool {
        matches!(
            self.lcp.state(),
            State::Closed | State::Stopped | State::Initial
        ) && (self.closing || self.outcome.is_some())
    }

    /// The next PPP frame to send.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmit.pop_front()
    }

    /// When [`LoginServer::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let a = self.lcp.poll_timeout();
        let b = if self.authenticating {
            self.auth.poll_timeout()
        } else {
            None
        };
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.lcp.handle_timeout(now);
        if self.authenticating {
            self.auth.handle_timeout(now);
            self.check_auth(now);
        }
        self.pump(now);
    }

    /// A PPP frame arrived.
    pub fn handle_input(&mut self, frame: &[u8], now: Instant) {
        let Ok(f) = PppFrame::decode(frame) else {
            return;
        };
        match f.protocol {
            PROTO_LCP => self.lcp.handle_input(f.information, now),
            PROTO_CHAP if self.authenticating => {
                self.auth.handle_input(f.information);
                self.check_auth(now);
            }
            _ => {}
        }
        self.pump(now);
    }

    /// Closes the link (LCP Terminate-Request).
    pub fn close(&mut self, now: Instant) {
        self.closing = true;
        self.lcp.close(now);
        self.pump(now);
    }

    fn check_auth(&mut self, now: Instant) {
        while let Some(p) = self.auth.poll_transmit() {
            self.transmit.push_back(
                PppFrame {
                    protocol: PROTO_CHAP,
                    information: &p,
                }
                .encode(false, false),
            );
        }
        if self.outcome.is_some() {
            return;
        }
        match self.auth.outcome().cloned() {
            None => {}
            Some(AuthenticatorOutcome::Accepted { user }) => {
                self.outcome = Some(ServerOutcome::Accepted { user })
            }
            Some(AuthenticatorOutcome::Rejected { user }) => {
                self.outcome = Some(ServerOutcome::Rejected { user });
                self.close(now);
            }
            Some(AuthenticatorOutcome::NoResponse) => {
                self.outcome = Some(ServerOutcome::NoResponse);
                self.close(now);
            }
        }
    }

    fn pump(&mut self, now: Instant) {
        loop {
            queue_lcp(&mut self.lcp, &mut self.transmit);
            let Some(event) = self.lcp.poll_event() else {
                break;
            };
            match event {
                FsmEvent::Up => {
                    if self.outcome.is_some() || self.authenticating {
                        continue;
                    }
                    if self.lcp.negotiator().negotiated().auth_refused {
                        self.outcome = Some(ServerOutcome::AuthRefused);
                        self.close(now);
                    } else {
                        self.authenticating = true;
                        self.auth.start(now);
                        self.check_auth(now);
                    }
                }
                FsmEvent::Finished(reason) => {
                    self.closing = true;
                    if self.outcome.is_none() {
                        self.outcome = Some(ServerOutcome::LcpFailed(lcp_failure(&reason)));
                    }
                }
                FsmEvent::Down | FsmEvent::Started => {}
            }
        }
    }
}

#[cfg(test)]
mod pppd_vectors;
#[cfg(test)]
mod tests;
