//! Workers, leases and fencing against real databases (SQLite file and
//! Postgres): a late result of a reclaimed item is refused, an expired lease
//! is reclaimed, heartbeats extend leases, recovery touches only the items
//! of dead workers. Time is an argument of every call, so nothing sleeps.

mod common;

use std::time::Duration;

use chrono::{DateTime, Utc};
use common::{TestDb, seed};
use connexa_core::domain::*;
use connexa_core::ports::*;

on_both_backends!(
    a_late_result_of_a_reclaimed_item_is_refused_and_applies_nothing,
    an_expired_lease_is_reclaimed_and_a_heartbeat_keeps_it,
    recovery_requeues_only_items_of_dead_workers,
    workers_register_beat_list_and_deregister,
    services_are_placed_on_live_service_workers,
);

const LEASE: Duration = Duration::from_secs(10);

fn secs(s: i64) -> chrono::Duration {
    chrono::Duration::seconds(s)
}

async fn light_job(store: &dyn NodeStore, at: DateTime<Utc>) -> Job {
    store
        .create_job(
            JobSpec {
                kind: JobKind::Light,
                filter: NodeFilter::all(),
                options: serde_json::json!({}),
                deadline: None,
            },
            at,
        )
        .await
        .unwrap()
}

fn ok_result(c: &ClaimedItem, token: i64, at: DateTime<Utc>) -> ItemResult {
    ItemResult {
        item: c.item,
        token,
        state: ItemState::Ok,
        event: Some(Event::Tested(Outcome::success(Level::Light))),
        enrichment: None,
        detail: None,
        at,
    }
}

fn reg(name: &str, pid: u32) -> WorkerRegistration {
    WorkerRegistration {
        name: name.to_owned(),
        host: "h".to_owned(),
        pid,
        version: "0".to_owned(),
        roles: vec![WorkerRole::Jobs],
        max_services: None,
        labels: Vec::new(),
    }
}

async fn a_late_result_of_a_reclaimed_item_is_refused_and_applies_nothing(db: TestDb) {
    let s = &db.store;
    let ids = seed(s, 1).await;
    let t0 = Utc::now();
    let job = light_job(s, t0).await;
    let old = s.claim_items(job.id, "w1", 10, t0, LEASE).await.unwrap();
    assert_eq!(old.len(), 1);
    // Inside the lease nobody else gets it.
    assert!(
        s.claim_items(job.id, "w2", 10, t0 + secs(9), LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(s.claimable(job.id, t0 + secs(9)).await.unwrap(), 0);
    // Past it, any worker reclaims it, with another token.
    assert_eq!(s.claimable(job.id, t0 + secs(11)).await.unwrap(), 1);
    let new = s
        .claim_items(job.id, "w2", 10, t0 + secs(11), LEASE)
        .await
        .unwrap();
    assert_eq!(new.len(), 1);
    assert_eq!(new[0].item, old[0].item);
    assert_ne!(new[0].token, old[0].token);
    // The old claim's result arrives late: refused, nothing written.
    let late = s
        .finish_items(vec![ok_result(&old[0], old[0].token, t0 + secs(12))])
        .await
        .unwrap();
    assert!(!late[0].written, "{late:?}");
    assert_eq!(late[0].applied, None);
    assert!(s.history(ids[0]).await.unwrap().is_empty());
    assert_eq!(
        s.get(ids[0]).await.unwrap().unwrap().status,
        Status::NotTested
    );
    let p = s.progress(job.id).await.unwrap();
    assert_eq!((p.running, p.done()), (1, 0));
    // The holder's result is taken, once.
    let r = ok_result(&new[0], new[0].token, t0 + secs(13));
    let done = s.finish_items(vec![r.clone()]).await.unwrap();
    assert!(done[0].written);
    assert_eq!(done[0].applied.map(|a| a.to), Some(Status::PingLight));
    assert!(!s.finish_items(vec![r]).await.unwrap()[0].written);
    // And the old one again, after the end: still refused.
    let again = s
        .finish_items(vec![ok_result(&old[0], old[0].token, t0 + secs(14))])
        .await
        .unwrap();
    assert!(!again[0].written);
    assert_eq!(s.history(ids[0]).await.unwrap().len(), 1);
    let p = s.progress(job.id).await.unwrap();
    assert_eq!((p.ok, p.running, p.pending), (1, 0, 0));
    // An ended item is not claimable, whatever its lease said.
    assert_eq!(s.claimable(job.id, t0 + secs(100)).await.unwrap(), 0);
}

async fn an_expired_lease_is_reclaimed_and_a_heartbeat_keeps_it(db: TestDb) {
    let s = &db.store;
    seed(s, 3).await;
    let t0 = Utc::now();
    let job = light_job(s, t0).await;
    let w1 = reg("w1", 1);
    s.register_worker(&w1, t0, LEASE).await.unwrap();
    let mine = s.claim_items(job.id, "w1", 2, t0, LEASE).await.unwrap();
    assert_eq!(mine.len(), 2);
    // w1 beats at t0+8 s: its two leases run to t0+18 s.
    assert_eq!(s.heartbeat(&w1, t0 + secs(8), LEASE).await.unwrap(), 2);
    let other = s
        .claim_items(job.id, "w2", 10, t0 + secs(15), LEASE)
        .await
        .unwrap();
    assert_eq!(other.len(), 1, "only the pending item: {other:?}");
    assert!(!mine.iter().any(|m| m.item == other[0].item));
    // w1 stops beating; at t0+19 s its items are w2's.
    let taken = s
        .claim_items(job.id, "w2", 10, t0 + secs(19), LEASE)
        .await
        .unwrap();
    let mut got: Vec<_> = taken.iter().map(|c| c.item).collect();
    got.sort();
    assert_eq!(got, vec![mine[0].item, mine[1].item]);
    // A heartbeat of w1 now extends nothing: they are not its items any more.
    assert_eq!(s.heartbeat(&w1, t0 + secs(20), LEASE).await.unwrap(), 0);
    let w = s.workers(t0 + secs(20)).await.unwrap();
    let w1_view = w.iter().find(|w| w.name == "w1").unwrap();
    assert_eq!(w1_view.items_in_flight, 0);
    let w2_held = s
        .claim_items(job.id, "w3", 10, t0 + secs(25), LEASE)
        .await
        .unwrap();
    assert!(w2_held.is_empty(), "w2's leases still run: {w2_held:?}");
}

async fn recovery_requeues_only_items_of_dead_workers(db: TestDb) {
    let s = &db.store;
    seed(s, 6).await;
    let now = Utc::now();
    let job = light_job(s, now).await;
    s.register_worker(&reg("live", 1), now, Duration::from_secs(60))
        .await
        .unwrap();
    s.register_worker(&reg("dead", 2), now - secs(120), Duration::from_secs(60))
        .await
        .unwrap();
    let long = Duration::from_secs(3600);
    let live = s.claim_items(job.id, "live", 1, now, long).await.unwrap();
    // Its heartbeat expired, even if the claim's lease did not yet.
    let dead = s.claim_items(job.id, "dead", 1, now, long).await.unwrap();
    // A process without a row whose heartbeat extends its lease: alive.
    let unregistered = s
        .claim_items(job.id, "cli-test", 1, now, long)
        .await
        .unwrap();
    let me = s.claim_items(job.id, "me", 1, now, long).await.unwrap();
    // A process without a row whose lease lapsed: dead.
    let lapsed = s
        .claim_items(job.id, "gone", 1, now - secs(7200), long)
        .await
        .unwrap();
    assert_eq!(s.requeue_orphans(job.id, "me", now).await.unwrap(), 3);
    let p = s.progress(job.id).await.unwrap();
    assert_eq!((p.running, p.pending), (2, 4), "{p:?}");
    let w = s.workers(now).await.unwrap();
    let by = |n: &str| w.iter().find(|w| w.name == n).unwrap().clone();
    assert_eq!((by("live").alive, by("live").items_in_flight), (true, 1));
    assert_eq!((by("dead").alive, by("dead").items_in_flight), (false, 0));
    // The live holders' results still count; the others' are refused.
    let r = s
        .finish_items(vec![
            ok_result(&live[0], live[0].token, now),
            ok_result(&unregistered[0], unregistered[0].token, now),
            ok_result(&dead[0], dead[0].token, now),
            ok_result(&lapsed[0], lapsed[0].token, now),
            ok_result(&me[0], me[0].token, now),
        ])
        .await
        .unwrap();
    let written: Vec<bool> = r.iter().map(|f| f.written).collect();
    assert_eq!(written, vec![true, true, false, false, false]);
    // An unregistered holder's heartbeat extends its leases.
    let more = s
        .claim_items(job.id, "cli-test", 1, now, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        s.extend_leases("cli-test", now + secs(4), Duration::from_secs(5))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        s.requeue_orphans(job.id, "me", now + secs(8))
            .await
            .unwrap(),
        0,
        "lease extended to now + 9 s"
    );
    assert_eq!(
        s.requeue_orphans(job.id, "me", now + secs(10))
            .await
            .unwrap(),
        1
    );
    assert_eq!(more.len(), 1);
}

async fn workers_register_beat_list_and_deregister(db: TestDb) {
    let s = &db.store;
    let t0 = Utc::now();
    let a = WorkerRegistration {
        roles: vec![WorkerRole::Services, WorkerRole::Jobs],
        ..reg("a", 10)
    };
    s.register_worker(&a, t0, LEASE).await.unwrap();
    // Another process may not take a live name...
    let err = s
        .register_worker(&reg("a", 11), t0 + secs(1), LEASE)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::WorkerNameTaken { pid: 10, .. }),
        "{err}"
    );
    // ...the same process may register again, and a dead name is free.
    s.register_worker(&a, t0 + secs(2), LEASE).await.unwrap();
    s.register_worker(&reg("b", 20), t0, LEASE).await.unwrap();
    s.register_worker(&reg("b", 21), t0 + secs(11), LEASE)
        .await
        .unwrap();
    s.heartbeat(&a, t0 + secs(5), LEASE).await.unwrap();
    let w = s.workers(t0 + secs(14)).await.unwrap();
    assert_eq!(
        w.iter().map(|w| w.name.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert_eq!(w[0].roles, vec![WorkerRole::Jobs, WorkerRole::Services]);
    assert_eq!(
        w[0].started_at.timestamp_millis(),
        (t0 + secs(2)).timestamp_millis()
    );
    assert_eq!(
        w[0].last_heartbeat.timestamp_millis(),
        (t0 + secs(5)).timestamp_millis()
    );
    assert!(w[0].alive && w[1].alive);
    assert_eq!(w[1].pid, 21);
    // b's first process (pid 20), paused past its registration, resumes: its
    // heartbeat does not take the name back from pid 21.
    let err = s
        .heartbeat(&reg("b", 20), t0 + secs(12), LEASE)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::WorkerNameTaken { pid: 21, .. }),
        "{err}"
    );
    assert_eq!(s.workers(t0 + secs(12)).await.unwrap()[1].pid, 21);
    assert!(!s.workers(t0 + secs(16)).await.unwrap()[0].alive);
    assert!(s.deregister_worker("a").await.unwrap());
    assert!(!s.deregister_worker("a").await.unwrap());
    assert_eq!(s.workers(t0).await.unwrap().len(), 1);
    // A heartbeat of a process whose row went puts it back.
    s.heartbeat(&a, t0 + secs(20), LEASE).await.unwrap();
    assert_eq!(s.workers(t0 + secs(20)).await.unwrap().len(), 2);
}

fn services_worker(name: &str, pid: u32, max: Option<u64>) -> WorkerRegistration {
    WorkerRegistration {
        roles: vec![WorkerRole::Services],
        max_services: max,
        ..reg(name, pid)
    }
}

async fn placed(s: &dyn NodeStore) -> Vec<(i64, Option<String>, Option<String>)> {
    s.service_placements()
        .await
        .unwrap()
        .into_iter()
        .map(|p| (p.node.0, p.worker, p.pinned))
        .collect()
}

async fn services_are_placed_on_live_service_workers(db: TestDb) {
    let s = &db.store;
    let t0 = Utc::now();
    let ids = seed(s, 6).await;
    for id in &ids {
        s.apply(
            *id,
            Event::Tested(Outcome::success(Level::Speed)),
            ApplyContext::now(),
        )
        .await
        .unwrap();
    }
    // Only the first five are wanted; the sixth is verified but not wanted.
    s.set_service_wanted(&NodeFilter::ids(ids[..5].iter().copied()), true)
        .await
        .unwrap();
    s.register_worker(&services_worker("a", 1, None), t0, LEASE)
        .await
        .unwrap();
    s.register_worker(&services_worker("b", 2, Some(2)), t0, LEASE)
        .await
        .unwrap();
    // A jobs-only worker gets no service.
    s.register_worker(&reg("j", 3), t0, LEASE).await.unwrap();
    let mine = s.place_services("a", t0).await.unwrap();
    if db.url.starts_with("sqlite") {
        // One host: no placement, every wanted service runs where it is reconciled.
        assert_eq!(mine, None);
        assert!(placed(s).await.is_empty());
        return;
    }
    // Least loaded, ties by name, b full at 2: a, b, a, b, a.
    let mine = mine.unwrap();
    assert_eq!(mine, vec![ids[0], ids[2], ids[4]]);
    assert_eq!(
        s.place_services("b", t0).await.unwrap().unwrap(),
        vec![ids[1], ids[3]]
    );
    let held: Vec<(String, u64)> = s
        .workers(t0)
        .await
        .unwrap()
        .into_iter()
        .map(|w| (w.name, w.services_held))
        .collect();
    assert_eq!(
        held,
        vec![("a".into(), 3), ("b".into(), 2), ("j".into(), 0)]
    );
    // a dies (b keeps beating): its services go to b up to b's room, the
    // rest wait unplaced; nothing of b's moves.
    let t1 = t0 + secs(11);
    s.heartbeat(&services_worker("b", 2, Some(4)), t1, LEASE)
        .await
        .unwrap();
    assert_eq!(
        s.place_services("b", t1).await.unwrap().unwrap(),
        vec![ids[0], ids[1], ids[2], ids[3]]
    );
    let p = placed(s).await;
    assert_eq!(p[4], (ids[4].0, None, None), "no room left: unplaced");
    // A pinned service stays on its live worker until its pinned worker is
    // alive, then moves there.
    assert_eq!(
        s.pin_services(&[ids[0]], Some("c".into())).await.unwrap(),
        1
    );
    s.place_services("b", t1).await.unwrap();
    assert_eq!(
        placed(s).await[0],
        (ids[0].0, Some("b".into()), Some("c".into()))
    );
    s.register_worker(&services_worker("c", 4, None), t1, LEASE)
        .await
        .unwrap();
    assert_eq!(
        s.place_services("c", t1).await.unwrap().unwrap(),
        vec![ids[0], ids[4]],
        "its pinned service, and the unplaced one (c is the least loaded)"
    );
    // A service no longer wanted loses its placement; its pin stays.
    s.set_service_wanted(&NodeFilter::ids([ids[0], ids[1]]), false)
        .await
        .unwrap();
    assert_eq!(
        s.place_services("b", t1).await.unwrap().unwrap(),
        vec![ids[2], ids[3]]
    );
    let p = placed(s).await;
    assert_eq!(p[0], (ids[0].0, None, Some("c".into())));
    assert!(p.iter().all(|(id, _, _)| *id != ids[1].0), "{p:?}");
    // Wanted again with c dead: it waits for c (nowhere else).
    s.set_service_wanted(&NodeFilter::ids([ids[0]]), true)
        .await
        .unwrap();
    let t2 = t1 + secs(11);
    s.heartbeat(&services_worker("b", 2, None), t2, LEASE)
        .await
        .unwrap();
    assert_eq!(
        s.place_services("b", t2).await.unwrap().unwrap(),
        vec![ids[2], ids[3], ids[4]]
    );
    assert_eq!(placed(s).await[0], (ids[0].0, None, Some("c".into())));
    // A label: the service moves to a live worker with it, and is listed.
    let d = WorkerRegistration {
        labels: vec!["eu".into()],
        ..services_worker("d", 5, None)
    };
    s.register_worker(&d, t2, LEASE).await.unwrap();
    assert_eq!(
        s.label_services(&[ids[2]], Some("eu".into()))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        s.place_services("d", t2).await.unwrap().unwrap(),
        vec![ids[2]]
    );
    let label = s
        .service_placements()
        .await
        .unwrap()
        .into_iter()
        .find(|p| p.node == ids[2])
        .and_then(|p| p.label);
    assert_eq!(label.as_deref(), Some("eu"));
    let listed = s.workers(t2).await.unwrap();
    let d = listed.iter().find(|w| w.name == "d").unwrap();
    assert_eq!(
        (d.labels.clone(), d.services_held),
        (vec!["eu".to_owned()], 1)
    );
}
