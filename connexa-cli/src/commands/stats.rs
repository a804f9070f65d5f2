//! `connexa stats`.

use clap::Args;
use connexa_core::ops;

use crate::cli::Ctx;
use crate::exit::Exit;
use crate::output::{Cell, OutputFormat, Table};

/// Counts per status, services running, the last job.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  connexa stats
  connexa stats --output json | jq .services_running")]
pub struct StatsArgs {}

/// Prints the statistics.
pub async fn exec(ctx: &Ctx, _args: StatsArgs) -> anyhow::Result<Exit> {
    let store = ctx.store().await?;
    let s = ops::stats(store.as_ref()).await?;
    if ctx.out.format == OutputFormat::Json {
        ctx.out.json(&s)?;
        return Ok(Exit::Ok);
    }
    let mut t = Table::new(&["STATUS", "NODES"]);
    for c in &s.by_status {
        t.row(vec![Cell::status(c.status), Cell::num(c.count)]);
    }
    if ctx.out.format == OutputFormat::Csv {
        ctx.out.table(&t)?;
        return Ok(Exit::Ok);
    }
    t.row(vec![Cell::text("total"), Cell::num(s.total)]);
    ctx.out.table(&t)?;
    ctx.out.line(format_args!(
        "services running: {} (online + offline); waiting to start: {}{}",
        s.services_running,
        s.services_waiting,
        if s.services_waiting > 0 {
            " (connexa nodes list --wanted --status speed_ok)"
        } else {
            ""
        }
    ))?;
    match &s.last_job {
        None => ctx.out.line("last job: none")?,
        Some(j) => {
            let p = &j.progress;
            ctx.out.line(format_args!(
                "last job: #{} {} {}, {}/{} done (ok {}, failed {}, timed out {}, cancelled {}), created {}{}",
                j.id,
                j.kind,
                j.state,
                p.done(),
                p.total,
                p.ok,
                p.failed,
                p.timed_out,
                p.cancelled,
                j.created_at.format("%Y-%m-%d %H:%M:%S"),
                j.finished_at
                    .map(|t| format!(", finished {}", t.format("%Y-%m-%d %H:%M:%S")))
                    .unwrap_or_default()
            ))?;
        }
    }
    Ok(Exit::Ok)
}
