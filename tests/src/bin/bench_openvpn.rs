//! Benchmark (issue 17): an `openvpn` service against a SOCKS5 service
//! through the same lab node (two calls to the lab's pptpd), in the same run.
//!
//! Both services run in this process over the real `PptpOpener`; the same
//! lab file (`CONNEXA_LAB_FILE_URL`, fetched at the server's PPP address) is
//! downloaded by `curl` through each, alternately, `--rounds` times: through
//! the SOCKS5 service from the lab's namespace (`--socks5-hostname`), and
//! through the OpenVPN service from a client namespace where Debian's
//! `openvpn` client runs with the generated profile. Every download's size
//! and sha256 are checked. Figures: Mbit/s of each (median and best), the
//! ratio OpenVPN / SOCKS5, and memory: the openvpn server process's RSS and
//! PSS, and how much this process's RSS grew when each service started.
//!
//! Run by `tests/bench_openvpn.sh` (lab up, root). Figures only: nothing is
//! asserted about time.
//!
//! `bench_openvpn [--rounds N]`

use std::sync::Arc;
use std::time::Duration;

use connexa_core::domain::{Node, NodeId, Status};
use connexa_core::openvpn::{OpenvpnConfig, OpenvpnLauncher};
use connexa_core::ports::ServiceLauncher;
use connexa_core::service::PptpOpener;
use connexa_core::socks::{SocksConfig, SocksLauncher};
use connexa_core::tunnel::{GreSocket, TunnelConfig};
use connexa_tests::lab::{Lab, in_lab};
use connexa_tests::ovpn_lab::{
    SERVER_SIDE, UP, client, client_ns, file_via_ppp, in_ns, read, wait_for, write_profile,
};
use connexa_tests::socks_kit::{rss_kib, sha256_hex};

fn node(lab: &Lab, id: i64) -> Node {
    Node {
        id: NodeId(id),
        status: Status::SpeedOk,
        ..lab.node()
    }
}

/// `curl` in namespace `ns` with `args`; the body's sha256 and length are
/// checked; returns Mbit/s.
async fn timed_fetch(lab: &Lab, ns: &str, args: &[&str]) -> f64 {
    let mut cmd = vec!["curl", "-sS", "--max-time", "300"];
    cmd.extend_from_slice(args);
    let url = file_via_ppp(lab);
    cmd.push(&url);
    let started = std::time::Instant::now();
    let out = in_ns(ns, &cmd).await;
    let secs = started.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{}: {}",
        cmd.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len() as u64, lab.file_size, "a whole file");
    assert_eq!(sha256_hex(&out.stdout), lab.file_sha256, "the right file");
    lab.file_size as f64 * 8.0 / secs / 1e6
}

/// (VmRSS, Pss) of process `pid`, in KiB.
fn rss_pss_kib(pid: &str) -> (u64, u64) {
    let field = |file: &str, name: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/{file}"))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("status", "VmRSS:"), field("smaps_rollup", "Pss:"))
}

fn stats(v: &[f64]) -> (f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    (s[s.len() / 2], s[s.len() - 1])
}

fn main() {
    let mut rounds = 5usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--rounds" => {
                rounds = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--rounds N")
            }
            other => panic!("unknown argument {other} (usage: bench_openvpn [--rounds N])"),
        }
    }
    let lab = Lab::require();
    in_lab(&lab, || async {
        let gre = GreSocket::open().expect("a raw GRE socket (run as root)");
        let opener = || {
            Arc::new(PptpOpener::with_gre_socket(
                TunnelConfig::default(),
                gre.clone(),
            ))
        };
        let tmp = std::env::temp_dir().join(format!("bench_openvpn.{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        let dir = tmp.join("ovpn");
        let ns = client_ns(&lab, 0).await;

        let rss0 = rss_kib().0;
        let socks = SocksLauncher::new(
            opener(),
            SocksConfig {
                port_min: 31950,
                port_max: 31959,
                ..SocksConfig::default()
            },
        );
        let sep = socks
            .start(&node(&lab, 1), None)
            .await
            .expect("SOCKS5 service");
        let rss1 = rss_kib().0;
        let ovpn = OpenvpnLauncher::new(
            opener(),
            OpenvpnConfig {
                dir: dir.clone(),
                bind: SERVER_SIDE.parse().unwrap(),
                ports: 11950..=11959,
                ..OpenvpnConfig::default()
            },
        );
        let oep = ovpn
            .start(&node(&lab, 2), None)
            .await
            .expect("openvpn service");
        let rss2 = rss_kib().0;
        let profile = write_profile(&dir, tmp.join("b.ovpn"), NodeId(2), &oep);
        let c = client(&ns, &profile, &tmp.join("client.log"));
        assert!(
            wait_for(&c.log, &[UP], Duration::from_secs(60))
                .await
                .is_some(),
            "the openvpn client did not connect: {}",
            read(&c.log)
        );
        let proxy = format!(
            "{}:{}@{}:{}",
            sep.username,
            sep.password.expose(),
            sep.host,
            sep.port
        );
        // One warm-up each (TCP slow start, ARP, the server's first packets).
        timed_fetch(&lab, &lab.netns, &["--socks5-hostname", &proxy]).await;
        timed_fetch(&lab, &ns.name, &[]).await;
        let (mut s, mut o) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            s.push(timed_fetch(&lab, &lab.netns, &["--socks5-hostname", &proxy]).await);
            o.push(timed_fetch(&lab, &ns.name, &[]).await);
        }
        let pid = read(&dir.join("services/2/openvpn.pid")).trim().to_string();
        let (server_rss, server_pss) = rss_pss_kib(&pid);
        let ((sm, sb), (om, ob)) = (stats(&s), stats(&o));
        println!(
            "bench_openvpn: lab file {:.1} MiB, {rounds} rounds, alternating",
            lab.file_size as f64 / 1048576.0
        );
        println!("  socks5   Mbit/s median {sm:.1} best {sb:.1}  all {s:.1?}");
        println!("  openvpn  Mbit/s median {om:.1} best {ob:.1}  all {o:.1?}");
        println!("  ratio openvpn/socks5 (medians): {:.2}", om / sm);
        println!(
            "  memory: openvpn server process RSS {server_rss} KiB, PSS {server_pss} KiB; \
             this process's RSS grew {} KiB at the SOCKS5 start, {} KiB at the openvpn start",
            rss1.saturating_sub(rss0),
            rss2.saturating_sub(rss1)
        );
        drop(c);
        ovpn.stop(NodeId(2)).await.expect("stop openvpn");
        socks.stop(NodeId(1)).await.expect("stop socks");
        drop(ns);
        let _ = std::fs::remove_dir_all(&tmp);
    });
}
