//! In-process tests of every endpoint and its error paths (`tower::ServiceExt::oneshot`
//! against `connexa_http::app` over a real SQLite store and a real engine).

mod common;

use std::time::Duration;

use axum::http::{Method, StatusCode, header};
use common::{Api, api, api_with, fleet_list};
use connexa_core::domain::{NodeFilter, NodeId, Status};
use connexa_core::ports::{NodeStore, TokenStore};
use connexa_http::HttpOptions;
use serde_json::json;

/// Parses an SSE body into (event, id, data) triples.
fn sse(body: &str) -> Vec<(String, String, serde_json::Value)> {
    body.split("\n\n")
        .filter(|b| !b.trim().is_empty() && !b.starts_with(':'))
        .map(|block| {
            let mut ev = String::new();
            let mut id = String::new();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    ev = v.into();
                } else if let Some(v) = line.strip_prefix("id: ") {
                    id = v.into();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                }
            }
            (ev, id, serde_json::from_str(&data).unwrap())
        })
        .collect()
}

#[tokio::test]
async fn healthz_needs_no_token_and_unknown_routes_are_problems() {
    let a = api().await;
    let r = a.req(Method::GET, "/healthz", None, None, None).await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "ok\n"));
    a.get("/api/v1/nope").await.problem(404, "not-found");
    a.get("/nope").await.problem(404, "not-found");
    a.req(Method::PUT, "/api/v1/nodes", Some(&a.token), None, None)
        .await
        .problem(405, "method-not-allowed");
}

#[tokio::test]
async fn every_documented_route_exists_and_needs_a_valid_token() {
    let a = api().await;
    let revoked = connexa_http::auth::create_token(a.store.as_ref(), "gone", None)
        .await
        .unwrap();
    a.store.revoke_token(revoked.1.id).await.unwrap();
    let expired = connexa_http::auth::create_token(
        a.store.as_ref(),
        "old",
        Some(chrono::Utc::now() - chrono::Duration::seconds(1)),
    )
    .await
    .unwrap();
    let forged = connexa_http::auth::generate_token().unwrap();
    let doc: serde_json::Value = serde_json::from_str(&connexa_http::openapi::json()).unwrap();
    let mut checked = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            let m: Method = method.to_uppercase().parse().unwrap();
            let uri = path.replace("{id}", "1");
            // Signing in is public (tests/accounts.rs).
            if path == "/healthz" || connexa_http::roles::is_public(&m, path) {
                continue;
            }
            for (i, bad) in [
                None,
                Some(forged.as_str()),
                Some("not-a-token"),
                Some(revoked.0.as_str()),
                Some(expired.0.as_str()),
            ]
            .into_iter()
            .enumerate()
            {
                // One address per attempt: this test is not about the rate limit.
                let from = Some(std::net::SocketAddr::from((
                    [127, 1, checked as u8, i as u8],
                    1,
                )));
                a.req(m.clone(), &uri, bad, None, from)
                    .await
                    .problem(401, "unauthorized");
            }
            // With a valid token the route exists (whatever the answer).
            let r = a.req(m.clone(), &uri, Some(&a.token), None, None).await;
            assert!(
                r.status != StatusCode::METHOD_NOT_ALLOWED
                    && !(r.status == StatusCode::NOT_FOUND
                        && r.json()["detail"] == "no such route"),
                "{method} {path}: {} {}",
                r.status,
                r.text()
            );
            checked += 1;
        }
    }
    assert!(checked >= 18, "{checked}");
    // A non-Bearer scheme is refused too.
    let r = a.req(Method::GET, "/api/v1/stats", None, None, None).await;
    assert_eq!(r.headers.get(header::WWW_AUTHENTICATE).unwrap(), "Bearer");
}

#[tokio::test]
async fn openapi_document_is_served_and_matches_docs_copy() {
    let a = api().await;
    let served = a.get("/api/v1/openapi.json").await.json();
    let generated: serde_json::Value =
        serde_json::from_str(&connexa_http::openapi::json()).unwrap();
    assert_eq!(served, generated);
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json"))
            .expect("docs/openapi.json");
    let committed: serde_json::Value = serde_json::from_str(&committed).unwrap();
    assert!(
        committed == generated,
        "docs/openapi.json is stale: run `cargo run -p connexa-http -- openapi > docs/openapi.json`"
    );
}

#[tokio::test]
async fn nodes_create_get_patch_history_delete() {
    let a = api().await;
    let r = a
        .send_json(
            Method::POST,
            "/api/v1/nodes",
            json!({"ip": "127.9.0.1", "login": "admin", "password": "s3cret", "country": "US"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let n = r.json();
    assert_eq!(
        (n["id"].as_i64(), &n["password"], &n["port"]),
        (Some(1), &json!("***"), &json!(1723))
    );
    assert!(!r.text().contains("s3cret"));
    // Duplicate and conflict name the stored node.
    let dup = a
        .send_json(
            Method::POST,
            "/api/v1/nodes",
            json!({"ip": "127.9.0.1", "login": "admin", "password": "s3cret"}),
        )
        .await
        .problem(409, "conflict");
    assert_eq!(dup["node"], 1);
    a.send_json(
        Method::POST,
        "/api/v1/nodes",
        json!({"ip": "127.9.0.1", "login": "admin", "password": "other"}),
    )
    .await
    .problem(409, "conflict");
    a.send_json(
        Method::POST,
        "/api/v1/nodes",
        json!({"ip": "999.1.1.1", "login": "a", "password": "b"}),
    )
    .await
    .problem(422, "invalid-body");
    a.send_json(
        Method::POST,
        "/api/v1/nodes",
        json!({"ip": "127.9.0.2", "login": "a", "password": "b", "status": "online"}),
    )
    .await
    .problem(422, "invalid-body");
    // Get, masked and revealed.
    assert_eq!(a.get("/api/v1/nodes/1").await.json()["password"], "***");
    assert_eq!(
        a.get("/api/v1/nodes/1?reveal=true").await.json()["password"],
        "s3cret"
    );
    a.get("/api/v1/nodes/1?reveal=maybe")
        .await
        .problem(400, "bad-request");
    a.get("/api/v1/nodes/99").await.problem(404, "not-found");
    a.get("/api/v1/nodes/abc").await.problem(400, "bad-request");
    // Patch: only descriptive fields.
    let p = a
        .send_json(
            Method::PATCH,
            "/api/v1/nodes/1",
            json!({"city": "Austin", "country": ""}),
        )
        .await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.text());
    assert_eq!(
        (&p.json()["city"], &p.json()["country"]),
        (&json!("Austin"), &json!(null))
    );
    a.send_json(
        Method::PATCH,
        "/api/v1/nodes/1",
        json!({"status": "online"}),
    )
    .await
    .problem(422, "invalid-body");
    a.send_json(Method::PATCH, "/api/v1/nodes/1", json!({"password": "x"}))
        .await
        .problem(422, "invalid-body");
    a.send_json(Method::PATCH, "/api/v1/nodes/1", json!({}))
        .await
        .problem(422, "invalid-body");
    a.send_json(Method::PATCH, "/api/v1/nodes/99", json!({"city": "x"}))
        .await
        .problem(404, "not-found");
    assert_eq!(
        a.store.get(NodeId(1)).await.unwrap().unwrap().status,
        Status::NotTested
    );
    // History: empty for a fresh node, a `deleted` row after deletion.
    assert_eq!(a.get("/api/v1/nodes/1/history").await.json(), json!([]));
    a.get("/api/v1/nodes/99/history")
        .await
        .problem(404, "not-found");
    let d = a.delete("/api/v1/nodes/1").await;
    assert_eq!(d.json(), json!({"deleted": 1, "missing": []}));
    a.delete("/api/v1/nodes/1").await.problem(404, "not-found");
    a.get("/api/v1/nodes/1").await.problem(404, "not-found");
    let h = a.get("/api/v1/nodes/1/history").await.json();
    assert_eq!(h[0]["event"], "deleted");
}

/// Follows `next_after` from the first page; the ids seen, and the number of requests.
async fn follow(a: &Api, query: &str) -> (Vec<i64>, usize) {
    let mut ids = Vec::new();
    let mut after = String::new();
    for requests in 1.. {
        let page = a.get(&format!("/api/v1/nodes?{query}{after}")).await.json();
        assert_eq!(
            page["total"], 32,
            "the filter's total on every page: {page}"
        );
        ids.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n["id"].as_i64().unwrap()),
        );
        match page["next_after"].as_i64() {
            Some(next) => {
                assert_eq!(Some(next), ids.last().copied(), "{page}");
                after = format!("&after={next}");
            }
            None => {
                assert!(page["next_after"].is_null(), "{page}");
                return (ids, requests);
            }
        }
    }
    unreachable!()
}

#[tokio::test]
async fn following_next_after_returns_every_matching_node_once() {
    let a = api().await;
    let r = a.import(&fleet_list(95)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // The US nodes: every third of the fleet, 32 of them.
    let want: Vec<i64> = a
        .store
        .list(
            &NodeFilter {
                country: Some("united".into()),
                ..NodeFilter::all()
            },
            connexa_core::domain::Page::cursor(None, 1000),
        )
        .await
        .unwrap()
        .nodes
        .iter()
        .map(|n| n.id.0)
        .collect();
    assert_eq!(want.len(), 32);
    // A short last page ends the walk; after a full last page one empty page does.
    let (ids, requests) = follow(&a, "country=united&limit=7").await;
    assert_eq!((ids.as_slice(), requests), (want.as_slice(), 5));
    let (ids, requests) = follow(&a, "country=united&limit=8&sort=id").await;
    assert_eq!((ids.as_slice(), requests), (want.as_slice(), 5));
    let (mut ids, _) = follow(&a, "country=united&limit=5&desc=true").await;
    ids.reverse();
    assert_eq!(ids, want);
    // Other sort keys page by offset only: no cursor to follow.
    let by_ip = a
        .get("/api/v1/nodes?country=united&limit=5&sort=ip")
        .await
        .json();
    assert_eq!(by_ip["items"].as_array().unwrap().len(), 5);
    assert!(by_ip["next_after"].is_null(), "{by_ip}");
    // Services list the same way (none here).
    let s = a.get("/api/v1/services?after=3").await.json();
    assert_eq!(
        (s["total"].as_u64(), s["next_after"].is_null()),
        (Some(0), true)
    );
}

#[tokio::test]
async fn after_with_another_sort_or_an_offset_is_a_bad_request() {
    let a = api().await;
    a.import(&fleet_list(5)).await;
    let p = a
        .get("/api/v1/nodes?after=2&sort=ip")
        .await
        .problem(400, "bad-request");
    assert_eq!(p["detail"], "cursor pagination (after) needs sort=id");
    let p = a
        .get("/api/v1/nodes?after=2&offset=1")
        .await
        .problem(400, "bad-request");
    assert_eq!(
        p["detail"],
        "cursor pagination (after) cannot be combined with offset"
    );
    a.get("/api/v1/nodes?after=x")
        .await
        .problem(400, "bad-request");
    a.get("/api/v1/services?after=2&sort=location")
        .await
        .problem(400, "bad-request");
    // `after=2&offset=0` is a plain cursor page.
    let p = a.get("/api/v1/nodes?after=2&offset=0").await.json();
    assert_eq!(p["items"][0]["id"], 3);
}

#[tokio::test]
async fn list_filters_paginates_and_delete_by_filter_deletes_exactly_the_list() {
    let a = api().await;
    let r = a.import(&fleet_list(30)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["summary"]["added"].as_array().unwrap().len(), 30);
    let page = a.get("/api/v1/nodes?limit=10&offset=10").await.json();
    assert_eq!(
        (
            page["total"].as_u64(),
            page["items"].as_array().unwrap().len()
        ),
        (Some(30), 10)
    );
    assert_eq!(page["items"][0]["id"], 11);
    let desc = a
        .get("/api/v1/nodes?limit=1&sort=id&desc=true")
        .await
        .json();
    assert_eq!(desc["items"][0]["id"], 30);
    let us = a
        .get("/api/v1/nodes?country=united&status=not_tested,ping_failed&limit=0")
        .await
        .json();
    assert_eq!(us["total"], 10);
    let ids = a.get("/api/v1/nodes?ids=1,2,3,999").await.json();
    assert_eq!(ids["total"], 3);
    for bad in [
        "limit=10001",
        "status=green",
        "ids=1,x",
        "min_speed=NaN",
        "min_speed=-1",
        "sort=password",
        "limit=-1",
        "checked_before=yesterday",
        "colour=red",
        "has_service=2",
    ] {
        a.get(&format!("/api/v1/nodes?{bad}"))
            .await
            .problem(400, "bad-request");
    }
    // Delete by filter = what the list shows.
    let listed = a
        .get("/api/v1/nodes?country=germany&limit=10000")
        .await
        .json();
    let listed_ids: Vec<i64> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_i64().unwrap())
        .collect();
    assert_eq!(listed_ids.len(), 10);
    a.delete("/api/v1/nodes").await.problem(400, "bad-request");
    a.delete("/api/v1/nodes?country=germany&all=true")
        .await
        .problem(400, "bad-request");
    let d = a.delete("/api/v1/nodes?country=germany").await.json();
    assert_eq!(d, json!({"deleted": 10, "missing": []}));
    for id in listed_ids {
        assert!(a.store.get(NodeId(id)).await.unwrap().is_none());
    }
    assert_eq!(a.get("/api/v1/nodes?limit=0").await.json()["total"], 20);
    // By ids: the missing ones are named.
    let d = a.delete("/api/v1/nodes?ids=1,2,3").await.json();
    assert_eq!(d["deleted"], 2, "node 2 was a DE node: {d}");
    assert_eq!(d["missing"], json!([2]));
    let d = a.delete("/api/v1/nodes?all=true").await.json();
    assert_eq!(d["deleted"], 18);
}

#[tokio::test]
async fn sql_looking_strings_in_every_filter_change_nothing() {
    let a = api().await;
    a.import(&fleet_list(12)).await;
    let before = a.snapshot().await;
    let evil = [
        "' OR '1'='1",
        "1; DROP TABLE nodes; --",
        "%' OR 1=1 --",
        "\" OR \"\"=\"",
        "x') UNION SELECT password FROM nodes --",
        "\\",
        "%_%",
    ];
    for e in evil {
        let enc: String = url_encode(e);
        for field in [
            "ip", "login", "provider", "country", "state", "city", "zip", "comment",
        ] {
            let r = a.get(&format!("/api/v1/nodes?{field}={enc}")).await;
            assert_eq!(r.status, StatusCode::OK, "{field}={e}: {}", r.text());
            assert_eq!(r.json()["total"], 0, "{field}={e} matched something");
            let d = a.delete(&format!("/api/v1/nodes?{field}={enc}")).await;
            assert_eq!(d.json()["deleted"], 0, "{field}={e}");
            let x = a
                .get(&format!("/api/v1/export?format=pptp&{field}={enc}"))
                .await;
            assert_eq!((x.status, x.body.len()), (StatusCode::OK, 0), "{field}={e}");
        }
        for field in [
            "status",
            "ids",
            "min_speed",
            "checked_after",
            "sort",
            "has_service",
        ] {
            a.get(&format!("/api/v1/nodes?{field}={enc}"))
                .await
                .problem(400, "bad-request");
            a.delete(&format!("/api/v1/nodes?{field}={enc}"))
                .await
                .problem(400, "bad-request");
        }
        let j = a
            .send_json(
                Method::POST,
                "/api/v1/jobs",
                json!({"kind": "light", "filter": {"country": e, "ip": e}}),
            )
            .await;
        // Matches no node: refused, not a job of 0 items.
        let p = j.problem(400, "bad-request");
        assert_eq!(p["detail"], "no node matches the selection");
    }
    assert_eq!(a.snapshot().await, before, "the database changed");
}

/// Issue 23: `ip=%00` once selected every node (also for DELETE), and
/// `{"filter": {"ip": ""}}` every node for a job. One rule in connexa-core now
/// refuses control characters, empty text, long text and bad numbers everywhere.
#[tokio::test]
async fn nul_bytes_control_characters_and_empty_text_select_nothing_and_are_refused() {
    let a = api().await;
    a.import(&fleet_list(9)).await;
    let before = a.snapshot().await;
    let long = "x".repeat(257);
    for field in [
        "ip", "login", "provider", "country", "state", "city", "zip", "comment",
    ] {
        for bad in ["%00", "1%00", "%1b%5B2J", "%0a", "%7f", "", &long] {
            let q = format!("{field}={bad}");
            let p = a
                .get(&format!("/api/v1/nodes?{q}"))
                .await
                .problem(400, "bad-request");
            // The field as the query string spells it (`zip`, not the JSON `zipcode`).
            assert!(
                p["detail"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("{field}: ")),
                "{q}: {p}"
            );
            a.delete(&format!("/api/v1/nodes?{q}"))
                .await
                .problem(400, "bad-request");
            a.get(&format!("/api/v1/export?format=txt&{q}"))
                .await
                .problem(400, "bad-request");
        }
    }
    for filter in [
        json!({"ip": ""}),
        json!({"ip": "\u{0}"}),
        json!({"comment": "a\u{1b}]0;x\u{7}"}),
        json!({"country": "x".repeat(257)}),
        json!({"min_down_mbps": -5}),
        json!({"ids": []}),
    ] {
        for (method, uri, body) in [
            (
                Method::POST,
                "/api/v1/jobs",
                json!({"kind": "light", "filter": filter}),
            ),
            (
                Method::POST,
                "/api/v1/services/start",
                json!({"filter": filter}),
            ),
            (
                Method::POST,
                "/api/v1/services/stop",
                json!({"filter": filter}),
            ),
        ] {
            a.send_json(method, uri, body)
                .await
                .problem(422, "invalid-body");
        }
    }
    // An empty id list and ids that match no node: refused, never an empty job.
    a.send_json(
        Method::POST,
        "/api/v1/jobs",
        json!({"kind": "light", "ids": []}),
    )
    .await
    .problem(422, "invalid-body");
    a.send_json(
        Method::POST,
        "/api/v1/jobs",
        json!({"kind": "light", "ids": [777, 778]}),
    )
    .await
    .problem(400, "bad-request");
    a.send_json(Method::POST, "/api/v1/services/stop", json!({"ids": [777]}))
        .await
        .problem(400, "bad-request");
    assert!(
        a.store.jobs(10).await.unwrap().is_empty(),
        "a job was created"
    );
    assert_eq!(a.snapshot().await, before, "the database changed");
}

/// Node fields written through the API obey the import's limits.
#[tokio::test]
async fn node_fields_are_bounded_like_an_import() {
    let a = api().await;
    let node = |extra: serde_json::Value| {
        let mut b = json!({"ip": "127.9.9.9", "login": "u", "password": "p"});
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        b
    };
    for extra in [
        json!({"comment": "c".repeat(100_000)}),
        json!({"zip": "7".repeat(300)}),
        json!({"city": "c".repeat(129)}),
        json!({"provider": "evil\u{1b}[2J"}),
    ] {
        let p = a
            .send_json(Method::POST, "/api/v1/nodes", node(extra.clone()))
            .await
            .problem(422, "invalid-body");
        assert!(!p["detail"].as_str().unwrap().is_empty(), "{extra}");
    }
    let r = a
        .send_json(
            Method::POST,
            "/api/v1/nodes",
            node(json!({"comment": "fine"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let id = r.json()["id"].as_i64().unwrap();
    for patch in [
        json!({"comment": "c".repeat(1025)}),
        json!({"zip": "7".repeat(17)}),
        json!({"state": "a\nb"}),
    ] {
        a.send_json(Method::PATCH, &format!("/api/v1/nodes/{id}"), patch)
            .await
            .problem(422, "invalid-body");
    }
    let n = a.get(&format!("/api/v1/nodes/{id}")).await.json();
    assert_eq!(n["comment"], "fine");
}

/// 100,000 ids in one JSON selection: SQLite refuses more than 32,766 bind
/// parameters in a statement, PostgreSQL more than 65,535; the store binds an
/// id list as one parameter, so the job has every node.
#[tokio::test]
async fn a_hundred_thousand_ids_make_a_job_of_a_hundred_thousand_items() {
    let a = api().await;
    let nodes: Vec<_> = (0..100_000u32)
        .map(|i| {
            let [_, b, c, d] = i.to_be_bytes();
            connexa_core::domain::NewNode::new(&format!("10.{b}.{c}.{d}"), 1723, "u", "p").unwrap()
        })
        .collect();
    a.store.insert(nodes).await.unwrap();
    let ids: Vec<i64> = (1..=100_000).collect();
    let r = a
        .send_json(
            Method::POST,
            "/api/v1/jobs",
            json!({"kind": "light", "ids": ids}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    assert_eq!(r.json()["total"], 100_000);
    let job = r.json()["id"].as_i64().unwrap();
    a.send_json(
        Method::POST,
        &format!("/api/v1/jobs/{job}/cancel"),
        json!({}),
    )
    .await;
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test]
async fn job_with_a_per_node_budget_below_the_kinds_minimum_is_refused_with_400() {
    let a = api().await;
    a.import(&fleet_list(3)).await;
    let before = a.snapshot().await;
    for (kind, secs, want) in [
        (
            "auth",
            2.0,
            "a per-node time budget of 2 s is too short for auth tests: give at least 20 s",
        ),
        (
            "light",
            9.5,
            "a per-node time budget of 9.5 s is too short for light tests: give at least 10 s",
        ),
        (
            "speed",
            29.0,
            "too short for speed tests: give at least 30 s",
        ),
        (
            "pipeline",
            39.0,
            "too short for pipeline tests: give at least 40 s",
        ),
    ] {
        let p = a
            .send_json(
                Method::POST,
                "/api/v1/jobs",
                json!({"kind": kind, "all": true, "node_timeout_secs": secs}),
            )
            .await
            .problem(400, "bad-request");
        let detail = p["detail"].as_str().unwrap();
        assert!(detail.starts_with("node_timeout_secs: "), "{detail}");
        assert!(detail.contains(want), "{kind} {secs}: {detail}");
    }
    assert_eq!(a.snapshot().await, before, "a refused job changes nothing");
    let jobs = a.get("/api/v1/jobs").await;
    assert_eq!(jobs.json(), json!([]), "no job was created");
    // At the minimum the budget is accepted: the next rule speaks (the
    // selection matches no node, so no job of 0 items is created).
    let p = a
        .send_json(
            Method::POST,
            "/api/v1/jobs",
            json!({"kind": "light", "filter": {"country": "ZZ"}, "node_timeout_secs": 10}),
        )
        .await
        .problem(400, "bad-request");
    assert_eq!(p["detail"], "no node matches the selection");
}

#[tokio::test]
async fn hostile_bodies_get_the_right_4xx_and_change_nothing() {
    let a = api_with(HttpOptions {
        max_body_bytes: 64 << 10,
        ..HttpOptions::default()
    })
    .await;
    a.import(&fleet_list(5)).await;
    let before = a.snapshot().await;
    let post = |ct: &'static str, body: Vec<u8>| {
        let a = &a;
        async move {
            a.req(
                Method::POST,
                "/api/v1/jobs",
                Some(&a.token),
                Some((ct, body)),
                None,
            )
            .await
        }
    };
    post("application/json", b"{\"kind\": \"light\", ".to_vec())
        .await
        .problem(400, "invalid-json");
    post("application/json", b"not json".to_vec())
        .await
        .problem(400, "invalid-json");
    post(
        "application/json",
        br#"{"kind": "light", "ids": "1"}"#.to_vec(),
    )
    .await
    .problem(422, "invalid-body");
    post(
        "application/json",
        br#"{"kind": "light", "all": "yes"}"#.to_vec(),
    )
    .await
    .problem(422, "invalid-body");
    post(
        "application/json",
        br#"{"kind": "light", "all": true, "ids": [1]}"#.to_vec(),
    )
    .await
    .problem(422, "invalid-body");
    post("application/json", br#"{"kind": "light"}"#.to_vec())
        .await
        .problem(422, "invalid-body");
    post(
        "application/json",
        br#"{"kind": "light", "filter": {}}"#.to_vec(),
    )
    .await
    .problem(422, "invalid-body");
    post(
        "application/json",
        br#"{"kind": "light", "filter": {"status": ["ok"]}}"#.to_vec(),
    )
    .await
    .problem(422, "invalid-body");
    post(
        "application/json",
        br#"{"kind": "service_start", "all": true}"#.to_vec(),
    )
    .await
    .problem(422, "invalid-body");
    post(
        "application/json",
        br#"{"kind": "light", "all": true, "concurrency": 0}"#.to_vec(),
    )
    .await
    .problem(422, "invalid-body");
    post(
        "application/json",
        br#"{"kind": "light", "all": true, "node_timeout_secs": -1}"#.to_vec(),
    )
    .await
    .problem(422, "invalid-body");
    post("text/plain", br#"{"kind": "light", "all": true}"#.to_vec())
        .await
        .problem(415, "unsupported-media-type");
    let mut huge = br#"{"kind": "light", "ids": ["#.to_vec();
    huge.extend(std::iter::repeat_n(b"1,".as_slice(), 400_000).flatten());
    huge.extend(b"1]}");
    post("application/json", huge)
        .await
        .problem(413, "payload-too-large");
    a.req(
        Method::PATCH,
        "/api/v1/nodes/1",
        Some(&a.token),
        Some(("application/json", vec![b' '; 1 << 20])),
        None,
    )
    .await
    .problem(413, "payload-too-large");
    a.get("/api/v1/nodes/1%3BDROP%20TABLE%20nodes")
        .await
        .problem(400, "bad-request");
    a.get("/api/v1/nodes/99999999999999999999999")
        .await
        .problem(400, "bad-request");
    assert!(
        a.store.jobs(10).await.unwrap().is_empty(),
        "a job was created"
    );
    assert_eq!(a.snapshot().await, before);
}

#[tokio::test]
async fn ten_thousand_parallel_forged_tokens_are_refused_and_rate_limited() {
    let a = api().await;
    a.import(&fleet_list(3)).await;
    let before = a.snapshot().await;
    let tokens_before = a.store.tokens().await.unwrap();
    let attacker: std::net::SocketAddr = "127.0.0.66:4000".parse().unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..10_000 {
        let app = a.app.clone();
        let forged = if i % 2 == 0 {
            connexa_http::auth::generate_token().unwrap()
        } else {
            format!("guess-{i}")
        };
        tasks.spawn(async move {
            use tower::ServiceExt;
            let mut req = axum::http::Request::builder()
                .method(Method::DELETE)
                .uri("/api/v1/nodes?all=true")
                .header(header::AUTHORIZATION, format!("Bearer {forged}"))
                .body(axum::body::Body::empty())
                .unwrap();
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(attacker));
            app.oneshot(req).await.unwrap().status()
        });
    }
    let (mut unauthorized, mut limited) = (0, 0);
    while let Some(s) = tasks.join_next().await {
        match s.unwrap() {
            StatusCode::UNAUTHORIZED => unauthorized += 1,
            StatusCode::TOO_MANY_REQUESTS => limited += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(unauthorized + limited, 10_000);
    assert!(
        unauthorized <= 20,
        "at most the limit got an answer other than 429: {unauthorized}"
    );
    assert!(limited >= 9_980, "{limited}");
    // The attacker stays limited for any further guess; a token known to be
    // valid is not a guess and is served; other addresses are not affected.
    let guess = connexa_http::auth::generate_token().unwrap();
    let r = a
        .req(
            Method::GET,
            "/api/v1/stats",
            Some(&guess),
            None,
            Some(attacker),
        )
        .await;
    let p = r.problem(429, "rate-limited");
    assert!(p["retry_after"].as_u64().unwrap() >= 1);
    assert!(r.headers.get(header::RETRY_AFTER).is_some());
    let r = a
        .req(
            Method::GET,
            "/api/v1/stats",
            Some(&a.token),
            None,
            Some(attacker),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let ok = a
        .req(
            Method::GET,
            "/api/v1/stats",
            Some(&a.token),
            None,
            Some("127.0.0.67:1".parse().unwrap()),
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(a.snapshot().await, before, "nodes changed");
    let tokens_after = a.store.tokens().await.unwrap();
    assert_eq!(tokens_after.len(), tokens_before.len());
}

#[tokio::test]
async fn import_text_multipart_and_limits() {
    let a = api_with(HttpOptions {
        max_import_bytes: 4096,
        ..HttpOptions::default()
    })
    .await;
    let r = a
        .req(
            Method::POST,
            "/api/v1/import?on_conflict=skip&source=list.txt",
            Some(&a.token),
            Some((
                "text/plain",
                b"127.9.0.1:a:b\n127.9.0.1:a:b\n127.9.0.1:a:c\n127.9.0.300:a:b\n".to_vec(),
            )),
            None,
        )
        .await;
    let s = &r.json()["summary"];
    assert_eq!(s["source"], "list.txt");
    assert_eq!(
        (
            s["added"].as_array().unwrap().len(),
            s["duplicates"].as_array().unwrap().len(),
            s["errors"].as_array().unwrap().len()
        ),
        (1, 1, 1),
        "{s}"
    );
    assert_eq!(s["conflicts"].as_array().unwrap().len(), 1);
    assert_eq!(r.json()["job"], json!(null));
    // Replace on conflict.
    let r = a
        .req(
            Method::POST,
            "/api/v1/import?on_conflict=replace",
            Some(&a.token),
            Some(("text/plain", b"127.9.0.1:a:c\n".to_vec())),
            None,
        )
        .await;
    assert_eq!(r.json()["summary"]["replaced"].as_array().unwrap().len(), 1);
    a.req(
        Method::POST,
        "/api/v1/import?on_conflict=merge",
        Some(&a.token),
        Some(("text/plain", vec![])),
        None,
    )
    .await
    .problem(400, "bad-request");
    // Multipart: the file field.
    let boundary = "XyZ123";
    let mut body = Vec::new();
    body.extend(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n")
            .as_bytes(),
    );
    body.extend(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"fleet.txt\"\r\nContent-Type: text/plain\r\n\r\n").as_bytes());
    body.extend(b"127.9.0.5:u:p\n127.9.0.6:u:p\n");
    body.extend(format!("\r\n--{boundary}--\r\n").as_bytes());
    let ct = format!("multipart/form-data; boundary={boundary}");
    let r = a
        .req(
            Method::POST,
            "/api/v1/import",
            Some(&a.token),
            Some((&ct, body)),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["summary"]["source"], "fleet.txt");
    assert_eq!(r.json()["summary"]["added"].as_array().unwrap().len(), 2);
    let empty_form = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nx\r\n--{boundary}--\r\n"
    );
    a.req(
        Method::POST,
        "/api/v1/import",
        Some(&a.token),
        Some((&ct, empty_form.into_bytes())),
        None,
    )
    .await
    .problem(400, "bad-request");
    // Over the limit: 413, and what went in before is reported.
    let big = fleet_list(200);
    assert!(big.len() > 4096);
    let before = a.get("/api/v1/nodes?limit=0").await.json()["total"]
        .as_u64()
        .unwrap();
    let r = a.import(&big).await;
    let p = r.problem(413, "payload-too-large");
    let added = p["import"]["added"].as_array().map(Vec::len).unwrap_or(0) as u64;
    let after = a.get("/api/v1/nodes?limit=0").await.json()["total"]
        .as_u64()
        .unwrap();
    assert_eq!(
        after,
        before + added,
        "the report names exactly what was imported"
    );
    assert!(added < 200);
    // Every imported row is whole: a row cut at the limit is not imported.
    let all = a.get("/api/v1/nodes?limit=10000&reveal=true").await.json();
    for n in all["items"].as_array().unwrap() {
        let login = n["login"].as_str().unwrap();
        if let Some(i) = login.strip_prefix("user") {
            assert_eq!(n["password"], format!("pw{i}"), "{n}");
        }
    }
}

#[tokio::test]
async fn import_starts_a_test_job_on_the_added_nodes() {
    let a = api().await;
    a.import("127.9.0.1:u:p\n").await;
    let r = a
        .req(
            Method::POST,
            "/api/v1/import?test=light",
            Some(&a.token),
            Some(("text/plain", b"127.9.0.1:u:p\n127.9.0.2:u:p\n".to_vec())),
            None,
        )
        .await;
    let job = r.json()["job"].as_i64().expect("a job");
    let j = a.get(&format!("/api/v1/jobs/{job}")).await.json();
    assert_eq!(
        (j["kind"].as_str(), j["total"].as_u64()),
        (Some("light"), Some(1))
    );
}

#[tokio::test]
async fn export_streams_every_format_and_refuses_path_names() {
    let a = api().await;
    a.import(&fleet_list(7)).await;
    let before = a.snapshot().await;
    let csv = a.get("/api/v1/export?format=csv&country=united").await;
    assert_eq!(csv.status, StatusCode::OK);
    assert_eq!(csv.headers[header::CONTENT_TYPE], "text/csv; charset=utf-8");
    assert_eq!(
        csv.headers[header::CONTENT_DISPOSITION],
        "attachment; filename=\"connexa-nodes.csv\""
    );
    assert_eq!(csv.text().lines().count(), 1 + 3, "{}", csv.text());
    let txt = a.get("/api/v1/export?format=pptp&filename=mine.txt").await;
    assert_eq!(
        txt.headers[header::CONTENT_DISPOSITION],
        "attachment; filename=\"mine.txt\""
    );
    assert!(
        txt.text().lines().any(|l| l == "127.9.0.1:user0:pw0"),
        "{}",
        txt.text()
    );
    let js = a.get("/api/v1/export?format=json").await.json();
    assert_eq!(js.as_array().unwrap().len(), 7);
    for f in ["txt", "socks", "socks-colon"] {
        assert_eq!(
            a.get(&format!("/api/v1/export?format={f}")).await.status,
            StatusCode::OK
        );
    }
    a.get("/api/v1/export?format=xml")
        .await
        .problem(400, "bad-request");
    for name in [
        "../../etc/passwd",
        "..%2F..%2Fetc%2Fpasswd",
        "%2Fetc%2Fpasswd",
        ".bashrc",
        "a%0d%0aSet-Cookie:%20x",
        "dir%5Cfile",
    ] {
        a.get(&format!("/api/v1/export?filename={name}"))
            .await
            .problem(400, "bad-request");
    }
    a.get("/api/v1/export?format=csv&path=x")
        .await
        .problem(400, "bad-request");
    assert_eq!(a.snapshot().await, before);
}

#[tokio::test]
async fn jobs_create_list_show_cancel() {
    let a = api().await;
    a.import(&fleet_list(4)).await;
    let r = a
        .send_json(
            Method::POST,
            "/api/v1/jobs",
            json!({"kind": "light", "ids": [1, 2]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let job = r.json();
    assert_eq!(
        (job["kind"].as_str(), job["total"].as_u64()),
        (Some("light"), Some(2))
    );
    let id = job["id"].as_i64().unwrap();
    a.state
        .engine()
        .wait(connexa_core::ports::JobId(id))
        .await
        .unwrap();
    let j = a.get(&format!("/api/v1/jobs/{id}")).await.json();
    assert_eq!(j["state"], "done");
    assert_eq!(
        j["progress"]["failed"], 2,
        "nothing listens on 127.9.0.x: {j}"
    );
    assert_eq!(j["recent"].as_array().unwrap().len(), 2);
    let f = a
        .send_json(
            Method::POST,
            "/api/v1/jobs",
            json!({"kind": "light", "filter": {"country": "Germany"}, "deadline_secs": 60}),
        )
        .await
        .json();
    assert_eq!(f["total"], 1);
    let list = a.get("/api/v1/jobs?limit=5").await.json();
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(list[0]["id"], f["id"]);
    a.get("/api/v1/jobs?limit=5000")
        .await
        .problem(400, "bad-request");
    a.get("/api/v1/jobs/99").await.problem(404, "not-found");
    a.req(
        Method::POST,
        "/api/v1/jobs/99/cancel",
        Some(&a.token),
        None,
        None,
    )
    .await
    .problem(404, "not-found");
    // Cancel a job whose nodes hang: the silent sim fleet would be slower; a
    // deadline-free job on all nodes with concurrency 1 is cancelled midway or done.
    let c = a
        .send_json(
            Method::POST,
            "/api/v1/jobs",
            json!({"kind": "light", "all": true, "concurrency": 1}),
        )
        .await
        .json();
    let cid = c["id"].as_i64().unwrap();
    let r = a
        .req(
            Method::POST,
            &format!("/api/v1/jobs/{cid}/cancel"),
            Some(&a.token),
            None,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(["cancelled", "done"].contains(&r.json()["state"].as_str().unwrap()));
    let fin = a
        .state
        .engine()
        .wait(connexa_core::ports::JobId(cid))
        .await
        .unwrap();
    assert_eq!(fin.progress.done(), 4);
}

#[tokio::test]
async fn job_events_stream_every_result_then_done_and_resume_without_loss() {
    let a = api().await;
    a.import(&fleet_list(25)).await;
    let r = a
        .send_json(
            Method::POST,
            "/api/v1/jobs",
            json!({"kind": "light", "all": true}),
        )
        .await;
    let id = r.json()["id"].as_i64().unwrap();
    let uri = format!("/api/v1/jobs/{id}/events");
    let res = tokio::time::timeout(Duration::from_secs(60), a.get(&uri))
        .await
        .expect("stream ended");
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.headers[header::CONTENT_TYPE], "text/event-stream");
    let events = sse(&res.text());
    let results: Vec<_> = events.iter().filter(|e| e.0 == "result").collect();
    let mut nodes: Vec<i64> = results
        .iter()
        .map(|e| e.2["node"].as_i64().unwrap())
        .collect();
    nodes.sort_unstable();
    assert_eq!(
        nodes,
        (1..=25).collect::<Vec<_>>(),
        "every node exactly once"
    );
    let last = events.last().unwrap();
    assert_eq!(last.0, "done");
    assert_eq!(
        (last.2["percent"].as_f64(), last.2["finished"].as_bool()),
        (Some(100.0), Some(true))
    );
    assert_eq!(last.2["done"], 25);
    assert!(events.iter().filter(|e| e.0 == "done").count() == 1);
    // Resume after the 10th result: exactly the other 15, then done.
    let tenth = &results[9].1;
    let mut req_headers = a.req(Method::GET, &uri, Some(&a.token), None, None).await; // warm
    req_headers.body.clear();
    let resumed = {
        use tower::ServiceExt;
        let req = axum::http::Request::builder()
            .uri(&uri)
            .header(header::AUTHORIZATION, format!("Bearer {}", a.token))
            .header("Last-Event-ID", tenth.as_str())
            .body(axum::body::Body::empty())
            .unwrap();
        let res = a.app.clone().oneshot(req).await.unwrap();
        use http_body_util::BodyExt;
        String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    };
    let ev2 = sse(&resumed);
    let rest: Vec<i64> = ev2
        .iter()
        .filter(|e| e.0 == "result")
        .map(|e| e.2["item"].as_i64().unwrap())
        .collect();
    let expected: Vec<i64> = results[10..]
        .iter()
        .map(|e| e.2["item"].as_i64().unwrap())
        .collect();
    assert_eq!(rest, expected);
    assert_eq!(ev2.last().unwrap().0, "done");
    // The same through ?after=.
    let q = sse(&a.get(&format!("{uri}?after={tenth}")).await.text());
    assert_eq!(q.iter().filter(|e| e.0 == "result").count(), 15);
    a.req(Method::GET, &uri, Some(&a.token), None, None).await;
    a.get(&format!("{uri}?after=garbage"))
        .await
        .problem(400, "bad-request");
    a.get("/api/v1/jobs/999/events")
        .await
        .problem(404, "not-found");
}

#[tokio::test]
async fn services_start_stop_and_list() {
    let a = api().await;
    a.import(&fleet_list(3)).await;
    let r = a
        .send_json(
            Method::POST,
            "/api/v1/services/start",
            json!({"ids": [1, 2]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    assert_eq!(r.json()["kind"], "service_start");
    // Not verified: no service is wanted for them.
    let wanted = a
        .store
        .list(
            &NodeFilter {
                service_wanted: Some(true),
                ..NodeFilter::all()
            },
            Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(wanted.total, 0);
    let r = a
        .send_json(Method::POST, "/api/v1/services/stop", json!({"all": true}))
        .await;
    assert_eq!(
        (r.status, r.json()["kind"].as_str()),
        (StatusCode::ACCEPTED, Some("service_stop"))
    );
    a.send_json(Method::POST, "/api/v1/services/start", json!({}))
        .await
        .problem(422, "invalid-body");
    a.send_json(
        Method::POST,
        "/api/v1/services/start",
        json!({"filter": {"bogus": 1}}),
    )
    .await
    .problem(422, "invalid-body");
    let l = a.get("/api/v1/services").await.json();
    assert_eq!(
        (l["total"].as_u64(), l["items"].as_array().unwrap().len()),
        (Some(0), 0)
    );
    a.get("/api/v1/services?limit=x")
        .await
        .problem(400, "bad-request");
}

#[tokio::test]
async fn stats_and_metrics() {
    let a = api().await;
    a.import(&fleet_list(6)).await;
    // One verified node whose service is wanted (no reconciler runs here).
    let one = a
        .store
        .list_page(&NodeFilter::all(), Default::default())
        .await
        .unwrap()[0]
        .id;
    a.store
        .apply(
            one,
            connexa_core::domain::Event::Tested(connexa_core::domain::Outcome::success(
                connexa_core::domain::Level::Speed,
            )),
            connexa_core::ports::ApplyContext::now(),
        )
        .await
        .unwrap();
    a.store
        .set_service_wanted(&NodeFilter::ids([one]), true)
        .await
        .unwrap();
    let s = a.get("/api/v1/stats").await.json();
    assert_eq!(
        (
            s["total"].as_u64(),
            s["services_running"].as_u64(),
            s["services_waiting"].as_u64(),
            s["jobs_unfinished"].as_u64()
        ),
        (Some(6), Some(0), Some(1), Some(0))
    );
    assert_eq!(
        s["by_status"][0],
        json!({"status": "not_tested", "count": 5})
    );
    assert_eq!(s["by_status"].as_array().unwrap().len(), 8);
    // Extension methods from anyone are counted, but under one label value.
    for m in ["FOO", "BAR"] {
        let r = a
            .req(
                Method::from_bytes(m.as_bytes()).unwrap(),
                "/healthz",
                None,
                None,
                None,
            )
            .await;
        assert!(r.status.is_client_error(), "{m}: {}", r.status);
    }
    let m = a.get("/metrics").await;
    assert_eq!(m.status, StatusCode::OK);
    assert!(
        m.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let t = m.text();
    assert!(t.contains("connexa_nodes{status=\"not_tested\"} 5"), "{t}");
    assert!(t.contains("connexa_nodes{status=\"online\"} 0"), "{t}");
    assert!(t.contains("\nconnexa_services_waiting 1\n"), "{t}");
    assert!(
        t.contains(
            "connexa_http_requests_total{method=\"GET\",route=\"/api/v1/stats\",status=\"200\"} 1"
        ),
        "{t}"
    );
    assert!(
        t.contains("connexa_http_request_duration_seconds_count"),
        "{t}"
    );
    assert!(
        !t.contains("method=\"FOO\"") && !t.contains("method=\"BAR\""),
        "{t}"
    );
    assert!(
        t.contains(
            "connexa_http_requests_total{method=\"other\",route=\"/healthz\",status=\"405\"} 2"
        ),
        "{t}"
    );
    // This state was given no probe collector: no probe histograms.
    assert!(!t.contains("connexa_probe_"), "{t}");
    assert!(!t.contains("\n\n"), "no empty line: {t}");
    // A separate, unauthenticated metrics router.
    use tower::ServiceExt;
    let res = connexa_http::metrics_router(a.state.clone())
        .oneshot(
            axum::http::Request::get("/metrics")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

/// With a SOCKS5 launcher attached, `/metrics` carries its counters: an idle
/// unauthenticated connection shows as a pre-auth timeout.
#[tokio::test]
async fn metrics_export_socks_service_counters() {
    use connexa_core::ports::ServiceLauncher;
    use connexa_core::service::DirectOpener;
    use connexa_core::socks::{SocksConfig, SocksLauncher};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let a = api().await;
    a.import(&fleet_list(1)).await;
    let node = a
        .store
        .list_page(&NodeFilter::all(), Default::default())
        .await
        .unwrap()
        .remove(0);
    let mut cfg = SocksConfig {
        port_min: 33600,
        port_max: 33649,
        ..SocksConfig::default()
    };
    cfg.server.preauth_timeout = Duration::from_millis(200);
    let launcher = Arc::new(SocksLauncher::new(
        Arc::new(DirectOpener::loopback_only()),
        cfg,
    ));
    let _ = a.state.clone().with_socks_launcher(launcher.clone());
    let ep = launcher.start(&node, None).await.unwrap();
    let mut idle = tokio::net::TcpStream::connect(("127.0.0.1", ep.port))
        .await
        .unwrap();
    idle.write_all(&[5]).await.unwrap();
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), idle.read_to_end(&mut out)).await;
    assert!(matches!(closed, Ok(Ok(0))), "{closed:?}");
    // The server counts it right after closing; wait for that event.
    let t0 = std::time::Instant::now();
    while launcher.total_stats().preauth_timeouts == 0 && t0.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    launcher.stop(node.id).await.unwrap();
    let t = a.get("/metrics").await.text();
    for line in [
        "# TYPE connexa_socks_preauth_timeouts_total counter\nconnexa_socks_preauth_timeouts_total 1\n",
        "# TYPE connexa_socks_preauth_evicted_total counter\nconnexa_socks_preauth_evicted_total 0\n",
        "# TYPE connexa_socks_accepted_total counter\nconnexa_socks_accepted_total 1\n",
        "# TYPE connexa_socks_preauth_connections gauge\nconnexa_socks_preauth_connections 0\n",
        "# HELP connexa_socks_preauth_evicted_total Connections closed before login",
    ] {
        assert!(t.contains(line), "{line}\n{t}");
    }
    assert!(!t.contains("\n\n"), "no empty line: {t}");
}

/// `POST /services/restart` records a restart request for the selected nodes
/// whose service runs (the reconciler carries it out), names the others, and
/// is a conflict when none runs; `GET /services` shows the recorded counters.
#[tokio::test]
async fn services_restart_and_list_with_counters() {
    use connexa_core::domain::{Event, Level, Outcome, Secret, ServiceEndpoint};
    use connexa_core::ports::{ApplyContext, ServiceCounters};
    let a = api().await;
    a.import(&fleet_list(2)).await;
    for id in [1, 2] {
        a.store
            .apply(
                NodeId(id),
                Event::Tested(Outcome::success(Level::Speed)),
                ApplyContext::now(),
            )
            .await
            .unwrap();
    }
    a.store
        .apply(
            NodeId(1),
            Event::ServiceStarted(ServiceEndpoint {
                host: "127.0.0.1".into(),
                port: 20001,
                username: "u1".into(),
                password: Secret::new("sockspw"),
            }),
            ApplyContext::now(),
        )
        .await
        .unwrap();
    a.store
        .set_service_wanted(&NodeFilter::ids([NodeId(1)]), true)
        .await
        .unwrap();

    let r = a
        .send_json(
            Method::POST,
            "/api/v1/services/restart",
            json!({"ids": [1, 2]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"matched": 2, "restarting": [1], "not_running": [2]})
    );
    let rt = a.store.service_runtime(&[NodeId(1)]).await.unwrap();
    assert!(rt[0].restart_requested_at.is_some(), "{rt:?}");
    assert_eq!(
        a.store.get(NodeId(1)).await.unwrap().unwrap().status,
        Status::Online,
        "a restart request changes no status"
    );
    a.send_json(
        Method::POST,
        "/api/v1/services/restart",
        json!({"ids": [2]}),
    )
    .await
    .problem(409, "conflict");
    a.send_json(
        Method::POST,
        "/api/v1/services/restart",
        json!({"ids": [99]}),
    )
    .await
    .problem(400, "bad-request");
    a.send_json(
        Method::POST,
        "/api/v1/services/restart",
        json!({"idz": [1]}),
    )
    .await
    .problem(422, "invalid-body");

    // No counters recorded yet: none shown; then the running process's flush.
    let v = a.get("/api/v1/services").await.json();
    assert_eq!(v["total"], 1, "{v}");
    assert!(v["items"][0]["service"].get("counters").is_none(), "{v}");
    let started = chrono::DateTime::from_timestamp_millis(1_765_000_000_000).unwrap();
    a.store
        .put_service_counters(
            vec![(
                NodeId(1),
                ServiceCounters {
                    connections: 2,
                    connections_total: 7,
                    bytes_up: 1234,
                    bytes_down: 567_890,
                    last_error: Some("CONNECT to 192.0.2.1:80 failed: refused".into()),
                    started_at: Some(started),
                },
            )],
            chrono::Utc::now(),
        )
        .await
        .unwrap();
    let v = a.get("/api/v1/services").await.json();
    let c = &v["items"][0]["service"]["counters"];
    assert_eq!(
        (c["connections"].clone(), c["connections_total"].clone()),
        (json!(2), json!(7)),
        "{v}"
    );
    assert_eq!(
        (c["bytes_up"].clone(), c["bytes_down"].clone()),
        (json!(1234), json!(567_890))
    );
    assert_eq!(c["started_at"], json!(started));
    assert!(c["last_error"].as_str().unwrap().contains("refused"));
    // The restart request survives a flush; node lists carry no counters.
    let rt = a.store.service_runtime(&[NodeId(1)]).await.unwrap();
    assert!(rt[0].restart_requested_at.is_some(), "{rt:?}");
    let v = a.get("/api/v1/nodes/1").await.json();
    assert!(v["service"].get("counters").is_none(), "{v}");
}

/// `/metrics` carries each running service's own counters, labelled with its
/// node id, and they move with the bytes relayed.
#[tokio::test]
async fn metrics_export_per_service_counters() {
    use connexa_core::ports::ServiceLauncher;
    use connexa_core::service::DirectOpener;
    use connexa_core::socks::proto::TargetAddr;
    use connexa_core::socks::{SocksConfig, SocksLauncher};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let a = api().await;
    a.import(&fleet_list(1)).await;
    let node = a
        .store
        .list_page(&NodeFilter::all(), Default::default())
        .await
        .unwrap()
        .remove(0);
    let launcher = Arc::new(SocksLauncher::new(
        Arc::new(DirectOpener::loopback_only()),
        SocksConfig {
            port_min: 34300,
            port_max: 34349,
            ..SocksConfig::default()
        },
    ));
    let _ = a.state.clone().with_socks_launcher(launcher.clone());
    let t = a.get("/metrics").await.text();
    // A family without any series is left out (the text format has no
    // empty families).
    assert!(
        !t.contains("connexa_service_bytes_total"),
        "no service runs: {t}"
    );

    let ep = launcher.start(&node, None).await.unwrap();
    // A target that sends 100 000 bytes and closes.
    let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target_addr = target.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut s, _) = target.accept().await.unwrap();
        s.write_all(&vec![7u8; 100_000]).await.unwrap();
        s.shutdown().await.unwrap();
    });
    let mut c = connexa_core::socks::client::connect(
        std::net::SocketAddr::new(ep.host.parse().unwrap(), ep.port),
        &ep.username,
        ep.password.expose(),
        &TargetAddr::Ip(target_addr),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).await.unwrap();
    assert_eq!(got.len(), 100_000);
    server.await.unwrap();
    let t = a.get("/metrics").await.text();
    let id = node.id;
    for line in [
        format!("connexa_service_bytes_total{{direction=\"down\",node=\"{id}\"}} 100000\n"),
        format!("connexa_service_connections_total{{node=\"{id}\"}} 1\n"),
        format!("connexa_service_connections{{node=\"{id}\"}} "),
        format!("connexa_service_start_time_seconds{{node=\"{id}\"}} "),
        "# TYPE connexa_service_connections gauge\n".to_owned(),
    ] {
        assert!(t.contains(&line), "{line}\n{t}");
    }
    assert!(!t.contains("\n\n"), "no empty line: {t}");
    launcher.stop(node.id).await.unwrap();
    let t = a.get("/metrics").await.text();
    assert!(!t.contains("connexa_service_bytes_total{"), "stopped: {t}");
    assert!(t.contains("connexa_socks_bytes_down_total 100000\n"), "{t}");
}

#[tokio::test]
async fn cors_is_off_unless_configured() {
    let a = api().await;
    let pre = |a: &Api| {
        let a = a.app.clone();
        async move {
            use tower::ServiceExt;
            a.oneshot(
                axum::http::Request::builder()
                    .method(Method::OPTIONS)
                    .uri("/api/v1/nodes")
                    .header(header::ORIGIN, "http://console.example")
                    .header(header::ACCESS_CONTROL_REQUEST_METHOD, "GET")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap()
        }
    };
    let r = pre(&a).await;
    assert!(
        r.headers()
            .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .is_none()
    );
    let b = api_with(HttpOptions {
        cors_origins: vec!["http://console.example".parse().unwrap()],
        ..HttpOptions::default()
    })
    .await;
    let r = pre(&b).await;
    assert_eq!(
        r.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "http://console.example"
    );
}

#[tokio::test]
async fn slow_requests_time_out_as_problems() {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    let a = api_with(HttpOptions {
        request_timeout: Duration::from_millis(200),
        ..HttpOptions::default()
    })
    .await;
    // Another connection holds SQLite's write lock: a write through the API
    // cannot finish (it waits on the lock) until the time limit answers.
    let url = format!("sqlite://{}?mode=rwc", a.dir.path().join("t.db").display());
    let holder = connexa_core::store::SqlStore::connect(&url).await.unwrap();
    let tx = holder.connection().begin().await.unwrap();
    tx.execute_unprepared("CREATE TABLE lock_holder (x INTEGER)")
        .await
        .unwrap();
    let r = a
        .send_json(
            Method::POST,
            "/api/v1/nodes",
            json!({"ip": "127.9.9.9", "login": "u", "password": "p"}),
        )
        .await;
    let p = r.problem(503, "timeout");
    assert_eq!(p["detail"], "the request took too long", "{p}");
    tx.rollback().await.unwrap();
    // Reads and writes are served again once the lock is gone.
    assert_eq!(a.get("/api/v1/stats").await.status, StatusCode::OK);
}

// --- background imports ---------------------------------------------------------------

/// `POST /api/v1/import{query}` with a `Content-Length` (as every browser and
/// HTTP client sends for a sized body) or without one (like a chunked upload).
async fn post_import(
    a: &Api,
    query: &str,
    content_type: &str,
    body: Vec<u8>,
    with_length: bool,
) -> common::Res {
    let mut b = axum::http::Request::builder()
        .method(Method::POST)
        .uri(format!("/api/v1/import{query}"))
        .header(header::AUTHORIZATION, format!("Bearer {}", a.token))
        .header(header::CONTENT_TYPE, content_type);
    if with_length {
        b = b.header(header::CONTENT_LENGTH, body.len());
    }
    a.send(b.body(axum::body::Body::from(body)).unwrap()).await
}

/// Polls a background import until it is no longer running.
async fn wait_import(a: &Api, url: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let r = a.get(url).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let v = r.json();
        if v["state"] != "running" {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "still running: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn spool_files(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// A list of `n` good rows with two broken ones (lines 5 and 150) and a
/// duplicate of line 1 at the end: `n + 3` lines.
fn list_with_bad_lines(n: usize) -> String {
    let mut lines: Vec<String> = fleet_list(n).lines().map(str::to_owned).collect();
    lines.insert(4, "127.9.250.1:admin".into());
    lines.insert(149, "127.9.0.300:admin:x".into());
    lines.push(lines[0].clone());
    lines.join("\n") + "\n"
}

/// An API whose imports over 1 KiB run in the background, spooled to a
/// temporary directory of the test's own (returned, so that it lives as long).
async fn background_api(options: HttpOptions) -> (tempfile::TempDir, Api) {
    let spool = tempfile::tempdir().unwrap();
    let a = api_with(HttpOptions {
        background_import_bytes: 1024,
        spool_dir: Some(spool.path().to_owned()),
        ..options
    })
    .await;
    (spool, a)
}

#[tokio::test]
async fn background_import_reports_what_a_sync_import_reports() {
    let (spool, a) = background_api(HttpOptions::default()).await;
    let reference = api().await;
    let text = list_with_bad_lines(300);
    assert!(text.len() > 1024);

    // The same text, synchronously, into another database.
    let sync = reference.import(&text).await;
    assert_eq!(sync.status, StatusCode::OK, "{}", sync.text());
    let sync = sync.json()["summary"].clone();

    let r = post_import(&a, "", "text/plain", text.clone().into_bytes(), true).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let accepted = r.json();
    let id = accepted["id"].as_str().unwrap().to_owned();
    let url = format!("/api/v1/imports/{id}");
    assert_eq!(accepted["url"], url);
    assert_eq!(r.headers[header::LOCATION], url.as_str());
    assert_eq!(accepted["state"], "running");
    assert_eq!(accepted["bytes_total"], text.len() as u64);
    assert_eq!(accepted["summary"], json!(null));

    let done = wait_import(&a, &url).await;
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["percent"], 100.0);
    assert_eq!(done["bytes_processed"], text.len() as u64);
    assert_eq!(done["error"], json!(null));
    assert_eq!(done["job"], json!(null));
    assert!(done["finished_at"].is_string());
    // The whole report equals the synchronous one (both databases were empty,
    // so even the node ids agree).
    assert_eq!(done["summary"], sync);
    let s = &done["summary"];
    let lines = |k: &str| -> Vec<u64> {
        s[k].as_array()
            .unwrap()
            .iter()
            .map(|e| e["line"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(lines("errors"), vec![5, 150], "{s}");
    assert_eq!(lines("duplicates"), vec![303], "{s}");
    assert_eq!(lines("added").len(), 300);
    // The rows are in the store, exactly the reported ones.
    let untimed = |snap: String| -> Vec<serde_json::Value> {
        snap.lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                let o = v.as_object_mut().unwrap();
                o.remove("created_at");
                o.remove("updated_at");
                v
            })
            .collect()
    };
    let stored = untimed(a.snapshot().await);
    assert_eq!(stored.len(), 300);
    assert_eq!(stored, untimed(reference.snapshot().await));
    let total = a.get("/api/v1/nodes?limit=0").await.json()["total"].clone();
    assert_eq!(total, 300);
    for row in s["added"].as_array().unwrap().iter().take(5) {
        a.get(&format!("/api/v1/nodes/{}", row["id"])).await.json();
    }
    // The spool file is gone.
    assert_eq!(spool_files(spool.path()), Vec::<String>::new());
    // The list shows it; its event stream is one final `done` at 100 %.
    let list = a.get("/api/v1/imports").await.json();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], id.as_str());
    let ev = a.get(&format!("{url}/events")).await;
    assert_eq!(ev.status, StatusCode::OK);
    let events = sse(&ev.text());
    assert_eq!(events.len(), 1, "{}", ev.text());
    assert_eq!(events[0].0, "done");
    assert_eq!(events[0].2["percent"], 100.0);
    assert_eq!(events[0].2["summary"], sync);
}

#[tokio::test]
async fn background_or_not_auto_and_by_parameter_and_forms() {
    let (spool, a) = background_api(HttpOptions::default()).await;
    // Under the threshold with a length, or without a length: synchronous.
    let small = fleet_list(3);
    let r = post_import(&a, "", "text/plain", small.into_bytes(), true).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["summary"]["added"].as_array().unwrap().len(), 3);
    let big = fleet_list(100);
    assert!(big.len() > 1024);
    let r = post_import(&a, "", "text/plain", big.clone().into_bytes(), false).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        r.json()["summary"]["duplicates"].as_array().unwrap().len(),
        3
    );
    assert_eq!(r.json()["summary"]["added"].as_array().unwrap().len(), 97);
    // Over the threshold but `background=false`: synchronous.
    let r = post_import(
        &a,
        "?background=false&on_conflict=replace",
        "text/plain",
        big.clone().into_bytes(),
        true,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        r.json()["summary"]["duplicates"].as_array().unwrap().len(),
        100
    );
    // Small, no length, but `background=true`: background.
    let r = post_import(
        &a,
        "?background=true&source=tiny",
        "text/plain",
        b"127.9.9.9:x:y\n".to_vec(),
        false,
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let done = wait_import(&a, r.json()["url"].as_str().unwrap()).await;
    assert_eq!(
        (
            done["state"].as_str(),
            done["summary"]["source"].as_str(),
            done["summary"]["added"].as_array().map(Vec::len)
        ),
        (Some("done"), Some("tiny"), Some(1)),
        "{done}"
    );
    // A form over the threshold: the file field is spooled and imported.
    let boundary = "b0undary";
    let mut body = Vec::new();
    body.extend(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhi\r\n")
            .as_bytes(),
    );
    body.extend(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"fleet.txt\"\r\nContent-Type: text/plain\r\n\r\n").as_bytes());
    let form_list: String = (0..60)
        .map(|i| format!("127.10.0.{}:form{i}:pw\n", i + 1))
        .collect();
    body.extend(form_list.as_bytes());
    body.extend(format!("\r\n--{boundary}--\r\n").as_bytes());
    assert!(body.len() > 1024);
    let ct = format!("multipart/form-data; boundary={boundary}");
    let r = post_import(&a, "", &ct, body, true).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    assert_eq!(r.json()["bytes_total"], form_list.len() as u64);
    let done = wait_import(&a, r.json()["url"].as_str().unwrap()).await;
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["summary"]["source"], "fleet.txt");
    assert_eq!(done["summary"]["added"].as_array().unwrap().len(), 60);
    assert_eq!(
        a.get("/api/v1/nodes?limit=0&login=form").await.json()["total"],
        60
    );
    // A form without a file field: 400, nothing registered.
    let empty_form = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nx\r\n--{boundary}--\r\n"
    );
    post_import(&a, "?background=true", &ct, empty_form.into_bytes(), true)
        .await
        .problem(400, "bad-request");
    // An empty body: 400.
    post_import(&a, "?background=true", "text/plain", vec![], false)
        .await
        .problem(400, "bad-request");
    // Newest first: the form, then the tiny one.
    let list = a.get("/api/v1/imports").await.json();
    let sources: Vec<_> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["source"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(sources, ["fleet.txt", "tiny"]);
    assert_eq!(spool_files(spool.path()), Vec::<String>::new());
}

#[tokio::test]
async fn background_import_over_the_limit_imports_nothing() {
    let (spool, a) = background_api(HttpOptions {
        max_import_bytes: 4096,
        ..HttpOptions::default()
    })
    .await;
    let big = fleet_list(200);
    assert!(big.len() > 4096);
    // Without a length: found out while spooling.
    let p = post_import(
        &a,
        "?background=true",
        "text/plain",
        big.clone().into_bytes(),
        false,
    )
    .await
    .problem(413, "payload-too-large");
    assert!(p.get("import").is_none(), "{p}");
    // With a length: refused before reading.
    post_import(&a, "", "text/plain", big.into_bytes(), true)
        .await
        .problem(413, "payload-too-large");
    assert_eq!(a.snapshot().await, "");
    assert_eq!(a.get("/api/v1/imports").await.json(), json!([]));
    assert_eq!(spool_files(spool.path()), Vec::<String>::new());
}

#[tokio::test]
async fn background_import_errors_unknown_ids_and_tokens() {
    let a = api().await;
    a.get("/api/v1/imports/0123456789abcdef")
        .await
        .problem(404, "not-found");
    a.get("/api/v1/imports/nope/events")
        .await
        .problem(404, "not-found");
    // Ids that are no import job: negative, past i64, control characters,
    // and the id of a job of another kind.
    let light = connexa_core::engine::queue_job(
        a.store.as_ref(),
        connexa_core::ports::JobKind::Light,
        NodeFilter::all(),
        connexa_core::engine::JobOptions::default(),
    )
    .await
    .unwrap();
    for id in [
        "-1".to_owned(),
        "99999999999999999999".into(),
        "%00".into(),
        "1%0A".into(),
        light.id.to_string(),
    ] {
        a.get(&format!("/api/v1/imports/{id}"))
            .await
            .problem(404, "not-found");
        a.get(&format!("/api/v1/imports/{id}/events"))
            .await
            .problem(404, "not-found");
    }
    for uri in [
        "/api/v1/imports",
        "/api/v1/imports/0123456789abcdef",
        "/api/v1/imports/0123456789abcdef/events",
    ] {
        a.req(Method::GET, uri, None, None, None)
            .await
            .problem(401, "unauthorized");
    }
    let r = a
        .req(
            Method::POST,
            "/api/v1/import?background=true",
            None,
            Some(("text/plain", b"127.9.0.1:u:p\n".to_vec())),
            None,
        )
        .await;
    r.problem(401, "unauthorized");
    assert_eq!(a.snapshot().await, "");
    assert_eq!(a.get("/api/v1/imports").await.json(), json!([]));
}

#[tokio::test]
async fn background_import_starts_the_test_job() {
    let a = api_with(HttpOptions {
        background_import_bytes: 10,
        ..HttpOptions::default()
    })
    .await;
    a.import("127.9.0.1:u:p\n").await;
    let r = post_import(
        &a,
        "?test=light",
        "text/plain",
        b"127.9.0.1:u:p\n127.9.0.2:u:p\n127.9.0.3:u:p\n".to_vec(),
        true,
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let done = wait_import(&a, r.json()["url"].as_str().unwrap()).await;
    assert_eq!(done["state"], "done", "{done}");
    let job = done["job"].as_i64().expect("a job id");
    let j = a.get(&format!("/api/v1/jobs/{job}")).await.json();
    assert_eq!(
        (j["kind"].as_str(), j["total"].as_u64()),
        (Some("light"), Some(2)),
        "{j}"
    );
}

#[tokio::test]
async fn background_import_pauses_on_shutdown_and_resumes_after_a_restart() {
    let (spool, a) = background_api(HttpOptions::default()).await;
    let big = fleet_list(60_000);
    let r = post_import(&a, "", "text/plain", big.into_bytes(), true).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let url = r.json()["url"].as_str().unwrap().to_owned();
    let job = r.json()["import_job"].as_i64().expect("the import job");
    assert_eq!(r.json()["id"], job.to_string());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while a.get(&url).await.json()["bytes_processed"] == 0 {
        assert!(std::time::Instant::now() < deadline, "no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    a.state.shutdown();
    tokio::time::timeout(Duration::from_secs(60), a.state.background_imports_ended())
        .await
        .expect("the import pauses");
    // Paused after a committed batch: still running, its spool kept.
    let v = a.get(&url).await.json();
    assert_eq!(v["state"], "running", "{v}");
    assert!(v["percent"].as_f64().unwrap() < 100.0, "{v}");
    assert_eq!(spool_files(spool.path()).len(), 1);
    let before = connexa_core::ops::count(a.store.as_ref(), &NodeFilter::all())
        .await
        .unwrap();
    assert!(before > 0 && before < 60_000, "{before}");
    // The import is a job like the others.
    let j = a.get(&format!("/api/v1/jobs/{job}")).await.json();
    assert_eq!(
        (j["kind"].as_str(), j["state"].as_str()),
        (Some("import"), Some("running")),
        "{j}"
    );
    // A restart: a new engine over the same database resumes it from its checkpoint.
    let engine = connexa_core::engine::Engine::new(
        a.store.clone(),
        std::sync::Arc::new(connexa_core::probe::LightProber::new(
            connexa_core::probe::ProbeConfig::default(),
        )),
        std::sync::Arc::new(connexa_core::engine::NotAvailable),
        std::sync::Arc::new(connexa_core::engine::NotAvailable),
        connexa_core::engine::EngineConfig::default(),
    );
    let resumed = engine
        .recover(connexa_core::engine::RecoverPolicy::Resume)
        .await
        .unwrap();
    assert_eq!(resumed, vec![connexa_core::ports::JobId(job)]);
    engine.wait(connexa_core::ports::JobId(job)).await.unwrap();
    let v = a.get(&url).await.json();
    assert_eq!(v["state"], "done", "{v}");
    assert_eq!(v["percent"], 100.0);
    let added = v["summary"]["added"].as_array().unwrap().len();
    assert_eq!(added, 60_000);
    assert_eq!(
        v["summary"]["duplicates"],
        json!([]),
        "no row counted twice"
    );
    assert_eq!(
        connexa_core::ops::count(a.store.as_ref(), &NodeFilter::all())
            .await
            .unwrap(),
        60_000
    );
    assert_eq!(spool_files(spool.path()), Vec::<String>::new());
}

#[tokio::test]
async fn the_imports_list_shows_the_newest_and_every_import_stays_readable() {
    let a = api().await;
    let mut ids = Vec::new();
    for i in 0..connexa_http::BACKGROUND_IMPORTS_LISTED + 2 {
        let r = post_import(
            &a,
            "?background=true",
            "text/plain",
            format!("127.11.0.{}:u:p\n", i + 1).into_bytes(),
            false,
        )
        .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
        let url = r.json()["url"].as_str().unwrap().to_owned();
        assert_eq!(wait_import(&a, &url).await["state"], "done");
        ids.push(r.json()["id"].as_str().unwrap().to_owned());
    }
    let list = a.get("/api/v1/imports").await.json();
    let listed: Vec<_> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_owned())
        .collect();
    let mut newest: Vec<_> = ids[2..].to_vec();
    newest.reverse();
    assert_eq!(listed, newest);
    // The list leaves the reports out; each import's own resource has it.
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|v| v["summary"].is_null())
    );
    let last = a
        .get(&format!("/api/v1/imports/{}", ids[ids.len() - 1]))
        .await
        .json();
    assert_eq!(last["summary"]["added"].as_array().unwrap().len(), 1);
    // The two oldest are left out of the list, and stay readable by id
    // (import jobs are kept in the database like the others).
    for old in &ids[..2] {
        let v = a.get(&format!("/api/v1/imports/{old}")).await.json();
        assert_eq!(v["summary"]["added"].as_array().unwrap().len(), 1, "{v}");
    }
    assert_eq!(
        a.get("/api/v1/nodes?limit=0&ip=127.11.").await.json()["total"],
        ids.len()
    );
}

#[tokio::test]
async fn background_import_events_show_progress_and_end_at_100_percent() {
    let a = api_with(HttpOptions {
        background_import_bytes: 1024,
        ..HttpOptions::default()
    })
    .await;
    let list = fleet_list(40_000);
    let r = post_import(&a, "", "text/plain", list.clone().into_bytes(), true).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let url = r.json()["url"].as_str().unwrap().to_owned();
    // The stream ends by itself after the final event.
    let ev = tokio::time::timeout(Duration::from_secs(120), a.get(&format!("{url}/events")))
        .await
        .expect("the stream ends");
    assert_eq!(ev.status, StatusCode::OK);
    assert_eq!(ev.headers[header::CONTENT_TYPE], "text/event-stream");
    let events = sse(&ev.text());
    let (last, progress) = events.split_last().expect("events");
    assert_eq!(last.0, "done");
    assert_eq!(
        (
            last.2["state"].as_str(),
            last.2["percent"].as_f64(),
            last.2["bytes_processed"].as_u64()
        ),
        (Some("done"), Some(100.0), Some(list.len() as u64))
    );
    assert_eq!(last.2["summary"]["added"].as_array().unwrap().len(), 40_000);
    // The import is long enough to be seen running at least once.
    assert!(!progress.is_empty(), "no progress event: {}", ev.text());
    let mut seen = 0;
    for (name, _, data) in progress {
        assert_eq!(name, "progress");
        assert_eq!(data["state"], "running");
        let p = data["percent"].as_f64().unwrap();
        assert!((0.0..100.0).contains(&p), "{p}");
        let b = data["bytes_processed"].as_u64().unwrap();
        assert!(b >= seen, "progress went back: {b} < {seen}");
        seen = b;
    }
}

/// A body that sends `first` and then waits for chunks from the returned sender
/// (it ends when the sender is dropped).
fn held_body(
    first: &str,
) -> (
    futures::channel::mpsc::UnboundedSender<Result<bytes::Bytes, std::io::Error>>,
    axum::body::Body,
) {
    let (tx, rx) = futures::channel::mpsc::unbounded();
    tx.unbounded_send(Ok(bytes::Bytes::from(first.to_owned())))
        .unwrap();
    (tx, axum::body::Body::from_stream(rx))
}

fn background_request(a: &Api, body: axum::body::Body) -> axum::http::Request<axum::body::Body> {
    axum::http::Request::builder()
        .method(Method::POST)
        .uri("/api/v1/import?background=true")
        .header(header::AUTHORIZATION, format!("Bearer {}", a.token))
        .header(header::CONTENT_TYPE, "text/plain")
        .body(body)
        .unwrap()
}

#[tokio::test]
async fn background_imports_over_the_running_limit_are_refused_before_the_body_is_read() {
    let (spool, a) = background_api(HttpOptions {
        max_background_imports: 1,
        ..HttpOptions::default()
    })
    .await;
    // The one slot: an upload still being received.
    let (tx, body) = held_body("127.12.0.1:u:p\n");
    let first = tokio::spawn({
        let req = background_request(&a, body);
        let app = a.app.clone();
        async move { tower::ServiceExt::oneshot(app, req).await.unwrap().status() }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while spool_files(spool.path()).is_empty() {
        assert!(std::time::Instant::now() < deadline, "no spool file");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A second one is answered at once, though its body never ends.
    let (_tx2, body2) = held_body("127.12.0.2:u:p\n");
    let r = tokio::time::timeout(
        Duration::from_secs(30),
        a.send(background_request(&a, body2)),
    )
    .await
    .expect("answered without reading the body");
    let p = r.problem(503, "unavailable");
    assert_eq!(p["retry_after"], 5, "{p}");
    assert_eq!(r.headers[header::RETRY_AFTER], "5");
    // The first one finishes; its slot is free again once it has ended.
    drop(tx);
    assert_eq!(first.await.unwrap(), StatusCode::ACCEPTED);
    let url = a.get("/api/v1/imports").await.json()[0]["url"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(wait_import(&a, &url).await["state"], "done");
    let r = post_import(
        &a,
        "?background=true",
        "text/plain",
        b"127.12.0.3:u:p\n".to_vec(),
        false,
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    assert_eq!(
        wait_import(&a, r.json()["url"].as_str().unwrap()).await["state"],
        "done"
    );
    let list = a.get("/api/v1/imports").await.json();
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    assert_eq!(
        a.get("/api/v1/nodes?limit=0&ip=127.12.").await.json()["total"],
        2
    );
    assert_eq!(spool_files(spool.path()), Vec::<String>::new());
}

#[tokio::test]
async fn background_import_during_shutdown_is_refused_and_imports_nothing() {
    let (spool, a) = background_api(HttpOptions::default()).await;
    // The upload started before the shutdown and finishes after it.
    let (tx, body) = held_body("127.13.0.1:u:p\n");
    let pending = tokio::spawn({
        let req = background_request(&a, body);
        let app = a.app.clone();
        async move {
            let res = tower::ServiceExt::oneshot(app, req).await.unwrap();
            let retry = res.headers().get(header::RETRY_AFTER).cloned();
            let body = http_body_util::BodyExt::collect(res.into_body())
                .await
                .unwrap()
                .to_bytes();
            (
                retry,
                serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
            )
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while spool_files(spool.path()).is_empty() {
        assert!(std::time::Instant::now() < deadline, "no spool file");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    a.state.shutdown();
    tx.unbounded_send(Ok(bytes::Bytes::from_static(b"127.13.0.2:u:p\n")))
        .unwrap();
    drop(tx);
    let (retry, p) = pending.await.unwrap();
    assert_eq!(p["status"], 503, "{p}");
    assert_eq!(p["type"], "urn:connexa:problem:unavailable", "{p}");
    assert!(retry.is_some());
    // A new one after the shutdown: refused too.
    post_import(
        &a,
        "?background=true",
        "text/plain",
        b"127.13.0.3:u:p\n".to_vec(),
        true,
    )
    .await
    .problem(503, "unavailable");
    assert_eq!(a.snapshot().await, "");
    assert_eq!(a.get("/api/v1/imports").await.json(), json!([]));
    assert_eq!(spool_files(spool.path()), Vec::<String>::new());
}

#[tokio::test]
async fn synchronous_imports_over_the_running_limit_are_refused_before_the_body_is_read() {
    let a = api_with(HttpOptions {
        max_sync_imports: 1,
        ..HttpOptions::default()
    })
    .await;
    let sync_request = |body| {
        axum::http::Request::builder()
            .method(Method::POST)
            .uri("/api/v1/import?background=false")
            .header(header::AUTHORIZATION, format!("Bearer {}", a.token))
            .header(header::CONTENT_TYPE, "text/plain")
            .body(body)
            .unwrap()
    };
    // Two imports whose bodies never end (until the test says): one takes
    // the slot, the other is refused at once, without its body.
    let (tx1, body1) = held_body("127.15.0.1:u:p\n");
    let (tx2, body2) = held_body("127.15.0.2:u:p\n");
    let spawn = |body| {
        let req = sync_request(body);
        let app = a.app.clone();
        tokio::spawn(async move {
            let res = tower::ServiceExt::oneshot(app, req).await.unwrap();
            let status = res.status();
            let headers = res.headers().clone();
            let body = http_body_util::BodyExt::collect(res.into_body())
                .await
                .unwrap()
                .to_bytes()
                .to_vec();
            common::Res {
                status,
                headers,
                body,
            }
        })
    };
    let (mut one, mut two) = (spawn(body1), spawn(body2));
    let (refused, other, held) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::select! {
            r = &mut one => (r.unwrap(), two, tx2),
            r = &mut two => (r.unwrap(), one, tx1),
        }
    })
    .await
    .expect("one is answered while both bodies are open");
    let p = refused.problem(503, "unavailable");
    assert_eq!(p["retry_after"], 5, "{p}");
    assert!(!other.is_finished());
    drop(held);
    let r = other.await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        r.json()["summary"]["added"].as_array().map(Vec::len),
        Some(1)
    );
    // The slot is free again.
    let r = a.import("127.15.0.3:u:p\n").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

#[tokio::test]
async fn without_the_peer_address_failed_tokens_are_not_limited_under_one_shared_key() {
    let a = api_with(HttpOptions {
        auth_failures_per_minute: 3,
        ..HttpOptions::default()
    })
    .await;
    for i in 0..30 {
        let bad = if i % 2 == 0 {
            connexa_http::auth::generate_token().unwrap()
        } else {
            format!("guess-{i}")
        };
        let r = a
            .req(Method::GET, "/api/v1/stats", Some(&bad), None, None)
            .await;
        r.problem(401, "unauthorized");
    }
    assert_eq!(a.get("/api/v1/stats").await.status, StatusCode::OK);
}

#[tokio::test]
async fn workers_are_listed_with_liveness_and_items_in_flight() {
    use connexa_core::ports::{WorkerRegistration, WorkerRole};
    let a = api().await;
    a.import(&fleet_list(3)).await;
    let now = chrono::Utc::now();
    let lease = std::time::Duration::from_secs(30);
    let reg = |name: &str, pid| WorkerRegistration {
        name: name.into(),
        host: "h1".into(),
        pid,
        version: "9".into(),
        roles: vec![WorkerRole::Jobs],
        max_services: None,
        labels: Vec::new(),
    };
    a.store
        .register_worker(&reg("live", 7), now, lease)
        .await
        .unwrap();
    a.store
        .register_worker(&reg("gone", 8), now - chrono::Duration::hours(1), lease)
        .await
        .unwrap();
    let job = connexa_core::engine::queue_job(
        a.store.as_ref(),
        connexa_core::ports::JobKind::Light,
        NodeFilter::all(),
        Default::default(),
    )
    .await
    .unwrap();
    a.store
        .claim_items(job.id, "live", 2, now, lease)
        .await
        .unwrap();
    let w = a.get("/api/v1/workers").await.json();
    let w = w.as_array().unwrap();
    assert_eq!(w.len(), 2, "{w:?}");
    assert_eq!(
        (&w[0]["name"], &w[0]["alive"], &w[0]["items_in_flight"]),
        (&json!("gone"), &json!(false), &json!(0))
    );
    assert_eq!(
        (&w[1]["name"], &w[1]["alive"], &w[1]["items_in_flight"]),
        (&json!("live"), &json!(true), &json!(2))
    );
    assert_eq!(w[1]["roles"], json!(["jobs"]));
    assert_eq!(w[1]["pid"], 7);
    let t = a.get("/metrics").await.text();
    assert!(t.contains("connexa_workers_alive 1\n"), "{t}");
    assert!(
        t.contains("connexa_worker_items_in_flight{alive=\"true\",worker=\"live\"} 2\n"),
        "{t}"
    );
}
