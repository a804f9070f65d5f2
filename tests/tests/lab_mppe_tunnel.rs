//! The tunnel and the speed test against a real Linux PPTP server (the lab:
//! Debian pptpd + pppd with `require-mppe-128`, in a QEMU VM): the tunnel
//! comes up with 128-bit stateless MPPE, a file fetched through it has the
//! right sha256, and the measured download follows a `tc` shaping of the link.
//!
//! Needs the lab and root (`tests/run.sh` as root starts it). The tests here
//! run one at a time (shaping changes the lab for everybody).
//!
//! Known lab issue: once the lab VM has been stopped and started again (as
//! `lab_socks`'s monitor test does), the `tc` shaping of the lab link stops
//! taking effect (the download no longer passes the tbf on the bridge port;
//! seen on this sandbox's kernel, cause not found yet). `cargo test` runs a
//! package's test binaries in name order, so this file is named to run
//! before `lab_socks`; a fresh `tests/lab/lab.sh up` also restores shaping.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use connexa_core::domain::{Event, Failure, Level, Outcome, Secret, Status, transition};
use connexa_core::speed::http::{self, HttpUrl};
use connexa_core::speed::{HttpSpeedTester, SpeedConfig};
use connexa_core::tunnel::{GreSocket, Tunnel, TunnelConfig};
use connexa_tests::lab::{Lab, exclusive, in_lab};
use sha2::{Digest, Sha256};

fn status_after(outcome: &Outcome) -> Status {
    transition(Status::NotTested, &Event::Tested(outcome.clone())).expect("a test is accepted")
}

fn mppe_sessions(lab: &Lab) -> usize {
    lab.server_log()
        .expect("server log")
        .matches("MPPE 128-bit stateless compression enabled")
        .count()
}

/// Removes the shaping when dropped, whatever the test did.
struct Shaped<'a>(&'a Lab);

impl<'a> Shaped<'a> {
    fn new(lab: &'a Lab, rate: &str) -> Self {
        lab.script(&["shape", rate]).expect("lab.sh shape");
        Shaped(lab)
    }
}

impl Drop for Shaped<'_> {
    fn drop(&mut self) {
        let _ = self.0.script(&["unshape"]);
    }
}

fn speed_config(lab: &Lab) -> SpeedConfig {
    SpeedConfig {
        download_urls: vec![lab.file_url.clone()],
        upload_url: None,
        duration: Duration::from_secs(10),
        streams: 4,
        warmup: Duration::from_secs(2),
        threshold_mbps: 1.0,
        ca_file: None,
        tunnel: TunnelConfig::default(),
        timeout: Duration::from_secs(60),
        keyed: None,
        resolve_through_node: false,
    }
}

#[test]
fn lab_tunnel_mppe128_fetches_the_file_with_the_right_sha256() {
    let lab = Lab::require();
    let _g = exclusive();
    let mppe_before = mppe_sessions(&lab);
    let (digest, len, local, dns, rtt, took) = in_lab(&lab, || async {
        let gre = GreSocket::open().expect("raw GRE socket (root)");
        let addr = SocketAddr::from((lab.server, lab.pptp_port));
        let t = Tunnel::open_addr(
            addr,
            &lab.user,
            &Secret::new(lab.password.clone()),
            &TunnelConfig::default(),
            gre,
        )
        .await
        .expect("tunnel up");
        assert!(t.is_alive());
        let rtt = t.echo().await.expect("LCP echo through the tunnel");
        let url = HttpUrl::parse(&lab.file_url).unwrap();
        let target = SocketAddr::new(t.resolve(&url.host).await.unwrap()[0], url.port);
        let started = Instant::now();
        let mut s = t.connect(target).await.expect("TCP through the tunnel");
        let mut hasher = Sha256::new();
        let (head, len) = http::get(&mut s, &url, |d| hasher.update(d))
            .await
            .expect("GET through the tunnel");
        let took = started.elapsed();
        assert_eq!(head.status, 200);
        drop(s);
        let out = (
            hasher
                .finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>(),
            len,
            t.local_addr(),
            t.dns().to_vec(),
            rtt,
            took,
        );
        let teardown = t.close().await;
        assert!(
            teardown.lcp_closed || teardown.server_closed,
            "{teardown:?}"
        );
        assert!(!t.is_alive());
        out
    });
    eprintln!(
        "lab tunnel: {} bytes in {:.2?} ({:.2} Mbit/s, one stream, unshaped), address {local}, DNS {dns:?}, LCP echo {rtt:.2?}",
        len,
        took,
        len as f64 * 8.0 / took.as_secs_f64() / 1e6
    );
    assert_eq!(len, lab.file_size);
    assert_eq!(digest, lab.file_sha256);
    let o = local.octets();
    assert!(
        o[..3] == [10, 78, 0] && (100..=199).contains(&o[3]),
        "{local}"
    );
    assert_eq!(dns, vec![lab.ppp_server]);
    // The server's pppd really negotiated 128-bit stateless MPPE with us.
    let deadline = Instant::now() + Duration::from_secs(5);
    while mppe_sessions(&lab) <= mppe_before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        mppe_sessions(&lab) > mppe_before,
        "no MPPE line in the server log"
    );
}

fn measure(lab: &Lab, cfg: SpeedConfig) -> Outcome {
    in_lab(lab, || async {
        let gre = GreSocket::open().expect("raw GRE socket (root)");
        HttpSpeedTester::with_gre_socket(cfg, gre)
            .measure_node(&lab.node())
            .await
            .expect("the speed test runs")
    })
}

fn wait_sessions_idle(lab: &Lab) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if lab.sessions().is_ok_and(|s| s.pppd == 0) {
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("the server still has sessions: {:?}", lab.sessions());
}

#[test]
fn lab_speed_shaped_to_4mbit_measures_within_10_percent() {
    let lab = Lab::require();
    let _g = exclusive();
    let outcome = {
        let _shaped = Shaped::new(&lab, "4mbit");
        measure(&lab, speed_config(&lab))
    };
    let down = outcome
        .measurements
        .speed_down_mbps
        .expect("a download figure");
    eprintln!(
        "lab speed, shaped 4mbit: down {down:.3} Mbit/s ({:.1} % of the shaped rate), latency {:?} ms, {:?} bytes in the window",
        down / 4.0 * 100.0,
        outcome.measurements.ping_ms,
        outcome.measurements.bytes_moved
    );
    assert_eq!(outcome.reached, Level::Speed, "{outcome:?}");
    assert_eq!(status_after(&outcome), Status::SpeedOk);
    assert!(
        (down - 4.0).abs() <= 0.4,
        "measured {down:.3} Mbit/s through a link shaped to 4 Mbit/s"
    );
    wait_sessions_idle(&lab);
}

#[test]
fn lab_speed_unshaped_with_upload_is_speed_ok() {
    let lab = Lab::require();
    let _g = exclusive();
    let mut cfg = speed_config(&lab);
    cfg.upload_url = Some(format!("http://{}/cgi-bin/sink", lab.ppp_server));
    let outcome = measure(&lab, cfg);
    let m = &outcome.measurements;
    eprintln!(
        "lab speed, unshaped: down {:?} Mbit/s, up {:?} Mbit/s, latency {:?} ms, {:?} bytes moved",
        m.speed_down_mbps, m.speed_up_mbps, m.ping_ms, m.bytes_moved
    );
    assert_eq!(outcome.reached, Level::Speed, "{outcome:?}");
    assert!(m.speed_down_mbps.is_some_and(|d| d > 4.4), "{m:?}");
    assert!(m.speed_up_mbps.is_some_and(|u| u > 0.0), "{m:?}");
    assert!(m.ping_ms.is_some_and(|p| p > 0.0), "{m:?}");
    wait_sessions_idle(&lab);
}

#[test]
fn lab_speed_below_threshold_is_ping_ok_too_slow_not_ping_failed() {
    let lab = Lab::require();
    let _g = exclusive();
    let mut cfg = speed_config(&lab);
    cfg.duration = Duration::from_secs(4);
    cfg.warmup = Duration::from_secs(1);
    cfg.threshold_mbps = 10_000.0;
    let outcome = measure(&lab, cfg);
    assert_eq!(outcome.reached, Level::Auth, "{outcome:?}");
    assert!(
        matches!(outcome.failure, Some(Failure::TooSlow { threshold_mbps, .. }) if threshold_mbps == 10_000.0),
        "{outcome:?}"
    );
    assert_eq!(status_after(&outcome), Status::PingOk);
    // A node already verified stays verified.
    assert_eq!(
        transition(Status::SpeedOk, &Event::Tested(outcome.clone())),
        Ok(Status::SpeedOk)
    );
    wait_sessions_idle(&lab);
}

#[test]
fn lab_speed_wrong_password_is_auth_failed() {
    let lab = Lab::require();
    let _g = exclusive();
    let outcome = in_lab(&lab, || async {
        let gre = GreSocket::open().expect("raw GRE socket (root)");
        let mut n = lab.node();
        n.password = Secret::new("wrong");
        HttpSpeedTester::with_gre_socket(speed_config(&lab), gre)
            .measure_node(&n)
            .await
            .expect("the speed test runs")
    });
    assert_eq!(outcome.reached, Level::Light, "{outcome:?}");
    assert!(
        matches!(outcome.failure, Some(Failure::AuthRejected { .. })),
        "{outcome:?}"
    );
    assert_eq!(status_after(&outcome), Status::AuthFailed);
}

/// The keyed speed endpoint through a real tunnel: the tests serve it on
/// their own address (10.77.0.1, reached from the tunnel through the server
/// VM, which forwards), the speed test asks it for the keyed stream, checks
/// every byte, counts only the window's, and records the address the endpoint
/// saw as the node's exit address (the tunnel's own, handed out by the server).
#[test]
fn lab_speed_through_the_tunnel_to_the_keyed_endpoint_is_verified() {
    use connexa_core::speed::KeyedTarget;
    use connexa_core::speed::keyed::{self, EndpointLimits, SpeedEndpoint, SpeedKey};

    let lab = Lab::require();
    let _g = exclusive();
    let key = SpeedKey::generate().expect("a random key");
    let outcome = in_lab(&lab, || async {
        let listener = tokio::net::TcpListener::bind((lab.host_ip, 0))
            .await
            .expect("listen on the tests' lab address");
        let port = listener.local_addr().unwrap().port();
        let endpoint = std::sync::Arc::new(SpeedEndpoint::new(key, EndpointLimits::default()));
        tokio::spawn(keyed::serve(listener, endpoint, 16, std::future::pending()));
        let mut cfg = speed_config(&lab);
        cfg.download_urls = Vec::new();
        cfg.keyed = Some(KeyedTarget::new(
            &format!("http://{}:{port}", lab.host_ip),
            key,
        ));
        let gre = GreSocket::open().expect("raw GRE socket (root)");
        HttpSpeedTester::with_gre_socket(cfg, gre)
            .measure_node(&lab.node())
            .await
            .expect("the speed test runs")
    });
    let m = &outcome.measurements;
    eprintln!(
        "lab keyed speed: down {:?} Mbit/s, {:?} bytes in the window, exit {:?}",
        m.speed_down_mbps, m.bytes_moved, m.exit_ip
    );
    assert_eq!(outcome.reached, Level::Speed, "{outcome:?}");
    assert_eq!(outcome.failure, None, "{outcome:?}");
    // Counted inside the 8 s window only: at most what the window can carry
    // at the measured rate, and enough bytes to mean it.
    let down = m.speed_down_mbps.expect("a download figure");
    let moved = m.bytes_moved.expect("bytes moved");
    assert!(moved > 1_000_000, "{moved} bytes");
    assert!(
        (moved as f64 * 8.0 / 8.0 / 1e6 - down).abs() <= down * 0.05,
        "{moved} bytes in the 8 s window vs {down} Mbit/s"
    );
    match m.exit_ip {
        Some(std::net::IpAddr::V4(a)) => {
            let o = a.octets();
            assert!(o[..3] == [10, 78, 0] && (100..=199).contains(&o[3]), "{a}");
        }
        other => panic!("no exit address recorded: {other:?}"),
    }
    wait_sessions_idle(&lab);
}
