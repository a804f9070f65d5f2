//! Verdicts and speed over lossy, distant links. Prints figures for
//! docs/benchmarks.md ("Loss and latency"); asserts nothing about time.
//!
//! ```text
//! # as root (raw GRE sockets):
//! cargo build --release -p connexa-tests --bin bench_loss
//! target/release/bench_loss [--healthy 1000] [--reject 100] [--speed-nodes 40]
//! # the lab part (tests/lab/lab.sh up; eval "$(tests/lab/lab.sh env)"):
//! target/release/bench_loss --lab [--loss 5] [--delay 100] [--rounds 2]
//! ```
//!
//! **Simulator** (default): for each link — 0, 2 and 5 % loss each way times
//! 0, 150 and 300 ms of round trip (the simulator's `lossy:P+latency:MS`) — a
//! fresh fleet of `--healthy` healthy nodes and `--reject` nodes whose
//! password differs from the list's, tested by a light job and by an auth
//! job through the engine with every setting at its default
//! (`Config::default()`), each over a fresh SQLite store. Then a speed job over
//! `--speed-nodes` healthy nodes and a tenth as many rejecting ones, tunnels
//! limited to 4 Mbit/s each, the default 1 Mbit/s threshold. Per depth:
//!
//! * false negatives: healthy nodes that did not reach the depth's status
//!   (`ping_light`, `ping_ok`, `speed_ok`);
//! * false positives: rejecting nodes that reached `ping_ok` or better (none
//!   may, at any loss);
//! * for speed, the median download figure of the healthy nodes.
//!
//! **Lab** (`--lab`): `lab.sh netem LOSS DELAY` in the server VM, then, in
//! turn, `--rounds` times, each with the speed test's number of streams,
//! duration and warm-up, counted the same way (body octets inside the window):
//!
//! * kernel TCP downloading the lab's file straight from the server (no
//!   tunnel);
//! * the kernel's PPTP client (pppd + pptp-linux + ppp_mppe in the lab's
//!   client VM, `lab.sh kernel-speed`) downloading it through a tunnel to the
//!   same server over the same link;
//! * Connexa's speed test of the lab node (user-space PPTP, MPPE and TCP).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use connexa_core::config::{Config, TestConfig};
use connexa_core::domain::{NodeFilter, Page, Status};
use connexa_core::engine::JobOptions;
use connexa_core::ports::{JobKind, NodeStore, SpeedTester};
use connexa_core::runtime::NetworkPorts;
use connexa_core::sim::{Behaviour, Fleet, FleetSpec, Impairment, TUNNEL_HOST, TunnelSpec};
use connexa_core::speed::{HttpSpeedTester, SpeedConfig};
use connexa_core::tunnel::GreSocket;
use connexa_tests::fleet_store::store_with_fleet;
use connexa_tests::lab::Lab;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

/// What a job left: (healthy nodes at or above `want`, rejecting nodes at
/// `ping_ok` or better, download figures of the healthy nodes).
struct Tally {
    healthy: usize,
    healthy_missed: usize,
    reject: usize,
    reject_passed: usize,
    mbps: Vec<f64>,
}

async fn run(block: u8, link: Impairment, healthy: usize, reject: usize, kind: JobKind) -> Tally {
    let count = healthy + reject;
    let mut spec = FleetSpec::new(count)
        .first_ip(Ipv4Addr::new(127, block, 0, 1))
        .mix(vec![
            (Behaviour::Healthy.impaired(link), healthy as u32),
            (Behaviour::AuthReject.impaired(link), reject as u32),
        ]);
    if kind == JobKind::Speed {
        spec = spec.tunnels(TunnelSpec {
            rate_limit: Some(4_000_000 / 8),
            ..TunnelSpec::default()
        });
    }
    let fleet = Fleet::start(spec).await.expect("simulated fleet starts");
    assert!(
        fleet.serves_logins(),
        "run as root: {:?}",
        fleet.logins_unavailable()
    );
    let dir = std::env::temp_dir().join(format!("bench_loss-{}-{block}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = store_with_fleet(&fleet, &dir.join("b.db")).await;
    let mut config = Config::default();
    config.test.test_url = format!("http://{TUNNEL_HOST}/bytes?1000000000");
    let engine = NetworkPorts::from_config(&config).engine(store.clone(), &config);
    let job = engine
        .start_job(kind, NodeFilter::all(), JobOptions::default())
        .await
        .unwrap();
    engine.wait(job).await.unwrap();
    let page = Page {
        limit: 10_000,
        ..Page::default()
    };
    let nodes = store.list(&NodeFilter::all(), page).await.unwrap().nodes;
    let by_ip: HashMap<IpAddr, _> = nodes.iter().map(|n| (n.ip, n)).collect();
    let want = match kind {
        JobKind::Light => Status::PingLight,
        JobKind::Auth => Status::PingOk,
        _ => Status::SpeedOk,
    };
    let mut t = Tally {
        healthy: 0,
        healthy_missed: 0,
        reject: 0,
        reject_passed: 0,
        mbps: Vec::new(),
    };
    for sim in fleet.nodes() {
        let node = by_ip[&IpAddr::V4(sim.ip)];
        let level = node.status.level();
        if *sim.behaviour.base() == Behaviour::Healthy {
            t.healthy += 1;
            if level < want.level() {
                t.healthy_missed += 1;
            }
            if let Some(m) = node.speed_down_mbps {
                t.mbps.push(m);
            }
        } else {
            t.reject += 1;
            if level >= Status::PingOk.level() {
                t.reject_passed += 1;
            }
        }
    }
    fleet.close().await;
    let _ = std::fs::remove_dir_all(&dir);
    t
}

fn pct(part: usize, whole: usize) -> String {
    if whole == 0 {
        return "-".into();
    }
    format!(
        "{:.1} % ({part}/{whole})",
        part as f64 * 100.0 / whole as f64
    )
}

fn median(v: &mut [f64]) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

async fn sim() {
    let healthy = arg("--healthy", 1000) as usize;
    let reject = arg("--reject", 100) as usize;
    let speed_nodes = arg("--speed-nodes", 40) as usize;
    println!(
        "| loss | RTT | light FN | auth FN | auth FP | speed FN | speed FP | speed median | time |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut block = 70u8;
    for loss in [0.0, 2.0, 5.0] {
        for rtt in [0u64, 150, 300] {
            let link = Impairment::lossy(loss).with_latency(Duration::from_millis(rtt));
            let t0 = Instant::now();
            let light = run(block, link, healthy, reject, JobKind::Light).await;
            let auth = run(block + 1, link, healthy, reject, JobKind::Auth).await;
            let mut speed = run(
                block + 2,
                link,
                speed_nodes,
                speed_nodes.div_ceil(10),
                JobKind::Speed,
            )
            .await;
            block += 3;
            println!(
                "| {loss} % | {rtt} ms | {} | {} | {} | {} | {} | {} | {:.0} s |",
                pct(light.healthy_missed, light.healthy),
                pct(auth.healthy_missed, auth.healthy),
                pct(auth.reject_passed, auth.reject),
                pct(speed.healthy_missed, speed.healthy),
                pct(speed.reject_passed, speed.reject),
                median(&mut speed.mbps).map_or("-".into(), |m| format!("{m:.2} Mbit/s")),
                t0.elapsed().as_secs_f64()
            );
        }
    }
}

/// Kernel TCP downloading `url`'s path from `server` directly, `streams`
/// connections re-opened as they finish; Mbit/s of body octets inside the
/// window after the warm-up.
async fn kernel_tcp_mbps(server: Ipv4Addr, url: &str, cfg: &SpeedConfig) -> f64 {
    let bytes = Arc::new(AtomicU64::new(0));
    let addr = SocketAddr::from((server, 80));
    let path = url
        .splitn(4, '/')
        .nth(3)
        .map(|p| format!("/{p}"))
        .unwrap_or_default();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..cfg.streams {
        let bytes = Arc::clone(&bytes);
        let path = path.clone();
        set.spawn(async move {
            loop {
                let Ok(mut s) = TcpStream::connect(addr).await else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                let req = format!("GET {path} HTTP/1.0\r\nHost: lab\r\n\r\n");
                if s.write_all(req.as_bytes()).await.is_err() {
                    continue;
                }
                let mut buf = vec![0u8; 64 * 1024];
                let mut head = Some(Vec::new());
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    match head.as_mut() {
                        Some(seen) => {
                            seen.extend_from_slice(&buf[..n]);
                            if let Some(i) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                                bytes.fetch_add((seen.len() - i - 4) as u64, Ordering::Relaxed);
                                head = None;
                            }
                        }
                        None => {
                            bytes.fetch_add(n as u64, Ordering::Relaxed);
                        }
                    }
                }
            }
        });
    }
    tokio::time::sleep(cfg.warmup).await;
    let (t0, b0) = (Instant::now(), bytes.load(Ordering::Relaxed));
    tokio::time::sleep(cfg.duration.saturating_sub(cfg.warmup)).await;
    let moved = bytes.load(Ordering::Relaxed) - b0;
    let secs = t0.elapsed().as_secs_f64();
    set.abort_all();
    moved as f64 * 8.0 / secs / 1e6
}

/// The kernel's PPTP client in the lab's client VM (`lab.sh kernel-speed`):
/// its Mbit/s over the same window.
fn kernel_pptp_mbps(lab: &Lab, cfg: &SpeedConfig) -> f64 {
    let out = lab
        .script(&[
            "kernel-speed",
            &cfg.streams.to_string(),
            &cfg.duration.as_secs().to_string(),
            &cfg.warmup.as_secs().to_string(),
        ])
        .unwrap_or_default();
    out.split_whitespace()
        .find_map(|w| w.strip_prefix("mbps="))
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("lab.sh kernel-speed gave no figure: {out}"))
}

fn lab() {
    let lab = Lab::require();
    let loss = arg("--loss", 5).to_string();
    let delay = arg("--delay", 100).to_string();
    let rounds = arg("--rounds", 2);
    let out = lab
        .script(&["netem", &loss, &delay, "0"])
        .expect("lab.sh netem");
    eprintln!("{}", out.trim());
    lab.enter_netns().expect("enter the lab's namespace (root)");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let cfg = SpeedConfig {
        download_urls: vec![lab.file_url.clone()],
        ..SpeedConfig::from_test_config(&TestConfig::default())
    };
    let (kernel, pptp, ours) = rt.block_on(async {
        let gre = GreSocket::open().expect("raw GRE socket (root)");
        let tester = HttpSpeedTester::with_gre_socket(cfg.clone(), Arc::clone(&gre));
        let (mut kernel, mut pptp, mut ours) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            kernel.push(kernel_tcp_mbps(lab.server, &lab.file_url, &cfg).await);
            pptp.push(kernel_pptp_mbps(&lab, &cfg));
            let out = tester
                .measure(&lab.node())
                .await
                .expect("the speed test runs");
            if out.measurements.speed_down_mbps.is_none() {
                eprintln!("Connexa: no figure: {:?} {:?}", out.reached, out.failure);
            }
            ours.push(out.measurements.speed_down_mbps.unwrap_or(0.0));
        }
        (kernel, pptp, ours)
    });
    let _ = lab.script(&["netem", "off"]);
    let sum = |v: &[f64]| v.iter().sum::<f64>();
    let (k, p, o) = (sum(&kernel), sum(&pptp), sum(&ours));
    println!(
        "lab, {loss} % loss each way, {delay} ms RTT, {} streams, {:?} window after {:?} warm-up:",
        cfg.streams, cfg.duration, cfg.warmup
    );
    println!("  kernel TCP, direct (no tunnel):        {kernel:.2?} Mbit/s");
    println!("  kernel PPTP client (pppd, pptp-linux): {pptp:.2?} Mbit/s");
    println!("  Connexa speed test (user-space TCP):   {ours:.2?} Mbit/s");
    println!("  ratio Connexa / kernel PPTP client:    {:.2}", o / p);
    println!("  ratio Connexa / kernel TCP direct:     {:.2}", o / k);
}

fn main() {
    if flag("--lab") {
        return lab();
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(sim());
}
