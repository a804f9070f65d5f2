//! `connexa nodes add` and `connexa jobs cancel --all`, run as the binary
//! against temporary SQLite databases (and a loopback simulator).

use std::path::PathBuf;
use std::process::Output;

use assert_cmd::Command;
use serde_json::Value;

mod common;
use common::{signal_and_wait, start_sim};

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

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::cargo_bin("connexa").unwrap();
        c.current_dir(self.dir.path())
            .env_remove("CONNEXA_DB")
            .env_remove("CONNEXA_CONFIG")
            .arg("--db")
            .arg(self.db())
            .args(args);
        c
    }

    /// Runs with `--output json`; returns the exit code and the parsed stdout.
    fn json_code(&self, args: &[&str]) -> (i32, Value) {
        let mut all = vec!["--output", "json"];
        all.extend_from_slice(args);
        let out = self.cmd(&all).output().unwrap();
        let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{args:?}: not JSON ({e}): {} / {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code().unwrap_or(-1), v)
    }

    fn json(&self, args: &[&str]) -> Value {
        let (code, v) = self.json_code(args);
        assert_eq!(code, 0, "{args:?}: {v}");
        v
    }

    fn error(&self, args: &[&str], code: i32) -> String {
        one_line_error(&self.cmd(args).output().unwrap(), code)
    }
}

/// stderr is one `error: ...` line and the exit code is `code`; returns the
/// message without the `error: ` prefix.
fn one_line_error(out: &Output, code: i32) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "not one line: {err:?}");
    err.trim_end()
        .strip_prefix("error: ")
        .unwrap_or_else(|| panic!("{err:?}"))
        .to_owned()
}

#[test]
fn nodes_add_adds_refuses_duplicates_and_conflicts_and_bad_fields_as_import_does() {
    let env = Env::new();
    let n = env.json(&[
        "nodes",
        "add",
        "127.0.0.9",
        "admin",
        "s3cret",
        "--country",
        "US",
        "--state",
        "TX",
        "--city",
        "Austin",
        "--comment",
        "from Bob",
    ]);
    assert_eq!(n["id"], 1);
    assert_eq!(n["password"], "***");
    assert_eq!(n["port"], 1723);
    assert_eq!(n["status"], "not_tested");
    // Expanded as an import expands them.
    assert_eq!(
        (&n["country"], &n["state"]),
        (&Value::from("United States"), &Value::from("Texas"))
    );
    assert_eq!(
        (&n["city"], &n["comment"]),
        (&Value::from("Austin"), &Value::from("from Bob"))
    );
    let shown = env.json(&["nodes", "show", "1", "--reveal"]);
    assert_eq!(shown["password"], "s3cret");

    // The same node again: not added, exit 1, the stored node named.
    let dup = env.error(&["nodes", "add", "127.0.0.9", "admin", "s3cret"], 1);
    assert!(dup.contains("duplicate of stored node 1"), "{dup}");
    // Same address and login, another password: the import's conflict.
    let conflict = env.error(&["nodes", "add", "127.0.0.9", "admin", "other"], 1);
    assert!(
        conflict.contains("conflict: same ip, port and login as stored node 1"),
        "{conflict}"
    );
    // A port in the address makes another node.
    let other = env.json(&["nodes", "add", "127.0.0.9:1724", "admin", "s3cret"]);
    assert_eq!(
        (&other["id"], &other["port"]),
        (&Value::from(2), &Value::from(1724))
    );

    // Refusals: exit 2 with exactly the import's message for the same value.
    std::fs::write(
        env.path("bad.txt"),
        "127.0.0.300:admin:pw\n0.0.0.0:admin:pw\nIp: 127.0.0.8\nPort: 99999\nLogin: a\nPass: b\n",
    )
    .unwrap();
    let (code, report) = env.json_code(&["import", "bad.txt"]);
    assert_eq!(code, 4, "{report}");
    let reasons: Vec<String> = report[0]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["reason"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(reasons.len(), 3, "{report}");
    assert_eq!(reasons[0], r#"invalid IP address "127.0.0.300""#);
    assert_eq!(
        env.error(&["nodes", "add", "127.0.0.300", "admin", "pw"], 2),
        reasons[0]
    );
    assert_eq!(
        env.error(&["nodes", "add", "0.0.0.0", "admin", "pw"], 2),
        reasons[1]
    );
    assert_eq!(
        env.error(
            &["nodes", "add", "127.0.0.8", "a", "b", "--port", "99999"],
            2
        ),
        reasons[2]
    );
    assert_eq!(
        env.error(&["nodes", "add", "127.0.0.8", "a", "b", "--port", "x"], 2),
        r#"port "x" is not a number"#
    );
    assert_eq!(
        env.error(
            &["nodes", "add", "127.0.0.8", "a", "b", "--city", "a\u{7}b"],
            2
        ),
        "city contains a control character"
    );
    // Nothing refused was stored.
    assert_eq!(env.json(&["nodes", "list"])["total"], 2);

    // Human output names the node.
    let out = env
        .cmd(&["nodes", "add", "127.0.0.10", "root", "pw"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("added node 3: 127.0.0.10:1723 root (not_tested)"),
        "{text}"
    );
}

#[test]
fn nodes_add_with_test_light_tests_the_new_node_on_a_sim() {
    let env = Env::new();
    let list = env.path("fleet.txt");
    let (mut sim, port, first_ip) =
        start_sim(&["-q"], &["--nodes", "1", "--mix", "healthy=1"], 95, &list);
    let line = std::fs::read_to_string(&list).unwrap();
    // `[IP]:PORT:LOGIN:PASSWORD`
    let mut parts = line.trim().rsplitn(3, ':');
    let (password, login) = (parts.next().unwrap(), parts.next().unwrap());
    let port_text = port.to_string();
    let v = env.json(&[
        "nodes", "add", &first_ip, login, password, "--port", &port_text, "--test", "light",
    ]);
    assert_eq!(v["job"]["state"], "done", "{v}");
    assert_eq!(v["job"]["ok"], 1, "{v}");
    assert_eq!(v["node"]["status"], "ping_light", "{v}");
    assert_eq!(v["node"]["port"], port);
    assert_eq!(signal_and_wait(&mut sim, "-TERM").code(), Some(0));
}

#[test]
fn jobs_cancel_all_cancels_queued_jobs_and_keeps_finished_ones() {
    let env = Env::new();
    std::fs::write(
        env.path("list.txt"),
        "127.0.0.5:admin:pw1\n127.0.0.6:root:pw2\n127.0.0.7:guest:pw3\n",
    )
    .unwrap();
    env.cmd(&["-q", "import", "list.txt"]).assert().success();
    // A finished job (nothing listens on 127.0.0.5:1723: refused, failed).
    let (code, done) = env.json_code(&["test", "light", "1", "--timeout", "10"]);
    assert_eq!((code, &done["state"]), (4, &Value::from("done")), "{done}");
    // Two queued jobs (no runner takes them).
    for _ in 0..2 {
        env.cmd(&["-q", "test", "light", "--all", "--detach"])
            .assert()
            .success();
    }
    let v = env.json(&["jobs", "cancel", "--all"]);
    assert_eq!(v, serde_json::json!({"cancelled": [2, 3]}));
    for id in ["2", "3"] {
        let j = env.json(&["jobs", "show", id]);
        assert_eq!(j["state"], "cancelled", "{j}");
        assert_eq!(
            (&j["progress"]["cancelled"], &j["progress"]["pending"]),
            (&Value::from(3), &Value::from(0)),
            "{j}"
        );
    }
    let j = env.json(&["jobs", "show", "1"]);
    assert_eq!(j["state"], "done", "the finished job stays as it was: {j}");
    // Nothing left.
    assert_eq!(
        env.json(&["jobs", "cancel", "--all"]),
        serde_json::json!({"cancelled": []})
    );
    let out = env.cmd(&["jobs", "cancel", "--all"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing cancelled"));
    // An id and --all, or neither: usage errors.
    assert_eq!(
        env.cmd(&["jobs", "cancel"]).output().unwrap().status.code(),
        Some(2)
    );
    assert_eq!(
        env.cmd(&["jobs", "cancel", "1", "--all"])
            .output()
            .unwrap()
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn jobs_retest_failed_tests_exactly_the_failed_nodes_again() {
    let env = Env::new();
    // Nothing listens on this port: those two nodes fail (refused) at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        env.path("list.txt"),
        format!("[127.0.0.5]:{port}:a:p\n[127.0.0.6]:{port}:b:p\n"),
    )
    .unwrap();
    env.cmd(&["-q", "import", "list.txt"]).assert().success();
    let (code, first) = env.json_code(&["test", "light", "--all", "--timeout", "10"]);
    assert_eq!((code, &first["failed"]), (4, &Value::from(2)), "{first}");
    // A budget below the light test's minimum is refused before anything runs.
    let err = env.error(&["jobs", "retest-failed", "1", "--timeout", "2"], 2);
    assert!(err.contains("at least 10 s"), "{err}");
    let (code, again) = env.json_code(&["jobs", "retest-failed", "1"]);
    assert_eq!(code, 4, "{again}");
    assert_eq!(
        (
            &again["job"],
            &again["kind"],
            &again["total"],
            &again["failed"]
        ),
        (
            &Value::from(2),
            &Value::from("light"),
            &Value::from(2),
            &Value::from(2)
        ),
        "{again}"
    );
    let err = env.error(&["jobs", "retest-failed", "99"], 6);
    assert!(err.contains("no job with id 99"), "{err}");
    // A job that failed no node: nothing to retest.
    env.cmd(&["-q", "jobs", "cancel", "--all"])
        .assert()
        .success();
    env.cmd(&["-q", "test", "light", "--all", "--detach"])
        .assert()
        .success();
    env.cmd(&["-q", "jobs", "cancel", "3"]).assert().success();
    let err = env.error(&["jobs", "retest-failed", "3"], 2);
    assert!(err.contains("job #3 failed no node"), "{err}");
}
