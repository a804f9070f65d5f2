//! The audit trail: who changed what, when, from where.
//!
//! A store made with [`SqlStore::acting_as`](super::SqlStore::acting_as)
//! appends one `audit` row to every operator action it writes — imports and
//! nodes added, edits, deletes, wanted and restarted services, jobs created
//! and cancelled, secrets rotated — in the same transaction as the change, so
//! a change that rolls back leaves no row and a committed one always has its
//! row. The engine's own work (claims, results, service health) runs on a
//! store without an actor and is recorded in the status history instead.
//! Rows name the action, the target (node ids, a filter or a job) and how
//! many rows it touched; never a password. A request that changes nothing
//! (duplicates only, a service already wanted) leaves no row; one that does
//! two things leaves two (starting services over the API wants them, then
//! creates the job that starts them: `service_want` and `job_create`).
//!
//! A server that handles requests for many callers on one store runs each
//! request inside [`scope`]: every store handle then acts for that caller
//! while the request's own task runs (tasks it spawns do not inherit it;
//! see [`carry`] to carry it over on purpose).

use sea_orm::ActiveValue::Set;
use sea_orm::{ConnectionTrait, EntityTrait, QueryOrder, QuerySelect};
use serde::Serialize;

use super::{db_err, ms};
use crate::ports::StoreError;
pub use crate::ports::acting::{Actor, carry, current, scope};

/// One row of the audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditEntry {
    /// Row id (increasing).
    pub id: i64,
    /// When.
    pub at: chrono::DateTime<chrono::Utc>,
    /// Who ([`Actor::name`]).
    pub actor: String,
    /// From where, if known.
    pub source: Option<String>,
    /// What: `import`, `import_replace`, `node_edit`, `delete`,
    /// `service_want`, `service_unwant`, `service_restart`, `job_create`,
    /// `job_cancel`, `secrets_rotate`, `token_create`, `token_revoke`,
    /// `account_create`, `account_passwd`, `account_disable`.
    pub action: String,
    /// On what: node ids, a filter (JSON) or a job id.
    pub target: Option<String>,
    /// How many rows it touched.
    pub count: Option<i64>,
}

/// The `audit` table.
pub(crate) mod entity {
    use sea_orm::entity::prelude::*;

    /// A row of `audit`.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "audit")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub at: i64,
        pub actor: String,
        pub source: Option<String>,
        pub action: String,
        pub target: Option<String>,
        pub count: Option<i64>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Longest target text stored (a filter of 100,000 ids is summarised).
const MAX_TARGET: usize = 500;

/// A filter as an audit target: its JSON, shortened.
pub(crate) fn filter_target(f: &crate::domain::NodeFilter) -> String {
    let text = serde_json::to_string(f).unwrap_or_default();
    shorten(text)
}

fn shorten(text: String) -> String {
    if text.len() <= MAX_TARGET {
        return text;
    }
    let mut end = MAX_TARGET;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len())
}

/// Appends a row in the caller's transaction.
pub(crate) async fn record<C: ConnectionTrait>(
    conn: &C,
    actor: &Actor,
    action: &str,
    target: Option<String>,
    count: Option<u64>,
) -> Result<(), StoreError> {
    entity::Entity::insert(entity::ActiveModel {
        at: Set(ms(chrono::Utc::now())),
        actor: Set(actor.name.clone()),
        source: Set(actor.source.clone()),
        action: Set(action.to_owned()),
        target: Set(target.map(shorten)),
        count: Set(count.map(|c| i64::try_from(c).unwrap_or(i64::MAX))),
        ..Default::default()
    })
    .exec_without_returning(conn)
    .await
    .map_err(db_err)?;
    Ok(())
}

/// Which audit rows to read: newest first, `limit` of them, older than
/// `before` (a row id, for paging), of one actor and/or one action.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
pub struct AuditQuery {
    /// At most this many rows (default 100, at most 10,000).
    pub limit: Option<u64>,
    /// Only rows with an id below this (the last id of the previous page).
    pub before: Option<i64>,
    /// Only rows of this actor (exact, e.g. `token:ci`, `os:root`).
    pub actor: Option<String>,
    /// Only rows of this action (exact, e.g. `delete`).
    pub action: Option<String>,
}

/// Why an [`AuditQuery`] is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditQueryError {
    /// `limit` is 0 or above the maximum.
    #[error("limit must be 1 to {max}", max = AuditQuery::MAX_LIMIT)]
    Limit,
    /// `actor` or `action` is empty, longer than 200 characters or holds control characters.
    #[error("{0} must be 1 to 200 characters without control characters")]
    Text(&'static str),
}

impl AuditQuery {
    /// The most rows one query returns.
    pub const MAX_LIMIT: u64 = 10_000;
    /// Rows returned without a `limit`.
    pub const DEFAULT_LIMIT: u64 = 100;

    /// Checks the limits and the text fields.
    ///
    /// # Errors
    /// [`AuditQueryError`] naming the field.
    pub fn check(&self) -> Result<(), AuditQueryError> {
        if self.limit.is_some_and(|l| l == 0 || l > Self::MAX_LIMIT) {
            return Err(AuditQueryError::Limit);
        }
        for (name, v) in [("actor", &self.actor), ("action", &self.action)] {
            if let Some(v) = v
                && (v.is_empty() || v.chars().count() > 200 || v.chars().any(char::is_control))
            {
                return Err(AuditQueryError::Text(name));
            }
        }
        Ok(())
    }
}

/// The rows `q` selects, newest first (`q` checked by the caller).
pub(crate) async fn query<C: ConnectionTrait>(
    conn: &C,
    q: &AuditQuery,
) -> Result<Vec<AuditEntry>, StoreError> {
    use sea_orm::ColumnTrait;
    use sea_orm::QueryFilter;
    let mut find = entity::Entity::find().order_by_desc(entity::Column::Id);
    if let Some(b) = q.before {
        find = find.filter(entity::Column::Id.lt(b));
    }
    if let Some(a) = &q.actor {
        find = find.filter(entity::Column::Actor.eq(a.as_str()));
    }
    if let Some(a) = &q.action {
        find = find.filter(entity::Column::Action.eq(a.as_str()));
    }
    Ok(find
        .limit(q.limit.unwrap_or(AuditQuery::DEFAULT_LIMIT))
        .all(conn)
        .await
        .map_err(db_err)?
        .into_iter()
        .map(|m| AuditEntry {
            id: m.id,
            at: super::convert::from_ms(m.at),
            actor: m.actor,
            source: m.source,
            action: m.action,
            target: m.target,
            count: m.count,
        })
        .collect())
}
