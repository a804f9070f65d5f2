//! A simulated PPTP fleet on loopback (feature `sim`), for demos, tests and
//! benchmarks.
//!
//! [`Fleet::start`] binds one PPTP responder per node on its own loopback
//! address (`127.1.0.1`, `127.1.0.2`, ... by default — never `0.0.0.0`), each
//! with a [`Behaviour`]: healthy, refused (no listener), silent, slow, garbage,
//! a wrong result code, or one of the login behaviours (rejected password,
//! rejected call, silent LCP, silent authentication). One tokio task per
//! listener, one per connection. [`Fleet::write_node_list`] writes the fleet in
//! the `ip:login:password` import format.
//!
//! **Logins.** Every node has its own credentials (`user<i>` / `pass<i>`, as
//! written to the node list) and answers Outgoing-Call-Requests: the call's PPP
//! runs over GRE through one raw `IPPROTO_GRE` socket of the fleet, which sends
//! with each node's own source address (`IP_HDRINCL`) and demultiplexes by
//! `(destination = node, call id)`, so a client's [`GreSocket`](crate::tunnel::GreSocket)
//! in the same process (demultiplexing by source) and the fleet ignore each
//! other's packets. The node authenticates with [`LoginServer`](crate::pptp::login::LoginServer)
//! (LCP + MS-CHAPv2); after a successful login an optional [`DataPath`] takes
//! the call's other protocols (CCP, IPCP, IP). With [`FleetSpec::tunnels`] the
//! node instead runs the network phase itself ([`SessionServer`](crate::pptp::session::SessionServer):
//! CCP/MPPE-128 and IPCP as a server) with a user-space host behind it:
//! `GET /bytes?N` on [`TUNNEL_HOST`]:80, rate-limited per call
//! ([`TunnelSpec::rate_limit`]), so speed tests have something to measure;
//! with [`TunnelSpec::speed_key`] also the keyed speed endpoint
//! (`GET /speed/down?nonce=..&bytes=N`, [`crate::speed::keyed`]), which a
//! [`Behaviour::FakeSpeed`] node answers with bytes of its own instead.
//! Opening the raw socket needs
//! `CAP_NET_RAW`; without it the fleet still starts ([`Fleet::serves_logins`]
//! is `false`) and answers every call with result 2 (general error).
//!
//! **Shutdown.** [`Fleet::close`] disconnects live calls (Call-Disconnect-Notify),
//! stops every control connection (Stop-Control-Connection-Request) and returns
//! when every task of the fleet has ended; dropping a `Fleet` aborts them all.
//!
//! **File descriptors.** A listener is one descriptor, a connection two (both
//! ends, when the prober is in the same process). 10,000 nodes need more than the
//! usual soft limit of 1024, so [`Fleet::start`] first raises `RLIMIT_NOFILE`'s
//! soft limit to the hard limit ([`raise_fd_limit`]); size the prober's
//! concurrency to what is left.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use connexa_core::sim::{Behaviour, Fleet, FleetSpec};
//! let fleet = Fleet::start(
//!     FleetSpec::new(3)
//!         .first_ip([127, 9, 0, 1].into())
//!         .port(21723)
//!         .mix(vec![(Behaviour::Healthy, 2), (Behaviour::Refused, 1)]),
//! )
//! .await
//! .unwrap();
//! let mut list = Vec::new();
//! fleet.write_node_list(&mut list).unwrap();
//! assert_eq!(String::from_utf8(list).unwrap().lines().count(), 3);
//! # }
//! ```

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::domain::{Node, NodeId, Secret};
use crate::pptp::control::StartControlConnectionReply;

mod gre;
mod host;
mod session;

pub use host::pattern;

use gre::SimGre;
pub use gre::SimGreStats;
use session::NodeServer;

/// How a simulated node behaves.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Behaviour {
    /// A PPTP server that answers the handshake with result 1.
    Healthy,
    /// Nothing listens: the connection is refused.
    Refused,
    /// Accepts the connection and never answers.
    Silent,
    /// Answers correctly after this delay.
    Slow(Duration),
    /// Answers with bytes that are not PPTP (an HTTP error).
    Garbage,
    /// Answers the handshake with this result code (2..=5 are the RFC's errors).
    WrongResultCode(u8),
    /// Logs in, but its password differs from the node list's: MS-CHAPv2
    /// Failure `E=691`.
    AuthReject,
    /// Answers the Outgoing-Call-Request with this result code (2..=7, RFC 2637
    /// §2.8: 7 = do not accept).
    CallReject(u8),
    /// Accepts the call, then never answers LCP.
    LcpSilent,
    /// Accepts the call and negotiates LCP, then falls silent instead of
    /// sending the MS-CHAPv2 Challenge.
    AuthSilent,
    /// Closes its first `n` control connections as soon as they are accepted
    /// (as Debian's pptpd does with a connection that arrives while it reaps a
    /// child), then behaves as [`Behaviour::Healthy`]: a client that retries
    /// transport failures gets in.
    Flaky(u32),
    /// Another behaviour (healthy by default) behind a link that loses and
    /// delays packets ([`Impairment`]); `--mix` names `lossy:P`,
    /// `latency:MS` and combinations such as `auth_reject+lossy:5+latency:150`.
    Impaired(Box<Behaviour>, Impairment),
    /// Healthy, but its tunnel host answers the keyed speed endpoint's
    /// download (`/speed/down`) with bytes of its own (no nonce check): a node
    /// faking a fast link. A verifying speed test fails it with
    /// [`Failure::ContentMismatch`](crate::domain::Failure::ContentMismatch).
    FakeSpeed,
}

/// A node's link conditions ([`Behaviour::Impaired`]).
///
/// **Loss** drops each GRE packet with probability `loss` in each direction
/// (client to node and node to client), from a generator seeded by the
/// fleet's seed, the node and the call, so runs repeat. The control
/// connection is TCP, which does not lose messages but retransmits them: each
/// control message the node answers is held back by one retransmission timeout
/// (`max(200 ms, 3 × latency)`, Linux's minimum RTO and its estimate after a
/// few round trips) with the probability that the request or the reply was
/// lost (`1 - (1 - loss)²`).
///
/// **Latency** is the round-trip time the link adds: every GRE packet and
/// control message the node sends is delayed by it, in order (a delay line,
/// no reordering). Delaying one direction by the whole round trip is the same,
/// for every timer of either side, as delaying both by half.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Impairment {
    /// Probability of losing a packet each way, in parts per million
    /// (`lossy:5` = 50,000).
    pub loss_ppm: u32,
    /// Round-trip time added by the link.
    pub latency: Duration,
}

impl Impairment {
    /// A link losing `percent` % of packets each way (clamped to 0..=100).
    pub fn lossy(percent: f64) -> Self {
        Impairment {
            loss_ppm: (percent.clamp(0.0, 100.0) * 10_000.0).round() as u32,
            latency: Duration::ZERO,
        }
    }

    /// Adds `latency` of round-trip time.
    pub fn with_latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// Whether the link is perfect.
    pub fn is_none(&self) -> bool {
        self.loss_ppm == 0 && self.latency.is_zero()
    }

    /// Loss in per cent.
    pub fn loss_percent(&self) -> f64 {
        f64::from(self.loss_ppm) / 10_000.0
    }

    /// How long a lost control message delays its answer (one retransmission
    /// timeout).
    pub(crate) fn control_rto(&self) -> Duration {
        (self.latency * 3).max(Duration::from_millis(200))
    }
}

impl fmt::Display for Impairment {
    /// `lossy:P+latency:MS`, omitting what is zero (`none` when both are).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if self.loss_ppm > 0 {
            parts.push(format!("lossy:{}", self.loss_percent()));
        }
        if !self.latency.is_zero() {
            parts.push(format!("latency:{}", self.latency.as_millis()));
        }
        if parts.is_empty() {
            return f.write_str("none");
        }
        f.write_str(&parts.join("+"))
    }
}

impl Behaviour {
    /// The behaviour without its link conditions.
    pub fn base(&self) -> &Behaviour {
        match self {
            Behaviour::Impaired(b, _) => b.base(),
            b => b,
        }
    }

    /// The link conditions (none for an unimpaired behaviour).
    pub fn impairment(&self) -> Impairment {
        match self {
            Behaviour::Impaired(_, i) => *i,
            _ => Impairment::default(),
        }
    }

    /// This behaviour behind a link with `impairment` (replacing any earlier one).
    pub fn impaired(self, impairment: Impairment) -> Behaviour {
        let base = self.base().clone();
        if impairment.is_none() {
            base
        } else {
            Behaviour::Impaired(Box::new(base), impairment)
        }
    }
}

impl fmt::Display for Behaviour {
    /// The name [`parse_mix`] reads, e.g. `slow:250` or `call_reject:7`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Behaviour::Healthy => f.write_str("healthy"),
            Behaviour::Refused => f.write_str("refused"),
            Behaviour::Silent => f.write_str("silent"),
            Behaviour::Garbage => f.write_str("garbage"),
            Behaviour::Slow(d) => write!(f, "slow:{}", d.as_millis()),
            Behaviour::WrongResultCode(c) => write!(f, "wrong:{c}"),
            Behaviour::AuthReject => f.write_str("auth_reject"),
            Behaviour::CallReject(c) => write!(f, "call_reject:{c}"),
            Behaviour::LcpSilent => f.write_str("lcp_silent"),
            Behaviour::AuthSilent => f.write_str("auth_silent"),
            Behaviour::Flaky(n) => write!(f, "flaky:{n}"),
            Behaviour::FakeSpeed => f.write_str("fake_speed"),
            Behaviour::Impaired(b, i) => match b.base() {
                Behaviour::Healthy => write!(f, "{i}"),
                b => write!(f, "{b}+{i}"),
            },
        }
    }
}

/// A `--mix` specification could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad fleet mix {given:?}: {why} (expected NAME=WEIGHT,... with NAME one of {MIX_NAMES})")]
#[non_exhaustive]
pub struct BadMix {
    /// The offending part.
    pub given: String,
    /// What is wrong with it.
    pub why: String,
}

/// The behaviour names [`parse_mix`] accepts.
pub const MIX_NAMES: &str = "healthy, refused, silent, garbage, slow[:MILLIS] (default 3000), \
     wrong[:CODE] (default 2), auth_reject, call_reject[:CODE] (default 7), lcp_silent, auth_silent, flaky[:N] (default 1), fake_speed, \
     lossy:PERCENT, latency:MILLIS (joined with + to another behaviour, e.g. auth_reject+lossy:5+latency:150)";

/// Parses a behaviour mix such as `healthy=80,refused=10,silent=5,slow:2000=5`.
///
/// ```
/// use connexa_core::sim::{parse_mix, Behaviour};
/// use std::time::Duration;
/// let mix = parse_mix("healthy=8, slow:250=1,wrong:4=1,auth_reject=2,call_reject=1").unwrap();
/// assert_eq!(mix, vec![
///     (Behaviour::Healthy, 8),
///     (Behaviour::Slow(Duration::from_millis(250)), 1),
///     (Behaviour::WrongResultCode(4), 1),
///     (Behaviour::AuthReject, 2),
///     (Behaviour::CallReject(7), 1),
/// ]);
/// // Every behaviour's name reads back.
/// for (b, _) in &mix {
///     assert_eq!(&parse_mix(&format!("{b}=1")).unwrap()[0].0, b);
/// }
/// assert_eq!(parse_mix("fake_speed=1").unwrap(), vec![(Behaviour::FakeSpeed, 1)]);
/// assert_eq!(Behaviour::FakeSpeed.to_string(), "fake_speed");
/// assert!(parse_mix("fake_speed:3=1").is_err());
/// assert!(parse_mix("healthy=8,sleepy=2").is_err());
/// ```
pub fn parse_mix(text: &str) -> Result<Vec<(Behaviour, u32)>, BadMix> {
    let bad = |given: &str, why: &str| BadMix {
        given: given.to_owned(),
        why: why.to_owned(),
    };
    let mut mix = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, weight) = part
            .split_once('=')
            .ok_or_else(|| bad(part, "missing =WEIGHT"))?;
        let weight: u32 = weight
            .trim()
            .parse()
            .map_err(|_| bad(part, "the weight is not a whole number"))?;
        let mut base: Option<Behaviour> = None;
        let mut impairment = Impairment::default();
        for word in name.split('+') {
            match parse_word(word, part)? {
                Word::Loss(ppm) if impairment.loss_ppm == 0 => impairment.loss_ppm = ppm,
                Word::Latency(d) if impairment.latency.is_zero() => impairment.latency = d,
                Word::Behaviour(b) if base.is_none() => base = Some(b),
                _ => {
                    return Err(bad(
                        part,
                        "each of behaviour, lossy and latency may appear once",
                    ));
                }
            }
        }
        let behaviour = base.unwrap_or(Behaviour::Healthy).impaired(impairment);
        mix.push((behaviour, weight));
    }
    if mix.is_empty() || mix.iter().all(|(_, w)| *w == 0) {
        return Err(bad(text, "no behaviour with a weight above 0"));
    }
    Ok(mix)
}

/// One `+`-separated word of a `--mix` name.
enum Word {
    Behaviour(Behaviour),
    Loss(u32),
    Latency(Duration),
}

fn parse_word(word: &str, part: &str) -> Result<Word, BadMix> {
    let bad = |why: &str| BadMix {
        given: part.to_owned(),
        why: why.to_owned(),
    };
    let (name, arg) = match word.trim().split_once(':') {
        Some((n, a)) => (n.trim(), Some(a.trim())),
        None => (word.trim(), None),
    };
    let num = |default: u64| -> Result<u64, BadMix> {
        match arg {
            None => Ok(default),
            Some(a) => a.parse().map_err(|_| bad("the argument is not a number")),
        }
    };
    let behaviour = match name.to_ascii_lowercase().as_str() {
        "lossy" => {
            let percent: f64 = arg
                .ok_or_else(|| bad("lossy needs a percentage, e.g. lossy:5"))?
                .parse()
                .ok()
                .filter(|p: &f64| (0.0..=100.0).contains(p))
                .ok_or_else(|| bad("the loss must be a percentage 0..=100"))?;
            return Ok(Word::Loss(Impairment::lossy(percent).loss_ppm));
        }
        "latency" => {
            let ms = arg.ok_or_else(|| bad("latency needs milliseconds, e.g. latency:150"))?;
            let ms: u64 = ms
                .parse()
                .ok()
                .filter(|ms| *ms <= 60_000)
                .ok_or_else(|| bad("the latency must be 0..=60000 milliseconds"))?;
            return Ok(Word::Latency(Duration::from_millis(ms)));
        }
        "healthy" if arg.is_none() => Behaviour::Healthy,
        "refused" if arg.is_none() => Behaviour::Refused,
        "silent" if arg.is_none() => Behaviour::Silent,
        "garbage" if arg.is_none() => Behaviour::Garbage,
        "slow" => Behaviour::Slow(Duration::from_millis(num(3000)?)),
        "wrong" => {
            let code = u8::try_from(num(2)?)
                .ok()
                .filter(|c| (2..=255).contains(c))
                .ok_or_else(|| bad("the result code must be 2..=255"))?;
            Behaviour::WrongResultCode(code)
        }
        "call_reject" => {
            let code = u8::try_from(num(7)?)
                .ok()
                .filter(|c| (2..=255).contains(c))
                .ok_or_else(|| bad("the result code must be 2..=255"))?;
            Behaviour::CallReject(code)
        }
        "auth_reject" if arg.is_none() => Behaviour::AuthReject,
        "lcp_silent" if arg.is_none() => Behaviour::LcpSilent,
        "auth_silent" if arg.is_none() => Behaviour::AuthSilent,
        "fake_speed" if arg.is_none() => Behaviour::FakeSpeed,
        "flaky" => {
            Behaviour::Flaky(u32::try_from(num(1)?).map_err(|_| bad("the count is too large"))?)
        }
        "healthy" | "refused" | "silent" | "garbage" | "auth_reject" | "lcp_silent"
        | "auth_silent" | "fake_speed" => {
            return Err(bad("this behaviour takes no argument"));
        }
        _ => return Err(bad("unknown behaviour")),
    };
    Ok(Word::Behaviour(behaviour))
}

/// What to simulate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetSpec {
    /// Number of nodes.
    pub count: usize,
    /// Behaviours and their weights; nodes are assigned in proportion (largest
    /// remainder) and shuffled deterministically by `seed`.
    pub mix: Vec<(Behaviour, u32)>,
    /// Address of the first node; node `i` gets `first_ip + i`. Must be in 127.0.0.0/8.
    pub first_ip: Ipv4Addr,
    /// Control port every node listens on.
    pub port: u16,
    /// Host name the responders announce.
    pub host_name: String,
    /// Vendor the responders announce.
    pub vendor: String,
    /// Seed of the shuffle.
    pub seed: u64,
    /// Serve logins (calls, LCP, MS-CHAPv2 over GRE). Needs `CAP_NET_RAW`;
    /// without it the fleet starts anyway, light only ([`Fleet::serves_logins`]).
    /// Default `true`.
    pub logins: bool,
    /// After a successful login, run the network phase too (server-side
    /// CCP/MPPE and IPCP) with an HTTP byte source behind each node; `None`
    /// (the default): logins only.
    pub tunnels: Option<TunnelSpec>,
}

/// The tunnel behind each simulated node ([`FleetSpec::tunnels`]).
///
/// After login the node negotiates MPPE-128 and IPCP as a server (its tunnel
/// address is [`TUNNEL_HOST`], the client gets 10.78.0.100) and serves
/// `GET /bytes?N` on [`TUNNEL_HOST`]:80: N bytes of [`pattern`], at most
/// `rate_limit` bytes/s per call (a token bucket with a tenth of a second of
/// burst). Up to 4 HTTP connections per call at once.
///
/// With `speed_key` the host also serves the keyed speed endpoint
/// (`GET /speed/down?nonce=..&bytes=N`): the nonce is checked with the key
/// and the body is its keyed stream, the client's address echoed in
/// `X-Connexa-Client-Addr` — what `connexa-http` serves, so a tester with
/// `self_url = "http://10.78.0.1"` and the same key passes honest nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TunnelSpec {
    /// Bytes per second of each call's HTTP bodies; `None`: unlimited.
    pub rate_limit: Option<u64>,
    /// The key of the keyed speed endpoint; `None`: `/speed/down` is `404`.
    pub speed_key: Option<crate::speed::keyed::SpeedKey>,
}

/// The address of the host behind every simulated node's tunnel.
pub const TUNNEL_HOST: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 1);

impl FleetSpec {
    /// `count` healthy nodes from 127.1.0.1, port 1723.
    pub fn new(count: usize) -> Self {
        FleetSpec {
            count,
            mix: vec![(Behaviour::Healthy, 1)],
            first_ip: Ipv4Addr::new(127, 1, 0, 1),
            port: crate::domain::DEFAULT_PORT,
            host_name: "sim".into(),
            vendor: "connexa-sim".into(),
            seed: 1,
            logins: true,
            tunnels: None,
        }
    }

    /// Serves tunnels after login ([`TunnelSpec`]).
    pub fn tunnels(mut self, spec: TunnelSpec) -> Self {
        self.tunnels = Some(spec);
        self
    }

    /// Turns serving logins on or off (no raw GRE socket when off).
    pub fn logins(mut self, on: bool) -> Self {
        self.logins = on;
        self
    }

    /// Sets the behaviour mix.
    pub fn mix(mut self, mix: Vec<(Behaviour, u32)>) -> Self {
        self.mix = mix;
        self
    }

    /// Sets the first address.
    pub fn first_ip(mut self, ip: Ipv4Addr) -> Self {
        self.first_ip = ip;
        self
    }

    /// Sets the port.
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// The behaviour of each node, in node order.
    pub fn behaviours(&self) -> Vec<Behaviour> {
        let total: u64 = self.mix.iter().map(|(_, w)| u64::from(*w)).sum();
        if total == 0 || self.count == 0 {
            return vec![Behaviour::Healthy; self.count];
        }
        let n = self.count as u64;
        let mut counts: Vec<(usize, u64, u64)> = self
            .mix
            .iter()
            .enumerate()
            .map(|(i, (_, w))| {
                let exact = n * u64::from(*w);
                (i, exact / total, exact % total)
            })
            .collect();
        let assigned: u64 = counts.iter().map(|c| c.1).sum();
        let mut by_remainder: Vec<usize> = (0..counts.len()).collect();
        by_remainder.sort_by(|a, b| counts[*b].2.cmp(&counts[*a].2).then(a.cmp(b)));
        for i in by_remainder.into_iter().take((n - assigned) as usize) {
            counts[i].1 += 1;
        }
        let mut out = Vec::with_capacity(self.count);
        for (i, c, _) in counts {
            out.extend(std::iter::repeat_n(self.mix[i].0.clone(), c as usize));
        }
        // Fisher-Yates with splitmix64: deterministic, no dependency.
        let mut state = self.seed;
        let mut next = || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        for i in (1..out.len()).rev() {
            let j = (next() % (i as u64 + 1)) as usize;
            out.swap(i, j);
        }
        out
    }
}

/// One simulated node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimNode {
    /// Its loopback address.
    pub ip: Ipv4Addr,
    /// Its control port.
    pub port: u16,
    /// Login written to the node list.
    pub login: String,
    /// Password written to the node list.
    pub password: Secret,
    /// How it behaves.
    pub behaviour: Behaviour,
}

impl SimNode {
    /// The control address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.ip), self.port)
    }

    /// The node as a fresh, untested store row with this id (for probing without a store).
    pub fn node(&self, id: NodeId) -> Node {
        let now = Utc::now();
        Node::added(
            id,
            IpAddr::V4(self.ip),
            self.port,
            self.login.clone(),
            self.password.clone(),
            now,
        )
    }
}

/// The data path of a simulated call after a successful login: it receives
/// every PPP frame (a GRE payload) whose protocol is neither LCP nor CHAP —
/// CCP, IPCP, IP, ... — and sends frames back through the call. Sans-IO, like
/// [`LoginServer`](crate::pptp::login::LoginServer).
pub trait DataPath: Send {
    /// A PPP frame arrived.
    fn handle_frame(&mut self, frame: &[u8], now: Instant);
    /// The next PPP frame to send.
    fn poll_transmit(&mut self) -> Option<Vec<u8>>;
    /// When [`DataPath::handle_timeout`] must be called next.
    fn poll_timeout(&self) -> Option<Instant>;
    /// Timers.
    fn handle_timeout(&mut self, now: Instant);
}

/// Makes the [`DataPath`] of a call once `user` has logged in to `node`.
pub type DataPathFactory =
    Arc<dyn Fn(&SimNode, String, Instant) -> Box<dyn DataPath> + Send + Sync>;

/// Why a fleet could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// The addresses would leave 127.0.0.0/8 (or reach 127.255.255.255).
    #[error("{count} nodes from {first} do not fit in 127.0.0.0/8")]
    OutOfLoopback {
        /// First address.
        first: Ipv4Addr,
        /// Nodes asked for.
        count: usize,
    },
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: io::Error,
    },
}

/// How long [`Fleet::close`] lets connections say goodbye before aborting them.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// A running simulated fleet. [`Fleet::close`] stops it politely; dropping it
/// aborts every task at once.
pub struct Fleet {
    nodes: Vec<SimNode>,
    tasks: Vec<JoinHandle<()>>,
    stop: watch::Sender<bool>,
    gre: Option<Arc<SimGre>>,
    gre_error: Option<String>,
}

impl fmt::Debug for Fleet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fleet")
            .field("nodes", &self.nodes.len())
            .field("tasks", &self.tasks.len())
            .field("serves_logins", &self.gre.is_some())
            .finish_non_exhaustive()
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the new soft limit.
pub fn raise_fd_limit() -> io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

impl Fleet {
    /// Raises the fd limit ([`raise_fd_limit`]), opens the fleet's raw GRE
    /// socket (if [`FleetSpec::logins`]), then binds every node's responder.
    pub async fn start(spec: FleetSpec) -> Result<Fleet, SimError> {
        Self::start_with(spec, None).await
    }

    /// As [`Fleet::start`]; after a successful login each call hands its other
    /// protocols to a [`DataPath`] made by `data_path`.
    pub async fn start_with_data_path(
        spec: FleetSpec,
        data_path: DataPathFactory,
    ) -> Result<Fleet, SimError> {
        Self::start_with(spec, Some(data_path)).await
    }

    async fn start_with(
        spec: FleetSpec,
        data_path: Option<DataPathFactory>,
    ) -> Result<Fleet, SimError> {
        let first = u32::from(spec.first_ip);
        let last = u64::from(first) + spec.count as u64;
        if spec.first_ip.octets()[0] != 127
            || last > u64::from(u32::from_be_bytes([127, 255, 255, 255]))
        {
            return Err(SimError::OutOfLoopback {
                first: spec.first_ip,
                count: spec.count,
            });
        }
        match raise_fd_limit() {
            Ok(n) => tracing::debug!(limit = n, "RLIMIT_NOFILE soft limit raised"),
            Err(e) => tracing::warn!(error = %e, "cannot raise RLIMIT_NOFILE"),
        }
        let behaviours = spec.behaviours();
        let ips: Vec<Ipv4Addr> = (0..spec.count)
            .map(|i| Ipv4Addr::from(first + i as u32))
            .collect();
        let (stop, _) = watch::channel(false);
        let mut tasks = Vec::with_capacity(spec.count + 1);
        let (gre, gre_error) = if spec.logins && spec.count > 0 {
            // The client's own address (127.0.0.1) must not be a node: both
            // directions of a call would look alike (see `gre`).
            let nodes: HashSet<Ipv4Addr> = ips
                .iter()
                .copied()
                .filter(|ip| *ip != Ipv4Addr::LOCALHOST)
                .collect();
            match SimGre::open(nodes) {
                Ok(g) => {
                    tasks.push(tokio::spawn(Arc::clone(&g).read_loop()));
                    (Some(g), None)
                }
                Err(e) => {
                    let why = if e.kind() == io::ErrorKind::PermissionDenied {
                        crate::tunnel::NEED_CAP_NET_RAW.to_owned()
                    } else {
                        format!("cannot open a raw GRE socket: {e}")
                    };
                    // Info, not warn: callers read it from `logins_unavailable()`
                    // and say it once in their own words.
                    tracing::info!(reason = %why, "simulated fleet serves no logins");
                    (None, Some(why))
                }
            }
        } else {
            (None, None)
        };
        let identity = StartControlConnectionReply::success(&spec.host_name, &spec.vendor, 1);
        let mut nodes = Vec::with_capacity(spec.count);
        for (i, (behaviour, ip)) in behaviours.into_iter().zip(ips).enumerate() {
            let node = SimNode {
                ip,
                port: spec.port,
                login: format!("user{i}"),
                password: Secret::new(format!("pass{i}")),
                behaviour: behaviour.clone(),
            };
            if *behaviour.base() != Behaviour::Refused {
                let addr = node.addr();
                let listener = (|| {
                    let s = TcpSocket::new_v4()?;
                    s.set_reuseaddr(true)?;
                    s.bind(addr)?;
                    s.listen(1024)
                })()
                .map_err(|source| SimError::Bind { addr, source })?;
                let server_password = if *behaviour.base() == Behaviour::AuthReject {
                    Secret::new(format!("not-{}", node.password.expose()))
                } else {
                    node.password.clone()
                };
                let server = Arc::new(NodeServer {
                    node: node.clone(),
                    identity: identity.clone(),
                    credentials: Arc::new(HashMap::from([(node.login.clone(), server_password)])),
                    gre: gre.clone(),
                    data_path: data_path.clone(),
                    tunnel: spec.tunnels,
                    accepted: std::sync::atomic::AtomicU32::new(0),
                    seed: spec.seed ^ u64::from(u32::from(ip)).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                });
                tasks.push(tokio::spawn(listen(listener, server, stop.subscribe())));
            }
            nodes.push(node);
        }
        Ok(Fleet {
            nodes,
            tasks,
            stop,
            gre,
            gre_error,
        })
    }

    /// The nodes, in order.
    pub fn nodes(&self) -> &[SimNode] {
        &self.nodes
    }

    /// Whether the nodes answer calls and logins (the raw GRE socket is open).
    pub fn serves_logins(&self) -> bool {
        self.gre.is_some()
    }

    /// Why the fleet serves no logins although [`FleetSpec::logins`] asked for
    /// them (e.g. [`NEED_CAP_NET_RAW`](crate::tunnel::NEED_CAP_NET_RAW)).
    pub fn logins_unavailable(&self) -> Option<&str> {
        self.gre_error.as_deref()
    }

    /// Calls in progress (registered on the GRE socket).
    pub fn live_calls(&self) -> usize {
        self.gre.as_ref().map_or(0, |g| g.live_calls())
    }

    /// Counters of the fleet's GRE socket (`None` when it serves no logins).
    pub fn gre_stats(&self) -> Option<SimGreStats> {
        self.gre.as_ref().map(|g| g.stats())
    }

    /// Writes `ip:login:password` lines, one per node (the port is not part of
    /// this format: it is 1723 unless the spec changed it).
    pub fn write_node_list<W: Write>(&self, mut w: W) -> io::Result<()> {
        for n in &self.nodes {
            writeln!(w, "{}:{}:{}", n.ip, n.login, n.password.expose())?;
        }
        Ok(())
    }

    /// Writes the node list in an import-compatible export `format` (`pptp`
    /// writes `[ip]:port:login:password` when the port is not 1723, `csv` and
    /// `json` carry the port in a column). Returns the number of nodes written.
    pub fn write_list<W: Write>(
        &self,
        format: crate::export::ExportFormat,
        w: W,
    ) -> Result<usize, crate::export::ExportError> {
        let nodes: Vec<Node> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| n.node(NodeId(i as i64 + 1)))
            .collect();
        crate::export::write(format, &nodes, w)
    }

    /// Stops every responder at once (tasks are aborted; see [`Fleet::close`]
    /// for the polite way).
    pub fn shutdown(self) {
        drop(self);
    }

    /// Stops the fleet politely: listeners close, live calls get a
    /// Call-Disconnect-Notify and every control connection a
    /// Stop-Control-Connection-Request; returns once every task of the fleet
    /// has ended (those still busy after 2 s are aborted) and the raw GRE
    /// socket is closed.
    pub async fn close(mut self) {
        let _ = self.stop.send(true);
        let tasks = std::mem::take(&mut self.tasks);
        let (reader, listeners): (Vec<_>, Vec<_>) = match self.gre {
            Some(_) => {
                let mut t = tasks;
                let rest = t.split_off(1.min(t.len()));
                (t, rest)
            }
            None => (Vec::new(), tasks),
        };
        let deadline = tokio::time::Instant::now() + CLOSE_GRACE;
        for mut t in listeners {
            if tokio::time::timeout_at(deadline, &mut t).await.is_err() {
                t.abort();
                let _ = t.await;
            }
        }
        for t in reader {
            t.abort();
            let _ = t.await;
        }
        self.gre = None;
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A node's listener: accepts connections and serves each in its own task.
/// The tasks belong to this one (a [`JoinSet`]): aborting it aborts them.
async fn listen(listener: TcpListener, node: Arc<NodeServer>, mut stop: watch::Receiver<bool>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let node = Arc::clone(&node);
                    let stop = stop.clone();
                    conns.spawn(async move {
                        let _ = session::serve(stream, node, stop).await;
                    });
                }
                // Out of descriptors: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::ExportFormat;
    use crate::import::parse;

    #[test]
    fn mix_errors_name_the_offending_part() {
        for (text, part) in [
            ("healthy", "healthy"),
            ("healthy=x", "healthy=x"),
            ("healthy=1,refused:3=1", "refused:3=1"),
            ("wrong:1=1", "wrong:1=1"),
            ("call_reject:1=1", "call_reject:1=1"),
            ("healthy=1,auth_reject:2=1", "auth_reject:2=1"),
            ("lcp_silent:5=1", "lcp_silent:5=1"),
            ("slow:soon=1", "slow:soon=1"),
            ("healthy=0", "healthy=0"),
            ("", ""),
        ] {
            let e = parse_mix(text).unwrap_err();
            assert_eq!(e.given, part, "{text}");
            assert!(e.to_string().contains("healthy, refused"), "{e}");
        }
        assert_eq!(
            parse_mix(" Healthy = 3 , wrong=1 ").unwrap(),
            vec![(Behaviour::Healthy, 3), (Behaviour::WrongResultCode(2), 1)]
        );
    }

    #[test]
    fn link_conditions_parse_combine_and_read_back() {
        let mix = parse_mix(
            "lossy:5=2,latency:150=1,lossy:2.5+latency:300=1,auth_reject+lossy:5+latency:150=1,\
             latency:100+slow:200=1,lossy:0=1",
        )
        .unwrap();
        let lossy5 = Impairment::lossy(5.0);
        assert_eq!(
            mix,
            vec![
                (Behaviour::Healthy.impaired(lossy5), 2),
                (
                    Behaviour::Healthy
                        .impaired(Impairment::default().with_latency(Duration::from_millis(150))),
                    1
                ),
                (
                    Behaviour::Healthy
                        .impaired(Impairment::lossy(2.5).with_latency(Duration::from_millis(300))),
                    1
                ),
                (
                    Behaviour::AuthReject.impaired(lossy5.with_latency(Duration::from_millis(150))),
                    1
                ),
                (
                    Behaviour::Slow(Duration::from_millis(200))
                        .impaired(Impairment::default().with_latency(Duration::from_millis(100))),
                    1
                ),
                // No loss, no latency: the plain behaviour.
                (Behaviour::Healthy, 1),
            ]
        );
        assert_eq!(mix[0].0.impairment().loss_ppm, 50_000);
        assert_eq!(*mix[3].0.base(), Behaviour::AuthReject);
        for (b, _) in &mix {
            assert_eq!(&parse_mix(&format!("{b}=1")).unwrap()[0].0, b, "{b}");
        }
        assert_eq!(mix[3].0.to_string(), "auth_reject+lossy:5+latency:150");
        assert_eq!(mix[2].0.to_string(), "lossy:2.5+latency:300");
        for bad in [
            "lossy=1",
            "lossy:x=1",
            "lossy:101=1",
            "latency=1",
            "latency:-5=1",
            "latency:60001=1",
            "lossy:1+lossy:2=1",
            "healthy+auth_reject=1",
            "healthy+sleepy=1",
        ] {
            assert!(parse_mix(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn lists_in_every_import_format_read_back_with_the_port() {
        let mut fleet = Fleet::start(
            FleetSpec::new(3)
                .first_ip(Ipv4Addr::new(127, 58, 0, 1))
                .port(0)
                .logins(false)
                .mix(vec![(Behaviour::Refused, 1)]),
        )
        .await
        .unwrap();
        for n in &mut fleet.nodes {
            n.port = 21999;
        }
        for format in [
            ExportFormat::Pptp,
            ExportFormat::Csv,
            ExportFormat::Json,
            ExportFormat::Txt,
        ] {
            let mut out = Vec::new();
            assert_eq!(fleet.write_list(format, &mut out).unwrap(), 3);
            let rows: Vec<_> = parse(&out[..]).map(|r| r.unwrap()).collect();
            assert_eq!(rows.len(), 3, "{format}");
            for (row, sim) in rows.iter().zip(fleet.nodes()) {
                assert_eq!(row.node.ip(), IpAddr::V4(sim.ip), "{format}");
                assert_eq!(row.node.port(), 21999, "{format}");
                assert_eq!(row.node.login(), sim.login, "{format}");
                assert_eq!(row.node.password(), &sim.password, "{format}");
            }
        }
    }
}
