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
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_rustls::TlsConnector;

use crate::config::TestConfig;
use crate::domain::{Failure, Level, Measurements, Node, Outcome};
use crate::ports::{ProbeError, SpeedTester};
use crate::probe::LightProber;
use crate::tunnel::{GreSocket, Tunnel, TunnelConfig, TunnelError, TunnelStream};
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
}

impl Default for SpeedConfig {
    fn default() -> Self {
        SpeedConfig {
            download_urls: vec![TestConfig::default().test_url],
            upload_url: None,
            duration: Duration::from_secs(10),
            streams: 4,
            warmup: Duration::from_secs(2),
            threshold_mbps: 1.0,
            ca_file: None,
            tunnel: TunnelConfig::default(),
            timeout: Duration::from_secs(60),
        }
    }
}

impl SpeedConfig {
    /// The settings of the operator's configuration file (`[test]`).
    pub fn from_test_config(t: &TestConfig) -> Self {
        let mut urls = vec![t.test_url.clone()];
        urls.extend(t.extra_test_urls.iter().cloned());
        SpeedConfig {
            download_urls: urls,
            upload_url: t.upload_url.clone().filter(|u| !u.is_empty()),
            duration: Duration::from_secs_f64(t.speed_duration_secs),
            streams: t.speed_streams.max(1) as usize,
            warmup: Duration::from_secs_f64(t.speed_warmup_secs),
            threshold_mbps: t.speed_threshold_mbps,
            ca_file: t
                .test_ca_file
                .as_deref()
                .filter(|p| !p.is_empty())
                .map(PathBuf::from),
            tunnel: TunnelConfig {
                auth: crate::tunnel::AuthConfig {
                    connect_timeout: t.connect_timeout(),
                    handshake_timeout: t.light_timeout(),
                    auth_timeout: t.auth_timeout(),
                    ..Default::default()
                },
                ..TunnelConfig::default()
            },
            timeout: t.speed_timeout(),
        }
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Down,
    Up,
}

/// Octets of each upload request (never reached within a test; the connection
/// is dropped when the window ends).
const UPLOAD_LENGTH: u64 = 1 << 30;

async fn target(tunnel: &Tunnel, url: &str) -> io::Result<(HttpUrl, SocketAddr)> {
    let u = HttpUrl::parse(url)?;
    let ip = tunnel
        .resolve(&u.host)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, u.host.clone()))?;
    let addr = SocketAddr::new(ip, u.port);
    Ok((u, addr))
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

/// A test endpoint: its URL, address, and the TLS connector for `https://`.
#[derive(Clone)]
struct Target {
    url: HttpUrl,
    addr: SocketAddr,
    tls: Option<TlsConnector>,
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
    let url = &target.url;
    loop {
        let r = async {
            let mut s = target.open(&tunnel).await?;
            http::get(&mut s, url, |d| {
                bytes.fetch_add(d.len() as u64, Ordering::Relaxed);
            })
            .await
        }
        .await;
        if let Err(e) = r {
            if fatal(&tunnel, &e) {
                return e;
            }
            tracing::debug!(error = %e, "speed test download");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

async fn upload_worker(tunnel: Tunnel, target: Target, written: Arc<AtomicU64>) -> io::Error {
    let url = &target.url;
    let chunk = vec![0x5Au8; 16 * 1024];
    loop {
        let r: io::Result<()> = async {
            let mut s = target.open(&tunnel).await?;
            http::post_head(&mut s, url, UPLOAD_LENGTH).await?;
            let mut sent = 0u64;
            while sent < UPLOAD_LENGTH {
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

/// One direction: `streams` workers for `duration`; goodput over the window
/// after the warm-up. Returns (Mbit/s, octets in the window).
async fn phase(tunnel: &Tunnel, cfg: &SpeedConfig, dir: Direction) -> io::Result<(f64, u64)> {
    let urls: Vec<String> = match dir {
        Direction::Down => cfg.download_urls.clone(),
        Direction::Up => cfg.upload_url.iter().cloned().collect(),
    };
    let mut targets = Vec::new();
    let mut connector = None;
    for u in &urls {
        let (url, addr) = target(tunnel, u).await?;
        let tls = if url.tls {
            if connector.is_none() {
                connector = Some(tls::connector(cfg.ca_file.as_deref())?);
            }
            connector.clone()
        } else {
            None
        };
        targets.push(Target { url, addr, tls });
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
    let secs = t2.duration_since(t1).as_secs_f64();
    let moved = b2.saturating_sub(b1);
    if bytes.load(Ordering::Relaxed) == 0 {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no data moved through the tunnel ({})", urls.join(", ")),
        ));
    }
    let mbps = if secs > 0.0 {
        moved as f64 * 8.0 / secs / 1e6
    } else {
        0.0
    };
    Ok((mbps, moved))
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
    let (down_mbps, bytes_down) = phase(tunnel, cfg, Direction::Down).await?;
    let (up_mbps, bytes_up) = if cfg.upload_url.is_some() {
        let (m, b) = phase(tunnel, cfg, Direction::Up).await?;
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
    })
}

/// The network [`SpeedTester`] (see the module docs).
///
/// It needs a raw GRE socket, opened on the first test (in the network
/// namespace of that thread) or given with [`HttpSpeedTester::with_gre_socket`];
/// without `CAP_NET_RAW` every test returns `Err(ProbeError::NotPermitted)`
/// before any traffic, so no node is marked.
#[derive(Debug)]
pub struct HttpSpeedTester {
    config: SpeedConfig,
    gre: tokio::sync::OnceCell<Arc<GreSocket>>,
    prober: Option<Arc<LightProber>>,
}

impl HttpSpeedTester {
    /// A tester with these settings.
    pub fn new(config: SpeedConfig) -> Self {
        HttpSpeedTester {
            config,
            gre: tokio::sync::OnceCell::new(),
            prober: None,
        }
    }

    /// A tester that uses the raw GRE socket of `prober` (opened by whichever
    /// of the two needs it first), so that auth and speed tests of one process
    /// share one socket and one call-id space, as they must
    /// (see [`tunnel`](crate::tunnel)).
    pub fn sharing_gre_with(config: SpeedConfig, prober: Arc<LightProber>) -> Self {
        HttpSpeedTester {
            config,
            gre: tokio::sync::OnceCell::new(),
            prober: Some(prober),
        }
    }

    /// A tester sharing the process's raw GRE socket (one per process).
    pub fn with_gre_socket(config: SpeedConfig, gre: Arc<GreSocket>) -> Self {
        HttpSpeedTester {
            config,
            gre: tokio::sync::OnceCell::new_with(Some(gre)),
            prober: None,
        }
    }

    /// The settings.
    pub fn config(&self) -> &SpeedConfig {
        &self.config
    }

    /// Tests one node: tunnel, latency, download, upload, polite close.
    ///
    /// # Errors
    /// The test could not run here (no `CAP_NET_RAW`, IPv6 node).
    pub async fn measure_node(&self, node: &Node) -> Result<Outcome, ProbeError> {
        let started = Instant::now();
        let gre = match &self.prober {
            Some(p) => Arc::clone(p.gre_socket().await?),
            None => self
                .gre
                .get_or_try_init(|| async { GreSocket::open() })
                .await?
                .clone(),
        };
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
        let outcome = if report.down_mbps >= self.config.threshold_mbps {
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
