//! How the CLI builds connexa-core's engine: one function per port, so that
//! plugging in a new implementation (the real speed tester, the SOCKS5
//! launcher) is a one-line change here and every subcommand gets it.

use std::sync::Arc;

use connexa_core::engine::{Engine, EngineConfig, NotAvailable};
use connexa_core::ports::{Prober, ServiceLauncher, SpeedTester};
use connexa_core::probe::{LightProber, ProbeConfig};

use crate::cli::Ctx;

/// The network prober (light and auth depths), configured from the config file.
pub fn prober(ctx: &Ctx) -> LightProber {
    let t = &ctx.config.test;
    LightProber::new(ProbeConfig {
        connect_timeout: t.connect_timeout(),
        handshake_timeout: t.light_timeout(),
        ..ProbeConfig::default()
    })
}

/// The speed tester, or `None` while this build has none (`test speed` then
/// fails fast; the pipeline's speed stage reports that it could not run).
pub fn speed_tester(_ctx: &Ctx) -> Option<Arc<dyn SpeedTester>> {
    None
}

/// The SOCKS5 service launcher used by the reconciler and service jobs.
pub fn launcher(_ctx: &Ctx) -> Arc<dyn ServiceLauncher> {
    Arc::new(NotAvailable)
}

/// The engine settings (concurrency from the config file).
pub fn engine_config(ctx: &Ctx) -> EngineConfig {
    let mut config = EngineConfig::default();
    if ctx.config.test.concurrency > 0 {
        config.concurrency = ctx.config.test.concurrency as usize;
    }
    config
}

/// An engine over the database with the ports above.
pub async fn engine(ctx: &Ctx) -> anyhow::Result<Engine> {
    engine_with(ctx, Arc::new(prober(ctx))).await
}

/// An engine over the database with this prober and the other ports above.
pub async fn engine_with(ctx: &Ctx, prober: Arc<dyn Prober>) -> anyhow::Result<Engine> {
    let store = ctx.store().await?;
    let speed = speed_tester(ctx).unwrap_or_else(|| Arc::new(NotAvailable));
    Ok(Engine::new(
        store,
        prober,
        speed,
        launcher(ctx),
        engine_config(ctx),
    ))
}
