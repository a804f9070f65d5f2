//! Jobs and their items: creation, claiming, group-committed results, progress.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, LockBehavior, LockType, OnConflict, Query};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DbBackend,
    EntityTrait, IntoActiveModel, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, QueryTrait,
};

use super::convert::{self, ms};
use super::entity::{job_items, jobs, nodes, workers};
use super::{apply, db_err, query};
use crate::domain::NodeId;
use crate::ports::{
    ApplyContext, ApplyRequest, ClaimedItem, CommittedItem, ItemCursor, ItemFinished, ItemId,
    ItemResult, ItemState, ItemView, Job, JobId, JobSpec, JobState, Progress, StoreError,
};

pub(crate) async fn create<C: ConnectionTrait>(
    conn: &C,
    spec: &JobSpec,
    at: DateTime<Utc>,
) -> Result<Job, StoreError> {
    let row = jobs::ActiveModel {
        kind: Set(spec.kind.as_str().to_owned()),
        state: Set(JobState::Queued.as_str().to_owned()),
        options: Set(spec.options.to_string()),
        total: Set(0),
        created_at: Set(ms(at)),
        finished_at: Set(None),
        deadline_at: Set(spec.deadline.map(ms)),
        ..Default::default()
    }
    .insert(conn)
    .await
    .map_err(db_err)?;
    // INSERT INTO job_items (job_id, node_id, state) SELECT <job>, id, 'pending' FROM nodes WHERE ...
    let select = nodes::Entity::find()
        .select_only()
        .column_as(Expr::val(row.id), "job_id")
        .column(nodes::Column::Id)
        .column_as(Expr::val(ItemState::Pending.as_str()), "state")
        .filter(query::condition(&spec.filter, conn.get_database_backend()))
        .order_by_asc(nodes::Column::Id)
        .into_query();
    let insert = Query::insert()
        .into_table(job_items::Entity)
        .columns([
            job_items::Column::JobId,
            job_items::Column::NodeId,
            job_items::Column::State,
        ])
        .select_from(select)
        .map_err(|e| StoreError::Backend(e.to_string()))?
        .to_owned();
    let total = conn.execute(&insert).await.map_err(db_err)?.rows_affected();
    let mut active = row.into_active_model();
    active.total = Set(i64::try_from(total).unwrap_or(i64::MAX));
    let row = active.update(conn).await.map_err(db_err)?;
    convert::job(row)
}

/// Sets a job's `total` (an import job's: the bytes of its spool).
pub(crate) async fn set_total<C: ConnectionTrait>(
    conn: &C,
    job: JobId,
    total: u64,
) -> Result<(), StoreError> {
    jobs::Entity::update_many()
        .col_expr(
            jobs::Column::Total,
            Expr::value(i64::try_from(total).unwrap_or(i64::MAX)),
        )
        .filter(jobs::Column::Id.eq(job.0))
        .exec(conn)
        .await
        .map_err(db_err)?;
    Ok(())
}

pub(crate) async fn get<C: ConnectionTrait>(conn: &C, job: JobId) -> Result<Job, StoreError> {
    jobs::Entity::find_by_id(job.0)
        .one(conn)
        .await
        .map_err(db_err)?
        .ok_or(StoreError::JobNotFound(job))
        .and_then(convert::job)
}

pub(crate) async fn recent<C: ConnectionTrait>(
    conn: &C,
    limit: u64,
) -> Result<Vec<Job>, StoreError> {
    jobs::Entity::find()
        .order_by_desc(jobs::Column::Id)
        .limit(limit.min(i64::MAX as u64))
        .all(conn)
        .await
        .map_err(db_err)?
        .into_iter()
        .map(convert::job)
        .collect()
}

pub(crate) async fn unfinished<C: ConnectionTrait>(conn: &C) -> Result<Vec<Job>, StoreError> {
    jobs::Entity::find()
        .filter(jobs::Column::State.is_in([JobState::Queued.as_str(), JobState::Running.as_str()]))
        .order_by_asc(jobs::Column::Id)
        .all(conn)
        .await
        .map_err(db_err)?
        .into_iter()
        .map(convert::job)
        .collect()
}

pub(crate) async fn set_state<C: ConnectionTrait>(
    conn: &C,
    job: JobId,
    state: JobState,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    let finished = matches!(
        state,
        JobState::Done | JobState::Cancelled | JobState::Interrupted
    );
    let res = jobs::Entity::update_many()
        .col_expr(jobs::Column::State, Expr::value(state.as_str()))
        .col_expr(
            jobs::Column::FinishedAt,
            Expr::value(finished.then(|| ms(at))),
        )
        .filter(jobs::Column::Id.eq(job.0))
        .exec(conn)
        .await
        .map_err(db_err)?;
    if res.rows_affected == 0 {
        return Err(StoreError::JobNotFound(job));
    }
    Ok(())
}

/// Items a claim at `at` may take: pending ones, and running ones whose lease expired.
fn claimable_condition(at: DateTime<Utc>) -> Condition {
    Condition::any()
        .add(job_items::Column::State.eq(ItemState::Pending.as_str()))
        .add(
            Condition::all()
                .add(job_items::Column::State.eq(ItemState::Running.as_str()))
                .add(job_items::Column::LeaseUntil.lt(ms(at))),
        )
}

pub(crate) async fn claim<C: ConnectionTrait>(
    conn: &C,
    job: JobId,
    worker: &str,
    max: u64,
    at: DateTime<Utc>,
    lease: std::time::Duration,
) -> Result<Vec<ClaimedItem>, StoreError> {
    let mut q = job_items::Entity::find()
        .select_only()
        .columns([
            job_items::Column::Id,
            job_items::Column::NodeId,
            job_items::Column::State,
        ])
        .filter(job_items::Column::JobId.eq(job.0))
        .filter(claimable_condition(at))
        .order_by_asc(job_items::Column::Id)
        .limit(max);
    if conn.get_database_backend() == DbBackend::Postgres {
        q = q.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked);
    }
    let rows: Vec<(i64, i64, String)> = q.into_tuple().all(conn).await.map_err(db_err)?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    log_reclaimed(job, worker, &rows);
    // One token per claim: a later claim of the same item always gets another.
    let token: i64 = rand::random::<i64>() & i64::MAX;
    let lease_until = ms(at) + i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 4);
    job_items::Entity::update_many()
        .col_expr(
            job_items::Column::State,
            Expr::value(ItemState::Running.as_str()),
        )
        .col_expr(job_items::Column::Worker, Expr::value(worker))
        .col_expr(job_items::Column::ClaimedAt, Expr::value(ms(at)))
        .col_expr(job_items::Column::ClaimToken, Expr::value(token))
        .col_expr(job_items::Column::LeaseUntil, Expr::value(lease_until))
        .filter(job_items::Column::Id.is_in(rows.iter().map(|(id, _, _)| *id)))
        .exec(conn)
        .await
        .map_err(db_err)?;
    jobs::Entity::update_many()
        .col_expr(jobs::Column::State, Expr::value(JobState::Running.as_str()))
        .filter(jobs::Column::Id.eq(job.0))
        .filter(jobs::Column::State.eq(JobState::Queued.as_str()))
        .exec(conn)
        .await
        .map_err(db_err)?;
    Ok(rows
        .into_iter()
        .map(|(id, node, _)| ClaimedItem {
            item: ItemId(id),
            job,
            node: NodeId(node),
            token,
        })
        .collect())
}

/// Logs how many of a claim's items were taken back from a worker whose
/// lease expired (rows: id, node, state before the claim).
fn log_reclaimed(job: JobId, worker: &str, rows: &[(i64, i64, String)]) {
    let reclaimed = rows
        .iter()
        .filter(|(_, _, s)| s == ItemState::Running.as_str())
        .count();
    if reclaimed > 0 {
        tracing::warn!(%job, reclaimed, %worker, "reclaiming items whose lease expired");
    }
}

pub(crate) async fn claimable<C: ConnectionTrait>(
    conn: &C,
    job: JobId,
    at: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let n = job_items::Entity::find()
        .filter(job_items::Column::JobId.eq(job.0))
        .filter(claimable_condition(at))
        .count(conn)
        .await
        .map_err(db_err)?;
    Ok(n)
}

/// The next commit number of `job` (see migration m0002). On Postgres the job
/// row is locked first, so that commits of one job are serialised and numbers
/// are handed out in commit order; SQLite has a single writer already.
pub(crate) async fn next_seq<C: ConnectionTrait>(conn: &C, job: i64) -> Result<i64, StoreError> {
    if conn.get_database_backend() == DbBackend::Postgres {
        jobs::Entity::find_by_id(job)
            .lock_exclusive()
            .one(conn)
            .await
            .map_err(db_err)?;
    }
    let max: Option<Option<i64>> = job_items::Entity::find()
        .select_only()
        .column_as(job_items::Column::Seq.max(), "max")
        .filter(job_items::Column::JobId.eq(job))
        .into_tuple()
        .one(conn)
        .await
        .map_err(db_err)?;
    Ok(max.flatten().unwrap_or(0) + 1)
}

pub(crate) async fn finish<C: ConnectionTrait>(
    conn: &C,
    results: Vec<ItemResult>,
) -> Result<Vec<ItemFinished>, StoreError> {
    let ids: Vec<i64> = results.iter().map(|r| r.item.0).collect();
    // Commit numbers first (this takes the job locks before the item locks, the
    // same order as every other writer of a job's items).
    let mut job_ids: Vec<i64> = job_items::Entity::find()
        .select_only()
        .column(job_items::Column::JobId)
        .distinct()
        .filter(job_items::Column::Id.is_in(ids.iter().copied()))
        .into_tuple()
        .all(conn)
        .await
        .map_err(db_err)?;
    job_ids.sort_unstable();
    let mut seqs = HashMap::new();
    for j in job_ids {
        seqs.insert(j, next_seq(conn, j).await?);
    }
    let mut q = job_items::Entity::find().filter(job_items::Column::Id.is_in(ids.iter().copied()));
    if conn.get_database_backend() == DbBackend::Postgres {
        q = q.order_by_asc(job_items::Column::Id).lock_exclusive();
    }
    let mut items: HashMap<i64, job_items::Model> = q
        .all(conn)
        .await
        .map_err(db_err)?
        .into_iter()
        .map(|m| (m.id, m))
        .collect();

    // Which results are live (item exists and has not ended), and their events.
    let mut live = Vec::with_capacity(results.len());
    let mut requests = Vec::new();
    for r in &results {
        // Fencing: only the claim that holds the item may end it.
        let open = items.get(&r.item.0).is_some_and(|m| {
            m.state == ItemState::Running.as_str() && m.claim_token == Some(r.token)
        });
        let request = match (&r.event, open) {
            (Some(event), true) => {
                let node = items
                    .get(&r.item.0)
                    .map(|m| NodeId(m.node_id))
                    .unwrap_or(NodeId(0));
                requests.push(ApplyRequest {
                    node,
                    event: event.clone(),
                    ctx: ApplyContext {
                        job: items.get(&r.item.0).map(|m| JobId(m.job_id)),
                        at: r.at,
                    },
                });
                Some(requests.len() - 1)
            }
            _ => None,
        };
        live.push((open, request));
        if open {
            // A result listed twice in one batch is only taken once.
            if let Some(m) = items.get_mut(&r.item.0) {
                m.state = ItemState::Ok.as_str().to_owned();
            }
        }
    }
    let applied = apply::write_events(conn, &requests).await.map_err(db_err)?;

    let mut out = Vec::with_capacity(results.len());
    let mut updates = Vec::new();
    for (r, (open, request)) in results.into_iter().zip(live) {
        if !open {
            out.push(ItemFinished {
                item: r.item,
                state: r.state,
                applied: None,
                written: false,
            });
            continue;
        }
        let (state, detail, applied) = match request.map(|i| &applied[i]) {
            Some(Ok(a)) => (r.state, r.detail, Some(*a)),
            Some(Err(e)) => (ItemState::Failed, Some(e.to_string()), None),
            None => (r.state, r.detail, None),
        };
        if let Some(m) = items.remove(&r.item.0) {
            if let Some(update) = &r.enrichment {
                super::enrich::write(conn, NodeId(m.node_id), update).await?;
            }
            let mut m = m;
            m.state = state.as_str().to_owned();
            m.finished_at = Some(ms(r.at));
            m.result_status = applied.map(|a| a.to.as_str().to_owned());
            m.detail = detail;
            m.seq = seqs.get(&m.job_id).copied();
            m.lease_until = None;
            updates.push(m.into_active_model().reset_all());
        }
        out.push(ItemFinished {
            item: r.item,
            state,
            applied,
            written: true,
        });
    }
    for chunk in updates.chunks(1_000) {
        job_items::Entity::insert_many(chunk.to_vec())
            .on_conflict(
                OnConflict::column(job_items::Column::Id)
                    .update_columns([
                        job_items::Column::State,
                        job_items::Column::FinishedAt,
                        job_items::Column::ResultStatus,
                        job_items::Column::Detail,
                        job_items::Column::Seq,
                        job_items::Column::LeaseUntil,
                    ])
                    .to_owned(),
            )
            .exec_without_returning(conn)
            .await
            .map_err(db_err)?;
    }
    Ok(out)
}

pub(crate) async fn cancel_pending<C: ConnectionTrait>(
    conn: &C,
    job: JobId,
    at: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let seq = next_seq(conn, job.0).await?;
    Ok(job_items::Entity::update_many()
        .col_expr(
            job_items::Column::State,
            Expr::value(ItemState::Cancelled.as_str()),
        )
        .col_expr(job_items::Column::Seq, Expr::value(seq))
        .col_expr(job_items::Column::FinishedAt, Expr::value(ms(at)))
        .col_expr(job_items::Column::Detail, Expr::value("cancelled"))
        .filter(job_items::Column::JobId.eq(job.0))
        .filter(job_items::Column::State.eq(ItemState::Pending.as_str()))
        .exec(conn)
        .await
        .map_err(db_err)?
        .rows_affected)
}

/// Back to pending: no holder, no token, no lease.
fn requeue() -> sea_orm::UpdateMany<job_items::Entity> {
    job_items::Entity::update_many()
        .col_expr(
            job_items::Column::State,
            Expr::value(ItemState::Pending.as_str()),
        )
        .col_expr(
            job_items::Column::Worker,
            Expr::value(Option::<String>::None),
        )
        .col_expr(
            job_items::Column::ClaimToken,
            Expr::value(Option::<i64>::None),
        )
        .col_expr(
            job_items::Column::LeaseUntil,
            Expr::value(Option::<i64>::None),
        )
}

pub(crate) async fn requeue_running<C: ConnectionTrait>(
    conn: &C,
    job: JobId,
) -> Result<u64, StoreError> {
    Ok(requeue()
        .filter(job_items::Column::JobId.eq(job.0))
        .filter(job_items::Column::State.eq(ItemState::Running.as_str()))
        .exec(conn)
        .await
        .map_err(db_err)?
        .rows_affected)
}

pub(crate) async fn requeue_orphans<C: ConnectionTrait>(
    conn: &C,
    job: JobId,
    me: &str,
    at: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let dead: Vec<String> = workers::Entity::find()
        .select_only()
        .column(workers::Column::Name)
        .filter(workers::Column::ExpiresAt.lte(ms(at)))
        .into_tuple()
        .all(conn)
        .await
        .map_err(db_err)?;
    Ok(requeue()
        .filter(job_items::Column::JobId.eq(job.0))
        .filter(job_items::Column::State.eq(ItemState::Running.as_str()))
        .filter(
            Condition::any()
                .add(job_items::Column::Worker.is_null())
                .add(job_items::Column::Worker.eq(me))
                .add(job_items::Column::LeaseUntil.is_null())
                .add(job_items::Column::LeaseUntil.lt(ms(at)))
                .add(job_items::Column::Worker.is_in(dead)),
        )
        .exec(conn)
        .await
        .map_err(db_err)?
        .rows_affected)
}

pub(crate) async fn progress<C: ConnectionTrait>(
    conn: &C,
    job: JobId,
) -> Result<Progress, StoreError> {
    let j = get(conn, job).await?;
    if j.kind == crate::ports::JobKind::Import {
        return import_progress(conn, &j).await;
    }
    let total = j.total;
    let rows: Vec<(String, i64)> = job_items::Entity::find()
        .select_only()
        .column(job_items::Column::State)
        .column_as(job_items::Column::Id.count(), "n")
        .filter(job_items::Column::JobId.eq(job.0))
        .group_by(job_items::Column::State)
        .into_tuple()
        .all(conn)
        .await
        .map_err(db_err)?;
    let mut p = Progress {
        total,
        ..Progress::default()
    };
    for (state, n) in rows {
        let n = u64::try_from(n).unwrap_or(0);
        match state.parse::<ItemState>() {
            Ok(ItemState::Pending) => p.pending = n,
            Ok(ItemState::Running) => p.running = n,
            Ok(ItemState::Ok) => p.ok = n,
            Ok(ItemState::Failed) => p.failed = n,
            Ok(ItemState::TimedOut) => p.timed_out = n,
            Ok(ItemState::Cancelled) => p.cancelled = n,
            Err(e) => return Err(StoreError::Backend(format!("corrupt row: {e}"))),
        }
    }
    Ok(p)
}

/// An import job's progress, in bytes of its spool: `ok` the bytes the
/// committed batches read, `pending` the rest while it runs, `cancelled` the
/// rest once it ended early (so that an ended job is always complete).
async fn import_progress<C: ConnectionTrait>(conn: &C, j: &Job) -> Result<Progress, StoreError> {
    let run = super::imports::get(conn, j.id).await?;
    let total = run.bytes_total;
    let ok = if j.state == JobState::Done && run.error.is_none() {
        total
    } else {
        run.bytes_done.min(total)
    };
    let rest = total - ok;
    let ended = matches!(
        j.state,
        JobState::Done | JobState::Cancelled | JobState::Interrupted
    );
    Ok(Progress {
        total,
        ok,
        pending: if ended { 0 } else { rest },
        cancelled: if ended { rest } else { 0 },
        ..Progress::default()
    })
}

pub(crate) async fn recent_items<C: ConnectionTrait>(
    conn: &C,
    job: JobId,
    limit: u64,
) -> Result<Vec<ItemView>, StoreError> {
    job_items::Entity::find()
        .filter(job_items::Column::JobId.eq(job.0))
        .filter(job_items::Column::FinishedAt.is_not_null())
        .order_by_desc(job_items::Column::FinishedAt)
        .order_by_desc(job_items::Column::Id)
        .limit(limit.min(i64::MAX as u64))
        .all(conn)
        .await
        .map_err(db_err)?
        .into_iter()
        .map(convert::item_view)
        .collect()
}

pub(crate) async fn items_since<C: ConnectionTrait>(
    conn: &C,
    job: JobId,
    cursor: ItemCursor,
    limit: u64,
) -> Result<Vec<CommittedItem>, StoreError> {
    let seq = i64::try_from(cursor.seq).unwrap_or(i64::MAX);
    job_items::Entity::find()
        .filter(job_items::Column::JobId.eq(job.0))
        .filter(
            Condition::any().add(job_items::Column::Seq.gt(seq)).add(
                Condition::all()
                    .add(job_items::Column::Seq.eq(seq))
                    .add(job_items::Column::Id.gt(cursor.item)),
            ),
        )
        .order_by_asc(job_items::Column::Seq)
        .order_by_asc(job_items::Column::Id)
        .limit(limit.min(i64::MAX as u64))
        .all(conn)
        .await
        .map_err(db_err)?
        .into_iter()
        .map(|m| {
            let seq = m.seq.unwrap_or(0).max(0) as u64;
            convert::item_view(m).map(|item| CommittedItem { seq, item })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use crate::domain::{NewNode, NodeFilter};
    use crate::ports::{ItemCursor, ItemResult, ItemState, JobKind, JobSpec, NodeStore};
    use crate::store::SqlStore;

    #[tokio::test]
    async fn items_since_returns_each_commit_once_in_commit_order() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let store = SqlStore::connect(&url).await.unwrap();
        let nodes = (1..=4)
            .map(|i| NewNode::new(&format!("127.0.0.{i}"), 1723, "u", "p").unwrap())
            .collect();
        store.insert(nodes).await.unwrap();
        let spec = JobSpec {
            kind: JobKind::Light,
            filter: NodeFilter::all(),
            options: serde_json::json!({}),
            deadline: None,
        };
        let job = store.create_job(spec, Utc::now()).await.unwrap();
        assert!(
            store
                .items_since(job.id, ItemCursor::default(), 100)
                .await
                .unwrap()
                .is_empty()
        );
        let claimed = store
            .claim_items(
                job.id,
                "w",
                2,
                Utc::now(),
                std::time::Duration::from_secs(30),
            )
            .await
            .unwrap();
        // The higher item id commits first: commit order, not id order.
        for c in claimed.iter().rev() {
            let r = ItemResult {
                item: c.item,
                token: c.token,
                state: ItemState::Failed,
                event: None,
                enrichment: None,
                detail: Some("x".into()),
                at: Utc::now(),
            };
            store.finish_items(vec![r]).await.unwrap();
        }
        let got = store
            .items_since(job.id, ItemCursor::default(), 100)
            .await
            .unwrap();
        let seen: Vec<_> = got.iter().map(|c| (c.seq, c.item.item)).collect();
        assert_eq!(seen, vec![(1, claimed[1].item), (2, claimed[0].item)]);
        assert_eq!(store.cancel_pending(job.id, Utc::now()).await.unwrap(), 2);
        let rest = store
            .items_since(job.id, got[1].cursor(), 100)
            .await
            .unwrap();
        assert_eq!(rest.len(), 2);
        assert!(
            rest.iter()
                .all(|c| c.seq == 3 && c.item.state == ItemState::Cancelled)
        );
        let first = store.items_since(job.id, got[1].cursor(), 1).await.unwrap();
        assert_eq!(first.len(), 1, "limit");
        // Resuming inside one commit gives the rest of it.
        let second = store
            .items_since(job.id, first[0].cursor(), 100)
            .await
            .unwrap();
        assert_eq!(second.len(), 1);
        assert_ne!(second[0].item.item, first[0].item.item);
        // A result given twice is not numbered again.
        let again = ItemResult {
            item: claimed[0].item,
            token: claimed[0].token,
            state: ItemState::Ok,
            event: None,
            enrichment: None,
            detail: None,
            at: Utc::now(),
        };
        store.finish_items(vec![again]).await.unwrap();
        assert!(
            store
                .items_since(job.id, second[0].cursor(), 100)
                .await
                .unwrap()
                .is_empty()
        );
    }
}
