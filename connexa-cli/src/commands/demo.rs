//! `connexa demo`: the README's first command. A simulated fleet on loopback,
//! imported into the database and tested (the deepest test this machine can
//! run against it) with the live progress bar, then the counts per status.

use std::collections::{BTreeMap, HashMap};
use std::io::Cursor;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use connexa_core::domain::{NodeFilter, NodeId, Status};
use connexa_core::engine::JobOptions;
use connexa_core::export::ExportFormat;
use connexa_core::import::{Existing, ImportOptions, import_into};
use connexa_core::ops::{self, TestPlan};
use connexa_core::ports::JobKind;
use connexa_core::probe::{LightProber, ProbeConfig};
use connexa_core::runtime::NetworkPorts;
use connexa_core::sim::{
    Behaviour, Fleet, FleetSpec, SimError, TUNNEL_HOST, TunnelSpec, parse_mix,
};
use connexa_core::socks::client as socks_client;
use connexa_core::socks::proto::TargetAddr;
use connexa_core::store::redact_url;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::cli::{Ctx, DEFAULT_DB};
use crate::commands::sim::behaviour_name;
use crate::exit::{Exit, WithCode, fail};
use crate::output::{Cell, OutputFormat, Table};
use crate::progress::follow;

/// The demo's own database, used unless `--db` is given on the command line.
pub const DEMO_DB: &str = "sqlite://connexa-demo.db?mode=rwc";

/// Bytes per second each simulated node's tunnel serves (4 Mbit/s).
const DEMO_RATE: u64 = 500_000;

/// What the demo fetches through a started SOCKS5 service.
const DEMO_FETCH_BYTES: u64 = 1_000_000;

/// The demo's settings: the configuration file's, with the speed test pointed
/// at the keyed endpoint of the simulator's tunnel host and kept short.
fn demo_config(ctx: &Ctx) -> connexa_core::config::Config {
    let mut c = ctx.effective_config();
    c.test.self_url = Some(format!("http://{TUNNEL_HOST}"));
    c.test.self_upload = false;
    c.test.extra_test_urls.clear();
    c.test.upload_url = None;
    c.test.speed_duration_secs = 2.0;
    c.test.speed_warmup_secs = 0.5;
    c.test.speed_streams = 2;
    c
}

/// The default behaviour mix of the demo fleet.
pub const DEFAULT_MIX: &str = "healthy=70,refused=10,silent=10,garbage=5,wrong=5";

/// Run a simulated fleet on loopback, import it and test it with live progress.
#[derive(Debug, Args)]
#[command(after_help = "\
What it does, in a few seconds and only on 127.0.0.0/8:
  1. starts a simulated PPTP fleet in this process (--nodes, --mix as in `connexa sim`);
  2. writes its node list in the pptp import format (also to --list FILE) and
     imports it into the demo's own database, connexa-demo.db in this
     directory (--db on the command line chooses another; connexa.db,
     $CONNEXA_DB and the config's `database` are never touched);
  3. runs the deepest test this machine can run against it with the live
     progress bar: the pipeline (light, auth, speed) when every stage works;
     stages that cannot run are named in one line and skipped (the auth and
     speed tests need CAP_NET_RAW, i.e. root, and a fleet that answers logins);
  4. prints the counts per status and what to try next.
The fleet stops when the demo ends; the results stay in the database.

Examples:
  connexa demo
  connexa demo --nodes 1000 --mix healthy=90,silent=10
  connexa --db sqlite:///tmp/demo.db?mode=rwc demo --output json")]
pub struct DemoArgs {
    /// Number of simulated nodes.
    #[arg(long, value_name = "N", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub nodes: u32,
    /// Behaviour mix as NAME=WEIGHT,... (see `connexa sim --help`).
    #[arg(long, value_name = "MIX", default_value = DEFAULT_MIX)]
    pub mix: String,
    /// Control port of the simulated nodes.
    #[arg(long, value_name = "P", default_value_t = 1723)]
    pub port: u16,
    /// Address of the first simulated node (in 127.0.0.0/8).
    #[arg(long, value_name = "IP", default_value = "127.1.0.1")]
    pub first_ip: Ipv4Addr,
    /// Also write the fleet's node list (pptp format) to FILE.
    #[arg(long, value_name = "FILE")]
    pub list: Option<PathBuf>,
}

/// Runs the demo.
pub async fn exec(ctx: &Ctx, a: DemoArgs) -> anyhow::Result<Exit> {
    let mix = parse_mix(&a.mix).code(Exit::Usage)?;
    // Never the operator's database: the demo's own file unless --db says
    // otherwise on this command line ($CONNEXA_DB and the config's
    // `database` name the operator's).
    let own;
    let ctx = if ctx.global.db_on_command_line {
        ctx
    } else {
        own = Ctx {
            global: crate::cli::GlobalArgs {
                db: Some(DEMO_DB.to_owned()),
                ..ctx.global.clone()
            },
            config: connexa_core::config::Config {
                database: None,
                ..ctx.config.clone()
            },
            out: ctx.out,
        };
        &own
    };
    // Open the database first: a bad --db fails before anything starts.
    let store = ctx.store().await?;
    // The speed test's key (the file next to the database, created on first
    // use): the simulated nodes serve the keyed stream the tester verifies.
    let speed_key = connexa_core::runtime::speed_key(&demo_config(ctx))
        .map_err(|e| fail(Exit::Config, format_args!("the speed test key: {e}")))?;
    let spec = FleetSpec::new(a.nodes as usize)
        .mix(mix)
        .first_ip(a.first_ip)
        .port(a.port)
        // Nodes that log in also bring tunnels up (MPPE, IPCP) with an HTTP
        // byte source behind them, so the speed test and a SOCKS5 service
        // have something real to measure and fetch.
        .tunnels(TunnelSpec {
            rate_limit: Some(DEMO_RATE),
            speed_key: Some(speed_key),
        });
    let fleet = Fleet::start(spec).await.map_err(|e| match e {
        e @ SimError::Bind { .. } => fail(
            Exit::Usage,
            format_args!(
                "cannot start the simulated fleet: {e} (choose other addresses with --first-ip or --port)"
            ),
        ),
        e => fail(Exit::Usage, format_args!("cannot start the simulated fleet: {e}")),
    })?;
    ctx.out.note(format_args!(
        "database: {} ({})",
        redact_url(&ctx.db_url()),
        if ctx.global.db_on_command_line {
            "--db"
        } else {
            "the demo's own; --db chooses another, your connexa.db and $CONNEXA_DB are not touched"
        }
    ));
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for n in fleet.nodes() {
        *counts.entry(behaviour_name(&n.behaviour)).or_default() += 1;
    }
    let last_ip = fleet.nodes().last().map(|n| n.ip).unwrap_or(a.first_ip);
    let mix_text: Vec<String> = counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
    ctx.out.note(format_args!(
        "fleet: {} simulated nodes on {}..{} port {} ({})",
        fleet.nodes().len(),
        a.first_ip,
        last_ip,
        a.port,
        mix_text.join(", ")
    ));

    // The node list, in an import format.
    let mut list = Vec::new();
    fleet
        .write_list(ExportFormat::Pptp, &mut list)
        .context("writing the node list")?;
    if let Some(path) = &a.list {
        std::fs::write(path, &list)
            .with_context(|| format!("cannot write the node list to {}", path.display()))
            .code(Exit::Usage)?;
    }

    // Import; nodes of an earlier demo run are tested again.
    let report = import_into(store.clone(), Cursor::new(list), ImportOptions::default()).await;
    if let Some(why) = &report.failure {
        return Err(fail(Exit::Config, format_args!("import stopped: {why}")));
    }
    let added = report.added.len();
    let mut ids: Vec<NodeId> = report.added_ids();
    ids.extend(report.duplicates.iter().filter_map(|d| match d.of {
        Existing::Stored(id) => Some(id),
        Existing::Line(_) => None,
    }));
    ids.sort_unstable();
    ids.dedup();
    ctx.out.note(format_args!(
        "database: {} — {added} nodes added, {} already there",
        redact_url(&ctx.db_url()),
        ids.len() - added
    ));

    // The deepest test this machine can run against the fleet.
    // Short timeouts (loopback answers at once); no ICMP: on loopback it adds
    // nothing, and unprivileged it would only warn.
    let prober = Arc::new(LightProber::new(ProbeConfig {
        connect_timeout: Duration::from_secs(2),
        handshake_timeout: Duration::from_secs(2),
        icmp: None,
        ..ProbeConfig::default()
    }));
    let config = demo_config(ctx);
    let plan = match fleet
        .nodes()
        .iter()
        .position(|n| n.behaviour == Behaviour::Healthy)
    {
        Some(i) => {
            let sample = fleet.nodes()[i].node(NodeId(0));
            let speed = NetworkPorts::with_prober(&config, Arc::clone(&prober)).speed;
            ops::deepest_test(
                prober.as_ref(),
                Some(speed.as_ref()),
                &sample,
                Duration::from_secs(5),
            )
            .await
        }
        None => TestPlan {
            kind: JobKind::Light,
            skipped: Some(
                "auth and speed tests skipped: the mix has no healthy node to try them on".into(),
            ),
        },
    };
    let test_name = match plan.kind {
        JobKind::Pipeline => "the pipeline (light, auth, speed)".to_owned(),
        k => format!("the {k} test"),
    };
    match &plan.skipped {
        Some(why) => {
            // Name this binary where the hint says `<binary>`.
            let why = match std::env::current_exe() {
                Ok(exe) => why.replace("<binary>", &exe.display().to_string()),
                Err(_) => why.clone(),
            };
            ctx.out.note(format_args!("{why}; running {test_name}"))
        }
        None => ctx.out.note(format_args!("running {test_name}")),
    }

    let engine = NetworkPorts::with_prober(&config, prober).engine(store.clone(), &config);
    let options = JobOptions::default().node_timeout(Duration::from_secs(30));
    let job = engine
        .start_job(plan.kind, NodeFilter::ids(ids.iter().copied()), options)
        .await?;
    let followed = follow(ctx, &engine, job).await?;
    let service = if followed.interrupted {
        None
    } else {
        service_step(ctx, &engine, store.as_ref(), &ids).await
    };
    fleet.close().await;

    // Counts per status of the demo's nodes.
    let nodes = ops::all_matching(store.as_ref(), &NodeFilter::ids(ids.iter().copied())).await?;
    let mut by_status: HashMap<Status, u64> = HashMap::new();
    for n in &nodes {
        *by_status.entry(n.status).or_default() += 1;
    }
    if ctx.out.format == OutputFormat::Json {
        let statuses: serde_json::Map<String, serde_json::Value> = Status::ALL
            .iter()
            .filter_map(|s| {
                by_status
                    .get(s)
                    .map(|n| (s.as_str().to_owned(), (*n).into()))
            })
            .collect();
        ctx.out.json(&serde_json::json!({
            "fleet": {
                "nodes": counts.values().sum::<usize>(), "first_ip": a.first_ip, "last_ip": last_ip,
                "port": a.port, "mix": counts,
            },
            "database": redact_url(&ctx.db_url()),
            "import": {"added": added, "already_stored": ids.len() - added},
            "test": {"kind": plan.kind.as_str(), "skipped": plan.skipped},
            "job": followed.json(),
            "by_status": statuses,
            "service": service,
        }))?;
    } else {
        ctx.out.line(followed.line())?;
        let mut t = Table::new(&["STATUS", "NODES"]);
        for s in Status::ALL {
            if let Some(n) = by_status.get(&s) {
                t.row(vec![Cell::status(s), Cell::num(n)]);
            }
        }
        ctx.out.table(&t)?;
        if ctx.out.format == OutputFormat::Human {
            next_steps(ctx, &by_status, nodes.first().map(|n| n.id))?;
        }
    }
    Ok(if followed.interrupted {
        Exit::Interrupted
    } else if followed.last.state == connexa_core::ports::JobState::Done {
        Exit::Ok
    } else {
        Exit::Partial
    })
}

fn next_steps(
    ctx: &Ctx,
    by_status: &HashMap<Status, u64>,
    first: Option<NodeId>,
) -> anyhow::Result<()> {
    let best = [
        Status::Online,
        Status::SpeedOk,
        Status::PingOk,
        Status::PingLight,
    ]
    .into_iter()
    .find(|s| by_status.contains_key(s))
    .unwrap_or(Status::PingLight);
    let first = first.map(|id| id.to_string()).unwrap_or_else(|| "1".into());
    let out = &ctx.out;
    let steps = [
        (
            format!("connexa nodes list --status {best}"),
            "the nodes that got furthest",
        ),
        (
            format!("connexa nodes show {first}"),
            "one node and what its server said",
        ),
        (
            format!("connexa nodes history {first}"),
            "how its status changed, and why",
        ),
        (
            format!("connexa export --format csv --status {best} -o working.csv"),
            "",
        ),
        ("connexa stats".into(), "counts, services, the last job"),
        (
            "connexa sim --nodes 200 --port 21723 --list fleet.txt &".into(),
            "a fleet that keeps running",
        ),
        (
            "connexa import fleet.txt --test light".into(),
            "import it and test the added nodes",
        ),
        ("connexa --help".into(), "everything else (docs/cli.md)"),
    ];
    let width = steps
        .iter()
        .filter(|(_, c)| !c.is_empty())
        .map(|(s, _)| s.len())
        .max()
        .unwrap_or(0);
    out.line("")?;
    out.line("Next, try:")?;
    for (cmd, comment) in steps {
        if comment.is_empty() {
            out.line(format_args!("  {cmd}"))?;
        } else {
            out.line(format_args!("  {cmd:width$}  # {comment}"))?;
        }
    }
    if ctx.db_url() != DEFAULT_DB {
        out.line(format_args!(
            "(the demo's results are in {db}: run `export CONNEXA_DB='{db}'` first, or add --db '{db}' to each command)",
            db = redact_url(&ctx.db_url())
        ))?;
    }
    out.line("The simulated fleet stopped with the demo; the results stay in the database.")?;
    Ok(())
}

/// Starts a SOCKS5 service through the first `speed_ok` node (through the
/// engine's reconciler, as `connexa service start` + `connexa run` would),
/// fetches bytes from the simulator's tunnel host through it, and stops it.
/// Says what happened on stderr; returns the JSON summary.
async fn service_step(
    ctx: &Ctx,
    engine: &connexa_core::engine::Engine,
    store: &dyn connexa_core::ports::NodeStore,
    ids: &[NodeId],
) -> Option<serde_json::Value> {
    let nodes = ops::all_matching(store, &NodeFilter::ids(ids.iter().copied()))
        .await
        .ok()?;
    let node = nodes.iter().find(|n| n.status == Status::SpeedOk)?;
    let one = NodeFilter::ids([node.id]);
    let result = async {
        ops::want_services(store, &one, true).await?;
        engine.reconcile().await?;
        let started = store
            .get(node.id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("node #{} vanished", node.id))?;
        let ep = started.service.clone().ok_or_else(|| {
            anyhow::anyhow!(
                "the service did not start: {}",
                started.last_error.as_deref().unwrap_or("no reason recorded")
            )
        })?;
        let t0 = std::time::Instant::now();
        let proxy: std::net::SocketAddr = format!("{}:{}", ep.host, ep.port).parse()?;
        let mut s = socks_client::connect(
            proxy,
            &ep.username,
            ep.password.expose(),
            &TargetAddr::Ip((TUNNEL_HOST, 80).into()),
            Duration::from_secs(10),
        )
        .await?;
        s.write_all(
            format!(
                "GET /bytes?{DEMO_FETCH_BYTES} HTTP/1.1\r\nHost: {TUNNEL_HOST}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
        let mut response = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut response)).await??;
        let body = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(0, |i| response.len() - i - 4);
        let secs = t0.elapsed().as_secs_f64();
        ctx.out.note(format_args!(
            "service: socks5://{}:***@{}:{} through node #{} ({}) fetched {} bytes of http://{TUNNEL_HOST}/bytes?{DEMO_FETCH_BYTES} in {:.2} s",
            ep.username, ep.host, ep.port, node.id, node.ip, body, secs
        ));
        anyhow::Ok(serde_json::json!({
            "node": node.id.0, "host": ep.host, "port": ep.port,
            "fetched_bytes": body, "seconds": secs,
        }))
    }
    .await;
    // Stop it again, so the demo leaves no service wanted behind.
    let stopped = async {
        ops::want_services(store, &one, false).await?;
        engine.reconcile().await?;
        anyhow::Ok(())
    }
    .await;
    match (result, stopped) {
        (Ok(v), Ok(())) => Some(v),
        (Err(e), _) | (Ok(_), Err(e)) => {
            ctx.out.note(format_args!("service step failed: {e:#}"));
            Some(serde_json::json!({ "node": node.id.0, "error": format!("{e:#}") }))
        }
    }
}
