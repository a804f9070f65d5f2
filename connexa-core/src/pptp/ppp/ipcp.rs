//! IPCP (RFC 1332) with the DNS options of RFC 1877: the option policy
//! ([`IpcpNegotiator`]) for the generic [`Fsm`](super::fsm::Fsm), client and
//! server role.
//!
//! * Client: requests IP-Address `0.0.0.0` and Primary/Secondary-DNS `0.0.0.0`
//!   and takes the values the server Naks back; drops a DNS option the server
//!   rejects; acknowledges the server's own (non-zero) address; rejects
//!   everything else (VJ compression, NBNS, ...).
//! * Server: requests its own address; Naks the peer's address with the one it
//!   assigns and the peer's DNS options with its configured servers (rejects a
//!   DNS option it has no server for).
//!
//! ```
//! use std::net::Ipv4Addr;
//! use std::time::Instant;
//! use connexa_core::pptp::ppp::fsm::{Fsm, FsmConfig};
//! use connexa_core::pptp::ppp::ipcp::{IpcpConfig, IpcpNegotiator};
//!
//! let now = Instant::now();
//! let server_cfg = IpcpConfig::server(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 100),
//!                                     [Some(Ipv4Addr::new(10, 0, 0, 53)), None]);
//! let mut c = Fsm::new(IpcpNegotiator::new(IpcpConfig::client()), FsmConfig::default());
//! let mut s = Fsm::new(IpcpNegotiator::new(server_cfg), FsmConfig::default());
//! for f in [&mut c, &mut s] { f.open(now); f.up(now); }
//! for _ in 0..6 {
//!     while let Some(p) = c.poll_transmit() { s.handle_input(&p, now); }
//!     while let Some(p) = s.poll_transmit() { c.handle_input(&p, now); }
//! }
//! let got = c.negotiator().negotiated();
//! assert_eq!(got.local, Some(Ipv4Addr::new(10, 0, 0, 100)));
//! assert_eq!(got.peer, Some(Ipv4Addr::new(10, 0, 0, 1)));
//! assert_eq!(got.dns, vec![Ipv4Addr::new(10, 0, 0, 53)]);
//! ```

use std::net::Ipv4Addr;

use super::RawOption;
use super::fsm::{Negotiator, Verdict};

/// Option type: IP-Compression-Protocol (VJ; always rejected).
pub const OPT_IP_COMPRESSION: u8 = 2;
/// Option type: IP-Address.
pub const OPT_IP_ADDRESS: u8 = 3;
/// Option type: Primary-DNS-Server (RFC 1877).
pub const OPT_PRIMARY_DNS: u8 = 129;
/// Option type: Secondary-DNS-Server (RFC 1877).
pub const OPT_SECONDARY_DNS: u8 = 131;

/// Which side an [`IpcpNegotiator`] plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpcpRole {
    /// Asks for its address and DNS servers.
    Client,
    /// Assigns them.
    Server,
}

/// IPCP settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpcpConfig {
    /// Client or server.
    pub role: IpcpRole,
    /// Our own address (client: `0.0.0.0` = ask the server).
    pub local: Ipv4Addr,
    /// Server: the address assigned to the peer.
    pub assign: Option<Ipv4Addr>,
    /// Client: request primary and secondary DNS. Server: the servers handed out.
    pub dns: [Option<Ipv4Addr>; 2],
}

impl IpcpConfig {
    /// Client defaults: ask for an address and two DNS servers.
    pub fn client() -> Self {
        IpcpConfig {
            role: IpcpRole::Client,
            local: Ipv4Addr::UNSPECIFIED,
            assign: None,
            dns: [Some(Ipv4Addr::UNSPECIFIED), Some(Ipv4Addr::UNSPECIFIED)],
        }
    }

    /// A server with address `local` assigning `assign` to the peer and handing
    /// out `dns`.
    pub fn server(local: Ipv4Addr, assign: Ipv4Addr, dns: [Option<Ipv4Addr>; 2]) -> Self {
        IpcpConfig {
            role: IpcpRole::Server,
            local,
            assign: Some(assign),
            dns,
        }
    }
}

/// What IPCP settled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpcpNegotiated {
    /// Our address (acked by the peer).
    pub local: Option<Ipv4Addr>,
    /// The peer's address (acked by us), if it sent one.
    pub peer: Option<Ipv4Addr>,
    /// DNS servers: client: those the server gave; server: those acked to the peer.
    pub dns: Vec<Ipv4Addr>,
}

/// The IPCP policy (see the module docs).
#[derive(Debug, Clone)]
pub struct IpcpNegotiator {
    config: IpcpConfig,
    want_addr: Option<Ipv4Addr>,
    want_dns: [Option<Ipv4Addr>; 2],
    negotiated: IpcpNegotiated,
    failure: Option<String>,
}

fn addr_of(o: &RawOption) -> Option<Ipv4Addr> {
    match o.data.as_slice() {
        &[a, b, c, d] => Some(Ipv4Addr::new(a, b, c, d)),
        _ => None,
    }
}

fn opt(kind: u8, a: Ipv4Addr) -> RawOption {
    RawOption::new(kind, a.octets())
}

impl IpcpNegotiator {
    /// A negotiator with the given settings.
    pub fn new(config: IpcpConfig) -> Self {
        let want_dns = match config.role {
            IpcpRole::Client => config.dns,
            IpcpRole::Server => [None, None],
        };
        IpcpNegotiator {
            want_addr: Some(config.local),
            want_dns,
            config,
            negotiated: IpcpNegotiated::default(),
            failure: None,
        }
    }

    /// What was settled so far.
    pub fn negotiated(&self) -> &IpcpNegotiated {
        &self.negotiated
    }
}

impl Negotiator for IpcpNegotiator {
    fn request(&mut self) -> Vec<RawOption> {
        let mut v = Vec::new();
        if let Some(a) = self.want_addr {
            v.push(opt(OPT_IP_ADDRESS, a));
        }
        for (kind, d) in [OPT_PRIMARY_DNS, OPT_SECONDARY_DNS]
            .into_iter()
            .zip(self.want_dns)
        {
            if let Some(d) = d {
                v.push(opt(kind, d));
            }
        }
        v
    }

    fn acked(&mut self, options: &[RawOption]) {
        let mut dns = Vec::new();
        for o in options {
            match (o.kind, addr_of(o)) {
                (OPT_IP_ADDRESS, Some(a)) => {
                    if a.is_unspecified() {
                        self.failure =
                            Some("the peer acknowledged address 0.0.0.0 and assigned none".into());
                    }
                    self.negotiated.local = Some(a);
                }
                // pppd with one `ms-dns` hands out the same server twice.
                (OPT_PRIMARY_DNS | OPT_SECONDARY_DNS, Some(a))
                    if !a.is_unspecified() && !dns.contains(&a) =>
                {
                    dns.push(a)
                }
                _ => {}
            }
        }
        if self.config.role == IpcpRole::Client {
            self.negotiated.dns = dns;
        }
    }

    fn naked(&mut self, options: &[RawOption]) {
        for o in options {
            let Some(a) = addr_of(o) else { continue };
            match o.kind {
                OPT_IP_ADDRESS if self.config.role == IpcpRole::Client => self.want_addr = Some(a),
                OPT_PRIMARY_DNS if self.want_dns[0].is_some() => self.want_dns[0] = Some(a),
                OPT_SECONDARY_DNS if self.want_dns[1].is_some() => self.want_dns[1] = Some(a),
                _ => {}
            }
        }
    }

    fn rejected(&mut self, options: &[RawOption]) {
        for o in options {
            match o.kind {
                OPT_IP_ADDRESS => {
                    if self.config.local.is_unspecified() {
                        self.failure = Some("the peer refuses to assign an IP address".into());
                    }
                    self.want_addr = None;
                }
                OPT_PRIMARY_DNS => self.want_dns[0] = None,
                OPT_SECONDARY_DNS => self.want_dns[1] = None,
                _ => {}
            }
        }
    }

    fn check(&mut self, options: &[RawOption], may_nak: bool) -> Verdict {
        let mut naks = Vec::new();
        let mut rejects = Vec::new();
        let mut peer = None;
        let mut dns = Vec::new();
        for o in options {
            let addr = addr_of(o);
            match (self.config.role, o.kind, addr) {
                (IpcpRole::Client, OPT_IP_ADDRESS, Some(a)) if !a.is_unspecified() => {
                    peer = Some(a)
                }
                (IpcpRole::Server, OPT_IP_ADDRESS, Some(a)) => match self.config.assign {
                    Some(want) if want == a => peer = Some(a),
                    Some(want) => naks.push((o.clone(), opt(OPT_IP_ADDRESS, want))),
                    None if !a.is_unspecified() => peer = Some(a),
                    None => rejects.push(o.clone()),
                },
                (IpcpRole::Server, OPT_PRIMARY_DNS | OPT_SECONDARY_DNS, Some(a)) => {
                    let i = usize::from(o.kind == OPT_SECONDARY_DNS);
                    match self.config.dns[i] {
                        Some(d) if d == a => dns.push(a),
                        Some(d) => naks.push((o.clone(), opt(o.kind, d))),
                        None => rejects.push(o.clone()),
                    }
                }
                _ => rejects.push(o.clone()),
            }
        }
        if !rejects.is_empty() {
            return Verdict::Reject(rejects);
        }
        if !naks.is_empty() {
            return if may_nak {
                Verdict::Nak(naks.into_iter().map(|(_, n)| n).collect())
            } else {
                Verdict::Reject(naks.into_iter().map(|(o, _)| o).collect())
            };
        }
        self.negotiated.peer = peer;
        if self.config.role == IpcpRole::Server {
            self.negotiated.dns = dns;
        }
        Verdict::Ack
    }

    fn fatal(&self) -> Option<String> {
        self.failure.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pptp::ppp::CpPacket;
    use crate::pptp::ppp::fsm::{Fsm, FsmConfig, State};
    use std::time::Instant;

    fn run(c: &mut Fsm<IpcpNegotiator>, s: &mut Fsm<IpcpNegotiator>, now: Instant) {
        for _ in 0..10 {
            while let Some(p) = c.poll_transmit() {
                s.handle_input(&p, now);
            }
            while let Some(p) = s.poll_transmit() {
                c.handle_input(&p, now);
            }
        }
    }

    #[test]
    fn pppd_like_exchange_with_one_dns_server() {
        // pppd with `ms-dns 10.78.0.1` once: it Naks the primary and rejects the
        // secondary DNS option.
        let now = Instant::now();
        let mut c = Fsm::new(
            IpcpNegotiator::new(IpcpConfig::client()),
            FsmConfig::default(),
        );
        c.open(now);
        c.up(now);
        let first = CpPacket::decode(&c.poll_transmit().unwrap()).unwrap();
        let opts = RawOption::parse_list(&first.data).unwrap();
        assert_eq!(
            opts,
            vec![
                opt(OPT_IP_ADDRESS, Ipv4Addr::UNSPECIFIED),
                opt(OPT_PRIMARY_DNS, Ipv4Addr::UNSPECIFIED),
                opt(OPT_SECONDARY_DNS, Ipv4Addr::UNSPECIFIED)
            ]
        );
        let reject = CpPacket {
            code: 4,
            id: first.id,
            data: RawOption::encode_list(&[opts[2].clone()]),
        };
        c.handle_input(&reject.encode(), now);
        let second = CpPacket::decode(&c.poll_transmit().unwrap()).unwrap();
        let nak = CpPacket {
            code: 3,
            id: second.id,
            data: RawOption::encode_list(&[
                opt(OPT_IP_ADDRESS, Ipv4Addr::new(10, 78, 0, 100)),
                opt(OPT_PRIMARY_DNS, Ipv4Addr::new(10, 78, 0, 1)),
            ]),
        };
        c.handle_input(&nak.encode(), now);
        let third = CpPacket::decode(&c.poll_transmit().unwrap()).unwrap();
        c.handle_input(
            &CpPacket {
                code: 2,
                id: third.id,
                data: third.data.clone(),
            }
            .encode(),
            now,
        );
        // The server's own request: its address and VJ compression.
        let vj = RawOption::new(OPT_IP_COMPRESSION, [0, 0x2d, 0x0f, 0x01]);
        let sreq = CpPacket {
            code: 1,
            id: 40,
            data: RawOption::encode_list(&[
                vj.clone(),
                opt(OPT_IP_ADDRESS, Ipv4Addr::new(10, 78, 0, 1)),
            ]),
        };
        c.handle_input(&sreq.encode(), now);
        let rej = CpPacket::decode(&c.poll_transmit().unwrap()).unwrap();
        assert_eq!(
            (rej.code, RawOption::parse_list(&rej.data).unwrap()),
            (4, vec![vj])
        );
        let sreq = CpPacket {
            code: 1,
            id: 41,
            data: RawOption::encode_list(&[opt(OPT_IP_ADDRESS, Ipv4Addr::new(10, 78, 0, 1))]),
        };
        c.handle_input(&sreq.encode(), now);
        assert_eq!(c.state(), State::Opened);
        let n = c.negotiator().negotiated();
        assert_eq!(n.local, Some(Ipv4Addr::new(10, 78, 0, 100)));
        assert_eq!(n.peer, Some(Ipv4Addr::new(10, 78, 0, 1)));
        assert_eq!(n.dns, vec![Ipv4Addr::new(10, 78, 0, 1)]);
    }

    #[test]
    fn client_and_server_roles_agree() {
        let now = Instant::now();
        let dns = [
            Some(Ipv4Addr::new(192, 0, 2, 53)),
            Some(Ipv4Addr::new(192, 0, 2, 54)),
        ];
        let mut c = Fsm::new(
            IpcpNegotiator::new(IpcpConfig::client()),
            FsmConfig::default(),
        );
        let mut s = Fsm::new(
            IpcpNegotiator::new(IpcpConfig::server(
                Ipv4Addr::new(192, 0, 2, 1),
                Ipv4Addr::new(192, 0, 2, 7),
                dns,
            )),
            FsmConfig::default(),
        );
        for f in [&mut c, &mut s] {
            f.open(now);
            f.up(now);
        }
        run(&mut c, &mut s, now);
        assert_eq!((c.state(), s.state()), (State::Opened, State::Opened));
        assert_eq!(
            c.negotiator().negotiated().local,
            Some(Ipv4Addr::new(192, 0, 2, 7))
        );
        assert_eq!(
            c.negotiator().negotiated().dns,
            dns.iter().flatten().copied().collect::<Vec<_>>()
        );
        assert_eq!(
            s.negotiator().negotiated().peer,
            Some(Ipv4Addr::new(192, 0, 2, 7))
        );
        assert_eq!(
            s.negotiator().negotiated().local,
            Some(Ipv4Addr::new(192, 0, 2, 1))
        );
    }

    #[test]
    fn a_server_that_will_not_assign_an_address_fails_the_client() {
        let now = Instant::now();
        let mut c = Fsm::new(
            IpcpNegotiator::new(IpcpConfig::client()),
            FsmConfig::default(),
        );
        c.open(now);
        c.up(now);
        let first = CpPacket::decode(&c.poll_transmit().unwrap()).unwrap();
        let opts = RawOption::parse_list(&first.data).unwrap();
        c.handle_input(
            &CpPacket {
                code: 4,
                id: first.id,
                data: RawOption::encode_list(&opts[..1]),
            }
            .encode(),
            now,
        );
        assert!(
            c.negotiator()
                .fatal()
                .is_some_and(|s| s.contains("refuses to assign"))
        );
        assert_eq!(c.state(), State::Stopped);
    }
}
