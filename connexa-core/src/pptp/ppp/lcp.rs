//! LCP (RFC 1661): the packet codec ([`LcpPacket`], [`LcpOption`]) and the option
//! policy ([`LcpNegotiator`]) that plugs into the generic [`Fsm`](super::fsm::Fsm).
//!
//! The client policy accepts the server's Auth-Protocol only if it is MS-CHAPv2
//! (`C223` algorithm `81`) and Naks anything else with MS-CHAPv2; it accepts MRU,
//! ACCM, Magic-Number, PFC and ACFC and rejects every other option. The server
//! policy ([`LcpRole::Server`]) asks the peer to authenticate with MS-CHAPv2.
//! Both detect a looped-back link through the magic number (RFC 1661 §6.4).
//!
//! ```
//! use connexa_core::pptp::ppp::lcp::{LcpOption, LcpPacket};
//!
//! let req = LcpPacket::ConfigureRequest { id: 1, options: vec![LcpOption::Mru(1400), LcpOption::MagicNumber(0x1234_5678)] };
//! let wire = req.encode();
//! assert_eq!(wire, [1, 1, 0, 14, 1, 4, 0x05, 0x78, 5, 6, 0x12, 0x34, 0x56, 0x78]);
//! assert_eq!(LcpPacket::decode(&wire).unwrap(), req);
//! ```

use super::fsm::{Extended, Negotiator, Verdict};
use super::{CpPacket, PppError, RawOption};

/// LCP Protocol-Reject.
pub const PROTOCOL_REJECT: u8 = 8;
/// LCP Echo-Request.
pub const ECHO_REQUEST: u8 = 9;
/// LCP Echo-Reply.
pub const ECHO_REPLY: u8 = 10;
/// LCP Discard-Request.
pub const DISCARD_REQUEST: u8 = 11;

/// Option type: Maximum-Receive-Unit.
pub const OPT_MRU: u8 = 1;
/// Option type: Async-Control-Character-Map.
pub const OPT_ACCM: u8 = 2;
/// Option type: Authentication-Protocol.
pub const OPT_AUTH: u8 = 3;
/// Option type: Magic-Number.
pub const OPT_MAGIC: u8 = 5;
/// Option type: Protocol-Field-Compression.
pub const OPT_PFC: u8 = 7;
/// Option type: Address-and-Control-Field-Compression.
pub const OPT_ACFC: u8 = 8;

/// The CHAP algorithm number of MS-CHAPv2.
pub const CHAP_MSCHAPV2: u8 = 0x81;

/// A typed LCP configuration option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LcpOption {
    /// Maximum-Receive-Unit.
    Mru(u16),
    /// Async-Control-Character-Map.
    Accm(u32),
    /// Authentication-Protocol: protocol number and data (CHAP: the algorithm).
    AuthProtocol {
        /// E.g. `0xC223` (CHAP).
        protocol: u16,
        /// E.g. `[0x81]` (MS-CHAPv2).
        data: Vec<u8>,
    },
    /// Magic-Number.
    MagicNumber(u32),
    /// Protocol-Field-Compression.
    Pfc,
    /// Address-and-Control-Field-Compression.
    Acfc,
    /// Any other option, or a known one with a malformed length.
    Other(RawOption),
}

impl LcpOption {
    /// The Auth-Protocol option for MS-CHAPv2.
    pub fn mschapv2() -> Self {
        LcpOption::AuthProtocol {
            protocol: super::PROTO_CHAP,
            data: vec![CHAP_MSCHAPV2],
        }
    }

    /// Types a raw option; malformed lengths give [`LcpOption::Other`].
    pub fn from_raw(raw: &RawOption) -> Self {
        let d = raw.data.as_slice();
        match (raw.kind, d) {
            (OPT_MRU, &[a, b]) => LcpOption::Mru(u16::from_be_bytes([a, b])),
            (OPT_ACCM, &[a, b, c, e]) => LcpOption::Accm(u32::from_be_bytes([a, b, c, e])),
            (OPT_AUTH, &[a, b, ref rest @ ..]) => LcpOption::AuthProtocol {
                protocol: u16::from_be_bytes([a, b]),
                data: rest.to_vec(),
            },
            (OPT_MAGIC, &[a, b, c, e]) => LcpOption::MagicNumber(u32::from_be_bytes([a, b, c, e])),
            (OPT_PFC, &[]) => LcpOption::Pfc,
            (OPT_ACFC, &[]) => LcpOption::Acfc,
            _ => LcpOption::Other(raw.clone()),
        }
    }

    /// The raw form.
    pub fn to_raw(&self) -> RawOption {
        match self {
            LcpOption::Mru(v) => RawOption::new(OPT_MRU, v.to_be_bytes()),
            LcpOption::Accm(v) => RawOption::new(OPT_ACCM, v.to_be_bytes()),
            LcpOption::AuthProtocol { protocol, data } => {
                let mut d = protocol.to_be_bytes().to_vec();
                d.extend_from_slice(data);
                RawOption::new(OPT_AUTH, d)
            }
            LcpOption::MagicNumber(v) => RawOption::new(OPT_MAGIC, v.to_be_bytes()),
            LcpOption::Pfc => RawOption::new(OPT_PFC, []),
            LcpOption::Acfc => RawOption::new(OPT_ACFC, []),
            LcpOption::Other(raw) => raw.clone(),
        }
    }
}

fn parse_options(data: &[u8]) -> Result<Vec<LcpOption>, PppError> {
    Ok(RawOption::parse_list(data)?
        .iter()
        .map(LcpOption::from_raw)
        .collect())
}

fn encode_options(options: &[LcpOption]) -> Vec<u8> {
    RawOption::encode_list(&options.iter().map(LcpOption::to_raw).collect::<Vec<_>>())
}

/// A typed LCP packet.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)] // field names are the RFC's
pub enum LcpPacket {
    ConfigureRequest {
        id: u8,
        options: Vec<LcpOption>,
    },
    ConfigureAck {
        id: u8,
        options: Vec<LcpOption>,
    },
    ConfigureNak {
        id: u8,
        options: Vec<LcpOption>,
    },
    ConfigureReject {
        id: u8,
        options: Vec<LcpOption>,
    },
    TerminateRequest {
        id: u8,
        data: Vec<u8>,
    },
    TerminateAck {
        id: u8,
        data: Vec<u8>,
    },
    /// The rejected packet, as received.
    CodeReject {
        id: u8,
        rejected: Vec<u8>,
    },
    /// The rejected protocol and the start of the rejected information field.
    ProtocolReject {
        id: u8,
        protocol: u16,
        information: Vec<u8>,
    },
    EchoRequest {
        id: u8,
        magic: u32,
        data: Vec<u8>,
    },
    EchoReply {
        id: u8,
        magic: u32,
        data: Vec<u8>,
    },
    DiscardRequest {
        id: u8,
        magic: u32,
        data: Vec<u8>,
    },
    /// A code LCP does not define.
    Unknown {
        code: u8,
        id: u8,
        data: Vec<u8>,
    },
}

impl LcpPacket {
    /// Decodes an LCP packet (the PPP information field). Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, PppError> {
        let p = CpPacket::decode(bytes)?;
        let (id, data) = (p.id, p.data);
        let magic_and = |data: Vec<u8>| -> Result<(u32, Vec<u8>), PppError> {
            let (m, rest) = data.split_first_chunk::<4>().ok_or(PppError::Truncated)?;
            Ok((u32::from_be_bytes(*m), rest.to_vec()))
        };
        Ok(match p.code {
            1 => LcpPacket::ConfigureRequest {
                id,
                options: parse_options(&data)?,
            },
            2 => LcpPacket::ConfigureAck {
                id,
                options: parse_options(&data)?,
            },
            3 => LcpPacket::ConfigureNak {
                id,
                options: parse_options(&data)?,
            },
            4 => LcpPacket::ConfigureReject {
                id,
                options: parse_options(&data)?,
            },
            5 => LcpPacket::TerminateRequest { id, data },
            6 => LcpPacket::TerminateAck { id, data },
            7 => LcpPacket::CodeReject { id, rejected: data },
            PROTOCOL_REJECT => {
                let (proto, rest) = data.split_first_chunk::<2>().ok_or(PppError::Truncated)?;
                LcpPacket::ProtocolReject {
                    id,
                    protocol: u16::from_be_bytes(*proto),
                    information: rest.to_vec(),
                }
            }
            ECHO_REQUEST => {
                let (magic, data) = magic_and(data)?;
                LcpPacket::EchoRequest { id, magic, data }
            }
            ECHO_REPLY => {
                let (magic, data) = magic_and(data)?;
                LcpPacket::EchoReply { id, magic, data }
            }
            DISCARD_REQUEST => {
                let (magic, data) = magic_and(data)?;
                LcpPacket::DiscardRequest { id, magic, data }
            }
            code => LcpPacket::Unknown { code, id, data },
        })
    }

    /// Encodes the packet.
    pub fn encode(&self) -> Vec<u8> {
        let with_magic = |m: &u32, d: &[u8]| {
            let mut v = m.to_be_bytes().to_vec();
            v.extend_from_slice(d);
            v
        };
        let (code, id, data) = match self {
            LcpPacket::ConfigureRequest { id, options } => (1, *id, encode_options(options)),
            LcpPacket::ConfigureAck { id, options } => (2, *id, encode_options(options)),
            LcpPacket::ConfigureNak { id, options } => (3, *id, encode_options(options)),
            LcpPacket::ConfigureReject { id, options } => (4, *id, encode_options(options)),
            LcpPacket::TerminateRequest { id, data } => (5, *id, data.clone()),
            LcpPacket::TerminateAck { id, data } => (6, *id, data.clone()),
            LcpPacket::CodeReject { id, rejected } => (7, *id, rejected.clone()),
            LcpPacket::ProtocolReject {
                id,
                protocol,
                information,
            } => {
                let mut v = protocol.to_be_bytes().to_vec();
                v.extend_from_slice(information);
                (PROTOCOL_REJECT, *id, v)
            }
            LcpPacket::EchoRequest { id, magic, data } => {
                (ECHO_REQUEST, *id, with_magic(magic, data))
            }
            LcpPacket::EchoReply { id, magic, data } => (ECHO_REPLY, *id, with_magic(magic, data)),
            LcpPacket::DiscardRequest { id, magic, data } => {
                (DISCARD_REQUEST, *id, with_magic(magic, data))
            }
            LcpPacket::Unknown { code, id, data } => (*code, *id, data.clone()),
        };
        CpPacket { code, id, data }.encode()
    }
}

/// Which side of the link a [`LcpNegotiator`] plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LcpRole {
    /// The PPTP client: authenticates itself to the server with MS-CHAPv2.
    Client,
    /// The PPTP server: requires the peer to authenticate with MS-CHAPv2.
    Server,
}

/// What this side asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LcpConfig {
    /// Client or server policy.
    pub role: LcpRole,
    /// The MRU to request (`None`: do not request, the default 1500 applies).
    pub mru: Option<u16>,
    /// Our initial magic number (non-zero).
    pub magic: u32,
    /// Request Protocol-Field-Compression.
    pub pfc: bool,
    /// Request Address-and-Control-Field-Compression.
    pub acfc: bool,
    /// Consecutive magic-number collisions after which the link counts as looped back.
    pub max_loop_collisions: u32,
}

impl LcpConfig {
    /// The client defaults: MRU 1400 (room for the GRE/IP overhead), PFC and ACFC.
    pub fn client(magic: u32) -> Self {
        LcpConfig {
            role: LcpRole::Client,
            mru: Some(1400),
            magic: magic.max(1),
            pfc: true,
            acfc: true,
            max_loop_collisions: 3,
        }
    }

    /// The server defaults: MS-CHAPv2 required, PFC and ACFC, no MRU.
    pub fn server(magic: u32) -> Self {
        LcpConfig {
            role: LcpRole::Server,
            mru: None,
            magic: magic.max(1),
            pfc: true,
            acfc: true,
            max_loop_collisions: 3,
        }
    }
}

/// What was negotiated so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LcpNegotiated {
    /// The peer's MRU (largest frame we may send), default 1500.
    pub peer_mru: Option<u16>,
    /// The authentication the peer asked us to do (acked by us).
    pub peer_auth: Option<(u16, Vec<u8>)>,
    /// The peer's magic number.
    pub peer_magic: Option<u32>,
    /// We may send compressed protocol fields.
    pub send_pfc: bool,
    /// We may omit address/control when sending.
    pub send_acfc: bool,
    /// The peer acked our Auth-Protocol request (server role).
    pub auth_acked: bool,
    /// The peer rejected our Auth-Protocol request (server role).
    pub auth_refused: bool,
}

/// The LCP option policy (client or server), see the module docs.
#[derive(Debug, Clone)]
pub struct LcpNegotiator {
    config: LcpConfig,
    want_mru: Option<u16>,
    want_magic: bool,
    want_pfc: bool,
    want_acfc: bool,
    want_auth: bool,
    magic: u32,
    rng: u64,
    loop_collisions: u32,
    negotiated: LcpNegotiated,
    protocol_rejects: Vec<u16>,
    echo_replies: Vec<u8>,
}

impl LcpNegotiator {
    /// A negotiator with the given policy; `seed` drives new magic numbers after a
    /// collision.
    pub fn new(config: LcpConfig, seed: u64) -> Self {
        LcpNegotiator {
            want_mru: config.mru,
            want_magic: true,
            want_pfc: config.pfc,
            want_acfc: config.acfc,
            want_auth: config.role == LcpRole::Server,
            magic: config.magic.max(1),
            rng: seed | 1,
            loop_collisions: 0,
            negotiated: LcpNegotiated::default(),
            protocol_rejects: Vec::new(),
            echo_replies: Vec::new(),
            config,
        }
    }

    /// Our current magic number (0 if the peer rejected the option).
    pub fn magic(&self) -> u32 {
        if self.want_magic { self.magic } else { 0 }
    }

    /// What was negotiated.
    pub fn negotiated(&self) -> &LcpNegotiated {
        &self.negotiated
    }

    /// Protocols the peer rejected with Protocol-Reject, oldest first (drained).
    pub fn take_protocol_rejects(&mut self) -> Vec<u16> {
        std::mem::take(&mut self.protocol_rejects)
    }

    /// Ids of Echo-Replies received in the Opened state (at most the last 16),
    /// oldest first (drained). Replies carrying our own magic number are not
    /// counted: they mean a looped-back link.
    pub fn take_echo_replies(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.echo_replies)
    }

    /// Whether the link was detected as looped back.
    pub fn looped_back(&self) -> bool {
        self.loop_collisions >= self.config.max_loop_collisions
    }

    fn next_magic(&mut self) -> u32 {
        // xorshift64*: only needs to differ from the old value and from the peer's.
        loop {
            self.rng ^= self.rng >> 12;
            self.rng ^= self.rng << 25;
            self.rng ^= self.rng >> 27;
            let v = (self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32;
            if v != 0 && v != self.magic {
                return v;
            }
        }
    }
}

impl Negotiator for LcpNegotiator {
    fn request(&mut self) -> Vec<RawOption> {
        let mut opts = Vec::new();
        if let Some(mru) = self.want_mru {
            opts.push(LcpOption::Mru(mru));
        }
        if self.want_auth {
            opts.push(LcpOption::mschapv2());
        }
        if self.want_magic {
            opts.push(LcpOption::MagicNumber(self.magic));
        }
        if self.want_pfc {
            opts.push(LcpOption::Pfc);
        }
        if self.want_acfc {
            opts.push(LcpOption::Acfc);
        }
        opts.iter().map(LcpOption::to_raw).collect()
    }

    fn acked(&mut self, options: &[RawOption]) {
        for o in options {
            if let LcpOption::AuthProtocol { .. } = LcpOption::from_raw(o) {
                self.negotiated.auth_acked = true;
            }
        }
    }

    fn naked(&mut self, options: &[RawOption]) {
        for o in options {
            match LcpOption::from_raw(o) {
                LcpOption::Mru(v) if self.want_mru.is_some() => {
                    // Take the peer's suggestion if it is sane, else stop asking.
                    self.want_mru = (576..=1500).contains(&v).then_some(v);
                }
                LcpOption::MagicNumber(_) if self.want_magic => self.magic = self.next_magic(),
                LcpOption::Pfc => self.want_pfc = false,
                LcpOption::Acfc => self.want_acfc = false,
                // Server: the peer suggested another auth protocol; we insist (a
                // peer that never agrees ends as non-converging).
                _ => {}
            }
        }
    }

    fn rejected(&mut self, options: &[RawOption]) {
        for o in options {
            match o.kind {
                OPT_MRU => self.want_mru = None,
                OPT_MAGIC => self.want_magic = false,
                OPT_PFC => self.want_pfc = false,
                OPT_ACFC => self.want_acfc = false,
                OPT_AUTH => {
                    self.want_auth = false;
                    self.negotiated.auth_refused = true;
                }
                _ => {}
            }
        }
    }

    fn check(&mut self, options: &[RawOption], may_nak: bool) -> Verdict {
        let mut naks = Vec::new();
        let mut rejects = Vec::new();
        let mut collided = false;
        let mut next = LcpNegotiated {
            auth_acked: self.negotiated.auth_acked,
            ..Default::default()
        };
        for raw in options {
            match LcpOption::from_raw(raw) {
                LcpOption::Mru(v) if v >= 64 => next.peer_mru = Some(v),
                LcpOption::Mru(_) => naks.push((raw.clone(), LcpOption::Mru(1500).to_raw())),
                LcpOption::Accm(_) => {}
                LcpOption::AuthProtocol { protocol, data } => match self.config.role {
                    LcpRole::Client if protocol == super::PROTO_CHAP && data == [CHAP_MSCHAPV2] => {
                        next.peer_auth = Some((protocol, data))
                    }
                    LcpRole::Client => naks.push((raw.clone(), LcpOption::mschapv2().to_raw())),
                    // The server does not authenticate itself to the client.
                    LcpRole::Server => rejects.push(raw.clone()),
                },
                LcpOption::MagicNumber(0) => {
                    let m = self.next_magic();
                    naks.push((raw.clone(), LcpOption::MagicNumber(m).to_raw()));
                }
                LcpOption::MagicNumber(m) if self.want_magic && m == self.magic => {
                    // RFC 1661 §6.4: possibly looped back. Suggest another number to
                    // the peer and pick a new one for ourselves.
                    collided = true;
                    let suggestion = self.next_magic();
                    naks.push((raw.clone(), LcpOption::MagicNumber(suggestion).to_raw()));
                    self.magic = self.next_magic();
                }
                LcpOption::MagicNumber(m) => next.peer_magic = Some(m),
                LcpOption::Pfc => next.send_pfc = true,
                LcpOption::Acfc => next.send_acfc = true,
                LcpOption::Other(_) => rejects.push(raw.clone()),
            }
        }
        if collided {
            self.loop_collisions += 1;
        } else {
            self.loop_collisions = 0;
        }
        if !rejects.is_empty() {
            return Verdict::Reject(rejects);
        }
        if !naks.is_empty() {
            return if may_nak {
                Verdict::Nak(naks.into_iter().map(|(_, n)| n).collect())
            } else {
                Verdict::Reject(naks.into_iter().map(|(orig, _)| orig).collect())
            };
        }
        next.auth_refused = self.negotiated.auth_refused;
        self.negotiated = next;
        Verdict::Ack
    }

    fn extended(&mut self, packet: &CpPacket, opened: bool) -> Extended {
        match packet.code {
            ECHO_REQUEST => {
                let Some((magic, _)) = packet.data.split_first_chunk::<4>() else {
                    return Extended::Reply(None);
                };
                if !opened {
                    return Extended::Reply(None);
                }
                if self.want_magic && u32::from_be_bytes(*magic) == self.magic {
                    self.loop_collisions += 1;
                }
                let mut data = self.magic().to_be_bytes().to_vec();
                data.extend_from_slice(&packet.data[4..]);
                Extended::Reply(Some(CpPacket {
                    code: ECHO_REPLY,
                    id: packet.id,
                    data,
                }))
            }
            ECHO_REPLY => {
                if let Some((magic, _)) = packet.data.split_first_chunk::<4>() {
                    let magic = u32::from_be_bytes(*magic);
                    if self.want_magic && magic == self.magic {
                        // Our own echo came back: looped back.
                        self.loop_collisions += 1;
                    } else if opened {
                        self.echo_replies.push(packet.id);
                        if self.echo_replies.len() > 16 {
                            self.echo_replies.remove(0);
                        }
                    }
                }
                Extended::Reply(None)
            }
            DISCARD_REQUEST => Extended::Reply(None),
            PROTOCOL_REJECT => {
                let Some((proto, _)) = packet.data.split_first_chunk::<2>() else {
                    return Extended::Reply(None);
                };
                let proto = u16::from_be_bytes(*proto);
                if proto == super::PROTO_LCP {
                    return Extended::RejectCatastrophic;
                }
                if self.protocol_rejects.len() < 16 {
                    self.protocol_rejects.push(proto);
                }
                Extended::RejectPermitted
            }
            _ => Extended::Unknown,
        }
    }

    fn fatal(&self) -> Option<String> {
        self.looped_back()
            .then(|| "link is looped back (magic number collisions)".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pptp::ppp::fsm::{Fsm, FsmConfig, FsmEvent, State};
    use proptest::prelude::*;
    use std::time::{Duration, Instant};

    #[test]
    fn codec_round_trip_all_codes() {
        let pkts = vec![
            LcpPacket::ConfigureRequest {
                id: 1,
                options: vec![
                    LcpOption::Mru(1400),
                    LcpOption::Accm(0),
                    LcpOption::mschapv2(),
                    LcpOption::MagicNumber(7),
                    LcpOption::Pfc,
                    LcpOption::Acfc,
                    LcpOption::Other(RawOption::new(13, [6])),
                ],
            },
            LcpPacket::ConfigureAck {
                id: 2,
                options: vec![LcpOption::Pfc],
            },
            LcpPacket::ConfigureNak {
                id: 3,
                options: vec![LcpOption::Mru(1500)],
            },
            LcpPacket::ConfigureReject {
                id: 4,
                options: vec![LcpOption::Acfc],
            },
            LcpPacket::TerminateRequest {
                id: 5,
                data: b"bye".to_vec(),
            },
            LcpPacket::TerminateAck {
                id: 6,
                data: vec![],
            },
            LcpPacket::CodeReject {
                id: 7,
                rejected: vec![99, 1, 0, 4],
            },
            LcpPacket::ProtocolReject {
                id: 8,
                protocol: 0x80FD,
                information: vec![1, 2],
            },
            LcpPacket::EchoRequest {
                id: 9,
                magic: 1,
                data: b"x".to_vec(),
            },
            LcpPacket::EchoReply {
                id: 10,
                magic: 2,
                data: vec![],
            },
            LcpPacket::DiscardRequest {
                id: 11,
                magic: 3,
                data: vec![0],
            },
            LcpPacket::Unknown {
                code: 42,
                id: 12,
                data: vec![1],
            },
        ];
        for p in pkts {
            assert_eq!(LcpPacket::decode(&p.encode()).unwrap(), p);
        }
        // Malformed known option lengths are kept as Other, not misread.
        let bad_mru = RawOption::new(OPT_MRU, [5]);
        assert_eq!(LcpOption::from_raw(&bad_mru), LcpOption::Other(bad_mru));
        assert_eq!(
            LcpPacket::decode(&[9, 1, 0, 6, 0, 0]),
            Err(PppError::Truncated),
            "echo without a full magic number"
        );
    }

    fn client() -> LcpNegotiator {
        LcpNegotiator::new(LcpConfig::client(0x1111_1111), 1)
    }

    #[test]
    fn client_policy_auth() {
        let mut n = client();
        let pap = LcpOption::AuthProtocol {
            protocol: 0xC023,
            data: vec![],
        }
        .to_raw();
        assert_eq!(
            n.check(std::slice::from_ref(&pap), true),
            Verdict::Nak(vec![LcpOption::mschapv2().to_raw()])
        );
        let md5 = LcpOption::AuthProtocol {
            protocol: 0xC223,
            data: vec![5],
        }
        .to_raw();
        assert_eq!(
            n.check(&[md5], true),
            Verdict::Nak(vec![LcpOption::mschapv2().to_raw()])
        );
        // Past Max-Failure the Nak becomes a Reject of the original option.
        assert_eq!(
            n.check(std::slice::from_ref(&pap), false),
            Verdict::Reject(vec![pap])
        );
        let ok = [
            LcpOption::mschapv2().to_raw(),
            LcpOption::MagicNumber(5).to_raw(),
            LcpOption::Accm(0).to_raw(),
        ];
        assert_eq!(n.check(&ok, true), Verdict::Ack);
        assert_eq!(n.negotiated().peer_auth, Some((0xC223, vec![0x81])));
        assert_eq!(n.negotiated().peer_magic, Some(5));
        // Unknown options are rejected, and only they.
        let other = RawOption::new(17, [0, 1]);
        assert_eq!(
            n.check(&[ok[0].clone(), other.clone()], true),
            Verdict::Reject(vec![other])
        );
    }

    #[test]
    fn magic_collision_detects_loopback() {
        let mut n = client();
        let own = LcpOption::MagicNumber(n.magic()).to_raw();
        let Verdict::Nak(naks) = n.check(&[own], true) else {
            panic!("expected Nak")
        };
        assert_eq!(naks.len(), 1);
        assert_ne!(n.magic(), 0x1111_1111, "we pick a new magic");
        assert!(n.fatal().is_none());
        for _ in 0..2 {
            let own = LcpOption::MagicNumber(n.magic()).to_raw();
            let _ = n.check(&[own], true);
        }
        assert!(n.looped_back());
        assert!(n.fatal().is_some());
    }

    #[test]
    fn looped_back_link_fails_the_fsm() {
        // Our own requests come straight back: every request carries our magic.
        let t0 = Instant::now();
        let mut fsm = Fsm::new(client(), FsmConfig::default());
        fsm.open(t0);
        fsm.up(t0);
        let mut finished = None;
        for _ in 0..50 {
            let Some(out) = fsm.poll_transmit() else {
                break;
            };
            fsm.handle_input(&out, t0);
            while let Some(e) = fsm.poll_event() {
                if let FsmEvent::Finished(r) = e {
                    finished = Some(r);
                }
            }
        }
        assert!(
            matches!(finished, Some(crate::pptp::ppp::fsm::FinishReason::Fatal(ref s)) if s.contains("looped")),
            "{finished:?}"
        );
        assert_eq!(fsm.state(), State::Stopped);
    }

    #[test]
    fn silent_peer_gives_up_after_max_configure() {
        let t0 = Instant::now();
        let cfg = FsmConfig::default();
        let mut fsm = Fsm::new(client(), cfg);
        fsm.open(t0);
        fsm.up(t0);
        let mut now = t0;
        let mut sent = 0;
        let mut finished = None;
        while finished.is_none() {
            while fsm.poll_transmit().is_some() {
                sent += 1;
            }
            let Some(t) = fsm.poll_timeout() else { break };
            now = t;
            fsm.handle_timeout(now);
            while let Some(e) = fsm.poll_event() {
                if let FsmEvent::Finished(r) = e {
                    finished = Some(r);
                }
            }
        }
        assert_eq!(sent, cfg.max_configure as usize);
        assert_eq!(
            finished,
            Some(crate::pptp::ppp::fsm::FinishReason::NoResponse)
        );
        assert_eq!(now - t0, cfg.restart * cfg.max_configure);
        assert!(now - t0 <= Duration::from_secs(30));
    }

    proptest! {
        #[test]
        fn lcp_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(p) = LcpPacket::decode(&bytes) {
                // Whatever decodes re-encodes to something that decodes the same.
                prop_assert_eq!(LcpPacket::decode(&p.encode()), Ok(p));
            }
        }

        #[test]
        fn lcp_decode_never_panics_with_valid_header(code in 0u8..16, id: u8,
                body in proptest::collection::vec(any::<u8>(), 0..60)) {
            let mut b = vec![code, id];
            b.extend_from_slice(&((body.len() + 4) as u16).to_be_bytes());
            b.extend(body);
            let _ = LcpPacket::decode(&b);
            let mut fsm = Fsm::new(client(), FsmConfig::default());
            let t0 = Instant::now();
            fsm.open(t0);
            fsm.up(t0);
            fsm.handle_input(&b, t0);
        }
    }
}
