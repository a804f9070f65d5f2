//! `/api/v1/stats`.

use axum::extract::State;
use connexa_core::ops::{self, Stats};
use serde::Serialize;
use utoipa::ToSchema;

use super::nodes::Json2;
use crate::AppState;
use crate::problem::ApiResult;

/// Counts per status, services, jobs.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatsView {
    /// Nodes per status, services running, the last job.
    #[serde(flatten)]
    pub stats: Stats,
    /// Jobs queued or running.
    pub jobs_unfinished: u64,
}

/// Counts per status, services running, the last job, unfinished jobs.
#[utoipa::path(get, path = "/api/v1/stats", tag = "stats",
    responses((status = 200, body = StatsView)))]
pub async fn stats(State(st): State<AppState>) -> ApiResult<Json2<StatsView>> {
    let stats = ops::stats(st.store().as_ref()).await?;
    let jobs_unfinished = st.store().unfinished_jobs().await?.len() as u64;
    Ok(axum::Json(StatsView {
        stats,
        jobs_unfinished,
    }))
}
