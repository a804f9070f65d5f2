//! A property-based request generator (proptest) over the documented routes:
//! random methods, path segments, query strings (known and unknown keys,
//! SQL-looking and binary-ish values), bodies and content types, with and
//! without a valid token. Whatever comes in, the answer is never a 5xx, every
//! error is a problem document, and requests without a valid token change
//! nothing in the database.

mod common;

use axum::http::{Method, StatusCode, header};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

#[derive(Debug, Clone)]
struct Req {
    method: Method,
    path: String,
    query: Vec<(String, String)>,
    body: Option<(String, Vec<u8>)>,
    auth: u8,
}

fn paths() -> Vec<String> {
    let doc: serde_json::Value = serde_json::from_str(&connexa_http::openapi::json()).unwrap();
    doc["paths"].as_object().unwrap().keys().cloned().collect()
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("' OR 1=1 --".to_owned()),
        Just("1;DROP TABLE nodes".to_owned()),
        Just("true".to_owned()),
        Just("-1".to_owned()),
        Just("NaN".to_owned()),
        Just("1,2,3".to_owned()),
        Just("not_tested".to_owned()),
        Just("2026-01-01T00:00:00Z".to_owned()),
        Just("../../etc/passwd".to_owned()),
        Just("99999999999999999999".to_owned()),
        "[ -~]{0,12}",
        "\\PC{0,6}",
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("ids"),
        Just("status"),
        Just("ip"),
        Just("login"),
        Just("country"),
        Just("min_speed"),
        Just("checked_before"),
        Just("has_service"),
        Just("limit"),
        Just("offset"),
        Just("sort"),
        Just("desc"),
        Just("reveal"),
        Just("format"),
        Just("filename"),
        Just("all"),
        Just("after"),
        Just("on_conflict"),
        Just("test"),
        Just("bogus"),
    ]
    .prop_map(str::to_owned)
}

fn body() -> impl Strategy<Value = Option<(String, Vec<u8>)>> {
    let json = prop_oneof![
        Just(r#"{"kind":"light","ids":[1,2]}"#.to_owned()),
        Just(r#"{"kind":"light","filter":{"country":"' OR 1=1"}}"#.to_owned()),
        Just(r#"{"ids":[1]}"#.to_owned()),
        Just(r#"{"city":"x"}"#.to_owned()),
        Just(r#"{"ip":"127.9.9.9","login":"a","password":"b"}"#.to_owned()),
        Just("{".to_owned()),
        Just("[]".to_owned()),
        Just("null".to_owned()),
        "[ -~]{0,40}",
    ];
    prop_oneof![
        Just(None),
        (
            prop_oneof![
                Just("application/json".to_owned()),
                Just("text/plain".to_owned()),
                Just("multipart/form-data; boundary=x".to_owned()),
                Just("application/x-www-form-urlencoded".to_owned()),
            ],
            json
        )
            .prop_map(|(ct, b)| Some((ct, b.into_bytes()))),
    ]
}

fn request(paths: Vec<String>) -> impl Strategy<Value = Req> {
    (
        prop_oneof![
            Just(Method::GET),
            Just(Method::POST),
            Just(Method::PATCH),
            Just(Method::DELETE),
            Just(Method::PUT)
        ],
        proptest::sample::select(paths),
        prop_oneof![
            Just("1".to_owned()),
            Just("0".to_owned()),
            Just("x".to_owned()),
            Just("-5".to_owned())
        ],
        proptest::collection::vec((key(), value()), 0..4),
        body(),
        0u8..3,
    )
        .prop_map(|(method, path, id, query, body, auth)| Req {
            method,
            path: path.replace("{id}", &id),
            query,
            body,
            auth,
        })
}

fn encode(s: &str) -> String {
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

#[test]
fn generated_requests_never_fail_the_server() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let a = rt.block_on(async {
        let a = common::api().await;
        a.import(&common::fleet_list(20)).await;
        a
    });
    let mut runner = TestRunner::new(Config {
        cases: 400,
        failure_persistence: None,
        ..Config::default()
    });
    let counter = std::sync::atomic::AtomicU32::new(0);
    runner
        .run(&request(paths()), |r| {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let q: Vec<String> = r
                .query
                .iter()
                .map(|(k, v)| format!("{k}={}", encode(v)))
                .collect();
            let uri = if q.is_empty() {
                r.path.clone()
            } else {
                format!("{}?{}", r.path, q.join("&"))
            };
            let forged = connexa_http::auth::generate_token().unwrap();
            let token = match r.auth {
                0 => Some(a.token.as_str()),
                1 => Some(forged.as_str()),
                _ => None,
            };
            // A different source address per case keeps the failure limit out of the way.
            let from = std::net::SocketAddr::from(([127, 2, (n >> 8) as u8, n as u8], 1));
            let before =
                (r.auth != 0 && !r.path.starts_with("/healthz")).then(|| rt.block_on(a.snapshot()));
            let body = r.body.as_ref().map(|(ct, b)| (ct.as_str(), b.clone()));
            let res = rt.block_on(a.req(r.method.clone(), &uri, token, body, Some(from)));
            prop_assert!(
                !res.status.is_server_error(),
                "{} {uri}: {} {}",
                r.method,
                res.status,
                res.text()
            );
            if res.status.as_u16() >= 400 {
                prop_assert_eq!(
                    res.headers
                        .get(header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok()),
                    Some("application/problem+json")
                );
                let j = res.json();
                prop_assert!(
                    j["type"]
                        .as_str()
                        .unwrap_or("")
                        .starts_with("urn:connexa:problem:")
                );
            }
            if let Some(before) = &before
                && connexa_http::roles::is_public(&r.method, &r.path)
            {
                // Signing in: generated names and passwords never get in.
                prop_assert!(
                    !res.status.is_success(),
                    "{} {uri}: {}",
                    r.method,
                    res.status
                );
                prop_assert_eq!(&rt.block_on(a.snapshot()), before);
            } else if let Some(before) = before {
                // Never a success without a token (a wrong method may say so first).
                prop_assert!(
                    [StatusCode::UNAUTHORIZED, StatusCode::METHOD_NOT_ALLOWED]
                        .contains(&res.status),
                    "{} {uri}: {}",
                    r.method,
                    res.status
                );
                prop_assert_eq!(rt.block_on(a.snapshot()), before);
            }
            Ok(())
        })
        .unwrap();
}
