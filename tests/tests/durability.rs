//! Durability: a process applying results is killed with SIGKILL at a random
//! moment; every result it reported as committed is in the SQLite database.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use connexa_core::domain::{NodeFilter, Page};
use connexa_core::ports::NodeStore;
use connexa_core::store::SqlStore;

fn pseudo_random_ms(round: u32) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    200 + u64::from(nanos.wrapping_mul(2_654_435_761).wrapping_add(round)) % 1_300
}

#[tokio::test(flavor = "multi_thread")]
async fn results_reported_committed_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("durable.db").display()
    );
    let mut total_reported = 0usize;
    for round in 0..3 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_apply_loop"))
            .arg(&url)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn apply_loop");
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut committed = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("committed ") {
                    committed.extend(rest.split(' ').map(str::to_owned));
                }
            }
            committed
        });
        let wait = Duration::from_millis(pseudo_random_ms(round));
        let started = Instant::now();
        while started.elapsed() < wait {
            std::thread::sleep(Duration::from_millis(10));
        }
        child.kill().expect("SIGKILL"); // std sends SIGKILL on Unix
        child.wait().unwrap();
        let committed = reader.join().unwrap();
        assert!(
            !committed.is_empty(),
            "round {round}: the child committed nothing in {wait:?}"
        );

        let store = SqlStore::connect(&url).await.expect("reopen after crash");
        let nodes = store
            .list(
                &NodeFilter::all(),
                Page {
                    limit: 100,
                    ..Page::default()
                },
            )
            .await
            .unwrap();
        let mut stored = HashSet::new();
        for n in &nodes.nodes {
            for row in store.history(n.id).await.unwrap() {
                if let Some(seq) = row.detail.as_deref().and_then(|d| d.strip_prefix("seq ")) {
                    stored.insert(seq.to_owned());
                }
            }
        }
        let lost: Vec<_> = committed.iter().filter(|s| !stored.contains(*s)).collect();
        assert!(
            lost.is_empty(),
            "round {round}: {} results reported committed are missing: {:?}",
            lost.len(),
            &lost[..lost.len().min(10)]
        );
        total_reported += committed.len();
        store.connection().clone().close().await.ok();
    }
    eprintln!("durability: {total_reported} committed results checked over 3 SIGKILLs");
}
