//! SOCKS5 service benchmark: N services (default 100) started at once with a
//! `SocksLauncher` (loopback-only `DirectOpener`), each relaying one download of
//! M MiB (default 4) from a loopback HTTP server, all concurrently; every
//! checksum is verified. The baseline is the same N downloads made directly
//! (no SOCKS) in the same process. Prints aggregate throughput, the ratio to the
//! baseline, and the process's resident memory.
//!
//! Usage: bench_socks [SERVICES] [MIB] [ROUNDS]   (build with --release)

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use connexa_core::domain::ServiceEndpoint;
use connexa_core::ports::ServiceLauncher;
use connexa_core::service::DirectOpener;
use connexa_core::socks::proto::TargetAddr;
use connexa_core::socks::{SocksConfig, SocksLauncher};
use connexa_tests::socks_kit::{FileServer, SocksOutcome, rss_kib, socks_connect, verified_node};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// GET /file over `s`, hashing the body as it streams (no buffering).
async fn get_hashed(mut s: TcpStream) -> std::io::Result<(u64, String)> {
    s.write_all(b"GET /file HTTP/1.0\r\nHost: bench\r\n\r\n")
        .await?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut head = Vec::new();
    let mut hasher = Sha256::new();
    let mut body = 0u64;
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        if head.is_empty() || !head.windows(4).any(|w| w == b"\r\n\r\n") {
            head.extend(&buf[..n]);
            if let Some(p) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                let rest = &head[p + 4..];
                hasher.update(rest);
                body += rest.len() as u64;
                head.truncate(p + 4);
            }
        } else {
            hasher.update(&buf[..n]);
            body += n as u64;
        }
    }
    let hex = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((body, hex))
}

async fn via_socks(ep: ServiceEndpoint, target: SocketAddr) -> std::io::Result<(u64, String)> {
    let proxy = SocketAddr::new(ep.host.parse().map_err(std::io::Error::other)?, ep.port);
    match socks_connect(
        proxy,
        &ep.username,
        ep.password.expose(),
        &TargetAddr::Ip(target),
    )
    .await?
    {
        SocksOutcome::Connected(s) => get_hashed(s).await,
        other => Err(std::io::Error::other(format!("{other:?}"))),
    }
}

/// Samples VmRSS every 20 ms while alive; returns the maximum seen (KiB).
fn rss_sampler() -> (Arc<AtomicBool>, tokio::task::JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let s = Arc::clone(&stop);
    let task = tokio::spawn(async move {
        let max = AtomicU64::new(0);
        while !s.load(Ordering::Relaxed) {
            max.fetch_max(rss_kib().0, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        max.load(Ordering::Relaxed)
    });
    (stop, task)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let services: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);
    let mib: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(4);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let files = FileServer::start(mib * 1024 * 1024).await;
    let total_mib = (services * mib) as f64;
    let rss_start = rss_kib().0;

    let launcher = Arc::new(SocksLauncher::new(
        Arc::new(DirectOpener::loopback_only()),
        SocksConfig {
            port_min: 32000,
            port_max: 32999,
            ..SocksConfig::default()
        },
    ));
    let t0 = Instant::now();
    let eps: Vec<ServiceEndpoint> = futures::future::join_all((0..services).map(|i| {
        let l = Arc::clone(&launcher);
        async move { l.start(&verified_node(i as i64 + 1), None).await }
    }))
    .await
    .into_iter()
    .collect::<Result<_, _>>()
    .expect("start services");
    let start_ms = t0.elapsed().as_secs_f64() * 1e3;
    let rss_services = rss_kib().0;

    let mut direct_rates = Vec::new();
    let mut socks_rates = Vec::new();
    let mut socks_peak = 0u64;
    let mut direct_peak = 0u64;
    for round in 0..rounds {
        // Baseline: the same downloads without SOCKS.
        let (stop, sampler) = rss_sampler();
        let t = Instant::now();
        let direct = futures::future::join_all(
            (0..services)
                .map(|_| async { get_hashed(TcpStream::connect(files.addr).await?).await }),
        )
        .await;
        let direct_s = t.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        direct_peak = direct_peak.max(sampler.await.unwrap_or(0));
        for r in &direct {
            let (n, h) = r.as_ref().expect("direct download");
            assert_eq!(
                (*n as usize, h.as_str()),
                (files.len, files.sha256.as_str())
            );
        }

        let (stop, sampler) = rss_sampler();
        let t = Instant::now();
        let relayed =
            futures::future::join_all(eps.iter().map(|ep| via_socks(ep.clone(), files.addr))).await;
        let socks_s = t.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        socks_peak = socks_peak.max(sampler.await.unwrap_or(0));
        let ok = relayed
            .iter()
            .filter(|r| matches!(r, Ok((n, h)) if *n as usize == files.len && *h == files.sha256))
            .count();
        assert_eq!(ok, services, "every checksum must match: {relayed:?}");
        let (d, s) = (total_mib / direct_s, total_mib / socks_s);
        println!(
            "round {round}: direct {d:8.1} MiB/s ({direct_s:.3} s)   socks5 {s:8.1} MiB/s ({socks_s:.3} s)   ratio {:.2}",
            s / d
        );
        direct_rates.push(d);
        socks_rates.push(s);
    }
    let stats: u64 = eps
        .iter()
        .enumerate()
        .filter_map(|(i, _)| launcher.stats(connexa_core::domain::NodeId(i as i64 + 1)))
        .map(|s| s.bytes_down)
        .sum();
    launcher.stop_all().await;
    let (d, s) = (median(direct_rates), median(socks_rates));
    println!(
        "services: {services}, download: {mib} MiB each, {total_mib} MiB per round, {rounds} rounds, all checksums verified"
    );
    println!("start {services} services at once: {start_ms:.1} ms");
    println!(
        "aggregate throughput (median): direct {d:.1} MiB/s, through SOCKS5 {s:.1} MiB/s, ratio {:.2}",
        s / d
    );
    println!(
        "relayed to clients (service counters): {:.1} MiB",
        stats as f64 / 1048576.0
    );
    println!(
        "RSS: at start {} KiB, with {services} idle services {} KiB (+{:.1} KiB/service), peak during direct {} KiB, peak during SOCKS5 {} KiB (+{} KiB vs direct)",
        rss_start,
        rss_services,
        (rss_services.saturating_sub(rss_start)) as f64 / services as f64,
        direct_peak,
        socks_peak,
        socks_peak as i64 - direct_peak as i64
    );
}
