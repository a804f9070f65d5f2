//! The SOCKS5 wire format (RFC 1928 CONNECT, RFC 1929 username/password), sans-IO.
//!
//! [`ServerHandshake`] is the server's side of the negotiation as a pure state
//! machine: feed it the bytes received so far, it says how many it used and what
//! to do ([`Action`]). It never allocates more than one message (at most
//! [`MAX_MESSAGE`] bytes), never panics on any input, and gives the same answer
//! however the input is split into reads.
//!
//! ```
//! use connexa_core::socks::proto::{Action, Reject, ServerHandshake, TargetAddr};
//!
//! let mut hs = ServerHandshake::new("alice", "correct horse battery staple");
//! // Greeting: version 5, one method: username/password.
//! assert_eq!(hs.handle_input(&[5, 1, 2]), (3, Action::Send(vec![5, 2])));
//! // RFC 1929 with a wrong password.
//! let mut auth = vec![1, 5];
//! auth.extend(b"alice");
//! auth.push(5);
//! auth.extend(b"wrong");
//! let (_, action) = hs.handle_input(&auth);
//! assert_eq!(action, Action::Close { reply: vec![1, 1], reason: Reject::BadCredentials });
//! ```

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::domain::Secret;

/// SOCKS protocol version 5.
pub const VERSION: u8 = 5;
/// RFC 1929 sub-negotiation version.
pub const AUTH_VERSION: u8 = 1;
/// Method: no authentication (never accepted by this server).
pub const METHOD_NO_AUTH: u8 = 0x00;
/// Method: username/password (RFC 1929).
pub const METHOD_USER_PASS: u8 = 0x02;
/// Method reply: no acceptable method.
pub const METHOD_NONE_ACCEPTABLE: u8 = 0xFF;
/// Command: CONNECT.
pub const CMD_CONNECT: u8 = 1;
/// Address type: IPv4.
pub const ATYP_V4: u8 = 1;
/// Address type: domain name.
pub const ATYP_DOMAIN: u8 = 3;
/// Address type: IPv6.
pub const ATYP_V6: u8 = 4;
/// The longest client message: an RFC 1929 request with a 255-byte user name
/// and a 255-byte password (greetings are at most 257 bytes, requests 262).
pub const MAX_MESSAGE: usize = 1 + 1 + 255 + 1 + 255;

/// The REP field of a reply (RFC 1928 section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Reply {
    /// X'00' succeeded.
    Succeeded = 0,
    /// X'01' general SOCKS server failure.
    GeneralFailure = 1,
    /// X'02' connection not allowed by ruleset.
    NotAllowed = 2,
    /// X'03' network unreachable.
    NetworkUnreachable = 3,
    /// X'04' host unreachable.
    HostUnreachable = 4,
    /// X'05' connection refused.
    ConnectionRefused = 5,
    /// X'06' TTL expired.
    TtlExpired = 6,
    /// X'07' command not supported.
    CommandNotSupported = 7,
    /// X'08' address type not supported.
    AddressTypeNotSupported = 8,
}

impl Reply {
    /// The REP for a failed connect or name lookup.
    pub fn from_io(e: &io::Error) -> Reply {
        match e.kind() {
            io::ErrorKind::ConnectionRefused => Reply::ConnectionRefused,
            io::ErrorKind::HostUnreachable
            | io::ErrorKind::TimedOut
            | io::ErrorKind::NotFound
            | io::ErrorKind::AddrNotAvailable => Reply::HostUnreachable,
            io::ErrorKind::NetworkUnreachable => Reply::NetworkUnreachable,
            io::ErrorKind::PermissionDenied => Reply::NotAllowed,
            _ => Reply::GeneralFailure,
        }
    }

    /// The byte on the wire.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The REP for a byte (unknown values are `None`).
    pub fn from_code(code: u8) -> Option<Reply> {
        use Reply::*;
        [
            Succeeded,
            GeneralFailure,
            NotAllowed,
            NetworkUnreachable,
            HostUnreachable,
            ConnectionRefused,
            TtlExpired,
            CommandNotSupported,
            AddressTypeNotSupported,
        ]
        .into_iter()
        .find(|r| r.code() == code)
    }
}

/// Where a client wants to connect.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TargetAddr {
    /// An IPv4 or IPv6 address and port.
    Ip(SocketAddr),
    /// A host name (1 to 255 bytes of UTF-8) and port.
    Domain(String, u16),
}

impl TargetAddr {
    /// Parses `ip:port`, `[v6]:port` or `name:port`.
    ///
    /// ```
    /// use connexa_core::socks::proto::TargetAddr;
    /// assert_eq!(TargetAddr::parse("example.com:80"), Some(TargetAddr::Domain("example.com".into(), 80)));
    /// assert!(matches!(TargetAddr::parse("[::1]:443"), Some(TargetAddr::Ip(_))));
    /// assert_eq!(TargetAddr::parse("no-port"), None);
    /// ```
    pub fn parse(s: &str) -> Option<TargetAddr> {
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Some(TargetAddr::Ip(a));
        }
        let (host, port) = s.rsplit_once(':')?;
        let port = port.parse().ok()?;
        if host.is_empty() || host.len() > 255 || host.contains([':', '[', ']']) {
            return None;
        }
        Some(TargetAddr::Domain(host.to_owned(), port))
    }

    /// The port.
    pub fn port(&self) -> u16 {
        match self {
            TargetAddr::Ip(a) => a.port(),
            TargetAddr::Domain(_, p) => *p,
        }
    }

    /// The RFC 1928 encoding: ATYP, address, port.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            TargetAddr::Ip(SocketAddr::V4(a)) => {
                out.push(ATYP_V4);
                out.extend(a.ip().octets());
            }
            TargetAddr::Ip(SocketAddr::V6(a)) => {
                out.push(ATYP_V6);
                out.extend(a.ip().octets());
            }
            TargetAddr::Domain(name, _) => {
                let bytes = name.as_bytes();
                let len = bytes.len().min(255);
                out.push(ATYP_DOMAIN);
                out.push(len as u8);
                out.extend(&bytes[..len]);
            }
        }
        out.extend(self.port().to_be_bytes());
    }
}

impl fmt::Display for TargetAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetAddr::Ip(a) => a.fmt(f),
            TargetAddr::Domain(h, p) => write!(f, "{h}:{p}"),
        }
    }
}

/// A reply to a request: VER, REP, RSV, BND.ADDR, BND.PORT.
pub fn encode_reply(rep: Reply, bound: SocketAddr) -> Vec<u8> {
    let mut out = vec![VERSION, rep.code(), 0];
    TargetAddr::Ip(bound).encode(&mut out);
    out
}

/// A failure reply (the bound address is `0.0.0.0:0`).
pub fn failure_reply(rep: Reply) -> Vec<u8> {
    encode_reply(rep, SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))
}

/// Client side: a CONNECT request for `target`.
pub fn encode_connect(target: &TargetAddr) -> Vec<u8> {
    let mut out = vec![VERSION, CMD_CONNECT, 0];
    target.encode(&mut out);
    out
}

/// Client side: an RFC 1929 request (`None` if a field is empty or longer than 255 bytes).
pub fn encode_auth(user: &str, password: &str) -> Option<Vec<u8>> {
    let (u, p) = (user.as_bytes(), password.as_bytes());
    let ulen = u8::try_from(u.len()).ok().filter(|n| *n > 0)?;
    let plen = u8::try_from(p.len()).ok().filter(|n| *n > 0)?;
    let mut out = Vec::with_capacity(3 + u.len() + p.len());
    out.extend([AUTH_VERSION, ulen]);
    out.extend(u);
    out.push(plen);
    out.extend(p);
    Some(out)
}

/// Client side: parses a reply to a request from the front of `buf`:
/// `Ok(None)` when more bytes are needed, else the REP, the bound address and
/// the reply's length.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, TargetAddr, usize)>, MalformedReply> {
    let Some(head) = buf.get(..4) else {
        return Ok(None);
    };
    if head[0] != VERSION {
        return Err(MalformedReply);
    }
    let rep = Reply::from_code(head[1]).ok_or(MalformedReply)?;
    match parse_addr(head[3], buf, 4) {
        AddrParse::Incomplete => Ok(None),
        AddrParse::Done(addr, len) => Ok(Some((rep, addr, len))),
        AddrParse::BadType | AddrParse::BadDomain => Err(MalformedReply),
    }
}

/// A reply that is not SOCKS5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed SOCKS5 reply")]
#[non_exhaustive]
pub struct MalformedReply;

/// Why the server closes a connection during the negotiation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reject {
    /// The greeting is not SOCKS version 5.
    BadVersion,
    /// The client does not offer username/password authentication.
    NoAcceptableMethod,
    /// The RFC 1929 request is malformed (wrong version, empty field).
    BadAuthRequest,
    /// Wrong user name or password.
    BadCredentials,
    /// The request is malformed (wrong version, bad domain name).
    BadRequest,
    /// A command other than CONNECT.
    UnsupportedCommand,
    /// An address type other than IPv4, IPv6 or domain name.
    UnsupportedAddressType,
    /// Input after the negotiation ended.
    Finished,
}

/// What the caller of [`ServerHandshake::handle_input`] does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Read more bytes (nothing was used).
    NeedMore,
    /// Send these bytes to the client, then go on (with the unused input).
    Send(Vec<u8>),
    /// Send `reply` (possibly empty), then close the connection.
    Close {
        /// Bytes to send before closing.
        reply: Vec<u8>,
        /// Why.
        reason: Reject,
    },
    /// The client authenticated and asks to CONNECT here: connect, then send
    /// [`encode_reply`] with the outcome. Unused input is the client's first data.
    Connect(TargetAddr),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Greeting,
    Auth,
    Request,
    Done,
}

/// The server's side of a SOCKS5 negotiation that requires username/password.
pub struct ServerHandshake {
    phase: Phase,
    authenticated: bool,
    user: String,
    password: Secret,
}

impl fmt::Debug for ServerHandshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerHandshake")
            .field("phase", &self.phase)
            .finish_non_exhaustive()
    }
}

enum AddrParse {
    Incomplete,
    Done(TargetAddr, usize),
    BadType,
    BadDomain,
}

/// Parses ATYP-specific address + port starting at `at` (the ATYP byte is `atyp`,
/// at `at - 1`); the `usize` is the end offset.
fn parse_addr(atyp: u8, buf: &[u8], at: usize) -> AddrParse {
    let port_at = |end: usize| -> Option<u16> {
        let b = buf.get(end..end + 2)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    };
    match atyp {
        ATYP_V4 => {
            let (Some(a), Some(port)) = (buf.get(at..at + 4), port_at(at + 4)) else {
                return AddrParse::Incomplete;
            };
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            AddrParse::Done(TargetAddr::Ip(SocketAddr::from((ip, port))), at + 6)
        }
        ATYP_V6 => {
            let (Some(a), Some(port)) = (buf.get(at..at + 16), port_at(at + 16)) else {
                return AddrParse::Incomplete;
            };
            let mut o = [0u8; 16];
            o.copy_from_slice(a);
            AddrParse::Done(
                TargetAddr::Ip(SocketAddr::from((Ipv6Addr::from(o), port))),
                at + 18,
            )
        }
        ATYP_DOMAIN => {
            let Some(&len) = buf.get(at) else {
                return AddrParse::Incomplete;
            };
            let len = usize::from(len);
            let start = at + 1;
            let (Some(name), Some(port)) = (buf.get(start..start + len), port_at(start + len))
            else {
                return AddrParse::Incomplete;
            };
            match std::str::from_utf8(name) {
                Ok(n) if !n.is_empty() && !n.contains('\0') => {
                    AddrParse::Done(TargetAddr::Domain(n.to_owned(), port), start + len + 2)
                }
                _ => AddrParse::BadDomain,
            }
        }
        _ => AddrParse::BadType,
    }
}

/// Compares in time independent of where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

impl ServerHandshake {
    /// A negotiation that accepts only these credentials.
    pub fn new(user: impl Into<String>, password: impl Into<Secret>) -> Self {
        ServerHandshake {
            phase: Phase::Greeting,
            authenticated: false,
            user: user.into(),
            password: password.into(),
        }
    }

    /// `true` once a `Connect` or `Close` was returned.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// `true` once the client logged in with the right credentials (the
    /// RFC 1929 success reply was returned to be sent).
    pub fn is_authenticated(&self) -> bool {
        self.authenticated
    }

    fn close(&mut self, reply: Vec<u8>, reason: Reject) -> (usize, Action) {
        self.phase = Phase::Done;
        (0, Action::Close { reply, reason })
    }

    /// Looks at the unused input received so far (`input`, starting at the
    /// current message) and returns how many bytes the message used and what to
    /// do. [`Action::NeedMore`] uses nothing: call again with more bytes.
    pub fn handle_input(&mut self, input: &[u8]) -> (usize, Action) {
        match self.phase {
            Phase::Greeting => self.greeting(input),
            Phase::Auth => self.auth(input),
            Phase::Request => self.request(input),
            Phase::Done => (
                0,
                Action::Close {
                    reply: Vec::new(),
                    reason: Reject::Finished,
                },
            ),
        }
    }

    fn greeting(&mut self, input: &[u8]) -> (usize, Action) {
        let Some(&ver) = input.first() else {
            return (0, Action::NeedMore);
        };
        if ver != VERSION {
            return self.close(Vec::new(), Reject::BadVersion);
        }
        let Some(&n) = input.get(1) else {
            return (0, Action::NeedMore);
        };
        let end = 2 + usize::from(n);
        let Some(methods) = input.get(2..end) else {
            return (0, Action::NeedMore);
        };
        if methods.contains(&METHOD_USER_PASS) {
            self.phase = Phase::Auth;
            (end, Action::Send(vec![VERSION, METHOD_USER_PASS]))
        } else {
            self.close(
                vec![VERSION, METHOD_NONE_ACCEPTABLE],
                Reject::NoAcceptableMethod,
            )
        }
    }

    fn auth(&mut self, input: &[u8]) -> (usize, Action) {
        let fail = vec![AUTH_VERSION, 1];
        let Some(&ver) = input.first() else {
            return (0, Action::NeedMore);
        };
        if ver != AUTH_VERSION {
            return self.close(fail, Reject::BadAuthRequest);
        }
        let Some(&ulen) = input.get(1) else {
            return (0, Action::NeedMore);
        };
        let ulen = usize::from(ulen);
        let Some(&plen) = input.get(2 + ulen) else {
            return (0, Action::NeedMore);
        };
        let plen = usize::from(plen);
        let end = 3 + ulen + plen;
        let (Some(user), Some(pass)) = (input.get(2..2 + ulen), input.get(3 + ulen..end)) else {
            return (0, Action::NeedMore);
        };
        if ulen == 0 || plen == 0 {
            return self.close(fail, Reject::BadAuthRequest);
        }
        // Both compared, always, so the timing says nothing about which was wrong.
        let user_ok = same(user, self.user.as_bytes());
        let pass_ok = same(pass, self.password.expose().as_bytes());
        if user_ok & pass_ok {
            self.phase = Phase::Request;
            self.authenticated = true;
            (end, Action::Send(vec![AUTH_VERSION, 0]))
        } else {
            self.close(fail, Reject::BadCredentials)
        }
    }

    fn request(&mut self, input: &[u8]) -> (usize, Action) {
        let Some(head) = input.get(..4) else {
            // Check what we can already: a wrong version or command needs no more bytes.
            return match input {
                [v, ..] if *v != VERSION => {
                    self.close(failure_reply(Reply::GeneralFailure), Reject::BadRequest)
                }
                [_, c, ..] if *c != CMD_CONNECT => self.close(
                    failure_reply(Reply::CommandNotSupported),
                    Reject::UnsupportedCommand,
                ),
                _ => (0, Action::NeedMore),
            };
        };
        if head[0] != VERSION {
            return self.close(failure_reply(Reply::GeneralFailure), Reject::BadRequest);
        }
        if head[1] != CMD_CONNECT {
            return self.close(
                failure_reply(Reply::CommandNotSupported),
                Reject::UnsupportedCommand,
            );
        }
        match parse_addr(head[3], input, 4) {
            AddrParse::Incomplete => (0, Action::NeedMore),
            AddrParse::Done(target, end) => {
                self.phase = Phase::Done;
                (end, Action::Connect(target))
            }
            AddrParse::BadType => self.close(
                failure_reply(Reply::AddressTypeNotSupported),
                Reject::UnsupportedAddressType,
            ),
            AddrParse::BadDomain => {
                self.close(failure_reply(Reply::HostUnreachable), Reject::BadRequest)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const USER: &str = "u-0123456789abcdef";
    const PASS: &str = "p-0123456789abcdefghij";

    fn hs() -> ServerHandshake {
        ServerHandshake::new(USER, PASS)
    }

    fn good_prefix() -> Vec<u8> {
        let mut v = vec![5, 2, 0, 2];
        v.extend(encode_auth(USER, PASS).unwrap());
        v
    }

    /// Feeds `input` in the given chunk sizes like a server would (a buffer of
    /// unused bytes); returns the actions and the unused bytes at the end.
    fn drive(input: &[u8], chunks: &[usize]) -> (Vec<Action>, Vec<u8>) {
        let mut h = hs();
        let mut pending: Vec<u8> = Vec::new();
        let mut actions = Vec::new();
        let mut rest = input;
        let mut sizes = chunks.iter().cycle();
        loop {
            let (used, a) = h.handle_input(&pending);
            assert!(used <= pending.len());
            pending.drain(..used);
            match a {
                Action::NeedMore => {
                    if rest.is_empty() {
                        return (actions, pending);
                    }
                    let n = (*sizes.next().unwrap()).clamp(1, rest.len());
                    pending.extend(&rest[..n]);
                    rest = &rest[n..];
                    assert!(pending.len() <= MAX_MESSAGE + 64 + chunks.iter().max().unwrap());
                }
                a @ Action::Send(_) => actions.push(a),
                a @ (Action::Close { .. } | Action::Connect(_)) => {
                    actions.push(a);
                    pending.extend(rest);
                    return (actions, pending);
                }
            }
        }
    }

    #[test]
    fn authenticated_only_after_the_right_login() {
        let mut h = hs();
        assert!(!h.is_authenticated());
        let (used, a) = h.handle_input(&[5, 1, 2]);
        assert_eq!((used, a), (3, Action::Send(vec![5, 2])));
        assert!(!h.is_authenticated(), "a greeting is not a login");
        let (_, a) = h.handle_input(&encode_auth(USER, PASS).unwrap());
        assert_eq!(a, Action::Send(vec![1, 0]));
        assert!(h.is_authenticated());

        let mut wrong = hs();
        wrong.handle_input(&[5, 1, 2]);
        let (_, a) = wrong.handle_input(&encode_auth(USER, "nope").unwrap());
        assert!(matches!(a, Action::Close { .. }));
        assert!(!wrong.is_authenticated());
    }

    #[test]
    fn full_negotiation_for_each_address_type() {
        for target in [
            TargetAddr::Ip("127.0.0.1:8080".parse().unwrap()),
            TargetAddr::Ip("[::1]:443".parse().unwrap()),
            TargetAddr::Domain("files.example".into(), 80),
        ] {
            let mut input = good_prefix();
            input.extend(encode_connect(&target));
            input.extend(b"GET / HTTP/1.0\r\n\r\n");
            let (actions, rest) = drive(&input, &[input.len()]);
            assert_eq!(
                actions,
                vec![
                    Action::Send(vec![5, 2]),
                    Action::Send(vec![1, 0]),
                    Action::Connect(target.clone())
                ]
            );
            assert_eq!(
                rest, b"GET / HTTP/1.0\r\n\r\n",
                "early data is left for the relay"
            );
        }
    }

    #[test]
    fn rejections_get_the_right_reply() {
        let close = |input: &[u8]| drive(input, &[1000]).0.pop().unwrap();
        let rep = |r: Reply| failure_reply(r);
        // SOCKS4 and garbage: closed without a reply.
        assert_eq!(
            close(&[4, 1, 0, 80, 127, 0, 0, 1, 0]),
            Action::Close {
                reply: vec![],
                reason: Reject::BadVersion
            }
        );
        // Only "no authentication" offered.
        assert_eq!(
            close(&[5, 1, 0]),
            Action::Close {
                reply: vec![5, 0xFF],
                reason: Reject::NoAcceptableMethod
            }
        );
        assert_eq!(
            close(&[5, 0]),
            Action::Close {
                reply: vec![5, 0xFF],
                reason: Reject::NoAcceptableMethod
            }
        );
        // Wrong password, wrong user, empty fields, wrong sub-negotiation version.
        for auth in [
            encode_auth(USER, "wrong").unwrap(),
            encode_auth("someone", PASS).unwrap(),
            encode_auth(USER, &format!("{PASS}x")).unwrap(),
            encode_auth(&"x".repeat(255), &"y".repeat(255)).unwrap(),
        ] {
            let mut input = vec![5, 1, 2];
            input.extend(auth);
            assert_eq!(
                close(&input),
                Action::Close {
                    reply: vec![1, 1],
                    reason: Reject::BadCredentials
                }
            );
        }
        for bad in [
            vec![1u8, 0, 1, b'x'],
            vec![1, 1, b'x', 0],
            vec![5, 1, b'x', 1, b'y'],
        ] {
            let mut input = vec![5, 1, 2];
            input.extend(bad);
            assert_eq!(
                close(&input),
                Action::Close {
                    reply: vec![1, 1],
                    reason: Reject::BadAuthRequest
                }
            );
        }
        let req = |bytes: &[u8]| {
            let mut v = good_prefix();
            v.extend(bytes);
            v
        };
        // BIND and UDP ASSOCIATE.
        for cmd in [2u8, 3, 0, 0xFF] {
            assert_eq!(
                close(&req(&[5, cmd, 0, 1, 127, 0, 0, 1, 0, 80])),
                Action::Close {
                    reply: rep(Reply::CommandNotSupported),
                    reason: Reject::UnsupportedCommand
                }
            );
        }
        assert_eq!(
            close(&req(&[5, 2])),
            Action::Close {
                reply: rep(Reply::CommandNotSupported),
                reason: Reject::UnsupportedCommand
            },
            "known from two bytes"
        );
        for atyp in [0u8, 2, 5, 0xFF] {
            assert_eq!(
                close(&req(&[5, 1, 0, atyp, 1, 2, 3, 4, 5, 6])),
                Action::Close {
                    reply: rep(Reply::AddressTypeNotSupported),
                    reason: Reject::UnsupportedAddressType
                }
            );
        }
        // Empty, non-UTF-8 and NUL-carrying domain names.
        for name in [&b""[..], &[0xFF, 0xFE][..], &b"a\0b"[..]] {
            let mut r = vec![5, 1, 0, 3, name.len() as u8];
            r.extend(name);
            r.extend([0, 80]);
            assert_eq!(
                close(&req(&r)),
                Action::Close {
                    reply: rep(Reply::HostUnreachable),
                    reason: Reject::BadRequest
                }
            );
        }
        assert_eq!(
            close(&req(&[4, 1, 0, 1])),
            Action::Close {
                reply: rep(Reply::GeneralFailure),
                reason: Reject::BadRequest
            }
        );
    }

    #[test]
    fn longest_domain_and_incomplete_messages() {
        let name = "a".repeat(255);
        let mut input = good_prefix();
        input.extend(encode_connect(&TargetAddr::Domain(name.clone(), 1)));
        let (actions, _) = drive(&input, &[1]);
        assert_eq!(
            actions.last(),
            Some(&Action::Connect(TargetAddr::Domain(name, 1)))
        );
        // Every strict prefix of a valid negotiation just asks for more.
        for cut in 0..input.len() {
            let (actions, _) = drive(&input[..cut], &[7]);
            assert!(
                actions.iter().all(|a| matches!(a, Action::Send(_))),
                "{cut}: {actions:?}"
            );
        }
    }

    #[test]
    fn after_the_end_everything_is_refused() {
        let mut h = hs();
        assert!(matches!(h.handle_input(&[9]).1, Action::Close { .. }));
        assert!(h.is_done());
        assert_eq!(
            h.handle_input(&good_prefix()),
            (
                0,
                Action::Close {
                    reply: vec![],
                    reason: Reject::Finished
                }
            )
        );
    }

    #[test]
    fn reply_codes_from_io_errors_and_replies_parse_back() {
        use io::ErrorKind::*;
        for (kind, rep) in [
            (ConnectionRefused, Reply::ConnectionRefused),
            (HostUnreachable, Reply::HostUnreachable),
            (NetworkUnreachable, Reply::NetworkUnreachable),
            (TimedOut, Reply::HostUnreachable),
            (PermissionDenied, Reply::NotAllowed),
            (NotFound, Reply::HostUnreachable),
            (Other, Reply::GeneralFailure),
        ] {
            assert_eq!(Reply::from_io(&io::Error::from(kind)), rep);
            let bytes = failure_reply(rep);
            let (r, _, n) = parse_reply(&bytes).unwrap().unwrap();
            assert_eq!((r, n), (rep, bytes.len()));
            assert_eq!(parse_reply(&bytes[..bytes.len() - 1]), Ok(None));
        }
        let ok = encode_reply(Reply::Succeeded, "[::1]:9".parse().unwrap());
        assert_eq!(
            parse_reply(&ok).unwrap().unwrap().1,
            TargetAddr::Ip("[::1]:9".parse().unwrap())
        );
        assert_eq!(parse_reply(&[5, 9, 0, 1]), Err(MalformedReply));
        assert_eq!(parse_reply(&[4, 0, 0, 1]), Err(MalformedReply));
    }

    #[test]
    fn debug_hides_the_password() {
        assert!(!format!("{:?}", hs()).contains(PASS));
    }

    fn target() -> impl Strategy<Value = TargetAddr> {
        prop_oneof![
            any::<(u32, u16)>()
                .prop_map(|(ip, p)| TargetAddr::Ip(SocketAddr::from((Ipv4Addr::from(ip), p)))),
            any::<(u128, u16)>()
                .prop_map(|(ip, p)| TargetAddr::Ip(SocketAddr::from((Ipv6Addr::from(ip), p)))),
            ("[a-z][a-z0-9.-]{0,254}", any::<u16>()).prop_map(|(h, p)| TargetAddr::Domain(h, p)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Garbage never panics, never makes the machine use more than it was
        /// given, and always ends within the bytes a negotiation can take.
        #[test]
        fn garbage_is_handled(input in proptest::collection::vec(any::<u8>(), 0..1200),
                              chunks in proptest::collection::vec(1usize..64, 1..8)) {
            let (actions, _) = drive(&input, &chunks);
            let ended = matches!(actions.last(), Some(Action::Close { .. } | Action::Connect(_)));
            // Three messages of at most MAX_MESSAGE bytes: beyond that it must have ended.
            if input.len() >= 3 * MAX_MESSAGE {
                prop_assert!(ended);
            }
            prop_assert!(actions.len() <= 3);
        }

        /// Garbage after a valid greeting and login too.
        #[test]
        fn garbage_after_login(tail in proptest::collection::vec(any::<u8>(), 0..400),
                               chunks in proptest::collection::vec(1usize..32, 1..8)) {
            let mut input = good_prefix();
            input.extend(&tail);
            let (actions, _) = drive(&input, &chunks);
            prop_assert_eq!(&actions[..2], &[Action::Send(vec![5, 2]), Action::Send(vec![1, 0])]);
        }

        /// The same input split differently gives the same actions and the same early data.
        #[test]
        fn split_does_not_matter(t in target(), early in proptest::collection::vec(any::<u8>(), 0..64),
                                 chunks in proptest::collection::vec(1usize..40, 1..10)) {
            let mut input = good_prefix();
            input.extend(encode_connect(&t));
            input.extend(&early);
            let whole = drive(&input, &[input.len()]);
            let split = drive(&input, &chunks);
            prop_assert_eq!(&whole, &split);
            prop_assert_eq!(whole.0.last(), Some(&Action::Connect(t)));
            prop_assert_eq!(whole.1, early);
        }

        #[test]
        fn target_parse_roundtrip(t in target()) {
            let text = match &t {
                TargetAddr::Ip(a) => a.to_string(),
                TargetAddr::Domain(h, p) => format!("{h}:{p}"),
            };
            prop_assert_eq!(TargetAddr::parse(&text), Some(t));
        }
    }
}
