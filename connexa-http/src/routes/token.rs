//! `/api/v1/token`: the calling token, so a client (the console) knows its role.

use axum::Extension;
use connexa_core::ports::ApiToken;

use super::nodes::Json2;

/// The token of this request: its name, role and scope (never the token
/// itself nor its hash).
#[utoipa::path(get, path = "/api/v1/token", tag = "meta",
    responses((status = 200, body = ApiToken)))]
pub async fn current(Extension(t): Extension<ApiToken>) -> Json2<ApiToken> {
    axum::Json(t)
}
