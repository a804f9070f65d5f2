//! Secrets at rest on real databases: node passwords and SOCKS5 credentials
//! sealed with a key never appear in the SQLite file or its WAL; a wrong key
//! is refused before anything is read or written; rotation re-seals every
//! value so the old key is no longer needed. Every test runs on a SQLite file
//! and on PostgreSQL.

mod common;

use common::TestDb;
use connexa_core::domain::*;
use connexa_core::ports::*;
use connexa_core::store::SqlStore;
use connexa_core::store::sealing::{SecretKey, SecretKeys};
use sea_orm::{ConnectionTrait, Statement};

on_both_backends!(
    sealed_secrets_read_back_and_the_raw_rows_hold_none,
    a_wrong_or_missing_key_is_refused_and_nothing_is_overwritten,
    rotation_reseals_everything_and_the_old_key_goes,
    plaintext_from_before_the_key_is_read_and_sealed_by_rotate,
);

const PASSWORDS: [&str; 3] = [
    "node-pass-Zq81xw",
    "=HYPERLINK(\"node-pass-2\")",
    "node-pass-übermäßig",
];
const SOCKS_PASSWORD: &str = "socks-pass-Kf29Lm";

fn key(b: u8) -> SecretKey {
    SecretKey::from_bytes(&[b; 32])
}

fn keys(current: u8, old: &[u8]) -> SecretKeys {
    SecretKeys::new(Some(key(current)), old.iter().map(|b| key(*b)).collect())
}

async fn reopen(db: &TestDb, k: SecretKeys) -> Result<SqlStore, StoreError> {
    SqlStore::connect_with_keys(&db.url, k).await
}

/// Three nodes with [`PASSWORDS`], the first verified and running a service
/// with [`SOCKS_PASSWORD`].
async fn fill(s: &SqlStore) -> Vec<NodeId> {
    let nodes: Vec<NewNode> = PASSWORDS
        .iter()
        .enumerate()
        .map(|(i, pw)| NewNode::new(&format!("198.51.100.{}", i + 1), 1723, "login", pw).unwrap())
        .collect();
    let ids: Vec<NodeId> = s
        .insert(nodes)
        .await
        .unwrap()
        .into_iter()
        .map(|o| match o {
            InsertOutcome::Inserted(id) => id,
            other => panic!("{other:?}"),
        })
        .collect();
    s.apply(
        ids[0],
        Event::Tested(Outcome::success(Level::Speed)),
        ApplyContext::now(),
    )
    .await
    .unwrap();
    s.apply(
        ids[0],
        Event::ServiceStarted(ServiceEndpoint {
            host: "127.0.0.1".into(),
            port: 10800,
            username: "svc".into(),
            password: Secret::new(SOCKS_PASSWORD),
        }),
        ApplyContext::now(),
    )
    .await
    .unwrap();
    ids
}

/// Every password as the store gives it back.
async fn read_back(s: &SqlStore, ids: &[NodeId]) -> (Vec<String>, String) {
    let mut pws = Vec::new();
    for id in ids {
        pws.push(
            s.get(*id)
                .await
                .unwrap()
                .unwrap()
                .password
                .expose()
                .to_owned(),
        );
    }
    let socks = s.get(ids[0]).await.unwrap().unwrap().service.unwrap();
    (pws, socks.password.expose().to_owned())
}

/// The raw `password` and `socks_password` column values.
async fn raw(s: &SqlStore) -> Vec<String> {
    let b = s.connection().get_database_backend();
    s.connection()
        .query_all_raw(Statement::from_string(
            b,
            "SELECT password, COALESCE(socks_password, '') AS s FROM nodes ORDER BY id",
        ))
        .await
        .unwrap()
        .iter()
        .flat_map(|r| {
            [
                r.try_get::<String>("", "password").unwrap(),
                r.try_get::<String>("", "s").unwrap(),
            ]
        })
        .collect()
}

/// The bytes of the SQLite file and its WAL (empty for PostgreSQL).
fn sqlite_bytes(db: &TestDb) -> Vec<u8> {
    let Some(path) = connexa_core::store::sqlite_path(&db.url) else {
        return Vec::new();
    };
    let mut all = std::fs::read(&path).unwrap_or_default();
    all.extend(std::fs::read(format!("{}-wal", path.display())).unwrap_or_default());
    all
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

async fn sealed_secrets_read_back_and_the_raw_rows_hold_none(db: TestDb) {
    let s = reopen(&db, keys(1, &[])).await.unwrap();
    let ids = fill(&s).await;
    let (pws, socks) = read_back(&s, &ids).await;
    assert_eq!(pws, PASSWORDS);
    assert_eq!(socks, SOCKS_PASSWORD);
    let stored = raw(&s).await;
    for v in stored.iter().filter(|v| !v.is_empty()) {
        assert!(v.starts_with("\u{1}cx1:"), "not sealed: {v:?}");
        assert!(v.contains(key(1).id()), "{v:?}");
    }
    let bytes = sqlite_bytes(&db);
    for secret in PASSWORDS.iter().chain([&SOCKS_PASSWORD]) {
        assert!(
            !stored.iter().any(|v| v.contains(secret)),
            "{secret} stored"
        );
        assert!(
            !contains(&bytes, secret),
            "{secret} is in the SQLite file or WAL"
        );
    }
    // The same flow without a key writes them in the clear: the checks
    // above can fail. (`db.store` was opened before anything was sealed.)
    s.delete(&NodeFilter::all()).await.unwrap();
    let plain = &db.store;
    let ids = fill(plain).await;
    assert_eq!(read_back(plain, &ids).await.0, PASSWORDS);
    assert!(raw(plain).await.iter().any(|v| v == PASSWORDS[0]));
    if db.url.starts_with("sqlite") {
        assert!(contains(&sqlite_bytes(&db), PASSWORDS[0]));
    }
}

async fn a_wrong_or_missing_key_is_refused_and_nothing_is_overwritten(db: TestDb) {
    let s = reopen(&db, keys(1, &[])).await.unwrap();
    fill(&s).await;
    let before = raw(&s).await;
    let e = reopen(&db, keys(2, &[])).await.unwrap_err().to_string();
    assert!(
        e.contains(key(1).id()) && e.contains(key(2).id()) && e.contains("not configured"),
        "{e}"
    );
    let e = reopen(&db, SecretKeys::none())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("no key is configured"), "{e}");
    assert_eq!(raw(&s).await, before, "a refused key changed stored values");
    // Opening without keys (an embedder's plain `connect`) is refused too:
    // it would store new passwords in the clear next to sealed ones.
    let e = SqlStore::connect(&db.url).await.unwrap_err().to_string();
    assert!(e.contains("no key is configured"), "{e}");
    // A handle opened before the values were sealed cannot read them either.
    let e = db
        .store
        .list(&NodeFilter::all(), Page::default())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no key is configured"), "{e}");
}

async fn rotation_reseals_everything_and_the_old_key_goes(db: TestDb) {
    let s = reopen(&db, keys(1, &[])).await.unwrap();
    let ids = fill(&s).await;
    // Rotating: the new key current, the old one kept to open.
    let rotating = reopen(&db, keys(2, &[1])).await.unwrap();
    // Without its old key the new one alone is refused before the rotation...
    assert!(reopen(&db, keys(2, &[])).await.is_err());
    let n = rotating.reseal_all().await.unwrap();
    assert_eq!(n, 4, "three passwords and one SOCKS5 password");
    let status = rotating.sealing_status().await.unwrap();
    assert_eq!(status.plaintext, 0, "{status:?}");
    assert_eq!(
        status.sealed.keys().cloned().collect::<Vec<_>>(),
        [key(2).id().to_owned()]
    );
    // ...and enough after it.
    let after = reopen(&db, keys(2, &[])).await.unwrap();
    let (pws, socks) = read_back(&after, &ids).await;
    assert_eq!(pws, PASSWORDS);
    assert_eq!(socks, SOCKS_PASSWORD);
    assert!(!raw(&after).await.iter().any(|v| v.contains(key(1).id())));
    // A second rotation has nothing left to do.
    assert_eq!(after.reseal_all().await.unwrap(), 0);
}

async fn plaintext_from_before_the_key_is_read_and_sealed_by_rotate(db: TestDb) {
    let plain = SqlStore::connect(&db.url).await.unwrap();
    let ids = fill(&plain).await;
    let s = reopen(&db, keys(3, &[])).await.unwrap();
    // Old plaintext values read as they are, next to new sealed ones.
    assert_eq!(read_back(&s, &ids).await.0, PASSWORDS);
    let status = s.sealing_status().await.unwrap();
    assert!(
        status.sealed.is_empty() && status.plaintext == 4,
        "{status:?}"
    );
    assert_eq!(s.reseal_all().await.unwrap(), 4);
    let (pws, socks) = read_back(&s, &ids).await;
    assert_eq!(pws, PASSWORDS);
    assert_eq!(socks, SOCKS_PASSWORD);
    // An import of the same node compares with the opened value: a duplicate,
    // not a conflict.
    let again = s
        .insert(vec![
            NewNode::new("198.51.100.1", 1723, "login", PASSWORDS[0]).unwrap(),
        ])
        .await
        .unwrap();
    assert_eq!(again, [InsertOutcome::Duplicate(ids[0])]);
    assert!(!raw(&s).await.iter().any(|v| v == PASSWORDS[0]));
    if db.url.starts_with("sqlite") {
        // Nothing of the old plaintext lingers in free pages or the WAL.
        drop(plain);
        let bytes = sqlite_bytes(&db);
        for secret in PASSWORDS.iter().chain([&SOCKS_PASSWORD]) {
            assert!(
                !contains(&bytes, secret),
                "{secret} lingers in the file or WAL"
            );
        }
    }
}
