//! `connexa sim` serves logins: `connexa test auth` over a simulated fleet ends
//! with statuses matching its mix; with `--tunnels` / `--tunnel-rate` it serves
//! tunnels too and `connexa test pipeline` measures them. Needs CAP_NET_RAW
//! (root) for both processes' raw GRE sockets; fails (does not skip) without it.

use std::process::Command;

mod common;
use common::{signal_and_wait, start_sim};

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
    let (mut sim, _, _) = start_sim(
        &[],
        &[
            "--nodes",
            "10",
            "--mix",
            "healthy=6,auth_reject=2,call_reject=2",
        ],
        91,
        &list,
    );
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
    let status = signal_and_wait(&mut sim, "-TERM");
    assert_eq!(status.code(), Some(0));
    let mut err = String::new();
    std::io::Read::read_to_string(&mut sim.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!err.contains("no logins"), "{err}");
}

/// Starts `connexa sim ARGS --list LIST` on its own block; waits for the list.
fn sim(args: &[&str], block: u8, list: &std::path::Path) -> common::Sim {
    start_sim(&[], args, block, list).0
}

#[test]
fn test_pipeline_over_sim_tunnels_measures_each_nodes_rate() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("c.db").display());
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        "[test]\ntest_url = \"http://10.78.0.1/bytes?100000000\"\n\
         speed_duration_secs = 2.0\nspeed_warmup_secs = 0.4\nspeed_streams = 2\n\
         speed_threshold_mbps = 1.0\n",
    )
    .unwrap();
    let fast_list = dir.path().join("fast.txt");
    let slow_list = dir.path().join("slow.txt");
    // 2 unlimited nodes; 2 nodes at 50 kB/s (0.4 Mbit/s, below the threshold).
    let mut fast = sim(&["--nodes", "2", "--tunnels"], 92, &fast_list);
    let mut slow = sim(&["--nodes", "2", "--tunnel-rate", "50000"], 93, &slow_list);
    for list in [&fast_list, &slow_list] {
        let out = connexa()
            .args(["--db", &db, "-q", "import"])
            .arg(list)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = connexa()
        .args(["--db", &db, "--output", "json", "test", "pipeline", "--all"])
        .args(["--timeout", "60"])
        .env("CONNEXA_CONFIG", &config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.code().is_some(), "{stderr}");
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
    assert_eq!(count("speed_ok"), 2, "{stats} {stderr}");
    assert_eq!(
        count("ping_ok"),
        2,
        "too slow stays ping_ok: {stats} {stderr}"
    );
    for child in [&mut fast, &mut slow] {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let _ = child.wait();
    }
}

/// `connexa sim --speed-key` serves the keyed endpoint behind each node; with
/// `self_url` and the same key file the speed test verifies every byte: the
/// honest nodes reach `speed_ok`, the `fake_speed` node (its own bytes) stays
/// `ping_ok` with a content mismatch — and no "spoofable" warning is logged.
#[test]
fn speed_test_against_the_keyed_endpoint_fails_the_faking_node() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("c.db").display());
    let key = dir.path().join("speed.key");
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[test]\nself_url = \"http://10.78.0.1\"\nspeed_key_file = {:?}\n\
             speed_duration_secs = 2.0\nspeed_warmup_secs = 0.4\nspeed_streams = 2\n\
             speed_threshold_mbps = 1.0\n",
            key.display().to_string()
        ),
    )
    .unwrap();
    let list = dir.path().join("fleet.txt");
    let key_arg = key.display().to_string();
    let mut fleet = sim(
        &[
            "--nodes",
            "3",
            "--mix",
            "healthy=2,fake_speed=1",
            "--speed-key",
            &key_arg,
        ],
        94,
        &list,
    );
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
        .args(["--db", &db, "--output", "json", "test", "speed", "--all"])
        .args(["--timeout", "60"])
        .env("CONNEXA_CONFIG", &config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("spoofable"), "{stderr}");
    let nodes = connexa()
        .args(["--db", &db, "--output", "json", "nodes", "list"])
        .output()
        .unwrap();
    let nodes: serde_json::Value = serde_json::from_slice(&nodes.stdout).unwrap();
    let rows = nodes["nodes"]
        .as_array()
        .or(nodes.as_array())
        .unwrap()
        .clone();
    let mut statuses: Vec<(String, String)> = rows
        .iter()
        .map(|n| {
            (
                n["status"].as_str().unwrap_or_default().to_owned(),
                n["last_error"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    statuses.sort();
    assert_eq!(statuses.len(), 3, "{nodes}");
    assert_eq!(statuses[0].0, "ping_ok", "{statuses:?} {stderr}");
    assert!(
        statuses[0].1.contains("content mismatch"),
        "{statuses:?} {stderr}"
    );
    assert_eq!(
        (statuses[1].0.as_str(), statuses[2].0.as_str()),
        ("speed_ok", "speed_ok"),
        "{statuses:?} {stderr}"
    );
    let _ = Command::new("kill")
        .args(["-TERM", &fleet.id().to_string()])
        .status();
    let _ = fleet.wait();
}
