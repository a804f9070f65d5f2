//! Concurrency property test against the real stores: many tasks fire random
//! events at a few nodes at once. Afterwards the history is a legal path through
//! the transition table that ends at each node's stored status, and no node that
//! ever reached level 3 is below it.

mod common;

use std::sync::Arc;

use common::TestDb;
use connexa_core::domain::*;
use connexa_core::ports::*;
use connexa_core::store::SqlStore;
use proptest::prelude::*;

const NODES: usize = 6;

fn event() -> impl Strategy<Value = Event> {
    let level = proptest::sample::select(Level::ALL.to_vec());
    prop_oneof![
        4 => (level.clone(), any::<u8>()).prop_map(|(reached, f)| Event::Tested(match f % 4 {
            0 => Outcome::success(reached),
            1 => Outcome::failed(reached, Failure::Refused),
            2 => Outcome::failed(Level::Light, Failure::AuthRejected { code: Some(691), message: String::new() }),
            _ => Outcome::failed(reached, Failure::TooSlow { down_mbps: 0.2, threshold_mbps: 1.0 }),
        })),
        1 => Just(Event::ServiceStarted(ServiceEndpoint {
            host: "127.0.0.1".into(), port: 1080, username: "u".into(), password: Secret::new("p"),
        })),
        1 => Just(Event::ServiceStartFailed("bind failed".into())),
        1 => Just(Event::ServiceStopped),
        2 => Just(Event::HealthOk),
        2 => Just(Event::HealthFailed("check failed".into())),
        1 => level.prop_map(|proven| Event::Inconclusive {
            reason: "budget exceeded after 2 s at stage auth".into(),
            proven,
            measurements: Default::default(),
        }),
    ]
}

/// One task's script: (node index, event, group size hint).
fn script() -> impl Strategy<Value = Vec<(usize, Event, u8)>> {
    prop::collection::vec((0..NODES, event(), 0u8..4), 150..300)
}

async fn run_case(db: TestDb, scripts: Vec<Vec<(usize, Event, u8)>>) -> Result<(), TestCaseError> {
    let ids = common::seed(&db.store, NODES).await;
    // Two independent connection pools on the same database, as two processes would have.
    let second = SqlStore::connect(&db.url).await.expect("second pool");
    let stores: [Arc<dyn NodeStore>; 2] = [Arc::new(db.store.clone()), Arc::new(second)];
    let mut tasks = Vec::new();
    for (t, script) in scripts.into_iter().enumerate() {
        let store = stores[t % 2].clone();
        let ids = ids.clone();
        tasks.push(tokio::spawn(async move {
            let mut batch: Vec<ApplyRequest> = Vec::new();
            for (node, event, group) in script {
                let req = ApplyRequest {
                    node: ids[node],
                    event,
                    ctx: ApplyContext::now(),
                };
                if group == 0 {
                    match store.apply(req.node, req.event, req.ctx).await {
                        Ok(_) | Err(StoreError::Refused(_)) => {}
                        Err(e) => panic!("apply failed: {e}"),
                    }
                } else {
                    batch.push(req);
                    if batch.len() >= usize::from(group) * 3 {
                        store
                            .apply_many(std::mem::take(&mut batch))
                            .await
                            .expect("apply_many");
                    }
                }
            }
            if !batch.is_empty() {
                store.apply_many(batch).await.expect("apply_many");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task panicked");
    }

    for id in ids {
        let node = db.store.get(id).await.unwrap().unwrap();
        let history = db.store.history(id).await.unwrap();
        let mut cur = Status::NotTested;
        let mut verified = false;
        for row in &history {
            let to = row.to.expect("no deletions here");
            // (a) every row is a transition the table allows, from where the node was.
            prop_assert_eq!(row.from, cur, "history of {} is not a chain", id);
            let event = row.replay_event().expect("replayable");
            prop_assert_eq!(
                transition(row.from, &event),
                Ok(to),
                "forbidden row {:?}",
                row
            );
            verified |= to.is_verified();
            // (c) once at level 3, never below it.
            if verified {
                prop_assert!(
                    to.is_verified(),
                    "node {} demoted from level 3 to {}",
                    id,
                    to
                );
            }
            cur = to;
        }
        // (b) replaying the history ends at the stored status.
        prop_assert_eq!(
            node.status,
            cur,
            "node {} stored status differs from its history",
            id
        );
    }
    Ok(())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4, max_shrink_iters: 8, ..ProptestConfig::default() })]

    #[test]
    fn concurrent_events_never_demote_sqlite(scripts in prop::collection::vec(script(), 6)) {
        let rt = runtime();
        rt.block_on(async { run_case(common::sqlite().await, scripts).await })?;
    }

    #[test]
    fn concurrent_events_never_demote_postgres(scripts in prop::collection::vec(script(), 6)) {
        let rt = runtime();
        rt.block_on(async { run_case(common::postgres().await, scripts).await })?;
    }
}
