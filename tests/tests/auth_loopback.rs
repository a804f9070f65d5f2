//! The call driver (`connexa_core::tunnel::login`) against scripted PPTP servers
//! on loopback that share the process's raw GRE socket: call rejected, no call
//! reply, silent PPP, hang-up during LCP, Echo-Request and Set-Link-Info
//! handling, and the polite teardown (Call-Clear-Request,
//! Stop-Control-Connection-Request) after success and after every failure.
//! Needs CAP_NET_RAW (root), like the auth test itself.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use connexa_core::domain::{Failure, Level, Secret};
use connexa_core::pptp::control::{
    CallDisconnectNotify, ControlMessage, EchoRequest, FixedText, Framer, OutgoingCallReply,
    SetLinkInfo, StartControlConnectionReply, StopControlConnectionReply,
};
use connexa_core::pptp::gre::{Accepted, GrePacket, GreSession};
use connexa_core::pptp::login::{LoginServer, ServerConfig};
use connexa_core::pptp::ppp::fsm::FsmConfig;
use connexa_core::tunnel::{self, AuthConfig, GreRoute, GreSocket, LoginReport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Echo-Request + Set-Link-Info before the call reply, then a real login.
    Accept,
    /// Outgoing-Call-Reply with this result code.
    RejectCall(u8),
    /// Never answers the Outgoing-Call-Request.
    NoCallReply,
    /// Accepts the call, then ignores all GRE.
    SilentPpp,
    /// Accepts the call, then closes the control connection at once.
    HangUp,
}

type Log = Arc<Mutex<Vec<String>>>;

struct Call {
    route: GreRoute,
    session: GreSession,
    ppp: LoginServer,
}

async fn recv(call: &mut Option<Call>) -> Option<Vec<u8>> {
    match call {
        Some(c) => c.route.recv().await,
        None => std::future::pending().await,
    }
}

fn note(log: &Log, s: impl Into<String>) {
    log.lock().unwrap().push(s.into());
}

async fn serve(gre: Arc<GreSocket>, mut tcp: TcpStream, mode: Mode, log: Log) {
    let table = Arc::new(HashMap::from([("alice".to_owned(), Secret::new("s3cret"))]));
    let mut framer = Framer::new();
    let mut buf = vec![0u8; 2048];
    let mut call: Option<Call> = None;
    loop {
        let wake = call
            .as_ref()
            .and_then(|c| c.ppp.poll_timeout())
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        let mut replies = Vec::new();
        tokio::select! {
            n = tcp.read(&mut buf) => {
                let Ok(n) = n else { return };
                if n == 0 { note(&log, "eof"); return; }
                framer.push(&buf[..n]);
                while let Ok(Some(frame)) = framer.next_frame() {
                    let Ok(msg) = ControlMessage::decode(&frame) else { note(&log, "bad"); return };
                    match msg {
                        ControlMessage::StartControlConnectionRequest(_) => replies.push(
                            ControlMessage::StartControlConnectionReply(
                                StartControlConnectionReply::success("loopback", "script", 1))),
                        ControlMessage::OutgoingCallRequest(r) => {
                            note(&log, "ocrq");
                            if mode == Mode::Accept {
                                replies.push(ControlMessage::EchoRequest(EchoRequest { identifier: 77 }));
                                replies.push(ControlMessage::SetLinkInfo(SetLinkInfo {
                                    peer_call_id: r.call_id, send_accm: 0, receive_accm: 0 }));
                            }
                            let route = gre.register(Ipv4Addr::LOCALHOST).unwrap();
                            let result_code = match mode {
                                Mode::RejectCall(c) => c,
                                Mode::NoCallReply => continue,
                                _ => 1,
                            };
                            replies.push(ControlMessage::OutgoingCallReply(OutgoingCallReply {
                                call_id: route.call_id(), peer_call_id: r.call_id, result_code,
                                error_code: 0, cause_code: 0, connect_speed: 10_000_000,
                                packet_recv_window_size: 64, packet_processing_delay: 0,
                                physical_channel_id: 0,
                            }));
                            if result_code == 1 {
                                call = Some(Call {
                                    session: GreSession::new(route.call_id(), r.call_id, Duration::from_millis(50)),
                                    route,
                                    ppp: LoginServer::new(ServerConfig::new(Arc::clone(&table)), Instant::now()),
                                });
                            }
                        }
                        ControlMessage::EchoReply(r) => note(&log, format!("echo-reply {}", r.identifier)),
                        ControlMessage::CallClearRequest(_) => {
                            note(&log, "ccr");
                            if let Some(c) = call.take() {
                                replies.push(ControlMessage::CallDisconnectNotify(CallDisconnectNotify {
                                    call_id: c.route.call_id(), result_code: 4, error_code: 0,
                                    cause_code: 0, call_statistics: FixedText::default(),
                                }));
                            }
                        }
                        ControlMessage::StopControlConnectionRequest(_) => {
                            note(&log, "stop");
                            let reply = ControlMessage::StopControlConnectionReply(
                                StopControlConnectionReply { result_code: 1, error_code: 0 });
                            let _ = tcp.write_all(&reply.encode()).await;
                            return;
                        }
                        other => note(&log, format!("other {}", other.control_type())),
                    }
                }
            }
            pkt = recv(&mut call) => {
                if let (Some(pkt), Some(c)) = (pkt, call.as_mut())
                    && mode != Mode::SilentPpp
                    && let Ok(pkt) = GrePacket::decode(&pkt)
                    && let Accepted::Payload(p) = c.session.accept(&pkt, Instant::now())
                {
                    c.ppp.handle_input(p, Instant::now());
                }
            }
            () = tokio::time::sleep_until(wake.into()) => {
                if let Some(c) = call.as_mut() { c.ppp.handle_timeout(Instant::now()); }
            }
        }
        for r in replies {
            if tcp.write_all(&r.encode()).await.is_err() {
                return;
            }
        }
        if mode == Mode::HangUp && call.is_some() {
            note(&log, "hang-up");
            return;
        }
        if let Some(c) = call.as_mut()
            && mode != Mode::SilentPpp
        {
            let mut out = Vec::new();
            while let Some(frame) = c.ppp.poll_transmit() {
                out.clear();
                c.session.encode(&frame, &mut out).unwrap();
                let _ = c.route.send(&out).await;
            }
        }
    }
}

fn quick() -> AuthConfig {
    AuthConfig {
        call_timeout: Duration::from_millis(500),
        lcp: FsmConfig {
            restart: Duration::from_millis(100),
            max_configure: 4,
            ..FsmConfig::default()
        },
        teardown_timeout: Duration::from_millis(500),
        ..AuthConfig::default()
    }
}

/// One raw GRE socket at a time: every raw socket sees all loopback GRE, and
/// two independent sockets could hand out the same call id.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn run(mode: Mode, password: &str) -> (LoginReport, Vec<String>) {
    let _serial = SERIAL.lock().await;
    let gre = GreSocket::open().unwrap_or_else(|e| {
        panic!("{e} (this test needs CAP_NET_RAW: run it as root, e.g. via tests/run.sh)")
    });
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let log: Log = Arc::default();
    let (server_gre, server_log) = (Arc::clone(&gre), Arc::clone(&log));
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        serve(server_gre, tcp, mode, server_log).await;
    });
    let report = tunnel::login(
        &gre,
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, port),
        "alice",
        &Secret::new(password),
        &quick(),
    )
    .await;
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    assert_eq!(
        gre.live_routes(),
        0,
        "the client's route is gone: {report:?}"
    );
    let events = log.lock().unwrap().clone();
    (report, events)
}

#[tokio::test(flavor = "current_thread")]
async fn accepted_login_answers_echo_and_tears_down_every_step() {
    let (r, ev) = run(Mode::Accept, "s3cret").await;
    assert_eq!((r.reached, &r.failure), (Level::Auth, &None), "{r:?}");
    assert!(
        ev.contains(&"echo-reply 77".to_owned()),
        "Echo-Request answered: {ev:?}"
    );
    let t = r.teardown;
    assert!(
        t.lcp_closed && t.call_cleared && t.control_stopped && !t.server_closed,
        "{t:?}"
    );
    assert_eq!(
        ev.iter().filter(|e| *e == "ccr" || *e == "stop").count(),
        2,
        "{ev:?}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn wrong_password_is_691_and_still_tears_down() {
    let (r, ev) = run(Mode::Accept, "guess").await;
    assert_eq!(r.reached, Level::Light);
    assert!(
        matches!(
            r.failure,
            Some(Failure::AuthRejected {
                code: Some(691),
                ..
            })
        ),
        "{r:?}"
    );
    assert!(
        ev.contains(&"ccr".to_owned()) && ev.contains(&"stop".to_owned()),
        "{ev:?}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn rejected_call_is_call_rejected_with_the_code() {
    let (r, ev) = run(Mode::RejectCall(4), "s3cret").await;
    assert_eq!(r.reached, Level::Light);
    assert_eq!(r.failure, Some(Failure::CallRejected { code: 4 }));
    assert!(!ev.contains(&"ccr".to_owned()), "no call to clear: {ev:?}");
    assert!(ev.contains(&"stop".to_owned()), "control stopped: {ev:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn missing_call_reply_times_out_and_stops_politely() {
    let started = Instant::now();
    let (r, ev) = run(Mode::NoCallReply, "s3cret").await;
    assert_eq!(r.reached, Level::Light);
    assert!(
        matches!(r.failure, Some(Failure::TunnelFailed { .. })),
        "{r:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(ev.contains(&"stop".to_owned()), "{ev:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn silent_ppp_is_lcp_failed_not_a_hang() {
    let started = Instant::now();
    let (r, ev) = run(Mode::SilentPpp, "s3cret").await;
    assert_eq!(r.reached, Level::Light);
    match &r.failure {
        Some(Failure::LcpFailed { detail }) => assert!(detail.contains("no answer"), "{detail}"),
        other => panic!("expected LcpFailed, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert!(
        ev.contains(&"ccr".to_owned()) && ev.contains(&"stop".to_owned()),
        "{ev:?}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn hang_up_during_lcp_is_lcp_failed() {
    let (r, _) = run(Mode::HangUp, "s3cret").await;
    assert_eq!(r.reached, Level::Light);
    match &r.failure {
        Some(Failure::LcpFailed { detail }) => {
            assert!(detail.contains("control connection ended"), "{detail}")
        }
        other => panic!("expected LcpFailed, got {other:?}"),
    }
    assert!(r.teardown.server_closed, "{r:?}");
}
