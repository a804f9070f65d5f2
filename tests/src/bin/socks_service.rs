//! Test helper for the service restart test: a Connexa process that runs the
//! engine's reconciler and monitor with a `SocksLauncher` (loopback-only
//! `DirectOpener`) on a SQLite store, every 100 ms, printing `pass <n>` after
//! each. The parent kills it with SIGKILL and starts it again.
//!
//! Usage: socks_service DB_URL PORT_MIN PORT_MAX CHECK_TARGET

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use connexa_core::domain::{Node, Outcome};
use connexa_core::engine::{Engine, EngineConfig, NotAvailable};
use connexa_core::ports::{ProbeDepth, ProbeError, Prober};
use connexa_core::service::DirectOpener;
use connexa_core::socks::proto::TargetAddr;
use connexa_core::socks::{SocksConfig, SocksLauncher};
use connexa_core::store::SqlStore;
use std::io::Write;

struct NoProber;

#[async_trait]
impl Prober for NoProber {
    async fn probe(&self, _: &Node, _: ProbeDepth) -> Result<Outcome, ProbeError> {
        Err(ProbeError::Config("no prober in this helper".into()))
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, min, max, check] = &args[..] else {
        panic!("usage: socks_service DB_URL PORT_MIN PORT_MAX CHECK_TARGET");
    };
    let store = SqlStore::connect(url).await.expect("open store");
    let config = SocksConfig {
        port_min: min.parse().expect("port"),
        port_max: max.parse().expect("port"),
        check_target: TargetAddr::parse(check),
        ..SocksConfig::default()
    };
    let launcher = SocksLauncher::new(Arc::new(DirectOpener::loopback_only()), config);
    let engine = Engine::new(
        Arc::new(store),
        Arc::new(NoProber),
        Arc::new(NotAvailable),
        Arc::new(launcher),
        EngineConfig {
            node_timeout: Duration::from_secs(5),
            health_threshold: 2,
            ..EngineConfig::default()
        },
    );
    let mut out = std::io::stdout().lock();
    for n in 0u64.. {
        let r = engine.reconcile().await.expect("reconcile");
        let m = engine.monitor().await.expect("monitor");
        writeln!(
            out,
            "pass {n} started {} healthy {}",
            r.started,
            m.checked - m.unhealthy
        )
        .ok();
        out.flush().ok();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
