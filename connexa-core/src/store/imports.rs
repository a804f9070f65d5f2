//! Import jobs: their progress row (the parser rows committed, the bytes
//! read, who holds the job) and the report part of each committed batch.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DbBackend, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect,
};

use super::convert::{from_ms, ms};
use super::db_err;
use super::entity::{import_parts, imports, jobs};
use crate::ports::{ImportCheckpoint, ImportRun, ImportSpec, Job, JobId, JobState, StoreError};

fn until(at: DateTime<Utc>, lease: Duration) -> i64 {
    ms(at).saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 4))
}

fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn run(row: imports::Model) -> ImportRun {
    ImportRun {
        job: JobId(row.job_id),
        rows: u64::try_from(row.rows_done).unwrap_or(0),
        bytes_done: u64::try_from(row.bytes_done).unwrap_or(0),
        bytes_total: u64::try_from(row.bytes_total).unwrap_or(0),
        worker: row.worker,
        lease_until: row.lease_until.map(from_ms),
        test_job: row.test_job.map(JobId),
        error: row.error,
    }
}

/// The progress row of a new import job (`job` was just created).
pub(crate) async fn create<C: ConnectionTrait>(
    conn: &C,
    job: &Job,
    spec: &ImportSpec,
) -> Result<(), StoreError> {
    imports::Entity::insert(imports::ActiveModel {
        job_id: Set(job.id.0),
        rows_done: Set(0),
        bytes_done: Set(0),
        bytes_total: Set(count(spec.bytes_total)),
        worker: Set(None),
        lease_until: Set(None),
        test_job: Set(None),
        error: Set(None),
    })
    .exec_without_returning(conn)
    .await
    .map_err(db_err)?;
    Ok(())
}

pub(crate) async fn get<C: ConnectionTrait>(conn: &C, job: JobId) -> Result<ImportRun, StoreError> {
    imports::Entity::find_by_id(job.0)
        .one(conn)
        .await
        .map_err(db_err)?
        .map(run)
        .ok_or(StoreError::JobNotFound(job))
}

/// Takes the job for `worker` when it is unfinished and nobody else holds it.
pub(crate) async fn claim<C: ConnectionTrait>(
    conn: &C,
    job: JobId,
    worker: &str,
    at: DateTime<Utc>,
    lease: Duration,
) -> Result<Option<ImportRun>, StoreError> {
    let unfinished = jobs::Entity::find_by_id(job.0)
        .filter(jobs::Column::State.is_in([JobState::Queued.as_str(), JobState::Running.as_str()]))
        .one(conn)
        .await
        .map_err(db_err)?
        .is_some();
    if !unfinished {
        return Ok(None);
    }
    let taken = imports::Entity::update_many()
        .col_expr(imports::Column::Worker, Expr::value(worker))
        .col_expr(imports::Column::LeaseUntil, Expr::value(until(at, lease)))
        .filter(imports::Column::JobId.eq(job.0))
        .filter(
            Condition::any()
                .add(imports::Column::Worker.is_null())
                .add(imports::Column::Worker.eq(worker))
                .add(imports::Column::LeaseUntil.lt(ms(at))),
        )
        .exec(conn)
        .await
        .map_err(db_err)?
        .rows_affected;
    if taken == 0 {
        return Ok(None);
    }
    jobs::Entity::update_many()
        .col_expr(jobs::Column::State, Expr::value(JobState::Running.as_str()))
        .filter(jobs::Column::Id.eq(job.0))
        .filter(jobs::Column::State.eq(JobState::Queued.as_str()))
        .exec(conn)
        .await
        .map_err(db_err)?;
    get(conn, job).await.map(Some)
}

/// Extends `worker`'s hold (the batch's first statement: it also locks the
/// row against a takeover until the batch commits), and on PostgreSQL locks
/// the job's row against a cancellation until then; refused when another
/// worker took the job ([`StoreError::ImportNotHeld`]) or it no longer runs
/// ([`StoreError::ImportEnded`]). Returns the parser rows committed so far.
pub(crate) async fn hold<C: ConnectionTrait>(
    conn: &C,
    job: JobId,
    worker: &str,
    at: DateTime<Utc>,
    lease: Duration,
) -> Result<u64, StoreError> {
    let held = imports::Entity::update_many()
        .col_expr(imports::Column::LeaseUntil, Expr::value(until(at, lease)))
        .filter(imports::Column::JobId.eq(job.0))
        .filter(imports::Column::Worker.eq(worker))
        .exec(conn)
        .await
        .map_err(db_err)?
        .rows_affected;
    if held == 0 {
        return Err(StoreError::ImportNotHeld(job));
    }
    let mut q =
        jobs::Entity::find_by_id(job.0).filter(jobs::Column::State.eq(JobState::Running.as_str()));
    if conn.get_database_backend() == DbBackend::Postgres {
        q = q.lock_shared();
    }
    if q.one(conn).await.map_err(db_err)?.is_none() {
        return Err(StoreError::ImportEnded(job));
    }
    Ok(get(conn, job).await?.rows)
}

/// Records a batch's checkpoint and its part of the report.
pub(crate) async fn checkpoint<C: ConnectionTrait>(
    conn: &C,
    job: JobId,
    c: &ImportCheckpoint,
) -> Result<(), StoreError> {
    imports::Entity::update_many()
        .col_expr(imports::Column::RowsDone, Expr::value(count(c.rows)))
        .col_expr(imports::Column::BytesDone, Expr::value(count(c.bytes_done)))
        .filter(imports::Column::JobId.eq(job.0))
        .exec(conn)
        .await
        .map_err(db_err)?;
    import_parts::Entity::insert(import_parts::ActiveModel {
        job_id: Set(job.0),
        part: Set(c.part.to_string()),
        ..Default::default()
    })
    .exec_without_returning(conn)
    .await
    .map_err(db_err)?;
    Ok(())
}

pub(crate) async fn parts<C: ConnectionTrait>(
    conn: &C,
    job: JobId,
) -> Result<Vec<serde_json::Value>, StoreError> {
    get(conn, job).await?;
    import_parts::Entity::find()
        .filter(import_parts::Column::JobId.eq(job.0))
        .order_by_asc(import_parts::Column::Id)
        .all(conn)
        .await
        .map_err(db_err)?
        .into_iter()
        .map(|p| {
            serde_json::from_str(&p.part)
                .map_err(|e| StoreError::Backend(format!("corrupt import part {}: {e}", p.id)))
        })
        .collect()
}

/// Ends the job (its state and finish time, unless it ended meanwhile:
/// a cancelled job stays cancelled) and records how; only when `worker`
/// holds it or nobody does.
pub(crate) async fn end<C: ConnectionTrait>(
    conn: &C,
    job: JobId,
    worker: &str,
    state: JobState,
    test_job: Option<JobId>,
    error: Option<String>,
    at: DateTime<Utc>,
) -> Result<bool, StoreError> {
    get(conn, job).await?;
    let ours = imports::Entity::update_many()
        .col_expr(imports::Column::Worker, Expr::value(None::<String>))
        .col_expr(imports::Column::LeaseUntil, Expr::value(None::<i64>))
        .col_expr(imports::Column::TestJob, Expr::value(test_job.map(|j| j.0)))
        .col_expr(imports::Column::Error, Expr::value(error))
        .filter(imports::Column::JobId.eq(job.0))
        .filter(
            Condition::any()
                .add(imports::Column::Worker.is_null())
                .add(imports::Column::Worker.eq(worker)),
        )
        .exec(conn)
        .await
        .map_err(db_err)?
        .rows_affected;
    if ours == 0 {
        return Ok(false);
    }
    jobs::Entity::update_many()
        .col_expr(jobs::Column::State, Expr::value(state.as_str()))
        .col_expr(jobs::Column::FinishedAt, Expr::value(ms(at)))
        .filter(jobs::Column::Id.eq(job.0))
        .filter(jobs::Column::State.is_in([JobState::Queued.as_str(), JobState::Running.as_str()]))
        .exec(conn)
        .await
        .map_err(db_err)?;
    Ok(true)
}

pub(crate) async fn release<C: ConnectionTrait>(
    conn: &C,
    job: JobId,
    worker: &str,
) -> Result<(), StoreError> {
    imports::Entity::update_many()
        .col_expr(imports::Column::Worker, Expr::value(None::<String>))
        .col_expr(imports::Column::LeaseUntil, Expr::value(None::<i64>))
        .filter(imports::Column::JobId.eq(job.0))
        .filter(imports::Column::Worker.eq(worker))
        .exec(conn)
        .await
        .map_err(db_err)?;
    Ok(())
}
