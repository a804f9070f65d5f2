//! Offline GEO benchmark: lookup + commit of N nodes (default 100,000) against
//! a MaxMind-format city + ASN database this binary writes, as a ratio to a
//! plain UPDATE of the same rows with the same columns (no lookup), measured
//! in the same run on the same SQLite file. Prints figures for
//! docs/benchmarks.md; asserts nothing about time.
//!
//! ```text
//! cargo run --release -p connexa-tests --bin bench_geo -- [--nodes N] [--batch B]
//! ```
//!
//! Phases, each over every node:
//!
//! * `plain update`: `NodeStore::enrich` with one constant GEO record, in
//!   transactions of B rows (the baseline: the commit alone);
//! * `lookup + commit`: `MmdbGeo::lookup_now` for each node's address, then
//!   the same `enrich` transactions of B rows;
//! * `geo job`: a `geo` job through the engine (claims, per-item tasks,
//!   group commits of results and enrichment, progress rows).

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use connexa_core::domain::{EnrichmentUpdate, GeoFacts, GeoRecord, NewNode, NodeFilter, NodeId};
use connexa_core::engine::{Engine, EngineConfig, JobOptions, NotAvailable};
use connexa_core::geo::{MmdbGeo, MmdbWriter};
use connexa_core::ports::{InsertOutcome, JobKind, NodeStore, ProbeDepth, ProbeError, Prober};
use connexa_core::store::SqlStore;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct NoProber;

#[async_trait::async_trait]
impl Prober for NoProber {
    async fn probe(
        &self,
        _: &connexa_core::domain::Node,
        _: ProbeDepth,
    ) -> Result<connexa_core::domain::Outcome, ProbeError> {
        Err(ProbeError::Config("a GEO benchmark probes nothing".into()))
    }
}

/// Node i's address: 10.a.b.c over 4,096 /24 networks.
fn addr(i: usize) -> String {
    let net = i % 4096;
    format!(
        "10.{}.{}.{}",
        net >> 4,
        (net & 15) * 16 + (i / 4096) % 16,
        1 + (i / 65_536) % 250
    )
}

fn databases(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let mut city = MmdbWriter::new("GeoLite2-City");
    let mut asn = MmdbWriter::new("GeoLite2-ASN");
    for a in 0..=255u32 {
        for b in 0..=255u32 {
            if (a * 256 + b) % 7 == 6 {
                continue; // about one network in seven is unknown
            }
            let net = format!("10.{a}.{b}.0/24").parse().unwrap();
            let code = ["US", "DE", "NL", "GB"][(b % 4) as usize];
            let rec = serde_json::json!({
                "city": {"names": {"en": format!("City {}", (a * 256 + b) % 997)}},
                "country": {"iso_code": code},
                "location": {"latitude": f64::from(a) / 3.0, "longitude": f64::from(b) / 3.0, "time_zone": "Etc/UTC"},
                "postal": {"code": format!("{:05}", a * 256 + b)},
                "subdivisions": [{"names": {"en": format!("Region {}", b % 50)}}]
            });
            city.insert(net, rec).unwrap();
        }
        asn.insert(
            format!("10.{a}.0.0/16").parse().unwrap(),
            serde_json::json!({"autonomous_system_number": 64_512 + a, "autonomous_system_organization": format!("Org {a}")}),
        )
        .unwrap();
    }
    let (c, s) = (dir.join("city.mmdb"), dir.join("asn.mmdb"));
    std::fs::write(&c, city.to_bytes().unwrap()).unwrap();
    std::fs::write(&s, asn.to_bytes().unwrap()).unwrap();
    (c, s)
}

#[tokio::main]
async fn main() {
    let n = arg("--nodes", 100_000);
    let batch = arg("--batch", 512).max(1);
    let dir = std::env::temp_dir().join(format!("connexa-bench-geo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.join("bench.db").display());
    let store = Arc::new(SqlStore::connect(&url).await.unwrap());
    let (city, asn) = databases(&dir);
    let geo = MmdbGeo::open(Some(&city), Some(&asn)).unwrap();

    let mut ids: Vec<(NodeId, std::net::IpAddr)> = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(10_000) {
        let nodes: Vec<NewNode> = chunk
            .iter()
            .map(|i| NewNode::new(&addr(*i), 1723, &format!("u{i}"), "pw").unwrap())
            .collect();
        let ips: Vec<_> = nodes.iter().map(NewNode::ip).collect();
        for (o, ip) in store.insert(nodes).await.unwrap().into_iter().zip(ips) {
            match o {
                InsertOutcome::Inserted(id) => ids.push((id, ip)),
                other => panic!("{other:?}"),
            }
        }
    }
    println!("bench_geo: {n} nodes, transactions of {batch} rows, SQLite at {url}");

    // Baseline: the same UPDATE with a constant record (no lookup).
    let constant = GeoFacts {
        country_code: Some("US".into()),
        region: Some("Region 1".into()),
        city: Some("City 1".into()),
        postal: Some("00001".into()),
        latitude: Some(1.0),
        longitude: Some(2.0),
        time_zone: Some("Etc/UTC".into()),
        asn: Some(64_512),
        org: Some("Org 0".into()),
        ..GeoFacts::default()
    };
    let t = Instant::now();
    for chunk in ids.chunks(batch) {
        let updates = chunk
            .iter()
            .map(|(id, ip)| {
                let r = GeoRecord {
                    ip: *ip,
                    facts: constant.clone(),
                    source: "mmdb".into(),
                    at: Utc::now(),
                    location_mismatch: None,
                };
                (*id, EnrichmentUpdate::Geo(r))
            })
            .collect();
        store.enrich(updates).await.unwrap();
    }
    let plain = t.elapsed();

    // Lookup + commit.
    let t = Instant::now();
    let mut found = 0usize;
    for chunk in ids.chunks(batch) {
        let mut updates = Vec::with_capacity(chunk.len());
        for (id, ip) in chunk {
            if let Ok(facts) = geo.lookup_now(*ip) {
                found += 1;
                updates.push((
                    *id,
                    EnrichmentUpdate::Geo(GeoRecord {
                        ip: *ip,
                        facts,
                        source: "mmdb".into(),
                        at: Utc::now(),
                        location_mismatch: None,
                    }),
                ));
            }
        }
        store.enrich(updates).await.unwrap();
    }
    let looked = t.elapsed();

    // Lookups alone (no store), for the split.
    let t = Instant::now();
    let mut again = 0usize;
    for (_, ip) in &ids {
        again += usize::from(geo.lookup_now(*ip).is_ok());
    }
    let lookups = t.elapsed();
    assert_eq!(again, found);

    // The engine's geo job.
    let engine = Engine::new(
        store.clone(),
        Arc::new(NoProber),
        Arc::new(NotAvailable),
        Arc::new(NotAvailable),
        EngineConfig::default(),
    );
    engine.set_geo(Arc::new(geo));
    let t = Instant::now();
    let job = engine
        .start_job(JobKind::Geo, NodeFilter::all(), JobOptions::default())
        .await
        .unwrap();
    let sum = engine.wait(job).await.unwrap();
    let job_time = t.elapsed();
    assert_eq!(sum.progress.ok as usize, found);

    let rate = |d: std::time::Duration, rows: usize| rows as f64 / d.as_secs_f64();
    println!("  found in the databases: {found} of {n}");
    println!(
        "  plain update          {:>8.2} s  {:>9.0} rows/s  1.00x",
        plain.as_secs_f64(),
        rate(plain, n)
    );
    println!(
        "  lookup + commit       {:>8.2} s  {:>9.0} nodes/s {:.2}x the plain update's time (lookups alone: {:.2} s, {:.0}/s)",
        looked.as_secs_f64(),
        rate(looked, n),
        looked.as_secs_f64() / plain.as_secs_f64(),
        lookups.as_secs_f64(),
        rate(lookups, n)
    );
    println!(
        "  geo job (engine)      {:>8.2} s  {:>9.0} nodes/s {:.2}x the plain update's time",
        job_time.as_secs_f64(),
        rate(job_time, n),
        job_time.as_secs_f64() / plain.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
