//! End-to-end tests of the `connexa` binary against temporary SQLite databases
//! and the loopback simulator.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command as StdCommand, Output, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::Command;
use connexa_core::domain::Event;
use connexa_core::domain::{Failure, Level, NodeId, Outcome};
use connexa_core::ports::{ApplyContext, NodeStore};
use predicates::prelude::*;
use serde_json::Value;

mod common;
use common::{Sim, free_port, signal_and_wait, start_sim};

/// A temp directory with a database URL in it.
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

    fn db(&self) -> String {
        format!("sqlite://{}?mode=rwc", self.path("c.db").display())
    }

    /// `connexa --db <temp db> ARGS`, run in the temp dir, without inherited config.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::cargo_bin("connexa").unwrap();
        c.current_dir(self.dir.path())
            .env_remove("CONNEXA_DB")
            .env_remove("CONNEXA_CONFIG")
            .env("RUST_BACKTRACE", "1")
            .arg("--db")
            .arg(self.db())
            .args(args);
        c
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--output", "json"];
        all.extend_from_slice(args);
        let out = self.cmd(&all).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    async fn store(&self) -> connexa_core::store::SqlStore {
        connexa_core::store::SqlStore::connect(&self.db())
            .await
            .unwrap()
    }
}

/// stderr is exactly one `error: ...` line, never a panic or a backtrace; the exit
/// code is `code`. Returns the line.
fn one_line_error(out: &Output, code: i32) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "not one line: {err:?}");
    assert!(err.starts_with("error: "), "{err:?}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err:?}"
    );
    err
}

const LIST: &str = "\
127.0.0.5:admin:pw1:US:Texas:75001
127.0.0.6:root:pw2
127.0.0.5:admin:pw1
10.0.0.300:admin:x
127.0.0.6:root:zq9secret
127.0.0.7:guest:pw3:DE:Bavaria:80331
";

fn imported(env: &Env) {
    let list = env.write("list.txt", LIST);
    env.cmd(&["import", list.to_str().unwrap()])
        .assert()
        .code(4);
}

#[test]
fn help_teaches_with_examples() {
    let env = Env::new();
    env.cmd(&["--help"])
        .assert()
        .success()
        .stdout(predicate::str::contains("Examples:"))
        .stdout(predicate::str::contains("Exit codes"));
    for sub in [
        &["import"][..],
        &["nodes", "list"],
        &["nodes", "delete"],
        &["nodes", "edit"],
        &["nodes", "add"],
        &["jobs", "cancel"],
        &["jobs", "retest-failed"],
        &["export"],
        &["stats"],
        &["sim"],
        &["completions"],
        &["test"],
        &["demo"],
        &["run"],
        &["service", "start"],
        &["service", "stop"],
        &["service", "restart"],
        &["service", "list"],
    ] {
        let mut args = sub.to_vec();
        args.push("--help");
        env.cmd(&args)
            .assert()
            .success()
            .stdout(predicate::str::contains("Examples:"));
    }
    env.cmd(&["--version"])
        .assert()
        .success()
        .stdout(predicate::str::contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn import_reports_counts_with_line_numbers() {
    let env = Env::new();
    let list = env.write("list.txt", LIST);
    let out = env.cmd(&["import", "list.txt"]).output().unwrap();
    // A row that could not be read: finished with failures.
    assert_eq!(out.status.code(), Some(4));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let table = stdout.lines().nth(1).unwrap();
    let cols: Vec<&str> = table.split_whitespace().collect();
    assert_eq!(cols, ["list.txt", "3", "0", "1", "1", "1", "0"], "{stdout}");
    assert!(stdout.contains("list.txt line 5: conflict"), "{stdout}");
    assert!(
        stdout.contains("list.txt line 4: error: invalid IP address"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("pw1") && !stdout.contains("zq9secret"),
        "a password leaked: {stdout}"
    );

    // Again: everything is now a duplicate of a stored node; JSON names them.
    let out = env
        .cmd(&[
            "--output",
            "json",
            "import",
            "--on-conflict",
            "skip",
            list.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let r = &v[0];
    assert_eq!(r["source"], list.to_str().unwrap());
    assert_eq!(r["added"].as_array().unwrap().len(), 0);
    assert_eq!(
        r["duplicates"][0],
        serde_json::json!({"line": 1, "with_line": null, "with_node": 1})
    );
    assert_eq!(r["errors"][0]["line"], 4);
    assert_eq!(r["errors"][0]["text"], "10.0.0.300:admin:***");
}

#[test]
fn import_from_stdin_and_replace_on_conflict() {
    let env = Env::new();
    env.cmd(&["import", "-"])
        .write_stdin("127.0.0.5:admin:old\n")
        .assert()
        .success();
    let v = env.json(&["import", "--on-conflict", "replace", "-"]);
    assert_eq!(
        v[0]["replaced"].as_array().unwrap().len(),
        0,
        "stdin was consumed: {v}"
    );
    let out = env
        .cmd(&[
            "--output",
            "json",
            "import",
            "--on-conflict",
            "replace",
            "-",
        ])
        .write_stdin("127.0.0.5:admin:new\n")
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v[0]["replaced"][0],
        serde_json::json!({"line": 1, "old": 1, "new": 2})
    );
    let list = env.json(&["nodes", "list"]);
    assert_eq!(list["total"], 1);
    assert_eq!(list["nodes"][0]["id"], 2);
}

#[test]
fn missing_input_file_is_a_usage_error_and_imports_nothing() {
    let env = Env::new();
    let good = env.write("good.txt", "127.0.0.5:admin:pw\n");
    let out = env
        .cmd(&["import", good.to_str().unwrap(), "nope.txt"])
        .output()
        .unwrap();
    let err = one_line_error(&out, 2);
    assert!(
        err.contains("nope.txt") && err.contains("No such file"),
        "{err}"
    );
    assert_eq!(env.json(&["stats"])["total"], 0);
}

#[test]
fn bad_database_paths_are_config_errors() {
    let env = Env::new();
    // A directory that does not exist.
    let out = Command::cargo_bin("connexa")
        .unwrap()
        .args([
            "--db",
            "sqlite:///nonexistent-dir/sub/c.db?mode=rwc",
            "stats",
        ])
        .output()
        .unwrap();
    let err = one_line_error(&out, 3);
    assert!(
        err.contains("cannot open the database") && err.contains("nonexistent-dir"),
        "{err}"
    );
    // A file that is not a database.
    let junk = env.write("junk.db", &"this is not sqlite\n".repeat(200));
    let out = Command::cargo_bin("connexa")
        .unwrap()
        .args([
            "--db",
            &format!("sqlite://{}?mode=rwc", junk.display()),
            "nodes",
            "list",
        ])
        .output()
        .unwrap();
    one_line_error(&out, 3);
    // A scheme the store does not speak; a password in it is never printed.
    let out = Command::cargo_bin("connexa")
        .unwrap()
        .args(["--db", "mysql://app:hunter2@127.0.0.1/x", "stats"])
        .output()
        .unwrap();
    let err = one_line_error(&out, 3);
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn db_comes_from_env_then_config_then_default() {
    let env = Env::new();
    let list = env.write("l.txt", "127.0.0.5:a:b\n");
    // $CONNEXA_DB.
    let env_db = format!("sqlite://{}?mode=rwc", env.path("env.db").display());
    Command::cargo_bin("connexa")
        .unwrap()
        .current_dir(env.dir.path())
        .env("CONNEXA_DB", &env_db)
        .args(["import", list.to_str().unwrap()])
        .assert()
        .success();
    assert!(env.path("env.db").exists());
    // `database` in the config file.
    let cfg_db = format!("sqlite://{}?mode=rwc", env.path("cfg.db").display());
    let cfg = env.write("c.toml", &format!("database = \"{cfg_db}\"\n"));
    Command::cargo_bin("connexa")
        .unwrap()
        .current_dir(env.dir.path())
        .env_remove("CONNEXA_DB")
        .args([
            "--config",
            cfg.to_str().unwrap(),
            "import",
            list.to_str().unwrap(),
        ])
        .assert()
        .success();
    assert!(env.path("cfg.db").exists());
    // The default: connexa.db in the current directory (empty variables count as unset).
    Command::cargo_bin("connexa")
        .unwrap()
        .current_dir(env.dir.path())
        .env("CONNEXA_DB", "")
        .env("CONNEXA_CONFIG", "")
        .args(["stats"])
        .assert()
        .success();
    assert!(env.path("connexa.db").exists());
}

#[test]
fn malformed_config_names_the_key_and_line() {
    let env = Env::new();
    let cfg = env.write(
        "c.toml",
        "[test]\nconcurrency = 10\nspeed_treshold_mbps = 2\n",
    );
    let out = env
        .cmd(&["--config", cfg.to_str().unwrap(), "stats"])
        .output()
        .unwrap();
    let err = one_line_error(&out, 3);
    assert!(
        err.contains("speed_treshold_mbps") && err.contains("line 3") && err.contains("c.toml"),
        "{err}"
    );

    let cfg = env.write("bad.toml", "[test\nconcurrency = 1\n");
    let out = env
        .cmd(&["--config", cfg.to_str().unwrap(), "stats"])
        .output()
        .unwrap();
    assert!(one_line_error(&out, 3).contains("line 1"));

    let cfg = env.write("zero.toml", "[test]\nconcurrency = 0\n");
    let out = env
        .cmd(&["--config", cfg.to_str().unwrap(), "stats"])
        .output()
        .unwrap();
    assert!(one_line_error(&out, 3).contains("concurrency"));

    let out = env
        .cmd(&["--config", "absent.toml", "stats"])
        .output()
        .unwrap();
    assert!(one_line_error(&out, 3).contains("absent.toml"));

    let cfg = env.write(
        "ok.toml",
        "[test]\nconcurrency = 10\n[services]\nport_min = 30000\nport_max = 31000\n",
    );
    env.cmd(&["--config", cfg.to_str().unwrap(), "stats"])
        .assert()
        .success();
}

#[test]
fn unknown_filter_values_list_the_valid_ones() {
    let env = Env::new();
    let out = env
        .cmd(&["nodes", "list", "--status", "fast"])
        .output()
        .unwrap();
    let err = one_line_error(&out, 2);
    assert!(
        err.contains("\"fast\"") && err.contains("speed_ok") && err.contains("not_tested"),
        "{err}"
    );
    let out = env
        .cmd(&["export", "--format", "csv", "--status", "ping_ok,nope"])
        .output()
        .unwrap();
    assert!(one_line_error(&out, 2).contains("nope"));
    let out = env
        .cmd(&["nodes", "list", "--checked-after", "yesterday"])
        .output()
        .unwrap();
    assert!(one_line_error(&out, 2).contains("RFC 3339"));
    let out = env
        .cmd(&["nodes", "list", "--sort", "colour"])
        .output()
        .unwrap();
    assert!(one_line_error(&out, 2).contains("colour"));
    let out = env.cmd(&["export", "--format", "ovpn2"]).output().unwrap();
    assert!(one_line_error(&out, 2).contains("ovpn2"));
    // ovpn is a format: an empty selection is a plain refusal, naming no node.
    let out = env.cmd(&["export", "--format", "ovpn"]).output().unwrap();
    let err = one_line_error(&out, 1);
    assert!(
        err.contains("no node matches the selection") && !err.contains("node 0"),
        "{err}"
    );
    let out = env
        .cmd(&["nodes", "list", "--limit", "0"])
        .output()
        .unwrap();
    one_line_error(&out, 2);
    let out = env.cmd(&["frobnicate"]).output().unwrap();
    one_line_error(&out, 2);
}

#[test]
fn nodes_list_filters_pages_and_sorts() {
    let env = Env::new();
    imported(&env);
    let v = env.json(&["nodes", "list"]);
    assert_eq!(v["total"], 3);
    assert_eq!(v["nodes"][0]["password"], "***");
    assert_eq!(v["nodes"][0]["status"], "not_tested");
    assert_eq!(v["nodes"][0]["country"], "United States");

    let v = env.json(&["nodes", "list", "--country", "germ"]);
    assert_eq!(v["total"], 1);
    assert_eq!(v["nodes"][0]["ip"], "127.0.0.7");
    assert_eq!(
        env.json(&["nodes", "list", "--zip", "750", "--login", "ADM"])["total"],
        1
    );
    assert_eq!(
        env.json(&["nodes", "list", "--status", "speed_ok"])["total"],
        0
    );
    assert_eq!(
        env.json(&[
            "nodes",
            "list",
            "--status",
            "speed_ok",
            "--status",
            "not_tested"
        ])["total"],
        3
    );
    assert_eq!(env.json(&["nodes", "list", "--has-service"])["total"], 0);
    assert_eq!(env.json(&["nodes", "list", "--no-service"])["total"], 3);
    assert_eq!(
        env.json(&["nodes", "list", "--checked-after", "2000-01-01T00:00:00Z"])["total"],
        0
    );

    let v = env.json(&["nodes", "list", "--limit", "2", "--page", "2"]);
    assert_eq!(
        (v["total"].as_u64(), v["nodes"].as_array().unwrap().len()),
        (Some(3), 1)
    );
    assert_eq!(v["nodes"][0]["id"], 3);
    let v = env.json(&["nodes", "list", "--sort", "ip", "--desc", "--limit", "1"]);
    assert_eq!(v["nodes"][0]["ip"], "127.0.0.7");
    // Cursor pages: the next id to ask for, until a short page.
    let v = env.json(&["nodes", "list", "--limit", "2", "--after", "1"]);
    assert_eq!(
        (&v["nodes"][0]["id"], &v["nodes"][1]["id"], &v["next_after"]),
        (&2.into(), &3.into(), &3.into())
    );
    assert!(v["page"].is_null() && v["total"] == 3, "{v}");
    let v = env.json(&["nodes", "list", "--limit", "2", "--after", "3", "--desc"]);
    assert_eq!(v["nodes"][0]["id"], 2);
    assert_eq!(v["nodes"][1]["id"], 1);
    let v = env.json(&["nodes", "list", "--after", "3"]);
    assert_eq!(
        (v["nodes"].as_array().unwrap().len(), &v["next_after"]),
        (0, &Value::Null)
    );
    assert!(env.json(&["nodes", "list"])["next_after"].is_null());
    let out = env
        .cmd(&["nodes", "list", "--after", "1", "--sort", "ip"])
        .output()
        .unwrap();
    assert_eq!(
        one_line_error(&out, 2),
        "error: cursor pagination (after) needs sort=id\n"
    );
    env.cmd(&["nodes", "list", "--after", "1", "--page", "2"])
        .assert()
        .code(2);

    // Human: aligned table plus a footer; no colour when not a terminal.
    let out = env
        .cmd(&["nodes", "list", "--limit", "2"])
        .output()
        .unwrap();
    let s = String::from_utf8(out.stdout).unwrap();
    assert!(!s.contains('\x1b'), "{s:?}");
    let lines: Vec<&str> = s.lines().collect();
    let col = |l: &str| l.find("STATUS").or_else(|| l.find("not_tested"));
    assert_eq!(col(lines[0]), col(lines[1]));
    assert_eq!(col(lines[1]), col(lines[2]));
    assert_eq!(lines[3], "1-2 of 3 nodes (page 1 of 2)");
    let out = env
        .cmd(&["nodes", "list", "--limit", "1", "--after", "1"])
        .output()
        .unwrap();
    let s2 = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        s2.lines().last(),
        Some("1 of 3 nodes, ids 2-2 (next: --after 2)"),
        "{s2}"
    );
    let out = env
        .cmd(&["nodes", "list", "--after", "2"])
        .output()
        .unwrap();
    let s2 = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        s2.lines().last(),
        Some("1 of 3 nodes, ids 3-3 (last page)"),
        "{s2}"
    );
    env.cmd(&["nodes", "list", "--after", "9"])
        .assert()
        .success()
        .stdout("no nodes after id 9 (3 nodes match)\n");

    // CSV: a header and one row per node.
    let out = env
        .cmd(&["--output", "csv", "nodes", "list"])
        .output()
        .unwrap();
    let s = String::from_utf8(out.stdout).unwrap();
    assert!(s.starts_with("id,ip,port,login,status,"), "{s}");
    assert_eq!(s.lines().count(), 4);
    assert!(
        s.contains("1,127.0.0.5,1723,admin,not_tested,United States,Texas,,,,,"),
        "{s}"
    );
}

#[test]
fn nodes_show_masks_the_password_unless_revealed() {
    let env = Env::new();
    imported(&env);
    let out = env.cmd(&["nodes", "show", "1"]).output().unwrap();
    let s = String::from_utf8(out.stdout).unwrap();
    assert!(s.contains("***") && !s.contains("pw1"), "{s}");
    assert!(s.contains("127.0.0.5:1723"));
    let v = env.json(&["nodes", "show", "1", "--reveal"]);
    assert_eq!(v["password"], "pw1");
    assert_eq!(v["zip"], "75001");
    let out = env.cmd(&["nodes", "show", "99"]).output().unwrap();
    assert!(one_line_error(&out, 6).contains("99"));
}

#[tokio::test(flavor = "multi_thread")]
async fn nodes_history_shows_from_to_event_and_why() {
    let env = Env::new();
    imported(&env);
    let store = env.store().await;
    store
        .apply(
            NodeId(1),
            Event::Tested(Outcome::success(Level::Light)),
            ApplyContext::now(),
        )
        .await
        .unwrap();
    store
        .apply(
            NodeId(1),
            Event::Tested(Outcome::failed(
                Level::Light,
                Failure::AuthRejected {
                    code: Some(691),
                    message: "nope".into(),
                },
            )),
            ApplyContext::now(),
        )
        .await
        .unwrap();
    drop(store);
    let out = env.cmd(&["nodes", "history", "1"]).output().unwrap();
    assert!(out.status.success());
    let s = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(lines.len(), 3, "{s}");
    assert!(
        lines[1].contains("not_tested")
            && lines[1].contains("ping_light")
            && lines[1].contains("tested"),
        "{s}"
    );
    assert!(
        lines[2].contains("auth_failed") && lines[2].contains("credentials rejected (E=691)"),
        "{s}"
    );
    let v = env.json(&["nodes", "history", "1"]);
    assert_eq!(v[1]["from"], "ping_light");
    assert_eq!(v[1]["to"], "auth_failed");
    assert_eq!(v[1]["event"], "tested");
    assert_eq!(v[1]["reached"], "light");
    // A node that never changed has an empty history; an unknown one is an error.
    assert_eq!(env.json(&["nodes", "history", "2"]), serde_json::json!([]));
    one_line_error(&env.cmd(&["nodes", "history", "42"]).output().unwrap(), 6);
    // Deleting keeps the history, with a `deleted` row.
    env.cmd(&["nodes", "delete", "1"]).assert().success();
    let v = env.json(&["nodes", "history", "1"]);
    assert_eq!(v[2]["event"], "deleted");
    assert_eq!(v[2]["to"], Value::Null);
}

#[test]
fn nodes_delete_by_ids_and_by_filter() {
    let env = Env::new();
    imported(&env);
    // Nothing selected: refused.
    assert!(one_line_error(&env.cmd(&["nodes", "delete"]).output().unwrap(), 2).contains("--all"));
    // Filters without a terminal and without --yes: refused, nothing deleted, count named.
    let out = env
        .cmd(&["nodes", "delete", "--status", "not_tested"])
        .write_stdin("y\n")
        .output()
        .unwrap();
    let err = one_line_error(&out, 2);
    assert!(err.contains("3 nodes") && err.contains("--yes"), "{err}");
    assert_eq!(env.json(&["stats"])["total"], 3);
    // Ids and filters together: refused.
    one_line_error(
        &env.cmd(&["nodes", "delete", "1", "--country", "US"])
            .output()
            .unwrap(),
        2,
    );
    // With --yes: exactly the matching nodes.
    let v = env.json(&["nodes", "delete", "--country", "united", "--yes"]);
    assert_eq!(v, serde_json::json!({"deleted": 1, "missing": []}));
    // By ids; a missing id is reported (exit 6) after deleting the others.
    let out = env.cmd(&["nodes", "delete", "2", "77"]).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "deleted 1 nodes"
    );
    assert!(one_line_error(&out, 6).contains("77"));
    assert_eq!(env.json(&["nodes", "list"])["nodes"][0]["id"], 3);
    env.cmd(&["nodes", "delete", "--all", "--yes"])
        .assert()
        .success();
    assert_eq!(env.json(&["stats"])["total"], 0);
}

#[test]
fn nodes_edit_changes_metadata_only() {
    let env = Env::new();
    imported(&env);
    let v = env.json(&[
        "nodes",
        "edit",
        "1",
        "--city",
        "Austin",
        "--comment",
        "rack 4",
        "--zip",
        "",
    ]);
    assert_eq!(v["city"], "Austin");
    assert_eq!(v["comment"], "rack 4");
    assert_eq!(v["zip"], Value::Null);
    assert_eq!(v["state"], "Texas");
    assert_eq!(v["status"], "not_tested");
    assert_eq!(
        env.json(&["nodes", "list", "--comment", "RACK"])["total"],
        1
    );
    let out = env.cmd(&["nodes", "edit", "1"]).output().unwrap();
    assert!(one_line_error(&out, 2).contains("nothing to change"));
    one_line_error(
        &env.cmd(&["nodes", "edit", "50", "--city", "x"])
            .output()
            .unwrap(),
        6,
    );
}

/// Issue 23: empty and control-character filters never select every node, a
/// selection that matches nothing is not a job, and text from the input or the
/// store reaches the terminal escaped.
#[test]
fn hostile_filters_are_refused_and_hostile_text_is_shown_escaped() {
    let env = Env::new();
    imported(&env);
    for args in [
        &["nodes", "delete", "--ip", "", "--yes"][..],
        &["nodes", "delete", "--comment", "\u{1b}[2J", "--yes"],
        &["nodes", "list", "--country", "x\u{7}"],
        &["export", "--format", "txt", "--login", "\u{9b}"],
        &["test", "light", "--city", ""],
        &["service", "stop", "--zip", "\n"],
    ] {
        let out = env.cmd(args).output().unwrap();
        let err = one_line_error(&out, 2);
        assert!(
            err.contains("empty") || err.contains("control characters"),
            "{args:?}: {err}"
        );
        assert!(!err.contains('\u{1b}') && !err.contains('\u{7}'), "{err:?}");
    }
    assert_eq!(
        env.json(&["stats"])["total"],
        3,
        "a hostile filter deleted nodes"
    );
    // Ids that match nothing: refused, no job.
    let out = env.cmd(&["test", "light", "999"]).output().unwrap();
    assert!(one_line_error(&out, 2).contains("no node matches"));
    assert_eq!(
        env.json(&["jobs", "list"]).as_array().map(Vec::len),
        Some(0)
    );
    // An edit with an escape sequence is refused; nothing is stored.
    let out = env
        .cmd(&[
            "nodes",
            "edit",
            "1",
            "--comment",
            "evil\u{1b}]0;pwned\u{7}\u{1b}[2J",
        ])
        .output()
        .unwrap();
    let err = one_line_error(&out, 2);
    assert!(
        err.contains("comment") && err.contains("control character"),
        "{err}"
    );
    assert_eq!(env.json(&["nodes", "show", "1"])["comment"], Value::Null);
    // An import line with escape sequences: reported escaped, password masked.
    let list = env.write(
        "evil.txt",
        "1.2.3.999\u{1b}]0;title\u{7}\u{1b}[2J:user:SECRET1\nSeller \u{1b}[m RED\n",
    );
    let out = env
        .cmd(&["-v", "import", list.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains('\u{1b}') && !text.contains('\u{7}'),
        "{text:?}"
    );
    assert!(text.contains("\\u{1b}"), "{text}");
    assert!(!text.contains("SECRET1"), "{text}");
    assert!(text.contains("line 2: ignored"), "{text}");
}

#[test]
fn export_writes_files_that_read_back_and_never_overwrites() {
    let env = Env::new();
    imported(&env);
    let out_path = env.path("us.csv");
    let o = out_path.to_str().unwrap();
    env.cmd(&["export", "--format", "csv", "--country", "united", "-o", o])
        .assert()
        .success()
        .stdout("exported 1 nodes as csv to ".to_owned() + o + "\n");
    let text = std::fs::read_to_string(&out_path).unwrap();
    assert_eq!(
        text,
        format!(
            "{}127.0.0.5,1723,admin,pw1,United States,Texas,,75001,,{}\n",
            connexa_core::export::CSV_HEADER,
            ",".repeat(14)
        )
    );
    // Passwords inside: readable by the owner only.
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&out_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
    // Existing file: refused, left as it was.
    let out = env
        .cmd(&["export", "--format", "pptp", "-o", o])
        .output()
        .unwrap();
    assert!(one_line_error(&out, 2).contains("--force"));
    assert_eq!(std::fs::read_to_string(&out_path).unwrap(), text);
    // --force overwrites.
    let v = env.json(&["export", "--format", "pptp", "-o", o, "--force"]);
    assert_eq!(
        v,
        serde_json::json!({"written": 3, "format": "pptp", "file": o})
    );
    assert_eq!(
        std::fs::read_to_string(&out_path).unwrap().lines().count(),
        3
    );
    // A directory that does not exist: a usage error naming the path.
    let out = env
        .cmd(&["export", "--format", "pptp", "-o", "no/such/dir/x.txt"])
        .output()
        .unwrap();
    assert!(one_line_error(&out, 2).contains("no/such/dir/x.txt"));
}

#[test]
fn export_json_round_trip_keeps_every_node() {
    let env = Env::new();
    imported(&env);
    let csv = |e: &Env| {
        String::from_utf8(
            e.cmd(&["export", "--format", "csv"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap()
    };
    let json = env
        .cmd(&["export", "--format", "json"])
        .output()
        .unwrap()
        .stdout;
    let other = Env::new();
    other
        .cmd(&["import", "-"])
        .write_stdin(json)
        .assert()
        .success();
    assert_eq!(csv(&env), csv(&other));
    // socks formats list only nodes with a running service: none here.
    env.cmd(&["export", "--format", "socks"])
        .assert()
        .success()
        .stdout("");
}

#[test]
fn stats_counts_every_status() {
    let env = Env::new();
    imported(&env);
    let v = env.json(&["stats"]);
    assert_eq!(v["total"], 3);
    assert_eq!(v["services_running"], 0);
    assert_eq!(v["services_waiting"], 0);
    assert_eq!(v["by_status"].as_array().unwrap().len(), 8);
    assert_eq!(
        v["by_status"][0],
        serde_json::json!({"status": "not_tested", "count": 3})
    );
    assert_eq!(v["last_job"], Value::Null);
    let out = env.cmd(&["stats"]).output().unwrap();
    let s = String::from_utf8(out.stdout).unwrap();
    assert!(
        s.contains("not_tested       3")
            && s.contains("services running: 0")
            && s.contains("last job: none"),
        "{s}"
    );
    let out = env.cmd(&["--output", "csv", "stats"]).output().unwrap();
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .starts_with("status,nodes\nnot_tested,3\n")
    );
}

#[test]
fn completions_for_each_shell() {
    let env = Env::new();
    for (shell, marker) in [
        ("bash", "complete"),
        ("zsh", "#compdef connexa"),
        ("fish", "complete -c connexa"),
    ] {
        env.cmd(&["completions", shell])
            .assert()
            .success()
            .stdout(predicate::str::contains(marker))
            .stdout(predicate::str::contains("import"));
    }
    one_line_error(&env.cmd(&["completions", "tcsh"]).output().unwrap(), 2);
}

#[test]
fn sim_runs_a_fleet_whose_list_imports_and_stops_on_sigterm() {
    let env = Env::new();
    let list = env.path("fleet.txt");
    let (mut child, port, first_ip) = start_sim(
        &["--output", "json"],
        &["--nodes", "20", "--mix", "healthy=80,refused=10,silent=10"],
        61,
        &list,
    );
    let prefix = first_ip
        .rsplit_once('.')
        .map(|(p, _)| p.to_owned())
        .unwrap();
    let text = std::fs::read_to_string(&list).unwrap();
    assert_eq!(text.lines().count(), 20, "{text}");
    assert!(
        text.lines().all(|l| l.contains(&format!(":{port}:"))),
        "{text}"
    );

    // Healthy nodes really listen; refused ones do not.
    let first = text.lines().next().unwrap();
    assert!(first.starts_with(&format!("[{first_ip}]")), "{first}");

    let out = Command::cargo_bin("connexa")
        .unwrap()
        .args(["--db", &env.db(), "--output", "json", "import"])
        .arg(&list)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["added"].as_array().unwrap().len(), 20);
    let listed = env.json(&["nodes", "list", "--ip", &format!("{prefix}.")]);
    assert_eq!(listed["total"], 20);
    assert_eq!(listed["nodes"][0]["port"], port);

    let mut listening = 0;
    for i in 1..=20u32 {
        let ip = format!("{prefix}.{i}");
        let addr: std::net::SocketAddr = format!("{ip}:{port}").parse().unwrap();
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok() {
            listening += 1;
        }
    }
    assert_eq!(
        listening, 18,
        "80 % healthy + 10 % silent listen, 10 % refused do not"
    );

    let status = signal_and_wait(&mut child, "-TERM");
    assert_eq!(status.code(), Some(0));
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let ready: Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(ready["nodes"], 20);
    assert_eq!(
        ready["mix"],
        serde_json::json!({"healthy": 16, "refused": 2, "silent": 2})
    );
}

#[test]
fn sim_writes_csv_and_rejects_bad_mixes() {
    let env = Env::new();
    let list = env.path("fleet.csv");
    let (mut child, port, _) = start_sim(&["-q"], &["--nodes", "3", "--format", "csv"], 62, &list);
    let text = std::fs::read_to_string(&list).unwrap();
    assert!(text.starts_with("ip,port,login,password,"), "{text}");
    assert_eq!(text.lines().count(), 4);
    // Ctrl-C (SIGINT) stops it cleanly too.
    assert_eq!(signal_and_wait(&mut child, "-INT").code(), Some(0));

    let out = env
        .cmd(&["sim", "--nodes", "3", "--mix", "healthy=1,sleepy=2"])
        .output()
        .unwrap();
    assert!(one_line_error(&out, 2).contains("sleepy"));
    let out = env
        .cmd(&[
            "sim",
            "--nodes",
            "3",
            "--first-ip",
            "10.0.0.1",
            "--port",
            &port.to_string(),
        ])
        .output()
        .unwrap();
    assert!(one_line_error(&out, 2).contains("127.0.0.0/8"));
}

/// Runs `connexa ARGS` under a pseudo-terminal (util-linux `script`), feeding
/// `input` to its terminal; returns what the terminal showed.
fn under_pty(env: &Env, args: &str, input: &str) -> (String, i32) {
    under_pty_with_term(env, args, input, "xterm")
}

/// [`under_pty`] with this `TERM` (`""`: unset).
fn under_pty_with_term(env: &Env, args: &str, input: &str, term: &str) -> (String, i32) {
    let bin = assert_cmd::cargo::cargo_bin("connexa");
    // `exec`: no shell between `script` and connexa, whatever $SHELL is (a
    // shell that waits for connexa would also see the terminal's Ctrl-C).
    let cmdline = format!("exec {} --db '{}' {args}", bin.display(), env.db());
    let mut cmd = StdCommand::new("script");
    cmd.args(["-qec", &cmdline, "/dev/null"])
        .env("SHELL", "/bin/sh")
        .env("TERM", term);
    if term.is_empty() {
        cmd.env_remove("TERM");
    }
    let mut child = cmd
        .current_dir(env.dir.path())
        .env_remove("NO_COLOR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("util-linux `script` is needed for the terminal tests");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        String::from_utf8_lossy(&out.stdout).replace('\r', ""),
        out.status.code().unwrap_or(-1),
    )
}

#[test]
fn delete_asks_on_a_terminal_and_tables_are_coloured_there() {
    let env = Env::new();
    imported(&env);
    // Declined: nothing deleted.
    let (screen, code) = under_pty(&env, "nodes delete --status not_tested", "n\n");
    assert_eq!(code, 0, "{screen}");
    assert!(
        screen.contains("3 nodes match and will be deleted. Delete them? [y/N]"),
        "{screen}"
    );
    assert!(screen.contains("deleted 0 nodes"), "{screen}");
    assert_eq!(env.json(&["stats"])["total"], 3);
    // Colour on a terminal only (the table tests above check there is none in a pipe).
    let (screen, _) = under_pty(&env, "nodes list", "");
    assert!(screen.contains("\x1b[1mID"), "{screen:?}");
    // Accepted: exactly the matching nodes go.
    let (screen, code) = under_pty(&env, "nodes delete --country united", "y\n");
    assert_eq!(code, 0, "{screen}");
    assert!(
        screen.contains("1 nodes match") && screen.contains("deleted 1 nodes"),
        "{screen}"
    );
    assert_eq!(env.json(&["stats"])["total"], 2);
}

#[test]
fn a_closed_stdout_is_not_an_error() {
    let env = Env::new();
    imported(&env);
    for args in [
        &["export", "--format", "pptp"][..],
        &["--output", "json", "nodes", "list"],
    ] {
        let mut child = StdCommand::new(assert_cmd::cargo::cargo_bin("connexa"))
            .args(["--db", &env.db()])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take()); // the reader goes away at once
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !err.contains("error") && !err.contains("panicked"),
            "{args:?}: {err}"
        );
        assert_eq!(out.status.code(), Some(0), "{args:?}");
    }
}

#[test]
fn logs_go_to_stderr_and_never_carry_a_password() {
    let env = Env::new();
    let list = env.write("list.txt", LIST);
    let out = env
        .cmd(&["-vvv", "import", list.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("opening database"),
        "-vvv shows debug logs: {err}"
    );
    for secret in ["pw1", "pw2", "pw3", "zq9secret"] {
        assert!(
            !err.contains(secret),
            "{secret} leaked into the logs: {err}"
        );
        assert!(!String::from_utf8_lossy(&out.stdout).contains(secret));
    }
    // -q: no notes on stderr.
    let out = env
        .cmd(&["-q", "export", "--format", "pptp"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3);
    // Without a subcommand: the help, on stderr, exit 2.
    let out = Command::cargo_bin("connexa").unwrap().output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Usage: connexa"));
    // Options but no subcommand: one line.
    let out = env.cmd(&["-v"]).output().unwrap();
    assert!(one_line_error(&out, 2).contains("subcommand"));
}

#[test]
fn replaced_rows_and_pages_past_the_end_are_explained() {
    let env = Env::new();
    let first = env.write("a.txt", "127.0.0.5:admin:old\n127.0.0.6:admin:same\n");
    env.cmd(&["import", first.to_str().unwrap()])
        .assert()
        .success();
    env.write("b.txt", "127.0.0.6:admin:same\n127.0.0.5:admin:new\n");
    let out = env
        .cmd(&["import", "--on-conflict", "replace", "-v", "b.txt"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let s = String::from_utf8(out.stdout).unwrap();
    assert!(
        s.contains("b.txt line 2: replaced node 1 (new password) with node 3"),
        "{s}"
    );
    assert!(
        s.contains("b.txt line 1: duplicate of stored node 2"),
        "-v lists duplicates: {s}"
    );
    env.cmd(&["nodes", "list", "--page", "9"])
        .assert()
        .success()
        .stdout("page 9 is past the end (2 nodes match)\n");
    env.cmd(&["nodes", "list", "--status", "online"])
        .assert()
        .success()
        .stdout("no nodes match\n");
    // CSV summaries.
    env.cmd(&["--output", "csv", "import", "a.txt"])
        .assert()
        .success()
        .stdout("source,added,replaced,duplicates,conflicts,errors,ignored\na.txt,0,0,1,1,0,0\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn stats_shows_the_last_job_with_its_progress() {
    use connexa_core::domain::NodeFilter;
    use connexa_core::ports::{JobKind, JobSpec};
    let env = Env::new();
    imported(&env);
    let store = env.store().await;
    let job = store
        .create_job(
            JobSpec {
                kind: JobKind::Light,
                filter: NodeFilter::all(),
                options: serde_json::json!({}),
                deadline: None,
            },
            chrono::Utc::now(),
        )
        .await
        .unwrap();
    drop(store);
    let v = env.json(&["stats"]);
    assert_eq!(v["last_job"]["id"], job.id.0);
    assert_eq!(v["last_job"]["kind"], "light");
    assert_eq!(v["last_job"]["state"], "queued");
    assert_eq!(v["last_job"]["progress"]["total"], 3);
    assert_eq!(v["last_job"]["progress"]["pending"], 3);
    let out = env.cmd(&["stats"]).output().unwrap();
    let s = String::from_utf8(out.stdout).unwrap();
    assert!(
        s.contains(&format!("last job: #{} light queued, 0/3 done", job.id)),
        "{s}"
    );
}

/// The same commands against PostgreSQL (`CONNEXA_TEST_PG_URL`, provided by
/// tests/run.sh, which skips tests named `postgres` when it cannot start one).
#[test]
fn postgres_backend_runs_the_same_commands() {
    let url = std::env::var("CONNEXA_TEST_PG_URL").expect(
        "CONNEXA_TEST_PG_URL is not set: run tests/run.sh (it starts a throw-away PostgreSQL), or skip with --skip postgres",
    );
    let env = Env::new();
    let run = |args: &[&str]| {
        let mut c = Command::cargo_bin("connexa").unwrap();
        c.current_dir(env.dir.path())
            .env_remove("CONNEXA_CONFIG")
            .env("CONNEXA_DB", &url)
            .args(args);
        c
    };
    let json = |args: &[&str]| -> Value {
        let mut all = vec!["--output", "json"];
        all.extend_from_slice(args);
        let out = run(&all).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    run(&["nodes", "delete", "--all", "--yes"])
        .assert()
        .success();
    let list = env.write("list.txt", LIST);
    run(&["import", list.to_str().unwrap()]).assert().code(4);
    assert_eq!(json(&["nodes", "list"])["total"], 3);
    assert_eq!(json(&["nodes", "list", "--country", "GERM"])["total"], 1);
    let first = json(&["nodes", "list", "--limit", "1"])["nodes"][0]["id"]
        .as_i64()
        .unwrap();
    let id = first.to_string();
    assert_eq!(
        json(&["nodes", "edit", &id, "--city", "Austin"])["city"],
        "Austin"
    );
    assert_eq!(json(&["nodes", "show", &id, "--reveal"])["password"], "pw1");
    assert_eq!(json(&["stats"])["by_status"][0]["count"], 3);
    let csv = run(&["export", "--format", "csv", "--city", "austin"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&csv.stdout).lines().count(), 2);
    assert_eq!(
        json(&["nodes", "delete", "--status", "not_tested", "--yes"])["deleted"],
        3
    );
    assert_eq!(json(&["nodes", "history", &id])[0]["event"], "deleted");
    // A wrong password in the URL is a config error, and is never printed.
    let bad = url.replacen("postgres://postgres@", "postgres://nobody:hunter2@", 1);
    let out = Command::cargo_bin("connexa")
        .unwrap()
        .args(["--db", &bad, "stats"])
        .output()
        .unwrap();
    let err = one_line_error(&out, 3);
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn test_light_on_a_simulated_fleet_matches_its_mix_and_jobs_show_it() {
    let env = Env::new();
    let list = env.path("fleet.txt");
    let (mut child, _, _) = start_sim(
        &["-q"],
        &["--nodes", "20", "--mix", "healthy=70,refused=20,garbage=10"],
        63,
        &list,
    );
    let out = Command::cargo_bin("connexa")
        .unwrap()
        .args(["--db", &env.db(), "-q", "import"])
        .arg(&list)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = env
        .cmd(&[
            "--output",
            "json",
            "test",
            "light",
            "--all",
            "--timeout",
            "10",
        ])
        .output()
        .unwrap();
    // Some nodes fail (refused, garbage): the job finished with failures.
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["total"], 20, "{summary}");
    assert_eq!(summary["ok"], 14, "{summary}");
    assert_eq!(summary["failed"], 6, "{summary}");
    assert_eq!(summary["state"], "done", "{summary}");
    assert_eq!(signal_and_wait(&mut child, "-TERM").code(), Some(0));

    let stats = env.cmd(&["--output", "json", "stats"]).output().unwrap();
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    let count = |s: &str| {
        stats["by_status"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["status"] == s)
            .map(|c| c["count"].clone())
    };
    assert_eq!(count("ping_light"), Some(serde_json::json!(14)), "{stats}");
    assert_eq!(count("ping_failed"), Some(serde_json::json!(6)), "{stats}");

    let jobs = env
        .cmd(&["--output", "json", "jobs", "list"])
        .output()
        .unwrap();
    let jobs: serde_json::Value = serde_json::from_slice(&jobs.stdout).unwrap();
    assert_eq!(jobs[0]["kind"], "light");
    assert_eq!(jobs[0]["done"], 20);
    let id = jobs[0]["id"].to_string();
    let show = env.cmd(&["jobs", "show", &id]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&show.stdout).contains("20/20 done (100.0 %)"),
        "{}",
        String::from_utf8_lossy(&show.stdout)
    );
    let missing = env.cmd(&["jobs", "show", "999"]).output().unwrap();
    assert_eq!(
        one_line_error(&missing, 6).trim(),
        "error: no job with id 999"
    );
}

#[test]
fn test_needs_a_selection() {
    let env = Env::new();
    let out = env.cmd(&["test", "light"]).output().unwrap();
    assert!(one_line_error(&out, 2).contains("nothing selected"));
    let out = env.cmd(&["test", "light", "1", "--all"]).output().unwrap();
    assert!(one_line_error(&out, 2).contains("give exactly one of"));
    let out = env
        .cmd(&["test", "light", "--all", "--timeout=0"])
        .output()
        .unwrap();
    assert!(one_line_error(&out, 2).contains("--timeout"));
}

#[test]
fn test_timeout_below_the_kinds_minimum_is_a_usage_error_and_queues_nothing() {
    let env = Env::new();
    for (kind, secs, want) in [
        (
            "auth",
            "2",
            "a per-node time budget of 2 s is too short for auth tests: give at least 20 s",
        ),
        (
            "light",
            "9.5",
            "a per-node time budget of 9.5 s is too short for light tests: give at least 10 s",
        ),
        (
            "speed",
            "29",
            "too short for speed tests: give at least 30 s",
        ),
        (
            "pipeline",
            "39",
            "too short for pipeline tests: give at least 40 s",
        ),
    ] {
        for detach in [false, true] {
            let mut args = vec!["test", kind, "--all", "--timeout", secs];
            if detach {
                args.push("--detach");
            }
            let out = env.cmd(&args).output().unwrap();
            let err = one_line_error(&out, 2);
            assert!(err.starts_with("error: --timeout: "), "{err}");
            assert!(err.contains(want), "{kind} {secs}: {err}");
        }
    }
    let jobs = env
        .cmd(&["--output", "json", "jobs", "list"])
        .output()
        .unwrap();
    let jobs: serde_json::Value = serde_json::from_slice(&jobs.stdout).unwrap();
    assert_eq!(jobs, serde_json::json!([]), "a refused test queues no job");
}

// ---------------------------------------------------------------------------
// demo, progress bar, --detach, run, service, test speed, import --test
// ---------------------------------------------------------------------------

/// Runs `connexa --db <temp db> --output json ARGS`; returns the JSON printed
/// on stdout and the exit code.
fn json_and_code(env: &Env, args: &[&str]) -> (Value, i32) {
    let mut all = vec!["--output", "json"];
    all.extend_from_slice(args);
    let out = env.cmd(&all).output().unwrap();
    let code = out.status.code().unwrap_or(-1);
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?} (exit {code}): not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (v, code)
}

/// The count of one status in `stats --output json`.
fn status_count(env: &Env, status: &str) -> u64 {
    let v = env.json(&["stats"]);
    v["by_status"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["status"] == status)
        .and_then(|c| c["count"].as_u64())
        .unwrap()
}

/// Behaviour counts of the fleet `connexa demo --nodes n` starts with the default mix.
fn demo_mix(n: usize) -> std::collections::BTreeMap<String, u64> {
    use connexa_core::sim::{Behaviour, FleetSpec, parse_mix};
    let mix = parse_mix("healthy=70,refused=10,silent=10,garbage=5,wrong=5").unwrap();
    let mut counts = std::collections::BTreeMap::new();
    for b in FleetSpec::new(n).mix(mix).behaviours() {
        let name = match b {
            Behaviour::Healthy => "healthy".to_owned(),
            Behaviour::Refused => "refused".to_owned(),
            Behaviour::Silent => "silent".to_owned(),
            Behaviour::Garbage => "garbage".to_owned(),
            Behaviour::WrongResultCode(c) => format!("wrong:{c}"),
            other => panic!("unexpected behaviour {other:?}"),
        };
        *counts.entry(name).or_insert(0) += 1;
    }
    counts
}

/// Checks a `connexa demo --output json` document against the simulator's mix.
fn check_demo_counts(v: &Value, nodes: usize) {
    let mix = demo_mix(nodes);
    assert_eq!(v["fleet"]["nodes"], nodes as u64, "{v}");
    assert_eq!(v["fleet"]["mix"], serde_json::json!(mix), "{v}");
    let healthy = mix["healthy"];
    let unhealthy = nodes as u64 - healthy;
    let by = &v["by_status"];
    let n = |s: &str| by[s].as_u64().unwrap_or(0);
    assert_eq!(v["job"]["total"], nodes as u64, "{v}");
    assert_eq!(v["job"]["state"], "done", "{v}");
    match v["test"]["kind"].as_str().unwrap() {
        "light" => {
            // Healthy nodes answer the handshake; refused, silent, garbage and
            // wrong-result-code nodes do not.
            assert_eq!(n("ping_light"), healthy, "{v}");
            assert_eq!(n("ping_failed"), unhealthy, "{v}");
            assert_eq!(v["job"]["ok"], healthy, "{v}");
            assert_eq!(v["job"]["failed"], unhealthy, "{v}");
            assert!(v["test"]["skipped"].as_str().is_some(), "{v}");
        }
        // Once the simulator answers logins: every healthy node got past the
        // handshake, the others did not.
        _ => {
            assert_eq!(n("ping_failed"), unhealthy, "{v}");
            assert_eq!(
                n("ping_light") + n("auth_failed") + n("ping_ok") + n("speed_ok"),
                healthy,
                "{v}"
            );
        }
    }
    assert_eq!(
        by.as_object()
            .unwrap()
            .values()
            .map(|c| c.as_u64().unwrap())
            .sum::<u64>(),
        nodes as u64,
        "{v}"
    );
}

fn demo_ip(block: u8) -> String {
    format!("127.{block}.{}.1", std::process::id() % 200 + 20)
}

#[test]
fn demo_runs_end_to_end_and_its_counts_match_the_simulated_mix() {
    let env = Env::new();
    let port = free_port().to_string();
    let ip = demo_ip(70);
    let list = env.path("demo-fleet.txt");
    let args = [
        "demo",
        "--nodes",
        "100",
        "--first-ip",
        &ip,
        "--port",
        &port,
        "--list",
        list.to_str().unwrap(),
    ];
    let t0 = Instant::now();
    let (v, code) = json_and_code(&env, &args);
    assert_eq!(code, 0, "{v}");
    assert!(t0.elapsed() < Duration::from_secs(60), "{:?}", t0.elapsed());
    check_demo_counts(&v, 100);
    assert_eq!(v["import"]["added"], 100);
    assert_eq!(std::fs::read_to_string(&list).unwrap().lines().count(), 100);
    // The results are in the database, for the commands it suggests next.
    assert_eq!(env.json(&["stats"])["total"], 100);
    // Healthy nodes end at the status of the deepest test the demo could run
    // (a speed test may find a node too slow on a loaded machine: ping_ok).
    let total = |status: &str| {
        env.json(&["nodes", "list", "--status", status])["total"]
            .as_u64()
            .unwrap()
    };
    let kind = v["test"]["kind"].as_str().unwrap().to_owned();
    let best = match kind.as_str() {
        "light" => "ping_light",
        "auth" => "ping_ok",
        _ => "speed_ok",
    };
    let healthy = demo_mix(100)["healthy"];
    if kind == "pipeline" {
        assert_eq!(total("speed_ok") + total("ping_ok"), healthy, "{v}");
        assert!(total("speed_ok") > 0, "{v}");
        // A SOCKS5 service was started through a speed_ok node, the page
        // fetched through its tunnel, and the service stopped again.
        let svc = &v["service"];
        assert_eq!(svc["fetched_bytes"], 1_000_000, "{v}");
        assert_eq!(env.json(&["service", "list"]), serde_json::json!([]), "{v}");
        let node = svc["node"].as_u64().unwrap().to_string();
        let history = env.json(&["nodes", "history", &node]).to_string();
        assert!(
            history.contains("service_started") && history.contains("service_stopped"),
            "{history}"
        );
    } else {
        assert_eq!(total(best), healthy, "{v}");
    }

    // Again on the same database: nothing new is imported, the same nodes are tested again.
    let out = env.cmd(&args).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("0 nodes added, 100 already there"),
        "{stderr}"
    );
    assert!(
        stdout.contains(best) && stdout.contains("Next, try:"),
        "{stdout}"
    );
    assert!(
        stdout.contains("job #2 ") && stdout.contains("100/100 done"),
        "{stdout}"
    );
    assert_eq!(env.json(&["stats"])["total"], 100);
}

#[test]
fn demo_runs_unprivileged_and_says_what_it_skipped() {
    let env = Env::new();
    let is_root = running_as_root();
    let port = free_port().to_string();
    let ip = demo_ip(71);
    let out = unprivileged(&env, is_root)
        .current_dir(env.dir.path())
        .env_remove("CONNEXA_DB")
        .env_remove("CONNEXA_CONFIG")
        .args([
            "--output",
            "json",
            "demo",
            "--nodes",
            "40",
            "--first-ip",
            &ip,
            "--port",
            &port,
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    // The demo's own database in the current directory, never connexa.db.
    assert!(env.path("connexa-demo.db").exists());
    assert!(!env.path("connexa.db").exists());
    assert_eq!(v["test"]["kind"], "light", "{v}");
    let skipped = v["test"]["skipped"].as_str().unwrap();
    assert!(skipped.contains("CAP_NET_RAW"), "{skipped}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("CAP_NET_RAW"))
        .collect();
    assert_eq!(lines.len(), 1, "one clear line: {stderr}");
    assert!(lines[0].contains("running the light test"), "{stderr}");
    check_demo_counts(&v, 40);
}

/// `connexa` as `nobody` without capabilities when we are root (raw GRE
/// sockets cannot be opened), else as ourselves.
fn unprivileged(env: &Env, is_root: bool) -> StdCommand {
    let bin = assert_cmd::cargo::cargo_bin("connexa");
    if is_root {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let mut c = StdCommand::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(&bin);
        c
    } else {
        StdCommand::new(&bin)
    }
}

fn running_as_root() -> bool {
    StdCommand::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

#[test]
fn test_auth_and_speed_without_cap_net_raw_fail_at_once_and_mark_nothing() {
    let env = Env::new();
    imported(&env);
    let root = running_as_root();
    if root {
        // `nobody` must be able to write the database.
        use std::os::unix::fs::PermissionsExt;
        for f in std::fs::read_dir(env.dir.path()).unwrap() {
            let f = f.unwrap().path();
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o666)).unwrap();
        }
    }
    for kind in ["auth", "speed"] {
        let out = unprivileged(&env, root)
            .current_dir(env.dir.path())
            .env_remove("CONNEXA_CONFIG")
            .args(["--db", &env.db(), "test", kind, "--all"])
            .output()
            .unwrap();
        let err = one_line_error(&out, 1);
        assert!(
            err.contains("CAP_NET_RAW")
                && err.contains(&format!("the {kind} test cannot run"))
                && err.contains("nothing was tested"),
            "{err}"
        );
    }
    assert_eq!(env.json(&["jobs", "list"]), serde_json::json!([]));
    assert_eq!(status_count(&env, "not_tested"), 3);
}

#[test]
fn demo_bad_input_is_one_line() {
    let env = Env::new();
    let out = env
        .cmd(&["demo", "--mix", "healthy=1,sleepy=1"])
        .output()
        .unwrap();
    assert!(one_line_error(&out, 2).contains("sleepy"));
    let out = env
        .cmd(&["demo", "--first-ip", "10.0.0.1"])
        .output()
        .unwrap();
    assert!(one_line_error(&out, 2).contains("127.0.0.0/8"));
    let out = env.cmd(&["demo", "--nodes", "0"]).output().unwrap();
    one_line_error(&out, 2);
    // A database that cannot be opened: nothing starts.
    let out = Command::cargo_bin("connexa")
        .unwrap()
        .args(["--db", "sqlite:///nonexistent-dir/x.db?mode=rwc", "demo"])
        .output()
        .unwrap();
    assert!(one_line_error(&out, 3).contains("cannot open the database"));
    // The addresses are taken: one line naming them and what to change.
    let port = free_port();
    let ip = demo_ip(72);
    let _taken = std::net::TcpListener::bind(format!("{ip}:{port}")).unwrap();
    let out = env
        .cmd(&["demo", "--first-ip", &ip, "--port", &port.to_string()])
        .output()
        .unwrap();
    let err = one_line_error(&out, 2);
    assert!(err.contains(&ip) && err.contains("--port"), "{err}");
}

/// A fleet of `mix` on `n` nodes, imported into `env`'s database.
fn imported_fleet(env: &Env, n: &str, mix: &str, block: u8) -> Sim {
    let list = env.path(&format!("fleet{block}.txt"));
    let (child, _, _) = start_sim(&["-q"], &["--nodes", n, "--mix", mix], block, &list);
    env.cmd(&["-q", "import", list.to_str().unwrap()])
        .assert()
        .success();
    child
}

#[test]
fn progress_bar_reaches_100_percent_on_a_terminal() {
    let env = Env::new();
    let mut sim = imported_fleet(&env, "20", "healthy=3,refused=1", 64);
    let (screen, code) = under_pty(&env, "test light --all --timeout 10", "");
    assert_eq!(code, 4, "{screen}");
    let plain = strip_ansi(&screen);
    assert!(
        plain.contains("] 20/20 100% done: ok 15, failed 5"),
        "the bar ends at 100 %: {plain}"
    );
    assert!(
        plain.contains("job #1 light [") && plain.contains("/s"),
        "{plain}"
    );
    // `jobs watch` draws the same bar (here for a job that already ended).
    let (screen, code) = under_pty(&env, "jobs watch 1", "");
    assert_eq!(code, 4, "{screen}");
    assert!(
        strip_ansi(&screen).contains("] 20/20 100% done: ok 15, failed 5"),
        "{screen}"
    );
    // A terminal that cannot draw a bar (`TERM` unset or `dumb`): progress
    // lines, never silence.
    for term in ["", "dumb"] {
        let (screen, code) = under_pty_with_term(&env, "jobs watch 1", "", term);
        assert_eq!(code, 4, "{screen}");
        assert!(
            screen.contains("[100.0%] 20/20 ok 15 failed 5") && !screen.contains("] 20/20 100%"),
            "TERM={term:?}: {screen}"
        );
    }
    // Not a terminal: progress lines, no bar.
    let out = env
        .cmd(&["test", "light", "--all", "--timeout", "10"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("[100.0%] 20/20 ok 15 failed 5"), "{err}");
    assert!(!err.contains('\x1b'), "{err:?}");
    assert_eq!(signal_and_wait(&mut sim, "-TERM").code(), Some(0));
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

#[test]
fn ctrl_c_under_a_terminal_cancels_keeps_results_and_exits_5() {
    let env = Env::new();
    let mut sim = imported_fleet(&env, "20", "healthy=1,silent=1", 65);
    // Silent nodes would keep the job busy for two minutes.
    let cfg = env.write(
        "slow.toml",
        "[test]\nlight_timeout_secs = 120.0\nconnect_timeout_secs = 120.0\n",
    );
    let bin = assert_cmd::cargo::cargo_bin("connexa");
    // `exec`: dash (CI's /bin/sh) does not exec the command itself, and the
    // waiting shell also gets the terminal's SIGINT and dies of it (130).
    let cmdline = format!(
        "exec {} --db '{}' --config '{}' test light --all --timeout 120",
        bin.display(),
        env.db(),
        cfg.display()
    );
    let mut child = StdCommand::new("script")
        .args(["-qfec", &cmdline, "/dev/null"])
        .env("SHELL", "/bin/sh")
        .env("TERM", "xterm")
        .current_dir(env.dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let screen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let screen = screen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                screen
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    // Wait until the healthy half is committed and shown, then press Ctrl-C.
    let t0 = Instant::now();
    while !strip_ansi(&screen.lock().unwrap()).contains("10/20  50% ok 10 failed 0") {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no progress: {}",
            screen.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut stdin = child.stdin.take().unwrap();
    use std::io::Write;
    stdin.write_all(b"\x03").unwrap();
    stdin.flush().unwrap();
    let t1 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t1.elapsed() < Duration::from_secs(15),
            "Ctrl-C did not stop the job: {}",
            screen.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(stdin);
    reader.join().unwrap();
    let plain = strip_ansi(&screen.lock().unwrap());
    assert_eq!(status.code(), Some(5), "{plain}");
    assert!(
        plain.contains("20/20 100% cancelled: 10 cancelled, 10 results kept"),
        "the bar says how many were cancelled: {plain}"
    );
    // The finished results are kept; the cancelled nodes are untouched.
    assert_eq!(status_count(&env, "ping_light"), 10);
    assert_eq!(status_count(&env, "not_tested"), 10);
    let job = &env.json(&["jobs", "list"])[0];
    assert_eq!(job["state"], "cancelled", "{job}");
    assert_eq!(job["ok"], 10, "{job}");
    assert_eq!(signal_and_wait(&mut sim, "-TERM").code(), Some(0));
}

#[test]
fn detached_job_is_completed_by_run_once() {
    let env = Env::new();
    let mut sim = imported_fleet(&env, "12", "healthy=3,refused=1", 66);
    let (v, code) = json_and_code(&env, &["test", "light", "--all", "--detach"]);
    assert_eq!(code, 0);
    let id = v["job"].as_i64().unwrap();
    assert_eq!(v, serde_json::json!({ "job": id }));
    let show = env.json(&["jobs", "show", &id.to_string()]);
    assert_eq!(show["state"], "queued", "{show}");
    assert_eq!(show["progress"]["pending"], 12, "{show}");
    assert_eq!(status_count(&env, "not_tested"), 12);
    // Human: the id and where it will run.
    let out = env
        .cmd(&["test", "light", "1", "2", "--detach"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains(&format!("queued job #{} (light, 2 nodes)", id + 1))
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("connexa run --once"));

    let (v, code) = json_and_code(&env, &["run", "--once"]);
    assert_eq!(code, 4, "some nodes failed: {v}");
    let jobs = v["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 2, "{v}");
    let first = jobs.iter().find(|j| j["job"] == id).unwrap();
    assert_eq!(first["state"], "done", "{v}");
    assert_eq!(
        (first["ok"].as_u64(), first["failed"].as_u64()),
        (Some(9), Some(3))
    );
    assert_eq!(v["reconcile"]["started"], 0);
    assert_eq!(status_count(&env, "ping_light"), 9);
    // Nothing left: a second pass has nothing to do.
    let out = env.cmd(&["run", "--once"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no unfinished jobs"));
    assert_eq!(signal_and_wait(&mut sim, "-TERM").code(), Some(0));
}

/// `jobs show ID --output json`.
fn job_state(env: &Env, id: i64) -> Value {
    env.json(&["jobs", "show", &id.to_string()])
}

fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn spawn_run(env: &Env, args: &[&str]) -> std::process::Child {
    StdCommand::new(assert_cmd::cargo::cargo_bin("connexa"))
        .args(["--db", &env.db(), "run"])
        .args(args)
        .current_dir(env.dir.path())
        .env_remove("CONNEXA_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn stop_and_wait(child: &mut std::process::Child, signal: &str, secs: u64) -> (i32, String) {
    let ok = StdCommand::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "did not stop within {secs} s of {signal}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.code().unwrap_or(-1), err)
}

#[test]
fn run_drains_on_sigterm_and_the_next_run_resumes_the_job() {
    let env = Env::new();
    // Slow nodes (1.5 s each), two at a time: the job takes about 9 s.
    let mut sim = imported_fleet(&env, "12", "slow:1500=1", 67);
    let (v, _) = json_and_code(
        &env,
        &["test", "light", "--all", "--detach", "--concurrency", "2"],
    );
    let id = v["job"].as_i64().unwrap();
    let mut run = spawn_run(&env, &["--grace", "20"]);
    wait_until("two results", 30, || {
        job_state(&env, id)["progress"]["ok"].as_u64() >= Some(2)
    });
    let (code, err) = stop_and_wait(&mut run, "-TERM", 15);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("every item in flight finished"), "{err}");
    // Items in flight finished and were committed; the rest stayed pending.
    let p = job_state(&env, id);
    assert_eq!(p["progress"]["running"], 0, "{p}");
    let pending = p["progress"]["pending"].as_u64().unwrap();
    assert!(pending > 0 && pending < 12, "{p}");
    assert_eq!(p["state"], "running", "{p}");
    assert_eq!(p["progress"]["ok"].as_u64().unwrap() + pending, 12, "{p}");

    // The next run resumes it to the end, and runs a job queued while it is up
    // (Ctrl-C stops it cleanly too).
    let mut run = spawn_run(&env, &[]);
    wait_until("the job to end", 60, || {
        job_state(&env, id)["state"] == "done"
    });
    let (v, _) = json_and_code(&env, &["test", "light", "1", "2", "--detach"]);
    let second = v["job"].as_i64().unwrap();
    wait_until("the queued job to end", 60, || {
        job_state(&env, second)["state"] == "done"
    });
    assert_eq!(job_state(&env, second)["progress"]["ok"], 2);
    let (code, err) = stop_and_wait(&mut run, "-INT", 15);
    assert_eq!(code, 0, "{err}");
    // Its journal: jobs resumed, picked up and finished (info level by default).
    assert!(
        err.contains("resuming job")
            && err.contains("picking up job")
            && err.contains("runner finished"),
        "{err}"
    );
    let p = job_state(&env, id);
    assert_eq!(p["progress"]["ok"], 12, "{p}");
    assert_eq!(status_count(&env, "ping_light"), 12);
    assert_eq!(signal_and_wait(&mut sim, "-TERM").code(), Some(0));
}

#[test]
fn run_stops_after_the_grace_period_and_leaves_items_for_the_next_run() {
    let env = Env::new();
    let mut sim = imported_fleet(&env, "8", "healthy=1,silent=1", 68);
    let cfg = env.write("slow.toml", "[test]\nlight_timeout_secs = 120.0\n");
    let out = env
        .cmd(&[
            "--config",
            cfg.to_str().unwrap(),
            "--output",
            "json",
            "test",
            "light",
            "--all",
            "--detach",
            "--timeout",
            "120",
        ])
        .output()
        .unwrap();
    let id = serde_json::from_slice::<Value>(&out.stdout).unwrap()["job"]
        .as_i64()
        .unwrap();
    let mut run = StdCommand::new(assert_cmd::cargo::cargo_bin("connexa"))
        .args([
            "--db",
            &env.db(),
            "--config",
            cfg.to_str().unwrap(),
            "run",
            "--grace",
            "0.5",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the healthy half", 30, || {
        job_state(&env, id)["progress"]["ok"].as_u64() == Some(4)
    });
    let (code, err) = stop_and_wait(&mut run, "-TERM", 10);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("items still in flight"), "{err}");
    let p = job_state(&env, id);
    assert_eq!(
        p["progress"]["running"], 4,
        "the silent nodes were in flight: {p}"
    );
    // The silent nodes go away (now refused): `run --once` resumes and ends the job.
    assert_eq!(signal_and_wait(&mut sim, "-TERM").code(), Some(0));
    let (v, code) = json_and_code(&env, &["run", "--once"]);
    assert_eq!(code, 4, "{v}");
    let p = job_state(&env, id);
    assert_eq!(p["state"], "done", "{p}");
    assert_eq!(
        (
            p["progress"]["ok"].as_u64(),
            p["progress"]["failed"].as_u64()
        ),
        (Some(4), Some(4)),
        "{p}"
    );
}

#[test]
fn run_bad_input_is_one_line() {
    let env = Env::new();
    let out = env.cmd(&["run", "--grace", "-1"]).output().unwrap();
    one_line_error(&out, 2);
    let out = env.cmd(&["run", "--grace", "soon"]).output().unwrap();
    one_line_error(&out, 2);
    let out = Command::cargo_bin("connexa")
        .unwrap()
        .args([
            "--db",
            "sqlite:///nonexistent-dir/x.db?mode=rwc",
            "run",
            "--once",
        ])
        .output()
        .unwrap();
    one_line_error(&out, 3);
    let out = env.cmd(&["jobs", "watch", "999"]).output().unwrap();
    assert!(one_line_error(&out, 6).contains("999"));
    let out = env
        .cmd(&["test", "light", "--all", "--detach", "--concurrency", "0"])
        .output()
        .unwrap();
    assert!(one_line_error(&out, 2).contains("--concurrency"));
    let out = env.cmd(&["test", "light", "--detach"]).output().unwrap();
    assert!(one_line_error(&out, 2).contains("nothing selected"));
    let out = env
        .cmd(&["service", "list", "--status", "up"])
        .output()
        .unwrap();
    assert!(one_line_error(&out, 2).contains("\"up\""));
    assert_eq!(env.json(&["jobs", "list"]), serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn service_start_stop_set_the_desired_state_and_list_shows_running_ones() {
    use connexa_core::domain::{Secret, ServiceEndpoint};
    let env = Env::new();
    imported(&env);
    // Node 1 verified (speed_ok), node 3 online with a service; node 2 untested.
    let store = env.store().await;
    for id in [1, 3] {
        store
            .apply(
                NodeId(id),
                Event::Tested(Outcome::success(Level::Speed)),
                ApplyContext::now(),
            )
            .await
            .unwrap();
    }
    store
        .apply(
            NodeId(3),
            Event::ServiceStarted(ServiceEndpoint {
                host: "127.0.0.1".into(),
                port: 20007,
                username: "u3".into(),
                password: Secret::new("sockspw"),
            }),
            ApplyContext::now(),
        )
        .await
        .unwrap();
    drop(store);

    let v = env.json(&["service", "start", "1", "2"]);
    assert_eq!(v["changed"], serde_json::json!([1]), "{v}");
    assert_eq!(v["not_verified"], 1, "{v}");
    assert_eq!(env.json(&["nodes", "show", "1"])["service_wanted"], true);
    assert_eq!(env.json(&["nodes", "show", "2"])["service_wanted"], false);
    let out = env.cmd(&["service", "start", "1"]).output().unwrap();
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("no change: 1 matching nodes, 1 already wanted")
    );
    let out = env
        .cmd(&["service", "start", "--status", "speed_ok,online"])
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains("service wanted on 1 nodes (3); 1 already wanted"),
        "{s}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("reconciler"),
        "says who starts it"
    );
    // Node 1 is wanted and not running (no reconciler here): waiting to start.
    assert_eq!(env.json(&["stats"])["services_waiting"], 1);
    let v = env.json(&["nodes", "list", "--wanted", "--status", "speed_ok"]);
    assert_eq!(
        (v["total"].clone(), v["nodes"][0]["id"].clone()),
        (1.into(), 1.into()),
        "{v}"
    );
    assert_eq!(env.json(&["nodes", "list", "--wanted"])["total"], 2);
    let v = env.json(&["nodes", "list", "--not-wanted"]);
    assert_eq!(
        (v["total"].clone(), v["nodes"][0]["id"].clone()),
        (1.into(), 2.into()),
        "{v}"
    );

    // The running service, with what a client needs.
    env.cmd(&["service", "list", "--proxies"])
        .assert()
        .success()
        .stdout("127.0.0.1:20007:u3:sockspw\n");
    let out = env.cmd(&["service", "list"]).output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.starts_with("NODE") && table.contains("127.0.0.1:20007:u3:sockspw"),
        "{table}"
    );
    let v = env.json(&["service", "list"]);
    assert_eq!(v[0]["node"], 3);
    assert_eq!(v[0]["status"], "online");
    assert_eq!(v[0]["port"], 20007);
    let out = env
        .cmd(&["--output", "csv", "service", "list"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "node,node_ip,status,host,port,username,password,wanted,connections,connections_total,bytes_up,bytes_down,started_at,last_error,restart_pending,kind,interface,worker\n\
         3,127.0.0.7,online,127.0.0.1,20007,u3,sockspw,true,,,,,,,false,socks,,\n"
    );

    // Restart: recorded for the running service; node 1 (wanted, not started)
    // has nothing to restart: exit 4, naming it.
    let out = env.cmd(&["service", "restart", "3", "1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(4));
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("restart requested for 1 services (3)"), "{s}");
    assert!(s.contains("run no service and were left alone (1)"), "{s}");
    let v = env.json(&["service", "list"]);
    assert_eq!(v[0]["restart_pending"], true, "{v}");
    assert_eq!(env.json(&["nodes", "show", "3"])["status"], "online");
    let v = env.json(&["service", "restart", "3"]);
    assert_eq!(
        v,
        serde_json::json!({"matched": 1, "restarting": [3], "not_running": [], "missing": []})
    );
    let out = env.cmd(&["service", "restart", "1"]).output().unwrap();
    assert!(one_line_error(&out, 1).contains("nothing to restart"));
    let out = env
        .cmd(&["service", "restart", "3", "77"])
        .output()
        .unwrap();
    assert!(one_line_error(&out, 6).contains("77"));

    let v = env.json(&["service", "stop", "--all"]);
    assert_eq!(v["changed"], serde_json::json!([1, 3]), "{v}");
    assert_eq!(env.json(&["nodes", "show", "3"])["service_wanted"], false);

    // Bad input.
    let out = env.cmd(&["service", "start"]).output().unwrap();
    assert!(one_line_error(&out, 2).contains("nothing selected"));
    let out = env.cmd(&["service", "stop", "1", "77"]).output().unwrap();
    assert!(one_line_error(&out, 6).contains("77"));
    let out = env
        .cmd(&["service", "start", "--status", "fastest"])
        .output()
        .unwrap();
    one_line_error(&out, 2);
    let out = env.cmd(&["service", "restart"]).output().unwrap();
    assert!(one_line_error(&out, 2).contains("nothing selected"));
    // Stopped (no longer wanted): nothing to restart.
    let out = env.cmd(&["service", "restart", "3"]).output().unwrap();
    assert!(one_line_error(&out, 1).contains("nothing to restart"));
}

#[test]
fn service_list_is_empty_and_says_who_starts_services() {
    let env = Env::new();
    imported(&env);
    let out = env.cmd(&["service", "list"]).output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "no services running\n"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("connexa run"));
    assert_eq!(env.json(&["service", "list"]), serde_json::json!([]));
}

#[test]
fn import_test_light_tests_exactly_the_added_nodes() {
    let env = Env::new();
    // A node imported before: it must not be part of the job.
    env.cmd(&["import", "-"])
        .write_stdin("127.0.0.9:old:pw\n")
        .assert()
        .success();
    let list = env.path("fleet.txt");
    let (mut sim, _, _) = start_sim(
        &["-q"],
        &["--nodes", "10", "--mix", "healthy=4,refused=1"],
        69,
        &list,
    );
    let (v, code) = json_and_code(&env, &["import", list.to_str().unwrap(), "--test", "light"]);
    assert_eq!(code, 4, "refused nodes failed: {v}");
    assert_eq!(v["import"][0]["added"].as_array().unwrap().len(), 10, "{v}");
    assert_eq!(v["job"]["kind"], "light", "{v}");
    assert_eq!(v["job"]["total"], 10, "{v}");
    assert_eq!(v["job"]["state"], "done", "{v}");
    assert_eq!(
        (v["job"]["ok"].as_u64(), v["job"]["failed"].as_u64()),
        (Some(8), Some(2))
    );
    assert_eq!(env.json(&["nodes", "show", "1"])["status"], "not_tested");
    // Again: nothing added, no job.
    let (v, code) = json_and_code(&env, &["import", list.to_str().unwrap(), "--test", "light"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["job"], Value::Null, "{v}");
    // Human output: the report table, then the job's summary line.
    env.cmd(&["nodes", "delete", "--status", "ping_failed", "--yes"])
        .assert()
        .success();
    let out = env
        .cmd(&["import", list.to_str().unwrap(), "--test", "pipeline"])
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.starts_with("SOURCE"), "{s}");
    assert!(s.contains("pipeline: done — 2/2 done"), "{s}");
    // Bad input.
    let out = env
        .cmd(&["import", list.to_str().unwrap(), "--test", "speedy"])
        .output()
        .unwrap();
    one_line_error(&out, 2);
    assert_eq!(signal_and_wait(&mut sim, "-TERM").code(), Some(0));
}

#[test]
fn run_once_interrupted_drains_and_exits_5() {
    let env = Env::new();
    let mut sim = imported_fleet(&env, "10", "slow:1500=1", 73);
    let (v, _) = json_and_code(
        &env,
        &["test", "light", "--all", "--detach", "--concurrency", "2"],
    );
    let id = v["job"].as_i64().unwrap();
    let mut once = spawn_run(&env, &["--once"]);
    wait_until("two results", 30, || {
        job_state(&env, id)["progress"]["ok"].as_u64() >= Some(2)
    });
    let (code, err) = stop_and_wait(&mut once, "-INT", 15);
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("interrupted"), "{err}");
    let p = job_state(&env, id);
    assert_eq!(p["progress"]["running"], 0, "in-flight items finished: {p}");
    assert!(p["progress"]["pending"].as_u64().unwrap() > 0, "{p}");
    assert_eq!(signal_and_wait(&mut sim, "-TERM").code(), Some(0));
}

/// Issue 23: read-only commands work on a database opened read-only.
#[test]
fn read_only_database_serves_read_only_commands() {
    let env = Env::new();
    imported(&env);
    let ro = format!("sqlite://{}?mode=ro", env.path("c.db").display());
    for args in [
        &["stats"][..],
        &["nodes", "list"],
        &["export", "--format", "csv"],
    ] {
        let mut c = Command::cargo_bin("connexa").unwrap();
        let out = c
            .current_dir(env.dir.path())
            .env_remove("CONNEXA_DB")
            .env_remove("CONNEXA_CONFIG")
            .arg("--db")
            .arg(&ro)
            .args(args)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut c = Command::cargo_bin("connexa").unwrap();
    let out = c
        .current_dir(env.dir.path())
        .env_remove("CONNEXA_DB")
        .env_remove("CONNEXA_CONFIG")
        .args(["--db", &ro, "nodes", "delete", "--all", "--yes"])
        .output()
        .unwrap();
    assert_ne!(
        out.status.code(),
        Some(0),
        "a delete on a read-only database"
    );
    assert_eq!(env.json(&["stats"])["total"], 3);
}

/// `connexa run` with `[test] speed_listen` serves the keyed speed endpoint:
/// refused without a nonce, the keyed stream with one signed by the key file
/// (generated 0600 on first use).
#[test]
fn run_serves_the_keyed_speed_endpoint_on_speed_listen() {
    use connexa_core::speed::keyed::SpeedKey;
    use std::io::Write as _;
    let env = Env::new();
    let port = free_port();
    let key_file = env.path("speed.key");
    let cfg = env.path("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[test]\nspeed_listen = \"127.0.0.1:{port}\"\nspeed_key_file = {:?}\n",
            key_file.display().to_string()
        ),
    )
    .unwrap();
    let mut run = StdCommand::new(assert_cmd::cargo::cargo_bin("connexa"))
        .args(["--db", &env.db(), "--config"])
        .arg(&cfg)
        .arg("run")
        .current_dir(env.dir.path())
        .env_remove("CONNEXA_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let request = |target: &str| -> String {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        String::from_utf8_lossy(&out).into_owned()
    };
    wait_until("the speed endpoint", 30, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let r = request("/speed/down?bytes=10");
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    let key = SpeedKey::from_hex(&std::fs::read_to_string(&key_file).unwrap()).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let nonce = key
        .issue(std::time::SystemTime::now(), Duration::from_secs(60))
        .unwrap();
    let r = request(&format!("/speed/down?nonce={nonce}&bytes=1000"));
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.contains("Content-Length: 1000\r\n"), "{r}");
    assert!(r.contains("X-Connexa-Client-Addr: 127.0.0.1\r\n"), "{r}");
    let (code, err) = stop_and_wait(&mut run, "-TERM", 15);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("serving the keyed speed endpoint"), "{err}");
}
