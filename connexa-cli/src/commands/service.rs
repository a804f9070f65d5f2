//! `connexa service start|stop|restart|list`: the desired service state,
//! restart requests, and the services recorded as running with their counters.

use clap::{Args, Subcommand};
use connexa_core::domain::{NodeId, ServiceKind};
use connexa_core::ops::{self, RestartRequest, RunningService, ServiceChange};

use crate::cli::Ctx;
use crate::commands::test::selection;
use crate::exit::{Exit, fail};
use crate::filter::FilterArgs;
use crate::output::{Cell, OutputFormat, Table, escape};

const HOW: &str = "\
`start` and `stop` only record the desired state (service_wanted). The SOCKS5
services themselves are started, restarted after a restart, and stopped by the
reconciler inside a running `connexa run` (or connexa-http) process; `connexa
run --once` makes one pass. Services run only through verified nodes
(speed_ok, online, offline).";

const WHO_RESTARTS: &str = "the reconciler of the `connexa run` (or connexa-http) process running \
them restarts them on its next pass, on the same port with the same credentials; `connexa run \
--once` makes one pass now";

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

--kind tun runs the node's tunnel as a kernel TUN interface (cx<node id>,
point-to-point, the PPP addresses, up) on the host of the process running it,
instead of a SOCKS5 listener: that process needs CAP_NET_ADMIN. Route traffic
into it yourself (e.g. ip route add 10.78.0.1/32 dev cx12). Changing the kind
of a running service restarts it as the new kind.

--kind openvpn runs an OpenVPN server (Debian's openvpn) per node on the
host of the process running it: its own UDP port ([services] openvpn_ports),
its own client subnet ([services] openvpn_subnets), the node's tunnel as
cx<node id>, a policy-routing rule and source NAT to the PPP address. It needs
CAP_NET_ADMIN and the programs openvpn, nft and ip. `connexa service profile
ID -o FILE.ovpn` writes the client profile once the service runs.

Examples:
  connexa service start --status speed_ok --country US
  connexa service start 12 13 && connexa run --once
  connexa service start --kind tun 12
  connexa service start --kind openvpn 12")]
    Start(StartArgs),
    /// No longer want a service on the selected nodes (the reconciler stops them).
    #[command(after_help = "\
The reconciler of a running `connexa run` (or connexa-http) stops the services;
`connexa run --once` makes one pass.

Examples:
  connexa service stop --all
  connexa service stop 12")]
    Stop(SelectArgs),
    /// Restart the running services of the selected nodes (same port, same credentials).
    #[command(after_help = "\
Records a restart request for each selected node whose service runs (online or
offline with an endpoint, still wanted). The reconciler of the `connexa run`
(or connexa-http) process running the service stops its listener and starts it
again on its next pass, on the same port with the same credentials (another
process leaves the request to it; a failed stop keeps it for the next pass).
The node's status does not change.

Exit 0 when every selected node's service is to restart, 4 when some selected
nodes run no service (named), 1 when none does, 6 for an id that does not exist.

Examples:
  connexa service restart 12
  connexa service restart --country DE")]
    Restart(SelectArgs),
    /// The running services with their counters (json and csv carry every column).
    #[command(after_help = "\
Lists what the store records as running (nodes online or offline with an
endpoint), with the counters the process running each service last recorded
(at each reconciler and monitor pass): connections open now and in total,
bytes up (client to target) and down, when it started, the last error. The
credentials are printed: they are what SOCKS5 clients need.

Examples:
  connexa service list
  connexa service list --proxies > proxies.txt
  connexa service list --country DE --output csv > socks.csv")]
    List(ListArgs),
    /// Write the OpenVPN client profile (.ovpn) of a node's running openvpn service.
    #[command(after_help = "\
The profile carries the CA, the client certificate and its private key inline,
`remote <public_host> <port> udp`, TLS 1.2 or newer and AEAD data ciphers. It
stays valid while the service runs and across restarts of Connexa; a stop (or
a delete) makes it useless: the next start makes a new client certificate and
the server accepts only that one. FILE is created with mode 0600.

Exit 0 with the profile, 1 when the node runs no openvpn service, 6 for an id
that does not exist.

Examples:
  connexa service profile 12 -o node12.ovpn
  connexa service profile 12 > node12.ovpn")]
    Profile(ProfileArgs),
}

/// `service profile`.
#[derive(Debug, Args)]
pub struct ProfileArgs {
    /// The node id.
    #[arg(value_name = "ID")]
    pub id: i64,
    /// Write to FILE (mode 0600) instead of stdout.
    #[arg(short = 'o', long = "out", value_name = "FILE")]
    pub out: Option<std::path::PathBuf>,
    /// Overwrite FILE if it exists.
    #[arg(long, requires = "out")]
    pub force: bool,
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

/// `service start`.
#[derive(Debug, Args)]
pub struct StartArgs {
    #[command(flatten)]
    pub select: SelectArgs,
    /// The kind of service, socks|tun|openvpn: socks (a SOCKS5 listener), tun
    /// (the node's tunnel as a TUN interface cx<node id>) or openvpn (an
    /// OpenVPN server through the node); tun and openvpn need CAP_NET_ADMIN.
    #[arg(long, value_name = "KIND", default_value = "socks", value_parser = parse_kind)]
    pub kind: ServiceKind,
    /// Pin the services to this worker (`connexa run --worker NAME`): on
    /// PostgreSQL they run there only (moving there once it is alive).
    #[arg(long, value_name = "WORKER")]
    pub on: Option<String>,
    /// Run the services only on workers with this label (`connexa run
    /// --label`; PostgreSQL).
    #[arg(long, value_name = "LABEL", value_parser = crate::commands::run::label)]
    pub label: Option<String>,
}

fn parse_kind(s: &str) -> Result<ServiceKind, String> {
    s.parse()
}

/// `service list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Print only one `host:port:user:pass` line per service (human output).
    #[arg(long)]
    pub proxies: bool,
}

/// Runs a `service` subcommand.
pub async fn exec(ctx: &Ctx, c: ServiceCommand) -> anyhow::Result<Exit> {
    match c {
        ServiceCommand::Start(a) => want(ctx, a.select, Some((a.kind, a.on, a.label))).await,
        ServiceCommand::Stop(a) => want(ctx, a, None).await,
        ServiceCommand::Restart(a) => restart(ctx, a).await,
        ServiceCommand::List(a) => list(ctx, a).await,
        ServiceCommand::Profile(a) => profile(ctx, a).await,
    }
}

async fn profile(ctx: &Ctx, a: ProfileArgs) -> anyhow::Result<Exit> {
    use anyhow::Context as _;
    let store = ctx.store().await?;
    let dir = ctx.effective_config().openvpn_dir();
    let text = match ops::service_profile(store.as_ref(), NodeId(a.id), &dir).await {
        Ok(t) => t,
        Err(ops::ProfileError::Store(connexa_core::ports::StoreError::NotFound(id))) => {
            return Err(fail(Exit::NotFound, format_args!("no node with id {id}")));
        }
        Err(e) => return Err(fail(Exit::Failure, e)),
    };
    let Some(path) = &a.out else {
        use std::io::Write as _;
        std::io::stdout()
            .lock()
            .write_all(text.as_bytes())
            .context("writing the profile to stdout")?;
        return Ok(Exit::Ok);
    };
    // The profile carries the client's private key.
    let mut file = crate::output::private_file(path, a.force)?;
    {
        use std::io::Write as _;
        file.write_all(text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    match ctx.out.format {
        OutputFormat::Json => ctx.out.json(&serde_json::json!({
            "node": a.id, "file": path.display().to_string(),
        }))?,
        _ => ctx.out.line(format_args!(
            "wrote the OpenVPN profile of node {} to {}",
            a.id,
            path.display()
        ))?,
    }
    Ok(Exit::Ok)
}

/// Ids given that match no node (sorted, deduplicated).
async fn missing_ids(
    store: &dyn connexa_core::ports::NodeStore,
    ids: &[i64],
    filter: &connexa_core::domain::NodeFilter,
) -> anyhow::Result<Vec<i64>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let found: std::collections::HashSet<NodeId> = ops::all_matching(store, filter)
        .await?
        .into_iter()
        .map(|n| n.id)
        .collect();
    let mut m: Vec<i64> = ids
        .iter()
        .copied()
        .filter(|id| !found.contains(&NodeId(*id)))
        .collect();
    m.sort_unstable();
    m.dedup();
    Ok(m)
}

fn id_list(ids: &[NodeId]) -> String {
    let shown: Vec<String> = ids.iter().take(20).map(ToString::to_string).collect();
    let more = if ids.len() > 20 {
        format!(" and {} more", ids.len() - 20)
    } else {
        String::new()
    };
    format!("{}{more}", shown.join(", "))
}

async fn restart(ctx: &Ctx, a: SelectArgs) -> anyhow::Result<Exit> {
    let filter = selection(&a.ids, &a.filter, a.all)?.into_filter();
    let store = ctx.store().await?;
    let req: RestartRequest = ops::restart_services(store.as_ref(), &filter).await?;
    let missing = missing_ids(store.as_ref(), &a.ids, &filter).await?;
    if ctx.out.format == OutputFormat::Json {
        ctx.out.json(&serde_json::json!({
            "matched": req.matched, "restarting": req.restarting,
            "not_running": req.not_running, "missing": missing,
        }))?;
    } else if !req.restarting.is_empty() {
        ctx.out.line(format_args!(
            "restart requested for {} services ({})",
            req.restarting.len(),
            id_list(&req.restarting)
        ))?;
        if missing.is_empty() {
            ctx.out.note(WHO_RESTARTS);
        }
    }
    if !missing.is_empty() {
        let list: Vec<String> = missing.iter().map(ToString::to_string).collect();
        return Err(fail(
            Exit::NotFound,
            format_args!("no node with id {}", list.join(", ")),
        ));
    }
    if req.restarting.is_empty() {
        return Err(fail(
            Exit::Failure,
            format_args!(
                "nothing to restart: no service runs on the {} selected nodes ({}); `connexa service start` wants one, a running `connexa run` starts it",
                req.matched,
                id_list(&req.not_running)
            ),
        ));
    }
    if !req.not_running.is_empty() {
        if ctx.out.format != OutputFormat::Json {
            ctx.out.line(format_args!(
                "{} selected nodes run no service and were left alone ({})",
                req.not_running.len(),
                id_list(&req.not_running)
            ))?;
        }
        return Ok(Exit::Partial);
    }
    Ok(Exit::Ok)
}

/// `start`: a start of this kind (pinned to a worker or not); `None`: a stop.
async fn want(
    ctx: &Ctx,
    a: SelectArgs,
    start: Option<(ServiceKind, Option<String>, Option<String>)>,
) -> anyhow::Result<Exit> {
    let wanted = start.is_some();
    let (kind, on, label) = match start {
        Some((k, on, label)) => (Some(k), on, label),
        None => (None, None, None),
    };
    if on
        .as_deref()
        .is_some_and(|w| w.trim().is_empty() || w.chars().count() > 64 || w.contains(','))
    {
        return Err(fail(
            Exit::Usage,
            "--on takes a worker name: 1 to 64 characters, no comma",
        ));
    }
    let filter = selection(&a.ids, &a.filter, a.all)?.into_filter();
    let store = ctx.store().await?;
    let kinds = match kind {
        Some(k) => Some(ops::want_service_kind(store.as_ref(), &filter, k).await?),
        None => None,
    };
    let change = ops::want_services(store.as_ref(), &filter, wanted).await?;
    let pinned = match on.clone() {
        Some(w) => Some(ops::pin_services(store.as_ref(), &filter, w).await?),
        None => None,
    };
    let labelled = match label.clone() {
        Some(l) => Some(ops::label_services(store.as_ref(), &filter, l).await?),
        None => None,
    };
    // Ids given that match no node.
    let missing = missing_ids(store.as_ref(), &a.ids, &filter).await?;
    if ctx.out.format == OutputFormat::Json {
        let mut v = serde_json::json!({
            "wanted": change.wanted, "matched": change.matched,
            "changed": change.changed, "unchanged": change.unchanged,
            "not_verified": change.not_verified, "missing": missing,
        });
        if let Some(k) = &kinds {
            v["kind"] = serde_json::json!(k.kind);
            v["kind_changed"] = serde_json::json!(k.changed);
            v["restarting"] = serde_json::json!(k.restarting);
        }
        if let (Some(w), Some(p)) = (&on, &pinned) {
            v["on"] = serde_json::json!(w);
            v["pinned"] = serde_json::json!(p);
        }
        if let (Some(l), Some(ids)) = (&label, &labelled) {
            v["label"] = serde_json::json!(l);
            v["labelled"] = serde_json::json!(ids);
        }
        ctx.out.json(&v)?;
    } else {
        ctx.out.line(describe(&change))?;
        if let Some(k) = kinds.as_ref().filter(|k| !k.changed.is_empty()) {
            ctx.out.line(format_args!(
                "service kind set to {} on {} nodes ({})",
                k.kind,
                k.changed.len(),
                id_list(&k.changed)
            ))?;
            if !k.restarting.is_empty() {
                ctx.out.line(format_args!(
                    "restart requested for {} running services of the other kind ({})",
                    k.restarting.len(),
                    id_list(&k.restarting)
                ))?;
            }
        }
        if let (Some(w), Some(p)) = (&on, pinned.as_ref().filter(|p| !p.is_empty())) {
            ctx.out.line(format_args!(
                "pinned to worker {w}: {} services ({})",
                p.len(),
                id_list(p)
            ))?;
        }
        if let (Some(l), Some(ids)) = (&label, labelled.as_ref().filter(|p| !p.is_empty())) {
            ctx.out.line(format_args!(
                "placed only on workers labelled {l}: {} services ({})",
                ids.len(),
                id_list(ids)
            ))?;
        }
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

/// Bytes in a compact human form (`0`, `512`, `1.5k`, `20.3M`, `1.2G`).
fn compact_bytes(n: u64) -> String {
    const UNITS: [(&str, f64); 4] = [
        ("T", 1024f64 * 1024.0 * 1024.0 * 1024.0),
        ("G", 1024f64 * 1024.0 * 1024.0),
        ("M", 1024f64 * 1024.0),
        ("k", 1024f64),
    ];
    let v = n as f64;
    for (unit, size) in UNITS {
        if v >= size {
            return format!("{:.1}{unit}", v / size);
        }
    }
    n.to_string()
}

fn counter<T: ToString>(
    s: &RunningService,
    f: impl Fn(&connexa_core::ports::ServiceCounters) -> T,
) -> Cell {
    match &s.counters {
        Some(c) => Cell::num(f(c)),
        None => Cell::opt(None::<String>).right(),
    }
}

async fn list(ctx: &Ctx, a: ListArgs) -> anyhow::Result<Exit> {
    let store = ctx.store().await?;
    let services = ops::running_services(store.as_ref(), &a.filter.validated()?).await?;
    match ctx.out.format {
        OutputFormat::Json => ctx.out.json(&services)?,
        OutputFormat::Csv => {
            let mut t = Table::new(&[
                "node",
                "node_ip",
                "status",
                "host",
                "port",
                "username",
                "password",
                "wanted",
                "connections",
                "connections_total",
                "bytes_up",
                "bytes_down",
                "started_at",
                "last_error",
                "restart_pending",
                "kind",
                "interface",
                "worker",
            ]);
            for s in &services {
                let c = s.counters.as_ref();
                let n = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
                t.row(vec![
                    Cell::num(s.node.0),
                    Cell::text(&s.node_ip),
                    Cell::text(s.status.as_str()),
                    Cell::text(&s.host),
                    Cell::num(s.port),
                    Cell::text(&s.username),
                    Cell::text(&s.password),
                    Cell::text(s.wanted.to_string()),
                    Cell::text(n(c.map(|c| c.connections))),
                    Cell::text(n(c.map(|c| c.connections_total))),
                    Cell::text(n(c.map(|c| c.bytes_up))),
                    Cell::text(n(c.map(|c| c.bytes_down))),
                    Cell::text(
                        c.and_then(|c| c.started_at)
                            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                            .unwrap_or_default(),
                    ),
                    Cell::text(c.and_then(|c| c.last_error.clone()).unwrap_or_default()),
                    Cell::text(s.restart_pending.to_string()),
                    Cell::text(s.kind.as_str()),
                    Cell::text(s.interface.clone().unwrap_or_default()),
                    Cell::text(s.worker.clone().unwrap_or_default()),
                ]);
            }
            ctx.out.table(&t)?;
        }
        OutputFormat::Human => {
            if services.is_empty() {
                ctx.out.line("no services running")?;
                ctx.out.note(HOW);
            } else if a.proxies {
                // SOCKS5 services only: a `tun` service is no proxy.
                for s in services.iter().filter(|s| s.kind == ServiceKind::Socks) {
                    ctx.out.line(format_args!(
                        "{}:{}:{}:{}",
                        s.host, s.port, s.username, s.password
                    ))?;
                }
            } else {
                // The WORKER column only where services are placed (PostgreSQL).
                let placed = services.iter().any(|s| s.worker.is_some());
                let mut head = vec!["NODE", "STATUS", "PROXY"];
                if placed {
                    head.push("WORKER");
                }
                head.extend(["CONN", "TOTAL", "UP", "DOWN", "STARTED", "LAST ERROR"]);
                let mut t = Table::new(&head);
                for s in &services {
                    let c = s.counters.as_ref();
                    let mut status = Cell::status(s.status);
                    if s.restart_pending {
                        status = Cell::text(format!("{} (restart pending)", s.status.as_str()))
                            .colored(crate::output::status_color(s.status));
                    } else if !s.wanted {
                        status = Cell::text(format!("{} (stopping)", s.status.as_str()))
                            .colored(crate::output::status_color(s.status));
                    }
                    let access = match (&s.interface, s.kind) {
                        (Some(iface), _) => format!("tun {iface}"),
                        (None, ServiceKind::Openvpn) => format!(
                            "openvpn {}:{} udp, clients {} (service profile {})",
                            s.host,
                            s.port,
                            s.username.trim_start_matches("openvpn:"),
                            s.node
                        ),
                        (None, _) => {
                            format!("{}:{}:{}:{}", s.host, s.port, s.username, s.password)
                        }
                    };
                    let mut row = vec![Cell::num(s.node.0), status, Cell::text(access)];
                    if placed {
                        row.push(Cell::opt(
                            s.worker.as_deref().map(|w| escape(w).into_owned()),
                        ));
                    }
                    row.extend([
                        counter(s, |c| c.connections),
                        counter(s, |c| c.connections_total),
                        counter(s, |c| compact_bytes(c.bytes_up)),
                        counter(s, |c| compact_bytes(c.bytes_down)),
                        Cell::opt(
                            c.and_then(|c| c.started_at)
                                .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string()),
                        ),
                        Cell::opt(c.and_then(|c| c.last_error.clone())),
                    ]);
                    t.row(row);
                }
                ctx.out.table(&t)?;
            }
        }
    }
    Ok(Exit::Ok)
}

#[cfg(test)]
mod tests {
    use super::compact_bytes;

    #[test]
    fn bytes_are_compact() {
        assert_eq!(compact_bytes(0), "0");
        assert_eq!(compact_bytes(1023), "1023");
        assert_eq!(compact_bytes(1536), "1.5k");
        assert_eq!(compact_bytes(300 * 1024 * 1024), "300.0M");
        assert_eq!(compact_bytes(3 * 1024 * 1024 * 1024), "3.0G");
    }
}
