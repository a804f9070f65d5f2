//! The store against real databases: every test runs on a SQLite file and on Postgres.

mod common;

use chrono::{Duration, Utc};
use common::{TestDb, node, node_with, seed};
use connexa_core::domain::*;
use connexa_core::ports::*;
use sea_orm::{ConnectionTrait, Statement};

on_both_backends!(
    insert_reports_duplicates_and_conflicts,
    apply_writes_status_evidence_and_history,
    refused_event_writes_nothing,
    failed_retest_of_verified_node_records_but_keeps_status,
    filters_list_and_delete_select_the_same_rows,
    hostile_filter_text_is_just_text,
    control_characters_in_a_filter_match_nothing,
    a_hundred_thousand_ids_make_one_job_and_one_delete,
    pagination_is_stable_and_total_is_right,
    cursor_pages_follow_ids_and_keep_the_filter_total,
    cursor_needs_id_sort_and_no_offset,
    cursor_walk_neither_skips_nor_repeats_while_nodes_change,
    service_wanted_and_meta_never_touch_status,
    jobs_claim_finish_progress_cancel_requeue,
    group_commit_applies_in_order_and_isolates_failures,
    service_wanted_filter_selects_the_desired_state,
    speed_test_records_the_exit_address,
    field_values_are_distinct_counted_by_prefix_and_bounded,
    service_runtime_counters_and_restart_requests,
    an_inconclusive_test_counts_as_a_check_only_when_it_proved_something,
    every_claim_of_an_item_gets_a_token_of_its_own,
    claimable_counts_pending_and_expired_leases,
    concurrent_commits_of_one_job_get_distinct_commit_numbers,
    a_commit_racing_a_reclaim_of_its_item_is_refused_and_applies_nothing,
);

async fn field_values_are_distinct_counted_by_prefix_and_bounded(db: TestDb) {
    let s = &db.store;
    let nodes = vec![
        node_with("10.0.0.1", "a", "United States", "Texas", "Austin"),
        node_with("10.0.0.2", "a", "United States", "Texas", "Dallas"),
        node_with("10.0.0.3", "a", "United States", "California", "Austin"),
        node_with("10.0.0.4", "a", "Germany", "Bavaria", "Munich"),
        node_with("10.0.0.5", "a", "Tex_as%", "T", "x"),
        node("10.0.0.6", "a", "pw"),
    ];
    s.insert(nodes).await.unwrap();
    let v = s.field_values(ValueField::Country, None, 10).await.unwrap();
    assert_eq!(
        v,
        vec![
            ("United States".to_owned(), 3),
            ("Germany".to_owned(), 1),
            ("Tex_as%".to_owned(), 1),
        ],
        "most frequent first, ties by value, no empty value"
    );
    let v = s
        .field_values(ValueField::City, Some("AU".into()), 10)
        .await
        .unwrap();
    assert_eq!(
        v,
        vec![("Austin".to_owned(), 2)],
        "prefix, case-insensitive"
    );
    // LIKE wildcards in a prefix are text: `Tex_` is not `Texa`.
    let v = s
        .field_values(ValueField::Country, Some("Tex_".into()), 10)
        .await
        .unwrap();
    assert_eq!(v, vec![("Tex_as%".to_owned(), 1)]);
    let v = s
        .field_values(ValueField::State, Some("te%".into()), 10)
        .await
        .unwrap();
    assert!(v.is_empty(), "{v:?}");
    let v = s.field_values(ValueField::State, None, 2).await.unwrap();
    assert_eq!(v.len(), 2);
    assert_eq!(v[0], ("Texas".to_owned(), 2));
    assert!(
        s.field_values(ValueField::Provider, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn service_runtime_counters_and_restart_requests(db: TestDb) {
    let s = &db.store;
    let ids = seed(s, 3).await;
    let (a, b, c) = (ids[0], ids[1], ids[2]);
    assert!(s.service_runtime(&[]).await.unwrap().is_empty());
    let t0 = chrono::DateTime::from_timestamp_millis(1_765_000_000_123).unwrap();
    let counters = |n: u64| ServiceCounters {
        connections: n,
        connections_total: 10 * n,
        bytes_up: 1000 * n,
        // Beyond 32 bits.
        bytes_down: 5_000_000_000 + n,
        last_error: Some(format!("error {n}")),
        started_at: Some(t0),
    };
    // A restart request first (no counters yet), then counters: both kept.
    s.request_service_restart(&[a], t0).await.unwrap();
    s.put_service_counters(vec![(a, counters(1)), (b, counters(2))], t0)
        .await
        .unwrap();
    let rt = s.service_runtime(&[a, b, c]).await.unwrap();
    assert_eq!(rt.len(), 2, "{rt:?}");
    assert_eq!(rt[0].node, a);
    assert_eq!(rt[0].counters, Some(counters(1)));
    assert_eq!(rt[0].restart_requested_at, Some(t0));
    assert_eq!(rt[1].counters, Some(counters(2)));
    assert_eq!(rt[1].restart_requested_at, None);
    // A request for a node with no row yet: no counters shown for it.
    s.request_service_restart(&[c], t0).await.unwrap();
    let rc = s.service_runtime(&[c]).await.unwrap();
    assert_eq!(
        (rc[0].counters.clone(), rc[0].restart_requested_at),
        (None, Some(t0))
    );
    // Newer counters replace the old ones and keep the request; a node given
    // twice (a restarted service's last and first counters) keeps the last.
    s.put_service_counters(
        vec![(a, counters(4)), (a, counters(3))],
        t0 + Duration::seconds(1),
    )
    .await
    .unwrap();
    s.request_service_restart(&[c, c], t0).await.unwrap();
    let ra = &s.service_runtime(&[a]).await.unwrap()[0];
    assert_eq!(ra.counters, Some(counters(3)));
    assert_eq!(ra.restart_requested_at, Some(t0));
    // Clearing compares the request's time: a newer request stays.
    let t1 = t0 + Duration::seconds(5);
    s.request_service_restart(&[a], t1).await.unwrap();
    assert!(!s.finish_service_restart(a, t0).await.unwrap());
    assert_eq!(
        s.service_runtime(&[a]).await.unwrap()[0].restart_requested_at,
        Some(t1)
    );
    assert!(s.finish_service_restart(a, t1).await.unwrap());
    assert_eq!(
        s.service_runtime(&[a]).await.unwrap()[0].restart_requested_at,
        None
    );
    // Nothing here touches a status; deleting a node forgets its row.
    for id in [a, b, c] {
        assert_eq!(s.get(id).await.unwrap().unwrap().status, Status::NotTested);
    }
    s.delete(&NodeFilter::ids([b])).await.unwrap();
    let all: Vec<NodeId> = s
        .service_runtime(&[])
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.node)
        .collect();
    assert_eq!(all, vec![a, c]);
}

async fn speed_test_records_the_exit_address(db: TestDb) {
    let s = &db.store;
    let id = seed(s, 1).await[0];
    let exit: std::net::IpAddr = "203.0.113.77".parse().unwrap();
    let speed = Outcome::success(Level::Speed).with_measurements(Measurements {
        speed_down_mbps: Some(12.0),
        exit_ip: Some(exit),
        ..Default::default()
    });
    s.apply(id, Event::Tested(speed), ctx()).await.unwrap();
    let n = s.get(id).await.unwrap().unwrap();
    assert_eq!(n.exit_ip, Some(exit));
    // GEO and fraud describe the exit, not the PPTP server's address.
    assert_eq!(connexa_core::geo::enrichment_address(&n), exit);
    assert_ne!(n.ip, exit);
    // A later test that saw no exit address keeps the known one.
    s.apply(id, tested(Level::Light), ctx()).await.unwrap();
    assert_eq!(s.get(id).await.unwrap().unwrap().exit_ip, Some(exit));
}

/// A test cut short (our deadline, our budget) checked the node only if it
/// proved a level on the way: `last_checked_at` moves then, and only then;
/// the failure count and the last error are never touched by it.
async fn an_inconclusive_test_counts_as_a_check_only_when_it_proved_something(db: TestDb) {
    let s = &db.store;
    let id = seed(s, 1).await[0];
    let cut = |proven: Level| Event::Inconclusive {
        reason: "job deadline reached".into(),
        proven,
        measurements: Measurements {
            handshake_ms: Some(41.0),
            ..Default::default()
        },
    };
    s.apply(id, cut(Level::None), ctx()).await.unwrap();
    let n = s.get(id).await.unwrap().unwrap();
    assert_eq!(n.last_checked_at, None, "nothing proven: not a check");
    assert_eq!(n.ping_ms, Some(41.0), "what was measured is kept");
    assert_eq!((n.consecutive_failures, n.last_error), (0, None));
    s.apply(id, cut(Level::Light), ctx()).await.unwrap();
    let n = s.get(id).await.unwrap().unwrap();
    assert!(n.last_checked_at.is_some(), "light proven: a check");
    assert_eq!(n.status, Status::PingLight);
    assert_eq!((n.consecutive_failures, n.last_error), (0, None));
}

fn tested(level: Level) -> Event {
    Event::Tested(Outcome::success(level))
}

fn failed(level: Level, f: Failure) -> Event {
    Event::Tested(Outcome::failed(level, f))
}

fn ctx() -> ApplyContext {
    ApplyContext::now()
}

fn endpoint(port: u16) -> ServiceEndpoint {
    ServiceEndpoint {
        host: "127.0.0.1".into(),
        port,
        username: "svc".into(),
        password: Secret::new("svc-password-123456"),
    }
}

async fn count(db: &TestDb, table: &str) -> i64 {
    let conn = db.store.connection();
    let row = conn
        .query_one_raw(Statement::from_string(
            conn.get_database_backend(),
            format!("SELECT COUNT(*) AS n FROM {table}"),
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get::<i64>("", "n").unwrap()
}

async fn insert_reports_duplicates_and_conflicts(db: TestDb) {
    let s = &db.store;
    let first = s
        .insert(vec![
            node("198.51.100.1", "admin", "a"),
            node("198.51.100.2", "admin", "b"),
        ])
        .await
        .unwrap();
    let (InsertOutcome::Inserted(a), InsertOutcome::Inserted(b)) = (first[0], first[1]) else {
        panic!("{first:?}")
    };
    let second = s
        .insert(vec![
            node("198.51.100.1", "admin", "a"),     // duplicate of stored
            node("198.51.100.2", "admin", "other"), // conflict with stored
            node("198.51.100.3", "admin", "c"),     // new
            node("198.51.100.3", "admin", "c"),     // duplicate within the batch
            node("198.51.100.3", "admin", "zz"),    // conflict within the batch
            node("198.51.100.3", "root", "c"),      // another login: another node
        ])
        .await
        .unwrap();
    assert_eq!(second[0], InsertOutcome::Duplicate(a));
    assert_eq!(second[1], InsertOutcome::Conflict(b));
    let InsertOutcome::Inserted(c) = second[2] else {
        panic!("{second:?}")
    };
    assert_eq!(second[3], InsertOutcome::Duplicate(c));
    assert_eq!(second[4], InsertOutcome::Conflict(c));
    assert!(matches!(second[5], InsertOutcome::Inserted(_)));
    assert_eq!(count(&db, "nodes").await, 4);
    let got = s.get(c).await.unwrap().unwrap();
    assert_eq!(
        (got.ip.to_string(), got.port, got.login.as_str()),
        ("198.51.100.3".into(), 1723, "admin")
    );
    assert_eq!(got.password.expose(), "c");
    assert_eq!(got.status, Status::NotTested);
    assert!(s.get(NodeId(999_999)).await.unwrap().is_none());
}

async fn apply_writes_status_evidence_and_history(db: TestDb) {
    let s = &db.store;
    let id = seed(s, 1).await[0];
    let t0 = Utc::now();
    let light = Outcome::success(Level::Light).with_measurements(Measurements {
        handshake_ms: Some(12.5),
        pptp: Some(PptpIdentity {
            protocol_version: 0x0100,
            hostname: "local".into(),
            vendor: "linux".into(),
            firmware: 1,
        }),
        ..Default::default()
    });
    let a = s
        .apply(id, Event::Tested(light), ApplyContext { job: None, at: t0 })
        .await
        .unwrap();
    assert_eq!((a.from, a.to), (Status::NotTested, Status::PingLight));
    let n = s.get(id).await.unwrap().unwrap();
    assert_eq!(n.status, Status::PingLight);
    assert_eq!(n.ping_ms, Some(12.5));
    assert_eq!(n.pptp.as_ref().unwrap().vendor, "linux");
    assert_eq!(
        n.last_checked_at.unwrap().timestamp_millis(),
        t0.timestamp_millis()
    );
    assert_eq!(n.last_error, None);

    let rejected = failed(
        Level::Light,
        Failure::AuthRejected {
            code: Some(691),
            message: "denied".into(),
        },
    );
    s.apply(id, rejected, ctx()).await.unwrap();
    let n = s.get(id).await.unwrap().unwrap();
    assert_eq!(n.status, Status::AuthFailed);
    assert_eq!(n.consecutive_failures, 1);
    assert!(n.last_error.as_deref().unwrap().contains("691"));

    let speed = Outcome::success(Level::Speed).with_measurements(Measurements {
        speed_down_mbps: Some(42.0),
        speed_up_mbps: Some(7.0),
        ..Default::default()
    });
    s.apply(id, Event::Tested(speed), ctx()).await.unwrap();
    s.apply(id, Event::ServiceStarted(endpoint(10800)), ctx())
        .await
        .unwrap();
    let n = s.get(id).await.unwrap().unwrap();
    assert_eq!(n.status, Status::Online);
    assert_eq!(n.consecutive_failures, 0);
    assert_eq!(n.speed_down_mbps, Some(42.0));
    assert_eq!(n.service.as_ref().unwrap().port, 10800);
    assert_eq!(
        n.service.as_ref().unwrap().password.expose(),
        "svc-password-123456"
    );
    // A listing reads the node exactly as `get` does (listings decode rows by
    // column position, `get` by column name), every column filled in.
    s.update_meta(
        id,
        NodeMeta {
            provider: Some("prov".into()),
            country: Some("DE".into()),
            state: Some("BE".into()),
            city: Some("Berlin".into()),
            zipcode: Some("10115".into()),
            comment: Some("c".into()),
        },
    )
    .await
    .unwrap();
    s.set_service_wanted(&NodeFilter::ids([id]), true)
        .await
        .unwrap();
    let n = s.get(id).await.unwrap().unwrap();
    let listed = s
        .list_page(&NodeFilter::ids([id]), Page::default())
        .await
        .unwrap();
    assert_eq!(listed, vec![n]);

    let h = s.history(id).await.unwrap();
    let path: Vec<_> = h.iter().map(|r| (r.from, r.to.unwrap(), r.event)).collect();
    assert_eq!(
        path,
        vec![
            (
                Status::NotTested,
                Status::PingLight,
                HistoryEvent::Applied(EventKind::Tested)
            ),
            (
                Status::PingLight,
                Status::AuthFailed,
                HistoryEvent::Applied(EventKind::Tested)
            ),
            (
                Status::AuthFailed,
                Status::SpeedOk,
                HistoryEvent::Applied(EventKind::Tested)
            ),
            (
                Status::SpeedOk,
                Status::Online,
                HistoryEvent::Applied(EventKind::ServiceStarted)
            ),
        ]
    );
    assert_eq!(h[1].reached, Some(Level::Light));
    assert!(matches!(
        h[1].failure,
        Some(Failure::AuthRejected {
            code: Some(691),
            ..
        })
    ));
}

async fn refused_event_writes_nothing(db: TestDb) {
    let s = &db.store;
    let id = seed(s, 1).await[0];
    s.apply(id, tested(Level::Auth), ctx()).await.unwrap();
    let before = s.get(id).await.unwrap().unwrap();
    let history_before = count(&db, "status_history").await;
    let err = s
        .apply(id, Event::ServiceStarted(endpoint(1)), ctx())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Refused(_)), "{err}");
    assert!(err.to_string().contains("connexa test speed"), "{err}");
    let err = s
        .apply(id, Event::ServiceStartFailed("nope".into()), ctx())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Refused(_)));
    assert_eq!(s.get(id).await.unwrap().unwrap(), before);
    assert_eq!(count(&db, "status_history").await, history_before);
    let missing = s
        .apply(NodeId(424242), tested(Level::Light), ctx())
        .await
        .unwrap_err();
    assert!(matches!(missing, StoreError::NotFound(NodeId(424242))));
}

async fn failed_retest_of_verified_node_records_but_keeps_status(db: TestDb) {
    let s = &db.store;
    let id = seed(s, 1).await[0];
    s.apply(id, tested(Level::Speed), ctx()).await.unwrap();
    for _ in 0..3 {
        let a = s
            .apply(id, failed(Level::None, Failure::ConnectTimeout), ctx())
            .await
            .unwrap();
        assert_eq!(a.to, Status::SpeedOk);
    }
    s.apply(
        id,
        Event::ServiceStartFailed("bind: address in use".into()),
        ctx(),
    )
    .await
    .unwrap();
    let n = s.get(id).await.unwrap().unwrap();
    assert_eq!(n.status, Status::SpeedOk);
    assert_eq!(n.consecutive_failures, 4);
    assert_eq!(n.last_error.as_deref(), Some("bind: address in use"));
    // Health checks never demote either, and quiet ones leave no history rows.
    let rows = s.history(id).await.unwrap().len();
    s.apply(id, Event::HealthFailed("down".into()), ctx())
        .await
        .unwrap();
    s.apply(id, Event::HealthOk, ctx()).await.unwrap();
    assert_eq!(s.history(id).await.unwrap().len(), rows);
    assert_eq!(s.get(id).await.unwrap().unwrap().status, Status::SpeedOk);
}

async fn filters_list_and_delete_select_the_same_rows(db: TestDb) {
    let s = &db.store;
    let rows = vec![
        node_with("203.0.113.1", "admin", "United States", "Texas", "Austin"),
        node_with("203.0.113.2", "admin", "United States", "Texas", "Dallas"),
        node_with(
            "203.0.113.3",
            "root",
            "United States",
            "California",
            "Pasadena",
        ),
        node_with("198.51.100.9", "guest", "Germany", "Bavaria", "Munich"),
    ];
    let ids: Vec<NodeId> = s
        .insert(rows)
        .await
        .unwrap()
        .into_iter()
        .map(|o| match o {
            InsertOutcome::Inserted(id) => id,
            o => panic!("{o:?}"),
        })
        .collect();
    s.apply(ids[0], tested(Level::Speed), ctx()).await.unwrap();
    s.apply(ids[1], tested(Level::Light), ctx()).await.unwrap();
    s.apply(ids[0], Event::ServiceStarted(endpoint(2000)), ctx())
        .await
        .unwrap();

    let all = Page {
        limit: 100,
        ..Page::default()
    };
    let list = |f: NodeFilter| async move {
        let p = s.list(&f, all).await.unwrap();
        assert_eq!(p.total as usize, p.nodes.len());
        p.nodes.iter().map(|n| n.id).collect::<Vec<_>>()
    };
    assert_eq!(
        list(NodeFilter {
            state: Some("texas".into()),
            ..Default::default()
        })
        .await,
        vec![ids[0], ids[1]]
    );
    assert_eq!(
        list(NodeFilter {
            ip: Some("203.0.113".into()),
            login: Some("ROOT".into()),
            ..Default::default()
        })
        .await,
        vec![ids[2]]
    );
    assert_eq!(
        list(NodeFilter::statuses([Status::Online])).await,
        vec![ids[0]]
    );
    assert_eq!(
        list(NodeFilter {
            has_service: Some(true),
            ..Default::default()
        })
        .await,
        vec![ids[0]]
    );
    assert_eq!(
        list(NodeFilter {
            has_service: Some(false),
            ..Default::default()
        })
        .await,
        vec![ids[1], ids[2], ids[3]]
    );
    assert_eq!(
        list(NodeFilter {
            checked_after: Some(Utc::now() - Duration::minutes(5)),
            ..Default::default()
        })
        .await,
        vec![ids[0], ids[1]]
    );
    assert_eq!(
        list(NodeFilter {
            checked_before: Some(Utc::now() - Duration::minutes(5)),
            ..Default::default()
        })
        .await,
        Vec::<NodeId>::new()
    );
    assert_eq!(
        list(NodeFilter {
            ids: Some(vec![]),
            ..Default::default()
        })
        .await,
        Vec::<NodeId>::new()
    );
    assert_eq!(
        list(NodeFilter::ids([ids[3], ids[1]])).await,
        vec![ids[1], ids[3]]
    );

    // "Delete all matching" deletes exactly what the list shows, and records it.
    let filter = NodeFilter {
        country: Some("united".into()),
        statuses: vec![Status::NotTested, Status::PingLight],
        ..Default::default()
    };
    let shown = list(filter.clone()).await;
    assert_eq!(shown, vec![ids[1], ids[2]]);
    assert_eq!(s.delete(&filter).await.unwrap(), 2);
    assert_eq!(list(NodeFilter::all()).await, vec![ids[0], ids[3]]);
    let h = s.history(ids[1]).await.unwrap();
    let last = h.last().unwrap();
    assert_eq!(
        (last.event, last.from, last.to),
        (HistoryEvent::Deleted, Status::PingLight, None)
    );
    let counts = s.counts().await.unwrap();
    assert_eq!(counts, vec![(Status::NotTested, 1), (Status::Online, 1)]);
}

async fn hostile_filter_text_is_just_text(db: TestDb) {
    let s = &db.store;
    seed(s, 3).await;
    for evil in [
        "'; DROP TABLE nodes; --",
        "%",
        "_",
        "\\",
        "' OR '1'='1",
        "10.0.0.%",
    ] {
        let f = NodeFilter {
            login: Some(evil.into()),
            ip: Some(evil.into()),
            ..Default::default()
        };
        let p = s.list(&f, Page::default()).await.unwrap();
        assert_eq!(p.total, 0, "{evil:?} matched rows");
        assert_eq!(s.delete(&f).await.unwrap(), 0);
    }
    assert_eq!(count(&db, "nodes").await, 3);
}

/// A NUL byte once made SQLite read the LIKE pattern as `%` (every node), also
/// for DELETE. Frontends refuse such filters; the store fails closed too.
async fn control_characters_in_a_filter_match_nothing(db: TestDb) {
    let s = &db.store;
    seed(s, 4).await;
    for evil in ["\0", "\u{1b}[2J", "1\n", "\u{7f}"] {
        let f = NodeFilter {
            ip: Some(evil.to_owned()),
            ..Default::default()
        };
        assert!(f.validate().is_err(), "{evil:?} passes validation");
        assert_eq!(
            s.list(&f, Page::default()).await.unwrap().total,
            0,
            "{evil:?}"
        );
        assert_eq!(s.delete(&f).await.unwrap(), 0, "{evil:?} deleted nodes");
        let job = s
            .create_job(
                JobSpec {
                    kind: JobKind::Light,
                    filter: f,
                    options: serde_json::json!({}),
                    deadline: None,
                },
                Utc::now(),
            )
            .await
            .unwrap();
        assert_eq!(job.total, 0, "{evil:?} selected nodes for a job");
    }
    assert_eq!(count(&db, "nodes").await, 4);
}

/// SQLite allows 32,766 bind parameters per statement and PostgreSQL 65,535:
/// an id list is bound as one parameter, so any length works everywhere.
async fn a_hundred_thousand_ids_make_one_job_and_one_delete(db: TestDb) {
    let s = &db.store;
    let ids = seed(s, 100_000).await;
    // Every other id, plus ids that do not exist.
    let mut wanted: Vec<NodeId> = ids.iter().copied().step_by(2).collect();
    let half = wanted.len() as u64;
    wanted.extend((0..50_000).map(|i| NodeId(10_000_000 + i)));
    let f = NodeFilter::ids(wanted.iter().copied());
    assert_eq!(s.list(&f, Page::default()).await.unwrap().total, half);
    let job = s
        .create_job(
            JobSpec {
                kind: JobKind::Light,
                filter: NodeFilter::ids(ids.iter().copied()),
                options: serde_json::json!({}),
                deadline: None,
            },
            Utc::now(),
        )
        .await
        .unwrap();
    assert_eq!(job.total, 100_000);
    assert_eq!(s.set_service_wanted(&f, true).await.unwrap(), half);
    assert_eq!(s.delete(&f).await.unwrap(), half);
    assert_eq!(count(&db, "nodes").await, 50_000);
}

async fn pagination_is_stable_and_total_is_right(db: TestDb) {
    let s = &db.store;
    let ids = seed(s, 57).await;
    let mut seen = Vec::new();
    for page in 1..=6 {
        let p = s
            .list(&NodeFilter::all(), Page::number(page, 10))
            .await
            .unwrap();
        assert_eq!(p.total, 57);
        seen.extend(p.nodes.iter().map(|n| n.id));
    }
    assert_eq!(seen, ids);
    let desc = s
        .list(
            &NodeFilter::all(),
            Page {
                limit: 3,
                sort: SortKey::Ip,
                desc: true,
                ..Page::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(desc.nodes.len(), 3);
    assert!(desc.nodes[0].ip.to_string() >= desc.nodes[1].ip.to_string());
}

async fn cursor_pages_follow_ids_and_keep_the_filter_total(db: TestDb) {
    let s = &db.store;
    let ids = seed(s, 57).await;
    // user1, user10..user19: 11 nodes, spread over the id range.
    let filter = NodeFilter {
        login: Some("user1".into()),
        ..Default::default()
    };
    let want: Vec<NodeId> = [1, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]
        .iter()
        .map(|&i| ids[i])
        .collect();
    for desc in [false, true] {
        let mut seen = Vec::new();
        let mut page = Page {
            limit: 4,
            desc,
            ..Page::default()
        };
        loop {
            let p = s.list(&filter, page).await.unwrap();
            assert_eq!(p.total, 11, "the total is the filter's, not what is left");
            assert_eq!(s.list_page(&filter, page).await.unwrap(), p.nodes);
            seen.extend(p.nodes.iter().map(|n| n.id));
            match page.next_after(&p.nodes) {
                Some(last) => page.after = Some(last),
                None => break,
            }
        }
        let mut expect = want.clone();
        if desc {
            expect.reverse();
        }
        assert_eq!(seen, expect, "desc={desc}");
    }
    // The cursor need not be a stored id, nor one the filter matches.
    s.delete(&NodeFilter::ids([ids[12]])).await.unwrap();
    let p = s
        .list(&filter, Page::cursor(Some(ids[12]), 2))
        .await
        .unwrap();
    assert_eq!(
        p.nodes.iter().map(|n| n.id).collect::<Vec<_>>(),
        vec![ids[13], ids[14]]
    );
    assert_eq!(p.total, 10);
    let p = s
        .list(&NodeFilter::all(), Page::cursor(Some(ids[56]), 10))
        .await
        .unwrap();
    assert_eq!((p.nodes.len(), p.total), (0, 56));
    let back = Page {
        desc: true,
        ..Page::cursor(Some(ids[3]), 10)
    };
    let p = s.list_page(&NodeFilter::all(), back).await.unwrap();
    assert_eq!(
        p.iter().map(|n| n.id).collect::<Vec<_>>(),
        vec![ids[2], ids[1], ids[0]]
    );
}

async fn cursor_needs_id_sort_and_no_offset(db: TestDb) {
    let s = &db.store;
    let ids = seed(s, 3).await;
    let by_ip = Page {
        sort: SortKey::Ip,
        ..Page::cursor(Some(ids[0]), 10)
    };
    let e = s.list(&NodeFilter::all(), by_ip).await.unwrap_err();
    assert!(
        matches!(e, StoreError::Page(PageError::AfterNeedsIdSort)),
        "{e:?}"
    );
    assert_eq!(e.to_string(), "cursor pagination (after) needs sort=id");
    let e = s.list_page(&NodeFilter::all(), by_ip).await.unwrap_err();
    assert!(
        matches!(e, StoreError::Page(PageError::AfterNeedsIdSort)),
        "{e:?}"
    );
    let with_offset = Page {
        offset: 1,
        ..Page::cursor(Some(ids[0]), 10)
    };
    let e = s.list(&NodeFilter::all(), with_offset).await.unwrap_err();
    assert!(
        matches!(e, StoreError::Page(PageError::AfterWithOffset)),
        "{e:?}"
    );
    // Without a cursor, every sort key and offset still works.
    let p = Page {
        sort: SortKey::Ip,
        offset: 1,
        ..Page::default()
    };
    assert_eq!(s.list(&NodeFilter::all(), p).await.unwrap().nodes.len(), 2);
}

async fn cursor_walk_neither_skips_nor_repeats_while_nodes_change(db: TestDb) {
    use connexa_core::ops::NodeWalk;
    let s = &db.store;
    let ids = seed(s, 25).await;
    // Between the first and the second page: a node already read and one not
    // yet read are deleted, and a node is added.
    let change = || async {
        assert_eq!(
            s.delete(&NodeFilter::ids([ids[0], ids[15]])).await.unwrap(),
            2
        );
        match s
            .insert(vec![node("192.0.2.77", "late", "pw")])
            .await
            .unwrap()[..]
        {
            [InsertOutcome::Inserted(id)] => id,
            ref o => panic!("{o:?}"),
        }
    };

    let mut walk = NodeWalk::new(NodeFilter::all()).with_limit(10);
    let mut seen: Vec<NodeId> = walk
        .next_page(s)
        .await
        .unwrap()
        .unwrap()
        .iter()
        .map(|n| n.id)
        .collect();
    let late = change().await;
    while let Some(page) = walk.next_page(s).await.unwrap() {
        seen.extend(page.iter().map(|n| n.id));
    }
    // Every node that existed for the whole walk exactly once, in id order,
    // the deleted unread one not at all, the added one (its id is ahead) once.
    let mut expect: Vec<NodeId> = ids.iter().copied().filter(|&i| i != ids[15]).collect();
    expect.push(late);
    assert_eq!(seen, expect);

    // The same change under an offset walk skips a node that was there all
    // along (ids[10] moves onto the page already read): what the cursor fixes.
    let s = &db.store;
    let now: Vec<NodeId> = s
        .list_page(&NodeFilter::all(), Page::cursor(None, 100))
        .await
        .unwrap()
        .iter()
        .map(|n| n.id)
        .collect();
    let first = s
        .list_page(&NodeFilter::all(), Page::number(1, 10))
        .await
        .unwrap();
    s.delete(&NodeFilter::ids([first[0].id])).await.unwrap();
    let second = s
        .list_page(&NodeFilter::all(), Page::number(2, 10))
        .await
        .unwrap();
    assert!(
        !second.iter().chain(&first).any(|n| n.id == now[10]),
        "offset paging no longer skips: the test above proves nothing"
    );
}

async fn service_wanted_and_meta_never_touch_status(db: TestDb) {
    let s = &db.store;
    let id = seed(s, 1).await[0];
    s.apply(id, tested(Level::Speed), ctx()).await.unwrap();
    assert_eq!(
        s.set_service_wanted(&NodeFilter::ids([id]), true)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        s.set_service_wanted(&NodeFilter::ids([id]), true)
            .await
            .unwrap(),
        0
    );
    s.update_meta(
        id,
        NodeMeta {
            comment: Some("fast one".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let n = s.get(id).await.unwrap().unwrap();
    assert!(n.service_wanted);
    assert_eq!(n.meta.comment.as_deref(), Some("fast one"));
    assert_eq!(n.status, Status::SpeedOk);
    assert!(matches!(
        s.update_meta(NodeId(777_777), NodeMeta::default()).await,
        Err(StoreError::NotFound(_))
    ));
}

async fn light_job(s: &connexa_core::store::SqlStore, at: chrono::DateTime<Utc>) -> Job {
    s.create_job(
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

/// The claim token fences results: each claim of an item, however often
/// it is taken back after a lease ran out, carries a token no earlier claim
/// had (and a non-negative one).
async fn every_claim_of_an_item_gets_a_token_of_its_own(db: TestDb) {
    let s = &db.store;
    seed(s, 1).await;
    let mut at = Utc::now();
    let job = light_job(s, at).await;
    let lease = std::time::Duration::from_millis(10);
    let mut tokens = std::collections::HashSet::new();
    for round in 0..24 {
        let claimed = s.claim_items(job.id, "w", 1, at, lease).await.unwrap();
        assert_eq!(
            claimed.len(),
            1,
            "round {round}: the item is claimable again"
        );
        assert!(claimed[0].token >= 0, "{}", claimed[0].token);
        assert!(
            tokens.insert(claimed[0].token),
            "round {round}: token {} came back",
            claimed[0].token
        );
        at += Duration::milliseconds(11);
    }
}

/// What a claim could take: pending items and running items whose lease
/// ran out, not items under a live lease nor ended ones.
async fn claimable_counts_pending_and_expired_leases(db: TestDb) {
    let s = &db.store;
    seed(s, 5).await;
    let now = Utc::now();
    let job = light_job(s, now).await;
    assert_eq!(s.claimable(job.id, now).await.unwrap(), 5);
    let lease = std::time::Duration::from_secs(30);
    let claimed = s.claim_items(job.id, "w", 2, now, lease).await.unwrap();
    assert_eq!(s.claimable(job.id, now).await.unwrap(), 3);
    let later = now + Duration::seconds(31);
    assert_eq!(
        s.claimable(job.id, later).await.unwrap(),
        5,
        "leases ran out"
    );
    s.finish_items(vec![ItemResult {
        item: claimed[0].item,
        token: claimed[0].token,
        state: ItemState::Ok,
        event: None,
        enrichment: None,
        detail: None,
        at: now,
    }])
    .await
    .unwrap();
    assert_eq!(
        s.claimable(job.id, later).await.unwrap(),
        4,
        "a done item is not"
    );
    s.cancel_pending(job.id, now).await.unwrap();
    assert_eq!(s.claimable(job.id, now).await.unwrap(), 0);
    assert_eq!(s.claimable(job.id, later).await.unwrap(), 1);
}

/// Commits of one job are serialised (Postgres: the job row is locked
/// first), so each gets a commit number of its own: 8 writers committing
/// 160 items one by one at once, and every number 1..=160 is used once —
/// what lets the event stream resume "after seq N" without missing any.
async fn concurrent_commits_of_one_job_get_distinct_commit_numbers(db: TestDb) {
    let s = &db.store;
    seed(s, 160).await;
    let now = Utc::now();
    let job = light_job(s, now).await;
    let claimed = s
        .claim_items(job.id, "w", 160, now, std::time::Duration::from_secs(300))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 160);
    let writers = claimed.chunks(20).map(|chunk| async move {
        for c in chunk {
            let done = s
                .finish_items(vec![ItemResult {
                    item: c.item,
                    token: c.token,
                    state: ItemState::Ok,
                    event: None,
                    enrichment: None,
                    detail: None,
                    at: now,
                }])
                .await
                .unwrap();
            assert!(done[0].written);
        }
    });
    futures::future::join_all(writers).await;
    let items = s
        .items_since(job.id, ItemCursor::default(), 1000)
        .await
        .unwrap();
    let mut seqs: Vec<u64> = items.iter().map(|i| i.seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=160).collect::<Vec<u64>>());
}

/// A result committed while another transaction is taking its item over
/// (what a reclaim after an expired lease writes: another holder, another
/// token) waits for that transaction, then sees the new token and is
/// refused: its event is not applied, so the item's next holder cannot
/// apply a second one.
async fn a_commit_racing_a_reclaim_of_its_item_is_refused_and_applies_nothing(db: TestDb) {
    use sea_orm::TransactionTrait;
    let s = &db.store;
    let id = seed(s, 1).await[0];
    let now = Utc::now();
    let job = light_job(s, now).await;
    let c = s
        .claim_items(job.id, "w1", 1, now, std::time::Duration::from_secs(30))
        .await
        .unwrap()
        .remove(0);
    let reclaim = s.connection().begin().await.unwrap();
    reclaim
        .execute_unprepared(&format!(
            "UPDATE job_items SET worker = 'w2', claim_token = {} WHERE id = {}",
            c.token ^ 1,
            c.item.0
        ))
        .await
        .unwrap();
    let finish = s.finish_items(vec![ItemResult {
        item: c.item,
        token: c.token,
        state: ItemState::Ok,
        event: Some(tested(Level::Speed)),
        enrichment: None,
        detail: None,
        at: now,
    }]);
    let commit_later = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        reclaim.commit().await.unwrap();
    };
    let (done, ()) = tokio::join!(finish, commit_later);
    let done = done.unwrap();
    assert!(!done[0].written, "{done:?}");
    let n = s.get(id).await.unwrap().unwrap();
    assert_eq!(n.status, Status::NotTested, "no event was applied");
    assert!(s.history(id).await.unwrap().is_empty());
}

async fn jobs_claim_finish_progress_cancel_requeue(db: TestDb) {
    let s = &db.store;
    let ids = seed(s, 10).await;
    let now = Utc::now();
    let job = s
        .create_job(
            JobSpec {
                kind: JobKind::Light,
                filter: NodeFilter::all(),
                options: serde_json::json!({"timeout_s": 3}),
                deadline: None,
            },
            now,
        )
        .await
        .unwrap();
    assert_eq!(
        (job.total, job.state, job.kind),
        (10, JobState::Queued, JobKind::Light)
    );
    assert_eq!(job.options["timeout_s"], 3);

    let claimed = s
        .claim_items(job.id, "w1", 4, now, std::time::Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        claimed.iter().map(|c| c.node).collect::<Vec<_>>(),
        ids[..4].to_vec()
    );
    assert_eq!(s.job(job.id).await.unwrap().state, JobState::Running);
    let p = s.progress(job.id).await.unwrap();
    assert_eq!((p.total, p.pending, p.running, p.done()), (10, 6, 4, 0));

    let results: Vec<ItemResult> = claimed
        .iter()
        .enumerate()
        .map(|(i, c)| ItemResult {
            item: c.item,
            token: c.token,
            state: if i == 0 {
                ItemState::Failed
            } else {
                ItemState::Ok
            },
            event: Some(if i == 0 {
                failed(Level::None, Failure::Refused)
            } else {
                tested(Level::Light)
            }),
            enrichment: None,
            detail: None,
            at: now,
        })
        .collect();
    let done = s.finish_items(results.clone()).await.unwrap();
    assert!(done.iter().all(|d| d.written));
    assert_eq!(done[1].applied.unwrap().to, Status::PingLight);
    // Finishing the same items again changes nothing.
    let again = s.finish_items(results).await.unwrap();
    assert!(again.iter().all(|d| !d.written));
    assert_eq!(s.history(ids[1]).await.unwrap().len(), 1);
    assert_eq!(s.history(ids[1]).await.unwrap()[0].job, Some(job.id));

    let p = s.progress(job.id).await.unwrap();
    assert_eq!((p.ok, p.failed, p.pending), (3, 1, 6));
    let recent = s.recent_items(job.id, 2).await.unwrap();
    assert_eq!(recent.len(), 2);

    // A crash: two items were running; a restart puts them back.
    let running = s
        .claim_items(job.id, "w2", 2, now, std::time::Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(running.len(), 2);
    assert_eq!(s.requeue_running(job.id).await.unwrap(), 2);
    // A service start refused by the table ends the item as failed, with the reason.
    let more = s
        .claim_items(job.id, "w3", 1, now, std::time::Duration::from_secs(30))
        .await
        .unwrap();
    let fin = s
        .finish_items(vec![ItemResult {
            item: more[0].item,
            token: more[0].token,
            state: ItemState::Ok,
            event: Some(Event::ServiceStarted(endpoint(3))),
            enrichment: None,
            detail: None,
            at: now,
        }])
        .await
        .unwrap();
    assert_eq!(fin[0].state, ItemState::Failed);
    assert_eq!(s.cancel_pending(job.id, now).await.unwrap(), 5);
    let p = s.progress(job.id).await.unwrap();
    assert!(p.is_complete(), "{p:?}");
    assert_eq!((p.ok, p.failed, p.cancelled), (3, 2, 5));
    assert_eq!(p.percent(), 100.0);
    s.set_job_state(job.id, JobState::Cancelled, now)
        .await
        .unwrap();
    assert!(s.unfinished_jobs().await.unwrap().is_empty());
    assert_eq!(
        s.jobs(10).await.unwrap()[0]
            .finished_at
            .map(|t| t.timestamp_millis()),
        Some(now.timestamp_millis())
    );
    assert!(matches!(
        s.job(JobId(9999)).await,
        Err(StoreError::JobNotFound(_))
    ));
}

async fn group_commit_applies_in_order_and_isolates_failures(db: TestDb) {
    let s = &db.store;
    let ids = seed(s, 3).await;
    let reqs = vec![
        ApplyRequest {
            node: ids[0],
            event: tested(Level::Speed),
            ctx: ctx(),
        },
        ApplyRequest {
            node: ids[0],
            event: Event::ServiceStarted(endpoint(9)),
            ctx: ctx(),
        },
        ApplyRequest {
            node: ids[1],
            event: Event::ServiceStarted(endpoint(9)),
            ctx: ctx(),
        },
        ApplyRequest {
            node: NodeId(55_555),
            event: tested(Level::Light),
            ctx: ctx(),
        },
        ApplyRequest {
            node: ids[2],
            event: tested(Level::Auth),
            ctx: ctx(),
        },
    ];
    let r = s.apply_many(reqs).await.unwrap();
    assert_eq!(r[0].as_ref().unwrap().to, Status::SpeedOk);
    assert_eq!(r[1].as_ref().unwrap().to, Status::Online);
    assert!(matches!(r[2], Err(StoreError::Refused(_))));
    assert!(matches!(r[3], Err(StoreError::NotFound(_))));
    assert_eq!(r[4].as_ref().unwrap().to, Status::PingOk);
    assert_eq!(s.get(ids[0]).await.unwrap().unwrap().status, Status::Online);
    assert_eq!(
        s.get(ids[1]).await.unwrap().unwrap().status,
        Status::NotTested
    );
    assert_eq!(s.history(ids[0]).await.unwrap().len(), 2);
}

async fn service_wanted_filter_selects_the_desired_state(db: TestDb) {
    let s = &db.store;
    let ids = seed(s, 4).await;
    s.set_service_wanted(&NodeFilter::ids([ids[1], ids[3]]), true)
        .await
        .unwrap();
    let list = |wanted: bool| async move {
        let f = NodeFilter {
            service_wanted: Some(wanted),
            ..NodeFilter::all()
        };
        let page = s.list(&f, Page::default()).await.unwrap();
        (
            page.total,
            page.nodes.iter().map(|n| n.id).collect::<Vec<_>>(),
        )
    };
    assert_eq!(list(true).await, (2, vec![ids[1], ids[3]]));
    assert_eq!(list(false).await, (2, vec![ids[0], ids[2]]));
    // The same filter drives bulk updates: clearing it for the wanted ones.
    let f = NodeFilter {
        service_wanted: Some(true),
        ..NodeFilter::all()
    };
    assert_eq!(s.set_service_wanted(&f, false).await.unwrap(), 2);
    assert_eq!(list(true).await, (0, vec![]));
}

/// Issue 23: `?mode=ro` once failed even for read-only work (the store set the
/// journal mode and ran migrations, both writes). A current database opened
/// read-only serves reads and refuses writes; an outdated one says why.
#[tokio::test]
async fn a_read_only_sqlite_database_serves_reads_and_refuses_writes() {
    use connexa_core::store::SqlStore;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ro.db");
    let rw = SqlStore::connect(&format!("sqlite://{}?mode=rwc", path.display()))
        .await
        .unwrap();
    seed(&rw, 3).await;
    drop(rw);
    let ro = SqlStore::connect(&format!("sqlite://{}?mode=ro", path.display()))
        .await
        .expect("a current database opens read-only");
    assert_eq!(
        ro.list(&NodeFilter::all(), Page::default())
            .await
            .unwrap()
            .total,
        3
    );
    assert_eq!(
        ro.counts()
            .await
            .unwrap()
            .iter()
            .map(|(_, n)| n)
            .sum::<u64>(),
        3
    );
    assert!(ro.insert(vec![node("192.0.2.1", "u", "p")]).await.is_err());
    assert!(ro.delete(&NodeFilter::all()).await.is_err());
    assert_eq!(
        ro.list(&NodeFilter::all(), Page::default())
            .await
            .unwrap()
            .total,
        3
    );
    // An empty file has no schema: a clear refusal, not a write.
    let empty = dir.path().join("empty.db");
    std::fs::write(&empty, b"").unwrap();
    let Err(e) = SqlStore::connect(&format!("sqlite://{}?mode=ro", empty.display())).await else {
        panic!("an empty database cannot be used read-only");
    };
    assert!(e.to_string().contains("read-only"), "{e}");
}
