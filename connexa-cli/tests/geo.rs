//! `connexa test geo` end to end: a config file naming a city database the
//! test writes itself, the job, the columns of `nodes list/show`, the filters,
//! and a clear error for a database that is missing or corrupt.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use connexa_core::geo::MmdbWriter;
use serde_json::{Value, json};

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn cmd(&self, config: &Path, args: &[&str]) -> Command {
        let mut c = Command::cargo_bin("connexa").unwrap();
        c.current_dir(self.dir.path())
            .env_remove("CONNEXA_DB")
            .env_remove("CONNEXA_CONFIG")
            .arg("--db")
            .arg(format!("sqlite://{}?mode=rwc", self.path("c.db").display()))
            .arg("--config")
            .arg(config)
            .args(args);
        c
    }
    fn json(&self, config: &Path, args: &[&str]) -> Value {
        let mut all = vec!["--output", "json"];
        all.extend_from_slice(args);
        let out = self.cmd(config, &all).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
    fn config(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

fn city_db(path: &Path) {
    let mut w = MmdbWriter::new("GeoLite2-City");
    w.insert(
        "127.0.0.0/24".parse().unwrap(),
        json!({"country": {"iso_code": "US", "names": {"en": "United States"}},
               "subdivisions": [{"names": {"en": "Texas"}}],
               "city": {"names": {"en": "Austin"}},
               "location": {"latitude": 30.25, "longitude": -97.75, "time_zone": "America/Chicago"}}),
    )
    .unwrap();
    let mut asn = MmdbWriter::new("GeoLite2-ASN");
    asn.insert(
        "127.0.0.0/8".parse().unwrap(),
        json!({"autonomous_system_number": 64500, "autonomous_system_organization": "Loopback Transit"}),
    )
    .unwrap();
    std::fs::write(path, w.to_bytes().unwrap()).unwrap();
    std::fs::write(path.with_extension("asn.mmdb"), asn.to_bytes().unwrap()).unwrap();
}

#[test]
fn test_geo_fills_columns_and_filters_without_touching_status() {
    let env = Env::new();
    let db = env.path("city.mmdb");
    city_db(&db);
    let cfg = env.config(
        "c.toml",
        &format!(
            "[geo]\ncity_db = {:?}\nasn_db = {:?}\n",
            db.display().to_string(),
            db.with_extension("asn.mmdb").display().to_string()
        ),
    );
    let list = env.path("list.txt");
    std::fs::write(
        &list,
        "127.0.0.5:admin:pw1:US:Texas:75001\n127.0.0.7:guest:pw3:DE:Bavaria:80331\n127.0.1.9:x:y\n",
    )
    .unwrap();
    env.cmd(&cfg, &["import", list.to_str().unwrap()])
        .assert()
        .success();

    // One node is outside the city database but inside the ASN one; all three are found.
    let out = env.cmd(&cfg, &["test", "geo", "--all"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let nodes = env.json(&cfg, &["nodes", "list"]);
    let nodes = nodes["nodes"].as_array().unwrap().clone();
    assert_eq!(nodes.len(), 3);
    for n in &nodes {
        assert_eq!(n["status"], "not_tested", "a lookup is not a test");
        assert_eq!(n["geo"]["asn"], 64500);
        assert_eq!(n["geo"]["source"], "mmdb");
    }
    assert_eq!(nodes[0]["geo"]["city"], "Austin");
    assert_eq!(nodes[0]["geo"]["location_mismatch"], false);
    assert_eq!(
        nodes[1]["geo"]["location_mismatch"], true,
        "claims Germany, is in the US"
    );
    assert_eq!(
        nodes[2]["geo"]["location_mismatch"],
        Value::Null,
        "claims nothing"
    );
    assert_eq!(nodes[2]["geo"]["city"], Value::Null);

    let mism = env.json(&cfg, &["nodes", "list", "--mismatch"]);
    assert_eq!(mism["total"], 1);
    assert_eq!(mism["nodes"][0]["ip"], "127.0.0.7");
    assert_eq!(
        env.json(&cfg, &["nodes", "list", "--asn", "AS64500"])["total"],
        3
    );
    assert_eq!(
        env.json(&cfg, &["nodes", "list", "--asn", "64501"])["total"],
        0
    );
    assert_eq!(
        env.json(&cfg, &["nodes", "list", "--fraud-max", "50"])["total"],
        0,
        "never scored"
    );

    let table = env
        .cmd(&cfg, &["nodes", "list", "--mismatch"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("MISMATCH") && text.contains("US/Texas/Austin") && text.contains("AS64500"),
        "{text}"
    );
    let show = env.cmd(&cfg, &["nodes", "show", "2"]).output().unwrap();
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(
        text.contains("yes: the seller's location differs"),
        "{text}"
    );
    assert!(
        text.contains("America/Chicago") && text.contains("AS64500 Loopback Transit"),
        "{text}"
    );

    // history: nothing recorded for a lookup.
    let h = env.json(&cfg, &["nodes", "history", "1"]);
    assert_eq!(h.as_array().map(Vec::len), Some(0), "{h}");
}

#[test]
fn missing_or_corrupt_geo_database_is_a_one_line_config_error() {
    let env = Env::new();
    let list = env.path("list.txt");
    std::fs::write(&list, "127.0.0.5:admin:pw1\n").unwrap();
    let plain = env.config("plain.toml", "");
    env.cmd(&plain, &["import", list.to_str().unwrap()])
        .assert()
        .success();

    // Not configured: says what to set, looks nothing up.
    let out = env.cmd(&plain, &["test", "geo", "--all"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("[geo] city_db"), "{err}");

    let junk = env.path("junk.mmdb");
    std::fs::write(&junk, vec![7u8; 4096]).unwrap();
    for (name, path) in [("missing", env.path("absent.mmdb")), ("corrupt", junk)] {
        let cfg = env.config(
            &format!("{name}.toml"),
            &format!("[geo]\ncity_db = {:?}\n", path.display().to_string()),
        );
        let out = env.cmd(&cfg, &["test", "geo", "--all"]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(3), "{name}: {err}");
        assert_eq!(err.lines().count(), 1, "{name}: {err}");
        assert!(
            err.starts_with("error: ") && !err.contains("panicked"),
            "{err}"
        );
        assert!(
            err.contains(&path.display().to_string()),
            "names the file: {err}"
        );
    }
}
