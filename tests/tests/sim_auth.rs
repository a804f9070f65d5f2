//! The simulator's server side for logins, against the real client over real
//! sockets in one process: the client's raw GRE socket (demultiplexing by
//! source) and the fleet's (`IP_HDRINCL`, demultiplexing by destination) both
//! see every GRE packet on loopback and must each ignore the other's.
//!
//! Needs CAP_NET_RAW (root), like the auth test itself: without it these tests
//! fail (they do not skip), because the fleet cannot serve logins.
//!
//! Every fleet here uses its own 127.44.N.0/24 block.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use connexa_core::domain::{Failure, Level, NewNode, NodeFilter, NodeId, Outcome, Status};
use connexa_core::engine::{Engine, EngineConfig, JobOptions, JobSummary, NotAvailable};
use connexa_core::ports::{InsertOutcome, JobKind, JobState, NodeStore, ProbeDepth, Prober};
use connexa_core::pptp::ppp::fsm::FsmConfig;
use connexa_core::probe::{LightProber, ProbeConfig};
use connexa_core::sim::{Behaviour, Fleet, FleetSpec, SimNode};
use connexa_core::store::SqlStore;
use connexa_core::tunnel::{self, AuthConfig, GreSocket};

const PORT: u16 = 21731;

/// Short timers so that silent nodes fail in about a second.
fn auth_config() -> AuthConfig {
    AuthConfig {
        connect_timeout: Duration::from_secs(2),
        handshake_timeout: Duration::from_secs(2),
        call_timeout: Duration::from_secs(2),
        lcp: FsmConfig {
            restart: Duration::from_millis(150),
            max_configure: 4,
            ..FsmConfig::default()
        },
        lcp_timeout: Duration::from_secs(5),
        auth_timeout: Duration::from_millis(800),
        teardown_timeout: Duration::from_millis(500),
        ..AuthConfig::default()
    }
}

fn prober(gre: &Arc<GreSocket>) -> LightProber {
    LightProber::new(ProbeConfig {
        connect_timeout: Duration::from_secs(2),
        handshake_timeout: Duration::from_secs(2),
        attempts: 1,
        icmp: None,
        ..ProbeConfig::default()
    })
    .with_auth_config(auth_config())
    .with_gre_socket(Arc::clone(gre))
}

async fn fleet(block: u8, mix: Vec<(Behaviour, u32)>, count: usize) -> Fleet {
    let f = Fleet::start(
        FleetSpec::new(count)
            .first_ip(Ipv4Addr::new(127, 44, block, 1))
            .port(PORT)
            .mix(mix),
    )
    .await
    .expect("simulated fleet starts");
    assert!(
        f.serves_logins(),
        "the fleet cannot serve logins: {:?} (run as root)",
        f.logins_unavailable()
    );
    f
}

/// Runs a job over every node (`node_secs` per node) and waits for it (at
/// most `job_secs`); it must end done.
async fn run_to_end(engine: &Engine, kind: JobKind, node_secs: u64, job_secs: u64) -> JobSummary {
    let job = engine
        .start_job(
            kind,
            NodeFilter::all(),
            JobOptions::default().node_timeout(Duration::from_secs(node_secs)),
        )
        .await
        .unwrap();
    let summary = tokio::time::timeout(Duration::from_secs(job_secs), engine.wait(job))
        .await
        .expect("the job ends")
        .unwrap();
    assert_eq!(summary.job.state, JobState::Done);
    summary
}

fn gre() -> Arc<GreSocket> {
    GreSocket::open().expect("raw GRE socket (run as root)")
}

fn v4(n: &SimNode) -> SocketAddrV4 {
    SocketAddrV4::new(n.ip, n.port)
}

fn expect_outcome(b: &Behaviour, out: &Outcome) {
    let ctx = format!("{b}: {out:?}");
    match b {
        Behaviour::Healthy => {
            assert_eq!(out.reached, Level::Auth, "{ctx}");
            assert_eq!(out.failure, None, "{ctx}");
            let id = out.measurements.pptp.as_ref().expect("identity");
            assert_eq!(id.vendor, "connexa-sim", "{ctx}");
        }
        Behaviour::AuthReject => {
            assert_eq!(out.reached, Level::Light, "{ctx}");
            assert!(out.is_auth_rejected(), "{ctx}");
            match &out.failure {
                Some(Failure::AuthRejected { code, message }) => {
                    assert_eq!(*code, Some(691), "{ctx}");
                    assert_eq!(message, "Authentication failure", "{ctx}");
                }
                other => panic!("{ctx}: {other:?}"),
            }
        }
        Behaviour::LcpSilent => {
            assert_eq!(out.reached, Level::Light, "{ctx}");
            match &out.failure {
                Some(Failure::LcpFailed { detail }) => {
                    assert!(detail.contains("no answer to LCP"), "{ctx}");
                }
                other => panic!("{ctx}: {other:?}"),
            }
        }
        Behaviour::AuthSilent => {
            assert_eq!(out.reached, Level::Light, "{ctx}");
            assert_eq!(out.failure, Some(Failure::AuthTimeout), "{ctx}");
        }
        Behaviour::CallReject(code) => {
            assert_eq!(out.reached, Level::Light, "{ctx}");
            assert_eq!(
                out.failure,
                Some(Failure::CallRejected { code: *code }),
                "{ctx}"
            );
        }
        Behaviour::Refused => {
            assert_eq!(out.reached, Level::None, "{ctx}");
            assert_eq!(out.failure, Some(Failure::Refused), "{ctx}");
        }
        Behaviour::WrongResultCode(code) => {
            assert_eq!(out.reached, Level::None, "{ctx}");
            assert_eq!(
                out.failure,
                Some(Failure::ControlRejected { code: *code }),
                "{ctx}"
            );
        }
        other => panic!("no expectation for {other}"),
    }
}

#[tokio::test]
async fn auth_probe_of_each_sim_behaviour_gives_its_outcome() {
    let mix = vec![
        (Behaviour::Healthy, 1),
        (Behaviour::AuthReject, 1),
        (Behaviour::LcpSilent, 1),
        (Behaviour::AuthSilent, 1),
        (Behaviour::CallReject(7), 1),
        (Behaviour::CallReject(4), 1),
        (Behaviour::Refused, 1),
        (Behaviour::WrongResultCode(4), 1),
    ];
    let f = fleet(1, mix, 8).await;
    let gre = gre();
    let prober = prober(&gre);
    let outs = futures::future::join_all(f.nodes().iter().enumerate().map(|(i, n)| {
        let node = n.node(NodeId(i as i64 + 1));
        let prober = &prober;
        async move {
            prober
                .probe(&node, ProbeDepth::Auth)
                .await
                .expect("probe runs")
        }
    }))
    .await;
    let mut seen: Vec<String> = Vec::new();
    for (n, out) in f.nodes().iter().zip(&outs) {
        expect_outcome(&n.behaviour, out);
        seen.push(n.behaviour.to_string());
    }
    seen.sort();
    assert_eq!(seen.len(), 8);
    // The same healthy node at light depth is ping_light, not more.
    let healthy = f
        .nodes()
        .iter()
        .find(|n| n.behaviour == Behaviour::Healthy)
        .unwrap();
    let light = prober
        .probe(&healthy.node(NodeId(1)), ProbeDepth::Light)
        .await
        .unwrap();
    assert_eq!(light.reached, Level::Light);
    // A wrong password for a healthy node is rejected too: the node checks
    // the credentials, it does not just say yes.
    let out = prober
        .probe_auth(
            SocketAddr::V4(v4(healthy)),
            &healthy.login,
            &connexa_core::domain::Secret::new("guess"),
        )
        .await
        .unwrap();
    assert!(out.is_auth_rejected(), "{out:?}");
    assert_eq!(f.live_calls(), 0, "every call was cleared");
    assert_eq!(gre.live_routes(), 0);
    f.close().await;
}

#[tokio::test]
async fn logins_to_the_sim_tear_down_politely_after_success_and_failure() {
    let f = fleet(
        2,
        vec![
            (Behaviour::Healthy, 1),
            (Behaviour::AuthReject, 1),
            (Behaviour::LcpSilent, 1),
        ],
        3,
    )
    .await;
    let gre = gre();
    let cfg = auth_config();
    for n in f.nodes() {
        let r = tunnel::login(&gre, v4(n), &n.login, &n.password, &cfg).await;
        let ctx = format!("{}: {r:?}", n.behaviour);
        match n.behaviour {
            Behaviour::Healthy => {
                assert_eq!(r.reached, Level::Auth, "{ctx}");
                assert_eq!(r.message.as_deref(), Some("Access granted"), "{ctx}");
                assert!(r.teardown.lcp_closed, "{ctx}");
            }
            Behaviour::AuthReject => {
                assert!(
                    matches!(
                        r.failure,
                        Some(Failure::AuthRejected {
                            code: Some(691),
                            ..
                        })
                    ),
                    "{ctx}"
                );
                assert!(r.teardown.lcp_closed, "{ctx}");
            }
            _ => assert!(
                matches!(r.failure, Some(Failure::LcpFailed { .. })),
                "{ctx}"
            ),
        }
        // Call-Clear-Request answered with Call-Disconnect-Notify, then
        // Stop-Control-Connection-Request with its reply: the sim never hangs up first.
        assert!(r.teardown.call_cleared, "{ctx}");
        assert!(r.teardown.control_stopped, "{ctx}");
        assert!(!r.teardown.server_closed, "{ctx}");
        assert!(r.call_ms.is_some() && r.login_ms.is_some(), "{ctx}");
    }
    assert_eq!(f.live_calls(), 0);
    f.close().await;
}

#[tokio::test]
async fn client_and_sim_gre_sockets_ignore_each_others_packets() {
    let f = fleet(3, vec![(Behaviour::Healthy, 1)], 20).await;
    let gre = gre();
    let cfg = auth_config();
    let before = gre.stats();
    let reports = futures::future::join_all(
        f.nodes()
            .iter()
            .map(|n| tunnel::login(&gre, v4(n), &n.login, &n.password, &cfg)),
    )
    .await;
    for r in &reports {
        assert_eq!(r.reached, Level::Auth, "{r:?}");
    }
    let sim = f.gre_stats().expect("sim GRE stats");
    let client = gre.stats();
    // Every packet the nodes sent came back to the fleet's own socket (a raw
    // socket sees all GRE on loopback) and was ignored as not addressed to a node.
    assert!(sim.sent > 0);
    assert!(
        sim.foreign >= sim.sent,
        "fleet ignored {} of its own {} packets",
        sim.foreign,
        sim.sent
    );
    assert_eq!(sim.malformed, 0);
    // The client's packets reached the calls; the client saw its own packets
    // too and dropped them (their source is not a registered peer).
    assert!(sim.delivered > 0);
    let delivered = client.delivered - before.delivered;
    let unrouted = client.unrouted - before.unrouted;
    assert!(delivered > 0);
    assert!(
        unrouted >= sim.delivered,
        "client dropped {unrouted} packets, the fleet received {} from it",
        sim.delivered
    );
    assert_eq!(client.overflow, before.overflow);
    f.close().await;
}

#[tokio::test]
async fn closing_the_fleet_mid_login_ends_the_call_and_leaves_no_task() {
    let gre = gre();
    let metrics = tokio::runtime::Handle::current().metrics();
    let tasks_before = metrics.num_alive_tasks();
    let f = fleet(4, vec![(Behaviour::LcpSilent, 1)], 2).await;
    assert!(metrics.num_alive_tasks() > tasks_before);
    let node = f.nodes()[0].clone();
    let mut cfg = auth_config();
    cfg.lcp = FsmConfig {
        restart: Duration::from_secs(5),
        max_configure: 10,
        ..FsmConfig::default()
    };
    cfg.lcp_timeout = Duration::from_secs(60);
    let login = tunnel::login(&gre, v4(&node), &node.login, &node.password, &cfg);
    let close = async {
        // Wait until the call is up, then stop the fleet under it.
        for _ in 0..200 {
            if f.live_calls() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(f.live_calls(), 1, "the call is up");
        f.close().await;
    };
    let (report, ()) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(login, close)
    })
    .await
    .expect("the login ends once the fleet closes");
    assert_eq!(report.reached, Level::Light, "{report:?}");
    match &report.failure {
        Some(Failure::LcpFailed { detail }) => assert!(
            detail.contains("disconnected the call") || detail.contains("stopped the control"),
            "{report:?}"
        ),
        other => panic!("{other:?}"),
    }
    // Every listener, connection and the GRE reader are gone.
    assert_eq!(metrics.num_alive_tasks(), tasks_before);
    // The addresses are free again.
    let again = fleet(4, vec![(Behaviour::Healthy, 1)], 2).await;
    let n = &again.nodes()[0];
    let r = tunnel::login(&gre, v4(n), &n.login, &n.password, &auth_config()).await;
    assert_eq!(r.reached, Level::Auth, "{r:?}");
    again.close().await;
    assert_eq!(metrics.num_alive_tasks(), tasks_before);
}

#[tokio::test]
async fn auth_job_over_a_mixed_sim_fleet_ends_with_counts_matching_the_mix() {
    let f = fleet(
        5,
        vec![
            (Behaviour::Healthy, 20),
            (Behaviour::AuthReject, 10),
            (Behaviour::CallReject(7), 3),
            (Behaviour::LcpSilent, 2),
            (Behaviour::AuthSilent, 1),
            (Behaviour::Refused, 4),
        ],
        40,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("c.db").display());
    let store = Arc::new(SqlStore::connect(&url).await.unwrap());
    let new: Vec<NewNode> = f
        .nodes()
        .iter()
        .map(|n| {
            NewNode::new(
                &n.ip.to_string(),
                u64::from(n.port),
                &n.login,
                n.password.expose(),
            )
            .unwrap()
        })
        .collect();
    let inserted = store.insert(new).await.unwrap();
    assert!(
        inserted
            .iter()
            .all(|o| matches!(o, InsertOutcome::Inserted(_)))
    );
    let gre = gre();
    let engine = Engine::new(
        store.clone(),
        Arc::new(prober(&gre)),
        Arc::new(NotAvailable),
        Arc::new(NotAvailable),
        EngineConfig {
            poll_interval: Duration::from_millis(100),
            ..EngineConfig::default()
        },
    );
    let summary = run_to_end(&engine, JobKind::Auth, 20, 60).await;
    assert_eq!(summary.progress.total, 40);
    assert!(summary.progress.is_complete());
    let counts: HashMap<Status, u64> = store.counts().await.unwrap().into_iter().collect();
    let get = |s| counts.get(&s).copied().unwrap_or(0);
    assert_eq!(get(Status::PingOk), 20, "{counts:?}");
    assert_eq!(get(Status::AuthFailed), 10, "{counts:?}");
    // Calls rejected, LCP or authentication silent: the server answered PPTP.
    assert_eq!(get(Status::PingLight), 6, "{counts:?}");
    assert_eq!(get(Status::PingFailed), 4, "{counts:?}");
    assert_eq!(f.live_calls(), 0);
    f.close().await;
}

/// A data path that echoes every frame back, and records who logged in.
struct Echo {
    out: std::collections::VecDeque<Vec<u8>>,
}

impl connexa_core::sim::DataPath for Echo {
    fn handle_frame(&mut self, frame: &[u8], _now: std::time::Instant) {
        self.out.push_back(frame.to_vec());
    }
    fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.out.pop_front()
    }
    fn poll_timeout(&self) -> Option<std::time::Instant> {
        None
    }
    fn handle_timeout(&mut self, _now: std::time::Instant) {}
}

#[tokio::test]
async fn after_login_other_protocols_go_to_the_plugged_in_data_path() {
    use connexa_core::pptp::control::{
        ControlMessage, Framer, OutgoingCallRequest, StartControlConnectionRequest, Text64,
    };
    use connexa_core::pptp::gre::{Accepted, GrePacket, GreSession};
    use connexa_core::pptp::login::{LoginClient, LoginConfig};
    use connexa_core::pptp::ppp::{PROTO_IPCP, PppFrame};
    use std::sync::Mutex;
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let logged_in: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = Arc::clone(&logged_in);
    let factory: connexa_core::sim::DataPathFactory = Arc::new(move |node, user, _now| {
        seen.lock().unwrap().push(format!("{} {user}", node.ip));
        Box::new(Echo {
            out: Default::default(),
        })
    });
    let f = Fleet::start_with_data_path(
        FleetSpec::new(1)
            .first_ip(Ipv4Addr::new(127, 44, 6, 1))
            .port(PORT),
        factory,
    )
    .await
    .unwrap();
    assert!(f.serves_logins(), "{:?}", f.logins_unavailable());
    let node = f.nodes()[0].clone();
    let gre = gre();

    // Control connection and call, by hand.
    let mut tcp = tokio::net::TcpStream::connect(node.addr()).await.unwrap();
    let mut framer = Framer::new();
    let mut buf = vec![0u8; 2048];
    async fn next(
        tcp: &mut tokio::net::TcpStream,
        framer: &mut Framer,
        buf: &mut [u8],
    ) -> ControlMessage {
        loop {
            if let Some(frame) = framer.next_frame().unwrap() {
                return ControlMessage::decode(&frame).unwrap();
            }
            let n = tcp.read(buf).await.unwrap();
            assert!(n > 0, "control connection closed");
            framer.push(&buf[..n]);
        }
    }
    let sccrq =
        ControlMessage::StartControlConnectionRequest(StartControlConnectionRequest::new("t", "t"));
    tcp.write_all(&sccrq.encode()).await.unwrap();
    assert!(matches!(
        next(&mut tcp, &mut framer, &mut buf).await,
        ControlMessage::StartControlConnectionReply(r) if r.result_code == 1
    ));
    let mut route = gre.register(node.ip).unwrap();
    let ocrq = ControlMessage::OutgoingCallRequest(OutgoingCallRequest {
        call_id: route.call_id(),
        call_serial_number: 1,
        minimum_bps: 2400,
        maximum_bps: 10_000_000,
        bearer_type: 3,
        framing_type: 3,
        packet_recv_window_size: 64,
        packet_processing_delay: 0,
        phone_number_length: 0,
        phone_number: Text64::default(),
        subaddress: Text64::default(),
    });
    tcp.write_all(&ocrq.encode()).await.unwrap();
    let ControlMessage::OutgoingCallReply(ocrp) = next(&mut tcp, &mut framer, &mut buf).await
    else {
        panic!("no Outgoing-Call-Reply")
    };
    assert_eq!((ocrp.result_code, ocrp.peer_call_id), (1, route.call_id()));

    // LCP + MS-CHAPv2, then one IPCP frame; its echo comes back.
    let mut login = LoginClient::new(
        LoginConfig::new(node.login.clone(), node.password.clone()),
        Instant::now(),
    );
    let mut session = GreSession::new(route.call_id(), ocrp.call_id, Duration::from_millis(50));
    let ipcp = PppFrame {
        protocol: PROTO_IPCP,
        information: &[1, 7, 0, 4],
    }
    .encode(false, false);
    let mut sent_ipcp = false;
    let echoed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if login.outcome().is_some_and(|o| o.is_success()) && !sent_ipcp {
                let mut out = Vec::new();
                session.encode(&ipcp, &mut out).unwrap();
                route.send(&out).await.unwrap();
                sent_ipcp = true;
            }
            while let Some(frame) = login.poll_transmit() {
                let mut out = Vec::new();
                session.encode(&frame, &mut out).unwrap();
                route.send(&out).await.unwrap();
            }
            if let Some(up) = login.poll_upper() {
                return up;
            }
            let pkt = route.recv().await.unwrap();
            let pkt = GrePacket::decode(&pkt).unwrap();
            if let Accepted::Payload(p) = session.accept(&pkt, Instant::now()) {
                login.handle_input(p, Instant::now());
            }
        }
    })
    .await
    .expect("the data path answers");
    assert!(login.outcome().unwrap().is_success());
    assert_eq!(echoed, ipcp);
    assert_eq!(
        *logged_in.lock().unwrap(),
        vec![format!("{} {}", node.ip, node.login)]
    );
    drop(route);
    drop(tcp);
    f.close().await;
}

/// GET /bytes?n through the tunnel; returns the body length, the number of
/// octets that differ from the pattern, and the time the body took.
async fn fetch(t: &connexa_core::tunnel::Tunnel, n: u64) -> (u64, u64, Duration) {
    use connexa_core::sim::{TUNNEL_HOST, pattern};
    use connexa_core::speed::http::{self, HttpUrl};
    let url = HttpUrl::parse(&format!("http://{TUNNEL_HOST}/bytes?{n}")).unwrap();
    let mut s = t
        .connect(SocketAddr::from((TUNNEL_HOST, 80)))
        .await
        .expect("connect through the tunnel");
    let started = std::time::Instant::now();
    let mut i = 0u64;
    let mut bad = 0u64;
    let (_, len) = http::get(&mut s, &url, |d| {
        for b in d {
            bad += u64::from(*b != pattern(i));
            i += 1;
        }
    })
    .await
    .expect("GET");
    (len, bad, started.elapsed())
}

#[tokio::test]
async fn sim_tunnels_carry_http_bytes_through_mppe_within_each_nodes_rate_limit() {
    use connexa_core::sim::{TUNNEL_HOST, TunnelSpec};
    use connexa_core::tunnel::{Tunnel, TunnelConfig};
    let gre = gre();
    let open = |f: &Fleet| {
        let n = f.nodes()[0].clone();
        let gre = Arc::clone(&gre);
        async move {
            Tunnel::open_addr(
                n.addr(),
                &n.login,
                &n.password,
                &TunnelConfig::default(),
                gre,
            )
            .await
            .expect("tunnel up")
        }
    };
    // Unlimited: 2 MB through MPPE, every octet checked.
    let free = Fleet::start(
        FleetSpec::new(1)
            .first_ip(Ipv4Addr::new(127, 44, 7, 1))
            .port(PORT)
            .tunnels(TunnelSpec::default()),
    )
    .await
    .unwrap();
    let t = open(&free).await;
    assert_eq!(t.local_addr(), Ipv4Addr::new(10, 78, 0, 100));
    assert_eq!(t.peer_addr(), Some(TUNNEL_HOST));
    let (len, bad, _) = fetch(&t, 2_000_000).await;
    assert_eq!((len, bad), (2_000_000, 0));
    let teardown = t.close().await;
    assert!(
        teardown.lcp_closed && teardown.call_cleared && teardown.control_stopped,
        "{teardown:?}"
    );
    free.close().await;

    // 100 kB/s per node: 250 kB cannot arrive faster than the bucket allows
    // (its burst is a tenth of a second's worth), and two calls to two nodes
    // each get their own budget.
    let rate = 100_000u64;
    let limited = Fleet::start(
        FleetSpec::new(2)
            .first_ip(Ipv4Addr::new(127, 44, 8, 1))
            .port(PORT)
            .tunnels(TunnelSpec {
                rate_limit: Some(rate),
                ..TunnelSpec::default()
            }),
    )
    .await
    .unwrap();
    let a = open(&limited).await;
    let second = limited.nodes()[1].clone();
    let b = Tunnel::open_addr(
        second.addr(),
        &second.login,
        &second.password,
        &TunnelConfig::default(),
        Arc::clone(&gre),
    )
    .await
    .expect("second tunnel up");
    let n = 250_000u64;
    let ((la, bada, ta), (lb, badb, tb)) = tokio::join!(fetch(&a, n), fetch(&b, n));
    assert_eq!((la, bada, lb, badb), (n, 0, n, 0));
    let floor = Duration::from_secs_f64((n - rate / 10) as f64 / rate as f64 * 0.95);
    assert!(ta >= floor && tb >= floor, "{ta:?} {tb:?} < {floor:?}");
    a.close().await;
    b.close().await;
    assert_eq!(limited.live_calls(), 0);
    limited.close().await;
}

#[tokio::test]
async fn pipeline_job_over_sim_fleets_with_tunnels_ends_speed_ok_only_where_fast_enough() {
    use connexa_core::sim::TunnelSpec;
    use connexa_core::speed::{HttpSpeedTester, SpeedConfig};
    // Fast nodes (no limit, one of them rejects the password) and slow nodes
    // (50 kB/s = 0.4 Mbit/s each, below the 1 Mbit/s threshold).
    let fast = Fleet::start(
        FleetSpec::new(3)
            .first_ip(Ipv4Addr::new(127, 44, 10, 1))
            .port(PORT)
            .mix(vec![(Behaviour::Healthy, 2), (Behaviour::AuthReject, 1)])
            .tunnels(TunnelSpec::default()),
    )
    .await
    .unwrap();
    let slow = Fleet::start(
        FleetSpec::new(2)
            .first_ip(Ipv4Addr::new(127, 44, 11, 1))
            .port(PORT)
            .tunnels(TunnelSpec {
                rate_limit: Some(50_000),
                ..TunnelSpec::default()
            }),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("c.db").display());
    let store = Arc::new(SqlStore::connect(&url).await.unwrap());
    let new: Vec<NewNode> = fast
        .nodes()
        .iter()
        .chain(slow.nodes())
        .map(|n| {
            NewNode::new(
                &n.ip.to_string(),
                u64::from(n.port),
                &n.login,
                n.password.expose(),
            )
            .unwrap()
        })
        .collect();
    store.insert(new).await.unwrap();
    let gre = gre();
    let speed = SpeedConfig {
        download_urls: vec!["http://10.78.0.1/bytes?100000000".into()],
        duration: Duration::from_millis(2000),
        warmup: Duration::from_millis(400),
        streams: 2,
        threshold_mbps: 1.0,
        ..SpeedConfig::default()
    };
    let engine = Engine::new(
        store.clone(),
        Arc::new(prober(&gre)),
        Arc::new(HttpSpeedTester::with_gre_socket(speed, Arc::clone(&gre))),
        Arc::new(NotAvailable),
        EngineConfig {
            poll_interval: Duration::from_millis(100),
            ..EngineConfig::default()
        },
    );
    run_to_end(&engine, JobKind::Pipeline, 30, 90).await;
    let counts: HashMap<Status, u64> = store.counts().await.unwrap().into_iter().collect();
    let get = |s| counts.get(&s).copied().unwrap_or(0);
    assert_eq!(get(Status::SpeedOk), 2, "{counts:?}");
    assert_eq!(get(Status::PingOk), 2, "too slow stays ping_ok: {counts:?}");
    assert_eq!(get(Status::AuthFailed), 1, "{counts:?}");
    assert_eq!(fast.live_calls() + slow.live_calls(), 0);
    fast.close().await;
    slow.close().await;
}

#[tokio::test]
async fn tunnels_and_auth_logins_retry_a_connection_dropped_before_the_handshake() {
    use connexa_core::tunnel::{Tunnel, TunnelConfig, TunnelError};
    let gre = gre();
    let open = |f: &Fleet, attempts: u32| {
        let n = f.nodes()[0].clone();
        let gre = Arc::clone(&gre);
        async move {
            let config = TunnelConfig {
                attempts,
                backoff: Duration::from_millis(50),
                ..TunnelConfig::default()
            };
            Tunnel::open_addr(n.addr(), &n.login, &n.password, &config, gre).await
        }
    };
    // The default (2 tries) gets through a node that drops the first connection.
    let flaky = |block: u8| async move {
        Fleet::start(
            FleetSpec::new(1)
                .first_ip(Ipv4Addr::new(127, 44, block, 1))
                .port(PORT)
                .mix(vec![(Behaviour::Flaky(1), 1)])
                .tunnels(connexa_core::sim::TunnelSpec::default()),
        )
        .await
        .expect("simulated fleet starts")
    };
    let f = flaky(12).await;
    let t = open(&f, 2).await.expect("the second try opens the tunnel");
    t.close().await;
    f.close().await;
    // One try: the dropped connection is the answer, at level None.
    let f = flaky(13).await;
    match open(&f, 1).await {
        Err(TunnelError::Failed {
            reached, failure, ..
        }) => {
            assert_eq!(reached, Level::None);
            assert_eq!(failure, Failure::ClosedEarly);
        }
        other => panic!("expected ClosedEarly, got {other:?}"),
    }
    f.close().await;
    // The auth probe retries the same way (2 attempts by default).
    let f = fleet(14, vec![(Behaviour::Flaky(1), 1)], 1).await;
    let retrying = LightProber::new(ProbeConfig {
        attempts: 2,
        backoff: Duration::from_millis(50),
        icmp: None,
        ..ProbeConfig::default()
    })
    .with_auth_config(auth_config())
    .with_gre_socket(Arc::clone(&gre));
    let out = retrying
        .probe_auth(
            v4(&f.nodes()[0]).into(),
            &f.nodes()[0].login,
            &f.nodes()[0].password,
        )
        .await
        .expect("probe runs");
    assert_eq!(out.reached, Level::Auth, "{out:?}");
    f.close().await;
}

/// `[test] auth_timeout_secs` of the configuration file reaches the login: a
/// node that falls silent instead of sending the MS-CHAPv2 Challenge fails
/// after the configured 1 s, not after the built-in 15 s.
#[tokio::test]
async fn auth_timeout_of_the_config_file_ends_a_silent_login() {
    use connexa_core::config::TestConfig;
    let f = fleet(15, vec![(Behaviour::AuthSilent, 1)], 1).await;
    let gre = gre();
    let t = TestConfig {
        connect_timeout_secs: 2.0,
        light_timeout_secs: 2.0,
        auth_timeout_secs: 1.0,
        ..TestConfig::default()
    };
    let prober = connexa_core::runtime::prober(&t).with_gre_socket(Arc::clone(&gre));
    let node = f.nodes()[0].node(NodeId(1));
    // Far below the built-in 15 s (plus LCP and teardown), far above 1 s.
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        prober.probe(&node, ProbeDepth::Auth),
    )
    .await
    .expect("the configured auth timeout ends the login, not the 15 s default")
    .expect("probe runs");
    assert_eq!(out.reached, Level::Light, "{out:?}");
    assert_eq!(out.failure, Some(Failure::AuthTimeout), "{out:?}");
    assert_eq!(f.live_calls(), 0, "the call was cleared");
    f.close().await;
}

/// `[test] speed_timeout_secs` bounds the whole speed test: a 30 s
/// measurement configured with a 3 s timeout ends after about 3 s, logged in
/// (`ping_ok`, level 2) with the reason.
#[tokio::test]
async fn speed_timeout_of_the_config_file_ends_a_long_measurement_at_level_2() {
    use connexa_core::config::TestConfig;
    use connexa_core::sim::TunnelSpec;
    use connexa_core::speed::{HttpSpeedTester, SpeedConfig};
    let f = Fleet::start(
        FleetSpec::new(1)
            .first_ip(Ipv4Addr::new(127, 44, 16, 1))
            .port(PORT)
            .tunnels(TunnelSpec::default()),
    )
    .await
    .unwrap();
    let gre = gre();
    let t = TestConfig {
        test_url: "http://10.78.0.1/bytes?100000000".into(),
        speed_duration_secs: 30.0,
        speed_warmup_secs: 1.0,
        speed_streams: 1,
        speed_timeout_secs: 3.0,
        ..TestConfig::default()
    };
    let speed =
        HttpSpeedTester::with_gre_socket(SpeedConfig::from_test_config(&t), Arc::clone(&gre));
    let node = f.nodes()[0].node(NodeId(1));
    let out = tokio::time::timeout(Duration::from_secs(20), speed.measure_node(&node))
        .await
        .expect("speed_timeout_secs ends the 30 s measurement")
        .expect("the test runs");
    assert_eq!(out.reached, Level::Auth, "{out:?}");
    match &out.failure {
        Some(Failure::Other { detail }) => {
            assert!(detail.contains("did not finish within 3 s"), "{detail}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(f.live_calls(), 0, "the tunnel was closed");
    f.close().await;
}

/// The reported bug on real sockets: an auth job whose per-node budget is
/// shorter than the login turned `ping_light` nodes into `ping_failed`. Now the
/// overrun is inconclusive: `ping_light` and `auth_failed` stay, a pipeline
/// past light ends `ping_light`, and the history says why.
#[tokio::test]
async fn budget_shorter_than_the_login_demotes_no_node() {
    use connexa_core::domain::EventKind;
    use connexa_core::ports::{ApplyContext, HistoryEvent};
    let f = fleet(17, vec![(Behaviour::AuthSilent, 1)], 3).await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("c.db").display());
    let store = Arc::new(SqlStore::connect(&url).await.unwrap());
    let new: Vec<NewNode> = f
        .nodes()
        .iter()
        .map(|n| {
            NewNode::new(
                &n.ip.to_string(),
                u64::from(n.port),
                &n.login,
                n.password.expose(),
            )
            .unwrap()
        })
        .collect();
    let ids: Vec<NodeId> = store
        .insert(new)
        .await
        .unwrap()
        .into_iter()
        .map(|o| match o {
            InsertOutcome::Inserted(id) => id,
            other => panic!("{other:?}"),
        })
        .collect();
    let (light, rejected, fresh) = (ids[0], ids[1], ids[2]);
    let mark = |id, o| {
        let store = Arc::clone(&store);
        async move {
            store
                .apply(
                    id,
                    connexa_core::domain::Event::Tested(o),
                    ApplyContext::now(),
                )
                .await
                .unwrap()
        }
    };
    mark(light, Outcome::success(Level::Light)).await;
    mark(
        rejected,
        Outcome::failed(
            Level::Light,
            Failure::AuthRejected {
                code: Some(691),
                message: String::new(),
            },
        ),
    )
    .await;
    // The login would take 20 s (the node never sends its Challenge); the budget is 2 s.
    let gre = gre();
    let slow_login = LightProber::new(ProbeConfig {
        connect_timeout: Duration::from_secs(2),
        handshake_timeout: Duration::from_secs(2),
        attempts: 1,
        icmp: None,
        ..ProbeConfig::default()
    })
    .with_auth_config(AuthConfig {
        auth_timeout: Duration::from_secs(20),
        ..auth_config()
    })
    .with_gre_socket(Arc::clone(&gre));
    let engine = Engine::new(
        store.clone(),
        Arc::new(slow_login),
        Arc::new(NotAvailable),
        Arc::new(NotAvailable),
        EngineConfig {
            poll_interval: Duration::from_millis(100),
            ..EngineConfig::default()
        },
    );
    let run = |kind, filter| {
        let engine = &engine;
        async move {
            let job = engine
                .start_job(
                    kind,
                    filter,
                    JobOptions::default().node_timeout(Duration::from_secs(2)),
                )
                .await
                .unwrap();
            let s = tokio::time::timeout(Duration::from_secs(30), engine.wait(job))
                .await
                .expect("the job ends")
                .unwrap();
            assert_eq!(s.job.state, JobState::Done);
            s
        }
    };
    let s = run(JobKind::Auth, NodeFilter::ids([light, rejected])).await;
    assert_eq!(s.progress.timed_out, 2, "{:?}", s.progress);
    let s = run(JobKind::Pipeline, NodeFilter::ids([fresh])).await;
    assert_eq!(s.progress.timed_out, 1, "{:?}", s.progress);
    for (id, from, to) in [
        (light, Status::PingLight, Status::PingLight),
        (rejected, Status::AuthFailed, Status::AuthFailed),
        (fresh, Status::NotTested, Status::PingLight),
    ] {
        let n = store.get(id).await.unwrap().unwrap();
        assert_eq!(n.status, to);
        let h = store.history(id).await.unwrap();
        let last = h.last().unwrap();
        assert_eq!(last.event, HistoryEvent::Applied(EventKind::Inconclusive));
        assert_eq!((last.from, last.to), (from, Some(to)));
        assert_eq!(
            last.detail.as_deref(),
            Some("budget exceeded after 2 s at stage auth")
        );
    }
    assert_eq!(
        store
            .get(rejected)
            .await
            .unwrap()
            .unwrap()
            .consecutive_failures,
        1,
        "only the real rejection counts"
    );
    f.close().await;
}
