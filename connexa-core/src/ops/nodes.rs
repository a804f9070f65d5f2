//! Node queries and edits: counts, one node, delete, selection, add, field
//! values, meta edits, export.

use std::io::Write;

use serde::Serialize;

use crate::domain::{FilterError, Node, NodeFilter, NodeId, NodeMeta, Page, Selection};
use crate::export::ExportFormat;
use crate::import::{ErrorReason, NodeFields};
use crate::ports::all_matching;
use crate::ports::{InsertOutcome, NodeStore, StoreError, ValueField};

use super::OpsError;

/// How many nodes match `filter`.
pub async fn count(store: &dyn NodeStore, filter: &NodeFilter) -> Result<u64, StoreError> {
    let page = Page {
        limit: 0,
        ..Page::default()
    };
    Ok(store.list(filter, page).await?.total)
}

/// One node, or [`StoreError::NotFound`].
pub async fn node(store: &dyn NodeStore, id: NodeId) -> Result<Node, StoreError> {
    store.get(id).await?.ok_or(StoreError::NotFound(id))
}

/// Writes every node matching `filter` in `format` to `out`; returns how many
/// were written (the socks formats skip nodes without a running service).
pub async fn export<W: Write>(
    store: &dyn NodeStore,
    filter: &NodeFilter,
    format: ExportFormat,
    out: W,
) -> Result<usize, OpsError> {
    let nodes = all_matching(store, filter).await?;
    Ok(crate::export::write(format, &nodes, out)?)
}

/// What [`delete_ids`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Deleted {
    /// Nodes deleted.
    pub deleted: u64,
    /// Ids given that matched no node.
    pub missing: Vec<NodeId>,
}

/// Deletes the nodes with these ids (each gets a `deleted` history row) and
/// names the ids that did not exist.
pub async fn delete_ids(store: &dyn NodeStore, ids: &[NodeId]) -> Result<Deleted, StoreError> {
    let filter = NodeFilter::ids(ids.iter().copied());
    let found: std::collections::HashSet<NodeId> = all_matching(store, &filter)
        .await?
        .into_iter()
        .map(|n| n.id)
        .collect();
    let mut missing: Vec<NodeId> = ids
        .iter()
        .copied()
        .filter(|id| !found.contains(id))
        .collect();
    missing.sort_unstable();
    missing.dedup();
    let deleted = store.delete(&filter).await?;
    Ok(Deleted { deleted, missing })
}

/// The store filter of a selection that matches at least one node: an action
/// (a test job, a service start or stop) on no node is refused with
/// [`StoreError::NothingSelected`] instead of becoming a job of 0 items. The
/// selection itself was validated when it was built ([`Selection::new`]).
pub async fn selected(
    store: &dyn NodeStore,
    selection: &Selection,
) -> Result<NodeFilter, StoreError> {
    let filter = selection.to_filter();
    let page = Page {
        limit: 0,
        ..Page::default()
    };
    if store.list(&filter, page).await?.total == 0 {
        return Err(StoreError::NothingSelected);
    }
    Ok(filter)
}

/// Why [`add_node`] added nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AddNodeError {
    /// A field is refused, for the reason (and with the message) an import
    /// gives for the same value.
    #[error(transparent)]
    Invalid(#[from] ErrorReason),
    /// The same ip, port, login and password are stored: nothing was added.
    #[error(
        "duplicate of stored node {0}: the same ip, port, login and password are already stored"
    )]
    Duplicate(NodeId),
    /// The same ip, port and login are stored with another password: the
    /// stored node was kept (as an import keeps it).
    #[error(
        "conflict: same ip, port and login as stored node {0} with another password (kept the existing one)"
    )]
    Conflict(NodeId),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Adds one node typed by hand: validated as an import row
/// ([`NodeFields::validate`]) and inserted through the import's path, so a
/// duplicate or a conflict with a stored node is found exactly as an import
/// finds it. The node starts `not_tested`; returns it as stored.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use connexa_core::import::NodeFields;
/// use connexa_core::ops::{self, AddNodeError};
/// use connexa_core::store::SqlStore;
/// let db = std::env::temp_dir().join(format!("connexa-add-doc-{}.db", std::process::id()));
/// let store = SqlStore::connect(&format!("sqlite://{}?mode=rwc", db.display())).await.unwrap();
/// let fields = NodeFields::new("198.51.100.9", "admin", "pw");
/// let node = ops::add_node(&store, &fields).await.unwrap();
/// let again = ops::add_node(&store, &fields).await.unwrap_err();
/// assert!(matches!(again, AddNodeError::Duplicate(id) if id == node.id));
/// # drop(store); let _ = std::fs::remove_file(&db);
/// # }
/// ```
pub async fn add_node(store: &dyn NodeStore, fields: &NodeFields) -> Result<Node, AddNodeError> {
    let new = fields.validate()?;
    let outcome = store.insert(vec![new]).await?;
    match outcome.first() {
        Some(InsertOutcome::Inserted(id)) => Ok(node(store, *id).await?),
        Some(InsertOutcome::Duplicate(id)) => Err(AddNodeError::Duplicate(*id)),
        Some(InsertOutcome::Conflict(id)) => Err(AddNodeError::Conflict(*id)),
        None => Err(AddNodeError::Store(StoreError::Backend(
            "the insert returned no outcome".into(),
        ))),
    }
}

/// One stored value of a descriptive field and how many nodes hold it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FieldValue {
    /// The value as stored.
    pub value: String,
    /// Nodes holding it.
    pub count: u64,
}

/// The most values [`field_values`] returns at once.
pub const MAX_FIELD_VALUES: u64 = 50;

/// Why [`field_values`] answered nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ValuesError {
    /// The prefix is refused as a text filter of the same field is (control
    /// characters, too long), with the filter's message.
    #[error(transparent)]
    Prefix(#[from] FilterError),
    /// The limit is 0 or above [`MAX_FIELD_VALUES`].
    #[error("limit: between 1 and {MAX_FIELD_VALUES}")]
    Limit,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The values the store holds for a descriptive field (the filters'
/// autocomplete): distinct, non-empty, most frequent first, at most `limit`
/// (default 20, at most [`MAX_FIELD_VALUES`]); with a `prefix`, only values
/// starting with it, case-insensitively. The prefix is checked as a text
/// filter of that field is, so a NUL byte is refused with the same words.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use connexa_core::import::{import_into, ImportOptions};
/// use connexa_core::{ops, ports::ValueField, store::SqlStore};
/// use std::sync::Arc;
/// let db = std::env::temp_dir().join(format!("connexa-values-doc-{}.db", std::process::id()));
/// let store = Arc::new(SqlStore::connect(&format!("sqlite://{}?mode=rwc", db.display())).await.unwrap());
/// let list = "127.0.0.5:a:p:US:TX:75001\n127.0.0.6:a:p:US:CA:90001\n127.0.0.7:a:p:DE:Bavaria:80331\n";
/// import_into(store.clone(), list.as_bytes(), ImportOptions::default()).await;
/// let v = ops::field_values(store.as_ref(), ValueField::Country, None, None).await.unwrap();
/// assert_eq!((v[0].value.as_str(), v[0].count), ("United States", 2));
/// let v = ops::field_values(store.as_ref(), ValueField::State, Some("ca"), None).await.unwrap();
/// assert_eq!(v[0].value, "California");
/// assert!(ops::field_values(store.as_ref(), ValueField::City, Some("\0"), None).await.is_err());
/// # drop(store); let _ = std::fs::remove_file(&db);
/// # }
/// ```
pub async fn field_values(
    store: &dyn NodeStore,
    field: ValueField,
    prefix: Option<&str>,
    limit: Option<u64>,
) -> Result<Vec<FieldValue>, ValuesError> {
    let limit = limit.unwrap_or(20);
    if !(1..=MAX_FIELD_VALUES).contains(&limit) {
        return Err(ValuesError::Limit);
    }
    let prefix = prefix.filter(|p| !p.is_empty()).map(str::to_owned);
    if let Some(p) = &prefix {
        let text = Some(p.clone());
        let probe = match field {
            ValueField::Provider => NodeFilter {
                provider: text,
                ..NodeFilter::all()
            },
            ValueField::Country => NodeFilter {
                country: text,
                ..NodeFilter::all()
            },
            ValueField::State => NodeFilter {
                state: text,
                ..NodeFilter::all()
            },
            ValueField::City => NodeFilter {
                city: text,
                ..NodeFilter::all()
            },
        };
        probe.validate()?;
    }
    Ok(store
        .field_values(field, prefix, limit)
        .await?
        .into_iter()
        .map(|(value, count)| FieldValue { value, count })
        .collect())
}

/// Changes to a node's descriptive fields: `None` keeps a field, `Some("")`
/// clears it, anything else sets it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetaPatch {
    /// Provider.
    pub provider: Option<String>,
    /// Country.
    pub country: Option<String>,
    /// State or region.
    pub state: Option<String>,
    /// City.
    pub city: Option<String>,
    /// Zip code.
    pub zipcode: Option<String>,
    /// Comment.
    pub comment: Option<String>,
}

impl MetaPatch {
    /// `true` when the patch changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == MetaPatch::default()
    }

    /// `meta` with the patch applied.
    pub fn apply_to(&self, mut meta: NodeMeta) -> NodeMeta {
        let set = |field: &mut Option<String>, v: &Option<String>| {
            if let Some(v) = v {
                let v = v.trim();
                *field = (!v.is_empty()).then(|| v.to_owned());
            }
        };
        set(&mut meta.provider, &self.provider);
        set(&mut meta.country, &self.country);
        set(&mut meta.state, &self.state);
        set(&mut meta.city, &self.city);
        set(&mut meta.zipcode, &self.zipcode);
        set(&mut meta.comment, &self.comment);
        meta
    }
}

/// Applies `patch` to a node's descriptive fields (never its identity or
/// status); returns the node as stored afterwards.
pub async fn edit_meta(
    store: &dyn NodeStore,
    id: NodeId,
    patch: &MetaPatch,
) -> Result<Node, StoreError> {
    let current = node(store, id).await?;
    let meta = patch.apply_to(current.meta);
    meta.check()?;
    store.update_meta(id, meta).await?;
    node(store, id).await
}
