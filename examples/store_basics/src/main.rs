//! Embeds the store: opens a SQLite file (created if missing), inserts nodes,
//! applies test results through the transition table, prints what happened and
//! walks the nodes page by page with a cursor.
//!
//! Run: `cargo run -p example-store-basics [DB_URL]` (default: a file in the temp dir).
//! Any URL `SqlStore::connect` accepts works, e.g. `postgres://user@127.0.0.1/db`.

use connexa_core::domain::{
    Event, Failure, Level, NewNode, NodeFilter, NodeMeta, Outcome, Page, Status,
};
use connexa_core::ops;
use connexa_core::ports::{ApplyContext, InsertOutcome, NodeStore};
use connexa_core::store::SqlStore;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let path = std::env::temp_dir().join(format!("connexa-example-{}.db", std::process::id()));
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| format!("sqlite://{}?mode=rwc", path.display()));
    let store = SqlStore::connect(&url).await?;

    let texas = NodeMeta {
        country: Some("United States".into()),
        state: Some("Texas".into()),
        ..Default::default()
    };
    let nodes = vec![
        NewNode::new("198.51.100.7", 1723, "admin", "admin")?.with_meta(texas.clone()),
        NewNode::new("198.51.100.8", 1723, "admin", "secret")?.with_meta(texas),
        NewNode::new("198.51.100.7", 1723, "admin", "admin")?, // the same node again
    ];
    let outcomes = store.insert(nodes).await?;
    println!("insert: {outcomes:?}");
    let InsertOutcome::Inserted(fast) = outcomes[0] else {
        anyhow::bail!("expected a new node")
    };
    let InsertOutcome::Inserted(dead) = outcomes[1] else {
        anyhow::bail!("expected a new node")
    };

    let now = ApplyContext::now;
    store
        .apply(fast, Event::Tested(Outcome::success(Level::Speed)), now())
        .await?;
    store
        .apply(
            dead,
            Event::Tested(Outcome::failed(Level::None, Failure::Refused)),
            now(),
        )
        .await?;
    // A failed re-test of a verified node is recorded, never applied as a demotion.
    let after = store
        .apply(
            fast,
            Event::Tested(Outcome::failed(Level::None, Failure::ConnectTimeout)),
            now(),
        )
        .await?;
    println!("re-test of a verified node: {} -> {}", after.from, after.to);
    assert_eq!(after.to, Status::SpeedOk);

    let texans = store
        .list(
            &NodeFilter {
                state: Some("texas".into()),
                ..Default::default()
            },
            Page::default(),
        )
        .await?;
    for n in &texans.nodes {
        // `password` prints as *** in Debug/Display.
        println!(
            "{} {}:{} {} pw={} status={} last_error={:?}",
            n.id, n.ip, n.port, n.login, n.password, n.status, n.last_error
        );
    }
    for row in store.history(fast).await? {
        println!(
            "history {}: {} -> {:?} ({})",
            row.node,
            row.from,
            row.to,
            row.event.as_str()
        );
    }
    println!("counts: {:?}", store.counts().await?);

    // Reading a whole fleet: page by cursor (each page starts after the last id
    // of the one before), so deep pages stay cheap and nodes added or deleted
    // meanwhile never make the walk skip or repeat one.
    let mut walk = ops::NodeWalk::new(NodeFilter::all()).with_limit(1);
    while let Some(page) = walk.next_page(&store).await? {
        let ids: Vec<_> = page.iter().map(|n| n.id).collect();
        println!("cursor page: {ids:?}");
    }
    if url.contains(&path.display().to_string()) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }
    Ok(())
}
