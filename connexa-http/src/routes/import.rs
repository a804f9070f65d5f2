//! `/api/v1/import`: a node list in the body (any text format the importer
//! reads) or as the file of a `multipart/form-data` form, streamed into the
//! store with bounded memory; optionally followed by a test job on the added nodes.
//!
//! Small bodies are imported while the client waits (the answer is the report).
//! Large ones (over [`HttpOptions::background_import_bytes`](crate::HttpOptions),
//! or any with `background=true`) are first received whole into a spool file,
//! then answered `202` with an import job, which the engine runs (and resumes
//! after a restart) and whose progress `GET /api/v1/imports/{id}` (and its
//! event stream) shows.

use std::convert::Infallible;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use connexa_core::engine::JobOptions;
use connexa_core::import::{ImportOptions, OnConflict};
use connexa_core::ops::{ImportJobView, ImportSummary};
use connexa_core::ports::{ImportSpec, Job, JobId, JobKind};
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tempfile::NamedTempFile;
use tokio::sync::mpsc;
use utoipa::{IntoParams, ToSchema};

use super::jobs::TestKind;
use super::nodes::Json2;
use crate::AppState;
use crate::extract::{Path, Query};
use crate::problem::{ApiError, ApiResult, Kind, Problem};

/// `POST /import` parameters.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ImportQuery {
    /// skip (default: keep the stored node, report the row) or replace.
    pub on_conflict: Option<OnConflict>,
    /// Start a test job of this kind on exactly the added nodes.
    pub test: Option<TestKind>,
    /// A name for the source in the report (default: the uploaded file's name, or `body`).
    pub source: Option<String>,
    /// `true`: receive the whole upload, answer `202` with an import id and
    /// import in the background; `false`: import while the client waits and
    /// answer the report. Absent: background when `Content-Length` is over the
    /// server's threshold (`--background-import-mib`, default 4 MiB).
    pub background: Option<bool>,
}

/// What an import did.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImportResult {
    /// The report (added, replaced, duplicates, conflicts, errors).
    pub summary: ImportSummary,
    /// The test job started on the added nodes, if asked and any were added.
    pub job: Option<JobId>,
}

/// Reads the chunks a pump sends (on the importer's blocking thread).
struct ChanReader {
    rx: mpsc::Receiver<std::io::Result<Bytes>>,
    cur: Bytes,
}

impl Read for ChanReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.cur = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur = self.cur.slice(n..);
        Ok(n)
    }
}

enum PumpEnd {
    Done,
    TooLarge,
    Failed(String),
}

/// Feeds the body to the importer. On a limit or a read error, the importer
/// gets an I/O error (never a clean end, which could turn a cut row into a valid one).
async fn pump<S, E>(
    mut s: S,
    tx: mpsc::Sender<std::io::Result<Bytes>>,
    limit: u64,
    seen: &AtomicU64,
) -> PumpEnd
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let mut total = 0u64;
    while let Some(chunk) = s.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                let _ = tx
                    .send(Err(std::io::Error::other("the upload broke off")))
                    .await;
                return PumpEnd::Failed(e.to_string());
            }
        };
        total += chunk.len() as u64;
        seen.store(total, Ordering::Relaxed);
        if total > limit {
            let _ = tx
                .send(Err(std::io::Error::other(
                    "the upload is larger than the import limit",
                )))
                .await;
            return PumpEnd::TooLarge;
        }
        if tx.send(Ok(chunk)).await.is_err() {
            // The importer stopped reading (it failed); its report says why.
            return PumpEnd::Done;
        }
    }
    PumpEnd::Done
}

/// Imports a node list. Send it as the body (`text/plain`, `text/csv`,
/// `application/json`, `application/octet-stream`) or as the `file` field of a
/// `multipart/form-data` form.
///
/// Synchronous (`200`): the body is streamed into the store and the report comes
/// back at the end. Background (`202`): the upload is received whole first (into
/// a spool file on disk, never held in memory; nothing is imported if it is
/// over the limit), then the answer names the import, whose progress and
/// final report `GET /api/v1/imports/{id}` shows. `background` decides; without
/// it, a body whose `Content-Length` is over the server's threshold (default
/// 4 MiB) runs in the background, anything else (and a body without a length) synchronously.
#[utoipa::path(post, path = "/api/v1/import", tag = "import", params(ImportQuery),
    request_body(content = String, description = "The node list (any format the importer reads)", content_type = "text/plain"),
    responses((status = 200, description = "Imported (synchronous)", body = ImportResult),
              (status = 202, description = "Received; importing in the background", body = BackgroundImport,
               headers(("Location" = String, description = "The import's progress: /api/v1/imports/{id}"))),
              (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 413, description = "Larger than the import limit; synchronous: `import` says what went in before; background: nothing was imported", body = Problem, content_type = "application/problem+json"),
              (status = 503, description = "Background: `unavailable` — too many background imports running, or the server is shutting down; nothing was imported (try again after `Retry-After`)", body = Problem, content_type = "application/problem+json",
               headers(("Retry-After" = u64, description = "Seconds before trying again")))))]
pub async fn import(
    State(st): State<AppState>,
    Query(q): Query<ImportQuery>,
    req: Request,
) -> ApiResult<Response> {
    let limit = st.options().max_import_bytes;
    let length = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = length
        && len > limit
    {
        return Err(ApiError::new(
            Kind::PayloadTooLarge,
            format!("the import limit is {limit} bytes"),
        ));
    }
    let multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("multipart/form-data")
        });
    let background = q
        .background
        .unwrap_or_else(|| length.is_some_and(|len| len > st.options().background_import_bytes));
    if background {
        start_background(st, q, req, multipart, limit).await
    } else {
        Ok(import_now(st, q, req, multipart, limit)
            .await?
            .into_response())
    }
}

/// The `file` field of a form (or the first field with a file name). A macro:
/// a function returning the field borrowed from the loop is refused by the borrow checker.
macro_rules! file_field {
    ($mp:expr) => {
        loop {
            match $mp.next_field().await {
                Ok(Some(f)) if f.name() == Some("file") || f.file_name().is_some() => break f,
                Ok(Some(_)) => continue,
                Ok(None) => {
                    return Err(ApiError::bad_request(
                        "multipart: no \"file\" field in the form",
                    ));
                }
                Err(e) => return Err(ApiError::bad_request(format!("multipart: {e}"))),
            }
        }
    };
}

fn import_options(q: &ImportQuery) -> (ImportOptions, Option<(JobKind, JobOptions)>) {
    let options = ImportOptions {
        on_conflict: q.on_conflict.unwrap_or_default(),
        ..ImportOptions::default()
    };
    (options, q.test.map(|k| (k.into(), JobOptions::default())))
}

/// The synchronous import: the body streams into the importer.
async fn import_now(
    st: AppState,
    q: ImportQuery,
    req: Request,
    multipart: bool,
    limit: u64,
) -> ApiResult<Json2<ImportResult>> {
    // Refused before the body is read: each one holds a database writer and a connection.
    let _permit = st.sync_imports().clone().try_acquire_owned().map_err(|_| {
        unavailable(&format!(
            "{} synchronous imports are running; try again later",
            st.options().max_sync_imports
        ))
    })?;
    let (options, test) = import_options(&q);
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(16);
    let body_len = AtomicU64::new(0);
    let reader = ChanReader {
        rx,
        cur: Bytes::new(),
    };
    let engine = st.engine().clone();
    let import = async move { engine.import(reader, options, test).await };
    let (result, end, source) = if multipart {
        let mut mp = Multipart::from_request(req, &st)
            .await
            .map_err(|e| ApiError::bad_request(format!("multipart: {}", e.body_text())))?;
        let field = file_field!(mp);
        let source = field.file_name().map(str::to_owned);
        let chunks = pump(Box::pin(field), tx, limit, &body_len);
        let (r, e) = tokio::join!(import, chunks);
        (r, e, source)
    } else {
        let body = req.into_body().into_data_stream();
        let (r, e) = tokio::join!(import, pump(body, tx, limit, &body_len));
        (r, e, None)
    };
    let (report, job) = result?;
    if report.added.is_empty()
        && report.duplicates.is_empty()
        && report.conflicts.is_empty()
        && report.errors.is_empty()
        && matches!(end, PumpEnd::Done)
        && body_len.load(Ordering::Relaxed) == 0
    {
        return Err(ApiError::bad_request("the body is empty: send a node list"));
    }
    let source = q.source.or(source).unwrap_or_else(|| "body".into());
    let summary = ImportSummary::new(source, &report);
    match end {
        PumpEnd::Done => Ok(axum::Json(ImportResult { summary, job })),
        PumpEnd::TooLarge => {
            let mut e = ApiError::new(
                Kind::PayloadTooLarge,
                format!("the import limit is {limit} bytes; the rows before it were imported"),
            );
            e.0.import = Some(summary);
            Err(e)
        }
        PumpEnd::Failed(why) => {
            let mut e = ApiError::bad_request(format!(
                "the body could not be read ({why}); the rows before it were imported"
            ));
            e.0.import = Some(summary);
            Err(e)
        }
    }
}

// --- background imports: engine jobs ---------------------------------------------------

/// `GET /imports` lists at most this many import jobs, newest first.
pub const LISTED: usize = 20;
/// Bytes buffered in memory while an upload is written to its spool file.
const SPOOL_BUFFER: usize = 1 << 20;
/// `Retry-After` (seconds) of a `503 unavailable` answer to a background import.
const RETRY_AFTER_SECS: u64 = 5;
/// Jobs `GET /imports` looks through for import jobs.
const SCAN: u64 = 1_000;

pub use connexa_core::ops::ImportState;

/// A background import (an import job) and its progress: the import job's
/// view ([`ImportJobView`]) with its id and URL.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BackgroundImport {
    /// The import's id: its job's id, as text.
    pub id: String,
    /// Where its progress is: `/api/v1/imports/{id}`.
    pub url: String,
    /// The import job (also in `GET /jobs` and `connexa jobs list`).
    pub import_job: JobId,
    /// running, done, failed or cancelled.
    pub state: ImportState,
    /// The source's name in the report.
    pub source: String,
    /// Conflict policy.
    pub on_conflict: OnConflict,
    /// Bytes of the upload (of the file field, for a form).
    pub bytes_total: u64,
    /// Bytes of the upload the committed batches have read.
    pub bytes_processed: u64,
    /// `bytes_processed` in percent of `bytes_total`, one decimal; 100 only once done.
    pub percent: f64,
    /// When the upload was received and the import job created.
    pub started_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// The report, once ended (the same as a synchronous import's `summary`);
    /// always null in the list of imports.
    pub summary: Option<ImportSummary>,
    /// The test job started on the added nodes, if `test` was asked and any were added.
    pub job: Option<JobId>,
    /// Why the import failed.
    pub error: Option<String>,
}

impl From<ImportJobView> for BackgroundImport {
    fn from(v: ImportJobView) -> Self {
        BackgroundImport {
            id: v.import_job.to_string(),
            url: import_url(v.import_job),
            import_job: v.import_job,
            state: v.state,
            source: v.source,
            on_conflict: v.on_conflict,
            bytes_total: v.bytes_total,
            bytes_processed: v.bytes_processed,
            percent: v.percent,
            started_at: v.started_at,
            finished_at: v.finished_at,
            summary: v.summary,
            job: v.job,
            error: v.error,
        }
    }
}

/// `503 unavailable` with `Retry-After`.
fn unavailable(detail: &str) -> ApiError {
    let mut e = ApiError::new(Kind::Unavailable, detail);
    e.0.retry_after = Some(RETRY_AFTER_SECS);
    e
}

fn import_url(id: JobId) -> String {
    format!("/api/v1/imports/{id}")
}

/// The view of import job `job`; its report only `with_summary` and once it ended.
async fn view(st: &AppState, job: &Job, with_summary: bool) -> ApiResult<BackgroundImport> {
    Ok(ImportJobView::of(st.store().as_ref(), job, with_summary)
        .await?
        .into())
}

/// Writes a body stream to a new spool file in `dir`: at most `limit` bytes
/// (else `413`, and the file is gone), with at most [`SPOOL_BUFFER`] bytes in
/// memory (or one chunk, if a single chunk is larger).
async fn spool<S, E>(mut s: S, dir: PathBuf, limit: u64) -> ApiResult<(NamedTempFile, u64)>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let tmp = tokio::task::spawn_blocking(move || {
        tempfile::Builder::new()
            .prefix("connexa-import-")
            .suffix(".spool")
            .tempfile_in(&dir)
            .map_err(|e| format!("cannot create a spool file in {}: {e}", dir.display()))
    })
    .await
    .map_err(|e| ApiError::internal(&e))?
    .map_err(|e| ApiError::internal(&e))?;
    let mut file = tmp
        .as_file()
        .try_clone()
        .map_err(|e| ApiError::internal(&e))?;
    let mut buf: Vec<u8> = Vec::with_capacity(SPOOL_BUFFER);
    let mut total = 0u64;
    while let Some(chunk) = s.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::bad_request(format!(
                "the body could not be read ({e}); nothing was imported"
            ))
        })?;
        total += chunk.len() as u64;
        if total > limit {
            return Err(ApiError::new(
                Kind::PayloadTooLarge,
                format!("the import limit is {limit} bytes; nothing was imported"),
            ));
        }
        if !buf.is_empty() && buf.len() + chunk.len() > SPOOL_BUFFER {
            (file, buf) = write_out(file, buf).await?;
        }
        buf.extend_from_slice(&chunk);
        if buf.len() >= SPOOL_BUFFER {
            (file, buf) = write_out(file, buf).await?;
        }
    }
    if !buf.is_empty() {
        (file, _) = write_out(file, buf).await?;
    }
    // The spool outlives this process if it stops: the import resumes from it.
    tokio::task::spawn_blocking(move || file.sync_all())
        .await
        .map_err(|e| ApiError::internal(&e))?
        .map_err(|e| ApiError::internal(&format!("cannot write the spool file: {e}")))?;
    Ok((tmp, total))
}

/// Appends `buf` to `file` on a blocking thread; gives both back (`buf` empty).
async fn write_out(
    mut file: std::fs::File,
    mut buf: Vec<u8>,
) -> ApiResult<(std::fs::File, Vec<u8>)> {
    let (file, buf, r) = tokio::task::spawn_blocking(move || {
        let r = file.write_all(&buf);
        buf.clear();
        (file, buf, r)
    })
    .await
    .map_err(|e| ApiError::internal(&e))?;
    r.map_err(|e| ApiError::internal(&format!("cannot write the spool file: {e}")))?;
    Ok((file, buf))
}

/// Receives the upload into a spool file and creates the import job, which
/// the engine runs (and resumes after a restart of this server).
async fn start_background(
    st: AppState,
    q: ImportQuery,
    req: Request,
    multipart: bool,
    limit: u64,
) -> ApiResult<Response> {
    // Refused before the body is read: uploads being spooled and imports
    // running here share the limit (it bounds the spool disk and the
    // importers at once), and nothing starts during a shutdown.
    let max = st.options().max_background_imports;
    let refused = || {
        unavailable(&format!(
            "{max} background imports are running; try again later"
        ))
    };
    // The permit first, then the count: uploads arriving together cannot all
    // pass a count taken before any of them holds a permit.
    let permit = st
        .spooling()
        .clone()
        .try_acquire_owned()
        .map_err(|_| refused())?;
    let host = connexa_core::ports::hostname();
    let running = st
        .store()
        .unfinished_jobs()
        .await?
        .iter()
        .filter(|j| j.import_spec().is_some_and(|s| s.host == host))
        .count();
    let spooling = max.saturating_sub(st.spooling().available_permits());
    if spooling + running > max {
        return Err(refused());
    }
    if *st.shutdown_rx().borrow() {
        return Err(unavailable("the server is shutting down"));
    }
    let dir = st
        .options()
        .spool_dir
        .clone()
        .unwrap_or_else(std::env::temp_dir);
    let (tmp, size, file_name) = if multipart {
        let mut mp = Multipart::from_request(req, &st)
            .await
            .map_err(|e| ApiError::bad_request(format!("multipart: {}", e.body_text())))?;
        let field = file_field!(mp);
        let name = field.file_name().map(str::to_owned);
        let (tmp, size) = spool(Box::pin(field), dir, limit).await?;
        (tmp, size, name)
    } else {
        let (tmp, size) = spool(req.into_body().into_data_stream(), dir, limit).await?;
        (tmp, size, None)
    };
    if size == 0 {
        return Err(ApiError::bad_request("the body is empty: send a node list"));
    }
    // The upload may have taken long: nothing starts once a shutdown began
    // (the spool file goes with `tmp`).
    if *st.shutdown_rx().borrow() {
        return Err(unavailable(
            "the server is shutting down; nothing was imported",
        ));
    }
    let (options, test) = import_options(&q);
    let test = match test {
        Some((kind, opts)) => Some((
            kind,
            serde_json::to_value(opts).map_err(|e| ApiError::internal(&e))?,
        )),
        None => None,
    };
    let source = q
        .source
        .clone()
        .or(file_name)
        .unwrap_or_else(|| "body".into());
    // From here the import job owns the file: it deletes it when it ends.
    let path = tmp
        .into_temp_path()
        .keep()
        .map_err(|e| ApiError::internal(&e))?;
    let spec = ImportSpec {
        source,
        spool: path.clone(),
        delete_spool: true,
        host: connexa_core::ports::hostname(),
        bytes_total: size,
        on_conflict: options.on_conflict,
        test,
        actor: None,
        actor_source: None,
    };
    let id = match st.engine().start_import(spec).await {
        Ok(id) => id,
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            return Err(e.into());
        }
    };
    drop(permit);
    tracing::info!(import = %id, bytes = size, "background import started");
    let job = st.store().job(id).await?;
    let view = view(&st, &job, false).await?;
    let location = HeaderValue::from_str(&view.url).map_err(|e| ApiError::internal(&e))?;
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        axum::Json(view),
    )
        .into_response())
}

/// The import job named `id` (`404` for anything else).
async fn find(st: &AppState, id: &str) -> ApiResult<Job> {
    let missing = || ApiError::not_found(format!("no background import with id {id:?}"));
    let n: i64 = id.parse().map_err(|_| missing())?;
    match st.store().job(JobId(n)).await {
        Ok(job) if job.kind == JobKind::Import => Ok(job),
        Ok(_) | Err(connexa_core::ports::StoreError::JobNotFound(_)) => Err(missing()),
        Err(e) => Err(e.into()),
    }
}

/// Recent background imports (import jobs), newest first: at most 20, without
/// their reports (`summary` is null here: a report can be large;
/// `GET /imports/{id}` has it). They are jobs in the database: a restart
/// keeps them.
#[utoipa::path(get, path = "/api/v1/imports", tag = "import",
    responses((status = 200, body = Vec<BackgroundImport>)))]
pub async fn list(State(st): State<AppState>) -> ApiResult<Json2<Vec<BackgroundImport>>> {
    let mut out = Vec::new();
    for job in st.store().jobs(SCAN).await? {
        if job.kind != JobKind::Import {
            continue;
        }
        out.push(view(&st, &job, false).await?);
        if out.len() == LISTED {
            break;
        }
    }
    Ok(axum::Json(out))
}

/// A background import: its state, progress and, once ended, its report.
#[utoipa::path(get, path = "/api/v1/imports/{id}", tag = "import",
    params(("id" = String, Path, description = "Import id (from `POST /import`): its job's id")),
    responses((status = 200, body = BackgroundImport),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn get_one(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json2<BackgroundImport>> {
    let job = find(&st, &id).await?;
    Ok(axum::Json(view(&st, &job, true).await?))
}

/// How often the event stream looks at the progress.
const EVENT_TICK: Duration = Duration::from_millis(250);

/// Server-Sent Events of a background import: `progress` (whenever the bytes
/// committed change, at most 4 a second) and a final `done` (state done — at
/// 100 % — failed or cancelled, with the report), after which the stream
/// ends. Data: the same as `GET /imports/{id}`.
#[utoipa::path(get, path = "/api/v1/imports/{id}/events", tag = "import",
    params(("id" = String, Path, description = "Import id")),
    responses((status = 200, description = "An event stream: `event: progress` and a final `event: done` (data: BackgroundImport)", content_type = "text/event-stream", body = Object),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn events(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let job = find(&st, &id).await?;
    let shutdown = st.shutdown_rx();
    let stream = futures::stream::unfold(
        (st, job.id, shutdown, None::<u64>, false),
        |(st, id, mut shutdown, last, over)| async move {
            if over {
                return None;
            }
            loop {
                let view = match st.store().job(id).await {
                    Ok(job) => view(&st, &job, true).await,
                    Err(e) => Err(e.into()),
                };
                let view = match view {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::warn!(import = %id, error = ?e.0.detail, "import events: cannot read the job");
                        return None;
                    }
                };
                if view.state != ImportState::Running {
                    let e = Event::default().event("done").json_data(&view).ok()?;
                    return Some((Ok(e), (st, id, shutdown, last, true)));
                }
                if last != Some(view.bytes_processed) {
                    let seen = Some(view.bytes_processed);
                    let e = Event::default().event("progress").json_data(&view).ok()?;
                    return Some((Ok(e), (st, id, shutdown, seen, false)));
                }
                tokio::select! {
                    () = tokio::time::sleep(EVENT_TICK) => {}
                    _ = shutdown.wait_for(|s| *s) => return None,
                }
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
