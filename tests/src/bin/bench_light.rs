//! Light-test benchmark. Prints figures for docs/benchmarks.md.
//!
//! ```text
//! tests/bench_light.sh        # installs nmap + pptpd if missing, then runs:
//! cargo run --release -p connexa-tests --bin bench_light -- [--nodes N] [--concurrency C] [--nmap-nodes M] [--no-icmp]
//! ```
//!
//! 1. A simulated fleet of N (10,000) loopback nodes, 80 % healthy, 10 % refused,
//!    10 % silent; every node light-tested with a 1 s handshake timeout and the
//!    default 2 attempts. Results are NOT persisted (the store is another issue):
//!    this measures probe throughput only.
//! 2. `nmap -n -Pn -sT -p PORT --script pptp-version` on M (500) healthy nodes of the
//!    same fleet, timed, against our prober on the same M nodes: per-node throughput ratio.
//! 3. Debian's real `pptpd` on 127.77.0.2:1723 (started and stopped here): handshakes
//!    per second it sustains at several client concurrencies.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use connexa_core::domain::{Failure, Level, Outcome};
use connexa_core::probe::{IcmpConfig, LightProber, ProbeConfig};
use connexa_core::sim::{Behaviour, Fleet, FleetSpec, SimNode};
use futures::StreamExt;

struct Args {
    nodes: usize,
    concurrency: usize,
    nmap_nodes: usize,
    icmp: bool,
    port: u16,
}

fn parse_args() -> Args {
    let mut a = Args {
        nodes: 10_000,
        concurrency: 2_000,
        nmap_nodes: 500,
        icmp: true,
        port: 1723,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut num = |name: &str| -> usize {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} needs a number"))
        };
        match flag.as_str() {
            "--nodes" => a.nodes = num("--nodes"),
            "--concurrency" => a.concurrency = num("--concurrency"),
            "--nmap-nodes" => a.nmap_nodes = num("--nmap-nodes"),
            "--port" => a.port = u16::try_from(num("--port")).expect("port"),
            "--no-icmp" => a.icmp = false,
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn kind(out: &Outcome) -> String {
    match (&out.reached, &out.failure) {
        (Level::Light, None) => "light".into(),
        (_, Some(f)) => match f {
            Failure::Refused => "refused".into(),
            Failure::HandshakeTimeout => "handshake_timeout".into(),
            Failure::ConnectTimeout => "connect_timeout".into(),
            other => format!("{other}"),
        },
        (l, None) => format!("{l:?}"),
    }
}

fn expected(b: &Behaviour) -> &'static str {
    match b {
        Behaviour::Healthy => "light",
        Behaviour::Refused => "refused",
        Behaviour::Silent => "handshake_timeout",
        _ => "?",
    }
}

async fn probe_all(
    prober: Arc<LightProber>,
    addrs: Vec<SocketAddr>,
    concurrency: usize,
) -> (Vec<Outcome>, Duration) {
    let t = Instant::now();
    let outs: Vec<(usize, Outcome)> = futures::stream::iter(addrs.into_iter().enumerate())
        .map(|(i, a)| {
            let p = Arc::clone(&prober);
            async move {
                let out = p.probe_addr(a).await.unwrap_or_else(|e| {
                    Outcome::failed(
                        Level::None,
                        Failure::Other {
                            detail: format!("LOCAL: {e}"),
                        },
                    )
                });
                (i, out)
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let elapsed = t.elapsed();
    let mut outs = outs;
    outs.sort_by_key(|(i, _)| *i);
    (outs.into_iter().map(|(_, o)| o).collect(), elapsed)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn prober_config(icmp: bool, attempts: u32) -> ProbeConfig {
    ProbeConfig {
        connect_timeout: Duration::from_secs(1),
        handshake_timeout: Duration::from_secs(1),
        attempts,
        icmp: icmp.then(IcmpConfig::default),
        ..ProbeConfig::default()
    }
}

async fn fleet_bench(args: &Args, fleet: &Fleet) {
    let nodes = fleet.nodes();
    println!(
        "\n== 1. simulated fleet: {} nodes (80% healthy, 10% refused, 10% silent), handshake timeout 1 s, \
         attempts 2, concurrency {}, ICMP {} ==",
        nodes.len(),
        args.concurrency,
        if args.icmp {
            "on (3 echoes/node)"
        } else {
            "off"
        }
    );
    let prober = Arc::new(LightProber::new(prober_config(args.icmp, 2)));
    let addrs = nodes.iter().map(SimNode::addr).collect();
    let (outs, elapsed) = probe_all(prober, addrs, args.concurrency).await;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut wrong = 0;
    let mut hs: Vec<f64> = Vec::new();
    for (n, o) in nodes.iter().zip(&outs) {
        let k = kind(o);
        if k != expected(&n.behaviour) {
            wrong += 1;
            if wrong <= 5 {
                eprintln!("  unexpected: {} {:?} -> {k}", n.ip, n.behaviour);
            }
        }
        if let Some(h) = o.measurements.handshake_ms {
            hs.push(h);
        }
        *counts.entry(k).or_default() += 1;
    }
    hs.sort_by(f64::total_cmp);
    println!("results: {counts:?}");
    println!("wrong verdicts: {wrong}");
    println!(
        "handshake ms: p50 {:.2}  p99 {:.2}  max {:.2}",
        percentile(&hs, 0.5),
        percentile(&hs, 0.99),
        hs.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "FLEET: {} nodes in {:.2} s = {:.0} nodes/s (no persistence)",
        nodes.len(),
        elapsed.as_secs_f64(),
        nodes.len() as f64 / elapsed.as_secs_f64()
    );
}

/// The same fleet, end to end with persistence: nodes inserted into a fresh SQLite
/// store, probed through the `Prober` port, every result group-committed with
/// `apply_many` as it finishes. The time is until the last result is committed.
async fn fleet_bench_committed(args: &Args, fleet: &Fleet) {
    use connexa_core::domain::{Event, NewNode, NodeFilter, Page, Status};
    use connexa_core::ports::{
        ApplyContext, ApplyRequest, InsertOutcome, NodeStore, ProbeDepth, Prober,
    };
    use connexa_core::store::SqlStore;

    let dir = std::env::temp_dir().join(format!("connexa-bench-light-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let url = format!("sqlite://{}?mode=rwc", dir.join("fleet.db").display());
    let store = Arc::new(SqlStore::connect(&url).await.expect("open sqlite"));
    let new: Vec<NewNode> = fleet
        .nodes()
        .iter()
        .map(|n| {
            NewNode::new(
                &n.ip.to_string(),
                u64::from(n.port),
                &n.login,
                n.password.expose(),
            )
            .expect("node")
        })
        .collect();
    let ids: Vec<_> = store
        .insert(new)
        .await
        .expect("insert")
        .into_iter()
        .map(|o| match o {
            InsertOutcome::Inserted(id) => id,
            other => panic!("{other:?}"),
        })
        .collect();
    let all = store
        .list(
            &NodeFilter::all(),
            Page {
                limit: Page::MAX_LIMIT,
                ..Page::default()
            },
        )
        .await
        .expect("list")
        .nodes;
    assert_eq!(all.len(), ids.len());
    let prober: Arc<dyn Prober> = Arc::new(LightProber::new(prober_config(args.icmp, 2)));
    let (tx, mut rx) = tokio::sync::mpsc::channel::<ApplyRequest>(4096);
    let committer = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let mut committed = 0usize;
            let mut batch = Vec::with_capacity(512);
            while rx.recv_many(&mut batch, 512).await > 0 {
                committed += batch.len();
                store
                    .apply_many(std::mem::take(&mut batch))
                    .await
                    .expect("commit");
            }
            committed
        })
    };
    let t = Instant::now();
    futures::stream::iter(all)
        .map(|node| {
            let p = Arc::clone(&prober);
            let tx = tx.clone();
            async move {
                let out = p.probe(&node, ProbeDepth::Light).await.expect("probe");
                let req = ApplyRequest {
                    node: node.id,
                    event: Event::Tested(out),
                    ctx: ApplyContext::now(),
                };
                tx.send(req).await.expect("committer alive");
            }
        })
        .buffer_unordered(args.concurrency)
        .collect::<()>()
        .await;
    drop(tx);
    let committed = committer.await.expect("committer");
    let elapsed = t.elapsed();
    let counts = store.counts().await.expect("counts");
    let light = counts
        .iter()
        .find(|(s, _)| *s == Status::PingLight)
        .map_or(0, |c| c.1);
    println!("committed: {committed} results; stored statuses: {counts:?}");
    println!(
        "FLEET+SQLITE: {} nodes probed and committed in {:.2} s = {:.0} nodes/s ({} ping_light)",
        committed,
        elapsed.as_secs_f64(),
        committed as f64 / elapsed.as_secs_f64(),
        light
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn which(bin: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {bin} >/dev/null"))
        .status()
        .is_ok_and(|s| s.success())
}

async fn nmap_bench(args: &Args, fleet: &Fleet) {
    let subset: Vec<&SimNode> = fleet
        .nodes()
        .iter()
        .filter(|n| n.behaviour == Behaviour::Healthy)
        .take(args.nmap_nodes)
        .collect();
    println!(
        "\n== 2. {} healthy nodes: nmap -n -Pn -sT -p {} --script pptp-version vs connexa ==",
        subset.len(),
        args.port
    );
    if !which("nmap") {
        println!(
            "SKIPPED: nmap is not installed (apt-get install nmap, or run tests/bench_light.sh)"
        );
        return;
    }
    let list = std::env::temp_dir().join(format!("connexa-bench-nmap-{}.txt", std::process::id()));
    let ips: String = subset.iter().map(|n| format!("{}\n", n.ip)).collect();
    std::fs::write(&list, ips).expect("write nmap target list");
    let port = args.port;
    let list2 = list.clone();
    let t = Instant::now();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("nmap")
            .args([
                "-n",
                "-Pn",
                "-sT",
                "-p",
                &port.to_string(),
                "--script",
                "pptp-version",
            ])
            .args(["-oX", "-", "-iL"])
            .arg(&list2)
            .stderr(Stdio::inherit())
            .output()
    })
    .await
    .expect("join")
    .expect("run nmap");
    let nmap_s = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&list);
    let text = String::from_utf8_lossy(&output.stdout);
    // -oX shows what the script derived (it reads the reply one byte off).
    let identified = text
        .lines()
        .filter(|l| l.contains("<service name=\"pptp\""))
        .count();
    let sample = text
        .lines()
        .find(|l| l.contains("<service name=\"pptp\""))
        .unwrap_or("(none)")
        .trim()
        .to_string();

    println!(
        "nmap:    {} nodes in {:.2} s = {:.1} nodes/s; identified as pptp: {identified}; nmap's view of one: {sample}",
        subset.len(),
        nmap_s,
        subset.len() as f64 / nmap_s
    );
    // nmap's fixed cost (start-up, script engine), for reading the ratio.
    let one = subset.first().map(|n| n.ip.to_string()).unwrap_or_default();
    let t = Instant::now();
    let _ = tokio::task::spawn_blocking(move || {
        Command::new("nmap")
            .args([
                "-n",
                "-Pn",
                "-sT",
                "-p",
                &port.to_string(),
                "--script",
                "pptp-version",
                &one,
            ])
            .stdout(Stdio::null())
            .status()
    })
    .await;
    let one_s = t.elapsed().as_secs_f64();
    println!(
        "nmap on 1 node takes {:.2} s (fixed cost); its marginal cost per extra node here: {:.2} ms",
        one_s,
        (nmap_s - one_s).max(0.0) * 1000.0 / (subset.len().max(2) - 1) as f64
    );
    for icmp in [false, true] {
        let prober = Arc::new(LightProber::new(prober_config(icmp, 2)));
        let addrs = subset.iter().map(|n| n.addr()).collect();
        let (outs, ours) = probe_all(prober, addrs, args.concurrency).await;
        let ours_s = ours.as_secs_f64();
        let ok = outs.iter().filter(|o| o.reached == Level::Light).count();
        let id = outs
            .iter()
            .find_map(|o| o.measurements.pptp.clone())
            .map(|i| {
                format!(
                    "hostname {:?} vendor {:?} firmware {}",
                    i.hostname, i.vendor, i.firmware
                )
            })
            .unwrap_or_default();
        let mode = if icmp { "with ICMP" } else { "no ICMP" };
        println!(
            "connexa ({mode}): {} nodes in {:.3} s = {:.0} nodes/s; light: {ok}; {id}",
            subset.len(),
            ours_s,
            subset.len() as f64 / ours_s
        );
        println!(
            "RATIO ({mode}) same {} nodes: connexa per-node throughput = {:.1}x nmap's",
            subset.len(),
            nmap_s / ours_s
        );
    }
}

struct Pptpd(Child, std::path::PathBuf);

impl Drop for Pptpd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

fn start_pptpd(ip: Ipv4Addr) -> Option<Pptpd> {
    if !std::path::Path::new("/usr/sbin/pptpd").exists() {
        println!("SKIPPED: /usr/sbin/pptpd is not installed (apt-get install pptpd)");
        return None;
    }
    let dir = std::env::temp_dir().join(format!("connexa-bench-pptpd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    std::fs::write(
        dir.join("pptpd.conf"),
        format!("option {}\n", dir.join("options").display()),
    )
    .ok()?;
    std::fs::write(
        dir.join("options"),
        "name pptpd\nrefuse-pap\nrefuse-chap\nrefuse-mschap\nrequire-mschap-v2\nnodefaultroute\nnologfd\n",
    )
    .ok()?;
    let child = Command::new("/usr/sbin/pptpd")
        .arg("-f")
        .arg("-c")
        .arg(dir.join("pptpd.conf"))
        .arg("-o")
        .arg(dir.join("options"))
        .arg("-l")
        .arg(ip.to_string())
        .arg("-p")
        .arg(dir.join("pptpd.pid"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    Some(Pptpd(child, dir))
}

async fn pptpd_bench() {
    println!("\n== 3. Debian pptpd on 127.77.0.2:1723 (forks a process per connection) ==");
    let ip = Ipv4Addr::new(127, 77, 0, 2);
    let Some(_pptpd) = start_pptpd(ip) else {
        return;
    };
    let addr = SocketAddr::new(IpAddr::V4(ip), 1723);
    let mut up = false;
    for _ in 0..50 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !up {
        println!("SKIPPED: pptpd did not start listening");
        return;
    }
    let prober = Arc::new(LightProber::new(ProbeConfig {
        icmp: None,
        attempts: 1,
        ..prober_config(false, 1)
    }));
    for concurrency in [1usize, 4, 16] {
        let run = Duration::from_secs(3);
        let t = Instant::now();
        let mut ok = 0usize;
        let mut failed: BTreeMap<String, usize> = BTreeMap::new();
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..concurrency {
            let p = Arc::clone(&prober);
            set.spawn(async move {
                let mut ok = 0usize;
                let mut failed: Vec<String> = Vec::new();
                while t.elapsed() < run {
                    match p.probe_addr(addr).await {
                        Ok(o) if o.reached == Level::Light => ok += 1,
                        Ok(o) => failed.push(kind(&o)),
                        Err(e) => failed.push(e.to_string()),
                    }
                }
                (ok, failed)
            });
        }
        while let Some(Ok((o, f))) = set.join_next().await {
            ok += o;
            for k in f {
                *failed.entry(k).or_default() += 1;
            }
        }
        let secs = t.elapsed().as_secs_f64();
        println!(
            "PPTPD concurrency {concurrency:>2}: {ok} handshakes in {secs:.1} s = {:.0} handshakes/s; failures: {failed:?}",
            ok as f64 / secs
        );
    }
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let limit = connexa_core::sim::raise_fd_limit().unwrap_or(0);
    println!(
        "bench_light: {} cores, RLIMIT_NOFILE soft limit {limit}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let t = Instant::now();
    let fleet = Fleet::start(FleetSpec::new(args.nodes).port(args.port).mix(vec![
        (Behaviour::Healthy, 80),
        (Behaviour::Refused, 10),
        (Behaviour::Silent, 10),
    ]))
    .await
    .expect("start the simulated fleet");
    println!(
        "fleet of {} nodes listening from 127.1.0.1:{} in {:.2} s",
        args.nodes,
        args.port,
        t.elapsed().as_secs_f64()
    );
    fleet_bench(&args, &fleet).await;
    fleet_bench_committed(&args, &fleet).await;
    nmap_bench(&args, &fleet).await;
    drop(fleet);
    pptpd_bench().await;
}
