//! SOCKS5 services under unauthenticated floods (issue 23): connections that
//! never log in hold pre-auth slots only, are evicted for newcomers and closed
//! at the pre-auth deadline, so a real client always gets in. Real sockets on
//! loopback; attackers connect from other 127.0.0.0/8 addresses.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use connexa_core::ports::ServiceLauncher;
use connexa_core::service::DirectOpener;
use connexa_core::socks::proto::{self, TargetAddr};
use connexa_core::socks::{SocksConfig, SocksLauncher};
use connexa_tests::socks_kit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn config(port_min: u16) -> SocksConfig {
    let mut c = SocksConfig {
        port_min,
        port_max: port_min + 49,
        ..SocksConfig::default()
    };
    c.server.connect_timeout = Duration::from_secs(5);
    c
}

/// Polls `cond` every 10 ms for up to `limit`; true when it held.
async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}

/// 300 unauthenticated sockets from six other addresses, re-opened as soon as
/// the server closes them, against a pre-auth budget of 64 (16 per source):
/// the budget stays full of attackers, yet each of 20 downloads by a real
/// client succeeds (on main, the 256-connection limit locked clients out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_logs_in_and_downloads_through_an_unauthenticated_flood() {
    // Each attacker costs two descriptors here (its socket and the server's).
    let limit = connexa_core::sim::raise_fd_limit().unwrap_or(1024);
    let attackers = 300usize.min(usize::try_from(limit.saturating_sub(300) / 2).unwrap_or(0));
    assert!(
        attackers >= 200,
        "RLIMIT_NOFILE {limit} is too low for this test"
    );

    let files = FileServer::start(256 * 1024).await;
    let mut cfg = config(33700);
    cfg.server.max_preauth = 64;
    cfg.server.max_preauth_per_source = 16;
    cfg.server.preauth_timeout = Duration::from_secs(2);
    let l = SocksLauncher::new(Arc::new(DirectOpener::loopback_only()), cfg);
    let node = verified_node(1);
    let ep = l.start(&node, None).await.unwrap();
    let p = SocketAddr::new(ep.host.parse().unwrap(), ep.port);

    let sources: Vec<Ipv4Addr> = (2..8).map(|i| Ipv4Addr::new(127, 0, 0, i)).collect();
    let flood = PreAuthFlood::start(p, &sources, attackers, Duration::from_millis(20));
    // The flood is in place: every attacker connected and the budget is full.
    let full = eventually(Duration::from_secs(30), || {
        flood.connects() >= attackers as u64 && l.stats(node.id).unwrap().preauth_active >= 64
    })
    .await;
    assert!(full, "flood not established: {:?}", l.stats(node.id));

    let target = TargetAddr::Ip(files.addr);
    let mut ok = 0;
    for i in 0..20 {
        let r = tokio::time::timeout(
            Duration::from_secs(30),
            fetch_via_socks(p, &ep.username, ep.password.expose(), &target),
        )
        .await;
        match r {
            Ok(Ok(body)) if sha256_hex(&body) == files.sha256 => ok += 1,
            other => panic!(
                "download {i} failed: {:?}; {:?}",
                other.map(|r| r.map(|b| b.len())),
                l.stats(node.id)
            ),
        }
    }
    let reopened = flood.connects();
    let during = l.stats(node.id).unwrap();
    flood.stop().await;
    assert_eq!(ok, 20);
    assert!(
        reopened > attackers as u64,
        "the attackers kept re-opening: {reopened}"
    );
    assert_eq!(during.relayed, 20, "{during:?}");
    assert!(during.preauth_evicted > 0, "{during:?}");
    assert_eq!(
        (during.over_limit, during.auth_failures),
        (0, 0),
        "{during:?}"
    );
    l.stop(node.id).await.unwrap();
}

/// An idle unauthenticated connection is closed at the pre-auth deadline; a
/// logged-in one that waits longer than that before its CONNECT is not (the
/// handshake timeout bounds it).
#[tokio::test]
async fn the_preauth_deadline_closes_idle_logins_only() {
    let files = FileServer::start(64 * 1024).await;
    let mut cfg = config(33750);
    cfg.server.preauth_timeout = Duration::from_millis(300);
    cfg.server.handshake_timeout = Duration::from_secs(5);
    let l = SocksLauncher::new(Arc::new(DirectOpener::loopback_only()), cfg);
    let node = verified_node(2);
    let ep = l.start(&node, None).await.unwrap();
    let p = SocketAddr::new(ep.host.parse().unwrap(), ep.port);

    let t0 = Instant::now();
    let mut idle = TcpStream::connect(p).await.unwrap();
    idle.write_all(&[5, 1]).await.unwrap(); // half a greeting
    let mut logged_in = TcpStream::connect(p).await.unwrap();
    logged_in.write_all(&[5, 1, 2]).await.unwrap();
    let mut m = [0u8; 2];
    logged_in.read_exact(&mut m).await.unwrap();
    assert_eq!(m, [5, 2]);
    logged_in
        .write_all(&proto::encode_auth(&ep.username, ep.password.expose()).unwrap())
        .await
        .unwrap();
    logged_in.read_exact(&mut m).await.unwrap();
    assert_eq!(m, [1, 0], "login accepted");

    let mut out = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(10), idle.read_to_end(&mut out)).await;
    assert!(
        matches!(r, Ok(Ok(0))),
        "the idle connection is closed: {r:?}"
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(300),
        "not before the deadline: {:?}",
        t0.elapsed()
    );
    // Well past the pre-auth deadline, the logged-in client sends its request.
    tokio::time::sleep(Duration::from_millis(600)).await;
    logged_in
        .write_all(&proto::encode_connect(&TargetAddr::Ip(files.addr)))
        .await
        .unwrap();
    let mut reply = [0u8; 10];
    logged_in.read_exact(&mut reply).await.unwrap();
    assert_eq!(reply[..2], [5, 0], "CONNECT succeeded: {reply:?}");
    let body = http_get_file(logged_in).await.unwrap();
    assert_eq!(sha256_hex(&body), files.sha256);

    assert!(
        eventually(Duration::from_secs(10), || l.stats(node.id).unwrap().active
            == 0)
        .await,
        "{:?}",
        l.stats(node.id)
    );
    let s = l.stats(node.id).unwrap();
    assert_eq!(s.preauth_timeouts, 1, "{s:?}");
    assert_eq!(s.handshake_timeouts, 0, "{s:?}");
    assert_eq!(s.relayed, 1, "{s:?}");
    assert_eq!((s.accepted, s.preauth_active), (2, 0), "{s:?}");
    l.stop(node.id).await.unwrap();
}
