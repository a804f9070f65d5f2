//! Secrets at rest and the audit trail, embedded: opens a SQLite file with a
//! key (node passwords are sealed as they are written), shows that the raw
//! file holds no password, rotates to a new key, reads the audit rows the
//! actions left, and runs the doctor's checks on the configuration.
//!
//! Run: `cargo run -p example-secrets-audit` (files in a temp directory).

use connexa_core::config::Config;
use connexa_core::doctor;
use connexa_core::domain::{NewNode, NodeFilter, Page};
use connexa_core::ports::NodeStore;
use connexa_core::store::SqlStore;
use connexa_core::store::audit::Actor;
use connexa_core::store::sealing::{SecretKey, SecretKeys};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("connexa-secrets-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let url = format!("sqlite://{}?mode=rwc", dir.join("c.db").display());
    let (_, old) = SecretKey::generate();
    let (_, new) = SecretKey::generate();
    let me = Actor {
        name: "example".into(),
        source: None,
    };

    // Sealed from the first write; every operator action is audited.
    let store = SqlStore::connect_with_keys(&url, SecretKeys::new(Some(old.clone()), vec![]))
        .await?
        .acting_as(me.clone());
    store
        .insert(vec![
            NewNode::new("198.51.100.7", 1723, "admin", "hunter2-example")?,
            NewNode::new("198.51.100.8", 1723, "admin", "correct-horse")?,
        ])
        .await?;
    let raw = std::fs::read(dir.join("c.db"))?;
    let mut wal = std::fs::read(dir.join("c.db-wal")).unwrap_or_default();
    wal.extend(raw);
    let on_disk = wal.windows(15).any(|w| w == b"hunter2-example");
    println!("password on disk: {on_disk}");
    anyhow::ensure!(!on_disk, "a sealed password reached the file");
    let nodes = store.list(&NodeFilter::all(), Page::default()).await?.nodes;
    println!("read back: {}", nodes[0].password.expose());
    println!("sealing: {:?}", store.sealing_status().await?);

    // Rotate: the new key current, the old one only to open; then the old
    // key is no longer needed.
    let rotating =
        SqlStore::connect_with_keys(&url, SecretKeys::new(Some(new.clone()), vec![old.clone()]))
            .await?
            .acting_as(me);
    println!("re-sealed: {}", rotating.reseal_all().await?);
    let after = SqlStore::connect_with_keys(&url, SecretKeys::new(Some(new), vec![])).await?;
    println!("after rotation: {:?}", after.sealing_status().await?);
    match SqlStore::connect_with_keys(&url, SecretKeys::new(Some(old), vec![])).await {
        Ok(_) => anyhow::bail!("the old key alone still opened the database"),
        Err(e) => println!("old key alone: refused ({e})"),
    }

    for row in after.audit_log(10).await?.iter().rev() {
        println!(
            "audit #{}: {} {} {:?} {:?}",
            row.id, row.actor, row.action, row.target, row.count
        );
    }

    // The doctor on this database, with a speed target on loopback (the
    // secrets check fails: this configuration names no key; the report says
    // how to fix it).
    let target = std::net::TcpListener::bind("127.0.0.1:0")?;
    let mut config = Config {
        database: Some(url),
        ..Config::default()
    };
    config.test.self_url = Some(format!("http://{}", target.local_addr()?));
    for c in doctor::run(&config).await.checks {
        println!("doctor {:<14} {:?}: {}", c.name, c.status, c.detail);
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
