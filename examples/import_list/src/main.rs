//! Parses a small node list that mixes several sellers' formats, runs it through
//! the import driver with a stand-in store (an in-memory map), prints the
//! report, and exports what was added as a pptp list.
//!
//!     cargo run -p example-import-list

use std::collections::HashMap;
use std::net::IpAddr;

use connexa_core::domain::{Node, NodeId, Secret};
use connexa_core::export::{ExportFormat, write};
use connexa_core::import::{Importer, parse};
use connexa_core::ports::InsertOutcome;

const LIST: &str = "\u{feff}Best VPN Shop
# Список серверов
Ip: 203.0.113.7\tseller_tag_17
Login: admin
Pass: admin
State: CA
City: Pasadena
Zip: 91101
-----------------------------
198.51.100.23  admin admin TX
198.51.100.4 - admin:s3cret - Arizona/Phoenix 85001 | 2025-09-03 16:05:25
198.51.100.52:admin:admin:US:Arizona:85001
> PPTP_SVOIM_VPN:
🚨 PPTP Connection
IP: 203.0.113.13
Credentials: admin:admin
Location: US (Washington, Mill Creek)
Scamalytics Fraud Score: 35
192.0.2.35:admin:password123
192.0.2.35:admin:password123
192.0.2.35:admin:other-password
198.51.100.300:admin:hunter2
ip,login,password,state
203.0.113.31,csv-user,csv-pass,NY
";

fn main() {
    // A stand-in for the store: (ip, port, login) -> (id, password).
    let mut stored: HashMap<(IpAddr, u16, String), (NodeId, String)> = HashMap::new();
    // One node is "already stored" with the same credentials, one with others.
    let ip = |s: &str| s.parse::<IpAddr>().expect("literal");
    stored.insert(
        (ip("198.51.100.23"), 1723, "admin".into()),
        (NodeId(100), "admin".into()),
    );
    stored.insert(
        (ip("198.51.100.52"), 1723, "admin".into()),
        (NodeId(101), "old".into()),
    );
    let mut next_id = 1;
    let mut added = Vec::new();

    let mut importer = Importer::new(parse(LIST.as_bytes()));
    loop {
        let batch = importer.next_batch(500);
        if batch.is_empty() {
            break;
        }
        let outcomes: Vec<InsertOutcome> = batch
            .iter()
            .map(|p| {
                let n = &p.node;
                let key = (n.ip(), n.port(), n.login().to_owned());
                match stored.get(&key) {
                    Some((id, pw)) if pw == n.password().expose() => InsertOutcome::Duplicate(*id),
                    Some((id, _)) => InsertOutcome::Conflict(*id),
                    None => {
                        let id = NodeId(next_id);
                        next_id += 1;
                        stored.insert(key, (id, n.password().expose().to_owned()));
                        added.push((id, n.clone()));
                        InsertOutcome::Inserted(id)
                    }
                }
            })
            .collect();
        importer
            .record(&batch, &outcomes)
            .expect("one outcome per row");
    }
    let report = importer.finish();
    println!("{report}");
    for (line, id) in &report.added {
        println!("line {line}: added as node {id}");
    }

    let nodes: Vec<Node> = added
        .into_iter()
        .map(|(id, n)| Node {
            meta: n.meta.clone(),
            ..Node::added(
                id,
                n.ip(),
                n.port(),
                n.login(),
                Secret::new(n.password().expose()),
                Default::default(),
            )
        })
        .collect();
    println!("\nexported as pptp:");
    let mut out = std::io::stdout().lock();
    let written = write(ExportFormat::Pptp, &nodes, &mut out).expect("stdout");
    assert_eq!(written, report.added.len());
}
