//! Interop check of the sans-IO login against a real pptpd/pppd (the QEMU lab),
//! used to capture the frames frozen in `pptp/login/pppd_vectors.rs`. Stop-gap
//! until `tunnel/` drives the login over real sockets: the transport (TCP control
//! channel SCCRQ/OCRQ and a raw GRE socket) is the small python script next to this
//! file; this binary does GRE encode/decode and the whole login, exchanging
//! 2-byte-length-prefixed datagrams with it on stdin/stdout (length 0 = done).
//! Traces every frame on stderr.
//!
//! ```text
//! LAB=/tmp/ppp-auth-lab NS=ppp-auth-lab bash ../shared/lab/pptp-lab.sh up
//! cargo build -p connexa-core --example lab_login
//! ip netns exec ppp-auth-lab python3 connexa-core/examples/lab_login_transport.py \
//!     10.77.0.2 alice s3cret target/debug/examples/lab_login
//! ```
//!
//! Seen with pptpd 1.4 / pppd 2.4.9: pptpd's manager drops a control connection
//! whose SCCRQ does not follow the TCP connect promptly ("MGR: dropped slow initial
//! connection"), so a transport must send SCCRQ right after connecting.
//!
//! Arguments of this binary: `<our call id> <peer call id> <user> <password> <server ipv4>`.
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use connexa_core::domain::Secret;
use connexa_core::pptp::gre::{Accepted, GreSession, parse_ipv4_gre};
use connexa_core::pptp::login::{LoginClient, LoginConfig, LoginOutcome};

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let our_call: u16 = a[1].parse().unwrap();
    let peer_call: u16 = a[2].parse().unwrap();
    let server: Ipv4Addr = a[5].parse().unwrap();
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        loop {
            let mut l = [0u8; 2];
            if stdin.read_exact(&mut l).is_err() {
                return;
            }
            let mut b = vec![0u8; u16::from_be_bytes(l) as usize];
            if stdin.read_exact(&mut b).is_err() {
                return;
            }
            if tx.send(b).is_err() {
                return;
            }
        }
    });
    let mut out = std::io::stdout();
    let t0 = Instant::now();
    let mut c = LoginClient::new(
        LoginConfig::new(a[3].clone(), Secret::new(a[4].clone())),
        t0,
    );
    let mut gre = GreSession::new(our_call, peer_call, Duration::from_millis(100));
    let mut reported = false;
    loop {
        while let Some(f) = c.poll_transmit() {
            eprintln!("TX {:02x?}", &f[..]);
            let mut g = Vec::new();
            gre.encode(&f, &mut g).unwrap();
            out.write_all(&(g.len() as u16).to_be_bytes()).unwrap();
            out.write_all(&g).unwrap();
            out.flush().unwrap();
        }
        if let (Some(o), false) = (c.outcome(), reported) {
            eprintln!(
                "OUTCOME after {:?}: {:?} -> {:?}",
                t0.elapsed(),
                o,
                o.to_failure()
            );
            reported = true;
            if matches!(o, LoginOutcome::Success { .. }) {
                let n = c.lcp().negotiator().negotiated();
                eprintln!("NEGOTIATED {:?}", n);
                c.close(Instant::now());
                continue;
            }
        }
        if c.is_done() || t0.elapsed() > Duration::from_secs(90) {
            eprintln!(
                "DONE phase {:?} lcp {:?} after {:?}",
                c.phase(),
                c.lcp().state(),
                t0.elapsed()
            );
            out.write_all(&[0, 0]).unwrap();
            out.flush().unwrap();
            return;
        }
        let now = Instant::now();
        let wait = c
            .poll_timeout()
            .map(|t| t.saturating_duration_since(now))
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(1));
        match rx.recv_timeout(wait) {
            Ok(d) => match parse_ipv4_gre(&d) {
                Ok(p) if p.source == server => match gre.accept(&p.gre, Instant::now()) {
                    Accepted::Payload(payload) => {
                        eprintln!(
                            "RX seq={:?} ack={:?} {:02x?}",
                            p.gre.seq, p.gre.ack, payload
                        );
                        c.handle_input(payload, Instant::now());
                    }
                    other => eprintln!("GRE {other:?} seq={:?} ack={:?}", p.gre.seq, p.gre.ack),
                },
                Ok(p) => eprintln!("ignored GRE from {} call {}", p.source, p.gre.call_id),
                Err(e) => eprintln!("bad datagram: {e}"),
            },
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(_) => return,
        }
        c.handle_timeout(Instant::now());
        if let Some(ack) = gre.poll_ack_only(Instant::now()) {
            out.write_all(&(ack.len() as u16).to_be_bytes()).unwrap();
            out.write_all(&ack).unwrap();
            out.flush().unwrap();
        }
    }
}
