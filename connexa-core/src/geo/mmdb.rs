//! The offline [`GeoLookup`]: MaxMind-format databases read with `maxminddb`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use maxminddb::Reader;
use serde_json::Value;

use crate::domain::GeoFacts;
use crate::import::location;
use crate::ports::{GeoLookup, LookupError};

/// A GEO database that cannot be used: reported at start, before any job.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GeoOpenError {
    /// The file cannot be read.
    #[error("GEO database {path}: cannot read it: {source}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a MaxMind-format database (or is damaged).
    #[error("GEO database {path}: not a valid MaxMind DB (.mmdb) file: {detail}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What the reader said.
        detail: String,
    },
    /// Neither a city nor an ASN database was given.
    #[error("no GEO database given: set [geo] city_db and/or asn_db")]
    NoDatabase,
}

/// City and ASN databases in MaxMind DB format, loaded into memory.
pub struct MmdbGeo {
    city: Option<Reader<Vec<u8>>>,
    asn: Option<Reader<Vec<u8>>>,
}

impl std::fmt::Debug for MmdbGeo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind =
            |r: &Option<Reader<Vec<u8>>>| r.as_ref().map(|r| r.metadata().database_type.clone());
        f.debug_struct("MmdbGeo")
            .field("city", &kind(&self.city))
            .field("asn", &kind(&self.asn))
            .finish()
    }
}

fn open(path: &Path) -> Result<Reader<Vec<u8>>, GeoOpenError> {
    let bytes = std::fs::read(path).map_err(|source| GeoOpenError::Unreadable {
        path: path.to_owned(),
        source,
    })?;
    let corrupt = |detail: String| GeoOpenError::Corrupt {
        path: path.to_owned(),
        detail,
    };
    let len = bytes.len() as u64;
    let reader = Reader::from_source(bytes).map_err(|e| corrupt(e.to_string()))?;
    // The metadata parses; check that the search tree fits in the file, so a
    // truncated file fails now rather than at the first lookup.
    let m = reader.metadata();
    let tree_bytes = u64::from(m.node_count) * u64::from(m.record_size) / 4;
    if !matches!(m.record_size, 24 | 28 | 32) || tree_bytes + 16 > len {
        return Err(corrupt(format!(
            "search tree of {} nodes of {} bits does not fit in {len} bytes",
            m.node_count, m.record_size
        )));
    }
    Ok(reader)
}

impl MmdbGeo {
    /// Opens the databases given (at least one). A missing, unreadable or
    /// corrupt file is an error naming it.
    pub fn open(city: Option<&Path>, asn: Option<&Path>) -> Result<Self, GeoOpenError> {
        if city.is_none() && asn.is_none() {
            return Err(GeoOpenError::NoDatabase);
        }
        Ok(MmdbGeo {
            city: city.map(open).transpose()?,
            asn: asn.map(open).transpose()?,
        })
    }

    /// Looks an address up in both databases, synchronously.
    pub fn lookup_now(&self, ip: IpAddr) -> Result<GeoFacts, LookupError> {
        let mut facts = GeoFacts::default();
        for reader in [&self.city, &self.asn].into_iter().flatten() {
            if let Some(v) = record(reader, ip)? {
                facts.fill_from(facts_of(&v));
            }
        }
        if facts.is_empty() {
            Err(LookupError::NotFound(ip))
        } else {
            Ok(facts)
        }
    }
}

fn record(reader: &Reader<Vec<u8>>, ip: IpAddr) -> Result<Option<Value>, LookupError> {
    // An IPv6 address in an IPv4-only database is simply not there.
    if ip.is_ipv6() && reader.metadata().ip_version == 4 {
        return Ok(None);
    }
    let found = reader
        .lookup(ip)
        .map_err(|e| LookupError::Failed(format!("GEO database lookup of {ip}: {e}")))?;
    found
        .decode::<Value>()
        .map_err(|e| LookupError::Failed(format!("GEO database record of {ip}: {e}")))
}

fn text(v: &Value, path: &[&str]) -> Option<String> {
    let mut cur = v;
    for p in path {
        cur = match (cur, p.parse::<usize>()) {
            (Value::Array(a), Ok(i)) => a.get(i)?,
            _ => cur.get(p)?,
        };
    }
    match cur {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        _ => None,
    }
}

fn number(v: &Value, path: &[&str]) -> Option<f64> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_f64()
}

/// The fields of a record in either layout: GeoIP2 (nested, `names.en`) or
/// ip-location-db's flat one.
fn facts_of(v: &Value) -> GeoFacts {
    let country_code = text(v, &["country", "iso_code"]).or_else(|| text(v, &["country_code"]));
    let country = text(v, &["country", "names", "en"]).or_else(|| {
        country_code
            .as_deref()
            .and_then(location::country)
            .map(str::to_owned)
    });
    GeoFacts {
        country,
        country_code,
        region: text(v, &["subdivisions", "0", "names", "en"]).or_else(|| text(v, &["state1"])),
        city: text(v, &["city", "names", "en"]).or_else(|| text(v, &["city"])),
        postal: text(v, &["postal", "code"]).or_else(|| text(v, &["postcode"])),
        latitude: number(v, &["location", "latitude"]).or_else(|| number(v, &["latitude"])),
        longitude: number(v, &["location", "longitude"]).or_else(|| number(v, &["longitude"])),
        time_zone: text(v, &["location", "time_zone"]).or_else(|| text(v, &["timezone"])),
        asn: v
            .get("autonomous_system_number")
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok()),
        org: text(v, &["autonomous_system_organization"]),
    }
}

#[async_trait]
impl GeoLookup for MmdbGeo {
    fn source(&self) -> String {
        "mmdb".into()
    }

    async fn lookup(&self, ip: IpAddr) -> Result<GeoFacts, LookupError> {
        self.lookup_now(ip)
    }
}
