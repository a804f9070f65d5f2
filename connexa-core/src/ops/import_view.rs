//! The view of an import job ([`ImportJobView`]) both frontends show:
//! `GET /api/v1/imports/{id}` and `connexa jobs show`.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::OpsError;
use crate::domain::{Job, JobId, JobKind, JobState, OnConflict};
use crate::import::summary::ImportSummary;
use crate::ports::{NodeStore, StoreError};

/// Where an import job is, in an importer's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ImportState {
    /// Queued or reading its spooled list (also while it waits for a
    /// restart to resume it).
    Running,
    /// Every row was read; `summary` is the report.
    Done,
    /// The import stopped early (the store kept failing, the spool file was
    /// gone at a resume) or its test job could not start; `error` says why,
    /// and `summary` names the rows that went in before.
    Failed,
    /// Cancelled: the rows in `summary` went in.
    Cancelled,
}

/// An import job, its progress and (once ended) its report.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ImportJobView {
    /// The import job.
    pub import_job: JobId,
    /// running, done, failed or cancelled.
    pub state: ImportState,
    /// The source's name in the report.
    pub source: String,
    /// Conflict policy.
    pub on_conflict: OnConflict,
    /// Bytes of the list.
    pub bytes_total: u64,
    /// Bytes of the list the committed batches have read.
    pub bytes_processed: u64,
    /// `bytes_processed` in percent of `bytes_total`, one decimal; 100 only once done.
    pub percent: f64,
    /// When the import job was created.
    pub started_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// The report, once ended (with `with_summary`).
    pub summary: Option<ImportSummary>,
    /// The test job started on the added nodes, if one was asked and any were added.
    pub job: Option<JobId>,
    /// Why the import failed.
    pub error: Option<String>,
}

impl ImportJobView {
    /// The view of import job `job` (the store's [`StoreError::JobNotFound`]
    /// for a job of another kind); its report only `with_summary` and once
    /// it ended.
    pub async fn of(
        store: &dyn NodeStore,
        job: &Job,
        with_summary: bool,
    ) -> Result<Self, OpsError> {
        let spec = job
            .import_spec()
            .filter(|_| job.kind == JobKind::Import)
            .ok_or(StoreError::JobNotFound(job.id))?;
        let run = store.import_run(job.id).await?;
        let state = match job.state {
            JobState::Queued | JobState::Running => ImportState::Running,
            JobState::Done if run.error.is_none() => ImportState::Done,
            JobState::Cancelled => ImportState::Cancelled,
            JobState::Done | JobState::Interrupted => ImportState::Failed,
        };
        let total = run.bytes_total;
        let processed = if state == ImportState::Done {
            total
        } else {
            run.bytes_done.min(total)
        };
        let percent = match state {
            ImportState::Done => 100.0,
            _ if total == 0 => 0.0,
            _ => ((processed as f64 * 1000.0 / total as f64).floor() / 10.0).min(99.9),
        };
        let summary = if with_summary && state != ImportState::Running {
            Some(crate::engine::import_summary(store, job).await?)
        } else {
            None
        };
        Ok(ImportJobView {
            import_job: job.id,
            state,
            source: spec.source,
            on_conflict: spec.on_conflict,
            bytes_total: total,
            bytes_processed: processed,
            percent,
            started_at: job.created_at,
            finished_at: job.finished_at,
            summary,
            job: run.test_job,
            error: run.error,
        })
    }
}
