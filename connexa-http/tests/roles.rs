//! Roles and token scopes: every route of `roles::ROUTES` against tokens of
//! every role (refused below the declared role, let through at or above it),
//! the table against the OpenAPI document, secrets masked below `admin`
//! (lists, single nodes, services, exports, job events), the `metrics` scope,
//! and refusals that do not count as failed authentications.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use common::{Api, Res, api, api_with, fleet_list};
use connexa_core::domain::{Event, Level, NodeId, Outcome, Secret, ServiceEndpoint};
use connexa_core::ports::{ApplyContext, NodeStore, Role, TokenScope};
use connexa_http::HttpOptions;
use connexa_http::roles::{METRICS_PATH, ROUTES, required_role};
use serde_json::json;

/// Tokens of each role (full scope) and a metrics-scope token.
struct Tokens {
    viewer: String,
    operator: String,
    admin: String,
    metrics: String,
}

impl Tokens {
    fn of(&self, role: Role) -> &str {
        match role {
            Role::Viewer => &self.viewer,
            Role::Operator => &self.operator,
            Role::Admin => &self.admin,
        }
    }
}

async fn tokens(a: &Api) -> Tokens {
    let make = |name: &'static str, role: Role, scope: TokenScope| async move {
        connexa_http::auth::create_token_with(a.store.as_ref(), name, role, scope, None)
            .await
            .unwrap()
            .0
    };
    Tokens {
        viewer: make("viewer", Role::Viewer, TokenScope::Full).await,
        operator: make("operator", Role::Operator, TokenScope::Full).await,
        admin: make("admin", Role::Admin, TokenScope::Full).await,
        metrics: make("scraper", Role::Viewer, TokenScope::Metrics).await,
    }
}

/// A concrete request target for a route template: ids that exist nowhere
/// (a route may answer 404 for them; only the authorization is asserted, and
/// nothing gets deleted).
fn target(path: &str) -> String {
    path.replace("{id}", "999999")
}

async fn call(a: &Api, method: &Method, path: &str, token: &str) -> Res {
    tokio::time::timeout(
        Duration::from_secs(60),
        a.req(method.clone(), &target(path), Some(token), None, None),
    )
    .await
    .unwrap_or_else(|_| panic!("{method} {path} did not answer"))
}

/// Every route of the table, for every role: 403 `forbidden` naming the
/// role needed below it; neither 401 nor 403 at or above it, and for an admin
/// never the router's "no such route" (so every entry is a real route).
#[tokio::test]
async fn every_route_refuses_the_roles_below_it_and_only_those() {
    let a = api().await;
    a.import(&fleet_list(2)).await;
    let t = tokens(&a).await;
    let before = a.snapshot().await;
    for (method, path, needed) in ROUTES {
        for role in Role::ALL {
            let r = call(&a, method, path, t.of(role)).await;
            if role < *needed {
                let p = r.problem(403, "forbidden");
                assert_eq!(
                    p["detail"],
                    format!("this route needs the {needed} role; this token is {role}"),
                    "{method} {path} as {role}"
                );
            } else {
                assert!(
                    r.status != StatusCode::FORBIDDEN && r.status != StatusCode::UNAUTHORIZED,
                    "{method} {path} as {role}: {} {}",
                    r.status,
                    r.text()
                );
                if r.status == StatusCode::NOT_FOUND || r.status == StatusCode::METHOD_NOT_ALLOWED {
                    assert_ne!(
                        r.json()["detail"],
                        "no such route",
                        "{method} {path}: in the table but not routed"
                    );
                    assert_ne!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
                }
            }
        }
    }
    assert_eq!(a.snapshot().await, before, "the walk changed no node");
    // HEAD is checked as GET; another method on a known path is the router's 405.
    let r = a
        .req(Method::HEAD, "/api/v1/stats", Some(&t.viewer), None, None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    a.req(Method::PUT, "/api/v1/nodes", Some(&t.viewer), None, None)
        .await
        .problem(405, "method-not-allowed");
    // An unknown route stays a 404 for every role.
    a.req(Method::GET, "/api/v1/nope", Some(&t.viewer), None, None)
        .await
        .problem(404, "not-found");
}

/// The table and the OpenAPI document name the same operations, and each
/// operation shows the role it needs (`x-required-role` and its description):
/// a new route without a role fails here.
#[tokio::test]
async fn the_route_table_and_the_openapi_document_agree() {
    let a = api().await;
    let doc = a.get("/api/v1/openapi.json").await.json();
    let mut documented = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (m, op) in item.as_object().unwrap() {
            let Ok(method) = m.to_uppercase().parse::<Method>() else {
                continue;
            };
            if !op.is_object() || path == "/healthz" || path.starts_with("/speed/") {
                continue;
            }
            if connexa_http::roles::is_public(&method, path) {
                // Signing in: no credentials, and the document says so.
                assert_eq!(op["x-required-role"], "none", "{method} {path}");
                assert_eq!(op["security"], serde_json::json!([{}]), "{method} {path}");
                continue;
            }
            let role = required_role(&method, path)
                .unwrap_or_else(|| panic!("{method} {path} is documented but has no role"));
            assert_eq!(op["x-required-role"], role.as_str(), "{method} {path}");
            let desc = op["description"].as_str().unwrap_or_default();
            assert!(
                desc.contains(&format!("Needs the `{role}` role")),
                "{method} {path}: {desc}"
            );
            documented.push((method, path.clone()));
        }
    }
    for (method, path, _) in ROUTES {
        assert!(
            documented.iter().any(|(m, p)| m == method && p == path),
            "{method} {path} has a role but is not documented"
        );
    }
    assert_eq!(documented.len(), ROUTES.len());
}

/// Two nodes with known passwords, node 1 online with a SOCKS5 service.
async fn fleet_with_service(a: &Api) {
    a.req(
        Method::POST,
        "/api/v1/import",
        Some(&a.token),
        Some((
            "text/plain",
            b"127.9.0.1:alice:nodepw-one\n127.9.0.2:bob:nodepw-two\n".to_vec(),
        )),
        None,
    )
    .await;
    a.store
        .apply(
            NodeId(1),
            Event::Tested(Outcome::success(Level::Speed)),
            ApplyContext::now(),
        )
        .await
        .unwrap();
    a.store
        .apply(
            NodeId(1),
            Event::ServiceStarted(ServiceEndpoint {
                host: "127.0.0.1".into(),
                port: 20001,
                username: "su".into(),
                password: Secret::new("sockspw-one"),
            }),
            ApplyContext::now(),
        )
        .await
        .unwrap();
}

const SECRETS: [&str; 3] = ["nodepw-one", "nodepw-two", "sockspw-one"];

fn assert_masked(what: &str, body: &str) {
    for s in SECRETS {
        assert!(!body.contains(s), "{what} shows {s}: {body}");
    }
}

/// Below admin every view masks: node lists, one node, services, every
/// export format and job events; `reveal=true` is refused (403), not
/// silently ignored. An admin gets the secrets in clear.
#[tokio::test]
async fn viewers_and_operators_see_masked_passwords_everywhere() {
    let a = api().await;
    fleet_with_service(&a).await;
    let t = tokens(&a).await;
    for role in [Role::Viewer, Role::Operator] {
        let tok = t.of(role);
        let a = &a;
        let get = |uri: String| async move {
            let r = a.req(Method::GET, &uri, Some(tok), None, None).await;
            assert_eq!(r.status, StatusCode::OK, "{uri} as {role}: {}", r.text());
            r
        };
        let list = get("/api/v1/nodes".into()).await;
        assert_masked("list", &list.text());
        assert_eq!(list.json()["items"][0]["password"], "***");
        assert_eq!(list.json()["items"][0]["service"]["password"], "***");
        let one = get("/api/v1/nodes/1".into()).await;
        assert_masked("show", &one.text());
        assert_eq!(one.json()["password"], "***");
        let services = get("/api/v1/services".into()).await;
        assert_masked("services", &services.text());
        assert_eq!(services.json()["items"][0]["service"]["password"], "***");
        for f in ["csv", "txt", "json", "pptp", "socks", "socks-colon"] {
            let e = get(format!("/api/v1/export?format={f}")).await;
            assert_masked(&format!("export {f} as {role}"), &e.text());
            assert!(
                e.text().contains("***") || e.text().contains("%2A%2A%2A"),
                "export {f} as {role}: {}",
                e.text()
            );
        }
        for uri in [
            "/api/v1/nodes?reveal=true",
            "/api/v1/nodes/1?reveal=true",
            "/api/v1/services?reveal=true",
        ] {
            let p = a
                .req(Method::GET, uri, Some(tok), None, None)
                .await
                .problem(403, "forbidden");
            assert_eq!(
                p["detail"],
                format!("reveal=true needs the admin role; this token is {role}"),
                "{uri}"
            );
        }
    }
    // Job events (as a viewer): results and progress, never a password.
    let job = a
        .send_json(
            Method::POST,
            "/api/v1/jobs",
            json!({"kind": "light", "all": true}),
        )
        .await;
    assert_eq!(job.status, StatusCode::ACCEPTED, "{}", job.text());
    let id = job.json()["id"].as_i64().unwrap();
    let ev = tokio::time::timeout(
        Duration::from_secs(60),
        a.req(
            Method::GET,
            &format!("/api/v1/jobs/{id}/events"),
            Some(&t.viewer),
            None,
            None,
        ),
    )
    .await
    .expect("the event stream ends with the job");
    assert_eq!(ev.status, StatusCode::OK);
    assert!(ev.text().contains("event: done"), "{}", ev.text());
    assert_masked("job events", &ev.text());
    // The admin: secrets in clear where asked for.
    let adm = |uri: &'static str| a.req(Method::GET, uri, Some(&t.admin), None, None);
    let one = adm("/api/v1/nodes/1?reveal=true").await.json();
    assert_eq!(
        (
            one["password"].as_str(),
            one["service"]["password"].as_str()
        ),
        (Some("nodepw-one"), Some("sockspw-one"))
    );
    assert_eq!(adm("/api/v1/nodes/1").await.json()["password"], "***");
    let csv = adm("/api/v1/export?format=csv").await.text();
    assert!(
        csv.contains("nodepw-one") && csv.contains("nodepw-two"),
        "{csv}"
    );
    let socks = adm("/api/v1/export?format=socks-colon").await.text();
    assert_eq!(socks, "127.0.0.1:20001:su:sockspw-one\n");
}

/// A `metrics`-scope token reads `/metrics` and nothing else; a full-scope
/// token needs `operator` for `/metrics`.
#[tokio::test]
async fn a_metrics_token_reads_metrics_and_nothing_else() {
    let a = api().await;
    let t = tokens(&a).await;
    let r = call(&a, &Method::GET, METRICS_PATH, &t.metrics).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(r.text().contains("# TYPE"), "{}", r.text());
    for (method, path, _) in ROUTES {
        if *path == METRICS_PATH {
            continue;
        }
        let p = call(&a, method, path, &t.metrics)
            .await
            .problem(403, "forbidden");
        assert!(
            p["detail"].as_str().unwrap().contains("scope is metrics"),
            "{method} {path}: {p}"
        );
    }
    call(&a, &Method::GET, METRICS_PATH, &t.viewer)
        .await
        .problem(403, "forbidden");
    assert_eq!(
        call(&a, &Method::GET, METRICS_PATH, &t.operator)
            .await
            .status,
        StatusCode::OK
    );
}

/// 403s are not failed authentications: after many refusals from one
/// address, a wrong token from it is still a 401, not a 429.
#[tokio::test]
async fn refusals_do_not_count_against_the_failed_auth_limit() {
    let a = api_with(HttpOptions {
        auth_failures_per_minute: 2,
        ..HttpOptions::default()
    })
    .await;
    let t = tokens(&a).await;
    let from: SocketAddr = "127.0.0.5:4000".parse().unwrap();
    for _ in 0..10 {
        a.req(
            Method::DELETE,
            "/api/v1/nodes/1",
            Some(&t.viewer),
            None,
            Some(from),
        )
        .await
        .problem(403, "forbidden");
    }
    let wrong = format!("cxa_{}", "0".repeat(64));
    a.req(Method::GET, "/api/v1/stats", Some(&wrong), None, Some(from))
        .await
        .problem(401, "unauthorized");
}

/// `GET /token` tells a client (the console) which token it holds: name,
/// role and scope, never the token nor its hash.
#[tokio::test]
async fn a_token_can_read_its_own_role() {
    let a = api().await;
    let t = tokens(&a).await;
    for (role, name) in [
        (Role::Viewer, "viewer"),
        (Role::Operator, "operator"),
        (Role::Admin, "admin"),
    ] {
        let r = call(&a, &Method::GET, "/api/v1/token", t.of(role)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let j = r.json();
        assert_eq!(
            (j["name"].as_str(), j["role"].as_str(), j["scope"].as_str()),
            (Some(name), Some(role.as_str()), Some("full"))
        );
        assert!(!r.text().contains(t.of(role)), "{}", r.text());
        assert!(!r.text().contains("hash"), "{}", r.text());
    }
}
