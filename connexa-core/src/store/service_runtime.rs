//! Services' runtime state (`service_runtime`): the counters the process
//! running a service flushes, and restart requests. Never reads or writes
//! `nodes.status`: a service's counters or restart cannot change a verdict.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, Set};

use super::convert::{from_ms, ms};
use super::db_err;
use super::entity::service_runtime as sr;
use crate::domain::NodeId;
use crate::ports::{ServiceCounters, ServiceRuntime, StoreError};

fn db_int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn count(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn runtime(m: sr::Model) -> ServiceRuntime {
    let counters = m.updated_at.map(|_| ServiceCounters {
        connections: count(m.connections),
        connections_total: count(m.connections_total),
        bytes_up: count(m.bytes_up),
        bytes_down: count(m.bytes_down),
        last_error: m.last_error.clone(),
        started_at: m.started_at.map(from_ms),
    });
    ServiceRuntime {
        node: NodeId(m.node_id),
        counters,
        updated_at: m.updated_at.map(from_ms),
        restart_requested_at: m.restart_requested_at.map(from_ms),
    }
}

pub(crate) async fn read<C: ConnectionTrait>(
    conn: &C,
    nodes: &[NodeId],
) -> Result<Vec<ServiceRuntime>, StoreError> {
    let mut q = sr::Entity::find().order_by_asc(sr::Column::NodeId);
    if !nodes.is_empty() {
        q = q.filter(sr::Column::NodeId.is_in(nodes.iter().map(|n| n.0)));
    }
    Ok(q.all(conn)
        .await
        .map_err(db_err)?
        .into_iter()
        .map(runtime)
        .collect())
}

pub(crate) async fn put_counters<C: ConnectionTrait>(
    conn: &C,
    counters: Vec<(NodeId, ServiceCounters)>,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    // One row per node, the last given winning: PostgreSQL refuses an upsert
    // that touches a row twice.
    let mut last: std::collections::BTreeMap<i64, ServiceCounters> = Default::default();
    for (node, c) in counters {
        last.insert(node.0, c);
    }
    let counters: Vec<(NodeId, ServiceCounters)> =
        last.into_iter().map(|(id, c)| (NodeId(id), c)).collect();
    for chunk in counters.chunks(200) {
        let rows = chunk.iter().map(|(node, c)| sr::ActiveModel {
            node_id: Set(node.0),
            connections: Set(db_int(c.connections)),
            connections_total: Set(db_int(c.connections_total)),
            bytes_up: Set(db_int(c.bytes_up)),
            bytes_down: Set(db_int(c.bytes_down)),
            last_error: Set(c.last_error.clone()),
            started_at: Set(c.started_at.map(ms)),
            updated_at: Set(Some(ms(at))),
            restart_requested_at: Set(None),
        });
        sr::Entity::insert_many(rows)
            .on_conflict(
                OnConflict::column(sr::Column::NodeId)
                    .update_columns([
                        sr::Column::Connections,
                        sr::Column::ConnectionsTotal,
                        sr::Column::BytesUp,
                        sr::Column::BytesDown,
                        sr::Column::LastError,
                        sr::Column::StartedAt,
                        sr::Column::UpdatedAt,
                    ])
                    .to_owned(),
            )
            .exec_without_returning(conn)
            .await
            .map_err(db_err)?;
    }
    Ok(())
}

pub(crate) async fn request_restart<C: ConnectionTrait>(
    conn: &C,
    nodes: &[NodeId],
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    let mut nodes = nodes.to_vec();
    nodes.sort_unstable();
    nodes.dedup();
    for chunk in nodes.chunks(200) {
        let rows = chunk.iter().map(|node| sr::ActiveModel {
            node_id: Set(node.0),
            connections: Set(0),
            connections_total: Set(0),
            bytes_up: Set(0),
            bytes_down: Set(0),
            last_error: Set(None),
            started_at: Set(None),
            updated_at: Set(None),
            restart_requested_at: Set(Some(ms(at))),
        });
        sr::Entity::insert_many(rows)
            .on_conflict(
                OnConflict::column(sr::Column::NodeId)
                    .update_column(sr::Column::RestartRequestedAt)
                    .to_owned(),
            )
            .exec_without_returning(conn)
            .await
            .map_err(db_err)?;
    }
    Ok(())
}

pub(crate) async fn finish_restart<C: ConnectionTrait>(
    conn: &C,
    node: NodeId,
    requested_at: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let r = sr::Entity::update_many()
        .col_expr(
            sr::Column::RestartRequestedAt,
            Expr::value(Option::<i64>::None),
        )
        .filter(sr::Column::NodeId.eq(node.0))
        .filter(sr::Column::RestartRequestedAt.eq(ms(requested_at)))
        .exec(conn)
        .await
        .map_err(db_err)?;
    Ok(r.rows_affected > 0)
}

pub(crate) async fn forget<C: ConnectionTrait>(
    conn: &C,
    nodes: &[NodeId],
) -> Result<(), StoreError> {
    for chunk in nodes.chunks(500) {
        sr::Entity::delete_many()
            .filter(sr::Column::NodeId.is_in(chunk.iter().map(|n| n.0)))
            .exec(conn)
            .await
            .map_err(db_err)?;
    }
    Ok(())
}
