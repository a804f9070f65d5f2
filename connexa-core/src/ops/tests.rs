use std::sync::Arc;

use super::*;
use chrono::Utc;

use crate::domain::{Failure, Level, Node, NodeFilter, NodeId, Page, Status};
use crate::export::ExportFormat;
use crate::import::{ImportOptions, import_into};
use crate::ports::{JobKind, NodeStore};
use crate::store::SqlStore;

async fn temp_store() -> (tempfile::TempDir, Arc<SqlStore>) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
    (dir, Arc::new(SqlStore::connect(&url).await.unwrap()))
}

async fn store_with(list: &'static str) -> (tempfile::TempDir, Arc<SqlStore>) {
    let (dir, store) = temp_store().await;
    let r = import_into(store.clone(), list.as_bytes(), ImportOptions::default()).await;
    assert!(r.failure.is_none());
    (dir, store)
}

#[tokio::test]
async fn a_store_that_ignores_the_cursor_ends_the_walk_with_an_error() {
    let mut store = crate::ports::MockNodeStore::new();
    let page: Vec<Node> = (1..=3)
        .map(|i| {
            Node::added(
                NodeId(i),
                std::net::IpAddr::from([127, 0, 0, 1]),
                1723,
                "u",
                crate::domain::Secret::new("p"),
                Utc::now(),
            )
        })
        .collect();
    store
        .expect_list_page()
        .returning(move |_, _| Ok(page.clone()));
    let mut walk = NodeWalk::new(NodeFilter::all()).with_limit(3);
    assert_eq!(
        walk.next_page(&store).await.unwrap().map(|p| p.len()),
        Some(3)
    );
    let e = walk.next_page(&store).await.unwrap_err();
    assert!(e.to_string().contains("ignored the page cursor"), "{e}");
    assert!(walk.next_page(&store).await.unwrap().is_none());
}

#[tokio::test]
async fn edit_meta_patches_only_given_fields() {
    let (_dir, store) = store_with("127.0.0.5:admin:pw:US:Texas:75001\n").await;
    let patch = MetaPatch {
        city: Some("Austin".into()),
        zipcode: Some(String::new()),
        ..MetaPatch::default()
    };
    let n = edit_meta(store.as_ref(), NodeId(1), &patch).await.unwrap();
    assert_eq!(n.meta.city.as_deref(), Some("Austin"));
    assert_eq!(n.meta.zipcode, None);
    assert_eq!(n.meta.state.as_deref(), Some("Texas"));
    let e = edit_meta(store.as_ref(), NodeId(9), &patch)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::NotFound(NodeId(9))));
}

#[tokio::test]
async fn export_reads_past_one_page() {
    let mut list = String::new();
    for i in 0..(Page::MAX_LIMIT + 5) {
        list.push_str(&format!("127.0.{}.{}:u:p\n", i / 250, i % 250 + 1));
    }
    let (_dir, store) = temp_store().await;
    let r = import_into(
        store.clone(),
        std::io::Cursor::new(list),
        ImportOptions::default(),
    )
    .await;
    assert_eq!(r.added.len() as u64, Page::MAX_LIMIT + 5);
    let mut out = Vec::new();
    let n = export(
        store.as_ref(),
        &NodeFilter::all(),
        ExportFormat::Pptp,
        &mut out,
    )
    .await
    .unwrap();
    assert_eq!(n as u64, Page::MAX_LIMIT + 5);
    assert_eq!(
        out.iter().filter(|b| **b == b'\n').count() as u64,
        Page::MAX_LIMIT + 5
    );
}

#[tokio::test]
async fn views_mask_passwords_unless_revealed() {
    let (_dir, store) = store_with("127.0.0.5:admin:s3cret\n").await;
    let n = node(store.as_ref(), NodeId(1)).await.unwrap();
    let masked = serde_json::to_string(&NodeView::new(&n, false)).unwrap();
    assert!(!masked.contains("s3cret") && masked.contains("\"password\":\"***\""));
    assert_eq!(NodeView::new(&n, true).password, "s3cret");
}

#[tokio::test]
async fn delete_ids_names_the_missing_ones() {
    let (_dir, store) = store_with("127.0.0.5:a:b\n127.0.0.6:a:b\n").await;
    let d = delete_ids(store.as_ref(), &[NodeId(2), NodeId(7)])
        .await
        .unwrap();
    assert_eq!(
        d,
        Deleted {
            deleted: 1,
            missing: vec![NodeId(7)]
        }
    );
    assert_eq!(count(store.as_ref(), &NodeFilter::all()).await.unwrap(), 1);
}

#[tokio::test]
async fn stats_lists_every_status() {
    let (_dir, store) = store_with("127.0.0.5:a:b\n127.0.0.6:a:b\n").await;
    let s = stats(store.as_ref()).await.unwrap();
    assert_eq!(s.by_status.len(), Status::ALL.len());
    assert_eq!(
        s.by_status[0],
        StatusCount {
            status: Status::NotTested,
            count: 2
        }
    );
    assert!(s.last_job.is_none());
}

#[tokio::test]
async fn want_services_marks_only_verified_nodes_and_says_what_changed() {
    let (_dir, store) = store_with("127.0.0.5:a:b\n127.0.0.6:a:b\n127.0.0.7:a:b\n").await;
    store
        .apply(
            NodeId(1),
            crate::domain::Event::Tested(crate::domain::Outcome::success(Level::Speed)),
            crate::ports::ApplyContext::now(),
        )
        .await
        .unwrap();
    let sel = NodeFilter::ids([NodeId(1), NodeId(2)]);
    let c = want_services(store.as_ref(), &sel, true).await.unwrap();
    assert_eq!(
        c,
        ServiceChange {
            wanted: true,
            matched: 2,
            changed: vec![NodeId(1)],
            unchanged: 0,
            not_verified: 1,
        }
    );
    assert!(
        node(store.as_ref(), NodeId(1))
            .await
            .unwrap()
            .service_wanted
    );
    assert!(
        !node(store.as_ref(), NodeId(2))
            .await
            .unwrap()
            .service_wanted
    );
    let again = want_services(store.as_ref(), &sel, true).await.unwrap();
    assert_eq!((again.changed.len(), again.unchanged), (0, 1));
    let stop = want_services(store.as_ref(), &NodeFilter::all(), false)
        .await
        .unwrap();
    assert_eq!(
        (stop.changed, stop.unchanged, stop.matched),
        (vec![NodeId(1)], 2, 3)
    );
    assert!(
        !node(store.as_ref(), NodeId(1))
            .await
            .unwrap()
            .service_wanted
    );
}

#[tokio::test]
async fn running_services_carry_their_credentials() {
    use crate::domain::{Event, Outcome, Secret, ServiceEndpoint};
    let (_dir, store) = store_with("127.0.0.5:a:nodepw\n127.0.0.6:a:b\n").await;
    assert!(
        running_services(store.as_ref(), &NodeFilter::all())
            .await
            .unwrap()
            .is_empty()
    );
    let ctx = crate::ports::ApplyContext::now;
    store
        .apply(
            NodeId(2),
            Event::Tested(Outcome::success(Level::Speed)),
            ctx(),
        )
        .await
        .unwrap();
    store
        .apply(
            NodeId(2),
            Event::ServiceStarted(ServiceEndpoint {
                host: "127.0.0.1".into(),
                port: 20001,
                username: "u".into(),
                password: Secret::new("sockspw"),
            }),
            ctx(),
        )
        .await
        .unwrap();
    let list = running_services(store.as_ref(), &NodeFilter::all())
        .await
        .unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].node, NodeId(2));
    assert_eq!(list[0].status, Status::Online);
    assert_eq!(
        (list[0].port, list[0].password.as_str()),
        (20001, "sockspw")
    );
    let none = running_services(store.as_ref(), &NodeFilter::ids([NodeId(1)]))
        .await
        .unwrap();
    assert!(none.is_empty());
}

fn sample() -> Node {
    let now = Utc::now();
    Node::added(
        NodeId(0),
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 5)),
        1723,
        "u",
        crate::domain::Secret::new("p"),
        now,
    )
}

fn prober_answering(
    r: Result<crate::domain::Outcome, crate::ports::ProbeError>,
) -> crate::ports::MockProber {
    let mut p = crate::ports::MockProber::new();
    p.expect_probe()
        .withf(|_, d| *d == crate::ports::ProbeDepth::Auth)
        .returning(move |_, _| r.clone());
    p
}

#[tokio::test]
async fn deepest_test_goes_as_deep_as_privileges_and_ports_allow() {
    use crate::domain::Outcome;
    use crate::ports::{MockSpeedTester, ProbeError};
    use std::time::Duration;
    let t = Duration::from_secs(1);
    let n = sample();
    // No CAP_NET_RAW: light, with the reason.
    let p = prober_answering(Err(ProbeError::NotPermitted("need CAP_NET_RAW".into())));
    let plan = deepest_test(&p, None, &n, t).await;
    assert_eq!(plan.kind, JobKind::Light);
    assert!(plan.skipped.unwrap().contains("need CAP_NET_RAW"));
    // A server that does not answer logins: light.
    let p = prober_answering(Ok(Outcome::failed(
        Level::Light,
        Failure::CallRejected { code: 2 },
    )));
    let plan = deepest_test(&p, None, &n, t).await;
    assert_eq!(plan.kind, JobKind::Light);
    assert!(plan.skipped.unwrap().contains("does not answer logins"));
    // Logins work (a rejected password counts: the server speaks MS-CHAPv2), no speed tester: auth.
    let rejected = Outcome::failed(
        Level::Light,
        Failure::AuthRejected {
            code: Some(691),
            message: String::new(),
        },
    );
    let p = prober_answering(Ok(rejected));
    let plan = deepest_test(&p, None, &n, t).await;
    assert_eq!(plan.kind, JobKind::Auth);
    assert!(plan.skipped.unwrap().contains("no speed tester"));
    // Both: the pipeline.
    let p = prober_answering(Ok(Outcome::success(Level::Auth)));
    let mut s = MockSpeedTester::new();
    s.expect_measure()
        .returning(|_| Ok(Outcome::success(Level::Speed)));
    let plan = deepest_test(&p, Some(&s), &n, t).await;
    assert_eq!(
        plan,
        TestPlan {
            kind: JobKind::Pipeline,
            skipped: None
        }
    );
    // A speed tester that cannot run: auth.
    let p = prober_answering(Ok(Outcome::success(Level::Auth)));
    let mut s = MockSpeedTester::new();
    s.expect_measure()
        .returning(|_| Err(ProbeError::Config("no test URL".into())));
    let plan = deepest_test(&p, Some(&s), &n, t).await;
    assert_eq!(plan.kind, JobKind::Auth);
    assert!(plan.skipped.unwrap().contains("no test URL"));
}

#[tokio::test]
async fn deepest_test_gives_up_after_the_budget() {
    struct Hangs;
    #[async_trait::async_trait]
    impl crate::ports::Prober for Hangs {
        async fn probe(
            &self,
            _: &Node,
            _: crate::ports::ProbeDepth,
        ) -> Result<crate::domain::Outcome, crate::ports::ProbeError> {
            std::future::pending().await
        }
    }
    let budget = std::time::Duration::from_millis(200);
    let plan = deepest_test(&Hangs, None, &sample(), budget).await;
    assert_eq!(plan.kind, JobKind::Light);
    assert!(plan.skipped.unwrap().contains("within 200ms"));
}
