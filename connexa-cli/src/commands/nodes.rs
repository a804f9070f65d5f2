//! `connexa nodes list|show|add|history|delete|edit`.

use std::io::{BufRead, IsTerminal, Write};
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use connexa_core::domain::{NodeFilter, NodeId, Page, Selection};
use connexa_core::import::NodeFields;
use connexa_core::ops::{self, AddNodeError, HistoryView, MetaPatch, NodeView};
use connexa_core::ports::{JobKind, NodeStore};
use serde::Serialize;

use crate::cli::Ctx;
use crate::exit::{Exit, WithCode as _, fail};
use crate::filter::{FilterArgs, SortArg};
use crate::output::{Cell, Color, OutputFormat, Table};
use crate::progress::follow;
use crate::wiring;

use super::import::TestArg;

/// The `nodes` subcommands.
#[derive(Debug, Subcommand)]
pub enum NodesCommand {
    /// List nodes matching filters, one page at a time.
    #[command(after_help = "\
Examples:
  connexa nodes list --status speed_ok,online --country US
  connexa nodes list --min-speed 10 --sort speed --desc --limit 20
  connexa nodes list --checked-before 2026-01-01T00:00:00Z --page 2
  connexa nodes list --output csv > nodes.csv")]
    List(ListArgs),
    /// Show one node (password masked unless --reveal).
    Show(ShowArgs),
    /// Add one node by hand, checked exactly as an import row.
    #[command(after_help = "\
The node is refused for what an import refuses (a bad or unusable IP, a port
out of range, an empty login, a field too long, a control character), with
the same message (exit 2); a node already stored (same ip, port, login and
password) or one with the same ip, port and login but another password is
not added (exit 1). Country codes and US state codes are expanded as an
import expands them.

Examples:
  connexa nodes add 203.0.113.7 admin s3cret
  connexa nodes add 203.0.113.7 admin s3cret --port 1724 --country US --state TX --comment 'from Bob'
  connexa nodes add 203.0.113.7 admin s3cret --test light
  connexa nodes add 203.0.113.7 admin - < password.txt   # password kept out of ps")]
    Add(AddArgs),
    /// Show a node's status history: when, from -> to, event, why.
    History(HistoryArgs),
    /// Delete nodes by id, or every node matching filters.
    #[command(after_help = "\
With filters, the exact number of matching nodes is printed and confirmation
asked on the terminal; without a terminal, --yes is required. Deletions are
recorded in each node's history.

Examples:
  connexa nodes delete 12 13 14
  connexa nodes delete --status ping_failed --checked-before 2026-01-01T00:00:00Z --yes")]
    Delete(DeleteArgs),
    /// Change a node's descriptive fields (never its address, credentials or status).
    #[command(after_help = "\
An empty value clears a field.

Examples:
  connexa nodes edit 7 --city Austin --state Texas
  connexa nodes edit 7 --comment ''")]
    Edit(EditArgs),
}

/// `nodes list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    filter: FilterArgs,
    /// Page number, from 1.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    page: u64,
    /// Cursor: the nodes after this id (before it with --desc) instead of a page
    /// number; needs --sort id. The output names the id to pass for the next page.
    #[arg(long, value_name = "ID", conflicts_with = "page")]
    after: Option<i64>,
    /// Rows per page (at most 10000).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=Page::MAX_LIMIT))]
    limit: u64,
    /// Sort key.
    #[arg(long, value_enum, default_value_t = SortArg::Id)]
    sort: SortArg,
    /// Descending order.
    #[arg(long)]
    desc: bool,
}

/// `nodes show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Node id.
    id: i64,
    /// Print the password (and the service's) in clear.
    #[arg(long)]
    reveal: bool,
}

/// `nodes add`.
#[derive(Debug, Args)]
pub struct AddArgs {
    /// IPv4 or IPv6 address (`IP:PORT` and `[IPv6]:PORT` work too).
    ip: String,
    /// Login.
    login: String,
    /// Password; `-` reads it from the first line of stdin (so it stays out
    /// of the process list and the shell history).
    password: String,
    /// PPTP control port [default: 1723].
    #[arg(long)]
    port: Option<String>,
    /// Provider (seller).
    #[arg(long)]
    provider: Option<String>,
    /// Country (a code such as US, or a name).
    #[arg(long)]
    country: Option<String>,
    /// State or region.
    #[arg(long)]
    state: Option<String>,
    /// City.
    #[arg(long)]
    city: Option<String>,
    /// Zip code.
    #[arg(long)]
    zip: Option<String>,
    /// Comment.
    #[arg(long)]
    comment: Option<String>,
    /// Then test the node, with live progress, as `connexa test` does
    /// (`--output json` prints {"node": {...}, "job": {...}}).
    #[arg(long, value_enum, value_name = "KIND")]
    test: Option<TestArg>,
}

/// `nodes history`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Node id (deleted nodes keep their history).
    id: i64,
}

/// `nodes delete`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Node ids to delete (or use filters).
    #[arg(value_name = "ID")]
    ids: Vec<i64>,
    #[command(flatten)]
    filter: FilterArgs,
    /// Delete every node (with no ids and no filters).
    #[arg(long)]
    all: bool,
    /// Do not ask for confirmation.
    #[arg(short, long)]
    yes: bool,
}

/// `nodes edit`.
#[derive(Debug, Args)]
pub struct EditArgs {
    /// Node id.
    id: i64,
    /// New comment.
    #[arg(long)]
    comment: Option<String>,
    /// New city.
    #[arg(long)]
    city: Option<String>,
    /// New state or region.
    #[arg(long)]
    state: Option<String>,
    /// New country.
    #[arg(long)]
    country: Option<String>,
    /// New zip code.
    #[arg(long)]
    zip: Option<String>,
    /// New provider.
    #[arg(long)]
    provider: Option<String>,
}

/// Runs a `nodes` subcommand.
pub async fn exec(ctx: &Ctx, cmd: NodesCommand) -> anyhow::Result<Exit> {
    match cmd {
        NodesCommand::List(a) => list(ctx, a).await,
        NodesCommand::Show(a) => show(ctx, a).await,
        NodesCommand::Add(a) => add(ctx, a).await,
        NodesCommand::History(a) => history(ctx, a).await,
        NodesCommand::Delete(a) => delete(ctx, a).await,
        NodesCommand::Edit(a) => edit(ctx, a).await,
    }
}

#[derive(Serialize)]
struct ListJson {
    total: u64,
    /// `None` with `--after`.
    page: Option<u64>,
    limit: u64,
    next_after: Option<NodeId>,
    nodes: Vec<NodeView>,
}

async fn list(ctx: &Ctx, a: ListArgs) -> anyhow::Result<Exit> {
    let store = ctx.store().await?;
    let mut page = match a.after {
        Some(id) => Page::cursor(Some(NodeId(id)), a.limit),
        None => Page::number(a.page, a.limit),
    };
    page.sort = a.sort.into();
    page.desc = a.desc;
    let got = store.list(&a.filter.validated()?, page).await?;
    let next_after = page.next_after(&got.nodes);
    let views: Vec<NodeView> = got.nodes.iter().map(|n| NodeView::new(n, false)).collect();
    if ctx.out.format == OutputFormat::Json {
        ctx.out.json(&ListJson {
            total: got.total,
            page: a.after.is_none().then_some(a.page),
            limit: a.limit,
            next_after,
            nodes: views,
        })?;
        return Ok(Exit::Ok);
    }
    let mut t = Table::new(&[
        "ID",
        "IP",
        "PORT",
        "LOGIN",
        "STATUS",
        "COUNTRY",
        "STATE",
        "CITY",
        "DOWN_MBPS",
        "PING_MS",
        "CHECKED",
        "GEO",
        "ASN",
        "MISMATCH",
        "FRAUD",
        "COMMENT",
    ]);
    for v in &views {
        t.row(vec![
            Cell::num(v.id),
            Cell::text(&v.ip),
            Cell::num(v.port),
            Cell::text(&v.login),
            Cell::status(v.status),
            Cell::opt(v.country.as_ref()),
            Cell::opt(v.state.as_ref()),
            Cell::opt(v.city.as_ref()),
            Cell::opt(v.speed_down_mbps.map(|s| format!("{s:.2}"))).right(),
            Cell::opt(v.ping_ms.map(|s| format!("{s:.1}"))).right(),
            Cell::opt(
                v.last_checked_at
                    .map(|t| t.format("%Y-%m-%d %H:%M").to_string()),
            ),
            Cell::opt(v.geo.as_ref().map(geo_place)),
            Cell::opt(
                v.geo
                    .as_ref()
                    .and_then(|g| g.facts.asn)
                    .map(|a| format!("AS{a}")),
            ),
            match v.geo.as_ref().and_then(|g| g.location_mismatch) {
                Some(true) => Cell::text("yes").colored(Color::Red),
                Some(false) => Cell::text("no"),
                None => Cell::text("-"),
            },
            Cell::opt(v.fraud.as_ref().map(|f| format!("{} {}", f.score, f.risk))),
            Cell::opt(v.comment.as_ref()),
        ]);
    }
    if ctx.out.format == OutputFormat::Csv {
        ctx.out.table(&t)?;
        return Ok(Exit::Ok);
    }
    if t.is_empty() {
        ctx.out.line(match (got.total, a.after) {
            (0, _) => "no nodes match".to_owned(),
            (total, Some(after)) => format!("no nodes after id {after} ({total} nodes match)"),
            (total, None) => format!("page {} is past the end ({total} nodes match)", a.page),
        })?;
        return Ok(Exit::Ok);
    }
    ctx.out.table(&t)?;
    if a.after.is_some() {
        let next = match next_after {
            Some(id) => format!("next: --after {id}"),
            None => "last page".to_owned(),
        };
        let ids = |v: Option<&NodeView>| v.map_or(0, |v| v.id.0);
        ctx.out.line(format_args!(
            "{} of {} nodes, ids {}-{} ({next})",
            views.len(),
            got.total,
            ids(views.first()),
            ids(views.last())
        ))?;
        return Ok(Exit::Ok);
    }
    let first = page.offset + 1;
    let last = page.offset + views.len() as u64;
    let pages = got.total.div_ceil(a.limit);
    ctx.out.line(format_args!(
        "{first}-{last} of {} nodes (page {} of {pages})",
        got.total, a.page
    ))?;
    Ok(Exit::Ok)
}

/// `US/Texas/Austin`: the lookup's country code, region and city that are known.
fn geo_place(g: &connexa_core::domain::GeoRecord) -> String {
    let f = &g.facts;
    let parts: Vec<&str> = [&f.country_code, &f.region, &f.city]
        .into_iter()
        .flatten()
        .map(String::as_str)
        .collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join("/")
    }
}

async fn show(ctx: &Ctx, a: ShowArgs) -> anyhow::Result<Exit> {
    let store = ctx.store().await?;
    let node = ops::node(store.as_ref(), NodeId(a.id)).await?;
    let v = NodeView::new(&node, a.reveal);
    match ctx.out.format {
        OutputFormat::Json => ctx.out.json(&v)?,
        _ => {
            let fmt_opt = |o: Option<String>| o.unwrap_or_else(|| "-".into());
            let mut t = Table::new(&["FIELD", "VALUE"]);
            let mut add = |k: &str, v: Cell| t.row(vec![Cell::text(k), v]);
            add("id", Cell::text(v.id.to_string()));
            add("address", Cell::text(format!("{}:{}", v.ip, v.port)));
            add("login", Cell::text(&v.login));
            add("password", Cell::text(&v.password));
            add("status", Cell::status(v.status));
            add("level", Cell::text(v.level.as_u8().to_string()));
            add("provider", Cell::text(fmt_opt(v.provider.clone())));
            add("country", Cell::text(fmt_opt(v.country.clone())));
            add("state", Cell::text(fmt_opt(v.state.clone())));
            add("city", Cell::text(fmt_opt(v.city.clone())));
            add("zip", Cell::text(fmt_opt(v.zip.clone())));
            add("comment", Cell::text(fmt_opt(v.comment.clone())));
            add(
                "last_checked_at",
                Cell::text(fmt_opt(v.last_checked_at.map(|t| t.to_rfc3339()))),
            );
            add(
                "last_error",
                match &v.last_error {
                    Some(e) => Cell::text(e).colored(Color::Red),
                    None => Cell::text("-"),
                },
            );
            add(
                "consecutive_failures",
                Cell::text(v.consecutive_failures.to_string()),
            );
            add(
                "ping_ms",
                Cell::text(fmt_opt(v.ping_ms.map(|p| format!("{p:.1}")))),
            );
            add(
                "speed_down_mbps",
                Cell::text(fmt_opt(v.speed_down_mbps.map(|p| format!("{p:.2}")))),
            );
            add(
                "speed_up_mbps",
                Cell::text(fmt_opt(v.speed_up_mbps.map(|p| format!("{p:.2}")))),
            );
            add(
                "exit_ip",
                Cell::text(fmt_opt(v.exit_ip.map(|a| a.to_string()))),
            );
            add(
                "pptp",
                Cell::text(fmt_opt(v.pptp.as_ref().map(|p| {
                    format!(
                        "{} / {} (protocol {:#06x}, firmware {})",
                        p.hostname, p.vendor, p.protocol_version, p.firmware
                    )
                }))),
            );
            add(
                "service",
                Cell::text(fmt_opt(v.service.as_ref().map(|s| {
                    format!(
                        "socks5://{}:{}@{}:{}",
                        s.username, s.password, s.host, s.port
                    )
                }))),
            );
            add("service_wanted", Cell::text(v.service_wanted.to_string()));
            match &v.geo {
                Some(g) => {
                    let f = &g.facts;
                    add("geo_ip", Cell::text(g.ip.to_string()));
                    add("geo", Cell::text(geo_place(g)));
                    add(
                        "geo_country",
                        Cell::text(fmt_opt(match (&f.country, &f.country_code) {
                            (Some(n), Some(c)) => Some(format!("{n} ({c})")),
                            (n, c) => n.clone().or(c.clone()),
                        })),
                    );
                    add("geo_postal", Cell::text(fmt_opt(f.postal.clone())));
                    add(
                        "geo_coordinates",
                        Cell::text(fmt_opt(match (f.latitude, f.longitude) {
                            (Some(la), Some(lo)) => Some(format!("{la:.4}, {lo:.4}")),
                            _ => None,
                        })),
                    );
                    add("geo_time_zone", Cell::text(fmt_opt(f.time_zone.clone())));
                    add(
                        "asn",
                        Cell::text(fmt_opt(f.asn.map(|a| match &f.org {
                            Some(o) => format!("AS{a} {o}"),
                            None => format!("AS{a}"),
                        }))),
                    );
                    add(
                        "location_mismatch",
                        match g.location_mismatch {
                            Some(true) => {
                                Cell::text("yes: the seller's location differs").colored(Color::Red)
                            }
                            Some(false) => Cell::text("no"),
                            None => Cell::text("-"),
                        },
                    );
                    add(
                        "geo_source",
                        Cell::text(format!("{} at {}", g.source, g.at.to_rfc3339())),
                    );
                }
                None => add("geo", Cell::text("- (not looked up: connexa test geo)")),
            }
            match &v.fraud {
                Some(f) => add(
                    "fraud",
                    Cell::text(format!(
                        "score {} ({}) of {} by {} at {}",
                        f.score,
                        f.risk,
                        f.ip,
                        f.provider,
                        f.at.to_rfc3339()
                    )),
                ),
                None => add("fraud", Cell::text("- (not scored: connexa test fraud)")),
            }
            add("created_at", Cell::text(v.created_at.to_rfc3339()));
            add("updated_at", Cell::text(v.updated_at.to_rfc3339()));
            ctx.out.table(&t)?;
        }
    }
    Ok(Exit::Ok)
}

async fn add(ctx: &Ctx, a: AddArgs) -> anyhow::Result<Exit> {
    let password = if a.password == "-" {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("reading the password from stdin")
            .code(Exit::Usage)?;
        line.trim_end_matches(['\n', '\r']).to_owned()
    } else {
        a.password
    };
    let fields = NodeFields {
        ip: a.ip,
        port: a.port,
        login: a.login,
        password,
        provider: a.provider,
        country: a.country,
        state: a.state,
        city: a.city,
        zip: a.zip,
        comment: a.comment,
    };
    let store = ctx.store().await?;
    let node = match ops::add_node(store.as_ref() as &dyn NodeStore, &fields).await {
        Ok(n) => n,
        Err(e @ AddNodeError::Invalid(_)) => return Err(fail(Exit::Usage, e)),
        Err(e @ (AddNodeError::Duplicate(_) | AddNodeError::Conflict(_))) => {
            return Err(fail(Exit::Failure, e));
        }
        Err(e) => return Err(e.into()),
    };
    let v = NodeView::new(&node, false);
    let json = ctx.out.format == OutputFormat::Json;
    if !json {
        ctx.out.line(format_args!(
            "added node {}: {}:{} {} ({})",
            v.id, v.ip, v.port, v.login, v.status
        ))?;
    }
    let Some(test) = a.test else {
        if json {
            ctx.out.json(&v)?;
        }
        return Ok(Exit::Ok);
    };
    let kind = match test {
        TestArg::Light => JobKind::Light,
        TestArg::Pipeline => JobKind::Pipeline,
    };
    let prober = wiring::prober(ctx);
    if kind == JobKind::Pipeline
        && let Err(e) = prober.gre_socket().await
    {
        ctx.out.note(format_args!(
            "note: the pipeline stops after the light stage: {e}"
        ));
    }
    let engine = wiring::engine_with(ctx, Arc::new(prober)).await?;
    let job = engine
        .start_job(
            kind,
            NodeFilter::ids(vec![node.id]),
            connexa_core::engine::JobOptions::default(),
        )
        .await?;
    let followed = follow(ctx, &engine, job).await?;
    if json {
        let after = ops::node(store.as_ref() as &dyn NodeStore, node.id).await?;
        ctx.out.json(&serde_json::json!({
            "node": NodeView::new(&after, false),
            "job": followed.json(),
        }))?;
    } else {
        ctx.out.line(followed.line())?;
    }
    Ok(followed.exit())
}

async fn history(ctx: &Ctx, a: HistoryArgs) -> anyhow::Result<Exit> {
    let store = ctx.store().await?;
    let id = NodeId(a.id);
    let rows = store.history(id).await?;
    if rows.is_empty() {
        // Distinguish "no such node" from "nothing happened yet".
        ops::node(store.as_ref(), id).await?;
    }
    let views: Vec<HistoryView> = rows.iter().map(HistoryView::from).collect();
    if ctx.out.format == OutputFormat::Json {
        ctx.out.json(&views)?;
        return Ok(Exit::Ok);
    }
    let mut t = Table::new(&["WHEN", "FROM", "TO", "EVENT", "JOB", "WHY"]);
    for v in &views {
        t.row(vec![
            Cell::text(v.at.format("%Y-%m-%d %H:%M:%S").to_string()),
            Cell::status(v.from),
            match v.to {
                Some(s) => Cell::status(s),
                None => Cell::text("(deleted)").colored(Color::Red),
            },
            Cell::text(v.event),
            Cell::opt(v.job),
            Cell::opt(v.why.as_ref()),
        ]);
    }
    if t.is_empty() && ctx.out.format == OutputFormat::Human {
        ctx.out
            .line(format_args!("node {id}: no history yet (never tested)"))?;
    } else {
        ctx.out.table(&t)?;
    }
    Ok(Exit::Ok)
}

#[derive(Serialize)]
struct DeleteJson {
    deleted: u64,
    missing: Vec<NodeId>,
}

async fn delete(ctx: &Ctx, a: DeleteArgs) -> anyhow::Result<Exit> {
    let selection = super::test::selection(&a.ids, &a.filter, a.all)?;
    let store = ctx.store().await?;
    if let Selection::Ids(ids) = &selection {
        let d = ops::delete_ids(store.as_ref(), ids).await?;
        return finish_delete(ctx, d.deleted, d.missing);
    }
    let filter = selection.into_filter();
    if !a.yes {
        // Exactly the nodes counted and confirmed are deleted, even if more
        // start matching while the question is on screen.
        let ids: Vec<NodeId> = ops::all_matching(store.as_ref(), &filter)
            .await?
            .iter()
            .map(|n| n.id)
            .collect();
        let n = ids.len();
        if n == 0 {
            ctx.out.note("no nodes match; nothing deleted");
            return finish_delete(ctx, 0, Vec::new());
        }
        if !std::io::stdin().is_terminal() {
            return Err(fail(
                Exit::Usage,
                format_args!(
                    "refusing to delete {n} nodes without confirmation: stdin is not a terminal (pass --yes)"
                ),
            ));
        }
        eprint!("{n} nodes match and will be deleted. Delete them? [y/N] ");
        std::io::stderr().flush().ok();
        let mut answer = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut answer)
            .context("cannot read the answer")?;
        if !matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
            return finish_delete(ctx, 0, Vec::new());
        }
        let d = ops::delete_ids(store.as_ref(), &ids).await?;
        return finish_delete(ctx, d.deleted, Vec::new());
    }
    let deleted = store.delete(&filter).await?;
    finish_delete(ctx, deleted, Vec::new())
}

fn finish_delete(ctx: &Ctx, deleted: u64, missing: Vec<NodeId>) -> anyhow::Result<Exit> {
    match ctx.out.format {
        OutputFormat::Json => ctx.out.json(&DeleteJson {
            deleted,
            missing: missing.clone(),
        })?,
        OutputFormat::Csv => ctx.out.line(format_args!("deleted\n{deleted}"))?,
        OutputFormat::Human => ctx.out.line(format_args!("deleted {deleted} nodes"))?,
    }
    if missing.is_empty() {
        return Ok(Exit::Ok);
    }
    let list: Vec<String> = missing.iter().map(|m| m.to_string()).collect();
    Err(fail(
        Exit::NotFound,
        format_args!("no node with id {}", list.join(", ")),
    ))
}

async fn edit(ctx: &Ctx, a: EditArgs) -> anyhow::Result<Exit> {
    let patch = MetaPatch {
        provider: a.provider,
        country: a.country,
        state: a.state,
        city: a.city,
        zipcode: a.zip,
        comment: a.comment,
    };
    if patch.is_empty() {
        return Err(fail(
            Exit::Usage,
            "nothing to change: give --comment, --city, --state, --country, --zip or --provider",
        ));
    }
    let store = ctx.store().await?;
    let node = ops::edit_meta(store.as_ref() as &dyn NodeStore, NodeId(a.id), &patch).await?;
    let v = NodeView::new(&node, false);
    match ctx.out.format {
        OutputFormat::Json => ctx.out.json(&v)?,
        _ => {
            let o = |x: &Option<String>| x.clone().unwrap_or_else(|| "-".into());
            ctx.out.line(format_args!(
                "node {}: provider {}, country {}, state {}, city {}, zip {}, comment {}",
                v.id,
                o(&v.provider),
                o(&v.country),
                o(&v.state),
                o(&v.city),
                o(&v.zip),
                o(&v.comment)
            ))?;
        }
    }
    Ok(Exit::Ok)
}
