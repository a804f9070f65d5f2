//! Verdicts over lossy, distant links (the simulator's `lossy:P` and
//! `latency:MS`), with the settings a user gets by default: the prober, the
//! engine and the per-node budget of `Config::default()`.
//!
//! Needs CAP_NET_RAW (root), like `sim_auth`. Every fleet here uses its own
//! 127.46.N.0/24 block.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use connexa_core::config::Config;
use connexa_core::domain::{NodeFilter, Page, Status};
use connexa_core::engine::JobOptions;
use connexa_core::ports::{JobKind, JobState, NodeStore};
use connexa_core::runtime::NetworkPorts;
use connexa_core::sim::{Behaviour, Fleet, FleetSpec, Impairment};
use connexa_tests::fleet_store::store_with_fleet;

const PORT: u16 = 21747;

/// Starts the fleet, stores its nodes, runs an auth job with the default
/// settings to the end; returns the status of each node by behaviour, and
/// the fleet's GRE counters.
async fn auth_job(
    block: u8,
    mix: Vec<(Behaviour, u32)>,
    count: usize,
) -> (HashMap<(Behaviour, Status), usize>, Fleet) {
    let fleet = Fleet::start(
        FleetSpec::new(count)
            .first_ip(Ipv4Addr::new(127, 46, block, 1))
            .port(PORT)
            .mix(mix),
    )
    .await
    .expect("simulated fleet starts");
    assert!(
        fleet.serves_logins(),
        "run as root: {:?}",
        fleet.logins_unavailable()
    );
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_fleet(&fleet, &dir.path().join("l.db")).await;
    let config = Config::default();
    let engine = NetworkPorts::from_config(&config).engine(store.clone(), &config);
    let job = engine
        .start_job(JobKind::Auth, NodeFilter::all(), JobOptions::default())
        .await
        .unwrap();
    let summary = tokio::time::timeout(Duration::from_secs(240), engine.wait(job))
        .await
        .expect("the job ends")
        .unwrap();
    assert_eq!(summary.job.state, JobState::Done);
    assert!(summary.progress.is_complete(), "{:?}", summary.progress);
    let mut by: HashMap<(Behaviour, Status), usize> = HashMap::new();
    let page = Page {
        limit: 10_000,
        ..Page::default()
    };
    let nodes = store.list(&NodeFilter::all(), page).await.unwrap().nodes;
    assert_eq!(nodes.len(), count);
    for (node, sim) in nodes.iter().zip(fleet.nodes()) {
        assert_eq!(node.ip, std::net::IpAddr::V4(sim.ip));
        *by.entry((sim.behaviour.clone(), node.status)).or_default() += 1;
    }
    (by, fleet)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_5_percent_loss_and_150_ms_healthy_nodes_log_in_and_wrong_passwords_never_do() {
    let link = Impairment::lossy(5.0).with_latency(Duration::from_millis(150));
    let healthy = Behaviour::Healthy.impaired(link);
    let reject = Behaviour::AuthReject.impaired(link);
    let (by, fleet) = auth_job(1, vec![(healthy.clone(), 200), (reject.clone(), 20)], 220).await;
    let ok = by
        .get(&(healthy.clone(), Status::PingOk))
        .copied()
        .unwrap_or(0);
    assert!(
        ok >= 198,
        "{ok} of 200 healthy nodes reached ping_ok: {by:?}"
    );
    assert_eq!(
        by.get(&(reject.clone(), Status::AuthFailed)),
        Some(&20),
        "{by:?}"
    );
    assert_eq!(by.get(&(reject, Status::PingOk)), None, "{by:?}");
    // The link really lost packets: about 5 % of those offered each way.
    // `lost` counts both ways; the link was offered `delivered` packets
    // inbound (counted before the link drops some) and `sent` + the
    // outbound losses outbound, so `delivered + sent` is the offered count
    // less the outbound losses (the share is a slight over-estimate).
    let stats = fleet.gre_stats().unwrap();
    let share = stats.lost as f64 / (stats.delivered + stats.sent) as f64;
    assert!(
        (0.02..0.10).contains(&share),
        "lost {} of about {} GRE packets offered: {stats:?}",
        stats.lost,
        stats.delivered + stats.sent
    );
    fleet.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_10_percent_loss_and_300_ms_logins_still_pass() {
    let link = Impairment::lossy(10.0).with_latency(Duration::from_millis(300));
    let healthy = Behaviour::Healthy.impaired(link);
    let reject = Behaviour::AuthReject.impaired(link);
    let (by, fleet) = auth_job(2, vec![(healthy.clone(), 20), (reject.clone(), 5)], 25).await;
    let ok = by.get(&(healthy, Status::PingOk)).copied().unwrap_or(0);
    assert!(ok >= 19, "{ok} of 20 healthy nodes reached ping_ok: {by:?}");
    assert_eq!(by.get(&(reject, Status::AuthFailed)), Some(&5), "{by:?}");
    fleet.close().await;
}

/// The latency is real: a login is several round trips, so over a 400 ms
/// link it cannot end sooner than the four round trips every login needs
/// (control handshake, call, LCP, MS-CHAPv2), whatever the machine's load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_over_a_distant_link_takes_its_round_trips() {
    let link = Impairment::default().with_latency(Duration::from_millis(400));
    let t0 = Instant::now();
    let (by, fleet) = auth_job(3, vec![(Behaviour::Healthy.impaired(link), 1)], 1).await;
    let took = t0.elapsed();
    assert_eq!(by.values().sum::<usize>(), 1);
    assert_eq!(
        by.keys().next().map(|k| k.1),
        Some(Status::PingOk),
        "{by:?}"
    );
    assert!(
        took >= Duration::from_millis(1600),
        "a login over 400 ms took {took:?}"
    );
    assert_eq!(fleet.gre_stats().unwrap().lost, 0);
    fleet.close().await;
}

/// CCP (MPPE-128) and IPCP retransmit like LCP: over a link losing 5 % of
/// packets each way with 150 ms of round trip, every tunnel comes up with the
/// default settings, carries an HTTP download whose bytes are all right (MPPE
/// keys stay in step across the lost packets), and closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_come_up_and_carry_data_over_a_lossy_distant_link() {
    use connexa_core::domain::Secret;
    use connexa_core::sim::{TUNNEL_HOST, TunnelSpec, pattern};
    use connexa_core::speed::http::{self, HttpUrl};
    use connexa_core::tunnel::{GreSocket, Tunnel, TunnelConfig};

    let link = Impairment::lossy(5.0).with_latency(Duration::from_millis(150));
    let fleet = Fleet::start(
        FleetSpec::new(10)
            .first_ip(Ipv4Addr::new(127, 46, 4, 1))
            .port(PORT)
            .mix(vec![(Behaviour::Healthy.impaired(link), 1)])
            .tunnels(TunnelSpec::default()),
    )
    .await
    .expect("simulated fleet starts");
    assert!(
        fleet.serves_logins(),
        "run as root: {:?}",
        fleet.logins_unavailable()
    );
    let gre = GreSocket::open().expect("raw GRE socket (root)");
    let mut set = tokio::task::JoinSet::new();
    for n in fleet.nodes().to_vec() {
        let gre = Arc::clone(&gre);
        set.spawn(async move {
            let t = Tunnel::open_addr(
                n.addr(),
                &n.login,
                &Secret::new(n.password.expose().to_owned()),
                &TunnelConfig::default(),
                gre,
            )
            .await
            .map_err(|e| format!("{}: {e}", n.ip))?;
            let url = HttpUrl::parse(&format!("http://{TUNNEL_HOST}/bytes?50000")).unwrap();
            let mut s = t
                .connect(std::net::SocketAddr::from((TUNNEL_HOST, 80)))
                .await
                .map_err(|e| format!("{}: connect: {e}", n.ip))?;
            let mut got = Vec::new();
            http::get(&mut s, &url, |d| got.extend_from_slice(d))
                .await
                .map_err(|e| format!("{}: GET: {e}", n.ip))?;
            drop(s);
            let _ = t.close().await;
            Ok::<_, String>(got)
        });
    }
    let mut done = 0;
    while let Some(r) = set.join_next().await {
        let body = r.unwrap().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(body.len(), 50_000);
        assert!(
            body.iter()
                .enumerate()
                .all(|(i, b)| *b == pattern(i as u64)),
            "the body differs from the pattern"
        );
        done += 1;
    }
    assert_eq!(done, 10);
    assert!(fleet.gre_stats().unwrap().lost > 0, "the link lost nothing");
    fleet.close().await;
}
