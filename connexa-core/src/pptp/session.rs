//! The PPP session after login, sans-IO: CCP/MPPE and IPCP negotiation, then
//! IPv4 datagrams carried encrypted with 128-bit stateless MPPE.
//!
//! * [`Network`]: the network phase of either side (CCP + IPCP automata, the
//!   MPPE keys derived from the login's master key, encryption and decryption
//!   of IPv4 datagrams). Role-agnostic: the server side of the simulator pairs
//!   it with [`LoginServer`] exactly as [`SessionServer`] does.
//! * [`SessionClient`]: [`LoginClient`] followed by the client [`Network`]: a
//!   whole PPTP client session in one state machine.
//! * [`SessionServer`]: [`LoginServer`] followed by the server [`Network`]
//!   (tests, simulator).
//!
//! IPv4 datagrams travel only inside MPPE (protocol `0x00FD`); a plain
//! `0x0021` frame from the peer is dropped (the link requires encryption), and
//! nothing is sent before CCP and IPCP are both open. Frames of protocols
//! nobody here runs (IPv6CP, ...) are answered with LCP Protocol-Reject.
//!
//! ```
//! use std::{collections::HashMap, sync::Arc, time::Instant};
//! use connexa_core::domain::Secret;
//! use connexa_core::pptp::login::{LoginConfig, ServerConfig};
//! use connexa_core::pptp::session::{SessionClient, SessionServer, ServerNetworkConfig};
//!
//! let t0 = Instant::now();
//! let table = Arc::new(HashMap::from([("alice".to_owned(), Secret::new("s3cret"))]));
//! let mut s = SessionServer::new(ServerConfig::new(table), ServerNetworkConfig::default(), t0);
//! let mut c = SessionClient::new(LoginConfig::new("alice", Secret::new("s3cret")), t0);
//! for _ in 0..20 {
//!     while let Some(f) = c.poll_transmit() { s.handle_input(&f, t0); }
//!     while let Some(f) = s.poll_transmit() { c.handle_input(&f, t0); }
//! }
//! assert!(c.is_up() && s.is_up());
//! c.send_ip(&[0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 100, 10, 0, 0, 1]);
//! while let Some(f) = c.poll_transmit() { s.handle_input(&f, t0); }
//! assert_eq!(s.poll_ip().unwrap()[0], 0x45);
//! ```

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use super::login::{
    LoginClient, LoginConfig, LoginOutcome, LoginPhase, LoginServer, ServerConfig, ServerOutcome,
};
use super::mppe::{KeyStrength, MppeReceiver, MppeSender, SessionKey};
use super::mschapv2::MasterKey;
use super::ppp::ccp::CcpNegotiator;
use super::ppp::fsm::{FinishReason, Fsm, FsmConfig, FsmEvent, State};
use super::ppp::ipcp::{IpcpConfig, IpcpNegotiator};
use super::ppp::{
    PROTO_CCP, PROTO_CHAP, PROTO_COMPRESSED, PROTO_IPCP, PROTO_IPV4, PROTO_LCP, PppFrame,
};

/// Octets MPPE takes from the PPP MRU (header + the encrypted protocol field),
/// as pppd subtracts them from the interface MTU.
pub const MPPE_PAD: u16 = 4;
/// Received datagrams kept for the layer above before further ones are dropped.
const MAX_RECEIVED: usize = 4096;

/// Settings of the network phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// Which side we are (selects the MPPE key directions).
    pub is_server: bool,
    /// IPCP settings (role, addresses, DNS).
    pub ipcp: IpcpConfig,
    /// CCP/IPCP timers and counters.
    pub fsm: FsmConfig,
    /// Deadline for CCP and IPCP to both open (default 20 s).
    pub timeout: Duration,
}

impl NetworkConfig {
    /// The client defaults: ask for an address and DNS servers.
    pub fn client() -> Self {
        NetworkConfig {
            is_server: false,
            ipcp: IpcpConfig::client(),
            fsm: FsmConfig::default(),
            timeout: Duration::from_secs(20),
        }
    }
}

/// Server network settings for [`SessionServer`]: our address, the peer's, DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerNetworkConfig {
    /// The server's address inside the tunnel.
    pub local: Ipv4Addr,
    /// The address assigned to the client.
    pub assign: Ipv4Addr,
    /// DNS servers handed out.
    pub dns: [Option<Ipv4Addr>; 2],
}

impl Default for ServerNetworkConfig {
    fn default() -> Self {
        ServerNetworkConfig {
            local: Ipv4Addr::new(10, 78, 0, 1),
            assign: Ipv4Addr::new(10, 78, 0, 100),
            dns: [Some(Ipv4Addr::new(10, 78, 0, 1)), None],
        }
    }
}

/// Where the network phase is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NetworkState {
    /// CCP and/or IPCP still negotiating.
    Negotiating,
    /// Both open: datagrams flow.
    Up,
    /// Negotiation failed or a protocol went down for good; why.
    Failed(String),
}

/// Counters of the datapath.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DataStats {
    /// IPv4 datagrams encrypted and queued for sending.
    pub sent: u64,
    /// IPv4 datagrams received and decrypted.
    pub received: u64,
    /// Inbound frames dropped (undecryptable, late, unencrypted, queue full).
    pub dropped: u64,
    /// Octets of IPv4 sent.
    pub bytes_sent: u64,
    /// Octets of IPv4 received.
    pub bytes_received: u64,
}

/// The network phase of one side (see the module docs).
#[derive(Debug)]
pub struct Network {
    ccp: Fsm<CcpNegotiator>,
    ipcp: Fsm<IpcpNegotiator>,
    master: MasterKey,
    is_server: bool,
    tx: Option<MppeSender>,
    rx: Option<MppeReceiver>,
    state: NetworkState,
    deadline: Option<Instant>,
    transmit: VecDeque<Vec<u8>>,
    received: VecDeque<Vec<u8>>,
    stats: DataStats,
}

impl Network {
    /// Starts CCP and IPCP (both send their first Configure-Request).
    pub fn new(master: MasterKey, config: NetworkConfig, now: Instant) -> Self {
        let mut ccp = Fsm::new(CcpNegotiator::new(), config.fsm);
        let mut ipcp = Fsm::new(IpcpNegotiator::new(config.ipcp), config.fsm);
        for_both(&mut ccp, &mut ipcp, now);
        let mut n = Network {
            ccp,
            ipcp,
            master,
            is_server: config.is_server,
            tx: None,
            rx: None,
            state: NetworkState::Negotiating,
            deadline: Some(now + config.timeout),
            transmit: VecDeque::new(),
            received: VecDeque::new(),
            stats: DataStats::default(),
        };
        n.pump();
        n
    }

    /// The current state.
    pub fn state(&self) -> &NetworkState {
        &self.state
    }

    /// Our address (acked by the peer).
    pub fn local_addr(&self) -> Option<Ipv4Addr> {
        self.ipcp.negotiator().negotiated().local
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> Option<Ipv4Addr> {
        self.ipcp.negotiator().negotiated().peer
    }

    /// DNS servers (client: given by the server; server: acked to the peer).
    pub fn dns(&self) -> Vec<Ipv4Addr> {
        self.ipcp.negotiator().negotiated().dns.clone()
    }

    /// Datapath counters.
    pub fn stats(&self) -> DataStats {
        self.stats
    }

    /// The CCP automaton.
    pub fn ccp(&self) -> &Fsm<CcpNegotiator> {
        &self.ccp
    }

    /// The IPCP automaton.
    pub fn ipcp(&self) -> &Fsm<IpcpNegotiator> {
        &self.ipcp
    }

    /// Takes a frame of CCP, IPCP, MPPE or plain IPv4. Returns `false` for any
    /// other protocol (the caller answers with LCP Protocol-Reject).
    pub fn handle_frame(&mut self, frame: &PppFrame<'_>, now: Instant) -> bool {
        match frame.protocol {
            PROTO_CCP => self.ccp.handle_input(frame.information, now),
            PROTO_IPCP => self.ipcp.handle_input(frame.information, now),
            PROTO_COMPRESSED => {
                let decrypted = match self.rx.as_mut() {
                    Some(rx) => rx.decrypt(frame.information).ok(),
                    None => None,
                };
                match decrypted {
                    Some((PROTO_IPV4, data)) if self.received.len() < MAX_RECEIVED => {
                        self.stats.received += 1;
                        self.stats.bytes_received += data.len() as u64;
                        self.received.push_back(data);
                    }
                    _ => self.stats.dropped += 1,
                }
                return true;
            }
            // Unencrypted datagrams on a link that requires MPPE.
            PROTO_IPV4 => {
                self.stats.dropped += 1;
                return true;
            }
            _ => return false,
        }
        self.pump();
        true
    }

    /// Encrypts an IPv4 datagram and queues the frame; `false` (dropped) unless
    /// the network phase is up.
    pub fn send_ip(&mut self, packet: &[u8]) -> bool {
        if self.state != NetworkState::Up {
            return false;
        }
        let Some(tx) = self.tx.as_mut() else {
            return false;
        };
        let mut frame = Vec::with_capacity(packet.len() + 8);
        frame.extend_from_slice(&[0xFF, 0x03, 0x00, 0xFD]);
        tx.encrypt(PROTO_IPV4, packet, &mut frame);
        self.stats.sent += 1;
        self.stats.bytes_sent += packet.len() as u64;
        self.transmit.push_back(frame);
        true
    }

    /// The next PPP frame to send.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmit.pop_front()
    }

    /// The next received IPv4 datagram.
    pub fn poll_ip(&mut self) -> Option<Vec<u8>> {
        self.received.pop_front()
    }

    /// When [`Network::handle_timeout`] must run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.ccp.poll_timeout(),
            self.ipcp.poll_timeout(),
            self.deadline,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.ccp.handle_timeout(now);
        self.ipcp.handle_timeout(now);
        if self.deadline.is_some_and(|d| now >= d) && self.state == NetworkState::Negotiating {
            self.deadline = None;
            let who = match (
                self.ccp.state() == State::Opened,
                self.ipcp.state() == State::Opened,
            ) {
                (false, false) => "CCP and IPCP",
                (false, true) => "CCP (MPPE)",
                _ => "IPCP",
            };
            self.state = NetworkState::Failed(format!("{who} did not come up in time"));
        }
        self.pump();
    }

    fn pump(&mut self) {
        while let Some(p) = self.ccp.poll_transmit() {
            self.transmit.push_back(
                PppFrame {
                    protocol: PROTO_CCP,
                    information: &p,
                }
                .encode(false, false),
            );
        }
        while let Some(p) = self.ipcp.poll_transmit() {
            self.transmit.push_back(
                PppFrame {
                    protocol: PROTO_IPCP,
                    information: &p,
                }
                .encode(false, false),
            );
        }
        let mut failed = None;
        while let Some(e) = self.ccp.poll_event() {
            match e {
                FsmEvent::Up => {
                    // Fresh keys each time CCP (re)opens, as the kernel does.
                    let m = &self.master.0;
                    self.tx = Some(MppeSender::new(SessionKey::initial(
                        m,
                        KeyStrength::Bits128,
                        true,
                        self.is_server,
                    )));
                    self.rx = Some(MppeReceiver::new(SessionKey::initial(
                        m,
                        KeyStrength::Bits128,
                        false,
                        self.is_server,
                    )));
                }
                FsmEvent::Finished(r) => failed = Some(format!("CCP: {}", finish_text(&r))),
                FsmEvent::Down | FsmEvent::Started => {}
            }
        }
        while let Some(e) = self.ipcp.poll_event() {
            if let FsmEvent::Finished(r) = e {
                failed = Some(format!("IPCP: {}", finish_text(&r)));
            }
        }
        if matches!(self.state, NetworkState::Failed(_)) {
            return;
        }
        if let Some(f) = failed {
            self.state = NetworkState::Failed(f);
            self.deadline = None;
            return;
        }
        let both = self.ccp.state() == State::Opened && self.ipcp.state() == State::Opened;
        if both && self.local_addr().is_some_and(|a| !a.is_unspecified()) {
            self.state = NetworkState::Up;
            self.deadline = None;
        } else if self.state == NetworkState::Up {
            // A renegotiation in progress: hold data until it settles.
            self.state = NetworkState::Negotiating;
        }
    }
}

fn for_both(ccp: &mut Fsm<CcpNegotiator>, ipcp: &mut Fsm<IpcpNegotiator>, now: Instant) {
    ccp.open(now);
    ccp.up(now);
    ipcp.open(now);
    ipcp.up(now);
}

fn finish_text(r: &FinishReason) -> String {
    match r {
        FinishReason::Fatal(s) => s.clone(),
        FinishReason::NoResponse => "no answer to Configure-Request".into(),
        FinishReason::NotConverging => "negotiation did not converge".into(),
        FinishReason::PeerTerminated => "the peer terminated it".into(),
        FinishReason::Rejected => "the peer rejected the protocol".into(),
        other => format!("{other:?}"),
    }
}

/// A whole client session: login, then the network phase (see the module docs).
#[derive(Debug)]
pub struct SessionClient {
    login: LoginClient,
    net: Option<Network>,
    net_config: Option<NetworkConfig>,
}

impl SessionClient {
    /// Starts the login (LCP Configure-Request ready to send).
    pub fn new(config: LoginConfig, now: Instant) -> Self {
        Self::from_login(LoginClient::new(config, now), Some(NetworkConfig::client()))
    }

    /// A session driving an existing login client, continuing with `net_config`
    /// after a successful login (`None`: stop at the login, as the auth test does).
    pub fn from_login(login: LoginClient, net_config: Option<NetworkConfig>) -> Self {
        SessionClient {
            login,
            net: None,
            net_config,
        }
    }

    /// The login driver.
    pub fn login(&self) -> &LoginClient {
        &self.login
    }

    /// The network phase, once the login succeeded.
    pub fn network(&self) -> Option<&Network> {
        self.net.as_ref()
    }

    /// Whether the session goes on to CCP/IPCP after the login.
    pub fn has_network_phase(&self) -> bool {
        self.net_config.is_some()
    }

    /// Whether datagrams can flow (logged in, CCP and IPCP open, link open).
    pub fn is_up(&self) -> bool {
        self.login.phase() == LoginPhase::Authenticated
            && self
                .net
                .as_ref()
                .is_some_and(|n| *n.state() == NetworkState::Up)
    }

    /// Whether the session is over (LCP finished).
    pub fn is_done(&self) -> bool {
        self.login.is_done()
    }

    /// The IP MTU of the tunnel: the peer's MRU (and ours) minus MPPE's octets.
    pub fn mtu(&self) -> u16 {
        let peer = self
            .login
            .lcp()
            .negotiator()
            .negotiated()
            .peer_mru
            .unwrap_or(1500);
        peer.min(1400) - MPPE_PAD
    }

    /// A PPP frame (GRE payload) arrived.
    pub fn handle_input(&mut self, frame: &[u8], now: Instant) {
        let Ok(f) = PppFrame::decode(frame) else {
            return;
        };
        match (f.protocol, self.net.as_mut()) {
            (PROTO_LCP | PROTO_CHAP, _) | (_, None) => self.login.handle_input(frame, now),
            (_, Some(net)) => {
                if !net.handle_frame(&f, now) {
                    self.login.protocol_reject(f.protocol, f.information, now);
                }
            }
        }
        self.start_network(now);
    }

    fn start_network(&mut self, now: Instant) {
        if self.net.is_none()
            && self.login.phase() == LoginPhase::Authenticated
            && let Some(cfg) = &self.net_config
            && let Some(LoginOutcome::Success { master_key, .. }) = self.login.outcome()
        {
            self.net = Some(Network::new(master_key.clone(), cfg.clone(), now));
        }
    }

    /// Encrypts and queues an IPv4 datagram; `false` when the session is not up.
    pub fn send_ip(&mut self, packet: &[u8]) -> bool {
        self.is_up() && self.net.as_mut().is_some_and(|n| n.send_ip(packet))
    }

    /// The next received IPv4 datagram.
    pub fn poll_ip(&mut self) -> Option<Vec<u8>> {
        self.net.as_mut().and_then(Network::poll_ip)
    }

    /// The next PPP frame to send.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.login
            .poll_transmit()
            .or_else(|| self.net.as_mut().and_then(Network::poll_transmit))
    }

    /// When [`SessionClient::handle_timeout`] must run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let net = if self.login.phase() == LoginPhase::Authenticated {
            self.net.as_ref().and_then(Network::poll_timeout)
        } else {
            None
        };
        [self.login.poll_timeout(), net].into_iter().flatten().min()
    }

    /// Timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.login.handle_timeout(now);
        if self.login.phase() == LoginPhase::Authenticated
            && let Some(n) = self.net.as_mut()
        {
            n.handle_timeout(now);
        }
        self.start_network(now);
    }

    /// Sends an LCP Echo-Request; its id.
    pub fn send_echo_request(&mut self, now: Instant) -> Option<u8> {
        self.login.send_echo_request(now)
    }

    /// LCP Echo-Reply ids received since the last call.
    pub fn take_echo_replies(&mut self) -> Vec<u8> {
        self.login.take_echo_replies()
    }

    /// Closes the link politely (LCP Terminate-Request).
    pub fn close(&mut self, now: Instant) {
        self.login.close(now);
    }
}

/// The server side of a whole session (tests, simulator): [`LoginServer`], then
/// the server [`Network`] with the addresses of a [`ServerNetworkConfig`].
#[derive(Debug)]
pub struct SessionServer {
    login: LoginServer,
    net: Option<Network>,
    net_config: NetworkConfig,
}

impl SessionServer {
    /// A server session waiting for (and already requesting) LCP.
    pub fn new(config: ServerConfig, network: ServerNetworkConfig, now: Instant) -> Self {
        Self::from_login(LoginServer::new(config, now), network)
    }

    /// A server session around an existing login server.
    pub fn from_login(login: LoginServer, network: ServerNetworkConfig) -> Self {
        SessionServer {
            login,
            net: None,
            net_config: NetworkConfig {
                is_server: true,
                ipcp: IpcpConfig::server(network.local, network.assign, network.dns),
                fsm: FsmConfig::default(),
                timeout: Duration::from_secs(20),
            },
        }
    }

    /// The login side.
    pub fn login(&self) -> &LoginServer {
        &self.login
    }

    /// The network phase, once the peer was accepted.
    pub fn network(&self) -> Option<&Network> {
        self.net.as_ref()
    }

    /// Whether datagrams can flow.
    pub fn is_up(&self) -> bool {
        !self.login.is_done()
            && self
                .net
                .as_ref()
                .is_some_and(|n| *n.state() == NetworkState::Up)
    }

    /// A PPP frame arrived.
    pub fn handle_input(&mut self, frame: &[u8], now: Instant) {
        let Ok(f) = PppFrame::decode(frame) else {
            return;
        };
        match (f.protocol, self.net.as_mut()) {
            (PROTO_LCP | PROTO_CHAP, _) | (_, None) => self.login.handle_input(frame, now),
            (_, Some(net)) => {
                if !net.handle_frame(&f, now) {
                    self.login.protocol_reject(f.protocol, f.information, now);
                }
            }
        }
        self.start_network(now);
    }

    fn start_network(&mut self, now: Instant) {
        if self.net.is_none()
            && matches!(self.login.outcome(), Some(ServerOutcome::Accepted { .. }))
            && let Some(key) = self.login.master_key()
        {
            self.net = Some(Network::new(key.clone(), self.net_config.clone(), now));
        }
    }

    /// Encrypts and queues an IPv4 datagram; `false` when not up.
    pub fn send_ip(&mut self, packet: &[u8]) -> bool {
        self.is_up() && self.net.as_mut().is_some_and(|n| n.send_ip(packet))
    }

    /// The next received IPv4 datagram.
    pub fn poll_ip(&mut self) -> Option<Vec<u8>> {
        self.net.as_mut().and_then(Network::poll_ip)
    }

    /// The next PPP frame to send.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.login
            .poll_transmit()
            .or_else(|| self.net.as_mut().and_then(Network::poll_transmit))
    }

    /// When [`SessionServer::handle_timeout`] must run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.login.poll_timeout(),
            self.net.as_ref().and_then(Network::poll_timeout),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.login.handle_timeout(now);
        if let Some(n) = self.net.as_mut() {
            n.handle_timeout(now);
        }
        self.start_network(now);
    }

    /// Closes the link (LCP Terminate-Request).
    pub fn close(&mut self, now: Instant) {
        self.login.close(now);
    }
}

#[cfg(test)]
mod tests;
