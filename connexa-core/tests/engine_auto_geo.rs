//! `[geo] after_light`: a node that proves a PPTP server in a light, auth,
//! speed or pipeline test is looked up too, stored with its result; one that
//! does not is not, a failing source changes nothing, and the status is the
//! test's alone. On a real SQLite file.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use connexa_core::domain::*;
use connexa_core::engine::{Engine, EngineConfig, JobOptions, NotAvailable};
use connexa_core::ports::*;
use connexa_core::store::SqlStore;

/// 192.0.2.1 answers PPTP, 192.0.2.2 refuses.
struct Prober;

#[async_trait]
impl connexa_core::ports::Prober for Prober {
    async fn probe(&self, node: &Node, _: ProbeDepth) -> Result<Outcome, ProbeError> {
        Ok(if node.ip.to_string() == "192.0.2.1" {
            Outcome::success(Level::Light)
        } else {
            Outcome::failed(Level::None, Failure::Refused)
        })
    }
}

struct Geo {
    fail: bool,
    delay: std::time::Duration,
    asked: AtomicUsize,
}

#[async_trait]
impl GeoLookup for Geo {
    fn source(&self) -> String {
        "test-geo".into()
    }
    async fn lookup(&self, _: IpAddr) -> Result<GeoFacts, LookupError> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        if self.fail {
            return Err(LookupError::Failed("the database is gone".into()));
        }
        Ok(GeoFacts {
            country_code: Some("NL".into()),
            city: Some("Amsterdam".into()),
            ..GeoFacts::default()
        })
    }
}

async fn light_job(after_light: bool, fail: bool) -> (Vec<Node>, usize) {
    light_job_with(after_light, fail, std::time::Duration::ZERO, None).await
}

async fn light_job_with(
    after_light: bool,
    fail: bool,
    delay: std::time::Duration,
    budget: Option<std::time::Duration>,
) -> (Vec<Node>, usize) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("g.db").display());
    let store = Arc::new(SqlStore::connect(&url).await.unwrap());
    store
        .insert(vec![
            NewNode::new("192.0.2.1", 1723, "u", "p").unwrap(),
            NewNode::new("192.0.2.2", 1723, "u", "p").unwrap(),
        ])
        .await
        .unwrap();
    let engine = Engine::new(
        store.clone(),
        Arc::new(Prober),
        Arc::new(NotAvailable),
        Arc::new(NotAvailable),
        EngineConfig {
            geo_after_light: after_light,
            ..EngineConfig::default()
        },
    );
    let geo = Arc::new(Geo {
        fail,
        delay,
        asked: AtomicUsize::new(0),
    });
    engine.set_geo(geo.clone());
    let job = engine
        .start_job(
            JobKind::Light,
            NodeFilter::all(),
            budget.map_or_else(JobOptions::default, |b| {
                JobOptions::default().node_timeout(b)
            }),
        )
        .await
        .unwrap();
    let summary = engine.wait(job).await.unwrap();
    assert_eq!(summary.job.state, JobState::Done);
    let mut nodes = Vec::new();
    for id in [NodeId(1), NodeId(2)] {
        nodes.push(store.get(id).await.unwrap().unwrap());
    }
    (nodes, geo.asked.load(Ordering::SeqCst))
}

#[tokio::test]
async fn a_node_that_passes_light_is_looked_up_with_its_result() {
    let (nodes, asked) = light_job(true, false).await;
    assert_eq!(nodes[0].status, Status::PingLight);
    let geo = nodes[0].enrichment.geo.as_ref().expect("looked up");
    assert_eq!(geo.facts.city.as_deref(), Some("Amsterdam"));
    assert_eq!(geo.source, "test-geo");
    // The refusing node proved nothing: not looked up.
    assert_eq!(nodes[1].status, Status::PingFailed);
    assert!(nodes[1].enrichment.geo.is_none());
    assert_eq!(asked, 1);
}

#[tokio::test]
async fn off_by_default_and_a_failing_source_changes_nothing() {
    let (nodes, asked) = light_job(false, false).await;
    assert_eq!(asked, 0);
    assert!(nodes[0].enrichment.geo.is_none());
    assert_eq!(nodes[0].status, Status::PingLight);
    let (nodes, asked) = light_job(true, true).await;
    assert_eq!(asked, 1);
    assert!(nodes[0].enrichment.geo.is_none());
    assert_eq!(
        nodes[0].status,
        Status::PingLight,
        "the test's verdict stands"
    );
    assert_eq!(nodes[0].last_error, None);
}

/// The lookup is ours, not the node's: a slow one must not run the item out
/// of its budget and lose the verdict the test already gave.
#[tokio::test]
async fn a_slow_lookup_never_costs_the_node_its_verdict() {
    let (nodes, asked) = light_job_with(
        true,
        false,
        std::time::Duration::from_millis(1500),
        Some(std::time::Duration::from_secs(1)),
    )
    .await;
    assert_eq!(asked, 1);
    assert_eq!(nodes[0].status, Status::PingLight, "the verdict stands");
    assert!(
        nodes[0].enrichment.geo.is_some(),
        "and the lookup is stored"
    );
}
