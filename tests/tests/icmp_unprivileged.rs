//! ICMP without root: the light test's pinger uses a Linux "ping socket" when
//! `net.ipv4.ping_group_range` allows the caller's group, and when it does not,
//! it says so once and the probe carries on without ICMP.
//!
//! Each case re-runs this test binary as a child in a fresh network namespace
//! (`unshare --net`, loopback up, `ping_group_range` set there only — the host's
//! setting is untouched) as user/group `nobody`/`nogroup` (65534) with no
//! capabilities (`setpriv`). Needs root to set that up; CI runs it as root.

use connexa_tests::child::{effective_caps, is_root};
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::time::Duration;

use connexa_core::domain::Level;
use connexa_core::probe::{IcmpConfig, IcmpPinger, LightProber, ProbeConfig};
use connexa_core::sim::{Behaviour, Fleet, FleetSpec};

const CHILD: &str = "CONNEXA_ICMP_UNPRIV_CHILD";
const UNAVAILABLE: &str = "ICMP (V4) is unavailable";
const PROBES_MARK: &str = "--- probes start ---";

fn icmp_config() -> IcmpConfig {
    IcmpConfig {
        count: 3,
        timeout: Duration::from_millis(800),
        max_in_flight: 16,
    }
}

/// Runs inside the namespace as `nobody`; `allowed` says what the parent set.
fn child(allowed: bool) {
    assert!(!is_root(), "the child must not run as root");
    assert_eq!(effective_caps(), 0, "the child must have no capabilities");
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::WARN)
        .init();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let pinger = IcmpPinger::new(icmp_config());
        assert_eq!(
            pinger.available(lo).await,
            allowed,
            "ping socket availability"
        );
        let stats = pinger.ping(lo).await;
        if allowed {
            let s = stats.expect("stats from a ping socket");
            assert_eq!((s.sent, s.received), (3, 3), "{s:?}");
            assert!(
                s.avg_ms.is_some_and(|ms| (0.0..800.0).contains(&ms)),
                "{s:?}"
            );
        } else {
            assert_eq!(stats, None, "no ICMP without a socket");
        }

        // The light probe works either way; ICMP never fails a node. Its own
        // pinger says once (for all three probes) that ICMP is unavailable.
        eprintln!("{PROBES_MARK}");
        let fleet = Fleet::start(
            FleetSpec::new(3)
                .first_ip(Ipv4Addr::new(127, 30, 0, 1))
                .port(1723)
                .mix(vec![(Behaviour::Healthy, 1)]),
        )
        .await
        .expect("simulated fleet starts");
        let prober = LightProber::new(ProbeConfig {
            icmp: Some(icmp_config()),
            attempts: 1,
            ..ProbeConfig::default()
        });
        for node in fleet.nodes() {
            let out = prober.probe_addr(node.addr()).await.expect("probe runs");
            assert_eq!(out.reached, Level::Light, "{out:?}");
            assert_eq!(out.failure, None, "{out:?}");
            assert!(out.measurements.ping_ms.is_some(), "{out:?}");
        }
        fleet.shutdown();
    });
    println!("CHILD-OK");
}

/// Sets up the namespace and runs `name` in it as `nobody`; returns stderr.
fn run_child(name: &str, ping_group_range: &str, allowed: bool) -> String {
    let exe = std::env::current_exe().expect("current exe");
    let script = r#"set -e
ip link set lo up
sysctl -q -w net.ipv4.ping_group_range="$RANGE"
exec setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all --bounding-set=-all -- "$EXE" --exact "$NAME" --nocapture --test-threads=1"#;
    let out = Command::new("unshare")
        .args(["--net", "--", "sh", "-c", script])
        .env("RANGE", ping_group_range)
        .env("EXE", &exe)
        .env("NAME", name)
        .env(CHILD, if allowed { "allowed" } else { "denied" })
        .output()
        .expect("run unshare/setpriv (util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success() && stdout.contains("CHILD-OK"),
        "child failed: {}\n{stdout}\n{stderr}",
        out.status
    );
    stderr
}

/// `true` when this process is the child; runs it.
fn as_child() -> bool {
    match std::env::var(CHILD).as_deref() {
        Ok("allowed") => child(true),
        Ok("denied") => child(false),
        _ => return false,
    }
    true
}

/// Root is needed to create the namespace; CI runs as root, so there a
/// non-root run is a failure, elsewhere a loud skip.
fn require_root() -> bool {
    if is_root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must run the unprivileged-ICMP tests as root (they set up a namespace)"
    );
    eprintln!("SKIPPED: needs root to create a network namespace");
    false
}

#[test]
fn unprivileged_icmp_uses_a_ping_socket_when_ping_group_range_allows() {
    if as_child() || !require_root() {
        return;
    }
    let stderr = run_child(
        "unprivileged_icmp_uses_a_ping_socket_when_ping_group_range_allows",
        "65534 65534",
        true,
    );
    assert!(!stderr.contains(UNAVAILABLE), "{stderr}");
}

#[test]
fn unprivileged_icmp_unavailable_is_said_once_and_probes_carry_on() {
    if as_child() || !require_root() {
        return;
    }
    let stderr = run_child(
        "unprivileged_icmp_unavailable_is_said_once_and_probes_carry_on",
        "1 0",
        false,
    );
    let (direct, probes) = stderr.split_once(PROBES_MARK).expect("marker");
    assert_eq!(direct.matches(UNAVAILABLE).count(), 1, "{stderr}");
    assert_eq!(
        probes.matches(UNAVAILABLE).count(),
        1,
        "the prober must say once (not per probe) that ICMP is unavailable:\n{stderr}"
    );
}
