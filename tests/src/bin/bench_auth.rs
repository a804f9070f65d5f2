//! Auth-test benchmark: logins/s and memory per concurrent login against a
//! simulated fleet, as ratios against the light test of the same fleet.
//! Prints figures for docs/benchmarks.md; asserts nothing about time.
//!
//! ```text
//! tests/bench_auth.sh [--nodes N] [--concurrency C]     # runs all of this:
//! bench_auth serve --nodes N --list FILE                # the fleet, in its own process
//! bench_auth probe --list FILE --depth light|auth --mode direct|engine [--concurrency C]
//! bench_auth summary RESULTS_FILE                       # the ratios
//! ```
//!
//! The fleet (90 % healthy nodes, 10 % with a password different from the list's:
//! `auth_reject`) runs in a separate process, so the prober's memory is measured
//! alone. Each measurement is a fresh `probe` process, so no phase reuses memory
//! a previous one freed:
//!
//! * `direct`: every node probed through the `Prober` port with C in flight, no
//!   persistence;
//! * `engine`: a job through the engine with a SQLite store, every result
//!   group-committed before it counts (the time is until the job is done).
//!
//! Memory per concurrent operation, two ways, each divided by the peak number
//! of operations in flight:
//!
//! * heap: peak live heap bytes during the run − live bytes just before it,
//!   counted exactly by a counting global allocator in this binary (two relaxed
//!   atomics per allocation, in the baseline as in the auth run);
//! * RSS: the kernel's peak RSS (`VmHWM`, reset just before the run through
//!   `/proc/self/clear_refs`) − RSS just before it. Coarser: pages, and memory
//!   the allocator kept from the set-up is reused without showing.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use connexa_core::domain::{Failure, Level, Node, NodeFilter, Outcome, Page, Status};
use connexa_core::engine::{Engine, EngineConfig, JobOptions, NotAvailable};
use connexa_core::ports::{JobKind, NodeStore, ProbeDepth, ProbeError, Prober};
use connexa_core::pptp::ppp::fsm::FsmConfig;
use connexa_core::probe::{LightProber, ProbeConfig};
use connexa_core::sim::{Behaviour, Fleet, FleetSpec};
use connexa_core::store::SqlStore;
use connexa_core::tunnel::{AuthConfig, GreSocket};
use futures::StreamExt;

/// A counting global allocator: live and peak heap bytes.
#[allow(unsafe_code)]
mod heap {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::sync::atomic::{AtomicUsize, Ordering};

    pub static LIVE: AtomicUsize = AtomicUsize::new(0);
    pub static PEAK: AtomicUsize = AtomicUsize::new(0);

    pub struct Counting;

    fn grew(by: usize) {
        let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
        PEAK.fetch_max(now, Ordering::Relaxed);
    }

    // SAFETY: every method forwards to `System` with the caller's arguments
    // unchanged and only updates counters; the contract of `GlobalAlloc` is
    // the caller's and `System`'s.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            // SAFETY: forwarded as is.
            let p = unsafe { System.alloc(layout) };
            if !p.is_null() {
                grew(layout.size());
            }
            p
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            // SAFETY: forwarded as is.
            let p = unsafe { System.alloc_zeroed(layout) };
            if !p.is_null() {
                grew(layout.size());
            }
            p
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: forwarded as is.
            unsafe { System.dealloc(ptr, layout) };
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            // SAFETY: forwarded as is.
            let p = unsafe { System.realloc(ptr, layout, new_size) };
            if !p.is_null() {
                LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
                grew(new_size);
            }
            p
        }
    }

    /// Starts a new peak from the current live bytes; returns them.
    pub fn reset_peak() -> usize {
        let now = LIVE.load(Ordering::Relaxed);
        PEAK.store(now, Ordering::Relaxed);
        now
    }

    pub fn peak() -> usize {
        PEAK.load(Ordering::Relaxed)
    }
}

#[global_allocator]
static ALLOC: heap::Counting = heap::Counting;

fn usage() -> ! {
    eprintln!(
        "usage: bench_auth serve --nodes N --list FILE [--first-ip IP] [--port P]\n\
         \x20      bench_auth probe --list FILE --depth light|auth --mode direct|engine [--concurrency C] [--results FILE]\n\
         \x20      bench_auth summary RESULTS_FILE"
    );
    std::process::exit(2)
}

struct Args {
    cmd: String,
    nodes: usize,
    list: PathBuf,
    first_ip: std::net::Ipv4Addr,
    port: u16,
    depth: ProbeDepth,
    mode: String,
    concurrency: usize,
    results: Option<PathBuf>,
}

fn parse_args() -> Args {
    let mut it = std::env::args().skip(1);
    let cmd = it.next().unwrap_or_else(|| usage());
    let mut a = Args {
        cmd,
        nodes: 1000,
        list: PathBuf::from("fleet.txt"),
        first_ip: std::net::Ipv4Addr::new(127, 2, 0, 1),
        port: 1723,
        depth: ProbeDepth::Auth,
        mode: "direct".into(),
        concurrency: 1000,
        results: None,
    };
    if a.cmd == "summary" {
        a.results = Some(PathBuf::from(it.next().unwrap_or_else(|| usage())));
        return a;
    }
    while let Some(flag) = it.next() {
        let v = it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--nodes" => a.nodes = v.parse().unwrap_or_else(|_| usage()),
            "--list" => a.list = PathBuf::from(v),
            "--first-ip" => a.first_ip = v.parse().unwrap_or_else(|_| usage()),
            "--port" => a.port = v.parse().unwrap_or_else(|_| usage()),
            "--depth" => {
                a.depth = match v.as_str() {
                    "light" => ProbeDepth::Light,
                    "auth" => ProbeDepth::Auth,
                    _ => usage(),
                }
            }
            "--mode" if v == "direct" || v == "engine" => a.mode = v,
            "--concurrency" => a.concurrency = v.parse().unwrap_or_else(|_| usage()),
            "--results" => a.results = Some(PathBuf::from(v)),
            _ => usage(),
        }
    }
    a
}

/// The fleet's own process: starts it, writes the node list and the expected
/// verdicts (`FILE.expected`: `ip behaviour`), serves until SIGTERM/SIGINT.
async fn serve(a: &Args) {
    let spec = FleetSpec::new(a.nodes)
        .first_ip(a.first_ip)
        .port(a.port)
        .mix(vec![(Behaviour::Healthy, 90), (Behaviour::AuthReject, 10)]);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("watch SIGTERM");
    let t = Instant::now();
    let fleet = Fleet::start(spec).await.expect("start the fleet");
    if let Some(why) = fleet.logins_unavailable() {
        eprintln!("the fleet serves no logins: {why}");
        std::process::exit(1);
    }
    let expected: String = fleet
        .nodes()
        .iter()
        .map(|n| format!("{} {}\n", n.ip, n.behaviour))
        .collect();
    std::fs::write(a.list.with_extension("expected"), expected).expect("write expected");
    let tmp = a.list.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).expect("create list");
    fleet
        .write_list(connexa_core::export::ExportFormat::Pptp, &mut f)
        .expect("write list");
    f.sync_all().expect("sync list");
    std::fs::rename(&tmp, &a.list).expect("rename list");
    eprintln!(
        "fleet: {} nodes (90% healthy, 10% auth_reject) from {}:{} up in {:.2} s",
        a.nodes,
        a.first_ip,
        a.port,
        t.elapsed().as_secs_f64()
    );
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    let stats = fleet.gre_stats();
    fleet.close().await;
    eprintln!("fleet closed; its GRE socket: {stats:?}");
}

#[derive(Default)]
struct Gauge {
    now: AtomicUsize,
    peak: AtomicUsize,
}

/// The prober, counting operations in flight.
struct Counted {
    inner: LightProber,
    gauge: Arc<Gauge>,
}

#[async_trait::async_trait]
impl Prober for Counted {
    async fn probe(&self, node: &Node, depth: ProbeDepth) -> Result<Outcome, ProbeError> {
        let n = self.gauge.now.fetch_add(1, Ordering::Relaxed) + 1;
        self.gauge.peak.fetch_max(n, Ordering::Relaxed);
        let r = self.inner.probe(node, depth).await;
        self.gauge.now.fetch_sub(1, Ordering::Relaxed);
        r
    }
}

/// `VmRSS` and `VmHWM` of this process, KiB.
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn verdict(o: &Outcome) -> String {
    match (&o.reached, &o.failure) {
        (Level::Auth, None) => "ping_ok".into(),
        (Level::Light, None) => "ping_light".into(),
        (_, Some(Failure::AuthRejected { code, .. })) => format!("auth_failed:{code:?}"),
        (_, Some(f)) => format!("{f}"),
        (l, None) => format!("{l:?}"),
    }
}

fn expected_verdict(behaviour: &str, depth: ProbeDepth) -> &'static str {
    match (depth, behaviour) {
        (ProbeDepth::Light, _) => "ping_light",
        (_, "healthy") => "ping_ok",
        (_, "auth_reject") => "auth_failed:Some(691)",
        _ => "?",
    }
}

async fn probe(a: &Args) {
    let _ = connexa_core::sim::raise_fd_limit();
    let text = std::fs::read(&a.list).expect("read the node list");
    let expected: BTreeMap<String, String> =
        std::fs::read_to_string(a.list.with_extension("expected"))
            .expect("read the expected verdicts")
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(ip, b)| (ip.to_owned(), b.to_owned()))
            .collect();
    let new: Vec<_> = connexa_core::import::parse(&text[..])
        .map(|r| r.expect("node list parses").node)
        .collect();
    let dir = std::env::temp_dir().join(format!("connexa-bench-auth-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let url = format!("sqlite://{}?mode=rwc", dir.join("bench.db").display());
    let store = Arc::new(SqlStore::connect(&url).await.expect("open sqlite"));
    store.insert(new).await.expect("insert");
    let nodes = store
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
    let gre = GreSocket::open().expect("raw GRE socket (run as root)");
    let gauge = Arc::new(Gauge::default());
    let prober = Arc::new(Counted {
        inner: LightProber::new(ProbeConfig {
            connect_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(5),
            attempts: 1,
            icmp: None,
            ..ProbeConfig::default()
        })
        .with_auth_config(AuthConfig {
            lcp: FsmConfig {
                restart: Duration::from_secs(1),
                max_configure: 10,
                ..FsmConfig::default()
            },
            ..AuthConfig::default()
        })
        .with_gre_socket(gre),
        gauge: Arc::clone(&gauge),
    });
    let depth_name = match a.depth {
        ProbeDepth::Light => "light",
        _ => "auth",
    };
    // Settle, then measure from here.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let (rss_base, _) = rss_kib();
    let heap_base = heap::reset_peak();
    let t = Instant::now();
    let (verdicts, committed) = if a.mode == "direct" {
        let outs: Vec<(String, String)> = futures::stream::iter(nodes.iter())
            .map(|n| {
                let p = Arc::clone(&prober);
                async move {
                    let o = p.probe(n, a.depth).await.unwrap_or_else(|e| {
                        Outcome::failed(
                            Level::None,
                            Failure::Other {
                                detail: format!("LOCAL: {e}"),
                            },
                        )
                    });
                    (n.ip.to_string(), verdict(&o))
                }
            })
            .buffer_unordered(a.concurrency)
            .collect()
            .await;
        (outs, None)
    } else {
        let engine = Engine::new(
            store.clone(),
            Arc::clone(&prober) as Arc<dyn Prober>,
            Arc::new(NotAvailable),
            Arc::new(NotAvailable),
            EngineConfig {
                concurrency: a.concurrency,
                poll_interval: Duration::from_millis(100),
                ..EngineConfig::default()
            },
        );
        let kind = match a.depth {
            ProbeDepth::Light => JobKind::Light,
            _ => JobKind::Auth,
        };
        let job = engine
            .start_job(kind, NodeFilter::all(), JobOptions::default())
            .await
            .expect("start job");
        let summary = engine.wait(job).await.expect("job ends");
        (Vec::new(), Some(summary.progress))
    };
    let secs = t.elapsed().as_secs_f64();
    let (_, rss_peak) = rss_kib();
    let heap_peak = heap::peak();
    let peak = gauge.peak.load(Ordering::Relaxed).max(1);
    // Verdicts: direct mode checks each node; engine mode the stored statuses.
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut wrong = 0usize;
    if committed.is_none() {
        for (ip, v) in &verdicts {
            let want = expected
                .get(ip)
                .map_or("?", |b| expected_verdict(b, a.depth));
            if v != want {
                wrong += 1;
                if wrong <= 5 {
                    eprintln!("  unexpected: {ip} -> {v} (expected {want})");
                }
            }
            *counts.entry(v.clone()).or_default() += 1;
        }
    } else {
        let stored = store.counts().await.expect("counts");
        let healthy = expected.values().filter(|b| *b == "healthy").count();
        let (want_ok, want_failed, want_light) = match a.depth {
            ProbeDepth::Light => (0, 0, nodes.len()),
            _ => (healthy, nodes.len() - healthy, 0),
        };
        for (s, n) in stored {
            counts.insert(s.to_string(), n as usize);
        }
        let get = |s: Status| counts.get(&s.to_string()).copied().unwrap_or(0);
        wrong = get(Status::PingOk).abs_diff(want_ok)
            + get(Status::AuthFailed).abs_diff(want_failed)
            + get(Status::PingLight).abs_diff(want_light);
    }
    let n = nodes.len();
    let delta = rss_peak.saturating_sub(rss_base);
    let line = format!(
        "RESULT depth={depth_name} mode={} nodes={n} concurrency={} secs={secs:.3} rate={:.1} \
         peak_in_flight={peak} heap_base_kib={} heap_peak_kib={} heap_per_op_kib={:.2} \
         rss_base_kib={rss_base} rss_peak_kib={rss_peak} rss_per_op_kib={:.2} wrong={wrong}",
        a.mode,
        a.concurrency,
        n as f64 / secs,
        heap_base / 1024,
        heap_peak / 1024,
        heap_peak.saturating_sub(heap_base) as f64 / 1024.0 / peak as f64,
        delta as f64 / peak as f64,
    );
    println!("{line}");
    println!("  verdicts: {counts:?}");
    if let Some(p) = committed {
        println!("  job progress: {p:?}");
    }
    if let Some(path) = &a.results {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("results file");
        writeln!(f, "{line}").expect("append result");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn summary(path: &Path) {
    let text = std::fs::read_to_string(path).expect("read results");
    let mut rows: BTreeMap<(String, String), BTreeMap<String, String>> = BTreeMap::new();
    for l in text.lines().filter_map(|l| l.strip_prefix("RESULT ")) {
        let kv: BTreeMap<String, String> = l
            .split_whitespace()
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let key = (
            kv.get("mode").cloned().unwrap_or_default(),
            kv.get("depth").cloned().unwrap_or_default(),
        );
        rows.insert(key, kv);
    }
    let num = |r: &BTreeMap<String, String>, k: &str| -> f64 {
        r.get(k).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
    };
    println!("\n== summary (baseline: the light test of the same fleet, same mode) ==");
    for mode in ["direct", "engine"] {
        let (Some(light), Some(auth)) = (
            rows.get(&(mode.to_owned(), "light".to_owned())),
            rows.get(&(mode.to_owned(), "auth".to_owned())),
        ) else {
            continue;
        };
        let what = if mode == "engine" {
            "engine job, results committed to SQLite"
        } else {
            "Prober port, not persisted"
        };
        println!(
            "{mode} ({what}): auth {:.0} logins/s vs light {:.0} handshakes/s: ratio {:.2}; \
             target >= 200 logins/s: {}",
            num(auth, "rate"),
            num(light, "rate"),
            num(auth, "rate") / num(light, "rate"),
            if num(auth, "rate") >= 200.0 {
                "met"
            } else {
                "NOT met"
            }
        );
        for (what, key) in [("heap", "heap_per_op_kib"), ("RSS", "rss_per_op_kib")] {
            println!(
                "{mode}: {what} per concurrent login {:.1} KiB ({} in flight) vs per concurrent \
                 light probe {:.1} KiB ({} in flight): ratio {:.2}",
                num(auth, key),
                auth.get("peak_in_flight").map_or("?", String::as_str),
                num(light, key),
                light.get("peak_in_flight").map_or("?", String::as_str),
                num(auth, key) / num(light, key),
            );
        }
        println!(
            "{mode}: wrong verdicts: auth {}, light {}",
            auth.get("wrong").map_or("?", String::as_str),
            light.get("wrong").map_or("?", String::as_str),
        );
    }
}

#[tokio::main]
async fn main() {
    let a = parse_args();
    match a.cmd.as_str() {
        "serve" => serve(&a).await,
        "probe" => probe(&a).await,
        "summary" => summary(a.results.as_deref().unwrap_or_else(|| usage())),
        _ => usage(),
    }
}
