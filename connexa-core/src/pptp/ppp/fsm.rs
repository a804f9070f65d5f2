//! The RFC 1661 option-negotiation automaton, sans-IO and generic over a
//! [`Negotiator`] (the per-protocol option policy), so that LCP, CCP and IPCP share
//! one implementation.
//!
//! * States, events and actions follow the state transition table of RFC 1661 §4.1.
//! * The restart timer and the Max-Configure / Max-Terminate / Max-Failure counters
//!   follow §4.6 (defaults 3 s, 10, 2, 5).
//! * Time is an argument: drive it with [`Fsm::handle_input`], [`Fsm::handle_timeout`],
//!   [`Fsm::poll_transmit`], [`Fsm::poll_timeout`] and [`Fsm::poll_event`].
//! * RFC 1661 re-initialises the restart counter on every Configure-Nak/Reject, so a
//!   hostile peer that Naks forever would keep the automaton negotiating forever.
//!   [`FsmConfig::max_requests`] bounds the Configure-Requests sent and received
//!   during one negotiation; past it the automaton finishes with
//!   [`FinishReason::NotConverging`]. Every negotiation therefore ends.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{CpPacket, RawOption};

/// Configure-Request.
pub const CONFIGURE_REQUEST: u8 = 1;
/// Configure-Ack.
pub const CONFIGURE_ACK: u8 = 2;
/// Configure-Nak.
pub const CONFIGURE_NAK: u8 = 3;
/// Configure-Reject.
pub const CONFIGURE_REJECT: u8 = 4;
/// Terminate-Request.
pub const TERMINATE_REQUEST: u8 = 5;
/// Terminate-Ack.
pub const TERMINATE_ACK: u8 = 6;
/// Code-Reject.
pub const CODE_REJECT: u8 = 7;

/// The automaton's states (RFC 1661 §4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum State {
    Initial,
    Starting,
    Closed,
    Stopped,
    Closing,
    Stopping,
    ReqSent,
    AckRcvd,
    AckSent,
    Opened,
}

/// Timers and counters (RFC 1661 §4.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsmConfig {
    /// The restart timer (default 3 s).
    pub restart: Duration,
    /// Configure-Requests sent without an answer before giving up (default 10).
    pub max_configure: u32,
    /// Terminate-Requests sent without an answer before giving up (default 2).
    pub max_terminate: u32,
    /// Configure-Naks sent without an Ack before Naks become Rejects (default 5).
    pub max_failure: u32,
    /// Configure-Requests sent, and received, during one negotiation before the
    /// automaton declares it non-converging (default 30; not in the RFC, see module docs).
    pub max_requests: u32,
}

impl Default for FsmConfig {
    fn default() -> Self {
        FsmConfig {
            restart: Duration::from_secs(3),
            max_configure: 10,
            max_terminate: 2,
            max_failure: 5,
            max_requests: 30,
        }
    }
}

/// The judgement of a peer's Configure-Request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Acknowledge the request as sent.
    Ack,
    /// Suggest other values for these options.
    Nak(Vec<RawOption>),
    /// Refuse these options.
    Reject(Vec<RawOption>),
}

/// What a [`Negotiator`] makes of a packet with a protocol-specific code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Extended {
    /// Handled; send this reply if any.
    Reply(Option<CpPacket>),
    /// A reject the protocol can live with (RXJ+).
    RejectPermitted,
    /// A reject that ends the protocol (RXJ-).
    RejectCatastrophic,
    /// An unknown code: answer with Code-Reject.
    Unknown,
}

/// The option policy of one control protocol.
pub trait Negotiator {
    /// The options of our next Configure-Request.
    fn request(&mut self) -> Vec<RawOption>;
    /// The peer acknowledged our request (these are the options we sent).
    fn acked(&mut self, options: &[RawOption]);
    /// The peer suggested other values.
    fn naked(&mut self, options: &[RawOption]);
    /// The peer refused these options.
    fn rejected(&mut self, options: &[RawOption]);
    /// Judges the peer's request. `may_nak` is false once Max-Failure is reached:
    /// the negotiator must then return Ack or Reject.
    fn check(&mut self, options: &[RawOption], may_nak: bool) -> Verdict;
    /// A packet whose code is not 1..=7. `opened` tells whether the automaton is
    /// in the Opened state (LCP answers Echo-Requests only then).
    fn extended(&mut self, _packet: &CpPacket, _opened: bool) -> Extended {
        Extended::Unknown
    }
    /// A reason to stop negotiating at once (e.g. a looped-back link).
    fn fatal(&self) -> Option<String> {
        None
    }
}

/// Why the automaton reached This-Layer-Finished.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FinishReason {
    /// We closed and the peer acknowledged (or the terminate timer ran out).
    Closed,
    /// Max-Configure Configure-Requests went unanswered.
    NoResponse,
    /// The peer sent Terminate-Request.
    PeerTerminated,
    /// The peer rejected a code or protocol we cannot do without.
    Rejected,
    /// Too many Configure-Requests in one negotiation (see [`FsmConfig::max_requests`]).
    NotConverging,
    /// The negotiator gave up (e.g. looped-back link).
    Fatal(String),
    /// The lower layer went down.
    LowerDown,
}

/// Events for the layer above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FsmEvent {
    /// This-Layer-Up: negotiation finished, the protocol is open.
    Up,
    /// This-Layer-Down: it left the Opened state.
    Down,
    /// This-Layer-Started: the automaton needs the lower layer.
    Started,
    /// This-Layer-Finished: the automaton is done with the lower layer.
    Finished(FinishReason),
}

/// One RFC 1661 automaton.
#[derive(Debug)]
pub struct Fsm<N> {
    state: State,
    negotiator: N,
    config: FsmConfig,
    restart_count: u32,
    failure_count: u32,
    timer: Option<Instant>,
    next_id: u8,
    req_id: u8,
    last_request: Vec<u8>,
    term_id: u8,
    requests_sent: u32,
    requests_received: u32,
    pending_finish: Option<FinishReason>,
    give_up: Option<FinishReason>,
    transmit: VecDeque<Vec<u8>>,
    events: VecDeque<FsmEvent>,
}

impl<N: Negotiator> Fsm<N> {
    /// A new automaton in the Initial state.
    pub fn new(negotiator: N, config: FsmConfig) -> Self {
        Fsm {
            state: State::Initial,
            negotiator,
            config,
            restart_count: 0,
            failure_count: config.max_failure,
            timer: None,
            next_id: 1,
            req_id: 0,
            last_request: Vec::new(),
            term_id: 0,
            requests_sent: 0,
            requests_received: 0,
            pending_finish: None,
            give_up: None,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The option policy.
    pub fn negotiator(&self) -> &N {
        &self.negotiator
    }

    /// The option policy, mutably.
    pub fn negotiator_mut(&mut self) -> &mut N {
        &mut self.negotiator
    }

    /// The next encoded control packet to send (the PPP information field).
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmit.pop_front()
    }

    /// The next event for the layer above.
    pub fn poll_event(&mut self) -> Option<FsmEvent> {
        self.events.pop_front()
    }

    /// When [`Fsm::handle_timeout`] must be called next, if the restart timer runs.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timer
    }

    /// Sends a protocol-specific packet (e.g. LCP Echo-Request) with a fresh id;
    /// returns the id.
    pub fn send_extended(&mut self, code: u8, data: Vec<u8>) -> u8 {
        let id = self.fresh_id();
        self.send(CpPacket { code, id, data });
        id
    }

    // ----- administrative events -----

    /// The lower layer is up (Up event).
    pub fn up(&mut self, now: Instant) {
        match self.state {
            State::Initial => self.state = State::Closed,
            State::Starting => {
                self.irc_configure();
                self.scr(now);
                self.state = State::ReqSent;
            }
            _ => {}
        }
        self.settle();
    }

    /// The lower layer went down (Down event).
    pub fn down(&mut self) {
        match self.state {
            State::Closed => self.state = State::Initial,
            State::Stopped => {
                self.events.push_back(FsmEvent::Started);
                self.state = State::Starting;
            }
            State::Closing => self.state = State::Initial,
            State::Stopping | State::ReqSent | State::AckRcvd | State::AckSent => {
                self.state = State::Starting
            }
            State::Opened => {
                self.events.push_back(FsmEvent::Down);
                self.state = State::Starting;
            }
            State::Initial | State::Starting => {}
        }
        self.timer = None;
    }

    /// The administrator wants the link open (Open event).
    pub fn open(&mut self, now: Instant) {
        match self.state {
            State::Initial => {
                self.events.push_back(FsmEvent::Started);
                self.state = State::Starting;
            }
            State::Closed => {
                self.irc_configure();
                self.scr(now);
                self.state = State::ReqSent;
            }
            State::Closing => self.state = State::Stopping,
            _ => {}
        }
        self.settle();
    }

    /// The administrator wants the link closed (Close event): Terminate-Request
    /// is sent and retransmitted up to Max-Terminate times.
    pub fn close(&mut self, now: Instant) {
        match self.state {
            State::Starting => {
                self.finish(FinishReason::Closed);
                self.state = State::Initial;
            }
            State::Stopped => self.state = State::Closed,
            State::Stopping => self.state = State::Closing,
            State::ReqSent | State::AckRcvd | State::AckSent => {
                self.irc_terminate();
                self.str(now);
                self.state = State::Closing;
            }
            State::Opened => {
                self.events.push_back(FsmEvent::Down);
                self.irc_terminate();
                self.str(now);
                self.state = State::Closing;
            }
            _ => {}
        }
        self.settle();
    }

    /// The restart timer fired (TO+ / TO-). Calls before the deadline are ignored.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.timer {
            Some(t) if now >= t => {}
            _ => return,
        }
        self.timer = None;
        if self.restart_count > 0 {
            match self.state {
                State::Closing | State::Stopping => self.str(now),
                State::ReqSent | State::AckRcvd => {
                    self.scr(now);
                    self.state = State::ReqSent;
                }
                State::AckSent => self.scr(now),
                _ => {}
            }
        } else {
            match self.state {
                State::Closing => {
                    self.finish(self.pending_finish.clone().unwrap_or(FinishReason::Closed));
                    self.state = State::Closed;
                }
                State::Stopping => {
                    self.finish(self.pending_finish.clone().unwrap_or(FinishReason::Closed));
                    self.state = State::Stopped;
                }
                State::ReqSent | State::AckRcvd | State::AckSent => {
                    self.finish(FinishReason::NoResponse);
                    self.state = State::Stopped;
                }
                _ => {}
            }
        }
        self.settle();
    }

    /// A control packet arrived (the PPP information field). Malformed packets are
    /// silently discarded (RFC 1661 §5).
    pub fn handle_input(&mut self, bytes: &[u8], now: Instant) {
        if matches!(self.state, State::Initial | State::Starting) {
            return;
        }
        let Ok(packet) = CpPacket::decode(bytes) else {
            return;
        };
        match packet.code {
            CONFIGURE_REQUEST => self.rcr(&packet, now),
            CONFIGURE_ACK => self.rca(&packet, now),
            CONFIGURE_NAK | CONFIGURE_REJECT => self.rcn(&packet, now),
            TERMINATE_REQUEST => self.rtr(&packet, now),
            TERMINATE_ACK => self.rta(&packet, now),
            CODE_REJECT => {
                let rejected = packet.data.first().copied().unwrap_or(0);
                if (1..=7).contains(&rejected) {
                    self.rxj_minus(now);
                } else {
                    self.rxj_plus();
                }
            }
            _ => {
                let opened = self.state == State::Opened;
                match self.negotiator.extended(&packet, opened) {
                    Extended::Reply(Some(reply)) => self.send(reply),
                    Extended::Reply(None) => {}
                    Extended::RejectPermitted => self.rxj_plus(),
                    Extended::RejectCatastrophic => self.rxj_minus(now),
                    Extended::Unknown => self.scj(bytes),
                }
            }
        }
        self.settle();
    }

    // ----- receive events -----

    fn rcr(&mut self, packet: &CpPacket, now: Instant) {
        let Ok(options) = RawOption::parse_list(&packet.data) else {
            return;
        };
        match self.state {
            State::Closed | State::Closing | State::Stopping => {
                if self.state == State::Closed {
                    self.send(CpPacket {
                        code: TERMINATE_ACK,
                        id: packet.id,
                        data: vec![],
                    });
                }
                return;
            }
            _ => {}
        }
        if self.state != State::Opened {
            self.requests_received += 1;
            if self.requests_received > self.config.max_requests {
                self.give_up = Some(FinishReason::NotConverging);
                return;
            }
        }
        let verdict = self.negotiator.check(&options, self.failure_count > 0);
        let good = verdict == Verdict::Ack;
        let reply = match verdict {
            Verdict::Ack => {
                self.failure_count = self.config.max_failure;
                CpPacket {
                    code: CONFIGURE_ACK,
                    id: packet.id,
                    data: packet.data.clone(),
                }
            }
            Verdict::Nak(opts) => {
                self.failure_count = self.failure_count.saturating_sub(1);
                CpPacket {
                    code: CONFIGURE_NAK,
                    id: packet.id,
                    data: RawOption::encode_list(&opts),
                }
            }
            Verdict::Reject(opts) => CpPacket {
                code: CONFIGURE_REJECT,
                id: packet.id,
                data: RawOption::encode_list(&opts),
            },
        };
        match (self.state, good) {
            (State::Stopped, _) => {
                self.irc_configure();
                self.scr(now);
                self.send(reply);
                self.state = if good { State::AckSent } else { State::ReqSent };
            }
            (State::ReqSent, _) => {
                self.send(reply);
                self.state = if good { State::AckSent } else { State::ReqSent };
            }
            (State::AckRcvd, true) => {
                self.send(reply);
                self.tlu();
            }
            (State::AckRcvd, false) => self.send(reply),
            (State::AckSent, _) => {
                self.send(reply);
                self.state = if good { State::AckSent } else { State::ReqSent };
            }
            (State::Opened, _) => {
                self.tld();
                self.restart_negotiation();
                self.scr(now);
                self.send(reply);
                self.state = if good { State::AckSent } else { State::ReqSent };
            }
            _ => {}
        }
    }

    fn rca(&mut self, packet: &CpPacket, now: Instant) {
        if !self.config_reply_applies(packet.id) {
            return;
        }
        if packet.id != self.req_id || packet.data != self.last_request {
            return; // not an answer to our outstanding request
        }
        match self.state {
            State::ReqSent => {
                self.ack_received();
                self.irc_configure();
                self.state = State::AckRcvd;
            }
            State::AckRcvd => {
                // Crossed connection.
                self.scr(now);
                self.state = State::ReqSent;
            }
            State::AckSent => {
                self.ack_received();
                self.irc_configure();
                self.tlu();
            }
            State::Opened => {
                self.tld();
                self.restart_negotiation();
                self.scr(now);
                self.state = State::ReqSent;
            }
            _ => {}
        }
    }

    /// RCA/RCN (RFC 1661 §4.1): in Closed or Stopped answer Terminate-Ack;
    /// the event only applies while a negotiation is open.
    fn config_reply_applies(&mut self, id: u8) -> bool {
        match self.state {
            State::Closed | State::Stopped => {
                self.send(CpPacket {
                    code: TERMINATE_ACK,
                    id,
                    data: vec![],
                });
                false
            }
            State::ReqSent | State::AckRcvd | State::AckSent | State::Opened => true,
            _ => false,
        }
    }

    fn ack_received(&mut self) {
        if let Ok(opts) = RawOption::parse_list(&self.last_request) {
            self.negotiator.acked(&opts);
        }
    }

    fn rcn(&mut self, packet: &CpPacket, now: Instant) {
        if !self.config_reply_applies(packet.id) {
            return;
        }
        if packet.id != self.req_id {
            return;
        }
        let Ok(options) = RawOption::parse_list(&packet.data) else {
            return;
        };
        if packet.code == CONFIGURE_NAK {
            self.negotiator.naked(&options);
        } else {
            self.negotiator.rejected(&options);
        }
        match self.state {
            State::ReqSent => {
                self.irc_configure();
                self.scr(now);
            }
            State::AckRcvd => {
                self.scr(now);
                self.state = State::ReqSent;
            }
            State::AckSent => {
                self.irc_configure();
                self.scr(now);
            }
            State::Opened => {
                self.tld();
                self.restart_negotiation();
                self.scr(now);
                self.state = State::ReqSent;
            }
            _ => {}
        }
    }

    fn rtr(&mut self, packet: &CpPacket, now: Instant) {
        let ack = CpPacket {
            code: TERMINATE_ACK,
            id: packet.id,
            data: vec![],
        };
        match self.state {
            State::Closed | State::Stopped | State::Closing | State::Stopping => self.send(ack),
            State::ReqSent | State::AckRcvd | State::AckSent => {
                self.send(ack);
                self.state = State::ReqSent;
            }
            State::Opened => {
                self.tld();
                // zrc: wait one restart period for the peer to see the ack.
                self.restart_count = 0;
                self.timer = Some(now + self.config.restart);
                self.send(ack);
                self.pending_finish = Some(FinishReason::PeerTerminated);
                self.state = State::Stopping;
            }
            _ => {}
        }
    }

    fn rta(&mut self, packet: &CpPacket, now: Instant) {
        match self.state {
            State::Closing if packet.id == self.term_id => {
                self.finish(self.pending_finish.clone().unwrap_or(FinishReason::Closed));
                self.state = State::Closed;
            }
            State::Stopping if packet.id == self.term_id => {
                self.finish(self.pending_finish.clone().unwrap_or(FinishReason::Closed));
                self.state = State::Stopped;
            }
            State::AckRcvd => self.state = State::ReqSent,
            State::Opened => {
                self.tld();
                self.restart_negotiation();
                self.scr(now);
                self.state = State::ReqSent;
            }
            _ => {}
        }
    }

    fn rxj_plus(&mut self) {
        if self.state == State::AckRcvd {
            self.state = State::ReqSent;
        }
    }

    fn rxj_minus(&mut self, now: Instant) {
        match self.state {
            State::Closed | State::Stopped => self.finish(FinishReason::Rejected),
            State::Closing => {
                self.finish(FinishReason::Rejected);
                self.state = State::Closed;
            }
            State::Stopping | State::ReqSent | State::AckRcvd | State::AckSent => {
                self.finish(FinishReason::Rejected);
                self.state = State::Stopped;
            }
            State::Opened => {
                self.tld();
                self.irc_terminate();
                self.pending_finish = Some(FinishReason::Rejected);
                self.str(now);
                self.state = State::Stopping;
            }
            _ => {}
        }
    }

    fn scj(&mut self, bytes: &[u8]) {
        // Code-Reject carries the rejected packet, kept within a small frame.
        let data = bytes[..bytes.len().min(1400)].to_vec();
        let id = self.fresh_id();
        self.send(CpPacket {
            code: CODE_REJECT,
            id,
            data,
        });
    }

    // ----- actions -----

    fn fresh_id(&mut self) -> u8 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        id
    }

    fn send(&mut self, packet: CpPacket) {
        self.transmit.push_back(packet.encode());
    }

    fn irc_configure(&mut self) {
        self.restart_count = self.config.max_configure;
    }

    fn irc_terminate(&mut self) {
        self.restart_count = self.config.max_terminate;
    }

    fn restart_negotiation(&mut self) {
        self.requests_sent = 0;
        self.requests_received = 0;
        self.irc_configure();
    }

    fn scr(&mut self, now: Instant) {
        self.requests_sent += 1;
        if self.requests_sent > self.config.max_requests {
            self.give_up = Some(FinishReason::NotConverging);
            return;
        }
        let options = self.negotiator.request();
        self.last_request = RawOption::encode_list(&options);
        self.req_id = self.fresh_id();
        let data = self.last_request.clone();
        self.send(CpPacket {
            code: CONFIGURE_REQUEST,
            id: self.req_id,
            data,
        });
        self.restart_count = self.restart_count.saturating_sub(1);
        self.timer = Some(now + self.config.restart);
    }

    fn str(&mut self, now: Instant) {
        self.term_id = self.fresh_id();
        self.send(CpPacket {
            code: TERMINATE_REQUEST,
            id: self.term_id,
            data: vec![],
        });
        self.restart_count = self.restart_count.saturating_sub(1);
        self.timer = Some(now + self.config.restart);
    }

    fn tlu(&mut self) {
        self.state = State::Opened;
        self.timer = None;
        self.requests_sent = 0;
        self.requests_received = 0;
        self.events.push_back(FsmEvent::Up);
    }

    fn tld(&mut self) {
        self.events.push_back(FsmEvent::Down);
    }

    fn finish(&mut self, reason: FinishReason) {
        self.timer = None;
        self.pending_finish = None;
        self.events.push_back(FsmEvent::Finished(reason));
    }

    /// Applies a pending give-up (non-convergence, fatal negotiator verdict) and
    /// normalises the timer for the state reached.
    fn settle(&mut self) {
        let active = !matches!(
            self.state,
            State::Initial | State::Starting | State::Closed | State::Stopped
        );
        if self.give_up.is_none()
            && active
            && let Some(reason) = self.negotiator.fatal()
        {
            self.give_up = Some(FinishReason::Fatal(reason));
        }
        if let Some(reason) = self.give_up.take() {
            if self.state == State::Opened {
                self.tld();
            }
            self.finish(reason);
            self.state = State::Stopped;
        }
        if matches!(
            self.state,
            State::Initial | State::Starting | State::Closed | State::Stopped | State::Opened
        ) {
            self.timer = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy policy: requests option 1 = [v]; accepts anything, takes Nak'd values.
    #[derive(Debug, Default)]
    struct Toy {
        value: u8,
        acked: bool,
    }

    impl Negotiator for Toy {
        fn request(&mut self) -> Vec<RawOption> {
            vec![RawOption::new(1, [self.value])]
        }
        fn acked(&mut self, _: &[RawOption]) {
            self.acked = true;
        }
        fn naked(&mut self, options: &[RawOption]) {
            if let Some(v) = options.first().and_then(|o| o.data.first()) {
                self.value = *v;
            }
        }
        fn rejected(&mut self, _: &[RawOption]) {}
        fn check(&mut self, options: &[RawOption], may_nak: bool) -> Verdict {
            // Insist on even values.
            match options.first().and_then(|o| o.data.first()) {
                Some(v) if v % 2 == 1 && may_nak => Verdict::Nak(vec![RawOption::new(1, [v + 1])]),
                Some(v) if v % 2 == 1 => Verdict::Reject(options.to_vec()),
                _ => Verdict::Ack,
            }
        }
    }

    fn events<N: Negotiator>(f: &mut Fsm<N>) -> Vec<FsmEvent> {
        std::iter::from_fn(|| f.poll_event()).collect()
    }

    /// Exchanges packets instantly until both are quiet.
    fn exchange(a: &mut Fsm<Toy>, b: &mut Fsm<Toy>, now: Instant) {
        for _ in 0..100 {
            let mut busy = false;
            while let Some(p) = a.poll_transmit() {
                busy = true;
                b.handle_input(&p, now);
            }
            while let Some(p) = b.poll_transmit() {
                busy = true;
                a.handle_input(&p, now);
            }
            if !busy {
                return;
            }
        }
        panic!("no quiescence");
    }

    #[test]
    fn two_automata_negotiate_with_a_nak_then_close_politely() {
        let t0 = Instant::now();
        let mut a = Fsm::new(
            Toy {
                value: 3,
                acked: false,
            },
            FsmConfig::default(),
        );
        let mut b = Fsm::new(
            Toy {
                value: 4,
                acked: false,
            },
            FsmConfig::default(),
        );
        for f in [&mut a, &mut b] {
            f.open(t0);
            f.up(t0);
        }
        exchange(&mut a, &mut b, t0);
        assert_eq!((a.state(), b.state()), (State::Opened, State::Opened));
        assert_eq!(a.negotiator().value, 4, "a took b's Nak");
        assert!(a.negotiator().acked && b.negotiator().acked);
        assert!(events(&mut a).contains(&FsmEvent::Up));
        assert!(events(&mut b).contains(&FsmEvent::Up));
        assert_eq!(a.poll_timeout(), None, "no timer in Opened");

        a.close(t0);
        exchange(&mut a, &mut b, t0);
        assert_eq!(a.state(), State::Closed);
        assert_eq!(
            events(&mut a),
            vec![FsmEvent::Down, FsmEvent::Finished(FinishReason::Closed)]
        );
        // b acked the Terminate-Request and waits one restart period (zrc).
        assert_eq!(b.state(), State::Stopping);
        assert_eq!(events(&mut b), vec![FsmEvent::Down]);
        let t = b.poll_timeout().expect("zrc timer");
        assert_eq!(t - t0, Duration::from_secs(3));
        b.handle_timeout(t);
        assert_eq!(b.state(), State::Stopped);
        assert_eq!(
            events(&mut b),
            vec![FsmEvent::Finished(FinishReason::PeerTerminated)]
        );
    }

    #[test]
    fn close_towards_a_silent_peer_ends_after_max_terminate() {
        let t0 = Instant::now();
        let mut a = Fsm::new(
            Toy {
                value: 2,
                acked: false,
            },
            FsmConfig::default(),
        );
        a.open(t0);
        a.up(t0);
        a.close(t0);
        let mut terminates = 0;
        let mut now = t0;
        loop {
            while let Some(p) = a.poll_transmit() {
                if p[0] == TERMINATE_REQUEST {
                    terminates += 1;
                }
            }
            let Some(t) = a.poll_timeout() else { break };
            now = t;
            a.handle_timeout(now);
        }
        assert_eq!(terminates, 2);
        assert_eq!(now - t0, Duration::from_secs(6));
        assert_eq!(a.state(), State::Closed);
        assert!(events(&mut a).contains(&FsmEvent::Finished(FinishReason::Closed)));
    }

    #[test]
    fn max_failure_turns_naks_into_rejects() {
        let t0 = Instant::now();
        let cfg = FsmConfig {
            max_failure: 2,
            ..FsmConfig::default()
        };
        let mut a = Fsm::new(
            Toy {
                value: 2,
                acked: false,
            },
            cfg,
        );
        a.open(t0);
        a.up(t0);
        let _ = a.poll_transmit();
        let odd = CpPacket {
            code: CONFIGURE_REQUEST,
            id: 50,
            data: RawOption::encode_list(&[RawOption::new(1, [7])]),
        };
        let mut codes = Vec::new();
        for _ in 0..4 {
            a.handle_input(&odd.encode(), t0);
            while let Some(p) = a.poll_transmit() {
                codes.push(p[0]);
            }
        }
        assert_eq!(
            codes,
            vec![
                CONFIGURE_NAK,
                CONFIGURE_NAK,
                CONFIGURE_REJECT,
                CONFIGURE_REJECT
            ]
        );
    }

    #[test]
    fn stale_or_altered_acks_are_ignored_and_unknown_codes_rejected() {
        let t0 = Instant::now();
        let mut a = Fsm::new(
            Toy {
                value: 2,
                acked: false,
            },
            FsmConfig::default(),
        );
        a.open(t0);
        a.up(t0);
        let req = CpPacket::decode(&a.poll_transmit().unwrap()).unwrap();
        // Wrong id, then altered options: both ignored.
        a.handle_input(
            &CpPacket {
                code: CONFIGURE_ACK,
                id: req.id.wrapping_add(1),
                data: req.data.clone(),
            }
            .encode(),
            t0,
        );
        a.handle_input(
            &CpPacket {
                code: CONFIGURE_ACK,
                id: req.id,
                data: vec![1, 3, 9],
            }
            .encode(),
            t0,
        );
        assert_eq!(a.state(), State::ReqSent);
        a.handle_input(
            &CpPacket {
                code: CONFIGURE_ACK,
                id: req.id,
                data: req.data,
            }
            .encode(),
            t0,
        );
        assert_eq!(a.state(), State::AckRcvd);
        a.handle_input(&[99, 1, 0, 5, 0xAB], t0);
        let cr = CpPacket::decode(&a.poll_transmit().unwrap()).unwrap();
        assert_eq!((cr.code, cr.data), (CODE_REJECT, vec![99, 1, 0, 5, 0xAB]));
    }

    #[test]
    fn a_peer_that_always_naks_ends_as_not_converging() {
        let t0 = Instant::now();
        let cfg = FsmConfig::default();
        let mut a = Fsm::new(
            Toy {
                value: 2,
                acked: false,
            },
            cfg,
        );
        a.open(t0);
        a.up(t0);
        let mut sent = 0;
        while let Some(p) = a.poll_transmit() {
            let req = CpPacket::decode(&p).unwrap();
            if req.code == CONFIGURE_REQUEST {
                sent += 1;
                let nak = CpPacket {
                    code: CONFIGURE_NAK,
                    id: req.id,
                    data: RawOption::encode_list(&[RawOption::new(1, [sent as u8])]),
                };
                a.handle_input(&nak.encode(), t0);
            }
        }
        assert_eq!(sent, cfg.max_requests);
        assert_eq!(a.state(), State::Stopped);
        assert!(events(&mut a).contains(&FsmEvent::Finished(FinishReason::NotConverging)));
    }
}
