//! Without CAP_NET_RAW the simulated fleet still starts, says why it serves no
//! logins, answers the light handshake, and answers calls with result 2
//! (general error) instead of accepting a call it cannot carry.
//!
//! The test re-runs itself as a child process whose capability bounding set
//! lacks CAP_NET_RAW (`setpriv --bounding-set -net_raw`, as in
//! auth_no_cap_net_raw.rs), so it also holds when the suite runs as root.

use connexa_tests::child::{has_cap_net_raw, run_without_cap_net_raw};
use std::net::Ipv4Addr;

use connexa_core::pptp::control::{
    ControlMessage, Framer, OutgoingCallRequest, StartControlConnectionRequest, Text64,
};
use connexa_core::sim::{Behaviour, Fleet, FleetSpec};
use connexa_core::tunnel::NEED_CAP_NET_RAW;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CHILD: &str = "CONNEXA_SIM_NO_NET_RAW_CHILD";
const NAME: &str = "fleet_without_cap_net_raw_starts_light_only_and_refuses_calls";

async fn next(tcp: &mut tokio::net::TcpStream, framer: &mut Framer) -> ControlMessage {
    let mut buf = [0u8; 1024];
    loop {
        if let Some(frame) = framer.next_frame().unwrap() {
            return ControlMessage::decode(&frame).unwrap();
        }
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(n > 0, "the node closed the control connection");
        framer.push(&buf[..n]);
    }
}

async fn child() {
    assert!(!has_cap_net_raw(), "the child must run without CAP_NET_RAW");
    let fleet = Fleet::start(
        FleetSpec::new(1)
            .first_ip(Ipv4Addr::new(127, 44, 9, 1))
            .port(21733)
            .mix(vec![(Behaviour::Healthy, 1)]),
    )
    .await
    .expect("the fleet starts without the capability");
    assert!(!fleet.serves_logins());
    assert_eq!(fleet.logins_unavailable(), Some(NEED_CAP_NET_RAW));
    assert_eq!(fleet.gre_stats(), None);
    let mut tcp = tokio::net::TcpStream::connect(fleet.nodes()[0].addr())
        .await
        .unwrap();
    let mut framer = Framer::new();
    let sccrq =
        ControlMessage::StartControlConnectionRequest(StartControlConnectionRequest::new("t", "t"));
    tcp.write_all(&sccrq.encode()).await.unwrap();
    assert!(matches!(
        next(&mut tcp, &mut framer).await,
        ControlMessage::StartControlConnectionReply(r) if r.result_code == 1
    ));
    let ocrq = ControlMessage::OutgoingCallRequest(OutgoingCallRequest {
        call_id: 77,
        call_serial_number: 1,
        minimum_bps: 2400,
        maximum_bps: 10_000_000,
        bearer_type: 3,
        framing_type: 3,
        packet_recv_window_size: 64,
        packet_processing_delay: 0,
        phone_number_length: 0,
        phone_number: Text64::default(),
        subaddress: Text64::default(),
    });
    tcp.write_all(&ocrq.encode()).await.unwrap();
    match next(&mut tcp, &mut framer).await {
        ControlMessage::OutgoingCallReply(r) => {
            assert_eq!((r.peer_call_id, r.result_code), (77, 2), "{r:?}");
        }
        other => panic!("expected Outgoing-Call-Reply, got {other:?}"),
    }
    assert_eq!(fleet.live_calls(), 0);
    fleet.close().await;
    println!("CHILD-OK");
}

#[test]
fn fleet_without_cap_net_raw_starts_light_only_and_refuses_calls() {
    if std::env::var_os(CHILD).is_some() {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(child());
        return;
    }
    run_without_cap_net_raw(NAME, CHILD);
}
