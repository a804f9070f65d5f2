//! The process's raw GRE socket on loopback: inbound Enhanced GRE is handed to
//! the tunnel registered under (source address, call id); anything else is
//! dropped and counted. Needs CAP_NET_RAW (root), like the auth test itself.

use std::net::Ipv4Addr;
use std::time::Duration;

use connexa_core::pptp::gre::GrePacket;
use connexa_core::tunnel::GreSocket;

fn gre(call_id: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    GrePacket {
        call_id,
        seq: Some(seq),
        ack: None,
        payload,
    }
    .encode()
    .expect("encode")
}

#[tokio::test(flavor = "current_thread")]
async fn raw_gre_socket_demultiplexes_by_peer_and_call_id() {
    let sock = GreSocket::open().unwrap_or_else(|e| {
        panic!("{e} (this test needs CAP_NET_RAW: run it as root, e.g. via tests/run.sh)")
    });
    let lo = Ipv4Addr::LOCALHOST;
    let other = Ipv4Addr::new(127, 0, 0, 2);
    let mut a = sock.register(lo).expect("route a");
    let mut b = sock.register(lo).expect("route b");
    let mut c = sock.register(other).expect("route c");
    assert_ne!(a.call_id(), b.call_id(), "fresh call ids per peer");
    assert_eq!(sock.live_routes(), 3);

    // Packets from 127.0.0.1 (our own sends arrive with that source).
    a.send(&gre(b.call_id(), 1, b"for b")).await.expect("send");
    a.send(&gre(a.call_id(), 2, b"for a")).await.expect("send");
    // c is registered for peer 127.0.0.2: a packet from 127.0.0.1 with c's
    // call id is not c's.
    a.send(&gre(c.call_id(), 3, b"not c's"))
        .await
        .expect("send");
    // a GRE version 0 packet is not PPTP.
    a.send(&[0, 0, 0x08, 0x00, 0x45]).await.expect("send");

    let wait = Duration::from_secs(2);
    let got_b = tokio::time::timeout(wait, b.recv())
        .await
        .expect("b got a packet");
    let got_a = tokio::time::timeout(wait, a.recv())
        .await
        .expect("a got a packet");
    let pb = got_b.expect("socket alive");
    let pa = got_a.expect("socket alive");
    assert_eq!(GrePacket::decode(&pb).expect("GRE").payload, b"for b");
    assert_eq!(GrePacket::decode(&pa).expect("GRE").payload, b"for a");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(c.try_recv().is_none(), "c must not get 127.0.0.1's packet");
    assert!(a.try_recv().is_none() && b.try_recv().is_none());

    // After a route is dropped, its packets are dropped too.
    let b_id = b.call_id();
    drop(b);
    assert_eq!(sock.live_routes(), 2);
    a.send(&gre(b_id, 4, b"late")).await.expect("send");
    tokio::time::sleep(Duration::from_millis(200)).await;

    let s = sock.stats();
    eprintln!("{s:?}");
    assert_eq!(s.delivered, 2, "{s:?}");
    assert!(
        s.unrouted >= 2,
        "c's id from the wrong peer + the dropped route: {s:?}"
    );
    assert!(s.malformed >= 1, "{s:?}");
    drop(c);
    drop(a);
    assert_eq!(sock.live_routes(), 0);
}
