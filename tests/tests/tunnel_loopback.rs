//! `connexa_core::tunnel::Tunnel` on loopback against an in-process PPTP
//! server that shares the process's raw GRE socket: the server side is
//! `pptp::session::SessionServer` (LCP, MS-CHAPv2, CCP/MPPE, IPCP, server
//! role) with a small smoltcp host behind it (10.78.0.1: HTTP byte source on
//! port 80, DNS on UDP 53). Proves the whole client stack without the lab:
//! DNS through IPCP's server, TCP through MPPE, LCP echo, polite close, and a
//! server that never does CCP. Needs CAP_NET_RAW (root).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use connexa_core::domain::{Failure, Level, Secret};
use connexa_core::speed::http::{self, HttpUrl};
use connexa_core::speed::{SpeedConfig, measure_tunnel};
use connexa_core::tunnel::{GreSocket, Tunnel, TunnelConfig, TunnelError};
use connexa_tests::loopback_pptp::{HOST, Log, Mode, pattern, serve};
use tokio::net::TcpListener;

/// One raw GRE socket at a time (see auth_loopback.rs).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn server(mode: Mode) -> (Arc<GreSocket>, SocketAddr, Log, tokio::task::JoinHandle<()>) {
    let gre = GreSocket::open().unwrap_or_else(|e| {
        panic!("{e} (this test needs CAP_NET_RAW: run it as root, e.g. via tests/run.sh)")
    });
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log: Log = Arc::default();
    let (g, l) = (Arc::clone(&gre), Arc::clone(&log));
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        serve(g, tcp, mode, l).await;
    });
    (gre, addr, log, task)
}

#[tokio::test(flavor = "current_thread")]
async fn tunnel_resolves_fetches_echoes_measures_and_closes_politely() {
    let _serial = SERIAL.lock().await;
    let (gre, addr, log, task) = server(Mode::Full).await;
    let t = Tunnel::open_addr(
        addr,
        "alice",
        &Secret::new("s3cret"),
        &TunnelConfig::default(),
        Arc::clone(&gre),
    )
    .await
    .expect("tunnel up");
    assert_eq!(t.local_addr(), Ipv4Addr::new(10, 78, 0, 100));
    assert_eq!(t.peer_addr(), Some(HOST));
    assert_eq!(t.dns(), &[HOST]);
    assert_eq!(t.mtu(), 1396);
    assert!(t.is_alive());
    t.echo().await.expect("LCP echo");

    // DNS over UDP through the tunnel, to the server IPCP named.
    let ips = t.resolve("files.example").await.expect("resolve");
    assert_eq!(ips, vec![std::net::IpAddr::V4(HOST)]);

    // 3 MB through MPPE, every octet checked.
    let url = HttpUrl::parse("http://files.example/bytes?3000000").unwrap();
    let mut s = t
        .connect(SocketAddr::from((HOST, 80)))
        .await
        .expect("connect");
    let mut i = 0u64;
    let mut bad = 0u64;
    let (_, n) = http::get(&mut s, &url, |d| {
        for b in d {
            bad += u64::from(*b != pattern(i));
            i += 1;
        }
    })
    .await
    .expect("GET");
    assert_eq!((n, bad), (3_000_000, 0));
    drop(s);

    // A refused port is refused, not a hang.
    let e = t.connect(SocketAddr::from((HOST, 81))).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);

    // The speed test's measuring loop over this tunnel.
    let cfg = SpeedConfig {
        download_urls: vec!["http://10.78.0.1/bytes?400000".into()],
        duration: Duration::from_millis(1500),
        warmup: Duration::from_millis(300),
        streams: 2,
        ..SpeedConfig::default()
    };
    let r = measure_tunnel(&t, &cfg).await.expect("measure");
    assert!(r.down_mbps > 0.0 && r.bytes_down > 0, "{r:?}");
    assert!(r.latency_ms.is_some(), "{r:?}");
    let stats = t.stats();
    assert!(
        stats.bytes_received > 3_000_000 && stats.dropped == 0,
        "{stats:?}"
    );

    let teardown = t.close().await;
    assert!(
        teardown.lcp_closed && teardown.call_cleared && teardown.control_stopped,
        "{teardown:?}"
    );
    assert!(!t.is_alive());
    assert!(t.connect(SocketAddr::from((HOST, 80))).await.is_err());
    let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    let events = log.lock().unwrap().clone();
    assert!(
        events == ["ccr", "lcp Stopping", "stop"] || events == ["ccr", "lcp Stopped", "stop"],
        "{events:?}"
    );
    assert_eq!(gre.live_routes(), 0);
}

#[tokio::test(flavor = "current_thread")]
async fn a_server_without_ccp_is_logged_in_but_the_tunnel_fails() {
    let _serial = SERIAL.lock().await;
    let (gre, addr, log, task) = server(Mode::NoCcp).await;
    let cfg = TunnelConfig {
        network_timeout: Duration::from_secs(2),
        ..TunnelConfig::default()
    };
    let started = Instant::now();
    let e = Tunnel::open_addr(
        addr,
        "alice",
        &Secret::new("s3cret"),
        &cfg,
        Arc::clone(&gre),
    )
    .await
    .unwrap_err();
    match e {
        TunnelError::Failed {
            reached,
            failure: Failure::TunnelFailed { detail },
            ..
        } => {
            assert_eq!(reached, Level::Auth);
            assert!(detail.contains("CCP"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    assert!(log.lock().unwrap().contains(&"stop".to_owned()));
    assert_eq!(gre.live_routes(), 0);
}

fn loopback_node(addr: SocketAddr, password: &str) -> connexa_core::domain::Node {
    use connexa_core::domain::{Node, NodeId};
    let now = chrono::Utc::now();
    Node::added(
        NodeId(1),
        addr.ip(),
        addr.port(),
        "alice",
        Secret::new(password),
        now,
    )
}

#[tokio::test(flavor = "current_thread")]
async fn speed_tester_outcomes_on_loopback() {
    use connexa_core::domain::{Event, Status, transition};
    use connexa_core::ports::SpeedTester;
    use connexa_core::speed::HttpSpeedTester;
    let _serial = SERIAL.lock().await;
    let gre = GreSocket::open().unwrap_or_else(|e| panic!("{e} (needs CAP_NET_RAW)"));
    let log: Log = Arc::default();
    let addr = connexa_tests::loopback_pptp::listen(Arc::clone(&gre), Mode::Full, log).await;
    let cfg = |threshold_mbps| SpeedConfig {
        download_urls: vec!["http://10.78.0.1/bytes?2000000".into()],
        duration: Duration::from_millis(1500),
        warmup: Duration::from_millis(300),
        streams: 2,
        threshold_mbps,
        ..SpeedConfig::default()
    };
    let node = loopback_node(addr, "s3cret");
    let fast = HttpSpeedTester::with_gre_socket(cfg(0.5), Arc::clone(&gre))
        .measure(&node)
        .await
        .unwrap();
    assert_eq!(
        (fast.reached, &fast.failure),
        (Level::Speed, &None),
        "{fast:?}"
    );
    let m = &fast.measurements;
    assert!(m.speed_down_mbps.is_some_and(|d| d >= 0.5), "{m:?}");
    assert!(
        m.bytes_moved.is_some_and(|b| b > 0) && m.ping_ms.is_some(),
        "{m:?}"
    );
    assert_eq!(
        transition(Status::NotTested, &Event::Tested(fast)),
        Ok(Status::SpeedOk)
    );

    let slow = HttpSpeedTester::with_gre_socket(cfg(1e9), Arc::clone(&gre))
        .measure(&node)
        .await
        .unwrap();
    assert_eq!(slow.reached, Level::Auth, "{slow:?}");
    assert!(
        matches!(slow.failure, Some(Failure::TooSlow { .. })),
        "{slow:?}"
    );
    assert_eq!(
        transition(Status::NotTested, &Event::Tested(slow)),
        Ok(Status::PingOk)
    );

    let rejected = HttpSpeedTester::with_gre_socket(cfg(0.5), Arc::clone(&gre))
        .measure(&loopback_node(addr, "nope"))
        .await
        .unwrap();
    assert_eq!(rejected.reached, Level::Light, "{rejected:?}");
    assert!(
        matches!(
            rejected.failure,
            Some(Failure::AuthRejected {
                code: Some(691),
                ..
            })
        ),
        "{rejected:?}"
    );

    // An endpoint that does not answer through a working tunnel: logged in, so
    // level 2 with the reason, never ping_failed.
    let mut bad = cfg(0.5);
    bad.download_urls = vec!["http://10.78.0.1:81/x".into()];
    let unreachable = HttpSpeedTester::with_gre_socket(bad, Arc::clone(&gre))
        .measure(&node)
        .await
        .unwrap();
    assert_eq!(unreachable.reached, Level::Auth, "{unreachable:?}");
    assert!(
        matches!(unreachable.failure, Some(Failure::Other { .. })),
        "{unreachable:?}"
    );
}

/// A CA made for the test, a server certificate it signed for
/// `files.example`, and the CA certificate written to a PEM file.
fn test_pki(dir: &std::path::Path) -> (Arc<rustls::ServerConfig>, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Connexa test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["files.example".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .unwrap();
    (Arc::new(config), ca_file)
}

#[tokio::test(flavor = "current_thread")]
async fn https_speed_test_verifies_the_certificate_through_the_tunnel() {
    use connexa_core::ports::SpeedTester;
    use connexa_core::speed::HttpSpeedTester;
    let _serial = SERIAL.lock().await;
    let gre = GreSocket::open().unwrap_or_else(|e| panic!("{e} (needs CAP_NET_RAW)"));
    let dir = tempfile::tempdir().unwrap();
    let (tls, ca_file) = test_pki(dir.path());
    let log: Log = Arc::default();
    let addr =
        connexa_tests::loopback_pptp::listen_tls(Arc::clone(&gre), Mode::Full, log, Some(tls))
            .await;
    let node = loopback_node(addr, "s3cret");
    let cfg = |url: &str, ca: Option<&std::path::Path>| SpeedConfig {
        download_urls: vec![url.to_owned()],
        duration: Duration::from_millis(1500),
        warmup: Duration::from_millis(300),
        streams: 2,
        threshold_mbps: 0.5,
        ca_file: ca.map(std::path::Path::to_owned),
        // files.example is answered by the DNS server behind this test's
        // tunnel (the default resolves names on this host instead).
        resolve_through_node: true,
        ..SpeedConfig::default()
    };
    let run = |cfg: SpeedConfig| {
        let gre = Arc::clone(&gre);
        let node = node.clone();
        async move {
            HttpSpeedTester::with_gre_socket(cfg, gre)
                .measure(&node)
                .await
                .unwrap()
        }
    };

    // The CA from the config: verified, measured, speed_ok.
    let ok = run(cfg("https://files.example/bytes?2000000", Some(&ca_file))).await;
    assert_eq!((ok.reached, &ok.failure), (Level::Speed, &None), "{ok:?}");
    let m = &ok.measurements;
    assert!(m.speed_down_mbps.is_some_and(|d| d >= 0.5), "{m:?}");
    assert!(m.bytes_moved.is_some_and(|b| b > 0), "{m:?}");

    // The same server under another name: logged in, the endpoint is wrong.
    let wrong_name = run(cfg("https://other.example/bytes?2000000", Some(&ca_file))).await;
    assert_eq!(wrong_name.reached, Level::Auth, "{wrong_name:?}");
    match &wrong_name.failure {
        Some(Failure::Other { detail }) => assert!(
            detail.contains("https://other.example:443")
                && detail.contains("invalid peer certificate")
                && detail.contains("not valid for name"),
            "{detail}"
        ),
        f => panic!("{f:?}"),
    }

    // Without the test CA only the Mozilla roots are trusted: unknown issuer.
    let unknown_ca = run(cfg("https://files.example/bytes?2000000", None)).await;
    assert_eq!(unknown_ca.reached, Level::Auth, "{unknown_ca:?}");
    match &unknown_ca.failure {
        Some(Failure::Other { detail }) => assert!(
            detail.contains("invalid peer certificate") && detail.contains("UnknownIssuer"),
            "{detail}"
        ),
        f => panic!("{f:?}"),
    }
    assert!(unknown_ca.measurements.speed_down_mbps.is_none());

    eprintln!(
        "https: {:?} Mbit/s; wrong name: {:?}; unknown CA: {:?}",
        ok.measurements.speed_down_mbps, wrong_name.failure, unknown_ca.failure
    );
    // Plain http on the same host still works.
    let plain = run(cfg("http://files.example/bytes?2000000", None)).await;
    assert_eq!(
        (plain.reached, &plain.failure),
        (Level::Speed, &None),
        "{plain:?}"
    );
}
