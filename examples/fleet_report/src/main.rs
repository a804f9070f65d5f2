//! What `connexa sim`, `connexa import`, `connexa stats` and `connexa export` do,
//! embedded: read a configuration, start a small simulated fleet on loopback,
//! write its node list as CSV, import it into a temporary SQLite database, tag a
//! few nodes, print the counts per status and export the tagged nodes.
//! Run: `cargo run -p example-fleet-report` (finishes in well under a second).

use std::net::Ipv4Addr;
use std::sync::Arc;

use connexa_core::config::Config;
use connexa_core::domain::{NodeFilter, NodeId};
use connexa_core::export::ExportFormat;
use connexa_core::import::{ImportOptions, import_into};
use connexa_core::ops::{self, MetaPatch};
use connexa_core::sim::{Fleet, FleetSpec, parse_mix};
use connexa_core::store::SqlStore;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The operator's config file (every key optional; a typo is an error with its line).
    let config = Config::from_toml_str("[test]\nconcurrency = 64\nspeed_threshold_mbps = 2.5\n")?;
    println!(
        "config: concurrency {}, speed threshold {} Mbit/s",
        config.test.concurrency, config.test.speed_threshold_mbps
    );
    if let Err(e) = Config::from_toml_str("[test]\nconcurency = 64\n") {
        println!("a typo is caught: {e}");
    }

    // A simulated fleet on loopback, its list written as CSV (the port is a column).
    let fleet = Fleet::start(
        FleetSpec::new(12)
            .first_ip(Ipv4Addr::new(127, 31, 0, 1))
            .port(21724)
            .mix(parse_mix("healthy=8,refused=2,silent=2")?),
    )
    .await?;
    let mut list = Vec::new();
    fleet.write_list(ExportFormat::Csv, &mut list)?;

    // Import it into a throw-away database.
    let dir = std::env::temp_dir().join(format!("connexa-fleet-report-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let url = format!("sqlite://{}?mode=rwc", dir.join("fleet.db").display());
    let store = Arc::new(SqlStore::connect(&url).await?);
    let report = import_into(
        store.clone(),
        std::io::Cursor::new(list),
        ImportOptions::default(),
    )
    .await;
    println!("import: {report}");

    // Tag the first three nodes, as `connexa nodes edit ID --comment rack-7` would.
    for id in 1..=3 {
        let patch = MetaPatch {
            comment: Some("rack-7".into()),
            ..MetaPatch::default()
        };
        ops::edit_meta(store.as_ref(), NodeId(id), &patch).await?;
    }

    let stats = ops::stats(store.as_ref()).await?;
    for c in stats.by_status.iter().filter(|c| c.count > 0) {
        println!("{:<12} {}", c.status.as_str(), c.count);
    }

    let tagged = NodeFilter {
        comment: Some("RACK-7".into()),
        ..NodeFilter::all()
    };
    let mut out = Vec::new();
    let n = ops::export(store.as_ref(), &tagged, ExportFormat::Pptp, &mut out).await?;
    print!(
        "export of the {n} tagged nodes:\n{}",
        String::from_utf8(out)?
    );
    anyhow::ensure!(n == 3 && stats.total == 12, "unexpected counts");

    drop(store);
    fleet.shutdown();
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
