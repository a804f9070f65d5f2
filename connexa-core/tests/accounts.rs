//! Operator accounts and sessions (`AccountStore`) on SQLite and PostgreSQL.

mod common;

use std::time::Duration;

use chrono::Utc;
use connexa_core::ports::{AccountStore, Role, StoreError};
use connexa_core::store::SqlStore;
use connexa_core::store::accounts::{
    AccountError, PasswordError, SignIn, authenticate, change_password, create_account,
};
use connexa_core::store::audit::Actor;

const HOUR: Duration = Duration::from_secs(3600);

async fn accounts_and_sessions(store: SqlStore) {
    let store = store.acting_as(Actor {
        name: "os:test".into(),
        source: None,
    });
    let a = create_account(&store, "alice", "alice password 1", Role::Operator)
        .await
        .unwrap();
    assert_eq!(
        (a.name.as_str(), a.role, a.disabled),
        ("alice", Role::Operator, false)
    );
    assert!(matches!(
        create_account(&store, "alice", "another password", Role::Admin).await,
        Err(AccountError::Exists(_))
    ));
    assert!(matches!(
        create_account(&store, "bob", "short", Role::Admin).await,
        Err(AccountError::Rules(PasswordError::TooShort))
    ));
    assert!(matches!(
        create_account(&store, "bad name", "long enough password", Role::Admin).await,
        Err(AccountError::Rules(PasswordError::BadName))
    ));
    // The stored hash is an Argon2id PHC string, never the password.
    let (_, phc) = store.account_by_name("alice").await.unwrap().unwrap();
    assert!(phc.starts_with("$argon2id$"), "{phc}");
    assert!(!phc.contains("alice password 1"));

    assert_eq!(
        authenticate(&store, "alice", "alice password 1")
            .await
            .unwrap(),
        SignIn::Accepted(a.clone())
    );
    assert_eq!(
        authenticate(&store, "alice", "alice password 2")
            .await
            .unwrap(),
        SignIn::Refused
    );
    assert_eq!(
        authenticate(&store, "nobody", "alice password 1")
            .await
            .unwrap(),
        SignIn::Refused
    );

    // Sessions: found by hash, idle and absolute expiry.
    let now = Utc::now();
    let s1 = store
        .create_session(
            &a,
            "s1",
            Some("127.0.0.1".into()),
            now,
            now + chrono::Duration::hours(12),
        )
        .await
        .unwrap();
    store
        .create_session(&a, "s2", None, now, now + chrono::Duration::hours(12))
        .await
        .unwrap();
    let (found, acc) = store.find_session("s1", now, HOUR).await.unwrap().unwrap();
    assert_eq!(
        (found.id, acc.id, found.source.as_deref()),
        (s1.id, a.id, Some("127.0.0.1"))
    );
    assert!(
        store
            .find_session("nope", now, HOUR)
            .await
            .unwrap()
            .is_none()
    );
    let later = now + chrono::Duration::minutes(61);
    assert!(
        store
            .find_session("s1", later, HOUR)
            .await
            .unwrap()
            .is_none(),
        "idle for over an hour"
    );
    store
        .touch_session(s1.id, now + chrono::Duration::minutes(30))
        .await
        .unwrap();
    assert!(
        store
            .find_session("s1", later, HOUR)
            .await
            .unwrap()
            .is_some(),
        "seen 31 minutes ago"
    );
    let past_end = now + chrono::Duration::hours(12);
    store.touch_session(s1.id, past_end).await.unwrap();
    assert!(
        store
            .find_session("s1", past_end, HOUR)
            .await
            .unwrap()
            .is_none(),
        "absolute expiry whatever the use"
    );

    // A password change ends the other sessions, not the one that asked.
    assert!(
        change_password(&store, a.id, "alice password 2", Some("s1"))
            .await
            .unwrap()
    );
    assert!(store.find_session("s1", now, HOUR).await.unwrap().is_some());
    assert!(store.find_session("s2", now, HOUR).await.unwrap().is_none());
    assert_eq!(
        authenticate(&store, "alice", "alice password 1")
            .await
            .unwrap(),
        SignIn::Refused
    );
    assert!(matches!(
        authenticate(&store, "alice", "alice password 2")
            .await
            .unwrap(),
        SignIn::Accepted(_)
    ));
    assert!(store.end_session("s1").await.unwrap());
    assert!(!store.end_session("s1").await.unwrap());
    assert!(store.find_session("s1", now, HOUR).await.unwrap().is_none());

    // A sign-in that verified the old password cannot open a session once
    // the password changed (it raced the change and lost): nothing opened.
    assert!(matches!(
        store
            .create_session(&a, "stale", None, now, now + chrono::Duration::hours(1))
            .await,
        Err(StoreError::AccountChanged)
    ));
    assert!(
        store
            .find_session("stale", now, HOUR)
            .await
            .unwrap()
            .is_none()
    );
    let SignIn::Accepted(a) = authenticate(&store, "alice", "alice password 2")
        .await
        .unwrap()
    else {
        panic!("the new password signs in")
    };

    // Disabling ends every session; the right password then says "disabled".
    store
        .create_session(&a, "s3", None, now, now + chrono::Duration::hours(1))
        .await
        .unwrap();
    assert!(store.disable_account(a.id).await.unwrap());
    assert!(
        !store.disable_account(a.id).await.unwrap(),
        "already disabled"
    );
    assert!(store.sessions(a.id).await.unwrap().is_empty());
    assert!(store.find_session("s3", now, HOUR).await.unwrap().is_none());
    assert!(matches!(
        authenticate(&store, "alice", "alice password 2")
            .await
            .unwrap(),
        SignIn::Disabled(_)
    ));
    let list = store.accounts().await.unwrap();
    assert_eq!(list.len(), 1);
    assert!(list[0].disabled && list[0].password_changed_at.is_some());
    // A sign-in racing the disable opens nothing either.
    assert!(matches!(
        store
            .create_session(&a, "s4", None, now, now + chrono::Duration::hours(1))
            .await,
        Err(StoreError::AccountChanged)
    ));
    assert!(store.sessions(a.id).await.unwrap().is_empty());

    // Enabling lets it sign in again (once; a second enable changes nothing).
    assert!(store.enable_account(a.id).await.unwrap());
    assert!(
        !store.enable_account(a.id).await.unwrap(),
        "enabled already"
    );
    let SignIn::Accepted(a) = authenticate(&store, "alice", "alice password 2")
        .await
        .unwrap()
    else {
        panic!("enabled again")
    };
    store
        .create_session(&a, "s5", None, now, now + chrono::Duration::hours(1))
        .await
        .unwrap();

    // One audit row per change, none with a secret.
    let log = store.audit_log(100).await.unwrap();
    let actions: Vec<&str> = log.iter().rev().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "account_create",
            "account_passwd",
            "account_disable",
            "account_enable"
        ]
    );
    assert!(log.iter().all(|e| e.actor == "os:test"));
    let text = format!("{log:?}");
    assert!(
        !text.contains("password 1") && !text.contains("password 2") && !text.contains("argon2")
    );
}

#[tokio::test]
async fn accounts_and_sessions_on_sqlite() {
    let db = common::sqlite().await;
    accounts_and_sessions(db.store.clone()).await;
}

#[tokio::test]
async fn accounts_and_sessions_on_postgres() {
    let db = common::postgres().await;
    accounts_and_sessions(db.store.clone()).await;
}

/// A database made before m0008 (with the unused `users` table) migrates.
#[tokio::test]
async fn the_users_table_of_older_databases_is_reshaped() {
    use sea_orm::{ConnectionTrait, Database};
    use sea_orm_migration::MigratorTrait;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
    {
        let db = Database::connect(&url).await.unwrap();
        connexa_core::store::migration::Migrator::up(&db, Some(7))
            .await
            .unwrap();
        db.execute_unprepared(
            "INSERT INTO users (name, password_hash, created_at) VALUES ('old', 'x', 0)",
        )
        .await
        .unwrap();
        db.close().await.unwrap();
    }
    let store = SqlStore::connect(&url).await.unwrap();
    let (old, _) = store.account_by_name("old").await.unwrap().unwrap();
    assert_eq!(
        (old.role, old.disabled),
        (Role::Viewer, false),
        "least privilege"
    );
    // Its hash is no PHC string: nothing signs in with it.
    assert_eq!(
        authenticate(&store, "old", "x").await.unwrap(),
        SignIn::Refused
    );
}
