//! A SQLite store holding a simulated fleet's nodes, in fleet order (node
//! `i` of the fleet gets id `i + 1`).

use std::sync::Arc;

use connexa_core::domain::NewNode;
use connexa_core::ports::NodeStore;
use connexa_core::sim::Fleet;
use connexa_core::store::SqlStore;

/// Opens (creates) the SQLite database at `path` and inserts every node of
/// `fleet` with its address, port and credentials.
///
/// # Panics
/// The database cannot be opened or written (a test set-up failure).
pub async fn store_with_fleet(fleet: &Fleet, path: &std::path::Path) -> Arc<SqlStore> {
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let store = Arc::new(SqlStore::connect(&url).await.expect("open the test store"));
    let new: Vec<NewNode> = fleet
        .nodes()
        .iter()
        .map(|n| {
            NewNode::new(
                &n.ip.to_string(),
                u64::from(n.port),
                &n.login,
                n.password.expose(),
            )
            .expect("a simulated node is a valid node")
        })
        .collect();
    store.insert(new).await.expect("insert the fleet");
    store
}
