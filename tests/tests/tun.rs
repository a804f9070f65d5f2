//! `tun` services without the lab.
//!
//! * The packet path of a [`Tunnel`] (what a `tun` service moves between its
//!   interface and the PPP link): raw IPv4 datagrams go out as PPP/MPPE and
//!   come back whole, bypassing the user-space stack, against the in-process
//!   PPTP server on loopback (needs CAP_NET_RAW: root).
//! * Without CAP_NET_ADMIN a `tun` start fails with an error naming the
//!   capability, before any call is made, and the engine leaves the `speed_ok`
//!   node `speed_ok` (the test re-runs itself without the capability, with
//!   `setpriv`, as sim_no_cap_net_raw.rs does for CAP_NET_RAW).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use connexa_core::domain::{
    Event, Level, NewNode, Node, NodeFilter, Outcome, Secret, ServiceKind, Status,
};
use connexa_core::engine::{Engine, EngineConfig, NotAvailable};
use connexa_core::ports::{
    ApplyContext, InsertOutcome, NodeStore, ProbeDepth, ProbeError, Prober, ServiceLauncher,
};
use connexa_core::service::{DirectOpener, KindLauncher, TunnelError, TunnelLink, TunnelOpener};
use connexa_core::socks::{SocksConfig, SocksLauncher};
use connexa_core::store::SqlStore;
use connexa_core::tun::{TunConfig, TunLauncher};
use connexa_core::tunnel::{GreSocket, PacketError, Tunnel, TunnelConfig};
use connexa_tests::child::{has_cap_net_admin, run_without_cap_net_admin};
use connexa_tests::loopback_pptp::{HOST, Log, Mode, serve};
use tokio::net::TcpListener;

fn checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    for c in data.chunks(2) {
        let w = u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]);
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A TCP SYN from `src:sport` to `dst:dport` as one IPv4 datagram.
fn tcp_syn(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, seq: u32) -> Vec<u8> {
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&8192u16.to_be_bytes());
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 6, 0, 20]);
    pseudo.extend_from_slice(&tcp);
    let c = checksum(&pseudo, 0);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    let mut ip = vec![0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&40u16.to_be_bytes());
    ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = checksum(&ip, 0);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(&tcp);
    ip
}

#[tokio::test(flavor = "current_thread")]
async fn packet_path_carries_raw_ipv4_both_ways_bypassing_the_stack() {
    let gre = GreSocket::open().unwrap_or_else(|e| {
        panic!("{e} (this test needs CAP_NET_RAW: run it as root, e.g. via tests/run.sh)")
    });
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let log: Log = Arc::default();
    let g = Arc::clone(&gre);
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        serve(g, tcp, Mode::Full, log).await;
    });
    let t = Tunnel::open_addr(
        addr,
        "alice",
        &Secret::new("s3cret"),
        &TunnelConfig::default(),
        Arc::clone(&gre),
    )
    .await
    .expect("tunnel up");
    let mut path = t.packet_path(16).expect("the packet path");
    assert_eq!(
        t.packet_path(16).unwrap_err().kind(),
        std::io::ErrorKind::AlreadyExists,
        "one owner at a time"
    );
    assert_eq!(path.local_addr(), t.local_addr());
    assert_eq!(path.peer_addr(), t.peer_addr());
    assert_eq!(path.mtu(), t.mtu());
    let local = path.local_addr();

    // What the tunnel cannot carry is refused, not sent.
    assert_eq!(path.send(&[0x60; 40]), Err(PacketError::NotIpv4));
    let big = vec![0x45; usize::from(path.mtu()) + 1];
    assert!(matches!(path.send(&big), Err(PacketError::TooBig { .. })));

    // A SYN to the host's HTTP port comes back as its SYN-ACK: out through
    // PPP + MPPE, in decrypted, whole, to us and not to the user-space stack
    // (which has no such connection and would answer with a RST).
    path.send(&tcp_syn(local, HOST, 40_001, 80, 1000))
        .expect("queued");
    let reply = tokio::time::timeout(Duration::from_secs(20), path.recv())
        .await
        .expect("a reply within 20 s")
        .expect("the tunnel is up");
    assert_eq!(reply[0] >> 4, 4, "IPv4: {reply:02x?}");
    assert_eq!(reply[9], 6, "TCP: {reply:02x?}");
    assert_eq!(&reply[12..16], &HOST.octets(), "from the host");
    assert_eq!(&reply[16..20], &local.octets(), "to our PPP address");
    let ihl = usize::from(reply[0] & 0x0f) * 4;
    let tcp = &reply[ihl..];
    assert_eq!(u16::from_be_bytes([tcp[0], tcp[1]]), 80);
    assert_eq!(u16::from_be_bytes([tcp[2], tcp[3]]), 40_001);
    assert_eq!(tcp[13] & 0x12, 0x12, "SYN-ACK: {tcp:02x?}");
    assert_eq!(
        u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]),
        1001,
        "acknowledges our SYN"
    );
    assert_eq!(
        checksum(&reply[..ihl], 0),
        0,
        "the IPv4 header arrived intact"
    );

    // Closing the tunnel ends the path.
    t.close().await;
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        while path.recv().await.is_some() {}
    })
    .await;
    assert!(end.is_ok(), "the path ends with the tunnel");
    assert!(matches!(
        path.send(&tcp_syn(local, HOST, 40_002, 80, 1)),
        Err(PacketError::Down(_))
    ));
    server.abort();
}

const CHILD: &str = "CONNEXA_TUN_NO_NET_ADMIN_CHILD";
const NAME: &str = "tun_start_without_cap_net_admin_fails_naming_it_and_leaves_the_node";

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

async fn child() {
    assert!(
        !has_cap_net_admin(),
        "the child must run without CAP_NET_ADMIN"
    );
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("tun.db").display());
    let store: Arc<dyn NodeStore> = Arc::new(SqlStore::connect(&url).await.unwrap());
    let new = NewNode::new("127.0.0.1", 1723, "tun", "pw").unwrap();
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
    let sel = NodeFilter::ids([id]);
    let kind = connexa_core::ops::want_service_kind(store.as_ref(), &sel, ServiceKind::Tun)
        .await
        .unwrap();
    assert_eq!(kind.changed, vec![id]);
    connexa_core::ops::want_services(store.as_ref(), &sel, true)
        .await
        .unwrap();

    // The launcher alone: the error names the capability; no call was made.
    let opener = Arc::new(CountingOpener::default());
    let tun = Arc::new(TunLauncher::new(opener.clone(), TunConfig::default()));
    let node = store.get(id).await.unwrap().unwrap();
    assert_eq!(node.service_kind, ServiceKind::Tun);
    let e = tun.start(&node, None).await.unwrap_err().to_string();
    assert!(e.contains("CAP_NET_ADMIN"), "{e}");
    assert_eq!(opener.0.load(Ordering::SeqCst), 0, "no call was made");
    assert!(tun.running().await.is_empty());

    // Through the engine: a failed start, the node stays speed_ok.
    let socks = Arc::new(SocksLauncher::new(
        Arc::new(DirectOpener::loopback_only()),
        SocksConfig::default(),
    ));
    let launcher = Arc::new(KindLauncher::new(socks, tun));
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
    assert!(why.contains("CAP_NET_ADMIN"), "{why}");
    assert_eq!(opener.0.load(Ordering::SeqCst), 0, "no call was made");
    println!("CHILD-OK");
}

#[tokio::test(flavor = "current_thread")]
async fn tun_start_without_cap_net_admin_fails_naming_it_and_leaves_the_node() {
    if std::env::var_os(CHILD).is_some() {
        child().await;
        return;
    }
    run_without_cap_net_admin(NAME, CHILD);
}
