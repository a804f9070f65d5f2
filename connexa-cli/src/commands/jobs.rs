//! `connexa jobs list|show|watch|cancel`: follow or stop a job started anywhere
//! (or every unfinished job at once: `jobs cancel --all`).

use clap::{Args, Subcommand};
use connexa_core::engine::{Engine, EngineError};
use connexa_core::ports::{JobId, StoreError};

use crate::cli::Ctx;
use crate::exit::{Exit, fail};
use crate::output::{Cell, OutputFormat, Table};
use crate::progress::follow_and_report;
use crate::wiring::engine;

/// Jobs: list them, show one, follow one, cancel one.
#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// The most recent jobs.
    List(ListArgs),
    /// One job's progress and last results.
    Show(IdArg),
    /// Follow a job's progress until it ends (Ctrl-C stops watching and cancels it).
    Watch(IdArg),
    /// Cancel a job (or every queued and running job with --all): finished
    /// results stay, the rest end as cancelled.
    #[command(after_help = "\
Examples:
  connexa jobs cancel 12
  connexa jobs cancel --all     # every queued or running job, in any process")]
    Cancel(CancelArgs),
    /// Test again, in a new job of the same kind, the nodes a job failed
    /// (failed or timed out), by default with twice its per-node budget.
    #[command(after_help = "\
Examples:
  connexa jobs retest-failed 12              # twice job 12's per-node budget
  connexa jobs retest-failed 12 --timeout 60 --concurrency 50")]
    RetestFailed(RetestArgs),
}

/// `jobs retest-failed`.
#[derive(Debug, Args)]
pub struct RetestArgs {
    /// The job whose failed nodes to test again.
    id: i64,
    /// Time budget per node, in seconds [default: twice the job's].
    #[arg(long, value_name = "SECONDS", allow_negative_numbers = true)]
    timeout: Option<f64>,
    /// Nodes tested at once, 1 to 100000 [default: from the config file].
    #[arg(long, allow_negative_numbers = true)]
    concurrency: Option<i64>,
}

/// `jobs list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// How many jobs.
    #[arg(long, default_value_t = 20)]
    limit: u64,
}

/// A job id.
#[derive(Debug, Args)]
pub struct IdArg {
    /// Job id.
    id: i64,
}

/// `jobs cancel`.
#[derive(Debug, Args)]
pub struct CancelArgs {
    /// Job id.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    id: Option<i64>,
    /// Cancel every job not yet finished (queued or running).
    #[arg(long)]
    all: bool,
}

/// Runs a `jobs` subcommand.
pub async fn exec(ctx: &Ctx, c: JobsCommand) -> anyhow::Result<Exit> {
    let engine = engine(ctx).await?;
    match c {
        JobsCommand::List(a) => list(ctx, &engine, a.limit).await,
        JobsCommand::Show(a) => show(ctx, &engine, a.id).await,
        JobsCommand::Watch(a) => {
            known(&engine, a.id).await?;
            follow_and_report(ctx, &engine, JobId(a.id)).await
        }
        JobsCommand::RetestFailed(a) => retest_failed(ctx, &engine, a).await,
        JobsCommand::Cancel(CancelArgs { id: None, .. }) => cancel_all(ctx, &engine).await,
        JobsCommand::Cancel(CancelArgs { id: Some(id), .. }) => cancel(ctx, &engine, id).await,
    }
}

/// The job, or exit 6 (not found).
async fn known(engine: &Engine, id: i64) -> anyhow::Result<connexa_core::ports::Job> {
    engine
        .store()
        .job(JobId(id))
        .await
        .map_err(|_| fail(Exit::NotFound, format!("no job with id {id}")))
}

/// `jobs list`.
async fn list(ctx: &Ctx, engine: &Engine, limit: u64) -> anyhow::Result<Exit> {
    let store = engine.store();
    let jobs = store.jobs(limit).await?;
    let mut t = Table::new(&[
        "ID", "KIND", "STATE", "TOTAL", "DONE", "OK", "FAILED", "CREATED",
    ]);
    let mut json = Vec::new();
    for j in jobs {
        let p = store.progress(j.id).await?;
        json.push(
            serde_json::json!({"id": j.id.0, "kind": j.kind.as_str(), "state": j.state.as_str(),
            "total": p.total, "done": p.done(), "ok": p.ok, "failed": p.failed + p.timed_out}),
        );
        t.row(vec![
            Cell::num(j.id.0 as u64),
            Cell::text(j.kind.as_str()),
            Cell::text(j.state.as_str()),
            Cell::num(p.total),
            Cell::num(p.done()),
            Cell::num(p.ok),
            Cell::num(p.failed + p.timed_out),
            Cell::text(j.created_at.format("%Y-%m-%d %H:%M:%S").to_string()),
        ]);
    }
    if ctx.out.format == OutputFormat::Json {
        ctx.out.json(&json)?;
    } else {
        ctx.out.table(&t)?;
    }
    Ok(Exit::Ok)
}

/// `jobs show ID`.
async fn show(ctx: &Ctx, engine: &Engine, id: i64) -> anyhow::Result<Exit> {
    let store = engine.store();
    let job = known(engine, id).await?;
    let p = store.progress(job.id).await?;
    let recent = store.recent_items(job.id, 10).await?;
    let import = import_view(engine, &job).await?;
    if ctx.out.format == OutputFormat::Json {
        ctx.out.json(&serde_json::json!({"id": job.id.0, "kind": job.kind.as_str(), "state": job.state.as_str(),
            "progress": p, "import": import, "recent": recent.iter().map(|i| serde_json::json!({"node": i.node.0,
            "state": i.state.as_str(), "status": i.status.map(|s| s.as_str()), "detail": i.detail})).collect::<Vec<_>>()}))?;
        return Ok(Exit::Ok);
    }
    ctx.out.line(format_args!(
        "job #{} {} {}: {}/{} done ({:.1} %), ok {}, failed {}, timed out {}, cancelled {}, pending {}, running {}",
        job.id, job.kind, job.state, p.done(), p.total, p.percent(), p.ok, p.failed, p.timed_out, p.cancelled, p.pending, p.running
    ))?;
    if let Some(v) = &import {
        ctx.out.line(format_args!(
            "  import of {}: {} of {} bytes committed{}",
            v["source"].as_str().unwrap_or("-"),
            v["bytes_processed"],
            v["bytes_total"],
            v["test_job"]
                .as_i64()
                .map(|t| format!("; test job #{t}"))
                .unwrap_or_default()
        ))?;
        if let Some(s) = v["summary"].as_object() {
            let n = |k: &str| s.get(k).and_then(|a| a.as_array()).map_or(0, Vec::len);
            ctx.out.line(format_args!(
                "  added {}, replaced {}, duplicates {}, conflicts {}, errors {}, ignored {}",
                n("added"),
                n("replaced"),
                n("duplicates"),
                n("conflicts"),
                n("errors"),
                n("ignored")
            ))?;
        }
        if let Some(e) = v["error"].as_str() {
            ctx.out.line(format_args!("  stopped: {e}"))?;
        }
    }
    for i in recent {
        ctx.out.line(format_args!(
            "  node {} {} {} {}",
            i.node,
            i.state,
            i.status.map(|s| s.as_str()).unwrap_or("-"),
            i.detail.unwrap_or_default()
        ))?;
    }
    Ok(Exit::Ok)
}

/// An import job's view with its report so far (`None` for other kinds).
async fn import_view(
    engine: &Engine,
    job: &connexa_core::ports::Job,
) -> anyhow::Result<Option<serde_json::Value>> {
    if job.kind != connexa_core::JobKind::Import {
        return Ok(None);
    }
    let store = engine.store().as_ref();
    let mut view = connexa_core::ops::ImportJobView::of(store, job, false).await?;
    // The report as committed so far (also while it runs).
    view.summary = Some(connexa_core::engine::import_summary(store, job).await?);
    Ok(Some(serde_json::to_value(view)?))
}

/// `jobs retest-failed ID`.
async fn retest_failed(ctx: &Ctx, engine: &Engine, a: RetestArgs) -> anyhow::Result<Exit> {
    let job = known(engine, a.id).await?;
    let options = super::test::job_options(job.kind, a.concurrency, a.timeout, None)?;
    let (new, used) = match engine.retest_failed(job.id, options).await {
        Ok(r) => r,
        Err(EngineError::Store(StoreError::NothingSelected)) => {
            return Err(fail(
                Exit::Usage,
                format_args!("job #{} failed no node: nothing to retest", a.id),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    let total = engine.store().job(new).await?.total;
    ctx.out.note(format_args!(
        "job #{new}: {} of job #{} again ({total} failed nodes, {} s per node)",
        job.kind,
        a.id,
        used.node_timeout_ms.unwrap_or(0) as f64 / 1000.0
    ));
    follow_and_report(ctx, engine, new).await
}

/// `jobs cancel --all`.
async fn cancel_all(ctx: &Ctx, engine: &Engine) -> anyhow::Result<Exit> {
    let ids = engine.cancel_all().await?;
    if ctx.out.format == OutputFormat::Json {
        ctx.out.json(&serde_json::json!({
            "cancelled": ids.iter().map(|j| j.0).collect::<Vec<_>>()
        }))?;
    } else if ids.is_empty() {
        ctx.out
            .line("no job is queued or running: nothing cancelled")?;
    } else {
        let list: Vec<String> = ids.iter().map(|j| format!("#{j}")).collect();
        ctx.out.line(format_args!(
            "cancelled {} jobs: {} (finished results kept)",
            ids.len(),
            list.join(", ")
        ))?;
    }
    Ok(Exit::Ok)
}

/// `jobs cancel ID`.
async fn cancel(ctx: &Ctx, engine: &Engine, id: i64) -> anyhow::Result<Exit> {
    let job = known(engine, id).await?;
    engine.cancel(JobId(id)).await?;
    if job.kind == connexa_core::JobKind::Import {
        ctx.out.line(format_args!(
            "import job #{id} cancelled: it stops after its current batch; the rows committed stay \
             (`connexa jobs show {id}` gives its report)"
        ))?;
        return Ok(Exit::Ok);
    }
    let p = engine.store().progress(JobId(id)).await?;
    ctx.out.line(format_args!(
        "job #{} cancelled: {} finished results kept, {} cancelled",
        id,
        p.ok + p.failed + p.timed_out,
        p.cancelled
    ))?;
    Ok(Exit::Ok)
}
