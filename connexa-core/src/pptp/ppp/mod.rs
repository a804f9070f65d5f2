//! PPP over PPTP: frame header handling, the control-protocol packet format shared
//! by LCP/CCP/IPCP, the generic RFC 1661 option-negotiation automaton ([`fsm`]),
//! LCP ([`lcp`]), CCP with MPPE ([`ccp`]) and IPCP ([`ipcp`]).
//!
//! Over PPTP, a PPP frame travels in a GRE payload without HDLC flags, escaping or
//! FCS (RFC 2637 §4): `[FF 03] protocol information`. The address/control field
//! may be omitted once ACFC is negotiated, and the protocol field may be one octet
//! once PFC is negotiated; the decoder accepts every form.
//!
//! ```
//! use connexa_core::pptp::ppp::{PppFrame, PROTO_LCP};
//!
//! let wire = PppFrame { protocol: PROTO_LCP, information: &[9, 1, 0, 8, 0, 0, 0, 0] }.encode(false, false);
//! assert_eq!(&wire[..4], &[0xFF, 0x03, 0xC0, 0x21]);
//! assert_eq!(PppFrame::decode(&wire).unwrap().protocol, PROTO_LCP);
//! ```

pub mod ccp;
pub mod fsm;
pub mod ipcp;
pub mod lcp;

/// PPP protocol number of LCP.
pub const PROTO_LCP: u16 = 0xC021;
/// PPP protocol number of CHAP (MS-CHAPv2 uses it with algorithm 0x81).
pub const PROTO_CHAP: u16 = 0xC223;
/// PPP protocol number of PAP.
pub const PROTO_PAP: u16 = 0xC023;
/// PPP protocol number of IPCP.
pub const PROTO_IPCP: u16 = 0x8021;
/// PPP protocol number of CCP.
pub const PROTO_CCP: u16 = 0x80FD;
/// PPP protocol number of IPv4 datagrams.
pub const PROTO_IPV4: u16 = 0x0021;
/// PPP protocol number of compressed (MPPE-encrypted) datagrams.
pub const PROTO_COMPRESSED: u16 = 0x00FD;

/// Why bytes are not a PPP frame or control-protocol packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PppError {
    /// Fewer bytes than the format needs.
    #[error("truncated PPP data")]
    Truncated,
    /// The protocol field is not a valid PPP protocol number (low bit of the low
    /// octet must be 1, low bit of the high octet 0).
    #[error("invalid PPP protocol field")]
    BadProtocol,
    /// The address/control field is present but is not `FF 03`.
    #[error("bad PPP address/control field")]
    BadAddressControl,
    /// A length field is smaller than its header or larger than the data.
    #[error("bad length field")]
    BadLength,
    /// A value that the format forbids.
    #[error("malformed: {0}")]
    Malformed(&'static str),
}

/// One PPP frame: protocol number and information field (borrowed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PppFrame<'a> {
    /// The protocol number (e.g. [`PROTO_LCP`]).
    pub protocol: u16,
    /// The information field (for control protocols: one control packet; trailing
    /// padding may follow the packet).
    pub information: &'a [u8],
}

impl<'a> PppFrame<'a> {
    /// Decodes a frame with or without address/control, with a one- or two-octet
    /// protocol field.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, PppError> {
        let rest = match bytes {
            [0xFF, 0x03, rest @ ..] => rest,
            [0xFF, ..] => return Err(PppError::BadAddressControl),
            other => other,
        };
        let first = *rest.first().ok_or(PppError::Truncated)?;
        if first & 1 == 1 {
            // Compressed one-octet protocol field (PFC).
            return Ok(PppFrame {
                protocol: u16::from(first),
                information: &rest[1..],
            });
        }
        let second = *rest.get(1).ok_or(PppError::Truncated)?;
        if second & 1 == 0 {
            return Err(PppError::BadProtocol);
        }
        Ok(PppFrame {
            protocol: u16::from_be_bytes([first, second]),
            information: &rest[2..],
        })
    }

    /// Encodes the frame. `acfc` omits the address/control field, `pfc` sends a
    /// one-octet protocol field where possible. LCP frames are always sent in full
    /// form (RFC 1661 §6.5, §6.6), whatever the flags say.
    pub fn encode(&self, acfc: bool, pfc: bool) -> Vec<u8> {
        let lcp = self.protocol == PROTO_LCP;
        let mut out = Vec::with_capacity(4 + self.information.len());
        if !acfc || lcp {
            out.extend_from_slice(&[0xFF, 0x03]);
        }
        if pfc && !lcp && self.protocol < 0x100 {
            out.push(self.protocol as u8);
        } else {
            out.extend_from_slice(&self.protocol.to_be_bytes());
        }
        out.extend_from_slice(self.information);
        out
    }
}

/// A control-protocol packet (RFC 1661 §5): `code id length data`. Shared by LCP,
/// CCP, IPCP and (with a different meaning of `data`) CHAP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpPacket {
    /// The code (1 = Configure-Request, ...).
    pub code: u8,
    /// The identifier matching requests and replies.
    pub id: u8,
    /// Everything after the 4-octet header, up to the length field.
    pub data: Vec<u8>,
}

impl CpPacket {
    /// Decodes a packet; octets after the length field's end are padding and ignored.
    pub fn decode(bytes: &[u8]) -> Result<Self, PppError> {
        let hdr = bytes.get(..4).ok_or(PppError::Truncated)?;
        let len = usize::from(u16::from_be_bytes([hdr[2], hdr[3]]));
        if len < 4 {
            return Err(PppError::BadLength);
        }
        let data = bytes.get(4..len).ok_or(PppError::BadLength)?;
        Ok(CpPacket {
            code: hdr[0],
            id: hdr[1],
            data: data.to_vec(),
        })
    }

    /// Encodes the packet. Data is truncated at 65,531 octets (never reached by
    /// packets built in this crate).
    pub fn encode(&self) -> Vec<u8> {
        let data = &self.data[..self.data.len().min(usize::from(u16::MAX) - 4)];
        let len = (data.len() + 4) as u16;
        let mut out = Vec::with_capacity(usize::from(len));
        out.extend_from_slice(&[self.code, self.id]);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(data);
        out
    }
}

/// One configuration option in its raw form (`type length data`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawOption {
    /// The option type.
    pub kind: u8,
    /// The option data (without the type and length octets).
    pub data: Vec<u8>,
}

impl RawOption {
    /// A new option.
    pub fn new(kind: u8, data: impl Into<Vec<u8>>) -> Self {
        RawOption {
            kind,
            data: data.into(),
        }
    }

    /// Parses a whole option list; any option with length < 2 or overrunning the
    /// data makes the list malformed.
    pub fn parse_list(mut bytes: &[u8]) -> Result<Vec<RawOption>, PppError> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let [kind, len, ..] = *bytes else {
                return Err(PppError::Truncated);
            };
            let len = usize::from(len);
            if len < 2 {
                return Err(PppError::BadLength);
            }
            let data = bytes.get(2..len).ok_or(PppError::BadLength)?;
            out.push(RawOption {
                kind,
                data: data.to_vec(),
            });
            bytes = &bytes[len..];
        }
        Ok(out)
    }

    /// Encodes an option list (options with more than 253 data octets are cut).
    pub fn encode_list(options: &[RawOption]) -> Vec<u8> {
        let mut out = Vec::new();
        for o in options {
            let data = &o.data[..o.data.len().min(253)];
            out.push(o.kind);
            out.push((data.len() + 2) as u8);
            out.extend_from_slice(data);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn frame_forms() {
        let full = [0xFF, 0x03, 0x00, 0x21, 0x45];
        let acfc = [0x00, 0x21, 0x45];
        let pfc = [0xFF, 0x03, 0x21, 0x45];
        let both = [0x21, 0x45];
        for b in [&full[..], &acfc, &pfc, &both] {
            let f = PppFrame::decode(b).unwrap();
            assert_eq!((f.protocol, f.information), (PROTO_IPV4, &[0x45][..]));
        }
        let f = PppFrame {
            protocol: PROTO_IPV4,
            information: &[0x45],
        };
        assert_eq!(f.encode(true, true), both);
        assert_eq!(f.encode(false, false), full);
        // LCP is never compressed.
        let l = PppFrame {
            protocol: PROTO_LCP,
            information: &[],
        };
        assert_eq!(l.encode(true, true), [0xFF, 0x03, 0xC0, 0x21]);
        assert_eq!(
            PppFrame::decode(&[0xFF, 0x05, 0xC0, 0x21]),
            Err(PppError::BadAddressControl)
        );
        assert_eq!(PppFrame::decode(&[0xC0, 0x20]), Err(PppError::BadProtocol));
        assert_eq!(PppFrame::decode(&[0xC0]), Err(PppError::Truncated));
    }

    #[test]
    fn cp_packet_padding_and_lengths() {
        let p = CpPacket::decode(&[1, 7, 0, 6, 0xAA, 0xBB, 0, 0, 0]).unwrap();
        assert_eq!(
            p,
            CpPacket {
                code: 1,
                id: 7,
                data: vec![0xAA, 0xBB]
            }
        );
        assert_eq!(p.encode(), [1, 7, 0, 6, 0xAA, 0xBB]);
        assert_eq!(CpPacket::decode(&[1, 7, 0, 3]), Err(PppError::BadLength));
        assert_eq!(CpPacket::decode(&[1, 7, 0, 9, 0]), Err(PppError::BadLength));
    }

    proptest! {
        #[test]
        fn frame_and_cp_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = PppFrame::decode(&bytes);
            let _ = CpPacket::decode(&bytes);
            let _ = RawOption::parse_list(&bytes);
        }

        #[test]
        fn options_round_trip(opts in proptest::collection::vec((any::<u8>(), proptest::collection::vec(any::<u8>(), 0..20)), 0..8)) {
            let opts: Vec<RawOption> = opts.into_iter().map(|(k, d)| RawOption::new(k, d)).collect();
            prop_assert_eq!(RawOption::parse_list(&RawOption::encode_list(&opts)), Ok(opts));
        }
    }
}
