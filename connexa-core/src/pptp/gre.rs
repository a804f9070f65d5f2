//! Enhanced GRE (RFC 2637 §4.1): the data channel of a PPTP call.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |C|R|K|S|s|Recur|A| Flags | Ver |         Protocol Type         |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |    Key (HW) Payload Length    |       Key (LW) Call ID        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                  Sequence Number (Optional)                   |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |               Acknowledgment Number (Optional)                |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! C, R, s and Recur must be zero, K must be one, the version is 1 and the protocol
//! type is `0x880B` (PPP). Decoding is strict and never panics: anything else is a
//! [`GreError`].
//!
//! [`GreSession`] keeps one call's sequence and acknowledgment numbers.
//!
//! [`parse_ipv4_gre`] additionally unwraps a raw IPv4 datagram as a raw
//! `IPPROTO_GRE` socket delivers it (IP header included), so the socket layer can
//! demultiplex by `(source address, call id)`.
//!
//! ```
//! use connexa_core::pptp::gre::GrePacket;
//!
//! let pkt = GrePacket { call_id: 7, seq: Some(1), ack: None, payload: b"\xff\x03\xc0\x21" };
//! let wire = pkt.encode().unwrap();
//! assert_eq!(GrePacket::decode(&wire).unwrap(), pkt);
//! ```

use std::net::Ipv4Addr;

/// The GRE protocol type of PPP (RFC 2637 §4.1).
pub const GRE_PROTOCOL_PPP: u16 = 0x880B;
/// The IP protocol number of GRE.
pub const IPPROTO_GRE: u8 = 47;

const FLAG_C: u8 = 0x80;
const FLAG_R: u8 = 0x40;
const FLAG_K: u8 = 0x20;
const FLAG_S: u8 = 0x10;
const FLAG_SSR: u8 = 0x08;
const RECUR_MASK: u8 = 0x07;
const FLAG_A: u8 = 0x80;
const FLAGS_MASK: u8 = 0x78;
const VERSION_MASK: u8 = 0x07;

/// Why bytes are not a valid Enhanced GRE packet (or IPv4/GRE datagram).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GreError {
    /// Fewer bytes than the header (or the declared lengths) need.
    #[error("truncated GRE packet")]
    Truncated,
    /// The version field is not 1 (Enhanced GRE).
    #[error("GRE version {0}, expected 1")]
    BadVersion(u8),
    /// The protocol type is not `0x880B`.
    #[error("GRE protocol type {0:#06x}, expected 0x880b")]
    BadProtocol(u16),
    /// C, R, s, Recur or the reserved flags are set, or K is clear.
    #[error("GRE flags not allowed in PPTP: {0:#06x}")]
    BadFlags(u16),
    /// The payload length in the key is larger than the bytes present.
    #[error("GRE payload length {declared} exceeds the {available} bytes present")]
    BadLength {
        /// The length the header declares.
        declared: usize,
        /// The bytes after the header.
        available: usize,
    },
    /// The payload does not fit the 16-bit payload length field.
    #[error("GRE payload too long")]
    PayloadTooLong,
    /// Not an IPv4 header, or one that is malformed.
    #[error("bad IPv4 header: {0}")]
    BadIp(&'static str),
    /// The IPv4 datagram does not carry GRE.
    #[error("IP protocol {0}, expected 47 (GRE)")]
    NotGre(u8),
}

/// An Enhanced GRE packet as PPTP uses it. The payload borrows from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrePacket<'a> {
    /// The peer's call id (the receiver's call id, in the key's low half).
    pub call_id: u16,
    /// Sequence number, present when the packet carries a payload.
    pub seq: Option<u32>,
    /// Acknowledgment number: the highest sequence number received.
    pub ack: Option<u32>,
    /// The PPP frame (may be empty for an ack-only packet).
    pub payload: &'a [u8],
}

impl<'a> GrePacket<'a> {
    /// The header length for this packet's optional fields.
    pub fn header_len(&self) -> usize {
        8 + if self.seq.is_some() { 4 } else { 0 } + if self.ack.is_some() { 4 } else { 0 }
    }

    /// Decodes one packet. Bytes after the declared payload length are ignored
    /// (link-layer padding); fewer bytes than declared are an error.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, GreError> {
        let hdr: &[u8; 8] = bytes
            .get(..8)
            .and_then(|h| h.try_into().ok())
            .ok_or(GreError::Truncated)?;
        let (f0, f1) = (hdr[0], hdr[1]);
        let version = f1 & VERSION_MASK;
        if version != 1 {
            return Err(GreError::BadVersion(version));
        }
        if f0 & (FLAG_C | FLAG_R | FLAG_SSR | RECUR_MASK) != 0
            || f0 & FLAG_K == 0
            || f1 & FLAGS_MASK != 0
        {
            return Err(GreError::BadFlags(u16::from_be_bytes([f0, f1])));
        }
        let protocol = u16::from_be_bytes([hdr[2], hdr[3]]);
        if protocol != GRE_PROTOCOL_PPP {
            return Err(GreError::BadProtocol(protocol));
        }
        let payload_len = usize::from(u16::from_be_bytes([hdr[4], hdr[5]]));
        let call_id = u16::from_be_bytes([hdr[6], hdr[7]]);
        let mut rest = &bytes[8..];
        let take_u32 = |rest: &mut &'a [u8]| -> Result<u32, GreError> {
            let (v, r) = rest.split_first_chunk::<4>().ok_or(GreError::Truncated)?;
            *rest = r;
            Ok(u32::from_be_bytes(*v))
        };
        let seq = if f0 & FLAG_S != 0 {
            Some(take_u32(&mut rest)?)
        } else {
            None
        };
        let ack = if f1 & FLAG_A != 0 {
            Some(take_u32(&mut rest)?)
        } else {
            None
        };
        let payload = rest.get(..payload_len).ok_or(GreError::BadLength {
            declared: payload_len,
            available: rest.len(),
        })?;
        Ok(GrePacket {
            call_id,
            seq,
            ack,
            payload,
        })
    }

    /// Appends the encoded packet to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), GreError> {
        let len = u16::try_from(self.payload.len()).map_err(|_| GreError::PayloadTooLong)?;
        let f0 = FLAG_K | if self.seq.is_some() { FLAG_S } else { 0 };
        let f1 = 1 | if self.ack.is_some() { FLAG_A } else { 0 };
        out.reserve(self.header_len() + self.payload.len());
        out.extend_from_slice(&[f0, f1]);
        out.extend_from_slice(&GRE_PROTOCOL_PPP.to_be_bytes());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&self.call_id.to_be_bytes());
        if let Some(seq) = self.seq {
            out.extend_from_slice(&seq.to_be_bytes());
        }
        if let Some(ack) = self.ack {
            out.extend_from_slice(&ack.to_be_bytes());
        }
        out.extend_from_slice(self.payload);
        Ok(())
    }

    /// Encodes the packet into a new buffer (error only for payloads over 65,535 bytes).
    pub fn encode(&self) -> Result<Vec<u8>, GreError> {
        let mut out = Vec::new();
        self.encode_into(&mut out)?;
        Ok(out)
    }
}

/// A GRE packet unwrapped from a raw IPv4 datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Gre<'a> {
    /// The IPv4 source address (the PPTP server for inbound packets).
    pub source: Ipv4Addr,
    /// The IPv4 destination address.
    pub destination: Ipv4Addr,
    /// The GRE packet.
    pub gre: GrePacket<'a>,
}

impl Ipv4Gre<'_> {
    /// The demultiplexing key of the socket layer: `(peer address, call id)`.
    pub fn demux_key(&self) -> (Ipv4Addr, u16) {
        (self.source, self.gre.call_id)
    }
}

/// Parses a raw IPv4 datagram (as read from a raw `IPPROTO_GRE` socket: IP header
/// with options, then GRE). Fragments are refused (the kernel reassembles before
/// delivering to raw sockets, so one here is malformed).
pub fn parse_ipv4_gre(datagram: &[u8]) -> Result<Ipv4Gre<'_>, GreError> {
    let first = *datagram.first().ok_or(GreError::Truncated)?;
    if first >> 4 != 4 {
        return Err(GreError::BadIp("not IPv4"));
    }
    let ihl = usize::from(first & 0x0F) * 4;
    if ihl < 20 {
        return Err(GreError::BadIp("header length below 20"));
    }
    let header = datagram.get(..ihl).ok_or(GreError::Truncated)?;
    let total = usize::from(u16::from_be_bytes([header[2], header[3]]));
    // Linux raw sockets deliver the real total length; accept a datagram at
    // least as long as declared (trailing bytes ignored).
    if total < ihl {
        return Err(GreError::BadIp("total length below header length"));
    }
    let body = datagram.get(ihl..total).ok_or(GreError::Truncated)?;
    let frag = u16::from_be_bytes([header[6], header[7]]);
    if frag & 0x3FFF != 0 {
        return Err(GreError::BadIp("fragment"));
    }
    if header[9] != IPPROTO_GRE {
        return Err(GreError::NotGre(header[9]));
    }
    let source = Ipv4Addr::new(header[12], header[13], header[14], header[15]);
    let destination = Ipv4Addr::new(header[16], header[17], header[18], header[19]);
    let gre = GrePacket::decode(body)?;
    Ok(Ipv4Gre {
        source,
        destination,
        gre,
    })
}

/// What [`GreSession::accept`] made of an inbound packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted<'a> {
    /// A new in-sequence (or later) payload for PPP.
    Payload(&'a [u8]),
    /// An acknowledgment without payload (nothing for PPP).
    AckOnly,
    /// A duplicate or older sequence number: dropped (RFC 2637 §4.3 lets the
    /// receiver discard out-of-order packets).
    Stale,
    /// Not for this call (another call id).
    WrongCall,
}

/// The sequence/acknowledgment bookkeeping of one call's GRE data channel,
/// sans-IO: numbering outbound payloads, piggy-backing acknowledgments, dropping
/// stale packets, and sending an ack-only packet when nothing else carries the
/// acknowledgment within `ack_delay`.
#[derive(Debug, Clone)]
pub struct GreSession {
    our_call_id: u16,
    peer_call_id: u16,
    next_seq: u32,
    highest_rx: Option<u32>,
    acked_rx: Option<u32>,
    ack_deadline: Option<std::time::Instant>,
    ack_delay: std::time::Duration,
}

impl GreSession {
    /// A session for a call: `our_call_id` is what the peer puts in the key of
    /// packets to us; `peer_call_id` goes into the key of packets we send.
    pub fn new(our_call_id: u16, peer_call_id: u16, ack_delay: std::time::Duration) -> Self {
        GreSession {
            our_call_id,
            peer_call_id,
            next_seq: 0,
            highest_rx: None,
            acked_rx: None,
            ack_deadline: None,
            ack_delay,
        }
    }

    fn pending_ack(&mut self) -> Option<u32> {
        if self.highest_rx != self.acked_rx {
            self.acked_rx = self.highest_rx;
            self.ack_deadline = None;
            self.highest_rx
        } else {
            None
        }
    }

    /// Appends the GRE packet carrying `payload` (a PPP frame) to `out`, with the
    /// next sequence number and any pending acknowledgment.
    pub fn encode(&mut self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), GreError> {
        let ack = self.pending_ack();
        let packet = GrePacket {
            call_id: self.peer_call_id,
            seq: Some(self.next_seq),
            ack,
            payload,
        };
        packet.encode_into(out)?;
        self.next_seq = self.next_seq.wrapping_add(1);
        Ok(())
    }

    /// Takes an inbound packet: returns its payload if it is new.
    pub fn accept<'a>(&mut self, packet: &GrePacket<'a>, now: std::time::Instant) -> Accepted<'a> {
        if packet.call_id != self.our_call_id {
            return Accepted::WrongCall;
        }
        let Some(seq) = packet.seq else {
            return Accepted::AckOnly;
        };
        if let Some(h) = self.highest_rx
            && (seq.wrapping_sub(h) as i32) <= 0
        {
            return Accepted::Stale;
        }
        self.highest_rx = Some(seq);
        if self.ack_deadline.is_none() {
            self.ack_deadline = Some(now + self.ack_delay);
        }
        if packet.payload.is_empty() {
            Accepted::AckOnly
        } else {
            Accepted::Payload(packet.payload)
        }
    }

    /// When an ack-only packet may be due ([`GreSession::poll_ack_only`]).
    pub fn poll_timeout(&self) -> Option<std::time::Instant> {
        self.ack_deadline
    }

    /// An ack-only packet, if an acknowledgment is pending past `ack_delay`.
    pub fn poll_ack_only(&mut self, now: std::time::Instant) -> Option<Vec<u8>> {
        if self.ack_deadline.is_none_or(|d| now < d) {
            return None;
        }
        let ack = self.pending_ack()?;
        GrePacket {
            call_id: self.peer_call_id,
            seq: None,
            ack: Some(ack),
            payload: &[],
        }
        .encode()
        .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_bytes_decode() {
        // K + S + A, version 1, PPP, len 4, call 0x1234, seq 5, ack 3.
        let wire = [
            0x30, 0x81, 0x88, 0x0B, 0x00, 0x04, 0x12, 0x34, 0, 0, 0, 5, 0, 0, 0, 3, 0xFF, 0x03,
            0xC0, 0x21,
        ];
        let p = GrePacket::decode(&wire).unwrap();
        assert_eq!(p.call_id, 0x1234);
        assert_eq!(p.seq, Some(5));
        assert_eq!(p.ack, Some(3));
        assert_eq!(p.payload, &[0xFF, 0x03, 0xC0, 0x21]);
        assert_eq!(p.encode().unwrap(), wire);
    }

    #[test]
    fn ack_only_packet() {
        let wire = [0x20, 0x81, 0x88, 0x0B, 0, 0, 0, 9, 0, 0, 0, 42];
        let p = GrePacket::decode(&wire).unwrap();
        assert_eq!((p.seq, p.ack, p.payload.len()), (None, Some(42), 0));
    }

    #[test]
    fn strictness() {
        let good = GrePacket {
            call_id: 1,
            seq: Some(1),
            ack: None,
            payload: b"ab",
        }
        .encode()
        .unwrap();
        let mut v0 = good.clone();
        v0[1] = 0x00;
        assert_eq!(GrePacket::decode(&v0), Err(GreError::BadVersion(0)));
        let mut nok = good.clone();
        nok[0] &= !FLAG_K;
        assert!(matches!(
            GrePacket::decode(&nok),
            Err(GreError::BadFlags(_))
        ));
        let mut csum = good.clone();
        csum[0] |= FLAG_C;
        assert!(matches!(
            GrePacket::decode(&csum),
            Err(GreError::BadFlags(_))
        ));
        let mut proto = good.clone();
        proto[3] = 0x00;
        assert_eq!(
            GrePacket::decode(&proto),
            Err(GreError::BadProtocol(0x8800))
        );
        let short = &good[..good.len() - 1];
        assert!(matches!(
            GrePacket::decode(short),
            Err(GreError::BadLength { declared: 2, .. })
        ));
        assert_eq!(GrePacket::decode(&good[..10]), Err(GreError::Truncated));
    }

    #[test]
    fn oversize_payload_is_an_error() {
        let big = vec![0u8; 70_000];
        let p = GrePacket {
            call_id: 1,
            seq: None,
            ack: None,
            payload: &big,
        };
        assert_eq!(
            p.encode_into(&mut Vec::new()),
            Err(GreError::PayloadTooLong)
        );
    }

    fn ipv4(src: [u8; 4], proto: u8, options: usize, body: &[u8]) -> Vec<u8> {
        let ihl = 20 + options;
        let total = (ihl + body.len()) as u16;
        let mut v = vec![0x40 | (ihl / 4) as u8, 0];
        v.extend_from_slice(&total.to_be_bytes());
        v.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0]);
        v.extend_from_slice(&src);
        v.extend_from_slice(&[127, 0, 0, 1]);
        v.extend(std::iter::repeat_n(1u8, options));
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn ipv4_unwrap_with_options() {
        let gre = GrePacket {
            call_id: 99,
            seq: Some(7),
            ack: Some(6),
            payload: b"hello",
        }
        .encode()
        .unwrap();
        let d = ipv4([127, 0, 0, 2], 47, 8, &gre);
        let parsed = parse_ipv4_gre(&d).unwrap();
        assert_eq!(parsed.demux_key(), (Ipv4Addr::new(127, 0, 0, 2), 99));
        assert_eq!(parsed.gre.payload, b"hello");
        assert_eq!(
            parse_ipv4_gre(&ipv4([1, 2, 3, 4], 6, 0, &gre)),
            Err(GreError::NotGre(6))
        );
        let mut frag = d.clone();
        frag[6] = 0x20; // MF
        assert_eq!(parse_ipv4_gre(&frag), Err(GreError::BadIp("fragment")));
        assert_eq!(parse_ipv4_gre(&d[..d.len() - 1]), Err(GreError::Truncated));
    }

    #[test]
    fn session_numbers_acks_and_drops_stale() {
        use std::time::{Duration, Instant};
        let t0 = Instant::now();
        let mut a = GreSession::new(10, 20, Duration::from_millis(100));
        let mut out = Vec::new();
        a.encode(b"one", &mut out).unwrap();
        let p = GrePacket::decode(&out).unwrap();
        assert_eq!((p.call_id, p.seq, p.ack), (20, Some(0), None));

        // Inbound seq 5 for us: payload; a duplicate and an older one are stale.
        let inbound = |seq| GrePacket {
            call_id: 10,
            seq: Some(seq),
            ack: None,
            payload: b"x",
        };
        assert_eq!(a.accept(&inbound(5), t0), Accepted::Payload(b"x"));
        assert_eq!(a.accept(&inbound(5), t0), Accepted::Stale);
        assert_eq!(a.accept(&inbound(4), t0), Accepted::Stale);
        assert_eq!(
            a.accept(
                &GrePacket {
                    call_id: 11,
                    ..inbound(6)
                },
                t0
            ),
            Accepted::WrongCall
        );
        // The ack rides on the next payload ...
        out.clear();
        a.encode(b"two", &mut out).unwrap();
        let p = GrePacket::decode(&out).unwrap();
        assert_eq!((p.seq, p.ack), (Some(1), Some(5)));
        assert_eq!(
            a.poll_ack_only(t0 + Duration::from_secs(1)),
            None,
            "already acked"
        );
        // ... or goes alone after the delay.
        assert_eq!(a.accept(&inbound(6), t0), Accepted::Payload(b"x"));
        let due = a.poll_timeout().unwrap();
        assert_eq!(due - t0, Duration::from_millis(100));
        assert_eq!(a.poll_ack_only(t0), None, "not yet");
        let ack = a.poll_ack_only(due).unwrap();
        let p = GrePacket::decode(&ack).unwrap();
        assert_eq!((p.seq, p.ack, p.payload.len()), (None, Some(6), 0));
        // Sequence numbers wrap around.
        let mut b = GreSession::new(1, 2, Duration::from_millis(1));
        let w = |seq| GrePacket {
            call_id: 1,
            seq: Some(seq),
            ack: None,
            payload: b"y",
        };
        assert_eq!(b.accept(&w(u32::MAX), t0), Accepted::Payload(b"y"));
        assert_eq!(b.accept(&w(0), t0), Accepted::Payload(b"y"));
        assert_eq!(b.accept(&w(u32::MAX), t0), Accepted::Stale);
    }

    proptest! {
        #[test]
        fn round_trip(call_id: u16, seq: Option<u32>, ack: Option<u32>,
                      payload in proptest::collection::vec(any::<u8>(), 0..1600)) {
            let p = GrePacket { call_id, seq, ack, payload: &payload };
            let wire = p.encode().unwrap();
            prop_assert_eq!(wire.len(), p.header_len() + payload.len());
            prop_assert_eq!(GrePacket::decode(&wire), Ok(p));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = GrePacket::decode(&bytes);
            let _ = parse_ipv4_gre(&bytes);
        }

        #[test]
        fn arbitrary_ipv4_headers_never_panic(first in 0x40u8..0x50, rest in proptest::collection::vec(any::<u8>(), 0..100)) {
            let mut b = vec![first];
            b.extend(rest);
            let _ = parse_ipv4_gre(&b);
        }
    }
}
