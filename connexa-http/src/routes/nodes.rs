//! `/api/v1/nodes`.

use axum::extract::State;
use axum::http::StatusCode;
use connexa_core::domain::{NodeFilter, NodeId, Selection as CoreSelection, SortKey};
use connexa_core::engine::JobOptions;
use connexa_core::import::NodeFields;
use connexa_core::ops::{
    self, AddNodeError, Deleted, FieldValue, HistoryView, MetaPatch, NodeView, ValuesError,
};
use connexa_core::ports::{JobId, JobKind, ValueField};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{filter_query, page};
use crate::AppState;
use crate::extract::{Json, Path, Query};
use crate::problem::{ApiError, ApiResult, Kind, Problem};
use crate::roles::Caller;

filter_query! {
    /// `GET /nodes` parameters.
    ListQuery {
        /// Rows to skip (default 0; must be 0 with `after`).
        offset: Option<u64>,
        /// Rows to return, at most 10000 (default 100).
        limit: Option<u64>,
        /// Sort key: id, ip, status, last_checked, speed_down, ping, location.
        sort: Option<SortKey>,
        /// Descending order.
        desc: Option<bool>,
        /// Cursor: only nodes with an id greater than this (smaller with
        /// `desc=true`); needs `sort=id`. Follow the response's `next_after`.
        after: Option<i64>,
        /// Show passwords instead of `***` (admin only: 403 for other roles).
        reveal: Option<bool>,
    }
}

filter_query! {
    /// `DELETE /nodes` parameters: the list's filter (without paging).
    DeleteQuery {
        /// Required to delete every node when no filter is given.
        all: Option<bool>,
    }
}

/// A page of nodes.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeList {
    /// The nodes of this page.
    pub items: Vec<NodeView>,
    /// Nodes matching the filter in all.
    pub total: u64,
    /// The page's offset.
    pub offset: u64,
    /// The page's limit.
    pub limit: u64,
    /// With `sort=id` and a full page: the last id of this page, to pass as
    /// `after` for the next page; `null` otherwise (last page, or another sort).
    #[schema(value_type = Option<i64>)]
    pub next_after: Option<NodeId>,
}

/// `reveal` alone.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RevealQuery {
    /// Show passwords instead of `***` (admin only: 403 for other roles).
    pub reveal: Option<bool>,
}

/// Nodes matching the filter, one page, with the total (the total is at most
/// one second old; writes through the API refresh it at once).
#[utoipa::path(get, path = "/api/v1/nodes", tag = "nodes", params(ListQuery),
    responses((status = 200, body = NodeList),
              (status = 400, body = Problem, content_type = "application/problem+json")))]
pub async fn list(
    State(st): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json2<NodeList>> {
    let reveal = q.reveal.unwrap_or(false);
    if reveal {
        caller.may_reveal("reveal=true")?;
    }
    let filter = q.filter()?;
    let page = page(q.offset, q.limit, q.sort, q.desc, q.after)?;
    let nodes = st.store().list_page(&filter, page).await?;
    let total = st.total(&filter).await?;
    Ok(axum::Json(NodeList {
        items: nodes.iter().map(|n| NodeView::new(n, reveal)).collect(),
        total,
        offset: page.offset,
        limit: page.limit,
        next_after: page.next_after(&nodes),
    }))
}

pub(crate) type Json2<T> = axum::Json<T>;

/// One node.
#[utoipa::path(get, path = "/api/v1/nodes/{id}", tag = "nodes",
    params(("id" = i64, Path, description = "Node id"), RevealQuery),
    responses((status = 200, body = NodeView),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn get_one(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    Query(q): Query<RevealQuery>,
) -> ApiResult<Json2<NodeView>> {
    let reveal = q.reveal.unwrap_or(false);
    if reveal {
        caller.may_reveal("reveal=true")?;
    }
    let n = ops::node(st.store().as_ref(), NodeId(id)).await?;
    Ok(axum::Json(NodeView::new(&n, reveal)))
}

/// `GET /nodes/values` parameters.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ValuesQuery {
    /// Which field: provider, country, state or city.
    pub field: String,
    /// Only values starting with this (case-insensitive); checked as a text
    /// filter is (no control characters, at most 256 characters).
    pub prefix: Option<String>,
    /// How many values, most frequent first (default 20, at most 50).
    pub limit: Option<u64>,
}

/// The distinct values the store holds for a descriptive field, with how
/// many nodes hold each, most frequent first: the filters' autocomplete.
#[utoipa::path(get, path = "/api/v1/nodes/values", tag = "nodes", params(ValuesQuery),
    responses((status = 200, body = Vec<FieldValue>),
              (status = 400, body = Problem, content_type = "application/problem+json")))]
pub async fn values(
    State(st): State<AppState>,
    Query(q): Query<ValuesQuery>,
) -> ApiResult<Json2<Vec<FieldValue>>> {
    let field: ValueField = q.field.parse().map_err(ApiError::bad_request)?;
    let v = ops::field_values(st.store().as_ref(), field, q.prefix.as_deref(), q.limit)
        .await
        .map_err(|e| match e {
            ValuesError::Store(e) => ApiError::from(e),
            e => ApiError::bad_request(e.to_string()),
        })?;
    Ok(axum::Json(v))
}

/// A node to add (identity fields are immutable afterwards). It is checked
/// exactly as an import row is, with the same messages.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateNode {
    /// IPv4 or IPv6 address (`IP:PORT` and `[IPv6]:PORT` carry a port).
    pub ip: String,
    /// PPTP control port (default 1723, or the port in `ip`).
    #[serde(default)]
    pub port: Option<u64>,
    /// Login.
    pub login: String,
    /// Password.
    pub password: String,
    /// Provider.
    pub provider: Option<String>,
    /// Country: a code (`US`) or a name; codes are expanded as an import does.
    pub country: Option<String>,
    /// State or region; US state codes are expanded as an import does.
    pub state: Option<String>,
    /// City.
    pub city: Option<String>,
    /// Zip code.
    pub zip: Option<String>,
    /// Comment.
    pub comment: Option<String>,
    /// Then start a test job of this kind on the new node (follow it at
    /// `/jobs/{job}/events`).
    pub test: Option<AddTest>,
}

/// The test `POST /nodes` may start on the node it added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AddTest {
    /// PPTP control-channel handshake.
    Light,
    /// Light, then auth, then speed.
    Pipeline,
}

/// The node added, and the test job started on it, if one was asked for.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedNode {
    /// The node as stored.
    #[serde(flatten)]
    pub node: NodeView,
    /// The test job's id (with `test`), else absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<i64>)]
    pub job: Option<JobId>,
}

/// Adds a node as `not_tested`, refused for what an import refuses (422, with
/// the import's message); a stored duplicate or a conflict (same ip, port and
/// login, another password) is 409 and names the stored node.
#[utoipa::path(post, path = "/api/v1/nodes", tag = "nodes", request_body = CreateNode,
    responses((status = 201, body = CreatedNode),
              (status = 409, description = "The node (or one with the same ip, port and login) exists; `node` names it", body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn create(
    State(st): State<AppState>,
    Json(b): Json<CreateNode>,
) -> ApiResult<(StatusCode, Json2<CreatedNode>)> {
    let fields = NodeFields {
        ip: b.ip,
        port: b.port.map(|p| p.to_string()),
        login: b.login,
        password: b.password,
        provider: b.provider,
        country: b.country,
        state: b.state,
        city: b.city,
        zip: b.zip,
        comment: b.comment,
    };
    let n = match ops::add_node(st.store().as_ref(), &fields).await {
        Ok(n) => n,
        Err(e @ AddNodeError::Invalid(_)) => return Err(ApiError::invalid_body(e.to_string())),
        Err(e @ (AddNodeError::Duplicate(id) | AddNodeError::Conflict(id))) => {
            let mut err = ApiError::new(Kind::Conflict, e.to_string());
            err.0.node = Some(id);
            return Err(err);
        }
        Err(AddNodeError::Store(e)) => return Err(e.into()),
        Err(e) => return Err(ApiError::internal(&e)),
    };
    let job = match b.test {
        None => None,
        Some(t) => {
            let kind = match t {
                AddTest::Light => JobKind::Light,
                AddTest::Pipeline => JobKind::Pipeline,
            };
            Some(
                st.engine()
                    .start_job(kind, NodeFilter::ids(vec![n.id]), JobOptions::default())
                    .await?,
            )
        }
    };
    Ok((
        StatusCode::CREATED,
        axum::Json(CreatedNode {
            node: NodeView::new(&n, false),
            job,
        }),
    ))
}

/// Changes to a node's descriptive fields: absent keeps, `""` clears.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchNode {
    /// Provider.
    pub provider: Option<String>,
    /// Country.
    pub country: Option<String>,
    /// State or region.
    pub state: Option<String>,
    /// City.
    pub city: Option<String>,
    /// Zip code.
    pub zip: Option<String>,
    /// Comment.
    pub comment: Option<String>,
}

/// Edits a node's descriptive fields (never its identity or status).
#[utoipa::path(patch, path = "/api/v1/nodes/{id}", tag = "nodes", request_body = PatchNode,
    params(("id" = i64, Path, description = "Node id")),
    responses((status = 200, body = NodeView),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn patch(
    State(st): State<AppState>,
    Path(id): Path<i64>,
    Json(b): Json<PatchNode>,
) -> ApiResult<Json2<NodeView>> {
    let p = MetaPatch {
        provider: b.provider,
        country: b.country,
        state: b.state,
        city: b.city,
        zipcode: b.zip,
        comment: b.comment,
    };
    if p.is_empty() {
        return Err(ApiError::invalid_body("nothing to change"));
    }
    let n = ops::edit_meta(st.store().as_ref(), NodeId(id), &p).await?;
    Ok(axum::Json(NodeView::new(&n, false)))
}

/// Deletes one node.
#[utoipa::path(delete, path = "/api/v1/nodes/{id}", tag = "nodes",
    params(("id" = i64, Path, description = "Node id")),
    responses((status = 200, body = Deleted),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn delete_one(
    State(st): State<AppState>,
    Path(id): Path<i64>,
) -> ApiResult<Json2<Deleted>> {
    let d = ops::delete_ids(st.store().as_ref(), &[NodeId(id)]).await?;
    if d.deleted == 0 {
        return Err(ApiError::not_found(format!("no node with id {id}")));
    }
    Ok(axum::Json(d))
}

/// Deletes exactly the nodes `GET /nodes` lists with the same filter
/// (`ids=...` reports the ids that did not exist). Deleting every node needs `all=true`.
#[utoipa::path(delete, path = "/api/v1/nodes", tag = "nodes", params(DeleteQuery),
    responses((status = 200, body = Deleted),
              (status = 400, body = Problem, content_type = "application/problem+json")))]
pub async fn delete_matching(
    State(st): State<AppState>,
    Query(q): Query<DeleteQuery>,
) -> ApiResult<Json2<Deleted>> {
    let filter = q.filter()?;
    // One rule (connexa-core's `Selection`): a filter must narrow, and every
    // node takes the explicit all=true.
    let narrowing = (!filter.is_everything()).then_some(filter);
    let filter = CoreSelection::new(None, narrowing, q.all.unwrap_or(false))
        .map_err(|e| ApiError::bad_request(e.message(&super::QUERY_WORDS)))?
        .into_filter();
    let only_ids = NodeFilter {
        ids: None,
        ..filter.clone()
    } == NodeFilter::all();
    let d = match &filter.ids {
        Some(ids) if only_ids => ops::delete_ids(st.store().as_ref(), ids).await?,
        _ => Deleted {
            deleted: st.store().delete(&filter).await?,
            missing: Vec::new(),
        },
    };
    Ok(axum::Json(d))
}

/// A node's status history, oldest first.
#[utoipa::path(get, path = "/api/v1/nodes/{id}/history", tag = "nodes",
    params(("id" = i64, Path, description = "Node id")),
    responses((status = 200, body = Vec<HistoryView>),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn history(
    State(st): State<AppState>,
    Path(id): Path<i64>,
) -> ApiResult<Json2<Vec<HistoryView>>> {
    let rows = st.store().history(NodeId(id)).await?;
    if rows.is_empty() {
        // No history: the node must exist (a deleted node has a `deleted` row).
        ops::node(st.store().as_ref(), NodeId(id)).await?;
    }
    Ok(axum::Json(rows.iter().map(HistoryView::from).collect()))
}
