//! CCP (RFC 1962) with MPPE (RFC 3078) as the only algorithm: the option
//! policy ([`CcpNegotiator`]) for the generic [`Fsm`](super::fsm::Fsm).
//!
//! Both sides (client and server) use the same policy, which is what Linux
//! pppd does with `require-mppe-128`: request MPPE with exactly the S (128-bit)
//! and H (stateless) bits, Nak a peer request that offers anything else with
//! `S|H`, refuse MPPC compression (the C bit) and every other CCP option
//! (Deflate, BSD-Compress, Predictor, ...). A peer that insists on stateful
//! mode, on 40/56-bit keys, or rejects MPPE altogether makes the negotiation
//! fail with a [`CcpFailure`] that says so (stateful MPPE is not implemented).
//!
//! Reset-Request (code 14) is answered with Reset-Ack (code 15); in stateless
//! mode every packet already carries the flushed bit and a fresh key, so a
//! reset needs no other action.
//!
//! ```
//! use connexa_core::pptp::ppp::ccp::{CcpNegotiator, MPPE_128_STATELESS};
//! use connexa_core::pptp::ppp::fsm::{Fsm, FsmConfig, State};
//! use std::time::Instant;
//!
//! let now = Instant::now();
//! let mut a = Fsm::new(CcpNegotiator::new(), FsmConfig::default());
//! let mut b = Fsm::new(CcpNegotiator::new(), FsmConfig::default());
//! for f in [&mut a, &mut b] { f.open(now); f.up(now); }
//! for _ in 0..4 {
//!     while let Some(p) = a.poll_transmit() { b.handle_input(&p, now); }
//!     while let Some(p) = b.poll_transmit() { a.handle_input(&p, now); }
//! }
//! assert_eq!((a.state(), b.state()), (State::Opened, State::Opened));
//! assert_eq!(a.negotiator().negotiated(), Some(MPPE_128_STATELESS));
//! ```

use super::fsm::{Extended, Negotiator, Verdict};
use super::{CpPacket, RawOption};

/// CCP option type of MPPE/MPPC.
pub const OPT_MPPE: u8 = 18;
/// CCP Reset-Request.
pub const RESET_REQUEST: u8 = 14;
/// CCP Reset-Ack.
pub const RESET_ACK: u8 = 15;

/// Supported bit H: stateless mode.
pub const MPPE_H: u32 = 0x0100_0000;
/// Supported bit M: 56-bit keys.
pub const MPPE_M: u32 = 0x80;
/// Supported bit S: 128-bit keys.
pub const MPPE_S: u32 = 0x40;
/// Supported bit L: 40-bit keys.
pub const MPPE_L: u32 = 0x20;
/// Supported bit D: obsolete.
pub const MPPE_D: u32 = 0x10;
/// Supported bit C: MPPC compression.
pub const MPPE_C: u32 = 0x01;
/// What this policy asks for and accepts: 128-bit stateless MPPE.
pub const MPPE_128_STATELESS: u32 = MPPE_S | MPPE_H;

/// Why CCP could not agree on 128-bit stateless MPPE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CcpFailure {
    /// The peer rejected the MPPE option (it does not encrypt).
    MppeRejected,
    /// The peer wants stateful MPPE (the H bit cleared), which is not implemented.
    StatefulRequired,
    /// The peer offers only 40- or 56-bit keys.
    No128Bit,
}

impl std::fmt::Display for CcpFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CcpFailure::MppeRejected => "the peer rejected MPPE encryption",
            CcpFailure::StatefulRequired => {
                "the peer insists on stateful MPPE, which Connexa does not implement (stateless only)"
            }
            CcpFailure::No128Bit => "the peer offers only 40/56-bit MPPE; 128-bit is required",
        })
    }
}

fn mppe_bits(o: &RawOption) -> Option<u32> {
    match (o.kind, o.data.as_slice()) {
        (OPT_MPPE, &[a, b, c, d]) => Some(u32::from_be_bytes([a, b, c, d])),
        _ => None,
    }
}

fn mppe_option(bits: u32) -> RawOption {
    RawOption::new(OPT_MPPE, bits.to_be_bytes())
}

/// The CCP policy (see the module docs). The same for client and server.
#[derive(Debug, Clone, Default)]
pub struct CcpNegotiator {
    ours_acked: bool,
    peers_acked: bool,
    failure: Option<CcpFailure>,
    peer_wants_stateful: bool,
    resets_received: u64,
}

impl CcpNegotiator {
    /// A new policy.
    pub fn new() -> Self {
        Self::default()
    }

    /// The MPPE bits in force both ways once both requests were acked.
    pub fn negotiated(&self) -> Option<u32> {
        (self.ours_acked && self.peers_acked && self.failure.is_none())
            .then_some(MPPE_128_STATELESS)
    }

    /// Why the negotiation cannot succeed, if known.
    pub fn failure(&self) -> Option<CcpFailure> {
        self.failure
    }

    /// Reset-Requests received (each answered with a Reset-Ack).
    pub fn resets_received(&self) -> u64 {
        self.resets_received
    }
}

impl Negotiator for CcpNegotiator {
    fn request(&mut self) -> Vec<RawOption> {
        vec![mppe_option(MPPE_128_STATELESS)]
    }

    fn acked(&mut self, _options: &[RawOption]) {
        // The automaton only calls this for an Ack of exactly our request.
        self.ours_acked = true;
    }

    fn naked(&mut self, options: &[RawOption]) {
        // We ask for the only thing we do; a counter-offer is a failure.
        if let Some(bits) = options.iter().find_map(mppe_bits) {
            if bits & MPPE_H == 0 {
                self.failure = Some(CcpFailure::StatefulRequired);
            } else if bits & MPPE_S == 0 {
                self.failure = Some(CcpFailure::No128Bit);
            }
        }
    }

    fn rejected(&mut self, options: &[RawOption]) {
        if options.iter().any(|o| o.kind == OPT_MPPE) {
            self.failure = Some(CcpFailure::MppeRejected);
        }
    }

    fn check(&mut self, options: &[RawOption], may_nak: bool) -> Verdict {
        let mut rejects = Vec::new();
        let mut mppe = None;
        for o in options {
            match mppe_bits(o) {
                Some(bits) if mppe.is_none() => mppe = Some((o.clone(), bits)),
                _ => rejects.push(o.clone()),
            }
        }
        if !rejects.is_empty() {
            return Verdict::Reject(rejects);
        }
        match mppe {
            Some((_, bits)) if bits == MPPE_128_STATELESS => {
                self.peers_acked = true;
                self.peer_wants_stateful = false;
                Verdict::Ack
            }
            Some((raw, bits)) => {
                self.peers_acked = false;
                self.peer_wants_stateful = bits & MPPE_H == 0;
                if bits & MPPE_S == 0 && !may_nak {
                    self.failure = Some(CcpFailure::No128Bit);
                }
                if may_nak {
                    Verdict::Nak(vec![mppe_option(MPPE_128_STATELESS)])
                } else {
                    if self.peer_wants_stateful {
                        self.failure = Some(CcpFailure::StatefulRequired);
                    }
                    Verdict::Reject(vec![raw])
                }
            }
            // No MPPE at all: suggest it.
            None if may_nak => Verdict::Nak(vec![mppe_option(MPPE_128_STATELESS)]),
            None => {
                self.failure = Some(CcpFailure::MppeRejected);
                Verdict::Ack
            }
        }
    }

    fn extended(&mut self, packet: &CpPacket, _opened: bool) -> Extended {
        match packet.code {
            RESET_REQUEST => {
                self.resets_received += 1;
                Extended::Reply(Some(CpPacket {
                    code: RESET_ACK,
                    id: packet.id,
                    data: Vec::new(),
                }))
            }
            RESET_ACK => Extended::Reply(None),
            _ => Extended::Unknown,
        }
    }

    fn fatal(&self) -> Option<String> {
        self.failure.map(|f| f.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pptp::ppp::fsm::{
        CONFIGURE_NAK, CONFIGURE_REJECT, FinishReason, Fsm, FsmConfig, FsmEvent, State,
    };
    use std::time::Instant;

    fn req(opts: &[RawOption]) -> Vec<u8> {
        CpPacket {
            code: 1,
            id: 9,
            data: RawOption::encode_list(opts),
        }
        .encode()
    }

    fn opened() -> (Fsm<CcpNegotiator>, Instant) {
        let now = Instant::now();
        let mut f = Fsm::new(CcpNegotiator::new(), FsmConfig::default());
        f.open(now);
        f.up(now);
        (f, now)
    }

    #[test]
    fn pppd_style_request_is_acked_and_others_are_naked_or_rejected() {
        let mut n = CcpNegotiator::new();
        // What pppd with require-mppe-128 sends: 12 06 01 00 00 40.
        let pppd = RawOption::parse_list(&[18, 6, 1, 0, 0, 0x40]).unwrap();
        assert_eq!(n.check(&pppd, true), Verdict::Ack);
        // Several strengths offered: Nak down to S|H.
        assert_eq!(
            n.check(&[mppe_option(MPPE_H | MPPE_S | MPPE_L | MPPE_M)], true),
            Verdict::Nak(vec![mppe_option(MPPE_128_STATELESS)])
        );
        // MPPC compression offered: Nak without C.
        assert_eq!(
            n.check(&[mppe_option(MPPE_H | MPPE_S | MPPE_C)], true),
            Verdict::Nak(vec![mppe_option(MPPE_128_STATELESS)])
        );
        // Deflate (26) and BSD-Compress (21) are rejected.
        let deflate = RawOption::new(26, [0x78, 0]);
        let bsd = RawOption::new(21, [0x2f]);
        assert_eq!(
            n.check(
                &[
                    mppe_option(MPPE_128_STATELESS),
                    deflate.clone(),
                    bsd.clone()
                ],
                true
            ),
            Verdict::Reject(vec![deflate, bsd])
        );
    }

    #[test]
    fn reset_request_is_acked_with_its_id() {
        let (mut f, now) = opened();
        let _ = f.poll_transmit();
        f.handle_input(
            &CpPacket {
                code: RESET_REQUEST,
                id: 77,
                data: vec![],
            }
            .encode(),
            now,
        );
        let ack = CpPacket::decode(&f.poll_transmit().unwrap()).unwrap();
        assert_eq!((ack.code, ack.id), (RESET_ACK, 77));
        assert_eq!(f.negotiator().resets_received(), 1);
        // A Reset-Ack is taken silently.
        f.handle_input(
            &CpPacket {
                code: RESET_ACK,
                id: 1,
                data: vec![],
            }
            .encode(),
            now,
        );
        assert!(f.poll_transmit().is_none());
    }

    #[test]
    fn a_peer_insisting_on_stateful_mode_fails_clearly() {
        let (mut f, now) = opened();
        let ours = CpPacket::decode(&f.poll_transmit().unwrap()).unwrap();
        // The peer Naks our request asking for stateful 128-bit.
        f.handle_input(
            &CpPacket {
                code: CONFIGURE_NAK,
                id: ours.id,
                data: RawOption::encode_list(&[mppe_option(MPPE_S)]),
            }
            .encode(),
            now,
        );
        assert_eq!(f.negotiator().failure(), Some(CcpFailure::StatefulRequired));
        assert_eq!(f.state(), State::Stopped);
        let finished: Vec<_> = std::iter::from_fn(|| f.poll_event()).collect();
        assert!(finished.iter().any(|e| matches!(e, FsmEvent::Finished(FinishReason::Fatal(s)) if s.contains("stateful"))), "{finished:?}");
    }

    #[test]
    fn peer_requests_for_stateful_end_in_reject_then_failure() {
        let (mut f, now) = opened();
        let _ = f.poll_transmit();
        let mut codes = Vec::new();
        for _ in 0..8 {
            f.handle_input(&req(&[mppe_option(MPPE_S)]), now);
            while let Some(p) = f.poll_transmit() {
                codes.push(p[0]);
            }
        }
        assert_eq!(&codes[..5], &[CONFIGURE_NAK; 5]);
        assert_eq!(codes[5], CONFIGURE_REJECT);
        assert_eq!(f.negotiator().failure(), Some(CcpFailure::StatefulRequired));
    }

    #[test]
    fn rejected_mppe_fails() {
        let (mut f, now) = opened();
        let ours = CpPacket::decode(&f.poll_transmit().unwrap()).unwrap();
        f.handle_input(
            &CpPacket {
                code: CONFIGURE_REJECT,
                id: ours.id,
                data: ours.data,
            }
            .encode(),
            now,
        );
        assert_eq!(f.negotiator().failure(), Some(CcpFailure::MppeRejected));
        assert_eq!(f.negotiator().negotiated(), None);
    }
}
