//! `openvpn` services without the lab.
//!
//! * The profile is made from the stored endpoint (sealed at rest with a
//!   secrets key) and the CA file, by any process: the inline CA is the
//!   data directory's, the client certificate and key are the ones stored;
//!   a node without an openvpn service has no profile, with a clear message.
//! * A missing `openvpn` program fails the start naming it, before any call.
//! * Without CAP_NET_ADMIN a start fails with an error naming the capability,
//!   before any call is made, and the engine leaves the `speed_ok` node
//!   `speed_ok` (the test re-runs itself without the capability, with
//!   `setpriv`, as tun.rs does).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use async_trait::async_trait;
use connexa_core::domain::{
    Event, Level, NewNode, Node, NodeFilter, NodeId, Outcome, ServiceKind, Status,
};
use connexa_core::engine::{Engine, EngineConfig, NotAvailable};
use connexa_core::openvpn::{OpenvpnConfig, OpenvpnLauncher, pki::Ca};
use connexa_core::ports::{
    ApplyContext, InsertOutcome, NodeStore, ProbeDepth, ProbeError, Prober, ServiceLauncher,
};
use connexa_core::service::{DirectOpener, KindLauncher, TunnelError, TunnelLink, TunnelOpener};
use connexa_core::socks::{SocksConfig, SocksLauncher};
use connexa_core::store::SqlStore;
use connexa_core::store::sealing::{SecretKey, SecretKeys};
use connexa_core::tun::{TunConfig, TunLauncher};
use connexa_tests::child::{has_cap_net_admin, run_without_cap_net_admin};

/// Counts opens and never opens anything: the start must fail before.
#[derive(Default)]
struct CountingOpener(AtomicU32);

#[async_trait]
impl TunnelOpener for CountingOpener {
    async fn open(&self, _: &Node) -> Result<Arc<dyn TunnelLink>, TunnelError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Err(TunnelError::Open("no tunnel in this test".into()))
    }
}

struct NoProber;

#[async_trait]
impl Prober for NoProber {
    async fn probe(&self, _: &Node, _: ProbeDepth) -> Result<Outcome, ProbeError> {
        Err(ProbeError::Config("unused".into()))
    }
}

/// A `speed_ok` node in a new SQLite store (with `keys`).
async fn store_with_node(dir: &std::path::Path, keys: SecretKeys) -> (Arc<dyn NodeStore>, NodeId) {
    let url = format!("sqlite://{}?mode=rwc", dir.join("ovpn.db").display());
    let store: Arc<dyn NodeStore> =
        Arc::new(SqlStore::connect_with_keys(&url, keys).await.unwrap());
    let new = NewNode::new("127.0.0.1", 1723, "ovpn", "pw").unwrap();
    let [InsertOutcome::Inserted(id)] = store.insert(vec![new]).await.unwrap()[..] else {
        panic!("insert")
    };
    store
        .apply(
            id,
            Event::Tested(Outcome::success(Level::Speed)),
            ApplyContext::now(),
        )
        .await
        .unwrap();
    (store, id)
}

#[tokio::test]
async fn profile_comes_from_the_sealed_endpoint_and_the_ca_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, key) = SecretKey::generate();
    let (store, id) = store_with_node(tmp.path(), SecretKeys::new(Some(key), Vec::new())).await;
    let ca_dir = tmp.path().join("openvpn");

    // Not running: no profile, and the message says how to get one.
    let e = connexa_core::ops::service_profile(store.as_ref(), id, &ca_dir)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no OpenVPN profile") && e.contains("--kind openvpn"),
        "{e}"
    );

    // What the launcher stores when it starts the service.
    let ca = Ca::load_or_create(&ca_dir).unwrap();
    let creds = ca.issue_client(id, "10.201.9.0".parse().unwrap()).unwrap();
    let ep = creds.endpoint("vpn.example.net".into(), 1199);
    store
        .apply(id, Event::ServiceStarted(ep), ApplyContext::now())
        .await
        .unwrap();
    // Sealed at rest: the key does not appear in the database file.
    let mut raw = std::fs::read(tmp.path().join("ovpn.db")).unwrap();
    raw.extend(std::fs::read(tmp.path().join("ovpn.db-wal")).unwrap_or_default());
    let needle = creds.key_pem.lines().nth(1).unwrap().as_bytes();
    assert!(
        !raw.windows(needle.len()).any(|w| w == needle),
        "the client key is stored in clear"
    );

    let p = connexa_core::ops::service_profile(store.as_ref(), id, &ca_dir)
        .await
        .unwrap();
    assert!(p.contains("remote vpn.example.net 1199 udp"), "{p}");
    assert!(p.contains(&format!("<ca>\n{}</ca>", ca.cert_pem)), "{p}");
    assert!(
        p.contains(&format!("<cert>\n{}</cert>", creds.cert_pem)),
        "{p}"
    );
    assert!(
        p.contains(&format!("<key>\n{}</key>", creds.key_pem)),
        "{p}"
    );
    assert!(p.contains(&format!("verify-x509-name connexa-ovpn-server-{id} name")));

    // Listing never shows the key.
    let listed = connexa_core::ops::running_services(store.as_ref(), &NodeFilter::ids([id]))
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].username, "openvpn:10.201.9.0/24");
    assert_eq!(listed[0].password, "");

    // The export: one profile per selected node running an openvpn service.
    let all = connexa_core::ops::service_profiles(store.as_ref(), &NodeFilter::ids([id]), &ca_dir)
        .await
        .unwrap();
    assert_eq!(all, vec![(id, p.clone())]);
    // A selected node without one: refused, naming it, nothing returned.
    let other = store
        .insert(vec![NewNode::new("127.0.0.2", 1723, "x", "y").unwrap()])
        .await
        .unwrap();
    let [InsertOutcome::Inserted(other)] = other[..] else {
        panic!("insert")
    };
    let e = connexa_core::ops::service_profiles(store.as_ref(), &NodeFilter::all(), &ca_dir)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!(
            "1 of the 2 selected nodes run no openvpn service ({other})"
        )),
        "{e}"
    );

    // Without the CA file: a clear error.
    let e = connexa_core::ops::service_profile(store.as_ref(), id, &tmp.path().join("none"))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("ca.pem"), "{e}");
    // A missing node.
    assert!(matches!(
        connexa_core::ops::service_profile(store.as_ref(), NodeId(999), &ca_dir).await,
        Err(connexa_core::ops::ProfileError::Store(_))
    ));
}

#[tokio::test]
async fn a_socks_service_has_no_profile() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, id) = store_with_node(tmp.path(), SecretKeys::none()).await;
    let ep = connexa_core::domain::ServiceEndpoint {
        host: "127.0.0.1".into(),
        port: 20001,
        username: "u".into(),
        password: connexa_core::domain::Secret::new("p"),
    };
    store
        .apply(id, Event::ServiceStarted(ep), ApplyContext::now())
        .await
        .unwrap();
    let e = connexa_core::ops::service_profile(store.as_ref(), id, tmp.path())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("socks service, not openvpn"), "{e}");
}

#[tokio::test]
async fn start_without_the_openvpn_program_fails_naming_it_before_any_call() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, id) = store_with_node(tmp.path(), SecretKeys::none()).await;
    let node = store.get(id).await.unwrap().unwrap();
    let opener = Arc::new(CountingOpener::default());
    let l = OpenvpnLauncher::new(
        opener.clone(),
        OpenvpnConfig {
            dir: tmp.path().join("openvpn"),
            openvpn: "/nonexistent/openvpn".into(),
            ..OpenvpnConfig::default()
        },
    );
    let e = l.start(&node, None).await.unwrap_err().to_string();
    assert!(
        e.contains("/nonexistent/openvpn") && e.contains("apt install openvpn"),
        "{e}"
    );
    assert_eq!(opener.0.load(Ordering::SeqCst), 0, "no call was made");
    assert!(l.running().await.is_empty());
    assert!(!tmp.path().join("openvpn").exists(), "nothing was written");
}

const CHILD: &str = "CONNEXA_OPENVPN_NO_NET_ADMIN_CHILD";
const NAME: &str = "openvpn_start_without_cap_net_admin_fails_naming_it_and_leaves_the_node";

async fn child() {
    assert!(
        !has_cap_net_admin(),
        "the child must run without CAP_NET_ADMIN"
    );
    let tmp = tempfile::tempdir().unwrap();
    let (store, id) = store_with_node(tmp.path(), SecretKeys::none()).await;
    let sel = NodeFilter::ids([id]);
    connexa_core::ops::want_service_kind(store.as_ref(), &sel, ServiceKind::Openvpn)
        .await
        .unwrap();
    connexa_core::ops::want_services(store.as_ref(), &sel, true)
        .await
        .unwrap();
    let opener = Arc::new(CountingOpener::default());
    // Programs that exist, so that the capability is what is missing.
    let ovpn = Arc::new(OpenvpnLauncher::new(
        opener.clone(),
        OpenvpnConfig {
            dir: tmp.path().join("openvpn"),
            openvpn: "/bin/sh".into(),
            nft: "/bin/sh".into(),
            ip: "/bin/sh".into(),
            ..OpenvpnConfig::default()
        },
    ));
    let socks = Arc::new(SocksLauncher::new(
        Arc::new(DirectOpener::loopback_only()),
        SocksConfig::default(),
    ));
    let tun = Arc::new(TunLauncher::new(opener.clone(), TunConfig::default()));
    let launcher = Arc::new(KindLauncher::new(socks, tun).with_openvpn(ovpn.clone()));
    let engine = Engine::new(
        store.clone(),
        Arc::new(NoProber),
        Arc::new(NotAvailable),
        launcher,
        EngineConfig::default(),
    );
    let report = engine.reconcile().await.unwrap();
    assert_eq!((report.started, report.start_failed), (0, 1), "{report:?}");
    let after = store.get(id).await.unwrap().unwrap();
    assert_eq!(
        after.status,
        Status::SpeedOk,
        "a failed start never demotes"
    );
    assert!(after.service.is_none());
    let why = after.last_error.unwrap_or_default();
    assert!(
        why.contains("CAP_NET_ADMIN") && why.contains("openvpn"),
        "{why}"
    );
    assert_eq!(opener.0.load(Ordering::SeqCst), 0, "no call was made");
    assert!(ovpn.running().await.is_empty());
    assert!(!tmp.path().join("openvpn").exists(), "nothing was written");
    println!("CHILD-OK");
}

#[tokio::test(flavor = "current_thread")]
async fn openvpn_start_without_cap_net_admin_fails_naming_it_and_leaves_the_node() {
    if std::env::var_os(CHILD).is_some() {
        child().await;
        return;
    }
    run_without_cap_net_admin(NAME, CHILD);
}

/// Runs `f` on a thread of its own in a new, empty network namespace.
fn in_new_netns<F: std::future::Future<Output = ()>>(f: impl FnOnce() -> F + Send + 'static) {
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f());
    })
    .join()
    .expect("the namespace thread");
}

fn sh(cmd: &str) -> String {
    let out = std::process::Command::new("sh")
        .args(["-c", cmd])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What a service of `node` run by process `owner` left: its directory with
/// a config, the owner file, and the pid file of a process whose command
/// line names the config (standing for the openvpn server), its rule and
/// routes, its nft table.
fn leave_service(
    dir: &std::path::Path,
    node: i64,
    subnet: &str,
    owner: u32,
) -> std::process::Child {
    let sdir = dir.join("services").join(node.to_string());
    std::fs::create_dir_all(&sdir).unwrap();
    let conf = sdir.join("server.conf");
    std::fs::write(&conf, "# a crashed run's\n").unwrap();
    std::fs::write(sdir.join("owner"), owner.to_string()).unwrap();
    let server = std::process::Command::new("tail")
        .arg("-f")
        .arg(&conf)
        .spawn()
        .unwrap();
    std::fs::write(sdir.join("openvpn.pid"), server.id().to_string()).unwrap();
    let table = 1_000_000 + node;
    sh(&format!(
        "ip rule add from {subnet} lookup {table} priority 9000 && \
         ip route add unreachable default metric 4294967295 table {table} && \
         nft add table ip connexa_ovpn_{node}"
    ));
    server
}

/// A process that died (SIGKILL, power loss) leaves its openvpn servers,
/// rules and NAT behind, and its services may now run elsewhere: the next
/// launcher on the host ends and removes them before its first start, stop
/// or listing — but not those of a live process (it holds their lock files,
/// and its owner file names it).
#[test]
fn orphans_of_a_dead_process_are_swept_and_a_live_ones_are_kept() {
    if !has_cap_net_admin() {
        eprintln!("skipped: needs CAP_NET_ADMIN (run as root, as CI does)");
        return;
    }
    in_new_netns(|| async {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("openvpn");
        let dead = {
            let mut c = std::process::Command::new("true").spawn().unwrap();
            c.wait().unwrap();
            c.id()
        };
        let mut orphan = leave_service(&dir, 4791, "10.251.9.0/24", dead);
        let mut live = leave_service(&dir, 4792, "10.251.10.0/24", dead);
        // A live process without a lock file (an older Connexa, or one
        // between its start and its lock): its owner file protects it.
        let mut owned = leave_service(&dir, 4793, "10.251.11.0/24", std::process::id());
        // A live process's service: it holds the service's lock file.
        std::fs::create_dir_all(dir.join("locks")).unwrap();
        let held = std::fs::File::create(dir.join("locks").join("service-4792")).unwrap();
        held.lock().unwrap();
        let before = sh("ip -4 rule show; nft list tables");
        assert!(before.contains("lookup 1004791") && before.contains("connexa_ovpn_4791"));

        let l = OpenvpnLauncher::new(
            Arc::new(CountingOpener::default()),
            OpenvpnConfig {
                dir: dir.clone(),
                ..OpenvpnConfig::default()
            },
        );
        assert!(l.running().await.is_empty());
        // The orphan is gone: process, rule, routes, nft table, directory.
        let mut ended = None;
        for _ in 0..100 {
            ended = orphan.try_wait().unwrap();
            if ended.is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(ended.is_some(), "the orphan server was ended");
        let after = sh("ip -4 rule show; ip -4 route show table all; nft list tables");
        assert!(!after.contains("1004791"), "{after}");
        assert!(!after.contains("connexa_ovpn_4791"), "{after}");
        assert!(!dir.join("services/4791").exists());
        // The live processes' services are untouched.
        assert!(
            owned.try_wait().unwrap().is_none(),
            "an owned service's server"
        );
        assert!(after.contains("lookup 1004793"), "{after}");
        assert!(
            live.try_wait().unwrap().is_none(),
            "a live service's server"
        );
        assert!(
            after.contains("lookup 1004792") && after.contains("connexa_ovpn_4792"),
            "{after}"
        );
        assert!(dir.join("services/4792/server.conf").exists());
        // Once per launcher: a later listing does not sweep again.
        drop(held);
        assert!(l.running().await.is_empty());
        assert!(live.try_wait().unwrap().is_none());
        // Another launcher (a later process) would.
        assert_eq!(
            OpenvpnLauncher::new(
                Arc::new(CountingOpener::default()),
                OpenvpnConfig {
                    dir: dir.clone(),
                    ..OpenvpnConfig::default()
                },
            )
            .sweep_orphans()
            .await,
            vec![NodeId(4792)]
        );
        let _ = live.wait();
        let rules = sh("ip -4 rule show");
        assert!(
            !rules.contains("1004792") && rules.contains("1004793"),
            "{rules}"
        );
        let _ = owned.kill();
        let _ = owned.wait();
    });
}
