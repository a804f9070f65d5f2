//! How the CLI builds connexa-core's engine: one function per port, so that
//! every subcommand gets the same prober, speed tester and SOCKS5 launcher.
//! The three share one raw GRE socket (the prober's), opened on first use.

use std::sync::Arc;

use connexa_core::engine::{Engine, EngineConfig};
use connexa_core::ports::{ServiceLauncher, SpeedTester};
use connexa_core::probe::{LightProber, ProbeConfig};
use connexa_core::service::PptpOpener;
use connexa_core::socks::{SocksConfig, SocksLauncher};
use connexa_core::speed::{HttpSpeedTester, SpeedConfig};

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

/// The speed tester (through each node's MPPE tunnel, `[test]` URLs), sharing
/// the prober's raw GRE socket.
pub fn speed_tester(ctx: &Ctx, prober: &Arc<LightProber>) -> Arc<HttpSpeedTester> {
    Arc::new(HttpSpeedTester::sharing_gre_with(
        SpeedConfig::from_test_config(&ctx.config.test),
        Arc::clone(prober),
    ))
}

/// The SOCKS5 service launcher used by the reconciler and service jobs: each
/// service relays through its node's PPTP tunnel (`[services]` settings).
pub fn launcher(ctx: &Ctx, prober: &Arc<LightProber>) -> Arc<SocksLauncher> {
    let tunnel = SpeedConfig::from_test_config(&ctx.config.test).tunnel;
    let opener = PptpOpener::sharing_gre_with(tunnel, Arc::clone(prober));
    Arc::new(SocksLauncher::new(
        Arc::new(opener),
        SocksConfig::from_services(&ctx.config.services),
    ))
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
pub async fn engine_with(ctx: &Ctx, prober: Arc<LightProber>) -> anyhow::Result<Engine> {
    Ok(engine_and_launcher(ctx, prober).await?.0)
}

/// An engine and its launcher (for `connexa run`, which stops every service
/// on a graceful shutdown).
pub async fn engine_and_launcher(
    ctx: &Ctx,
    prober: Arc<LightProber>,
) -> anyhow::Result<(Engine, Arc<SocksLauncher>)> {
    let store = ctx.store().await?;
    let speed: Arc<dyn SpeedTester> = speed_tester(ctx, &prober);
    let launcher = launcher(ctx, &prober);
    let services: Arc<dyn ServiceLauncher> = launcher.clone();
    Ok((
        Engine::new(store, prober, speed, services, engine_config(ctx)),
        launcher,
    ))
}
