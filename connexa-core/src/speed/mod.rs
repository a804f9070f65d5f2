//! The network [`SpeedTester`]: throughput measured through the node's own
//! PPTP tunnel ([`Tunnel`]: MS-CHAPv2 login, 128-bit MPPE, user-space TCP/IP).
//!
//! [`HttpSpeedTester::measure`] opens the tunnel, measures the latency through
//! it (median of five LCP Echo round trips), then downloads from the configured
//! HTTP endpoint(s) with [`SpeedConfig::streams`] parallel connections for
//! [`SpeedConfig::duration`], and, when an upload URL is configured, uploads
//! to it the same way; finally it closes the tunnel politely.
//!
//! **What the figures mean.** Mbit/s are *goodput*: HTTP body octets
//! delivered to the application (download) or acknowledged by the server's TCP
//! (upload), divided by the measuring window; TCP/IP, PPP, MPPE, GRE and outer
//! IP headers are not counted, so goodput is a few per cent below the link
//! rate. The first [`SpeedConfig::warmup`] of each direction is discarded (TCP
//! slow start; the iperf3 `-O` / librespeed grace-time method). Connections
//! that finish inside the window are reopened, so small files work too.
//!
//! **HTTPS.** `https://` URLs are fetched over TLS through the tunnel (rustls
//! with the ring provider, see [`tls`]): the server certificate is verified
//! against the Mozilla roots (`webpki-roots`; the host's own store is not
//! used, so a test behaves the same on every machine) plus the certificates of
//! [`SpeedConfig::ca_file`], with SNI and the name check taken from the URL's
//! host. Goodput stays *HTTP body octets*: TLS record headers, padding, MACs
//! and the handshake are not counted (for uploads, the octets still
//! unacknowledged in the TCP send buffers, which are TLS records, are
//! subtracted, an approximation good to the ~0.2 % record overhead). A
//! certificate the client rejects (unknown CA, wrong name, expired) or another
//! TLS handshake failure ends the test at once — the login worked, the
//! endpoint is the problem — as level 2 with [`Failure::Other`] naming the
//! endpoint and the reason.
//!
//! **Verified content.** With [`SpeedConfig::keyed`] (the operator's own
//! endpoint, `[test] self_url`) every download request carries a fresh nonce
//! signed with the shared [`keyed::SpeedKey`], and every body byte is checked
//! against the nonce's keyed stream as it arrives ([`keyed::StreamVerifier`]);
//! only verified bytes are counted, and the first wrong byte ends the test as
//! level 2 with [`Failure::ContentMismatch`]. The client address the endpoint
//! echoes becomes [`Measurements::exit_ip`]. Plain `http://` targets without a
//! key cannot be verified: [`HttpSpeedTester`] warns once that their verdict
//! is spoofable ([`SpeedConfig::spoofable_urls`]). Host names are resolved on
//! this host ([`resolve_here`]) unless [`SpeedConfig::resolve_through_node`].
//! The verdict counts only bytes inside the window ([`window_goodput`],
//! [`passes`]).
//!
//! The [`Outcome`]: level 3 (`speed_ok`) when the download reaches
//! [`SpeedConfig::threshold_mbps`]; a node that logged in but was slower, or
//! whose test endpoint could not be reached through the tunnel, is level 2
//! (`ping_ok`) with [`Failure::TooSlow`] or [`Failure::Other`] — never
//! `ping_failed`. Nodes that do not get that far get the auth test's levels and
//! failures. `ping_ms` carries the latency through the tunnel,
//! `bytes_moved` the octets of both measuring windows.

pub mod http;
pub mod keyed;
pub mod tls;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_rustls::TlsConnector;

use crate::domain::{Failure, Level, Measurements, Node, Outcome};
use crate::ports::{ProbeError, SpeedTester};
use crate::tunnel::{GreSocket, SharedGre, Tunnel, TunnelConfig, TunnelError, TunnelStream};
use http::HttpUrl;

/// Settings of a speed test.
#[derive(Debug, Clone, PartialEq)]
pub struct SpeedConfig {
    /// Download URLs (`http://` or `https://`); streams are spread over them.
    pub download_urls: Vec<String>,
    /// Upload URL (an endpoint that accepts a `POST` body), if any.
    pub upload_url: Option<String>,
    /// Length of each direction's test, warm-up included (default 10 s).
    pub duration: Duration,
    /// Parallel connections per direction (default 4).
    pub streams: usize,
    /// Discarded start of each direction (default 2 s).
    pub warmup: Duration,
    /// Download goodput at or above which the node is `speed_ok` (default 1.0).
    pub threshold_mbps: f64,
    /// PEM file of CA certificates trusted for `https://` endpoints in
    /// addition to the Mozilla roots.
    pub ca_file: Option<PathBuf>,
    /// The tunnel's settings.
    pub tunnel: TunnelConfig,
    /// Deadline of the whole test, tunnel opening included (default 60 s,
    /// `[test] speed_timeout_secs`). A test still measuring then ends at the
    /// level it proved (logged in: level 2) with [`Failure::Other`] saying so.
    pub timeout: Duration,
    /// The operator's own keyed endpoint (`[test] self_url`): when set, the
    /// download (and, with [`KeyedTarget::upload`], the upload) goes there
    /// instead of [`SpeedConfig::download_urls`] / [`SpeedConfig::upload_url`],
    /// and every body byte is verified.
    pub keyed: Option<KeyedTarget>,
    /// Resolve test host names through the node's DNS (inside the tunnel)
    /// instead of on this host (default `false`: a node cannot redirect the
    /// test by lying about a name). IP literals are never resolved.
    pub resolve_through_node: bool,
}

/// A keyed speed endpoint ([`keyed`]) and what to ask of it.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyedTarget {
    /// `http://host[:port]` or `https://host[:port]` where `/speed/down` and
    /// `/speed/up` are served.
    pub base_url: String,
    /// The shared secret that signs nonces and keys the stream.
    pub key: keyed::SpeedKey,
    /// Bytes asked for in each download request (a connection that finishes
    /// inside the window is reopened with a fresh nonce). Default 256 MiB.
    pub request_bytes: u64,
    /// Also run the upload test against `/speed/up`.
    pub upload: bool,
}

impl KeyedTarget {
    /// A target at `base_url` with `key`, 256 MiB requests, no upload.
    pub fn new(base_url: &str, key: keyed::SpeedKey) -> Self {
        KeyedTarget {
            base_url: base_url.trim_end_matches('/').to_owned(),
            key,
            request_bytes: 256 << 20,
            upload: false,
        }
    }
}

/// The default download target (`[test] test_url`): 25 MB from Cloudflare's
/// speed test.
pub const DEFAULT_TEST_URL: &str = "https://speed.cloudflare.com/__down?bytes=25000000";

impl Default for SpeedConfig {
    fn default() -> Self {
        SpeedConfig {
            download_urls: vec![DEFAULT_TEST_URL.to_owned()],
            upload_url: None,
            duration: Duration::from_secs(10),
            streams: 4,
            warmup: Duration::from_secs(2),
            threshold_mbps: 1.0,
            ca_file: None,
            tunnel: TunnelConfig::default(),
            timeout: Duration::from_secs(60),
            keyed: None,
            resolve_through_node: false,
        }
    }
}

impl SpeedConfig {
    /// `http://` targets whose content is not verified: a node could answer
    /// them itself (see [`HttpSpeedTester`]'s warning).
    pub fn spoofable_urls(&self) -> Vec<&str> {
        let mut urls: Vec<&str> = Vec::new();
        if self.keyed.is_none() {
            urls.extend(self.download_urls.iter().map(String::as_str));
        }
        if self.keyed.as_ref().is_none_or(|k| !k.upload) {
            urls.extend(self.upload_url.as_deref());
        }
        urls.retain(|u| u.starts_with("http://"));
        urls
    }
}

/// What one speed test measured through a tunnel.
#[derive(Debug, Clone, PartialEq)]
pub struct SpeedReport {
    /// Download goodput, Mbit/s.
    pub down_mbps: f64,
    /// Upload goodput, Mbit/s (when an upload URL is configured).
    pub up_mbps: Option<f64>,
    /// Median LCP Echo round trip through the tunnel, ms.
    pub latency_ms: Option<f64>,
    /// Octets downloaded in the measuring window.
    pub bytes_down: u64,
    /// Octets uploaded (acknowledged) in the measuring window.
    pub bytes_up: u64,
    /// Length of each measuring window (duration minus warm-up).
    pub window: Duration,
    /// The client address the keyed endpoint saw (the node's exit address).
    pub exit_ip: Option<IpAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Down,
    Up,
}

/// Octets of each upload request (never reached within a test; the connection
/// is dropped when the window ends).
const UPLOAD_LENGTH: u64 = 1 << 30;

/// The address of `url`'s host: an IP literal as is; a name resolved on
/// this host (`tokio::net::lookup_host`, IPv4 first: tunnels carry IPv4), or
/// through the node's DNS when `through_node`.
async fn target(
    tunnel: &Tunnel,
    url: &str,
    through_node: bool,
) -> io::Result<(HttpUrl, SocketAddr)> {
    let u = HttpUrl::parse(url)?;
    let host = u.host.trim_start_matches('[').trim_end_matches(']');
    let ip = if let Ok(ip) = host.parse::<IpAddr>() {
        ip
    } else if through_node {
        tunnel
            .resolve(host)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, u.host.clone()))?
    } else {
        resolve_here(host, u.port).await?
    };
    let addr = SocketAddr::new(ip, u.port);
    Ok((u, addr))
}

/// Resolves `host` on this host (the system resolver: `/etc/hosts`, DNS...),
/// preferring IPv4 (tunnels carry IPv4).
///
/// # Errors
/// The name does not resolve.
pub async fn resolve_here(host: &str, port: u16) -> io::Result<IpAddr> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("resolving {host}: {e}")))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .map(SocketAddr::ip)
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, host.to_owned()))
}

/// A downloaded body that is not the keyed stream (see [`is_content_mismatch`]).
#[derive(Debug)]
struct ContentMismatch(String);

impl std::fmt::Display for ContentMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ContentMismatch {}

/// Whether `e` says the keyed endpoint's body arrived altered.
pub fn is_content_mismatch(e: &io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.downcast_ref::<ContentMismatch>().is_some())
}

/// The path of a keyed request under the base URL's path: the download
/// (`bytes` given) or the upload sink.
fn keyed_path(base: &str, nonce: &str, bytes: Option<u64>) -> String {
    let base = base.trim_end_matches('/');
    match bytes {
        Some(b) => format!("{base}{}?nonce={nonce}&bytes={b}", keyed::DOWN_PATH),
        None => format!("{base}{}?nonce={nonce}", keyed::UP_PATH),
    }
}

/// How long a nonce the tester issues stays valid.
fn nonce_ttl(cfg: &SpeedConfig) -> Duration {
    cfg.timeout + Duration::from_secs(60)
}

/// A connection to a test endpoint: plain TCP or TLS, through the tunnel.
enum Conn {
    Plain(TunnelStream),
    Tls(Box<tokio_rustls::client::TlsStream<TunnelStream>>),
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A test endpoint: its URL, address, and the TLS connector for `https://`;
/// for the keyed endpoint, its key (each request then gets a fresh nonce).
#[derive(Clone)]
struct Target {
    url: HttpUrl,
    addr: SocketAddr,
    tls: Option<TlsConnector>,
    keyed: Option<Keyed>,
}

#[derive(Clone)]
struct Keyed {
    key: keyed::SpeedKey,
    bytes: u64,
    ttl: Duration,
    exit_ip: Arc<std::sync::Mutex<Option<IpAddr>>>,
}

impl Target {
    async fn open(&self, tunnel: &Tunnel) -> io::Result<Conn> {
        let s = tunnel.connect(self.addr).await?;
        match &self.tls {
            Some(c) => Ok(Conn::Tls(Box::new(tls::handshake(c, &self.url, s).await?))),
            None => Ok(Conn::Plain(s)),
        }
    }
}

/// Whether a worker stops on `e` (the tunnel died, or TLS failed: retrying
/// cannot help) rather than reconnecting.
fn fatal(tunnel: &Tunnel, e: &io::Error) -> bool {
    !tunnel.is_alive() || tls::is_handshake_failure(e)
}

async fn download_worker(tunnel: Tunnel, target: Target, bytes: Arc<AtomicU64>) -> io::Error {
    loop {
        let r = async {
            let Some(k) = &target.keyed else {
                let mut s = target.open(&tunnel).await?;
                return http::get(&mut s, &target.url, |d| {
                    bytes.fetch_add(d.len() as u64, Ordering::Relaxed);
                })
                .await;
            };
            // A fresh nonce per request: nothing a node saw before helps it.
            let nonce = k.key.issue(std::time::SystemTime::now(), k.ttl)?;
            let valid = k
                .key
                .check(Some(&nonce), std::time::SystemTime::now())
                .map_err(io::Error::other)?;
            let mut verifier = keyed::StreamVerifier::new(&k.key, &valid);
            let mut url = target.url.clone();
            url.path = keyed_path(&url.path, &nonce, Some(k.bytes));
            let mut s = target.open(&tunnel).await?;
            http::get_with_head(
                &mut s,
                &url,
                |head| {
                    if let Some(ip) = head.client_addr {
                        *k.exit_ip
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(ip);
                    }
                },
                |d| {
                    // Only verified bytes count.
                    verifier.feed(d).map_err(|m| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            ContentMismatch(format!(
                                "{m} (from {}://{}:{})",
                                if url.tls { "https" } else { "http" },
                                url.host,
                                url.port
                            )),
                        )
                    })?;
                    bytes.fetch_add(d.len() as u64, Ordering::Relaxed);
                    Ok(())
                },
            )
            .await
        }
        .await;
        if let Err(e) = r {
            if fatal(&tunnel, &e) || is_content_mismatch(&e) {
                return e;
            }
            tracing::debug!(error = %e, "speed test download");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

async fn upload_worker(tunnel: Tunnel, target: Target, written: Arc<AtomicU64>) -> io::Error {
    let chunk = vec![0x5Au8; 16 * 1024];
    loop {
        let r: io::Result<()> = async {
            let mut url = target.url.clone();
            // The keyed sink takes at most its limit: ask for a request's size.
            let mut length = UPLOAD_LENGTH;
            if let Some(k) = &target.keyed {
                let nonce = k.key.issue(std::time::SystemTime::now(), k.ttl)?;
                url.path = keyed_path(&url.path, &nonce, None);
                length = k.bytes;
            }
            let url = &url;
            let mut s = target.open(&tunnel).await?;
            http::post_head(&mut s, url, length).await?;
            let mut sent = 0u64;
            while sent < length {
                let n = s.write(&chunk).await?;
                sent += n as u64;
                written.fetch_add(n as u64, Ordering::Relaxed);
            }
            http::finish(&mut s, url).await.map(|_| ())
        }
        .await;
        if let Err(e) = r {
            if fatal(&tunnel, &e) {
                return e;
            }
            tracing::debug!(error = %e, "speed test upload");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Goodput over a measuring window: the byte counter sampled at the end of
/// the warm-up (`at_warm_end`) and at the end of the window (`at_end`), and
/// the window's length. Only bytes counted between the two samples move the
/// figure: bytes of the warm-up alone give `(0.0, 0)`.
pub fn window_goodput(at_warm_end: u64, at_end: u64, window: Duration) -> (f64, u64) {
    let moved = at_end.saturating_sub(at_warm_end);
    let secs = window.as_secs_f64();
    let mbps = if secs > 0.0 {
        moved as f64 * 8.0 / secs / 1e6
    } else {
        0.0
    };
    (mbps, moved)
}

/// The speed verdict: level 3 only when bytes moved inside the window and
/// their goodput reaches the threshold (so a threshold of 0 cannot pass a
/// node whose bytes all came during the warm-up).
pub fn passes(report: &SpeedReport, threshold_mbps: f64) -> bool {
    report.bytes_down > 0 && report.down_mbps >= threshold_mbps
}

/// One direction: `streams` workers for `duration`; goodput over the window
/// after the warm-up. Returns (Mbit/s, octets in the window).
async fn phase(
    tunnel: &Tunnel,
    cfg: &SpeedConfig,
    dir: Direction,
    exit_ip: &Arc<std::sync::Mutex<Option<IpAddr>>>,
) -> io::Result<(f64, u64)> {
    let keyed_here = cfg
        .keyed
        .as_ref()
        .filter(|k| dir == Direction::Down || k.upload);
    let urls: Vec<String> = match (keyed_here, dir) {
        (Some(k), _) => vec![k.base_url.clone()],
        (None, Direction::Down) => cfg.download_urls.clone(),
        (None, Direction::Up) => cfg.upload_url.iter().cloned().collect(),
    };
    let keyed = keyed_here.map(|k| Keyed {
        key: k.key,
        bytes: k.request_bytes.max(1),
        ttl: nonce_ttl(cfg),
        exit_ip: Arc::clone(exit_ip),
    });
    let mut targets = Vec::new();
    let mut connector = None;
    for u in &urls {
        let (url, addr) = target(tunnel, u, cfg.resolve_through_node).await?;
        let tls = if url.tls {
            if connector.is_none() {
                connector = Some(tls::connector(cfg.ca_file.as_deref())?);
            }
            connector.clone()
        } else {
            None
        };
        let mut url = url;
        if keyed.is_some() {
            // The base URL's path is a prefix of /speed/down (usually empty).
            url.path = url.path.trim_end_matches('/').to_owned();
        }
        targets.push(Target {
            url,
            addr,
            tls,
            keyed: keyed.clone(),
        });
    }
    if targets.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no speed test URL configured",
        ));
    }
    let bytes = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for i in 0..cfg.streams.max(1) {
        let target = targets[i % targets.len()].clone();
        let t = tunnel.clone();
        let b = Arc::clone(&bytes);
        match dir {
            Direction::Down => workers.spawn(download_worker(t, target, b)),
            Direction::Up => workers.spawn(upload_worker(t, target, b)),
        };
    }
    // Download: octets read by the application. Upload: octets written minus
    // those still unacknowledged in the send buffers.
    let count = || match dir {
        Direction::Down => bytes.load(Ordering::Relaxed),
        Direction::Up => bytes
            .load(Ordering::Relaxed)
            .saturating_sub(tunnel.tcp_unacked() as u64),
    };
    let start = Instant::now();
    let warm = cfg.warmup.min(cfg.duration);
    let mut failed = None;
    tokio::select! {
        () = tokio::time::sleep_until((start + warm).into()) => {}
        Some(r) = workers.join_next() => failed = r.ok(),
    }
    let (b1, t1) = (count(), Instant::now());
    if failed.is_none() {
        tokio::select! {
            () = tokio::time::sleep_until((start + cfg.duration).into()) => {}
            Some(r) = workers.join_next() => failed = r.ok(),
        }
    }
    let (b2, t2) = (count(), Instant::now());
    workers.abort_all();
    while workers.join_next().await.is_some() {}
    if let Some(e) = failed {
        return Err(e);
    }
    if bytes.load(Ordering::Relaxed) == 0 {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no data moved through the tunnel ({})", urls.join(", ")),
        ));
    }
    Ok(window_goodput(b1, b2, t2.duration_since(t1)))
}

/// Measures latency, download and (if configured) upload through an open tunnel.
///
/// # Errors
/// The endpoint could not be reached or moved no data, or the tunnel died.
pub async fn measure_tunnel(tunnel: &Tunnel, cfg: &SpeedConfig) -> io::Result<SpeedReport> {
    let mut rtts = Vec::new();
    for _ in 0..5 {
        if let Ok(r) = tunnel.echo().await {
            rtts.push(r.as_secs_f64() * 1000.0);
        }
    }
    rtts.sort_by(f64::total_cmp);
    let latency_ms = rtts.get(rtts.len() / 2).copied();
    let exit_ip = Arc::new(std::sync::Mutex::new(None));
    let (down_mbps, bytes_down) = phase(tunnel, cfg, Direction::Down, &exit_ip).await?;
    let upload = match &cfg.keyed {
        Some(k) if k.upload => true,
        _ => cfg.upload_url.is_some(),
    };
    let (up_mbps, bytes_up) = if upload {
        let (m, b) = phase(tunnel, cfg, Direction::Up, &exit_ip).await?;
        (Some(m), b)
    } else {
        (None, 0)
    };
    Ok(SpeedReport {
        down_mbps,
        up_mbps,
        latency_ms,
        bytes_down,
        bytes_up,
        window: cfg.duration.saturating_sub(cfg.warmup),
        exit_ip: *exit_ip
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    })
}

/// The network [`SpeedTester`] (see the module docs).
///
/// It needs a raw GRE socket, opened on the first test (in the network
/// namespace of that thread) or shared with [`HttpSpeedTester::with_gre`];
/// without `CAP_NET_RAW` every test returns `Err(ProbeError::NotPermitted)`
/// before any traffic, so no node is marked.
#[derive(Debug)]
pub struct HttpSpeedTester {
    config: SpeedConfig,
    gre: SharedGre,
    warned: std::sync::atomic::AtomicBool,
    refusal: Option<String>,
}

impl HttpSpeedTester {
    /// A tester with these settings (its GRE socket opened on first use).
    pub fn new(config: SpeedConfig) -> Self {
        Self::with_gre(config, SharedGre::new())
    }

    /// A tester over the process's shared GRE handle, so that auth and speed
    /// tests of one process share one socket and one call-id space, as they
    /// must (see [`tunnel`](crate::tunnel)).
    pub fn with_gre(config: SpeedConfig, gre: SharedGre) -> Self {
        HttpSpeedTester {
            config,
            gre,
            warned: std::sync::atomic::AtomicBool::new(false),
            refusal: None,
        }
    }

    /// A tester over an already open GRE socket (one per process).
    pub fn with_gre_socket(config: SpeedConfig, gre: Arc<GreSocket>) -> Self {
        Self::with_gre(config, SharedGre::with_socket(gre))
    }

    /// A tester that runs no test: each returns `Err(ProbeError::Config(why))`
    /// (the test could not run here; no node is marked). For a setup that
    /// cannot work, e.g. a keyed endpoint whose key cannot be read.
    pub fn refusing(mut self, why: String) -> Self {
        self.refusal = Some(why);
        self
    }

    /// The settings.
    pub fn config(&self) -> &SpeedConfig {
        &self.config
    }

    /// The GRE handle this tester uses.
    pub fn gre(&self) -> &SharedGre {
        &self.gre
    }

    /// Tests one node: tunnel, latency, download, upload, polite close.
    ///
    /// # Errors
    /// The test could not run here (no `CAP_NET_RAW`, IPv6 node).
    pub async fn measure_node(&self, node: &Node) -> Result<Outcome, ProbeError> {
        if let Some(why) = &self.refusal {
            return Err(ProbeError::Config(why.clone()));
        }
        let started = Instant::now();
        let spoofable = self.config.spoofable_urls();
        if !spoofable.is_empty() && !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                urls = %spoofable.join(", "),
                "speed test targets are plain http:// without content verification: a node can \
                 answer them itself and earn speed_ok; set [test] self_url (the keyed endpoint) \
                 or use https://"
            );
        }
        let gre = Arc::clone(self.gre.get().await?);
        let tunnel = match Tunnel::open(node, &self.config.tunnel, gre).await {
            Ok(t) => t,
            Err(TunnelError::Probe(e)) => return Err(e),
            Err(TunnelError::Failed {
                reached,
                failure,
                report,
            }) => {
                return Ok(
                    Outcome::failed(reached, failure).with_measurements(Measurements {
                        connect_ms: report.connect_ms,
                        handshake_ms: report.handshake_ms,
                        pptp: report.pptp.clone(),
                        ..Measurements::default()
                    }),
                );
            }
        };
        let r = tunnel.report();
        let mut m = Measurements {
            connect_ms: r.connect_ms,
            handshake_ms: r.handshake_ms,
            pptp: r.pptp.clone(),
            ..Measurements::default()
        };
        let left = self.config.timeout.saturating_sub(started.elapsed());
        let result = tokio::time::timeout(left, measure_tunnel(&tunnel, &self.config)).await;
        tunnel.close().await;
        let report = match result {
            Ok(Ok(report)) => report,
            Err(_) => {
                return Ok(Outcome::failed(
                    Level::Auth,
                    Failure::Other {
                        detail: format!(
                            "the speed test did not finish within {} s (speed_timeout_secs)",
                            self.config.timeout.as_secs_f64()
                        ),
                    },
                )
                .with_measurements(m));
            }
            Ok(Err(e)) if is_content_mismatch(&e) => {
                return Ok(Outcome::failed(
                    Level::Auth,
                    Failure::ContentMismatch {
                        detail: e.to_string(),
                    },
                )
                .with_measurements(m));
            }
            Ok(Err(e)) => {
                return Ok(Outcome::failed(
                    Level::Auth,
                    Failure::Other {
                        detail: format!("speed test through the tunnel failed: {e}"),
                    },
                )
                .with_measurements(m));
            }
        };
        m.ping_ms = report.latency_ms;
        m.speed_down_mbps = Some(report.down_mbps);
        m.speed_up_mbps = report.up_mbps;
        m.bytes_moved = Some(report.bytes_down + report.bytes_up);
        m.exit_ip = report.exit_ip;
        let outcome = if passes(&report, self.config.threshold_mbps) {
            Outcome::success(Level::Speed)
        } else {
            Outcome::failed(
                Level::Auth,
                Failure::TooSlow {
                    down_mbps: report.down_mbps,
                    threshold_mbps: self.config.threshold_mbps,
                },
            )
        };
        Ok(outcome.with_measurements(m))
    }
}

#[async_trait]
impl SpeedTester for HttpSpeedTester {
    async fn measure(&self, node: &Node) -> Result<Outcome, ProbeError> {
        self.measure_node(node).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(down_mbps: f64, bytes_down: u64) -> SpeedReport {
        SpeedReport {
            down_mbps,
            up_mbps: None,
            latency_ms: None,
            bytes_down,
            bytes_up: 0,
            window: Duration::from_secs(8),
            exit_ip: None,
        }
    }

    #[test]
    fn bytes_seen_only_in_the_warm_up_cannot_pass() {
        // 50 MB during the warm-up, nothing after it.
        let (mbps, moved) = window_goodput(50_000_000, 50_000_000, Duration::from_secs(8));
        assert_eq!((mbps, moved), (0.0, 0));
        let r = report(mbps, moved);
        assert!(!passes(&r, 1.0));
        assert!(!passes(&r, 0.0), "not even with a threshold of 0");
        // 10 MB inside an 8 s window: 10 Mbit/s, whatever came before.
        let (mbps, moved) = window_goodput(50_000_000, 60_000_000, Duration::from_secs(8));
        assert_eq!(moved, 10_000_000);
        assert!((mbps - 10.0).abs() < 1e-9, "{mbps}");
        assert!(passes(&report(mbps, moved), 10.0));
        assert!(!passes(&report(mbps, moved), 10.01));
        // A counter that went backwards (cannot happen) moves nothing.
        assert_eq!(window_goodput(10, 5, Duration::from_secs(1)).1, 0);
        assert_eq!(window_goodput(0, 5, Duration::ZERO).0, 0.0);
    }

    #[test]
    fn keyed_request_paths() {
        assert_eq!(
            keyed_path("/", "ab", Some(5)),
            "/speed/down?nonce=ab&bytes=5"
        );
        assert_eq!(keyed_path("", "ab", None), "/speed/up?nonce=ab");
        assert_eq!(keyed_path("/cx/", "ab", None), "/cx/speed/up?nonce=ab");
        let ep = keyed::SpeedEndpoint::new(
            keyed::SpeedKey::from_bytes([3; 32]),
            keyed::EndpointLimits::default(),
        );
        let nonce = keyed::SpeedKey::from_bytes([3; 32])
            .issue(std::time::SystemTime::now(), Duration::from_secs(60))
            .unwrap();
        let peer: IpAddr = "192.0.2.9".parse().unwrap();
        // What the tester asks is what the endpoint grants.
        let down = keyed_path("/", &nonce, Some(1000));
        let (_, q) = down.split_once('?').unwrap();
        assert_eq!(ep.download(q, peer).unwrap().bytes, 1000);
        let up = keyed_path("/", &nonce, None);
        let (_, q) = up.split_once('?').unwrap();
        assert_eq!(ep.upload(q, Some(256 << 20), peer), Ok(256 << 20));
    }

    #[tokio::test]
    async fn host_names_resolve_on_this_host() {
        let ip = resolve_here("localhost", 80).await.unwrap();
        assert!(ip.is_loopback(), "{ip}");
    }

    #[test]
    fn only_unverified_plain_http_targets_are_spoofable() {
        let mut c = SpeedConfig {
            download_urls: vec!["http://a/x".into(), "https://b/y".into()],
            upload_url: Some("http://c/up".into()),
            ..SpeedConfig::default()
        };
        assert_eq!(c.spoofable_urls(), vec!["http://a/x", "http://c/up"]);
        c.keyed = Some(KeyedTarget::new(
            "http://me:8080/",
            keyed::SpeedKey::from_bytes([1; 32]),
        ));
        assert_eq!(c.keyed.as_ref().unwrap().base_url, "http://me:8080");
        assert_eq!(c.spoofable_urls(), vec!["http://c/up"]);
        c.keyed.as_mut().unwrap().upload = true;
        assert!(c.spoofable_urls().is_empty());
        assert!(
            SpeedConfig::default().spoofable_urls().is_empty(),
            "the default is https"
        );
    }
}
