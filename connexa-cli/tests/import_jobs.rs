//! An import started over HTTP is an engine job like the others: the real
//! `connexa` binary lists it (`jobs list`), shows its report (`jobs show`)
//! and cancels it from another process (`jobs cancel`), which stops it after
//! its current batch and keeps exactly what it committed.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use connexa_core::engine::{Engine, EngineConfig, NotAvailable, import_summary};
use connexa_core::ports::{JobId, JobState, NodeStore};
use connexa_core::store::SqlStore;
use connexa_http::{AppState, HttpOptions, app};
use http_body_util::BodyExt;
use tower::ServiceExt;

struct Server {
    _dir: tempfile::TempDir,
    spool: tempfile::TempDir,
    db: String,
    store: Arc<SqlStore>,
    engine: Engine,
    api: axum::Router,
    token: String,
}

async fn server() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let spool = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
    let store = Arc::new(SqlStore::connect(&db).await.unwrap());
    let engine = Engine::new(
        store.clone(),
        Arc::new(connexa_core::probe::LightProber::new(Default::default())),
        Arc::new(NotAvailable),
        Arc::new(NotAvailable),
        EngineConfig {
            poll_interval: Duration::from_millis(20),
            ..EngineConfig::default()
        },
    );
    let (token, _) = connexa_http::auth::create_token(store.as_ref(), "test", None)
        .await
        .unwrap();
    let options = HttpOptions {
        spool_dir: Some(spool.path().to_owned()),
        ..HttpOptions::default()
    };
    let api = app(AppState::new(engine.clone(), store.clone(), options));
    Server {
        _dir: dir,
        spool,
        db,
        store,
        engine,
        api,
        token,
    }
}

fn list(n: usize) -> String {
    (0..n)
        .map(|i| format!("198.51.{}.{}:user{i}:pw{i}\n", (i >> 8) & 255, i & 255))
        .collect()
}

impl Server {
    /// `POST /import?background=true`: the import job's id.
    async fn import(&self, text: String) -> JobId {
        let req = Request::builder()
            .method(Method::POST)
            .uri("/api/v1/import?background=true&source=fleet.txt")
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(header::CONTENT_TYPE, "text/plain")
            .body(Body::from(text))
            .unwrap();
        let res = self.api.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::ACCEPTED);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        JobId(v["import_job"].as_i64().expect("an import job"))
    }

    fn connexa(&self, args: &[&str]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_connexa"))
            .env_remove("CONNEXA_DB")
            .env_remove("CONNEXA_CONFIG")
            .arg("--db")
            .arg(&self.db)
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "connexa {args:?}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }

    async fn stored(&self) -> u64 {
        self.store
            .counts()
            .await
            .unwrap()
            .iter()
            .map(|(_, n)| n)
            .sum()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connexa_jobs_lists_and_shows_an_import_started_over_http() {
    let s = server().await;
    let mut text = list(500);
    text.push_str("198.51.0.300:bad:row\n");
    let job = s.import(text).await;
    let done = s.engine.wait(job).await.unwrap();
    assert_eq!(done.job.state, JobState::Done);

    let listed = s.connexa(&["jobs", "list"]);
    let row = listed
        .lines()
        .find(|l| l.split_whitespace().next() == Some(&job.to_string()))
        .unwrap_or_else(|| panic!("job {job} not listed:\n{listed}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cols[1..3], ["import", "done"], "{row}");

    let shown = s.connexa(&["jobs", "show", &job.to_string()]);
    assert!(
        shown.contains(&format!("job #{job} import done")),
        "{shown}"
    );
    assert!(shown.contains("import of fleet.txt"), "{shown}");
    assert!(
        shown.contains("added 500, replaced 0, duplicates 0, conflicts 0, errors 1"),
        "{shown}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&s.connexa(&["--output", "json", "jobs", "show", &job.to_string()]))
            .unwrap();
    assert_eq!(
        json["import"]["summary"]["errors"][0]["line"], 501,
        "{json}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connexa_jobs_cancel_stops_an_import_of_the_server_and_keeps_what_was_committed() {
    let s = server().await;
    let job = s.import(list(60_000)).await;
    let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
    while s.store.import_run(job).await.unwrap().bytes_done == 0 {
        assert!(tokio::time::Instant::now() < give_up, "no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Another process cancels it: the server's runner stops at its next batch.
    let said = s.connexa(&["jobs", "cancel", &job.to_string()]);
    assert!(said.contains("cancelled"), "{said}");
    let done = s.engine.wait(job).await.unwrap();
    assert_eq!(done.job.state, JobState::Cancelled);
    let give_up = tokio::time::Instant::now() + Duration::from_secs(30);
    while s.engine.is_running_here(job) {
        assert!(tokio::time::Instant::now() < give_up, "the runner goes on");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let summary = import_summary(s.store.as_ref(), &done.job).await.unwrap();
    let stored = s.stored().await;
    assert_eq!(stored, summary.added.len() as u64);
    assert!(stored > 0 && stored < 60_000, "{stored}");
    assert_eq!(std::fs::read_dir(s.spool.path()).unwrap().count(), 0);
}
