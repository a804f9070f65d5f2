//! The keyed speed endpoint against simulated nodes over real sockets: the
//! tester issues a fresh signed nonce per request, the simulated node's tunnel
//! host serves (or fakes) `/speed/down`, and the tester verifies every byte.
//!
//! Needs CAP_NET_RAW (root), like sim_auth. Fleets use 127.47.N.0/24.

use std::net::Ipv4Addr;
use std::time::Duration;

use connexa_core::domain::{Failure, Level, NodeId, Outcome};
use connexa_core::sim::{Behaviour, Fleet, FleetSpec, TUNNEL_HOST, TunnelSpec};
use connexa_core::speed::keyed::SpeedKey;
use connexa_core::speed::{HttpSpeedTester, KeyedTarget, SpeedConfig};
use connexa_core::tunnel::GreSocket;

const PORT: u16 = 21733;

fn key() -> SpeedKey {
    SpeedKey::from_bytes([0x42; 32])
}

async fn fleet(block: u8, behaviour: Behaviour, key: Option<SpeedKey>) -> Fleet {
    let f = Fleet::start(
        FleetSpec::new(1)
            .first_ip(Ipv4Addr::new(127, 47, block, 1))
            .port(PORT)
            .mix(vec![(behaviour, 1)])
            .tunnels(TunnelSpec {
                speed_key: key,
                ..TunnelSpec::default()
            }),
    )
    .await
    .expect("simulated fleet starts");
    assert!(
        f.serves_logins(),
        "run as root: {:?}",
        f.logins_unavailable()
    );
    f
}

fn keyed_config(base: &str, key: SpeedKey) -> SpeedConfig {
    SpeedConfig {
        duration: Duration::from_millis(1500),
        warmup: Duration::from_millis(300),
        streams: 2,
        threshold_mbps: 0.5,
        keyed: Some(KeyedTarget {
            request_bytes: 4 << 20,
            ..KeyedTarget::new(base, key)
        }),
        ..SpeedConfig::default()
    }
}

async fn measure(f: &Fleet, cfg: SpeedConfig) -> Outcome {
    let gre = GreSocket::open().expect("raw GRE socket (run as root)");
    let tester = HttpSpeedTester::with_gre_socket(cfg, gre);
    let node = f.nodes()[0].node(NodeId(1));
    tokio::time::timeout(Duration::from_secs(40), tester.measure_node(&node))
        .await
        .expect("the speed test ends")
        .expect("the speed test runs")
}

#[tokio::test]
async fn an_honest_node_passes_the_keyed_endpoint_and_reports_its_exit_address() {
    let f = fleet(1, Behaviour::Healthy, Some(key())).await;
    let out = measure(&f, keyed_config(&format!("http://{TUNNEL_HOST}"), key())).await;
    assert_eq!(out.reached, Level::Speed, "{out:?}");
    assert_eq!(out.failure, None);
    let m = &out.measurements;
    assert!(m.bytes_moved.unwrap_or(0) > 0, "{m:?}");
    // The sim host echoes the client's tunnel address, as the endpoint would.
    assert_eq!(m.exit_ip, Some("10.78.0.100".parse().unwrap()), "{m:?}");
    assert_eq!(f.live_calls(), 0);
    f.close().await;
}

#[tokio::test]
async fn a_node_answering_the_speed_url_itself_fails_with_content_mismatch_at_level_2() {
    let f = fleet(2, Behaviour::FakeSpeed, Some(key())).await;
    // A threshold any honest or fake node meets: only the content can fail it.
    let out = measure(&f, keyed_config(&format!("http://{TUNNEL_HOST}"), key())).await;
    assert_eq!(out.reached, Level::Auth, "never speed_ok: {out:?}");
    match &out.failure {
        Some(Failure::ContentMismatch { detail }) => {
            assert!(detail.contains("differs from the keyed stream"), "{detail}")
        }
        other => panic!("expected a content mismatch, got {other:?}"),
    }
    assert_eq!(
        out.measurements.speed_down_mbps, None,
        "no figure from faked bytes"
    );
    f.close().await;
}

#[tokio::test]
async fn a_tester_with_another_key_cannot_pass_an_honest_node() {
    // The node's endpoint refuses nonces signed with another key (403): no
    // data moves, the test ends at level 2.
    let f = fleet(3, Behaviour::Healthy, Some(key())).await;
    let out = measure(
        &f,
        keyed_config(
            &format!("http://{TUNNEL_HOST}"),
            SpeedKey::from_bytes([1; 32]),
        ),
    )
    .await;
    assert_eq!(out.reached, Level::Auth, "{out:?}");
    match &out.failure {
        Some(Failure::Other { detail }) => assert!(detail.contains("no data moved"), "{detail}"),
        other => panic!("{other:?}"),
    }
    f.close().await;
}

/// The test host's name is resolved on this host, not through the node (the
/// simulator has no DNS server behind its tunnels): `10.78.1` is not an IP
/// literal to Rust, but the system resolver reads it (inet_aton's a.b.c form)
/// as 10.78.0.1 without any DNS query.
#[tokio::test]
async fn the_test_host_is_resolved_here_not_through_the_node() {
    let f = fleet(4, Behaviour::Healthy, Some(key())).await;
    let out = measure(&f, keyed_config("http://10.78.1", key())).await;
    assert_eq!(out.reached, Level::Speed, "resolved locally: {out:?}");
    // Opting in to the node's DNS: there is none, the test cannot reach its host.
    let mut through = keyed_config("http://10.78.1", key());
    through.resolve_through_node = true;
    let out = measure(&f, through).await;
    assert_eq!(out.reached, Level::Auth, "{out:?}");
    assert!(
        matches!(&out.failure, Some(Failure::Other { .. })),
        "{out:?}"
    );
    f.close().await;
}
