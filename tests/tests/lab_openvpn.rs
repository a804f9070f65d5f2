//! `openvpn` services through a real PPTP node (the lab: Debian pptpd + pppd
//! with `require-mppe-128`, in a QEMU VM). `OpenvpnLauncher` over
//! `PptpOpener`, inside the lab's network namespace, starts Debian's openvpn
//! server with the node's tunnel as `cx<id>`; a real `openvpn` client in a
//! SEPARATE network namespace this test creates (a veth pair to the lab's
//! namespace) connects with the generated profile, and `curl` there fetches
//! the lab server's file at its PPP address 10.78.0.1 with the right sha256.
//! The SNAT rule's counter shows the traffic left as the PPP address, and the
//! lab server itself (`lab.sh ctl tcp`) sees the download coming from it; the
//! host's forwarding switch stays off (the service forwards on its own two
//! interfaces), the server runs as `nobody`, and with the tunnel's interface
//! gone the clients' packets are unreachable, not routed by the host. A
//! restore (a new launcher, as after a process restart) keeps the port and
//! the profile, and so does the health check's relaunch after the server
//! process is killed; stop tells the connected client
//! (`server-pushed-connection-reset`) and cuts it off, and removes the process, the port, the rule, the routing
//! table, the nft table and the interfaces (listed before and after); a start
//! after the stop refuses the old profile and accepts the new one. Two
//! services through two calls at once keep their traffic apart (each
//! client's download shows in its own service's SNAT counter and tunnel).
//! After SIGKILL of the process running the service (the server, its rule
//! and NAT left behind), the next process ends the orphan server and
//! restores the service on the same port with the same client certificate:
//! the old profile connects again and the lab file comes through it.
//!
//! Needs the lab, root, and the `openvpn` and `nft` programs (tests/run.sh
//! installs them).

use std::path::Path;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use connexa_core::domain::{
    Event, EventKind, Level, NewNode, Node, NodeFilter, NodeId, Outcome, ServiceEndpoint,
    ServiceKind, Status,
};
use connexa_core::openvpn::{OpenvpnConfig, OpenvpnLauncher};
use connexa_core::ports::{ApplyContext, HistoryEvent, InsertOutcome, NodeStore};
use connexa_core::ports::{Health, ServiceLauncher};
use connexa_core::service::PptpOpener;
use connexa_core::store::SqlStore;
use connexa_core::tunnel::{GreSocket, TunnelConfig};
use connexa_tests::lab::{Lab, exclusive, in_lab};
use connexa_tests::ovpn_lab::{
    ClientNs, SERVER_SIDE, UP, client, client_ns, fetch_through_vpn, file_via_ppp, in_ns, ok_in,
    read, wait_for, write_profile,
};

/// What the lab's namespace holds that a service could leave behind:
/// interfaces, policy rules, the nft tables, the routes of every table.
async fn host_state(lab: &Lab) -> Vec<String> {
    let mut all = Vec::new();
    for cmd in [
        &["ip", "-o", "link"][..],
        &["ip", "-4", "rule"][..],
        &["nft", "list", "tables"][..],
        &["ip", "-4", "route", "show", "table", "all"][..],
    ] {
        let text = ok_in(&lab.netns, cmd).await;
        all.extend(text.lines().map(|l| {
            // Link lines carry counters-free state; keep the name and flags.
            l.split("link/").next().unwrap_or(l).trim().to_string()
        }));
    }
    all.sort();
    all
}

fn launcher(gre: Arc<GreSocket>, dir: &Path) -> OpenvpnLauncher {
    OpenvpnLauncher::new(
        Arc::new(PptpOpener::with_gre_socket(TunnelConfig::default(), gre)),
        OpenvpnConfig {
            dir: dir.to_path_buf(),
            bind: SERVER_SIDE.parse().unwrap(),
            ports: 11940..=11949,
            ..OpenvpnConfig::default()
        },
    )
}

fn node(lab: &Lab, id: i64, status: Status) -> Node {
    Node {
        id: NodeId(id),
        status,
        ..lab.node()
    }
}

#[test]
fn lab_openvpn_client_fetches_through_the_node_and_stop_leaves_nothing() {
    let lab = Lab::require();
    let _x = exclusive();
    in_lab(&lab, || async {
        let gre = GreSocket::open().expect("raw GRE socket (run as root)");
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ovpn");
        let ns = client_ns(&lab, 0).await;
        let id = 4721;
        // What an earlier run of this test may have left (a panic skips the stop).
        let _ = in_ns(
            &lab.netns,
            &["nft", "delete", "table", "ip", "connexa_ovpn_4721"],
        )
        .await;
        while in_ns(&lab.netns, &["ip", "rule", "del", "lookup", "1004721"])
            .await
            .status
            .success()
        {}
        let _ = in_ns(&lab.netns, &["ip", "route", "flush", "table", "1004721"]).await;
        // The host does not forward (the lab namespace's switch, which
        // earlier runs may have turned on): the service forwards on its own
        // two interfaces only, and leaves the switch alone.
        ok_in(&lab.netns, &["sysctl", "-qw", "net.ipv4.ip_forward=0"]).await;
        let before = host_state(&lab).await;
        // What a crashed run leaves: the rule and the nft table. The start
        // removes them before it sets up its own.
        ok_in(
            &lab.netns,
            &[
                "ip",
                "rule",
                "add",
                "from",
                "10.201.0.0/24",
                "lookup",
                "1004721",
                "priority",
                "9000",
            ],
        )
        .await;
        ok_in(
            &lab.netns,
            &["nft", "add", "table", "ip", "connexa_ovpn_4721"],
        )
        .await;

        // A first start: a new client certificate.
        let ovpn = launcher(gre.clone(), &dir);
        let fresh = node(&lab, id, Status::SpeedOk);
        let ep = ovpn.start(&fresh, None).await.expect("openvpn service up");
        assert_eq!(ep.host, SERVER_SIDE);
        assert!((11940..=11949).contains(&ep.port), "{}", ep.port);
        assert!(
            ep.username.starts_with("openvpn:10.201."),
            "{}",
            ep.username
        );
        let installed = ovpn.installed(NodeId(id)).await.join("\n");
        assert_eq!(
            installed.matches("lookup 1004721").count(),
            1,
            "the stale rule is gone, ours is there: {installed}"
        );
        assert!(installed.contains("default dev cx4721"), "{installed}");
        assert!(
            installed.contains("unreachable default metric 4294967295"),
            "{installed}"
        );
        assert!(
            installed.contains("nft table ip connexa_ovpn_4721"),
            "{installed}"
        );
        let p1 = write_profile(&dir, tmp.path().join("p1.ovpn"), NodeId(id), &ep);
        // The server gave up root once up (user nobody).
        let server_pid = read(
            &dir.join("services")
                .join(id.to_string())
                .join("openvpn.pid"),
        );
        let status = read(Path::new(&format!("/proc/{}/status", server_pid.trim())));
        let uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .expect("Uid line")
            .split_whitespace()
            .collect::<Vec<_>>();
        assert!(
            uid.iter().all(|u| *u != "0"),
            "the server runs as root: {uid:?}"
        );

        // A real client connects and fetches the lab file through the node.
        let c1 = client(&ns, &p1, &tmp.path().join("c1.log"));
        assert_eq!(
            wait_for(&c1.log, &[UP], Duration::from_secs(60))
                .await
                .as_deref(),
            Some(UP),
            "client log: {}",
            read(&c1.log)
        );
        fetch_through_vpn(&lab, &ns).await;
        // The traffic left as the PPP address: the SNAT rule (to the address
        // of cx4721) counted it, and the tunnel carried the file.
        let nat = ok_in(
            &lab.netns,
            &["nft", "list", "table", "ip", "connexa_ovpn_4721"],
        )
        .await;
        let addr = ok_in(
            &lab.netns,
            &["ip", "-o", "-4", "addr", "show", "dev", "cx4721"],
        )
        .await;
        let ppp = addr
            .split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(|a| a.split('/').next())
            .expect("cx4721's address")
            .to_string();
        assert!(nat.contains(&format!("snat to {ppp}")), "{nat}");
        let packets: u64 = nat
            .split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .expect("the rule's counter");
        assert!(packets > 0, "{nat}");
        let counters = ovpn.counters(NodeId(id)).expect("counters");
        assert!(counters.bytes_down >= lab.file_size, "{counters:?}");
        assert_eq!(ovpn.health(&fresh).await, Health::Healthy);
        assert_eq!(
            ok_in(&lab.netns, &["sysctl", "-n", "net.ipv4.ip_forward"])
                .await
                .trim(),
            "0",
            "the host-wide forwarding switch is left alone"
        );
        // The filters: through the VPN the client reaches the node's side
        // (the lab server's PPP address) but not the host itself (its
        // address on the lab's bridge, which the host would answer).
        let ping = |to: String| {
            let ns = ns.name.clone();
            async move {
                in_ns(&ns, &["ping", "-c", "1", "-W", "3", &to])
                    .await
                    .status
                    .success()
            }
        };
        assert!(
            ping(lab.ppp_server.to_string()).await,
            "ping through the node"
        );
        assert!(
            !ping(lab.host_ip.to_string()).await,
            "a client reached the Connexa host through the VPN"
        );
        // The lab server sees the client's connection coming from the PPP
        // address (a slow download keeps it open while we ask the server).
        server_sees_ppp_address(&lab, &ns, &ppp).await;
        // The node's tunnel gone (the interface deleted under the service):
        // the clients' traffic has nowhere to go, it does not fall through
        // to the host's own routes.
        ok_in(&lab.netns, &["ip", "link", "del", "cx4721"]).await;
        let subnet = ep
            .username
            .trim_start_matches("openvpn:")
            .trim_end_matches(".0/24")
            .to_string();
        let route = in_ns(
            &lab.netns,
            &[
                "ip",
                "route",
                "get",
                &lab.server.to_string(),
                "from",
                &format!("{subnet}.2"),
                "iif",
                "cxv4721",
            ],
        )
        .await;
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&route.stdout),
            String::from_utf8_lossy(&route.stderr)
        );
        eprintln!("route with the tunnel gone: {said}");
        // EHOSTUNREACH: what an `unreachable` route answers (the table
        // below shows it is that route, and cxv4721 forwards).
        assert!(
            said.contains("No route to host"),
            "a client's packet to the lab server with the tunnel gone: {said}"
        );
        assert!(
            !said.contains(" dev vcxovpn") && !said.contains(" via "),
            "{said}"
        );
        let table = ok_in(
            &lab.netns,
            &["ip", "-4", "route", "show", "table", "1004721"],
        )
        .await;
        assert_eq!(
            table.trim(),
            "unreachable default metric 4294967295",
            "{table}"
        );
        drop(c1);

        // The server process dies: the health check starts the whole service
        // again, same port, same profile.
        let pid_file = dir
            .join("services")
            .join(id.to_string())
            .join("openvpn.pid");
        let pid = read(&pid_file).trim().to_string();
        assert!(!pid.is_empty(), "a pid file");
        assert!(
            Command::new("kill")
                .args(["-KILL", &pid])
                .status()
                .unwrap()
                .success()
        );
        // `kill` returns before the process is dead: wait until it is a
        // zombie (or reaped), else the health check may still see it alive.
        let gone = |pid: &str| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z'))
            })
        };
        let give_up = std::time::Instant::now() + Duration::from_secs(10);
        while !gone(&pid) {
            assert!(std::time::Instant::now() < give_up, "{pid} does not die");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let online = node(&lab, id, Status::Online);
        assert_eq!(ovpn.health(&online).await, Health::Healthy, "relaunched");
        let relaunched = read(&pid_file).trim().to_string();
        assert!(
            !relaunched.is_empty() && relaunched != pid,
            "{pid} -> {relaunched}"
        );
        assert_eq!(
            ovpn.installed(NodeId(id))
                .await
                .join("\n")
                .matches("lookup 1004721")
                .count(),
            1
        );
        let c1b = client(&ns, &p1, &tmp.path().join("c1b.log"));
        assert_eq!(
            wait_for(&c1b.log, &[UP], Duration::from_secs(60))
                .await
                .as_deref(),
            Some(UP),
            "the profile after a relaunch: {}",
            read(&c1b.log)
        );
        drop(c1b);

        // A restore (a new process: the store says the service runs) keeps
        // the port and the profile.
        ovpn.stop_all().await;
        let ovpn = launcher(gre.clone(), &dir);
        let running = node(&lab, id, Status::Online);
        let ep2 = ovpn
            .start(&running, Some(ep.clone()))
            .await
            .expect("restored");
        assert_eq!((ep2.port, &ep2.username), (ep.port, &ep.username));
        assert_eq!(
            ep2.password.expose(),
            ep.password.expose(),
            "same client certificate"
        );
        let c2 = client(&ns, &p1, &tmp.path().join("c2.log"));
        assert_eq!(
            wait_for(&c2.log, &[UP], Duration::from_secs(60))
                .await
                .as_deref(),
            Some(UP),
            "the old profile after a restore: {}",
            read(&c2.log)
        );
        fetch_through_vpn(&lab, &ns).await;

        // Stop: the connected client is told and cut off, nothing is left,
        // the port is closed.
        let ups = read(&c2.log).matches(UP).count();
        ovpn.stop(NodeId(id)).await.expect("stop");
        assert!(
            wait_for(
                &c2.log,
                &["server-pushed-connection-reset"],
                Duration::from_secs(20)
            )
            .await
            .is_some(),
            "the client was not told: {}",
            read(&c2.log)
        );
        let cut = in_ns(
            &ns.name,
            &[
                "curl",
                "-sS",
                "--max-time",
                "5",
                "-o",
                "/dev/null",
                &file_via_ppp(&lab),
            ],
        )
        .await;
        assert!(!cut.status.success(), "a fetch through a stopped service");
        assert_eq!(
            read(&c2.log).matches(UP).count(),
            ups,
            "the client connected again: {}",
            read(&c2.log)
        );
        drop(c2);
        assert!(ovpn.installed(NodeId(id)).await.is_empty());
        assert_eq!(host_state(&lab).await, before, "host state after stop");
        assert!(
            std::net::UdpSocket::bind((SERVER_SIDE, ep.port)).is_ok(),
            "the port is free again"
        );
        assert!(!dir.join("services").join(id.to_string()).exists());

        // A start after the stop: a new client certificate; the old profile
        // is refused, the new one connects.
        let ep3 = ovpn
            .start(&fresh, Some(ep2.clone()))
            .await
            .expect("started again");
        assert_eq!(ep3.port, ep.port, "the stored port again");
        assert_ne!(
            ep3.password.expose(),
            ep.password.expose(),
            "a new client certificate"
        );
        let server_log = dir
            .join("services")
            .join(id.to_string())
            .join("openvpn.log");
        let old = client(&ns, &p1, &tmp.path().join("c3.log"));
        let refused = wait_for(
            &server_log,
            &["VERIFY X509NAME ERROR"],
            Duration::from_secs(60),
        )
        .await;
        assert!(
            refused.is_some(),
            "the server did not refuse the old profile: {}",
            read(&server_log)
        );
        assert!(!read(&old.log).contains(UP), "{}", read(&old.log));
        drop(old);
        let p3 = write_profile(&dir, tmp.path().join("p3.ovpn"), NodeId(id), &ep3);
        let c4 = client(&ns, &p3, &tmp.path().join("c4.log"));
        assert_eq!(
            wait_for(&c4.log, &[UP], Duration::from_secs(60))
                .await
                .as_deref(),
            Some(UP),
            "the new profile: {}",
            read(&c4.log)
        );
        ovpn.stop(NodeId(id)).await.expect("stop");
        drop(c4);
        assert_eq!(
            host_state(&lab).await,
            before,
            "host state after the last stop"
        );
        drop(ns);
    });
}

/// Starts a slow download from the client namespace and asks the lab server
/// (`lab.sh ctl tcp`) who it sees: a connection to its port 80 from `ppp`.
async fn server_sees_ppp_address(lab: &Lab, ns: &ClientNs, ppp: &str) {
    let mut slow = Command::new("ip")
        .args(["netns", "exec", &ns.name, "curl", "-s", "-o", "/dev/null"])
        .args([
            "--limit-rate",
            "100k",
            "--max-time",
            "30",
            &file_via_ppp(lab),
        ])
        .spawn()
        .expect("curl");
    // `tcp RECV SEND LOCAL FOREIGN STATE`, addresses maybe IPv4-mapped.
    let ours = |l: &&str| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        let addr = |i: usize| cols.get(i).map_or("", |a| a.trim_start_matches("::ffff:"));
        addr(3).ends_with(":80")
            && addr(4).split_once(':').is_some_and(|(ip, _)| ip == ppp)
            && cols.get(5) == Some(&"ESTABLISHED")
    };
    let mut seen = String::new();
    for _ in 0..60 {
        seen = lab.script(&["ctl", "tcp"]).unwrap_or_default();
        if seen.lines().any(|l| ours(&l)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let _ = slow.kill();
    let _ = slow.wait();
    assert!(
        seen.lines().any(|l| ours(&l)),
        "the lab server should see the download coming from {ppp}: {seen}"
    );
}

/// The packets the SNAT rule of node `id`'s service counted.
async fn nat_packets(lab: &Lab, id: i64) -> u64 {
    let table = format!("connexa_ovpn_{id}");
    let nat = ok_in(&lab.netns, &["nft", "list", "table", "ip", &table]).await;
    nat.split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counter in {nat}"))
}

#[test]
fn lab_openvpn_two_services_through_two_calls_keep_their_traffic_apart() {
    let lab = Lab::require();
    let _x = exclusive();
    in_lab(&lab, || async {
        let gre = GreSocket::open().expect("raw GRE socket (run as root)");
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ovpn");
        // Namespace 0 carries the servers' address (SERVER_SIDE, `bind`); the
        // two clients are 1 and 2.
        let _server_side = client_ns(&lab, 0).await;
        let (ns_a, ns_b) = (client_ns(&lab, 1).await, client_ns(&lab, 2).await);
        let before = host_state(&lab).await;
        let ovpn = launcher(gre, &dir);
        let (a, b) = (4731, 4732);
        let (na, nb) = (
            node(&lab, a, Status::SpeedOk),
            node(&lab, b, Status::SpeedOk),
        );
        // Started at once: two PPTP calls, two servers.
        let (ea, eb) = tokio::join!(ovpn.start(&na, None), ovpn.start(&nb, None));
        let (ea, eb) = (ea.expect("service a"), eb.expect("service b"));
        assert_ne!(ea.port, eb.port);
        assert_ne!(ea.username, eb.username, "two client subnets");
        let pa = write_profile(&dir, tmp.path().join("a.ovpn"), NodeId(a), &ea);
        let pb = write_profile(&dir, tmp.path().join("b.ovpn"), NodeId(b), &eb);
        let ca = client(&ns_a, &pa, &tmp.path().join("a.log"));
        let cb = client(&ns_b, &pb, &tmp.path().join("b.log"));
        for c in [&ca, &cb] {
            assert_eq!(
                wait_for(&c.log, &[UP], Duration::from_secs(60))
                    .await
                    .as_deref(),
                Some(UP),
                "{}",
                read(&c.log)
            );
        }
        // A's download goes through A's service only.
        let b_before = nat_packets(&lab, b).await;
        let b_down = ovpn.counters(NodeId(b)).expect("counters b").bytes_down;
        fetch_through_vpn(&lab, &ns_a).await;
        assert!(nat_packets(&lab, a).await > 0);
        assert!(ovpn.counters(NodeId(a)).expect("counters a").bytes_down >= lab.file_size);
        assert!(
            nat_packets(&lab, b).await - b_before < 10,
            "b's rule counted a's traffic"
        );
        assert!(
            ovpn.counters(NodeId(b)).expect("counters b").bytes_down - b_down < lab.file_size / 10,
            "b's tunnel carried a's download"
        );
        // And B's through B's.
        let a_down = ovpn.counters(NodeId(a)).expect("counters a").bytes_down;
        fetch_through_vpn(&lab, &ns_b).await;
        assert!(ovpn.counters(NodeId(b)).expect("counters b").bytes_down >= lab.file_size);
        assert!(
            ovpn.counters(NodeId(a)).expect("counters a").bytes_down - a_down < lab.file_size / 10,
            "a's tunnel carried b's download"
        );
        ovpn.stop(NodeId(a)).await.expect("stop a");
        ovpn.stop(NodeId(b)).await.expect("stop b");
        drop((ca, cb));
        assert_eq!(
            host_state(&lab).await,
            before,
            "host state after both stops"
        );
        drop((ns_a, ns_b));
    });
}

/// A helper process, SIGKILLed when dropped (also when the test fails).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The helper process (`openvpn_service`) in the lab's namespace.
fn connexa_process(lab: &Lab, url: &str, dir: &Path) -> Child {
    Command::new("ip")
        .args(["netns", "exec", &lab.netns])
        .arg(env!("CARGO_BIN_EXE_openvpn_service"))
        .arg(url)
        .arg(dir)
        .args([SERVER_SIDE, "11960", "11969"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn openvpn_service")
}

/// Waits (at most 90 s) until the store shows node `id` online with an
/// endpoint recorded by the `starts`-th `service_started`.
async fn online_after(store: &dyn NodeStore, id: NodeId, starts: usize) -> ServiceEndpoint {
    let end = Instant::now() + Duration::from_secs(90);
    loop {
        assert!(
            Instant::now() < end,
            "no service start number {starts} within 90 s"
        );
        let history = store.history(id).await.expect("history");
        let n = history
            .iter()
            .filter(|h| h.event == HistoryEvent::Applied(EventKind::ServiceStarted))
            .count();
        let node = store.get(id).await.expect("get").expect("node");
        if n >= starts && node.status == Status::Online {
            return node.service.expect("an endpoint");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[test]
fn lab_openvpn_after_sigkill_the_same_port_and_profile_and_stop_leaves_nothing() {
    let lab = Lab::require();
    let _x = exclusive();
    in_lab(&lab, || async {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ovpn");
        let url = format!("sqlite://{}?mode=rwc", tmp.path().join("c.db").display());
        let store = SqlStore::connect(&url).await.expect("store");
        let new = NewNode::new(
            &lab.server.to_string(),
            u64::from(lab.pptp_port),
            &lab.user,
            &lab.password,
        )
        .expect("node");
        let [InsertOutcome::Inserted(id)] = store.insert(vec![new]).await.expect("insert")[..]
        else {
            panic!("insert")
        };
        store
            .apply(
                id,
                Event::Tested(Outcome::success(Level::Speed)),
                ApplyContext::now(),
            )
            .await
            .expect("verified");
        let sel = NodeFilter::ids([id]);
        connexa_core::ops::want_service_kind(&store, &sel, ServiceKind::Openvpn)
            .await
            .expect("kind");
        store.set_service_wanted(&sel, true).await.expect("wanted");
        let ns = client_ns(&lab, 0).await;
        let before = host_state(&lab).await;

        let mut first = Killed(connexa_process(&lab, &url, &dir));
        let ep = online_after(&store, id, 1).await;
        let p = tmp.path().join("p.ovpn");
        std::fs::write(
            &p,
            connexa_core::ops::service_profile(&store, id, &dir)
                .await
                .expect("the profile"),
        )
        .unwrap();
        let c1 = client(&ns, &p, &tmp.path().join("c1.log"));
        assert_eq!(
            wait_for(&c1.log, &[UP], Duration::from_secs(60))
                .await
                .as_deref(),
            Some(UP),
            "{}",
            read(&c1.log)
        );
        drop(c1);

        // SIGKILL: the openvpn server, its rules and NAT stay behind.
        first.0.kill().expect("SIGKILL");
        first.0.wait().expect("reaped");
        let pid_file = dir
            .join("services")
            .join(id.0.to_string())
            .join("openvpn.pid");
        let orphan = read(&pid_file).trim().to_string();
        assert!(
            Path::new(&format!("/proc/{orphan}")).exists(),
            "the server outlived its parent"
        );
        // The next process reconciles them away and restores the service:
        // same port, same client certificate, the old profile connects.
        let _second = Killed(connexa_process(&lab, &url, &dir));
        let ep2 = online_after(&store, id, 2).await;
        assert_eq!(ep2, ep, "same port, subnet and client certificate");
        assert!(
            !Path::new(&format!("/proc/{orphan}")).exists(),
            "the orphan server was ended"
        );
        let c2 = client(&ns, &p, &tmp.path().join("c2.log"));
        assert_eq!(
            wait_for(&c2.log, &[UP], Duration::from_secs(60))
                .await
                .as_deref(),
            Some(UP),
            "the profile after SIGKILL: {}",
            read(&c2.log)
        );
        fetch_through_vpn(&lab, &ns).await;

        // Stop (no longer wanted): the process removes everything.
        store
            .set_service_wanted(&sel, false)
            .await
            .expect("unwanted");
        let end = Instant::now() + Duration::from_secs(60);
        while store.get(id).await.expect("get").expect("node").status == Status::Online {
            assert!(Instant::now() < end, "not stopped within 60 s");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        drop(c2);
        assert_eq!(host_state(&lab).await, before, "host state after the stop");
        drop(ns);
    });
}
