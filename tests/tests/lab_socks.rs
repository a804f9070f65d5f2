//! SOCKS5 services through a real PPTP node (the lab: Debian pptpd + pppd with
//! `require-mppe-128`, in a QEMU VM): `SocksLauncher` over `PptpOpener`
//! serves curl with the VM's file through the MPPE tunnel, refuses a wrong
//! SOCKS password and frees its port on stop; the engine's reconciler brings
//! the service back after a SIGKILL of the Connexa process on the same port
//! with the same credentials; the monitor moves the node `offline` when the
//! VM is powered off and back `online` when it returns, never below level 3;
//! a start that fails (pptpd stopped) leaves the node `speed_ok`.
//!
//! The whole Connexa side runs inside the lab's network namespace (the test
//! thread enters it; the child process and curl are started with
//! `ip netns exec`). Needs the lab and root (`tests/run.sh` as root starts
//! it). The tests run one at a time: the monitor test powers the VM off.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use connexa_core::domain::{
    Event, EventKind, Level, NewNode, Node, NodeFilter, NodeId, Outcome, ServiceEndpoint, Status,
};
use connexa_core::engine::{Engine, EngineConfig, NotAvailable};
use connexa_core::ports::{
    ApplyContext, HistoryEvent, InsertOutcome, NodeStore, ProbeDepth, ProbeError, Prober,
    ServiceLauncher,
};
use connexa_core::service::PptpOpener;
use connexa_core::socks::proto::TargetAddr;
use connexa_core::socks::{SocksConfig, SocksLauncher};
use connexa_core::store::SqlStore;
use connexa_core::tunnel::{GreSocket, TunnelConfig};
use connexa_tests::lab::{Lab, exclusive, in_lab};
use sha2::{Digest, Sha256};

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `curl --socks5-hostname USER:PASS@127.0.0.1:PORT URL` inside the lab's
/// namespace, on a blocking thread (the SOCKS server may run on this runtime).
async fn curl(lab: &Lab, user: &str, pass: &str, port: u16, url: &str) -> Output {
    let args = vec![
        "netns".to_string(),
        "exec".into(),
        lab.netns.clone(),
        "curl".into(),
        "-sS".into(),
        "--max-time".into(),
        "60".into(),
        "--socks5-hostname".into(),
        format!("{user}:{pass}@127.0.0.1:{port}"),
        url.into(),
    ];
    tokio::task::spawn_blocking(move || Command::new("ip").args(&args).output())
        .await
        .expect("curl thread")
        .expect("run curl (apt-get install curl)")
}

/// curl through the service fetches the lab's file with the right sha256.
async fn assert_curl_fetches_the_file(lab: &Lab, ep: &ServiceEndpoint) {
    let started = Instant::now();
    let out = curl(
        lab,
        &ep.username,
        ep.password.expose(),
        ep.port,
        &lab.file_url,
    )
    .await;
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "curl through the service failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "curl via SOCKS5 port {}: {} bytes in {took:.2?} ({:.2} Mbit/s)",
        ep.port,
        out.stdout.len(),
        out.stdout.len() as f64 * 8.0 / took.as_secs_f64() / 1e6
    );
    assert_eq!(out.stdout.len() as u64, lab.file_size);
    assert_eq!(sha256_hex(&out.stdout), lab.file_sha256);
}

/// A connection to the port is refused (nothing listens any more).
async fn assert_port_closed(port: u16) {
    let r = tokio::net::TcpStream::connect(("127.0.0.1", port)).await;
    assert!(
        r.as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused),
        "port {port} still accepts connections: {r:?}"
    );
}

fn lab_node(lab: &Lab) -> Node {
    Node {
        status: Status::SpeedOk,
        service_wanted: true,
        ..lab.node()
    }
}

fn check_target(lab: &Lab) -> TargetAddr {
    TargetAddr::Ip(SocketAddr::from((lab.ppp_server, 80)))
}

async fn wait_sessions_idle(lab: &Lab) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let l = lab.clone();
        let s = tokio::task::spawn_blocking(move || l.sessions())
            .await
            .expect("sessions thread");
        if s.is_ok_and(|s| s.pppd == 0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("the server still has sessions: {:?}", lab.sessions());
}

#[test]
fn lab_socks_service_serves_curl_refuses_a_wrong_password_and_stop_closes_the_port() {
    let lab = Lab::require();
    let _g = exclusive();
    in_lab(&lab, || async {
        let gre = GreSocket::open().expect("raw GRE socket (root)");
        let launcher = SocksLauncher::new(
            Arc::new(PptpOpener::with_gre_socket(TunnelConfig::default(), gre)),
            SocksConfig {
                port_min: 31900,
                port_max: 31949,
                check_target: Some(check_target(&lab)),
                ..SocksConfig::default()
            },
        );
        let node = lab_node(&lab);
        let ep = launcher
            .start(&node, None)
            .await
            .expect("service starts through the lab node");
        assert_eq!(ep.host, "127.0.0.1");
        assert!((31900..=31949).contains(&ep.port), "{ep:?}");
        assert!(ep.username.len() >= 16 && ep.password.expose().len() >= 16);
        assert_eq!(launcher.running().await, vec![node.id]);
        assert!(
            matches!(
                launcher.health(&node).await,
                connexa_core::ports::Health::Healthy
            ),
            "health through the tunnel"
        );

        // The VM's file through SOCKS5 + the MPPE tunnel, as an operator fetches it.
        assert_curl_fetches_the_file(&lab, &ep).await;

        // A wrong SOCKS password is refused (RFC 1929 failure: curl exit 97)
        // and nothing is relayed.
        let wrong = format!("{}x", ep.password.expose());
        let out = curl(&lab, &ep.username, &wrong, ep.port, &lab.file_url).await;
        assert!(!out.status.success(), "a wrong password was accepted");
        assert_eq!(out.status.code(), Some(97), "{out:?}");
        assert!(out.stdout.is_empty());
        let stats = launcher.stats(node.id).expect("stats");
        eprintln!("service stats after the wrong password: {stats:?}");
        assert_eq!((stats.auth_failures, stats.relayed), (1, 1), "{stats:?}");
        assert!(stats.bytes_down >= lab.file_size, "{stats:?}");
        // ...and the service still works for the right one.
        let out = curl(
            &lab,
            &ep.username,
            ep.password.expose(),
            ep.port,
            &format!("http://{}/hello.txt", lab.ppp_server),
        )
        .await;
        assert!(out.status.success(), "{out:?}");
        assert!(!out.stdout.is_empty());

        // Stop: the port is closed when stop returns, the tunnel is torn down
        // politely (the server's pppd exits).
        launcher.stop(node.id).await.expect("stop");
        assert_port_closed(ep.port).await;
        assert!(launcher.running().await.is_empty());
        wait_sessions_idle(&lab).await;
        let s = lab.sessions().expect("sessions");
        assert_eq!(s.pppd_started, s.pppd_exited, "orphan pppd: {s:?}");
    });
}

/// The lab node in a fresh store, `speed_ok` and wanting a service.
async fn wanted_lab_node(store: &dyn NodeStore, lab: &Lab) -> NodeId {
    let new = NewNode::new(
        &lab.server.to_string(),
        u64::from(lab.pptp_port),
        &lab.user,
        &lab.password,
    )
    .expect("node");
    let [InsertOutcome::Inserted(id)] = store.insert(vec![new]).await.expect("insert")[..] else {
        panic!("insert")
    };
    let applied = store
        .apply(
            id,
            Event::Tested(Outcome::success(Level::Speed)),
            ApplyContext::now(),
        )
        .await
        .expect("apply");
    assert_eq!(applied.to, Status::SpeedOk);
    store
        .set_service_wanted(&NodeFilter::ids([id]), true)
        .await
        .expect("want a service");
    id
}

/// Every status the node had since it was verified is at level 3.
async fn assert_never_below_level_3(store: &dyn NodeStore, id: NodeId) -> Vec<Status> {
    let history = store.history(id).await.expect("history");
    let verified_at = history
        .iter()
        .position(|h| h.to == Some(Status::SpeedOk))
        .expect("verified");
    let mut seen = Vec::new();
    for h in &history[verified_at..] {
        let to = h.to.expect("not deleted");
        assert!(to.is_verified(), "dropped below level 3: {h:?}");
        seen.push(to);
    }
    seen
}

/// `ServiceStarted` events in the node's history.
async fn service_starts(store: &dyn NodeStore, id: NodeId) -> usize {
    store
        .history(id)
        .await
        .expect("history")
        .iter()
        .filter(|h| h.event == HistoryEvent::Applied(EventKind::ServiceStarted))
        .count()
}

#[test]
fn lab_socks_service_comes_back_after_sigkill_on_the_same_port_with_the_same_credentials() {
    let lab = Lab::require();
    let _g = exclusive();
    in_lab(&lab, || async {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("svc.db").display());
        let store = SqlStore::connect(&url).await.expect("store");
        let id = wanted_lab_node(&store, &lab).await;
        let target = format!("{}:80", lab.ppp_server);

        let mut first: Option<ServiceEndpoint> = None;
        for round in 0..2 {
            // A Connexa process (reconciler + monitor over the SQLite file,
            // PptpOpener), inside the lab's namespace.
            let mut child = Command::new("ip")
                .args(["netns", "exec", &lab.netns])
                .arg(env!("CARGO_BIN_EXE_socks_service"))
                .args(["--pptp", &url, "31950", "31999", &target])
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn socks_service --pptp");
            let stdout = child.stdout.take().expect("stdout");
            let lines = std::thread::spawn(move || {
                BufReader::new(stdout)
                    .lines()
                    .map_while(Result::ok)
                    .collect::<Vec<_>>()
            });
            let t0 = Instant::now();
            let node = loop {
                assert!(
                    t0.elapsed() < Duration::from_secs(60),
                    "round {round}: no online service"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
                // This process's start is recorded (the store says online
                // from the previous round already).
                if service_starts(&store, id).await <= round {
                    continue;
                }
                let node = store.get(id).await.expect("get").expect("node");
                if node.status == Status::Online && node.service.is_some() {
                    break node;
                }
            };
            let ep = node.service.clone().expect("endpoint");
            eprintln!(
                "round {round}: online on port {} after {:.2?}",
                ep.port,
                t0.elapsed()
            );
            match &first {
                None => first = Some(ep.clone()),
                Some(f) => assert_eq!(&ep, f, "same port and credentials after the restart"),
            }
            assert_curl_fetches_the_file(&lab, &ep).await;
            // Still online after the child's monitor has checked it.
            assert_eq!(
                store.get(id).await.expect("get").expect("node").status,
                Status::Online
            );

            child.kill().expect("SIGKILL");
            child.wait().expect("wait");
            let lines = lines.join().expect("stdout thread");
            assert!(
                lines.iter().any(|l| l.contains("started 1")),
                "round {round}: {lines:?}"
            );
            // Its monitor found the service healthy through the tunnel.
            assert!(
                lines.iter().any(|l| l.ends_with("healthy 1")),
                "round {round}: {lines:?}"
            );
            // The process is gone, and so is its port...
            assert_port_closed(ep.port).await;
            // ...but the store still says online: the next process picks it up.
            assert_eq!(
                store.get(id).await.expect("get").expect("node").status,
                Status::Online
            );
        }
        assert_eq!(service_starts(&store, id).await, 2);
        assert_never_below_level_3(&store, id).await;
        // The killed processes' calls end on the server (TCP 1723 closed).
        wait_sessions_idle(&lab).await;
    });
}

struct NoProber;

#[async_trait::async_trait]
impl Prober for NoProber {
    async fn probe(&self, _: &Node, _: ProbeDepth) -> Result<Outcome, ProbeError> {
        Err(ProbeError::Config("unused".into()))
    }
}

/// A part of the lab switched off (`lab.sh STOP`) for a test; switched on again
/// (`lab.sh START`) by [`Off::restore`], or when dropped.
struct Off<'a> {
    lab: &'a Lab,
    start: &'static str,
    off: bool,
}

impl<'a> Off<'a> {
    fn new(lab: &'a Lab, stop: &'static str, start: &'static str) -> Self {
        lab.script(&[stop])
            .unwrap_or_else(|e| panic!("lab.sh {stop}: {e}"));
        Off {
            lab,
            start,
            off: true,
        }
    }

    async fn restore(&mut self) {
        let (lab, start) = (self.lab.clone(), self.start);
        tokio::task::spawn_blocking(move || lab.script(&[start]))
            .await
            .expect("lab.sh thread")
            .unwrap_or_else(|e| panic!("lab.sh {start}: {e}"));
        self.off = false;
    }
}

impl Drop for Off<'_> {
    fn drop(&mut self) {
        if self.off {
            let _ = self.lab.script(&[self.start]);
        }
    }
}

/// A SQLite store in a temporary directory (returned, so it lives as long).
async fn temp_store(name: &str) -> (tempfile::TempDir, Arc<dyn NodeStore>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}?mode=rwc", dir.path().join(name).display());
    let store: Arc<dyn NodeStore> = Arc::new(SqlStore::connect(&url).await.expect("store"));
    (dir, store)
}

#[test]
fn lab_socks_monitor_moves_the_node_offline_when_the_vm_stops_and_online_when_it_returns() {
    let lab = Lab::require();
    let _g = exclusive();
    in_lab(&lab, || async {
        let (_dir, store) = temp_store("mon.db").await;
        let id = wanted_lab_node(store.as_ref(), &lab).await;
        // Short timers so a dead node is noticed in seconds.
        let mut tunnel = TunnelConfig::default();
        tunnel.auth.connect_timeout = Duration::from_secs(3);
        tunnel.echo_interval = Duration::from_secs(1);
        tunnel.echo_failures = 2;
        tunnel.echo_timeout = Duration::from_secs(2);
        let gre = GreSocket::open().expect("raw GRE socket (root)");
        let launcher = Arc::new(SocksLauncher::new(
            Arc::new(PptpOpener::with_gre_socket(tunnel, gre)),
            SocksConfig {
                port_min: 31900,
                port_max: 31949,
                check_target: Some(check_target(&lab)),
                ..SocksConfig::default()
            },
        ));
        let threshold = 2;
        let engine = Engine::new(
            Arc::clone(&store),
            Arc::new(NoProber),
            Arc::new(NotAvailable),
            launcher.clone(),
            EngineConfig {
                node_timeout: Duration::from_secs(15),
                health_threshold: threshold,
                ..EngineConfig::default()
            },
        );
        let status = || async { store.get(id).await.expect("get").expect("node").status };
        let interval = Duration::from_secs(1);

        let r = engine.reconcile().await.expect("reconcile");
        assert_eq!(r.started, 1, "{r:?}");
        assert_eq!(status().await, Status::Online);
        let ep = store
            .get(id)
            .await
            .expect("get")
            .expect("node")
            .service
            .expect("endpoint");
        let m = engine.monitor().await.expect("monitor");
        assert_eq!((m.checked, m.unhealthy), (1, 0), "{m:?}");
        assert_curl_fetches_the_file(&lab, &ep).await;

        // Power the VM off: the node vanishes (no RST, no LCP Terminate).
        let mut vm = Off::new(&lab, "vm-stop", "vm-start");
        let off_at = Instant::now();
        let mut unhealthy = 0;
        let mut passes = 0;
        while status().await == Status::Online {
            assert!(
                off_at.elapsed() < Duration::from_secs(90),
                "still online {:.0?} after the VM stopped",
                off_at.elapsed()
            );
            let m = engine.monitor().await.expect("monitor");
            passes += 1;
            unhealthy += m.unhealthy;
            if status().await == Status::Online {
                // Below the threshold of failures in a row, still online.
                assert!(unhealthy < u64::from(threshold), "{m:?}");
            }
            tokio::time::sleep(interval).await;
        }
        let node = store.get(id).await.expect("get").expect("node");
        assert_eq!(node.status, Status::Offline);
        assert_eq!(
            unhealthy,
            u64::from(threshold),
            "offline exactly at the threshold"
        );
        eprintln!(
            "offline {:.2?} after the VM stopped ({passes} monitor passes), last error: {:?}",
            off_at.elapsed(),
            node.last_error
        );
        assert!(node.last_error.is_some());
        // The listener stays (the service is still wanted), the reconciler
        // leaves an offline service alone.
        let r = engine.reconcile().await.expect("reconcile");
        assert_eq!((r.started, r.stopped), (0, 0), "{r:?}");
        engine.monitor().await.expect("monitor");
        assert_eq!(status().await, Status::Offline);

        // Boot the VM again: the next checks reopen the tunnel -> online.
        vm.restore().await;
        let back_at = Instant::now();
        while status().await != Status::Online {
            assert!(
                back_at.elapsed() < Duration::from_secs(60),
                "not online {:.0?} after the VM returned",
                back_at.elapsed()
            );
            engine.monitor().await.expect("monitor");
            if status().await != Status::Online {
                tokio::time::sleep(interval).await;
            }
        }
        eprintln!(
            "online again {:.2?} after the VM was ready",
            back_at.elapsed()
        );
        let node = store.get(id).await.expect("get").expect("node");
        assert_eq!(
            node.service.as_ref(),
            Some(&ep),
            "same port and credentials"
        );
        assert_curl_fetches_the_file(&lab, &ep).await;
        let seen = assert_never_below_level_3(store.as_ref(), id).await;
        eprintln!("status history since verified: {seen:?}");
        assert!(seen.contains(&Status::Offline) && seen.last() == Some(&Status::Online));

        // Not wanted any more: stopped, port closed, back to speed_ok.
        store
            .set_service_wanted(&NodeFilter::ids([id]), false)
            .await
            .expect("unwant");
        let r = engine.reconcile().await.expect("reconcile");
        assert_eq!(r.stopped, 1, "{r:?}");
        assert_eq!(status().await, Status::SpeedOk);
        assert_port_closed(ep.port).await;
        assert_never_below_level_3(store.as_ref(), id).await;
        wait_sessions_idle(&lab).await;
    });
}

#[test]
fn lab_socks_start_failure_while_pptpd_is_stopped_keeps_the_node_speed_ok() {
    let lab = Lab::require();
    let _g = exclusive();
    in_lab(&lab, || async {
        let (_dir, store) = temp_store("sf.db").await;
        let id = wanted_lab_node(store.as_ref(), &lab).await;
        let gre = GreSocket::open().expect("raw GRE socket (root)");
        let launcher = Arc::new(SocksLauncher::new(
            Arc::new(PptpOpener::with_gre_socket(TunnelConfig::default(), gre)),
            SocksConfig {
                port_min: 31900,
                port_max: 31949,
                check_target: Some(check_target(&lab)),
                ..SocksConfig::default()
            },
        ));
        let engine = Engine::new(
            Arc::clone(&store),
            Arc::new(NoProber),
            Arc::new(NotAvailable),
            launcher.clone(),
            EngineConfig {
                node_timeout: Duration::from_secs(15),
                health_threshold: 2,
                // This test reconciles by hand: retry as soon as asked.
                restart_backoff: Duration::ZERO,
                ..EngineConfig::default()
            },
        );

        // pptpd is down (TCP 1723 refused): the start fails, the node stays
        // verified, nothing listens.
        let mut pptpd = Off::new(&lab, "pptpd-stop", "pptpd-start");
        let r = engine.reconcile().await.expect("reconcile");
        assert_eq!((r.started, r.start_failed), (0, 1), "{r:?}");
        let node = store.get(id).await.expect("get").expect("node");
        assert_eq!(node.status, Status::SpeedOk);
        assert!(node.service.is_none());
        eprintln!("start failure recorded: {:?}", node.last_error);
        assert!(launcher.running().await.is_empty());
        for port in 31900..=31949 {
            assert_port_closed(port).await;
        }

        // pptpd is back: the next reconcile starts the service.
        pptpd.restore().await;
        let r = engine.reconcile().await.expect("reconcile");
        assert_eq!(r.started, 1, "{r:?}");
        let node = store.get(id).await.expect("get").expect("node");
        assert_eq!(node.status, Status::Online);
        let ep = node.service.expect("endpoint");
        assert_curl_fetches_the_file(&lab, &ep).await;
        let seen = assert_never_below_level_3(store.as_ref(), id).await;
        assert_eq!(seen, vec![Status::SpeedOk, Status::SpeedOk, Status::Online]);
        launcher.stop_all().await;
        assert_port_closed(ep.port).await;
        wait_sessions_idle(&lab).await;
    });
}
