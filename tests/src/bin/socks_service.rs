//! Test helper for the service restart tests: a Connexa process that runs the
//! engine's reconciler and monitor with a `SocksLauncher` on a SQLite store,
//! printing `pass <n> ...` after each pass. The parent kills it with SIGKILL
//! and starts it again.
//!
//! * `socks_service DB_URL PORT_MIN PORT_MAX CHECK_TARGET`: loopback-only
//!   `DirectOpener`, a pass every 100 ms (`tests/tests/socks_engine.rs`);
//! * `socks_service --pptp DB_URL PORT_MIN PORT_MAX CHECK_TARGET`: the real
//!   `PptpOpener` (MPPE-128 tunnel through the node; needs CAP_NET_RAW and
//!   is run inside the lab's network namespace), a pass every second
//!   (`tests/tests/lab_socks.rs`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use connexa_core::domain::{Node, Outcome};
use connexa_core::engine::{Engine, EngineConfig, NotAvailable};
use connexa_core::ports::{ProbeDepth, ProbeError, Prober};
use connexa_core::service::{DirectOpener, PptpOpener, TunnelOpener};
use connexa_core::socks::proto::TargetAddr;
use connexa_core::socks::{SocksConfig, SocksLauncher};
use connexa_core::store::SqlStore;
use connexa_core::tunnel::{GreSocket, TunnelConfig};
use std::io::Write;

struct NoProber;

#[async_trait]
impl Prober for NoProber {
    async fn probe(&self, _: &Node, _: ProbeDepth) -> Result<Outcome, ProbeError> {
        Err(ProbeError::Config("no prober in this helper".into()))
    }
}

const USAGE: &str = "usage: socks_service [--pptp] DB_URL PORT_MIN PORT_MAX CHECK_TARGET";

#[tokio::main]
async fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let pptp = args.first().is_some_and(|a| a == "--pptp");
    if pptp {
        args.remove(0);
    }
    let [url, min, max, check] = &args[..] else {
        panic!("{USAGE}");
    };
    let store = SqlStore::connect(url).await.expect("open store");
    let config = SocksConfig {
        port_min: min.parse().expect("port"),
        port_max: max.parse().expect("port"),
        check_target: TargetAddr::parse(check),
        ..SocksConfig::default()
    };
    let (opener, pause): (Arc<dyn TunnelOpener>, Duration) = if pptp {
        let gre = GreSocket::open().expect("raw GRE socket (run as root)");
        (
            Arc::new(PptpOpener::with_gre_socket(TunnelConfig::default(), gre)),
            Duration::from_secs(1),
        )
    } else {
        (
            Arc::new(DirectOpener::loopback_only()),
            Duration::from_millis(100),
        )
    };
    let launcher = SocksLauncher::new(opener, config);
    let engine = Engine::new(
        Arc::new(store),
        Arc::new(NoProber),
        Arc::new(NotAvailable),
        Arc::new(launcher),
        EngineConfig {
            node_timeout: Duration::from_secs(if pptp { 30 } else { 5 }),
            health_threshold: 2,
            // A failed start is tried again on the next pass, as the tests expect.
            restart_backoff: pause,
            restart_backoff_max: pause,
            ..EngineConfig::default()
        },
    );
    let mut out = std::io::stdout().lock();
    for n in 0u64.. {
        let r = engine.reconcile().await.expect("reconcile");
        let m = engine.monitor().await.expect("monitor");
        writeln!(
            out,
            "pass {n} started {} start_failed {} healthy {}",
            r.started,
            r.start_failed,
            m.checked - m.unhealthy
        )
        .ok();
        out.flush().ok();
        tokio::time::sleep(pause).await;
    }
}
