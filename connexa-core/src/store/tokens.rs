//! API tokens ([`TokenStore`]): rows of `api_tokens`, keyed by the token's hash.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder,
};

use super::convert::{from_ms, ms};
use super::entity::api_tokens;
use super::{SqlStore, db_err};
use crate::ports::{ApiToken, Role, StoreError, TokenId, TokenScope, TokenStore};

/// A row as a token. An unknown role or scope (written by a newer version)
/// grants the least: `viewer`, scope `metrics`.
fn token(m: api_tokens::Model) -> ApiToken {
    let role = m.role.parse().unwrap_or_else(|_| {
        tracing::warn!(token = m.id, role = %m.role, "unknown token role, treated as viewer");
        Role::Viewer
    });
    let scope = match m.scope.as_str() {
        "full" => TokenScope::Full,
        _ => TokenScope::Metrics,
    };
    ApiToken {
        role,
        scope,
        id: TokenId(m.id),
        name: m.name,
        created_at: from_ms(m.created_at),
        last_used_at: m.last_used_at.map(from_ms),
        expires_at: m.expires_at.map(from_ms),
        revoked: m.revoked,
    }
}

#[async_trait]
impl TokenStore for SqlStore {
    async fn create_token(
        &self,
        name: &str,
        token_hash: &str,
        role: Role,
        scope: TokenScope,
        expires_at: Option<DateTime<Utc>>,
        at: DateTime<Utc>,
    ) -> Result<ApiToken, StoreError> {
        let txn = self.begin_write().await?;
        let r = api_tokens::ActiveModel {
            name: Set(name.to_owned()),
            token_hash: Set(token_hash.to_owned()),
            user_id: Set(None),
            created_at: Set(ms(at)),
            last_used_at: Set(None),
            expires_at: Set(expires_at.map(ms)),
            revoked: Set(false),
            role: Set(role.as_str().to_owned()),
            scope: Set(scope.as_str().to_owned()),
            ..Default::default()
        }
        .insert(&txn.txn)
        .await
        .map_err(db_err)
        .map(token);
        let r = match r {
            Ok(t) => self
                .audit(
                    &txn.txn,
                    "token_create",
                    Some(format!(
                        "token {} ({}, {})",
                        t.name,
                        t.role.as_str(),
                        t.scope.as_str()
                    )),
                    Some(1),
                )
                .await
                .map(|()| t),
            Err(e) => Err(e),
        };
        txn.finish(r).await
    }

    async fn find_token(
        &self,
        token_hash: &str,
        at: DateTime<Utc>,
    ) -> Result<Option<ApiToken>, StoreError> {
        let row = api_tokens::Entity::find()
            .filter(api_tokens::Column::TokenHash.eq(token_hash))
            .one(&self.db)
            .await
            .map_err(db_err)?;
        Ok(row
            .map(token)
            .filter(|t| !t.revoked && t.expires_at.is_none_or(|e| e > at)))
    }

    async fn touch_token(&self, id: TokenId, at: DateTime<Utc>) -> Result<(), StoreError> {
        let txn = self.begin_write().await?;
        let r = api_tokens::Entity::update_many()
            .col_expr(api_tokens::Column::LastUsedAt, Expr::value(ms(at)))
            .filter(api_tokens::Column::Id.eq(id.0))
            .exec(&txn.txn)
            .await
            .map(|_| ())
            .map_err(db_err);
        txn.finish(r).await
    }

    async fn tokens(&self) -> Result<Vec<ApiToken>, StoreError> {
        Ok(api_tokens::Entity::find()
            .order_by_asc(api_tokens::Column::Id)
            .all(&self.db)
            .await
            .map_err(db_err)?
            .into_iter()
            .map(token)
            .collect())
    }

    async fn revoke_token(&self, id: TokenId) -> Result<bool, StoreError> {
        let txn = self.begin_write().await?;
        let r = api_tokens::Entity::update_many()
            .col_expr(api_tokens::Column::Revoked, Expr::value(true))
            .filter(api_tokens::Column::Id.eq(id.0))
            .filter(api_tokens::Column::Revoked.eq(false))
            .exec(&txn.txn)
            .await
            .map(|r| r.rows_affected > 0)
            .map_err(db_err);
        let r = match r {
            Ok(true) => self
                .audit(
                    &txn.txn,
                    "token_revoke",
                    Some(format!("token id {}", id.0)),
                    Some(1),
                )
                .await
                .map(|()| true),
            other => other,
        };
        txn.finish(r).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tokens_are_found_by_hash_until_revoked_or_expired() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let store = SqlStore::connect(&url).await.unwrap();
        let now = Utc::now();
        let a = store
            .create_token("admin", "h1", Role::Admin, TokenScope::Full, None, now)
            .await
            .unwrap();
        let b = store
            .create_token(
                "old",
                "h2",
                Role::Viewer,
                TokenScope::Full,
                Some(now - chrono::Duration::seconds(1)),
                now,
            )
            .await
            .unwrap();
        assert_eq!(
            store.find_token("h1", now).await.unwrap().map(|t| t.id),
            Some(a.id)
        );
        assert_eq!(store.find_token("h2", now).await.unwrap(), None, "expired");
        assert_eq!(store.find_token("nope", now).await.unwrap(), None);
        // The same hash twice is refused (unique index).
        assert!(
            store
                .create_token("dup", "h1", Role::Viewer, TokenScope::Full, None, now)
                .await
                .is_err()
        );
        store.touch_token(a.id, now).await.unwrap();
        assert!(store.tokens().await.unwrap()[0].last_used_at.is_some());
        assert!(store.revoke_token(a.id).await.unwrap());
        assert!(!store.revoke_token(a.id).await.unwrap(), "already revoked");
        assert_eq!(store.find_token("h1", now).await.unwrap(), None);
        let all = store.tokens().await.unwrap();
        assert_eq!((all.len(), all[0].revoked, all[1].id), (2, true, b.id));
        assert_eq!((all[0].role, all[1].role), (Role::Admin, Role::Viewer));
    }

    #[test]
    fn roles_are_ordered_and_only_admin_sees_secrets() {
        assert!(Role::Admin.allows(Role::Operator) && Role::Operator.allows(Role::Operator));
        assert!(!Role::Viewer.allows(Role::Operator) && !Role::Operator.allows(Role::Admin));
        assert_eq!(Role::ALL.map(|r| r.sees_secrets()), [false, false, true]);
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), r);
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
        assert_eq!(" Operator ".parse::<Role>().unwrap(), Role::Operator);
        assert!("root".parse::<Role>().is_err());
    }

    #[tokio::test]
    async fn tokens_made_before_roles_stay_admin_with_full_scope() {
        use sea_orm::{ConnectionTrait, Database};
        use sea_orm_migration::MigratorTrait;
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        {
            // The schema as it was before m0006, with one token in it.
            let db = Database::connect(&url).await.unwrap();
            super::super::migration::Migrator::up(&db, Some(5))
                .await
                .unwrap();
            db.execute_unprepared(
                "INSERT INTO api_tokens (name, token_hash, created_at, revoked) \
                 VALUES ('old', 'h-old', 0, false)",
            )
            .await
            .unwrap();
            db.close().await.unwrap();
        }
        let store = SqlStore::connect(&url).await.unwrap();
        let t = store
            .find_token("h-old", Utc::now())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (t.name.as_str(), t.role, t.scope),
            ("old", Role::Admin, TokenScope::Full)
        );
    }
}
