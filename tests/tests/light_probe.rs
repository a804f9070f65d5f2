//! The light test against real sockets: the simulator's nodes, hand-made
//! misbehaving servers, a closed port, and Debian's real `pptpd`
//! (`CONNEXA_TEST_PPTPD=ip:port`, provisioned by tests/run.sh).
//!
//! Every fleet here uses its own 127.20.N.0/24 block so the tests can run in parallel.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use connexa_core::domain::{Failure, Level, NodeId, Outcome};
use connexa_core::ports::{ProbeDepth, ProbeError, Prober};
use connexa_core::pptp::control::{
    CallClearRequest, ControlMessage, HEADER_LEN, StartControlConnectionRequest,
};
use connexa_core::probe::{IcmpConfig, IcmpPinger, LightProber, ProbeConfig};
use connexa_core::sim::{Behaviour, Fleet, FleetSpec};
use connexa_core::tunnel::{AuthConfig, NEED_CAP_NET_RAW};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};

const PORT: u16 = 21723;

fn config(handshake_ms: u64, attempts: u32) -> ProbeConfig {
    ProbeConfig {
        connect_timeout: Duration::from_millis(800),
        handshake_timeout: Duration::from_millis(handshake_ms),
        stop_timeout: Duration::from_millis(200),
        attempts,
        backoff: Duration::from_millis(100),
        icmp: None,
        ..ProbeConfig::default()
    }
}

async fn fleet(block: u8, mix: Vec<(Behaviour, u32)>, count: usize) -> Fleet {
    Fleet::start(
        FleetSpec::new(count)
            .first_ip(Ipv4Addr::new(127, 20, block, 1))
            .port(PORT)
            .mix(mix),
    )
    .await
    .expect("simulated fleet starts")
}

async fn probe(prober: &LightProber, addr: SocketAddr) -> (Outcome, Duration) {
    let t = Instant::now();
    let out = prober.probe_addr(addr).await.expect("probe runs");
    (out, t.elapsed())
}

fn assert_within(elapsed: Duration, at_least: Duration, slack: Duration) {
    assert!(
        elapsed >= at_least && elapsed <= at_least + slack,
        "took {elapsed:?}, expected {at_least:?} .. {:?}",
        at_least + slack
    );
}

#[tokio::test]
async fn healthy_sim_node_reaches_light_with_identity_and_times() {
    let f = fleet(1, vec![(Behaviour::Healthy, 1)], 1).await;
    let prober = LightProber::new(config(1000, 2));
    let (out, _) = probe(&prober, f.nodes()[0].addr()).await;
    assert_eq!(out.reached, Level::Light, "{out:?}");
    assert_eq!(out.failure, None);
    let id = out.measurements.pptp.as_ref().expect("identity");
    assert_eq!(id.hostname, "sim");
    assert_eq!(id.vendor, "connexa-sim");
    assert_eq!(id.protocol_version, 0x0100);
    assert_eq!(id.firmware, 1);
    let m = &out.measurements;
    assert!(m.connect_ms.is_some_and(|v| v >= 0.0));
    assert!(m.handshake_ms.is_some_and(|v| v >= 0.0));
    // ICMP is off: ping_ms falls back to the handshake time.
    assert_eq!(m.ping_ms, m.handshake_ms);
}

#[tokio::test]
async fn prober_trait_uses_node_address_and_runs_auth_depth() {
    let f = fleet(2, vec![(Behaviour::Healthy, 1)], 1).await;
    let prober = LightProber::new(config(1000, 1)).with_auth_config(AuthConfig {
        call_timeout: Duration::from_millis(300),
        teardown_timeout: Duration::from_millis(200),
        ..AuthConfig::default()
    });
    let node = f.nodes()[0].node(NodeId(7));
    let out = prober.probe(&node, ProbeDepth::Light).await.unwrap();
    assert_eq!(out.reached, Level::Light);
    // The simulated node also serves logins (tests/tests/sim_auth.rs has the
    // rest): with its own credentials it reaches ping_ok. Without CAP_NET_RAW
    // the auth test cannot run at all and says why.
    match prober.probe(&node, ProbeDepth::Auth).await {
        Ok(out) => {
            assert!(f.serves_logins(), "{out:?}");
            assert_eq!(out.reached, Level::Auth, "{out:?}");
            assert_eq!(out.failure, None, "{out:?}");
        }
        Err(err) => assert!(
            matches!(&err, ProbeError::NotPermitted(m) if m == NEED_CAP_NET_RAW),
            "{err:?}"
        ),
    }
}

#[tokio::test]
async fn closed_port_is_refused_after_all_attempts() {
    // A port that was just free on a loopback address of our own.
    let l = TcpListener::bind("127.20.3.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let prober = LightProber::new(config(500, 2));
    let (out, elapsed) = probe(&prober, addr).await;
    assert_eq!(out.reached, Level::None);
    assert_eq!(out.failure, Some(Failure::Refused));
    assert!(out.measurements.connect_ms.is_none());
    // Two attempts: one back-off (100 ms) in between.
    assert_within(elapsed, Duration::from_millis(100), Duration::from_secs(1));

    let f = fleet(3, vec![(Behaviour::Refused, 1)], 1).await;
    let (out, _) = probe(&LightProber::new(config(500, 1)), f.nodes()[0].addr()).await;
    assert_eq!(out.failure, Some(Failure::Refused));
}

#[tokio::test]
async fn silent_node_times_out_per_attempt_without_hanging() {
    let f = fleet(4, vec![(Behaviour::Silent, 1)], 1).await;
    let addr = f.nodes()[0].addr();
    let (out, elapsed) = probe(&LightProber::new(config(300, 1)), addr).await;
    assert_eq!(out.reached, Level::None);
    assert_eq!(out.failure, Some(Failure::HandshakeTimeout));
    assert!(out.measurements.connect_ms.is_some(), "TCP did connect");
    assert_within(elapsed, Duration::from_millis(300), Duration::from_secs(1));

    // Two attempts: 300 + 100 (back-off) + 300 ms.
    let (out, elapsed) = probe(&LightProber::new(config(300, 2)), addr).await;
    assert_eq!(out.failure, Some(Failure::HandshakeTimeout));
    assert_within(elapsed, Duration::from_millis(700), Duration::from_secs(1));
}

#[tokio::test]
async fn slow_node_passes_within_timeout_and_fails_beyond_it() {
    let f = fleet(5, vec![(Behaviour::Slow(Duration::from_millis(250)), 1)], 1).await;
    let addr = f.nodes()[0].addr();
    let (out, _) = probe(&LightProber::new(config(1500, 1)), addr).await;
    assert_eq!(out.reached, Level::Light, "{out:?}");
    assert!(out.measurements.handshake_ms.unwrap() >= 250.0);

    let (out, elapsed) = probe(&LightProber::new(config(100, 1)), addr).await;
    assert_eq!(out.failure, Some(Failure::HandshakeTimeout));
    assert_within(elapsed, Duration::from_millis(100), Duration::from_secs(1));
}

#[tokio::test]
async fn garbage_node_is_not_pptp_and_not_retried() {
    let f = fleet(6, vec![(Behaviour::Garbage, 1)], 1).await;
    let mut cfg = config(2000, 3);
    cfg.backoff = Duration::from_secs(1);
    let (out, elapsed) = probe(&LightProber::new(cfg), f.nodes()[0].addr()).await;
    assert_eq!(out.reached, Level::None);
    assert_eq!(out.failure, Some(Failure::NotPptp));
    // Answered at once; a retry would have cost at least the 1 s back-off.
    assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
}

#[tokio::test]
async fn wrong_result_codes_are_rejections_with_rfc_meaning() {
    let f = fleet(
        7,
        (2..=5u8)
            .map(|c| (Behaviour::WrongResultCode(c), 1))
            .collect(),
        4,
    )
    .await;
    let prober = LightProber::new(config(1000, 2));
    let mut seen = Vec::new();
    for n in f.nodes() {
        let Behaviour::WrongResultCode(code) = n.behaviour else {
            panic!("unexpected behaviour {:?}", n.behaviour)
        };
        let (out, _) = probe(&prober, n.addr()).await;
        assert_eq!(out.reached, Level::None);
        assert_eq!(out.failure, Some(Failure::ControlRejected { code }));
        seen.push(code);
        let text = out.failure.unwrap().to_string();
        let meaning = match code {
            2 => "general error",
            3 => "command channel already exists",
            4 => "not authorized",
            _ => "protocol version",
        };
        assert!(text.contains(meaning), "{text}");
    }
    seen.sort();
    assert_eq!(seen, vec![2, 3, 4, 5]);
}

#[tokio::test]
async fn server_closing_resetting_or_misanswering_before_reply() {
    // Closes after reading the request.
    let closer = TcpListener::bind("127.20.8.1:0").await.unwrap();
    let closer_addr = closer.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = closer.accept().await {
            let mut buf = [0u8; 156];
            let _ = s.read_exact(&mut buf).await;
            let _ = s.shutdown().await;
        }
    });
    // Resets after reading the request.
    let resetter = TcpListener::bind("127.20.8.2:0").await.unwrap();
    let resetter_addr = resetter.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = resetter.accept().await {
            let mut buf = [0u8; 156];
            let _ = s.read_exact(&mut buf).await;
            let _ = s.set_zero_linger();
            drop(s);
        }
    });
    // Answers with well-formed PPTP that is not a Start-Control-Connection-Reply.
    let wrong = TcpListener::bind("127.20.8.3:0").await.unwrap();
    let wrong_addr = wrong.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = wrong.accept().await {
            let mut buf = [0u8; 156];
            let _ = s.read_exact(&mut buf).await;
            let msg = ControlMessage::CallClearRequest(CallClearRequest { call_id: 9 });
            let _ = s.write_all(&msg.encode()).await;
            let _ = s.read(&mut buf).await;
        }
    });
    let mut cfg = config(1000, 2);
    cfg.backoff = Duration::from_secs(1);
    let (out, elapsed) = probe(&LightProber::new(cfg), wrong_addr).await;
    assert!(
        matches!(&out.failure, Some(Failure::BadReply { detail }) if detail.contains("Call-Clear-Request")),
        "{out:?}"
    );
    assert!(
        elapsed < Duration::from_millis(100),
        "not retried: {elapsed:?}"
    );

    let prober = LightProber::new(config(1000, 1));
    let (out, _) = probe(&prober, closer_addr).await;
    assert_eq!(out.failure, Some(Failure::ClosedEarly));
    let (out, _) = probe(&prober, resetter_addr).await;
    assert_eq!(out.failure, Some(Failure::Reset));
}

#[tokio::test]
async fn full_accept_queue_is_a_connect_timeout() {
    // A listener that never accepts: once its accept queue is full the kernel
    // drops further SYNs, so connect() can only time out.
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind("127.20.9.1:0".parse().unwrap()).unwrap();
    let listener = sock.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut held = Vec::new();
    for _ in 0..8 {
        match tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(Ok(s)) => held.push(s),
            _ => break,
        }
    }
    let mut cfg = config(500, 1);
    cfg.connect_timeout = Duration::from_millis(300);
    let (out, elapsed) = probe(&LightProber::new(cfg), addr).await;
    assert_eq!(out.failure, Some(Failure::ConnectTimeout), "{out:?}");
    assert_within(elapsed, Duration::from_millis(300), Duration::from_secs(1));
    drop(listener);
}

#[tokio::test]
async fn icmp_on_loopback_fills_ping_ms() {
    let pinger = IcmpPinger::new(IcmpConfig {
        count: 4,
        timeout: Duration::from_secs(1),
        ..IcmpConfig::default()
    });
    let ip = "127.20.10.1".parse().unwrap();
    let stats = pinger
        .ping(ip)
        .await
        .expect("ICMP socket (run as root, or allow net.ipv4.ping_group_range)");
    assert_eq!(stats.sent, 4);
    assert_eq!(stats.received, 4, "{stats:?}");
    assert_eq!(stats.loss(), 0.0);
    assert!(stats.min_ms.unwrap() <= stats.avg_ms.unwrap());
    assert!(stats.avg_ms.unwrap() <= stats.max_ms.unwrap());

    // Through the prober, on a node that does not answer PPTP at all: ICMP is
    // evidence, not a verdict.
    let f = fleet(10, vec![(Behaviour::Refused, 1)], 1).await;
    let mut cfg = config(300, 1);
    cfg.icmp = Some(IcmpConfig::default());
    let (out, _) = probe(&LightProber::new(cfg), f.nodes()[0].addr()).await;
    assert_eq!(out.reached, Level::None);
    assert_eq!(out.failure, Some(Failure::Refused));
    assert!(out.measurements.ping_ms.is_some(), "{out:?}");
}

#[tokio::test]
async fn sim_mix_list_and_limits() {
    let spec = FleetSpec::new(10).mix(vec![
        (Behaviour::Healthy, 80),
        (Behaviour::Refused, 10),
        (Behaviour::Silent, 10),
    ]);
    let b = spec.behaviours();
    assert_eq!(b.iter().filter(|x| **x == Behaviour::Healthy).count(), 8);
    assert_eq!(b.iter().filter(|x| **x == Behaviour::Refused).count(), 1);
    assert_eq!(b.iter().filter(|x| **x == Behaviour::Silent).count(), 1);
    assert_eq!(spec.behaviours(), b, "deterministic");

    let f = fleet(11, vec![(Behaviour::Healthy, 1)], 3).await;
    let mut out = Vec::new();
    f.write_node_list(&mut out).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "127.20.11.1:user0:pass0\n127.20.11.2:user1:pass1\n127.20.11.3:user2:pass2\n"
    );
    // Stopping the fleet closes its listeners.
    let addr = f.nodes()[0].addr();
    f.shutdown();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (out, _) = probe(&LightProber::new(config(300, 1)), addr).await;
    assert_eq!(out.failure, Some(Failure::Refused));

    let err = Fleet::start(FleetSpec::new(2).first_ip(Ipv4Addr::new(10, 0, 0, 1)))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("127.0.0.0/8"), "{err}");
}

// ---- Debian's real pptpd -------------------------------------------------------

fn pptpd_addr() -> SocketAddr {
    let v = std::env::var("CONNEXA_TEST_PPTPD").unwrap_or_else(|_| {
        panic!(
            "CONNEXA_TEST_PPTPD is not set: run tests/run.sh (it installs Debian's pptpd and \
             starts it on 127.77.0.1:1723), or skip these tests with `-- --skip pptpd`"
        )
    });
    v.parse()
        .unwrap_or_else(|e| panic!("CONNEXA_TEST_PPTPD={v:?} is not ip:port: {e}"))
}

#[tokio::test]
async fn light_probe_real_pptpd_reads_identity() {
    let addr = pptpd_addr();
    let mut cfg = config(3000, 3); // pptpd drops ~1 % of connections unanswered
    cfg.icmp = Some(IcmpConfig::default());
    let prober = LightProber::new(cfg);
    let (out, _) = probe(&prober, addr).await;
    assert_eq!(out.reached, Level::Light, "{out:?}");
    let id = out.measurements.pptp.clone().unwrap();
    assert_eq!(id.hostname, "local", "pptpd's default host name");
    assert_eq!(id.vendor, "linux", "pptpd's default vendor");
    assert_eq!(id.protocol_version, 0x0100);
    assert!(out.measurements.ping_ms.is_some());
    // pptpd is still healthy after our polite stop: a second probe works too.
    let (again, _) = probe(&prober, addr).await;
    assert_eq!(again.reached, Level::Light, "{again:?}");
}

#[tokio::test]
async fn pptpd_raw_reply_offsets() {
    // The reply's bytes, read by hand: host name at 28, vendor at 92. pptpd closes
    // about 1 connection in 100 before replying (see docs/benchmarks.md): try 3 times.
    let addr = pptpd_addr();
    let req =
        ControlMessage::StartControlConnectionRequest(StartControlConnectionRequest::new("t", "t"))
            .encode();
    let mut reply = vec![0u8; 156];
    let mut last_err = None;
    for _ in 0..3 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(&req).await.unwrap();
        match tokio::time::timeout(Duration::from_secs(3), s.read_exact(&mut reply)).await {
            Ok(Ok(_)) => {
                last_err = None;
                break;
            }
            other => last_err = Some(format!("{other:?}")),
        }
    }
    assert_eq!(last_err, None, "pptpd did not answer 3 times");
    assert!(reply.len() > HEADER_LEN);
    assert_eq!(&reply[28..33], b"local");
    assert_eq!(reply[33], 0);
    assert_eq!(&reply[92..97], b"linux");
    match ControlMessage::decode(&reply) {
        Ok(ControlMessage::StartControlConnectionReply(r)) => assert_eq!(r.result_code, 1),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn a_connection_dropped_before_the_handshake_is_retried() {
    // The node closes its first control connection at once (as pptpd does with
    // a connection that arrives while it reaps a child).
    let f = fleet(7, vec![(Behaviour::Flaky(1), 1)], 1).await;
    let (out, _) = probe(&LightProber::new(config(500, 2)), f.nodes()[0].addr()).await;
    assert_eq!(out.reached, Level::Light, "{out:?}");
    assert_eq!(out.failure, None);
    f.close().await;

    // With one attempt the same drop is the result.
    let f = fleet(8, vec![(Behaviour::Flaky(1), 1)], 1).await;
    let (out, _) = probe(&LightProber::new(config(500, 1)), f.nodes()[0].addr()).await;
    assert_eq!(out.reached, Level::None, "{out:?}");
    assert_eq!(out.failure, Some(Failure::ClosedEarly));
    f.close().await;
}
