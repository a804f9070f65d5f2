//! Nodes: what the store holds, and the validated input that creates one.

use std::fmt;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Secret, Status};

/// The store's identifier of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct NodeId(pub i64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Where a node is and what the operator wrote about it: the six descriptive
/// fields (provider, country, state, city, postal code, comment) that imports
/// parse, filters match, views show and edits patch. They never affect a
/// node's identity or status and may be edited freely. The postal code is
/// `zipcode` here, in the store and in filters (`zip` on the command line and
/// in HTTP bodies).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Location {
    /// The seller or ISP.
    pub provider: Option<String>,
    /// Country name (codes are expanded on import).
    pub country: Option<String>,
    /// State or region name.
    pub state: Option<String>,
    /// City.
    pub city: Option<String>,
    /// Postal code.
    pub zipcode: Option<String>,
    /// Free text.
    pub comment: Option<String>,
}

/// A node's descriptive fields: its [`Location`] (the name they had first, kept
/// so existing code reads on).
pub type NodeMeta = Location;

impl Location {
    /// Longest provider, country, state or city name, in characters.
    pub const MAX_NAME: usize = 128;
    /// Longest postal code, in characters.
    pub const MAX_ZIP: usize = 16;
    /// Longest comment, in characters.
    pub const MAX_COMMENT: usize = 1024;

    /// Checks the limits every way of writing a node shares (import, `POST
    /// /nodes`, `PATCH`, `connexa nodes edit`): names at most
    /// [`NodeMeta::MAX_NAME`] characters, the zip code at most
    /// [`NodeMeta::MAX_ZIP`], the comment at most [`NodeMeta::MAX_COMMENT`], and
    /// no control characters (they would reach operators' terminals) except
    /// line breaks and tabs in the comment.
    ///
    /// ```
    /// use connexa_core::domain::{InvalidNode, NodeMeta};
    /// let m = NodeMeta { zipcode: Some("7".repeat(300)), ..NodeMeta::default() };
    /// assert_eq!(m.check(), Err(InvalidNode::TooLong { field: "zipcode", max: NodeMeta::MAX_ZIP }));
    /// ```
    pub fn check(&self) -> Result<(), InvalidNode> {
        let fields = [
            ("provider", &self.provider, Self::MAX_NAME),
            ("country", &self.country, Self::MAX_NAME),
            ("state", &self.state, Self::MAX_NAME),
            ("city", &self.city, Self::MAX_NAME),
            ("zipcode", &self.zipcode, Self::MAX_ZIP),
        ];
        for (field, value, max) in fields {
            if let Some(v) = value {
                check_text(field, v, max)?;
            }
        }
        if let Some(c) = &self.comment {
            // A comment may span lines (CSV cells do); nothing else is allowed.
            let other = c.replace(['\n', '\r', '\t'], " ");
            check_text("comment", &other, Self::MAX_COMMENT)?;
        }
        Ok(())
    }
}

/// What kind of service runs through a node (the desired kind, chosen with
/// `connexa service start --kind`; SOCKS5 unless said otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ServiceKind {
    /// A SOCKS5 listener whose connections go through the node's tunnel.
    #[default]
    Socks,
    /// The node's tunnel as a kernel TUN interface (`cx<node id>`) on the
    /// Connexa host: whole IPv4 packets to and from the PPP link.
    Tun,
    /// An OpenVPN server (Debian's `openvpn`) whose clients' traffic leaves
    /// through the node's tunnel (a `tun` interface, a policy-routing rule and
    /// source NAT to the PPP address); clients get an `.ovpn` profile.
    Openvpn,
}

impl ServiceKind {
    /// The stored name: `socks`, `tun` or `openvpn`.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceKind::Socks => "socks",
            ServiceKind::Tun => "tun",
            ServiceKind::Openvpn => "openvpn",
        }
    }
}

impl std::fmt::Display for ServiceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ServiceKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "socks" => Ok(ServiceKind::Socks),
            "tun" => Ok(ServiceKind::Tun),
            "openvpn" => Ok(ServiceKind::Openvpn),
            other => Err(format!(
                "unknown service kind {other:?} (expected socks, tun or openvpn)"
            )),
        }
    }
}

/// A running service's address and credentials. For a SOCKS5 service: the
/// listener and its RFC 1929 login. For a `tun` service: `host` is the
/// interface name (`cx<node id>`), `port` is 0 and there are no credentials.
/// For an `openvpn` service: `host` and `port` are what clients connect to
/// (UDP), `username` is [`OPENVPN_USER_PREFIX`] and the client subnet
/// (`openvpn:10.201.3.0/24`), and `password` holds the client certificate and
/// key of its profile (PEM; sealed at rest like SOCKS5 passwords).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEndpoint {
    /// The address the listener is bound to (an IP or host name clients use).
    pub host: String,
    /// The TCP port.
    pub port: u16,
    /// RFC 1929 user name.
    pub username: String,
    /// RFC 1929 password.
    pub password: Secret,
}

/// The `username` prefix of an `openvpn` service's endpoint.
pub const OPENVPN_USER_PREFIX: &str = "openvpn:";

impl ServiceEndpoint {
    /// The kind of service this endpoint belongs to: `tun` when `port` is 0,
    /// `openvpn` when `username` starts with [`OPENVPN_USER_PREFIX`] (SOCKS5
    /// user names are letters and digits), `socks` otherwise.
    pub fn kind(&self) -> ServiceKind {
        if self.port == 0 {
            ServiceKind::Tun
        } else if self.username.starts_with(OPENVPN_USER_PREFIX) {
            ServiceKind::Openvpn
        } else {
            ServiceKind::Socks
        }
    }
}

/// What the PPTP server said about itself in its Start-Control-Connection-Reply.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PptpIdentity {
    /// Protocol version (0x0100 for RFC 2637).
    pub protocol_version: u16,
    /// Host name field (64 bytes on the wire, NUL-trimmed).
    pub hostname: String,
    /// Vendor field (64 bytes on the wire, NUL-trimmed).
    pub vendor: String,
    /// Firmware revision.
    pub firmware: u16,
}

/// A node as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Store identifier.
    pub id: NodeId,
    /// Server address.
    pub ip: IpAddr,
    /// PPTP control port (1723 by default).
    pub port: u16,
    /// PPTP login.
    pub login: String,
    /// PPTP password (redacted in `Debug`).
    pub password: Secret,
    /// Descriptive fields.
    pub meta: NodeMeta,
    /// Current status; changed only through `NodeStore::apply`.
    pub status: Status,
    /// When the last test finished.
    pub last_checked_at: Option<DateTime<Utc>>,
    /// Why the last test or service action failed, if it did.
    pub last_error: Option<String>,
    /// Failed tests/health checks in a row since the last success.
    pub consecutive_failures: u32,
    /// Latency in milliseconds (ICMP, or the PPTP handshake when ICMP is unavailable).
    pub ping_ms: Option<f64>,
    /// Download goodput through the tunnel, Mbit/s.
    pub speed_down_mbps: Option<f64>,
    /// Upload goodput through the tunnel, Mbit/s.
    pub speed_up_mbps: Option<f64>,
    /// What the server said about itself.
    pub pptp: Option<PptpIdentity>,
    /// The address the node's traffic leaves from, as the keyed speed
    /// endpoint saw it in the last speed test that recorded one (websites see
    /// this address; it may differ from [`Node::ip`]).
    pub exit_ip: Option<IpAddr>,
    /// The running SOCKS5 service, if any.
    pub service: Option<ServiceEndpoint>,
    /// Desired state: should a service run through this node?
    pub service_wanted: bool,
    /// Desired state: which kind of service (SOCKS5 by default).
    pub service_kind: ServiceKind,
    /// GEO and fraud lookups of its address (never part of its status).
    pub enrichment: super::Enrichment,
    /// When the node was added.
    pub created_at: DateTime<Utc>,
    /// When any field last changed.
    pub updated_at: DateTime<Utc>,
}

impl Node {
    /// The node as a store holds it right after adding it: `not_tested`, no
    /// evidence, no service wanted, created and updated at `at`. For stores of
    /// your own and for tests; the values are taken as given (validate operator
    /// input with [`NewNode::new`]).
    ///
    /// ```
    /// use connexa_core::domain::{Node, NodeId, Secret, Status};
    /// let n = Node::added(NodeId(1), "127.0.0.1".parse()?, 1723, "user", Secret::new("pw"), chrono::Utc::now());
    /// assert_eq!(n.status, Status::NotTested);
    /// assert!(n.service.is_none() && !n.service_wanted);
    /// # Ok::<(), std::net::AddrParseError>(())
    /// ```
    pub fn added(
        id: NodeId,
        ip: IpAddr,
        port: u16,
        login: impl Into<String>,
        password: Secret,
        at: DateTime<Utc>,
    ) -> Node {
        Node {
            id,
            ip,
            port,
            login: login.into(),
            password,
            meta: NodeMeta::default(),
            status: Status::NotTested,
            last_checked_at: None,
            last_error: None,
            consecutive_failures: 0,
            ping_ms: None,
            speed_down_mbps: None,
            speed_up_mbps: None,
            pptp: None,
            exit_ip: None,
            service: None,
            service_wanted: false,
            service_kind: ServiceKind::Socks,
            enrichment: super::Enrichment::default(),
            created_at: at,
            updated_at: at,
        }
    }
}

/// Why a [`NewNode`] could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidNode {
    /// The address is not an IPv4 or IPv6 address.
    #[error("invalid IP address {given:?}")]
    BadIp {
        /// The text given.
        given: String,
    },
    /// The address parses but cannot be a server (unspecified, multicast, broadcast).
    #[error("IP address {ip} cannot be a PPTP server (unspecified, multicast or broadcast)")]
    UnusableIp {
        /// The address.
        ip: IpAddr,
    },
    /// The port is outside 1..=65535.
    #[error("port {given} is out of range (1-65535)")]
    BadPort {
        /// The number given.
        given: u64,
    },
    /// The login is empty (or only white space).
    #[error("missing login")]
    EmptyLogin,
    /// A field is longer than PPTP/MS-CHAPv2 allows.
    #[error("{field} is longer than {max} characters")]
    TooLong {
        /// Which field.
        field: &'static str,
        /// The limit.
        max: usize,
    },
    /// A field holds a control character (a line break, a NUL...).
    #[error("{field} contains a control character")]
    ControlCharacter {
        /// Which field.
        field: &'static str,
    },
}

/// A validated node ready to be inserted. Build one with [`NewNode::new`].
///
/// Identity (`ip`, `port`, `login`, `password`) is fixed once built: different
/// credentials are a different node.
///
/// ```
/// use connexa_core::domain::{NewNode, InvalidNode};
/// let n = NewNode::new("198.51.100.23", 1723, "admin", "admin").unwrap();
/// assert_eq!(n.port(), 1723);
/// assert_eq!(NewNode::new("198.51.100.300", 1723, "a", "b").unwrap_err(),
///            InvalidNode::BadIp { given: "198.51.100.300".into() });
/// assert_eq!(NewNode::new("198.51.100.3", 1723, "  ", "b").unwrap_err(), InvalidNode::EmptyLogin);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct NewNode {
    ip: IpAddr,
    port: u16,
    login: String,
    password: Secret,
    /// Descriptive fields (free to set).
    pub meta: NodeMeta,
    /// A fraud score the seller's list states (format 5's `Scamalytics Fraud
    /// Score:` and `Scamalytics Risk:` lines): stored as the node's fraud
    /// record (provider `seller:scamalytics`) when the node is added.
    pub seller_fraud: Option<(u8, super::Risk)>,
}

/// The PPTP control port.
pub const DEFAULT_PORT: u16 = 1723;
/// Longest login accepted (MS-CHAPv2 user names are at most 256 characters).
pub const MAX_LOGIN: usize = 256;
/// Longest password accepted (MS-CHAPv2 passwords are at most 256 Unicode characters).
pub const MAX_PASSWORD: usize = 256;

impl NewNode {
    /// Validates and builds a node. `ip` may carry surrounding white space; `port`
    /// is taken as a wide integer so that out-of-range input is reported, not truncated.
    pub fn new(ip: &str, port: u64, login: &str, password: &str) -> Result<Self, InvalidNode> {
        let ip_text = ip.trim();
        let ip: IpAddr = ip_text.parse().map_err(|_| InvalidNode::BadIp {
            given: ip_text.to_owned(),
        })?;
        let unusable = ip.is_unspecified()
            || ip.is_multicast()
            || matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
        if unusable {
            return Err(InvalidNode::UnusableIp { ip });
        }
        let port = u16::try_from(port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or(InvalidNode::BadPort { given: port })?;
        let login = login.trim();
        if login.is_empty() {
            return Err(InvalidNode::EmptyLogin);
        }
        check_text("login", login, MAX_LOGIN)?;
        check_text("password", password, MAX_PASSWORD)?;
        Ok(NewNode {
            ip,
            port,
            login: login.to_owned(),
            password: Secret::new(password),
            meta: NodeMeta::default(),
            seller_fraud: None,
        })
    }

    /// Sets the descriptive fields.
    pub fn with_meta(mut self, meta: NodeMeta) -> Self {
        self.meta = meta;
        self
    }

    /// Server address.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }
    /// Control port.
    pub fn port(&self) -> u16 {
        self.port
    }
    /// Login.
    pub fn login(&self) -> &str {
        &self.login
    }
    /// Password.
    pub fn password(&self) -> &Secret {
        &self.password
    }
}

fn check_text(field: &'static str, value: &str, max: usize) -> Result<(), InvalidNode> {
    if value.chars().count() > max {
        return Err(InvalidNode::TooLong { field, max });
    }
    if value.chars().any(char::is_control) {
        return Err(InvalidNode::ControlCharacter { field });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_nodes() {
        let n = NewNode::new(" 203.0.113.7 ", 1723, " admin ", "p:ss w").unwrap();
        assert_eq!(n.ip().to_string(), "203.0.113.7");
        assert_eq!(n.login(), "admin");
        assert_eq!(n.password().expose(), "p:ss w");
        assert!(NewNode::new("2001:db8::1", 65535, "u", "").is_ok());
    }

    #[test]
    fn invalid_nodes_are_error_values() {
        use InvalidNode::*;
        let cases: Vec<(&str, u64, &str, &str, InvalidNode)> = vec![
            (
                "1.2.3",
                1723,
                "a",
                "b",
                BadIp {
                    given: "1.2.3".into(),
                },
            ),
            ("", 1723, "a", "b", BadIp { given: "".into() }),
            (
                "0.0.0.0",
                1723,
                "a",
                "b",
                UnusableIp {
                    ip: "0.0.0.0".parse().unwrap(),
                },
            ),
            (
                "255.255.255.255",
                1723,
                "a",
                "b",
                UnusableIp {
                    ip: "255.255.255.255".parse().unwrap(),
                },
            ),
            (
                "224.0.0.1",
                1723,
                "a",
                "b",
                UnusableIp {
                    ip: "224.0.0.1".parse().unwrap(),
                },
            ),
            ("1.2.3.4", 0, "a", "b", BadPort { given: 0 }),
            ("1.2.3.4", 65536, "a", "b", BadPort { given: 65536 }),
            ("1.2.3.4", u64::MAX, "a", "b", BadPort { given: u64::MAX }),
            ("1.2.3.4", 1723, "", "b", EmptyLogin),
            (
                "1.2.3.4",
                1723,
                "a\nb",
                "b",
                ControlCharacter { field: "login" },
            ),
            (
                "1.2.3.4",
                1723,
                "a",
                "b\0",
                ControlCharacter { field: "password" },
            ),
        ];
        for (ip, port, login, pass, want) in cases {
            assert_eq!(
                NewNode::new(ip, port, login, pass).unwrap_err(),
                want,
                "{ip} {port} {login:?}"
            );
        }
        let long = "x".repeat(MAX_PASSWORD + 1);
        assert_eq!(
            NewNode::new("1.2.3.4", 1723, "a", &long).unwrap_err(),
            TooLong {
                field: "password",
                max: MAX_PASSWORD
            }
        );
    }

    #[test]
    fn debug_never_shows_the_password() {
        let n = NewNode::new("1.2.3.4", 1723, "a", "topsecret").unwrap();
        assert!(!format!("{n:?}").contains("topsecret"));
    }
}
