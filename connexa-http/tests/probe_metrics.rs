//! Probe latency histograms on `/metrics`, end to end: the engine is built the
//! way the binary builds it (`NetworkPorts::engine_with_stats`), a light job
//! runs real probes against real loopback sockets — a simulated PPTP node
//! (connexa-core's `sim`) and a closed port on 127.0.0.1 — and `/metrics`
//! must show one `ok` and one `failed` light probe in well-formed histograms.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::http::{Method, StatusCode};
use common::Api;
use connexa_core::config::Config;
use connexa_core::domain::{NodeId, Status};
use connexa_core::metrics::ProbeStats;
use connexa_core::ports::{JobId, NodeStore};
use connexa_core::runtime::NetworkPorts;
use connexa_core::sim::{Fleet, FleetSpec};
use connexa_core::store::SqlStore;
use connexa_http::{AppState, HttpOptions, app};
use serde_json::json;

/// One sample: metric name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// A metric family and the labels of one series (without `le`).
type SeriesKey = (String, BTreeMap<String, String>);

/// Parses the text format (HELP/TYPE comments and samples; label values with
/// `\\`, `\"`, `\n` escapes and any other character, braces included) and
/// checks that every sample belongs to a family declared by a `# TYPE` line
/// before it.
fn parse(text: &str) -> (BTreeMap<String, String>, Vec<Sample>) {
    let mut types = BTreeMap::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "TYPE twice: {name}"
            );
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(!line.is_empty() && !line.starts_with('#'), "{line:?}");
        let name_end = line.find(['{', ' ']).expect("a name");
        let name = &line[..name_end];
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(mut r) = rest.strip_prefix('{') {
            loop {
                let eq = r.find("=\"").expect("k=\"v\"");
                let key = r[..eq].to_owned();
                let mut value = String::new();
                let mut chars = r[eq + 2..].char_indices();
                let end = loop {
                    match chars.next().expect("a closing quote") {
                        (_, '\\') => match chars.next().expect("an escape").1 {
                            'n' => value.push('\n'),
                            c @ ('\\' | '"') => value.push(c),
                            c => panic!("bad escape \\{c} in {line}"),
                        },
                        (i, '"') => break eq + 2 + i,
                        (_, c) => value.push(c),
                    }
                };
                labels.insert(key, value);
                r = &r[end + 1..];
                if let Some(more) = r.strip_prefix(',') {
                    r = more;
                } else {
                    rest = r.strip_prefix('}').expect("} after labels");
                    break;
                }
            }
        }
        let v = rest.strip_prefix(' ').expect("a space before the value");
        let v = match v {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|e| panic!("{line}: {e}")),
        };
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|b| types.contains_key(*b)))
            .unwrap_or(name);
        assert!(types.contains_key(family), "no TYPE before {line}");
        samples.push((name.to_owned(), labels, v));
    }
    (types, samples)
}

/// Every histogram: `le` ascending and ending with `+Inf`, counts
/// non-decreasing, `+Inf` equal to `_count`. Returns how many series.
fn check_histograms(types: &BTreeMap<String, String>, samples: &[Sample]) -> usize {
    let mut buckets: BTreeMap<SeriesKey, Vec<(f64, f64)>> = BTreeMap::new();
    let mut counts = BTreeMap::new();
    for (name, labels, v) in samples {
        for (suffix, is_bucket) in [("_bucket", true), ("_count", false)] {
            let Some(base) = name.strip_suffix(suffix) else {
                continue;
            };
            if types.get(base).map(String::as_str) != Some("histogram") {
                continue;
            }
            let mut labels = labels.clone();
            if is_bucket {
                let le = labels.remove("le").expect("le");
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                };
                buckets
                    .entry((base.to_owned(), labels))
                    .or_default()
                    .push((le, *v));
            } else {
                counts.insert((base.to_owned(), labels), *v);
            }
        }
    }
    for (key, b) in &buckets {
        assert!(b.windows(2).all(|w| w[0].0 < w[1].0), "le order {key:?}");
        assert!(b.windows(2).all(|w| w[0].1 <= w[1].1), "cumulative {key:?}");
        assert_eq!(b.last().map(|x| x.0), Some(f64::INFINITY), "{key:?}");
        assert_eq!(b.last().map(|x| x.1), counts.get(key).copied(), "{key:?}");
    }
    assert_eq!(buckets.len(), counts.len());
    buckets.len()
}

fn get(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let hits: Vec<f64> = samples
        .iter()
        .filter(|(n, l, _)| n == name && *l == want)
        .map(|s| s.2)
        .collect();
    assert_eq!(hits.len(), 1, "{name} {labels:?}");
    hits[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_light_probes_show_up_in_the_probe_histograms() {
    // A simulated PPTP server (control channel only) and a closed port.
    let fleet = Fleet::start(
        FleetSpec::new(1)
            .first_ip([127, 61, 0, 1].into())
            .port(21861)
            .logins(false),
    )
    .await
    .unwrap();
    let sim = fleet.nodes()[0].addr();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("m.db").display());
    let store = Arc::new(SqlStore::connect(&url).await.unwrap());
    let mut config = Config::default();
    config.test.concurrency = 4;
    config.test.connect_timeout_secs = 2.0;
    config.test.light_timeout_secs = 3.0;
    let stats = Arc::new(ProbeStats::new());
    // As the binary does.
    let engine = NetworkPorts::from_config(&config).engine_with_stats(
        store.clone(),
        &config,
        Arc::clone(&stats),
    );
    let state =
        AppState::new(engine, store.clone(), HttpOptions::default()).with_probe_stats(stats);
    let (token, _) = connexa_http::auth::create_token(store.as_ref(), "t", None)
        .await
        .unwrap();
    let a = Api {
        app: app(state.clone()),
        dir,
        store,
        state,
        token,
    };

    // Before any probe: the families are there, all zero.
    let (types, samples) = parse(&a.get("/metrics").await.text());
    assert_eq!(types["connexa_probe_duration_seconds"], "histogram");
    let dur = "connexa_probe_duration_seconds_count";
    let light = |r| [("depth", "light"), ("result", r)];
    assert_eq!(get(&samples, dur, &light("failed")), 0.0);

    for addr in [sim, closed] {
        let r = a
            .send_json(
                Method::POST,
                "/api/v1/nodes",
                json!({"ip": addr.ip().to_string(), "port": addr.port(), "login": "u", "password": "p"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    }
    let r = a
        .send_json(
            Method::POST,
            "/api/v1/jobs",
            json!({"kind": "light", "all": true}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let job = JobId(r.json()["id"].as_i64().unwrap());
    a.state.engine().wait(job).await.unwrap();
    let status = |id| {
        let store = a.store.clone();
        async move { store.get(NodeId(id)).await.unwrap().unwrap().status }
    };
    assert_eq!(status(1).await, Status::PingLight, "the simulated node");
    assert_eq!(status(2).await, Status::PingFailed, "the closed port");

    let m = a.get("/metrics").await;
    assert_eq!(m.status, StatusCode::OK);
    let text = m.text();
    assert!(
        text.contains(
            "connexa_probe_duration_seconds_count{depth=\"light\",result=\"failed\"} 1\n"
        ),
        "{text}"
    );
    let (types, samples) = parse(&text);
    // 12 duration + 9 measurement series, and the HTTP request histogram.
    assert_eq!(check_histograms(&types, &samples), 22);
    assert_eq!(get(&samples, dur, &light("ok")), 1.0);
    assert_eq!(get(&samples, dur, &light("failed")), 1.0);
    for r in ["error", "cancelled"] {
        assert_eq!(get(&samples, dur, &light(r)), 0.0, "{r}");
    }
    for depth in ["auth", "speed"] {
        for r in ["ok", "failed", "error", "cancelled"] {
            assert_eq!(
                get(&samples, dur, &[("depth", depth), ("result", r)]),
                0.0,
                "{depth} {r}"
            );
        }
    }
    // Each call took some time, less than its time budget.
    for r in ["ok", "failed"] {
        let sum = get(&samples, "connexa_probe_duration_seconds_sum", &light(r));
        assert!(sum > 0.0 && sum < 10.0, "{r}: {sum}");
    }
    // Only the simulated node answered the handshake, within its 3 s budget.
    let hs = [("depth", "light")];
    assert_eq!(
        get(&samples, "connexa_probe_handshake_seconds_count", &hs),
        1.0
    );
    let hs_le_5 = [("depth", "light"), ("le", "5")];
    assert_eq!(
        get(&samples, "connexa_probe_handshake_seconds_bucket", &hs_le_5),
        1.0
    );
    assert!(get(&samples, "connexa_probe_connect_seconds_count", &hs) >= 1.0);
    fleet.shutdown();
}
