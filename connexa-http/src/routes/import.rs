//! `/api/v1/import`: a node list in the body (any text format the importer
//! reads) or as the file of a `multipart/form-data` form, streamed into the
//! store with bounded memory; optionally followed by a test job on the added nodes.
//!
//! Small bodies are imported while the client waits (the answer is the report).
//! Large ones (over [`HttpOptions::background_import_bytes`](crate::HttpOptions),
//! or any with `background=true`) are first received whole into a spool file,
//! then answered `202` with an import id, and imported by a background task
//! whose progress `GET /api/v1/imports/{id}` (and its event stream) shows.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use connexa_core::engine::JobOptions;
use connexa_core::import::{ImportOptions, OnConflict};
use connexa_core::ops::ImportSummary;
use connexa_core::ports::{JobId, JobKind};
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tempfile::NamedTempFile;
use tokio::sync::{mpsc, watch};
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

// --- background imports ------------------------------------------------------------

/// Finished background imports kept for `GET /imports` (the oldest go first).
pub const FINISHED_KEPT: usize = 20;
/// How long a finished background import stays visible.
pub const FINISHED_TTL: Duration = Duration::from_secs(3600);
/// Bytes buffered in memory while an upload is written to its spool file.
const SPOOL_BUFFER: usize = 1 << 20;
/// `Retry-After` (seconds) of a `503 unavailable` answer to a background import.
const RETRY_AFTER_SECS: u64 = 5;
/// What the spool reader answers the importer once the server shuts down (the
/// importer reports it as a row error, which is then dropped from the report).
const SHUTTING_DOWN: &str = "the server is shutting down";

/// Where a background import is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ImportState {
    /// The importer is reading the spooled upload.
    Running,
    /// Every row was read; `summary` is the report.
    Done,
    /// The import stopped early or its test job could not start; `error` says
    /// why, and `summary` (when present) names the rows that went in before.
    Failed,
}

/// A background import and its progress.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BackgroundImport {
    /// The import's id (random; valid until the server restarts).
    pub id: String,
    /// Where its progress is: `/api/v1/imports/{id}`.
    pub url: String,
    /// running, done or failed.
    pub state: ImportState,
    /// The source's name in the report.
    pub source: String,
    /// Conflict policy.
    pub on_conflict: OnConflict,
    /// Bytes of the upload (of the file field, for a form).
    pub bytes_total: u64,
    /// Bytes the importer has read so far.
    pub bytes_processed: u64,
    /// `bytes_processed` in percent of `bytes_total`, one decimal; 100 only once done.
    pub percent: f64,
    /// When the upload was received and the import started.
    pub started_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// The report, once ended (the same as a synchronous import's `summary`);
    /// always null in the list of imports. Shared with the registry, never copied.
    #[schema(value_type = Option<ImportSummary>)]
    pub summary: Option<Arc<ImportSummary>>,
    /// The test job started on the added nodes, if `test` was asked and any were added.
    pub job: Option<JobId>,
    /// Why the import failed.
    pub error: Option<String>,
}

struct End {
    at: DateTime<Utc>,
    since: Instant,
    state: ImportState,
    summary: Option<Arc<ImportSummary>>,
    job: Option<JobId>,
    error: Option<String>,
}

/// One background import.
pub(crate) struct Entry {
    id: String,
    source: String,
    on_conflict: OnConflict,
    started_at: DateTime<Utc>,
    bytes_total: u64,
    processed: Arc<AtomicU64>,
    end: Mutex<Option<End>>,
    ended: watch::Sender<bool>,
}

impl Entry {
    fn end(&self) -> std::sync::MutexGuard<'_, Option<End>> {
        self.end.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_running(&self) -> bool {
        self.end().is_none()
    }

    /// The state; `summary` only `with_summary` (a report can be large).
    fn view(&self, with_summary: bool) -> BackgroundImport {
        let end = self.end();
        let processed = self.processed.load(Ordering::Relaxed).min(self.bytes_total);
        let percent = match &*end {
            Some(e) if e.state == ImportState::Done => 100.0,
            _ if self.bytes_total == 0 => 0.0,
            _ => ((processed as f64 * 1000.0 / self.bytes_total as f64).floor() / 10.0).min(99.9),
        };
        BackgroundImport {
            id: self.id.clone(),
            url: import_url(&self.id),
            state: end.as_ref().map_or(ImportState::Running, |e| e.state),
            source: self.source.clone(),
            on_conflict: self.on_conflict,
            bytes_total: self.bytes_total,
            bytes_processed: processed,
            percent,
            started_at: self.started_at,
            finished_at: end.as_ref().map(|e| e.at),
            summary: end
                .as_ref()
                .filter(|_| with_summary)
                .and_then(|e| e.summary.clone()),
            job: end.as_ref().and_then(|e| e.job),
            error: end.as_ref().and_then(|e| e.error.clone()),
        }
    }
}

/// The rows a report holds (what a finished import keeps in memory).
fn report_rows(s: &ImportSummary) -> usize {
    s.added.len()
        + s.replaced.len()
        + s.duplicates.len()
        + s.conflicts.len()
        + s.errors.len()
        + s.not_inserted.len()
}

/// `503 unavailable` with `Retry-After`.
fn unavailable(detail: &str) -> ApiError {
    let mut e = ApiError::new(Kind::Unavailable, detail);
    e.0.retry_after = Some(RETRY_AFTER_SECS);
    e
}

fn import_url(id: &str) -> String {
    format!("/api/v1/imports/{id}")
}

/// The background imports of this process (in memory: a restart forgets the
/// reports; the rows the importer committed stay committed).
pub(crate) struct Registry {
    /// Oldest first.
    entries: Mutex<VecDeque<Arc<Entry>>>,
    running: Mutex<usize>,
    idle: tokio::sync::Notify,
    /// One permit per background import allowed to spool or run at once.
    slots: Arc<tokio::sync::Semaphore>,
    /// Report rows the finished imports may hold together.
    row_budget: usize,
}

impl Registry {
    /// A registry letting `max_running` imports spool or run at once, whose
    /// finished imports hold at most `row_budget` report rows together.
    pub(crate) fn new(max_running: usize, row_budget: usize) -> Self {
        Registry {
            entries: Mutex::default(),
            running: Mutex::default(),
            idle: tokio::sync::Notify::new(),
            slots: Arc::new(tokio::sync::Semaphore::new(
                max_running.min(tokio::sync::Semaphore::MAX_PERMITS),
            )),
            row_budget,
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, VecDeque<Arc<Entry>>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn running(&self) -> std::sync::MutexGuard<'_, usize> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Forgets finished imports past [`FINISHED_TTL`], beyond the newest
    /// [`FINISHED_KEPT`], and (oldest first) while their reports together hold
    /// more than the row budget.
    fn prune(&self, entries: &mut VecDeque<Arc<Entry>>) {
        entries.retain(|e| {
            e.end()
                .as_ref()
                .is_none_or(|end| end.since.elapsed() < FINISHED_TTL)
        });
        let mut finished = entries.iter().filter(|e| !e.is_running()).count();
        entries.retain(|e| {
            if finished > FINISHED_KEPT && !e.is_running() {
                finished -= 1;
                false
            } else {
                true
            }
        });
        let rows = |e: &Entry| {
            e.end()
                .as_ref()
                .and_then(|end| end.summary.as_deref())
                .map_or(0, report_rows)
        };
        let mut held: usize = entries.iter().map(|e| rows(e)).sum();
        entries.retain(|e| {
            if held > self.row_budget && !e.is_running() {
                held -= rows(e);
                false
            } else {
                true
            }
        });
    }

    fn insert(&self, e: Arc<Entry>) {
        *self.running() += 1;
        let mut entries = self.entries();
        self.prune(&mut entries);
        entries.push_back(e);
    }

    fn finish(&self, e: &Entry, end: End) {
        {
            let mut slot = e.end();
            if slot.is_some() {
                return;
            }
            *slot = Some(end);
        }
        e.ended.send_replace(true);
        {
            let mut entries = self.entries();
            self.prune(&mut entries);
        }
        let mut running = self.running();
        *running = running.saturating_sub(1);
        if *running == 0 {
            self.idle.notify_waiters();
        }
    }

    fn get(&self, id: &str) -> Option<Arc<Entry>> {
        let mut entries = self.entries();
        self.prune(&mut entries);
        entries.iter().find(|e| e.id == id).cloned()
    }

    fn newest_first(&self) -> Vec<Arc<Entry>> {
        let mut entries = self.entries();
        self.prune(&mut entries);
        entries.iter().rev().cloned().collect()
    }

    /// Waits until no background import runs.
    pub(crate) async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            if *self.running() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Marks the import failed if its task ends without reporting (a panic).
struct FinishGuard {
    st: AppState,
    entry: Arc<Entry>,
}

impl Drop for FinishGuard {
    fn drop(&mut self) {
        self.st.imports().finish(
            &self.entry,
            End {
                at: Utc::now(),
                since: Instant::now(),
                state: ImportState::Failed,
                summary: None,
                job: None,
                error: Some("the import task ended unexpectedly (see the server log)".into()),
            },
        );
    }
}

/// Reads the spool file for the importer, counting bytes; refuses to go on once
/// the server shuts down (the importer then stops after its current batch).
struct SpoolReader {
    file: std::fs::File,
    processed: Arc<AtomicU64>,
    shutdown: watch::Receiver<bool>,
    stopped: Arc<AtomicBool>,
}

impl Read for SpoolReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if *self.shutdown.borrow() {
            self.stopped.store(true, Ordering::Relaxed);
            return Err(std::io::Error::other(SHUTTING_DOWN));
        }
        let n = self.file.read(buf)?;
        self.processed.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
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
        write_out(file, buf).await?;
    }
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

/// Receives the upload into a spool file, registers the import and starts it.
async fn start_background(
    st: AppState,
    q: ImportQuery,
    req: Request,
    multipart: bool,
    limit: u64,
) -> ApiResult<Response> {
    // Refused before the body is read: a slot (bounds the spool disk and the
    // importers at once), and not during a shutdown.
    let permit = st
        .imports()
        .slots
        .clone()
        .try_acquire_owned()
        .map_err(|_| {
            unavailable(&format!(
                "{} background imports are running; try again later",
                st.options().max_background_imports
            ))
        })?;
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
    // The upload may have taken long: a shutdown since then would stop the
    // import before its first row, so nothing is started (the spool file goes).
    if *st.shutdown_rx().borrow() {
        return Err(unavailable(
            "the server is shutting down; nothing was imported",
        ));
    }
    let reader_file = tmp.reopen().map_err(|e| ApiError::internal(&e))?;
    // The path guard: dropping it (at the end, on failure, on a panic) deletes the file.
    let spooled = tmp.into_temp_path();
    let mut id = [0u8; 8];
    getrandom::fill(&mut id).map_err(|e| ApiError::internal(&e))?;
    let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let (options, test) = import_options(&q);
    let source = q
        .source
        .clone()
        .or(file_name)
        .unwrap_or_else(|| "body".into());
    let entry = Arc::new(Entry {
        id,
        source: source.clone(),
        on_conflict: options.on_conflict,
        started_at: Utc::now(),
        bytes_total: size,
        processed: Arc::new(AtomicU64::new(0)),
        end: Mutex::new(None),
        ended: watch::channel(false).0,
    });
    st.imports().insert(entry.clone());
    let view = entry.view(true);
    let stopped = Arc::new(AtomicBool::new(false));
    let reader = SpoolReader {
        file: reader_file,
        processed: entry.processed.clone(),
        shutdown: st.shutdown_rx(),
        stopped: stopped.clone(),
    };
    tracing::info!(import = %entry.id, bytes = size, %source, "background import started");
    let guard = FinishGuard {
        st: st.clone(),
        entry,
    };
    // The import is the caller's: its rows are audited under them.
    tokio::spawn(connexa_core::store::audit::carry(async move {
        let _permit = permit;
        let result = guard.st.engine().import(reader, options, test).await;
        if let Err(e) = spooled.close() {
            tracing::warn!(import = %guard.entry.id, error = %e, "cannot delete the spool file");
        }
        guard.st.forget_totals();
        let (state, summary, job, error) = match result {
            Ok((report, job)) => {
                let mut summary = ImportSummary::new(source, &report);
                if stopped.load(Ordering::Relaxed) {
                    // The refused read is no bad line: the state says why it stopped.
                    if summary
                        .errors
                        .last()
                        .is_some_and(|e| e.reason.ends_with(SHUTTING_DOWN))
                    {
                        summary.errors.pop();
                    }
                    let why = "the server shut down during the import; the rows in `summary.added` were imported";
                    (
                        ImportState::Failed,
                        Some(summary),
                        job,
                        Some(why.to_owned()),
                    )
                } else if let Some(why) = summary.failure.clone() {
                    (ImportState::Failed, Some(summary), job, Some(why))
                } else {
                    (ImportState::Done, Some(summary), job, None)
                }
            }
            Err(e) => (
                ImportState::Failed,
                None,
                None,
                Some(format!(
                    "the rows were imported, but the test job could not start: {e}"
                )),
            ),
        };
        let summary = summary.map(Arc::new);
        tracing::info!(import = %guard.entry.id, state = ?state, "background import ended");
        guard.st.imports().finish(
            &guard.entry,
            End {
                at: Utc::now(),
                since: Instant::now(),
                state,
                summary,
                job,
                error,
            },
        );
    }));
    let location = HeaderValue::from_str(&view.url).map_err(|e| ApiError::internal(&e))?;
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        axum::Json(view),
    )
        .into_response())
}

fn find(st: &AppState, id: &str) -> ApiResult<Arc<Entry>> {
    st.imports()
        .get(id)
        .ok_or_else(|| ApiError::not_found(format!("no background import with id {id:?}")))
}

/// Recent background imports, newest first: those running and the last
/// finished ones (at most 20, for at most an hour; in memory, so a restart
/// forgets them). Without their reports (`summary` is null here: a report can
/// be large; `GET /imports/{id}` has it).
#[utoipa::path(get, path = "/api/v1/imports", tag = "import",
    responses((status = 200, body = Vec<BackgroundImport>)))]
pub async fn list(State(st): State<AppState>) -> Json2<Vec<BackgroundImport>> {
    axum::Json(
        st.imports()
            .newest_first()
            .iter()
            .map(|e| e.view(false))
            .collect(),
    )
}

/// A background import: its state, progress and, once ended, its report.
#[utoipa::path(get, path = "/api/v1/imports/{id}", tag = "import",
    params(("id" = String, Path, description = "Import id (from `POST /import`)")),
    responses((status = 200, body = BackgroundImport),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn get_one(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json2<BackgroundImport>> {
    Ok(axum::Json(find(&st, &id)?.view(true)))
}

/// How often the event stream looks at the progress.
const EVENT_TICK: Duration = Duration::from_millis(250);

/// Server-Sent Events of a background import: `progress` (whenever the bytes
/// read change, at most 4 a second) and a final `done` (state done — at 100 % —
/// or failed), after which the stream ends. Data: the same as `GET /imports/{id}`.
#[utoipa::path(get, path = "/api/v1/imports/{id}/events", tag = "import",
    params(("id" = String, Path, description = "Import id")),
    responses((status = 200, description = "An event stream: `event: progress` and a final `event: done` (data: BackgroundImport)", content_type = "text/event-stream", body = Object),
              (status = 404, body = Problem, content_type = "application/problem+json")))]
pub async fn events(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let entry = find(&st, &id)?;
    let ended = entry.ended.subscribe();
    let shutdown = st.shutdown_rx();
    // `next`: no `progress` event before this instant (at most one per EVENT_TICK).
    let stream = futures::stream::unfold(
        (entry, ended, shutdown, None::<u64>, Instant::now(), false),
        |(entry, mut ended, mut shutdown, last, next, over)| async move {
            if over {
                return None;
            }
            loop {
                let view = entry.view(true);
                if view.state != ImportState::Running {
                    let e = Event::default().event("done").json_data(&view).ok()?;
                    return Some((Ok(e), (entry, ended, shutdown, last, next, true)));
                }
                let now = Instant::now();
                let changed = last != Some(view.bytes_processed);
                if changed && now >= next {
                    let seen = Some(view.bytes_processed);
                    let e = Event::default().event("progress").json_data(&view).ok()?;
                    return Some((
                        Ok(e),
                        (entry, ended, shutdown, seen, now + EVENT_TICK, false),
                    ));
                }
                // Changed: wait for the next allowed instant; else look again a tick later.
                let until = if changed { next } else { now + EVENT_TICK };
                tokio::select! {
                    () = tokio::time::sleep_until(until.into()) => {}
                    _ = ended.wait_for(|e| *e) => {}
                    _ = shutdown.wait_for(|s| *s) => return None,
                }
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
