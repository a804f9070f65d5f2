//! SOCKS5 service under an unauthenticated flood: one service (default
//! limits: `max_preauth` 128, 16 per source) and a client that logs in and
//! downloads `MIB` MiB `DOWNLOADS` times in a row (every SHA-256 verified),
//! first with no attacker (the baseline, measured in the same round just
//! before), then while `ATTACKERS` sockets from 20 other loopback addresses
//! hold pre-auth slots (partial greetings, silence, re-opened 20 ms after the
//! server closes them; see `PreAuthFlood`). Prints per round the download rate
//! and the median login + CONNECT time of both, and their ratios.
//!
//! Usage: bench_socks_hostile [ATTACKERS=300] [MIB=8] [DOWNLOADS=8] [ROUNDS=3]   (build with --release)

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use connexa_core::ports::ServiceLauncher;
use connexa_core::service::DirectOpener;
use connexa_core::socks::proto::TargetAddr;
use connexa_core::socks::{SocksConfig, SocksLauncher};
use connexa_tests::socks_kit::{
    FileServer, PreAuthFlood, SocksOutcome, http_get_file, sha256_hex, socks_connect, verified_node,
};

struct Run {
    mib_per_s: f64,
    login_ms: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// `downloads` downloads in a row through the service; panics on any failure.
async fn downloads(
    proxy: SocketAddr,
    user: &str,
    pass: &str,
    files: &FileServer,
    downloads: usize,
) -> Run {
    let target = TargetAddr::Ip(files.addr);
    let mut logins = Vec::new();
    let t = Instant::now();
    for i in 0..downloads {
        let t_login = Instant::now();
        let s = match socks_connect(proxy, user, pass, &target).await {
            Ok(SocksOutcome::Connected(s)) => s,
            other => panic!("download {i}: SOCKS5 failed: {other:?}"),
        };
        logins.push(t_login.elapsed().as_secs_f64() * 1e3);
        let body = http_get_file(s).await.expect("download");
        assert_eq!(sha256_hex(&body), files.sha256, "download {i}: checksum");
    }
    let secs = t.elapsed().as_secs_f64();
    Run {
        mib_per_s: (downloads * files.len) as f64 / 1_048_576.0 / secs,
        login_ms: median(logins),
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let mut arg = |d: usize| args.next().and_then(|a| a.parse().ok()).unwrap_or(d);
    let attackers = arg(300);
    let mib = arg(8);
    let n = arg(8);
    let rounds = arg(3);
    let limit = connexa_core::sim::raise_fd_limit().unwrap_or(1024);
    assert!(
        limit >= 2 * attackers as u64 + 200,
        "RLIMIT_NOFILE {limit} is too low for {attackers} attackers"
    );
    let files = FileServer::start(mib * 1024 * 1024).await;
    let launcher = SocksLauncher::new(
        Arc::new(DirectOpener::loopback_only()),
        SocksConfig {
            port_min: 33800,
            port_max: 33849,
            ..SocksConfig::default()
        },
    );
    let node = verified_node(1);
    let ep = launcher.start(&node, None).await.expect("start service");
    let proxy = SocketAddr::new(ep.host.parse().expect("host"), ep.port);
    let (user, pass) = (ep.username.clone(), ep.password.expose().to_owned());
    let sources: Vec<Ipv4Addr> = (2..22).map(|i| Ipv4Addr::new(127, 0, 0, i)).collect();
    let opts = &launcher.config().server;
    println!(
        "bench_socks_hostile: {attackers} attackers from {} addresses, max_preauth {}, per source {}, preauth_timeout {:?}; {n} x {mib} MiB per run, {rounds} rounds",
        sources.len(),
        opts.max_preauth,
        opts.max_preauth_per_source,
        opts.preauth_timeout
    );

    let (mut rate_ratios, mut login_ratios) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let quiet = downloads(proxy, &user, &pass, &files, n).await;
        let before = launcher.stats(node.id).unwrap_or_default();
        let flood = PreAuthFlood::start(proxy, &sources, attackers, Duration::from_millis(20));
        let t0 = Instant::now();
        while flood.connects() < attackers as u64 && t0.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let full = launcher.stats(node.id).unwrap_or_default().preauth_active;
        let t_flood = Instant::now();
        let c0 = flood.connects();
        let hostile = downloads(proxy, &user, &pass, &files, n).await;
        let churn = (flood.connects() - c0) as f64 / t_flood.elapsed().as_secs_f64();
        flood.stop().await;
        let after = launcher.stats(node.id).unwrap_or_default();
        let (r, l) = (
            hostile.mib_per_s / quiet.mib_per_s,
            hostile.login_ms / quiet.login_ms,
        );
        println!(
            "round {round}: quiet {:7.1} MiB/s, login+CONNECT {:6.2} ms | flood ({full} pre-auth slots held, {churn:.0} re-opens/s, {} evicted, {} timed out) {:7.1} MiB/s, login+CONNECT {:6.2} ms | rate ratio {r:.2}, login time ratio {l:.1}",
            quiet.mib_per_s,
            quiet.login_ms,
            after.preauth_evicted - before.preauth_evicted,
            after.preauth_timeouts - before.preauth_timeouts,
            hostile.mib_per_s,
            hostile.login_ms,
        );
        rate_ratios.push(r);
        login_ratios.push(l);
    }
    launcher.stop_all().await;
    println!(
        "all {} downloads verified; median ratios flood / quiet: rate {:.2}, login+CONNECT time {:.1}",
        2 * n * rounds,
        median(rate_ratios),
        median(login_ratios)
    );
}
