//! The auth test end to end on loopback: a tiny PPTP server in this process
//! (control channel + [`LoginServer`] over GRE) and the client
//! ([`tunnel::login`]) share the process's one raw GRE socket, demultiplexed
//! by call id. Logs in with the right password, then a wrong one.
//!
//! Needs CAP_NET_RAW (run as root, or `setcap cap_net_raw+ep` the binary).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use connexa_core::domain::{Failure, Level, Secret};
use connexa_core::pptp::control::{
    CallDisconnectNotify, ControlMessage, FixedText, Framer, OutgoingCallReply,
    StartControlConnectionReply, StopControlConnectionReply,
};
use connexa_core::pptp::gre::{Accepted, GrePacket, GreSession};
use connexa_core::pptp::login::{LoginServer, ServerConfig};
use connexa_core::tunnel::{self, AuthConfig, GreRoute, GreSocket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type Table = Arc<HashMap<String, Secret>>;

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

/// One control connection of the server.
async fn serve(gre: Arc<GreSocket>, mut tcp: TcpStream, table: Table) -> anyhow::Result<()> {
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
                let n = n?;
                if n == 0 { return Ok(()); }
                framer.push(&buf[..n]);
                while let Some(frame) = framer.next_frame()? {
                    match ControlMessage::decode(&frame)? {
                        ControlMessage::StartControlConnectionRequest(_) => replies.push(
                            ControlMessage::StartControlConnectionReply(
                                StartControlConnectionReply::success("loopback", "connexa-example", 1))),
                        ControlMessage::OutgoingCallRequest(r) => {
                            let route = gre.register(Ipv4Addr::LOCALHOST)?;
                            replies.push(ControlMessage::OutgoingCallReply(OutgoingCallReply {
                                call_id: route.call_id(), peer_call_id: r.call_id, result_code: 1,
                                error_code: 0, cause_code: 0, connect_speed: 10_000_000,
                                packet_recv_window_size: 64, packet_processing_delay: 0,
                                physical_channel_id: 0,
                            }));
                            let now = Instant::now();
                            call = Some(Call {
                                session: GreSession::new(route.call_id(), r.call_id, Duration::from_millis(100)),
                                route,
                                ppp: LoginServer::new(ServerConfig::new(Arc::clone(&table)), now),
                            });
                        }
                        ControlMessage::CallClearRequest(_) => {
                            if let Some(c) = call.take() {
                                replies.push(ControlMessage::CallDisconnectNotify(CallDisconnectNotify {
                                    call_id: c.route.call_id(), result_code: 4, error_code: 0,
                                    cause_code: 0, call_statistics: FixedText::default(),
                                }));
                            }
                        }
                        ControlMessage::StopControlConnectionRequest(_) => {
                            let reply = ControlMessage::StopControlConnectionReply(
                                StopControlConnectionReply { result_code: 1, error_code: 0 });
                            tcp.write_all(&reply.encode()).await?;
                            return Ok(());
                        }
                        _ => {}
                    }
                }
            }
            pkt = recv(&mut call) => {
                if let (Some(pkt), Some(c)) = (pkt, call.as_mut()) {
                    let pkt = GrePacket::decode(&pkt)?;
                    if let Accepted::Payload(p) = c.session.accept(&pkt, Instant::now()) {
                        c.ppp.handle_input(p, Instant::now());
                    }
                }
            }
            () = tokio::time::sleep_until(wake.into()) => {
                if let Some(c) = call.as_mut() { c.ppp.handle_timeout(Instant::now()); }
            }
        }
        for r in replies {
            tcp.write_all(&r.encode()).await?;
        }
        if let Some(c) = call.as_mut() {
            let mut out = Vec::new();
            while let Some(frame) = c.ppp.poll_transmit() {
                out.clear();
                c.session.encode(&frame, &mut out)?;
                c.route.send(&out).await?;
            }
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let gre = GreSocket::open().context("the auth test needs a raw GRE socket")?;
    let table: Table = Arc::new(HashMap::from([("alice".to_owned(), Secret::new("s3cret"))]));
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = match listener.local_addr()? {
        std::net::SocketAddr::V4(a) => a,
        other => bail!("unexpected {other}"),
    };
    let server_gre = Arc::clone(&gre);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (gre, table) = (Arc::clone(&server_gre), Arc::clone(&table));
            tokio::spawn(async move {
                if let Err(e) = serve(gre, tcp, table).await {
                    eprintln!("server: {e:#}");
                }
            });
        }
    });

    let cfg = AuthConfig::default();
    let target = SocketAddrV4::new(*addr.ip(), addr.port());
    let ok = tunnel::login(&gre, target, "alice", &Secret::new("s3cret"), &cfg).await;
    println!(
        "right password: reached {:?}, {:?}, login {:.1} ms, teardown {:?}",
        ok.reached,
        ok.message,
        ok.login_ms.unwrap_or_default(),
        ok.teardown
    );
    let bad = tunnel::login(&gre, target, "alice", &Secret::new("guess"), &cfg).await;
    println!(
        "wrong password: reached {:?}, {:?}",
        bad.reached, bad.failure
    );
    println!("GRE socket: {:?}", gre.stats());
    if ok.reached != Level::Auth {
        bail!("the right password did not log in: {ok:?}");
    }
    if !matches!(
        bad.failure,
        Some(Failure::AuthRejected {
            code: Some(691),
            ..
        })
    ) {
        bail!("the wrong password was not rejected with 691: {bad:?}");
    }
    Ok(())
}
