use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use crate::domain::{Failure, Measurements};
use crate::ports::{MockProber, MockSpeedTester};

fn node() -> Node {
    let t = chrono::DateTime::<chrono::Utc>::UNIX_EPOCH;
    Node::added(
        crate::domain::NodeId(7),
        std::net::Ipv4Addr::LOCALHOST.into(),
        1723,
        "user",
        crate::domain::Secret::new("pw"),
        t,
    )
}

/// A histogram with these bounds (one series of a family without labels).
fn hist(bounds: &[f64]) -> prometheus::Histogram {
    histogram_vec("t_seconds", "test", &[], bounds)
        .expect("valid")
        .with_label_values::<&str>(&[])
}

fn snap(h: &prometheus::Histogram) -> HistogramSnapshot {
    HistogramSnapshot::of(h)
}

#[test]
fn a_value_equal_to_a_bound_is_in_that_bucket() {
    let h = hist(&[0.001, 0.01, 0.1]);
    for v in [0.001, 0.01, 0.1] {
        observe_finite(&h, v);
    }
    let s = snap(&h);
    assert_eq!(s.bounds, vec![0.001, 0.01, 0.1]);
    assert_eq!(s.cumulative, vec![1, 2, 3, 3]);
    // Just above a bound: the next bucket.
    observe_finite(&h, 0.001 + 1e-12);
    assert_eq!(snap(&h).cumulative, vec![1, 3, 4, 4]);
    // Above the last bound: +Inf only; at or below zero: the first bucket.
    observe_finite(&h, 0.1000001);
    observe_finite(&h, 0.0);
    observe_finite(&h, -3.0);
    let s = snap(&h);
    assert_eq!(s.cumulative, vec![3, 5, 6, 7]);
    assert_eq!(s.count(), 7);
}

#[test]
fn counts_are_cumulative_and_sum_adds_up() {
    let h = hist(&PROBE_BUCKETS);
    let values = [
        0.0005, 0.002, 0.002, 0.03, 0.7, 0.7, 0.7, 4.0, 59.0, 61.0, 1000.0,
    ];
    for v in values {
        observe_finite(&h, v);
    }
    let s = snap(&h);
    assert_eq!(s.bounds, PROBE_BUCKETS.to_vec());
    assert_eq!(s.cumulative.len(), PROBE_BUCKETS.len() + 1);
    // Each cumulative count = number of values <= its bound.
    for (b, c) in s.bounds.iter().zip(&s.cumulative) {
        let expected = values.iter().filter(|v| **v <= *b).count() as u64;
        assert_eq!(*c, expected, "le={b}");
    }
    assert!(s.cumulative.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!(s.count(), values.len() as u64);
    assert!(
        (s.sum - values.iter().sum::<f64>()).abs() < 1e-9,
        "{}",
        s.sum
    );
}

#[test]
fn non_finite_values_are_ignored_and_bad_bounds_refused() {
    let h = hist(&[0.5, 1.0]);
    observe_finite(&h, f64::NAN);
    observe_finite(&h, f64::INFINITY);
    observe_finite(&h, f64::NEG_INFINITY);
    let s = snap(&h);
    assert_eq!((s.count(), s.sum), (0, 0.0));
    // The crate refuses bounds that do not strictly increase, and bad names.
    assert!(histogram_vec("t", "t", &[], &[1.0, 0.5]).is_none());
    assert!(histogram_vec("t", "t", &[], &[1.0, 1.0]).is_none());
    assert!(histogram_vec("t", "t", &[], &[]).is_none());
    assert!(histogram_vec("t", "t", &[], &[1.0, f64::INFINITY]).is_none());
    assert!(histogram_vec("bad name", "t", &[], &[1.0]).is_none());
    assert!(histogram_vec("t", "t", &["le"], &[1.0]).is_none());
}

#[test]
fn concurrent_observations_are_all_counted() {
    let h = hist(&[1.0, 2.0]);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let h = h.clone();
            std::thread::spawn(move || {
                for i in 0..10_000 {
                    observe_finite(&h, f64::from((i + t) % 3));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let s = snap(&h);
    assert_eq!(s.count(), 40_000);
    // Values 0, 1, 2 each exactly; 0+1+2 per three observations.
    let ones_and_zeros = s.cumulative[0];
    assert!((13_300..=26_700).contains(&ones_and_zeros), "{s:?}");
    let expected_sum: f64 = (0..4)
        .flat_map(|t| (0..10_000).map(move |i| f64::from((i + t) % 3)))
        .sum();
    assert_eq!(s.sum, expected_sum);
}

#[test]
fn series_text_is_exact() {
    let vec = histogram_vec(
        "demo_seconds",
        "A demo.\nWith a \\ line.",
        &["route"],
        &[0.005, 0.5, 2.5],
    )
    .unwrap();
    let h = vec.with_label_values(&["/a\"b\\c\nd"]);
    h.observe(0.005);
    h.observe(0.25);
    h.observe(3.0);
    let mut e = Exposition::new();
    e.collect(vec);
    let expected = "\
# HELP demo_seconds A demo.\\nWith a \\\\ line.
# TYPE demo_seconds histogram
demo_seconds_bucket{route=\"/a\\\"b\\\\c\\nd\",le=\"0.005\"} 1
demo_seconds_bucket{route=\"/a\\\"b\\\\c\\nd\",le=\"0.5\"} 2
demo_seconds_bucket{route=\"/a\\\"b\\\\c\\nd\",le=\"2.5\"} 2
demo_seconds_bucket{route=\"/a\\\"b\\\\c\\nd\",le=\"+Inf\"} 3
demo_seconds_sum{route=\"/a\\\"b\\\\c\\nd\"} 3.255
demo_seconds_count{route=\"/a\\\"b\\\\c\\nd\"} 3
";
    assert_eq!(e.render(), expected);
    // Without labels: no braces on _sum and _count.
    let mut e = Exposition::new();
    e.collect(histogram_vec("x", "x", &[], &[1.0]).unwrap());
    // A family whose vector has no series yet is left out.
    assert_eq!(e.render(), "");
    let mut e = Exposition::new();
    let x = histogram_vec("x", "x", &[], &[1.0]).unwrap();
    x.with_label_values::<&str>(&[]);
    e.collect(x);
    assert_eq!(
        e.render(),
        "# HELP x x\n# TYPE x histogram\nx_bucket{le=\"1\"} 0\nx_bucket{le=\"+Inf\"} 0\nx_sum 0\nx_count 0\n"
    );
}

#[test]
fn families_are_sorted_escaped_and_refused_when_invalid() {
    let mut e = Exposition::new();
    e.family(
        "b_total",
        "B.",
        MetricType::Counter,
        &["node", "direction"],
        [
            (vec!["10", "up"], 5.0),
            (vec!["9", "down"], 2.0),
            // A counter never goes below 0.
            (vec!["9", "up"], -1.0),
        ],
    );
    e.value("a", "A \"quoted\" help", MetricType::Gauge, 0.25);
    // Invalid names, wrong label counts and repeated families are left out.
    e.value("bad name", "x", MetricType::Gauge, 1.0);
    e.family(
        "c",
        "C.",
        MetricType::Gauge,
        &["k"],
        [(vec!["1", "2"], 1.0)],
    );
    e.value("a", "again", MetricType::Gauge, 7.0);
    e.family(
        "empty",
        "E.",
        MetricType::Gauge,
        &["k"],
        Vec::<(Vec<&str>, f64)>::new(),
    );
    assert_eq!(
        e.render(),
        "# HELP a A \"quoted\" help\n# TYPE a gauge\na 0.25\n\
         # HELP b_total B.\n# TYPE b_total counter\n\
         b_total{direction=\"down\",node=\"9\"} 2\n\
         b_total{direction=\"up\",node=\"10\"} 5\n\
         b_total{direction=\"up\",node=\"9\"} 0\n"
    );
}

/// One sample line of the text format: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A metric family and the labels of one series (without `le`).
type SeriesKey = (String, BTreeMap<String, String>);

/// A strict parser of the subset of the text format we write: `# HELP` and
/// `# TYPE` lines, and `name{k="v",...} value` samples with escaped values.
fn parse(text: &str) -> (BTreeMap<String, (String, String)>, Vec<Sample>) {
    let mut meta: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap();
            meta.entry(name.into()).or_default().0 = help.into();
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            let e = meta.entry(name.into()).or_default();
            assert!(e.1.is_empty(), "TYPE twice for {name}");
            assert!(
                !samples.iter().any(|s: &Sample| s.name.starts_with(name)),
                "TYPE after samples of {name}"
            );
            e.1 = kind.into();
            continue;
        }
        assert!(!line.starts_with('#'), "{line}");
        let name_end = line.find(['{', ' ']).unwrap();
        let name = &line[..name_end];
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "{name}"
        );
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(r) = rest.strip_prefix('{') {
            let (l, after) = parse_labels(r);
            labels = l;
            rest = after;
        }
        let value = rest.strip_prefix(' ').unwrap();
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|e| panic!("{v:?}: {e}")),
        };
        samples.push(Sample {
            name: name.into(),
            labels,
            value,
        });
    }
    (meta, samples)
}

/// `k="v",...}` → labels and the text after `}`.
fn parse_labels(mut s: &str) -> (BTreeMap<String, String>, &str) {
    let mut labels = BTreeMap::new();
    loop {
        let eq = s.find('=').unwrap();
        let key = s[..eq].to_owned();
        assert!(s[eq + 1..].starts_with('"'));
        let body = &s[eq + 2..];
        let mut value = String::new();
        let mut it = body.char_indices();
        let end = loop {
            let (i, c) = it.next().unwrap();
            match c {
                '\\' => match it.next().unwrap().1 {
                    'n' => value.push('\n'),
                    c @ ('\\' | '"') => value.push(c),
                    other => panic!("bad escape \\{other}"),
                },
                '"' => break i,
                c => value.push(c),
            }
        };
        labels.insert(key, value);
        let after = &body[end + 1..];
        if let Some(r) = after.strip_prefix(',') {
            s = r;
        } else if let Some(r) = after.strip_prefix('}') {
            return (labels, r);
        } else {
            panic!("unexpected text {after:?}");
        }
    }
}

/// Checks every histogram in `text`: buckets in ascending `le` order ending
/// with `+Inf`, non-decreasing, `+Inf` = `_count`; returns the samples.
fn check_histograms(text: &str) -> Vec<Sample> {
    let (meta, samples) = parse(text);
    let mut series: BTreeMap<SeriesKey, Vec<(f64, f64)>> = BTreeMap::new();
    let mut counts = BTreeMap::new();
    for s in &samples {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suf| s.name.strip_suffix(suf))
            .unwrap_or(&s.name);
        let (help, kind) = meta
            .get(base)
            .unwrap_or_else(|| panic!("no HELP/TYPE for {base}"));
        assert!(!help.is_empty());
        assert_eq!(kind, "histogram");
        let mut labels = s.labels.clone();
        if s.name.ends_with("_bucket") {
            let le = labels.remove("le").expect("le");
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            series
                .entry((base.to_owned(), labels))
                .or_default()
                .push((le, s.value));
        } else if s.name.ends_with("_count") {
            counts.insert((base.to_owned(), labels), s.value);
        }
    }
    assert!(!series.is_empty());
    for (key, buckets) in &series {
        assert!(buckets.windows(2).all(|w| w[0].0 < w[1].0), "{key:?}");
        assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{key:?}");
        let (le, inf) = buckets.last().unwrap();
        assert_eq!(*le, f64::INFINITY, "{key:?}");
        assert_eq!(Some(inf), counts.get(key), "{key:?}");
    }
    assert_eq!(series.len(), counts.len());
    samples
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let found: Vec<_> = samples
        .iter()
        .filter(|s| s.name == name && s.labels == want)
        .collect();
    assert_eq!(found.len(), 1, "{name} {labels:?}");
    found[0].value
}

#[test]
fn the_parser_reads_escaped_labels_back() {
    let vec = histogram_vec("t", "help", &["a", "b"], &[1.0]).unwrap();
    vec.with_label_values(&["x\"y", "p\\q\nr"]).observe(0.5);
    let mut e = Exposition::new();
    e.collect(vec);
    let samples = check_histograms(&e.render());
    assert_eq!(samples.len(), 4);
    assert_eq!(samples[0].labels["a"], "x\"y");
    assert_eq!(samples[0].labels["b"], "p\\q\nr");
    assert_eq!(samples[0].labels["le"], "1");
    assert_eq!(
        value(&samples, "t_count", &[("a", "x\"y"), ("b", "p\\q\nr")]),
        1.0
    );
}

fn measured(connect: f64, handshake: f64, ping: Option<f64>) -> Measurements {
    Measurements {
        connect_ms: Some(connect),
        handshake_ms: Some(handshake),
        ping_ms: ping,
        ..Measurements::default()
    }
}

#[tokio::test]
async fn instrumented_prober_passes_results_through_and_records_them() {
    let ok = Outcome::success(Level::Light).with_measurements(measured(1.0, 40.0, Some(2.5)));
    let refused =
        Outcome::failed(Level::None, Failure::Refused).with_measurements(Measurements::default());
    // Auth depth that only reached Light without a failure is not "ok".
    let short = Outcome::success(Level::Light).with_measurements(measured(3.0, 7.0, Some(7.0)));
    let mut mock = MockProber::new();
    let answers = vec![
        Ok(ok.clone()),
        Ok(refused.clone()),
        Err(ProbeError::NotPermitted("no CAP_NET_RAW".into())),
        Ok(short.clone()),
    ];
    let mut answers = answers.into_iter();
    mock.expect_probe()
        .times(4)
        .returning(move |_, _| answers.next().unwrap());
    let stats = Arc::new(ProbeStats::new());
    let p: Arc<dyn Prober> = Arc::new(Instrumented::new(Arc::new(mock), Arc::clone(&stats)));
    let n = node();
    assert_eq!(p.probe(&n, ProbeDepth::Light).await, Ok(ok));
    assert_eq!(p.probe(&n, ProbeDepth::Light).await, Ok(refused));
    assert_eq!(
        p.probe(&n, ProbeDepth::Auth).await,
        Err(ProbeError::NotPermitted("no CAP_NET_RAW".into()))
    );
    assert_eq!(p.probe(&n, ProbeDepth::Auth).await, Ok(short));

    let count = |k, r| stats.duration(k, r).count();
    assert_eq!(count(ProbeKind::Light, ProbeResult::Ok), 1);
    assert_eq!(count(ProbeKind::Light, ProbeResult::Failed), 1);
    assert_eq!(count(ProbeKind::Light, ProbeResult::Error), 0);
    assert_eq!(count(ProbeKind::Auth, ProbeResult::Error), 1);
    assert_eq!(count(ProbeKind::Auth, ProbeResult::Failed), 1);
    assert_eq!(count(ProbeKind::Auth, ProbeResult::Ok), 0);
    assert_eq!(count(ProbeKind::Speed, ProbeResult::Ok), 0);

    // connect 1 ms = the 0.001 bound exactly; handshake 40 ms → le 0.05; ping 2.5 ms → le 0.0025.
    let c = stats.connect(ProbeKind::Light);
    assert_eq!((c.cumulative[0], c.count()), (1, 1));
    let h = stats.handshake(ProbeKind::Light);
    assert_eq!(h.cumulative[4], 0);
    assert_eq!(h.cumulative[5], 1);
    let pg = stats.ping(ProbeKind::Light);
    assert_eq!((pg.cumulative[0], pg.cumulative[1]), (0, 1));
    assert!((pg.sum - 0.0025).abs() < 1e-12);
    // A ping equal to the handshake time is the prober's stand-in: not counted.
    assert_eq!(stats.handshake(ProbeKind::Auth).count(), 1);
    assert_eq!(stats.connect(ProbeKind::Auth).count(), 1);
    assert_eq!(stats.ping(ProbeKind::Auth).count(), 0);

    let samples = check_histograms(&stats.render());
    let dur = "connexa_probe_duration_seconds_count";
    assert_eq!(
        value(&samples, dur, &[("depth", "light"), ("result", "ok")]),
        1.0
    );
    assert_eq!(
        value(&samples, dur, &[("depth", "light"), ("result", "failed")]),
        1.0
    );
    assert_eq!(
        value(&samples, dur, &[("depth", "auth"), ("result", "error")]),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            dur,
            &[("depth", "speed"), ("result", "cancelled")]
        ),
        0.0
    );
    assert_eq!(
        value(
            &samples,
            "connexa_probe_connect_seconds_bucket",
            &[("depth", "light"), ("le", "0.001")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            "connexa_probe_ping_seconds_sum",
            &[("depth", "light")]
        ),
        0.0025
    );
    // 12 duration series + 3 × 3 measurement series, 15 bounds + Inf + sum + count each.
    assert_eq!(samples.len(), (12 + 9) * (PROBE_BUCKETS.len() + 3));
}

#[tokio::test]
async fn instrumented_speed_tester_classifies_speed_outcomes() {
    let fast = Outcome::success(Level::Speed).with_measurements(Measurements {
        speed_down_mbps: Some(50.0),
        ping_ms: Some(12.0),
        ..Measurements::default()
    });
    let slow = Outcome::failed(
        Level::Auth,
        Failure::TooSlow {
            down_mbps: 0.2,
            threshold_mbps: 1.0,
        },
    );
    let mut mock = MockSpeedTester::new();
    let mut answers = vec![
        Ok(fast.clone()),
        Ok(slow.clone()),
        Err(ProbeError::Config("no URL".into())),
    ]
    .into_iter();
    mock.expect_measure()
        .times(3)
        .returning(move |_| answers.next().unwrap());
    let stats = Arc::new(ProbeStats::new());
    let s: Arc<dyn SpeedTester> = Arc::new(Instrumented::new(Arc::new(mock), Arc::clone(&stats)));
    let n = node();
    assert_eq!(s.measure(&n).await, Ok(fast));
    assert_eq!(s.measure(&n).await, Ok(slow));
    assert_eq!(
        s.measure(&n).await,
        Err(ProbeError::Config("no URL".into()))
    );
    for r in [ProbeResult::Ok, ProbeResult::Failed, ProbeResult::Error] {
        assert_eq!(stats.duration(ProbeKind::Speed, r).count(), 1, "{r:?}");
    }
    assert_eq!(stats.ping(ProbeKind::Speed).count(), 1);
    assert_eq!(stats.connect(ProbeKind::Speed).count(), 0);
    assert_eq!(stats.duration(ProbeKind::Light, ProbeResult::Ok).count(), 0);
}

/// A prober that never answers.
struct Hangs;

#[async_trait]
impl Prober for Hangs {
    async fn probe(&self, _: &Node, _: ProbeDepth) -> Result<Outcome, ProbeError> {
        std::future::pending().await
    }
}

#[tokio::test]
async fn a_dropped_probe_counts_as_cancelled_with_its_time() {
    let stats = Arc::new(ProbeStats::new());
    let p = Instrumented::new(Arc::new(Hangs), Arc::clone(&stats));
    let n = node();
    let r = tokio::time::timeout(Duration::from_millis(30), p.probe(&n, ProbeDepth::Light)).await;
    assert!(r.is_err());
    let c = stats.duration(ProbeKind::Light, ProbeResult::Cancelled);
    assert_eq!(c.count(), 1);
    assert!(c.sum >= 0.03, "{}", c.sum);
    // Not counted as anything else.
    let others: u64 = [ProbeResult::Ok, ProbeResult::Failed, ProbeResult::Error]
        .into_iter()
        .map(|r| stats.duration(ProbeKind::Light, r).count())
        .sum();
    assert_eq!(others, 0);
}

/// A speed tester that panics.
struct Panics;

#[async_trait]
impl SpeedTester for Panics {
    async fn measure(&self, _: &Node) -> Result<Outcome, ProbeError> {
        panic!("bug in the test code")
    }
}

#[tokio::test]
async fn a_panicking_port_counts_as_error_and_still_panics() {
    let stats = Arc::new(ProbeStats::new());
    let s = Instrumented::new(Arc::new(Panics), Arc::clone(&stats));
    let joined = tokio::spawn(async move { s.measure(&node()).await }).await;
    assert!(joined.is_err_and(|e| e.is_panic()));
    assert_eq!(
        stats.duration(ProbeKind::Speed, ProbeResult::Error).count(),
        1
    );
    assert_eq!(
        stats
            .duration(ProbeKind::Speed, ProbeResult::Cancelled)
            .count(),
        0
    );
}

#[test]
fn result_classification() {
    let k = ProbeKind::Auth;
    assert_eq!(
        ProbeResult::of(k, &Ok(Outcome::success(Level::Auth))),
        ProbeResult::Ok
    );
    assert_eq!(
        ProbeResult::of(k, &Ok(Outcome::success(Level::Speed))),
        ProbeResult::Ok
    );
    assert_eq!(
        ProbeResult::of(
            k,
            &Ok(Outcome::failed(
                Level::Light,
                Failure::AuthRejected {
                    code: Some(691),
                    message: String::new()
                }
            ))
        ),
        ProbeResult::Failed
    );
    assert_eq!(
        ProbeResult::of(ProbeKind::Light, &Err(ProbeError::Config("x".into()))),
        ProbeResult::Error
    );
    assert_eq!(ProbeKind::from(ProbeDepth::Auth), ProbeKind::Auth);
    assert_eq!(
        ProbeKind::ALL.map(ProbeKind::as_str),
        ["light", "auth", "speed"]
    );
    assert_eq!(
        ProbeResult::ALL.map(ProbeResult::as_str),
        ["ok", "failed", "error", "cancelled"]
    );
}
