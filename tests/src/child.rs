//! Re-running a test as a child process with fewer privileges: the tests that
//! prove what happens without CAP_NET_RAW (or without root) run themselves
//! again under `setpriv`, with an environment variable telling the child it is
//! the child. The child prints `CHILD-OK` when all its assertions held.

use std::process::Command;

/// The effective capability set of this process (`CapEff` in /proc).
pub fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// `true` if this process has CAP_NET_RAW (bit 13) in its effective set.
pub fn has_cap_net_raw() -> bool {
    effective_caps() & (1 << 13) != 0
}

/// `true` if this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Runs the test `name` of this test binary again, as a child without
/// CAP_NET_RAW (dropped from the bounding and inheritable sets with `setpriv`
/// when this process has it), with `child_env=1`; panics with the child's
/// output unless it succeeded and printed `CHILD-OK`.
pub fn run_without_cap_net_raw(name: &str, child_env: &str) {
    let exe = std::env::current_exe().expect("current exe");
    let mut cmd = if has_cap_net_raw() {
        let mut c = Command::new("setpriv");
        c.args(["--bounding-set", "-net_raw", "--inh-caps", "-net_raw", "--"]);
        c.arg(&exe);
        c
    } else {
        Command::new(&exe)
    };
    let out = cmd
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(child_env, "1")
        .output()
        .expect("run the child (setpriv from util-linux when root)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("CHILD-OK"),
        "child failed: {}\n{stdout}\n{stderr}",
        out.status
    );
}

/// `true` if this process has CAP_NET_ADMIN (bit 12) in its effective set.
pub fn has_cap_net_admin() -> bool {
    effective_caps() & (1 << 12) != 0
}

/// As [`run_without_cap_net_raw`], for CAP_NET_ADMIN (`setpriv
/// --bounding-set -net_admin --inh-caps -net_admin` when this process has it).
pub fn run_without_cap_net_admin(name: &str, child_env: &str) {
    let exe = std::env::current_exe().expect("current exe");
    let mut cmd = if has_cap_net_admin() {
        let mut c = Command::new("setpriv");
        c.args([
            "--bounding-set",
            "-net_admin",
            "--inh-caps",
            "-net_admin",
            "--",
        ]);
        c.arg(&exe);
        c
    } else {
        Command::new(&exe)
    };
    let out = cmd
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(child_env, "1")
        .output()
        .expect("run the child (setpriv from util-linux when root)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("CHILD-OK"),
        "child failed: {}\n{stdout}\n{stderr}",
        out.status
    );
}
