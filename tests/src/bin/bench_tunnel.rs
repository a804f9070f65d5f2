//! Tunnel benchmark on loopback. Prints figures for docs/benchmarks.md.
//!
//! ```text
//! # as root (raw GRE socket):
//! cargo build --release -p connexa-tests --bin bench_tunnel && target/release/bench_tunnel [--mb 100] [--tunnels 200]
//! ```
//!
//! The server is the in-process loopback PPTP server of
//! `connexa_tests::loopback_pptp` (SessionServer + a smoltcp host), so both
//! ends run in this process and the CPU figures include the server's MPPE and
//! TCP/IP work as well as the client's.
//!
//! 1. Throughput: `GET /bytes?N` (N = --mb MB) through one tunnel, one stream,
//!    against the same download over plain loopback TCP in the same process
//!    (the baseline): Mbit/s, ratio, and CPU seconds per Mbit transferred.
//! 2. Memory: --tunnels tunnels up at once (login, CCP/MPPE, IPCP, smoltcp
//!    interface each; no host behind the server side): resident memory growth
//!    per tunnel (client side plus the small server-side session).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use connexa_core::domain::Secret;
use connexa_core::speed::http::{self, HttpUrl};
use connexa_core::tunnel::{GreSocket, Tunnel, TunnelConfig};
use connexa_tests::loopback_pptp::{HOST, Log, Mode, listen, pattern};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU seconds (user + system) of this process so far.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = after
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // Fields 14 and 15 of stat (utime, stime) are the 12th and 13th after ')'.
    let ticks = f.get(10).copied().unwrap_or(0) + f.get(11).copied().unwrap_or(0);
    ticks as f64 / 100.0
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

async fn plain_server(n: u64) -> SocketAddr {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut req = [0u8; 1024];
        let _ = s.read(&mut req).await;
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n");
        s.write_all(head.as_bytes()).await.unwrap();
        let mut i = 0u64;
        while i < n {
            let len = (n - i).min(16 * 1024);
            let chunk: Vec<u8> = (i..i + len).map(pattern).collect();
            s.write_all(&chunk).await.unwrap();
            i += len;
        }
    });
    addr
}

async fn fetch<S>(s: &mut S, url: &HttpUrl) -> (u64, Duration, f64)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (t0, c0) = (Instant::now(), cpu_secs());
    let (_, n) = http::get(s, url, |_| {}).await.expect("download");
    (n, t0.elapsed(), cpu_secs() - c0)
}

fn main() {
    let mb = arg("--mb", 100);
    let tunnels = arg("--tunnels", 200) as usize;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let gre = GreSocket::open().expect("raw GRE socket: run as root");
        let log: Log = Arc::default();
        let n = mb * 1_000_000;
        let url = HttpUrl::parse(&format!("http://10.78.0.1/bytes?{n}")).unwrap();

        // 1. Throughput: plain loopback TCP (baseline), then through a tunnel.
        let addr = plain_server(n).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let (bn, bt, bc) = fetch(&mut s, &url).await;
        let base_mbps = bn as f64 * 8.0 / bt.as_secs_f64() / 1e6;

        let server = listen(Arc::clone(&gre), Mode::Full, Arc::clone(&log)).await;
        let t = Tunnel::open_addr(server, "alice", &Secret::new("s3cret"), &TunnelConfig::default(), Arc::clone(&gre))
            .await
            .expect("tunnel");
        let mut s = t.connect(SocketAddr::from((HOST, 80))).await.unwrap();
        let (tn, tt, tc) = fetch(&mut s, &url).await;
        drop(s);
        t.close().await;
        let tun_mbps = tn as f64 * 8.0 / tt.as_secs_f64() / 1e6;
        println!("throughput, one stream, {mb} MB (both ends in this process):");
        println!(
            "  plain loopback TCP (baseline): {base_mbps:10.1} Mbit/s  CPU {:.4} s per Mbit",
            bc / (bn as f64 * 8.0 / 1e6)
        );
        println!(
            "  through an MPPE tunnel       : {tun_mbps:10.1} Mbit/s  CPU {:.4} s per Mbit ({:.3} ms per Mbit)",
            tc / (tn as f64 * 8.0 / 1e6),
            tc / (tn as f64 * 8.0 / 1e6) * 1000.0
        );
        println!("  ratio tunnel / plain         : {:10.3}", tun_mbps / base_mbps);

        // 2. Memory: many tunnels up at once.
        let bare = listen(Arc::clone(&gre), Mode::Bare, Arc::clone(&log)).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = rss_kib();
        let t0 = Instant::now();
        let mut open = Vec::new();
        let mut failed = 0;
        for batch in 0..tunnels.div_ceil(20) {
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..20.min(tunnels - batch * 20) {
                let gre = Arc::clone(&gre);
                set.spawn(async move {
                    Tunnel::open_addr(bare, "alice", &Secret::new("s3cret"), &TunnelConfig::default(), gre).await
                });
            }
            while let Some(r) = set.join_next().await {
                match r {
                    Ok(Ok(t)) => open.push(t),
                    _ => failed += 1,
                }
            }
        }
        let took = t0.elapsed();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = rss_kib();
        let alive = open.iter().filter(|t| t.is_alive()).count();
        println!("memory, {tunnels} tunnels at once:");
        println!(
            "  up {alive} (failed {failed}) in {took:.2?}; RSS {before} KiB -> {after} KiB: {:.1} KiB per tunnel (client + server-side session)",
            (after.saturating_sub(before)) as f64 / alive.max(1) as f64
        );
        let t1 = Instant::now();
        for t in &open {
            t.close().await;
        }
        println!("  closed politely in {:.2?}", t1.elapsed());
    });
}
