//! Test backends: a fresh SQLite file and a fresh Postgres database per test.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};

use connexa_core::domain::{NewNode, NodeId, NodeMeta};
use connexa_core::ports::{InsertOutcome, NodeStore};
use connexa_core::store::SqlStore;

/// A store plus whatever keeps its database alive.
pub struct TestDb {
    pub store: SqlStore,
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

pub async fn sqlite() -> TestDb {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("connexa.db").display()
    );
    let store = SqlStore::connect(&url).await.expect("open sqlite");
    TestDb {
        store,
        url,
        _dir: Some(dir),
    }
}

pub const PG_HELP: &str = "CONNEXA_TEST_PG_URL is not set. The Postgres tests need a real server: \
run `tests/run.sh` (it starts a throw-away PostgreSQL cluster), or set CONNEXA_TEST_PG_URL to \
postgres://USER@HOST:PORT/DB of a server where USER may create databases.";

/// A fresh database on the server named by `CONNEXA_TEST_PG_URL`.
pub async fn postgres() -> TestDb {
    static N: AtomicU32 = AtomicU32::new(0);
    let admin = std::env::var("CONNEXA_TEST_PG_URL").expect(PG_HELP);
    let name = format!(
        "connexa_t_{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        chrono::Utc::now().timestamp_micros() % 1_000_000
    );
    {
        use sea_orm::{ConnectionTrait, Database};
        let db = Database::connect(&admin)
            .await
            .expect("connect to CONNEXA_TEST_PG_URL");
        db.execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create database");
        db.close().await.ok();
    }
    let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
    let url = format!("{base}/{name}");
    let store = SqlStore::connect(&url).await.expect("open postgres");
    TestDb {
        store,
        url,
        _dir: None,
    }
}

pub fn node(ip: &str, login: &str, password: &str) -> NewNode {
    NewNode::new(ip, 1723, login, password).expect("valid node")
}

pub fn node_with(ip: &str, login: &str, country: &str, state: &str, city: &str) -> NewNode {
    node(ip, login, "pw").with_meta(NodeMeta {
        country: Some(country.into()),
        state: Some(state.into()),
        city: Some(city.into()),
        ..Default::default()
    })
}

/// Inserts `n` nodes 10.x.y.z with login `user{i}` and returns their ids.
pub async fn seed(store: &dyn NodeStore, n: usize) -> Vec<NodeId> {
    let nodes = (0..n)
        .map(|i| {
            node(
                &format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255),
                &format!("user{i}"),
                "pw",
            )
        })
        .collect();
    store
        .insert(nodes)
        .await
        .expect("insert")
        .into_iter()
        .map(|o| match o {
            InsertOutcome::Inserted(id) => id,
            other => panic!("expected a fresh insert, got {other:?}"),
        })
        .collect()
}

/// Generates `mod $name { sqlite, postgres }` tests running `$name(TestDb)` on each backend.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                super::$name(super::common::sqlite().await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                super::$name(super::common::postgres().await).await
            }
        }
    )+};
}
