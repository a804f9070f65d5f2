//! `connexa test light|auth|speed|pipeline`: runs a test job through the engine in
//! this process, shows progress from committed rows, and cancels on Ctrl-C.

use std::io::IsTerminal as _;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use connexa_core::domain::{NodeFilter, NodeId};
use connexa_core::engine::{Engine, EngineConfig, JobOptions, NotAvailable, ProgressEvent};
use connexa_core::ports::JobKind;
use connexa_core::probe::{LightProber, ProbeConfig};
use connexa_core::speed::{HttpSpeedTester, SpeedConfig};
use futures::StreamExt as _;

use crate::cli::Ctx;
use crate::exit::{Exit, fail};
use crate::filter::FilterArgs;
use crate::output::OutputFormat;

/// Test nodes: light (PPTP handshake), auth (MS-CHAPv2 login), speed (through the tunnel) or pipeline.
#[derive(Debug, Args)]
#[command(after_help = "\
Progress is read from committed results, so it always ends at 100 %.
Ctrl-C cancels the job: finished results are kept, the rest end as cancelled
(exit code 5). The auth depth needs CAP_NET_RAW (root) for GRE.

Examples:
  connexa test light --all
  connexa test light --status not_tested --concurrency 500
  connexa test pipeline 12 13 14 --timeout 30")]
pub struct TestArgs {
    /// What to test.
    #[arg(value_enum)]
    pub kind: KindArg,
    /// Node ids to test (or use filters, or --all).
    #[arg(value_name = "ID")]
    pub ids: Vec<i64>,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Test every node.
    #[arg(long)]
    pub all: bool,
    /// Nodes tested at once [default: from the config file, else sized to the open-file limit].
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Time budget per node, in seconds.
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<f64>,
}

/// `test KIND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KindArg {
    /// The PPTP control-channel handshake.
    Light,
    /// Handshake, call and MS-CHAPv2 login.
    Auth,
    /// Throughput through the node's MPPE tunnel (download/upload from `[test]` URLs).
    Speed,
    /// Light, then auth, then speed; each node goes as far as it can.
    Pipeline,
}

impl From<KindArg> for JobKind {
    fn from(k: KindArg) -> JobKind {
        match k {
            KindArg::Light => JobKind::Light,
            KindArg::Auth => JobKind::Auth,
            KindArg::Speed => JobKind::Speed,
            KindArg::Pipeline => JobKind::Pipeline,
        }
    }
}

/// The node selection of a command: ids, filters or --all (exactly one).
pub fn selection(ids: &[i64], filter: &FilterArgs, all: bool) -> anyhow::Result<NodeFilter> {
    let by_ids = !ids.is_empty();
    if by_ids && (!filter.is_empty() || all) {
        return Err(fail(
            Exit::Usage,
            "give node ids or filters (or --all), not both",
        ));
    }
    if by_ids {
        return Ok(NodeFilter::ids(ids.iter().copied().map(NodeId)));
    }
    if filter.is_empty() && !all {
        return Err(fail(
            Exit::Usage,
            "nothing selected: give node ids, filters, or --all",
        ));
    }
    Ok(filter.to_filter())
}

/// An engine with the network prober configured from the config file.
pub async fn engine(ctx: &Ctx) -> anyhow::Result<Engine> {
    let store = ctx.store().await?;
    let t = &ctx.config.test;
    let prober = LightProber::new(ProbeConfig {
        connect_timeout: t.connect_timeout(),
        handshake_timeout: t.light_timeout(),
        ..ProbeConfig::default()
    });
    let mut config = EngineConfig::default();
    if t.concurrency > 0 {
        config.concurrency = t.concurrency as usize;
    }
    // One raw GRE socket per process: the speed test shares the prober's.
    let prober = Arc::new(prober);
    let speed =
        HttpSpeedTester::sharing_gre_with(SpeedConfig::from_test_config(t), Arc::clone(&prober));
    Ok(Engine::new(
        store,
        prober,
        Arc::new(speed),
        Arc::new(NotAvailable),
        config,
    ))
}

/// Starts the job, follows it to the end, prints the summary.
pub async fn exec(ctx: &Ctx, a: TestArgs) -> anyhow::Result<Exit> {
    let filter = selection(&a.ids, &a.filter, a.all)?;
    if let Some(t) = a.timeout.filter(|t| !(t.is_finite() && *t > 0.0)) {
        return Err(fail(
            Exit::Usage,
            format!("--timeout must be a positive number of seconds, not {t}"),
        ));
    }
    if a.concurrency == Some(0) {
        return Err(fail(Exit::Usage, "--concurrency must be at least 1"));
    }
    let engine = engine(ctx).await?;
    let mut options = JobOptions::default();
    if let Some(t) = a.timeout {
        options = options.node_timeout(Duration::from_secs_f64(t));
    }
    if let Some(n) = a.concurrency {
        options = options.concurrency(n);
    }
    let job = engine.start_job(a.kind.into(), filter, options).await?;
    follow(ctx, &engine, job).await
}

/// Shows progress until the job ends; Ctrl-C cancels it.
pub async fn follow(
    ctx: &Ctx,
    engine: &Engine,
    job: connexa_core::ports::JobId,
) -> anyhow::Result<Exit> {
    let tty = std::io::stderr().is_terminal();
    let show = ctx.out.format == OutputFormat::Human && !ctx.global.quiet.gt(&0);
    let mut stream = Box::pin(engine.progress(job));
    let mut interrupted = false;
    let mut last: Option<ProgressEvent> = None;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            ev = stream.next() => {
                let Some(ev) = ev else { break };
                if show {
                    let line = progress_line(&ev);
                    if tty { eprint!("\r\x1b[2K{line}"); } else { eprintln!("{line}"); }
                }
                let done = ev.finished;
                last = Some(ev);
                if done { break; }
            }
            _ = &mut ctrl_c, if !interrupted => {
                interrupted = true;
                engine.cancel(job).await?;
            }
        }
    }
    if show && tty {
        eprintln!();
    }
    let Some(ev) = last else {
        return Err(fail(
            Exit::Failure,
            format!("job {job} produced no progress"),
        ));
    };
    let p = ev.progress;
    if ctx.out.format == OutputFormat::Json {
        ctx.out.json(&serde_json::json!({
            "job": job.0, "kind": ev.kind.as_str(), "state": ev.state.as_str(),
            "total": p.total, "ok": p.ok, "failed": p.failed, "timed_out": p.timed_out, "cancelled": p.cancelled,
        }))?;
    } else {
        ctx.out.line(format_args!(
            "job #{job} {}: {} — {}/{} done: ok {}, failed {}, timed out {}, cancelled {}",
            ev.kind,
            ev.state,
            p.done(),
            p.total,
            p.ok,
            p.failed,
            p.timed_out,
            p.cancelled
        ))?;
    }
    Ok(if interrupted {
        Exit::Interrupted
    } else if p.failed + p.timed_out + p.cancelled > 0 {
        Exit::Partial
    } else {
        Exit::Ok
    })
}

fn progress_line(ev: &ProgressEvent) -> String {
    let p = &ev.progress;
    let eta = ev
        .eta
        .map(|d| format!(", ETA {}s", d.as_secs()))
        .unwrap_or_default();
    format!(
        "[{:>5.1}%] {}/{} ok {} failed {} timed out {} cancelled {} — {:.0}/s{eta}",
        p.percent(),
        p.done(),
        p.total,
        p.ok,
        p.failed,
        p.timed_out,
        p.cancelled,
        ev.rate
    )
}
