//! Committed results per second: one transaction per result (the naive baseline)
//! versus group commit (results that finish together share one transaction).
//!
//!     cargo bench -p connexa-core --bench store
//!     CONNEXA_BENCH_PG_URL=postgres://postgres@127.0.0.1:5432/postgres cargo bench -p connexa-core --bench store
//!
//! With a Postgres URL the same run also measures a fresh database on that server.

use std::time::Instant;

use connexa_core::domain::{Event, Failure, Level, Measurements, NewNode, Outcome};
use connexa_core::ports::{ApplyContext, ApplyRequest, NodeStore};
use connexa_core::store::SqlStore;

const NODES: usize = 1_000;
const NAIVE_RESULTS: usize = 2_000;
const GROUP_RESULTS: usize = 20_000;
const GROUP: usize = 256;

fn request(ids: &[connexa_core::domain::NodeId], i: usize) -> ApplyRequest {
    let outcome = match i % 3 {
        0 => Outcome::success(Level::Light),
        1 => Outcome::failed(Level::None, Failure::ConnectTimeout),
        _ => Outcome::success(Level::Auth),
    }
    .with_measurements(Measurements {
        handshake_ms: Some(3.2),
        ..Default::default()
    });
    ApplyRequest {
        node: ids[i % ids.len()],
        event: Event::Tested(outcome),
        ctx: ApplyContext::now(),
    }
}

async fn seeded(url: &str) -> (SqlStore, Vec<connexa_core::domain::NodeId>) {
    let store = SqlStore::connect(url).await.expect("open store");
    let nodes = (0..NODES)
        .map(|i| {
            NewNode::new(
                &format!("10.9.{}.{}", i / 256, i % 256),
                1723,
                "bench",
                "pw",
            )
            .expect("node")
        })
        .collect();
    let ids = store
        .insert(nodes)
        .await
        .expect("insert")
        .into_iter()
        .map(|o| match o {
            connexa_core::ports::InsertOutcome::Inserted(id) => id,
            other => panic!("{other:?}"),
        })
        .collect();
    (store, ids)
}

async fn measure(name: &str, url_naive: &str, url_group: &str) {
    let (store, ids) = seeded(url_naive).await;
    let t = Instant::now();
    for i in 0..NAIVE_RESULTS {
        let r = request(&ids, i);
        store.apply(r.node, r.event, r.ctx).await.expect("apply");
    }
    let naive = NAIVE_RESULTS as f64 / t.elapsed().as_secs_f64();

    let (store, ids) = seeded(url_group).await;
    let t = Instant::now();
    let mut i = 0;
    while i < GROUP_RESULTS {
        let batch: Vec<_> = (i..(i + GROUP).min(GROUP_RESULTS))
            .map(|j| request(&ids, j))
            .collect();
        i += batch.len();
        store.apply_many(batch).await.expect("apply_many");
    }
    let group = GROUP_RESULTS as f64 / t.elapsed().as_secs_f64();
    println!(
        "{name:<9} naive (1 txn/result): {naive:>9.0} results/s | group commit ({GROUP}/txn): {group:>9.0} results/s | ratio {:.1}x",
        group / naive
    );
}

async fn fresh_pg(admin: &str, name: &str) -> String {
    use sea_orm::{ConnectionTrait, Database};
    let db = Database::connect(admin).await.expect("connect to postgres");
    db.execute_unprepared(&format!("DROP DATABASE IF EXISTS {name}"))
        .await
        .expect("drop");
    db.execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create");
    let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(admin);
    format!("{base}/{name}")
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` probes harness=false benches with --list
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let url = |n: &str| format!("sqlite://{}?mode=rwc", dir.path().join(n).display());
    println!(
        "store benchmark: {NODES} nodes, {NAIVE_RESULTS} naive results, {GROUP_RESULTS} group-committed results"
    );
    measure("sqlite", &url("naive.db"), &url("group.db")).await;
    if let Ok(admin) =
        std::env::var("CONNEXA_BENCH_PG_URL").or_else(|_| std::env::var("CONNEXA_TEST_PG_URL"))
    {
        let a = fresh_pg(&admin, "connexa_bench_naive").await;
        let b = fresh_pg(&admin, "connexa_bench_group").await;
        measure("postgres", &a, &b).await;
    } else {
        println!("postgres  skipped: set CONNEXA_BENCH_PG_URL to measure it");
    }
}
