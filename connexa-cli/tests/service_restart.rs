//! `connexa service restart` end to end: a simulated node with a tunnel is
//! verified (`test pipeline`), its SOCKS5 service runs in a `connexa run`
//! process, bytes pulled through it with curl show in `service list`'s
//! counters, and `service restart` — another process, talking to the database
//! only — makes the running process stop the listener and start it again on
//! the same port with the same credentials. Needs CAP_NET_RAW (root) for the
//! raw GRE sockets of the simulator and of the tunnel.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{signal_and_wait, start_sim};

fn connexa(db: &str, config: &std::path::Path) -> Command {
    let mut c = Command::new(assert_cmd::cargo::cargo_bin("connexa"));
    c.env_remove("CONNEXA_DB")
        .env("CONNEXA_CONFIG", config)
        .env("RUST_BACKTRACE", "1")
        .args(["--db", db]);
    c
}

fn json(db: &str, config: &std::path::Path, args: &[&str]) -> (Value, i32) {
    let out = connexa(db, config)
        .args(["--output", "json"])
        .args(args)
        .output()
        .unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?}: not JSON ({e}): {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (v, out.status.code().unwrap_or(-1))
}

/// Polls `service list` until `ok` holds for its first service (at most 30 s).
fn wait_list(db: &str, config: &std::path::Path, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let t0 = Instant::now();
    loop {
        let (v, code) = json(db, config, &["service", "list"]);
        assert_eq!(code, 0, "{v}");
        if v.as_array().is_some_and(|a| a.len() == 1) && ok(&v[0]) {
            return v[0].clone();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{what}: not after 30 s: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn curl_through(s: &Value, bytes: u64) -> std::process::Output {
    Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
        ])
        .arg("--socks5-hostname")
        .arg(format!(
            "{}:{}@{}:{}",
            s["username"].as_str().unwrap(),
            s["password"].as_str().unwrap(),
            s["host"].as_str().unwrap(),
            s["port"]
        ))
        .arg(format!("http://10.78.0.1/bytes?{bytes}"))
        .output()
        .expect("curl")
}

#[test]
fn service_restart_keeps_the_port_while_curl_pulls_bytes_through_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("c.db").display());
    let config = dir.path().join("c.toml");
    let proxies = dir.path().join("proxies.txt");
    std::fs::write(
        &config,
        format!(
            "[test]\ntest_url = \"http://10.78.0.1/bytes?100000000\"\n\
             speed_duration_secs = 1.0\nspeed_warmup_secs = 0.2\nspeed_streams = 1\n\
             speed_threshold_mbps = 1.0\n\
             [services]\nport_min = 34200\nport_max = 34249\n\
             reconcile_interval_secs = 0.3\nmonitor_interval_secs = 0.3\n\
             proxies_file = {:?}\n",
            proxies.display().to_string()
        ),
    )
    .unwrap();
    let list = dir.path().join("fleet.txt");
    let (mut sim, _, _) = start_sim(&[], &["--nodes", "1", "--tunnels"], 96, &list);
    let out = connexa(&db, &config)
        .args(["-q", "import"])
        .arg(&list)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (v, code) = json(
        &db,
        &config,
        &["test", "pipeline", "--all", "--timeout", "60"],
    );
    assert_eq!(code, 0, "{v}");
    let (v, _) = json(&db, &config, &["nodes", "show", "1"]);
    assert_eq!(v["status"], "speed_ok", "{v}");

    // Nothing runs yet: nothing to restart (exit 1).
    let out = connexa(&db, &config)
        .args(["service", "restart", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to restart"));

    let out = connexa(&db, &config)
        .args(["service", "start", "1"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut run = connexa(&db, &config)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let first = wait_list(&db, &config, "service up with counters", |s| {
        s["status"] == "online" && s["counters"]["started_at"].is_string()
    });
    let line = format!(
        "{}:{}:{}:{}\n",
        first["host"].as_str().unwrap(),
        first["port"],
        first["username"].as_str().unwrap(),
        first["password"].as_str().unwrap()
    );
    assert_eq!(std::fs::read_to_string(&proxies).unwrap(), line);

    // Bytes through the service move the counters `service list` shows.
    let out = curl_through(&first, 400_000);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "400000");
    let moved = wait_list(&db, &config, "counters moved", |s| {
        s["counters"]["bytes_down"].as_u64().unwrap_or(0) >= 400_000
    });
    assert!(
        moved["counters"]["bytes_up"].as_u64().unwrap() > 0,
        "{moved}"
    );
    assert!(
        moved["counters"]["connections_total"].as_u64().unwrap() >= 1,
        "{moved}"
    );
    let out = connexa(&db, &config)
        .args(["service", "list"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("DOWN") && table.contains(line.trim()),
        "{table}"
    );

    // The restart: recorded by this process, carried out by `connexa run`.
    let (v, code) = json(&db, &config, &["service", "restart", "1"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["restarting"], serde_json::json!([1]));
    let started = moved["counters"]["started_at"].clone();
    let again = wait_list(&db, &config, "restarted", |s| {
        s["restart_pending"] == false
            && s["counters"]["started_at"] != started
            && s["status"] == "online"
    });
    for k in ["host", "port", "username", "password"] {
        assert_eq!(again[k], first[k], "{k} kept across the restart");
    }
    assert!(
        again["counters"]["bytes_down"].as_u64().unwrap() < 400_000,
        "a new run counts from zero: {again}"
    );
    let out = curl_through(&again, 100_000);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "100000");
    let (v, _) = json(&db, &config, &["nodes", "history", "1"]);
    assert!(
        !v.to_string().contains("service_stopped"),
        "a restart is no stop: {v}"
    );

    assert_eq!(std::fs::read_to_string(&proxies).unwrap(), line);
    assert!(signal_and_wait(&mut run, "-TERM").success());
    // Its services stopped with it: the proxies file says so.
    assert_eq!(std::fs::read_to_string(&proxies).unwrap(), "");

    // The last counters were recorded on the way out.
    let (v, _) = json(&db, &config, &["service", "list"]);
    let c = &v[0]["counters"];
    assert_eq!(c["connections"], 0, "{v}");
    assert!(c["bytes_down"].as_u64().unwrap() >= 100_000, "{v}");

    // A request made while no process runs the service is done by the next
    // pass, which starts it (same port) — here `run --once`.
    let (v, code) = json(&db, &config, &["service", "restart", "1"]);
    assert_eq!((code, v["restarting"].clone()), (0, serde_json::json!([1])));
    let (v, code) = json(&db, &config, &["run", "--once"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["reconcile"]["started"], 1, "{v}");
    assert_eq!(
        v["reconcile"]["restarted"], 0,
        "nothing ran in that process: {v}"
    );
    let (v, _) = json(&db, &config, &["service", "list"]);
    assert_eq!(v[0]["restart_pending"], false, "{v}");
    assert_eq!(v[0]["port"], first["port"], "{v}");

    let _ = signal_and_wait(&mut sim, "-TERM");
}
