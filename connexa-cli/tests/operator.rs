//! `connexa doctor` and the demo's own database, run as the binary against
//! temporary SQLite files, loopback listeners and (for the capability check)
//! a child process whose bounding set lacks CAP_NET_RAW.

use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;
use serde_json::Value;

mod common;
use common::free_port;

/// `connexa ARGS` in `dir`, without inherited database or configuration.
fn connexa(dir: &Path) -> Command {
    let mut c = Command::cargo_bin("connexa").unwrap();
    c.current_dir(dir)
        .env_remove("CONNEXA_DB")
        .env_remove("CONNEXA_CONFIG")
        .env("NO_COLOR", "1");
    c
}

fn db_url(dir: &Path) -> String {
    format!("sqlite://{}?mode=rwc", dir.join("c.db").display())
}

/// A configuration whose speed target is `target` (the keyed endpoint's base
/// URL) and whose service port range is 20 ports free right now.
fn config(dir: &Path, target: &str) -> PathBuf {
    let lo = free_range(20);
    let p = dir.join("config.toml");
    std::fs::write(
        &p,
        format!(
            "[test]\nself_url = \"{target}\"\n\n[services]\nport_min = {lo}\nport_max = {}\n",
            lo + 19
        ),
    )
    .unwrap();
    p
}

/// The first port of `n` consecutive ports on 127.0.0.1 that are free now.
fn free_range(n: u16) -> u16 {
    let mut lo = 41_000;
    loop {
        match (lo..lo + n).find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_err()) {
            Some(taken) => lo = taken + 1,
            None => return lo,
        }
    }
}

fn doctor(dir: &Path, db: &str, config: &Path) -> (Value, i32) {
    let out = connexa(dir)
        .args(["--db", db, "--config"])
        .arg(config)
        .args(["--output", "json", "doctor"])
        .output()
        .unwrap();
    parse(&out)
}

fn parse(out: &Output) -> (Value, i32) {
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor printed no JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (v, out.status.code().unwrap_or(-1))
}

fn check<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {v}"))
}

fn has_cap_net_raw() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << 13) != 0)
}

/// A database created (and migrated) by `connexa stats`.
fn created_db(dir: &Path) -> String {
    let db = db_url(dir);
    connexa(dir).args(["--db", &db, "stats"]).assert().success();
    db
}

#[test]
fn doctor_passes_with_a_current_database_a_reachable_target_and_cap_net_raw() {
    let dir = tempfile::tempdir().unwrap();
    let target = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", target.local_addr().unwrap());
    let cfg = config(dir.path(), &url);
    let db = created_db(dir.path());
    let (v, code) = doctor(dir.path(), &db, &cfg);
    assert_eq!(check(&v, "database")["status"], "ok", "{v}");
    assert_eq!(check(&v, "speed-target")["status"], "ok", "{v}");
    assert_eq!(check(&v, "service-ports")["status"], "ok", "{v}");
    assert_eq!(check(&v, "file-modes")["status"], "ok", "{v}");
    assert_eq!(check(&v, "clock")["status"], "ok", "{v}");
    if has_cap_net_raw() {
        assert_eq!(check(&v, "raw-gre")["status"], "ok", "{v}");
        assert_eq!(code, 0, "{v}");
        assert_eq!(v["ok"], true);
    } else {
        // Without the capability the report must fail, naming it.
        assert_eq!(check(&v, "raw-gre")["status"], "fail", "{v}");
        assert_eq!(code, 1, "{v}");
    }
}

#[test]
fn doctor_fails_without_cap_net_raw_and_says_how_to_grant_it() {
    let dir = tempfile::tempdir().unwrap();
    let target = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", target.local_addr().unwrap());
    let cfg = config(dir.path(), &url);
    let db = created_db(dir.path());
    let exe = assert_cmd::cargo::cargo_bin("connexa");
    // Drop CAP_NET_RAW from the bounding and inheritable sets: even root
    // then cannot open a raw socket.
    let mut cmd = if has_cap_net_raw() {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--bounding-set", "-net_raw", "--inh-caps", "-net_raw", "--"]);
        c.arg(&exe);
        c
    } else {
        std::process::Command::new(&exe)
    };
    let out = cmd
        .current_dir(dir.path())
        .env_remove("CONNEXA_DB")
        .env_remove("CONNEXA_CONFIG")
        .args(["--db", &db, "--config"])
        .arg(&cfg)
        .args(["--output", "json", "doctor"])
        .output()
        .expect("setpriv (util-linux)");
    let (v, code) = parse(&out);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["ok"], false);
    let gre = check(&v, "raw-gre");
    assert_eq!(gre["status"], "fail", "{v}");
    assert_eq!(gre["required"], true);
    assert!(
        gre["detail"].as_str().unwrap().contains("CAP_NET_RAW"),
        "{gre}"
    );
    assert!(gre["fix"].as_str().unwrap().contains("setcap"), "{gre}");
    // Everything else still passes: only the capability failed.
    for c in v["checks"].as_array().unwrap() {
        if c["name"] != "raw-gre" && c["required"] == true {
            assert_ne!(c["status"], "fail", "{c}");
        }
    }
    // The human form: one line per check, the fix on the failing one.
    let human = std::process::Command::new(&exe)
        .current_dir(dir.path())
        .env("NO_COLOR", "1")
        .args(["--db", &db, "--config"])
        .arg(&cfg)
        .arg("doctor")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.lines().any(|l| l.starts_with("ok    database")),
        "{text}"
    );
}

#[test]
fn doctor_reports_a_missing_database_and_does_not_create_it() {
    let dir = tempfile::tempdir().unwrap();
    let target = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let cfg = config(
        dir.path(),
        &format!("http://{}", target.local_addr().unwrap()),
    );
    let db = db_url(dir.path());
    let (v, code) = doctor(dir.path(), &db, &cfg);
    assert_eq!(code, 1, "{v}");
    let c = check(&v, "database");
    assert_eq!(c["status"], "fail", "{v}");
    assert!(
        c["detail"].as_str().unwrap().contains("does not exist"),
        "{c}"
    );
    assert!(c["fix"].as_str().unwrap().contains("connexa stats"), "{c}");
    assert!(
        !dir.path().join("c.db").exists(),
        "doctor created the database"
    );
}

#[test]
fn doctor_fails_on_an_unreachable_speed_target_and_a_database_others_can_read() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    // A port nobody listens on.
    let port = free_port();
    let cfg = config(dir.path(), &format!("http://127.0.0.1:{port}"));
    let db = created_db(dir.path());
    let file = dir.path().join("c.db");
    // New databases are created readable by their owner only.
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (v, code) = doctor(dir.path(), &db, &cfg);
    assert_eq!(code, 1, "{v}");
    let t = check(&v, "speed-target");
    assert_eq!(t["status"], "fail", "{v}");
    assert!(
        t["detail"].as_str().unwrap().contains("cannot connect"),
        "{t}"
    );
    let m = check(&v, "file-modes");
    assert_eq!(m["status"], "fail", "{v}");
    assert!(m["detail"].as_str().unwrap().contains("0644"), "{m}");
    assert!(m["fix"].as_str().unwrap().starts_with("chmod 600"), "{m}");
}

#[test]
fn doctor_warns_about_used_service_ports_and_fails_when_none_is_free() {
    let dir = tempfile::tempdir().unwrap();
    let target = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", target.local_addr().unwrap());
    let db = created_db(dir.path());
    // Two ports, one taken: a warning; both taken: a failure.
    let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (pa, pb) = (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    );
    let cfg = dir.path().join("ports.toml");
    std::fs::write(
        &cfg,
        format!("[test]\nself_url = \"{url}\"\n[services]\nport_min = {pa}\nport_max = {pa}\n"),
    )
    .unwrap();
    let (v, _) = doctor(dir.path(), &db, &cfg);
    let c = check(&v, "service-ports");
    assert_eq!(c["status"], "fail", "{v}");
    assert!(c["detail"].as_str().unwrap().starts_with("0 of 1"), "{c}");
    drop(b);
    std::fs::write(
        &cfg,
        format!(
            "[test]\nself_url = \"{url}\"\n[services]\nport_min = {}\nport_max = {}\n",
            pa.min(pb),
            pa.max(pb)
        ),
    )
    .unwrap();
    let (v, _) = doctor(dir.path(), &db, &cfg);
    let c = check(&v, "service-ports");
    // Ports between the two may be taken by others: at least one is in use.
    assert_eq!(c["status"], "warn", "{v}");
}

#[test]
fn demo_uses_its_own_database_and_never_the_operators() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().to_string();
    let out = connexa(dir.path())
        // The operator's database, named by the environment as usual.
        .env(
            "CONNEXA_DB",
            format!("sqlite://{}?mode=rwc", dir.path().join("ops.db").display()),
        )
        .args([
            "--output",
            "json",
            "demo",
            "--nodes",
            "10",
            "--first-ip",
            "127.201.0.1",
            "--port",
            &port,
        ])
        .output()
        .unwrap();
    let (v, code) = parse(&out);
    assert_eq!(code, 0, "{v}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("connexa-demo.db"), "{stderr}");
    assert!(dir.path().join("connexa-demo.db").exists());
    assert!(
        !dir.path().join("ops.db").exists(),
        "the demo opened $CONNEXA_DB"
    );
    assert!(
        !dir.path().join("connexa.db").exists(),
        "the demo opened connexa.db"
    );
    assert!(
        v["database"].as_str().unwrap().contains("connexa-demo.db"),
        "{v}"
    );
    // --db on the command line is obeyed.
    let mine = format!("sqlite://{}?mode=rwc", dir.path().join("mine.db").display());
    connexa(dir.path())
        .args([
            "--db",
            &mine,
            "--output",
            "json",
            "demo",
            "--nodes",
            "5",
            "--first-ip",
            "127.202.0.1",
            "--port",
            &port,
        ])
        .assert()
        .success();
    assert!(dir.path().join("mine.db").exists());
}

#[test]
fn secrets_keygen_status_rotate_and_a_wrong_key_refused_at_start() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let db = db_url(d);
    let run = |args: &[&str], config: Option<&Path>| {
        let mut c = connexa(d);
        c.args(["--db", &db]);
        if let Some(cfg) = config {
            c.arg("--config").arg(cfg);
        }
        c.args(args).output().unwrap()
    };
    // Plaintext nodes first.
    std::fs::write(
        d.join("list.txt"),
        "198.51.100.1 login pass-alpha-771\n198.51.100.2 login pass-beta-772\n",
    )
    .unwrap();
    assert!(run(&["import", "list.txt"], None).status.success());
    // A key, 0600, never overwritten.
    let out = run(&["secrets", "keygen", "k1.key"], None);
    assert!(out.status.success(), "{out:?}");
    let key_file = d.join("k1.key");
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(std::fs::read_to_string(&key_file).unwrap().trim().len(), 64);
    let again = run(&["secrets", "keygen", "k1.key"], None);
    assert_eq!(again.status.code(), Some(2), "{again:?}");
    let cfg = d.join("sealed.toml");
    std::fs::write(
        &cfg,
        format!("[secrets]\nkey_file = \"{}\"\n", key_file.display()),
    )
    .unwrap();
    let status = |cfg: Option<&Path>| -> Value {
        serde_json::from_slice(&run(&["--output", "json", "secrets", "status"], cfg).stdout)
            .unwrap()
    };
    let s = status(Some(&cfg));
    assert_eq!(s["plaintext"], 2, "{s}");
    let id = s["current_key"].as_str().unwrap().to_owned();
    let out = run(&["--output", "json", "secrets", "rotate"], Some(&cfg));
    assert!(out.status.success(), "{out:?}");
    let s = status(Some(&cfg));
    assert_eq!(s["plaintext"], 0, "{s}");
    assert_eq!(s["sealed"][&id], 2, "{s}");
    // The file and its WAL hold no password; the CLI still shows them.
    let mut bytes = std::fs::read(d.join("c.db")).unwrap();
    bytes.extend(std::fs::read(d.join("c.db-wal")).unwrap_or_default());
    for pw in ["pass-alpha-771", "pass-beta-772"] {
        assert!(
            !bytes.windows(pw.len()).any(|w| w == pw.as_bytes()),
            "{pw} on disk"
        );
    }
    let shown = run(&["nodes", "show", "1", "--reveal"], Some(&cfg));
    assert!(String::from_utf8_lossy(&shown.stdout).contains("pass-alpha-771"));
    // No key, or another key: a clear error at start, exit 3, nothing changed.
    for cfg in [None, Some(d.join("other.toml"))] {
        if let Some(c) = &cfg {
            assert!(run(&["secrets", "keygen", "k2.key"], None).status.success());
            std::fs::write(
                c,
                format!("[secrets]\nkey_file = \"{}\"\n", d.join("k2.key").display()),
            )
            .unwrap();
        }
        let out = run(&["nodes", "list"], cfg.as_deref());
        assert_eq!(out.status.code(), Some(3), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&id) && err.contains("sealed with key"),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    assert_eq!(status(Some(&cfg))["sealed"][&id], 2);
    // A key file others can read is refused, naming the fix.
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(&["stats"], Some(&cfg));
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"));
}

#[test]
fn destructive_commands_leave_audit_rows_under_the_os_user() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let db = db_url(d);
    let run = |args: &[&str]| {
        connexa(d)
            .env("USER", "alice")
            .args(["--db", &db])
            .args(args)
            .output()
            .unwrap()
    };
    std::fs::write(
        d.join("list.txt"),
        "198.51.100.1 login pw-audit-991\n198.51.100.2 login pw-audit-992\n",
    )
    .unwrap();
    assert!(run(&["import", "list.txt"]).status.success());
    assert!(
        run(&["nodes", "edit", "1", "--comment", "checked"])
            .status
            .success()
    );
    assert!(run(&["nodes", "delete", "2"]).status.success());
    // Reading changes nothing and records nothing.
    assert!(run(&["nodes", "list"]).status.success());
    let out = run(&["--output", "json", "audit"]);
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows: Vec<(String, String, i64)> = v
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|r| {
            (
                r["actor"].as_str().unwrap().to_owned(),
                r["action"].as_str().unwrap().to_owned(),
                r["count"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    let alice = || "os:alice".to_owned();
    assert_eq!(
        rows,
        [
            (alice(), "import".to_owned(), 2),
            (alice(), "node_edit".to_owned(), 1),
            (alice(), "delete".to_owned(), 1),
        ]
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("pw-audit"));
    let human = run(&["audit"]);
    assert!(String::from_utf8_lossy(&human.stdout).contains("os:alice"));
}

#[test]
fn nodes_add_reads_the_password_from_stdin_with_a_dash() {
    let dir = tempfile::tempdir().unwrap();
    let db = db_url(dir.path());
    connexa(dir.path())
        .args(["--db", &db, "nodes", "add", "198.51.100.9", "u", "-"])
        .write_stdin("pw from stdin 1\n")
        .assert()
        .success();
    let out = connexa(dir.path())
        .args([
            "--db", &db, "--output", "json", "nodes", "show", "1", "--reveal",
        ])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["password"], "pw from stdin 1", "{v}");
}
