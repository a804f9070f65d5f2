//! `POST /api/v1/nodes` (checked as an import row), `POST /api/v1/jobs/cancel`
//! and `GET /api/v1/nodes/values`, in process against a temporary SQLite file.

use axum::http::{Method, StatusCode};
use connexa_core::domain::NodeFilter;
use connexa_core::engine::{JobOptions, queue_job};
use connexa_core::ports::{JobKind, JobState, NodeStore};
use serde_json::json;

mod common;
use common::api;

#[tokio::test]
async fn a_node_added_by_hand_is_refused_for_what_an_import_refuses_with_its_message() {
    let a = api().await;
    // What the import says about the same values.
    let r = a
        .import("127.0.0.300:admin:pw\nIp: 127.0.0.8\nPort: 70000\nLogin: a\nPass: b\n")
        .await;
    let report = r.json();
    let errors = report["summary"]["errors"]
        .as_array()
        .or_else(|| report["errors"].as_array())
        .unwrap_or_else(|| panic!("{report}"))
        .clone();
    assert_eq!(errors.len(), 2, "{report}");
    for (body, reason) in [
        (
            json!({"ip": "127.0.0.300", "login": "admin", "password": "pw"}),
            &errors[0]["reason"],
        ),
        (
            json!({"ip": "127.0.0.8", "port": 70000, "login": "a", "password": "b"}),
            &errors[1]["reason"],
        ),
    ] {
        let p = a
            .send_json(Method::POST, "/api/v1/nodes", body)
            .await
            .problem(422, "invalid-body");
        assert_eq!(&p["detail"], reason);
    }
    // Added: codes expanded as an import expands them; the password masked.
    let r = a
        .send_json(
            Method::POST,
            "/api/v1/nodes",
            json!({"ip": "127.0.0.9:1724", "login": "admin", "password": "s3cret",
                   "country": "US", "state": "TX", "comment": "from Bob"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let n = r.json();
    assert_eq!(n["port"], 1724);
    assert_eq!(n["password"], "***");
    assert_eq!(
        (&n["country"], &n["state"]),
        (&json!("United States"), &json!("Texas"))
    );
    assert!(n.get("job").is_none(), "{n}");
    let id = n["id"].as_i64().unwrap();
    // The duplicate and the conflict name the stored node, with the import's words.
    let dup = a
        .send_json(
            Method::POST,
            "/api/v1/nodes",
            json!({"ip": "127.0.0.9", "port": 1724, "login": "admin", "password": "s3cret"}),
        )
        .await
        .problem(409, "conflict");
    assert_eq!(dup["node"], id);
    assert!(
        dup["detail"]
            .as_str()
            .unwrap()
            .starts_with(&format!("duplicate of stored node {id}")),
        "{dup}"
    );
    let conflict = a
        .send_json(
            Method::POST,
            "/api/v1/nodes",
            json!({"ip": "127.0.0.9", "port": 1724, "login": "admin", "password": "other"}),
        )
        .await
        .problem(409, "conflict");
    assert!(
        conflict["detail"].as_str().unwrap().starts_with(&format!(
            "conflict: same ip, port and login as stored node {id}"
        )),
        "{conflict}"
    );
    // With a test: a job on exactly that node.
    let r = a
        .send_json(
            Method::POST,
            "/api/v1/nodes",
            json!({"ip": "127.0.0.10", "login": "root", "password": "pw", "test": "light"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let n = r.json();
    let job = n["job"].as_i64().unwrap_or_else(|| panic!("{n}"));
    let j = a.get(&format!("/api/v1/jobs/{job}")).await.json();
    assert_eq!(
        (&j["kind"], &j["total"]),
        (&json!("light"), &json!(1)),
        "{j}"
    );
    a.send_json(
        Method::POST,
        "/api/v1/nodes",
        json!({"ip": "127.0.0.11", "login": "root", "password": "pw", "test": "speed"}),
    )
    .await
    .problem(422, "invalid-body");
    assert_eq!(a.get("/api/v1/nodes").await.json()["total"], 2);
}

#[tokio::test]
async fn cancel_all_cancels_every_unfinished_job_and_says_which() {
    let a = api().await;
    a.import("127.0.0.5:a:p\n127.0.0.6:b:p\n127.0.0.7:c:p\n")
        .await;
    // Queued, not run here: nothing can finish them but a cancellation.
    let mut ids = Vec::new();
    for _ in 0..2 {
        let job = queue_job(
            a.store.as_ref(),
            JobKind::Light,
            NodeFilter::all(),
            JobOptions::default(),
        )
        .await
        .unwrap();
        ids.push(job.id.0);
    }
    let r = a
        .send_json(Method::POST, "/api/v1/jobs/cancel", json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json(), json!({"cancelled": ids}));
    for id in &ids {
        let job = a.store.job(connexa_core::ports::JobId(*id)).await.unwrap();
        assert_eq!(job.state, JobState::Cancelled);
        let p = a.store.progress(job.id).await.unwrap();
        assert_eq!((p.cancelled, p.pending), (3, 0));
    }
    let again = a
        .send_json(Method::POST, "/api/v1/jobs/cancel", json!({}))
        .await;
    assert_eq!(again.json(), json!({"cancelled": []}));
    a.get("/api/v1/jobs/cancel")
        .await
        .problem(405, "method-not-allowed");
}

#[tokio::test]
async fn field_values_are_distinct_counted_bounded_and_refuse_hostile_input() {
    let a = api().await;
    a.import(
        "127.0.0.5:a:p:US:Texas:75001\n127.0.0.6:a:p:US:California:90001\n\
         127.0.0.7:a:p:DE:Bavaria:80331\n127.0.0.8:a:p:US:Texas:75002\n127.0.0.9:a:p\n",
    )
    .await;
    let v = a.get("/api/v1/nodes/values?field=country").await.json();
    assert_eq!(
        v,
        json!([{"value": "United States", "count": 3}, {"value": "Germany", "count": 1}])
    );
    let v = a
        .get("/api/v1/nodes/values?field=state&prefix=t")
        .await
        .json();
    assert_eq!(v, json!([{"value": "Texas", "count": 2}]));
    let v = a
        .get("/api/v1/nodes/values?field=state&limit=1")
        .await
        .json();
    assert_eq!(v, json!([{"value": "Texas", "count": 2}]));
    // LIKE wildcards in the prefix are text, not patterns.
    let v = a
        .get("/api/v1/nodes/values?field=state&prefix=%25")
        .await
        .json();
    assert_eq!(v, json!([]));
    let p = a
        .get("/api/v1/nodes/values?field=password")
        .await
        .problem(400, "bad-request");
    assert!(
        p["detail"].as_str().unwrap().contains("unknown field"),
        "{p}"
    );
    let p = a
        .get("/api/v1/nodes/values?field=city&prefix=a%00b")
        .await
        .problem(400, "bad-request");
    assert_eq!(p["detail"], "city: control characters are not allowed");
    a.get("/api/v1/nodes/values?field=city&limit=51")
        .await
        .problem(400, "bad-request");
    a.get("/api/v1/nodes/values?field=city&limit=0")
        .await
        .problem(400, "bad-request");
    a.get("/api/v1/nodes/values")
        .await
        .problem(400, "bad-request");
    a.get(&format!(
        "/api/v1/nodes/values?field=city&prefix={}",
        "x".repeat(300)
    ))
    .await
    .problem(400, "bad-request");
}

#[tokio::test]
async fn retest_failed_starts_a_job_on_the_failed_nodes_with_twice_the_budget() {
    let a = api().await;
    // Nothing listens on this port: a light test fails (refused) at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    a.import(&format!("[127.0.0.5]:{port}:a:p\n[127.0.0.6]:{port}:b:p\n"))
        .await;
    let r = a
        .send_json(
            Method::POST,
            "/api/v1/jobs",
            json!({"kind": "light", "all": true}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let job = r.json()["id"].as_i64().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let j = a.get(&format!("/api/v1/jobs/{job}")).await.json();
        if j["state"] == "done" && j["progress"]["failed"] == 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the job did not end: {j}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let r = a
        .send_json(
            Method::POST,
            &format!("/api/v1/jobs/{job}/retest-failed"),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let v = r.json();
    assert_eq!(
        (&v["kind"], &v["total"]),
        (&json!("light"), &json!(2)),
        "{v}"
    );
    let new = connexa_core::ports::JobId(v["id"].as_i64().unwrap());
    let stored = a.store.job(new).await.unwrap();
    // Twice the server's default budget (5 s in these tests).
    assert_eq!(
        stored.options["node_timeout_ms"], 10_000,
        "{:?}",
        stored.options
    );
    a.send_json(
        Method::POST,
        &format!("/api/v1/jobs/{job}/retest-failed"),
        json!({"node_timeout_secs": 2}),
    )
    .await
    .problem(400, "bad-request");
    a.send_json(Method::POST, "/api/v1/jobs/999/retest-failed", json!({}))
        .await
        .problem(404, "not-found");
    a.send_json(
        Method::POST,
        &format!("/api/v1/jobs/{job}/retest-failed"),
        json!({"timeout": 3}),
    )
    .await
    .problem(422, "invalid-body");
}
