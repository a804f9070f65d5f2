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
use connexa_core::domain::{NewNode, Node, Outcome};
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

/// Starts an import of `path` (worker `w1`) and pauses it once a batch is in,
/// as a server's SIGTERM does.
async fn paused_after_a_batch(store: &Arc<dyn NodeStore>, path: &Path) -> JobId {
    let first = engine(Arc::clone(store), "w1");
    let job = first.start_import(spec(path, true)).await.unwrap();
    wait_bytes(store.as_ref(), job, 0).await;
    first.pause_imports().await;
    job
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
        paused.rows > 0 && paused.bytes_done < text.len() as u64,
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
    let job = paused_after_a_batch(&store, &path).await;
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

/// A minified JSON array: every node starts on line 1. Batches are counted
/// in parser rows, not lines: all of them go in, also across a pause.
#[tokio::test]
async fn a_one_line_json_array_is_imported_whole_also_across_a_pause() {
    let db = common::sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let rows: Vec<String> = (0..9_000)
        .map(|i| {
            format!(
                r#"{{"ip":"203.0.{}.{}","login":"u{i}","password":"p{i}"}}"#,
                i >> 8,
                i & 255
            )
        })
        .collect();
    let text = format!("[{}]", rows.join(","));
    let path = spool(dir.path(), &text);
    let store: Arc<dyn NodeStore> = Arc::new(db.store.clone());
    let job = paused_after_a_batch(&store, &path).await;
    let paused = store.import_run(job).await.unwrap();
    let second = engine(Arc::clone(&store), "w1");
    second.recover(RecoverPolicy::Resume).await.unwrap();
    let done = second.wait(job).await.unwrap();
    assert_eq!(done.job.state, JobState::Done);
    let summary = import_summary(store.as_ref(), &done.job).await.unwrap();
    assert_eq!(
        shape(&summary),
        shape(&reference(&text).await),
        "paused at {paused:?}"
    );
    assert_eq!(summary.added.len(), 9_000);
    assert_eq!(nodes_stored(store.as_ref()).await, 9_000);
}

#[tokio::test]
async fn cancelling_a_paused_import_ends_it_and_deletes_its_spool() {
    let db = common::sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let path = spool(dir.path(), &list(30_000));
    let store: Arc<dyn NodeStore> = Arc::new(db.store.clone());
    let job = paused_after_a_batch(&store, &path).await;
    assert!(path.exists());
    // Another process (no runner of the job) cancels it.
    let other = engine(Arc::clone(&store), "w2");
    other.cancel(job).await.unwrap();
    let done = other.wait(job).await.unwrap();
    assert_eq!(done.job.state, JobState::Cancelled);
    assert!(!path.exists(), "the paused import's spool is deleted");
    let run = store.import_run(job).await.unwrap();
    assert_eq!((run.worker, run.lease_until), (None, None));
    let summary = import_summary(store.as_ref(), &done.job).await.unwrap();
    assert_eq!(
        nodes_stored(store.as_ref()).await,
        summary.added.len() as u64
    );
}

/// Only the holder writes: a worker whose hold ran out and was taken over
/// commits nothing more and cannot end the job; a cancelled job refuses the
/// holder's batch with `ImportEnded`.
async fn holds(db: TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let path = spool(dir.path(), &list(10));
    let store: Arc<dyn NodeStore> = Arc::new(db.store.clone());
    let job = store
        .create_import(&spec(&path, false), chrono::Utc::now())
        .await
        .unwrap()
        .id;
    let t0 = chrono::Utc::now();
    let lease = Duration::from_secs(30);
    assert!(
        store
            .claim_import(job, "w1", t0, lease)
            .await
            .unwrap()
            .is_some()
    );
    // Held: another worker cannot take it until the hold ran out.
    assert!(
        store
            .claim_import(job, "w2", t0, lease)
            .await
            .unwrap()
            .is_none()
    );
    let later = t0 + chrono::Duration::seconds(31);
    assert!(
        store
            .claim_import(job, "w2", later, lease)
            .await
            .unwrap()
            .is_some()
    );
    let batch = |rows| ImportBatch {
        nodes: vec![NewNode::new("203.0.113.9", 1723, "u", "p").unwrap()],
        on_conflict: OnConflict::Skip,
        through_rows: rows,
        checkpoint: Box::new(move |_, _| ImportCheckpoint {
            rows,
            bytes_done: 1,
            part: serde_json::json!({}),
        }),
    };
    let lost = store.import_batch(job, "w1", later, lease, batch(1)).await;
    assert!(
        matches!(lost, Err(StoreError::ImportNotHeld(_))),
        "{lost:?}"
    );
    let ended = store
        .end_import(job, "w1", JobState::Cancelled, None, None, later)
        .await
        .unwrap();
    assert!(!ended, "w1 no longer holds the job");
    assert_eq!(store.job(job).await.unwrap().state, JobState::Running);
    assert_eq!(nodes_stored(store.as_ref()).await, 0);
    // The holder's batch goes in once; the same rows again are not applied.
    assert!(
        store
            .import_batch(job, "w2", later, lease, batch(1))
            .await
            .unwrap()
    );
    assert!(
        !store
            .import_batch(job, "w2", later, lease, batch(1))
            .await
            .unwrap()
    );
    assert_eq!(nodes_stored(store.as_ref()).await, 1);
    // Cancelled: the holder's next batch is refused.
    store
        .set_job_state(job, JobState::Cancelled, later)
        .await
        .unwrap();
    let refused = store.import_batch(job, "w2", later, lease, batch(2)).await;
    assert!(
        matches!(refused, Err(StoreError::ImportEnded(_))),
        "{refused:?}"
    );
    // The holder ends it; it stays cancelled.
    assert!(
        store
            .end_import(job, "w2", JobState::Done, None, None, later)
            .await
            .unwrap()
    );
    assert_eq!(store.job(job).await.unwrap().state, JobState::Cancelled);
    assert_eq!(store.import_run(job).await.unwrap().worker, None);
}

#[tokio::test]
async fn only_the_holder_of_an_import_writes_it() {
    holds(common::sqlite().await).await;
}

#[tokio::test]
async fn postgres_only_the_holder_of_an_import_writes_it() {
    holds(common::postgres().await).await;
}
