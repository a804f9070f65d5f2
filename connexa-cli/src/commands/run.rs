//! `connexa run [--once]`: the engine's job workers, service reconciler and
//! health monitor, in the foreground (for systemd), or one pass (for cron).

use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use connexa_core::engine::{Engine, EngineError, JobSummary, RecoverPolicy};
use connexa_core::ports::{StoreError, WorkerRole};
use connexa_core::store::redact_url;
use tokio::sync::watch;

use crate::cli::Ctx;
use crate::exit::{Exit, fail};
use crate::output::OutputFormat;
use crate::wiring;

/// Work on the database: run queued and unfinished jobs, keep wanted services
/// up, check their health.
#[derive(Debug, Args)]
#[command(after_help = "\
`connexa run` runs until SIGTERM or Ctrl-C: it resumes unfinished jobs, picks up
jobs queued anywhere (`connexa test --detach`, the HTTP API) every second,
reconciles services (service_wanted) every 10 s and checks their health every
30 s ([services] reconcile_interval_secs, monitor_interval_secs). A node whose
service fails to start is tried again after 30 s, then 1, 2, 4... minutes, at most
10 ([services] restart_backoff_secs, restart_backoff_max_secs). On SIGTERM or Ctrl-C it stops claiming, lets the items in flight finish and
commit (for at most --grace seconds; a second signal stops at once), leaves the
rest pending for the next `connexa run`, and exits 0.

`connexa run --once` resumes every unfinished job and waits for them to end,
makes one reconciler pass and one monitor pass, prints what it did and exits
(4 when a job had failures, 5 when interrupted).

Examples:
  connexa run                       # e.g. as a systemd service
  connexa test light --all --detach && connexa run --once
  connexa run --once --output json  # from cron

Each `connexa run` (not --once) registers as a worker (`connexa workers`):
--worker NAME (default HOST-pPID), --jobs / --services for one role only. It
beats every [workers] heartbeat_secs (5 s), extending the leases of the job
items it holds; items of a worker silent for [workers] lease_secs (30 s) are
reclaimed by the live ones, and its late results are refused. Many hosts can
run workers on one PostgreSQL database. There each wanted service is placed on
one live services worker (its `service start --on` pin, else the least loaded
with room under [workers] max_services); a dead worker's services move to a
live one with the same credentials, and the host:port clients use is the new
worker's (--public-host, [workers] public_host).

With [test] speed_listen set, `connexa run` (not --once) also serves the keyed
speed endpoint there (GET /speed/down, POST /speed/up; see docs/http.md), for
hosts that do not run connexa-http.")]
pub struct RunArgs {
    /// Do the pending work once, then exit.
    #[arg(long)]
    pub once: bool,
    /// This worker's name, unique among live workers (default: HOST-pPID).
    #[arg(long, value_name = "NAME", value_parser = worker_name)]
    pub worker: Option<String>,
    /// Run job items (with --services: both, the default; alone: no services).
    #[arg(long)]
    pub jobs: bool,
    /// Run services: reconciler and health monitor (alone: no job items).
    #[arg(long)]
    pub services: bool,
    /// The host clients reach this worker's services at, stored in each
    /// endpoint it starts (default: [workers] public_host, else [services]
    /// public_host, else [services] bind).
    #[arg(long, value_name = "HOST")]
    pub public_host: Option<String>,
    /// A placement label of this worker (repeatable; replaces [workers]
    /// labels): services started with `--label L` run only on workers with L.
    #[arg(long, value_name = "LABEL", value_parser = label)]
    pub label: Vec<String>,
    /// After SIGTERM or Ctrl-C, seconds to let the items in flight finish before
    /// exiting anyway (unfinished items are resumed by the next run).
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    pub grace: f64,
}

/// A placement label: 1 to 64 characters, no control character, no comma.
pub(crate) fn label(s: &str) -> Result<String, String> {
    worker_name(s)
        .map_err(|_| "a label has 1 to 64 characters, no control character and no comma".into())
}

/// A worker name: 1 to 64 characters, no control character, no comma.
fn worker_name(s: &str) -> Result<String, String> {
    let ok = !s.trim().is_empty()
        && s.chars().count() <= 64
        && !s.chars().any(|c| c.is_control() || c == ',');
    if ok {
        Ok(s.to_owned())
    } else {
        Err("a worker name has 1 to 64 characters, no control character and no comma".into())
    }
}

/// Counts SIGINT and SIGTERM: 0 until the first one.
fn signals() -> anyhow::Result<watch::Receiver<u32>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let (tx, rx) = watch::channel(0u32);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tx.send_modify(|n| *n += 1);
        }
    });
    Ok(rx)
}

async fn nth_signal(mut rx: watch::Receiver<u32>, n: u32) {
    if rx.wait_for(|c| *c >= n).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Runs `connexa run`.
pub async fn exec(ctx: &Ctx, a: RunArgs) -> anyhow::Result<Exit> {
    if !(a.grace.is_finite() && a.grace >= 0.0) {
        return Err(fail(
            Exit::Usage,
            format!("--grace must be a number of seconds, not {}", a.grace),
        ));
    }
    let grace = Duration::from_secs_f64(a.grace);
    let sig = signals()?;
    let mut roles = Vec::new();
    if a.jobs || !a.services {
        roles.push(WorkerRole::Jobs);
    }
    if a.services || !a.jobs {
        roles.push(WorkerRole::Services);
    }
    let (engine, ports) = wiring::engine_and_launcher_as(
        ctx,
        std::sync::Arc::new(wiring::prober(ctx)),
        a.worker.clone(),
        roles.clone(),
    )
    .await?;
    if a.once {
        return once(ctx, &engine, sig, grace).await;
    }
    start_worker(ctx, &engine, &roles).await?;
    serve_speed_endpoint(ctx, &sig).await?;
    let code = run_until_stopped(ctx, &engine, &sig, grace).await;
    let services = ports.stop_services(&engine).await;
    if services > 0 {
        ctx.out.note(format_args!(
            "{services} services stopped; the next `connexa run` starts them again"
        ));
    }
    if code == Exit::Ok {
        // A clean exit: every item in flight was committed; the row goes.
        if let Err(e) = engine.deregister().await {
            tracing::warn!(error = %e, "could not remove this worker's row; it expires by itself");
        }
    }
    let refused = engine.results_refused();
    if refused > 0 {
        ctx.out.note(format_args!(
            "{refused} late results were refused (their items' leases had run out and other workers took them); none was applied"
        ));
    }
    Ok(code)
}

/// Registers the worker, resumes unfinished jobs (with the jobs role) and
/// says what it does.
async fn start_worker(ctx: &Ctx, engine: &Engine, roles: &[WorkerRole]) -> anyhow::Result<()> {
    engine.register().await.map_err(|e| match e {
        EngineError::Store(e @ StoreError::WorkerNameTaken { .. }) => {
            fail(Exit::Usage, e.to_string())
        }
        e => anyhow::Error::from(e),
    })?;
    let resumed = if roles.contains(&WorkerRole::Jobs) {
        engine.recover(RecoverPolicy::Resume).await?
    } else {
        Vec::new()
    };
    let cfg = engine.config();
    ctx.out.note(format_args!(
        "connexa run: worker {} ({}) working on {}: {} unfinished jobs resumed; queued jobs picked up every {:?}, services reconciled every {:?}, health checked every {:?}; heartbeat every {:?}, lease {:?}; stop with Ctrl-C or SIGTERM",
        engine.worker_name(),
        roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(","),
        redact_url(&ctx.db_url()),
        resumed.len(),
        cfg.queue_interval,
        cfg.reconcile_interval,
        cfg.monitor_interval,
        cfg.heartbeat_interval,
        cfg.lease,
    ));
    if connexa_core::runtime::secret_keys(&ctx.config).is_ok_and(|k| k.current().is_none()) {
        ctx.out.note(format_args!(
            "warning: {}",
            connexa_core::runtime::PLAINTEXT_SECRETS_WARNING
        ));
    }
    Ok(())
}

/// The keyed speed endpoint (`[test] speed_listen`), for hosts without
/// connexa-http; it stops at the first signal.
async fn serve_speed_endpoint(ctx: &Ctx, sig: &watch::Receiver<u32>) -> anyhow::Result<()> {
    let Some(listen) = ctx.config.test.speed_listen else {
        return Ok(());
    };
    let endpoint = connexa_core::runtime::speed_endpoint(&ctx.effective_config())
        .map_err(|e| fail(Exit::Config, format!("the keyed speed endpoint's key: {e}")))?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} ([test] speed_listen)"))?;
    ctx.out.note(format_args!(
        "serving the keyed speed endpoint on http://{}/speed/down",
        listener.local_addr()?
    ));
    tokio::spawn(connexa_core::speed::keyed::serve(
        listener,
        endpoint,
        1024,
        nth_signal(sig.clone(), 1),
    ));
    Ok(())
}

/// Runs the engine until the first signal, then drains it for at most
/// `grace` (a second signal: at once).
async fn run_until_stopped(
    ctx: &Ctx,
    engine: &Engine,
    sig: &watch::Receiver<u32>,
    grace: Duration,
) -> Exit {
    let run = engine.run(nth_signal(sig.clone(), 1));
    tokio::pin!(run);
    let forced = async {
        nth_signal(sig.clone(), 1).await;
        ctx.out.note(format_args!(
            "stopping: no new items are claimed; waiting up to {grace:?} for the items in flight (again to stop at once)"
        ));
        tokio::select! {
            () = tokio::time::sleep(grace) => Exit::Ok,
            () = nth_signal(sig.clone(), 2) => Exit::Interrupted,
        }
    };
    tokio::select! {
        () = &mut run => {
            ctx.out.note("stopped: every item in flight finished and was committed; the rest stays pending for the next run");
            Exit::Ok
        }
        code = forced => {
            ctx.out.note("stopped with items still in flight: they stay `running` and the next `connexa run` resumes them");
            code
        }
    }
}

async fn once(
    ctx: &Ctx,
    engine: &Engine,
    sig: watch::Receiver<u32>,
    grace: Duration,
) -> anyhow::Result<Exit> {
    let report = tokio::select! {
        r = engine.run_once() => r?,
        () = nth_signal(sig.clone(), 1) => {
            ctx.out.note(format_args!(
                "interrupted: waiting up to {grace:?} for the items in flight; the rest stays pending for the next run"
            ));
            tokio::select! {
                () = engine.drain() => {}
                () = tokio::time::sleep(grace) => {}
                () = nth_signal(sig.clone(), 2) => {}
            }
            return Ok(Exit::Interrupted);
        }
    };
    let failed = report.jobs.iter().any(|j| {
        let p = &j.progress;
        p.failed + p.timed_out + p.cancelled > 0
    });
    if ctx.out.format == OutputFormat::Json {
        ctx.out.json(&serde_json::json!({
            "jobs": report.jobs.iter().map(job_json).collect::<Vec<_>>(),
            "reconcile": report.reconcile,
            "monitor": report.monitor,
        }))?;
    } else {
        if report.jobs.is_empty() {
            ctx.out.line("no unfinished jobs")?;
        }
        for j in &report.jobs {
            let p = &j.progress;
            ctx.out.line(format_args!(
                "job #{} {}: {} — {}/{} done: ok {}, failed {}, timed out {}, cancelled {}",
                j.job.id,
                j.job.kind,
                j.job.state,
                p.done(),
                p.total,
                p.ok,
                p.failed,
                p.timed_out,
                p.cancelled
            ))?;
        }
        let r = &report.reconcile;
        let m = &report.monitor;
        let restarted = if r.restarted > 0 {
            format!(" ({} restarted)", r.restarted)
        } else {
            String::new()
        };
        ctx.out.line(format_args!(
            "services: {} started{restarted}, {} failed to start, {} stopped; health: {} checked, {} unhealthy",
            r.started,
            r.start_failed,
            r.stopped + r.marked_stopped,
            m.checked,
            m.unhealthy
        ))?;
    }
    Ok(if failed { Exit::Partial } else { Exit::Ok })
}

/// A finished job as JSON (the same shape `connexa test --output json` prints).
pub fn job_json(j: &JobSummary) -> serde_json::Value {
    let p = &j.progress;
    serde_json::json!({
        "job": j.job.id.0, "kind": j.job.kind.as_str(), "state": j.job.state.as_str(),
        "total": p.total, "ok": p.ok, "failed": p.failed, "timed_out": p.timed_out, "cancelled": p.cancelled,
    })
}
