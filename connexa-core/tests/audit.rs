//! The audit trail on real databases: each operator action through a store
//! acting for someone leaves exactly one row naming the actor, in the same
//! transaction as the change (a change that fails leaves none); the engine's
//! own writes (no actor) leave none; no password is ever in a row. Every
//! test runs on a SQLite file and on PostgreSQL.

mod common;

use chrono::Utc;
use common::TestDb;
use connexa_core::domain::*;
use connexa_core::ports::*;
use connexa_core::store::SqlStore;
use connexa_core::store::audit::{Actor, AuditEntry};

on_both_backends!(
    each_operator_action_leaves_one_row_with_its_actor,
    failed_changes_and_actorless_writes_leave_none,
);

const PASSWORD: &str = "audit-secret-Qw81";

fn actor() -> Actor {
    Actor {
        name: "token:ci".into(),
        source: Some("192.0.2.9".into()),
    }
}

async fn rows(s: &SqlStore) -> Vec<AuditEntry> {
    let mut r = s.audit_log(1000).await.unwrap();
    r.reverse();
    r
}

fn assert_no_secret(rows: &[AuditEntry]) {
    for r in rows {
        let text = format!("{r:?}");
        assert!(
            !text.contains(PASSWORD),
            "a password in the audit trail: {text}"
        );
    }
}

async fn each_operator_action_leaves_one_row_with_its_actor(db: TestDb) {
    let s = db.store.acting_as(actor());
    let nodes: Vec<NewNode> = (1..=3)
        .map(|i| NewNode::new(&format!("198.51.100.{i}"), 1723, "u", PASSWORD).unwrap())
        .collect();
    let ids: Vec<NodeId> = s
        .insert(nodes)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|o| match o {
            InsertOutcome::Inserted(id) => Some(id),
            _ => None,
        })
        .collect();
    let mut expect: Vec<(&str, Option<i64>)> = vec![("import", Some(3))];
    assert_eq!(rows(&s).await.len(), 1);
    // The same list again adds nothing: no row.
    let again = (1..=3)
        .map(|i| NewNode::new(&format!("198.51.100.{i}"), 1723, "u", PASSWORD).unwrap())
        .collect();
    s.insert(again).await.unwrap();
    s.update_meta(ids[0], NodeMeta::default()).await.unwrap();
    expect.push(("node_edit", Some(1)));
    s.set_service_wanted(&NodeFilter::ids([ids[1]]), true)
        .await
        .unwrap();
    expect.push(("service_want", Some(1)));
    let job = s
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
    expect.push(("job_create", Some(3)));
    s.set_job_state(job.id, JobState::Running, Utc::now())
        .await
        .unwrap();
    s.set_job_state(job.id, JobState::Cancelled, Utc::now())
        .await
        .unwrap();
    expect.push(("job_cancel", None));
    s.request_service_restart(&[ids[1]], Utc::now())
        .await
        .unwrap();
    expect.push(("service_restart", Some(1)));
    let deleted = s.delete(&NodeFilter::ids([ids[2]])).await.unwrap();
    assert_eq!(deleted, 1);
    expect.push(("delete", Some(1)));
    let got = rows(&s).await;
    assert_eq!(
        got.iter()
            .map(|r| (r.action.as_str(), r.count))
            .collect::<Vec<_>>(),
        expect
    );
    for r in &got {
        assert_eq!(r.actor, "token:ci");
        assert_eq!(r.source.as_deref(), Some("192.0.2.9"));
    }
    assert!(
        got[0]
            .target
            .as_deref()
            .unwrap()
            .contains(&ids[0].0.to_string())
    );
    assert!(
        got.last()
            .unwrap()
            .target
            .as_deref()
            .unwrap()
            .contains("ids")
    );
    assert_no_secret(&got);
    // Ids are increasing and times are now.
    assert!(got.windows(2).all(|w| w[0].id < w[1].id));
    assert!((Utc::now() - got[0].at).num_seconds() < 60);
}

async fn failed_changes_and_actorless_writes_leave_none(db: TestDb) {
    let plain = &db.store;
    let ids = common::seed(plain, 2).await;
    plain.delete(&NodeFilter::ids([ids[0]])).await.unwrap();
    assert!(
        rows(plain).await.is_empty(),
        "a store without an actor audited"
    );
    let s = plain.acting_as(actor());
    // A node that does not exist: the edit fails and rolls back.
    assert!(
        s.update_meta(NodeId(999_999), NodeMeta::default())
            .await
            .is_err()
    );
    // A job on nothing is refused.
    let refused = s
        .create_job(
            JobSpec {
                kind: JobKind::Light,
                filter: NodeFilter::ids([NodeId(999_999)]),
                options: serde_json::json!({}),
                deadline: None,
            },
            Utc::now(),
        )
        .await;
    let n = rows(&s).await.len();
    assert_eq!(n, usize::from(refused.is_ok()), "failed changes left rows");
    // The actorless store of the engine finishing work leaves none either.
    plain
        .apply(
            ids[1],
            Event::Tested(Outcome::success(Level::Light)),
            ApplyContext::now(),
        )
        .await
        .unwrap();
    assert_eq!(rows(&s).await.len(), n);
}
