//! `tun` services: a node's PPTP tunnel exposed as a kernel TUN interface on
//! the Connexa host — what `pppd` gives as `ppp0`, but in user space, many at
//! once, with no `/dev/ppp`, no pppd and no kernel PPP modules.
//!
//! [`TunLauncher`] is a [`ServiceLauncher`](crate::ports::ServiceLauncher): `start` opens the node's tunnel
//! with the [`TunnelOpener`](crate::service::TunnelOpener) (MS-CHAPv2, MPPE-128, IPCP), takes its raw IPv4
//! datagrams ([`TunnelLink::packet_path`](crate::service::TunnelLink::packet_path): smoltcp is bypassed) and creates
//! the interface `<prefix><node id>` (`cx7`) with the `tun-rs` crate:
//! point-to-point, the PPP local address on our side and the PPP remote
//! address as the peer, the MTU of the tunnel (the peer's MRU less MPPE
//! overhead), up. One task per service moves datagrams between the
//! interface and the PPP link. Addresses, MTU and state are set with ioctls
//! on the device (no netlink, no `ip` commands); the only route is the
//! kernel's own route to the peer. Routing other traffic into the interface
//! (`ip route add 10.78.0.1/32 dev cx7`, a policy rule) is the operator's
//! choice.
//!
//! * **Capability**: creating the interface needs `CAP_NET_ADMIN` (and
//!   `/dev/net/tun`); without it `start` fails before any call is made, with an
//!   error naming the capability, and the node is unchanged (a failed start
//!   never demotes a node).
//! * **Stop**: the task ends and the device's file descriptor is closed, which
//!   removes the (non-persistent) interface and its routes; then the tunnel is
//!   closed politely.
//! * **Crash**: the kernel closes the descriptor of a dead process, so the
//!   interface goes with it. An interface of the same name found at start (a
//!   persistent TUN device left by something else) is deleted (`ip link
//!   delete`) when it is a TUN device; any other kind of interface with that
//!   name makes the start fail.
//! * **Health**: the tunnel answers an LCP Echo, the interface exists and the
//!   task runs. A dead tunnel is torn down and the service started afresh
//!   (same interface name) once per check.

mod launcher;

pub use launcher::{TunConfig, TunLauncher};

use crate::domain::NodeId;

/// The capability a `tun` service needs.
pub const NEED_CAP_NET_ADMIN: &str = "CAP_NET_ADMIN";

/// `true` for a valid interface name prefix: 1 to 8 characters of `a-z`,
/// `0-9`, `_`, `-`, starting with a letter (so that `<prefix><node id>` fits
/// the kernel's 15 characters for any id below 10^7).
pub fn valid_prefix(prefix: &str) -> bool {
    let mut chars = prefix.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && prefix.len() <= 8
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// The interface name of `node`'s `tun` service: `<prefix><id>`, or `None`
/// when it would exceed the kernel's 15 characters.
pub fn interface_name(prefix: &str, node: NodeId) -> Option<String> {
    let name = format!("{prefix}{}", node.0);
    (name.len() <= 15 && valid_prefix(prefix)).then_some(name)
}

/// Whether the effective capabilities of this process (`CapEff` in
/// `/proc/self/status`) include `CAP_NET_ADMIN` (bit 12). `None` when they
/// cannot be read (not Linux).
pub fn has_cap_net_admin() -> Option<bool> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    cap_eff_has(&status, 12)
}

fn cap_eff_has(status: &str, bit: u32) -> Option<bool> {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    let caps = u64::from_str_radix(hex, 16).ok()?;
    Some(caps & (1u64 << bit) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_and_names() {
        assert!(valid_prefix("cx"));
        assert!(valid_prefix("vpn-a_1"));
        for bad in ["", "1cx", "Cx", "cx/", "cx 1", "abcdefghi", "cx.1"] {
            assert!(!valid_prefix(bad), "{bad:?}");
        }
        assert_eq!(interface_name("cx", NodeId(7)).as_deref(), Some("cx7"));
        assert_eq!(
            interface_name("abcdefgh", NodeId(9_999_999)).as_deref(),
            Some("abcdefgh9999999")
        );
        assert_eq!(interface_name("abcdefgh", NodeId(10_000_000)), None);
    }

    #[test]
    fn effective_capabilities_are_read_from_proc_status() {
        let root = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(cap_eff_has(root, 12), Some(true));
        let raw_only = "CapEff:\t0000000000002000\n";
        assert_eq!(cap_eff_has(raw_only, 13), Some(true));
        assert_eq!(cap_eff_has(raw_only, 12), Some(false));
        assert_eq!(cap_eff_has("CapEff:\tzz\n", 12), None);
        assert_eq!(cap_eff_has("Name:\tx\n", 12), None);
    }
}
