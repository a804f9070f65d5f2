//! `tun` services through a real PPTP node (the lab: Debian pptpd + pppd with
//! `require-mppe-128`, in a QEMU VM): `TunLauncher` over `PptpOpener` creates
//! `cx<id>` inside the lab's network namespace with the PPP addresses and
//! the tunnel's MTU; `ping -I cx<id>` and `curl --interface cx<id>` reach the
//! lab server at its PPP address 10.78.0.1 through MPPE (the file with the
//! right sha256); stop removes the interface and its routes (`ip -o link`
//! before and after); a stale persistent TUN device of the same name left
//! behind is replaced at start.
//!
//! Everything runs inside the lab's namespace (the test thread enters it;
//! ping, curl and ip run under `ip netns exec`): nothing touches the host's
//! interfaces or routes. Needs the lab and root.

use std::process::Output;
use std::sync::Arc;

use connexa_core::domain::{Node, NodeId};
use connexa_core::ports::{Health, ServiceLauncher};
use connexa_core::service::PptpOpener;
use connexa_core::tun::{TunConfig, TunLauncher};
use connexa_core::tunnel::{GreSocket, TunnelConfig};
use connexa_tests::lab::{Lab, exclusive, in_lab};
use sha2::{Digest, Sha256};

/// `CMD ARGS...` inside the lab's namespace (see `ovpn_lab::in_ns`).
async fn ns(lab: &Lab, cmd: &[&str]) -> Output {
    connexa_tests::ovpn_lab::in_ns(&lab.netns, cmd).await
}

/// The same, which must succeed; its standard output.
async fn ns_ok(lab: &Lab, cmd: &[&str]) -> String {
    connexa_tests::ovpn_lab::ok_in(&lab.netns, cmd).await
}

/// The interface names of `ip -o link` in the lab's namespace.
async fn links(lab: &Lab) -> Vec<String> {
    let text = ns_ok(lab, &["ip", "-o", "link"]).await;
    let mut names: Vec<String> = text
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
        .collect();
    names.sort();
    names
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Waits until one ping through `name` is answered (at most 10 tries of 2 s):
/// the server's pppd configures its end (ip-up) after IPCP, so datagrams
/// sent right after the start may be dropped there, as with a kernel client.
async fn first_ping(lab: &Lab, name: &str) {
    let server = lab.ppp_server.to_string();
    for _ in 0..10 {
        let out = ns(
            lab,
            &["ping", "-n", "-c", "1", "-W", "2", "-I", name, &server],
        )
        .await;
        if out.status.success() {
            return;
        }
    }
    panic!("no ping through {name} answered in 10 tries");
}

fn launcher(gre: Arc<GreSocket>) -> TunLauncher {
    TunLauncher::new(
        Arc::new(PptpOpener::with_gre_socket(TunnelConfig::default(), gre)),
        TunConfig::default(),
    )
}

fn node(lab: &Lab, id: i64) -> Node {
    Node {
        id: NodeId(id),
        ..lab.node()
    }
}

/// The file's path on the lab's web server (`/10M.bin`), fetched from the
/// server's PPP address instead of its LAN address.
fn file_via_ppp(lab: &Lab) -> String {
    let path = lab
        .file_url
        .splitn(4, '/')
        .nth(3)
        .expect("a path in CONNEXA_LAB_FILE_URL");
    format!("http://{}/{path}", lab.ppp_server)
}

#[test]
fn lab_tun_interface_carries_ping_and_curl_and_is_gone_after_stop() {
    let lab = Lab::require();
    let _x = exclusive();
    in_lab(&lab, || async {
        let gre = GreSocket::open().expect("raw GRE socket (run as root)");
        let tun = launcher(gre);
        let node = node(&lab, 4711);
        let name = "cx4711";
        let before = links(&lab).await;
        assert!(!before.iter().any(|n| n == name), "{before:?}");

        let ep = tun.start(&node, None).await.expect("tun service up");
        assert_eq!((ep.host.as_str(), ep.port), (name, 0));
        assert_eq!(tun.interface(node.id).as_deref(), Some(name));

        // Point-to-point, our PPP address, the server's as the peer, up.
        let addr = ns_ok(&lab, &["ip", "-o", "-4", "addr", "show", "dev", name]).await;
        let peer = format!("peer {}/32", lab.ppp_server);
        assert!(addr.contains(&peer), "{addr}");
        assert!(addr.contains("inet 10.78.0."), "{addr}");
        let link = ns_ok(&lab, &["ip", "-o", "link", "show", "dev", name]).await;
        assert!(
            link.contains("POINTOPOINT") && link.contains(",UP"),
            "{link}"
        );
        let mtu: u32 = link
            .split_whitespace()
            .skip_while(|w| *w != "mtu")
            .nth(1)
            .and_then(|m| m.parse().ok())
            .expect("an mtu");
        // The tunnel's MTU: pppd's MRU 1500 (the lab's default) less the
        // 4-octet MPPE header, at most.
        assert!((1000..=1496).contains(&mtu), "mtu {mtu}: {link}");
        eprintln!("{name}: {}", addr.trim());

        // Only the lab server's PPP address goes through the interface (in
        // the lab's namespace; its default path to 10.78.0.0/24 is the VM's
        // LAN address).
        let host = format!("{}/32", lab.ppp_server);
        ns_ok(&lab, &["ip", "route", "replace", &host, "dev", name]).await;

        first_ping(&lab, name).await;
        let server = lab.ppp_server.to_string();
        let ping = ns_ok(
            &lab,
            &["ping", "-n", "-c", "3", "-W", "10", "-I", name, &server],
        )
        .await;
        assert!(ping.contains("3 received"), "{ping}");

        let url = file_via_ppp(&lab);
        let curl = ns(
            &lab,
            &[
                "curl",
                "-sS",
                "--max-time",
                "120",
                "--interface",
                name,
                &url,
            ],
        )
        .await;
        assert!(
            curl.status.success(),
            "curl --interface {name} {url}: {}",
            String::from_utf8_lossy(&curl.stderr)
        );
        assert_eq!(curl.stdout.len() as u64, lab.file_size);
        assert_eq!(sha256_hex(&curl.stdout), lab.file_sha256);

        let c = tun.counters(node.id).expect("counters");
        assert!(c.bytes_down >= lab.file_size, "{c:?}");
        assert!(c.bytes_up > 0, "{c:?}");
        assert_eq!(tun.health(&node).await, Health::Healthy);

        // Stop: the interface and its routes are gone, nothing else changed.
        tun.stop(node.id).await.expect("stop");
        // Nothing the service made is left (an interface another test left
        // behind may vanish meanwhile: the kernel removes the peers of a
        // deleted namespace's veths when it gets round to it).
        let after = links(&lab).await;
        let added: Vec<&String> = after.iter().filter(|l| !before.contains(l)).collect();
        assert!(
            added.is_empty(),
            "ip -o link after stop added {added:?}: {after:?}"
        );
        assert!(!after.iter().any(|l| l == name), "{after:?}");
        let routes = ns_ok(&lab, &["ip", "-o", "route"]).await;
        assert!(!routes.contains(name), "{routes}");
        assert!(tun.running().await.is_empty());
        assert!(matches!(tun.health(&node).await, Health::Unhealthy(_)));
    });
}

#[test]
fn lab_tun_stale_persistent_interface_is_replaced_at_start() {
    let lab = Lab::require();
    let _x = exclusive();
    in_lab(&lab, || async {
        let gre = GreSocket::open().expect("raw GRE socket (run as root)");
        let tun = launcher(gre);
        let node = node(&lab, 4712);
        let name = "cx4712";
        let before = links(&lab).await;
        // What a crash of something else could leave: a persistent TUN
        // device with the service's name (a crashed Connexa leaves none: its
        // devices are not persistent and go with its descriptors).
        ns_ok(&lab, &["ip", "tuntap", "add", "dev", name, "mode", "tun"]).await;
        assert!(links(&lab).await.iter().any(|n| n == name));

        tun.start(&node, None)
            .await
            .expect("starts over the stale device");
        let addr = ns_ok(&lab, &["ip", "-o", "-4", "addr", "show", "dev", name]).await;
        assert!(addr.contains("inet 10.78.0."), "{addr}");
        first_ping(&lab, name).await;

        tun.stop(node.id).await.expect("stop");
        assert_eq!(
            links(&lab).await,
            before,
            "nothing left, not even the stale device"
        );
    });
}
