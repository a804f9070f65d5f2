//! Instrumentation of the network ports, in the Prometheus text exposition
//! format 0.0.4.
//!
//! * [`Histogram`]: fixed buckets, lock-free (atomic counters), cheap enough
//!   for every probe and every HTTP request; [`HistogramSnapshot`] renders one
//!   series (`_bucket{le=...}` cumulative, `+Inf`, `_sum`, `_count`).
//! * [`ProbeStats`]: the probe latency histograms, shared through an `Arc`.
//! * [`Instrumented`]: a decorator around any [`Prober`] or [`SpeedTester`]
//!   that records every call into a [`ProbeStats`] and passes its result
//!   through unchanged.
//! * [`write_header`], [`escape_label_value`], [`format_value`]: the pieces of
//!   the text format, for front ends that export metrics of their own.
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

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::domain::{Level, Measurements, Node, Outcome};
use crate::ports::{ProbeDepth, ProbeError, Prober, SpeedTester};

/// Upper bounds (seconds) of the probe histograms: 1 ms to 60 s, roughly
/// 1-2.5-5 per decade, covering loopback handshakes as well as speed tests.
pub const PROBE_BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// A histogram with fixed upper bounds, safe to share between threads.
///
/// An observation `v` is counted in the first bucket whose bound is `>= v`
/// (Prometheus `le` semantics: a value equal to a bound belongs to that
/// bucket), or in the implicit `+Inf` bucket above the last bound.
/// Non-finite observations (NaN, ±∞) are ignored, so `_sum` stays a number.
///
/// Recording is lock-free (one `fetch_add` on the bucket, a compare-and-swap on
/// the sum). A [`snapshot`](Self::snapshot) taken while other threads record
/// is consistent in its counts (`_count` is the sum of the buckets); its
/// `_sum` may miss observations that were being recorded at that instant.
///
/// ```
/// use connexa_core::metrics::Histogram;
/// let h = Histogram::new(&[0.1, 1.0]);
/// h.observe(0.1); // == bound: in the 0.1 bucket
/// h.observe(0.5);
/// h.observe(7.0); // above every bound: +Inf only
/// let s = h.snapshot();
/// assert_eq!(s.cumulative, vec![1, 2, 3]);
/// assert_eq!(s.count(), 3);
/// ```
pub struct Histogram {
    bounds: Box<[f64]>,
    /// Non-cumulative count per bucket; the last one is the `+Inf` overflow.
    counts: Box<[AtomicU64]>,
    /// The sum of observations, as `f64` bits.
    sum_bits: AtomicU64,
}

impl Histogram {
    /// A histogram with these upper bounds. Non-finite bounds are dropped and
    /// the rest sorted and de-duplicated (`+Inf` is always implicit).
    pub fn new(bounds: &[f64]) -> Self {
        let mut b: Vec<f64> = bounds.iter().copied().filter(|v| v.is_finite()).collect();
        b.sort_by(f64::total_cmp);
        b.dedup();
        let counts = (0..=b.len()).map(|_| AtomicU64::new(0)).collect();
        Histogram {
            bounds: b.into_boxed_slice(),
            counts,
            sum_bits: AtomicU64::new(0f64.to_bits()),
        }
    }

    /// A histogram with [`PROBE_BUCKETS`].
    pub fn for_probes() -> Self {
        Self::new(&PROBE_BUCKETS)
    }

    /// The upper bounds, ascending (without `+Inf`).
    pub fn bounds(&self) -> &[f64] {
        &self.bounds
    }

    /// Records one value. Non-finite values are ignored.
    pub fn observe(&self, value: f64) {
        if !value.is_finite() {
            return;
        }
        // Index of the first bound >= value; `len` means the +Inf bucket.
        let i = self.bounds.partition_point(|b| *b < value);
        if let Some(c) = self.counts.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let _ = self
            .sum_bits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + value).to_bits())
            });
    }

    /// Records a duration, in seconds.
    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    /// The current counts (cumulative, as exported) and sum.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut acc = 0u64;
        let cumulative = self
            .counts
            .iter()
            .map(|c| {
                acc = acc.saturating_add(c.load(Ordering::Relaxed));
                acc
            })
            .collect();
        HistogramSnapshot {
            bounds: self.bounds.to_vec(),
            cumulative,
            sum: f64::from_bits(self.sum_bits.load(Ordering::Relaxed)),
        }
    }
}

impl fmt::Debug for Histogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.snapshot();
        f.debug_struct("Histogram")
            .field("bounds", &self.bounds)
            .field("count", &s.count())
            .field("sum", &s.sum)
            .finish()
    }
}

/// The state of a [`Histogram`] at one instant.
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
    /// Number of observations (the `+Inf` bucket).
    pub fn count(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }

    /// Appends one series in the text format: `NAME_bucket{LABELS,le="..."}`
    /// per bound and for `+Inf`, then `NAME_sum{LABELS}` and
    /// `NAME_count{LABELS}`. Label values are escaped; write the `# HELP` and
    /// `# TYPE` lines once per metric first ([`write_header`]).
    pub fn write_series(&self, out: &mut String, name: &str, labels: &[(&str, &str)]) {
        let les = self
            .bounds
            .iter()
            .map(|b| format_value(*b))
            .chain(std::iter::once("+Inf".to_owned()));
        for (le, n) in les.zip(&self.cumulative) {
            let _ = write!(out, "{name}_bucket");
            write_labels(out, labels, Some(("le", &le)));
            let _ = writeln!(out, " {n}");
        }
        let _ = write!(out, "{name}_sum");
        write_labels(out, labels, None);
        let _ = writeln!(out, " {}", format_value(self.sum));
        let _ = write!(out, "{name}_count");
        write_labels(out, labels, None);
        let _ = writeln!(out, " {}", self.count());
    }
}

/// The `# TYPE` of a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MetricType {
    /// A value that only goes up.
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// Buckets, sum and count.
    Histogram,
}

impl MetricType {
    /// The name used on the `# TYPE` line.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Histogram => "histogram",
        }
    }
}

/// Appends `# HELP NAME HELP` (escaped) and `# TYPE NAME TYPE`.
pub fn write_header(out: &mut String, name: &str, help: &str, kind: MetricType) {
    let help = help.replace('\\', "\\\\").replace('\n', "\\n");
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {}", kind.as_str());
}

/// Escapes a label value for the text format: backslash, double quote and
/// line feed become `\\`, `\"` and `\n`.
pub fn escape_label_value(value: &str) -> Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return Cow::Borrowed(value);
    }
    let mut s = String::with_capacity(value.len() + 2);
    for c in value.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    Cow::Owned(s)
}

/// A sample value or `le` bound as the text format writes it: `+Inf`, `-Inf`,
/// `NaN`, or the shortest decimal that reads back as the same `f64`.
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        v.to_string()
    }
}

/// Appends `{a="x",b="y",le="z"}` (nothing when there is no label at all).
fn write_labels(out: &mut String, labels: &[(&str, &str)], extra: Option<(&str, &str)>) {
    if labels.is_empty() && extra.is_none() {
        return;
    }
    out.push('{');
    for (i, (k, v)) in labels.iter().copied().chain(extra).enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{k}=\"{}\"", escape_label_value(v));
    }
    out.push('}');
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
    duration: [[Histogram; RESULTS]; KINDS],
    connect: [Histogram; KINDS],
    handshake: [Histogram; KINDS],
    ping: [Histogram; KINDS],
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
            .map(|h| h.snapshot().count())
            .sum();
        f.debug_struct("ProbeStats")
            .field("calls", &calls)
            .finish_non_exhaustive()
    }
}

impl ProbeStats {
    /// An empty collector (every histogram with [`PROBE_BUCKETS`]).
    pub fn new() -> Self {
        let per_kind = || std::array::from_fn(|_| Histogram::for_probes());
        ProbeStats {
            duration: std::array::from_fn(|_| std::array::from_fn(|_| Histogram::for_probes())),
            connect: per_kind(),
            handshake: per_kind(),
            ping: per_kind(),
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
        self.duration[kind.index()][result.index()].observe_duration(elapsed);
    }

    /// Records the latencies an outcome reports (milliseconds, exported in seconds).
    pub fn record_measurements(&self, kind: ProbeKind, m: &Measurements) {
        let k = kind.index();
        let ms = |h: &Histogram, v: f64| h.observe(v / 1000.0);
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
        self.duration[kind.index()][result.index()].snapshot()
    }

    /// The TCP connect time histogram of one depth.
    pub fn connect(&self, kind: ProbeKind) -> HistogramSnapshot {
        self.connect[kind.index()].snapshot()
    }

    /// The PPTP handshake time histogram of one depth.
    pub fn handshake(&self, kind: ProbeKind) -> HistogramSnapshot {
        self.handshake[kind.index()].snapshot()
    }

    /// The ping histogram of one depth.
    pub fn ping(&self, kind: ProbeKind) -> HistogramSnapshot {
        self.ping[kind.index()].snapshot()
    }

    /// Appends every histogram in the text format (each with `# HELP` and
    /// `# TYPE`; every depth and result, zeros included, so that rates of
    /// series that have not happened yet are 0 rather than absent).
    pub fn write_prometheus(&self, out: &mut String) {
        write_header(
            out,
            PROBE_DURATION,
            "Wall-clock time of each probe, by depth (light, auth, speed) and result (ok, failed, error, cancelled).",
            MetricType::Histogram,
        );
        for kind in ProbeKind::ALL {
            for result in ProbeResult::ALL {
                self.duration(kind, result).write_series(
                    out,
                    PROBE_DURATION,
                    &[("depth", kind.as_str()), ("result", result.as_str())],
                );
            }
        }
        let per_kind: [(&str, &str, &[Histogram; KINDS]); 3] = [
            (
                PROBE_CONNECT,
                "TCP connect time to the PPTP control port reported by probes.",
                &self.connect,
            ),
            (
                PROBE_HANDSHAKE,
                "PPTP Start-Control-Connection request to reply time reported by probes.",
                &self.handshake,
            ),
            (
                PROBE_PING,
                "ICMP echo round trip (light, auth) or latency through the tunnel (speed) reported by probes.",
                &self.ping,
            ),
        ];
        for (name, help, hs) in per_kind {
            write_header(out, name, help, MetricType::Histogram);
            for kind in ProbeKind::ALL {
                hs[kind.index()]
                    .snapshot()
                    .write_series(out, name, &[("depth", kind.as_str())]);
            }
        }
    }

    /// Every histogram in the text format ([`write_prometheus`](Self::write_prometheus)).
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.write_prometheus(&mut out);
        out
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
