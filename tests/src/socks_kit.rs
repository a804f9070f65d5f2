//! Helpers for the SOCKS5 service tests and the SOCKS5 benchmark: a loopback
//! HTTP file server, a small SOCKS5 client, a controllable tunnel opener and
//! node fixtures.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use connexa_core::domain::{Node, NodeId, Status};
use connexa_core::service::{LinkStream, TunnelError, TunnelLink, TunnelOpener};
use connexa_core::socks::proto::{self, Reply, TargetAddr};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Deterministic pseudo-random bytes (xorshift), so that a truncated or shifted
/// relay cannot produce the right checksum by accident.
pub fn test_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend(x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A loopback HTTP/1.0 server that serves one file at `/file` (404 elsewhere).
pub struct FileServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// SHA-256 of the file, hex.
    pub sha256: String,
    /// The file's length.
    pub len: usize,
    task: JoinHandle<()>,
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FileServer {
    /// Serves `len` pseudo-random bytes on 127.0.0.1 and a free port.
    pub async fn start(len: usize) -> FileServer {
        let body = Arc::new(test_bytes(len, 0x5eed_0ff1_1e00));
        let sha256 = sha256_hex(&body);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                let body = Arc::clone(&body);
                tokio::spawn(serve_file(sock, body));
            }
        });
        FileServer {
            addr,
            sha256,
            len,
            task,
        }
    }

    /// `http://ADDR/file`.
    pub fn url(&self) -> String {
        format!("http://{}/file", self.addr)
    }
}

async fn serve_file(mut sock: TcpStream, body: Arc<Vec<u8>>) {
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    let read = async {
        while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 8192 {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => req.extend(&buf[..n]),
            }
        }
        true
    };
    if !matches!(
        tokio::time::timeout(Duration::from_secs(10), read).await,
        Ok(true)
    ) {
        return;
    }
    let line = String::from_utf8_lossy(&req);
    let ok = line.starts_with("GET /file ");
    let head = if ok {
        format!(
            "HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
    } else {
        "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into()
    };
    if sock.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    if ok {
        let _ = sock.write_all(&body).await;
    }
    let _ = sock.shutdown().await;
}

/// How a SOCKS5 CONNECT attempt ended.
#[derive(Debug)]
pub enum SocksOutcome {
    /// Connected: the stream now talks to the target.
    Connected(TcpStream),
    /// The server replied with this failure REP.
    Failed(Reply),
    /// The server refused the login (RFC 1929 status != 0).
    AuthRefused,
    /// The server refused every method offered.
    NoMethod,
}

/// A minimal SOCKS5 client: username/password login, then CONNECT.
pub async fn socks_connect(
    proxy: SocketAddr,
    user: &str,
    pass: &str,
    target: &TargetAddr,
) -> io::Result<SocksOutcome> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    let mut s = TcpStream::connect(proxy).await?;
    s.set_nodelay(true)?;
    s.write_all(&[5, 1, 2]).await?;
    let mut m = [0u8; 2];
    s.read_exact(&mut m).await?;
    match m {
        [5, 2] => {}
        [5, 0xFF] => return Ok(SocksOutcome::NoMethod),
        _ => return Err(bad("bad method reply")),
    }
    s.write_all(&proto::encode_auth(user, pass).ok_or_else(|| bad("credential too long"))?)
        .await?;
    s.read_exact(&mut m).await?;
    if m != [1, 0] {
        return Ok(SocksOutcome::AuthRefused);
    }
    s.write_all(&proto::encode_connect(target)).await?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 64];
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Err(bad("eof before reply"));
        }
        reply.extend(&buf[..n]);
        if let Some((rep, _, len)) = proto::parse_reply(&reply).map_err(|_| bad("bad reply"))? {
            if len != reply.len() {
                return Err(bad("bytes after the reply"));
            }
            return Ok(if rep == Reply::Succeeded {
                SocksOutcome::Connected(s)
            } else {
                SocksOutcome::Failed(rep)
            });
        }
    }
}

/// `GET /file` over an open stream; returns the body.
pub async fn http_get_file(mut s: TcpStream) -> io::Result<Vec<u8>> {
    s.write_all(b"GET /file HTTP/1.0\r\nHost: files\r\n\r\n")
        .await?;
    let mut all = Vec::new();
    s.read_to_end(&mut all).await?;
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no header end"))?;
    if !all.starts_with(b"HTTP/1.0 200") {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "not 200"));
    }
    Ok(all.split_off(split + 4))
}

/// Downloads `/file` through a SOCKS5 service.
pub async fn fetch_via_socks(
    proxy: SocketAddr,
    user: &str,
    pass: &str,
    target: &TargetAddr,
) -> io::Result<Vec<u8>> {
    match socks_connect(proxy, user, pass, target).await? {
        SocksOutcome::Connected(s) => http_get_file(s).await,
        other => Err(io::Error::other(format!("SOCKS5 refused: {other:?}"))),
    }
}

/// A tunnel opener the test controls: `set_up(false)` kills every open link
/// (as a server reboot kills a PPTP call) and makes new opens fail until
/// `set_up(true)`. Links connect only to loopback and resolve names from a table.
#[derive(Clone, Default)]
pub struct ControlledOpener {
    inner: Arc<Ctl>,
}

#[derive(Default)]
struct Ctl {
    down: AtomicBool,
    opens: AtomicU64,
    links: Mutex<Vec<Arc<CtlLink>>>,
    names: HashMap<String, IpAddr>,
}

impl ControlledOpener {
    /// An opener whose links resolve `names`.
    pub fn new(names: &[(&str, IpAddr)]) -> Self {
        ControlledOpener {
            inner: Arc::new(Ctl {
                names: names.iter().map(|(n, ip)| ((*n).to_owned(), *ip)).collect(),
                ..Ctl::default()
            }),
        }
    }

    /// Brings the "node" up or down.
    pub fn set_up(&self, up: bool) {
        self.inner.down.store(!up, Ordering::SeqCst);
        if !up {
            for l in self.inner.links.lock().unwrap().drain(..) {
                l.dead.store(true, Ordering::SeqCst);
            }
        }
    }

    /// Tunnels opened so far.
    pub fn opens(&self) -> u64 {
        self.inner.opens.load(Ordering::SeqCst)
    }

    /// Links closed politely so far.
    pub fn closed_links(&self) -> usize {
        self.inner
            .links
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.closed.load(Ordering::SeqCst))
            .count()
    }
}

struct CtlLink {
    dead: AtomicBool,
    closed: AtomicBool,
    names: HashMap<String, IpAddr>,
}

#[async_trait]
impl TunnelOpener for ControlledOpener {
    async fn open(&self, _node: &Node) -> Result<Arc<dyn TunnelLink>, TunnelError> {
        if self.inner.down.load(Ordering::SeqCst) {
            return Err(TunnelError::Open("no answer from the node".into()));
        }
        self.inner.opens.fetch_add(1, Ordering::SeqCst);
        let link = Arc::new(CtlLink {
            dead: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            names: self.inner.names.clone(),
        });
        self.inner.links.lock().unwrap().push(Arc::clone(&link));
        Ok(link)
    }
}

#[async_trait]
impl TunnelLink for CtlLink {
    async fn connect(&self, addr: SocketAddr) -> io::Result<Box<dyn LinkStream>> {
        if self.dead.load(Ordering::SeqCst) || self.closed.load(Ordering::SeqCst) {
            return Err(io::Error::new(io::ErrorKind::NotConnected, "tunnel down"));
        }
        if !addr.ip().is_loopback() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "loopback only",
            ));
        }
        Ok(Box::new(TcpStream::connect(addr).await?))
    }

    async fn resolve(&self, host: &str) -> io::Result<Vec<IpAddr>> {
        self.names
            .get(host)
            .map(|ip| vec![*ip])
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{host}: NXDOMAIN")))
    }

    async fn alive(&self) -> io::Result<()> {
        if self.dead.load(Ordering::SeqCst) {
            Err(io::Error::new(io::ErrorKind::TimedOut, "no LCP Echo-Reply"))
        } else {
            Ok(())
        }
    }

    async fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }
}

/// A verified (`speed_ok`) node value, for launcher tests without a store.
pub fn verified_node(id: i64) -> Node {
    Node {
        status: Status::SpeedOk,
        service_wanted: true,
        enrichment: Default::default(),
        ..Node::added(
            NodeId(id),
            IpAddr::from([127, 0, 0, 1]),
            1723,
            "u",
            "p".into(),
            chrono::Utc::now(),
        )
    }
}

/// Resident set size and its peak (`VmRSS`, `VmHWM`) of this process, in KiB.
pub fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Unauthenticated SOCKS5 connections held open against one service port, as
/// an attacker trying to use up its slots would: each of `count` sockets
/// connects from one of `sources` (addresses in 127.0.0.0/8), sends part of a
/// greeting (or nothing), stays silent until the server closes it, waits
/// `pause`, and connects again — until [`stop`](Self::stop) or drop.
pub struct PreAuthFlood {
    connects: Arc<AtomicU64>,
    tasks: tokio::task::JoinSet<()>,
}

impl PreAuthFlood {
    /// Starts the `count` attackers.
    pub fn start(
        proxy: SocketAddr,
        sources: &[std::net::Ipv4Addr],
        count: usize,
        pause: Duration,
    ) -> PreAuthFlood {
        let connects = Arc::new(AtomicU64::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..count {
            let Some(src) = sources.get(i % sources.len().max(1)).copied() else {
                break;
            };
            let connects = Arc::clone(&connects);
            let partial: &'static [u8] = match i % 4 {
                0 => &[5],
                1 => &[5, 3, 0],
                2 => &[5, 2, 0, 2, 1, 10, b'a'], // greeting, then a login that never ends
                _ => &[],
            };
            tasks.spawn(async move {
                loop {
                    if let Ok(mut s) = connect_from(src, proxy).await {
                        connects.fetch_add(1, Ordering::Relaxed);
                        if s.write_all(partial).await.is_ok() {
                            let mut sink = [0u8; 64];
                            while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
                        }
                    }
                    tokio::time::sleep(pause).await;
                }
            });
        }
        PreAuthFlood { connects, tasks }
    }

    /// Connections opened so far (first ones and re-opened ones).
    pub fn connects(&self) -> u64 {
        self.connects.load(Ordering::Relaxed)
    }

    /// Stops every attacker and closes its socket.
    pub async fn stop(mut self) {
        self.tasks.shutdown().await;
    }
}

/// A TCP connection to `to` from the address `from` (any port).
pub async fn connect_from(from: std::net::Ipv4Addr, to: SocketAddr) -> io::Result<TcpStream> {
    let s = tokio::net::TcpSocket::new_v4()?;
    s.bind(SocketAddr::from((from, 0)))?;
    s.connect(to).await
}
