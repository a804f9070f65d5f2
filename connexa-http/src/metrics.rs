//! `/metrics` in the Prometheus text format: nodes per status, services, job
//! progress, and HTTP request counts and latencies.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use connexa_core::domain::Status;

use crate::AppState;
use crate::problem::ApiResult;

const BUCKETS: [f64; 11] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Debug, Default)]
pub(crate) struct Metrics {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    requests: BTreeMap<(String, String, u16), u64>,
    /// Cumulative counts per bucket, then +Inf; sum; count.
    buckets: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Metrics {
    fn record(&self, method: &str, route: &str, status: u16, secs: f64) {
        let mut m = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        *m.requests
            .entry((method.to_owned(), route.to_owned(), status))
            .or_insert(0) += 1;
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                m.buckets[i] += 1;
            }
        }
        m.sum += secs;
        m.count += 1;
    }
}

/// Middleware: counts requests per method, route template and status.
pub(crate) async fn track(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let method = req.method().as_str().to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let t0 = Instant::now();
    let res = next.run(req).await;
    st.0.metrics.record(
        &method,
        &route,
        res.status().as_u16(),
        t0.elapsed().as_secs_f64(),
    );
    res
}

/// A router serving only `/metrics`, without authentication, for a separate
/// bind address reachable by the monitoring system only (`--metrics-listen`).
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// `GET /metrics`.
#[utoipa::path(get, path = "/metrics", tag = "meta",
    responses((status = 200, description = "Prometheus text format 0.0.4", body = String, content_type = "text/plain"),
              (status = 401, description = "No valid token", body = crate::problem::Problem, content_type = "application/problem+json")))]
pub async fn metrics(State(st): State<AppState>) -> ApiResult<Response> {
    let store = st.store();
    let counts = store.counts().await?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP connexa_nodes Nodes per status.\n# TYPE connexa_nodes gauge"
    );
    for s in Status::ALL {
        let n = counts
            .iter()
            .find(|(c, _)| *c == s)
            .map(|(_, n)| *n)
            .unwrap_or(0);
        let _ = writeln!(out, "connexa_nodes{{status=\"{s}\"}} {n}");
    }
    let services: u64 = counts
        .iter()
        .filter(|(s, _)| matches!(s, Status::Online | Status::Offline))
        .map(|(_, n)| n)
        .sum();
    let _ = writeln!(
        out,
        "# HELP connexa_services_running Nodes with a SOCKS5 service (online or offline).\n# TYPE connexa_services_running gauge\nconnexa_services_running {services}"
    );
    let _ = writeln!(
        out,
        "# HELP connexa_job_items Items of recent jobs per state.\n# TYPE connexa_job_items gauge"
    );
    let mut ratio = String::new();
    for job in store.jobs(20).await? {
        let p = store.progress(job.id).await?;
        for (state, n) in [
            ("pending", p.pending),
            ("running", p.running),
            ("ok", p.ok),
            ("failed", p.failed),
            ("timed_out", p.timed_out),
            ("cancelled", p.cancelled),
        ] {
            let _ = writeln!(
                out,
                "connexa_job_items{{job=\"{}\",kind=\"{}\",state=\"{state}\"}} {n}",
                job.id, job.kind
            );
        }
        let _ = writeln!(
            ratio,
            "connexa_job_progress_ratio{{job=\"{}\",kind=\"{}\",job_state=\"{}\"}} {}",
            job.id,
            job.kind,
            job.state,
            p.percent() / 100.0
        );
    }
    let _ = writeln!(
        out,
        "# HELP connexa_job_progress_ratio Committed fraction of recent jobs (0..1).\n# TYPE connexa_job_progress_ratio gauge\n{}",
        ratio.trim_end()
    );
    let m =
        st.0.metrics
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
    let _ = writeln!(
        out,
        "# HELP connexa_http_requests_total HTTP requests per method, route and status.\n# TYPE connexa_http_requests_total counter"
    );
    for ((method, route, status), n) in &m.requests {
        let _ = writeln!(
            out,
            "connexa_http_requests_total{{method=\"{method}\",route=\"{}\",status=\"{status}\"}} {n}",
            route.replace('\\', "\\\\").replace('"', "\\\"")
        );
    }
    let _ = writeln!(
        out,
        "# HELP connexa_http_request_duration_seconds Time to the response head.\n# TYPE connexa_http_request_duration_seconds histogram"
    );
    for (b, n) in BUCKETS.iter().zip(m.buckets) {
        let _ = writeln!(
            out,
            "connexa_http_request_duration_seconds_bucket{{le=\"{b}\"}} {n}"
        );
    }
    let _ = writeln!(
        out,
        "connexa_http_request_duration_seconds_bucket{{le=\"+Inf\"}} {}\nconnexa_http_request_duration_seconds_sum {}\nconnexa_http_request_duration_seconds_count {}",
        m.count, m.sum, m.count
    );
    drop(m);
    let mut res = out.into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(res)
}
