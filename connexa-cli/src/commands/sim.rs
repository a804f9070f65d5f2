//! `connexa sim`: a simulated PPTP fleet on loopback, in the foreground.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use connexa_core::export::ExportFormat;
use connexa_core::sim::{Behaviour, Fleet, FleetSpec, TunnelSpec, parse_mix};
use serde::Serialize;

use crate::cli::Ctx;
use crate::exit::{Exit, WithCode, fail};
use crate::output::OutputFormat;

/// Run a simulated PPTP fleet on loopback until Ctrl-C or SIGTERM.
#[derive(Debug, Args)]
#[command(after_help = "\
Each node gets its own loopback address (127.1.0.1, 127.1.0.2, ... by default)
and answers the PPTP handshake the way its behaviour says. The node list is
written once every listener is up (atomically: the file appears complete), so
it can be imported right away. Nothing leaves 127.0.0.0/8.

Behaviours for --mix: healthy, refused (nothing listens), silent (accepts, never
answers), garbage (answers non-PPTP bytes), slow[:MILLIS] (answers late; default
3000), wrong[:CODE] (rejects the handshake with result CODE; default 2).

Nodes also serve logins (`connexa test auth`): each has the login and password
written to the list, answers calls and runs LCP + MS-CHAPv2 over GRE (needs
CAP_NET_RAW: run as root). Login behaviours: auth_reject (password rejected,
E=691), call_reject[:CODE] (call refused with result CODE; default 7),
lcp_silent (never answers LCP), auth_silent (LCP up, then no MS-CHAPv2),
flaky[:N] (closes its first N connections at once, then healthy; default 1).
With --tunnels (or --tunnel-rate) a login goes on to MPPE + IPCP and a host
behind each node serves `GET /bytes?N` on 10.78.0.1:80, for `connexa test
speed` (set test_url = \"http://10.78.0.1/bytes?100000000\"). With
--speed-key FILE it also serves the keyed speed endpoint (/speed/down) with
the key in FILE (created 0600 if absent): set self_url = \"http://10.78.0.1\"
and speed_key_file = FILE for `connexa test speed` to verify every byte;
fake_speed nodes answer it with bytes of their own (content mismatch).

Examples:
  connexa sim --nodes 300 --mix healthy=80,refused=10,silent=10 --list fleet.txt
  connexa sim --nodes 1000 --mix healthy=90,auth_reject=10 --list fleet.txt
  connexa sim --nodes 10 --tunnel-rate 250000 --list fleet.txt
  connexa sim --nodes 20 --port 21723 --format csv --list fleet.csv &
  connexa import fleet.csv")]
pub struct SimArgs {
    /// Number of nodes.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub nodes: u32,
    /// Behaviour mix as NAME=WEIGHT,...
    #[arg(long, value_name = "MIX", default_value = "healthy=1")]
    pub mix: String,
    /// Write the node list to FILE (overwritten) instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub list: Option<PathBuf>,
    /// Format of the node list.
    #[arg(long, value_enum, default_value_t = ListFormat::Pptp)]
    pub format: ListFormat,
    /// Control port every node listens on.
    #[arg(long, value_name = "P", default_value_t = 1723)]
    pub port: u16,
    /// Address of the first node (must be in 127.0.0.0/8).
    #[arg(long, value_name = "IP", default_value = "127.1.0.1")]
    pub first_ip: Ipv4Addr,
    /// Serve tunnels after login: MPPE + IPCP, HTTP bytes on 10.78.0.1:80.
    #[arg(long)]
    pub tunnels: bool,
    /// Rate limit of each node's tunnel, bytes/s (implies --tunnels).
    #[arg(long, value_name = "BYTES_PER_S")]
    pub tunnel_rate: Option<u64>,
    /// Serve the keyed speed endpoint behind each node with the key in FILE
    /// (created if absent; implies --tunnels).
    #[arg(long, value_name = "FILE")]
    pub speed_key: Option<PathBuf>,
}

/// Node list formats the import reads back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ListFormat {
    /// `ip:login:password` (`[ip]:port:login:password` off port 1723).
    Pptp,
    /// CSV with a header row.
    Csv,
    /// A JSON array.
    Json,
    /// `ip login password` columns.
    Txt,
}

impl From<ListFormat> for ExportFormat {
    fn from(f: ListFormat) -> Self {
        match f {
            ListFormat::Pptp => ExportFormat::Pptp,
            ListFormat::Csv => ExportFormat::Csv,
            ListFormat::Json => ExportFormat::Json,
            ListFormat::Txt => ExportFormat::Txt,
        }
    }
}

#[derive(Serialize)]
struct Ready {
    nodes: usize,
    first_ip: Ipv4Addr,
    last_ip: Ipv4Addr,
    port: u16,
    format: &'static str,
    list: Option<String>,
    mix: BTreeMap<String, usize>,
}

/// The `--mix` name of a behaviour.
pub fn behaviour_name(b: &Behaviour) -> String {
    b.to_string()
}

/// Starts the fleet, writes the list, waits for a signal.
pub async fn exec(ctx: &Ctx, args: SimArgs) -> anyhow::Result<Exit> {
    let spec = fleet_spec(&args)?;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for b in spec.behaviours() {
        *counts.entry(behaviour_name(&b)).or_default() += 1;
    }
    // Signals are hooked before anything is announced, so a SIGTERM that
    // follows the list at once is never missed.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch SIGTERM")?;
    let fleet = Fleet::start(spec).await.code(Exit::Usage)?;
    if let Some(why) = fleet.logins_unavailable() {
        ctx.out.note(format_args!(
            "warning: the nodes answer the handshake only, no logins: {why}"
        ));
    }
    let format = ExportFormat::from(args.format);
    match &args.list {
        Some(path) => write_atomically(&fleet, format, path)?,
        None => {
            let mut out = std::io::stdout().lock();
            fleet
                .write_list(format, &mut out)
                .context("writing the node list")?;
            out.flush()?;
        }
    }
    announce(ctx, &fleet, &args, format, &counts)?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => { r.context("cannot watch Ctrl-C")?; }
        _ = term.recv() => {}
    }
    fleet.close().await;
    ctx.out.note("simulated fleet stopped");
    Ok(Exit::Ok)
}

/// The fleet `sim` starts, from its options.
fn fleet_spec(args: &SimArgs) -> anyhow::Result<FleetSpec> {
    let mix = parse_mix(&args.mix).code(Exit::Usage)?;
    let spec = FleetSpec::new(args.nodes as usize)
        .mix(mix)
        .first_ip(args.first_ip)
        .port(args.port);
    let speed_key = match &args.speed_key {
        Some(path) => Some(
            connexa_core::speed::keyed::SpeedKey::load_or_create(path)
                .map_err(|e| fail(Exit::Usage, format_args!("--speed-key: {e}")))?,
        ),
        None => None,
    };
    Ok(
        if args.tunnels || args.tunnel_rate.is_some() || speed_key.is_some() {
            spec.tunnels(TunnelSpec {
                rate_limit: args.tunnel_rate,
                speed_key,
            })
        } else {
            spec
        },
    )
}

/// The ready line (JSON with `--list`) and the note on stderr.
fn announce(
    ctx: &Ctx,
    fleet: &Fleet,
    args: &SimArgs,
    format: ExportFormat,
    counts: &BTreeMap<String, usize>,
) -> anyhow::Result<()> {
    let nodes = fleet.nodes();
    let last_ip = nodes.last().map(|n| n.ip).unwrap_or(args.first_ip);
    if ctx.out.format == OutputFormat::Json && args.list.is_some() {
        let mut stdout = std::io::stdout().lock();
        serde_json::to_writer(
            &mut stdout,
            &Ready {
                nodes: nodes.len(),
                first_ip: args.first_ip,
                last_ip,
                port: args.port,
                format: format.as_str(),
                list: args.list.as_ref().map(|p| p.display().to_string()),
                mix: counts.clone(),
            },
        )?;
        writeln!(stdout)?;
        stdout.flush()?;
    }
    let mix_text: Vec<String> = counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
    ctx.out.note(format_args!(
        "simulating {} nodes ({}) on {}..{} port {}{}; stop with Ctrl-C",
        nodes.len(),
        mix_text.join(", "),
        args.first_ip,
        last_ip,
        args.port,
        args.list
            .as_ref()
            .map(|p| format!("; node list ({format}) in {}", p.display()))
            .unwrap_or_default()
    ));
    Ok(())
}

fn write_atomically(fleet: &Fleet, format: ExportFormat, path: &Path) -> anyhow::Result<()> {
    let file_name = path.file_name().ok_or_else(|| {
        fail(
            Exit::Usage,
            format_args!("--list {}: not a file name", path.display()),
        )
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let result = (|| -> anyhow::Result<()> {
        let mut f =
            File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        fleet.write_list(format, &mut f)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
        .with_context(|| format!("cannot write the node list to {}", path.display()))
        .code(Exit::Usage)
}
