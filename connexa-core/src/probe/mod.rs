//! The network [`Prober`]: the light test (PPTP control-channel handshake) plus
//! optional ICMP latency.
//!
//! [`LightProber`] drives the sans-IO [`LightHandshake`] over a tokio
//! `TcpStream`: TCP connect (own timeout), Start-Control-Connection-Request,
//! read the reply (own timeout), then a polite Stop-Control-Connection-Request.
//! ICMP echo runs at the same time and only ever adds `ping_ms`.
//!
//! ```no_run
//! # async fn demo() {
//! use connexa_core::probe::{LightProber, ProbeConfig};
//! let prober = LightProber::new(ProbeConfig::default());
//! let outcome = prober.probe_addr("127.0.0.1:1723".parse().unwrap()).await.unwrap();
//! println!("{:?} {:?}", outcome.reached, outcome.failure);
//! # }
//! ```

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::domain::{Failure, Level, Measurements, Node, Outcome, Secret};
use crate::ports::{ProbeDepth, ProbeError, Prober};
use crate::pptp::control::{HandshakeConfig, HandshakeResult, LightHandshake};
use crate::tunnel::{self, AuthConfig, GreSocket, LoginReport, SharedGre, ipv4_only, retrying};

mod icmp;

pub use icmp::{IcmpConfig, IcmpPinger, PingStats};

/// Settings of a [`LightProber`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeConfig {
    /// Time allowed for the TCP connection to complete.
    pub connect_timeout: Duration,
    /// Time allowed from the request to the Start-Control-Connection-Reply.
    pub handshake_timeout: Duration,
    /// Time granted to the server's Stop-Control-Connection-Reply (politeness only;
    /// it never changes the outcome).
    pub stop_timeout: Duration,
    /// Tries before declaring a transport failure (at least 1).
    pub attempts: u32,
    /// Pause before the second try; doubled for each further try.
    pub backoff: Duration,
    /// ICMP echo settings; `None` turns ICMP off.
    pub icmp: Option<IcmpConfig>,
    /// Host name we announce in the request.
    pub host_name: String,
    /// Vendor we announce in the request.
    pub vendor: String,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            connect_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(5),
            stop_timeout: Duration::from_millis(300),
            attempts: 2,
            backoff: Duration::from_millis(250),
            icmp: Some(IcmpConfig::default()),
            host_name: "connexa".into(),
            vendor: "connexa".into(),
        }
    }
}

/// The light-depth [`Prober`].
///
/// * `reached: Level::Light` with `connect_ms`, `handshake_ms`, the server's
///   [`PptpIdentity`](crate::domain::PptpIdentity) and `ping_ms` (ICMP mean, or
///   the handshake time when ICMP is off, unavailable or unanswered);
/// * or `reached: Level::None` with one of [`Failure::Refused`],
///   [`Failure::ConnectTimeout`], [`Failure::Reset`], [`Failure::ClosedEarly`],
///   [`Failure::NotPptp`], [`Failure::BadReply`], [`Failure::HandshakeTimeout`],
///   [`Failure::ControlRejected`] (result codes 2..=5, see
///   [`control_result_meaning`](crate::domain::control_result_meaning)).
///
/// Transport failures (refused, timeouts, reset, closed early) are retried up to
/// [`ProbeConfig::attempts`] times with a short back-off; a server that answered
/// (rejected, not PPTP, bad reply) is not asked again.
///
/// At [`ProbeDepth::Auth`] it logs in with the node's credentials
/// ([`tunnel::login`]: call, LCP, MS-CHAPv2 over GRE, polite
/// teardown) and returns
///
/// * `reached: Level::Auth` (`ping_ok`) when the server accepted the credentials
///   and proved it knows them (authenticator response verified);
/// * `reached: Level::Light` with [`Failure::AuthRejected`] (`auth_failed`; the
///   server's `E=` code, 691 for a wrong password, `None` when the server sent no
///   code), or with the precise failure of a later phase: [`Failure::CallRejected`],
///   [`Failure::LcpFailed`] (including a server that never answers LCP),
///   [`Failure::AuthTimeout`], [`Failure::TunnelFailed`], [`Failure::BadReply`];
/// * `reached: Level::None` with the light test's failures.
///
/// It needs a raw GRE socket, opened on the first auth probe (in the network
/// namespace of that thread) or shared with [`LightProber::with_gre`].
/// Without `CAP_NET_RAW` every auth probe returns
/// `Err(ProbeError::NotPermitted(..))` at once, before any traffic, so no node
/// is marked.
#[derive(Debug)]
pub struct LightProber {
    config: ProbeConfig,
    icmp: Option<IcmpPinger>,
    auth: AuthConfig,
    gre: SharedGre,
}

struct Attempt {
    result: Result<HandshakeResult, Failure>,
    connect_ms: Option<f64>,
    /// Set when the attempt failed because of this machine (no sockets left).
    local_error: Option<String>,
}

impl LightProber {
    /// A prober with these settings. ICMP sockets are opened on first use.
    pub fn new(config: ProbeConfig) -> Self {
        let icmp = config.icmp.clone().map(IcmpPinger::new);
        let auth = AuthConfig {
            connect_timeout: config.connect_timeout,
            handshake_timeout: config.handshake_timeout,
            host_name: config.host_name.clone(),
            vendor: config.vendor.clone(),
            ..AuthConfig::default()
        };
        LightProber {
            config,
            icmp,
            auth,
            gre: SharedGre::new(),
        }
    }

    /// Replaces the settings of the auth test (its connect and handshake
    /// timeouts default to the light test's).
    #[must_use]
    pub fn with_auth_config(mut self, auth: AuthConfig) -> Self {
        self.auth = auth;
        self
    }

    /// Uses this raw GRE socket for auth probes instead of opening one on
    /// first use (share one socket between all probers of a process).
    #[must_use]
    pub fn with_gre_socket(self, gre: Arc<GreSocket>) -> Self {
        self.with_gre(SharedGre::with_socket(gre))
    }

    /// Uses this shared GRE handle for auth probes (the one
    /// [`NetworkPorts`](crate::runtime::NetworkPorts) hands to the prober,
    /// the speed tester and the service opener).
    #[must_use]
    pub fn with_gre(mut self, gre: SharedGre) -> Self {
        self.gre = gre;
        self
    }

    /// The GRE handle this prober uses.
    pub fn gre(&self) -> &SharedGre {
        &self.gre
    }

    /// The settings of the auth test.
    pub fn auth_config(&self) -> &AuthConfig {
        &self.auth
    }

    /// The raw GRE socket, opened now if needed.
    ///
    /// # Errors
    /// [`ProbeError::NotPermitted`] without `CAP_NET_RAW`.
    pub async fn gre_socket(&self) -> Result<&Arc<GreSocket>, ProbeError> {
        self.gre.get().await
    }

    /// The auth test of the PPTP server at `addr` with these credentials
    /// (see the type's docs for the outcomes).
    ///
    /// # Errors
    /// No raw GRE socket ([`ProbeError::NotPermitted`] without `CAP_NET_RAW`),
    /// an IPv6 address, or this machine ran out of sockets: the node must not
    /// be marked.
    pub async fn probe_auth(
        &self,
        addr: SocketAddr,
        username: &str,
        password: &Secret,
    ) -> Result<Outcome, ProbeError> {
        let v4 = ipv4_only(addr)?;
        let gre = Arc::clone(self.gre_socket().await?);
        let ping = async {
            match &self.icmp {
                Some(p) => p.ping(addr.ip()).await,
                None => None,
            }
        };
        let attempts = retrying(
            self.config.attempts,
            self.config.backoff,
            || tunnel::login(&gre, v4, username, password, &self.auth),
            LoginReport::is_transient,
        );
        let (report, ping) = tokio::join!(attempts, ping);
        if let Some(e) = report.local_error {
            return Err(ProbeError::Config(format!(
                "local resources exhausted ({e}): raise the open-file limit or lower the concurrency"
            )));
        }
        let mut m = Measurements {
            connect_ms: report.connect_ms,
            handshake_ms: report.handshake_ms,
            pptp: report.pptp,
            ..Measurements::default()
        };
        m.ping_ms = ping.and_then(|s| s.avg_ms).or(report.handshake_ms);
        tracing::debug!(%addr, reached = ?report.reached, failure = ?report.failure,
            teardown = ?report.teardown, login_ms = ?report.login_ms, "auth probe");
        let outcome = match report.failure {
            None if report.reached == Level::Auth => Outcome::success(Level::Auth),
            None => Outcome::failed(
                report.reached,
                Failure::Other {
                    detail: "login ended without a result".into(),
                },
            ),
            Some(f) => Outcome::failed(report.reached.min(Level::Light), f),
        };
        Ok(outcome.with_measurements(m))
    }

    /// The settings.
    pub fn config(&self) -> &ProbeConfig {
        &self.config
    }

    /// The light test of the PPTP server at `addr` (ICMP goes to `addr`'s IP only).
    ///
    /// `Err` only when this machine ran out of sockets or file descriptors: that
    /// says nothing about the node, which must not be marked.
    pub async fn probe_addr(&self, addr: SocketAddr) -> Result<Outcome, ProbeError> {
        let ping = async {
            match &self.icmp {
                Some(p) => p.ping(addr.ip()).await,
                None => None,
            }
        };
        let (attempt, ping) = tokio::join!(self.handshake_with_retries(addr), ping);
        if let Some(e) = attempt.local_error {
            return Err(ProbeError::Config(format!(
                "local resources exhausted ({e}): raise the open-file limit or lower the concurrency"
            )));
        }
        let mut m = Measurements {
            connect_ms: attempt.connect_ms,
            ..Measurements::default()
        };
        if let Some(stats) = ping {
            tracing::debug!(%addr, received = stats.received, sent = stats.sent, loss = stats.loss(), "icmp");
            m.ping_ms = stats.avg_ms;
        }
        match attempt.result {
            Ok(HandshakeResult::Established { reply, rtt }) => {
                let handshake_ms = rtt.as_secs_f64() * 1000.0;
                m.handshake_ms = Some(handshake_ms);
                m.ping_ms = m.ping_ms.or(Some(handshake_ms));
                m.pptp = Some(reply.identity());
                Ok(Outcome::success(Level::Light).with_measurements(m))
            }
            Ok(HandshakeResult::Failed(f)) | Err(f) => {
                Ok(Outcome::failed(Level::None, f).with_measurements(m))
            }
        }
    }

    async fn handshake_with_retries(&self, addr: SocketAddr) -> Attempt {
        retrying(
            self.config.attempts,
            self.config.backoff,
            || self.attempt(addr),
            |a: &Attempt| {
                a.local_error.is_none()
                    && match &a.result {
                        Ok(HandshakeResult::Established { .. }) => false,
                        Ok(HandshakeResult::Failed(f)) | Err(f) => f.is_transient(),
                    }
            },
        )
        .await
    }

    async fn attempt(&self, addr: SocketAddr) -> Attempt {
        let start = Instant::now();
        let stream =
            match tokio::time::timeout(self.config.connect_timeout, TcpStream::connect(addr)).await
            {
                Err(_) => {
                    return Attempt {
                        result: Err(Failure::ConnectTimeout),
                        connect_ms: None,
                        local_error: None,
                    };
                }
                Ok(Err(e)) => {
                    return Attempt {
                        result: Err(connect_failure(&e)),
                        connect_ms: None,
                        local_error: is_local_exhaustion(&e).then(|| e.to_string()),
                    };
                }
                Ok(Ok(s)) => s,
            };
        let connect_ms = Some(start.elapsed().as_secs_f64() * 1000.0);
        let _ = stream.set_nodelay(true);
        let hs = LightHandshake::new(
            HandshakeConfig {
                handshake_timeout: self.config.handshake_timeout,
                stop_timeout: self.config.stop_timeout,
                host_name: self.config.host_name.clone(),
                vendor: self.config.vendor.clone(),
            },
            Instant::now(),
        );
        Attempt {
            result: drive(stream, hs).await,
            connect_ms,
            local_error: None,
        }
    }
}

/// Runs the handshake over the stream until it is done. An I/O error before the
/// result is known is the result; after it, it only ends the polite stop.
async fn drive(mut stream: TcpStream, mut hs: LightHandshake) -> Result<HandshakeResult, Failure> {
    let mut buf = [0u8; 1024];
    loop {
        while let Some(bytes) = hs.poll_transmit() {
            if let Err(e) = stream.write_all(&bytes).await {
                return hs.take_result().ok_or_else(|| io_failure(&e));
            }
        }
        if hs.is_done() {
            break;
        }
        let Some(deadline) = hs.poll_timeout() else {
            break;
        };
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) => hs.handle_eof(Instant::now()),
                Ok(n) => hs.handle_input(&buf[..n], Instant::now()),
                Err(e) => return hs.take_result().ok_or_else(|| io_failure(&e)),
            },
            () = tokio::time::sleep_until(deadline.into()) => hs.handle_timeout(Instant::now()),
        }
    }
    Ok(hs
        .take_result()
        .unwrap_or(HandshakeResult::Failed(Failure::ClosedEarly)))
}

fn connect_failure(e: &io::Error) -> Failure {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => Failure::Refused,
        io::ErrorKind::TimedOut => Failure::ConnectTimeout,
        _ => io_failure(e),
    }
}

fn io_failure(e: &io::Error) -> Failure {
    match e.kind() {
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => Failure::Reset,
        io::ErrorKind::BrokenPipe | io::ErrorKind::UnexpectedEof => Failure::ClosedEarly,
        _ => Failure::Other {
            detail: e.to_string(),
        },
    }
}

/// `true` for errors that are about this machine, not the node: out of file
/// descriptors (EMFILE, ENFILE), of local ports (EADDRNOTAVAIL) or of buffers (ENOBUFS).
fn is_local_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(23 | 24 | 99 | 105))
}

#[async_trait]
impl Prober for LightProber {
    async fn probe(&self, node: &Node, depth: ProbeDepth) -> Result<Outcome, ProbeError> {
        match depth {
            ProbeDepth::Light => self.probe_addr(SocketAddr::new(node.ip, node.port)).await,
            ProbeDepth::Auth => {
                self.probe_auth(
                    SocketAddr::new(node.ip, node.port),
                    &node.login,
                    &node.password,
                )
                .await
            }
        }
    }
}
