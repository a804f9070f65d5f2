//! The only code that writes a node's `status` column.
//!
//! [`write_events`] runs inside a caller's transaction: it locks the affected rows
//! (`SELECT ... ORDER BY id FOR UPDATE` on Postgres; SQLite transactions are
//! `BEGIN IMMEDIATE`, so the writer already holds the database lock), computes
//! every transition in memory with [`domain::transition`](crate::domain::transition),
//! writes all changed rows with one upsert per chunk and appends the history rows.
//! A single `apply` is a batch of one; group commit is a batch of many.

use std::collections::HashMap;

use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, DbBackend, DbErr,
    EntityTrait, IntoActiveModel, QueryFilter, QueryOrder, QuerySelect,
};

use super::convert::{self, ms};
use super::entity::{nodes, status_history};
use crate::domain::{Event, Level, Measurements, Status, transition};
use crate::ports::{Applied, ApplyRequest, StoreError};

/// Rows per upsert statement (29 columns: well under SQLite's and Postgres' parameter limits).
const UPSERT_CHUNK: usize = 500;
/// Ids per `IN (...)` list.
const SELECT_CHUNK: usize = 5_000;

/// Applies `requests` in order inside the caller's transaction. The outer error is
/// a database failure (the caller must roll back); the inner results are per request.
pub(crate) async fn write_events<C: ConnectionTrait>(
    conn: &C,
    requests: &[ApplyRequest],
) -> Result<Vec<Result<Applied, StoreError>>, DbErr> {
    let mut ids: Vec<i64> = requests.iter().map(|r| r.node.0).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut rows: HashMap<i64, nodes::Model> = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(SELECT_CHUNK) {
        let mut q = nodes::Entity::find()
            .filter(nodes::Column::Id.is_in(chunk.iter().copied()))
            .order_by_asc(nodes::Column::Id);
        if conn.get_database_backend() == DbBackend::Postgres {
            q = q.lock_exclusive();
        }
        for m in q.all(conn).await? {
            rows.insert(m.id, m);
        }
    }

    let mut results = Vec::with_capacity(requests.len());
    let mut dirty: Vec<i64> = Vec::new();
    let mut history: Vec<status_history::ActiveModel> = Vec::new();
    for req in requests {
        let Some(row) = rows.get_mut(&req.node.0) else {
            results.push(Err(StoreError::NotFound(req.node)));
            continue;
        };
        let from = match convert::status(&row.status) {
            Ok(s) => s,
            Err(e) => {
                results.push(Err(e));
                continue;
            }
        };
        let to = match transition(from, &req.event) {
            Ok(to) => to,
            Err(refused) => {
                results.push(Err(StoreError::Refused(refused)));
                continue;
            }
        };
        let at = ms(req.ctx.at);
        record_evidence(row, &req.event, to, at);
        if !dirty.contains(&row.id) {
            dirty.push(row.id);
        }
        if worth_a_history_row(&req.event, from, to) {
            history.push(history_row(row.id, from, to, req, at));
        }
        results.push(Ok(Applied {
            node: req.node,
            from,
            to,
        }));
    }

    let changed: Vec<nodes::ActiveModel> = dirty
        .iter()
        .filter_map(|id| rows.remove(id))
        .map(|m| m.into_active_model().reset_all())
        .collect();
    for chunk in changed.chunks(UPSERT_CHUNK) {
        nodes::Entity::insert_many(chunk.to_vec())
            .on_conflict(
                OnConflict::column(nodes::Column::Id)
                    .update_columns(EVIDENCE_COLUMNS)
                    .to_owned(),
            )
            .exec_without_returning(conn)
            .await?;
    }
    for chunk in history.chunks(UPSERT_CHUNK) {
        status_history::Entity::insert_many(chunk.to_vec())
            .exec_without_returning(conn)
            .await?;
    }
    Ok(results)
}

/// The columns an event may change. Identity, metadata and `service_wanted` are absent.
const EVIDENCE_COLUMNS: [nodes::Column; 17] = [
    nodes::Column::Status,
    nodes::Column::LastCheckedAt,
    nodes::Column::LastError,
    nodes::Column::ConsecutiveFailures,
    nodes::Column::PingMs,
    nodes::Column::SpeedDownMbps,
    nodes::Column::SpeedUpMbps,
    nodes::Column::ExitIp,
    nodes::Column::PptpVersion,
    nodes::Column::PptpHostname,
    nodes::Column::PptpVendor,
    nodes::Column::PptpFirmware,
    nodes::Column::SocksHost,
    nodes::Column::SocksPort,
    nodes::Column::SocksUser,
    nodes::Column::SocksPassword,
    nodes::Column::UpdatedAt,
];

/// Health checks that change nothing are not worth a row each (a monitor runs
/// every few seconds); every other applied event is recorded.
fn worth_a_history_row(event: &Event, from: Status, to: Status) -> bool {
    !matches!(event, Event::HealthOk | Event::HealthFailed(_)) || from != to
}

fn record_evidence(row: &mut nodes::Model, event: &Event, to: Status, at: i64) {
    row.status = to.as_str().to_owned();
    row.updated_at = at;
    let fail = |row: &mut nodes::Model, why: String| {
        row.last_error = Some(why);
        row.consecutive_failures = row.consecutive_failures.saturating_add(1);
    };
    let succeed = |row: &mut nodes::Model| {
        row.last_error = None;
        row.consecutive_failures = 0;
    };
    match event {
        Event::Tested(outcome) => {
            row.last_checked_at = Some(at);
            match &outcome.failure {
                Some(f) => fail(row, f.to_string()),
                None => succeed(row),
            }
            record_measurements(row, &outcome.measurements);
        }
        // Not evidence: `last_error` and `consecutive_failures` describe the
        // node and stay as they were (the reason is in the history row and the
        // job item). What was proven on the way is recorded like a test's.
        Event::Inconclusive {
            proven,
            measurements,
            ..
        } => {
            if *proven > Level::None {
                row.last_checked_at = Some(at);
            }
            record_measurements(row, measurements);
        }
        Event::ServiceStarted(ep) => {
            succeed(row);
            row.socks_host = Some(ep.host.clone());
            row.socks_port = Some(i32::from(ep.port));
            row.socks_user = Some(ep.username.clone());
            row.socks_password = Some(ep.password.expose().to_owned());
        }
        Event::ServiceStartFailed(why) | Event::HealthFailed(why) => fail(row, why.clone()),
        // The endpoint is kept so that the next start reuses port and credentials.
        Event::ServiceStopped => {}
        Event::HealthOk => succeed(row),
    }
}

fn record_measurements(row: &mut nodes::Model, m: &Measurements) {
    if let Some(v) = m.ping_ms.or(m.handshake_ms) {
        row.ping_ms = Some(v);
    }
    if let Some(v) = m.speed_down_mbps {
        row.speed_down_mbps = Some(v);
    }
    if let Some(v) = m.speed_up_mbps {
        row.speed_up_mbps = Some(v);
    }
    if let Some(ip) = m.exit_ip {
        row.exit_ip = Some(ip.to_string());
    }
    if let Some(id) = &m.pptp {
        row.pptp_version = Some(i32::from(id.protocol_version));
        row.pptp_hostname = Some(id.hostname.clone());
        row.pptp_vendor = Some(id.vendor.clone());
        row.pptp_firmware = Some(i32::from(id.firmware));
    }
}

fn history_row(
    node: i64,
    from: Status,
    to: Status,
    req: &ApplyRequest,
    at: i64,
) -> status_history::ActiveModel {
    let (reached, failure, detail) = match &req.event {
        Event::Tested(o) => (
            Some(i16::from(o.reached.as_u8())),
            o.failure
                .as_ref()
                .and_then(|f| serde_json::to_string(f).ok()),
            o.failure.as_ref().map(|f| f.to_string()),
        ),
        Event::ServiceStartFailed(why) | Event::HealthFailed(why) => {
            (None, None, Some(why.clone()))
        }
        Event::ServiceStarted(ep) => (None, None, Some(format!("{}:{}", ep.host, ep.port))),
        Event::ServiceStopped | Event::HealthOk => (None, None, None),
        Event::Inconclusive { reason, proven, .. } => {
            (Some(i16::from(proven.as_u8())), None, Some(reason.clone()))
        }
    };
    status_history::ActiveModel {
        node_id: Set(node),
        from_status: Set(from.as_str().to_owned()),
        to_status: Set(Some(to.as_str().to_owned())),
        event: Set(req.event.kind().as_str().to_owned()),
        reached: Set(reached),
        failure: Set(failure),
        detail: Set(detail),
        job_id: Set(req.ctx.job.map(|j| j.0)),
        at: Set(at),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    /// The other store sources, which must never write the status column.
    const OTHERS: [(&str, &str); 5] = [
        ("mod.rs", include_str!("mod.rs")),
        ("jobs.rs", include_str!("jobs.rs")),
        ("query.rs", include_str!("query.rs")),
        ("convert.rs", include_str!("convert.rs")),
        ("migration.rs", include_str!("migration.rs")),
    ];

    #[test]
    fn only_apply_writes_the_status_column() {
        let writes = [
            "col_expr(nodes::Column::Status",
            "col_expr(Column::Status",
            "status: Set(",
            ".status = ",
            "update_columns([nodes::Column::Status",
        ];
        for (file, src) in OTHERS {
            for line in src.lines().map(str::trim_start) {
                for w in writes {
                    let hit = if w.starts_with('.')
                        || w.starts_with("col_")
                        || w.starts_with("update_")
                    {
                        line.contains(w)
                    } else {
                        line.starts_with(w)
                    };
                    assert!(
                        !hit,
                        "store/{file} writes the status column ({line:?}); only apply.rs may"
                    );
                }
            }
        }
        // And this file does write it, through the evidence upsert.
        assert!(
            super::EVIDENCE_COLUMNS
                .iter()
                .any(|c| matches!(c, super::nodes::Column::Status))
        );
    }
}
