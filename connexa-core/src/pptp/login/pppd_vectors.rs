//! Frames captured from a real Linux pptpd/pppd 2.4.9 (Debian bookworm, options
//! `require-mschap-v2 require-mppe-128`) talking to this crate's [`LoginClient`]
//! over real GRE in the project's QEMU lab. Each live run ended as asserted here
//! (success with the authenticator verified; 691 for a wrong password; an empty
//! Failure for an unknown user); the frames are frozen so the interop stays tested
//! without the lab.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::*;
use crate::pptp::mschapv2::{ChapOutcome, MsChapClient};
use crate::pptp::ppp::fsm::{Negotiator, Verdict};
use crate::pptp::ppp::lcp::LcpPacket;
use crate::pptp::ppp::{CpPacket, RawOption};

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// pppd's LCP Configure-Request: MRU 1400, ACCM 0, Auth MS-CHAPv2, magic, PFC, ACFC.
const PPPD_CONFIGURE_REQUEST: &str =
    "ff03c0210101001d010405780206000000000305c223810506ea3c4b4e07020802";

#[test]
fn pppd_configure_request_is_acked_verbatim() {
    let frame = hex(PPPD_CONFIGURE_REQUEST);
    let f = PppFrame::decode(&frame).unwrap();
    let LcpPacket::ConfigureRequest { options, .. } = LcpPacket::decode(f.information).unwrap()
    else {
        panic!("not a Configure-Request")
    };
    assert!(options.contains(&crate::pptp::ppp::lcp::LcpOption::mschapv2()));
    let mut n = LcpNegotiator::new(LcpConfig::client(0x8FFA_7629), 1);
    let raw = RawOption::parse_list(&CpPacket::decode(f.information).unwrap().data).unwrap();
    assert_eq!(n.check(&raw, true), Verdict::Ack);
    assert_eq!(n.negotiated().peer_auth, Some((PROTO_CHAP, vec![0x81])));

    // Through the driver: the client answers with a Configure-Ack of the same options.
    let t0 = Instant::now();
    let mut c = LoginClient::with_seed(
        LoginConfig::new("alice", Secret::new("s3cret")),
        [3; 32],
        t0,
    );
    let _own_request = c.poll_transmit().unwrap();
    c.handle_input(&frame, t0);
    let ack = c.poll_transmit().unwrap();
    let mut expected = frame.clone();
    expected[4] = 2; // Configure-Ack, same id, same options
    assert_eq!(ack, expected);
}

#[test]
fn pppd_compressed_echo_request_decodes() {
    // pppd sends LCP Echo-Request with ACFC applied once negotiated.
    let bytes = hex("c02109000008ec6a2a9c");
    let f = PppFrame::decode(&bytes).unwrap();
    assert_eq!(f.protocol, PROTO_LCP);
    assert_eq!(
        LcpPacket::decode(f.information).unwrap(),
        LcpPacket::EchoRequest {
            id: 0,
            magic: 0xEC6A_2A9C,
            data: vec![]
        }
    );
}

fn replay(
    password: &str,
    peer_challenge: &str,
    challenge: &str,
    response: &str,
    result: &str,
) -> ChapOutcome {
    let mut pc = [0u8; 16];
    pc.copy_from_slice(&hex(peer_challenge));
    let mut client = MsChapClient::with_peer_challenge("alice", Secret::new(password), pc);
    // pppd applies ACFC to CHAP frames: the captures start with the protocol field.
    client.handle_input(&hex(challenge)[2..], Instant::now());
    let sent = client.poll_transmit().unwrap();
    // Byte for byte the Response pppd received (and, for the right password, accepted).
    assert_eq!(sent, hex(response)[4..]);
    client.handle_input(&hex(result)[2..], Instant::now());
    client.outcome().cloned().unwrap()
}

#[test]
fn pppd_accepts_our_response_and_we_verify_its_authenticator() {
    let outcome = replay(
        "s3cret",
        "55d5f079e710f95f95ac907c06a5b63f",
        "c223013d001a10edc894cae5922116679f330d3fca88ea7070747064",
        "ff03c223023d003b3155d5f079e710f95f95ac907c06a5b63f0000000000000000977558441fe6d3b687230bf4c03000e2bc07b6ce12b0bda500616c696365",
        "c223033d003f533d36383435333342374533364135334636413645413844364241334535393142333042363933353939204d3d416363657373206772616e746564",
    );
    assert!(
        matches!(outcome, ChapOutcome::Success { ref message, .. } if message == "Access granted"),
        "{outcome:?}"
    );
}

#[test]
fn pppd_rejects_a_wrong_password_with_691() {
    let outcome = replay(
        "wrong",
        "952b2d1e4a9d30ed6670e8995c0c0f73",
        "c2230154001a103f270c838a22cda47a04c17ba34a75fd7070747064",
        "ff03c2230254003b31952b2d1e4a9d30ed6670e8995c0c0f73000000000000000011158622f78cfe68d2857b72c4dc30877b9faf597635be6d00616c696365",
        "c22304540044453d36393120523d3120433d336632373063383338613232636461343761303463313762613334613735666420563d30204d3d4163636573732064656e696564",
    );
    let ChapOutcome::Failure(f) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(
        (f.error, f.retry, f.version, f.message.as_str()),
        (Some(691), true, Some(0), "Access denied")
    );
    // pppd sends the C= value in lower case.
    assert_eq!(f.challenge.map(|c| c[0]), Some(0x3f));
}

#[test]
fn pppd_empty_failure_for_an_unknown_user_is_a_rejection() {
    // For a user missing from chap-secrets pppd answers with a bare Failure.
    let t0 = Instant::now();
    let mut c = LoginClient::with_seed(LoginConfig::new("nobody", Secret::new("x")), [4; 32], t0);
    // Bring LCP up against the server side, then substitute pppd's bare Failure.
    let mut s = LoginServer::with_seed(ServerConfig::new(Arc::new(HashMap::new())), [5; 32], t0);
    let mut challenge_id = None;
    for _ in 0..10 {
        if challenge_id.is_some() {
            break; // our Response is not delivered: pppd's answer is substituted below
        }
        while let Some(f) = c.poll_transmit() {
            s.handle_input(&f, t0);
        }
        while let Some(f) = s.poll_transmit() {
            if let Ok(fr) = PppFrame::decode(&f)
                && fr.protocol == PROTO_CHAP
            {
                challenge_id = fr.information.get(1).copied();
            }
            c.handle_input(&f, t0);
        }
    }
    assert_eq!(c.phase(), LoginPhase::Authenticate);
    let id = challenge_id.expect("challenge seen");
    c.handle_input(&[0xC2, 0x23, 4, id, 0, 4], t0);
    assert_eq!(
        c.outcome(),
        Some(&LoginOutcome::AuthRejected {
            code: None,
            retry: false,
            message: String::new()
        })
    );
    assert!(matches!(
        c.outcome().and_then(LoginOutcome::to_failure),
        Some(Failure::AuthRejected { code: None, .. })
    ));
}
