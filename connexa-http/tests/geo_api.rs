//! GEO enrichment over HTTP: a `geo` job, the node JSON's `geo` object, and
//! the `mismatch`, `asn`, `fraud_max` and `risk` query parameters.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::http::Method;
use common::api;
use connexa_core::domain::{EnrichmentUpdate, FraudRecord, NodeId, Risk};
use connexa_core::geo::{MmdbGeo, MmdbWriter};
use connexa_core::ports::NodeStore;
use serde_json::json;

#[tokio::test]
async fn geo_job_fields_and_filters() {
    let a = api().await;
    a.import("127.0.0.5:admin:pw1:US:Texas:75001\n127.0.0.7:guest:pw3:DE:Bavaria:80331\n")
        .await;
    let mut w = MmdbWriter::new("GeoLite2-City");
    w.insert(
        "127.0.0.0/8".parse().unwrap(),
        json!({"country": {"iso_code": "US", "names": {"en": "United States"}},
               "subdivisions": [{"names": {"en": "Texas"}}],
               "autonomous_system_number": 64500}),
    )
    .unwrap();
    let path = a.dir.path().join("city.mmdb");
    std::fs::write(&path, w.to_bytes().unwrap()).unwrap();
    a.state
        .engine()
        .set_geo(Arc::new(MmdbGeo::open(Some(&path), None).unwrap()));

    let job = a
        .send_json(
            Method::POST,
            "/api/v1/jobs",
            json!({"kind": "geo", "all": true}),
        )
        .await;
    assert_eq!(job.status, 202, "{}", job.text());
    let id = job.json()["id"].as_i64().unwrap();
    let mut done = false;
    for _ in 0..200 {
        let j = a.get(&format!("/api/v1/jobs/{id}")).await.json();
        if j["state"] == "done" && j["progress"]["ok"] == 2 {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(done, "the geo job did not finish");

    let all = a.get("/api/v1/nodes").await.json();
    assert_eq!(all["items"][0]["status"], "not_tested");
    assert_eq!(all["items"][0]["geo"]["country_code"], "US");
    assert_eq!(all["items"][0]["geo"]["asn"], 64500);
    assert_eq!(all["items"][0]["geo"]["location_mismatch"], false);
    assert_eq!(all["items"][1]["geo"]["location_mismatch"], true);
    assert!(all["items"][0]["fraud"].is_null());

    let m = a.get("/api/v1/nodes?mismatch=true").await.json();
    assert_eq!(m["total"], 1);
    assert_eq!(m["items"][0]["ip"], "127.0.0.7");
    assert_eq!(
        a.get("/api/v1/nodes?mismatch=false").await.json()["total"],
        1
    );
    assert_eq!(a.get("/api/v1/nodes?asn=64500").await.json()["total"], 2);
    assert_eq!(a.get("/api/v1/nodes?asn=1").await.json()["total"], 0);

    // Fraud filters over a stored score.
    let second = NodeId(all["items"][1]["id"].as_i64().unwrap());
    a.store
        .enrich(vec![(
            second,
            EnrichmentUpdate::Fraud(FraudRecord {
                ip: "127.0.0.7".parse().unwrap(),
                score: 90,
                risk: Risk::VeryHigh,
                provider: "scamalytics".into(),
                at: chrono::Utc::now(),
            }),
        )])
        .await
        .unwrap();
    assert_eq!(a.get("/api/v1/nodes?fraud_max=89").await.json()["total"], 0);
    assert_eq!(a.get("/api/v1/nodes?fraud_max=90").await.json()["total"], 1);
    assert_eq!(
        a.get("/api/v1/nodes?risk=low,very_high").await.json()["total"],
        1
    );
    assert_eq!(a.get("/api/v1/nodes?risk=low").await.json()["total"], 0);
    a.get("/api/v1/nodes?risk=severe")
        .await
        .problem(400, "bad-request");
    a.get("/api/v1/nodes?fraud_max=101")
        .await
        .problem(400, "bad-request");
    let one = a.get(&format!("/api/v1/nodes/{}", second.0)).await.json();
    assert_eq!(one["fraud"]["score"], 90);
    assert_eq!(one["fraud"]["risk"], "very_high");
}
