//! SOCKS5 services over simulated PPTP tunnels (needs root: raw GRE): a
//! 10-node fleet with tunnels (login, MPPE-128, IPCP, an HTTP host behind each
//! node), one `SocksLauncher` over `PptpOpener` starting a service per node, and
//! ten downloads through the ten services at once — every body's SHA-256 must be
//! the simulator pattern's.

use std::net::Ipv4Addr;
use std::sync::Arc;

use connexa_core::ports::ServiceLauncher;
use connexa_core::service::PptpOpener;
use connexa_core::sim::{Fleet, FleetSpec, TunnelSpec};
use connexa_core::socks::{SocksConfig, SocksLauncher};
use connexa_core::tunnel::{GreSocket, TunnelConfig};
use connexa_tests::sim_socks::{get_via_socks, node_id, pattern_sha256};

const NODES: usize = 10;
const BYTES: u64 = 300_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_socks_services_over_ten_sim_tunnels_relay_concurrently_with_right_checksums() {
    let fleet = Fleet::start(
        FleetSpec::new(NODES)
            .first_ip(Ipv4Addr::new(127, 45, 1, 1))
            .port(21741)
            .tunnels(TunnelSpec::default()),
    )
    .await
    .expect("fleet");
    assert!(
        fleet.serves_logins(),
        "raw GRE needed (run as root): {:?}",
        fleet.logins_unavailable()
    );
    let gre = GreSocket::open().expect("raw GRE socket (run as root)");
    let launcher = SocksLauncher::new(
        Arc::new(PptpOpener::with_gre_socket(TunnelConfig::default(), gre)),
        SocksConfig {
            port_min: 33500,
            port_max: 33599,
            ..SocksConfig::default()
        },
    );
    let nodes: Vec<_> = fleet
        .nodes()
        .iter()
        .enumerate()
        .map(|(i, n)| n.node(node_id(i)))
        .collect();
    let eps = futures::future::join_all(nodes.iter().map(|n| launcher.start(n, None)))
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .expect("every service starts through its node's tunnel");
    let mut ports: Vec<u16> = eps.iter().map(|e| e.port).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), NODES, "one port per service: {eps:?}");
    assert_eq!(fleet.live_calls(), NODES);

    let want = pattern_sha256(BYTES);
    let got = futures::future::join_all(eps.iter().map(|ep| get_via_socks(ep, BYTES))).await;
    for (i, r) in got.iter().enumerate() {
        let (len, sum) = r.as_ref().expect("download through SOCKS5");
        assert_eq!((*len, sum.as_str()), (BYTES, want.as_str()), "service {i}");
    }
    // The counters are final once each relay has ended (the server sees the
    // client's close a moment after the client does).
    for _ in 0..200 {
        if (0..NODES).all(|i| launcher.stats(node_id(i)).is_some_and(|s| s.active == 0)) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    for i in 0..NODES {
        let s = launcher.stats(node_id(i)).expect("stats");
        assert_eq!(s.active, 0, "service {i}: {s:?}");
        assert_eq!(s.relayed, 1, "service {i}: {s:?}");
        assert!(s.bytes_down >= BYTES, "service {i}: {s:?}");
    }
    // A wrong password is refused and relays nothing.
    let mut bad = eps[0].clone();
    bad.password = format!("{}x", bad.password.expose()).into();
    let err = get_via_socks(&bad, 10).await.expect_err("wrong password");
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");

    launcher.stop_all().await;
    assert!(launcher.running().await.is_empty());
    for _ in 0..100 {
        if fleet.live_calls() == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(fleet.live_calls(), 0, "every tunnel torn down");
    fleet.close().await;
}
