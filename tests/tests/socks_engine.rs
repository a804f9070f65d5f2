//! SOCKS5 services driven by the engine on a real SQLite store: the reconciler
//! brings services back after a SIGKILL on the same port with the same
//! credentials, and the monitor moves a node `online` -> `offline` -> `online`
//! as its tunnel dies and returns, never below level 3.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use connexa_core::domain::{
    Event, Level, NewNode, Node, NodeFilter, NodeId, Outcome, ServiceEndpoint, Status,
};
use connexa_core::engine::{Engine, EngineConfig, NotAvailable};
use connexa_core::ports::{
    ApplyContext, HistoryEvent, InsertOutcome, NodeStore, ProbeDepth, ProbeError, Prober,
};
use connexa_core::socks::proto::TargetAddr;
use connexa_core::socks::{SocksConfig, SocksLauncher};
use connexa_core::store::SqlStore;
use connexa_tests::socks_kit::*;

/// A verified node wanting a service, in `store`.
async fn wanted_node(store: &dyn NodeStore) -> NodeId {
    let new = NewNode::new("127.0.0.1", 1723, "svc", "pw").unwrap();
    let [InsertOutcome::Inserted(id)] = store.insert(vec![new]).await.unwrap()[..] else {
        panic!("insert")
    };
    let applied = store
        .apply(
            id,
            Event::Tested(Outcome::success(Level::Speed)),
            ApplyContext::now(),
        )
        .await
        .unwrap();
    assert_eq!(applied.to, Status::SpeedOk);
    store
        .set_service_wanted(&NodeFilter::ids([id]), true)
        .await
        .unwrap();
    id
}

/// Every status the node had since it was verified is at level 3.
async fn assert_never_below_level_3(store: &dyn NodeStore, id: NodeId) {
    let history = store.history(id).await.unwrap();
    let verified_at = history
        .iter()
        .position(|h| h.to == Some(Status::SpeedOk))
        .expect("verified");
    for h in &history[verified_at..] {
        let to = h.to.expect("not deleted");
        assert!(to.is_verified(), "dropped below level 3: {h:?}");
    }
}

fn proxy(ep: &ServiceEndpoint) -> SocketAddr {
    SocketAddr::new(ep.host.parse().unwrap(), ep.port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_comes_back_on_the_same_port_with_the_same_credentials_after_sigkill() {
    let files = FileServer::start(256 * 1024).await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("svc.db").display());
    let store = SqlStore::connect(&url).await.unwrap();
    let id = wanted_node(&store).await;

    let mut first: Option<ServiceEndpoint> = None;
    for round in 0..2 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_socks_service"))
            .args([&url, "31700", "31799", &files.addr.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn socks_service");
        let stdout = child.stdout.take().unwrap();
        let lines = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<_>>()
        });
        // Wait for the service: online in the store and downloading through it.
        let t0 = Instant::now();
        let (node, body) = loop {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "round {round}: no service"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
            let node = store.get(id).await.unwrap().unwrap();
            let Some(ep) = node.service.clone() else {
                continue;
            };
            if node.status != Status::Online {
                continue;
            }
            let t = TargetAddr::Ip(files.addr);
            if let Ok(body) =
                fetch_via_socks(proxy(&ep), &ep.username, ep.password.expose(), &t).await
            {
                break (node, body);
            }
        };
        assert_eq!(sha256_hex(&body), files.sha256);
        let ep = node.service.clone().unwrap();
        match &first {
            None => first = Some(ep.clone()),
            Some(f) => {
                assert_eq!(&ep, f, "same port and credentials after the restart");
            }
        }
        if round == 1 {
            // With curl too, as an operator would.
            let out = Command::new("curl")
                .args(["-sS", "--max-time", "20", "--socks5-hostname"])
                .arg(format!(
                    "{}:{}@127.0.0.1:{}",
                    ep.username,
                    ep.password.expose(),
                    ep.port
                ))
                .arg(files.url())
                .output()
                .expect("curl");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(sha256_hex(&out.stdout), files.sha256);
        }
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        let lines = lines.join().unwrap();
        assert!(lines.iter().any(|l| l.contains("started 1")), "{lines:?}");
        // The process is gone, and so is its port.
        assert!(tokio::net::TcpStream::connect(proxy(&ep)).await.is_err());
        // The store still says online: the next process picks the service up.
        assert_eq!(store.get(id).await.unwrap().unwrap().status, Status::Online);
    }
    let history = store.history(id).await.unwrap();
    let starts = history
        .iter()
        .filter(|h| {
            h.event == HistoryEvent::Applied(connexa_core::domain::EventKind::ServiceStarted)
        })
        .count();
    assert_eq!(starts, 2, "{history:?}");
    assert_never_below_level_3(&store, id).await;
}

struct NoProber;

#[async_trait]
impl Prober for NoProber {
    async fn probe(&self, _: &Node, _: ProbeDepth) -> Result<Outcome, ProbeError> {
        Err(ProbeError::Config("unused".into()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_moves_a_dead_tunnel_offline_after_the_threshold_and_back_online() {
    let files = FileServer::start(100 * 1024).await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("mon.db").display());
    let store: Arc<dyn NodeStore> = Arc::new(SqlStore::connect(&url).await.unwrap());
    let id = wanted_node(store.as_ref()).await;
    let opener = ControlledOpener::new(&[]);
    let launcher = Arc::new(SocksLauncher::new(
        Arc::new(opener.clone()),
        SocksConfig {
            port_min: 31800,
            port_max: 31849,
            check_target: Some(TargetAddr::Ip(files.addr)),
            ..SocksConfig::default()
        },
    ));
    let engine = Engine::new(
        Arc::clone(&store),
        Arc::new(NoProber),
        Arc::new(NotAvailable),
        launcher.clone(),
        EngineConfig {
            node_timeout: Duration::from_secs(5),
            health_threshold: 2,
            // This test reconciles by hand: retry a failed start as soon as asked.
            restart_backoff: Duration::ZERO,
            ..EngineConfig::default()
        },
    );
    let status = || async { store.get(id).await.unwrap().unwrap().status };

    // The node is down when the service is first wanted: the start fails and
    // the node stays speed_ok.
    opener.set_up(false);
    let r = engine.reconcile().await.unwrap();
    assert_eq!((r.started, r.start_failed), (0, 1));
    assert_eq!(status().await, Status::SpeedOk);
    opener.set_up(true);
    let r = engine.reconcile().await.unwrap();
    assert_eq!(r.started, 1);
    assert_eq!(status().await, Status::Online);
    let ep = store.get(id).await.unwrap().unwrap().service.unwrap();
    let fetch = || {
        let ep = ep.clone();
        let t = TargetAddr::Ip(files.addr);
        async move { fetch_via_socks(proxy(&ep), &ep.username, ep.password.expose(), &t).await }
    };
    assert_eq!(sha256_hex(&fetch().await.unwrap()), files.sha256);
    let m = engine.monitor().await.unwrap();
    assert_eq!((m.checked, m.unhealthy), (1, 0));

    // The tunnel dies (and cannot be reopened): one failure is not enough...
    opener.set_up(false);
    assert!(fetch().await.is_err());
    let m = engine.monitor().await.unwrap();
    assert_eq!((m.unhealthy, m.health_failed), (1, 0));
    assert_eq!(status().await, Status::Online);
    // ...the threshold (2) is.
    let m = engine.monitor().await.unwrap();
    assert_eq!(m.health_failed, 1);
    let node = store.get(id).await.unwrap().unwrap();
    assert_eq!(node.status, Status::Offline);
    assert!(
        node.last_error.as_deref().unwrap_or("").contains("tunnel"),
        "{:?}",
        node.last_error
    );
    engine.monitor().await.unwrap();
    assert_eq!(status().await, Status::Offline);
    // The reconciler leaves an offline service alone (it still runs, wanted).
    let r = engine.reconcile().await.unwrap();
    assert_eq!((r.started, r.stopped), (0, 0));

    // The node returns: the next check reopens the tunnel, the node is online
    // and the service works again on the same port.
    opener.set_up(true);
    let m = engine.monitor().await.unwrap();
    assert_eq!((m.unhealthy, m.health_ok), (0, 1));
    assert_eq!(status().await, Status::Online);
    assert_eq!(sha256_hex(&fetch().await.unwrap()), files.sha256);
    assert_eq!(opener.opens(), 2, "one start, one reopen");
    assert_never_below_level_3(store.as_ref(), id).await;

    // Stopping the service (no longer wanted) returns the node to speed_ok.
    store
        .set_service_wanted(&NodeFilter::ids([id]), false)
        .await
        .unwrap();
    let r = engine.reconcile().await.unwrap();
    assert_eq!(r.stopped, 1);
    assert_eq!(status().await, Status::SpeedOk);
    assert!(tokio::net::TcpStream::connect(proxy(&ep)).await.is_err());
    assert_never_below_level_3(store.as_ref(), id).await;
}

/// After a restart the reconciler starts services with a stored endpoint
/// before new ones, so a new service never takes a stored port first (here the
/// range has two ports: without that order the new service would take the
/// stored one in about a quarter of the rounds).
#[tokio::test]
async fn after_a_restart_stored_ports_go_back_to_their_nodes_before_new_services_start() {
    for round in 0..16 {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("r.db").display());
        let store: Arc<dyn NodeStore> = Arc::new(SqlStore::connect(&url).await.unwrap());
        let a = wanted_node(store.as_ref()).await;
        let stored = ServiceEndpoint {
            host: "127.0.0.1".into(),
            port: 31850,
            username: "stored-user-0123456".into(),
            password: "stored-password-0123456789".into(),
        };
        store
            .apply(
                a,
                Event::ServiceStarted(stored.clone()),
                ApplyContext::now(),
            )
            .await
            .unwrap();
        let new = NewNode::new("127.0.0.2", 1723, "svc", "pw").unwrap();
        let [InsertOutcome::Inserted(b)] = store.insert(vec![new]).await.unwrap()[..] else {
            panic!("insert")
        };
        store
            .apply(
                b,
                Event::Tested(Outcome::success(Level::Speed)),
                ApplyContext::now(),
            )
            .await
            .unwrap();
        store
            .set_service_wanted(&NodeFilter::ids([b]), true)
            .await
            .unwrap();
        let launcher = Arc::new(SocksLauncher::new(
            Arc::new(ControlledOpener::new(&[])),
            SocksConfig {
                port_min: 31850,
                port_max: 31851,
                ..SocksConfig::default()
            },
        ));
        let engine = Engine::new(
            Arc::clone(&store),
            Arc::new(NoProber),
            Arc::new(NotAvailable),
            launcher.clone(),
            EngineConfig::default(),
        );
        let r = engine.reconcile().await.unwrap();
        assert_eq!(r.started, 2, "round {round}");
        let ep_a = store.get(a).await.unwrap().unwrap().service.unwrap();
        let ep_b = store.get(b).await.unwrap().unwrap().service.unwrap();
        assert_eq!(ep_a, stored, "round {round}");
        assert_eq!(ep_b.port, 31851, "round {round}");
        launcher.stop_all().await;
    }
}

/// A restart request recorded in the store (as `connexa service restart`
/// does) is carried out by the reconciler: the listener stops and starts again
/// on the same port with the same credentials, the node stays `online`. The
/// counters move with the bytes pulled through the service, are flushed to
/// the store, and start again from zero after the restart. The proxies file
/// follows the set of running services (mode 0600, empty when none runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_request_counters_and_proxies_file() {
    use connexa_core::ports::ServiceLauncher as _;
    use std::os::unix::fs::PermissionsExt as _;
    let size = 300 * 1024;
    let files = FileServer::start(size).await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("rc.db").display());
    let store: Arc<dyn NodeStore> = Arc::new(SqlStore::connect(&url).await.unwrap());
    let id = wanted_node(store.as_ref()).await;
    let proxies = dir.path().join("proxies.txt");
    let launcher = Arc::new(SocksLauncher::new(
        Arc::new(ControlledOpener::new(&[])),
        SocksConfig {
            port_min: 34100,
            port_max: 34149,
            ..SocksConfig::default()
        },
    ));
    let engine = Engine::new(
        Arc::clone(&store),
        Arc::new(NoProber),
        Arc::new(NotAvailable),
        launcher.clone(),
        EngineConfig {
            node_timeout: Duration::from_secs(5),
            proxies_file: Some(proxies.clone()),
            ..EngineConfig::default()
        },
    );
    // A one-pass process never writes the file (it would replace the
    // long-running process's list)...
    let r = engine.reconcile().await.unwrap();
    assert_eq!(r.started, 1);
    assert!(
        !proxies.exists(),
        "a one-pass reconcile wrote the proxies file"
    );
    // ...the process that keeps it does.
    engine.keep_proxies_file();
    engine.reconcile().await.unwrap();
    let ep = store.get(id).await.unwrap().unwrap().service.unwrap();
    let line = format!(
        "{}:{}:{}:{}\n",
        ep.host,
        ep.port,
        ep.username,
        ep.password.expose()
    );
    assert_eq!(std::fs::read_to_string(&proxies).unwrap(), line);
    let mode = std::fs::metadata(&proxies).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // Bytes through the service move its counters (live, in this process)...
    let before = launcher.counters(id).expect("running here");
    assert_eq!((before.bytes_down, before.connections_total), (0, 0));
    let t = TargetAddr::Ip(files.addr);
    let body = fetch_via_socks(proxy(&ep), &ep.username, ep.password.expose(), &t)
        .await
        .unwrap();
    assert_eq!(sha256_hex(&body), files.sha256);
    let after = launcher.counters(id).unwrap();
    assert!(after.bytes_down >= size as u64, "{after:?}");
    assert!(after.bytes_up > 0, "{after:?}");
    assert_eq!(after.connections_total, 1);
    // ...and a pass records them for other processes to show.
    engine.monitor().await.unwrap();
    let listed = connexa_core::ops::running_services(store.as_ref(), &NodeFilter::all())
        .await
        .unwrap();
    let c = listed[0].counters.clone().expect("flushed");
    assert!(c.bytes_down >= size as u64, "{c:?}");
    assert_eq!(c.started_at, after.started_at);
    assert!(!listed[0].restart_pending);

    // A wrong password is the last error; it names no secret.
    assert!(
        fetch_via_socks(proxy(&ep), &ep.username, "not-the-password", &t)
            .await
            .is_err()
    );
    let err = launcher.counters(id).unwrap().last_error.expect("an error");
    assert!(err.contains("wrong credentials"), "{err}");
    assert!(!err.contains(ep.password.expose()));

    // The restart request: recorded, then carried out by the next pass.
    let req = connexa_core::ops::restart_services(store.as_ref(), &NodeFilter::ids([id]))
        .await
        .unwrap();
    assert_eq!(req.restarting, vec![id]);
    let listed = connexa_core::ops::running_services(store.as_ref(), &NodeFilter::all())
        .await
        .unwrap();
    assert!(listed[0].restart_pending);
    let r = engine.reconcile().await.unwrap();
    assert_eq!((r.restarted, r.started, r.start_failed), (1, 1, 0));
    let node = store.get(id).await.unwrap().unwrap();
    assert_eq!(node.status, Status::Online);
    assert_eq!(
        node.service.as_ref(),
        Some(&ep),
        "same port and credentials"
    );
    let fresh = launcher.counters(id).unwrap();
    assert_eq!(fresh.bytes_down, 0, "a new run counts from zero");
    assert!(fresh.started_at >= after.started_at);
    let body = fetch_via_socks(proxy(&ep), &ep.username, ep.password.expose(), &t)
        .await
        .unwrap();
    assert_eq!(sha256_hex(&body), files.sha256);
    // Done: the next pass does not restart it again.
    let r = engine.reconcile().await.unwrap();
    assert_eq!((r.restarted, r.started), (0, 0));
    let listed = connexa_core::ops::running_services(store.as_ref(), &NodeFilter::all())
        .await
        .unwrap();
    assert!(!listed[0].restart_pending);
    assert_eq!(std::fs::read_to_string(&proxies).unwrap(), line);

    // A node without a running service has nothing to restart.
    store
        .set_service_wanted(&NodeFilter::ids([id]), false)
        .await
        .unwrap();
    let req = connexa_core::ops::restart_services(store.as_ref(), &NodeFilter::ids([id]))
        .await
        .unwrap();
    assert_eq!(
        (req.restarting.len(), req.not_running.clone()),
        (0, vec![id])
    );
    // Stopped: the file is empty, the last counters stay with no connection open.
    let r = engine.reconcile().await.unwrap();
    assert_eq!(r.stopped, 1);
    assert_eq!(std::fs::read_to_string(&proxies).unwrap(), "");
    let mode = std::fs::metadata(&proxies).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let rt = store.service_runtime(&[id]).await.unwrap();
    let c = rt[0].counters.clone().unwrap();
    assert_eq!(c.connections, 0);
    assert!(c.bytes_down >= size as u64, "{c:?}");
    assert_never_below_level_3(store.as_ref(), id).await;
}

/// With `Engine::run` reconciling only once an hour, a service job and a
/// restart request still take effect at once: the job's end and
/// `request_reconcile` wake the reconciler, which rewrites the proxies file
/// and carries the restart out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_jobs_and_restart_requests_wake_the_running_reconciler() {
    use connexa_core::engine::JobOptions;
    use connexa_core::ports::{JobKind, ServiceLauncher as _};
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("w.db").display());
    let store: Arc<dyn NodeStore> = Arc::new(SqlStore::connect(&url).await.unwrap());
    let id = wanted_node(store.as_ref()).await;
    store
        .set_service_wanted(&NodeFilter::ids([id]), false)
        .await
        .unwrap();
    let proxies = dir.path().join("proxies.txt");
    let launcher = Arc::new(SocksLauncher::new(
        Arc::new(ControlledOpener::new(&[])),
        SocksConfig {
            port_min: 34150,
            port_max: 34199,
            ..SocksConfig::default()
        },
    ));
    let hour = Duration::from_secs(3600);
    let engine = Engine::new(
        Arc::clone(&store),
        Arc::new(NoProber),
        Arc::new(NotAvailable),
        launcher.clone(),
        EngineConfig {
            node_timeout: Duration::from_secs(5),
            reconcile_interval: hour,
            monitor_interval: hour,
            proxies_file: Some(proxies.clone()),
            ..EngineConfig::default()
        },
    );
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let runner = {
        let engine = engine.clone();
        tokio::spawn(async move {
            engine
                .run(async {
                    let _ = stop_rx.await;
                })
                .await
        })
    };
    let wait_for = |what: &'static str, ok: Box<dyn Fn() -> bool + Send>| async move {
        let t0 = Instant::now();
        while !ok() {
            assert!(t0.elapsed() < Duration::from_secs(20), "{what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    // The first pass (at once) writes the empty list.
    let p = proxies.clone();
    wait_for(
        "the first pass writes an empty file",
        Box::new(move || std::fs::read_to_string(&p).is_ok_and(|t| t.is_empty())),
    )
    .await;

    let job = engine
        .start_job(
            JobKind::ServiceStart,
            NodeFilter::ids([id]),
            JobOptions::default(),
        )
        .await
        .unwrap();
    engine.wait(job).await.unwrap();
    let ep = store.get(id).await.unwrap().unwrap().service.unwrap();
    let line = format!(
        "{}:{}:{}:{}\n",
        ep.host,
        ep.port,
        ep.username,
        ep.password.expose()
    );
    let (p, l) = (proxies.clone(), line.clone());
    wait_for(
        "the proxies file lists the service started by the job",
        Box::new(move || std::fs::read_to_string(&p).is_ok_and(|t| t == l)),
    )
    .await;

    let first = launcher.counters(id).unwrap().started_at;
    let req = connexa_core::ops::restart_services(store.as_ref(), &NodeFilter::ids([id]))
        .await
        .unwrap();
    assert_eq!(req.restarting, vec![id]);
    // Started-at has millisecond precision: make sure a restart shows.
    tokio::time::sleep(Duration::from_millis(5)).await;
    engine.request_reconcile();
    let l2 = launcher.clone();
    wait_for(
        "the restart is carried out",
        Box::new(move || l2.counters(id).is_some_and(|c| c.started_at > first)),
    )
    .await;
    assert_eq!(store.get(id).await.unwrap().unwrap().service, Some(ep));

    let job = engine
        .start_job(
            JobKind::ServiceStop,
            NodeFilter::ids([id]),
            JobOptions::default(),
        )
        .await
        .unwrap();
    engine.wait(job).await.unwrap();
    let p = proxies.clone();
    wait_for(
        "the proxies file is emptied after the stop job",
        Box::new(move || std::fs::read_to_string(&p).is_ok_and(|t| t.is_empty())),
    )
    .await;
    let rt = store.service_runtime(&[id]).await.unwrap();
    assert_eq!(rt[0].counters.as_ref().map(|c| c.connections), Some(0));
    stop.send(()).unwrap();
    runner.await.unwrap();
}
