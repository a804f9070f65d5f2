//! GEO enrichment offline: writes a tiny MaxMind-format city database and an
//! ASN database (the layout of GeoLite2 City / ASN), opens them with
//! `MmdbGeo` — what `[geo] city_db` / `asn_db` configure — and looks an
//! address up through the `GeoLookup` port, as a `geo` job does.
//!
//! ```text
//! cargo run -p example-geo-lookup
//! ```

use anyhow::{Context, ensure};
use connexa_core::geo::{MmdbGeo, MmdbWriter};
use connexa_core::ports::GeoLookup;
use serde_json::json;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut city = MmdbWriter::new("GeoLite2-City");
    city.insert(
        "198.51.100.0/24".parse()?,
        json!({
            "city": {"names": {"en": "Austin"}},
            "country": {"iso_code": "US", "names": {"en": "United States"}},
            "location": {"latitude": 30.2672, "longitude": -97.7431, "time_zone": "America/Chicago"},
            "postal": {"code": "78701"},
            "subdivisions": [{"iso_code": "TX", "names": {"en": "Texas"}}]
        }),
    )?;
    let mut asn = MmdbWriter::new("GeoLite2-ASN");
    asn.insert(
        "198.51.100.0/24".parse()?,
        json!({"autonomous_system_number": 64500, "autonomous_system_organization": "Example Transit"}),
    )?;
    let city_path = dir.path().join("city.mmdb");
    let asn_path = dir.path().join("asn.mmdb");
    std::fs::write(&city_path, city.to_bytes()?)?;
    std::fs::write(&asn_path, asn.to_bytes()?)?;

    let geo = MmdbGeo::open(Some(&city_path), Some(&asn_path)).context("open the databases")?;
    let facts = geo.lookup("198.51.100.7".parse()?).await?;
    println!(
        "198.51.100.7: {} / {} / {} ({}), AS{} {}",
        facts.country_code.as_deref().unwrap_or("-"),
        facts.region.as_deref().unwrap_or("-"),
        facts.city.as_deref().unwrap_or("-"),
        facts.time_zone.as_deref().unwrap_or("-"),
        facts.asn.unwrap_or(0),
        facts.org.as_deref().unwrap_or("-"),
    );
    ensure!(facts.country_code.as_deref() == Some("US"));
    ensure!(facts.city.as_deref() == Some("Austin"));
    ensure!(facts.asn == Some(64500));
    // An address no database knows: nothing found, not an error to panic on.
    let none = geo.lookup("192.0.2.1".parse()?).await;
    println!("192.0.2.1: {none:?}");
    Ok(())
}
