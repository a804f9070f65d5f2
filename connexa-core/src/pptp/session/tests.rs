use std::collections::HashMap;
use std::sync::Arc;

use super::*;
use crate::domain::Secret;
use crate::pptp::ppp::CpPacket;
use crate::pptp::ppp::RawOption;
use crate::pptp::ppp::ccp::{MPPE_H, MPPE_S, OPT_MPPE};

fn table() -> crate::pptp::mschapv2::Credentials {
    Arc::new(HashMap::from([("alice".to_owned(), Secret::new("s3cret"))]))
}

fn pair(password: &str, t0: Instant) -> (SessionClient, SessionServer) {
    let c = SessionClient::from_login(
        LoginClient::with_seed(
            LoginConfig::new("alice", Secret::new(password)),
            [1; 32],
            t0,
        ),
        Some(NetworkConfig::client()),
    );
    let s = SessionServer::from_login(
        LoginServer::with_seed(ServerConfig::new(table()), [2; 32], t0),
        ServerNetworkConfig::default(),
    );
    (c, s)
}

/// Exchanges frames until both are quiet; `drop` decides per client→server frame.
fn exchange(c: &mut SessionClient, s: &mut SessionServer, now: Instant) {
    for _ in 0..50 {
        let mut busy = false;
        while let Some(f) = c.poll_transmit() {
            busy = true;
            s.handle_input(&f, now);
        }
        while let Some(f) = s.poll_transmit() {
            busy = true;
            c.handle_input(&f, now);
        }
        if !busy {
            return;
        }
    }
    panic!("no quiescence");
}

fn ip(n: u32, len: usize) -> Vec<u8> {
    let mut p = vec![0x45, 0, 0, 0];
    p.extend_from_slice(&n.to_be_bytes());
    p.resize(len, (n % 251) as u8);
    p
}

#[test]
fn client_and_server_come_up_and_carry_encrypted_datagrams_both_ways() {
    let t0 = Instant::now();
    let (mut c, mut s) = pair("s3cret", t0);
    exchange(&mut c, &mut s, t0);
    assert!(c.is_up(), "{:?}", c.network().map(Network::state));
    assert!(s.is_up());
    let n = c.network().unwrap();
    assert_eq!(n.local_addr(), Some(Ipv4Addr::new(10, 78, 0, 100)));
    assert_eq!(n.peer_addr(), Some(Ipv4Addr::new(10, 78, 0, 1)));
    assert_eq!(n.dns(), vec![Ipv4Addr::new(10, 78, 0, 1)]);
    assert_eq!(c.mtu(), 1396);

    // Client → server: every frame on the wire is MPPE, never plain IPv4, and
    // the plaintext does not appear in it.
    let secret = b"TOP-SECRET-PAYLOAD-0123456789".to_vec();
    let mut pkt = ip(7, 20);
    pkt.extend_from_slice(&secret);
    assert!(c.send_ip(&pkt));
    let wire = c.poll_transmit().unwrap();
    let f = PppFrame::decode(&wire).unwrap();
    assert_eq!(f.protocol, PROTO_COMPRESSED);
    assert!(!wire.windows(secret.len()).any(|w| w == secret.as_slice()));
    s.handle_input(&wire, t0);
    assert_eq!(s.poll_ip(), Some(pkt.clone()));

    // Server → client, many packets, with losses: stateless MPPE recovers.
    let mut expected = Vec::new();
    for i in 0..500u32 {
        let p = ip(i, 40 + (i as usize % 1300));
        assert!(s.send_ip(&p));
        let w = s.poll_transmit().unwrap();
        if i % 7 == 3 {
            continue;
        }
        c.handle_input(&w, t0);
        expected.push(p);
    }
    let got: Vec<_> = std::iter::from_fn(|| c.poll_ip()).collect();
    assert_eq!(got, expected);
    let st = c.network().unwrap().stats();
    assert_eq!((st.received, st.dropped), (expected.len() as u64, 0));
}

#[test]
fn nothing_flows_before_the_network_is_up_or_after_a_wrong_password() {
    let t0 = Instant::now();
    let (mut c, mut s) = pair("wrong", t0);
    assert!(!c.send_ip(&ip(1, 20)));
    exchange(&mut c, &mut s, t0);
    assert!(matches!(
        c.login().outcome(),
        Some(LoginOutcome::AuthRejected { .. })
    ));
    assert!(c.network().is_none() && s.network().is_none());
    assert!(!c.send_ip(&ip(1, 20)));
}

#[test]
fn plain_ipv4_from_the_peer_is_dropped_and_unknown_protocols_rejected() {
    let t0 = Instant::now();
    let (mut c, mut s) = pair("s3cret", t0);
    exchange(&mut c, &mut s, t0);
    let plain = PppFrame {
        protocol: PROTO_IPV4,
        information: &ip(1, 20),
    }
    .encode(false, false);
    c.handle_input(&plain, t0);
    assert_eq!(c.poll_ip(), None);
    assert_eq!(c.network().unwrap().stats().dropped, 1);
    // IPv6CP (0x8057): LCP Protocol-Reject naming it.
    let v6cp = PppFrame {
        protocol: 0x8057,
        information: &[1, 1, 0, 4],
    }
    .encode(false, false);
    c.handle_input(&v6cp, t0);
    let rej = c.poll_transmit().unwrap();
    let f = PppFrame::decode(&rej).unwrap();
    let p = CpPacket::decode(f.information).unwrap();
    assert_eq!(
        (f.protocol, p.code, &p.data[..2]),
        (PROTO_LCP, 8, &[0x80, 0x57][..])
    );
}

#[test]
fn a_server_insisting_on_stateful_mppe_fails_the_network_phase_clearly() {
    let t0 = Instant::now();
    let (mut c, mut s) = pair("s3cret", t0);
    // Let the login finish, then play a stateful-only CCP peer by hand.
    for _ in 0..30 {
        while let Some(f) = c.poll_transmit() {
            let proto = PppFrame::decode(&f).unwrap().protocol;
            if proto == PROTO_CCP {
                let req = CpPacket::decode(PppFrame::decode(&f).unwrap().information).unwrap();
                if req.code == 1 {
                    let nak = CpPacket {
                        code: 3,
                        id: req.id,
                        data: RawOption::encode_list(&[RawOption::new(
                            OPT_MPPE,
                            MPPE_S.to_be_bytes(),
                        )]),
                    };
                    c.handle_input(
                        &PppFrame {
                            protocol: PROTO_CCP,
                            information: &nak.encode(),
                        }
                        .encode(false, false),
                        t0,
                    );
                }
                continue;
            }
            s.handle_input(&f, t0);
        }
        while let Some(f) = s.poll_transmit() {
            if PppFrame::decode(&f).unwrap().protocol != PROTO_CCP {
                c.handle_input(&f, t0);
            }
        }
    }
    match c.network().map(Network::state) {
        Some(NetworkState::Failed(why)) => assert!(why.contains("stateful"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(!c.is_up());
    let _ = MPPE_H;
}

#[test]
fn a_silent_ccp_peer_times_out() {
    let t0 = Instant::now();
    let (mut c, mut s) = pair("s3cret", t0);
    let mut now = t0;
    for _ in 0..200 {
        for _ in 0..20 {
            while let Some(f) = c.poll_transmit() {
                if PppFrame::decode(&f).unwrap().protocol != PROTO_CCP {
                    s.handle_input(&f, now);
                }
            }
            while let Some(f) = s.poll_transmit() {
                if PppFrame::decode(&f).unwrap().protocol != PROTO_CCP {
                    c.handle_input(&f, now);
                }
            }
        }
        if matches!(
            c.network().map(Network::state),
            Some(NetworkState::Failed(_))
        ) {
            break;
        }
        let Some(t) = c.poll_timeout() else { break };
        now = t.max(now);
        c.handle_timeout(now);
        s.handle_timeout(now);
    }
    match c.network().map(Network::state) {
        Some(NetworkState::Failed(why)) => assert!(why.contains("CCP"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(now - t0 <= Duration::from_secs(31), "{:?}", now - t0);
}
