//! Slowloris benchmark: the latency of `GET /api/v1/nodes?limit=100` on a
//! running `connexa-http`, first alone (the baseline), then with SLOW
//! connections open that trickle a never-ending request head (a byte a
//! second; when the server closes one at its header timeout, it is opened
//! again, so SLOW stay open). Prints p50/p99 of both phases and their ratio,
//! as Markdown for docs/benchmarks.md; asserts nothing about time.
//!
//! ```text
//! tests/bench_slowloris.sh [NODES] [SLOW] [REQUESTS]     # runs all of this
//! bench_slowloris ADDR TOKEN [--slow 2000] [--requests 2000] [--clients 4]
//! ```
//!
//! The measuring clients are `--clients` keep-alive connections sending the
//! requests one after another; each request's time is from its first byte
//! written to its answer's last byte read. Loopback only.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Args {
    addr: SocketAddr,
    token: String,
    slow: usize,
    requests: usize,
    clients: usize,
}

fn args() -> Args {
    let mut it = std::env::args().skip(1);
    let usage = "usage: bench_slowloris ADDR TOKEN [--slow N] [--requests N] [--clients N]";
    let addr = it.next().and_then(|a| a.parse().ok()).expect(usage);
    let token = it.next().expect(usage);
    let mut a = Args {
        addr,
        token,
        slow: 2000,
        requests: 2000,
        clients: 4,
    };
    while let Some(flag) = it.next() {
        let v: usize = it.next().and_then(|v| v.parse().ok()).expect(usage);
        match flag.as_str() {
            "--slow" => a.slow = v,
            "--requests" => a.requests = v,
            "--clients" => a.clients = v,
            _ => panic!("{usage}"),
        }
    }
    assert!(a.addr.ip().is_loopback(), "loopback only");
    a
}

/// Reads one answer with a Content-Length; returns its status.
async fn answer(s: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<u16> {
    buf.clear();
    let mut chunk = [0u8; 16384];
    loop {
        if let Some(split) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..split]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| std::io::Error::other("no content-length"))?;
            if buf.len() >= split + 4 + len {
                return head
                    .get(9..12)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| std::io::Error::other("bad status line"));
            }
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::other("closed"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// `n` requests spread over `clients` keep-alive connections: (latencies, non-200 answers).
async fn measure(a: &Args, n: usize) -> (Vec<Duration>, usize) {
    let per = n.div_ceil(a.clients);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..a.clients {
        let req = format!(
            "GET /api/v1/nodes?limit=100 HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {}\r\n\r\n",
            a.token
        );
        let addr = a.addr;
        tasks.spawn(async move {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            let mut buf = Vec::new();
            let mut times = Vec::with_capacity(per);
            let mut bad = 0;
            for _ in 0..per {
                let t = Instant::now();
                s.write_all(req.as_bytes()).await.expect("write");
                match answer(&mut s, &mut buf).await {
                    Ok(200) => {}
                    Ok(_) => bad += 1,
                    Err(e) => panic!("measuring connection failed: {e}"),
                }
                times.push(t.elapsed());
            }
            (times, bad)
        });
    }
    let mut all = Vec::with_capacity(n);
    let mut bad = 0;
    while let Some(r) = tasks.join_next().await {
        let (t, b) = r.expect("client");
        all.extend(t);
        bad += b;
    }
    all.sort();
    (all, bad)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Keeps one slowloris connection open until `stop`: a partial head, then a
/// header byte a second; reconnects when the server closes it.
async fn loris(
    addr: SocketAddr,
    open: Arc<AtomicUsize>,
    opened: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut s) = TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        opened.fetch_add(1, Ordering::Relaxed);
        if s.write_all(b"GET /api/v1/nodes HTTP/1.1\r\nHost: bench\r\nX-Slow: ")
            .await
            .is_err()
        {
            continue;
        }
        open.fetch_add(1, Ordering::Relaxed);
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if s.write_all(b"a").await.is_err() {
                break;
            }
        }
        open.fetch_sub(1, Ordering::Relaxed);
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = args();
    // Warm-up (connections, page cache, the listing total's cache).
    let _ = measure(&a, a.clients * 20).await;
    let (base, base_bad) = measure(&a, a.requests).await;

    let open = Arc::new(AtomicUsize::new(0));
    let opened = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut lorises = Vec::with_capacity(a.slow);
    for _ in 0..a.slow {
        lorises.push(tokio::spawn(loris(
            a.addr,
            Arc::clone(&open),
            Arc::clone(&opened),
            Arc::clone(&stop),
        )));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while open.load(Ordering::Relaxed) < a.slow && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let open_at_start = open.load(Ordering::Relaxed);
    let (slow, slow_bad) = measure(&a, a.requests).await;
    let open_at_end = open.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for l in lorises {
        l.abort();
    }

    let (b99, s99) = (pct(&base, 0.99), pct(&slow, 0.99));
    println!(
        "| phase ({} requests, {} keep-alive clients) | slow connections open | p50 | p99 | non-200 | p99 vs baseline |",
        a.requests, a.clients
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| baseline | 0 | {} | {} | {base_bad} | 1.00 |",
        ms(pct(&base, 0.5)),
        ms(b99)
    );
    println!(
        "| with slowloris | {open_at_start} → {open_at_end} (opened {} in all) | {} | {} | {slow_bad} | {:.2} |",
        opened.load(Ordering::Relaxed),
        ms(pct(&slow, 0.5)),
        ms(s99),
        s99.as_secs_f64() / b99.as_secs_f64().max(1e-9)
    );
}
