//! The import driver: parse a stream, insert in batches, build the report.

use crate::ports::acting::{current, within};
use std::io::Read;
use std::sync::Arc;

use super::{ImportReport, Importer, ReplacedRow, parse};
use crate::ports::{InsertOutcome, NodeStore};

pub use crate::domain::OnConflict;

/// Options of [`import_into`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportOptions {
    /// Conflict policy.
    pub on_conflict: OnConflict,
    /// Rows per insert transaction.
    pub batch: usize,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            on_conflict: OnConflict::Skip,
            batch: 2_000,
        }
    }
}

/// Imports a node list from `reader` into `store` and reports what happened.
///
/// Parsing runs on a blocking thread and streams: memory stays bounded whatever
/// the input size. Rows go in with one transaction per batch, so a store failure
/// leaves whole batches in or out, and the report says exactly which lines made
/// it (`added`) and which did not (`not_inserted`). Importing never changes the
/// status of a stored node.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::sync::Arc;
/// use connexa_core::import::{import_into, ImportOptions};
/// use connexa_core::store::SqlStore;
/// let dir = std::env::temp_dir().join(format!("connexa-doc-{}.db", std::process::id()));
/// let store = Arc::new(SqlStore::connect(&format!("sqlite://{}?mode=rwc", dir.display())).await.unwrap());
/// let list = "192.0.2.35:admin:password123\n192.0.2.35:admin:password123\n192.0.2.300:admin:x\n";
/// let report = import_into(store, list.as_bytes(), ImportOptions::default()).await;
/// assert_eq!((report.added.len(), report.duplicates.len(), report.errors.len()), (1, 1, 1));
/// # let _ = std::fs::remove_file(&dir);
/// # }
/// ```
pub async fn import_into<R>(
    store: Arc<dyn NodeStore>,
    reader: R,
    options: ImportOptions,
) -> ImportReport
where
    R: Read + Send + 'static,
{
    let handle = tokio::runtime::Handle::current();
    // The rows are written for whoever runs this import (the audit trail).
    let actor = current();
    let job = tokio::task::spawn_blocking(move || {
        let mut imp = Importer::new(parse(reader));
        loop {
            let batch = imp.next_batch(options.batch.max(1));
            if batch.is_empty() {
                break;
            }
            let nodes = batch.iter().map(|p| p.node.clone()).collect();
            let outcomes = match handle.block_on(within(actor.clone(), store.insert(nodes))) {
                Ok(o) => o,
                Err(e) => {
                    imp.record_failure(&batch, e);
                    break;
                }
            };
            if let Err(e) = imp.record(&batch, &outcomes) {
                imp.record_failure(&batch, e);
                break;
            }
            if options.on_conflict == OnConflict::Replace {
                let pairs: Vec<_> = batch
                    .iter()
                    .zip(&outcomes)
                    .filter_map(|(p, o)| match o {
                        InsertOutcome::Conflict(old) => Some((p.line, *old, p.node.clone())),
                        _ => None,
                    })
                    .collect();
                if pairs.is_empty() {
                    continue;
                }
                let request = pairs.iter().map(|(_, old, n)| (*old, n.clone())).collect();
                match handle.block_on(within(actor.clone(), store.replace(request))) {
                    Ok(new_ids) => {
                        let rows: Vec<ReplacedRow> = pairs
                            .iter()
                            .zip(new_ids)
                            .map(|((line, old, _), new)| ReplacedRow {
                                line: *line,
                                old: *old,
                                new,
                            })
                            .collect();
                        imp.record_replaced(&rows);
                    }
                    Err(e) => {
                        // The conflicting rows stay reported as conflicts; stop here.
                        let failed: Vec<_> = batch
                            .iter()
                            .filter(|p| pairs.iter().any(|(l, _, _)| *l == p.line))
                            .cloned()
                            .collect();
                        imp.record_failure(
                            &failed,
                            format!("replacing conflicting nodes failed: {e}"),
                        );
                        break;
                    }
                }
            }
        }
        imp.finish()
    });
    match job.await {
        Ok(report) => report,
        Err(e) => ImportReport {
            failure: Some(format!("import crashed: {e}")),
            ..ImportReport::default()
        },
    }
}
