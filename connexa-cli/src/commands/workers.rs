//! `connexa workers`: the registered worker processes, their heartbeats and
//! the job items each holds.

use clap::Args;
use connexa_core::ports::NodeStore as _;

use crate::cli::Ctx;
use crate::exit::{Exit, WithCode as _};
use crate::output::{Cell, OutputFormat, Table, escape};

/// Which processes work on this database, and are they alive.
#[derive(Debug, Args)]
#[command(after_help = "\
Every `connexa run` and `connexa-http serve` registers as a worker (name from
--worker, else HOST-pPID) and beats every [workers] heartbeat_secs (5 s). A
worker whose heartbeat is older than [workers] lease_secs (30 s) is dead: any
live worker reclaims the job items it held, and its late results are refused.
A clean exit removes the worker's row. SERVICES: the wanted services placed
on it (PostgreSQL placement), out of its [workers] max_services if set.

Examples:
  connexa workers
  connexa workers --output json")]
pub struct WorkersArgs {}

/// Prints the workers.
pub async fn exec(ctx: &Ctx, _a: WorkersArgs) -> anyhow::Result<Exit> {
    let store = ctx.store().await?;
    let now = chrono::Utc::now();
    let rows = store.workers(now).await.code(Exit::Config)?;
    if ctx.out.format == OutputFormat::Json {
        ctx.out.json(&rows)?;
        return Ok(Exit::Ok);
    }
    let mut t = Table::new(&[
        "NAME",
        "HOST",
        "PID",
        "ROLES",
        "VERSION",
        "STATE",
        "HEARTBEAT",
        "IN FLIGHT",
        "SERVICES",
        "STARTED",
    ]);
    for w in &rows {
        let ago = (now - w.last_heartbeat).num_milliseconds().max(0) as f64 / 1000.0;
        t.row(vec![
            Cell::text(escape(&w.name).into_owned()),
            Cell::text(escape(&w.host).into_owned()),
            Cell::num(w.pid),
            Cell::text(
                w.roles
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            Cell::text(escape(&w.version).into_owned()),
            Cell::text(if w.alive { "alive" } else { "dead" }),
            Cell::text(format!("{ago:.1} s ago")),
            Cell::num(w.items_in_flight),
            Cell::text(match w.max_services {
                Some(max) => format!("{}/{max}", w.services_held),
                None => w.services_held.to_string(),
            }),
            Cell::text(w.started_at.format("%Y-%m-%d %H:%M:%S").to_string()),
        ]);
    }
    ctx.out.table(&t)?;
    Ok(Exit::Ok)
}
