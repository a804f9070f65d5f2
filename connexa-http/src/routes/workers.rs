//! `/api/v1/workers`: the worker processes on this database.

use axum::extract::State;
use connexa_core::ports::WorkerView;

use super::nodes::Json2;
use crate::AppState;
use crate::problem::ApiResult;

/// Every registered worker (`connexa run`, `connexa-http serve`), by name:
/// host, pid, version, roles, heartbeat, whether it is alive (its heartbeat
/// has not expired) and how many job items it holds running.
#[utoipa::path(get, path = "/api/v1/workers", tag = "workers",
    responses((status = 200, body = Vec<WorkerView>)))]
pub async fn list(State(st): State<AppState>) -> ApiResult<Json2<Vec<WorkerView>>> {
    Ok(axum::Json(st.store().workers(chrono::Utc::now()).await?))
}
