//! `/api/v1/audit` and the middleware that makes every authenticated request
//! act as its caller, so the store records who changed what.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Query, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use connexa_core::store::audit::{self, Actor, AuditEntry, AuditQuery};
use serde::Deserialize;
use utoipa::IntoParams;

use super::nodes::Json2;
use crate::AppState;
use crate::auth::Principal;
use crate::problem::{ApiError, ApiResult};

/// Middleware (after authentication): runs the request acting as its caller
/// (`token:<name>` or `user:<name>`, [`Principal::actor_name`]), from its client address (through trusted proxies). Every
/// change the request makes in the store appends its audit row in the same
/// transaction (see [`connexa_core::store::audit`]).
pub async fn act_as_caller(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let Some(name) = req
        .extensions()
        .get::<Principal>()
        .map(Principal::actor_name)
    else {
        return next.run(req).await;
    };
    let source = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| crate::auth::client_addr(c.0.ip(), req.headers(), &st.options().trusted_proxies))
        .map(|ip| ip.to_string());
    audit::scope(Arc::new(Actor { name, source }), next.run(req)).await
}

/// Which audit rows to list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// At most this many rows (1 to 10,000; default 100).
    pub limit: Option<u64>,
    /// Only rows with an id below this: the last `id` of the previous page.
    pub before: Option<i64>,
    /// Only this actor, exactly (`token:ci`, `os:root`, `user:alice`).
    pub actor: Option<String>,
    /// Only this action, exactly (`import`, `delete`, `service_want`, …).
    pub action: Option<String>,
}

/// The audit trail, newest first: who (account, token or OS user) changed
/// what (action, target, how many rows), when and from where. Page with
/// `before` = the last id seen. Never holds a secret.
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", params(AuditParams),
    responses((status = 200, body = Vec<AuditEntry>),
        (status = 400, description = "A parameter out of range", body = crate::problem::Problem),
        (status = 404, description = "This server keeps no audit trail", body = crate::problem::Problem)))]
pub async fn list(
    State(st): State<AppState>,
    Query(p): Query<AuditParams>,
) -> ApiResult<Json2<Vec<AuditEntry>>> {
    let q = AuditQuery {
        limit: p.limit,
        before: p.before,
        actor: p.actor,
        action: p.action,
    };
    q.check()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let Some(trail) = st.audit_trail() else {
        return Err(ApiError::not_found(
            "this server keeps no audit trail (AppState::with_audit_trail)",
        ));
    };
    Ok(axum::Json(trail.audit_query(&q).await?))
}
