//! Worker registration, heartbeats (with the lease extension of the items a
//! worker holds) and the list of workers.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect,
};

use super::convert::{from_ms, ms};
use super::db_err;
use super::entity::{job_items, workers};
use crate::ports::{ItemState, StoreError, WorkerRegistration, WorkerRole, WorkerView};

fn until(at: DateTime<Utc>, lease: Duration) -> i64 {
    ms(at).saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 4))
}

fn roles_text(roles: &[WorkerRole]) -> String {
    let mut r: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
    r.sort_unstable();
    r.dedup();
    r.join(",")
}

fn row(w: &WorkerRegistration, at: DateTime<Utc>, lease: Duration) -> workers::ActiveModel {
    workers::ActiveModel {
        name: Set(w.name.clone()),
        host: Set(w.host.clone()),
        pid: Set(i64::from(w.pid)),
        version: Set(w.version.clone()),
        roles: Set(roles_text(&w.roles)),
        started_at: Set(ms(at)),
        last_heartbeat: Set(ms(at)),
        expires_at: Set(until(at, lease)),
        max_services: Set(w.max_services.map(|n| i64::try_from(n).unwrap_or(i64::MAX))),
        labels: Set(labels_text(&w.labels)),
    }
}

fn labels_text(labels: &[String]) -> Option<String> {
    let mut l: Vec<&str> = labels.iter().map(String::as_str).collect();
    l.sort_unstable();
    l.dedup();
    (!l.is_empty()).then(|| l.join(","))
}

pub(crate) async fn register<C: ConnectionTrait>(
    conn: &C,
    w: &WorkerRegistration,
    at: DateTime<Utc>,
    lease: Duration,
) -> Result<(), StoreError> {
    let mut q = workers::Entity::find_by_id(w.name.clone());
    if conn.get_database_backend() == DbBackend::Postgres {
        q = q.lock_exclusive();
    }
    if let Some(old) = q.one(conn).await.map_err(db_err)? {
        let same_process = old.host == w.host && old.pid == i64::from(w.pid);
        if old.expires_at > ms(at) && !same_process {
            return Err(StoreError::WorkerNameTaken {
                name: w.name.clone(),
                host: old.host,
                pid: u32::try_from(old.pid).unwrap_or(0),
            });
        }
        workers::Entity::delete_by_id(w.name.clone())
            .exec(conn)
            .await
            .map_err(db_err)?;
    }
    workers::Entity::insert(row(w, at, lease))
        .exec_without_returning(conn)
        .await
        .map_err(db_err)?;
    Ok(())
}

pub(crate) async fn heartbeat<C: ConnectionTrait>(
    conn: &C,
    w: &WorkerRegistration,
    at: DateTime<Utc>,
    lease: Duration,
) -> Result<u64, StoreError> {
    // Only this process's own row is kept alive: a process paused past its
    // registration whose name another process took since must not take it
    // back (both would extend each other's leases). Its items then lapse and
    // are reclaimed; its late results are refused by the claim token.
    let kept = workers::Entity::update_many()
        .col_expr(workers::Column::Version, Expr::value(w.version.clone()))
        .col_expr(workers::Column::Roles, Expr::value(roles_text(&w.roles)))
        .col_expr(workers::Column::LastHeartbeat, Expr::value(ms(at)))
        .col_expr(workers::Column::ExpiresAt, Expr::value(until(at, lease)))
        .col_expr(
            workers::Column::MaxServices,
            Expr::value(w.max_services.map(|n| i64::try_from(n).unwrap_or(i64::MAX))),
        )
        .col_expr(workers::Column::Labels, Expr::value(labels_text(&w.labels)))
        .filter(workers::Column::Name.eq(w.name.as_str()))
        .filter(workers::Column::Host.eq(w.host.as_str()))
        .filter(workers::Column::Pid.eq(i64::from(w.pid)))
        .exec(conn)
        .await
        .map_err(db_err)?
        .rows_affected;
    if kept == 0 {
        match workers::Entity::find_by_id(w.name.clone())
            .one(conn)
            .await
            .map_err(db_err)?
        {
            Some(other) => {
                return Err(StoreError::WorkerNameTaken {
                    name: w.name.clone(),
                    host: other.host,
                    pid: u32::try_from(other.pid).unwrap_or(0),
                });
            }
            // The row went (deregistered, or the table was cleaned): back in.
            None => {
                workers::Entity::insert(row(w, at, lease))
                    .on_conflict(
                        OnConflict::column(workers::Column::Name)
                            .do_nothing()
                            .to_owned(),
                    )
                    .exec_without_returning(conn)
                    .await
                    .map_err(db_err)?;
            }
        }
    }
    extend_leases(conn, &w.name, at, lease).await
}

pub(crate) async fn extend_leases<C: ConnectionTrait>(
    conn: &C,
    worker: &str,
    at: DateTime<Utc>,
    lease: Duration,
) -> Result<u64, StoreError> {
    // The items it holds, locked in id order (the order every other writer of
    // items locks them in), then their leases in one statement.
    let mut q = job_items::Entity::find()
        .select_only()
        .column(job_items::Column::Id)
        .filter(job_items::Column::State.eq(ItemState::Running.as_str()))
        .filter(job_items::Column::Worker.eq(worker))
        .order_by_asc(job_items::Column::Id);
    if conn.get_database_backend() == DbBackend::Postgres {
        q = q.lock_exclusive();
    }
    let ids: Vec<i64> = q.into_tuple().all(conn).await.map_err(db_err)?;
    let mut n = 0;
    for chunk in ids.chunks(10_000) {
        n += job_items::Entity::update_many()
            .col_expr(job_items::Column::LeaseUntil, Expr::value(until(at, lease)))
            .filter(job_items::Column::Id.is_in(chunk.iter().copied()))
            .exec(conn)
            .await
            .map_err(db_err)?
            .rows_affected;
    }
    Ok(n)
}

pub(crate) async fn deregister<C: ConnectionTrait>(
    conn: &C,
    name: &str,
) -> Result<bool, StoreError> {
    // The items it leaves running (stopped after its grace period) are for the
    // next worker at once: their leases end now (their late results, if any,
    // are still refused by the claim token).
    job_items::Entity::update_many()
        .col_expr(job_items::Column::LeaseUntil, Expr::value(0i64))
        .filter(job_items::Column::State.eq(ItemState::Running.as_str()))
        .filter(job_items::Column::Worker.eq(name))
        .exec(conn)
        .await
        .map_err(db_err)?;
    Ok(workers::Entity::delete_by_id(name.to_owned())
        .exec(conn)
        .await
        .map_err(db_err)?
        .rows_affected
        > 0)
}

pub(crate) async fn list<C: ConnectionTrait>(
    conn: &C,
    at: DateTime<Utc>,
) -> Result<Vec<WorkerView>, StoreError> {
    let rows = workers::Entity::find()
        .order_by_asc(workers::Column::Name)
        .all(conn)
        .await
        .map_err(db_err)?;
    let held: HashMap<String, i64> = job_items::Entity::find()
        .select_only()
        .column(job_items::Column::Worker)
        .column_as(job_items::Column::Id.count(), "n")
        .filter(job_items::Column::State.eq(ItemState::Running.as_str()))
        .filter(job_items::Column::Worker.is_not_null())
        .group_by(job_items::Column::Worker)
        .into_tuple::<(Option<String>, i64)>()
        .all(conn)
        .await
        .map_err(db_err)?
        .into_iter()
        .filter_map(|(w, n)| w.map(|w| (w, n)))
        .collect();
    let services = super::placement::held(conn).await?;
    rows.into_iter()
        .map(|m| {
            let roles = m
                .roles
                .split(',')
                .filter(|r| !r.is_empty())
                .map(|r| r.parse::<WorkerRole>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| StoreError::Backend(format!("corrupt row: {e}")))?;
            Ok(WorkerView {
                items_in_flight: held
                    .get(&m.name)
                    .map_or(0, |n| u64::try_from(*n).unwrap_or(0)),
                services_held: services.get(&m.name).copied().unwrap_or(0),
                max_services: m.max_services.map(|n| u64::try_from(n).unwrap_or(0)),
                labels: m
                    .labels
                    .as_deref()
                    .unwrap_or_default()
                    .split(',')
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect(),
                alive: m.expires_at > ms(at),
                pid: u32::try_from(m.pid).unwrap_or(0),
                name: m.name,
                host: m.host,
                version: m.version,
                roles,
                started_at: from_ms(m.started_at),
                last_heartbeat: from_ms(m.last_heartbeat),
                expires_at: from_ms(m.expires_at),
            })
        })
        .collect()
}
