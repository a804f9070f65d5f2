//! `/metrics` in the Prometheus text format: nodes per status, services, job
//! progress, HTTP request counts and latencies, and (when the state carries a
//! [`ProbeStats`](connexa_core::metrics::ProbeStats)) the probe latency
//! histograms, and (when it carries a
//! [`SocksLauncher`](connexa_core::socks::SocksLauncher)) the SOCKS5 service
//! counters. Histograms and escaping come from [`connexa_core::metrics`].

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use connexa_core::domain::Status;
use connexa_core::metrics::{
    Histogram, MetricType, escape_label_value, format_value, write_header,
};

use crate::AppState;
use crate::problem::ApiResult;

/// Upper bounds (seconds) of `connexa_http_request_duration_seconds`.
const HTTP_BUCKETS: [f64; 11] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

const REQUEST_DURATION: &str = "connexa_http_request_duration_seconds";

#[derive(Debug)]
pub(crate) struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Mutex::new(BTreeMap::new()),
            duration: Histogram::new(&HTTP_BUCKETS),
        }
    }
}

impl Metrics {
    fn record(&self, method: &str, route: &str, status: u16, secs: f64) {
        *self
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((method.to_owned(), route.to_owned(), status))
            .or_insert(0) += 1;
        self.duration.observe(secs);
    }
}

/// Middleware: counts requests per method, route template and status.
pub(crate) async fn track(State(st): State<AppState>, req: Request, next: Next) -> Response {
    // Extension methods (anyone can send `FOO /`, before authentication)
    // would each add a series forever: they are counted as `other`.
    let method = match *req.method() {
        Method::GET
        | Method::HEAD
        | Method::POST
        | Method::PUT
        | Method::PATCH
        | Method::DELETE
        | Method::OPTIONS
        | Method::CONNECT
        | Method::TRACE => req.method().as_str(),
        _ => "other",
    }
    .to_owned();
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
    write_header(
        &mut out,
        "connexa_nodes",
        "Nodes per status.",
        MetricType::Gauge,
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
    write_header(
        &mut out,
        "connexa_services_running",
        "Nodes with a SOCKS5 service (online or offline).",
        MetricType::Gauge,
    );
    let _ = writeln!(out, "connexa_services_running {services}");
    let waiting = connexa_core::ops::services_waiting(store.as_ref()).await?;
    write_header(
        &mut out,
        "connexa_services_waiting",
        "speed_ok nodes whose wanted service has not come up (not reconciled yet, or failing to start).",
        MetricType::Gauge,
    );
    let _ = writeln!(out, "connexa_services_waiting {waiting}");
    let workers = store.workers(chrono::Utc::now()).await?;
    write_header(
        &mut out,
        "connexa_workers_alive",
        "Registered worker processes whose heartbeat has not expired.",
        MetricType::Gauge,
    );
    let _ = writeln!(
        out,
        "connexa_workers_alive {}",
        workers.iter().filter(|w| w.alive).count()
    );
    write_header(
        &mut out,
        "connexa_worker_items_in_flight",
        "Job items each registered worker holds running.",
        MetricType::Gauge,
    );
    for w in &workers {
        let _ = writeln!(
            out,
            "connexa_worker_items_in_flight{{worker=\"{}\",alive=\"{}\"}} {}",
            escape_label_value(&w.name),
            w.alive,
            w.items_in_flight
        );
    }
    write_header(
        &mut out,
        "connexa_worker_services_held",
        "Wanted services placed on each registered worker (PostgreSQL placement).",
        MetricType::Gauge,
    );
    for w in &workers {
        let _ = writeln!(
            out,
            "connexa_worker_services_held{{worker=\"{}\",alive=\"{}\"}} {}",
            escape_label_value(&w.name),
            w.alive,
            w.services_held
        );
    }
    write_header(
        &mut out,
        "connexa_job_items",
        "Items of recent jobs per state.",
        MetricType::Gauge,
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
            format_value(p.percent() / 100.0)
        );
    }
    write_header(
        &mut out,
        "connexa_job_progress_ratio",
        "Committed fraction of recent jobs (0..1).",
        MetricType::Gauge,
    );
    out.push_str(&ratio);
    write_header(
        &mut out,
        "connexa_http_requests_total",
        "HTTP requests per method, route and status.",
        MetricType::Counter,
    );
    let requests =
        st.0.metrics
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
    for ((method, route, status), n) in &requests {
        let _ = writeln!(
            out,
            "connexa_http_requests_total{{method=\"{}\",route=\"{}\",status=\"{status}\"}} {n}",
            escape_label_value(method),
            escape_label_value(route)
        );
    }
    write_header(
        &mut out,
        REQUEST_DURATION,
        "Time to the response head.",
        MetricType::Histogram,
    );
    st.0.metrics
        .duration
        .snapshot()
        .write_series(&mut out, REQUEST_DURATION, &[]);
    if let Some(probes) = st.probe_stats() {
        probes.write_prometheus(&mut out);
    }
    if let Some(socks) = st.socks_launcher() {
        socks.write_prometheus(&mut out);
    }
    let mut res = out.into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(res)
}
