//! `/api/v1/jobs`: create, list, show, cancel, and the live event stream.

use std::convert::Infallible;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use chrono::{DateTime, Utc};
use connexa_core::domain::{NodeId, Status};
use connexa_core::engine::{JobOptions, JobOptionsError, ProgressEvent};
use connexa_core::ops::{self, JobView};
use connexa_core::ports::{ItemCursor, ItemId, ItemState, ItemView, JobId, JobKind, JobState};
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use utoipa::{IntoParams, ToSchema};

use super::Selection;
use super::nodes::Json2;
use crate::AppState;
use crate::extract::{Json, Path, Query};
use crate::problem::{ApiError, ApiResult, Problem};

/// What a test job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TestKind {
    /// PPTP control-channel handshake.
    Light,
    /// MS-CHAPv2 login.
    Auth,
    /// Throughput through the tunnel.
    Speed,
    /// Light, then auth, then speed.
    Pipeline,
    /// GEO lookup of each node's address (`[geo]` databases); never changes a status.
    Geo,
    /// Fraud score of each node's address (`[fraud]` providers); never changes a status.
    Fraud,
}

impl From<TestKind> for JobKind {
    fn from(k: TestKind) -> JobKind {
        match k {
            TestKind::Light => JobKind::Light,
            TestKind::Auth => JobKind::Auth,
            TestKind::Speed => JobKind::Speed,
            TestKind::Pipeline => JobKind::Pipeline,
            TestKind::Geo => JobKind::Geo,
            TestKind::Fraud => JobKind::Fraud,
        }
    }
}

/// A test job to start: the kind, exactly one of `ids`, `filter`, `all`, and options.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateJob {
    /// What to test.
    pub kind: TestKind,
    /// These nodes.
    #[serde(default)]
    pub ids: Option<Vec<NodeId>>,
    /// The nodes matching this filter.
    #[serde(default)]
    #[schema(value_type = Option<connexa_core::domain::NodeFilter>)]
    pub filter: Option<serde_json::Value>,
    /// Every node.
    #[serde(default)]
    pub all: bool,
    /// Nodes tested at once (default: the server's configuration).
    pub concurrency: Option<u32>,
    /// Time budget per node, seconds.
    pub node_timeout_secs: Option<f64>,
    /// Deadline of the whole job, seconds from now.
    pub deadline_secs: Option<f64>,
}

/// The options of a job of `kind` from a request's numbers, within
/// connexa-core's one set of limits ([`JobOptions::checked`], the CLI's too):
/// a per-node budget below the kind's minimum is a `400`, any other limit a `422`.
fn job_options(
    kind: JobKind,
    concurrency: Option<u32>,
    node_timeout_secs: Option<f64>,
    deadline_secs: Option<f64>,
) -> Result<JobOptions, ApiError> {
    JobOptions::checked(
        kind,
        concurrency.map(u64::from),
        node_timeout_secs,
        deadline_secs,
    )
    .map_err(|e| match e {
        JobOptionsError::Budget(_) => ApiError::bad_request(e.to_string()),
        _ => ApiError::invalid_body(e.to_string()),
    })
}

/// Starts a test job; follow it at `/jobs/{id}/events`.
#[utoipa::path(post, path = "/api/v1/jobs", tag = "jobs", request_body = CreateJob,
    responses((status = 202, body = JobView),
              (status = 400, description = "`bad-request`: node_timeout_secs below the minimum for the kind (or invalid query parameters or path)", body = Problem, content_type = "application/problem+json"),
              (status = 422, body = Problem, content_type = "application/problem+json")))]
pub async fn create(
    State(st): State<AppState>,
    Json(b): Json<CreateJob>,
) -> ApiResult<(StatusCode, Json2<JobView>)> {
    let selection = Selection {
        ids: b.ids,
        filter: b.filter,
        all: b.all,
    }
    .selection()?;
    let kind = b.kind.into();
    let o = job_options(kind, b.concurrency, b.node_timeout_secs, b.deadline_secs)?;
    let filter = ops::selected(st.store().as_ref(), &selection).await?;
    let id = st.engine().start_job(kind, filter, o).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(view(&st, id).await?)))
}

pub(crate) async fn view(st: &AppState, id: JobId) -> ApiResult<JobView> {
    let job = st.store().job(id).await?;
    let p = st.store().progress(id).await?;
    Ok(JobView::new(&job, p))
}

/// `GET /jobs` parameters.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct JobsQuery {
    /// How many jobs, newest first (default 20, at most 1000).
    pub limit: Option<u64>,
}

/// The most recent jobs, newest first.
#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs", params(JobsQuery),
    responses((status = 200, body = Vec<JobView>)))]
pub async fn list(
    State(st): State<AppState>,
    Query(q): Query<JobsQuery>,
) -> ApiResult<Json2<Vec<JobView>>> {
    let limit = q.limit.unwrap_or(20);
    if limit > 1000 {
        return Err(ApiError::bad_request("limit: at most 1000"));
    }
    let mut out = Vec::new();
    for j in st.store().jobs(limit).await? {
        let p = st.store().progress(j.id).await?;
        out.push(JobView::new(&j, p));
    }
    Ok(axum::Json(out))
}

/// One finished item of a job.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ItemResultView {
    /// The item.
    #[schema(value_type = i64)]
    pub item: ItemId,
    /// The node.
    pub node: NodeId,
    /// How the item ended.
    pub state: ItemState,
    /// The node's status afterwards.
    pub status: Option<Status>,
    /// Summary (the failure, the refusal...).
    pub detail: Option<String>,
    /// When.
    pub finished_at: Option<DateTime<Utc>>,
}

impl From<&ItemView> for ItemResultView {
    fn from(i: &ItemView) -> Self {
        ItemResultView {
            item: i.item,
            node: i.node,
            state: i.state,
            status: i.status,
            detail: i.detail.clone(),
            finished_at: i.finished_at,
        }
    }
}

/// A job with its last results.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobDetail {
    /// The job and its progress.
    #[serde(flatten)]
    pub job: JobView,
    /// The last 20 finished items, newest first.
    pub recent: Vec<ItemResultView>,
}

/// One job, its progress and its last results.
#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "jobs",
    params(("id" = i64, Path, description = "Job id")),
    responses((status = 200, body = JobDetail),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn get_one(
    State(st): State<AppState>,
    Path(id): Path<i64>,
) -> ApiResult<Json2<JobDetail>> {
    let job = view(&st, JobId(id)).await?;
    let recent = st.store().recent_items(JobId(id), 20).await?;
    Ok(axum::Json(JobDetail {
        job,
        recent: recent.iter().map(ItemResultView::from).collect(),
    }))
}

/// Cancels a job: finished results stay, the rest end as cancelled.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/cancel", tag = "jobs",
    params(("id" = i64, Path, description = "Job id")),
    responses((status = 200, body = JobView),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn cancel(State(st): State<AppState>, Path(id): Path<i64>) -> ApiResult<Json2<JobView>> {
    st.store().job(JobId(id)).await?;
    st.engine().cancel(JobId(id)).await?;
    Ok(axum::Json(view(&st, JobId(id)).await?))
}

/// Options of a retest: absent keeps the server's defaults, and the per-node
/// budget defaults to twice the old job's.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetestFailed {
    /// Nodes tested at once (default: the server's configuration).
    pub concurrency: Option<u32>,
    /// Time budget per node, seconds (default: twice the old job's).
    pub node_timeout_secs: Option<f64>,
}

/// Starts a job of the same kind on the nodes job `id` failed (items that
/// ended failed or timed out), by default with twice its per-node budget.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/retest-failed", tag = "jobs", request_body = RetestFailed,
    params(("id" = i64, Path, description = "Job id")),
    responses((status = 202, body = JobView),
              (status = 400, description = "`bad-request`: node_timeout_secs below the minimum for the kind", body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json"),
              (status = 422, description = "The job failed no node, or invalid options", body = Problem, content_type = "application/problem+json")))]
pub async fn retest_failed(
    State(st): State<AppState>,
    Path(id): Path<i64>,
    Json(b): Json<RetestFailed>,
) -> ApiResult<(StatusCode, Json2<JobView>)> {
    let old = st.store().job(JobId(id)).await?;
    let o = job_options(old.kind, b.concurrency, b.node_timeout_secs, None)?;
    let (new, _) = st
        .engine()
        .retest_failed(JobId(id), o)
        .await
        .map_err(|e| match e {
            connexa_core::engine::EngineError::Store(
                connexa_core::ports::StoreError::NothingSelected,
            ) => ApiError::invalid_body(format!("job {id} failed no node: nothing to retest")),
            e => ApiError::from(e),
        })?;
    Ok((StatusCode::ACCEPTED, axum::Json(view(&st, new).await?)))
}

/// The jobs `POST /jobs/cancel` cancelled.
#[derive(Debug, Serialize, ToSchema)]
pub struct CancelledJobs {
    /// Their ids, oldest first (empty when no job was queued or running).
    #[schema(value_type = Vec<i64>)]
    pub cancelled: Vec<JobId>,
}

/// Cancels every job not yet finished (queued or running), each as
/// `/jobs/{id}/cancel` does: finished results stay, the rest end as cancelled.
#[utoipa::path(post, path = "/api/v1/jobs/cancel", tag = "jobs",
    responses((status = 200, body = CancelledJobs)))]
pub async fn cancel_all(State(st): State<AppState>) -> ApiResult<Json2<CancelledJobs>> {
    let cancelled = st.engine().cancel_all().await?;
    Ok(axum::Json(CancelledJobs { cancelled }))
}

/// The data of `progress` and `done` events.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ProgressData {
    /// The job.
    pub job: JobId,
    /// What it does.
    pub kind: JobKind,
    /// Its state.
    pub state: JobState,
    /// Items in all.
    pub total: u64,
    /// Items ended.
    pub done: u64,
    /// Ended ok.
    pub ok: u64,
    /// Ended with a failure.
    pub failed: u64,
    /// Ended by a timeout.
    pub timed_out: u64,
    /// Ended by cancellation.
    pub cancelled: u64,
    /// 0..=100; 100 in the final `done` event.
    pub percent: f64,
    /// Items per second.
    pub rate: f64,
    /// Estimated seconds left.
    pub eta_secs: Option<f64>,
    /// `true` in the final event.
    pub finished: bool,
}

impl From<&ProgressEvent> for ProgressData {
    fn from(e: &ProgressEvent) -> Self {
        let p = e.progress;
        ProgressData {
            job: e.job,
            kind: e.kind,
            state: e.state,
            total: p.total,
            done: p.done(),
            ok: p.ok,
            failed: p.failed,
            timed_out: p.timed_out,
            cancelled: p.cancelled,
            percent: p.percent(),
            rate: e.rate,
            eta_secs: e.eta.map(|d| d.as_secs_f64()),
            finished: e.finished,
        }
    }
}

/// `GET /jobs/{id}/events` parameters.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Resume after this event id (same as the `Last-Event-ID` header, which wins).
    pub after: Option<String>,
}

fn parse_cursor(s: &str) -> Result<ItemCursor, ApiError> {
    let bad = || ApiError::bad_request(format!("event id {s:?} is not SEQ.ITEM"));
    let (a, b) = s.trim().split_once('.').ok_or_else(bad)?;
    Ok(ItemCursor {
        seq: a.parse().map_err(|_| bad())?,
        item: b.parse().map_err(|_| bad())?,
    })
}

fn cursor_id(c: ItemCursor) -> String {
    format!("{}.{}", c.seq, c.item)
}

const RESULTS_PAGE: u64 = 1000;

/// Server-Sent Events: `result` (one per finished node, in commit order),
/// `progress` (counts, whenever they change) and a final `done` at 100 %.
/// Every event's id is a cursor; reconnecting with `Last-Event-ID` resumes
/// after it, without losing or repeating a result.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/events", tag = "jobs",
    params(("id" = i64, Path, description = "Job id"),
           ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id"),
           EventsQuery),
    responses((status = 200, description = "An event stream: `event: result` (data: ItemResultView), `event: progress` and a final `event: done` (data: ProgressData)", content_type = "text/event-stream", body = Object),
              (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn events(
    State(st): State<AppState>,
    Path(id): Path<i64>,
    Query(q): Query<EventsQuery>,
    headers: HeaderMap,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let job = JobId(id);
    st.store().job(job).await?;
    let from_header = headers
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::bad_request("Last-Event-ID is not text"))
        })
        .transpose()?;
    let cursor = match from_header.or(q.after.as_deref()) {
        Some(s) => parse_cursor(s)?,
        None => ItemCursor::default(),
    };
    let (tx, rx) = mpsc::channel::<Event>(256);
    tokio::spawn(pump(st, job, cursor, tx));
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

async fn pump(st: AppState, job: JobId, mut cursor: ItemCursor, tx: mpsc::Sender<Event>) {
    let mut progress = Box::pin(st.engine().progress(job));
    let mut shutdown = st.shutdown_rx();
    loop {
        let ev = tokio::select! {
            ev = progress.next() => ev,
            _ = shutdown.wait_for(|s| *s) => return,
            () = tx.closed() => return,
        };
        let Some(ev) = ev else { return };
        // Results committed so far, in commit order.
        loop {
            let items = match st.store().items_since(job, cursor, RESULTS_PAGE).await {
                Ok(items) => items,
                Err(e) => {
                    tracing::warn!(%job, error = %e, "event stream: cannot read results");
                    break;
                }
            };
            let n = items.len() as u64;
            for c in items {
                cursor = c.cursor();
                let Ok(e) = Event::default()
                    .event("result")
                    .id(cursor_id(cursor))
                    .json_data(ItemResultView::from(&c.item))
                else {
                    continue;
                };
                if tx.send(e).await.is_err() {
                    return;
                }
            }
            if n < RESULTS_PAGE {
                break;
            }
        }
        let name = if ev.finished { "done" } else { "progress" };
        let Ok(e) = Event::default()
            .event(name)
            .id(cursor_id(cursor))
            .json_data(ProgressData::from(&ev))
        else {
            return;
        };
        if tx.send(e).await.is_err() || ev.finished {
            return;
        }
    }
}
