//! Property tests of import and export:
//!
//! * round trip: any valid node list exported as csv/json/pptp/txt imports back
//!   to the same identities (ip, port, login, password), in order;
//! * any mixture of the eight formats, with noise between blocks and either line
//!   ending, parses to exactly the nodes written;
//! * arbitrary bytes, and corrupted mixtures, never panic and keep line numbers
//!   inside the input.
//!
//! Where a generator is restricted, it is because the format cannot carry the
//! value at all (documented in docs/import-export.md, "What each format can carry").

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use chrono::{TimeZone, Utc};
use connexa_core::domain::{MAX_LOGIN, MAX_PASSWORD, Node, NodeId, NodeMeta, Secret};
use connexa_core::export::{ExportFormat, write};
use connexa_core::import::{ErrorReason, ImportError, ParsedNode, parse};
use proptest::prelude::*;

type Identity = (IpAddr, u16, String, String);

fn usable(ip: &IpAddr) -> bool {
    !ip.is_unspecified() && !ip.is_multicast() && !matches!(ip, IpAddr::V4(v4) if v4.is_broadcast())
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        4 => any::<u32>().prop_map(|v| IpAddr::V4(Ipv4Addr::from(v))),
        1 => any::<u128>().prop_map(|v| IpAddr::V6(Ipv6Addr::from(v))),
        1 => any::<u32>().prop_map(|v| IpAddr::V6(Ipv4Addr::from(v).to_ipv6_mapped())),
    ]
    .prop_filter("usable address", usable)
}

fn port() -> impl Strategy<Value = u16> {
    prop_oneof![3 => Just(1723u16), 1 => 1u16..=u16::MAX]
}

/// Characters that stress the formats: separators of every format, quotes,
/// comment starters, white space (including Unicode), non-ASCII scripts, emoji.
const TRICKY: &[char] = &[
    'a', 'Z', '0', '9', ':', ',', ';', '"', '\'', '#', '/', '-', '|', '[', ']', '{', '}', '\\',
    ' ', '\u{a0}', '\u{3000}', '=', '@', '%', 'é', 'ж', 'Ж', '€', '😀', '🚨', '>', '.', '_', '(',
    ')', '*', '$',
];

/// Any text without control characters (what `NewNode` accepts), up to `max` chars.
fn text(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::collection::vec(proptest::sample::select(TRICKY), 0..24)
            .prop_map(String::from_iter),
        proptest::string::string_regex(r"\PC{0,40}").expect("regex"),
    ]
    .prop_map(move |s| s.chars().take(max).collect())
}

fn login() -> impl Strategy<Value = String> {
    text(MAX_LOGIN)
        .prop_map(|s| s.trim().to_owned())
        .prop_filter("non-empty login", |s| !s.is_empty())
}

fn password() -> impl Strategy<Value = String> {
    text(MAX_PASSWORD)
}

/// Descriptive fields within the limits every way of writing a node shares
/// (`NodeMeta::check`).
fn meta() -> impl Strategy<Value = NodeMeta> {
    let opt = |max: usize| proptest::option::of(text(max));
    (
        opt(NodeMeta::MAX_NAME),
        opt(NodeMeta::MAX_NAME),
        opt(NodeMeta::MAX_NAME),
        opt(NodeMeta::MAX_NAME),
        opt(NodeMeta::MAX_ZIP),
        opt(NodeMeta::MAX_COMMENT),
    )
        .prop_map(
            |(provider, country, state, city, zipcode, comment)| NodeMeta {
                provider,
                country,
                state,
                city,
                zipcode,
                comment,
            },
        )
}

fn node(id: i64, (ip, port, login, password): Identity, meta: NodeMeta) -> Node {
    let t = Utc
        .with_ymd_and_hms(2025, 9, 3, 16, 5, 25)
        .single()
        .unwrap_or_default();
    Node {
        meta,
        ..Node::added(NodeId(id), ip, port, login, Secret::new(password), t)
    }
}

fn nodes(identity: impl Strategy<Value = Identity>) -> impl Strategy<Value = Vec<Node>> {
    proptest::collection::vec((identity, meta()), 0..12).prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (id, m))| node(i as i64 + 1, id, m))
            .collect()
    })
}

fn identity_of(n: &Node) -> Identity {
    (
        n.ip,
        n.port,
        n.login.clone(),
        n.password.expose().to_owned(),
    )
}

fn parsed_identity(p: &ParsedNode) -> Identity {
    let n = &p.node;
    (
        n.ip(),
        n.port(),
        n.login().to_owned(),
        n.password().expose().to_owned(),
    )
}

fn round_trip(format: ExportFormat, list: &[Node]) -> Result<(), TestCaseError> {
    let mut out = Vec::new();
    write(format, list, &mut out).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let back: Vec<Result<ParsedNode, ImportError>> = parse(&out[..]).collect();
    let back: Vec<Identity> = back
        .iter()
        .map(|r| match r {
            Ok(p) => Ok(parsed_identity(p)),
            Err(e) => Err(TestCaseError::fail(format!(
                "{format}: {e}\n{}",
                String::from_utf8_lossy(&out)
            ))),
        })
        .collect::<Result<_, _>>()?;
    let want: Vec<Identity> = list.iter().map(identity_of).collect();
    prop_assert_eq!(back, want, "{}:\n{}", format, String::from_utf8_lossy(&out));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// CSV and JSON carry every valid node.
    #[test]
    fn csv_round_trips(list in nodes((ip(), port(), login(), password()))) {
        round_trip(ExportFormat::Csv, &list)?;
    }

    #[test]
    fn json_round_trips(list in nodes((ip(), port(), login(), password()))) {
        round_trip(ExportFormat::Json, &list)?;
    }

    /// pptp (`ip:login:password`) cannot carry a `:` in the login (the login ends
    /// at the first `:`) nor white space at the end of the password (lines are
    /// trimmed). Everything else, including `:` in passwords, IPv6 and other
    /// ports, reads back.
    #[test]
    fn pptp_round_trips(list in nodes((
        ip(),
        port(),
        login().prop_filter("no ':' in a pptp login", |l| !l.contains(':')),
        password().prop_filter("no trailing white space", |p| p.trim_end() == p),
    ))) {
        round_trip(ExportFormat::Pptp, &list)?;
    }

    /// txt (`ip login password country`) separates by white space: logins and
    /// passwords cannot contain white space, the password cannot be empty, and a
    /// login of `-` would read as the dash format.
    #[test]
    fn txt_round_trips(list in nodes((
        ip(),
        port(),
        login().prop_filter("txt login", |l| !l.contains(char::is_whitespace) && l != "-"),
        password().prop_filter("txt password", |p| !p.is_empty() && !p.contains(char::is_whitespace)),
    ))) {
        round_trip(ExportFormat::Txt, &list)?;
    }
}

/// Descriptive fields as the import itself produces them (canonical names,
/// trimmed, non-empty): CSV and JSON carry them back unchanged.
fn canonical_meta() -> impl Strategy<Value = NodeMeta> {
    let word = || proptest::option::of("[A-Za-zé]{1,8}( [A-Za-zжé]{1,8})?");
    (
        word(),
        proptest::option::of(proptest::sample::select(vec![
            "United States",
            "Germany",
            "Narnia",
            "Россия",
        ])),
        proptest::option::of(proptest::sample::select(vec![
            "California",
            "New York",
            "Bavaria",
            "Ontario",
        ])),
        word(),
        proptest::option::of("[0-9]{5}"),
        proptest::option::of("[^\\x00-\\x1f\\x7f-\\x9f\u{feff}]{0,6}[a-z,\"\n;#]{1,20}"),
    )
        .prop_map(
            |(provider, country, state, city, zipcode, comment)| NodeMeta {
                provider,
                country: country.map(str::to_owned),
                state: state.map(str::to_owned),
                city,
                zipcode,
                comment: comment
                    .map(|c| c.trim().to_owned())
                    .filter(|c| !c.is_empty()),
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// CSV and JSON also carry the descriptive fields back unchanged.
    #[test]
    fn csv_and_json_carry_the_descriptive_fields(
        list in proptest::collection::vec(((ip(), port(), login(), password()), canonical_meta()), 0..8),
    ) {
        let list: Vec<Node> = list
            .into_iter()
            .enumerate()
            .map(|(i, (id, m))| node(i as i64 + 1, id, m))
            .collect();
        for format in [ExportFormat::Csv, ExportFormat::Json] {
            let mut out = Vec::new();
            write(format, &list, &mut out).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let back: Vec<NodeMeta> = parse(&out[..])
                .map(|r| r.map(|p| p.node.meta))
                .collect::<Result<_, _>>()
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let want: Vec<NodeMeta> = list.iter().map(|n| n.meta.clone()).collect();
            prop_assert_eq!(back, want, "{}:\n{}", format, String::from_utf8_lossy(&out));
        }
    }
}

/// Plain logins and passwords every one of the eight formats carries.
fn plain() -> impl Strategy<Value = String> {
    "[A-Za-z0-9!@$%^&*._+=жé€]{1,16}"
}

/// One node written in one of the formats, plus the noise operators' lists have.
#[derive(Debug, Clone)]
enum Piece {
    Node(u8, Identity),
    Noise(u8),
}

fn piece() -> impl Strategy<Value = Piece> {
    let v4 = any::<u32>()
        .prop_map(|v| IpAddr::V4(Ipv4Addr::from(v)))
        .prop_filter("usable", usable);
    prop_oneof![
        3 => (0u8..9, v4, plain(), plain()).prop_map(|(f, ip, l, p)| Piece::Node(f, (ip, 1723, l, p))),
        1 => (0u8..9).prop_map(Piece::Noise),
    ]
}

fn render(pieces: &[Piece], crlf: bool) -> (String, Vec<Identity>) {
    let mut s = String::new();
    let mut want = Vec::new();
    for p in pieces {
        match p {
            Piece::Noise(k) => s.push_str(match k {
                0 => "# Список серверов\n",
                1 => "// comment: 1.2.3.4:a:b\n",
                2 => "-----------------\n",
                3 => "🚨 PPTP Connection\n",
                4 => "> PPTP_SVOIM_VPN:\n",
                5 => "Best Seller Shop\n",
                6 => "\n",
                7 => "   \t  \n",
                _ => "=====\n",
            }),
            Piece::Node(f, id @ (ip, _, l, pw)) => {
                want.push(id.clone());
                let block = match f {
                    0 => {
                        format!("Ip: {ip}\ttag\nLogin: {l}\nPass: {pw}\nState: CA\nZip: 91101\n\n")
                    }
                    1 => format!("{ip}  {l} {pw} TX\n"),
                    2 => format!("{ip} - {l}:{pw} - Arizona/Phoenix 85001 | 2025-09-03 16:05:25\n"),
                    3 => format!("{ip}:{l}:{pw}:US:Arizona:85001\n"),
                    4 => format!(
                        "IP: {ip}\nCredentials: {l}:{pw}\nLocation: Texas (Austin)\nZIP: 78701\nScamalytics Fraud Score: 35\nScamalytics Risk: medium\n\n"
                    ),
                    5 => format!(
                        "> PPTP_SVOIM_VPN:\n🚨 PPTP Connection\nIP: {ip}\nCredentials: {l}:{pw}\nLocation: US (Washington, Mill Creek)\n\n"
                    ),
                    6 => format!("{ip}:{l}:{pw}\n"),
                    7 => format!("password,ip,login,state\n{pw},{ip},{l},NY\n\n"),
                    _ => format!(
                        "[\n  {{\"ip\": \"{ip}\", \"login\": \"{l}\", \"password\": \"{pw}\"}}\n]\n"
                    ),
                };
                s.push_str(&block);
            }
        }
    }
    if crlf {
        s = s.replace('\n', "\r\n");
    }
    (s, want)
}

fn check_lines(
    input: &[u8],
    rows: &[Result<ParsedNode, ImportError>],
) -> Result<(), TestCaseError> {
    let lines = input.iter().filter(|b| **b == b'\n').count() + 1;
    for r in rows {
        let line = match r {
            Ok(p) => p.line,
            Err(e) => e.line,
        };
        prop_assert!(line >= 1 && line <= lines, "line {} of {}", line, lines);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Any mixture of the eight formats, with noise and either line ending,
    /// parses to exactly the nodes written, in order, without errors.
    #[test]
    fn any_mixture_of_the_formats_parses_to_its_nodes(
        pieces in proptest::collection::vec(piece(), 0..30),
        crlf in any::<bool>(),
        bom in any::<bool>(),
    ) {
        let (mut text, want) = render(&pieces, crlf);
        if bom {
            text.insert(0, '\u{feff}');
        }
        let rows: Vec<_> = parse(text.as_bytes()).collect();
        check_lines(text.as_bytes(), &rows)?;
        // Headers and names are reported as ignored lines, not as nodes or errors.
        let got: Vec<Identity> = rows
            .iter()
            .filter(|r| !matches!(r, Err(e) if e.reason == ErrorReason::NotANode))
            .map(|r| r.as_ref().map(parsed_identity).map_err(|e| TestCaseError::fail(format!("{e}\n{text}"))))
            .collect::<Result<_, _>>()?;
        prop_assert_eq!(got, want, "{}", text);
    }

    /// Arbitrary bytes never panic; line numbers stay inside the input.
    #[test]
    fn arbitrary_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let rows: Vec<_> = parse(&input[..]).collect();
        check_lines(&input, &rows)?;
    }

    /// Mixtures corrupted by random edits (deleted, inserted, replaced bytes)
    /// never panic either.
    #[test]
    fn corrupted_mixtures_never_panic(
        pieces in proptest::collection::vec(piece(), 0..20),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..3, any::<u8>()), 0..40),
    ) {
        let (text, _) = render(&pieces, false);
        let mut bytes = text.into_bytes();
        for (at, kind, b) in edits {
            if bytes.is_empty() {
                bytes.push(b);
                continue;
            }
            let i = at.index(bytes.len());
            match kind {
                0 => { bytes.remove(i); }
                1 => bytes.insert(i, b),
                _ => bytes[i] = b,
            }
        }
        let rows: Vec<_> = parse(&bytes[..]).collect();
        check_lines(&bytes, &rows)?;
    }
}
