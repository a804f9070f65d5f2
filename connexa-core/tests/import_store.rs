//! Importing into the real stores (SQLite file and Postgres).

mod common;

use std::sync::Arc;

use common::TestDb;
use connexa_core::domain::*;
use connexa_core::import::{Existing, ImportOptions, OnConflict, import_into};
use connexa_core::ports::*;

on_both_backends!(
    mixed_fixture_imports_and_reimport_is_all_duplicates,
    conflicts_are_kept_unless_replace_is_asked,
    importing_never_changes_a_tested_node,
    test_after_import_tests_exactly_the_added_nodes,
);

/// Answers every light probe with success, and counts who was probed.
struct CountingProber(std::sync::Mutex<Vec<NodeId>>);

#[async_trait::async_trait]
impl Prober for CountingProber {
    async fn probe(&self, node: &Node, _depth: ProbeDepth) -> Result<Outcome, ProbeError> {
        self.0.lock().unwrap().push(node.id);
        Ok(Outcome::success(Level::Light))
    }
}

async fn test_after_import_tests_exactly_the_added_nodes(db: TestDb) {
    use connexa_core::engine::{Engine, EngineConfig, JobOptions, NotAvailable};
    let store: Arc<dyn NodeStore> = Arc::new(db.store.clone());
    let seeded = import_into(
        store.clone(),
        "192.0.2.30:admin:pw\n192.0.2.31:admin:pw\n".as_bytes(),
        ImportOptions::default(),
    )
    .await;
    let verified = seeded.added[0].1;
    let conflicting = seeded.added[1].1;
    store
        .apply(
            verified,
            Event::Tested(Outcome::success(Level::Speed)),
            ApplyContext::now(),
        )
        .await
        .unwrap();
    let before = (
        store.get(verified).await.unwrap(),
        store.get(conflicting).await.unwrap(),
    );
    let history_before = store.history(verified).await.unwrap().len();

    let prober = Arc::new(CountingProber(Default::default()));
    let engine = Engine::new(
        store.clone(),
        prober.clone(),
        Arc::new(NotAvailable),
        Arc::new(NotAvailable),
        EngineConfig::default(),
    );
    let list = "192.0.2.30:admin:pw\n192.0.2.31:admin:other\n192.0.2.32:admin:a\n192.0.2.33:admin:b\n192.0.2.34:admin:c\n";
    let (report, job) = engine
        .import(
            list.as_bytes(),
            ImportOptions::default(),
            Some((JobKind::Light, JobOptions::default())),
        )
        .await
        .unwrap();
    assert_eq!(
        (
            report.added.len(),
            report.duplicates.len(),
            report.conflicts.len()
        ),
        (3, 1, 1),
        "{report}"
    );
    let summary = engine
        .wait(job.expect("a job for the added nodes"))
        .await
        .unwrap();
    assert_eq!((summary.progress.total, summary.progress.ok), (3, 3));
    let mut probed = prober.0.lock().unwrap().clone();
    probed.sort();
    let mut added = report.added_ids();
    added.sort();
    assert_eq!(probed, added, "only the added nodes were tested");
    for id in added {
        assert_eq!(
            store.get(id).await.unwrap().unwrap().status,
            Status::PingLight
        );
    }
    assert_eq!(
        (
            store.get(verified).await.unwrap(),
            store.get(conflicting).await.unwrap()
        ),
        before
    );
    assert_eq!(store.history(verified).await.unwrap().len(), history_before);

    // Nothing added: no job.
    let (again, none) = engine
        .import(
            list.as_bytes(),
            ImportOptions::default(),
            Some((JobKind::Light, JobOptions::default())),
        )
        .await
        .unwrap();
    assert!(again.added.is_empty() && none.is_none());
}

const MIXED: &str = include_str!("fixtures/import/mixed.txt");

async fn mixed_fixture_imports_and_reimport_is_all_duplicates(db: TestDb) {
    let store: Arc<dyn NodeStore> = Arc::new(db.store.clone());
    let first = import_into(
        store.clone(),
        MIXED.as_bytes(),
        ImportOptions {
            batch: 3,
            ..Default::default()
        },
    )
    .await;
    assert!(first.failure.is_none(), "{first}");
    assert!(!first.added.is_empty(), "{first}");
    let parsed_ok = connexa_core::import::parse(MIXED.as_bytes())
        .filter(|r| r.is_ok())
        .count();
    assert_eq!(
        first.added.len() + first.duplicates.len() + first.conflicts.len(),
        parsed_ok,
        "{first}"
    );
    let total = store
        .list(
            &NodeFilter::all(),
            Page {
                limit: 10_000,
                ..Page::default()
            },
        )
        .await
        .unwrap()
        .total;
    assert_eq!(total as usize, first.added.len());
    // Every added id is a stored node with that line's identity.
    for (_, id) in &first.added {
        assert!(store.get(*id).await.unwrap().is_some());
    }

    let again = import_into(store.clone(), MIXED.as_bytes(), ImportOptions::default()).await;
    assert!(again.added.is_empty(), "{again}");
    assert_eq!(again.duplicates_stored(), first.added.len(), "{again}");
    assert_eq!(again.errors.len(), first.errors.len());
    let lines: Vec<usize> = again.errors.iter().map(|e| e.line).collect();
    assert!(
        lines.windows(2).all(|w| w[0] < w[1]),
        "errors in line order: {lines:?}"
    );
}

async fn conflicts_are_kept_unless_replace_is_asked(db: TestDb) {
    let store: Arc<dyn NodeStore> = Arc::new(db.store.clone());
    let original = "192.0.2.10:admin:old-password\n192.0.2.11:admin:same\n";
    let r = import_into(store.clone(), original.as_bytes(), ImportOptions::default()).await;
    let old_id = r.added[0].1;
    store
        .apply(
            old_id,
            Event::Tested(Outcome::success(Level::Light)),
            ApplyContext::now(),
        )
        .await
        .unwrap();

    let update = "192.0.2.10:admin:new-password\n192.0.2.11:admin:same\n";
    let skip = import_into(store.clone(), update.as_bytes(), ImportOptions::default()).await;
    assert_eq!(skip.conflicts.len(), 1, "{skip}");
    assert_eq!(skip.conflicts[0].with, Existing::Stored(old_id));
    assert_eq!(skip.conflicts[0].line, 1);
    assert_eq!(
        store.get(old_id).await.unwrap().unwrap().password.expose(),
        "old-password"
    );

    let replace = import_into(
        store.clone(),
        update.as_bytes(),
        ImportOptions {
            on_conflict: OnConflict::Replace,
            ..Default::default()
        },
    )
    .await;
    assert!(replace.failure.is_none(), "{replace}");
    assert!(replace.conflicts.is_empty(), "{replace}");
    assert_eq!(replace.replaced.len(), 1);
    assert_eq!(replace.replaced[0].old, old_id);
    let new_id = replace.replaced[0].new;
    assert_eq!(replace.added, vec![(1, new_id)]);
    assert!(store.get(old_id).await.unwrap().is_none());
    let fresh = store.get(new_id).await.unwrap().unwrap();
    assert_eq!(
        (fresh.password.expose(), fresh.status),
        ("new-password", Status::NotTested)
    );
    let h = store.history(old_id).await.unwrap();
    assert_eq!(h.last().unwrap().event, HistoryEvent::Deleted);
    assert!(replace.to_string().contains("replaced 1"), "{replace}");
}

async fn importing_never_changes_a_tested_node(db: TestDb) {
    let store: Arc<dyn NodeStore> = Arc::new(db.store.clone());
    let r = import_into(
        store.clone(),
        "192.0.2.20:admin:pw\n".as_bytes(),
        ImportOptions::default(),
    )
    .await;
    let id = r.added[0].1;
    store
        .apply(
            id,
            Event::Tested(Outcome::success(Level::Speed)),
            ApplyContext::now(),
        )
        .await
        .unwrap();
    let before = store.get(id).await.unwrap().unwrap();
    let list =
        "192.0.2.20:admin:pw\n192.0.2.20:admin:other\nIp: 192.0.2.20\nLogin: admin\nPass: pw\n";
    let again = import_into(store.clone(), list.as_bytes(), ImportOptions::default()).await;
    assert!(again.added.is_empty(), "{again}");
    assert_eq!(store.get(id).await.unwrap().unwrap(), before);
}
