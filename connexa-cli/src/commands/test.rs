//! `connexa test light|auth|speed|pipeline|geo|fraud`: runs a test job through the engine
//! in this process, shows progress from committed rows, and cancels on Ctrl-C;
//! or, with `--detach`, queues it for a `connexa run` process.

use std::sync::Arc;

use clap::{Args, ValueEnum};
use connexa_core::domain::{NodeId, Selection};
use connexa_core::engine::{JobOptions, queue_job};
use connexa_core::ops;
use connexa_core::ports::JobKind;

use crate::cli::Ctx;
use crate::exit::{Exit, fail};
use crate::filter::FilterArgs;
use crate::output::OutputFormat;
use crate::progress::follow_and_report;
use crate::wiring;

/// Test nodes: light (PPTP handshake), auth (MS-CHAPv2 login), speed (through the tunnel) or
/// pipeline; or look their addresses up: geo (location, ASN) or fraud (score, risk).
#[derive(Debug, Args)]
#[command(after_help = "\
Progress is read from committed results, so it always ends at 100 %; on a
terminal it is a live bar (done/total, ok/failed, rate, ETA), otherwise one
line per change. Ctrl-C cancels the job: finished results are kept, the rest
end as cancelled (exit code 5). The auth depth needs CAP_NET_RAW (root) for GRE.

--detach only queues the job and prints its id: a `connexa run` process (already
running, or started later) runs it, or `connexa run --once` does and exits.

Examples:
  connexa test light --all
  connexa test light --status not_tested --concurrency 500
  connexa test pipeline 12 13 14 --timeout 30
  connexa test auth --status ping_light --detach && connexa run --once
  connexa test geo --all                  # [geo] city_db/asn_db in the config file
  connexa nodes list --mismatch           # seller's location differs from the lookup
  connexa test fraud --status speed_ok && connexa nodes list --fraud-max 30")]
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
    /// Nodes tested at once, 1 to 100000 [default: from the config file, else sized to the open-file limit].
    #[arg(long, allow_negative_numbers = true)]
    pub concurrency: Option<i64>,
    /// Time budget per node, in seconds (at least the kind's minimum, at most 604800).
    #[arg(long, value_name = "SECONDS", allow_negative_numbers = true)]
    pub timeout: Option<f64>,
    /// Job deadline, in seconds from now (at most 604800): items not finished
    /// by then end timed_out, without changing any node's status.
    #[arg(long, value_name = "SECONDS", allow_negative_numbers = true)]
    pub deadline: Option<f64>,
    /// Only queue the job and print its id; `connexa run` (or `run --once`) runs it.
    #[arg(long)]
    pub detach: bool,
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
    /// Where each node's address really is: `[geo]` databases (city, region,
    /// postal code, coordinates, time zone, ASN); never changes a status.
    Geo,
    /// Each node's address's fraud score and risk from the `[fraud]`
    /// providers; never changes a status.
    Fraud,
}

impl From<KindArg> for JobKind {
    fn from(k: KindArg) -> JobKind {
        match k {
            KindArg::Light => JobKind::Light,
            KindArg::Auth => JobKind::Auth,
            KindArg::Speed => JobKind::Speed,
            KindArg::Pipeline => JobKind::Pipeline,
            KindArg::Geo => JobKind::Geo,
            KindArg::Fraud => JobKind::Fraud,
        }
    }
}

/// The node selection of a command: ids, filters or --all (exactly one),
/// validated by connexa-core's one rule ([`Selection::new`]).
pub fn selection(ids: &[i64], filter: &FilterArgs, all: bool) -> anyhow::Result<Selection> {
    let ids = (!ids.is_empty()).then(|| ids.iter().copied().map(NodeId).collect());
    let filter = filter.to_filter();
    let filter = (!filter.is_everything()).then_some(filter);
    Selection::new(ids, filter, all)
        .map_err(|e| fail(Exit::Usage, e.message(&crate::filter::CLI_WORDS)))
}

/// Starts the job (or queues it with `--detach`), follows it to the end, prints the summary.
pub async fn exec(ctx: &Ctx, a: TestArgs) -> anyhow::Result<Exit> {
    let selection = selection(&a.ids, &a.filter, a.all)?;
    let kind = JobKind::from(a.kind);
    let options = job_options(kind, a.concurrency, a.timeout, a.deadline)?;
    let store = ctx.store().await?;
    let filter = ops::selected(store.as_ref(), &selection).await?;
    if a.detach {
        let job = queue_job(store.as_ref(), kind, filter, options).await?;
        if ctx.out.format == OutputFormat::Json {
            ctx.out.json(&serde_json::json!({ "job": job.id.0 }))?;
        } else {
            ctx.out.line(format_args!(
                "queued job #{} ({kind}, {} nodes)",
                job.id, job.total
            ))?;
            ctx.out.note(format_args!(
                "it runs in a `connexa run` process (started now or already running), or with `connexa run --once`; follow it with `connexa jobs watch {}`",
                job.id
            ));
        }
        return Ok(Exit::Ok);
    }
    if let Some(missing) = enrichment_missing(ctx, kind) {
        return Err(fail(
            Exit::Failure,
            format_args!("the {kind} lookup cannot run: {missing}; nothing was looked up"),
        ));
    }
    let prober = wiring::prober(ctx);
    if matches!(kind, JobKind::Auth | JobKind::Speed | JobKind::Pipeline) {
        // Logins need a raw GRE socket: find out now, before any node is touched.
        if let Err(e) = prober.gre_socket().await {
            if kind != JobKind::Pipeline {
                return Err(fail(
                    Exit::Failure,
                    format_args!("the {kind} test cannot run: {e}; nothing was tested"),
                ));
            }
            ctx.out.note(format_args!(
                "note: the pipeline stops after the light stage: {e}"
            ));
        }
    }
    let engine = wiring::engine_with(ctx, Arc::new(prober)).await?;
    let job = engine.start_job(kind, filter, options).await?;
    follow_and_report(ctx, &engine, job).await
}

/// What the config file lacks for an enrichment job, if anything.
fn enrichment_missing(ctx: &Ctx, kind: JobKind) -> Option<&'static str> {
    match kind {
        JobKind::Geo if !connexa_core::runtime::geo_configured(&ctx.config) => {
            Some("no GEO source is configured (set [geo] city_db and/or asn_db, or [geo] online)")
        }
        JobKind::Fraud if !connexa_core::runtime::fraud_configured(&ctx.config) => {
            Some("no fraud-score provider is configured (set [fraud] providers)")
        }
        _ => None,
    }
}

/// Job options from `--concurrency`, `--timeout` and `--deadline`, within
/// connexa-core's one set of limits ([`JobOptions::checked`], the HTTP API's
/// too); a refusal is a usage error in the CLI's words.
pub fn job_options(
    kind: JobKind,
    concurrency: Option<i64>,
    timeout: Option<f64>,
    deadline: Option<f64>,
) -> anyhow::Result<JobOptions> {
    // A negative count is refused like 0 (the same limit).
    let concurrency = concurrency.map(|n| u64::try_from(n).unwrap_or(0));
    JobOptions::checked(kind, concurrency, timeout, deadline)
        .map_err(|e| fail(Exit::Usage, e.message(&crate::filter::CLI_WORDS)))
}
