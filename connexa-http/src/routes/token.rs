//! `/api/v1/token`: the calling token, so a client (the console) knows its role.

use axum::Extension;
use connexa_core::ports::ApiToken;

use super::nodes::Json2;

/// The token of this request: its name, role and scope (never the token
/// itself nor its hash). A request signed in with a session has no token
/// (`404`; see `GET /api/v1/session`).
#[utoipa::path(get, path = "/api/v1/token", tag = "meta",
    responses((status = 200, body = ApiToken),
        (status = 404, body = crate::problem::Problem, description = "The request is authenticated by a session, not a token (`not-found`)")))]
pub async fn current(
    t: Option<Extension<ApiToken>>,
) -> Result<Json2<ApiToken>, crate::problem::ApiError> {
    match t {
        Some(Extension(t)) => Ok(axum::Json(t)),
        None => Err(crate::problem::ApiError::not_found(
            "this request is not authenticated by a token (see GET /api/v1/session)",
        )),
    }
}
