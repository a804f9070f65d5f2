//! A simulated PPTP fleet on loopback (feature `sim`), for demos, tests and
//! benchmarks.
//!
//! [`Fleet::start`] binds one PPTP responder per node on its own loopback
//! address (`127.1.0.1`, `127.1.0.2`, ... by default — never `0.0.0.0`), each
//! with a [`Behaviour`]: healthy, refused (no listener), silent, slow, garbage,
//! or a wrong result code. One tokio task per listener, one per connection.
//! [`Fleet::write_node_list`] writes the fleet in the `ip:login:password` import
//! format.
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

use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use chrono::Utc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;

use crate::domain::{Node, NodeId, NodeMeta, Secret, Status};
use crate::pptp::control::{
    ControlMessage, EchoReply, Framer, StartControlConnectionReply, StopControlConnectionReply,
};

/// How a simulated node behaves. Later issues add login and tunnel behaviours.
#[derive(Debug, Clone, PartialEq, Eq)]
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
pub const MIX_NAMES: &str =
    "healthy, refused, silent, garbage, slow[:MILLIS] (default 3000), wrong[:CODE] (default 2)";

/// Parses a behaviour mix such as `healthy=80,refused=10,silent=5,slow:2000=5`.
///
/// ```
/// use connexa_core::sim::{parse_mix, Behaviour};
/// use std::time::Duration;
/// let mix = parse_mix("healthy=8, slow:250=1,wrong:4=1").unwrap();
/// assert_eq!(mix, vec![
///     (Behaviour::Healthy, 8),
///     (Behaviour::Slow(Duration::from_millis(250)), 1),
///     (Behaviour::WrongResultCode(4), 1),
/// ]);
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
        let (name, arg) = match name.trim().split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (name.trim(), None),
        };
        let num = |default: u64| -> Result<u64, BadMix> {
            match arg {
                None => Ok(default),
                Some(a) => a
                    .trim()
                    .parse()
                    .map_err(|_| bad(part, "the argument is not a number")),
            }
        };
        let behaviour = match name.to_ascii_lowercase().as_str() {
            "healthy" if arg.is_none() => Behaviour::Healthy,
            "refused" if arg.is_none() => Behaviour::Refused,
            "silent" if arg.is_none() => Behaviour::Silent,
            "garbage" if arg.is_none() => Behaviour::Garbage,
            "slow" => Behaviour::Slow(Duration::from_millis(num(3000)?)),
            "wrong" => {
                let code = u8::try_from(num(2)?)
                    .ok()
                    .filter(|c| (2..=255).contains(c))
                    .ok_or_else(|| bad(part, "the result code must be 2..=255"))?;
                Behaviour::WrongResultCode(code)
            }
            "healthy" | "refused" | "silent" | "garbage" => {
                return Err(bad(part, "this behaviour takes no argument"));
            }
            _ => return Err(bad(part, "unknown behaviour")),
        };
        mix.push((behaviour, weight));
    }
    if mix.is_empty() || mix.iter().all(|(_, w)| *w == 0) {
        return Err(bad(text, "no behaviour with a weight above 0"));
    }
    Ok(mix)
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
}

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
        }
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
        Node {
            id,
            ip: IpAddr::V4(self.ip),
            port: self.port,
            login: self.login.clone(),
            password: self.password.clone(),
            meta: NodeMeta::default(),
            status: Status::NotTested,
            last_checked_at: None,
            last_error: None,
            consecutive_failures: 0,
            ping_ms: None,
            speed_down_mbps: None,
            speed_up_mbps: None,
            pptp: None,
            service: None,
            service_wanted: false,
            created_at: now,
            updated_at: now,
        }
    }
}

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

/// A running simulated fleet. Dropping it stops every responder.
#[derive(Debug)]
pub struct Fleet {
    nodes: Vec<SimNode>,
    tasks: Vec<JoinHandle<()>>,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the new soft limit.
pub fn raise_fd_limit() -> io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

impl Fleet {
    /// Raises the fd limit ([`raise_fd_limit`]), then binds every node's responder.
    pub async fn start(spec: FleetSpec) -> Result<Fleet, SimError> {
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
        let identity = StartControlConnectionReply::success(&spec.host_name, &spec.vendor, 1);
        let mut nodes = Vec::with_capacity(spec.count);
        let mut tasks = Vec::with_capacity(spec.count);
        for (i, behaviour) in spec.behaviours().into_iter().enumerate() {
            let ip = Ipv4Addr::from(first + i as u32);
            let node = SimNode {
                ip,
                port: spec.port,
                login: format!("user{i}"),
                password: Secret::new(format!("pass{i}")),
                behaviour: behaviour.clone(),
            };
            if behaviour != Behaviour::Refused {
                let addr = node.addr();
                let listener = (|| {
                    let s = TcpSocket::new_v4()?;
                    s.set_reuseaddr(true)?;
                    s.bind(addr)?;
                    s.listen(1024)
                })()
                .map_err(|source| SimError::Bind { addr, source })?;
                let identity = identity.clone();
                tasks.push(tokio::spawn(async move {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            // Out of descriptors: back off instead of spinning.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        };
                        let behaviour = behaviour.clone();
                        let identity = identity.clone();
                        tokio::spawn(async move {
                            let _ = serve(stream, behaviour, identity).await;
                        });
                    }
                }));
            }
            nodes.push(node);
        }
        Ok(Fleet { nodes, tasks })
    }

    /// The nodes, in order.
    pub fn nodes(&self) -> &[SimNode] {
        &self.nodes
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

    /// Stops every listener (connections already accepted finish on their own).
    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Reads until the peer closes (or errors): the polite way to end, without
/// resetting a peer whose bytes are unread.
async fn drain(stream: &mut TcpStream) {
    let mut buf = [0u8; 512];
    while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
}

async fn serve(
    mut stream: TcpStream,
    behaviour: Behaviour,
    identity: StartControlConnectionReply,
) -> io::Result<()> {
    let _ = stream.set_nodelay(true);
    let (delay, result_code) = match behaviour {
        Behaviour::Silent | Behaviour::Refused => {
            drain(&mut stream).await;
            return Ok(());
        }
        Behaviour::Garbage => {
            let mut buf = [0u8; 512];
            let _ = stream.read(&mut buf).await?;
            stream
                .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                .await?;
            drain(&mut stream).await;
            return Ok(());
        }
        Behaviour::Healthy => (Duration::ZERO, 1),
        Behaviour::Slow(d) => (d, 1),
        Behaviour::WrongResultCode(c) => (Duration::ZERO, c),
    };
    let mut framer = Framer::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        framer.push(&buf[..n]);
        while let Ok(Some(frame)) = framer.next_frame() {
            let reply = match ControlMessage::decode(&frame) {
                Ok(ControlMessage::StartControlConnectionRequest(_)) => {
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    let mut r = identity.clone();
                    r.result_code = result_code;
                    ControlMessage::StartControlConnectionReply(r)
                }
                Ok(ControlMessage::StopControlConnectionRequest(_)) => {
                    let r =
                        ControlMessage::StopControlConnectionReply(StopControlConnectionReply {
                            result_code: 1,
                            error_code: 0,
                        });
                    stream.write_all(&r.encode()).await?;
                    drain(&mut stream).await;
                    return Ok(());
                }
                Ok(ControlMessage::EchoRequest(e)) => ControlMessage::EchoReply(EchoReply {
                    identifier: e.identifier,
                    result_code: 1,
                    error_code: 0,
                }),
                // Anything else is ignored by this light responder.
                _ => continue,
            };
            stream.write_all(&reply.encode()).await?;
        }
        if framer.check_prefix().is_err() {
            drain(&mut stream).await;
            return Ok(());
        }
    }
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

    #[tokio::test]
    async fn lists_in_every_import_format_read_back_with_the_port() {
        let fleet = Fleet::start(
            FleetSpec::new(3)
                .first_ip(Ipv4Addr::new(127, 58, 0, 1))
                .port(0)
                .mix(vec![(Behaviour::Refused, 1)]),
        )
        .await
        .unwrap();
        let fleet = Fleet {
            nodes: fleet
                .nodes()
                .iter()
                .cloned()
                .map(|mut n| {
                    n.port = 21999;
                    n
                })
                .collect(),
            tasks: Vec::new(),
        };
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
