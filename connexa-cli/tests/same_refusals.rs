//! One table, both frontends (issue 21): the CLI and the HTTP API refuse the
//! same invalid selections and job limits with the same message — connexa-core's
//! ([`SelectionError`], [`FilterError`], [`JobOptionsError`]), each spelled in
//! its frontend's words ([`Words`]: `--min-speed` on the command line,
//! `min_speed` in a query string, `min_down_mbps` in a JSON body). Nothing is
//! changed by a refusal.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, header};
use connexa_core::domain::{FilterError, SelectionError, Words};
use connexa_core::engine::{Engine, EngineConfig, JobOptionsError, NotAvailable};
use connexa_core::import::{ImportOptions, import_into};
use connexa_core::ports::NodeStore;
use connexa_core::store::SqlStore;
use connexa_http::{AppState, HttpOptions, app};
use http_body_util::BodyExt;
use tower::ServiceExt;

/// The command line's words (as `connexa` spells them).
const CLI: Words = Words {
    field: |f| match f {
        "zipcode" => "--zip".to_owned(),
        "min_down_mbps" => "--min-speed".to_owned(),
        "max_down_mbps" => "--max-speed".to_owned(),
        "node_timeout_secs" => "--timeout".to_owned(),
        "deadline_secs" => "--deadline".to_owned(),
        f => format!("--{}", f.replace('_', "-")),
    },
    filter: "filters",
    all: "--all",
};

/// A query string's words.
const QUERY: Words = Words {
    field: |f| {
        match f {
            "zipcode" => "zip",
            "min_down_mbps" => "min_speed",
            "max_down_mbps" => "max_speed",
            f => f,
        }
        .to_owned()
    },
    filter: "a filter",
    all: "all=true",
};

/// What connexa-core refuses.
#[derive(Debug)]
enum Refusal {
    Selection(SelectionError),
    Job(JobOptionsError),
}

impl Refusal {
    fn message(&self, w: &Words) -> String {
        match self {
            Refusal::Selection(e) => e.message(w),
            Refusal::Job(e) => e.message(w),
        }
    }
}

fn filter(e: FilterError) -> Refusal {
    Refusal::Selection(SelectionError::Filter(e))
}

/// One row: the command line, the HTTP request (a query string or a JSON
/// body, each with its words), and the refusal both must give.
struct Case {
    cli: Vec<String>,
    method: Method,
    uri: String,
    body: Option<serde_json::Value>,
    words: Words,
    refusal: Refusal,
    /// The API's status (docs/http.md): a query string's refusal is a 400, a
    /// JSON body's a 422, except a per-node budget below the kind's minimum (400).
    status: u16,
}

fn case(
    cli: &[&str],
    method: Method,
    uri: &str,
    body: Option<serde_json::Value>,
    refusal: Refusal,
) -> Case {
    let words = if body.is_some() { Words::API } else { QUERY };
    let status = match (&body, &refusal) {
        (None, _) | (_, Refusal::Job(JobOptionsError::Budget(_))) => 400,
        _ => 422,
    };
    Case {
        status,
        cli: cli.iter().map(|s| s.to_string()).collect(),
        method,
        uri: uri.to_owned(),
        body,
        words,
        refusal,
    }
}

fn cases() -> Vec<Case> {
    use serde_json::json;
    let long = "a".repeat(257);
    let g = Method::GET;
    let post = Method::POST;
    let del = Method::DELETE;
    vec![
        // Filters, in a query string and on the command line (a NUL cannot
        // be in an argument: tests/hostile sends it over HTTP).
        case(
            &["nodes", "list", "--ip", "a\u{1}b"],
            g.clone(),
            "/api/v1/nodes?ip=a%01b",
            None,
            filter(FilterError::ControlCharacter { field: "ip" }),
        ),
        case(
            &["nodes", "delete", "--comment", "x\ty", "--yes"],
            del.clone(),
            "/api/v1/nodes?comment=x%09y",
            None,
            filter(FilterError::ControlCharacter { field: "comment" }),
        ),
        case(
            &["nodes", "list", "--country", ""],
            g.clone(),
            "/api/v1/nodes?country=",
            None,
            filter(FilterError::EmptyText { field: "country" }),
        ),
        case(
            &["export", "--format", "csv", "--zip", ""],
            g.clone(),
            "/api/v1/nodes?zip=",
            None,
            filter(FilterError::EmptyText { field: "zipcode" }),
        ),
        case(
            &["nodes", "list", "--ip", &long],
            g.clone(),
            &format!("/api/v1/nodes?ip={long}"),
            None,
            filter(FilterError::TooLong { field: "ip" }),
        ),
        case(
            &["nodes", "list", "--min-speed=-1"],
            g.clone(),
            "/api/v1/nodes?min_speed=-1",
            None,
            filter(FilterError::BadSpeed {
                field: "min_down_mbps",
            }),
        ),
        case(
            &["nodes", "list", "--max-speed", "inf"],
            g.clone(),
            "/api/v1/nodes?max_speed=inf",
            None,
            filter(FilterError::BadSpeed {
                field: "max_down_mbps",
            }),
        ),
        case(
            &["nodes", "list", "--fraud-max", "101"],
            g.clone(),
            "/api/v1/nodes?fraud_max=101",
            None,
            filter(FilterError::BadFraudScore),
        ),
        case(
            &["nodes", "delete", "0"],
            del.clone(),
            "/api/v1/nodes?ids=0",
            None,
            filter(FilterError::BadId(0)),
        ),
        // Selections: nothing, or more than one way.
        case(
            &["nodes", "delete"],
            del.clone(),
            "/api/v1/nodes",
            None,
            Refusal::Selection(SelectionError::Nothing),
        ),
        case(
            &["nodes", "delete", "--all", "--city", "Paris", "--yes"],
            del.clone(),
            "/api/v1/nodes?all=true&city=Paris",
            None,
            Refusal::Selection(SelectionError::Ambiguous),
        ),
        case(
            &["service", "start"],
            post.clone(),
            "/api/v1/services/start",
            Some(json!({})),
            Refusal::Selection(SelectionError::Nothing),
        ),
        case(
            &["test", "light", "1", "--all"],
            post.clone(),
            "/api/v1/jobs",
            Some(json!({"kind": "light", "ids": [1], "all": true})),
            Refusal::Selection(SelectionError::Ambiguous),
        ),
        case(
            &["test", "light", "--login", "a\u{1b}[2J"],
            post.clone(),
            "/api/v1/jobs",
            Some(json!({"kind": "light", "filter": {"login": "a\u{1b}[2J"}})),
            filter(FilterError::ControlCharacter { field: "login" }),
        ),
        case(
            &["test", "light", "--min-speed=-3"],
            post.clone(),
            "/api/v1/jobs",
            Some(json!({"kind": "light", "filter": {"min_down_mbps": -3.0}})),
            filter(FilterError::BadSpeed {
                field: "min_down_mbps",
            }),
        ),
        // Job limits.
        case(
            &["test", "light", "--all", "--concurrency", "0"],
            post.clone(),
            "/api/v1/jobs",
            Some(json!({"kind": "light", "all": true, "concurrency": 0})),
            Refusal::Job(JobOptionsError::Concurrency),
        ),
        case(
            &["test", "light", "--all", "--concurrency", "100001"],
            post.clone(),
            "/api/v1/jobs",
            Some(json!({"kind": "light", "all": true, "concurrency": 100_001})),
            Refusal::Job(JobOptionsError::Concurrency),
        ),
        case(
            &["test", "light", "--all", "--deadline", "0"],
            post.clone(),
            "/api/v1/jobs",
            Some(json!({"kind": "light", "all": true, "deadline_secs": 0})),
            Refusal::Job(JobOptionsError::Seconds {
                field: "deadline_secs",
            }),
        ),
        case(
            &["test", "auth", "--all", "--timeout", "700000"],
            post.clone(),
            "/api/v1/jobs",
            Some(json!({"kind": "auth", "all": true, "node_timeout_secs": 700_000})),
            Refusal::Job(JobOptionsError::Seconds {
                field: "node_timeout_secs",
            }),
        ),
        case(
            &["test", "speed", "--all", "--timeout", "1"],
            post.clone(),
            "/api/v1/jobs",
            Some(json!({"kind": "speed", "all": true, "node_timeout_secs": 1})),
            Refusal::Job(JobOptionsError::Budget(
                connexa_core::JobOptions::default()
                    .node_timeout(Duration::from_secs(1))
                    .validate(connexa_core::JobKind::Speed)
                    .unwrap_err(),
            )),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_and_the_api_refuse_the_same_things_with_the_same_words() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
    let store = Arc::new(SqlStore::connect(&db).await.unwrap());
    let report = import_into(
        store.clone(),
        &b"127.0.0.5:alice:pw1\n127.0.0.6:bob:pw2\n"[..],
        ImportOptions::default(),
    )
    .await;
    assert_eq!(report.added_ids().len(), 2);
    let engine = Engine::new(
        store.clone(),
        Arc::new(connexa_core::probe::LightProber::new(Default::default())),
        Arc::new(NotAvailable),
        Arc::new(NotAvailable),
        EngineConfig::default(),
    );
    let (token, _) = connexa_http::auth::create_token(store.as_ref(), "test", None)
        .await
        .unwrap();
    let api = app(AppState::new(engine, store.clone(), HttpOptions::default()));
    let before = store.jobs(100).await.unwrap().len();

    for c in cases() {
        let cli_words = c.refusal.message(&CLI);
        let api_words = c.refusal.message(&c.words);
        // Same refusal: the messages differ only in how each spells its fields.
        let plain = Words {
            field: |f| f.to_owned(),
            filter: "a filter",
            all: "all",
        };
        assert_eq!(
            c.refusal.message(&plain),
            c.refusal.message(&Words::API),
            "{c:?}",
            c = c.cli
        );

        let out = Command::new(env!("CARGO_BIN_EXE_connexa"))
            .current_dir(dir.path())
            .env_remove("CONNEXA_DB")
            .env_remove("CONNEXA_CONFIG")
            .arg("--db")
            .arg(&db)
            .args(&c.cli)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{:?}: {err}", c.cli);
        assert_eq!(err.trim_end(), format!("error: {cli_words}"), "{:?}", c.cli);

        let mut req = Request::builder()
            .method(c.method.clone())
            .uri(&c.uri)
            .header(header::AUTHORIZATION, format!("Bearer {token}"));
        let body = match &c.body {
            Some(b) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Body::from(b.to_string())
            }
            None => Body::empty(),
        };
        let res = api.clone().oneshot(req.body(body).unwrap()).await.unwrap();
        let status = res.status().as_u16();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        let problem: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            panic!(
                "{} {}: {}",
                c.method,
                c.uri,
                String::from_utf8_lossy(&bytes)
            )
        });
        assert!(
            status == c.status,
            "{} {}: {status} {problem}",
            c.method,
            c.uri
        );
        assert_eq!(problem["detail"], api_words, "{} {}", c.method, c.uri);
    }
    // Nothing was changed by any refusal.
    assert_eq!(store.jobs(100).await.unwrap().len(), before);
    let wanted = connexa_core::NodeFilter {
        service_wanted: Some(true),
        ..connexa_core::NodeFilter::all()
    };
    assert_eq!(
        connexa_core::ops::count(store.as_ref(), &wanted)
            .await
            .unwrap(),
        0,
        "a refused service start made a service wanted"
    );
    assert_eq!(
        connexa_core::ops::count(store.as_ref(), &connexa_core::NodeFilter::all())
            .await
            .unwrap(),
        2
    );
}
