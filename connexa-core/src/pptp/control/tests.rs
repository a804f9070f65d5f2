use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::domain::Failure;

fn text64() -> impl Strategy<Value = Text64> {
    proptest::array::uniform32(any::<u8>()).prop_flat_map(|a| {
        proptest::array::uniform32(any::<u8>()).prop_map(move |b| {
            let mut bytes = [0u8; 64];
            bytes[..32].copy_from_slice(&a);
            bytes[32..].copy_from_slice(&b);
            Text64::from_bytes(bytes)
        })
    })
}

fn text128() -> impl Strategy<Value = FixedText<128>> {
    (text64(), text64()).prop_map(|(a, b)| {
        let mut bytes = [0u8; 128];
        bytes[..64].copy_from_slice(a.as_bytes());
        bytes[64..].copy_from_slice(b.as_bytes());
        FixedText::from_bytes(bytes)
    })
}

fn message() -> impl Strategy<Value = ControlMessage> {
    prop_oneof![
        (
            any::<u16>(),
            any::<u32>(),
            any::<u32>(),
            any::<u16>(),
            any::<u16>(),
            text64(),
            text64()
        )
            .prop_map(|(v, f, b, c, fw, h, vd)| {
                ControlMessage::StartControlConnectionRequest(StartControlConnectionRequest {
                    protocol_version: v,
                    framing_capabilities: f,
                    bearer_capabilities: b,
                    maximum_channels: c,
                    firmware_revision: fw,
                    host_name: h,
                    vendor: vd,
                })
            }),
        (
            any::<u16>(),
            any::<u8>(),
            any::<u8>(),
            any::<u32>(),
            any::<u32>(),
            any::<u16>(),
            any::<u16>(),
            text64(),
            text64()
        )
            .prop_map(|(v, rc, ec, f, b, c, fw, h, vd)| {
                ControlMessage::StartControlConnectionReply(StartControlConnectionReply {
                    protocol_version: v,
                    result_code: rc,
                    error_code: ec,
                    framing_capabilities: f,
                    bearer_capabilities: b,
                    maximum_channels: c,
                    firmware_revision: fw,
                    host_name: h,
                    vendor: vd,
                })
            }),
        any::<u8>().prop_map(|reason| ControlMessage::StopControlConnectionRequest(
            StopControlConnectionRequest { reason }
        )),
        (any::<u8>(), any::<u8>()).prop_map(|(r, e)| ControlMessage::StopControlConnectionReply(
            StopControlConnectionReply {
                result_code: r,
                error_code: e
            }
        )),
        any::<u32>().prop_map(|identifier| ControlMessage::EchoRequest(EchoRequest { identifier })),
        (any::<u32>(), any::<u8>(), any::<u8>()).prop_map(|(i, r, e)| ControlMessage::EchoReply(
            EchoReply {
                identifier: i,
                result_code: r,
                error_code: e
            }
        )),
        (
            (any::<u16>(), any::<u16>(), any::<u32>(), any::<u32>()),
            (any::<u32>(), any::<u32>(), any::<u16>(), any::<u16>()),
            any::<u16>(),
            text64(),
            text64()
        )
            .prop_map(|((a, b, c, d), (e, f, g, h), l, p, s)| {
                ControlMessage::OutgoingCallRequest(OutgoingCallRequest {
                    call_id: a,
                    call_serial_number: b,
                    minimum_bps: c,
                    maximum_bps: d,
                    bearer_type: e,
                    framing_type: f,
                    packet_recv_window_size: g,
                    packet_processing_delay: h,
                    phone_number_length: l,
                    phone_number: p,
                    subaddress: s,
                })
            }),
        (
            (any::<u16>(), any::<u16>(), any::<u8>(), any::<u8>()),
            (any::<u16>(), any::<u32>(), any::<u16>(), any::<u16>()),
            any::<u32>()
        )
            .prop_map(|((a, b, c, d), (e, f, g, h), i)| {
                ControlMessage::OutgoingCallReply(OutgoingCallReply {
                    call_id: a,
                    peer_call_id: b,
                    result_code: c,
                    error_code: d,
                    cause_code: e,
                    connect_speed: f,
                    packet_recv_window_size: g,
                    packet_processing_delay: h,
                    physical_channel_id: i,
                })
            }),
        any::<u16>()
            .prop_map(|call_id| ControlMessage::CallClearRequest(CallClearRequest { call_id })),
        (
            any::<u16>(),
            any::<u8>(),
            any::<u8>(),
            any::<u16>(),
            text128()
        )
            .prop_map(|(a, b, c, d, s)| {
                ControlMessage::CallDisconnectNotify(CallDisconnectNotify {
                    call_id: a,
                    result_code: b,
                    error_code: c,
                    cause_code: d,
                    call_statistics: s,
                })
            }),
        (any::<u16>(), proptest::array::uniform6(any::<u32>())).prop_map(|(p, e)| {
            ControlMessage::WanErrorNotify(WanErrorNotify {
                peer_call_id: p,
                crc_errors: e[0],
                framing_errors: e[1],
                hardware_overruns: e[2],
                buffer_overruns: e[3],
                timeout_errors: e[4],
                alignment_errors: e[5],
            })
        }),
        (any::<u16>(), any::<u32>(), any::<u32>()).prop_map(|(p, s, r)| {
            ControlMessage::SetLinkInfo(SetLinkInfo {
                peer_call_id: p,
                send_accm: s,
                receive_accm: r,
            })
        }),
    ]
}

proptest! {
    #[test]
    fn encode_decode_round_trip(msg in message()) {
        let bytes = msg.encode();
        prop_assert_eq!(bytes.len(), msg.control_type().wire_len());
        prop_assert_eq!(usize::from(u16::from_be_bytes([bytes[0], bytes[1]])), bytes.len());
        prop_assert_eq!(ControlMessage::decode(&bytes), Ok(msg.clone()));
        // And through the framer, split at an arbitrary point, followed by a second message.
        let mut stream = bytes.clone();
        stream.extend_from_slice(&bytes);
        let mut framer = Framer::new();
        let cut = bytes.len() / 3;
        framer.push(&stream[..cut]);
        prop_assert_eq!(framer.next_frame(), Ok(None));
        framer.push(&stream[cut..]);
        prop_assert_eq!(framer.next_frame(), Ok(Some(bytes.clone())));
        prop_assert_eq!(framer.next_frame(), Ok(Some(bytes)));
        prop_assert_eq!(framer.next_frame(), Ok(None));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = ControlMessage::decode(&bytes);
        let mut framer = Framer::new();
        framer.push(&bytes);
        while let Ok(Some(frame)) = framer.next_frame() {
            let _ = ControlMessage::decode(&frame);
        }
        let t0 = Instant::now();
        let mut hs = LightHandshake::new(HandshakeConfig::default(), t0);
        hs.handle_input(&bytes, t0);
        hs.handle_eof(t0);
        prop_assert!(hs.result().is_some());
    }

    /// Valid header, arbitrary type and body: decode never panics and never
    /// accepts a length other than the type's.
    #[test]
    fn plausible_headers_never_panic(ty in 0u16..20, body in proptest::collection::vec(any::<u8>(), 0..300)) {
        let len = (HEADER_LEN + body.len()) as u16;
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&len.to_be_bytes());
        bytes.extend_from_slice(&1u16.to_be_bytes());
        bytes.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        bytes.extend_from_slice(&ty.to_be_bytes());
        bytes.extend_from_slice(&[0, 0]);
        bytes.extend_from_slice(&body);
        if let Ok(msg) = ControlMessage::decode(&bytes) {
            prop_assert_eq!(msg.control_type().wire_len(), bytes.len());
            prop_assert_eq!(msg.encode(), bytes);
        }
    }
}

fn sccrp(result_code: u8) -> Vec<u8> {
    let mut r = StartControlConnectionReply::success("local", "linux", 0x0102);
    r.result_code = result_code;
    ControlMessage::StartControlConnectionReply(r).encode()
}

#[test]
fn sccrp_offsets_are_exact() {
    let bytes = sccrp(1);
    assert_eq!(bytes.len(), 156);
    assert_eq!(&bytes[0..2], &[0, 156]);
    assert_eq!(&bytes[2..4], &[0, 1]);
    assert_eq!(&bytes[8..10], &[0, 2]);
    assert_eq!(&bytes[12..14], &[1, 0]); // protocol version
    assert_eq!(bytes[14], 1); // result code
    assert_eq!(bytes[15], 0); // error code
    assert_eq!(&bytes[16..20], &[0, 0, 0, 3]); // framing
    assert_eq!(&bytes[20..24], &[0, 0, 0, 3]); // bearer
    assert_eq!(&bytes[24..26], &[0, 1]); // max channels
    assert_eq!(&bytes[26..28], &[1, 2]); // firmware
    assert_eq!(&bytes[28..33], b"local");
    assert!(bytes[33..92].iter().all(|b| *b == 0));
    assert_eq!(&bytes[92..97], b"linux");
    assert!(bytes[97..156].iter().all(|b| *b == 0));
}

#[test]
fn sccrq_has_reserved_field_after_version() {
    let bytes =
        ControlMessage::StartControlConnectionRequest(StartControlConnectionRequest::new("h", "v"))
            .encode();
    assert_eq!(&bytes[12..16], &[1, 0, 0, 0]);
    assert_eq!(&bytes[24..26], &[0, 0]); // max channels
    assert_eq!(bytes[28], b'h');
    assert_eq!(bytes[92], b'v');
    let mut bad = bytes.clone();
    bad[14] = 1;
    assert_eq!(
        ControlMessage::decode(&bad),
        Err(DecodeError::ReservedNonZero { field: "Reserved1" })
    );
}

#[test]
fn decode_rejects_bad_headers() {
    let good = sccrp(1);
    let mut b = good.clone();
    b[7] ^= 1;
    assert_eq!(
        ControlMessage::decode(&b),
        Err(DecodeError::BadMagicCookie(0x1A2B_3C4C))
    );
    let mut b = good.clone();
    b[3] = 2;
    assert_eq!(
        ControlMessage::decode(&b),
        Err(DecodeError::BadMessageType(2))
    );
    let mut b = good.clone();
    b[1] = 155;
    assert_eq!(
        ControlMessage::decode(&b),
        Err(DecodeError::LengthMismatch {
            field: 155,
            actual: 156
        })
    );
    assert_eq!(
        ControlMessage::decode(&good[..155]),
        Err(DecodeError::LengthMismatch {
            field: 156,
            actual: 155
        })
    );
    let mut b = good.clone();
    b[9] = 16;
    assert_eq!(
        ControlMessage::decode(&b),
        Err(DecodeError::UnknownControlType(16))
    );
    let mut b = good.clone();
    b[9] = 9;
    assert_eq!(
        ControlMessage::decode(&b),
        Err(DecodeError::Unsupported(ControlType::IncomingCallRequest))
    );
    let mut b = good.clone();
    b[11] = 1;
    assert_eq!(
        ControlMessage::decode(&b),
        Err(DecodeError::ReservedNonZero { field: "Reserved0" })
    );
    // A 16-byte message claiming to be an SCCRP.
    let mut b = good[..16].to_vec();
    b[1] = 16;
    assert_eq!(
        ControlMessage::decode(&b),
        Err(DecodeError::BadLength {
            control_type: ControlType::StartControlConnectionReply,
            length: 16,
            expected: 156
        })
    );
    assert!(matches!(
        ControlMessage::decode(&good[..5]),
        Err(DecodeError::Truncated { .. })
    ));
}

#[test]
fn framer_rejects_garbage_early() {
    let mut f = Framer::new();
    f.push(b"HT");
    assert_eq!(f.next_frame(), Err(FrameError::AbsurdLength(0x4854)));
    let mut f = Framer::new();
    f.push(&[0, 5]);
    assert_eq!(f.next_frame(), Err(FrameError::AbsurdLength(5)));
    let mut f = Framer::new();
    f.push(&[0, 156, 0, 1, 0x1A, 0x2B, 0x3C, 0x4E]);
    assert_eq!(f.next_frame(), Err(FrameError::BadMagicCookie(0x1A2B_3C4E)));
    let mut f = Framer::new();
    f.push(&[0, 156, 0, 2]);
    assert_eq!(f.next_frame(), Err(FrameError::BadMessageType(2)));
    // A valid prefix just waits.
    let mut f = Framer::new();
    f.push(&[0, 156, 0, 1, 0x1A, 0x2B]);
    assert_eq!(f.next_frame(), Ok(None));
}

#[test]
fn text_fields_truncate_on_char_boundaries() {
    let long = "é".repeat(40); // 80 bytes
    let t = Text64::new(&long);
    assert_eq!(t.to_string_lossy(), "é".repeat(32));
    assert_eq!(Text64::new("local").to_string_lossy(), "local");
    assert_eq!(format!("{:?}", Text64::new("x")), "\"x\"");
}

// ---- the handshake state machine, with fake time --------------------------------

fn cfg() -> HandshakeConfig {
    HandshakeConfig {
        handshake_timeout: Duration::from_secs(2),
        stop_timeout: Duration::from_millis(300),
        ..HandshakeConfig::default()
    }
}

fn decode_all(hs: &mut LightHandshake) -> Vec<ControlMessage> {
    std::iter::from_fn(|| hs.poll_transmit())
        .map(|b| ControlMessage::decode(&b).expect("we send valid messages"))
        .collect()
}

#[test]
fn handshake_success_then_polite_stop() {
    let t0 = Instant::now();
    let mut hs = LightHandshake::new(cfg(), t0);
    let sent = decode_all(&mut hs);
    assert!(matches!(
        sent.as_slice(),
        [ControlMessage::StartControlConnectionRequest(_)]
    ));
    assert_eq!(hs.poll_timeout(), Some(t0 + Duration::from_secs(2)));
    let reply = sccrp(1);
    // Byte by byte: the framer must reassemble.
    for (i, b) in reply.iter().enumerate() {
        assert!(hs.result().is_none(), "result before byte {i}");
        hs.handle_input(&[*b], t0 + Duration::from_millis(40));
    }
    match hs.result() {
        Some(HandshakeResult::Established { reply, rtt }) => {
            assert_eq!(*rtt, Duration::from_millis(40));
            let id = reply.identity();
            assert_eq!(
                (id.hostname.as_str(), id.vendor.as_str(), id.firmware),
                ("local", "linux", 0x0102)
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    let sent = decode_all(&mut hs);
    assert_eq!(
        sent,
        vec![ControlMessage::StopControlConnectionRequest(
            StopControlConnectionRequest { reason: 1 }
        )]
    );
    assert!(!hs.is_done());
    assert_eq!(hs.poll_timeout(), Some(t0 + Duration::from_millis(340)));
    let stop_reply = ControlMessage::StopControlConnectionReply(StopControlConnectionReply {
        result_code: 1,
        error_code: 0,
    })
    .encode();
    hs.handle_input(&stop_reply, t0 + Duration::from_millis(41));
    assert!(hs.is_done());
    assert!(matches!(
        hs.result(),
        Some(HandshakeResult::Established { .. })
    ));
}

#[test]
fn handshake_stop_timeout_closes_without_changing_result() {
    let t0 = Instant::now();
    let mut hs = LightHandshake::new(cfg(), t0);
    decode_all(&mut hs);
    hs.handle_input(&sccrp(1), t0);
    decode_all(&mut hs);
    hs.handle_timeout(t0 + Duration::from_millis(299));
    assert!(!hs.is_done());
    hs.handle_timeout(t0 + Duration::from_millis(300));
    assert!(hs.is_done());
    assert!(matches!(
        hs.result(),
        Some(HandshakeResult::Established { .. })
    ));
}

#[test]
fn handshake_times_out_exactly_at_deadline() {
    let t0 = Instant::now();
    let mut hs = LightHandshake::new(cfg(), t0);
    decode_all(&mut hs);
    hs.handle_timeout(t0 + Duration::from_millis(1999));
    assert!(hs.result().is_none());
    hs.handle_timeout(t0 + Duration::from_secs(2));
    assert_eq!(
        hs.result(),
        Some(&HandshakeResult::Failed(Failure::HandshakeTimeout))
    );
    assert!(hs.is_done());
    assert_eq!(hs.poll_timeout(), None);
}

#[test]
fn handshake_rejections_and_garbage() {
    let t0 = Instant::now();
    for code in 2..=5u8 {
        let mut hs = LightHandshake::new(cfg(), t0);
        hs.handle_input(&sccrp(code), t0);
        assert_eq!(
            hs.result(),
            Some(&HandshakeResult::Failed(Failure::ControlRejected { code }))
        );
        decode_all(&mut hs);
        assert!(hs.is_done());
    }
    let mut hs = LightHandshake::new(cfg(), t0);
    hs.handle_input(b"SSH-2.0-OpenSSH_9.2\r\n", t0);
    assert_eq!(
        hs.result(),
        Some(&HandshakeResult::Failed(Failure::NotPptp))
    );

    let mut hs = LightHandshake::new(cfg(), t0);
    hs.handle_eof(t0);
    assert_eq!(
        hs.result(),
        Some(&HandshakeResult::Failed(Failure::ClosedEarly))
    );

    // A well-formed but unexpected message.
    let mut hs = LightHandshake::new(cfg(), t0);
    hs.handle_input(
        &ControlMessage::CallClearRequest(CallClearRequest { call_id: 1 }).encode(),
        t0,
    );
    assert!(matches!(
        hs.result(),
        Some(HandshakeResult::Failed(Failure::BadReply { detail })) if detail.contains("Call-Clear-Request")
    ));

    // PPTP framing, broken body: bad reply, not "not PPTP".
    let mut b = sccrp(1);
    b[11] = 7;
    let mut hs = LightHandshake::new(cfg(), t0);
    hs.handle_input(&b, t0);
    assert!(matches!(
        hs.result(),
        Some(HandshakeResult::Failed(Failure::BadReply { .. }))
    ));
}

#[test]
fn handshake_answers_echo_requests_while_waiting() {
    let t0 = Instant::now();
    let mut hs = LightHandshake::new(cfg(), t0);
    decode_all(&mut hs);
    hs.handle_input(
        &ControlMessage::EchoRequest(EchoRequest { identifier: 99 }).encode(),
        t0,
    );
    assert_eq!(
        decode_all(&mut hs),
        vec![ControlMessage::EchoReply(EchoReply {
            identifier: 99,
            result_code: 1,
            error_code: 0
        })]
    );
    assert!(hs.result().is_none());
    hs.handle_input(&sccrp(1), t0);
    assert!(matches!(
        hs.result(),
        Some(HandshakeResult::Established { .. })
    ));
}
