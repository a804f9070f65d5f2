//! `connexa service profile` and `connexa export --format ovpn` end to end:
//! the profile of a node's recorded `openvpn` service comes out of the
//! database and the CA in `[services] openvpn_dir` into a 0600 file (never
//! over an existing one without `--force`); a node without one is refused
//! with exit 1 and its reason, an unknown id with exit 6; the export writes
//! one file per node and refuses a selection with a node that has none.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::Arc;

use connexa_core::domain::{Event, Level, NewNode, Outcome};
use connexa_core::openvpn::pki::Ca;
use connexa_core::ports::{ApplyContext, InsertOutcome, NodeStore};
use connexa_core::store::SqlStore;

fn connexa(db: &str, config: &std::path::Path) -> Command {
    let mut c = Command::new(assert_cmd::cargo::cargo_bin("connexa"));
    c.env_remove("CONNEXA_DB")
        .env("CONNEXA_CONFIG", config)
        .args(["--db", db]);
    c
}

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn profile_and_export_write_private_files_and_refuse_nodes_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("c.db").display());
    let ca_dir = dir.path().join("ovpn");
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[services]\nopenvpn_dir = {:?}\n",
            ca_dir.display().to_string()
        ),
    )
    .unwrap();

    // Two verified nodes; the first has a recorded openvpn service.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (ovpn, plain, ca, creds) = rt.block_on(async {
        let store: Arc<dyn NodeStore> = Arc::new(SqlStore::connect(&db).await.unwrap());
        let mut ids = Vec::new();
        for ip in ["192.0.2.1", "192.0.2.2"] {
            let new = NewNode::new(ip, 1723, "u", "p").unwrap();
            let [InsertOutcome::Inserted(id)] = store.insert(vec![new]).await.unwrap()[..] else {
                panic!("insert")
            };
            store
                .apply(
                    id,
                    Event::Tested(Outcome::success(Level::Speed)),
                    ApplyContext::now(),
                )
                .await
                .unwrap();
            ids.push(id);
        }
        let ca = Ca::load_or_create(&ca_dir).unwrap();
        let creds = ca
            .issue_client(ids[0], "10.201.5.0".parse().unwrap())
            .unwrap();
        store
            .apply(
                ids[0],
                Event::ServiceStarted(creds.endpoint("vpn.example.net".into(), 1195)),
                ApplyContext::now(),
            )
            .await
            .unwrap();
        (ids[0], ids[1], ca, creds)
    });

    let file = dir.path().join("n.ovpn");
    let out = connexa(&db, &config)
        .args(["service", "profile", &ovpn.to_string(), "-o"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mode(&file), 0o600);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("remote vpn.example.net 1195 udp"), "{text}");
    assert!(text.contains(&ca.cert_pem) && text.contains(&creds.key_pem));
    // Not over an existing file without --force (exit 2); with it, yes.
    let again = connexa(&db, &config)
        .args(["service", "profile", &ovpn.to_string(), "-o"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2));
    let forced = connexa(&db, &config)
        .args(["service", "profile", &ovpn.to_string(), "--force", "-o"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(forced.status.success());
    // Stdout without -o: the same profile.
    let stdout = connexa(&db, &config)
        .args(["service", "profile", &ovpn.to_string()])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&stdout.stdout), text);

    // A node without an openvpn service: exit 1 and why; an unknown id: 6.
    let none = connexa(&db, &config)
        .args(["service", "profile", &plain.to_string()])
        .output()
        .unwrap();
    assert_eq!(none.status.code(), Some(1));
    let err = String::from_utf8_lossy(&none.stderr);
    assert!(
        err.contains("no OpenVPN profile") && err.contains("--kind openvpn"),
        "{err}"
    );
    let unknown = connexa(&db, &config)
        .args(["service", "profile", "999"])
        .output()
        .unwrap();
    assert_eq!(unknown.status.code(), Some(6));

    // Export: one file per node running one; a node without one is refused.
    let out_dir = dir.path().join("profiles");
    let ok = connexa(&db, &config)
        .args(["export", "--format", "ovpn", "--status", "online", "-o"])
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let written = out_dir.join(format!("node{ovpn}.ovpn"));
    assert_eq!(std::fs::read_to_string(&written).unwrap(), text);
    assert_eq!(mode(&written), 0o600);
    assert_eq!(std::fs::read_dir(&out_dir).unwrap().count(), 1);
    let refused = connexa(&db, &config)
        .args(["export", "--format", "ovpn", "-o"])
        .arg(dir.path().join("all"))
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains(&format!("run no openvpn service ({plain})")),
        "{err}"
    );
    assert!(!dir.path().join("all").exists(), "nothing written");
}
