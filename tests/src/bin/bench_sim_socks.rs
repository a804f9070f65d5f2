//! SOCKS5 services over the simulator: N services (default 100) started at once
//! by one `SocksLauncher` over `PptpOpener`, each through its own simulated
//! node (login, MS-CHAPv2, MPPE-128, IPCP, a user-space HTTP host at
//! 10.78.0.1:80 behind each node), then N downloads of `GET /bytes?B` at once,
//! each through its own service; every body's SHA-256 is checked against the
//! simulator's pattern. The baseline, in the same run against the same fleet,
//! is the same N downloads straight through N tunnels (`Tunnel::connect`, no
//! SOCKS). Prints start time, aggregate goodput, per-download min/median/max,
//! and resident memory.
//!
//! The fleet runs in a child process (`bench_sim_socks serve ...`, spawned by
//! the bench itself), so the memory figures are the client's alone. The SOCKS
//! phase runs first in a fresh process; the baseline runs after it (its RSS
//! figures may reuse memory the services freed).
//!
//! Usage (root: raw GRE):
//!   bench_sim_socks [--services N] [--mib M] [--rounds R] [--rate BYTES_PER_S] [--port P]
//!
//! `--rate` limits each node's HTTP bodies (the simulator's token bucket);
//! default: unlimited. Figures only: nothing here asserts a time.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use connexa_core::domain::{Secret, ServiceEndpoint};
use connexa_core::ports::ServiceLauncher;
use connexa_core::service::PptpOpener;
use connexa_core::sim::{Fleet, FleetSpec, TunnelSpec, raise_fd_limit};
use connexa_core::socks::{SocksConfig, SocksLauncher};
use connexa_core::tunnel::{GreSocket, Tunnel, TunnelConfig};
use connexa_tests::sim_socks::{get_bytes, get_via_socks, node_id, pattern_sha256, tunnel_host};
use connexa_tests::socks_kit::rss_kib;

const FIRST_IP: Ipv4Addr = Ipv4Addr::new(127, 46, 0, 1);

struct Args {
    services: usize,
    mib: f64,
    rounds: usize,
    rate: Option<u64>,
    port: u16,
}

fn usage() -> ! {
    eprintln!(
        "usage: bench_sim_socks [--services N] [--mib M] [--rounds R] [--rate BYTES_PER_S] [--port P]\n\
         \x20      bench_sim_socks serve --services N [--rate BYTES_PER_S] [--port P]   (spawned by the bench)"
    );
    std::process::exit(2)
}

fn parse(args: &[String]) -> Args {
    let mut a = Args {
        services: 100,
        mib: 2.0,
        rounds: 3,
        rate: None,
        port: 21751,
    };
    let mut it = args.iter();
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_else(|| usage());
        let bad = || -> ! {
            eprintln!("bad value for {k}: {v}");
            usage()
        };
        match k.as_str() {
            "--services" => a.services = v.parse().unwrap_or_else(|_| bad()),
            "--mib" => a.mib = v.parse().unwrap_or_else(|_| bad()),
            "--rounds" => a.rounds = v.parse().unwrap_or_else(|_| bad()),
            "--rate" => a.rate = Some(v.parse().unwrap_or_else(|_| bad())),
            "--port" => a.port = v.parse().unwrap_or_else(|_| bad()),
            _ => usage(),
        }
    }
    if a.services == 0 || a.rounds == 0 || a.mib <= 0.0 {
        usage()
    }
    a
}

/// The fleet's process: start it, print `ip:login:password` lines and `READY`,
/// serve until stdin closes (the bench exited or dropped it).
async fn serve(a: &Args) {
    let _ = raise_fd_limit();
    let fleet = Fleet::start(
        FleetSpec::new(a.services)
            .first_ip(FIRST_IP)
            .port(a.port)
            .tunnels(TunnelSpec {
                rate_limit: a.rate,
                ..TunnelSpec::default()
            }),
    )
    .await
    .expect("start the fleet");
    if let Some(why) = fleet.logins_unavailable() {
        eprintln!("the fleet serves no logins (run as root): {why}");
        std::process::exit(1);
    }
    let mut out = std::io::stdout().lock();
    fleet.write_node_list(&mut out).expect("node list");
    writeln!(out, "READY").expect("ready");
    out.flush().expect("flush");
    drop(out);
    let _ = tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
    })
    .await;
    fleet.close().await;
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

fn pid_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Per-download rates (MiB/s) and the round's aggregate, checked.
struct Round {
    wall: f64,
    each: Vec<f64>,
}

fn check(
    label: &str,
    got: Vec<std::io::Result<(u64, String, f64)>>,
    bytes: u64,
    want: &str,
) -> Vec<f64> {
    let mut rates = Vec::with_capacity(got.len());
    let mut bad = Vec::new();
    for (i, r) in got.into_iter().enumerate() {
        match r {
            Ok((n, sum, secs)) if n == bytes && sum == want => {
                rates.push(bytes as f64 / 1048576.0 / secs)
            }
            other => bad.push(format!("#{i}: {other:?}")),
        }
    }
    if !bad.is_empty() {
        eprintln!(
            "{label}: {} downloads failed or had a wrong checksum:",
            bad.len()
        );
        for b in bad.iter().take(10) {
            eprintln!("  {b}");
        }
        std::process::exit(1);
    }
    rates
}

fn mmm(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

fn summary(label: &str, rounds: &[Round], total_mib: f64) -> f64 {
    let mut agg: Vec<f64> = rounds.iter().map(|r| total_mib / r.wall).collect();
    agg.sort_by(f64::total_cmp);
    let best = agg[agg.len() / 2];
    let each: Vec<f64> = rounds.iter().flat_map(|r| r.each.clone()).collect();
    let (lo, med, hi) = mmm(each);
    println!(
        "{label}: aggregate goodput (median of {} rounds) {best:.1} MiB/s = {:.1} Mbit/s; per download min/median/max {lo:.2}/{med:.2}/{hi:.2} MiB/s",
        rounds.len(),
        best * 8.388608
    );
    best
}

async fn bench(a: &Args) {
    let _ = raise_fd_limit();
    let rss_start = rss_kib().0;
    let exe = std::env::current_exe().expect("own path");
    let mut cmd = Command::new(exe);
    cmd.args([
        "serve",
        "--services",
        &a.services.to_string(),
        "--port",
        &a.port.to_string(),
    ]);
    if let Some(r) = a.rate {
        cmd.args(["--rate", &r.to_string()]);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the fleet");
    let mut nodes = Vec::new();
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    loop {
        let Some(Ok(l)) = lines.next() else {
            eprintln!("the fleet process ended before it was ready");
            std::process::exit(1);
        };
        if l == "READY" {
            break;
        }
        let mut p = l.splitn(3, ':');
        let (Some(ip), Some(login), Some(pw)) = (p.next(), p.next(), p.next()) else {
            eprintln!("bad node line {l:?}");
            std::process::exit(1);
        };
        let ip: Ipv4Addr = ip.parse().expect("node ip");
        nodes.push((ip, login.to_string(), Secret::new(pw)));
    }
    let fleet_rss = pid_rss_kib(child.id());
    let bytes = (a.mib * 1048576.0) as u64;
    let total_mib = bytes as f64 * a.services as f64 / 1048576.0;
    let want = pattern_sha256(bytes);
    let rate = a
        .rate
        .map_or("unlimited".to_string(), |r| format!("{r} B/s per node"));
    println!(
        "bench_sim_socks: {} cores, {} services/nodes, {} bytes ({:.2} MiB) per download, {} rounds, node rate {rate}; fleet in child process (pid {}, RSS {fleet_rss} KiB idle)",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        a.services,
        bytes,
        bytes as f64 / 1048576.0,
        a.rounds,
        child.id()
    );

    // --- SOCKS5: N services, one per node, one launcher over PptpOpener.
    let gre = GreSocket::open().expect("raw GRE socket (run as root)");
    let launcher = SocksLauncher::new(
        Arc::new(PptpOpener::with_gre_socket(
            TunnelConfig::default(),
            Arc::clone(&gre),
        )),
        SocksConfig {
            port_min: 34000,
            port_max: 34999,
            ..SocksConfig::default()
        },
    );
    let store_nodes: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(i, (ip, login, pw))| {
            connexa_core::sim::SimNode {
                ip: *ip,
                port: a.port,
                login: login.clone(),
                password: pw.clone(),
                behaviour: connexa_core::sim::Behaviour::Healthy,
            }
            .node(node_id(i))
        })
        .collect();
    let rss_before = rss_kib().0;
    let t = Instant::now();
    let started =
        futures::future::join_all(store_nodes.iter().map(|n| launcher.start(n, None))).await;
    let start_s = t.elapsed().as_secs_f64();
    let failed: Vec<String> = started
        .iter()
        .filter_map(|r| r.as_ref().err().map(|e| e.to_string()))
        .collect();
    let eps: Vec<ServiceEndpoint> = started.into_iter().filter_map(Result::ok).collect();
    println!(
        "SOCKS5: {} of {} services started at once in {:.2} s ({} failed{})",
        eps.len(),
        a.services,
        start_s,
        failed.len(),
        failed
            .first()
            .map_or(String::new(), |e| format!(", first: {e}"))
    );
    if !failed.is_empty() {
        std::process::exit(1);
    }
    let rss_services = rss_kib().0;
    let mut socks_rounds = Vec::new();
    let mut socks_peak = rss_services;
    for round in 0..a.rounds {
        let (stop, sampler) = rss_sampler();
        let t = Instant::now();
        let got = futures::future::join_all(eps.iter().map(|ep| async {
            let t = Instant::now();
            get_via_socks(ep, bytes)
                .await
                .map(|(n, s)| (n, s, t.elapsed().as_secs_f64()))
        }))
        .await;
        let wall = t.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        socks_peak = socks_peak.max(sampler.await.unwrap_or(0));
        let each = check("SOCKS5", got, bytes, &want);
        println!(
            "  round {round}: {} downloads through {} services, all checksums right, {wall:.2} s, {:.1} MiB/s",
            each.len(),
            eps.len(),
            total_mib / wall
        );
        socks_rounds.push(Round { wall, each });
    }
    let fleet_rss_busy = pid_rss_kib(child.id());
    let t = Instant::now();
    launcher.stop_all().await;
    let stop_s = t.elapsed().as_secs_f64();
    let rss_after = rss_kib().0;

    // --- Baseline: the same downloads straight through N tunnels, no SOCKS.
    let tunnel_config = TunnelConfig::default();
    let t = Instant::now();
    let opened = futures::future::join_all(nodes.iter().map(|(ip, login, pw)| {
        Tunnel::open_addr(
            SocketAddr::from((*ip, a.port)),
            login,
            pw,
            &tunnel_config,
            Arc::clone(&gre),
        )
    }))
    .await;
    let open_s = t.elapsed().as_secs_f64();
    let tunnels: Vec<Tunnel> = opened
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| {
            eprintln!("baseline: a tunnel did not open: {e}");
            std::process::exit(1)
        });
    println!(
        "baseline (Tunnel::connect, no SOCKS): {} tunnels opened at once in {open_s:.2} s",
        tunnels.len()
    );
    let mut direct_rounds = Vec::new();
    let mut direct_peak = 0;
    for round in 0..a.rounds {
        let (stop, sampler) = rss_sampler();
        let t = Instant::now();
        let got = futures::future::join_all(tunnels.iter().map(|tun| async {
            let t = Instant::now();
            let mut s = tun.connect(tunnel_host()).await?;
            get_bytes(&mut s, bytes)
                .await
                .map(|(n, s)| (n, s, t.elapsed().as_secs_f64()))
        }))
        .await;
        let wall = t.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        direct_peak = direct_peak.max(sampler.await.unwrap_or(0));
        let each = check("baseline", got, bytes, &want);
        println!(
            "  round {round}: {} downloads through {} tunnels, all checksums right, {wall:.2} s, {:.1} MiB/s",
            each.len(),
            tunnels.len(),
            total_mib / wall
        );
        direct_rounds.push(Round { wall, each });
    }
    futures::future::join_all(tunnels.iter().map(|t| t.close())).await;
    drop(tunnels);
    drop(child.stdin.take());
    let _ = child.wait();

    println!();
    println!(
        "services: {} started at once in {start_s:.2} s ({:.1} ms/service wall, {:.1} services/s); stopped in {stop_s:.2} s",
        eps.len(),
        start_s * 1e3 / eps.len() as f64,
        eps.len() as f64 / start_s
    );
    let s = summary("through SOCKS5", &socks_rounds, total_mib);
    let d = summary("baseline, tunnels direct", &direct_rounds, total_mib);
    println!("ratio SOCKS5 / baseline: {:.2}", s / d);
    let n = eps.len() as f64;
    println!(
        "client RSS: at start {rss_start} KiB, before services {rss_before} KiB, with {} idle services {rss_services} KiB (+{:.0} KiB/service), peak during SOCKS5 downloads {socks_peak} KiB (+{:.0} KiB/service over before services), after stop_all {rss_after} KiB; peak during baseline {direct_peak} KiB",
        eps.len(),
        rss_services.saturating_sub(rss_before) as f64 / n,
        socks_peak.saturating_sub(rss_before) as f64 / n,
    );
    println!(
        "fleet process RSS (server side, not in the figures above): idle {fleet_rss} KiB, after the SOCKS5 rounds {fleet_rss_busy} KiB"
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "serve") {
        serve(&parse(&args[1..])).await;
    } else {
        bench(&parse(&args)).await;
    }
}
