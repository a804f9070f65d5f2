//! `connexa demo`: the README's first command. A simulated fleet on loopback,
//! imported into the database and tested (the deepest test this machine can
//! run against it) with the live progress bar, then the counts per status.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use connexa_core::domain::{NodeFilter, NodeId, Status};
use connexa_core::engine::JobOptions;
use connexa_core::ops::TestPlan;
use connexa_core::ops::demo::{
    DEMO_FETCH_BYTES, DemoError, DemoFleet, DemoService, DemoSpec, status_counts,
};
use connexa_core::ports::JobKind;
use connexa_core::probe::{LightProber, ProbeConfig};
use connexa_core::runtime::{NetworkPorts, demo_config};
use connexa_core::sim::{TUNNEL_HOST, parse_mix};
use connexa_core::store::redact_url;

use crate::cli::{Ctx, DEFAULT_DB};
use crate::exit::{Exit, WithCode, fail};
use crate::output::{Cell, OutputFormat, Table};
use crate::progress::follow;

/// The demo's own database, used unless `--db` is given on the command line.
pub const DEMO_DB: &str = "sqlite://connexa-demo.db?mode=rwc";

pub use connexa_core::ops::demo::DEFAULT_MIX;

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
    let own = demo_ctx(ctx);
    let ctx = own.as_ref().unwrap_or(ctx);
    // Open the database first: a bad --db fails before anything starts.
    let store = ctx.store().await?;
    let config = demo_config(&ctx.effective_config());
    let demo = start_fleet(&a, &config, store.clone()).await?;
    announce(ctx, &demo, a.port);
    let ports = NetworkPorts::with_prober(&config, demo_prober());
    let plan = demo.plan(ports.prober.as_ref(), ports.speed.as_ref()).await;
    announce_plan(ctx, &plan);
    let engine = ports.engine(store.clone(), &config);
    let options = JobOptions::default().node_timeout(Duration::from_secs(30));
    let job = engine
        .start_job(
            plan.kind,
            NodeFilter::ids(demo.ids.iter().copied()),
            options,
        )
        .await?;
    let followed = follow(ctx, &engine, job).await?;
    let service = if followed.interrupted {
        None
    } else {
        demo.try_service(&engine).await
    };
    if let Some(s) = &service {
        announce_service(ctx, s);
    }
    let by_status = status_counts(store.as_ref(), &demo.ids).await?;
    report(
        ctx,
        &demo,
        a.port,
        &plan,
        &followed,
        &by_status,
        service.as_ref(),
    )?;
    demo.close().await;
    Ok(if followed.interrupted {
        Exit::Interrupted
    } else if followed.last.state == connexa_core::ports::JobState::Done {
        Exit::Ok
    } else {
        Exit::Partial
    })
}

/// Starts the fleet (its nodes serve the keyed stream the speed tester
/// verifies) and imports its list; writes the list to `--list`.
async fn start_fleet(
    a: &DemoArgs,
    config: &connexa_core::config::Config,
    store: Arc<dyn connexa_core::ports::NodeStore>,
) -> anyhow::Result<DemoFleet> {
    let mix = parse_mix(&a.mix).code(Exit::Usage)?;
    let speed_key = connexa_core::runtime::speed_key(config)
        .map_err(|e| fail(Exit::Config, format_args!("the speed test key: {e}")))?;
    let spec = DemoSpec {
        nodes: a.nodes as usize,
        mix,
        first_ip: a.first_ip,
        port: a.port,
        speed_key: Some(speed_key),
    };
    let demo = DemoFleet::start(spec, store).await.map_err(|e| match e {
        e @ (DemoError::Bind(_) | DemoError::Fleet(_)) => fail(Exit::Usage, e),
        e => fail(Exit::Config, e),
    })?;
    if let Some(path) = &a.list {
        std::fs::write(path, &demo.list)
            .with_context(|| format!("cannot write the node list to {}", path.display()))
            .code(Exit::Usage)?;
    }
    Ok(demo)
}

/// Short timeouts (loopback answers at once); no ICMP: on loopback it adds
/// nothing, and unprivileged it would only warn.
fn demo_prober() -> Arc<LightProber> {
    Arc::new(LightProber::new(ProbeConfig {
        connect_timeout: Duration::from_secs(2),
        handshake_timeout: Duration::from_secs(2),
        icmp: None,
        ..ProbeConfig::default()
    }))
}

/// Never the operator's database: the demo's own file unless --db says
/// otherwise on this command line ($CONNEXA_DB and the config's `database`
/// name the operator's). `None`: `ctx` as it is.
fn demo_ctx(ctx: &Ctx) -> Option<Ctx> {
    (!ctx.global.db_on_command_line).then(|| Ctx {
        global: crate::cli::GlobalArgs {
            db: Some(DEMO_DB.to_owned()),
            ..ctx.global.clone()
        },
        config: connexa_core::config::Config {
            database: None,
            ..ctx.config.clone()
        },
        out: ctx.out,
    })
}

/// The database, the fleet and what the import found, on stderr.
fn announce(ctx: &Ctx, demo: &DemoFleet, port: u16) {
    let db = redact_url(&ctx.db_url());
    ctx.out.note(format_args!(
        "database: {db} ({})",
        if ctx.global.db_on_command_line {
            "--db"
        } else {
            "the demo's own; --db chooses another, your connexa.db and $CONNEXA_DB are not touched"
        }
    ));
    let mix: Vec<String> = demo.mix.iter().map(|(k, v)| format!("{k} {v}")).collect();
    ctx.out.note(format_args!(
        "fleet: {} simulated nodes on {}..{} port {port} ({})",
        demo.ids.len(),
        demo.first_ip,
        demo.last_ip,
        mix.join(", ")
    ));
    ctx.out.note(format_args!(
        "database: {db} — {} nodes added, {} already there",
        demo.added,
        demo.ids.len() - demo.added
    ));
}

/// Which test runs, and why deeper ones are skipped.
fn announce_plan(ctx: &Ctx, plan: &TestPlan) {
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
}

fn announce_service(ctx: &Ctx, s: &DemoService) {
    match &s.result {
        Ok(f) => ctx.out.note(format_args!(
            "service: socks5://{}:***@{}:{} through node #{} ({}) fetched {} bytes of http://{TUNNEL_HOST}/bytes?{DEMO_FETCH_BYTES} in {:.2} s",
            f.username, f.host, f.port, s.node, s.ip, f.fetched_bytes, f.seconds
        )),
        Err(e) => ctx.out.note(format_args!("service step failed: {e}")),
    }
}

/// The final report: JSON, or the job's line and the counts per status.
fn report(
    ctx: &Ctx,
    demo: &DemoFleet,
    port: u16,
    plan: &TestPlan,
    followed: &crate::progress::Followed,
    by_status: &[(Status, u64)],
    service: Option<&DemoService>,
) -> anyhow::Result<()> {
    if ctx.out.format == OutputFormat::Json {
        let statuses: serde_json::Map<String, serde_json::Value> = by_status
            .iter()
            .map(|(s, n)| (s.as_str().to_owned(), (*n).into()))
            .collect();
        let service = service.map(|s| match &s.result {
            Ok(f) => serde_json::json!({
                "node": s.node.0, "host": f.host, "port": f.port,
                "fetched_bytes": f.fetched_bytes, "seconds": f.seconds,
            }),
            Err(e) => serde_json::json!({ "node": s.node.0, "error": e }),
        });
        return ctx.out.json(&serde_json::json!({
            "fleet": {
                "nodes": demo.mix.values().sum::<usize>(), "first_ip": demo.first_ip,
                "last_ip": demo.last_ip, "port": port, "mix": demo.mix,
            },
            "database": redact_url(&ctx.db_url()),
            "import": {"added": demo.added, "already_stored": demo.ids.len() - demo.added},
            "test": {"kind": plan.kind.as_str(), "skipped": plan.skipped},
            "job": followed.json(),
            "by_status": statuses,
            "service": service,
        }));
    }
    ctx.out.line(followed.line())?;
    let mut t = Table::new(&["STATUS", "NODES"]);
    for (s, n) in by_status {
        t.row(vec![Cell::status(*s), Cell::num(*n)]);
    }
    ctx.out.table(&t)?;
    if ctx.out.format == OutputFormat::Human {
        next_steps(ctx, by_status, demo.ids.first().copied())?;
    }
    Ok(())
}

fn next_steps(ctx: &Ctx, by_status: &[(Status, u64)], first: Option<NodeId>) -> anyhow::Result<()> {
    let best = [
        Status::Online,
        Status::SpeedOk,
        Status::PingOk,
        Status::PingLight,
    ]
    .into_iter()
    .find(|s| by_status.iter().any(|(b, _)| b == s))
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
