//! `openvpn` services: Debian's `openvpn` server per service, whose clients'
//! traffic leaves through the node's PPTP tunnel — a phone, a laptop or a
//! router connects with a standard OpenVPN client and an `.ovpn` profile.
//!
//! [`OpenvpnLauncher`] is a [`ServiceLauncher`](crate::ports::ServiceLauncher)
//! built on the [`tun`](crate::tun) launcher. Per service (node `7`):
//!
//! * the node's tunnel as the interface `cx7` (a [`TunLauncher`](crate::tun::TunLauncher));
//! * one `openvpn` server process (`--config <dir>/services/7/server.conf`),
//!   UDP, its own port from `[services] openvpn_ports` and its own client
//!   subnet (a `/24` of `[services] openvpn_subnets`) and its own TUN device
//!   `<tun_prefix>v<id>` (`cxv7`);
//! * a policy-routing rule `from <subnet> lookup <table>` (priority
//!   [`OpenvpnConfig::rule_priority`], table [`OpenvpnConfig::table_base`] +
//!   node id) whose table routes `default dev cx7`, and nowhere
//!   (`unreachable`) when the tunnel is gone;
//! * source NAT of the subnet to the PPP local address, and filters keeping
//!   the clients to the tunnel and off the host, in an nftables table of its
//!   own, `ip connexa_ovpn_7` (`nft`); IPv4 forwarding on `cx7` and `cxv7`
//!   only (`net.ipv4.conf.<if>.forwarding`; the host switch is not touched);
//! * a server started as root runs as `nobody` once it is up;
//! * lock files (`<dir>/locks/`) for its port, subnet and service, so that
//!   processes sharing the directory on one host never collide.
//!
//! Everything is removed on stop (process, nft table, rule, routing table,
//! interfaces, the service's directory). A crashed run's leftovers are found by
//! these names (pid file and config path, table name, table number) and
//! removed before the service starts again; those of services no longer
//! started here, once per launcher ([`OpenvpnLauncher::sweep_orphans`]).
//!
//! The PKI ([`pki`]) is `rcgen`'s: one CA kept in the data directory
//! (`ca.pem`, `ca.key` mode 0600), a server certificate made at every start
//! and one client certificate per service, stored in the endpoint (sealed at
//! rest like SOCKS5 passwords). The client certificate is kept while the
//! service is restored (process restart, restart request, health relaunch) and
//! replaced when the service is started again after a stop: the server
//! accepts only the current client's common name (`verify-x509-name`), so an
//! old profile is refused. A stored client certificate that this host's CA
//! did not issue (a service moved from a host with other CA files) is
//! replaced too.

mod launcher;
mod net;
pub mod pki;

use std::net::{IpAddr, Ipv4Addr};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

pub use launcher::OpenvpnLauncher;

use crate::domain::{NodeId, OPENVPN_USER_PREFIX, ServiceEndpoint};
use crate::tun::TunConfig;

/// The data ciphers servers and profiles allow.
pub const DATA_CIPHERS: &str = "AES-256-GCM:CHACHA20-POLY1305";

/// Errors of the `openvpn` settings and profiles.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenvpnError {
    /// A port range is not `LOW-HIGH` with `1 <= LOW <= HIGH <= 65535`.
    #[error("invalid port range {0:?} (expected LOW-HIGH, e.g. 1194-1293)")]
    PortRange(String),
    /// A subnet pool is not an IPv4 network of prefix length 8 to 24.
    #[error(
        "invalid subnet pool {0:?} (expected an IPv4 network from /8 to /24, e.g. 10.201.0.0/16)"
    )]
    SubnetPool(String),
    /// The endpoint is not an `openvpn` service's.
    #[error("not an openvpn service's endpoint")]
    NotOpenvpn,
    /// The stored client credentials cannot be read.
    #[error("the stored client certificate is unreadable: {0}")]
    Credentials(String),
    /// The CA cannot be read or created.
    #[error("the OpenVPN CA: {0}")]
    Ca(String),
}

/// Settings of an [`OpenvpnLauncher`] (`[services]` `openvpn_*` keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenvpnConfig {
    /// The node's tunnel interface (`<prefix><id>`); the openvpn server's own
    /// device is `<prefix>v<id>`.
    pub tun: TunConfig,
    /// Where the CA and the services' files live.
    pub dir: PathBuf,
    /// The `openvpn` program (a bare name is looked up in `PATH`).
    pub openvpn: PathBuf,
    /// The `nft` program.
    pub nft: PathBuf,
    /// The `ip` program.
    pub ip: PathBuf,
    /// UDP ports given to services.
    pub ports: RangeInclusive<u16>,
    /// The pool of client subnets, split into `/24`s: (network, prefix length).
    pub subnets: (Ipv4Addr, u8),
    /// The address the servers listen on.
    pub bind: IpAddr,
    /// What profiles name in `remote` (default: `bind`).
    pub public_host: Option<String>,
    /// Routing table of node `id` is `table_base + id`.
    pub table_base: u32,
    /// Priority of the policy-routing rules.
    pub rule_priority: u32,
    /// How long a server may take to report "Initialization Sequence Completed".
    pub start_timeout: Duration,
}

impl Default for OpenvpnConfig {
    fn default() -> Self {
        OpenvpnConfig {
            tun: TunConfig::default(),
            dir: "connexa-openvpn".into(),
            openvpn: "openvpn".into(),
            nft: "nft".into(),
            ip: "ip".into(),
            ports: 1194..=1293,
            subnets: (Ipv4Addr::new(10, 201, 0, 0), 16),
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            public_host: None,
            table_base: 1_000_000,
            rule_priority: 9_000,
            start_timeout: Duration::from_secs(20),
        }
    }
}

impl OpenvpnConfig {
    /// What profiles name in `remote`.
    pub fn host(&self) -> String {
        self.public_host
            .clone()
            .unwrap_or_else(|| self.bind.to_string())
    }

    /// The `/24` client subnets of the pool, in order.
    pub fn subnet_list(&self) -> Vec<Ipv4Addr> {
        let (base, len) = self.subnets;
        let count = 1u32 << (24 - u32::from(len.clamp(8, 24)));
        let start = u32::from(base) & !((1u32 << (32 - u32::from(len.clamp(8, 24)))) - 1);
        (0..count)
            .map(|i| Ipv4Addr::from(start + (i << 8)))
            .collect()
    }

    /// The routing table of `node`'s service.
    pub fn table(&self, node: NodeId) -> u32 {
        let id = u32::try_from(node.0).unwrap_or(u32::MAX);
        self.table_base.saturating_add(id)
    }
}

/// Parses a port range `LOW-HIGH` (or a single port).
pub fn parse_port_range(s: &str) -> Result<RangeInclusive<u16>, OpenvpnError> {
    let bad = || OpenvpnError::PortRange(s.to_string());
    let (lo, hi) = s.split_once('-').unwrap_or((s, s));
    let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
    let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
    if lo == 0 || lo > hi {
        return Err(bad());
    }
    Ok(lo..=hi)
}

/// Parses a subnet pool `A.B.C.D/LEN` (`8 <= LEN <= 24`, host bits zero).
pub fn parse_subnet_pool(s: &str) -> Result<(Ipv4Addr, u8), OpenvpnError> {
    let bad = || OpenvpnError::SubnetPool(s.to_string());
    let (addr, len) = s.trim().split_once('/').ok_or_else(bad)?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    if !(8..=24).contains(&len) || u32::from(addr) & ((1u32 << (32 - u32::from(len))) - 1) != 0 {
        return Err(bad());
    }
    Ok((addr, len))
}

/// The nftables table of `node`'s service (`ip connexa_ovpn_<id>`).
pub fn nft_table(node: NodeId) -> String {
    format!("connexa_ovpn_{}", node.0)
}

/// The server's common name for `node` (profiles check it: `verify-x509-name`).
pub fn server_name(node: NodeId) -> String {
    format!("connexa-ovpn-server-{}", node.0)
}

/// What an `openvpn` endpoint carries besides host and port: the client
/// subnet and the client's certificate and key.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientCredentials {
    /// The client subnet (a `/24`).
    pub subnet: Ipv4Addr,
    /// The client certificate's common name (the server accepts only it).
    pub common_name: String,
    /// The client certificate, PEM.
    pub cert_pem: String,
    /// The client's private key, PEM.
    pub key_pem: String,
}

impl std::fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("subnet", &self.subnet)
            .field("common_name", &self.common_name)
            .finish_non_exhaustive()
    }
}

impl ClientCredentials {
    /// The endpoint of a service at `host:port` with these credentials.
    pub fn endpoint(&self, host: String, port: u16) -> ServiceEndpoint {
        ServiceEndpoint {
            host,
            port,
            username: format!("{OPENVPN_USER_PREFIX}{}/24", self.subnet),
            password: crate::domain::Secret::new(format!(
                "cn={}\n{}{}",
                self.common_name, self.cert_pem, self.key_pem
            )),
        }
    }

    /// The credentials stored in an `openvpn` endpoint.
    pub fn from_endpoint(ep: &ServiceEndpoint) -> Result<Self, OpenvpnError> {
        let subnet = ep
            .username
            .strip_prefix(OPENVPN_USER_PREFIX)
            .ok_or(OpenvpnError::NotOpenvpn)?;
        let subnet: Ipv4Addr = subnet
            .strip_suffix("/24")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| OpenvpnError::Credentials(format!("subnet {subnet:?}")))?;
        let secret = ep.password.expose();
        let bad = |what: &str| OpenvpnError::Credentials(what.to_string());
        let (first, rest) = secret
            .split_once('\n')
            .ok_or_else(|| bad("no common name"))?;
        let common_name = first
            .strip_prefix("cn=")
            .ok_or_else(|| bad("no common name"))?;
        const CERT_END: &str = "-----END CERTIFICATE-----";
        let end = rest.find(CERT_END).ok_or_else(|| bad("no certificate"))? + CERT_END.len();
        let (cert, key) = rest.split_at(end);
        let key = key.trim_start_matches(['\r', '\n']);
        if !cert.starts_with("-----BEGIN CERTIFICATE-----") || !key.starts_with("-----BEGIN") {
            return Err(bad("malformed PEM"));
        }
        Ok(ClientCredentials {
            subnet,
            common_name: common_name.to_string(),
            cert_pem: format!("{cert}\n"),
            key_pem: key.to_string(),
        })
    }
}

/// The client profile (`.ovpn`) of `node`'s service at `endpoint`, with the
/// CA certificate `ca_pem`: everything inline, UDP, TLS 1.2 or newer, AEAD
/// data ciphers only, the server's certificate checked (server usage and
/// common name).
pub fn profile(
    node: NodeId,
    endpoint: &ServiceEndpoint,
    ca_pem: &str,
) -> Result<String, OpenvpnError> {
    let c = ClientCredentials::from_endpoint(endpoint)?;
    let mut p = String::new();
    p.push_str(&format!(
        "# Connexa: OpenVPN access through node {node} (client subnet {}/24)\n",
        c.subnet
    ));
    p.push_str("client\ndev tun\nproto udp\n");
    p.push_str(&format!("remote {} {} udp\n", endpoint.host, endpoint.port));
    p.push_str("nobind\nresolv-retry infinite\npersist-key\npersist-tun\n");
    p.push_str("remote-cert-tls server\n");
    p.push_str(&format!("verify-x509-name {} name\n", server_name(node)));
    p.push_str("tls-version-min 1.2\n");
    p.push_str(&format!("data-ciphers {DATA_CIPHERS}\n"));
    p.push_str("auth SHA256\nverb 3\n");
    p.push_str(&format!("<ca>\n{}</ca>\n", with_newline(ca_pem)));
    p.push_str(&format!("<cert>\n{}</cert>\n", with_newline(&c.cert_pem)));
    p.push_str(&format!("<key>\n{}</key>\n", with_newline(&c.key_pem)));
    Ok(p)
}

fn with_newline(s: &str) -> String {
    if s.ends_with('\n') {
        s.to_string()
    } else {
        format!("{s}\n")
    }
}

/// The CA certificate (PEM) kept in `dir`, for profiles made by a process
/// that does not run the service (the CLI, connexa-http).
pub fn ca_certificate(dir: &std::path::Path) -> Result<String, OpenvpnError> {
    std::fs::read_to_string(dir.join(pki::CA_CERT)).map_err(|e| {
        OpenvpnError::Ca(format!(
            "cannot read {}: {e}",
            dir.join(pki::CA_CERT).display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_pools_parse_and_split() {
        assert_eq!(parse_port_range("1194-1293"), Ok(1194..=1293));
        assert_eq!(parse_port_range("1194"), Ok(1194..=1194));
        for bad in ["", "0-3", "9-8", "a-b", "1-70000"] {
            assert!(parse_port_range(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_subnet_pool("10.201.0.0/16"),
            Ok((Ipv4Addr::new(10, 201, 0, 0), 16))
        );
        for bad in [
            "10.201.0.0",
            "10.201.0.1/16",
            "10.0.0.0/25",
            "10.0.0.0/7",
            "x/16",
        ] {
            assert!(parse_subnet_pool(bad).is_err(), "{bad}");
        }
        let c = OpenvpnConfig {
            subnets: parse_subnet_pool("10.201.0.0/22").unwrap(),
            ..OpenvpnConfig::default()
        };
        assert_eq!(
            c.subnet_list(),
            vec![
                Ipv4Addr::new(10, 201, 0, 0),
                Ipv4Addr::new(10, 201, 1, 0),
                Ipv4Addr::new(10, 201, 2, 0),
                Ipv4Addr::new(10, 201, 3, 0)
            ]
        );
        assert_eq!(OpenvpnConfig::default().subnet_list().len(), 256);
        assert_eq!(OpenvpnConfig::default().table(NodeId(7)), 1_000_007);
    }

    #[test]
    fn credentials_round_trip_through_the_endpoint() {
        let ca = pki::Ca::generate().unwrap();
        let c = ca
            .issue_client(NodeId(7), Ipv4Addr::new(10, 201, 3, 0))
            .unwrap();
        let ep = c.endpoint("vpn.example".into(), 1195);
        assert_eq!(ep.kind(), crate::domain::ServiceKind::Openvpn);
        assert_eq!(ep.username, "openvpn:10.201.3.0/24");
        assert_eq!(ClientCredentials::from_endpoint(&ep).unwrap(), c);
        // Secrets stay out of Debug.
        assert!(!format!("{c:?}").contains("BEGIN"));
        let socks = ServiceEndpoint {
            host: "h".into(),
            port: 1,
            username: "u".into(),
            password: crate::domain::Secret::new("p"),
        };
        assert_eq!(
            ClientCredentials::from_endpoint(&socks),
            Err(OpenvpnError::NotOpenvpn)
        );
    }

    #[test]
    fn profile_is_inline_and_modern() {
        let ca = pki::Ca::generate().unwrap();
        let c = ca
            .issue_client(NodeId(7), Ipv4Addr::new(10, 201, 3, 0))
            .unwrap();
        let ep = c.endpoint("vpn.example".into(), 1195);
        let p = profile(NodeId(7), &ep, &ca.cert_pem).unwrap();
        for line in [
            "client",
            "remote vpn.example 1195 udp",
            "remote-cert-tls server",
            "verify-x509-name connexa-ovpn-server-7 name",
            "tls-version-min 1.2",
            "data-ciphers AES-256-GCM:CHACHA20-POLY1305",
        ] {
            assert!(p.lines().any(|l| l == line), "{line:?} missing:\n{p}");
        }
        let inner = |tag: &str| {
            let open = format!("<{tag}>\n");
            let close = format!("</{tag}>");
            let a = p.find(&open).unwrap() + open.len();
            let b = p.find(&close).unwrap();
            p[a..b].to_string()
        };
        assert_eq!(inner("ca"), ca.cert_pem);
        assert_eq!(inner("cert"), c.cert_pem);
        assert_eq!(inner("key"), c.key_pem);
        assert!(inner("key").starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(!p.contains("cipher BF") && !p.contains("comp-lzo"));
    }
}
