//! `/api/v1/import`: a node list in the body (any text format the importer
//! reads) or as the file of a `multipart/form-data` form, streamed into the
//! store with bounded memory; optionally followed by a test job on the added nodes.

use std::io::Read;

use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::header;
use bytes::Bytes;
use connexa_core::engine::JobOptions;
use connexa_core::import::{ImportOptions, OnConflict};
use connexa_core::ops::ImportSummary;
use connexa_core::ports::JobId;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use utoipa::{IntoParams, ToSchema};

use super::jobs::TestKind;
use super::nodes::Json2;
use crate::AppState;
use crate::extract::Query;
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
    seen: &std::sync::atomic::AtomicU64,
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
        seen.store(total, std::sync::atomic::Ordering::Relaxed);
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
/// `multipart/form-data` form. The body is streamed; the report comes back at the end.
#[utoipa::path(post, path = "/api/v1/import", tag = "import", params(ImportQuery),
    request_body(content = String, description = "The node list (any format the importer reads)", content_type = "text/plain"),
    responses((status = 200, body = ImportResult),
              (status = 400, body = Problem, content_type = "application/problem+json"),
              (status = 413, description = "Larger than the import limit; `import` says what went in before", body = Problem, content_type = "application/problem+json")))]
pub async fn import(
    State(st): State<AppState>,
    Query(q): Query<ImportQuery>,
    req: Request,
) -> ApiResult<Json2<ImportResult>> {
    let limit = st.options().max_import_bytes;
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
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
    let options = ImportOptions {
        on_conflict: q.on_conflict.unwrap_or_default(),
        ..ImportOptions::default()
    };
    let test = q.test.map(|k| (k.into(), JobOptions::default()));
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(16);
    let body_len = std::sync::atomic::AtomicU64::new(0);
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
        let field = loop {
            match mp.next_field().await {
                Ok(Some(f)) if f.name() == Some("file") || f.file_name().is_some() => break f,
                Ok(Some(_)) => continue,
                Ok(None) => {
                    return Err(ApiError::bad_request(
                        "multipart: no \"file\" field in the form",
                    ));
                }
                Err(e) => return Err(ApiError::bad_request(format!("multipart: {e}"))),
            }
        };
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
        && body_len.load(std::sync::atomic::Ordering::Relaxed) == 0
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
