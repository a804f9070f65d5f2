//! The operations behind the frontends: each CLI subcommand and HTTP handler
//! parses its input, calls one function here (or one [`NodeStore`](crate::ports::NodeStore) method), and
//! formats the result. The serialisable views (`*View`, [`Stats`],
//! [`ImportSummary`]) are the stable JSON shapes both frontends print
//! (documented in `docs/cli.md`); passwords in them are masked unless asked for.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use connexa_core::domain::NodeFilter;
//! use connexa_core::import::{import_into, ImportOptions};
//! use connexa_core::{ops, store::SqlStore};
//! use std::sync::Arc;
//! let db = std::env::temp_dir().join(format!("connexa-ops-doc-{}.db", std::process::id()));
//! let store = Arc::new(SqlStore::connect(&format!("sqlite://{}?mode=rwc", db.display())).await.unwrap());
//! import_into(store.clone(), &b"127.0.0.5:admin:pw\n"[..], ImportOptions::default()).await;
//! let stats = ops::stats(store.as_ref()).await.unwrap();
//! assert_eq!((stats.total, stats.services_running), (1, 0));
//! assert_eq!(ops::count(store.as_ref(), &NodeFilter::all()).await.unwrap(), 1);
//! # drop(store); let _ = std::fs::remove_file(&db);
//! # }
//! ```

use crate::export::ExportError;
use crate::ports::StoreError;
pub use crate::ports::{NodeWalk, all_matching};

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpsError {
    /// The store failed (or the node does not exist: [`StoreError::NotFound`]).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Writing the output failed.
    #[error(transparent)]
    Export(#[from] ExportError),
}

#[cfg(feature = "sim")]
pub mod demo;
mod import_view;
mod nodes;
mod plan;
mod services;
mod views;

pub use crate::import::summary::*;
pub use import_view::*;
pub use nodes::*;
pub use plan::*;
pub use services::*;
pub use views::*;

#[cfg(test)]
mod tests;
