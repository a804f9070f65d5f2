//! An import job (`JobKind::Import`): a spooled node list read into a SQLite
//! store in batches, each committed with its checkpoint. The first engine is
//! paused after its first batches (as `connexa-http` does on SIGTERM); a second
//! engine over the same database resumes the job from its checkpoint, and the
//! report is the one an uninterrupted import gives: every row once.
//!
//!     cargo run -p example-import-job

use std::sync::Arc;

use connexa_core::engine::{Engine, EngineConfig, NotAvailable, RecoverPolicy, import_summary};
use connexa_core::ports::{ImportSpec, NodeStore, OnConflict};
use connexa_core::probe::{LightProber, ProbeConfig};
use connexa_core::store::SqlStore;

fn engine(store: Arc<SqlStore>) -> Engine {
    Engine::new(
        store,
        Arc::new(LightProber::new(ProbeConfig::default())),
        Arc::new(NotAvailable),
        Arc::new(NotAvailable),
        EngineConfig::default(),
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // 50,000 rows, one bad line and one repeated row.
    let mut list = String::new();
    for i in 0..50_000u32 {
        list.push_str(&format!(
            "198.51.{}.{}:user{i}:pw{i}\n",
            (i >> 8) & 255,
            i & 255
        ));
    }
    list.push_str("198.51.100.300:bad:row\n198.51.0.0:user0:pw0\n");
    let spool = dir.path().join("upload.spool");
    std::fs::write(&spool, &list)?;
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("c.db").display());
    let store = Arc::new(SqlStore::connect(&db).await?);

    let first = engine(store.clone());
    let job = first
        .start_import(ImportSpec {
            source: "upload.txt".into(),
            spool: spool.clone(),
            delete_spool: true,
            host: connexa_core::ports::hostname(),
            bytes_total: list.len() as u64,
            on_conflict: OnConflict::Skip,
            test: None,
            actor: None,
            actor_source: None,
        })
        .await?;
    while store.import_run(job).await?.bytes_done == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    first.pause_imports().await;
    let paused = store.import_run(job).await?;
    println!(
        "paused: job #{job} committed its first {} rows ({} of {} bytes)",
        paused.rows, paused.bytes_done, paused.bytes_total
    );

    let second = engine(store.clone());
    let resumed = second.recover(RecoverPolicy::Resume).await?;
    let done = second.wait(job).await?;
    let report = import_summary(store.as_ref(), &done.job).await?;
    println!(
        "resumed {resumed:?}: job #{job} {} at {:.0} %: added {}, duplicates {} (line {:?}), errors {} (line {})",
        done.job.state,
        done.progress.percent(),
        report.added.len(),
        report.duplicates.len(),
        report.duplicates.first().map(|d| d.line),
        report.errors.len(),
        report.errors.first().map_or(0, |e| e.line),
    );
    assert_eq!(report.added.len(), 50_000);
    assert_eq!((report.duplicates.len(), report.errors.len()), (1, 1));
    assert!(!spool.exists(), "the spool is deleted when the import ends");
    Ok(())
}
