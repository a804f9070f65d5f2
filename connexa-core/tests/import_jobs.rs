//! Import jobs (`JobKind::Import`) on real stores (SQLite files and, with
//! CONNEXA_TEST_PG_URL, PostgreSQL): the report equals a synchronous import's,
//! a paused or crashed import resumes from its checkpoint with the same
//! report and no row twice, a cancelled one keeps exactly what it committed,
//! a gone spool ends it `interrupted` with the reason, a lost commit
//! acknowledgment is not applied twice.

mod common;
mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::TestDb;
use connexa_core::domain::{Node, Outcome};
use connexa_core::engine::{Engine, EngineConfig, NotAvailable, RecoverPolicy, import_summary};
use connexa_core::import::{ImportOptions, import_into};
use connexa_core::ops::ImportSummary;
use connexa_core::ports::*;
use support::{Fault, FaultStore, Method};

/// A node list of `n` rows with, every 97th row, an unreadable line, and
/// every 89th a copy of an earlier row (a duplicate within the file).
fn list(n: usize) -> String {
    let mut s = String::from("# a seller's list\n");
    for i in 0..n {
        let ip = format!("203.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255);
        s.push_str(&format!("{ip}:user{i}:pw{i}\n"));
        if i % 97 == 5 {
            s.push_str(&format!("203.0.0.999:bad{i}:x\n"));
        }
        if i % 89 == 7 {
            let j = i / 2;
            let ip = format!("203.{}.{}.{}", (j >> 16) & 255, (j >> 8) & 255, j & 255);
            s.push_str(&format!("{ip}:user{j}:pw{j}\n"));
        }
    }
    s
}

fn spool(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("list.spool");
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
    path
}

fn spec(path: &Path, delete: bool) -> ImportSpec {
    ImportSpec {
        source: "list.txt".into(),
        spool: path.to_owned(),
        delete_spool: delete,
        host: connexa_core::ports::hostname(),
        bytes_total: std::fs::metadata(path).unwrap().len(),
        on_conflict: OnConflict::Skip,
        test: None,
        actor: None,
        actor_source: None,
    }
}

/// Import jobs probe nothing.
struct NoProber;

#[async_trait::async_trait]
impl Prober for NoProber {
    async fn probe(&self, _node: &Node, _depth: ProbeDepth) -> Result<Outcome, ProbeError> {
        Err(ProbeError::Config("no prober in these tests".into()))
    }
}

fn engine(store: Arc<dyn NodeStore>, worker: &str) -> Engine {
    Engine::new(
        store,
        Arc::new(NoProber),
        Arc::new(NotAvailable),
        Arc::new(NotAvailable),
        EngineConfig {
            worker: worker.into(),
            poll_interval: Duration::from_millis(20),
            ..EngineConfig::default()
        },
    )
}

/// The report a synchronous import of `text` gives on a fresh store.
async fn reference(text: &str) -> ImportSummary {
    let db = common::sqlite().await;
    let report = import_into(
        Arc::new(db.store.clone()),
        std::io::Cursor::new(text.as_bytes().to_vec()),
        ImportOptions::default(),
    )
    .await;
    ImportSummary::new("list.txt", &report)
}

/// The parts of a report that do not depend on the ids a store hands out.
fn shape(s: &ImportSummary) -> serde_json::Value {
    serde_json::json!({
        "source": s.source,
        "added": s.added.iter().map(|r| r.line).collect::<Vec<_>>(),
        "duplicates": s.duplicates.iter().map(|r| (r.line, r.with_line)).collect::<Vec<_>>(),
        "conflicts": s.conflicts.iter().map(|r| (r.line, r.with_line)).collect::<Vec<_>>(),
        "errors": serde_json::to_value(&s.errors).unwrap(),
        "ignored": serde_json::to_value(&s.ignored).unwrap(),
        "not_inserted": s.not_inserted,
        "failure": s.failure,
    })
}

async fn nodes_stored(store: &dyn NodeStore) -> u64 {
    store.counts().await.unwrap().iter().map(|(_, n)| *n).sum()
}

async fn wait_bytes(store: &dyn NodeStore, job: JobId, more_than: u64) -> ImportRun {
    let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let run = store.import_run(job).await.unwrap();
        if run.bytes_done > more_than {
            return run;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "no progress: {run:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn reads_whole_spool(db: TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let text = list(3_000);
    let path = spool(dir.path(), &text);
    let store: Arc<dyn NodeStore> = Arc::new(db.store.clone());
    let e = engine(Arc::clone(&store), "w1");
    let job = e.start_import(spec(&path, true)).await.unwrap();
    let done = e.wait(job).await.unwrap();
    assert_eq!(done.job.kind, JobKind::Import);
    assert_eq!(done.job.state, JobState::Done);
    let size = text.len() as u64;
    assert_eq!((done.progress.total, done.progress.ok), (size, size));
    assert_eq!(done.progress.percent(), 100.0);
    let summary = import_summary(store.as_ref(), &done.job).await.unwrap();
    assert_eq!(shape(&summary), shape(&reference(&text).await));
    assert_eq!(
        nodes_stored(store.as_ref()).await,
        summary.added.len() as u64
    );
    assert!(
        !path.exists(),
        "the import's own spool is deleted at its end"
    );
    // The job is listed with the others.
    let listed = store.jobs(10).await.unwrap();
    assert!(
        listed
            .iter()
            .any(|j| j.id == job && j.kind == JobKind::Import)
    );
}

#[tokio::test]
async fn an_import_job_reads_its_spool_into_the_store_with_the_synchronous_report() {
    reads_whole_spool(common::sqlite().await).await;
}

#[tokio::test]
async fn postgres_an_import_job_reads_its_spool_into_the_store_with_the_synchronous_report() {
    reads_whole_spool(common::postgres().await).await;
}

async fn resumes(db: TestDb, crash: bool) {
    let dir = tempfile::tempdir().unwrap();
    let text = list(30_000);
    let path = spool(dir.path(), &text);
    let store: Arc<dyn NodeStore> = Arc::new(db.store.clone());
    let first = engine(Arc::clone(&store), "w1");
    let job = first.start_import(spec(&path, true)).await.unwrap();
    wait_bytes(store.as_ref(), job, 0).await;
    if crash {
        first.abort();
    } else {
        first.pause_imports().await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let paused = store.import_run(job).await.unwrap();
    assert_eq!(store.job(job).await.unwrap().state, JobState::Running);
    assert!(
        paused.line > 0 && paused.bytes_done < text.len() as u64,
        "{paused:?}"
    );
    assert!(path.exists(), "the spool stays for the resume");
    let before = nodes_stored(store.as_ref()).await;
    assert!(before > 0 && before < 29_000, "{before}");
    // A restart on this host, under the same worker name (a crash left its
    // hold behind: the same name takes it back at once).
    let second = engine(Arc::clone(&store), "w1");
    let resumed = second.recover(RecoverPolicy::Resume).await.unwrap();
    assert_eq!(resumed, vec![job]);
    let done = second.wait(job).await.unwrap();
    assert_eq!(done.job.state, JobState::Done);
    let summary = import_summary(store.as_ref(), &done.job).await.unwrap();
    assert_eq!(shape(&summary), shape(&reference(&text).await));
    assert_eq!(
        nodes_stored(store.as_ref()).await,
        summary.added.len() as u64
    );
    assert!(!path.exists());
}

#[tokio::test]
async fn a_paused_import_resumes_from_its_checkpoint_with_the_same_report() {
    resumes(common::sqlite().await, false).await;
}

#[tokio::test]
async fn a_crashed_import_resumes_from_its_checkpoint_with_the_same_report() {
    resumes(common::sqlite().await, true).await;
}

#[tokio::test]
async fn postgres_a_paused_import_resumes_from_its_checkpoint_with_the_same_report() {
    resumes(common::postgres().await, false).await;
}

#[tokio::test]
async fn a_gone_spool_ends_the_import_interrupted_with_the_reason() {
    let db = common::sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let text = list(30_000);
    let path = spool(dir.path(), &text);
    let store: Arc<dyn NodeStore> = Arc::new(db.store.clone());
    let first = engine(Arc::clone(&store), "w1");
    let job = first.start_import(spec(&path, true)).await.unwrap();
    wait_bytes(store.as_ref(), job, 0).await;
    first.pause_imports().await;
    std::fs::remove_file(&path).unwrap();
    let second = engine(Arc::clone(&store), "w2");
    assert_eq!(
        second.recover(RecoverPolicy::Resume).await.unwrap(),
        vec![job]
    );
    let done = second.wait(job).await.unwrap();
    assert_eq!(done.job.state, JobState::Interrupted);
    assert!(done.progress.is_complete());
    let run = store.import_run(job).await.unwrap();
    let why = run.error.expect("a reason");
    assert!(why.contains("cannot be read"), "{why}");
    let summary = import_summary(store.as_ref(), &done.job).await.unwrap();
    assert_eq!(summary.failure.as_deref(), Some(why.as_str()));
    assert_eq!(
        nodes_stored(store.as_ref()).await,
        summary.added.len() as u64
    );
    assert!(!summary.added.is_empty());
}

#[tokio::test]
async fn an_import_of_another_host_is_left_to_it() {
    let db = common::sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let path = spool(dir.path(), &list(10));
    let store: Arc<dyn NodeStore> = Arc::new(db.store.clone());
    let job = store
        .create_import(
            &ImportSpec {
                host: "elsewhere.invalid".into(),
                ..spec(&path, false)
            },
            chrono::Utc::now(),
        )
        .await
        .unwrap();
    let e = engine(Arc::clone(&store), "w1");
    assert!(e.recover(RecoverPolicy::Resume).await.unwrap().is_empty());
    assert_eq!(store.job(job.id).await.unwrap().state, JobState::Queued);
    assert_eq!(nodes_stored(store.as_ref()).await, 0);
}

#[tokio::test]
async fn cancelling_an_import_stops_it_and_keeps_what_was_committed() {
    let db = common::sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let text = list(30_000);
    let path = spool(dir.path(), &text);
    let store: Arc<dyn NodeStore> = Arc::new(db.store.clone());
    let e = engine(Arc::clone(&store), "w1");
    let job = e.start_import(spec(&path, true)).await.unwrap();
    wait_bytes(store.as_ref(), job, 0).await;
    e.cancel(job).await.unwrap();
    let done = e.wait(job).await.unwrap();
    assert_eq!(done.job.state, JobState::Cancelled);
    assert!(done.progress.is_complete() && done.progress.cancelled > 0);
    // Give a runner that was mid-batch time to (not) commit more.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let summary = import_summary(store.as_ref(), &done.job).await.unwrap();
    let stored = nodes_stored(store.as_ref()).await;
    assert_eq!(stored, summary.added.len() as u64);
    assert!(stored > 0 && stored < 29_000, "{stored}");
    assert!(!path.exists());
    // A cancelled import is not resumed.
    let later = engine(Arc::clone(&store), "w2");
    assert!(
        later
            .recover(RecoverPolicy::Resume)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(nodes_stored(store.as_ref()).await, stored);
}

async fn disturbed(fault: Fault, n: u64) {
    let db = common::sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let text = list(5_000);
    let path = spool(dir.path(), &text);
    let real: Arc<dyn NodeStore> = Arc::new(db.store.clone());
    let faults = FaultStore::new(Arc::clone(&real));
    faults.after(Method::ImportBatch, 1, n, fault);
    let e = engine(Arc::clone(&faults) as Arc<dyn NodeStore>, "w1");
    let job = e.start_import(spec(&path, true)).await.unwrap();
    let done = e.wait(job).await.unwrap();
    assert_eq!(done.job.state, JobState::Done);
    let summary = import_summary(real.as_ref(), &done.job).await.unwrap();
    assert_eq!(shape(&summary), shape(&reference(&text).await));
    assert_eq!(
        nodes_stored(real.as_ref()).await,
        summary.added.len() as u64
    );
}

#[tokio::test]
async fn transient_batch_failures_are_retried() {
    disturbed(Fault::Transient, 3).await;
}

#[tokio::test]
async fn a_batch_whose_commit_acknowledgment_is_lost_is_not_applied_twice() {
    disturbed(Fault::AfterCommit, 1).await;
}

#[tokio::test]
async fn a_store_failing_for_good_ends_the_import_interrupted_keeping_the_committed_batches() {
    let db = common::sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let path = spool(dir.path(), &list(5_000));
    let real: Arc<dyn NodeStore> = Arc::new(db.store.clone());
    let faults = FaultStore::new(Arc::clone(&real));
    faults.after(Method::ImportBatch, 1, u64::MAX, Fault::Transient);
    let e = engine(Arc::clone(&faults) as Arc<dyn NodeStore>, "w1");
    let job = e.start_import(spec(&path, true)).await.unwrap();
    let done = e.wait(job).await.unwrap();
    assert_eq!(done.job.state, JobState::Interrupted);
    let summary = import_summary(real.as_ref(), &done.job).await.unwrap();
    assert!(
        summary
            .failure
            .as_deref()
            .unwrap()
            .contains("the store failed"),
        "{:?}",
        summary.failure
    );
    assert_eq!(summary.added.len(), 2_000, "the first batch, committed");
    assert_eq!(nodes_stored(real.as_ref()).await, 2_000);
}
