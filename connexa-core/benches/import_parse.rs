//! Parse-only throughput of the import, 100,000 nodes per format, in memory.
//!
//!     cargo bench -p connexa-core --bench import_parse
//!
//! Prints nodes/s and seconds for format 1 (key-value blocks, the slowest common
//! format: 7 lines a node) and, as the baseline in the same process, the plain
//! pptp format (`ip:login:password`, one line a node), plus CSV and JSON.
//! The import target is parse + insert of 100k nodes in <= 5 s; parsing must be
//! a small fraction of that.

use std::hint::black_box;
use std::time::Instant;

use connexa_core::import::parse;

const NODES: usize = 100_000;

fn ip(i: usize) -> String {
    format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255)
}

fn format1() -> String {
    let mut s = String::from("Seller Shop\n# Список серверов\n");
    for i in 0..NODES {
        s.push_str(&format!(
            "Ip: {}\tseller_tag_{}\nLogin: user{i}\nPass: pass{i}\nState: California\nCity: Pasadena\nZip: 91101\n-----------------\n",
            ip(i),
            i % 97
        ));
    }
    s
}

fn pptp() -> String {
    (0..NODES)
        .map(|i| format!("{}:user{i}:pass{i}\n", ip(i)))
        .collect()
}

fn csv() -> String {
    let mut s = String::from("ip,port,login,password,country,state,city,zip,provider,comment\n");
    for i in 0..NODES {
        s.push_str(&format!(
            "{},1723,user{i},pass{i},United States,California,Pasadena,91101,,\n",
            ip(i)
        ));
    }
    s
}

fn json() -> String {
    let rows: Vec<String> = (0..NODES)
        .map(|i| {
            format!(
                r#"{{"ip":"{}","port":1723,"login":"user{i}","password":"pass{i}","country":"United States","state":"California","city":"Pasadena","zip":"91101"}}"#,
                ip(i)
            )
        })
        .collect();
    format!("[\n{}\n]\n", rows.join(",\n"))
}

/// Best of 3 runs: seconds to parse `input` completely.
fn time(input: &str) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let mut ok = 0usize;
        for row in parse(input.as_bytes()) {
            if row.is_ok() {
                ok += 1;
            }
        }
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(black_box(ok), NODES, "every node parses");
        best = best.min(secs);
    }
    best
}

/// Best of 3 runs: seconds to parse `input` and classify every row with the
/// in-file dedup, in batches of 1000, as the import driver does (no store).
fn time_with_dedup(input: &str) -> f64 {
    use connexa_core::import::Importer;
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let mut importer = Importer::new(parse(input.as_bytes()));
        let mut rows = 0usize;
        loop {
            let batch = importer.next_batch(1000);
            if batch.is_empty() {
                break;
            }
            rows += batch.len();
        }
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(black_box(rows), NODES, "every node is new");
        best = best.min(secs);
    }
    best
}

/// Seconds to import `input` into a fresh SQLite file through the real driver
/// (`import_into`: parse on a blocking thread, insert 2,000 rows per transaction).
fn time_into_sqlite(input: &str) -> f64 {
    use connexa_core::import::{ImportOptions, import_into};
    use connexa_core::store::SqlStore;
    use std::sync::Arc;
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("import.db").display()
    );
    rt.block_on(async {
        let store = Arc::new(SqlStore::connect(&url).await.expect("open store"));
        let bytes = input.as_bytes().to_vec();
        let t = Instant::now();
        let report =
            import_into(store, std::io::Cursor::new(bytes), ImportOptions::default()).await;
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(report.added.len(), NODES, "{report}");
        secs
    })
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let inputs = [
        ("format 1 (key-value)", format1()),
        ("pptp (ip:login:pass)", pptp()),
        ("csv", csv()),
        ("json", json()),
    ];
    let mut baseline = None;
    let mut results = Vec::new();
    for (name, input) in &inputs {
        let secs = time(input);
        if name.starts_with("pptp") {
            baseline = Some(secs);
        }
        results.push((*name, input.len(), secs));
        if name.starts_with("format 1") {
            results.push((
                "format 1 + dedup batches",
                input.len(),
                time_with_dedup(input),
            ));
        }
    }
    let parse_f1 = results[0].2;
    let into_sqlite = time_into_sqlite(&inputs[0].1);
    println!(
        "import format 1, {NODES} nodes, parse + insert into SQLite: {into_sqlite:.3} s ({:.0} nodes/s; target <= 5 s; parse alone {parse_f1:.3} s = {:.0}% of it)",
        NODES as f64 / into_sqlite,
        parse_f1 / into_sqlite * 100.0
    );
    println!("import parse-only, {NODES} nodes, best of 3:");
    for (name, bytes, secs) in results {
        let ratio = baseline.map_or(f64::NAN, |b| secs / b);
        println!(
            "  {name:<26} {:>6.1} MB  {secs:>7.3} s  {:>10.0} nodes/s  {ratio:>5.2}x pptp  {:>5.1}% of the 5 s import budget",
            bytes as f64 / 1e6,
            NODES as f64 / secs,
            secs / 5.0 * 100.0
        );
    }
}
