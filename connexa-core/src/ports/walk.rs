//! Walking the nodes of a [`NodeStore`] page by page with a cursor, for every
//! layer above the ports (the engine, the application layer); also re-exported
//! from [`ops`](crate::ops).

use super::{NodeStore, StoreError};
use crate::domain::{Node, NodeFilter, Page};

/// Every node matching `filter`, in id order (read with [`NodeWalk`], so a
/// node deleted or added meanwhile never makes it skip or repeat another).
pub async fn all_matching(
    store: &dyn NodeStore,
    filter: &NodeFilter,
) -> Result<Vec<Node>, StoreError> {
    let mut walk = NodeWalk::new(filter.clone());
    let mut out = Vec::new();
    while let Some(page) = walk.next_page(store).await? {
        out.extend(page);
    }
    Ok(out)
}

/// Walks the nodes matching a filter in id order, one page at a time, with a
/// cursor ([`Page::after`]): each page starts after the last id of the one
/// before, so every page costs the same and nodes deleted or added between two
/// pages never make the walk skip or repeat another node (an offset walk skips
/// one node for every node deleted from the pages already read).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use connexa_core::domain::{NewNode, NodeFilter};
/// use connexa_core::ports::NodeWalk;
/// use connexa_core::ports::NodeStore;
/// use connexa_core::store::SqlStore;
/// let db = std::env::temp_dir().join(format!("connexa-walk-doc-{}.db", std::process::id()));
/// let store = SqlStore::connect(&format!("sqlite://{}?mode=rwc", db.display())).await.unwrap();
/// let nodes = (1..=5).map(|i| NewNode::new(&format!("127.0.0.{i}"), 1723, "admin", "pw").unwrap());
/// store.insert(nodes.collect()).await.unwrap();
/// let mut walk = NodeWalk::new(NodeFilter::all()).with_limit(2);
/// let mut sizes = Vec::new();
/// while let Some(page) = walk.next_page(&store).await.unwrap() {
///     sizes.push(page.len());
/// }
/// assert_eq!(sizes, [2, 2, 1]);
/// # drop(store); let _ = std::fs::remove_file(&db);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct NodeWalk {
    filter: NodeFilter,
    page: Page,
    done: bool,
}

impl NodeWalk {
    /// A walk over the nodes matching `filter`, [`Page::MAX_LIMIT`] nodes a page.
    pub fn new(filter: NodeFilter) -> Self {
        NodeWalk {
            filter,
            page: Page::cursor(None, Page::MAX_LIMIT),
            done: false,
        }
    }

    /// Pages of `limit` nodes (1..=[`Page::MAX_LIMIT`]; other values are clamped).
    pub fn with_limit(mut self, limit: u64) -> Self {
        self.page.limit = limit.clamp(1, Page::MAX_LIMIT);
        self
    }

    /// The next page, or `None` when the walk is over.
    pub async fn next_page(
        &mut self,
        store: &dyn NodeStore,
    ) -> Result<Option<Vec<Node>>, StoreError> {
        if self.done {
            return Ok(None);
        }
        let nodes = store.list_page(&self.filter, self.page).await?;
        match self.page.next_after(&nodes) {
            // A store that ignored the cursor would make this walk endless.
            Some(last) if self.page.after.is_some_and(|prev| last <= prev) => {
                self.done = true;
                return Err(StoreError::Backend(format!(
                    "the store ignored the page cursor (after={}): cannot walk the nodes",
                    last
                )));
            }
            Some(last) => self.page.after = Some(last),
            None => self.done = true,
        }
        Ok(Some(nodes).filter(|n| !n.is_empty()))
    }
}
