//! End-to-end tests of the login driver against the server side, with fake time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::pptp::mschapv2::{AuthenticatorOutcome, ChapPacket, MsChapAuthenticator};
use crate::pptp::ppp::fsm::{CONFIGURE_REQUEST, TERMINATE_REQUEST};
use crate::pptp::ppp::lcp::{LcpOption, LcpPacket};
use crate::pptp::ppp::{CpPacket, RawOption};

const LATENCY: Duration = Duration::from_millis(20);

fn table() -> Credentials {
    Arc::new(HashMap::from([
        ("alice".to_owned(), Secret::new("s3cret")),
        ("bob".to_owned(), Secret::new("hunter2")),
    ]))
}

/// A filter over frames in flight: returns None to drop, Some(frame) to deliver.
type Tamper = Box<dyn FnMut(bool, usize, Vec<u8>) -> Option<Vec<u8>>>;

struct Run {
    now: Instant,
    client_frames: usize,
}

/// Drives a client and a server over a fake link with latency until both have
/// nothing left to do. `to_server` false = server→client.
fn drive(
    client: &mut LoginClient,
    server: &mut LoginServer,
    t0: Instant,
    mut tamper: Option<Tamper>,
) -> Run {
    let mut now = t0;
    let mut flight: Vec<(Instant, bool, Vec<u8>)> = Vec::new();
    let mut counter = 0usize;
    let mut client_frames = 0;
    for _step in 0..100_000 {
        while let Some(f) = client.poll_transmit() {
            client_frames += 1;
            counter += 1;
            let f = match tamper.as_mut() {
                Some(t) => t(true, counter, f),
                None => Some(f),
            };
            if let Some(f) = f {
                flight.push((now + LATENCY, true, f));
            }
        }
        while let Some(f) = server.poll_transmit() {
            counter += 1;
            let f = match tamper.as_mut() {
                Some(t) => t(false, counter, f),
                None => Some(f),
            };
            if let Some(f) = f {
                flight.push((now + LATENCY, false, f));
            }
        }
        // A successful login leaves the link up: stop once both sides agree and
        // nothing is in flight.
        if client.phase() == LoginPhase::Authenticated
            && server.outcome().is_some()
            && flight.is_empty()
        {
            return Run { now, client_frames };
        }
        let next = [
            flight.iter().map(|(t, ..)| *t).min(),
            client.poll_timeout(),
            server.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(next) = next else {
            return Run { now, client_frames };
        };
        assert!(next >= now, "time never goes backwards");
        now = next;
        let (due, rest): (Vec<_>, Vec<_>) = flight.into_iter().partition(|(t, ..)| *t <= now);
        flight = rest;
        for (_, to_server, f) in due {
            if to_server {
                server.handle_input(&f, now);
            } else {
                client.handle_input(&f, now);
            }
        }
        client.handle_timeout(now);
        server.handle_timeout(now);
    }
    panic!("the login did not end within 100,000 steps");
}

fn client(user: &str, pw: &str, t0: Instant) -> LoginClient {
    LoginClient::with_seed(LoginConfig::new(user, Secret::new(pw)), [1; 32], t0)
}

fn server(t0: Instant) -> LoginServer {
    LoginServer::with_seed(ServerConfig::new(table()), [2; 32], t0)
}

#[test]
fn right_password_logs_in_and_verifies_the_server() {
    let t0 = Instant::now();
    let (mut c, mut s) = (client("alice", "s3cret", t0), server(t0));
    let run = drive(&mut c, &mut s, t0, None);
    assert!(
        matches!(c.outcome(), Some(LoginOutcome::Success { .. })),
        "{:?}",
        c.outcome()
    );
    assert_eq!(c.outcome().and_then(LoginOutcome::to_failure), None);
    assert_eq!(
        s.outcome(),
        Some(&ServerOutcome::Accepted {
            user: "alice".into()
        })
    );
    assert_eq!(c.phase(), LoginPhase::Authenticated);
    // Two round trips of LCP and one of CHAP: well under a second of fake time.
    assert!(
        run.now - t0 < Duration::from_millis(200),
        "{:?}",
        run.now - t0
    );
    let n = c.lcp().negotiator().negotiated();
    assert_eq!(n.peer_auth, Some((PROTO_CHAP, vec![0x81])));
    assert!(n.send_pfc && n.send_acfc);

    // LCP echo works both ways once logged in (liveness for the tunnel).
    let id = c.send_echo_request(run.now).expect("LCP is open");
    let run = drive(&mut c, &mut s, run.now, None);
    assert_eq!(c.take_echo_replies(), vec![id]);
    assert!(c.take_echo_replies().is_empty(), "drained");

    // Closing afterwards is polite and completes on both sides.
    c.close(run.now);
    drive(&mut c, &mut s, run.now, None);
    assert!(c.is_done());
    assert!(s.is_done());
    assert!(
        c.outcome().is_some_and(LoginOutcome::is_success),
        "closing keeps the outcome"
    );
}

#[test]
fn wrong_password_is_rejected_with_691_and_both_sides_close() {
    let t0 = Instant::now();
    let (mut c, mut s) = (client("alice", "wrong", t0), server(t0));
    drive(&mut c, &mut s, t0, None);
    match c.outcome() {
        Some(LoginOutcome::AuthRejected {
            code: Some(691),
            retry: false,
            message,
        }) => {
            assert_eq!(message, "Authentication failure")
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        c.outcome().and_then(LoginOutcome::to_failure),
        Some(Failure::AuthRejected {
            code: Some(691),
            ..
        })
    ));
    assert_eq!(
        s.outcome(),
        Some(&ServerOutcome::Rejected {
            user: "alice".into()
        })
    );
    assert!(
        c.is_done(),
        "client tore the link down: {:?}",
        c.lcp().state()
    );
    assert!(
        s.is_done(),
        "server tore the link down: {:?}",
        s.lcp.state()
    );
}

#[test]
fn unknown_user_is_rejected_like_a_wrong_password() {
    let t0 = Instant::now();
    let (mut c, mut s) = (client("mallory", "s3cret", t0), server(t0));
    drive(&mut c, &mut s, t0, None);
    assert!(matches!(
        c.outcome(),
        Some(LoginOutcome::AuthRejected {
            code: Some(691),
            ..
        })
    ));
    assert!(c.is_done());
}

#[test]
fn silent_server_fails_after_max_configure_without_hanging() {
    let t0 = Instant::now();
    let (mut c, mut s) = (client("alice", "s3cret", t0), server(t0));
    let run = drive(
        &mut c,
        &mut s,
        t0,
        Some(Box::new(|to_server, _, f| {
            (!to_server).then_some(f).filter(|_| false)
        })),
    );
    assert_eq!(
        c.outcome(),
        Some(&LoginOutcome::LcpFailed(LcpFailure::NoResponse))
    );
    assert!(matches!(
        c.outcome().and_then(LoginOutcome::to_failure),
        Some(Failure::LcpFailed { detail }) if detail.contains("Max-Configure")
    ));
    assert!(c.is_done());
    let cfg = FsmConfig::default();
    assert_eq!(
        run.client_frames, cfg.max_configure as usize,
        "exactly Max-Configure requests"
    );
    assert!(run.now - t0 >= cfg.restart * cfg.max_configure);
    assert!(
        run.now - t0 <= Duration::from_secs(45),
        "{:?}",
        run.now - t0
    );
}

#[test]
fn lost_frames_are_recovered_by_retransmission() {
    let t0 = Instant::now();
    let (mut c, mut s) = (client("bob", "hunter2", t0), server(t0));
    let mut dropped_challenge = false;
    let tamper: Tamper = Box::new(move |to_server, n, f| {
        if n == 1 || n == 4 {
            return None; // lose some LCP frames
        }
        if !to_server
            && !dropped_challenge
            && PppFrame::decode(&f).is_ok_and(|fr| fr.protocol == PROTO_CHAP)
        {
            dropped_challenge = true;
            return None; // lose the first Challenge
        }
        Some(f)
    });
    let run = drive(&mut c, &mut s, t0, Some(tamper));
    assert!(
        c.outcome().is_some_and(LoginOutcome::is_success),
        "{:?}",
        c.outcome()
    );
    assert!(
        run.now - t0 >= Duration::from_secs(3),
        "recovery took at least one restart period"
    );
}

#[test]
fn forged_success_is_refused_and_the_link_closed() {
    let t0 = Instant::now();
    let (mut c, mut s) = (client("alice", "s3cret", t0), server(t0));
    let tamper: Tamper = Box::new(|to_server, _, f| {
        if let (false, Ok(frame)) = (to_server, PppFrame::decode(&f))
            && frame.protocol == PROTO_CHAP
            && let Ok(ChapPacket::Success { id, .. }) = ChapPacket::decode(frame.information)
        {
            let forged = ChapPacket::Success {
                id,
                message: b"S=0123456789ABCDEF0123456789ABCDEF01234567 M=ok".to_vec(),
            };
            let info = forged.encode();
            return Some(
                PppFrame {
                    protocol: PROTO_CHAP,
                    information: &info,
                }
                .encode(false, false),
            );
        }
        Some(f)
    });
    drive(&mut c, &mut s, t0, Some(tamper));
    assert_eq!(c.outcome(), Some(&LoginOutcome::BadAuthenticator));
    assert!(c.is_done());
}

#[test]
fn server_terminating_mid_lcp_is_a_clean_failure() {
    let t0 = Instant::now();
    let (mut c, mut s) = (client("alice", "s3cret", t0), server(t0));
    // The server sends its Configure-Request, then goes away politely.
    s.close(t0);
    drive(&mut c, &mut s, t0, None);
    assert!(
        matches!(
            c.outcome(),
            Some(LoginOutcome::LcpFailed(
                LcpFailure::PeerTerminated | LcpFailure::NoResponse
            ))
        ),
        "{:?}",
        c.outcome()
    );
    assert!(c.is_done());
}

#[test]
fn server_without_authentication_is_reported() {
    // An LCP peer that does not ask for authentication (client policy on both ends).
    let t0 = Instant::now();
    let mut c = client("alice", "s3cret", t0);
    let mut peer = Fsm::new(
        LcpNegotiator::new(LcpConfig::client(0x5555_0001), 9),
        FsmConfig::default(),
    );
    peer.open(t0);
    peer.up(t0);
    let mut now = t0;
    for _ in 0..1000 {
        let mut busy = false;
        while let Some(p) = peer.poll_transmit() {
            busy = true;
            c.handle_input(
                &PppFrame {
                    protocol: PROTO_LCP,
                    information: &p,
                }
                .encode(false, false),
                now,
            );
        }
        while let Some(f) = c.poll_transmit() {
            busy = true;
            if let Ok(frame) = PppFrame::decode(&f) {
                peer.handle_input(frame.information, now);
            }
        }
        if busy {
            continue; // deliver everything before letting time pass
        }
        let next = [c.poll_timeout(), peer.poll_timeout()]
            .into_iter()
            .flatten()
            .min();
        let Some(next) = next else { break };
        now = next;
        c.handle_timeout(now);
        peer.handle_timeout(now);
    }
    assert_eq!(c.outcome(), Some(&LoginOutcome::NoAuthentication));
    assert!(c.is_done());
}

#[test]
fn password_never_shows_in_debug() {
    let t0 = Instant::now();
    let c = client("alice", "s3cret-very", t0);
    let cfg = LoginConfig::new("alice", Secret::new("s3cret-very"));
    let shown = format!("{c:?} {cfg:?}");
    assert!(!shown.contains("s3cret-very"));
}

// ---------------------------------------------------------------------------
// Adversarial peer
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Move {
    /// Ack the client's Configure-Request.
    Ack,
    /// Nak it with these options.
    Nak(Vec<(u8, Vec<u8>)>),
    /// Reject the options selected by this mask.
    Reject(u8),
    /// Say nothing.
    Silence,
    /// Send our own Configure-Request with these options.
    Request(Vec<(u8, Vec<u8>)>),
    /// Send an acceptable Configure-Request (MS-CHAPv2, a magic number).
    GoodRequest(bool),
    /// Send bytes.
    Garbage(Vec<u8>),
    /// Send a packet with an unknown code / Code-Reject / Echo.
    Odd(u8),
}

fn option_strategy() -> impl Strategy<Value = (u8, Vec<u8>)> {
    prop_oneof![
        (Just(1u8), proptest::collection::vec(any::<u8>(), 2..=2)),
        (
            Just(3u8),
            prop_oneof![
                Just(vec![0xC2, 0x23, 0x81]),
                Just(vec![0xC2, 0x23, 0x05]),
                Just(vec![0xC0, 0x23])
            ]
        ),
        (Just(5u8), proptest::collection::vec(any::<u8>(), 4..=4)),
        (Just(7u8), Just(vec![])),
        (Just(8u8), Just(vec![])),
        (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..6)),
    ]
}

fn move_strategy() -> impl Strategy<Value = Move> {
    prop_oneof![
        3 => Just(Move::Ack),
        3 => proptest::collection::vec(option_strategy(), 0..4).prop_map(Move::Nak),
        3 => any::<u8>().prop_map(Move::Reject),
        1 => Just(Move::Silence),
        2 => proptest::collection::vec(option_strategy(), 0..4).prop_map(Move::Request),
        2 => any::<bool>().prop_map(Move::GoodRequest),
        1 => proptest::collection::vec(any::<u8>(), 0..12).prop_map(Move::Garbage),
        1 => any::<u8>().prop_map(Move::Odd),
    ]
}

fn lcp_frame(p: &CpPacket) -> Vec<u8> {
    PppFrame {
        protocol: PROTO_LCP,
        information: &p.encode(),
    }
    .encode(false, false)
}

fn to_raw(opts: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let raw: Vec<RawOption> = opts
        .iter()
        .map(|(k, d)| RawOption::new(*k, d.clone()))
        .collect();
    RawOption::encode_list(&raw)
}

/// The adversary's answers to one client frame.
fn adversary(script: &[Move], turn: &mut usize, frame: &[u8], id: &mut u8) -> Vec<Vec<u8>> {
    let Ok(f) = PppFrame::decode(frame) else {
        return vec![];
    };
    if f.protocol != PROTO_LCP {
        return vec![];
    }
    let Ok(p) = CpPacket::decode(f.information) else {
        return vec![];
    };
    match p.code {
        TERMINATE_REQUEST => {
            return vec![lcp_frame(&CpPacket {
                code: 6,
                id: p.id,
                data: vec![],
            })];
        }
        CONFIGURE_REQUEST => {}
        _ => return vec![],
    }
    let m = &script[*turn % script.len()];
    *turn += 1;
    *id = id.wrapping_add(1);
    let reply = match m {
        Move::Ack => CpPacket {
            code: 2,
            id: p.id,
            data: p.data.clone(),
        },
        Move::Nak(opts) => CpPacket {
            code: 3,
            id: p.id,
            data: to_raw(opts),
        },
        Move::Reject(mask) => {
            let opts = RawOption::parse_list(&p.data).unwrap_or_default();
            let chosen: Vec<RawOption> = opts
                .into_iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << (i % 8)) != 0)
                .map(|(_, o)| o)
                .collect();
            CpPacket {
                code: 4,
                id: p.id,
                data: RawOption::encode_list(&chosen),
            }
        }
        Move::Silence => return vec![],
        Move::Request(opts) => CpPacket {
            code: 1,
            id: *id,
            data: to_raw(opts),
        },
        Move::GoodRequest(with_auth) => {
            let mut opts = vec![LcpOption::MagicNumber(0x0BAD_F00D).to_raw()];
            if *with_auth {
                opts.push(LcpOption::mschapv2().to_raw());
            }
            CpPacket {
                code: 1,
                id: *id,
                data: RawOption::encode_list(&opts),
            }
        }
        Move::Garbage(bytes) => {
            return vec![
                PppFrame {
                    protocol: PROTO_LCP,
                    information: bytes,
                }
                .encode(false, false),
            ];
        }
        Move::Odd(code) => {
            let code = [7u8, 8, 9, 10, 11, 12, 200][usize::from(*code) % 7];
            CpPacket {
                code,
                id: *id,
                data: vec![0xC0, 0x21, 0, 0, 0, 0],
            }
        }
    };
    vec![lcp_frame(&reply)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Whatever an LCP peer does, the login ends (never panics, never loops):
    /// within the LCP + auth deadlines plus the terminate phase, and with a bounded
    /// number of Configure-Requests.
    #[test]
    fn adversarial_lcp_peer_always_ends(script in proptest::collection::vec(move_strategy(), 1..12), seed: [u8; 32]) {
        let t0 = Instant::now();
        let cfg = LoginConfig::new("alice", Secret::new("s3cret"));
        let limit = t0 + cfg.lcp_timeout + cfg.auth_timeout + Duration::from_secs(10);
        let mut c = LoginClient::with_seed(cfg.clone(), seed, t0);
        let mut now = t0;
        let mut flight: Vec<(Instant, bool, Vec<u8>)> = Vec::new();
        let (mut turn, mut id) = (0usize, 0u8);
        let mut requests = 0u32;
        let mut steps = 0u32;
        loop {
            steps += 1;
            prop_assert!(steps < 50_000, "too many steps");
            while let Some(f) = c.poll_transmit() {
                if PppFrame::decode(&f).ok().and_then(|p| p.information.first().copied()) == Some(CONFIGURE_REQUEST) {
                    requests += 1;
                }
                flight.push((now + LATENCY, true, f));
            }
            let next = [flight.iter().map(|(t, ..)| *t).min(), c.poll_timeout()].into_iter().flatten().min();
            let Some(next) = next else { break };
            now = next;
            prop_assert!(now <= limit, "still running at {:?}", now - t0);
            let (due, rest): (Vec<_>, Vec<_>) = flight.into_iter().partition(|(t, ..)| *t <= now);
            flight = rest;
            for (_, to_adversary, f) in due {
                if to_adversary {
                    for reply in adversary(&script, &mut turn, &f, &mut id) {
                        flight.push((now + LATENCY, false, reply));
                    }
                } else {
                    c.handle_input(&f, now);
                }
            }
            c.handle_timeout(now);
        }
        prop_assert!(c.is_done(), "ended in phase {:?}", c.phase());
        let outcome = c.outcome().cloned();
        prop_assert!(matches!(
            outcome,
            Some(LoginOutcome::LcpFailed(_) | LoginOutcome::NoAuthentication | LoginOutcome::AuthTimeout)
        ), "{:?}", outcome);
        let bound = cfg.lcp.max_requests * (MAX_RENEGOTIATIONS + 2);
        prop_assert!(requests <= bound, "{} Configure-Requests", requests);
    }

    /// Arbitrary frames thrown at a client mid-login never panic it.
    #[test]
    fn arbitrary_frames_never_panic(frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..20)) {
        let t0 = Instant::now();
        let mut c = client("alice", "s3cret", t0);
        let mut s = server(t0);
        for f in &frames {
            c.handle_input(f, t0);
            s.handle_input(f, t0);
            let mut framed = vec![0xFF, 0x03, 0xC2, 0x23];
            framed.extend_from_slice(f);
            c.handle_input(&framed, t0);
            s.handle_input(&framed, t0);
            framed[3] = 0x21;
            framed[2] = 0xC0;
            c.handle_input(&framed, t0);
            s.handle_input(&framed, t0);
        }
        while c.poll_transmit().is_some() {}
    }
}

#[test]
fn lcp_packet_helper_is_consistent() {
    // Sanity check of the test's own helper against the typed codec.
    let p = CpPacket {
        code: 1,
        id: 3,
        data: to_raw(&[(1, vec![5, 0x78])]),
    };
    assert_eq!(
        LcpPacket::decode(&p.encode()).unwrap(),
        LcpPacket::ConfigureRequest {
            id: 3,
            options: vec![LcpOption::Mru(1400)]
        }
    );
}

// ---------------------------------------------------------------------------
// Lossy, reordering, duplicating link
// ---------------------------------------------------------------------------

/// What the link does to the n-th frame: extra delay (ms) and 0, 1 or 2 copies.
fn link_strategy() -> impl Strategy<Value = Vec<(u16, u8)>> {
    proptest::collection::vec(
        (
            0u16..400,
            prop_oneof![1 => Just(0u8), 6 => Just(1u8), 1 => Just(2u8)],
        ),
        1..40,
    )
}

/// Runs a full login over the hostile link; returns the client's outcome and
/// whether the client ended in a stable state.
fn lossy_login(
    password: &str,
    link: &[(u16, u8)],
    seed: [u8; 32],
) -> (Option<LoginOutcome>, bool, Duration) {
    let t0 = Instant::now();
    let mut c = LoginClient::with_seed(LoginConfig::new("alice", Secret::new(password)), seed, t0);
    let mut s = LoginServer::with_seed(ServerConfig::new(table()), [seed[0] ^ 0x55; 32], t0);
    let mut now = t0;
    let mut flight: Vec<(Instant, bool, Vec<u8>)> = Vec::new();
    let mut n = 0usize;
    for _ in 0..100_000 {
        let mut out: Vec<(bool, Vec<u8>)> = Vec::new();
        while let Some(f) = c.poll_transmit() {
            out.push((true, f));
        }
        while let Some(f) = s.poll_transmit() {
            out.push((false, f));
        }
        for (to_server, f) in out {
            // The script repeats; after it, the link is clean (so logins can finish).
            let (delay, copies) = if n < link.len() * 3 {
                link[n % link.len()]
            } else {
                (0, 1)
            };
            n += 1;
            for k in 0..copies {
                let at = now + LATENCY + Duration::from_millis(u64::from(delay) + 7 * u64::from(k));
                flight.push((at, to_server, f.clone()));
            }
        }
        let stable =
            c.is_done() || (c.phase() == LoginPhase::Authenticated && s.outcome().is_some());
        if stable && flight.is_empty() {
            return (c.outcome().cloned(), true, now - t0);
        }
        let next = [
            flight.iter().map(|(t, ..)| *t).min(),
            c.poll_timeout(),
            s.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(next) = next else {
            return (c.outcome().cloned(), stable, now - t0);
        };
        now = next.max(now);
        let (due, rest): (Vec<_>, Vec<_>) = flight.into_iter().partition(|(t, ..)| *t <= now);
        flight = rest;
        for (_, to_server, f) in due {
            if to_server {
                s.handle_input(&f, now);
            } else {
                c.handle_input(&f, now);
            }
        }
        c.handle_timeout(now);
        s.handle_timeout(now);
    }
    (c.outcome().cloned(), false, now - t0)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Loss, duplication and reordering never turn a right password into a
    /// rejection or a wrong one into a success; every login ends in bounded time.
    #[test]
    fn hostile_link_never_lies_and_always_ends(link in link_strategy(), seed: [u8; 32], right: bool) {
        let (outcome, stable, took) = lossy_login(if right { "s3cret" } else { "nope" }, &link, seed);
        prop_assert!(stable, "did not settle: {:?}", outcome);
        prop_assert!(took <= Duration::from_secs(40 + 15 + 10), "took {:?}", took);
        match outcome {
            Some(LoginOutcome::Success { .. }) => prop_assert!(right, "wrong password accepted"),
            Some(LoginOutcome::AuthRejected { .. }) => prop_assert!(!right, "right password rejected"),
            Some(LoginOutcome::LcpFailed(_) | LoginOutcome::AuthTimeout) => {}
            other => prop_assert!(false, "unexpected outcome {:?}", other),
        }
    }
}

#[test]
fn a_clean_link_always_logs_in() {
    // The hostile-link property must not be vacuous: with a clean link every run
    // succeeds.
    for seed in 0..20u8 {
        let (outcome, stable, _) = lossy_login("s3cret", &[(0, 1)], [seed; 32]);
        assert!(
            stable && outcome.as_ref().is_some_and(LoginOutcome::is_success),
            "{outcome:?}"
        );
    }
}

#[test]
fn lost_failure_then_terminate_is_still_a_rejection() {
    let t0 = Instant::now();
    let (mut c, mut s) = (client("alice", "wrong", t0), server(t0));
    let tamper: Tamper = Box::new(|to_server, _, f| {
        let failure = PppFrame::decode(&f)
            .is_ok_and(|fr| fr.protocol == PROTO_CHAP && fr.information.first() == Some(&4));
        (to_server || !failure).then_some(f)
    });
    drive(&mut c, &mut s, t0, Some(tamper));
    match c.outcome() {
        Some(LoginOutcome::AuthRejected {
            code: None,
            message,
            ..
        }) => {
            assert!(
                message.starts_with("link terminated after our Response"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(c.is_done());
}

#[test]
fn lost_success_is_recovered_by_repeating_the_response() {
    let t0 = Instant::now();
    let (mut c, mut s) = (client("alice", "s3cret", t0), server(t0));
    let mut dropped = 0;
    let tamper: Tamper = Box::new(move |to_server, _, f| {
        let success = PppFrame::decode(&f)
            .is_ok_and(|fr| fr.protocol == PROTO_CHAP && fr.information.first() == Some(&3));
        if !to_server && success && dropped < 2 {
            dropped += 1;
            return None;
        }
        Some(f)
    });
    let run = drive(&mut c, &mut s, t0, Some(tamper));
    assert!(
        c.outcome().is_some_and(LoginOutcome::is_success),
        "{:?}",
        c.outcome()
    );
    // Two lost Successes: the Response was repeated twice, 3 s apart.
    assert!(run.now - t0 >= Duration::from_secs(6), "{:?}", run.now - t0);
}

#[test]
fn rechallenge_after_login_is_answered_and_the_link_stays_up() {
    let t0 = Instant::now();
    let (mut c, mut s) = (client("alice", "s3cret", t0), server(t0));
    let run = drive(&mut c, &mut s, t0, None);
    assert_eq!(c.phase(), LoginPhase::Authenticated);
    // pppd's chap-interval: the server challenges again.
    let mut again = MsChapAuthenticator::with_challenge(table(), "srv", [9; 16], 200);
    again.start(run.now);
    let challenge = again.poll_transmit().unwrap();
    c.handle_input(
        &PppFrame {
            protocol: PROTO_CHAP,
            information: &challenge,
        }
        .encode(false, false),
        run.now,
    );
    let response = c.poll_transmit().expect("a Response");
    let response = PppFrame::decode(&response).unwrap();
    assert_eq!(response.protocol, PROTO_CHAP);
    again.handle_input(response.information);
    assert_eq!(
        again.outcome(),
        Some(&AuthenticatorOutcome::Accepted {
            user: "alice".into()
        })
    );
    let success = again.poll_transmit().unwrap();
    c.handle_input(
        &PppFrame {
            protocol: PROTO_CHAP,
            information: &success,
        }
        .encode(false, false),
        run.now,
    );
    assert_eq!(c.phase(), LoginPhase::Authenticated);
    assert!(c.outcome().is_some_and(LoginOutcome::is_success));
}
