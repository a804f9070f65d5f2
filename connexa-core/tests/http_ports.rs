//! The store methods connexa-http relies on, on both backends: API tokens, and
//! `items_since` under concurrent committers (the event stream's resume cursor
//! must never miss nor repeat a result).

mod common;

use std::collections::HashSet;
use std::time::Duration;

use chrono::Utc;
use common::{TestDb, postgres, seed, sqlite};
use connexa_core::domain::{NodeFilter, NodeId};
use connexa_core::ports::{
    ItemCursor, ItemResult, ItemState, JobKind, JobSpec, NodeStore, Role, TokenScope, TokenStore,
};
use connexa_core::store::SqlStore;

async fn tokens(db: TestDb) {
    let s = &db.store;
    let now = Utc::now();
    let t = s
        .create_token("ci", "aa", Role::Operator, TokenScope::Full, None, now)
        .await
        .unwrap();
    assert_eq!(
        s.find_token("aa", now)
            .await
            .unwrap()
            .map(|x| (x.id, x.role, x.scope)),
        Some((t.id, Role::Operator, TokenScope::Full))
    );
    let scraper = s
        .create_token("prom", "bb", Role::Viewer, TokenScope::Metrics, None, now)
        .await
        .unwrap();
    assert_eq!(
        s.find_token("bb", now)
            .await
            .unwrap()
            .map(|x| (x.id, x.role, x.scope)),
        Some((scraper.id, Role::Viewer, TokenScope::Metrics))
    );
    assert!(
        s.create_token("again", "aa", Role::Admin, TokenScope::Full, None, now)
            .await
            .is_err()
    );
    s.touch_token(t.id, now).await.unwrap();
    assert!(s.revoke_token(t.id).await.unwrap());
    assert_eq!(s.find_token("aa", now).await.unwrap(), None);
    assert_eq!(s.tokens().await.unwrap().len(), 2);
}

#[tokio::test]
async fn tokens_sqlite() {
    tokens(sqlite().await).await;
}

#[tokio::test]
async fn tokens_postgres() {
    tokens(postgres().await).await;
}

/// Four writers (each with its own connection pool, as separate processes would
/// have on Postgres) commit results while a reader follows `items_since`.
async fn items_since_under_concurrent_commits(db: TestDb) {
    const N: usize = 600;
    seed(&db.store, N).await;
    let job = db
        .store
        .create_job(
            JobSpec {
                kind: JobKind::Light,
                filter: NodeFilter::all(),
                options: serde_json::json!({}),
                deadline: None,
            },
            Utc::now(),
        )
        .await
        .unwrap();
    let mut writers = Vec::new();
    for w in 0..4 {
        let store = SqlStore::connect(&db.url).await.unwrap();
        let job = job.id;
        writers.push(tokio::spawn(async move {
            loop {
                let claimed = store
                    .claim_items(
                        job,
                        &format!("w{w}"),
                        7,
                        Utc::now(),
                        std::time::Duration::from_secs(30),
                    )
                    .await
                    .unwrap();
                if claimed.is_empty() {
                    break;
                }
                let results = claimed
                    .iter()
                    .map(|c| ItemResult {
                        item: c.item,
                        token: c.token,
                        state: ItemState::Failed,
                        event: None,
                        enrichment: None,
                        detail: Some(format!("w{w}")),
                        at: Utc::now(),
                    })
                    .collect();
                store.finish_items(results).await.unwrap();
            }
        }));
    }
    let mut cursor = ItemCursor::default();
    let mut seen = HashSet::new();
    let mut last_seq = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while seen.len() < N {
        assert!(
            tokio::time::Instant::now() < deadline,
            "saw {} of {N}",
            seen.len()
        );
        let got = db.store.items_since(job.id, cursor, 50).await.unwrap();
        for c in &got {
            assert!(c.seq >= last_seq, "commit order");
            last_seq = c.seq;
            assert!(seen.insert(c.item.item), "{:?} twice", c.item.item);
            cursor = c.cursor();
        }
        if got.is_empty() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    for w in writers {
        w.await.unwrap();
    }
    assert!(
        db.store
            .items_since(job.id, cursor, 50)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(db.store.progress(job.id).await.unwrap().failed, N as u64);
}

#[tokio::test]
async fn items_since_under_concurrent_commits_sqlite() {
    items_since_under_concurrent_commits(sqlite().await).await;
}

#[tokio::test]
async fn items_since_under_concurrent_commits_postgres() {
    items_since_under_concurrent_commits(postgres().await).await;
}

async fn list_page_is_list_without_the_count(db: TestDb) {
    use connexa_core::domain::{Page, SortKey, Status};
    seed(&db.store, 30).await;
    for (filter, page) in [
        (NodeFilter::all(), Page::default()),
        (
            NodeFilter::statuses([Status::NotTested]),
            Page {
                offset: 5,
                limit: 7,
                sort: SortKey::Ip,
                desc: true,
                after: None,
            },
        ),
        (NodeFilter::all(), Page::cursor(Some(NodeId(9)), 5)),
        (
            NodeFilter {
                login: Some("user1".into()),
                ..NodeFilter::all()
            },
            Page::number(2, 3),
        ),
        (
            NodeFilter::all(),
            Page {
                offset: u64::MAX,
                ..Page::default()
            },
        ),
    ] {
        let full = db.store.list(&filter, page).await.unwrap();
        assert_eq!(db.store.list_page(&filter, page).await.unwrap(), full.nodes);
    }
}

#[tokio::test]
async fn list_page_is_list_without_the_count_sqlite() {
    list_page_is_list_without_the_count(sqlite().await).await;
}

#[tokio::test]
async fn list_page_is_list_without_the_count_postgres() {
    list_page_is_list_without_the_count(postgres().await).await;
}

/// Migration m0006 on both backends: tokens that existed before it (here: a
/// row written with m0006 rolled back) come back as `admin` of full scope,
/// so upgrading takes no access away.
async fn tokens_before_roles_stay_admin(db: TestDb) {
    use connexa_core::store::migration::Migrator;
    use sea_orm::{ConnectionTrait, Database};
    use sea_orm_migration::MigratorTrait;
    {
        let raw = Database::connect(&db.url).await.unwrap();
        Migrator::down(&raw, Some(1)).await.unwrap();
        raw.execute_unprepared(
            "INSERT INTO api_tokens (name, token_hash, created_at, revoked) \
             VALUES ('old', 'h-old', 0, false)",
        )
        .await
        .unwrap();
        raw.close().await.unwrap();
    }
    let store = SqlStore::connect(&db.url).await.unwrap();
    let t = store
        .find_token("h-old", Utc::now())
        .await
        .unwrap()
        .expect("the old token is still accepted");
    assert_eq!((t.role, t.scope), (Role::Admin, TokenScope::Full));
}

#[tokio::test]
async fn tokens_before_roles_stay_admin_sqlite() {
    tokens_before_roles_stay_admin(sqlite().await).await;
}

#[tokio::test]
async fn tokens_before_roles_stay_admin_postgres() {
    tokens_before_roles_stay_admin(postgres().await).await;
}
