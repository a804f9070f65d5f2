//! `/api/v1/services`: start (`socks`, `tun` or `openvpn`) and stop services (sets the
//! desired state, `service_wanted`, through the engine; its reconciler makes it so), list
//! them, hand out an `openvpn` service's client profile.

use axum::extract::State;
use axum::http::StatusCode;
use connexa_core::domain::{NodeFilter, NodeId, ServiceKind, SortKey};
use connexa_core::engine::JobOptions;
use connexa_core::ops::{self, JobView, NodeView, RestartRequest};
use connexa_core::ports::JobKind;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::Selection;
use super::jobs::view;
use super::nodes::{Json2, NodeList};
use crate::AppState;
use crate::extract::{Json, Query};
use crate::problem::{ApiResult, Problem};
use crate::roles::Caller;

/// `GET /services` parameters.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ServicesQuery {
    /// Rows to skip (must be 0 with `after`).
    pub offset: Option<u64>,
    /// Rows to return (default 100, at most 10000).
    pub limit: Option<u64>,
    /// Sort key.
    pub sort: Option<SortKey>,
    /// Descending.
    pub desc: Option<bool>,
    /// Cursor: only services of nodes with an id greater than this (smaller
    /// with `desc=true`); needs `sort=id`. Follow the response's `next_after`.
    pub after: Option<i64>,
    /// Show the SOCKS5 and node passwords instead of `***` (admin only: 403
    /// for other roles).
    pub reveal: Option<bool>,
}

/// Nodes with a running service (`online` or `offline`), each service with the
/// counters the process running it last recorded (`service.counters`).
#[utoipa::path(get, path = "/api/v1/services", tag = "services", params(ServicesQuery),
    responses((status = 200, body = NodeList)))]
pub async fn list(
    State(st): State<AppState>,
    caller: Caller,
    Query(q): Query<ServicesQuery>,
) -> ApiResult<Json2<NodeList>> {
    let reveal = q.reveal.unwrap_or(false);
    if reveal {
        caller.may_reveal("reveal=true")?;
    }
    let page = super::page(q.offset, q.limit, q.sort, q.desc, q.after)?;
    let filter = NodeFilter {
        has_service: Some(true),
        ..NodeFilter::all()
    };
    let nodes = st.store().list_page(&filter, page).await?;
    let total = st.total(&filter).await?;
    let mut items: Vec<NodeView> = nodes.iter().map(|n| NodeView::new(n, reveal)).collect();
    ops::with_service_counters(st.store().as_ref(), &mut items).await?;
    Ok(axum::Json(NodeList {
        items,
        total,
        offset: page.offset,
        limit: page.limit,
        next_after: page.next_after(&nodes),
    }))
}

async fn act(
    st: &AppState,
    kind: JobKind,
    sel: &Selection,
) -> ApiResult<(StatusCode, Json2<JobView>)> {
    let filter = ops::selected(st.store().as_ref(), &sel.selection()?).await?;
    let id = st
        .engine()
        .start_job(kind, filter, JobOptions::default())
        .await?;
    Ok((StatusCode::ACCEPTED, axum::Json(view(st, id).await?)))
}

/// `POST /services/start` body: a selection (exactly one of `ids`, `filter`
/// or `all: true`) and the kind of service.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceStart {
    /// These nodes.
    #[serde(default)]
    pub ids: Option<Vec<NodeId>>,
    /// The nodes matching this filter (the JSON form of the store's filter).
    #[serde(default)]
    #[schema(value_type = Option<NodeFilter>)]
    pub filter: Option<serde_json::Value>,
    /// Every node.
    #[serde(default)]
    pub all: bool,
    /// `socks` (default: a SOCKS5 listener) or `tun` (the node's tunnel as a
    /// TUN interface `cx<node id>` on this server's host; needs
    /// CAP_NET_ADMIN). A running service of the other kind is restarted as
    /// this kind.
    #[serde(default)]
    pub kind: ServiceKind,
}

/// Wants a service of `kind` on the selected verified nodes (`speed_ok`,
/// `online`, `offline`; others are left alone) and starts a job that starts them.
#[utoipa::path(post, path = "/api/v1/services/start", tag = "services", request_body = ServiceStart,
    responses((status = 202, body = JobView),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn start(
    State(st): State<AppState>,
    Json(body): Json<ServiceStart>,
) -> ApiResult<(StatusCode, Json2<JobView>)> {
    let sel = Selection {
        ids: body.ids,
        filter: body.filter,
        all: body.all,
    };
    let filter = ops::selected(st.store().as_ref(), &sel.selection()?).await?;
    let change = ops::want_service_kind(st.store().as_ref(), &filter, body.kind).await?;
    if !change.restarting.is_empty() {
        st.engine().request_reconcile();
    }
    act(&st, JobKind::ServiceStart, &sel).await
}

/// No longer wants a service on the selected nodes and starts a job that stops them.
#[utoipa::path(post, path = "/api/v1/services/stop", tag = "services", request_body = Selection,
    responses((status = 202, body = JobView),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn stop(
    State(st): State<AppState>,
    Json(sel): Json<Selection>,
) -> ApiResult<(StatusCode, Json2<JobView>)> {
    act(&st, JobKind::ServiceStop, &sel).await
}

/// Restarts the running services of the selected nodes: records a restart
/// request for each (`online` or `offline` with an endpoint, still wanted) and
/// wakes this server's reconciler, which stops each listener and starts it
/// again on the same port with the same credentials. The answer says which
/// nodes restart and which run no service; 409 when none does.
#[utoipa::path(post, path = "/api/v1/services/restart", tag = "services", request_body = Selection,
    responses((status = 202, body = RestartRequest),
              (status = 409, body = Problem, content_type = "application/problem+json",
               description = "No selected node runs a service"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn restart(
    State(st): State<AppState>,
    Json(sel): Json<Selection>,
) -> ApiResult<(StatusCode, Json2<RestartRequest>)> {
    let filter = ops::selected(st.store().as_ref(), &sel.selection()?).await?;
    let req = ops::restart_services(st.store().as_ref(), &filter).await?;
    if req.restarting.is_empty() {
        return Err(crate::problem::ApiError::new(
            crate::problem::Kind::Conflict,
            format!(
                "nothing to restart: no service runs on the {} selected nodes",
                req.matched
            ),
        ));
    }
    st.engine().request_reconcile();
    Ok((StatusCode::ACCEPTED, axum::Json(req)))
}

/// The OpenVPN client profile (`.ovpn`) of a node's running `openvpn`
/// service: the CA, the client certificate and its private key inline,
/// `remote <public_host> <port> udp`. Admin only (it carries a private key).
/// 404 for an unknown node, 409 when the node runs no `openvpn` service.
#[utoipa::path(get, path = "/api/v1/services/{id}/profile", tag = "services",
    params(("id" = i64, Path, description = "Node id")),
    responses((status = 200, body = String, content_type = "application/x-openvpn-profile",
               description = "The profile (attachment node<ID>.ovpn)"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 409, body = Problem, content_type = "application/problem+json",
               description = "The node runs no openvpn service")))]
pub async fn profile(
    State(st): State<AppState>,
    crate::extract::Path(id): crate::extract::Path<i64>,
) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse;
    let dir = st.options().openvpn_dir.clone();
    match ops::service_profile(st.store().as_ref(), NodeId(id), &dir).await {
        Ok(text) => Ok((
            [
                (
                    axum::http::header::CONTENT_TYPE,
                    "application/x-openvpn-profile".to_string(),
                ),
                (
                    axum::http::header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"node{id}.ovpn\""),
                ),
                (axum::http::header::CACHE_CONTROL, "no-store".to_string()),
            ],
            text,
        )
            .into_response()),
        Err(ops::ProfileError::Store(e)) => Err(e.into()),
        Err(e @ ops::ProfileError::NoProfile { .. }) => Err(crate::problem::ApiError::new(
            crate::problem::Kind::Conflict,
            e.to_string(),
        )),
        Err(e) => Err(crate::problem::ApiError::new(
            crate::problem::Kind::Internal,
            e.to_string(),
        )),
    }
}
