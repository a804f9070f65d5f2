//! Instrumentation of the network ports, in the Prometheus text exposition
//! format 0.0.4.
//!
//! Built on the maintained [`prometheus`] crate (its histograms, data model,
//! registry and text encoder; re-exported here so front ends use the same
//! version):
//!
//! * [`ProbeStats`]: the probe latency histograms (`prometheus` histograms:
//!   atomic counters, cheap enough for every probe), shared through an `Arc`;
//!   [`HistogramSnapshot`] reads one series back.
//! * [`Instrumented`]: a decorator around any [`Prober`] or [`SpeedTester`]
//!   that records every call into a [`ProbeStats`] and passes its result
//!   through unchanged.
//! * [`Exposition`]: the families of one scrape (values read at scrape time
//!   and long-lived collectors), rendered in the text format, for front ends
//!   that export metrics of their own.
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `connexa_probe_duration_seconds` | `depth`, `result` | wall-clock time of each call |
//! | `connexa_probe_connect_seconds` | `depth` | TCP connect time reported in the outcome (`connect_ms`) |
//! | `connexa_probe_handshake_seconds` | `depth` | PPTP Start-Control-Connection request→reply time (`handshake_ms`) |
//! | `connexa_probe_ping_seconds` | `depth` | ICMP round trip (light, auth) or latency through the tunnel (speed) (`ping_ms`) |
//!
//! `depth` is `light`, `auth` or `speed` ([`ProbeKind`]); `result` is `ok`,
//! `failed`, `error` or `cancelled` ([`ProbeResult`]). Every histogram uses
//! [`PROBE_BUCKETS`] (1 ms … 60 s).
//!
//! ```
//! use std::sync::Arc;
//! use connexa_core::metrics::{Instrumented, ProbeKind, ProbeResult, ProbeStats};
//! use connexa_core::probe::{LightProber, ProbeConfig};
//!
//! let stats = Arc::new(ProbeStats::new());
//! let prober = Instrumented::new(Arc::new(LightProber::new(ProbeConfig::default())), stats.clone());
//! // ... hand `Arc::new(prober)` to `Engine::new` as its prober ...
//! # let _ = prober;
//! assert_eq!(stats.duration(ProbeKind::Light, ProbeResult::Ok).count(), 0);
//! let text = stats.render();
//! assert!(text.contains("# TYPE connexa_probe_duration_seconds histogram"));
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::domain::{Level, Measurements, Node, Outcome};
use crate::ports::{ProbeDepth, ProbeError, Prober, SpeedTester};

/// The `prometheus` crate these metrics are built on (the version front ends
/// must use to add families of their own).
pub use prometheus;

/// Upper bounds (seconds) of the probe histograms: 1 ms to 60 s, roughly
/// 1-2.5-5 per decade, covering loopback handshakes as well as speed tests.
pub const PROBE_BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The state of one histogram series at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Upper bounds, ascending (without `+Inf`).
    pub bounds: Vec<f64>,
    /// Cumulative counts: one per bound (observations `<=` it), then `+Inf`
    /// (every observation). Always `bounds.len() + 1` entries.
    pub cumulative: Vec<u64>,
    /// Sum of the observations.
    pub sum: f64,
}

impl HistogramSnapshot {
    /// The current counts of `h`.
    pub fn of(h: &prometheus::Histogram) -> Self {
        use prometheus::core::Metric as _;
        let m = h.metric();
        let hist = m.get_histogram();
        let (bounds, mut cumulative): (Vec<f64>, Vec<u64>) = hist
            .get_bucket()
            .iter()
            .map(|b| (b.upper_bound(), b.cumulative_count()))
            .unzip();
        cumulative.push(hist.get_sample_count());
        HistogramSnapshot {
            bounds,
            cumulative,
            sum: hist.get_sample_sum(),
        }
    }

    /// Number of observations (the `+Inf` bucket).
    pub fn count(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }
}

/// Records `value` in `h` unless it is not finite (NaN, ±∞), so that `_sum`
/// stays a number. A value equal to a bound is counted in that bound's
/// bucket (Prometheus `le` semantics).
pub fn observe_finite(h: &prometheus::Histogram, value: f64) {
    if value.is_finite() {
        h.observe(value);
    }
}

/// A histogram family with these label names and upper bounds (`+Inf` is
/// implicit). `None` (and an error logged) for an invalid name or label name
/// (`le` is the buckets' own), and for bounds that are empty, not finite or not strictly increasing
/// (which the crate would only refuse, with a panic, on the first series).
pub fn histogram_vec(
    name: &str,
    help: &str,
    labels: &[&str],
    bounds: &[f64],
) -> Option<prometheus::HistogramVec> {
    if bounds.is_empty()
        || !bounds.iter().all(|b| b.is_finite())
        || !bounds.windows(2).all(|w| w[0] < w[1])
        || labels.contains(&"le")
    {
        tracing::error!(
            metric = name,
            ?bounds,
            ?labels,
            "invalid histogram bounds or labels"
        );
        return None;
    }
    let opts = prometheus::HistogramOpts::new(name, help).buckets(bounds.to_vec());
    prometheus::HistogramVec::new(opts, labels)
        .inspect_err(|e| tracing::error!(metric = name, error = %e, "invalid histogram"))
        .ok()
}

/// The `# TYPE` of a metric [`Exposition::family`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MetricType {
    /// A value that only goes up.
    Counter,
    /// A value that goes up and down.
    Gauge,
}

/// The metric families of one scrape, gathered by a `prometheus::Registry`
/// (families sorted by name, series by labels, families without a series
/// left out) and encoded in the text format 0.0.4 by the `prometheus`
/// crate's `TextEncoder` (which writes `# HELP` and `# TYPE` and escapes
/// label values). Values read at scrape time (store counts, service counters)
/// become gauge or counter families with [`family`](Self::family); long-lived
/// collectors (the probe and request histograms) are added with
/// [`collect`](Self::collect).
///
/// ```
/// use connexa_core::metrics::{Exposition, MetricType};
/// let mut e = Exposition::new();
/// e.family("demo_nodes", "Nodes per status.", MetricType::Gauge, &["status"],
///     [(vec!["speed_ok"], 3.0), (vec!["say \"hi\""], 1.0)]);
/// e.value("demo_started_total", "Starts.", MetricType::Counter, 2.0);
/// let text = e.render();
/// assert_eq!(text.lines().collect::<Vec<_>>(), [
///     "# HELP demo_nodes Nodes per status.",
///     "# TYPE demo_nodes gauge",
///     r#"demo_nodes{status="say \"hi\""} 1"#,
///     r#"demo_nodes{status="speed_ok"} 3"#,
///     "# HELP demo_started_total Starts.",
///     "# TYPE demo_started_total counter",
///     "demo_started_total 2",
/// ]);
/// ```
#[derive(Debug, Default)]
pub struct Exposition {
    registry: prometheus::Registry,
}

impl Exposition {
    /// Nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// One family of gauges or counters: its label names, then each series'
    /// label values (in that order) and value. A counter value below 0 is
    /// written as 0. An invalid or repeated name, or a series with the wrong
    /// number of label values, is logged and left out. Within a family, the
    /// `prometheus` crate keys a series by its label values joined without a
    /// separator: `("ab", "c")` and `("a", "bc")` would be one series, so give
    /// label values that cannot run into each other (ids, fixed words).
    pub fn family<I, V>(
        &mut self,
        name: &str,
        help: &str,
        kind: MetricType,
        labels: &[&str],
        series: I,
    ) where
        I: IntoIterator<Item = (Vec<V>, f64)>,
        V: AsRef<str> + std::fmt::Debug,
    {
        let opts = prometheus::Opts::new(name, help);
        let built: prometheus::Result<Box<dyn prometheus::core::Collector>> = match kind {
            MetricType::Gauge => prometheus::GaugeVec::new(opts, labels).map(|vec| {
                for (values, v) in series {
                    match vec.get_metric_with_label_values(&values) {
                        Ok(g) => g.set(v),
                        Err(e) => {
                            tracing::error!(metric = name, error = %e, "metric series left out")
                        }
                    }
                }
                Box::new(vec) as Box<dyn prometheus::core::Collector>
            }),
            MetricType::Counter => prometheus::CounterVec::new(opts, labels).map(|vec| {
                for (values, v) in series {
                    match vec.get_metric_with_label_values(&values) {
                        Ok(c) => c.inc_by(v.max(0.0)),
                        Err(e) => {
                            tracing::error!(metric = name, error = %e, "metric series left out")
                        }
                    }
                }
                Box::new(vec) as Box<dyn prometheus::core::Collector>
            }),
        };
        match built.and_then(|c| self.registry.register(c)) {
            Ok(()) => {}
            Err(e) => tracing::error!(metric = name, error = %e, "metric family left out"),
        }
    }

    /// One family with a single series without labels.
    pub fn value(&mut self, name: &str, help: &str, kind: MetricType, v: f64) {
        self.family(name, help, kind, &[], [(Vec::<&str>::new(), v)]);
    }

    /// A long-lived collector's families (e.g. a [`prometheus::HistogramVec`],
    /// cloned: clones share their series).
    pub fn collect(&mut self, c: impl prometheus::core::Collector + 'static) {
        if let Err(e) = self.registry.register(Box::new(c)) {
            tracing::error!(error = %e, "metric family left out");
        }
    }

    /// The text format of every family added.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) =
            prometheus::TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out)
        {
            tracing::error!(error = %e, "cannot encode the metrics");
        }
        out
    }
}

/// Which test a probe was (the `depth` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    /// [`ProbeDepth::Light`]: the PPTP control-channel handshake.
    Light,
    /// [`ProbeDepth::Auth`]: handshake, call and MS-CHAPv2 login.
    Auth,
    /// [`SpeedTester::measure`]: login, tunnel and throughput.
    Speed,
}

impl ProbeKind {
    /// Every kind, in export order.
    pub const ALL: [ProbeKind; 3] = [ProbeKind::Light, ProbeKind::Auth, ProbeKind::Speed];

    /// The label value: `light`, `auth`, `speed`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeKind::Light => "light",
            ProbeKind::Auth => "auth",
            ProbeKind::Speed => "speed",
        }
    }

    /// The level a successful test of this kind reaches.
    pub fn aim(self) -> Level {
        match self {
            ProbeKind::Light => Level::Light,
            ProbeKind::Auth => Level::Auth,
            ProbeKind::Speed => Level::Speed,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl From<ProbeDepth> for ProbeKind {
    fn from(d: ProbeDepth) -> Self {
        match d {
            ProbeDepth::Light => ProbeKind::Light,
            ProbeDepth::Auth => ProbeKind::Auth,
        }
    }
}

/// How a probe ended (the `result` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeResult {
    /// `Ok(Outcome)` without a failure that reached the level aimed at.
    Ok,
    /// `Ok(Outcome)` with a failure (or below the level aimed at): the node failed.
    Failed,
    /// `Err(ProbeError)`, or the port panicked: the test could not be run.
    Error,
    /// The caller dropped the call before it ended (the engine's per-node time
    /// limit, a cancelled job, shutdown).
    Cancelled,
}

impl ProbeResult {
    /// Every result, in export order.
    pub const ALL: [ProbeResult; 4] = [
        ProbeResult::Ok,
        ProbeResult::Failed,
        ProbeResult::Error,
        ProbeResult::Cancelled,
    ];

    /// The label value: `ok`, `failed`, `error`, `cancelled`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeResult::Ok => "ok",
            ProbeResult::Failed => "failed",
            ProbeResult::Error => "error",
            ProbeResult::Cancelled => "cancelled",
        }
    }

    /// How a call of `kind` that returned `result` is classified.
    pub fn of(kind: ProbeKind, result: &Result<Outcome, ProbeError>) -> Self {
        match result {
            Err(_) => ProbeResult::Error,
            Ok(o) if o.failure.is_none() && o.reached >= kind.aim() => ProbeResult::Ok,
            Ok(_) => ProbeResult::Failed,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

const KINDS: usize = ProbeKind::ALL.len();
const RESULTS: usize = ProbeResult::ALL.len();

/// Name of the per-call duration histogram.
pub const PROBE_DURATION: &str = "connexa_probe_duration_seconds";
/// Name of the TCP connect time histogram.
pub const PROBE_CONNECT: &str = "connexa_probe_connect_seconds";
/// Name of the PPTP handshake time histogram.
pub const PROBE_HANDSHAKE: &str = "connexa_probe_handshake_seconds";
/// Name of the ping (round-trip) histogram.
pub const PROBE_PING: &str = "connexa_probe_ping_seconds";

/// Probe latency histograms (see the [module](self) documentation for the
/// metric names). Share one collector through an `Arc` between the
/// [`Instrumented`] ports and whatever exports it.
pub struct ProbeStats {
    families: [prometheus::HistogramVec; 4],
    duration: [[prometheus::Histogram; RESULTS]; KINDS],
    connect: [prometheus::Histogram; KINDS],
    handshake: [prometheus::Histogram; KINDS],
    ping: [prometheus::Histogram; KINDS],
}

impl Default for ProbeStats {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ProbeStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let calls: u64 = self
            .duration
            .iter()
            .flatten()
            .map(prometheus::Histogram::get_sample_count)
            .sum();
        f.debug_struct("ProbeStats")
            .field("calls", &calls)
            .finish_non_exhaustive()
    }
}

/// A histogram family of the probe metrics (static names and bounds: valid).
fn probe_family(name: &str, help: &str, labels: &[&str]) -> prometheus::HistogramVec {
    let opts = prometheus::HistogramOpts::new(name, help).buckets(PROBE_BUCKETS.to_vec());
    #[allow(clippy::expect_used)] // constant names and bounds, checked by the tests
    prometheus::HistogramVec::new(opts, labels).expect("valid probe histogram")
}

impl ProbeStats {
    /// An empty collector (every histogram with [`PROBE_BUCKETS`]; every
    /// depth and result is a series from the start, so that rates of series
    /// that have not happened yet are 0 rather than absent).
    pub fn new() -> Self {
        let duration = probe_family(
            PROBE_DURATION,
            "Wall-clock time of each probe, by depth (light, auth, speed) and result (ok, failed, error, cancelled).",
            &["depth", "result"],
        );
        let connect = probe_family(
            PROBE_CONNECT,
            "TCP connect time to the PPTP control port reported by probes.",
            &["depth"],
        );
        let handshake = probe_family(
            PROBE_HANDSHAKE,
            "PPTP Start-Control-Connection request to reply time reported by probes.",
            &["depth"],
        );
        let ping = probe_family(
            PROBE_PING,
            "ICMP echo round trip (light, auth) or latency through the tunnel (speed) reported by probes.",
            &["depth"],
        );
        let per_kind = |v: &prometheus::HistogramVec| {
            std::array::from_fn(|k| v.with_label_values(&[ProbeKind::ALL[k].as_str()]))
        };
        ProbeStats {
            duration: std::array::from_fn(|k| {
                std::array::from_fn(|r| {
                    duration.with_label_values(&[
                        ProbeKind::ALL[k].as_str(),
                        ProbeResult::ALL[r].as_str(),
                    ])
                })
            }),
            connect: per_kind(&connect),
            handshake: per_kind(&handshake),
            ping: per_kind(&ping),
            families: [duration, connect, handshake, ping],
        }
    }

    /// Records one call of `kind` that took `elapsed` and returned `result`:
    /// its duration under [`ProbeResult::of`], and the outcome's
    /// `connect_ms`, `handshake_ms` and `ping_ms` when present.
    ///
    /// A `ping_ms` equal to `handshake_ms` is the prober's stand-in when ICMP
    /// is off or unanswered, not a measurement of its own: it is not counted.
    pub fn record(&self, kind: ProbeKind, elapsed: Duration, result: &Result<Outcome, ProbeError>) {
        self.record_duration(kind, ProbeResult::of(kind, result), elapsed);
        if let Ok(o) = result {
            self.record_measurements(kind, &o.measurements);
        }
    }

    /// Records the wall-clock duration of one call.
    pub fn record_duration(&self, kind: ProbeKind, result: ProbeResult, elapsed: Duration) {
        observe_finite(
            &self.duration[kind.index()][result.index()],
            elapsed.as_secs_f64(),
        );
    }

    /// Records the latencies an outcome reports (milliseconds, exported in
    /// seconds; values that are not finite are ignored).
    pub fn record_measurements(&self, kind: ProbeKind, m: &Measurements) {
        let k = kind.index();
        let ms = |h: &prometheus::Histogram, v: f64| observe_finite(h, v / 1000.0);
        if let Some(v) = m.connect_ms {
            ms(&self.connect[k], v);
        }
        if let Some(v) = m.handshake_ms {
            ms(&self.handshake[k], v);
        }
        if let Some(v) = m.ping_ms
            && m.handshake_ms != Some(v)
        {
            ms(&self.ping[k], v);
        }
    }

    /// The duration histogram of one depth and result.
    pub fn duration(&self, kind: ProbeKind, result: ProbeResult) -> HistogramSnapshot {
        HistogramSnapshot::of(&self.duration[kind.index()][result.index()])
    }

    /// The TCP connect time histogram of one depth.
    pub fn connect(&self, kind: ProbeKind) -> HistogramSnapshot {
        HistogramSnapshot::of(&self.connect[kind.index()])
    }

    /// The PPTP handshake time histogram of one depth.
    pub fn handshake(&self, kind: ProbeKind) -> HistogramSnapshot {
        HistogramSnapshot::of(&self.handshake[kind.index()])
    }

    /// The ping histogram of one depth.
    pub fn ping(&self, kind: ProbeKind) -> HistogramSnapshot {
        HistogramSnapshot::of(&self.ping[kind.index()])
    }

    /// Adds every histogram family to `e`.
    pub fn collect_into(&self, e: &mut Exposition) {
        for f in &self.families {
            e.collect(f.clone());
        }
    }

    /// Every histogram in the text format (each family with `# HELP` and
    /// `# TYPE`, every depth and result, zeros included).
    pub fn render(&self) -> String {
        let mut e = Exposition::new();
        self.collect_into(&mut e);
        e.render()
    }
}

/// Times one call; records it as [`ProbeResult::Cancelled`] if dropped
/// unfinished ([`ProbeResult::Error`] if dropped by a panic).
struct Timer<'a> {
    stats: &'a ProbeStats,
    kind: ProbeKind,
    start: Instant,
    done: bool,
}

impl<'a> Timer<'a> {
    fn start(stats: &'a ProbeStats, kind: ProbeKind) -> Self {
        Timer {
            stats,
            kind,
            start: Instant::now(),
            done: false,
        }
    }

    fn finish(mut self, result: &Result<Outcome, ProbeError>) {
        self.done = true;
        self.stats.record(self.kind, self.start.elapsed(), result);
    }
}

impl Drop for Timer<'_> {
    fn drop(&mut self) {
        if !self.done {
            // Unwinding from a panic of the inner port: the test crashed (the
            // engine reports it as `Failure::Crashed`); otherwise the caller
            // dropped the call.
            let result = if std::thread::panicking() {
                ProbeResult::Error
            } else {
                ProbeResult::Cancelled
            };
            self.stats
                .record_duration(self.kind, result, self.start.elapsed());
        }
    }
}

/// A [`Prober`] or [`SpeedTester`] that records every call into a
/// [`ProbeStats`] and returns the inner port's result unchanged.
///
/// Works over a concrete port (`Instrumented<LightProber>`) as well as a
/// trait object (`Instrumented<dyn Prober>`).
///
/// ```
/// use std::sync::Arc;
/// use connexa_core::engine::NotAvailable;
/// use connexa_core::metrics::{Instrumented, ProbeStats};
/// use connexa_core::ports::SpeedTester;
///
/// let stats = Arc::new(ProbeStats::new());
/// let speed: Arc<dyn SpeedTester> = Arc::new(Instrumented::new(Arc::new(NotAvailable), stats));
/// # let _ = speed;
/// ```
pub struct Instrumented<T: ?Sized> {
    inner: Arc<T>,
    stats: Arc<ProbeStats>,
}

impl<T: ?Sized> Instrumented<T> {
    /// Wraps `inner`, recording into `stats`.
    pub fn new(inner: Arc<T>, stats: Arc<ProbeStats>) -> Self {
        Instrumented { inner, stats }
    }

    /// The wrapped port.
    pub fn inner(&self) -> &Arc<T> {
        &self.inner
    }

    /// The collector.
    pub fn stats(&self) -> &Arc<ProbeStats> {
        &self.stats
    }
}

impl<T: ?Sized> Clone for Instrumented<T> {
    fn clone(&self) -> Self {
        Instrumented {
            inner: Arc::clone(&self.inner),
            stats: Arc::clone(&self.stats),
        }
    }
}

impl<T: ?Sized> fmt::Debug for Instrumented<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Instrumented")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl<T: Prober + ?Sized> Prober for Instrumented<T> {
    async fn probe(&self, node: &Node, depth: ProbeDepth) -> Result<Outcome, ProbeError> {
        let timer = Timer::start(&self.stats, depth.into());
        let result = self.inner.probe(node, depth).await;
        timer.finish(&result);
        result
    }
}

#[async_trait]
impl<T: SpeedTester + ?Sized> SpeedTester for Instrumented<T> {
    async fn measure(&self, node: &Node) -> Result<Outcome, ProbeError> {
        let timer = Timer::start(&self.stats, ProbeKind::Speed);
        let result = self.inner.measure(node).await;
        timer.finish(&result);
        result
    }
}

#[cfg(test)]
mod tests;
