//! Hostile HTTP clients against the real serve loop (`connexa_http::serve`)
//! over TCP on loopback: idle, half-sent and trickled requests, slow uploads,
//! the connection cap, bad-token floods, `X-Forwarded-For`, and the problem
//! bodies of the errors hyper and axum produce. Timeouts are short and set
//! by each test; every wait has a generous bound.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Api, api_with, fleet_list};
use connexa_http::HttpOptions;
use connexa_http::serve::{ServeOptions, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Generous bound of every wait (a loaded 2-core machine meets it).
const BOUND: Duration = Duration::from_secs(30);

struct Served {
    api: Api,
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn served(options: HttpOptions, limits: ServeOptions) -> Served {
    let api = api_with(options).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, api.app.clone(), limits, async move {
        let _ = rx.await;
    }));
    Served {
        api,
        addr,
        stop: Some(tx),
        task,
    }
}

impl Served {
    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(BOUND, &mut self.task)
            .await
            .expect("the server stops")
            .unwrap()
            .unwrap();
    }
}

#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }

    /// Asserts a problem+json answer of this status and slug.
    fn problem(&self, status: u16, slug: &str) -> serde_json::Value {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(
            self.header("content-type").as_deref(),
            Some("application/problem+json"),
            "{self:?}"
        );
        let j = self.json();
        assert_eq!(j["type"], format!("urn:connexa:problem:{slug}"), "{j}");
        assert_eq!(j["status"], status, "{j}");
        assert!(j["title"].is_string() && j["detail"].is_string(), "{j}");
        j
    }
}

/// Reads one answer (Content-Length or chunked) from `s`.
async fn read_answer(s: &mut TcpStream) -> Answer {
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let read = async {
        loop {
            if let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&raw[..split]).into_owned();
                let lower = head.to_ascii_lowercase();
                let len = lower
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map(|v| v.trim().parse::<usize>().unwrap());
                let chunked = lower.contains("transfer-encoding: chunked");
                let body_start = split + 4;
                let complete = match len {
                    Some(n) => raw.len() >= body_start + n,
                    None if chunked => raw[body_start..].windows(5).any(|w| w == b"0\r\n\r\n"),
                    None => false,
                };
                if complete {
                    let rest = &raw[body_start..];
                    let body = match len {
                        Some(n) => rest[..n].to_vec(),
                        None => dechunk(rest),
                    };
                    return Answer {
                        status: head[9..12].parse().unwrap(),
                        head,
                        body,
                    };
                }
            }
            let n = s.read(&mut buf).await.expect("read");
            assert!(
                n > 0,
                "closed before a whole answer: {:?}",
                String::from_utf8_lossy(&raw)
            );
            raw.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(BOUND, read)
        .await
        .expect("an answer in time")
}

fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = rest.windows(2).position(|w| w == b"\r\n").unwrap();
        let n =
            usize::from_str_radix(std::str::from_utf8(&rest[..eol]).unwrap().trim(), 16).unwrap();
        rest = &rest[eol + 2..];
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&rest[..n]);
        rest = &rest[n + 2..];
    }
}

/// One request on a new connection; `extra`: more header lines (each ending in `\r\n`).
async fn request(addr: SocketAddr, method: &str, path: &str, extra: &str, body: &[u8]) -> Answer {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{extra}Content-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    read_answer(&mut s).await
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}\r\n")
}

/// Waits until the server closes `s` (EOF or reset); returns how long it took.
async fn closed_by_server(s: &mut TcpStream) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(BOUND, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the server closes the connection");
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_half_sent_connections_are_closed_while_healthz_answers() {
    let header_timeout = Duration::from_millis(400);
    let idle_timeout = Duration::from_millis(800);
    let srv = served(
        HttpOptions::default(),
        ServeOptions {
            header_timeout,
            idle_timeout,
            ..ServeOptions::default()
        },
    )
    .await;
    let addr = srv.addr;
    // Opened, nothing sent.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    // Half a request head.
    let mut half = TcpStream::connect(addr).await.unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let half_sent = Instant::now();
    // A whole request, then idle on keep-alive.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_answer(&mut idle).await.status, 200);
    let idle_from = Instant::now();
    // Slowloris: a header byte every 50 ms, never the end of the head.
    let mut loris = TcpStream::connect(addr).await.unwrap();
    loris
        .write_all(b"GET /healthz HTTP/1.1\r\nX-A: ")
        .await
        .unwrap();
    let trickle = tokio::spawn(async move {
        let start = Instant::now();
        while start.elapsed() < BOUND {
            if loris.write_all(b"a").await.is_err() {
                return (true, start.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (false, start.elapsed())
    });
    // Meanwhile, other clients are served.
    for _ in 0..5 {
        let a = request(addr, "GET", "/healthz", "Connection: close\r\n", b"").await;
        assert_eq!(a.status, 200);
        assert_eq!(a.body, b"ok\n");
    }
    closed_by_server(&mut silent).await;
    closed_by_server(&mut half).await;
    assert!(
        half_sent.elapsed() >= header_timeout,
        "closed before the header timeout"
    );
    closed_by_server(&mut idle).await;
    assert!(
        idle_from.elapsed() >= idle_timeout,
        "closed before the idle timeout"
    );
    let (cut, _) = trickle.await.unwrap();
    assert!(cut, "the trickled head was never cut");
    // Still serving.
    let a = request(addr, "GET", "/healthz", "Connection: close\r\n", b"").await;
    assert_eq!(a.status, 200);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_background_uploads_are_cut_and_free_their_slots() {
    let spool = tempfile::tempdir().unwrap();
    let srv = served(
        HttpOptions {
            max_background_imports: 2,
            background_import_bytes: 1024,
            spool_dir: Some(spool.path().to_owned()),
            ..HttpOptions::default()
        },
        ServeOptions {
            // 3000 bytes per 3 s of waiting: the slow ones are cut 3 s after
            // their first row, time enough for the checks in between.
            min_body_rate: 1000,
            body_rate_window: Duration::from_secs(3),
            ..ServeOptions::default()
        },
    )
    .await;
    let (addr, token) = (srv.addr, srv.api.token.clone());
    // Two uploads announcing 100 kB, sending a row, then a byte every 200 ms.
    let mut slow = Vec::new();
    for i in 0..2 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /api/v1/import?background=true HTTP/1.1\r\nHost: x\r\n{}Content-Type: text/plain\r\nContent-Length: 100000\r\n\r\n127.13.0.{}:u:p\n",
            bearer(&token),
            i + 1
        );
        s.write_all(head.as_bytes()).await.unwrap();
        slow.push(s);
    }
    // Both hold a slot once their spool files exist: a third background
    // import is refused meanwhile …
    let deadline = Instant::now() + BOUND;
    while std::fs::read_dir(spool.path()).unwrap().count() < 2 {
        assert!(Instant::now() < deadline, "the slow uploads never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let list = fleet_list(50);
    request(
        addr,
        "POST",
        "/api/v1/import?background=true",
        &format!("{}Content-Type: text/plain\r\n", bearer(&token)),
        list.as_bytes(),
    )
    .await
    .problem(503, "unavailable");
    // … while synchronous imports and listings are served.
    let a = request(
        addr,
        "POST",
        "/api/v1/import",
        &format!("{}Content-Type: text/plain\r\n", bearer(&token)),
        b"127.13.1.1:u:p\n",
    )
    .await;
    assert_eq!(a.status, 200, "{a:?}");
    let drips: Vec<_> = slow
        .into_iter()
        .map(|s| {
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                // Drip until the server has answered and closed.
                let writer = tokio::spawn(async move {
                    let start = Instant::now();
                    while start.elapsed() < BOUND {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        if w.write_all(b"1").await.is_err() {
                            break;
                        }
                    }
                });
                let mut raw = Vec::new();
                let _ = tokio::time::timeout(BOUND, r.read_to_end(&mut raw)).await;
                writer.abort();
                raw
            })
        })
        .collect();
    for d in drips {
        let raw = d.await.unwrap();
        let text = String::from_utf8_lossy(&raw).into_owned();
        assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
        assert!(text.contains("application/problem+json"), "{text}");
        assert!(
            text.contains("urn:connexa:problem:request-timeout"),
            "{text}"
        );
    }
    // The slots are free: a normal background import is accepted and runs.
    let deadline = Instant::now() + BOUND;
    let url = loop {
        let a = request(
            addr,
            "POST",
            "/api/v1/import?background=true",
            &format!("{}Content-Type: text/plain\r\n", bearer(&token)),
            b"127.13.2.1:u:p\n127.13.2.2:u:p\n",
        )
        .await;
        if a.status == 202 {
            break a.json()["url"].as_str().unwrap().to_owned();
        }
        // A slow upload's slot goes when its handler has ended (just after its answer).
        a.problem(503, "unavailable");
        assert!(Instant::now() < deadline, "the slots were never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let deadline = Instant::now() + BOUND;
    loop {
        let a = request(addr, "GET", &url, &bearer(&token), b"").await;
        let v = a.json();
        if v["state"] != "running" {
            assert_eq!(v["state"], "done", "{v}");
            assert_eq!(
                v["summary"]["added"].as_array().map(Vec::len),
                Some(2),
                "{v}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_refuses_with_a_problem_and_frees_on_close() {
    let srv = served(
        HttpOptions::default(),
        ServeOptions {
            max_connections: 3,
            ..ServeOptions::default()
        },
    )
    .await;
    let addr = srv.addr;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_answer(&mut s).await.status, 200);
        held.push(s);
    }
    for _ in 0..3 {
        let a = request(addr, "GET", "/healthz", "", b"").await;
        let p = a.problem(503, "unavailable");
        assert_eq!(p["retry_after"], 1, "{p}");
        assert_eq!(a.header("connection").as_deref(), Some("close"));
    }
    // One closes: its place is free once the server has noticed.
    drop(held.pop());
    let deadline = Instant::now() + BOUND;
    loop {
        let a = request(addr, "GET", "/healthz", "Connection: close\r\n", b"").await;
        if a.status == 200 {
            break;
        }
        a.problem(503, "unavailable");
        assert!(
            Instant::now() < deadline,
            "the closed connection's place never came free"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The held ones still work (keep-alive).
    for s in &mut held {
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_answer(s).await.status, 200);
    }
    srv.stop().await;
}

/// `n` requests with bad tokens (half malformed, half well-formed unknown
/// ones); returns (401s, 429s).
async fn flood(addr: SocketAddr, n: usize, extra: &str) -> (usize, usize) {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let token = if i % 2 == 0 {
            connexa_http::auth::generate_token().unwrap()
        } else {
            format!("guess-{i}")
        };
        let extra = format!("{}{extra}Connection: close\r\n", bearer(&token));
        tasks.spawn(async move {
            request(addr, "GET", "/api/v1/stats", &extra, b"")
                .await
                .status
        });
    }
    let (mut unauthorized, mut limited) = (0, 0);
    while let Some(s) = tasks.join_next().await {
        match s.unwrap() {
            401 => unauthorized += 1,
            429 => limited += 1,
            other => panic!("unexpected {other}"),
        }
    }
    (unauthorized, limited)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_token_keeps_working_during_a_bad_token_flood_from_its_address() {
    let srv = served(
        HttpOptions {
            auth_failures_per_minute: 5,
            ..HttpOptions::default()
        },
        ServeOptions::default(),
    )
    .await;
    let (addr, token) = (srv.addr, srv.api.token.clone());
    let ok = |a: Answer| assert_eq!(a.status, 200, "{a:?}");
    ok(request(addr, "GET", "/api/v1/stats", &bearer(&token), b"").await);
    // The flood and the valid requests interleave, from the same address.
    let valid = tokio::spawn(async move {
        for _ in 0..20 {
            let a = request(addr, "GET", "/api/v1/stats", &bearer(&token), b"").await;
            assert_eq!(a.status, 200, "{a:?}");
        }
    });
    let (unauthorized, limited) = flood(addr, 200, "").await;
    valid.await.unwrap();
    assert!(unauthorized <= 5, "{unauthorized}");
    assert_eq!(unauthorized + limited, 200);
    let token = srv.api.token.clone();
    // Past the accepted-token cache: the token is looked up again, and passes.
    tokio::time::sleep(connexa_http::auth::TOKEN_CACHE_TTL + Duration::from_millis(200)).await;
    let (_, limited) = flood(addr, 20, "").await;
    assert_eq!(limited, 20, "still limited");
    ok(request(addr, "GET", "/api/v1/stats", &bearer(&token), b"").await);
    // A revoked token is refused (and counts as a failure) at once, known or not.
    let row = srv.api.store.tokens().await.unwrap();
    use connexa_core::ports::TokenStore;
    assert!(srv.api.store.revoke_token(row[0].id).await.unwrap());
    tokio::time::sleep(connexa_http::auth::TOKEN_CACHE_TTL + Duration::from_millis(200)).await;
    let a = request(addr, "GET", "/api/v1/stats", &bearer(&token), b"").await;
    assert!(a.status == 401 || a.status == 429, "{a:?}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_is_honoured_only_from_a_trusted_proxy() {
    let limit = 3;
    // Behind a trusted proxy (this test's loopback address): keyed by the forwarded client.
    let proxied = served(
        HttpOptions {
            auth_failures_per_minute: limit,
            trusted_proxies: vec!["127.0.0.0/8".parse().unwrap()],
            ..HttpOptions::default()
        },
        ServeOptions::default(),
    )
    .await;
    let (u, l) = flood(proxied.addr, 20, "X-Forwarded-For: 10.0.0.1\r\n").await;
    assert_eq!((u, l), (limit as usize, 20 - limit as usize));
    // Another client behind the proxy is not limited, even when it puts the
    // limited one in front (the left part of the header is the client's word).
    let (u, _) = flood(proxied.addr, 2, "X-Forwarded-For: 10.0.0.1, 10.0.0.2\r\n").await;
    assert_eq!(u, 2);
    let (u, _) = flood(proxied.addr, 2, "X-Forwarded-For: 10.0.0.3\r\n").await;
    assert_eq!(u, 2);
    // The limited one stays limited, also when it goes through a second trusted hop.
    let (u, _) = flood(proxied.addr, 2, "X-Forwarded-For: 10.0.0.1, 127.0.0.5\r\n").await;
    assert_eq!(u, 0);
    proxied.stop().await;

    // No trusted proxy: the header is ignored, the peer address counts.
    let direct = served(
        HttpOptions {
            auth_failures_per_minute: limit,
            ..HttpOptions::default()
        },
        ServeOptions::default(),
    )
    .await;
    let (u, _) = flood(direct.addr, 20, "X-Forwarded-For: 10.0.0.1\r\n").await;
    assert_eq!(u, limit as usize);
    let (u, l) = flood(direct.addr, 2, "X-Forwarded-For: 10.0.0.2\r\n").await;
    assert_eq!((u, l), (0, 2), "a forged header escapes the limit");
    direct.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_errors_are_problems() {
    let srv = served(HttpOptions::default(), ServeOptions::default()).await;
    let (addr, token) = (srv.addr, srv.api.token.clone());
    let close = "Connection: close\r\n";
    // 404 of unknown routes, with and without a token.
    request(addr, "GET", "/nope", close, b"")
        .await
        .problem(404, "not-found");
    request(
        addr,
        "GET",
        "/api/v1/nope",
        &format!("{}{close}", bearer(&token)),
        b"",
    )
    .await
    .problem(404, "not-found");
    // 405.
    request(addr, "POST", "/healthz", close, b"")
        .await
        .problem(405, "method-not-allowed");
    request(
        addr,
        "PUT",
        "/api/v1/nodes",
        &format!("{}{close}", bearer(&token)),
        b"",
    )
    .await
    .problem(405, "method-not-allowed");
    // 413: a JSON body over the 1 MiB limit (written while the answer is read).
    let mut s = TcpStream::connect(addr).await.unwrap();
    let big = vec![b' '; (1 << 20) + 10];
    let head = format!(
        "POST /api/v1/nodes HTTP/1.1\r\nHost: x\r\n{}Content-Type: application/json\r\n{close}Content-Length: {}\r\n\r\n",
        bearer(&token),
        big.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        let _ = w.write_all(&big).await;
        w
    });
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(BOUND, r.read_to_end(&mut raw)).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    assert!(text.starts_with("HTTP/1.1 413 "), "{text}");
    assert!(text.contains("application/problem+json"), "{text}");
    assert!(
        text.contains("urn:connexa:problem:payload-too-large"),
        "{text}"
    );
    drop(writer.await);
    // 414: a 10 kB request target.
    let long = format!("/api/v1/nodes?ip={}", "1".repeat(10_000));
    request(addr, "GET", &long, close, b"")
        .await
        .problem(414, "uri-too-long");
    // 431: too many header fields, and too large ones.
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    request(addr, "GET", "/healthz", &format!("{many}{close}"), b"")
        .await
        .problem(431, "headers-too-large");
    let large = format!("X-Big: {}\r\n", "v".repeat(40_000));
    request(addr, "GET", "/healthz", &format!("{large}{close}"), b"")
        .await
        .problem(431, "headers-too-large");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_a_request_in_flight_finish() {
    let spool = tempfile::tempdir().unwrap();
    let srv = served(
        HttpOptions {
            spool_dir: Some(spool.path().to_owned()),
            ..HttpOptions::default()
        },
        ServeOptions::default(),
    )
    .await;
    let (addr, token) = (srv.addr, srv.api.token.clone());
    // An upload whose body is still coming when the shutdown starts.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /api/v1/import?background=true HTTP/1.1\r\nHost: x\r\n{}Content-Type: text/plain\r\nContent-Length: 30\r\n\r\n127.14.0.1:u:p\n",
        bearer(&token)
    );
    s.write_all(head.as_bytes()).await.unwrap();
    // An idle keep-alive connection.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_answer(&mut idle).await.status, 200);
    // The upload is in its handler once its spool file exists.
    let deadline = Instant::now() + BOUND;
    while std::fs::read_dir(spool.path()).unwrap().next().is_none() {
        assert!(Instant::now() < deadline, "the upload never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let Served {
        api,
        stop,
        mut task,
        ..
    } = srv;
    let _ = stop.unwrap().send(());
    // The idle connection is closed; the upload is received and answered.
    closed_by_server(&mut idle).await;
    s.write_all(b"127.14.0.2:u:p\n").await.unwrap();
    let a = read_answer(&mut s).await;
    assert_eq!(a.status, 202, "{a:?}");
    tokio::time::timeout(BOUND, &mut task)
        .await
        .expect("stopped after the request")
        .unwrap()
        .unwrap();
    assert!(TcpStream::connect(addr).await.is_err(), "still listening");
    api.state.background_imports_ended().await;
}
