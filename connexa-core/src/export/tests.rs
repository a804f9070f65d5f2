use chrono::{TimeZone, Utc};

use super::*;
use crate::domain::{NodeId, Secret, ServiceEndpoint};

pub(crate) fn node(id: i64, ip: &str, port: u16, login: &str, password: &str) -> Node {
    let t = Utc
        .with_ymd_and_hms(2025, 9, 3, 16, 5, 25)
        .single()
        .unwrap_or_default();
    Node::added(
        NodeId(id),
        ip.parse().unwrap(),
        port,
        login,
        Secret::new(password),
        t,
    )
}

fn sample() -> Vec<Node> {
    let mut a = node(1, "198.51.100.23", 1723, "admin", "admin");
    a.meta.country = Some("United States".into());
    a.meta.state = Some("California".into());
    a.meta.comment = Some("says \"hi\", twice\nnew line".into());
    a.status = Status::Online;
    a.service = Some(ServiceEndpoint {
        host: "127.0.0.1".into(),
        port: 10801,
        username: "u1".into(),
        password: Secret::new("p@ss:w/rd"),
    });
    let mut b = node(2, "2001:db8::1", 1724, "v6", "pa:ss");
    b.status = Status::Offline;
    b.service = Some(ServiceEndpoint {
        host: "::1".into(),
        port: 10802,
        username: "u2".into(),
        password: Secret::new("x"),
    });
    let c = node(3, "192.0.2.35", 1723, "user", " spaced ");
    let mut d = node(4, "192.0.2.36", 1723, "user", "a:US:Arizona:85001");
    d.status = Status::Online;
    d.service = Some(ServiceEndpoint {
        host: "2001:db8::9".into(),
        port: 1080,
        username: "u4".into(),
        password: Secret::new("y"),
    });
    vec![a, b, c, d]
}

fn export(format: ExportFormat) -> String {
    let mut out = Vec::new();
    write(format, &sample(), &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

#[test]
fn txt() {
    assert_eq!(
        export(ExportFormat::Txt),
        "198.51.100.23 admin admin United States\n\
         [2001:db8::1]:1724 v6 pa:ss\n\
         # node 3 (192.0.2.35) not exported: its login or password cannot be written in the txt format so that it reads back (use csv or json)\n\
         192.0.2.36 user a:US:Arizona:85001\n"
    );
}

/// The empty enrichment cells of a node never looked up.
const E: &str = ",,,,,,,,,,,,,,";

#[test]
fn csv_quotes_what_needs_quoting() {
    assert_eq!(
        export(ExportFormat::Csv),
        format!(
            "{}198.51.100.23,1723,admin,admin,United States,California,,,,\"says \"\"hi\"\", twice\nnew line\"{E}\n\
             2001:db8::1,1724,v6,pa:ss,,,,,,{E}\n\
             192.0.2.35,1723,user,\" spaced \",,,,,,{E}\n\
             192.0.2.36,1723,user,a:US:Arizona:85001,,,,,,{E}\n",
            CSV_HEADER
        )
    );
}

#[test]
fn json_is_an_array_with_one_object_per_line() {
    let text = export(ExportFormat::Json);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let arr = v.as_array().unwrap();
    assert_eq!(arr.len(), 4);
    assert_eq!(arr[0]["ip"], "198.51.100.23");
    assert_eq!(arr[0]["password"], "admin");
    assert_eq!(arr[0]["status"], "online");
    assert_eq!(arr[1]["port"], 1724);
    assert_eq!(arr[1]["country"], serde_json::Value::Null);
    assert_eq!(text.lines().count(), 6);
}

#[test]
fn pptp_brackets_only_what_would_misread() {
    assert_eq!(
        export(ExportFormat::Pptp),
        "198.51.100.23:admin:admin\n\
         [2001:db8::1]:1724:v6:pa:ss\n\
         # node 3 (192.0.2.35) not exported: its login or password cannot be written in the pptp format so that it reads back (use csv or json)\n\
         [192.0.2.36]:1723:user:a:US:Arizona:85001\n"
    );
}

#[test]
fn socks_lists_only_running_healthy_services() {
    assert_eq!(
        export(ExportFormat::Socks),
        "socks5://u1:p%40ss%3Aw%2Frd@127.0.0.1:10801\nsocks5://u4:y@[2001:db8::9]:1080\n"
    );
    assert_eq!(
        export(ExportFormat::SocksColon),
        "127.0.0.1:10801:u1:p@ss:w/rd\n[2001:db8::9]:1080:u4:y\n"
    );
}

#[test]
fn format_names_round_trip() {
    for f in ExportFormat::ALL {
        assert_eq!(f.as_str().parse::<ExportFormat>(), Ok(f));
        assert_eq!(f.to_string(), f.as_str());
    }
    assert_eq!("SOCKS5".parse::<ExportFormat>(), Ok(ExportFormat::Socks));
    assert_eq!(
        "ovpn".parse::<ExportFormat>(),
        Err(UnknownFormat("ovpn".into()))
    );
}

#[test]
fn a_failing_writer_is_an_error() {
    struct Full;
    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let err = write(ExportFormat::Csv, &sample(), Full).unwrap_err();
    assert!(matches!(err, ExportError::Io(e) if e.kind() == io::ErrorKind::StorageFull));
}

/// A login with `:` cannot be written in the pptp format (`[ip]:port:a:b:c:d`
/// read back as login `a`): the node is refused with a comment that names it,
/// never written as a line that imports as another node, and no secret shows.
#[test]
fn line_formats_refuse_what_would_read_back_as_another_node() {
    let nodes = [
        node(7, "192.0.2.7", 1723, "a:b", "c:d"),
        node(8, "192.0.2.8", 1723, "ok", "fine"),
    ];
    for format in [ExportFormat::Pptp, ExportFormat::Txt] {
        let mut out = Vec::new();
        let n = write(format, &nodes, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            n,
            if format == ExportFormat::Pptp { 1 } else { 2 },
            "{text}"
        );
        let report = crate::import::parse(text.as_bytes()).collect::<Vec<_>>();
        for row in report.iter().flatten() {
            assert!(
                nodes.iter().any(|n| n.login == row.node.login()
                    && n.password.expose() == row.node.password().expose()),
                "{format}: {text:?} read back as another node"
            );
        }
        if format == ExportFormat::Pptp {
            assert!(
                text.starts_with("# node 7 (192.0.2.7) not exported"),
                "{text}"
            );
            assert!(!text.contains("c:d"), "{text}");
        }
    }
}

#[test]
fn csv_and_json_carry_the_enrichment_and_csv_reads_back() {
    use crate::domain::{FraudRecord, GeoFacts, GeoRecord, Risk};
    let mut n = node(7, "203.0.113.9", 1723, "u", "p");
    let at = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).single().unwrap();
    n.enrichment.geo = Some(GeoRecord {
        ip: n.ip,
        facts: GeoFacts {
            country_code: Some("US".into()),
            region: Some("Texas".into()),
            city: Some("Austin, TX".into()),
            latitude: Some(30.25),
            asn: Some(7922),
            org: Some("Comcast".into()),
            ..GeoFacts::default()
        },
        source: "mmdb".into(),
        at,
        location_mismatch: Some(true),
    });
    n.enrichment.fraud = Some(FraudRecord {
        ip: n.ip,
        score: 81,
        risk: Risk::VeryHigh,
        provider: "scamalytics".into(),
        at,
    });
    let mut out = Vec::new();
    write(ExportFormat::Csv, [&n], &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(
        text.lines().nth(1),
        Some(
            "203.0.113.9,1723,u,p,,,,,,,203.0.113.9,US,Texas,\"Austin, TX\",,30.25,,,7922,Comcast,true,81,very_high,scamalytics"
        )
    );
    // The import reads the node back and ignores the enrichment columns.
    let parsed: Vec<_> = crate::import::parse(text.as_bytes()).collect();
    assert_eq!(parsed.len(), 1, "{parsed:?}");
    let node = parsed[0].as_ref().expect("read back");
    assert_eq!((node.node.ip(), node.node.login()), (n.ip, "u"));

    let mut out = Vec::new();
    write(ExportFormat::Json, [&n], &mut out).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v[0]["geo"]["asn"], 7922);
    assert_eq!(v[0]["geo"]["location_mismatch"], true);
    assert_eq!(v[0]["fraud"]["risk"], "very_high");
    let plain = node_json(&node_fixture_without_enrichment());
    assert!(plain.get("geo").is_none() && plain.get("fraud").is_none());
}

fn node_fixture_without_enrichment() -> Node {
    node(8, "203.0.113.10", 1723, "u", "p")
}

fn node_json(n: &Node) -> serde_json::Value {
    let mut out = Vec::new();
    write(ExportFormat::Json, [n], &mut out).unwrap();
    serde_json::from_slice::<serde_json::Value>(&out).unwrap()[0].clone()
}

#[test]
fn csv_neutralizes_formulas_in_hostile_cells_and_reads_them_back_exactly() {
    let hostile = [
        "=HYPERLINK(\"http://evil\",\"x\")",
        "+cmd|' /C calc'!A0",
        "-2+3+cmd|' /C calc'!A0",
        "@SUM(1+1)*cmd|' /C calc'!A0",
        "'=already quoted",
    ];
    for (i, text) in hostile.iter().enumerate() {
        let mut n = node(20 + i as i64, "203.0.113.20", 1723, "u", text);
        n.meta.comment = Some((*text).to_owned());
        n.meta.city = Some((*text).to_owned());
        let mut out = Vec::new();
        write(ExportFormat::Csv, [&n], &mut out).unwrap();
        let csv_text = String::from_utf8(out).unwrap();
        let row = csv_text.lines().skip(1).collect::<Vec<_>>().join("\n");
        // No cell of the row starts with a formula trigger.
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(row.as_bytes());
        for rec in reader.records() {
            for cell in rec.unwrap().iter() {
                assert!(
                    !cell.starts_with(FORMULA_TRIGGERS),
                    "a cell starts with a formula trigger: {cell:?} in {row:?}"
                );
            }
        }
        // The import reads the exact values back.
        let parsed: Vec<_> = crate::import::parse(csv_text.as_bytes()).collect();
        assert_eq!(parsed.len(), 1, "{csv_text:?}: {parsed:?}");
        let back = parsed[0].as_ref().expect("read back");
        assert_eq!(back.node.password().expose(), *text);
        assert_eq!(back.node.meta.comment.as_deref(), Some(*text));
        assert_eq!(back.node.meta.city.as_deref(), Some(*text));
    }
    // Tab and CR (which no stored field can hold: the import refuses
    // control characters) are guarded too.
    assert_eq!(neutralize_formula("\tx"), "'\tx");
    assert_eq!(neutralize_formula("\rx"), "'\rx");
    // Numbers stay numbers (a negative longitude is no formula).
    assert_eq!(neutralize_formula("-122.42"), "-122.42");
    assert_eq!(neutralize_formula("+1"), "+1");
}
