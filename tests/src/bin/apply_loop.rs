//! Test helper for the durability test: applies test results to a SQLite store
//! in group commits forever, printing `committed <seq>...` only after each commit
//! returned. The parent kills it with SIGKILL at a random moment.
//!
//! Usage: apply_loop DB_URL

use connexa_core::domain::{Event, Failure, Level, NewNode, Outcome};
use connexa_core::ports::{ApplyContext, ApplyRequest, InsertOutcome, NodeStore};
use connexa_core::store::SqlStore;
use std::io::Write;

const NODES: usize = 10;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let url = std::env::args().nth(1).expect("usage: apply_loop DB_URL");
    let store = SqlStore::connect(&url).await.expect("open store");
    let nodes = (0..NODES)
        .map(|i| NewNode::new(&format!("127.0.9.{}", i + 1), 1723, "durable", "pw").expect("node"))
        .collect();
    let ids: Vec<_> = store
        .insert(nodes)
        .await
        .expect("insert")
        .into_iter()
        .map(|o| match o {
            InsertOutcome::Inserted(id)
            | InsertOutcome::Duplicate(id)
            | InsertOutcome::Conflict(id) => id,
        })
        .collect();
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready").ok();
    out.flush().ok();
    let mut seq: u64 = 0;
    loop {
        let group = 1 + (seq % 7) as usize;
        let mut reqs = Vec::with_capacity(group);
        let mut seqs = Vec::with_capacity(group);
        for _ in 0..group {
            seq += 1;
            let level = Level::ALL[(seq % 4) as usize];
            reqs.push(ApplyRequest {
                node: ids[(seq as usize) % NODES],
                event: Event::Tested(Outcome::failed(
                    level,
                    Failure::Other {
                        detail: format!("seq {seq}"),
                    },
                )),
                ctx: ApplyContext::now(),
            });
            seqs.push(seq.to_string());
        }
        store.apply_many(reqs).await.expect("apply_many");
        // Only now, after COMMIT returned, is the result reported as committed.
        writeln!(out, "committed {}", seqs.join(" ")).ok();
        out.flush().ok();
    }
}
