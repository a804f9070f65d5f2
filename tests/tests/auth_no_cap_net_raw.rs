//! Without CAP_NET_RAW the auth test fails fast with a clear reason and no
//! traffic, instead of marking nodes.
//!
//! The test re-runs itself as a child process whose capability bounding set
//! lacks CAP_NET_RAW (`setpriv --bounding-set -net_raw`, so this also holds when
//! the suite runs as root). The child points the prober at a TCP listener of its
//! own on 127.0.0.1 and checks that nothing connected to it.

use connexa_tests::child::{has_cap_net_raw, run_without_cap_net_raw};
use std::net::{Ipv4Addr, TcpListener};
use std::time::{Duration, Instant};

use connexa_core::domain::{NodeId, Secret};
use connexa_core::ports::{ProbeDepth, ProbeError, Prober};
use connexa_core::probe::{LightProber, ProbeConfig};
use connexa_core::sim::{Behaviour, SimNode};
use connexa_core::tunnel::NEED_CAP_NET_RAW;

const CHILD: &str = "CONNEXA_NO_NET_RAW_CHILD";
const NAME: &str = "auth_without_cap_net_raw_fails_fast_with_the_reason";

fn child() {
    assert!(!has_cap_net_raw(), "the child must run without CAP_NET_RAW");
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a local listener");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let node = SimNode {
        ip: Ipv4Addr::LOCALHOST,
        port,
        login: "alice".into(),
        password: Secret::new("s3cret"),
        behaviour: Behaviour::Healthy,
    }
    .node(NodeId(1));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let prober = LightProber::new(ProbeConfig {
        icmp: None,
        attempts: 1,
        handshake_timeout: Duration::from_millis(300),
        ..ProbeConfig::default()
    });
    let started = Instant::now();
    for _ in 0..3 {
        let r = rt.block_on(prober.probe(&node, ProbeDepth::Auth));
        match r {
            Err(ProbeError::NotPermitted(msg)) => {
                assert_eq!(msg, NEED_CAP_NET_RAW);
                assert!(msg.contains("setcap cap_net_raw+ep"));
            }
            other => panic!("expected NotPermitted, got {other:?}"),
        }
    }
    assert!(started.elapsed() < Duration::from_secs(1), "fails fast");
    assert!(
        listener.accept().is_err(),
        "no control connection may be attempted without the GRE socket"
    );
    // The light test still works without the capability.
    let light = rt.block_on(prober.probe(&node, ProbeDepth::Light));
    assert!(light.is_ok(), "{light:?}");
    println!("CHILD-OK");
}

#[test]
fn auth_without_cap_net_raw_fails_fast_with_the_reason() {
    if std::env::var_os(CHILD).is_some() {
        child();
        return;
    }
    run_without_cap_net_raw(NAME, CHILD);
}
