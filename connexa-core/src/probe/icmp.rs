//! ICMP echo (latency and loss), optional evidence for the light test.
//!
//! One shared [`surge_ping::Client`] per address family, created on first use:
//! as root it is a raw socket; unprivileged it is a Linux "ping socket"
//! (`SOCK_DGRAM`, allowed by `net.ipv4.ping_group_range`). When neither can be
//! opened the pinger logs that once and reports nothing from then on: ICMP never
//! fails a node.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use surge_ping::{Client, Config, ICMP, PingIdentifier, PingSequence};
use tokio::sync::{OnceCell, Semaphore};

/// Settings of an [`IcmpPinger`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IcmpConfig {
    /// Echo requests per host (sent together, each with its own sequence number).
    pub count: u16,
    /// How long to wait for each reply.
    pub timeout: Duration,
    /// Echo requests in flight at once across all hosts. The shared socket's
    /// receive buffer is small (and on loopback a raw socket also sees its own
    /// requests): a burst of thousands of echoes overflows it and replies are
    /// lost, so larger batches queue here instead.
    pub max_in_flight: usize,
}

impl Default for IcmpConfig {
    fn default() -> Self {
        IcmpConfig {
            count: 3,
            timeout: Duration::from_secs(1),
            max_in_flight: 96,
        }
    }
}

/// Latency and loss over the echo requests sent to one host.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PingStats {
    /// Requests sent.
    pub sent: u16,
    /// Replies received in time.
    pub received: u16,
    /// Fastest round trip, ms (`None` without replies).
    pub min_ms: Option<f64>,
    /// Mean round trip, ms (`None` without replies).
    pub avg_ms: Option<f64>,
    /// Slowest round trip, ms (`None` without replies).
    pub max_ms: Option<f64>,
}

impl PingStats {
    /// Lost fraction, 0.0..=1.0.
    pub fn loss(&self) -> f64 {
        if self.sent == 0 {
            return 0.0;
        }
        f64::from(self.sent - self.received) / f64::from(self.sent)
    }
}

/// Pings hosts through one shared client per address family.
#[derive(Debug)]
pub struct IcmpPinger {
    config: IcmpConfig,
    v4: OnceCell<Option<ClientHandle>>,
    v6: OnceCell<Option<ClientHandle>>,
    seq: AtomicU16,
    in_flight: Semaphore,
}

struct ClientHandle(Client);

impl std::fmt::Debug for ClientHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("surge_ping::Client")
    }
}

impl IcmpPinger {
    /// A pinger; no socket is opened until the first [`ping`](Self::ping).
    pub fn new(config: IcmpConfig) -> Self {
        IcmpPinger {
            in_flight: Semaphore::new(config.max_in_flight.max(1)),
            config,
            v4: OnceCell::new(),
            v6: OnceCell::new(),
            seq: AtomicU16::new(rand::random()),
        }
    }

    async fn client(&self, ip: IpAddr) -> Option<&Client> {
        let (cell, kind) = match ip {
            IpAddr::V4(_) => (&self.v4, ICMP::V4),
            IpAddr::V6(_) => (&self.v6, ICMP::V6),
        };
        cell.get_or_init(|| async move {
            match Client::new(&Config::builder().kind(kind).build()) {
                Ok(c) => Some(ClientHandle(c)),
                Err(e) => {
                    // Once per family and pinger: the cell remembers the failure.
                    tracing::warn!(
                        error = %e,
                        "ICMP ({kind:?}) is unavailable (need root/CAP_NET_RAW or \
                         net.ipv4.ping_group_range); latency falls back to the PPTP handshake time"
                    );
                    None
                }
            }
        })
        .await
        .as_ref()
        .map(|h| &h.0)
    }

    /// `true` if an ICMP socket for `ip`'s family could be opened.
    pub async fn available(&self, ip: IpAddr) -> bool {
        self.client(ip).await.is_some()
    }

    /// Sends [`IcmpConfig::count`] echo requests to `ip` at once (distinct
    /// sequence numbers) and waits for the replies. `None` when ICMP is unavailable.
    pub async fn ping(&self, ip: IpAddr) -> Option<PingStats> {
        let client = self.client(ip).await?;
        let count = self.config.count;
        let ident = PingIdentifier(rand::random());
        let payload = [0u8; 16];
        let mut pings = Vec::with_capacity(usize::from(count));
        let permits = u32::from(count).min(self.config.max_in_flight.max(1) as u32);
        // Never fails: the semaphore is never closed.
        let _permit = self.in_flight.acquire_many(permits).await.ok();
        for _ in 0..count {
            let seq = PingSequence(self.seq.fetch_add(1, Ordering::Relaxed));
            let mut pinger = client.pinger(ip, ident).await;
            pinger.timeout(self.config.timeout);
            pings.push(async move { pinger.ping(seq, &payload).await.ok().map(|(_, d)| d) });
        }
        let rtts: Vec<Duration> = futures::future::join_all(pings)
            .await
            .into_iter()
            .flatten()
            .collect();
        let ms: Vec<f64> = rtts.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        let received = u16::try_from(ms.len()).unwrap_or(u16::MAX);
        let (min_ms, max_ms, avg_ms) = if ms.is_empty() {
            (None, None, None)
        } else {
            (
                ms.iter().copied().reduce(f64::min),
                ms.iter().copied().reduce(f64::max),
                Some(ms.iter().sum::<f64>() / ms.len() as f64),
            )
        };
        Some(PingStats {
            sent: count,
            received,
            min_ms,
            avg_ms,
            max_ms,
        })
    }
}
