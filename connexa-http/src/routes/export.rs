//! `/api/v1/export`: the matching nodes as a file, streamed.

use std::io::Write;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use bytes::Bytes;
use connexa_core::domain::Secret;
use connexa_core::export::ExportFormat;
use connexa_core::ops;
use tokio::sync::mpsc;

use super::filter_query;
use crate::AppState;
use crate::extract::Query;
use crate::problem::{ApiError, ApiResult, Problem};
use crate::roles::Caller;

filter_query! {
    /// `GET /export` parameters: the list's filter, a format and a file name.
    ExportQuery {
        /// txt, csv, json, pptp, socks or socks-colon (default csv).
        format: Option<String>,
        /// The download's file name (letters, digits, `.`, `_`, `-`; no path).
        filename: Option<String>,
    }
}

/// Accepts `[A-Za-z0-9._-]{1,100}` not starting with a dot: no path, no
/// separators, nothing a browser or a shell would interpret.
fn safe_filename(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A writer that sends 64 KiB chunks down a channel (from a blocking thread).
struct ChunkWriter {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

impl Write for ChunkWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= 64 << 10 {
            self.flush()?;
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buf));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))
    }
}

/// The nodes matching the filter in a node-list format, as a download.
#[utoipa::path(get, path = "/api/v1/export", tag = "export", params(ExportQuery),
    responses((status = 200, description = "The file: passwords in clear for an admin token (that is what an export is for), `***` for the other roles",
               content((String = "text/csv"), (String = "text/plain"), (String = "application/json"))),
              (status = 400, body = Problem, content_type = "application/problem+json")))]
pub async fn export(
    State(st): State<AppState>,
    caller: Caller,
    Query(q): Query<ExportQuery>,
) -> ApiResult<Response> {
    let filter = q.filter()?;
    let format: ExportFormat =
        q.format.as_deref().unwrap_or("csv").parse().map_err(
            |e: connexa_core::export::UnknownFormat| ApiError::bad_request(e.to_string()),
        )?;
    let filename = match q.filename {
        Some(n) if safe_filename(&n) => n,
        Some(n) => {
            return Err(ApiError::bad_request(format!(
                "filename {n:?}: use 1 to 100 letters, digits, '.', '_' or '-', not starting with '.'"
            )));
        }
        None => format!("connexa-nodes.{}", format.extension()),
    };
    // Read first (errors become a problem response), then write on a blocking
    // thread that streams 64 KiB chunks to the client.
    let mut nodes = ops::all_matching(st.store().as_ref(), &filter).await?;
    if !caller.0.sees_secrets() {
        // Below admin, an export carries `***` where the passwords were.
        for n in &mut nodes {
            n.password = Secret::new(n.password.masked());
            if let Some(s) = &mut n.service {
                s.password = Secret::new(s.password.masked());
            }
        }
    }
    let (tx, mut rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    tokio::task::spawn_blocking(move || {
        let mut w = ChunkWriter {
            tx: tx.clone(),
            buf: Vec::new(),
        };
        let r = connexa_core::export::write(format, &nodes, &mut w)
            .map_err(|e| e.to_string())
            .and_then(|_| w.flush().map_err(|e| e.to_string()));
        if let Err(e) = r {
            tracing::debug!(error = %e, "export stopped midway");
            // Breaks the response body, so the client sees an incomplete download.
            let _ = tx.blocking_send(Err(std::io::Error::other(e)));
        }
    });
    let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let content_type = match format {
        ExportFormat::Csv => "text/csv; charset=utf-8",
        ExportFormat::Json => "application/json",
        _ => "text/plain; charset=utf-8",
    };
    let mut res = Response::new(Body::from_stream(stream));
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    #[test]
    fn file_names_cannot_carry_paths() {
        for ok in ["nodes.csv", "a-b_c.1.txt"] {
            assert!(super::safe_filename(ok), "{ok}");
        }
        for bad in [
            "",
            "../etc/passwd",
            "..",
            ".hidden",
            "a/b",
            "a\\b",
            "a\"b",
            "x\r\nSet-Cookie: a",
            "é.csv",
            &"a".repeat(101),
        ] {
            assert!(!super::safe_filename(bad), "{bad:?}");
        }
    }
}
