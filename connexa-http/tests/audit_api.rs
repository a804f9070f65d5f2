//! The audit trail over HTTP: every state-changing request leaves exactly one
//! row naming its token and client address, in the same transaction as the
//! change; refused or failed requests and reads leave none; `GET /audit` is
//! admin-only, filters and pages, and never shows a secret.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use axum::http::{Method, StatusCode, header};
use common::{Api, api, api_with, fleet_list};
use connexa_core::domain::{Event, Level, NodeId, Outcome};
use connexa_core::ports::{ApplyContext, NodeStore, Role, TokenScope};
use connexa_http::HttpOptions;
use serde_json::{Value, json};

const FROM: &str = "10.1.2.3:5555";

fn from() -> Option<SocketAddr> {
    Some(FROM.parse().unwrap())
}

/// Sends a request with the test token from [`FROM`].
async fn call(a: &Api, method: Method, uri: &str, body: Option<Value>) -> common::Res {
    let body = body.map(|b| ("application/json", serde_json::to_vec(&b).unwrap()));
    a.req(method, uri, Some(&a.token), body, from()).await
}

/// The rows as (actor, source, action, count), oldest first.
async fn rows(a: &Api) -> Vec<(String, Option<String>, String, Option<i64>)> {
    let mut v: Vec<_> = a
        .store
        .audit_log(1000)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.actor, r.source, r.action, r.count))
        .collect();
    v.reverse();
    v
}

fn row(action: &str, count: Option<i64>) -> (String, Option<String>, String, Option<i64>) {
    (
        "token:test".into(),
        Some("10.1.2.3".into()),
        action.into(),
        count,
    )
}

#[tokio::test]
async fn each_change_over_http_leaves_one_row_with_its_token_and_address() {
    let a = api().await;
    let a = Api {
        state: a.state.clone().with_audit_trail(a.store.as_ref().clone()),
        ..a
    };
    let list = fleet_list(3);
    let r = a
        .req(
            Method::POST,
            "/api/v1/import",
            Some(&a.token),
            Some(("text/plain", list.clone().into_bytes())),
            from(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(rows(&a).await, vec![row("import", Some(3))]);

    // Reads leave nothing.
    for uri in [
        "/api/v1/nodes",
        "/api/v1/nodes/1",
        "/api/v1/stats",
        "/api/v1/audit",
    ] {
        assert_eq!(
            call(&a, Method::GET, uri, None).await.status,
            StatusCode::OK
        );
    }
    assert_eq!(rows(&a).await.len(), 1, "a read was audited");

    let r = call(
        &a,
        Method::POST,
        "/api/v1/jobs",
        Some(json!({"kind": "light", "ids": [1]})),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    // Node 2 is not verified: nothing becomes wanted, only the job is recorded.
    let r = call(
        &a,
        Method::POST,
        "/api/v1/services/start",
        Some(json!({"ids": [2]})),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let r = call(
        &a,
        Method::PATCH,
        "/api/v1/nodes/2",
        Some(json!({"city": "Lyon"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = call(&a, Method::DELETE, "/api/v1/nodes/3", None).await;
    assert!(r.status.is_success(), "{}", r.text());
    // A verified node: wanted (one row), then the job that starts it (one row).
    a.store
        .apply(
            NodeId(1),
            Event::Tested(Outcome::success(Level::Speed)),
            ApplyContext::now(),
        )
        .await
        .unwrap();
    let r = call(
        &a,
        Method::POST,
        "/api/v1/services/start",
        Some(json!({"ids": [1]})),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    assert_eq!(
        rows(&a).await,
        vec![
            row("import", Some(3)),
            row("job_create", Some(1)),
            row("job_create", Some(1)),
            row("node_edit", Some(1)),
            row("delete", Some(1)),
            row("service_want", Some(1)),
            row("job_create", Some(1)),
        ]
    );
    let trail = a.store.audit_log(2).await.unwrap();
    assert!(
        trail[0]
            .target
            .as_deref()
            .unwrap_or("")
            .contains("(service_start)"),
        "{trail:?}"
    );

    // Refused and failed changes leave none.
    let before = rows(&a).await;
    for (method, uri, body) in [
        (Method::DELETE, "/api/v1/nodes/999", None),
        (Method::DELETE, "/api/v1/nodes?status=auth_failed", None),
        (
            Method::PATCH,
            "/api/v1/nodes/1",
            Some(json!({"city": "x\u{7}"})),
        ),
        (
            Method::POST,
            "/api/v1/jobs",
            Some(json!({"kind": "light", "ids": [777]})),
        ),
        (
            Method::POST,
            "/api/v1/services/stop",
            Some(json!({"ids": [777]})),
        ),
    ] {
        let r = call(&a, method.clone(), uri, body).await;
        let nothing = r.status == StatusCode::OK && r.json()["deleted"] == 0;
        assert!(
            r.status.is_client_error() || nothing,
            "{method} {uri}: {}",
            r.text()
        );
    }
    // Duplicates only: the import writes nothing, so it records nothing.
    let r = a
        .req(
            Method::POST,
            "/api/v1/import",
            Some(&a.token),
            Some((
                "text/plain",
                list.lines().next().unwrap().as_bytes().to_vec(),
            )),
            from(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        rows(&a).await,
        before,
        "a change that did not happen was audited"
    );

    // No secret in the trail: not the node passwords, not the token.
    let all = call(&a, Method::GET, "/api/v1/audit?limit=1000", None).await;
    assert_eq!(all.status, StatusCode::OK, "{}", all.text());
    let text = all.text();
    for line in list.lines() {
        let password = line.rsplit(':').next().unwrap();
        assert!(
            !text.contains(password),
            "a password in the audit trail: {text}"
        );
    }
    assert!(!text.contains(&a.token));
}

#[tokio::test]
async fn the_audit_route_filters_pages_and_is_admin_only() {
    let a = api().await;
    let a = Api {
        state: a.state.clone().with_audit_trail(a.store.as_ref().clone()),
        ..a
    };
    for i in 0..5 {
        let r = a.import(&format!("127.9.8.{i}:u:p{i}\n")).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    a.delete("/api/v1/nodes/1").await;

    let page = a.get("/api/v1/audit?limit=2").await.json();
    let page = page.as_array().unwrap();
    assert_eq!(page.len(), 2);
    assert_eq!(page[0]["action"], "delete", "newest first");
    assert_eq!(page[0]["actor"], "token:test");
    assert!(page[0]["id"].as_i64() > page[1]["id"].as_i64());
    let last = page[1]["id"].as_i64().unwrap();
    let next = a
        .get(&format!("/api/v1/audit?limit=10&before={last}"))
        .await
        .json();
    let next = next.as_array().unwrap();
    assert_eq!(next.len(), 4, "the rest, without the first page");
    assert!(next.iter().all(|r| r["id"].as_i64().unwrap() < last));

    let imports = a.get("/api/v1/audit?action=import").await.json();
    assert_eq!(imports.as_array().unwrap().len(), 5);
    let none = a.get("/api/v1/audit?actor=token:other").await.json();
    assert_eq!(none, json!([]));

    for bad in [
        "limit=0",
        "limit=10001",
        "actor=",
        "action=a%07b",
        "bogus=1",
        "before=x",
    ] {
        a.get(&format!("/api/v1/audit?{bad}"))
            .await
            .problem(400, "bad-request");
    }

    for role in [Role::Viewer, Role::Operator] {
        let (t, _) = connexa_http::auth::create_token_with(
            a.store.as_ref(),
            &format!("{role:?}"),
            role,
            TokenScope::Full,
            None,
        )
        .await
        .unwrap();
        a.req(Method::GET, "/api/v1/audit", Some(&t), None, None)
            .await
            .problem(403, "forbidden");
    }
}

#[tokio::test]
async fn a_background_import_is_audited_under_its_caller() {
    let spool = tempfile::tempdir().unwrap();
    let a = api_with(HttpOptions {
        background_import_bytes: 1024,
        spool_dir: Some(spool.path().to_owned()),
        ..HttpOptions::default()
    })
    .await;
    let list = fleet_list(200);
    assert!(list.len() > 1024);
    let mut req = axum::http::Request::builder()
        .method(Method::POST)
        .uri("/api/v1/import")
        .header(header::AUTHORIZATION, format!("Bearer {}", a.token))
        .header(header::CONTENT_TYPE, "text/plain")
        .header(header::CONTENT_LENGTH, list.len())
        .body(axum::body::Body::from(list))
        .unwrap();
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo::<SocketAddr>(
            FROM.parse().unwrap(),
        ));
    let r = a.send(req).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let url = r.json()["url"].as_str().unwrap().to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let v = a.get(&url).await.json();
        if v["state"] != "running" {
            assert_eq!(v["state"], "done", "{v}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The import job's creation, then its one batch.
    assert_eq!(
        rows(&a).await,
        vec![row("job_create", None), row("import", Some(200))]
    );
}
