//! Every import format against realistic fixture files (written by
//! `tests/fixtures/import/generate.py`, with BOMs, CRLF, tabs, trailing spaces,
//! emoji headers and Cyrillic comments), read from disk.

use std::fs::File;
use std::path::PathBuf;

use connexa_core::import::{ErrorReason, Format, ImportError, ParsedNode, parse};

fn fixture(name: &str) -> File {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "tests/fixtures/import", name]
        .iter()
        .collect();
    File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The parser's rows, without the lines it reports as holding no node
/// (headers and names: [`ErrorReason::NotANode`], listed in the report's
/// `ignored`, see `headers_and_names_are_reported_as_ignored`).
fn rows(name: &str) -> Vec<Result<ParsedNode, ImportError>> {
    parse(fixture(name))
        .filter(|r| !matches!(r, Err(e) if e.reason == ErrorReason::NotANode))
        .collect()
}

/// (line, format, ip, port, login, password, country, state, city, zip)
type Want<'a> = (
    usize,
    Format,
    &'a str,
    u16,
    &'a str,
    &'a str,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
);

fn check(name: &str, want: &[Want]) {
    let got = rows(name);
    let got: Vec<&ParsedNode> = got
        .iter()
        .map(|r| {
            r.as_ref()
                .unwrap_or_else(|e| panic!("{name}: unexpected error {e}"))
        })
        .collect();
    assert_eq!(got.len(), want.len(), "{name}: {got:#?}");
    for (g, w) in got.iter().zip(want) {
        let n = &g.node;
        let m = &n.meta;
        let actual: Want = (
            g.line,
            g.format,
            &n.ip().to_string(),
            n.port(),
            n.login(),
            n.password().expose(),
            m.country.as_deref(),
            m.state.as_deref(),
            m.city.as_deref(),
            m.zipcode.as_deref(),
        );
        // `ip` is compared as text; re-borrow to keep the tuple types equal.
        assert_eq!(
            format!("{actual:?}"),
            format!("{w:?}"),
            "{name} line {}",
            g.line
        );
    }
}

const US: Option<&str> = Some("United States");

#[test]
fn format_1_key_value_blocks() {
    use Format::KeyValue as K;
    check(
        "1_key_value.txt",
        &[
            (
                4,
                K,
                "203.0.113.7",
                1723,
                "admin",
                "admin",
                None,
                Some("California"),
                Some("Pasadena"),
                Some("91101"),
            ),
            (
                11,
                K,
                "203.0.113.8",
                1723,
                "vpnuser",
                "Qw3rty!#x",
                None,
                Some("Texas"),
                Some("Austin"),
                Some("78701"),
            ),
            (
                19,
                K,
                "203.0.113.9",
                1723,
                "user9",
                "p@ss word",
                US,
                Some("New York"),
                None,
                None,
            ),
            (
                25,
                K,
                "203.0.113.10",
                1723,
                "admin",
                "admin:colon",
                Some("Germany"),
                Some("Bavaria"),
                Some("München"),
                None,
            ),
        ],
    );
    let provider = rows("1_key_value.txt")[1]
        .as_ref()
        .unwrap()
        .node
        .meta
        .provider
        .clone();
    assert_eq!(provider.as_deref(), Some("Comcast"));
}

#[test]
fn format_2_whitespace_columns() {
    use Format::Columns as C;
    check(
        "2_columns.txt",
        &[
            (
                2,
                C,
                "198.51.100.23",
                1723,
                "admin",
                "admin",
                None,
                Some("California"),
                None,
                None,
            ),
            (
                3,
                C,
                "198.51.100.24",
                1723,
                "user1",
                "secret1",
                None,
                Some("Texas"),
                None,
                None,
            ),
            (
                4,
                C,
                "198.51.100.25",
                1723,
                "root",
                "toor",
                None,
                None,
                None,
                None,
            ),
            (
                5,
                C,
                "198.51.100.26",
                1724,
                "admin",
                "pa$$",
                None,
                Some("New York"),
                None,
                None,
            ),
        ],
    );
}

#[test]
fn format_3_dash_pipe() {
    use Format::DashPipe as D;
    check(
        "3_dash_pipe.txt",
        &[
            (
                2,
                D,
                "198.51.100.4",
                1723,
                "admin",
                "admin",
                None,
                Some("Arizona"),
                Some("Phoenix"),
                Some("85001"),
            ),
            (
                3,
                D,
                "198.51.100.5",
                1723,
                "user",
                "pa:ss",
                None,
                Some("Texas"),
                Some("Dallas"),
                None,
            ),
            (
                4,
                D,
                "198.51.100.6",
                1723,
                "guest",
                "guest",
                None,
                None,
                None,
                None,
            ),
        ],
    );
}

#[test]
fn format_4_colon_with_location() {
    use Format::ColonLocation as L;
    check(
        "4_colon_location.txt",
        &[
            (
                2,
                L,
                "198.51.100.52",
                1723,
                "admin",
                "admin",
                US,
                Some("Arizona"),
                None,
                Some("85001"),
            ),
            (
                3,
                L,
                "198.51.100.53",
                1723,
                "user",
                "Pa55w0rd",
                US,
                Some("California"),
                None,
                Some("90001"),
            ),
            (
                4,
                L,
                "198.51.100.54",
                1723,
                "vpn",
                "vpn",
                Some("Canada"),
                Some("Ontario"),
                None,
                None,
            ),
        ],
    );
}

#[test]
fn format_5_credentials_blocks_with_fraud_lines() {
    use Format::CredentialsBlock as B;
    check(
        "5_credentials.txt",
        &[
            (
                1,
                B,
                "203.0.113.13",
                1723,
                "admin",
                "admin",
                None,
                Some("Texas"),
                Some("Austin"),
                Some("78701"),
            ),
            (
                8,
                B,
                "203.0.113.14",
                1723,
                "office",
                "0ff1ce:2024",
                US,
                Some("Washington"),
                Some("Mill Creek"),
                Some("98012"),
            ),
            (
                15,
                B,
                "203.0.113.15",
                1723,
                "test",
                "test",
                US,
                Some("Florida"),
                Some("Miami"),
                None,
            ),
        ],
    );
}

#[test]
fn format_6_blocks_after_seller_and_emoji_headers() {
    use Format::CredentialsBlock as B;
    check(
        "6_headers.txt",
        &[
            (
                3,
                B,
                "203.0.113.21",
                1723,
                "admin",
                "admin",
                US,
                Some("Washington"),
                Some("Seattle"),
                Some("98101"),
            ),
            (
                12,
                B,
                "203.0.113.22",
                1723,
                "svc",
                "Sv€rdlovsk",
                None,
                Some("Georgia"),
                Some("Atlanta"),
                Some("30301"),
            ),
        ],
    );
}

#[test]
fn format_7_plain_colon() {
    use Format::Colon as C;
    check(
        "7_colon.txt",
        &[
            (
                2,
                C,
                "192.0.2.35",
                1723,
                "admin",
                "password123",
                None,
                None,
                None,
                None,
            ),
            (
                3,
                C,
                "192.0.2.36",
                1723,
                "admin",
                "pass:with:colons",
                None,
                None,
                None,
                None,
            ),
            (
                4,
                C,
                "192.0.2.37",
                1723,
                "user",
                " leading-space",
                None,
                None,
                None,
                None,
            ),
            (5, C, "192.0.2.38", 1723, "user", "", None, None, None, None),
            (
                6,
                C,
                "2001:db8::7",
                1724,
                "v6user",
                "v6:pass",
                None,
                None,
                None,
                None,
            ),
        ],
    );
}

#[test]
fn format_8_csv_in_any_column_order() {
    use Format::Csv as C;
    check(
        "8_table.csv",
        &[
            (
                2,
                C,
                "203.0.113.31",
                1723,
                "admin",
                "admin",
                US,
                Some("California"),
                Some("Pasadena"),
                Some("91101"),
            ),
            (
                3,
                C,
                "203.0.113.32",
                1724,
                "user2",
                "pa,ss \"quoted\"",
                Some("Germany"),
                None,
                Some("Berlin"),
                None,
            ),
            (
                5,
                C,
                "203.0.113.33",
                1723,
                "user3",
                " spaced ",
                None,
                Some("Texas"),
                None,
                Some("78701"),
            ),
        ],
    );
    let r = rows("8_table.csv");
    let second = &r[1].as_ref().unwrap().node.meta;
    assert_eq!(second.comment.as_deref(), Some("multi\nline comment"));
    let first = &r[0].as_ref().unwrap().node.meta;
    assert_eq!(first.provider.as_deref(), Some("Comcast"));
}

#[test]
fn format_8_json_array() {
    use Format::Json as J;
    check(
        "8_list.json",
        &[
            (
                2,
                J,
                "203.0.113.41",
                1723,
                "admin",
                "admin",
                US,
                Some("California"),
                None,
                Some("91101"),
            ),
            (
                11,
                J,
                "203.0.113.42",
                1724,
                "user",
                "p\"w",
                None,
                None,
                None,
                None,
            ),
            (
                12,
                J,
                "2001:db8::42",
                1723,
                "v6",
                "",
                None,
                None,
                None,
                None,
            ),
        ],
    );
}

#[test]
fn a_file_mixing_every_format() {
    let got: Vec<(usize, Format, String)> = rows("mixed.txt")
        .into_iter()
        .map(|r| {
            let p = r.unwrap_or_else(|e| panic!("unexpected error {e}"));
            (p.line, p.format, p.node.ip().to_string())
        })
        .collect();
    let want = [
        (3, Format::KeyValue, "203.0.113.7"),
        (10, Format::Columns, "198.51.100.23"),
        (11, Format::DashPipe, "198.51.100.4"),
        (12, Format::ColonLocation, "198.51.100.52"),
        (13, Format::CredentialsBlock, "203.0.113.13"),
        (20, Format::CredentialsBlock, "203.0.113.14"),
        (23, Format::Colon, "192.0.2.35"),
        (25, Format::Csv, "203.0.113.31"),
        (27, Format::Json, "203.0.113.41"),
        (28, Format::Colon, "192.0.2.99"),
    ];
    let want: Vec<(usize, Format, String)> = want
        .iter()
        .map(|(l, f, ip)| (*l, *f, (*ip).to_owned()))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn errors_carry_line_numbers_reasons_and_masked_text() {
    use connexa_core::domain::InvalidNode;
    let all = rows("errors.txt");
    let errors: Vec<&ImportError> = all.iter().filter_map(|r| r.as_ref().err()).collect();
    let nodes: Vec<usize> = all
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|p| p.line)
        .collect();
    assert_eq!(nodes, vec![12, 16], "the good rows around the bad ones");
    let got: Vec<(usize, &str)> = errors.iter().map(|e| (e.line, e.text.as_str())).collect();
    assert_eq!(
        got,
        vec![
            (2, "198.51.100.300:admin:***"),
            (3, "198.51.100.7 admin"),
            (4, "Ip: 203.0.113.500 | Login: admin | Pass: ***"),
            (8, "Login: orphan | Pass: ***"),
            (10, "198.51.100.8:99999 admin ***"),
            (11, "Total ***"),
            (13, "0.0.0.0:admin:***"),
            (15, "203.0.113.77,,***"),
        ]
    );
    assert!(matches!(
        &errors[0].reason,
        ErrorReason::Invalid(InvalidNode::BadIp { .. })
    ));
    assert_eq!(errors[1].reason, ErrorReason::MissingPassword);
    assert!(matches!(
        &errors[2].reason,
        ErrorReason::Invalid(InvalidNode::BadIp { .. })
    ));
    assert_eq!(errors[3].reason, ErrorReason::MissingIp);
    assert_eq!(
        errors[4].reason,
        ErrorReason::Invalid(InvalidNode::BadPort { given: 99999 })
    );
    assert_eq!(errors[5].reason, ErrorReason::Unrecognised);
    assert!(matches!(
        &errors[6].reason,
        ErrorReason::Invalid(InvalidNode::UnusableIp { .. })
    ));
    assert_eq!(
        errors[7].reason,
        ErrorReason::Invalid(InvalidNode::EmptyLogin)
    );
    for e in &errors {
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains("topsecret"), "{shown}");
    }
    assert_eq!(
        errors[0].to_string(),
        "line 2: invalid IP address \"198.51.100.300\": 198.51.100.300:admin:***"
    );
}

#[test]
fn a_reader_that_fails_midway_ends_with_an_io_error() {
    struct Failing(usize);
    impl std::io::Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Err(std::io::Error::other("disk gone"));
            }
            self.0 -= 1;
            let line = b"192.0.2.1:a:b\n";
            buf[..line.len()].copy_from_slice(line);
            Ok(line.len())
        }
    }
    let got: Vec<_> = parse(Failing(3)).collect();
    assert_eq!(got.len(), 4);
    assert!(got[..3].iter().all(Result::is_ok));
    let e = got[3].as_ref().unwrap_err();
    assert_eq!(e.reason, ErrorReason::Io("disk gone".into()));
    assert_eq!(e.line, 4);
}

#[test]
fn a_large_input_is_streamed_not_slurped() {
    // Format-1 blocks produced on the fly; the reader counts what it handed out.
    // Every node must come out while the parser has read at most a buffer
    // (128 KiB) beyond it: the input is never held at once.
    use std::cell::Cell;
    use std::rc::Rc;
    struct Generated {
        left: usize,
        pending: Vec<u8>,
        read: Rc<Cell<usize>>,
    }
    impl std::io::Read for Generated {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.pending.is_empty() {
                if self.left == 0 {
                    return Ok(0);
                }
                self.left -= 1;
                let i = self.left;
                self.pending = format!(
                    "Ip: 10.{}.{}.{}\tseller\nLogin: user{i}\nPass: pass{i}\nState: CA\nCity: Los Angeles\nZip: 90001\n\n",
                    (i >> 16) & 255,
                    (i >> 8) & 255,
                    i & 255
                )
                .into_bytes();
            }
            let n = self.pending.len().min(buf.len());
            buf[..n].copy_from_slice(&self.pending[..n]);
            self.pending.drain(..n);
            self.read.set(self.read.get() + n);
            Ok(n)
        }
    }
    let blocks = 20_000;
    let read = Rc::new(Cell::new(0));
    let parser = parse(Generated {
        left: blocks,
        pending: Vec::new(),
        read: read.clone(),
    });
    let block_len = "Ip: 10.0.0.0\tseller\nLogin: user0\nPass: pass0\nState: CA\nCity: Los Angeles\nZip: 90001\n\n".len();
    let mut count = 0;
    for row in parser {
        assert!(row.is_ok());
        count += 1;
        // The parser has consumed about `count` blocks, plus one buffer.
        assert!(
            read.get() <= (count + 1) * (block_len + 12) + 128 * 1024 + 4096,
            "read {} bytes for {count} nodes",
            read.get()
        );
    }
    assert_eq!(count, blocks);
    assert!(
        read.get() > 1024 * 1024,
        "the input was large: {}",
        read.get()
    );
}

#[test]
fn the_parser_can_move_to_another_thread() {
    // The store's async import runs the parser on a blocking thread.
    fn is_send<T: Send + 'static>(_: &T) {}
    let p = parse(std::io::Cursor::new(b"192.0.2.1:a:b\n".to_vec()));
    is_send(&p);
    let handle = std::thread::spawn(move || p.count());
    assert_eq!(handle.join().ok(), Some(1));
}

/// Issue 23: 10,000 malformed lines of every shape: each one is accounted for
/// (a node, an error or an ignored line, with its line number) and no report
/// line shows a password, whatever the separator.
#[test]
fn every_malformed_line_is_reported_and_no_report_line_shows_a_password() {
    let shapes: [fn(usize) -> String; 12] = [
        |i| format!("1.2.3.999;user{i};SECRET{i}"),
        |i| format!("ip|user{i}|SECRET{i}|x"),
        |_| "::::".to_owned(),
        |_| "a b".to_owned(),
        |i| format!("999.1.1.1:u{i}:SECRET{i}"),
        |i| format!("x:y:SECRET{i}"),
        |i| format!(";;SECRET{i}"),
        |i| format!("1.2.3.4,,SECRET{i}"),
        |i| format!("10.1.{}.{}:user{i}", i / 250 % 250, i % 250 + 1),
        |i| format!("0.0.0.0 admin SECRET{i}"),
        |i| format!("1.2.3.4:99999:user:SECRET{i}"),
        |i| format!("Total {i} servers SECRET{i}"),
    ];
    let text: String = (0..10_000)
        .map(|i| shapes[i % shapes.len()](i) + "\n")
        .collect();
    let items: Vec<_> = parse(text.as_bytes()).collect();
    let mut lines: Vec<usize> = items
        .iter()
        .map(|r| match r {
            Ok(p) => p.line,
            Err(e) => e.line,
        })
        .collect();
    lines.sort_unstable();
    lines.dedup();
    assert_eq!(
        lines,
        (1..=10_000).collect::<Vec<_>>(),
        "some lines vanished"
    );
    for e in items.iter().filter_map(|r| r.as_ref().err()) {
        assert!(!e.to_string().contains("SECRET"), "password shown: {e}");
    }
    let ignored = items
        .iter()
        .filter(|r| matches!(r, Err(e) if e.reason == ErrorReason::NotANode))
        .count();
    assert!(ignored > 0 && ignored < 10_000);
}
