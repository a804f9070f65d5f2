//! Import jobs ([`JobKind::Import`]): a spooled node list read into the store
//! batch by batch. Each batch commits its nodes, the checkpoint (the last
//! line it covers, the bytes read) and its part of the report in one
//! transaction, so an import stopped anywhere — a graceful stop, a crash, a
//! cancellation — keeps exactly the batches committed, and a process on the
//! spool's host resumes it from the checkpoint after a restart (or ends it
//! `interrupted`, saying why, when the spool file is gone).

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::watch;

use super::{Engine, EngineError, Inner, JobOptions, terminal};
use crate::domain::NodeFilter;
use crate::import::summary::ImportSummary;
use crate::import::{ImportReport, Importer, parse};
use crate::ports::acting::{Actor, current, within};
use crate::ports::{
    CheckpointFn, ImportBatch, ImportCheckpoint, ImportRun, ImportSpec, Job, JobId, JobKind,
    JobState, StoreError,
};

/// Rows per committed batch.
const BATCH: usize = 2_000;
/// Attempts of one batch's transaction before the import stops.
const ATTEMPTS: u32 = 8;

/// The spool reader: counts the bytes the parser has read.
struct Counting {
    file: std::fs::File,
    read: Arc<AtomicU64>,
}

impl Read for Counting {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Tells the reading loop (a blocking thread) to stop when the runner's task
/// is dropped: an aborted runner commits nothing more.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// How the reading loop ended.
enum End {
    /// Every row is committed.
    Read,
    /// Cancelled (here, or the store says the job is no longer running).
    Stopped,
    /// The process drains: the job waits for a resume.
    Draining,
    /// Another worker took the job over (this one's hold ran out): it is
    /// theirs now, nothing more to do here.
    Lost,
    /// The store kept failing.
    Failed(String),
}

/// The spec of an import job (its stored options).
pub(crate) fn spec_of(job: &Job) -> Result<ImportSpec, String> {
    serde_json::from_value(job.options.clone())
        .map_err(|e| format!("job {} holds no readable import spec: {e}", job.id))
}

/// Whether this process may take the import now: the spool is on this host
/// and nobody holds the job (or its hold ran out, or it is ours).
pub(crate) fn claimable_here(job: &Job, run: &ImportRun, worker: &str) -> bool {
    let Ok(spec) = spec_of(job) else { return true };
    spec.host == crate::ports::hostname()
        && match (&run.worker, run.lease_until) {
            (None, _) => true,
            (Some(w), _) if w == worker => true,
            (Some(_), until) => until.is_none_or(|u| u < Utc::now()),
        }
}

/// The report of an import job so far (the whole report once it ended):
/// the parts of its committed batches, in line order, named after its source.
pub async fn import_summary(
    store: &dyn crate::ports::NodeStore,
    job: &Job,
) -> Result<ImportSummary, StoreError> {
    let run = store.import_run(job.id).await?;
    let source = spec_of(job).map(|s| s.source).unwrap_or_default();
    let mut summary = ImportSummary::new(source, &ImportReport::default());
    for part in store.import_parts(job.id).await? {
        let part: ImportSummary = serde_json::from_value(part)
            .map_err(|e| StoreError::Backend(format!("corrupt import part: {e}")))?;
        summary.absorb(part);
    }
    summary.sort_by_line();
    if summary.failure.is_none() {
        summary.failure = run.error;
    }
    Ok(summary)
}

/// Runs an import job in this process, if it is this host's and nobody else
/// holds it.
pub(crate) async fn run_import(inner: Arc<Inner>, job: Job, cancel: watch::Receiver<bool>) {
    let id = job.id;
    let spec = match spec_of(&job) {
        Ok(s) => s,
        Err(why) => {
            tracing::warn!(job = %id, "{why}");
            if claim(&inner, id).await.is_some() {
                end(&inner, id, JobState::Interrupted, None, Some(why)).await;
            }
            return;
        }
    };
    if spec.host != crate::ports::hostname() {
        return;
    }
    let Some(run) = claim(&inner, id).await else {
        return;
    };
    let file = match std::fs::File::open(&spec.spool) {
        Ok(f) => f,
        Err(e) => {
            let why = format!(
                "the spooled list cannot be read ({}); the rows in the report were imported",
                e.kind()
            );
            tracing::warn!(job = %id, spool = %spec.spool.display(), error = %e, "import spool unreadable");
            if end(&inner, id, JobState::Interrupted, None, Some(why)).await {
                remove_spool(&spec);
            }
            return;
        }
    };
    tracing::info!(job = %id, rows = run.rows, bytes = spec.bytes_total, source = %spec.source, "import running");
    let stop_on_drop = StopOnDrop(Arc::new(AtomicBool::new(false)));
    let outcome = {
        let inner = Arc::clone(&inner);
        let spec = spec.clone();
        let handle = tokio::runtime::Handle::current();
        let stop = Arc::clone(&stop_on_drop.0);
        tokio::task::spawn_blocking(move || {
            let worker = inner.config.worker.clone();
            let lease = inner.config.lease;
            read_spool(
                &handle, &inner, id, &spec, &worker, lease, file, run.rows, cancel, stop,
            )
        })
        .await
        .unwrap_or_else(|e| End::Failed(format!("the import crashed: {e}")))
    };
    let ended = match outcome {
        End::Lost => {
            tracing::warn!(job = %id, "another worker took the import over (this one's hold ran out)");
            false
        }
        End::Draining => {
            if let Err(e) = inner.store.release_import(id, &inner.config.worker).await {
                tracing::warn!(job = %id, error = %e, "cannot let go of the import job");
            }
            tracing::info!(job = %id, "import paused: it resumes after a restart");
            inner.notify();
            false
        }
        End::Stopped => end(&inner, id, JobState::Cancelled, None, None).await,
        End::Failed(why) => {
            tracing::warn!(job = %id, "import stopped: {why}");
            end(&inner, id, JobState::Interrupted, None, Some(why)).await
        }
        End::Read => {
            let cancelled = inner
                .store
                .job(id)
                .await
                .is_ok_and(|j| j.state == JobState::Cancelled);
            let (test_job, error) = if cancelled {
                (None, None)
            } else {
                start_test(&inner, &job, &spec).await
            };
            end(&inner, id, JobState::Done, test_job, error).await
        }
    };
    if ended {
        remove_spool(&spec);
    }
}

/// Takes the job for this worker (a few tries through transient store
/// errors). `None`: it ended, or another worker holds it, or the store kept
/// failing (then [`Engine::wait`] reports the error).
async fn claim(inner: &Inner, id: JobId) -> Option<ImportRun> {
    let mut attempt = 1;
    loop {
        let now = Utc::now();
        match inner
            .store
            .claim_import(id, &inner.config.worker, now, inner.config.lease)
            .await
        {
            Ok(run) => return run,
            Err(e) if attempt < ATTEMPTS => {
                tracing::warn!(job = %id, attempt, error = %e, "cannot take the import job, retrying");
                tokio::time::sleep(Duration::from_millis(10) * 2u32.pow(attempt)).await;
                attempt += 1;
            }
            Err(e) => {
                let why = format!("cannot take the import job: {e}");
                tracing::warn!(job = %id, "{why}");
                super::lock(&inner.failed).insert(id, why);
                return None;
            }
        }
    }
}

/// Who the import's writes are recorded under: who created it.
fn actor_of(spec: &ImportSpec) -> Option<Arc<Actor>> {
    spec.actor.clone().map(|name| {
        Arc::new(Actor {
            name,
            source: spec.actor_source.clone(),
        })
    })
}

pub(crate) fn remove_spool(spec: &ImportSpec) {
    if spec.delete_spool
        && let Err(e) = std::fs::remove_file(&spec.spool)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(spool = %spec.spool.display(), error = %e, "cannot delete the spool file");
    }
}

/// Ends the job this worker holds (a job cancelled meanwhile stays
/// cancelled); `true` when it did. A store that keeps failing leaves it to
/// a later resume, and [`Engine::wait`] reports the error.
async fn end(
    inner: &Inner,
    job: JobId,
    state: JobState,
    test_job: Option<JobId>,
    error: Option<String>,
) -> bool {
    let mut attempt = 1;
    let ended = loop {
        let r = inner
            .store
            .end_import(
                job,
                &inner.config.worker,
                state,
                test_job,
                error.clone(),
                Utc::now(),
            )
            .await;
        match r {
            Ok(ended) => break ended,
            Err(e) if attempt < ATTEMPTS => {
                tracing::warn!(%job, attempt, error = %e, "cannot record the end of the import, retrying");
                tokio::time::sleep(Duration::from_millis(10) * 2u32.pow(attempt)).await;
                attempt += 1;
            }
            Err(e) => {
                let why = format!("cannot record the end of the import: {e}");
                tracing::warn!(%job, "{why}");
                super::lock(&inner.failed).insert(job, why);
                break false;
            }
        }
    };
    if ended {
        tracing::info!(%job, %state, "import ended");
    }
    inner.notify();
    ended
}

/// Starts the test job the spec asks for on the added nodes.
async fn start_test(
    inner: &Arc<Inner>,
    job: &Job,
    spec: &ImportSpec,
) -> (Option<JobId>, Option<String>) {
    let Some((kind, options)) = spec.test.clone() else {
        return (None, None);
    };
    let added = match import_summary(inner.store.as_ref(), job).await {
        Ok(s) => s.added_ids(),
        Err(e) => return (None, Some(format!("the test job could not start: {e}"))),
    };
    if added.is_empty() {
        return (None, None);
    }
    let options: JobOptions = serde_json::from_value(options).unwrap_or_default();
    let engine = Engine {
        inner: Arc::clone(inner),
    };
    match within(
        actor_of(spec),
        engine.start_job(kind, NodeFilter::ids(added), options),
    )
    .await
    {
        Ok(id) => (Some(id), None),
        Err(e) => (
            None,
            Some(format!(
                "the rows were imported, but the test job could not start: {e}"
            )),
        ),
    }
}

/// The blocking reading loop: parse, batch, commit with checkpoints.
#[allow(clippy::too_many_arguments)]
fn read_spool(
    handle: &tokio::runtime::Handle,
    inner: &Inner,
    job: JobId,
    spec: &ImportSpec,
    worker: &str,
    lease: Duration,
    file: std::fs::File,
    committed: u64,
    cancel: watch::Receiver<bool>,
    stop: Arc<AtomicBool>,
) -> End {
    let read = Arc::new(AtomicU64::new(0));
    let mut imp = Importer::new(parse(Counting {
        file,
        read: Arc::clone(&read),
    }));
    imp.skip_rows(committed);
    let mut committed = committed;
    loop {
        if *cancel.borrow() {
            return End::Stopped;
        }
        if *inner.draining.borrow() || *inner.pausing_imports.borrow() {
            return End::Draining;
        }
        if stop.load(Ordering::Relaxed) {
            // The runner's task is gone (aborted, as in a crash): commit nothing more.
            return End::Stopped;
        }
        let batch = imp.next_batch(BATCH);
        let last = batch.is_empty();
        let lines: Vec<usize> = batch.iter().map(|p| p.line).collect();
        let nodes: Vec<_> = batch.into_iter().map(|p| p.node).collect();
        let before = imp.take_report();
        let rows = imp.rows_read();
        if rows == committed {
            // Nothing read since the last commit: the end of the input.
            return End::Read;
        }
        let bytes = if last {
            spec.bytes_total
        } else {
            read.load(Ordering::Relaxed).min(spec.bytes_total)
        };
        let mut attempt = 1;
        loop {
            let checkpoint = checkpoint_fn(before.clone(), lines.clone(), rows, bytes);
            let r = handle.block_on(within(
                actor_of(spec),
                inner.store.import_batch(
                    job,
                    worker,
                    Utc::now(),
                    lease,
                    ImportBatch {
                        nodes: nodes.clone(),
                        on_conflict: spec.on_conflict,
                        through_rows: rows,
                        checkpoint,
                    },
                ),
            ));
            match r {
                Ok(true) => break,
                // Already in: the commit of an earlier attempt went through.
                Ok(false) if attempt > 1 => break,
                Ok(false) => {
                    return End::Failed(format!(
                        "the store already holds rows up to {rows} of this import: another runner wrote them"
                    ));
                }
                Err(StoreError::ImportNotHeld(_)) => return End::Lost,
                Err(StoreError::ImportEnded(_)) => return End::Stopped,
                Err(e) if attempt < ATTEMPTS => {
                    tracing::warn!(%job, attempt, error = %e, "import batch failed, retrying");
                    std::thread::sleep(Duration::from_millis(10) * 2u32.pow(attempt));
                    attempt += 1;
                }
                Err(e) => {
                    return End::Failed(format!(
                        "the store failed ({e}); the rows in the report were imported"
                    ));
                }
            }
        }
        committed = rows;
        inner.notify();
        if last {
            return End::Read;
        }
    }
}

/// The checkpoint of a batch: the rows recorded while reading it, then what
/// the store did with its nodes.
fn checkpoint_fn(mut part: ImportReport, lines: Vec<usize>, rows: u64, bytes: u64) -> CheckpointFn {
    Box::new(move |outcomes, replaced| {
        if let Err(e) = part.record_outcomes(&lines, outcomes, replaced) {
            part.not_inserted.extend(&lines);
            part.failure = Some(e.to_string());
        }
        let summary = ImportSummary::new(String::new(), &part);
        ImportCheckpoint {
            rows,
            bytes_done: bytes,
            part: serde_json::to_value(summary).unwrap_or_default(),
        }
    })
}

impl Engine {
    /// Creates an import job for `spec` (see [`JobKind::Import`]) and runs it
    /// in this process, whatever its roles: the spool is a file of this host.
    /// Its progress (bytes of the spool committed) is the job's; its report
    /// is [`import_summary`]'s.
    /// Unless `spec` names an actor, the import's writes are recorded under
    /// the caller's ([`acting::current`](crate::ports::acting::current)).
    pub async fn start_import(&self, mut spec: ImportSpec) -> Result<JobId, EngineError> {
        if spec.actor.is_none()
            && let Some(a) = current()
        {
            spec.actor = Some(a.name.clone());
            spec.actor_source = a.source.clone();
        }
        let job = self.inner.store.create_import(&spec, Utc::now()).await?;
        tracing::info!(job = %job.id, bytes = spec.bytes_total, source = %spec.source, "import job created");
        let id = job.id;
        self.spawn_runner(job);
        Ok(id)
    }

    /// Stops this process's import runners for good (a server shutting
    /// down): each stops after its current batch and lets go of its job,
    /// which the next start on this host resumes from its checkpoint.
    /// Returns once they all stopped.
    pub async fn pause_imports(&self) {
        self.inner.pausing_imports.send_replace(true);
        let tasks: Vec<_> = super::lock(&self.inner.jobs)
            .iter()
            .filter(|(_, j)| j.import)
            .map(|(id, _)| *id)
            .collect();
        while tasks.iter().any(|id| self.is_running_here(*id)) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// An import job's progress row.
    pub async fn import_run(&self, job: JobId) -> Result<ImportRun, EngineError> {
        Ok(self.inner.store.import_run(job).await?)
    }

    /// Start-up of a process without the jobs role (`connexa-http serve
    /// --no-workers`): [`recover`](Self::recover) of the import jobs alone,
    /// which run where their spool is whatever the roles. Returns the jobs
    /// handled.
    pub async fn recover_imports(
        &self,
        policy: super::RecoverPolicy,
    ) -> Result<Vec<JobId>, EngineError> {
        let mut handled = Vec::new();
        for job in self.inner.store.unfinished_jobs().await? {
            if job.kind == JobKind::Import && self.recover_import(&job, policy).await? {
                handled.push(job.id);
            }
        }
        Ok(handled)
    }

    /// [`recover`](Self::recover) of an import job: resumed (or closed as
    /// interrupted) when it waits for this process; `true` when handled.
    pub(crate) async fn recover_import(
        &self,
        job: &Job,
        policy: super::RecoverPolicy,
    ) -> Result<bool, EngineError> {
        if !self.import_waits_here(job).await? {
            return Ok(false);
        }
        match policy {
            super::RecoverPolicy::Resume => {
                tracing::info!(job = %job.id, "resuming import job");
                self.spawn_runner(job.clone());
            }
            super::RecoverPolicy::Interrupt => {
                let why = "interrupted at start-up (recovery policy `interrupt`); the rows in the report were imported";
                if claim(&self.inner, job.id).await.is_some()
                    && end(
                        &self.inner,
                        job.id,
                        JobState::Interrupted,
                        None,
                        Some(why.into()),
                    )
                    .await
                    && let Ok(spec) = spec_of(job)
                {
                    remove_spool(&spec);
                }
            }
        }
        Ok(true)
    }

    /// Before a cancellation of `job`: an import job that no runner here
    /// works on and that waits for this host is taken, so that
    /// [`after_cancel`](Self::after_cancel) can end it and delete its spool
    /// (a paused import has no runner to do so). `None`: nothing to do here.
    pub(crate) async fn before_cancel(&self, job: &Job) -> Option<ImportSpec> {
        if !self.import_waits_here(job).await.unwrap_or(false) {
            return None;
        }
        claim(&self.inner, job.id).await?;
        spec_of(job).ok()
    }

    /// Ends a cancelled import job taken by [`before_cancel`](Self::before_cancel).
    pub(crate) async fn after_cancel(&self, job: JobId, spec: ImportSpec) {
        if end(&self.inner, job, JobState::Cancelled, None, None).await {
            remove_spool(&spec);
        }
    }

    /// Whether an unfinished import job waits for this process: this host's,
    /// not running here, and nobody else holds it.
    pub(crate) async fn import_waits_here(&self, job: &Job) -> Result<bool, EngineError> {
        if job.kind != JobKind::Import || terminal(job.state) || self.is_running_here(job.id) {
            return Ok(false);
        }
        let run = self.inner.store.import_run(job.id).await?;
        Ok(claimable_here(job, &run, &self.inner.config.worker))
    }
}
