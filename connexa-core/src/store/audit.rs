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
//! many rows it touched; never a password.

use sea_orm::ActiveValue::Set;
use sea_orm::{ConnectionTrait, EntityTrait, QueryOrder, QuerySelect};
use serde::Serialize;

use super::{db_err, ms};
use crate::ports::StoreError;

/// Who acts: an account, an API token or an OS user (`os:alice`), and from
/// where (a client address), if known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// The name recorded (`os:root`, `token:ci`, ...).
    pub name: String,
    /// Where the request came from, if known.
    pub source: Option<String>,
}

impl Actor {
    /// The OS user running this process: `os:<$USER>`, else `os:uid<N>`.
    pub fn os_user() -> Actor {
        let name = std::env::var("USER")
            .ok()
            .filter(|u| !u.is_empty() && !u.chars().any(char::is_control))
            .or_else(|| {
                std::fs::read_to_string("/proc/self/status")
                    .ok()
                    .and_then(|s| {
                        s.lines()
                            .find_map(|l| l.strip_prefix("Uid:"))
                            .and_then(|v| v.split_whitespace().nth(1).map(|u| format!("uid{u}")))
                    })
            })
            .unwrap_or_else(|| "unknown".to_owned());
        Actor {
            name: format!("os:{name}"),
            source: None,
        }
    }
}

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

/// The newest `limit` rows, newest first.
pub(crate) async fn recent<C: ConnectionTrait>(
    conn: &C,
    limit: u64,
) -> Result<Vec<AuditEntry>, StoreError> {
    Ok(entity::Entity::find()
        .order_by_desc(entity::Column::Id)
        .limit(limit)
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
