//! `connexa service start|stop|list`: the desired service state, and the
//! services recorded as running.

use clap::{Args, Subcommand};
use connexa_core::domain::NodeId;
use connexa_core::ops::{self, ServiceChange};

use crate::cli::Ctx;
use crate::commands::test::selection;
use crate::exit::{Exit, fail};
use crate::filter::FilterArgs;
use crate::output::{Cell, OutputFormat, Table};

const HOW: &str = "\
`start` and `stop` only record the desired state (service_wanted). The SOCKS5
services themselves are started, restarted after a restart, and stopped by the
reconciler inside a running `connexa run` (or connexa-http) process; `connexa
run --once` makes one pass. Services run only through verified nodes
(speed_ok, online, offline).";

/// SOCKS5 services through verified nodes.
#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Want a service on the selected verified nodes (the reconciler starts them).
    #[command(after_help = "\
`start` and `stop` only record the desired state (service_wanted). The SOCKS5
services themselves are started, restarted after a restart, and stopped by the
reconciler inside a running `connexa run` (or connexa-http) process; `connexa
run --once` makes one pass. Services run only through verified nodes
(speed_ok, online, offline).

Examples:
  connexa service start --status speed_ok --country US
  connexa service start 12 13 && connexa run --once")]
    Start(SelectArgs),
    /// No longer want a service on the selected nodes (the reconciler stops them).
    #[command(after_help = "\
The reconciler of a running `connexa run` (or connexa-http) stops the services;
`connexa run --once` makes one pass.

Examples:
  connexa service stop --all
  connexa service stop 12")]
    Stop(SelectArgs),
    /// The running services: host:port:user:pass (json and csv carry more columns).
    #[command(after_help = "\
Lists what the store records as running (nodes online or offline with an
endpoint). The credentials are printed: they are what SOCKS5 clients need.

Examples:
  connexa service list
  connexa service list --country DE --output csv > socks.csv")]
    List(ListArgs),
}

/// Which nodes.
#[derive(Debug, Args)]
pub struct SelectArgs {
    /// Node ids (or use filters, or --all).
    #[arg(value_name = "ID")]
    pub ids: Vec<i64>,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Every node.
    #[arg(long)]
    pub all: bool,
}

/// `service list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
}

/// Runs a `service` subcommand.
pub async fn exec(ctx: &Ctx, c: ServiceCommand) -> anyhow::Result<Exit> {
    match c {
        ServiceCommand::Start(a) => want(ctx, a, true).await,
        ServiceCommand::Stop(a) => want(ctx, a, false).await,
        ServiceCommand::List(a) => list(ctx, a).await,
    }
}

async fn want(ctx: &Ctx, a: SelectArgs, wanted: bool) -> anyhow::Result<Exit> {
    let filter = selection(&a.ids, &a.filter, a.all)?.into_filter();
    let store = ctx.store().await?;
    let change = ops::want_services(store.as_ref(), &filter, wanted).await?;
    // Ids given that match no node.
    let missing: Vec<i64> = if a.ids.is_empty() {
        Vec::new()
    } else {
        let found: std::collections::HashSet<NodeId> = ops::all_matching(store.as_ref(), &filter)
            .await?
            .into_iter()
            .map(|n| n.id)
            .collect();
        let mut m: Vec<i64> = a
            .ids
            .iter()
            .copied()
            .filter(|id| !found.contains(&NodeId(*id)))
            .collect();
        m.sort_unstable();
        m.dedup();
        m
    };
    if ctx.out.format == OutputFormat::Json {
        ctx.out.json(&serde_json::json!({
            "wanted": change.wanted, "matched": change.matched,
            "changed": change.changed, "unchanged": change.unchanged,
            "not_verified": change.not_verified, "missing": missing,
        }))?;
    } else {
        ctx.out.line(describe(&change))?;
        if change.not_verified > 0 {
            ctx.out.line(format_args!(
                "{} matching nodes are not verified (speed_ok, online or offline) and were left alone",
                change.not_verified
            ))?;
        }
        if !change.changed.is_empty() {
            ctx.out.note(format_args!(
                "the reconciler of a running `connexa run` (or connexa-http) {} them; `connexa run --once` makes one pass now",
                if wanted { "starts" } else { "stops" }
            ));
        }
    }
    if !missing.is_empty() {
        let list: Vec<String> = missing.iter().map(ToString::to_string).collect();
        return Err(fail(
            Exit::NotFound,
            format_args!("no node with id {}", list.join(", ")),
        ));
    }
    Ok(Exit::Ok)
}

fn describe(c: &ServiceChange) -> String {
    let ids: Vec<String> = c.changed.iter().take(20).map(|id| id.to_string()).collect();
    let more = if c.changed.len() > 20 {
        format!(" and {} more", c.changed.len() - 20)
    } else {
        String::new()
    };
    let what = if c.wanted {
        "wanted"
    } else {
        "no longer wanted"
    };
    if c.changed.is_empty() {
        format!(
            "no change: {} matching nodes, {} already {what}",
            c.matched, c.unchanged
        )
    } else {
        format!(
            "service {what} on {} nodes ({}{more}); {} already {what}",
            c.changed.len(),
            ids.join(", "),
            c.unchanged
        )
    }
}

async fn list(ctx: &Ctx, a: ListArgs) -> anyhow::Result<Exit> {
    let store = ctx.store().await?;
    let services = ops::running_services(store.as_ref(), &a.filter.validated()?).await?;
    match ctx.out.format {
        OutputFormat::Json => ctx.out.json(&services)?,
        OutputFormat::Csv => {
            let mut t = Table::new(&[
                "node", "node_ip", "status", "host", "port", "username", "password", "wanted",
            ]);
            for s in &services {
                t.row(vec![
                    Cell::num(s.node.0),
                    Cell::text(&s.node_ip),
                    Cell::text(s.status.as_str()),
                    Cell::text(&s.host),
                    Cell::num(s.port),
                    Cell::text(&s.username),
                    Cell::text(&s.password),
                    Cell::text(s.wanted.to_string()),
                ]);
            }
            ctx.out.table(&t)?;
        }
        OutputFormat::Human => {
            if services.is_empty() {
                ctx.out.line("no services running")?;
                ctx.out.note(HOW);
            }
            for s in &services {
                ctx.out.line(format_args!(
                    "{}:{}:{}:{}",
                    s.host, s.port, s.username, s.password
                ))?;
            }
        }
    }
    Ok(Exit::Ok)
}
