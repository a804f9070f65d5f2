//! `connexa sim` serves logins: `connexa test auth` over a simulated fleet ends
//! with statuses matching its mix. Needs CAP_NET_RAW (root) for both processes'
//! raw GRE sockets; fails (does not skip) without it.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn connexa() -> Command {
    let mut c = Command::new(assert_cmd::cargo::cargo_bin("connexa"));
    c.env_remove("CONNEXA_DB")
        .env_remove("CONNEXA_CONFIG")
        .env("RUST_BACKTRACE", "1");
    c
}

#[test]
fn test_auth_on_a_simulated_fleet_matches_its_mix() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("c.db").display());
    let list = dir.path().join("fleet.txt");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let first_ip = format!("127.91.{}.1", std::process::id() % 200 + 20);
    let mut sim = connexa()
        .args(["sim", "--nodes", "10"])
        .args(["--mix", "healthy=6,auth_reject=2,call_reject=2"])
        .args(["--port", &port.to_string(), "--first-ip", &first_ip])
        .arg("--list")
        .arg(&list)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !list.exists() {
        assert!(sim.try_wait().unwrap().is_none(), "sim exited early");
        assert!(t0.elapsed() < Duration::from_secs(30), "no node list");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = connexa()
        .args(["--db", &db, "-q", "import"])
        .arg(&list)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = connexa()
        .args(["--db", &db, "--output", "json", "test", "auth", "--all"])
        .args(["--timeout", "60"])
        .output()
        .unwrap();
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(
        out.status.code(),
        Some(4),
        "some nodes fail: {summary} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(summary["total"], 10, "{summary}");
    assert_eq!(summary["ok"], 6, "{summary}");
    assert_eq!(summary["state"], "done", "{summary}");

    let stats = connexa()
        .args(["--db", &db, "--output", "json", "stats"])
        .output()
        .unwrap();
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    let count = |s: &str| {
        stats["by_status"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["status"] == s)
            .map_or(0, |c| c["count"].as_u64().unwrap())
    };
    assert_eq!(count("ping_ok"), 6, "{stats}");
    assert_eq!(count("auth_failed"), 2, "{stats}");
    assert_eq!(count("ping_light"), 2, "{stats}");

    // SIGTERM: the fleet closes politely and the command exits 0.
    let ok = Command::new("kill")
        .args(["-TERM", &sim.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = sim.try_wait().unwrap() {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "sim did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
    let mut err = String::new();
    std::io::Read::read_to_string(&mut sim.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!err.contains("no logins"), "{err}");
}
