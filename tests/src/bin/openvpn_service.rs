//! Test helper for the `openvpn` SIGKILL test (`tests/tests/lab_openvpn.rs`):
//! a Connexa process that runs the engine's reconciler and monitor with an
//! `OpenvpnLauncher` over the real `PptpOpener` on a SQLite store, a pass
//! every second, printing `pass <n> ...` after each. Run inside the lab's
//! network namespace (root). The parent kills it with SIGKILL and starts it
//! again.
//!
//! `openvpn_service DB_URL OPENVPN_DIR BIND PORT_MIN PORT_MAX`

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use connexa_core::domain::{Node, Outcome};
use connexa_core::engine::{Engine, EngineConfig, NotAvailable};
use connexa_core::openvpn::{OpenvpnConfig, OpenvpnLauncher};
use connexa_core::ports::{ProbeDepth, ProbeError, Prober};
use connexa_core::service::PptpOpener;
use connexa_core::store::SqlStore;
use connexa_core::tunnel::{GreSocket, TunnelConfig};

struct NoProber;

#[async_trait]
impl Prober for NoProber {
    async fn probe(&self, _: &Node, _: ProbeDepth) -> Result<Outcome, ProbeError> {
        Err(ProbeError::Config("no prober in this helper".into()))
    }
}

const USAGE: &str = "usage: openvpn_service DB_URL OPENVPN_DIR BIND PORT_MIN PORT_MAX";

// One thread: everything (GRE socket, TUN devices, openvpn, rules) in the
// namespace the process was started in.
#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, dir, bind, min, max] = &args[..] else {
        panic!("{USAGE}");
    };
    let store = SqlStore::connect(url).await.expect("open store");
    let gre = GreSocket::open().expect("raw GRE socket (run as root)");
    let launcher = OpenvpnLauncher::new(
        Arc::new(PptpOpener::with_gre_socket(TunnelConfig::default(), gre)),
        OpenvpnConfig {
            dir: dir.into(),
            bind: bind.parse().expect("bind"),
            ports: min.parse().expect("port")..=max.parse().expect("port"),
            ..OpenvpnConfig::default()
        },
    );
    let pause = Duration::from_secs(1);
    let engine = Engine::new(
        Arc::new(store),
        Arc::new(NoProber),
        Arc::new(NotAvailable),
        Arc::new(launcher),
        EngineConfig {
            node_timeout: Duration::from_secs(60),
            health_threshold: 2,
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
            "pass {n} started {} start_failed {} stopped {} healthy {}",
            r.started,
            r.start_failed,
            r.stopped,
            m.checked - m.unhealthy
        )
        .ok();
        out.flush().ok();
        tokio::time::sleep(pause).await;
    }
}
