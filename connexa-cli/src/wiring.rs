//! How the CLI builds connexa-core's engine: the ports come from
//! `connexa_core::runtime` (the same for connexa-http), so every subcommand
//! gets the same prober, speed tester and SOCKS5 launcher, sharing one raw GRE
//! socket.

use std::sync::Arc;

use connexa_core::engine::Engine;
use connexa_core::probe::LightProber;
use connexa_core::runtime::{self, NetworkPorts};

use crate::cli::Ctx;

/// The network prober (light and auth depths), configured from the config file.
pub fn prober(ctx: &Ctx) -> LightProber {
    runtime::prober(&ctx.config.test)
}

/// An engine over the database with the configured ports.
pub async fn engine(ctx: &Ctx) -> anyhow::Result<Engine> {
    engine_with(ctx, Arc::new(prober(ctx))).await
}

/// An engine over the database with this prober and the other configured ports.
pub async fn engine_with(ctx: &Ctx, prober: Arc<LightProber>) -> anyhow::Result<Engine> {
    Ok(engine_and_launcher(ctx, prober).await?.0)
}

/// An engine and the network ports it runs on (for `connexa run`, which
/// stops every service on a graceful shutdown: [`NetworkPorts::stop_services`]).
pub async fn engine_and_launcher(
    ctx: &Ctx,
    prober: Arc<LightProber>,
) -> anyhow::Result<(Engine, NetworkPorts)> {
    engine_and_launcher_as(ctx, prober, None, Vec::new()).await
}

/// [`engine_and_launcher`] for a worker process: its name (default
/// `HOST-pPID`) and roles (empty: the engine's default, jobs and services).
pub async fn engine_and_launcher_as(
    ctx: &Ctx,
    prober: Arc<LightProber>,
    worker: Option<String>,
    roles: Vec<connexa_core::ports::WorkerRole>,
) -> anyhow::Result<(Engine, NetworkPorts)> {
    let store = ctx.store().await?;
    let ports = NetworkPorts::with_prober(&ctx.effective_config(), prober);
    let engine = ports.engine_as(store, &ctx.config, worker, roles);
    runtime::attach_enrichment(&engine, &ctx.config)?;
    Ok((engine, ports))
}
