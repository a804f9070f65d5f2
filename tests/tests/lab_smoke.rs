//! Smoke test of the lab harness (`tests/lab/`): the real pptpd in the lab VM
//! answers a hand-encoded Start-Control-Connection-Request (RFC 2637 §2.1)
//! with a valid Start-Control-Connection-Reply, and takes a polite
//! Stop-Control-Connection-Request.
//!
//! Needs the lab: `tests/run.sh` as root starts it; without it this test fails
//! and says how to start it (it is skipped only by `tests/run.sh --skip lab_`
//! when the lab cannot be provisioned outside CI).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use connexa_tests::lab::Lab;

const MAGIC: u32 = 0x1a2b_3c4d;
const SCCRQ_LEN: usize = 156;

/// Start-Control-Connection-Request: 156 bytes, big endian.
fn sccrq() -> Vec<u8> {
    let mut m = Vec::with_capacity(SCCRQ_LEN);
    m.extend_from_slice(&(SCCRQ_LEN as u16).to_be_bytes()); // length
    m.extend_from_slice(&1u16.to_be_bytes()); // PPTP message type: control
    m.extend_from_slice(&MAGIC.to_be_bytes()); // magic cookie
    m.extend_from_slice(&1u16.to_be_bytes()); // control message type: SCCRQ
    m.extend_from_slice(&0u16.to_be_bytes()); // reserved0
    m.extend_from_slice(&0x0100u16.to_be_bytes()); // protocol version 1.0
    m.extend_from_slice(&0u16.to_be_bytes()); // reserved1
    m.extend_from_slice(&3u32.to_be_bytes()); // framing capabilities: async + sync
    m.extend_from_slice(&3u32.to_be_bytes()); // bearer capabilities: analog + digital
    m.extend_from_slice(&0u16.to_be_bytes()); // maximum channels
    m.extend_from_slice(&1u16.to_be_bytes()); // firmware revision
    let mut host = [0u8; 64];
    host[..17].copy_from_slice(b"connexa-lab-smoke");
    m.extend_from_slice(&host); // host name
    let mut vendor = [0u8; 64];
    vendor[..7].copy_from_slice(b"connexa");
    m.extend_from_slice(&vendor); // vendor string
    assert_eq!(m.len(), SCCRQ_LEN);
    m
}

/// Stop-Control-Connection-Request, reason 1 (general request).
fn stop_ccrq() -> Vec<u8> {
    let mut m = Vec::with_capacity(16);
    m.extend_from_slice(&16u16.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    m.extend_from_slice(&MAGIC.to_be_bytes());
    m.extend_from_slice(&3u16.to_be_bytes()); // StopCCRQ
    m.extend_from_slice(&0u16.to_be_bytes());
    m.extend_from_slice(&[1, 0, 0, 0]); // reason, reserved1, reserved2
    m
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Reads one whole control message (length-prefixed).
fn read_msg(s: &mut TcpStream) -> Vec<u8> {
    let mut head = [0u8; 2];
    s.read_exact(&mut head).expect("read message length");
    let len = usize::from(u16::from_be_bytes(head));
    assert!(
        (12..=1024).contains(&len),
        "implausible PPTP message length {len}"
    );
    let mut msg = vec![0u8; len];
    msg[..2].copy_from_slice(&head);
    s.read_exact(&mut msg[2..]).expect("read message body");
    msg
}

fn text(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

fn calls_started(lab: &Lab) -> usize {
    let log = lab.server_log().expect("read the lab's server log");
    log.lines()
        .filter(|l| {
            l.contains(&format!(
                "Client {} control connection started",
                lab.host_ip
            ))
        })
        .count()
}

#[test]
fn lab_pptpd_answers_sccrq_with_sccrp() {
    let lab = Lab::require();
    lab.enter_netns()
        .expect("enter the lab's network namespace");
    let before = calls_started(&lab);

    let addr = SocketAddr::from((lab.server, lab.pptp_port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("connect to pptpd at {addr} in netns {}: {e}", lab.netns));
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("set timeout");
    s.write_all(&sccrq()).expect("send SCCRQ");

    let r = read_msg(&mut s);
    assert_eq!(r.len(), SCCRQ_LEN, "SCCRP is 156 bytes");
    assert_eq!(be16(&r, 2), 1, "PPTP message type: control");
    assert_eq!(
        u32::from_be_bytes([r[4], r[5], r[6], r[7]]),
        MAGIC,
        "magic cookie"
    );
    assert_eq!(
        be16(&r, 8),
        2,
        "control message type: Start-Control-Connection-Reply"
    );
    assert_eq!(be16(&r, 12), 0x0100, "protocol version 1.0");
    assert_eq!(r[14], 1, "result code 1 (successful channel establishment)");
    assert_eq!(r[15], 0, "error code");
    let (host, vendor) = (text(&r[28..92]), text(&r[92..156]));
    eprintln!(
        "SCCRP from {addr}: host={host:?} vendor={vendor:?} firmware={:#06x}",
        be16(&r, 26)
    );
    assert!(!vendor.is_empty(), "pptpd names its vendor");

    s.write_all(&stop_ccrq()).expect("send StopCCRQ");
    let r = read_msg(&mut s);
    assert_eq!(
        be16(&r, 8),
        4,
        "control message type: Stop-Control-Connection-Reply"
    );
    assert_eq!(r[12], 1, "StopCCRP result code 1 (OK)");
    drop(s);

    // the server saw this very control connection (the log only grows)
    let deadline = Instant::now() + Duration::from_secs(10);
    while calls_started(&lab) <= before {
        assert!(
            Instant::now() < deadline,
            "pptpd did not log our control connection"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
