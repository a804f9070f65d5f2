//! SOCKS5 services with real sockets on loopback: `SocksLauncher` with the
//! `DirectOpener` (loopback only) or a controllable opener, a loopback HTTP file
//! server, curl and a raw SOCKS5 client.

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use connexa_core::domain::{Node, ServiceEndpoint, Status};
use connexa_core::export::{self, ExportFormat};
use connexa_core::ports::{Health, ServiceError, ServiceLauncher};
use connexa_core::service::{DirectOpener, TunnelOpener};
use connexa_core::socks::proto::{Reply, TargetAddr};
use connexa_core::socks::{DnsMode, SocksConfig, SocksLauncher};
use connexa_tests::socks_kit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A port range of its own per test (tests run in parallel).
fn config(port_min: u16) -> SocksConfig {
    let mut c = SocksConfig {
        port_min,
        port_max: port_min + 49,
        ..SocksConfig::default()
    };
    c.server.handshake_timeout = Duration::from_millis(500);
    c.server.connect_timeout = Duration::from_secs(2);
    c
}

fn launcher(opener: impl TunnelOpener + 'static, cfg: SocksConfig) -> SocksLauncher {
    SocksLauncher::new(Arc::new(opener), cfg)
}

fn proxy(ep: &ServiceEndpoint) -> SocketAddr {
    SocketAddr::new(ep.host.parse().unwrap(), ep.port)
}

fn curl(args: &[&str]) -> (bool, Vec<u8>, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl is installed (tests/run.sh provisions it)");
    (
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn curl_async(args: Vec<String>) -> (bool, Vec<u8>, String) {
    tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        curl(&a)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_fetches_a_file_through_a_service_and_the_export_lines_work() {
    let files = FileServer::start(3 * 1024 * 1024 + 17).await;
    let l = launcher(DirectOpener::loopback_only(), config(31100));
    let node = verified_node(1);
    let ep = l.start(&node, None).await.unwrap();
    assert_eq!(ep.host, "127.0.0.1");
    assert!((31100..=31149).contains(&ep.port));
    assert!(ep.username.len() >= 16 && ep.password.expose().len() >= 16);
    assert!(!format!("{ep:?}").contains(ep.password.expose()));

    // curl --socks5-hostname: the name (here an IP literal) is sent to the proxy.
    let proxy_arg = format!(
        "{}:{}@127.0.0.1:{}",
        ep.username,
        ep.password.expose(),
        ep.port
    );
    let (ok, body, err) = curl_async(vec![
        "--socks5-hostname".into(),
        proxy_arg.clone(),
        files.url(),
    ])
    .await;
    assert!(ok, "curl failed: {err}");
    assert_eq!(body.len(), files.len);
    assert_eq!(sha256_hex(&body), files.sha256);

    // localhost resolves through the link (the loopback-only direct link knows it).
    let url = format!("http://localhost:{}/file", files.addr.port());
    let (ok, body, err) = curl_async(vec!["--socks5-hostname".into(), proxy_arg, url]).await;
    assert!(ok, "curl via localhost failed: {err}");
    assert_eq!(sha256_hex(&body), files.sha256);

    // The export lines of the running service are what a client needs.
    let online = Node {
        status: Status::Online,
        service: Some(ep.clone()),
        ..node.clone()
    };
    let mut out = Vec::new();
    export::write(ExportFormat::Socks, [&online], &mut out).unwrap();
    let url_line = String::from_utf8(out).unwrap();
    let url_line = url_line.trim();
    assert!(url_line.starts_with("socks5://"), "{url_line}");
    let socks5h = url_line.replacen("socks5://", "socks5h://", 1);
    let (ok, body, err) = curl_async(vec!["-x".into(), socks5h, files.url()]).await;
    assert!(ok, "curl -x <export line> failed: {err}");
    assert_eq!(sha256_hex(&body), files.sha256);
    let mut out = Vec::new();
    export::write(ExportFormat::SocksColon, [&online], &mut out).unwrap();
    let colon = String::from_utf8(out).unwrap();
    let parts: Vec<&str> = colon.trim().split(':').collect();
    assert_eq!(
        parts,
        vec![
            "127.0.0.1",
            &ep.port.to_string(),
            &ep.username,
            ep.password.expose()
        ]
    );

    // A wrong password is refused, and counted as such.
    let wrong = format!("{}:not-the-password@127.0.0.1:{}", ep.username, ep.port);
    let (ok, body, _) = curl_async(vec!["--socks5-hostname".into(), wrong, files.url()]).await;
    assert!(!ok && body.is_empty(), "a wrong password must be refused");
    // No credentials at all: curl offers only "no authentication", which is refused.
    let (ok, _, _) = curl_async(vec![
        "--socks5-hostname".into(),
        format!("127.0.0.1:{}", ep.port),
        files.url(),
    ])
    .await;
    assert!(!ok, "no authentication must be refused");
    let stats = l.stats(node.id).unwrap();
    assert_eq!(stats.auth_failures, 1, "{stats:?}");
    assert_eq!(stats.relayed, 3, "{stats:?}");
    assert!(stats.bytes_down > 3 * files.len as u64, "{stats:?}");
    assert!(stats.bytes_down < 3 * (files.len as u64 + 200), "{stats:?}");

    assert!(matches!(l.health(&node).await, Health::Healthy));
    l.stop(node.id).await.unwrap();
}

#[tokio::test]
async fn every_failure_gets_its_reply_code() {
    let files = FileServer::start(1000).await;
    let names = [("files.test", IpAddr::from([127, 0, 0, 1]))];
    let l = launcher(ControlledOpener::new(&names), config(31200));
    let node = verified_node(2);
    let ep = l.start(&node, None).await.unwrap();
    let (p, u, pw) = (
        proxy(&ep),
        ep.username.clone(),
        ep.password.expose().to_owned(),
    );

    // Names are resolved through the link's DNS: files.test is only known there.
    let t = TargetAddr::Domain("files.test".into(), files.addr.port());
    assert_eq!(
        sha256_hex(&fetch_via_socks(p, &u, &pw, &t).await.unwrap()),
        files.sha256
    );
    // IPv4 and IPv6 targets.
    let t = TargetAddr::Ip(files.addr);
    assert_eq!(fetch_via_socks(p, &u, &pw, &t).await.unwrap().len(), 1000);
    let v6 = TcpListener::bind("[::1]:0").await.unwrap();
    let v6_addr = v6.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = v6.accept().await.unwrap();
        s.write_all(b"hello over v6").await.unwrap();
    });
    match socks_connect(p, &u, &pw, &TargetAddr::Ip(v6_addr))
        .await
        .unwrap()
    {
        SocksOutcome::Connected(mut s) => {
            let mut got = String::new();
            s.read_to_string(&mut got).await.unwrap();
            assert_eq!(got, "hello over v6");
        }
        other => panic!("{other:?}"),
    }

    // Connection refused: a port nobody listens on.
    let closed = {
        let tmp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        tmp.local_addr().unwrap()
    };
    let cases = [
        (TargetAddr::Ip(closed), Reply::ConnectionRefused),
        // Unknown name: host unreachable.
        (
            TargetAddr::Domain("nowhere.test".into(), 80),
            Reply::HostUnreachable,
        ),
        // The link refuses (a ruleset): not allowed. Nothing is sent anywhere.
        (
            TargetAddr::Ip("192.0.2.1:80".parse().unwrap()),
            Reply::NotAllowed,
        ),
    ];
    for (target, want) in cases {
        match socks_connect(p, &u, &pw, &target).await.unwrap() {
            SocksOutcome::Failed(rep) => assert_eq!(rep, want, "{target}"),
            other => panic!("{target}: {other:?}"),
        }
    }

    // Raw requests the client helper would not send.
    async fn raw(p: SocketAddr, u: &str, pw: &str, request: &[u8]) -> Vec<u8> {
        let mut s = TcpStream::connect(p).await.unwrap();
        s.write_all(&[5, 1, 2]).await.unwrap();
        let mut b = [0u8; 2];
        s.read_exact(&mut b).await.unwrap();
        s.write_all(&connexa_core::socks::proto::encode_auth(u, pw).unwrap())
            .await
            .unwrap();
        s.read_exact(&mut b).await.unwrap();
        assert_eq!(b, [1, 0]);
        s.write_all(request).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
            .await
            .unwrap()
            .unwrap();
        out
    }
    let fail = |rep: u8| vec![5, rep, 0, 1, 0, 0, 0, 0, 0, 0];
    // BIND and UDP ASSOCIATE: command not supported.
    assert_eq!(
        raw(p, &u, &pw, &[5, 2, 0, 1, 127, 0, 0, 1, 0, 80]).await,
        fail(7)
    );
    assert_eq!(
        raw(p, &u, &pw, &[5, 3, 0, 1, 127, 0, 0, 1, 0, 80]).await,
        fail(7)
    );
    // Address type 5: not supported.
    assert_eq!(
        raw(p, &u, &pw, &[5, 1, 0, 5, 127, 0, 0, 1, 0, 80]).await,
        fail(8)
    );

    // Only "no authentication" offered: no acceptable method.
    let mut s = TcpStream::connect(p).await.unwrap();
    s.write_all(&[5, 1, 0]).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    assert_eq!(out, [5, 0xFF]);

    let stats = l.stats(node.id).unwrap();
    assert_eq!(stats.connect_failures, 3, "{stats:?}");
    assert_eq!(stats.relayed, 3, "{stats:?}");
    l.stop(node.id).await.unwrap();
}

#[tokio::test]
async fn local_dns_is_an_option() {
    let files = FileServer::start(5000).await;
    // The link's DNS knows nothing; the local resolver knows localhost.
    let mut cfg = config(31300);
    cfg.server.dns = DnsMode::Local;
    let l = launcher(ControlledOpener::new(&[]), cfg);
    let ep = l.start(&verified_node(3), None).await.unwrap();
    let t = TargetAddr::Domain("localhost".into(), files.addr.port());
    let body = fetch_via_socks(proxy(&ep), &ep.username, ep.password.expose(), &t)
        .await
        .unwrap();
    assert_eq!(sha256_hex(&body), files.sha256);

    // The same with tunnel DNS (the default) fails: the name goes to the link.
    let l2 = launcher(ControlledOpener::new(&[]), config(31350));
    let ep2 = l2.start(&verified_node(3), None).await.unwrap();
    let r = socks_connect(proxy(&ep2), &ep2.username, ep2.password.expose(), &t)
        .await
        .unwrap();
    assert!(
        matches!(r, SocksOutcome::Failed(Reply::HostUnreachable)),
        "{r:?}"
    );
}

/// Garbage, SOCKS4, no-auth, oversize fields and stalled (slowloris) clients are
/// closed with the right answer, while well-behaved clients download normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_are_rejected_without_affecting_others() {
    let files = FileServer::start(512 * 1024).await;
    let mut cfg = config(31400);
    // All 47 clients come from 127.0.0.1: room for them all in the pre-auth
    // budget, so the stalled ones end by the timeout, not by eviction
    // (eviction is tested in socks_hostile.rs).
    cfg.server.max_preauth_per_source = 64;
    let l = Arc::new(launcher(DirectOpener::loopback_only(), cfg));
    let node = verified_node(4);
    let ep = l.start(&node, None).await.unwrap();
    let p = proxy(&ep);

    // Slowloris: half a greeting, then silence. Closed after the handshake
    // timeout (0.5 s here, shorter than the 3 s pre-auth default, so it bounds
    // the pre-auth phase).
    let mut stalled = Vec::new();
    for i in 0..20u8 {
        let mut s = TcpStream::connect(p).await.unwrap();
        let partial: &[u8] = match i % 4 {
            0 => &[5],
            1 => &[5, 3, 0],
            2 => &[5, 1, 2, 1, 200, b'a'], // greeting, then a username that never ends
            _ => &[],
        };
        s.write_all(partial).await.unwrap();
        stalled.push(s);
    }
    let t0 = Instant::now();
    let hostile = async {
        let mut answers = Vec::new();
        let mut garbage = test_bytes(4096, 99);
        for (i, chunk) in garbage.chunks_mut(256).enumerate() {
            chunk[0] = if i % 2 == 0 { 0x47 } else { 4 }; // "G" (HTTP) or SOCKS4
            let mut s = TcpStream::connect(p).await.unwrap();
            s.write_all(chunk).await.unwrap();
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out).await;
            answers.push(out);
        }
        // Oversize-but-legal fields: 255 methods, 255-byte user and password (wrong).
        let mut s = TcpStream::connect(p).await.unwrap();
        let mut greet = vec![5, 255];
        greet.extend((0..=254u8).rev());
        s.write_all(&greet).await.unwrap();
        let mut auth = vec![1, 255];
        auth.extend([b'u'; 255]);
        auth.push(255);
        auth.extend([b'p'; 255]);
        s.write_all(&auth).await.unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        (answers, out)
    };
    let good = async {
        let t = TargetAddr::Ip(files.addr);
        let all = futures::future::join_all((0..10).map(|_| {
            let (u, pw) = (ep.username.clone(), ep.password.expose().to_owned());
            let t = t.clone();
            async move { fetch_via_socks(p, &u, &pw, &t).await }
        }))
        .await;
        all.into_iter()
            .map(|r| sha256_hex(&r.unwrap()))
            .collect::<Vec<_>>()
    };
    let ((answers, oversize), sums) = tokio::join!(hostile, good);
    assert!(sums.iter().all(|s| *s == files.sha256));
    assert!(
        answers.iter().all(|a| a.is_empty()),
        "non-SOCKS5 gets no reply: {answers:?}"
    );
    assert_eq!(oversize, [5, 2, 1, 1], "method chosen, then login refused");

    // Every stalled client is closed after the handshake timeout (0.5 s), not before.
    for mut s in stalled {
        let mut out = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        assert!(r.is_ok(), "a stalled client must be closed");
        assert!(out.is_empty() || out == [5, 2], "{out:?}");
    }
    assert!(
        t0.elapsed() >= Duration::from_millis(450),
        "{:?}",
        t0.elapsed()
    );
    let stats = l.stats(node.id).unwrap();
    assert_eq!(stats.preauth_timeouts, 20, "none had logged in: {stats:?}");
    assert_eq!(stats.handshake_timeouts, 0, "{stats:?}");
    assert_eq!(stats.auth_failures, 1, "{stats:?}");
    assert_eq!(stats.protocol_errors, 16, "{stats:?}");
    assert_eq!(stats.relayed, 10, "{stats:?}");
    assert_eq!(stats.active, 0, "{stats:?}");
}

#[tokio::test]
async fn connection_limit_and_idle_timeout() {
    let mut cfg = config(31500);
    cfg.server.max_connections = 2;
    cfg.server.idle_timeout = Duration::from_millis(1000);
    let l = launcher(DirectOpener::loopback_only(), cfg);
    let node = verified_node(5);
    let ep = l.start(&node, None).await.unwrap();
    let (p, u, pw) = (
        proxy(&ep),
        ep.username.clone(),
        ep.password.expose().to_owned(),
    );
    // A target that accepts and never says anything.
    let quiet = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let quiet_addr = quiet.local_addr().unwrap();
    let _hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = quiet.accept().await {
            held.push(s);
        }
    });
    let t = TargetAddr::Ip(quiet_addr);
    let connected = |r: SocksOutcome| match r {
        SocksOutcome::Connected(s) => s,
        other => panic!("{other:?}"),
    };
    let mut a = connected(socks_connect(p, &u, &pw, &t).await.unwrap());
    let b = connected(socks_connect(p, &u, &pw, &t).await.unwrap());
    // The third is closed when it has logged in: no login reply.
    assert!(socks_connect(p, &u, &pw, &t).await.is_err());
    assert_eq!(l.stats(node.id).unwrap().over_limit, 1);
    // Activity keeps a relay open past the idle timeout...
    let t0 = Instant::now();
    for _ in 0..7 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        a.write_all(b"ping").await.unwrap();
    }
    assert!(t0.elapsed() > Duration::from_millis(1300));
    drop(b);
    // ...and silence closes it.
    let mut out = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(3), a.read_to_end(&mut out)).await;
    assert!(matches!(r, Ok(Ok(0))), "{r:?}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let stats = l.stats(node.id).unwrap();
    assert!(stats.idle_timeouts >= 1, "{stats:?}");
    assert_eq!(
        (stats.bytes_up, stats.bytes_down),
        (7 * 4, 0),
        "counted as they move, also for a relay the idle timeout closed"
    );
    // Room again.
    let c = connected(socks_connect(p, &u, &pw, &t).await.unwrap());
    drop(c);
}

#[tokio::test]
async fn stop_closes_the_port_and_a_restart_keeps_port_and_credentials() {
    let files = FileServer::start(64 * 1024).await;
    let opener = ControlledOpener::new(&[]);
    let l = launcher(opener.clone(), config(31600));
    let node = verified_node(6);
    let ep = l.start(&node, None).await.unwrap();
    assert_eq!(l.running().await, vec![node.id]);
    assert_eq!(
        l.start(&node, None).await.unwrap(),
        ep,
        "start is idempotent"
    );
    assert_eq!(opener.opens(), 1);
    // An open relay is drained (bounded) by stop.
    let t = TargetAddr::Ip(files.addr);
    let SocksOutcome::Connected(open) =
        socks_connect(proxy(&ep), &ep.username, ep.password.expose(), &t)
            .await
            .unwrap()
    else {
        panic!()
    };
    let t0 = Instant::now();
    l.stop(node.id).await.unwrap();
    assert!(t0.elapsed() < Duration::from_secs(4), "drain is bounded");
    assert!(l.running().await.is_empty());
    assert_eq!(opener.closed_links(), 1, "the tunnel is closed");
    let e = TcpStream::connect(proxy(&ep)).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
    drop(open);
    assert!(matches!(
        l.stop(node.id).await,
        Err(ServiceError::NotRunning(_))
    ));
    assert!(matches!(l.health(&node).await, Health::Unhealthy(_)));

    // A new launcher (a restarted process) given the stored endpoint: same port and credentials.
    let l2 = launcher(opener.clone(), config(31600));
    let ep2 = l2.start(&node, Some(ep.clone())).await.unwrap();
    assert_eq!(ep2, ep);
    let body = fetch_via_socks(proxy(&ep2), &ep2.username, ep2.password.expose(), &t)
        .await
        .unwrap();
    assert_eq!(sha256_hex(&body), files.sha256);

    // The stored port is taken by someone else: another port, same credentials.
    let l3 = launcher(opener.clone(), config(31600));
    let ep3 = l3.start(&verified_node(7), Some(ep.clone())).await.unwrap();
    assert_ne!(ep3.port, ep.port);
    assert_eq!(
        (ep3.username.as_str(), ep3.password.expose()),
        (ep.username.as_str(), ep.password.expose())
    );
    // A tunnel that cannot be opened: the start fails and the port is free again.
    opener.set_up(false);
    let l4 = launcher(opener.clone(), config(31650));
    let e = l4.start(&verified_node(8), None).await.unwrap_err();
    assert!(e.to_string().contains("tunnel"), "{e}");
    assert!(l4.running().await.is_empty());
    l2.stop_all().await;
    l3.stop_all().await;
    assert!(TcpStream::connect(proxy(&ep)).await.is_err());
}

/// A client that pipelines greeting, login, CONNECT and its first data in one
/// write, then streams 2 MiB: the echo comes back byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_client_and_upload_are_relayed_untouched() {
    let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let l = launcher(DirectOpener::loopback_only(), config(31900));
    let node = verified_node(9);
    let ep = l.start(&node, None).await.unwrap();
    let mut s = TcpStream::connect(proxy(&ep)).await.unwrap();
    let payload = test_bytes(2 * 1024 * 1024, 7);
    let mut first = vec![5, 1, 2];
    first.extend(
        connexa_core::socks::proto::encode_auth(&ep.username, ep.password.expose()).unwrap(),
    );
    first.extend(connexa_core::socks::proto::encode_connect(&TargetAddr::Ip(
        echo_addr,
    )));
    first.extend(&payload[..1000]);
    s.write_all(&first).await.unwrap();
    let mut head = [0u8; 2 + 2 + 10];
    s.read_exact(&mut head).await.unwrap();
    assert_eq!(head, [5, 2, 1, 0, 5, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    let (mut r, mut w) = s.into_split();
    let rest = payload[1000..].to_vec();
    let writer = tokio::spawn(async move {
        w.write_all(&rest).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut back = Vec::new();
    r.read_to_end(&mut back).await.unwrap();
    writer.await.unwrap();
    assert_eq!(back.len(), payload.len());
    assert_eq!(sha256_hex(&back), sha256_hex(&payload));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let stats = l.stats(node.id).unwrap();
    assert_eq!(stats.bytes_up, payload.len() as u64, "{stats:?}");
    assert_eq!(stats.bytes_down, payload.len() as u64, "{stats:?}");
}
