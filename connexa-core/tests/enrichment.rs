//! Enrichment on the real stores: stored with the node, never an event. GEO and
//! fraud jobs run like any job (progress, cancellation, resume) and record
//! lookups, not statuses; a property test interleaves enrichment with test
//! events and checks the status is exactly what the events alone give.

mod common;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{TimeZone, Utc};
use common::TestDb;
use connexa_core::domain::*;
use connexa_core::engine::{Engine, EngineConfig, JobOptions, NotAvailable, RecoverPolicy};
use connexa_core::geo::{MmdbGeo, MmdbWriter};
use connexa_core::ports::*;
use proptest::prelude::*;
use serde_json::json;

fn at(s: i64) -> chrono::DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + s, 0).unwrap()
}

fn geo_record(ip: &str, country: &str) -> GeoRecord {
    GeoRecord {
        ip: ip.parse().unwrap(),
        facts: GeoFacts {
            country_code: Some(country.into()),
            region: Some("Somewhere".into()),
            latitude: Some(1.5),
            longitude: Some(-2.25),
            asn: Some(64_512),
            org: Some("Org".into()),
            ..GeoFacts::default()
        },
        source: "mmdb".into(),
        at: at(10),
        location_mismatch: Some(true),
    }
}

fn fraud_record(ip: &str, score: u8) -> FraudRecord {
    FraudRecord {
        ip: ip.parse().unwrap(),
        score,
        risk: Risk::from_score(score),
        provider: "scamalytics".into(),
        at: at(20),
    }
}

async fn enrich_is_stored_and_touches_nothing_else(db: TestDb) {
    let store = &db.store;
    let ids = common::seed(store, 2).await;
    let ctx = ApplyContext {
        job: None,
        at: at(1),
    };
    store
        .apply(ids[0], Event::Tested(Outcome::success(Level::Speed)), ctx)
        .await
        .unwrap();
    let before = store.get(ids[0]).await.unwrap().unwrap();
    let history = store.history(ids[0]).await.unwrap();

    let g = geo_record("10.0.0.0", "DE");
    let f = fraud_record("10.0.0.0", 87);
    let n = store
        .enrich(vec![
            (ids[0], EnrichmentUpdate::Geo(g.clone())),
            (ids[0], EnrichmentUpdate::Fraud(f.clone())),
            (NodeId(999_999), EnrichmentUpdate::Fraud(f.clone())),
        ])
        .await
        .unwrap();
    assert_eq!(n, 2, "the unknown node is skipped");

    let after = store.get(ids[0]).await.unwrap().unwrap();
    assert_eq!(after.enrichment.geo, Some(g));
    assert_eq!(after.enrichment.fraud, Some(f));
    assert_eq!(
        after.enrichment.fraud.as_ref().unwrap().risk,
        Risk::VeryHigh
    );
    let mut same = after.clone();
    same.enrichment = before.enrichment.clone();
    assert_eq!(same, before, "only the enrichment changed");
    assert_eq!(
        store.history(ids[0]).await.unwrap(),
        history,
        "no history row"
    );

    // The other node has none; a second GEO result replaces the first.
    assert_eq!(
        store.get(ids[1]).await.unwrap().unwrap().enrichment,
        Enrichment::default()
    );
    let g2 = GeoRecord {
        location_mismatch: None,
        ..geo_record("10.0.0.0", "FR")
    };
    store
        .enrich(vec![(ids[0], EnrichmentUpdate::Geo(g2.clone()))])
        .await
        .unwrap();
    let again = store.get(ids[0]).await.unwrap().unwrap();
    assert_eq!(again.enrichment.geo, Some(g2));
    assert!(again.enrichment.fraud.is_some(), "the fraud record stays");

    // The provider cache: a fresh entry is found, an old one is not.
    store
        .cache_put("ipinfo", "10.0.0.0", "{\"x\":1}", at(100))
        .await
        .unwrap();
    assert_eq!(
        store
            .cache_get("ipinfo", "10.0.0.0", at(50))
            .await
            .unwrap()
            .as_deref(),
        Some("{\"x\":1}")
    );
    assert_eq!(
        store
            .cache_get("ipinfo", "10.0.0.0", at(101))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store.cache_get("ipapi", "10.0.0.0", at(50)).await.unwrap(),
        None
    );
    store
        .cache_put("ipinfo", "10.0.0.0", "{\"x\":2}", at(200))
        .await
        .unwrap();
    assert_eq!(
        store
            .cache_get("ipinfo", "10.0.0.0", at(150))
            .await
            .unwrap()
            .as_deref(),
        Some("{\"x\":2}")
    );
}

#[tokio::test]
async fn enrich_is_stored_and_touches_nothing_else_sqlite() {
    enrich_is_stored_and_touches_nothing_else(common::sqlite().await).await;
}

#[tokio::test]
async fn enrich_is_stored_and_touches_nothing_else_postgres() {
    enrich_is_stored_and_touches_nothing_else(common::postgres().await).await;
}

/// A prober that must never be called by enrichment jobs.
struct NoProber;

#[async_trait]
impl Prober for NoProber {
    async fn probe(&self, _: &Node, _: ProbeDepth) -> Result<Outcome, ProbeError> {
        panic!("an enrichment job probed a node")
    }
}

fn engine(store: Arc<dyn NodeStore>) -> Engine {
    let config = EngineConfig {
        poll_interval: Duration::from_millis(20),
        ..EngineConfig::default()
    };
    Engine::new(
        store,
        Arc::new(NoProber),
        Arc::new(NotAvailable),
        Arc::new(NotAvailable),
        config,
    )
}

fn city_db(dir: &std::path::Path) -> MmdbGeo {
    let mut w = MmdbWriter::new("GeoLite2-City");
    w.insert(
        "10.0.0.0/24".parse().unwrap(),
        json!({"country": {"iso_code": "US", "names": {"en": "United States"}},
               "subdivisions": [{"names": {"en": "Texas"}}], "city": {"names": {"en": "Austin"}}}),
    )
    .unwrap();
    let p = dir.join("city.mmdb");
    std::fs::write(&p, w.to_bytes().unwrap()).unwrap();
    MmdbGeo::open(Some(&p), None).unwrap()
}

async fn geo_job_records_lookups_not_events(db: TestDb) {
    let store: Arc<dyn NodeStore> = Arc::new(db.store.clone());
    let claims = [
        ("10.0.0.1", "United States", "TX"),
        ("10.0.0.2", "Germany", "Berlin"),
        ("10.0.1.1", "United States", "Ohio"),
    ];
    let ids: Vec<NodeId> = store
        .insert(
            claims
                .iter()
                .map(|(ip, c, s)| common::node_with(ip, "u", c, s, "x"))
                .collect(),
        )
        .await
        .unwrap()
        .into_iter()
        .map(|o| match o {
            InsertOutcome::Inserted(id) => id,
            o => panic!("{o:?}"),
        })
        .collect();
    let engine = engine(Arc::clone(&store));

    // Without a GEO source the job stops at once and marks nothing.
    let job = engine
        .start_job(JobKind::Geo, NodeFilter::all(), JobOptions::default())
        .await
        .unwrap();
    let sum = engine.wait(job).await.unwrap();
    assert_eq!(sum.job.state, JobState::Cancelled);
    let items = store.recent_items(job, 10).await.unwrap();
    assert!(
        items
            .iter()
            .any(|i| i.detail.as_deref().unwrap_or("").contains("[geo]")),
        "the reason names the config section: {items:?}"
    );

    let dir = tempfile::tempdir().unwrap();
    engine.set_geo(Arc::new(city_db(dir.path())));
    let job = engine
        .start_job(JobKind::Geo, NodeFilter::all(), JobOptions::default())
        .await
        .unwrap();
    let sum = engine.wait(job).await.unwrap();
    assert_eq!(sum.job.state, JobState::Done);
    assert_eq!(
        (sum.progress.ok, sum.progress.failed),
        (2, 1),
        "{:?}",
        sum.progress
    );

    let n = |i: usize| {
        let store = Arc::clone(&store);
        let id = ids[i];
        async move { store.get(id).await.unwrap().unwrap() }
    };
    let a = n(0).await;
    let g = a.enrichment.geo.expect("looked up");
    assert_eq!(g.ip, "10.0.0.1".parse::<IpAddr>().unwrap());
    assert_eq!(
        (g.facts.city.as_deref(), g.facts.region.as_deref()),
        (Some("Austin"), Some("Texas"))
    );
    assert_eq!(g.source, "mmdb");
    assert_eq!(
        g.location_mismatch,
        Some(false),
        "United States/TX = US/Texas"
    );
    assert_eq!(
        n(1).await.enrichment.geo.unwrap().location_mismatch,
        Some(true)
    );
    assert_eq!(
        n(2).await.enrichment.geo,
        None,
        "not in the database: nothing stored"
    );
    for id in &ids {
        let node = store.get(*id).await.unwrap().unwrap();
        assert_eq!(node.status, Status::NotTested);
        assert!(
            store.history(*id).await.unwrap().is_empty(),
            "no status event"
        );
    }

    // Filters over the stored enrichment.
    let f = NodeFilter {
        mismatch: Some(true),
        ..NodeFilter::all()
    };
    let page = store.list(&f, Page::default()).await.unwrap();
    assert_eq!(
        page.nodes.iter().map(|n| n.id).collect::<Vec<_>>(),
        vec![ids[1]]
    );

    // Resume: a queued job that no process ran is picked up and finished.
    let queued = connexa_core::engine::queue_job(
        store.as_ref(),
        JobKind::Geo,
        NodeFilter::ids(vec![ids[0]]),
        JobOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        engine.recover(RecoverPolicy::Resume).await.unwrap(),
        vec![queued.id]
    );
    let sum = engine.wait(queued.id).await.unwrap();
    assert_eq!((sum.job.state, sum.progress.ok), (JobState::Done, 1));
}

#[tokio::test]
async fn geo_job_records_lookups_not_events_sqlite() {
    geo_job_records_lookups_not_events(common::sqlite().await).await;
}

#[tokio::test]
async fn geo_job_records_lookups_not_events_postgres() {
    geo_job_records_lookups_not_events(common::postgres().await).await;
}

/// Rate limited on its first call for each address, then scores by the last octet.
struct Scorer {
    calls: AtomicU32,
    seen: Mutex<std::collections::HashSet<IpAddr>>,
}

#[async_trait]
impl FraudScorer for Scorer {
    fn source(&self) -> String {
        "stand-in".into()
    }
    async fn score(&self, ip: IpAddr) -> Result<FraudScore, LookupError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.seen.lock().unwrap().insert(ip) {
            return Err(LookupError::RateLimited {
                provider: "stand-in".into(),
                retry_after: Some(Duration::from_millis(20)),
            });
        }
        match ip {
            IpAddr::V4(v4) if v4.octets()[3] == 3 => {
                Err(LookupError::Failed("malformed body".into()))
            }
            IpAddr::V4(v4) => {
                let score = v4.octets()[3] * 30;
                Ok(FraudScore {
                    score,
                    risk: Risk::from_score(score),
                })
            }
            IpAddr::V6(_) => Err(LookupError::NotFound(ip)),
        }
    }
}

#[tokio::test]
async fn fraud_job_waits_out_rate_limits_and_a_failure_keeps_the_old_score() {
    let db = common::sqlite().await;
    let store: Arc<dyn NodeStore> = Arc::new(db.store.clone());
    let ids = common::seed(store.as_ref(), 4).await; // 10.0.0.0 .. 10.0.0.3
    let old = fraud_record("10.0.0.3", 5);
    store
        .enrich(vec![(ids[3], EnrichmentUpdate::Fraud(old.clone()))])
        .await
        .unwrap();
    let engine = engine(Arc::clone(&store));
    let scorer = Arc::new(Scorer {
        calls: AtomicU32::new(0),
        seen: Mutex::new(Default::default()),
    });
    engine.set_fraud(scorer.clone());
    let job = engine
        .start_job(JobKind::Fraud, NodeFilter::all(), JobOptions::default())
        .await
        .unwrap();
    let sum = engine.wait(job).await.unwrap();
    assert_eq!(sum.job.state, JobState::Done, "a 429 does not fail the job");
    assert_eq!((sum.progress.ok, sum.progress.failed), (3, 1));
    assert_eq!(
        scorer.calls.load(Ordering::SeqCst),
        8,
        "each address: once limited, once answered"
    );
    let score = |i: usize| {
        let store = Arc::clone(&store);
        let id = ids[i];
        async move { store.get(id).await.unwrap().unwrap().enrichment.fraud }
    };
    assert_eq!(
        score(2).await.map(|f| (f.score, f.risk, f.provider)),
        Some((60, Risk::High, "stand-in".into()))
    );
    assert_eq!(score(3).await, Some(old), "a failed lookup changes nothing");
    let f = NodeFilter {
        fraud_max: Some(30),
        ..NodeFilter::all()
    };
    let got: Vec<NodeId> = store
        .list(&f, Page::default())
        .await
        .unwrap()
        .nodes
        .iter()
        .map(|n| n.id)
        .collect();
    assert_eq!(got, vec![ids[0], ids[1], ids[3]]);
    let f = NodeFilter {
        risks: vec![Risk::High],
        ..NodeFilter::all()
    };
    let got: Vec<NodeId> = store
        .list(&f, Page::default())
        .await
        .unwrap()
        .nodes
        .iter()
        .map(|n| n.id)
        .collect();
    assert_eq!(got, vec![ids[2]]);
}

/// One step of the property test.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // a test's strategy value, never stored in bulk
enum Step {
    Event(Event),
    Geo(u8),
    Fraud(u8),
}

fn event() -> impl Strategy<Value = Event> {
    let outcome = (0u8..=3, any::<bool>()).prop_map(|(l, fail)| {
        let level = Level::ALL[usize::from(l)];
        if fail {
            Outcome::failed(level, Failure::Refused)
        } else {
            Outcome::success(level)
        }
    });
    prop_oneof![
        4 => outcome.prop_map(Event::Tested),
        1 => Just(Event::ServiceStarted(ServiceEndpoint {
            host: "127.0.0.1".into(),
            port: 20_000,
            username: "u".into(),
            password: Secret::new("p"),
        })),
        1 => Just(Event::ServiceStartFailed("busy".into())),
        1 => Just(Event::ServiceStopped),
        1 => Just(Event::HealthOk),
        1 => Just(Event::HealthFailed("down".into())),
        1 => Just(Event::Inconclusive { reason: "budget".into(), proven: Level::Light, measurements: Measurements::default() }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => event().prop_map(Step::Event),
        1 => any::<u8>().prop_map(Step::Geo),
        1 => (0u8..=100).prop_map(Step::Fraud),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, max_shrink_iters: 50, ..ProptestConfig::default() })]

    /// Any sequence of enrichment results interleaved with test events leaves
    /// the status (and the evidence and history) exactly what the events alone give.
    #[test]
    fn enrichment_interleaved_with_events_never_changes_status(steps in prop::collection::vec(step(), 1..25)) {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async move {
            let with = common::sqlite().await;
            let without = common::sqlite().await;
            let a = common::seed(&with.store, 1).await[0];
            let b = common::seed(&without.store, 1).await[0];
            let mut expected = Status::NotTested;
            for (i, s) in steps.iter().enumerate() {
                let ctx = ApplyContext { job: None, at: at(i as i64) };
                match s {
                    Step::Event(e) => {
                        let ra = with.store.apply(a, e.clone(), ctx).await;
                        let rb = without.store.apply(b, e.clone(), ctx).await;
                        assert_eq!(ra.is_ok(), rb.is_ok(), "{e:?}");
                        if let Ok(next) = transition(expected, e) {
                            expected = next;
                        }
                    }
                    Step::Geo(x) => {
                        let mut g = geo_record("10.0.0.0", if x % 2 == 0 { "US" } else { "DE" });
                        g.location_mismatch = Some(x % 3 == 0);
                        with.store.enrich(vec![(a, EnrichmentUpdate::Geo(g))]).await.unwrap();
                    }
                    Step::Fraud(score) => {
                        with.store.enrich(vec![(a, EnrichmentUpdate::Fraud(fraud_record("10.0.0.0", *score)))]).await.unwrap();
                    }
                }
                let na = with.store.get(a).await.unwrap().unwrap();
                assert_eq!(na.status, expected, "after step {i}: {s:?}");
            }
            let na = with.store.get(a).await.unwrap().unwrap();
            let nb = without.store.get(b).await.unwrap().unwrap();
            assert_eq!(na.status, nb.status);
            assert_eq!(
                (na.last_checked_at, &na.last_error, na.consecutive_failures, na.ping_ms, na.speed_down_mbps, &na.service),
                (nb.last_checked_at, &nb.last_error, nb.consecutive_failures, nb.ping_ms, nb.speed_down_mbps, &nb.service)
            );
            let strip = |h: Vec<HistoryRow>| h.into_iter().map(|r| (r.from, r.to, r.event, r.reached, r.at)).collect::<Vec<_>>();
            assert_eq!(strip(with.store.history(a).await.unwrap()), strip(without.store.history(b).await.unwrap()));
        });
    }
}

async fn seller_scamalytics_lines_are_kept(db: TestDb) {
    let store: Arc<dyn NodeStore> = Arc::new(db.store.clone());
    let list = "\
Ip: 203.0.113.7
Credentials: admin:admin
Location: Texas (Austin)
Scamalytics Fraud Score: 35
Scamalytics Risk: medium

Ip: 203.0.113.8
Credentials: admin:admin
Scamalytics Fraud Score: 90/100

Ip: 203.0.113.9
Credentials: admin:admin
Scamalytics Risk: low
";
    let report = connexa_core::import::import_into(
        Arc::clone(&store),
        list.as_bytes(),
        connexa_core::import::ImportOptions::default(),
    )
    .await;
    assert_eq!(report.added.len(), 3, "{report:?}");
    assert!(
        report.ignored.is_empty(),
        "no line is dropped: {:?}",
        report.ignored
    );
    let fraud = |i: usize| {
        let store = Arc::clone(&store);
        let id = report.added[i].1;
        async move { store.get(id).await.unwrap().unwrap().enrichment.fraud }
    };
    let f = fraud(0).await.expect("kept");
    assert_eq!(
        (f.score, f.risk, f.provider.as_str()),
        (35, Risk::Medium, "seller:scamalytics")
    );
    assert_eq!(f.ip, "203.0.113.7".parse::<IpAddr>().unwrap());
    let f = fraud(1).await.expect("kept");
    assert_eq!(
        (f.score, f.risk),
        (90, Risk::VeryHigh),
        "no risk line: the score's level"
    );
    assert_eq!(
        fraud(2).await,
        None,
        "a risk without a score is not a score"
    );
    let n = store.get(report.added[0].1).await.unwrap().unwrap();
    assert_eq!(n.status, Status::NotTested);
    let f = NodeFilter {
        fraud_max: Some(50),
        ..NodeFilter::all()
    };
    assert_eq!(store.list(&f, Page::default()).await.unwrap().total, 1);
}

#[tokio::test]
async fn seller_scamalytics_lines_are_kept_sqlite() {
    seller_scamalytics_lines_are_kept(common::sqlite().await).await;
}

#[tokio::test]
async fn seller_scamalytics_lines_are_kept_postgres() {
    seller_scamalytics_lines_are_kept(common::postgres().await).await;
}
