//! `/metrics` in the Prometheus text format: nodes per status, services, job
//! progress, HTTP request counts and latencies, and (when the state carries a
//! [`ProbeStats`](connexa_core::metrics::ProbeStats)) the probe latency
//! histograms, and (when it carries a
//! [`SocksLauncher`](connexa_core::socks::SocksLauncher)) the SOCKS5 service
//! counters. The families are built and encoded with the `prometheus` crate
//! through [`connexa_core::metrics::Exposition`].

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use connexa_core::domain::Status;
use connexa_core::metrics::{Exposition, MetricType, histogram_vec, observe_finite, prometheus};

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
    /// The family (kept for scrapes) and its one series (no labels).
    duration: Option<(prometheus::HistogramVec, prometheus::Histogram)>,
}

impl Default for Metrics {
    fn default() -> Self {
        let duration = histogram_vec(
            REQUEST_DURATION,
            "Time to the response head.",
            &[],
            &HTTP_BUCKETS,
        )
        .map(|v| {
            let h = v.with_label_values::<&str>(&[]);
            (v, h)
        });
        Metrics {
            requests: Mutex::new(BTreeMap::new()),
            duration,
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
        if let Some((_, h)) = &self.duration {
            observe_finite(h, secs);
        }
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
    let mut e = Exposition::new();
    let n = |v: u64| v as f64;
    e.family(
        "connexa_nodes",
        "Nodes per status.",
        MetricType::Gauge,
        &["status"],
        Status::ALL.map(|s| {
            let c = counts.iter().find(|(c, _)| *c == s).map_or(0, |(_, n)| *n);
            (vec![s.as_str()], n(c))
        }),
    );
    let services: u64 = counts
        .iter()
        .filter(|(s, _)| matches!(s, Status::Online | Status::Offline))
        .map(|(_, n)| n)
        .sum();
    e.value(
        "connexa_services_running",
        "Nodes with a SOCKS5 service (online or offline).",
        MetricType::Gauge,
        n(services),
    );
    let waiting = connexa_core::ops::services_waiting(store.as_ref()).await?;
    e.value(
        "connexa_services_waiting",
        "speed_ok nodes whose wanted service has not come up (not reconciled yet, or failing to start).",
        MetricType::Gauge,
        n(waiting),
    );
    let workers = store.workers(chrono::Utc::now()).await?;
    e.value(
        "connexa_workers_alive",
        "Registered worker processes whose heartbeat has not expired.",
        MetricType::Gauge,
        workers.iter().filter(|w| w.alive).count() as f64,
    );
    let worker = |w: &connexa_core::ports::WorkerView| vec![w.name.clone(), w.alive.to_string()];
    e.family(
        "connexa_worker_items_in_flight",
        "Job items each registered worker holds running.",
        MetricType::Gauge,
        &["worker", "alive"],
        workers.iter().map(|w| (worker(w), n(w.items_in_flight))),
    );
    e.family(
        "connexa_worker_services_held",
        "Wanted services placed on each registered worker (PostgreSQL placement).",
        MetricType::Gauge,
        &["worker", "alive"],
        workers.iter().map(|w| (worker(w), n(w.services_held))),
    );
    let mut items = Vec::new();
    let mut ratios = Vec::new();
    for job in store.jobs(20).await? {
        let p = store.progress(job.id).await?;
        let (id, kind) = (job.id.to_string(), job.kind.to_string());
        for (state, v) in [
            ("pending", p.pending),
            ("running", p.running),
            ("ok", p.ok),
            ("failed", p.failed),
            ("timed_out", p.timed_out),
            ("cancelled", p.cancelled),
        ] {
            items.push((vec![id.clone(), kind.clone(), state.to_owned()], n(v)));
        }
        ratios.push((vec![id, kind, job.state.to_string()], p.percent() / 100.0));
    }
    e.family(
        "connexa_job_items",
        "Items of recent jobs per state.",
        MetricType::Gauge,
        &["job", "kind", "state"],
        items,
    );
    e.family(
        "connexa_job_progress_ratio",
        "Committed fraction of recent jobs (0..1).",
        MetricType::Gauge,
        &["job", "kind", "job_state"],
        ratios,
    );
    let requests =
        st.0.metrics
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
    e.family(
        "connexa_http_requests_total",
        "HTTP requests per method, route and status.",
        MetricType::Counter,
        &["method", "route", "status"],
        requests
            .into_iter()
            .map(|((method, route, status), v)| (vec![method, route, status.to_string()], n(v))),
    );
    if let Some((family, _)) = &st.0.metrics.duration {
        e.collect(family.clone());
    }
    if let Some(probes) = st.probe_stats() {
        probes.collect_into(&mut e);
    }
    if let Some(socks) = st.socks_launcher() {
        socks.collect_into(&mut e);
    }
    let mut res = e.render().into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(res)
}
